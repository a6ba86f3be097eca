//! Latency histograms from kube-apiserver's /metrics (Prometheus text format): the buckets of
//! one family summed over the series a filter keeps, the difference between two scrapes, and
//! quantiles interpolated within a bucket as Prometheus' `histogram_quantile` does.

use std::collections::BTreeMap;

/// A series' labels, by name.
pub type Labels = BTreeMap<String, String>;

/// Cumulative counts by upper bound (`le`), +Inf last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    /// `{family}_bucket` in `text`, summed over the series for which `keep` holds.
    pub fn scrape(text: &str, family: &str, keep: impl Fn(&Labels) -> bool) -> Buckets {
        let name = format!("{family}_bucket");
        let mut sums: Vec<(f64, f64)> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name.as_str()) else {
                continue;
            };
            let Some((labels, value)) = parse_series(rest) else {
                continue;
            };
            let Some(bound) = labels.get("le").and_then(|le| parse_float(le)) else {
                continue;
            };
            if !keep(&labels) {
                continue;
            }
            match sums.iter_mut().find(|(le, _)| *le == bound) {
                Some((_, count)) => *count += value,
                None => sums.push((bound, value)),
            }
        }
        sums.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(sums)
    }

    /// What was counted after `earlier` (a scrape of the same series before this one).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, count)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(bound, _)| *bound == le)
                        .map_or(0.0, |(_, count)| *count);
                    (le, (count - before).max(0.0))
                })
                .collect(),
        )
    }

    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, count)| *count)
    }

    /// The `q` quantile in seconds, or `None` with no observations. Within a bucket the
    /// observations are taken as spread evenly; above the highest finite bound, that bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &self.0 {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let in_bucket = count - below;
                let fraction = if in_bucket > 0.0 {
                    (rank - below) / in_bucket
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * fraction);
            }
            (lower, below) = (le, count);
        }
        Some(lower)
    }
}

/// The sum of the samples of gauge or counter `name` in `text` whose labels `keep` accepts;
/// `None` when there is none.
pub fn sample_sum(text: &str, name: &str, keep: impl Fn(&Labels) -> bool) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let sample = match rest.chars().next() {
            Some('{') => parse_series(rest),
            Some(' ') => rest
                .split_whitespace()
                .next()
                .and_then(parse_float)
                .map(|value| (Labels::new(), value)),
            _ => None,
        };
        if let Some((labels, value)) = sample {
            if keep(&labels) {
                *sum.get_or_insert(0.0) += value;
            }
        }
    }
    sum
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        _ => text.parse().ok(),
    }
}

/// `{a="b",le="0.1"} 42` (what follows a series' name) as its labels and value.
fn parse_series(text: &str) -> Option<(Labels, f64)> {
    let text = text.strip_prefix('{')?;
    let mut labels = Labels::new();
    let mut chars = text.char_indices().peekable();
    let close = loop {
        let (start, c) = chars.next()?;
        if c == '}' {
            break start;
        }
        if c == ',' {
            continue;
        }
        let mut name = String::from(c);
        loop {
            match chars.next()? {
                (_, '=') => break,
                (_, c) => name.push(c),
            }
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                (_, '"') => break,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        }
        labels.insert(name, value);
    };
    let value = text[close + 1..].split_whitespace().next()?;
    Some((labels, parse_float(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP apiserver_request_duration_seconds [STABLE] Response latency
# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_bucket{component="apiserver",resource="pods",verb="POST",le="0.005"} 10
apiserver_request_duration_seconds_bucket{component="apiserver",resource="pods",verb="POST",le="0.01"} 30
apiserver_request_duration_seconds_bucket{component="apiserver",resource="pods",verb="POST",le="+Inf"} 40
apiserver_request_duration_seconds_sum{component="apiserver",resource="pods",verb="POST"} 1.5
apiserver_request_duration_seconds_bucket{component="apiserver",resource="pods",verb="GET",le="0.005"} 1000
apiserver_request_duration_seconds_bucket{component="apiserver",resource="pods",verb="GET",le="0.01"} 1000
apiserver_request_duration_seconds_bucket{component="apiserver",resource="pods",verb="GET",le="+Inf"} 1000
apiserver_request_duration_seconds_bucket{component="apiserver",resource="a\"b,c",verb="PUT",le="0.01"} 2e+01
apiserver_request_duration_seconds_bucket{component="apiserver",resource="a\"b,c",verb="PUT",le="+Inf"} 20
"#;

    fn writes(labels: &Labels) -> bool {
        matches!(labels["verb"].as_str(), "POST" | "PUT")
    }

    #[test]
    fn series_the_filter_keeps_are_summed_by_bound() {
        let buckets = Buckets::scrape(SCRAPE, "apiserver_request_duration_seconds", writes);
        assert_eq!(
            buckets,
            Buckets(vec![(0.005, 10.0), (0.01, 50.0), (f64::INFINITY, 60.0)])
        );
        assert_eq!(buckets.count(), 60.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_and_stop_at_the_last_finite_bound() {
        let buckets = Buckets::scrape(SCRAPE, "apiserver_request_duration_seconds", writes);
        // Rank 30 of 60 is the 20th of the 40 observations in (0.005, 0.01]: half way.
        assert!((buckets.quantile(0.5).unwrap() - 0.0075).abs() < 1e-12);
        assert!((buckets.quantile(0.1).unwrap() - 0.003).abs() < 1e-12);
        assert_eq!(buckets.quantile(0.99), Some(0.01));
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn a_later_scrape_minus_an_earlier_one_counts_what_happened_between() {
        let before = Buckets(vec![(0.005, 10.0), (f64::INFINITY, 10.0)]);
        let after = Buckets(vec![(0.005, 15.0), (f64::INFINITY, 25.0)]);
        assert_eq!(
            after.since(&before),
            Buckets(vec![(0.005, 5.0), (f64::INFINITY, 15.0)])
        );
        assert_eq!(after.since(&Buckets::default()), after);
    }

    #[test]
    fn samples_of_one_name_are_summed_with_or_without_labels() {
        let text = "go_memstats_heap_inuse_bytes 1.5e+06\n\
                    go_memstats_heap_inuse_bytes_total 7\n\
                    oxcd_memory_bytes{holder=\"rocksdb_memtables\"} 100\n\
                    oxcd_memory_bytes{holder=\"allocator_allocated\"} 20\n";
        assert_eq!(
            sample_sum(text, "go_memstats_heap_inuse_bytes", |_| true),
            Some(1.5e6)
        );
        let holder = |name: &'static str| {
            move |labels: &Labels| labels.get("holder").map(String::as_str) == Some(name)
        };
        assert_eq!(
            sample_sum(text, "oxcd_memory_bytes", holder("rocksdb_memtables")),
            Some(100.0)
        );
        assert_eq!(sample_sum(text, "oxcd_memory_bytes", |_| true), Some(120.0));
        assert_eq!(
            sample_sum(text, "oxcd_memory_bytes", holder("nothing")),
            None
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "x_bucket{le=\"0.1\" 3\nx_bucket{le=\"oops\"} 3\nx_bucket{le=\"0.1\"} 4\n";
        assert_eq!(
            Buckets::scrape(text, "x", |_| true),
            Buckets(vec![(0.1, 4.0)])
        );
    }
}
