//! The watch checker: judges the watchers' streams against each other and against the history.
//!
//! etcd promises that a watch delivers every event of its range from its start revision, in
//! revision order, each once, the same events on every member; and events are the writes that
//! took effect. So:
//!
//! 1. per watcher, revisions never go back, no event comes twice (say after a reconnect), and
//!    one revision has at most one event per key;
//! 2. the events of all watchers form one map (revision, key) → event: watchers that report the
//!    same revision and key report the same event; and no watcher skips a revision of that map
//!    below the last one it got;
//! 3. the map agrees with the writes: an acknowledged write is there at the revision and key its
//!    Put answered; every event is a write that did not fail, to the same key, and no write
//!    shows up twice; the final reads see what the events say the prefix held at their revision;
//! 4. every watcher got as far as the final revision, the largest a final read returned.
//!
//! Only this workload writes to the cluster and it only puts, so every revision from 2 (a new
//! store is at revision 1) on is a put under the prefix: a revision that no watcher delivered,
//! below one that some watcher did, is an event every watcher lost.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};

use super::{Observation, Record, Stream, WatchEvent};
use crate::checker::Verdict;
use crate::history::{Operation, Status, Value, F};
use crate::workload::Judgement;

/// At most this many anomalies of a kind are spelled out; the rest are counted.
const SHOWN_PER_KIND: usize = 10;

/// Kinds of anomaly, in the order the explanation lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A watcher delivered a revision below one it had already delivered.
    OutOfOrder,
    /// A watcher delivered the same event twice.
    Duplicate,
    /// A watcher delivered two different events for one key at one revision, or two watchers
    /// delivered different events there.
    Disagreement,
    /// A watcher skipped revisions, or every watcher did.
    Gap,
    /// A watcher ended short of the final revision.
    Unreached,
    /// An acknowledged write is in no stream, or somewhere other than where its Put said.
    LostWrite,
    /// An event that no write explains: a delete, an unknown value, a failed write's value, a
    /// value on the wrong key, or one write's value at two revisions.
    Phantom,
    /// A watch canceled for compaction, though nothing compacts.
    Compacted,
    /// A final read that disagrees with the events.
    FinalRead,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::OutOfOrder => "revisions out of order",
            Kind::Duplicate => "events delivered twice",
            Kind::Disagreement => "events that disagree",
            Kind::Gap => "revisions skipped",
            Kind::Unreached => "final revision not reached",
            Kind::LostWrite => "acknowledged writes lost or misplaced",
            Kind::Phantom => "events no write explains",
            Kind::Compacted => "watches compacted",
            Kind::FinalRead => "final reads that disagree with the events",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: Kind,
    /// What is not valid: a watcher (`watcher 3 (n2)`), a key, a final read.
    pub subject: String,
    pub text: String,
}

#[derive(Clone, Debug)]
pub struct WatchReport {
    /// The largest revision a final read returned; `None` when none succeeded.
    pub final_revision: Option<i64>,
    pub watchers: usize,
    /// Events delivered, over all watchers.
    pub events: usize,
    pub anomalies: Vec<Anomaly>,
}

impl WatchReport {
    /// Invalid with any anomaly; unknown without a final revision to hold the watchers to.
    pub fn verdict(&self) -> Verdict {
        if !self.anomalies.is_empty() {
            Verdict::Invalid
        } else if self.final_revision.is_none() {
            Verdict::Unknown
        } else {
            Verdict::Valid
        }
    }

