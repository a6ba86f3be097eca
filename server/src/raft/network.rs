//! Peer transport: gRPC (HTTP/2) connections to the other members' peer URLs.
//!
//! One lazily connected channel per member carries both openraft's messages and the requests
//! a member forwards to the leader. HTTP/2 multiplexes them, so a large snapshot chunk does not
//! hold up heartbeats, and openraft sends up to `max_payload_entries` entries per append.
//! Every call carries the sender's cluster id: a member of another cluster (another
//! `--initial-cluster-token` or membership) is refused, as etcd refuses it.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;

use futures_util::StreamExt;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError,
    StreamAppendResult, TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use oxcd_proto::peerpb::peer_client::PeerClient;
use oxcd_proto::peerpb::{ProbeRequest, RaftMessage, TimeoutNowRequest};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::UnixStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::{member_label, metrics, PeerSeries};
use crate::tls::PeerConnector;

use super::legacy_wire;
use super::snapshot_file;
use super::state_machine::{RaftSnapshot, SnapshotData};
use super::types::{LogId, Member, NodeId, SnapshotMeta, TypeConfig, Vote};
use super::wire::{
    self, AppendReplyRecord, AppendRequestRecord, SnapshotReplyRecord, TransferLeaderRecord,
    TransferLeaderReplyRecord, VoteReplyRecord, VoteRequestRecord,
};

