//! The lock workload: etcd's Lock service (`v3lockpb`) under faults, judged the way Jepsen judged
//! etcd 3.4.3's locks (jepsen.io/analyses/etcd-3.4.3). A lock built on a lease cannot guarantee
//! mutual exclusion in an asynchronous system: a holder whose keep-alives stop getting through
//! loses the lock when the lease expires, and goes on acting as the holder until it notices, if
//! ever. Only writes *fenced* by the lock (made conditional on the lock key still being there)
//! are safe. The checker reports what the lock did and did not guarantee in the run.
//!
//! Every client step is one hold of the lock [`LOCK_NAME`], all recorded as one process:
//!
//! 1. `grant` a lease of [`LEASE_TTL`] (ok: the lease id), kept alive by a background task that
//!    sends a keep-alive every third of the TTL. A keep-alive sent at `t` and answered with TTL
//!    `ttl` proves the lease alive until `t + ttl` (the server renewed it later than `t`). When
//!    that time passes without the next answer, or the server says the lease is gone, the lease
//!    has *lapsed*: the client can no longer know that it holds the lock. A lapse is final.
//! 2. `acquire` (value: the lease): a Lock RPC with the lease, bounded by the op timeout, then a
//!    linearizable Range of the lock key it returns, for the key's create revision: the *fence*.
//!    ok: `[lock key, fence]`. A timeout is `info` (the Lock may still be granted later; the lease
//!    is revoked, or else expires, which frees it). A lock key already gone when read is `info`
//!    ("granted a lock key already gone"; the report counts them).
//! 3. While holding, each bounded by the op timeout:
//!    - an unfenced read-modify-write of [`COUNTER_KEY`] (`write`, ok: `[old, new]`): a get, a
//!      pause of half the hold time, a plain put of old + 1. A careful client: it is skipped when
//!      the lease has already lapsed. Its invoke value is `null` (old is not known yet).
//!    - a fenced append to [`FENCED_KEY`] (`write`, value `[fence, token]`, ok
//!      `[fence, token, commit revision]`): a get of the list, then a Txn that appends
//!      `fence:token` only if `create_revision(lock key) == fence` (the lock is still ours) and
//!      `mod_revision(FENCED_KEY)` is still the one read (the append is atomic). `fail` when the
//!      compare fails: "fenced out" when the lock key is gone (read in the Txn's else branch),
//!      else "the list changed under a live fence". Tokens are unique in the run.
//! 4. `release` (value `[lock key, fence, lease health]`): an Unlock RPC. The health is
//!    [`LEASE_OK`] when keep-alives proved the lease alive from the grant until this invoke,
//!    else `lease-lapsed: why`: this is how the checker tells a holder that may have lost its
//!    lock to expiry from one that cannot have.
//! 5. The keep-alives stop and the lease is `revoke`d (value: the lease).
//!
//! Any `info` in the cycle retires the process afterwards (the worker reconnects as a new one);
//! the cycle itself still goes on to release the lock and revoke the lease.
//!
//! The final reads read [`COUNTER_KEY`] (an integer, `null` if absent) and [`FENCED_KEY`] (a list
//! of `[fence, token]`, `null` if absent) from every member, as `read` operations; the clients
//! never `read`, so every `read` in a history is a final read.
//!
//! The checker (`lock/checker.rs`) puts what it concludes at the top of `verdict.txt`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use etcd_client::{Client, Compare, CompareOp, LockOptions, Txn, TxnOp, TxnOpResponse};
use rand::Rng;

mod checker;
mod lease;
#[cfg(test)]
mod tests;

pub use checker::{check_lock, Counter, Fencing, Hold, LeaseState, LockReport, Overlap};
pub use lease::LeaseHealth;

use lease::KeepAlive;

use super::{unanswered, Judgement, Workload, FINAL_READ_ATTEMPTS, FINAL_READ_RETRY};
use crate::checker::CheckOptions;
use crate::cluster::{connect, Cluster};
use crate::history::{Operation, Outcome, Process, Recorder, Value, F};

