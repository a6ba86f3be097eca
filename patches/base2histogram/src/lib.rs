//! Log-linear histograms with the API openraft's runtime statistics use (see README.md for why
//! this crate replaces the published one).
//!
//! Values below 8 are counted exactly; above, every power of two is split into four equal
//! buckets, so a reported percentile is within 12.5% of a recorded value. Bucket bounds are
//! computed from the value's bit pattern rather than looked up.

use std::fmt;
use std::marker::PhantomData;

/// Values below this are their own bucket.
const EXACT_BELOW: u64 = 8;
/// Each power of two at or above `EXACT_BELOW` is split into `1 << SUB_BITS` buckets.
const SUB_BITS: u32 = 2;
const SUBS: usize = 1 << SUB_BITS;
/// Index of the bucket holding `u64::MAX`.
const LAST_BUCKET: usize = EXACT_BELOW as usize + (63 - 3) * SUBS + (SUBS - 1);

fn bucket_of(value: u64) -> usize {
    if value < EXACT_BELOW {
        return value as usize;
    }
    let top_bit = 63 - value.leading_zeros();
    let sub = ((value >> (top_bit - SUB_BITS)) as usize) & (SUBS - 1);
    EXACT_BELOW as usize + (top_bit as usize - 3) * SUBS + sub
}

/// The smallest value counted in `bucket`.
fn lower_bound(bucket: usize) -> u64 {
    if bucket < EXACT_BELOW as usize {
        return bucket as u64;
    }
    let above = bucket - EXACT_BELOW as usize;
    let top_bit = (above / SUBS + 3) as u32;
    ((SUBS + above % SUBS) as u64) << (top_bit - SUB_BITS)
}

/// The largest value counted in `bucket`.
fn upper_bound(bucket: usize) -> u64 {
    if bucket == LAST_BUCKET {
        u64::MAX
    } else {
        lower_bound(bucket + 1) - 1
    }
}

/// The value a percentile falling in `bucket` reports: exact below 8, the middle above.
fn representative(bucket: usize) -> u64 {
    let low = lower_bound(bucket);
    low + (upper_bound(bucket) - low) / 2
}

/// Counts of recorded values. `T` is accepted for source compatibility with base2histogram,
/// whose histograms can carry per-period data; openraft never attaches any.
pub struct Histogram<T = ()> {
    /// `counts[b]` is the number of values recorded in bucket `b`; grown to the largest bucket used.
    counts: Vec<u64>,
    samples: u64,
    data: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Histogram<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("samples", &self.samples)
            .field("p50", &self.percentile(0.5))
            .field("p99", &self.percentile(0.99))
            .finish()
    }
}

impl<T> Clone for Histogram<T> {
    fn clone(&self) -> Self {
        Self {
            counts: self.counts.clone(),
            samples: self.samples,
            data: PhantomData,
        }
    }
}

impl<T> PartialEq for Histogram<T> {
    fn eq(&self, other: &Self) -> bool {
        let common = self.counts.len().min(other.counts.len());
        let zero_beyond = |counts: &[u64]| counts[common..].iter().all(|&c| c == 0);
        self.counts[..common] == other.counts[..common]
            && zero_beyond(&self.counts)
            && zero_beyond(&other.counts)
    }
}

impl<T> Eq for Histogram<T> {}

impl<T> Default for Histogram<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Histogram<T> {
    pub fn new() -> Self {
        Self {
            counts: Vec::new(),
            samples: 0,
            data: PhantomData,
        }
    }

    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    pub fn record_n(&mut self, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        let bucket = bucket_of(value);
        if bucket >= self.counts.len() {
            self.counts.resize(bucket + 1, 0);
        }
        self.counts[bucket] = self.counts[bucket].saturating_add(count);
        self.samples = self.samples.saturating_add(count);
    }

    /// Number of values recorded.
    pub fn total(&self) -> u64 {
        self.samples
    }

    /// The value below which a `fraction` (0.0 to 1.0) of the recorded values fall; 0 when empty.
    pub fn percentile(&self, fraction: f64) -> u64 {
        if self.samples == 0 {
            return 0;
        }
        let rank =
            ((fraction.clamp(0.0, 1.0) * self.samples as f64).ceil() as u64).clamp(1, self.samples);
        let mut seen = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(count);
            if seen >= rank {
                return representative(bucket);
            }
        }
        representative(self.counts.len() - 1)
    }

    pub fn percentile_stats(&self) -> PercentileStats {
        PercentileStats {
            samples: self.samples,
            p0_1: self.percentile(0.001),
            p1: self.percentile(0.01),
            p5: self.percentile(0.05),
            p10: self.percentile(0.10),
            p50: self.percentile(0.50),
            p90: self.percentile(0.90),
            p99: self.percentile(0.99),
            p99_9: self.percentile(0.999),
        }
    }

    /// Non-empty buckets as (smallest value, largest value, count), smallest first.
    fn occupied(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &count)| count > 0)
            .map(|(bucket, &count)| (lower_bound(bucket), upper_bound(bucket), count))
    }
}

/// A histogram's sample count and percentiles, in the unit its values were recorded in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PercentileStats {
    pub samples: u64,
    pub p0_1: u64,
    pub p1: u64,
    pub p5: u64,
    pub p10: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
}

