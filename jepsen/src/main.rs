//! `oxcd-jepsen`: runs tests against real clusters under injected faults, and checks recorded
//! histories.
//!
//! Every command prints its verdict as the last line of its output (`valid`, `invalid` or
//! `unknown`) and exits 0 only when the verdict is `valid`, so scripts can use either.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use oxcd_jepsen::checker::{self, CheckOptions, Verdict};
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{History, Recorder, Status};
use oxcd_jepsen::nemesis::{FaultKind, Schedule};
use oxcd_jepsen::runner::{self, TestOptions};
use oxcd_jepsen::workload::append::{self, Appends};
use oxcd_jepsen::workload::lease::Leases;
use oxcd_jepsen::workload::lock::Locks;
use oxcd_jepsen::workload::register::Registers;
use oxcd_jepsen::workload::watch::Watches;
use oxcd_jepsen::workload::Workload as _;

#[derive(Parser)]
#[command(version, about = "oxcd's Jepsen-style harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a saved history (JSON Lines): linearizability of registers, or strict
    /// serializability of list-append transactions.
    Check(CheckArgs),
    /// Run a workload against a local cluster under faults, then check its history.
    Test(TestArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Workload {
    /// Reads, writes and compare-and-sets on a few independent registers.
    Register,
    /// Transactions of appends to and reads of a few lists (Elle's list-append), checked for
    /// strict serializability.
    Append,
    /// Puts to a few keys under one prefix, watched from every member; the watch streams are
    /// checked against each other and the writes (saved as watches.jsonl).
    Watch,
    /// Lease grants, keep-alives and revokes, writes attached to leases, reads of them all: no
    /// key survives its lease's revoke or expiry, no revoked lease keeps or takes keys, and no
    /// lease expires before the TTL its keep-alive promised.
    Lease,
    /// Clients taking etcd's Lock (leases kept alive) to update a counter without fencing and
    /// append to a list with fencing; reports what the lock did and did not guarantee.
    Lock,
}

#[derive(clap::Args)]
struct TestArgs {
    #[arg(long, value_enum, default_value = "register")]
    workload: Workload,
    /// Faults to inject, comma-separated: kill, pause, partition, isolate-leader, delay, loss,
    /// member, power (needs FUSE and root); `none` for a quiet run.
    #[arg(long, default_value = "kill,pause,partition", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Cluster members.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of client operations (recovery, final reads and the check come after).
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    time_limit: f64,
    /// Operations per second, over all clients.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Concurrent clients; default twice the members.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Keys: the registers, the lists the append workload uses at a time, or the keys under
    /// the watched prefix; the lease and lock workloads make their own.
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Seconds of each quiet period and of each fault (isolate-leader faults last at least 8).
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    interval: f64,
    /// Seconds a client waits for an answer before the outcome is unknown.
    #[arg(long, default_value_t = 1.5, value_name = "SECONDS")]
    op_timeout: f64,
    /// Seconds the check may take before the verdict is `unknown`; 0 for no limit.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    check_timeout: f64,
    /// The server members run: oxcd or etcd.
    #[arg(long, default_value = "oxcd")]
    flavor: Flavor,
    /// The server binary; default the oxcd built next to this program (or $OXCD_BIN), or
    /// /usr/bin/etcd (or $ETCD_BIN).
    #[arg(long = "bin")]
    binary: Option<PathBuf>,
    /// The results directory; default a new one under the system's temp dir.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The history file.
    file: PathBuf,
    /// The workload that recorded it.
    #[arg(long, value_enum, default_value = "register")]
    workload: Workload,
    /// Give up after this many seconds and answer `unknown`; 0 for no limit.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    timeout: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verdict = match cli.command {
        Command::Check(args) => check(&args),
        Command::Test(args) => test(&args),
    };
    let verdict = verdict.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        Verdict::Unknown
    });
    println!("{verdict}");
    ExitCode::from(match verdict {
        Verdict::Valid => 0,
        Verdict::Invalid => 1,
        Verdict::Unknown => 2,
    })
}

/// Seconds from the command line; 0 means no limit.
fn limit(seconds: f64) -> anyhow::Result<Option<Duration>> {
    Ok(if seconds == 0.0 {
        None
    } else {
        Some(Duration::try_from_secs_f64(seconds)?)
    })
}

