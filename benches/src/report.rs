//! The comparison's report: report.md (headline table with the targets, latency percentiles,
//! resources, plots), report.json (every number), and the SVG plots the Markdown shows.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::compare::{Cell, Preset, Scale, WATCH_RSS_SETTLE};
use crate::plot::{self, Series};
use crate::stats::{latency_json, reported_values, MIB};

/// What a metric measures, which also says which way is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    OpsPerSec,
    KeysPerSec,
    EventsPerSec,
    Bytes,
    Seconds,
    Millis,
    /// Pods created (or deleted) a second, through Kubernetes' control plane.
    PodsPerSec,
    /// Events counted, e.g. lease renewals or failed calls.
    Count,
}

impl Unit {
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Unit::OpsPerSec | Unit::KeysPerSec | Unit::EventsPerSec | Unit::PodsPerSec
        )
    }

    fn name(self) -> &'static str {
        match self {
            Unit::OpsPerSec => "ops/s",
            Unit::KeysPerSec => "keys/s",
            Unit::EventsPerSec => "events/s",
            Unit::Bytes => "bytes",
            Unit::Seconds => "s",
            Unit::Millis => "ms",
            Unit::PodsPerSec => "pods/s",
            Unit::Count => "",
        }
    }

    pub fn format(self, value: f64) -> String {
        match self {
            Unit::OpsPerSec => format!("{value:.0} ops/s"),
            Unit::KeysPerSec => format!("{value:.0} keys/s"),
            Unit::EventsPerSec => format!("{value:.0} events/s"),
            Unit::Bytes => format!("{:.1} MiB", value / MIB),
            Unit::Seconds => format!("{value:.3} s"),
            Unit::Millis => format!("{value:.3} ms"),
            Unit::PodsPerSec => format!("{value:.1} pods/s"),
            Unit::Count => format!("{value:.0}"),
        }
    }
}

/// What the issue asks of oxcd for one metric, as a ratio oxcd/etcd.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// At least this ratio when higher is better, at most this ratio otherwise.
    pub ratio: f64,
    pub higher: bool,
    /// oxcd's p99 latency must also be no higher than etcd's.
    pub p99_not_worse: bool,
}

impl Target {
    pub const fn higher(ratio: f64) -> Self {
        Self {
            ratio,
            higher: true,
            p99_not_worse: false,
        }
    }

    pub const fn lower(ratio: f64) -> Self {
        Self {
            ratio,
            higher: false,
            p99_not_worse: false,
        }
    }

    pub fn with_p99_not_worse(self) -> Self {
        Self {
            p99_not_worse: true,
            ..self
        }
    }

    pub fn text(&self) -> String {
        let mut text = format!("{}{}x", if self.higher { "≥" } else { "≤" }, self.ratio);
        if self.p99_not_worse {
            text.push_str(", p99 ≤ etcd");
        }
        text
    }

    /// Whether oxcd/etcd = `ratio` meets the ratio (the p99 condition aside).
    pub fn ratio_met(&self, ratio: f64) -> bool {
        if self.higher {
            ratio >= self.ratio
        } else {
            ratio <= self.ratio
        }
    }

    /// Whether the figures meet the target; `None` if either is missing.
    fn met(&self, etcd: &Cell, oxcd: &Cell) -> Option<bool> {
        let ratio_met = self.ratio_met(ratio(etcd, oxcd)?);
        let p99_met = !self.p99_not_worse || oxcd.p99_us()? <= etcd.p99_us()?;
        Some(ratio_met && p99_met)
    }
}

/// One row of the matrix: what is measured, and how it is judged.
#[derive(Clone, Debug)]
pub struct Metric {
    /// Unique within a run, e.g. `put-50.throughput`.
    pub id: String,
    /// The workload (as `--workloads` names it) that measures it.
    pub workload: &'static str,
    pub label: String,
    pub unit: Unit,
    pub target: Option<Target>,
}

pub struct MetricRow {
    pub metric: Metric,
    pub etcd: Cell,
    pub oxcd: Cell,
    /// Whether etcd's cluster ran before oxcd's for this workload.
    pub etcd_first: bool,
}

/// The matrix for one cluster size.
pub struct Run {
    pub members: usize,
    pub rows: Vec<MetricRow>,
}

pub struct Report {
    pub scale: Scale,
    pub preset: Preset,
    pub machine_before: Machine,
    pub machine_after: Machine,
    pub oxcdctl: bool,
    pub work_dir: PathBuf,
    pub runs: Vec<Run>,
}

/// Facts about the machine and the binaries, which the numbers depend on.
pub struct Machine {
    pub cores: usize,
    pub loadavg: String,
    pub kernel: String,
    pub etcd_version: String,
    pub oxcd_version: String,
    pub oxcd_commit: String,
    pub at: String,
}

