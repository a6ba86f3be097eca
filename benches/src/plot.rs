//! Hand-written SVG for the comparison report: paired bars (etcd vs oxcd per workload) and
//! latency CDFs on a logarithmic axis. Plain SVG 1.1, no scripts, so the files render on GitHub.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const ETCD_COLOUR: &str = "#4e79a7";
const OXCD_COLOUR: &str = "#e15759";
const FONT: &str = r#"font-family="sans-serif" font-size="12""#;

/// One server's latencies, as a line in a CDF.
pub struct Series<'a> {
    name: &'static str,
    colour: &'static str,
    latency_us: &'a Histogram<u64>,
}

impl<'a> Series<'a> {
    pub fn etcd(latency_us: &'a Histogram<u64>) -> Self {
        Self {
            name: "etcd",
            colour: ETCD_COLOUR,
            latency_us,
        }
    }

    pub fn oxcd(latency_us: &'a Histogram<u64>) -> Self {
        Self {
            name: "oxcd",
            colour: OXCD_COLOUR,
            latency_us,
        }
    }

    /// (latency in ms, fraction of requests at or below it), one point per recorded value.
    fn points(&self) -> Vec<(f64, f64)> {
        self.latency_us
            .iter_recorded()
            .map(|step| {
                (
                    step.value_iterated_to().max(1) as f64 / 1000.0,
                    step.quantile_iterated_to(),
                )
            })
            .collect()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bar pairs, one pair per (label, etcd, oxcd); each pair is scaled to its larger
/// value, since the workloads' throughputs differ by orders of magnitude. A missing value is
/// drawn as no bar and labelled "n/a".
pub fn paired_bars(title: &str, bars: &[(String, Option<f64>, Option<f64>)]) -> String {
    const LABEL_WIDTH: f64 = 300.0;
    const BAR_WIDTH: f64 = 360.0;
    const BAR_HEIGHT: f64 = 14.0;
    const PAIR_HEIGHT: f64 = 2.0 * BAR_HEIGHT + 12.0;
    const TOP: f64 = 50.0;
    let width = LABEL_WIDTH + BAR_WIDTH + 120.0;
    let height = TOP + PAIR_HEIGHT * bars.len() as f64 + 10.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT}>
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="14" font-weight="bold">{}</text>
<rect x="{LABEL_WIDTH}" y="30" width="10" height="10" fill="{ETCD_COLOUR}"/><text x="{}" y="39">etcd</text>
<rect x="{}" y="30" width="10" height="10" fill="{OXCD_COLOUR}"/><text x="{}" y="39">oxcd</text>
"#,
        escape(title),
        LABEL_WIDTH + 14.0,
        LABEL_WIDTH + 60.0,
        LABEL_WIDTH + 74.0,
    );
    for (index, (label, etcd, oxcd)) in bars.iter().enumerate() {
        let top = TOP + PAIR_HEIGHT * index as f64;
        let largest = etcd.unwrap_or(0.0).max(oxcd.unwrap_or(0.0));
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL_WIDTH - 8.0,
            top + BAR_HEIGHT + 4.0,
            escape(label)
        );
        for (row, value, colour) in [(0.0, etcd, ETCD_COLOUR), (1.0, oxcd, OXCD_COLOUR)] {
            let y = top + row * BAR_HEIGHT;
            let length = match value {
                Some(value) if largest > 0.0 => value / largest * BAR_WIDTH,
                _ => 0.0,
            };
            let shown = value.map_or("n/a".to_owned(), |value| format!("{value:.0}"));
            let _ = writeln!(
                svg,
                r#"<rect x="{LABEL_WIDTH}" y="{y}" width="{length:.1}" height="{}" fill="{colour}"/><text x="{:.1}" y="{}">{shown}</text>"#,
                BAR_HEIGHT - 2.0,
                LABEL_WIDTH + length + 4.0,
                y + BAR_HEIGHT - 3.0,
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Cumulative distribution of each series' latencies: x is the latency in ms on a log axis, y the
/// fraction of requests answered within it.
pub fn latency_cdf(title: &str, series: &[Series]) -> String {
    const WIDTH: f64 = 640.0;
    const HEIGHT: f64 = 360.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    let lines: Vec<(&Series, Vec<(f64, f64)>)> = series
        .iter()
        .map(|series| (series, series.points()))
        .collect();
    let all_ms = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|point| point.0));
    let (min_ms, max_ms) = all_ms.fold((f64::MAX, f64::MIN), |(low, high), ms| {
        (low.min(ms), high.max(ms))
    });
    // Whole decades around the data, so the ticks are 0.01, 0.1, 1, 10, ... ms.
    let (low_decade, high_decade) = if min_ms <= max_ms {
        (
            min_ms.log10().floor(),
            max_ms.log10().ceil().max(min_ms.log10().floor() + 1.0),
        )
    } else {
        (-1.0, 2.0)
    };
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let x = |ms: f64| LEFT + (ms.log10() - low_decade) / (high_decade - low_decade) * plot_width;
    let y = |fraction: f64| TOP + (1.0 - fraction) * plot_height;

    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" {FONT}>
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="14" font-weight="bold">{}</text>
<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#999"/>
<text x="{}" y="{}" text-anchor="middle">latency (ms, log scale)</text>
<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">fraction of requests</text>
"##,
        escape(title),
        LEFT + plot_width / 2.0,
        HEIGHT - 10.0,
        TOP + plot_height / 2.0,
        TOP + plot_height / 2.0,
    );
    for decade in (low_decade as i32)..=(high_decade as i32) {
        let ms = 10f64.powi(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#ddd"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            x(ms),
            TOP + plot_height,
            TOP + plot_height + 16.0,
            ms
        );
    }
    for fraction in [0.0, 0.25, 0.5, 0.75, 0.9, 1.0] {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{fraction}</text>"##,
            y(fraction),
            LEFT + plot_width,
            LEFT - 4.0,
            y(fraction) + 4.0,
        );
    }
    for (index, (series, points)) in lines.iter().enumerate() {
        // Points closer than a pixel to the last one drawn add bytes, not detail.
        let mut path: Vec<String> = Vec::new();
        let mut last = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for (index, &(ms, fraction)) in points.iter().enumerate() {
            let point = (x(ms), y(fraction));
            let final_point = index + 1 == points.len();
            if final_point || (point.0 - last.0).abs() >= 1.0 || (point.1 - last.1).abs() >= 1.0 {
                path.push(format!("{:.1},{:.1}", point.0, point.1));
                last = point;
            }
        }
        let legend_y = TOP + 16.0 + 16.0 * index as f64;
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{0}" stroke-width="2" points="{1}"/><rect x="{2}" y="{3}" width="10" height="10" fill="{0}"/><text x="{4}" y="{5}">{6}</text>"#,
            series.colour,
            path.join(" "),
            LEFT + 10.0,
            legend_y - 9.0,
            LEFT + 24.0,
            legend_y,
            series.name,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_each_pair_to_its_larger_value_and_mark_missing_ones() {
        let svg = paired_bars(
            "t <1>",
            &[
                ("put".into(), Some(100.0), Some(50.0)),
                ("get".into(), None, Some(7.0)),
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(
            svg.contains(r#"width="360.0""#),
            "the larger bar fills the width"
        );
        assert!(
            svg.contains(r#"width="180.0""#),
            "the smaller bar is half as long"
        );
        assert!(svg.contains(">n/a<"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn a_cdf_has_one_line_per_series_ending_at_one() {
        let mut etcd = crate::stats::new_latency_histogram();
        let mut oxcd = crate::stats::new_latency_histogram();
        for micros in [100, 200, 5_000] {
            etcd.record(micros).unwrap();
            oxcd.record(micros / 2).unwrap();
        }
        let points = Series::etcd(&etcd).points();
        assert_eq!(points.last().unwrap().1, 1.0);
        assert_eq!(points.first().unwrap().0, 0.1);
        let svg = latency_cdf("cdf", &[Series::etcd(&etcd), Series::oxcd(&oxcd)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">etcd<") && svg.contains(">oxcd<"));
    }
}
