use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::history::{Event, EventType, History};

fn op(process: u64, f: F, value: Value, result: Value, times: (u64, u64)) -> Operation {
    Operation {
        process,
        f,
        key: "x".to_owned(),
        value,
        result,
        status: Status::Ok,
        invoke_time: times.0,
        complete_time: Some(times.1),
        error: None,
    }
}

fn write(process: u64, v: i64, times: (u64, u64)) -> Operation {
    op(process, F::Write, v.into(), v.into(), times)
}

fn read(process: u64, v: Option<i64>, times: (u64, u64)) -> Operation {
    op(process, F::Read, Value::Null, v.into(), times)
}

fn cas(process: u64, expected: Option<i64>, new: i64, times: (u64, u64)) -> Operation {
    let pair = Value::List(vec![expected.into(), new.into()]);
    op(process, F::Cas, pair.clone(), pair, times)
}

/// The operation timed out at its completion time.
fn info(mut op: Operation) -> Operation {
    op.status = Status::Info;
    op.result = Value::Null;
    op
}

/// The history ended before the operation completed.
fn open(mut op: Operation) -> Operation {
    op.complete_time = None;
    info(op)
}

fn failed(mut op: Operation) -> Operation {
    op.status = Status::Fail;
    op
}

fn on(key: &str, mut op: Operation) -> Operation {
    op.key = key.to_owned();
    op
}

fn check(ops: &[Operation]) -> Report {
    check_register(ops, &CheckOptions::default()).unwrap()
}

fn assert_valid(ops: &[Operation]) {
    let report = check(ops);
    let ce: Vec<String> = report
        .keys
        .iter()
        .filter_map(|k| k.counterexample.as_ref())
        .map(|c| c.to_string())
        .collect();
    assert_eq!(report.verdict(), Verdict::Valid, "{}", ce.join("\n"));
}

/// Asserts the history is invalid on `key` and returns the counterexample's text.
fn assert_invalid(ops: &[Operation], key: &str) -> String {
    let report = check(ops);
    assert_eq!(report.verdict(), Verdict::Invalid);
    let bad: Vec<&KeyReport> = report
        .keys
        .iter()
        .filter(|k| k.verdict != Verdict::Valid)
        .collect();
    assert_eq!(bad.len(), 1);
    let ce = bad[0]
        .counterexample
        .as_ref()
        .expect("an invalid key has a counterexample");
    assert_eq!((bad[0].key.as_str(), ce.key.as_str()), (key, key));
    let text = ce.to_string();
    assert!(
        text.starts_with(&format!("key {key:?} is not linearizable")),
        "{text}"
    );
    text
}

#[test]
fn sequential_history_is_linearizable() {
    assert_valid(&[
        read(0, None, (0, 1)),
        write(0, 1, (2, 3)),
        read(1, Some(1), (4, 5)),
        write(1, 2, (6, 7)),
        read(0, Some(2), (8, 9)),
    ]);
}

#[test]
fn concurrent_writes_and_reads_may_take_effect_in_any_order_within_their_intervals() {
    // p1's write is invoked last but can take effect first; the reads see both orders.
    assert_valid(&[
        write(0, 1, (0, 10)),
        write(1, 2, (1, 11)),
        read(2, Some(2), (2, 12)),
        read(3, Some(1), (3, 13)),
        read(4, Some(1), (14, 15)),
    ]);
}

#[test]
fn concurrent_readers_must_agree_on_the_order_of_writes() {
    // Both writes overlap everything, but p2 sees 1 then 2 and p3 sees 2 then 1.
    let text = assert_invalid(
        &[
            write(0, 1, (0, 100)),
            write(1, 2, (0, 100)),
            read(2, Some(1), (10, 20)),
            read(2, Some(2), (30, 40)),
            read(3, Some(2), (10, 20)),
            read(3, Some(1), (30, 40)),
        ],
        "x",
    );
    assert!(text.contains("but the register held"), "{text}");
}

#[test]
fn operations_that_touch_at_an_instant_are_concurrent() {
    assert_valid(&[write(0, 1, (0, 5)), read(1, None, (5, 6))]);
}

#[test]
fn keys_are_independent_registers() {
    assert_valid(&[on("x", write(0, 1, (0, 1))), on("y", read(1, None, (2, 3)))]);
}

#[test]
fn an_unknown_write_may_take_effect() {
    assert_valid(&[info(write(0, 1, (0, 1))), read(1, Some(1), (2, 3))]);
    assert_valid(&[open(write(0, 1, (0, 1))), read(1, Some(1), (2, 3))]);
}

