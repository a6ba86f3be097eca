//! ReadIndex coalescing. Every linearizable read needs a read index confirmed by a quorum, but
//! one confirmation serves every read that was already waiting when it started, as etcd's
//! linearizable read loop does. Reads that arrive while a round is in flight wait for the next
//! round: the one in flight may have begun before them, so its index could miss a write they
//! must see.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::leader::LeaderLink;
use crate::error::EtcdError;
use crate::metrics::metrics;

type Waiter = oneshot::Sender<Result<u64, EtcdError>>;

#[derive(Clone)]
pub struct ReadIndexBatcher {
    waiting: mpsc::UnboundedSender<Waiter>,
}

impl ReadIndexBatcher {
    /// `round_timeout` bounds one confirmation, so a round stuck on a lost leader fails its
    /// readers instead of holding up every later read.
    pub fn start(link: LeaderLink, round_timeout: Duration) -> ReadIndexBatcher {
        let (waiting, rx) = mpsc::unbounded_channel();
        tokio::spawn(confirm_rounds(link, round_timeout, rx));
        ReadIndexBatcher { waiting }
    }

    /// A log index that covers every write acknowledged before this call.
    pub async fn read_index(&self) -> Result<u64, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.waiting.send(tx).map_err(|_| EtcdError::Stopped)?;
        rx.await.unwrap_or(Err(EtcdError::Stopped))
    }
}

async fn confirm_rounds(
    link: LeaderLink,
    round_timeout: Duration,
    mut waiting: mpsc::UnboundedReceiver<Waiter>,
) {
    let mut round = Vec::new();
    while waiting.recv_many(&mut round, usize::MAX).await > 0 {
        let result = tokio::time::timeout(round_timeout, link.read_index())
            .await
            .unwrap_or_else(|_| {
                metrics().server.slow_read_indexes.inc();
                Err(EtcdError::Timeout)
            });
        if result.is_err() {
            metrics().server.read_indexes_failed.inc();
        }
        for waiter in round.drain(..) {
            // A reader that gave up (its request timed out) no longer listens.
            let _ = waiter.send(result);
        }
    }
}
