//! The peer service on the peer URLs: Raft messages between members, and what members forward
//! to the leader. Calls from another cluster are refused before they reach Raft.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;

use oxcd_proto::peerpb::{
    discovery_server::Discovery, peer_server::Peer, ChangeMembersReply, ChangeMembersRequest,
    HashKvReply, HashKvRequest, HoldElectionsReply, HoldElectionsRequest, LeaderBeaconReply,
    LeaderBeaconRequest, LeaseRenewReply, LeaseRenewRequest, LeaseTimeToLiveReply,
    LeaseTimeToLiveRequest, MemberEntry, MembersReply, MembersRequest, PreVoteReply,
    PreVoteRequest, ProbeReply, ProbeRequest, ProposeReply, ProposeRequest, RaftMessage,
    ReadIndexReply, ReadIndexRequest, RemovedReply, RemovedRequest, TimeoutNowReply,
    TimeoutNowRequest,
};
use tonic::{Request, Response, Status, Streaming};

use crate::downgrade::Downgrade;
use crate::error::EtcdError;
use crate::lease::LeaseService;
use crate::mvcc::MvccStore;
use crate::raft::{requested_change, Consensus, InboundError, CLUSTER_ID_HEADER};
use crate::replication::failure;
use crate::storage::off_runtime;

pub struct PeerApi {
    pub consensus: Arc<Consensus>,
    pub leases: Arc<LeaseService>,
    pub store: Arc<MvccStore>,
}

/// Refuses calls stamped with another cluster's id (etcd: "request cluster ID mismatch").
#[derive(Clone)]
pub struct ClusterCheck {
    cluster_id: u64,
    last_logged: Arc<parking_lot::Mutex<Option<Instant>>>,
}

/// A misconfigured peer keeps calling; say so at most this often.
const MISMATCH_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ClusterCheck {
    pub fn new(cluster_id: u64) -> ClusterCheck {
        ClusterCheck {
            cluster_id,
            last_logged: Default::default(),
        }
    }

    fn should_log(&self) -> bool {
        let mut last = self.last_logged.lock();
        let due = last.is_none_or(|t| t.elapsed() >= MISMATCH_LOG_INTERVAL);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

impl tonic::service::Interceptor for ClusterCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let theirs = req
            .metadata()
            .get(CLUSTER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u64::from_str_radix(v, 16).ok());
        match theirs {
            Some(id) if id == self.cluster_id => Ok(req),
            Some(id) => {
                if self.should_log() {
                    tracing::warn!(
                    local = %format!("{:x}", self.cluster_id),
                    remote = %format!("{id:x}"),
                        "refused a peer of another cluster: request cluster ID mismatch"
                    );
                }
                Err(Status::failed_precondition("request cluster ID mismatch"))
            }
            None => Err(Status::failed_precondition("request carries no cluster ID")),
        }
    }
}

fn raft_reply(result: Result<Vec<u8>, InboundError>) -> Result<Response<RaftMessage>, Status> {
    result
        .map(|payload| Response::new(RaftMessage { payload }))
        .map_err(|e| match e {
            InboundError::Stopped(_) => Status::unavailable(e.to_string()),
            InboundError::Snapshot(_) => Status::internal(e.to_string()),
            InboundError::Undecodable(_) | InboundError::Legacy(_) => {
                Status::invalid_argument(e.to_string())
            }
        })
}

