//! gRPC front end: translates etcd's wire messages to service calls and back. No business
//! logic lives here; services not built yet are simply not registered, so they are answered
//! as grpc-go answers an unknown service (`grpc_wire`).

/// Every unary response: header completed, errors in etcd's form.
macro_rules! respond {
    ($self:ident, $call:expr) => {{
        let mut resp = $call.await.map_err(tonic::Status::from)?;
        $self.header.fill(&mut resp.header);
        Ok(tonic::Response::new(resp))
    }};
}

mod auth;
mod cluster;
mod election;
mod grpc_wire;
mod kv;
mod leader;
mod lease;
mod lock;
mod maintenance;
mod peer;
mod watch;

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{http, BoxFuture, Service};

use oxcd_proto::etcdserverpb::ResponseHeader;

pub use auth::AuthApi;
pub use cluster::ClusterApi;
pub use election::ElectionApi;
pub use grpc_wire::{ClientRoutes, GrpcWire};
pub use kv::KvApi;
pub use leader::{LeaderGuard, LeaderMonitor};
pub use lease::LeaseApi;
pub use lock::LockApi;
pub use maintenance::MaintenanceApi;
pub use peer::{ClusterCheck, DiscoveryApi, PeerApi};
pub use watch::WatchApi;

use crate::auth::{AuthInfo, AuthService};
use crate::error::EtcdError;
use crate::raft::Consensus;

/// The subject common name of the client certificate a TLS connection presented; the server
/// puts it on each request of the connection so `--client-cert-auth` can name the caller.
#[derive(Clone, Debug)]
pub struct CertificateName(pub Arc<str>);

/// What a request says about its sender: its token metadata (`token`, or `authorization` as
/// the gateway sends it) and its connection's certificate.
#[derive(Clone, Default)]
struct Credentials {
    token: Option<String>,
    certificate: Option<Arc<str>>,
}

impl Credentials {
    fn of<T>(req: &tonic::Request<T>) -> Credentials {
        let metadata = req.metadata();
        let token = metadata
            .get("token")
            .or_else(|| metadata.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let certificate = req
            .extensions()
            .get::<CertificateName>()
            .map(|c| c.0.clone());
        Credentials { token, certificate }
    }

    /// Resolved afresh each time: a stream's token can lapse, or its user lose a role, while
    /// the stream lives.
    async fn identify(&self, auth: &AuthService) -> Result<AuthInfo, tonic::Status> {
        self.resolve(auth).await.map_err(tonic::Status::from)
    }

    async fn resolve(&self, auth: &AuthService) -> Result<AuthInfo, EtcdError> {
        auth.identify(self.token.as_deref(), self.certificate.as_deref())
            .await
    }
}

/// With auth on, only the root role may call this (etcd's AuthAdmin.isPermitted).
async fn require_admin<T>(
    auth: &AuthService,
    req: &tonic::Request<T>,
) -> Result<(), tonic::Status> {
    let who = caller(auth, req).await?;
    auth.store().check_admin(&who).map_err(tonic::Status::from)
}

/// With auth on, a caller must be someone (etcd's requireAuthInfo).
async fn require_user<T>(auth: &AuthService, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
    let who = caller(auth, req).await?;
    auth.store().require_user(&who).map_err(tonic::Status::from)
}

/// Who sent a request, as the Auth service resolves its credentials (nobody while auth is
/// off, without looking).
async fn caller<T>(auth: &AuthService, req: &tonic::Request<T>) -> Result<AuthInfo, tonic::Status> {
    if !auth.store().is_enabled() {
        return Ok(AuthInfo::default());
    }
    Credentials::of(req).identify(auth).await
}

/// Learners answer only what etcd's learners answer: Status and serializable Range (the
/// Range service refuses linearizable reads itself, as only it sees the request).
#[derive(Clone)]
pub struct LearnerGate<S> {
    pub inner: S,
    pub consensus: Arc<Consensus>,
}

const LEARNER_PATHS: [&str; 3] = [
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.KV/Range",
    "/grpc.health.v1.Health/Check",
];

impl<S, B> Service<http::Request<B>> for LearnerGate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.consensus.status().is_learner && !LEARNER_PATHS.contains(&req.uri().path()) {
            let refused = tonic::Status::from(EtcdError::NotSupportedForLearner).into_http();
            return Box::pin(async move { Ok(refused) });
        }
        let call = self.inner.call(req);
        Box::pin(call)
    }
}

/// etcd serves Lock and Election through a client inside the server and hands that client's
/// errors back as plain Go errors, which gRPC sends with code Unknown (and etcd's message).
fn unknown_code(e: EtcdError) -> tonic::Status {
    tonic::Status::unknown(e.to_string())
}

/// The same for an error already in gRPC form (the caller's identification failed).
fn unknown_status(s: tonic::Status) -> tonic::Status {
    tonic::Status::unknown(s.message())
}

/// Fills the member-level fields of response headers, as etcd's `header.fill` does.
pub struct HeaderFiller {
    pub cluster_id: u64,
    pub member_id: u64,
    pub consensus: Arc<Consensus>,
    pub current_revision: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl HeaderFiller {
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let h = header.get_or_insert_with(ResponseHeader::default);
        h.cluster_id = self.cluster_id;
        h.member_id = self.member_id;
        h.raft_term = self.consensus.term();
        if h.revision == 0 {
            h.revision = (self.current_revision)();
        }
    }
}
