//! Client TLS as kubeadm configures etcd: https:// client URLs, a server certificate, and
//! client certificates required (`--client-cert-auth --trusted-ca-file`). Driven with Debian's
//! etcdctl; certificates are made with the openssl command.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use oxcd_tests::{free_port, oxcd_bin};

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

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
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
            "/CN=oxcd-test-ca",
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
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
}

fn etcdctl(dir: &Path, endpoint: &str, with_client_cert: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg(format!("--cacert={}", dir.join("ca.crt").display()))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=3s");
    if with_client_cert {
        cmd.arg(format!("--cert={}", dir.join("client.crt").display()))
            .arg(format!("--key={}", dir.join("client.key").display()));
    }
    cmd.args(args).output().expect("etcdctl must be installed")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn etcdctl_talks_to_oxcd_over_tls_with_client_certificates() {
    oxcd_tests::require_etcd();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("https://127.0.0.1:{client}");
    let c = |name: &str| dir.path().join(name).display().to_string();
    let _server = Killed(
        Command::new(oxcd_bin())
            .args([
                "--name",
                "n1",
                "--data-dir",
                &c("data"),
                "--log-level",
                "error",
            ])
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=n1=http://127.0.0.1:{peer}"))
            .args([
                "--cert-file",
                &c("server.crt"),
                "--key-file",
                &c("server.key"),
            ])
            .args(["--trusted-ca-file", &c("ca.crt"), "--client-cert-auth"])
            .spawn()
            .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = etcdctl(dir.path(), &endpoint, true, &["put", "tls-key", "secret"]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "oxcd never answered over TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = etcdctl(
        dir.path(),
        &endpoint,
        true,
        &["get", "tls-key", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "secret");

    let refused = etcdctl(dir.path(), &endpoint, false, &["get", "tls-key"]);
    assert!(
        !refused.status.success(),
        "a client without a certificate must be refused"
    );

    let plain = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints=http://127.0.0.1:{client}"),
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "tls-key",
        ])
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "plaintext must not be served on an https:// URL"
    );
}
