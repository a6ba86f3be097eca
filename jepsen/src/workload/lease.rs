//! The lease workload: leases granted, keys attached to them, leases revoked, and the whole key
//! range read, by clients each bound to one member. It checks what a lease promises: no key of
//! a lease survives its revoke, and no revoked lease keeps keys (or accepts new ones).
//!
//! - `grant` (value: the TTL asked for) is a LeaseGrant; its ok result is the lease id. Most
//!   leases get a TTL far longer than the run ([`Leases::new`]), so they end only by a revoke;
//!   some get [`SHORT_TTL`] and are never kept alive, so they expire during the run.
//! - `write` of key `l/<lease-hex>/<n>` (value `[n, lease]`) is a Put attached to the lease. The
//!   key is unique to the write, so a read identifies the write it saw. Etcd refuses a Put to a
//!   lease that no longer exists with "etcdserver: requested lease not found": that is a `fail`.
//! - `revoke` (value: the lease) is a LeaseRevoke. Revoking a lease that no longer exists is
//!   refused with the same error, also a `fail`.
//! - `read` of key `l/` is a linearizable Range of the whole `l/` prefix; its ok result lists
//!   `[key, lease]` for every key found, with the lease the key is attached to.
//!
//! Clients mostly target live leases, but sometimes one that was revoked (or may have been, or
//! expired), to see the refusal. Errors follow [`unanswered`]: unanswered grants, writes and
//! revokes are `info`, unanswered reads `fail`.
//!
//! After recovery, the final reads wait until every short lease must have expired
//! ([`EXPIRY_MARGIN`] past the longest short TTL granted: a leader change gives every lease its
//! full TTL again, so expiry is only certain once the cluster is stable), then read the prefix
//! from every member, each followed by a LeaseLeases listing from the same member: a `read` of
//! key [`LEASES_KEY`] whose ok result is the list of lease ids. Only the final reads list
//! leases, which is how the checker tells them apart.
//!
//! [`check_leases`] judges the history; see there for the rules.

mod checker;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use etcd_client::{Client, GetOptions, PutOptions};
use rand::Rng;

use super::{unanswered, Judgement, Workload, FINAL_READ_ATTEMPTS, FINAL_READ_RETRY};
use crate::checker::CheckOptions;
use crate::cluster::{connect, Cluster};
use crate::history::{Operation, Outcome, Process, Recorder, Value, F};
pub use checker::{check_leases, Anomaly, AnomalyKind, LeaseReport};

/// Every key of the workload is under this prefix; reads read all of it.
pub const PREFIX: &str = "l/";
/// The key of the final lease listings.
pub const LEASES_KEY: &str = "leases";
/// The TTL of the leases meant to expire during the run. 2 s is etcd's minimum with a 1 s
/// election timeout (1.5 election timeouts, rounded up), so the server grants it as asked.
pub const SHORT_TTL: i64 = 2;
/// For the checker, a lease granted with a TTL of at most this many seconds is short-lived: it
/// must be gone by the final reads. Any longer lease must outlive the run unless revoked.
pub const SHORT_TTL_MAX: i64 = 10;
/// The least TTL of the long-lived leases, far beyond any lease's own expiry in a run.
pub const MIN_LONG_TTL: i64 = 3600;
/// What the final reads wait beyond the longest short TTL: two election timeouts (a leader
/// elected after recovery gives every lease its full TTL again), the leader's expiry check
/// period and the revoke's commit, with room to spare.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// The error etcd (and oxcd) gives for a lease that does not exist.
pub const LEASE_NOT_FOUND: &str = "requested lease not found";
/// Live leases beyond which clients revoke rather than grant.
const MAX_LIVE: usize = 10;
/// Live long-lived leases below which clients do not revoke them.
const KEPT_LONG: usize = 3;

/// The key of write `n` attached to `lease`.
pub fn write_key(lease: i64, n: i64) -> String {
    format!("{PREFIX}{lease:x}/{n}")
}

/// One operation, before it is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Grant {
        ttl: i64,
    },
    Write {
        lease: i64,
        n: i64,
    },
    Revoke {
        lease: i64,
    },
    /// A linearizable Range of the whole prefix.
    Read,
    /// A LeaseLeases listing (final reads only).
    List,
}

impl Op {
    fn f(self) -> F {
        match self {
            Op::Grant { .. } => F::Grant,
            Op::Write { .. } => F::Write,
            Op::Revoke { .. } => F::Revoke,
            Op::Read | Op::List => F::Read,
        }
    }

    fn key(self) -> String {
        match self {
            Op::Grant { .. } | Op::Read => PREFIX.to_owned(),
            Op::Write { lease, n } => write_key(lease, n),
            Op::Revoke { lease } => format!("{PREFIX}{lease:x}/"),
            Op::List => LEASES_KEY.to_owned(),
        }
    }

    fn value(self) -> Value {
        match self {
            Op::Grant { ttl } => ttl.into(),
            Op::Write { lease, n } => Value::List(vec![n.into(), lease.into()]),
            Op::Revoke { lease } => lease.into(),
            Op::Read | Op::List => Value::Null,
        }
    }

