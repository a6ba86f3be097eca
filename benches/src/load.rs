//! The put load loop and its statistics: many client tasks share a few gRPC connections and
//! draw put tickets from one counter until the requested total is reached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, KvClient};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::task::JoinSet;

use crate::stats::{latency_json, latency_text, merge, micros, new_latency_histogram};

/// The shape of one put run; the CLI flags of `oxcd-bench put` map onto it one to one.
#[derive(clap::Args, Clone, Debug)]
pub struct PutWorkload {
    /// Concurrent client tasks, each with at most one put in flight.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub clients: u64,
    /// gRPC connections shared by the clients (client i uses connection i % conns).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub conns: u64,
    /// Puts to issue over all clients together.
    #[arg(long, default_value_t = 20_000)]
    pub total: u64,
    /// Exact length of every key in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_size: u64,
    /// Exact length of every value in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: u64,
    /// Number of distinct keys; keys are numbers in 0..key-space.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space: u64,
    /// Write keys 0, 1, 2, ... (wrapping at key-space) instead of picking them at random.
    #[arg(long)]
    pub sequential_keys: bool,
}

/// Turns a put's ticket into its key: always exactly `key_size` bytes, always inside the space.
#[derive(Clone, Debug)]
pub struct KeyGenerator {
    key_size: usize,
    key_space: u64,
    sequential: bool,
}

impl KeyGenerator {
    pub fn new(key_size: u64, key_space: u64, sequential: bool) -> Result<Self> {
        // A key space with more numbers than key_size decimal digits can spell would need longer
        // keys; refuse it rather than silently emit keys of the wrong size.
        let spellable = u32::try_from(key_size)
            .ok()
            .and_then(|digits| 10u64.checked_pow(digits));
        if spellable.is_some_and(|spellable| key_space > spellable) {
            bail!("--key-space {key_space} does not fit in {key_size}-digit keys");
        }
        Ok(Self {
            key_size: usize::try_from(key_size).context("--key-size is too large")?,
            key_space,
            sequential,
        })
    }

    /// `ticket` is the put's position in the whole run, which is what makes sequential keys
    /// sequential across clients.
    pub fn key(&self, ticket: u64, rng: &mut impl Rng) -> Vec<u8> {
        let index = if self.sequential {
            ticket % self.key_space
        } else {
            rng.gen_range(0..self.key_space)
        };
        format!("{index:0width$}", width = self.key_size).into_bytes()
    }
}

/// What one client task saw.
struct ClientOutcome {
    latency_us: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// The result of a put run.
#[derive(Debug)]
pub struct PutReport {
    /// Puts attempted, successful or not.
    pub total: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub wall: Duration,
    /// Latency of the successful puts, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl PutReport {
    /// Successful puts per second of wall time.
    pub fn throughput(&self) -> f64 {
        (self.total - self.errors) as f64 / self.wall.as_secs_f64()
    }

    pub fn p99_us(&self) -> u64 {
        self.latency_us.value_at_quantile(0.99)
    }

    /// The human-readable report printed by `oxcd-bench put`.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "total:      {}\nerrors:     {}\nwall time:  {:.3} s\nthroughput: {:.1} ops/s\nlatency:\n",
            self.total,
            self.errors,
            self.wall.as_secs_f64(),
            self.throughput()
        );
        text.push_str(&latency_text(&self.latency_us));
        if let Some(error) = &self.first_error {
            text.push_str(&format!("first error: {error}\n"));
        }
        text
    }

    /// The machine-readable report printed by `oxcd-bench put --json`; latencies in ms.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "total": self.total,
            "errors": self.errors,
            "first_error": self.first_error,
            "wall_s": self.wall.as_secs_f64(),
            "ops_per_s": self.throughput(),
            "latency_ms": latency_json(&self.latency_us),
        })
    }
}

