//! Pictures of a finished run: a latency scatter plot, a throughput plot and an HTML timeline of
//! every operation, all with the nemesis's fault periods shaded so effects line up with causes.
//!
//! The output is hand-written SVG and HTML without scripts or external assets, so a report can be
//! archived with its run and opened anywhere. Operation functions and fault kinds are known here
//! only by their names, so workloads and faults added later show up without changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Display, Write as _};
use std::path::Path;

use anyhow::Context;

use crate::history::{Operation, Process, Status};
use crate::nemesis::{NemesisEvent, Phase};

const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_MILLI: f64 = 1e6;

/// The shortest latency the log scale shows; faster operations sit on its bottom edge.
const MIN_LATENCY_MS: f64 = 1e-3;

const STATUSES: [Status; 3] = [Status::Ok, Status::Fail, Status::Info];

/// Fault colours, kept clear of the status colours so shading never reads as an outcome.
const FAULT_COLOURS: [&str; 6] = [
    "#1f77b4", "#9467bd", "#8c564b", "#17becf", "#e377c2", "#7f7f7f",
];

/// Marker outlines relative to their centre (circle, square, triangle, diamond, inverted
/// triangle, plus), one per operation function.
const MARKERS: [&str; 6] = [
    "m-3 0a3 3 0 1 0 6 0a3 3 0 1 0-6 0z",
    "m-3-3h6v6h-6z",
    "m0-4l4 7h-8z",
    "m0-4l4 4-4 4-4-4z",
    "m-4-3h8l-4 7z",
    "m-1-4h2v3h3v2h-3v3h-2v-3h-3v-2h3z",
];

// Plot geometry: the plot area's edges; the margins hold fault labels, ticks, titles and the
// legend.
const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 800.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 370.0;

/// Width of a process's column in the timeline.
const COLUMN: f64 = 90.0;
/// Left margin of the timeline, for time labels and fault labels.
const GUTTER: f64 = 150.0;

/// Writes latency.svg, throughput.svg and timeline.html into `dir`.
pub fn write(dir: &Path, ops: &[Operation], nemesis: &[NemesisEvent]) -> anyhow::Result<()> {
    let run = Run::new(ops, nemesis);
    let latency = latency_svg(&run)?;
    let throughput = throughput_svg(&run)?;
    let timeline = timeline_html(&run, &latency, &throughput)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in [
        ("latency.svg", &latency),
        ("throughput.svg", &throughput),
        ("timeline.html", &timeline),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A fault in force from a nemesis start to its stop, or to the end of the run.
struct Fault {
    kind: String,
    members: Vec<String>,
    detail: Option<String>,
    start: u64,
    end: u64,
}

impl Fault {
    fn label(&self) -> String {
        if self.members.is_empty() {
            self.kind.clone()
        } else {
            format!("{} {}", self.kind, self.members.join(","))
        }
    }

    /// The label with how the targets were chosen and when, for tooltips.
    fn description(&self) -> String {
        let detail = self
            .detail
            .as_deref()
            .map(|detail| format!(" ({detail})"))
            .unwrap_or_default();
        format!(
            "{}{detail}: {:.3} s to {:.3} s",
            self.label(),
            secs(self.start),
            secs(self.end)
        )
    }
}

/// Pairs each start with the next stop of the same kind and members, in start order.
fn fault_periods(nemesis: &[NemesisEvent], end: u64) -> Vec<Fault> {
    let mut open: Vec<Fault> = Vec::new();
    let mut faults = Vec::new();
    for event in nemesis {
        // Exit events carry no fault: they are not periods.
        let Some(kind) = event.fault.map(|kind| kind.to_string()) else {
            continue;
        };
        match event.phase {
            Phase::Start => open.push(Fault {
                kind,
                members: event.members.clone(),
                detail: event.detail.clone(),
                start: event.time,
                end,
            }),
            Phase::Stop => {
                let started = open
                    .iter()
                    .position(|f| f.kind == kind && f.members == event.members);
                if let Some(i) = started {
                    let mut fault = open.remove(i);
                    fault.end = event.time.max(fault.start);
                    faults.push(fault);
                }
            }
            Phase::Exit => {}
        }
    }
    faults.extend(open);
    faults.sort_by_key(|f| f.start);
    faults
}

/// What every picture needs to know about the run.
struct Run<'a> {
    ops: &'a [Operation],
    faults: Vec<Fault>,
    /// Distinct fault kinds, sorted; a kind's position picks its colour.
    kinds: Vec<String>,
    /// Distinct operation functions, sorted; a function's position picks its marker.
    fs: Vec<String>,
    /// Nanoseconds from the start to the last thing that happened.
    end: u64,
}

impl<'a> Run<'a> {
    fn new(ops: &'a [Operation], nemesis: &[NemesisEvent]) -> Self {
        let end = ops
            .iter()
            .flat_map(|op| [op.invoke_time, op.complete_time.unwrap_or(0)])
            .chain(nemesis.iter().map(|event| event.time))
            .max()
            .unwrap_or(0);
        let faults = fault_periods(nemesis, end);
        Run {
            ops,
            kinds: sorted_distinct(faults.iter().map(|f| f.kind.clone())),
            fs: sorted_distinct(ops.iter().map(|op| op.f.to_string())),
            faults,
            end,
        }
    }

    /// Whole seconds covering the run, at least one so that scales never collapse.
    fn seconds(&self) -> u64 {
        self.end.div_ceil(NANOS_PER_SEC).max(1)
    }

    fn fault_colour(&self, kind: &str) -> &'static str {
        let i = self.kinds.iter().position(|k| k == kind).unwrap_or(0);
        FAULT_COLOURS[i % FAULT_COLOURS.len()]
    }

    fn marker(&self, op: &Operation) -> &'static str {
        let f = op.f.to_string();
        marker(self.fs.iter().position(|g| *g == f).unwrap_or(0))
    }
}

