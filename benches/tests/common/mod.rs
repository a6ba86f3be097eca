//! What every end-to-end test of an `oxcd-bench` driver does first: run it against real etcd and
//! the oxcd built alongside, into a fresh output directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `oxcd-bench ARGS --oxcd-bin OXCD --etcd-bin ETCD [FLAG PATH]... --out DIR`, with `other`
/// naming further binaries, and returns DIR once the run succeeded.
pub fn run_driver(args: &[&str], etcd: &Path, other: &[(&str, PathBuf)]) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_oxcd-bench"))
        .args(args)
        .arg("--oxcd-bin")
        .arg(oxcd_tests::oxcd_bin())
        .arg("--etcd-bin")
        .arg(etcd)
        .args(
            other
                .iter()
                .flat_map(|(flag, path)| [OsString::from(flag), path.into()]),
        )
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("cannot run oxcd-bench");
    assert!(status.success(), "oxcd-bench {} failed: {status}", args[0]);
    out
}
