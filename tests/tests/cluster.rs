//! Three-member clusters of real processes on loopback: election, failover under concurrent
//! writes, catch-up of a member that missed snapshots, learners, HashKV agreement, requests served
//! through followers, and etcdctl's cluster commands.
//!
//! Each test body is written once and generated for both flavours as `<test>::etcd` and
//! `<test>::oxcd` (so `cargo test --test cluster -- etcd` runs the reference side alone). Every
//! expectation, including each error string, is what etcd 3.4 does; a failure of `::etcd` is a
//! wrong test, a failure of `::oxcd` only is an oxcd gap.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use oxcd_tests::cluster::{etcdctl, Cluster, ELECTION_TIMEOUT};
use oxcd_tests::watch_checker::{header_revision, Kind, Session};
use oxcd_tests::{expect_grpc_error, require_etcd, Flavor};

/// Bounds each test body, so a stuck cluster fails its test (with the members' logs) instead of
/// hanging the run.
const TEST_LIMIT: Duration = Duration::from_secs(150);

/// etcd elects a leader within one to two election timeouts of start-up or of losing one.
const ELECTION_WAIT: Duration = Duration::from_secs(10);

const LEARNER_RPC: &str = "etcdserver: rpc not supported for learner";
const NOT_A_LEARNER: &str = "etcdserver: can only promote a learner member";
const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";

/// Generates `mod <test> { etcd, oxcd }` for each `async fn <test>(&mut Cluster)`, each starting
/// its own 3-member cluster with the given extra flags. The cluster outlives the body's timeout,
/// so a timed-out test still prints every member's log tail.
macro_rules! cluster_tests {
    ($($test:ident [$($arg:expr),*];)+) => {$(
        mod $test {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                require_etcd();
                let mut cluster = Cluster::start(Flavor::Etcd, 3, &[$($arg),*]).await;
                bounded(super::$test(&mut cluster)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn oxcd() {
                let mut cluster = Cluster::start(Flavor::Oxcd, 3, &[$($arg),*]).await;
                bounded(super::$test(&mut cluster)).await;
            }
        }
    )+};
}

cluster_tests! {
    election [];
    leader_kill_while_writing [];
    snapshot_catch_up ["--snapshot-count=100"];
    watch_across_catch_up ["--snapshot-count=100"];
    paused_follower_rejoins_quietly [];
    learner_add_promote_remove [];
    hashkv_equal [];
    follower_forwarding [];
    cli_cluster_commands [];
}

/// A cluster of one grows to three with `member add` (voters, not learners), each new member
/// started as etcdctl says after the add has answered. Going from one voter to two, the new
/// member is needed for every quorum, so the add must answer before it can commit with it.
async fn one_member_grows_to_three(flavor: Flavor) {
    let mut cluster = Cluster::start(flavor, 1, &[]).await;
    cluster.wait_for_leader(ELECTION_WAIT).await;
    let mut first = cluster.client_all().await;
    first.put("grow/0", "before", None).await.unwrap();
    for (n, name) in ["n2", "n3"].into_iter().enumerate() {
        let added = cluster.add_member(name, false).await;
        assert_eq!(
            added.printed["ETCD_INITIAL_CLUSTER_STATE"], "existing",
            "{added:?}"
        );
        let mut on_new = cluster.members()[added.index].client().await;
        on_new
            .put(format!("grow/{}", n + 1), "after", None)
            .await
            .unwrap_or_else(|e| panic!("put through {name}: {e}"));
    }
    for i in 0..3 {
        let mut c = cluster.members()[i].client().await;
        let kvs = c
            .get("grow/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(kvs.kvs().len(), 3, "member {i} has every write");
    }
    let members = cluster
        .client_all()
        .await
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.is_learner()))
        .collect::<BTreeSet<_>>();
    let voters = ["n1", "n2", "n3"].map(|n| (n.to_string(), false));
    assert_eq!(members, BTreeSet::from(voters));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_grows_to_three_etcd() {
    require_etcd();
    bounded(one_member_grows_to_three(Flavor::Etcd)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_grows_to_three_oxcd() {
    bounded(one_member_grows_to_three(Flavor::Oxcd)).await;
}

/// etcd's --initial-election-tick-advance: a cluster restarted whole elects a few heartbeats
/// after its members reach each other, not a whole election timeout later (with this timeout,
/// 5 s of silence before the first campaign without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_whole_advances_its_election_ticks_oxcd() {
    bounded(async {
        let flags = ["--election-timeout=5000", "--log-level=info"];
        let mut cluster = Cluster::start(Flavor::Oxcd, 3, &flags).await;
        for i in 0..3 {
            cluster.terminate(i);
        }
        let started = Instant::now();
        cluster.restart_all().await;
        let serving = started.elapsed();
        let advanced = cluster
            .members()
            .iter()
            .filter(|m| {
                m.log_of_this_launch()
                    .contains("advanced the election ticks after a restart")
            })
            .count();
        assert!(advanced >= 2, "{advanced} members advanced their ticks");
        assert!(
            serving < Duration::from_secs(5),
            "serving {serving:?} after the restart, an election timeout or more"
        );
    })
    .await;
}

async fn bounded(body: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("the test body did not finish within {TEST_LIMIT:?}");
    }
}

/// Retries `check` every 100 ms until it returns `Ok`, and returns that; after `timeout`,
/// fails with its last complaint.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let complaint = match check().await {
            Ok(value) => return value,
            Err(complaint) => complaint,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: still not so after {timeout:?}: {complaint}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn followers(cluster: &Cluster, leader: usize) -> Vec<usize> {
    (0..cluster.members().len())
        .filter(|&i| i != leader)
        .collect()
}

/// Keys and values under `prefix` as member `i` alone sees them.
async fn read_prefix(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
    serializable: bool,
) -> Result<Vec<(String, String)>, String> {
    let mut client = cluster.members()[i].client().await;
    let mut options = GetOptions::new().with_prefix();
    if serializable {
        options = options.with_serializable();
    }
    let resp = client
        .get(prefix, Some(options))
        .await
        .map_err(|e| format!("range on {}: {e}", cluster.members()[i].endpoint()))?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect())
}

