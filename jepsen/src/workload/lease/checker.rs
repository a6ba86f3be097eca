//! The lease checker: see [`check_leases`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write as _};

use anyhow::{bail, Result};

use super::{LEASES_KEY, LEASE_NOT_FOUND, PREFIX, SHORT_TTL_MAX};
use crate::checker::Verdict;
use crate::history::{Operation, Process, Status, Value, F};

/// What kind of anomaly the checker found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// A read invoked after a lease was known gone returned a key attached to it.
    KeyAfterRevoke,
    /// A write attached to a lease known gone before it was invoked was ok.
    WriteAfterRevoke,
    /// A final read (after the expiry wait) returned a key of a short-lived lease.
    KeyAfterExpiry,
    /// A final read lacks a key whose write was acknowledged and whose lease was long-lived
    /// and never (possibly) revoked.
    LostWrite,
    /// A read during the run lacks a key written (ok) before it was invoked, whose lease was
    /// long-lived and not (possibly) revoked before it returned.
    StaleRead,
    /// The final reads of two members differ.
    FinalReadsDiffer,
    /// The final listing lists a lease known gone.
    LeaseAfterRevoke,
    /// The final listing lists a short-lived lease.
    LeaseAfterExpiry,
    /// A long-lived lease that nothing could have revoked was refused as not found, or is
    /// missing from the final listing.
    LostLease,
    /// A read returned a key no write could have put there: never written, written by a
    /// failed write or only after the read returned, or attached to another lease.
    PhantomKey,
    /// Two ok grants returned the same lease id.
    DuplicateLease,
    /// A keep-alive promised the lease alive for its TTL, and a read (or a final listing)
    /// within that promise showed it gone, though no client revoked it.
    ExpiredBeforePromise,
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnomalyKind::KeyAfterRevoke => "key of a revoked lease read",
            AnomalyKind::WriteAfterRevoke => "write to a revoked lease accepted",
            AnomalyKind::KeyAfterExpiry => "key of an expired lease in a final read",
            AnomalyKind::LostWrite => "acknowledged write missing from a final read",
            AnomalyKind::StaleRead => "acknowledged write missing from a later read",
            AnomalyKind::FinalReadsDiffer => "members' final reads differ",
            AnomalyKind::LeaseAfterRevoke => "revoked lease listed at the end",
            AnomalyKind::LeaseAfterExpiry => "expired lease listed at the end",
            AnomalyKind::LostLease => "lease lost",
            AnomalyKind::PhantomKey => "key no write put there",
            AnomalyKind::DuplicateLease => "lease id granted twice",
            AnomalyKind::ExpiredBeforePromise => {
                "lease expired before the TTL its keep-alive promised"
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// What it concerns, for the summary: `lease <hex>`, or `final reads`.
    pub subject: String,
    /// A readable account, naming the operations involved.
    pub explanation: String,
}

#[derive(Clone, Debug, Default)]
pub struct LeaseReport {
    /// In the order the rules found them.
    pub anomalies: Vec<Anomaly>,
    /// Final reads of the prefix that were ok.
    pub final_reads: usize,
    /// Final lease listings that were ok.
    pub final_listings: usize,
    /// Reads held to a keep-alive's promise (rule 7): pairs of a read and a lease with keys it
    /// must hold because some keep-alive of the lease promised it alive.
    pub promised_reads: usize,
}

/// Anomalies of one kind spelled out in the explanation; the rest are counted.
const SHOWN_PER_KIND: usize = 10;

impl LeaseReport {
    /// Invalid with any anomaly; unknown when no final read succeeded (the end state went
    /// unchecked); else valid.
    pub fn verdict(&self) -> Verdict {
        if !self.anomalies.is_empty() {
            Verdict::Invalid
        } else if self.final_reads == 0 {
            Verdict::Unknown
        } else {
            Verdict::Valid
        }
    }

