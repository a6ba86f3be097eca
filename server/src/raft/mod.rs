//! Consensus: openraft wired to the engine-backed log and state machine.
//!
//! Every write is a Raft entry that is fsynced and committed before it is applied and
//! acknowledged, even on a single member. Linearizable reads confirm leadership (ReadIndex) and
//! wait until the state machine has applied the read index.

// openraft's traits dictate its (large) StorageError as the error type.
#![allow(clippy::result_large_err)]

mod election;
mod inbound;
mod leader;
mod legacy;
mod legacy_wire;
mod log_cache;
mod log_store;
mod membership;
mod network;
mod proposer;
mod read_index;
mod record;
mod replication;
mod segment_log;
mod snapshot_file;
mod state_machine;
mod types;
mod wire;
mod written_back;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, SnapshotPolicy};
use oxcd_proto::peerpb::Failure;

pub use inbound::InboundError;
pub use leader::LeaderLink;
pub use membership::{new_member_id, MemberChange, MemberInfo};
pub use network::{
    peer_endpoint, Client as PeerClient, Peers, CLUSTER_ID_HEADER, MAX_PEER_MESSAGE,
};
pub use record::{decode_member_list, encode_member_list, RESTORED_MEMBERSHIP_KEY};
pub use state_machine::{applied_position, AppliedPosition, RAFT_META_KEYS};
use types::WatchReceiver;
pub use types::{Member, NodeId};
pub use wire::requested_change;

use crate::apply::{Applier, Command, CommandBatch, Outcome, OutcomeBatch, Outcomes};
use crate::error::EtcdError;
use crate::replication::{failure, not_leader, ConsensusStatus};
use crate::storage::Engine;

#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// etcd's --initial-election-tick-advance (see `election`).
    pub initial_election_tick_advance: bool,
    /// Applied entries between Raft snapshots (after which the log is purged).
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    /// Entries kept after a snapshot so a briefly lagging follower catches up from the log
    /// rather than a full snapshot (etcd's --snapshot-catchup-entries, 5,000).
    pub catch_up_entries: u64,
    /// Learners the membership may hold at once (etcd's --max-learners).
    pub max_learners: usize,
}

/// Entries per append message.
const MAX_PAYLOAD_ENTRIES: u64 = 256;
/// How long sending a snapshot may take, loading it on the follower included.
const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Consensus {
    raft: types::Raft,
    link: LeaderLink,
    proposer: proposer::Proposer,
    reads: read_index::ReadIndexBatcher,
    timeout: Duration,
    election_timeout: Duration,
    max_learners: usize,
    elections: Arc<election::Elections>,
    removed: tokio::sync::watch::Sender<bool>,
    /// Where a snapshot from the leader is written, one at a time.
    receiving_path: std::path::PathBuf,
    receiving: tokio::sync::Mutex<()>,
}

