//! grpc-go's answers where tonic's differ, for the client API (etcd's server is grpc-go, and
//! clients match on its codes and texts):
//! - a message longer than the receive limit (`--max-request-bytes` + 512 KiB) fails its call,
//!   or its whole stream, with `ResourceExhausted` "grpc: received message larger than max
//!   (N vs. M)" (tonic: `OutOfRange` with a text of its own);
//! - an unknown service or method is `Unimplemented` with grpc-go's text (tonic: no text).
//!
//! [`GrpcWire`] reads each message's 5-byte length prefix as the request body streams through
//! and fails the call as soon as a prefix is over the limit, so no more than the limit is ever
//! buffered for a message. The services and methods it knows are the served services' methods
//! in the proto descriptors ([`ClientRoutes`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use anyhow::Context as _;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::body::Body as TonicBody;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::Status;

use crate::metrics::grpc::Framing;
use crate::metrics::GrpcType;

/// Routes that remember the names of the services added to them.
#[derive(Default)]
pub struct ClientRoutes {
    routes: RoutesBuilder,
    served: Vec<&'static str>,
}

impl ClientRoutes {
    pub fn add_service<S>(&mut self, service: S) -> &mut Self
    where
        S: Service<http::Request<TonicBody>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum_core::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.served.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// The routes, and the methods of their services as `descriptor_sets` (encoded
    /// `FileDescriptorSet`s) define them.
    pub fn finish(self, descriptor_sets: &[&[u8]]) -> anyhow::Result<(Routes, KnownMethods)> {
        let mut defined = HashMap::new();
        for set in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*set)
                .context("decoding a protobuf descriptor set")?;
            for file in &set.file {
                for service in &file.service {
                    let name = match file.package() {
                        "" => service.name().to_string(),
                        package => format!("{package}.{}", service.name()),
                    };
                    let methods = service.method.iter().map(|m| {
                        let kind = GrpcType::of(m.client_streaming(), m.server_streaming());
                        (m.name().to_string(), kind)
                    });
                    defined.insert(name, methods.collect::<HashMap<_, _>>());
                }
            }
        }
        let mut services = HashMap::new();
        for name in self.served {
            let methods = defined
                .remove(name)
                .with_context(|| format!("service {name} is in no descriptor set"))?;
            services.insert(name.to_string(), methods);
        }
        Ok((self.routes.routes(), KnownMethods { services }))
    }
}

/// The services a server serves and their methods.
#[derive(Debug)]
pub struct KnownMethods {
    services: HashMap<String, HashMap<String, GrpcType>>,
}

impl KnownMethods {
    /// Every method: service, method and streaming type.
    pub fn methods(&self) -> impl Iterator<Item = (&str, &str, GrpcType)> {
        self.services.iter().flat_map(|(service, methods)| {
            methods
                .iter()
                .map(move |(method, kind)| (service.as_str(), method.as_str(), *kind))
        })
    }

    /// grpc-go's answer to a call of `path` it has no handler for.
    fn refusal(&self, path: &str) -> Option<Status> {
        let Some((service, method)) = path
            .strip_prefix('/')
            .and_then(|name| name.rsplit_once('/'))
        else {
            // Go's %q of the path: for the printable ASCII a :path holds, Rust's {:?} quotes alike.
            return Some(Status::unimplemented(format!(
                "malformed method name: {path:?}"
            )));
        };
        match self.services.get(service) {
            None => Some(Status::unimplemented(format!("unknown service {service}"))),
            Some(methods) if !methods.contains_key(method) => Some(Status::unimplemented(format!(
                "unknown method {method} for service {service}"
            ))),
            Some(_) => None,
        }
    }
}

/// The client API behind grpc-go's answers (see the module docs).
#[derive(Clone)]
pub struct GrpcWire<S> {
    inner: S,
    known: Arc<KnownMethods>,
    max_message: usize,
}

impl<S> GrpcWire<S> {
    pub fn new(inner: S, known: KnownMethods, max_message: usize) -> GrpcWire<S> {
        GrpcWire {
            inner,
            known: Arc::new(known),
            max_message,
        }
    }
}

impl<S, B> Service<http::Request<B>> for GrpcWire<S>
where
    S: Service<
        http::Request<MessageLimit<B>>,
        Response = http::Response<TonicBody>,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(refused) = self.known.refusal(req.uri().path()) {
            return Box::pin(async move { Ok(refused.into_http()) });
        }
        let oversize = Arc::new(Oversize::new(self.max_message));
        let req = req.map(|body| MessageLimit {
            inner: body,
            oversize: oversize.clone(),
            framing: Framing::default(),
        });
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            // A unary call reads its request before it answers.
            if let Some(status) = oversize.status() {
                return Ok(status.into_http());
            }
            Ok(response.map(|body| {
                TonicBody::new(EndsOnOversize {
                    inner: Some(body),
                    oversize,
                })
            }))
        })
    }
}

/// Shared by a call's request body, which finds an oversized message, and its response body,
/// which must then end the call with grpc-go's status.
struct Oversize {
    limit: usize,
    found: OnceLock<usize>,
    response: Mutex<Option<Waker>>,
}

impl Oversize {
    fn new(limit: usize) -> Oversize {
        Oversize {
            limit,
            found: OnceLock::new(),
            response: Mutex::new(None),
        }
    }

