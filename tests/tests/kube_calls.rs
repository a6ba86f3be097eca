//! kube-apiserver's exact call shapes (staging/src/k8s.io/apiserver/pkg/storage/etcd3), replayed
//! against etcd first and then oxcd through `for_both`. Each test follows one code path of the
//! apiserver and asserts what that code path reads from the response.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, GetResponse, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchOptions,
};
use oxcd_tests::watch_checker::{
    assert_created, current_revision, header_revision, Ev, Kind, Kv, Session,
};
use oxcd_tests::{expect_grpc_error, for_both};

const COMPACTED: (&str, &str) = (
    "OutOfRange",
    "etcdserver: mvcc: required revision has been compacted",
);

/// Kubernetes-style protobuf value: the `k8s\0` magic followed by opaque bytes.
fn object(name: &str, generation: u32) -> Vec<u8> {
    let mut value = b"k8s\x00".to_vec();
    value.extend_from_slice(format!("\n\x02v1\x12\x03Pod{name}#{generation}").as_bytes());
    value
}

/// The range end kube-apiserver uses for a prefix: last byte + 1.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    end
}

fn keys(resp: &GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// store.Create: Txn(MOD(key) == 0, [Put(key, value, lease)], []).
async fn create(c: &mut Client, key: &str, value: Vec<u8>, lease: i64) -> TxnResponse {
    let put = if lease == 0 {
        TxnOp::put(key, value, None)
    } else {
        TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))
    };
    c.txn(
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([put]),
    )
    .await
    .expect("create txn")
}

/// store.GuaranteedUpdate: Txn(MOD(key) == rev, [Put], [Range(key)]).
async fn update(c: &mut Client, key: &str, rev: i64, value: Vec<u8>) -> TxnResponse {
    c.txn(
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]),
    )
    .await
    .expect("update txn")
}

/// store.Delete: Txn(MOD(key) == rev, [DeleteRange(key)], [Range(key)]).
async fn delete(c: &mut Client, key: &str, rev: i64) -> TxnResponse {
    c.txn(
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]),
    )
    .await
    .expect("delete txn")
}

/// compact.go: Txn(VERSION("compact_rev_key") == version, [Put(rev)], [Range]).
async fn compaction_txn(c: &mut Client, version: i64, rev: i64) -> TxnResponse {
    c.txn(
        Txn::new()
            .when([Compare::version(
                "compact_rev_key",
                CompareOp::Equal,
                version,
            )])
            .and_then([TxnOp::put("compact_rev_key", rev.to_string(), None)])
            .or_else([TxnOp::get("compact_rev_key", None)]),
    )
    .await
    .expect("compaction txn")
}

/// The single Range a failed update/delete txn returns in its failure branch.
fn failure_range(resp: &TxnResponse) -> GetResponse {
    match &resp.op_responses()[..] {
        [TxnOpResponse::Get(get)] => get.clone(),
        other => panic!("expected one Range response, got {other:?}"),
    }
}

/// Older apiservers read the per-op header (ResponsePut.header.revision): it must be filled
/// and equal the txn's revision.
fn put_op_revision(resp: &TxnResponse) -> i64 {
    match &resp.op_responses()[..] {
        [TxnOpResponse::Put(put)] => header_revision(put.header()),
        other => panic!("expected one Put response, got {other:?}"),
    }
}

