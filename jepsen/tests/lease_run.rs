//! A short lease workload run against a 3-member oxcd cluster under kills, pauses and
//! partitions: no key may outlive its lease's revoke or expiry, and the run must have done
//! enough (grants, revokes, refused writes, faults, final reads) for that to mean something.
//!
//! Needs the oxcd binary next to the test's target directory (`./dev test` builds it; by hand:
//! `cargo build -p oxcd --bin oxcd`), or `$OXCD_BIN`.

mod common;

use std::time::Duration;

use common::{Plan, NODES};
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{Status, F};
use oxcd_jepsen::workload::lease::{Leases, LEASE_NOT_FOUND};

/// 20 s at 40 operations per second invokes about 800 operations; a healthy run completes
/// well over half of them. The bound leaves room for a slow, loaded CI machine.
const MIN_OK: usize = 150;

#[test]
fn leases_under_kill_pause_and_partition_keep_their_promises() {
    let plan = Plan {
        name: "lease",
        flavor: Flavor::Oxcd,
        binary: common::binary(Flavor::Oxcd),
        rate: 40.0,
        op_timeout: Duration::from_millis(1500),
        faults: common::KILL_PAUSE_PARTITION,
        time_limit: Duration::from_secs(20),
    };
    let run = common::run(plan, |recorder, options| {
        Leases::new(
            recorder,
            options.op_timeout,
            options.time_limit,
            options.concurrency,
        )
    });
    let (summary, context) = (&run.summary, &run.context);
    assert!(summary.ops.ok > MIN_OK, "too few ok operations\n{context}");
    assert_eq!(
        summary.final_reads.ok,
        2 * NODES,
        "every member must answer the final read and lease listing\n{context}"
    );

    // The rules were exercised: leases revoked, and writes to gone leases refused.
    let ops = run.operations();
    let count = |f: F, status: Status| {
        ops.iter()
            .filter(|op| op.f == f && op.status == status)
            .count()
    };
    assert!(
        count(F::Grant, Status::Ok) >= 10,
        "too few grants\n{context}"
    );
    assert!(
        count(F::Revoke, Status::Ok) >= 5,
        "too few revokes\n{context}"
    );
    let refused = ops
        .iter()
        .filter(|op| op.f == F::Write && op.status == Status::Fail)
        .filter(|op| {
            op.error
                .as_deref()
                .is_some_and(|e| e.contains(LEASE_NOT_FOUND))
        })
        .count();
    assert!(
        refused >= 1,
        "no write to a gone lease was refused\n{context}"
    );
    run.passed();
}
