//! The list-append workload (Jepsen's `append`, checked the way Elle checks it): transactions
//! of one to four micro-operations over a few keys, each key holding a list of integers.
//!
//! - `["append", key, n]` appends `n` to the key's list; `n` comes from one counter, so it is
//!   unique across the whole run and a read names the transaction that appended each element.
//! - `["r", key, null]` reads the list; the ok completion has the list in place of `null`. An
//!   absent key reads as the empty list, and reads see the transaction's own earlier appends.
//!
//! Each is recorded as one `txn` operation whose value is the list of micro-operations (the
//! history's `key` is empty: the keys are inside). The checker ([`check_append`]) infers each
//! key's order of appends from the reads, then the dependencies between transactions, and looks
//! for cycles: see `append/check.rs`.
//!
//! # Over etcd
//!
//! A key stores its list as comma-separated integers. A transaction runs optimistically:
//!
//! 1. one read-only etcd Txn gets every key involved: a snapshot of their lists at one revision,
//!    with each key's `mod_revision`;
//! 2. one etcd Txn compares every key's `mod_revision` with the snapshot's (`version == 0` for a
//!    key that was absent); its success branch first gets every key the transaction reads, then
//!    puts every appended key's new list (snapshot plus the transaction's appends).
//!
//! When a comparison fails (another transaction changed a key in between) the whole thing is
//! tried again from step 1, [`ATTEMPTS`] times in all; then the transaction fails: none of its
//! attempts took effect. The reads of an ok transaction are the success branch's gets (the state
//! the transaction committed on) with the transaction's own earlier appends applied on the
//! client, since etcd refuses two puts of one key in a Txn and so cannot show a list between two
//! appends of it. A transaction with no append is just one read-only Txn of gets, which etcd
//! serves at one revision, like any other serializable transaction.
//!
//! Outcomes: an unanswered request is `fail` while nothing that writes was sent (every snapshot
//! read, and every read-only transaction) and `info` once the compare-and-put may be in flight
//! (see [`unanswered`]).
//!
//! # Keys
//!
//! At any time there are `keys` active keys (`--keys`; Jepsen's own test uses 8), chosen with a
//! Zipf-like skew (the i-th weighted 1/i) so that transactions contend. A key takes at most [`MAX_WRITES_PER_KEY`] appends; then a fresh key
//! takes its place, as in Jepsen, so lists stay short and reads cheap however long the run. The
//! final reads read every key ever used, from every member.

mod check;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use etcd_client::{Client, Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};
use rand::Rng;

pub use check::{check_append, Anomaly, AnomalyKind, AppendReport};

use super::{unanswered, Judgement, Workload, FINAL_READ_ATTEMPTS, FINAL_READ_RETRY};
use crate::checker::{CheckOptions, Verdict};
use crate::cluster::{connect, Cluster};
use crate::history::{Operation, Outcome, Process, Recorder, Value, F};

/// Appends a key takes before a fresh key replaces it.
pub const MAX_WRITES_PER_KEY: usize = 64;
/// Tries of a transaction whose comparison keeps failing before it is recorded as failed.
pub const ATTEMPTS: usize = 3;
/// Micro-operations in one transaction, at most.
pub const MAX_TXN_LEN: usize = 4;
/// Keys read by one final-read transaction (etcd allows 128 operations in a Txn).
const FINAL_READ_CHUNK: usize = 64;

/// A micro-operation: an append of a value, or a read and (once known) the list it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MicroOp {
    Append(String, i64),
    Read(String, Option<Vec<i64>>),
}

impl MicroOp {
    pub fn key(&self) -> &str {
        match self {
            MicroOp::Append(key, _) | MicroOp::Read(key, _) => key,
        }
    }

    /// `["append", key, n]` or `["r", key, list-or-null]`.
    pub fn to_value(&self) -> Value {
        match self {
            MicroOp::Append(key, n) => Value::List(vec![
                Value::Str("append".to_owned()),
                Value::Str(key.clone()),
                Value::Int(*n),
            ]),
            MicroOp::Read(key, list) => Value::List(vec![
                Value::Str("r".to_owned()),
                Value::Str(key.clone()),
                match list {
                    None => Value::Null,
                    Some(list) => Value::List(list.iter().map(|&v| Value::Int(v)).collect()),
                },
            ]),
        }
    }