/// The form openraft's runtime-statistics report prints (and its own tests expect).
impl fmt::Display for PercentileStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[samples: {}, P0.1: {}, P1: {}, P5: {}, P10: {}, P50: {}, P90: {}, P99: {}, P99.9: {}]",
            self.samples, self.p0_1, self.p1, self.p5, self.p10, self.p50, self.p90, self.p99, self.p99_9
        )
    }
}

/// Named histograms drawn one under another as text bars.
#[derive(Debug, Clone)]
pub struct AsciiChart<T = ()> {
    series: Vec<(String, Histogram<T>)>,
}

impl<T> Default for AsciiChart<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> AsciiChart<T> {
    pub fn new() -> Self {
        Self { series: Vec::new() }
    }

    pub fn add(mut self, name: &str, histogram: Histogram<T>) -> Self {
        self.series.push((name.to_string(), histogram));
        self
    }

    /// One line per non-empty bucket of each series, with a bar scaled to that series' fullest.
    pub fn detailed(&self) -> DetailedChart<'_, T> {
        DetailedChart { chart: self }
    }
}

impl<T> fmt::Display for AsciiChart<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.detailed().fmt(f)
    }
}

pub struct DetailedChart<'a, T> {
    chart: &'a AsciiChart<T>,
}

const BAR_WIDTH: u64 = 40;

impl<T> fmt::Display for DetailedChart<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, histogram) in &self.chart.series {
            writeln!(f, "{name} (n={})", histogram.total())?;
            let fullest = histogram
                .occupied()
                .map(|(_, _, count)| count)
                .max()
                .unwrap_or(0);
            for (low, high, count) in histogram.occupied() {
                let bar = (count.saturating_mul(BAR_WIDTH)).div_ceil(fullest) as usize;
                writeln!(
                    f,
                    "  {low:>20} ..= {high:<20} {count:>10} {}",
                    "#".repeat(bar)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_whole_range_in_order() {
        assert_eq!(lower_bound(0), 0);
        for bucket in 0..LAST_BUCKET {
            assert_eq!(
                upper_bound(bucket) + 1,
                lower_bound(bucket + 1),
                "bucket {bucket}"
            );
            assert_eq!(bucket_of(lower_bound(bucket)), bucket);
            assert_eq!(bucket_of(upper_bound(bucket)), bucket);
        }
        assert_eq!(bucket_of(u64::MAX), LAST_BUCKET);
        assert_eq!(upper_bound(LAST_BUCKET), u64::MAX);
    }

    #[test]
    fn a_bucket_spans_at_most_an_eighth_of_a_power_of_two_above_the_exact_values() {
        for bucket in EXACT_BELOW as usize..=LAST_BUCKET {
            let (low, high) = (lower_bound(bucket), upper_bound(bucket));
            assert!((high - low) <= low / 4, "bucket {bucket}: {low}..={high}");
        }
    }

    #[test]
    fn small_values_are_exact_and_large_ones_close() {
        let mut histogram: Histogram = Histogram::new();
        for value in 1..=5 {
            histogram.record(value);
        }
        let stats = histogram.percentile_stats();
        assert_eq!(
            (stats.samples, stats.p50, stats.p99, stats.p0_1),
            (5, 3, 5, 1)
        );
        assert_eq!(
            stats.to_string(),
            "[samples: 5, P0.1: 1, P1: 1, P5: 1, P10: 1, P50: 3, P90: 5, P99: 5, P99.9: 5]"
        );

        let mut latencies: Histogram = Histogram::new();
        for micros in 1..=10_000 {
            latencies.record(micros);
        }
        let p90 = latencies.percentile(0.9) as f64;
        assert!((p90 - 9_000.0).abs() / 9_000.0 < 0.125, "p90 {p90}");
        assert_eq!(latencies.percentile(0.0), 1);
    }

    #[test]
    fn record_n_counts_many_and_an_empty_histogram_reports_zeroes() {
        let empty: Histogram = Histogram::default();
        assert_eq!(empty.percentile_stats(), PercentileStats::default());

        let mut once: Histogram = Histogram::new();
        let mut batched: Histogram = Histogram::new();
        for _ in 0..3 {
            once.record(700);
        }
        batched.record_n(700, 3);
        batched.record_n(9, 0);
        assert_eq!(once, batched);
        assert_eq!(batched.total(), 3);
        assert_ne!(batched, empty);
    }

    #[test]
    fn the_chart_draws_each_series_with_its_fullest_bucket_full_width() {
        let mut fast: Histogram = Histogram::new();
        fast.record_n(3, 10);
        fast.record_n(100, 5);
        let chart = AsciiChart::new()
            .add("fast", fast)
            .add("idle", Histogram::new());
        let text = chart.detailed().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "fast (n=15)");
        assert!(lines[1].ends_with(&"#".repeat(40)) && lines[1].contains(" 3 ..= 3 "));
        assert!(
            lines[2].ends_with(&format!(" {}", "#".repeat(20)))
                && lines[2].contains(" 96 ..= 111 ")
        );
        assert_eq!(lines[3], "idle (n=0)");
        assert_eq!(lines.len(), 4);
    }
}
