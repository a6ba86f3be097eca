//! TLS fixtures: certificates made with the openssl command, and a single member serving its
//! client API over https:// with client certificates required (as kubeadm configures etcd).

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::free_port;

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

/// A CA, a server certificate for 127.0.0.1, a client certificate and a peer certificate (for
/// 127.0.0.1, usable both ways, as kubeadm's peer certificates are), all signed by the CA.
pub fn make_certificates(dir: &Path) {
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
    std::fs::write(
        dir.join("peer.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    for (name, cn) in [
        ("server", "127.0.0.1"),
        ("client", "root"),
        ("peer", "peer"),
    ] {
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

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One member (`binary` is oxcd or etcd; both take etcd's flags) with its data and the
/// certificates of [`make_certificates`] in `dir`.
pub struct TlsMember {
    _process: Killed,
    /// `https://127.0.0.1:PORT`
    pub endpoint: String,
    pub client_port: u16,
}

impl TlsMember {
    pub fn start(binary: &Path, dir: &Path) -> TlsMember {
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client}");
        let c = |name: &str| dir.join(name).display().to_string();
        let process = Command::new(binary)
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        TlsMember {
            _process: Killed(process),
            endpoint,
            client_port: client,
        }
    }
}