    fn changes_state(self) -> bool {
        !matches!(self, Op::Read | Op::List)
    }
}

/// A lease the workload was granted and does not know to be gone.
#[derive(Clone, Copy, Debug)]
struct Live {
    id: i64,
    /// When a short lease's TTL runs out (it may be gone from then on); `None` for long ones.
    expires: Option<Instant>,
}

/// What the workers know of the leases, to choose targets.
#[derive(Default)]
struct Book {
    live: Vec<Live>,
    /// Leases revoked, possibly revoked (an unknown-outcome revoke), refused as not found, or
    /// short ones past their TTL: targets to see a refusal.
    gone: Vec<i64>,
    /// The longest TTL granted to a short lease, in seconds.
    longest_short_ttl: Option<i64>,
}

impl Book {
    /// Moves short leases past their TTL to `gone`.
    fn expire(&mut self, now: Instant) {
        let (expired, live): (Vec<Live>, Vec<Live>) = self
            .live
            .iter()
            .partition(|l| l.expires.is_some_and(|e| e <= now));
        self.live = live;
        self.gone.extend(expired.iter().map(|l| l.id));
    }

    fn forget(&mut self, lease: i64) {
        if let Some(i) = self.live.iter().position(|l| l.id == lease) {
            self.live.swap_remove(i);
        }
        if !self.gone.contains(&lease) {
            self.gone.push(lease);
        }
    }
}

/// What all the workers of a run share.
pub struct Leases {
    recorder: Arc<Recorder>,
    /// The bound on every request.
    timeout: Duration,
    /// The TTL of long-lived leases.
    long_ttl: i64,
    /// Write numbers come from one counter, so keys are unique.
    next_n: AtomicI64,
    book: Mutex<Book>,
}

