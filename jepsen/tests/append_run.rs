//! A short append run against a 3-member oxcd cluster under kills, pauses and partitions: the
//! list-append transactions must be strictly serializable, and the run must have done enough
//! (transactions, reads of lists, key rotation, faults, recovery, final reads) for that to mean
//! something.
//!
//! Needs an oxcd binary: `$OXCD_BIN`, or the one next to this test's target directory
//! (`./dev test` builds it; by hand: `cargo build -p oxcd --bin oxcd`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Plan, NODES};
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{Status, F};
use oxcd_jepsen::workload::append::{parse_txn, Appends, MicroOp};

const KEYS: usize = 8;
/// 20 s at 50 transactions per second invokes up to 1000; a healthy run completes several
/// hundred. The bound leaves room for a slow, loaded CI machine.
const MIN_OK: usize = 150;

#[test]
fn append_under_kill_pause_and_partition_is_strictly_serializable() {
    let plan = Plan {
        name: "append",
        flavor: Flavor::Oxcd,
        binary: common::binary(Flavor::Oxcd),
        rate: 50.0,
        op_timeout: Duration::from_millis(1500),
        faults: common::KILL_PAUSE_PARTITION,
        time_limit: Duration::from_secs(20),
    };
    let run = common::run(plan, |recorder, options| {
        Appends::new(KEYS, recorder, options.op_timeout)
    });
    let (summary, context) = (&run.summary, &run.context);
    assert!(
        summary.ops.ok > MIN_OK,
        "too few ok transactions\n{context}"
    );

    // The saved history is what was checked: it must agree with the summary, and show that the
    // transactions did what the checker needs to see.
    let ops = run.operations();
    assert!(ops.iter().all(|op| op.f == F::Txn), "{context}");
    let ok = ops.iter().filter(|op| op.status == Status::Ok).count();
    assert_eq!(ok, summary.ops.ok, "{context}");
    assert!(
        ops.iter().any(|op| op.status == Status::Info),
        "faults that long must leave some outcomes unknown\n{context}"
    );
    let first_final = summary.first_final_process;
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut final_keys: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let (mut ok_appends, mut long_reads) = (0, 0);
    for op in &ops {
        let ok = op.status == Status::Ok;
        let mops = parse_txn(if ok { &op.result } else { &op.value }).expect("a transaction");
        for mop in mops {
            if op.process < first_final {
                used.insert(mop.key().to_owned());
            } else if ok {
                final_keys
                    .entry(op.process)
                    .or_default()
                    .insert(mop.key().to_owned());
            }
            match mop {
                MicroOp::Append(..) if ok => ok_appends += 1,
                MicroOp::Read(_, Some(list)) if ok && list.len() >= 2 => long_reads += 1,
                _ => {}
            }
        }
    }
    assert!(ok_appends > MIN_OK / 2, "too few ok appends\n{context}");
    assert!(long_reads > MIN_OK / 2, "too few reads of lists\n{context}");
    assert!(
        used.len() > KEYS,
        "keys must be rotated out as their lists grow\n{context}"
    );
    // Every member answered the final reads of every key.
    assert_eq!(final_keys.len(), NODES, "{context}");
    for (process, keys) in &final_keys {
        let missing: Vec<&String> = used.difference(keys).collect();
        assert!(
            missing.is_empty(),
            "final reads of process {process} lack {missing:?}\n{context}"
        );
    }
    run.passed();
}
