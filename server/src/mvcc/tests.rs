//! Store-level tests: revisions, history, compaction and recovery through a real engine.

use std::sync::Arc;

use super::*;
use crate::error::EtcdError;
use crate::storage::Engine;
use oxcd_proto::mvccpb::KeyValue;

fn open(dir: &std::path::Path) -> Arc<MvccStore> {
    MvccStore::open(Engine::open(dir).unwrap()).unwrap()
}

fn put(store: &MvccStore, key: &str, value: &str) -> i64 {
    let mut w = store.writer(false);
    let rev = w.txn().put(key.as_bytes(), value.as_bytes().to_vec(), 0);
    w.commit().unwrap();
    rev
}

fn delete(store: &MvccStore, key: &str) -> i64 {
    let mut w = store.writer(false);
    let (n, _) = w.txn().delete_range(&KeyRange::new(key.as_bytes(), &[]));
    w.commit().unwrap();
    n
}

/// Revisions 2 to 6: `a` written three times, `b` written and deleted.
fn write_history(store: &MvccStore) {
    put(store, "a", "1");
    put(store, "a", "2");
    put(store, "b", "1");
    delete(store, "b");
    put(store, "a", "3");
}

fn get(
    store: &MvccStore,
    key: &str,
    rev: i64,
) -> Result<Option<(String, i64, i64, i64)>, EtcdError> {
    let rr = store.range(
        &KeyRange::new(key.as_bytes(), &[]),
        RangeOptions {
            rev,
            ..Default::default()
        },
    )?;
    Ok(rr.kvs.first().map(|kv| {
        (
            String::from_utf8(kv.value.clone()).unwrap(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
        )
    }))
}

#[test]
fn revisions_start_at_one_and_each_write_bumps_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.current_revision(), 1);
    assert_eq!(put(&s, "a", "1"), 2);
    assert_eq!(put(&s, "a", "2"), 3);
    assert_eq!(get(&s, "a", 0).unwrap(), Some(("2".into(), 2, 3, 2)));
    assert_eq!(get(&s, "a", 2).unwrap(), Some(("1".into(), 2, 2, 1)));

    // One transaction, several changes: one main revision.
    let mut w = s.writer(false);
    {
        let mut t = w.txn();
        t.put(b"x", b"1".to_vec(), 0);
        t.put(b"y", b"1".to_vec(), 0);
    }
    let changes = w.commit().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(s.current_revision(), 4);
}

#[test]
fn delete_leaves_a_tombstone_and_recreation_starts_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    put(&s, "k", "v1");
    put(&s, "k", "v2");
    assert_eq!(delete(&s, "k"), 1);
    assert_eq!(delete(&s, "k"), 0, "deleting nothing");
    assert_eq!(
        s.current_revision(),
        4,
        "an empty delete does not bump the revision"
    );
    assert_eq!(get(&s, "k", 0).unwrap(), None);
    assert_eq!(get(&s, "k", 3).unwrap(), Some(("v2".into(), 2, 3, 2)));
    put(&s, "k", "v3");
    assert_eq!(get(&s, "k", 0).unwrap(), Some(("v3".into(), 5, 5, 1)));
}

#[test]
fn reads_check_future_and_compacted_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..5 {
        put(&s, "k", &i.to_string());
    }
    assert_eq!(get(&s, "k", 7).unwrap_err(), EtcdError::FutureRevision);
    let mut w = s.writer(false);
    w.compact(4).unwrap();
    w.commit().unwrap();
    assert_eq!(get(&s, "k", 3).unwrap_err(), EtcdError::Compacted);
    assert_eq!(
        get(&s, "k", 4).unwrap(),
        Some(("2".into(), 2, 4, 3)),
        "the compact revision stays readable"
    );
    let mut w = s.writer(false);
    assert_eq!(w.compact(4), Err(EtcdError::Compacted));
    assert_eq!(w.compact(9), Err(EtcdError::FutureRevision));
}

