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

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use oxcd_proto::peerpb::peer_client::PeerClient;
use oxcd_proto::peerpb::{ProbeRequest, RaftMessage};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::{member_label, metrics, PeerSeries};
use crate::tls::PeerConnector;

use super::types::{LogId, Member, NodeId, TypeConfig};

/// Metadata naming the sender's cluster on every peer call.
pub const CLUSTER_ID_HEADER: &str = "x-oxcd-cluster-id";
/// Largest peer message: a batch of appended entries or one snapshot chunk.
pub const MAX_PEER_MESSAGE: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Entry bytes per append message (at least one entry is always sent).
const MAX_APPEND_BYTES: u64 = 2 << 20;
/// How long a large append may take over a slow link before it is given up for good.
const APPEND_GIVE_UP: Duration = Duration::from_secs(60);
/// How long a heartbeat's reply is waited for: one later than this is of no use to the
/// leader's quorum check, which looks back one election timeout.
const HEARTBEAT_GIVE_UP: Duration = Duration::from_secs(2);
/// How often each member probes the others (etcd's prober interval).
const PROBE_INTERVAL: Duration = Duration::from_secs(4);
/// How soon an unreachable member is tried again; short, so a restarted member rejoins quickly.
const RETRY_UNREACHABLE: Duration = Duration::from_millis(100);

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
        }
    }

    fn replied(&self, id: NodeId) {
        self.replies.lock().insert(id, Instant::now());
    }

    /// When member `id` last answered an append, heartbeat or snapshot chunk from this member.
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
        let Ok(mut client) = self.client(id, &peer_urls) else {
            return;
        };
        let sent = Instant::now();
        let answered = tokio::time::timeout(PROBE_INTERVAL, client.probe(ProbeRequest {}))
            .await
            .is_ok_and(|reply| reply.is_ok());
        if answered {
            metrics()
                .network
                .peer_round_trip_time
                .with_label_values(&[&member_label(id)])
                .observe(sent.elapsed().as_secs_f64());
        }
        self.reachable.lock().insert(id, answered);
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

pub struct RaftPeer {
    target: NodeId,
    client: Result<Client, String>,
    metered: PeerSeries,
    peers: std::sync::Arc<Peers>,
    /// An append still on its way after openraft gave up waiting for it (see `append_entries`).
    in_flight: Option<InFlightAppend>,
}

