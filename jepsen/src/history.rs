//! Operation histories (JSON Lines).
//!
//! Every client operation is recorded as two events: an `invoke` when the client is about to send
//! it and a completion when it knows the outcome: `ok` (it happened), `fail` (it certainly did not
//! happen) or `info` (unknown: a timeout or a dropped connection, it may take effect at any later
//! time or never). One JSON object per line:
//!
//! ```text
//! {"process":0,"type":"invoke","f":"write","key":"x","value":1,"time":123}
//! {"process":0,"type":"ok","f":"write","key":"x","value":1,"time":456}
//! ```
//!
//! `time` is in nanoseconds since the start of the run. Unknown fields are ignored when loading, so
//! later workloads can add optional fields without older tools rejecting their histories.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The client that performed an operation. A process has at most one operation outstanding.
pub type Process = u64;

/// What an event records: the start of an operation or one of the three ways it can end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// The operation's function. Each workload uses some of them:
///
/// - register: `read`, `write`, `cas` (value `[expected, new]`);
/// - append: `txn`, whose value is a list of micro-operations `["append", key, n]` and
///   `["r", key, null]`, and whose ok result has each read's list filled in;
/// - watch: `write` (result `[value, revision]`), `read` at the end;
/// - lease: `grant`, `revoke`, `keepalive` (value: the lease, ok result: the TTL answered),
///   `write` (value `[value, lease]`), `read`;
/// - lock: `acquire`, `release`, and `write`/`read` of the protected data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    Read,
    Write,
    Cas,
    Txn,
    Grant,
    Revoke,
    Acquire,
    Release,
    KeepAlive,
}

impl fmt::Display for F {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            F::Read => "read",
            F::Write => "write",
            F::Cas => "cas",
            F::Txn => "txn",
            F::Grant => "grant",
            F::Revoke => "revoke",
            F::Acquire => "acquire",
            F::Release => "release",
            F::KeepAlive => "keepalive",
        })
    }
}

/// An argument or result: `null`, an integer, a string (a key or a micro-operation's name), or
/// a list (a cas is `[expected, new]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    #[default]
    Null,
    Int(i64),
    Str(String),
    List(Vec<Value>),
}

impl Value {
    /// The value of a register: an integer, or `None` for `null` (the key is absent).
    pub fn as_register(&self) -> Option<Option<i64>> {
        match self {
            Value::Null => Some(None),
            Value::Int(v) => Some(Some(*v)),
            Value::Str(_) | Value::List(_) => None,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Value::Null, Value::Int)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// One line of a history file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: F,
    pub key: String,
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run.
    pub time: u64,
    /// Why an operation failed or has an unknown outcome; only for reading histories by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    Fail,
    /// Unknown outcome, including operations that never completed before the history ended.
    Info,
}

/// An invoke paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub process: Process,
    pub f: F,
    pub key: String,
    /// The invoke's value: what was asked for.
    pub value: Value,
    /// The completion's value: what came back (`null` when there was no completion).
    pub result: Value,
    pub status: Status,
    pub invoke_time: u64,
    /// `None` when the history ends before the operation completed.
    pub complete_time: Option<u64>,
    pub error: Option<String>,
}

/// The events of one run, in the order they happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub events: Vec<Event>,
}

