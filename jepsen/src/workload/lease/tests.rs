//! Hand-written lease histories: each rule of [`check_leases`] with histories it must accept
//! and histories it must reject.

use std::collections::{BTreeSet, HashSet};

use super::*;
use crate::checker::Verdict;
use crate::history::Status;

/// Long-lived leases, and a short one.
const A: i64 = 0xa;
const B: i64 = 0xb;
const S: i64 = 0x5;
const LONG: i64 = 3600;

const NOT_FOUND: &str = "grpc request error: code: 'Some requested entity was not found', \
                         message: \"etcdserver: requested lease not found\"";

/// Times are given in milliseconds.
fn op(
    process: Process,
    f: F,
    key: String,
    value: Value,
    result: Value,
    ms: (u64, u64),
) -> Operation {
    Operation {
        process,
        f,
        key,
        value,
        result,
        status: Status::Ok,
        invoke_time: ms.0 * 1_000_000,
        complete_time: Some(ms.1 * 1_000_000),
        error: None,
    }
}

fn grant(process: Process, ttl: i64, lease: i64, ms: (u64, u64)) -> Operation {
    op(
        process,
        F::Grant,
        PREFIX.to_owned(),
        ttl.into(),
        lease.into(),
        ms,
    )
}

fn write(process: Process, lease: i64, n: i64, ms: (u64, u64)) -> Operation {
    let value = Value::List(vec![n.into(), lease.into()]);
    op(
        process,
        F::Write,
        write_key(lease, n),
        value.clone(),
        value,
        ms,
    )
}

fn revoke(process: Process, lease: i64, ms: (u64, u64)) -> Operation {
    let key = format!("{PREFIX}{lease:x}/");
    op(process, F::Revoke, key, lease.into(), lease.into(), ms)
}

/// A read of the prefix returning these `(lease, n)` keys.
fn read(process: Process, keys: &[(i64, i64)], ms: (u64, u64)) -> Operation {
    let entries = keys
        .iter()
        .map(|&(lease, n)| Value::List(vec![Value::Str(write_key(lease, n)), lease.into()]))
        .collect();
    op(
        process,
        F::Read,
        PREFIX.to_owned(),
        Value::Null,
        Value::List(entries),
        ms,
    )
}

fn listing(process: Process, ids: &[i64], ms: (u64, u64)) -> Operation {
    let ids = ids.iter().map(|&id| Value::Int(id)).collect();
    op(
        process,
        F::Read,
        LEASES_KEY.to_owned(),
        Value::Null,
        Value::List(ids),
        ms,
    )
}

fn info(mut op: Operation) -> Operation {
    op.status = Status::Info;
    op.result = op.value.clone();
    op.error = Some("timed out".to_owned());
    op
}

fn failed(mut op: Operation, error: &str) -> Operation {
    op.status = Status::Fail;
    op.result = op.value.clone();
    op.error = Some(error.to_owned());
    op
}

fn refused(op: Operation) -> Operation {
    failed(op, NOT_FOUND)
}

/// The final reads of three members (processes 100 to 102) from `from` ms on, each a read
/// returning `keys` and a listing of `ids`.
fn finals(keys: &[(i64, i64)], ids: &[i64], from: u64) -> Vec<Operation> {
    (0..3)
        .flat_map(|m| {
            let t = from + 10 * m;
            [
                read(100 + m, keys, (t, t + 2)),
                listing(100 + m, ids, (t + 3, t + 5)),
            ]
        })
        .collect()
}

/// Leases A and B (long) and S (short) granted, one ok write each, a read of all three.
fn prelude() -> Vec<Operation> {
    vec![
        grant(0, LONG, A, (0, 10)),
        grant(1, LONG, B, (1, 11)),
        grant(2, SHORT_TTL, S, (2, 12)),
        write(0, A, 1, (20, 30)),
        write(1, B, 2, (21, 31)),
        write(2, S, 3, (22, 32)),
        read(3, &[(A, 1), (B, 2), (S, 3)], (40, 50)),
    ]
}

fn with(mut ops: Vec<Operation>, more: impl IntoIterator<Item = Operation>) -> Vec<Operation> {
    ops.extend(more);
    ops
}

