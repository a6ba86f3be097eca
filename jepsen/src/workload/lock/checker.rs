//! The lock workload's checker (see [`super`] for what the clients do and record).
//!
//! 1. Mutual exclusion as clients see it: a process holds the lock from its acquire's ok
//!    completion to its release's invoke. Two holds of different processes that overlap in time
//!    are reported. The server grants the lock in fence order and only once the previous lock key
//!    is gone, which happens at the earlier holder's Unlock (sent after its hold ends) or at its
//!    lease's expiry. So an overlap is explained when the earlier holder's (smaller fence) lease
//!    lapsed during its hold: the lock was lost to expiry while the client still acted on it.
//!    That is the lock working as designed, and is reported but valid. An overlap where the
//!    earlier holder's lease was proven alive throughout is a broken lock: invalid. So is a
//!    fenced append that found the list changed by another append while its own lock key
//!    existed: that append's holder was granted the lock while the other's key existed (lock
//!    keys never come back), whatever the leases did.
//! 2. Fencing: the final list is the fenced writes in commit order. Its fences must not decrease
//!    (each fence one contiguous run); every ok fenced write must be in it exactly once, with its
//!    fence; nothing else may be (no failed write, no token written twice, no unknown token).
//!    Anything else is invalid, as are final reads that disagree (a later one must extend an
//!    earlier one: only late unknown writes may land between them).
//! 3. Lost updates of the unfenced counter: the final counter against the ok increments.
//!    `ok - final` (at least) were lost; informational, as expected under faults as in Jepsen's
//!    etcd analysis. A counter above every increment attempted is invalid (writes were invented).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use super::{
    COUNTER_KEY, EXAMPLES, FENCED_KEY, FENCED_OUT, GRANTED_GONE, LEASE_OK, LIST_CHANGED, LOCK_NAME,
};
use crate::checker::Verdict;
use crate::history::{Operation, Process, Status, Value, F};
use crate::workload::Judgement;

/// What a hold's lease is known to have done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Keep-alives proved it alive throughout the hold.
    Healthy,
    /// It may have expired during the hold: why.
    Lapsed(String),
    /// The hold was never released in the history, so nothing was recorded.
    Unknown,
}

/// One process holding the lock, as the client saw it.
#[derive(Clone, Debug)]
pub struct Hold {
    pub process: Process,
    /// The lock's name (the acquire's key).
    pub lock: String,
    pub lock_key: String,
    pub fence: i64,
    /// The acquire's ok completion.
    pub start: u64,
    /// The release's invoke; `None` when the history has none (held to its end).
    pub end: Option<u64>,
    pub lease: LeaseState,
}

impl Hold {
    fn end_or_max(&self) -> u64 {
        self.end.unwrap_or(u64::MAX)
    }
}

/// Two holds of different processes overlapping in time; `earlier` has the smaller fence.
#[derive(Clone, Debug)]
pub struct Overlap {
    pub earlier: Hold,
    pub later: Hold,
    /// When both held it.
    pub from: u64,
    pub to: Option<u64>,
    /// Why it is allowed (the earlier holder's lease lapsed), or `None`: a broken lock.
    pub excuse: Option<String>,
}

/// The fenced writes and the final list.
#[derive(Clone, Debug, Default)]
pub struct Fencing {
    pub ok: usize,
    /// Failed because the lock was no longer theirs.
    pub fenced_out: usize,
    /// Failed because another append got in while their lock key existed: each is proof that
    /// the server granted the lock while an older lock key existed (invalid).
    pub changed_under_fence: Vec<(Process, i64, u64)>,
    /// Failed otherwise (the read of the list failed).
    pub other_fail: usize,
    pub info: usize,
    /// Unknown writes found in the final list.
    pub info_applied: usize,
    /// The final list as `(fence, token)`; `None` when no final read of it succeeded.
    pub list: Option<Vec<(i64, i64)>>,
    /// Distinct fences in the list (its runs, when it is in order).
    pub runs: usize,
    /// Invalid findings, each a readable sentence.
    pub violations: Vec<String>,
}

/// The unfenced counter.
#[derive(Clone, Debug, Default)]
pub struct Counter {
    pub ok: usize,
    pub info: usize,
    /// The last final read (absent is 0); `None` when none succeeded.
    pub last: Option<i64>,
    /// Ok increments that wrote a value another ok increment also wrote.
    pub duplicates: usize,
    pub violations: Vec<String>,
}

