//! Raft messages from the other members, decoded from [`super::wire`] records and handed to
//! openraft; what the election module learns from them (a live leader, a snapshot arriving) is
//! noted on the way.

use futures_util::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendError};
use oxcd_proto::peerpb::RaftMessage;
use prost::Message;

use super::legacy_wire;
use super::snapshot_file::ReceivingFile;
use super::state_machine::{RaftSnapshot, SnapshotData};
use super::types::{NodeId, TypeConfig, WatchReceiver};
use super::wire::{
    self, AppendReplyRecord, AppendRequestRecord, SnapshotOfferRecord, SnapshotReplyRecord,
    TransferLeaderRecord, VoteReplyRecord, VoteRequestRecord,
};
use super::Consensus;

/// Why a message was not handled; the peer service answers it as a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("{0}")]
    Undecodable(#[from] super::record::RecordError),
    #[error("Raft has stopped: {0}")]
    Stopped(String),
    #[error("receiving the snapshot: {0}")]
    Snapshot(#[from] std::io::Error),
    #[error(transparent)]
    Legacy(#[from] legacy_wire::LegacyError),
}

/// Writes of a received snapshot, off the async workers.
async fn on_disk<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    crate::storage::off_runtime(std::io::Error::other("shutting down"), work).await
}

/// The sender of a message, as its vote names it.
fn sender(vote: &super::types::Vote) -> NodeId {
    vote.leader_id.node_id
}

/// etcd's peer traffic series, on the answering side.
fn count_answered(from: NodeId, request: usize, reply: usize) {
    let peer = crate::metrics::metrics().network.peer(from);
    peer.received_bytes.inc_by(request as u64);
    peer.sent_bytes.inc_by(reply as u64);
}

impl Consensus {
    /// A deposed leader's appends are refused and are no sign of a live leader.
    fn note_append(&self, reply: &AppendEntriesResponse<TypeConfig>) {
        if !matches!(reply, AppendEntriesResponse::HigherVote(_)) {
            self.elections.leader_heard();
        }
    }

    /// An append, in whichever release's encoding it came: handed to openraft, the reply
    /// encoded by `encode` and counted.
    async fn answer_append(
        &self,
        request: AppendEntriesRequest<TypeConfig>,
        received: usize,
        encode: impl FnOnce(&AppendEntriesResponse<TypeConfig>) -> Vec<u8>,
    ) -> Result<Vec<u8>, InboundError> {
        let from = sender(&request.vote);
        let reply = self
            .raft
            .append_entries(request)
            .await
            .map_err(|e| InboundError::Stopped(e.to_string()))?;
        self.note_append(&reply);
        let reply = encode(&reply);
        count_answered(from, received, reply.len());
        Ok(reply)
    }

    pub async fn handle_append(&self, payload: &[u8]) -> Result<Vec<u8>, InboundError> {
        let record: AppendRequestRecord = wire::decode("append", payload)?;
        let request = AppendEntriesRequest::try_from(record)?;
        self.answer_append(request, payload.len(), |reply| {
            AppendReplyRecord::from(reply).encode_to_vec()
        })
        .await
    }

    /// The follower's side of pipelined replication: each reply once its entries are flushed,
    /// in the order the requests came. The stream ends at the first undecodable request.
    pub fn handle_append_stream<S>(
        &self,
        requests: S,
    ) -> impl Stream<Item = Result<RaftMessage, tonic::Status>> + Send + 'static + use<'_, S>
    where
        S: Stream<Item = Result<RaftMessage, tonic::Status>> + Send + 'static,
    {
        let sizes = std::sync::Arc::new(parking_lot::Mutex::new(std::collections::VecDeque::new()));
        let received = sizes.clone();
        let requests = requests
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(move |r| {
                let request = r.ok().and_then(|m| {
                    let record: AppendRequestRecord = wire::decode("append", &m.payload).ok()?;
                    let request = AppendEntriesRequest::try_from(record).ok()?;
                    received
                        .lock()
                        .push_back((sender(&request.vote), m.payload.len()));
                    Some(request)
                });
                std::future::ready(request)
            });
        let elections = self.elections.clone();
        // Straight from openraft's reply stream to the gRPC response, with no task between:
        // each hand-off is a thread wake-up on every append.
        self.raft
            .stream_append(requests)
            .map(move |result| {
                result
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))
                    .map(|result| {
                        if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                            elections.leader_heard();
                        }
                        let payload = wire::stream_reply(&result).encode_to_vec();
                        if let Some((from, request)) = sizes.lock().pop_front() {
                            count_answered(from, request, payload.len());
                        }
                        RaftMessage { payload }
                    })
            })
            // The stream ends with its first failure.
            .scan(false, |failed, reply| {
                let answer = (!*failed).then_some(reply);
                *failed = answer.as_ref().is_some_and(Result::is_err);
                std::future::ready(answer)
            })
    }

    pub async fn handle_vote(&self, payload: &[u8]) -> Result<Vec<u8>, InboundError> {
        let record: VoteRequestRecord = wire::decode("vote", payload)?;
        let request = openraft::raft::VoteRequest::try_from(record)?;
        let from = sender(&request.vote);
        let reply = self
            .raft
            .vote(request)
            .await
            .map_err(|e| InboundError::Stopped(e.to_string()))?;
        let reply = VoteReplyRecord::from(&reply).encode_to_vec();
        count_answered(from, payload.len(), reply.len());
        Ok(reply)
    }

    /// A whole snapshot from the leader: written to `snap/receiving.snap`, then installed.
    /// One at a time: a leader that retries waits for its earlier attempt.
    pub async fn receive_snapshot(
        &self,
        mut messages: impl Stream<Item = Result<RaftMessage, tonic::Status>> + Unpin,
    ) -> Result<Vec<u8>, InboundError> {
        let _one_at_a_time = self.receiving.lock().await;
        let cut_short = || std::io::Error::other("the snapshot stream ended early");
        let first = messages.next().await.ok_or_else(cut_short)?;
        let first = first.map_err(std::io::Error::other)?;
        let offer: SnapshotOfferRecord = wire::decode("snapshot offer", &first.payload)?;
        let (vote, meta) = wire::snapshot_offered(offer)?;
        let from = sender(&vote);
        self.elections.snapshot_chunk_arrived();
        let mut received = first.payload.len();
        let path = self.receiving_path.clone();
        let mut file = on_disk(move || ReceivingFile::open(&path, 0)).await?;
        while let Some(chunk) = messages.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            self.elections.snapshot_chunk_arrived();
            received += chunk.payload.len();
            file = on_disk(move || {
                file.write_piece(&chunk.payload)?;
                Ok(file)
            })
            .await?;
        }
        file.finish();
        let snapshot = RaftSnapshot {
            meta,
            snapshot: SnapshotData::Received,
        };
        let reply = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| InboundError::Stopped(e.to_string()))?;
        let reply = SnapshotReplyRecord::from(&reply).encode_to_vec();
        count_answered(from, received, reply.len());
        Ok(reply)
    }

    pub async fn handle_transfer_leader(&self, payload: &[u8]) -> Result<Vec<u8>, InboundError> {
        let record: TransferLeaderRecord = wire::decode("transfer leader", payload)?;
        let request = openraft::raft::TransferLeaderRequest::try_from(record)?;
        let reply = self
            .raft
            .handle_transfer_leader(request)
            .await
            .map_err(|e| InboundError::Stopped(e.to_string()))?;
        Ok(wire::transfer_reply(&reply).encode_to_vec())
    }
}