    pub fn judgement(&self) -> Judgement {
        let mut explanation = format!(
            "{} watchers delivered {} events; final revision {}\n",
            self.watchers,
            self.events,
            self.final_revision
                .map_or("unknown: no final read succeeded".to_owned(), |r| r
                    .to_string())
        );
        let mut by_kind: BTreeMap<Kind, Vec<&Anomaly>> = BTreeMap::new();
        let mut failed: BTreeMap<String, BTreeSet<Kind>> = BTreeMap::new();
        for anomaly in &self.anomalies {
            by_kind.entry(anomaly.kind).or_default().push(anomaly);
            failed
                .entry(anomaly.subject.clone())
                .or_default()
                .insert(anomaly.kind);
        }
        for (kind, anomalies) in &by_kind {
            let _ = writeln!(explanation, "\n{kind} ({}):", anomalies.len());
            for anomaly in anomalies.iter().take(SHOWN_PER_KIND) {
                let _ = writeln!(explanation, "- {}", anomaly.text);
            }
            if anomalies.len() > SHOWN_PER_KIND {
                let _ = writeln!(
                    explanation,
                    "- and {} more",
                    anomalies.len() - SHOWN_PER_KIND
                );
            }
        }
        let failed = failed
            .into_iter()
            .map(|(subject, kinds)| {
                let kinds: Vec<String> = kinds.iter().map(Kind::to_string).collect();
                (subject, format!("invalid: {}", kinds.join(", ")))
            })
            .collect();
        Judgement {
            verdict: self.verdict(),
            explanation,
            failed,
        }
    }
}

/// Checks the watchers' `streams` against each other and against the history `ops`, whose
/// final reads are the reads of `prefix`.
pub fn check_watches(ops: &[Operation], streams: &[Stream], prefix: &str) -> WatchReport {
    let mut anomalies = Vec::new();
    let writes = Writes::new(ops);
    let final_reads: Vec<FinalRead> = ops
        .iter()
        .filter(|op| op.f == F::Read && op.key == prefix && op.status == Status::Ok)
        .filter_map(FinalRead::parse)
        .collect();
    let final_revision = final_reads.iter().map(|read| read.revision).max();

    let delivered: Vec<Delivered> = streams
        .iter()
        .map(|stream| Delivered::new(stream, &mut anomalies))
        .collect();
    let union = union(&delivered, &mut anomalies);
    let last_delivered = union
        .keys()
        .next_back()
        .map_or(0, |&(revision, _)| revision);
    // Without final reads, the watchers are held to what the best of them got.
    let target = final_revision.unwrap_or(last_delivered);
    let lost = check_writes(&writes, &union, &delivered, target, &mut anomalies);
    check_coverage(&union, &delivered, &writes, target, &lost, &mut anomalies);
    if last_delivered >= target {
        for read in &final_reads {
            read.check(&union, &mut anomalies);
        }
    }
    for stream in streams {
        check_cancels(stream, &mut anomalies);
    }
    WatchReport {
        final_revision,
        watchers: streams.len(),
        events: streams
            .iter()
            .map(|s| {
                s.records
                    .iter()
                    .filter(|r| r.what.event().is_some())
                    .count()
            })
            .sum(),
        anomalies,
    }
}

fn label(stream: &Stream) -> String {
    format!("watcher {} ({})", stream.watcher, stream.member)
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// `key = value`, or `key deleted`.
fn describe(key: &str, value: Option<&Value>) -> String {
    match value {
        Some(value) => format!("{key} = {value}"),
        None => format!("{key} deleted"),
    }
}

/// The history's writes by value (values are unique).
struct Writes<'a>(HashMap<i64, &'a Operation>);

impl<'a> Writes<'a> {
    fn new(ops: &'a [Operation]) -> Self {
        Writes(
            ops.iter()
                .filter(|op| op.f == F::Write)
                .filter_map(|op| match op.value {
                    Value::Int(v) => Some((v, op)),
                    _ => None,
                })
                .collect(),
        )
    }

    /// The write of an event's value, if any: the value and the operation.
    fn get(&self, value: Option<&Value>) -> Option<(i64, &'a Operation)> {
        match value {
            Some(Value::Int(v)) => self.0.get(v).map(|op| (*v, *op)),
            _ => None,
        }
    }

