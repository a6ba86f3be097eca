//! Hand-written histories and streams: a valid run, then one anomaly at a time.
//!
//! The history: process 0 writes 1 to `w/k0` (ok, revision 2), process 1 writes 2 to `w/k1`
//! (ok, revision 3), process 2 writes 3 to `w/k0` (unknown outcome; it took effect at revision
//! 4), process 3's write of 4 failed and process 4's write of 5 has an unknown outcome and never
//! took effect. The final reads from two members are at revision 4.

use super::*;
use crate::workload::watch::Record;

const PREFIX: &str = "w/";
const MS: u64 = 1_000_000;

fn write(process: u64, key: &str, value: i64, status: Status, revision: Option<i64>) -> Operation {
    let invoke_time = value as u64 * 1000 * MS;
    Operation {
        process,
        f: F::Write,
        key: key.to_owned(),
        value: value.into(),
        result: match status {
            Status::Ok => Value::List(vec![value.into(), revision.into()]),
            _ => value.into(),
        },
        status,
        invoke_time,
        complete_time: Some(invoke_time + 100 * MS),
        error: None,
    }
}

fn final_read(process: u64, revision: i64, kvs: &[(&str, i64, i64)]) -> Operation {
    let kvs = kvs
        .iter()
        .map(|&(key, value, mod_revision)| {
            Value::List(vec![
                Value::Str(key.to_owned()),
                value.into(),
                mod_revision.into(),
            ])
        })
        .collect();
    Operation {
        process,
        f: F::Read,
        key: PREFIX.to_owned(),
        value: Value::Null,
        result: Value::List(vec![revision.into(), Value::List(kvs)]),
        status: Status::Ok,
        invoke_time: 20_000 * MS,
        complete_time: Some(20_100 * MS),
        error: None,
    }
}

fn history() -> Vec<Operation> {
    let state = [("w/k0", 3, 4), ("w/k1", 2, 3)];
    vec![
        write(0, "w/k0", 1, Status::Ok, Some(2)),
        write(1, "w/k1", 2, Status::Ok, Some(3)),
        write(2, "w/k0", 3, Status::Info, None),
        write(3, "w/k1", 4, Status::Fail, None),
        write(4, "w/k1", 5, Status::Info, None),
        final_read(10, 4, &state),
        final_read(11, 4, &state),
    ]
}

fn put(time_ms: u64, revision: i64, key: &str, value: i64) -> Record {
    Record {
        time: time_ms * MS,
        what: Observation::Put {
            revision,
            key: key.to_owned(),
            value: value.into(),
            header_revision: revision,
        },
    }
}

fn marker(time_ms: u64, what: Observation) -> Record {
    Record {
        time: time_ms * MS,
        what,
    }
}

fn broken(time_ms: u64) -> Record {
    marker(
        time_ms,
        Observation::Broken {
            error: "connection reset".to_owned(),
        },
    )
}

fn resumed(time_ms: u64, start_revision: i64) -> Record {
    marker(
        time_ms,
        Observation::Resumed {
            start_revision,
            attempts: 2,
        },
    )
}

fn end(time_ms: u64, reached: bool) -> Record {
    marker(
        time_ms,
        Observation::End {
            final_revision: 4,
            reached,
        },
    )
}

/// Watcher `watcher` on member `n<watcher + 1>`.
fn stream(watcher: usize, records: Vec<Record>) -> Stream {
    Stream {
        watcher,
        member: format!("n{}", watcher + 1),
        records,
    }
}

/// A watcher that saw everything, once, in order.
fn healthy(watcher: usize) -> Stream {
    stream(
        watcher,
        vec![
            put(2100, 2, "w/k0", 1),
            put(3100, 3, "w/k1", 2),
            put(4100, 4, "w/k0", 3),
            end(20_200, true),
        ],
    )
}

/// Checks `streams` against `ops`; returns the report and the kinds of anomaly, sorted.
fn check(ops: &[Operation], streams: &[Stream]) -> (WatchReport, Vec<Kind>) {
    let report = check_watches(ops, streams, PREFIX);
    let mut kinds: Vec<Kind> = report.anomalies.iter().map(|a| a.kind).collect();
    kinds.sort();
    (report, kinds)
}

