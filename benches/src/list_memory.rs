//! `oxcd-bench list-memory`: the peak memory a server needs to hand one large list to a client,
//! read the three ways kube-apiserver can read it: etcd 3.7's RangeStream, Range pages of 500
//! (its paged lists) and one unpaged Range. Each list runs in a freshly restarted server, so the
//! peak (VmHWM) is the list's plus start-up; the start-up peak is reported next to it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use oxcd_proto::etcdserverpb::kv_client::KvClient;
use oxcd_proto::etcdserverpb::request_op::Request;
use oxcd_proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

use crate::server::{new_work_dir, Cluster, ServerProcess};

/// Keys per loading transaction (etcd's default `--max-txn-ops` is 128).
const PUTS_PER_TXN: usize = 100;
/// Loading transactions in flight at once.
const LOADERS: usize = 8;
/// kube-apiserver's page size for paged lists.
const PAGE: i64 = 500;
/// Above this many keys an unpaged Range would need gigabytes on either server; it is skipped.
const UNPAGED_LIMIT: usize = 200_000;
const PREFIX: &str = "list/";
const PREFIX_END: &str = "list0";

#[derive(clap::Args, Debug)]
pub struct ListMemoryArgs {
    /// The oxcd server binary.
    #[arg(long)]
    oxcd_bin: PathBuf,
    /// An etcd with RangeStream (3.7 or later).
    #[arg(long)]
    etcd_bin: PathBuf,
    /// How many keys each list has; one measurement per count, e.g. `100000,1000000`.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    keys: Vec<usize>,
    /// Bytes of each value.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Directory for report.md and report.json; created if missing.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListMode {
    RangeStream,
    PagedRange,
    UnpagedRange,
}

impl ListMode {
    fn name(self) -> &'static str {
        match self {
            ListMode::RangeStream => "RangeStream",
            ListMode::PagedRange => "Range, pages of 500",
            ListMode::UnpagedRange => "Range, unpaged",
        }
    }
}

struct Measurement {
    server: &'static str,
    keys: usize,
    mode: ListMode,
    startup_peak_bytes: u64,
    peak_bytes: u64,
    seconds: f64,
}

pub async fn run(args: ListMemoryArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let mut measurements = Vec::new();
    for &keys in &args.keys {
        for (server, binary) in [("etcd", &args.etcd_bin), ("oxcd", &args.oxcd_bin)] {
            let work_dir = new_work_dir()?;
            let label = format!("{server} ({keys} keys)");
            let mut cluster = Cluster::start_ready(&label, binary, &work_dir, 1).await?;
            load(&cluster.client_urls()[0], keys, args.value_size).await?;
            for mode in [
                ListMode::RangeStream,
                ListMode::PagedRange,
                ListMode::UnpagedRange,
            ] {
                if mode == ListMode::UnpagedRange && keys > UNPAGED_LIMIT {
                    continue;
                }
                let member = &mut cluster.members_mut()[0];
                member.kill().await?;
                member.restart()?;
                cluster.wait_until_ready().await?;
                let m = measure(&cluster.members()[0], server, keys, mode).await?;
                eprintln!(
                    "{label}: {}: peak {} MiB, {:.1} s",
                    mode.name(),
                    m.peak_bytes >> 20,
                    m.seconds
                );
                measurements.push(m);
            }
            cluster.stop().await?;
        }
    }
    std::fs::write(args.out.join("report.md"), to_markdown(&measurements))?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&to_json(&measurements))?,
    )?;
    print!("{}", to_markdown(&measurements));
    Ok(())
}

