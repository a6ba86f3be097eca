//! The lease workload: leases granted, keys attached to them, leases revoked, and the whole key
//! range read, by clients each bound to one member. It checks what a lease promises: no key of
//! a lease survives its revoke, and no revoked lease keeps keys (or accepts new ones).
//!
//! - `grant` (value: the TTL asked for) is a LeaseGrant; its ok result is the lease id. Most
//!   leases get a TTL far longer than the run ([`Leases::new`]), so they end only by a revoke;
//!   some get [`SHORT_TTL`] and expire during the run. A client that keeps none alive keeps its
//!   next short lease alive for a while ([`KEPT_FOR_MS`]), then lets it expire.
//! - `keepalive` (value: the lease) is one LeaseKeepAlive of a lease the client keeps alive,
//!   sent [`KEEP_ALIVE_PERIOD`] apart as etcd's clients do, on the client's own member; its ok
//!   result is the TTL the server answered. A lease that does not exist is answered TTL 0: a
//!   `fail`. A client keeps alive only leases it granted, across its processes (a process ends
//!   with an unknown outcome, the client goes on as a new one).
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
/// Live leases not kept alive beyond which clients revoke rather than grant.
const MAX_LIVE: usize = 10;
/// How often a client renews a lease it keeps alive: three times per TTL, as etcd's clients do.
pub const KEEP_ALIVE_PERIOD: Duration = Duration::from_millis(SHORT_TTL as u64 * 1000 / 3);
/// How long, in milliseconds, a client keeps a short lease alive before it lets it expire,
/// uniformly drawn: a few keep-alives, then a TTL of silence and the expiry.
const KEPT_FOR_MS: std::ops::Range<u64> = 5_000..20_000;
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
    KeepAlive {
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
            Op::KeepAlive { .. } => F::KeepAlive,
            Op::Read | Op::List => F::Read,
        }
    }

    fn key(self) -> String {
        match self {
            Op::Grant { .. } | Op::Read => PREFIX.to_owned(),
            Op::Write { lease, n } => write_key(lease, n),
            Op::Revoke { lease } | Op::KeepAlive { lease } => format!("{PREFIX}{lease:x}/"),
            Op::List => LEASES_KEY.to_owned(),
        }
    }

    fn value(self) -> Value {
        match self {
            Op::Grant { ttl } => ttl.into(),
            Op::Write { lease, n } => Value::List(vec![n.into(), lease.into()]),
            Op::Revoke { lease } | Op::KeepAlive { lease } => lease.into(),
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
    /// When a short lease's TTL runs out unless renewed (it may be gone from then on); `None`
    /// for long ones.
    expires: Option<Instant>,
    /// The client keeping it alive, while one does.
    keeper: Option<Keeper>,
}

/// A client keeping a lease alive.
#[derive(Clone, Copy, Debug)]
struct Keeper {
    /// The client that granted the lease: its processes' ids modulo the number of clients.
    client: u64,
    /// When its next keep-alive is due.
    due: Instant,
    /// When it stops keeping the lease alive.
    until: Instant,
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
    /// Lets go of leases kept alive long enough, and moves short leases past their TTL to
    /// `gone`. A lease kept alive stays until its client lets go, however late the answers
    /// to its keep-alives: like etcd's clients, the client goes on sending them.
    fn expire(&mut self, now: Instant) {
        for live in &mut self.live {
            if live.keeper.is_some_and(|k| k.until <= now) {
                live.keeper = None;
            }
        }
        let (expired, live): (Vec<Live>, Vec<Live>) = self
            .live
            .iter()
            .partition(|l| l.keeper.is_none() && l.expires.is_some_and(|e| e <= now));
        self.live = live;
        self.gone.extend(expired.iter().map(|l| l.id));
    }

    /// Whether `client` keeps a lease alive.
    fn keeps(&self, client: u64) -> bool {
        self.live
            .iter()
            .any(|l| l.keeper.is_some_and(|k| k.client == client))
    }

    /// A lease `client` keeps alive whose keep-alive is due at `now`; it is then due again a
    /// period later, whatever the outcome of this one.
    fn due_keep_alive(&mut self, client: u64, now: Instant) -> Option<i64> {
        let live = self
            .live
            .iter_mut()
            .find(|l| l.keeper.is_some_and(|k| k.client == client && k.due <= now))?;
        if let Some(keeper) = &mut live.keeper {
            keeper.due = now + KEEP_ALIVE_PERIOD;
        }
        Some(live.id)
    }

    /// A keep-alive of `lease` sent at `sent` was answered with `ttl` seconds.
    fn renewed(&mut self, lease: i64, sent: Instant, ttl: i64) {
        if let Some(live) = self.live.iter_mut().find(|l| l.id == lease) {
            let until = sent + Duration::from_secs(ttl.unsigned_abs());
            live.expires = live.expires.map(|e| e.max(until));
        }
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
    /// The run's clients: process `p` is client `p % clients`.
    clients: u64,
    /// The TTL of long-lived leases.
    long_ttl: i64,
    /// Write numbers come from one counter, so keys are unique.
    next_n: AtomicI64,
    book: Mutex<Book>,
}

impl Leases {
    /// A workload for `clients` clients whose long-lived leases outlive a run of `time_limit`
    /// (and its recovery and final reads) by far.
    pub fn new(
        recorder: Arc<Recorder>,
        timeout: Duration,
        time_limit: Duration,
        clients: usize,
    ) -> Leases {
        let run = i64::try_from(time_limit.as_secs()).unwrap_or(i64::MAX / 4);
        Leases {
            recorder,
            timeout,
            clients: clients.max(1) as u64,
            long_ttl: MIN_LONG_TTL.max(run.saturating_mul(2).saturating_add(600)),
            next_n: AtomicI64::new(1),
            book: Mutex::new(Book::default()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next operation of `process`: a keep-alive when one of its client's leases is due
    /// for one, else a random one: about 12% grants (a third of them short), 12% revokes, 48%
    /// writes and 28% reads. A revoke targets a lease known gone one time in five, else a live
    /// long-lived one while more than [`KEPT_LONG`] are live (short ones are left to expire). A
    /// write targets a lease known gone one time in eight, else a live one, a short one (while
    /// its TTL lasts) three times in ten when there is one. Without a target, or past
    /// [`MAX_LIVE`] live leases not kept alive for a grant, it is a grant or a revoke
    /// respectively.
    fn generate(&self, process: Process) -> Op {
        let mut rng = rand::thread_rng();
        let mut book = self.book();
        let now = Instant::now();
        book.expire(now);
        if let Some(lease) = book.due_keep_alive(process % self.clients, now) {
            return Op::KeepAlive { lease };
        }
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
            let unkept = book.live.iter().filter(|l| l.keeper.is_none()).count();
            return match unkept < MAX_LIVE {
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
        let sent = Instant::now();
        let perform = self.perform(client, process, op);
        let outcome = match tokio::time::timeout(self.timeout, perform).await {
            Ok(outcome) => outcome,
            Err(_) => unanswered(op.changes_state(), "timed out".to_owned()),
        };
        match (op, &outcome) {
            // Even an unknown outcome may have revoked it.
            (Op::Revoke { lease }, Outcome::Ok(_) | Outcome::Info(_)) => self.book().forget(lease),
            (Op::KeepAlive { lease }, Outcome::Ok(Value::Int(ttl))) => {
                self.book().renewed(lease, sent, *ttl)
            }
            (
                Op::Revoke { lease } | Op::Write { lease, .. } | Op::KeepAlive { lease },
                Outcome::Fail(e),
            ) if e.contains(LEASE_NOT_FOUND) => self.book().forget(lease),
            _ => {}
        }
        self.recorder.complete(id, outcome.clone());
        outcome
    }

    async fn perform(&self, client: &mut Client, process: Process, op: Op) -> Outcome {
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
                    let now = Instant::now();
                    let client = process % self.clients;
                    let keeper = (short && !book.keeps(client)).then(|| Keeper {
                        client,
                        due: now + KEEP_ALIVE_PERIOD,
                        until: now
                            + Duration::from_millis(rand::thread_rng().gen_range(KEPT_FOR_MS)),
                    });
                    book.live.push(Live {
                        id: response.id(),
                        expires: short.then(|| now + Duration::from_secs(granted.unsigned_abs())),
                        keeper,
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
            // etcd-client opens the stream with a keep-alive and keeps its answer's TTL to
            // itself, so a second keep-alive on the stream tells the TTL. Both were sent after
            // the invoke, so the answer proves the lease renewed after it.
            Op::KeepAlive { lease } => {
                let (mut keeper, mut answers) = match client.lease_keep_alive(lease).await {
                    Ok(stream) => stream,
                    Err(etcd_client::Error::LeaseKeepAliveError(e)) if e.contains("not found") => {
                        return Outcome::Fail(format!("{LEASE_NOT_FOUND}: keep-alive: {e}"))
                    }
                    Err(e) => return refused(e),
                };
                if let Err(e) = keeper.keep_alive().await {
                    return unanswered(true, e.to_string());
                }
                match answers.message().await {
                    Ok(Some(answer)) if answer.ttl() > 0 => Outcome::Ok(answer.ttl().into()),
                    Ok(Some(_)) => {
                        Outcome::Fail(format!("{LEASE_NOT_FOUND}: keep-alive answered TTL 0"))
                    }
                    Ok(None) => unanswered(true, "the keep-alive stream ended".to_owned()),
                    Err(e) => refused(e),
                }
            }
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
        let op = self.generate(process);
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