fn sorted_distinct(items: impl Iterator<Item = String>) -> Vec<String> {
    items.collect::<BTreeSet<_>>().into_iter().collect()
}

fn marker(i: usize) -> &'static str {
    MARKERS[i % MARKERS.len()]
}

fn secs(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_SEC as f64
}

fn latency_ms(op: &Operation) -> Option<f64> {
    let complete = op.complete_time?;
    Some(complete.saturating_sub(op.invoke_time) as f64 / NANOS_PER_MILLI)
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Fail => "fail",
        Status::Info => "info",
    }
}

fn status_colour(status: Status) -> &'static str {
    match status {
        Status::Ok => "#2ca02c",
        Status::Fail => "#d62728",
        Status::Info => "#e0a800",
    }
}

/// Maps values on one axis to a fraction of the plot area's extent.
enum Scale {
    /// From zero to `max`, a whole number of `step`s.
    Linear { max: f64, step: f64 },
    /// From `min` to `max`, both powers of ten.
    Log { min: f64, max: f64 },
}

impl Scale {
    /// From zero up to at least `max`, ending on a round tick.
    fn linear(max: f64) -> Self {
        let max = if max.is_finite() && max > 0.0 {
            max
        } else {
            1.0
        };
        let step = round_step(max / 8.0);
        Scale::Linear {
            max: (max / step).ceil() * step,
            step,
        }
    }

    /// Whole decades covering `min..=max`, which must be positive.
    fn log(min: f64, max: f64) -> Self {
        let min = 10f64.powi(min.log10().floor() as i32);
        let max = 10f64.powi(max.log10().ceil() as i32).max(min * 10.0);
        Scale::Log { min, max }
    }

    /// Where `v` falls: 0 at the start of the axis, 1 at its end; values outside are clamped.
    fn fraction(&self, v: f64) -> f64 {
        let fraction = match *self {
            Scale::Linear { max, .. } => v / max,
            Scale::Log { min, max } => (v.max(min) / min).log10() / (max / min).log10(),
        };
        fraction.clamp(0.0, 1.0)
    }

