//! `check perf` and `check datascale`: etcdctl 3.7's load checks. Both write a workload under a
//! prefix through many clients, judge the result, delete their keys and optionally compact and
//! defragment afterwards.

mod datascale;
mod metrics;
mod perf;
mod progress;
mod stats;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oxcd_proto::etcdserverpb::{
    CompactionRequest, DefragmentRequest, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    RangeRequest,
};
use rand::Rng;
use tokio::sync::mpsc;

use crate::args::prefix_range_end;
use crate::client::{Connection, RpcError};
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use progress::Progress;
use stats::{Collector, Outcome, Stats};

#[derive(clap::Subcommand, Debug)]
pub enum CheckCommand {
    /// Check the performance of the etcd cluster
    Perf(perf::PerfArgs),
    #[command(
        about = "Check the memory usage of holding data for different workloads on a given server endpoint.",
        long_about = "If no endpoint is provided, localhost will be used. If multiple endpoints are provided, first endpoint will be used."
    )]
    Datascale(datascale::DatascaleArgs),
}

pub async fn run(global: &GlobalFlags, command: CheckCommand) -> CtlResult {
    match command {
        CheckCommand::Perf(args) => perf::run(global, args).await,
        CheckCommand::Datascale(args) => datascale::run(global, args).await,
    }
}

/// What to do once a check's keys are deleted.
#[derive(clap::Args, Debug)]
struct Aftercare {
    #[arg(
        long,
        help = "Compact storage with last revision after test is finished."
    )]
    auto_compact: bool,
    #[arg(long, help = "Defragment storage after test is finished.")]
    auto_defrag: bool,
}

/// The workload models, by etcdctl's names and aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Small,
    Medium,
    Large,
    XLarge,
}

impl Model {
    fn parse(load: &str) -> CtlResult<Model> {
        match load {
            "s" | "small" => Ok(Model::Small),
            "m" | "medium" => Ok(Model::Medium),
            "l" | "large" => Ok(Model::Large),
            "xl" | "xLarge" => Ok(Model::XLarge),
            _ => Err(Failure::new(
                ExitCode::BadFeature,
                format!("unknown load option {load}"),
            )),
        }
    }
}

/// One client per concurrent writer, each with its own connection, as etcdctl makes them.
async fn clients(global: &GlobalFlags, n: usize) -> CtlResult<Vec<Connection>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Connection::open(global).await?);
    }
    Ok(clients)
}

/// Whether any key is stored under `prefix` (a check refuses to mix its keys with others').
async fn has_keys(
    conn: &Connection,
    prefix: &str,
    deadline: Option<Duration>,
) -> Result<bool, RpcError> {
    let kv = conn.kv();
    let request = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_range_end(prefix.as_bytes()),
        limit: 1,
        ..RangeRequest::default()
    };
    let reply = conn
        .unary(deadline, || {
            let mut kv = kv.clone();
            let request = request.clone();
            async move { kv.range(request).await }
        })
        .await?;
    Ok(!reply.kvs.is_empty())
}

/// A put of `value` under `prefix` + a key of `key_size` bytes: a random int64's varint, then
/// zeros, as etcdctl makes its keys.
fn random_put(prefix: &str, key_size: usize, value: &[u8]) -> PutRequest {
    let mut key = prefix.as_bytes().to_vec();
    let random: i64 = rand::thread_rng().gen_range(0..i64::MAX);
    let start = key.len();
    // Go's PutVarint: zig-zag, then base-128 (a non-negative value just doubles).
    prost::encoding::encode_varint((random as u64) << 1, &mut key);
    key.resize(start + key_size, 0);
    PutRequest {
        key,
        value: value.to_vec(),
        ..PutRequest::default()
    }
}

