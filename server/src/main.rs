use clap::Parser;
use oxcd::config::Config;
use oxcd::node::Node;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};

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
    abort_on_panic();
    // Crash tests set FAILPOINTS (e.g. `raft::wal::after_fsync=5*off->panic`).
    let _failpoints = oxcd::failpoints_from_env();
    let config = Config::parse_from(oxcd::config::go_style_args(std::env::args_os()));
    if let Err(e) = init_logging(&config.log_level, &config.log_outputs) {
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

fn init_logging(level: &str, outputs: &[String]) -> anyhow::Result<()> {
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
        .with_writer(log_writer(outputs)?)
        .with_ansi(
            outputs
                .iter()
                .all(|o| matches!(o.as_str(), "default" | "stderr")),
        )
        .init();
    Ok(())
}

/// etcd's --log-outputs: `default`/`stderr`, `stdout`, or files, every line to each of them.
fn log_writer(outputs: &[String]) -> anyhow::Result<BoxMakeWriter> {
    let mut writer: Option<BoxMakeWriter> = None;
    for output in outputs {
        let next = match output.as_str() {
            "default" | "stderr" => BoxMakeWriter::new(std::io::stderr),
            "stdout" => BoxMakeWriter::new(std::io::stdout),
            path => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("cannot open --log-outputs file {path}: {e}"))?;
                BoxMakeWriter::new(std::sync::Mutex::new(file))
            }
        };
        writer = Some(match writer {
            Some(before) => BoxMakeWriter::new(before.and(next)),
            None => next,
        });
    }
    Ok(writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr)))
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
