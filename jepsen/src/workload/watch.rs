//! The watch workload: clients put unique integers to a few keys under one prefix while watchers
//! on every member stream every event of the prefix from revision 1; the checker compares the
//! streams with each other and with the writes.
//!
//! - `write` is a Put of a value no other write uses, so an event identifies the write it came
//!   from; its ok result is `[value, revision]`, the revision from the Put response's header.
//! - The final reads are linearizable Ranges of the whole prefix (`read`, key = the prefix), one
//!   per member, with result `[revision, [[key, value, mod_revision], ...]]`. The largest
//!   revision they return is the final revision every watcher must reach.
//!
//! Two watchers per member (so that watchers on one member are compared too) each open a Watch
//! on the prefix from revision 1, without `prev_kv`, and record every event. When the stream
//! fails or ends (a member killed, a connection reset) the watcher opens a new one on the same
//! member, retrying with a short backoff, from the revision after the last one it saw, as etcd's
//! clients do. Once the run stops, a watcher carries on until it has seen the final revision or
//! [`FINAL_WAIT`] has passed. The streams are saved as `watches.jsonl`, one record per line:
//!
//! ```text
//! {"watcher":0,"member":"n1","time":1234,"type":"put","revision":5,"key":"w/k2","value":4,"header_revision":5}
//! {"watcher":0,"member":"n1","time":2345,"type":"broken","error":"..."}
//! {"watcher":0,"member":"n1","time":3456,"type":"resumed","start_revision":6,"attempts":3}
//! {"watcher":0,"member":"n1","time":4567,"type":"end","final_revision":90,"reached":true}
//! ```
//!
//! Times are nanoseconds from the moment the workload was made, which is right after the
//! history's recorder started its clock: they line up with `history.jsonl` to within that
//! moment (the recorder's clock is private to it).

mod checker;

pub use checker::{check_watches, Anomaly, WatchReport};

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KeyValue, WatchOptions, WatchResponse,
    WatchStream,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch::Receiver;
use tokio::task::JoinHandle;

use super::{unanswered, Judgement, Workload, FINAL_READ_ATTEMPTS, FINAL_READ_RETRY};
use crate::checker::CheckOptions;
use crate::cluster::{connect, Cluster};
use crate::history::{Operation, Outcome, Process, Recorder, Value, F};

/// Watchers per member.
const WATCHERS_PER_MEMBER: usize = 2;
/// How long a watcher waits for the final revision once the run is over.
pub const FINAL_WAIT: Duration = Duration::from_secs(30);
/// Pauses between attempts to open a watch: doubling from the first to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One entry of a watcher's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Nanoseconds since the start of the run.
    pub time: u64,
    #[serde(flatten)]
    pub what: Observation,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Observation {
    /// A PUT event; `revision` is the kv's mod_revision, `header_revision` the response's.
    Put {
        revision: i64,
        key: String,
        /// An integer, or the raw bytes as a string when they are none.
        value: Value,
        header_revision: i64,
    },
    Delete {
        revision: i64,
        key: String,
        header_revision: i64,
    },
    /// The stream failed or ended.
    Broken { error: String },
    /// A new watch was opened after a broken stream (or, at the start, failed attempts); it took
    /// this many attempts.
    Resumed { start_revision: i64, attempts: u32 },
    /// The server canceled the watch; `compact_revision` is set when it was for compaction,
    /// after which the watcher cannot go on without losing events, so it ends.
    Canceled {
        reason: String,
        compact_revision: i64,
    },
    /// The watcher stopped after the run, having reached the final revision or given up.
    End { final_revision: i64, reached: bool },
}

/// What a watch event says: at `revision`, `key` became `value` (`None`: it was deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchEvent<'a> {
    pub revision: i64,
    pub key: &'a str,
    pub value: Option<&'a Value>,
}

impl Observation {
    pub fn event(&self) -> Option<WatchEvent<'_>> {
        match self {
            Observation::Put {
                revision,
                key,
                value,
                ..
            } => Some(WatchEvent {
                revision: *revision,
                key,
                value: Some(value),
            }),
            Observation::Delete { revision, key, .. } => Some(WatchEvent {
                revision: *revision,
                key,
                value: None,
            }),
            _ => None,
        }
    }
}

/// Everything one watcher saw, in the order it saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    pub watcher: usize,
    /// The member's name (`n1`, `n2`…).
    pub member: String,
    pub records: Vec<Record>,
}

/// What the clients and watchers of a run share.
pub struct Watches {
    prefix: String,
    keys: Vec<String>,
    recorder: Arc<Recorder>,
    /// The bound on every request; what takes longer is given up on.
    timeout: Duration,
    /// Written values come from one counter, so they are unique across keys too.
    next_value: AtomicI64,
    start: Instant,
    /// The largest revision a final read returned; 0 until one did.
    final_revision: AtomicI64,
    streams: Mutex<Vec<Stream>>,
}

