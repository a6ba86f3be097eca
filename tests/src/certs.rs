//! TLS fixtures: certificates made with the openssl command, a single member serving its
//! client API over https:// with client certificates required (as kubeadm configures etcd),
//! optionally its peer URL too, and a bare TLS handshake to see which certificates a port lets in.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::{free_port, oxcdctl_bin};

/// Runs the openssl command in `dir`; a failure panics with what openssl said.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<name>.crt` and `<name>.key`: a certificate for `cn` signed by `ca.crt`, with the X.509 v3
/// extensions in `extensions` (an openssl extension file's lines).
fn signed(dir: &Path, name: &str, cn: &str, extensions: &str) {
    let (key, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), extensions).unwrap();
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out",
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

/// `<name>.crt` and `<name>.key`: a self-signed CA certificate (openssl's `req -x509` marks it
/// CA:TRUE) with the extra extensions `addext` (`-addext` arguments).
fn self_signed(dir: &Path, name: &str, cn: &str, addext: &[&str]) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    let subject = format!("/CN={cn}");
    let mut args = vec![
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
        "-keyout", &key, "-out", &crt,
    ];
    for ext in addext {
        args.extend(["-addext", ext]);
    }
    openssl(dir, &args);
}

/// In `dir`:
/// - `ca`: the CA; `server` (for 127.0.0.1), `client` (CN root, no SANs) and `peer` (CN peer,
///   for 127.0.0.1, usable both ways, as kubeadm's peer certificates are), signed by it;
/// - `client-san`: a client certificate (CN san-client) valid for `client.oxcd.test` and
///   127.0.0.1, signed by the CA;
/// - `self`, `self-server-only` (extended key usage serverAuth only) and `self-untrusted`:
///   self-signed CA certificates; `client-ca-bundle.crt` trusts `ca`, `self` and
///   `self-server-only`, not `self-untrusted`.
pub fn make_certificates(dir: &Path) {
    self_signed(dir, "ca", "oxcd-test-ca", &[]);
    signed(
        dir,
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    signed(dir, "client", "root", "extendedKeyUsage=clientAuth\n");
    signed(
        dir,
        "peer",
        "peer",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    signed(
        dir,
        "client-san",
        "san-client",
        "subjectAltName=DNS:client.oxcd.test,IP:127.0.0.1\nextendedKeyUsage=clientAuth\n",
    );
    self_signed(dir, "self", "self-client", &[]);
    self_signed(
        dir,
        "self-server-only",
        "self-server-only",
        &["extendedKeyUsage=serverAuth"],
    );
    self_signed(dir, "self-untrusted", "self-untrusted", &[]);
    let bundle: String = ["ca.crt", "self.crt", "self-server-only.crt"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect();
    std::fs::write(dir.join("client-ca-bundle.crt"), bundle).unwrap();
}

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a [`TlsMember`] serves beyond its https:// client URL with `server.crt`.
#[derive(Clone, Debug, Default)]
pub struct TlsSetup {
    /// The `--trusted-ca-file` for client certificates, in the certificate dir (else `ca.crt`).
    pub client_ca: Option<String>,
    /// An https:// peer URL with `peer.crt`, peer certificates signed by `ca.crt` required.
    pub peer_tls: bool,
    /// Further `name=peer-url` entries of `--initial-cluster` (members that are not started).
    pub other_members: Vec<String>,
    pub extra_args: Vec<String>,
    /// Environment variables (`ETCD_*` flags).
    pub env: Vec<(String, String)>,
}

/// One member (`binary` is oxcd or etcd; both take etcd's flags) with its data and the
/// certificates of [`make_certificates`] in `dir`.
pub struct TlsMember {
    _process: Killed,
    /// `https://127.0.0.1:PORT`
    pub endpoint: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl TlsMember {
    pub fn start(binary: &Path, dir: &Path) -> TlsMember {
        Self::start_with(binary, dir, &TlsSetup::default())
    }

    pub fn start_with(binary: &Path, dir: &Path, setup: &TlsSetup) -> TlsMember {
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client}");
        let peer_url = format!(
            "{}://127.0.0.1:{peer}",
            if setup.peer_tls { "https" } else { "http" }
        );
        let c = |name: &str| dir.join(name).display().to_string();
        let mut command = Command::new(binary);
        command
            .args([
                "--name",
                "n1",
                "--data-dir",
                &c(&format!("data-{client}")),
                "--log-level",
                "error",
            ])
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!(
                "--initial-cluster={}",
                std::iter::once(format!("n1={peer_url}"))
                    .chain(setup.other_members.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .args([
                "--cert-file",
                &c("server.crt"),
                "--key-file",
                &c("server.key"),
            ])
            .args([
                "--trusted-ca-file",
                &c(setup.client_ca.as_deref().unwrap_or("ca.crt")),
                "--client-cert-auth",
            ]);
        if setup.peer_tls {
            command.args([
                "--peer-cert-file",
                &c("peer.crt"),
                "--peer-key-file",
                &c("peer.key"),
                "--peer-trusted-ca-file",
                &c("ca.crt"),
                "--peer-client-cert-auth",
            ]);
        }
        let process = command
            .args(&setup.extra_args)
            .envs(setup.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        TlsMember {
            _process: Killed(process),
            endpoint,
            client_port: client,
            peer_port: peer,
        }
    }
}

/// Whether 127.0.0.1:`port` completes a TLS 1.2 handshake with a client that presents
/// `<cert>.crt` (key `<cert>.key`) from `dir` and trusts `ca.crt`; the error says why not.
/// TLS 1.2, because there the server judges the client certificate before it finishes the
/// handshake (in TLS 1.3 the client finishes first and learns of a refusal only later).
pub async fn tls12_handshake(dir: &Path, port: u16, cert: &str) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(dir.join(format!("{cert}.crt")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{cert}.key"))).unwrap();
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    match tokio::time::timeout(Duration::from_secs(5), handshake).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Waits until `port` completes a handshake presenting `cert` (a member opens its ports as it
/// starts up), or panics with the last error after `timeout`.
pub async fn wait_for_handshake(dir: &Path, port: u16, cert: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match tls12_handshake(dir, port, cert).await {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                panic!("port {port} never completed a TLS handshake with {cert}.crt: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `oxcdctl pki init` into `dir` for members m0.. at 127.0.0.1.
pub fn pki_init(dir: &Path, members: usize) {
    let spec = (0..members)
        .map(|i| format!("m{i}=127.0.0.1"))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(oxcdctl_bin())
        .args(["pki", "init", "--dir"])
        .arg(dir)
        .arg(format!("--members={spec}"))
        .output()
        .expect("oxcdctl must be built");
    assert!(
        out.status.success(),
        "pki init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A member of [`start_tls_cluster`]; killed (SIGKILL) on drop.
pub struct TlsClusterMember {
    pub client_port: u16,
    pub peer_port: u16,
    process: Killed,
}

impl TlsClusterMember {
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    /// SIGKILL, as a crash; waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }
}

/// `n` members (`binary` is oxcd or etcd) with https:// client and peer URLs, client and peer
/// certificates required, all from `pki`'s files; `extra` flags go to every member.
pub fn start_tls_cluster(
    binary: &Path,
    pki: &Path,
    data: &Path,
    n: usize,
    extra: &[String],
) -> Vec<TlsClusterMember> {
    start_tls_cluster_with(binary, pki, data, n, |_| extra.to_vec())
}

/// [`start_tls_cluster`] with flags of each member's own (`extra(i)` for member m<i>).
pub fn start_tls_cluster_with(
    binary: &Path,
    pki: &Path,
    data: &Path,
    n: usize,
    extra: impl Fn(usize) -> Vec<String>,
) -> Vec<TlsClusterMember> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=https://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let file = |name: String| pki.join(name).display().to_string();
    ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let m = format!("m{i}");
            let process = Command::new(binary)
                .args(["--name", &m, "--log-level", "error"])
                .arg("--data-dir")
                .arg(data.join(&m))
                .arg(format!("--listen-client-urls=https://127.0.0.1:{client}"))
                .arg(format!(
                    "--advertise-client-urls=https://127.0.0.1:{client}"
                ))
                .arg(format!("--listen-peer-urls=https://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=https://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={initial}"))
                .args(["--cert-file", &file(format!("{m}/server.crt"))])
                .args(["--key-file", &file(format!("{m}/server.key"))])
                .args([
                    "--trusted-ca-file",
                    &file("ca.crt".into()),
                    "--client-cert-auth",
                ])
                .args(["--peer-cert-file", &file(format!("{m}/peer.crt"))])
                .args(["--peer-key-file", &file(format!("{m}/peer.key"))])
                .args(["--peer-trusted-ca-file", &file("ca.crt".into())])
                .arg("--peer-client-cert-auth")
                .args(extra(i))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            TlsClusterMember {
                client_port: *client,
                peer_port: *peer,
                process: Killed(process),
            }
        })
        .collect()
}