/// Metadata naming the sender's cluster on every peer call.
pub const CLUSTER_ID_HEADER: &str = "x-oxcd-cluster-id";
/// Largest peer message: a batch of appended entries or one snapshot chunk.
pub const MAX_PEER_MESSAGE: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often each member probes the others (etcd's prober interval).
const PROBE_INTERVAL: Duration = Duration::from_secs(4);
/// How soon an unreachable member is tried again; short, so a restarted member rejoins quickly.
const RETRY_UNREACHABLE: Duration = Duration::from_millis(100);
/// How long a member of the previous release is spoken to in its messages before this
/// release's are tried again (it may have been upgraded meanwhile).
const LEGACY_RECHECK: Duration = Duration::from_secs(10);
/// How often a leader handing over to a member of the previous release checks that the
/// member has caught up.
const LEGACY_CATCH_UP_POLL: Duration = Duration::from_millis(5);

pub type Client = PeerClient<InterceptedService<Channel, ClusterStamp>>;

/// Adds the cluster id to outgoing peer calls.
#[derive(Clone)]
pub struct ClusterStamp(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for ClusterStamp {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(CLUSTER_ID_HEADER, self.0.clone());
        Ok(req)
    }
}

/// Connections to the other members, shared by Raft replication and leader forwarding.
pub struct Peers {
    stamp: ClusterStamp,
    tls: Option<PeerConnector>,
    channels: Mutex<HashMap<NodeId, (Vec<String>, Client)>>,
    /// When each member last answered a replication call of this member's (a leader's check
    /// that a quorum still follows it).
    replies: Mutex<HashMap<NodeId, Instant>>,
    /// Whether each member answered this member's last probe.
    reachable: Mutex<HashMap<NodeId, bool>>,
    /// Members that answered a Raft call of this release "unimplemented" (the previous
    /// release), and until when they are spoken to in its messages before trying again.
    legacy: Mutex<HashMap<NodeId, Instant>>,
    /// The last log id each member of the previous release said it holds (its appends'
    /// replies), for a leader transfer to it.
    legacy_matched: Mutex<HashMap<NodeId, LogId>>,
    /// The member of the previous release this leader last told to campaign for a leader
    /// transfer, and until when its vote request counts as part of that transfer.
    legacy_transferee: Mutex<Option<(NodeId, Instant)>>,
}

impl Peers {
    pub fn new(cluster_id: u64, tls: Option<PeerConnector>) -> Peers {
        let stamp = format!("{cluster_id:x}")
            .parse()
            .expect("a hex number is valid metadata");
        Peers {
            stamp: ClusterStamp(stamp),
            tls,
            channels: Mutex::new(HashMap::new()),
            replies: Mutex::new(HashMap::new()),
            reachable: Mutex::new(HashMap::new()),
            legacy: Mutex::new(HashMap::new()),
            legacy_matched: Mutex::new(HashMap::new()),
            legacy_transferee: Mutex::new(None),
        }
    }

    pub(super) fn is_legacy(&self, id: NodeId) -> bool {
        self.legacy
            .lock()
            .get(&id)
            .is_some_and(|until| Instant::now() < *until)
    }

    fn mark_legacy(&self, id: NodeId) {
        tracing::info!(member = %format!("{id:x}"), "the member runs the previous release: speaking its Raft messages");
        self.legacy
            .lock()
            .insert(id, Instant::now() + LEGACY_RECHECK);
    }

    /// Whether `candidate`, a member of the previous release, campaigns because this leader
    /// handed it leadership: its vote request cannot say so itself, as this release's do.
    pub fn is_legacy_transferee(&self, candidate: NodeId) -> bool {
        self.legacy_transferee
            .lock()
            .is_some_and(|(id, until)| id == candidate && Instant::now() < until)
    }

    fn replied(&self, id: NodeId) {
        self.replies.lock().insert(id, Instant::now());
    }

    /// Member `id` answered that it follows this leader, to a beacon sent at `sent`.
    pub fn followed_since(&self, id: NodeId, sent: Instant) {
        let mut replies = self.replies.lock();
        let last = replies.entry(id).or_insert(sent);
        *last = (*last).max(sent);
    }

    /// When member `id` last answered an append, heartbeat or snapshot chunk from this member,
    /// or (when sent) a beacon it answered as a follower.
    pub fn last_reply(&self, id: NodeId) -> Option<Instant> {
        self.replies.lock().get(&id).copied()
    }

    /// Whether member `id` answered this member's last probe.
    pub fn reachable(&self, id: NodeId) -> bool {
        self.reachable.lock().get(&id).copied().unwrap_or(false)
    }

    /// Probes every member of `members` other than `me`, every [`PROBE_INTERVAL`], until
    /// `stopped` resolves: etcd's peer prober, which gives the peer round-trip times and which
    /// peers are active.
    pub async fn probe(
        self: Arc<Self>,
        me: NodeId,
        members: impl Fn() -> Vec<(NodeId, Vec<String>)>,
        stopped: impl Future<Output = ()>,
    ) {
        let mut stopped = std::pin::pin!(stopped);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = &mut stopped => return,
            }
            let probes = members()
                .into_iter()
                .filter(|(id, _)| *id != me)
                .map(|(id, urls)| self.probe_one(id, urls));
            futures_util::future::join_all(probes).await;
        }
    }

    async fn probe_one(&self, id: NodeId, peer_urls: Vec<String>) {
        let sent = Instant::now();
        let answered = self.answers(id, &peer_urls, PROBE_INTERVAL).await;
        if answered {
            metrics()
                .network
                .peer_round_trip_time
                .with_label_values(&[&member_label(id)])
                .observe(sent.elapsed().as_secs_f64());
        }
        self.reachable.lock().insert(id, answered);
    }

    /// Whether member `id` answers a probe within `within`: an active peer, in etcd's words.
    pub async fn answers(&self, id: NodeId, peer_urls: &[String], within: Duration) -> bool {
        let Ok(mut client) = self.client(id, peer_urls) else {
            return false;
        };
        tokio::time::timeout(within, client.probe(ProbeRequest {}))
            .await
            .is_ok_and(|reply| reply.is_ok())
    }

    /// A client for member `id`, reconnecting when its peer URLs changed.
    pub fn client(&self, id: NodeId, peer_urls: &[String]) -> Result<Client, String> {
        let mut channels = self.channels.lock();
        if let Some((urls, client)) = channels.get(&id) {
            if urls == peer_urls {
                return Ok(client.clone());
            }
        }
        let client = self.connect(peer_urls)?;
        channels.insert(id, (peer_urls.to_vec(), client.clone()));
        Ok(client)
    }

    /// A client for an address that is not (yet) a known member, e.g. while joining.
    pub fn connect(&self, peer_urls: &[String]) -> Result<Client, String> {
        let endpoint = peer_endpoint(peer_urls, self.tls.as_ref())?;
        Ok(
            PeerClient::with_interceptor(endpoint.connect_lazy(), self.stamp.clone())
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        )
    }
}

/// A member's first peer URL, dialed through [`PeerConnector`] when it is https://.
pub struct PeerEndpoint {
    endpoint: Endpoint,
    dial: Dial,
}

