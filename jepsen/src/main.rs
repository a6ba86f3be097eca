//! `oxcd-jepsen`: runs tests against real clusters under injected faults, and checks recorded
//! histories.
//!
//! Every command prints its verdict as the last line of its output (`valid`, `invalid` or
//! `unknown`) and exits 0 only when the verdict is `valid`, so scripts can use either.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use oxcd_jepsen::checker::{self, CheckOptions, Verdict};
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{History, Status};
use oxcd_jepsen::nemesis::{FaultKind, Schedule};
use oxcd_jepsen::runner::{self, TestOptions};
use oxcd_jepsen::workload::lock::Locks;
use oxcd_jepsen::workload::register::Registers;

#[derive(Parser)]
#[command(version, about = "oxcd's Jepsen-style harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a saved history (JSON Lines) for linearizability.
    Check(CheckArgs),
    /// Run a workload against a local cluster under faults, then check its history.
    Test(TestArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Workload {
    /// Reads, writes and compare-and-sets on a few independent registers.
    Register,
    /// Clients taking etcd's Lock (leases kept alive) to update a counter without fencing and
    /// append to a list with fencing; reports what the lock did and did not guarantee.
    Lock,
}

#[derive(clap::Args)]
struct TestArgs {
    #[arg(long, value_enum, default_value = "register")]
    workload: Workload,
    /// Faults to inject, comma-separated: kill, pause, partition; `none` for a quiet run.
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
    /// Registers (keys) of the register workload; the lock workload always uses one lock.
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Seconds of each quiet period and of each fault.
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
                Workload::Lock => runner::run(&options, |r| Locks::new(r, timeout)).await,
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
    let started = Instant::now();
    let report = checker::check_register(&ops, &CheckOptions { timeout })?;
    let elapsed = started.elapsed();

    let count = |status| ops.iter().filter(|op| op.status == status).count();
    let keys = match report.keys.len() {
        1 => "1 key".to_owned(),
        n => format!("{n} keys"),
    };
    println!(
        "{}: {} events, {} operations ({} ok, {} fail, {} info) on {keys}",
        args.file.display(),
        history.events.len(),
        ops.len(),
        count(Status::Ok),
        count(Status::Fail),
        count(Status::Info),
    );
    println!("checked in {:.3}s", elapsed.as_secs_f64());
    for key in &report.keys {
        match (&key.counterexample, key.verdict) {
            (Some(ce), _) => println!("\n{ce}"),
            (None, Verdict::Unknown) => println!(
                "key {:?} ({} operations): not decided before the timeout",
                key.key, key.ops
            ),
            _ => {}
        }
    }
    Ok(report.verdict())
}