    fn ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Linear { max, step } => (0u32..)
                .map(|i| f64::from(i) * step)
                .take_while(|&v| v <= max + step / 2.0)
                .collect(),
            Scale::Log { min, max } => std::iter::successors(Some(min), |v| Some(v * 10.0))
                .take_while(|&v| v <= max * 1.5)
                .collect(),
        }
    }
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `x`, which must be positive.
fn round_step(x: f64) -> f64 {
    let decade = 10f64.powi(x.log10().floor() as i32);
    [1.0, 2.0, 5.0]
        .into_iter()
        .map(|m| m * decade)
        // The tolerance keeps float error from skipping an exact fit such as 0.2 for 0.2.
        .find(|&step| step >= x * (1.0 - 1e-9))
        .unwrap_or(10.0 * decade)
}

/// A number rounded for a tick label: no float noise such as `0.30000000000000004`.
fn format_number(v: f64) -> String {
    format!("{}", (v * 1000.0).round() / 1000.0)
}

fn format_millis(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", format_number(ms / 1000.0))
    } else if ms >= 1.0 {
        format!("{} ms", format_number(ms))
    } else {
        format!("{} µs", format_number(ms * 1000.0))
    }
}

/// The vertical axis of a plot.
struct Axis {
    scale: Scale,
    title: &'static str,
    label: fn(f64) -> String,
}

/// What a legend entry shows next to its label.
enum Swatch {
    /// A status colour.
    Fill(&'static str),
    /// A line of this colour.
    Line(&'static str),
    /// A marker outline.
    Marker(&'static str),
    /// A fault's shading.
    Band(&'static str),
}

struct Key {
    label: String,
    swatch: Swatch,
}

/// A plot against seconds since the start, with the run's fault periods shaded behind its marks.
struct Plot<'a> {
    run: &'a Run<'a>,
    x: Scale,
    y: Axis,
}

impl<'a> Plot<'a> {
    fn new(run: &'a Run<'a>, y: Axis) -> Self {
        Plot {
            run,
            x: Scale::linear(run.seconds() as f64),
            y,
        }
    }

    fn x(&self, secs: f64) -> f64 {
        LEFT + self.x.fraction(secs) * (RIGHT - LEFT)
    }

    fn y(&self, v: f64) -> f64 {
        BOTTOM - self.y.scale.fraction(v) * (BOTTOM - TOP)
    }

    /// The whole SVG document, with `marks` drawing the data over the axes and shading.
    fn render(
        &self,
        title: &str,
        keys: Vec<Key>,
        marks: impl FnOnce(&mut String) -> fmt::Result,
    ) -> Result<String, fmt::Error> {
        let mut svg = String::new();
        writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        )?;
        writeln!(
            svg,
            r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{}" y="18" text-anchor="middle" font-size="15">{}</text>"#,
            (LEFT + RIGHT) / 2.0,
            Escaped(title)
        )?;
        self.draw_faults(&mut svg)?;
        self.draw_axes(&mut svg)?;
        marks(&mut svg)?;
        self.draw_legend(&mut svg, keys)?;
        svg.push_str("</svg>\n");
        Ok(svg)
    }

    fn draw_faults(&self, svg: &mut String) -> fmt::Result {
        for (i, fault) in self.run.faults.iter().enumerate() {
            let colour = self.run.fault_colour(&fault.kind);
            let x = self.x(secs(fault.start));
            // Even a fault stopped at once stays visible.
            let width = (self.x(secs(fault.end)) - x).max(1.0);
            // Neighbouring faults' labels alternate between two rows to overlap less.
            let label_y = if i % 2 == 0 { TOP - 5.0 } else { TOP - 17.0 };
            writeln!(
                svg,
                r#"<rect class="fault" x="{x:.1}" y="{TOP}" width="{width:.1}" height="{}" fill="{colour}" fill-opacity="0.15"><title>{}</title></rect><text x="{x:.1}" y="{label_y}" font-size="10" fill="{colour}">{}</text>"#,
                BOTTOM - TOP,
                Escaped(fault.description()),
                Escaped(fault.label())
            )?;
        }
        Ok(())
    }

    fn draw_axes(&self, svg: &mut String) -> fmt::Result {
        for v in self.x.ticks() {
            let x = self.x(v);
            writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{BOTTOM}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                BOTTOM + 16.0,
                format_number(v)
            )?;
        }
        for v in self.y.scale.ticks() {
            let y = self.y(v);
            writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT - 6.0,
                y + 4.0,
                Escaped((self.y.label)(v))
            )?;
        }
        let middle = (TOP + BOTTOM) / 2.0;
        writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#444"/><text x="{}" y="{}" text-anchor="middle">time since start (s)</text><text x="16" y="{middle}" text-anchor="middle" transform="rotate(-90 16 {middle})">{}</text>"##,
            RIGHT - LEFT,
            BOTTOM - TOP,
            (LEFT + RIGHT) / 2.0,
            BOTTOM + 38.0,
            Escaped(self.y.title)
        )
    }

    /// Draws `keys`, then one entry per fault kind.
    fn draw_legend(&self, svg: &mut String, keys: Vec<Key>) -> fmt::Result {
        let faults = self.run.kinds.iter().map(|kind| Key {
            label: format!("{kind} (fault)"),
            swatch: Swatch::Band(self.run.fault_colour(kind)),
        });
        let x = RIGHT + 20.0;
        for (i, key) in keys.into_iter().chain(faults).enumerate() {
            let y = TOP + 18.0 * i as f64;
            match key.swatch {
                Swatch::Fill(colour) => write!(
                    svg,
                    r#"<rect x="{x}" y="{y}" width="10" height="10" fill="{colour}"/>"#
                ),
                Swatch::Band(colour) => write!(
                    svg,
                    r#"<rect x="{x}" y="{y}" width="10" height="10" fill="{colour}" fill-opacity="0.3" stroke="{colour}"/>"#
                ),
                Swatch::Line(colour) => write!(
                    svg,
                    r#"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="2"/>"#,
                    y + 5.0,
                    x + 12.0,
                    y + 5.0
                ),
                Swatch::Marker(shape) => write!(
                    svg,
                    r##"<path d="M{} {}{shape}" fill="#555"/>"##,
                    x + 5.0,
                    y + 5.0
                ),
            }?;
            writeln!(
                svg,
                r#"<text x="{}" y="{}">{}</text>"#,
                x + 18.0,
                y + 9.0,
                Escaped(&key.label)
            )?;
        }
        Ok(())
    }
}

