//! `compare`: the whole etcd-vs-oxcd matrix in one run. Every workload gets a fresh etcd cluster
//! and a fresh oxcd cluster of the same size, started with the same flags (fsync on: both
//! servers' default), one after the other; the order alternates from workload to workload so
//! that neither server always runs while the machine is busier. The results go to a directory as
//! report.md, report.json and SVG plots (see report.rs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;

use crate::connection::Endpoints;
use crate::failover::kill_leaders;
use crate::footprint::{self, Footprint, LOAD_BATCH};
use crate::load::{run_puts, KeyShape, LoadReport, LoadShape, PutWorkload};
use crate::report::{self, Machine, Metric, MetricRow, Report, Run, Target, Unit};
use crate::server::{new_work_dir, Cluster};
use crate::stats::median;
use crate::watch::{prepare, WatchWorkload};
use crate::workloads::{
    run_lease_keep_alives, run_mixed, run_ranges, run_txn_puts, Consistency,
    LeaseKeepAliveWorkload, MixedWorkload, RangeWorkload, TxnPutWorkload,
};

/// Every key is 8 bytes and every value 256 random bytes, as the targets are stated.
pub const KEY_SIZE: u64 = 8;
const VAL_SIZE: u64 = 256;
/// Keys the write workloads pick from at random.
const KEY_SPACE: u64 = 100_000;
/// A workload (on one server) that has not finished after this long has failed.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(1200);
/// Pause before reading the servers' memory with the watchers in place.
pub const WATCH_RSS_SETTLE: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Cluster sizes, e.g. `1`, `3` or `1,3`; each size runs the whole matrix.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = parse_members)]
    pub members: Vec<usize>,
    /// The oxcd server binary.
    #[arg(long)]
    pub oxcd_bin: PathBuf,
    /// The reference etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// etcdctl, which restores etcd's snapshot.
    #[arg(long, default_value = "/usr/bin/etcdctl")]
    pub etcdctl_bin: PathBuf,
    /// oxcdctl, which restores oxcd's snapshot; without it that cell is reported as not measured.
    #[arg(long)]
    pub oxcdctl_bin: Option<PathBuf>,
    /// How much load: `ci` (seconds, a smoke test), `quick` (minutes), `full` (the report).
    #[arg(long, value_enum, default_value = "quick")]
    pub scale: Scale,
    /// Comma-separated subset of the workloads (all of them by default).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub workloads: Vec<Workload>,
    /// Directory for report.md, report.json and the plots; created if missing.
    #[arg(long)]
    pub out: PathBuf,
}

fn parse_members(text: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(members @ (1 | 3)) => Ok(members),
        _ => Err(format!("`{text}` is not a supported cluster size (1 or 3)")),
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Ci,
    Quick,
    Full,
}

/// How long each throughput workload runs, and how big the data sets are.
#[derive(Clone, Debug)]
pub struct Preset {
    /// Each throughput workload runs this long; `None` runs `requests_per_client` per client.
    pub duration: Option<Duration>,
    /// Requests per client (at least `MIN_TOTAL` in all) when there is no duration.
    pub requests_per_client: u64,
    /// Keys preloaded for the range workloads.
    pub range_keys: u64,
    pub watch_streams: u64,
    pub watchers_per_stream: u64,
    pub watch_puts: u64,
    pub watch_put_rate: u64,
    /// Keys loaded before the footprint is measured.
    pub footprint_keys: u64,
    /// Pause between the load and the footprint readings.
    pub settle: Duration,
    pub failover_rounds: u64,
}

/// The smallest total of a request-count run, so a one-client run is not over in microseconds.
const MIN_TOTAL: u64 = 200;

