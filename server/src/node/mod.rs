//! One oxcd member: storage, MVCC, consensus and the client API wired together. Embeddable:
//! a Rust program can start a member in-process with [`Node::start`]. Who the member is and
//! which cluster it belongs to is settled in `startup`; what it serves, in `serve`.

mod serve;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

pub(crate) use startup::adopt_restored;
pub use startup::RestoreFlags;

use crate::alarm::Alarms;
use crate::apply::Applier;
use crate::auth::AuthStore;
use crate::cluster;
use crate::config::Config;
use crate::downgrade::Downgrade;
use crate::lease::Lessor;
use crate::mvcc::MvccStore;
use crate::raft::{Consensus, Peers, RaftOptions};
use crate::storage::{Engine, OpenOptions};
use crate::watch::WatchHub;

/// gRPC's receive limit sits this far above the request limit, so an oversized request gets
/// etcd's "request is too large" rather than a transport error (etcd does the same).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long shutting down waits for the last users of the engine.
const ENGINE_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running member: serving clients and peers on its listen URLs until
/// [`shutdown`](Node::shutdown).
pub struct Node {
    member_id: u64,
    cluster_id: u64,
    client_addrs: Vec<SocketAddr>,
    consensus: Arc<Consensus>,
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    servers: serve::Servers,
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
        let identity =
            startup::identify(config, &engine, &initial, me, peer_connector.as_ref()).await?;
        let (member_id, cluster_id) = (identity.member_id, identity.cluster_id);
        let store = MvccStore::open_with(engine.clone(), config.compaction_pacing())?;
        let peers = Arc::new(Peers::new(cluster_id, peer_connector.clone()));

        let opts = RaftOptions {
            heartbeat: Duration::from_millis(config.heartbeat_interval),
            election_timeout: Duration::from_millis(config.election_timeout),
            initial_election_tick_advance: config.initial_election_tick_advance,
            snapshot_count: config.snapshot_count.max(1),
            max_request_bytes: config.max_request_bytes,
            request_timeout: Duration::from_secs(5)
                + 2 * Duration::from_millis(config.election_timeout),
            catch_up_entries: config.snapshot_catchup_entries,
            max_learners: config.max_learners,
        };
        let applier = Applier {
            alarms: Arc::new(Alarms::load(&engine)?),
            downgrade: Arc::new(Downgrade::load(&engine)?),
            auth: Arc::new(AuthStore::load(&engine, tokens)?),
            lessor: Arc::new(Lessor::new(
                min_lease_ttl(config.heartbeat_interval, config.election_timeout),
                crate::lease::load_stored(&engine)?,
                store.take_leased_keys(),
            )),
            // etcd fragments a watch response only past the gRPC message limit.
            watches: WatchHub::new(
                store.clone(),
                config.max_request_bytes + GRPC_OVERHEAD_BYTES,
                config.progress_notify_interval(),
            ),
            store,
            slow_apply: config.warning_apply_duration,
        };
        let consensus = Arc::new(
            Consensus::start(
                member_id,
                engine.clone(),
                applier.clone(),
                identity.bootstrap,
                peers,
                &opts,
            )
            .await?,
        );
        let services = serve::Services::build(
            config,
            (member_id, cluster_id),
            consensus.clone(),
            engine.clone(),
            &applier,
        );

        let (stop, stopped) = watch::channel(false);
        let mut servers = serve::Servers::new();
        let peer_addrs = services
            .serve_peers(config, peer_tls, &stopped, &mut servers)
            .await?;
        if config.feature_gates.enabled("InitialCorruptCheck") {
            crate::corruption::initial_check(&applier.store, consensus.as_ref(), member_id).await?;
        }
        if let Some(retention) = auto_compaction {
            crate::auto_compaction::start(retention, applier.store.clone(), consensus.clone());
        }
        // Like etcd, serve clients only once this member's name and client URLs are in the
        // membership, so `member list` (and `--cluster` tools) can find every serving member.
        startup::publish_attributes(
            &consensus,
            member_id,
            &config.name,
            &config.advertise_client_urls,
        )
        .await;
        if identity.restored {
            startup::finish_restore(&consensus, &engine).await?;
        }
        let client_addrs = services
            .serve_clients(config, tls, &stopped, &mut servers)
            .await?;
        services
            .serve_metrics(config, &stopped, &mut servers)
            .await?;
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

/// etcd: a lease lives at least 1.5 election timeouts (in whole heartbeats), rounded up to a
/// second, so it cannot expire while a new leader is being elected.
fn min_lease_ttl(heartbeat_ms: u64, election_ms: u64) -> i64 {
    let heartbeat_ms = heartbeat_ms.max(1);
    let ticks = election_ms / heartbeat_ms;
    let min_ms = (3 * ticks / 2) * heartbeat_ms;
    min_ms.div_ceil(1000) as i64
}