impl Leases {
    /// A workload whose long-lived leases outlive a run of `time_limit` (and its recovery and
    /// final reads) by far.
    pub fn new(recorder: Arc<Recorder>, timeout: Duration, time_limit: Duration) -> Leases {
        let run = i64::try_from(time_limit.as_secs()).unwrap_or(i64::MAX / 4);
        Leases {
            recorder,
            timeout,
            long_ttl: MIN_LONG_TTL.max(run.saturating_mul(2).saturating_add(600)),
            next_n: AtomicI64::new(1),
            book: Mutex::new(Book::default()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A random operation: about 12% grants (a third of them short), 12% revokes, 48% writes
    /// and 28% reads. A revoke targets a lease known gone one time in five, else a live
    /// long-lived one while more than [`KEPT_LONG`] are live (short ones are left to expire). A write targets a lease known gone one
    /// time in eight, else a live one, a short one (while its TTL lasts) three times in ten when
    /// there is one. Without a target, or past [`MAX_LIVE`] live leases for a grant, it is a
    /// grant or a revoke respectively.
    fn generate(&self) -> Op {
        let mut rng = rand::thread_rng();
        let mut book = self.book();
        book.expire(Instant::now());
        let r = rng.gen_range(0..100);
        if r >= 72 {
            return Op::Read;
        }
        let pick = |rng: &mut rand::rngs::ThreadRng, ids: &[i64]| {
            (!ids.is_empty()).then(|| ids[rng.gen_range(0..ids.len())])
        };
        let short: Vec<i64> = book
            .live
            .iter()
            .filter(|l| l.expires.is_some())
            .map(|l| l.id)
            .collect();
        let long: Vec<i64> = book
            .live
            .iter()
            .filter(|l| l.expires.is_none())
            .map(|l| l.id)
            .collect();
        let gone = &book.gone;
        let grant = || Op::Grant {
            ttl: if rand::thread_rng().gen_ratio(1, 3) {
                SHORT_TTL
            } else {
                self.long_ttl
            },
        };
        let revoke = |rng: &mut rand::rngs::ThreadRng| {
            let target = if rng.gen_ratio(1, 5) {
                pick(rng, gone)
            } else {
                None
            };
            // A few long-lived leases are always kept, so that the end state holds keys whose
            // survival the final reads check.
            let spare = if long.len() > KEPT_LONG {
                &long[..]
            } else {
                &[]
            };
            target
                .or_else(|| pick(rng, spare))
                .or_else(|| pick(rng, gone))
                .map(|lease| Op::Revoke { lease })
        };
        if r < 12 {
            return match book.live.len() < MAX_LIVE {
                true => grant(),
                false => revoke(&mut rng).unwrap_or_else(grant),
            };
        }
        if r < 24 {
            return revoke(&mut rng).unwrap_or_else(grant);
        }
        let target = if rng.gen_ratio(1, 8) {
            pick(&mut rng, gone)
        } else if rng.gen_ratio(3, 10) {
            pick(&mut rng, &short)
        } else {
            None
        };
        let target = target
            .or_else(|| pick(&mut rng, &long))
            .or_else(|| pick(&mut rng, &short))
            .or_else(|| pick(&mut rng, gone));
        match target {
            Some(lease) => Op::Write {
                lease,
                n: self.next_n.fetch_add(1, Ordering::Relaxed),
            },
            None => grant(),
        }
    }

    /// Performs `op` as `process`, recording its invoke and completion; returns how it ended.
    pub async fn execute(&self, client: &mut Client, process: Process, op: Op) -> Outcome {
        let id = self.recorder.invoke(process, op.f(), op.key(), op.value());
        let outcome = match tokio::time::timeout(self.timeout, self.perform(client, op)).await {
            Ok(outcome) => outcome,
            Err(_) => unanswered(op.changes_state(), "timed out".to_owned()),
        };
        match (op, &outcome) {
            // Even an unknown outcome may have revoked it.
            (Op::Revoke { lease }, Outcome::Ok(_) | Outcome::Info(_)) => self.book().forget(lease),
            (Op::Revoke { lease } | Op::Write { lease, .. }, Outcome::Fail(e))
                if e.contains(LEASE_NOT_FOUND) =>
            {
                self.book().forget(lease)
            }
            _ => {}
        }
        self.recorder.complete(id, outcome.clone());
        outcome
    }

    async fn perform(&self, client: &mut Client, op: Op) -> Outcome {
        let refused = |e: etcd_client::Error| {
            let e = e.to_string();
            if e.contains(LEASE_NOT_FOUND) {
                Outcome::Fail(e)
            } else {
                unanswered(op.changes_state(), e)
            }
        };
        match op {
            Op::Grant { ttl } => match client.lease_grant(ttl, None).await {
                Ok(response) => {
                    let mut book = self.book();
                    let short = ttl <= SHORT_TTL_MAX;
                    let granted = response.ttl().max(0);
                    if short {
                        book.longest_short_ttl = book.longest_short_ttl.max(Some(granted));
                    }
                    book.live.push(Live {
                        id: response.id(),
                        expires: short
                            .then(|| Instant::now() + Duration::from_secs(granted.unsigned_abs())),
                    });
                    Outcome::Ok(response.id().into())
                }
                Err(e) => unanswered(true, e.to_string()),
            },
            Op::Write { lease, n } => {
                let options = PutOptions::new().with_lease(lease);
                match client
                    .put(write_key(lease, n), n.to_string(), Some(options))
                    .await
                {
                    Ok(_) => Outcome::Ok(op.value()),
                    Err(e) => refused(e),
                }
            }
            Op::Revoke { lease } => match client.lease_revoke(lease).await {
                Ok(_) => Outcome::Ok(lease.into()),
                Err(e) => refused(e),
            },
            Op::Read => {
                let options = GetOptions::new().with_prefix();
                match client.get(PREFIX, Some(options)).await {
                    Ok(response) => Outcome::Ok(Value::List(
                        response
                            .kvs()
                            .iter()
                            .map(|kv| {
                                let key = String::from_utf8_lossy(kv.key()).into_owned();
                                Value::List(vec![Value::Str(key), kv.lease().into()])
                            })
                            .collect(),
                    )),
                    Err(e) => unanswered(false, e.to_string()),
                }
            }
            Op::List => match client.leases().await {
                Ok(response) => {
                    let mut ids: Vec<i64> = response.leases().iter().map(|l| l.id()).collect();
                    ids.sort_unstable();
                    Outcome::Ok(Value::List(ids.into_iter().map(Value::Int).collect()))
                }
                Err(e) => unanswered(false, e.to_string()),
            },
        }
    }

    /// How long the final reads wait for every short lease to expire; `None` when no short
    /// lease was granted.
    fn expiry_wait(&self) -> Option<Duration> {
        let ttl = self.book().longest_short_ttl?;
        Some(Duration::from_secs(ttl.unsigned_abs()) + EXPIRY_MARGIN)
    }
}

impl Workload for Leases {
    async fn step(&self, client: &mut Client, process: Process) -> Outcome {
        let op = self.generate();
        self.execute(client, process, op).await
    }

    async fn final_reads(&self, cluster: &Cluster, first_process: Process) -> Result<()> {
        if let Some(wait) = self.expiry_wait() {
            tokio::time::sleep(wait).await;
        }
        for member in 0..cluster.members() {
            let process = first_process + member as u64;
            let mut client = connect(&cluster.endpoint(member), self.timeout).await?;
            // The listing comes after the linearizable read on the same member, so that member
            // has applied every revoke acknowledged before the read began.
            for op in [Op::Read, Op::List] {
                for _ in 0..FINAL_READ_ATTEMPTS {
                    match self.execute(&mut client, process, op).await {
                        Outcome::Ok(_) => break,
                        _ => tokio::time::sleep(FINAL_READ_RETRY).await,
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&self, ops: &[Operation], _options: &CheckOptions) -> Result<Judgement> {
        let report = check_leases(ops)?;
        Ok(Judgement {
            verdict: report.verdict(),
            explanation: report.explanation(),
            failed: report.failed(),
        })
    }
}
