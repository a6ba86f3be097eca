//! `compare-cluster`: a fresh 3-member etcd cluster, then a fresh 3-member oxcd cluster, each
//! measured the same way (put throughput and latency through all members, memory, and how long
//! writes stall when the leader is killed), summarised as one Markdown table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::KvClient;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::compare::{
    put_workload, run_workloads, workload_label, CONCURRENT_CLIENTS, CONCURRENT_CONNS, KEY_SIZE,
    KEY_SPACE, VAL_SIZE,
};
use crate::load::{connect, LoadReport, PutWorkload};
use crate::server::{
    new_work_dir, root_cause, Cluster, ELECTION_TIMEOUT_MS, HEARTBEAT_INTERVAL_MS,
};
use crate::stats::{format_ms, median, micros, ratio, MIB};

const MEMBERS: usize = 3;
/// Bounds a put workload, so a cluster that stops answering fails the run instead of hanging
/// it; far above what either server needs for the default totals.
/// The failover writer's pace: the resolution of the failover times.
const WRITE_INTERVAL: Duration = Duration::from_millis(5);
/// Steady writing before the leader is killed, which shows the writer works at all.
const BEFORE_KILL: Duration = Duration::from_secs(1);
/// Writing goes on this long after the first put that succeeded after the kill, so a cluster
/// that recovers only briefly shows a longer gap.
const AFTER_RECOVERY: Duration = Duration::from_secs(1);
/// After the writer stops, the puts still waiting get this long to be answered: longer than
/// etcd's request timeout (5 s + 2 election timeouts), after which it fails a proposal it lost.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd elects a new leader within about two election timeouts; a cluster that needs this long
/// is broken, and the run fails.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// The failover writer cycles over this many keys.
const FAILOVER_KEYS: u64 = 100;

/// Which servers to measure; both unless `--only` says otherwise.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Only {
    Etcd,
    Oxcd,
}

#[derive(clap::Args, Debug)]
pub struct CompareClusterArgs {
    /// The oxcd server binary (not needed with --only etcd).
    #[arg(long)]
    pub oxcd_bin: Option<PathBuf>,
    /// The reference etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Measure only this server's cluster.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Puts in the sequential workload (1 client, 1 connection).
    #[arg(long, default_value_t = 3_000)]
    pub total_sequential: u64,
    /// Puts in the concurrent workload (50 clients over 10 connections).
    #[arg(long, default_value_t = 30_000)]
    pub total_concurrent: u64,
    /// How many times the leader is killed; the killed member is restarted and rejoins before
    /// the next round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub failover_rounds: u64,
}

/// One leader kill, as the writer saw it.
struct Failover {
    /// From the kill to the first acknowledgement of a put sent after it.
    recovery: Duration,
    /// The longest stretch without any put acknowledged while the writer ran (it spans the
    /// kill).
    longest_gap: Duration,
    /// Puts answered with an error, while the writer ran or during the drain.
    failed: u64,
    /// Puts still unanswered after the drain.
    unfinished: u64,
    /// The longest any put waited for its answer, success or error.
    slowest_answer: Duration,
    first_error: Option<String>,
}

/// Everything recorded for one cluster.
struct ClusterMeasurements {
    label: &'static str,
    binary: PathBuf,
    /// One report per workload, in the order the workloads ran.
    reports: Vec<LoadReport>,
    /// Per member, taken after the last put workload.
    rss_bytes: Vec<u64>,
    failovers: Vec<Failover>,
}

impl ClusterMeasurements {
    fn recoveries(&self) -> Vec<Duration> {
        self.failovers.iter().map(|round| round.recovery).collect()
    }

    fn longest_gaps(&self) -> Vec<Duration> {
        self.failovers
            .iter()
            .map(|round| round.longest_gap)
            .collect()
    }
}

