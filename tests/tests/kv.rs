//! KV API behaviour of oxcd, checked through the etcd-client crate. Each body runs against real
//! etcd first (through `for_both`), so every expectation below is etcd 3.4's observed behaviour.

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse,
    KeyValue, PutOptions, ResponseHeader, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use oxcd_tests::{expect_grpc_error, for_both};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";

fn revision(header: Option<&ResponseHeader>) -> i64 {
    header.expect("response carries a header").revision()
}

/// (key, value, create_revision, mod_revision, version) with lossy UTF-8, for compact asserts.
type Row = (String, String, i64, i64, i64);

fn row(kv: &KeyValue) -> Row {
    (
        String::from_utf8_lossy(kv.key()).into_owned(),
        String::from_utf8_lossy(kv.value()).into_owned(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
    )
}

fn r(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Row {
    (key.into(), value.into(), create, modified, version)
}

fn rows(resp: &GetResponse) -> Vec<Row> {
    resp.kvs().iter().map(row).collect()
}

fn keys(resp: &GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

async fn put_all(client: &mut Client, pairs: &[(&str, &str)]) -> i64 {
    let mut last = 0;
    for (k, v) in pairs {
        last = revision(client.put(*k, *v, None).await.unwrap().header());
    }
    last
}

#[tokio::test]
async fn new_store_starts_at_revision_one_and_each_put_bumps_it() {
    for_both(|t| async move {
        let mut c = t.client;
        let empty = c.get("missing", None).await.unwrap();
        assert_eq!(revision(empty.header()), 1);
        assert!(empty.kvs().is_empty());
        assert_eq!(empty.count(), 0);
        assert!(!empty.more());

        let put = c.put("k", "v1", None).await.unwrap();
        assert_eq!(revision(put.header()), 2);
        assert!(put.prev_key().is_none());

        let got = c.get("k", None).await.unwrap();
        assert_eq!(revision(got.header()), 2);
        assert_eq!(rows(&got), vec![r("k", "v1", 2, 2, 1)]);
        assert_eq!(got.count(), 1);
        assert_eq!(got.kvs()[0].lease(), 0);

        let put = c.put("k", "v2", None).await.unwrap();
        assert_eq!(revision(put.header()), 3);
        let got = c.get("k", None).await.unwrap();
        assert_eq!(rows(&got), vec![r("k", "v2", 2, 3, 2)]);

        let header = got.header().unwrap();
        assert_ne!(header.cluster_id(), 0);
        assert_ne!(header.member_id(), 0);
        assert!(header.raft_term() >= 1);
    })
    .await;
}

#[tokio::test]
async fn binary_keys_and_values_round_trip() {
    for_both(|t| async move {
        let mut c = t.client;
        let key = b"\x00bin\xff\x01".to_vec();
        let value = vec![0u8, 255, 10, 13, 0];
        c.put(key.clone(), value.clone(), None).await.unwrap();
        c.put(b"\xff".to_vec(), b"max".to_vec(), None)
            .await
            .unwrap();
        let got = c.get(key.clone(), None).await.unwrap();
        assert_eq!(got.kvs()[0].key(), &key[..]);
        assert_eq!(got.kvs()[0].value(), &value[..]);
        let all = c
            .get("\0", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap();
        let got_keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!(got_keys, vec![&key[..], b"\xff"]);
        let empty_value = c.put("empty", "", None).await.unwrap();
        assert_eq!(revision(empty_value.header()), 4);
        assert_eq!(c.get("empty", None).await.unwrap().kvs()[0].value(), b"");
    })
    .await;
}

#[tokio::test]
async fn range_end_prefix_and_from_key_select_the_right_keys() {
    for_both(|t| async move {
        let mut c = t.client;
        put_all(
            &mut c,
            &[
                ("a", "1"),
                ("ab", "2"),
                ("abc", "3"),
                ("b", "4"),
                ("c", "5"),
            ],
        )
        .await;

        let range = c
            .get("a", Some(GetOptions::new().with_range("b")))
            .await
            .unwrap();
        assert_eq!(keys(&range), ["a", "ab", "abc"]);
        assert_eq!(range.count(), 3);

        let prefix = c
            .get("ab", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(keys(&prefix), ["ab", "abc"]);

        let from = c
            .get("ab", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap();
        assert_eq!(keys(&from), ["ab", "abc", "b", "c"]);

        let all = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(keys(&all), ["a", "ab", "abc", "b", "c"]);

        // The end is exclusive, and an end at or before the key selects nothing.
        let exclusive = c
            .get("a", Some(GetOptions::new().with_range("abc")))
            .await
            .unwrap();
        assert_eq!(keys(&exclusive), ["a", "ab"]);
        let backwards = c
            .get("c", Some(GetOptions::new().with_range("a")))
            .await
            .unwrap();
        assert!(backwards.kvs().is_empty());
        assert_eq!(backwards.count(), 0);
        let same = c
            .get("b", Some(GetOptions::new().with_range("b")))
            .await
            .unwrap();
        assert!(same.kvs().is_empty());
    })
    .await;
}

#[tokio::test]
async fn limit_sets_more_and_count_stays_the_total() {
    for_both(|t| async move {
        let mut c = t.client;
        put_all(
            &mut c,
            &[
                ("k1", "a"),
                ("k2", "b"),
                ("k3", "c"),
                ("k4", "d"),
                ("k5", "e"),
            ],
        )
        .await;
        let prefix = || GetOptions::new().with_prefix();

        let limited = c.get("k", Some(prefix().with_limit(2))).await.unwrap();
        assert_eq!(keys(&limited), ["k1", "k2"]);
        assert!(limited.more());
        assert_eq!(limited.count(), 5);

        let exact = c.get("k", Some(prefix().with_limit(5))).await.unwrap();
        assert_eq!(exact.kvs().len(), 5);
        assert!(!exact.more());

        let over = c.get("k", Some(prefix().with_limit(50))).await.unwrap();
        assert_eq!(over.kvs().len(), 5);
        assert!(!over.more());

        let sorted = c
            .get(
                "k",
                Some(
                    prefix()
                        .with_limit(2)
                        .with_sort(SortTarget::Key, SortOrder::Descend),
                ),
            )
            .await
            .unwrap();
        assert_eq!(keys(&sorted), ["k5", "k4"]);
        assert!(sorted.more());
        assert_eq!(sorted.count(), 5);
    })
    .await;
}

#[tokio::test]
async fn reads_at_past_revisions_see_history_including_deletes() {
    for_both(|t| async move {
        let mut c = t.client;
        assert_eq!(put_all(&mut c, &[("k", "v1"), ("k", "v2")]).await, 3);
        let del = c.delete("k", None).await.unwrap();
        assert_eq!(revision(del.header()), 4);
        assert_eq!(put_all(&mut c, &[("k", "v3")]).await, 5);
        let at = |rev| Some(GetOptions::new().with_revision(rev));

        let r1 = c.get("k", at(1)).await.unwrap();
        assert!(r1.kvs().is_empty());
        assert_eq!(
            revision(r1.header()),
            5,
            "header revision is the current one"
        );
        assert_eq!(
            rows(&c.get("k", at(2)).await.unwrap()),
            vec![r("k", "v1", 2, 2, 1)]
        );
        assert_eq!(
            rows(&c.get("k", at(3)).await.unwrap()),
            vec![r("k", "v2", 2, 3, 2)]
        );
        let deleted = c.get("k", at(4)).await.unwrap();
        assert!(deleted.kvs().is_empty());
        assert_eq!(deleted.count(), 0);
        assert_eq!(
            rows(&c.get("k", at(5)).await.unwrap()),
            vec![r("k", "v3", 5, 5, 1)]
        );
        assert_eq!(
            rows(&c.get("k", at(0)).await.unwrap()),
            vec![r("k", "v3", 5, 5, 1)]
        );
        // Any revision <= 0 means "current".
        assert_eq!(
            rows(&c.get("k", at(-7)).await.unwrap()),
            vec![r("k", "v3", 5, 5, 1)]
        );
    })
    .await;
}

#[tokio::test]
async fn sort_by_every_target_and_order() {
    for_both(|t| async move {
        let mut c = t.client;
        // c@2 a@3 b@4 b@5: versions a1 b2 c1; create c<a<b; mod c<a<b; values b<c<a.
        put_all(&mut c, &[("c", "y"), ("a", "z"), ("b", "w"), ("b", "x")]).await;
        let cases: &[(SortTarget, SortOrder, [&str; 3])] = &[
            (SortTarget::Key, SortOrder::None, ["a", "b", "c"]),
            (SortTarget::Key, SortOrder::Ascend, ["a", "b", "c"]),
            (SortTarget::Key, SortOrder::Descend, ["c", "b", "a"]),
            // Ties (a and c both at version 1) keep key order, in both directions.
            (SortTarget::Version, SortOrder::Ascend, ["a", "c", "b"]),
            (SortTarget::Version, SortOrder::Descend, ["b", "a", "c"]),
            // A non-key target with no order sorts ascending.
            (SortTarget::Version, SortOrder::None, ["a", "c", "b"]),
            (SortTarget::Create, SortOrder::Ascend, ["c", "a", "b"]),
            (SortTarget::Create, SortOrder::Descend, ["b", "a", "c"]),
            (SortTarget::Mod, SortOrder::Ascend, ["c", "a", "b"]),
            (SortTarget::Mod, SortOrder::Descend, ["b", "a", "c"]),
            (SortTarget::Value, SortOrder::Ascend, ["b", "c", "a"]),
            (SortTarget::Value, SortOrder::Descend, ["a", "c", "b"]),
            (SortTarget::Value, SortOrder::None, ["b", "c", "a"]),
        ];
        for (target, order, expected) in cases {
            let resp = c
                .get(
                    "",
                    Some(GetOptions::new().with_all_keys().with_sort(*target, *order)),
                )
                .await
                .unwrap();
            assert_eq!(keys(&resp), expected, "sort {target:?} {order:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn keys_only_drops_values_and_count_only_drops_kvs() {
    for_both(|t| async move {
        let mut c = t.client;
        put_all(&mut c, &[("p/1", "one"), ("p/2", "two"), ("p/3", "three")]).await;

        let keys_only = c
            .get("p/", Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .unwrap();
        assert_eq!(
            rows(&keys_only),
            vec![
                r("p/1", "", 2, 2, 1),
                r("p/2", "", 3, 3, 1),
                r("p/3", "", 4, 4, 1)
            ]
        );

        let count_only = c
            .get(
                "p/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert!(count_only.kvs().is_empty());
        assert_eq!(count_only.count(), 3);
        assert!(!count_only.more());
        assert_eq!(revision(count_only.header()), 4);

        let count_limited = c
            .get(
                "p/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_limit(1),
                ),
            )
            .await
            .unwrap();
        assert!(count_limited.kvs().is_empty());
        assert_eq!(count_limited.count(), 3);
        assert!(!count_limited.more());
    })
    .await;
}

#[tokio::test]
async fn serializable_read_sees_the_members_own_writes() {
    for_both(|t| async move {
        let mut c = t.client;
        let rev = put_all(&mut c, &[("s", "1"), ("s", "2")]).await;
        let resp = c
            .get("s", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        assert_eq!(rows(&resp), vec![r("s", "2", 2, 3, 2)]);
        assert_eq!(revision(resp.header()), rev);
    })
    .await;
}

#[tokio::test]
async fn mod_and_create_revision_filters_prune_kvs_but_not_count() {
    for_both(|t| async move {
        let mut c = t.client;
        // a@2 b@3 c@4, then a rewritten @5: create a2 b3 c4, mod a5 b3 c4.
        put_all(&mut c, &[("a", "1"), ("b", "1"), ("c", "1"), ("a", "2")]).await;
        let all = || GetOptions::new().with_all_keys();
        let cases: Vec<(&str, GetOptions, Vec<&str>)> = vec![
            ("min_mod 4", all().with_min_mod_revision(4), vec!["a", "c"]),
            ("max_mod 4", all().with_max_mod_revision(4), vec!["b", "c"]),
            (
                "min_create 3",
                all().with_min_create_revision(3),
                vec!["b", "c"],
            ),
            (
                "max_create 3",
                all().with_max_create_revision(3),
                vec!["a", "b"],
            ),
            (
                "mod window",
                all().with_min_mod_revision(3).with_max_mod_revision(4),
                vec!["b", "c"],
            ),
            (
                "limit after filter",
                all().with_min_mod_revision(4).with_limit(1),
                vec!["a"],
            ),
        ];
        for (what, options, expected) in cases {
            let resp = c.get("", Some(options)).await.unwrap();
            assert_eq!(keys(&resp), expected, "{what}");
            assert_eq!(resp.count(), 3, "{what}: count ignores the filters");
        }
        let limited = c
            .get("", Some(all().with_min_mod_revision(4).with_limit(1)))
            .await
            .unwrap();
        assert!(
            limited.more(),
            "more counts filtered-in kvs beyond the limit"
        );
    })
    .await;
}

#[tokio::test]
async fn put_prev_kv_returns_the_overwritten_pair() {
    for_both(|t| async move {
        let mut c = t.client;
        let first = c
            .put("k", "v1", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert!(first.prev_key().is_none(), "no previous pair for a new key");
        let second = c
            .put("k", "v2", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(row(second.prev_key().unwrap()), r("k", "v1", 2, 2, 1));
        assert_eq!(revision(second.header()), 3);
    })
    .await;
}

#[tokio::test]
async fn put_ignore_value_keeps_the_value_and_rejects_bad_combinations() {
    for_both(|t| async move {
        let mut c = t.client;
        c.put("k", "kept", None).await.unwrap();
        let touched = c
            .put(
                "k",
                "",
                Some(PutOptions::new().with_ignore_value().with_prev_key()),
            )
            .await
            .unwrap();
        assert_eq!(revision(touched.header()), 3);
        assert_eq!(row(touched.prev_key().unwrap()), r("k", "kept", 2, 2, 1));
        let got = c.get("k", None).await.unwrap();
        assert_eq!(rows(&got), vec![r("k", "kept", 2, 3, 2)]);

        let (code, msg) = expect_grpc_error(
            c.put("k", "new", Some(PutOptions::new().with_ignore_value()))
                .await,
            "value together with ignore_value",
        );
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("InvalidArgument", "etcdserver: value is provided")
        );

        let (code, msg) = expect_grpc_error(
            c.put("absent", "", Some(PutOptions::new().with_ignore_value()))
                .await,
            "ignore_value on a missing key",
        );
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("InvalidArgument", "etcdserver: key not found")
        );

        let (code, msg) = expect_grpc_error(
            c.put("absent", "", Some(PutOptions::new().with_ignore_lease()))
                .await,
            "ignore_lease on a missing key",
        );
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("InvalidArgument", "etcdserver: key not found")
        );

        let after = c.get("k", None).await.unwrap();
        assert_eq!(
            revision(after.header()),
            3,
            "rejected puts do not bump the revision"
        );
    })
    .await;
}

#[tokio::test]
async fn put_with_unknown_lease_is_not_found() {
    for_both(|t| async move {
        let mut c = t.client;
        let (code, msg) = expect_grpc_error(
            c.put("k", "v", Some(PutOptions::new().with_lease(0x1234)))
                .await,
            "put with a lease that was never granted",
        );
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("NotFound", "etcdserver: requested lease not found")
        );
        assert!(c.get("k", None).await.unwrap().kvs().is_empty());
    })
    .await;
}

#[tokio::test]
async fn delete_returns_prev_kvs_and_recreated_keys_start_a_new_generation() {
    for_both(|t| async move {
        let mut c = t.client;
        put_all(
            &mut c,
            &[("d/a", "1"), ("d/b", "2"), ("d/b", "3"), ("e", "4")],
        )
        .await;

        let del = c
            .delete(
                "d/",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .unwrap();
        assert_eq!(del.deleted(), 2);
        assert_eq!(
            revision(del.header()),
            6,
            "one revision for the whole range delete"
        );
        let prev: Vec<Row> = del.prev_kvs().iter().map(row).collect();
        assert_eq!(prev, vec![r("d/a", "1", 2, 2, 1), r("d/b", "3", 3, 4, 2)]);

        let none = c
            .delete("d/", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(none.deleted(), 0);
        assert!(none.prev_kvs().is_empty());
        assert_eq!(
            revision(none.header()),
            6,
            "deleting nothing does not bump the revision"
        );

        let without_prev = c.delete("e", None).await.unwrap();
        assert_eq!(without_prev.deleted(), 1);
        assert!(without_prev.prev_kvs().is_empty());
        assert_eq!(revision(without_prev.header()), 7);

        let put = c.put("d/b", "new", None).await.unwrap();
        assert_eq!(revision(put.header()), 8);
        assert_eq!(
            rows(&c.get("d/b", None).await.unwrap()),
            vec![r("d/b", "new", 8, 8, 1)]
        );

        let ranged = c
            .delete(
                "a",
                Some(DeleteOptions::new().with_range("e").with_prev_key()),
            )
            .await
            .unwrap();
        assert_eq!(ranged.deleted(), 1);
        assert_eq!(row(&ranged.prev_kvs()[0]), r("d/b", "new", 8, 8, 1));

        let (code, msg) = expect_grpc_error(c.delete("", None).await, "delete with an empty key");
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("InvalidArgument", "etcdserver: key is not provided")
        );
    })
    .await;
}

#[tokio::test]
async fn txn_compares_on_every_target_choose_the_branch() {
    for_both(|t| async move {
        let mut c = t.client;
        put_all(&mut c, &[("k", "v1"), ("k", "v2")]).await; // create 2, mod 3, version 2
        let cases: Vec<(&str, Compare, bool)> = vec![
            (
                "version =",
                Compare::version("k", CompareOp::Equal, 2),
                true,
            ),
            (
                "version >",
                Compare::version("k", CompareOp::Greater, 2),
                false,
            ),
            ("version <", Compare::version("k", CompareOp::Less, 3), true),
            (
                "version !=",
                Compare::version("k", CompareOp::NotEqual, 2),
                false,
            ),
            (
                "create =",
                Compare::create_revision("k", CompareOp::Equal, 2),
                true,
            ),
            (
                "create <",
                Compare::create_revision("k", CompareOp::Less, 2),
                false,
            ),
            (
                "mod =",
                Compare::mod_revision("k", CompareOp::Equal, 3),
                true,
            ),
            (
                "mod >",
                Compare::mod_revision("k", CompareOp::Greater, 2),
                true,
            ),
            ("value =", Compare::value("k", CompareOp::Equal, "v2"), true),
            (
                "value >",
                Compare::value("k", CompareOp::Greater, "v1"),
                true,
            ),
            ("value <", Compare::value("k", CompareOp::Less, "v1"), false),
            (
                "value !=",
                Compare::value("k", CompareOp::NotEqual, "v2"),
                false,
            ),
            ("lease = 0", Compare::lease("k", CompareOp::Equal, 0), true),
            (
                "lease > 0",
                Compare::lease("k", CompareOp::Greater, 0),
                false,
            ),
            // A missing key compares as version/create/mod 0; a value compare on it always fails.
            (
                "missing version = 0",
                Compare::version("nope", CompareOp::Equal, 0),
                true,
            ),
            (
                "missing create = 0",
                Compare::create_revision("nope", CompareOp::Equal, 0),
                true,
            ),
            (
                "missing value = ''",
                Compare::value("nope", CompareOp::Equal, ""),
                false,
            ),
            (
                "missing value != x",
                Compare::value("nope", CompareOp::NotEqual, "x"),
                false,
            ),
        ];
        for (what, compare, expected) in cases {
            let resp = c
                .txn(
                    Txn::new()
                        .when([compare])
                        .and_then([TxnOp::get("k", None)])
                        .or_else([TxnOp::get("nope", None)]),
                )
                .await
                .unwrap();
            assert_eq!(resp.succeeded(), expected, "{what}");
            assert_eq!(
                revision(resp.header()),
                3,
                "{what}: read-only txn keeps the revision"
            );
            match &resp.op_responses()[..] {
                [TxnOpResponse::Get(get)] => {
                    assert_eq!(
                        get.kvs().len(),
                        usize::from(expected),
                        "{what}: branch ran its op"
                    )
                }
                other => panic!("{what}: unexpected op responses {other:?}"),
            }
        }

        let all_must_hold = c
            .txn(Txn::new().when([
                Compare::version("k", CompareOp::Equal, 2),
                Compare::value("k", CompareOp::Equal, "other"),
            ]))
            .await
            .unwrap();
        assert!(!all_must_hold.succeeded());
        assert!(all_must_hold.op_responses().is_empty());
        let empty = c.txn(Txn::new()).await.unwrap();
        assert!(empty.succeeded(), "no compares means success");
    })
    .await;
}

#[tokio::test]
async fn txn_compare_with_range_end_must_hold_for_every_key_in_range() {
    for_both(|t| async move {
        let mut c = t.client;
        put_all(&mut c, &[("r/a", "1"), ("r/b", "1"), ("r/c", "2")]).await;
        let check = |compare: Compare| Txn::new().when([compare]);
        let cases: Vec<(&str, Compare, bool)> = vec![
            (
                "all versions 1",
                Compare::version("r/", CompareOp::Equal, 1).with_prefix(),
                true,
            ),
            (
                "values in [a,c) = 1",
                Compare::value("r/a", CompareOp::Equal, "1").with_range("r/c"),
                true,
            ),
            (
                "values in prefix = 1",
                Compare::value("r/", CompareOp::Equal, "1").with_prefix(),
                false,
            ),
            (
                "mod < 4 in prefix",
                Compare::mod_revision("r/", CompareOp::Less, 4).with_prefix(),
                false,
            ),
            (
                "mod < 5 in prefix",
                Compare::mod_revision("r/", CompareOp::Less, 5).with_prefix(),
                true,
            ),
            // An empty range behaves like a missing key.
            (
                "empty range version 0",
                Compare::version("x/", CompareOp::Equal, 0).with_prefix(),
                true,
            ),
            (
                "empty range value",
                Compare::value("x/", CompareOp::Equal, "").with_prefix(),
                false,
            ),
        ];
        for (what, compare, expected) in cases {
            let resp = c.txn(check(compare)).await.unwrap();
            assert_eq!(resp.succeeded(), expected, "{what}");
        }
    })
    .await;
}

#[tokio::test]
async fn txn_ops_run_in_order_and_each_reports_the_txn_revision() {
    for_both(|t| async move {
        let mut c = t.client;
        put_all(&mut c, &[("a", "old"), ("gone", "x")]).await; // revision 3
        let resp = c
            .txn(
                Txn::new()
                    .when([Compare::value("a", CompareOp::Equal, "old")])
                    .and_then([
                        TxnOp::get("a", None),
                        TxnOp::put("a", "new", Some(PutOptions::new().with_prev_key())),
                        TxnOp::put("b", "fresh", None),
                        TxnOp::get("", Some(GetOptions::new().with_all_keys())),
                        TxnOp::delete("gone", Some(DeleteOptions::new().with_prev_key())),
                        TxnOp::get("gone", None),
                    ]),
            )
            .await
            .unwrap();
        assert!(resp.succeeded());
        assert_eq!(
            revision(resp.header()),
            4,
            "a txn with writes is a single revision"
        );
        let ops = resp.op_responses();
        assert_eq!(ops.len(), 6);
        let TxnOpResponse::Get(before) = &ops[0] else {
            panic!("op 0: {:?}", ops[0])
        };
        assert_eq!(rows(before), vec![r("a", "old", 2, 2, 1)]);
        assert_eq!(
            revision(before.header()),
            3,
            "a read before any write sees the old revision"
        );
        let TxnOpResponse::Put(put_a) = &ops[1] else {
            panic!("op 1: {:?}", ops[1])
        };
        assert_eq!(row(put_a.prev_key().unwrap()), r("a", "old", 2, 2, 1));
        assert_eq!(revision(put_a.header()), 4);
        let TxnOpResponse::Put(put_b) = &ops[2] else {
            panic!("op 2: {:?}", ops[2])
        };
        assert_eq!(revision(put_b.header()), 4);
        let TxnOpResponse::Get(after) = &ops[3] else {
            panic!("op 3: {:?}", ops[3])
        };
        assert_eq!(
            rows(after),
            vec![
                r("a", "new", 2, 4, 2),
                r("b", "fresh", 4, 4, 1),
                r("gone", "x", 3, 3, 1)
            ],
            "reads inside the txn see its earlier writes"
        );
        assert_eq!(revision(after.header()), 4);
        let TxnOpResponse::Delete(del) = &ops[4] else {
            panic!("op 4: {:?}", ops[4])
        };
        assert_eq!(del.deleted(), 1);
        assert_eq!(row(&del.prev_kvs()[0]), r("gone", "x", 3, 3, 1));
        assert_eq!(revision(del.header()), 4);
        let TxnOpResponse::Get(gone) = &ops[5] else {
            panic!("op 5: {:?}", ops[5])
        };
        assert!(gone.kvs().is_empty());

        // Sub-responses carry only the revision; the ids are filled in for the top level only.
        let sub_header = put_a.header().unwrap();
        let top = resp.header().unwrap();
        assert_ne!(top.member_id(), 0);
        assert_eq!(
            (
                sub_header.cluster_id(),
                sub_header.member_id(),
                sub_header.raft_term()
            ),
            (0, 0, 0)
        );

        let failed = c
            .txn(
                Txn::new()
                    .when([Compare::value("a", CompareOp::Equal, "old")])
                    .and_then([TxnOp::put("never", "1", None)])
                    .or_else([
                        TxnOp::put("else", "1", None),
                        TxnOp::delete("missing", None),
                    ]),
            )
            .await
            .unwrap();
        assert!(!failed.succeeded());
        assert_eq!(revision(failed.header()), 5);
        let ops = failed.op_responses();
        let TxnOpResponse::Delete(nothing) = &ops[1] else {
            panic!("else op 1: {:?}", ops[1])
        };
        assert_eq!(nothing.deleted(), 0);
        assert_eq!(revision(nothing.header()), 5);
        assert!(c.get("never", None).await.unwrap().kvs().is_empty());
        assert_eq!(c.get("else", None).await.unwrap().kvs().len(), 1);

        let noop = c
            .txn(Txn::new().and_then([TxnOp::delete("missing", None), TxnOp::get("a", None)]))
            .await
            .unwrap();
        assert_eq!(
            revision(noop.header()),
            5,
            "a txn that changes nothing keeps the revision"
        );
    })
    .await;
}

#[tokio::test]
async fn nested_txns_evaluate_their_own_compares() {
    for_both(|t| async move {
        let mut c = t.client;
        put_all(&mut c, &[("n", "1")]).await;
        let inner_ok = Txn::new()
            .when([Compare::value("n", CompareOp::Equal, "1")])
            .and_then([TxnOp::put("inner", "then", None)])
            .or_else([TxnOp::put("inner", "else", None)]);
        let inner_fail = Txn::new()
            .when([Compare::value("n", CompareOp::Equal, "2")])
            .and_then([TxnOp::put("inner2", "then", None)])
            .or_else([TxnOp::get("n", None)]);
        let resp = c
            .txn(Txn::new().and_then([
                TxnOp::txn(inner_ok),
                TxnOp::txn(inner_fail),
                TxnOp::put("outer", "x", None),
            ]))
            .await
            .unwrap();
        assert!(resp.succeeded());
        assert_eq!(revision(resp.header()), 3);
        let ops = resp.op_responses();
        let TxnOpResponse::Txn(first) = &ops[0] else {
            panic!("op 0: {:?}", ops[0])
        };
        assert!(first.succeeded());
        // etcd 3.4 gives a nested txn an empty header: present, but revision 0.
        assert_eq!(revision(first.header()), 0, "nested txn header revision");
        match &first.op_responses()[..] {
            [TxnOpResponse::Put(put)] => assert_eq!(revision(put.header()), 3),
            other => panic!("inner then ops: {other:?}"),
        }
        let TxnOpResponse::Txn(second) = &ops[1] else {
            panic!("op 1: {:?}", ops[1])
        };
        assert!(!second.succeeded());
        match &second.op_responses()[..] {
            [TxnOpResponse::Get(get)] => assert_eq!(rows(get), vec![r("n", "1", 2, 2, 1)]),
            other => panic!("inner else ops: {other:?}"),
        }
        let got = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(
            rows(&got),
            vec![
                r("inner", "then", 3, 3, 1),
                r("n", "1", 2, 2, 1),
                r("outer", "x", 3, 3, 1)
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn compacted_and_future_revisions_are_out_of_range() {
    for_both(|t| async move {
        let mut c = t.client;
        // A fresh store has compacted nothing (not even revision 0), so compacting 0 works once.
        c.compact(0, None)
            .await
            .expect("first compaction at revision 0");
        let (code, msg) = expect_grpc_error(c.compact(0, None).await, "second compaction at 0");
        assert_eq!((code.as_str(), msg.as_str()), ("OutOfRange", COMPACTED));

        put_all(&mut c, &[("k", "1"), ("k", "2"), ("k", "3"), ("k", "4")]).await; // revision 5

        let compact = c.compact(3, None).await.unwrap();
        assert_eq!(revision(compact.header()), 5);

        let (code, msg) = expect_grpc_error(
            c.get("k", Some(GetOptions::new().with_revision(2))).await,
            "read below the compaction",
        );
        assert_eq!((code.as_str(), msg.as_str()), ("OutOfRange", COMPACTED));
        let at_compaction = c
            .get("k", Some(GetOptions::new().with_revision(3)))
            .await
            .unwrap();
        assert_eq!(rows(&at_compaction), vec![r("k", "2", 2, 3, 2)]);

        let (code, msg) = expect_grpc_error(
            c.get("k", Some(GetOptions::new().with_revision(6))).await,
            "read above the current revision",
        );
        assert_eq!((code.as_str(), msg.as_str()), ("OutOfRange", FUTURE_REV));

        let (code, msg) = expect_grpc_error(
            c.compact(3, None).await,
            "compact at the compacted revision",
        );
        assert_eq!((code.as_str(), msg.as_str()), ("OutOfRange", COMPACTED));
        let (code, msg) = expect_grpc_error(
            c.compact(2, None).await,
            "compact below the compacted revision",
        );
        assert_eq!((code.as_str(), msg.as_str()), ("OutOfRange", COMPACTED));
        let (code, msg) = expect_grpc_error(c.compact(6, None).await, "compact in the future");
        assert_eq!((code.as_str(), msg.as_str()), ("OutOfRange", FUTURE_REV));

        let physical = c
            .compact(5, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        assert_eq!(revision(physical.header()), 5);
        let current = c.get("k", None).await.unwrap();
        assert_eq!(rows(&current), vec![r("k", "4", 2, 5, 4)]);
        assert_eq!(
            revision(current.header()),
            5,
            "compaction does not bump the revision"
        );

        let txn_read = c
            .txn(Txn::new().and_then([TxnOp::get("k", Some(GetOptions::new().with_revision(4)))]))
            .await;
        let (code, msg) = expect_grpc_error(txn_read, "txn reading a compacted revision");
        assert_eq!((code.as_str(), msg.as_str()), ("OutOfRange", COMPACTED));
    })
    .await;
}

#[tokio::test]
async fn empty_keys_are_invalid_arguments() {
    for_both(|t| async move {
        let mut c = t.client;
        let expected = ("InvalidArgument", "etcdserver: key is not provided");
        let (code, msg) = expect_grpc_error(c.put("", "v", None).await, "put with an empty key");
        assert_eq!((code.as_str(), msg.as_str()), expected);
        let (code, msg) = expect_grpc_error(c.get("", None).await, "range with an empty key");
        assert_eq!((code.as_str(), msg.as_str()), expected);
        let (code, msg) = expect_grpc_error(
            c.txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
                .await,
            "txn put with an empty key",
        );
        assert_eq!((code.as_str(), msg.as_str()), expected);
        assert_eq!(revision(c.get("x", None).await.unwrap().header()), 1);
    })
    .await;
}

#[tokio::test]
async fn txn_with_more_than_128_ops_is_rejected() {
    for_both(|t| async move {
        let mut c = t.client;
        let puts = |n: usize| -> Vec<TxnOp> {
            (0..n)
                .map(|i| TxnOp::put(format!("k{i:03}"), "v", None))
                .collect()
        };
        let ok = c.txn(Txn::new().and_then(puts(128))).await.unwrap();
        assert_eq!(revision(ok.header()), 2);
        assert_eq!(ok.op_responses().len(), 128);

        let too_many = (
            "InvalidArgument",
            "etcdserver: too many operations in txn request",
        );
        let (code, msg) = expect_grpc_error(
            c.txn(Txn::new().and_then(puts(129))).await,
            "129 success ops",
        );
        assert_eq!((code.as_str(), msg.as_str()), too_many);
        let (code, msg) = expect_grpc_error(
            c.txn(Txn::new().and_then(puts(1)).or_else(puts(129))).await,
            "129 failure ops",
        );
        assert_eq!((code.as_str(), msg.as_str()), too_many);
        let compares: Vec<Compare> = (0..129)
            .map(|i| Compare::version(format!("c{i}"), CompareOp::Equal, 0))
            .collect();
        let (code, msg) = expect_grpc_error(c.txn(Txn::new().when(compares)).await, "129 compares");
        assert_eq!((code.as_str(), msg.as_str()), too_many);
        assert_eq!(revision(c.get("x", None).await.unwrap().header()), 2);
    })
    .await;
}

#[tokio::test]
async fn duplicate_keys_in_one_txn_are_rejected() {
    for_both(|t| async move {
        let mut c = t.client;
        let duplicate = (
            "InvalidArgument",
            "etcdserver: duplicate key given in txn request",
        );
        let cases: Vec<(&str, Txn)> = vec![
            (
                "two puts",
                Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]),
            ),
            (
                "put inside a deleted range",
                Txn::new().and_then([
                    TxnOp::delete("a", Some(DeleteOptions::new().with_range("z"))),
                    TxnOp::put("k", "1", None),
                ]),
            ),
            (
                "put in a nested txn",
                Txn::new().and_then([
                    TxnOp::put("k", "1", None),
                    TxnOp::txn(Txn::new().and_then([TxnOp::put("k", "2", None)])),
                ]),
            ),
            (
                "duplicates in the failure branch",
                Txn::new()
                    .when([Compare::version("k", CompareOp::Equal, 0)])
                    .and_then([TxnOp::put("k", "1", None)])
                    .or_else([TxnOp::put("j", "1", None), TxnOp::put("j", "2", None)]),
            ),
        ];
        for (what, txn) in cases {
            let (code, msg) = expect_grpc_error(c.txn(txn).await, what);
            assert_eq!((code.as_str(), msg.as_str()), duplicate, "{what}");
        }

        let allowed: Vec<(&str, Txn)> = vec![
            (
                "same key in both branches",
                Txn::new()
                    .when([Compare::version("k", CompareOp::Equal, 0)])
                    .and_then([TxnOp::put("k", "then", None)])
                    .or_else([TxnOp::put("k", "else", None)]),
            ),
            (
                "reads of a written key",
                Txn::new().and_then([
                    TxnOp::put("r", "1", None),
                    TxnOp::get("r", None),
                    TxnOp::get("r", None),
                ]),
            ),
            (
                "two deletes of one key",
                Txn::new().and_then([TxnOp::delete("k", None), TxnOp::delete("k", None)]),
            ),
            // etcd 3.4's overlap check builds the interval [key, "\0"), which is empty, so a
            // from-key delete never collides with a put.
            (
                "put after a from-key delete",
                Txn::new().and_then([
                    TxnOp::delete("a", Some(DeleteOptions::new().with_from_key())),
                    TxnOp::put("k", "after", None),
                ]),
            ),
        ];
        for (what, txn) in allowed {
            c.txn(txn).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        let survivor = c.get("k", None).await.unwrap();
        assert_eq!(
            rows(&survivor)[0].1,
            "after",
            "the put after the from-key delete wins"
        );
    })
    .await;
}

#[tokio::test]
async fn requests_over_the_size_limit_are_rejected() {
    for_both(|t| async move {
        let mut c = t.client;
        let limit = 1536 * 1024;
        let fits = vec![b'x'; limit - 1024];
        let put = c.put("big", fits, None).await.unwrap();
        assert_eq!(revision(put.header()), 2);
        let (code, msg) = expect_grpc_error(
            c.put("big", vec![b'y'; limit + 1], None).await,
            "1.5 MiB + 1 value",
        );
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("InvalidArgument", "etcdserver: request is too large")
        );
        let got = c.get("big", None).await.unwrap();
        assert_eq!(got.kvs()[0].value().len(), limit - 1024);
        assert_eq!(revision(got.header()), 2);
    })
    .await;
}

#[tokio::test]
async fn status_reports_a_version_and_the_member_as_leader() {
    for_both(|t| async move {
        let mut m = t.client.maintenance_client();
        let status = m.status().await.unwrap();
        assert!(!status.version().is_empty(), "version string is set");
        assert!(
            status.version().starts_with("3."),
            "etcd clients expect a 3.x version: {}",
            status.version()
        );
        let header = status.header().expect("status carries a header");
        assert_ne!(header.member_id(), 0);
        assert_eq!(
            status.leader(),
            header.member_id(),
            "a single member leads itself"
        );
        assert!(status.raft_term() >= 1);
        assert!(status.raft_index() >= 1);
        assert!(status.db_size() > 0);
    })
    .await;
}