async fn channel(url: &str) -> Result<Channel> {
    Channel::from_shared(url.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

fn key(i: usize) -> Vec<u8> {
    format!("{PREFIX}{i:08}").into_bytes()
}

/// Writes `keys` keys under `list/`, all with the same value.
async fn load(url: &str, keys: usize, value_size: usize) -> Result<()> {
    let started = Instant::now();
    let value = vec![b'v'; value_size];
    put_in_txns(url, keys, move |i| Ok((key(i), value.clone()))).await?;
    eprintln!("loaded {keys} keys in {:.0?}", started.elapsed());
    Ok(())
}

/// Puts entries `0..count` (`entry` makes each key and value), `PUTS_PER_TXN` per transaction,
/// `LOADERS` transactions at a time, through `url`: how the list benchmarks fill a store.
pub async fn put_in_txns(
    url: &str,
    count: usize,
    entry: impl Fn(usize) -> Result<(Vec<u8>, Vec<u8>)> + Send + Sync + 'static,
) -> Result<()> {
    let ch = channel(url).await?;
    let entry = std::sync::Arc::new(entry);
    let mut loaders = tokio::task::JoinSet::new();
    for loader in 0..LOADERS {
        let mut kv = KvClient::new(ch.clone());
        let entry = std::sync::Arc::clone(&entry);
        loaders.spawn(async move {
            for start in (loader * PUTS_PER_TXN..count).step_by(LOADERS * PUTS_PER_TXN) {
                let success = (start..(start + PUTS_PER_TXN).min(count))
                    .map(|i| {
                        let (key, value) = entry(i)?;
                        Ok(RequestOp {
                            request: Some(Request::RequestPut(PutRequest {
                                key,
                                value,
                                ..Default::default()
                            })),
                        })
                    })
                    .collect::<Result<_>>()?;
                kv.txn(TxnRequest {
                    success,
                    ..Default::default()
                })
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = loaders.join_next().await {
        done?.context("loading keys")?;
    }
    Ok(())
}

async fn measure(
    member: &ServerProcess,
    server: &'static str,
    keys: usize,
    mode: ListMode,
) -> Result<Measurement> {
    let ch = channel(member.client_url()).await?;
    let startup_peak_bytes = member.peak_rss_bytes()?;
    let started = Instant::now();
    let listed = list(&ch, mode).await?;
    let seconds = started.elapsed().as_secs_f64();
    if listed != keys {
        bail!("{server} listed {listed} of {keys} keys by {}", mode.name());
    }
    Ok(Measurement {
        server,
        keys,
        mode,
        startup_peak_bytes,
        peak_bytes: member.peak_rss_bytes()?,
        seconds,
    })
}

/// Reads every key under `list/` as `mode` does; returns how many came back.
async fn list(ch: &Channel, mode: ListMode) -> Result<usize> {
    let mut kv = KvClient::new(ch.clone()).max_decoding_message_size(usize::MAX);
    let whole = RangeRequest {
        key: PREFIX.into(),
        range_end: PREFIX_END.into(),
        ..Default::default()
    };
    let listed = match mode {
        ListMode::RangeStream => {
            let mut stream = kv.range_stream(whole).await?.into_inner();
            let mut n = 0;
            while let Some(chunk) = stream.message().await? {
                n += chunk.range_response.map_or(0, |r| r.kvs.len());
            }
            n
        }
        ListMode::UnpagedRange => kv.range(whole).await?.into_inner().kvs.len(),
        ListMode::PagedRange => {
            // As kube-apiserver pages: at the first page's revision, from after the last key.
            let mut page = RangeRequest {
                limit: PAGE,
                ..whole
            };
            let mut n = 0;
            loop {
                let resp = tokio::time::timeout(Duration::from_secs(60), kv.range(page.clone()))
                    .await
                    .context("a page took over a minute")??
                    .into_inner();
                n += resp.kvs.len();
                let Some(last) = resp.kvs.last().filter(|_| resp.more) else {
                    break n;
                };
                page.revision = resp.header.map_or(0, |h| h.revision);
                page.key = [last.key.as_slice(), &[0]].concat();
            }
        }
    };
    Ok(listed)
}

fn to_markdown(measurements: &[Measurement]) -> String {
    let mut out = String::from(
        "| keys | list | etcd peak MiB | oxcd peak MiB | oxcd/etcd | etcd s | oxcd s |\n\
         |---:|---|---:|---:|---:|---:|---:|\n",
    );
    for m in measurements.iter().filter(|m| m.server == "etcd") {
        let Some(o) = measurements
            .iter()
            .find(|o| o.server == "oxcd" && o.keys == m.keys && o.mode == m.mode)
        else {
            continue;
        };
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} (start {:.0}) | {:.0} (start {:.0}) | {:.2} | {:.1} | {:.1} |",
            m.keys,
            m.mode.name(),
            mib(m.peak_bytes),
            mib(m.startup_peak_bytes),
            mib(o.peak_bytes),
            mib(o.startup_peak_bytes),
            o.peak_bytes as f64 / m.peak_bytes as f64,
            m.seconds,
            o.seconds
        );
    }
    out
}

fn to_json(measurements: &[Measurement]) -> serde_json::Value {
    measurements
        .iter()
        .map(|m| {
            serde_json::json!({
                "server": m.server,
                "keys": m.keys,
                "list": m.mode.name(),
                "startup_peak_bytes": m.startup_peak_bytes,
                "peak_bytes": m.peak_bytes,
                "seconds": m.seconds,
            })
        })
        .collect()
}
