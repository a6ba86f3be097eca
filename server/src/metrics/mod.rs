//! etcd's Prometheus metrics: one process-wide registry (as etcd's is Go's default registry),
//! with etcd's names, types, help texts, labels and buckets, so etcd's dashboards and alerts
//! work unchanged. Events are counted where they happen, through [`metrics()`]; values that
//! are a member's state (leadership, sizes, revisions, watchers) are read when scraped, from a
//! [`MemberState`] the caller fills.
//!
//! Where oxcd has no exact counterpart of the etcd internal a metric observes, the field's
//! comment says what it measures here.

pub mod grpc;

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use grpc::{GrpcMetered, GrpcServerMetrics, GrpcType};

/// `etcd_server_*`.
pub struct ServerMetrics {
    pub leader_changes: IntCounter,
    /// Proposals that failed or timed out waiting to be applied (etcd: the same, counted where
    /// `processInternalRaftRequest` fails).
    pub proposals_failed: IntCounter,
    /// Client proposals waiting in the group-commit queue or in Raft (etcd: proposals made
    /// and not yet applied).
    pub proposals_pending: IntGauge,
    /// Applies of one Raft entry's requests that took over 100 ms (etcd's apply warning limit;
    /// etcd counts single requests, oxcd applies a group-committed entry at once).
    pub slow_apply: IntCounter,
    /// ReadIndex rounds that timed out (etcd: timed-out or out-of-sync read indexes).
    pub slow_read_indexes: IntCounter,
    pub read_indexes_failed: IntCounter,
    /// Leader heartbeats to a follower that failed or went unanswered for the give-up time
    /// (etcd: heartbeats not sent on time, which is what a slow disk or network leads to).
    pub heartbeat_send_failures: IntCounter,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    has_leader: IntGauge,
    is_leader: IntGauge,
    /// Gauges, as in etcd (they follow Raft's indexes rather than count events).
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    quota_backend_bytes: IntGauge,
    id: IntGaugeVec,
    version: IntGaugeVec,
    cluster_version: IntGaugeVec,
}

/// `etcd_disk_*`.
pub struct DiskMetrics {
    /// The fsync of the Raft log's segment that makes appends durable (etcd's WAL fsync).
    pub wal_fsync: Histogram,
    /// The engine write of one applied batch (etcd: bbolt's commit of the backend; here the
    /// RocksDB write of the applied state, which is not fsynced: the Raft log is).
    pub backend_commit: Histogram,
    /// A backup streamed by Maintenance.Snapshot, from start to end.
    pub backend_snapshot: Histogram,
    pub backend_defrag: Histogram,
    pub defrag_inflight: IntGauge,
}

/// `etcd_mvcc_*` and `etcd_debugging_mvcc_*`.
pub struct MvccMetrics {
    pub range: IntCounter,
    pub put: IntCounter,
    pub delete: IntCounter,
    /// Txn requests executed (etcd counts its storage transactions of more than one
    /// operation, which for clients are their Txns).
    pub txn: IntCounter,
    pub events: IntCounter,
    pub db_compaction_keys: IntCounter,
    /// oxcd's own: failed physical compaction attempts (each is retried).
    pub compaction_failures: IntCounter,
    db_total_size: IntGauge,
    db_total_size_in_use: IntGauge,
    keys: IntGauge,
    watch_streams: IntGauge,
    watchers: IntGauge,
    slow_watchers: IntGauge,
    pending_events: IntGauge,
    current_revision: IntGauge,
    compact_revision: IntGauge,
}

/// `etcd_network_*`.
pub struct NetworkMetrics {
    peer_sent_bytes: IntCounterVec,
    peer_received_bytes: IntCounterVec,
    peer_sent_failures: IntCounterVec,
    peer_received_failures: IntCounterVec,
    pub peer_round_trip_time: HistogramVec,
    active_peers: IntGaugeVec,
    /// Each member's series, resolved once.
    peers: Mutex<HashMap<u64, PeerSeries>>,
}

/// etcd's traffic series of one peer. Peer calls are request/reply here, so a member counts
/// both directions of each: a call it makes as sent to the peer and the reply as received from
/// it; a call it answers as received from the caller and its reply as sent to it.
#[derive(Clone)]
pub struct PeerSeries {
    pub sent_bytes: IntCounter,
    pub received_bytes: IntCounter,
    pub sent_failures: IntCounter,
    pub received_failures: IntCounter,
}