impl Consensus {
    /// Starts Raft on the engine. A new data dir is bootstrapped with `bootstrap` when given
    /// (a new cluster); without it the member waits for a leader to add it (joining one).
    pub async fn start(
        id: NodeId,
        engine: Arc<Engine>,
        applier: Applier,
        bootstrap: Option<BTreeMap<NodeId, Member>>,
        peers: Arc<Peers>,
        opts: &RaftOptions,
    ) -> anyhow::Result<Consensus> {
        let election_ms = opts.election_timeout.as_millis() as u64;
        let answer_timeout = (opts.election_timeout * 5 / 4).max(opts.heartbeat);
        let config = Config {
            cluster_name: "oxcd".into(),
            // openraft gives each heartbeat one heartbeat interval to be answered and counts
            // only answered ones towards its leader lease, without which it takes no writes.
            // The election module asks for a heartbeat every --heartbeat-interval tick (as etcd
            // sends them), so openraft's own interval is only that deadline: long enough for a
            // 1 s round trip, as etcd tolerates.
            heartbeat_interval: answer_timeout.as_millis() as u64,
            // Campaigns are the election module's (openraft's election timer is off, and its
            // campaigns are leader-transfer elections, which voters grant inside this lease), so
            // the maximum sets only openraft's leader lease: how long a leader takes writes on a
            // quorum's last answer. openraft sends the next heartbeat to a follower only once the
            // last is answered, so an idle leader hears a quorum once a round trip plus a tick,
            // and the lease must outlast two round trips: 2.5 election timeouts cover 1.2 s
            // round trips (jepsen/tests/slow_links.rs). The minimum only bounds vote and
            // leader-transfer calls and must exceed the heartbeat interval.
            election_timeout_min: election_ms * 5 / 2 - 1,
            election_timeout_max: election_ms * 5 / 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_count),
            max_in_snapshot_log_to_keep: opts.snapshot_count.min(opts.catch_up_entries),
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            // Sending a snapshot returns only once the receiver has loaded it, which for a
            // large state takes far longer than openraft's 200 ms default.
            install_snapshot_timeout: SNAPSHOT_INSTALL_TIMEOUT.as_millis() as u64,
            // Campaigns start from the election module, after a PreVote.
            enable_elect: false,
            // A restarted member starts as a follower, as etcd's do, whatever it was before.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()?;
        legacy::upgrade(&engine)?;
        let log = log_store::LogStore::open(engine.clone())?;
        let sm = state_machine::StateMachine::open(engine.clone(), applier)?;
        sm.check_purged_log(log.last_purged())?;
        let receiving_path = sm.receiving_path();
        let network = network::PeerNetwork(peers.clone());
        let raft = types::Raft::new(id, Arc::new(config), network, log.clone(), sm).await?;
        if let Some(members) = bootstrap {
            // Every member of a new cluster initializes with the same membership, which
            // openraft allows; whichever wins the first election leads.
            if !raft.is_initialized().await? {
                raft.initialize(members).await?;
            }
        }
        let link = LeaderLink {
            raft: raft.clone(),
            me: id,
            peers,
            read_index_wait: opts.request_timeout,
        };
        tokio::spawn(count_leader_changes(raft.server_metrics()));
        tokio::spawn(link.peers.clone().probe(
            id,
            {
                let raft = raft.clone();
                move || {
                    membership::list(&raft)
                        .into_iter()
                        .map(|m| (m.id, m.member.peer_urls))
                        .collect()
                }
            },
            {
                let mut server = raft.server_metrics();
                async move { while server.changed().await.is_ok() {} }
            },
        ));
        let proposer =
            proposer::Proposer::start(link.clone(), opts.max_request_bytes, opts.request_timeout);
        let reads = read_index::ReadIndexBatcher::start(link.clone(), opts.request_timeout);
        let elections = election::Elections::start(
            raft.clone(),
            id,
            log,
            link.peers.clone(),
            election::Timing {
                heartbeat: opts.heartbeat,
                election_timeout: opts.election_timeout,
                answer_timeout,
                advance_on_restart: opts.initial_election_tick_advance,
            },
        );
        Ok(Consensus {
            raft,
            link,
            proposer,
            reads,
            timeout: opts.request_timeout,
            election_timeout: opts.election_timeout,
            max_learners: opts.max_learners,
            elections,
            removed: tokio::sync::watch::Sender::new(false),
            receiving_path,
            receiving: tokio::sync::Mutex::new(()),
        })
    }

