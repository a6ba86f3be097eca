//! `grpc_server_*` (go-grpc-prometheus' names, labels and Go's code names) and etcd's client
//! gRPC byte counts, from one tower layer around the client gRPC services: [`GrpcMetered`]
//! reads each call's path, the 5-byte length prefixes of the messages both ways, and the
//! `grpc-status` that ends the call. Every method of every served service is given its zero
//! series when the layer is built, as grpc-prometheus' `InitializeMetrics` does in etcd.
//! Peer (Raft) traffic is not behind this layer: etcd's peers speak HTTP, so its grpc_server_*
//! count client calls only.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use tonic::body::Body as TonicBody;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::Status;

/// Length-prefixed message framing: a compression flag byte, then a big-endian u32 length.
const PREFIX: usize = 5;

/// Follows gRPC's message framing through a body's chunks, however they are cut.
#[derive(Default)]
pub(crate) struct Framing {
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Bytes of the current message not seen yet.
    remaining: usize,
}

impl Framing {
    /// Calls `message` with each message's length as soon as its prefix is complete; stops at
    /// the first error `message` returns.
    pub(crate) fn scan<E>(
        &mut self,
        mut data: &[u8],
        mut message: impl FnMut(usize) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len());
                self.remaining -= skip;
                data = &data[skip..];
                continue;
            }
            let take = (PREFIX - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == PREFIX {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                message(len)?;
                self.remaining = len;
            }
        }
        Ok(())
    }
}

/// grpc-prometheus' `grpc_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    /// From a method descriptor's streaming flags.
    pub fn of(client_streaming: bool, server_streaming: bool) -> GrpcType {
        match (client_streaming, server_streaming) {
            (false, false) => GrpcType::Unary,
            (true, false) => GrpcType::ClientStream,
            (false, true) => GrpcType::ServerStream,
            (true, true) => GrpcType::BidiStream,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ClientStream => "client_stream",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

/// Go's names of the gRPC codes (`codes.Code.String()`), by number: the `grpc_code` label.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The `grpc_code` of a `grpc-status` value; a status outside gRPC's codes is what grpc-go
/// makes of it, Unknown.
fn code_index(status: &[u8]) -> usize {
    std::str::from_utf8(status)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&c| c < CODE_NAMES.len())
        .unwrap_or(tonic::Code::Unknown as usize)
}

/// The metric families; each method's series are resolved once, in [`GrpcServerMetrics::methods`].
pub struct GrpcServerMetrics {
    registry: Registry,
    started: IntCounterVec,
    handled: IntCounterVec,
    msg_received: IntCounterVec,
    msg_sent: IntCounterVec,
    /// `--metrics extensive` only, as in etcd.
    handling: OnceLock<HistogramVec>,
    sent_bytes: IntCounter,
    received_bytes: IntCounter,
}

const METHOD_LABELS: [&str; 3] = ["grpc_type", "grpc_service", "grpc_method"];

impl GrpcServerMetrics {
    pub(super) fn new(registry: &Registry) -> GrpcServerMetrics {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are distinct");
            c
        };
        let counter = |name: &str, help: &str| {
            let c =
                IntCounter::with_opts(Opts::new(name, help).namespace("etcd").subsystem("network"))
                    .expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are distinct");
            c
        };
        let handled_labels = ["grpc_type", "grpc_service", "grpc_method", "grpc_code"];
        GrpcServerMetrics {
            registry: registry.clone(),
            started: vec(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &METHOD_LABELS,
            ),
            handled: vec(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &handled_labels,
            ),
            msg_received: vec(
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &METHOD_LABELS,
            ),
            msg_sent: vec(
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &METHOD_LABELS,
            ),
            handling: OnceLock::new(),
            sent_bytes: counter(
                "client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            ),
            received_bytes: counter(
                "client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            ),
        }
    }

    /// `--metrics extensive`: `grpc_server_handling_seconds` per method, for layers built after
    /// this call.
    pub fn enable_handling_histogram(&self) {
        self.handling.get_or_init(|| {
            // grpc-prometheus' default buckets (client_golang's DefBuckets).
            let opts = HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            )
            .buckets(prometheus::DEFAULT_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, &METHOD_LABELS).expect("valid metric");
            self.registry
                .register(Box::new(h.clone()))
                .expect("metric names are distinct");
            h
        });
    }

    fn method(&self, service: &str, method: &str, kind: GrpcType) -> MethodMetrics {
        let labels = [kind.as_str(), service, method];
        MethodMetrics {
            started: self.started.with_label_values(&labels),
            msg_received: self.msg_received.with_label_values(&labels),
            msg_sent: self.msg_sent.with_label_values(&labels),
            handled: CODE_NAMES.map(|code| {
                self.handled
                    .with_label_values(&[kind.as_str(), service, method, code])
            }),
            handling: self.handling.get().map(|h| h.with_label_values(&labels)),
            sent_bytes: self.sent_bytes.clone(),
            received_bytes: self.received_bytes.clone(),
        }
    }
}

/// One method's series, resolved once so a call only increments.
struct MethodMetrics {
    started: IntCounter,
    msg_received: IntCounter,
    msg_sent: IntCounter,
    handled: [IntCounter; CODE_NAMES.len()],
    handling: Option<Histogram>,
    sent_bytes: IntCounter,
    received_bytes: IntCounter,
}

/// The served methods' series, by path.
#[derive(Clone)]
pub struct MeteredMethods(Arc<HashMap<String, Arc<MethodMetrics>>>);

impl GrpcServerMetrics {
    /// `methods`: (service, method, type) of every method served.
    pub fn methods<'a>(
        &self,
        methods: impl IntoIterator<Item = (&'a str, &'a str, GrpcType)>,
    ) -> MeteredMethods {
        let methods = methods
            .into_iter()
            .map(|(service, method, kind)| {
                let path = format!("/{service}/{method}");
                (path, Arc::new(self.method(service, method, kind)))
            })
            .collect();
        MeteredMethods(Arc::new(methods))
    }
}

