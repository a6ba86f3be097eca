//! The server's resident memory, read from `process_resident_memory_bytes` on the endpoint's
//! `/metrics` as etcdctl reads it: plain HTTP, or HTTPS with the client certificate. Failures
//! print etcdctl's line and read as 0, which the caller reports.

use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::global::GlobalFlags;
use crate::insecure_tls;

const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";

/// Bytes of resident memory, or 0 after printing why it could not be read.
pub async fn resident_memory(global: &GlobalFlags, endpoint: &str) -> f64 {
    let base = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let url = format!("{base}/metrics");
    match fetch(global, &url).await {
        Ok(body) => parse(&body).unwrap_or_else(|line| {
            println!("{line}");
            0.0
        }),
        Err(e) => {
            println!("fetch error: Get \"{url}\": {e}");
            0.0
        }
    }
}

/// The first sample of the series (Go's ParseFloat of the rest of its line).
fn parse(body: &str) -> Result<f64, String> {
    let value = body
        .lines()
        .find_map(|line| line.strip_prefix(RESIDENT_MEMORY))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("could not find: {RESIDENT_MEMORY}"))?;
    value.parse().map_err(|_| {
        format!("parse error: strconv.ParseFloat: parsing \"{value}\": invalid syntax")
    })
}

async fn fetch(global: &GlobalFlags, url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("missing host")?.to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    if !https {
        return get(TokioIo::new(tcp), uri).await;
    }
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(tls_config(global)?)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    get(TokioIo::new(tls), uri).await
}

async fn get<I>(io: I, uri: http::Uri) -> Result<String, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let request = http::Request::get(uri.path())
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// etcdctl presents the client certificate and verifies the server unless
/// `--insecure-skip-tls-verify`; here against `--cacert` (Go uses the system roots).
fn tls_config(global: &GlobalFlags) -> Result<Arc<rustls::ClientConfig>, String> {
    let identity = global.cert.as_deref().zip(global.key.as_deref());
    let certificate_error = |e: crate::failure::Failure| format!("client certificate error: {e}");
    let mut config = if global.insecure_skip_tls_verify {
        (*insecure_tls::client_config(identity).map_err(certificate_error)?).clone()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &global.cacert {
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
                roots
                    .add(cert.map_err(|e| format!("{ca}: {e}"))?)
                    .map_err(|e| format!("{ca}: {e}"))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        insecure_tls::with_identity(builder, identity).map_err(certificate_error)?
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_sample() {
        let body = "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes 3.3841152e+07\n";
        assert_eq!(parse(body), Ok(33_841_152.0));
        assert_eq!(
            parse("other 1\n"),
            Err("could not find: process_resident_memory_bytes".into())
        );
    }
}