impl Watches {
    /// Keys `w/k0` to `w/k<keys - 1>`, with operations recorded by `recorder`.
    pub fn new(keys: usize, recorder: Arc<Recorder>, timeout: Duration) -> Watches {
        let prefix = "w/".to_owned();
        Watches {
            keys: (0..keys).map(|k| format!("{prefix}k{k}")).collect(),
            prefix,
            recorder,
            timeout,
            next_value: AtomicI64::new(1),
            start: Instant::now(),
            final_revision: AtomicI64::new(0),
            streams: Mutex::new(Vec::new()),
        }
    }

    /// A copy of every watcher's stream so far.
    pub fn streams(&self) -> Vec<Stream> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn observe(&self, watcher: usize, what: Observation) {
        let record = Record {
            time: self.now(),
            what,
        };
        self.streams.lock().unwrap_or_else(|e| e.into_inner())[watcher]
            .records
            .push(record);
    }

    /// A linearizable Range of the whole prefix from `client`, recorded as `process`; returns
    /// the revision it was taken at when it succeeded.
    async fn read_all(&self, client: &mut Client, process: Process) -> Option<i64> {
        let id = self
            .recorder
            .invoke(process, F::Read, &self.prefix, Value::Null);
        let options = GetOptions::new().with_prefix();
        let (outcome, revision) = match tokio::time::timeout(
            self.timeout,
            client.get(self.prefix.as_str(), Some(options)),
        )
        .await
        {
            Ok(Ok(response)) => match response.header() {
                Some(header) => {
                    let kvs = response.kvs().iter().map(|kv| {
                        Value::List(vec![
                            Value::Str(String::from_utf8_lossy(kv.key()).into_owned()),
                            parse(kv),
                            kv.mod_revision().into(),
                        ])
                    });
                    let result =
                        Value::List(vec![header.revision().into(), Value::List(kvs.collect())]);
                    (Outcome::Ok(result), Some(header.revision()))
                }
                None => (
                    Outcome::Fail("a Range response without a header".into()),
                    None,
                ),
            },
            Ok(Err(e)) => (unanswered(false, e.to_string()), None),
            Err(_) => (unanswered(false, "timed out".to_owned()), None),
        };
        self.recorder.complete(id, outcome);
        revision
    }
}

/// The value of a key as recorded: the integer this workload wrote, or the raw bytes when they
/// are none (a corruption the checker reports).
fn parse(kv: &KeyValue) -> Value {
    let text = String::from_utf8_lossy(kv.value());
    text.parse()
        .map_or_else(|_| Value::Str(text.into_owned()), Value::Int)
}

impl Workload for Watches {
    async fn step(&self, client: &mut Client, process: Process) -> Outcome {
        let key = &self.keys[rand::thread_rng().gen_range(0..self.keys.len())];
        let value = self.next_value.fetch_add(1, Ordering::Relaxed);
        let id = self.recorder.invoke(process, F::Write, key, value.into());
        let put = client.put(key.as_str(), value.to_string(), None);
        let outcome = match tokio::time::timeout(self.timeout, put).await {
            Ok(Ok(response)) => {
                let revision = response.header().map(|h| h.revision());
                Outcome::Ok(Value::List(vec![value.into(), revision.into()]))
            }
            Ok(Err(e)) => unanswered(true, e.to_string()),
            Err(_) => unanswered(true, "timed out".to_owned()),
        };
        self.recorder.complete(id, outcome.clone());
        outcome
    }

    async fn final_reads(&self, cluster: &Cluster, first_process: Process) -> Result<()> {
        for member in 0..cluster.members() {
            let process = first_process + member as u64;
            let mut client = connect(&cluster.endpoint(member), self.timeout).await?;
            for _ in 0..FINAL_READ_ATTEMPTS {
                if let Some(revision) = self.read_all(&mut client, process).await {
                    self.final_revision.fetch_max(revision, Ordering::SeqCst);
                    break;
                }
                tokio::time::sleep(FINAL_READ_RETRY).await;
            }
        }
        Ok(())
    }

    fn observers(
        self: &Arc<Self>,
        endpoints: &[String],
        stop: Receiver<bool>,
    ) -> Vec<JoinHandle<Result<()>>> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let mut tasks = Vec::new();
        for (member, endpoint) in endpoints.iter().enumerate() {
            for _ in 0..WATCHERS_PER_MEMBER {
                let watcher = Watcher {
                    workload: Arc::clone(self),
                    id: streams.len(),
                    endpoint: endpoint.clone(),
                    stop: stop.clone(),
                    next_revision: 1,
                    give_up: None,
                };
                streams.push(Stream {
                    watcher: watcher.id,
                    member: format!("n{}", member + 1),
                    records: Vec::new(),
                });
                tasks.push(tokio::spawn(watcher.run()));
            }
        }
        tasks
    }

    fn save(&self, dir: &Path) -> Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            watcher: usize,
            member: &'a str,
            #[serde(flatten)]
            record: &'a Record,
        }
        let path = dir.join("watches.jsonl");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        for stream in self.streams() {
            for record in &stream.records {
                let line = Line {
                    watcher: stream.watcher,
                    member: &stream.member,
                    record,
                };
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        out.flush()
            .with_context(|| format!("writing {}", path.display()))
    }

    fn check(&self, ops: &[Operation], _options: &CheckOptions) -> Result<Judgement> {
        let report = check_watches(ops, &self.streams(), &self.prefix);
        Ok(report.judgement())
    }
}