    /// A restored store is in the state machine but in no log entry, so a member added later
    /// would replay the log from its start and never get it. A snapshot covering the log so far,
    /// with those entries purged, makes a leader send it the snapshot instead (etcd's restore
    /// likewise starts the new cluster from a snapshot).
    pub async fn snapshot_restored_state(&self) -> anyhow::Result<()> {
        let applied = self
            .raft
            .wait(None)
            .metrics(|m| m.last_applied.is_some(), "the new membership applied")
            .await?
            .last_applied
            .expect("waited for it");
        self.raft.trigger().snapshot().await?;
        let built = self
            .raft
            .wait(None)
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
                "snapshot of the restored state",
            )
            .await?;
        let upto = built.snapshot.map_or(applied.index, |s| s.index);
        self.raft.trigger().purge_log(upto).await?;
        self.raft
            .wait(None)
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= upto),
                "log before the restored snapshot purged",
            )
            .await?;
        Ok(())
    }

    pub async fn propose(&self, command: Command) -> Result<Outcomes, EtcdError> {
        self.proposer.propose(command).await
    }

    /// The leader's side of a batch forwarded by another member. Its commands join this
    /// member's own queue rather than becoming an entry of their own: with every member's
    /// writes packed into the same entries, replication rounds carry few large entries
    /// (measured with puts spread over 3 members: about twice the throughput of one entry per
    /// forwarded batch).
    pub async fn propose_forwarded(&self, batch: CommandBatch) -> Result<OutcomeBatch, Failure> {
        if !self.link.is_leader() {
            return Err(not_leader());
        }
        let outcomes = self
            .proposer
            .propose_all(batch.commands)
            .await
            .into_iter()
            .map(|result| Outcome {
                result: Some(result.unwrap_or_else(|e| Outcomes::Error(e.to_wire()))),
            })
            .collect();
        Ok(OutcomeBatch { outcomes })
    }

    /// Returns once every write committed before the call is applied locally (ReadIndex,
    /// confirmed by the leader wherever this member is).
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        if self.status().is_learner {
            return Err(EtcdError::NotSupportedForLearner);
        }
        let barrier = async {
            let index = self.reads.read_index().await?;
            self.wait_applied(index).await
        };
        tokio::time::timeout(self.timeout, barrier)
            .await
            .unwrap_or(Err(EtcdError::Timeout))
    }

    /// Returns once the state machine has applied log index `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), EtcdError> {
        self.raft
            .wait(None)
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|_| EtcdError::Stopped)
    }

    /// Runs a membership change on the leader.
    pub async fn change_members(&self, change: MemberChange) -> Result<(), EtcdError> {
        let request = wire::change_members_request(&change);
        let call = self.link.call(
            Some(EtcdError::LeaderChanged),
            || self.change_members_here(&change),
            |mut client| {
                let request = request.clone();
                async move {
                    let r = client.change_members(request).await?;
                    Ok((r.into_inner().failure, ()))
                }
            },
        );
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(EtcdError::Timeout))
    }

    /// The leader's side of [`Consensus::change_members`].
    pub async fn change_members_here(&self, change: &MemberChange) -> Result<(), Failure> {
        if !self.link.is_leader() {
            return Err(not_leader());
        }
        let removed = match change {
            MemberChange::Remove { id } => self.members().into_iter().find(|m| m.id == *id),
            _ => None,
        };
        membership::apply(&self.raft, change, self.max_learners)
            .await
            .map_err(failure)?;
        if let Some(member) = removed {
            self.tell_removed(member);
        }
        Ok(())
    }

    /// A removed member no longer hears from the leader, so it is told (best effort; etcd's
    /// peers refuse a removed member's messages to the same end).
    fn tell_removed(&self, member: MemberInfo) {
        let Ok(mut client) = self.link.peers.client(member.id, &member.member.peer_urls) else {
            return;
        };
        tokio::spawn(async move {
            for _ in 0..10 {
                let told = client.removed(oxcd_proto::peerpb::RemovedRequest {});
                if tokio::time::timeout(Duration::from_secs(1), told)
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Called when the leader says this member was removed.
    pub fn mark_removed(&self) {
        self.removed.send_replace(true);
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        membership::list(&self.raft)
    }

    /// The members once `done` holds for them here (a change committed on the leader reaches
    /// followers a heartbeat later), or as they are after a short wait.
    pub async fn members_after(&self, done: impl Fn(&[MemberInfo]) -> bool) -> Vec<MemberInfo> {
        let mut metrics = self.raft.server_metrics();
        let wait = types::wait_for(&mut metrics, |_| done(&self.members()));
        let _ = tokio::time::timeout(self.election_timeout, wait).await;
        self.members()
    }

    /// etcd's MoveLeader, run on the leader: once the target has caught up, openraft hands
    /// over (the leader stops taking writes and sending heartbeats, and the target campaigns
    /// with the leader's leave, which voters grant within a lease).
    pub async fn move_leader(&self, target: NodeId) -> Result<(), EtcdError> {
        if !self.link.is_leader() {
            return Err(EtcdError::NotLeader);
        }
        if target == self.link.me {
            return Ok(());
        }
        if !self.members().iter().any(|m| m.id == target && !m.learner) {
            return Err(EtcdError::BadLeaderTransferee);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut metrics = self.raft.metrics();
        let caught_up = types::wait_for(&mut metrics, |m| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).cloned().flatten());
            matched.map(|l| l.index) >= m.last_log_index
        });
        tokio::time::timeout_at(deadline, caught_up)
            .await
            .map_err(|_| EtcdError::Timeout)?
            .map_err(|_| EtcdError::Stopped)?;
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|_| EtcdError::Stopped)?;
        let elected = types::wait_for(&mut metrics, |m| m.current_leader == Some(target));
        tokio::time::timeout_at(deadline + self.election_timeout * 2, elected)
            .await
            .map_err(|_| EtcdError::Timeout)?
            .map_err(|_| EtcdError::Stopped)?;
        Ok(())
    }

    /// Resolves when this member has been removed from the cluster (etcd then stops it).
    pub async fn removed(&self) {
        let mut told = self.removed.subscribe();
        tokio::select! {
            _ = told.wait_for(|removed| *removed) => {}
            _ = self.left_membership() => {}
        }
    }

    async fn left_membership(&self) {
        let me = self.link.me;
        let mut metrics = self.raft.server_metrics();
        let is_member =
            |m: &types::ServerMetrics| m.membership_config.membership().get_node(&me).is_some();
        if types::wait_for(&mut metrics, is_member).await.is_err() {
            return std::future::pending().await;
        }
        if types::wait_for(&mut metrics, |m| !is_member(m))
            .await
            .is_err()
        {
            std::future::pending::<()>().await
        }
    }

    /// This member campaigns now (the target of a leader transfer).
    pub async fn campaign(&self) {
        if let Err(e) = self.raft.trigger().elect(false).await {
            tracing::warn!(error = %e, "campaign");
        }
    }

    /// Keeps this member out of elections (bounded, in case the transfer never finishes).
    pub fn hold_elections(&self, hold: bool) {
        self.elections.hold(hold);
    }

    /// Whether this member would vote for a candidate whose log ends at `candidate_last`
    /// (a position record; a member of the previous release sends its bincode instead).
    pub fn pre_vote(&self, candidate_last: &[u8], legacy: &[u8]) -> Result<bool, String> {
        let last = if candidate_last.is_empty() {
            legacy::position(legacy)
                .map_err(|e| e.to_string())?
                .map(types::LogId::from)
        } else {
            record::decode_position(candidate_last).map_err(|e| e.to_string())?
        };
        Ok(self.elections.grant_pre_vote(last))
    }

    /// A leader's beacon (see [`election`]): whether this member follows it.
    pub fn leader_beacon(&self, term: u64, leader: NodeId) -> bool {
        self.elections.answer_beacon(term, leader)
    }

    /// The leader's side of forwarded writes and ReadIndex.
    pub fn leader_link(&self) -> &LeaderLink {
        &self.link
    }

    /// Read on every client request (learner and leader checks): borrowed, never cloned. The
    /// leader is the one this member can vouch for: none when a leader lost its quorum or a
    /// follower lost its leader for an election timeout, as etcd reports it.
    pub fn status(&self) -> ConsensusStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let is_voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.link.me);
        ConsensusStatus {
            leader: m.current_leader.filter(|_| self.elections.in_contact()),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            is_learner: !is_voter,
        }
    }

    /// `--election-timeout`: how often a `hasleader` stream checks for a leader.
    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// `etcd_server_leader_changes_seen_total`: as etcd counts it, each time this member learns of
/// a leader other than the last one it knew (the first one included), until Raft stops.
async fn count_leader_changes(mut server: types::MetricsWatch<types::ServerMetrics>) {
    let mut known = None;
    loop {
        let leader = server.borrow_and_update().current_leader;
        if leader.is_some() && leader != known {
            known = leader;
            crate::metrics::metrics().server.leader_changes.inc();
        }
        if server.changed().await.is_err() {
            return;
        }
    }
}
