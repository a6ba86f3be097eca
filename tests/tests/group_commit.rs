//! Concurrent writes must share fsyncs: many writers in flight at once must produce far fewer
//! Raft entries than writes. Counted with Raft indexes from `Status`, not timed.

use oxcd_tests::{Flavor, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_share_raft_entries() {
    let server = Server::start(Flavor::Oxcd).await;
    let mut client = server.client().await;
    let before = client.status().await.unwrap().raft_index();

    const WRITERS: usize = 64;
    const PUTS_EACH: usize = 20;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PUTS_EACH {
                c.put(format!("gc/{w}/{i}"), "v", None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let status = client.status().await.unwrap();
    let entries = status.raft_index() - before;
    let writes = (WRITERS * PUTS_EACH) as u64;
    let revision = client
        .get("gc/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(
        revision,
        1 + writes as i64,
        "every put got its own revision"
    );
    assert!(
        entries * 2 <= writes,
        "{writes} concurrent puts used {entries} Raft entries: writes are not sharing fsyncs"
    );
    println!("{writes} puts from {WRITERS} writers in {entries} Raft entries");
}