impl Machine {
    pub fn now(etcd_bin: &Path, oxcd_bin: &Path) -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .unwrap_or_else(|error| format!("unknown ({error})"))
        };
        Self {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            loadavg: read("/proc/loadavg"),
            kernel: read("/proc/sys/kernel/osrelease"),
            etcd_version: first_line_of(etcd_bin.as_os_str(), &["--version"]),
            oxcd_version: first_line_of(oxcd_bin.as_os_str(), &["--version"]),
            oxcd_commit: first_line_of("git".as_ref(), &["describe", "--always", "--dirty"]),
            at: first_line_of("date".as_ref(), &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cores": self.cores,
            "loadavg": self.loadavg,
            "kernel": self.kernel,
            "etcd_version": self.etcd_version,
            "oxcd_version": self.oxcd_version,
            "oxcd_commit": self.oxcd_commit,
            "at": self.at,
        })
    }
}

/// The first line `program args` prints on stdout, or "unknown" if it fails. (The oxcd commit
/// is the checkout the comparison runs in, which is why the full report is run from one.)
fn first_line_of(program: &std::ffi::OsStr, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| {
            let stdout = String::from_utf8_lossy(&output.stdout);
            stdout.lines().next().map(|line| line.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// oxcd's figure over etcd's, when both exist and etcd's is not zero.
fn ratio(etcd: &Cell, oxcd: &Cell) -> Option<f64> {
    match (&etcd.value, &oxcd.value) {
        (Ok(etcd), Ok(oxcd)) if *etcd > 0.0 => Some(oxcd / etcd),
        _ => None,
    }
}

/// Writes report.md, report.json and the plots into `out`.
pub fn write(out: &Path, report: &Report) -> Result<()> {
    let write = |name: &str, text: &str| {
        std::fs::write(out.join(name), text)
            .with_context(|| format!("cannot write {}", out.join(name).display()))
    };
    for run in &report.runs {
        write(&throughput_plot_name(run.members), &throughput_plot(run))?;
        for row in &run.rows {
            if let Some(plot) = latency_plot(run.members, row) {
                write(&latency_plot_name(run.members, &row.metric), &plot)?;
            }
        }
    }
    write(
        "report.json",
        &serde_json::to_string_pretty(&to_json(report))?,
    )?;
    write("report.md", &to_markdown(report))
}

fn throughput_plot_name(members: usize) -> String {
    format!("throughput-{members}m.svg")
}

fn latency_plot_name(members: usize, metric: &Metric) -> String {
    format!("latency-{members}m-{}.svg", metric.workload)
}

fn throughput_plot(run: &Run) -> String {
    let bars: Vec<(String, Option<f64>, Option<f64>)> = run
        .rows
        .iter()
        .filter(|row| row.metric.unit == Unit::OpsPerSec)
        .map(|row| {
            (
                row.metric.label.clone(),
                row.etcd.value.clone().ok(),
                row.oxcd.value.clone().ok(),
            )
        })
        .collect();
    plot::paired_bars(
        &format!("Throughput, {} member(s) (ops/s)", run.members),
        &bars,
    )
}

fn latency_plot(members: usize, row: &MetricRow) -> Option<String> {
    let etcd = row.etcd.latency_us.as_ref()?;
    let oxcd = row.oxcd.latency_us.as_ref()?;
    Some(plot::latency_cdf(
        &format!("{}, {members} member(s)", row.metric.label),
        &[Series::etcd(etcd), Series::oxcd(oxcd)],
    ))
}

fn cell_json(cell: &Cell) -> serde_json::Value {
    let latency = cell.latency_us.as_ref().map(latency_json);
    serde_json::json!({
        "value": cell.value.as_ref().ok(),
        "missing": cell.value.as_ref().err(),
        "latency_ms": latency,
        "errors": cell.errors.as_ref().map(|(count, first)| serde_json::json!({"count": count, "first": first})),
        "details": cell.details,
    })
}

fn to_json(report: &Report) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = report
        .runs
        .iter()
        .map(|run| {
            let metrics: Vec<serde_json::Value> = run
                .rows
                .iter()
                .map(|row| {
                    let target = row.metric.target.as_ref();
                    serde_json::json!({
                        "id": row.metric.id,
                        "workload": row.metric.workload,
                        "label": row.metric.label,
                        "unit": row.metric.unit.name(),
                        "higher_is_better": row.metric.unit.higher_is_better(),
                        "target": target.map(Target::text),
                        "met": target.and_then(|target| target.met(&row.etcd, &row.oxcd)),
                        "ratio_oxcd_over_etcd": ratio(&row.etcd, &row.oxcd),
                        "first": if row.etcd_first { "etcd" } else { "oxcd" },
                        "etcd": cell_json(&row.etcd),
                        "oxcd": cell_json(&row.oxcd),
                    })
                })
                .collect();
            serde_json::json!({"members": run.members, "metrics": metrics})
        })
        .collect();
    serde_json::json!({
        "scale": format!("{:?}", report.scale).to_lowercase(),
        "preset": report.preset.to_json(),
        "machine_before": report.machine_before.to_json(),
        "machine_after": report.machine_after.to_json(),
        "server_logs": report.work_dir,
        "runs": runs,
    })
}

fn shown(unit: Unit, cell: &Cell) -> String {
    match &cell.value {
        Ok(value) => unit.format(*value),
        Err(why) => why.clone(),
    }
}

fn to_markdown(report: &Report) -> String {
    let before = &report.machine_before;
    let after = &report.machine_after;
    let members: Vec<String> = report
        .runs
        .iter()
        .map(|run| run.members.to_string())
        .collect();
    let mut md = format!(
        "# etcd vs oxcd, scale `{}`, {} member(s)\n\n",
        format!("{:?}", report.scale).to_lowercase(),
        members.join(" and ")
    );
    let _ = write!(
        md,
        "Machine: {} cores, kernel {}; load average before `{}`, after `{}` ({} to {}).  \n\
         etcd: `{}`; oxcd: `{}`, commit `{}`.\n\n",
        before.cores,
        before.kernel,
        before.loadavg,
        after.loadavg,
        before.at,
        after.at,
        before.etcd_version,
        before.oxcd_version,
        before.oxcd_commit,
    );
    md.push_str(&method(report));
    for run in &report.runs {
        let _ = write!(md, "\n## {} member(s)\n\n", run.members);
        headline(&mut md, run);
        let _ = write!(
            md,
            "\n![throughput]({})\n\nBars are scaled per workload to the faster server.\n",
            throughput_plot_name(run.members)
        );
        latencies(&mut md, run);
        resources(&mut md, run);
        warnings(&mut md, run);
    }
    md
}

fn method(report: &Report) -> String {
    let preset = &report.preset;
    let length = match preset.duration {
        Some(duration) => format!("{} s each", duration.as_secs_f64()),
        None => format!(
            "{} requests per client (at least 200) each",
            preset.requests_per_client
        ),
    };
    format!(
        "How: every workload runs against a fresh etcd cluster and a fresh oxcd cluster of the \
         same size, on 127.0.0.1, with fresh data dirs and the same flags (fsync on, both \
         servers' default; --heartbeat-interval 100 --election-timeout 1000); the order \
         alternates per workload (etcd first for the first workload, oxcd first for the \
         next, …; the report.json `first` field says which). The load generator shares the \
         machine. Throughput workloads run {length}. Keys are 8 bytes, values 256 random bytes. \
         With 3 members every client connection is balanced over all members' endpoints (as \
         etcd's clients and kube-apiserver do), for both servers. Watch: {} streams × {} \
         watchers on one prefix, {} puts at {}/s; latency from put sent to event received, \
         RSS {WATCH_RSS_SETTLE:?} after the last watcher was created. Footprint: {} keys put once \
         each (in transactions of 100 puts, from 100 clients), then a {:.0} s settle, then RSS (all members together) and data \
         dir size (apparent size of all files, all members; no compaction or defrag for \
         either, since no key has history), then a snapshot through Maintenance.Snapshot \
         from member 1 (streamed to a synced file), then its restore with `etcdctl snapshot \
         restore` / `oxcdctl snapshot restore`{}, then restart to serving: SIGTERM to every \
         member, start again, time until a linearizable Get through member 1 succeeds. \
         Ratios are oxcd/etcd.\n",
        preset.watch_streams,
        preset.watchers_per_stream,
        preset.watch_puts,
        preset.watch_put_rate,
        preset.footprint_keys,
        preset.settle.as_secs_f64(),
        if report.oxcdctl {
            ""
        } else {
            " (oxcd's restore not measured: no --oxcdctl-bin)"
        },
    )
}

fn headline(md: &mut String, run: &Run) {
    md.push_str(
        "| workload | etcd | oxcd | ratio oxcd/etcd | p99 etcd / oxcd | target | met? |\n\
         |---|---:|---:|---:|---:|---|---|\n",
    );
    for row in &run.rows {
        let unit = row.metric.unit;
        let p99 = match (row.etcd.p99_us(), row.oxcd.p99_us()) {
            (Some(etcd), Some(oxcd)) => format!(
                "{:.2} / {:.2} ms",
                etcd as f64 / 1000.0,
                oxcd as f64 / 1000.0
            ),
            _ => "–".to_owned(),
        };
        let (target, met) = match &row.metric.target {
            Some(target) => (
                target.text(),
                match target.met(&row.etcd, &row.oxcd) {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "n/a",
                },
            ),
            None => ("–".to_owned(), "–"),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {p99} | {target} | {met} |",
            row.metric.label,
            shown(unit, &row.etcd),
            shown(unit, &row.oxcd),
            ratio(&row.etcd, &row.oxcd).map_or("n/a".to_owned(), |ratio| format!("{ratio:.2}")),
        );
    }
}

fn latencies(md: &mut String, run: &Run) {
    md.push_str("\n### Latency percentiles (ms)\n\n| workload | server | p50 | p90 | p99 | p99.9 | max |\n|---|---|---:|---:|---:|---:|---:|\n");
    let mut plots = String::new();
    for row in &run.rows {
        for (server, cell) in [("etcd", &row.etcd), ("oxcd", &row.oxcd)] {
            if let Some(latency_us) = &cell.latency_us {
                let values: Vec<String> = reported_values(latency_us)
                    .into_iter()
                    .map(|(_, micros)| format!("{:.3}", micros as f64 / 1000.0))
                    .collect();
                let _ = writeln!(
                    md,
                    "| {} | {server} | {} |",
                    row.metric.label,
                    values.join(" | ")
                );
            }
        }
        if row.etcd.latency_us.is_some() && row.oxcd.latency_us.is_some() {
            let _ = writeln!(
                plots,
                "![{}]({})",
                row.metric.label,
                latency_plot_name(run.members, &row.metric)
            );
        }
    }
    let _ = write!(md, "\nLatency CDFs (log x):\n\n{plots}");
}

fn resources(md: &mut String, run: &Run) {
    md.push_str(
        "\n### Resources\n\n| metric | etcd | oxcd | ratio oxcd/etcd |\n|---|---:|---:|---:|\n",
    );
    for row in run
        .rows
        .iter()
        .filter(|row| matches!(row.metric.unit, Unit::Bytes | Unit::Seconds))
    {
        let unit = row.metric.unit;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            row.metric.label,
            shown(unit, &row.etcd),
            shown(unit, &row.oxcd),
            ratio(&row.etcd, &row.oxcd).map_or("n/a".to_owned(), |ratio| format!("{ratio:.2}")),
        );
    }
}

fn warnings(md: &mut String, run: &Run) {
    let mut lines = String::new();
    for row in &run.rows {
        for (server, cell) in [("etcd", &row.etcd), ("oxcd", &row.oxcd)] {
            if let Some((count, first)) = &cell.errors {
                let _ = writeln!(
                    lines,
                    "- {server}, {}: {count} requests failed; first: {first}",
                    row.metric.label
                );
            }
        }
    }
    if !lines.is_empty() {
        let _ = write!(md, "\n### Errors\n\n{lines}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(value: f64, p99_us: Option<u64>) -> Cell {
        let latency_us = p99_us.map(|micros| {
            let mut histogram = crate::stats::new_latency_histogram();
            histogram.record(micros).unwrap();
            histogram
        });
        Cell {
            value: Ok(value),
            latency_us,
            details: serde_json::Value::Null,
            errors: None,
        }
    }

    #[test]
    fn throughput_targets_need_the_ratio_and_optionally_the_p99() {
        let target = Target::higher(1.5).with_p99_not_worse();
        assert_eq!(
            target.met(&cell(100.0, Some(900)), &cell(150.0, Some(900))),
            Some(true)
        );
        assert_eq!(
            target.met(&cell(100.0, Some(900)), &cell(149.0, Some(900))),
            Some(false)
        );
        assert_eq!(
            target.met(&cell(100.0, Some(900)), &cell(200.0, Some(2000))),
            Some(false)
        );
        assert_eq!(target.text(), "≥1.5x, p99 ≤ etcd");
    }

    #[test]
    fn resource_targets_are_upper_bounds_and_missing_figures_are_not_judged() {
        let target = Target::lower(0.5);
        assert_eq!(
            target.met(&cell(100.0, None), &cell(50.0, None)),
            Some(true)
        );
        assert_eq!(
            target.met(&cell(100.0, None), &cell(51.0, None)),
            Some(false)
        );
        let missing = Cell {
            value: Err("not supported".into()),
            ..cell(0.0, None)
        };
        assert_eq!(target.met(&cell(100.0, None), &missing), None);
    }

    #[test]
    fn units_format_their_values() {
        assert_eq!(Unit::Bytes.format(3.0 * MIB), "3.0 MiB");
        assert_eq!(Unit::OpsPerSec.format(1234.4), "1234 ops/s");
        assert!(!Unit::Seconds.higher_is_better());
    }
}