    /// Acknowledged writes with the revision their Put answered (`None`: no header came back).
    fn acknowledged(&self) -> impl Iterator<Item = (&'a Operation, Option<i64>)> + '_ {
        self.0
            .values()
            .filter(|op| op.status == Status::Ok)
            .map(|op| (*op, ack_revision(op)))
    }
}

fn ack_revision(op: &Operation) -> Option<i64> {
    match &op.result {
        Value::List(items) => match items.get(1) {
            Some(Value::Int(revision)) => Some(*revision),
            _ => None,
        },
        _ => None,
    }
}

/// Who wrote what, and how it went, for explanations.
fn writer(op: &Operation) -> String {
    let outcome = match op.status {
        Status::Ok => match ack_revision(op) {
            Some(revision) => format!("ok at revision {revision}"),
            None => "ok".to_owned(),
        },
        Status::Fail => "failed".to_owned(),
        Status::Info => "outcome unknown".to_owned(),
    };
    format!(
        "process {}'s write of {} to {}, invoked at {}, {outcome}",
        op.process,
        op.value,
        op.key,
        secs(op.invoke_time)
    )
}

/// A revision and when it was delivered.
type Delivery = (i64, u64);

/// What one watcher delivered: the first delivery of each (revision, key), with its time.
struct Delivered<'a> {
    stream: &'a Stream,
    events: BTreeMap<(i64, &'a str), (Option<&'a Value>, u64)>,
    /// The largest revision it delivered; 0 for none.
    last: i64,
}

impl<'a> Delivered<'a> {
    /// Collects what `stream` delivered, reporting repeats and revisions that go back (check 1).
    fn new(stream: &'a Stream, anomalies: &mut Vec<Anomaly>) -> Self {
        let mut events = BTreeMap::new();
        let mut last = 0;
        let mut reopened: Option<&Record> = None;
        let mut report = |kind, text| {
            anomalies.push(Anomaly {
                kind,
                subject: label(stream),
                text,
            })
        };
        for record in &stream.records {
            if let Observation::Resumed { .. } = record.what {
                reopened = Some(record);
            }
            let Some(WatchEvent {
                revision,
                key,
                value,
            }) = record.what.event()
            else {
                continue;
            };
            let context = match reopened {
                Some(Record {
                    time,
                    what: Observation::Resumed { start_revision, .. },
                }) => format!(
                    " (its watch was last reopened from revision {start_revision} at {})",
                    secs(*time)
                ),
                _ => String::new(),
            };
            match events.entry((revision, key)) {
                Entry::Occupied(first) => {
                    let (first_value, first_time) = *first.get();
                    if first_value == value {
                        report(
                            Kind::Duplicate,
                            format!(
                                "{} delivered revision {revision} ({}) twice: at {} and again \
                                 at {}{context}",
                                label(stream),
                                describe(key, value),
                                secs(first_time),
                                secs(record.time)
                            ),
                        );
                    } else {
                        report(
                            Kind::Disagreement,
                            format!(
                                "{} delivered two events for {key} at revision {revision}: {} \
                                 at {} and {} at {}",
                                label(stream),
                                describe(key, first_value),
                                secs(first_time),
                                describe(key, value),
                                secs(record.time)
                            ),
                        );
                    }
                }
                Entry::Vacant(slot) => {
                    if revision < last {
                        report(
                            Kind::OutOfOrder,
                            format!(
                                "{} delivered revision {revision} ({}) at {} after revision \
                                 {last}{context}",
                                label(stream),
                                describe(key, value),
                                secs(record.time)
                            ),
                        );
                    }
                    slot.insert((value, record.time));
                    last = last.max(revision);
                }
            }
        }
        Delivered {
            stream,
            events,
            last,
        }
    }

    fn has_revision(&self, revision: i64) -> bool {
        self.events
            .range((revision, "")..)
            .next()
            .is_some_and(|(&(r, _), _)| r == revision)
    }

    /// The revisions delivered just below and just above `revision`, with their times.
    fn neighbours(&self, revision: i64) -> (Option<Delivery>, Option<Delivery>) {
        let below = self
            .events
            .range(..(revision, ""))
            .next_back()
            .map(|(&(r, _), &(_, t))| (r, t));
        let above = self
            .events
            .range((revision + 1, "")..)
            .next()
            .map(|(&(r, _), &(_, t))| (r, t));
        (below, above)
    }
}

