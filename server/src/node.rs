//! One oxcd member: storage, MVCC, consensus and the client API wired together. Embeddable:
//! a Rust program can start a member in-process with [`Node::start`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use oxcd_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use oxcd_proto::peerpb::{
    discovery_client::DiscoveryClient, discovery_server::DiscoveryServer, peer_server::PeerServer,
    MembersRequest,
};
use oxcd_proto::v3electionpb::election_server::ElectionServer;
use oxcd_proto::v3lockpb::lock_server::LockServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::codegen::{http, Service};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;

use crate::alarm::{Alarms, Quota};
use crate::api::{
    AuthApi, ClientRoutes, ClusterApi, ClusterCheck, DiscoveryApi, ElectionApi, GrpcWire,
    HeaderFiller, KvApi, LeaderGuard, LeaderMonitor, LearnerGate, LeaseApi, LockApi,
    MaintenanceApi, PeerApi, WatchApi,
};
use crate::apply::Applier;
use crate::auth::{AuthService, AuthStore};
use crate::cluster;
use crate::concurrency::Contention;
use crate::config::{ClusterState, Config};
use crate::downgrade::Downgrade;
use crate::http::{ConnectionSettings, Gateway, GrpcCall, Router};
use crate::kv::KvService;
use crate::lease::{LeaseService, Lessor};
use crate::listen::{is_tls, Listener};
use crate::metrics::GrpcMetered;
use crate::mvcc::MvccStore;
use crate::raft::{
    peer_endpoint, Consensus, Member, MemberChange, Peers, RaftOptions, MAX_PEER_MESSAGE,
};
use crate::storage::{Cf, Engine, OpenOptions, WriteBatch};
use crate::watch::WatchHub;

