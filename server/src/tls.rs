//! Client TLS as etcd configures it: `--cert-file`/`--key-file` serve https:// listen URLs;
//! `--client-cert-auth` with `--trusted-ca-file` requires client certificates signed by that CA.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{crypto, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// The acceptor for https:// client URLs, or `None` when no URL asks for TLS.
pub fn client_acceptor(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    if !config
        .listen_client_urls
        .iter()
        .any(|u| u.starts_with("https://"))
    {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
        bail!("https:// client URLs need --cert-file and --key-file");
    };
    let client_ca = if config.client_cert_auth.unwrap_or(false) {
        let ca = config
            .trusted_ca_file
            .as_deref()
            .context("--client-cert-auth needs --trusted-ca-file")?;
        Some(ca)
    } else {
        None
    };
    Ok(Some(TlsAcceptor::from(server_config(
        cert, key, client_ca,
    )?)))
}

fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
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
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read --trusted-ca-file {}", ca.display()))?
            {
                roots.add(
                    c.with_context(|| format!("invalid CA certificate in {}", ca.display()))?,
                )?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
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