fn test(args: &TestArgs) -> anyhow::Result<Verdict> {
    let faults = args
        .nemesis
        .iter()
        .filter(|f| f.as_str() != "none")
        .map(|f| f.parse())
        .collect::<anyhow::Result<Vec<FaultKind>>>()?;
    if args.nodes == 0 || args.keys == 0 || args.rate <= 0.0 {
        bail!("--nodes, --keys and --rate must be positive");
    }
    let interval = Duration::try_from_secs_f64(args.interval)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        std::env::temp_dir().join(format!("oxcd-jepsen-{}-{stamp}", args.flavor))
    });
    let options = TestOptions {
        flavor: args.flavor,
        binary: args
            .binary
            .clone()
            .unwrap_or_else(|| args.flavor.default_binary()),
        nodes: args.nodes,
        concurrency: args.concurrency.unwrap_or(2 * args.nodes).max(1),
        rate: args.rate,
        time_limit: Duration::try_from_secs_f64(args.time_limit)?,
        schedule: Schedule {
            faults,
            quiet: interval,
            hold: interval,
        },
        op_timeout: Duration::try_from_secs_f64(args.op_timeout)?,
        check_timeout: limit(args.check_timeout)?,
        out: out.clone(),
    };
    println!("results in {}", out.display());
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        // Returning early drops the run, and with it the cluster, whose members are killed.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let run = async {
            let timeout = options.op_timeout;
            match args.workload {
                Workload::Register => {
                    runner::run(&options, |r| Registers::new(args.keys, r, timeout)).await
                }
                Workload::Append => {
                    runner::run(&options, |r| Appends::new(args.keys, r, timeout)).await
                }
                Workload::Watch => {
                    runner::run(&options, |r| Watches::new(args.keys, r, timeout)).await
                }
                Workload::Lease => {
                    let (time_limit, clients) = (options.time_limit, options.concurrency);
                    runner::run(&options, |r| Leases::new(r, timeout, time_limit, clients)).await
                }
                Workload::Lock => {
                    // Only a cut-off leader with its clients makes long holds telling.
                    let long_holds = options.schedule.faults.contains(&FaultKind::IsolateLeader);
                    runner::run(&options, |r| {
                        let locks = Locks::new(r, timeout);
                        if long_holds {
                            locks.with_long_holds()
                        } else {
                            locks
                        }
                    })
                    .await
                }
            }
        };
        tokio::select! {
            result = run => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = terminate.recv() => bail!("terminated"),
        }
    })?;
    print!("{}", result.summary.text());
    Ok(result.verdict)
}

fn check(args: &CheckArgs) -> anyhow::Result<Verdict> {
    let timeout = limit(args.timeout)?;
    let history = History::load(&args.file)?;
    let ops = history.operations()?;
    let options = CheckOptions { timeout };
    let started = Instant::now();
    let count = |status| ops.iter().filter(|op| op.status == status).count();
    let counts = |noun: &str| {
        format!(
            "{}: {} events, {} {noun} ({} ok, {} fail, {} info)",
            args.file.display(),
            history.events.len(),
            ops.len(),
            count(Status::Ok),
            count(Status::Fail),
            count(Status::Info),
        )
    };
    let (verdict, headline, explanation) = match args.workload {
        Workload::Watch => {
            bail!("a watch history is checked together with its watch streams, by `test`")
        }
        Workload::Lease | Workload::Lock => {
            // Their checkers need no run state: a workload made for checking alone will do.
            let recorder = Arc::new(Recorder::new());
            let judgement = if let Workload::Lease = args.workload {
                Leases::new(recorder, Duration::ZERO, Duration::ZERO, 1).check(&ops, &options)?
            } else {
                Locks::new(recorder, Duration::ZERO).check(&ops, &options)?
            };
            (
                judgement.verdict,
                counts("operations"),
                judgement.explanation,
            )
        }
        Workload::Append => {
            let report = append::check_append(&ops, &options)?;
            (report.verdict(), counts("transactions"), report.to_string())
        }
        Workload::Register => {
            let report = checker::check_register(&ops, &options)?;
            let keys = match report.keys.len() {
                1 => "1 key".to_owned(),
                n => format!("{n} keys"),
            };
            let mut explanation = String::new();
            for key in &report.keys {
                match (&key.counterexample, key.verdict) {
                    (Some(ce), _) => explanation += &format!("\n{ce}\n"),
                    (None, Verdict::Unknown) => {
                        explanation += &format!(
                            "key {:?} ({} operations): not decided before the timeout\n",
                            key.key, key.ops
                        )
                    }
                    _ => {}
                }
            }
            (
                report.verdict(),
                format!("{} on {keys}", counts("operations")),
                explanation,
            )
        }
    };
    println!("{headline}");
    println!("checked in {:.3}s", started.elapsed().as_secs_f64());
    print!("{explanation}");
    Ok(verdict)
}