#[test]
fn an_unknown_write_may_never_take_effect() {
    assert_valid(&[
        write(0, 1, (0, 1)),
        info(write(1, 2, (2, 3))),
        read(0, Some(1), (4, 5)),
        read(0, Some(1), (6, 7)),
    ]);
}

#[test]
fn an_unknown_write_may_take_effect_after_its_client_gave_up() {
    assert_valid(&[
        write(0, 1, (0, 1)),
        info(write(1, 2, (2, 3))),
        read(0, Some(1), (4, 5)),
        read(0, Some(2), (6, 7)),
    ]);
}

#[test]
fn an_unknown_write_takes_effect_at_most_once() {
    let text = assert_invalid(
        &[
            write(0, 1, (0, 1)),
            info(write(1, 2, (2, 3))),
            read(0, Some(2), (4, 5)),
            read(0, Some(1), (6, 7)),
        ],
        "x",
    );
    assert!(text.contains("read 1, but the register held 2"), "{text}");
}

#[test]
fn unknown_writes_nobody_reads_are_cheap() {
    // Each of these could take effect or not; were they all searched, 2^300 combinations.
    let mut ops: Vec<Operation> = (0..300)
        .map(|i| info(write(i + 10, i as i64 + 100, (i, i + 1))))
        .collect();
    ops.push(write(0, 1, (400, 401)));
    ops.push(read(1, Some(1), (402, 403)));
    ops.push(read(2, Some(1), (402, 403)));
    assert_valid(&ops);
}

#[test]
fn unknown_operations_can_take_effect_one_after_another() {
    // Only if the timed-out write of 2 and then the timed-out cas 2 -> 3 both took effect.
    let ops = [
        write(0, 1, (0, 1)),
        info(write(1, 2, (2, 3))),
        info(cas(2, Some(2), 3, (4, 5))),
        read(0, Some(1), (6, 7)),
        read(0, Some(3), (8, 9)),
    ];
    assert_valid(&ops);
    // Not if the write was invoked after 3 was read.
    let mut late_write = ops.clone();
    late_write[1].invoke_time = 10;
    late_write[1].complete_time = Some(11);
    assert_invalid(&late_write, "x");
}

#[test]
fn compare_and_set_succeeds_only_from_the_expected_value() {
    assert_valid(&[
        cas(0, None, 1, (0, 1)),
        read(1, Some(1), (2, 3)),
        cas(1, Some(1), 2, (4, 5)),
        failed(cas(0, Some(1), 3, (6, 7))),
        read(0, Some(2), (8, 9)),
    ]);
    assert_invalid(&[write(0, 1, (0, 1)), cas(1, Some(2), 3, (2, 3))], "x");
}

#[test]
fn a_failed_compare_and_set_did_not_write() {
    let text = assert_invalid(
        &[
            write(0, 1, (0, 1)),
            failed(cas(1, Some(1), 2, (2, 3))),
            read(0, Some(2), (4, 5)),
        ],
        "x",
    );
    assert!(text.contains("only failed operations wrote 2"), "{text}");
}

#[test]
fn an_unknown_compare_and_set_may_take_effect_or_not() {
    assert_valid(&[
        write(0, 1, (0, 1)),
        info(cas(1, Some(1), 2, (2, 3))),
        read(0, Some(2), (4, 5)),
    ]);
    assert_valid(&[
        write(0, 1, (0, 1)),
        info(cas(1, Some(1), 2, (2, 3))),
        read(0, Some(1), (4, 5)),
    ]);
    // It can only take effect while the register holds what it expects.
    assert_invalid(
        &[
            write(0, 1, (0, 1)),
            info(cas(1, Some(1), 2, (2, 3))),
            write(0, 3, (4, 5)),
            read(0, Some(2), (6, 7)),
            read(0, Some(2), (8, 9)),
        ],
        "x",
    );
}

#[test]
fn failed_operations_and_unknown_reads_are_ignored() {
    assert_valid(&[
        failed(write(0, 5, (0, 1))),
        info(read(1, None, (0, 10))),
        read(2, None, (2, 3)),
    ]);
}

#[test]
fn stale_read_is_rejected() {
    let text = assert_invalid(
        &[
            write(0, 1, (0, 1)),
            write(0, 2, (2, 3)),
            read(1, Some(1), (4, 5)),
        ],
        "x",
    );
    assert!(text.contains("read 1, but the register held 2"), "{text}");
    assert!(
        text.contains("Longest linearizable prefix found: 2 operations"),
        "{text}"
    );
}