/// gRPC's receive limit sits this far above the request limit, so an oversized request gets
/// etcd's "request is too large" rather than a transport error (etcd does the same).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
const IDENTITY_KEY: &[u8] = b"identity";
/// The membership a data dir made by `snapshot restore` bootstraps its new cluster with; present
/// until its first start has put the restored store into a Raft snapshot.
const RESTORED_MEMBERSHIP_KEY: &[u8] = b"restored_membership";
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long shutting down waits for the last users of the engine.
const ENGINE_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member started with `--initial-cluster-state existing` tries to reach the cluster.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A running member: serving clients and peers on its listen URLs until
/// [`shutdown`](Node::shutdown).
pub struct Node {
    member_id: u64,
    cluster_id: u64,
    client_addrs: Vec<SocketAddr>,
    consensus: Arc<Consensus>,
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

impl Node {
    /// Starts a member as `oxcd` with `config`'s flags would: opens (or creates) the data dir,
    /// joins or bootstraps the cluster, and returns once the member serves clients on every
    /// client URL. Must run inside a multi-threaded tokio runtime. Fails, without serving, on a
    /// flag oxcd refuses, a data dir another process holds, or a listen URL that cannot be
    /// bound.
    pub async fn start(config: &Config) -> anyhow::Result<Node> {
        config.refuse_unsupported()?;
        let auto_compaction = config.auto_compaction()?;
        let tokens = config.auth_tokens()?;
        let gates = &config.feature_gates;
        let tls = crate::tls::client_acceptor(config)?;
        let peer_tls = crate::tls::peer_acceptor(config)?;
        let peer_connector = crate::tls::peer_connector(config)?;
        let initial = cluster::parse_initial_cluster(&config.initial_cluster())
            .map_err(anyhow::Error::msg)?;
        let me = initial
            .iter()
            .find(|m| m.name == config.name)
            .with_context(|| format!("--initial-cluster has no member named {:?}", config.name))?;

        let data_dir = config.data_dir();
        if config.unsafe_no_fsync {
            tracing::warn!(
                data_dir = %data_dir.display(),
                "--unsafe-no-fsync is set: the Raft log and the store are never fsynced, so a \
                 power loss or OS crash loses acknowledged writes and may break the guarantees \
                 of the consensus protocol; use it for tests only"
            );
        }
        let engine = Engine::open_with(
            &data_dir,
            OpenOptions {
                wal_dir: config.wal_dir.as_deref(),
                fsync: !config.unsafe_no_fsync,
            },
        )?;
        let restored = restored_membership(&engine)?;
        let is_restored = restored.is_some();
        let (member_id, cluster_id, bootstrap) = match stored_identity(&engine)? {
            // Ids are fixed when the data dir is created; later flags cannot change them (etcd
            // ignores --initial-cluster on restart too). A restored data dir also fixes the new
            // cluster's membership.
            Some((member, cluster)) => (member, cluster, restored),
            None => {
                let (member, cluster, bootstrap) = match config.initial_cluster_state {
                    ClusterState::New => {
                        let (member, cluster, members) =
                            new_cluster(&initial, &config.initial_cluster_token, me);
                        (member, cluster, Some(members))
                    }
                    ClusterState::Existing => {
                        let (member, cluster) =
                            join_existing(&initial, me, peer_connector.as_ref()).await?;
                        (member, cluster, None)
                    }
                };
                store_identity(&engine, member, cluster)?;
                (member, cluster, bootstrap)
            }
        };
        let store = MvccStore::open_with(engine.clone(), config.compaction_pacing())?;
        let peers = Arc::new(Peers::new(cluster_id, peer_connector.clone()));

        let opts = RaftOptions {
            heartbeat: Duration::from_millis(config.heartbeat_interval),
            election_timeout: Duration::from_millis(config.election_timeout),
            snapshot_count: config.snapshot_count.max(1),
            max_request_bytes: config.max_request_bytes,
            request_timeout: Duration::from_secs(5)
                + 2 * Duration::from_millis(config.election_timeout),
            catch_up_entries: config.snapshot_catchup_entries,
            max_learners: config.max_learners,
        };
        let alarms = Arc::new(Alarms::load(&engine)?);
        let downgrade = Arc::new(Downgrade::load(&engine)?);
        let auth_store = Arc::new(AuthStore::load(&engine, tokens)?);
        let lessor = Arc::new(Lessor::new(
            min_lease_ttl(config.heartbeat_interval, config.election_timeout),
            crate::lease::load_stored(&engine)?,
            store.take_leased_keys(),
        ));
        // etcd fragments a watch response only past the gRPC message limit.
        let watches = WatchHub::new(
            store.clone(),
            config.max_request_bytes + GRPC_OVERHEAD_BYTES,
            config.progress_notify_interval(),
        );
        let consensus = Arc::new(
            Consensus::start(
                member_id,
                engine.clone(),
                Applier {
                    store: store.clone(),
                    lessor: lessor.clone(),
                    watches: watches.clone(),
                    alarms: alarms.clone(),
                    auth: auth_store.clone(),
                    downgrade: downgrade.clone(),
                    slow_apply: config.warning_apply_duration,
                },
                bootstrap,
                peers,
                &opts,
            )
            .await?,
        );
        let quota = Arc::new(Quota::new(
            engine.clone(),
            config.quota_bytes(),
            alarms.clone(),
            consensus.clone(),
            member_id,
        ));

        let header = Arc::new(HeaderFiller {
            cluster_id,
            member_id,
            consensus: consensus.clone(),
            current_revision: {
                let store = store.clone();
                Box::new(move || store.current_revision())
            },
        });
        let auth = Arc::new(AuthService::new(
            auth_store.clone(),
            consensus.clone(),
            config.bcrypt_cost(),
            config.client_cert_auth.unwrap_or(false),
        ));
        let kv = Arc::new(KvService::new(
            store.clone(),
            consensus.clone(),
            quota.clone(),
            auth_store.clone(),
            lessor.clone(),
            config.max_txn_ops,
        ));
        let leases = LeaseService::start(
            lessor,
            consensus.clone(),
            quota,
            auth_store,
            member_id,
            gates.enabled("FastLeaseKeepAlive"),
        );
        let contention = Arc::new(Contention::new(kv.clone(), watches.clone(), leases.clone()));
        let max_decode = config.max_request_bytes + GRPC_OVERHEAD_BYTES;

        let guard = LeaderGuard(consensus.clone());
        let leader_monitor = LeaderMonitor {
            consensus: consensus.clone(),
            interval: Duration::from_millis(config.election_timeout),
        };
        // etcd registers the standard gRPC health service, serving for the empty service name.
        let (health_reporter, grpc_health) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let (stop, stopped) = watch::channel(false);
        let mut servers = Vec::new();
        let mut peer_addrs = Vec::new();
        for url in &config.listen_peer_urls {
            let listener = Listener::bind(url).await?;
            peer_addrs.extend(listener.tcp_addr()?);
            let peer = PeerServer::new(PeerApi {
                consensus: consensus.clone(),
                leases: leases.clone(),
                store: store.clone(),
            })
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
            let mut routes = Routes::builder();
            routes
                .add_service(InterceptedService::new(peer, ClusterCheck::new(cluster_id)))
                .add_service(DiscoveryServer::new(DiscoveryApi {
                    consensus: consensus.clone(),
                    cluster_id,
                    downgrade: downgrade.clone(),
                }));
            let acceptor = if is_tls(url) { peer_tls.clone() } else { None };
            servers.push(tokio::spawn(crate::http::serve(
                listener,
                acceptor,
                routes.routes(),
                None,
                ConnectionSettings::default(),
                stopped.clone(),
            )));
        }
        if gates.enabled("InitialCorruptCheck") {
            crate::corruption::initial_check(&store, consensus.as_ref(), member_id).await?;
        }
        if let Some(retention) = auto_compaction {
            crate::auto_compaction::start(retention, store.clone(), consensus.clone());
        }
        // Like etcd, serve clients only once this member's name and client URLs are in the
        // membership, so `member list` (and `--cluster` tools) can find every serving member.
        publish_attributes(
            &consensus,
            member_id,
            &config.name,
            &config.advertise_client_urls,
        )
        .await;
        if is_restored {
            // Before serving clients, so no `member add` can reach a log that still starts
            // before the restored store.
            consensus
                .snapshot_restored_state()
                .await
                .context("taking the first snapshot of a restored data dir")?;
            let mut batch = engine.batch();
            batch.delete(Cf::RaftState, RESTORED_MEMBERSHIP_KEY);
            engine.write(batch, true)?;
        }
        let health = crate::health::Health {
            consensus: consensus.clone(),
            store: store.clone(),
            engine: engine.clone(),
            alarms: alarms.clone(),
            watches: watches.clone(),
            downgrade: downgrade.clone(),
            quota_bytes: config.quota_bytes(),
            member_id,
        };
        if config.metrics == "extensive" {
            crate::metrics::metrics().grpc.enable_handling_histogram();
        }
        let client_connections = client_connection_settings(config);
        let mut client_addrs = Vec::new();
        for url in &config.listen_client_urls {
            let listener = Listener::bind(url).await?;
            client_addrs.extend(listener.tcp_addr()?);
            // Every service: no message limits of tonic's (GrpcWire enforces etcd's receive
            // limit, worded as grpc-go words it) and the `hasleader` guard.
            macro_rules! service {
                ($server:ident, $api:expr) => {
                    InterceptedService::new(
                        $server::new($api)
                            .max_decoding_message_size(usize::MAX)
                            .max_encoding_message_size(usize::MAX),
                        guard.clone(),
                    )
                };
            }
            let mut routes = ClientRoutes::default();
            routes
                .add_service(grpc_health.clone())
                .add_service(service!(
                    KvServer,
                    KvApi {
                        kv: kv.clone(),
                        auth: auth.clone(),
                        header: header.clone()
                    }
                ))
                .add_service(service!(
                    LeaseServer,
                    LeaseApi {
                        leases: leases.clone(),
                        auth: auth.clone(),
                        header: header.clone(),
                        leader: leader_monitor.clone(),
                    }
                ))
                .add_service(service!(
                    WatchServer,
                    WatchApi {
                        hub: watches.clone(),
                        auth: auth.clone(),
                        header: header.clone(),
                        leader: leader_monitor.clone(),
                    }
                ))
                .add_service(service!(
                    LockServer,
                    LockApi {
                        contention: contention.clone(),
                        auth: auth.clone(),
                        header: header.clone()
                    }
                ))
                .add_service(service!(
                    ElectionServer,
                    ElectionApi {
                        contention: contention.clone(),
                        auth: auth.clone(),
                        header: header.clone()
                    }
                ))
                .add_service(service!(
                    ClusterServer,
                    ClusterApi {
                        consensus: consensus.clone(),
                        auth: auth.clone(),
                        header: header.clone()
                    }
                ))
                .add_service(service!(
                    MaintenanceServer,
                    MaintenanceApi {
                        defrag_stops_serving: gates
                            .enabled("StopGRPCServiceOnDefrag")
                            .then(|| health_reporter.clone()),
                        engine: engine.clone(),
                        consensus: consensus.clone(),
                        store: store.clone(),
                        alarms: alarms.clone(),
                        downgrade: downgrade.clone(),
                        auth: auth.clone(),
                        header: header.clone(),
                        quota_bytes: config.quota_bytes(),
                    }
                ))
                .add_service(service!(
                    AuthServer,
                    AuthApi {
                        auth: auth.clone(),
                        header: header.clone(),
                    }
                ));
            let acceptor = if is_tls(url) { tls.clone() } else { None };
            let (routes, known) = routes.finish(&[
                oxcd_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ])?;
            let gated = LearnerGate {
                inner: routes,
                consensus: consensus.clone(),
            };
            let grpc = GrpcMetered {
                methods: crate::metrics::metrics().grpc.methods(known.methods()),
                inner: GrpcWire::new(gated, known, max_decode),
            };
            // --enable-grpc-gateway=false: /v3/ paths get etcd's 404 like any unknown path.
            let gateway = if !config.enable_grpc_gateway {
                None
            } else {
                let grpc = grpc.clone();
                let call: GrpcCall = Arc::new(move |req| {
                    let mut grpc = grpc.clone();
                    Box::pin(async move {
                        let Ok(()) = std::future::poll_fn(|cx| {
                            Service::<http::Request<tonic::body::Body>>::poll_ready(&mut grpc, cx)
                        })
                        .await;
                        let Ok(response) = grpc.call(req).await;
                        response
                    })
                });
                Some(Gateway::new(call, max_decode)?)
            };
            servers.push(tokio::spawn(crate::http::serve(
                listener,
                acceptor,
                grpc,
                Some(Router {
                    health: health.clone(),
                    gateway,
                    downgrade: downgrade.clone(),
                }),
                client_connections,
                stopped.clone(),
            )));
        }
        for url in &config.listen_metrics_urls {
            let listener = Listener::bind(url).await?;
            servers.push(tokio::spawn(
                health.clone().serve(listener, stopped.clone()),
            ));
        }
        tracing::info!(
            name = %config.name,
            member_id = %format!("{member_id:x}"),
            cluster_id = %format!("{cluster_id:x}"),
            data_dir = %data_dir.display(),
            clients = ?client_addrs,
            peers = ?peer_addrs,
            "oxcd is serving"
        );
        Ok(Node {
            member_id,
            cluster_id,
            client_addrs,
            consensus,
            engine,
            stop,
            servers,
        })
    }

