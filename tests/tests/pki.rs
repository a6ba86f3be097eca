//! TLS clusters started from `oxcdctl pki init` files alone, and etcd's transport flags:
//! `--client-crl-file`, `--tls-min/max-version`, `--cipher-suites` (handshakes and start-up
//! refusals) and `--auto-tls`/`--peer-auto-tls`. Driven with Debian's etcdctl 3.4 and bare
//! rustls handshakes; etcd 3.7.3 is the reference where it behaves observably (the same files
//! start an etcd cluster; the same CRL, versions and suites refuse the same clients; the same
//! flags are refused at start with the same words).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxcd_tests::certs::{
    openssl, pki_init, start_tls_cluster, start_tls_cluster_with, Killed, TlsClusterMember,
};
use oxcd_tests::{etcd37_bin, free_port, oxcd_bin};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio_rustls::TlsConnector;

fn require(binary: &Path) -> PathBuf {
    assert!(binary.is_file(), "{} is missing", binary.display());
    binary.to_path_buf()
}

/// etcdctl 3.4 over TLS, trusting `ca.crt` and presenting `<cert>.crt` of `pki`.
fn etcdctl(pki: &Path, endpoints: &str, cert: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", pki.join("ca.crt").display()))
        .arg(format!(
            "--cert={}",
            pki.join(format!("{cert}.crt")).display()
        ))
        .arg(format!(
            "--key={}",
            pki.join(format!("{cert}.key")).display()
        ))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("etcdctl must be installed")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Retries `run` until it succeeds, or panics with its last error after `timeout`.
fn eventually(what: &str, timeout: Duration, mut run: impl FnMut() -> Output) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        let out = run();
        if out.status.success() {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The files `pki init` writes start a 3-member cluster whose client and peer URLs are
/// https:// with certificates required both ways, and kubeadm's healthcheck client certificate
/// drives it; the same files start etcd 3.7.3 the same way.
#[test]
fn a_three_member_tls_cluster_starts_from_pki_init_files() {
    for binary in [oxcd_bin(), require(&etcd37_bin())] {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        pki_init(&pki, 3);
        let members = start_tls_cluster(&binary, &pki, dir.path(), 3, &[]);
        let all = members
            .iter()
            .map(TlsClusterMember::endpoint)
            .collect::<Vec<_>>()
            .join(",");
        let who = binary.display().to_string();
        let first = members[0].endpoint();
        eventually(&format!("[{who}] put"), Duration::from_secs(30), || {
            etcdctl(
                &pki,
                &first,
                "healthcheck-client",
                &["put", "pki-key", "v1"],
            )
        });
        for m in &members {
            let got = eventually(&format!("[{who}] get"), Duration::from_secs(10), || {
                etcdctl(
                    &pki,
                    &m.endpoint(),
                    "apiserver-etcd-client",
                    &["get", "pki-key", "--print-value-only"],
                )
            });
            assert_eq!(stdout(&got).trim(), "v1", "[{who}]");
        }
        let list = eventually(
            &format!("[{who}] member list"),
            Duration::from_secs(10),
            || etcdctl(&pki, &all, "healthcheck-client", &["member", "list"]),
        );
        let list = stdout(&list);
        for name in ["m0", "m1", "m2"] {
            assert!(
                list.contains(&format!(", {name}, https://127.0.0.1:")),
                "[{who}] {list}"
            );
        }
        let health = eventually(
            &format!("[{who}] endpoint health"),
            Duration::from_secs(15),
            || {
                etcdctl(
                    &pki,
                    &first,
                    "healthcheck-client",
                    &["endpoint", "health", "--cluster"],
                )
            },
        );
        let health = String::from_utf8_lossy(&health.stderr).into_owned() + &stdout(&health);
        assert_eq!(health.matches("is healthy").count(), 3, "[{who}] {health}");

        // A client without a certificate of this CA is refused.
        let other = dir.path().join("other");
        pki_init(&other, 1);
        let mut refused = Command::new("etcdctl");
        refused
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={first}"))
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--cert={}",
                other.join("healthcheck-client.crt").display()
            ))
            .arg(format!(
                "--key={}",
                other.join("healthcheck-client.key").display()
            ))
            .args([
                "--dial-timeout=2s",
                "--command-timeout=3s",
                "get",
                "pki-key",
            ]);
        assert!(!refused.output().unwrap().status.success(), "[{who}]");
    }
}

