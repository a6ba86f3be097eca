//! Crash consistency at every step that matters. oxcd built with its `failpoints` feature (as
//! `./dev test` builds it) stops at a named step when FAILPOINTS says so: the `panic` action
//! aborts the process right there, as a crash would. Each test crashes a member at one step
//! while clients write, restarts it without failpoints and checks that every acknowledged write
//! is there, that the members agree (HashKV at one revision) and that the member starts.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, CompactionOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use oxcd_tests::cluster::Cluster;
use oxcd_tests::writes::{hash_kv_at, read_prefix, value_for, verify, Ack, Writers};
use oxcd_tests::{connect, oxcdctl_bin, Flavor, Server, StartOptions};
use rand::Rng;

const FAILPOINTS: &str = "FAILPOINTS";
const SIGABRT: i32 = 6;
/// How long a failpoint may take to be reached under load.
const CRASH_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until the member aborts at its failpoint.
async fn wait_for_crash(server: &mut Server, failpoint: &str) {
    let status =
        tokio::task::block_in_place(|| server.wait_exit(CRASH_TIMEOUT)).unwrap_or_else(|e| {
            panic!(
                "the member did not crash at {failpoint} ({e:#}); is oxcd built with \
                 `--features oxcd/failpoints`?\n{}",
                server.log_tail(30)
            )
        });
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "the member should have aborted at {failpoint}, it exited with {status}\n{}",
        server.log_tail(30)
    );
    assert!(
        server.log_tail(200).contains(failpoint),
        "the member aborted, but not at {failpoint}:\n{}",
        server.log_tail(30)
    );
}

/// FAILPOINTS for a crash at the `after + 1`-th time `failpoint` is reached.
fn crash_at(failpoint: &str, after: u32) -> String {
    if after == 0 {
        format!("{failpoint}=panic")
    } else {
        format!("{failpoint}={after}*off->panic")
    }
}