fn check(ops: &[Operation]) -> LeaseReport {
    check_leases(ops).unwrap()
}

fn kinds(report: &LeaseReport) -> Vec<AnomalyKind> {
    let mut kinds: Vec<AnomalyKind> = report.anomalies.iter().map(|a| a.kind).collect();
    kinds.dedup();
    kinds
}

#[track_caller]
fn assert_valid(ops: &[Operation]) {
    let report = check(ops);
    assert_eq!(report.verdict(), Verdict::Valid, "{}", report.explanation());
}

/// The history is invalid with exactly these kinds of anomaly; returns the explanation.
#[track_caller]
fn assert_invalid(ops: &[Operation], expected: &[AnomalyKind]) -> String {
    let report = check(ops);
    assert_eq!(report.verdict(), Verdict::Invalid);
    assert_eq!(kinds(&report), expected, "{}", report.explanation());
    report.explanation()
}

/// A's key stays; B is revoked, then refused for a write and a second revoke; S expires.
fn valid_history() -> Vec<Operation> {
    with(
        prelude(),
        [
            revoke(1, B, (60, 70)),
            refused(write(1, B, 4, (80, 90))),
            refused(revoke(1, B, (91, 95))),
            read(3, &[(A, 1)], (100, 110)),
        ],
    )
    .into_iter()
    .chain(finals(&[(A, 1)], &[A], 5_000))
    .collect()
}

#[test]
fn a_clean_history_is_valid() {
    let ops = valid_history();
    let report = check(&ops);
    assert_eq!(report.verdict(), Verdict::Valid, "{}", report.explanation());
    assert!(report.anomalies.is_empty());
    assert_eq!((report.final_reads, report.final_listings), (3, 3));
    assert!(report.failed().is_empty());
}

// Rule 1: no key of a lease read after the lease was known gone.

#[test]
fn a_key_read_after_its_lease_was_revoked_is_flagged() {
    let ops = with(
        prelude(),
        [revoke(1, B, (60, 70)), read(3, &[(A, 1), (B, 2)], (71, 80))],
    )
    .into_iter()
    .chain(finals(&[(A, 1)], &[A], 5_000))
    .collect::<Vec<_>>();
    let text = assert_invalid(&ops, &[AnomalyKind::KeyAfterRevoke]);
    assert!(text.contains("key l/b/2"), "{text}");
    assert!(text.contains("revoke of lease b by process 1"), "{text}");
    assert!(
        text.contains("read of l/ by process 3 (invoked at 71.000ms"),
        "{text}"
    );
}

#[test]
fn a_read_concurrent_with_the_revoke_may_see_the_key() {
    let ops = with(
        prelude(),
        [
            revoke(1, B, (60, 70)),
            // Invoked before the revoke returned: it may have taken effect first.
            read(3, &[(A, 1), (B, 2)], (69, 80)),
            // Invoked after an unknown-outcome revoke: the revoke may not have happened yet.
            info(revoke(4, A, (81, 90))),
            read(3, &[(A, 1)], (91, 95)),
            read(5, &[], (96, 97)),
        ],
    )
    .into_iter()
    .chain(finals(&[], &[], 5_000))
    .collect::<Vec<_>>();
    assert_valid(&ops);
}

#[test]
fn a_key_read_after_its_lease_was_refused_as_not_found_is_flagged() {
    // S expired: a write to it is refused, after which its key cannot be there.
    let ops = with(
        prelude(),
        [
            refused(write(2, S, 4, (3_000, 3_010))),
            read(3, &[(A, 1), (B, 2), (S, 3)], (3_020, 3_030)),
        ],
    )
    .into_iter()
    .chain(finals(&[(A, 1), (B, 2)], &[A, B], 9_000))
    .collect::<Vec<_>>();
    let text = assert_invalid(&ops, &[AnomalyKind::KeyAfterRevoke]);
    assert!(
        text.contains("it no longer existed: write of l/5/4"),
        "{text}"
    );
}