#[test]
fn lost_write_is_rejected() {
    assert_invalid(
        &[
            write(0, 1, (0, 1)),
            write(1, 2, (2, 3)),
            read(2, Some(1), (4, 5)),
            read(0, Some(1), (6, 7)),
        ],
        "x",
    );
}

#[test]
fn non_atomic_compare_and_set_is_rejected() {
    let text = assert_invalid(
        &[
            write(0, 0, (0, 1)),
            cas(1, Some(0), 1, (2, 10)),
            cas(2, Some(0), 2, (3, 11)),
            read(0, Some(2), (12, 13)),
        ],
        "x",
    );
    assert!(text.contains("expected 0"), "{text}");
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    let text = assert_invalid(&[write(0, 1, (0, 1)), read(1, Some(7), (0, 3))], "x");
    assert!(text.contains("(no operation wrote 7)"), "{text}");
}

#[test]
fn read_your_writes_across_processes_is_rejected() {
    // p1 starts reading after p0's write was acknowledged, yet sees the key absent.
    let text = assert_invalid(&[write(0, 1, (0, 1)), read(1, None, (2, 3))], "x");
    assert!(
        text.contains("read null, but the register held 1"),
        "{text}"
    );
}

#[test]
fn the_counterexample_names_the_bad_key_only() {
    let ops = [
        on("x", write(0, 1, (0, 1))),
        on("y", write(1, 1, (0, 1))),
        on("x", read(0, Some(1), (2, 3))),
        on("y", write(1, 2, (2, 3))),
        on("y", read(2, Some(1), (4, 5))),
    ];
    assert_invalid(&ops, "y");
    let report = check(&ops);
    let summary: Vec<_> = report
        .keys
        .iter()
        .map(|k| (k.key.as_str(), k.ops, k.verdict))
        .collect();
    assert_eq!(
        summary,
        [("x", 2, Verdict::Valid), ("y", 3, Verdict::Invalid)]
    );
}

#[test]
fn the_counterexample_shows_a_timeline() {
    let text = assert_invalid(
        &[
            write(0, 1, (1_000_000, 2_500_000)),
            info(write(1, 2, (3_000_000, 4_000_000))),
            read(2, Some(2), (5_000_000, 6_000_000)),
            read(2, Some(1), (7_000_000, 8_123_456)),
            read(3, Some(5), (7_500_000, 9_000_000)),
        ],
        "x",
    );
    let expected = [
        "key \"x\" is not linearizable.",
        "Longest linearizable prefix found: 3 operations, each with the value after it:",
        "        invoked  returned           proc  op                    value",
        "        1.000ms  ok 2.500ms         p0    write 1               1",
        "        3.000ms  info 4.000ms       p1    write 2               2",
        "        5.000ms  ok 6.000ms         p2    read -> 2             2",
        "Then none of these can take effect (the register holds 2):",
        "        invoked  returned           proc  op                    why not",
        "        7.000ms  ok 8.123ms         p2    read -> 1             read 1, but the register \
         held 2 (p0 wrote 1, invoked 1.000ms); it returned first, so it must take effect before \
         the others",
        "        7.500ms  ok 9.000ms         p3    read -> 5             read 5, but the register \
         held 2 (no operation wrote 5)",
    ];
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let expected: Vec<&str> = expected.iter().map(|l| l.trim_end()).collect();
    assert_eq!(lines, expected, "{text}");
}

#[test]
fn malformed_operations_are_errors() {
    let mut completed_early = write(0, 1, (5, 4));
    completed_early.complete_time = Some(4);
    let mut ok_without_completion = write(0, 1, (0, 1));
    ok_without_completion.complete_time = None;
    let bad = [
        (
            op(0, F::Write, Value::Null, Value::Null, (0, 1)),
            "not a register operation",
        ),
        (
            op(0, F::Cas, 3.into(), 3.into(), (0, 1)),
            "not a register operation",
        ),
        (
            op(0, F::Cas, Value::List(vec![1.into()]), Value::Null, (0, 1)),
            "not a register",
        ),
        (
            op(0, F::Read, Value::Null, Value::List(vec![]), (0, 1)),
            "not a register operation",
        ),
        (completed_early, "completes before that"),
        (ok_without_completion, "has an outcome but no completion"),
    ];
    for (op, message) in bad {
        let err = check_register(std::slice::from_ref(&op), &CheckOptions::default()).unwrap_err();
        assert!(err.to_string().contains(message), "{op:?}: {err}");
    }
}

