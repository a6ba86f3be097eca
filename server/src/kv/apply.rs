//! Executes KV requests against an MVCC view exactly as etcd's applier does: the same revision
//! rules, the same response shapes, the same order of checks.

use oxcd_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use oxcd_proto::mvccpb::KeyValue;

use super::validate::txn_is_read_only;
use crate::error::EtcdError;
use crate::metrics::metrics;
use crate::mvcc::{KeyRange, RangeOptions, ReadView, TxnWrite};

/// Answers whether a lease exists; Put and Txn refuse unknown leases.
pub trait LeaseLookup {
    fn exists(&self, id: i64) -> bool;
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

pub fn range(view: &impl ReadView, r: &RangeRequest) -> Result<RangeResponse, EtcdError> {
    range_with(view, r, false)
}

/// A range; with `skip_total`, the count is only of the keys read up to the limit (plus one),
/// as etcd counts a RangeStream chunk, so a chunk never visits the rest of the range.
pub fn range_with(
    view: &impl ReadView,
    r: &RangeRequest,
    skip_total: bool,
) -> Result<RangeResponse, EtcdError> {
    let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Sorting and filtering need every key; otherwise one extra tells us whether there is more.
    let limit = if sort_order != SortOrder::None || filtered || r.limit <= 0 {
        0
    } else {
        r.limit as usize + 1
    };
    let rr = view.range(
        &KeyRange::new(&r.key, &r.range_end),
        RangeOptions {
            limit,
            rev: r.revision,
            count_only: r.count_only,
            // keys_only still answers each key's lease, which only its value holds.
            index_only: false,
            skip_total,
        },
    )?;
    let mut kvs = rr.kvs;
    kvs.retain(|kv| {
        !((r.max_mod_revision != 0 && kv.mod_revision > r.max_mod_revision)
            || (r.min_mod_revision != 0 && kv.mod_revision < r.min_mod_revision)
            || (r.max_create_revision != 0 && kv.create_revision > r.max_create_revision)
            || (r.min_create_revision != 0 && kv.create_revision < r.min_create_revision))
    });

    // Results come back in ascending key order already.
    let order = match (sort_target, sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (t, SortOrder::None) if t != SortTarget::Key => SortOrder::Ascend,
        (_, o) => o,
    };
    if order != SortOrder::None {
        let key = |kv: &KeyValue| -> SortKey {
            match sort_target {
                SortTarget::Key => SortKey::Bytes(kv.key.clone()),
                SortTarget::Version => SortKey::Int(kv.version),
                SortTarget::Create => SortKey::Int(kv.create_revision),
                SortTarget::Mod => SortKey::Int(kv.mod_revision),
                SortTarget::Value => SortKey::Bytes(kv.value.clone()),
            }
        };
        // Stable in both directions: ties stay in ascending key order, as etcd returns them.
        if order == SortOrder::Descend {
            kvs.sort_by_cached_key(|kv| std::cmp::Reverse(key(kv)));
        } else {
            kvs.sort_by_cached_key(key);
        }
    }

    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(RangeResponse {
        header: header(rr.rev),
        kvs,
        more,
        count: rr.count as i64,
    })
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortKey {
    Int(i64),
    Bytes(Vec<u8>),
}

pub fn put(
    txn: &mut TxnWrite<'_, '_>,
    p: PutRequest,
    leases: &dyn LeaseLookup,
) -> Result<PutResponse, EtcdError> {
    if p.lease != 0 && !leases.exists(p.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    put_in_txn(txn, p)
}

fn put_in_txn(txn: &mut TxnWrite<'_, '_>, p: PutRequest) -> Result<PutResponse, EtcdError> {
    let prev = if p.prev_kv || p.ignore_value || p.ignore_lease {
        txn.range(&KeyRange::Single(p.key.clone()), RangeOptions::default())?
            .kvs
            .pop()
    } else {
        None
    };
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(EtcdError::KeyNotFound);
    }
    let value = match (&prev, p.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => p.value,
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => p.lease,
    };
    let revision = txn.put(&p.key, value, lease);
    Ok(PutResponse {
        header: header(revision),
        prev_kv: prev.filter(|_| p.prev_kv),
    })
}

pub fn delete_range(
    txn: &mut TxnWrite<'_, '_>,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, EtcdError> {
    let range = KeyRange::new(&d.key, &d.range_end);
    let prev_kvs = if d.prev_kv {
        txn.range(&range, RangeOptions::default())?.kvs
    } else {
        Vec::new()
    };
    let (deleted, revision) = txn.delete_range(&range);
    Ok(DeleteRangeResponse {
        header: header(revision),
        deleted,
        prev_kvs,
    })
}

/// A read-only transaction: compares and ranges against one consistent view.
pub fn txn_read(view: &impl ReadView, t: &TxnRequest) -> Result<TxnResponse, EtcdError> {
    debug_assert!(txn_is_read_only(t));
    metrics().mvcc.txn.inc();
    let path = compare_path(view, t);
    check_path(view, t, &path, &mut |view, op| {
        check_range_revision(view, op)
    })?;
    let mut resp = empty_response(t, &path);
    exec_read(view, t, &path, &mut resp)?;
    resp.header = header(view.rev());
    Ok(resp)
}

fn exec_read(
    view: &impl ReadView,
    t: &TxnRequest,
    path: &[bool],
    resp: &mut TxnResponse,
) -> Result<usize, EtcdError> {
    let ops = if path[0] { &t.success } else { &t.failure };
    let mut nested = 0;
    for (op, out) in ops.iter().zip(resp.responses.iter_mut()) {
        match (&op.request, &mut out.response) {
            (Some(Request::RequestRange(r)), slot) => {
                *slot = Some(Response::ResponseRange(range(view, r)?));
            }
            (Some(Request::RequestTxn(inner)), Some(Response::ResponseTxn(inner_resp))) => {
                let n = exec_read(view, inner, &path[1 + nested..], inner_resp)?;
                nested += n + 1;
            }
            _ => {}
        }
    }
    Ok(nested)
}

/// A transaction that writes. All checks run against the state before the first write, so a
/// failing check leaves no trace.
pub fn txn_write(
    txn: &mut TxnWrite<'_, '_>,
    t: TxnRequest,
    leases: &dyn LeaseLookup,
) -> Result<TxnResponse, EtcdError> {
    metrics().mvcc.txn.inc();
    let path = compare_path(txn, &t);
    check_path(txn, &t, &path, &mut |view, op| match op {
        Request::RequestPut(p) => {
            if p.ignore_value || p.ignore_lease {
                let found =
                    view.range(&KeyRange::Single(p.key.clone()), RangeOptions::default())?;
                if found.kvs.is_empty() {
                    return Err(EtcdError::KeyNotFound);
                }
            }
            if p.lease != 0 && !leases.exists(p.lease) {
                return Err(EtcdError::LeaseNotFound);
            }
            Ok(())
        }
        _ => Ok(()),
    })?;
    check_path(txn, &t, &path, &mut |view, op| {
        check_range_revision(view, op)
    })?;
    // A put that keeps the old value or lease of a key an earlier op of this txn deleted has
    // nothing to keep. etcd's checks miss this (and it crashes); refuse it before any write.
    let mut deleted: Vec<KeyRange> = Vec::new();
    check_path(txn, &t, &path, &mut |_, op| match op {
        Request::RequestDeleteRange(d) => {
            deleted.push(KeyRange::new(&d.key, &d.range_end));
            Ok(())
        }
        Request::RequestPut(p)
            if (p.ignore_value || p.ignore_lease) && deleted.iter().any(|r| r.contains(&p.key)) =>
        {
            Err(EtcdError::KeyNotFound)
        }
        _ => Ok(()),
    })?;
    let mut resp = empty_response(&t, &path);
    exec_write(txn, t, &path, &mut resp)?;
    let begin = txn.rev();
    resp.header = header(if txn.has_changes() { begin + 1 } else { begin });
    Ok(resp)
}

fn exec_write(
    txn: &mut TxnWrite<'_, '_>,
    t: TxnRequest,
    path: &[bool],
    resp: &mut TxnResponse,
) -> Result<usize, EtcdError> {
    let ops = if path[0] { t.success } else { t.failure };
    let mut nested = 0;
    for (op, out) in ops.into_iter().zip(resp.responses.iter_mut()) {
        match (op.request, &mut out.response) {
            (Some(Request::RequestRange(r)), slot) => {
                *slot = Some(Response::ResponseRange(range(txn, &r)?));
            }
            (Some(Request::RequestPut(p)), slot) => {
                *slot = Some(Response::ResponsePut(put_in_txn(txn, p)?));
            }
            (Some(Request::RequestDeleteRange(d)), slot) => {
                *slot = Some(Response::ResponseDeleteRange(delete_range(txn, &d)?));
            }
            (Some(Request::RequestTxn(inner)), Some(Response::ResponseTxn(inner_resp))) => {
                let n = exec_write(txn, inner, &path[1 + nested..], inner_resp)?;
                nested += n + 1;
            }
            _ => {}
        }
    }
    Ok(nested)
}

/// Evaluates every compare on the taken path up front, nested ones included, against the
/// state before any write (etcd's `compareToPath`).
fn compare_path(view: &impl ReadView, t: &TxnRequest) -> Vec<bool> {
    let ok = t.compare.iter().all(|c| compare(view, c));
    let mut path = vec![ok];
    let ops = if ok { &t.success } else { &t.failure };
    for op in ops {
        if let Some(Request::RequestTxn(inner)) = &op.request {
            path.extend(compare_path(view, inner));
        }
    }
    path
}

fn compare(view: &impl ReadView, c: &Compare) -> bool {
    let target = CompareTarget::try_from(c.target).ok();
    // Revisions and versions are in the index; kube-apiserver's every write compares a
    // mod_revision, and reading the value for it was a store read per write.
    let opts = RangeOptions {
        index_only: !matches!(target, Some(CompareTarget::Value | CompareTarget::Lease)),
        ..RangeOptions::default()
    };
    let Ok(rr) = view.range(&KeyRange::new(&c.key, &c.range_end), opts) else {
        return false;
    };
    if rr.kvs.is_empty() {
        // A value compare on a missing key always fails: gRPC cannot tell nil from empty.
        return target != Some(CompareTarget::Value) && compare_kv(c, target, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, target, kv))
}

fn compare_kv(c: &Compare, target: Option<CompareTarget>, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let int = |v: Option<i64>| v.unwrap_or(0);
    let ord: Ordering = match target {
        Some(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Some(CompareTarget::Create) => kv.create_revision.cmp(&int(match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => Some(v),
            _ => None,
        })),
        Some(CompareTarget::Mod) => kv.mod_revision.cmp(&int(match c.target_union {
            Some(TargetUnion::ModRevision(v)) => Some(v),
            _ => None,
        })),
        Some(CompareTarget::Version) => kv.version.cmp(&int(match c.target_union {
            Some(TargetUnion::Version(v)) => Some(v),
            _ => None,
        })),
        Some(CompareTarget::Lease) => kv.lease.cmp(&int(match c.target_union {
            Some(TargetUnion::Lease(v)) => Some(v),
            _ => None,
        })),
        None => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

fn check_range_revision(view: &impl ReadView, op: &Request) -> Result<(), EtcdError> {
    if let Request::RequestRange(r) = op {
        if r.revision != 0 {
            if r.revision > view.rev() {
                return Err(EtcdError::FutureRevision);
            }
            if r.revision < view.compact_rev() {
                return Err(EtcdError::Compacted);
            }
        }
    }
    Ok(())
}

/// Runs `check` on every non-txn op of the taken path, in order.
fn check_path<V: ReadView>(
    view: &V,
    t: &TxnRequest,
    path: &[bool],
    check: &mut dyn FnMut(&V, &Request) -> Result<(), EtcdError>,
) -> Result<usize, EtcdError> {
    let ops = if path[0] { &t.success } else { &t.failure };
    let mut nested = 0;
    for op in ops {
        match &op.request {
            Some(Request::RequestTxn(inner)) => {
                let n = check_path(view, inner, &path[1 + nested..], check)?;
                nested += n + 1;
            }
            Some(req) => check(view, req)?,
            None => {}
        }
    }
    Ok(nested)
}

/// The response skeleton etcd builds before executing: one slot per op on the taken path;
/// nested transactions get an empty header.
fn empty_response(t: &TxnRequest, path: &[bool]) -> TxnResponse {
    fn build(t: &TxnRequest, path: &[bool]) -> (TxnResponse, usize) {
        let ops: &[RequestOp] = if path[0] { &t.success } else { &t.failure };
        let mut nested = 0;
        let responses = ops
            .iter()
            .map(|op| ResponseOp {
                response: match &op.request {
                    Some(Request::RequestRange(_)) => {
                        Some(Response::ResponseRange(Default::default()))
                    }
                    Some(Request::RequestPut(_)) => Some(Response::ResponsePut(Default::default())),
                    Some(Request::RequestDeleteRange(_)) => {
                        Some(Response::ResponseDeleteRange(Default::default()))
                    }
                    Some(Request::RequestTxn(inner)) => {
                        let (resp, n) = build(inner, &path[1 + nested..]);
                        nested += n + 1;
                        Some(Response::ResponseTxn(resp))
                    }
                    None => None,
                },
            })
            .collect();
        let resp = TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: path[0],
            responses,
        };
        (resp, nested)
    }
    build(t, path).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::MvccStore;
    use crate::storage::Engine;

    struct NoLeases;
    impl LeaseLookup for NoLeases {
        fn exists(&self, _id: i64) -> bool {
            false
        }
    }

    fn op(request: Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    #[test]
    fn a_txn_that_fails_after_a_delete_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(Engine::open(dir.path()).unwrap()).unwrap();
        let mut w = store.writer(false);
        w.txn().put(b"k", b"v".to_vec(), 0);
        let t = TxnRequest {
            compare: vec![],
            success: vec![
                op(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: vec![0],
                    prev_kv: false,
                })),
                op(Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    ignore_value: true,
                    ..Default::default()
                })),
            ],
            failure: vec![],
        };
        let result = txn_write(&mut w.txn(), t, &NoLeases);
        assert_eq!(result.unwrap_err(), EtcdError::KeyNotFound);
        w.commit().unwrap();
        assert_eq!(
            store.current_revision(),
            2,
            "the failed txn must not take a revision"
        );
        let rr = store
            .range(&KeyRange::new(b"k", &[]), RangeOptions::default())
            .unwrap();
        assert_eq!(rr.kvs.len(), 1, "the delete must not have happened");
    }

    #[test]
    fn descending_sort_keeps_ties_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(Engine::open(dir.path()).unwrap()).unwrap();
        let mut w = store.writer(false);
        for k in [b"a", b"b", b"c"] {
            w.txn().put(k, b"v".to_vec(), 0);
        }
        w.txn().put(b"b", b"v".to_vec(), 0);
        w.commit().unwrap();
        let r = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Version as i32,
            ..Default::default()
        };
        let keys: Vec<_> = range(store.as_ref(), &r)
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, [b"b".to_vec(), b"a".to_vec(), b"c".to_vec()]);
    }
}
