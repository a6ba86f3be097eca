//! Hand-written lock histories: what the checker must accept, report, and reject.

use super::*;
use crate::checker::Verdict;
use crate::history::History;

/// One operation as its two history lines: `process` invoked `f` on `key` with `value` at
/// `times.0` and it ended `kind` with `result` at `times.1`. Values are JSON.
fn op(
    process: Process,
    f: &str,
    key: &str,
    value: &str,
    times: (u64, u64),
    kind: &str,
    result: &str,
) -> String {
    let error = match kind {
        "ok" => String::new(),
        _ if f == "write" && key == FENCED_KEY && result.starts_with('"') => {
            format!(",\"error\":{result}")
        }
        _ => ",\"error\":\"timed out\"".to_owned(),
    };
    let result = if kind == "ok" { result } else { value };
    format!(
        "{{\"process\":{process},\"type\":\"invoke\",\"f\":\"{f}\",\"key\":\"{key}\",\"value\":{value},\"time\":{}}}\n\
         {{\"process\":{process},\"type\":\"{kind}\",\"f\":\"{f}\",\"key\":\"{key}\",\"value\":{result},\"time\":{}{error}}}\n",
        times.0, times.1
    )
}

/// A whole cycle of `process` starting at `t` (ms): grant, acquire of `lock/a/<fence>` with
/// that fence, an increment `counter.0 -> counter.1`, a fenced append of `token`, release with
/// `health`, revoke. Times: acquired at t+10, released at t+40.
fn cycle(
    process: Process,
    t: u64,
    fence: i64,
    counter: (i64, i64),
    token: i64,
    health: &str,
) -> String {
    let ms = |x: u64| (t + x) * 1_000_000;
    let lease = 100 + process;
    let key = format!("\"lock/a/{fence}\"");
    [
        op(
            process,
            "grant",
            LOCK_NAME,
            "null",
            (ms(0), ms(1)),
            "ok",
            &lease.to_string(),
        ),
        op(
            process,
            "acquire",
            LOCK_NAME,
            &lease.to_string(),
            (ms(2), ms(10)),
            "ok",
            &format!("[{key},{fence}]"),
        ),
        op(
            process,
            "write",
            COUNTER_KEY,
            "null",
            (ms(11), ms(20)),
            "ok",
            &format!("[{},{}]", counter.0, counter.1),
        ),
        op(
            process,
            "write",
            FENCED_KEY,
            &format!("[{fence},{token}]"),
            (ms(21), ms(30)),
            "ok",
            &format!("[{fence},{token},{}]", fence + 1),
        ),
        op(
            process,
            "release",
            LOCK_NAME,
            &format!("[{key},{fence},\"{health}\"]"),
            (ms(40), ms(45)),
            "ok",
            &format!("[{key},{fence},\"{health}\"]"),
        ),
        op(
            process,
            "revoke",
            LOCK_NAME,
            &lease.to_string(),
            (ms(46), ms(47)),
            "ok",
            &lease.to_string(),
        ),
    ]
    .concat()
}

/// The final reads from two members, at `t` ms.
fn final_reads(t: u64, counter: &str, list: &str) -> String {
    let ms = |x: u64| (t + x) * 1_000_000;
    [
        op(
            90,
            "read",
            COUNTER_KEY,
            "null",
            (ms(0), ms(1)),
            "ok",
            counter,
        ),
        op(90, "read", FENCED_KEY, "null", (ms(2), ms(3)), "ok", list),
        op(
            91,
            "read",
            COUNTER_KEY,
            "null",
            (ms(4), ms(5)),
            "ok",
            counter,
        ),
        op(91, "read", FENCED_KEY, "null", (ms(6), ms(7)), "ok", list),
    ]
    .concat()
}

/// Loads the lines as a history, in time order, and checks it.
fn check(parts: &[String]) -> LockReport {
    let mut history = History::read_jsonl(parts.concat().as_bytes()).unwrap();
    history.events.sort_by_key(|e| e.time);
    check_lock(&history.operations().unwrap())
}

