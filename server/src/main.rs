use clap::Parser;
use oxcd::config::Config;
use oxcd::node::Node;
use tokio::signal::unix::{signal, SignalKind};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options read at start-up: a background thread returns freed pages to the OS within
/// about a second, so memory used by a burst (watch fan-out under overload) does not stay in
/// the process's RSS (measured: 429 MiB kept after a burst without it, 33 MiB with it).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static _rjem_malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() {
    let config = Config::parse();
    init_logging(&config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(e.into()),
    };
    if let Err(e) = runtime.block_on(run(config)) {
        fail(e);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let node = Node::start(&config).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
        _ = node.removed() => tracing::warn!("the member has been permanently removed from the cluster; shutting down"),
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(level: &str) {
    // etcd's levels; panic and fatal only ever log errors.
    let level = match level {
        "debug" => "debug",
        "warn" => "warn",
        "error" | "panic" | "fatal" => "error",
        _ => "info",
    };
    // openraft's info level narrates every vote and replication step; it never says more than
    // warnings, and no more than the chosen level.
    let openraft = if level == "error" { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OXCD_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},openraft={openraft}"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn fail(e: anyhow::Error) -> ! {
    eprintln!("oxcd: error: {e:#}");
    std::process::exit(1);
}