/// The metering layer (see the module docs). Calls of paths that are no served method (grpc-go
/// refuses them before its interceptors run) pass through uncounted.
#[derive(Clone)]
pub struct GrpcMetered<S> {
    pub inner: S,
    pub methods: MeteredMethods,
}

impl<S, B> Service<http::Request<B>> for GrpcMetered<S>
where
    S: Service<http::Request<MeteredRequest<B>>, Response = http::Response<TonicBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = self.methods.0.get(req.uri().path()).cloned();
        if let Some(call) = &call {
            call.started.inc();
        }
        let start = Instant::now();
        let req = req.map(|inner| MeteredRequest {
            inner,
            call: call.clone(),
            framing: Framing::default(),
        });
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            let Some(call) = call else {
                return Ok(response);
            };
            // A call that fails before answering has its status in the headers
            // ("trailers-only"); any other ends with it in the trailers.
            let early = response
                .headers()
                .get("grpc-status")
                .map(|s| code_index(s.as_bytes()));
            Ok(response.map(|inner| {
                TonicBody::new(MeteredResponse {
                    inner,
                    call,
                    start,
                    framing: Framing::default(),
                    early,
                    done: false,
                })
            }))
        })
    }
}

/// A request body that counts the messages it carries.
pub struct MeteredRequest<B> {
    inner: B,
    call: Option<Arc<MethodMetrics>>,
    framing: Framing,
}

