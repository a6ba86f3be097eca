//! Reaching the leader from any member.
//!
//! Writes, ReadIndex, lease renewals and membership changes are the leader's business. A member
//! that is not the leader forwards them over the peer transport; the leader answers "not
//! leader" before doing anything when it has lost the role, so such calls are retried safely.
//! A call whose fate is unknown (the leader changed or vanished after accepting it) is reported
//! to the client as etcd reports it: "leader changed" for writes; reads simply retry.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{LinearizerOption, ReadPolicy};
use oxcd_proto::peerpb::{Failure, ProposeRequest, ReadIndexRequest};

use super::election::quorum_follows;
use super::network::{Client, Peers};
use super::types::{wait_for, NodeId, Raft, WatchReceiver};
use crate::apply::{CommandBatch, OutcomeBatch};
use crate::error::EtcdError;
use crate::replication::{failure, not_leader};

/// Pause before asking again after a "not leader" answer, while the new leader is being found.
const REROUTE_PAUSE: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct LeaderLink {
    pub raft: Raft,
    pub me: NodeId,
    pub peers: Arc<Peers>,
    /// How long the leader waits for a quorum to confirm a read index: the request timeout, as
    /// etcd's read loop keeps asking until then. openraft's default (one leader lease) failed
    /// reads over slow links (1 s round trips) whenever a heartbeat round took longer.
    pub read_index_wait: Duration,
}

enum Route {
    Local,
    /// The leader's id and a client for it.
    Remote(NodeId, Box<Client>),
}

impl LeaderLink {
    pub fn is_leader(&self) -> bool {
        let m = self.raft.server_metrics();
        let m = m.borrow_watched();
        m.current_leader == Some(self.me) && m.state.is_leader()
    }

    /// Where the leader is, waiting while there is none.
    async fn route(&self) -> Result<Route, EtcdError> {
        let mut metrics = self.raft.server_metrics();
        let (leader, urls) = {
            let m = wait_for(&mut metrics, |m| m.current_leader.is_some())
                .await
                .map_err(|_| EtcdError::Stopped)?;
            let leader = m.current_leader.expect("waited for a leader");
            let urls = m
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.peer_urls.clone());
            (leader, urls)
        };
        if leader == self.me {
            return Ok(Route::Local);
        }
        let urls = urls.ok_or(EtcdError::NoLeader)?;
        self.peers
            .client(leader, &urls)
            .map(|c| Route::Remote(leader, Box::new(c)))
            .map_err(|_| EtcdError::NoLeader)
    }

    /// Replicates a batch through the leader and returns its outcomes.
    pub async fn write(&self, batch: CommandBatch) -> Result<OutcomeBatch, EtcdError> {
        let encoded = prost::Message::encode_to_vec(&batch);
        let outcomes = self
            .call(
                Some(EtcdError::LeaderChanged),
                || async {
                    self.write_local(batch.clone())
                        .await
                        .map(|o| prost::Message::encode_to_vec(&o))
                },
                |mut client| {
                    let batch = encoded.clone();
                    async move {
                        let r = client.propose(ProposeRequest { batch }).await?.into_inner();
                        Ok((r.failure, r.outcomes))
                    }
                },
            )
            .await?;
        prost::Message::decode(outcomes.as_slice()).map_err(|_| EtcdError::Corrupt)
    }

    /// The leader's side of [`LeaderLink::write`].
    async fn write_local(&self, batch: CommandBatch) -> Result<OutcomeBatch, Failure> {
        if !self.is_leader() {
            return Err(not_leader());
        }
        match self.raft.client_write(batch).await {
            Ok(response) => Ok(response.data),
            // Refused because leadership is being handed over or was lost, or appended and
            // then lost: the entry may or may not commit.
            Err(RaftError::APIError(
                ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogEntryDiscarded(_),
            )) => Err(failure(EtcdError::LeaderChanged)),
            // oxcd writes without preconditions.
            Err(RaftError::APIError(ClientWriteError::PreconditionFailed(_))) => {
                Err(failure(EtcdError::Corrupt))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(_))) => {
                Err(failure(EtcdError::Corrupt))
            }
            Err(RaftError::Fatal(_)) => Err(failure(EtcdError::Stopped)),
        }
    }

    /// The log index a linearizable read must wait for, confirmed by the leader. Reads change
    /// nothing, so a call lost on the way is simply asked again.
    pub async fn read_index(&self) -> Result<u64, EtcdError> {
        self.call(
            None,
            || self.read_index_local(),
            |mut client| async move {
                let r = client.read_index(ReadIndexRequest {}).await?.into_inner();
                Ok((r.failure, r.index))
            },
        )
        .await
    }

    /// The leader's side of [`LeaderLink::read_index`]: takes the index from openraft (see
    /// [`LeaderLink::read_confirmation`]), then confirms leadership with beacons answered after
    /// it was taken (see [`quorum_follows`] for why openraft's confirmation is not enough
    /// alone). Unconfirmed, the call is asked again, routed to whichever member leads by then.
    pub async fn read_index_local(&self) -> Result<u64, Failure> {
        let option = self
            .read_confirmation()
            .with_wait_timeout(self.read_index_wait);
        match self.raft.get_read_log_id(option).await {
            Ok((read, _applied)) => {
                if quorum_follows(&self.raft, self.me, &self.peers, self.read_index_wait).await {
                    Ok(read.index())
                } else {
                    Err(not_leader())
                }
            }
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                Err(not_leader())
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                Err(failure(EtcdError::Timeout))
            }
            Err(RaftError::Fatal(_)) => Err(failure(EtcdError::Stopped)),
        }
    }

    /// What openraft must confirm before it hands out a read index. The beacon round after it
    /// confirms leadership on its own, so openraft's lease (a quorum's recent answer) is enough
    /// and saves a round trip per read batch. A voter of the previous release answers no
    /// beacons and counts as following, so with one in the cluster a read needs openraft's own
    /// heartbeat round, sent after the read arrived.
    fn read_confirmation(&self) -> LinearizerOption {
        let metrics = self.raft.metrics();
        let any_legacy_voter = metrics
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id != self.me && self.peers.is_legacy(id));
        if any_legacy_voter {
            ReadPolicy::ReadIndex.into()
        } else {
            LinearizerOption::new(None, true)
        }
    }

    /// Runs `local` on the leader: here when this member leads, else `remote` through the
    /// peer transport. A remote call lost in flight fails with `lost`, or is retried if `None`
    /// (for calls that change nothing).
    pub async fn call<T, L, LF, R, RF>(
        &self,
        lost: Option<EtcdError>,
        local: L,
        remote: R,
    ) -> Result<T, EtcdError>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T, Failure>>,
        R: Fn(Client) -> RF,
        RF: Future<Output = Result<(Option<Failure>, T), tonic::Status>>,
    {
        loop {
            let answer = match self.route().await? {
                Route::Local => local().await.map(|v| (None, v)),
                Route::Remote(leader, client) => {
                    match self.unless_deposed(leader, remote(*client)).await {
                        Ok(reply) => Ok(reply),
                        Err(status) if never_sent(&status) => Err(not_leader()),
                        Err(status) => {
                            tracing::debug!(error = %status, "forwarding to the leader failed");
                            match lost {
                                Some(e) => Err(failure(e)),
                                None => Err(not_leader()),
                            }
                        }
                    }
                }
            };
            match answer {
                Ok((None, v)) => return Ok(v),
                Ok((Some(f), _)) | Err(f) if f.not_leader => {
                    tokio::time::sleep(REROUTE_PAUSE).await
                }
                Ok((Some(f), _)) | Err(f) => return Err(EtcdError::from_wire(f.etcd_error)),
            }
        }
    }
}