    /// The inverse of [`MicroOp::to_value`].
    pub fn from_value(value: &Value) -> Result<MicroOp> {
        let Value::List(parts) = value else {
            bail!("a micro-operation is a list, not {value}");
        };
        match parts.as_slice() {
            [Value::Str(f), Value::Str(key), Value::Int(n)] if f == "append" => {
                Ok(MicroOp::Append(key.clone(), *n))
            }
            [Value::Str(f), Value::Str(key), Value::Null] if f == "r" => {
                Ok(MicroOp::Read(key.clone(), None))
            }
            [Value::Str(f), Value::Str(key), Value::List(items)] if f == "r" => {
                let list = items
                    .iter()
                    .map(|item| match item {
                        Value::Int(v) => Ok(*v),
                        other => bail!("a read's list holds {other}, not an integer"),
                    })
                    .collect::<Result<Vec<i64>>>()?;
                Ok(MicroOp::Read(key.clone(), Some(list)))
            }
            _ => bail!("not a micro-operation: {value}"),
        }
    }
}

/// A transaction as recorded: the list of its micro-operations.
pub fn txn_value(txn: &[MicroOp]) -> Value {
    Value::List(txn.iter().map(MicroOp::to_value).collect())
}

/// Parses a transaction's value.
pub fn parse_txn(value: &Value) -> Result<Vec<MicroOp>> {
    match value {
        Value::List(mops) => mops.iter().map(MicroOp::from_value).collect(),
        other => bail!("a transaction is a list of micro-operations, not {other}"),
    }
}

/// The active keys: each slot's key and the appends handed out for it so far.
struct Keys {
    slots: Vec<(u64, usize)>,
    next_key: u64,
}

fn key_name(id: u64) -> String {
    format!("k{id}")
}

/// What all the workers of a run share.
pub struct Appends {
    keys: Mutex<Keys>,
    /// Cumulative slot weights, for the skewed choice of keys.
    weights: Vec<f64>,
    recorder: Arc<Recorder>,
    /// The bound on every transaction (all its requests and retries).
    timeout: Duration,
    /// Appended values come from one counter, so they are unique across keys too.
    next_value: AtomicI64,
}

impl Appends {
    /// `keys` active keys, transactions recorded by `recorder`.
    pub fn new(keys: usize, recorder: Arc<Recorder>, timeout: Duration) -> Appends {
        let keys = keys.max(1);
        let mut total = 0.0;
        let weights = (0..keys)
            .map(|i| {
                total += 1.0 / (i + 1) as f64;
                total
            })
            .collect();
        Appends {
            keys: Mutex::new(Keys {
                slots: (0..keys as u64).map(|id| (id, 0)).collect(),
                next_key: keys as u64,
            }),
            weights,
            recorder,
            timeout,
            next_value: AtomicI64::new(1),
        }
    }

    /// A random transaction: one to four micro-operations, appends and reads in equal parts.
    pub fn generate(&self) -> Vec<MicroOp> {
        let mut rng = rand::thread_rng();
        let len = rng.gen_range(1..=MAX_TXN_LEN);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        (0..len)
            .map(|_| {
                let total = *self.weights.last().expect("at least one key");
                let x = rng.gen::<f64>() * total;
                let slot = self
                    .weights
                    .iter()
                    .position(|&w| x < w)
                    .unwrap_or(self.weights.len() - 1);
                let key = key_name(keys.slots[slot].0);
                if rng.gen_bool(0.5) {
                    return MicroOp::Read(key, None);
                }
                keys.slots[slot].1 += 1;
                if keys.slots[slot].1 >= MAX_WRITES_PER_KEY {
                    keys.slots[slot] = (keys.next_key, 0);
                    keys.next_key += 1;
                }
                MicroOp::Append(key, self.next_value.fetch_add(1, Ordering::Relaxed))
            })
            .collect()
    }