/// Sends every put it receives through the clients, one writer per client, until the sender
/// closes; `progress` counts finished puts.
async fn put_all(
    clients: &[Connection],
    requests: mpsc::Receiver<PutRequest>,
    progress: Option<Progress>,
) -> Stats {
    let requests = Arc::new(tokio::sync::Mutex::new(requests));
    let collector = Arc::new(Mutex::new(Collector::start()));
    let mut writers = tokio::task::JoinSet::new();
    for client in clients {
        let (client, requests) = (client.clone(), requests.clone());
        let (collector, progress) = (collector.clone(), progress.clone());
        writers.spawn(async move {
            let kv = client.kv();
            loop {
                let Some(request) = requests.lock().await.recv().await else {
                    break;
                };
                let started = Instant::now();
                // No deadline: etcdctl's puts run under context.Background().
                let reply = client
                    .unary(None, || {
                        let mut kv = kv.clone();
                        let request = request.clone();
                        async move { kv.put(request).await }
                    })
                    .await;
                let outcome = Outcome {
                    took: started.elapsed(),
                    error: reply.err().map(|e| e.0),
                };
                collector.lock().expect("collector lock").add(outcome);
                if let Some(progress) = &progress {
                    progress.add(1);
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
    Arc::into_inner(collector)
        .expect("every writer has finished")
        .into_inner()
        .expect("collector lock")
        .finish()
}

/// Deletes the check's keys, within `deadline` when given.
async fn delete_prefix(
    conn: &Connection,
    prefix: &str,
    deadline: Option<Duration>,
) -> Result<DeleteRangeResponse, RpcError> {
    let kv = conn.kv();
    let request = DeleteRangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_range_end(prefix.as_bytes()),
        ..DeleteRangeRequest::default()
    };
    conn.unary(deadline, || {
        let mut kv = kv.clone();
        let request = request.clone();
        async move { kv.delete_range(request).await }
    })
    .await
}

/// etcdctl's time limit on the compaction, defragmentation and cleanup after a check.
const AFTERCARE_TIMEOUT: Duration = Duration::from_secs(30);

/// `--auto-compact` and `--auto-defrag` once the keys are gone at `revision`.
async fn aftercare(conn: &Connection, aftercare: &Aftercare, revision: Option<i64>) -> CtlResult {
    if let (true, Some(revision)) = (aftercare.auto_compact, revision) {
        compact(conn, revision).await?;
    }
    if aftercare.auto_defrag {
        for endpoint in conn.endpoints() {
            defrag(conn, endpoint).await?;
        }
    }
    Ok(())
}

async fn compact(conn: &Connection, revision: i64) -> CtlResult {
    println!("Compacting with revision {revision}");
    let kv = conn.kv();
    let request = CompactionRequest {
        revision,
        physical: true,
    };
    conn.unary(Some(AFTERCARE_TIMEOUT), || {
        let mut kv = kv.clone();
        async move { kv.compact(request).await }
    })
    .await?;
    println!("Compacted with revision {revision}");
    Ok(())
}

async fn defrag(conn: &Connection, endpoint: &str) -> CtlResult {
    let quoted = crate::output::text::go_quote(endpoint.as_bytes());
    println!("Defragmenting {quoted}");
    let member = conn.to_endpoint(endpoint).await?;
    let maintenance = member.maintenance();
    member
        .unary(Some(AFTERCARE_TIMEOUT), || {
            let mut maintenance = maintenance.clone();
            async move { maintenance.defragment(DefragmentRequest {}).await }
        })
        .await?;
    println!("Defragmented {quoted}");
    Ok(())
}

/// etcdctl's lines for failed requests, none when all succeeded (sorted here; Go prints them in
/// map order).
fn error_lines(stats: &Stats) -> Vec<String> {
    if stats.errors.is_empty() {
        return Vec::new();
    }
    let mut lines = vec!["FAIL: too many errors".to_string()];
    for (message, count) in &stats.errors {
        lines.push(format!("FAIL: ERROR({message}) -> {count}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_names_and_aliases() {
        assert_eq!(Model::parse("s").unwrap(), Model::Small);
        assert_eq!(Model::parse("xLarge").unwrap(), Model::XLarge);
        let bad = Model::parse("huge").unwrap_err();
        assert_eq!(
            (bad.code, bad.message.as_str()),
            (ExitCode::BadFeature, "unknown load option huge")
        );
    }

    #[test]
    fn keys_are_prefix_varint_and_zeros() {
        let put = random_put("/p/", 256, &[0; 4]);
        assert_eq!(put.key.len(), 3 + 256);
        assert!(put.key.starts_with(b"/p/"));
        assert_eq!(put.value, vec![0; 4]);
    }
}