fn explanation(report: &WatchReport) -> String {
    report.judgement().explanation
}

#[test]
fn a_valid_run_with_a_reconnect() {
    let reconnected = stream(
        1,
        vec![
            put(2100, 2, "w/k0", 1),
            broken(2500),
            resumed(3000, 3),
            put(3100, 3, "w/k1", 2),
            put(4100, 4, "w/k0", 3),
            end(20_200, true),
        ],
    );
    let (report, kinds) = check(&history(), &[healthy(0), reconnected]);
    assert_eq!(kinds, [], "{}", explanation(&report));
    assert_eq!(report.verdict(), Verdict::Valid);
    assert_eq!(report.final_revision, Some(4));
    assert_eq!(report.events, 6);
    let judgement = report.judgement();
    assert!(judgement.failed.is_empty());
    assert!(
        judgement.explanation.contains("final revision 4"),
        "{}",
        judgement.explanation
    );
}

#[test]
fn a_gap_names_the_missed_revision_its_write_and_the_reconnect() {
    let gap = stream(
        1,
        vec![
            put(2100, 2, "w/k0", 1),
            broken(2500),
            resumed(3000, 4),
            put(4100, 4, "w/k0", 3),
            end(20_200, true),
        ],
    );
    let (report, kinds) = check(&history(), &[healthy(0), gap]);
    assert_eq!(kinds, [Kind::Gap]);
    let text = &report.anomalies[0].text;
    for needle in [
        "watcher 1 (n2) skipped 1 revision(s)",
        "revision 3 (w/k1 = 2, process 1's write of 2 to w/k1, invoked at 2.000 s, ok at \
         revision 3)",
        "between its revision 2 at 2.100 s and revision 4 at 4.100 s",
        "the stream broke (connection reset) at 2.500 s",
        "reopened from revision 4 after 2 attempt(s) at 3.000 s",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    let judgement = report.judgement();
    assert_eq!(judgement.verdict, Verdict::Invalid);
    assert_eq!(
        judgement.failed.get("watcher 1 (n2)").map(String::as_str),
        Some("invalid: revisions skipped")
    );
}

#[test]
fn an_event_delivered_again_after_a_reconnect_is_a_duplicate() {
    let repeated = stream(
        1,
        vec![
            put(2100, 2, "w/k0", 1),
            put(3100, 3, "w/k1", 2),
            broken(3500),
            resumed(3600, 4),
            put(3700, 3, "w/k1", 2),
            put(4100, 4, "w/k0", 3),
            end(20_200, true),
        ],
    );
    let (report, kinds) = check(&history(), &[healthy(0), repeated]);
    assert_eq!(kinds, [Kind::Duplicate], "{}", explanation(&report));
    assert_eq!(
        report.anomalies[0].text,
        "watcher 1 (n2) delivered revision 3 (w/k1 = 2) twice: at 3.100 s and again at 3.700 s \
         (its watch was last reopened from revision 4 at 3.600 s)"
    );
}

#[test]
fn watchers_that_disagree_on_an_event() {
    let other_value = stream(
        1,
        vec![
            put(2100, 2, "w/k0", 1),
            put(3100, 3, "w/k1", 5),
            put(4100, 4, "w/k0", 3),
            end(20_200, true),
        ],
    );
    let (report, kinds) = check(&history(), &[healthy(0), other_value]);
    assert_eq!(kinds, [Kind::Disagreement], "{}", explanation(&report));
    assert_eq!(
        report.anomalies[0].text,
        "at revision 3, watcher 0 (n1) delivered w/k1 = 2 but watcher 1 (n2) delivered w/k1 = 5"
    );
}

#[test]
fn watchers_that_disagree_on_what_a_revision_holds() {
    // Watcher 1 has a second event at revision 4: process 4's write, on another key.
    let mut more = healthy(1);
    more.records.insert(3, put(4100, 4, "w/k1", 5));
    let (report, kinds) = check(&history(), &[healthy(0), more]);
    assert_eq!(
        kinds,
        [Kind::Disagreement, Kind::FinalRead, Kind::FinalRead],
        "{}",
        explanation(&report)
    );
    assert!(
        report.anomalies.iter().any(|a| a.text
            == "watcher 0 (n1) delivered revision 4 without w/k1 = 5, which watcher 1 (n2) \
                delivered there"),
        "{}",
        explanation(&report)
    );
}

#[test]
fn two_events_for_one_key_in_one_revision() {
    let mut twice = healthy(1);
    twice.records.insert(3, put(4200, 4, "w/k0", 5));
    let (report, kinds) = check(&history(), &[healthy(0), twice]);
    // Value 5 was written to w/k1, but only watcher 1's own stream shows that second event: the
    // events of all watchers keep the first one.
    assert_eq!(kinds, [Kind::Disagreement], "{}", explanation(&report));
    assert!(report.anomalies[0]
        .text
        .contains("watcher 1 (n2) delivered two events for w/k0 at revision 4"));
}

#[test]
fn an_acknowledged_write_missing_from_every_stream_is_lost() {
    let without = |watcher| {
        stream(
            watcher,
            vec![
                put(2100, 2, "w/k0", 1),
                put(4100, 4, "w/k0", 3),
                end(20_200, true),
            ],
        )
    };
    let (report, kinds) = check(&history(), &[without(0), without(1)]);
    // The final reads found the write, which the streams never delivered.
    assert_eq!(
        kinds,
        [Kind::LostWrite, Kind::FinalRead, Kind::FinalRead],
        "{}",
        explanation(&report)
    );
    let lost = report
        .anomalies
        .iter()
        .find(|a| a.kind == Kind::LostWrite)
        .unwrap();
    assert_eq!(
        lost.text,
        "process 1's write of 2 to w/k1, invoked at 2.000 s, ok at revision 3 is in no \
         watcher's stream"
    );
    assert_eq!(lost.subject, "w/k1");
    let read = report
        .anomalies
        .iter()
        .find(|a| a.kind == Kind::FinalRead)
        .unwrap();
    assert_eq!(
        read.text,
        "the final read by process 10 at revision 4 found w/k1 = 2 (revision 3), but the \
         events up to that revision leave w/k1 absent"
    );
}

#[test]
fn an_acknowledged_write_at_another_revision_is_misplaced() {
    let mut ops = history();
    ops[1] = write(1, "w/k1", 2, Status::Ok, Some(5));
    let (report, kinds) = check(&ops, &[healthy(0), healthy(1)]);
    // The Put's revision is after the final reads' too.
    assert_eq!(
        kinds,
        [Kind::LostWrite, Kind::FinalRead],
        "{}",
        explanation(&report)
    );
    assert!(explanation(&report)
        .contains("ok at revision 5, but watchers delivered it at revision 3 to w/k1"));
}

#[test]
fn events_no_write_explains_are_phantoms() {
    let phantoms = |watcher| {
        let mut s = healthy(watcher);
        let end = s.records.pop().unwrap();
        s.records.extend([
            put(5100, 5, "w/k1", 4),
            marker(
                5200,
                Observation::Delete {
                    revision: 6,
                    key: "w/k0".to_owned(),
                    header_revision: 6,
                },
            ),
            put(5300, 7, "w/k1", 99),
            put(5400, 8, "w/k0", 5),
            end,
        ]);
        s
    };
    let (report, kinds) = check(&history(), &[phantoms(0), phantoms(1)]);
    assert_eq!(kinds, [Kind::Phantom; 4], "{}", explanation(&report));
    let texts: Vec<&str> = report.anomalies.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "at revision 5, watcher 0 (n1) delivered w/k1 = 4, from a write that failed: \
             process 3's write of 4 to w/k1, invoked at 4.000 s, failed",
            "at revision 6, watcher 0 (n1) delivered w/k0 deleted, but nothing deletes keys",
            "at revision 7, watcher 0 (n1) delivered w/k1 = 99, which no operation wrote",
            "at revision 8, watcher 0 (n1) delivered w/k0 = 5, but that value was written to \
             another key: process 4's write of 5 to w/k1, invoked at 5.000 s, outcome unknown",
        ]
    );
}