impl NetworkMetrics {
    pub fn peer(&self, id: u64) -> PeerSeries {
        self.peers
            .lock()
            .entry(id)
            .or_insert_with(|| {
                let label = [member_label(id)];
                let label = [label[0].as_str()];
                PeerSeries {
                    sent_bytes: self.peer_sent_bytes.with_label_values(&label),
                    received_bytes: self.peer_received_bytes.with_label_values(&label),
                    sent_failures: self.peer_sent_failures.with_label_values(&label),
                    received_failures: self.peer_received_failures.with_label_values(&label),
                }
            })
            .clone()
    }
}

pub struct Metrics {
    registry: Registry,
    pub server: ServerMetrics,
    pub disk: DiskMetrics,
    pub mvcc: MvccMetrics,
    pub network: NetworkMetrics,
    pub grpc: grpc::GrpcServerMetrics,
    /// oxcd's own `oxcd_memory_bytes{holder}`: what the storage engine and the allocator hold
    /// (etcd's memory is Go's heap and bbolt's mmap, which `go_*` and `process_*` describe).
    memory: IntGaugeVec,
    /// Scrapes set the member-state gauges, then read them: one at a time (several members
    /// can run in one process).
    scraping: Mutex<()>,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// What a scrape reports of a member's state.
#[derive(Debug, Clone, Default)]
pub struct MemberState {
    pub member_id: u64,
    pub has_leader: bool,
    pub is_leader: bool,
    pub committed_index: u64,
    pub applied_index: u64,
    pub quota_backend_bytes: u64,
    pub cluster_version: String,
    pub db_total_size: u64,
    pub db_total_size_in_use: u64,
    pub keys: u64,
    pub current_revision: i64,
    pub compact_revision: i64,
    pub watch: WatchCounts,
    /// The other voting members and whether this member is in touch with each.
    pub peers: Vec<(u64, bool)>,
    /// Bytes of memory by what holds them (`oxcd_memory_bytes`'s `holder` label).
    pub memory: Vec<(&'static str, u64)>,
}

/// The watch hub's current numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCounts {
    pub streams: u64,
    pub watchers: u64,
    /// Watchers catching up from storage (etcd's unsynced watchers).
    pub unsynced: u64,
    /// Responses queued to streams and not yet taken by their gRPC senders (etcd counts the
    /// events in them).
    pub pending: u64,
}

/// Go's `prometheus.ExponentialBuckets(0.001, 2, 14)`: etcd's disk and request latencies.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
}

