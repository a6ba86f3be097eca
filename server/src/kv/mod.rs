//! The KV service's behaviour, independent of gRPC: validation, the choice between Raft and a
//! local read, and the wait a physical compaction implies.

pub mod apply;
pub mod stream;
pub mod validate;

use std::sync::Arc;

use tokio_stream::Stream;

use oxcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};

use crate::alarm::{self, Quota};
use crate::apply::{Command, Op, Outcomes};
use crate::auth::{AuthInfo, AuthStore, LeaseKeys};
use crate::error::EtcdError;
use crate::mvcc::{KeyRange, MvccStore, RangeOptions, RangeResult, ReadView};
use crate::replication::Replication;
use crate::storage::off_runtime;
use stream::RangeStreamer;

pub struct KvService {
    store: Arc<MvccStore>,
    consensus: Arc<dyn Replication>,
    quota: Arc<Quota>,
    auth: Arc<AuthStore>,
    leases: Arc<dyn LeaseKeys + Send + Sync>,
    max_txn_ops: usize,
}

impl KvService {
    pub fn new(
        store: Arc<MvccStore>,
        consensus: Arc<dyn Replication>,
        quota: Arc<Quota>,
        auth: Arc<AuthStore>,
        leases: Arc<dyn LeaseKeys + Send + Sync>,
        max_txn_ops: usize,
    ) -> KvService {
        KvService {
            store,
            consensus,
            quota,
            auth,
            leases,
            max_txn_ops,
        }
    }

    /// Reads are checked here, on the member that serves them; a change of permissions while
    /// one runs fails it with the stale-revision error (etcd's doSerialize).
    pub async fn range(&self, who: &AuthInfo, r: RangeRequest) -> Result<RangeResponse, EtcdError> {
        validate::check_range(&r)?;
        if !r.serializable {
            self.consensus.read_barrier().await?;
        }
        self.auth.check_range(who, &r.key, &r.range_end)?;
        // A single key is a few microseconds; anything wider may visit every key of the range
        // (its count ignores the limit), so it runs off the async workers.
        let resp = if r.range_end.is_empty() {
            apply::range(self.store.as_ref(), &r)
        } else {
            let store = self.store.clone();
            off_runtime(EtcdError::Stopped, move || apply::range(store.as_ref(), &r)).await
        }?;
        self.auth.check_current(who)?;
        Ok(resp)
    }

    /// etcd 3.7's RangeStream: checked as a Range is (before the first chunk, and the auth
    /// revision again after the last), then read chunk by chunk, each off the async workers
    /// and only when the consumer asks for it, so the server holds one chunk at a time. The
    /// first chunk is read before the stream is answered: a read that fails there (a
    /// compacted or future revision) is refused as the call's status, as etcd refuses it.
    pub async fn range_stream(
        &self,
        who: AuthInfo,
        r: RangeRequest,
    ) -> Result<impl Stream<Item = Result<RangeResponse, EtcdError>> + Send + 'static, EtcdError>
    {
        validate::check_range_stream(&r)?;
        if !r.serializable {
            self.consensus.read_barrier().await?;
        }
        self.auth.check_range(&who, &r.key, &r.range_end)?;
        let streamer =
            RangeStreamer::new(self.store.clone(), r, self.consensus.max_request_bytes());
        let (first, next) = read_chunk(Box::new(streamer), &self.auth, &who).await;
        let first = first?;
        let auth = self.auth.clone();
        let step = move |state: StreamState| {
            let (auth, who) = (auth.clone(), who.clone());
            async move {
                match state {
                    StreamState::Reading(streamer) => Some(read_chunk(streamer, &auth, &who).await),
                    // etcd checks the auth revision once the whole stream has been sent.
                    StreamState::Sent => auth
                        .check_current(&who)
                        .err()
                        .map(|e| (Err(e), StreamState::Over)),
                    StreamState::Over => None,
                }
            }
        };
        Ok(futures_util::StreamExt::chain(
            futures_util::stream::once(async { Ok(first) }),
            futures_util::stream::unfold(next, step),
        ))
    }