fn status_keys(swatch: fn(&'static str) -> Swatch) -> Vec<Key> {
    STATUSES
        .iter()
        .map(|&status| Key {
            label: status_name(status).to_owned(),
            swatch: swatch(status_colour(status)),
        })
        .collect()
}

fn latency_svg(run: &Run) -> Result<String, fmt::Error> {
    let (min, max) = run
        .ops
        .iter()
        .filter_map(latency_ms)
        .fold((f64::INFINITY, 0f64), |(min, max), l| {
            (min.min(l), max.max(l))
        });
    let scale = if min.is_finite() {
        Scale::log(min.max(MIN_LATENCY_MS), max.max(MIN_LATENCY_MS))
    } else {
        Scale::log(1.0, 1000.0)
    };
    let plot = Plot::new(
        run,
        Axis {
            scale,
            title: "latency (never completed: top edge)",
            label: format_millis,
        },
    );
    let mut keys = status_keys(Swatch::Fill);
    keys.extend(run.fs.iter().enumerate().map(|(i, f)| Key {
        label: f.clone(),
        swatch: Swatch::Marker(marker(i)),
    }));
    plot.render("Latency by invoke time", keys, |svg| {
        // Ok first: the rarer failures and unknowns are drawn over it.
        for status in STATUSES {
            write!(
                svg,
                r#"<g fill="{}" fill-opacity="0.6">"#,
                status_colour(status)
            )?;
            for op in run.ops.iter().filter(|op| op.status == status) {
                let x = plot.x(secs(op.invoke_time));
                let y = latency_ms(op).map_or(TOP, |latency| plot.y(latency));
                write!(svg, r#"<path d="M{x:.1} {y:.1}{}"/>"#, run.marker(op))?;
            }
            svg.push_str("</g>\n");
        }
        Ok(())
    })
}

/// Operations of `status` completed in each second of the run.
fn completions_per_second(run: &Run, status: Status) -> Vec<u32> {
    let mut counts = vec![0; usize::try_from(run.seconds()).unwrap_or(usize::MAX)];
    let last = counts.len() - 1;
    for op in run.ops.iter().filter(|op| op.status == status) {
        if let Some(complete) = op.complete_time {
            // The run's last instant can fall exactly on the end of the final second.
            let second = usize::try_from(complete / NANOS_PER_SEC).map_or(last, |s| s.min(last));
            counts[second] += 1;
        }
    }
    counts
}

fn throughput_svg(run: &Run) -> Result<String, fmt::Error> {
    let series: Vec<(Status, Vec<u32>)> = STATUSES
        .iter()
        .map(|&status| (status, completions_per_second(run, status)))
        .collect();
    let max = series
        .iter()
        .flat_map(|(_, counts)| counts)
        .max()
        .copied()
        .unwrap_or(0);
    let plot = Plot::new(
        run,
        Axis {
            scale: Scale::linear(f64::from(max)),
            title: "operations per second, by completion",
            label: format_number,
        },
    );
    plot.render("Throughput", status_keys(Swatch::Line), |svg| {
        for (status, counts) in &series {
            write!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points=""#,
                status_colour(*status)
            )?;
            // Steps, not a line through bucket centres: each count covers its whole second.
            for (second, &count) in counts.iter().enumerate() {
                let y = plot.y(f64::from(count));
                let second = second as f64;
                write!(
                    svg,
                    "{:.1},{y:.1} {:.1},{y:.1} ",
                    plot.x(second),
                    plot.x(second + 1.0)
                )?;
            }
            svg.push_str("\"/>\n");
        }
        Ok(())
    })
}

/// The text of an operation's tooltip in the timeline.
struct Tooltip<'a>(&'a Operation);