    fn found(&self, len: usize) {
        let _ = self.found.set(len);
        if let Some(waker) = self
            .response
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            waker.wake();
        }
    }

    fn status(&self) -> Option<Status> {
        self.found.get().map(|len| {
            Status::resource_exhausted(format!(
                "grpc: received message larger than max ({len} vs. {})",
                self.limit
            ))
        })
    }
}

/// A request body that fails at the first message whose length prefix is over the limit.
pub struct MessageLimit<B> {
    inner: B,
    oversize: Arc<Oversize>,
    framing: Framing,
}

impl<B> MessageLimit<B> {
    /// Follows the message framing through `data`; the length of an oversized message.
    fn scan(&mut self, data: &[u8]) -> Result<(), usize> {
        let limit = self.oversize.limit;
        self.framing
            .scan(data, |len| if len > limit { Err(len) } else { Ok(()) })
    }
}

impl<B> Body for MessageLimit<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.oversize.found.get().is_some() {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(len) = this.scan(data) {
                this.oversize.found(len);
                let status = this.oversize.status().expect("just found");
                return Poll::Ready(Some(Err(status.into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that ends with grpc-go's status once the request carried an oversized
/// message (a stream's handler may still be running then; its output is dropped).
struct EndsOnOversize {
    inner: Option<TonicBody>,
    oversize: Arc<Oversize>,
}

impl EndsOnOversize {
    fn end(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.inner = None;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(match status.add_header(&mut trailers) {
            Ok(()) => Ok(Frame::trailers(trailers)),
            Err(e) => Err(e),
        }))
    }
}

impl Body for EndsOnOversize {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // Registered before the check, so a finding in between still wakes this body.
        {
            let mut waker = this
                .oversize
                .response
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        if let Some(status) = this.oversize.status() {
            return this.end(status);
        }
        let polled = Pin::new(inner).poll_frame(cx);
        // The handler may be answering the request body's failure with a status of its own.
        match (polled, this.oversize.status()) {
            (Poll::Ready(_), Some(status)) => this.end(status),
            (polled, _) => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|inner| inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use tonic::Code;

    fn known() -> KnownMethods {
        let mut routes = ClientRoutes::default();
        routes.served.push("etcdserverpb.KV");
        let (_, known) = routes.finish(&[oxcd_proto::FILE_DESCRIPTOR_SET]).unwrap();
        known
    }

    #[test]
    fn unknown_paths_get_grpc_gos_answers() {
        let known = known();
        assert!(known.refusal("/etcdserverpb.KV/Range").is_none());
        for (path, message) in [
            (
                "/etcdserverpb.KV/Nope",
                "unknown method Nope for service etcdserverpb.KV",
            ),
            (
                "/etcdserverpb.Auth/AuthStatus",
                "unknown service etcdserverpb.Auth",
            ),
            ("/a/b/c", "unknown service a/b"),
            (
                "/etcdserverpb.KV",
                "malformed method name: \"/etcdserverpb.KV\"",
            ),
            ("*", "malformed method name: \"*\""),
        ] {
            let status = known.refusal(path).expect(path);
            assert_eq!(status.code(), Code::Unimplemented, "{path}");
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn a_service_missing_from_the_descriptors_is_a_start_up_error() {
        let mut routes = ClientRoutes::default();
        routes.served.push("etcdserverpb.Nope");
        let err = routes
            .finish(&[oxcd_proto::FILE_DESCRIPTOR_SET])
            .unwrap_err();
        assert!(err.to_string().contains("etcdserverpb.Nope"), "{err}");
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0];
        m.extend((len as u32).to_be_bytes());
        m.resize(5 + len, 7);
        m
    }

    /// `wire` split into frames of `chunk` bytes, read through a limit of `limit`.
    async fn read_through(wire: &[u8], chunk: usize, limit: usize) -> (usize, Option<Status>) {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = wire
            .chunks(chunk)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let oversize = Arc::new(Oversize::new(limit));
        let mut body = MessageLimit {
            inner: StreamBody::new(tokio_stream::iter(frames)),
            oversize: oversize.clone(),
            framing: Framing::default(),
        };
        let mut passed = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => passed += frame.into_data().unwrap().len(),
                Err(_) => break,
            }
        }
        (passed, oversize.status())
    }

    #[tokio::test]
    async fn messages_up_to_the_limit_pass_in_frames_of_any_size() {
        let mut wire = message(0);
        wire.extend(message(100));
        wire.extend(message(3));
        for chunk in [1, 2, 5, 6, 64, 4096] {
            let (passed, status) = read_through(&wire, chunk, 100).await;
            assert_eq!(passed, wire.len(), "{chunk}");
            assert!(status.is_none(), "{chunk}: {status:?}");
        }
    }

    #[tokio::test]
    async fn the_first_oversized_prefix_fails_the_body_before_its_message_passes() {
        let mut wire = message(10);
        wire.extend(message(1_000_000));
        for chunk in [1, 3, 16 * 1024] {
            let (passed, status) = read_through(&wire, chunk, 100).await;
            // The first message, and at most the oversized prefix's first bytes.
            assert!(passed < 15 + 5, "{chunk}: {passed} bytes passed");
            let status = status.expect("oversized");
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert_eq!(
                status.message(),
                "grpc: received message larger than max (1000000 vs. 100)"
            );
        }
    }
}
