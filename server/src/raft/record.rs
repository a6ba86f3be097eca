//! oxcd's own encoding of what Raft keeps on disk: log entries, the vote, log positions,
//! membership and snapshot metadata, and the membership a restored data dir starts with (data
//! dir format 3, `docs/ARCHITECTURE.md`).
//!
//! These are protobuf messages defined here, field numbers fixed, so the data dir does not
//! depend on how the Raft library lays its types out: an upgrade of openraft changes only the
//! conversions below. Formats 1 and 2 (bincode of openraft 0.9's serde layout; of oxcd's
//! `Member`s for the restored membership) are read by [`super::legacy`] and converted when a
//! data dir is opened.

use std::collections::{BTreeMap, BTreeSet};

use openraft::EntryPayload;

use super::types::{
    log_id, CommandBatch, Entry, LogId, Member, Membership, NodeId, SnapshotMeta, StoredMembership,
    Vote,
};

/// Where an entry sits in the log: its index and the term and member of the leader that
/// proposed it.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct LogIdRecord {
    #[prost(uint64, tag = "1")]
    pub term: u64,
    #[prost(uint64, tag = "2")]
    pub leader: u64,
    #[prost(uint64, tag = "3")]
    pub index: u64,
}

/// A member's vote: the candidate (or leader) it is for, in a term, and whether a quorum
/// granted it.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct VoteRecord {
    #[prost(uint64, tag = "1")]
    pub term: u64,
    #[prost(uint64, tag = "2")]
    pub candidate: u64,
    #[prost(bool, tag = "3")]
    pub committed: bool,
}

/// A log position that may be absent (nothing committed or purged yet).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct PositionRecord {
    #[prost(message, optional, tag = "1")]
    pub log_id: Option<LogIdRecord>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct VoterSetRecord {
    #[prost(uint64, repeated, tag = "1")]
    pub ids: Vec<u64>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct NodeRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, optional, tag = "2")]
    pub member: Option<Member>,
}

/// A membership config: one voter set, or two while a joint change is in progress; a node
/// that is in no voter set is a learner.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MembershipRecord {
    #[prost(message, repeated, tag = "1")]
    pub voters: Vec<VoterSetRecord>,
    #[prost(message, repeated, tag = "2")]
    pub nodes: Vec<NodeRecord>,
}

/// Members and nothing else: the voters a restored data dir's new cluster starts with.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberListRecord {
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<NodeRecord>,
}