/// Every (revision, key) any watcher delivered, with the event and the first watcher that
/// delivered it; reports watchers that disagree (check 2).
type Union<'a> = BTreeMap<(i64, &'a str), (Option<&'a Value>, &'a Stream)>;

fn union<'a>(delivered: &[Delivered<'a>], anomalies: &mut Vec<Anomaly>) -> Union<'a> {
    let mut union = Union::new();
    for watcher in delivered {
        for (&(revision, key), &(value, _)) in &watcher.events {
            match union.entry((revision, key)) {
                Entry::Vacant(slot) => {
                    slot.insert((value, watcher.stream));
                }
                Entry::Occupied(first) => {
                    let (first_value, first_stream) = *first.get();
                    if first_value != value {
                        anomalies.push(Anomaly {
                            kind: Kind::Disagreement,
                            subject: key.to_owned(),
                            text: format!(
                                "at revision {revision}, {} delivered {} but {} delivered {}",
                                label(first_stream),
                                describe(key, first_value),
                                label(watcher.stream),
                                describe(key, value)
                            ),
                        });
                    }
                }
            }
        }
    }
    union
}

/// Check 3 for writes: every event is one write that did not fail, on its key; every
/// acknowledged write is where its Put said. Returns the revisions of acknowledged writes no
/// watcher delivered.
fn check_writes(
    writes: &Writes,
    union: &Union,
    delivered: &[Delivered],
    target: i64,
    anomalies: &mut Vec<Anomaly>,
) -> BTreeSet<i64> {
    let mut places: HashMap<i64, Vec<(i64, &str)>> = HashMap::new();
    for (&(revision, key), &(value, stream)) in union {
        let seen = format!(
            "at revision {revision}, {} delivered {}",
            label(stream),
            describe(key, value)
        );
        let problem = match (value, writes.get(value)) {
            (None, _) => Some("but nothing deletes keys".to_owned()),
            (Some(_), None) => Some("which no operation wrote".to_owned()),
            (Some(_), Some((_, op))) if op.status == Status::Fail => {
                Some(format!("from a write that failed: {}", writer(op)))
            }
            (Some(_), Some((_, op))) if op.key != key => Some(format!(
                "but that value was written to another key: {}",
                writer(op)
            )),
            (Some(_), Some((written, _))) => {
                places.entry(written).or_default().push((revision, key));
                None
            }
        };
        if let Some(problem) = problem {
            anomalies.push(Anomaly {
                kind: Kind::Phantom,
                subject: key.to_owned(),
                text: format!("{seen}, {problem}"),
            });
        }
    }
    for (value, at) in &places {
        if let [(first, _), (second, key), ..] = at.as_slice() {
            anomalies.push(Anomaly {
                kind: Kind::Phantom,
                subject: (*key).to_owned(),
                text: format!(
                    "{} took effect more than once: watchers delivered it at revisions {first} \
                     and {second}",
                    writes
                        .0
                        .get(value)
                        .map_or_else(|| value.to_string(), |op| writer(op))
                ),
            });
        }
    }

    let furthest = delivered.iter().map(|w| w.last).max().unwrap_or(0);
    let mut lost = BTreeSet::new();
    for (op, revision) in writes.acknowledged() {
        let Value::Int(value) = op.value else {
            continue;
        };
        let mut report = |kind, text| {
            anomalies.push(Anomaly {
                kind,
                subject: op.key.clone(),
                text,
            })
        };
        if revision.is_some_and(|r| r > target) {
            report(
                Kind::FinalRead,
                format!(
                    "{} but the final reads, which came after it, are at revision {target}",
                    writer(op)
                ),
            );
        }
        match places.get(&value).and_then(|at| at.first()) {
            // Watchers that stopped short of the write are reported as such.
            None if revision.unwrap_or(target) <= furthest => {
                lost.extend(revision);
                report(
                    Kind::LostWrite,
                    format!("{} is in no watcher's stream", writer(op)),
                );
            }
            None => {}
            Some(&(seen_revision, seen_key))
                if revision.is_some_and(|r| r != seen_revision) || seen_key != op.key =>
            {
                report(
                    Kind::LostWrite,
                    format!(
                        "{}, but watchers delivered it at revision {seen_revision} to \
                         {seen_key}",
                        writer(op)
                    ),
                );
            }
            Some(_) => {}
        }
    }
    lost
}

