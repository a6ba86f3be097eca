//! Linearizability checking.
//!
//! [`check_register`] decides whether a history of reads, writes and compare-and-sets on
//! independent registers (one per key) is linearizable: whether every operation can be given an
//! instant between its invoke and its completion at which it took effect, so that the results are
//! those of a single register. Keys are independent (a history is linearizable if and only if it
//! is for each key), so each key is searched separately, in parallel.
//!
//! Operations that failed did not happen and are left out. Operations with an unknown outcome
//! (`info`) may take effect at any time after their invoke, even after the client gave up, or
//! never; a read with an unknown outcome tells nothing and is left out too.

#[cfg(test)]
mod tests;
mod wgl;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use crate::history::{Operation, Status, Value, F};
use wgl::{RegisterOp, SearchOp};

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Give up (verdict [`Verdict::Unknown`]) on keys still being searched after this long.
    pub timeout: Option<Duration>,
}

/// Ordered from best to worst, so the verdict of a whole history is the maximum of its keys'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Valid,
    /// The search was cut short by the timeout.
    Unknown,
    Invalid,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Valid => "valid",
            Verdict::Unknown => "unknown",
            Verdict::Invalid => "invalid",
        })
    }
}

#[derive(Clone, Debug)]
pub struct KeyReport {
    pub key: String,
    /// Operations on this key in the history, including failed ones.
    pub ops: usize,
    pub verdict: Verdict,
    /// Present exactly when the verdict is [`Verdict::Invalid`].
    pub counterexample: Option<Counterexample>,
}

#[derive(Clone, Debug)]
pub struct Report {
    /// One per key, sorted by key.
    pub keys: Vec<KeyReport>,
}

impl Report {
    pub fn verdict(&self) -> Verdict {
        self.keys
            .iter()
            .map(|k| k.verdict)
            .max()
            .unwrap_or(Verdict::Valid)
    }
}

/// Why a key's history is not linearizable: the longest linearizable prefix the search found and
/// the operations that were candidates to come next, none of which leads to a linearization.
#[derive(Clone, Debug)]
pub struct Counterexample {
    pub key: String,
    /// In linearization order, each with the register's value after it (`None`: absent).
    pub linearized: Vec<(Operation, Option<i64>)>,
    /// The register's value after `linearized`.
    pub state: Option<i64>,
    /// The operations invoked before the first unplaced successful operation returned, by
    /// invoke time.
    pub stuck: Vec<Stuck>,
}

#[derive(Clone, Debug)]
pub struct Stuck {
    pub op: Operation,
    pub reason: String,
}

/// Checks a history of `read`, `write` and `cas` operations, one register per key, for
/// linearizability. Errors on operations whose values are not those of a register.
pub fn check_register(ops: &[Operation], options: &CheckOptions) -> anyhow::Result<Report> {
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let mut by_key: BTreeMap<&str, (usize, Vec<KeyOp>)> = BTreeMap::new();
    for (source, op) in ops.iter().enumerate() {
        let entry = by_key.entry(&op.key).or_default();
        entry.0 += 1;
        if let Some(op) = register_op(op)? {
            entry.1.push(KeyOp { source, op });
        }
    }
    let jobs: Vec<(&str, usize, Vec<KeyOp>)> = by_key
        .into_iter()
        .map(|(key, (count, key_ops))| (key, count, key_ops))
        .collect();
    // The biggest keys first, so that one does not start last and run alone.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&j| std::cmp::Reverse(jobs[j].2.len()));
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(jobs.len());
    let next = AtomicUsize::new(0);
    let reports: Mutex<Vec<Option<KeyReport>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some(&j) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (key, count, key_ops) = &jobs[j];
                    let report = check_key(key, *count, ops, key_ops, deadline);
                    reports.lock().unwrap_or_else(|e| e.into_inner())[j] = Some(report);
                }
            });
        }
    });
    let keys = reports
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every key was checked"))
        .collect();
    Ok(Report { keys })
}

#[derive(Clone, Copy)]
struct KeyOp {
    /// Index in the history's operations.
    source: usize,
    op: RegisterOp,
}

/// The operation as the register model sees it, or `None` when it cannot matter: failed
/// operations did not happen, and a read with an unknown outcome returned nothing.
fn register_op(op: &Operation) -> anyhow::Result<Option<RegisterOp>> {
    let what = || {
        format!(
            "process {}'s {} {:?} invoked at {}",
            op.process,
            op.f,
            op.key,
            format_time(op.invoke_time)
        )
    };
    match (op.status, op.complete_time) {
        (_, Some(t)) if t < op.invoke_time => {
            bail!("{} completes before that, at {}", what(), format_time(t))
        }
        (Status::Ok | Status::Fail, None) => bail!("{} has an outcome but no completion", what()),
        _ => {}
    }
    let parsed = match op.f {
        F::Read if op.status != Status::Ok => return Ok(None),
        F::Read => op.result.as_register().map(RegisterOp::Read),
        F::Write => match op.value {
            Value::Int(v) => Some(RegisterOp::Write(v)),
            _ => None,
        },
        F::Cas => match &op.value {
            Value::List(pair) => match pair.as_slice() {
                [expected, Value::Int(new)] => {
                    expected.as_register().map(|e| RegisterOp::Cas(e, *new))
                }
                _ => None,
            },
            _ => None,
        },
        F::Txn | F::Grant | F::Revoke | F::Acquire | F::Release | F::KeepAlive => None,
    };
    let parsed = parsed.ok_or_else(|| {
        anyhow!(
            "not a register operation (process {}, invoked at {}): {} {:?} value {} result {}",
            op.process,
            format_time(op.invoke_time),
            op.f,
            op.key,
            op.value,
            op.result
        )
    })?;
    Ok((op.status != Status::Fail).then_some(parsed))
}