#[test]
fn a_final_read_with_a_key_of_a_revoked_lease_is_flagged() {
    let ops = with(prelude(), [revoke(1, B, (60, 70))])
        .into_iter()
        .chain(finals(&[(A, 1), (B, 2)], &[A], 5_000))
        .collect::<Vec<_>>();
    let report = check(&ops);
    assert_eq!(kinds(&report), [AnomalyKind::KeyAfterRevoke]);
    // One per member.
    assert_eq!(report.anomalies.len(), 3);
    assert!(report
        .explanation()
        .contains("final read of l/ by process 101"));
    assert!(report.explanation().contains("from n2"));
}

// Rule 2: no write accepted after its lease was known gone.

#[test]
fn a_write_accepted_after_the_revoke_is_flagged() {
    let ops = with(
        prelude(),
        [revoke(1, B, (60, 70)), write(4, B, 5, (71, 80))],
    )
    .into_iter()
    .chain(finals(&[(A, 1)], &[A], 5_000))
    .collect::<Vec<_>>();
    let text = assert_invalid(&ops, &[AnomalyKind::WriteAfterRevoke]);
    assert!(
        text.contains("write of l/b/5 attached to lease b by process 4"),
        "{text}"
    );
    assert!(text.contains("it was revoked: revoke of lease b"), "{text}");
}

#[test]
fn a_write_accepted_after_a_not_found_refusal_is_flagged() {
    let ops = with(
        prelude(),
        [
            refused(revoke(2, S, (3_000, 3_010))),
            write(4, S, 5, (3_020, 3_030)),
        ],
    )
    .into_iter()
    .chain(finals(&[(A, 1), (B, 2)], &[A, B], 9_000))
    .collect::<Vec<_>>();
    assert_invalid(&ops, &[AnomalyKind::WriteAfterRevoke]);
}

#[test]
fn writes_concurrent_with_the_revoke_or_unknown_after_it_are_fine() {
    let ops = with(
        prelude(),
        [
            revoke(1, B, (60, 70)),
            // Concurrent with the revoke: it may have come first (and its key gone with B).
            write(4, B, 5, (65, 75)),
            // After the revoke, but of unknown outcome, or refused.
            info(write(5, B, 6, (80, 90))),
            refused(write(6, B, 7, (81, 91))),
        ],
    )
    .into_iter()
    .chain(finals(&[(A, 1)], &[A], 5_000))
    .collect::<Vec<_>>();
    assert_valid(&ops);
}

// Rule 3: the final reads.

#[test]
fn a_key_of_a_short_lease_in_a_final_read_is_flagged_but_not_during_the_run() {
    let during = with(
        prelude(),
        [read(3, &[(A, 1), (B, 2), (S, 3)], (4_000, 4_010))],
    )
    .into_iter()
    .chain(finals(&[(A, 1), (B, 2)], &[A, B], 9_000))
    .collect::<Vec<_>>();
    assert_valid(&during);

    let at_the_end = prelude()
        .into_iter()
        .chain(finals(&[(A, 1), (B, 2), (S, 3)], &[A, B], 9_000))
        .collect::<Vec<_>>();
    let text = assert_invalid(&at_the_end, &[AnomalyKind::KeyAfterExpiry]);
    assert!(
        text.contains("key l/5/3 of lease 5, granted with ttl 2s"),
        "{text}"
    );
}

#[test]
fn an_acknowledged_write_missing_from_the_final_reads_is_flagged() {
    let ops = prelude()
        .into_iter()
        .chain(finals(&[(B, 2)], &[A, B], 9_000))
        .collect::<Vec<_>>();
    let report = check(&ops);
    assert_eq!(kinds(&report), [AnomalyKind::LostWrite]);
    assert_eq!(report.anomalies.len(), 3);
    let text = report.explanation();
    assert!(
        text.contains("lacks key l/a/1, written by the write of l/a/1"),
        "{text}"
    );
    assert_eq!(
        report.failed().get("lease a").map(String::as_str),
        Some("invalid: acknowledged write missing from a final read")
    );
}

#[test]
fn writes_that_need_not_survive_may_be_missing_or_present() {
    let ops = with(
        prelude(),
        [
            // A may have been revoked: its keys may be gone, and A may be unlisted.
            info(revoke(1, A, (60, 70))),
            // Unknown outcome: present or not.
            info(write(4, B, 5, (61, 71))),
            info(write(5, B, 6, (62, 72))),
        ],
    )
    .into_iter()
    // S's key went with S.
    .chain(finals(&[(B, 2), (B, 6)], &[B], 9_000))
    .collect::<Vec<_>>();
    assert_valid(&ops);
}