/// The previous release's messages (see [`super::legacy_wire`]).
impl Consensus {
    pub async fn handle_legacy_append(&self, payload: &[u8]) -> Result<Vec<u8>, InboundError> {
        let request: legacy_wire::AppendRequest = legacy_wire::decode(payload)?;
        let request = AppendEntriesRequest::try_from(request)?;
        self.answer_append(request, payload.len(), |reply| {
            legacy_wire::encode_ok(&legacy_wire::AppendReply::from(reply))
        })
        .await
    }

    pub async fn handle_legacy_vote(&self, payload: &[u8]) -> Result<Vec<u8>, InboundError> {
        let request: legacy_wire::VoteRequestV1 = legacy_wire::decode(payload)?;
        let mut request = openraft::raft::VoteRequest::from(request);
        let from = sender(&request.vote);
        // The member this leader handed leadership to campaigns with its leave, which this
        // release's candidates say in the request and the previous release's cannot.
        request.leadership_transfer = self.link.peers.is_legacy_transferee(from);
        let reply = self
            .raft
            .vote(request)
            .await
            .map_err(|e| InboundError::Stopped(e.to_string()))?;
        let reply = legacy_wire::encode_ok(&legacy_wire::VoteReplyV1::from(&reply));
        count_answered(from, payload.len(), reply.len());
        Ok(reply)
    }

    /// openraft 0.9 sends a snapshot in chunks, each at its offset in the file: they are
    /// written to `snap/receiving.snap` as they come, and the last one installs it.
    pub async fn handle_legacy_snapshot_chunk(
        &self,
        payload: &[u8],
    ) -> Result<Vec<u8>, InboundError> {
        let chunk: legacy_wire::SnapshotChunk = legacy_wire::decode(payload)?;
        let vote = legacy_wire::vote_back(chunk.vote);
        let from = sender(&vote);
        self.elections.snapshot_chunk_arrived();
        let _one_at_a_time = self.receiving.lock().await;
        let path = self.receiving_path.clone();
        let (offset, data) = (chunk.offset, chunk.data);
        on_disk(move || {
            let mut file = ReceivingFile::open(&path, offset)?;
            file.write_piece(&data)?;
            file.finish();
            Ok(())
        })
        .await?;
        let answered_vote = if chunk.done {
            let snapshot = RaftSnapshot {
                meta: legacy_wire::snapshot_meta_back(chunk.meta)?,
                snapshot: SnapshotData::Received,
            };
            self.raft
                .install_full_snapshot(vote, snapshot)
                .await
                .map_err(|e| InboundError::Stopped(e.to_string()))?
                .vote
        } else {
            self.raft.metrics().borrow_watched().vote
        };
        let reply = legacy_wire::encode_ok(&legacy_wire::SnapshotChunkReply {
            vote: legacy_wire::vote(&answered_vote),
        });
        count_answered(from, payload.len(), reply.len());
        Ok(reply)
    }
}
