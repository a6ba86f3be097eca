//! A follower behind a slow link still gets large entries. openraft 0.9 gave each append one
//! heartbeat interval and cancelled it after that, so an entry that could not cross the link in
//! time was sent again from the start forever and the follower stalled for good; openraft 0.10
//! puts no deadline on appends (a dead link is found by HTTP/2 keep-alive), and this test keeps
//! it that way.

use std::time::Duration;

use etcd_client::GetOptions;
use oxcd_jepsen::cluster::{connect, Cluster, ClusterOptions, Flavor};
use oxcd_jepsen::proxy::{Fault, Scope};
use tokio::time::Instant;

mod common;

/// Each way: a round trip far longer than a heartbeat interval.
const LINK_DELAY: Duration = Duration::from_millis(400);
const ENTRY_BYTES: usize = 1 << 20;
const CATCH_UP_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_a_slow_link_gets_large_entries() {
    let dir = common::results_dir("slow-follower");
    let cluster = Cluster::start(&ClusterOptions {
        flavor: Flavor::Oxcd,
        binary: common::binary(Flavor::Oxcd),
        members: 3,
        dir: dir.clone(),
        ready_timeout: Duration::from_secs(30),
        power_disks: false,
    })
    .await
    .unwrap();
    let leader = loop {
        if let Some(leader) = cluster.leader().await {
            break leader;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let slow = (leader + 1) % 3;
    cluster.network().set_peer_fault(
        Scope::Member(slow),
        Fault::Delay {
            base: LINK_DELAY,
            jitter: Duration::from_millis(50),
        },
    );
    let mut client = connect(&cluster.endpoint(leader), Duration::from_secs(30))
        .await
        .unwrap();
    let mut revision = 0;
    for i in 0..3 {
        let value = vec![b'x' + i as u8; ENTRY_BYTES];
        revision = client
            .put(format!("big/{i}"), value, None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    let mut follower = connect(&cluster.endpoint(slow), Duration::from_secs(5))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let local = follower
            .get("big/2", Some(GetOptions::new().with_serializable()))
            .await;
        if local.is_ok_and(|r| r.header().is_some_and(|h| h.revision() >= revision)) {
            break;
        }
        assert!(
            started.elapsed() < CATCH_UP_WITHIN,
            "the follower behind a {LINK_DELAY:?} link did not apply revision {revision} \
             within {CATCH_UP_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "the slow follower applied three {ENTRY_BYTES}-byte entries {:?} after they committed",
        started.elapsed()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(dir);
}
