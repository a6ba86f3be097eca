//! Consensus: openraft wired to the engine-backed log and state machine.
//!
//! Every write is a Raft entry that is fsynced and committed before it is applied and
//! acknowledged, even on a single member. Linearizable reads confirm leadership (ReadIndex) and
//! wait until the state machine has applied the read index.

// openraft's traits dictate its (large) StorageError as the error type.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod proposer;
mod state_machine;
mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{Config, SnapshotPolicy};

pub use state_machine::Applied;
pub use types::{Command, Member, NodeId, Op, Outcomes};

use crate::error::EtcdError;
use crate::storage::Engine;

#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Applied entries between Raft snapshots (after which the log is purged).
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
}

/// What `Status` reports about consensus.
#[derive(Debug, Clone, Copy, Default)]
pub struct RaftStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
}

pub struct Consensus {
    raft: types::Raft,
    proposer: proposer::Proposer,
    timeout: Duration,
}

impl Consensus {
    /// Starts Raft on the engine; a new data dir is bootstrapped with `members`.
    pub async fn start(
        id: NodeId,
        engine: Arc<Engine>,
        applied: Applied,
        members: BTreeMap<NodeId, Member>,
        opts: &RaftOptions,
    ) -> anyhow::Result<Consensus> {
        let election_ms = opts.election_timeout.as_millis() as u64;
        let config = Config {
            cluster_name: "oxcd".into(),
            heartbeat_interval: opts.heartbeat.as_millis() as u64,
            // etcd randomises the election timeout in [timeout, 2 x timeout).
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_count),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        }
        .validate()?;
        let log = log_store::LogStore::new(engine.clone())?;
        let sm = state_machine::StateMachine::open(engine, applied)?;
        let raft = types::Raft::new(id, Arc::new(config), network::PeerNetwork, log, sm).await?;
        if !raft.is_initialized().await? {
            raft.initialize(members).await?;
        }
        let proposer =
            proposer::Proposer::start(raft.clone(), opts.max_request_bytes, opts.request_timeout);
        Ok(Consensus {
            raft,
            proposer,
            timeout: opts.request_timeout,
        })
    }

    pub async fn propose(&self, command: Command) -> Result<Outcomes, EtcdError> {
        self.proposer.propose(command).await
    }

    /// Returns once every write committed before the call is applied locally.
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        let barrier = async {
            loop {
                match self.raft.ensure_linearizable().await {
                    Ok(_) => return Ok(()),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))
                        if f.leader_id.is_none() =>
                    {
                        proposer::wait_for_leader(&self.raft).await?;
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                        return Err(EtcdError::LeaderChanged)
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                        return Err(EtcdError::NoLeader)
                    }
                    Err(RaftError::Fatal(_)) => return Err(EtcdError::Stopped),
                }
            }
        };
        tokio::time::timeout(self.timeout, barrier)
            .await
            .unwrap_or(Err(EtcdError::Timeout))
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        RaftStatus {
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
        }
    }

    /// Follows whether this member is the leader.
    pub fn leadership(&self, me: NodeId) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut metrics = self.raft.metrics();
        tokio::spawn(async move {
            loop {
                let leading = {
                    let m = metrics.borrow_and_update();
                    m.current_leader == Some(me) && m.state.is_leader()
                };
                tx.send_if_modified(|was| std::mem::replace(was, leading) != leading);
                if metrics.changed().await.is_err() || tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
