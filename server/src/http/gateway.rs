//! etcd's JSON gateway (grpc-gateway): `POST /v3/kv/range` with a JSON request answers the JSON
//! of `KV.Range`'s response; a streaming call (`/v3/watch`) takes a sequence of JSON requests
//! and streams its responses. As etcd's gateway dials its own gRPC
//! server, each call is made on this member's gRPC services, in-process: every check (auth
//! with the `Authorization` header's token, leader, learner, size limits) applies as for gRPC.
//! JSON is protojson as grpc-gateway writes it for etcd: proto field names, 64-bit integers as
//! strings, bytes as base64, default values left out; errors are `{"code","message"}` with
//! grpc-gateway's HTTP status for the gRPC code.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};
use tonic::Code;

/// One gRPC call on this member's own services.
pub type GrpcCall = Arc<
    dyn Fn(Request<tonic::body::Body>) -> BoxFuture<'static, Response<tonic::body::Body>>
        + Send
        + Sync,
>;

/// The gateway's paths and the methods behind them (etcd's rpc.proto `google.api.http` options).
const ROUTES: &[(&str, &str, &str)] = &[
    ("/v3/watch", "etcdserverpb.Watch", "Watch"),
    (
        "/v3/lease/keepalive",
        "etcdserverpb.Lease",
        "LeaseKeepAlive",
    ),
    (
        "/v3/maintenance/snapshot",
        "etcdserverpb.Maintenance",
        "Snapshot",
    ),
    ("/v3/election/observe", "v3electionpb.Election", "Observe"),
    ("/v3/kv/range", "etcdserverpb.KV", "Range"),
    ("/v3/kv/put", "etcdserverpb.KV", "Put"),
    ("/v3/kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("/v3/kv/txn", "etcdserverpb.KV", "Txn"),
    ("/v3/kv/compaction", "etcdserverpb.KV", "Compact"),
    ("/v3/lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("/v3/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("/v3/kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    (
        "/v3/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    (
        "/v3/kv/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    ("/v3/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("/v3/kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    (
        "/v3/cluster/member/add",
        "etcdserverpb.Cluster",
        "MemberAdd",
    ),
    (
        "/v3/cluster/member/remove",
        "etcdserverpb.Cluster",
        "MemberRemove",
    ),
    (
        "/v3/cluster/member/update",
        "etcdserverpb.Cluster",
        "MemberUpdate",
    ),
    (
        "/v3/cluster/member/list",
        "etcdserverpb.Cluster",
        "MemberList",
    ),
    (
        "/v3/cluster/member/promote",
        "etcdserverpb.Cluster",
        "MemberPromote",
    ),
    ("/v3/maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    (
        "/v3/maintenance/status",
        "etcdserverpb.Maintenance",
        "Status",
    ),
    (
        "/v3/maintenance/defragment",
        "etcdserverpb.Maintenance",
        "Defragment",
    ),
    ("/v3/maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    (
        "/v3/maintenance/hashkv",
        "etcdserverpb.Maintenance",
        "HashKV",
    ),
    (
        "/v3/maintenance/transfer-leadership",
        "etcdserverpb.Maintenance",
        "MoveLeader",
    ),
    (
        "/v3/maintenance/downgrade",
        "etcdserverpb.Maintenance",
        "Downgrade",
    ),
    ("/v3/auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("/v3/auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("/v3/auth/status", "etcdserverpb.Auth", "AuthStatus"),
    ("/v3/auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("/v3/auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("/v3/auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("/v3/auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("/v3/auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    (
        "/v3/auth/user/changepw",
        "etcdserverpb.Auth",
        "UserChangePassword",
    ),
    ("/v3/auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    (
        "/v3/auth/user/revoke",
        "etcdserverpb.Auth",
        "UserRevokeRole",
    ),
    ("/v3/auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("/v3/auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("/v3/auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("/v3/auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    (
        "/v3/auth/role/grant",
        "etcdserverpb.Auth",
        "RoleGrantPermission",
    ),
    (
        "/v3/auth/role/revoke",
        "etcdserverpb.Auth",
        "RoleRevokePermission",
    ),
    ("/v3/lock/lock", "v3lockpb.Lock", "Lock"),
    ("/v3/lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("/v3/election/campaign", "v3electionpb.Election", "Campaign"),
    ("/v3/election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("/v3/election/leader", "v3electionpb.Election", "Leader"),
    ("/v3/election/resign", "v3electionpb.Election", "Resign"),
];

#[derive(Clone)]
pub struct Gateway {
    pool: DescriptorPool,
    call: GrpcCall,
    /// The largest request body taken (the gRPC receive limit).
    max_body: usize,
}

impl Gateway {
    pub fn new(call: GrpcCall, max_body: usize) -> anyhow::Result<Gateway> {
        let pool = DescriptorPool::decode(oxcd_proto::FILE_DESCRIPTOR_SET)?;
        Ok(Gateway {
            pool,
            call,
            max_body,
        })
    }

    fn method(&self, path: &str) -> Option<MethodDescriptor> {
        let (_, service, method) = ROUTES.iter().find(|(p, _, _)| *p == path)?;
        self.pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == *method)
    }

    /// Answers a request under `/v3/`.
    pub async fn answer<B>(&self, req: Request<B>) -> Response<tonic::body::Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some(method) = self.method(req.uri().path()) else {
            return error(Code::NotFound, "Not Found");
        };
        if req.method() != Method::POST {
            // grpc-gateway's answer to a known path with another HTTP method.
            return error(Code::Unimplemented, "Method Not Allowed");
        }
        let authorization = req.headers().get(AUTHORIZATION).cloned();
        let body = match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return error(Code::InvalidArgument, &e.to_string()),
        };
        // A streaming call's body is a sequence of JSON requests, as grpc-gateway reads it.
        let inputs = if method.is_client_streaming() {
            decode_json_sequence(method.input(), &body)
        } else {
            decode_json(method.input(), &body).map(|m| vec![m])
        };
        let inputs = match inputs {
            Ok(inputs) => inputs,
            Err(e) => return error(Code::InvalidArgument, &e.to_string()),
        };
        // Dropped with the response body, when the HTTP client goes away.
        let (hang_up, hung_up) = tokio::sync::oneshot::channel::<()>();
        let call = grpc_request(&method, &inputs, authorization, hung_up);
        let (parts, body) = (self.call)(call).await.into_parts();
        if method.is_server_streaming() {
            if let Some(status) =
                tonic::Status::from_header_map(&parts.headers).filter(|s| s.code() != Code::Ok)
            {
                return error(status.code(), status.message());
            }
            let mut resp = Response::new(stream_json(method.output(), body, hang_up));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return resp;
        }
        let (data, trailers) = match body.collect().await {
            Ok(collected) => {
                let trailers = collected.trailers().cloned();
                (collected.to_bytes(), trailers)
            }
            Err(e) => return error(Code::Unavailable, &e.to_string()),
        };
        // A failed call answers in its headers (trailers-only) or in its trailers.
        let status = tonic::Status::from_header_map(&parts.headers)
            .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map));
        if let Some(status) = status.filter(|s| s.code() != Code::Ok) {
            return error(status.code(), status.message());
        }
        let output = data
            .get(5..)
            .ok_or_else(|| "a response without a message".to_string())
            .and_then(|m| DynamicMessage::decode(method.output(), m).map_err(|e| e.to_string()));
        match output.and_then(|m| encode_json(&m)) {
            Ok(json) => json_response(StatusCode::OK, json),
            Err(e) => error(Code::Internal, &e),
        }
    }
}

/// The gRPC request of `method` carrying `inputs`. A client-streaming call's requests stay open
/// until `hung_up` (etcd ends a watch or keep-alive stream when its client stops sending).
fn grpc_request(
    method: &MethodDescriptor,
    inputs: &[DynamicMessage],
    authorization: Option<HeaderValue>,
    hung_up: tokio::sync::oneshot::Receiver<()>,
) -> Request<tonic::body::Body> {
    let mut frames = BytesMut::new();
    for input in inputs {
        frames.put_u8(0);
        frames.put_u32(input.encoded_len() as u32);
        input.encode(&mut frames).expect("a BytesMut grows");
    }
    let frames = frames.freeze();
    let body = if method.is_client_streaming() {
        let data = futures_util::stream::iter([Ok::<_, tonic::Status>(Frame::data(frames))])
            .chain(futures_util::stream::once(hung_up).filter_map(|_| async { None }));
        tonic::body::Body::new(StreamBody::new(data))
    } else {
        tonic::body::Body::new(Full::new(frames))
    };
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let mut call = Request::builder()
        .method(Method::POST)
        .version(hyper::Version::HTTP_2)
        .uri(path)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
        .header("te", HeaderValue::from_static("trailers"));
    if let Some(token) = authorization {
        call = call.header(AUTHORIZATION, token);
    }
    call.body(body).expect("a request of valid parts")
}

/// A stream of gRPC responses as grpc-gateway streams them: each message as `{"result":…}`
/// and a newline, a failure at the end as `{"error":{"code","message"}}`. `hang_up` is held
/// as long as the stream lives.
fn stream_json(
    output: prost_reflect::MessageDescriptor,
    body: tonic::body::Body,
    hang_up: tokio::sync::oneshot::Sender<()>,
) -> tonic::body::Body {
    struct State {
        body: tonic::body::Body,
        buffer: BytesMut,
        output: prost_reflect::MessageDescriptor,
        done: bool,
        _hang_up: tokio::sync::oneshot::Sender<()>,
    }
    let state = State {
        body,
        buffer: BytesMut::new(),
        output,
        done: false,
        _hang_up: hang_up,
    };
    let lines = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(message) = take_message(&mut state.buffer) {
                let json = DynamicMessage::decode(state.output.clone(), message)
                    .map_err(|e| e.to_string())
                    .and_then(|m| encode_json(&m));
                let line = match json {
                    Ok(json) => [&b"{\"result\":"[..], &json, b"}\n"].concat(),
                    Err(e) => stream_error(Code::Internal, &e),
                };
                return Some((line, state));
            }
            if state.done {
                return None;
            }
            match state.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => state.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        state.done = true;
                        let failed = frame
                            .trailers_ref()
                            .and_then(tonic::Status::from_header_map)
                            .filter(|s| s.code() != Code::Ok);
                        if let Some(status) = failed {
                            return Some((stream_error(status.code(), status.message()), state));
                        }
                    }
                },
                Some(Err(status)) => {
                    state.done = true;
                    return Some((stream_error(status.code(), status.message()), state));
                }
                None => state.done = true,
            }
        }
    });
    let frames = lines.map(|line| Ok::<_, tonic::Status>(Frame::data(Bytes::from(line))));
    tonic::body::Body::new(StreamBody::new(frames))
}