/// Runs the comparison and prints the Markdown summary. etcd always runs first, then oxcd, each
/// as a fresh cluster with fresh data dirs. If oxcd fails, the etcd table is still printed
/// before the error is returned: it took minutes to measure.
pub async fn compare_cluster(args: &CompareClusterArgs) -> Result<()> {
    let oxcd_bin = match (args.only, &args.oxcd_bin) {
        (Some(Only::Etcd), _) => None,
        (_, Some(oxcd_bin)) => Some(oxcd_bin),
        (_, None) => bail!("--oxcd-bin is required unless --only etcd"),
    };
    let work_dir = new_work_dir()?;
    let workloads = [
        put_workload(1, 1, args.total_sequential),
        put_workload(CONCURRENT_CLIENTS, CONCURRENT_CONNS, args.total_concurrent),
    ];
    let mut measured = Vec::new();
    if args.only != Some(Only::Oxcd) {
        let etcd_dir = work_dir.join("etcd");
        measured.push(measure("etcd", &args.etcd_bin, &etcd_dir, &workloads, args).await?);
    }
    if let Some(oxcd_bin) = oxcd_bin {
        let oxcd_dir = work_dir.join("oxcd");
        match measure("oxcd", oxcd_bin, &oxcd_dir, &workloads, args).await {
            Ok(oxcd) => measured.push(oxcd),
            Err(error) => {
                if !measured.is_empty() {
                    print!("{}", render_summary(args, &work_dir, &workloads, &measured));
                }
                return Err(error.context("the oxcd cluster failed"));
            }
        }
    }
    print!("{}", render_summary(args, &work_dir, &workloads, &measured));
    Ok(())
}

/// Starts a cluster in `work_dir`, runs every workload against it, measures its memory, kills
/// its leader `--failover-rounds` times, and stops it.
async fn measure(
    label: &'static str,
    binary: &Path,
    work_dir: &Path,
    workloads: &[PutWorkload],
    args: &CompareClusterArgs,
) -> Result<ClusterMeasurements> {
    let mut cluster = Cluster::start_ready(label, binary, work_dir, MEMBERS).await?;
    // Every connection is balanced over all members, as etcd's own clients are, so most puts
    // reach a follower and are forwarded to the leader.
    let endpoints = cluster.client_urls();
    let reports = run_workloads(label, &endpoints, workloads).await?;
    let rss_bytes = cluster
        .members()
        .iter()
        .map(|member| member.rss_bytes())
        .collect::<Result<Vec<_>>>()?;

    let mut failovers = Vec::new();
    let mut leader = cluster.wait_until_ready().await?;
    for round in 1..=args.failover_rounds {
        let name = cluster.members()[leader].name().to_owned();
        eprintln!("{label}: failover round {round}: killing the leader, {name}");
        let failover = kill_leader(&mut cluster, leader)
            .await
            .with_context(|| format!("{label}: failover round {round} failed"))?;
        eprintln!(
            "{label}:   first put acknowledged {} after the kill, longest gap {}, {} failed, \
             {} unanswered",
            format_ms(micros(failover.recovery)),
            format_ms(micros(failover.longest_gap)),
            failover.failed,
            failover.unfinished
        );
        failovers.push(failover);
        cluster.members_mut()[leader].restart()?;
        leader = cluster
            .wait_until_ready()
            .await
            .with_context(|| format!("{label}: {name} did not rejoin after its restart"))?;
    }
    cluster.stop().await?;
    Ok(ClusterMeasurements {
        label,
        binary: binary.to_owned(),
        reports,
        rss_bytes,
        failovers,
    })
}

/// A put the failover writer sent: when, when it was answered, and whether it succeeded.
struct PutOutcome {
    sent: Instant,
    answered: Instant,
    result: Result<(), String>,
}

