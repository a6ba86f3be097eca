//! A whole test run: cluster up, clients and nemesis for the time limit, recovery, final reads,
//! then the check, with everything written to the results directory:
//!
//! - `history.jsonl`: every client operation (see [`crate::history`]);
//! - `nemesis.jsonl`: every fault's start and stop (see [`crate::nemesis`]);
//! - `verdict.txt`: the verdict, then the checker's account of every anomaly;
//! - `summary.json` and `summary.txt`: operation counts, faults, timings;
//! - `latency.svg`, `throughput.svg` and `timeline.html`: the run at a glance, faults shaded
//!   (see [`crate::report`]);
//! - `members/`: each member's data directory and log (with the power nemesis the data
//!   directories are PowerFs mounts, empty once the run is over).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::checker::{CheckOptions, Verdict};
use crate::cluster::{Cluster, ClusterOptions, Flavor};
use crate::history::{Operation, Recorder, Status};
use crate::nemesis::{self, FaultKind, NemesisLog, Phase, Schedule};
use crate::workload::{Worker, Workload};

/// How long the cluster gets to come up, and to recover after the last fault.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct TestOptions {
    pub flavor: Flavor,
    pub binary: PathBuf,
    pub nodes: usize,
    /// Client workers; worker `w` talks to member `w % nodes`.
    pub concurrency: usize,
    /// Operations per second, over all workers.
    pub rate: f64,
    /// How long clients and nemesis run, before recovery and final reads.
    pub time_limit: Duration,
    pub schedule: Schedule,
    /// The bound on each client request.
    pub op_timeout: Duration,
    /// The bound on the linearizability check; `None` for none.
    pub check_timeout: Option<Duration>,
    /// The results directory.
    pub out: PathBuf,
}

/// Operations by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

impl Counts {
    fn add(&mut self, status: Status) {
        match status {
            Status::Ok => self.ok += 1,
            Status::Fail => self.fail += 1,
            Status::Info => self.info += 1,
        }
    }

    fn total(&self) -> usize {
        self.ok + self.fail + self.info
    }
}

/// What `summary.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub flavor: String,
    pub nodes: usize,
    pub concurrency: usize,
    /// When history time 0 was, in seconds since the Unix epoch: member logs carry wall-clock
    /// times, and this lines them up with the history.
    pub start_unix_secs: f64,
    /// Seconds the clients ran.
    pub workload_secs: f64,
    /// Every operation, final reads included.
    pub ops: Counts,
    /// By function: `read`, `write`, `cas`.
    pub by_f: BTreeMap<String, Counts>,
    /// The reads of every key from every member after recovery.
    pub final_reads: Counts,
    /// The final reads' processes: this one reads from `n1`, the next from `n2`, and so on.
    /// Worker processes are those below it; process `p` talked to member
    /// `(p % concurrency) % nodes` (counting from 0).
    pub first_final_process: u64,
    /// Faults started, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Members that exited without being killed.
    pub unexpected_exits: usize,
    /// Whether every member served again after the faults were undone.
    pub recovered: bool,
    /// Peer connections the proxies could not attribute to a member (their partitions may have
    /// been coarser than asked).
    pub unidentified_connections: u64,
    pub check_secs: f64,
    /// What the check found not `valid` (keys, leases, watchers…), with its verdict.
    pub failed: BTreeMap<String, String>,
    pub verdict: String,
}

impl Summary {
    /// A few lines for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let counts = |c: &Counts| {
            format!(
                "{} ({} ok, {} fail, {} info)",
                c.total(),
                c.ok,
                c.fail,
                c.info
            )
        };
        let _ = writeln!(
            out,
            "{} members of {}, {} clients for {:.1}s",
            self.nodes, self.flavor, self.concurrency, self.workload_secs
        );
        let _ = writeln!(
            out,
            "history time 0 is Unix time {:.3}",
            self.start_unix_secs
        );
        let _ = writeln!(out, "operations: {}", counts(&self.ops));
        for (f, c) in &self.by_f {
            let _ = writeln!(out, "  {f}: {}", counts(c));
        }
        let _ = writeln!(
            out,
            "final reads: {} (processes {} and up)",
            counts(&self.final_reads),
            self.first_final_process
        );
        let _ = writeln!(
            out,
            "process p talked to member n((p mod {}) mod {} + 1)",
            self.concurrency, self.nodes
        );
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "faults: {}; unexpected exits: {}; unidentified peer connections: {}",
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            },
            self.unexpected_exits,
            self.unidentified_connections
        );
        if !self.recovered {
            let _ = writeln!(out, "the cluster did not recover after the faults");
        }
        for (what, verdict) in &self.failed {
            let _ = writeln!(out, "{what}: {verdict}");
        }
        let _ = writeln!(out, "checked in {:.3}s", self.check_secs);
        out
    }
}

