//! The load generators over TLS, as etcdctl's flags set it up: against a real etcd that requires
//! client certificates, verifying its certificate with --cacert, and with
//! --insecure-skip-tls-verify. Certificates are made with the openssl command.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxcd_tests::{etcd_bin, free_port};
use serde_json::Value;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl must be installed");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=oxcd-bench-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "root")] {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
    }
}

/// etcd serving https:// and requiring a client certificate signed by the CA.
struct TlsEtcd {
    child: Child,
    url: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_etcd(dir: &Path) -> TlsEtcd {
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let file = |name: &str| dir.join(name).display().to_string();
    let child = Command::new(etcd_bin())
        .args(["--name", "n1", "--data-dir", &file("data")])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("n1={peer_url}")])
        .args([
            "--cert-file",
            &file("server.crt"),
            "--key-file",
            &file("server.key"),
        ])
        .args(["--client-cert-auth", "--trusted-ca-file", &file("ca.crt")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
        .spawn()
        .expect("cannot start etcd");
    TlsEtcd { child, url }
}

/// Runs `oxcd-bench put` with `tls_flags` and returns its JSON report, retrying while etcd is
/// still starting.
fn put_over_tls(etcd: &TlsEtcd, dir: &Path, tls_flags: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new(env!("CARGO_BIN_EXE_oxcd-bench"))
            .current_dir(dir)
            .args([
                "put",
                "--endpoints",
                &etcd.url,
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
            let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            panic!("oxcd-bench put {tls_flags:?} failed: {stderr}\netcd's last lines: {tail:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn workloads_run_over_tls_with_a_ca_and_without_verification() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let etcd = start_etcd(dir.path());

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
            &etcd.url,
            "--total",
            "10",
            "--cacert",
            "ca.crt",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
}