impl Scale {
    pub fn preset(self) -> Preset {
        match self {
            Scale::Ci => Preset {
                duration: None,
                requests_per_client: 4,
                range_keys: 1_000,
                watch_streams: 10,
                watchers_per_stream: 10,
                watch_puts: 50,
                watch_put_rate: 50,
                footprint_keys: 2_000,
                settle: Duration::from_secs(1),
                failover_rounds: 1,
            },
            Scale::Quick => Preset {
                duration: Some(Duration::from_secs(5)),
                requests_per_client: 0,
                range_keys: 10_000,
                watch_streams: 100,
                watchers_per_stream: 100,
                watch_puts: 100,
                watch_put_rate: 20,
                footprint_keys: 100_000,
                settle: Duration::from_secs(3),
                failover_rounds: 2,
            },
            Scale::Full => Preset {
                duration: Some(Duration::from_secs(10)),
                requests_per_client: 0,
                range_keys: 100_000,
                watch_streams: 100,
                watchers_per_stream: 100,
                watch_puts: 200,
                watch_put_rate: 20,
                footprint_keys: 1_000_000,
                settle: Duration::from_secs(5),
                failover_rounds: 3,
            },
        }
    }
}

impl Preset {
    fn load(&self, clients: u64, conns: u64) -> LoadShape {
        LoadShape {
            clients,
            conns,
            total: (clients * self.requests_per_client).max(MIN_TOTAL),
            duration: self.duration,
            rate: 0.0,
            slow: None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "duration_s": self.duration.map(|duration| duration.as_secs_f64()),
            "requests_per_client": self.requests_per_client,
            "range_keys": self.range_keys,
            "watch_streams": self.watch_streams,
            "watchers_per_stream": self.watchers_per_stream,
            "watch_puts": self.watch_puts,
            "watch_put_rate": self.watch_put_rate,
            "footprint_keys": self.footprint_keys,
            "settle_s": self.settle.as_secs_f64(),
            "failover_rounds": self.failover_rounds,
            "key_size": KEY_SIZE,
            "val_size": VAL_SIZE,
            "key_space": KEY_SPACE,
        })
    }
}

/// One column of the matrix: what is run against a fresh cluster of each server.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts from one client over one connection.
    PutSeq,
    #[value(name = "put-50")]
    Put50,
    #[value(name = "put-1000")]
    Put1000,
    /// Linearizable single-key gets over preloaded keys.
    RangeL,
    /// Serializable single-key gets over preloaded keys.
    RangeS,
    TxnPut,
    Mixed,
    LeaseKeepalive,
    /// put-50 with auth on: a user with a key-range permission and a simple token.
    #[value(name = "put-50-auth")]
    Put50Auth,
    /// range-l with auth on, as that user.
    #[value(name = "range-l-auth")]
    RangeLAuth,
    Watch,
    /// Memory, disk, snapshot and restart with N keys stored.
    Footprint,
    /// Leader kills (3-member clusters only).
    Failover,
}

pub const ALL_WORKLOADS: [Workload; 13] = [
    Workload::PutSeq,
    Workload::Put50,
    Workload::Put1000,
    Workload::RangeL,
    Workload::RangeS,
    Workload::TxnPut,
    Workload::Mixed,
    Workload::LeaseKeepalive,
    Workload::Put50Auth,
    Workload::RangeLAuth,
    Workload::Watch,
    Workload::Footprint,
    Workload::Failover,
];

