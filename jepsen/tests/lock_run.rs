//! Short lock workload runs under kills, pauses and partitions: clients take the Lock service's
//! lock with kept-alive leases, increment a counter without fencing and append to a list with
//! fencing. The verdict must be valid (overlapping holds and lost increments are reported, not
//! invalid, when the earlier holder's lease lapsed), the report must answer its three questions
//! first, and the run must have held the lock often enough to mean something.
//!
//! Both flavours run: etcd (`/usr/bin/etcd` or `$ETCD_BIN`; `./dev test` installs it) is the
//! reference the workload and checker are calibrated against.

mod common;

use std::time::Duration;

use common::{Plan, NODES};
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{Status, F};
use oxcd_jepsen::workload::lock::{Locks, FENCED_KEY};

/// Both etcd and oxcd hold the lock 19-40 times in these 20 s: each of the three faults can
/// stop it for an election plus a lease's TTL (a killed holder's lock waits for its lease),
/// and when the killed or paused member is the holder's, both happen one after the other.
const MIN_HOLDS: usize = 15;

fn run(flavor: Flavor) {
    let plan = Plan {
        name: "lock",
        flavor,
        binary: common::binary(flavor),
        rate: 50.0,
        // Longer than the 2 s lease TTL: a holder's request can outlive its lease and land
        // after another client took the lock, which is what fencing is for.
        op_timeout: Duration::from_secs(3),
        faults: common::KILL_PAUSE_PARTITION,
        time_limit: Duration::from_secs(20),
    };
    let run = common::run(plan, |recorder, options| {
        Locks::new(recorder, options.op_timeout)
    });
    let (summary, context) = (&run.summary, &run.context);
    let verdict_txt = run.file("verdict.txt");

    // The human summary comes first: the lock, then one line for each of the three questions.
    let lines: Vec<&str> = verdict_txt.lines().collect();
    assert!(lines[1].starts_with("lock \"lock/a\": "), "{context}");
    let questions = [
        "(1) mutual exclusion: ",
        "(2) fencing: held",
        "(3) unfenced counter: ",
    ];
    for (line, question) in lines[2..].iter().zip(questions) {
        assert!(line.starts_with(question), "{question}\n{context}");
    }

    assert_eq!(
        summary.final_reads.ok,
        NODES * 2,
        "every member must answer both final reads\n{context}"
    );

    let ops = run.operations();
    let ok = |f: F, key: Option<&str>| {
        ops.iter()
            .filter(|op| op.f == f && op.status == Status::Ok)
            .filter(|op| key.is_none_or(|k| op.key == k))
            .count()
    };
    assert!(
        ok(F::Acquire, None) >= MIN_HOLDS,
        "too few holds\n{context}"
    );
    assert!(
        ok(F::Release, None) >= MIN_HOLDS,
        "too few releases\n{context}"
    );
    assert!(
        ok(F::Write, Some(FENCED_KEY)) >= MIN_HOLDS,
        "too few fenced writes\n{context}"
    );
    run.passed();
}

#[test]
fn etcd_lock_under_kill_pause_and_partition() {
    run(Flavor::Etcd);
}

#[test]
fn oxcd_lock_under_kill_pause_and_partition() {
    run(Flavor::Oxcd);
}
