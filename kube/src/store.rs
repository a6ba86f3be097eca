//! The etcd calls kube-apiserver's storage layer makes (staging/.../storage/etcd3/store.go), with
//! the same shapes: reads at a revision, create as `Txn(MOD(key) == 0, Put)`, update and delete
//! as `Txn(MOD(key) == rv, Put|Delete, else Range)`, watches from `rv + 1` with `prev_kv`. The
//! revision etcd answers with is the object's resourceVersion.

use oxcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use oxcd_proto::etcdserverpb::kv_client::KvClient;
use oxcd_proto::etcdserverpb::lease_client::LeaseClient;
use oxcd_proto::etcdserverpb::request_op::Request;
use oxcd_proto::etcdserverpb::response_op::Response;
use oxcd_proto::etcdserverpb::watch_client::WatchClient;
use oxcd_proto::etcdserverpb::watch_request::RequestUnion;
use oxcd_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use oxcd_proto::mvccpb::{event::EventType, KeyValue};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Where kube-apiserver's compactors agree on the next compaction (outside --etcd-prefix).
const COMPACT_REV_KEY: &[u8] = b"compact_rev_key";

/// etcd's error for a revision below the compaction point.
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

#[derive(Debug)]
pub enum StoreError {
    /// The key does not exist (update, delete).
    NotFound,
    /// Create found the key already there.
    Exists,
    /// The key's mod revision is not the expected one.
    Modified,
    /// The requested revision has been compacted; `compacted` is the compaction point when
    /// etcd said it (watches do, reads do not).
    Compacted {
        compacted: i64,
    },
    Unavailable(String),
}