/// A membership config and the entry that holds it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoredMembershipRecord {
    #[prost(message, optional, tag = "1")]
    pub log_id: Option<LogIdRecord>,
    #[prost(message, optional, tag = "2")]
    pub membership: Option<MembershipRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryRecord {
    #[prost(message, optional, tag = "1")]
    pub log_id: Option<LogIdRecord>,
    #[prost(oneof = "PayloadRecord", tags = "2, 3, 4")]
    pub payload: Option<PayloadRecord>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PayloadRecord {
    /// The empty entry a new leader appends.
    #[prost(message, tag = "2")]
    Blank(()),
    /// Client commands.
    #[prost(message, tag = "3")]
    Commands(CommandBatch),
    /// A membership change.
    #[prost(message, tag = "4")]
    Membership(MembershipRecord),
}

/// What a Raft snapshot holds: the state up to `last_log_id`, with the membership then.
/// (Tag 3 is reserved: format 1 had a snapshot id, which nothing reads any more.)
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SnapshotMetaRecord {
    #[prost(message, optional, tag = "1")]
    pub last_log_id: Option<LogIdRecord>,
    #[prost(message, optional, tag = "2")]
    pub last_membership: Option<StoredMembershipRecord>,
}

/// A stored record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable {what} record: {reason}")]
pub struct RecordError {
    what: &'static str,
    reason: String,
}

impl RecordError {
    pub(super) fn new(what: &'static str, reason: impl ToString) -> RecordError {
        RecordError {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Decodes a record of any kind, named `what` in the error.
pub(super) fn decode<R: prost::Message + Default>(
    what: &'static str,
    bytes: &[u8],
) -> Result<R, RecordError> {
    R::decode(bytes).map_err(|e| RecordError::new(what, e))
}

pub(super) fn required<T>(what: &'static str, field: Option<T>) -> Result<T, RecordError> {
    field.ok_or_else(|| RecordError::new(what, "a required field is missing"))
}

impl From<&LogId> for LogIdRecord {
    fn from(id: &LogId) -> LogIdRecord {
        LogIdRecord {
            term: id.leader_id.term,
            leader: id.leader_id.node_id,
            index: id.index,
        }
    }
}

impl From<LogIdRecord> for LogId {
    fn from(r: LogIdRecord) -> LogId {
        log_id(r.term, r.leader, r.index)
    }
}

impl From<&Vote> for VoteRecord {
    fn from(vote: &Vote) -> VoteRecord {
        VoteRecord {
            term: vote.leader_id.term,
            candidate: vote.leader_id.node_id,
            committed: vote.committed,
        }
    }
}

impl From<VoteRecord> for Vote {
    fn from(r: VoteRecord) -> Vote {
        if r.committed {
            Vote::new_committed(r.term, r.candidate)
        } else {
            Vote::new(r.term, r.candidate)
        }
    }
}

impl From<&Membership> for MembershipRecord {
    fn from(m: &Membership) -> MembershipRecord {
        MembershipRecord {
            voters: m
                .get_joint_config()
                .iter()
                .map(|set| VoterSetRecord {
                    ids: set.iter().copied().collect(),
                })
                .collect(),
            nodes: node_records(m.nodes()),
        }
    }
}

fn node_records<'a>(nodes: impl Iterator<Item = (&'a NodeId, &'a Member)>) -> Vec<NodeRecord> {
    nodes
        .map(|(id, member)| NodeRecord {
            id: *id,
            member: Some(member.clone()),
        })
        .collect()
}

fn nodes_of(records: Vec<NodeRecord>) -> BTreeMap<NodeId, Member> {
    records
        .into_iter()
        .map(|n| (n.id, n.member.unwrap_or_default()))
        .collect()
}

impl TryFrom<MembershipRecord> for Membership {
    type Error = RecordError;

    fn try_from(r: MembershipRecord) -> Result<Membership, RecordError> {
        let configs: Vec<BTreeSet<NodeId>> = r
            .voters
            .into_iter()
            .map(|set| set.ids.into_iter().collect())
            .collect();
        Membership::new(configs, nodes_of(r.nodes)).map_err(|e| RecordError::new("membership", e))
    }
}

impl From<&StoredMembership> for StoredMembershipRecord {
    fn from(m: &StoredMembership) -> StoredMembershipRecord {
        StoredMembershipRecord {
            log_id: m.log_id().as_ref().map(LogIdRecord::from),
            membership: Some(m.membership().into()),
        }
    }
}

impl TryFrom<StoredMembershipRecord> for StoredMembership {
    type Error = RecordError;

    fn try_from(r: StoredMembershipRecord) -> Result<StoredMembership, RecordError> {
        Ok(StoredMembership::new(
            r.log_id.map(LogId::from),
            r.membership.unwrap_or_default().try_into()?,
        ))
    }
}

impl From<Entry> for EntryRecord {
    fn from(entry: Entry) -> EntryRecord {
        let payload = match entry.payload {
            EntryPayload::Blank => PayloadRecord::Blank(()),
            EntryPayload::Normal(batch) => PayloadRecord::Commands(batch),
            EntryPayload::Membership(m) => PayloadRecord::Membership((&m).into()),
        };
        EntryRecord {
            log_id: Some((&entry.log_id).into()),
            payload: Some(payload),
        }
    }
}

impl EntryRecord {
    pub fn into_entry(self) -> Result<Entry, RecordError> {
        let r = self;
        let payload = match required("log entry", r.payload)? {
            PayloadRecord::Blank(()) => EntryPayload::Blank,
            PayloadRecord::Commands(batch) => EntryPayload::Normal(batch),
            PayloadRecord::Membership(m) => EntryPayload::Membership(m.try_into()?),
        };
        Ok(Entry {
            log_id: required("log entry", r.log_id)?.into(),
            payload,
        })
    }
}

impl From<&SnapshotMeta> for SnapshotMetaRecord {
    fn from(meta: &SnapshotMeta) -> SnapshotMetaRecord {
        SnapshotMetaRecord {
            last_log_id: meta.last_log_id.as_ref().map(LogIdRecord::from),
            last_membership: Some((&meta.last_membership).into()),
        }
    }
}

impl TryFrom<SnapshotMetaRecord> for SnapshotMeta {
    type Error = RecordError;

    fn try_from(r: SnapshotMetaRecord) -> Result<SnapshotMeta, RecordError> {
        Ok(SnapshotMeta {
            last_log_id: r.last_log_id.map(LogId::from),
            last_membership: r.last_membership.unwrap_or_default().try_into()?,
        })
    }
}

/// An entry's [`EntryRecord`] bytes, encoded from a borrowed entry so the log store can keep
/// the entry itself for the state machine without cloning its commands.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    use prost::encoding::message;
    let log_id = LogIdRecord::from(&entry.log_id);
    // Field by field in tag order, as prost's derived encoding writes an `EntryRecord`.
    let mut bytes = Vec::with_capacity(message::encoded_len(1, &log_id) + payload_len(entry));
    message::encode(1, &log_id, &mut bytes);
    match &entry.payload {
        EntryPayload::Blank => message::encode(2, &(), &mut bytes),
        EntryPayload::Normal(batch) => message::encode(3, batch, &mut bytes),
        EntryPayload::Membership(m) => message::encode(4, &MembershipRecord::from(m), &mut bytes),
    }
    bytes
}

fn payload_len(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(batch) => prost::encoding::message::encoded_len(3, batch),
        EntryPayload::Blank | EntryPayload::Membership(_) => 0,
    }
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, RecordError> {
    decode::<EntryRecord>("log entry", bytes)?.into_entry()
}

/// The log id of a stored entry, without decoding its commands.
pub fn entry_log_id(bytes: &[u8]) -> Result<LogId, RecordError> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct EntryHead {
        #[prost(message, optional, tag = "1")]
        log_id: Option<LogIdRecord>,
    }
    Ok(required("log entry", decode::<EntryHead>("log entry", bytes)?.log_id)?.into())
}

pub fn encode_vote(vote: &Vote) -> Vec<u8> {
    prost::Message::encode_to_vec(&VoteRecord::from(vote))
}

pub fn decode_vote(bytes: &[u8]) -> Result<Vote, RecordError> {
    Ok(decode::<VoteRecord>("vote", bytes)?.into())
}

pub fn encode_position(position: Option<&LogId>) -> Vec<u8> {
    prost::Message::encode_to_vec(&PositionRecord {
        log_id: position.map(LogIdRecord::from),
    })
}

pub fn decode_position(bytes: &[u8]) -> Result<Option<LogId>, RecordError> {
    Ok(decode::<PositionRecord>("log position", bytes)?
        .log_id
        .map(LogId::from))
}

/// Where a data dir made by `snapshot restore` keeps the membership its new cluster starts with
/// (in `raft_state`, until its first start has put the restored store into a Raft snapshot).
pub const RESTORED_MEMBERSHIP_KEY: &[u8] = b"restored_membership";

pub fn encode_member_list(members: &BTreeMap<NodeId, Member>) -> Vec<u8> {
    prost::Message::encode_to_vec(&MemberListRecord {
        members: node_records(members.iter()),
    })
}

pub fn decode_member_list(bytes: &[u8]) -> Result<BTreeMap<NodeId, Member>, RecordError> {
    Ok(nodes_of(
        decode::<MemberListRecord>("member list", bytes)?.members,
    ))
}

pub fn encode_membership(membership: &StoredMembership) -> Vec<u8> {
    prost::Message::encode_to_vec(&StoredMembershipRecord::from(membership))
}

pub fn decode_membership(bytes: &[u8]) -> Result<StoredMembership, RecordError> {
    decode::<StoredMembershipRecord>("membership", bytes)?.try_into()
}

pub fn encode_snapshot_meta(meta: &SnapshotMeta) -> Vec<u8> {
    prost::Message::encode_to_vec(&SnapshotMetaRecord::from(meta))
}

pub fn decode_snapshot_meta(bytes: &[u8]) -> Result<SnapshotMeta, RecordError> {
    decode::<SnapshotMetaRecord>("snapshot metadata", bytes)?.try_into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{Command, Op};
    use oxcd_proto::etcdserverpb::PutRequest;

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            peer_urls: vec![format!("http://{name}:2380")],
            client_urls: vec![format!("http://{name}:2379")],
        }
    }

    fn joint_membership() -> Membership {
        Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([
                (1, member("a")),
                (2, member("b")),
                (3, member("c")),
                (4, member("d")),
            ]),
        )
        .unwrap()
    }

    #[test]
    fn every_record_round_trips() {
        let entries = [
            Entry {
                log_id: log_id(2, 7, 10),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2, 7, 11),
                payload: EntryPayload::Normal(CommandBatch {
                    commands: vec![Command::new(Op::Put(PutRequest {
                        key: b"k".to_vec(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    }))],
                }),
            },
            Entry {
                log_id: log_id(3, 1, 12),
                payload: EntryPayload::Membership(joint_membership()),
            },
        ];
        for entry in entries {
            let bytes = encode_entry(&entry);
            assert_eq!(
                bytes,
                prost::Message::encode_to_vec(&EntryRecord::from(entry.clone())),
                "the same bytes as the derived encoding"
            );
            assert_eq!(entry_log_id(&bytes).unwrap(), entry.log_id);
            assert_eq!(decode_entry(&bytes).unwrap(), entry);
        }
        for vote in [Vote::new(5, 2), Vote::new_committed(6, 3)] {
            assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);
        }
        for position in [None, Some(log_id(1, 1, 0)), Some(log_id(9, 3, 1 << 40))] {
            assert_eq!(
                decode_position(&encode_position(position.as_ref())).unwrap(),
                position
            );
        }
        let stored = StoredMembership::new(Some(log_id(3, 1, 12)), joint_membership());
        assert_eq!(
            decode_membership(&encode_membership(&stored)).unwrap(),
            stored
        );
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(3, 1, 20)),
            last_membership: stored,
        };
        assert_eq!(
            decode_snapshot_meta(&encode_snapshot_meta(&meta)).unwrap(),
            meta
        );
    }

    /// The field numbers are the format: these bytes must decode the same in every release.
    #[test]
    fn the_encoding_is_fixed() {
        assert_eq!(
            encode_vote(&Vote::new_committed(5, 2)),
            [0x08, 5, 0x10, 2, 0x18, 1]
        );
        assert_eq!(
            encode_position(Some(&log_id(4, 3, 300))),
            [0x0a, 7, 0x08, 4, 0x10, 3, 0x18, 0xac, 0x02]
        );
        let blank = Entry {
            log_id: log_id(1, 2, 3),
            payload: EntryPayload::Blank,
        };
        assert_eq!(
            encode_entry(&blank),
            [0x0a, 6, 0x08, 1, 0x10, 2, 0x18, 3, 0x12, 0]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b"\xff\xff\xff"[..], b"\x0a\x20", b""] {
            let _ = decode_entry(bytes);
            let _ = decode_membership(bytes);
            let _ = decode_snapshot_meta(bytes);
        }
        assert!(
            decode_entry(b"").is_err(),
            "an entry needs its log id and payload"
        );
    }
}
