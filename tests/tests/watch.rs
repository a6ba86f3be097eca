//! Watch API behaviour, checked through the etcd-client crate. Every body runs against real etcd
//! first (`for_both` / `for_both_servers`), so each expectation is etcd 3.4's observed behaviour.
//!
//! Ordering note used throughout: within one revision etcd notifies the watchers of a stream in
//! no particular order, so tests that hold several watches on one stream group responses by
//! watch id. Across revisions a stream is ordered, which is what the "barrier" helper relies on:
//! once the event of a later write arrives, every earlier event for that stream has arrived.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp,
    TxnOpResponse, WatchFilterType, WatchOptions,
};
use oxcd_tests::watch_checker::{
    assert_created, current_revision, for_both_servers, header_revision, progress_notify_interval,
    run_guarantee_check, CheckerReport, Ev, Kind, Kv, Resp, Session,
};
use oxcd_tests::{against, for_both};
use oxcd_tests::{Flavor, StartOptions};

const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const BARRIER_KEY: &str = "~barrier";

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    header_revision(c.put(key, value, None).await.unwrap().header())
}

/// Adds a watch on [`BARRIER_KEY`] to the stream; returns its id.
async fn add_barrier_watch(s: &mut Session) -> i64 {
    let reply = s.create(BARRIER_KEY, WatchOptions::new()).await;
    assert_created(&reply);
    reply.watch_id
}

/// Creates a watch on the stream, checks the reply and returns the id.
async fn create_ok(s: &mut Session, key: &str, options: WatchOptions) -> i64 {
    let reply = s.create(key, options).await;
    assert_created(&reply);
    reply.watch_id
}

/// Writes the barrier key and returns every response that arrives before its event, grouped by
/// watch id (the barrier event itself is left out).
async fn through_barrier(
    c: &mut Client,
    s: &mut Session,
    barrier: i64,
) -> BTreeMap<i64, Vec<Resp>> {
    let revision = put(c, BARRIER_KEY, "b").await;
    let mut seen: BTreeMap<i64, Vec<Resp>> = BTreeMap::new();
    loop {
        let resp = s.recv().await;
        if resp.watch_id == barrier {
            assert_eq!(
                resp.events.iter().map(Ev::revision).collect::<Vec<_>>(),
                vec![revision],
                "barrier watch got {resp:?}"
            );
            return seen;
        }
        seen.entry(resp.watch_id).or_default().push(resp);
    }
}

/// Reads until every (watch id, revision) target has received its events through that
/// revision; returns the events per watch. Create/cancel replies and unknown ids fail the test.
async fn events_by_watch(s: &mut Session, targets: &[(i64, i64)]) -> BTreeMap<i64, Vec<Ev>> {
    let mut got: BTreeMap<i64, Vec<Ev>> = targets.iter().map(|&(id, _)| (id, Vec::new())).collect();
    let done = |got: &BTreeMap<i64, Vec<Ev>>| {
        targets
            .iter()
            .all(|(id, rev)| got[id].last().map(Ev::revision).unwrap_or(0) >= *rev)
    };
    while !done(&got) {
        let resp = s.recv().await;
        assert!(
            !resp.created && !resp.canceled && !resp.events.is_empty(),
            "expected an event response, got {resp:?}"
        );
        got.get_mut(&resp.watch_id)
            .unwrap_or_else(|| panic!("response for an unexpected watch: {resp:?}"))
            .extend(resp.events);
    }
    got
}

fn keys_of(events: &[Ev]) -> Vec<String> {
    events.iter().map(Ev::key_str).collect()
}

