//! Upgrades from earlier releases: their data dirs open, converted, with everything they held,
//! and a cluster of the previous release is upgraded one member at a time while it serves.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, LeaseTimeToLiveOptions};
use oxcd_tests::cluster::Cluster;
use oxcd_tests::writes::{self, Writers};
use oxcd_tests::{Flavor, Server, StartOptions};

/// See `tests/fixtures/data-dir/README.md` for how the fixtures were made and what they served:
/// the same writes, through the releases before data dir formats 2 and 4.
const FORMAT_1_FIXTURE: &str = "fixtures/data-dir/format1-a3286cd.tar.gz";
const FORMAT_3_FIXTURE: &str = "fixtures/data-dir/format3-935de49.tar.gz";

fn unpack(fixture: &str, into: &Path) {
    let archive = oxcd_tests::package_dir().join(fixture);
    std::fs::create_dir_all(into).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success(), "unpacking {}", archive.display());
}

#[tokio::test]
async fn a_data_dir_of_format_1_is_converted_and_serves_what_it_held() {
    serves_what_the_fixture_held(FORMAT_1_FIXTURE, 264_170_792).await;
}

/// Format 3 kept the Raft log in RocksDB; format 4 moves it to its own files.
#[tokio::test]
async fn a_data_dir_of_format_3_is_converted_and_serves_what_it_held() {
    serves_what_the_fixture_held(FORMAT_3_FIXTURE, 1_123_023_990).await;
}

/// Starts the current build on a fixture data dir, checks what it serves, restarts it and
/// checks again. `hash` is the fixture's HashKV at its last revision (leases have random ids).
async fn serves_what_the_fixture_held(fixture: &str, hash: u32) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    unpack(fixture, &data_dir);
    let mut server = Server::start_with(
        Flavor::Oxcd,
        StartOptions {
            data_dir: Some(data_dir.clone()),
            name: Some("fx".into()),
            ..Default::default()
        },
    )
    .await;

    for start in ["converted", "restarted"] {
        let mut client = server.client().await;
        let all = client
            .get("", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let revision = all.header().unwrap().revision();
        assert!(revision >= 133, "{start}: revision {revision}");
        let keys: Vec<&str> = all
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap())
            .filter(|k| !k.starts_with("after-"))
            .collect();
        assert_eq!(keys.len(), 130, "{start}: {keys:?}");
        assert!(!keys.contains(&"key1") && keys.contains(&"key130"));
        let key2 = client.get("key2", None).await.unwrap();
        assert_eq!(key2.kvs()[0].value(), b"value2");

        // The compaction point survives: below it is compacted, above it is history.
        let compacted = client
            .get("key2", Some(GetOptions::new().with_revision(49)))
            .await
            .unwrap_err();
        assert!(
            compacted
                .to_string()
                .contains("required revision has been compacted"),
            "{start}: {compacted}"
        );
        let old = client
            .get("key101", Some(GetOptions::new().with_revision(120)))
            .await
            .unwrap();
        assert_eq!(old.kvs()[0].value(), b"value101");

        let leased = client.get("leased", None).await.unwrap();
        let lease = leased.kvs()[0].lease();
        let ttl = client
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert!(ttl.ttl() > 90_000, "{start}: lease ttl {}", ttl.ttl());
        assert_eq!(ttl.keys(), [b"leased".to_vec()]);

        let alice = client.user_get("alice").await.unwrap();
        assert_eq!(alice.roles(), ["reader"]);

        let members = client.member_list().await.unwrap();
        let mut names: Vec<(&str, bool)> = members
            .members()
            .iter()
            .map(|m| (m.name(), m.is_learner()))
            .collect();
        names.sort();
        // The learner never started, so it has no name yet, as in etcd.
        assert_eq!(names, [("", true), ("fx", false)], "{start}");

        // Raft's log converted too: the member writes on after it.
        let put = client
            .put(format!("after-{start}"), "v", None)
            .await
            .unwrap();
        assert!(put.header().unwrap().revision() > revision);

        if start == "converted" {
            // The history up to the fixture's last revision hashes as it did.
            assert_eq!(
                client.hash_kv(133).await.unwrap().hash(),
                hash,
                "HashKV at 133"
            );
            let segments = std::fs::read_dir(data_dir.join("raft-log")).unwrap();
            let segments = segments.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            });
            assert!(segments.count() >= 1, "the Raft log has its own files");
            server.terminate(Duration::from_secs(10)).unwrap();
            server.restart().await;
        }
    }
}