type RaftMessages = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Peer for PeerApi {
    async fn append(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        raft_reply(
            self.consensus
                .handle_append(&req.into_inner().payload)
                .await,
        )
    }

    async fn append_stream(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftMessages>, Status> {
        let replies = self.consensus.handle_append_stream(req.into_inner());
        Ok(Response::new(Box::pin(replies)))
    }

    async fn request_vote(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        raft_reply(self.consensus.handle_vote(&req.into_inner().payload).await)
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftMessage>, Status> {
        raft_reply(self.consensus.receive_snapshot(req.into_inner()).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        raft_reply(
            self.consensus
                .handle_transfer_leader(&req.into_inner().payload)
                .await,
        )
    }

    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        raft_reply(
            self.consensus
                .handle_legacy_append(&req.into_inner().payload)
                .await,
        )
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        raft_reply(
            self.consensus
                .handle_legacy_vote(&req.into_inner().payload)
                .await,
        )
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        raft_reply(
            self.consensus
                .handle_legacy_snapshot_chunk(&req.into_inner().payload)
                .await,
        )
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        let batch = prost::Message::decode(req.into_inner().batch.as_slice())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let reply = match self.consensus.propose_forwarded(batch).await {
            Ok(outcomes) => ProposeReply {
                failure: None,
                outcomes: prost::Message::encode_to_vec(&outcomes),
            },
            Err(f) => ProposeReply {
                failure: Some(f),
                outcomes: Vec::new(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let reply = match self.consensus.leader_link().read_index_local().await {
            Ok(index) => ReadIndexReply {
                failure: None,
                index,
            },
            Err(f) => ReadIndexReply {
                failure: Some(f),
                index: 0,
            },
        };
        Ok(Response::new(reply))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseRenewRequest>,
    ) -> Result<Response<LeaseRenewReply>, Status> {
        let reply = match self.leases.renew_here(req.into_inner().id).await {
            Ok(ttl) => LeaseRenewReply { failure: None, ttl },
            Err(f) => LeaseRenewReply {
                failure: Some(f),
                ttl: 0,
            },
        };
        Ok(Response::new(reply))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveReply>, Status> {
        let r = req.into_inner();
        let reply = match self.leases.time_to_live_here(r.id, r.keys).await {
            Ok(Some(info)) => LeaseTimeToLiveReply {
                failure: None,
                found: true,
                ttl: info.ttl,
                granted_ttl: info.granted_ttl,
                keys: info.keys,
            },
            Ok(None) => LeaseTimeToLiveReply::default(),
            Err(f) => LeaseTimeToLiveReply {
                failure: Some(f),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn change_members(
        &self,
        req: Request<ChangeMembersRequest>,
    ) -> Result<Response<ChangeMembersReply>, Status> {
        let change = match requested_change(&req.into_inner()) {
            Ok(c) => c,
            Err(_) => {
                return Ok(Response::new(ChangeMembersReply {
                    failure: Some(failure(EtcdError::Corrupt)),
                }))
            }
        };
        let failure = self.consensus.change_members_here(&change).await.err();
        Ok(Response::new(ChangeMembersReply { failure }))
    }

    async fn pre_vote(
        &self,
        req: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteReply>, Status> {
        let req = req.into_inner();
        let granted = self
            .consensus
            .pre_vote(&req.last_log_position, &req.last_log_id)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(PreVoteReply { granted }))
    }

    async fn leader_beacon(
        &self,
        req: Request<LeaderBeaconRequest>,
    ) -> Result<Response<LeaderBeaconReply>, Status> {
        let req = req.into_inner();
        let following = self.consensus.leader_beacon(req.term, req.leader);
        Ok(Response::new(LeaderBeaconReply { following }))
    }

    async fn timeout_now(
        &self,
        _req: Request<TimeoutNowRequest>,
    ) -> Result<Response<TimeoutNowReply>, Status> {
        self.consensus.campaign().await;
        Ok(Response::new(TimeoutNowReply {}))
    }

    async fn removed(
        &self,
        _req: Request<RemovedRequest>,
    ) -> Result<Response<RemovedReply>, Status> {
        tracing::warn!("the leader removed this member from the cluster");
        self.consensus.mark_removed();
        Ok(Response::new(RemovedReply {}))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeReply>, Status> {
        Ok(Response::new(ProbeReply {}))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvReply>, Status> {
        let store = self.store.clone();
        let revision = req.into_inner().revision;
        let reply = match off_runtime(EtcdError::Stopped, move || store.hash_kv(revision)).await {
            Ok((hash, hash_revision, compact_revision)) => HashKvReply {
                failure: None,
                hash,
                hash_revision,
                compact_revision,
            },
            Err(e) => HashKvReply {
                failure: Some(failure(e)),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn hold_elections(
        &self,
        req: Request<HoldElectionsRequest>,
    ) -> Result<Response<HoldElectionsReply>, Status> {
        self.consensus.hold_elections(req.into_inner().hold);
        Ok(Response::new(HoldElectionsReply {}))
    }
}

/// Tells a joining member who is in the cluster (and the cluster's id).
pub struct DiscoveryApi {
    pub consensus: Arc<Consensus>,
    pub cluster_id: u64,
    pub downgrade: Arc<Downgrade>,
}

#[tonic::async_trait]
impl Discovery for DiscoveryApi {
    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersReply>, Status> {
        let members = self
            .consensus
            .members()
            .into_iter()
            .map(|m| MemberEntry {
                id: m.id,
                name: m.member.name,
                peer_urls: m.member.peer_urls,
                client_urls: m.member.client_urls,
                learner: m.learner,
            })
            .collect();
        Ok(Response::new(MembersReply {
            cluster_id: self.cluster_id,
            members,
            cluster_version: self.downgrade.cluster_version().to_string(),
            downgrade_enabled: self.downgrade.info().enabled,
        }))
    }
}
