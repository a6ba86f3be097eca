//! `oxcd-jepsen`: checks recorded histories.
//!
//! Every command prints its verdict as the last line of its output (`valid`, `invalid` or
//! `unknown`) and exits 0 only when the verdict is `valid`, so scripts can use either.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use oxcd_jepsen::checker::{self, CheckOptions, Verdict};
use oxcd_jepsen::history::{History, Status};

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

fn check(args: &CheckArgs) -> anyhow::Result<Verdict> {
    let timeout = if args.timeout == 0.0 {
        None
    } else {
        Some(Duration::try_from_secs_f64(args.timeout)?)
    };
    let history = History::load(&args.file)?;
    let ops = history.operations()?;
    let started = Instant::now();
    let report = checker::check_register(&ops, &CheckOptions { timeout })?;
    let elapsed = started.elapsed();

    let count = |status| ops.iter().filter(|op| op.status == status).count();
    println!(
        "{}: {} events, {} operations ({} ok, {} fail, {} info) on {} keys",
        args.file.display(),
        history.events.len(),
        ops.len(),
        count(Status::Ok),
        count(Status::Fail),
        count(Status::Info),
        report.keys.len()
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