/// Small, so a member that misses a few hundred writes is past what the leader keeps in its log
/// for followers (min(snapshot-count, 5000) entries) and must be sent a snapshot.
const SNAPSHOT_COUNT: usize = 50;
/// Writes a stopped member misses: several times what it could be sent as log entries.
const MISSED_WRITES: usize = 4 * SNAPSHOT_COUNT;
/// Failed writes allowed over the whole upgrade. Members are taken out of the writers' endpoint
/// list before they stop, so failures come only from the leadership changes (the MoveLeader
/// between the releases, the old leader's stop) and from requests in flight to a stopping member.
const FAILED_WRITES_ALLOWED: usize = 20;
/// The members log at info level, which is where both releases say a snapshot came from the
/// leader and the new one says a member runs the previous release; openraft's own info level
/// narrates every step and is left out.
const LOG_FILTER: &str = "info,openraft=warn";

/// Each direction between the releases happens, and is checked to: an old leader replicating to
/// and sending a snapshot to an upgraded member, and an upgraded leader replicating to and
/// sending a snapshot to a member of the previous release. Writes go on through all of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_three_member_cluster_is_upgraded_one_member_at_a_time_and_keeps_serving() {
    let started = Instant::now();
    let snapshot_count = format!("--snapshot-count={SNAPSHOT_COUNT}");
    let mut cluster = Cluster::start(Flavor::OxcdPrevious, 3, &[&snapshot_count]).await;
    for i in 0..3 {
        cluster.member_mut(i).set_env("OXCD_LOG", Some(LOG_FILTER));
    }
    let old_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(cluster.member_id(i).await);
    }
    let followers: Vec<usize> = (0..3).filter(|i| *i != old_leader).collect();
    let (first, second) = (followers[0], followers[1]);
    let running = Arc::new(Mutex::new(cluster.endpoints()));
    let writers = Writers::spread(running.clone(), "upgrade", 2);
    writers.wait_for_acks(50, Duration::from_secs(20)).await;

    // 1. A follower misses more than the log keeps and comes back as the new release: the old
    //    leader sends it a snapshot and appends in the previous release's messages.
    stop(&mut cluster, &running, first);
    write_more(&writers, MISSED_WRITES).await;
    cluster.member_mut(first).set_flavor(Flavor::Oxcd);
    start(&mut cluster, &running, first).await;
    let log = cluster.members()[first].log_of_this_launch();
    assert!(
        log.contains(r#""msg":"installed a snapshot""#) && log.contains(r#""from_leader":true"#),
        "the upgraded member was sent no snapshot by the old leader:\n{log}"
    );
    write_more(&writers, 50).await;
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(10)).await,
        old_leader,
        "the previous release still leads"
    );
    holds_latest_write(&cluster, &writers, first).await;

    // 2. The old leader hands leadership to the upgraded member (the previous release's
    //    MoveLeader, through TimeoutNow); with both followers old, no write commits unless the
    //    new leader replicates to the previous release.
    move_leader(&cluster, old_leader, ids[first]).await;
    write_more(&writers, 50).await;
    let log = cluster.members()[first].log_of_this_launch();
    assert!(
        log.contains("the member runs the previous release"),
        "the new leader never fell back to the previous release's messages:\n{log}"
    );

    // 3. A follower of the previous release misses more than the log keeps and comes back as it
    //    was: the new leader sends it a snapshot in its messages.
    stop(&mut cluster, &running, second);
    write_more(&writers, MISSED_WRITES).await;
    start(&mut cluster, &running, second).await;
    write_more(&writers, 50).await;
    let log = cluster.members()[second].log_of_this_launch();
    assert!(
        log.contains("installed a snapshot from the leader"),
        "the new leader sent the previous release no snapshot:\n{log}"
    );
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(10)).await,
        first,
        "the new release still leads"
    );
    holds_latest_write(&cluster, &writers, second).await;

    // 4. The new leader hands leadership to a member of the previous release, which has no
    //    leader transfer of this release's: it is told to campaign, as its own MoveLeader did.
    move_leader(&cluster, first, ids[second]).await;
    write_more(&writers, 50).await;

    // 5. The other two members are upgraded, the leader last: stopping it makes the upgraded
    //    members elect one of themselves.
    for member in [old_leader, second] {
        stop(&mut cluster, &running, member);
        write_more(&writers, 50).await;
        cluster.member_mut(member).set_flavor(Flavor::Oxcd);
        start(&mut cluster, &running, member).await;
        write_more(&writers, 50).await;
    }

    let (acks, reports) = writers.finish().await;
    let failed: usize = reports.iter().map(|r| r.failed).sum();
    assert!(
        failed <= FAILED_WRITES_ALLOWED,
        "{failed} writes failed during the upgrade ({} acknowledged): {reports:?}",
        acks.len()
    );
    let revision = same_revision_everywhere(&cluster).await;
    let mut hashes = Vec::new();
    for member in cluster.members() {
        let mut client = member.client().await;
        let (_, store) = writes::read_prefix(&mut client, "upgrade/", true).await;
        writes::verify(&acks, &store, &member.spec().name);
        hashes.push(writes::hash_kv_at(&member.endpoint(), revision).await);
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV at {revision}: {hashes:?}"
    );

    // Between members of the new release, leadership moves by its own transfer, quickly.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let target = (leader + 1) % 3;
    let moving = Instant::now();
    move_leader(&cluster, leader, ids[target]).await;
    let took = moving.elapsed();
    assert!(took < Duration::from_secs(1), "MoveLeader took {took:?}");
    eprintln!(
        "upgraded in {:?}: {} writes acknowledged, {failed} failed, last revision {revision}",
        started.elapsed(),
        acks.len()
    );
}

