//! Latency histograms and the number formatting every report shares.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds; anything slower than a minute is clamped to it.
const MAX_TRACKED_LATENCY_US: u64 = 60_000_000;
/// Three significant digits: 0.1% relative error on every reported percentile.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// The percentiles every report shows, besides the maximum.
pub const REPORTED_QUANTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

pub const MIB: f64 = 1024.0 * 1024.0;

/// An empty microsecond histogram; all of them share bounds, so any two merge.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Adds `other` into `into`.
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) {
    into.add(other)
        .expect("histograms with identical bounds always merge");
}

/// Whole microseconds, saturating.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct it is given, which is plain data.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let timeval = |time: libc::timeval| {
        Duration::from_secs(time.tv_sec as u64) + Duration::from_micros(time.tv_usec as u64)
    };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn us_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Microseconds shown as milliseconds with microsecond resolution, e.g. `1.234 ms`.
pub fn format_ms(micros: u64) -> String {
    format!("{:.3} ms", us_to_ms(micros))
}

/// The reported percentiles and the maximum, one indented line each.
pub fn latency_text(latency_us: &Histogram<u64>) -> String {
    let mut text = String::new();
    for (name, value) in reported_values(latency_us) {
        text.push_str(&format!("  {name:<6} {}\n", format_ms(value)));
    }
    text
}

/// The reported percentiles and the maximum as a JSON object, in milliseconds.
pub fn latency_json(latency_us: &Histogram<u64>) -> serde_json::Value {
    reported_values(latency_us)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), us_to_ms(value).into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The reported percentiles, then the maximum, in microseconds.
pub fn reported_values(latency_us: &Histogram<u64>) -> Vec<(&'static str, u64)> {
    REPORTED_QUANTILES
        .iter()
        .map(|&(name, quantile)| (name, latency_us.value_at_quantile(quantile)))
        .chain([("max", latency_us.max())])
        .collect()
}

/// The middle value (the mean of the two middle ones for an even count); zero for none.
pub fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        len if len % 2 == 1 => sorted[len / 2],
        len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_print_as_milliseconds_with_three_decimals() {
        assert_eq!(format_ms(0), "0.000 ms");
        assert_eq!(format_ms(1_234), "1.234 ms");
        assert_eq!(format_ms(60_000_000), "60000.000 ms");
    }

    #[test]
    fn reports_list_the_percentiles_then_the_maximum() {
        let mut latency_us = new_latency_histogram();
        for micros in 1..=1000 {
            latency_us.record(micros).unwrap();
        }
        let json = latency_json(&latency_us);
        assert_eq!(json["p50"], 0.5);
        assert_eq!(json["p99"], 0.99);
        assert_eq!(json["max"], 1.0);
        let text = latency_text(&latency_us);
        assert!(text.starts_with("  p50    0.500 ms\n"), "{text}");
        assert!(text.ends_with("  max    1.000 ms\n"), "{text}");
    }

    #[test]
    fn process_cpu_time_grows_with_work() {
        let before = process_cpu_time();
        let deadline = std::time::Instant::now() + Duration::from_millis(20);
        while std::time::Instant::now() < deadline {}
        assert!(process_cpu_time() > before);
    }

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_two_middle_ones() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[]), Duration::ZERO);
        assert_eq!(median(&[ms(9), ms(1), ms(5)]), ms(5));
        assert_eq!(median(&[ms(4), ms(1), ms(2), ms(9)]), ms(3));
    }
}