#[test]
fn final_reads_that_differ_are_flagged() {
    let mut ops = with(prelude(), [info(write(4, B, 5, (61, 71)))])
        .into_iter()
        .chain(finals(&[(A, 1), (B, 2)], &[A, B], 9_000))
        .collect::<Vec<_>>();
    // Member n3 has the unknown-outcome write, the others not.
    let last = ops
        .iter()
        .rposition(|op| op.process == 102 && op.key == PREFIX)
        .unwrap();
    ops[last] = read(102, &[(A, 1), (B, 2), (B, 5)], (9_020, 9_022));
    let text = assert_invalid(&ops, &[AnomalyKind::FinalReadsDiffer]);
    assert!(
        text.contains("from n1 (read of l/ by process 100"),
        "{text}"
    );
    assert!(text.contains("and n3 (read of l/ by process 102"), "{text}");
    assert!(
        text.contains("only the first has [], only the second has [l/b/5 (lease b)]"),
        "{text}"
    );
    assert_eq!(
        check(&ops).failed().get("final reads").map(String::as_str),
        Some("invalid: members' final reads differ")
    );
}

#[test]
fn a_read_during_the_run_missing_an_acknowledged_write_is_flagged() {
    let ops = with(prelude(), [read(4, &[(A, 1), (S, 3)], (60, 70))])
        .into_iter()
        .chain(finals(&[(A, 1), (B, 2)], &[A, B], 9_000))
        .collect::<Vec<_>>();
    let text = assert_invalid(&ops, &[AnomalyKind::StaleRead]);
    assert!(
        text.contains("lacks key l/b/2, written before it was invoked"),
        "{text}"
    );
}

#[test]
fn reads_during_the_run_may_miss_concurrent_or_possibly_revoked_writes() {
    let ops = with(
        prelude(),
        [
            write(0, A, 4, (60, 80)),
            // Concurrent with the write of l/a/4; S may have expired.
            read(4, &[(A, 1), (B, 2)], (70, 90)),
            // A revoke of B of unknown outcome was invoked before this read returned.
            info(revoke(1, B, (100, 120))),
            read(4, &[(A, 1), (A, 4)], (95, 105)),
        ],
    )
    .into_iter()
    .chain(finals(&[(A, 1), (A, 4)], &[A], 9_000))
    .collect::<Vec<_>>();
    assert_valid(&ops);
}

// Rule 4: the final listings.

#[test]
fn a_revoked_lease_listed_at_the_end_is_flagged() {
    let ops = with(prelude(), [revoke(1, B, (60, 70))])
        .into_iter()
        .chain(finals(&[(A, 1)], &[A, B], 9_000))
        .collect::<Vec<_>>();
    let text = assert_invalid(&ops, &[AnomalyKind::LeaseAfterRevoke]);
    assert!(
        text.contains("final lease listing by process 100"),
        "{text}"
    );
    assert!(text.contains("lists lease b, but it was revoked"), "{text}");
}

#[test]
fn a_lease_refused_as_not_found_and_listed_at_the_end_is_flagged() {
    let ops = with(prelude(), [refused(revoke(1, S, (3_000, 3_010)))])
        .into_iter()
        .chain(finals(&[(A, 1), (B, 2)], &[A, B, S], 9_000))
        .collect::<Vec<_>>();
    assert_invalid(&ops, &[AnomalyKind::LeaseAfterRevoke]);
}

#[test]
fn a_short_lease_listed_at_the_end_is_flagged() {
    let ops = prelude()
        .into_iter()
        .chain(finals(&[(A, 1), (B, 2)], &[A, B, S], 9_000))
        .collect::<Vec<_>>();
    assert_invalid(&ops, &[AnomalyKind::LeaseAfterExpiry]);
}