#[tokio::test]
async fn paginated_list_pins_the_revision_and_count_drives_has_more() {
    for_both(|t| async move {
        let mut c = t.client;
        let prefix = "/registry/pods/";
        for i in 0..25 {
            let key = format!("{prefix}default/pod-{i:02}");
            assert!(create(&mut c, &key, object(&key, 0), 0).await.succeeded());
        }
        c.put("/registry/pods0-outside", "x", None).await.unwrap();
        c.put("/registry/podsecuritypolicy/p", "x", None)
            .await
            .unwrap();
        let end = prefix_end(prefix);

        // First page: revision 0 (latest), limit 10.
        let page = |key: Vec<u8>, revision: i64| {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(10);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            (key, options)
        };
        let (key, options) = page(prefix.as_bytes().to_vec(), 0);
        let first = c.get(key, Some(options)).await.unwrap();
        let pinned = header_revision(first.header());
        assert_eq!(first.kvs().len(), 10);
        assert_eq!(first.count(), 25);
        assert!(first.more());
        assert!(
            (first.kvs().len() as i64) < first.count(),
            "kube's has-more test"
        );

        // Writes between pages must not show up in later pages: they read at the pinned
        // revision. The header still reports the latest revision.
        let updated_key = format!("{prefix}default/pod-15");
        let rev15 = first_mod_revision(&mut c, &updated_key).await;
        assert!(update(&mut c, &updated_key, rev15, object("changed", 1))
            .await
            .succeeded());
        assert!(create(
            &mut c,
            &format!("{prefix}default/pod-99"),
            object("late", 0),
            0
        )
        .await
        .succeeded());
        let latest = current_revision(&mut c).await;

        let mut all = keys(&first);
        let mut last_key = first.kvs().last().unwrap().key().to_vec();
        let mut counts = vec![first.count()];
        loop {
            // Continue key: lastKey + "\0".
            let mut next = last_key.clone();
            next.push(0);
            let (key, options) = page(next, pinned);
            let resp = c.get(key, Some(options)).await.unwrap();
            assert_eq!(
                header_revision(resp.header()),
                latest,
                "header.revision is the latest revision, never the requested one"
            );
            counts.push(resp.count());
            all.extend(keys(&resp));
            for kv in resp.kvs() {
                if kv.key() == updated_key.as_bytes() {
                    assert_eq!(
                        kv.value(),
                        object(&updated_key, 0),
                        "page read a newer version"
                    );
                }
            }
            let has_more = (resp.kvs().len() as i64) < resp.count();
            assert_eq!(has_more, resp.more());
            if !has_more {
                break;
            }
            last_key = resp.kvs().last().unwrap().key().to_vec();
        }
        // count is the number of keys from the continue key to the range end, ignoring limit.
        assert_eq!(counts, vec![25, 15, 5]);
        let expected: Vec<String> = (0..25)
            .map(|i| format!("{prefix}default/pod-{i:02}"))
            .collect();
        assert_eq!(all, expected);

        // The next list (the watch cache's relist) at latest sees both writes.
        let relist = c
            .get(prefix, Some(GetOptions::new().with_range(end.clone())))
            .await
            .unwrap();
        assert_eq!(relist.count(), 26);
    })
    .await;
}

async fn first_mod_revision(c: &mut Client, key: &str) -> i64 {
    c.get(key, Some(GetOptions::new().with_limit(1)))
        .await
        .unwrap()
        .kvs()[0]
        .mod_revision()
}

#[tokio::test]
async fn get_with_limit_one_count_only_keys_only_and_the_health_key() {
    for_both(|t| async move {
        let mut c = t.client;
        for name in ["pod-1", "pod-10", "pod-2"] {
            let key = format!("/registry/pods/default/{name}");
            create(&mut c, &key, object(name, 0), 0).await;
        }
        let rev = current_revision(&mut c).await;

        // Get: Range(key, limit=1). Exact match only, never a prefix match.
        let get = c
            .get(
                "/registry/pods/default/pod-1",
                Some(GetOptions::new().with_limit(1)),
            )
            .await
            .unwrap();
        assert_eq!(keys(&get), ["/registry/pods/default/pod-1"]);
        assert_eq!(get.count(), 1);
        assert!(!get.more());
        let missing = c
            .get(
                "/registry/pods/default/pod",
                Some(GetOptions::new().with_limit(1)),
            )
            .await
            .unwrap();
        assert!(missing.kvs().is_empty());
        assert_eq!(missing.count(), 0);
        assert_eq!(header_revision(missing.header()), rev);

        // Get at an explicit revision.
        let at = c
            .get(
                "/registry/pods/default/pod-1",
                Some(GetOptions::new().with_limit(1).with_revision(rev - 2)),
            )
            .await
            .unwrap();
        assert_eq!(at.kvs()[0].mod_revision(), rev - 2);

        // Count: Range(prefix, count_only).
        let prefix = "/registry/pods/";
        let count = c
            .get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(prefix))
                        .with_count_only(),
                ),
            )
            .await
            .unwrap();
        assert_eq!(count.count(), 3);
        assert!(count.kvs().is_empty());

        // Size estimate: Range(prefix, keys_only).
        let keys_only = c
            .get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(prefix))
                        .with_keys_only(),
                ),
            )
            .await
            .unwrap();
        assert_eq!(keys_only.kvs().len(), 3);
        assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));

        // Health: any answer without error is healthy, even for a missing key.
        let health = c.get("/registry/health", None).await.unwrap();
        assert!(health.kvs().is_empty());
        assert_eq!(header_revision(health.header()), rev);
    })
    .await;
}

