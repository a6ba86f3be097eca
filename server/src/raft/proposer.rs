//! Group commit. Client writes queue here; one task packs everything waiting into the next Raft
//! entry, so a single fsync covers all writes that arrived while earlier entries were being made
//! durable. Up to four entries are in flight: with fewer, a write that arrives while every slot
//! waits for its quorum waits a whole round trip more (two slots cost a 1 s peer round trip
//! half a second per write on average, `jepsen/tests/slow_links.rs`); more than four made
//! smaller batches and no more throughput (oxcd-bench put-50/put-1000, 1 and 3 members: 2, 4
//! and 8 within the machine's run-to-run noise, 8 lowest at 1000 clients).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::leader::LeaderLink;
use crate::apply::{Command, CommandBatch, Outcomes};
use crate::error::EtcdError;
use crate::metrics::metrics;

const MAX_IN_FLIGHT: usize = 4;
/// etcd measures a request inside its Raft envelope (a request header with a 64-bit id); ours
/// is smaller, so add the difference to refuse exactly the requests etcd refuses.
const ETCD_ENVELOPE_BYTES: usize = 12;
const MAX_BATCH_COMMANDS: usize = 4096;
const MAX_BATCH_BYTES: usize = 8 << 20;

type Reply = (
    oneshot::Receiver<Result<Outcomes, EtcdError>>,
    PendingProposal,
);

/// Counts a proposal in `etcd_server_proposals_pending` while its proposer waits for it.
struct PendingProposal;

impl PendingProposal {
    fn new() -> PendingProposal {
        metrics().server.proposals_pending.inc();
        PendingProposal
    }
}

impl Drop for PendingProposal {
    fn drop(&mut self) {
        metrics().server.proposals_pending.dec();
    }
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Outcomes, EtcdError>>,
}

#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
    /// The entries in flight, shared by the queue's task and writes that go straight through.
    in_flight: Arc<Semaphore>,
    leader: LeaderLink,
    max_request_bytes: usize,
    timeout: Duration,
}

impl Proposer {
    pub fn start(leader: LeaderLink, max_request_bytes: usize, timeout: Duration) -> Proposer {
        let (tx, rx) = mpsc::channel(16 * 1024);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        tokio::spawn(run(leader.clone(), rx, in_flight.clone()));
        Proposer {
            queue: tx,
            in_flight,
            leader,
            max_request_bytes,
            timeout,
        }
    }

    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// Replicates `command` and returns the result of applying it. With nothing queued and a
    /// slot free there is nothing to share an entry with: the command goes straight to Raft
    /// from this task, saving the two task hand-offs of the queue.
    pub async fn propose(&self, command: Command) -> Result<Outcomes, EtcdError> {
        if self.queue.capacity() == self.queue.max_capacity() {
            if let Ok(permit) = self.in_flight.clone().try_acquire_owned() {
                return self.propose_alone(command, permit).await;
            }
        }
        let reply = self.enqueue(command).await?;
        self.await_reply(reply).await
    }

    async fn propose_alone(
        &self,
        command: Command,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Outcomes, EtcdError> {
        if command.encoded_len() + ETCD_ENVELOPE_BYTES > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        let _pending = PendingProposal::new();
        let batch = CommandBatch {
            commands: vec![command],
        };
        let written = tokio::time::timeout(self.timeout, write(&self.leader, batch)).await;
        drop(permit);
        let failure = match written {
            Ok(Ok(mut outcomes)) => return outcomes.pop().unwrap_or(Err(EtcdError::Corrupt)),
            Ok(Err(e)) => e,
            Err(_) => EtcdError::Timeout,
        };
        metrics().server.proposals_failed.inc();
        Err(failure)
    }

    /// Replicates several commands, all queued before any is awaited so they can share an
    /// entry; one result per command, in order.
    pub async fn propose_all(&self, commands: Vec<Command>) -> Vec<Result<Outcomes, EtcdError>> {
        let mut replies = Vec::with_capacity(commands.len());
        for command in commands {
            replies.push(self.enqueue(command).await);
        }
        let mut results = Vec::with_capacity(replies.len());
        for reply in replies {
            results.push(match reply {
                Ok(reply) => self.await_reply(reply).await,
                Err(e) => Err(e),
            });
        }
        results
    }

    async fn enqueue(&self, command: Command) -> Result<Reply, EtcdError> {
        if command.encoded_len() + ETCD_ENVELOPE_BYTES > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Pending { command, reply })
            .await
            .map_err(|_| EtcdError::Stopped)?;
        Ok((rx, PendingProposal::new()))
    }

    async fn await_reply(&self, (reply, _pending): Reply) -> Result<Outcomes, EtcdError> {
        let failure = match tokio::time::timeout(self.timeout, reply).await {
            Ok(Ok(result)) => return result,
            Ok(Err(_)) => EtcdError::Stopped,
            Err(_) => EtcdError::Timeout,
        };
        metrics().server.proposals_failed.inc();
        Err(failure)
    }
}

async fn run(leader: LeaderLink, mut queue: mpsc::Receiver<Pending>, in_flight: Arc<Semaphore>) {
    while let Some(first) = queue.recv().await {
        // Waiting for a slot before draining the queue is what lets a batch grow.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut bytes = first.command.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(p) => {
                    bytes += p.command.encoded_len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let leader = leader.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let result = write(&leader, CommandBatch { commands }).await;
            drop(permit);
            match result {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(outcome);
                    }
                }
                Err(e) => {
                    // The whole entry failed to commit (an apply error is a command's result).
                    metrics()
                        .server
                        .proposals_failed
                        .inc_by(replies.len() as u64);
                    for reply in replies {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        });
    }
}

/// Writes one batch through the leader; returns one result per command, in order.
async fn write(
    leader: &LeaderLink,
    batch: CommandBatch,
) -> Result<Vec<Result<Outcomes, EtcdError>>, EtcdError> {
    let expected = batch.commands.len();
    let outcomes = leader.write(batch).await?.outcomes;
    if outcomes.len() != expected {
        tracing::error!(
            expected,
            got = outcomes.len(),
            "apply returned the wrong number of results"
        );
        return Err(EtcdError::Corrupt);
    }
    Ok(outcomes
        .into_iter()
        .map(|o| match o.result {
            Some(Outcomes::Error(code)) => Err(EtcdError::from_wire(code)),
            Some(result) => Ok(result),
            None => Err(EtcdError::Corrupt),
        })
        .collect())
}