/// Takes member `i` out of the writers' endpoints and stops it gracefully.
fn stop(cluster: &mut Cluster, running: &Mutex<Vec<String>>, i: usize) {
    let endpoint = cluster.members()[i].endpoint();
    running.lock().unwrap().retain(|e| *e != endpoint);
    cluster.terminate(i);
}

/// Starts member `i` again (as whatever flavour it is set to) and gives it back to the writers
/// once it serves a linearizable Range.
async fn start(cluster: &mut Cluster, running: &Mutex<Vec<String>>, i: usize) {
    cluster.restart(i).await;
    running
        .lock()
        .unwrap()
        .push(cluster.members()[i].endpoint());
}

async fn write_more(writers: &Writers, n: usize) {
    let target = writers.acknowledged() + n;
    writers.wait_for_acks(target, Duration::from_secs(30)).await;
}

/// MoveLeader from member `from` (the leader) to `target`, and that `target` then leads.
async fn move_leader(cluster: &Cluster, from: usize, target: u64) {
    let mut client = cluster.members()[from].client().await;
    client
        .move_leader(target)
        .await
        .unwrap_or_else(|e| panic!("MoveLeader to {target:x}: {e}"));
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_eq!(
        cluster.member_id(leader).await,
        target,
        "MoveLeader to {target:x} answered, but another member leads"
    );
}

/// Member `i` applies writes as they come: the latest acknowledged one is soon in its own state.
async fn holds_latest_write(cluster: &Cluster, writers: &Writers, i: usize) {
    write_more(writers, 1).await;
    let ack = writers.last_ack().expect("a write was acknowledged");
    let member = &cluster.members()[i];
    let mut client = member.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = client
            .get(
                ack.key.as_str(),
                Some(GetOptions::new().with_serializable()),
            )
            .await
            .unwrap_or_else(|e| panic!("reading {} from {}: {e}", ack.key, member.spec().name));
        if let Some(kv) = read.kvs().first() {
            assert_eq!(
                (kv.value(), kv.mod_revision()),
                (ack.value.as_bytes(), ack.revision)
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not apply {} (revision {}) within 10 s",
            member.spec().name,
            ack.key,
            ack.revision
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every member reports the same revision in its Status; returns it.
async fn same_revision_everywhere(cluster: &Cluster) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut revisions = Vec::new();
        for i in 0..cluster.members().len() {
            let status = cluster.status(i).await;
            revisions.push(status.and_then(|s| s.header().map(|h| h.revision())));
        }
        if let Some(Some(first)) = revisions.first() {
            if revisions.iter().all(|r| *r == Some(*first)) {
                return *first;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the members' revisions never became equal: {revisions:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