/// Checks 2 and 4: every watcher delivered every revision of the union below its last, and got
/// as far as `target`; no revision is missing from every stream (bar `lost` writes, already
/// reported).
fn check_coverage(
    union: &Union,
    delivered: &[Delivered],
    writes: &Writes,
    target: i64,
    lost: &BTreeSet<i64>,
    anomalies: &mut Vec<Anomaly>,
) {
    let revisions: BTreeSet<i64> = union.keys().map(|&(revision, _)| revision).collect();
    let what_was_at = |revision: i64| {
        let events: Vec<String> = union
            .range((revision, "")..(revision + 1, ""))
            .map(|(&(_, key), &(value, _))| {
                let by = writes
                    .get(value)
                    .map_or_else(String::new, |(_, op)| format!(", {}", writer(op)));
                format!("{}{by}", describe(key, value))
            })
            .collect();
        events.join("; ")
    };
    for watcher in delivered {
        // A revision is one transaction: a watcher delivers all of its events or none.
        for (&(revision, key), &(value, stream)) in union.range(..(watcher.last + 1, "")) {
            if watcher.has_revision(revision) && !watcher.events.contains_key(&(revision, key)) {
                anomalies.push(Anomaly {
                    kind: Kind::Disagreement,
                    subject: label(watcher.stream),
                    text: format!(
                        "{} delivered revision {revision} without {}, which {} delivered there",
                        label(watcher.stream),
                        describe(key, value),
                        label(stream)
                    ),
                });
            }
        }
        let missing: Vec<i64> = revisions
            .range(..watcher.last)
            .copied()
            .filter(|&r| !watcher.has_revision(r))
            .collect();
        if let Some(&first) = missing.first() {
            let (below, above) = watcher.neighbours(first);
            let from = below.map_or(0, |(_, t)| t);
            let to = above.map_or(u64::MAX, |(_, t)| t);
            let markers: Vec<String> = watcher
                .stream
                .records
                .iter()
                .filter(|r| r.what.event().is_none() && (from..=to).contains(&r.time))
                .map(|r| format!("{} at {}", marker(&r.what), secs(r.time)))
                .collect();
            let shown: Vec<String> = missing.iter().take(10).map(i64::to_string).collect();
            anomalies.push(Anomaly {
                kind: Kind::Gap,
                subject: label(watcher.stream),
                text: format!(
                    "{} skipped {} revision(s) that other watchers delivered ({}{}); the first, \
                     revision {first} ({}), came between its revision {} and revision {}{}",
                    label(watcher.stream),
                    missing.len(),
                    shown.join(", "),
                    if missing.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    },
                    what_was_at(first),
                    below.map_or("none".to_owned(), |(r, t)| format!("{r} at {}", secs(t))),
                    above.map_or("none".to_owned(), |(r, t)| format!("{r} at {}", secs(t))),
                    if markers.is_empty() {
                        String::new()
                    } else {
                        format!(", with {} in between", markers.join(", "))
                    }
                ),
            });
        }
        // Revision 1 is the empty store's: a run without writes has no event to reach.
        if target > 1 && watcher.last < target {
            let end = watcher
                .stream
                .records
                .iter()
                .rev()
                .find(|r| r.what.event().is_none())
                .map_or(String::new(), |r| {
                    format!("; its last marker: {} at {}", marker(&r.what), secs(r.time))
                });
            anomalies.push(Anomaly {
                kind: Kind::Unreached,
                subject: label(watcher.stream),
                text: format!(
                    "{} delivered revisions up to {}, short of the final revision {target}{end}",
                    label(watcher.stream),
                    watcher.last
                ),
            });
        }
    }

    let last = revisions.last().copied().unwrap_or(0);
    let unseen: Vec<i64> = (2..last)
        .filter(|r| !revisions.contains(r) && !lost.contains(r))
        .collect();
    if let Some(first) = unseen.first() {
        anomalies.push(Anomaly {
            kind: Kind::Gap,
            subject: "every watcher".to_owned(),
            text: format!(
                "no watcher delivered revision {first} ({} revision(s) in all below {last}, the \
                 last one delivered), though every revision from 2 on is a put of this workload",
                unseen.len()
            ),
        });
    }
}

