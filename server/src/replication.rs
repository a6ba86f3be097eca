//! What the services (KV, Lease, Auth, alarms, auto compaction, the corruption check, health)
//! need from consensus, and nothing of how it is reached: they propose commands, wait for
//! linearizable reads and ask the leader for what only it knows. `raft::Consensus` implements
//! it; the services hold an `Arc<dyn Replication>`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use oxcd_proto::peerpb::{Failure, HashKvReply};
use tokio::sync::watch;

use crate::apply::{Command, Outcomes};
use crate::error::EtcdError;
use crate::lease::LeaseInfo;

/// What `Status` and the metrics report about consensus.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsensusStatus {
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub is_learner: bool,
}

/// The leader's side of a forwarded call, run here when this member leads.
pub type LeaderSide<'a, T> = dyn Fn() -> BoxFuture<'a, Result<T, Failure>> + Send + Sync + 'a;

pub trait Replication: Send + Sync {
    /// Replicates `command` and returns its outcome once it is applied here.
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Outcomes, EtcdError>>;

    /// Returns once every write committed before the call is applied locally.
    fn read_barrier(&self) -> BoxFuture<'_, Result<(), EtcdError>>;

    /// etcd's `ensureLeadership`: this member still leads, confirmed with a quorum, and has
    /// applied everything committed before if `applied` is asked for.
    fn confirm_leadership(&self, applied: bool) -> BoxFuture<'_, Result<(), EtcdError>>;

    /// Returns once log index `index` is applied here.
    fn wait_applied(&self, index: u64) -> BoxFuture<'_, Result<(), EtcdError>>;

    /// The leader's side of ReadIndex: the index a linearizable read waits for, once a quorum
    /// has confirmed this member leads.
    fn leader_read_index(&self) -> BoxFuture<'_, Result<u64, Failure>>;

    /// A keep-alive of lease `id`, run by the leader: `here` when this member leads.
    fn renew_lease_on_leader<'a>(
        &'a self,
        id: i64,
        here: &'a LeaderSide<'a, i64>,
    ) -> BoxFuture<'a, Result<i64, EtcdError>>;

    /// Lease `id`'s time to live (and keys, if asked), as the leader knows it: `here` when
    /// this member leads.
    fn lease_time_to_live_on_leader<'a>(
        &'a self,
        id: i64,
        keys: bool,
        here: &'a LeaderSide<'a, Option<LeaseInfo>>,
    ) -> BoxFuture<'a, Result<Option<LeaseInfo>, EtcdError>>;

    /// Every other member's HashKV at `revision`, each given `timeout` to answer; a member
    /// without a usable peer URL is left out.
    fn peers_hash_kv(
        &self,
        revision: i64,
        timeout: Duration,
    ) -> BoxFuture<'_, Vec<(u64, Result<HashKvReply, String>)>>;

    fn is_leader(&self) -> bool;

    fn status(&self) -> ConsensusStatus;

    /// Follows whether member `me` (this one) is the leader.
    fn leadership(&self, me: u64) -> watch::Receiver<bool>;

    /// The other members, each with whether it answered this member's last probe.
    fn peer_activity(&self) -> Vec<(u64, bool)>;

    /// `--max-request-bytes`.
    fn max_request_bytes(&self) -> usize;

    /// How long a request may wait for consensus (etcd's ReqTimeout).
    fn request_timeout(&self) -> Duration;

    fn term(&self) -> u64;
}

/// `e` as a forwarded call's answer.
pub fn failure(e: EtcdError) -> Failure {
    Failure {
        etcd_error: e.to_wire(),
        not_leader: false,
    }
}

/// The answer of a member that does not lead: the caller asks the leader again.
pub fn not_leader() -> Failure {
    Failure {
        etcd_error: EtcdError::NotLeader.to_wire(),
        not_leader: true,
    }
}
