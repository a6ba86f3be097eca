//! Lease API behaviour, checked through the etcd-client crate. Every body runs against real etcd
//! first (`for_both` / `for_both_servers`), so each expectation is etcd 3.4's observed behaviour
//! on a single member with the default 100 ms heartbeat and 1 s election timeout.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Error, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions,
};
use oxcd_tests::watch_checker::{
    current_revision, for_both_servers, header_revision, poll_until, Ev, Kv, Session,
};
use oxcd_tests::{expect_grpc_error, for_both, StartOptions};

const NOT_FOUND: (&str, &str) = ("NotFound", "etcdserver: requested lease not found");
const EXISTS: (&str, &str) = ("FailedPrecondition", "etcdserver: lease already exists");
const TOO_LARGE: (&str, &str) = ("OutOfRange", "etcdserver: too large lease TTL");
/// etcd's `MaxLeaseTTL`.
const MAX_TTL: i64 = 9_000_000_000;
/// etcd's minimum TTL: ceil(1.5 × election timeout) = 2 s with the default 1 s election timeout.
const MIN_TTL: i64 = 2;

fn pair(expected: (&str, &str)) -> (String, String) {
    (expected.0.to_string(), expected.1.to_string())
}

async fn grant(c: &mut Client, ttl: i64) -> i64 {
    c.lease_grant(ttl, None).await.expect("lease grant").id()
}

async fn put_with_lease(c: &mut Client, key: &str, value: &str, lease: i64) -> i64 {
    header_revision(
        c.put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap_or_else(|e| panic!("put {key} with lease {lease:x}: {e}"))
            .header(),
    )
}

async fn lease_of(c: &mut Client, key: &str) -> i64 {
    c.get(key, None).await.unwrap().kvs()[0].lease()
}

async fn lease_keys(c: &mut Client, lease: i64) -> BTreeSet<String> {
    c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live")
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

async fn lease_ids(c: &mut Client) -> BTreeSet<i64> {
    c.leases()
        .await
        .expect("lease list")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect()
}

fn set<const N: usize>(keys: [&str; N]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

#[tokio::test]
async fn grant_with_a_server_chosen_or_a_client_chosen_id() {
    for_both(|t| async move {
        let mut c = t.client;
        let before = current_revision(&mut c).await;
        let first = c.lease_grant(60, None).await.unwrap();
        let second = c.lease_grant(30, None).await.unwrap();
        assert!(
            first.id() > 0 && second.id() > 0,
            "server-chosen ids are positive"
        );
        assert_ne!(first.id(), second.id());
        assert_eq!((first.ttl(), second.ttl()), (60, 30));
        assert_eq!(first.error(), "");
        assert_eq!(
            header_revision(first.header()),
            before,
            "granting a lease does not bump the revision"
        );

        let chosen = c
            .lease_grant(10, Some(LeaseGrantOptions::new().with_id(42)))
            .await
            .unwrap();
        assert_eq!((chosen.id(), chosen.ttl()), (42, 10));

        assert_eq!(
            lease_ids(&mut c).await,
            BTreeSet::from([first.id(), second.id(), 42])
        );
        assert_eq!(current_revision(&mut c).await, before);
    })
    .await;
}

#[tokio::test]
async fn granting_an_existing_id_fails_with_lease_already_exists() {
    for_both(|t| async move {
        let mut c = t.client;
        let id = grant(&mut c, 30).await;
        let again = c
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(id)))
            .await;
        assert_eq!(expect_grpc_error(again, "regrant"), pair(EXISTS));
        c.lease_grant(5, Some(LeaseGrantOptions::new().with_id(7)))
            .await
            .unwrap();
        let again = c
            .lease_grant(5, Some(LeaseGrantOptions::new().with_id(7)))
            .await;
        assert_eq!(expect_grpc_error(again, "regrant 7"), pair(EXISTS));
        // The failed grant left the original lease alone.
        let ttl = c.lease_time_to_live(7, None).await.unwrap();
        assert_eq!(ttl.granted_ttl(), 5);
    })
    .await;
}