#[test]
fn a_long_lease_missing_from_the_listing_is_lost() {
    let ops = prelude()
        .into_iter()
        .chain(finals(&[(A, 1), (B, 2)], &[A], 9_000))
        .collect::<Vec<_>>();
    let text = assert_invalid(&ops, &[AnomalyKind::LostLease]);
    assert!(
        text.contains("does not list lease b, granted by the grant (ttl 3600s)"),
        "{text}"
    );
}

#[test]
fn listings_may_hold_unknown_leases_and_possibly_revoked_ones_either_way() {
    let ops = with(
        prelude(),
        [
            // Unknown id: the listing may hold a lease no ok grant returned.
            info(grant(4, LONG, 0, (60, 70))),
            info(revoke(1, A, (61, 71))),
            info(revoke(5, B, (62, 72))),
        ],
    )
    .into_iter()
    .chain(finals(&[(A, 1)], &[A, 0x77], 9_000))
    .collect::<Vec<_>>();
    assert_valid(&ops);
}

#[test]
fn a_long_lease_refused_as_not_found_without_a_revoke_is_lost() {
    // The end state agrees with the refusal: A is gone, its key with it. That loses an
    // acknowledged write too.
    let ops = with(prelude(), [refused(write(4, A, 5, (60, 70)))])
        .into_iter()
        .chain(finals(&[(B, 2)], &[B], 9_000))
        .collect::<Vec<_>>();
    let report = check(&ops);
    let found: BTreeSet<AnomalyKind> = report.anomalies.iter().map(|a| a.kind).collect();
    assert_eq!(
        found,
        BTreeSet::from([AnomalyKind::LostLease, AnomalyKind::LostWrite]),
        "{}",
        report.explanation()
    );
    let text = report.explanation();
    assert!(
        text.contains("the write of l/a/5 attached to lease a by process 4"),
        "{text}"
    );
    assert!(
        text.contains("etcdserver: requested lease not found"),
        "{text}"
    );
    assert!(text.contains("no revoke of it had been invoked"), "{text}");

    // With a revoke of unknown outcome invoked before the refusal returned, A may be gone.
    let revoked = with(
        prelude(),
        [
            info(revoke(1, A, (55, 65))),
            refused(write(4, A, 5, (60, 70))),
        ],
    )
    .into_iter()
    .chain(finals(&[(B, 2)], &[B], 9_000))
    .collect::<Vec<_>>();
    assert_valid(&revoked);
}

// Rule 5: keys come from writes.

#[test]
fn keys_no_write_put_there_are_flagged() {
    let entry = |lease: i64, n: i64, attached: i64| {
        Value::List(vec![Value::Str(write_key(lease, n)), attached.into()])
    };
    let cases = [
        (entry(A, 9, A), "no write of that key was invoked"),
        (entry(A, 5, A), "its write failed: write of l/a/5"),
        (
            entry(A, 6, A),
            "its write was invoked only after the read returned",
        ),
        (
            entry(A, 7, B),
            "the read has it attached to lease b, but its write attached it to lease a",
        ),
    ];
    for (extra, why) in cases {
        let mut bad = read(4, &[(A, 1), (B, 2)], (60, 70));
        if let Value::List(entries) = &mut bad.result {
            entries.push(extra);
        }
        let ops = with(
            prelude(),
            [
                failed(write(5, A, 5, (40, 45)), "tcp connect error"),
                info(write(6, A, 6, (71, 80))),
                info(write(7, A, 7, (40, 50))),
                bad,
            ],
        )
        .into_iter()
        .chain(finals(&[(A, 1), (B, 2)], &[A, B], 9_000))
        .collect::<Vec<_>>();
        let text = assert_invalid(&ops, &[AnomalyKind::PhantomKey]);
        assert!(text.contains(why), "{why}: {text}");
    }
}

// Rule 6: lease ids are unique.

#[test]
fn a_lease_id_granted_twice_is_flagged() {
    let ops = with(prelude(), [grant(4, LONG, A, (60, 70))])
        .into_iter()
        .chain(finals(&[(A, 1), (B, 2)], &[A, B], 9_000))
        .collect::<Vec<_>>();
    let text = assert_invalid(&ops, &[AnomalyKind::DuplicateLease]);
    assert!(text.contains("lease a was granted 2 times"), "{text}");
}

// Rule 7: a keep-alive's promise holds.

