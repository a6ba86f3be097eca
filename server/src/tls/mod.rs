//! TLS as etcd configures it: `--cert-file`/`--key-file` serve https:// client URLs;
//! `--client-cert-auth` with `--trusted-ca-file` requires client certificates signed by that CA,
//! and `--client-cert-allowed-hostname` narrows them to certificates valid for a host name.
//! The `--peer-*` twins do the same for peer URLs (`--peer-cert-allowed-cn` or
//! `--peer-cert-allowed-hostname`), and a member presents its peer certificate when it connects
//! to another member.

mod verifier;
pub use verifier::common_name;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{crypto, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::Config;
use verifier::{AllowedIdentity, EtcdClientVerifier};

/// The acceptor for https:// client URLs, or `None` when no URL asks for TLS.
pub fn client_acceptor(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    acceptor(
        &config.listen_client_urls,
        config.cert_file.as_deref(),
        config.key_file.as_deref(),
        config.client_cert_auth.unwrap_or(false),
        config.trusted_ca_file.as_deref(),
        AllowedIdentity::from_flags(&[], &config.client_cert_allowed_hostname, "")?,
        "",
    )
}

/// The acceptor for https:// peer URLs (`--peer-cert-file` and friends), or `None`.
pub fn peer_acceptor(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    acceptor(
        &config.listen_peer_urls,
        config.peer_cert_file.as_deref(),
        config.peer_key_file.as_deref(),
        config.peer_client_cert_auth.unwrap_or(false),
        config.peer_trusted_ca_file.as_deref(),
        AllowedIdentity::from_flags(
            &config.peer_cert_allowed_cn,
            &config.peer_cert_allowed_hostname,
            "peer-",
        )?,
        "peer-",
    )
}

/// How this member connects to https:// peer URLs: it trusts `--peer-trusted-ca-file` and
/// presents its peer certificate (members authenticate each other, as etcd's do). `None`
/// without peer certificates (peers are then reached over plain HTTP/2 only).
pub fn peer_connector(config: &Config) -> anyhow::Result<Option<ClientTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.peer_cert_file, &config.peer_key_file) else {
        return Ok(None);
    };
    let read = |path: &Path, flag: &str| {
        std::fs::read(path).with_context(|| format!("cannot read --{flag} {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new().identity(Identity::from_pem(
        read(cert, "peer-cert-file")?,
        read(key, "peer-key-file")?,
    ));
    if let Some(ca) = &config.peer_trusted_ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca, "peer-trusted-ca-file")?));
    }
    Ok(Some(tls))
}

fn acceptor(
    urls: &[String],
    cert: Option<&Path>,
    key: Option<&Path>,
    client_cert_auth: bool,
    trusted_ca: Option<&Path>,
    allowed: AllowedIdentity,
    flag_prefix: &str,
) -> anyhow::Result<Option<TlsAcceptor>> {
    if !urls.iter().any(|u| u.starts_with("https://")) {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        bail!("https:// URLs need --{flag_prefix}cert-file and --{flag_prefix}key-file");
    };
    let client_ca = if client_cert_auth {
        Some(trusted_ca.with_context(|| {
            format!("--{flag_prefix}client-cert-auth needs --{flag_prefix}trusted-ca-file")
        })?)
    } else {
        None
    };
    Ok(Some(TlsAcceptor::from(server_config(
        cert, key, client_ca, allowed,
    )?)))
}

fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    allowed: AllowedIdentity,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read --cert-file {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid certificate in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "cannot read a private key from --key-file {}",
            key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let trusted = CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read --trusted-ca-file {}", ca.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("invalid CA certificate in {}", ca.display()))?;
            let mut roots = RootCertStore::empty();
            for c in &trusted {
                roots.add(c.clone())?;
            }
            let chain =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(Arc::new(EtcdClientVerifier::new(
                chain, trusted, allowed,
            )))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    // gRPC clients insist on ALPN h2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
