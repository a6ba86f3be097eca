//! `oxcd-bench`: a put load generator for any etcd v3 gRPC endpoint (real etcd and oxcd alike),
//! and a driver that runs the same load against a fresh etcd and a fresh oxcd side by side.

mod compare;
mod load;
mod server;

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

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Put(args) => {
            let report = load::run_puts(&args.endpoints, &args.workload).await?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::ComparePut(args) => print!("{}", compare::compare_put(&args).await?),
    }
    Ok(())
}