fn opts(namespace: &str, subsystem: &str, name: &str, help: &str) -> Opts {
    Opts::new(name, help)
        .namespace(namespace)
        .subsystem(subsystem)
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let register = |c: Box<dyn Collector>| {
            registry.register(c).expect("metric names are distinct");
        };
        let counter = |ns: &str, sub: &str, name: &str, help: &str| {
            let c = IntCounter::with_opts(opts(ns, sub, name, help)).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let gauge = |ns: &str, sub: &str, name: &str, help: &str| {
            let g = IntGauge::with_opts(opts(ns, sub, name, help)).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let counter_vec = |ns: &str, sub: &str, name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(ns, sub, name, help), labels).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let gauge_vec = |ns: &str, sub: &str, name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(opts(ns, sub, name, help), labels).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let histogram = |ns: &str, sub: &str, name: &str, help: &str, buckets: Vec<f64>| {
            let opts = HistogramOpts::new(name, help)
                .namespace(ns)
                .subsystem(sub)
                .buckets(buckets);
            let h = Histogram::with_opts(opts).expect("valid metric");
            register(Box::new(h.clone()));
            h
        };

        let server = ServerMetrics {
            leader_changes: counter("etcd", "server", "leader_changes_seen_total", "The number of leader changes seen."),
            proposals_failed: counter("etcd", "server", "proposals_failed_total", "The total number of failed proposals seen."),
            proposals_pending: gauge("etcd", "server", "proposals_pending", "The current number of pending proposals to commit."),
            slow_apply: counter("etcd", "server", "slow_apply_total", "The total number of slow apply requests (likely overloaded from slow disk)."),
            slow_read_indexes: counter("etcd", "server", "slow_read_indexes_total", "The total number of pending read indexes not in sync with leader's or timed out read index requests."),
            read_indexes_failed: counter("etcd", "server", "read_indexes_failed_total", "The total number of failed read indexes seen."),
            heartbeat_send_failures: counter("etcd", "server", "heartbeat_send_failures_total", "The total number of leader heartbeat send failures (likely overloaded from slow disk)."),
            health_success: counter("etcd", "server", "health_success", "The total number of successful health checks"),
            health_failures: counter("etcd", "server", "health_failures", "The total number of failed health checks"),
            has_leader: gauge("etcd", "server", "has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."),
            is_leader: gauge("etcd", "server", "is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."),
            proposals_committed: gauge("etcd", "server", "proposals_committed_total", "The total number of consensus proposals committed."),
            proposals_applied: gauge("etcd", "server", "proposals_applied_total", "The total number of consensus proposals applied."),
            quota_backend_bytes: gauge("etcd", "server", "quota_backend_bytes", "Current backend storage quota size in bytes."),
            id: gauge_vec("etcd", "server", "id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.", &["server_id"]),
            version: gauge_vec("etcd", "server", "version", "Which version is running. 1 for 'server_version' label with current version.", &["server_version"]),
            cluster_version: gauge_vec("etcd", "cluster", "version", "Which version is running. 1 for 'cluster_version' label with current cluster version", &["cluster_version"]),
        };
        server
            .version
            .with_label_values(&[crate::ETCD_VERSION])
            .set(1);

        let disk = DiskMetrics {
            wal_fsync: histogram(
                "etcd",
                "disk",
                "wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                latency_buckets(),
            ),
            backend_commit: histogram(
                "etcd",
                "disk",
                "backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                latency_buckets(),
            ),
            backend_snapshot: histogram(
                "etcd",
                "disk",
                "backend_snapshot_duration_seconds",
                "The latency distribution of backend snapshots.",
                exponential_buckets(0.01, 2.0, 17).expect("valid buckets"),
            ),
            backend_defrag: histogram(
                "etcd",
                "disk",
                "backend_defrag_duration_seconds",
                "The latency distribution of backend defragmentation.",
                exponential_buckets(0.1, 2.0, 13).expect("valid buckets"),
            ),
            defrag_inflight: gauge(
                "etcd",
                "disk",
                "defrag_inflight",
                "Whether or not defrag is active on the member. 1 means active, 0 means not.",
            ),
        };

        let mvcc = MvccMetrics {
            range: counter(
                "etcd",
                "mvcc",
                "range_total",
                "Total number of ranges seen by this member.",
            ),
            put: counter(
                "etcd",
                "mvcc",
                "put_total",
                "Total number of puts seen by this member.",
            ),
            delete: counter(
                "etcd",
                "mvcc",
                "delete_total",
                "Total number of deletes seen by this member.",
            ),
            txn: counter(
                "etcd",
                "mvcc",
                "txn_total",
                "Total number of txns seen by this member.",
            ),
            events: counter(
                "etcd_debugging",
                "mvcc",
                "events_total",
                "Total number of events sent by this member.",
            ),
            db_compaction_keys: counter(
                "etcd_debugging",
                "mvcc",
                "db_compaction_keys_total",
                "Total number of db keys compacted.",
            ),
            compaction_failures: counter(
                "oxcd",
                "mvcc",
                "compaction_failures_total",
                "Physical compaction attempts that failed (each is retried).",
            ),
            db_total_size: gauge(
                "etcd",
                "mvcc",
                "db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_total_size_in_use: gauge(
                "etcd",
                "mvcc",
                "db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            keys: gauge(
                "etcd_debugging",
                "mvcc",
                "keys_total",
                "Total number of keys.",
            ),
            watch_streams: gauge(
                "etcd_debugging",
                "mvcc",
                "watch_stream_total",
                "Total number of watch streams.",
            ),
            watchers: gauge(
                "etcd_debugging",
                "mvcc",
                "watcher_total",
                "Total number of watchers.",
            ),
            slow_watchers: gauge(
                "etcd_debugging",
                "mvcc",
                "slow_watcher_total",
                "Total number of unsynced slow watchers.",
            ),
            pending_events: gauge(
                "etcd_debugging",
                "mvcc",
                "pending_events_total",
                "Total number of pending events to be sent.",
            ),
            current_revision: gauge(
                "etcd_debugging",
                "mvcc",
                "current_revision",
                "The current revision of store.",
            ),
            compact_revision: gauge(
                "etcd_debugging",
                "mvcc",
                "compact_revision",
                "The revision of the last compaction in store.",
            ),
        };

        let peer_rtt = HistogramVec::new(
            HistogramOpts::new(
                "peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
            )
            .namespace("etcd")
            .subsystem("network")
            .buckets(exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
            &["To"],
        )
        .expect("valid metric");
        register(Box::new(peer_rtt.clone()));
        let network = NetworkMetrics {
            peer_sent_bytes: counter_vec(
                "etcd",
                "network",
                "peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            ),
            peer_received_bytes: counter_vec(
                "etcd",
                "network",
                "peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            ),
            peer_sent_failures: counter_vec(
                "etcd",
                "network",
                "peer_sent_failures_total",
                "The total number of send failures from peers.",
                &["To"],
            ),
            peer_received_failures: counter_vec(
                "etcd",
                "network",
                "peer_received_failures_total",
                "The total number of receive failures from peers.",
                &["From"],
            ),
            peer_round_trip_time: peer_rtt,
            peers: Mutex::new(HashMap::new()),
            active_peers: gauge_vec(
                "etcd",
                "network",
                "active_peers",
                "The current number of active peer connections.",
                &["Local", "Remote"],
            ),
        };

        let grpc = grpc::GrpcServerMetrics::new(&registry);
        let memory = gauge_vec(
            "oxcd",
            "",
            "memory_bytes",
            "Bytes of memory held, by holder: the storage engine's memtables, block cache and table readers; the allocator's live allocations, its resident pages and pages it keeps mapped.",
            &["holder"],
        );
        #[cfg(target_os = "linux")]
        register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));

        Metrics {
            registry,
            server,
            disk,
            mvcc,
            network,
            grpc,
            memory,
            scraping: Mutex::new(()),
        }
    }

    /// The Prometheus text exposition of everything, with `member`'s state.
    pub fn render(&self, member: &MemberState) -> String {
        let _one_at_a_time = self.scraping.lock();
        self.set_member_state(member);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    fn set_member_state(&self, m: &MemberState) {
        let s = &self.server;
        s.has_leader.set(m.has_leader.into());
        s.is_leader.set(m.is_leader.into());
        s.proposals_committed.set(m.committed_index as i64);
        s.proposals_applied.set(m.applied_index as i64);
        s.quota_backend_bytes.set(m.quota_backend_bytes as i64);
        // One series each, for this member's values (etcd sets the old one to 0 on a change;
        // a process here can hold several members, so the set is rebuilt instead).
        s.id.reset();
        s.id.with_label_values(&[&member_label(m.member_id)]).set(1);
        s.cluster_version.reset();
        if !m.cluster_version.is_empty() {
            s.cluster_version
                .with_label_values(&[&m.cluster_version])
                .set(1);
        }
        let v = &self.mvcc;
        v.db_total_size.set(m.db_total_size as i64);
        v.db_total_size_in_use.set(m.db_total_size_in_use as i64);
        v.keys.set(m.keys as i64);
        v.current_revision.set(m.current_revision);
        v.compact_revision.set(m.compact_revision);
        v.watch_streams.set(m.watch.streams as i64);
        v.watchers.set(m.watch.watchers as i64);
        v.slow_watchers.set(m.watch.unsynced as i64);
        v.pending_events.set(m.watch.pending as i64);
        let n = &self.network;
        n.active_peers.reset();
        let local = member_label(m.member_id);
        for (peer, active) in &m.peers {
            n.active_peers
                .with_label_values(&[&local, &member_label(*peer)])
                .set((*active).into());
        }
        self.memory.reset();
        for (holder, bytes) in &m.memory {
            self.memory
                .with_label_values(&[holder])
                .set(i64::try_from(*bytes).unwrap_or(i64::MAX));
        }
    }
}

/// A member id as etcd's metric labels write it (`To`, `From`, `server_id`).
pub fn member_label(id: u64) -> String {
    format!("{id:x}")
}