impl Display for Tooltip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.0;
        write!(
            f,
            "process {}: {} {} {}\n{}: {}\ninvoked {:.6} s",
            op.process,
            op.f,
            op.key,
            op.value,
            status_name(op.status),
            op.result,
            secs(op.invoke_time)
        )?;
        match (op.complete_time, latency_ms(op)) {
            (Some(complete), Some(latency)) => {
                write!(f, ", completed {:.6} s ({latency:.3} ms)", secs(complete))?
            }
            _ => f.write_str(", never completed")?,
        }
        match &op.error {
            Some(error) => write!(f, "\nerror: {error}"),
            None => Ok(()),
        }
    }
}

const TIMELINE_CSS: &str = "\
body{font-family:sans-serif;margin:16px}
svg{display:block;margin-bottom:8px}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 14px;vertical-align:middle}
.heads{position:sticky;top:0;height:22px;background:#fff;border-bottom:1px solid #ccc;z-index:3}
.heads div{position:absolute;width:90px;text-align:center;font-weight:bold}
.tl{position:relative}
.t{position:absolute;left:0;right:0;border-top:1px solid #eee;font-size:11px;color:#666}
.band{position:absolute;left:0;right:0;padding-left:45px;font-size:11px}
.col{position:absolute;top:0;bottom:0}
.col>div{position:absolute;left:4px;width:82px;min-height:2px;box-sizing:border-box;\
border:1px solid rgba(0,0,0,.3);border-radius:2px}
.nc{opacity:.45}
";

fn timeline_html(run: &Run, latency: &str, throughput: &str) -> Result<String, fmt::Error> {
    let mut html = String::new();
    write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Run timeline</title><style>\n{TIMELINE_CSS}"
    )?;
    for status in STATUSES {
        writeln!(
            html,
            ".{}{{background:{}}}",
            status_name(status),
            status_colour(status)
        )?;
    }
    html.push_str("</style></head><body>\n");
    write_summary(&mut html, run)?;
    html.push_str(latency);
    html.push_str(throughput);
    html.push_str("<h2>Timeline</h2>\n");
    write_timeline_key(&mut html, run)?;
    Timeline::new(run).write(&mut html)?;
    html.push_str("</body></html>\n");
    Ok(html)
}

/// One column per process with a box per operation, time running downwards, as in Jepsen.
struct Timeline<'a> {
    run: &'a Run<'a>,
    by_process: BTreeMap<Process, Vec<&'a Operation>>,
    px_per_sec: f64,
}