/// Clients and connections of the concurrent workloads.
const RANGE_CLIENTS: (u64, u64) = (100, 10);
const OTHER_CLIENTS: (u64, u64) = (50, 10);
const LOAD_CLIENTS: (u64, u64) = (1000, 100);

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::PutSeq => "put-seq",
            Workload::Put50 => "put-50",
            Workload::Put1000 => "put-1000",
            Workload::RangeL => "range-l",
            Workload::RangeS => "range-s",
            Workload::TxnPut => "txn-put",
            Workload::Mixed => "mixed",
            Workload::LeaseKeepalive => "lease-keepalive",
            Workload::Put50Auth => "put-50-auth",
            Workload::RangeLAuth => "range-l-auth",
            Workload::Watch => "watch",
            Workload::Footprint => "footprint",
            Workload::Failover => "failover",
        }
    }

    fn runs_with(self, members: usize) -> bool {
        self != Workload::Failover || members > 1
    }

    /// What this workload reports, in the order `measure` returns the figures.
    fn metrics(self, preset: &Preset) -> Vec<Metric> {
        let metric = |suffix: &str, label: String, unit: Unit, target: Option<Target>| Metric {
            id: format!("{}.{suffix}", self.name()),
            workload: self.name(),
            label,
            unit,
            target,
        };
        let throughput = |label: String, target: Option<Target>| {
            vec![metric("throughput", label, Unit::OpsPerSec, target)]
        };
        let faster = |ratio| Some(Target::higher(ratio));
        match self {
            Workload::PutSeq => throughput("put, 1 client / 1 conn".into(), faster(1.3)),
            Workload::Put50 => throughput(
                "put, 50 clients / 10 conns".into(),
                Some(Target::higher(1.5).with_p99_not_worse()),
            ),
            Workload::Put1000 => throughput(
                "put, 1000 clients / 100 conns".into(),
                Some(Target::higher(1.5).with_p99_not_worse()),
            ),
            Workload::RangeL => throughput(
                format!(
                    "range linearizable, 100 clients, {} keys",
                    preset.range_keys
                ),
                faster(1.5),
            ),
            Workload::RangeS => throughput(
                format!(
                    "range serializable, 100 clients, {} keys",
                    preset.range_keys
                ),
                faster(2.0),
            ),
            Workload::TxnPut => throughput("txn of 4 puts, 50 clients".into(), None),
            Workload::Mixed => throughput("mixed 80% get / 20% put, 50 clients".into(), None),
            Workload::LeaseKeepalive => {
                throughput("lease keep-alive, 50 clients, 1000 leases".into(), None)
            }
            Workload::Put50Auth => throughput(
                "put with auth (simple token, non-root user), 50 clients / 10 conns".into(),
                None,
            ),
            Workload::RangeLAuth => throughput(
                format!(
                    "range linearizable with auth (non-root user), 100 clients, {} keys",
                    preset.range_keys
                ),
                None,
            ),
            Workload::Watch => {
                let watchers = preset.watch_streams * preset.watchers_per_stream;
                vec![
                    metric(
                        "p99",
                        format!(
                            "watch event p99, {watchers} watchers, {} puts/s",
                            preset.watch_put_rate
                        ),
                        Unit::Millis,
                        Some(Target::lower(1.0)),
                    ),
                    metric(
                        "rss",
                        format!("RSS with {watchers} watchers"),
                        Unit::Bytes,
                        Some(Target::lower(1.0)),
                    ),
                    metric(
                        "events",
                        format!("watch events delivered, {watchers} watchers"),
                        Unit::EventsPerSec,
                        None,
                    ),
                ]
            }
            Workload::Footprint => {
                let keys = preset.footprint_keys;
                vec![
                    metric(
                        "load",
                        format!(
                            "load {keys} keys (txns of {LOAD_BATCH} puts, {} clients)",
                            footprint::LOAD_CLIENTS.0
                        ),
                        Unit::KeysPerSec,
                        None,
                    ),
                    metric(
                        "rss",
                        format!("RSS after {keys} keys"),
                        Unit::Bytes,
                        Some(Target::lower(0.5)),
                    ),
                    metric(
                        "data-dir",
                        format!("data dir after {keys} keys"),
                        Unit::Bytes,
                        Some(Target::lower(1.0)),
                    ),
                    metric(
                        "restart",
                        format!("restart to serving, {keys} keys"),
                        Unit::Seconds,
                        Some(Target::lower(1.0)),
                    ),
                    metric(
                        "snapshot-save",
                        format!("snapshot save, {keys} keys"),
                        Unit::Seconds,
                        None,
                    ),
                    metric(
                        "snapshot-size",
                        format!("snapshot size, {keys} keys"),
                        Unit::Bytes,
                        None,
                    ),
                    metric(
                        "snapshot-restore",
                        format!("snapshot restore, {keys} keys"),
                        Unit::Seconds,
                        None,
                    ),
                ]
            }
            Workload::Failover => vec![
                metric(
                    "recovery",
                    format!(
                        "leader killed → first put acknowledged, median of {}",
                        preset.failover_rounds
                    ),
                    Unit::Seconds,
                    None,
                ),
                metric(
                    "gap",
                    format!(
                        "longest gap between acknowledged puts, median of {}",
                        preset.failover_rounds
                    ),
                    Unit::Seconds,
                    None,
                ),
            ],
        }
    }

    /// Runs this workload against `cluster` and returns one figure per metric.
    async fn measure(
        self,
        ctx: &RunContext,
        cluster: &mut Cluster,
        label: &str,
    ) -> Result<Vec<Cell>> {
        let endpoints = Endpoints::plain(cluster.client_urls());
        let preset = &ctx.preset;
        let put = |(clients, conns)| PutWorkload {
            load: preset.load(clients, conns),
            keys: key_shape(KEY_SPACE),
            val_size: VAL_SIZE,
            sequential_keys: false,
        };
        let range = |consistency| RangeWorkload {
            load: preset.load(RANGE_CLIENTS.0, RANGE_CLIENTS.1),
            keys: key_shape(preset.range_keys),
            consistency,
            limit: 0,
            prefix: None,
            keys_only: false,
            preload: preset.range_keys,
            val_size: VAL_SIZE,
        };
        let (clients, conns) = OTHER_CLIENTS;
        let as_user = || async {
            enable_auth(&endpoints).await?;
            Ok::<_, anyhow::Error>(endpoints.clone().with_user(BENCH_USER, BENCH_PASSWORD))
        };
        let report = match self {
            Workload::PutSeq => run_puts(&endpoints, &put((1, 1))).await?,
            Workload::Put50 => run_puts(&endpoints, &put(OTHER_CLIENTS)).await?,
            Workload::Put1000 => run_puts(&endpoints, &put(LOAD_CLIENTS)).await?,
            Workload::RangeL => run_ranges(&endpoints, &range(Consistency::Linearizable)).await?,
            Workload::RangeS => run_ranges(&endpoints, &range(Consistency::Serializable)).await?,
            Workload::Put50Auth => run_puts(&as_user().await?, &put(OTHER_CLIENTS)).await?,
            Workload::RangeLAuth => {
                run_ranges(&as_user().await?, &range(Consistency::Linearizable)).await?
            }
            Workload::TxnPut => {
                let workload = TxnPutWorkload {
                    load: preset.load(clients, conns),
                    keys: key_shape(KEY_SPACE),
                    val_size: VAL_SIZE,
                    txn_ops: 4,
                };
                run_txn_puts(&endpoints, &workload).await?
            }
            Workload::Mixed => {
                let workload = MixedWorkload {
                    load: preset.load(clients, conns),
                    keys: key_shape(KEY_SPACE),
                    val_size: VAL_SIZE,
                    read_ratio: 0.8,
                };
                run_mixed(&endpoints, &workload).await?
            }
            Workload::LeaseKeepalive => {
                let workload = LeaseKeepAliveWorkload {
                    load: preset.load(clients, conns),
                    leases: 1000,
                    lease_ttl: 60,
                };
                run_lease_keep_alives(&endpoints, &workload).await?
            }
            Workload::Watch => return measure_watch(preset, cluster, label).await,
            Workload::Footprint => {
                let footprint = footprint::measure(
                    cluster,
                    &key_shape(preset.footprint_keys),
                    VAL_SIZE as usize,
                    preset.settle,
                    &ctx.restorer(label),
                    label,
                )
                .await?;
                return Ok(footprint_cells(footprint));
            }
            Workload::Failover => {
                let failovers = kill_leaders(label, cluster, preset.failover_rounds).await?;
                let seconds =
                    |durations: Vec<Duration>| Cell::value(median(&durations).as_secs_f64());
                let details = serde_json::json!({
                    "failed_puts": failovers.iter().map(|round| round.failed).sum::<u64>(),
                    "unanswered_puts": failovers.iter().map(|round| round.unfinished).sum::<u64>(),
                    "recovery_s": failovers.iter().map(|round| round.recovery.as_secs_f64()).collect::<Vec<_>>(),
                    "longest_gap_s": failovers.iter().map(|round| round.longest_gap.as_secs_f64()).collect::<Vec<_>>(),
                    "slowest_answer_s": failovers.iter().map(|round| round.slowest_answer.as_secs_f64()).fold(0.0, f64::max),
                    "first_error": failovers.iter().find_map(|round| round.first_error.clone()),
                });
                let mut recovery = seconds(failovers.iter().map(|round| round.recovery).collect());
                recovery.details = details;
                return Ok(vec![
                    recovery,
                    seconds(failovers.iter().map(|round| round.longest_gap).collect()),
                ]);
            }
        };
        eprintln!(
            "{label}: {:.1} ops/s, p99 {:.3} ms, {} errors",
            report.throughput(),
            report.p99_us() as f64 / 1000.0,
            report.errors
        );
        Ok(vec![Cell::from_load(report)])
    }
}

