//! The previous release's Raft messages (bincode 1 of openraft 0.9's types, on the peer
//! service's `AppendEntries`, `Vote` and `InstallSnapshot`), spoken only while a cluster is
//! upgraded one member at a time: a member of this release answers them, and talks them to a
//! member that does not know the new calls yet. Everything goes through [`super::record`]s, so
//! nothing here depends on either openraft release's types.
//!
//! A reply was bincode of `Result<Reply, RaftError>`. This side only ever sends `Ok` (a
//! failure is a gRPC status instead), and takes any `Err` it receives as a failed call.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::legacy::{Entry, LogId, SnapshotMeta, Vote};
use super::membership::MemberChange;
use super::record::{EntryRecord, LogIdRecord, RecordError, SnapshotMetaRecord, VoteRecord};
use super::types::{self, TypeConfig};

#[derive(Serialize, Deserialize)]
pub(super) struct AppendRequest {
    vote: Vote,
    prev_log_id: Option<LogId>,
    entries: Vec<Entry>,
    leader_commit: Option<LogId>,
}

#[derive(Serialize, Deserialize)]
pub(super) enum AppendReply {
    Success,
    PartialSuccess(Option<LogId>),
    Conflict,
    HigherVote(Vote),
}

#[derive(Serialize, Deserialize)]
pub(super) struct VoteRequestV1 {
    vote: Vote,
    last_log_id: Option<LogId>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct VoteReplyV1 {
    vote: Vote,
    vote_granted: bool,
    last_log_id: Option<LogId>,
}

/// One chunk of a snapshot file, at `offset`; the last has `done`.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotChunk {
    pub(super) vote: Vote,
    pub(super) meta: SnapshotMeta,
    pub(super) offset: u64,
    pub(super) data: Vec<u8>,
    pub(super) done: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotChunkReply {
    pub(super) vote: Vote,
}

/// A membership change as the previous release sent it to its leader (`ChangeMembersRequest`'s
/// `change`): the variants and fields in its order, which is what bincode encodes.
#[derive(Serialize, Deserialize)]
pub(super) enum MemberChangeV1 {
    Add {
        id: u64,
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: u64,
    },
    UpdatePeerUrls {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
    Publish {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
}

impl From<&MemberChange> for MemberChangeV1 {
    fn from(change: &MemberChange) -> MemberChangeV1 {
        match change.clone() {
            MemberChange::Add {
                id,
                peer_urls,
                learner,
            } => MemberChangeV1::Add {
                id,
                peer_urls,
                learner,
            },
            MemberChange::Remove { id } => MemberChangeV1::Remove { id },
            MemberChange::UpdatePeerUrls { id, peer_urls } => {
                MemberChangeV1::UpdatePeerUrls { id, peer_urls }
            }
            MemberChange::Promote { id } => MemberChangeV1::Promote { id },
            MemberChange::Publish {
                id,
                name,
                client_urls,
            } => MemberChangeV1::Publish {
                id,
                name,
                client_urls,
            },
        }
    }
}

impl From<MemberChangeV1> for MemberChange {
    fn from(change: MemberChangeV1) -> MemberChange {
        match change {
            MemberChangeV1::Add {
                id,
                peer_urls,
                learner,
            } => MemberChange::Add {
                id,
                peer_urls,
                learner,
            },
            MemberChangeV1::Remove { id } => MemberChange::Remove { id },
            MemberChangeV1::UpdatePeerUrls { id, peer_urls } => {
                MemberChange::UpdatePeerUrls { id, peer_urls }
            }
            MemberChangeV1::Promote { id } => MemberChange::Promote { id },
            MemberChangeV1::Publish {
                id,
                name,
                client_urls,
            } => MemberChange::Publish {
                id,
                name,
                client_urls,
            },
        }
    }
}

/// A message that did not decode, or an error the other member answered with.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("undecodable message of the previous release: {0}")]
    Undecodable(String),
    #[error("the member failed the call")]
    Refused,
    #[error(transparent)]
    Record(#[from] RecordError),
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, LegacyError> {
    bincode::deserialize(bytes).map_err(|e| LegacyError::Undecodable(e.to_string()))
}

pub(super) fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    bincode::serialize(message).expect("messages of plain data encode")
}

/// A reply as the previous release expects it: `Ok(reply)`.
pub(super) fn encode_ok<T: Serialize>(reply: &T) -> Vec<u8> {
    encode(&Ok::<&T, ()>(reply))
}

/// A reply of the previous release: its `Ok`, or [`LegacyError::Refused`].
pub(super) fn decode_ok<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, LegacyError> {
    let Some((variant, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(LegacyError::Undecodable("an empty reply".into()));
    };
    match u32::from_le_bytes(*variant) {
        0 => decode(rest),
        _ => Err(LegacyError::Refused),
    }
}

fn log_id(id: Option<&types::LogId>) -> Option<LogId> {
    id.map(|id| LogIdRecord::from(id).into())
}

fn log_id_back(id: Option<LogId>) -> Option<types::LogId> {
    id.map(|id| LogIdRecord::from(id).into())
}

pub(super) fn vote(vote: &types::Vote) -> Vote {
    VoteRecord::from(vote).into()
}

pub(super) fn vote_back(vote: Vote) -> types::Vote {
    VoteRecord::from(vote).into()
}

pub(super) fn snapshot_meta(meta: &types::SnapshotMeta) -> SnapshotMeta {
    SnapshotMetaRecord::from(meta).into()
}

pub(super) fn snapshot_meta_back(meta: SnapshotMeta) -> Result<types::SnapshotMeta, LegacyError> {
    Ok(SnapshotMetaRecord::from(meta).try_into()?)
}

impl From<AppendEntriesRequest<TypeConfig>> for AppendRequest {
    fn from(rpc: AppendEntriesRequest<TypeConfig>) -> AppendRequest {
        AppendRequest {
            vote: vote(&rpc.vote),
            prev_log_id: log_id(rpc.prev_log_id.as_ref()),
            entries: rpc
                .entries
                .into_iter()
                .map(|e| EntryRecord::from(e).into())
                .collect(),
            leader_commit: log_id(rpc.leader_commit.as_ref()),
        }
    }
}

impl TryFrom<AppendRequest> for AppendEntriesRequest<TypeConfig> {
    type Error = LegacyError;

    fn try_from(r: AppendRequest) -> Result<Self, LegacyError> {
        let entries = r
            .entries
            .into_iter()
            .map(|e| {
                let record = EntryRecord::try_from(e)
                    .map_err(|e| LegacyError::Undecodable(e.to_string()))?;
                Ok(record.into_entry()?)
            })
            .collect::<Result<_, LegacyError>>()?;
        Ok(AppendEntriesRequest {
            vote: vote_back(r.vote),
            prev_log_id: log_id_back(r.prev_log_id),
            entries,
            leader_commit: log_id_back(r.leader_commit),
        })
    }
}

impl From<&AppendEntriesResponse<TypeConfig>> for AppendReply {
    fn from(reply: &AppendEntriesResponse<TypeConfig>) -> AppendReply {
        match reply {
            AppendEntriesResponse::Success => AppendReply::Success,
            AppendEntriesResponse::PartialSuccess(upto) => {
                AppendReply::PartialSuccess(log_id(upto.as_ref()))
            }
            AppendEntriesResponse::Conflict => AppendReply::Conflict,
            AppendEntriesResponse::HigherVote(v) => AppendReply::HigherVote(vote(v)),
        }
    }
}

impl From<AppendReply> for AppendEntriesResponse<TypeConfig> {
    fn from(reply: AppendReply) -> Self {
        match reply {
            AppendReply::Success => AppendEntriesResponse::Success,
            AppendReply::PartialSuccess(upto) => {
                AppendEntriesResponse::PartialSuccess(log_id_back(upto))
            }
            AppendReply::Conflict => AppendEntriesResponse::Conflict,
            AppendReply::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_back(v)),
        }
    }
}

impl From<&VoteRequest<TypeConfig>> for VoteRequestV1 {
    fn from(rpc: &VoteRequest<TypeConfig>) -> VoteRequestV1 {
        VoteRequestV1 {
            vote: vote(&rpc.vote),
            last_log_id: log_id(rpc.last_log_id.as_ref()),
        }
    }
}

impl From<VoteRequestV1> for VoteRequest<TypeConfig> {
    fn from(r: VoteRequestV1) -> Self {
        VoteRequest::new(vote_back(r.vote), log_id_back(r.last_log_id))
    }
}

impl From<&VoteResponse<TypeConfig>> for VoteReplyV1 {
    fn from(reply: &VoteResponse<TypeConfig>) -> VoteReplyV1 {
        VoteReplyV1 {
            vote: vote(&reply.vote),
            vote_granted: reply.vote_granted,
            last_log_id: log_id(reply.last_log_id.as_ref()),
        }
    }
}

impl From<VoteReplyV1> for VoteResponse<TypeConfig> {
    fn from(r: VoteReplyV1) -> Self {
        VoteResponse::new(
            vote_back(r.vote),
            log_id_back(r.last_log_id),
            r.vote_granted,
        )
    }
}

#[cfg(test)]
mod tests {
    //! Checked against openraft 0.9 itself: what it sends is read, what is sent it reads.
    use super::*;
    use crate::apply::{Command, CommandBatch, Op};
    use oxcd_proto::etcdserverpb::PutRequest;

    use super::super::legacy::release09::{Batch09, Release09};

    fn log_id09(term: u64, index: u64) -> openraft09::LogId<u64> {
        openraft09::LogId::new(openraft09::CommittedLeaderId::new(term, 2), index)
    }

    #[test]
    fn appends_and_votes_cross_between_releases() {
        let batch = CommandBatch {
            commands: vec![Command::new(Op::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }))],
        };
        let sent09 = openraft09::raft::AppendEntriesRequest::<Release09> {
            vote: openraft09::Vote::new_committed(3, 2),
            prev_log_id: Some(log_id09(3, 9)),
            entries: vec![openraft09::Entry {
                log_id: log_id09(3, 10),
                payload: openraft09::EntryPayload::Normal(Batch09(batch.clone())),
            }],
            leader_commit: Some(log_id09(3, 9)),
        };
        let received: AppendRequest = decode(&bincode::serialize(&sent09).unwrap()).unwrap();
        let received = AppendEntriesRequest::<TypeConfig>::try_from(received).unwrap();
        assert_eq!(received.vote, types::Vote::new_committed(3, 2));
        assert_eq!(received.prev_log_id, Some(types::log_id(3, 2, 9)));
        assert_eq!(
            received.entries[0].payload,
            openraft::EntryPayload::Normal(batch)
        );

        // ... and back: what this release sends, 0.9 reads.
        let back = encode(&AppendRequest::from(received));
        let read09: openraft09::raft::AppendEntriesRequest<Release09> =
            bincode::deserialize(&back).unwrap();
        assert_eq!(read09.entries, sent09.entries);
        assert_eq!(read09.vote, sent09.vote);

        let reply = encode_ok(&AppendReply::from(&AppendEntriesResponse::HigherVote(
            types::Vote::new(4, 1),
        )));
        let read09: Result<
            openraft09::raft::AppendEntriesResponse<u64>,
            openraft09::error::RaftError<u64>,
        > = bincode::deserialize(&reply).unwrap();
        assert_eq!(
            read09.unwrap(),
            openraft09::raft::AppendEntriesResponse::HigherVote(openraft09::Vote::new(4, 1))
        );
        let reply09: Result<_, openraft09::error::RaftError<u64>> = Ok(
            openraft09::raft::AppendEntriesResponse::<u64>::PartialSuccess(Some(log_id09(3, 10))),
        );
        let read: AppendReply = decode_ok(&bincode::serialize(&reply09).unwrap()).unwrap();
        assert_eq!(
            AppendEntriesResponse::from(read),
            AppendEntriesResponse::PartialSuccess(Some(types::log_id(3, 2, 10)))
        );
        let refused: Result<openraft09::raft::VoteResponse<u64>, _> = Err(
            openraft09::error::RaftError::<u64>::Fatal(openraft09::error::Fatal::Stopped),
        );
        assert!(matches!(
            decode_ok::<VoteReplyV1>(&bincode::serialize(&refused).unwrap()),
            Err(LegacyError::Refused)
        ));

        let vote09 =
            openraft09::raft::VoteRequest::new(openraft09::Vote::new(5, 3), Some(log_id09(4, 20)));
        let read: VoteRequestV1 = decode(&bincode::serialize(&vote09).unwrap()).unwrap();
        let read = VoteRequest::<TypeConfig>::from(read);
        assert_eq!(read.vote, types::Vote::new(5, 3));
        let granted = VoteResponse::<TypeConfig>::new(types::Vote::new(5, 3), None, true);
        let reply: Result<openraft09::raft::VoteResponse<u64>, openraft09::error::RaftError<u64>> =
            bincode::deserialize(&encode_ok(&VoteReplyV1::from(&granted))).unwrap();
        assert!(reply.unwrap().vote_granted);
    }
}