#[tokio::test]
async fn ttl_is_capped_at_the_maximum_and_raised_to_the_minimum() {
    for_both(|t| async move {
        let mut c = t.client;
        let max = c.lease_grant(MAX_TTL, None).await.unwrap();
        assert_eq!(max.ttl(), MAX_TTL);
        let over = c.lease_grant(MAX_TTL + 1, None).await;
        assert_eq!(expect_grpc_error(over, "TTL over the max"), pair(TOO_LARGE));
        // Too-short TTLs (even 0 and negative ones) are silently raised to the minimum.
        for ttl in [1, 0, -3] {
            let granted = c.lease_grant(ttl, None).await.unwrap();
            assert_eq!(granted.ttl(), MIN_TTL, "granted TTL for a request of {ttl}");
            let live = c.lease_time_to_live(granted.id(), None).await.unwrap();
            assert_eq!(live.granted_ttl(), MIN_TTL);
        }
        let three = c.lease_grant(3, None).await.unwrap();
        assert_eq!(three.ttl(), 3, "TTLs above the minimum are kept");
    })
    .await;
}

#[tokio::test]
async fn revoke_deletes_every_attached_key_in_one_revision() {
    for_both(|t| async move {
        let mut c = t.client;
        let lease = grant(&mut c, 60).await;
        let ra = put_with_lease(&mut c, "r/a", "1", lease).await;
        let rc = put_with_lease(&mut c, "r/c", "1", lease).await;
        let rb = put_with_lease(&mut c, "r/b", "1", lease).await;
        c.put("r/unleased", "1", None).await.unwrap();
        let (mut s, id) = Session::watch(
            &mut c,
            "r/",
            WatchOptions::new().with_prefix().with_prev_key(),
        )
        .await;

        let revoke = c.lease_revoke(lease).await.unwrap();
        let rev = header_revision(revoke.header());
        assert_eq!(rev, rb + 2, "one new revision for all the deletes");
        // One response, the keys deleted in key order (etcd sorts them), all at one revision.
        let resp = s.recv().await;
        assert_eq!(resp.watch_id, id);
        let leased = |k: &str, r: i64| Kv::new(k, "1", r, r, 1).with_lease(lease);
        assert_eq!(
            resp.events,
            vec![
                Ev::delete("r/a", rev).with_prev(leased("r/a", ra)),
                Ev::delete("r/b", rev).with_prev(leased("r/b", rb)),
                Ev::delete("r/c", rev).with_prev(leased("r/c", rc)),
            ]
        );
        let left = c
            .get("r/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(left.kvs().len(), 1);
        assert_eq!(left.kvs()[0].key(), b"r/unleased");

        assert!(!lease_ids(&mut c).await.contains(&lease));
        let gone = c.lease_time_to_live(lease, None).await.unwrap();
        assert_eq!(gone.ttl(), -1);
        let again = c.lease_revoke(lease).await;
        assert_eq!(expect_grpc_error(again, "second revoke"), pair(NOT_FOUND));

        // Revoking a lease without keys changes no revision.
        let empty = grant(&mut c, 60).await;
        let before = current_revision(&mut c).await;
        let revoke = c.lease_revoke(empty).await.unwrap();
        assert_eq!(header_revision(revoke.header()), before);
    })
    .await;
}

#[tokio::test]
async fn revoke_and_put_with_an_unknown_lease_are_not_found() {
    for_both(|t| async move {
        let mut c = t.client;
        let revoke = c.lease_revoke(0x5eed).await;
        assert_eq!(expect_grpc_error(revoke, "revoke unknown"), pair(NOT_FOUND));
        let put = c
            .put("k", "v", Some(PutOptions::new().with_lease(0x5eed)))
            .await;
        assert_eq!(expect_grpc_error(put, "put with unknown"), pair(NOT_FOUND));
        assert!(c.get("k", None).await.unwrap().kvs().is_empty());
    })
    .await;
}

#[tokio::test]
async fn put_attaches_moves_keeps_and_detaches_leases() {
    for_both(|t| async move {
        let mut c = t.client;
        let l1 = grant(&mut c, 60).await;
        let l2 = grant(&mut c, 60).await;

        put_with_lease(&mut c, "k", "1", l1).await;
        assert_eq!(lease_of(&mut c, "k").await, l1);
        assert_eq!(lease_keys(&mut c, l1).await, set(["k"]));

        // A put with another lease moves the key.
        put_with_lease(&mut c, "k", "2", l2).await;
        assert_eq!(lease_of(&mut c, "k").await, l2);
        assert!(lease_keys(&mut c, l1).await.is_empty());
        assert_eq!(lease_keys(&mut c, l2).await, set(["k"]));

        // ignore_lease keeps the attachment while changing the value.
        c.put("k", "3", Some(PutOptions::new().with_ignore_lease()))
            .await
            .unwrap();
        let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
        assert_eq!((kv.value(), kv.lease()), (&b"3"[..], l2));
        assert_eq!(lease_keys(&mut c, l2).await, set(["k"]));

        // A plain put (lease 0) detaches it: revoking the old lease leaves the key alone.
        c.put("k", "4", None).await.unwrap();
        assert_eq!(lease_of(&mut c, "k").await, 0);
        assert!(lease_keys(&mut c, l2).await.is_empty());
        c.lease_revoke(l2).await.unwrap();
        c.lease_revoke(l1).await.unwrap();
        assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"4");
    })
    .await;
}

