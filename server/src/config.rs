//! Command-line flags and `ETCD_*` environment variables, named as etcd names them, so an etcd
//! systemd unit or kubeadm manifest starts oxcd unchanged.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::features::FeatureGates;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "oxcd",
    version,
    about = "An etcd-compatible, Raft-replicated key-value store"
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: ${name}.oxcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of the write-ahead log, where every Raft log append is fsynced (a dedicated
    /// device, as etcd's WAL directory). Default: inside the data dir.
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,
    /// Client URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer (Raft) traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping: name=peerURL,...
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` or `existing`.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// Initial cluster token; member and cluster ids are derived from it.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Maximum client request size in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Maximum operations per transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Backend size quota in bytes (0 = 2 GiB default).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Time (ms) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (ms) for an election to time out.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Committed Raft entries between snapshots of the state machine.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,

    /// debug, info, warn, error, panic or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info", value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,
    /// `zap`, the only logger etcd 3.5+ has (oxcd writes structured lines like it).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap", value_parser = ["zap"])]
    pub logger: String,
    /// Where logs go: `default` or `stderr`, `stdout`, or file paths (appended to).
    #[arg(
        long,
        env = "ETCD_LOG_OUTPUTS",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub log_outputs: Vec<String>,

    // Client TLS (https:// listen URLs). Peer TLS flags are accepted for the peer transport.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Client certificates must be valid for one of these host names or IPs.
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME", value_delimiter = ',')]
    pub client_cert_allowed_hostname: Vec<String>,
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,
    /// Peer certificates must have one of these subject CNs.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN", value_delimiter = ',')]
    pub peer_cert_allowed_cn: Vec<String>,
    /// Peer certificates must be valid for one of these host names or IPs.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME", value_delimiter = ',')]
    pub peer_cert_allowed_hostname: Vec<String>,
    /// Client certificates revoked by this CRL (DER or PEM) are refused; re-read as it changes.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Peer certificates revoked by this CRL (DER or PEM) are refused; re-read as it changes.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Client TLS with a self-signed certificate made under <data-dir>/fixtures/client, when
    /// no --cert-file/--key-file are given.
    #[arg(long, env = "ETCD_AUTO_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub auto_tls: Option<bool>,
    /// Peer TLS with a self-signed certificate made under <data-dir>/fixtures/peer, when no
    /// --peer-cert-file/--peer-key-file are given.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub peer_auto_tls: Option<bool>,
    /// Validity of the --auto-tls and --peer-auto-tls certificates, in years.
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,
    /// TLS 1.2 cipher suites (Go's names) of every client and peer connection; default: all.
    #[arg(long, env = "ETCD_CIPHER_SUITES", value_delimiter = ',')]
    pub cipher_suites: Vec<String>,
    /// Minimum TLS version: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,
    /// Maximum TLS version: TLS1.2 or TLS1.3 (empty: the highest, TLS1.3).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,

    /// URLs serving /livez, /readyz, /health and /metrics over plain HTTP.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// `basic`, or `extensive` to add gRPC handling-time histograms per method (etcd reads
    /// nothing else from it and accepts any value).
    #[arg(long, env = "ETCD_METRICS", default_value = "basic")]
    pub metrics: String,
    /// Interval of progress notifications to watches that asked for them (etcd: 10m).
    #[arg(long, env = "ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL", value_parser = go_duration)]
    pub watch_progress_notify_interval: Option<Duration>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", value_parser = go_duration)]
    pub experimental_watch_progress_notify_interval: Option<Duration>,
    /// etcd's server feature gates, `Name=true|false,...` (see `features`).
    #[arg(long, env = "ETCD_FEATURE_GATES", default_value = "", value_parser = FeatureGates::parse)]
    pub feature_gates: FeatureGates,
    /// `periodic` (retention: a duration, or a number of hours) or `revision` (retention: a
    /// number of revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// How much history automatic compaction keeps; 0 turns it off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// `simple`, or `jwt,pub-key=<path>,priv-key=<path>,sign-method=<RS256…>,ttl=<duration>`.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token lives unless used.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of stored passwords (4–31; etcd falls back to 10 outside that range).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = crate::auth::DEFAULT_BCRYPT_COST)]
    pub bcrypt_cost: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

/// A Go duration as etcd's flags take one (Go's time.ParseDuration): a sequence of decimal
/// numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as "300ms" or
/// "1h30m"; "0" alone needs none. Errors read as Go's.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let quoted = format!("{s:?}");
    let missing_unit = || format!("time: missing unit in duration {quoted}");
    let invalid = || format!("time: invalid duration {quoted}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(
            if s.starts_with('-') && s[1..].chars().all(|c| c.is_ascii_digit()) {
                missing_unit()
            } else {
                invalid()
            },
        );
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "" => return Err(missing_unit()),
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("time: unknown unit {other:?} in duration {quoted}")),
        };
        total += value * seconds;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

/// `args` with every single-dash flag name longer than one letter (`-log-level warn`,
/// `-name=x`) given its second dash, so clap parses etcd's command line as Go's flag package
/// does: Go takes `-flag` and `--flag` alike, where clap reads `-log-level` as the short flags
/// `-l -o -g …` (and an unknown `-nosuch` is then reported as `--nosuch`, not as `-n`). A flag's
/// value after a space is never touched, nor is anything after `--`; one-letter flags (`-h`)
/// stay clap's short flags.
pub fn go_style_args<I>(args: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator,
    I::Item: Into<std::ffi::OsString>,
{
    let mut command = <Config as clap::CommandFactory>::command();
    command.build();
    let long = |name: &str| command.get_arguments().find(|a| a.get_long() == Some(name));
    let mut rewritten = Vec::new();
    let mut value_next = false;
    let mut rest_verbatim = false;
    for (i, arg) in args.into_iter().map(Into::into).enumerate() {
        let text = arg.to_str().unwrap_or_default();
        let verbatim = i == 0 || rest_verbatim || std::mem::take(&mut value_next);
        if verbatim || !text.starts_with('-') {
            rewritten.push(arg);
            continue;
        }
        if text == "--" {
            rest_verbatim = true;
            rewritten.push(arg);
            continue;
        }
        let name = text.trim_start_matches('-');
        let (name, inline_value) = match name.split_once('=') {
            Some((name, _)) => (name, true),
            None => (name, false),
        };
        // A flag that must have a value and has none inline takes the next argument.
        value_next = !inline_value
            && long(name)
                .is_some_and(|flag| flag.get_num_args().is_some_and(|n| n.min_values() > 0));
        if text.starts_with("--") || name.chars().count() < 2 {
            rewritten.push(arg);
        } else {
            rewritten.push(format!("-{text}").into());
        }
    }
    rewritten
}

impl Config {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.oxcd", self.name)))
    }

    /// `--initial-cluster`, defaulting as etcd does to this member alone.
    pub fn initial_cluster(&self) -> String {
        self.initial_cluster.clone().unwrap_or_else(|| {
            self.initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={}", self.name, u))
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    pub fn quota_bytes(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            2 << 30
        } else {
            self.quota_backend_bytes
        }
    }

    /// `--auth-token` and `--auth-token-ttl`, or why they are refused.
    pub fn auth_tokens(&self) -> anyhow::Result<crate::auth::TokenConfig> {
        crate::auth::TokenConfig::parse(&self.auth_token, Duration::from_secs(self.auth_token_ttl))
    }

    /// `--bcrypt-cost`; etcd warns and uses its default outside bcrypt's range.
    pub fn bcrypt_cost(&self) -> u32 {
        if (4..=31).contains(&self.bcrypt_cost) {
            self.bcrypt_cost
        } else {
            tracing::warn!(
                given = self.bcrypt_cost,
                default = crate::auth::DEFAULT_BCRYPT_COST,
                "use default bcrypt cost instead of the invalid given cost"
            );
            crate::auth::DEFAULT_BCRYPT_COST
        }
    }

    /// Automatic compaction as the flags ask for it, or why they are refused.
    pub fn auto_compaction(&self) -> anyhow::Result<Option<crate::auto_compaction::Retention>> {
        crate::auto_compaction::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)
            .map_err(anyhow::Error::msg)
    }

    /// etcd's default is 10 minutes; kubeadm sets 5 s.
    pub fn progress_notify_interval(&self) -> Duration {
        self.watch_progress_notify_interval
            .or(self.experimental_watch_progress_notify_interval)
            .unwrap_or(Duration::from_secs(600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_a_single_local_member() {
        let c = Config::try_parse_from(["oxcd"]).unwrap();
        assert_eq!(c.data_dir(), PathBuf::from("default.oxcd"));
        assert_eq!(c.listen_client_urls, ["http://127.0.0.1:2379"]);
        assert_eq!(c.initial_cluster(), "default=http://127.0.0.1:2380");
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.max_request_bytes, 1_572_864);
    }

    #[test]
    fn kubeadm_flags_parse() {
        let c = Config::try_parse_from([
            "oxcd",
            "--name=cp1",
            "--data-dir=/var/lib/etcd",
            "--listen-client-urls=https://127.0.0.1:2379,https://10.0.0.1:2379",
            "--client-cert-auth=true",
            "--snapshot-count=10000",
            "--watch-progress-notify-interval=5s",
            "--feature-gates=InitialCorruptCheck=true",
            "--initial-cluster-state=new",
        ])
        .unwrap();
        assert_eq!(c.listen_client_urls.len(), 2);
        assert_eq!(
            c.watch_progress_notify_interval,
            Some(Duration::from_secs(5))
        );
        assert_eq!(c.client_cert_auth, Some(true));
        assert!(c.feature_gates.enabled("InitialCorruptCheck"));
    }

    fn go_style(args: &[&str]) -> Vec<String> {
        go_style_args(args.iter().copied())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_parse_as_go_parses_them() {
        let args = [
            "etcd",
            "-log-level",
            "warn",
            "-name=x",
            "-data-dir",
            "-weird-dir",
            "--listen-client-urls",
            "unix:///tmp/etcd.sock",
            "-client-cert-auth",
            "-h",
            "-nosuchflag",
        ];
        assert_eq!(
            go_style(&args),
            [
                "etcd",
                "--log-level",
                "warn",
                "--name=x",
                "--data-dir",
                "-weird-dir",
                "--listen-client-urls",
                "unix:///tmp/etcd.sock",
                "--client-cert-auth",
                "-h",
                "--nosuchflag",
            ]
        );
        assert_eq!(go_style(&["etcd", "-help"]), ["etcd", "--help"]);
        assert_eq!(go_style(&["etcd", "-version"]), ["etcd", "--version"]);
        assert_eq!(go_style(&["etcd", "--", "-name"]), ["etcd", "--", "-name"]);
        let c = Config::try_parse_from(go_style(&[
            "etcd",
            "-log-level",
            "warn",
            "-name=x",
            "-data-dir",
            "/d",
        ]))
        .unwrap();
        assert_eq!((c.log_level.as_str(), c.name.as_str()), ("warn", "x"));
        assert_eq!(c.data_dir(), PathBuf::from("/d"));
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration("5s"), Ok(ms(5000)));
        assert_eq!(go_duration("100ms"), Ok(ms(100)));
        assert_eq!(go_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(go_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(
            go_duration("1x"),
            Err("time: unknown unit \"x\" in duration \"1x\"".into())
        );
        assert_eq!(
            go_duration("10"),
            Err("time: missing unit in duration \"10\"".into())
        );
    }

    #[test]
    fn flags_oxcd_cannot_honour_are_refused() {
        for bad in [
            "--logger=capnslog",
            "--log-level=verbose",
            "--feature-gates=LeaseCheckpoint=true",
            "--feature-gates=NoSuchGate=true",
        ] {
            assert!(Config::try_parse_from(["oxcd", bad]).is_err(), "{bad}");
        }
        let c = Config::try_parse_from(["oxcd", "--auto-compaction-mode=hourly"]).unwrap();
        assert!(c.auto_compaction().is_err());
    }

    #[test]
    fn certificate_identity_flags_take_one_name_or_a_list() {
        let c = Config::try_parse_from([
            "oxcd",
            "--peer-cert-allowed-cn=etcd-peer",
            "--client-cert-allowed-hostname=a.example,10.0.0.1",
        ])
        .unwrap();
        assert_eq!(c.peer_cert_allowed_cn, ["etcd-peer"]);
        assert!(c.peer_cert_allowed_hostname.is_empty());
        assert_eq!(c.client_cert_allowed_hostname, ["a.example", "10.0.0.1"]);
    }

    #[test]
    fn transport_flags_parse_as_etcd_takes_them() {
        let c = Config::try_parse_from([
            "oxcd",
            "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "--tls-max-version=TLS1.3",
            "--auto-tls",
            "--peer-auto-tls=false",
            "--self-signed-cert-validity=3",
            "--client-crl-file=/etc/crl.pem",
        ])
        .unwrap();
        assert_eq!(c.cipher_suites.len(), 2);
        assert_eq!(c.tls_min_version, "TLS1.2");
        assert_eq!(c.tls_max_version, "TLS1.3");
        assert_eq!((c.auto_tls, c.peer_auto_tls), (Some(true), Some(false)));
        assert_eq!(c.self_signed_cert_validity, 3);
        assert_eq!(c.client_crl_file, Some(PathBuf::from("/etc/crl.pem")));
    }
}
