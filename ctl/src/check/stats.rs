//! etcd's pkg/report statistics over the requests of a check: latencies of the successful ones,
//! failures counted by message.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How one request went.
pub struct Outcome {
    pub took: Duration,
    pub error: Option<String>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Stats {
    /// Successful requests per second of the whole run.
    pub rps: f64,
    /// Seconds.
    pub slowest: f64,
    /// Seconds; the population standard deviation, as report computes it.
    pub stddev: f64,
    /// Error message -> how many requests failed with it, in message order.
    pub errors: BTreeMap<String, usize>,
}

/// Collects outcomes as they come; `started` is when the run began (report's `Total` counts
/// from there).
pub struct Collector {
    started: Instant,
    latencies: Vec<f64>,
    errors: BTreeMap<String, usize>,
}

impl Collector {
    pub fn start() -> Collector {
        Collector {
            started: Instant::now(),
            latencies: Vec::new(),
            errors: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, outcome: Outcome) {
        match outcome.error {
            Some(message) => *self.errors.entry(message).or_default() += 1,
            None => self.latencies.push(outcome.took.as_secs_f64()),
        }
    }

    pub fn finish(self) -> Stats {
        stats(&self.latencies, self.started.elapsed(), self.errors)
    }
}

fn stats(latencies: &[f64], total: Duration, errors: BTreeMap<String, usize>) -> Stats {
    let n = latencies.len() as f64;
    let average = latencies.iter().sum::<f64>() / n;
    let variance = latencies.iter().map(|l| (l - average).powi(2)).sum::<f64>() / n;
    Stats {
        rps: n / total.as_secs_f64(),
        slowest: latencies.iter().copied().fold(0.0, f64::max),
        // Go's NaN for no requests prints as such and fails every comparison; 0 passes them,
        // so an empty run is left to the throughput check to fail.
        stddev: if variance.is_nan() {
            0.0
        } else {
            variance.sqrt()
        },
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_statistics() {
        let s = stats(&[0.1, 0.3], Duration::from_secs(2), BTreeMap::new());
        assert_eq!(s.rps, 1.0);
        assert_eq!(s.slowest, 0.3);
        assert!((s.stddev - 0.1).abs() < 1e-12);
    }

    #[test]
    fn failures_are_counted_not_timed() {
        let mut c = Collector::start();
        c.add(Outcome {
            took: Duration::from_secs(9),
            error: Some("etcdserver: request timed out".into()),
        });
        c.add(Outcome {
            took: Duration::from_millis(1),
            error: None,
        });
        let s = c.finish();
        assert_eq!(s.slowest, 0.001);
        assert_eq!(s.errors["etcdserver: request timed out"], 1);
    }
}
