//! Slow links between members: with every peer message delayed 500 ms each way (a 1 s round
//! trip, a whole election timeout), etcd keeps its leader and keeps committing writes and
//! serving linearizable reads on every member, a round trip or two each. oxcd must do the
//! same: no election, no failed request, no stall. And a cluster left idle over those links
//! must take writes when they come: only heartbeats crossed the links meanwhile, and both the
//! followers' patience and the leader's lease hang on them (openraft's heartbeats wait for each
//! other's answers; the election module's beacons do not).

use std::time::Duration;

use oxcd_jepsen::cluster::{connect, Cluster, ClusterOptions, Flavor};
use oxcd_jepsen::proxy::{Fault, Scope};
use tokio::time::Instant;

mod common;

const RUN_FOR: Duration = Duration::from_secs(20);
/// A write needs one round trip to a quorum (1 s) plus the fsyncs; this is a stall.
const STALL: Duration = Duration::from_secs(4);
const WRITERS: usize = 4;
/// Linearizable readers, one on each member.
const READERS: usize = 3;

struct Outcome {
    acknowledged: usize,
    reads: usize,
    failed: Vec<String>,
    slowest: Duration,
    terms: (u64, u64),
}

/// A cluster of `flavor` whose peer links are delayed `one_way` after it elected a leader;
/// `idle` passes before the clients start.
async fn writes_over_slow_links(flavor: Flavor, one_way: Duration, idle: Duration) -> Outcome {
    let binary = match flavor {
        Flavor::Oxcd => common::binary(flavor),
        Flavor::Etcd => common::etcd37_binary(),
    };
    let dir = common::results_dir(&format!("slow-links-{flavor}"));
    let cluster = Cluster::start(&ClusterOptions {
        flavor,
        binary,
        members: 3,
        dir: dir.clone(),
        // Under the whole suite's load three members can take a while to serve.
        ready_timeout: Duration::from_secs(60),
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
    let term = |endpoint: String| async move {
        let mut client = connect(&endpoint, Duration::from_secs(5)).await.unwrap();
        client.status().await.unwrap().raft_term()
    };
    let term_before = term(cluster.endpoint(leader)).await;
    cluster.network().set_peer_fault(
        Scope::All,
        Fault::Delay {
            base: one_way,
            jitter: Duration::ZERO,
        },
    );
    tokio::time::sleep(idle).await;
    let until = Instant::now() + RUN_FOR;
    let mut writers = tokio::task::JoinSet::new();
    for r in 0..READERS {
        let endpoint = cluster.endpoint(r);
        writers.spawn(async move {
            let mut client = connect(&endpoint, Duration::from_secs(5)).await.unwrap();
            let (mut served, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
            while Instant::now() < until {
                let started = Instant::now();
                match tokio::time::timeout(STALL, client.get("slow/0/0", None)).await {
                    Ok(Ok(_)) => served += 1,
                    Ok(Err(e)) => failed.push(format!("linearizable get on member {r}: {e}")),
                    Err(_) => failed.push(format!("get on member {r}: no answer within {STALL:?}")),
                }
                slowest = slowest.max(started.elapsed());
            }
            (0, served, failed, slowest)
        });
    }
    for w in 0..WRITERS {
        let endpoint = cluster.endpoint(leader);
        writers.spawn(async move {
            let mut client = connect(&endpoint, Duration::from_secs(5)).await.unwrap();
            let (mut acknowledged, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
            let mut i = 0;
            while Instant::now() < until {
                let started = Instant::now();
                let put = client.put(format!("slow/{w}/{i}"), "v", None);
                match tokio::time::timeout(STALL, put).await {
                    Ok(Ok(_)) => acknowledged += 1,
                    Ok(Err(e)) => failed.push(format!("put {w}/{i}: {e}")),
                    Err(_) => failed.push(format!("put {w}/{i}: no answer within {STALL:?}")),
                }
                slowest = slowest.max(started.elapsed());
                i += 1;
            }
            (acknowledged, 0, failed, slowest)
        });
    }
    let mut outcome = Outcome {
        acknowledged: 0,
        reads: 0,
        failed: Vec::new(),
        slowest: Duration::ZERO,
        terms: (term_before, 0),
    };
    while let Some(result) = writers.join_next().await {
        let (acknowledged, reads, failed, slowest) = result.unwrap();
        outcome.acknowledged += acknowledged;
        outcome.reads += reads;
        outcome.failed.extend(failed);
        outcome.slowest = outcome.slowest.max(slowest);
    }
    outcome.terms.1 = term(cluster.endpoint(leader)).await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(dir);
    outcome
}

/// One test, so that its clusters run one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_serves_over_slow_links_as_etcd_does() {
    // Busy over 500 ms each way.
    serves_over_slow_links(Duration::from_millis(500), Duration::ZERO).await;
    // Left idle over 500 ms each way, then busy.
    serves_over_slow_links(Duration::from_millis(500), Duration::from_secs(10)).await;
}

async fn serves_over_slow_links(one_way: Duration, idle: Duration) {
    for flavor in [Flavor::Etcd, Flavor::Oxcd] {
        let outcome = writes_over_slow_links(flavor, one_way, idle).await;
        println!(
            "{flavor}, {one_way:?} one way after {idle:?} idle: {} writes acknowledged by \
             {WRITERS} writers and {} linearizable reads served to {READERS} readers in \
             {RUN_FOR:?}, slowest {:?}, term {} -> {}, {} failed",
            outcome.acknowledged,
            outcome.reads,
            outcome.slowest,
            outcome.terms.0,
            outcome.terms.1,
            outcome.failed.len()
        );
        assert!(
            outcome.failed.is_empty(),
            "{flavor}: requests failed over slow links: {:?}",
            outcome.failed
        );
        assert_eq!(
            outcome.terms.0, outcome.terms.1,
            "{flavor}: the leader changed over slow links"
        );
        // Sequential writers over a 1 s round trip: at least half of one write per second each.
        let expected = WRITERS * RUN_FOR.as_secs() as usize / 2;
        assert!(
            outcome.acknowledged >= expected,
            "{flavor}: {} writes acknowledged, expected at least {expected}",
            outcome.acknowledged
        );
        // A read needs a heartbeat round to a quorum (one round trip), two from a follower.
        let expected = READERS * RUN_FOR.as_secs() as usize / 4;
        assert!(
            outcome.reads >= expected,
            "{flavor}: {} linearizable reads served, expected at least {expected}",
            outcome.reads
        );
    }
}
