//! Power loss: every data dir is a PowerFs; the members are SIGKILLed under write load and then
//! the power is cut, which throws away every byte and directory entry that was not fsynced
//! (SIGKILL alone keeps the page cache, so `crash.rs` cannot see a missing fsync). Every
//! acknowledged write must survive with its value and revision, every member must start again,
//! and all members must agree on HashKV.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use oxcd_tests::cluster::Cluster;
use oxcd_tests::powerfs::{CutReport, PowerFs};
use oxcd_tests::writes::{read_prefix, verify, Ack, Writers, WRITE_TIMEOUT};
use oxcd_tests::{connect, Flavor, Server, StartOptions};
use rand::Rng;

const CUTS: usize = 3;
const WRITERS: usize = 16;
/// Each load phase acknowledges a few thousand writes, so with this every phase also builds
/// snapshots and purges the Raft log behind them: their files are under the cut too.
const MEMBER_ARGS: [&str; 1] = ["--snapshot-count=500"];
/// How long a restarted member may take to apply a revision the cluster has committed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// The oxcd under test: one member or a cluster, every data dir on its own PowerFs.
enum Oxcd {
    Single(Server),
    Cluster(Cluster),
}

impl Oxcd {
    fn members(&self) -> Vec<&Server> {
        match self {
            Oxcd::Single(server) => vec![server],
            Oxcd::Cluster(cluster) => cluster.members().iter().collect(),
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members().iter().map(|m| m.endpoint()).collect()
    }

    fn kill_all(&mut self) {
        match self {
            Oxcd::Single(server) => server.kill(),
            Oxcd::Cluster(cluster) => {
                for i in 0..cluster.members().len() {
                    cluster.kill(i);
                }
            }
        }
    }

    async fn restart_all(&mut self) {
        match self {
            Oxcd::Single(server) => server.restart().await,
            Oxcd::Cluster(cluster) => cluster.restart_all().await,
        }
    }
}

async fn client_for(endpoints: &[String]) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(WRITE_TIMEOUT);
    Client::connect(endpoints, Some(options))
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoints:?}: {e}"))
}