/// One watcher task: a watch on the prefix through one member, reopened whenever it breaks.
struct Watcher {
    workload: Arc<Watches>,
    id: usize,
    endpoint: String,
    stop: Receiver<bool>,
    /// The revision a new watch starts from: the one after the last event seen.
    next_revision: i64,
    /// Set when the run is over: the time to stop waiting for the final revision.
    give_up: Option<tokio::time::Instant>,
}

/// Why a watch stream ended.
enum Ended {
    /// The watcher is done: the run is over and it reached the final revision or gave up, or
    /// its watch was compacted.
    Done,
    /// The stream broke; a new one is needed.
    Broken(String),
}

impl Watcher {
    async fn run(mut self) -> Result<()> {
        let mut attempts = 0;
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.done() {
                return Ok(());
            }
            match self.open().await {
                Ok(stream) => {
                    if attempts > 0 {
                        self.observe(Observation::Resumed {
                            start_revision: self.next_revision,
                            attempts,
                        });
                    }
                    attempts = 0;
                    backoff = FIRST_BACKOFF;
                    match self.receive(stream).await {
                        Ended::Done => return Ok(()),
                        Ended::Broken(error) => self.observe(Observation::Broken { error }),
                    }
                }
                Err(_) => {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.checkpoint() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            attempts += 1;
        }
    }

    /// A new watch from `next_revision`, through a new connection to the member. Connecting has
    /// the request timeout, the stream none: it lasts as long as the member serves it.
    async fn open(&self) -> Result<WatchStream> {
        let options = ConnectOptions::new().with_connect_timeout(self.workload.timeout);
        let mut client = Client::connect([self.endpoint.as_str()], Some(options)).await?;
        let watch = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.next_revision);
        let prefix = self.workload.prefix.as_str();
        Ok(
            tokio::time::timeout(self.workload.timeout, client.watch(prefix, Some(watch)))
                .await??,
        )
    }

    async fn receive(&mut self, mut stream: WatchStream) -> Ended {
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = self.checkpoint() => {
                    if self.done() {
                        return Ended::Done;
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(response)) => {
                    if let Some(ended) = self.take(&response) {
                        return ended;
                    }
                    if self.done() {
                        return Ended::Done;
                    }
                }
                Ok(None) => return Ended::Broken("the server ended the stream".to_owned()),
                Err(e) => return Ended::Broken(e.to_string()),
            }
        }
    }

    /// Records the response's events; says how the stream ended if the response ended it.
    fn take(&mut self, response: &WatchResponse) -> Option<Ended> {
        if response.canceled() {
            let compact_revision = response.compact_revision();
            self.observe(Observation::Canceled {
                reason: response.cancel_reason().to_owned(),
                compact_revision,
            });
            return Some(if compact_revision > 0 {
                Ended::Done
            } else {
                Ended::Broken("the server canceled the watch".to_owned())
            });
        }
        let header_revision = response.header().map_or(0, |h| h.revision());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            self.observe(match event.event_type() {
                EventType::Put => Observation::Put {
                    revision,
                    key,
                    value: parse(kv),
                    header_revision,
                },
                EventType::Delete => Observation::Delete {
                    revision,
                    key,
                    header_revision,
                },
            });
            self.next_revision = self.next_revision.max(revision + 1);
        }
        None
    }

    /// Whether the watcher should stop: the run is over (or the runner is gone) and the final
    /// revision has been seen, or waited for long enough. Records the end when it is.
    fn done(&mut self) -> bool {
        let over = *self.stop.borrow() || self.stop.has_changed().is_err();
        if !over {
            return false;
        }
        let give_up = *self
            .give_up
            .get_or_insert_with(|| tokio::time::Instant::now() + FINAL_WAIT);
        let final_revision = self.workload.final_revision.load(Ordering::SeqCst);
        let reached = self.next_revision > final_revision;
        if reached || tokio::time::Instant::now() >= give_up {
            self.observe(Observation::End {
                final_revision,
                reached,
            });
            return true;
        }
        false
    }

    /// Returns when `done` may have changed its mind: the run is stopped, or the wait for the
    /// final revision is over.
    async fn checkpoint(&mut self) {
        match self.give_up {
            Some(at) => tokio::time::sleep_until(at).await,
            // An error means the runner is gone, which `done` sees too.
            None => {
                let _ = self.stop.changed().await;
            }
        }
    }

    fn observe(&self, what: Observation) {
        self.workload.observe(self.id, what);
    }
}
