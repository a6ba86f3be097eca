//! `oxcdctl`: etcdctl v3's commands, flags and output, plus a `registry` view of the Kubernetes
//! objects stored under `/registry`.

mod global;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "oxcdctl", about = "A simple command line client for etcd3 and oxcd.")]
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
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Version => {
            println!("etcdctl version: {}", global::ETCDCTL_VERSION);
            println!("API version: {}", global::API_VERSION);
            0
        }
    };
    std::process::exit(code);
}
