//! A short lease workload run against a 3-member oxcd cluster under kills, pauses and
//! partitions: no key may outlive its lease's revoke or expiry, and the run must have done
//! enough (grants, revokes, refused writes, faults, final reads) for that to mean something.
//!
//! Needs the oxcd binary next to the test's target directory (`./dev test` builds it; by hand:
//! `cargo build -p oxcd --bin oxcd`), or `$OXCD_BIN`.

use std::path::PathBuf;
use std::time::Duration;

use oxcd_jepsen::checker::Verdict;
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{History, Status, F};
use oxcd_jepsen::nemesis::{FaultKind, Schedule};
use oxcd_jepsen::runner::{self, TestOptions};
use oxcd_jepsen::workload::lease::{Leases, LEASE_NOT_FOUND};

const NODES: usize = 3;
const TIME_LIMIT: Duration = Duration::from_secs(20);
/// 20 s at 40 operations per second invokes about 800 operations; a healthy run completes
/// well over half of them. The bound leaves room for a slow, loaded CI machine.
const MIN_OK: usize = 150;

#[test]
fn leases_under_kill_pause_and_partition_keep_their_promises() {
    let binary = Flavor::Oxcd.default_binary();
    assert!(
        binary.is_file(),
        "no oxcd binary at {}; build it first with `cargo build -p oxcd --bin oxcd` (or set \
         OXCD_BIN)",
        binary.display()
    );
    // One directory per test process, so concurrent runs never delete each other's members;
    // it is removed only when the test passes.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jepsen-lease-run-{}", std::process::id()));
    let options = TestOptions {
        flavor: Flavor::Oxcd,
        binary,
        nodes: NODES,
        concurrency: 2 * NODES,
        rate: 40.0,
        time_limit: TIME_LIMIT,
        // Three-second quiet and fault periods give three faults in 20 s, one of each kind
        // (kinds are dealt round-robin).
        schedule: Schedule {
            faults: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition],
            quiet: Duration::from_secs(3),
            hold: Duration::from_secs(3),
        },
        op_timeout: Duration::from_millis(1500),
        check_timeout: Some(Duration::from_secs(300)),
        out: out.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime
        .block_on(runner::run(&options, |recorder| {
            Leases::new(recorder, options.op_timeout, options.time_limit)
        }))
        .unwrap_or_else(|e| panic!("the run failed: {e:#}\nresults in {}", out.display()));
    let summary = result.summary;
    let verdict = std::fs::read_to_string(out.join("verdict.txt")).unwrap_or_default();
    let context = format!(
        "results in {}\n{}\n--- verdict.txt ---\n{verdict}",
        out.display(),
        summary.text()
    );
    assert_eq!(result.verdict, Verdict::Valid, "{context}");
    for kind in ["kill", "pause", "partition"] {
        assert!(
            summary.faults.get(kind).copied().unwrap_or(0) >= 1,
            "no {kind} fault happened\n{context}"
        );
    }
    assert!(summary.ops.ok > MIN_OK, "too few ok operations\n{context}");
    assert!(summary.recovered, "the cluster did not recover\n{context}");
    assert_eq!(summary.unexpected_exits, 0, "a member crashed\n{context}");
    assert_eq!(
        summary.final_reads.ok,
        2 * NODES,
        "every member must answer the final read and lease listing\n{context}"
    );

    // The rules were exercised: leases revoked, and writes to gone leases refused.
    let ops = History::load(out.join("history.jsonl"))
        .expect("history.jsonl")
        .operations()
        .expect("history.jsonl pairs");
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
    std::fs::remove_dir_all(&out).expect("removing the results directory");
}
