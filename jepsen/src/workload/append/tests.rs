use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::check::{check_append, AnomalyKind, AppendReport};
use super::{txn_value, MicroOp};
use crate::checker::{CheckOptions, Verdict};
use crate::history::{Operation, Status, Value, F};

fn append(key: &str, v: i64) -> MicroOp {
    MicroOp::Append(key.to_owned(), v)
}

fn r(key: &str, list: &[i64]) -> MicroOp {
    MicroOp::Read(key.to_owned(), Some(list.to_vec()))
}

/// The micro-operations as invoked: reads without their lists.
fn invoked(mops: &[MicroOp]) -> Value {
    let asked: Vec<MicroOp> = mops
        .iter()
        .map(|m| match m {
            MicroOp::Read(k, _) => MicroOp::Read(k.clone(), None),
            other => other.clone(),
        })
        .collect();
    txn_value(&asked)
}

/// An ok transaction; times in milliseconds.
fn ok(process: u64, times: (u64, u64), mops: &[MicroOp]) -> Operation {
    Operation {
        process,
        f: F::Txn,
        key: String::new(),
        value: invoked(mops),
        result: txn_value(mops),
        status: Status::Ok,
        invoke_time: times.0 * 1_000_000,
        complete_time: Some(times.1 * 1_000_000),
        error: None,
    }
}

/// The transaction failed: it certainly did not happen.
fn failed(mut op: Operation) -> Operation {
    op.status = Status::Fail;
    op.result = op.value.clone();
    op.error = Some("compare failed 3 times".to_owned());
    op
}

/// The transaction timed out at its completion time.
fn info(mut op: Operation) -> Operation {
    op.status = Status::Info;
    op.result = op.value.clone();
    op.error = Some("timed out".to_owned());
    op
}

/// The history ended before the transaction completed.
fn open(mut op: Operation) -> Operation {
    op.complete_time = None;
    info(op)
}

fn check(ops: &[Operation]) -> AppendReport {
    check_append(ops, &CheckOptions::default()).unwrap()
}

fn assert_valid(ops: &[Operation]) {
    let report = check(ops);
    assert_eq!(report.verdict(), Verdict::Valid, "{report}");
}

/// Asserts the history is invalid with an anomaly of `kind`; returns the report's text.
fn assert_anomaly(ops: &[Operation], kind: AnomalyKind) -> String {
    let report = check(ops);
    assert_eq!(report.verdict(), Verdict::Invalid, "{report}");
    assert!(report.has(kind), "no {kind}:\n{report}");
    report.to_string()
}

#[test]
fn an_empty_history_is_valid() {
    assert_valid(&[]);
}

#[test]
fn a_valid_concurrent_history() {
    let ops = [
        ok(0, (0, 10), &[append("x", 1), r("y", &[])]),
        // Concurrent with the first, and after it.
        ok(1, (2, 12), &[r("x", &[1]), append("y", 2), r("y", &[2])]),
        ok(
            2,
            (5, 30),
            &[append("x", 3), r("x", &[1, 3]), append("y", 4)],
        ),
        ok(0, (11, 20), &[r("x", &[1]), r("y", &[2])]),
        // Concurrent with p2's transaction: may come after it.
        ok(1, (13, 25), &[r("y", &[2, 4]), append("x", 5)]),
        ok(
            0,
            (31, 40),
            &[r("x", &[1, 3, 5]), append("z", 6), r("z", &[6])],
        ),
        // Final reads from every member.
        ok(
            10,
            (50, 51),
            &[r("x", &[1, 3, 5]), r("y", &[2, 4]), r("z", &[6])],
        ),
        ok(
            11,
            (52, 53),
            &[r("x", &[1, 3, 5]), r("y", &[2, 4]), r("z", &[6])],
        ),
    ];
    assert_valid(&ops);
}

#[test]
fn unknown_and_failed_outcomes_are_valid_either_way() {
    let ops = [
        // Took effect (read later), though the client never heard.
        info(ok(0, (0, 10), &[append("x", 1), r("x", &[1])])),
        // Never took effect.
        info(ok(1, (0, 10), &[append("x", 2)])),
        open(ok(2, (5, 10), &[append("y", 3)])),
        failed(ok(3, (1, 2), &[append("x", 4)])),
        ok(4, (20, 30), &[r("x", &[1])]),
        ok(4, (31, 32), &[r("x", &[1]), r("y", &[])]),
    ];
    assert_valid(&ops);
}

#[test]
fn lost_append() {
    let ops = [
        ok(0, (0, 10), &[append("x", 1)]),
        ok(1, (5, 15), &[append("x", 2)]),
        ok(0, (20, 30), &[r("x", &[1, 2])]),
        ok(10, (40, 41), &[r("x", &[2])]),
    ];
    let text = assert_anomaly(&ops, AnomalyKind::LostAppend);
    assert!(
        text.contains("1 was appended by an ok transaction"),
        "{text}"
    );
}

