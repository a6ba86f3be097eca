//! The request-issuing loop every load workload shares, and the put workload on top of it: many
//! client tasks share a few gRPC connections and draw tickets from one schedule until the
//! requested total (or duration) is reached, optionally paced to a global rate.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, KvClient};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::index;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::connection::Endpoints;
use crate::stats::{format_ms, latency_json, latency_text, merge, micros, new_latency_histogram};

/// How much load to offer, whatever each request is; every workload flattens it into its flags.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadShape {
    /// Concurrent client tasks, each with at most one request in flight.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub clients: u64,
    /// gRPC connections shared by the clients (client i uses connection i % conns).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub conns: u64,
    /// Requests to issue over all clients together (ignored when --duration is given).
    #[arg(long, default_value_t = 20_000)]
    pub total: u64,
    /// Issue requests for this many seconds instead of a fixed total.
    #[arg(long, value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Requests per second over all clients together; 0 issues them as fast as the clients can.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub rate: f64,
    /// List the requests slower than this many milliseconds, with the wall-clock time each was
    /// sent, to line a latency spike up with the server's logs.
    #[arg(long = "slow-ms", value_parser = parse_millis)]
    pub slow: Option<Duration>,
}

impl LoadShape {
    /// `total` requests as fast as `clients` can issue them.
    pub fn unpaced(clients: u64, conns: u64, total: u64) -> Self {
        Self {
            clients,
            conns,
            total,
            duration: None,
            rate: 0.0,
            slow: None,
        }
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("`{text}` is not a positive number of seconds"))
}

fn parse_millis(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|millis| Duration::try_from_secs_f64(millis / 1000.0).ok())
        .ok_or_else(|| format!("`{text}` is not a number of milliseconds"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|rate| rate.is_finite() && *rate >= 0.0)
        .ok_or_else(|| format!("`{text}` is not a rate (requests per second, 0 or more)"))
}

/// The size and number of the keys a KV workload touches.
#[derive(clap::Args, Clone, Debug)]
pub struct KeyShape {
    /// Exact length of every key in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_size: u64,
    /// Number of distinct keys; keys are numbers in 0..key-space.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space: u64,
}

/// The shape of one put run; the CLI flags of `oxcd-bench put` map onto it one to one.
#[derive(clap::Args, Clone, Debug)]
pub struct PutWorkload {
    #[command(flatten)]
    pub load: LoadShape,
    #[command(flatten)]
    pub keys: KeyShape,
    /// Exact length of every value in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: u64,
    /// Write keys 0, 1, 2, ... (wrapping at key-space) instead of picking them at random.
    #[arg(long)]
    pub sequential_keys: bool,
}

/// Turns a request's ticket into its key: always exactly `key_size` bytes, always inside the space.
#[derive(Clone, Debug)]
pub struct KeyGenerator {
    key_size: usize,
    key_space: u64,
    sequential: bool,
}

impl KeyGenerator {
    pub fn new(shape: &KeyShape, sequential: bool) -> Result<Self> {
        let KeyShape {
            key_size,
            key_space,
        } = *shape;
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

    pub fn key_size(&self) -> usize {
        self.key_size
    }

    pub fn key_space(&self) -> u64 {
        self.key_space
    }

    /// `ticket` is the request's position in the whole run, which is what makes sequential keys
    /// sequential across clients.
    pub fn key(&self, ticket: u64, rng: &mut impl Rng) -> Vec<u8> {
        let index = if self.sequential {
            ticket % self.key_space
        } else {
            rng.gen_range(0..self.key_space)
        };
        self.key_at(index)
    }

    /// `count` different random keys; `count` must not exceed the key space.
    pub fn distinct_keys(&self, count: usize, rng: &mut impl Rng) -> Vec<Vec<u8>> {
        // The index sampler takes a usize space; a key space beyond it is sampled from its start.
        let space = usize::try_from(self.key_space).unwrap_or(usize::MAX);
        index::sample(rng, space, count)
            .into_iter()
            .map(|index| self.key_at(index as u64))
            .collect()
    }

    /// The key numbered `index`.
    pub fn key_at(&self, index: u64) -> Vec<u8> {
        format!("{index:0width$}", width = self.key_size).into_bytes()
    }
}

/// Fresh random bytes per write, so no server can shrink the data set by compressing repeated
/// values: each stores what a real, varied workload would send.
pub fn random_value(size: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut value = vec![0u8; size];
    rng.fill_bytes(&mut value);
    value
}

/// What one request of a workload is. Each client task owns one, so per-client state (a
/// keep-alive stream, say) needs no locking.
pub trait Requester: Send + 'static {
    /// Issues request number `ticket` of the run and waits for its response.
    fn issue(&mut self, ticket: u64) -> impl Future<Output = Result<()>> + Send;
}