enum Dial {
    Tcp,
    Tls(PeerConnector),
    Unix(UnixDialer),
}

impl PeerEndpoint {
    pub fn timeout(mut self, timeout: Duration) -> PeerEndpoint {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    pub fn connect_lazy(&self) -> Channel {
        match &self.dial {
            Dial::Tcp => self.endpoint.connect_lazy(),
            Dial::Tls(tls) => self.endpoint.connect_with_connector_lazy(tls.clone()),
            Dial::Unix(unix) => self.endpoint.connect_with_connector_lazy(unix.clone()),
        }
    }

    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.dial {
            Dial::Tcp => self.endpoint.connect().await,
            Dial::Tls(tls) => self.endpoint.connect_with_connector(tls.clone()).await,
            Dial::Unix(unix) => self.endpoint.connect_with_connector(unix.clone()).await,
        }
    }
}

/// An endpoint for a member's first peer URL, over TLS when it is https://, on a Unix socket
/// when it is unix://.
pub fn peer_endpoint(
    peer_urls: &[String],
    tls: Option<&PeerConnector>,
) -> Result<PeerEndpoint, String> {
    let url = peer_urls
        .first()
        .ok_or_else(|| "member has no peer URLs".to_string())?;
    // tonic refuses an https:// URI with a connector of its own making; ours makes the TLS
    // connection, so the channel is given the same authority as http://.
    let (uri, dial) = if let Some(authority) = url.strip_prefix("https://") {
        let tls = tls.ok_or_else(|| {
            format!("peer URL {url} is https:// but --peer-cert-file/--peer-key-file are not set")
        })?;
        (format!("http://{authority}"), Dial::Tls(tls.clone()))
    } else if url.starts_with("unixs://") {
        return Err(format!(
            "peer URL {url}: dialing unixs:// peer URLs is not supported"
        ));
    } else if let Some(path) = crate::listen::unix_socket_path(url) {
        // The connector ignores the URI; `localhost` is the authority grpc-go sends on a socket.
        (
            "http://localhost".to_string(),
            Dial::Unix(UnixDialer(Arc::new(PathBuf::from(path)))),
        )
    } else {
        (url.clone(), Dial::Tcp)
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| format!("invalid peer URL {url:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(PeerEndpoint { endpoint, dial })
}

/// A tower connector for tonic's `Endpoint::connect_with_connector*` that dials a Unix socket.
#[derive(Clone)]
struct UnixDialer(Arc<PathBuf>);

impl tonic::codegen::Service<tonic::codegen::http::Uri> for UnixDialer {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(path.as_path()).await?)) })
    }
}

/// openraft's view of the transport.
pub struct PeerNetwork(pub std::sync::Arc<Peers>);

/// Replication to one member: appends on one gRPC stream, in order, as many in flight as
/// HTTP/2's flow control lets through; heartbeats, votes and snapshots on calls of their own.
pub struct RaftPeer {
    target: NodeId,
    client: Result<Client, String>,
    metered: PeerSeries,
    peers: std::sync::Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> RaftPeer {
        RaftPeer {
            target,
            client: self.0.client(target, &node.peer_urls),
            metered: metrics().network.peer(target),
            peers: self.0.clone(),
        }
    }
}

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

fn network_error(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(e.to_string()))
}

/// A failed call: Unreachable makes openraft back off before retrying; a member of another
/// cluster (FailedPrecondition) will not change its mind either.
fn status_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::Unknown
        | tonic::Code::Cancelled
        | tonic::Code::FailedPrecondition
        | tonic::Code::Unimplemented => unreachable(status),
        _ => network_error(status),
    }
}

fn message<R: prost::Message>(record: &R) -> RaftMessage {
    RaftMessage {
        payload: record.encode_to_vec(),
    }
}

impl RaftPeer {
    fn client(&self) -> RpcResult<Client> {
        self.client.clone().map_err(unreachable)
    }