    /// Every key handed out so far, active or retired.
    fn every_key(&self) -> Vec<String> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        (0..keys.next_key).map(key_name).collect()
    }

    /// Performs `txn` as `process`, recording its invoke and completion; returns how it ended.
    pub async fn execute(&self, client: &mut Client, process: Process, txn: &[MicroOp]) -> Outcome {
        let id = self.recorder.invoke(process, F::Txn, "", txn_value(txn));
        // Whether a compare-and-put was sent without an answer yet: until then, giving up
        // leaves nothing behind.
        let mut in_doubt = false;
        let result = tokio::time::timeout(self.timeout, perform(client, txn, &mut in_doubt)).await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) => unanswered(in_doubt, "timed out".to_owned()),
        };
        self.recorder.complete(id, outcome.clone());
        outcome
    }
}

/// A key's list and `mod_revision` (0: absent).
#[derive(Clone, Debug, Default)]
struct Stored {
    list: Vec<i64>,
    mod_revision: i64,
}

/// Parses a stored list: comma-separated integers, empty for the empty list.
fn parse_list(bytes: &[u8]) -> Option<Vec<i64>> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|v| v.parse().ok()).collect()
}

fn format_list(list: &[i64]) -> String {
    let mut text = String::new();
    for (i, v) in list.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(text, "{v}");
    }
    text
}

/// The keys of `txn`, each once, in order of first use; and whether each is appended to.
fn involved(txn: &[MicroOp]) -> Vec<(&str, bool)> {
    let mut keys: Vec<(&str, bool)> = Vec::new();
    for mop in txn {
        let appends = matches!(mop, MicroOp::Append(..));
        match keys.iter_mut().find(|(k, _)| *k == mop.key()) {
            Some(entry) => entry.1 |= appends,
            None => keys.push((mop.key(), appends)),
        }
    }
    keys
}

/// The lists the gets of a Txn response returned, in order; `Err` names a value that is no
/// list (only this workload writes these keys, so that is corruption worth recording).
fn gotten(responses: &[TxnOpResponse]) -> Result<Vec<Stored>, String> {
    responses
        .iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get.kvs().first()),
            _ => None,
        })
        .map(|kv: Option<&KeyValue>| match kv {
            None => Ok(Stored::default()),
            Some(kv) => match parse_list(kv.value()) {
                Some(list) => Ok(Stored {
                    list,
                    mod_revision: kv.mod_revision(),
                }),
                None => Err(format!(
                    "read a value that is no list: {:?}",
                    String::from_utf8_lossy(kv.value())
                )),
            },
        })
        .collect()
}

/// Replays `txn` on `state` (each key's list before it), filling in its reads.
fn apply<'a>(txn: &'a [MicroOp], state: &mut HashMap<&'a str, Vec<i64>>) -> Vec<MicroOp> {
    txn.iter()
        .map(|mop| match mop {
            MicroOp::Append(key, n) => {
                state.entry(key.as_str()).or_default().push(*n);
                mop.clone()
            }
            MicroOp::Read(key, _) => MicroOp::Read(
                key.clone(),
                Some(state.get(key.as_str()).cloned().unwrap_or_default()),
            ),
        })
        .collect()
}