/// The user the auth workloads run as: not root (whose requests skip the permission check),
/// but holding read-write on every key through a role.
const BENCH_USER: &str = "bench";
const BENCH_PASSWORD: &str = "bench-password";

/// Adds root and the bench user with their roles, then turns auth on.
async fn enable_auth(endpoints: &Endpoints) -> Result<()> {
    let mut client = crate::load::connect(endpoints, 0).await?;
    for (user, password) in [("root", "root-password"), (BENCH_USER, BENCH_PASSWORD)] {
        client.user_add(user, password, None).await?;
        client.role_add(user).await?;
        client.user_grant_role(user, user).await?;
    }
    let everything = etcd_client::Permission::read_write(vec![0]).with_from_key();
    client.role_grant_permission(BENCH_USER, everything).await?;
    client.auth_enable().await?;
    Ok(())
}

fn key_shape(key_space: u64) -> KeyShape {
    KeyShape {
        key_size: KEY_SIZE,
        key_space,
    }
}

async fn measure_watch(preset: &Preset, cluster: &Cluster, label: &str) -> Result<Vec<Cell>> {
    let endpoints = Endpoints::plain(cluster.client_urls());
    let workload = WatchWorkload {
        streams: preset.watch_streams,
        watchers: preset.watch_streams * preset.watchers_per_stream,
        streams_per_conn: 10,
        prefix: "/bench/watch/".to_owned(),
        puts: preset.watch_puts,
        put_rate: preset.watch_put_rate,
        keys: 100,
        prev_kv: false,
        drain_timeout_secs: 30,
    };
    eprintln!("{label}: creating {} watchers", workload.watchers);
    let prepared = prepare(&endpoints, &workload).await?;
    tokio::time::sleep(WATCH_RSS_SETTLE).await;
    let rss = cluster.rss_bytes()?;
    let report = prepared.run().await?;
    let p99_us = report.latency_us.value_at_quantile(0.99);
    eprintln!(
        "{label}: {} of {} events, p99 {:.3} ms",
        report.events_received,
        report.events_expected,
        p99_us as f64 / 1000.0
    );
    let mut latency = Cell::value(p99_us as f64 / 1000.0);
    latency.latency_us = Some(report.latency_us.clone());
    latency.details = report.to_json();
    Ok(vec![
        latency,
        Cell::value(rss as f64),
        Cell::value(report.delivery_rate()),
    ])
}