impl<'a> Timeline<'a> {
    fn new(run: &'a Run<'a>) -> Self {
        let mut by_process: BTreeMap<Process, Vec<&Operation>> = BTreeMap::new();
        for op in run.ops {
            by_process.entry(op.process).or_default().push(op);
        }
        let busiest = by_process.values().map(Vec::len).max().unwrap_or(0);
        // A few pixels for an average operation of the busiest process, within what browsers
        // lay out comfortably.
        let height = (4.0 * busiest as f64).clamp(600.0, 200_000.0);
        Timeline {
            run,
            by_process,
            px_per_sec: height / run.seconds() as f64,
        }
    }

    fn y(&self, nanos: u64) -> f64 {
        secs(nanos) * self.px_per_sec
    }

    fn column_left(i: usize) -> f64 {
        GUTTER + COLUMN * i as f64
    }

    fn write(&self, html: &mut String) -> fmt::Result {
        let width = Self::column_left(self.by_process.len());
        writeln!(html, r#"<div><div class="heads" style="width:{width}px">"#)?;
        for (i, process) in self.by_process.keys().enumerate() {
            write!(
                html,
                r#"<div style="left:{}px">p{process}</div>"#,
                Self::column_left(i)
            )?;
        }
        writeln!(
            html,
            r#"</div><div class="tl" style="width:{width}px;height:{:.0}px">"#,
            self.run.seconds() as f64 * self.px_per_sec
        )?;
        self.write_ticks(html)?;
        self.write_faults(html)?;
        self.write_columns(html)?;
        html.push_str("</div></div>\n");
        Ok(())
    }

    fn write_ticks(&self, html: &mut String) -> fmt::Result {
        let seconds = Scale::Linear {
            max: self.run.seconds() as f64,
            // Labels at least 60 pixels apart.
            step: round_step(60.0 / self.px_per_sec),
        };
        for t in seconds.ticks() {
            writeln!(
                html,
                r#"<div class="t" style="top:{:.1}px">{} s</div>"#,
                t * self.px_per_sec,
                format_number(t)
            )?;
        }
        Ok(())
    }

    fn write_faults(&self, html: &mut String) -> fmt::Result {
        for fault in &self.run.faults {
            let colour = self.run.fault_colour(&fault.kind);
            let top = self.y(fault.start);
            // The colour with a low alpha: a translucent band under full-colour text.
            writeln!(
                html,
                r#"<div class="band" style="top:{top:.1}px;height:{:.1}px;background:{colour}26;color:{colour}" title="{}">{}</div>"#,
                (self.y(fault.end) - top).max(2.0),
                Escaped(fault.description()),
                Escaped(fault.label())
            )?;
        }
        Ok(())
    }

    fn write_columns(&self, html: &mut String) -> fmt::Result {
        for (i, ops) in self.by_process.values().enumerate() {
            writeln!(
                html,
                r#"<div class="col" style="left:{}px">"#,
                Self::column_left(i)
            )?;
            for op in ops {
                let top = self.y(op.invoke_time);
                // An operation that never completed may take effect until the end of the run.
                let (end, faded) = match op.complete_time {
                    Some(complete) => (complete, ""),
                    None => (self.run.end, " nc"),
                };
                writeln!(
                    html,
                    r#"<div class="{}{faded}" style="top:{top:.1}px;height:{:.1}px" title="{}"></div>"#,
                    status_name(op.status),
                    self.y(end) - top,
                    Escaped(Tooltip(op))
                )?;
            }
            html.push_str("</div>\n");
        }
        Ok(())
    }
}

fn write_summary(html: &mut String, run: &Run) -> fmt::Result {
    let count = |status| run.ops.iter().filter(|op| op.status == status).count();
    let never = run
        .ops
        .iter()
        .filter(|op| op.complete_time.is_none())
        .count();
    writeln!(
        html,
        "<h1>Run report</h1>\n<p>{} operations over {:.1} s: {} ok, {} fail, {} info \
         ({never} never completed); {} fault periods.</p>",
        run.ops.len(),
        secs(run.end),
        count(Status::Ok),
        count(Status::Fail),
        count(Status::Info),
        run.faults.len()
    )
}

fn write_timeline_key(html: &mut String, run: &Run) -> fmt::Result {
    html.push_str(r#"<p class="key">"#);
    for status in STATUSES {
        write!(html, r#"<span class="{0}"></span>{0}"#, status_name(status))?;
    }
    html.push_str(r#"<span class="info nc"></span>never completed"#);
    for kind in &run.kinds {
        let colour = run.fault_colour(kind);
        write!(
            html,
            r#"<span style="background:{colour}40"></span>{} (fault)"#,
            Escaped(kind)
        )?;
    }
    writeln!(
        html,
        ". Hover over an operation or a fault for details; time runs downwards.</p>"
    )
}

/// Displays its contents with the characters special to XML and HTML escaped.
struct Escaped<T>(T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaper(f), "{}", self.0)
    }
}

struct Escaper<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            self.0.write_str(&rest[..i])?;
            self.0.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Value, F};
    use crate::nemesis::FaultKind;