fn keep_alive(process: Process, lease: i64, ttl: i64, ms: (u64, u64)) -> Operation {
    let key = format!("{PREFIX}{lease:x}/");
    op(process, F::KeepAlive, key, lease.into(), ttl.into(), ms)
}

/// The prelude, then S (its key l/5/3 written by 32 ms) kept alive by process 2 with a
/// keep-alive invoked at 1 s and answered at 1.01 s with TTL 2 s: S must live until 3 s.
fn kept() -> Vec<Operation> {
    with(prelude(), [keep_alive(2, S, SHORT_TTL, (1_000, 1_010))])
}

fn then_finals(ops: Vec<Operation>) -> Vec<Operation> {
    ops.into_iter()
        .chain(finals(&[(A, 1), (B, 2)], &[A, B], 9_000))
        .collect()
}

#[test]
fn a_read_within_a_keep_alives_promise_without_the_leases_key_is_flagged() {
    for window in [(1_011, 1_020), (2_980, 2_999)] {
        let ops = then_finals(with(
            kept(),
            [
                write(5, S, 8, (500, 600)),
                read(4, &[(A, 1), (B, 2)], window),
            ],
        ));
        let text = assert_invalid(&ops, &[AnomalyKind::ExpiredBeforePromise]);
        assert!(
            text.contains("lease expired before the TTL its keep-alive promised (1):"),
            "{text}"
        );
        assert!(
            text.contains("lacks key l/5/3 of lease 5 (written by the write of l/5/3"),
            "{text}"
        );
        assert!(text.contains("and 1 more of its keys; but"), "{text}");
        assert!(
            text.contains(
                "the keep-alive of lease 5 (answered ttl 2s) by process 2 (invoked at \
                 1000.000ms, ok at 1010.000ms) promised it alive until 3000.000ms"
            ),
            "{text}"
        );
        assert_eq!(
            check(&ops).failed().get("lease 5").map(String::as_str),
            Some("invalid: lease expired before the TTL its keep-alive promised")
        );
    }
}

#[test]
fn reads_outside_the_promise_or_of_what_it_does_not_cover_may_lack_the_key() {
    let ops = then_finals(with(
        kept(),
        [
            // Held to the promise, and there.
            read(4, &[(A, 1), (B, 2), (S, 3)], (1_020, 1_030)),
            // Invoked before the keep-alive returned, or returned once the promise was over.
            read(4, &[(A, 1), (B, 2)], (1_005, 1_020)),
            read(4, &[(A, 1), (B, 2)], (2_990, 3_000)),
            // A write concurrent with the read need not be in it.
            write(5, S, 7, (1_100, 1_200)),
            read(6, &[(A, 1), (B, 2), (S, 3)], (1_150, 1_250)),
            // Keep-alives that failed or whose outcome is unknown promise nothing.
            refused(keep_alive(2, S, SHORT_TTL, (3_000, 3_010))),
            info(keep_alive(8, S, SHORT_TTL, (3_100, 4_600))),
            read(4, &[(A, 1), (B, 2)], (4_000, 4_100)),
        ],
    ));
    assert_valid(&ops);
    // The first read, and the one concurrent with a write: it must hold S's older key.
    assert_eq!(check(&ops).promised_reads, 2);
}

#[test]
fn a_revoke_by_a_client_ends_the_promise() {
    let revoked = |revoke: Operation| {
        then_finals(with(
            kept(),
            [revoke, read(4, &[(A, 1), (B, 2)], (1_500, 1_600))],
        ))
    };
    assert_valid(&revoked(revoke(5, S, (1_100, 1_200))));
    // One of unknown outcome too, even invoked while the read ran.
    assert_valid(&revoked(info(revoke(5, S, (1_550, 3_000)))));
    // Not one invoked after the read returned.
    assert_invalid(
        &revoked(revoke(5, S, (1_700, 1_800))),
        &[AnomalyKind::ExpiredBeforePromise],
    );
}