fn footprint_cells(footprint: Footprint) -> Vec<Cell> {
    let snapshot = footprint.snapshot;
    vec![
        Cell {
            value: Ok(footprint.keys_per_second),
            ..Cell::from_load(footprint.load)
        },
        Cell::value(footprint.rss_bytes as f64),
        Cell::value(footprint.data_dir_bytes as f64),
        Cell::value(footprint.restart.as_secs_f64()),
        Cell::from_result(
            snapshot
                .as_ref()
                .map(|saved| saved.seconds)
                .map_err(Clone::clone),
        ),
        Cell::from_result(
            snapshot
                .as_ref()
                .map(|saved| saved.bytes as f64)
                .map_err(Clone::clone),
        ),
        Cell::from_result(footprint.restore),
    ]
}

/// One server's figure for one metric.
#[derive(Clone, Debug)]
pub struct Cell {
    /// The figure, or why there is none (not supported, or the run failed).
    pub value: Result<f64, String>,
    /// The latencies behind a throughput or latency figure, for percentiles and plots.
    pub latency_us: Option<Histogram<u64>>,
    /// Everything else the run reported, for report.json.
    pub details: serde_json::Value,
    /// Requests that failed, with the first failure.
    pub errors: Option<(u64, String)>,
}

impl Cell {
    fn value(value: f64) -> Self {
        Self::from_result(Ok(value))
    }

