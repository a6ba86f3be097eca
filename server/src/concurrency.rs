//! etcd's Lock and Election services (v3lock, v3election). etcd builds them inside the server
//! on its own KV and Watch API (clientv3/concurrency's Mutex and Election); so does this, on the
//! KV service and the watch hub, so they keep exactly etcd's keys and ordering:
//!
//! - a contender's key is `<name>/<lease in hex>`, attached to its lease, so a lapsed lease
//!   gives the lock (or leadership) up;
//! - contenders are ordered by their key's create revision: the oldest key under `<name>/`
//!   owns it, and each contender waits until every older key has been deleted.
//!
//! A Lock or Campaign whose caller goes away while waiting deletes its key, as etcd's does.
//! Every operation runs as the caller (etcd's services use an in-process client that forwards
//! the caller's token), so it needs read and write permission on `<name>/`.

use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, TxnRequest,
};
use oxcd_proto::mvccpb::KeyValue;
use oxcd_proto::v3electionpb::LeaderKey;

use crate::auth::AuthInfo;
use crate::error::EtcdError;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::mvcc::KeyRange;
use crate::watch::{WatchHub, WatchOptions};

/// The TTL of the lease etcd's session grants when a Lock or Campaign names none.
const SESSION_TTL: i64 = 60;

pub struct Contention {
    kv: Arc<KvService>,
    watches: Arc<WatchHub>,
    leases: Arc<LeaseService>,
}

/// A contender's key once it is in the queue.
struct Entry {
    key: Vec<u8>,
    create_revision: i64,
    /// The value already stored when the key existed before this call.
    existing_value: Option<Vec<u8>>,
    /// The answer to the put-or-get transaction.
    header: Option<ResponseHeader>,
    /// The owner as that transaction saw it.
    owner: Option<KeyValue>,
}

/// Deletes a waiting contender's key unless disarmed: the caller went away (its request was
/// dropped) or the wait failed, so it must not hold the lock later.
struct Withdrawal {
    kv: Arc<KvService>,
    who: AuthInfo,
    key: Option<Vec<u8>>,
}

impl Withdrawal {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let (kv, who) = (self.kv.clone(), std::mem::take(&mut self.who));
            tokio::spawn(async move {
                let _ = kv.delete_range(&who, delete(key)).await;
            });
        }
    }
}

impl Contention {
    pub fn new(
        kv: Arc<KvService>,
        watches: Arc<WatchHub>,
        leases: Arc<LeaseService>,
    ) -> Contention {
        Contention {
            kv,
            watches,
            leases,
        }
    }

    /// Lock: waits until this lease's key under `name` is the oldest; returns it.
    pub async fn lock(
        &self,
        who: &AuthInfo,
        name: &[u8],
        lease: i64,
    ) -> Result<(Vec<u8>, Option<ResponseHeader>), EtcdError> {
        let prefix = with_slash(name);
        let entry = self.enter(who, &prefix, lease, Vec::new()).await?;
        let owns = entry
            .owner
            .as_ref()
            .is_none_or(|o| o.create_revision == entry.create_revision);
        if owns {
            return Ok((entry.key, entry.header));
        }
        let withdrawal = self.withdrawal(who, &entry.key);
        let header = self.wait_turn(who, &prefix, entry.create_revision).await?;
        // etcd 3.5: the key may have gone with its lease while waiting.
        if self.get(who, &entry.key).await?.is_none() {
            return Err(EtcdError::SessionExpired);
        }
        withdrawal.disarm();
        Ok((entry.key, Some(header)))
    }

    pub async fn unlock(
        &self,
        who: &AuthInfo,
        key: Vec<u8>,
    ) -> Result<Option<ResponseHeader>, EtcdError> {
        Ok(self.kv.delete_range(who, delete(key)).await?.header)
    }