#[tokio::test]
async fn create_update_and_delete_txns_follow_the_apiserver_shapes() {
    for_both(|t| async move {
        let mut c = t.client;
        let key = "/registry/configmaps/default/cm";

        // Create succeeds once; its revision becomes the resourceVersion.
        let created = create(&mut c, key, object("cm", 0), 0).await;
        assert!(created.succeeded());
        let rv = header_revision(created.header());
        assert_eq!(put_op_revision(&created), rv);
        // A second create fails with an empty failure branch.
        let again = create(&mut c, key, object("cm", 9), 0).await;
        assert!(!again.succeeded());
        assert!(again.op_responses().is_empty());
        assert_eq!(
            header_revision(again.header()),
            rv,
            "a failed txn does not bump it"
        );

        // GuaranteedUpdate with the right revision.
        let updated = update(&mut c, key, rv, object("cm", 1)).await;
        assert!(updated.succeeded());
        let rv2 = header_revision(updated.header());
        assert_eq!(rv2, rv + 1);
        assert_eq!(put_op_revision(&updated), rv2);

        // A stale update fails and returns the current object from the failure Range.
        let stale = update(&mut c, key, rv, object("cm", 2)).await;
        assert!(!stale.succeeded());
        let current = failure_range(&stale);
        assert_eq!(current.kvs().len(), 1);
        assert_eq!(current.kvs()[0].mod_revision(), rv2);
        assert_eq!(current.kvs()[0].value(), object("cm", 1));
        assert_eq!(
            header_revision(current.header()),
            rv2,
            "per-op headers are filled"
        );

        // GuaranteedUpdate with rev 0 on a missing key acts as a create.
        let other = "/registry/configmaps/default/other";
        let upsert = update(&mut c, other, 0, object("other", 0)).await;
        assert!(upsert.succeeded());
        // ...and with rev 0 on an existing key fails with the current object.
        let failed = update(&mut c, other, 0, object("other", 1)).await;
        assert!(!failed.succeeded());
        assert_eq!(failure_range(&failed).kvs()[0].value(), object("other", 0));

        // Delete: stale revision fails with the object; the right revision deletes it.
        let stale_delete = delete(&mut c, key, rv).await;
        assert!(!stale_delete.succeeded());
        assert_eq!(failure_range(&stale_delete).kvs()[0].mod_revision(), rv2);
        let deleted = delete(&mut c, key, rv2).await;
        assert!(deleted.succeeded());
        match &deleted.op_responses()[..] {
            [TxnOpResponse::Delete(d)] => {
                assert_eq!(d.deleted(), 1);
                assert_eq!(
                    header_revision(d.header()),
                    header_revision(deleted.header())
                );
            }
            other => panic!("delete txn responses: {other:?}"),
        }
        // Deleting again: MOD == rv2 no longer holds, failure Range is empty.
        let gone = delete(&mut c, key, rv2).await;
        assert!(!gone.succeeded());
        assert!(failure_range(&gone).kvs().is_empty());
    })
    .await;
}

