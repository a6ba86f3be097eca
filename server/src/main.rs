use clap::Parser;
use oxcd::config::Config;
use oxcd::node::Node;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

oxcd::jemalloc_allocator!();

fn main() {
    abort_on_panic();
    // Crash tests set FAILPOINTS (e.g. `raft::wal::after_fsync=5*off->panic`).
    let _failpoints = oxcd::failpoints_from_env();
    let config = match Config::try_parse_from(oxcd::config::go_style_args(std::env::args_os())) {
        Ok(config) => config,
        // As Go's flag package (so etcd) words a bad command line, and exits with its code 2.
        Err(e) => match oxcd::config::go_flag_error(&e) {
            Some(message) => {
                eprintln!("{message}");
                std::process::exit(2);
            }
            None => e.exit(),
        },
    };
    if let Err(e) = config
        .refuse_unsupported()
        .and_then(|()| oxcd::logging::init(&config))
    {
        fail(e);
    }
    config.feature_gates.log_no_effect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(e.into()),
    };
    let closed = runtime.block_on(run(config));
    // Whatever is left of the runtime (tasks, blocking calls) is gone before the process exits.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match closed {
        Ok(true) => tracing::info!("stopped"),
        Ok(false) => std::process::exit(1),
        Err(e) => fail(e),
    }
}

/// Runs the member until a signal or its removal; returns whether it closed cleanly.
async fn run(config: Config) -> anyhow::Result<bool> {
    let node = Node::start(&config).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
        _ = node.removed() => tracing::warn!("the member has been permanently removed from the cluster; shutting down"),
    }
    Ok(node.shutdown().await)
}

/// A panic is a bug that may have left shared state half-changed (an apply half done, a lock
/// poisoned), and tokio would only end the task it happened in. Like etcd, which crashes on a
/// panic, the process stops at once instead of serving on; a failpoint's `panic` action is a
/// crash at that point for the same reason.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

fn fail(e: anyhow::Error) -> ! {
    eprintln!("oxcd: error: {e:#}");
    std::process::exit(1);
}