impl Counter {
    /// At least this many ok increments were lost.
    pub fn lost(&self) -> Option<usize> {
        let last = self.last?;
        Some(usize::try_from(self.ok as i64 - last).unwrap_or(0))
    }
}

#[derive(Clone, Debug, Default)]
pub struct LockReport {
    pub holds: Vec<Hold>,
    /// Acquires by outcome: ok, fail, info.
    pub acquires: (usize, usize, usize),
    /// Why some acquires failed (the first error), e.g. a server without the Lock service.
    pub acquire_error: Option<String>,
    /// Acquires whose Lock RPC answered with a lock key that was gone when read right after:
    /// granted after (or just before) the lease expired. Recorded `info`.
    pub granted_gone: usize,
    pub overlaps: Vec<Overlap>,
    /// Ok unfenced increments of an earlier holder that completed while a later holder held
    /// the lock too: writes made by a client that had lost the lock without knowing it.
    pub stale_increments: usize,
    pub fencing: Fencing,
    pub counter: Counter,
    /// Final reads that disagree, and histories that make no sense.
    pub malformed: Vec<String>,
}

/// Judges a lock workload history (see the module documentation).
pub fn check_lock(ops: &[Operation]) -> LockReport {
    let mut report = LockReport::default();
    let mut open: HashMap<Process, usize> = HashMap::new();
    for op in ops {
        match op.f {
            F::Acquire => match op.status {
                Status::Ok => match op.result.clone() {
                    Value::List(held) => match held.as_slice() {
                        [Value::Str(lock_key), Value::Int(fence)] => {
                            report.acquires.0 += 1;
                            open.insert(op.process, report.holds.len());
                            report.holds.push(Hold {
                                process: op.process,
                                lock: op.key.clone(),
                                lock_key: lock_key.clone(),
                                fence: *fence,
                                start: op.complete_time.unwrap_or(op.invoke_time),
                                end: None,
                                lease: LeaseState::Unknown,
                            });
                        }
                        _ => report
                            .malformed
                            .push(format!("an acquire's result {}", op.result)),
                    },
                    other => report
                        .malformed
                        .push(format!("an acquire's result {other}")),
                },
                Status::Fail => {
                    report.acquires.1 += 1;
                    if report.acquire_error.is_none() {
                        report.acquire_error = op.error.clone();
                    }
                }
                Status::Info => {
                    report.acquires.2 += 1;
                    if op
                        .error
                        .as_deref()
                        .is_some_and(|e| e.starts_with(GRANTED_GONE))
                    {
                        report.granted_gone += 1;
                    }
                }
            },
            F::Release => {
                if let Some(index) = open.remove(&op.process) {
                    let hold = &mut report.holds[index];
                    hold.end = Some(op.invoke_time);
                    hold.lease = match &op.value {
                        Value::List(v) => match v.get(2) {
                            Some(Value::Str(h)) if h == LEASE_OK => LeaseState::Healthy,
                            Some(Value::Str(h)) => LeaseState::Lapsed(h.clone()),
                            _ => LeaseState::Unknown,
                        },
                        _ => LeaseState::Unknown,
                    };
                }
            }
            _ => {}
        }
    }
    report.overlaps = overlaps(&report.holds);
    report.stale_increments = ops
        .iter()
        .filter(|op| op.f == F::Write && op.key == COUNTER_KEY && op.status == Status::Ok)
        .filter(|op| {
            let done = op.complete_time.unwrap_or(u64::MAX);
            report.overlaps.iter().any(|o| {
                o.earlier.process == op.process
                    && op.invoke_time >= o.earlier.start
                    && done > o.from
                    && done <= o.to.unwrap_or(u64::MAX)
            })
        })
        .count();
    report.fencing = check_fencing(ops, &mut report.malformed);
    report.counter = check_counter(ops, &mut report.malformed);
    report
}

