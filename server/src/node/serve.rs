//! What a running member serves: the services built on its parts, and the listeners on its
//! peer, client and metrics URLs (each served by `http::serve` until `stopped`).

use std::net::SocketAddr;
use std::sync::Arc;

use oxcd_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use oxcd_proto::peerpb::{discovery_server::DiscoveryServer, peer_server::PeerServer};
use oxcd_proto::v3electionpb::election_server::ElectionServer;
use oxcd_proto::v3lockpb::lock_server::LockServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tonic::codegen::{http, Service};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;

use super::GRPC_OVERHEAD_BYTES;
use crate::alarm::{Alarms, Quota};
use crate::api::{
    AuthApi, ClientRoutes, ClusterApi, ClusterCheck, DiscoveryApi, ElectionApi, GrpcWire,
    HeaderFiller, KvApi, LeaderGuard, LeaderMonitor, LearnerGate, LeaseApi, LockApi,
    MaintenanceApi, PeerApi, WatchApi,
};
use crate::apply::Applier;
use crate::auth::AuthService;
use crate::concurrency::Contention;
use crate::config::Config;
use crate::downgrade::Downgrade;
use crate::health::Health;
use crate::http::{ConnectionSettings, Gateway, GrpcCall, Router};
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::listen::{is_tls, Listener};
use crate::metrics::GrpcMetered;
use crate::mvcc::MvccStore;
use crate::raft::{Consensus, MAX_PEER_MESSAGE};
use crate::storage::Engine;
use crate::watch::WatchHub;

/// Peer calls a member sent and then gave up on (each tick's beacon and heartbeat, votes) that a
/// partition held back and the heal delivers at once, each opened and reset. h2's limit of 20
/// closed the peers' connections at every heal of a partition of more than a few seconds; this
/// covers about a minute of ticks, and still bounds what a peer can make a member hold.
const PEER_PENDING_RESETS: usize = 4096;

/// The member's services, built once and shared by every listener.
pub(super) struct Services {
    cluster_id: u64,
    consensus: Arc<Consensus>,
    engine: Arc<Engine>,
    store: Arc<MvccStore>,
    watches: Arc<WatchHub>,
    alarms: Arc<Alarms>,
    downgrade: Arc<Downgrade>,
    header: Arc<HeaderFiller>,
    auth: Arc<AuthService>,
    kv: Arc<KvService>,
    leases: Arc<LeaseService>,
    contention: Arc<Contention>,
    pub health: Health,
}

/// The running listeners' tasks, which end once `stopped` says so.
pub(super) type Servers = Vec<JoinHandle<()>>;

impl Services {
    /// Builds the services on `applied`, the parts consensus applies to; starts the lease
    /// service's expiry loop.
    pub fn build(
        config: &Config,
        (member_id, cluster_id): (u64, u64),
        consensus: Arc<Consensus>,
        engine: Arc<Engine>,
        applied: &Applier,
    ) -> Services {
        let quota = Arc::new(Quota::new(
            engine.clone(),
            config.quota_bytes(),
            applied.alarms.clone(),
            consensus.clone(),
            member_id,
        ));
        let header = Arc::new(HeaderFiller {
            cluster_id,
            member_id,
            consensus: consensus.clone(),
            current_revision: {
                let store = applied.store.clone();
                Box::new(move || store.current_revision())
            },
        });
        let auth = Arc::new(AuthService::new(
            applied.auth.clone(),
            consensus.clone(),
            config.bcrypt_cost(),
            config.client_cert_auth.unwrap_or(false),
        ));
        let kv = Arc::new(KvService::new(
            applied.store.clone(),
            consensus.clone(),
            quota.clone(),
            applied.auth.clone(),
            applied.lessor.clone(),
            config.max_txn_ops,
        ));
        let leases = LeaseService::start(
            applied.lessor.clone(),
            consensus.clone(),
            quota,
            applied.auth.clone(),
            member_id,
            config.feature_gates.enabled("FastLeaseKeepAlive"),
        );
        let contention = Arc::new(Contention::new(
            kv.clone(),
            applied.watches.clone(),
            leases.clone(),
        ));
        let health = Health {
            consensus: consensus.clone(),
            store: applied.store.clone(),
            engine: engine.clone(),
            alarms: applied.alarms.clone(),
            watches: applied.watches.clone(),
            downgrade: applied.downgrade.clone(),
            quota_bytes: config.quota_bytes(),
            member_id,
        };
        Services {
            cluster_id,
            consensus,
            engine,
            store: applied.store.clone(),
            watches: applied.watches.clone(),
            alarms: applied.alarms.clone(),
            downgrade: applied.downgrade.clone(),
            header,
            auth,
            kv,
            leases,
            contention,
            health,
        }
    }