#[tokio::test]
async fn physical_compaction_frees_disk_space() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let s = MvccStore::open(engine.clone()).unwrap();
    // Incompressible values, so the sizes measure data rather than compression.
    let random_value = |round: u8| {
        let mut v = vec![round];
        v.extend((0..4096).map(|_| rand::random::<u8>()));
        v
    };
    for round in 0..20 {
        let mut w = s.writer(false);
        for k in 0..100 {
            w.txn()
                .put(format!("key{k}").as_bytes(), random_value(round), 0);
        }
        w.commit().unwrap();
    }
    engine.compact_all();
    let before = engine.data_size();
    let rev = s.current_revision();
    let mut w = s.writer(false);
    w.compact(rev).unwrap();
    w.commit().unwrap();
    s.wait_compacted(rev).await.unwrap();
    engine.compact_all();
    let after = engine.data_size();
    println!("stored data before compaction: {before} bytes, after: {after} bytes");
    assert!(
        after * 3 < before,
        "compaction should free most of {before} bytes, left {after}"
    );
    let rr = s
        .range(&KeyRange::new(b"key", b"kez"), RangeOptions::default())
        .unwrap();
    assert_eq!(rr.count, 100, "live keys survive compaction");
    assert!(rr
        .kvs
        .iter()
        .all(|kv| kv.value[0] == 19 && kv.version == 20));
}

#[tokio::test]
async fn restart_recovers_revision_history_and_compaction_point() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        write_history(&s);
        let mut w = s.writer(false);
        w.compact(3).unwrap();
        w.commit().unwrap();
        s.wait_compacted(3).await.unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.current_revision(), 6);
    assert_eq!(s.compact_revision(), 3);
    assert_eq!(get(&s, "a", 2).unwrap_err(), EtcdError::Compacted);
    assert_eq!(get(&s, "a", 3).unwrap(), Some(("2".into(), 2, 3, 2)));
    assert_eq!(get(&s, "a", 0).unwrap(), Some(("3".into(), 2, 6, 3)));
    assert_eq!(get(&s, "b", 4).unwrap(), Some(("1".into(), 4, 4, 1)));
    assert_eq!(get(&s, "b", 5).unwrap(), None);
    assert_eq!(put(&s, "c", "1"), 7);
}

#[test]
fn writes_in_a_batch_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut w = s.writer(false);
    w.txn().put(b"k", b"1".to_vec(), 0);
    {
        let t = w.txn();
        let rr = t
            .range(&KeyRange::new(b"k", &[]), RangeOptions::default())
            .unwrap();
        assert_eq!(rr.kvs[0].value, b"1");
        assert_eq!(rr.rev, 2);
    }
    let mut t = w.txn();
    t.put(b"k", b"2".to_vec(), 0);
    let rr = t
        .range(&KeyRange::new(b"k", &[]), RangeOptions::default())
        .unwrap();
    assert_eq!(
        (rr.kvs[0].version, rr.rev),
        (2, 3),
        "a txn reads its own write at its revision"
    );
    drop(t);
    w.commit().unwrap();
    assert_eq!(s.current_revision(), 3);
}

#[test]
fn an_index_only_range_answers_revisions_and_versions_without_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    write_history(&s);
    put(&s, "c", "1");
    let all = KeyRange::new(b"a", b"z");
    let full = s.range(&all, RangeOptions::default()).unwrap();
    let index_only = RangeOptions {
        index_only: true,
        ..RangeOptions::default()
    };
    let brief = s.range(&all, index_only).unwrap();
    assert_eq!((brief.count, brief.rev), (full.count, full.rev));
    let without_values: Vec<KeyValue> = full
        .kvs
        .into_iter()
        .map(|kv| KeyValue {
            value: Vec::new(),
            lease: 0,
            ..kv
        })
        .collect();
    assert_eq!(brief.kvs, without_values);
    assert_eq!(brief.kvs.len(), 2, "the deleted key is not live");

    // The same from a write transaction's view, which sees its own writes.
    let mut w = s.writer(false);
    let mut t = w.txn();
    t.put(b"a", b"3".to_vec(), 0);
    let seen = t.range(&KeyRange::new(b"a", &[]), index_only).unwrap();
    assert_eq!(
        (
            seen.kvs[0].create_revision,
            seen.kvs[0].mod_revision,
            seen.kvs[0].version
        ),
        (2, 8, 4)
    );
    assert!(seen.kvs[0].value.is_empty());
}