fn overlaps(holds: &[Hold]) -> Vec<Overlap> {
    let mut by_lock: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for hold in holds {
        by_lock.entry(&hold.lock).or_default().push(hold);
    }
    let mut found = Vec::new();
    for holds in by_lock.values_mut() {
        holds.sort_by_key(|h| (h.start, h.process));
        for (i, a) in holds.iter().enumerate() {
            for b in &holds[i + 1..] {
                if b.start >= a.end_or_max() {
                    break;
                }
                if a.process == b.process {
                    continue;
                }
                let (earlier, later) = if b.fence < a.fence {
                    (*b, *a)
                } else {
                    (*a, *b)
                };
                let excuse = if earlier.fence == later.fence {
                    None
                } else {
                    match &earlier.lease {
                        LeaseState::Healthy => None,
                        LeaseState::Lapsed(why) => Some(why.clone()),
                        LeaseState::Unknown => Some(
                            "the earlier holder never released, so its lease's health is unknown"
                                .to_owned(),
                        ),
                    }
                };
                let to = match (a.end, b.end) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                };
                found.push(Overlap {
                    earlier: earlier.clone(),
                    later: later.clone(),
                    from: b.start,
                    to,
                    excuse,
                });
            }
        }
    }
    found.sort_by_key(|o| o.from);
    found
}

/// `[fence, token]` (a fenced write's value, or an entry of the list).
fn fence_token(value: &Value) -> Option<(i64, i64)> {
    match value {
        Value::List(pair) => match pair.as_slice() {
            [Value::Int(fence), Value::Int(token)] => Some((*fence, *token)),
            _ => None,
        },
        _ => None,
    }
}

/// `[[fence, token], …]` (or `null`: empty) as pairs.
fn list_entries(value: &Value) -> Option<Vec<(i64, i64)>> {
    match value {
        Value::Null => Some(Vec::new()),
        Value::List(entries) => entries.iter().map(fence_token).collect(),
        _ => None,
    }
}

/// The ok final reads of `key`, in completion order.
fn final_reads<'a>(ops: &'a [Operation], key: &str) -> Vec<&'a Operation> {
    let mut reads: Vec<&Operation> = ops
        .iter()
        .filter(|op| op.f == F::Read && op.key == key && op.status == Status::Ok)
        .collect();
    reads.sort_by_key(|op| op.complete_time);
    reads
}

fn check_fencing(ops: &[Operation], malformed: &mut Vec<String>) -> Fencing {
    let mut fencing = Fencing::default();
    // token -> (fence, status, process)
    let mut writes: HashMap<i64, (i64, Status, Process)> = HashMap::new();
    for op in ops
        .iter()
        .filter(|op| op.f == F::Write && op.key == FENCED_KEY)
    {
        let Some((fence, token)) = fence_token(&op.value) else {
            malformed.push(format!("a fenced write's value {}", op.value));
            continue;
        };
        let error = op.error.as_deref().unwrap_or_default();
        match op.status {
            Status::Ok => fencing.ok += 1,
            Status::Info => fencing.info += 1,
            Status::Fail if error.starts_with(FENCED_OUT) => fencing.fenced_out += 1,
            Status::Fail if error.starts_with(LIST_CHANGED) => {
                fencing
                    .changed_under_fence
                    .push((op.process, fence, op.invoke_time));
            }
            Status::Fail => fencing.other_fail += 1,
        }
        if writes
            .insert(token, (fence, op.status, op.process))
            .is_some()
        {
            malformed.push(format!("token {token} was used by two fenced writes"));
        }
    }

    let reads = final_reads(ops, FENCED_KEY);
    let mut previous: Option<Vec<(i64, i64)>> = None;
    for read in reads {
        let Some(list) = list_entries(&read.result) else {
            malformed.push(format!(
                "a final read of {FENCED_KEY} returned {}",
                read.result
            ));
            continue;
        };
        if let Some(prev) = &previous {
            if !list.starts_with(prev) {
                fencing.violations.push(format!(
                    "final reads disagree: process {} read {} entries at {} that do not extend \
                     the {} read before",
                    read.process,
                    list.len(),
                    secs(read.complete_time.unwrap_or(0)),
                    prev.len()
                ));
            }
        }
        previous = Some(list);
    }
    let Some(list) = previous else {
        return fencing;
    };

    let mut position: HashMap<i64, usize> = HashMap::new();
    let mut inversions = Vec::new();
    for (i, &(fence, token)) in list.iter().enumerate() {
        if let Some(first) = position.insert(token, i) {
            fencing.violations.push(format!(
                "token {token} is in the final list twice (entries {first} and {i})"
            ));
        }
        match writes.get(&token) {
            None => fencing.violations.push(format!(
                "entry {i} ({fence}:{token}) was never written: no fenced write has token {token}"
            )),
            Some(&(written, status, process)) => {
                if written != fence {
                    fencing.violations.push(format!(
                        "entry {i} ({fence}:{token}) has fence {fence}, but process {process} \
                         wrote it with fence {written}"
                    ));
                }
                match status {
                    Status::Fail => fencing.violations.push(format!(
                        "entry {i} ({fence}:{token}) is process {process}'s fenced write, which \
                         failed: a write reported not done took effect"
                    )),
                    Status::Info => fencing.info_applied += 1,
                    Status::Ok => {}
                }
            }
        }
        if i > 0 && list[i - 1].0 > fence {
            inversions.push(i);
        }
    }
    fencing.runs = list.iter().map(|(f, _)| f).collect::<BTreeSet<_>>().len();
    if !inversions.is_empty() {
        let examples: Vec<String> = inversions
            .iter()
            .take(EXAMPLES)
            .map(|&i| {
                let (f0, t0) = list[i - 1];
                let (f1, t1) = list[i];
                let by = |t: i64| writes.get(&t).map_or("?".to_owned(), |w| w.2.to_string());
                format!(
                    "entry {i} {f1}:{t1} (process {}) after {f0}:{t0} (process {})",
                    by(t1),
                    by(t0)
                )
            })
            .collect();
        fencing.violations.push(format!(
            "fences decrease {} times in the final list: a holder with an older lock wrote \
             after a newer holder; {}",
            inversions.len(),
            examples.join("; ")
        ));
    }
    let mut missing: Vec<(i64, i64, Process)> = writes
        .iter()
        .filter(|(token, w)| w.1 == Status::Ok && !position.contains_key(token))
        .map(|(&token, &(fence, _, process))| (token, fence, process))
        .collect();
    missing.sort_unstable();
    if !missing.is_empty() {
        let examples: Vec<String> = missing
            .iter()
            .take(EXAMPLES)
            .map(|(token, fence, process)| format!("{fence}:{token} by process {process}"))
            .collect();
        fencing.violations.push(format!(
            "{} ok fenced writes are missing from the final list (lost): {}",
            missing.len(),
            examples.join(", ")
        ));
    }
    fencing.list = Some(list);
    fencing
}

