//! Plain HTTP on the client port, next to gRPC (etcd's cmux): what etcd's client port answers to
//! requests that are not gRPC. [`serve`] tells the two apart per connection and per request.

mod gateway;
mod serve;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use std::sync::Arc;

use crate::downgrade::Downgrade;
use crate::health::Health;

pub use gateway::{Gateway, GrpcCall};
pub use serve::{serve, ConnectionSettings};

/// The HTTP endpoints of a client URL.
#[derive(Clone)]
pub struct Router {
    pub health: Health,
    /// etcd's JSON gateway on `/v3/`; `None` with `--enable-grpc-gateway=false`.
    pub gateway: Option<Gateway>,
    pub downgrade: Arc<Downgrade>,
}

impl Router {
    pub async fn answer<B>(&self, req: Request<B>) -> Response<tonic::body::Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = req.uri().path();
        let gateway = self.gateway.as_ref().filter(|_| path.starts_with("/v3/"));
        let mut resp = if let Some(gateway) = gateway {
            gateway.answer(req).await
        } else if path == "/version" {
            version(&self.downgrade).map(tonic::body::Body::new)
        } else {
            // /health, /livez, /readyz, /metrics and etcd's 404 for anything else.
            self.health.answer(req).await.map(tonic::body::Body::new)
        };
        // etcd wraps its client-port handlers in its CORS handler, whose default (`--cors=*`)
        // allows every origin.
        let headers = resp.headers_mut();
        headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("accept, content-type, authorization"),
        );
        resp
    }
}

/// etcd's `/version`: the server's version, and the cluster's and the storage's as etcd forms
/// them (major.minor.0 of the version the members run, lowered by an enabled downgrade).
fn version(downgrade: &Downgrade) -> Response<Full<Bytes>> {
    let server = crate::ETCD_VERSION;
    let cluster = downgrade.cluster_version();
    let body =
        format!(r#"{{"etcdserver":"{server}","etcdcluster":"{cluster}","storage":"{cluster}"}}"#);
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
