//! The Raft type configuration: the log's entries carry the applier's command batches.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::apply::{CommandBatch, OutcomeBatch};

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
    use oxcd_proto::etcdserverpb::PutRequest;

    use super::*;
    use crate::apply::{Command, Op};

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