    /// One request and its reply within `timeout`, counted in the peer series. A member that
    /// does not know the call runs the previous release and is marked so.
    async fn exchange(
        &self,
        request: RaftMessage,
        timeout: Duration,
        send: impl AsyncFnOnce(
            Client,
            RaftMessage,
        ) -> Result<tonic::Response<RaftMessage>, tonic::Status>,
    ) -> RpcResult<Vec<u8>> {
        let client = self.client()?;
        let metered = &self.metered;
        metered.sent_bytes.inc_by(request.payload.len() as u64);
        let reply = tokio::time::timeout(timeout, send(client, request))
            .await
            .map_err(|_| unreachable(format!("member {:x} did not answer in time", self.target)))
            .and_then(|reply| {
                reply.map_err(|status| {
                    if status.code() == tonic::Code::Unimplemented {
                        self.peers.mark_legacy(self.target);
                    }
                    status_error(status)
                })
            })
            .inspect_err(|_| metered.sent_failures.inc())?
            .into_inner()
            .payload;
        metered.received_bytes.inc_by(reply.len() as u64);
        Ok(reply)
    }

    async fn call<Reply: prost::Message + Default>(
        &self,
        request: RaftMessage,
        timeout: Duration,
        send: impl AsyncFnOnce(
            Client,
            RaftMessage,
        ) -> Result<tonic::Response<RaftMessage>, tonic::Status>,
    ) -> RpcResult<Reply> {
        let reply = self.exchange(request, timeout, send).await?;
        wire::decode("Raft reply", &reply)
            .inspect_err(|_| self.metered.received_failures.inc())
            .map_err(network_error)
    }

    /// A call in the previous release's messages.
    async fn legacy_call<Reply: serde::de::DeserializeOwned>(
        &self,
        request: &impl serde::Serialize,
        timeout: Duration,
        send: impl AsyncFnOnce(
            Client,
            RaftMessage,
        ) -> Result<tonic::Response<RaftMessage>, tonic::Status>,
    ) -> RpcResult<Reply> {
        let request = RaftMessage {
            payload: legacy_wire::encode(request),
        };
        let reply = self.exchange(request, timeout, send).await?;
        legacy_wire::decode_ok(&reply)
            .inspect_err(|_| self.metered.received_failures.inc())
            .map_err(network_error)
    }

    fn is_legacy(&self) -> bool {
        self.peers.is_legacy(self.target)
    }

    /// The previous release has no leader transfer; its own MoveLeader told the target to
    /// campaign now (TimeoutNow), and so does this one, once the target holds this leader's
    /// last entry (`leader_last`; the leader took writes until the transfer began, and a
    /// candidate missing some is refused). This leader has given up its lease for the
    /// transfer and grants the target's vote as a transfer's (see
    /// [`Peers::is_legacy_transferee`]), which makes a quorum of three.
    async fn legacy_campaign_now(
        &self,
        leader_last: Option<&LogId>,
        timeout: Duration,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        let deadline = Instant::now() + timeout;
        let matched = || self.peers.legacy_matched.lock().get(&self.target).copied();
        while matched().as_ref() < leader_last {
            if Instant::now() >= deadline {
                return Err(unreachable(format!(
                    "member {:x} did not catch up for the leader transfer",
                    self.target
                )));
            }
            tokio::time::sleep(LEGACY_CATCH_UP_POLL).await;
        }
        let mut client = self.client()?;
        *self.peers.legacy_transferee.lock() = Some((self.target, deadline));
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, client.timeout_now(TimeoutNowRequest {}))
            .await
            .map_err(|_| unreachable(format!("member {:x} did not answer in time", self.target)))?
            .map_err(status_error)?;
        Ok(Ok(()))
    }

    async fn legacy_append(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        let last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let request = legacy_wire::AppendRequest::from(rpc);
        let reply: legacy_wire::AppendReply = self
            .legacy_call(&request, timeout, async |mut c, m| {
                c.append_entries(m).await
            })
            .await?;
        let reply = AppendEntriesResponse::from(reply);
        let holds = match &reply {
            AppendEntriesResponse::Success => last,
            AppendEntriesResponse::PartialSuccess(upto) => *upto,
            _ => None,
        };
        if let Some(holds) = holds {
            let mut matched = self.peers.legacy_matched.lock();
            let known = matched.entry(self.target).or_insert(holds);
            *known = holds.max(*known);
        }
        Ok(reply)
    }

    /// A snapshot for a member of the previous release: the same records under format 1's
    /// header, in openraft 0.9's chunks, each answered with the member's vote.
    async fn legacy_snapshot(
        &self,
        vote: Vote,
        meta: &SnapshotMeta,
        file: std::fs::File,
        timeout: Duration,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let deadline = Instant::now() + timeout;
        let legacy_meta = legacy_wire::snapshot_meta(meta);
        let (records_at, file) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let named = std::path::Path::new("the current snapshot");
            snapshot_file::records_offset(&mut file, named).map(|at| (at, file))
        })
        .await
        .map_err(network_error)?
        .map_err(network_error)?;
        let mut file = tokio::fs::File::from_std(file);
        file.seek(std::io::SeekFrom::Start(records_at))
            .await
            .map_err(network_error)?;
        let mut pending = snapshot_file::format_1_header(&legacy_wire::encode(&legacy_meta));
        let mut offset = 0u64;
        loop {
            let mut done = false;
            while pending.len() < SNAPSHOT_CHUNK {
                let mut more = vec![0; SNAPSHOT_CHUNK - pending.len()];
                let n = file.read(&mut more).await.map_err(network_error)?;
                if n == 0 {
                    done = true;
                    break;
                }
                pending.extend_from_slice(&more[..n]);
            }
            let data = std::mem::take(&mut pending);
            let sent = data.len() as u64;
            let chunk = legacy_wire::SnapshotChunk {
                vote: legacy_wire::vote(&vote),
                meta: legacy_meta.clone(),
                offset,
                data,
                done,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let reply: legacy_wire::SnapshotChunkReply = self
                .legacy_call(&chunk, left, async |mut c, m| c.install_snapshot(m).await)
                .await?;
            self.peers.replied(self.target);
            let theirs = legacy_wire::vote_back(reply.vote);
            if done || theirs > vote {
                return Ok(SnapshotResponse::new(theirs));
            }
            offset += sent;
        }
    }
}