fn check_counter(ops: &[Operation], malformed: &mut Vec<String>) -> Counter {
    let mut counter = Counter::default();
    let mut written: HashMap<i64, usize> = HashMap::new();
    for op in ops
        .iter()
        .filter(|op| op.f == F::Write && op.key == COUNTER_KEY)
    {
        match op.status {
            Status::Ok => {
                counter.ok += 1;
                match &op.result {
                    Value::List(pair) => match pair.as_slice() {
                        [Value::Int(_), Value::Int(new)] => *written.entry(*new).or_default() += 1,
                        _ => malformed.push(format!("an increment's result {}", op.result)),
                    },
                    _ => malformed.push(format!("an increment's result {}", op.result)),
                }
            }
            Status::Info => counter.info += 1,
            Status::Fail => {}
        }
    }
    counter.duplicates = written.values().map(|n| n - 1).sum();
    let mut previous: Option<i64> = None;
    for read in final_reads(ops, COUNTER_KEY) {
        let value = match read.result {
            Value::Null => 0,
            Value::Int(v) => v,
            ref other => {
                malformed.push(format!("a final read of {COUNTER_KEY} returned {other}"));
                continue;
            }
        };
        if previous.is_some_and(|p| value < p) {
            counter.violations.push(format!(
                "final reads disagree: process {} read the counter as {value} at {}, after {} \
                 was read",
                read.process,
                secs(read.complete_time.unwrap_or(0)),
                previous.unwrap_or(0)
            ));
        }
        previous = Some(value);
    }
    counter.last = previous;
    if let Some(last) = counter.last {
        if last > (counter.ok + counter.info) as i64 {
            counter.violations.push(format!(
                "the counter ended at {last}, above the {} increments attempted ({} ok, {} \
                 unknown): writes were invented or repeated",
                counter.ok + counter.info,
                counter.ok,
                counter.info
            ));
        }
    }
    counter
}

fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