fn check_key(
    key: &str,
    count: usize,
    ops: &[Operation],
    key_ops: &[KeyOp],
    deadline: Option<Instant>,
) -> KeyReport {
    let (mut key_ops, observed) = prune_unobservable(ops, key_ops);
    key_ops.sort_by_key(|k| (ops[k.source].invoke_time, k.source));
    // Values nothing reads or expects are all alike to the search: make them one value, so that
    // orders of writes that differ only in such values are one configuration, not many.
    let unread = (i64::MIN..)
        .find(|v| !observed.contains(v))
        .expect("few values observed");
    let search_ops: Vec<SearchOp> = key_ops
        .iter()
        .map(|k| {
            let op = &ops[k.source];
            SearchOp {
                op: match k.op {
                    RegisterOp::Write(v) if !observed.contains(&v) => RegisterOp::Write(unread),
                    RegisterOp::Cas(e, v) if !observed.contains(&v) => RegisterOp::Cas(e, unread),
                    other => other,
                },
                invoke: op.invoke_time,
                complete: if op.status == Status::Ok {
                    op.complete_time
                } else {
                    None
                },
            }
        })
        .collect();
    let (verdict, counterexample) = match wgl::search(&search_ops, deadline) {
        wgl::Outcome::Valid => (Verdict::Valid, None),
        wgl::Outcome::Unknown => (Verdict::Unknown, None),
        wgl::Outcome::Invalid { longest } => {
            let ce = counterexample(key, ops, &key_ops, &search_ops, &longest);
            (Verdict::Invalid, Some(ce))
        }
    };
    KeyReport {
        key: key.to_owned(),
        ops: count,
        verdict,
        counterexample,
    }
}

/// Leaves out unknown-outcome writes (and cas) of values that nothing observes: whether such a
/// write took effect cannot matter, since until the next write no operation that could succeed
/// depends on the register holding that value. Returns the operations kept and the values they
/// read or expect.
fn prune_unobservable(ops: &[Operation], key_ops: &[KeyOp]) -> (Vec<KeyOp>, HashSet<i64>) {
    let mut kept = key_ops.to_vec();
    loop {
        let observed: HashSet<i64> = kept
            .iter()
            .filter_map(|k| match k.op {
                RegisterOp::Read(v) | RegisterOp::Cas(v, _) => v,
                RegisterOp::Write(_) => None,
            })
            .collect();
        let before = kept.len();
        kept.retain(|k| match k.op {
            RegisterOp::Write(v) | RegisterOp::Cas(_, v) => {
                ops[k.source].status == Status::Ok || observed.contains(&v)
            }
            RegisterOp::Read(_) => true,
        });
        // Dropping a cas can make what it expected unobserved in turn.
        if kept.len() == before {
            return (kept, observed);
        }
    }
}

fn counterexample(
    key: &str,
    ops: &[Operation],
    key_ops: &[KeyOp],
    search_ops: &[SearchOp],
    longest: &[usize],
) -> Counterexample {
    let mut state = None;
    let mut placed = vec![false; key_ops.len()];
    let mut linearized = Vec::with_capacity(longest.len());
    for &i in longest {
        state = key_ops[i]
            .op
            .step(state)
            .expect("the search's own path replays");
        placed[i] = true;
        linearized.push((ops[key_ops[i].source].clone(), state));
    }
    // The search failed, so some successful operation is left; the candidates to come next are
    // those invoked before the first of them returned.
    let first_return = (0..key_ops.len())
        .filter(|&i| !placed[i])
        .filter_map(|i| search_ops[i].complete.map(|t| (t, i)))
        .min();
    let bound = first_return.map_or(u64::MAX, |(t, _)| t);
    let candidates: Vec<usize> = (0..key_ops.len())
        .filter(|&i| !placed[i] && search_ops[i].invoke <= bound)
        .collect();
    let stuck = candidates
        .iter()
        .map(|&i| {
            let op = &ops[key_ops[i].source];
            let mut reason = match (key_ops[i].op, key_ops[i].op.step(state)) {
                (RegisterOp::Read(v), None) => {
                    format!("read {}, but the register held {}", show(v), show(state))
                        + &source_of(ops, op, v)
                }
                (RegisterOp::Cas(e, _), None) => {
                    format!(
                        "expected {}, but the register held {}",
                        show(e),
                        show(state)
                    )
                }
                _ if op.status != Status::Ok => "taking effect here leads nowhere".to_owned(),
                _ => "could take effect here, but nothing can follow it".to_owned(),
            };
            if candidates.len() > 1 && first_return.is_some_and(|(_, first)| first == i) {
                reason += "; it returned first, so it must take effect before the others";
            }
            Stuck {
                op: op.clone(),
                reason,
            }
        })
        .collect();
    Counterexample {
        key: key.to_owned(),
        linearized,
        state,
        stuck,
    }
}