/// The lock every client contends for. etcd's lock keys are `LOCK_NAME/<lease id in hex>`.
pub const LOCK_NAME: &str = "lock/a";
/// The counter incremented without fencing.
pub const COUNTER_KEY: &str = "lock/counter";
/// The list appended to with fencing: `fence:token` entries, comma-separated.
pub const FENCED_KEY: &str = "lock/fenced";
/// Each client's lease TTL (etcd's minimum with the harness's 1 s election timeout).
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How long a client holds the lock besides its requests, uniformly drawn.
const HOLD_MS: std::ops::Range<u64> = 10..50;
/// With long holds on, every this-many-th hold of the run lasts [`LONG_HOLD`]. Counted, not
/// drawn: drawn, three long holds in a row could fill a 30-second run, which then proves nothing
/// about the hand-overs after faults (4 holds in 35 s once in CI).
const LONG_HOLD_EVERY: u64 = 4;
/// As long as a lock-elected controller holds on: while its keep-alives get answered. Long
/// enough to outlast the hand-over of a lock whose holder was cut off with its leader (an
/// election, a lease TTL at the new leader, the revoke, the next Lock: about 4 s).
const LONG_HOLD: Duration = Duration::from_secs(10);
/// How often a long hold checks that its lease is still proven alive.
const LONG_HOLD_CHECK: Duration = Duration::from_millis(50);
/// The lease health of a hold whose lease was proven alive throughout.
pub const LEASE_OK: &str = "lease-ok";
/// The prefix of the other lease healths.
const LEASE_LAPSED: &str = "lease-lapsed";
/// How a fenced append that failed because its lock was gone says so.
const FENCED_OUT: &str = "fenced out";
/// How a fenced append says that its lock key was there but the list changed since its read:
/// another fenced append committed while this holder's lock key existed, so the lock was
/// granted while an older lock key existed (see [`check_lock`]).
const LIST_CHANGED: &str = "the list changed under a live fence";
/// How an acquire says the Lock RPC granted a key that no longer existed.
const GRANTED_GONE: &str = "granted a lock key already gone";
/// gRPC's code for a service the server does not implement.
const GRPC_UNIMPLEMENTED: i32 = 12;
/// How many examples of each anomaly the explanation lists.
const EXAMPLES: usize = 5;

/// What all the workers of a run share.
pub struct Locks {
    recorder: Arc<Recorder>,
    /// The bound on every request.
    timeout: Duration,
    /// Fenced append tokens, unique across the run.
    next_token: AtomicI64,
    /// Whether some holds last [`LONG_HOLD`].
    long_holds: bool,
    /// Holds begun so far in the run, to pick the long ones.
    holds_begun: AtomicU64,
}

impl Locks {
    pub fn new(recorder: Arc<Recorder>, timeout: Duration) -> Locks {
        Locks {
            recorder,
            timeout,
            next_token: AtomicI64::new(1),
            long_holds: false,
            holds_begun: AtomicU64::new(0),
        }
    }

    /// Every [`LONG_HOLD_EVERY`]-th hold lasts up to [`LONG_HOLD`] after its writes, ending early
    /// when its lease lapses, as a careful holder does. This is what lets a run see a double
    /// holder when a server keeps a cut-off client's lease alive: the holder is still holding,
    /// with every keep-alive answered, when the majority hands the lock to another client.
    pub fn with_long_holds(mut self) -> Locks {
        self.long_holds = true;
        self
    }

    /// Records one operation around `perform`.
    async fn record(
        &self,
        process: Process,
        f: F,
        key: &str,
        value: Value,
        perform: impl std::future::Future<Output = Outcome>,
    ) -> Outcome {
        let id = self.recorder.invoke(process, f, key, value);
        let outcome = perform.await;
        self.recorder.complete(id, outcome.clone());
        outcome
    }

