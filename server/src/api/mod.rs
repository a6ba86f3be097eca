//! gRPC front end: translates etcd's wire messages to service calls and back. No business
//! logic lives here; services not built yet are simply not registered, so tonic answers them
//! with `Unimplemented` at once.

mod kv;
mod maintenance;

use std::sync::Arc;

use oxcd_proto::etcdserverpb::ResponseHeader;

pub use kv::KvApi;
pub use maintenance::MaintenanceApi;

use crate::raft::Consensus;

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
