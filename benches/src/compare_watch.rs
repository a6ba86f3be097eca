//! `compare-watch`: the same watch load against a fresh real etcd and a fresh oxcd, one after the
//! other, with the servers' memory before and after the watchers exist, as one Markdown table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::server::{new_work_dir, Cluster};
use crate::stats::{format_ms, ratio, MIB, REPORTED_QUANTILES};
use crate::watch::{prepare, WatchReport, WatchWorkload};

const PREFIX: &str = "/bench/watch/";
const STREAMS_PER_CONN: u64 = 100;
const KEYS: u64 = 100;
const DRAIN_TIMEOUT_SECS: u64 = 30;
/// Pause before each RSS reading, so the server has finished reacting to what was just done.
const RSS_SETTLE: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
pub struct CompareWatchArgs {
    /// The oxcd server binary.
    #[arg(long)]
    pub oxcd_bin: PathBuf,
    /// The reference etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// gRPC watch streams (100 per connection).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub streams: u64,
    /// Watchers over all streams, all on one prefix.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub watchers: u64,
    /// Puts under the prefix, each delivered to every watcher.
    #[arg(long, default_value_t = 1_000)]
    pub puts: u64,
    /// Puts per second.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub put_rate: u64,
    /// Ask for the previous key-value with every event.
    #[arg(long)]
    pub prev_kv: bool,
}

/// Everything recorded for one server.
struct ServerMeasurements {
    rss_idle: u64,
    rss_watchers: u64,
    rss_after: u64,
    report: WatchReport,
}

impl ServerMeasurements {
    fn bytes_per_watcher(&self) -> f64 {
        (self.rss_watchers as f64 - self.rss_idle as f64) / self.report.watchers as f64
    }
}

/// Runs the comparison and returns the Markdown summary; etcd first, then oxcd, each fresh.
pub async fn compare_watch(args: &CompareWatchArgs) -> Result<String> {
    let work_dir = new_work_dir()?;
    let workload = WatchWorkload {
        streams: args.streams,
        watchers: args.watchers,
        streams_per_conn: STREAMS_PER_CONN,
        prefix: PREFIX.to_owned(),
        puts: args.puts,
        put_rate: args.put_rate,
        keys: KEYS,
        prev_kv: args.prev_kv,
        drain_timeout_secs: DRAIN_TIMEOUT_SECS,
    };
    let etcd = measure("etcd", &args.etcd_bin, &work_dir.join("etcd"), &workload).await?;
    let oxcd = measure("oxcd", &args.oxcd_bin, &work_dir.join("oxcd"), &workload).await?;
    Ok(render_summary(args, &work_dir, &workload, &etcd, &oxcd))
}

/// Starts one server, measures it idle, with the watchers, and after the load, then stops it.
async fn measure(
    label: &str,
    binary: &Path,
    work_dir: &Path,
    workload: &WatchWorkload,
) -> Result<ServerMeasurements> {
    let server = Cluster::start_ready(label, binary, work_dir, 1).await?;
    let endpoints = server.client_urls();
    let member = &server.members()[0];
    tokio::time::sleep(RSS_SETTLE).await;
    let rss_idle = member.rss_bytes()?;

    eprintln!(
        "{label}: creating {} watchers on {} streams",
        workload.watchers, workload.streams
    );
    let prepared = prepare(&endpoints, workload)
        .await
        .with_context(|| format!("{label}: creating the watchers failed"))?;
    tokio::time::sleep(RSS_SETTLE).await;
    let rss_watchers = member.rss_bytes()?;

    eprintln!("{label}: {} puts at {}/s", workload.puts, workload.put_rate);
    let report = prepared
        .run()
        .await
        .with_context(|| format!("{label}: the watch load failed"))?;
    eprintln!(
        "{label}:   {} of {} events, p99 {}, {} stream errors",
        report.events_received,
        report.events_expected,
        format_ms(report.latency_us.value_at_quantile(0.99)),
        report.stream_errors
    );
    let rss_after = member.rss_bytes()?;
    server.stop().await?;
    Ok(ServerMeasurements {
        rss_idle,
        rss_watchers,
        rss_after,
        report,
    })
}