/// Writes through the followers, SIGKILLs the leader (member `leader`), and measures until the
/// writer has been served again for `AFTER_RECOVERY`.
async fn kill_leader(cluster: &mut Cluster, leader: usize) -> Result<Failover> {
    let survivors: Vec<String> = cluster
        .members()
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(_, member)| member.client_url().to_owned())
        .collect();
    let client = connect(&survivors).await?;
    let (outcomes_tx, mut outcomes_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let issued = Arc::new(AtomicU64::new(0));
    // In a JoinSet so that the writer, and with it every put it still waits for, is aborted
    // however this function returns.
    let mut writer = JoinSet::new();
    writer.spawn(write_paced(
        client.kv_client(),
        outcomes_tx,
        Arc::clone(&issued),
        stop_rx,
    ));

    tokio::time::sleep(BEFORE_KILL).await;
    let mut outcomes = Vec::new();
    while let Ok(outcome) = outcomes_rx.try_recv() {
        outcomes.push(outcome);
    }
    if !outcomes.iter().any(|outcome| outcome.result.is_ok()) {
        bail!("no put through the followers was acknowledged in {BEFORE_KILL:?} before the kill");
    }

    let killed_at = Instant::now();
    cluster.members_mut()[leader].kill().await?;
    let deadline = tokio::time::Instant::from_std(killed_at + FAILOVER_TIMEOUT);
    let recovered_at = loop {
        let outcome = tokio::time::timeout_at(deadline, outcomes_rx.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "no put sent after the leader was killed was acknowledged within \
                     {FAILOVER_TIMEOUT:?}"
                )
            })?
            .context("the failover writer stopped")?;
        let acked_after_kill = outcome.result.is_ok() && outcome.sent >= killed_at;
        let answered = outcome.answered;
        outcomes.push(outcome);
        if acked_after_kill {
            break answered;
        }
    };

    tokio::time::sleep(AFTER_RECOVERY).await;
    let stopped_at = Instant::now();
    // The writer returns once its puts are answered, or after DRAIN_TIMEOUT.
    let _ = stop_tx.send(());
    while writer.join_next().await.is_some() {}
    while let Ok(outcome) = outcomes_rx.try_recv() {
        outcomes.push(outcome);
    }
    // Late answers from the drain would make a gap after the writer stopped, not an outage.
    let mut acks: Vec<Instant> = outcomes
        .iter()
        .filter(|outcome| outcome.result.is_ok() && outcome.answered <= stopped_at)
        .map(|outcome| outcome.answered)
        .collect();
    acks.sort();
    let longest_gap = acks
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    let errors: Vec<&String> = outcomes
        .iter()
        .filter_map(|outcome| outcome.result.as_ref().err())
        .collect();
    Ok(Failover {
        recovery: recovered_at - killed_at,
        longest_gap,
        failed: errors.len() as u64,
        unfinished: issued.load(Ordering::Relaxed) - outcomes.len() as u64,
        slowest_answer: outcomes
            .iter()
            .map(|outcome| outcome.answered - outcome.sent)
            .max()
            .unwrap_or_default(),
        first_error: errors.first().map(|error| (*error).clone()),
    })
}