    /// `fut`, given up (`Err`) after the op timeout.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = T>,
    ) -> std::result::Result<T, tokio::time::error::Elapsed> {
        tokio::time::timeout(self.timeout, fut).await
    }

    /// One whole hold: grant, acquire, the writes, release, revoke. `info` if any step was.
    async fn cycle(&self, client: &mut Client, process: Process) -> Outcome {
        let mut unknown = None;
        let mut note = |outcome: &Outcome| {
            if let Outcome::Info(e) = outcome {
                unknown.get_or_insert_with(|| e.clone());
            }
        };

        // The grant's answer proves the lease alive for a TTL from before the request was sent.
        let grant_sent = Instant::now();
        let granted = self
            .record(process, F::Grant, LOCK_NAME, Value::Null, async {
                let ttl = LEASE_TTL.as_secs() as i64;
                match self.bounded(client.lease_grant(ttl, None)).await {
                    Ok(Ok(response)) => Outcome::Ok(Value::Int(response.id())),
                    Ok(Err(e)) => unanswered(true, e.to_string()),
                    Err(_) => Outcome::Info("timed out".to_owned()),
                }
            })
            .await;
        let lease = match granted {
            Outcome::Ok(Value::Int(lease)) => lease,
            other => return other,
        };
        let health = Arc::new(Mutex::new(LeaseHealth::new(grant_sent, LEASE_TTL)));
        let keeper = KeepAlive::start(client, lease, LEASE_TTL, health.clone());

        let acquired = self
            .record(
                process,
                F::Acquire,
                LOCK_NAME,
                Value::Int(lease),
                self.acquire(client, lease),
            )
            .await;
        note(&acquired);
        if let Outcome::Ok(Value::List(held)) = &acquired {
            if let [Value::Str(lock_key), Value::Int(fence)] = held.as_slice() {
                let outcomes = self.hold(client, process, lock_key, *fence, &health).await;
                outcomes.iter().for_each(&mut note);
            }
        }

        keeper.stop();
        let revoked = self
            .record(process, F::Revoke, LOCK_NAME, Value::Int(lease), async {
                match self.bounded(client.lease_revoke(lease)).await {
                    Ok(Ok(_)) => Outcome::Ok(Value::Int(lease)),
                    // Expired already: the revoke itself did nothing.
                    Ok(Err(e)) if e.to_string().contains("lease not found") => {
                        Outcome::Fail(e.to_string())
                    }
                    Ok(Err(e)) => unanswered(true, e.to_string()),
                    Err(_) => Outcome::Info("timed out".to_owned()),
                }
            })
            .await;
        note(&revoked);
        match unknown {
            Some(e) => Outcome::Info(e),
            None => acquired,
        }
    }

    /// The Lock RPC and the Range of its key.
    async fn acquire(&self, client: &mut Client, lease: i64) -> Outcome {
        let options = LockOptions::new().with_lease(lease);
        let lock_key = match self.bounded(client.lock(LOCK_NAME, Some(options))).await {
            Err(_) => return Outcome::Info("timed out waiting for the lock".to_owned()),
            Ok(Err(e)) => {
                // A server without the Lock service, or a lease already expired: nothing done.
                let unimplemented = matches!(&e, etcd_client::Error::GRpcStatus(status)
                    if i32::from(status.code()) == GRPC_UNIMPLEMENTED);
                if unimplemented || e.to_string().contains("lease not found") {
                    return Outcome::Fail(e.to_string());
                }
                return unanswered(true, e.to_string());
            }
            Ok(Ok(response)) => String::from_utf8_lossy(response.key()).into_owned(),
        };
        match self.bounded(client.get(lock_key.as_str(), None)).await {
            Ok(Ok(response)) => match response.kvs().first() {
                Some(kv) => Outcome::Ok(Value::List(vec![
                    Value::Str(lock_key),
                    Value::Int(kv.create_revision()),
                ])),
                None => Outcome::Info(format!(
                    "{GRANTED_GONE}: {lock_key} was not there when read (its lease expired)"
                )),
            },
            Ok(Err(e)) => Outcome::Info(format!("granted {lock_key}, but reading it failed: {e}")),
            Err(_) => Outcome::Info(format!("granted {lock_key}, but reading it timed out")),
        }
    }

    /// The writes under the lock, then the release; returns their outcomes.
    async fn hold(
        &self,
        client: &mut Client,
        process: Process,
        lock_key: &str,
        fence: i64,
        health: &Mutex<LeaseHealth>,
    ) -> Vec<Outcome> {
        let hold = Duration::from_millis(rand::thread_rng().gen_range(HOLD_MS));
        let lapsed = || {
            health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .check(Instant::now())
        };
        let mut outcomes = Vec::new();
        if lapsed().is_none() {
            let outcome = self
                .record(
                    process,
                    F::Write,
                    COUNTER_KEY,
                    Value::Null,
                    self.increment(client, hold / 2),
                )
                .await;
            outcomes.push(outcome);
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let outcome = self
            .record(
                process,
                F::Write,
                FENCED_KEY,
                Value::List(vec![Value::Int(fence), Value::Int(token)]),
                self.append(client, lock_key, fence, token),
            )
            .await;
        outcomes.push(outcome);
        tokio::time::sleep(hold / 2).await;
        let nth = self.holds_begun.fetch_add(1, Ordering::Relaxed) + 1;
        if self.long_holds && nth.is_multiple_of(LONG_HOLD_EVERY) {
            let until = Instant::now() + LONG_HOLD;
            while Instant::now() < until && lapsed().is_none() {
                tokio::time::sleep(LONG_HOLD_CHECK).await;
            }
        }

        // Taken just before the invoke. Were the lease to expire in the microseconds between,
        // a later holder would still need a Raft round (the key's deletion), its Lock answer and
        // its Range before its hold began, long after this one ended.
        let health = match lapsed() {
            None => LEASE_OK.to_owned(),
            Some(why) => format!("{LEASE_LAPSED}: {why}"),
        };
        let value = Value::List(vec![
            Value::Str(lock_key.to_owned()),
            Value::Int(fence),
            Value::Str(health),
        ]);
        let outcome = self
            .record(process, F::Release, LOCK_NAME, value.clone(), async {
                match self.bounded(client.unlock(lock_key)).await {
                    Ok(Ok(_)) => Outcome::Ok(value.clone()),
                    Ok(Err(e)) => unanswered(true, e.to_string()),
                    Err(_) => Outcome::Info("timed out".to_owned()),
                }
            })
            .await;
        outcomes.push(outcome);
        outcomes
    }

    /// The unfenced read-modify-write of the counter, `pause` between the read and the write.
    async fn increment(&self, client: &mut Client, pause: Duration) -> Outcome {
        let old = match self.bounded(client.get(COUNTER_KEY, None)).await {
            Ok(Ok(response)) => match response.kvs().first() {
                None => 0,
                Some(kv) => match parse_int(kv.value()) {
                    Some(v) => v,
                    None => {
                        return Outcome::Fail(format!(
                            "the counter is no integer: {:?}",
                            String::from_utf8_lossy(kv.value())
                        ))
                    }
                },
            },
            Ok(Err(e)) => return unanswered(false, format!("get: {e}")),
            Err(_) => return Outcome::Fail("get: timed out".to_owned()),
        };
        tokio::time::sleep(pause).await;
        let new = old + 1;
        match self
            .bounded(client.put(COUNTER_KEY, new.to_string(), None))
            .await
        {
            Ok(Ok(_)) => Outcome::Ok(Value::List(vec![Value::Int(old), Value::Int(new)])),
            Ok(Err(e)) => unanswered(true, format!("put: {e}")),
            Err(_) => Outcome::Info("put: timed out".to_owned()),
        }
    }

    /// The fenced append of `fence:token`.
    async fn append(&self, client: &mut Client, lock_key: &str, fence: i64, token: i64) -> Outcome {
        let (list, seen) = match self.bounded(client.get(FENCED_KEY, None)).await {
            Ok(Ok(response)) => match response.kvs().first() {
                None => (String::new(), 0),
                Some(kv) => (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                ),
            },
            Ok(Err(e)) => return unanswered(false, format!("get: {e}")),
            Err(_) => return Outcome::Fail("get: timed out".to_owned()),
        };
        let entry = format!("{fence}:{token}");
        let appended = if list.is_empty() {
            entry
        } else {
            format!("{list},{entry}")
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(lock_key, CompareOp::Equal, fence),
                // An absent key compares as mod revision 0.
                Compare::mod_revision(FENCED_KEY, CompareOp::Equal, seen),
            ])
            .and_then([TxnOp::put(FENCED_KEY, appended, None)])
            .or_else([TxnOp::get(lock_key, None), TxnOp::get(FENCED_KEY, None)]);
        match self.bounded(client.txn(txn)).await {
            Ok(Ok(response)) if response.succeeded() => {
                let revision = response.header().map_or(0, |h| h.revision());
                Outcome::Ok(Value::List(vec![
                    Value::Int(fence),
                    Value::Int(token),
                    Value::Int(revision),
                ]))
            }
            Ok(Ok(response)) => {
                let got = |i: usize| match response.op_responses().get(i) {
                    Some(TxnOpResponse::Get(get)) => get
                        .kvs()
                        .first()
                        .map(|kv| (kv.create_revision(), kv.mod_revision())),
                    _ => None,
                };
                Outcome::Fail(match (got(0), got(1)) {
                    (None, _) => format!("{FENCED_OUT}: {lock_key} is gone"),
                    (Some((created, _)), _) if created != fence => {
                        format!("{FENCED_OUT}: {lock_key} has create revision {created}")
                    }
                    (_, now) => format!(
                        "{LIST_CHANGED}: mod revision {seen} when read, {} at the txn",
                        now.map_or(0, |(_, m)| m)
                    ),
                })
            }
            Ok(Err(e)) => unanswered(true, format!("txn: {e}")),
            Err(_) => Outcome::Info("txn: timed out".to_owned()),
        }
    }

    /// A final read of `key` as `process`.
    async fn read(&self, client: &mut Client, process: Process, key: &str) -> Outcome {
        self.record(process, F::Read, key, Value::Null, async {
            match self.bounded(client.get(key, None)).await {
                Ok(Ok(response)) => match response.kvs().first() {
                    None => Outcome::Ok(Value::Null),
                    Some(kv) => {
                        let parsed = if key == COUNTER_KEY {
                            parse_int(kv.value()).map(Value::Int)
                        } else {
                            decode_list(&String::from_utf8_lossy(kv.value()))
                        };
                        // Only this workload writes these keys; anything else is a corruption
                        // worth seeing in the history.
                        parsed.map_or_else(
                            || {
                                Outcome::Info(format!(
                                    "read a value this workload cannot have written: {:?}",
                                    String::from_utf8_lossy(kv.value())
                                ))
                            },
                            Outcome::Ok,
                        )
                    }
                },
                Ok(Err(e)) => unanswered(false, e.to_string()),
                Err(_) => Outcome::Fail("timed out".to_owned()),
            }
        })
        .await
    }
}