    fn from_result(value: Result<f64, String>) -> Self {
        Self {
            value,
            latency_us: None,
            details: serde_json::Value::Null,
            errors: None,
        }
    }

    fn from_load(report: LoadReport) -> Self {
        Self {
            value: Ok(report.throughput()),
            details: report.to_json(),
            errors: report
                .first_error
                .clone()
                .map(|error| (report.errors, error)),
            latency_us: Some(report.latency_us),
        }
    }

    pub fn p99_us(&self) -> Option<u64> {
        self.latency_us
            .as_ref()
            .map(|latency| latency.value_at_quantile(0.99))
    }
}

/// The two servers, and what each is called in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Etcd,
    Oxcd,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Etcd => "etcd",
            Server::Oxcd => "oxcd",
        }
    }
}

/// What every workload run needs besides its cluster.
struct RunContext {
    args: CompareArgs,
    preset: Preset,
    work_dir: PathBuf,
    server: Server,
}

impl RunContext {
    fn binary(&self) -> &Path {
        match self.server {
            Server::Etcd => &self.args.etcd_bin,
            Server::Oxcd => &self.args.oxcd_bin,
        }
    }

    /// How the current server's snapshot is restored, into a scratch dir next to its logs.
    fn restorer(&self, label: &str) -> footprint::Restorer {
        let scratch = self
            .work_dir
            .join(format!("{label}-restore").replace([' ', '×'], "-"));
        match self.server {
            Server::Etcd => footprint::Restorer::Command {
                binary: self.args.etcdctl_bin.clone(),
                scratch,
            },
            Server::Oxcd => match &self.args.oxcdctl_bin {
                Some(binary) => footprint::Restorer::Command {
                    binary: binary.clone(),
                    scratch,
                },
                None => footprint::Restorer::Missing("not measured: no --oxcdctl-bin".into()),
            },
        }
    }
}

