//! /metrics against etcd's published monitoring (etcd's `contrib/mixin`): every series selector
//! of its Grafana dashboard (both the current and the Grafana 7 one) and of its Prometheus
//! alerting rules must match samples on every member of a 3-member cluster under a short
//! write/read/watch/lease load (the failed-send series once a member is down), with etcd's
//! metric types. etcd 3.7 runs first, which calibrates the list; then oxcd.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::WatchStream;
use etcd_client::{GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions};
use oxcd_tests::cluster::Cluster;
use oxcd_tests::Flavor;

/// The selectors of etcd's dashboards and alerts, without the scrape-target matchers they all
/// add (`job=~".*etcd.*"`, the cluster label), which Prometheus attaches, not etcd. `up`, which
/// the alerts also use, is Prometheus' own.
const DASHBOARD_AND_ALERT_SELECTORS: &[&str] = &[
    // Alerts: etcdNoLeader, etcdHighNumberOfLeaderChanges.
    "etcd_server_has_leader",
    "etcd_server_leader_changes_seen_total",
    // etcdHighNumberOfFailedGRPCRequests.
    r#"grpc_server_handled_total{grpc_code=~"Unknown|FailedPrecondition|ResourceExhausted|Internal|Unavailable|DataLoss|DeadlineExceeded"}"#,
    "grpc_server_handled_total",
    // etcdGRPCRequestsSlow (a --metrics extensive histogram).
    r#"grpc_server_handling_seconds_bucket{grpc_method!="Defragment",grpc_type="unary"}"#,
    // etcdMemberCommunicationSlow, etcdHighNumberOfFailedProposals, etcdHighFsyncDurations,
    // etcdHighCommitDurations.
    "etcd_network_peer_round_trip_time_seconds_bucket",
    "etcd_server_proposals_failed_total",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    // etcdDatabaseQuotaLowSpace, etcdExcessiveDatabaseGrowth, etcdDatabaseHighFragmentationRatio.
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_server_quota_backend_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    // Dashboard: RPC rate, failed RPC rate.
    r#"grpc_server_started_total{grpc_type="unary"}"#,
    r#"grpc_server_handled_total{grpc_type="unary",grpc_code=~"Unknown|FailedPrecondition|ResourceExhausted|Internal|Unavailable|DataLoss|DeadlineExceeded"}"#,
    // Active streams (started minus handled).
    r#"grpc_server_started_total{grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}"#,
    r#"grpc_server_handled_total{grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}"#,
    r#"grpc_server_started_total{grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"}"#,
    r#"grpc_server_handled_total{grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"}"#,
    // Memory, client and peer traffic.
    "process_resident_memory_bytes",
    "etcd_network_client_grpc_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_network_peer_received_bytes_total",
    "etcd_network_peer_sent_bytes_total",
    // Raft proposals (Grafana 7 dashboard).
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
];

/// etcdMembersDown's selector: etcd has these series only once a send to a peer failed, so they
/// are looked for on the members left when one is down.
const PEER_DOWN_SELECTOR: &str = "etcd_network_peer_sent_failures_total";

