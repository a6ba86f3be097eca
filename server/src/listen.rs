//! Listening on etcd's listen URLs: `http://` and `https://` on TCP, `unix://` and `unixs://` on
//! Unix sockets, by the rules of etcd's embed and transport packages.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

/// An accepted connection, whichever kind of socket it came in on.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub enum Listener {
    Tcp(TcpListener),
    /// The socket file is removed when the listener is dropped, as etcd's unix listener removes
    /// it on close.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `url`. A stale socket file is removed first, as etcd does.
    pub async fn bind(url: &str) -> anyhow::Result<Listener> {
        if let Some(path) = unix_socket_path(url) {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e)
                        .with_context(|| format!("cannot remove {path} to listen on {url}"))
                }
                _ => {}
            }
            let listener =
                UnixListener::bind(path).with_context(|| format!("cannot listen on {url}"))?;
            return Ok(Listener::Unix(listener, PathBuf::from(path)));
        }
        let parsed = url::Url::parse(url).with_context(|| format!("invalid listen URL {url:?}"))?;
        let host = parsed
            .host_str()
            .with_context(|| format!("listen URL {url:?} has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = parsed
            .port()
            .with_context(|| format!("listen URL {url:?} has no port"))?;
        let listener = TcpListener::bind((host, port))
            .await
            .with_context(|| format!("cannot listen on {url}"))?;
        Ok(Listener::Tcp(listener))
    }

    /// The bound TCP address (useful with port 0); none for a Unix socket.
    pub fn tcp_addr(&self) -> io::Result<Option<SocketAddr>> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(Some),
            Listener::Unix(..) => Ok(None),
        }
    }

    /// The next connection and a name of its peer for logs.
    pub async fn accept(&self) -> io::Result<(Box<dyn Io>, String)> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, peer) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok((Box::new(tcp), peer.to_string()))
            }
            Listener::Unix(l, path) => {
                let (unix, _) = l.accept().await?;
                Ok((Box::new(unix), path.display().to_string()))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether connections on `url` are TLS.
pub fn is_tls(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("unixs://")
}

/// The socket file of a `unix://` or `unixs://` URL: what Go's url.Parse gives as host and path,
/// joined (etcd listens on `u.Host + u.Path`). So `unix:///run/etcd.sock` is an absolute path,
/// `unix://etcd.sock` and `unix://dir/etcd.sock` are relative to the working directory, and
/// `unix://localhost:2379` is a file named `localhost:2379`.
pub fn unix_socket_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("unix://")
        .or_else(|| url.strip_prefix("unixs://"))?;
    Some(rest.split(['?', '#']).next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_urls_name_socket_files_as_etcd_names_them() {
        assert_eq!(
            unix_socket_path("unix:///tmp/d/etcd.sock"),
            Some("/tmp/d/etcd.sock")
        );
        assert_eq!(
            unix_socket_path("unixs://localhost:2379"),
            Some("localhost:2379")
        );
        assert_eq!(unix_socket_path("unix://rel/e.sock"), Some("rel/e.sock"));
        assert_eq!(unix_socket_path("unix://e.sock?x=1"), Some("e.sock"));
        assert_eq!(unix_socket_path("http://127.0.0.1:2379"), None);
        assert!(is_tls("unixs://x") && is_tls("https://x:1"));
        assert!(!is_tls("unix://x") && !is_tls("http://x:1"));
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.sock");
        std::fs::write(&path, b"stale").unwrap();
        let url = format!("unix://{}", path.display());
        let listener = Listener::bind(&url).await.unwrap();
        assert!(listener.tcp_addr().unwrap().is_none());
        tokio::net::UnixStream::connect(&path).await.unwrap();
        drop(listener);
        assert!(!path.exists());
    }
}