#[tokio::test]
async fn create_replies_number_watches_from_zero_per_stream_and_honour_chosen_ids() {
    for_both(|t| async move {
        let mut c = t.client;
        let rev = put(&mut c, "k", "v").await;

        let (mut s, first) = Session::open(&mut c, "a", WatchOptions::new()).await;
        assert_created(&first);
        assert_eq!(first.watch_id, 0, "server-assigned ids start at 0");
        assert_eq!(
            first.revision(),
            rev,
            "the create reply carries the current revision"
        );
        assert!(!first.fragment);

        let second = s.create("b", WatchOptions::new()).await;
        assert_created(&second);
        assert_eq!(second.watch_id, 1);

        let chosen = s.create("c", WatchOptions::new().with_watch_id(7)).await;
        assert_created(&chosen);
        assert_eq!(chosen.watch_id, 7, "a client-chosen id is used as is");

        let after_chosen = s.create("d", WatchOptions::new()).await;
        assert_eq!(
            after_chosen.watch_id, 2,
            "auto ids continue from their own counter"
        );

        // Choosing the id the counter would hand out next makes the counter skip it.
        let taken = s.create("e", WatchOptions::new().with_watch_id(3)).await;
        assert_created(&taken);
        assert_eq!(taken.watch_id, 3);
        let skipped = s.create("f", WatchOptions::new()).await;
        assert_eq!(skipped.watch_id, 4);

        // A duplicate id and an empty range are refused with created+canceled and id -1.
        let duplicate = s.create("g", WatchOptions::new().with_watch_id(7)).await;
        assert!(duplicate.created && duplicate.canceled, "{duplicate:?}");
        assert_eq!(duplicate.watch_id, -1);
        assert_eq!(duplicate.cancel_reason, DUPLICATE_ID);
        assert_eq!(duplicate.compact_revision, 0);
        assert_eq!(duplicate.revision(), rev);
        assert!(duplicate.events.is_empty());

        for (key, end) in [("z", "a"), ("m", "m")] {
            let empty = s.create(key, WatchOptions::new().with_range(end)).await;
            assert!(empty.created && empty.canceled, "{empty:?}");
            assert_eq!(empty.watch_id, -1);
            assert_eq!(empty.cancel_reason, EMPTY_RANGE);
            assert_eq!(empty.revision(), rev);
        }

        // Refused creates do not use up an id.
        let after_refusals = s.create("h", WatchOptions::new()).await;
        assert_created(&after_refusals);
        assert_eq!(after_refusals.watch_id, 5);

        // Ids are per stream: a second stream starts at 0 again.
        let (_other, other_first) = Session::open(&mut c, "a", WatchOptions::new()).await;
        assert_created(&other_first);
        assert_eq!(other_first.watch_id, 0);

        // Events are tagged with the chosen id.
        let rev = put(&mut c, "c", "1").await;
        let events = events_by_watch(&mut s, &[(7, rev)]).await;
        assert_eq!(events[&7], vec![Ev::put(Kv::new("c", "1", rev, rev, 1))]);
    })
    .await;
}

#[tokio::test]
async fn cancel_gets_exactly_one_canceled_reply_and_stops_the_events() {
    for_both(|t| async move {
        let mut c = t.client;
        let (mut s, id) = Session::watch(&mut c, "k", WatchOptions::new()).await;
        let barrier = add_barrier_watch(&mut s).await;
        let rev = put(&mut c, "k", "1").await;
        assert_eq!(events_by_watch(&mut s, &[(id, rev)]).await[&id].len(), 1);

        s.cancel(id).await;
        let reply = s.recv().await;
        assert_eq!(
            (reply.watch_id, reply.created, reply.canceled),
            (id, false, true),
            "{reply:?}"
        );
        assert_eq!(reply.compact_revision, 0);
        assert_eq!(reply.cancel_reason, "");
        assert!(reply.events.is_empty());
        assert_eq!(
            reply.revision(),
            rev,
            "the cancel reply carries the current revision"
        );

        // No event after the cancel, and no second cancel reply.
        put(&mut c, "k", "2").await;
        let before_barrier = through_barrier(&mut c, &mut s, barrier).await;
        assert!(
            before_barrier.is_empty(),
            "after cancel: {before_barrier:?}"
        );

        // Cancelling it again, or an id that never existed, is silently ignored.
        s.cancel(id).await;
        s.cancel(99).await;
        let before_barrier = through_barrier(&mut c, &mut s, barrier).await;
        assert!(
            before_barrier.is_empty(),
            "after cancels of unknown ids: {before_barrier:?}"
        );

        // The stream keeps working and the freed id is not reused by the counter.
        let again = s.create("k", WatchOptions::new()).await;
        assert_created(&again);
        assert_eq!(again.watch_id, 2);
    })
    .await;
}