#[test]
fn a_final_listing_within_the_promise_must_list_the_lease() {
    // T is kept alive but has no keys: only the listing can show it gone.
    const T: i64 = 0x7;
    let history = |read_at: u64| {
        with(
            prelude(),
            [
                grant(2, SHORT_TTL, T, (2, 12)),
                keep_alive(2, T, SHORT_TTL, (1_000, 1_010)),
                read(100, &[(A, 1), (B, 2)], (read_at, read_at + 5)),
                listing(100, &[A, B], (1_100, 1_110)),
            ],
        )
    };
    let text = assert_invalid(&history(1_050), &[AnomalyKind::ExpiredBeforePromise]);
    assert!(
        text.contains("the final lease listing by process 100 (invoked at 1100.000ms"),
        "{text}"
    );
    assert!(
        text.contains("does not list lease 7, but the keep-alive"),
        "{text}"
    );
    // With the member's read invoked before the keep-alive returned, the listing may come from
    // a member that had not applied the grant yet.
    assert_valid(&history(1_000));
}

// The verdict and the report.

#[test]
fn without_a_final_read_the_verdict_is_unknown() {
    let mut ops = valid_history();
    for op in ops
        .iter_mut()
        .filter(|op| op.process >= 100 && op.key == PREFIX)
    {
        op.status = Status::Fail;
        op.error = Some("timed out".to_owned());
    }
    let report = check(&ops);
    assert_eq!(report.verdict(), Verdict::Unknown);
    assert!(report
        .explanation()
        .contains("No final read of the prefix succeeded"));

    // Anomalies found anyway make it invalid.
    ops.push(revoke(7, A, (6_000, 6_010)));
    ops.push(write(8, A, 9, (6_020, 6_030)));
    assert_eq!(check(&ops).verdict(), Verdict::Invalid);
}

#[test]
fn the_explanation_spells_out_ten_anomalies_of_a_kind_and_counts_the_rest() {
    let writes: Vec<Operation> = (10..25)
        .map(|n| write(0, A, n, (60 + n as u64, 100)))
        .collect();
    let ops = with(prelude(), writes)
        .into_iter()
        .chain([read(100, &[(A, 1), (B, 2)], (9_000, 9_010))])
        .chain([listing(100, &[A, B], (9_011, 9_020))])
        .collect::<Vec<_>>();
    let report = check(&ops);
    assert_eq!(report.anomalies.len(), 15);
    let text = report.explanation();
    assert!(
        text.contains("acknowledged write missing from a final read (15):"),
        "{text}"
    );
    assert!(text.contains("- ... and 5 more"), "{text}");
    assert_eq!(text.matches("\n- the final read").count(), 10, "{text}");
}

#[test]
fn operations_of_other_workloads_are_refused() {
    let cas = op(
        0,
        F::Cas,
        "x".to_owned(),
        Value::List(vec![1.into(), 2.into()]),
        Value::Null,
        (0, 1),
    );
    assert!(check_leases(&[cas]).is_err());
    let bad_write = op(0, F::Write, "l/a/1".to_owned(), 1.into(), 1.into(), (0, 1));
    assert!(check_leases(&[bad_write]).is_err());
    let twice = [write(0, A, 1, (0, 1)), write(1, A, 1, (2, 3))];
    let err = check_leases(&twice).unwrap_err().to_string();
    assert!(err.contains("written twice"), "{err}");
}

// The generator.

#[test]
fn operations_target_the_leases_the_workload_knows() {
    let leases = workload();
    assert_eq!(leases.long_ttl, MIN_LONG_TTL);
    // Nothing granted yet: only grants and reads.
    for _ in 0..200 {
        assert!(matches!(leases.generate(0), Op::Grant { .. } | Op::Read));
    }
    let long = |id| Live {
        id,
        expires: None,
        keeper: None,
    };
    {
        let mut book = leases.book();
        book.live.push(long(A));
        book.live.push(Live {
            id: S,
            expires: Some(Instant::now() + Duration::from_secs(60)),
            keeper: None,
        });
        book.gone.push(B);
    }
    let tally = |leases: &Leases| {
        let (mut revoked, mut written) = (HashSet::new(), HashSet::new());
        for _ in 0..2_000 {
            match leases.generate(0) {
                Op::Revoke { lease } => revoked.insert(lease),
                Op::Write { lease, .. } => written.insert(lease),
                Op::Grant { ttl } => {
                    assert!(ttl == SHORT_TTL || ttl == MIN_LONG_TTL);
                    false
                }
                Op::KeepAlive { lease } => panic!("keep-alive of {lease:x}, which nobody keeps"),
                Op::Read | Op::List => false,
            };
        }
        (revoked, written)
    };
    // Short leases are left to expire, and the last few long ones are kept.
    assert_eq!(
        tally(&leases),
        (HashSet::from([B]), HashSet::from([A, B, S]))
    );
    leases.book().live.extend([long(0xc), long(0xd), long(0xe)]);
    assert_eq!(tally(&leases).0, HashSet::from([A, B, 0xc, 0xd, 0xe]));
    // Past its TTL, a short lease counts as gone.
    leases.book().live[1].expires = Some(Instant::now());
    leases.generate(0);
    assert!(leases.book().live.iter().all(|l| l.id != S));
    assert!(leases.book().gone.contains(&S));
}

