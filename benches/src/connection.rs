//! How the load generators reach the servers: their client URLs, plain or TLS (with etcdctl's
//! flags), and one function that opens a connection to them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use etcd_client::Client;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// etcdctl's TLS flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsFlags {
    /// CA bundle that verifies the servers' certificates; implies https://.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one; needs --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Use TLS without verifying the servers' certificates; implies https://.
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
}

impl TlsFlags {
    fn any(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.insecure_skip_tls_verify
    }
}

/// The servers a load generator talks to.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Full URLs: a bare host:port gets https:// when a TLS flag is given, http:// otherwise.
    urls: Vec<String>,
    tls: TlsFlags,
    /// User and password each connection authenticates with (its token then goes with
    /// every request, as etcd's Go client sends it).
    user: Option<(String, String)>,
}

impl Endpoints {
    pub fn new(endpoints: &[String], tls: TlsFlags) -> Self {
        let scheme = if tls.any() { "https" } else { "http" };
        let urls = endpoints
            .iter()
            .map(|endpoint| {
                if endpoint.contains("://") {
                    endpoint.clone()
                } else {
                    format!("{scheme}://{endpoint}")
                }
            })
            .collect();
        Self {
            urls,
            tls,
            user: None,
        }
    }

    /// The same servers, as `user` with `password`.
    pub fn with_user(mut self, user: &str, password: &str) -> Self {
        self.user = Some((user.to_string(), password.to_string()));
        self
    }

    /// Plain http:// URLs, as the comparison's own servers listen on.
    pub fn plain(urls: Vec<String>) -> Self {
        Self::new(&urls, TlsFlags::default())
    }

    /// A new connection, not yet established (the first request connects it), whose HTTP/2
    /// connection window is `window` bytes when given. It balances requests over every endpoint,
    /// except without certificate verification, where it goes to endpoint `index` (modulo their
    /// number) only: tonic's balancer cannot take the custom TLS connector that needs.
    pub async fn connect(&self, index: usize, window: Option<u32>) -> Result<Client> {
        let channel = if self.tls.insecure_skip_tls_verify {
            // tonic refuses an https:// URI unless it does the TLS itself; the connector does it
            // here, so the channel is given the same address as http://.
            let url = &self.urls[index % self.urls.len()];
            let url = url.replacen("https://", "http://", 1);
            let connector = insecure_connector(self.identity()?)?;
            self.endpoint(&url, window)?
                .connect_with_connector_lazy(tower::service_fn(connector))
        } else {
            let endpoints = self
                .urls
                .iter()
                .map(|url| self.endpoint(url, window))
                .collect::<Result<Vec<_>>>()?;
            Channel::balance_list(endpoints.into_iter())
        };
        let options = self
            .user
            .as_ref()
            .map(|(user, password)| etcd_client::ConnectOptions::new().with_user(user, password));
        Ok(Client::from_channel(etcd_client::Channel::Tonic(channel), options).await?)
    }

    fn endpoint(&self, url: &str, window: Option<u32>) -> Result<Endpoint> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("`{url}` is not a URL"))?;
        if let Some(window) = window {
            endpoint = endpoint.initial_connection_window_size(window);
        }
        if url.starts_with("https://") && !self.tls.insecure_skip_tls_verify {
            let Some(cacert) = &self.tls.cacert else {
                bail!("{url} needs --cacert (or --insecure-skip-tls-verify)");
            };
            let mut tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(cacert)?));
            if let Some((cert, key)) = self.identity_files() {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint)
    }

    fn identity_files(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.tls.cert.as_ref().zip(self.tls.key.as_ref())
    }

    /// The client certificate chain and key, parsed for rustls.
    fn identity(&self) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
        let Some((cert, key)) = self.identity_files() else {
            return Ok(None);
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("cannot read a private key from {}", key.display()))?;
        Ok(Some((chain, key)))
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<
                    TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
                >,
            > + Send,
    >,
>;

/// TCP, then TLS that accepts any server certificate, offering HTTP/2 by ALPN as gRPC requires.
pub(crate) fn insecure_connector(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<impl FnMut(Uri) -> Connecting + Clone + Send + 'static> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(oxcd::tls::AnyServerCertificate(provider)));
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Ok(move |uri: Uri| -> Connecting {
        let connector = connector.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {what}"))
            };
            let host = uri
                .host()
                .ok_or_else(|| invalid("no host"))?
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host).map_err(|_| invalid("bad host name"))?;
            Ok(TokioIo::new(connector.connect(name, tcp).await?))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_endpoints_get_the_scheme_the_tls_flags_imply() {
        let plain = Endpoints::new(
            &["127.0.0.1:2379".into(), "http://h:1".into()],
            TlsFlags::default(),
        );
        assert_eq!(plain.urls, ["http://127.0.0.1:2379", "http://h:1"]);
        let tls = TlsFlags {
            insecure_skip_tls_verify: true,
            ..TlsFlags::default()
        };
        assert_eq!(Endpoints::new(&["h:2".into()], tls).urls, ["https://h:2"]);
    }

    #[tokio::test]
    async fn https_without_a_ca_or_insecure_is_refused() {
        let endpoints = Endpoints::new(&["https://127.0.0.1:1".into()], TlsFlags::default());
        let error = endpoints.connect(0, None).await.err().unwrap();
        assert!(format!("{error:#}").contains("--cacert"), "{error:#}");
    }
}
