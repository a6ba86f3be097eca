//! `oxcd-bench`: put, range, txn, mixed, lease keep-alive and watch load generators for any etcd v3 gRPC endpoint (real etcd and oxcd
//! alike), and drivers that run the same load against a fresh etcd and a fresh oxcd side by side.

mod compare;
mod connection;
mod failover;
mod footprint;
mod kube;
mod list_memory;
mod load;
mod plot;
mod report;
mod server;
mod snapshot;
mod stats;
mod watch;
mod workloads;

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
    Put(WorkloadArgs<load::PutWorkload>),
    /// Issue ranges (single-key gets or prefix ranges) and report throughput and latency.
    Range(WorkloadArgs<workloads::RangeWorkload>),
    /// Issue transactions of several puts each and report throughput and latency.
    TxnPut(WorkloadArgs<workloads::TxnPutWorkload>),
    /// Issue a mix of linearizable gets and puts and report throughput and latency.
    Mixed(WorkloadArgs<workloads::MixedWorkload>),
    /// Grant leases, keep them alive over keep-alive streams, and report throughput and latency
    /// of the keep-alives.
    #[command(name = "lease-keepalive")]
    LeaseKeepAlive(WorkloadArgs<workloads::LeaseKeepAliveWorkload>),
    /// Run the whole etcd-vs-oxcd matrix (puts, ranges, txns, mixed, lease keep-alives, watch,
    /// footprint, failover) against fresh clusters of each, and write report.md, report.json and
    /// SVG plots into --out.
    Compare(compare::CompareArgs),
    /// Create many watchers on one prefix (streams x watchers per stream), put under it at a
    /// fixed rate, and report events delivered per second, how late each watcher got each event,
    /// and which events it missed or got twice.
    #[command(name = "watch", alias = "watch-latency")]
    Watch(WorkloadArgs<watch::WatchWorkload>),
    /// Peak server memory of one large list read as RangeStream, as Range pages of 500 and as
    /// one Range, on a fresh etcd (3.7 or later) and a fresh oxcd; writes report.md and
    /// report.json into --out.
    #[command(name = "list-memory")]
    ListMemory(list_memory::ListMemoryArgs),
    /// Time `snapshot save` of N keys from a fresh etcd (3.7) and a fresh oxcd with their own
    /// ctl, then `snapshot restore` of etcd's file by etcdutl and by oxcdctl (and of oxcd's by
    /// oxcdctl) with each restore's peak memory; writes report.md and results.json into --out.
    Snapshot(snapshot::SnapshotArgs),
    /// The store under Kubernetes' real control plane (kube-apiserver, controller-manager,
    /// scheduler) with simulated nodes and Deployments scaled in rounds, on a fresh etcd and a
    /// fresh oxcd; writes report.md, report.json and plots into --out.
    Kube(kube::KubeArgs),
}

/// The flags every load generator takes around its workload's own.
#[derive(clap::Args, Debug)]
struct WorkloadArgs<W: clap::Args> {
    /// Comma-separated client endpoints (host:port, http://host:port or https://host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    #[command(flatten)]
    tls: connection::TlsFlags,
    #[command(flatten)]
    workload: W,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

impl<W: clap::Args> WorkloadArgs<W> {
    fn endpoints(&self) -> connection::Endpoints {
        connection::Endpoints::new(&self.endpoints, self.tls.clone())
    }

    /// Runs the workload with `run` and prints its report.
    async fn run(
        &self,
        run: impl AsyncFnOnce(&connection::Endpoints, &W) -> Result<load::LoadReport>,
    ) -> Result<()> {
        let report = run(&self.endpoints(), &self.workload).await?;
        print_report(self.json, || report.to_json(), || report.to_text());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Put(args) => args.run(load::run_puts).await?,
        Command::Range(args) => args.run(workloads::run_ranges).await?,
        Command::TxnPut(args) => args.run(workloads::run_txn_puts).await?,
        Command::Mixed(args) => args.run(workloads::run_mixed).await?,
        Command::LeaseKeepAlive(args) => args.run(workloads::run_lease_keep_alives).await?,
        Command::Compare(args) => compare::compare(args).await?,
        Command::ListMemory(args) => list_memory::run(args).await?,
        Command::Snapshot(args) => snapshot::run(args).await?,
        Command::Kube(args) => kube::run(args).await?,
        Command::Watch(args) => {
            let report = watch::run_watch(&args.endpoints(), &args.workload).await?;
            print_report(args.json, || report.to_json(), || report.to_text());
        }
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
