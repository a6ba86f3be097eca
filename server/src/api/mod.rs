//! gRPC front end: translates etcd's wire messages to service calls and back. No business
//! logic lives here; services not built yet are simply not registered, so tonic answers them
//! with `Unimplemented` at once.

/// Every unary response: header completed, errors in etcd's form.
macro_rules! respond {
    ($self:ident, $call:expr) => {{
        let mut resp = $call.await.map_err(tonic::Status::from)?;
        $self.header.fill(&mut resp.header);
        Ok(tonic::Response::new(resp))
    }};
}

mod kv;
mod lease;
mod maintenance;
mod watch;

use std::sync::Arc;

use oxcd_proto::etcdserverpb::ResponseHeader;

pub use kv::KvApi;
pub use lease::LeaseApi;
pub use maintenance::MaintenanceApi;
pub use watch::WatchApi;

use crate::error::EtcdError;
use crate::raft::Consensus;

/// etcd's `hasleader` metadata: a client that sets it wants an error, not a wait, when the
/// member has no leader. Applied to every service.
#[derive(Clone)]
pub struct LeaderGuard(pub Arc<Consensus>);

impl tonic::service::Interceptor for LeaderGuard {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let wants_leader = req.metadata().get("hasleader").is_some_and(|v| v == "true");
        if wants_leader && self.0.status().leader.is_none() {
            return Err(EtcdError::NoLeader.into());
        }
        Ok(req)
    }
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