fn workload() -> Leases {
    Leases::new(
        Arc::new(Recorder::new()),
        Duration::from_secs(1),
        Duration::ZERO,
        CLIENTS,
    )
}

const CLIENTS: usize = 6;

#[test]
fn a_client_keeps_its_lease_alive_a_period_apart_until_it_lets_go() {
    let leases = workload();
    let now = Instant::now();
    leases.book().live.push(Live {
        id: S,
        expires: Some(now + Duration::from_secs(2)),
        keeper: Some(Keeper {
            client: 1,
            due: now,
            until: now + Duration::from_secs(60),
        }),
    });
    // Only client 1's processes renew it, the one that retired too (process 1 + CLIENTS).
    for _ in 0..200 {
        assert!(!matches!(leases.generate(2), Op::KeepAlive { .. }));
    }
    assert_eq!(
        leases.generate(1 + CLIENTS as u64),
        Op::KeepAlive { lease: S }
    );
    // Not again before a period has passed.
    for _ in 0..200 {
        assert_ne!(leases.generate(1), Op::KeepAlive { lease: S });
    }
    // An answer extends what the client counts on; a late one does not shorten it.
    let expires = |leases: &Leases| leases.book().live[0].expires.unwrap();
    leases.book().renewed(S, now + Duration::from_secs(1), 2);
    assert_eq!(expires(&leases), now + Duration::from_secs(3));
    leases.book().renewed(S, now, 2);
    assert_eq!(expires(&leases), now + Duration::from_secs(3));
    // Past its TTL it stays while kept: the client goes on sending keep-alives.
    leases.book().expire(now + Duration::from_secs(10));
    assert_eq!(leases.book().live[0].id, S);
    // Once let go, no more keep-alives: it expires like any short lease.
    {
        let mut book = leases.book();
        let keeper = book.live[0].keeper.as_mut().unwrap();
        keeper.until = now;
        keeper.due = now;
    }
    for _ in 0..200 {
        assert_ne!(leases.generate(1), Op::KeepAlive { lease: S });
    }
    assert!(leases.book().live[0].keeper.is_none());
    assert!(!leases.book().keeps(1));
    leases.book().expire(now + Duration::from_secs(10));
    assert_eq!(leases.book().gone, [S]);
}

#[test]
fn operations_are_recorded_as_documented() {
    let write = Op::Write { lease: 0x1f, n: 7 };
    assert_eq!(write.key(), "l/1f/7");
    assert_eq!(write.value(), Value::List(vec![7.into(), 0x1f.into()]));
    assert_eq!(Op::Revoke { lease: 0x1f }.key(), "l/1f/");
    let keep_alive = Op::KeepAlive { lease: 0x1f };
    assert_eq!(
        (keep_alive.f(), keep_alive.key(), keep_alive.value()),
        (F::KeepAlive, "l/1f/".to_owned(), Value::Int(0x1f))
    );
    assert!(keep_alive.changes_state());
    assert_eq!(Op::Grant { ttl: 2 }.value(), Value::Int(2));
    assert_eq!(
        (Op::List.f(), Op::List.key()),
        (F::Read, LEASES_KEY.to_owned())
    );
    assert!(!Op::Read.changes_state() && !Op::List.changes_state());
    assert!(write.changes_state());
}