    /// Every anomaly, grouped by kind (at most [`SHOWN_PER_KIND`] each spelled out).
    pub fn explanation(&self) -> String {
        let mut out = format!(
            "{} reads were held to a keep-alive's promise of a lease with keys\n",
            self.promised_reads
        );
        if self.final_reads == 0 {
            out.push_str(
                "\nNo final read of the prefix succeeded: durability and expiry were not \
                 checked.\n",
            );
        } else if self.final_listings == 0 {
            out.push_str("\nNo final lease listing succeeded: the lease list was not checked.\n");
        }
        let mut by_kind: BTreeMap<AnomalyKind, Vec<&Anomaly>> = BTreeMap::new();
        for a in &self.anomalies {
            by_kind.entry(a.kind).or_default().push(a);
        }
        for (kind, anomalies) in by_kind {
            let _ = writeln!(out, "\n{kind} ({}):", anomalies.len());
            for a in anomalies.iter().take(SHOWN_PER_KIND) {
                let _ = writeln!(out, "- {}", a.explanation);
            }
            if anomalies.len() > SHOWN_PER_KIND {
                let _ = writeln!(out, "- ... and {} more", anomalies.len() - SHOWN_PER_KIND);
            }
        }
        out
    }

    /// Each subject with an anomaly, and the kinds found, for the summary.
    pub fn failed(&self) -> BTreeMap<String, String> {
        let mut kinds: BTreeMap<String, BTreeSet<AnomalyKind>> = BTreeMap::new();
        for a in &self.anomalies {
            kinds.entry(a.subject.clone()).or_default().insert(a.kind);
        }
        kinds
            .into_iter()
            .map(|(subject, kinds)| {
                let kinds: Vec<String> = kinds.iter().map(ToString::to_string).collect();
                (subject, format!("invalid: {}", kinds.join("; ")))
            })
            .collect()
    }
}

fn hex(lease: i64) -> String {
    format!("{lease:x}")
}

fn at(ns: u64) -> String {
    format!("{}.{:03}ms", ns / 1_000_000, ns / 1_000 % 1_000)
}

