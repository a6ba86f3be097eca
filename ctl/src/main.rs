//! `oxcdctl`: etcdctl v3's commands, flags and output, plus a `registry` view of the Kubernetes
//! objects stored under `/registry`.

mod client;
mod failure;
mod global;
mod registry;
mod snapshot;

use clap::{Parser, Subcommand};

use failure::CtlResult;

#[derive(Parser, Debug)]
#[command(
    name = "oxcdctl",
    about = "A simple command line client for etcd3 and oxcd."
)]
struct Cli {
    #[command(flatten)]
    global: global::GlobalFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prints the version of oxcdctl
    Version,
    /// Reads the Kubernetes objects kube-apiserver stores under /registry
    Registry(registry::RegistryCommand),
    /// Manages etcd node snapshots
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
}

async fn run(cli: Cli) -> CtlResult {
    match cli.command {
        Command::Version => {
            println!("etcdctl version: {}", global::ETCDCTL_VERSION);
            println!("API version: {}", global::API_VERSION);
            Ok(())
        }
        Command::Registry(command) => registry::run(&cli.global, command).await,
        Command::Snapshot(command) => snapshot::run(command, &cli.global).await,
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(failure) = run(cli).await {
        failure.exit();
    }
}
