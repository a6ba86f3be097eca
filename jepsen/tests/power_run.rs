//! A short append run under power cuts: every member's data dir is on a PowerFs of its own, and
//! the power nemesis SIGKILLs one member, the leader, a majority or all of them, cuts the power
//! of their disks (every write and directory entry not fsynced is lost) and restarts them. The
//! transactions must stay strictly serializable and every acknowledged append must be in the
//! final reads; the run must have done enough (power cuts that lost data, transactions, final
//! reads) for that to mean something.
//!
//! Needs FUSE (`/dev/fuse`) and root to mount PowerFs, like tests/power_loss.rs of oxcd-tests.

mod common;

use std::time::Duration;

use common::Plan;
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::Status;
use oxcd_jepsen::nemesis::{FaultKind, NemesisEvent, Phase};
use oxcd_jepsen::workload::append::Appends;

const KEYS: usize = 8;
/// 30 s at 50 transactions per second invokes up to 1500; a healthy run completes several
/// hundred even with members down. The bound leaves room for a slow, loaded CI machine.
const MIN_OK: usize = 150;

/// The 4 KiB pages a power cut's report (`n1: 2 files reverted (25 unsynced 4 KiB pages
/// dropped), ...`) says it dropped, over all its members.
fn dropped_pages(detail: &str) -> u64 {
    detail
        .split(" unsynced 4 KiB pages dropped")
        .filter_map(|before| before.rsplit('(').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn append_under_power_cuts_keeps_acknowledged_transactions() {
    let plan = Plan {
        name: "append-power",
        flavor: Flavor::Oxcd,
        binary: common::binary(Flavor::Oxcd),
        rate: 50.0,
        op_timeout: Duration::from_millis(1500),
        faults: &[FaultKind::Power],
        // Five power cuts of 3 s, 3 s apart.
        time_limit: Duration::from_secs(30),
    };
    let run = common::run(plan, |recorder, options| {
        Appends::new(KEYS, recorder, options.op_timeout)
    });
    let (summary, context) = (&run.summary, &run.context);
    let cuts: Vec<NemesisEvent> = run
        .file("nemesis.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a nemesis event"))
        .filter(|e: &NemesisEvent| e.phase == Phase::Start && e.fault == Some(FaultKind::Power))
        .collect();
    assert!(cuts.len() >= 4, "too few power cuts\n{context}");
    let dropped: u64 = cuts
        .iter()
        .map(|cut| dropped_pages(cut.detail.as_deref().unwrap_or_default()))
        .sum();
    assert!(
        dropped > 0,
        "no power cut dropped unsynced data, so none tested what was fsynced\n{context}"
    );
    assert!(
        summary.ops.ok > MIN_OK,
        "too few ok transactions\n{context}"
    );
    let ops = run.operations();
    assert!(
        ops.iter()
            .any(|op| op.process >= summary.first_final_process && op.status == Status::Ok),
        "no final read succeeded\n{context}"
    );
    run.passed();
}

#[test]
fn dropped_pages_are_summed_over_the_members_of_a_cut() {
    let detail = "majority; n1: 2 files reverted (28 unsynced 4 KiB pages dropped), 0 directory \
                  entries reverted, 0 inodes vanished; n3: 1 files reverted (3 unsynced 4 KiB \
                  pages dropped), 0 directory entries reverted, 0 inodes vanished";
    assert_eq!(dropped_pages(detail), 31);
    assert_eq!(dropped_pages("one"), 0);
}