/// Puts one key per request.
pub struct PutRequester {
    pub kv: KvClient,
    pub keys: KeyGenerator,
    pub val_size: usize,
    pub rng: StdRng,
}

impl Requester for PutRequester {
    async fn issue(&mut self, ticket: u64) -> Result<()> {
        let key = self.keys.key(ticket, &mut self.rng);
        let value = random_value(self.val_size, &mut self.rng);
        self.kv.put(key, value, None).await?;
        Ok(())
    }
}

/// Runs the put `workload` against `endpoints` and returns once all its puts have finished.
pub async fn run_puts(endpoints: &Endpoints, workload: &PutWorkload) -> Result<LoadReport> {
    let keys = KeyGenerator::new(&workload.keys, workload.sequential_keys)?;
    let val_size = usize::try_from(workload.val_size).context("--val-size is too large")?;
    run_load(endpoints, &workload.load, |connection, _| {
        let requester = PutRequester {
            kv: connection.kv_client(),
            keys: keys.clone(),
            val_size,
            rng: StdRng::from_entropy(),
        };
        async { Ok(requester) }
    })
    .await
}

/// When a run stops taking new tickets.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// After this many tickets.
    Total(u64),
    /// For tickets due this long after the start.
    After(Duration),
}

/// Hands out tickets and says when each is due. All clients of a run share one, which is what
/// makes both the total and the rate global rather than per client.
struct Schedule {
    next_ticket: AtomicU64,
    end: End,
    /// Requests per second over the run; 0 means unpaced.
    rate: f64,
    started: Instant,
    /// `started` on the wall clock, which slow requests are reported in.
    started_wall: SystemTime,
    /// Requests answered so far, for the progress line.
    completed: AtomicU64,
}

impl Schedule {
    fn new(shape: &LoadShape) -> Self {
        Self {
            next_ticket: AtomicU64::new(0),
            end: shape.duration.map_or(End::Total(shape.total), End::After),
            rate: shape.rate,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            completed: AtomicU64::new(0),
        }
    }

    /// How long after the start `ticket` may be sent: tickets are spread evenly at the rate.
    fn due(&self, ticket: u64) -> Duration {
        if self.rate == 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(ticket as f64 / self.rate)
        }
    }

    /// Whether `ticket` is part of the run when drawn `elapsed` after the start.
    fn admits(&self, ticket: u64, elapsed: Duration) -> bool {
        match self.end {
            End::Total(total) => ticket < total,
            End::After(duration) => elapsed.max(self.due(ticket)) < duration,
        }
    }

    /// The next ticket, once it is due; `None` once the run is over.
    async fn next(&self) -> Option<u64> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        if !self.admits(ticket, self.started.elapsed()) {
            return None;
        }
        tokio::time::sleep_until((self.started + self.due(ticket)).into()).await;
        Some(ticket)
    }

    fn wall_clock(&self, at: Instant) -> SystemTime {
        self.started_wall + at.saturating_duration_since(self.started)
    }
}

/// What one client task saw.
struct ClientOutcome {
    issued: u64,
    latency_us: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    slow: SlowRequests,
}

/// A request slower than `--slow-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlowRequest {
    pub sent: SystemTime,
    pub latency: Duration,
}

/// The slow requests of a run: at most [`SlowRequests::KEPT`] of them listed, the rest
/// only counted, so a threshold set too low cannot grow the generator without bound.
#[derive(Debug, Default)]
pub struct SlowRequests {
    pub listed: Vec<SlowRequest>,
    pub count: u64,
}

impl SlowRequests {
    const KEPT: usize = 10_000;

    fn record(&mut self, request: SlowRequest) {
        self.count += 1;
        if self.listed.len() < Self::KEPT {
            self.listed.push(request);
        }
    }