/// Other etcd series oxcd gives, with etcd's meaning as closely as oxcd has it.
const OTHER_ETCD_SERIES: &[&str] = &[
    "etcd_server_is_leader",
    "etcd_server_slow_apply_total",
    "etcd_server_slow_read_indexes_total",
    "etcd_server_read_indexes_failed_total",
    "etcd_server_heartbeat_send_failures_total",
    "etcd_server_health_success",
    "etcd_server_health_failures",
    "etcd_server_id",
    "etcd_server_version",
    "etcd_cluster_version",
    "etcd_disk_backend_snapshot_duration_seconds_bucket",
    "etcd_disk_backend_defrag_duration_seconds_bucket",
    "etcd_disk_defrag_inflight",
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_range_total",
    "etcd_mvcc_txn_total",
    "etcd_debugging_mvcc_keys_total",
    "etcd_debugging_mvcc_watch_stream_total",
    "etcd_debugging_mvcc_watcher_total",
    "etcd_debugging_mvcc_slow_watcher_total",
    "etcd_debugging_mvcc_events_total",
    "etcd_debugging_mvcc_pending_events_total",
    "etcd_debugging_mvcc_db_compaction_keys_total",
    "etcd_debugging_mvcc_current_revision",
    "etcd_debugging_mvcc_compact_revision",
    "etcd_network_active_peers",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// How long the series that come with time (etcd's peer probes run every 4 s) may take.
const SERIES_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_dashboards_and_alerts_find_their_series() {
    let mut types = Vec::new();
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        let mut cluster = Cluster::start(flavor, 3, &["--metrics=extensive"]).await;
        let streams = load(&cluster).await;
        let scrapes = scrape_until_every_selector_matches(&cluster).await;

        // The Range on a compacted revision was counted with its code, wherever it went.
        let out_of_range = total(
            &scrapes,
            r#"grpc_server_handled_total{grpc_service="etcdserverpb.KV",grpc_method="Range",grpc_type="unary",grpc_code="OutOfRange"}"#,
        );
        assert!(out_of_range >= 1.0, "{flavor}: no OutOfRange Range counted");
        // The 100 Puts: each handled OK, one message each way.
        for selector in [
            r#"grpc_server_handled_total{grpc_method="Put",grpc_code="OK"}"#,
            r#"grpc_server_msg_received_total{grpc_method="Put"}"#,
            r#"grpc_server_msg_sent_total{grpc_method="Put"}"#,
            "etcd_mvcc_put_total",
        ] {
            let sum = total(&scrapes, selector);
            assert!(sum >= 100.0, "{flavor}: {selector} sums to {sum}");
        }
        if flavor == Flavor::Oxcd {
            memory_holders_add_up(&scrapes);
        }

        drop(streams);
        let (down, down_id) = member_down(&mut cluster).await;
        let rate = failed_sends_per_second(&cluster, &down_id).await;
        eprintln!("{flavor}: {rate:.0} failed sends a second to a stopped member");
        assert!(
            rate < MAX_FAILED_SENDS_PER_SECOND,
            "{flavor}: the others tried a stopped member {rate:.0} times a second"
        );

        let mut kinds = BTreeMap::new();
        for name in DASHBOARD_AND_ALERT_SELECTORS
            .iter()
            .chain(OTHER_ETCD_SERIES)
            .chain([&PEER_DOWN_SELECTOR])
            .map(|s| family(Selector::parse(s).name))
        {
            let kind = down
                .types
                .get(name)
                .unwrap_or_else(|| panic!("{flavor}: no TYPE line for {name}"));
            kinds.insert(name, kind.clone());
        }
        types.push(kinds);
    }
    assert_eq!(
        types[0], types[1],
        "metric types: etcd 3.7 (left), oxcd (right)"
    );
}

/// Streams the load leaves open, so the active-stream panels see them.
struct OpenStreams {
    _watch: WatchStream,
    _keep_alive: (LeaseKeeper, LeaseKeepAliveStream),
}