/// `None` if every key of `expected` is in `found` with its key as value, else a complaint
/// counting those that are not and naming the first.
/// Waits until member `i` serves, serializably, exactly the keys `expected` under `prefix`,
/// each with itself as its value.
async fn serves_every_key(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
    expected: &BTreeSet<String>,
    what: &str,
) {
    eventually(Duration::from_secs(30), what, || async move {
        let found = read_prefix(cluster, i, prefix, true).await?;
        if found.len() != expected.len() {
            return Err(format!("{} of {} keys", found.len(), expected.len()));
        }
        missing(expected, &found).map_or(Ok(()), Err)
    })
    .await;
}

fn missing(expected: &BTreeSet<String>, found: &[(String, String)]) -> Option<String> {
    let found: BTreeSet<(&str, &str)> = found.iter().map(|(k, v)| (&**k, &**v)).collect();
    let absent: Vec<&String> = expected
        .iter()
        .filter(|k| !found.contains(&(k.as_str(), k.as_str())))
        .collect();
    (!absent.is_empty()).then(|| format!("{} missing, first {}", absent.len(), absent[0]))
}

/// The `members` of `etcdctl member list -w json` as (id, name, isLearner), sorted by id.
/// etcd omits `isLearner` when false and `name` for a member that has not started.
fn member_rows(list: &serde_json::Value) -> Vec<(u64, String, bool)> {
    let mut rows: Vec<(u64, String, bool)> = list["members"]
        .as_array()
        .unwrap_or_else(|| panic!("member list without members: {list}"))
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().expect("member ID"),
                m["name"].as_str().unwrap_or("").to_string(),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Waits until `etcdctl member list` through `endpoints` shows exactly `expected`.
async fn wait_for_member_rows(endpoints: &[String], expected: &[(u64, String, bool)], what: &str) {
    eventually(Duration::from_secs(10), what, || async move {
        let rows = member_rows(&member_list_json(endpoints).await?);
        (rows == expected)
            .then_some(())
            .ok_or(format!("{rows:?}, expected {expected:?}"))
    })
    .await;
}

async fn member_list_json(endpoints: &[String]) -> Result<serde_json::Value, String> {
    let out = etcdctl(endpoints, &["member", "list", "-w", "json"]).await;
    if !out.success {
        return Err(format!("member list failed: {out:?}"));
    }
    Ok(out.json())
}

// -------------------------------------------------------------------------------------------
// 1. election
// -------------------------------------------------------------------------------------------

/// Exactly one leader, named by every member; MemberList shows the three started voters with
/// the names and URLs they were started with.
async fn election(cluster: &mut Cluster) {
    let leader = cluster.wait_for_leader(ELECTION_WAIT).await;
    let mut ids = Vec::new();
    let mut leaders = BTreeSet::new();
    let mut cluster_ids = BTreeSet::new();
    for i in 0..3 {
        let status = cluster
            .status(i)
            .await
            .expect("every member answers Status");
        let header = status.header().expect("Status header");
        ids.push(header.member_id());
        cluster_ids.insert(header.cluster_id());
        leaders.insert(status.leader());
        assert!(!status.is_learner(), "member {i} reports itself a learner");
    }
    assert_eq!(
        leaders,
        BTreeSet::from([ids[leader]]),
        "every member names member {leader} leader"
    );
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        3,
        "member ids are distinct: {ids:x?}"
    );
    assert_eq!(cluster_ids.len(), 1, "one cluster id: {cluster_ids:x?}");

    let mut expected: Vec<_> = cluster
        .members()
        .iter()
        .zip(&ids)
        .map(|(m, &id)| {
            let spec = m.spec();
            (
                id,
                spec.name.clone(),
                vec![spec.peer_url()],
                vec![spec.client_url()],
                false,
            )
        })
        .collect();
    expected.sort();
    for i in 0..3 {
        let client = cluster.members()[i].client().await;
        let expected = &expected;
        // Each member applies the others' publication of their names through Raft, so a
        // member's list may lag for a moment. etcd lists members in ascending id order.
        eventually(Duration::from_secs(5), "MemberList names all three", || {
            let mut client = client.clone();
            async move {
                let list = client.member_list().await.map_err(|e| e.to_string())?;
                let got: Vec<_> = list
                    .members()
                    .iter()
                    .map(|m| {
                        (
                            m.id(),
                            m.name().to_string(),
                            m.peer_urls().to_vec(),
                            m.client_urls().to_vec(),
                            m.is_learner(),
                        )
                    })
                    .collect();
                if &got == expected {
                    Ok(())
                } else {
                    Err(format!("member {i} lists {got:?}, expected {expected:?}"))
                }
            }
        })
        .await;
    }
}