impl History {
    /// Reads a JSON Lines history; blank lines are skipped.
    pub fn read_jsonl(reader: impl BufRead) -> anyhow::Result<Self> {
        let mut events = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading line {}", i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(&line)
                .with_context(|| format!("line {}: not a history event: {line}", i + 1))?;
            events.push(event);
        }
        Ok(History { events })
    }

    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Self::read_jsonl(BufReader::new(file)).with_context(|| format!("in {}", path.display()))
    }

    pub fn write_jsonl(&self, mut writer: impl Write) -> anyhow::Result<()> {
        for event in &self.events {
            serde_json::to_writer(&mut writer, event)?;
            writer.write_all(b"\n")?;
        }
        writer.flush()?;
        Ok(())
    }

    pub fn save(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        self.write_jsonl(BufWriter::new(file))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Pairs every invoke with the next completion of the same process, in invoke order. An
    /// invoke without a completion becomes an `Info` operation: it may still take effect.
    pub fn operations(&self) -> anyhow::Result<Vec<Operation>> {
        let mut ops: Vec<Operation> = Vec::new();
        let mut outstanding: HashMap<Process, usize> = HashMap::new();
        for (i, event) in self.events.iter().enumerate() {
            let at = || {
                let json = serde_json::to_string(event).unwrap_or_default();
                format!("event {} {json}", i + 1)
            };
            if event.kind == EventType::Invoke {
                if let Some(&earlier) = outstanding.get(&event.process) {
                    bail!(
                        "{}: process {} invokes while its operation invoked at time {} is \
                         still outstanding",
                        at(),
                        event.process,
                        ops[earlier].invoke_time
                    );
                }
                outstanding.insert(event.process, ops.len());
                ops.push(Operation {
                    process: event.process,
                    f: event.f,
                    key: event.key.clone(),
                    value: event.value.clone(),
                    result: Value::Null,
                    status: Status::Info,
                    invoke_time: event.time,
                    complete_time: None,
                    error: None,
                });
                continue;
            }
            let Some(index) = outstanding.remove(&event.process) else {
                bail!("{}: a completion without an outstanding invoke", at());
            };
            let op = &mut ops[index];
            if op.f != event.f || op.key != event.key {
                bail!(
                    "{}: completes {} {:?}, but {} {:?} was invoked",
                    at(),
                    event.f,
                    event.key,
                    op.f,
                    op.key
                );
            }
            if event.time < op.invoke_time {
                bail!(
                    "{}: completes before its invoke at time {}",
                    at(),
                    op.invoke_time
                );
            }
            op.status = match event.kind {
                EventType::Ok => Status::Ok,
                EventType::Fail => Status::Fail,
                EventType::Info | EventType::Invoke => Status::Info,
            };
            op.result = event.value.clone();
            op.complete_time = Some(event.time);
            op.error = event.error.clone();
        }
        Ok(ops)
    }
}

/// Identifies an outstanding operation of a [`Recorder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(u64);

/// How an operation ended, as told to [`Recorder::complete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It happened; the value is what it returned (for writes and cas, the value written).
    Ok(Value),
    /// It certainly did not happen (for example a cas whose comparison failed).
    Fail(String),
    /// It may or may not have happened, now or later (timeout, lost connection).
    Info(String),
}

struct Outstanding {
    process: Process,
    f: F,
    key: String,
    value: Value,
}

#[derive(Default)]
struct Recording {
    events: Vec<Event>,
    outstanding: HashMap<OpId, Outstanding>,
    next_id: u64,
}