    fn absorb(&mut self, other: SlowRequests) {
        self.count += other.count;
        let room = Self::KEPT.saturating_sub(self.listed.len());
        self.listed.extend(other.listed.into_iter().take(room));
        // Kept in send order, the order both reports list them in.
        self.listed.sort();
    }

    /// One line per listed request, oldest first: when it was sent (UTC) and how long it took.
    fn to_text(&self, threshold: Duration) -> String {
        let listed = &self.listed;
        let mut text = format!(
            "slower than {}: {} requests{}\n",
            format_ms(micros(threshold)),
            self.count,
            if self.count > listed.len() as u64 {
                format!(", {} of them listed", listed.len())
            } else {
                String::new()
            }
        );
        for request in listed {
            text.push_str(&format!(
                "  sent {}  took {}\n",
                utc_micros(request.sent),
                format_ms(micros(request.latency))
            ));
        }
        text
    }

    fn to_json(&self) -> serde_json::Value {
        let listed = &self.listed;
        serde_json::json!({
            "count": self.count,
            "listed": listed.iter().map(|request| serde_json::json!({
                "sent": utc_micros(request.sent),
                "latency_ms": micros(request.latency) as f64 / 1000.0,
            })).collect::<Vec<_>>(),
        })
    }
}

/// RFC 3339 in UTC with microseconds, as the server's log lines stamp their time.
fn utc_micros(at: SystemTime) -> String {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    chrono::DateTime::from_timestamp_micros(micros(since_epoch) as i64)
        .map_or_else(String::new, |at| {
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        })
}

/// The result of a load run.
#[derive(Debug)]
pub struct LoadReport {
    /// Requests attempted, successful or not.
    pub total: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub wall: Duration,
    /// Latency of the successful requests, in microseconds, from sending to the response (not
    /// from when a paced request was due).
    pub latency_us: Histogram<u64>,
    /// With `--slow-ms`, its threshold and the successful requests slower than it.
    pub slow: Option<(Duration, SlowRequests)>,
}

impl LoadReport {
    /// Successful requests per second of wall time.
    pub fn throughput(&self) -> f64 {
        (self.total - self.errors) as f64 / self.wall.as_secs_f64()
    }

    pub fn p99_us(&self) -> u64 {
        self.latency_us.value_at_quantile(0.99)
    }

    /// The human-readable report every load workload prints.
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
        if let Some((threshold, slow)) = &self.slow {
            text.push_str(&slow.to_text(*threshold));
        }
        text
    }

    /// The machine-readable report printed with `--json`; latencies in ms.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "total": self.total,
            "errors": self.errors,
            "first_error": self.first_error,
            "wall_s": self.wall.as_secs_f64(),
            "ops_per_s": self.throughput(),
            "latency_ms": latency_json(&self.latency_us),
            "slow": self.slow.as_ref().map(|(_, slow)| slow.to_json()),
        })
    }
}

/// Runs `shape` against `endpoints`, each client issuing requests through the requester
/// `new_requester` builds for it from its connection and its index, and returns once all
/// requests have finished. Requesters are all built before the clock starts, so their set-up
/// (opening streams, say) is not measured.
pub async fn run_load<R, F>(
    endpoints: &Endpoints,
    shape: &LoadShape,
    mut new_requester: impl FnMut(&Client, u64) -> F,
) -> Result<LoadReport>
where
    R: Requester,
    F: Future<Output = Result<R>>,
{
    let mut connections = Vec::new();
    for index in 0..shape.conns {
        connections.push(connect(endpoints, index as usize).await?);
    }
    let mut requesters = Vec::new();
    for client_index in 0..shape.clients {
        let connection = &connections[(client_index % shape.conns) as usize];
        requesters.push(new_requester(connection, client_index).await?);
    }

    let schedule = Arc::new(Schedule::new(shape));
    let mut clients = JoinSet::new();
    for requester in requesters {
        clients.spawn(run_client(requester, Arc::clone(&schedule), shape.slow));
    }
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(Arc::clone(&schedule))));

    let mut report = LoadReport {
        total: 0,
        errors: 0,
        first_error: None,
        wall: Duration::ZERO,
        latency_us: new_latency_histogram(),
        slow: shape
            .slow
            .map(|threshold| (threshold, SlowRequests::default())),
    };
    while let Some(outcome) = clients.join_next().await {
        let outcome = outcome.context("a client task panicked")?;
        report.total += outcome.issued;
        merge(&mut report.latency_us, &outcome.latency_us);
        report.errors += outcome.errors;
        report.first_error = report.first_error.or(outcome.first_error);
        if let Some((_, slow)) = &mut report.slow {
            slow.absorb(outcome.slow);
        }
    }
    report.wall = schedule.started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        // Erase the progress line so the report starts on a clean one.
        eprint!("\r\x1b[2K");
    }
    Ok(report)
}

