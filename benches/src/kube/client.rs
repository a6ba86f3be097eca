//! kube-apiserver as the benchmark's simulated kubelets and operators call it: JSON over a few
//! multiplexed HTTP/2 connections with a bearer token, and watch streams read event by event.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{header, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::connection::insecure_connector;

/// A watch event larger than this ends the stream: no object of the benchmark's is near it.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

pub struct ApiClient {
    base: String,
    authorization: String,
    connections: Vec<SendRequest<Full<Bytes>>>,
    next: AtomicUsize,
}

/// A reply's status and its body as JSON (`Null` when it is empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Reply {
    /// The reply if it is a success, otherwise an error quoting the apiserver's message.
    pub fn success(self, what: &str) -> Result<serde_json::Value> {
        if self.status.is_success() {
            return Ok(self.body);
        }
        bail!(
            "{what}: {} {}",
            self.status,
            self.body["message"].as_str().unwrap_or_default()
        )
    }
}

/// How a request body is to be read, as its Content-Type says.
#[derive(Clone, Copy)]
pub enum BodyKind {
    Object,
    MergePatch,
}

impl BodyKind {
    fn content_type(self) -> &'static str {
        match self {
            BodyKind::Object => "application/json",
            BodyKind::MergePatch => "application/merge-patch+json",
        }
    }
}

impl ApiClient {
    /// Opens `connections` HTTP/2 connections to `base` (https://host:port; any certificate is
    /// accepted, as the benchmark's apiserver makes its own), calling as the holder of `token`.
    pub async fn connect(base: &str, token: &str, connections: usize) -> Result<Self> {
        let uri: Uri = base
            .parse()
            .with_context(|| format!("bad apiserver URL {base}"))?;
        let mut connect = insecure_connector(None)?;
        let mut senders = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let io = connect(uri.clone())
                .await
                .with_context(|| format!("cannot connect to {base}"))?;
            let (sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .with_context(|| format!("HTTP/2 handshake with {base}"))?;
            tokio::spawn(connection);
            senders.push(sender);
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            authorization: format!("Bearer {token}"),
            connections: senders,
            next: AtomicUsize::new(0),
        })
    }

    /// Another client of the same apiserver, as the same caller, on `connections` new
    /// connections.
    pub async fn reconnect(&self, connections: usize) -> Result<Self> {
        let token = self.authorization.trim_start_matches("Bearer ");
        Self::connect(&self.base, token, connections).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(BodyKind, &serde_json::Value)>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, &self.authorization)
            .header(header::ACCEPT, "application/json");
        let bytes = match body {
            Some((kind, value)) => {
                request = request.header(header::CONTENT_TYPE, kind.content_type());
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(bytes))?;
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut sender = self.connections[index].clone();
        sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {path}"))
    }

    /// One request and its whole reply.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(BodyKind, &serde_json::Value)>,
    ) -> Result<Reply> {
        let response = self.send(method.clone(), path, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the reply to {method} {path}"))?
            .to_bytes();
        Ok(Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        })
    }

    /// A GET whose reply is text (the apiserver's /metrics).
    pub async fn text(&self, path: &str) -> Result<String> {
        let response = self.send(Method::GET, path, None).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A watch (`path` carries `watch=true`): its events, one JSON object each, until the
    /// apiserver ends the stream or the receiver is dropped. An error ends the stream too.
    pub async fn watch(&self, path: &str) -> Result<mpsc::Receiver<Result<serde_json::Value>>> {
        let response = self.send(Method::GET, path, None).await?;
        if !response.status().is_success() {
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            bail!("watch {path}: {status} {}", String::from_utf8_lossy(&bytes));
        }
        let (events, receiver) = mpsc::channel(1024);
        let mut body = response.into_body();
        tokio::spawn(async move {
            let mut pending = BytesMut::new();
            loop {
                // A dropped receiver ends the stream, so the apiserver's graceful shutdown
                // does not wait for it.
                let frame = tokio::select! {
                    frame = body.frame() => frame,
                    () = events.closed() => return,
                };
                let Some(frame) = frame else {
                    return;
                };
                let data = match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                    Err(error) => {
                        let _ = events.send(Err(error.into())).await;
                        return;
                    }
                };
                pending.extend_from_slice(&data);
                // The apiserver's JSON watch encoder ends every event with a newline.
                while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
                    let line = pending.split_to(end + 1);
                    let event = serde_json::from_slice(&line[..end]).context("a watch event");
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                if pending.len() > MAX_EVENT_BYTES {
                    let _ = events
                        .send(Err(anyhow::anyhow!(
                            "a watch event over {MAX_EVENT_BYTES} bytes"
                        )))
                        .await;
                    return;
                }
            }
        });
        Ok(receiver)
    }
}
