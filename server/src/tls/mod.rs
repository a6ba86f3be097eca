//! TLS as etcd configures it: `--cert-file`/`--key-file` serve https:// client URLs;
//! `--client-cert-auth` with `--trusted-ca-file` requires client certificates signed by that CA,
//! and `--client-cert-allowed-hostname` narrows them to certificates valid for a host name.
//! The `--peer-*` twins do the same for peer URLs (`--peer-cert-allowed-cn` or
//! `--peer-cert-allowed-hostname`), and a member presents its peer certificate when it connects
//! to another member; the identity flags judge the certificate of a member dialled too, as in
//! etcd.
//!
//! Every endpoint takes `--cipher-suites` and `--tls-min/max-version` (`transport`);
//! `--client-crl-file` / `--peer-crl-file` refuse revoked certificates (`crl`); `--auto-tls` /
//! `--peer-auto-tls` serve a self-signed certificate when no files are given (`auto`).

mod auto;
mod crl;
mod dial;
mod transport;
mod verifier;
pub use verifier::common_name;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
pub use dial::{AnyServerCertificate, PeerConnector};
use transport::Transport;
use verifier::{AllowedIdentity, EtcdClientVerifier, EtcdPeerServerVerifier};

/// The certificate and key one side (client or peer) serves and presents.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
    /// Made by auto TLS: self-signed, so the other members' are not verified when dialing.
    self_signed: bool,
}

/// `--<prefix>cert-file`/`--<prefix>key-file`, else (with auto TLS and neither file given, as
/// etcd decides) the self-signed pair under `<data-dir>/fixtures/<kind>`. Auto TLS supplies
/// only the certificate: etcd also drops `--<prefix>client-cert-auth` and the trusted CA then
/// (it replaces its whole TLS settings), oxcd keeps requiring client certificates when asked.
fn identity(
    config: &Config,
    files: (Option<&Path>, Option<&Path>),
    auto: bool,
    urls: &[String],
    kind: &str,
) -> anyhow::Result<Option<Identity>> {
    match files {
        (None, None) if auto => {
            let dir = config.data_dir().join("fixtures").join(kind);
            let (cert, key) = auto::self_cert(&dir, urls, config.self_signed_cert_validity)?;
            Ok(Some(Identity {
                cert,
                key,
                self_signed: true,
            }))
        }
        (cert, key) => {
            if auto {
                tracing::warn!("ignoring {kind} auto TLS since certs given");
            }
            match (cert, key) {
                (Some(cert), Some(key)) => Ok(Some(Identity {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                    self_signed: false,
                })),
                _ => Ok(None),
            }
        }
    }
}

/// etcd's transport flags. Checked at every start, whether or not any URL is https://, as
/// etcd checks them.
fn transport(config: &Config) -> anyhow::Result<Transport> {
    Transport::from_flags(
        &config.cipher_suites,
        &config.tls_min_version,
        &config.tls_max_version,
    )
}

/// The acceptor for https:// client URLs, or `None` when no URL asks for TLS.
pub fn client_acceptor(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    let transport = transport(config)?;
    let identity = identity(
        config,
        (config.cert_file.as_deref(), config.key_file.as_deref()),
        config.auto_tls.unwrap_or(false),
        &config.listen_client_urls,
        "client",
    )?;
    acceptor(
        &transport,
        &config.listen_client_urls,
        identity,
        ClientAuth {
            required: config.client_cert_auth.unwrap_or(false),
            trusted_ca: config.trusted_ca_file.as_deref(),
            allowed: AllowedIdentity::from_flags(&[], &config.client_cert_allowed_hostname, "")?,
            crl: config.client_crl_file.as_deref(),
        },
        "",
    )
}

/// The acceptor for https:// peer URLs (`--peer-cert-file` and friends), or `None`.
pub fn peer_acceptor(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    let transport = transport(config)?;
    acceptor(
        &transport,
        &config.listen_peer_urls,
        peer_identity(config)?,
        ClientAuth {
            required: config.peer_client_cert_auth.unwrap_or(false),
            trusted_ca: config.peer_trusted_ca_file.as_deref(),
            allowed: peer_allowed_identity(config)?,
            crl: config.peer_crl_file.as_deref(),
        },
        "peer-",
    )
}

/// Whom `--peer-cert-allowed-cn`/`-hostname` admit, both dialling in and dialled.
fn peer_allowed_identity(config: &Config) -> anyhow::Result<AllowedIdentity> {
    AllowedIdentity::from_flags(
        &config.peer_cert_allowed_cn,
        &config.peer_cert_allowed_hostname,
        "peer-",
    )
}