    const MS: u64 = 1_000_000;

    fn op(process: Process, f: F, status: Status, invoke: u64, complete: Option<u64>) -> Operation {
        Operation {
            process,
            f,
            key: "x".to_owned(),
            value: Value::Int(1),
            result: Value::Int(1),
            status,
            invoke_time: invoke,
            complete_time: complete,
            error: None,
        }
    }

    fn nemesis(
        time: u64,
        phase: Phase,
        fault: Option<FaultKind>,
        members: &[&str],
    ) -> NemesisEvent {
        NemesisEvent {
            time,
            phase,
            fault,
            members: members.iter().map(|&m| m.to_owned()).collect(),
            detail: Some("one".to_owned()),
            cut: Vec::new(),
            leader: None,
        }
    }

    struct Files {
        latency: String,
        throughput: String,
        timeline: String,
    }

    /// Writes a report into a fresh directory and reads it back.
    fn render(name: &str, ops: &[Operation], events: &[NemesisEvent]) -> Files {
        let dir =
            std::env::temp_dir().join(format!("oxcd-jepsen-report-{}-{name}", std::process::id()));
        write(&dir, ops, events).unwrap();
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
        let files = Files {
            latency: read("latency.svg"),
            throughput: read("throughput.svg"),
            timeline: read("timeline.html"),
        };
        std::fs::remove_dir_all(&dir).unwrap();
        for text in [&files.latency, &files.throughput, &files.timeline] {
            assert!(!text.contains("NaN"), "{text}");
        }
        for svg in [&files.latency, &files.throughput] {
            assert!(svg.starts_with("<svg"), "{svg}");
            assert!(svg.ends_with("</svg>\n"), "{svg}");
        }
        files
    }