    /// This member's id, as `member list` shows it (in hex there).
    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    /// The cluster's id, as every response header carries it.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The bound TCP addresses of the client URLs, in their order (with port 0, the port
    /// picked); `unix://` URLs have none.
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    /// Resolves when this member has been removed from the cluster; it should then stop, as
    /// etcd does.
    pub async fn removed(&self) {
        self.consensus.removed().await
    }

    /// Stops serving clients, then stops consensus, then closes the engine; everything
    /// acknowledged is already durable. Clients get a short grace period to finish in-flight
    /// calls; connections still open after it (idle clients, long-lived streams) are dropped, as
    /// etcd drops them. Returns whether the engine closed: RocksDB must not be in use when the
    /// process exits (its background threads then abort it).
    pub async fn shutdown(self) -> bool {
        let _ = self.stop.send(true);
        for mut server in self.servers {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        self.consensus.shutdown().await;
        drop(self.consensus);
        close_engine(self.engine).await
    }
}

/// Waits until every other holder of the engine has let go (the tasks, threads and blocking
/// calls that wind down once the servers and Raft have stopped), then closes it here.
async fn close_engine(mut engine: Arc<Engine>) -> bool {
    let deadline = tokio::time::Instant::now() + ENGINE_CLOSE_TIMEOUT;
    loop {
        match Arc::try_unwrap(engine) {
            Ok(only) => {
                return tokio::task::spawn_blocking(move || drop(only))
                    .await
                    .is_ok();
            }
            Err(shared) if tokio::time::Instant::now() < deadline => {
                engine = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(shared) => {
                tracing::error!(
                    holders = Arc::strong_count(&shared) - 1,
                    "the storage engine is still in use; it was not closed"
                );
                return false;
            }
        }
    }
}

fn stored_identity(engine: &Engine) -> anyhow::Result<Option<(u64, u64)>> {
    let Some(v) = engine.get(Cf::RaftState, IDENTITY_KEY)? else {
        return Ok(None);
    };
    let ids: [u8; 16] = v.as_slice().try_into().context("corrupt member identity")?;
    let member = u64::from_be_bytes(ids[..8].try_into()?);
    let cluster = u64::from_be_bytes(ids[8..].try_into()?);
    Ok(Some((member, cluster)))
}

fn store_identity(engine: &Engine, member: u64, cluster: u64) -> anyhow::Result<()> {
    let mut batch = engine.batch();
    put_identity(&mut batch, member, cluster);
    engine.write(batch, true)?;
    Ok(())
}

fn put_identity(batch: &mut WriteBatch<'_>, member: u64, cluster: u64) {
    let mut value = member.to_be_bytes().to_vec();
    value.extend_from_slice(&cluster.to_be_bytes());
    batch.put(Cf::RaftState, IDENTITY_KEY, &value);
}

/// Makes a data dir holding a restored store the first member of a new cluster, as `flags`
/// would have made it (same ids, same initial membership on every member restored with them).
/// Returns (member id, cluster id).
pub(crate) fn adopt_restored(
    batch: &mut WriteBatch<'_>,
    flags: &RestoreFlags<'_>,
) -> anyhow::Result<(u64, u64)> {
    let initial =
        cluster::parse_initial_cluster(flags.initial_cluster).map_err(anyhow::Error::msg)?;
    let me = initial
        .iter()
        .find(|m| m.name == flags.name)
        .with_context(|| format!("--initial-cluster has no member named {:?}", flags.name))?;
    let mut advertised = flags.advertise_peer_urls.to_vec();
    advertised.sort();
    let mut listed = me.peer_urls.clone();
    listed.sort();
    if advertised != listed {
        bail!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            me.name,
            listed.join(","),
            advertised.join(",")
        );
    }
    let (member, cluster, members) = new_cluster(&initial, flags.token, me);
    put_identity(batch, member, cluster);
    batch.put(
        Cf::RaftState,
        RESTORED_MEMBERSHIP_KEY,
        &bincode::serialize(&members)?,
    );
    Ok((member, cluster))
}

/// The cluster-forming flags of `snapshot restore`, as etcd's member start takes them.
pub struct RestoreFlags<'a> {
    pub name: &'a str,
    pub initial_cluster: &'a str,
    pub token: &'a str,
    pub advertise_peer_urls: &'a [String],
}

fn restored_membership(engine: &Engine) -> anyhow::Result<Option<BTreeMap<u64, Member>>> {
    match engine.get(Cf::RaftState, RESTORED_MEMBERSHIP_KEY)? {
        Some(v) => Ok(Some(
            bincode::deserialize(&v).context("corrupt restored membership")?,
        )),
        None => Ok(None),
    }
}

/// A new cluster: every member derives the same ids and the same initial membership from the
/// same flags. Names and client URLs are published by each member once it runs, so the
/// membership every member bootstraps with is identical.
fn new_cluster(
    initial: &[cluster::InitialMember],
    token: &str,
    me: &cluster::InitialMember,
) -> (u64, u64, BTreeMap<u64, Member>) {
    let members: BTreeMap<u64, Member> = initial
        .iter()
        .map(|m| {
            let member = Member {
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: Vec::new(),
            };
            (cluster::member_id(&m.peer_urls, token), member)
        })
        .collect();
    let ids: Vec<u64> = members.keys().copied().collect();
    (
        cluster::member_id(&me.peer_urls, token),
        cluster::cluster_id(&ids),
        members,
    )
}

/// Joining a running cluster after `member add`: the other members say who we are (the id the
/// add assigned to our peer URLs) and which cluster this is.
async fn join_existing(
    initial: &[cluster::InitialMember],
    me: &cluster::InitialMember,
    tls: Option<&crate::tls::PeerConnector>,
) -> anyhow::Result<(u64, u64)> {
    let mut mine = me.peer_urls.clone();
    mine.sort();
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        let mut last_error = String::from("no other member in --initial-cluster");
        for other in initial.iter().filter(|m| m.name != me.name) {
            match discover(&other.peer_urls, tls).await {
                Ok(reply) => {
                    let found = reply.members.iter().find(|m| {
                        let mut urls = m.peer_urls.clone();
                        urls.sort();
                        urls == mine
                    });
                    crate::downgrade::may_join(&reply.cluster_version, reply.downgrade_enabled)?;
                    return match found {
                        Some(m) => Ok((m.id, reply.cluster_id)),
                        None => bail!(
                            "member {} (peer URLs {:?}) is not in the cluster's membership; add it with `member add` before starting it with --initial-cluster-state existing",
                            me.name,
                            me.peer_urls
                        ),
                    };
                }
                Err(e) => last_error = format!("{}: {e}", other.name),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("cannot reach the existing cluster to join it ({last_error})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn discover(
    peer_urls: &[String],
    tls: Option<&crate::tls::PeerConnector>,
) -> anyhow::Result<oxcd_proto::peerpb::MembersReply> {
    let channel = peer_endpoint(peer_urls, tls)
        .map_err(anyhow::Error::msg)?
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let mut client = DiscoveryClient::new(channel);
    Ok(client.members(MembersRequest {}).await?.into_inner())
}

/// etcd publishes a started member's name and client URLs through Raft; until then
/// `member list` shows them empty. Retried until the membership shows them.
async fn publish_attributes(consensus: &Consensus, id: u64, name: &str, client_urls: &[String]) {
    let mut attempts = 0u32;
    loop {
        let published = consensus
            .members()
            .iter()
            .any(|m| m.id == id && m.member.name == name && m.member.client_urls == client_urls);
        if published {
            return;
        }
        let change = MemberChange::Publish {
            id,
            name: name.to_string(),
            client_urls: client_urls.to_vec(),
        };
        if let Err(e) = consensus.change_members(change).await {
            attempts += 1;
            if attempts.is_multiple_of(25) {
                tracing::warn!(error = %e, "cannot publish this member's attributes to the cluster yet; not serving clients until then");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// etcd's gRPC server options for client connections: a stream limit only below HTTP/2's
/// maximum, and keep-alive pings unless either duration is 0.
fn client_connection_settings(config: &Config) -> ConnectionSettings {
    let (interval, timeout) = (
        config.grpc_keepalive_interval,
        config.grpc_keepalive_timeout,
    );
    ConnectionSettings {
        max_concurrent_streams: Some(config.max_concurrent_streams)
            .filter(|&limit| limit < u32::MAX),
        keepalive: (!interval.is_zero() && !timeout.is_zero()).then_some((interval, timeout)),
    }
}

/// etcd: a lease lives at least 1.5 election timeouts (in whole heartbeats), rounded up to a
/// second, so it cannot expire while a new leader is being elected.
fn min_lease_ttl(heartbeat_ms: u64, election_ms: u64) -> i64 {
    let heartbeat_ms = heartbeat_ms.max(1);
    let ticks = election_ms / heartbeat_ms;
    let min_ms = (3 * ticks / 2) * heartbeat_ms;
    min_ms.div_ceil(1000) as i64
}