#[tokio::test]
async fn key_prefix_range_from_key_and_all_keys_watches_select_their_keys() {
    for_both(|t| async move {
        let mut c = t.client;
        let (mut s, key) = Session::watch(&mut c, "b", WatchOptions::new()).await;
        let prefix = create_ok(&mut s, "b", WatchOptions::new().with_prefix()).await;
        let range = create_ok(&mut s, "b", WatchOptions::new().with_range("d")).await;
        let from_key = create_ok(&mut s, "c", WatchOptions::new().with_from_key()).await;
        let all = create_ok(&mut s, "", WatchOptions::new().with_all_keys()).await;
        let barrier = add_barrier_watch(&mut s).await;

        for k in ["a", "b", "ba", "bz", "c", "cc", "d", "e"] {
            put(&mut c, k, "v").await;
        }
        c.delete("b", None).await.unwrap();

        let mut seen = through_barrier(&mut c, &mut s, barrier).await;
        let mut keys = |id: i64| -> Vec<String> {
            let responses = seen.remove(&id).unwrap_or_default();
            responses
                .iter()
                .flat_map(|r| r.events.iter())
                .map(Ev::key_str)
                .filter(|k| k != BARRIER_KEY)
                .collect()
        };
        assert_eq!(keys(key), ["b", "b"]);
        assert_eq!(keys(prefix), ["b", "ba", "bz", "b"]);
        assert_eq!(keys(range), ["b", "ba", "bz", "c", "cc", "b"]);
        assert_eq!(keys(from_key), ["c", "cc", "d", "e"]);
        assert_eq!(keys(all), ["a", "b", "ba", "bz", "c", "cc", "d", "e", "b"]);
        assert!(seen.is_empty(), "responses for other watches: {seen:?}");
    })
    .await;
}

#[tokio::test]
async fn start_revision_zero_delivers_only_later_events() {
    for_both(|t| async move {
        let mut c = t.client;
        put(&mut c, "k", "1").await;
        let rev = put(&mut c, "k", "2").await;
        let (mut s, created) = Session::open(&mut c, "k", WatchOptions::new()).await;
        assert_created(&created);
        assert_eq!(created.revision(), rev);
        let next = put(&mut c, "k", "3").await;
        let events = s.events_through(created.watch_id, next).await;
        assert_eq!(events, vec![Ev::put(Kv::new("k", "3", 2, next, 3))]);
    })
    .await;
}

#[tokio::test]
async fn historical_start_replays_from_that_revision_then_continues_live_without_gap() {
    for_both(|t| async move {
        let mut c = t.client;
        let a1 = put(&mut c, "a", "1").await; // 2
        put(&mut c, "b", "1").await; // 3
        let a2 = put(&mut c, "a", "2").await; // 4
        let del = header_revision(c.delete("a", None).await.unwrap().header()); // 5
        let a3 = put(&mut c, "a", "3").await; // 6
        assert_eq!((a1, a2, del, a3), (2, 4, 5, 6));

        // start_revision is inclusive: the event at revision 4 is replayed, the one at 2 is not.
        let (mut s, created) = Session::open(
            &mut c,
            "a",
            WatchOptions::new().with_start_revision(4).with_prev_key(),
        )
        .await;
        assert_created(&created);
        assert_eq!(
            created.revision(),
            6,
            "the reply carries the current, not the start, revision"
        );
        let a4 = put(&mut c, "a", "4").await; // 7, live
        put(&mut c, "b", "2").await; // 8, another key
        let a5 = put(&mut c, "a", "5").await; // 9
        let events = s.events_through(created.watch_id, a5).await;
        let v1 = Kv::new("a", "1", 2, 2, 1);
        let v2 = Kv::new("a", "2", 2, 4, 2);
        let v3 = Kv::new("a", "3", 6, 6, 1);
        let v4 = Kv::new("a", "4", 6, a4, 2);
        assert_eq!(
            events,
            vec![
                Ev::put(v2.clone()).with_prev(v1),
                Ev::delete("a", 5).with_prev(v2),
                Ev::put(v3.clone()),
                Ev::put(v4.clone()).with_prev(v3),
                Ev::put(Kv::new("a", "5", 6, a5, 3)).with_prev(v4),
            ]
        );

        // A start revision in the future: created now, events only from that revision on.
        let (mut f, created) =
            Session::open(&mut c, "a", WatchOptions::new().with_start_revision(a5 + 2)).await;
        assert_created(&created);
        assert_eq!(created.revision(), a5);
        put(&mut c, "a", "6").await; // a5 + 1: before the start
        let at_start = put(&mut c, "a", "7").await;
        let events = f.events_through(created.watch_id, at_start).await;
        assert_eq!(events, vec![Ev::put(Kv::new("a", "7", 6, at_start, 5))]);
    })
    .await;
}