fn parse_int(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The fenced list as stored (`fence:token,fence:token`) to `[[fence, token], …]`.
pub fn decode_list(text: &str) -> Option<Value> {
    if text.is_empty() {
        return Some(Value::List(Vec::new()));
    }
    text.split(',')
        .map(|entry| {
            let (fence, token) = entry.split_once(':')?;
            Some(Value::List(vec![
                Value::Int(fence.parse().ok()?),
                Value::Int(token.parse().ok()?),
            ]))
        })
        .collect::<Option<Vec<_>>>()
        .map(Value::List)
}

impl Workload for Locks {
    async fn step(&self, client: &mut Client, process: Process) -> Outcome {
        self.cycle(client, process).await
    }

    async fn final_reads(&self, cluster: &Cluster, first_process: Process) -> Result<()> {
        for member in 0..cluster.members() {
            let process = first_process + member as u64;
            let mut client = connect(&cluster.endpoint(member), self.timeout).await?;
            for key in [COUNTER_KEY, FENCED_KEY] {
                for _ in 0..FINAL_READ_ATTEMPTS {
                    match self.read(&mut client, process, key).await {
                        Outcome::Ok(_) => break,
                        _ => tokio::time::sleep(FINAL_READ_RETRY).await,
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&self, ops: &[Operation], _options: &CheckOptions) -> Result<Judgement> {
        Ok(check_lock(ops).judgement())
    }
}
