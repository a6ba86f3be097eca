//! `oxcd-bench`: put and watch load generators for any etcd v3 gRPC endpoint (real etcd and oxcd
//! alike), and drivers that run the same load against a fresh etcd and a fresh oxcd side by side.

mod compare;
mod compare_cluster;
mod compare_watch;
mod load;
mod server;
mod stats;
mod watch;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Issue puts against running endpoints and report throughput and latency.
    Put(PutArgs),
    /// Start a fresh single-member etcd, then a fresh oxcd, run the same put workloads against
    /// each, and print a Markdown comparison (etcd always runs first).
    ComparePut(compare::CompareArgs),
    /// Start a fresh 3-member etcd cluster, then a fresh 3-member oxcd cluster, measure put
    /// throughput and latency through all members, memory, and leader failover on each, and
    /// print a Markdown comparison (etcd always runs first).
    CompareCluster(compare_cluster::CompareClusterArgs),
    /// Create many watchers on one prefix, put under it at a fixed rate, and report how late
    /// each watcher got each event, and which events it missed or got twice.
    WatchLatency(WatchLatencyArgs),
    /// Start a fresh single-member etcd, then a fresh oxcd, run the same watch load against
    /// each, and print a Markdown comparison of latency and memory (etcd always runs first).
    CompareWatch(compare_watch::CompareWatchArgs),
}

#[derive(clap::Args, Debug)]
struct PutArgs {
    /// Comma-separated client endpoints (host:port or http://host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    #[command(flatten)]
    workload: load::PutWorkload,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct WatchLatencyArgs {
    /// Comma-separated client endpoints (host:port or http://host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    #[command(flatten)]
    workload: watch::WatchWorkload,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Put(args) => {
            let report = load::run_puts(&args.endpoints, &args.workload).await?;
            print_report(args.json, || report.to_json(), || report.to_text());
        }
        Command::ComparePut(args) => print!("{}", compare::compare_put(&args).await?),
        Command::CompareCluster(args) => compare_cluster::compare_cluster(&args).await?,
        Command::WatchLatency(args) => {
            let report = watch::run_watch(&args.endpoints, &args.workload).await?;
            print_report(args.json, || report.to_json(), || report.to_text());
        }
        Command::CompareWatch(args) => print!("{}", compare_watch::compare_watch(&args).await?),
    }
    Ok(())
}

fn print_report(
    json: bool,
    to_json: impl FnOnce() -> serde_json::Value,
    to_text: impl FnOnce() -> String,
) {
    if json {
        println!("{}", to_json());
    } else {
        print!("{}", to_text());
    }
}
