//! `oxcdctl`: etcdctl v3's commands, flags and output, plus a `registry` view of the Kubernetes
//! objects stored under `/registry`.

mod args;
mod auth;
mod check;
mod client;
mod data_dir;
mod endpoint;
mod failure;
mod global;
mod insecure_tls;
mod kv;
mod lease;
mod maintenance;
mod member;
mod output;
mod password;
mod pki;
mod registry;
mod snapshot;
mod txn;
mod usage;
mod watch;

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
    /// Gets the key or a range of keys
    Get(kv::GetArgs),
    /// Puts the given key into the store
    Put(kv::PutArgs),
    /// Removes the specified key or range of keys [key, range_end)
    Del(kv::DelArgs),
    /// Txn processes all the requests in one transaction
    Txn(txn::TxnArgs),
    /// Compacts the event history in etcd
    Compaction(kv::CompactionArgs),
    /// Watches events stream on keys or prefixes
    Watch(watch::WatchArgs),
    /// Lease related commands
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Membership related commands
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// Endpoint related commands
    Endpoint(endpoint::EndpointArgs),
    /// Alarm related commands
    #[command(subcommand)]
    Alarm(maintenance::AlarmCommand),
    /// Defragments the storage of the etcd members with given endpoints
    Defrag(maintenance::DefragArgs),
    #[command(about = "Transfers leadership to another etcd cluster member.")]
    MoveLeader(maintenance::MoveLeaderArgs),
    /// Downgrade related commands
    #[command(subcommand)]
    Downgrade(maintenance::DowngradeCommand),
    /// Prints the version of etcdctl
    Version,
    /// commands for checking properties of the etcd cluster. Use `etcdctl check --help` to see subcommands
    #[command(subcommand)]
    Check(check::CheckCommand),
    /// Prints the KV history hash of a stopped member's data dir (etcdutl hashkv)
    Hashkv(data_dir::hashkv::HashKvArgs),
    /// Reads the Kubernetes objects kube-apiserver stores under /registry
    Registry(registry::RegistryCommand),
    /// Manages etcd node snapshots
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Makes the certificates of a TLS cluster, as kubeadm makes them for etcd
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// User related commands
    #[command(subcommand)]
    User(auth::UserCommand),
    /// Role related commands
    #[command(subcommand)]
    Role(auth::RoleCommand),
    /// Enable or disable authentication
    #[command(subcommand)]
    Auth(auth::AuthCommand),
}

async fn run(cli: Cli) -> CtlResult {
    let global = &cli.global;
    match cli.command {
        Command::Get(args) => kv::get(global, args).await,
        Command::Put(args) => kv::put(global, args).await,
        Command::Del(args) => kv::del(global, args).await,
        Command::Txn(args) => txn::txn(global, args).await,
        Command::Compaction(args) => kv::compaction(global, args).await,
        Command::Watch(args) => watch::watch(global, args).await,
        Command::Lease(command) => lease::run(global, command).await,
        Command::Member(command) => member::run(global, command).await,
        Command::Endpoint(args) => endpoint::run(global, args).await,
        Command::Alarm(command) => maintenance::alarm(global, command).await,
        Command::Defrag(args) => maintenance::defrag(global, args).await,
        Command::MoveLeader(args) => maintenance::move_leader(global, args).await,
        Command::Downgrade(command) => maintenance::downgrade(global, command).await,
        Command::Version => {
            println!("etcdctl version: {}", global::ETCDCTL_VERSION);
            println!("API version: {}", global::API_VERSION);
            Ok(())
        }
        Command::Check(command) => check::run(global, command).await,
        Command::Hashkv(args) => data_dir::hashkv::run(global, args),
        Command::Registry(command) => registry::run(&cli.global, command).await,
        Command::Snapshot(command) => snapshot::run(command, &cli.global).await,
        Command::Pki(command) => pki::run(command),
        Command::User(command) => auth::user(global, command).await,
        Command::Role(command) => auth::role(global, command).await,
        Command::Auth(command) => auth::auth(global, command).await,
    }
}

#[tokio::main]
async fn main() {
    use clap::{CommandFactory, FromArgMatches};
    // Crash tests stop `snapshot restore` at its failpoints (a build with oxcd's `failpoints`).
    let _failpoints = oxcd::failpoints_from_env();
    let matches = args::with_go_booleans(Cli::command())
        .try_get_matches()
        .unwrap_or_else(|e| failure::exit_for_cli_error(e));
    global::check_variables(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| failure::exit_for_cli_error(e));
    if let Err(failure) = run(cli).await {
        failure.exit();
    }
}
