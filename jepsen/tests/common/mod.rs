//! What every short workload run in CI shares: 3 members, quiet periods and faults of 3 s each
//! (isolate-leader faults are held longer, see [`ISOLATE_LEADER_HOLD`]), and the checks any run
//! must pass to mean something (a valid verdict, every fault kind, recovery, no crash). Each test
//! adds what its workload must have done.
//!
//! [`ISOLATE_LEADER_HOLD`]: oxcd_jepsen::nemesis::ISOLATE_LEADER_HOLD

// Every test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use oxcd_jepsen::checker::Verdict;
use oxcd_jepsen::cluster::Flavor;
use oxcd_jepsen::history::{History, Operation, Recorder};
use oxcd_jepsen::nemesis::{FaultKind, Schedule};
use oxcd_jepsen::runner::{self, Summary, TestOptions};
use oxcd_jepsen::workload::Workload;

pub const NODES: usize = 3;

/// The faults of most runs: in 20 s, one kill, one pause and one partition.
pub const KILL_PAUSE_PARTITION: &[FaultKind] =
    &[FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];

/// How a run differs between workloads.
pub struct Plan {
    /// Names the results directory.
    pub name: &'static str,
    pub flavor: Flavor,
    /// The server the members run: [`binary`] or [`etcd37_binary`].
    pub binary: PathBuf,
    /// Operations per second, over all clients.
    pub rate: f64,
    pub op_timeout: Duration,
    /// Each of them happens at least once in the run.
    pub faults: &'static [FaultKind],
    /// Long enough for every fault to happen: kinds are dealt round-robin, one per 3 s quiet
    /// period and 3 s fault.
    pub time_limit: Duration,
}

/// A finished run that passed the common checks.
pub struct Run {
    pub summary: Summary,
    /// The results directory, and the summary and verdict text to print when an assertion fails.
    pub context: String,
    out: PathBuf,
}

impl Run {
    /// The saved history, which is what was checked.
    pub fn operations(&self) -> Vec<Operation> {
        History::load(self.out.join("history.jsonl"))
            .expect("history.jsonl")
            .operations()
            .expect("history.jsonl pairs")
    }

    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Removes the results directory; called once every assertion held, so a failed run keeps
    /// its members' logs.
    pub fn passed(self) {
        std::fs::remove_dir_all(&self.out).expect("removing the results directory");
    }
}

/// The server binary the members run; fails the test when it is not there.
pub fn binary(flavor: Flavor) -> PathBuf {
    let binary = flavor.default_binary();
    assert!(
        binary.is_file(),
        "no {flavor} binary at {} (oxcd: `cargo build -p oxcd --bin oxcd` or $OXCD_BIN; etcd: \
         `./dev test` installs it, or $ETCD_BIN)",
        binary.display()
    );
    binary
}

/// etcd 3.7 (`$ETCD37_BIN`, else where `tests/reference/build-etcd.sh` puts it), the reference
/// where etcd 3.4 predates a behaviour under test; fails the test when it is not there.
pub fn etcd37_binary() -> PathBuf {
    let binary = std::env::var_os("ETCD37_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/oxcd-reference/etcd-v3.7.3/etcd")
        });
    assert!(
        binary.is_file(),
        "no etcd 3.7 at {} (tests/reference/build-etcd.sh builds it, or set $ETCD37_BIN)",
        binary.display()
    );
    binary
}

/// A results directory of its own for this test process, so runs at the same time (two
/// checkouts sharing a target directory) never delete each other's members.
pub fn results_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jepsen-{name}-run-{}", std::process::id()))
}

/// Runs the workload `make` builds and checks what every run must show.
pub fn run<W: Workload>(plan: Plan, make: impl FnOnce(Arc<Recorder>, &TestOptions) -> W) -> Run {
    run_accepting(plan, make, |_| false)
}

/// [`run`], except that an invalid verdict passes when `known` says that every anomaly in the
/// history is a known defect of the server under test (a calibration run of real etcd); it is
/// printed, not hidden.
pub fn run_accepting<W: Workload>(
    plan: Plan,
    make: impl FnOnce(Arc<Recorder>, &TestOptions) -> W,
    known: impl Fn(&[Operation]) -> bool,
) -> Run {
    let out = results_dir(&format!("{}-{}", plan.name, plan.flavor));
    let options = TestOptions {
        flavor: plan.flavor,
        binary: plan.binary,
        nodes: NODES,
        concurrency: 2 * NODES,
        rate: plan.rate,
        time_limit: plan.time_limit,
        schedule: Schedule {
            faults: plan.faults.to_vec(),
            quiet: Duration::from_secs(3),
            hold: Duration::from_secs(3),
        },
        op_timeout: plan.op_timeout,
        check_timeout: Some(Duration::from_secs(300)),
        out: out.clone(),
    };
    let result = tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(runner::run(&options, |recorder| make(recorder, &options)))
        .unwrap_or_else(|e| panic!("the run failed: {e:#}\nresults in {}", out.display()));
    let verdict = std::fs::read_to_string(out.join("verdict.txt")).unwrap_or_default();
    let summary = result.summary;
    let context = format!(
        "results in {}\n{}--- verdict.txt ---\n{verdict}",
        out.display(),
        summary.text()
    );
    if result.verdict != Verdict::Valid {
        let operations = History::load(out.join("history.jsonl"))
            .and_then(|history| history.operations())
            .unwrap_or_else(|e| panic!("reading history.jsonl: {e:#}\n{context}"));
        assert!(
            result.verdict == Verdict::Invalid && known(&operations),
            "verdict {:?}\n{context}",
            result.verdict
        );
        eprintln!("a known anomaly of {}, accepted:\n{context}", plan.flavor);
    }
    for kind in plan.faults {
        assert!(
            summary.faults.get(&kind.to_string()).copied().unwrap_or(0) >= 1,
            "no {kind} fault happened\n{context}"
        );
    }
    assert!(summary.recovered, "the cluster did not recover\n{context}");
    assert_eq!(summary.unexpected_exits, 0, "a member crashed\n{context}");
    Run {
        summary,
        context,
        out,
    }
}
