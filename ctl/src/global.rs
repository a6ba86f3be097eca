//! Flags every command takes, read from the command line or `ETCDCTL_*` variables as etcdctl
//! reads them.

use std::sync::OnceLock;
use std::time::Duration;

use crate::failure::{CtlResult, ExitCode, Failure};

/// The etcdctl release whose interface, flags and output oxcdctl reproduces; `version` prints it
/// so scripts that check etcdctl's version keep working.
pub const ETCDCTL_VERSION: &str = "3.4.23";
pub const API_VERSION: &str = "3.4";

#[derive(clap::Args, Debug, Clone)]
pub struct GlobalFlags {
    /// gRPC endpoints
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// dial timeout for client connections
    #[arg(long, global = true, env = "ETCDCTL_DIAL_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// timeout for short running command (excluding dial timeout)
    #[arg(long, global = true, env = "ETCDCTL_COMMAND_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// keepalive time for client connections
    #[arg(long, global = true, env = "ETCDCTL_KEEPALIVE_TIME", default_value = "2s", value_parser = parse_duration)]
    pub keepalive_time: Duration,
    /// keepalive timeout for client connections
    #[arg(long, global = true, env = "ETCDCTL_KEEPALIVE_TIMEOUT", default_value = "6s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// set the output format (fields, json, protobuf, simple, table)
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        env = "ETCDCTL_WRITE_OUT",
        default_value = "simple"
    )]
    pub write_out: String,
    /// print byte strings as hex encoded strings
    #[arg(long, global = true, env = "ETCDCTL_HEX", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub hex: bool,
    /// verify certificates of TLS-enabled secure servers using this CA bundle
    #[arg(long, global = true, env = "ETCDCTL_CACERT")]
    pub cacert: Option<String>,
    /// identify secure client using this TLS certificate file
    #[arg(long, global = true, env = "ETCDCTL_CERT")]
    pub cert: Option<String>,
    /// identify secure client using this TLS key file
    #[arg(long, global = true, env = "ETCDCTL_KEY")]
    pub key: Option<String>,
    /// disable transport security for client connections
    #[arg(long, global = true, env = "ETCDCTL_INSECURE_TRANSPORT", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    pub insecure_transport: bool,
    /// skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)
    #[arg(long, global = true, env = "ETCDCTL_INSECURE_SKIP_TLS_VERIFY", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub insecure_skip_tls_verify: bool,
    /// username[:password] for authentication (prompt if password is not supplied)
    #[arg(long, global = true, env = "ETCDCTL_USER")]
    pub user: Option<String>,
    /// password for authentication (if this option is used, --user option shouldn't include password)
    #[arg(long, global = true, env = "ETCDCTL_PASSWORD")]
    pub password: Option<String>,
    /// enable client-side debug logging
    #[arg(long, global = true, env = "ETCDCTL_DEBUG", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub debug: bool,
    /// The etcdctl release whose layout to print where 3.7's differs from 3.4's. Not an
    /// etcdctl flag, so hidden from etcdctl's help pages (README documents it).
    #[arg(
        long,
        global = true,
        hide = true,
        env = "OXCDCTL_ETCDCTL_VERSION",
        default_value = "3.4"
    )]
    pub etcdctl_version: crate::output::Layout,
}

impl GlobalFlags {
    /// The name and password to authenticate with, as etcdctl takes them: `--user name:password`,
    /// or `--user name --password password` (then all of `--user` is the name, colons included),
    /// or `--user name` alone, when the password is asked for on the terminal (a line of stdin
    /// when stdin is not one). `None` when there is nothing to authenticate with: the Go client
    /// authenticates only when both the name and the password are non-empty, and otherwise sends
    /// its calls without a token.
    pub fn credentials(&self) -> CtlResult<Option<(String, String)>> {
        let Some(user) = self.user.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let (name, password) = match self.password.as_deref().filter(|p| !p.is_empty()) {
            Some(password) => (user, password.to_string()),
            None => match user.split_once(':') {
                Some((name, password)) => (name, password.to_string()),
                None => (user, prompted_password()?),
            },
        };
        Ok((!name.is_empty() && !password.is_empty()).then(|| (name.to_string(), password)))
    }
}

/// The password `--user name` leaves out. etcdctl asks for it once, while it builds its client
/// configuration; oxcdctl may open several connections (one per endpoint), which share the answer.
fn prompted_password() -> CtlResult<String> {
    static ANSWER: OnceLock<Result<String, String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| crate::password::ask("Password: "))
        .clone()
        .map_err(|e| Failure::new(ExitCode::Error, e))
}

/// etcdctl's checks of `ETCDCTL_*` variables: a global flag given both on the command line and
/// as its variable is refused (logged at capnslog level C, exit 1); a variable that names no
/// flag is reported (level W).
pub fn check_variables(matches: &clap::ArgMatches) {
    refuse_shadowed_variables(matches);
    let watch = matches.subcommand_name() == Some("watch");
    for (name, value) in std::env::vars() {
        let Some(flag) = name.strip_prefix("ETCDCTL_") else {
            continue;
        };
        let flag = flag.to_lowercase().replace('_', "-");
        let known = flag == "api"
            || crate::usage::is_global_flag(&flag)
            || (watch && (flag == "watch-key" || flag == "watch-range-end"));
        if !known {
            eprintln!(
                "{} W | pkg/flags: unrecognized environment variable {name}={value}",
                capnslog_time(std::time::SystemTime::now())
            );
        }
    }
}

fn refuse_shadowed_variables(matches: &clap::ArgMatches) {
    let flags = <GlobalFlags as clap::Args>::augment_args(clap::Command::new("global"));
    for arg in flags.get_arguments() {
        let id = arg.get_id().as_str();
        if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let variable = format!("ETCDCTL_{}", id.to_uppercase());
        if std::env::var_os(&variable).is_some() {
            eprintln!(
                "{} C | pkg/flags: conflicting environment variable \"{variable}\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)",
                capnslog_time(std::time::SystemTime::now())
            );
            std::process::exit(1);
        }
    }
}

/// capnslog's timestamp, "2006-01-02 15:04:05.000000" (UTC).
fn capnslog_time(now: std::time::SystemTime) -> String {
    let since_epoch = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's days-to-civil-date conversion.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since_epoch.subsec_micros()
    )
}

/// Go's time.ParseDuration for the forms etcdctl users write: "2s", "500ms", "1m30s".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(format!("time: invalid duration \"{text}\""));
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration \"{text}\""))?;
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("time: invalid duration \"{text}\""))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => {
                return Err(format!(
                    "time: unknown unit \"{unit}\" in duration \"{text}\""
                ))
            }
        };
        total += Duration::from_secs_f64(value * seconds);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capnslog_timestamps() {
        let t = std::time::UNIX_EPOCH + Duration::from_micros(1_795_875_604_598_002);
        assert_eq!(capnslog_time(t), "2026-11-28 14:20:04.598002");
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5parsecs").is_err());
    }
}