#[tokio::test]
async fn prev_kv_is_set_on_updates_and_deletes_but_never_on_creates() {
    for_both(|t| async move {
        let mut c = t.client;
        let (mut s, with_prev) = Session::watch(
            &mut c,
            "p/",
            WatchOptions::new().with_prefix().with_prev_key(),
        )
        .await;
        let without = s.create("p/", WatchOptions::new().with_prefix()).await;
        assert_created(&without);
        let without = without.watch_id;

        let r1 = put(&mut c, "p/a", "1").await;
        let r2 = put(&mut c, "p/a", "2").await;
        let r3 = header_revision(c.delete("p/a", None).await.unwrap().header());
        let r4 = put(&mut c, "p/a", "3").await;
        let got = events_by_watch(&mut s, &[(with_prev, r4), (without, r4)]).await;

        let v1 = Kv::new("p/a", "1", r1, r1, 1);
        let v2 = Kv::new("p/a", "2", r1, r2, 2);
        let v3 = Kv::new("p/a", "3", r4, r4, 1);
        assert_eq!(
            got[&with_prev],
            vec![
                Ev::put(v1.clone()),
                Ev::put(v2.clone()).with_prev(v1.clone()),
                Ev::delete("p/a", r3).with_prev(v2.clone()),
                Ev::put(v3.clone()),
            ]
        );
        assert_eq!(
            got[&without],
            vec![Ev::put(v1), Ev::put(v2), Ev::delete("p/a", r3), Ev::put(v3)]
        );
        // A DELETE event's kv is the key with the delete revision as mod_revision; everything
        // else (create_revision, version, value, lease) is zero.
        let tombstone = &got[&without][2];
        assert_eq!(tombstone.kind, Kind::Delete);
        assert_eq!(tombstone.kv, Kv::tombstone(b"p/a", r3));
    })
    .await;
}

#[tokio::test]
async fn noput_and_nodelete_filters_drop_their_event_types() {
    for_both(|t| async move {
        let mut c = t.client;
        let (mut s, no_put) = Session::watch(
            &mut c,
            "f/",
            WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_filters([WatchFilterType::NoPut]),
        )
        .await;
        let no_delete = s
            .create(
                "f/",
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoDelete]),
            )
            .await;
        assert_created(&no_delete);
        let no_delete = no_delete.watch_id;
        let neither = s
            .create(
                "f/",
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoPut, WatchFilterType::NoDelete]),
            )
            .await;
        assert_created(&neither);
        let barrier = add_barrier_watch(&mut s).await;

        let r1 = put(&mut c, "f/a", "1").await;
        let r2 = put(&mut c, "f/b", "1").await;
        let r3 = header_revision(
            c.delete("f/", Some(DeleteOptions::new().with_prefix()))
                .await
                .unwrap()
                .header(),
        );
        let r4 = put(&mut c, "f/a", "2").await;

        let seen = through_barrier(&mut c, &mut s, barrier).await;
        let events = |id: i64| -> Vec<Ev> {
            seen.get(&id)
                .map(|rs| rs.iter().flat_map(|r| r.events.clone()).collect())
                .unwrap_or_default()
        };
        let a1 = Kv::new("f/a", "1", r1, r1, 1);
        let b1 = Kv::new("f/b", "1", r2, r2, 1);
        assert_eq!(
            events(no_put),
            vec![
                Ev::delete("f/a", r3).with_prev(a1.clone()),
                Ev::delete("f/b", r3).with_prev(b1.clone())
            ]
        );
        assert_eq!(
            events(no_delete),
            vec![
                Ev::put(a1),
                Ev::put(b1),
                Ev::put(Kv::new("f/a", "2", r4, r4, 1))
            ]
        );
        assert!(
            !seen.contains_key(&neither.watch_id),
            "a watch filtering both types gets nothing: {:?}",
            seen.get(&neither.watch_id)
        );
    })
    .await;
}

