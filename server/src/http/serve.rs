//! Serving a listener: TLS if asked, then gRPC and plain HTTP on the same connections, as etcd's
//! cmux does. A connection is HTTP/2 when TLS negotiated `h2` or when its first bytes are the
//! HTTP/2 connection preface; anything else is HTTP/1.1. On HTTP/2, a request is gRPC when its
//! content type says so (etcd's own test), so `curl https://…/health`, which negotiates h2, is
//! answered as HTTP too.

use std::convert::Infallible;
use std::io;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::Router;
use crate::api::CertificateName;
use crate::authority::{AuthorityFix, Http2Limits, PREFACE};
use crate::listen::{Io, Listener};

/// Response bytes HTTP/2 may buffer per stream beyond what the socket takes (grpc-go's write
/// quota): a watch stream that cannot keep up then backs up into the watch hub, which holds
/// bounded state per watcher, instead of into memory.
const STREAM_SEND_BUFFER: usize = 64 * 1024;
/// hyper's defaults (and the HTTP/2 spec's for the table), set explicitly because
/// `AuthorityFix` holds clients to the same numbers before h2 sees their bytes.
const HTTP2_LIMITS: Http2Limits = Http2Limits {
    max_frame_size: 16 * 1024,
    max_header_list_size: 16 * 1024,
    header_table_size: 4096,
};

/// HTTP/2 settings of a listener's connections, as etcd's gRPC server options set them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionSettings {
    /// Streams one connection may have open at once (--max-concurrent-streams); `None`: no
    /// limit.
    pub max_concurrent_streams: Option<u32>,
    /// Idle connections are pinged this often (--grpc-keepalive-interval) and closed when a
    /// ping goes unanswered for the second duration (--grpc-keepalive-timeout); `None`: never.
    pub keepalive: Option<(std::time::Duration, std::time::Duration)>,
    /// Streams a peer may open and reset before they are accepted, at once, before the
    /// connection is closed as a rapid-reset attack; `None`: h2's 20.
    pub max_pending_accept_reset_streams: Option<usize>,
}

/// Serves `listener` until `stopped`: gRPC with `grpc`, and plain HTTP with `http` when given
/// (client URLs; peer URLs serve gRPC alone). Open connections are closed when the returned
/// future is dropped or finishes.
pub async fn serve<S>(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    grpc: S,
    http: Option<Router>,
    settings: ConnectionSettings,
    mut stopped: watch::Receiver<bool>,
) where
    S: tonic::codegen::Service<
            Request<Incoming>,
            Response = Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .max_send_buf_size(STREAM_SEND_BUFFER)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_frame_size(HTTP2_LIMITS.max_frame_size)
        .max_header_list_size(HTTP2_LIMITS.max_header_list_size)
        .header_table_size(HTTP2_LIMITS.header_table_size);
    if let Some(max) = settings.max_pending_accept_reset_streams {
        http2.max_pending_accept_reset_streams(max);
    }
    if let Some((interval, timeout)) = settings.keepalive {
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(interval)
            .keep_alive_timeout(timeout);
    }
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // The timer lets hyper's header read timeout close connections that never finish a request.
    http1.timer(TokioTimer::new());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (io, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a client connection failed");
                        continue;
                    }
                };
                let service = Dispatch { grpc: grpc.clone(), http: http.clone(), name: None };
                let (http1, http2, tls) = (http1.clone(), http2.clone(), tls.clone());
                // The TLS handshake and the protocol sniffing run in the connection's task so
                // a slow client cannot hold up accepting others.
                connections.spawn(async move {
                    if let Err(e) = connection(io, tls, service, &http1, &http2).await {
                        tracing::debug!(%peer, error = %e, "client connection ended");
                    }
                });
            }
            _ = stopped.wait_for(|s| *s) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Let in-flight calls finish briefly; the rest are cut when `connections` drops.
    let _ = tokio::time::timeout(crate::node::SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn connection<S>(
    io: Box<dyn Io>,
    tls: Option<TlsAcceptor>,
    mut service: Dispatch<S>,
    http1: &hyper::server::conn::http1::Builder,
    http2: &hyper::server::conn::http2::Builder<TokioExecutor>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: tonic::codegen::Service<
            Request<Incoming>,
            Response = Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (mut io, negotiated_h2): (Box<dyn Io>, bool) = match tls {
        Some(tls) => {
            let stream = tls
                .accept(io)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            let session = stream.get_ref().1;
            service.name = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(crate::tls::common_name)
                .map(|cn| CertificateName(cn.into()));
            let h2 = session.alpn_protocol() == Some(b"h2");
            (Box::new(stream), h2)
        }
        None => (io, false),
    };
    // Peer URLs speak HTTP/2 alone, as before: nothing to tell apart.
    let (is_h2, read) = if negotiated_h2 || service.http.is_none() {
        (true, Vec::new())
    } else {
        sniff(&mut io).await?
    };
    let io = TokioIo::new(AuthorityFix::resume(io, HTTP2_LIMITS, &read)?);
    let service = TowerToHyperService::new(service);
    if is_h2 {
        http2.serve_connection(io, service).await?;
    } else {
        http1.serve_connection(io, service).await?;
    }
    Ok(())
}

/// Reads the first bytes of a connection until they tell HTTP/2 with prior knowledge (the
/// connection preface) from anything else; returns which, and the bytes read.
async fn sniff<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<(bool, Vec<u8>)> {
    let mut read = Vec::with_capacity(PREFACE.len());
    loop {
        let n = read.len().min(PREFACE.len());
        if read[..n] != PREFACE[..n] {
            return Ok((false, read));
        }
        if n == PREFACE.len() {
            return Ok((true, read));
        }
        let mut chunk = [0u8; 1024];
        let got = io.read(&mut chunk).await?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        read.extend_from_slice(&chunk[..got]);
    }
}

/// Routes each request: gRPC to the gRPC services, with the name in the connection's client
/// certificate (auth uses it); anything else to the HTTP endpoints, when this listener has them.
#[derive(Clone)]
struct Dispatch<S> {
    grpc: S,
    http: Option<Router>,
    name: Option<CertificateName>,
}

/// etcd's test: HTTP/2 and a content type containing `application/grpc`.
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == hyper::Version::HTTP_2
        && req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/grpc"))
}