async fn perform(client: &mut Client, txn: &[MicroOp], in_doubt: &mut bool) -> Outcome {
    let keys = involved(txn);
    let read_only = keys.iter().all(|(_, appends)| !appends);
    for _ in 0..ATTEMPTS {
        // The snapshot (for a read-only transaction, the whole of it).
        let gets: Vec<TxnOp> = keys.iter().map(|(k, _)| TxnOp::get(*k, None)).collect();
        let snapshot = match client.txn(Txn::new().and_then(gets)).await {
            Ok(response) => match gotten(&response.op_responses()) {
                Ok(stored) => stored,
                Err(corrupt) => return Outcome::Info(corrupt),
            },
            Err(e) => return unanswered(false, e.to_string()),
        };
        if snapshot.len() != keys.len() {
            return Outcome::Info(format!(
                "{} gets answered {} results",
                keys.len(),
                snapshot.len()
            ));
        }
        if read_only {
            let mut state: HashMap<&str, Vec<i64>> = keys
                .iter()
                .zip(snapshot)
                .map(|((k, _), s)| (*k, s.list))
                .collect();
            return Outcome::Ok(txn_value(&apply(txn, &mut state)));
        }

        let compares: Vec<Compare> = keys
            .iter()
            .zip(&snapshot)
            .map(|((k, _), s)| match s.mod_revision {
                0 => Compare::version(*k, CompareOp::Equal, 0),
                rev => Compare::mod_revision(*k, CompareOp::Equal, rev),
            })
            .collect();
        let mut after: HashMap<&str, Vec<i64>> = keys
            .iter()
            .zip(&snapshot)
            .map(|((k, _), s)| (*k, s.list.clone()))
            .collect();
        apply(txn, &mut after);
        let read_keys: Vec<&str> = keys
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| {
                txn.iter()
                    .any(|m| matches!(m, MicroOp::Read(rk, _) if rk == k))
            })
            .collect();
        let mut ops: Vec<TxnOp> = read_keys.iter().map(|k| TxnOp::get(*k, None)).collect();
        for (k, appends) in &keys {
            if *appends {
                ops.push(TxnOp::put(*k, format_list(&after[k]), None));
            }
        }
        *in_doubt = true;
        let response = match client.txn(Txn::new().when(compares).and_then(ops)).await {
            Ok(response) => response,
            Err(e) => return unanswered(true, e.to_string()),
        };
        *in_doubt = false;
        if !response.succeeded() {
            continue;
        }
        // The state the transaction committed on: the success branch's gets for the keys it
        // reads (which the comparisons say are the snapshot's), the snapshot for the others.
        let committed_on = match gotten(&response.op_responses()) {
            Ok(stored) if stored.len() == read_keys.len() => stored,
            Ok(stored) => {
                return Outcome::Info(format!(
                    "{} gets answered {} results",
                    read_keys.len(),
                    stored.len()
                ))
            }
            Err(corrupt) => return Outcome::Info(corrupt),
        };
        let mut state: HashMap<&str, Vec<i64>> = keys
            .iter()
            .zip(snapshot)
            .map(|((k, _), s)| (*k, s.list))
            .collect();
        for (k, s) in read_keys.iter().zip(committed_on) {
            state.insert(k, s.list);
        }
        return Outcome::Ok(txn_value(&apply(txn, &mut state)));
    }
    Outcome::Fail(format!("compare failed {ATTEMPTS} times"))
}

impl Workload for Appends {
    async fn step(&self, client: &mut Client, process: Process) -> Outcome {
        let txn = self.generate();
        self.execute(client, process, &txn).await
    }