    /// Campaign: joins the election with `value` (proclaiming it if this lease was already a
    /// candidate with another value) and waits until it leads.
    pub async fn campaign(
        &self,
        who: &AuthInfo,
        name: &[u8],
        lease: i64,
        value: Vec<u8>,
    ) -> Result<(LeaderKey, Option<ResponseHeader>), EtcdError> {
        let prefix = with_slash(name);
        let entry = self.enter(who, &prefix, lease, value.clone()).await?;
        let leader = LeaderKey {
            name: name.to_vec(),
            key: entry.key.clone(),
            rev: entry.create_revision,
            lease,
        };
        let withdrawal = self.withdrawal(who, &entry.key);
        if entry.existing_value.is_some_and(|v| v != value) {
            self.proclaim(who, &leader, value).await?;
        }
        self.wait_turn(who, &prefix, entry.create_revision).await?;
        withdrawal.disarm();
        Ok((leader, entry.header))
    }

    /// Proclaim: a new value from the leader, refused unless `leader` still leads.
    pub async fn proclaim(
        &self,
        who: &AuthInfo,
        leader: &LeaderKey,
        value: Vec<u8>,
    ) -> Result<Option<ResponseHeader>, EtcdError> {
        let put = Request::RequestPut(PutRequest {
            key: leader.key.clone(),
            value,
            lease: leader.lease,
            ..Default::default()
        });
        let resp = self.if_still_leads(who, leader, put).await?;
        if !resp.succeeded {
            return Err(EtcdError::ElectionNotLeader);
        }
        Ok(resp.header)
    }

    /// Resign: gives leadership up; a leader that no longer leads has nothing to give up.
    pub async fn resign(
        &self,
        who: &AuthInfo,
        leader: &LeaderKey,
    ) -> Result<Option<ResponseHeader>, EtcdError> {
        let delete = Request::RequestDeleteRange(delete(leader.key.clone()));
        Ok(self.if_still_leads(who, leader, delete).await?.header)
    }

    /// Leader: the oldest candidate's key and value.
    pub async fn leader(
        &self,
        who: &AuthInfo,
        name: &[u8],
    ) -> Result<(KeyValue, Option<ResponseHeader>), EtcdError> {
        let resp = self
            .kv
            .range(who, oldest_request(&with_slash(name)))
            .await?;
        let owner = resp.kvs.into_iter().next();
        Ok((owner.ok_or(EtcdError::ElectionNoLeader)?, resp.header))
    }

    /// Observe: the leader once it differs from `last` (another key, or a new value of the
    /// same key); without a leader, waits for one.
    pub async fn next_leader(
        &self,
        who: &AuthInfo,
        name: &[u8],
        last: Option<&KeyValue>,
    ) -> Result<(KeyValue, Option<ResponseHeader>), EtcdError> {
        let prefix = with_slash(name);
        let end = prefix_end(&prefix);
        loop {
            let resp = self.kv.range(who, oldest_request(&prefix)).await?;
            let revision = resp.header.as_ref().map_or(0, |h| h.revision);
            match resp.kvs.into_iter().next() {
                Some(leader)
                    if last.is_none_or(|l| {
                        l.key != leader.key || l.mod_revision != leader.mod_revision
                    }) =>
                {
                    return Ok((leader, resp.header));
                }
                _ => {
                    self.next_event(KeyRange::new(&prefix, &end), revision + 1, false)
                        .await?
                }
            }
        }
    }

