//! Data dir formats 1 and 2. Format 1, what releases before format 2 stored, is bincode 1 of
//! openraft 0.9's serde layout (and of oxcd's own `Member`). Format 2 stored Raft's records as
//! [`super::record`]s but still kept a restored data dir's membership as bincode of oxcd's
//! `Member`s. The layouts are written out here, so reading them depends on no openraft release
//! and on no type of this build, and translated into format 3's [`super::record`]s.
//!
//! [`upgrade`] converts an older data dir when it is opened, a format at a time. It is
//! resumable: each batch of log entries is rewritten together with the index the conversion has
//! reached, and the last write of each step (vote, positions, the state machine's records, the
//! new format number) is one atomic batch, so a crash at any point leaves a data dir the next
//! start converts the rest of.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::log_store::{COMMITTED, LAST_PURGED, VOTE};
use super::record::{
    encode_member_list, EntryRecord, LogIdRecord, MembershipRecord, NodeRecord, PayloadRecord,
    PositionRecord, SnapshotMetaRecord, StoredMembershipRecord, VoteRecord, VoterSetRecord,
    RESTORED_MEMBERSHIP_KEY,
};
use super::state_machine::{META_APPLIED, META_INSTALLING, META_MEMBERSHIP};
use super::types::Member;
use crate::storage::{Cf, Engine, StorageError, FORMAT_KEY};