/// Runs `workload` against `endpoints` and returns once all its puts have finished.
pub async fn run_puts(endpoints: &[String], workload: &PutWorkload) -> Result<PutReport> {
    let keys = KeyGenerator::new(
        workload.key_size,
        workload.key_space,
        workload.sequential_keys,
    )?;
    let val_size = usize::try_from(workload.val_size).context("--val-size is too large")?;

    let mut connections = Vec::new();
    for _ in 0..workload.conns {
        connections.push(connect(endpoints).await?);
    }

    let next_ticket = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for client_index in 0..workload.clients {
        let connection = &connections[(client_index % workload.conns) as usize];
        clients.spawn(run_client(
            connection.kv_client(),
            keys.clone(),
            val_size,
            Arc::clone(&next_ticket),
            workload.total,
        ));
    }

    let mut report = PutReport {
        total: workload.total,
        errors: 0,
        first_error: None,
        wall: Duration::ZERO,
        latency_us: new_latency_histogram(),
    };
    while let Some(outcome) = clients.join_next().await {
        let outcome = outcome.context("a client task panicked")?;
        merge(&mut report.latency_us, &outcome.latency_us);
        report.errors += outcome.errors;
        report.first_error = report.first_error.or(outcome.first_error);
    }
    report.wall = started.elapsed();
    Ok(report)
}

/// A new gRPC connection to `endpoints`, already established. Channels connect lazily: one Get
/// keeps the TCP and HTTP/2 handshakes out of the first requests' latencies, and fails fast on an
/// unreachable endpoint.
pub async fn connect(endpoints: &[String]) -> Result<Client> {
    let mut client = Client::connect(endpoints, None)
        .await
        .with_context(|| format!("cannot connect to {endpoints:?}"))?;
    client
        .get("oxcd-bench-warmup", None)
        .await
        .with_context(|| format!("warm-up Get against {endpoints:?} failed"))?;
    Ok(client)
}

async fn run_client(
    mut kv: KvClient,
    keys: KeyGenerator,
    val_size: usize,
    next_ticket: Arc<AtomicU64>,
    total: u64,
) -> ClientOutcome {
    let mut rng = StdRng::from_entropy();
    let mut outcome = ClientOutcome {
        latency_us: new_latency_histogram(),
        errors: 0,
        first_error: None,
    };
    loop {
        let ticket = next_ticket.fetch_add(1, Ordering::Relaxed);
        if ticket >= total {
            return outcome;
        }
        let key = keys.key(ticket, &mut rng);
        // Fresh random bytes per put, so neither server can shrink the data set by compressing
        // repeated values: both store what a real, varied workload would send.
        let mut value = vec![0u8; val_size];
        rng.fill_bytes(&mut value);

        let sent = Instant::now();
        match kv.put(key, value, None).await {
            Ok(_) => outcome.latency_us.saturating_record(micros(sent.elapsed())),
            Err(error) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_have_exactly_key_size_bytes_and_stay_in_the_key_space() {
        let keys = KeyGenerator::new(8, 1000, false).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        for ticket in 0..10_000 {
            let key = keys.key(ticket, &mut rng);
            assert_eq!(key.len(), 8);
            let index: u64 = std::str::from_utf8(&key).unwrap().parse().unwrap();
            assert!(index < 1000, "key {index} is outside the key space");
        }
    }

    #[test]
    fn sequential_keys_follow_the_ticket_and_wrap_at_the_key_space() {
        let keys = KeyGenerator::new(4, 3, true).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let generated: Vec<Vec<u8>> = (0..4).map(|ticket| keys.key(ticket, &mut rng)).collect();
        assert_eq!(generated, [b"0000", b"0001", b"0002", b"0000"]);
    }

    #[test]
    fn a_key_space_wider_than_the_key_size_can_spell_is_rejected() {
        assert!(KeyGenerator::new(2, 100, false).is_ok());
        assert!(KeyGenerator::new(2, 101, false).is_err());
        // 10^25 overflows u64, so any key space fits.
        assert!(KeyGenerator::new(25, u64::MAX, false).is_ok());
    }

    #[test]
    fn reported_percentiles_come_from_the_histogram() {
        let mut latency_us = new_latency_histogram();
        for micros in 1..=1000 {
            latency_us.record(micros).unwrap();
        }
        let report = PutReport {
            total: 1000,
            errors: 0,
            first_error: None,
            wall: Duration::from_secs(2),
            latency_us,
        };
        assert_eq!(report.p99_us(), 990);
        assert_eq!(report.throughput(), 500.0);
        let json = report.to_json();
        assert_eq!(json["latency_ms"]["p50"], 0.5);
        assert_eq!(json["latency_ms"]["max"], 1.0);
    }
}