impl From<tonic::Status> for StoreError {
    fn from(status: tonic::Status) -> StoreError {
        if status.message() == COMPACTED {
            StoreError::Compacted { compacted: 0 }
        } else {
            StoreError::Unavailable(status.message().to_string())
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Tries of a call that found its member down, each on a fresh pick of the endpoints.
const UNREACHED_RETRIES: u64 = 8;

/// Whether the call failed before it reached a server (the connection could not be made).
fn never_sent(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message().contains("connect")
}

/// One page of a range: the keys read, whether more follow, and the revision read at.
pub struct Page {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub revision: i64,
}

/// A change seen by a watch: the key's value after it (none for a delete) and before it.
pub struct Change {
    pub kind: EventType,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone)]
pub struct Store {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
    lease: LeaseClient<Channel>,
    reused_lease: Arc<Mutex<Option<ReusedLease>>>,
}

/// The lease expiring keys were last attached to.
struct ReusedLease {
    id: i64,
    ttl: i64,
    granted: Instant,
}

/// How long a granted lease is handed out again: kube-apiserver's
/// --lease-reuse-duration-seconds (60), at most 5% of the TTL.
fn reuse_seconds(ttl: i64) -> i64 {
    (ttl / 20).min(60)
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn mod_revision_is(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        ..Default::default()
    }
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn read(key: &[u8]) -> RequestOp {
    op(Request::RequestRange(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }))
}

impl Store {
    /// A client of every endpoint (kube-apiserver's `--etcd-servers`): calls are spread over
    /// them, and an endpoint that cannot be reached is left out until it can.
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Store> {
        anyhow::ensure!(!endpoints.is_empty(), "no store endpoint");
        let endpoints = endpoints
            .iter()
            .map(|url| {
                Ok(Channel::from_shared(url.clone())?
                    .connect_timeout(std::time::Duration::from_secs(2)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let channel = Channel::balance_list(endpoints.into_iter());
        Ok(Store {
            // Pages of objects can outgrow tonic's 4 MiB default, as in kube-apiserver's client.
            kv: KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX),
            watch: WatchClient::new(channel.clone()).max_decoding_message_size(usize::MAX),
            lease: LeaseClient::new(channel),
            reused_lease: Arc::default(),
        })
    }

    /// A lease that keeps what is attached to it at least `ttl` seconds (kube-apiserver's
    /// --event-ttl for events). As kube-apiserver's lease manager, one lease serves every write
    /// of a minute: it is granted for the TTL plus that minute, so a burst of events costs one
    /// lease, not one each.
    pub async fn lease_for(&self, ttl: i64) -> StoreResult<i64> {
        let reuse = reuse_seconds(ttl);
        {
            let reused = self.reused_lease.lock().expect("not poisoned");
            if let Some(lease) = reused.as_ref() {
                if lease.ttl == ttl && (lease.granted.elapsed().as_secs() as i64) < reuse {
                    return Ok(lease.id);
                }
            }
        }
        let granted = Instant::now();
        let response = self
            .lease
            .clone()
            .lease_grant(LeaseGrantRequest {
                ttl: ttl + reuse,
                id: 0,
            })
            .await?
            .into_inner();
        if !response.error.is_empty() {
            return Err(StoreError::Unavailable(response.error));
        }
        *self.reused_lease.lock().expect("not poisoned") = Some(ReusedLease {
            id: response.id,
            ttl,
            granted,
        });
        Ok(response.id)
    }

    /// A KV call, tried again (up to `UNREACHED_RETRIES` times) while it fails without having
    /// reached a server: the balancer may pick a member that is down, and another pick goes
    /// elsewhere. Nothing was sent, so a write is as safe to try again as a read.
    async fn kv_call<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempts = 0;
        loop {
            match call(self.kv.clone()).await {
                Err(status) if never_sent(&status) && attempts < UNREACHED_RETRIES => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10 * attempts)).await;
                }
                reply => return reply.map(tonic::Response::into_inner),
            }
        }
    }

    /// The key as it is now.
    pub async fn get(&self, key: &[u8]) -> StoreResult<Option<KeyValue>> {
        let page = self.range(key, &[], 0, 0).await?;
        Ok(page.kvs.into_iter().next())
    }

    /// Keys from `from` up to `end` at `revision` (0: the latest), at most `limit` (0: all).
    pub async fn range(
        &self,
        from: &[u8],
        end: &[u8],
        limit: i64,
        revision: i64,
    ) -> StoreResult<Page> {
        let request = RangeRequest {
            key: from.to_vec(),
            range_end: end.to_vec(),
            limit,
            revision,
            ..Default::default()
        };
        let response = self
            .kv_call(|mut kv| {
                let request = request.clone();
                async move { kv.range(request).await }
            })
            .await?;
        Ok(Page {
            revision: response.header.map_or(0, |h| h.revision),
            more: response.more,
            kvs: response.kvs,
        })
    }

    /// Txn(`compare`, success `then`, failure Range(key)): the store's revision after it, and
    /// whether the compare held, or else the key as the failed compare found it.
    async fn guarded(
        &self,
        key: &[u8],
        compare: Compare,
        then: RequestOp,
    ) -> StoreResult<(i64, Result<(), Option<KeyValue>>)> {
        let request = TxnRequest {
            compare: vec![compare],
            success: vec![then],
            failure: vec![read(key)],
        };
        let response = self
            .kv_call(|mut kv| {
                let request = request.clone();
                async move { kv.txn(request).await }
            })
            .await?;
        let revision = response.header.map_or(0, |h| h.revision);
        if response.succeeded {
            return Ok((revision, Ok(())));
        }
        let current = response
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(Response::ResponseRange(range)) => range.kvs.into_iter().next(),
                _ => None,
            });
        Ok((revision, Err(current)))
    }

    /// Creates the key, attached to `lease` (0: none); its revision, or `Exists`.
    pub async fn create(&self, key: &[u8], value: Vec<u8>, lease: i64) -> StoreResult<i64> {
        let put = op(Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..Default::default()
        }));
        match self.guarded(key, mod_revision_is(key, 0), put).await? {
            (revision, Ok(())) => Ok(revision),
            (_, Err(_)) => Err(StoreError::Exists),
        }
    }

    /// Replaces the key if its mod revision is `expected`, attached to `lease` (0: none); the
    /// new revision.
    pub async fn update(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expected: i64,
        lease: i64,
    ) -> StoreResult<i64> {
        let put = op(Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..Default::default()
        }));
        match self
            .guarded(key, mod_revision_is(key, expected), put)
            .await?
        {
            (revision, Ok(())) => Ok(revision),
            (_, Err(None)) => Err(StoreError::NotFound),
            (_, Err(Some(_))) => Err(StoreError::Modified),
        }
    }

    /// Deletes the key if its mod revision is `expected`; the deletion's revision.
    pub async fn delete(&self, key: &[u8], expected: i64) -> StoreResult<i64> {
        let delete = op(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        }));
        match self
            .guarded(key, mod_revision_is(key, expected), delete)
            .await?
        {
            (revision, Ok(())) => Ok(revision),
            (_, Err(None)) => Err(StoreError::NotFound),
            (_, Err(Some(_))) => Err(StoreError::Modified),
        }
    }

    /// One round of kube-apiserver's compactor (storage/etcd3/compact.go), which every
    /// apiserver on a store runs and which coordinates through the store's `compact_rev_key`:
    /// `Txn(Version(compact_rev_key) == expected_version, Put(compact_rev_key, revision), else
    /// Get)`. Whoever wins the round compacts the store to `revision` (the revision it saw one
    /// round ago) unless that is 0. Returns the key's version and the store's revision now,
    /// for the next round.
    pub async fn compaction_round(
        &self,
        expected_version: i64,
        revision: i64,
    ) -> StoreResult<(i64, i64)> {
        let key = COMPACT_REV_KEY;
        let version_is = Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::Version(expected_version)),
            ..Default::default()
        };
        let record = op(Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: revision.to_string().into_bytes(),
            ..Default::default()
        }));
        let now = match self.guarded(key, version_is, record).await? {
            (now, Ok(())) => now,
            // Another compactor won the round: the next one expects the key's version now.
            (now, Err(current)) => return Ok((current.map_or(0, |kv| kv.version), now)),
        };
        if revision > 0 {
            let compaction = CompactionRequest {
                revision,
                physical: false,
            };
            match self
                .kv_call(|mut kv| async move { kv.compact(compaction).await })
                .await
            {
                // Compacted already (by another apiserver's compactor, or an operator).
                Err(status) if status.message() == COMPACTED => {}
                other => {
                    other?;
                }
            }
        }
        Ok((expected_version + 1, now))
    }

    /// Every change under `prefix` from revision `start` on, in order, sent to `changes`
    /// until the receiver goes away or the watch fails (the error is sent last).
    pub async fn watch(
        &self,
        prefix: &[u8],
        start: i64,
        changes: tokio::sync::mpsc::Sender<StoreResult<Change>>,
    ) {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision: start,
                prev_kv: true,
                ..Default::default()
            })),
        };
        // The request stream stays open (a closed one ends the watch) for as long as this runs.
        let (requests, open) = tokio::sync::mpsc::channel(1);
        if requests.send(create).await.is_err() {
            return;
        }
        let requests_stream = tokio_stream::wrappers::ReceiverStream::new(open);
        let mut responses = match self.watch.clone().watch(requests_stream).await {
            Ok(responses) => responses.into_inner(),
            Err(status) => {
                let _ = changes.send(Err(status.into())).await;
                return;
            }
        };
        while let Some(response) = responses.next().await {
            let response = match response {
                Ok(response) => response,
                Err(status) => {
                    let _ = changes.send(Err(status.into())).await;
                    return;
                }
            };
            if response.compact_revision > 0 {
                let compacted = response.compact_revision;
                let _ = changes.send(Err(StoreError::Compacted { compacted })).await;
                return;
            }
            if response.canceled {
                let reason = response.cancel_reason;
                let _ = changes.send(Err(StoreError::Unavailable(reason))).await;
                return;
            }
            for event in response.events {
                let change = Change {
                    kind: EventType::try_from(event.r#type).unwrap_or(EventType::Put),
                    kv: event.kv.unwrap_or_default(),
                    prev_kv: event.prev_kv,
                };
                if changes.send(Ok(change)).await.is_err() {
                    return;
                }
            }
        }
        drop(requests);
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends_as_etcd_clients_compute_them() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