/// The data dir format that stores Raft's records as [`super::record`]s.
const RECORD_FORMAT: u64 = 2;
/// The data dir format that also stores a restored data dir's membership as a record.
const MEMBER_LIST_FORMAT: u64 = 3;
/// The log index a conversion in progress has reached (absent when none is).
const CONVERTED_UPTO: &[u8] = b"format_upgrade_next_index";
/// Log entries rewritten per batch: bounded memory whatever the log's size.
const ENTRIES_PER_BATCH: usize = 256;

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct LeaderId {
    term: u64,
    node_id: u64,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct LogId {
    leader_id: LeaderId,
    index: u64,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Vote {
    leader_id: LeaderId,
    committed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LegacyMember {
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Membership {
    configs: Vec<BTreeSet<u64>>,
    nodes: BTreeMap<u64, LegacyMember>,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct StoredMembership {
    log_id: Option<LogId>,
    membership: Membership,
}

/// The command batch went through serde as its protobuf bytes.
#[derive(Clone, Serialize, Deserialize)]
pub(super) enum Payload {
    Blank,
    Normal(serde_bytes::ByteBuf),
    Membership(Membership),
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    log_id: LogId,
    payload: Payload,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct SnapshotMeta {
    last_log_id: Option<LogId>,
    last_membership: StoredMembership,
    /// Dropped in format 2.
    snapshot_id: String,
}

impl From<LogId> for LogIdRecord {
    fn from(id: LogId) -> LogIdRecord {
        LogIdRecord {
            term: id.leader_id.term,
            leader: id.leader_id.node_id,
            index: id.index,
        }
    }
}

impl From<Vote> for VoteRecord {
    fn from(vote: Vote) -> VoteRecord {
        VoteRecord {
            term: vote.leader_id.term,
            candidate: vote.leader_id.node_id,
            committed: vote.committed,
        }
    }
}

impl From<Membership> for MembershipRecord {
    fn from(m: Membership) -> MembershipRecord {
        MembershipRecord {
            voters: m
                .configs
                .into_iter()
                .map(|set| VoterSetRecord {
                    ids: set.into_iter().collect(),
                })
                .collect(),
            nodes: m
                .nodes
                .into_iter()
                .map(|(id, m)| NodeRecord {
                    id,
                    member: Some(m.into()),
                })
                .collect(),
        }
    }
}

impl From<LegacyMember> for Member {
    fn from(m: LegacyMember) -> Member {
        Member {
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
        }
    }
}

impl From<StoredMembership> for StoredMembershipRecord {
    fn from(m: StoredMembership) -> StoredMembershipRecord {
        StoredMembershipRecord {
            log_id: m.log_id.map(Into::into),
            membership: Some(m.membership.into()),
        }
    }
}

impl From<SnapshotMeta> for SnapshotMetaRecord {
    fn from(meta: SnapshotMeta) -> SnapshotMetaRecord {
        SnapshotMetaRecord {
            last_log_id: meta.last_log_id.map(Into::into),
            last_membership: Some(meta.last_membership.into()),
        }
    }
}

impl TryFrom<Entry> for EntryRecord {
    type Error = prost::DecodeError;

    fn try_from(entry: Entry) -> Result<EntryRecord, prost::DecodeError> {
        let payload = match entry.payload {
            Payload::Blank => PayloadRecord::Blank(()),
            Payload::Normal(bytes) => {
                PayloadRecord::Commands(prost::Message::decode(bytes.as_slice())?)
            }
            Payload::Membership(m) => PayloadRecord::Membership(m.into()),
        };
        Ok(EntryRecord {
            log_id: Some(entry.log_id.into()),
            payload: Some(payload),
        })
    }
}

// The way back, for messages to members of the previous release.

impl From<LogIdRecord> for LogId {
    fn from(r: LogIdRecord) -> LogId {
        LogId {
            leader_id: LeaderId {
                term: r.term,
                node_id: r.leader,
            },
            index: r.index,
        }
    }
}

impl From<VoteRecord> for Vote {
    fn from(r: VoteRecord) -> Vote {
        Vote {
            leader_id: LeaderId {
                term: r.term,
                node_id: r.candidate,
            },
            committed: r.committed,
        }
    }
}

impl From<MembershipRecord> for Membership {
    fn from(r: MembershipRecord) -> Membership {
        Membership {
            configs: r
                .voters
                .into_iter()
                .map(|set| set.ids.into_iter().collect())
                .collect(),
            nodes: r
                .nodes
                .into_iter()
                .map(|n| {
                    let m = n.member.unwrap_or_default();
                    let member = LegacyMember {
                        name: m.name,
                        peer_urls: m.peer_urls,
                        client_urls: m.client_urls,
                    };
                    (n.id, member)
                })
                .collect(),
        }
    }
}

impl From<StoredMembershipRecord> for StoredMembership {
    fn from(r: StoredMembershipRecord) -> StoredMembership {
        StoredMembership {
            log_id: r.log_id.map(Into::into),
            membership: r.membership.unwrap_or_default().into(),
        }
    }
}

impl From<SnapshotMetaRecord> for SnapshotMeta {
    /// openraft 0.9 tells snapshots apart by id while they are sent; the position names one.
    fn from(r: SnapshotMetaRecord) -> SnapshotMeta {
        let snapshot_id = r.last_log_id.map_or("empty".into(), |id| {
            format!("{}-{}-{}", id.term, id.leader, id.index)
        });
        SnapshotMeta {
            last_log_id: r.last_log_id.map(Into::into),
            last_membership: r.last_membership.unwrap_or_default().into(),
            snapshot_id,
        }
    }
}

impl From<EntryRecord> for Entry {
    fn from(r: EntryRecord) -> Entry {
        let payload = match r.payload {
            Some(PayloadRecord::Commands(batch)) => Payload::Normal(serde_bytes::ByteBuf::from(
                prost::Message::encode_to_vec(&batch),
            )),
            Some(PayloadRecord::Membership(m)) => Payload::Membership(m.into()),
            Some(PayloadRecord::Blank(())) | None => Payload::Blank,
        };
        Entry {
            log_id: r.log_id.unwrap_or_default().into(),
            payload,
        }
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("format-1 {what}: {e}"))
}

/// Decodes a format-1 value of type `L` and encodes it as format 2's record `R`.
fn convert<L, R>(what: &str, bytes: &[u8]) -> Result<Vec<u8>, StorageError>
where
    L: serde::de::DeserializeOwned,
    R: prost::Message + From<L>,
{
    let legacy: L = bincode::deserialize(bytes).map_err(|e| corrupt(what, e))?;
    Ok(R::from(legacy).encode_to_vec())
}

/// A format-1 snapshot file's metadata, as format 2 stores it.
pub(super) fn snapshot_meta(bytes: &[u8]) -> Result<SnapshotMetaRecord, StorageError> {
    let legacy: SnapshotMeta =
        bincode::deserialize(bytes).map_err(|e| corrupt("snapshot metadata", e))?;
    Ok(legacy.into())
}

/// A format-1 `Option<LogId>` (the state machine's applied position).
pub(super) fn position(bytes: &[u8]) -> Result<Option<LogIdRecord>, StorageError> {
    let legacy: Option<LogId> =
        bincode::deserialize(bytes).map_err(|e| corrupt("log position", e))?;
    Ok(legacy.map(Into::into))
}

/// A log position as format 1 (and the previous release's PreVote) encodes it.
pub(super) fn encode_position(id: Option<&super::types::LogId>) -> Vec<u8> {
    let legacy = id.map(|id| LogId::from(LogIdRecord::from(id)));
    bincode::serialize(&legacy).expect("a log position encodes")
}

fn position_record(bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    Ok(prost::Message::encode_to_vec(&PositionRecord {
        log_id: position(bytes)?,
    }))
}

/// Format 1 kept the purge point as a bare `LogId`; format 2 as a position, like the others.
fn purge_point_record(bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    let legacy: LogId = bincode::deserialize(bytes).map_err(|e| corrupt("purge point", e))?;
    Ok(prost::Message::encode_to_vec(&PositionRecord {
        log_id: Some(legacy.into()),
    }))
}

fn entry_record(bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    let legacy: Entry = bincode::deserialize(bytes).map_err(|e| corrupt("log entry", e))?;
    let record = EntryRecord::try_from(legacy).map_err(|e| corrupt("log entry", e))?;
    Ok(prost::Message::encode_to_vec(&record))
}

/// How one stored record of format 1 becomes its format 2 encoding.
type RecordRewrite<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>, StorageError>;

/// Converts a data dir of an older format to this build's; does nothing to one already there.
pub fn upgrade(engine: &Engine) -> Result<(), StorageError> {
    if engine.format_version()? < RECORD_FORMAT {
        to_records(engine)?;
    }
    if engine.format_version()? < MEMBER_LIST_FORMAT {
        to_member_list(engine)?;
    }
    Ok(())
}

/// Format 2 → 3: the restored membership, bincode of a map from member id to `Member`, becomes
/// a [`super::record::MemberListRecord`].
fn to_member_list(engine: &Engine) -> Result<(), StorageError> {
    let mut batch = engine.batch();
    if let Some(v) = engine.get(Cf::RaftState, RESTORED_MEMBERSHIP_KEY)? {
        let legacy: BTreeMap<u64, LegacyMember> =
            bincode::deserialize(&v).map_err(|e| corrupt("restored membership", e))?;
        let members = legacy.into_iter().map(|(id, m)| (id, m.into())).collect();
        batch.put(
            Cf::RaftState,
            RESTORED_MEMBERSHIP_KEY,
            &encode_member_list(&members),
        );
    }
    batch.put(Cf::RaftState, FORMAT_KEY, &MEMBER_LIST_FORMAT.to_be_bytes());
    engine.write(batch, true)
}

/// Format 1 → 2: the log, the vote, the log positions, the membership and snapshot metadata.
fn to_records(engine: &Engine) -> Result<(), StorageError> {
    tracing::info!(
        "converting the data dir's Raft records from format 1 to {RECORD_FORMAT} (once)"
    );
    let mut next = match engine.get(Cf::RaftState, CONVERTED_UPTO)? {
        Some(v) => u64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| corrupt("conversion progress", "not 8 bytes"))?,
        ),
        None => 0,
    };
    loop {
        let mut converted = Vec::with_capacity(ENTRIES_PER_BATCH);
        let mut failure = None;
        engine.scan(Cf::RaftLog, &next.to_be_bytes(), None, |k, v| {
            match entry_record(v) {
                Ok(record) => converted.push((k.to_vec(), record)),
                Err(e) => failure = Some(e),
            }
            failure.is_none() && converted.len() < ENTRIES_PER_BATCH
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let Some((last, _)) = converted.last() else {
            break;
        };
        next = u64::from_be_bytes(last.as_slice().try_into().expect("log keys are 8 bytes")) + 1;
        let mut batch = engine.batch();
        for (k, v) in &converted {
            batch.put(Cf::RaftLog, k, v);
        }
        batch.put(Cf::RaftState, CONVERTED_UPTO, &next.to_be_bytes());
        engine.write(batch, true)?;
        fail::fail_point!("raft::legacy::after_batch", |_| Err(StorageError::Corrupt(
            "failpoint raft::legacy::after_batch".into()
        )));
    }

    let mut batch = engine.batch();
    let mut rewrite = |cf: Cf, key: &[u8], to: RecordRewrite| {
        if let Some(v) = engine.get(cf, key)? {
            batch.put(cf, key, &to(&v)?);
        }
        Ok::<_, StorageError>(())
    };
    rewrite(Cf::RaftState, VOTE, &|v| {
        convert::<Vote, VoteRecord>("vote", v)
    })?;
    rewrite(Cf::RaftState, COMMITTED, &position_record)?;
    rewrite(Cf::RaftState, LAST_PURGED, &purge_point_record)?;
    rewrite(Cf::Meta, META_APPLIED, &position_record)?;
    rewrite(Cf::Meta, META_MEMBERSHIP, &|v| {
        convert::<StoredMembership, StoredMembershipRecord>("membership", v)
    })?;
    rewrite(Cf::Meta, META_INSTALLING, &|v| {
        convert::<SnapshotMeta, SnapshotMetaRecord>("snapshot metadata", v)
    })?;
    batch.delete(Cf::RaftState, CONVERTED_UPTO);
    batch.put(Cf::RaftState, FORMAT_KEY, &RECORD_FORMAT.to_be_bytes());
    engine.write(batch, true)?;
    Ok(())
}

/// The previous release's Raft types, for tests that check what it wrote and sent is read.
#[cfg(test)]
pub(super) mod release09 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::apply::CommandBatch;

    openraft09::declare_raft_types!(
        pub(in crate::raft) Release09:
            D = Batch09,
            R = Batch09,
            NodeId = u64,
            Node = super::LegacyMember,
            SnapshotData = std::io::Cursor<Vec<u8>>,
    );

    /// The previous release's log payload: a command batch through serde as its protobuf bytes.
    #[derive(Debug, Clone, PartialEq)]
    pub(in crate::raft) struct Batch09(pub CommandBatch);

    impl Serialize for Batch09 {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&prost::Message::encode_to_vec(&self.0))
        }
    }

    impl<'de> Deserialize<'de> for Batch09 {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
            let batch =
                prost::Message::decode(bytes.as_slice()).map_err(serde::de::Error::custom)?;
            Ok(Batch09(batch))
        }
    }
}

#[cfg(test)]
mod tests {
    //! The layout above is checked against openraft 0.9 itself: what it wrote is what is read.
    use std::collections::{BTreeMap, BTreeSet};

    use oxcd_proto::etcdserverpb::PutRequest;

    use super::*;
    use crate::apply::{Command, CommandBatch, Op};
    use crate::raft::record::LogIdRecord;

    use super::release09::{Batch09, Release09};

    fn log_id(term: u64, leader: u64, index: u64) -> openraft09::LogId<u64> {
        openraft09::LogId::new(openraft09::CommittedLeaderId::new(term, leader), index)
    }

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            peer_urls: vec![format!("http://{name}:2380")],
            client_urls: vec![format!("http://{name}:2379")],
        }
    }

    fn membership() -> openraft09::Membership<u64, LegacyMember> {
        let node = |name| {
            let m = member(name);
            LegacyMember {
                name: m.name,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
            }
        };
        openraft09::Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([
                (1, node("a")),
                (2, node("b")),
                (3, node("c")),
                (9, node("l")),
            ]),
        )
    }

    fn membership_record() -> MembershipRecord {
        MembershipRecord {
            voters: vec![
                VoterSetRecord { ids: vec![1, 2] },
                VoterSetRecord { ids: vec![2, 3] },
            ],
            nodes: [(1, "a"), (2, "b"), (3, "c"), (9, "l")]
                .map(|(id, name)| NodeRecord {
                    id,
                    member: Some(member(name)),
                })
                .to_vec(),
        }
    }

    fn record(term: u64, leader: u64, index: u64) -> LogIdRecord {
        LogIdRecord {
            term,
            leader,
            index,
        }
    }

    fn decoded<R: prost::Message + Default>(bytes: Vec<u8>) -> R {
        R::decode(bytes.as_slice()).unwrap()
    }

    /// A format-1 data dir as the previous release left it: `entries` log entries from index 1,
    /// the vote, commit and purge points, and the state machine's position and membership.
    #[cfg(feature = "failpoints")]
    fn format_1_engine(dir: &std::path::Path, entries: u64) -> std::sync::Arc<Engine> {
        let engine = Engine::open(dir).unwrap();
        let mut batch = engine.batch();
        batch.put(Cf::RaftState, FORMAT_KEY, &1u64.to_be_bytes());
        for index in 1..=entries {
            let entry = openraft09::Entry::<Release09> {
                log_id: log_id(2, 1, index),
                payload: openraft09::EntryPayload::Blank,
            };
            batch.put(
                Cf::RaftLog,
                &index.to_be_bytes(),
                &bincode::serialize(&entry).unwrap(),
            );
        }
        let vote = openraft09::Vote::new_committed(2u64, 1u64);
        batch.put(Cf::RaftState, VOTE, &bincode::serialize(&vote).unwrap());
        let committed = Some(log_id(2, 1, entries));
        batch.put(
            Cf::RaftState,
            COMMITTED,
            &bincode::serialize(&committed).unwrap(),
        );
        batch.put(
            Cf::Meta,
            META_APPLIED,
            &bincode::serialize(&committed).unwrap(),
        );
        let stored = openraft09::StoredMembership::new(Some(log_id(1, 1, 1)), membership());
        batch.put(
            Cf::Meta,
            META_MEMBERSHIP,
            &bincode::serialize(&stored).unwrap(),
        );
        engine.write(batch, true).unwrap();
        engine
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn a_conversion_cut_short_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let entries = ENTRIES_PER_BATCH as u64 * 2 + 10;
        let engine = format_1_engine(dir.path(), entries);
        fail::cfg("raft::legacy::after_batch", "1*return->off").unwrap();
        upgrade(&engine).expect_err("the failpoint stops the first conversion");
        assert_eq!(engine.format_version().unwrap(), 1);
        let reached = engine.get(Cf::RaftState, CONVERTED_UPTO).unwrap().unwrap();
        assert_eq!(reached, (ENTRIES_PER_BATCH as u64 + 1).to_be_bytes());

        upgrade(&engine).unwrap();
        assert_eq!(engine.format_version().unwrap(), MEMBER_LIST_FORMAT);
        assert!(engine.get(Cf::RaftState, CONVERTED_UPTO).unwrap().is_none());
        for index in 1..=entries {
            let bytes = engine
                .get(Cf::RaftLog, &index.to_be_bytes())
                .unwrap()
                .unwrap();
            let record = crate::raft::record::decode_entry(&bytes).unwrap();
            assert_eq!(record.log_id.index, index);
        }
        let vote = engine.get(Cf::RaftState, VOTE).unwrap().unwrap();
        let vote = crate::raft::record::decode_vote(&vote).unwrap();
        assert!(vote.committed && vote.leader_id.term == 2);
        let applied = engine.get(Cf::Meta, META_APPLIED).unwrap().unwrap();
        let applied = crate::raft::record::decode_position(&applied)
            .unwrap()
            .unwrap();
        assert_eq!(applied.index, entries);
        let stored = engine.get(Cf::Meta, META_MEMBERSHIP).unwrap().unwrap();
        let stored = crate::raft::record::decode_membership(&stored).unwrap();
        assert_eq!(stored.membership().nodes().count(), 4);

        // Converted once: a second open leaves it as it is.
        upgrade(&engine).unwrap();
        assert_eq!(engine.format_version().unwrap(), MEMBER_LIST_FORMAT);
    }

    #[test]
    fn a_format_2_restored_membership_becomes_a_member_list() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let legacy = BTreeMap::from([(
            7u64,
            LegacyMember {
                name: "m7".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
                client_urls: vec![],
            },
        )]);
        let mut batch = engine.batch();
        batch.put(Cf::RaftState, FORMAT_KEY, &RECORD_FORMAT.to_be_bytes());
        batch.put(
            Cf::RaftState,
            RESTORED_MEMBERSHIP_KEY,
            &bincode::serialize(&legacy).unwrap(),
        );
        engine.write(batch, true).unwrap();

        upgrade(&engine).unwrap();
        assert_eq!(engine.format_version().unwrap(), MEMBER_LIST_FORMAT);
        let stored = engine
            .get(Cf::RaftState, RESTORED_MEMBERSHIP_KEY)
            .unwrap()
            .unwrap();
        let members = crate::raft::record::decode_member_list(&stored).unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[&7].name, "m7");
        assert_eq!(members[&7].peer_urls, ["http://127.0.0.1:2380"]);
    }

    #[test]
    fn what_openraft_09_wrote_converts_to_records() {
        let batch = CommandBatch {
            commands: vec![Command::new(Op::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }))],
        };
        let entries = [
            (openraft09::EntryPayload::Blank, PayloadRecord::Blank(())),
            (
                openraft09::EntryPayload::Normal(Batch09(batch.clone())),
                PayloadRecord::Commands(batch),
            ),
            (
                openraft09::EntryPayload::Membership(membership()),
                PayloadRecord::Membership(membership_record()),
            ),
        ];
        for (i, (payload, expected)) in entries.into_iter().enumerate() {
            let entry = openraft09::Entry::<Release09> {
                log_id: log_id(3, 2, 40 + i as u64),
                payload,
            };
            let converted: EntryRecord =
                decoded(entry_record(&bincode::serialize(&entry).unwrap()).unwrap());
            assert_eq!(converted.log_id, Some(record(3, 2, 40 + i as u64)));
            assert_eq!(converted.payload, Some(expected));
        }

        let vote = openraft09::Vote::new_committed(7u64, 3u64);
        let converted: VoteRecord =
            decoded(convert::<Vote, VoteRecord>("", &bincode::serialize(&vote).unwrap()).unwrap());
        assert_eq!(
            converted,
            VoteRecord {
                term: 7,
                candidate: 3,
                committed: true
            }
        );

        for position in [None, Some(log_id(5, 1, 1 << 33))] {
            let converted: PositionRecord =
                decoded(position_record(&bincode::serialize(&position).unwrap()).unwrap());
            assert_eq!(converted.log_id, position.map(|_| record(5, 1, 1 << 33)));
        }
        let purged: PositionRecord =
            decoded(purge_point_record(&bincode::serialize(&log_id(2, 1, 99)).unwrap()).unwrap());
        assert_eq!(purged.log_id, Some(record(2, 1, 99)));

        let stored = openraft09::StoredMembership::new(Some(log_id(3, 2, 41)), membership());
        let converted: StoredMembershipRecord = decoded(
            convert::<StoredMembership, StoredMembershipRecord>(
                "",
                &bincode::serialize(&stored).unwrap(),
            )
            .unwrap(),
        );
        let stored_record = StoredMembershipRecord {
            log_id: Some(record(3, 2, 41)),
            membership: Some(membership_record()),
        };
        assert_eq!(converted, stored_record);

        let meta = openraft09::SnapshotMeta::<u64, LegacyMember> {
            last_log_id: Some(log_id(3, 2, 60)),
            last_membership: stored,
            snapshot_id: "3-2-60-17".into(),
        };
        assert_eq!(
            snapshot_meta(&bincode::serialize(&meta).unwrap()).unwrap(),
            SnapshotMetaRecord {
                last_log_id: Some(record(3, 2, 60)),
                last_membership: Some(stored_record),
            }
        );
    }
}
