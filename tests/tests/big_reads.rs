//! A huge read must not stall the member: read-only transactions over tens of thousands of
//! keys, several at once on a two-core machine, while a client writes one key at a time. The
//! writes must keep flowing (bounded latency) and the leader must keep its followers (no
//! election), so the reads can neither hold up apply nor starve the heartbeats.

use std::time::Duration;

use oxcd_proto::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, request_op::Request, PutRequest,
    RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use oxcd_tests::cluster::Cluster;
use oxcd_tests::Flavor;
use tokio::time::Instant;
use tonic::transport::Channel;

const KEYS: usize = 60_000;
const VALUE_BYTES: usize = 200;
const READERS: usize = 4;
const LOAD_TIME: Duration = Duration::from_secs(15);
/// The slowest a single write may be while the reads run.
const WRITE_BOUND: Duration = Duration::from_secs(1);
/// The fewest writes per second one client must get through meanwhile (the release before
/// this test managed 8: its reads held the store's lock while they read every value).
const MIN_WRITES_PER_SECOND: usize = 20;

async fn kv(endpoint: &str) -> KvClient<Channel> {
    let channel = Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    KvClient::new(channel).max_decoding_message_size(usize::MAX)
}

fn put(key: String, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_read_only_txns_do_not_stall_writes_or_heartbeats() {
    let cluster = Cluster::start(Flavor::Oxcd, 3, &[]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let endpoint = cluster.endpoints()[leader].clone();
    let value = "v".repeat(VALUE_BYTES);
    let mut loaders = tokio::task::JoinSet::new();
    for part in 0..8 {
        let (endpoint, value) = (endpoint.clone(), value.clone());
        loaders.spawn(async move {
            let mut kv = kv(&endpoint).await;
            for chunk in (part..KEYS.div_ceil(100)).step_by(8) {
                let success = (chunk * 100..((chunk + 1) * 100).min(KEYS))
                    .map(|i| put(format!("big/{i:06}"), &value))
                    .collect();
                kv.txn(TxnRequest {
                    success,
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        });
    }
    while loaders.join_next().await.is_some() {}
    let mut status = MaintenanceClient::new(
        Channel::from_shared(format!("http://{endpoint}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let term_before = status
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .raft_term;

    let stop = Instant::now() + LOAD_TIME;
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..READERS {
        let endpoint = endpoint.clone();
        readers.spawn(async move {
            let mut kv = kv(&endpoint).await;
            let mut reads = 0;
            while Instant::now() < stop {
                let all = RequestOp {
                    request: Some(Request::RequestRange(RangeRequest {
                        key: b"big/".to_vec(),
                        range_end: b"big0".to_vec(),
                        ..Default::default()
                    })),
                };
                let resp = kv
                    .txn(TxnRequest {
                        success: vec![all],
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(resp.succeeded);
                reads += 1;
            }
            reads
        });
    }
    let mut writer = kv(&endpoint).await;
    let mut latencies = Vec::new();
    while Instant::now() < stop {
        let started = Instant::now();
        writer
            .put(PutRequest {
                key: b"writer".to_vec(),
                value: b"w".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        latencies.push(started.elapsed());
    }
    let mut reads = 0;
    while let Some(done) = readers.join_next().await {
        reads += done.unwrap();
    }
    let term_after = status
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .raft_term;
    latencies.sort();
    let worst = *latencies.last().unwrap();
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "{reads} huge read-only txns ({KEYS} keys each) and {} writes in {LOAD_TIME:?}: write p99 \
         {p99:?}, worst {worst:?}; term {term_before} -> {term_after}",
        latencies.len()
    );
    assert!(reads >= READERS, "the huge reads did not run");
    assert_eq!(
        term_after, term_before,
        "an election happened while the huge reads ran: the leader's heartbeats were held up"
    );
    assert!(
        worst <= WRITE_BOUND,
        "a write took {worst:?} while the huge reads ran (p99 {p99:?})"
    );
    let floor = MIN_WRITES_PER_SECOND * LOAD_TIME.as_secs() as usize;
    assert!(
        latencies.len() >= floor,
        "only {} writes in {LOAD_TIME:?} while the huge reads ran (at least {floor} expected)",
        latencies.len()
    );
}
