//! `compare-put`: the same put workloads against a fresh real etcd and a fresh oxcd, one after
//! the other, summarised as one Markdown table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::load::{run_puts, KeyShape, LoadReport, LoadShape, PutWorkload};
use crate::server::{new_work_dir, Cluster};
use crate::stats::{format_ms, ratio, MIB};

/// Workload shape shared by all runs (compare-cluster's too); only the client/connection counts
/// and totals vary.
pub const KEY_SIZE: u64 = 8;
pub const VAL_SIZE: u64 = 256;
pub const KEY_SPACE: u64 = 100_000;
pub const CONCURRENT_CLIENTS: u64 = 50;
pub const CONCURRENT_CONNS: u64 = 10;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The oxcd server binary.
    #[arg(long)]
    pub oxcd_bin: PathBuf,
    /// The reference etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Puts in the sequential workload (1 client, 1 connection).
    #[arg(long, default_value_t = 3_000)]
    pub total_sequential: u64,
    /// Puts in the concurrent workload (50 clients over 10 connections).
    #[arg(long, default_value_t = 30_000)]
    pub total_concurrent: u64,
}

/// Everything recorded for one server.
struct ServerMeasurements {
    /// One report per workload, in the order the workloads ran.
    reports: Vec<LoadReport>,
    /// Taken after the last workload, while the server still runs.
    rss_bytes: u64,
    data_dir_bytes: u64,
}

/// Runs the comparison and returns the Markdown summary. etcd always runs first, then oxcd:
/// a fixed order keeps repeated comparisons alike, and each server gets a fresh process and
/// data dir, so neither inherits the other's state (only the OS page cache is shared).
pub async fn compare_put(args: &CompareArgs) -> Result<String> {
    let work_dir = new_work_dir()?;
    let workloads = [
        put_workload(1, 1, args.total_sequential),
        put_workload(CONCURRENT_CLIENTS, CONCURRENT_CONNS, args.total_concurrent),
    ];
    let etcd = measure("etcd", &args.etcd_bin, &work_dir.join("etcd"), &workloads).await?;
    let oxcd = measure("oxcd", &args.oxcd_bin, &work_dir.join("oxcd"), &workloads).await?;
    Ok(render_summary(args, &work_dir, &workloads, &etcd, &oxcd))
}

pub fn put_workload(clients: u64, conns: u64, total: u64) -> PutWorkload {
    PutWorkload {
        load: LoadShape::unpaced(clients, conns, total),
        keys: KeyShape {
            key_size: KEY_SIZE,
            key_space: KEY_SPACE,
        },
        val_size: VAL_SIZE,
        sequential_keys: false,
    }
}

pub fn workload_label(workload: &PutWorkload) -> String {
    format!(
        "put, {} client(s) / {} conn(s), {} puts",
        workload.load.clients, workload.load.conns, workload.load.total
    )
}

/// Starts one server in `work_dir`, runs every workload against it, measures it, stops it.
/// A put workload that has not finished after this long has failed (the server is stuck).
const PUT_LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs each workload in turn against `endpoints`, reporting progress on stderr.
pub async fn run_workloads(
    label: &str,
    endpoints: &[String],
    workloads: &[PutWorkload],
) -> Result<Vec<LoadReport>> {
    let mut reports = Vec::new();
    for workload in workloads {
        eprintln!("{label}: {}", workload_label(workload));
        let report = tokio::time::timeout(PUT_LOAD_TIMEOUT, run_puts(endpoints, workload))
            .await
            .map_err(|_| anyhow!("not finished after {PUT_LOAD_TIMEOUT:?}"))
            .and_then(|report| report)
            .with_context(|| format!("{label}: {} failed", workload_label(workload)))?;
        eprintln!(
            "{label}:   {:.1} ops/s, p99 {}, {} errors",
            report.throughput(),
            format_ms(report.p99_us()),
            report.errors
        );
        reports.push(report);
    }
    Ok(reports)
}

async fn measure(
    label: &str,
    binary: &Path,
    work_dir: &Path,
    workloads: &[PutWorkload],
) -> Result<ServerMeasurements> {
    let server = Cluster::start_ready(label, binary, work_dir, 1).await?;
    let endpoints = server.client_urls();
    let reports = run_workloads(label, &endpoints, workloads).await?;

    let member = &server.members()[0];
    let measurements = ServerMeasurements {
        reports,
        rss_bytes: member.rss_bytes()?,
        data_dir_bytes: member.data_dir_bytes()?,
    };
    server.stop().await?;
    Ok(measurements)
}

fn render_summary(
    args: &CompareArgs,
    work_dir: &Path,
    workloads: &[PutWorkload],
    etcd: &ServerMeasurements,
    oxcd: &ServerMeasurements,
) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | etcd ops/s | oxcd ops/s | ratio oxcd/etcd | etcd p99 | oxcd p99 |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|\n");
    for (index, workload) in workloads.iter().enumerate() {
        let (etcd_report, oxcd_report) = (&etcd.reports[index], &oxcd.reports[index]);
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {} | {} | {} |",
            workload_label(workload),
            etcd_report.throughput(),
            oxcd_report.throughput(),
            ratio(oxcd_report.throughput(), etcd_report.throughput()),
            format_ms(etcd_report.p99_us()),
            format_ms(oxcd_report.p99_us()),
        );
    }
    for (name, etcd_bytes, oxcd_bytes) in [
        ("RSS after load (MiB)", etcd.rss_bytes, oxcd.rss_bytes),
        (
            "data dir size (MiB)",
            etcd.data_dir_bytes,
            oxcd.data_dir_bytes,
        ),
    ] {
        let (etcd_mib, oxcd_mib) = (etcd_bytes as f64 / MIB, oxcd_bytes as f64 / MIB);
        let _ = writeln!(
            out,
            "| {name} | {etcd_mib:.1} | {oxcd_mib:.1} | {} | – | – |",
            ratio(oxcd_mib, etcd_mib)
        );
    }

    let _ = write!(
        out,
        "\netcd = {}, oxcd = {}. etcd ran first, then oxcd, each as a fresh single-member \
         server (default flags, so fsync on) with a fresh data dir on loopback, sharing the \
         machine with this load generator. Keys: {KEY_SIZE} bytes, random in a {KEY_SPACE}-key \
         space; values: {VAL_SIZE} random bytes. Data dir size is the sum of apparent file \
         sizes (etcd preallocates its WAL). Server logs: {}.\n",
        args.etcd_bin.display(),
        args.oxcd_bin.display(),
        work_dir.display(),
    );
    for (label, measurements) in [("etcd", etcd), ("oxcd", oxcd)] {
        for (workload, report) in workloads.iter().zip(&measurements.reports) {
            if let Some(error) = &report.first_error {
                let _ = writeln!(
                    out,
                    "\nWARNING: {label}, {}: {} of {} puts failed; first error: {error}",
                    workload_label(workload),
                    report.errors,
                    report.total
                );
            }
        }
    }
    out
}