/// The next whole length-prefixed gRPC message in `buffer`, taken out of it.
fn take_message(buffer: &mut BytesMut) -> Option<Bytes> {
    let len = u32::from_be_bytes(buffer.get(1..5)?.try_into().ok()?) as usize;
    if buffer.len() < 5 + len {
        return None;
    }
    let mut message = buffer.split_to(5 + len);
    message.advance(5);
    Some(message.freeze())
}

fn stream_error(code: Code, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": { "code": code as i32, "message": message } });
    let mut line = body.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// The successive JSON requests of a streaming call's body.
fn decode_json_sequence(
    descriptor: prost_reflect::MessageDescriptor,
    body: &[u8],
) -> Result<Vec<DynamicMessage>, serde_json::Error> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .map(|value| DynamicMessage::deserialize(descriptor.clone(), value?))
        .collect()
}

/// A JSON request body as protojson reads it (field names or their JSON names); an empty body
/// is the empty message.
fn decode_json(
    descriptor: prost_reflect::MessageDescriptor,
    body: &[u8],
) -> Result<DynamicMessage, serde_json::Error> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize(descriptor, &mut deserializer)?;
    deserializer.end()?;
    Ok(message)
}

fn encode_json(message: &DynamicMessage) -> Result<Vec<u8>, String> {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut serializer, &options)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<tonic::body::Body> {
    let mut resp = Response::new(tonic::body::Body::new(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// grpc-gateway's error body and HTTP status for a gRPC code.
fn error(code: Code, message: &str) -> Response<tonic::body::Body> {
    let body = serde_json::json!({ "code": code as i32, "message": message });
    json_response(http_status(code), body.to_string().into_bytes())
}

/// grpc-gateway's `HTTPStatusFromCode`.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("a valid status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_a_method_of_the_protos() {
        let gateway =
            Gateway::new(Arc::new(|_| unreachable!("no call in this test")), 1 << 20).unwrap();
        for (path, _, _) in ROUTES {
            assert!(gateway.method(path).is_some(), "{path}");
        }
    }

    #[test]
    fn json_is_protojson_with_proto_names() {
        let pool = DescriptorPool::decode(oxcd_proto::FILE_DESCRIPTOR_SET).unwrap();
        let range = pool
            .get_message_by_name("etcdserverpb.RangeRequest")
            .unwrap();
        let request = decode_json(range.clone(), br#"{"key":"Zm9v","keysOnly":true}"#).unwrap();
        assert_eq!(
            String::from_utf8(encode_json(&request).unwrap()).unwrap(),
            r#"{"key":"Zm9v","keys_only":true}"#
        );
        assert!(decode_json(range.clone(), b"{bad").is_err());
        assert!(decode_json(range, b"  ").is_ok());
    }
}
