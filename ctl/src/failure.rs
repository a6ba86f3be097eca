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
    Io = 6,
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
