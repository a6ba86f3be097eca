//! The watch load: many watchers on one prefix, spread over many gRPC watch streams that share a
//! few connections, and one writer putting under that prefix at a fixed rate. Every value carries
//! its put's sequence number and send time, so each watcher can time every event and account for
//! every put exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use etcd_client::{
    Client, EventType, KvClient, WatchClient, WatchOptions, WatchResponse, WatchStream,
};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::connection::Endpoints;
use crate::load::connect;
use crate::stats::{
    format_ms, latency_json, latency_text, merge, micros, new_latency_histogram, process_cpu_time,
};

/// Creating every watcher must finish within this, or the run fails.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Once every event has arrived, late duplicates still get this long to show up.
const SETTLE: Duration = Duration::from_secs(1);
const PROGRESS_POLL: Duration = Duration::from_millis(20);
/// The HTTP/2 connection window of watch connections: the largest allowed. Every watch event
/// arrives as its own small DATA frame, and h2 (0.4.16 and later, a flood guard) closes a client
/// connection with GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames" once the small frames it holds
/// unread cost more than half that window. With hyper's 5 MiB default, a client that falls a
/// fraction of a second behind thousands of watchers loses every stream on the connection.
const WATCH_CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// The text report lists at most this many incomplete watchers (the JSON report lists them all).
const LISTED_INCOMPLETE: usize = 10;

/// The shape of one watch run; the CLI flags of `oxcd-bench watch-latency` map onto it.
#[derive(clap::Args, Clone, Debug)]
pub struct WatchWorkload {
    /// gRPC watch streams to open.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub streams: u64,
    /// Watchers over all streams together (spread evenly over them), all on --prefix.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub watchers: u64,
    /// Watch streams per gRPC connection (HTTP/2 streams multiplexed on one TCP connection).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub streams_per_conn: u64,
    /// Key prefix that every watcher watches and every put writes under.
    #[arg(long, default_value = "/bench/watch/")]
    pub prefix: String,
    /// Puts the single writer issues.
    #[arg(long, default_value_t = 2_000)]
    pub puts: u64,
    /// Puts per second, each sent on schedule whether or not earlier ones have been answered.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub put_rate: u64,
    /// Distinct keys the puts cycle through; a put to a key written before is an update, whose
    /// event carries a previous value when --prev-kv is on.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Ask for the previous key-value with every event.
    #[arg(long)]
    pub prev_kv: bool,
    /// How long to wait for missing events after the last put before reporting them.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_secs: u64,
}

impl WatchWorkload {
    fn connections(&self) -> u64 {
        self.streams.div_ceil(self.streams_per_conn)
    }

    /// Watchers on stream `index`: an even share, the remainder going to the first streams.
    fn watchers_on_stream(&self, index: u64) -> u64 {
        self.watchers / self.streams + u64::from(index < self.watchers % self.streams)
    }

    fn key(&self, seq: u64) -> String {
        format!("{}{:08}", self.prefix, seq % self.keys)
    }

    fn watch_options(&self) -> WatchOptions {
        let options = WatchOptions::new().with_prefix();
        if self.prev_kv {
            options.with_prev_key()
        } else {
            options
        }
    }
}

/// What every put's value carries: which put it is, and when it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    /// Nanoseconds since the run's shared clock started.
    pub sent_ns: u64,
}

impl Stamp {
    const ENCODED_LEN: usize = 16;

    pub fn encode(self) -> Vec<u8> {
        [self.seq.to_be_bytes(), self.sent_ns.to_be_bytes()].concat()
    }

    /// `None` for any value this benchmark did not write.
    pub fn decode(value: &[u8]) -> Option<Self> {
        let value: &[u8; Self::ENCODED_LEN] = value.try_into().ok()?;
        let (seq, sent_ns) = value.split_at(8);
        Some(Self {
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            sent_ns: u64::from_be_bytes(sent_ns.try_into().ok()?),
        })
    }
}

/// The clock that send and receive times are both read from (one process, so one `Instant`).
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ns(self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// How an event's put relates to what its watcher had already received.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// First delivery of this put, at a revision above every one seen before.
    New,
    /// First delivery of this put, but at a revision not above one already seen (a watcher must
    /// see revisions strictly increasing).
    OutOfOrder,
    /// This put was delivered before.
    Duplicate,
    /// Not a put of this run.
    Foreign,
}