/// Where the value a read returned came from, as a note to its reason: the write of it invoked
/// last before the read returned.
fn source_of(ops: &[Operation], read: &Operation, value: Option<i64>) -> String {
    let Some(value) = value else {
        return String::new();
    };
    let writers: Vec<&Operation> = ops
        .iter()
        .filter(|op| op.key == read.key)
        .filter(|op| match (op.f, &op.value) {
            (F::Write, Value::Int(v)) => *v == value,
            (F::Cas, Value::List(pair)) => pair.get(1) == Some(&Value::Int(value)),
            _ => false,
        })
        .collect();
    let before_read = writers
        .iter()
        .filter(|w| w.status != Status::Fail)
        .filter(|w| read.complete_time.is_none_or(|t| w.invoke_time <= t))
        .max_by_key(|w| w.invoke_time);
    match before_read {
        Some(w) => format!(
            " (p{} wrote {value}, invoked {})",
            w.process,
            format_time(w.invoke_time)
        ),
        None if writers.is_empty() => format!(" (no operation wrote {value})"),
        None if writers.iter().all(|w| w.status == Status::Fail) => {
            format!(" (only failed operations wrote {value})")
        }
        None => format!(" (nothing wrote {value} before the read returned)"),
    }
}

fn show(v: Option<i64>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

fn format_time(ns: u64) -> String {
    format!("{}.{:03}ms", ns / 1_000_000, ns / 1_000 % 1_000)
}

/// One operation as a timeline row: invoke time, completion, process, operation.
struct Row<'a>(&'a Operation);

impl fmt::Display for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.0;
        let returned = match (op.status, op.complete_time) {
            (_, None) => "no response".to_owned(),
            (Status::Ok, Some(t)) => format!("ok {}", format_time(t)),
            (Status::Fail, Some(t)) => format!("fail {}", format_time(t)),
            (Status::Info, Some(t)) => format!("info {}", format_time(t)),
        };
        let what = match op.f {
            F::Read if op.status == Status::Ok => format!("read -> {}", op.result),
            F::Read => "read".to_owned(),
            F::Write => format!("write {}", op.value),
            F::Cas => match &op.value {
                Value::List(pair) if pair.len() == 2 => format!("cas {} -> {}", pair[0], pair[1]),
                other => format!("cas {other}"),
            },
            other => format!("{other} {}", op.value),
        };
        let invoked = format_time(op.invoke_time);
        write!(
            f,
            "{invoked:>13}  {returned:<18} p{:<4} {what:<20}",
            op.process
        )
    }
}

/// Rows of the linearized prefix shown before the point where the search got stuck.
const PREFIX_ROWS: usize = 10;
/// Candidates shown; more only happens with many unknown-outcome operations pending.
const STUCK_ROWS: usize = 20;

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?} is not linearizable.", self.key)?;
        let header = format!(
            "{:>13}  {:<18} {:<5} {:<20}",
            "invoked", "returned", "proc", "op"
        );
        if self.linearized.is_empty() {
            writeln!(
                f,
                "No operation can take effect first (the key starts absent):"
            )?;
        } else {
            let skipped = self.linearized.len().saturating_sub(PREFIX_ROWS);
            let count = match self.linearized.len() {
                1 => "1 operation".to_owned(),
                n => format!("{n} operations"),
            };
            let shown = match skipped {
                0 => String::new(),
                _ => format!(" (the last {PREFIX_ROWS} shown)"),
            };
            writeln!(
                f,
                "Longest linearizable prefix found: {count}{shown}, each with the value after it:"
            )?;
            writeln!(f, "  {header}  value")?;
            for (op, after) in &self.linearized[skipped..] {
                writeln!(f, "  {}  {}", Row(op), show(*after))?;
            }
            writeln!(
                f,
                "Then none of these can take effect (the register holds {}):",
                show(self.state)
            )?;
        }
        writeln!(f, "  {header}  why not")?;
        for stuck in self.stuck.iter().take(STUCK_ROWS) {
            writeln!(f, "  {}  {}", Row(&stuck.op), stuck.reason)?;
        }
        if self.stuck.len() > STUCK_ROWS {
            writeln!(f, "  ... and {} more", self.stuck.len() - STUCK_ROWS)?;
        }
        Ok(())
    }
}