fn span(from: u64, to: Option<u64>) -> String {
    match to {
        Some(to) => format!(
            "{}..{} ({:.1}ms)",
            secs(from),
            secs(to),
            (to - from) as f64 / 1e6
        ),
        None => format!("{}..end of history", secs(from)),
    }
}

impl LockReport {
    pub fn unexcused_overlaps(&self) -> impl Iterator<Item = &Overlap> {
        self.overlaps.iter().filter(|o| o.excuse.is_none())
    }

    /// Whether the lock itself was seen granted to two holders at once: holds that overlapped
    /// while the earlier one's lease was proven alive, or appends that another got in under.
    pub fn exclusion_broken(&self) -> bool {
        self.unexcused_overlaps().next().is_some() || !self.fencing.changed_under_fence.is_empty()
    }

    pub fn verdict(&self) -> Verdict {
        if self.exclusion_broken()
            || !self.fencing.violations.is_empty()
            || !self.counter.violations.is_empty()
            || !self.malformed.is_empty()
        {
            Verdict::Invalid
        } else if self.holds.is_empty() || self.fencing.list.is_none() {
            Verdict::Unknown
        } else {
            Verdict::Valid
        }
    }

    /// What was not valid, for the summary.
    pub fn failed(&self) -> BTreeMap<String, String> {
        let mut failed = BTreeMap::new();
        let invalid = Verdict::Invalid.to_string();
        if self.exclusion_broken() {
            failed.insert("mutual exclusion".to_owned(), invalid.clone());
        }
        if !self.fencing.violations.is_empty() {
            failed.insert("fencing".to_owned(), invalid.clone());
        }
        if !self.counter.violations.is_empty() {
            failed.insert("counter".to_owned(), invalid.clone());
        }
        if !self.malformed.is_empty() {
            failed.insert("history".to_owned(), invalid);
        }
        if failed.is_empty() && self.verdict() == Verdict::Unknown {
            let what = if self.holds.is_empty() {
                "no acquire succeeded"
            } else {
                "no final read of the fenced list"
            };
            failed.insert(LOCK_NAME.to_owned(), format!("unknown ({what})"));
        }
        failed
    }

