//! The Raft type configuration and what travels through the log.
//!
//! A log entry carries a batch of client commands (group commit: everything that queued while
//! the previous entry was being made durable). Commands are etcd's own request messages, so the
//! log stores exactly what clients asked for and the state machine replays it deterministically.

use oxcd_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, DowngradeInfo, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::auth::{AuthApplied, AuthChange, AuthInfo};

pub type NodeId = u64;

/// A member as Raft's membership config records it (a protobuf message of the data dir's
/// membership records, `record::NodeRecord`).
#[derive(Clone, Eq, PartialEq, Serialize, Deserialize, prost::Message)]
pub struct Member {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub peer_urls: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub client_urls: Vec<String>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = CommandBatch,
        R = OutcomeBatch,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;

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

/// openraft wants serde for its payloads; ours are protobuf, carried as one byte string.
macro_rules! serde_as_protobuf {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&prost::Message::encode_to_vec(self))
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
                <$t as prost::Message>::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_protobuf!(CommandBatch, OutcomeBatch);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_bincode() {
        let batch = CommandBatch {
            commands: vec![Command::new(Op::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }))],
        };
        let bytes = bincode::serialize(&batch).unwrap();
        let back: CommandBatch = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, batch);
    }
}
