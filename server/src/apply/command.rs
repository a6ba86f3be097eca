//! What the replicated log carries and what applying it answers: a batch of client commands
//! (group commit packs everything that queued while the previous entry was being made durable)
//! and one outcome per command. Commands are etcd's own request messages, so the log stores
//! exactly what clients asked for and the applier replays it deterministically.

use oxcd_proto::etcdserverpb::{
    request_op, AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, DowngradeInfo, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};

use crate::auth::{AuthApplied, AuthChange, AuthInfo};

/// One client write.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    #[prost(oneof = "Op", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10")]
    pub op: Option<Op>,
    /// Who asked, as the proposing member identified them: apply checks their permissions
    /// (etcd's RequestHeader username and auth revision). Absent for the server's own writes.
    #[prost(message, optional, tag = "100")]
    pub requester: Option<AuthInfo>,
}

impl Command {
    /// A write of the server's own (lease expiry, alarms, compaction it schedules).
    pub fn new(op: Op) -> Command {
        Command {
            op: Some(op),
            requester: None,
        }
    }

    /// A client's write, checked against `who`'s permissions when applied.
    pub fn by(op: Op, who: &AuthInfo) -> Command {
        Command {
            op: Some(op),
            requester: (!who.user.is_empty()).then(|| who.clone()),
        }
    }
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "1")]
    Put(PutRequest),
    #[prost(message, tag = "2")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "3")]
    Txn(TxnRequest),
    #[prost(message, tag = "4")]
    Compaction(CompactionRequest),
    /// Always carries the id (the proposer picks one when the client did not).
    #[prost(message, tag = "5")]
    LeaseGrant(LeaseGrantRequest),
    #[prost(message, tag = "6")]
    LeaseRevoke(LeaseRevokeRequest),
    #[prost(message, tag = "7")]
    Alarm(AlarmRequest),
    /// The leader's revoke of a lease whose TTL ran out; answered like a revoke.
    #[prost(message, tag = "8")]
    LeaseExpire(LeaseExpiry),
    #[prost(message, tag = "9")]
    Auth(AuthChange),
    /// etcd's `DowngradeInfoSetRequest`: enable a downgrade to a target, or cancel it.
    #[prost(message, tag = "10")]
    Downgrade(DowngradeInfo),
}

impl Op {
    /// Whether applying it is a little work whatever the store holds: it touches single keys
    /// only (no range to delete, read or compare, no lease's keys, no compaction).
    pub fn is_short(&self) -> bool {
        match self {
            Op::Put(_) | Op::LeaseGrant(_) | Op::Alarm(_) | Op::Downgrade(_) => true,
            Op::DeleteRange(delete) => delete.range_end.is_empty(),
            Op::Txn(txn) => is_short_txn(txn),
            Op::Compaction(_) | Op::LeaseRevoke(_) | Op::LeaseExpire(_) | Op::Auth(_) => false,
        }
    }
}

fn is_short_txn(txn: &TxnRequest) -> bool {
    let short_op = |op: &oxcd_proto::etcdserverpb::RequestOp| match &op.request {
        Some(request_op::Request::RequestPut(_)) | None => true,
        Some(request_op::Request::RequestRange(range)) => range.range_end.is_empty(),
        Some(request_op::Request::RequestDeleteRange(delete)) => delete.range_end.is_empty(),
        Some(request_op::Request::RequestTxn(txn)) => is_short_txn(txn),
    };
    txn.compare.iter().all(|c| c.range_end.is_empty())
        && txn.success.iter().all(short_op)
        && txn.failure.iter().all(short_op)
}

/// An expiry is decided by the leader of one term and holds only in an entry of that term:
/// a leader cut off from its quorum sees every lease expire (their keep-alives now go to the
/// new leader), and an expiry it forwards once the partition heals would revoke leases the new
/// leader kept alive. Entries of a term are appended only by that term's leader, so the check
/// at apply time is exact.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseExpiry {
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The term in which the leader found the lease expired.
    #[prost(uint64, tag = "2")]
    pub term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CommandBatch {
    #[prost(message, repeated, tag = "1")]
    pub commands: Vec<Command>,
}

/// The result of applying one command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Outcome {
    #[prost(oneof = "Outcomes", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10")]
    pub result: Option<Outcomes>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Outcomes {
    #[prost(message, tag = "1")]
    Put(PutResponse),
    #[prost(message, tag = "2")]
    DeleteRange(DeleteRangeResponse),
    #[prost(message, tag = "3")]
    Txn(TxnResponse),
    #[prost(message, tag = "4")]
    Compaction(CompactionResponse),
    /// An [`crate::error::EtcdError`] in wire form.
    #[prost(uint32, tag = "5")]
    Error(u32),
    #[prost(message, tag = "6")]
    LeaseGrant(LeaseGrantResponse),
    #[prost(message, tag = "7")]
    LeaseRevoke(LeaseRevokeResponse),
    #[prost(message, tag = "8")]
    Alarm(AlarmResponse),
    #[prost(message, tag = "9")]
    Auth(AuthApplied),
    /// The downgrade state after the change.
    #[prost(message, tag = "10")]
    Downgrade(DowngradeInfo),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OutcomeBatch {
    #[prost(message, repeated, tag = "1")]
    pub outcomes: Vec<Outcome>,
}

#[cfg(test)]
mod tests {
    use oxcd_proto::etcdserverpb::{Compare, RangeRequest, RequestOp};

    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn range(key: &str, range_end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn only_single_key_work_is_short() {
        let delete = |range_end: &str| {
            Op::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: range_end.into(),
                ..Default::default()
            })
        };
        assert!(Op::Put(PutRequest::default()).is_short());
        assert!(delete("").is_short());
        assert!(!delete("b").is_short());
        assert!(!Op::LeaseRevoke(LeaseRevokeRequest { id: 1 }).is_short());
        assert!(!Op::Compaction(CompactionRequest::default()).is_short());

        // kube-apiserver's update: compare one key's revision, put it, else read it back.
        let compare = |range_end: &str| Compare {
            key: b"a".to_vec(),
            range_end: range_end.into(),
            ..Default::default()
        };
        let txn = |compare, success: Vec<RequestOp>, failure: Vec<RequestOp>| {
            Op::Txn(TxnRequest {
                compare: vec![compare],
                success,
                failure,
            })
        };
        assert!(txn(compare(""), vec![put("a")], vec![range("a", "")]).is_short());
        assert!(!txn(compare("b"), vec![put("a")], vec![]).is_short());
        assert!(!txn(compare(""), vec![put("a")], vec![range("a", "\0")]).is_short());
        let nested = |inner: Op| {
            let Op::Txn(inner) = inner else {
                unreachable!()
            };
            txn(
                compare(""),
                vec![RequestOp {
                    request: Some(request_op::Request::RequestTxn(inner)),
                }],
                vec![],
            )
        };
        assert!(nested(txn(compare(""), vec![put("a")], vec![])).is_short());
        assert!(!nested(txn(compare(""), vec![range("a", "z")], vec![])).is_short());
    }
}