#[test]
fn final_reads_must_agree() {
    let ops = [
        ok(0, (0, 10), &[append("x", 1)]),
        ok(1, (5, 15), &[append("x", 2), append("y", 3)]),
        ok(10, (40, 41), &[r("x", &[1, 2]), r("y", &[3])]),
        // A member that missed the last transaction.
        ok(11, (42, 43), &[r("x", &[1]), r("y", &[])]),
    ];
    let report = check(&ops);
    assert!(report.has(AnomalyKind::FinalReadsDisagree), "{report}");
    assert!(report.has(AnomalyKind::LostAppend), "{report}");
    // And the stale member's read follows the first in real time: a cycle too.
    assert!(report.has(AnomalyKind::GSingleRealtime), "{report}");
}

#[test]
fn incompatible_orders() {
    let ops = [
        ok(0, (0, 10), &[append("x", 1)]),
        ok(1, (0, 10), &[append("x", 2)]),
        ok(2, (0, 10), &[append("x", 3)]),
        ok(3, (20, 30), &[r("x", &[1, 2])]),
        ok(4, (20, 30), &[r("x", &[1, 3, 2])]),
    ];
    let text = assert_anomaly(&ops, AnomalyKind::IncompatibleOrder);
    assert!(
        text.contains("[1, 2]") && text.contains("[1, 3, 2]"),
        "{text}"
    );
}

#[test]
fn write_skew_is_g2_item() {
    // Each reads the key the other appends to, before the other's append: no serial order
    // allows both, though neither saw the other's write.
    let ops = [
        ok(0, (0, 10), &[r("x", &[]), append("y", 1)]),
        ok(1, (0, 10), &[r("y", &[]), append("x", 2)]),
        ok(10, (20, 21), &[r("x", &[2]), r("y", &[1])]),
    ];
    let text = assert_anomaly(&ops, AnomalyKind::G2Item);
    assert!(text.contains("-rw->"), "{text}");
    assert!(!text.contains("-rt->"), "{text}");
}

#[test]
fn read_skew_is_g_single() {
    // T1 appends to x and y together; T2 sees its append to y but not to x.
    let ops = [
        ok(0, (0, 10), &[append("x", 1), append("y", 2)]),
        ok(1, (0, 10), &[r("x", &[]), r("y", &[2])]),
        ok(10, (20, 21), &[r("x", &[1]), r("y", &[2])]),
    ];
    let text = assert_anomaly(&ops, AnomalyKind::GSingle);
    assert!(text.contains("-rw->") && text.contains("-wr->"), "{text}");
}

#[test]
fn circular_information_flow_is_g1c() {
    // Each sees the other's append.
    let ops = [
        ok(0, (0, 10), &[append("x", 1), r("y", &[2])]),
        ok(1, (0, 10), &[append("y", 2), r("x", &[1])]),
    ];
    assert_anomaly(&ops, AnomalyKind::G1c);
}

#[test]
fn write_cycle_is_g0() {
    // x says T1 before T2, y says T2 before T1.
    let ops = [
        ok(0, (0, 10), &[append("x", 1), append("y", 2)]),
        ok(1, (0, 10), &[append("x", 3), append("y", 4)]),
        ok(2, (20, 30), &[r("x", &[1, 3]), r("y", &[4, 2])]),
    ];
    let text = assert_anomaly(&ops, AnomalyKind::G0);
    assert!(text.contains("-ww->"), "{text}");
}

#[test]
fn stale_read_breaks_real_time_order() {
    // The read starts after the append completed, but does not see it.
    let ops = [
        ok(0, (0, 10), &[append("x", 1)]),
        ok(1, (20, 30), &[r("x", &[])]),
        ok(10, (40, 41), &[r("x", &[1])]),
    ];
    let text = assert_anomaly(&ops, AnomalyKind::GSingleRealtime);
    assert!(text.contains("-rt->") && text.contains("-rw->"), "{text}");
    // Without the real-time order it would be serializable: the same reads, concurrent.
    let concurrent = [
        ok(0, (0, 25), &[append("x", 1)]),
        ok(1, (20, 30), &[r("x", &[])]),
        ok(10, (40, 41), &[r("x", &[1])]),
    ];
    assert_valid(&concurrent);
}

#[test]
fn stale_read_is_found_through_a_long_real_time_chain() {
    // Only the frontier links transactions in real time; the stale read comes long after.
    let mut ops = vec![ok(0, (0, 10), &[append("x", 1)])];
    for i in 0..50 {
        let t = 20 + 10 * i;
        ops.push(ok(1 + i % 3, (t, t + 15), &[r("y", &[])]));
    }
    ops.push(ok(9, (1000, 1010), &[r("x", &[])]));
    // Without a read that holds the append, the stale read is a lost append only.
    let text = assert_anomaly(&ops, AnomalyKind::LostAppend);
    assert!(!text.contains("cycle"), "{text}");
    ops.push(ok(10, (2000, 2001), &[r("x", &[1])]));
    assert_anomaly(&ops, AnomalyKind::GSingleRealtime);
}