#[tokio::test]
async fn txn_events_arrive_in_one_response_in_op_order_and_range_deletes_in_key_order() {
    for_both(|t| async move {
        let mut c = t.client;
        let (mut s, all) = Session::watch(&mut c, "t/", WatchOptions::new().with_prefix()).await;
        let sub = s.create("t/b", WatchOptions::new().with_range("t/y")).await;
        assert_created(&sub);
        let sub = sub.watch_id;
        let rx = put(&mut c, "t/x", "0").await;
        let ry = put(&mut c, "t/y", "0").await;
        events_by_watch(&mut s, &[(all, ry), (sub, rx)]).await;

        let txn = Txn::new().and_then([
            TxnOp::put("t/c", "1", None),
            TxnOp::put("t/a", "1", None),
            TxnOp::delete("t/x", None),
            TxnOp::put("t/b", "1", None),
            TxnOp::delete("t/y", None),
        ]);
        let rev = header_revision(c.txn(txn).await.unwrap().header());

        // Each watch gets the whole revision in a single response, in sub-revision (op) order.
        let mut responses: BTreeMap<i64, Resp> = BTreeMap::new();
        while responses.len() < 2 {
            let resp = s.recv().await;
            assert!(
                responses.insert(resp.watch_id, resp.clone()).is_none(),
                "a second response for watch {}: {resp:?}",
                resp.watch_id
            );
        }
        let c1 = |k: &str| Kv::new(k, "1", rev, rev, 1);
        assert_eq!(
            responses[&all].events,
            vec![
                Ev::put(c1("t/c")),
                Ev::put(c1("t/a")),
                Ev::delete("t/x", rev),
                Ev::put(c1("t/b")),
                Ev::delete("t/y", rev),
            ]
        );
        assert_eq!(
            responses[&sub].events,
            vec![
                Ev::put(c1("t/c")),
                Ev::delete("t/x", rev),
                Ev::put(c1("t/b"))
            ]
        );
        assert_eq!(responses[&all].revision(), rev);

        // A range delete removes its keys in key order, again in one response.
        let del = header_revision(
            c.delete("t/", Some(DeleteOptions::new().with_prefix()))
                .await
                .unwrap()
                .header(),
        );
        let resp = loop {
            let resp = s.recv().await;
            if resp.watch_id == all {
                break resp;
            }
        };
        assert_eq!(
            resp.events,
            vec![
                Ev::delete("t/a", del),
                Ev::delete("t/b", del),
                Ev::delete("t/c", del)
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_canceled_with_the_compact_revision() {
    for_both(|t| async move {
        let mut c = t.client;
        for v in ["1", "2", "3", "4"] {
            put(&mut c, "k", v).await; // revisions 2..=5
        }
        c.compact(4, None).await.unwrap();

        // First a normal create reply, then a separate cancel reply naming the compaction.
        let (mut s, created) = Session::open(
            &mut c,
            "k",
            WatchOptions::new().with_start_revision(2).with_prev_key(),
        )
        .await;
        assert_created(&created);
        assert_eq!(created.revision(), 5);
        let canceled = s.recv().await;
        assert_eq!(canceled.watch_id, created.watch_id);
        assert!(canceled.canceled && !canceled.created, "{canceled:?}");
        assert_eq!(canceled.compact_revision, 4);
        assert_eq!(canceled.cancel_reason, "", "etcd 3.4 gives no reason here");
        assert!(canceled.events.is_empty());
        // etcd 3.4 sends header.revision 0 in this reply; only its presence is pinned here.
        assert!(canceled.header_revision.is_some());

        // Starting exactly at the compaction revision is allowed. Its first event has no
        // prev_kv even though one was asked for: the revision before it is compacted away.
        let at = s
            .create(
                "k",
                WatchOptions::new().with_start_revision(4).with_prev_key(),
            )
            .await;
        assert_created(&at);
        let events = s.events_through(at.watch_id, 5).await;
        let v3 = Kv::new("k", "3", 2, 4, 3);
        assert_eq!(
            events,
            vec![
                Ev::put(v3.clone()),
                Ev::put(Kv::new("k", "4", 2, 5, 4)).with_prev(v3)
            ]
        );

        // A live watch is not affected by a later compaction.
        c.compact(5, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        let r = put(&mut c, "k", "5").await;
        assert_eq!(s.events_through(at.watch_id, r).await.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn progress_request_is_answered_with_watch_id_minus_one_at_the_current_revision() {
    // etcd 3.6+ answers only a stream with watchers (3.4 answered any stream).
    against(Flavor::Etcd37, |t| async move {
        let mut c = t.client;
        let (mut s, id) = Session::watch(&mut c, "k", WatchOptions::new()).await;
        put(&mut c, "k", "1").await;
        let rev = put(&mut c, "k", "2").await;
        s.events_through(id, rev).await;

        s.request_progress().await;
        let progress = s.recv().await;
        assert_eq!(progress.watch_id, -1, "{progress:?}");
        assert!(progress.is_progress(), "{progress:?}");
        assert_eq!(progress.cancel_reason, "");
        assert_eq!(progress.revision(), rev);

        // Writes the watch does not select still advance the promised revision.
        let other = put(&mut c, "other", "1").await;
        s.request_progress().await;
        let progress = s.recv().await;
        assert_eq!((progress.watch_id, progress.revision()), (-1, other));
        assert!(progress.is_progress());

        // A stream whose only watch was cancelled does not answer.
        s.cancel(id).await;
        assert!(s.recv().await.canceled);
        s.request_progress().await;
        let answer = s.recv_within(Duration::from_millis(500)).await;
        assert!(answer.is_none(), "{answer:?}");
    })
    .await;
}

#[tokio::test]
async fn progress_notify_sends_periodic_empty_responses_at_the_current_revision() {
    for_both_servers(progress_notify_interval("300ms"), |server| async move {
        let mut c = server.client().await;
        let mut expected_rev = put(&mut c, "unwatched", "1").await;
        // The silent watch is created first, so no notification can overtake a create reply.
        let (mut s, silent) = Session::watch(&mut c, "q", WatchOptions::new()).await;
        let notified = create_ok(&mut s, "p", WatchOptions::new().with_progress_notify()).await;

        let mut notifications = 0;
        let mut pending_write: Option<i64> = None;
        let deadline = Instant::now() + Duration::from_secs(15);
        while notifications < 4 || pending_write.is_some() {
            assert!(
                Instant::now() < deadline,
                "only {notifications} progress notifications"
            );
            let resp = s.recv().await;
            assert_ne!(
                resp.watch_id, silent,
                "a watch without progress_notify got {resp:?}"
            );
            assert_eq!(resp.watch_id, notified, "{resp:?}");
            if resp.events.is_empty() {
                // Never ahead of an undelivered event: until the write's event has arrived the
                // notification still carries the older revision.
                assert!(resp.is_progress(), "{resp:?}");
                assert_eq!(
                    resp.revision(),
                    expected_rev,
                    "notification at the current revision"
                );
                notifications += 1;
                if notifications == 2 {
                    pending_write = Some(put(&mut c, "p", "1").await);
                }
            } else {
                let written = pending_write.take().expect("an event nobody wrote");
                assert_eq!(resp.events.len(), 1);
                assert_eq!(resp.events[0].revision(), written);
                expected_rev = written;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn many_watches_multiplex_on_one_stream() {
    for_both(|t| async move {
        let mut c = t.client;
        let (mut s, prefix) = Session::watch(&mut c, "m/", WatchOptions::new().with_prefix()).await;
        assert_eq!(prefix, 0);
        let keys: Vec<String> = (0..64).map(|i| format!("m/{i:02}")).collect();
        let mut ids = Vec::new();
        for key in &keys {
            // Each create waits for its reply, as kube-apiserver does, so ids come in order.
            let reply = s.create(key.clone(), WatchOptions::new()).await;
            assert_created(&reply);
            ids.push(reply.watch_id);
        }
        assert_eq!(ids, (1..=64).collect::<Vec<i64>>());

        let mut revisions = Vec::new();
        for key in keys.iter().rev() {
            revisions.push(put(&mut c, key, "v").await);
        }
        revisions.reverse();
        let last = *revisions.iter().max().unwrap();
        let mut targets: Vec<(i64, i64)> = ids.iter().copied().zip(revisions.clone()).collect();
        targets.push((prefix, last));
        let got = events_by_watch(&mut s, &targets).await;
        for ((id, key), rev) in ids.iter().zip(&keys).zip(&revisions) {
            assert_eq!(
                got[id],
                vec![Ev::put(Kv::new(key, "v", *rev, *rev, 1))],
                "watch {id}"
            );
        }
        let mut expected_prefix: Vec<String> = keys.clone();
        expected_prefix.reverse();
        assert_eq!(keys_of(&got[&prefix]), expected_prefix);
    })
    .await;
}

#[tokio::test]
async fn compact_rev_key_is_watchable_through_kube_style_compactions() {
    for_both(|t| async move {
        let mut c = t.client;
        let (mut s, id) = Session::watch(
            &mut c,
            "compact_rev_key",
            WatchOptions::new().with_prev_key(),
        )
        .await;
        // kube-apiserver's compaction: set compact_rev_key if its version is what it last saw.
        let compaction = |version: i64, rev: i64| {
            Txn::new()
                .when([Compare::version(
                    "compact_rev_key",
                    CompareOp::Equal,
                    version,
                )])
                .and_then([TxnOp::put("compact_rev_key", rev.to_string(), None)])
                .or_else([TxnOp::get("compact_rev_key", None)])
        };
        put(&mut c, "obj", "1").await;
        let first = c.txn(compaction(0, 2)).await.unwrap();
        assert!(first.succeeded());
        let r1 = header_revision(first.header());
        c.compact(2, None).await.unwrap();
        let second = c.txn(compaction(1, r1)).await.unwrap();
        assert!(second.succeeded());
        let r2 = header_revision(second.header());
        c.compact(r1, None).await.unwrap();

        // A stale compactor loses and reads the current value from the failure branch.
        let stale = c.txn(compaction(1, 99)).await.unwrap();
        assert!(!stale.succeeded());
        match &stale.op_responses()[..] {
            [TxnOpResponse::Get(g)] => {
                assert_eq!(g.kvs()[0].version(), 2);
                assert_eq!(g.kvs()[0].value(), r1.to_string().as_bytes());
            }
            other => panic!("failure branch responses: {other:?}"),
        }

        let v1 = Kv::new("compact_rev_key", "2", r1, r1, 1);
        assert_eq!(
            s.events_through(id, r2).await,
            vec![
                Ev::put(v1.clone()),
                Ev::put(Kv::new("compact_rev_key", &r1.to_string(), r1, r2, 2)).with_prev(v1)
            ]
        );
        // Compactions do not disturb the live watch on the key.
        let get = c.get("compact_rev_key", None).await.unwrap();
        assert_eq!(get.kvs()[0].version(), 2);
    })
    .await;
}

#[tokio::test]
async fn fragment_splits_a_huge_revision_only_for_watches_that_ask() {
    for_both(|t| async move {
        let mut c = t.client;
        // etcd fragments when a response reaches max-request-bytes + 512 KiB (2 MiB by default):
        // five 750 kB values (with prev_kv on their deletes) become fragments of 2, 2 and 1.
        let value = "x".repeat(750_000);
        for i in 0..5 {
            put(&mut c, &format!("big/{i}"), &value).await;
        }
        let options = WatchOptions::new().with_prefix().with_prev_key();
        let (mut fragmented, fid) =
            Session::watch(&mut c, "big/", options.clone().with_fragment()).await;
        let (mut whole, wid) = Session::watch(&mut c, "big/", options).await;

        let del = header_revision(
            c.delete("big/", Some(DeleteOptions::new().with_prefix()))
                .await
                .unwrap()
                .header(),
        );

        let mut parts = Vec::new();
        loop {
            let resp = fragmented.recv().await;
            assert_eq!(resp.watch_id, fid);
            assert_eq!(resp.revision(), del);
            let more = resp.fragment;
            parts.push(resp);
            if !more {
                break;
            }
        }
        let shape: Vec<(usize, bool)> =
            parts.iter().map(|p| (p.events.len(), p.fragment)).collect();
        assert_eq!(shape, vec![(2, true), (2, true), (1, false)]);
        let keys: Vec<String> = parts.iter().flat_map(|p| keys_of(&p.events)).collect();
        assert_eq!(keys, ["big/0", "big/1", "big/2", "big/3", "big/4"]);
        assert!(parts
            .iter()
            .flat_map(|p| &p.events)
            .all(|e| e.kind == Kind::Delete
                && e.prev_kv.as_ref().map(|p| p.value.len()) == Some(750_000)));

        let one = whole.recv().await;
        assert_eq!(one.watch_id, wid);
        assert!(!one.fragment);
        assert_eq!(
            one.events.len(),
            5,
            "without fragment the revision comes whole"
        );

        // Small revisions are never fragmented, with or without the option.
        let r = put(&mut c, "big/small", "v").await;
        let small = fragmented.recv().await;
        assert_eq!((small.events.len(), small.fragment), (1, false));
        assert_eq!(small.events[0].revision(), r);
    })
    .await;
}

fn print_report(flavor: Flavor, report: &CheckerReport) {
    println!(
        "{flavor}: {} revisions, {} events, {} progress notifications, {} resumptions; \
         delivered per watch: {:?}",
        report.revisions,
        report.events,
        report.progress_notifications,
        report.resumptions,
        report.delivered
    );
}

fn checker_seed() -> u64 {
    std::env::var("OXCD_WATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// The central randomized test: concurrent writers (puts, deletes, range deletes, txns with
/// both branches writing) against live, historical, filtered, prev_kv, range, resuming and
/// multiplexed watchers; every guarantee is checked against the acknowledged history.
/// `OXCD_WATCH_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_uphold_every_watch_guarantee() {
    let seed = checker_seed();
    println!("watch checker seed {seed} (replay with OXCD_WATCH_SEED={seed})");
    for_both_servers(
        progress_notify_interval("200ms"),
        move |mut server| async move {
            let report =
                run_guarantee_check(&mut server, seed, 4, Duration::from_secs(3), false).await;
            print_report(server.flavor(), &report);
            assert!(
                report.revisions >= 100,
                "too few writes to mean anything: {}",
                report.revisions
            );
            assert!(report.resumptions > 0, "the resuming watches never resumed");
            assert!(
                report.progress_notifications > 0,
                "no progress notification was sent, so none could be checked"
            );
        },
    )
    .await;
}

/// The same checker with a SIGTERM and restart between two write phases: every watch resumes
/// from the revision after the last event it saw and must continue exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_resume_exactly_across_a_server_restart() {
    let seed = checker_seed();
    println!("watch restart checker seed {seed} (replay with OXCD_WATCH_SEED={seed})");
    for_both_servers(
        progress_notify_interval("200ms"),
        move |mut server| async move {
            let report =
                run_guarantee_check(&mut server, seed, 3, Duration::from_secs(2), true).await;
            print_report(server.flavor(), &report);
            assert!(
                report.revisions >= 50,
                "too few writes to mean anything: {}",
                report.revisions
            );
            // Every watch created before the restart had to resume at least once.
            assert!(
                report.resumptions >= 14,
                "only {} resumptions",
                report.resumptions
            );
        },
    )
    .await;
}

/// Watching still works after a restart for a watch created afterwards from an old revision:
/// the history survives on disk.
#[tokio::test]
async fn history_is_watchable_after_a_restart() {
    for_both_servers(StartOptions::default(), |mut server| async move {
        let mut c = server.client().await;
        let r1 = put(&mut c, "h", "1").await;
        let r2 = put(&mut c, "h", "2").await;
        server.terminate(Duration::from_secs(20)).expect("SIGTERM");
        server.restart().await;
        let mut c = server.client().await;
        assert_eq!(current_revision(&mut c).await, r2);
        let (mut s, created) = Session::open(
            &mut c,
            "h",
            WatchOptions::new().with_start_revision(r1).with_prev_key(),
        )
        .await;
        assert_created(&created);
        let v1 = Kv::new("h", "1", r1, r1, 1);
        assert_eq!(
            s.events_through(created.watch_id, r2).await,
            vec![
                Ev::put(v1.clone()),
                Ev::put(Kv::new("h", "2", r1, r2, 2)).with_prev(v1)
            ]
        );
        let get = c
            .get("h", Some(GetOptions::new().with_revision(r1)))
            .await
            .unwrap();
        assert_eq!(get.kvs()[0].value(), b"1");
    })
    .await;
}