#[tokio::test]
async fn compaction_txn_then_compact_makes_older_lists_and_watches_fail() {
    for_both(|t| async move {
        let mut c = t.client;
        let key = "/registry/events/default/e1";
        create(&mut c, key, object("e1", 0), 0).await;
        let old = current_revision(&mut c).await;
        let rev = header_revision(update(&mut c, key, old, object("e1", 1)).await.header());

        // First compactor run: compact_rev_key does not exist (version 0).
        let first = compaction_txn(&mut c, 0, rev).await;
        assert!(first.succeeded());
        c.compact(rev, None)
            .await
            .expect("compact at the recorded revision");

        // A second apiserver with a stale view of the version loses and learns the current one.
        let stale = compaction_txn(&mut c, 0, rev).await;
        assert!(!stale.succeeded());
        let current = failure_range(&stale);
        assert_eq!(current.kvs()[0].version(), 1);
        assert_eq!(current.kvs()[0].value(), rev.to_string().as_bytes());

        // Lists and gets below the compaction fail with the error the apiserver maps to 410.
        let list = c
            .get(
                "/registry/events/",
                Some(
                    GetOptions::new()
                        .with_range(prefix_end("/registry/events/"))
                        .with_limit(500)
                        .with_revision(old),
                ),
            )
            .await;
        let (code, msg) = expect_grpc_error(list, "list below the compaction");
        assert_eq!((code.as_str(), msg.as_str()), COMPACTED);
        let at = c
            .get(key, Some(GetOptions::new().with_revision(rev)))
            .await
            .unwrap();
        assert_eq!(
            at.kvs()[0].value(),
            object("e1", 1),
            "the compaction revision is readable"
        );

        // A watch from below the compaction is canceled with compact_revision set.
        let (mut s, created) = Session::open(
            &mut c,
            "/registry/events/",
            WatchOptions::new()
                .with_range(prefix_end("/registry/events/"))
                .with_start_revision(old)
                .with_prev_key()
                .with_progress_notify(),
        )
        .await;
        assert_created(&created);
        let canceled = s.recv().await;
        assert!(canceled.canceled, "{canceled:?}");
        assert_eq!(canceled.compact_revision, rev);
    })
    .await;
}

#[tokio::test]
async fn watch_like_the_apiserver_with_prev_kv_progress_notify_and_progress_requests() {
    for_both(|t| async move {
        let mut c = t.client;
        let pods = "/registry/pods/";
        let nodes = "/registry/minions/";
        let seed = create(&mut c, "/registry/pods/default/a", object("a", 0), 0).await;
        let rv = header_revision(seed.header());

        // Each watch: start_revision = RV + 1, range_end = prefix end, prev_kv, progress_notify,
        // watch_id 0 (server-assigned); the next one only after the previous created reply.
        let options = |prefix: &str| {
            WatchOptions::new()
                .with_range(prefix_end(prefix))
                .with_start_revision(rv + 1)
                .with_prev_key()
                .with_progress_notify()
        };
        let (mut s, first) = Session::open(&mut c, pods, options(pods)).await;
        assert_created(&first);
        let second = s.create(nodes, options(nodes)).await;
        assert_created(&second);
        assert_eq!((first.watch_id, second.watch_id), (0, 1));

        let a0 = Kv::new("/registry/pods/default/a", "", rv, rv, 1);
        let a0 = Kv {
            value: object("a", 0),
            ..a0
        };
        let r1 = header_revision(
            update(&mut c, "/registry/pods/default/a", rv, object("a", 1))
                .await
                .header(),
        );
        let r2 = header_revision(
            create(&mut c, "/registry/minions/n1", object("n1", 0), 0)
                .await
                .header(),
        );
        let r3 = header_revision(
            delete(&mut c, "/registry/pods/default/a", r1)
                .await
                .header(),
        );

        let pod_events = s.events_through(0, r1).await;
        let mut node_events = Vec::new();
        let mut more_pod_events = Vec::new();
        while node_events.is_empty() || more_pod_events.is_empty() {
            let resp = s.recv().await;
            match resp.watch_id {
                0 => more_pod_events.extend(resp.events),
                1 => node_events.extend(resp.events),
                _ => panic!("{resp:?}"),
            }
        }
        let a1 = Kv {
            value: object("a", 1),
            ..Kv::new("/registry/pods/default/a", "", rv, r1, 2)
        };
        // Updates and deletes carry prev_kv (the apiserver fails on "PrevKv=nil"); creates not.
        assert_eq!(pod_events, vec![Ev::put(a1.clone()).with_prev(a0)]);
        assert_eq!(
            more_pod_events,
            vec![Ev::delete("/registry/pods/default/a", r3).with_prev(a1)]
        );
        assert_eq!(node_events.len(), 1);
        assert_eq!(node_events[0].kind, Kind::Put);
        assert_eq!(node_events[0].prev_kv, None);
        assert_eq!(node_events[0].revision(), r2);

        // Consistent reads: a progress request, answered with watch_id -1 at the latest
        // revision now that every event up to it was delivered.
        s.request_progress().await;
        let progress = tokio::time::timeout(Duration::from_secs(5), s.recv())
            .await
            .expect("progress answer within 5 s");
        assert_eq!(progress.watch_id, -1, "{progress:?}");
        assert!(progress.is_progress(), "{progress:?}");
        assert_eq!(progress.revision(), r3);
        assert_eq!(current_revision(&mut c).await, r3);
    })
    .await;
}

