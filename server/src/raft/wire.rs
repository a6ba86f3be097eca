//! Raft's messages between members, as oxcd's own protobuf records (`peerpb.Peer`'s `Append`,
//! `AppendStream`, `RequestVote`, `SendSnapshot` and `TransferLeader` carry them in
//! `RaftMessage.payload`). Like [`super::record`], the field numbers are the protocol: members
//! of different oxcd releases, and so of different openraft releases, understand each other.

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError,
    StreamAppendResult, TransferLeaderError, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};

use super::record::{
    required, EntryRecord, LogIdRecord, PositionRecord, RecordError, SnapshotMetaRecord, VoteRecord,
};
use oxcd_proto::peerpb::ChangeMembersRequest;
use prost::Message;

use super::membership::MemberChange;
use super::types::{LogId, SnapshotMeta, TypeConfig, Vote};

/// `RaftMessage.payload`s decode as the stored records do.
pub(super) use super::record::decode;

#[derive(Clone, PartialEq, prost::Message)]
pub struct AppendRequestRecord {
    #[prost(message, optional, tag = "1")]
    pub vote: Option<VoteRecord>,
    #[prost(message, optional, tag = "2")]
    pub prev_log_id: Option<LogIdRecord>,
    #[prost(message, repeated, tag = "3")]
    pub entries: Vec<EntryRecord>,
    #[prost(message, optional, tag = "4")]
    pub leader_commit: Option<LogIdRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AppendReplyRecord {
    #[prost(oneof = "AppendOutcome", tags = "1, 2, 3, 4")]
    pub outcome: Option<AppendOutcome>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AppendOutcome {
    /// The follower holds every entry sent.
    #[prost(message, tag = "1")]
    Success(()),
    /// The follower holds the entries up to this one.
    #[prost(message, tag = "2")]
    PartialSuccess(PositionRecord),
    /// The follower's log does not hold the entry before the ones sent.
    #[prost(message, tag = "3")]
    Conflict(()),
    /// The follower has seen a higher vote: the sender no longer leads.
    #[prost(message, tag = "4")]
    HigherVote(VoteRecord),
}

/// A reply on `AppendStream`: one per request, in the order they were sent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAppendReplyRecord {
    #[prost(oneof = "StreamAppendOutcome", tags = "1, 2, 3")]
    pub outcome: Option<StreamAppendOutcome>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum StreamAppendOutcome {
    /// The follower's log matches the leader's up to this entry.
    #[prost(message, tag = "1")]
    Matched(PositionRecord),
    #[prost(message, tag = "2")]
    Conflict(LogIdRecord),
    #[prost(message, tag = "3")]
    HigherVote(VoteRecord),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VoteRequestRecord {
    #[prost(message, optional, tag = "1")]
    pub vote: Option<VoteRecord>,
    #[prost(message, optional, tag = "2")]
    pub last_log_id: Option<LogIdRecord>,
    /// The leader asked for this election (a leader transfer): granted even within a lease.
    #[prost(bool, tag = "3")]
    pub leadership_transfer: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VoteReplyRecord {
    #[prost(message, optional, tag = "1")]
    pub vote: Option<VoteRecord>,
    #[prost(bool, tag = "2")]
    pub granted: bool,
    #[prost(message, optional, tag = "3")]
    pub last_log_id: Option<LogIdRecord>,
}

/// The first message of `SendSnapshot`: whose snapshot it is and what it holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotOfferRecord {
    #[prost(message, optional, tag = "1")]
    pub vote: Option<VoteRecord>,
    #[prost(message, optional, tag = "2")]
    pub meta: Option<SnapshotMetaRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotReplyRecord {
    #[prost(message, optional, tag = "1")]
    pub vote: Option<VoteRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TransferLeaderRecord {
    /// The vote of the leader handing over.
    #[prost(message, optional, tag = "1")]
    pub from_leader: Option<VoteRecord>,
    #[prost(uint64, tag = "2")]
    pub to: u64,
    /// The last entry the new leader must hold.
    #[prost(message, optional, tag = "3")]
    pub last_log_id: Option<LogIdRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TransferLeaderReplyRecord {
    #[prost(oneof = "TransferOutcome", tags = "1, 2, 3")]
    pub outcome: Option<TransferOutcome>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TransferOutcome {
    #[prost(message, tag = "1")]
    Accepted(()),
    /// The target had moved on to another vote: (the leader's, the target's).
    #[prost(message, tag = "2")]
    VoteChanged(VotePairRecord),
    /// The target had not yet flushed the leader's last entry.
    #[prost(message, tag = "3")]
    LogNotFlushed(LogNotFlushedRecord),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VotePairRecord {
    #[prost(message, optional, tag = "1")]
    pub expected: Option<VoteRecord>,
    #[prost(message, optional, tag = "2")]
    pub actual: Option<VoteRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LogNotFlushedRecord {
    #[prost(message, optional, tag = "1")]
    pub expected: Option<LogIdRecord>,
    #[prost(message, optional, tag = "2")]
    pub actual: Option<LogIdRecord>,
}

fn position(id: Option<&LogId>) -> Option<LogIdRecord> {
    id.map(LogIdRecord::from)
}

impl From<AppendEntriesRequest<TypeConfig>> for AppendRequestRecord {
    fn from(rpc: AppendEntriesRequest<TypeConfig>) -> AppendRequestRecord {
        AppendRequestRecord {
            vote: Some((&rpc.vote).into()),
            prev_log_id: position(rpc.prev_log_id.as_ref()),
            entries: rpc.entries.into_iter().map(EntryRecord::from).collect(),
            leader_commit: position(rpc.leader_commit.as_ref()),
        }
    }
}

impl TryFrom<AppendRequestRecord> for AppendEntriesRequest<TypeConfig> {
    type Error = RecordError;

    fn try_from(r: AppendRequestRecord) -> Result<Self, RecordError> {
        Ok(AppendEntriesRequest {
            vote: required("append", r.vote)?.into(),
            prev_log_id: r.prev_log_id.map(LogId::from),
            entries: r
                .entries
                .into_iter()
                .map(EntryRecord::into_entry)
                .collect::<Result<_, _>>()?,
            leader_commit: r.leader_commit.map(LogId::from),
        })
    }
}

impl From<&AppendEntriesResponse<TypeConfig>> for AppendReplyRecord {
    fn from(reply: &AppendEntriesResponse<TypeConfig>) -> AppendReplyRecord {
        let outcome = match reply {
            AppendEntriesResponse::Success => AppendOutcome::Success(()),
            AppendEntriesResponse::PartialSuccess(upto) => {
                AppendOutcome::PartialSuccess(PositionRecord {
                    log_id: position(upto.as_ref()),
                })
            }
            AppendEntriesResponse::Conflict => AppendOutcome::Conflict(()),
            AppendEntriesResponse::HigherVote(vote) => AppendOutcome::HigherVote(vote.into()),
        };
        AppendReplyRecord {
            outcome: Some(outcome),
        }
    }
}

impl TryFrom<AppendReplyRecord> for AppendEntriesResponse<TypeConfig> {
    type Error = RecordError;

    fn try_from(r: AppendReplyRecord) -> Result<Self, RecordError> {
        Ok(match required("append reply", r.outcome)? {
            AppendOutcome::Success(()) => AppendEntriesResponse::Success,
            AppendOutcome::PartialSuccess(upto) => {
                AppendEntriesResponse::PartialSuccess(upto.log_id.map(LogId::from))
            }
            AppendOutcome::Conflict(()) => AppendEntriesResponse::Conflict,
            AppendOutcome::HigherVote(vote) => AppendEntriesResponse::HigherVote(vote.into()),
        })
    }
}

pub fn stream_reply(result: &StreamAppendResult<TypeConfig>) -> StreamAppendReplyRecord {
    let outcome = match result {
        Ok(matched) => StreamAppendOutcome::Matched(PositionRecord {
            log_id: position(matched.as_ref()),
        }),
        Err(StreamAppendError::Conflict(at)) => StreamAppendOutcome::Conflict(at.into()),
        Err(StreamAppendError::HigherVote(vote)) => StreamAppendOutcome::HigherVote(vote.into()),
    };
    StreamAppendReplyRecord {
        outcome: Some(outcome),
    }
}

pub fn stream_result(
    r: StreamAppendReplyRecord,
) -> Result<StreamAppendResult<TypeConfig>, RecordError> {
    Ok(match required("stream append reply", r.outcome)? {
        StreamAppendOutcome::Matched(upto) => Ok(upto.log_id.map(LogId::from)),
        StreamAppendOutcome::Conflict(at) => Err(StreamAppendError::Conflict(at.into())),
        StreamAppendOutcome::HigherVote(vote) => Err(StreamAppendError::HigherVote(vote.into())),
    })
}

impl From<&VoteRequest<TypeConfig>> for VoteRequestRecord {
    fn from(rpc: &VoteRequest<TypeConfig>) -> VoteRequestRecord {
        VoteRequestRecord {
            vote: Some((&rpc.vote).into()),
            last_log_id: position(rpc.last_log_id.as_ref()),
            leadership_transfer: rpc.leadership_transfer,
        }
    }
}

impl TryFrom<VoteRequestRecord> for VoteRequest<TypeConfig> {
    type Error = RecordError;

    fn try_from(r: VoteRequestRecord) -> Result<Self, RecordError> {
        let mut rpc = VoteRequest::new(
            Vote::from(required("vote", r.vote)?),
            r.last_log_id.map(LogId::from),
        );
        rpc.leadership_transfer = r.leadership_transfer;
        Ok(rpc)
    }
}

impl From<&VoteResponse<TypeConfig>> for VoteReplyRecord {
    fn from(reply: &VoteResponse<TypeConfig>) -> VoteReplyRecord {
        VoteReplyRecord {
            vote: Some((&reply.vote).into()),
            granted: reply.vote_granted,
            last_log_id: position(reply.last_log_id.as_ref()),
        }
    }
}

impl TryFrom<VoteReplyRecord> for VoteResponse<TypeConfig> {
    type Error = RecordError;

    fn try_from(r: VoteReplyRecord) -> Result<Self, RecordError> {
        Ok(VoteResponse::new(
            Vote::from(required("vote reply", r.vote)?),
            r.last_log_id.map(LogId::from),
            r.granted,
        ))
    }
}

pub fn snapshot_offer(vote: &Vote, meta: &SnapshotMeta) -> SnapshotOfferRecord {
    SnapshotOfferRecord {
        vote: Some(vote.into()),
        meta: Some(meta.into()),
    }
}

pub fn snapshot_offered(r: SnapshotOfferRecord) -> Result<(Vote, SnapshotMeta), RecordError> {
    let vote = required("snapshot offer", r.vote)?.into();
    let meta = required("snapshot offer", r.meta)?.try_into()?;
    Ok((vote, meta))
}

impl From<&SnapshotResponse<TypeConfig>> for SnapshotReplyRecord {
    fn from(reply: &SnapshotResponse<TypeConfig>) -> SnapshotReplyRecord {
        SnapshotReplyRecord {
            vote: Some((&reply.vote).into()),
        }
    }
}

impl TryFrom<SnapshotReplyRecord> for SnapshotResponse<TypeConfig> {
    type Error = RecordError;

    fn try_from(r: SnapshotReplyRecord) -> Result<Self, RecordError> {
        Ok(SnapshotResponse::new(
            required("snapshot reply", r.vote)?.into(),
        ))
    }
}

impl From<&TransferLeaderRequest<TypeConfig>> for TransferLeaderRecord {
    fn from(rpc: &TransferLeaderRequest<TypeConfig>) -> TransferLeaderRecord {
        TransferLeaderRecord {
            from_leader: Some(rpc.from_leader().into()),
            to: *rpc.to_node_id(),
            last_log_id: position(rpc.last_log_id()),
        }
    }
}

impl TryFrom<TransferLeaderRecord> for TransferLeaderRequest<TypeConfig> {
    type Error = RecordError;

    fn try_from(r: TransferLeaderRecord) -> Result<Self, RecordError> {
        Ok(TransferLeaderRequest::new(
            required("transfer leader", r.from_leader)?.into(),
            r.to,
            r.last_log_id.map(LogId::from),
        ))
    }
}

pub fn transfer_reply(reply: &TransferLeaderResponse<TypeConfig>) -> TransferLeaderReplyRecord {
    let outcome = match reply {
        Ok(()) => TransferOutcome::Accepted(()),
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            TransferOutcome::VoteChanged(VotePairRecord {
                expected: Some(expected.into()),
                actual: Some(actual.into()),
            })
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
            TransferOutcome::LogNotFlushed(LogNotFlushedRecord {
                expected: position(expected.as_ref()),
                actual: position(actual.as_ref()),
            })
        }
    };
    TransferLeaderReplyRecord {
        outcome: Some(outcome),
    }
}

pub fn transfer_result(
    r: TransferLeaderReplyRecord,
) -> Result<TransferLeaderResponse<TypeConfig>, RecordError> {
    Ok(match required("transfer leader reply", r.outcome)? {
        TransferOutcome::Accepted(()) => Ok(()),
        TransferOutcome::VoteChanged(pair) => Err(TransferLeaderError::VoteChanged {
            expected: required("transfer leader reply", pair.expected)?.into(),
            actual: required("transfer leader reply", pair.actual)?.into(),
        }),
        TransferOutcome::LogNotFlushed(r) => Err(TransferLeaderError::LogNotFlushed {
            expected: r.expected.map(LogId::from),
            actual: r.actual.map(LogId::from),
        }),
    })
}

/// A membership change a member asks the leader to make (`ChangeMembersRequest.record`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberChangeRecord {
    #[prost(oneof = "MemberChangeKind", tags = "1, 2, 3, 4, 5")]
    pub change: Option<MemberChangeKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MemberChangeKind {
    #[prost(message, tag = "1")]
    Add(AddMemberRecord),
    /// The member's id.
    #[prost(uint64, tag = "2")]
    Remove(u64),
    #[prost(message, tag = "3")]
    UpdatePeerUrls(PeerUrlsRecord),
    /// The learner's id.
    #[prost(uint64, tag = "4")]
    Promote(u64),
    #[prost(message, tag = "5")]
    Publish(PublishRecord),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AddMemberRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, repeated, tag = "2")]
    pub peer_urls: Vec<String>,
    #[prost(bool, tag = "3")]
    pub learner: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerUrlsRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, repeated, tag = "2")]
    pub peer_urls: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub client_urls: Vec<String>,
}

impl From<&MemberChange> for MemberChangeRecord {
    fn from(change: &MemberChange) -> MemberChangeRecord {
        let change = match change.clone() {
            MemberChange::Add {
                id,
                peer_urls,
                learner,
            } => MemberChangeKind::Add(AddMemberRecord {
                id,
                peer_urls,
                learner,
            }),
            MemberChange::Remove { id } => MemberChangeKind::Remove(id),
            MemberChange::UpdatePeerUrls { id, peer_urls } => {
                MemberChangeKind::UpdatePeerUrls(PeerUrlsRecord { id, peer_urls })
            }
            MemberChange::Promote { id } => MemberChangeKind::Promote(id),
            MemberChange::Publish {
                id,
                name,
                client_urls,
            } => MemberChangeKind::Publish(PublishRecord {
                id,
                name,
                client_urls,
            }),
        };
        MemberChangeRecord {
            change: Some(change),
        }
    }
}

impl TryFrom<MemberChangeRecord> for MemberChange {
    type Error = RecordError;

    fn try_from(r: MemberChangeRecord) -> Result<MemberChange, RecordError> {
        Ok(match required("member change", r.change)? {
            MemberChangeKind::Add(a) => MemberChange::Add {
                id: a.id,
                peer_urls: a.peer_urls,
                learner: a.learner,
            },
            MemberChangeKind::Remove(id) => MemberChange::Remove { id },
            MemberChangeKind::UpdatePeerUrls(u) => MemberChange::UpdatePeerUrls {
                id: u.id,
                peer_urls: u.peer_urls,
            },
            MemberChangeKind::Promote(id) => MemberChange::Promote { id },
            MemberChangeKind::Publish(p) => MemberChange::Publish {
                id: p.id,
                name: p.name,
                client_urls: p.client_urls,
            },
        })
    }
}

/// A change as both releases read it: a leader of the previous release reads only `change`.
pub fn change_members_request(change: &MemberChange) -> ChangeMembersRequest {
    ChangeMembersRequest {
        change: super::legacy_wire::encode(&super::legacy_wire::MemberChangeV1::from(change)),
        record: MemberChangeRecord::from(change).encode_to_vec(),
    }
}

/// The change a member asked for: its record, or what a member of the previous release sent.
pub fn requested_change(request: &ChangeMembersRequest) -> Result<MemberChange, RecordError> {
    if request.record.is_empty() {
        let legacy: super::legacy_wire::MemberChangeV1 =
            super::legacy_wire::decode(&request.change)
                .map_err(|e| RecordError::new("member change", e))?;
        return Ok(legacy.into());
    }
    decode::<MemberChangeRecord>("member change", &request.record)?.try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_change() -> Vec<MemberChange> {
        vec![
            MemberChange::Add {
                id: 1,
                peer_urls: vec!["http://a:2380".into()],
                learner: true,
            },
            MemberChange::Remove { id: 2 },
            MemberChange::UpdatePeerUrls {
                id: 3,
                peer_urls: vec!["http://b:2380".into(), "http://c:2380".into()],
            },
            MemberChange::Promote { id: 4 },
            MemberChange::Publish {
                id: 5,
                name: "m5".into(),
                client_urls: vec!["http://d:2379".into()],
            },
        ]
    }

    #[test]
    fn a_member_change_reads_back_from_either_encoding() {
        for change in every_change() {
            let request = change_members_request(&change);
            assert_eq!(requested_change(&request).unwrap(), change);
            let from_previous_release = ChangeMembersRequest {
                change: request.change,
                record: Vec::new(),
            };
            assert_eq!(requested_change(&from_previous_release).unwrap(), change);
        }
    }

    #[test]
    fn the_previous_release_reads_its_own_layout() {
        // bincode 1 of its enum: the variant's index as 4 bytes, then the fields, little-endian.
        let request = change_members_request(&MemberChange::Remove { id: 5 });
        assert_eq!(request.change, [1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        let garbage = ChangeMembersRequest {
            change: vec![9, 9],
            record: Vec::new(),
        };
        assert!(requested_change(&garbage).is_err());
        let empty_record = ChangeMembersRequest {
            change: Vec::new(),
            // A field this release does not know, and no change.
            record: vec![0x30, 0x01],
        };
        assert!(requested_change(&empty_record).is_err());
    }
}