/// Writes `n` fresh keys under `prefix` in txns of 100 puts (one revision each).
async fn bulk_write(client: &mut Client, prefix: &str, n: usize) {
    for chunk in 0..n.div_ceil(100) {
        let ops: Vec<TxnOp> = (chunk * 100..((chunk + 1) * 100).min(n))
            .map(|i| {
                let key = format!("{prefix}/{i:06}");
                TxnOp::put(key.clone(), value_for(&key), None)
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await.unwrap();
    }
}

/// One member crashed at `failpoint` while clients write; restarted, it must hold every
/// acknowledged write.
async fn crash_one_member_under_load(failpoint: &str, after: u32, extra_args: &[&str]) {
    let mut server = Server::start_with(
        Flavor::Oxcd,
        StartOptions {
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            env: vec![(FAILPOINTS.into(), crash_at(failpoint, after))],
            ..Default::default()
        },
    )
    .await;
    let writers = Writers::start(&[server.endpoint()], "fp", 16).await;
    wait_for_crash(&mut server, failpoint).await;
    let (acks, _) = writers.finish().await;
    server.set_env(FAILPOINTS, None);
    server.restart().await;
    let mut client = server.client().await;
    let (_, store) = read_prefix(&mut client, "fp/", false).await;
    verify(&acks, &store, &format!("after a crash at {failpoint}"));
    client.put("probe", "after restart", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_crashed_on_the_write_path_keeps_every_acknowledged_write() {
    for failpoint in [
        "raft::log::after_append",
        "raft::wal::before_fsync",
        "raft::wal::after_fsync",
        "raft::apply::before_commit",
        "raft::apply::after_commit",
    ] {
        let after = rand::thread_rng().gen_range(30..300);
        crash_one_member_under_load(failpoint, after, &[]).await;
    }
}

/// Every `--snapshot-count` entries a member makes what it applied durable, then purges its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_crashed_while_taking_a_snapshot_keeps_every_acknowledged_write() {
    // The first snapshot is taken; the member crashes taking the second.
    crash_one_member_under_load(
        "raft::snapshot::point::before_sync",
        1,
        &["--snapshot-count=50"],
    )
    .await;
}

/// A leader dumps its store to a file only for a follower behind its purged log; it crashes at
/// each step of writing and publishing that file. Restarted, it leads or follows with all it had,
/// and the follower is caught up by whichever member leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_crashed_while_writing_a_snapshot_for_a_follower_loses_nothing() {
    for failpoint in [
        "raft::snapshot::build::before_sync",
        "raft::snapshot::build::before_publish",
        "raft::snapshot::publish::before_dir_sync",
    ] {
        let (mut cluster, leader, lagging, client) = behind_the_purged_log(2_000).await;
        let third = 3 - leader - lagging;
        drop(client);
        cluster.kill(leader);
        cluster
            .member_mut(leader)
            .set_env(FAILPOINTS, Some(&crash_at(failpoint, 0)));
        cluster.restart(leader).await;
        if cluster.wait_for_leader(Duration::from_secs(10)).await != leader {
            let target = cluster.member_id(leader).await;
            let mut third_client = cluster.members()[third].client().await;
            third_client.move_leader(target).await.unwrap();
            assert_eq!(
                cluster.wait_for_leader(Duration::from_secs(10)).await,
                leader,
                "MoveLeader to the member with the failpoint"
            );
        }
        // It cannot serve before it has the snapshot, so it is launched, not waited for.
        cluster.member_mut(lagging).spawn().unwrap();
        wait_for_crash(cluster.member_mut(leader), failpoint).await;
        cluster.member_mut(leader).set_env(FAILPOINTS, None);
        cluster.restart(leader).await;
        let mut client = connect(&cluster.endpoints()[third], Duration::from_secs(10))
            .await
            .unwrap();
        client
            .put("fp/after", value_for("fp/after"), None)
            .await
            .unwrap();
        let acks = acks_of_prefix(&mut client, "fp/").await;
        assert_eq!(acks.len(), 2_000 + 300 + 1, "{failpoint}");
        check_cluster(&cluster, &acks, failpoint).await;
    }
}

/// A three-member cluster whose member `victim` crashes at `failpoint` under load from clients
/// of every member; after its restart all three hold the same store and every acknowledged write.
async fn crash_in_a_cluster(failpoint: &str, victim_is_leader: bool) {
    let mut cluster = Cluster::start(Flavor::Oxcd, 3, &[]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let victim = if victim_is_leader {
        leader
    } else {
        (leader + 1) % 3
    };
    cluster.kill(victim);
    let after = rand::thread_rng().gen_range(30..200);
    cluster
        .member_mut(victim)
        .set_env(FAILPOINTS, Some(&crash_at(failpoint, after)));
    cluster.restart(victim).await;
    let writers = Writers::start(&cluster.endpoints(), "fp", 24).await;
    wait_for_crash(cluster.member_mut(victim), failpoint).await;
    // The others go on; give them a moment of writes without the victim.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acks, _) = writers.finish().await;
    cluster.member_mut(victim).set_env(FAILPOINTS, None);
    cluster.restart(victim).await;
    check_cluster(&cluster, &acks, failpoint).await;
}

/// Every acknowledged write is on every member, and the members hash alike at one revision.
async fn check_cluster(cluster: &Cluster, acks: &[Ack], context: &str) {
    let endpoints = cluster.endpoints();
    let mut client = connect(&endpoints[0], Duration::from_secs(10))
        .await
        .unwrap();
    let (revision, store) = read_prefix(&mut client, "fp/", false).await;
    verify(acks, &store, &format!("after a crash at {context}"));
    let mut hashes = Vec::new();
    for endpoint in &endpoints {
        // Serializable reads: each member's own state, once it has caught up.
        let mut member = connect(endpoint, Duration::from_secs(10)).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (at, local) = read_prefix(&mut member, "fp/", true).await;
            if at >= revision {
                verify(
                    acks,
                    &local,
                    &format!("{endpoint} after a crash at {context}"),
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{endpoint} did not catch up to revision {revision} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        hashes.push(hash_kv_at(endpoint, revision).await);
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "after a crash at {context} the members' HashKV at {revision} differ: {hashes:x?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_member_crashed_on_the_write_path_rejoins_with_the_same_store() {
    for (failpoint, leader) in [
        ("raft::wal::after_fsync", true),
        ("raft::apply::before_commit", false),
        ("raft::log::after_append", false),
        ("raft::apply::after_commit", true),
    ] {
        crash_in_a_cluster(failpoint, leader).await;
    }
}

/// A follower that missed enough of the log is sent a snapshot (more than one load batch of
/// records), and crashes at `failpoint` while installing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_crashed_while_installing_a_snapshot_recovers_it() {
    for failpoint in [
        "raft::snapshot::install::after_marker",
        "raft::snapshot::install::mid_load",
        "raft::snapshot::install::before_publish",
        "raft::snapshot::publish::before_dir_sync",
    ] {
        let (mut cluster, _, follower, mut client) = behind_the_purged_log(12_000).await;
        cluster
            .member_mut(follower)
            .set_env(FAILPOINTS, Some(&crash_at(failpoint, 0)));
        // It cannot serve before it has the snapshot, so it is launched, not waited for.
        let member = cluster.member_mut(follower);
        member.spawn().unwrap();
        wait_for_crash(member, failpoint).await;
        member.set_env(FAILPOINTS, None);
        cluster.restart(follower).await;
        let acks = acks_of_prefix(&mut client, "fp/").await;
        check_cluster(&cluster, &acks, failpoint).await;
    }
}

/// A 3-member cluster (`--snapshot-count=100`) holding `bulk` keys, whose follower was stopped
/// and then left behind the leader's purged log; returns it with the leader, that follower and a
/// client of the leader.
async fn behind_the_purged_log(bulk: usize) -> (Cluster, usize, usize, Client) {
    let mut cluster = Cluster::start(Flavor::Oxcd, 3, &["--snapshot-count=100"]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let mut client = connect(&cluster.endpoints()[leader], Duration::from_secs(10))
        .await
        .unwrap();
    bulk_write(&mut client, "fp/bulk", bulk).await;
    cluster.kill(follower);
    // Enough entries that the leader purges what the follower lacks.
    for i in 0..300 {
        let key = format!("fp/seq/{i:04}");
        client
            .put(key.clone(), value_for(&key), None)
            .await
            .unwrap();
    }
    (cluster, leader, follower, client)
}

/// What is stored under `prefix` now, as acknowledged writes (for loads written in bulk).
async fn acks_of_prefix(client: &mut Client, prefix: &str) -> Vec<Ack> {
    let (_, store) = read_prefix(client, prefix, false).await;
    store
        .into_iter()
        .map(|(key, (value, revision, _))| Ack {
            key,
            value,
            revision,
        })
        .collect()
}

/// A member crashed between two batches of a physical compaction resumes it at its restart,
/// and hashes like the members that finished theirs without a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_crashed_mid_compaction_resumes_it() {
    let failpoint = "mvcc::compactor::between_batches";
    let mut cluster = Cluster::start(Flavor::Oxcd, 3, &[]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let victim = (leader + 1) % 3;
    cluster.kill(victim);
    cluster
        .member_mut(victim)
        .set_env(FAILPOINTS, Some(&crash_at(failpoint, 0)));
    cluster.restart(victim).await;
    let mut client = connect(&cluster.endpoints()[leader], Duration::from_secs(30))
        .await
        .unwrap();
    // More revisions to drop than one compaction batch holds.
    bulk_write(&mut client, "fp/old", 12_000).await;
    client
        .delete("fp/old/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    bulk_write(&mut client, "fp/new", 100).await;
    let revision = client
        .get("fp/new", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    wait_for_crash(cluster.member_mut(victim), failpoint).await;
    cluster.member_mut(victim).set_env(FAILPOINTS, None);
    cluster.restart(victim).await;
    client
        .put("fp/after", value_for("fp/after"), None)
        .await
        .unwrap();
    let acks = acks_of_prefix(&mut client, "fp/").await;
    check_cluster(&cluster, &acks, failpoint).await;
    let old = client
        .get("fp/old/000001", Some(GetOptions::new().with_revision(2)))
        .await;
    assert!(
        old.is_err(),
        "history below the compaction point must stay gone"
    );
}

/// A defragment interrupted after its first column family.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_crashed_mid_defragment_keeps_every_write() {
    let mut server = Server::start_with(
        Flavor::Oxcd,
        StartOptions {
            env: vec![(
                FAILPOINTS.into(),
                crash_at("storage::defrag::after_family", 0),
            )],
            ..Default::default()
        },
    )
    .await;
    let writers = Writers::start(&[server.endpoint()], "fp", 8).await;
    writers.wait_for_acks(200, Duration::from_secs(20)).await;
    let mut client = server.client().await;
    let _ = client.defragment().await;
    wait_for_crash(&mut server, "storage::defrag::after_family").await;
    let (acks, _) = writers.finish().await;
    server.set_env(FAILPOINTS, None);
    server.restart().await;
    let mut client = server.client().await;
    let (_, store) = read_prefix(&mut client, "fp/", false).await;
    verify(&acks, &store, "after a crash mid-defragment");
}

/// `snapshot restore` crashed before or after publishing the restored data dir: the target is
/// either absent (and a second restore succeeds) or complete (and a member starts on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_crashed_at_its_rename_leaves_nothing_half_made() {
    let source = Server::start(Flavor::Oxcd).await;
    let mut client = source.client().await;
    bulk_write(&mut client, "fp/r", 1_000).await;
    let acks = acks_of_prefix(&mut client, "fp/").await;
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup.db");
    let saved = Command::new(oxcdctl_bin())
        .args(["--endpoints", &source.endpoint(), "snapshot", "save"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(saved.status.success(), "{saved:?}");

    for (failpoint, published) in [
        ("snapshot::restore::before_rename", false),
        ("snapshot::restore::before_dir_sync", true),
    ] {
        let restored = Cluster::start_prepared(Flavor::Oxcd, 1, &[], |spec, flags| {
            let restore = |failpoints: Option<String>| {
                let mut cmd = Command::new(oxcdctl_bin());
                cmd.args(["snapshot", "restore"])
                    .arg(&backup)
                    .arg("--data-dir")
                    .arg(&spec.data_dir)
                    .args(["--name", &spec.name])
                    .args(["--initial-cluster", &flags.initial_cluster])
                    .args(["--initial-cluster-token", &flags.token])
                    .args(["--initial-advertise-peer-urls", &spec.peer_url()]);
                if let Some(f) = failpoints {
                    cmd.env(FAILPOINTS, f);
                }
                cmd.output()
            };
            let crashed = restore(Some(crash_at(failpoint, 0)))?;
            anyhow::ensure!(
                crashed.status.signal() == Some(SIGABRT),
                "restore should abort at {failpoint}: {crashed:?}"
            );
            anyhow::ensure!(
                spec.data_dir.exists() == published,
                "after a crash at {failpoint} the data dir exists: {}",
                spec.data_dir.exists()
            );
            if !published {
                let again = restore(None)?;
                anyhow::ensure!(again.status.success(), "a second restore failed: {again:?}");
            }
            Ok(())
        })
        .await;
        let mut client = connect(&restored.endpoints()[0], Duration::from_secs(10))
            .await
            .unwrap();
        let (_, store) = read_prefix(&mut client, "fp/", false).await;
        verify(
            &acks,
            &store,
            &format!("restored after a crash at {failpoint}"),
        );
    }
}

/// A physical compaction that fails is reported to the client that waits for it (etcd would
/// crash instead), counted, logged, and retried until it succeeds: the compactor never dies
/// silently, leaving every later compaction undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_physical_compaction_is_reported_and_retried() {
    let metrics = oxcd_tests::free_port();
    let server = Server::start_with(
        Flavor::Oxcd,
        StartOptions {
            extra_args: vec![format!("--listen-metrics-urls=http://127.0.0.1:{metrics}")],
            env: vec![(FAILPOINTS.into(), "mvcc::compactor::write=1*return".into())],
            ..Default::default()
        },
    )
    .await;
    let mut client = server.client().await;
    for i in 0..10 {
        client.put("k", format!("v{i}"), None).await.unwrap();
    }
    let failed = client
        .compact(5, Some(CompactionOptions::new().with_physical()))
        .await
        .expect_err("the first attempt fails at its failpoint");
    assert_eq!(
        oxcd_tests::grpc_error(&failed),
        Some((
            "Internal".to_string(),
            "etcdserver: mvcc: physical compaction failed; see the member's log".to_string()
        ))
    );
    let failures = metric(metrics, "oxcd_mvcc_compaction_failures_total").await;
    assert_eq!(failures, Some(1.0));
    // The compactor retries; a later compaction then goes through it too.
    client
        .compact(8, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("the retried compaction and the next one finish");
    assert!(server.log_tail(50).contains("physical compaction failed"));
}

/// A value of the member's Prometheus text at /metrics.
async fn metric(port: u16, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Between the leader deciding that a lease expired and its revoke applying, a keep-alive must
/// not promise the lease a new TTL (etcd's lessor makes it wait for the revoke). The failpoint
/// holds the revoke back for 2 s so the keep-alive surely lands in that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keep_alive_while_an_expiry_is_in_flight_waits_for_the_revoke() {
    let server = Server::start_with(
        Flavor::Oxcd,
        StartOptions {
            env: vec![(
                FAILPOINTS.into(),
                "lease::expire::before_propose=return(2000)".into(),
            )],
            ..Default::default()
        },
    )
    .await;
    let mut client = server.client().await;
    let lease = client.lease_grant(2, None).await.unwrap().id();
    client
        .put("expiring", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    // Opening the stream renews the lease once; the next keep-alive comes after its deadline.
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2700)).await;
    keeper.keep_alive().await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a keep-alive answer within 10 s")
        .unwrap()
        .expect("a keep-alive response");
    assert_eq!((resp.id(), resp.ttl()), (lease, 0));
    assert!(client.get("expiring", None).await.unwrap().kvs().is_empty());
}