/// Writes, reads (through every member), a watch and a lease keep-alive stream, a compaction
/// and a Range below it (which fails with OutOfRange).
async fn load(cluster: &Cluster) -> OpenStreams {
    let mut client = cluster.client_all().await;
    let watch = client
        .watch("load/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    responses.message().await.unwrap();
    let mut revision = 0;
    for i in 0..100 {
        let options = (i % 10 == 0).then(|| PutOptions::new().with_lease(lease));
        let put = client
            .put(format!("load/{i}"), "value", options)
            .await
            .unwrap();
        revision = put.header().unwrap().revision();
        client.get(format!("load/{i}"), None).await.unwrap();
    }
    client
        .get(
            "load/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    client.delete("load/0", None).await.unwrap();
    client.compact(revision, None).await.unwrap();
    let compacted = client
        .get(
            "load/1",
            Some(GetOptions::new().with_revision(revision - 50)),
        )
        .await
        .unwrap_err();
    assert!(
        compacted
            .to_string()
            .contains("required revision has been compacted"),
        "{compacted}"
    );
    OpenStreams {
        _watch: watch,
        _keep_alive: (keeper, responses),
    }
}

/// A stopped member is dialled again after a pause, not at once: each heartbeat tick (10 a
/// second by default) may try it for its beacon, its heartbeat and its appends, plus the probes.
/// Without a pause a leader dialled it some 8,000 times a second.
const MAX_FAILED_SENDS_PER_SECOND: f64 = 100.0;

/// How often the running members' sends to member `down` (hex id) fail, over 3 s of writes.
async fn failed_sends_per_second(cluster: &Cluster, down: &str) -> f64 {
    const WINDOW: Duration = Duration::from_secs(3);
    let failed = async || {
        let selector = Selector::parse(PEER_DOWN_SELECTOR);
        let mut sum = 0.0;
        for endpoint in cluster.endpoints() {
            let scrape = Scrape::parse(&get_metrics(&endpoint).await);
            sum += matching(&scrape, &selector)
                .filter(|s| s.labels.get("To").map(String::as_str) == Some(down))
                .map(|s| s.value)
                .sum::<f64>();
        }
        sum
    };
    let before = failed().await;
    let mut client = cluster.client_all().await;
    let until = tokio::time::Instant::now() + WINDOW;
    while tokio::time::Instant::now() < until {
        client.put("down/k", "v", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (failed().await - before) / WINDOW.as_secs_f64()
}

/// Kills a follower and writes on; returns the scrape of a remaining member that counts failed
/// sends to it (the leader's appends and heartbeats to it fail), and the member's id in hex.
async fn member_down(cluster: &mut Cluster) -> (Scrape, String) {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let down = cluster.member_id(follower).await;
    cluster.kill(follower);
    let mut client = cluster.members()[leader].client().await;
    let selector = Selector::parse(PEER_DOWN_SELECTOR);
    let deadline = tokio::time::Instant::now() + SERIES_WAIT;
    loop {
        client.put("down/k", "v", None).await.unwrap();
        for endpoint in cluster.endpoints() {
            let scrape = Scrape::parse(&get_metrics(&endpoint).await);
            let failed: f64 = matching(&scrape, &selector)
                .filter(|s| s.labels.get("To") == Some(&format!("{down:x}")))
                .map(|s| s.value)
                .sum();
            if failed > 0.0 {
                return (scrape, format!("{down:x}"));
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no {PEER_DOWN_SELECTOR}{{To=\"{down:x}\"}} after {SERIES_WAIT:?} down",
            cluster.flavor()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every member's /metrics, once every selector matches a sample in each.
async fn scrape_until_every_selector_matches(cluster: &Cluster) -> Vec<Scrape> {
    let selectors: Vec<Selector> = DASHBOARD_AND_ALERT_SELECTORS
        .iter()
        .chain(OTHER_ETCD_SERIES)
        .map(|s| Selector::parse(s))
        .collect();
    let deadline = tokio::time::Instant::now() + SERIES_WAIT;
    loop {
        let mut scrapes = Vec::new();
        for endpoint in cluster.endpoints() {
            scrapes.push(Scrape::parse(&get_metrics(&endpoint).await));
        }
        let missing: Vec<String> = scrapes
            .iter()
            .zip(cluster.endpoints())
            .flat_map(|(scrape, endpoint)| {
                selectors
                    .iter()
                    .filter(|s| matching(scrape, s).next().is_none())
                    .map(move |s| format!("{endpoint}: {}", s.text))
            })
            .collect();
        if missing.is_empty() {
            return scrapes;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{}: selectors with no sample after {SERIES_WAIT:?}:\n{}",
                cluster.flavor(),
                missing.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn get_metrics(endpoint: &str) -> String {
    oxcd_tests::metrics_text(endpoint).await.unwrap()
}

/// One member's samples and metric types.
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Scrape {
    /// The Prometheus text format, as both servers write it.
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(typed) = line.strip_prefix("# TYPE ") {
                let (name, kind) = typed.split_once(' ').expect("# TYPE <name> <type>");
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("<series> <value>");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("a sample value in {line:?}")),
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Scrape { samples, types }
    }
}

/// `a="x",b="y"` (values with Go's escapes `\"`, `\\`, `\n`).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => break,
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// A PromQL instant-vector selector: a name and label matchers (`=`, `!=`, and `=~` with an
/// alternation of literal values, the only regular expressions etcd's rules use).
struct Selector {
    text: &'static str,
    name: &'static str,
    matchers: Vec<(&'static str, Match)>,
}

enum Match {
    Equal(&'static str),
    NotEqual(&'static str),
    OneOf(Vec<&'static str>),
}

impl Selector {
    fn parse(text: &'static str) -> Selector {
        let (name, matchers) = match text.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("a closing brace")),
            None => (text, ""),
        };
        let matchers = matchers
            .split(',')
            .filter(|m| !m.is_empty())
            .map(|m| {
                let unquote = |v: &'static str| {
                    v.strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("a quoted value")
                };
                if let Some((label, v)) = m.split_once("=~") {
                    let v = unquote(v);
                    assert!(
                        v.chars().all(|c| c.is_ascii_alphanumeric() || c == '|'),
                        "only alternations of literals: {v}"
                    );
                    (label, Match::OneOf(v.split('|').collect()))
                } else if let Some((label, v)) = m.split_once("!=") {
                    (label, Match::NotEqual(unquote(v)))
                } else {
                    let (label, v) = m.split_once('=').expect("a matcher");
                    (label, Match::Equal(unquote(v)))
                }
            })
            .collect();
        Selector {
            text,
            name,
            matchers,
        }
    }
}

fn matching<'a>(scrape: &'a Scrape, selector: &'a Selector) -> impl Iterator<Item = &'a Sample> {
    scrape.samples.iter().filter(move |sample| {
        sample.name == selector.name
            && selector.matchers.iter().all(|(label, m)| {
                let value = sample.labels.get(*label).map_or("", String::as_str);
                match m {
                    Match::Equal(v) => value == *v,
                    Match::NotEqual(v) => value != *v,
                    Match::OneOf(vs) => vs.contains(&value),
                }
            })
    })
}

/// oxcd's own `oxcd_memory_bytes`: on each member, every holder reported, the writes in the
/// memtables, and the allocator's figures consistent with each other and with the process RSS.
fn memory_holders_add_up(scrapes: &[Scrape]) {
    for scrape in scrapes {
        let held = |holder: &str| {
            let values: Vec<f64> = scrape
                .samples
                .iter()
                .filter(|s| {
                    s.name == "oxcd_memory_bytes"
                        && s.labels.get("holder").map(String::as_str) == Some(holder)
                })
                .map(|s| s.value)
                .collect();
            assert_eq!(
                values.len(),
                1,
                "oxcd_memory_bytes{{holder={holder}}}: {values:?}"
            );
            values[0]
        };
        assert!(held("rocksdb_memtables") > 0.0);
        held("rocksdb_block_cache");
        held("rocksdb_table_readers");
        let allocated = held("allocator_allocated");
        let resident = held("allocator_resident");
        held("allocator_retained");
        let process = matching(scrape, &Selector::parse("process_resident_memory_bytes"))
            .map(|s| s.value)
            .next()
            .expect("process_resident_memory_bytes");
        assert!(
            0.0 < allocated && allocated <= resident && resident <= process,
            "allocated {allocated}, resident {resident}, process RSS {process}"
        );
    }
}

/// The sum of the samples `selector` matches over every member.
fn total(scrapes: &[Scrape], selector: &'static str) -> f64 {
    let selector = Selector::parse(selector);
    scrapes
        .iter()
        .flat_map(|s| matching(s, &selector))
        .map(|s| s.value)
        .sum()
}

/// The metric family of a sample name: a histogram's `_bucket`, `_sum` and `_count` are its.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}