/// Revokes `<name>.crt` of `pki`'s CA for each of `names` with `openssl ca` (adding to what
/// was revoked before) and (re)writes the CA's CRL in DER, what etcd 3.7 reads, atomically.
fn revoke(pki: &Path, names: &[&str]) -> PathBuf {
    if !pki.join("index.txt").exists() {
        std::fs::write(pki.join("index.txt"), "").unwrap();
        std::fs::write(pki.join("crlnumber"), "01\n").unwrap();
        std::fs::write(
            pki.join("ca.cnf"),
            "[ca]\ndefault_ca = oxcd\n[oxcd]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
             certificate = ca.crt\nprivate_key = ca.key\ndefault_md = sha256\n\
             default_crl_days = 30\n",
        )
        .unwrap();
    }
    for name in names {
        let cert = format!("{name}.crt");
        openssl(pki, &["ca", "-config", "ca.cnf", "-revoke", &cert]);
    }
    openssl(
        pki,
        &["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"],
    );
    openssl(
        pki,
        &[
            "crl",
            "-in",
            "crl.pem",
            "-outform",
            "DER",
            "-out",
            "crl.der.new",
        ],
    );
    std::fs::rename(pki.join("crl.der.new"), pki.join("crl.der")).unwrap();
    pki.join("crl.der")
}

/// `--client-crl-file` and `--peer-crl-file`: a revoked client or peer certificate is refused,
/// another of the same CA is not, and a certificate revoked while the member runs is refused
/// from the next connection on (the file is read again, as etcd reads it per connection).
#[tokio::test]
async fn certificates_revoked_by_the_crl_are_refused() {
    for binary in [oxcd_bin(), require(&etcd37_bin())] {
        let who = binary.display().to_string();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        pki_init(&pki, 3);
        let crl = revoke(&pki, &["apiserver-etcd-client", "m2/peer"]);
        let member = start_tls_cluster(
            &binary,
            &pki,
            dir.path(),
            1,
            &[
                format!("--client-crl-file={}", crl.display()),
                format!("--peer-crl-file={}", crl.display()),
            ],
        )
        .remove(0);
        let endpoint = member.endpoint();
        eventually(&format!("[{who}] put"), Duration::from_secs(20), || {
            etcdctl(&pki, &endpoint, "healthcheck-client", &["put", "k", "v"])
        });
        let revoked = etcdctl(&pki, &endpoint, "apiserver-etcd-client", &["get", "k"]);
        assert!(!revoked.status.success(), "[{who}] {}", stdout(&revoked));

        let peer_port = member.peer_port;
        let m1 = served(&pki, peer_port, "m1/peer").await;
        assert!(m1.is_ok(), "[{who}] m1's peer certificate: {m1:?}");
        let m2 = served(&pki, peer_port, "m2/peer").await;
        assert!(
            m2.is_err(),
            "[{who}] m2's revoked peer certificate was let in"
        );

        revoke(&pki, &["healthcheck-client"]);
        let now_revoked = etcdctl(&pki, &endpoint, "healthcheck-client", &["get", "k"]);
        assert!(
            !now_revoked.status.success(),
            "[{who}] revoked while running"
        );
    }
}

/// A bare handshake with 127.0.0.1:`port` presenting `pki`'s `<cert>.crt`, offering only
/// `versions` and (when given) only the named cipher suites, and HTTP/2.
async fn connect(
    pki: &Path,
    port: u16,
    cert: &str,
    versions: &[&'static SupportedProtocolVersion],
    suites: Option<&[&str]>,
) -> Result<TlsStream<TcpStream>, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = suites {
        provider
            .cipher_suites
            .retain(|s| names.contains(&s.suite().as_str().unwrap_or_default()));
    }
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.join("ca.crt")).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(pki.join(format!("{cert}.crt"))).unwrap()];
    let key = PrivateKeyDer::from_pem_file(pki.join(format!("{cert}.key"))).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let connect = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