#[tokio::test]
async fn lease_grant_then_objects_put_with_that_lease() {
    for_both(|t| async move {
        let mut c = t.client;
        // Events get TTL 3600 s plus min(60 s, 5 %) = 3660 s; one lease is reused for many keys.
        let grant = c.lease_grant(3660, None).await.unwrap();
        assert_eq!(grant.ttl(), 3660);
        let lease = grant.id();
        let mut revisions = Vec::new();
        for i in 0..3 {
            let key = format!("/registry/events/default/ev-{i}");
            let resp = create(&mut c, &key, object(&key, 0), lease).await;
            assert!(resp.succeeded());
            revisions.push(header_revision(resp.header()));
        }
        // masterleases: a Put with a short lease, as the endpoint reconciler does.
        let master = c.lease_grant(15, None).await.unwrap().id();
        c.put(
            "/registry/masterleases/10.0.0.1",
            object("ip", 0),
            Some(PutOptions::new().with_lease(master)),
        )
        .await
        .unwrap();

        let events = c
            .get(
                "/registry/events/",
                Some(GetOptions::new().with_range(prefix_end("/registry/events/"))),
            )
            .await
            .unwrap();
        assert_eq!(events.kvs().len(), 3);
        assert!(events.kvs().iter().all(|kv| kv.lease() == lease));
        let ttl = c
            .lease_time_to_live(
                lease,
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .unwrap();
        assert_eq!(ttl.keys().len(), 3);
        assert_eq!(ttl.granted_ttl(), 3660);
        let masterlease = c
            .get("/registry/masterleases/10.0.0.1", None)
            .await
            .unwrap();
        assert_eq!(masterlease.kvs()[0].lease(), master);

        // A create with a lease that no longer exists fails with the exact error string.
        c.lease_revoke(master).await.unwrap();
        let failed = c
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        "/registry/masterleases/10.0.0.2",
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then([TxnOp::put(
                        "/registry/masterleases/10.0.0.2",
                        "x",
                        Some(PutOptions::new().with_lease(master)),
                    )]),
            )
            .await;
        let (code, msg) = expect_grpc_error(failed, "create with a revoked lease");
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("NotFound", "etcdserver: requested lease not found")
        );
        assert!(c
            .get(
                "/registry/masterleases/",
                Some(GetOptions::new().with_prefix())
            )
            .await
            .unwrap()
            .kvs()
            .is_empty());
    })
    .await;
}