    /// Writes are checked when they apply (see the Raft state machine's auth applier).
    pub async fn put(&self, who: &AuthInfo, r: PutRequest) -> Result<PutResponse, EtcdError> {
        validate::check_put(&r)?;
        self.quota.admit(alarm::put_cost(&r.key, &r.value)).await?;
        match self.propose(who, Op::Put(r)).await? {
            Outcomes::Put(resp) => Ok(resp),
            _ => Err(EtcdError::Corrupt),
        }
    }

    pub async fn delete_range(
        &self,
        who: &AuthInfo,
        r: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        validate::check_delete(&r)?;
        match self.propose(who, Op::DeleteRange(r)).await? {
            Outcomes::DeleteRange(resp) => Ok(resp),
            _ => Err(EtcdError::Corrupt),
        }
    }

    pub async fn txn(&self, who: &AuthInfo, r: TxnRequest) -> Result<TxnResponse, EtcdError> {
        validate::check_txn(&r, self.max_txn_ops)?;
        if validate::txn_is_read_only(&r) {
            if !validate::txn_is_serializable(&r) {
                self.consensus.read_barrier().await?;
            }
            self.auth.check_txn(who, &r, self.leases.as_ref())?;
            let store = self.store.clone();
            let resp = off_runtime(EtcdError::Stopped, move || loop {
                let view = store.read();
                match apply::txn_read(&view, &r) {
                    Err(EtcdError::Compacted) if view.overtaken() => continue,
                    done => return done,
                }
            })
            .await?;
            self.auth.check_current(who)?;
            return Ok(resp);
        }
        self.quota.admit(alarm::txn_cost(&r)).await?;
        match self.propose(who, Op::Txn(r)).await? {
            Outcomes::Txn(resp) => Ok(resp),
            _ => Err(EtcdError::Corrupt),
        }
    }

    /// Compaction is the root role's while auth is on (etcd 3.6+).
    pub async fn compact(
        &self,
        who: &AuthInfo,
        r: CompactionRequest,
    ) -> Result<CompactionResponse, EtcdError> {
        self.auth.check_admin(who)?;
        let physical = r.physical;
        let rev = r.revision;
        match self.propose(who, Op::Compaction(r)).await? {
            Outcomes::Compaction(_) => {}
            _ => return Err(EtcdError::Corrupt),
        }
        if physical {
            self.store.wait_compacted(rev).await?;
        }
        let header = ResponseHeader {
            revision: self.store.current_revision(),
            ..Default::default()
        };
        Ok(CompactionResponse {
            header: Some(header),
        })
    }

    async fn propose(&self, who: &AuthInfo, op: Op) -> Result<Outcomes, EtcdError> {
        self.consensus.propose(Command::by(op, who)).await
    }
}

/// Reads a RangeStream's next chunk off the async workers; returns it (or the error that ends
/// the stream, a stale auth revision taking precedence as in etcd) and what comes next.
async fn read_chunk(
    mut streamer: Box<RangeStreamer>,
    auth: &AuthStore,
    who: &AuthInfo,
) -> (Result<RangeResponse, EtcdError>, StreamState) {
    let read = off_runtime(EtcdError::Stopped, move || {
        let chunk = streamer.next_chunk();
        Ok((streamer, chunk))
    })
    .await;
    match read {
        Ok((streamer, Ok(chunk))) => {
            let next = if streamer.finished() {
                StreamState::Sent
            } else {
                StreamState::Reading(streamer)
            };
            (Ok(chunk), next)
        }
        Ok((_, Err(e))) | Err(e) => {
            let e = auth.check_current(who).err().unwrap_or(e);
            (Err(e), StreamState::Over)
        }
    }
}

/// Where a RangeStream is.
enum StreamState {
    Reading(Box<RangeStreamer>),
    /// Every chunk has gone out; the auth revision is still to be checked.
    Sent,
    Over,
}

/// A single read straight from the store: revisions resolved under the lock, values read
/// after it is released.
impl ReadView for MvccStore {
    fn rev(&self) -> i64 {
        self.current_revision()
    }

    fn compact_rev(&self) -> i64 {
        self.compact_revision()
    }

    fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, EtcdError> {
        MvccStore::range(self, range, opts)
    }
}
