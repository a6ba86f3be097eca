//! `--insecure-skip-tls-verify`: TLS that accepts any server certificate (still checking the
//! handshake signatures), for test clusters with self-made certificates. tonic's own TLS
//! settings cannot turn verification off, so these connections dial through this connector.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use oxcd::tls::AnyServerCertificate;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::failure::{CtlResult, ExitCode, Failure};

/// The rustls settings: any server certificate, the client certificate if given, HTTP/2.
pub fn client_config(cert_and_key: Option<(&str, &str)>) -> CtlResult<Arc<ClientConfig>> {
    let bad = |e: &dyn std::fmt::Display| Failure::new(ExitCode::BadArgs, e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)));
    let mut config = with_identity(builder, cert_and_key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Completes client settings with the `--cert`/`--key` client certificate, if given.
pub fn with_identity(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    cert_and_key: Option<(&str, &str)>,
) -> CtlResult<ClientConfig> {
    let bad = |e: &dyn std::fmt::Display| Failure::new(ExitCode::BadArgs, e.to_string());
    Ok(match cert_and_key {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(&format!("{cert}: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&format!("{key}: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad(&e))?
        }
        None => builder.with_no_client_auth(),
    })
}

/// Connects to the URI's host and port and runs the TLS handshake with `config`.
pub async fn connect(
    config: Arc<ClientConfig>,
    uri: http::Uri,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let host = uri
        .host()
        .ok_or_else(|| invalid("endpoint has no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(2379);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let name = ServerName::try_from(host).map_err(|e| invalid(&e.to_string()))?;
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(TokioIo::new(tls))
}