#[tokio::test]
async fn time_to_live_reports_remaining_and_granted_ttl_and_keys() {
    for_both(|t| async move {
        let mut c = t.client;
        let lease = grant(&mut c, 60).await;
        put_with_lease(&mut c, "t/2", "v", lease).await;
        put_with_lease(&mut c, "t/1", "v", lease).await;
        let rev = current_revision(&mut c).await;

        let with_keys = c
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(with_keys.id(), lease);
        assert_eq!(with_keys.granted_ttl(), 60);
        // Remaining seconds, truncated: just granted, so 59 or 60.
        assert!(
            (58..=60).contains(&with_keys.ttl()),
            "ttl {}",
            with_keys.ttl()
        );
        let keys: BTreeSet<Vec<u8>> = with_keys.keys().iter().cloned().collect();
        assert_eq!(keys, BTreeSet::from([b"t/1".to_vec(), b"t/2".to_vec()]));
        assert_eq!(header_revision(with_keys.header()), rev);

        let without = c.lease_time_to_live(lease, None).await.unwrap();
        assert!(without.keys().is_empty(), "keys only with with_keys");
        assert_eq!(without.granted_ttl(), 60);

        // An unknown lease is no error: TTL -1, granted 0, no keys, the asked id echoed.
        let unknown = c
            .lease_time_to_live(0xdead, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("TimeToLive of an unknown lease succeeds");
        assert_eq!(
            (unknown.id(), unknown.ttl(), unknown.granted_ttl()),
            (0xdead, -1, 0)
        );
        assert!(unknown.keys().is_empty());
        assert_eq!(header_revision(unknown.header()), rev);
    })
    .await;
}

#[tokio::test]
async fn leases_lists_every_live_lease() {
    for_both(|t| async move {
        let mut c = t.client;
        assert!(lease_ids(&mut c).await.is_empty());
        let a = grant(&mut c, 60).await;
        let b = grant(&mut c, 120).await;
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(1000)))
            .await
            .unwrap();
        assert_eq!(lease_ids(&mut c).await, BTreeSet::from([a, b, 1000]));
        c.lease_revoke(a).await.unwrap();
        assert_eq!(lease_ids(&mut c).await, BTreeSet::from([b, 1000]));
        let list = c.leases().await.unwrap();
        assert_eq!(
            header_revision(list.header()),
            current_revision(&mut c).await
        );
    })
    .await;
}