type HttpAnswer = BoxFuture<'static, Result<Response<tonic::body::Body>, Infallible>>;

impl<S> tonic::codegen::Service<Request<Incoming>> for Dispatch<S>
where
    S: tonic::codegen::Service<
        Request<Incoming>,
        Response = Response<tonic::body::Body>,
        Error = Infallible,
    >,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Either<S::Future, HttpAnswer>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.grpc.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        match &self.http {
            Some(http) if !is_grpc(&req) => {
                let http = http.clone();
                Either::Right(Box::pin(async move { Ok(http.answer(req).await) }))
            }
            _ => {
                if let Some(name) = &self.name {
                    req.extensions_mut().insert(name.clone());
                }
                Either::Left(self.grpc.call(req))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sniffed(chunks: &[&[u8]]) -> io::Result<(bool, Vec<u8>)> {
        let mut mock = pieces(chunks);
        sniff(&mut mock).await
    }

    /// A reader that hands out `chunks` one read at a time, as a socket may.
    fn pieces(chunks: &[&[u8]]) -> impl AsyncRead + Unpin {
        let (mut client, server) = tokio::io::duplex(4096);
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in chunks {
                client.write_all(&chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        server
    }

    #[tokio::test]
    async fn the_preface_in_pieces_is_http2_and_nothing_is_lost() {
        let mut wire = PREFACE.to_vec();
        wire.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let (h2, read) = sniffed(&[&wire[..3], &wire[3..10], &wire[10..]])
            .await
            .unwrap();
        assert!(h2);
        assert_eq!(&read[..PREFACE.len()], PREFACE);
    }

    #[tokio::test]
    async fn a_request_line_is_http1_from_its_first_byte() {
        let (h2, read) = sniffed(&[b"GET /version HTTP/1.1\r\n\r\n"]).await.unwrap();
        assert!(!h2);
        assert_eq!(read, b"GET /version HTTP/1.1\r\n\r\n");
        // "PRI * HTTP/1.1" shares a prefix with the preface, then leaves it.
        let (h2, _) = sniffed(&[b"PRI", b" * HTTP/1.1\r\n"]).await.unwrap();
        assert!(!h2);
    }

    #[tokio::test]
    async fn a_connection_closed_inside_the_preface_is_an_error() {
        assert!(sniffed(&[b"PRI * HT"]).await.is_err());
    }
}