#[test]
fn garbage_reads() {
    let ops = [
        failed(ok(0, (0, 10), &[append("x", 1)])),
        ok(1, (20, 30), &[r("x", &[1])]),
        ok(2, (20, 30), &[r("y", &[7])]),
    ];
    let report = check(&ops);
    let garbage: Vec<_> = report
        .anomalies
        .iter()
        .filter(|a| a.kind == AnomalyKind::GarbageRead)
        .collect();
    assert_eq!(garbage.len(), 2, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("only a failed transaction appended it"),
        "{text}"
    );
    assert!(text.contains("no transaction appended it"), "{text}");
}

#[test]
fn internal_inconsistency() {
    // A read after the transaction's own append must end with it.
    let ops = [ok(0, (0, 10), &[append("x", 1), r("x", &[])])];
    assert_anomaly(&ops, AnomalyKind::Internal);
    // Two reads of a key must agree, given the appends between them.
    let ops = [
        ok(0, (0, 10), &[append("x", 1)]),
        ok(1, (20, 30), &[r("x", &[1]), append("x", 2), r("x", &[2])]),
    ];
    let text = assert_anomaly(&ops, AnomalyKind::Internal);
    assert!(text.contains("expected [1, 2]"), "{text}");
    // The right way round is fine.
    let ops = [
        ok(0, (0, 10), &[append("x", 1)]),
        ok(
            1,
            (20, 30),
            &[r("x", &[1]), append("x", 2), r("x", &[1, 2])],
        ),
        ok(1, (40, 50), &[append("x", 3), r("x", &[1, 2, 3])]),
    ];
    assert_valid(&ops);
}

#[test]
fn duplicates() {
    let ops = [
        ok(0, (0, 10), &[append("x", 1)]),
        ok(1, (20, 30), &[r("x", &[1, 1])]),
    ];
    assert_anomaly(&ops, AnomalyKind::Duplicate);
}

#[test]
fn intermediate_read_is_g1b() {
    let ops = [
        ok(0, (0, 10), &[append("x", 1), append("x", 2)]),
        ok(1, (0, 10), &[r("x", &[1])]),
        ok(2, (20, 30), &[r("x", &[1, 2])]),
    ];
    assert_anomaly(&ops, AnomalyKind::IntermediateRead);
}

#[test]
fn histories_that_are_not_list_append_are_errors() {
    let mut register = ok(0, (0, 10), &[]);
    register.f = F::Read;
    assert!(check_append(&[register], &CheckOptions::default()).is_err());
    let twice = [
        ok(0, (0, 10), &[append("x", 1)]),
        ok(1, (0, 10), &[append("x", 1)]),
    ];
    let err = check_append(&twice, &CheckOptions::default()).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    let mut unread = ok(0, (0, 10), &[r("x", &[])]);
    unread.result = unread.value.clone();
    assert!(check_append(&[unread], &CheckOptions::default()).is_err());
}

