//! Short lock and lease runs under isolate-leader faults and kills, and an append run under
//! isolate-leader faults alone. An isolate-leader fault cuts
//! the leader off from the other members while the clients bound to it keep talking to it, for
//! long enough that the majority elects a new leader and expires the leases the old one can no
//! longer vouch for. A cut-off leader that goes on answering keep-alives (the previous release's
//! did) lets its clients believe their leases alive while the majority expires them: the lock
//! workload then sees two holders at once, the earlier one's lease proven alive throughout, and
//! the lease workload a read within a keep-alive's promise that lacks the lease's keys. Both are
//! invalid; these runs must be valid, and must have done enough for that to mean something.
//! (Catching the previous release takes longer runs: see jepsen/README.md.)
//!
//! etcd 3.7, whose cut-off leader renews leases only until it steps down within an election
//! timeout, runs the same as calibration; its one known defect here (revokes of a cut-off
//! leader committed after the heal, see [`only_broken_promises`]) is accepted for it only.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Plan, Run, NODES};
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{Operation, Status, F};
use oxcd_jepsen::nemesis::{FaultKind, NemesisEvent, Phase, ISOLATE_LEADER_HOLD};
use oxcd_jepsen::workload::append::Appends;
use oxcd_jepsen::workload::lease::{check_leases, AnomalyKind, Leases};
use oxcd_jepsen::workload::lock::Locks;

const FAULTS: &[FaultKind] = &[FaultKind::IsolateLeader, FaultKind::Kill];
/// A 3 s quiet period, a kill, another quiet period, an isolate-leader fault and a last quiet
/// period take 20 s; either order leaves one whole isolate-leader fault in 30 s.
const TIME_LIMIT: Duration = Duration::from_secs(30);

fn plan(name: &'static str, flavor: Flavor, binary: PathBuf) -> Plan {
    Plan {
        name,
        flavor,
        binary,
        rate: 50.0,
        // Longer than the 2 s lease TTL, as in lock_run.rs: a lock holder cut off with the old
        // leader stays blocked past the expiry of its lease, so the majority's next holder
        // overlaps it.
        op_timeout: Duration::from_secs(3),
        faults: FAULTS,
        time_limit: TIME_LIMIT,
    }
}

/// Asserts that some isolate-leader fault cut off the member the cluster named leader, for its
/// whole hold.
fn assert_isolated_the_leader(run: &Run) {
    let events: Vec<NemesisEvent> = run
        .file("nemesis.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a nemesis event"))
        .collect();
    let held = events.iter().any(|start| {
        let isolated_leader = start.phase == Phase::Start
            && start.fault == Some(FaultKind::IsolateLeader)
            && start
                .leader
                .as_ref()
                .is_some_and(|l| start.members == [l.clone()]);
        let stop = events.iter().find(|stop| {
            stop.phase == Phase::Stop
                && stop.fault == start.fault
                && stop.time > start.time
                && stop.members == start.members
        });
        isolated_leader
            && stop.is_some_and(|stop| {
                Duration::from_nanos(stop.time - start.time) >= ISOLATE_LEADER_HOLD
            })
    });
    assert!(
        held,
        "no isolate-leader fault cut off the leader for {ISOLATE_LEADER_HOLD:?}\n{}",
        run.context
    );
}

fn lock(flavor: Flavor, binary: PathBuf) {
    let run = common::run(plan("lock-isolate", flavor, binary), |recorder, options| {
        Locks::new(recorder, options.op_timeout).with_long_holds()
    });
    assert_isolated_the_leader(&run);
    let context = &run.context;
    assert_eq!(
        run.summary.final_reads.ok,
        NODES * 2,
        "every member must answer both final reads\n{context}"
    );
    let holds = run
        .operations()
        .iter()
        .filter(|op| op.f == F::Acquire && op.status == Status::Ok)
        .count();
    // Fewer than lock_run.rs asks for: every fourth hold lasts up to 10 s (long holds), and
    // for 8 s the lock is held by a cut-off client, or waited for until its lease expires.
    assert!(holds >= 5, "too few holds ({holds})\n{context}");
    run.passed();
}