fn render_summary(
    args: &CompareWatchArgs,
    work_dir: &Path,
    workload: &WatchWorkload,
    etcd: &ServerMeasurements,
    oxcd: &ServerMeasurements,
) -> String {
    let mut out =
        String::from("| metric | etcd | oxcd | ratio oxcd/etcd |\n|---|---:|---:|---:|\n");
    let mut row = |name: &str, etcd_value: f64, oxcd_value: f64, shown: &dyn Fn(f64) -> String| {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            shown(etcd_value),
            shown(oxcd_value),
            ratio(oxcd_value, etcd_value)
        );
    };
    let mib = |bytes: f64| format!("{:.1}", bytes / MIB);
    let ms = |micros: f64| format_ms(micros as u64);
    let count = |value: f64| format!("{value:.0}");
    row(
        "RSS idle (MiB)",
        etcd.rss_idle as f64,
        oxcd.rss_idle as f64,
        &mib,
    );
    row(
        "RSS with watchers (MiB)",
        etcd.rss_watchers as f64,
        oxcd.rss_watchers as f64,
        &mib,
    );
    row(
        "RSS after load (MiB)",
        etcd.rss_after as f64,
        oxcd.rss_after as f64,
        &mib,
    );
    row(
        "bytes per watcher",
        etcd.bytes_per_watcher(),
        oxcd.bytes_per_watcher(),
        &count,
    );
    for (name, quantile) in REPORTED_QUANTILES {
        row(
            &format!("event latency {name}"),
            etcd.report.latency_us.value_at_quantile(quantile) as f64,
            oxcd.report.latency_us.value_at_quantile(quantile) as f64,
            &ms,
        );
    }
    row(
        "event latency max",
        etcd.report.latency_us.max() as f64,
        oxcd.report.latency_us.max() as f64,
        &ms,
    );
    row(
        "put latency p99",
        etcd.report.put_latency_us.value_at_quantile(0.99) as f64,
        oxcd.report.put_latency_us.value_at_quantile(0.99) as f64,
        &ms,
    );
    row(
        "achieved puts/s",
        etcd.report.put_rate(),
        oxcd.report.put_rate(),
        &|value| format!("{value:.1}"),
    );
    row(
        "events delivered per second",
        etcd.report.delivery_rate(),
        oxcd.report.delivery_rate(),
        &count,
    );
    row(
        "load generator CPU (cores)",
        etcd.report.client_cores(),
        oxcd.report.client_cores(),
        &|value| format!("{value:.2}"),
    );
    row(
        "drain after the last put (s)",
        etcd.report.drain.as_secs_f64(),
        oxcd.report.drain.as_secs_f64(),
        &|value| format!("{value:.3}"),
    );
    let _ = writeln!(
        out,
        "| events received / expected | {} / {} | {} / {} | – |",
        etcd.report.events_received,
        etcd.report.events_expected,
        oxcd.report.events_received,
        oxcd.report.events_expected
    );
    for (name, etcd_value, oxcd_value) in [
        (
            "watchers not exactly once in order",
            etcd.report.incomplete.len() as u64,
            oxcd.report.incomplete.len() as u64,
        ),
        (
            "duplicate events",
            etcd.report.duplicates,
            oxcd.report.duplicates,
        ),
        (
            "out-of-order events",
            etcd.report.out_of_order,
            oxcd.report.out_of_order,
        ),
        (
            "canceled watchers",
            etcd.report.canceled_watchers,
            oxcd.report.canceled_watchers,
        ),
        (
            "stream errors",
            etcd.report.stream_errors,
            oxcd.report.stream_errors,
        ),
        ("put errors", etcd.report.put_errors, oxcd.report.put_errors),
    ] {
        let _ = writeln!(out, "| {name} | {etcd_value} | {oxcd_value} | – |");
    }

    let _ =
        write!(
        out,
        "\netcd = {}, oxcd = {}. etcd ran first, then oxcd, each as a fresh single-member server \
         on loopback, sharing the machine with this load generator. {} watchers on prefix \
         {PREFIX} over {} watch streams ({STREAMS_PER_CONN} per gRPC connection){}; one writer \
         put {} 16-byte values at {}/s cycling over {KEYS} keys. Latency is from just before a \
         put is sent to the arrival of its event at a watcher, for every (watcher, put) pair. \
         Bytes per watcher = (RSS with watchers − RSS idle) / watchers, both read {RSS_SETTLE:?} \
         after the server went idle or the last watcher was created. Server logs: {}.\n",
        args.etcd_bin.display(),
        args.oxcd_bin.display(),
        workload.watchers,
        workload.streams,
        if workload.prev_kv { ", with prev_kv" } else { "" },
        workload.puts,
        workload.put_rate,
        work_dir.display(),
    );
    for (label, measurements) in [("etcd", etcd), ("oxcd", oxcd)] {
        let report = &measurements.report;
        if report.drain_timed_out {
            let _ = writeln!(
                out,
                "\nWARNING: {label}: {} events still missing {DRAIN_TIMEOUT_SECS} s after the last put",
                report.events_missing()
            );
        }
        for (what, error) in [
            ("put", &report.first_put_error),
            ("stream", &report.first_stream_error),
        ] {
            if let Some(error) = error {
                let _ = writeln!(out, "\nWARNING: {label}: first {what} error: {error}");
            }
        }
    }
    out
}