/// Runs the matrix and writes the report into `args.out`.
pub async fn compare(args: CompareArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let workloads: Vec<Workload> = if args.workloads.is_empty() {
        ALL_WORKLOADS.to_vec()
    } else {
        args.workloads.clone()
    };
    let machine_before = Machine::now(&args.etcd_bin, &args.oxcd_bin);
    let preset = args.scale.preset();
    let mut ctx = RunContext {
        preset,
        work_dir: new_work_dir()?,
        server: Server::Etcd,
        args,
    };
    eprintln!("compare: server logs under {}", ctx.work_dir.display());
    let mut runs = Vec::new();
    for members in ctx.args.members.clone() {
        let mut rows = Vec::new();
        let runnable = workloads
            .iter()
            .filter(|workload| workload.runs_with(members));
        for (index, &workload) in runnable.enumerate() {
            let order = if index % 2 == 0 {
                [Server::Etcd, Server::Oxcd]
            } else {
                [Server::Oxcd, Server::Etcd]
            };
            let metrics = workload.metrics(&ctx.preset);
            let mut etcd = Vec::new();
            let mut oxcd = Vec::new();
            for server in order {
                ctx.server = server;
                let cells = measure_on_fresh_cluster(&ctx, workload, members, metrics.len()).await;
                match server {
                    Server::Etcd => etcd = cells,
                    Server::Oxcd => oxcd = cells,
                }
            }
            rows.extend(metrics.into_iter().zip(etcd.into_iter().zip(oxcd)).map(
                |(metric, (etcd, oxcd))| MetricRow {
                    metric,
                    etcd,
                    oxcd,
                    etcd_first: order[0] == Server::Etcd,
                },
            ));
        }
        runs.push(Run { members, rows });
    }
    let report = Report {
        scale: ctx.args.scale,
        preset: ctx.preset.clone(),
        machine_before,
        machine_after: Machine::now(&ctx.args.etcd_bin, &ctx.args.oxcd_bin),
        oxcdctl: ctx.args.oxcdctl_bin.is_some(),
        work_dir: ctx.work_dir.clone(),
        runs,
    };
    report::write(&ctx.args.out, &report)?;
    eprintln!(
        "compare: report in {}",
        ctx.args.out.join("report.md").display()
    );
    Ok(())
}

/// Starts a fresh cluster of the context's server, runs `workload`, stops the cluster. Never
/// fails: a failure becomes the reason in every one of the `metrics` cells.
async fn measure_on_fresh_cluster(
    ctx: &RunContext,
    workload: Workload,
    members: usize,
    metrics: usize,
) -> Vec<Cell> {
    let label = format!("{}×{members} {}", ctx.server.name(), workload.name());
    let dir = ctx.work_dir.join(format!(
        "{members}-{}-{}",
        workload.name(),
        ctx.server.name()
    ));
    let measured = async {
        let mut cluster = Cluster::start_ready(&label, ctx.binary(), &dir, members).await?;
        let measured = tokio::time::timeout(
            WORKLOAD_TIMEOUT,
            workload.measure(ctx, &mut cluster, &label),
        )
        .await
        .map_err(|_| anyhow!("not finished after {WORKLOAD_TIMEOUT:?}"))
        .and_then(|cells| cells);
        let stopped = cluster.stop().await;
        let cells = measured?;
        stopped?;
        anyhow::Ok(cells)
    }
    .await;
    match measured {
        Ok(cells) => {
            assert_eq!(cells.len(), metrics, "{label}: one cell per metric");
            cells
        }
        Err(error) => {
            let reason = format!("failed: {error:#}");
            eprintln!("{label}: {reason}");
            vec![Cell::from_result(Err(reason)); metrics]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_names_its_metrics_uniquely() {
        let preset = Scale::Full.preset();
        let mut ids: Vec<String> = ALL_WORKLOADS
            .iter()
            .flat_map(|workload| workload.metrics(&preset))
            .map(|metric| metric.id)
            .collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }

    #[test]
    fn presets_grow_from_ci_to_full() {
        let (ci, quick, full) = (
            Scale::Ci.preset(),
            Scale::Quick.preset(),
            Scale::Full.preset(),
        );
        assert!(ci.footprint_keys < quick.footprint_keys);
        assert_eq!(full.footprint_keys, 1_000_000);
        assert_eq!(full.watch_streams * full.watchers_per_stream, 10_000);
        assert_eq!(ci.load(1, 1).total, MIN_TOTAL);
        assert_eq!(ci.load(1000, 100).total, 4000);
        assert!(full.load(1, 1).duration.is_some());
    }

    #[test]
    fn only_one_and_three_members_are_accepted() {
        assert_eq!(parse_members("3"), Ok(3));
        assert!(parse_members("2").is_err());
        assert!(parse_members("x").is_err());
    }

    #[test]
    fn failover_needs_more_than_one_member() {
        assert!(!Workload::Failover.runs_with(1));
        assert!(Workload::Failover.runs_with(3));
        assert!(Workload::PutSeq.runs_with(1));
    }
}