/// Whether every anomaly is a broken keep-alive promise: etcd 3.7's cut-off leader, like
/// oxcd's before it bound expiries to their term, can revoke leases right after the heal that
/// the new leader had kept alive (its revokes reach the new leader's log). Seen in 1 of 4
/// 30-second runs of etcd 3.7.3 here; jepsen/results/2026-12-05.md.
fn only_broken_promises(operations: &[Operation]) -> bool {
    check_leases(operations).is_ok_and(|report| {
        report
            .anomalies
            .iter()
            .all(|anomaly| anomaly.kind == AnomalyKind::ExpiredBeforePromise)
    })
}

fn leases(flavor: Flavor, binary: PathBuf) {
    let known =
        |operations: &[Operation]| flavor == Flavor::Etcd && only_broken_promises(operations);
    let run = common::run_accepting(
        plan("lease-isolate", flavor, binary),
        |recorder, options| {
            Leases::new(
                recorder,
                options.op_timeout,
                options.time_limit,
                options.concurrency,
            )
        },
        known,
    );
    assert_isolated_the_leader(&run);
    let context = &run.context;
    assert_eq!(
        run.summary.final_reads.ok,
        2 * NODES,
        "every member must answer the final read and lease listing\n{context}"
    );
    let ops = run.operations();
    let count = |f: F| {
        ops.iter()
            .filter(|op| op.f == f && op.status == Status::Ok)
            .count()
    };
    // Six clients, each keeping a lease alive most of the time, three keep-alives per 2 s TTL.
    let keep_alives = count(F::KeepAlive);
    assert!(
        keep_alives >= 50,
        "too few keep-alives answered ({keep_alives})\n{context}"
    );
    // The promises were put to the test: reads had to hold keys of kept-alive leases.
    let promised_reads = check_leases(&ops).expect("a lease history").promised_reads;
    assert!(
        promised_reads >= 20,
        "too few reads held to a keep-alive's promise ({promised_reads})\n{context}"
    );
    run.passed();
}

/// The cut-off leader must not serve a linearizable read once the majority has a new leader.
/// openraft alone once confirmed one at the heal: it credited a reply that the partition had held
/// back, to an append the follower took before voting for the new leader, with the sending time
/// of a later request (`raft::election::quorum_follows`). Seen about once in ten heals (10-minute
/// and 150 s runs), so a run this short catches it now and then, not every time.
#[test]
fn oxcd_append_under_isolate_leader_is_strictly_serializable() {
    let plan = Plan {
        name: "append-isolate",
        flavor: Flavor::Oxcd,
        binary: common::binary(Flavor::Oxcd),
        rate: 50.0,
        op_timeout: Duration::from_millis(1500),
        faults: &[FaultKind::IsolateLeader],
        time_limit: TIME_LIMIT,
    };
    let run = common::run(plan, |recorder, options| {
        Appends::new(8, recorder, options.op_timeout)
    });
    assert_isolated_the_leader(&run);
    let ok = run.summary.ops.ok;
    assert!(ok > 150, "too few ok transactions ({ok})\n{}", run.context);
    run.passed();
}

#[test]
fn oxcd_lock_under_isolate_leader_and_kill() {
    lock(Flavor::Oxcd, common::binary(Flavor::Oxcd));
}

#[test]
fn etcd37_lock_under_isolate_leader_and_kill() {
    lock(Flavor::Etcd, common::etcd37_binary());
}

#[test]
fn oxcd_leases_under_isolate_leader_and_kill_keep_their_promises() {
    leases(Flavor::Oxcd, common::binary(Flavor::Oxcd));
}

#[test]
fn etcd37_leases_under_isolate_leader_and_kill_keep_their_promises() {
    leases(Flavor::Etcd, common::etcd37_binary());
}
