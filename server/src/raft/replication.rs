//! Consensus as the services see it ([`Replication`]).

use std::time::Duration;

use futures_util::future::BoxFuture;
use oxcd_proto::peerpb::{self, Failure, HashKvReply, HashKvRequest, LeaseRenewRequest};
use tokio::sync::watch;

use super::types::WatchReceiver;
use super::Consensus;
use crate::apply::{Command, Outcomes};
use crate::error::EtcdError;
use crate::lease::LeaseInfo;
use crate::replication::{ConsensusStatus, LeaderSide, Replication};

impl Replication for Consensus {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Outcomes, EtcdError>> {
        Box::pin(Consensus::propose(self, command))
    }

    fn read_barrier(&self) -> BoxFuture<'_, Result<(), EtcdError>> {
        Box::pin(Consensus::read_barrier(self))
    }

    /// A ReadIndex round, shared with the reads waiting at the same time. A leader cut off from
    /// its quorum fails here instead of extending a lease the new leader will expire.
    fn confirm_leadership(&self, applied: bool) -> BoxFuture<'_, Result<(), EtcdError>> {
        Box::pin(async move {
            let confirmed = async {
                let index = self.reads.read_index().await?;
                if applied {
                    self.wait_applied(index).await?;
                }
                Ok(())
            };
            tokio::time::timeout(self.timeout, confirmed)
                .await
                .unwrap_or(Err(EtcdError::Timeout))?;
            if self.link.is_leader() {
                Ok(())
            } else {
                Err(EtcdError::NotLeader)
            }
        })
    }

    fn wait_applied(&self, index: u64) -> BoxFuture<'_, Result<(), EtcdError>> {
        Box::pin(Consensus::wait_applied(self, index))
    }

    fn leader_read_index(&self) -> BoxFuture<'_, Result<u64, Failure>> {
        Box::pin(self.link.read_index_local())
    }

    fn renew_lease_on_leader<'a>(
        &'a self,
        id: i64,
        here: &'a LeaderSide<'a, i64>,
    ) -> BoxFuture<'a, Result<i64, EtcdError>> {
        Box::pin(self.link.call(None, here, move |mut client| async move {
            let r = client
                .lease_renew(LeaseRenewRequest { id })
                .await?
                .into_inner();
            Ok((r.failure, r.ttl))
        }))
    }

    fn lease_time_to_live_on_leader<'a>(
        &'a self,
        id: i64,
        keys: bool,
        here: &'a LeaderSide<'a, Option<LeaseInfo>>,
    ) -> BoxFuture<'a, Result<Option<LeaseInfo>, EtcdError>> {
        Box::pin(self.link.call(None, here, move |mut client| async move {
            let r = client
                .lease_time_to_live(peerpb::LeaseTimeToLiveRequest { id, keys })
                .await?
                .into_inner();
            let info = r.found.then_some(LeaseInfo {
                ttl: r.ttl,
                granted_ttl: r.granted_ttl,
                keys: r.keys,
            });
            Ok((r.failure, info))
        }))
    }

    fn peers_hash_kv(
        &self,
        revision: i64,
        timeout: Duration,
    ) -> BoxFuture<'_, Vec<(u64, Result<HashKvReply, String>)>> {
        Box::pin(async move {
            let mut answers = Vec::new();
            for member in self.members().into_iter().filter(|m| m.id != self.link.me) {
                let Ok(mut client) = self.link.peers.client(member.id, &member.member.peer_urls)
                else {
                    continue;
                };
                let asked = client.hash_kv(HashKvRequest { revision });
                let answer = match tokio::time::timeout(timeout, asked).await {
                    Err(_) => Err("no answer in time".to_string()),
                    Ok(Err(status)) => Err(status.to_string()),
                    Ok(Ok(reply)) => Ok(reply.into_inner()),
                };
                answers.push((member.id, answer));
            }
            answers
        })
    }

    fn is_leader(&self) -> bool {
        self.link.is_leader()
    }

    fn status(&self) -> ConsensusStatus {
        Consensus::status(self)
    }

    fn leadership(&self, me: u64) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        // Server metrics: they change with the role, not with every write (see LeaderLink).
        let mut metrics = self.raft.server_metrics();
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

    /// etcd counts its open peer connections; oxcd's connect on demand, so reachability stands
    /// in.
    fn peer_activity(&self) -> Vec<(u64, bool)> {
        self.members()
            .into_iter()
            .filter(|m| m.id != self.link.me)
            .map(|m| (m.id, self.link.peers.reachable(m.id)))
            .collect()
    }

    /// Also the size RangeStream aims its chunks at, as etcd does.
    fn max_request_bytes(&self) -> usize {
        self.proposer.max_request_bytes()
    }

    fn request_timeout(&self) -> Duration {
        self.timeout
    }

    fn term(&self) -> u64 {
        Consensus::term(self)
    }
}
