//! A short append run against a 3-member oxcd cluster under kills, pauses and partitions: the
//! list-append transactions must be strictly serializable, and the run must have done enough
//! (transactions, reads of lists, key rotation, faults, recovery, final reads) for that to mean
//! something.
//!
//! Needs an oxcd binary: `$OXCD_BIN`, or the one next to this test's target directory
//! (`./dev test` builds it; by hand: `cargo build -p oxcd --bin oxcd`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use oxcd_jepsen::checker::Verdict;
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{History, Status, F};
use oxcd_jepsen::nemesis::{FaultKind, Schedule};
use oxcd_jepsen::runner::{self, TestOptions};
use oxcd_jepsen::workload::append::{parse_txn, Appends, MicroOp};

const NODES: usize = 3;
const KEYS: usize = 8;
/// 20 s at 50 transactions per second invokes up to 1000; a healthy run completes several
/// hundred. The bound leaves room for a slow, loaded CI machine.
const MIN_OK: usize = 150;

#[test]
fn append_under_kill_pause_and_partition_is_strictly_serializable() {
    let oxcd = Flavor::Oxcd.default_binary();
    assert!(
        oxcd.is_file(),
        "no oxcd binary at {}; build it first with `cargo build -p oxcd --bin oxcd` (or set \
         OXCD_BIN)",
        oxcd.display()
    );
    // One directory per test process, removed only when the test passes.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jepsen-append-run-{}", std::process::id()));
    let options = TestOptions {
        flavor: Flavor::Oxcd,
        binary: oxcd,
        nodes: NODES,
        concurrency: 2 * NODES,
        rate: 50.0,
        time_limit: Duration::from_secs(20),
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
    let timeout = options.op_timeout;
    let result = tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(runner::run(&options, |recorder| {
            Appends::new(KEYS, recorder, timeout)
        }))
        .expect("the run");
    let verdict = std::fs::read_to_string(out.join("verdict.txt")).unwrap_or_default();
    let context = format!(
        "results in {}\n{}--- verdict.txt ---\n{verdict}",
        out.display(),
        result.summary.text()
    );
    assert_eq!(result.verdict, Verdict::Valid, "{context}");

    let summary = &result.summary;
    for kind in ["kill", "pause", "partition"] {
        assert!(
            summary.faults.get(kind).copied().unwrap_or(0) >= 1,
            "no {kind} fault happened\n{context}"
        );
    }
    assert!(
        summary.ops.ok > MIN_OK,
        "too few ok transactions\n{context}"
    );
    assert!(summary.recovered, "the cluster did not recover\n{context}");
    assert_eq!(summary.unexpected_exits, 0, "a member crashed\n{context}");

    // The saved history is what was checked: it must agree with the summary, and show that the
    // transactions did what the checker needs to see.
    let ops = History::load(out.join("history.jsonl"))
        .expect("history.jsonl")
        .operations()
        .expect("history.jsonl pairs");
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
    std::fs::remove_dir_all(&out).expect("removing the results directory");
}