impl<B> Body for MeteredRequest<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(call)) = (&polled, &this.call) {
            if let Some(data) = frame.data_ref() {
                let _ = this.framing.scan(data, |len| {
                    call.msg_received.inc();
                    call.received_bytes.inc_by(len as u64);
                    Ok::<(), ()>(())
                });
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the messages it carries and the call's end.
struct MeteredResponse {
    inner: TonicBody,
    call: Arc<MethodMetrics>,
    start: Instant,
    framing: Framing,
    /// The status of a trailers-only response.
    early: Option<usize>,
    done: bool,
}

impl MeteredResponse {
    fn handled(&mut self, code: usize) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.call.handled[code].inc();
        if let Some(h) = &self.call.handling {
            h.observe(self.start.elapsed().as_secs_f64());
        }
    }
}

impl Body for MeteredResponse {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let call = &this.call;
                    let _ = this.framing.scan(data, |len| {
                        call.msg_sent.inc();
                        call.sent_bytes.inc_by(len as u64);
                        Ok::<(), ()>(())
                    });
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or(tonic::Code::Unknown as usize, |s| code_index(s.as_bytes()));
                    this.handled(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.handled(status.code() as usize),
            Poll::Ready(None) => {
                let code = this.early.unwrap_or(tonic::Code::Unknown as usize);
                this.handled(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredResponse {
    /// A response dropped before its end: the client went away (or the connection closed), and
    /// grpc-go's handler would see its context canceled.
    fn drop(&mut self) {
        let code = self.early.unwrap_or(tonic::Code::Cancelled as usize);
        self.handled(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    #[test]
    fn codes_have_gos_names() {
        for (code, name) in [
            (tonic::Code::Ok, "OK"),
            (tonic::Code::Cancelled, "Canceled"),
            (tonic::Code::OutOfRange, "OutOfRange"),
            (tonic::Code::Unauthenticated, "Unauthenticated"),
        ] {
            let status = (code as i32).to_string();
            assert_eq!(CODE_NAMES[code_index(status.as_bytes())], name);
        }
        assert_eq!(CODE_NAMES[code_index(b"17")], "Unknown");
        assert_eq!(CODE_NAMES[code_index(b"x")], "Unknown");
    }

    #[test]
    fn streaming_flags_make_grpc_types() {
        assert_eq!(GrpcType::of(false, false).as_str(), "unary");
        assert_eq!(GrpcType::of(true, false).as_str(), "client_stream");
        assert_eq!(GrpcType::of(false, true).as_str(), "server_stream");
        assert_eq!(GrpcType::of(true, true).as_str(), "bidi_stream");
    }

    #[test]
    fn framing_finds_messages_however_the_bytes_are_cut() {
        let mut wire = Vec::new();
        for len in [3usize, 0, 300] {
            wire.push(0);
            wire.extend((len as u32).to_be_bytes());
            wire.resize(wire.len() + len, 1);
        }
        for chunk in [1, 2, 7, wire.len()] {
            let mut framing = Framing::default();
            let mut found = Vec::new();
            for piece in wire.chunks(chunk) {
                framing
                    .scan(piece, |len| {
                        found.push(len);
                        Ok::<(), ()>(())
                    })
                    .unwrap();
            }
            assert_eq!(found, [3, 0, 300], "chunks of {chunk}");
        }
    }

    fn message(len: usize) -> Bytes {
        let mut m = vec![0];
        m.extend((len as u32).to_be_bytes());
        m.resize(PREFIX + len, 7);
        Bytes::from(m)
    }

    /// A service answering every call with `answer`'s response, after reading the request.
    #[derive(Clone)]
    struct Answer(fn() -> http::Response<TonicBody>);

    impl<B> Service<http::Request<B>> for Answer
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Debug,
    {
        type Response = http::Response<TonicBody>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let answer = self.0;
            Box::pin(async move {
                req.into_body().collect().await.unwrap();
                Ok(answer())
            })
        }
    }

    fn ok_with_two_messages() -> http::Response<TonicBody> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
            Ok(Frame::data(message(4))),
            Ok(Frame::data(message(6))),
            Ok(Frame::trailers(trailers)),
        ];
        http::Response::new(TonicBody::new(StreamBody::new(tokio_stream::iter(frames))))
    }

    fn out_of_range() -> http::Response<TonicBody> {
        Status::out_of_range("compacted").into_http()
    }

    /// A layer over `answer` on a registry of its own, serving etcdserverpb.KV/Range (unary)
    /// and etcdserverpb.Watch/Watch (bidi).
    fn layer(answer: fn() -> http::Response<TonicBody>) -> (Registry, GrpcMetered<Answer>) {
        let registry = Registry::new();
        let metrics = GrpcServerMetrics::new(&registry);
        let methods = metrics.methods([
            ("etcdserverpb.KV", "Range", GrpcType::Unary),
            ("etcdserverpb.Watch", "Watch", GrpcType::BidiStream),
        ]);
        (
            registry,
            GrpcMetered {
                inner: Answer(answer),
                methods,
            },
        )
    }

    async fn call(layer: &mut GrpcMetered<Answer>, path: &str, request: Bytes) -> TonicBody {
        let req = http::Request::builder()
            .uri(path)
            .body(Full::new(request))
            .unwrap();
        layer.call(req).await.unwrap().into_body()
    }

    /// The value of the series of `name` with exactly `labels` (as `k=v` pairs).
    fn value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> u64 {
        let family = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("{name} is registered"));
        family
            .get_metric()
            .iter()
            .find(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map_or(0, |m| m.get_counter().get_value() as u64)
    }

    #[tokio::test]
    async fn a_unary_call_counts_its_messages_bytes_and_code() {
        let (registry, mut layer) = layer(ok_with_two_messages);
        let body = call(&mut layer, "/etcdserverpb.KV/Range", message(9)).await;
        body.collect().await.unwrap();
        let range = [("grpc_method", "Range"), ("grpc_type", "unary")];
        assert_eq!(value(&registry, "grpc_server_started_total", &range), 1);
        assert_eq!(
            value(&registry, "grpc_server_msg_received_total", &range),
            1
        );
        assert_eq!(value(&registry, "grpc_server_msg_sent_total", &range), 2);
        let ok = [("grpc_method", "Range"), ("grpc_code", "OK")];
        assert_eq!(value(&registry, "grpc_server_handled_total", &ok), 1);
        assert_eq!(
            value(
                &registry,
                "etcd_network_client_grpc_received_bytes_total",
                &[]
            ),
            9
        );
        assert_eq!(
            value(&registry, "etcd_network_client_grpc_sent_bytes_total", &[]),
            10
        );
    }

    #[tokio::test]
    async fn a_trailers_only_failure_counts_its_code() {
        let (registry, mut layer) = layer(out_of_range);
        drop(call(&mut layer, "/etcdserverpb.KV/Range", message(2)).await);
        let failed = [("grpc_method", "Range"), ("grpc_code", "OutOfRange")];
        assert_eq!(value(&registry, "grpc_server_handled_total", &failed), 1);
        let ok = [("grpc_method", "Range"), ("grpc_code", "OK")];
        assert_eq!(value(&registry, "grpc_server_handled_total", &ok), 0);
    }

    #[tokio::test]
    async fn a_stream_dropped_before_its_end_is_canceled() {
        let (registry, mut layer) = layer(ok_with_two_messages);
        let mut body = call(&mut layer, "/etcdserverpb.Watch/Watch", message(1)).await;
        body.frame().await.unwrap().unwrap();
        drop(body);
        let canceled = [("grpc_method", "Watch"), ("grpc_code", "Canceled")];
        assert_eq!(value(&registry, "grpc_server_handled_total", &canceled), 1);
        let watch = [("grpc_method", "Watch"), ("grpc_type", "bidi_stream")];
        assert_eq!(value(&registry, "grpc_server_msg_sent_total", &watch), 1);
    }

    #[tokio::test]
    async fn every_method_and_code_starts_at_zero_and_unknown_paths_are_not_counted() {
        let (registry, mut layer) = layer(out_of_range);
        let handled = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "grpc_server_handled_total")
            .unwrap();
        assert_eq!(handled.get_metric().len(), 2 * CODE_NAMES.len());
        drop(call(&mut layer, "/etcdserverpb.KV/Nope", message(2)).await);
        let started: u64 = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "grpc_server_started_total")
            .unwrap()
            .get_metric()
            .iter()
            .map(|m| m.get_counter().get_value() as u64)
            .sum();
        assert_eq!(started, 0);
    }
}
