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
//! connections) is `info`: the request may have been committed, now or later. As in Jepsen, the
//! process that got an `info` is then retired, since its operation may still be in flight, and
//! the worker carries on as a new process with a fresh connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use rand::Rng;
use tokio::sync::watch;

use crate::cluster::connect;
use crate::history::{Outcome, Process, Recorder, Value, F};

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

    pub fn keys(&self) -> &[String] {
        &self.keys
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
            Err(_) => unanswered(op, "timed out".to_owned()),
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
            Err(e) => unanswered(op, e.to_string()),
        },
        Op::Write(v) => match client.put(key, v.to_string(), None).await {
            Ok(_) => Outcome::Ok(v.into()),
            Err(e) => unanswered(op, e.to_string()),
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
                Err(e) => unanswered(op, e.to_string()),
            }
        }
    }
}

fn parse(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The outcome of a request that got no answer.
fn unanswered(op: Op, error: String) -> Outcome {
    // tonic says this when its connector failed, before any HTTP/2 connection (and so any
    // request) existed; through the proxies that is a reset while connecting to a member that
    // is down.
    let never_sent = error.contains("tcp connect error");
    if op == Op::Read || never_sent {
        Outcome::Fail(error)
    } else {
        Outcome::Info(error)
    }
}

/// One client of the run: issues random operations against `endpoint` until `stop` turns true.
pub struct Worker {
    pub registers: Arc<Registers>,
    /// Its first process id; later ones add `concurrency` each time, so ids never collide.
    pub index: u64,
    pub concurrency: u64,
    pub endpoint: String,
    /// The mean pause between operations; pauses are uniform in `[0, 2 * mean)` so that workers
    /// do not fall into lockstep.
    pub mean_interval: Duration,
}

impl Worker {
    /// Runs until `stop` is set; returns the last process id it used. An operation in flight
    /// when `stop` is set is finished (within the request timeout) so that it is recorded.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<Process> {
        let mut process = self.index;
        let mut client = connect(&self.endpoint, self.registers.timeout).await?;
        loop {
            let pause = self
                .mean_interval
                .mul_f64(2.0 * rand::thread_rng().gen::<f64>());
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return Ok(process);
            }
            let (key, op) = self.registers.generate();
            let outcome = self.registers.execute(&mut client, process, &key, op).await;
            if matches!(outcome, Outcome::Info(_)) {
                process += self.concurrency;
                client = connect(&self.endpoint, self.registers.timeout).await?;
            }
        }
    }
}