/// Exact per-watcher accounting of which of the run's puts were delivered, and how often.
#[derive(Clone, Debug)]
pub struct WatcherTally {
    /// One bit per put of the run.
    seen: Vec<u64>,
    puts: u64,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    last_revision: Option<i64>,
}

impl WatcherTally {
    pub fn new(puts: u64) -> Self {
        Self {
            seen: vec![0; puts.div_ceil(64) as usize],
            puts,
            distinct: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            last_revision: None,
        }
    }

    /// Put `seq` of the run delivered at `revision` (the event's mod revision).
    pub fn record(&mut self, seq: u64, revision: i64) -> Delivery {
        if seq >= self.puts {
            self.foreign += 1;
            return Delivery::Foreign;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Delivery::Duplicate;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        if self.last_revision.is_some_and(|last| revision <= last) {
            self.out_of_order += 1;
            return Delivery::OutOfOrder;
        }
        self.last_revision = Some(revision);
        Delivery::New
    }

    /// An event whose value is not a stamp at all.
    pub fn record_foreign(&mut self) {
        self.foreign += 1;
    }

    pub fn missing(&self) -> u64 {
        self.puts - self.distinct
    }

    fn is_exact(&self) -> bool {
        self.missing() == 0 && self.duplicates == 0 && self.out_of_order == 0 && self.foreign == 0
    }
}

/// A watch stream whose watchers have all been created.
struct OpenStream {
    /// Position among the run's streams, for reports.
    index: u64,
    stream: WatchStream,
    /// Watch id to the watcher's position on this stream.
    watchers: HashMap<i64, usize>,
}

/// Watchers created and idle, connections open: [`PreparedWatch::run`] starts the writer.
pub struct PreparedWatch {
    workload: WatchWorkload,
    writer: KvClient,
    streams: Vec<OpenStream>,
    /// Held so the connections outlive the run.
    _connections: Vec<Client>,
}

/// Opens the streams and creates every watcher, returning once each has been confirmed.
pub async fn prepare(endpoints: &Endpoints, workload: &WatchWorkload) -> Result<PreparedWatch> {
    ensure!(
        workload.watchers >= workload.streams,
        "--watchers {} is fewer than --streams {}: some streams would have no watcher",
        workload.watchers,
        workload.streams
    );
    let writer = connect(endpoints, 0).await?.kv_client();
    let mut connections = Vec::new();
    for index in 0..workload.connections() {
        connections.push(connect_for_watching(endpoints, index as usize).await?);
    }

    let mut opening = JoinSet::new();
    for index in 0..workload.streams {
        let client = connections[(index % workload.connections()) as usize].watch_client();
        let (workload, count) = (workload.clone(), workload.watchers_on_stream(index));
        opening.spawn(async move {
            open_stream(client, &workload, index, count)
                .await
                .with_context(|| format!("watch stream {index}"))
        });
    }
    let mut streams = Vec::new();
    let opened = tokio::time::timeout(CREATE_TIMEOUT, async {
        while let Some(stream) = opening.join_next().await {
            streams.push(stream.context("a stream task panicked")??);
        }
        anyhow::Ok(())
    })
    .await;
    match opened {
        Ok(result) => result?,
        Err(_) => bail!(
            "only {} of {} streams had all their watchers created within {CREATE_TIMEOUT:?}",
            streams.len(),
            workload.streams
        ),
    }
    Ok(PreparedWatch {
        workload: workload.clone(),
        writer,
        streams,
        _connections: connections,
    })
}

/// Watch connection number `index`, established, with the large window.
async fn connect_for_watching(endpoints: &Endpoints, index: usize) -> Result<Client> {
    let mut client = endpoints
        .connect(index, Some(WATCH_CONNECTION_WINDOW))
        .await
        .with_context(|| format!("cannot connect to {endpoints:?}"))?;
    client
        .status()
        .await
        .with_context(|| format!("cannot reach {endpoints:?}"))?;
    Ok(client)
}

async fn open_stream(
    mut client: WatchClient,
    workload: &WatchWorkload,
    index: u64,
    count: u64,
) -> Result<OpenStream> {
    let prefix = workload.prefix.as_str();
    let mut stream = client.watch(prefix, Some(workload.watch_options())).await?;
    for _ in 1..count {
        stream.watch(prefix, Some(workload.watch_options())).await?;
    }
    let mut watchers = HashMap::new();
    while (watchers.len() as u64) < count {
        let response = stream
            .message()
            .await?
            .context("the server closed the stream before creating every watcher")?;
        if response.canceled() {
            bail!(
                "watch creation refused (watch id {}): {:?}",
                response.watch_id(),
                response.cancel_reason()
            );
        }
        if response.created() {
            let position = watchers.len();
            if watchers.insert(response.watch_id(), position).is_some() {
                bail!(
                    "watch id {} created twice on one stream",
                    response.watch_id()
                );
            }
        }
    }
    Ok(OpenStream {
        index,
        stream,
        watchers,
    })
}

/// What one stream's reader saw.
struct StreamOutcome {
    stream: u64,
    tallies: Vec<(i64, WatcherTally)>,
    latency_us: Histogram<u64>,
    canceled: u64,
    missing_prev_kv: u64,
    /// Why the stream ended before the run did, if it did.
    error: Option<String>,
}

/// A watcher whose deliveries were not exactly one per put, in order.
#[derive(Debug)]
pub struct IncompleteWatcher {
    pub stream: u64,
    pub watch_id: i64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub foreign: u64,
}

/// The result of a watch run.
#[derive(Debug)]
pub struct WatchReport {
    pub watchers: u64,
    pub streams: u64,
    pub connections: u64,
    pub puts: u64,
    pub put_errors: u64,
    pub first_put_error: Option<String>,
    /// From the first put's send to the last put's send.
    pub send_wall: Duration,
    pub put_latency_us: Histogram<u64>,
    /// Puts × watchers.
    pub events_expected: u64,
    /// Distinct (watcher, put) deliveries.
    pub events_received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    /// Update events (not creations) without the previous key-value, with --prev-kv on.
    pub missing_prev_kv: u64,
    pub canceled_watchers: u64,
    pub stream_errors: u64,
    pub first_stream_error: Option<String>,
    /// From the last put's response until every event had arrived (or the drain timeout).
    pub drain: Duration,
    /// From the first put's send to the end of the drain.
    pub wall: Duration,
    /// CPU time this load generator used over `wall`: close to the machine's core count means
    /// the client, not the server, limited delivery.
    pub client_cpu: Duration,
    pub drain_timed_out: bool,
    /// Put-send to event-receive, first delivery of each (watcher, put) only.
    pub latency_us: Histogram<u64>,
    pub incomplete: Vec<IncompleteWatcher>,
}

impl PreparedWatch {
    /// Runs the writer, collects every watcher's events, and reports.
    pub async fn run(self) -> Result<WatchReport> {
        let PreparedWatch {
            workload,
            writer,
            streams,
            _connections,
        } = self;
        let clock = Clock(Instant::now());
        let cpu_at_start = process_cpu_time();
        let received = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let readers: Vec<JoinHandle<StreamOutcome>> = streams
            .into_iter()
            .map(|stream| {
                tokio::spawn(read_stream(
                    stream,
                    workload.clone(),
                    clock,
                    Arc::clone(&received),
                    stopped.clone(),
                ))
            })
            .collect();

        let writes = write(writer, &workload, clock).await;

        let expected = workload.puts * workload.watchers;
        let drain_started = Instant::now();
        let deadline = drain_started + Duration::from_secs(workload.drain_timeout_secs);
        let drain_timed_out = loop {
            if received.load(Ordering::Relaxed) >= expected {
                break false;
            }
            if Instant::now() >= deadline {
                break true;
            }
            if readers.iter().all(|reader| reader.is_finished()) {
                break false;
            }
            tokio::time::sleep(PROGRESS_POLL).await;
        };
        let drain = drain_started.elapsed();
        let wall = clock.0.elapsed();
        let client_cpu = process_cpu_time().saturating_sub(cpu_at_start);
        if !drain_timed_out {
            tokio::time::sleep(SETTLE).await;
        }
        // Receivers are gone only if every reader has already ended, which is fine.
        let _ = stop.send(true);

        let mut report = WatchReport {
            watchers: workload.watchers,
            streams: workload.streams,
            connections: workload.connections(),
            puts: workload.puts,
            put_errors: writes.errors,
            first_put_error: writes.first_error,
            send_wall: writes.send_wall,
            put_latency_us: writes.latency_us,
            events_expected: expected,
            events_received: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            missing_prev_kv: 0,
            canceled_watchers: 0,
            stream_errors: 0,
            first_stream_error: None,
            drain,
            wall,
            client_cpu,
            drain_timed_out,
            latency_us: new_latency_histogram(),
            incomplete: Vec::new(),
        };
        for reader in readers {
            let outcome = reader.await.context("a stream reader panicked")?;
            merge(&mut report.latency_us, &outcome.latency_us);
            report.canceled_watchers += outcome.canceled;
            report.missing_prev_kv += outcome.missing_prev_kv;
            if let Some(error) = outcome.error {
                report.stream_errors += 1;
                report.first_stream_error.get_or_insert(error);
            }
            for (watch_id, tally) in outcome.tallies {
                report.events_received += tally.distinct;
                report.duplicates += tally.duplicates;
                report.out_of_order += tally.out_of_order;
                report.foreign += tally.foreign;
                if !tally.is_exact() {
                    report.incomplete.push(IncompleteWatcher {
                        stream: outcome.stream,
                        watch_id,
                        missing: tally.missing(),
                        duplicates: tally.duplicates,
                        out_of_order: tally.out_of_order,
                        foreign: tally.foreign,
                    });
                }
            }
        }
        Ok(report)
    }
}

/// What the writer saw.
struct Writes {
    errors: u64,
    first_error: Option<String>,
    send_wall: Duration,
    latency_us: Histogram<u64>,
}

/// Sends `workload.puts` stamped puts at `workload.put_rate` per second, open loop: a put does
/// not wait for the one before it, so a slow server cannot lower the rate (the puts then commit
/// in any order, which is why watchers check revisions, not sequence numbers, for order).
/// Returns once every put has been answered.
async fn write(kv: KvClient, workload: &WatchWorkload, clock: Clock) -> Writes {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / workload.put_rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut in_flight = JoinSet::new();
    for seq in 0..workload.puts {
        ticks.tick().await;
        let (mut kv, key) = (kv.clone(), workload.key(seq));
        in_flight.spawn(async move {
            let sent = Instant::now();
            let stamp = Stamp {
                seq,
                sent_ns: clock.now_ns(),
            };
            kv.put(key, stamp.encode(), None)
                .await
                .map(|_| micros(sent.elapsed()))
        });
    }
    let mut writes = Writes {
        errors: 0,
        first_error: None,
        send_wall: started.elapsed(),
        latency_us: new_latency_histogram(),
    };
    while let Some(put) = in_flight.join_next().await {
        match put.expect("a put task panicked") {
            Ok(latency_us) => writes.latency_us.saturating_record(latency_us),
            Err(error) => {
                writes.errors += 1;
                writes.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    writes
}

/// Reads one stream until told to stop (or until the stream fails), timing and accounting for
/// every event of every watcher on it.
async fn read_stream(
    OpenStream {
        index,
        mut stream,
        watchers,
    }: OpenStream,
    workload: WatchWorkload,
    clock: Clock,
    received: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) -> StreamOutcome {
    let mut tallies = vec![WatcherTally::new(workload.puts); watchers.len()];
    let mut outcome = StreamOutcome {
        stream: index,
        tallies: Vec::new(),
        latency_us: new_latency_histogram(),
        canceled: 0,
        missing_prev_kv: 0,
        error: None,
    };
    loop {
        let message = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => break,
            message = stream.message() => message,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                outcome.error = Some("the server ended the watch stream".to_owned());
                break;
            }
            Err(error) => {
                outcome.error = Some(error.to_string());
                break;
            }
        };
        let received_ns = clock.now_ns();
        let Some(&position) = watchers.get(&response.watch_id()) else {
            outcome.error.get_or_insert_with(|| {
                format!("response for unknown watch id {}", response.watch_id())
            });
            continue;
        };
        let tally = &mut tallies[position];
        if response.canceled() {
            outcome.canceled += 1;
            outcome.error.get_or_insert_with(|| {
                format!(
                    "watch {} canceled: {:?}",
                    response.watch_id(),
                    response.cancel_reason()
                )
            });
        }
        let new = account(&response, tally, &workload, &mut outcome, received_ns);
        received.fetch_add(new, Ordering::Relaxed);
    }
    let mut watch_ids = vec![0; watchers.len()];
    for (watch_id, position) in watchers {
        watch_ids[position] = watch_id;
    }
    outcome.tallies = watch_ids.into_iter().zip(tallies).collect();
    outcome
}

/// Records one response's events for its watcher; returns how many were first deliveries.
fn account(
    response: &WatchResponse,
    tally: &mut WatcherTally,
    workload: &WatchWorkload,
    outcome: &mut StreamOutcome,
    received_ns: u64,
) -> u64 {
    let mut new = 0;
    for event in response.events() {
        let Some(kv) = event.kv() else {
            tally.record_foreign();
            continue;
        };
        let stamp = match event.event_type() {
            EventType::Put => Stamp::decode(kv.value()),
            EventType::Delete => None,
        };
        let Some(stamp) = stamp else {
            tally.record_foreign();
            continue;
        };
        match tally.record(stamp.seq, kv.mod_revision()) {
            Delivery::New | Delivery::OutOfOrder => {
                new += 1;
                let latency_ns = received_ns.saturating_sub(stamp.sent_ns);
                outcome.latency_us.saturating_record(latency_ns / 1_000);
            }
            Delivery::Duplicate | Delivery::Foreign => {}
        }
        if workload.prev_kv && kv.version() > 1 && event.prev_kv().is_none() {
            outcome.missing_prev_kv += 1;
        }
    }
    new
}

impl WatchReport {
    pub fn events_missing(&self) -> u64 {
        self.events_expected - self.events_received
    }

    /// Events delivered per second, over the time from the first put to the end of the drain.
    pub fn delivery_rate(&self) -> f64 {
        self.events_received as f64 / self.wall.as_secs_f64()
    }

    /// The load generator's average CPU use over the run, in cores.
    pub fn client_cores(&self) -> f64 {
        self.client_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Puts per second the writer actually sent (intervals between sends over their time).
    pub fn put_rate(&self) -> f64 {
        self.puts.saturating_sub(1) as f64 / self.send_wall.as_secs_f64()
    }

    /// The human-readable report printed by `oxcd-bench watch-latency`.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "watchers:        {} on {} streams over {} connections\n\
             puts:            {} ({} errors) at {:.1} puts/s, put p99 {}\n\
             events expected: {}\n\
             events received: {} (missing {}, duplicates {}, out of order {}, foreign {}), {:.0}/s\n\
             canceled watchers: {}, stream errors: {}, missing prev_kv: {}\n\
             drain:           {:.3} s after the last put{}\n\
             client CPU:      {:.2} cores\n\
             event latency (put sent -> event received):\n",
            self.watchers,
            self.streams,
            self.connections,
            self.puts,
            self.put_errors,
            self.put_rate(),
            format_ms(self.put_latency_us.value_at_quantile(0.99)),
            self.events_expected,
            self.events_received,
            self.events_missing(),
            self.duplicates,
            self.out_of_order,
            self.foreign,
            self.delivery_rate(),
            self.canceled_watchers,
            self.stream_errors,
            self.missing_prev_kv,
            self.drain.as_secs_f64(),
            if self.drain_timed_out {
                " (timed out)"
            } else {
                ""
            },
            self.client_cores(),
        );
        text.push_str(&latency_text(&self.latency_us));
        if !self.incomplete.is_empty() {
            text.push_str(&format!(
                "{} watchers did not get exactly one event per put, in order; first ones:\n",
                self.incomplete.len()
            ));
            for watcher in self.incomplete.iter().take(LISTED_INCOMPLETE) {
                text.push_str(&format!("  {watcher:?}\n"));
            }
        }
        if let Some(error) = &self.first_put_error {
            text.push_str(&format!("first put error: {error}\n"));
        }
        if let Some(error) = &self.first_stream_error {
            text.push_str(&format!("first stream error: {error}\n"));
        }
        text
    }

    /// The machine-readable report printed by `oxcd-bench watch-latency --json`; latencies in ms.
    pub fn to_json(&self) -> serde_json::Value {
        let incomplete: Vec<_> = self
            .incomplete
            .iter()
            .map(|watcher| {
                serde_json::json!({
                    "stream": watcher.stream,
                    "watch_id": watcher.watch_id,
                    "missing": watcher.missing,
                    "duplicates": watcher.duplicates,
                    "out_of_order": watcher.out_of_order,
                    "foreign": watcher.foreign,
                })
            })
            .collect();
        serde_json::json!({
            "watchers": self.watchers,
            "streams": self.streams,
            "connections": self.connections,
            "puts": self.puts,
            "put_errors": self.put_errors,
            "first_put_error": self.first_put_error,
            "puts_per_s": self.put_rate(),
            "put_latency_ms": latency_json(&self.put_latency_us),
            "events_expected": self.events_expected,
            "events_received": self.events_received,
            "events_missing": self.events_missing(),
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "foreign": self.foreign,
            "missing_prev_kv": self.missing_prev_kv,
            "canceled_watchers": self.canceled_watchers,
            "stream_errors": self.stream_errors,
            "first_stream_error": self.first_stream_error,
            "drain_s": self.drain.as_secs_f64(),
            "events_per_s": self.delivery_rate(),
            "client_cpu_cores": self.client_cores(),
            "drain_timed_out": self.drain_timed_out,
            "event_latency_ms": latency_json(&self.latency_us),
            "incomplete_watchers": incomplete,
        })
    }
}

/// Prepares and runs `workload` against `endpoints` in one go.
pub async fn run_watch(endpoints: &Endpoints, workload: &WatchWorkload) -> Result<WatchReport> {
    prepare(endpoints, workload).await?.run().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_values() {
        let stamp = Stamp {
            seq: 1_999,
            sent_ns: 12_345_678_901,
        };
        let value = stamp.encode();
        assert_eq!(value.len(), Stamp::ENCODED_LEN);
        assert_eq!(Stamp::decode(&value), Some(stamp));
        let extreme = Stamp {
            seq: u64::MAX,
            sent_ns: 0,
        };
        assert_eq!(Stamp::decode(&extreme.encode()), Some(extreme));
    }

    #[test]
    fn values_of_any_other_length_are_not_stamps() {
        assert_eq!(Stamp::decode(b""), None);
        assert_eq!(Stamp::decode(&[0; 15]), None);
        assert_eq!(Stamp::decode(&[0; 17]), None);
    }

    #[test]
    fn an_exact_delivery_leaves_nothing_missing() {
        let mut tally = WatcherTally::new(130);
        for seq in 0..130 {
            assert_eq!(tally.record(seq, 10 + seq as i64), Delivery::New);
        }
        assert_eq!(tally.missing(), 0);
        assert!(tally.is_exact());
    }

    #[test]
    fn gaps_duplicates_reordering_and_strangers_are_each_counted_exactly() {
        let mut tally = WatcherTally::new(100);
        assert_eq!(tally.record(0, 10), Delivery::New);
        assert_eq!(tally.record(5, 15), Delivery::New);
        assert_eq!(tally.record(5, 15), Delivery::Duplicate);
        assert_eq!(tally.record(0, 10), Delivery::Duplicate);
        assert_eq!(tally.record(3, 13), Delivery::OutOfOrder);
        // Puts sent concurrently may commit in another order: only revisions must increase.
        assert_eq!(tally.record(65, 16), Delivery::New);
        assert_eq!(tally.record(64, 17), Delivery::New);
        assert_eq!(tally.record(99, 17), Delivery::OutOfOrder);
        assert_eq!(tally.record(100, 18), Delivery::Foreign);
        tally.record_foreign();
        assert_eq!(tally.distinct, 6);
        assert_eq!(tally.missing(), 94);
        assert_eq!(tally.duplicates, 2);
        assert_eq!(tally.out_of_order, 2);
        assert_eq!(tally.foreign, 2);
        assert!(!tally.is_exact());
    }

    #[test]
    fn watchers_spread_evenly_and_puts_cycle_through_the_keys() {
        let workload = WatchWorkload {
            streams: 4,
            watchers: 10,
            streams_per_conn: 3,
            prefix: "/w/".to_owned(),
            puts: 10,
            put_rate: 100,
            keys: 3,
            prev_kv: false,
            drain_timeout_secs: 1,
        };
        let spread: Vec<u64> = (0..4).map(|s| workload.watchers_on_stream(s)).collect();
        assert_eq!(spread, [3, 3, 2, 2]);
        assert_eq!(workload.connections(), 2);
        assert_eq!(workload.key(0), "/w/00000000");
        assert_eq!(workload.key(4), "/w/00000001");
    }
}