fn assert_verdict(report: &LockReport, verdict: Verdict) {
    assert_eq!(report.verdict(), verdict, "{}", report.explanation());
}

const HEALTHY: &str = LEASE_OK;
const LAPSED: &str = "lease-lapsed: no keep-alive answered in time";

#[test]
fn a_clean_run_is_valid() {
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        cycle(1, 50, 8, (1, 2), 2, HEALTHY),
        cycle(2, 100, 12, (2, 3), 3, HEALTHY),
        final_reads(200, "3", "[[5,1],[8,2],[12,3]]"),
    ]);
    assert_verdict(&report, Verdict::Valid);
    assert_eq!(report.holds.len(), 3);
    assert!(report.overlaps.is_empty());
    assert_eq!(report.fencing.ok, 3);
    assert_eq!(report.fencing.runs, 3);
    assert_eq!(report.counter.lost(), Some(0));
    let text = report.explanation();
    assert!(text.contains("(1) mutual exclusion: held"), "{text}");
    assert!(text.contains("(2) fencing: held"), "{text}");
    assert!(
        text.contains("(3) unfenced counter: 0 lost updates"),
        "{text}"
    );
    assert!(report.failed().is_empty());
}

#[test]
fn overlapping_holds_with_healthy_leases_are_invalid() {
    // Process 1 is granted the lock at 30 ms, while process 0 (fence 5, lease proven alive)
    // holds it until 40 ms.
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        cycle(1, 20, 8, (1, 2), 2, HEALTHY),
        final_reads(200, "2", "[[5,1],[8,2]]"),
    ]);
    assert_verdict(&report, Verdict::Invalid);
    assert_eq!(report.overlaps.len(), 1);
    let overlap = &report.overlaps[0];
    assert_eq!((overlap.earlier.process, overlap.later.process), (0, 1));
    assert_eq!((overlap.from, overlap.to), (30_000_000, Some(40_000_000)));
    assert!(overlap.excuse.is_none());
    assert!(report.failed().contains_key("mutual exclusion"));
    let text = report.explanation();
    assert!(text.contains("(1) mutual exclusion: VIOLATED"), "{text}");
    assert!(text.contains("0.030s..0.040s"), "{text}");
}

#[test]
fn the_later_holders_lease_does_not_excuse_an_overlap() {
    // Only the earlier holder losing its lease explains a second grant.
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        cycle(1, 20, 8, (1, 2), 2, LAPSED),
        final_reads(200, "2", "[[5,1],[8,2]]"),
    ]);
    assert_verdict(&report, Verdict::Invalid);
}

#[test]
fn an_overlap_after_the_earlier_holder_lost_its_keep_alive_is_reported_but_valid() {
    // Process 0's lease lapsed: its lock key expired and process 1 took the lock while 0
    // still acted as the holder. Its late increment overwrote 1's: one lost update.
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, LAPSED),
        cycle(1, 5, 8, (0, 1), 2, HEALTHY),
        final_reads(200, "1", "[[5,1],[8,2]]"),
    ]);
    assert_verdict(&report, Verdict::Valid);
    assert_eq!(report.overlaps.len(), 1);
    assert!(report.overlaps[0]
        .excuse
        .as_deref()
        .is_some_and(|e| e.contains("no keep-alive")));
    assert_eq!(report.stale_increments, 1);
    let text = report.explanation();
    assert!(
        text.contains("(1) mutual exclusion: NOT guaranteed: 1 pairs"),
        "{text}"
    );
    assert!(text.contains("process 0 held lock/a/5 (fence 5)"), "{text}");
    assert!(text.contains("1 lost updates"), "{text}");
}

#[test]
fn fenced_writes_out_of_fence_order_are_invalid() {
    // An older holder's append committed after a newer holder's: the fence did not fence.
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        cycle(1, 50, 8, (1, 2), 2, HEALTHY),
        final_reads(200, "2", "[[8,2],[5,1]]"),
    ]);
    assert_verdict(&report, Verdict::Invalid);
    assert!(report.failed().contains_key("fencing"));
    let text = report.explanation();
    assert!(text.contains("fences decrease 1 times"), "{text}");
    assert!(
        text.contains("entry 1 5:1 (process 0) after 8:2 (process 1)"),
        "{text}"
    );
}