/// Rewrites one stderr line every second with the requests answered so far.
async fn show_progress(schedule: Arc<Schedule>) {
    // The first line comes a second in, so its rate is not computed over a few microseconds.
    let second = Duration::from_secs(1);
    let mut ticks = tokio::time::interval_at((schedule.started + second).into(), second);
    loop {
        ticks.tick().await;
        let elapsed = schedule.started.elapsed().as_secs_f64();
        let completed = schedule.completed.load(Ordering::Relaxed);
        let of = match schedule.end {
            End::Total(total) => format!("{completed}/{total} requests"),
            End::After(duration) => {
                format!(
                    "{completed} requests, {elapsed:.1}/{:.1} s",
                    duration.as_secs_f64()
                )
            }
        };
        eprint!("\r\x1b[2K{of}, {:.0} ops/s", completed as f64 / elapsed);
    }
}

/// Connection number `index` to `endpoints`, already established. Channels connect lazily: one
/// Get keeps the TCP, TLS and HTTP/2 handshakes out of the first requests' latencies, and fails
/// fast on an unreachable endpoint.
pub async fn connect(endpoints: &Endpoints, index: usize) -> Result<Client> {
    let mut client = endpoints
        .connect(index, None)
        .await
        .with_context(|| format!("cannot connect to {endpoints:?}"))?;
    client
        .get("oxcd-bench-warmup", None)
        .await
        .with_context(|| format!("warm-up Get against {endpoints:?} failed"))?;
    Ok(client)
}