/// The snapshot file in messages of this size.
const SNAPSHOT_CHUNK: usize = 1 << 20;

impl RaftNetworkV2<TypeConfig> for RaftPeer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        let reply = if self.is_legacy() {
            self.legacy_append(rpc, option.hard_ttl()).await?
        } else {
            let request = message(&AppendRequestRecord::from(rpc));
            let reply: AppendReplyRecord = self
                .call(request, option.hard_ttl(), async |mut c, m| {
                    c.append(m).await
                })
                .await?;
            AppendEntriesResponse::try_from(reply).map_err(network_error)?
        };
        if !matches!(reply, AppendEntriesResponse::HigherVote(_)) {
            self.peers.replied(self.target);
        }
        Ok(reply)
    }

    /// Every request goes out on one gRPC stream as soon as openraft yields it; the follower
    /// answers each once it holds the entries, in order. A dead or paused follower is found
    /// by HTTP/2's keep-alive, which ends the stream; a slow one just answers later.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<'s, RpcResult<BoxStream<'s, RpcResult<StreamAppendResult<TypeConfig>>>>>
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + openraft::OptionalSend
            + Unpin
            + 'static,
    {
        if self.is_legacy() {
            // The previous release takes one append per call.
            return openraft::network::stream_append_sequential(self, input, _option);
        }
        Box::pin(async move {
            // The first request is taken before connecting: openraft waits out its backoff
            // (`backoff`, after an unreachable member) while producing a request, and a call
            // refused at connect never asks for one, so a stopped member would be dialled
            // again at once, thousands of times a second.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures_util::stream::empty()) as BoxStream<'s, _>);
            };
            let input = futures_util::stream::once(std::future::ready(first)).chain(input);
            let mut client = self.client()?;
            let sent = self.metered.clone();
            let requests = input.map(move |rpc| {
                let request = message(&AppendRequestRecord::from(rpc));
                sent.sent_bytes.inc_by(request.payload.len() as u64);
                request
            });
            let replies = client
                .append_stream(requests)
                .await
                .inspect_err(|status| {
                    if status.code() == tonic::Code::Unimplemented {
                        self.peers.mark_legacy(self.target);
                    }
                    self.metered.sent_failures.inc();
                    metrics().server.heartbeat_send_failures.inc();
                })
                .map_err(status_error)?
                .into_inner();
            let (target, peers, metered) = (self.target, self.peers.clone(), self.metered.clone());
            let results = replies.map(move |reply| {
                let reply = reply
                    .inspect_err(|_| metrics().server.heartbeat_send_failures.inc())
                    .map_err(status_error)?
                    .payload;
                metered.received_bytes.inc_by(reply.len() as u64);
                let result = wire::decode("stream append reply", &reply)
                    .and_then(wire::stream_result)
                    .inspect_err(|_| metered.received_failures.inc())
                    .map_err(network_error)?;
                if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                    peers.replied(target);
                }
                Ok(result)
            });
            Ok(Box::pin(results) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        if self.is_legacy() {
            let request = legacy_wire::VoteRequestV1::from(&rpc);
            let reply: legacy_wire::VoteReplyV1 = self
                .legacy_call(&request, option.hard_ttl(), async |mut c, m| {
                    c.vote(m).await
                })
                .await?;
            return Ok(reply.into());
        }
        let request = message(&VoteRequestRecord::from(&rpc));
        let reply: VoteReplyRecord = self
            .call(request, option.hard_ttl(), async |mut c, m| {
                c.request_vote(m).await
            })
            .await?;
        VoteResponse::try_from(reply).map_err(network_error)
    }

    /// The snapshot file goes out on one client stream, an offer (vote and metadata) first;
    /// the reply comes once the follower has installed it. The state machine's store is dumped
    /// to the file first, and the offer names where the dump stands.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: RaftSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut cancel = std::pin::pin!(cancel);
        let (meta, file) = match snapshot.snapshot {
            SnapshotData::File(file) => (snapshot.meta, file),
            SnapshotData::State(state) => tokio::select! {
                written = state.write() => written.map_err(network_error)?,
                closed = cancel.as_mut() => return Err(closed.into()),
            },
            SnapshotData::Received => {
                return Err(network_error("only this member's own snapshot can be sent").into())
            }
        };
        if self.is_legacy() {
            let sending = self.legacy_snapshot(vote, &meta, file, option.hard_ttl());
            return tokio::select! {
                reply = sending => reply,
                closed = cancel => Err(closed.into()),
            };
        }
        let mut client = self.client()?;
        let offer = message(&wire::snapshot_offer(&vote, &meta));
        let metered = self.metered.clone();
        let chunks = futures_util::stream::unfold(
            Some(tokio::fs::File::from_std(file)),
            |file| async move {
                let mut file = file?;
                let mut chunk = vec![0; SNAPSHOT_CHUNK];
                let n = file.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
                chunk.truncate(n);
                Some((RaftMessage { payload: chunk }, Some(file)))
            },
        );
        let messages = futures_util::stream::once(async { offer })
            .chain(chunks)
            .inspect(move |m| metered.sent_bytes.inc_by(m.payload.len() as u64));
        let sent = tokio::time::timeout(option.hard_ttl(), client.send_snapshot(messages));
        let reply = tokio::select! {
            reply = sent => reply,
            closed = cancel => return Err(closed.into()),
        };
        self.peers.replied(self.target);
        let reply = reply
            .map_err(|_| unreachable("the snapshot was not installed in time"))?
            .inspect_err(|status| {
                if status.code() == tonic::Code::Unimplemented {
                    self.peers.mark_legacy(self.target);
                }
                self.metered.sent_failures.inc();
            })
            .map_err(status_error)?
            .into_inner()
            .payload;
        let reply: SnapshotReplyRecord =
            wire::decode("snapshot reply", &reply).map_err(network_error)?;
        Ok(SnapshotResponse::try_from(reply).map_err(network_error)?)
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        // Sent even to a member spoken to in the previous release's messages: that mark lasts
        // LEGACY_RECHECK, and a member upgraded meanwhile (the usual target of a MoveLeader
        // during a rolling upgrade) takes the transfer.
        let request = message(&TransferLeaderRecord::from(&rpc));
        let reply: RpcResult<TransferLeaderReplyRecord> = self
            .call(request, option.hard_ttl(), async |mut c, m| {
                c.transfer_leader(m).await
            })
            .await;
        match reply {
            Ok(reply) => wire::transfer_result(reply).map_err(network_error),
            Err(_) if self.is_legacy() && *rpc.to_node_id() == self.target => {
                self.legacy_campaign_now(rpc.last_log_id(), option.hard_ttl())
                    .await
            }
            Err(e) => Err(e),
        }
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(RETRY_UNREACHABLE)))
    }
}
