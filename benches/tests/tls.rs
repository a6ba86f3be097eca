//! The load generators over TLS, as etcdctl's flags set it up: against a real etcd that requires
//! client certificates, verifying its certificate with --cacert, and with
//! --insecure-skip-tls-verify. Certificates and the member are the integration tests' fixtures.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use oxcd_tests::certs::{make_certificates, TlsMember};
use oxcd_tests::etcd_bin;
use serde_json::Value;

/// Runs `oxcd-bench put` with `tls_flags` and returns its JSON report, retrying while etcd is
/// still starting.
fn put_over_tls(etcd: &TlsMember, dir: &Path, tls_flags: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new(env!("CARGO_BIN_EXE_oxcd-bench"))
            .current_dir(dir)
            .args([
                "put",
                "--endpoints",
                &etcd.endpoint,
                "--clients",
                "4",
                "--conns",
                "2",
            ])
            .args(["--total", "100", "--json"])
            .args(tls_flags)
            .output()
            .expect("cannot run oxcd-bench");
        if output.status.success() {
            return serde_json::from_slice(&output.stdout).unwrap();
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if Instant::now() >= deadline {
            panic!("oxcd-bench put {tls_flags:?} failed: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn workloads_run_over_tls_with_a_ca_and_without_verification() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let etcd = TlsMember::start(&etcd_bin(), dir.path());

    let client_cert = ["--cert", "client.crt", "--key", "client.key"];
    let verified = put_over_tls(
        &etcd,
        dir.path(),
        &[&["--cacert", "ca.crt"][..], &client_cert].concat(),
    );
    assert_eq!(verified["total"], 100);
    assert_eq!(verified["errors"], 0, "{verified}");

    let unverified = put_over_tls(
        &etcd,
        dir.path(),
        &[&["--insecure-skip-tls-verify"][..], &client_cert].concat(),
    );
    assert_eq!(unverified["errors"], 0, "{unverified}");

    // Without a client certificate, etcd refuses the handshake.
    let output = Command::new(env!("CARGO_BIN_EXE_oxcd-bench"))
        .current_dir(dir.path())
        .args([
            "put",
            "--endpoints",
            &etcd.endpoint,
            "--total",
            "10",
            "--cacert",
            "ca.crt",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
}