#[test]
fn a_write_that_took_effect_twice_is_a_phantom() {
    let twice = |watcher| {
        let mut s = healthy(watcher);
        let end = s.records.pop().unwrap();
        s.records
            .extend([put(5100, 5, "w/k1", 5), put(5200, 6, "w/k1", 5), end]);
        s
    };
    let (report, kinds) = check(&history(), &[twice(0), twice(1)]);
    assert_eq!(kinds, [Kind::Phantom], "{}", explanation(&report));
    assert!(report.anomalies[0]
        .text
        .contains("took effect more than once: watchers delivered it at revisions 5 and 6"));
}

#[test]
fn revisions_out_of_order() {
    let shuffled = stream(
        1,
        vec![
            put(2100, 2, "w/k0", 1),
            put(4100, 4, "w/k0", 3),
            put(4200, 3, "w/k1", 2),
            end(20_200, true),
        ],
    );
    let (report, kinds) = check(&history(), &[healthy(0), shuffled]);
    assert_eq!(kinds, [Kind::OutOfOrder], "{}", explanation(&report));
    assert_eq!(
        report.anomalies[0].text,
        "watcher 1 (n2) delivered revision 3 (w/k1 = 2) at 4.200 s after revision 4"
    );
}

#[test]
fn a_watcher_short_of_the_final_revision() {
    let short = stream(
        1,
        vec![
            put(2100, 2, "w/k0", 1),
            put(3100, 3, "w/k1", 2),
            end(50_200, false),
        ],
    );
    let (report, kinds) = check(&history(), &[healthy(0), short]);
    assert_eq!(kinds, [Kind::Unreached], "{}", explanation(&report));
    assert_eq!(
        report.anomalies[0].text,
        "watcher 1 (n2) delivered revisions up to 3, short of the final revision 4; its last \
         marker: ended before the final revision 4 at 50.200 s"
    );
}

