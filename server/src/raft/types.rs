//! The Raft type configuration: the log's entries carry the applier's command batches.

pub use crate::apply::{CommandBatch, OutcomeBatch};

pub type NodeId = u64;

/// A member as Raft's membership config records it (a protobuf message of the data dir's
/// membership records, `record::NodeRecord`).
#[derive(Clone, Eq, PartialEq, prost::Message)]
pub struct Member {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub peer_urls: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub client_urls: Vec<String>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = CommandBatch,
        R = OutcomeBatch,
        NodeId = NodeId,
        Node = Member,
);

pub type Raft = openraft::Raft<TypeConfig, super::state_machine::StateMachine>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type LeaderId = openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;

/// The id of the entry at `index` proposed by `leader` in `term`.
pub fn log_id(term: u64, leader: NodeId, index: u64) -> LogId {
    LogId::new(
        LeaderId {
            term,
            node_id: leader,
        },
        index,
    )
}

/// openraft logs entries by their payload.
impl std::fmt::Display for CommandBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} commands", self.commands.len())
    }
}

pub use openraft::async_runtime::WatchReceiver;
pub type ServerMetrics = openraft::metrics::RaftServerMetrics<TypeConfig>;
pub type MetricsWatch<T> = openraft::type_config::alias::WatchReceiverOf<TypeConfig, T>;

/// Raft has stopped: its metrics will not change again.
#[derive(Debug)]
pub struct Stopped;

/// Waits until `done` holds for the watched metrics and returns them (tokio's `wait_for`).
pub async fn wait_for<T: Clone + Send + Sync>(
    metrics: &mut MetricsWatch<T>,
    done: impl Fn(&T) -> bool,
) -> Result<T, Stopped> {
    loop {
        {
            let now = metrics.borrow_and_update();
            if done(&now) {
                return Ok(now.clone());
            }
        }
        metrics.changed().await.map_err(|_| Stopped)?;
    }
}
