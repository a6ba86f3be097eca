//! How a command fails: etcdctl prints `Error: <message>` on stderr and exits with one of a few
//! codes, which scripts test.

use std::fmt;

/// etcdctl's exit codes (etcdctl/ctlv3/command/error.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Error = 1,
    BadConnection = 2,
    InvalidInput = 3,
    BadFeature = 4,
    Interrupted = 5,
    BadArgs = 128,
}

#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Prints the failure as etcdctl does and ends the process.
    pub fn exit(self) -> ! {
        eprintln!("Error: {}", self.message);
        std::process::exit(self.code as i32)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::new(ExitCode::Error, format!("{e:#}"))
    }
}

pub type CtlResult<T = ()> = Result<T, Failure>;

/// pflag's wording for a command line clap rejected (`unknown flag: --bogus`,
/// `invalid argument "x" for "--limit" flag: ...`).
pub fn go_flag_error(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(s)) => s.join(" "),
        _ => String::new(),
    };
    let flag_name = |arg: String| {
        arg.split([' ', '=', '['])
            .next()
            .unwrap_or_default()
            .to_string()
    };
    match error.kind() {
        ErrorKind::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg);
            match arg.strip_prefix("--") {
                Some(_) => format!("unknown flag: {}", flag_name(arg)),
                None => match arg.strip_prefix('-') {
                    Some(short) => format!(
                        "unknown shorthand flag: '{}' in {arg}",
                        short.chars().next().unwrap_or('-')
                    ),
                    None => format!(
                        "unknown command {}",
                        crate::output::text::go_quote(arg.as_bytes())
                    ),
                },
            }
        }
        ErrorKind::InvalidValue if context(ContextKind::InvalidValue).is_empty() => {
            let flag = flag_name(context(ContextKind::InvalidArg));
            // pflag names the flag as typed: `-w` or `--write-out`.
            let short = std::env::args().rev().find_map(|a| {
                let c = a.strip_prefix('-').filter(|c| c.len() == 1)?;
                Some(c.to_string())
            });
            match short {
                Some(c) if std::env::args().next_back().as_deref() == Some(&format!("-{c}")) => {
                    format!("flag needs an argument: '{c}' in -{c}")
                }
                _ => format!("flag needs an argument: {flag}"),
            }
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let source = std::error::Error::source(error)
                .map(|s| s.to_string())
                .unwrap_or_default();
            format!(
                "invalid argument {} for {} flag: {source}",
                crate::output::text::go_quote(context(ContextKind::InvalidValue).as_bytes()),
                crate::output::text::go_quote(
                    flag_name(context(ContextKind::InvalidArg)).as_bytes()
                ),
            )
        }
        ErrorKind::NoEquals | ErrorKind::TooFewValues | ErrorKind::WrongNumberOfValues => {
            format!(
                "flag needs an argument: {}",
                flag_name(context(ContextKind::InvalidArg))
            )
        }
        _ => error
            .render()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string(),
    }
}

/// Ends the process for a command line clap rejected, with cobra's output and exit codes.
pub fn exit_for_cli_error(error: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | ErrorKind::MissingSubcommand => {
            let args: Vec<String> = std::env::args().collect();
            let root = <crate::Cli as clap::CommandFactory>::command();
            let path = crate::usage::command_path(&root, &args);
            // etcdctl's own overview lists commands oxcdctl leaves to other tools; clap's
            // help stands in for it.
            if path.is_empty() {
                let _ = error.print();
            } else {
                print!("{}", crate::usage::usage(&root, &path));
            }
            std::process::exit(0)
        }
        ErrorKind::InvalidSubcommand => {
            // cobra answers an unknown word after a command group (`lease frob`) with the
            // group's usage, as if no subcommand had been given.
            let args: Vec<String> = std::env::args().collect();
            let root = <crate::Cli as clap::CommandFactory>::command();
            let path = crate::usage::command_path(&root, &args);
            if !path.is_empty() {
                print!("{}", crate::usage::usage(&root, &path));
                std::process::exit(0)
            }
            let name = match error.get(ContextKind::InvalidSubcommand) {
                Some(ContextValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            let message = format!(
                "unknown command {} for \"etcdctl\"",
                crate::output::text::go_quote(name.as_bytes())
            );
            eprintln!("Error: {message}\nRun 'etcdctl --help' for usage.\nError: {message}");
            std::process::exit(ExitCode::Error as i32)
        }
        _ => {
            // cobra reports the flag error, prints the usage, and etcdctl reports it again.
            let message = go_flag_error(&error);
            eprintln!("Error: {message}");
            let args: Vec<String> = std::env::args().collect();
            let root = <crate::Cli as clap::CommandFactory>::command();
            let path = crate::usage::command_path(&root, &args);
            print!("{}", crate::usage::usage(&root, &path));
            eprint!("\nError: {message}\n");
            std::process::exit(ExitCode::Error as i32)
        }
    }
}