#[test]
fn the_timeout_makes_the_verdict_unknown() {
    let options = CheckOptions {
        timeout: Some(Duration::ZERO),
    };
    let report = check_register(&[write(0, 1, (0, 1))], &options).unwrap();
    assert_eq!(report.verdict(), Verdict::Unknown);
    assert!(report.keys[0].counterexample.is_none());
}

/// Simulates clients of real registers: each operation takes effect at a random instant strictly
/// between its invoke and its completion, so the history is linearizable by construction.
/// Some operations time out, taking effect before, after or never; a cas whose comparison fails
/// is recorded as failed.
struct Simulation {
    rng: StdRng,
    keys: usize,
    values: i64,
    info_probability: f64,
}

enum Client {
    Idle,
    Invoked {
        process: u64,
        f: F,
        key: String,
        value: Value,
    },
    Applied {
        process: u64,
        f: F,
        key: String,
        value: Value,
        outcome: (EventType, Value),
    },
}

impl Simulation {
    fn new(seed: u64, keys: usize, values: i64, info_probability: f64) -> Self {
        Simulation {
            rng: StdRng::seed_from_u64(seed),
            keys,
            values,
            info_probability,
        }
    }

    fn run(&mut self, clients: usize, ops: usize) -> History {
        let mut registers: HashMap<String, Option<i64>> = HashMap::new();
        let mut slots: Vec<Client> = (0..clients).map(|_| Client::Idle).collect();
        let mut next_process = clients as u64;
        let mut processes: Vec<u64> = (0..clients as u64).collect();
        // Operations whose client gave up but that may still take effect.
        let mut late: Vec<(String, F, Value)> = Vec::new();
        let mut events = Vec::new();
        let mut invoked = 0;
        let mut time = 0;
        while invoked < ops {
            time += self.rng.gen_range(1..=3);
            if !late.is_empty() && self.rng.gen_bool(0.05) {
                let (key, f, value) = late.swap_remove(self.rng.gen_range(0..late.len()));
                apply(registers.entry(key).or_default(), f, &value);
            }
            let s = self.rng.gen_range(0..clients);
            let event = |process, kind, f, key: &String, value: &Value| Event {
                process,
                kind,
                f,
                key: key.clone(),
                value: value.clone(),
                time,
                error: None,
            };
            slots[s] = match std::mem::replace(&mut slots[s], Client::Idle) {
                Client::Idle => {
                    invoked += 1;
                    let key = format!("k{}", self.rng.gen_range(0..self.keys));
                    let (f, value) = match self.rng.gen_range(0..3) {
                        0 => (F::Read, Value::Null),
                        1 => (F::Write, Value::Int(self.rng.gen_range(0..self.values))),
                        _ => {
                            // Sometimes expect the key to be absent.
                            let expected = self.rng.gen_range(-1..self.values);
                            let expected = (expected >= 0).then_some(expected);
                            let new = self.rng.gen_range(0..self.values);
                            (F::Cas, Value::List(vec![expected.into(), new.into()]))
                        }
                    };
                    let process = processes[s];
                    events.push(event(process, EventType::Invoke, f, &key, &value));
                    Client::Invoked {
                        process,
                        f,
                        key,
                        value,
                    }
                }
                Client::Invoked {
                    process,
                    f,
                    key,
                    value,
                } => {
                    if self.rng.gen_bool(self.info_probability) {
                        // Timed out before taking effect; it may yet.
                        events.push(event(process, EventType::Info, f, &key, &value));
                        if self.rng.gen_bool(0.5) {
                            late.push((key, f, value));
                        }
                        processes[s] = next_process;
                        next_process += 1;
                        Client::Idle
                    } else {
                        let outcome = apply(registers.entry(key.clone()).or_default(), f, &value);
                        Client::Applied {
                            process,
                            f,
                            key,
                            value,
                            outcome,
                        }
                    }
                }
                Client::Applied {
                    process,
                    f,
                    key,
                    value,
                    outcome,
                } => {
                    let (kind, result) = if self.rng.gen_bool(self.info_probability) {
                        processes[s] = next_process;
                        next_process += 1;
                        (EventType::Info, value)
                    } else {
                        outcome
                    };
                    events.push(event(process, kind, f, &key, &result));
                    Client::Idle
                }
            };
        }
        History { events }
    }
}

