//! The register workload: reads, writes and compare-and-sets on a handful of keys, each key an
//! independent register, by clients each bound to one member.
//!
//! - `read` is a linearizable Range (etcd-client's default); the value is an integer or absent.
//! - `write` is a Put of a value no other write uses, so a read identifies the write it saw.
//! - `cas [expected, new]` is a Txn: if the key's value is `expected` (or, for `null`, the key is
//!   absent) put `new`. It is ok when the Txn succeeded and fails when the comparison did not hold.
//!
//! Outcomes follow what the client can know. An ok means the server said it happened. A fail means
//! it certainly did not: a cas whose comparison failed, a read that got no answer (reads change
//! nothing, so an unanswered one is as good as none), or a request the client could not even
//! connect to send. Every other error of a write or cas (timeouts, "leader changed", dropped
//! connections) is `info`: the request may have been committed, now or later.
//!
//! The final reads read every key from every member, so that a write the cluster acknowledged
//! and then lost shows up as a read the checker cannot place.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use rand::Rng;

use super::{unanswered, Judgement, Workload, FINAL_READ_ATTEMPTS, FINAL_READ_RETRY};
use crate::checker::{self, CheckOptions, Verdict};
use crate::cluster::{connect, Cluster};
use crate::history::{Operation, Outcome, Process, Recorder, Value, F};

/// One operation, before it is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write(i64),
    /// Expected value (`None`: the key is absent) and new value.
    Cas(Option<i64>, i64),
}

/// What all the workers of a run share.
pub struct Registers {
    keys: Vec<String>,
    recorder: Arc<Recorder>,
    /// The bound on every request; what takes longer is given up on.
    timeout: Duration,
    /// Written values come from one counter, so they are unique across keys too.
    next_value: AtomicI64,
    /// The last value each key was seen to hold by an ok operation. A cas expects it, so that
    /// enough cas operations succeed to matter; a random guess among unique values would almost
    /// never match.
    last_seen: Mutex<HashMap<String, Option<i64>>>,
}

impl Registers {
    /// Registers `k0` to `k<keys - 1>`, with operations recorded by `recorder`.
    pub fn new(keys: usize, recorder: Arc<Recorder>, timeout: Duration) -> Registers {
        Registers {
            keys: (0..keys).map(|k| format!("k{k}")).collect(),
            recorder,
            timeout,
            next_value: AtomicI64::new(1),
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    /// A random operation on a random key: reads, writes and cas in equal parts.
    fn generate(&self) -> (String, Op) {
        let mut rng = rand::thread_rng();
        let key = self.keys[rng.gen_range(0..self.keys.len())].clone();
        let op = match rng.gen_range(0..3) {
            0 => Op::Read,
            1 => Op::Write(self.next_value.fetch_add(1, Ordering::Relaxed)),
            _ => {
                let expected = self
                    .last_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    .copied()
                    .flatten();
                Op::Cas(expected, self.next_value.fetch_add(1, Ordering::Relaxed))
            }
        };
        (key, op)
    }

    /// Performs `op` as `process`, recording its invoke and completion; returns how it ended.
    pub async fn execute(
        &self,
        client: &mut Client,
        process: Process,
        key: &str,
        op: Op,
    ) -> Outcome {
        let (f, value) = match op {
            Op::Read => (F::Read, Value::Null),
            Op::Write(v) => (F::Write, v.into()),
            Op::Cas(expected, new) => (F::Cas, Value::List(vec![expected.into(), new.into()])),
        };
        let id = self.recorder.invoke(process, f, key, value);
        let outcome = match tokio::time::timeout(self.timeout, perform(client, key, op)).await {
            Ok(outcome) => outcome,
            Err(_) => unanswered(op != Op::Read, "timed out".to_owned()),
        };
        let seen = match (op, &outcome) {
            (Op::Read, Outcome::Ok(Value::Int(v))) => Some(Some(*v)),
            (Op::Read, Outcome::Ok(_)) => Some(None),
            (Op::Write(v) | Op::Cas(_, v), Outcome::Ok(_)) => Some(Some(v)),
            _ => None,
        };
        if let Some(seen) = seen {
            self.last_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.to_owned(), seen);
        }
        self.recorder.complete(id, outcome.clone());
        outcome
    }
}

async fn perform(client: &mut Client, key: &str, op: Op) -> Outcome {
    match op {
        Op::Read => match client.get(key, None).await {
            Ok(response) => match response.kvs().first() {
                None => Outcome::Ok(Value::Null),
                Some(kv) => match parse(kv.value()) {
                    Some(v) => Outcome::Ok(v.into()),
                    // Only this workload writes these keys, and only integers; anything else is
                    // a corruption worth seeing in the history, not a result to check.
                    None => Outcome::Info(format!(
                        "read a value that is no integer: {:?}",
                        String::from_utf8_lossy(kv.value())
                    )),
                },
            },
            Err(e) => unanswered(false, e.to_string()),
        },
        Op::Write(v) => match client.put(key, v.to_string(), None).await {
            Ok(_) => Outcome::Ok(v.into()),
            Err(e) => unanswered(true, e.to_string()),
        },
        Op::Cas(expected, new) => {
            let compare = match expected {
                Some(v) => Compare::value(key, CompareOp::Equal, v.to_string()),
                // An absent key has version 0.
                None => Compare::version(key, CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, new.to_string(), None)]);
            match client.txn(txn).await {
                Ok(response) if response.succeeded() => {
                    Outcome::Ok(Value::List(vec![expected.into(), new.into()]))
                }
                Ok(_) => Outcome::Fail("compare failed".to_owned()),
                Err(e) => unanswered(true, e.to_string()),
            }
        }
    }
}

fn parse(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

impl Workload for Registers {
    async fn step(&self, client: &mut Client, process: Process) -> Outcome {
        let (key, op) = self.generate();
        self.execute(client, process, &key, op).await
    }

    async fn final_reads(&self, cluster: &Cluster, first_process: Process) -> Result<()> {
        for member in 0..cluster.members() {
            let process = first_process + member as u64;
            let mut client = connect(&cluster.endpoint(member), self.timeout).await?;
            for key in &self.keys {
                for _ in 0..FINAL_READ_ATTEMPTS {
                    match self.execute(&mut client, process, key, Op::Read).await {
                        Outcome::Ok(_) => break,
                        _ => tokio::time::sleep(FINAL_READ_RETRY).await,
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&self, ops: &[Operation], options: &CheckOptions) -> Result<Judgement> {
        let report = checker::check_register(ops, options)?;
        let mut explanation = String::new();
        for key in &report.keys {
            if let Some(ce) = &key.counterexample {
                let _ = write!(explanation, "\n{ce}\n");
            }
        }
        Ok(Judgement {
            verdict: report.verdict(),
            explanation,
            failed: report
                .keys
                .iter()
                .filter(|k| k.verdict != Verdict::Valid)
                .map(|k| (k.key.clone(), k.verdict.to_string()))
                .collect(),
        })
    }
}