pub struct TestResult {
    pub verdict: Verdict,
    pub summary: Summary,
}

/// Runs `workload`, made with the run's recorder, against a new cluster.
pub async fn run<W: Workload>(
    options: &TestOptions,
    workload: impl FnOnce(Arc<Recorder>) -> W,
) -> Result<TestResult> {
    let out = &options.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cluster = Cluster::start(&ClusterOptions {
        flavor: options.flavor,
        binary: options.binary.clone(),
        members: options.nodes,
        dir: out.join("members"),
        ready_timeout: READY_TIMEOUT,
        power_disks: options.schedule.faults.contains(&FaultKind::Power),
    })
    .await?;

    // Both logs count from here; the nemesis log's clock starts a moment earlier, which only
    // makes its times later by that moment.
    let start = Instant::now();
    let start_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let recorder = Arc::new(Recorder::new());
    let mut nemesis_log = NemesisLog::create(&out.join("nemesis.jsonl"), start)?;
    let workload = Arc::new(workload(recorder.clone()));
    let endpoints: Vec<String> = (0..options.nodes).map(|m| cluster.endpoint(m)).collect();
    let (stop_observers, observers_stopped) = watch::channel(false);
    let observers = workload.observers(&endpoints, observers_stopped);
    let concurrency = options.concurrency as u64;
    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::new();
    for w in 0..options.concurrency {
        let worker = Worker {
            workload: workload.clone(),
            index: w as u64,
            concurrency,
            endpoint: endpoints[w % options.nodes].clone(),
            mean_interval: Duration::from_secs_f64(options.concurrency as f64 / options.rate),
            timeout: options.op_timeout,
        };
        workers.push(tokio::spawn(worker.run(stopped.clone())));
    }
    let until = Instant::now() + options.time_limit;
    let nemesis = nemesis::run(&mut cluster, &options.schedule, until, &mut nemesis_log).await;
    // Clients stop before the nemesis error (if any) is reported, so none outlives the run.
    let _ = stop.send(true);
    let mut last_process = 0;
    for worker in workers {
        last_process = last_process.max(worker.await??);
    }
    nemesis?;
    let workload_secs = start.elapsed().as_secs_f64();

    cluster.recover().await?;
    let recovered = match cluster.wait_healthy(READY_TIMEOUT).await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("warning: {e:#}");
            false
        }
    };
    // Fresh process ids above every worker's, one per member.
    let first_final = (last_process / concurrency + 1) * concurrency;
    workload.final_reads(&cluster, first_final).await?;
    let _ = stop_observers.send(true);
    for observer in observers {
        observer.await??;
    }
    let unidentified = cluster.network().unidentified();
    let unexpected_exits = nemesis_log
        .events()
        .iter()
        .filter(|e| e.phase == Phase::Exit)
        .count();
    drop(cluster);

    let history = recorder.history();
    history.save(out.join("history.jsonl"))?;
    workload.save(out)?;
    let ops = history.operations()?;
    crate::report::write(out, &ops, nemesis_log.events())?;
    let check_started = Instant::now();
    let check_options = CheckOptions {
        timeout: options.check_timeout,
    };
    let judgement = {
        let ops = ops.clone();
        let workload = workload.clone();
        tokio::task::spawn_blocking(move || workload.check(&ops, &check_options)).await??
    };
    let check_secs = check_started.elapsed().as_secs_f64();
    let verdict = judgement.verdict;
    std::fs::write(
        out.join("verdict.txt"),
        format!("{verdict}\n{}", judgement.explanation),
    )?;

    let mut faults = BTreeMap::new();
    for event in nemesis_log.events() {
        if let (Phase::Start, Some(kind)) = (event.phase, event.fault) {
            *faults.entry(kind.to_string()).or_default() += 1;
        }
    }
    let summary = Summary {
        flavor: options.flavor.to_string(),
        nodes: options.nodes,
        concurrency: options.concurrency,
        start_unix_secs,
        workload_secs,
        ops: count(ops.iter()),
        by_f: {
            let mut by_f: BTreeMap<String, Counts> = BTreeMap::new();
            for op in &ops {
                by_f.entry(op.f.to_string()).or_default().add(op.status);
            }
            by_f
        },
        final_reads: count(ops.iter().filter(|op| op.process >= first_final)),
        first_final_process: first_final,
        faults,
        unexpected_exits,
        recovered,
        unidentified_connections: unidentified,
        check_secs,
        failed: judgement.failed,
        verdict: verdict.to_string(),
    };
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    std::fs::write(out.join("summary.txt"), summary.text())?;
    Ok(TestResult { verdict, summary })
}

fn count<'a>(ops: impl Iterator<Item = &'a Operation>) -> Counts {
    let mut counts = Counts::default();
    for op in ops {
        counts.add(op.status);
    }
    counts
}