async fn handshake(
    pki: &Path,
    port: u16,
    versions: &[&'static SupportedProtocolVersion],
    suites: Option<&[&str]>,
) -> Result<(), String> {
    connect(pki, port, "healthcheck-client", versions, suites)
        .await
        .map(drop)
}

/// Whether a connection presenting `<cert>.crt` is served: its HTTP/2 preface is answered.
/// etcd judges revocation after the handshake and then closes the connection; rustls refuses
/// during the handshake; either way the preface goes unanswered.
async fn served(pki: &Path, port: u16, cert: &str) -> Result<(), String> {
    let mut tls = connect(pki, port, cert, TLS13, None).await?;
    // The client preface and an empty SETTINGS frame.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    tls.write_all(&preface)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

async fn wait_for_port(pki: &Path, port: u16, versions: &[&'static SupportedProtocolVersion]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = handshake(pki, port, versions, None).await {
        assert!(
            Instant::now() < deadline,
            "port {port} never took a handshake: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// `--tls-min-version=TLS1.3` refuses a client that offers TLS 1.2 only, and
/// `--tls-max-version=TLS1.2` one that offers TLS 1.3 only, as etcd 3.7 does.
#[tokio::test]
async fn tls_versions_bound_the_handshakes() {
    for binary in [oxcd_bin(), require(&etcd37_bin())] {
        let who = binary.display().to_string();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        pki_init(&pki, 1);
        let min13 = start_tls_cluster(
            &binary,
            &pki,
            &dir.path().join("a"),
            1,
            &["--tls-min-version=TLS1.3".into()],
        );
        wait_for_port(&pki, min13[0].client_port, TLS13).await;
        let refused = handshake(&pki, min13[0].client_port, TLS12, None).await;
        assert!(
            refused.is_err(),
            "[{who}] TLS 1.2 against --tls-min-version=TLS1.3"
        );
        drop(min13);

        let max12 = start_tls_cluster(
            &binary,
            &pki,
            &dir.path().join("b"),
            1,
            &["--tls-max-version=TLS1.2".into()],
        );
        wait_for_port(&pki, max12[0].client_port, TLS12).await;
        let refused = handshake(&pki, max12[0].client_port, TLS13, None).await;
        assert!(
            refused.is_err(),
            "[{who}] TLS 1.3 against --tls-max-version=TLS1.2"
        );
    }
}

/// The versions bind peer connections both ways, dials included: m0 speaks TLS 1.2 only and
/// m1, m2 TLS 1.3 only, so m1 and m2 form a quorum over TLS 1.3 while m0 reaches no one and
/// no one reaches m0 (if dials ignored the flags, m0's would get through to m1 and m2).
#[test]
fn tls_versions_bind_peer_dials_too() {
    for binary in [oxcd_bin(), require(&etcd37_bin())] {
        let who = binary.display().to_string();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        pki_init(&pki, 3);
        let members = start_tls_cluster_with(&binary, &pki, dir.path(), 3, |i| {
            vec![if i == 0 {
                "--tls-max-version=TLS1.2".to_string()
            } else {
                "--tls-min-version=TLS1.3".to_string()
            }]
        });
        let m1 = members[1].endpoint();
        eventually(
            &format!("[{who}] put on m1"),
            Duration::from_secs(30),
            || etcdctl(&pki, &m1, "healthcheck-client", &["put", "k", "v"]),
        );
        let m2 = members[2].endpoint();
        let got = eventually(
            &format!("[{who}] get on m2"),
            Duration::from_secs(10),
            || {
                etcdctl(
                    &pki,
                    &m2,
                    "healthcheck-client",
                    &["get", "k", "--print-value-only"],
                )
            },
        );
        assert_eq!(stdout(&got).trim(), "v", "[{who}]");
        // m0 serves clients over TLS 1.2 (etcdctl offers it), but never joins: no write of its
        // goes through in several election timeouts.
        let m0 = members[0].endpoint();
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            let put = etcdctl(
                &pki,
                &m0,
                "healthcheck-client",
                &["put", "from-m0", "v", "--command-timeout=2s"],
            );
            assert!(!put.status.success(), "[{who}] m0 reached the cluster");
        }
    }
}

/// With `--cipher-suites`, a TLS 1.2 client offering only a suite outside the list is refused
/// and one offering a listed suite is let in (etcd 3.7 alike); TLS 1.3 is not narrowed.
#[tokio::test]
async fn cipher_suites_narrow_tls12_handshakes() {
    for binary in [oxcd_bin(), require(&etcd37_bin())] {
        let who = binary.display().to_string();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        pki_init(&pki, 1);
        // pki init's keys are RSA (kubeadm's default): the ECDHE_RSA suites are the ones in play.
        let member = start_tls_cluster(
            &binary,
            &pki,
            dir.path(),
            1,
            &["--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".into()],
        )
        .remove(0);
        let port = member.client_port;
        wait_for_port(&pki, port, TLS13).await;
        let listed = handshake(
            &pki,
            port,
            TLS12,
            Some(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]),
        )
        .await;
        assert!(listed.is_ok(), "[{who}] a listed suite: {listed:?}");
        let unlisted = handshake(
            &pki,
            port,
            TLS12,
            Some(&["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"]),
        )
        .await;
        assert!(
            unlisted.is_err(),
            "[{who}] a suite outside the list was let in"
        );
        let tls13 = handshake(&pki, port, TLS13, Some(&["TLS13_CHACHA20_POLY1305_SHA256"])).await;
        assert!(
            tls13.is_ok(),
            "[{who}] TLS 1.3 suites are not narrowed: {tls13:?}"
        );
    }
}

/// Runs `binary` with `flags` (and a fresh data dir) and returns its output; it must exit,
/// and fail.
fn refused_at_start(binary: &Path, flags: &[&str]) -> String {
    refused_at_start_with(binary, flags, &[])
}

/// [`refused_at_start`] with environment variables too.
fn refused_at_start_with(binary: &Path, flags: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(binary)
        .envs(env.iter().copied())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
        .arg(format!(
            "--listen-peer-urls=http://127.0.0.1:{}",
            free_port()
        ))
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} {flags:?} was not refused at start", binary.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{} {flags:?}", binary.display());
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

/// Bad transport flags stop a start with etcd's words (etcd 3.7.3 prints them JSON-quoted).
#[test]
fn bad_transport_flags_are_refused_at_start_as_etcd_refuses_them() {
    let etcd = require(&etcd37_bin());
    let cases: &[(&[&str], &str)] = &[
        (
            &["--cipher-suites=TLS_FOO"],
            r#"unexpected TLS cipher suite "TLS_FOO""#,
        ),
        (
            &["--tls-min-version=TLS1.1"],
            r#"unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)"#,
        ),
        (
            &["--tls-max-version=TLS1.0"],
            r#"unexpected TLS version "TLS1.0" (must be one of: TLS1.2, TLS1.3)"#,
        ),
        (
            &[
                "--tls-min-version=TLS1.3",
                "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ],
            "cipher suites cannot be configured when only TLS1.3 is enabled",
        ),
        (
            &["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"],
            "min version (TLS1.3) is greater than max version (TLS1.2)",
        ),
    ];
    for (flags, words) in cases {
        let oxcd = refused_at_start(&oxcd_bin(), flags);
        assert!(oxcd.contains(words), "oxcd {flags:?}: {oxcd}");
        let reference = refused_at_start(&etcd, flags);
        let quoted = words.replace('"', "\\\"");
        assert!(reference.contains(&quoted), "etcd {flags:?}: {reference}");
    }
    // Go knows RC4 (etcd takes it); rustls has no such suite, and oxcd says so.
    let rc4 = refused_at_start(&oxcd_bin(), &["--cipher-suites=TLS_RSA_WITH_RC4_128_SHA"]);
    assert!(
        rc4.contains(r#"TLS cipher suite "TLS_RSA_WITH_RC4_128_SHA" is not supported by oxcd"#),
        "{rc4}"
    );
    // The variables are etcd's too.
    let env = [("ETCD_CIPHER_SUITES", "TLS_FOO,TLS_BAR")];
    let oxcd = refused_at_start_with(&oxcd_bin(), &[], &env);
    assert!(
        oxcd.contains(r#"unexpected TLS cipher suite "TLS_FOO""#),
        "{oxcd}"
    );
    let reference = refused_at_start_with(&etcd, &[], &env);
    assert!(
        reference.contains(r#"unexpected TLS cipher suite \"TLS_FOO\""#),
        "{reference}"
    );
}

/// `--auto-tls` and `--peer-auto-tls` with no certificate files: three members make their own
/// self-signed certificates under `<data-dir>/fixtures`, talk to each other over https:// peer
/// URLs, and serve https:// that etcdctl --insecure-skip-tls-verify can use; etcd 3.7 alike.
#[test]
fn auto_tls_serves_https_with_self_signed_certificates() {
    for binary in [oxcd_bin(), require(&etcd37_bin())] {
        let who = binary.display().to_string();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=https://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let _members: Vec<Killed> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                Killed(
                    Command::new(&binary)
                        .args(["--name", &format!("m{i}"), "--log-level", "error"])
                        .arg("--data-dir")
                        .arg(dir.path().join(format!("m{i}")))
                        .arg(format!("--listen-client-urls=https://127.0.0.1:{client}"))
                        .arg(format!(
                            "--advertise-client-urls=https://127.0.0.1:{client}"
                        ))
                        .arg(format!("--listen-peer-urls=https://127.0.0.1:{peer}"))
                        .arg(format!(
                            "--initial-advertise-peer-urls=https://127.0.0.1:{peer}"
                        ))
                        .arg(format!("--initial-cluster={initial}"))
                        .args(["--auto-tls", "--peer-auto-tls"])
                        .env("ETCD_SELF_SIGNED_CERT_VALIDITY", "2")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        // etcdctl 3.4 dials plaintext unless told otherwise when it is given no certificate.
        let insecure = |client: u16, args: &[&str]| {
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints=https://127.0.0.1:{client}"))
                .args(["--insecure-transport=false", "--insecure-skip-tls-verify"])
                .args(["--dial-timeout=2s", "--command-timeout=5s"])
                .args(args)
                .output()
                .unwrap()
        };
        eventually(
            &format!("[{who}] put over auto TLS"),
            Duration::from_secs(30),
            || insecure(ports[0].0, &["put", "auto", "tls"]),
        );
        let got = eventually(
            &format!("[{who}] get over auto TLS"),
            Duration::from_secs(10),
            || insecure(ports[2].0, &["get", "auto", "--print-value-only"]),
        );
        assert_eq!(stdout(&got).trim(), "tls", "[{who}]");
        // A client that verifies the server has nothing to trust it with.
        let verified = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://127.0.0.1:{}", ports[0].0))
            .args([
                "--insecure-transport=false",
                "--dial-timeout=2s",
                "--command-timeout=3s",
            ])
            .args(["get", "auto"])
            .output()
            .unwrap();
        assert!(!verified.status.success(), "[{who}]");

        for kind in ["client", "peer"] {
            let fixtures = dir.path().join("m0/fixtures").join(kind);
            // --self-signed-cert-validity=2: valid for 730 days from now.
            let expires_within = |days: u64| {
                Command::new("openssl")
                    .args([
                        "x509",
                        "-noout",
                        "-checkend",
                        &(days * 86_400).to_string(),
                        "-in",
                    ])
                    .arg(fixtures.join("cert.pem"))
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .code()
                    == Some(1)
            };
            assert!(!expires_within(729), "[{who}] {kind}");
            assert!(expires_within(731), "[{who}] {kind}");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(fixtures.join("key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "[{who}] {kind}");
        }
    }
}