/// An append of entries, sent in a task of its own so that openraft's timeout does not cancel
/// it: the next attempt from the same position waits for it instead of sending it all again.
struct InFlightAppend {
    vote: openraft::Vote<NodeId>,
    prev_log_id: Option<LogId>,
    /// The last entry it carries.
    last_sent: Option<LogId>,
    reply: AppendTask,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> RaftPeer {
        RaftPeer {
            target,
            client: self.0.client(target, &node.peer_urls),
            metered: metrics().network.peer(target),
            peers: self.0.clone(),
            in_flight: None,
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, E>>;

impl RaftPeer {
    /// The client for the member and `request` encoded.
    fn prepare<Req: Serialize, E: std::error::Error>(
        &self,
        request: &Req,
    ) -> Result<(Client, Vec<u8>), RPCError<NodeId, Member, E>> {
        let client = self
            .client
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let payload =
            bincode::serialize(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        Ok((client, payload))
    }

    /// Sends one bincode-encoded openraft request; the reply is the remote `Result` as is.
    async fn call<Req, Resp, E>(
        &self,
        request: &Req,
        option: &RPCOption,
        send: impl AsyncFnOnce(
            Client,
            RaftMessage,
        ) -> Result<tonic::Response<RaftMessage>, tonic::Status>,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let (client, payload) = self.prepare(request)?;
        peer_call(
            self.target,
            &self.metered,
            client,
            payload,
            option.hard_ttl(),
            send,
        )
        .await
    }

    /// An append in a task of its own, given up only after `give_up`; the member's reply is
    /// noted for the leader's quorum check whenever it comes.
    fn spawn_append(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        give_up: Duration,
    ) -> Result<AppendTask, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let (client, payload) = self.prepare(rpc)?;
        let (target, peers, metered) = (self.target, self.peers.clone(), self.metered.clone());
        let heartbeat = rpc.entries.is_empty();
        Ok(tokio::spawn(async move {
            let reply = peer_call(
                target,
                &metered,
                client,
                payload,
                give_up,
                async |mut c, m| c.append_entries(m).await,
            )
            .await;
            if heartbeat && reply.is_err() {
                metrics().server.heartbeat_send_failures.inc();
            }
            Ok(heard(&peers, target, reply?))
        }))
    }
}

type AppendTask =
    tokio::task::JoinHandle<RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>;

/// One peer call of a bincode-encoded payload, within `timeout`.
async fn peer_call<Resp, E>(
    target: NodeId,
    metered: &PeerSeries,
    client: Client,
    payload: Vec<u8>,
    timeout: Duration,
    send: impl AsyncFnOnce(Client, RaftMessage) -> Result<tonic::Response<RaftMessage>, tonic::Status>,
) -> RpcResult<Resp, E>
where
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    metered.sent_bytes.inc_by(payload.len() as u64);
    let reply = tokio::time::timeout(timeout, send(client, RaftMessage { payload }))
        .await
        .inspect_err(|_| metered.sent_failures.inc())
        .map_err(|_| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("member {target:x} did not answer in time"),
            )))
        })?
        .inspect_err(|_| metered.sent_failures.inc())
        .map_err(|status| match status.code() {
            // Unreachable makes openraft back off before retrying; a member of another
            // cluster (FailedPrecondition) will not change its mind either.
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::FailedPrecondition => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
    let reply = reply.into_inner().payload;
    metered.received_bytes.inc_by(reply.len() as u64);
    let result: Result<Resp, E> = bincode::deserialize(&reply)
        .inspect_err(|_| metered.received_failures.inc())
        .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    result.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

/// Notes a reply from member `target`: a higher vote means this leader was deposed, anything
/// else that the member still follows it.
fn heard(
    peers: &Peers,
    target: NodeId,
    reply: AppendEntriesResponse<NodeId>,
) -> AppendEntriesResponse<NodeId> {
    if !matches!(reply, AppendEntriesResponse::HigherVote(_)) {
        peers.replied(target);
    }
    reply
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    /// openraft gives an append one heartbeat interval, however many entries it carries, and
    /// cancels it after that. Over a slow link (or to a follower slow to fsync) a large entry
    /// could then never arrive: every attempt would be cancelled part way and sent again from
    /// the start. So entries are sent a bounded prefix at a time (the follower's success counts
    /// for that prefix, a partial success, and openraft sends the rest next), and each send
    /// runs in a task of its own that openraft's timeout does not cancel: the next attempt from
    /// the same position waits for it rather than starting over. Heartbeats (no entries) go out
    /// on their own meanwhile, so the follower keeps hearing from its leader.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        _openraft_timeout: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        if rpc.entries.is_empty() {
            // Its reply counts for the leader's quorum check even when it comes after openraft
            // stopped waiting (a round trip longer than openraft's interval).
            return self
                .spawn_append(&rpc, HEARTBEAT_GIVE_UP)?
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        }
        let asked_up_to = rpc.entries.last().map(|e| e.log_id);
        let resumable = self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.vote == rpc.vote && f.prev_log_id == rpc.prev_log_id);
        if !resumable {
            if let Some(stale) = self.in_flight.take() {
                stale.reply.abort();
            }
            let keep = entries_within(&rpc.entries, MAX_APPEND_BYTES);
            rpc.entries.truncate(keep);
            self.in_flight = Some(InFlightAppend {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                last_sent: rpc.entries.last().map(|e| e.log_id),
                reply: self.spawn_append(&rpc, APPEND_GIVE_UP)?,
            });
        }
        let flight = self.in_flight.as_mut().expect("set above");
        // If openraft's timeout drops this future here, the task goes on and is found again.
        let reply = (&mut flight.reply).await;
        let sent = flight.last_sent;
        self.in_flight = None;
        let reply = reply.map_err(|e| RPCError::Network(NetworkError::new(&e)))??;
        Ok(match reply {
            // The follower has what was sent; a retry may have asked for more, or less.
            AppendEntriesResponse::Success if sent < asked_up_to => {
                AppendEntriesResponse::PartialSuccess(sent)
            }
            other => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let reply: InstallSnapshotResponse<NodeId> = self
            .call(&rpc, &option, async |mut c, m| c.install_snapshot(m).await)
            .await?;
        // A higher vote in the reply means this leader was deposed.
        if reply.vote <= rpc.vote {
            self.peers.replied(self.target);
        }
        Ok(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(&rpc, &option, async |mut c, m| c.vote(m).await)
            .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(RETRY_UNREACHABLE))
    }
}

/// How many of `entries`, from the first, fit in `budget` bytes (never fewer than one).
fn entries_within(entries: &[super::types::Entry], budget: u64) -> usize {
    let mut used = 0;
    for (i, entry) in entries.iter().enumerate() {
        used += bincode::serialized_size(entry).unwrap_or(u64::MAX);
        if used > budget {
            return i.max(1);
        }
    }
    entries.len()
}