/// Records a history from many concurrent clients (tokio tasks or threads).
///
/// Times are taken under the recorder's lock, so events are stored in time order and an invoke
/// recorded before a request is sent precedes everything the request causes.
pub struct Recorder {
    start: Instant,
    recording: Mutex<Recording>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Starts the run's clock.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            recording: Mutex::new(Recording::default()),
        }
    }

    /// Records the start of an operation; call it just before sending the request.
    ///
    /// # Panics
    ///
    /// If `process` already has an outstanding operation: the history would be unreadable.
    pub fn invoke(&self, process: Process, f: F, key: impl Into<String>, value: Value) -> OpId {
        let key = key.into();
        let mut rec = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            !rec.outstanding.values().any(|o| o.process == process),
            "process {process} invoked {f} {key:?} while it has an operation outstanding"
        );
        let id = OpId(rec.next_id);
        rec.next_id += 1;
        let time = self.now();
        rec.events.push(Event {
            process,
            kind: EventType::Invoke,
            f,
            key: key.clone(),
            value: value.clone(),
            time,
            error: None,
        });
        rec.outstanding.insert(
            id,
            Outstanding {
                process,
                f,
                key,
                value,
            },
        );
        id
    }

    /// Records how the operation ended. After an `Info` outcome the process may invoke again: the
    /// checker treats the unknown operation as still running.
    ///
    /// # Panics
    ///
    /// If the operation was already completed.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let mut rec = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        let op = rec
            .outstanding
            .remove(&id)
            .expect("operation completed twice");
        let (kind, value, error) = match outcome {
            Outcome::Ok(value) => (EventType::Ok, value, None),
            Outcome::Fail(error) => (EventType::Fail, op.value, Some(error)),
            Outcome::Info(error) => (EventType::Info, op.value, Some(error)),
        };
        let time = self.now();
        rec.events.push(Event {
            process: op.process,
            kind,
            f: op.f,
            key: op.key,
            value,
            time,
            error,
        });
    }

    /// The events so far; operations still outstanding appear as invokes only.
    pub fn history(&self) -> History {
        let rec = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        History {
            events: rec.events.clone(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn event(process: Process, kind: EventType, f: F, value: Value, time: u64) -> Event {
        Event {
            process,
            kind,
            f,
            key: "x".to_owned(),
            value,
            time,
            error: None,
        }
    }

    #[test]
    fn events_serialize_exactly_as_documented() {
        let write = event(0, EventType::Invoke, F::Write, Value::Int(1), 123);
        assert_eq!(
            serde_json::to_string(&write).unwrap(),
            r#"{"process":0,"type":"invoke","f":"write","key":"x","value":1,"time":123}"#
        );
        let cas = event(
            3,
            EventType::Ok,
            F::Cas,
            Value::List(vec![Value::Null, 2.into()]),
            9,
        );
        assert_eq!(
            serde_json::to_string(&cas).unwrap(),
            r#"{"process":3,"type":"ok","f":"cas","key":"x","value":[null,2],"time":9}"#
        );
        let mut timeout = event(1, EventType::Info, F::Read, Value::Null, 7);
        timeout.error = Some("deadline exceeded".to_owned());
        assert_eq!(
            serde_json::to_string(&timeout).unwrap(),
            r#"{"process":1,"type":"info","f":"read","key":"x","value":null,"time":7,"error":"deadline exceeded"}"#
        );
    }

    #[test]
    fn loading_accepts_every_event_shape_and_ignores_unknown_fields() {
        let text = r#"
{"process":0,"type":"invoke","f":"read","key":"x","value":null,"time":1}
{"process":0,"type":"ok","f":"read","key":"x","value":null,"time":2}
{"process":1,"type":"invoke","f":"cas","key":"x","value":[1,2],"time":3,"node":"n1"}

{"process":1,"type":"fail","f":"cas","key":"x","value":[1,2],"time":4,"error":"compare failed"}
{"process":2,"type":"invoke","f":"write","key":"y","time":5,"value":-9223372036854775808}
"#;
        let history = History::read_jsonl(text.as_bytes()).unwrap();
        assert_eq!(history.events.len(), 5);
        assert_eq!(history.events[1].kind, EventType::Ok);
        assert_eq!(
            history.events[2].value,
            Value::List(vec![1.into(), 2.into()])
        );
        assert_eq!(history.events[3].error.as_deref(), Some("compare failed"));
        assert_eq!(history.events[4].value, Value::Int(i64::MIN));
    }

    #[test]
    fn loading_reports_the_bad_line() {
        let text = "{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"x\",\"time\":1}\n\
                    {\"process\":0,\"type\":\"done\",\"f\":\"read\",\"key\":\"x\",\"time\":2}\n";
        let err = History::read_jsonl(text.as_bytes()).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        let float = r#"{"process":0,"type":"invoke","f":"write","key":"x","value":1.5,"time":1}"#;
        assert!(History::read_jsonl(float.as_bytes()).is_err());
    }

    #[test]
    fn jsonl_files_round_trip() {
        let history = History {
            events: vec![
                event(0, EventType::Invoke, F::Write, 5.into(), 10),
                event(0, EventType::Info, F::Write, 5.into(), 20),
                event(1, EventType::Invoke, F::Read, Value::Null, 30),
            ],
        };
        let path =
            std::env::temp_dir().join(format!("oxcd-jepsen-history-{}.jsonl", std::process::id()));
        history.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let loaded = History::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert_eq!(loaded, history);
    }

    #[test]
    fn operations_pair_invokes_with_completions() {
        let history = History {
            events: vec![
                event(0, EventType::Invoke, F::Write, 1.into(), 1),
                event(1, EventType::Invoke, F::Read, Value::Null, 2),
                event(0, EventType::Ok, F::Write, 1.into(), 3),
                event(1, EventType::Ok, F::Read, 1.into(), 4),
                event(
                    0,
                    EventType::Invoke,
                    F::Cas,
                    Value::List(vec![1.into(), 2.into()]),
                    5,
                ),
                event(
                    0,
                    EventType::Fail,
                    F::Cas,
                    Value::List(vec![1.into(), 2.into()]),
                    6,
                ),
                event(1, EventType::Invoke, F::Write, 3.into(), 7),
                event(1, EventType::Info, F::Write, 3.into(), 8),
                // After an unknown outcome the process may go on.
                event(1, EventType::Invoke, F::Write, 4.into(), 9),
            ],
        };
        let ops = history.operations().unwrap();
        let summary: Vec<_> = ops
            .iter()
            .map(|op| {
                (
                    op.process,
                    op.f,
                    op.status,
                    op.invoke_time,
                    op.complete_time,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, F::Write, Status::Ok, 1, Some(3)),
                (1, F::Read, Status::Ok, 2, Some(4)),
                (0, F::Cas, Status::Fail, 5, Some(6)),
                (1, F::Write, Status::Info, 7, Some(8)),
                (1, F::Write, Status::Info, 9, None),
            ]
        );
        assert_eq!(ops[1].result, Value::Int(1));
    }

    #[test]
    fn malformed_histories_are_rejected() {
        let invoke = event(0, EventType::Invoke, F::Write, 1.into(), 5);
        let cases = [
            (vec![invoke.clone(), invoke.clone()], "still outstanding"),
            (
                vec![event(0, EventType::Ok, F::Write, 1.into(), 5)],
                "without an outstanding",
            ),
            (
                vec![
                    invoke.clone(),
                    event(0, EventType::Ok, F::Read, 1.into(), 6),
                ],
                "was invoked",
            ),
            (
                vec![
                    invoke.clone(),
                    event(0, EventType::Ok, F::Write, 1.into(), 4),
                ],
                "before",
            ),
        ];
        for (events, message) in cases {
            let err = History { events }.operations().unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn recorder_takes_events_from_many_tasks() {
        let recorder = Arc::new(Recorder::new());
        let tasks: Vec<_> = (0..8u64)
            .map(|process| {
                let recorder = Arc::clone(&recorder);
                tokio::spawn(async move {
                    for i in 0..100i64 {
                        let id = recorder.invoke(process, F::Write, "x", i.into());
                        tokio::task::yield_now().await;
                        let outcome = match i % 10 {
                            0 => Outcome::Info("timeout".to_owned()),
                            1 => Outcome::Fail("refused".to_owned()),
                            _ => Outcome::Ok(i.into()),
                        };
                        recorder.complete(id, outcome);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let history = recorder.history();
        assert_eq!(history.events.len(), 1600);
        assert!(history.events.windows(2).all(|w| w[0].time <= w[1].time));
        let ops = history.operations().unwrap();
        assert_eq!(ops.iter().filter(|op| op.status == Status::Ok).count(), 640);
        assert_eq!(
            ops.iter().filter(|op| op.status == Status::Fail).count(),
            80
        );
        let info = ops.iter().find(|op| op.status == Status::Info).unwrap();
        assert_eq!(info.error.as_deref(), Some("timeout"));
        assert_eq!(info.result, info.value);

        let mut bytes = Vec::new();
        history.write_jsonl(&mut bytes).unwrap();
        assert_eq!(History::read_jsonl(bytes.as_slice()).unwrap(), history);
    }

    #[test]
    #[should_panic(expected = "outstanding")]
    fn recorder_refuses_two_outstanding_operations_of_one_process() {
        let recorder = Recorder::new();
        recorder.invoke(0, F::Read, "x", Value::Null);
        recorder.invoke(0, F::Read, "y", Value::Null);
    }

    #[test]
    fn recorder_keeps_operations_still_outstanding_as_invokes() {
        let recorder = Recorder::new();
        let id = recorder.invoke(0, F::Read, "x", Value::Null);
        recorder.complete(id, Outcome::Info("timeout".to_owned()));
        recorder.invoke(0, F::Write, "x", 1.into());
        let ops = recorder.history().operations().unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!((ops[1].status, ops[1].complete_time), (Status::Info, None));
    }
}