impl LeaderLink {
    /// Runs a call to `leader`, abandoning it once this member learns of another leader: across
    /// a partition that holds the connection open, the call would otherwise wait for as long as
    /// the partition lasts. An abandoned call's fate is unknown, like a call lost in flight.
    async fn unless_deposed<R>(
        &self,
        leader: NodeId,
        call: impl Future<Output = Result<R, tonic::Status>>,
    ) -> Result<R, tonic::Status> {
        // Server metrics change only with the role, leader or membership; the full metrics change
        // with every append and apply and would wake this waiter for each.
        let mut metrics = self.raft.server_metrics();
        let deposed = wait_for(&mut metrics, |m| {
            m.current_leader.is_some_and(|l| l != leader)
        });
        tokio::select! {
            reply = call => reply,
            _ = deposed => Err(tonic::Status::aborted("the leader changed while the call was in flight")),
        }
    }
}

/// Whether a failed call certainly never reached the leader, so sending it again cannot apply a
/// write twice: the connection was never made (tonic's ConnectError, a refused or timed-out
/// connect, a failed TLS handshake), or the leader's HTTP/2 refused the stream before any of it
/// was processed (REFUSED_STREAM). Told by the errors' types only: a message that merely
/// mentions a connection says nothing about whether the call got through.
fn never_sent(status: &tonic::Status) -> bool {
    use std::error::Error;
    let mut source: Option<&dyn Error> = status.source();
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        if e.downcast_ref::<h2::Error>()
            .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_calls_that_never_left_are_sent_again() {
        // A member that is not there: the connect is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let peers = Peers::new(1, None);
        let mut client = peers
            .connect(&[format!("http://127.0.0.1:{port}")])
            .unwrap();
        let refused = client
            .read_index(ReadIndexRequest {})
            .await
            .expect_err("nothing listens there");
        assert!(never_sent(&refused), "{refused:?}");

        let stream_refused =
            tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert!(never_sent(&stream_refused), "{stream_refused:?}");

        // Sent, then the connection broke: whether the leader applied it is unknown, whatever
        // the message says.
        for unknown in [
            tonic::Status::unavailable("error trying to connect: connection reset by peer"),
            tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL))),
            tonic::Status::unknown("transport error"),
        ] {
            assert!(!never_sent(&unknown), "{unknown:?}");
        }
    }
}
