//! A watcher that stops reading must not stall writers or other watchers, and must still get
//! every event, in order, once it reads again (oxcd: its queue fills, it falls back to replaying
//! history from storage, then rejoins the live feed).

use std::time::Duration;

use etcd_client::{Client, WatchOptions, WatchStream};
use oxcd_tests::{for_both, Target};

const WRITES: i64 = 3000;
/// Large enough that 3,000 of them overflow every buffer between server and client.
const VALUE_BYTES: usize = 2048;

async fn drain(stream: &mut WatchStream, upto: i64, deadline: Duration) -> Vec<i64> {
    let mut revisions = Vec::new();
    tokio::time::timeout(deadline, async {
        while revisions.last().copied().unwrap_or(0) < upto {
            let resp = stream.message().await.unwrap().expect("stream ended early");
            revisions.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("watcher stuck at {:?} of {upto}", revisions.last()));
    revisions
}

async fn open(client: &mut Client) -> WatchStream {
    client
        .watch("slow/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_watcher_neither_blocks_others_nor_loses_events() {
    for_both(|t: Target| async move {
        let mut client = t.client;
        let mut slow = open(&mut client.clone()).await;
        let mut live = open(&mut client.clone()).await;
        let first = client
            .put("slow/start", "x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let last = first + WRITES;

        // Nobody reads `slow` while all writes go through and `live` keeps up, all on one
        // HTTP/2 connection (with hyper's default 400 KiB send buffer per stream, the stalled
        // stream used to starve the writer's responses; oxcd now caps it at 64 KiB).
        let value = "v".repeat(VALUE_BYTES);
        let writer = tokio::spawn(async move {
            for i in 0..WRITES {
                client
                    .put(format!("slow/{}", i % 50), value.clone(), None)
                    .await
                    .unwrap();
            }
        });
        let live_revisions = drain(&mut live, last, Duration::from_secs(60)).await;
        tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("writes stalled behind a watcher that does not read")
            .unwrap();
        assert_eq!(live_revisions, (first..=last).collect::<Vec<_>>());

        let slow_revisions = drain(&mut slow, last, Duration::from_secs(60)).await;
        assert_eq!(
            slow_revisions,
            (first..=last).collect::<Vec<_>>(),
            "the stalled watcher must get every event exactly once, in order"
        );
    })
    .await;
}