fn peer_identity(config: &Config) -> anyhow::Result<Option<Identity>> {
    identity(
        config,
        (
            config.peer_cert_file.as_deref(),
            config.peer_key_file.as_deref(),
        ),
        config.peer_auto_tls.unwrap_or(false),
        &config.listen_peer_urls,
        "peer",
    )
}

/// How this member connects to https:// peer URLs: with the transport flags, trusting
/// `--peer-trusted-ca-file` (nothing to verify against with `--peer-auto-tls`, as etcd) and
/// presenting its peer certificate (members authenticate each other, as etcd's do). `None`
/// without a peer certificate (peers are then reached over plain HTTP/2 only).
pub fn peer_connector(config: &Config) -> anyhow::Result<Option<PeerConnector>> {
    let transport = transport(config)?;
    let Some(identity) = peer_identity(config)? else {
        return Ok(None);
    };
    let (certs, key) = read_identity(&identity, "peer-")?;
    let builder = ClientConfig::builder_with_provider(transport.provider().clone())
        .with_protocol_versions(transport.versions())?;
    let builder = if identity.self_signed {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(dial::AnyServerCertificate(
                transport.provider().clone(),
            )))
    } else {
        let mut roots = RootCertStore::empty();
        if let Some(ca) = &config.peer_trusted_ca_file {
            for cert in read_certs(ca, "peer-trusted-ca-file")? {
                roots.add(cert)?;
            }
        }
        match peer_allowed_identity(config)? {
            AllowedIdentity::Anyone => builder.with_root_certificates(roots),
            allowed => {
                let chain = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    transport.provider().clone(),
                )
                .build()
                .context("--peer-trusted-ca-file")?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(EtcdPeerServerVerifier::new(
                        chain, allowed,
                    )))
            }
        }
    };
    let mut tls = builder
        .with_client_auth_cert(certs, key)
        .context("--peer-cert-file and --peer-key-file do not match")?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(PeerConnector::new(tls)))
}

/// Whom a listener asks for a certificate, and what it checks of one.
struct ClientAuth<'a> {
    required: bool,
    trusted_ca: Option<&'a Path>,
    allowed: AllowedIdentity,
    crl: Option<&'a Path>,
}

fn acceptor(
    transport: &Transport,
    urls: &[String],
    identity: Option<Identity>,
    auth: ClientAuth<'_>,
    flag_prefix: &str,
) -> anyhow::Result<Option<TlsAcceptor>> {
    let crl = auth
        .crl
        .map(|path| crl::RevocationList::open(path, &format!("{flag_prefix}crl-file")))
        .transpose()?;
    if !urls.iter().any(|u| crate::listen::is_tls(u)) {
        return Ok(None);
    }
    let Some(identity) = identity else {
        bail!("https:// URLs need --{flag_prefix}cert-file and --{flag_prefix}key-file");
    };
    let (certs, key) = read_identity(&identity, flag_prefix)?;
    let builder = ServerConfig::builder_with_provider(transport.provider().clone())
        .with_protocol_versions(transport.versions())?;
    let builder = if auth.required {
        let ca = auth.trusted_ca.with_context(|| {
            format!("--{flag_prefix}client-cert-auth needs --{flag_prefix}trusted-ca-file")
        })?;
        let trusted = read_certs(ca, &format!("{flag_prefix}trusted-ca-file"))?;
        let mut roots = RootCertStore::empty();
        for c in &trusted {
            roots.add(c.clone())?;
        }
        let chain = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            transport.provider().clone(),
        )
        .build()?;
        builder.with_client_cert_verifier(Arc::new(EtcdClientVerifier::new(
            chain,
            trusted,
            auth.allowed,
            crl,
        )))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    // gRPC clients insist on ALPN h2; HTTP/1.1 clients (probes, curl --http1.1) are served on
    // the same client ports.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn read_certs(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read --{flag} {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid certificate in {}", path.display()))
}

fn read_identity(
    identity: &Identity,
    flag_prefix: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = read_certs(&identity.cert, &format!("{flag_prefix}cert-file"))?;
    let key = PrivateKeyDer::from_pem_file(&identity.key).with_context(|| {
        format!(
            "cannot read a private key from --{flag_prefix}key-file {}",
            identity.key.display()
        )
    })?;
    Ok((certs, key))
}