// -------------------------------------------------------------------------------------------
// 2. leader_kill_while_writing
// -------------------------------------------------------------------------------------------

const WRITERS: usize = 4;
/// A write not acknowledged within this counts as failed; it may or may not have been applied.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// "A few election timeouts": the election itself takes one to two.
const FAILOVER_LIMIT: Duration = ELECTION_TIMEOUT.saturating_mul(5);

#[derive(Debug, Default)]
struct WriterReport {
    acked: usize,
    failed: usize,
}

/// Puts unique keys (value = key) until `stop`, recording every acknowledged one.
async fn write_until_stopped(
    mut client: Client,
    prefix: String,
    acked: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
) -> WriterReport {
    let mut report = WriterReport::default();
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("{prefix}/{seq:06}");
        match tokio::time::timeout(WRITE_TIMEOUT, client.put(key.clone(), key.clone(), None)).await
        {
            Ok(Ok(_)) => {
                report.acked += 1;
                acked.lock().unwrap().insert(key);
            }
            _ => {
                report.failed += 1;
                // A dead endpoint refuses at once; do not spin on it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    report
}

/// SIGKILL of the leader under concurrent writes: a new leader serves within a few election
/// timeouts, and no acknowledged write is lost on any member, including the restarted one.
async fn leader_kill_while_writing(cluster: &mut Cluster) {
    let flavor = cluster.flavor();
    let leader = cluster.wait_for_leader(ELECTION_WAIT).await;
    let survivors = followers(cluster, leader);
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Half the writers balance over every endpoint, the doomed leader's included; the
        // others write through one follower each, which must forward to whoever leads.
        let client = if w % 2 == 0 {
            cluster.client_all().await
        } else {
            cluster.members()[survivors[w / 2 % 2]].client().await
        };
        writers.push(tokio::spawn(write_until_stopped(
            client,
            format!("w{w}"),
            acked.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked_before_kill = acked.lock().unwrap().len();
    assert!(
        acked_before_kill > 0,
        "no write was acknowledged before the kill"
    );

    let killed_at = Instant::now();
    cluster.kill(leader);
    // Failover is measured with puts sent after the kill, so a write the old leader had
    // already committed cannot count as the new leader's. A put sent while there is no leader
    // just waits, so a new one is sent every 100 ms and the first acknowledgement counts.
    let probe = cluster.members()[survivors[0]].client().await;
    let (acks, mut first_ack) = tokio::sync::mpsc::unbounded_channel();
    let prober = tokio::spawn(async move {
        loop {
            let (mut probe, acks) = (probe.clone(), acks.clone());
            tokio::spawn(async move {
                let put = probe.put("failover-probe", "after-kill", None);
                if let Ok(Ok(_)) = tokio::time::timeout(WRITE_TIMEOUT, put).await {
                    let _ = acks.send(Instant::now());
                }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let acked_at = tokio::time::timeout(3 * FAILOVER_LIMIT, first_ack.recv()).await;
    prober.abort();
    let acked_at = acked_at
        .unwrap_or_else(|_| {
            panic!(
                "no put succeeded within {:?} of killing the leader",
                3 * FAILOVER_LIMIT
            )
        })
        .expect("the prober holds the sender until aborted");
    let failover = acked_at - killed_at;
    println!(
        "[{flavor}] failover: {failover:?} from SIGKILL of the leader to the first acknowledged \
         put sent after it"
    );
    assert!(
        failover <= FAILOVER_LIMIT,
        "failover took {failover:?}, more than {FAILOVER_LIMIT:?}"
    );
    let new_leader = cluster.wait_for_leader(ELECTION_WAIT).await;
    assert_ne!(new_leader, leader, "the killed member cannot lead");

    // The writers keep going under the new leader, then while the old one rejoins.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart(leader).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for writer in writers {
        reports.push(writer.await.expect("writer task"));
    }
    let acked = acked.lock().unwrap().clone();
    println!(
        "[{flavor}] writers: {reports:?}; {} acknowledged in all, {acked_before_kill} before \
         the kill",
        acked.len()
    );
    assert!(
        acked.len() > acked_before_kill,
        "no write was acknowledged after the failover"
    );

    for i in 0..3 {
        let found = read_prefix(cluster, i, "w", false)
            .await
            .unwrap_or_else(|e| panic!("linearizable read: {e}"));
        if let Some(gap) = missing(&acked, &found) {
            panic!("member {i} (linearizable read) lacks acknowledged writes: {gap}");
        }
        // Failed writes may be there too, but only whole: every value is its key.
        if let Some((key, value)) = found.iter().find(|(k, v)| k != v) {
            panic!("member {i} holds {key} = {value}, a value never written");
        }
    }
    let cluster = &*cluster;
    for i in 0..3 {
        let acked = &acked;
        eventually(
            Duration::from_secs(10),
            &format!("member {i} serves every acknowledged key serializably"),
            || async move {
                let found = read_prefix(cluster, i, "w", true).await?;
                missing(acked, &found).map_or(Ok(()), Err)
            },
        )
        .await;
    }
}

// -------------------------------------------------------------------------------------------
// 3. snapshot_catch_up
// -------------------------------------------------------------------------------------------

const SNAPSHOT_KEYS: usize = 2000;
/// Few enough that a group-committing server still makes hundreds of Raft entries of them.
const SNAPSHOT_WRITERS: usize = 4;

/// With `--snapshot-count=100`, a follower that was down for 2000 writes (twenty snapshots, the
/// log compacted behind them) comes back with every key and the leader's applied index.
async fn snapshot_catch_up(cluster: &mut Cluster) {
    let leader = cluster.wait_for_leader(ELECTION_WAIT).await;
    let follower = followers(cluster, leader)[0];
    cluster.terminate(follower);

    let client = cluster.client_all().await;
    let mut tasks = Vec::new();
    for w in 0..SNAPSHOT_WRITERS {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            for seq in (w..SNAPSHOT_KEYS).step_by(SNAPSHOT_WRITERS) {
                let key = format!("snap/{seq:05}");
                client
                    .put(key.clone(), key.clone(), None)
                    .await
                    .unwrap_or_else(|e| panic!("put {key} with one member down: {e}"));
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let expected: BTreeSet<String> = (0..SNAPSHOT_KEYS).map(|s| format!("snap/{s:05}")).collect();
    // Leases travel in the snapshot too.
    let mut client = client.clone();
    let lease = client
        .lease_grant(600, None)
        .await
        .expect("lease grant with one member down")
        .id();
    client
        .put(
            "snaplease/k",
            "v",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("leased put with one member down");

    // Writes go on while the follower is caught up: an oxcd leader dumps its store for the
    // snapshot while it applies them, so the snapshot stands past the point it was sent for.
    let live_writer = tokio::spawn({
        let mut client = client.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(3);
            let mut written = 0usize;
            while Instant::now() < until {
                let key = format!("snaplive/{written:06}");
                client
                    .put(key.clone(), key.clone(), None)
                    .await
                    .unwrap_or_else(|e| panic!("put {key} while the follower catches up: {e}"));
                written += 1;
            }
            written
        }
    });
    cluster.restart(follower).await;
    let live_written = live_writer.await.expect("live writer task");
    let cluster = &*cluster;
    serves_every_key(
        cluster,
        follower,
        "snap/",
        &expected,
        "the restarted follower serves every key serializably",
    )
    .await;
    let live_expected: BTreeSet<String> = (0..live_written)
        .map(|i| format!("snaplive/{i:06}"))
        .collect();
    serves_every_key(
        cluster,
        follower,
        "snaplive/",
        &live_expected,
        "the restarted follower serves every key written while it caught up",
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the restarted follower's applied index reaches the leader's",
        || async move {
            let leader_status = cluster.status(leader).await.ok_or("leader silent")?;
            let follower_status = cluster.status(follower).await.ok_or("follower silent")?;
            let (l, f) = (
                leader_status.raft_applied_index(),
                follower_status.raft_applied_index(),
            );
            if f >= l {
                Ok(())
            } else {
                Err(format!("follower applied {f}, leader {l}"))
            }
        },
    )
    .await;
    let mut on_follower = cluster.members()[follower].client().await;
    let leases = on_follower
        .leases()
        .await
        .expect("lease list on the follower");
    assert!(
        leases.leases().iter().any(|l| l.id() == lease),
        "the caught-up follower knows lease {lease:x}: {:?}",
        leases.leases()
    );
    let leased = on_follower
        .get("snaplease/k", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable get on the follower");
    assert_eq!(leased.kvs().first().map(|kv| kv.lease()), Some(lease));
}

/// A follower paused for several election timeouts while writes go on comes back without
/// disturbing the leader: same leader, same term (it counted no silence while stopped, and
/// oxcd's PreVote would refuse it a campaign anyway), and it catches up.
async fn paused_follower_rejoins_quietly(cluster: &mut Cluster) {
    let leader = cluster.wait_for_leader(ELECTION_WAIT).await;
    let term = |status: Option<etcd_client::StatusResponse>| {
        status.expect("the leader answers Status").raft_term()
    };
    let term_before = term(cluster.status(leader).await);
    let follower = followers(cluster, leader)[0];
    let pid = cluster.members()[follower].pid().expect("follower runs");
    oxcd_tests::send_signal(pid, "STOP").expect("SIGSTOP the follower");
    let mut client = Client::connect([cluster.members()[leader].endpoint()], None)
        .await
        .expect("connect to the leader");
    let paused_until = Instant::now() + ELECTION_TIMEOUT * 3;
    let mut written = 0;
    while Instant::now() < paused_until {
        client
            .put(format!("pause/{written:04}"), "v", None)
            .await
            .unwrap_or_else(|e| panic!("put {written} while a follower is paused: {e}"));
        written += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    oxcd_tests::send_signal(pid, "CONT").expect("SIGCONT the follower");
    let last_key = format!("pause/{:04}", written - 1);
    let on_follower = cluster.members()[follower].client().await;
    eventually(
        Duration::from_secs(10),
        "the resumed follower has every write",
        || {
            let mut c = on_follower.clone();
            let key = last_key.clone();
            async move {
                let resp = c
                    .get(key, Some(GetOptions::new().with_serializable()))
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.kvs().is_empty() {
                    Err("not there yet".to_string())
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    // Time for a disruptive campaign to have happened, had there been one.
    tokio::time::sleep(ELECTION_TIMEOUT * 2).await;
    assert_eq!(
        cluster.wait_for_leader(ELECTION_WAIT).await,
        leader,
        "the leader changed after a follower came back"
    );
    assert_eq!(
        term(cluster.status(leader).await),
        term_before,
        "the term moved after a follower came back"
    );
}

/// A watch open on a follower that falls far behind (paused while the others write and
/// compact their logs, so oxcd catches it up with a snapshot) still delivers every event, in
/// order, once the follower is back.
async fn watch_across_catch_up(cluster: &mut Cluster) {
    let leader = cluster.wait_for_leader(ELECTION_WAIT).await;
    let follower = followers(cluster, leader)[0];
    let mut on_follower = cluster.members()[follower].client().await;
    let mut stream = on_follower
        .watch("paused/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch on the follower");
    let pid = cluster.members()[follower].pid().expect("follower runs");
    oxcd_tests::send_signal(pid, "STOP").expect("SIGSTOP the follower");
    let mut client = cluster.client_all().await;
    let leader_client = cluster.members()[leader].endpoint();
    client = Client::connect([leader_client], None)
        .await
        .unwrap_or(client);
    for seq in 0..PAUSED_KEYS {
        client
            .put(format!("paused/{seq:05}"), "v", None)
            .await
            .unwrap_or_else(|e| panic!("put {seq} while a follower is paused: {e}"));
    }
    oxcd_tests::send_signal(pid, "CONT").expect("SIGCONT the follower");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < PAUSED_KEYS {
        let resp = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {PAUSED_KEYS} events arrived", seen.len()))
            .expect("watch stream")
            .expect("watch stream open");
        assert!(!resp.canceled(), "watch canceled: {resp:?}");
        for event in resp.events() {
            let kv = event.kv().expect("event kv");
            seen.push(String::from_utf8_lossy(kv.key()).into_owned());
        }
    }
    let expected: Vec<String> = (0..PAUSED_KEYS).map(|s| format!("paused/{s:05}")).collect();
    assert_eq!(seen, expected, "events in order, none missing or repeated");
}

const PAUSED_KEYS: usize = 1500;

// -------------------------------------------------------------------------------------------
// 4. learner_add_promote_remove
// -------------------------------------------------------------------------------------------

/// The membership life cycle through etcdctl: add a learner, see it refuse what learners
/// refuse, promote it once in sync, remove another member; plus etcd's errors for promoting a
/// voter and removing an unknown member.
async fn learner_add_promote_remove(cluster: &mut Cluster) {
    cluster.wait_for_leader(ELECTION_WAIT).await;
    let voters = cluster.endpoints();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(cluster.member_id(i).await);
    }
    let cluster_id = cluster
        .status(0)
        .await
        .and_then(|s| s.header().map(|h| h.cluster_id()))
        .expect("Status header");

    let promote_voter = etcdctl(&voters, &["member", "promote", &format!("{:x}", ids[0])]).await;
    assert_eq!(
        promote_voter.error(),
        Some(NOT_A_LEARNER),
        "{promote_voter:?}"
    );
    let unknown = 0x0123_4567_89ab_cdef_u64;
    assert!(!ids.contains(&unknown));
    let remove_unknown = etcdctl(&voters, &["member", "remove", &format!("{unknown:x}")]).await;
    assert_eq!(
        remove_unknown.error(),
        Some(MEMBER_NOT_FOUND),
        "{remove_unknown:?}"
    );

    let mut client = cluster.client_all().await;
    client.put("before-learner", "1", None).await.unwrap();

    let added = cluster.add_member("n4", true).await;
    let learner = added.index;
    let learner_spec = cluster.members()[learner].spec().clone();
    assert_eq!(added.printed["ETCD_NAME"], "n4", "{added:?}");
    assert_eq!(
        added.printed["ETCD_INITIAL_CLUSTER_STATE"], "existing",
        "{added:?}"
    );
    assert_eq!(
        added.printed["ETCD_INITIAL_ADVERTISE_PEER_URLS"],
        learner_spec.peer_url(),
        "{added:?}"
    );
    let printed_cluster: BTreeSet<&str> =
        added.printed["ETCD_INITIAL_CLUSTER"].split(',').collect();
    let all_peers: BTreeSet<String> = cluster
        .members()
        .iter()
        .map(|m| format!("{}={}", m.spec().name, m.spec().peer_url()))
        .collect();
    assert_eq!(
        printed_cluster,
        all_peers.iter().map(String::as_str).collect(),
        "ETCD_INITIAL_CLUSTER names every member, the new one included"
    );

    let voters_ref = &voters;
    let learner_row = |is_learner: bool| {
        let mut rows: Vec<(u64, String, bool)> = ids
            .iter()
            .zip(["n1", "n2", "n3"])
            .map(|(&id, name)| (id, name.to_string(), false))
            .collect();
        rows.push((added.id, "n4".to_string(), is_learner));
        rows.sort();
        rows
    };
    let expected = learner_row(true);
    wait_for_member_rows(
        voters_ref,
        &expected,
        "member list shows n4 as a started learner",
    )
    .await;

    let mut learner_client = cluster.members()[learner].client().await;
    let refused = expect_grpc_error(
        learner_client.put("on-learner", "x", None).await,
        "a put sent to the learner",
    );
    assert_eq!(
        refused,
        ("Unavailable".to_string(), LEARNER_RPC.to_string())
    );
    let refused = expect_grpc_error(
        learner_client.get("before-learner", None).await,
        "a linearizable get sent to the learner",
    );
    assert_eq!(
        refused,
        ("Unavailable".to_string(), LEARNER_RPC.to_string())
    );
    let put_on_learner =
        etcdctl(&[cluster.members()[learner].endpoint()], &["put", "k", "v"]).await;
    assert_eq!(
        put_on_learner.error(),
        Some(LEARNER_RPC),
        "{put_on_learner:?}"
    );
    eventually(
        Duration::from_secs(10),
        "a serializable get on the learner sees data written before it joined",
        || {
            let learner_client = learner_client.clone();
            async move {
                let mut c = learner_client;
                let resp = c
                    .get(
                        "before-learner",
                        Some(GetOptions::new().with_serializable()),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                match resp.kvs().first() {
                    Some(kv) if kv.value() == b"1" => Ok(()),
                    other => Err(format!("got {other:?}")),
                }
            }
        },
    )
    .await;

    // etcd promotes a learner only once its log is within 90% of the leader's.
    let id_hex = format!("{:x}", added.id);
    let deadline = Instant::now() + Duration::from_secs(20);
    let promoted = loop {
        let out = etcdctl(&voters, &["member", "promote", &id_hex]).await;
        if out.success {
            break out;
        }
        assert_eq!(out.error(), Some(LEARNER_NOT_READY), "{out:?}");
        assert!(
            Instant::now() < deadline,
            "the learner never got in sync: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // etcdctl prints both ids with Go's "%16x", space-padded to 16 columns.
    assert_eq!(
        promoted.stdout.trim_end(),
        format!(
            "Member {:16x} promoted in cluster {cluster_id:16x}",
            added.id
        )
    );
    let expected = learner_row(false);
    wait_for_member_rows(voters_ref, &expected, "member list shows n4 as a voter").await;
    eventually(
        Duration::from_secs(10),
        "the promoted member serves linearizable reads",
        || {
            let learner_client = learner_client.clone();
            async move {
                let mut c = learner_client;
                c.get("before-learner", None)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;

    let leader = cluster.wait_for_leader(ELECTION_WAIT).await;
    let victim = (0..3)
        .find(|&i| i != leader)
        .expect("a follower among n1..n3");
    let victim_hex = format!("{:x}", ids[victim]);
    let removed = etcdctl(&voters, &["member", "remove", &victim_hex]).await;
    assert_eq!(
        removed.expect_ok().trim_end(),
        format!(
            "Member {:16x} removed from cluster {cluster_id:16x}",
            ids[victim]
        )
    );
    // A removed member shuts itself down, in etcd and in oxcd.
    assert!(
        cluster.wait_for_exit(victim, Duration::from_secs(10)).await,
        "the removed member is still running 10 s after its removal"
    );
    let remaining = cluster.endpoints();
    let client = cluster.client_all().await;
    // A write in flight when the membership changed may fail once ("leader changed").
    eventually(
        Duration::from_secs(10),
        "the three remaining members serve writes",
        || {
            let mut client = client.clone();
            async move {
                client
                    .put("after-remove", "1", None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    let mut expected = learner_row(false);
    expected.retain(|row| row.0 != ids[victim]);
    let remaining_ref = &remaining;
    wait_for_member_rows(
        remaining_ref,
        &expected,
        "member list shows the three remaining",
    )
    .await;
}

// -------------------------------------------------------------------------------------------
// 5. hashkv_equal
// -------------------------------------------------------------------------------------------

/// After writes, deletes and a compaction every member hashes the same history to the same
/// HashKV, asked one by one and through `etcdctl endpoint hashkv --cluster`.
async fn hashkv_equal(cluster: &mut Cluster) {
    let mut client = cluster.client_all().await;
    let mut compact_at = 0;
    for i in 0..60 {
        let key = format!("h/{}", i % 10);
        let rev = if i % 7 == 6 {
            header_revision(client.delete(key, None).await.unwrap().header())
        } else {
            header_revision(
                client
                    .put(key, format!("v{i}"), None)
                    .await
                    .unwrap()
                    .header(),
            )
        };
        if i == 30 {
            compact_at = rev;
        }
    }
    client
        .compact(
            compact_at,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    let last = header_revision(client.put("h/last", "x", None).await.unwrap().header());

    let mut hashes = Vec::new();
    for i in 0..3 {
        let member = cluster.members()[i].client().await;
        // A member that has not applied `last` yet answers "future revision".
        let hash = eventually(
            Duration::from_secs(10),
            &format!("HashKV at {last} on member {i}"),
            || {
                let mut member = member.clone();
                async move {
                    let resp = member.hash_kv(last).await.map_err(|e| e.to_string())?;
                    Ok((resp.hash(), resp.compact_version()))
                }
            },
        )
        .await;
        hashes.push(hash);
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV at {last} differs between members: {hashes:?}"
    );
    assert_eq!(
        hashes[0].1, compact_at,
        "compact revision reported by HashKV"
    );

    let out = etcdctl(
        &cluster.endpoints()[..1],
        &["endpoint", "hashkv", "--cluster", "-w", "json"],
    )
    .await;
    let json = out.json();
    let rows = json.as_array().expect("a JSON array");
    let endpoints: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["Endpoint"].as_str().expect("Endpoint"))
        .collect();
    let client_urls: Vec<String> = cluster.members().iter().map(|m| m.client_url()).collect();
    assert_eq!(
        endpoints,
        client_urls.iter().map(String::as_str).collect(),
        "--cluster reaches every member: {json}"
    );
    for row in rows {
        assert_eq!(
            row["HashKV"]["hash"].as_u64(),
            Some(u64::from(hashes[0].0)),
            "etcdctl's hash of the latest revision equals HashKV at {last}: {row}"
        );
    }
}

// -------------------------------------------------------------------------------------------
// 6. follower_forwarding
// -------------------------------------------------------------------------------------------

/// Writes, leases and linearizable reads sent to a follower only are served (forwarded to the
/// leader) and visible there; a watch on the follower sees writes made on the leader.
async fn follower_forwarding(cluster: &mut Cluster) {
    let leader = cluster.wait_for_leader(ELECTION_WAIT).await;
    let follower = followers(cluster, leader)[0];
    let mut on_follower = cluster.members()[follower].client().await;
    let mut on_leader = cluster.members()[leader].client().await;
    let (mut watch, watch_id) =
        Session::watch(&mut on_follower, "fwd/", WatchOptions::new().with_prefix()).await;

    on_follower
        .put("fwd/a", "1", None)
        .await
        .expect("put via follower");
    let txn = Txn::new()
        .when([Compare::version("fwd/a", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("fwd/b", "2", None)]);
    let txn = on_follower.txn(txn).await.expect("txn via follower");
    assert!(txn.succeeded(), "the compare saw the forwarded put");
    let deleted = on_follower
        .delete("fwd/a", None)
        .await
        .expect("delete via follower");
    assert_eq!(deleted.deleted(), 1);

    let lease = on_follower
        .lease_grant(60, None)
        .await
        .expect("lease grant via follower")
        .id();
    on_follower
        .put("fwd/leased", "3", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with a lease via follower");
    let (mut keeper, mut keep_alive) = on_follower
        .lease_keep_alive(lease)
        .await
        .expect("keep-alive stream via follower");
    keeper.keep_alive().await.expect("sending a keep-alive");
    let renewed = tokio::time::timeout(Duration::from_secs(5), keep_alive.message())
        .await
        .expect("keep-alive answer within 5 s")
        .expect("keep-alive stream")
        .expect("a keep-alive response");
    assert_eq!(renewed.id(), lease);
    assert!(renewed.ttl() > 0, "renewed TTL {}", renewed.ttl());

    let read = on_follower
        .get("fwd/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("linearizable range via follower");
    let keys: Vec<_> = read
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["fwd/b", "fwd/leased"]);

    let on_leader_read = on_leader
        .get("fwd/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let leader_view: Vec<_> = on_leader_read
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.lease(),
            )
        })
        .collect();
    assert_eq!(
        leader_view,
        [
            ("fwd/b".to_string(), "2".to_string(), 0),
            ("fwd/leased".to_string(), "3".to_string(), lease)
        ]
    );
    let ttl = on_leader
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .expect("lease TTL on the leader");
    assert!(ttl.ttl() > 0, "the lease is alive on the leader");
    assert_eq!(ttl.keys(), [b"fwd/leased".to_vec()]);

    let from_leader = header_revision(
        on_leader
            .put("fwd/from-leader", "4", None)
            .await
            .unwrap()
            .header(),
    );
    let follower_ref = &*cluster;
    eventually(
        Duration::from_secs(5),
        "a serializable range on the follower sees the leader's write",
        || async move {
            let found = read_prefix(follower_ref, follower, "fwd/", true).await?;
            let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
            (keys == ["fwd/b", "fwd/from-leader", "fwd/leased"])
                .then_some(())
                .ok_or(format!("{keys:?}"))
        },
    )
    .await;

    let events: Vec<(Kind, String)> = watch
        .events_through(watch_id, from_leader)
        .await
        .iter()
        .map(|e| (e.kind, e.key_str()))
        .collect();
    assert_eq!(
        events,
        [
            (Kind::Put, "fwd/a".to_string()),
            (Kind::Put, "fwd/b".to_string()),
            (Kind::Delete, "fwd/a".to_string()),
            (Kind::Put, "fwd/leased".to_string()),
            (Kind::Put, "fwd/from-leader".to_string()),
        ],
        "the follower's watch sees every write in order"
    );
}

// -------------------------------------------------------------------------------------------
// 7. cli_cluster_commands
// -------------------------------------------------------------------------------------------

/// `endpoint status/health --cluster`, `member list` and `move-leader` as an operator runs them.
async fn cli_cluster_commands(cluster: &mut Cluster) {
    let leader = cluster.wait_for_leader(ELECTION_WAIT).await;
    let endpoints = cluster.endpoints();
    let one = &endpoints[..1];
    let client_urls: BTreeSet<String> = cluster.members().iter().map(|m| m.client_url()).collect();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(cluster.member_id(i).await);
    }

    // --cluster: etcdctl lists the members through the one endpoint, then asks each.
    let status = etcdctl(one, &["endpoint", "status", "--cluster", "-w", "json"])
        .await
        .json();
    let rows = status.as_array().expect("a JSON array");
    let reached: BTreeSet<String> = rows
        .iter()
        .map(|r| r["Endpoint"].as_str().expect("Endpoint").to_string())
        .collect();
    assert_eq!(reached, client_urls, "{status}");
    let leaders: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["Status"]["leader"] == r["Status"]["header"]["member_id"])
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one IsLeader: {status}");
    assert_eq!(
        leaders[0]["Status"]["leader"].as_u64(),
        Some(ids[leader]),
        "{status}"
    );
    let terms: BTreeSet<u64> = rows
        .iter()
        .map(|r| r["Status"]["raftTerm"].as_u64().expect("raftTerm"))
        .collect();
    assert_eq!(terms.len(), 1, "one raft term: {status}");

    let health = etcdctl(one, &["endpoint", "health", "--cluster", "-w", "json"])
        .await
        .json();
    let healthy: BTreeSet<String> = health
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter(|r| r["health"] == true)
        .map(|r| r["endpoint"].as_str().expect("endpoint").to_string())
        .collect();
    assert_eq!(healthy, client_urls, "every member healthy: {health}");

    let list = member_list_json(&endpoints).await.expect("member list");
    let mut expected: Vec<(u64, String, bool)> = ids
        .iter()
        .zip(["n1", "n2", "n3"])
        .map(|(&id, name)| (id, name.to_string(), false))
        .collect();
    expected.sort();
    assert_eq!(member_rows(&list), expected, "{list}");

    let target = followers(cluster, leader)[0];
    let target_hex = format!("{:x}", ids[target]);
    // etcdctl looks for the leader among the endpoints it is given (by Status) and sends
    // MoveLeader there; given only a follower it refuses by itself.
    let follower_endpoint = cluster.members()[target].endpoint();
    let refused = etcdctl(
        std::slice::from_ref(&follower_endpoint),
        &["move-leader", &target_hex],
    )
    .await;
    assert_eq!(
        refused.error(),
        Some(format!("no leader endpoint given at [{follower_endpoint}]").as_str()),
        "{refused:?}"
    );
    let moved = etcdctl(
        &[cluster.members()[leader].endpoint()],
        &["move-leader", &target_hex],
    )
    .await;
    assert_eq!(
        moved.expect_ok().trim(),
        format!(
            "Leadership transferred from {:x} to {target_hex}",
            ids[leader]
        )
    );
    let cluster = &*cluster;
    eventually(
        Duration::from_secs(5),
        "the move-leader target leads",
        || async move {
            match cluster.leader_index().await {
                Some(i) if i == target => Ok(()),
                other => Err(format!("leader is {other:?}, expected {target}")),
            }
        },
    )
    .await;
}