/// Applies an operation to a real register: the completion it gets.
fn apply(register: &mut Option<i64>, f: F, value: &Value) -> (EventType, Value) {
    match (f, value) {
        (F::Read, _) => (EventType::Ok, (*register).into()),
        (F::Write, Value::Int(v)) => {
            *register = Some(*v);
            (EventType::Ok, value.clone())
        }
        (F::Cas, Value::List(pair)) => {
            if pair[0].as_register() == Some(*register) {
                *register = pair[1].as_register().flatten();
                (EventType::Ok, value.clone())
            } else {
                (EventType::Fail, value.clone())
            }
        }
        _ => unreachable!("the simulation only makes register operations"),
    }
}

#[test]
fn large_random_linearizable_histories_are_checked_quickly() {
    // Debug builds are unoptimised; release builds get the full size.
    let ops = if cfg!(debug_assertions) {
        4_000
    } else {
        20_000
    };
    for (seed, keys) in [(1, 10), (2, 1)] {
        let history = Simulation::new(seed, keys, 5, 0.02).run(10, ops);
        let ops = history.operations().unwrap();
        let started = Instant::now();
        let report = check(&ops);
        let elapsed = started.elapsed();
        eprintln!("{} ops on {keys} keys, 10 clients: {elapsed:?}", ops.len());
        assert_eq!(report.verdict(), Verdict::Valid);
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
}

#[test]
fn random_histories_with_a_corrupted_read_are_rejected() {
    for seed in 0..20 {
        let history = Simulation::new(seed, 3, 5, 0.05).run(5, 500);
        let mut ops = history.operations().unwrap();
        let reads: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].f == F::Read && ops[i].status == Status::Ok)
            .collect();
        let i = reads[reads.len() / 2];
        ops[i].result = Value::Int(1_000);
        let key = ops[i].key.clone();
        assert_invalid(&ops, &key);
    }
}

/// An independent, exhaustive linearizability check for tiny histories: tries every order of
/// the operations that respects real time, with unknown-outcome writes optional.
fn brute_force(ops: &[Operation]) -> bool {
    fn step(state: Option<i64>, op: &Operation) -> Option<Option<i64>> {
        let reg = |v: &Value| v.as_register().unwrap();
        match (&op.f, &op.value) {
            (F::Read, _) => (reg(&op.result) == state).then_some(state),
            (F::Write, v) => Some(reg(v)),
            (F::Cas, Value::List(pair)) => (reg(&pair[0]) == state).then(|| reg(&pair[1])),
            _ => unreachable!(),
        }
    }
    fn search(ops: &[&Operation], placed: &mut [bool], state: Option<i64>) -> bool {
        let required_left = (0..ops.len()).any(|i| !placed[i] && ops[i].status == Status::Ok);
        if !required_left {
            return true;
        }
        for i in 0..ops.len() {
            let must_wait = (0..ops.len()).any(|j| {
                !placed[j]
                    && ops[j].status == Status::Ok
                    && ops[j].complete_time.unwrap() < ops[i].invoke_time
            });
            if placed[i] || must_wait {
                continue;
            }
            if let Some(next) = step(state, ops[i]) {
                placed[i] = true;
                let found = search(ops, placed, next);
                placed[i] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    let relevant: Vec<&Operation> = ops
        .iter()
        .filter(|op| op.status == Status::Ok || (op.status == Status::Info && op.f != F::Read))
        .collect();
    search(&relevant, &mut vec![false; relevant.len()], None)
}

#[test]
fn the_checker_agrees_with_brute_force_on_small_random_histories() {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut valid, mut invalid) = (0, 0);
    for seed in 0..4_000 {
        let info_probability = [0.0, 0.1, 0.2, 0.4][seed as usize % 4];
        let history = Simulation::new(seed, 1, 3, info_probability).run(3, 7);
        let mut ops = history.operations().unwrap();
        // Corrupt a read half the time, to get non-linearizable histories too.
        if rng.gen_bool(0.5) {
            if let Some(read) = ops
                .iter_mut()
                .find(|op| op.f == F::Read && op.status == Status::Ok)
            {
                read.result =
                    [Value::Null, 0.into(), 1.into(), 2.into()][rng.gen_range(0..4)].clone();
            }
        }
        let expected = brute_force(&ops);
        let verdict = check(&ops).verdict();
        assert_eq!(verdict == Verdict::Valid, expected, "seed {seed}: {ops:#?}");
        if expected {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    // Both verdicts were exercised plenty.
    assert!(
        valid > 500 && invalid > 500,
        "{valid} valid, {invalid} invalid"
    );
}
