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
//! # The check
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
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use etcd_client::{Client, Compare, CompareOp, LockOptions, Txn, TxnOp, TxnOpResponse};
use rand::Rng;
use tokio::task::JoinHandle;

use super::{unanswered, Judgement, Workload, FINAL_READ_ATTEMPTS, FINAL_READ_RETRY};
use crate::checker::{CheckOptions, Verdict};
use crate::cluster::{connect, Cluster};
use crate::history::{Operation, Outcome, Process, Recorder, Status, Value, F};

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
}

impl Locks {
    pub fn new(recorder: Arc<Recorder>, timeout: Duration) -> Locks {
        Locks {
            recorder,
            timeout,
            next_token: AtomicI64::new(1),
        }
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

/// What a client knows of its lease: until when keep-alives have proven it alive, and whether
/// that proof has ever run out.
#[derive(Debug)]
pub struct LeaseHealth {
    alive_until: Instant,
    lapsed: Option<String>,
    since: Instant,
}

impl LeaseHealth {
    /// A lease granted by a request sent at `sent` with this TTL.
    pub fn new(sent: Instant, ttl: Duration) -> LeaseHealth {
        LeaseHealth {
            alive_until: sent + ttl,
            lapsed: None,
            since: sent,
        }
    }

    /// A keep-alive sent at `sent` was answered with this TTL.
    pub fn renewed(&mut self, sent: Instant, ttl: Duration) {
        self.lapse_if_past(sent);
        self.alive_until = self.alive_until.max(sent + ttl);
    }

    /// The server says the lease no longer exists.
    pub fn gone(&mut self, why: String) {
        self.lapsed.get_or_insert(why);
    }

    /// Why the lease may have expired by `now`, or `None` when it surely has not.
    pub fn check(&mut self, now: Instant) -> Option<String> {
        self.lapse_if_past(now);
        self.lapsed.clone()
    }

    fn lapse_if_past(&mut self, now: Instant) {
        if now > self.alive_until && self.lapsed.is_none() {
            self.lapsed = Some(format!(
                "no keep-alive answered in time: proven alive only until {:.3}s after the \
                 grant, seen at {:.3}s",
                (self.alive_until - self.since).as_secs_f64(),
                (now - self.since).as_secs_f64()
            ));
        }
    }
}

/// The background keep-alive of one lease.
struct KeepAlive(JoinHandle<()>);

impl KeepAlive {
    fn start(client: &Client, lease: i64, ttl: Duration, health: Arc<Mutex<LeaseHealth>>) -> Self {
        let mut leases = client.lease_client();
        let period = ttl / 3;
        let health_gone = {
            let health = Arc::clone(&health);
            move |why: String| health.lock().unwrap_or_else(|e| e.into_inner()).gone(why)
        };
        let renewed = move |sent: Instant, ttl: Duration| {
            health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .renewed(sent, ttl);
        };
        KeepAlive(tokio::spawn(async move {
            loop {
                // Opening the stream is itself a keep-alive (etcd-client sends one and waits
                // for its answer). An answer that comes late is dropped with the stream, so it
                // is never taken for the answer to a later keep-alive.
                let mut sent = Instant::now();
                let (mut keeper, mut stream) =
                    match tokio::time::timeout(period, leases.keep_alive(lease)).await {
                        Ok(Ok(pair)) => {
                            renewed(sent, ttl);
                            pair
                        }
                        Ok(Err(etcd_client::Error::LeaseKeepAliveError(e)))
                            if e.contains("not found") =>
                        {
                            health_gone(format!("keep-alive: {e}"));
                            return;
                        }
                        _ => {
                            tokio::time::sleep(period / 4).await;
                            continue;
                        }
                    };
                loop {
                    tokio::time::sleep_until((sent + period).into()).await;
                    sent = Instant::now();
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(period, stream.message()).await {
                        Ok(Ok(Some(response))) if response.ttl() > 0 => {
                            renewed(sent, Duration::from_secs(response.ttl() as u64));
                        }
                        Ok(Ok(Some(_))) => {
                            health_gone("keep-alive answered TTL 0: the lease expired".into());
                            return;
                        }
                        _ => break,
                    }
                }
            }
        }))
    }

    fn stop(&self) {
        self.0.abort();
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
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

// ---------------------------------------------------------------------------------------------
// The checker.

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

#[cfg(test)]
mod tests;
