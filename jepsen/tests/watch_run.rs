//! A short watch run against a 3-member oxcd cluster under kills, pauses and partitions: every
//! watcher's stream must be valid, and the run must have done enough (writes, faults that broke
//! streams, final reads) for that to mean something.
//!
//! Needs the oxcd binary next to the test's target directory (`cargo build -p oxcd --bin oxcd`),
//! or `$OXCD_BIN`.

use std::path::PathBuf;
use std::time::Duration;

use oxcd_jepsen::checker::Verdict;
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::nemesis::{FaultKind, Schedule};
use oxcd_jepsen::runner::{self, TestOptions};
use oxcd_jepsen::workload::watch::Watches;

const NODES: usize = 3;
const KEYS: usize = 5;
/// 20 s at 50 writes per second invokes about 1000; a healthy run acknowledges well over half
/// of them. The bound leaves room for a slow, loaded CI machine.
const MIN_OK: usize = 150;

#[test]
fn watches_under_kill_pause_and_partition_are_valid() {
    let binary = Flavor::Oxcd.default_binary();
    assert!(
        binary.is_file(),
        "no oxcd binary at {}; build it first with `cargo build -p oxcd --bin oxcd` (or set \
         OXCD_BIN)",
        binary.display()
    );
    // One directory per test process, removed only when the test passes.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jepsen-watch-run-{}", std::process::id()));
    let op_timeout = Duration::from_millis(1500);
    let options = TestOptions {
        flavor: Flavor::Oxcd,
        binary,
        nodes: NODES,
        concurrency: 2 * NODES,
        rate: 50.0,
        time_limit: Duration::from_secs(20),
        // Three-second quiet and fault periods give three faults in 20 s, one of each kind.
        schedule: Schedule {
            faults: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition],
            quiet: Duration::from_secs(3),
            hold: Duration::from_secs(3),
        },
        op_timeout,
        check_timeout: Some(Duration::from_secs(300)),
        out: out.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime
        .block_on(runner::run(&options, |recorder| {
            Watches::new(KEYS, recorder, op_timeout)
        }))
        .unwrap_or_else(|e| panic!("the run failed: {e:#} (results in {})", out.display()));
    let summary = &result.summary;
    let verdict = std::fs::read_to_string(out.join("verdict.txt")).unwrap_or_default();
    let context = format!(
        "results in {}\n{}\n{verdict}",
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
    assert_eq!(
        summary.final_reads.ok, NODES,
        "every member must answer its final read\n{context}"
    );
    let watches = std::fs::read_to_string(out.join("watches.jsonl")).expect("watches.jsonl");
    assert!(
        watches.contains(r#""type":"resumed""#),
        "the faults must have broken some watch streams, which were resumed\n{context}"
    );
    std::fs::remove_dir_all(&out).expect("removing the results directory");
}