    async fn final_reads(&self, cluster: &Cluster, first_process: Process) -> Result<()> {
        let keys = self.every_key();
        for member in 0..cluster.members() {
            let process = first_process + member as u64;
            let mut client = connect(&cluster.endpoint(member), self.timeout).await?;
            for chunk in keys.chunks(FINAL_READ_CHUNK) {
                let txn: Vec<MicroOp> = chunk
                    .iter()
                    .map(|k| MicroOp::Read(k.clone(), None))
                    .collect();
                for _ in 0..FINAL_READ_ATTEMPTS {
                    match self.execute(&mut client, process, &txn).await {
                        Outcome::Ok(_) => break,
                        _ => tokio::time::sleep(FINAL_READ_RETRY).await,
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&self, ops: &[Operation], options: &CheckOptions) -> Result<Judgement> {
        judge(ops, options)
    }
}

/// Checks an append history and puts the result the way the runner reports it.
pub fn judge(ops: &[Operation], options: &CheckOptions) -> Result<Judgement> {
    let report = check_append(ops, options)?;
    let mut failed = std::collections::BTreeMap::new();
    for (kind, count) in report.counts() {
        failed.insert(
            kind.to_string(),
            format!("{} ({count} found)", Verdict::Invalid),
        );
    }
    Ok(Judgement {
        verdict: report.verdict(),
        explanation: report.to_string(),
        failed,
    })
}

#[cfg(test)]
mod workload_tests {
    use super::*;

    #[test]
    fn micro_operations_round_trip_through_values() {
        let txn = vec![
            MicroOp::Append("k1".to_owned(), 7),
            MicroOp::Read("k1".to_owned(), None),
            MicroOp::Read("k2".to_owned(), Some(vec![1, 2])),
            MicroOp::Read("k3".to_owned(), Some(vec![])),
        ];
        let value = txn_value(&txn);
        assert_eq!(
            serde_json::to_string(&value).unwrap(),
            r#"[["append","k1",7],["r","k1",null],["r","k2",[1,2]],["r","k3",[]]]"#
        );
        assert_eq!(parse_txn(&value).unwrap(), txn);
        assert!(parse_txn(&Value::Int(1)).is_err());
        assert!(MicroOp::from_value(&Value::List(vec![
            Value::Str("w".to_owned()),
            Value::Str("k".to_owned()),
            Value::Int(1)
        ]))
        .is_err());
    }

    #[test]
    fn stored_lists_round_trip() {
        assert_eq!(parse_list(b""), Some(vec![]));
        assert_eq!(parse_list(b"1,22,-3"), Some(vec![1, 22, -3]));
        assert_eq!(parse_list(b"1,,2"), None);
        assert_eq!(parse_list(b"x"), None);
        assert_eq!(format_list(&[1, 22, -3]), "1,22,-3");
        assert_eq!(format_list(&[]), "");
    }

    #[test]
    fn reads_see_the_transactions_own_appends() {
        let txn = vec![
            MicroOp::Read("a".to_owned(), None),
            MicroOp::Append("a".to_owned(), 3),
            MicroOp::Read("a".to_owned(), None),
            MicroOp::Append("a".to_owned(), 4),
            MicroOp::Read("b".to_owned(), None),
        ];
        let mut state = HashMap::from([("a", vec![1, 2])]);
        let done = apply(&txn, &mut state);
        assert_eq!(done[0], MicroOp::Read("a".to_owned(), Some(vec![1, 2])));
        assert_eq!(done[2], MicroOp::Read("a".to_owned(), Some(vec![1, 2, 3])));
        assert_eq!(done[4], MicroOp::Read("b".to_owned(), Some(vec![])));
        assert_eq!(state["a"], vec![1, 2, 3, 4]);
        assert_eq!(involved(&txn), vec![("a", true), ("b", false)]);
    }

    #[test]
    fn generated_transactions_rotate_keys_and_never_repeat_a_value() {
        let appends = Appends::new(8, Arc::new(Recorder::new()), Duration::from_secs(1));
        let mut seen = std::collections::HashSet::new();
        let mut per_key: HashMap<String, usize> = HashMap::new();
        for _ in 0..5000 {
            let txn = appends.generate();
            assert!((1..=MAX_TXN_LEN).contains(&txn.len()));
            for mop in &txn {
                if let MicroOp::Append(key, n) = mop {
                    assert!(seen.insert(*n), "{n} appended twice");
                    *per_key.entry(key.clone()).or_default() += 1;
                }
            }
        }
        assert!(per_key.values().all(|&n| n <= MAX_WRITES_PER_KEY));
        assert!(per_key.len() > 8, "keys were rotated");
        assert!(appends.every_key().len() >= per_key.len());
    }

    #[test]
    fn keys_are_chosen_with_skew() {
        // Few enough transactions that no key is rotated out yet (about 150 micro-operations,
        // some 28 of them appends to the first key).
        let appends = Appends::new(8, Arc::new(Recorder::new()), Duration::from_secs(1));
        let mut uses: HashMap<String, usize> = HashMap::new();
        for _ in 0..60 {
            for mop in appends.generate() {
                *uses.entry(mop.key().to_owned()).or_default() += 1;
            }
        }
        let first = uses.get("k0").copied().unwrap_or(0);
        let last = uses.get("k7").copied().unwrap_or(0);
        assert!(first > 2 * last, "k0 used {first} times, k7 {last}");
    }
}