#[test]
fn a_lost_fenced_write_is_invalid() {
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        cycle(1, 50, 8, (1, 2), 2, HEALTHY),
        final_reads(200, "2", "[[5,1]]"),
    ]);
    assert_verdict(&report, Verdict::Invalid);
    let text = report.explanation();
    assert!(text.contains("1 ok fenced writes are missing"), "{text}");
    assert!(text.contains("8:2 by process 1"), "{text}");
}

#[test]
fn lost_unfenced_updates_are_reported_but_valid() {
    // Both increments read 0 and wrote 1 (their holds did not overlap as the clients saw them,
    // the first put landing late), so the counter ended at 1 after 2 ok increments.
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        cycle(1, 50, 8, (0, 1), 2, HEALTHY),
        final_reads(200, "1", "[[5,1],[8,2]]"),
    ]);
    assert_verdict(&report, Verdict::Valid);
    assert_eq!(report.counter.lost(), Some(1));
    assert_eq!(report.counter.duplicates, 1);
    let text = report.explanation();
    assert!(
        text.contains("(3) unfenced counter: 1 lost updates without fencing: 2 ok increments"),
        "{text}"
    );
    assert!(
        text.contains("1 ok increments wrote a value another"),
        "{text}"
    );
}

#[test]
fn a_failed_fenced_write_that_took_effect_is_invalid() {
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        op(
            1,
            "write",
            FENCED_KEY,
            "[3,2]",
            (60_000_000, 61_000_000),
            "fail",
            "\"fenced out: lock/a/3 is gone\"",
        ),
        final_reads(200, "1", "[[5,1],[3,2]]"),
    ]);
    assert_verdict(&report, Verdict::Invalid);
    assert_eq!(report.fencing.fenced_out, 1);
    let text = report.explanation();
    assert!(text.contains("which failed"), "{text}");
}

#[test]
fn an_unknown_fenced_write_may_land_but_a_never_written_entry_may_not() {
    let unknown = op(
        1,
        "write",
        FENCED_KEY,
        "[8,2]",
        (60_000_000, 61_000_000),
        "info",
        "null",
    );
    let landed = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        unknown.clone(),
        final_reads(200, "1", "[[5,1],[8,2]]"),
    ]);
    assert_verdict(&landed, Verdict::Valid);
    assert_eq!(landed.fencing.info_applied, 1);
    let invented = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        unknown,
        final_reads(200, "1", "[[5,1],[8,7]]"),
    ]);
    assert_verdict(&invented, Verdict::Invalid);
    assert!(invented.explanation().contains("never written"));
}

#[test]
fn an_append_that_found_the_list_changed_under_its_fence_is_invalid() {
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        op(
            1,
            "write",
            FENCED_KEY,
            "[8,2]",
            (60_000_000, 61_000_000),
            "fail",
            "\"the list changed under a live fence: mod revision 6, now 9\"",
        ),
        final_reads(200, "1", "[[5,1]]"),
    ]);
    assert_verdict(&report, Verdict::Invalid);
    assert!(report.failed().contains_key("mutual exclusion"));
}

#[test]
fn final_reads_that_disagree_are_invalid() {
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        cycle(1, 50, 8, (1, 2), 2, HEALTHY),
        op(
            90,
            "read",
            FENCED_KEY,
            "null",
            (200_000_000, 201_000_000),
            "ok",
            "[[5,1],[8,2]]",
        ),
        op(
            91,
            "read",
            FENCED_KEY,
            "null",
            (202_000_000, 203_000_000),
            "ok",
            "[[5,1]]",
        ),
        op(
            90,
            "read",
            COUNTER_KEY,
            "null",
            (204_000_000, 205_000_000),
            "ok",
            "2",
        ),
    ]);
    assert_verdict(&report, Verdict::Invalid);
    assert!(report.explanation().contains("final reads disagree"));
}