/// A strictly serializable history: `clients` processes, each running transactions one after
/// another, each taking effect at an instant between its invoke and completion, in the order of
/// those instants. Some fail (no effect), some end unknown (with or without effect). Then final
/// reads of every key from three members.
fn random_history(seed: u64, txns: usize, clients: u64) -> Vec<Operation> {
    let mut rng = StdRng::seed_from_u64(seed);
    // (effect time, process, invoke, complete, micro-operations, status, applied)
    let mut planned = Vec::new();
    let mut clock: HashMap<u64, u64> = HashMap::new();
    let mut process_of: HashMap<u64, u64> = HashMap::new();
    for i in 0..txns {
        let client = rng.gen_range(0..clients);
        process_of.entry(client).or_insert(client);
        let t = clock.entry(client).or_insert(0);
        let invoke = *t + rng.gen_range(0..5_000);
        let effect = invoke + rng.gen_range(1..20_000);
        let complete = effect + rng.gen_range(1..20_000);
        *t = complete;
        // Effect times are made unique so the serial order is well defined.
        planned.push((effect * 100_000 + i as u64, client, invoke, complete));
    }
    planned.sort_unstable();
    let mut state: HashMap<String, Vec<i64>> = HashMap::new();
    let mut next = 1;
    let mut ops = Vec::new();
    for (i, &(_, client, invoke, complete)) in planned.iter().enumerate() {
        // 8 keys at a time, fresh ones every 400 transactions: lists stay short.
        let epoch = i / 400;
        let len = rng.gen_range(1..=4);
        let mops: Vec<MicroOp> = (0..len)
            .map(|_| {
                let key = format!("k{}", epoch * 8 + rng.gen_range(0..8));
                if rng.gen_bool(0.5) {
                    next += 1;
                    MicroOp::Append(key, next)
                } else {
                    MicroOp::Read(key, None)
                }
            })
            .collect();
        let outcome = rng.gen_range(0..100);
        let (status, applied) = match outcome {
            0..=4 => (Status::Fail, false),
            5..=7 => (Status::Info, true),
            8..=9 => (Status::Info, false),
            _ => (Status::Ok, true),
        };
        let mut done = mops.clone();
        if applied {
            for mop in &mut done {
                match mop {
                    MicroOp::Append(k, v) => state.entry(k.clone()).or_default().push(*v),
                    MicroOp::Read(k, list) => {
                        *list = Some(state.get(k).cloned().unwrap_or_default())
                    }
                }
            }
        }
        let process = *process_of.get(&client).unwrap();
        let mut op = ok(process, (0, 0), &done);
        op.invoke_time = invoke;
        op.complete_time = Some(complete);
        op = match status {
            Status::Ok => op,
            Status::Fail => failed(op),
            Status::Info => info(op),
        };
        if status == Status::Info {
            // As in the runner, the process is retired.
            process_of.insert(client, process + clients);
        }
        ops.push(op);
    }
    let end = ops
        .iter()
        .filter_map(|o| o.complete_time)
        .max()
        .unwrap_or(0);
    let mut keys: Vec<&String> = state.keys().collect();
    keys.sort();
    for member in 0..3u64 {
        let t = end + 1_000_000 * (member + 1);
        let reads: Vec<MicroOp> = keys.iter().map(|k| r(k, &state[*k])).collect();
        for (c, chunk) in reads.chunks(64).enumerate() {
            let mut op = ok(1_000_000 + member, (0, 0), chunk);
            op.invoke_time = t + c as u64 * 10;
            op.complete_time = Some(t + c as u64 * 10 + 5);
            ops.push(op);
        }
    }
    ops
}

#[test]
fn random_serializable_histories_are_valid() {
    for seed in 0..20 {
        let ops = random_history(seed, 500, 5);
        let report = check(&ops);
        assert_eq!(report.verdict(), Verdict::Valid, "seed {seed}: {report}");
    }
}

/// Makes one read that began after an append completed miss that append (the append being the
/// last element it read). Returns whether such a read was found.
fn inject_stale_read(ops: &mut [Operation]) -> bool {
    let mut completed: HashMap<(String, i64), u64> = HashMap::new();
    for op in ops.iter() {
        if op.status != Status::Ok {
            continue;
        }
        for mop in super::parse_txn(&op.result).unwrap() {
            if let MicroOp::Append(k, v) = mop {
                completed.insert((k, v), op.complete_time.unwrap());
            }
        }
    }
    for op in ops.iter_mut() {
        if op.status != Status::Ok {
            continue;
        }
        let mut mops = super::parse_txn(&op.result).unwrap();
        if mops.iter().any(|m| matches!(m, MicroOp::Append(..))) {
            continue;
        }
        let invoke = op.invoke_time;
        let stale = mops.iter_mut().find_map(|m| match m {
            MicroOp::Read(k, Some(list))
                if list
                    .last()
                    .and_then(|v| completed.get(&(k.clone(), *v)))
                    .is_some_and(|&c| c < invoke) =>
            {
                Some(list)
            }
            _ => None,
        });
        if let Some(list) = stale {
            list.pop();
            op.result = txn_value(&mops);
            return true;
        }
    }
    false
}

#[test]
fn a_stale_read_in_a_random_history_is_found() {
    for seed in 0..5 {
        let mut ops = random_history(seed, 500, 5);
        assert!(inject_stale_read(&mut ops));
        let report = check(&ops);
        assert_eq!(report.verdict(), Verdict::Invalid, "seed {seed}");
        assert!(
            report.anomalies.iter().any(|a| a.kind.is_cycle()),
            "seed {seed}: {report}"
        );
    }
}

#[test]
fn large_histories_are_checked_quickly() {
    let ops = random_history(7, 20_000, 10);
    let started = Instant::now();
    let report = check(&ops);
    let elapsed = started.elapsed();
    assert_eq!(report.verdict(), Verdict::Valid, "{report}");
    assert!(report.graph_nodes > 15_000, "{report}");
    // Generous for unoptimised test builds on a loaded machine; it takes well under a second
    // in release builds.
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    let mut ops = ops;
    assert!(inject_stale_read(&mut ops));
    let started = Instant::now();
    let report = check(&ops);
    assert_eq!(report.verdict(), Verdict::Invalid);
    assert!(started.elapsed() < Duration::from_secs(30));
}
