//! What a member cut off from the rest of its cluster reports, and that it recovers when the
//! partition heals: a leader without its quorum and a follower without its leader stop vouching
//! for a leader (etcd's CheckQuorum and its followers' election timeout), so `hasleader`
//! requests fail with "no leader", `hasleader` watch streams are cut, /health and /readyz fail
//! and `etcd_server_has_leader` is 0; and a cut-off leader answers no keep-alive, so no lease
//! it can no longer vouch for is extended; and the peers' connections outlive the partition.
//! Real etcd 3.7 runs the same scenario as calibration (it extends leases until its leader steps
//! down, which oxcd does not).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use oxcd_jepsen::cluster::{Cluster, ClusterOptions, Flavor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

mod common;

/// How soon a cut-off member must say it has no leader (etcd: ~1.3-2 s with a 1 s election
/// timeout).
const REPORTS_NO_LEADER_WITHIN: Duration = Duration::from_secs(3);
/// How soon a `hasleader` watch stream must be cut (etcd: three checks, one per election
/// timeout, after the member lost its leader: 3.3-4.3 s).
const CUTS_STREAMS_WITHIN: Duration = Duration::from_secs(7);
const RECOVERS_WITHIN: Duration = Duration::from_secs(8);

/// An HTTP GET of `url` (plain HTTP/1.1): the status code and the body.
async fn http_get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(host).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).await.ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

/// What the member at `metrics` (its metrics URL) and `endpoint` reports about its leader.
#[derive(Debug, Default, Clone, PartialEq)]
struct Report {
    has_leader_metric: Option<bool>,
    health_no_leader: bool,
    /// A linearizable Range with `hasleader`: "no leader", or something else (ok or an error).
    range_no_leader: bool,
}

async fn report(metrics: &str, endpoint: &str) -> Report {
    let metric = http_get(&format!("{metrics}/metrics"))
        .await
        .and_then(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix("etcd_server_has_leader "))
                .map(|v| v.trim() == "1")
        });
    let health = http_get(&format!("{metrics}/health")).await;
    let range = async {
        let mut client = require_leader(endpoint).await?;
        client.get("probe", None).await.err().map(|e| e.to_string())
    };
    let range = tokio::time::timeout(Duration::from_secs(1), range)
        .await
        .ok()
        .flatten();
    Report {
        has_leader_metric: metric,
        health_no_leader: health
            .is_some_and(|(code, body)| code == 503 && body.contains("RAFT NO LEADER")),
        range_no_leader: range.is_some_and(|e| e.contains("etcdserver: no leader")),
    }
}

async fn require_leader(endpoint: &str) -> Option<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(1))
        .with_require_leader(true);
    Client::connect([endpoint], Some(options)).await.ok()
}

fn binary(flavor: Flavor) -> PathBuf {
    match flavor {
        Flavor::Oxcd => common::binary(flavor),
        Flavor::Etcd => common::etcd37_binary(),
    }
}

/// Keep-alives sent every 250 ms to the member at `endpoint`, with when each was sent and
/// whether it was answered with a live TTL.
fn keep_alive_forever(endpoint: String, lease: i64) -> Arc<Mutex<Vec<(Instant, bool)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let record = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok(mut client) =
                oxcd_jepsen::cluster::connect(&endpoint, Duration::from_secs(2)).await
            else {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            let sent = Instant::now();
            let opened =
                tokio::time::timeout(Duration::from_secs(2), client.lease_keep_alive(lease)).await;
            let Ok(Ok((mut keeper, mut answers))) = opened else {
                record.lock().unwrap().push((sent, false));
                continue;
            };
            record.lock().unwrap().push((sent, true));
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let sent = Instant::now();
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                let answer = tokio::time::timeout(Duration::from_secs(2), answers.message()).await;
                let alive = matches!(&answer, Ok(Ok(Some(r))) if r.ttl() > 0);
                record.lock().unwrap().push((sent, alive));
                if !matches!(answer, Ok(Ok(Some(_)))) {
                    break;
                }
            }
        }
    });
    log
}