/// Waits until the member at `endpoint` has applied `revision`, then returns its HashKV there.
async fn hash_at(endpoint: &str, revision: i64, what: &str) -> (u32, i64) {
    let mut client = connect(endpoint, Duration::from_secs(10)).await.unwrap();
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let local = client
            .get(
                "power-loss-probe",
                Some(GetOptions::new().with_serializable()),
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: serializable read on {endpoint}: {e}"));
        if local.header().expect("range header").revision() >= revision {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {endpoint} did not reach revision {revision} in {CATCH_UP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = client
        .hash_kv(revision)
        .await
        .unwrap_or_else(|e| panic!("{what}: HashKV on {endpoint}: {e}"));
    (resp.hash(), resp.compact_version())
}

/// Runs CUTS rounds of: write under load, SIGKILL every member, cut the power of every data dir,
/// restart every member, check every acknowledged write and that the members agree.
async fn acknowledged_writes_survive_power_cuts(oxcd: &mut Oxcd, disks: &[&PowerFs]) {
    let mut all_acks: Vec<Ack> = Vec::new();
    let mut max_acked_revision = 1;
    for cut in 1..=CUTS {
        let what = format!("power cut #{cut}");
        let load = Writers::start(&oxcd.endpoints(), &format!("power/c{cut}"), WRITERS).await;
        // Well under way, then a random moment, so the power fails at a different point of the
        // stream every time.
        load.wait_for_acks(100, Duration::from_secs(30)).await;
        let delay = Duration::from_millis(rand::thread_rng().gen_range(100..1500));
        tokio::time::sleep(delay).await;
        oxcd.kill_all();
        let reports: Vec<CutReport> = disks.iter().map(|disk| disk.cut_power()).collect();
        let (acks, writers) = load.finish().await;
        let attempted: usize = writers.iter().map(|w| w.attempted).sum();
        let interrupted = writers.iter().filter(|w| w.interrupted).count();
        println!(
            "{what}: after {delay:?} more; {attempted} writes attempted, {} keys acknowledged, \
             {interrupted} writers cut off",
            acks.len()
        );
        for (member, report) in oxcd.members().iter().zip(&reports) {
            println!("  {}: {report}", member.spec().name);
        }
        assert!(
            interrupted > 0,
            "{what}: no write was in flight at the kill, so it did not land mid-stream"
        );
        if let Some(max) = acks.iter().map(|a| a.revision).max() {
            assert!(
                max > max_acked_revision,
                "{what}: revisions went backwards across a restart"
            );
            max_acked_revision = max;
        }
        all_acks.extend(acks);

        oxcd.restart_all().await;
        let mut client = client_for(&oxcd.endpoints()).await;
        let (revision, store) = read_prefix(&mut client, "power/", false).await;
        assert!(
            revision >= max_acked_revision,
            "{what}: after the restart the store is at revision {revision}, below the \
             acknowledged {max_acked_revision}"
        );
        verify(&all_acks, &store, &format!("after {what}"));

        let probe = client
            .put("power-loss-probe", format!("after cut {cut}"), None)
            .await
            .unwrap_or_else(|e| panic!("{what}: first write after the restart: {e}"));
        let probe_revision = probe.header().expect("put header").revision();
        assert!(
            probe_revision > revision,
            "{what}: first write after the restart got revision {probe_revision}, not above \
             {revision}"
        );
        max_acked_revision = probe_revision;

        let mut hashes = BTreeMap::new();
        for member in oxcd.members() {
            let hash = hash_at(&member.endpoint(), probe_revision, &what).await;
            hashes.insert(member.spec().name.clone(), hash);
        }
        let distinct: Vec<_> = hashes.values().collect();
        assert!(
            distinct.windows(2).all(|pair| pair[0] == pair[1]),
            "{what}: members disagree on HashKV (hash, compact revision) at revision \
             {probe_revision}: {hashes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_member_keeps_acknowledged_writes_through_power_cuts() {
    let disk = PowerFs::mount_in_temp_dir().unwrap_or_else(|e| panic!("{e:#}"));
    let options = StartOptions {
        data_dir: Some(disk.mountpoint().to_path_buf()),
        extra_args: MEMBER_ARGS.map(String::from).to_vec(),
        ..StartOptions::default()
    };
    let mut oxcd = Oxcd::Single(Server::start_with(Flavor::Oxcd, options).await);
    acknowledged_writes_survive_power_cuts(&mut oxcd, &[&disk]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_member_cluster_keeps_acknowledged_writes_through_power_cuts() {
    // Each member's data dir is the root of its own PowerFs. Declared before the cluster, so on
    // a panic the members are killed before their disks are unmounted.
    let mut disks: BTreeMap<String, PowerFs> = BTreeMap::new();
    let cluster = Cluster::start_prepared(Flavor::Oxcd, 3, &MEMBER_ARGS, |spec, _| {
        std::fs::create_dir_all(&spec.data_dir)?;
        // After a port clash the cluster starts again with new members; their disks replace the
        // previous attempt's.
        disks.insert(spec.name.clone(), PowerFs::mount(&spec.data_dir)?);
        Ok(())
    })
    .await;
    let mut oxcd = Oxcd::Cluster(cluster);
    let by_member: Vec<&PowerFs> = oxcd
        .members()
        .iter()
        .map(|m| &disks[&m.spec().name])
        .collect();
    acknowledged_writes_survive_power_cuts(&mut oxcd, &by_member).await;
    // Unmounted before the cluster is dropped, which removes the member dirs they sit in.
    oxcd.kill_all();
    drop(disks);
}

/// Writes through `member` until `n` writes are acknowledged, and returns them.
async fn acknowledged_writes(cluster: &Cluster, member: usize, prefix: &str, n: usize) -> Vec<Ack> {
    let endpoint = [cluster.members()[member].endpoint()];
    let load = Writers::start(&endpoint, prefix, WRITERS).await;
    load.wait_for_acks(n, Duration::from_secs(60)).await;
    load.finish().await.0
}

/// A member's engine writes (what it applies) are not synced as they are made; a SIGKILL keeps
/// them in the page cache, and the member reads them back when it starts again. A power cut
/// later must not leave it with those writes gone but later ones, synced since (a vote saved in
/// an election), kept: its state would skip what it applied before the kill, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_then_cut_later_keeps_what_it_applied_before_the_kill() {
    let mut disks: BTreeMap<String, PowerFs> = BTreeMap::new();
    // No snapshot point (which syncs the engine) in the whole test.
    let mut cluster =
        Cluster::start_prepared(Flavor::Oxcd, 3, &["--snapshot-count=1000000"], |spec, _| {
            std::fs::create_dir_all(&spec.data_dir)?;
            disks.insert(spec.name.clone(), PowerFs::mount(&spec.data_dir)?);
            Ok(())
        })
        .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // Applied by the follower, then kept through its SIGKILL in the page cache only.
    let mut all_acks = acknowledged_writes(&cluster, leader, "cut-later/a", 3000).await;
    let applied = all_acks.iter().map(|a| a.revision).max().unwrap();
    let follower_endpoint = cluster.members()[follower].endpoint();
    hash_at(&follower_endpoint, applied, "before the kill").await;
    cluster.kill(follower);
    cluster.restart(follower).await;

    // More writes, then an election: every member saves its vote for the new term, synced.
    all_acks.extend(acknowledged_writes(&cluster, leader, "cut-later/b", 1000).await);
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    cluster.restart(leader).await;
    all_acks.extend(acknowledged_writes(&cluster, new_leader, "cut-later/c", 1000).await);

    // The follower loses what it never synced.
    cluster.kill(follower);
    let name = cluster.members()[follower].spec().name.clone();
    println!("{name}: {}", disks[&name].cut_power());
    cluster.restart(follower).await;

    let serving = [new_leader, other].map(|i| cluster.members()[i].endpoint());
    let mut client = client_for(&serving).await;
    let (_, store) = read_prefix(&mut client, "cut-later/", false).await;
    verify(&all_acks, &store, "after the cut");
    let probe = client
        .put("power-loss-probe", "after the cut", None)
        .await
        .unwrap();
    let revision = probe.header().expect("put header").revision();
    let mut hashes = BTreeMap::new();
    for i in [follower, new_leader, other] {
        let member = &cluster.members()[i];
        let hash = hash_at(&member.endpoint(), revision, "after the cut").await;
        hashes.insert(member.spec().name.clone(), hash);
    }
    let distinct: Vec<_> = hashes.values().collect();
    assert!(
        distinct.windows(2).all(|pair| pair[0] == pair[1]),
        "members disagree on HashKV (hash, compact revision) at revision {revision}: {hashes:?}"
    );
    for i in 0..3 {
        cluster.kill(i);
    }
    drop(disks);
}