async fn run_client(
    mut requester: impl Requester,
    schedule: Arc<Schedule>,
    slow: Option<Duration>,
) -> ClientOutcome {
    let mut outcome = ClientOutcome {
        issued: 0,
        latency_us: new_latency_histogram(),
        errors: 0,
        first_error: None,
        slow: SlowRequests::default(),
    };
    while let Some(ticket) = schedule.next().await {
        outcome.issued += 1;
        let sent = Instant::now();
        match requester.issue(ticket).await {
            Ok(()) => {
                let latency = sent.elapsed();
                outcome.latency_us.saturating_record(micros(latency));
                if slow.is_some_and(|threshold| latency > threshold) {
                    outcome.slow.record(SlowRequest {
                        sent: schedule.wall_clock(sent),
                        latency,
                    });
                }
            }
            Err(error) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
        schedule.completed.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(key_size: u64, key_space: u64, sequential: bool) -> Result<KeyGenerator> {
        KeyGenerator::new(
            &KeyShape {
                key_size,
                key_space,
            },
            sequential,
        )
    }

    fn index_of(key: &[u8]) -> u64 {
        std::str::from_utf8(key).unwrap().parse().unwrap()
    }

    #[test]
    fn random_keys_have_exactly_key_size_bytes_and_stay_in_the_key_space() {
        let keys = keys(8, 1000, false).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        for ticket in 0..10_000 {
            let key = keys.key(ticket, &mut rng);
            assert_eq!(key.len(), 8);
            assert!(
                index_of(&key) < 1000,
                "key {key:?} is outside the key space"
            );
        }
    }

    #[test]
    fn sequential_keys_follow_the_ticket_and_wrap_at_the_key_space() {
        let keys = keys(4, 3, true).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let generated: Vec<Vec<u8>> = (0..4).map(|ticket| keys.key(ticket, &mut rng)).collect();
        assert_eq!(generated, [b"0000", b"0001", b"0002", b"0000"]);
    }

    #[test]
    fn distinct_keys_are_distinct_and_in_the_key_space() {
        let keys = keys(3, 10, false).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let mut drawn = keys.distinct_keys(10, &mut rng);
            assert!(drawn.iter().all(|key| key.len() == 3 && index_of(key) < 10));
            drawn.sort();
            drawn.dedup();
            assert_eq!(drawn.len(), 10);
        }
    }

    #[test]
    fn a_key_space_wider_than_the_key_size_can_spell_is_rejected() {
        assert!(keys(2, 100, false).is_ok());
        assert!(keys(2, 101, false).is_err());
        // 10^25 overflows u64, so any key space fits.
        assert!(keys(25, u64::MAX, false).is_ok());
    }

    fn schedule(total: u64, duration: Option<f64>, rate: f64) -> Schedule {
        Schedule::new(&LoadShape {
            clients: 1,
            conns: 1,
            total,
            duration: duration.map(Duration::from_secs_f64),
            rate,
            slow: None,
        })
    }

    #[test]
    fn paced_tickets_are_due_evenly_at_the_rate_and_unpaced_ones_at_once() {
        let paced = schedule(10, None, 200.0);
        assert_eq!(paced.due(0), Duration::ZERO);
        assert_eq!(paced.due(1), Duration::from_millis(5));
        assert_eq!(paced.due(400), Duration::from_secs(2));
        assert_eq!(schedule(10, None, 0.0).due(1_000_000), Duration::ZERO);
    }

    #[test]
    fn a_total_bounds_the_tickets_and_a_duration_overrides_it() {
        let counted = schedule(10, None, 0.0);
        assert!(counted.admits(9, Duration::from_secs(3600)));
        assert!(!counted.admits(10, Duration::ZERO));

        let timed = schedule(10, Some(2.0), 0.0);
        assert!(timed.admits(1_000, Duration::from_millis(1999)));
        assert!(!timed.admits(0, Duration::from_secs(2)));

        // Paced and timed: a ticket due after the end is refused even if drawn early.
        let paced = schedule(10, Some(2.0), 100.0);
        assert!(paced.admits(199, Duration::ZERO));
        assert!(!paced.admits(200, Duration::ZERO));
    }

    #[test]
    fn durations_and_rates_are_validated() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("inf").is_err());
    }

    #[test]
    fn slow_requests_are_listed_in_send_order_up_to_a_bound() {
        let at = |micros: u64| SlowRequest {
            sent: SystemTime::UNIX_EPOCH
                + Duration::from_secs(1_765_000_000)
                + Duration::from_micros(micros),
            latency: Duration::from_micros(50_000 + micros),
        };
        let mut run = SlowRequests::default();
        let mut client = SlowRequests::default();
        client.record(at(2));
        client.record(at(1));
        run.absorb(client);
        let text = run.to_text(Duration::from_millis(40));
        assert_eq!(
            text,
            "slower than 40.000 ms: 2 requests\n  \
             sent 2025-12-06T05:46:40.000001Z  took 50.001 ms\n  \
             sent 2025-12-06T05:46:40.000002Z  took 50.002 ms\n"
        );
        assert_eq!(run.to_json()["listed"][1]["latency_ms"], 50.002);

        let mut flood = SlowRequests::default();
        for micros in 0..SlowRequests::KEPT as u64 + 5 {
            flood.record(at(micros));
        }
        run.absorb(flood);
        assert_eq!(
            (run.count, run.listed.len()),
            (SlowRequests::KEPT as u64 + 7, SlowRequests::KEPT)
        );
        assert!(run.to_text(Duration::from_millis(40)).starts_with(&format!(
            "slower than 40.000 ms: {} requests, {} of them listed\n",
            SlowRequests::KEPT + 7,
            SlowRequests::KEPT
        )));
    }

    #[test]
    fn reported_percentiles_come_from_the_histogram() {
        let mut latency_us = new_latency_histogram();
        for micros in 1..=1000 {
            latency_us.record(micros).unwrap();
        }
        let report = LoadReport {
            total: 1000,
            errors: 0,
            first_error: None,
            wall: Duration::from_secs(2),
            latency_us,
            slow: None,
        };
        assert_eq!(report.p99_us(), 990);
        assert_eq!(report.throughput(), 500.0);
        let json = report.to_json();
        assert_eq!(json["latency_ms"]["p50"], 0.5);
        assert_eq!(json["latency_ms"]["max"], 1.0);
    }
}
