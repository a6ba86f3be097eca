//! Command-line flags and `ETCD_*` environment variables, named as etcd names them, so an etcd
//! systemd unit or kubeadm manifest starts oxcd unchanged.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::features::FeatureGates;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "oxcd",
    version,
    about = "An etcd-compatible, Raft-replicated key-value store",
    // Go's flag package takes a flag given twice, the last value winning.
    args_override_self = true
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: ${name}.oxcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of the write-ahead log, where every Raft log append is fsynced (a dedicated
    /// device, as etcd's WAL directory). Default: inside the data dir.
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,
    /// Client URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer (Raft) traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping: name=peerURL,...
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` or `existing`.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// Initial cluster token; member and cluster ids are derived from it.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Maximum client request size in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Maximum operations per transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Backend size quota in bytes (0 = 2 GiB default).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Time (ms) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (ms) for an election to time out.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Whether a member restarted into a cluster counts most of an election timeout as
    /// already passed once it reaches its peers, so a cluster restarted whole elects sooner.
    #[arg(long, env = "ETCD_INITIAL_ELECTION_TICK_ADVANCE", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = go_bool)]
    pub initial_election_tick_advance: bool,
    /// Committed Raft entries between snapshots of the state machine.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,

    /// debug, info, warn, error, panic or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info", value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,
    /// `zap`, the only logger etcd 3.5+ has (oxcd writes structured lines like it).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap", value_parser = ["zap"])]
    pub logger: String,
    /// Where logs go: `default` or `stderr`, `stdout`, or file paths (appended to).
    #[arg(
        long,
        env = "ETCD_LOG_OUTPUTS",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub log_outputs: Vec<String>,

    // Client TLS (https:// listen URLs). Peer TLS flags are accepted for the peer transport.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Client certificates must be valid for one of these host names or IPs.
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME", value_delimiter = ',')]
    pub client_cert_allowed_hostname: Vec<String>,
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,
    /// Peer certificates must have one of these subject CNs.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN", value_delimiter = ',')]
    pub peer_cert_allowed_cn: Vec<String>,
    /// Peer certificates must be valid for one of these host names or IPs.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME", value_delimiter = ',')]
    pub peer_cert_allowed_hostname: Vec<String>,
    /// Client certificates revoked by this CRL (DER or PEM) are refused; re-read as it changes.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Peer certificates revoked by this CRL (DER or PEM) are refused; re-read as it changes.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Client TLS with a self-signed certificate made under `<data-dir>/fixtures/client`, when
    /// no --cert-file/--key-file are given.
    #[arg(long, env = "ETCD_AUTO_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub auto_tls: Option<bool>,
    /// Peer TLS with a self-signed certificate made under `<data-dir>/fixtures/peer`, when no
    /// --peer-cert-file/--peer-key-file are given.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub peer_auto_tls: Option<bool>,
    /// Validity of the --auto-tls and --peer-auto-tls certificates, in years.
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,
    /// TLS 1.2 cipher suites (Go's names) of every client and peer connection; default: all.
    #[arg(long, env = "ETCD_CIPHER_SUITES", value_delimiter = ',')]
    pub cipher_suites: Vec<String>,
    /// Minimum TLS version: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,
    /// Maximum TLS version: TLS1.2 or TLS1.3 (empty: the highest, TLS1.3).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,

    /// URLs serving /livez, /readyz, /health and /metrics over plain HTTP.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// `basic`, or `extensive` to add gRPC handling-time histograms per method (etcd reads
    /// nothing else from it and accepts any value).
    #[arg(long, env = "ETCD_METRICS", default_value = "basic")]
    pub metrics: String,
    /// Interval of progress notifications to watches that asked for them (etcd: 10m).
    #[arg(long, env = "ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL", value_parser = go_duration)]
    pub watch_progress_notify_interval: Option<Duration>,
    /// etcd's server feature gates, `Name=true|false,...` (see `features`).
    #[arg(long, env = "ETCD_FEATURE_GATES", default_value = "", value_parser = FeatureGates::parse)]
    pub feature_gates: FeatureGates,
    /// `periodic` (retention: a duration, or a number of hours) or `revision` (retention: a
    /// number of revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// How much history automatic compaction keeps; 0 turns it off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// `simple`, or `jwt,pub-key=<path>,priv-key=<path>,sign-method=<RS256…>,ttl=<duration>`.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token lives unless used.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of stored passwords (4–31; etcd falls back to 10 outside that range).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = crate::auth::DEFAULT_BCRYPT_COST)]
    pub bcrypt_cost: u32,

    /// `json` (etcd's zap JSON lines) or `console`.
    #[arg(long, env = "ETCD_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// No fsync of the Raft log or the store: a power cut loses acknowledged writes. For tests.
    #[arg(long, env = "ETCD_UNSAFE_NO_FSYNC", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub unsafe_no_fsync: bool,
    /// HTTP/2 streams one client connection may have open at a time.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// How often the server pings an idle client connection (0 turns pings off).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h", value_parser = go_duration)]
    pub grpc_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed (0 turns pings off).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = go_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Raft log entries kept after a snapshot, so a slow follower catches up from the log.
    #[arg(long, env = "ETCD_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = 5000)]
    pub snapshot_catchup_entries: u64,
    /// Learners the membership may hold at once.
    #[arg(long, env = "ETCD_MAX_LEARNERS", default_value_t = 1)]
    pub max_learners: usize,
    /// An apply of a Raft entry that takes longer is logged as a warning.
    #[arg(long, env = "ETCD_WARNING_APPLY_DURATION", default_value = "100ms", value_parser = go_duration)]
    pub warning_apply_duration: Duration,
    /// Interval of the leader's compaction-hash check; only used with the CompactHashCheck
    /// feature gate (which oxcd refuses), as in etcd.
    #[arg(long, env = "ETCD_COMPACT_HASH_CHECK_TIME", default_value = "1m", value_parser = go_duration)]
    pub compact_hash_check_time: Duration,

    /// Revisions the compactor deletes per write (0: the default).
    #[arg(long, env = "ETCD_COMPACTION_BATCH_LIMIT", default_value_t = 1000)]
    pub compaction_batch_limit: i32,
    /// The compactor's pause between two batches.
    #[arg(long, env = "ETCD_COMPACTION_SLEEP_INTERVAL", default_value = "10ms", value_parser = go_duration)]
    pub compaction_sleep_interval: Duration,

    /// etcd's JSON gateway (`/v3/...`) on the client URLs.
    #[arg(long, env = "ETCD_ENABLE_GRPC_GATEWAY", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = go_bool)]
    pub enable_grpc_gateway: bool,

    #[command(flatten)]
    pub refused: RefusedFlags,
}

/// etcd 3.7 flags oxcd takes with etcd's names, types and defaults but only at their default
/// value (or, for the settings of a feature oxcd lacks, only while that feature is off): anything
/// else is refused at start by [`Config::refuse_unsupported`], never accepted and ignored.
#[derive(Debug, Clone, clap::Args)]
pub struct RefusedFlags {
    /// etcd's YAML configuration file (oxcd takes flags and ETCD_* variables only).
    #[arg(long, env = "ETCD_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_LISTEN_CLIENT_HTTP_URLS", value_delimiter = ',')]
    pub listen_client_http_urls: Vec<String>,
    #[arg(long, env = "ETCD_MAX_SNAPSHOTS", default_value_t = 5)]
    pub max_snapshots: u32,
    #[arg(long, env = "ETCD_MAX_WALS", default_value_t = 5)]
    pub max_wals: u32,
    #[arg(long, env = "ETCD_MEMORY_MLOCK", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub memory_mlock: bool,
    #[arg(long, env = "ETCD_BACKEND_BBOLT_FREELIST_TYPE", default_value = "map")]
    pub backend_bbolt_freelist_type: String,
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", value_parser = go_duration)]
    pub backend_batch_interval: Option<Duration>,
    #[arg(long, env = "ETCD_BACKEND_BATCH_LIMIT", default_value_t = 0)]
    pub backend_batch_limit: u64,
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s", value_parser = go_duration)]
    pub grpc_keepalive_min_time: Duration,
    #[arg(long, env = "ETCD_SOCKET_REUSE_PORT", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub socket_reuse_port: bool,
    #[arg(long, env = "ETCD_SOCKET_REUSE_ADDRESS", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub socket_reuse_address: bool,
    #[arg(long, env = "ETCD_RAFT_READ_TIMEOUT", default_value = "5s", value_parser = go_duration)]
    pub raft_read_timeout: Duration,
    #[arg(long, env = "ETCD_RAFT_WRITE_TIMEOUT", default_value = "5s", value_parser = go_duration)]
    pub raft_write_timeout: Duration,

    #[arg(long, env = "ETCD_DISCOVERY", default_value = "")]
    pub discovery: String,
    #[arg(long, env = "ETCD_DISCOVERY_TOKEN", default_value = "")]
    pub discovery_token: String,
    #[arg(long, env = "ETCD_DISCOVERY_ENDPOINTS", default_value = "")]
    pub discovery_endpoints: String,
    #[arg(long, env = "ETCD_DISCOVERY_SRV", default_value = "")]
    pub discovery_srv: String,
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME", default_value = "")]
    pub discovery_srv_name: String,
    #[arg(long, env = "ETCD_DISCOVERY_PROXY", default_value = "")]
    pub discovery_proxy: String,
    #[arg(long, env = "ETCD_DISCOVERY_FALLBACK", default_value = "exit")]
    pub discovery_fallback: String,
    // The discovery client's settings; etcd uses them only with --discovery-endpoints.
    #[arg(long, env = "ETCD_DISCOVERY_DIAL_TIMEOUT", default_value = "2s", value_parser = go_duration)]
    pub discovery_dial_timeout: Duration,
    #[arg(long, env = "ETCD_DISCOVERY_REQUEST_TIMEOUT", default_value = "5s", value_parser = go_duration)]
    pub discovery_request_timeout: Duration,
    #[arg(long, env = "ETCD_DISCOVERY_KEEPALIVE_TIME", default_value = "2s", value_parser = go_duration)]
    pub discovery_keepalive_time: Duration,
    #[arg(long, env = "ETCD_DISCOVERY_KEEPALIVE_TIMEOUT", default_value = "6s", value_parser = go_duration)]
    pub discovery_keepalive_timeout: Duration,
    #[arg(long, env = "ETCD_DISCOVERY_INSECURE_TRANSPORT", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = go_bool)]
    pub discovery_insecure_transport: bool,
    #[arg(long, env = "ETCD_DISCOVERY_INSECURE_SKIP_TLS_VERIFY", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub discovery_insecure_skip_tls_verify: bool,
    #[arg(long, env = "ETCD_DISCOVERY_CERT", default_value = "")]
    pub discovery_cert: String,
    #[arg(long, env = "ETCD_DISCOVERY_KEY", default_value = "")]
    pub discovery_key: String,
    #[arg(long, env = "ETCD_DISCOVERY_CACERT", default_value = "")]
    pub discovery_cacert: String,
    #[arg(long, env = "ETCD_DISCOVERY_USER", default_value = "")]
    pub discovery_user: String,
    #[arg(long, env = "ETCD_DISCOVERY_PASSWORD", default_value = "")]
    pub discovery_password: String,
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = go_bool)]
    pub strict_reconfig_check: bool,
    #[arg(long, env = "ETCD_PRE_VOTE", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = go_bool)]
    pub pre_vote: bool,
    /// etcd enforces its default whatever is given; oxcd has no v2 store at all.
    #[arg(long, env = "ETCD_V2_DEPRECATION", default_value = "write-only", value_parser = ["not-yet", "write-only", "write-only-skip-check", "write-only-drop-data", "gone"])]
    pub v2_deprecation: String,

    #[arg(long, env = "ETCD_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_CLIENT_KEY_FILE")]
    pub client_key_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_FILE")]
    pub peer_client_cert_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_PEER_CLIENT_KEY_FILE")]
    pub peer_client_key_file: Option<PathBuf>,
    #[arg(long, env = "ETCD_CORS", default_value = "*")]
    pub cors: String,
    #[arg(long, env = "ETCD_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,
    #[arg(long, env = "ETCD_PEER_SKIP_CLIENT_SAN_VERIFICATION", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub peer_skip_client_san_verification: bool,

    #[arg(long, env = "ETCD_ENABLE_PPROF", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub enable_pprof: bool,
    #[arg(long, env = "ETCD_ENABLE_LOG_ROTATION", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub enable_log_rotation: bool,
    // Only used with --enable-log-rotation, as in etcd.
    #[arg(
        long,
        env = "ETCD_LOG_ROTATION_CONFIG_JSON",
        default_value = r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#
    )]
    pub log_rotation_config_json: String,
    #[arg(long, env = "ETCD_WARNING_UNARY_REQUEST_DURATION", default_value = "300ms", value_parser = go_duration)]
    pub warning_unary_request_duration: Duration,

    #[arg(long, env = "ETCD_ENABLE_DISTRIBUTED_TRACING", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub enable_distributed_tracing: bool,
    // The tracing exporter's settings; etcd uses them only with --enable-distributed-tracing.
    #[arg(
        long,
        env = "ETCD_DISTRIBUTED_TRACING_ADDRESS",
        default_value = "localhost:4317"
    )]
    pub distributed_tracing_address: String,
    #[arg(
        long,
        env = "ETCD_DISTRIBUTED_TRACING_SERVICE_NAME",
        default_value = "etcd"
    )]
    pub distributed_tracing_service_name: String,
    #[arg(long, env = "ETCD_DISTRIBUTED_TRACING_INSTANCE_ID", default_value = "")]
    pub distributed_tracing_instance_id: String,
    #[arg(
        long,
        env = "ETCD_DISTRIBUTED_TRACING_SAMPLING_RATE",
        default_value_t = 0
    )]
    pub distributed_tracing_sampling_rate: i32,

    #[arg(long, env = "ETCD_CORRUPT_CHECK_TIME", default_value = "0s", value_parser = go_duration)]
    pub corrupt_check_time: Duration,
    #[arg(
        long,
        env = "ETCD_BOOTSTRAP_DEFRAG_THRESHOLD_MEGABYTES",
        default_value_t = 0
    )]
    pub bootstrap_defrag_threshold_megabytes: u32,
    #[arg(long, env = "ETCD_DOWNGRADE_CHECK_TIME", default_value = "5s", value_parser = go_duration)]
    pub downgrade_check_time: Duration,
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = go_bool)]
    pub force_new_cluster: bool,
}

impl RefusedFlags {
    /// Every flag with the value it has and the only value oxcd takes, as `--flag=value` text.
    fn checks(&self) -> Vec<(&'static str, String, String)> {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let duration = |d: &Duration| format!("{d:?}");
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let mut checks = vec![
            ("config-file", path(&self.config_file), String::new()),
            (
                "listen-client-http-urls",
                self.listen_client_http_urls.join(","),
                String::new(),
            ),
            ("max-snapshots", self.max_snapshots.to_string(), "5".into()),
            ("max-wals", self.max_wals.to_string(), "5".into()),
            (
                "memory-mlock",
                self.memory_mlock.to_string(),
                "false".into(),
            ),
            (
                "backend-bbolt-freelist-type",
                self.backend_bbolt_freelist_type.clone(),
                "map".into(),
            ),
            (
                "backend-batch-interval",
                self.backend_batch_interval
                    .as_ref()
                    .map(duration)
                    .unwrap_or_default(),
                String::new(),
            ),
            (
                "backend-batch-limit",
                self.backend_batch_limit.to_string(),
                "0".into(),
            ),
            (
                "grpc-keepalive-min-time",
                duration(&self.grpc_keepalive_min_time),
                duration(&s(5)),
            ),
            (
                "socket-reuse-port",
                self.socket_reuse_port.to_string(),
                "false".into(),
            ),
            (
                "socket-reuse-address",
                self.socket_reuse_address.to_string(),
                "false".into(),
            ),
            (
                "raft-read-timeout",
                duration(&self.raft_read_timeout),
                duration(&s(5)),
            ),
            (
                "raft-write-timeout",
                duration(&self.raft_write_timeout),
                duration(&s(5)),
            ),
            ("discovery", self.discovery.clone(), String::new()),
            (
                "discovery-token",
                self.discovery_token.clone(),
                String::new(),
            ),
            (
                "discovery-endpoints",
                self.discovery_endpoints.clone(),
                String::new(),
            ),
            ("discovery-srv", self.discovery_srv.clone(), String::new()),
            (
                "discovery-srv-name",
                self.discovery_srv_name.clone(),
                String::new(),
            ),
            (
                "discovery-proxy",
                self.discovery_proxy.clone(),
                String::new(),
            ),
            (
                "discovery-fallback",
                self.discovery_fallback.clone(),
                "exit".into(),
            ),
            (
                "strict-reconfig-check",
                self.strict_reconfig_check.to_string(),
                "true".into(),
            ),
            ("pre-vote", self.pre_vote.to_string(), "true".into()),
            (
                "client-cert-file",
                path(&self.client_cert_file),
                String::new(),
            ),
            (
                "client-key-file",
                path(&self.client_key_file),
                String::new(),
            ),
            (
                "peer-client-cert-file",
                path(&self.peer_client_cert_file),
                String::new(),
            ),
            (
                "peer-client-key-file",
                path(&self.peer_client_key_file),
                String::new(),
            ),
            ("cors", self.cors.clone(), "*".into()),
            ("host-whitelist", self.host_whitelist.clone(), "*".into()),
            (
                "peer-skip-client-san-verification",
                self.peer_skip_client_san_verification.to_string(),
                "false".into(),
            ),
            (
                "enable-pprof",
                self.enable_pprof.to_string(),
                "false".into(),
            ),
            (
                "enable-log-rotation",
                self.enable_log_rotation.to_string(),
                "false".into(),
            ),
            (
                "warning-unary-request-duration",
                duration(&self.warning_unary_request_duration),
                duration(&ms(300)),
            ),
            (
                "enable-distributed-tracing",
                self.enable_distributed_tracing.to_string(),
                "false".into(),
            ),
            (
                "corrupt-check-time",
                duration(&self.corrupt_check_time),
                duration(&Duration::ZERO),
            ),
            (
                "bootstrap-defrag-threshold-megabytes",
                self.bootstrap_defrag_threshold_megabytes.to_string(),
                "0".into(),
            ),
            (
                "downgrade-check-time",
                duration(&self.downgrade_check_time),
                duration(&s(5)),
            ),
            (
                "force-new-cluster",
                self.force_new_cluster.to_string(),
                "false".into(),
            ),
        ];
        // An empty list and "*" both allow everything, in etcd.
        for (name, value, _) in &mut checks {
            if matches!(*name, "cors" | "host-whitelist") && value.is_empty() {
                *value = "*".into();
            }
        }
        checks
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

/// A Go duration as etcd's flags take one (Go's time.ParseDuration): a sequence of decimal
/// numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as "300ms" or
/// "1h30m"; "0" alone needs none. Errors read as Go's.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let quoted = format!("{s:?}");
    let missing_unit = || format!("time: missing unit in duration {quoted}");
    let invalid = || format!("time: invalid duration {quoted}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(
            if s.starts_with('-') && s[1..].chars().all(|c| c.is_ascii_digit()) {
                missing_unit()
            } else {
                invalid()
            },
        );
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "" => return Err(missing_unit()),
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("time: unknown unit {other:?} in duration {quoted}")),
        };
        total += value * seconds;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

/// Go's strconv.ParseBool, which etcd's boolean flags and variables take.
pub fn go_bool(s: &str) -> Result<bool, String> {
    crate::features::parse_go_bool(s).ok_or_else(|| "parse error".to_string())
}

/// What Go's flag package (so etcd) prints for a command line clap refused: an unknown flag or a
/// malformed value. `None` for anything else (help and version output, say), which clap
/// reports itself. A flag etcd 3.7 removed is refused as etcd 3.7 refuses it, with the name
/// that replaced it.
pub fn go_flag_error(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    // clap names the flag as `--name <VALUE>` or `--name=value`.
    let flag = context(ContextKind::InvalidArg)?
        .split([' ', '='])
        .next()?
        .trim_start_matches('-');
    match error.kind() {
        ErrorKind::UnknownArgument => {
            let mut message = format!("flag provided but not defined: -{flag}");
            let command = <Config as clap::CommandFactory>::command();
            if let Some(renamed) = flag.strip_prefix("experimental-").filter(|renamed| {
                command
                    .get_arguments()
                    .any(|a| a.get_long() == Some(*renamed))
            }) {
                message.push_str(&format!(
                    "\n(etcd 3.7 removed --{flag}; its name is now --{renamed})"
                ));
            }
            Some(message)
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            let reason = std::error::Error::source(error)
                .map(|e| e.to_string())
                .unwrap_or_else(|| "parse error".into());
            Some(format!(
                "invalid value {value:?} for flag -{flag}: {reason}"
            ))
        }
        _ => None,
    }
}

/// `args` with every single-dash flag name longer than one letter (`-log-level warn`,
/// `-name=x`) given its second dash, so clap parses etcd's command line as Go's flag package
/// does: Go takes `-flag` and `--flag` alike, where clap reads `-log-level` as the short flags
/// `-l -o -g …` (and an unknown `-nosuch` is then reported as `--nosuch`, not as `-n`). A flag's
/// value after a space is never touched, nor is anything after `--`; one-letter flags (`-h`)
/// stay clap's short flags.
pub fn go_style_args<I>(args: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator,
    I::Item: Into<std::ffi::OsString>,
{
    let mut command = <Config as clap::CommandFactory>::command();
    command.build();
    let long = |name: &str| command.get_arguments().find(|a| a.get_long() == Some(name));
    let mut rewritten = Vec::new();
    let mut value_next = false;
    let mut rest_verbatim = false;
    for (i, arg) in args.into_iter().map(Into::into).enumerate() {
        let text = arg.to_str().unwrap_or_default();
        let verbatim = i == 0 || rest_verbatim || std::mem::take(&mut value_next);
        if verbatim || !text.starts_with('-') {
            rewritten.push(arg);
            continue;
        }
        if text == "--" {
            rest_verbatim = true;
            rewritten.push(arg);
            continue;
        }
        let name = text.trim_start_matches('-');
        let (name, inline_value) = match name.split_once('=') {
            Some((name, _)) => (name, true),
            None => (name, false),
        };
        // A flag that must have a value and has none inline takes the next argument.
        value_next = !inline_value
            && long(name)
                .is_some_and(|flag| flag.get_num_args().is_some_and(|n| n.min_values() > 0));
        if text.starts_with("--") || name.chars().count() < 2 {
            rewritten.push(arg);
        } else {
            rewritten.push(format!("-{text}").into());
        }
    }
    rewritten
}

impl Config {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.oxcd", self.name)))
    }

    /// `--initial-cluster`, defaulting as etcd does to this member alone.
    pub fn initial_cluster(&self) -> String {
        self.initial_cluster.clone().unwrap_or_else(|| {
            self.initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={}", self.name, u))
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    pub fn quota_bytes(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            2 << 30
        } else {
            self.quota_backend_bytes
        }
    }

    /// `--auth-token` and `--auth-token-ttl`, or why they are refused.
    pub fn auth_tokens(&self) -> anyhow::Result<crate::auth::TokenConfig> {
        crate::auth::TokenConfig::parse(&self.auth_token, Duration::from_secs(self.auth_token_ttl))
    }

    /// `--bcrypt-cost`; etcd warns and uses its default outside bcrypt's range.
    pub fn bcrypt_cost(&self) -> u32 {
        if (4..=31).contains(&self.bcrypt_cost) {
            self.bcrypt_cost
        } else {
            tracing::warn!(
                given = self.bcrypt_cost,
                default = crate::auth::DEFAULT_BCRYPT_COST,
                "use default bcrypt cost instead of the invalid given cost"
            );
            crate::auth::DEFAULT_BCRYPT_COST
        }
    }

    /// Automatic compaction as the flags ask for it, or why they are refused.
    pub fn auto_compaction(&self) -> anyhow::Result<Option<crate::auto_compaction::Retention>> {
        crate::auto_compaction::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)
            .map_err(anyhow::Error::msg)
    }

    /// --compaction-batch-limit and --compaction-sleep-interval; as in etcd, a batch limit of
    /// 0 or less is the default.
    pub fn compaction_pacing(&self) -> crate::mvcc::CompactionPacing {
        let default = crate::mvcc::CompactionPacing::default();
        crate::mvcc::CompactionPacing {
            batch_limit: usize::try_from(self.compaction_batch_limit)
                .ok()
                .filter(|&limit| limit > 0)
                .unwrap_or(default.batch_limit),
            sleep: self.compaction_sleep_interval,
        }
    }

    /// etcd's default is 10 minutes; kubeadm sets 5 s.
    pub fn progress_notify_interval(&self) -> Duration {
        self.watch_progress_notify_interval
            .unwrap_or(Duration::from_secs(600))
    }

    /// Refuses, naming the flag, every flag given a value oxcd cannot honour (see
    /// [`RefusedFlags`]) and a log format etcd does not have.
    pub fn refuse_unsupported(&self) -> anyhow::Result<()> {
        if !matches!(self.log_format.as_str(), "json" | "console") {
            anyhow::bail!(
                "unknown log format: {}, supported values json, console",
                self.log_format
            );
        }
        for (flag, value, only) in self.refused.checks() {
            if value != only {
                let only = if only.is_empty() { "unset" } else { &only };
                anyhow::bail!(
                    "--{flag}={value} is not supported by oxcd (it takes only --{flag}'s default, {only})"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_a_single_local_member() {
        let c = Config::try_parse_from(["oxcd"]).unwrap();
        assert_eq!(c.data_dir(), PathBuf::from("default.oxcd"));
        assert_eq!(c.listen_client_urls, ["http://127.0.0.1:2379"]);
        assert_eq!(c.initial_cluster(), "default=http://127.0.0.1:2380");
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.max_request_bytes, 1_572_864);
    }

    #[test]
    fn kubeadm_flags_parse() {
        let c = Config::try_parse_from([
            "oxcd",
            "--name=cp1",
            "--data-dir=/var/lib/etcd",
            "--listen-client-urls=https://127.0.0.1:2379,https://10.0.0.1:2379",
            "--client-cert-auth=true",
            "--snapshot-count=10000",
            "--watch-progress-notify-interval=5s",
            "--feature-gates=InitialCorruptCheck=true",
            "--initial-cluster-state=new",
        ])
        .unwrap();
        assert_eq!(c.listen_client_urls.len(), 2);
        assert_eq!(
            c.watch_progress_notify_interval,
            Some(Duration::from_secs(5))
        );
        assert_eq!(c.client_cert_auth, Some(true));
        assert!(c.feature_gates.enabled("InitialCorruptCheck"));
    }

    fn go_style(args: &[&str]) -> Vec<String> {
        go_style_args(args.iter().copied())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_parse_as_go_parses_them() {
        let args = [
            "etcd",
            "-log-level",
            "warn",
            "-name=x",
            "-data-dir",
            "-weird-dir",
            "--listen-client-urls",
            "unix:///tmp/etcd.sock",
            "-client-cert-auth",
            "-h",
            "-nosuchflag",
        ];
        assert_eq!(
            go_style(&args),
            [
                "etcd",
                "--log-level",
                "warn",
                "--name=x",
                "--data-dir",
                "-weird-dir",
                "--listen-client-urls",
                "unix:///tmp/etcd.sock",
                "--client-cert-auth",
                "-h",
                "--nosuchflag",
            ]
        );
        assert_eq!(go_style(&["etcd", "-help"]), ["etcd", "--help"]);
        assert_eq!(go_style(&["etcd", "-version"]), ["etcd", "--version"]);
        assert_eq!(go_style(&["etcd", "--", "-name"]), ["etcd", "--", "-name"]);
        let c = Config::try_parse_from(go_style(&[
            "etcd",
            "-log-level",
            "warn",
            "-name=x",
            "-data-dir",
            "/d",
        ]))
        .unwrap();
        assert_eq!((c.log_level.as_str(), c.name.as_str()), ("warn", "x"));
        assert_eq!(c.data_dir(), PathBuf::from("/d"));
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration("5s"), Ok(ms(5000)));
        assert_eq!(go_duration("100ms"), Ok(ms(100)));
        assert_eq!(go_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(go_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(
            go_duration("1x"),
            Err("time: unknown unit \"x\" in duration \"1x\"".into())
        );
        assert_eq!(
            go_duration("10"),
            Err("time: missing unit in duration \"10\"".into())
        );
    }

    #[test]
    fn flags_oxcd_cannot_honour_are_refused() {
        for bad in [
            "--logger=capnslog",
            "--log-level=verbose",
            "--feature-gates=LeaseCheckpoint=true",
            "--feature-gates=NoSuchGate=true",
        ] {
            assert!(Config::try_parse_from(["oxcd", bad]).is_err(), "{bad}");
        }
        let c = Config::try_parse_from(["oxcd", "--auto-compaction-mode=hourly"]).unwrap();
        assert!(c.auto_compaction().is_err());
    }

    /// Every flag `etcd --help` of etcd 3.7.3 lists.
    const ETCD37_FLAGS: &str = "name data-dir wal-dir snapshot-count heartbeat-interval \
        election-timeout initial-election-tick-advance listen-peer-urls listen-client-urls \
        listen-client-http-urls max-snapshots max-wals memory-mlock quota-backend-bytes \
        backend-bbolt-freelist-type backend-batch-interval backend-batch-limit max-txn-ops \
        max-request-bytes max-concurrent-streams grpc-keepalive-min-time grpc-keepalive-interval \
        grpc-keepalive-timeout socket-reuse-port socket-reuse-address enable-grpc-gateway \
        raft-read-timeout raft-write-timeout feature-gates initial-advertise-peer-urls \
        initial-cluster initial-cluster-state initial-cluster-token advertise-client-urls \
        discovery discovery-token discovery-endpoints discovery-dial-timeout \
        discovery-request-timeout discovery-keepalive-time discovery-keepalive-timeout \
        discovery-insecure-transport discovery-insecure-skip-tls-verify discovery-cert \
        discovery-key discovery-cacert discovery-user discovery-password discovery-fallback \
        discovery-proxy discovery-srv discovery-srv-name strict-reconfig-check pre-vote \
        auto-compaction-retention auto-compaction-mode v2-deprecation cert-file key-file \
        client-cert-auth client-cert-file client-key-file client-crl-file \
        client-cert-allowed-hostname trusted-ca-file auto-tls peer-cert-file peer-key-file \
        peer-client-cert-auth peer-client-cert-file peer-client-key-file peer-trusted-ca-file \
        peer-cert-allowed-cn peer-cert-allowed-hostname peer-auto-tls self-signed-cert-validity \
        peer-crl-file cipher-suites cors host-whitelist tls-min-version tls-max-version \
        auth-token bcrypt-cost auth-token-ttl enable-pprof metrics listen-metrics-urls logger \
        log-outputs log-level log-format enable-log-rotation log-rotation-config-json \
        warning-unary-request-duration enable-distributed-tracing distributed-tracing-address \
        distributed-tracing-service-name distributed-tracing-instance-id \
        distributed-tracing-sampling-rate corrupt-check-time compact-hash-check-time \
        compaction-batch-limit peer-skip-client-san-verification watch-progress-notify-interval \
        warning-apply-duration bootstrap-defrag-threshold-megabytes max-learners \
        compaction-sleep-interval downgrade-check-time snapshot-catchup-entries \
        force-new-cluster unsafe-no-fsync";

    #[test]
    fn every_etcd37_flag_is_taken_with_its_variable() {
        let mut command = <Config as clap::CommandFactory>::command();
        command.build();
        for flag in ETCD37_FLAGS.split_whitespace() {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("--{flag} is not defined"));
            let variable = format!("ETCD_{}", flag.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|v| v.to_str()),
                Some(variable.as_str()),
                "--{flag}"
            );
        }
        // ...and at their defaults none of them is refused.
        Config::try_parse_from(["oxcd"])
            .unwrap()
            .refuse_unsupported()
            .unwrap();
    }

    #[test]
    fn etcd36_unprefixed_flags_are_honoured() {
        let c = Config::try_parse_from([
            "oxcd",
            "--snapshot-catchup-entries=100",
            "--max-learners=2",
            "--warning-apply-duration=1s",
            "--max-concurrent-streams=10",
            "--grpc-keepalive-interval=30s",
            "--grpc-keepalive-timeout=5s",
            "--compact-hash-check-time=2m",
            "--unsafe-no-fsync",
            "--log-format=console",
            "--compaction-batch-limit=50",
            "--compaction-sleep-interval=1ms",
        ])
        .unwrap();
        c.refuse_unsupported().unwrap();
        assert_eq!(
            c.compaction_pacing(),
            crate::mvcc::CompactionPacing {
                batch_limit: 50,
                sleep: Duration::from_millis(1)
            }
        );
        let default = Config::try_parse_from(["oxcd", "--compaction-batch-limit=0"]).unwrap();
        assert_eq!(default.compaction_pacing(), Default::default());
        assert_eq!(
            (
                c.snapshot_catchup_entries,
                c.max_learners,
                c.max_concurrent_streams
            ),
            (100, 2, 10)
        );
        assert_eq!(c.warning_apply_duration, Duration::from_secs(1));
        assert_eq!(c.grpc_keepalive_interval, Duration::from_secs(30));
        assert!(c.unsafe_no_fsync);
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        let c = Config::try_parse_from([
            "oxcd",
            "--snapshot-count=7",
            "--name=a",
            "--snapshot-count=8",
        ])
        .unwrap();
        assert_eq!((c.snapshot_count, c.name.as_str()), (8, "a"));
    }

    #[test]
    fn booleans_parse_as_go_parses_them() {
        for (args, on) in [
            (&["oxcd"][..], false),
            (&["oxcd", "--unsafe-no-fsync"], true),
            (&["oxcd", "--unsafe-no-fsync=T"], true),
            (&["oxcd", "--unsafe-no-fsync=1"], true),
            (&["oxcd", "--unsafe-no-fsync=false"], false),
        ] {
            assert_eq!(
                Config::try_parse_from(args).unwrap().unsafe_no_fsync,
                on,
                "{args:?}"
            );
        }
        let e = Config::try_parse_from(["oxcd", "--memory-mlock=yes"]).unwrap_err();
        assert_eq!(
            go_flag_error(&e).unwrap(),
            "invalid value \"yes\" for flag -memory-mlock: parse error"
        );
    }

    #[test]
    fn the_initial_election_tick_advance_can_be_turned_off() {
        for (flag, advance) in [
            ("--initial-election-tick-advance=false", false),
            ("--initial-election-tick-advance", true),
        ] {
            let c = Config::try_parse_from(["oxcd", flag]).unwrap();
            c.refuse_unsupported().unwrap();
            assert_eq!(c.initial_election_tick_advance, advance, "{flag}");
        }
    }

    #[test]
    fn flags_without_an_implementation_are_refused_by_name_unless_default() {
        for (flag, named) in [
            ("--max-wals=10", "--max-wals=10"),
            ("--memory-mlock", "--memory-mlock=true"),
            ("--force-new-cluster", "--force-new-cluster=true"),
            ("--enable-pprof=true", "--enable-pprof=true"),
            (
                "--discovery-endpoints=http://d:2379",
                "--discovery-endpoints=http://d:2379",
            ),
            ("--corrupt-check-time=1m", "--corrupt-check-time=60s"),
            ("--cors=https://a.example", "--cors=https://a.example"),
            (
                "--config-file=/etc/etcd.yaml",
                "--config-file=/etc/etcd.yaml",
            ),
            ("--pre-vote=false", "--pre-vote=false"),
        ] {
            let c = Config::try_parse_from(["oxcd", flag]).unwrap();
            let refused = c.refuse_unsupported().unwrap_err().to_string();
            assert!(refused.starts_with(named), "{flag}: {refused}");
            assert!(refused.contains("not supported by oxcd"), "{refused}");
        }
        // Given their defaults explicitly, or "" for "*", they are taken.
        for flag in [
            "--max-wals=5",
            "--pre-vote=true",
            "--cors=",
            "--corrupt-check-time=0",
            "--grpc-keepalive-min-time=5s",
            "--v2-deprecation=gone",
        ] {
            let c = Config::try_parse_from(["oxcd", flag]).unwrap();
            c.refuse_unsupported().unwrap();
        }
        let c = Config::try_parse_from(["oxcd", "--log-format=xml"]).unwrap();
        assert_eq!(
            c.refuse_unsupported().unwrap_err().to_string(),
            "unknown log format: xml, supported values json, console"
        );
    }

    #[test]
    fn removed_and_unknown_flags_are_refused_as_go_refuses_them() {
        let error = |args: &[&str]| {
            let e = Config::try_parse_from(go_style_args(args.iter().copied())).unwrap_err();
            go_flag_error(&e).unwrap()
        };
        assert_eq!(
            error(&["oxcd", "--experimental-watch-progress-notify-interval=5s"]),
            "flag provided but not defined: -experimental-watch-progress-notify-interval\n\
             (etcd 3.7 removed --experimental-watch-progress-notify-interval; its name is now \
             --watch-progress-notify-interval)"
        );
        assert_eq!(
            error(&["oxcd", "-experimental-initial-corrupt-check", "true"]),
            "flag provided but not defined: -experimental-initial-corrupt-check"
        );
        assert_eq!(
            error(&["oxcd", "--client-cert-allowed-cn=x"]),
            "flag provided but not defined: -client-cert-allowed-cn"
        );
        assert_eq!(
            error(&["oxcd", "--max-learners=x"]),
            "invalid value \"x\" for flag -max-learners: invalid digit found in string"
        );
        assert_eq!(
            error(&["oxcd", "--watch-progress-notify-interval", "5"]),
            "invalid value \"5\" for flag -watch-progress-notify-interval: time: missing unit in duration \"5\""
        );
        let help = Config::try_parse_from(["oxcd", "--help"]).unwrap_err();
        assert_eq!(go_flag_error(&help), None);
    }

    #[test]
    fn certificate_identity_flags_take_one_name_or_a_list() {
        let c = Config::try_parse_from([
            "oxcd",
            "--peer-cert-allowed-cn=etcd-peer",
            "--client-cert-allowed-hostname=a.example,10.0.0.1",
        ])
        .unwrap();
        assert_eq!(c.peer_cert_allowed_cn, ["etcd-peer"]);
        assert!(c.peer_cert_allowed_hostname.is_empty());
        assert_eq!(c.client_cert_allowed_hostname, ["a.example", "10.0.0.1"]);
    }

    #[test]
    fn transport_flags_parse_as_etcd_takes_them() {
        let c = Config::try_parse_from([
            "oxcd",
            "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "--tls-max-version=TLS1.3",
            "--auto-tls",
            "--peer-auto-tls=false",
            "--self-signed-cert-validity=3",
            "--client-crl-file=/etc/crl.pem",
        ])
        .unwrap();
        assert_eq!(c.cipher_suites.len(), 2);
        assert_eq!(c.tls_min_version, "TLS1.2");
        assert_eq!(c.tls_max_version, "TLS1.3");
        assert_eq!((c.auto_tls, c.peer_auto_tls), (Some(true), Some(false)));
        assert_eq!(c.self_signed_cert_validity, 3);
        assert_eq!(c.client_crl_file, Some(PathBuf::from("/etc/crl.pem")));
    }
}
