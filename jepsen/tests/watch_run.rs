//! A short watch run against a 3-member oxcd cluster under kills, pauses and partitions: every
//! watcher's stream must be valid, and the run must have done enough (writes, faults that broke
//! streams, final reads) for that to mean something.
//!
//! Needs the oxcd binary next to the test's target directory (`cargo build -p oxcd --bin oxcd`),
//! or `$OXCD_BIN`.

mod common;

use std::time::Duration;

use common::{Plan, NODES};
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::workload::watch::Watches;

const KEYS: usize = 5;
/// 20 s at 50 writes per second invokes about 1000; a healthy run acknowledges well over half
/// of them. The bound leaves room for a slow, loaded CI machine.
const MIN_OK: usize = 150;

#[test]
fn watches_under_kill_pause_and_partition_are_valid() {
    let plan = Plan {
        name: "watch",
        flavor: Flavor::Oxcd,
        binary: common::binary(Flavor::Oxcd),
        rate: 50.0,
        op_timeout: Duration::from_millis(1500),
        faults: common::KILL_PAUSE_PARTITION,
        time_limit: Duration::from_secs(20),
    };
    let run = common::run(plan, |recorder, options| {
        Watches::new(KEYS, recorder, options.op_timeout)
    });
    let (summary, context) = (&run.summary, &run.context);
    assert!(summary.ops.ok > MIN_OK, "too few ok operations\n{context}");
    assert_eq!(
        summary.final_reads.ok, NODES,
        "every member must answer its final read\n{context}"
    );
    let watches = run.file("watches.jsonl");
    assert!(
        watches.contains(r#""type":"resumed""#),
        "the faults must have broken some watch streams, which were resumed\n{context}"
    );
    run.passed();
}