#[test]
fn a_counter_above_every_attempt_is_invalid() {
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        final_reads(200, "7", "[[5,1]]"),
    ]);
    assert_verdict(&report, Verdict::Invalid);
    assert!(report.failed().contains_key("counter"));
}

#[test]
fn a_run_where_no_acquire_succeeded_is_unknown() {
    let report = check(&[
        op(0, "grant", LOCK_NAME, "null", (0, 1_000_000), "ok", "100"),
        op(
            0,
            "acquire",
            LOCK_NAME,
            "100",
            (2_000_000, 3_000_000),
            "fail",
            "null",
        ),
        final_reads(200, "null", "null"),
    ]);
    assert_verdict(&report, Verdict::Unknown);
    assert_eq!(report.acquires, (0, 1, 0));
    assert!(report.explanation().contains("nothing was tested"));
}

#[test]
fn a_hold_never_released_overlaps_everything_after_it() {
    let mut first = cycle(0, 0, 5, (0, 1), 1, HEALTHY);
    // Cut the history after the fenced write: no release, no revoke.
    first = first.lines().take(8).map(|l| format!("{l}\n")).collect();
    let report = check(&[
        first,
        cycle(1, 100, 8, (1, 2), 2, HEALTHY),
        final_reads(200, "2", "[[5,1],[8,2]]"),
    ]);
    assert_eq!(report.overlaps.len(), 1);
    assert_eq!(report.overlaps[0].earlier.end, None);
    // Its lease's fate was never recorded, so the overlap is not proof of a broken lock.
    assert_verdict(&report, Verdict::Valid);
}

#[test]
fn the_stored_list_decodes() {
    assert_eq!(decode_list(""), Some(Value::List(vec![])));
    assert_eq!(
        decode_list("5:1,8:2"),
        Some(Value::List(vec![
            Value::List(vec![5.into(), 1.into()]),
            Value::List(vec![8.into(), 2.into()]),
        ]))
    );
    assert_eq!(decode_list("5:1,x"), None);
}

#[test]
fn a_lease_lapses_when_keep_alives_stop_proving_it_alive() {
    let start = Instant::now();
    let ttl = Duration::from_secs(2);
    let mut health = LeaseHealth::new(start, ttl);
    health.renewed(start + Duration::from_millis(600), ttl);
    assert_eq!(health.check(start + Duration::from_millis(2500)), None);
    // A keep-alive sent after the proof ran out: the lease may have expired in between, even
    // though it is answered.
    health.renewed(start + Duration::from_millis(2700), ttl);
    let why = health.check(start + Duration::from_millis(2800)).unwrap();
    assert!(why.contains("only until 2.600s"), "{why}");

    let mut gone = LeaseHealth::new(start, ttl);
    gone.gone("keep-alive answered TTL 0".to_owned());
    assert!(gone.check(start).is_some());
    let mut late = LeaseHealth::new(start, ttl);
    assert!(late.check(start + Duration::from_millis(2001)).is_some());
}

#[test]
fn a_lock_key_gone_when_read_is_counted() {
    let gone = "{\"process\":1,\"type\":\"invoke\",\"f\":\"acquire\",\"key\":\"lock/a\",\"value\":101,\"time\":60000000}\n\
                {\"process\":1,\"type\":\"info\",\"f\":\"acquire\",\"key\":\"lock/a\",\"value\":101,\"time\":61000000,\
                \"error\":\"granted a lock key already gone: lock/a/9 was not there when read (its lease expired)\"}\n";
    let report = check(&[
        cycle(0, 0, 5, (0, 1), 1, HEALTHY),
        gone.to_owned(),
        final_reads(200, "1", "[[5,1]]"),
    ]);
    assert_verdict(&report, Verdict::Valid);
    assert_eq!((report.acquires, report.granted_gone), ((1, 0, 1), 1));
    assert!(report
        .explanation()
        .contains("1 of them granted a lock key that was already gone"));
}
