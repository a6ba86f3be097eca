//! Checks etcd makes before a request reaches Raft: malformed requests fail fast, identically,
//! and never produce a partial write.

use std::collections::HashSet;

use oxcd_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::error::EtcdError;

pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

/// etcd 3.7's RangeStream checks: Range's, then no order other than by key ascending (a sort
/// would need the whole range before the first chunk) and no revision filters (a chunk's
/// limit counts keys, not matches). A sort target with no order is allowed, as etcd allows it.
pub fn check_range_stream(r: &RangeRequest) -> Result<(), EtcdError> {
    check_range(r)?;
    let order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    if !(order == SortOrder::None || (order == SortOrder::Ascend && target == SortTarget::Key)) {
        return Err(EtcdError::StreamSortUnsupported);
    }
    if r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
    {
        return Err(EtcdError::StreamFiltersUnsupported);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Op-count limits, per-op checks, then etcd's overlap rule: no key may be written twice on one
/// path through the transaction.
pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    check_txn_shape(r, max_ops)?;
    write_sets(&r.success)?;
    write_sets(&r.failure)?;
    Ok(())
}

fn check_txn_shape(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops.saturating_sub(ops))?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(r)) => check_txn_shape(r, max_ops),
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A deleted interval `[start, end)`, or a single key when `end` is empty. Compared as plain
/// byte strings, as etcd's interval tree does (so a `"\0"` end covers nothing).
struct Deleted {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Deleted {
    fn covers(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            self.start == key
        } else {
            self.start.as_slice() <= key && key < self.end.as_slice()
        }
    }
}

/// Returns the keys put and the ranges deleted by `ops` (and nested txns), or DuplicateKey.
fn write_sets(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Deleted>), EtcdError> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Deleted {
                start: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = write_sets(&t.success)?;
        let (puts_else, dels_else) = write_sets(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.covers(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            // The two branches exclude each other, so a key put in both is fine.
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.iter().any(|d| d.covers(&k)) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.covers(&p.key)) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// True when the transaction only reads, on every path: it can then skip Raft.
pub fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) => true,
            Some(Request::RequestTxn(t)) => txn_is_read_only(t),
            _ => false,
        })
}

/// True when every read in the transaction accepts a local (serializable) answer.
pub fn txn_is_serializable(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(r)) => r.serializable,
            Some(Request::RequestTxn(t)) => txn_is_serializable(t),
            _ => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_and_put_inside_deleted_range_are_rejected() {
        assert_eq!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![del("a", ""), del("a", "")], vec![]), 128),
            Ok(())
        );
    }

    #[test]
    fn nested_branches_may_share_keys_but_not_with_the_parent() {
        let nested = RequestOp {
            request: Some(Request::RequestTxn(txn(vec![put("k")], vec![put("k")]))),
        };
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![nested, put("k")], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
    }

    #[test]
    fn op_count_and_empty_ops() {
        let many = txn((0..129).map(|i| put(&i.to_string())).collect(), vec![]);
        assert_eq!(check_txn(&many, 128), Err(EtcdError::TooManyOps));
        let empty_op = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&empty_op, 128), Err(EtcdError::KeyNotFound));
        assert_eq!(
            check_txn(&txn(vec![put("")], vec![]), 128),
            Err(EtcdError::EmptyKey)
        );
    }
}