    fn boxes(html: &str) -> usize {
        html.matches(r#"title="process "#).count()
    }

    #[test]
    fn a_run_with_faults_is_drawn_with_one_band_per_fault_period() {
        let mut weird = op(2, F::Cas, Status::Fail, 900 * MS, Some(950 * MS));
        weird.key = "<&>".to_owned();
        weird.error = Some("compare \"failed\"".to_owned());
        let ops = vec![
            op(0, F::Write, Status::Ok, 10 * MS, Some(15 * MS)),
            op(1, F::Read, Status::Ok, 20 * MS, Some(20 * MS)),
            op(0, F::Read, Status::Info, 1_500 * MS, Some(2_500 * MS)),
            op(1, F::Write, Status::Info, 3_000 * MS, None),
            weird,
        ];
        let events = vec![
            nemesis(100 * MS, Phase::Start, Some(FaultKind::Kill), &["n1"]),
            nemesis(200 * MS, Phase::Exit, None, &["n2"]),
            nemesis(400 * MS, Phase::Stop, Some(FaultKind::Kill), &["n1"]),
            nemesis(1_000 * MS, Phase::Start, Some(FaultKind::Partition), &[]),
            nemesis(2_000 * MS, Phase::Stop, Some(FaultKind::Partition), &[]),
            // Never stopped: shaded to the end of the run.
            nemesis(2_800 * MS, Phase::Start, Some(FaultKind::Pause), &["n3"]),
        ];
        let files = render("faults", &ops, &events);
        for svg in [&files.latency, &files.throughput] {
            assert_eq!(svg.matches(r#"<rect class="fault""#).count(), 3, "{svg}");
            assert!(svg.contains(">kill n1</text>"), "{svg}");
            assert!(svg.contains(">partition</text>"), "{svg}");
            assert!(svg.contains("pause n3 (one): 2.800 s to 3.000 s"), "{svg}");
        }
        assert_eq!(files.latency.matches("<path d=\"M").count(), ops.len() + 3);
        let html = &files.timeline;
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches("<svg").count(), 2);
        assert_eq!(boxes(html), ops.len());
        assert_eq!(html.matches(r#"<div class="band""#).count(), 3);
        assert!(html.contains("cas &lt;&amp;&gt; 1"), "{html}");
        assert!(html.contains("error: compare &quot;failed&quot;"), "{html}");
        assert!(!html.contains("<&>"));
        assert_eq!(html.matches(r#"<div class="info nc""#).count(), 1);
    }

    #[test]
    fn empty_inputs_give_empty_plots() {
        let files = render("empty", &[], &[]);
        assert!(!files.latency.contains("class=\"fault\""));
        assert!(!files.latency.contains("<path d=\"M"));
        assert_eq!(boxes(&files.timeline), 0);
    }

    #[test]
    fn everything_at_time_zero_still_scales() {
        let ops = vec![
            op(0, F::Write, Status::Ok, 0, Some(0)),
            op(1, F::Read, Status::Info, 0, None),
        ];
        let events = vec![
            nemesis(0, Phase::Start, Some(FaultKind::Kill), &["n1"]),
            nemesis(0, Phase::Stop, Some(FaultKind::Kill), &["n1"]),
        ];
        let files = render("zero", &ops, &events);
        assert_eq!(
            files.throughput.matches(r#"<rect class="fault""#).count(),
            1
        );
        assert_eq!(boxes(&files.timeline), 2);
    }

    #[test]
    fn starts_pair_with_the_next_matching_stop() {
        let events = vec![
            nemesis(1, Phase::Start, Some(FaultKind::Kill), &["n1"]),
            nemesis(2, Phase::Start, Some(FaultKind::Pause), &["n2"]),
            nemesis(3, Phase::Stop, Some(FaultKind::Kill), &["n2"]),
            nemesis(4, Phase::Stop, Some(FaultKind::Pause), &["n2"]),
            nemesis(5, Phase::Stop, Some(FaultKind::Kill), &["n1"]),
            nemesis(6, Phase::Start, Some(FaultKind::Kill), &["n1"]),
        ];
        let periods: Vec<_> = fault_periods(&events, 9)
            .into_iter()
            .map(|f| (f.label(), f.start, f.end))
            .collect();
        assert_eq!(
            periods,
            [
                ("kill n1".to_owned(), 1, 5),
                ("pause n2".to_owned(), 2, 4),
                ("kill n1".to_owned(), 6, 9),
            ]
        );
    }

    #[test]
    fn scales_have_round_ticks() {
        let Scale::Linear { max, step } = Scale::linear(31.0) else {
            unreachable!()
        };
        assert_eq!((max, step), (35.0, 5.0));
        assert_eq!(Scale::linear(0.0).ticks().last(), Some(&1.0));
        let log = Scale::log(0.3, 1200.0);
        let labels: Vec<_> = log.ticks().into_iter().map(format_millis).collect();
        assert_eq!(labels, ["100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s"]);
        assert_eq!(log.fraction(1e9), 1.0);
        assert_eq!(log.fraction(0.0), 0.0);
    }

    #[test]
    fn the_timeline_stays_compact() {
        let ops: Vec<_> = (0..20_000u64)
            .map(|i| {
                let mut op = op(i % 20, F::Cas, Status::Info, i * MS, Some(i * MS + 7 * MS));
                op.value = Value::List(vec![Value::Int(12), Value::Int(34)]);
                op.error = Some("deadline exceeded".to_owned());
                op
            })
            .collect();
        let files = render("compact", &ops, &[]);
        assert_eq!(boxes(&files.timeline), ops.len());
        let per_op = files.timeline.len() / ops.len();
        assert!(per_op < 300, "{per_op} bytes per operation");
    }
}