    /// Serves the member-to-member services on every peer URL; returns their bound addresses.
    pub async fn serve_peers(
        &self,
        config: &Config,
        acceptor: Option<TlsAcceptor>,
        stopped: &watch::Receiver<bool>,
        servers: &mut Servers,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let mut addrs = Vec::new();
        for url in &config.listen_peer_urls {
            let listener = Listener::bind(url).await?;
            addrs.extend(listener.tcp_addr()?);
            let peer = PeerServer::new(PeerApi {
                consensus: self.consensus.clone(),
                leases: self.leases.clone(),
                store: self.store.clone(),
            })
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
            let mut routes = Routes::builder();
            routes
                .add_service(InterceptedService::new(
                    peer,
                    ClusterCheck::new(self.cluster_id),
                ))
                .add_service(DiscoveryServer::new(DiscoveryApi {
                    consensus: self.consensus.clone(),
                    cluster_id: self.cluster_id,
                    downgrade: self.downgrade.clone(),
                }));
            let acceptor = if is_tls(url) { acceptor.clone() } else { None };
            servers.push(tokio::spawn(crate::http::serve(
                listener,
                acceptor,
                routes.routes(),
                None,
                ConnectionSettings {
                    max_pending_accept_reset_streams: Some(PEER_PENDING_RESETS),
                    ..ConnectionSettings::default()
                },
                stopped.clone(),
            )));
        }
        Ok(addrs)
    }

    /// Serves etcd's client API (gRPC, the JSON gateway and the HTTP endpoints) on every client
    /// URL; returns their bound addresses.
    pub async fn serve_clients(
        &self,
        config: &Config,
        acceptor: Option<TlsAcceptor>,
        stopped: &watch::Receiver<bool>,
        servers: &mut Servers,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let gates = &config.feature_gates;
        let max_decode = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let guard = LeaderGuard(self.consensus.clone());
        let leader_monitor = LeaderMonitor {
            consensus: self.consensus.clone(),
            interval: std::time::Duration::from_millis(config.election_timeout),
        };
        // etcd registers the standard gRPC health service, serving for the empty service name.
        let (health_reporter, grpc_health) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        if config.metrics == "extensive" {
            crate::metrics::metrics().grpc.enable_handling_histogram();
        }
        let client_connections = client_connection_settings(config);
        let (auth, header) = (&self.auth, &self.header);
        let mut addrs = Vec::new();
        for url in &config.listen_client_urls {
            let listener = Listener::bind(url).await?;
            addrs.extend(listener.tcp_addr()?);
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
                        kv: self.kv.clone(),
                        auth: auth.clone(),
                        header: header.clone()
                    }
                ))
                .add_service(service!(
                    LeaseServer,
                    LeaseApi {
                        leases: self.leases.clone(),
                        auth: auth.clone(),
                        header: header.clone(),
                        leader: leader_monitor.clone(),
                    }
                ))
                .add_service(service!(
                    WatchServer,
                    WatchApi {
                        hub: self.watches.clone(),
                        auth: auth.clone(),
                        header: header.clone(),
                        leader: leader_monitor.clone(),
                    }
                ))
                .add_service(service!(
                    LockServer,
                    LockApi {
                        contention: self.contention.clone(),
                        auth: auth.clone(),
                        header: header.clone()
                    }
                ))
                .add_service(service!(
                    ElectionServer,
                    ElectionApi {
                        contention: self.contention.clone(),
                        auth: auth.clone(),
                        header: header.clone()
                    }
                ))
                .add_service(service!(
                    ClusterServer,
                    ClusterApi {
                        consensus: self.consensus.clone(),
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
                        engine: self.engine.clone(),
                        consensus: self.consensus.clone(),
                        store: self.store.clone(),
                        alarms: self.alarms.clone(),
                        downgrade: self.downgrade.clone(),
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
            let acceptor = if is_tls(url) { acceptor.clone() } else { None };
            let (routes, known) = routes.finish(&[
                oxcd_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ])?;
            let gated = LearnerGate {
                inner: routes,
                consensus: self.consensus.clone(),
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
                    health: self.health.clone(),
                    gateway,
                    downgrade: self.downgrade.clone(),
                }),
                client_connections,
                stopped.clone(),
            )));
        }
        Ok(addrs)
    }

    /// Serves `/livez`, `/readyz`, `/health` and `/metrics` on every metrics URL.
    pub async fn serve_metrics(
        &self,
        config: &Config,
        stopped: &watch::Receiver<bool>,
        servers: &mut Servers,
    ) -> anyhow::Result<()> {
        for url in &config.listen_metrics_urls {
            let listener = Listener::bind(url).await?;
            servers.push(tokio::spawn(
                self.health.clone().serve(listener, stopped.clone()),
            ));
        }
        Ok(())
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
        max_pending_accept_reset_streams: None,
    }
}