fn marker(what: &Observation) -> String {
    match what {
        Observation::Broken { error } => format!("the stream broke ({error})"),
        Observation::Resumed {
            start_revision,
            attempts,
        } => format!("reopened from revision {start_revision} after {attempts} attempt(s)"),
        Observation::Canceled {
            reason,
            compact_revision,
        } => format!("canceled ({reason:?}, compact revision {compact_revision})"),
        Observation::End {
            final_revision,
            reached,
        } => format!(
            "ended {} final revision {final_revision}",
            if *reached { "at the" } else { "before the" }
        ),
        Observation::Put { .. } | Observation::Delete { .. } => "an event".to_owned(),
    }
}

fn check_cancels(stream: &Stream, anomalies: &mut Vec<Anomaly>) {
    for record in &stream.records {
        if let Observation::Canceled {
            compact_revision, ..
        } = record.what
        {
            if compact_revision > 0 {
                anomalies.push(Anomaly {
                    kind: Kind::Compacted,
                    subject: label(stream),
                    text: format!(
                        "{}'s watch was {} at {}, though nothing compacts",
                        label(stream),
                        marker(&record.what),
                        secs(record.time)
                    ),
                });
            }
        }
    }
}

/// An ok final read: the prefix at `revision`, key → (value, mod revision).
struct FinalRead<'a> {
    op: &'a Operation,
    revision: i64,
    kvs: BTreeMap<&'a str, (&'a Value, i64)>,
}

impl<'a> FinalRead<'a> {
    /// Reads the result `[revision, [[key, value, mod_revision], ...]]`.
    fn parse(op: &'a Operation) -> Option<Self> {
        let Value::List(result) = &op.result else {
            return None;
        };
        let [Value::Int(revision), Value::List(kvs)] = result.as_slice() else {
            return None;
        };
        let kvs = kvs
            .iter()
            .filter_map(|kv| match kv {
                Value::List(kv) => match kv.as_slice() {
                    [Value::Str(key), value, Value::Int(mod_revision)] => {
                        Some((key.as_str(), (value, *mod_revision)))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        Some(FinalRead {
            op,
            revision: *revision,
            kvs,
        })
    }

    /// Each key holds what its last event up to the read's revision says (check 3).
    fn check(&self, union: &Union, anomalies: &mut Vec<Anomaly>) {
        let mut last_events: BTreeMap<&str, (i64, Option<&Value>)> = BTreeMap::new();
        for (&(revision, key), &(value, _)) in union.range(..(self.revision + 1, "")) {
            last_events.insert(key, (revision, value));
        }
        let keys: BTreeSet<&str> = last_events.keys().chain(self.kvs.keys()).copied().collect();
        for key in keys {
            let read = self.kvs.get(key).map(|&(value, r)| (r, Some(value)));
            let from_events = last_events.get(key).filter(|(_, value)| value.is_some());
            if read == from_events.copied() {
                continue;
            }
            let what = |entry: Option<(i64, Option<&Value>)>| match entry {
                Some((revision, value)) => {
                    format!("{} (revision {revision})", describe(key, value))
                }
                None => format!("{key} absent"),
            };
            anomalies.push(Anomaly {
                kind: Kind::FinalRead,
                subject: format!("final read by process {}", self.op.process),
                text: format!(
                    "the final read by process {} at revision {} found {}, but the events up to \
                     that revision leave {}",
                    self.op.process,
                    self.revision,
                    what(read),
                    what(from_events.copied())
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests;
