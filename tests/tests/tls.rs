//! TLS as kubeadm configures etcd: https:// client URLs, a server certificate, and client
//! certificates required (`--client-cert-auth --trusted-ca-file`); https:// peer URLs with
//! members authenticating each other (`--peer-client-cert-auth --peer-trusted-ca-file`), and
//! etcd's narrowing of whom those certificates may name (`--peer-cert-allowed-cn`,
//! `--*-cert-allowed-hostname`). Driven with Debian's etcdctl and bare TLS handshakes;
//! certificates are made with the openssl command.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use oxcd_tests::certs::{
    make_certificates, tls12_handshake, wait_for_handshake, Killed, TlsMember, TlsSetup,
};
use oxcd_tests::{free_port, oxcd_bin, Flavor};

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

#[test]
fn etcdctl_talks_to_oxcd_over_tls_with_client_certificates() {
    oxcd_tests::require_etcd();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let member = TlsMember::start(&oxcd_bin(), dir.path());
    let (endpoint, client) = (member.endpoint.clone(), member.client_port);
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

/// Three members whose peer URLs are https:// and who require each other's certificates (with
/// the CN their certificates have) elect a leader and replicate writes.
#[test]
fn members_talk_over_peer_tls() {
    oxcd_tests::require_etcd();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let c = |name: &str| dir.path().join(name).display().to_string();
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
                Command::new(oxcd_bin())
                    .args([
                        "--name",
                        &format!("m{i}"),
                        "--data-dir",
                        &c(&format!("data{i}")),
                    ])
                    .args(["--log-level", "error"])
                    .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--listen-peer-urls=https://127.0.0.1:{peer}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls=https://127.0.0.1:{peer}"
                    ))
                    .arg(format!("--initial-cluster={initial}"))
                    .args([
                        "--peer-cert-file",
                        &c("peer.crt"),
                        "--peer-key-file",
                        &c("peer.key"),
                    ])
                    .args([
                        "--peer-trusted-ca-file",
                        &c("ca.crt"),
                        "--peer-client-cert-auth",
                        // Every member's certificate has this CN, so the cluster still forms.
                        "--peer-cert-allowed-cn=peer",
                    ])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let plain = |client: u16, args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=127.0.0.1:{client}"))
            .args(["--dial-timeout=2s", "--command-timeout=3s"])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = plain(ports[0].0, &["put", "over-peer-tls", "yes"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the peer-TLS cluster never took a write: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (client, _) in &ports[1..] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = plain(
                *client,
                &[
                    "get",
                    "over-peer-tls",
                    "--print-value-only",
                    "--consistency=s",
                ],
            );
            if String::from_utf8_lossy(&got.stdout).trim() == "yes" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member on {client} never got the write over peer TLS"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let members = plain(ports[2].0, &["member", "list"]);
    let listed = String::from_utf8_lossy(&members.stdout);
    assert_eq!(listed.matches("https://127.0.0.1:").count(), 3, "{listed}");
}

#[derive(Clone, Copy, Debug)]
enum Port {
    Client,
    Peer,
}

/// Starts etcd, then oxcd, configured by `setup`; on `port`, a TLS handshake presenting each
/// certificate of `verdicts` must succeed or fail as it says, so what etcd lets in oxcd lets in
/// and what etcd turns away oxcd turns away.
async fn same_verdicts_as_etcd(setup: TlsSetup, port: Port, verdicts: &[(&str, bool)]) {
    oxcd_tests::require_etcd();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let admitted = verdicts
        .iter()
        .find(|(_, admit)| *admit)
        .expect("a certificate the port admits, to see it is up")
        .0;
    for flavor in [Flavor::Etcd, Flavor::Oxcd] {
        let member = TlsMember::start_with(&flavor.binary(), dir.path(), &setup);
        let port_number = match port {
            Port::Client => member.client_port,
            Port::Peer => member.peer_port,
        };
        wait_for_handshake(dir.path(), port_number, admitted, Duration::from_secs(20)).await;
        for (cert, admit) in verdicts {
            let verdict = tls12_handshake(dir.path(), port_number, cert).await;
            assert_eq!(
                verdict.is_ok(),
                *admit,
                "[{flavor}] {cert}.crt on the {port:?} port: {verdict:?}"
            );
        }
    }
}

#[tokio::test]
async fn peer_cert_allowed_cn_admits_only_certificates_with_that_cn() {
    let setup = TlsSetup {
        peer_tls: true,
        env: vec![("ETCD_PEER_CERT_ALLOWED_CN".into(), "peer".into())],
        ..TlsSetup::default()
    };
    let verdicts = [("peer", true), ("client", false), ("client-san", false)];
    same_verdicts_as_etcd(setup, Port::Peer, &verdicts).await;
}

#[tokio::test]
async fn peer_cert_allowed_hostname_admits_only_certificates_valid_for_it() {
    let setup = TlsSetup {
        peer_tls: true,
        extra_args: vec!["--peer-cert-allowed-hostname=127.0.0.1".into()],
        ..TlsSetup::default()
    };
    // client-san names 127.0.0.1 among its SANs; client has no SANs at all.
    let verdicts = [("peer", true), ("client-san", true), ("client", false)];
    same_verdicts_as_etcd(setup, Port::Peer, &verdicts).await;
}

#[tokio::test]
async fn client_cert_allowed_hostname_admits_only_certificates_valid_for_it() {
    let setup = TlsSetup {
        env: vec![(
            "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME".into(),
            "client.oxcd.test".into(),
        )],
        ..TlsSetup::default()
    };
    // peer is valid for 127.0.0.1 only; client's CN is no host name.
    let verdicts = [("client-san", true), ("client", false), ("peer", false)];
    same_verdicts_as_etcd(setup, Port::Client, &verdicts).await;
}

/// Go accepts a self-signed certificate that the trusted CA file holds as a client certificate
/// (unless its extended key usage rules out client authentication); webpki refuses every CA
/// certificate as an end entity.
#[tokio::test]
async fn a_self_signed_client_certificate_in_the_trusted_ca_file_is_admitted() {
    let setup = TlsSetup {
        client_ca: Some("client-ca-bundle.crt".into()),
        ..TlsSetup::default()
    };
    let verdicts = [
        ("client", true),
        ("self", true),
        ("self-server-only", false),
        ("self-untrusted", false),
    ];
    same_verdicts_as_etcd(setup, Port::Client, &verdicts).await;
}

/// How a member's dials to a peer URL served with `<cert>.crt` ended in `window`: handshakes
/// the member completed, and ones it broke off. The peer is this test's TLS listener; it asks
/// for no client certificate, so only the dialling member judges.
async fn dials_to_a_peer_serving(flavor: Flavor, cert: &str, window: Duration) -> (u32, u32) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let chain = CertificateDer::pem_file_iter(dir.path().join(format!("{cert}.crt")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.path().join(format!("{cert}.key"))).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = listener.local_addr().unwrap().port();
    let setup = TlsSetup {
        peer_tls: true,
        other_members: vec![format!("n2=https://127.0.0.1:{fake}")],
        env: vec![("ETCD_PEER_CERT_ALLOWED_CN".into(), "peer".into())],
        ..TlsSetup::default()
    };
    let _member = TlsMember::start_with(&flavor.binary(), dir.path(), &setup);
    let (mut completed, mut refused) = (0, 0);
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok((tcp, _))) = tokio::time::timeout_at(deadline, listener.accept()).await {
        match tokio::time::timeout(Duration::from_secs(2), acceptor.accept(tcp)).await {
            Ok(Ok(_)) => completed += 1,
            _ => refused += 1,
        }
    }
    (completed, refused)
}

/// etcd applies `--peer-cert-allowed-cn` to the members it dials too (Go's TLS config is one
/// for both directions): a peer URL serving a certificate with another CN is never talked to.
#[tokio::test]
async fn peer_cert_allowed_cn_also_judges_the_members_a_member_dials() {
    oxcd_tests::require_etcd();
    for flavor in [Flavor::Etcd, Flavor::Oxcd] {
        let (completed, refused) =
            dials_to_a_peer_serving(flavor, "peer", Duration::from_secs(6)).await;
        assert!(
            completed > 0,
            "[{flavor}] no dial to a peer with CN=peer completed ({refused} broken off)"
        );
        // server.crt is valid for 127.0.0.1 and signed by the same CA, but its CN is 127.0.0.1.
        let (completed, refused) =
            dials_to_a_peer_serving(flavor, "server", Duration::from_secs(6)).await;
        assert_eq!(
            completed, 0,
            "[{flavor}] a dial to a peer with CN=127.0.0.1 completed"
        );
        assert!(refused > 0, "[{flavor}] the member never dialled its peer");
    }
}
