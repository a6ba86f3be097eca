//! HashKV: oxcd stores revisions exactly as etcd does (etcd's revision keys, `mvccpb.KeyValue`
//! values, key-only tombstones), so the same history hashes to the same value on both.

use etcd_client::{Client, DeleteOptions, Txn, TxnOp};
use oxcd_tests::{require_etcd, Flavor, Server};

async fn write_history(c: &mut Client) {
    c.put("a", "1", None).await.unwrap();
    c.put("b", "2", None).await.unwrap();
    c.put("a", "3", None).await.unwrap();
    c.delete("b", None).await.unwrap();
    c.txn(Txn::new().and_then([TxnOp::put("c", "1", None), TxnOp::put("d", "2", None)]))
        .await
        .unwrap();
    c.delete("c", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    c.put("\u{0}bin", vec![0u8, 255, 7], None).await.unwrap();
}

async fn hash_at(c: &mut Client, rev: i64) -> (u32, i64) {
    let resp = c.hash_kv(rev).await.unwrap();
    (resp.hash(), resp.compact_version())
}

#[tokio::test]
async fn the_same_history_hashes_the_same_as_on_etcd() {
    require_etcd();
    let etcd = Server::start(Flavor::Etcd).await;
    let oxcd = Server::start(Flavor::Oxcd).await;
    let (mut e, mut o) = (etcd.client().await, oxcd.client().await);
    write_history(&mut e).await;
    write_history(&mut o).await;
    for rev in [0, 2, 3, 5, 7] {
        assert_eq!(
            hash_at(&mut o, rev).await,
            hash_at(&mut e, rev).await,
            "HashKV at revision {rev}"
        );
    }
}

#[tokio::test]
async fn a_past_revision_hashes_the_same_after_more_writes_and_a_restart() {
    let mut server = Server::start(Flavor::Oxcd).await;
    let mut c = server.client().await;
    write_history(&mut c).await;
    let before = hash_at(&mut c, 5).await;
    c.put("later", "x", None).await.unwrap();
    assert_eq!(hash_at(&mut c, 5).await, before);
    assert_ne!(
        hash_at(&mut c, 0).await.0,
        before.0,
        "the current revision hashes differently"
    );
    drop(c);
    server
        .terminate(std::time::Duration::from_secs(10))
        .unwrap();
    server.restart().await;
    let mut c = server.client().await;
    assert_eq!(
        hash_at(&mut c, 5).await,
        before,
        "history hashes the same after a restart"
    );
}