/// Sends one put every `WRITE_INTERVAL`, each without waiting for the previous ones: a put that
/// hangs on the dead leader must not hold back the ones that would show the new leader. Once
/// `stop` fires, it sends no more and waits up to `DRAIN_TIMEOUT` for the puts in flight; those
/// still unanswered then are aborted.
async fn write_paced(
    kv: KvClient,
    outcomes: mpsc::UnboundedSender<PutOutcome>,
    issued: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut puts = JoinSet::new();
    let mut ticks = tokio::time::interval(WRITE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for sequence in 0u64.. {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut stop => break,
        }
        let mut kv = kv.clone();
        let outcomes = outcomes.clone();
        issued.fetch_add(1, Ordering::Relaxed);
        puts.spawn(async move {
            let sent = Instant::now();
            let key = format!("oxcd-bench-failover/{}", sequence % FAILOVER_KEYS);
            let result = kv.put(key, sequence.to_string(), None).await;
            // The receiver is gone only once the round is over; nothing is left to report to.
            let _ = outcomes.send(PutOutcome {
                sent,
                answered: Instant::now(),
                result: result.map(drop).map_err(|error| root_cause(&error)),
            });
        });
        // Reap finished puts, so the set holds only those in flight.
        while puts.try_join_next().is_some() {}
    }
    let drained = async { while puts.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
}

fn render_summary(
    args: &CompareClusterArgs,
    work_dir: &Path,
    workloads: &[PutWorkload],
    measured: &[ClusterMeasurements],
) -> String {
    let both = measured.len() == 2;
    let mut out = String::from("| metric |");
    for cluster in measured {
        let _ = write!(out, " {} |", cluster.label);
    }
    out.push_str(if both { " ratio oxcd/etcd |\n" } else { "\n" });
    out.push_str("|---|");
    out.push_str(&"---:|".repeat(measured.len() + usize::from(both)));
    out.push('\n');

    let mut row =
        |name: &str, value: &dyn Fn(&ClusterMeasurements) -> f64, shown: fn(f64) -> String| {
            let _ = write!(out, "| {name} |");
            let values: Vec<f64> = measured.iter().map(value).collect();
            for value in &values {
                let _ = write!(out, " {} |", shown(*value));
            }
            if both {
                let _ = write!(out, " {} |", ratio(values[1], values[0]));
            }
            out.push('\n');
        };
    let ops = |value: f64| format!("{value:.1}");
    let ms = |micros: f64| format_ms(micros as u64);
    let mib = |bytes: f64| format!("{:.1}", bytes / MIB);
    let count = |value: f64| format!("{value:.0}");

    for (index, workload) in workloads.iter().enumerate() {
        let label = workload_label(workload);
        row(
            &format!("{label}: ops/s"),
            &|m| m.reports[index].throughput(),
            ops,
        );
        for (name, quantile) in [("p50", 0.5), ("p99", 0.99)] {
            row(
                &format!("{label}: {name}"),
                &|m| m.reports[index].latency_us.value_at_quantile(quantile) as f64,
                ms,
            );
        }
    }
    row(
        &format!("RSS after the puts, all {MEMBERS} members (MiB)"),
        &|m| m.rss_bytes.iter().sum::<u64>() as f64,
        mib,
    );
    row(
        "RSS after the puts, largest member (MiB)",
        &|m| m.rss_bytes.iter().copied().max().unwrap_or_default() as f64,
        mib,
    );
    let rounds = args.failover_rounds;
    let longest = |durations: Vec<Duration>| durations.into_iter().max().unwrap_or_default();
    row(
        &format!("leader killed → first put acknowledged, median of {rounds}"),
        &|m| micros(median(&m.recoveries())) as f64,
        ms,
    );
    row(
        &format!("leader killed → first put acknowledged, max of {rounds}"),
        &|m| micros(longest(m.recoveries())) as f64,
        ms,
    );
    row(
        &format!("longest gap between acknowledged puts, median of {rounds}"),
        &|m| micros(median(&m.longest_gaps())) as f64,
        ms,
    );
    row(
        &format!("longest gap between acknowledged puts, max of {rounds}"),
        &|m| micros(longest(m.longest_gaps())) as f64,
        ms,
    );
    row(
        &format!("failover puts answered with an error, all {rounds} rounds"),
        &|m| m.failovers.iter().map(|round| round.failed).sum::<u64>() as f64,
        count,
    );
    row(
        &format!(
            "failover puts unanswered {DRAIN_TIMEOUT:?} after the writer stopped, all {rounds} \
             rounds"
        ),
        &|m| {
            m.failovers
                .iter()
                .map(|round| round.unfinished)
                .sum::<u64>() as f64
        },
        count,
    );

    row(
        &format!("slowest answer to a failover put, all {rounds} rounds"),
        &|m| {
            micros(longest(
                m.failovers
                    .iter()
                    .map(|round| round.slowest_answer)
                    .collect(),
            )) as f64
        },
        ms,
    );

    let binaries: Vec<String> = measured
        .iter()
        .map(|m| format!("{} = {}", m.label, m.binary.display()))
        .collect();
    let _ = write!(
        out,
        "\n{}. Each ran as a fresh {MEMBERS}-member cluster on 127.0.0.1 (etcd first), with \
         fresh data dirs, fsync on, --heartbeat-interval {HEARTBEAT_INTERVAL_MS} \
         --election-timeout {ELECTION_TIMEOUT_MS}, sharing the machine with this load \
         generator. Puts: every gRPC connection is balanced over all {MEMBERS} members' client \
         URLs, as etcd's own clients are, so about two thirds of the puts reach a follower, \
         which forwards them to the leader; keys: {KEY_SIZE} bytes, random in a \
         {KEY_SPACE}-key space; values: {VAL_SIZE} random bytes. Failover: a writer sends a put \
         every {WRITE_INTERVAL:?} (without waiting for earlier ones) through the two followers; \
         after {BEFORE_KILL:?} the leader (the member whose Status names itself) is SIGKILLed. \
         Recovery is from the kill to the first acknowledgement of a put sent after it; the \
         longest gap is the longest stretch with no put acknowledged while the writer ran, which \
         spans the kill. The writer stops {AFTER_RECOVERY:?} after recovery, and the puts still \
         waiting get {DRAIN_TIMEOUT:?} to be answered. The killed member is then restarted on \
         its data dir, and the next round starts once all members serve a Get and agree on a \
         leader. Server logs: {}.\n",
        binaries.join(", "),
        work_dir.display(),
    );
    for cluster in measured {
        for (workload, report) in workloads.iter().zip(&cluster.reports) {
            if let Some(error) = &report.first_error {
                let _ = writeln!(
                    out,
                    "\nWARNING: {}, {}: {} of {} puts failed; first error: {error}",
                    cluster.label,
                    workload_label(workload),
                    report.errors,
                    report.total
                );
            }
        }
        if let Some(error) = cluster
            .failovers
            .iter()
            .find_map(|round| round.first_error.as_ref())
        {
            let _ = writeln!(
                out,
                "\n{}: first error a failover put got: {error}",
                cluster.label
            );
        }
    }
    out
}