async fn isolated_member_stops_vouching_for_a_leader(flavor: Flavor, isolate_leader: bool) {
    let dir = common::results_dir(&format!("leadership-{flavor}-{isolate_leader}"));
    let cluster = Cluster::start(&ClusterOptions {
        flavor,
        binary: binary(flavor),
        members: 3,
        dir: dir.clone(),
        ready_timeout: Duration::from_secs(30),
        power_disks: false,
    })
    .await
    .unwrap_or_else(|e| panic!("starting a {flavor} cluster: {e:#}"));
    let leader = loop {
        if let Some(leader) = cluster.leader().await {
            break leader;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let victim = if isolate_leader {
        leader
    } else {
        (leader + 1) % 3
    };
    let (endpoint, metrics) = (cluster.endpoint(victim), cluster.metrics_url(victim));
    let context = format!(
        "{flavor}, {} isolated",
        if isolate_leader { "leader" } else { "follower" }
    );

    let mut client = oxcd_jepsen::cluster::connect(&endpoint, Duration::from_secs(5))
        .await
        .unwrap();
    let lease = client.lease_grant(30, None).await.unwrap().id();
    let keep_alives = keep_alive_forever(endpoint.clone(), lease);
    let mut watching = require_leader(&endpoint).await.unwrap();
    let mut events = watching.watch("w", None).await.unwrap();
    client.put("w", "before", None).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), events.message()).await;
    assert!(
        matches!(first, Ok(Ok(Some(_)))),
        "{context}: the watch works before the partition"
    );
    let healthy = report(&metrics, &endpoint).await;
    assert_eq!(
        healthy,
        Report {
            has_leader_metric: Some(true),
            ..Default::default()
        },
        "{context}: before the partition"
    );

    cluster.network().isolate(victim);
    let cut = Instant::now();
    let watch_end = tokio::spawn(async move {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                ended => return (Instant::now(), format!("{ended:?}")),
            }
        }
    });
    let mut seen = Report::default();
    let mut reported_at = None;
    while cut.elapsed() < REPORTS_NO_LEADER_WITHIN + Duration::from_secs(2) {
        seen = report(&metrics, &endpoint).await;
        if seen.has_leader_metric == Some(false) && seen.health_no_leader && seen.range_no_leader {
            reported_at = Some(cut.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reported_at =
        reported_at.unwrap_or_else(|| panic!("{context}: still vouching for a leader: {seen:?}"));
    assert!(
        reported_at <= REPORTS_NO_LEADER_WITHIN,
        "{context}: reported no leader only after {reported_at:?}"
    );
    let (ended_at, how) = tokio::time::timeout(CUTS_STREAMS_WITHIN, watch_end)
        .await
        .unwrap_or_else(|_| panic!("{context}: the hasleader watch stream was not cut"))
        .unwrap();
    assert!(
        how.contains("etcdserver: no leader"),
        "{context}: the watch stream ended with {how}"
    );
    println!(
        "{context}: no leader reported after {reported_at:?}, watch cut after {:?}",
        ended_at - cut
    );
    if flavor == Flavor::Oxcd {
        let answered: Vec<Duration> = keep_alives
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent, alive)| *alive && *sent > cut)
            .map(|(sent, _)| *sent - cut)
            .collect();
        assert!(
            answered.is_empty(),
            "{context}: keep-alives sent after the partition were answered ({answered:?} after it)"
        );
    }

    let connections_at_heal = cluster.network().peer_connections();
    cluster.network().heal();
    let healed = Instant::now();
    loop {
        let now = report(&metrics, &endpoint).await;
        if now == healthy {
            break;
        }
        assert!(
            healed.elapsed() < RECOVERS_WITHIN,
            "{context}: not recovered {RECOVERS_WITHIN:?} after the heal: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reopened = cluster.network().peer_connections() - connections_at_heal;
    println!("{context}: peer connections opened after the heal: {reopened}");
    if flavor == Flavor::Oxcd {
        assert_eq!(
            reopened, 0,
            "{context}: the heal closed peer connections (the calls given up on during the \
             partition arrive at once, and each is reset before it is accepted)"
        );
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oxcd_isolated_leader_stops_vouching() {
    isolated_member_stops_vouching_for_a_leader(Flavor::Oxcd, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oxcd_isolated_follower_stops_vouching() {
    isolated_member_stops_vouching_for_a_leader(Flavor::Oxcd, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_isolated_leader_stops_vouching() {
    isolated_member_stops_vouching_for_a_leader(Flavor::Etcd, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_isolated_follower_stops_vouching() {
    isolated_member_stops_vouching_for_a_leader(Flavor::Etcd, false).await;
}
