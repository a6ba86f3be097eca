//! etcd's `hasleader` metadata (clientv3's `WithRequireLeader`, set by kube-apiserver on every
//! watch): a client that sets it wants an error, not a wait, when the member has no leader. A
//! call is refused up front, and a stream already open is cut once the member has had no leader
//! for three checks in a row, one per election timeout, as etcd's `monitorLeader` cuts it, so a
//! client on a member cut off from the cluster moves to another member instead of waiting on a
//! stale one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::error::EtcdError;
use crate::raft::Consensus;

fn requires_leader(metadata: &MetadataMap) -> bool {
    metadata.get("hasleader").is_some_and(|v| v == "true")
}

/// Refuses `hasleader` calls while the member has no leader. Applied to every service.
#[derive(Clone)]
pub struct LeaderGuard(pub Arc<Consensus>);

impl tonic::service::Interceptor for LeaderGuard {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if requires_leader(req.metadata()) && self.0.status().leader.is_none() {
            return Err(EtcdError::NoLeader.into());
        }
        Ok(req)
    }
}

/// etcd's `maxNoLeaderCnt`: checks in a row without a leader before a stream is cut.
const CHECKS_WITHOUT_LEADER: u32 = 3;

/// Cuts the response streams of `hasleader` calls when the member loses its leader.
#[derive(Clone)]
pub struct LeaderMonitor {
    pub consensus: Arc<Consensus>,
    /// How often a stream checks (etcd: once per election timeout).
    pub interval: Duration,
}

impl LeaderMonitor {
    /// `responses`, ended with "etcdserver: no leader" once the member has no leader if the
    /// call's `metadata` asked for one; untouched otherwise.
    pub fn watch_over<T: Send + 'static>(
        &self,
        metadata: &MetadataMap,
        responses: BoxStream<T>,
    ) -> BoxStream<T> {
        if !requires_leader(metadata) {
            return responses;
        }
        Box::pin(RequireLeader {
            inner: responses,
            consensus: self.consensus.clone(),
            interval: self.interval,
            next_check: Box::pin(tokio::time::sleep(self.interval)),
            without_leader: 0,
            cut: false,
        })
    }
}

struct RequireLeader<T> {
    inner: BoxStream<T>,
    consensus: Arc<Consensus>,
    interval: Duration,
    next_check: Pin<Box<Sleep>>,
    /// Checks in a row that found no leader.
    without_leader: u32,
    cut: bool,
}

impl<T> Stream for RequireLeader<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(None);
        }
        while this.next_check.as_mut().poll(cx).is_ready() {
            if this.consensus.status().leader.is_some() {
                this.without_leader = 0;
            } else {
                this.without_leader += 1;
                if this.without_leader >= CHECKS_WITHOUT_LEADER {
                    this.cut = true;
                    return Poll::Ready(Some(Err(EtcdError::NoLeader.into())));
                }
            }
            let next = Instant::now() + this.interval;
            this.next_check.as_mut().reset(next);
        }
        this.inner.as_mut().poll_next(cx)
    }
}