#[tokio::test]
async fn keep_alive_answers_with_the_granted_ttl_and_zero_for_a_missing_lease() {
    for_both(|t| async move {
        let mut c = t.client;
        let lease = grant(&mut c, 20).await;
        // The client sends the first keep-alive itself and checks that its TTL is positive.
        let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.unwrap();
        assert_eq!(keeper.id(), lease);
        keeper.keep_alive().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("keep-alive answer within 5 s")
            .unwrap()
            .expect("a keep-alive response");
        assert_eq!((resp.id(), resp.ttl()), (lease, 20));
        assert_eq!(
            header_revision(resp.header()),
            current_revision(&mut c).await
        );

        // After a revoke, the same stream answers TTL 0 (not an error).
        c.lease_revoke(lease).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("keep-alive answer within 5 s")
            .unwrap()
            .expect("a keep-alive response");
        assert_eq!((resp.id(), resp.ttl()), (lease, 0));

        // A keep-alive for a lease that never existed also gets TTL 0, which the client turns
        // into its own "lease not found" error (a gRPC error would surface as GRpcStatus).
        match c.lease_keep_alive(0xbad).await {
            Err(Error::LeaseKeepAliveError(msg)) => assert_eq!(msg, "lease not found"),
            other => panic!("keep-alive of an unknown lease: {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn an_expired_lease_deletes_its_keys_in_one_revision() {
    for_both(|t| async move {
        let mut c = t.client;
        let granted = Instant::now();
        let lease = grant(&mut c, 2).await;
        let r1 = put_with_lease(&mut c, "e/1", "v", lease).await;
        let r2 = put_with_lease(&mut c, "e/2", "v", lease).await;
        let (mut s, id) = Session::watch(
            &mut c,
            "e/",
            WatchOptions::new().with_prefix().with_prev_key(),
        )
        .await;

        let resp = s.recv().await; // bounded by WATCH_WAIT (10 s)
        let elapsed = granted.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1500),
            "a 2 s lease expired after only {elapsed:?}"
        );
        assert_eq!(resp.watch_id, id);
        let rev = r2 + 1;
        assert_eq!(
            resp.events,
            vec![
                Ev::delete("e/1", rev).with_prev(Kv::new("e/1", "v", r1, r1, 1).with_lease(lease)),
                Ev::delete("e/2", rev).with_prev(Kv::new("e/2", "v", r2, r2, 1).with_lease(lease)),
            ]
        );
        assert_eq!(current_revision(&mut c).await, rev);
        let gone = c.lease_time_to_live(lease, None).await.unwrap();
        assert_eq!(gone.ttl(), -1);
        assert!(!lease_ids(&mut c).await.contains(&lease));
        let put = c
            .put("e/3", "v", Some(PutOptions::new().with_lease(lease)))
            .await;
        assert_eq!(expect_grpc_error(put, "put on expired"), pair(NOT_FOUND));
    })
    .await;
}

#[tokio::test]
async fn keep_alive_holds_a_lease_past_its_ttl() {
    for_both(|t| async move {
        let mut c = t.client;
        let lease = grant(&mut c, 2).await;
        put_with_lease(&mut c, "ka", "v", lease).await;
        let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.unwrap();
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            keeper.keep_alive().await.unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("keep-alive answer")
                .unwrap()
                .expect("keep-alive response");
            assert_eq!(resp.ttl(), 2);
        }
        // Twice the TTL later the key is still there.
        assert_eq!(c.get("ka", None).await.unwrap().kvs().len(), 1);
        let ttl = c.lease_time_to_live(lease, None).await.unwrap().ttl();
        assert!(ttl >= 1, "remaining ttl {ttl}");

        // Once the keep-alives stop, it expires.
        drop(keeper);
        poll_until(Duration::from_secs(8), "the lease to expire", || {
            let mut probe = c.clone();
            async move { probe.get("ka", None).await.unwrap().kvs().is_empty() }
        })
        .await;
    })
    .await;
}

/// etcd 3.4 does not persist remaining TTLs (lease checkpointing is off by default): when a
/// member becomes leader it refreshes every lease to its full TTL (plus the election timeout).
/// A restart therefore never shortens a lease, and its keys survive.
#[tokio::test]
async fn leases_survive_a_restart_refreshed_to_their_full_ttl() {
    for_both_servers(StartOptions::default(), |mut server| async move {
        let mut c = server.client().await;
        let long = c
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(50)))
            .await
            .unwrap()
            .id();
        let short = grant(&mut c, 4).await;
        put_with_lease(&mut c, "keep/a", "1", long).await;
        put_with_lease(&mut c, "keep/b", "1", long).await;
        put_with_lease(&mut c, "short", "1", short).await;
        let rev = current_revision(&mut c).await;

        // Let the long lease visibly run down first.
        poll_until(
            Duration::from_secs(10),
            "the 30 s lease to drop to 27 s",
            || {
                let mut probe = c.clone();
                async move { probe.lease_time_to_live(50, None).await.unwrap().ttl() <= 27 }
            },
        )
        .await;

        server.terminate(Duration::from_secs(20)).expect("SIGTERM");
        server.restart().await;
        let mut c = server.client().await;

        let after = c
            .lease_time_to_live(long, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(after.granted_ttl(), 30);
        assert!(
            (29..=31).contains(&after.ttl()),
            "after a restart the lease is refreshed to its full TTL, got {}",
            after.ttl()
        );
        let keys: BTreeSet<Vec<u8>> = after.keys().iter().cloned().collect();
        assert_eq!(
            keys,
            BTreeSet::from([b"keep/a".to_vec(), b"keep/b".to_vec()])
        );
        assert_eq!(lease_ids(&mut c).await, BTreeSet::from([long, short]));
        assert_eq!(current_revision(&mut c).await, rev);

        // Leases keep expiring after the restart: the 4 s one goes, taking only its key.
        poll_until(Duration::from_secs(12), "the short lease to expire", || {
            let mut probe = c.clone();
            async move { probe.get("short", None).await.unwrap().kvs().is_empty() }
        })
        .await;
        assert_eq!(
            c.get("keep/", Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .unwrap()
                .kvs()
                .len(),
            2
        );
        assert_eq!(current_revision(&mut c).await, rev + 1);
    })
    .await;
}

/// A keep-alive that reaches the leader after its lease's deadline has passed (here the server
/// was frozen past the TTL with the keep-alive in its socket) must not promise the lease a new
/// TTL: its expiry is already decided. etcd's lessor makes such a renewal wait for the revoke
/// and answers TTL 0; a positive TTL would be a promise the revoke that follows breaks.
#[tokio::test]
async fn a_keep_alive_arriving_after_the_deadline_waits_for_the_revoke() {
    for_both_servers(StartOptions::default(), |server| async move {
        let mut c = server.client().await;
        let lease = grant(&mut c, MIN_TTL).await;
        put_with_lease(&mut c, "frozen/k", "v", lease).await;
        let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.unwrap();
        let pid = server.pid().expect("server runs");
        oxcd_tests::send_signal(pid, "STOP").expect("SIGSTOP the server");
        keeper.keep_alive().await.unwrap();
        tokio::time::sleep(Duration::from_secs(MIN_TTL as u64 + 1)).await;
        oxcd_tests::send_signal(pid, "CONT").expect("SIGCONT the server");
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("keep-alive answer within 10 s")
            .unwrap()
            .expect("a keep-alive response");
        assert_eq!(
            (resp.id(), resp.ttl()),
            (lease, 0),
            "no TTL is promised to an expired lease"
        );
        assert!(c.get("frozen/k", None).await.unwrap().kvs().is_empty());
    })
    .await;
}