#[test]
fn every_watcher_missing_an_unacknowledged_revision() {
    // Process 4's write took effect at revision 5 and another write of unknown outcome at 6,
    // after the final reads; no watcher delivered revision 5.
    let mut ops = history();
    ops.push(write(5, "w/k0", 6, Status::Info, None));
    let skipping = |watcher| {
        let mut s = healthy(watcher);
        s.records.insert(3, put(6100, 6, "w/k0", 6));
        s
    };
    let (report, kinds) = check(&ops, &[skipping(0), skipping(1)]);
    assert_eq!(kinds, [Kind::Gap], "{}", explanation(&report));
    assert!(report.anomalies[0]
        .text
        .starts_with("no watcher delivered revision 5"));
}

#[test]
fn a_compacted_watch() {
    let mut compacted = healthy(1);
    compacted.records.push(marker(
        20_300,
        Observation::Canceled {
            reason: "mvcc: required revision has been compacted".to_owned(),
            compact_revision: 3,
        },
    ));
    let (report, kinds) = check(&history(), &[healthy(0), compacted]);
    assert_eq!(kinds, [Kind::Compacted], "{}", explanation(&report));
}

#[test]
fn a_final_read_that_disagrees_with_the_events() {
    let mut ops = history();
    ops[6] = final_read(11, 4, &[("w/k0", 1, 2), ("w/k1", 2, 3)]);
    let (report, kinds) = check(&ops, &[healthy(0), healthy(1)]);
    assert_eq!(kinds, [Kind::FinalRead], "{}", explanation(&report));
    assert_eq!(
        report.anomalies[0].text,
        "the final read by process 11 at revision 4 found w/k0 = 1 (revision 2), but the \
         events up to that revision leave w/k0 = 3 (revision 4)"
    );
}

#[test]
fn without_final_reads_the_verdict_is_unknown() {
    let ops: Vec<Operation> = history()
        .into_iter()
        .filter(|op| op.f == F::Write)
        .collect();
    let (report, kinds) = check(&ops, &[healthy(0), healthy(1)]);
    assert_eq!(kinds, []);
    assert_eq!(report.verdict(), Verdict::Unknown);
    assert!(explanation(&report).contains("no final read succeeded"));
}

#[test]
fn streams_are_saved_as_json_lines() {
    let record = put(1, 2, "w/k0", 1);
    assert_eq!(
        serde_json::to_string(&record).unwrap(),
        r#"{"time":1000000,"type":"put","revision":2,"key":"w/k0","value":1,"header_revision":2}"#
    );
    let end = end(2, false);
    assert_eq!(
        serde_json::to_string(&end).unwrap(),
        r#"{"time":2000000,"type":"end","final_revision":4,"reached":false}"#
    );
}