/// An operation in a sentence: what, by whom, when, how it ended.
fn describe(op: &Operation) -> String {
    let lease = |v: &Value| match v {
        Value::Int(id) => format!("lease {}", hex(*id)),
        Value::List(pair) if pair.len() == 2 => match pair[1] {
            Value::Int(id) => format!("lease {}", hex(id)),
            _ => format!("{}", pair[1]),
        },
        other => other.to_string(),
    };
    let what = match op.f {
        F::Grant if op.status == Status::Ok => {
            format!("grant (ttl {}s) of {}", op.value, lease(&op.result))
        }
        F::Grant => format!("grant (ttl {}s)", op.value),
        F::Revoke => format!("revoke of {}", lease(&op.value)),
        F::KeepAlive if op.status == Status::Ok => format!(
            "keep-alive of {} (answered ttl {}s)",
            lease(&op.value),
            op.result
        ),
        F::KeepAlive => format!("keep-alive of {}", lease(&op.value)),
        F::Write => format!("write of {} attached to {}", op.key, lease(&op.value)),
        F::Read if op.key == LEASES_KEY => "lease listing".to_owned(),
        F::Read => format!("read of {}", op.key),
        other => format!("{other} {} {}", op.key, op.value),
    };
    let end = match (op.status, op.complete_time) {
        (_, None) => "no response".to_owned(),
        (Status::Ok, Some(t)) => format!("ok at {}", at(t)),
        (Status::Fail, Some(t)) => format!(
            "failed at {}{}",
            at(t),
            op.error
                .as_ref()
                .map_or_else(String::new, |e| format!(": {e}"))
        ),
        (Status::Info, Some(t)) => format!(
            "unknown outcome at {}{}",
            at(t),
            op.error
                .as_ref()
                .map_or_else(String::new, |e| format!(": {e}"))
        ),
    };
    format!(
        "{what} by process {} (invoked at {}, {end})",
        op.process,
        at(op.invoke_time)
    )
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// `[n, lease]`.
fn write_value(v: &Value) -> Option<(i64, i64)> {
    match v {
        Value::List(pair) if pair.len() == 2 => Some((int(&pair[0])?, int(&pair[1])?)),
        _ => None,
    }
}

/// A read's `[[key, lease], ...]`.
fn read_result(v: &Value) -> Option<Vec<(String, i64)>> {
    let Value::List(entries) = v else {
        return None;
    };
    entries
        .iter()
        .map(|e| match e {
            Value::List(pair) if pair.len() == 2 => match (&pair[0], &pair[1]) {
                (Value::Str(key), Value::Int(lease)) => Some((key.clone(), *lease)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A listing's `[id, ...]`.
fn listing_result(v: &Value) -> Option<BTreeSet<i64>> {
    let Value::List(ids) = v else {
        return None;
    };
    ids.iter().map(int).collect()
}

fn not_found(op: &Operation) -> bool {
    op.status == Status::Fail
        && op
            .error
            .as_deref()
            .is_some_and(|e| e.contains(LEASE_NOT_FOUND))
}

/// The history, sorted out by what the rules need.
struct Facts<'a> {
    ops: &'a [Operation],
    /// Ok grants by the lease id they returned.
    grants: BTreeMap<i64, Vec<usize>>,
    /// Writes by key (unique per write), with `[n, lease]`.
    writes: HashMap<&'a str, (usize, i64)>,
    /// The earliest completion of an operation that shows the lease gone: an ok revoke, or a
    /// revoke or write refused with "lease not found". Leases never come back (ids are not
    /// reused), so from then on it has no keys and takes none.
    gone: HashMap<i64, (u64, usize)>,
    /// The earliest invoke of a revoke that is ok or of unknown outcome: from then on the
    /// lease may be gone.
    revoke_invoked: HashMap<i64, (u64, usize)>,
    /// Ok keep-alives: `(index, lease, ttl answered)`.
    keep_alives: Vec<(usize, i64, i64)>,
    /// Ok reads of the prefix, with their results, in invoke order.
    reads: Vec<(usize, Vec<(String, i64)>)>,
    /// Ok final listings, with their results.
    listings: Vec<(usize, BTreeSet<i64>)>,
    /// Processes that listed leases: those of the final reads.
    final_processes: BTreeSet<Process>,
}

impl<'a> Facts<'a> {
    fn gather(ops: &'a [Operation]) -> Result<Facts<'a>> {
        let mut facts = Facts {
            ops,
            grants: BTreeMap::new(),
            writes: HashMap::new(),
            gone: HashMap::new(),
            revoke_invoked: HashMap::new(),
            keep_alives: Vec::new(),
            reads: Vec::new(),
            listings: Vec::new(),
            final_processes: BTreeSet::new(),
        };
        let earliest = |map: &mut HashMap<i64, (u64, usize)>, lease, time, i| {
            let entry = map.entry(lease).or_insert((time, i));
            if time < entry.0 {
                *entry = (time, i);
            }
        };
        for (i, op) in ops.iter().enumerate() {
            let bad = || {
                anyhow::anyhow!(
                    "not an operation of the lease workload: {} {:?} value {} result {}",
                    op.f,
                    op.key,
                    op.value,
                    op.result
                )
            };
            match op.f {
                F::Grant => {
                    int(&op.value).ok_or_else(bad)?;
                    if op.status == Status::Ok {
                        let id = int(&op.result).ok_or_else(bad)?;
                        facts.grants.entry(id).or_default().push(i);
                    }
                }
                F::Revoke => {
                    let lease = int(&op.value).ok_or_else(bad)?;
                    match (op.status, op.complete_time) {
                        (Status::Ok, Some(t)) => earliest(&mut facts.gone, lease, t, i),
                        (Status::Fail, Some(t)) if not_found(op) => {
                            earliest(&mut facts.gone, lease, t, i)
                        }
                        _ => {}
                    }
                    if matches!(op.status, Status::Ok | Status::Info) {
                        earliest(&mut facts.revoke_invoked, lease, op.invoke_time, i);
                    }
                }
                F::KeepAlive => {
                    let lease = int(&op.value).ok_or_else(bad)?;
                    if op.status == Status::Ok {
                        let ttl = int(&op.result).ok_or_else(bad)?;
                        facts.keep_alives.push((i, lease, ttl));
                    }
                }
                F::Write => {
                    let (_, lease) = write_value(&op.value).ok_or_else(bad)?;
                    if facts.writes.insert(&op.key, (i, lease)).is_some() {
                        bail!(
                            "key {:?} is written twice; the lease workload writes every key once",
                            op.key
                        );
                    }
                    if let (true, Some(t)) = (not_found(op), op.complete_time) {
                        earliest(&mut facts.gone, lease, t, i);
                    }
                }
                F::Read if op.key == LEASES_KEY => {
                    facts.final_processes.insert(op.process);
                    if op.status == Status::Ok {
                        let ids = listing_result(&op.result).ok_or_else(bad)?;
                        facts.listings.push((i, ids));
                    }
                }
                F::Read if op.key == PREFIX => {
                    if op.status == Status::Ok {
                        let entries = read_result(&op.result).ok_or_else(bad)?;
                        facts.reads.push((i, entries));
                    }
                }
                _ => return Err(bad()),
            }
        }
        Ok(facts)
    }

    /// The TTL the lease was granted with (as asked), if an ok grant returned it.
    fn ttl(&self, lease: i64) -> Option<i64> {
        let first = *self.grants.get(&lease)?.first()?;
        int(&self.ops[first].value)
    }

    fn short(&self, lease: i64) -> bool {
        self.ttl(lease).is_some_and(|t| t <= SHORT_TTL_MAX)
    }

    fn long(&self, lease: i64) -> bool {
        self.ttl(lease).is_some_and(|t| t > SHORT_TTL_MAX)
    }

    /// When the first ok grant of the lease completed.
    fn granted_at(&self, lease: i64) -> Option<u64> {
        let first = *self.grants.get(&lease)?.first()?;
        self.ops[first].complete_time
    }

    /// A revoke (ok or unknown outcome) invoked before `time`, if any.
    fn revoked_before(&self, lease: i64, time: u64) -> Option<&'a Operation> {
        let ops = self.ops;
        self.revoke_invoked
            .get(&lease)
            .filter(|(t, _)| *t < time)
            .map(|(_, i)| &ops[*i])
    }

    /// The operation showing the lease gone, if one completed before `time`.
    fn gone_before(&self, lease: i64, time: u64) -> Option<&'a Operation> {
        let ops = self.ops;
        self.gone
            .get(&lease)
            .filter(|(t, _)| *t < time)
            .map(|(_, i)| &ops[*i])
    }

    fn is_final(&self, op: &Operation) -> bool {
        self.final_processes.contains(&op.process)
    }

    /// A read (or listing) in a sentence, saying which member a final one read from.
    fn describe_read(&self, op: &Operation) -> String {
        if self.is_final(op) {
            format!("final {} from {}", describe(op), self.member(op))
        } else {
            describe(op)
        }
    }

    /// The member a final read's process read from, as `n<i>`.
    fn member(&self, op: &Operation) -> String {
        let first = self.final_processes.first().copied().unwrap_or(0);
        format!("n{}", op.process.saturating_sub(first) + 1)
    }
}

/// Why the lease is known gone, in words.
fn gone_because(op: &Operation) -> String {
    match op.f {
        F::Revoke if op.status == Status::Ok => format!("it was revoked: {}", describe(op)),
        _ => format!("it no longer existed: {}", describe(op)),
    }
}

/// Checks a lease workload history. Operations of unknown outcome may have happened or not and
/// are never flagged themselves. The rules:
///
/// 1. No read invoked after a lease was known gone (an ok revoke, or a revoke or write refused
///    as "lease not found", completed) returns a key attached to it. Final reads included.
/// 2. No write attached to a lease known gone before it was invoked is ok.
/// 3. The final reads (after the expiry wait, one per member) agree; they hold no key of a
///    short-lived lease; and they hold every key whose write was ok and whose lease is
///    long-lived and never had an ok or unknown-outcome revoke (it cannot have gone). Reads
///    during the run are held to the same: a key written (ok) before a read was invoked is in
///    it unless a revoke of its lease may have happened before the read returned, or the lease
///    is short-lived.
/// 4. The final lease listing holds no lease known gone and no short-lived lease, and holds
///    every long-lived lease granted ok that had no ok or unknown-outcome revoke; nor was such
///    a lease ever refused as not found.
/// 5. Every key a read returns was put there: by a write of that key, not failed, invoked
///    before the read returned, attached to the lease the read reports.
/// 6. No two ok grants return the same lease id.
/// 7. A keep-alive's promise holds. A keep-alive invoked at `s` and answered ok with TTL `t`
///    was renewed by a leader after `s` (after confirming its leadership with a quorum), so
///    the lease cannot expire before `s + t`: that leader's own expiry is later, and any later
///    leader was elected after `s` and gives every lease its full TTL again. A read invoked
///    after the keep-alive returned (the lease existed then) and returned before `s + t` must
///    hold every key of the lease written ok before the read was invoked, unless a client's
///    revoke of the lease (ok or unknown outcome) was invoked before the read returned. The
///    same holds for a final lease listing, which must list the lease, when a linearizable read
///    on the same member was invoked after the keep-alive returned and before the listing (the
///    listing comes from the member's own lease table, so only such a read proves that the
///    member had applied the grant). Every time is on the one clock of the harness's host,
///    which the members share.
///
/// Lease ids are assumed never reused (etcd's and oxcd's are unique per member and restart).
/// Errors on operations that are not the lease workload's.
pub fn check_leases(ops: &[Operation]) -> Result<LeaseReport> {
    let facts = Facts::gather(ops)?;
    let mut anomalies = Vec::new();
    let mut flag = |kind, subject: String, explanation: String| {
        anomalies.push(Anomaly {
            kind,
            subject,
            explanation,
        })
    };
    let lease_subject = |lease: i64| format!("lease {}", hex(lease));

    // 6: one grant per id.
    for (&lease, grants) in &facts.grants {
        if grants.len() > 1 {
            let all: Vec<String> = grants.iter().map(|&i| describe(&ops[i])).collect();
            flag(
                AnomalyKind::DuplicateLease,
                lease_subject(lease),
                format!(
                    "lease {} was granted {} times: {}",
                    hex(lease),
                    grants.len(),
                    all.join("; ")
                ),
            );
        }
    }

    // 2: no write accepted after its lease was gone.
    for op in ops
        .iter()
        .filter(|op| op.f == F::Write && op.status == Status::Ok)
    {
        let (_, lease) = write_value(&op.value).expect("checked when gathered");
        if let Some(gone) = facts.gone_before(lease, op.invoke_time) {
            flag(
                AnomalyKind::WriteAfterRevoke,
                lease_subject(lease),
                format!(
                    "the {} was accepted, but lease {} was gone before it was invoked: {}",
                    describe(op),
                    hex(lease),
                    gone_because(gone)
                ),
            );
        }
    }

    // 4 (refusals): a long-lived lease nothing could have revoked must not be refused.
    for op in ops.iter().filter(|op| not_found(op)) {
        let lease = match op.f {
            F::Write => write_value(&op.value).map(|(_, lease)| lease),
            _ => int(&op.value),
        };
        let Some(lease) = lease else { continue };
        let (Some(granted), Some(done)) = (facts.granted_at(lease), op.complete_time) else {
            continue;
        };
        if facts.long(lease)
            && granted < op.invoke_time
            && facts.revoked_before(lease, done).is_none()
        {
            flag(
                AnomalyKind::LostLease,
                lease_subject(lease),
                format!(
                    "the {} was refused, but lease {} was granted (ttl {}s, far longer than the \
                     run) by {} and no revoke of it had been invoked",
                    describe(op),
                    hex(lease),
                    facts.ttl(lease).unwrap_or_default(),
                    describe(&ops[facts.grants[&lease][0]])
                ),
            );
        }
    }

    // Ok writes of long-lived leases, by completion time, for the missing-key rule.
    let mut durable: Vec<(u64, &Operation, i64)> = ops
        .iter()
        .filter(|op| op.f == F::Write && op.status == Status::Ok)
        .filter_map(|op| {
            let (_, lease) = write_value(&op.value)?;
            Some((op.complete_time?, op, lease))
        })
        .filter(|(_, _, lease)| facts.long(*lease))
        .collect();
    durable.sort_by_key(|(t, _, _)| *t);

    for (i, entries) in &facts.reads {
        let read = &ops[*i];
        let returned = read.complete_time.unwrap_or(u64::MAX);
        let is_final = facts.is_final(read);
        let which = facts.describe_read(read);
        for (key, lease) in entries {
            // 5: the key was put there.
            let problem = match facts.writes.get(key.as_str()) {
                None => Some("no write of that key was invoked".to_owned()),
                Some(&(w, written_lease)) => {
                    let write = &ops[w];
                    if write.status == Status::Fail {
                        Some(format!("its write failed: {}", describe(write)))
                    } else if write.invoke_time > returned {
                        Some(format!(
                            "its write was invoked only after the read returned: {}",
                            describe(write)
                        ))
                    } else if written_lease != *lease {
                        Some(format!(
                            "the read has it attached to lease {}, but its write attached it to \
                             lease {}: {}",
                            hex(*lease),
                            hex(written_lease),
                            describe(write)
                        ))
                    } else {
                        None
                    }
                }
            };
            if let Some(problem) = problem {
                flag(
                    AnomalyKind::PhantomKey,
                    format!("key {key}"),
                    format!("the {which} returned key {key}, but {problem}"),
                );
            }
            // 1: no key of a lease gone before the read.
            if let Some(gone) = facts.gone_before(*lease, read.invoke_time) {
                flag(
                    AnomalyKind::KeyAfterRevoke,
                    lease_subject(*lease),
                    format!(
                        "the {which} returned key {key} of lease {}, but {}",
                        hex(*lease),
                        gone_because(gone)
                    ),
                );
            } else if is_final && facts.short(*lease) {
                // 3: short-lived leases have expired by the final reads.
                flag(
                    AnomalyKind::KeyAfterExpiry,
                    lease_subject(*lease),
                    format!(
                        "the {which} returned key {key} of lease {}, granted with ttl {}s and not \
                         kept alive since the clients stopped: it should have expired, and the \
                         key with it",
                        hex(*lease),
                        facts.ttl(*lease).unwrap_or_default()
                    ),
                );
            }
        }
        // 3: every acknowledged write that cannot have been revoked is there.
        let present: HashSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        for &(_, write, lease) in durable.iter().take_while(|(t, _, _)| *t < read.invoke_time) {
            if present.contains(write.key.as_str())
                || facts.revoked_before(lease, returned).is_some()
            {
                continue;
            }
            let (kind, when) = if is_final {
                (AnomalyKind::LostWrite, "")
            } else {
                (AnomalyKind::StaleRead, " before it was invoked")
            };
            flag(
                kind,
                lease_subject(lease),
                format!(
                    "the {which} lacks key {}, written{when} by the {}; lease {} is long-lived \
                     and no revoke of it was invoked before the read returned",
                    write.key,
                    describe(write),
                    hex(lease)
                ),
            );
        }
    }

    // 3: the members' final reads agree.
    let finals: Vec<&(usize, Vec<(String, i64)>)> = facts
        .reads
        .iter()
        .filter(|(i, _)| facts.is_final(&ops[*i]))
        .collect();
    if let Some((first, first_entries)) = finals.first() {
        let base: BTreeSet<&(String, i64)> = first_entries.iter().collect();
        for (other, entries) in &finals[1..] {
            let theirs: BTreeSet<&(String, i64)> = entries.iter().collect();
            if theirs == base {
                continue;
            }
            let show = |set: Vec<&&(String, i64)>| {
                let shown: Vec<String> = set
                    .iter()
                    .take(10)
                    .map(|(k, l)| format!("{k} (lease {})", hex(*l)))
                    .collect();
                let more = set.len().saturating_sub(10);
                match more {
                    0 => shown.join(", "),
                    _ => format!("{} and {more} more", shown.join(", ")),
                }
            };
            let only_first: Vec<&&(String, i64)> = base.difference(&theirs).collect();
            let only_other: Vec<&&(String, i64)> = theirs.difference(&base).collect();
            let (a, b) = (&ops[*first], &ops[*other]);
            flag(
                AnomalyKind::FinalReadsDiffer,
                "final reads".to_owned(),
                format!(
                    "the final reads from {} ({}) and {} ({}) differ: only the first has [{}], \
                     only the second has [{}]",
                    facts.member(a),
                    describe(a),
                    facts.member(b),
                    describe(b),
                    show(only_first),
                    show(only_other)
                ),
            );
        }
    }

    // 4: the final listings.
    for (i, listed) in &facts.listings {
        let listing = &ops[*i];
        let which = facts.describe_read(listing);
        for &lease in listed {
            if let Some(gone) = facts.gone_before(lease, listing.invoke_time) {
                flag(
                    AnomalyKind::LeaseAfterRevoke,
                    lease_subject(lease),
                    format!(
                        "the {which} lists lease {}, but {}",
                        hex(lease),
                        gone_because(gone)
                    ),
                );
            } else if facts.short(lease) {
                flag(
                    AnomalyKind::LeaseAfterExpiry,
                    lease_subject(lease),
                    format!(
                        "the {which} lists lease {}, granted with ttl {}s and not kept alive \
                         since the clients stopped: it should have expired",
                        hex(lease),
                        facts.ttl(lease).unwrap_or_default()
                    ),
                );
            }
        }
        let returned = listing.complete_time.unwrap_or(u64::MAX);
        for (&lease, grants) in &facts.grants {
            let grant = &ops[grants[0]];
            let granted_before = grant.complete_time.is_some_and(|t| t < listing.invoke_time);
            if facts.long(lease)
                && granted_before
                && !listed.contains(&lease)
                && facts.revoked_before(lease, returned).is_none()
            {
                flag(
                    AnomalyKind::LostLease,
                    lease_subject(lease),
                    format!(
                        "the {which} does not list lease {}, granted by the {}, never revoked, \
                         and with a ttl far longer than the run",
                        hex(lease),
                        describe(grant)
                    ),
                );
            }
        }
    }
    // 7: a keep-alive's promise holds.
    let mut writes_of: HashMap<i64, Vec<&Operation>> = HashMap::new();
    for op in ops
        .iter()
        .filter(|op| op.f == F::Write && op.status == Status::Ok)
    {
        let (_, lease) = write_value(&op.value).expect("checked when gathered");
        writes_of.entry(lease).or_default().push(op);
    }
    let mut reads = facts.reads.clone();
    reads.sort_by_key(|(i, _)| ops[*i].invoke_time);
    // Each read and lease is judged, and accounted for, once, however many keep-alives
    // promised the lease alive during the read.
    let mut held_to_promise: HashSet<(usize, i64)> = HashSet::new();
    for &(k, lease, ttl) in &facts.keep_alives {
        let keep_alive = &ops[k];
        let Some(answered) = keep_alive.complete_time else {
            continue;
        };
        let promised = keep_alive.invoke_time.saturating_add(
            u64::try_from(ttl)
                .unwrap_or(0)
                .saturating_mul(1_000_000_000),
        );
        let promise = format!(
            "the {} promised it alive until {}",
            describe(keep_alive),
            at(promised)
        );
        let writes = writes_of.get(&lease).map_or(&[][..], Vec::as_slice);
        let first = reads.partition_point(|(i, _)| ops[*i].invoke_time <= answered);
        for (i, entries) in &reads[first..] {
            let read = &ops[*i];
            if read.invoke_time >= promised {
                break;
            }
            let Some(returned) = read.complete_time.filter(|&t| t < promised) else {
                continue;
            };
            let expected: Vec<&Operation> = writes
                .iter()
                .filter(|w| w.complete_time.is_some_and(|t| t < read.invoke_time))
                .copied()
                .collect();
            if expected.is_empty()
                || facts.revoked_before(lease, returned).is_some()
                || !held_to_promise.insert((*i, lease))
            {
                continue;
            }
            let present: HashSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            let missing: Vec<&Operation> = expected
                .into_iter()
                .filter(|w| !present.contains(w.key.as_str()))
                .collect();
            let Some(first_missing) = missing.first() else {
                continue;
            };
            let more = match missing.len() - 1 {
                0 => String::new(),
                n => format!(" and {n} more of its keys"),
            };
            flag(
                AnomalyKind::ExpiredBeforePromise,
                lease_subject(lease),
                format!(
                    "the {} lacks key {} of lease {} (written by the {}){more}; but {promise}, \
                     the read was invoked after the keep-alive returned and returned before \
                     then, and no revoke of the lease was invoked",
                    facts.describe_read(read),
                    first_missing.key,
                    hex(lease),
                    describe(first_missing)
                ),
            );
        }
        for (l, listed) in &facts.listings {
            let listing = &ops[*l];
            let in_promise = listing.complete_time.is_some_and(|t| t < promised);
            if listed.contains(&lease) || !in_promise {
                continue;
            }
            let applied_grant = facts.reads.iter().any(|(r, _)| {
                let read = &ops[*r];
                read.process == listing.process
                    && read.invoke_time > answered
                    && read.invoke_time < listing.invoke_time
            });
            let returned = listing.complete_time.unwrap_or(u64::MAX);
            if applied_grant && facts.revoked_before(lease, returned).is_none() {
                flag(
                    AnomalyKind::ExpiredBeforePromise,
                    lease_subject(lease),
                    format!(
                        "the {} does not list lease {}, but {promise}, a read on the same member \
                         was invoked after the keep-alive returned, the listing returned before \
                         then, and no revoke of the lease was invoked",
                        facts.describe_read(listing),
                        hex(lease)
                    ),
                );
            }
        }
    }
    Ok(LeaseReport {
        anomalies,
        final_reads: finals.len(),
        final_listings: facts.listings.len(),
        promised_reads: held_to_promise.len(),
    })
}
