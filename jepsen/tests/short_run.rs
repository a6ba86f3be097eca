//! A short `oxcd-jepsen test` against a 3-member oxcd cluster under kills, pauses and
//! partitions: the history must be linearizable, and the run must have done enough (operations,
//! faults, recovery) for that to mean something.
//!
//! Needs the oxcd binary next to `oxcd-jepsen` in the target directory (`./dev test` builds it;
//! by hand: `cargo build -p oxcd --bin oxcd`), or `$OXCD_BIN`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{History, Status};
use oxcd_jepsen::runner::Summary;

const NODES: usize = 3;
const KEYS: usize = 5;
/// 30 s at 50 operations per second invokes about 1500 operations; a healthy run completes
/// well over half of them. The bound leaves room for a slow, loaded CI machine.
const MIN_OK: usize = 200;

#[test]
fn register_under_kill_pause_and_partition_is_linearizable() {
    let jepsen = PathBuf::from(env!("CARGO_BIN_EXE_oxcd-jepsen"));
    // From this test's `deps/` directory this finds the same oxcd that `oxcd-jepsen` would.
    let oxcd = common::binary(Flavor::Oxcd);
    let out = common::results_dir("register");

    let output = Command::new(&jepsen)
        .args(["test", "--workload", "register"])
        .args(["--nemesis", "kill,pause,partition"])
        .args(["--nodes", &NODES.to_string(), "--keys", &KEYS.to_string()])
        // Three-second quiet and fault periods give five faults in 30 s, so every kind comes
        // up at least once (kinds are dealt round-robin).
        .args(["--time-limit", "30", "--interval", "3", "--rate", "50"])
        .args(["--flavor", &Flavor::Oxcd.to_string()])
        .arg("--bin")
        .arg(&oxcd)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running oxcd-jepsen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!(
        "results in {}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        out.display()
    );
    assert_eq!(stdout.lines().last(), Some("valid"), "{context}");
    assert!(output.status.success(), "{context}");

    let summary: Summary = serde_json::from_str(
        &std::fs::read_to_string(out.join("summary.json")).expect("summary.json"),
    )
    .expect("summary.json parses");
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
        NODES * KEYS,
        "every member must answer every final read\n{context}"
    );

    // The saved history is what was checked: it must agree with the summary.
    let ops = History::load(out.join("history.jsonl"))
        .expect("history.jsonl")
        .operations()
        .expect("history.jsonl pairs");
    let ok = ops.iter().filter(|op| op.status == Status::Ok).count();
    assert_eq!(ok, summary.ops.ok, "{context}");
    assert!(
        ops.iter().any(|op| op.status == Status::Info),
        "faults that long must leave some outcomes unknown\n{context}"
    );
    std::fs::remove_dir_all(&out).expect("removing the results directory");
}
