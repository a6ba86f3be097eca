//! The KV service's behaviour, independent of gRPC: validation, the choice between Raft and a
//! local read, and the wait a physical compaction implies.

pub mod apply;
pub mod validate;

use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};

use crate::alarm::Quota;
use crate::error::EtcdError;
use crate::mvcc::{KeyRange, MvccStore, RangeOptions, RangeResult, ReadView};
use crate::raft::{Command, Consensus, Op, Outcomes};
use crate::storage::off_runtime;

pub struct KvService {
    store: Arc<MvccStore>,
    consensus: Arc<Consensus>,
    quota: Arc<Quota>,
    max_txn_ops: usize,
}

impl KvService {
    pub fn new(
        store: Arc<MvccStore>,
        consensus: Arc<Consensus>,
        quota: Arc<Quota>,
        max_txn_ops: usize,
    ) -> KvService {
        KvService {
            store,
            consensus,
            quota,
            max_txn_ops,
        }
    }

    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse, EtcdError> {
        validate::check_range(&r)?;
        if !r.serializable {
            self.consensus.read_barrier().await?;
        }
        // A single key is a few microseconds; anything wider may visit every key of the range
        // (its count ignores the limit), so it runs off the async workers.
        if r.range_end.is_empty() {
            return apply::range(self.store.as_ref(), &r);
        }
        let store = self.store.clone();
        off_runtime(EtcdError::Stopped, move || apply::range(store.as_ref(), &r)).await
    }

    pub async fn put(&self, r: PutRequest) -> Result<PutResponse, EtcdError> {
        validate::check_put(&r)?;
        self.quota.admit(Quota::put_cost(&r.key, &r.value)).await?;
        match self.propose(Op::Put(r)).await? {
            Outcomes::Put(resp) => Ok(resp),
            _ => Err(EtcdError::Corrupt),
        }
    }

    pub async fn delete_range(
        &self,
        r: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        validate::check_delete(&r)?;
        match self.propose(Op::DeleteRange(r)).await? {
            Outcomes::DeleteRange(resp) => Ok(resp),
            _ => Err(EtcdError::Corrupt),
        }
    }

    pub async fn txn(&self, r: TxnRequest) -> Result<TxnResponse, EtcdError> {
        validate::check_txn(&r, self.max_txn_ops)?;
        if validate::txn_is_read_only(&r) {
            if !validate::txn_is_serializable(&r) {
                self.consensus.read_barrier().await?;
            }
            let store = self.store.clone();
            return off_runtime(EtcdError::Stopped, move || loop {
                let view = store.read();
                match apply::txn_read(&view, &r) {
                    Err(EtcdError::Compacted) if view.overtaken() => continue,
                    done => return done,
                }
            })
            .await;
        }
        self.quota.admit(Quota::txn_cost(&r)).await?;
        match self.propose(Op::Txn(r)).await? {
            Outcomes::Txn(resp) => Ok(resp),
            _ => Err(EtcdError::Corrupt),
        }
    }

    pub async fn compact(&self, r: CompactionRequest) -> Result<CompactionResponse, EtcdError> {
        let physical = r.physical;
        let rev = r.revision;
        match self.propose(Op::Compaction(r)).await? {
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

    async fn propose(&self, op: Op) -> Result<Outcomes, EtcdError> {
        self.consensus.propose(Command { op: Some(op) }).await
    }
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