    /// The human summary of (1) to (3) first, then the details.
    pub fn explanation(&self) -> String {
        let mut out = String::new();
        let processes: BTreeSet<Process> = self.holds.iter().map(|h| h.process).collect();
        let lapsed_holds = self
            .holds
            .iter()
            .filter(|h| h.lease != LeaseState::Healthy)
            .count();
        let (ok, fail, info) = self.acquires;
        let _ = writeln!(
            out,
            "lock {LOCK_NAME:?}: {} holds by {} processes (acquires: {ok} ok, {fail} fail, {info} \
             unknown{}); {lapsed_holds} holds were not proven to keep their lease throughout",
            self.holds.len(),
            processes.len(),
            if self.granted_gone > 0 {
                format!(
                    ", {} of them granted a lock key that was already gone when read",
                    self.granted_gone
                )
            } else {
                String::new()
            }
        );
        if self.holds.is_empty() {
            let _ = writeln!(
                out,
                "nothing was tested: no acquire succeeded{}",
                self.acquire_error
                    .as_ref()
                    .map(|e| format!(" (the first failure: {e})"))
                    .unwrap_or_default()
            );
            if self.verdict() != Verdict::Invalid {
                return out;
            }
        }

        // (1)
        let unexcused = self.unexcused_overlaps().count();
        let excused = self.overlaps.len() - unexcused;
        let lost_holds = self
            .overlaps
            .iter()
            .filter(|o| o.excuse.is_some())
            .map(|o| (o.earlier.process, o.earlier.fence))
            .collect::<BTreeSet<_>>()
            .len();
        let _ = if self.overlaps.is_empty() {
            writeln!(
                out,
                "(1) mutual exclusion: held in this run: no two holds overlapped in time"
            )
        } else if unexcused == 0 {
            writeln!(
                out,
                "(1) mutual exclusion: NOT guaranteed: {excused} pairs of holds overlapped in \
                 time, each after the earlier holder's lease lapsed ({lost_holds} holds lost the \
                 lock to lease expiry while their clients went on as the holder). This is what a \
                 lease-based lock does (reported, not invalid)"
            )
        } else {
            writeln!(
                out,
                "(1) mutual exclusion: VIOLATED: {unexcused} pairs of holds overlapped while the \
                 earlier holder's lease was proven alive (INVALID: the lock was granted to two \
                 holders at once); {excused} more overlapped after a lease lapsed"
            )
        };
        let changed = &self.fencing.changed_under_fence;
        if !changed.is_empty() {
            let examples: Vec<String> = changed
                .iter()
                .take(EXAMPLES)
                .map(|(p, fence, t)| format!("process {p} (fence {fence}) at {}", secs(*t)))
                .collect();
            let _ = writeln!(
                out,
                "    INVALID: {} fenced appends found {FENCED_KEY} changed by another append while \
                 their own lock key still existed: the lock was granted while an older lock key \
                 existed: {}",
                changed.len(),
                examples.join(", ")
            );
        }

        // (2)
        let f = &self.fencing;
        let counts = format!(
            "{} ok fenced writes, {} fenced out, {} failed otherwise, {} unknown ({} of them \
             applied)",
            f.ok, f.fenced_out, f.other_fail, f.info, f.info_applied
        );
        let _ = match (&f.list, f.violations.is_empty()) {
            (None, true) => writeln!(
                out,
                "(2) fencing: NOT CHECKED: no final read of {FENCED_KEY} succeeded; {counts}"
            ),
            (Some(list), true) => writeln!(
                out,
                "(2) fencing: held: the final list has {} entries; every ok fenced write is in \
                 it exactly once, and fences never decrease ({} fences, each one contiguous \
                 run); {counts}",
                list.len(),
                f.runs
            ),
            (_, false) => writeln!(
                out,
                "(2) fencing: VIOLATED (INVALID): {}; {counts}",
                f.violations.join("; ")
            ),
        };

        // (3)
        let c = &self.counter;
        let _ = match (c.last, c.lost()) {
            (Some(last), Some(lost)) => writeln!(
                out,
                "(3) unfenced counter: {} lost updates without fencing: {} ok increments ({} \
                 unknown) and the counter ended at {last}{}{}{}",
                if c.info == 0 || lost == 0 {
                    lost.to_string()
                } else {
                    format!("at least {lost}")
                },
                c.ok,
                c.info,
                if c.duplicates > 0 {
                    format!(
                        "; {} ok increments wrote a value another ok increment had written",
                        c.duplicates
                    )
                } else {
                    String::new()
                },
                if self.stale_increments > 0 {
                    format!(
                        "; {} ok increments completed while their holder overlapped a later one",
                        self.stale_increments
                    )
                } else {
                    String::new()
                },
                if lost > 0 {
                    " (informational: what the lock alone does not prevent)"
                } else {
                    ""
                }
            ),
            _ => writeln!(
                out,
                "(3) unfenced counter: no final read of {COUNTER_KEY} succeeded; {} ok \
                 increments",
                c.ok
            ),
        };
        for v in &c.violations {
            let _ = writeln!(out, "    INVALID: {v}");
        }
        for m in &self.malformed {
            let _ = writeln!(out, "INVALID history: {m}");
        }

        if !self.overlaps.is_empty() {
            let _ = writeln!(out, "\nOverlapping holds (earlier holder first):");
            let mut listed: Vec<&Overlap> = self.unexcused_overlaps().take(EXAMPLES).collect();
            listed.extend(
                self.overlaps
                    .iter()
                    .filter(|o| o.excuse.is_some())
                    .take(EXAMPLES),
            );
            for o in listed {
                let hold = |h: &Hold| {
                    format!(
                        "process {} held {} (fence {}) {}",
                        h.process,
                        h.lock_key,
                        h.fence,
                        span(h.start, h.end)
                    )
                };
                let _ = writeln!(
                    out,
                    "- both held it {}: {}; {}; {}",
                    span(o.from, o.to),
                    hold(&o.earlier),
                    hold(&o.later),
                    match &o.excuse {
                        None => "earlier holder's lease proven alive: INVALID".to_owned(),
                        Some(why) => format!("earlier holder's {why}"),
                    }
                );
            }
            if self.overlaps.len() > 2 * EXAMPLES {
                let _ = writeln!(out, "  ({} overlaps in all)", self.overlaps.len());
            }
        }
        out
    }

    pub fn judgement(&self) -> Judgement {
        Judgement {
            verdict: self.verdict(),
            explanation: self.explanation(),
            failed: self.failed(),
        }
    }
}