    /// Puts this lease's key unless it exists (then reads it), and reads the current owner,
    /// in one transaction. Without a lease, etcd's session grants one.
    async fn enter(
        &self,
        who: &AuthInfo,
        prefix: &[u8],
        lease: i64,
        value: Vec<u8>,
    ) -> Result<Entry, EtcdError> {
        let lease = match lease {
            0 => {
                let grant = LeaseGrantRequest {
                    ttl: SESSION_TTL,
                    id: 0,
                };
                self.leases.grant(who, grant).await?.id
            }
            lease => lease,
        };
        let key = [prefix, format!("{lease:x}").as_bytes()].concat();
        let owner = RequestOp {
            request: Some(Request::RequestRange(oldest_request(prefix))),
        };
        let txn = TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value,
                        lease,
                        ..Default::default()
                    })),
                },
                owner.clone(),
            ],
            failure: vec![
                RequestOp {
                    request: Some(Request::RequestRange(RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    })),
                },
                owner,
            ],
        };
        let resp = self.kv.txn(who, txn).await?;
        let range = |i: usize| match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
            Some(Response::ResponseRange(r)) => r.kvs.first().cloned(),
            _ => None,
        };
        let owner = range(1);
        let (create_revision, existing_value) = if resp.succeeded {
            (resp.header.as_ref().map_or(0, |h| h.revision), None)
        } else {
            let mine = range(0).ok_or(EtcdError::KeyNotFound)?;
            (mine.create_revision, Some(mine.value))
        };
        Ok(Entry {
            key,
            create_revision,
            existing_value,
            header: resp.header,
            owner,
        })
    }

    /// etcd's `waitDeletes`: until no key under `prefix` is older than `create_revision`.
    async fn wait_turn(
        &self,
        who: &AuthInfo,
        prefix: &[u8],
        create_revision: i64,
    ) -> Result<ResponseHeader, EtcdError> {
        loop {
            let (older, header) = self.newest_older_than(who, prefix, create_revision).await?;
            let Some(older) = older else {
                return Ok(header.unwrap_or_default());
            };
            let revision = header.as_ref().map_or(0, |h| h.revision);
            self.next_event(KeyRange::Single(older.key), revision + 1, true)
                .await?;
        }
    }

    /// The youngest key under `prefix` created before `create_revision`.
    async fn newest_older_than(
        &self,
        who: &AuthInfo,
        prefix: &[u8],
        create_revision: i64,
    ) -> Result<(Option<KeyValue>, Option<ResponseHeader>), EtcdError> {
        let request = RangeRequest {
            sort_order: SortOrder::Descend as i32,
            max_create_revision: create_revision - 1,
            ..oldest_request(prefix)
        };
        let resp = self.kv.range(who, request).await?;
        Ok((resp.kvs.into_iter().next(), resp.header))
    }

    async fn get(&self, who: &AuthInfo, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let resp = self
            .kv
            .range(
                who,
                RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Waits for an event in `range` from `start_revision` on (deletions only, if asked). The
    /// caller has just read the range, so its read permission is checked.
    async fn next_event(
        &self,
        range: KeyRange,
        start_revision: i64,
        deletions_only: bool,
    ) -> Result<(), EtcdError> {
        let (stream, mut responses) = self.watches.open_stream();
        stream
            .create(WatchOptions {
                range,
                start_revision,
                prev_kv: false,
                no_put: deletions_only,
                no_delete: false,
                progress_notify: false,
                fragment: false,
                watch_id: 0,
            })
            .await?;
        while let Some(resp) = responses.recv().await {
            if resp.canceled {
                return Err(if resp.compact_revision > 0 {
                    EtcdError::Compacted
                } else {
                    EtcdError::Stopped
                });
            }
            if !resp.events.is_empty() {
                return Ok(());
            }
        }
        Err(EtcdError::Stopped)
    }

    /// `op` in a transaction that holds only while `leader`'s key is the one that campaigned.
    async fn if_still_leads(
        &self,
        who: &AuthInfo,
        leader: &LeaderKey,
        op: Request,
    ) -> Result<oxcd_proto::etcdserverpb::TxnResponse, EtcdError> {
        self.kv
            .txn(
                who,
                TxnRequest {
                    compare: vec![create_revision_is(&leader.key, leader.rev)],
                    success: vec![RequestOp { request: Some(op) }],
                    failure: Vec::new(),
                },
            )
            .await
    }

    fn withdrawal(&self, who: &AuthInfo, key: &[u8]) -> Withdrawal {
        Withdrawal {
            kv: self.kv.clone(),
            who: who.clone(),
            key: Some(key.to_vec()),
        }
    }
}

/// etcd's concurrency package keys contenders under `<name>/`.
fn with_slash(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

/// The end of the range holding every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

/// The oldest key under `prefix`.
fn oldest_request(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

fn create_revision_is(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

fn delete(key: Vec<u8>) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_range_ends_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"lock/"), b"lock0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
