//! Maintenance.Downgrade with etcd 3.6's protocol, driven by etcdctl 3.7 against etcd 3.7 and
//! oxcd (same output, errors and exit codes; and by oxcdctl against oxcd), the Status fields that report it, and oxcd's own
//! data-dir format check.
//!
//! etcd 3.7 has cluster version 3.7 and oxcd the minor of the etcd version it reports, so the
//! targets are written relative to each server's cluster version (`{cv}` for it, `{prev}` one
//! minor below, `{prev2}` two below, `{next}` one above) and its output is compared with those
//! versions put back as placeholders.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oxcd_tests::cluster::Cluster;
use oxcd_tests::{etcd37_bin, oxcdctl_bin, run_expecting_exit, Flavor, Server};

fn etcdctl37() -> PathBuf {
    etcd37_bin().with_file_name("etcdctl")
}

/// A cluster version and its neighbours, as text.
struct Versions {
    cv: (u64, u64),
}

impl Versions {
    /// From a server's Status version (`3.7.3`).
    fn of(server_version: &str) -> Versions {
        let mut parts = server_version.split('.').map(|p| p.parse::<u64>().unwrap());
        Versions {
            cv: (parts.next().unwrap(), parts.next().unwrap()),
        }
    }

    fn minor(&self, delta: i64) -> String {
        format!("{}.{}", self.cv.0, self.cv.1 as i64 + delta)
    }

    /// `step` with its placeholders replaced.
    fn fill(&self, step: &str) -> String {
        step.replace("{cv}", &self.minor(0))
            .replace("{prev2}", &self.minor(-2))
            .replace("{prev}", &self.minor(-1))
            .replace("{next}", &self.minor(1))
    }

    /// `out` with the versions put back as placeholders (whole `x.y.0` first).
    fn mask(&self, out: &str) -> String {
        let mut out = out.to_string();
        for (delta, name) in [(0, "{cv}"), (-1, "{prev}"), (-2, "{prev2}"), (1, "{next}")] {
            out = out.replace(&format!("{}.0", self.minor(delta)), &format!("{name}.0"));
            out = out.replace(&self.minor(delta), name);
        }
        out
    }
}

/// Runs etcdctl 3.7 with `args`; returns its exit code, stdout and final `Error:` line.
fn etcdctl(endpoint: &str, args: &[String]) -> (i32, String, String) {
    run_ctl(&etcdctl37(), endpoint, args)
}

/// [`etcdctl`] with another etcdctl-compatible binary.
fn run_ctl(ctl: &Path, endpoint: &str, args: &[String]) -> (i32, String, String) {
    let out = std::process::Command::new("timeout")
        .arg("30")
        .arg(ctl)
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .rfind(|l| l.starts_with("Error: "))
        .unwrap_or_default()
        .to_string();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        error,
    )
}

/// The Status fields a downgrade moves, of every member, from `etcdctl endpoint status -w
/// json`, with the versions masked; sizes are checked for presence and sense, not value.
fn status_fields(endpoints: &[String], v: &Versions, extra: &[&str]) -> Vec<String> {
    endpoints
        .iter()
        .map(|endpoint| {
            let args = extra.iter().chain(&["endpoint", "status", "-w", "json"]);
            let (code, out, error) =
                etcdctl(endpoint, &args.map(|a| a.to_string()).collect::<Vec<_>>());
            assert_eq!(code, 0, "endpoint status: {error}");
            let json: serde_json::Value = serde_json::from_str(&out).unwrap();
            let status = &json[0]["Status"];
            let (size, in_use) = (
                status["dbSize"].as_i64().unwrap(),
                status["dbSizeInUse"].as_i64().unwrap(),
            );
            assert!(in_use > 0 && in_use <= size, "{status}");
            let version = http_version(endpoint);
            v.mask(&format!(
                "storageVersion={} dbSizeQuota={} downgradeInfo={} /version:etcdcluster={},storage={}",
                status["storageVersion"],
                status["dbSizeQuota"],
                status["downgradeInfo"],
                version["etcdcluster"],
                version["storage"]
            ))
        })
        .collect()
}

/// The member's `/version` (plain HTTP on the client port), whose cluster and storage versions
/// follow a downgrade as Status does.
fn http_version(endpoint: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("{endpoint}/version")])
        .output()
        .expect("curl must be installed");
    assert!(out.status.success(), "curl /version: {out:?}");
    serde_json::from_slice(&out.stdout).expect("/version answers JSON")
}

/// Waits until every member reports `storage` (masked: `{prev}.0`) as its storage version: etcd's leader moves the
/// cluster version (and each member its storage version) a few seconds after a downgrade is
/// enabled or canceled; oxcd at once.
async fn wait_storage_version(endpoints: &[String], v: &Versions, storage: &str, extra: &[&str]) {
    let want = format!("storageVersion=\"{storage}\"");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fields = status_fields(endpoints, v, extra);
        if fields.iter().all(|f| f.starts_with(&want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "storage version never became {storage}: {fields:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// etcd's members report an older storage version (and a cluster version not yet decided)
/// until the leader has settled the cluster version after start.
async fn settle(endpoints: &[String], v: &Versions) {
    wait_storage_version(endpoints, v, "{cv}.0", &[]).await;
}

/// One step's masked outcome, run by `ctl`.
fn step(ctl: &Path, endpoint: &str, v: &Versions, args: &str, extra: &[&str]) -> String {
    let mut argv: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    argv.extend(v.fill(args).split_whitespace().map(str::to_string));
    let (code, out, error) = run_ctl(ctl, endpoint, &argv);
    v.mask(&format!("$ {args}\nexit {code}\n{out}{error}\n"))
}

/// The whole sequence on one cluster, as one transcript: the downgrade commands run by `ctl`,
/// the Status fields read with etcdctl 3.7.
async fn downgrade_transcript(flavor: Flavor, members: usize, ctl: &Path) -> String {
    let cluster = Cluster::start(flavor, members, &[]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    // A follower when there is one: its calls reach the leader through it.
    let endpoint = cluster.members()[(leader + 1) % members].endpoint();
    let version = cluster.status(leader).await.unwrap().version().to_string();
    let endpoints = cluster.endpoints();
    let v = Versions::of(&version);
    settle(&endpoints, &v).await;
    let mut t = String::new();
    let run = |t: &mut String, steps: &[&str]| {
        for args in steps {
            t.push_str(&step(ctl, &endpoint, &v, args, &[]));
        }
    };
    run(
        &mut t,
        &[
            // No downgrade: etcd logs the failed cancel and answers success.
            "downgrade cancel",
            "downgrade validate {cv}",
            "downgrade validate {next}",
            "downgrade validate {prev2}",
            "downgrade validate {prev}",
            "downgrade validate {prev}.9",
            "downgrade validate {prev}.0-rc.1+meta",
            "downgrade validate x",
            "downgrade validate v{prev}",
            "downgrade validate {prev}-rc1",
            "downgrade validate",
            "downgrade validate {prev} {prev}",
            "downgrade enable {cv}",
            "downgrade enable x",
        ],
    );
    t.push_str(&(status_fields(&endpoints, &v, &[]).join("\n") + "\n"));
    run(&mut t, &["downgrade enable {prev}"]);
    wait_storage_version(&endpoints, &v, "{prev}.0", &[]).await;
    t.push_str(&(status_fields(&endpoints, &v, &[]).join("\n") + "\n"));
    run(
        &mut t,
        &[
            // The cluster version is now the target: one below it is the only valid target,
            // and a downgrade is already in progress.
            "downgrade validate {prev}",
            "downgrade validate {prev2}",
            "downgrade enable {prev2}",
            "downgrade enable {prev}",
            "downgrade cancel",
        ],
    );
    wait_storage_version(&endpoints, &v, "{cv}.0", &[]).await;
    t.push_str(&(status_fields(&endpoints, &v, &[]).join("\n") + "\n"));
    run(
        &mut t,
        &[
            "downgrade cancel",
            "downgrade validate {prev}",
            "downgrade enable {prev}",
        ],
    );
    wait_storage_version(&endpoints, &v, "{prev}.0", &[]).await;
    // Every member applied the same change.
    t.push_str(&(status_fields(&endpoints, &v, &[]).join("\n") + "\n"));
    t
}

fn assert_same(etcd: &str, oxcd: &str) {
    let first = etcd
        .lines()
        .zip(oxcd.lines())
        .position(|(a, b)| a != b)
        .map_or(String::new(), |i| {
            format!("first difference on line {}\n", i + 1)
        });
    assert!(
        etcd == oxcd,
        "etcd 3.7 and oxcd differ\n{first}--- etcd 3.7\n{etcd}\n--- oxcd\n{oxcd}"
    );
}

#[tokio::test]
async fn etcdctl_downgrade_on_one_member_matches_etcd_37() {
    let ctl = etcdctl37();
    let (etcd, oxcd) = tokio::join!(
        downgrade_transcript(Flavor::Etcd37, 1, &ctl),
        downgrade_transcript(Flavor::Oxcd, 1, &ctl)
    );
    assert_same(&etcd, &oxcd);
    // The sequence really went through both errors and an enable.
    assert!(oxcd.contains("Error: etcdserver: invalid downgrade target version"));
    assert!(oxcd.contains("Error: etcdserver: cluster has a downgrade job in progress"));
    assert!(oxcd.contains("\"enabled\":true"));
}

#[tokio::test]
async fn etcdctl_downgrade_on_three_members_matches_etcd_37() {
    let ctl = etcdctl37();
    let (etcd, oxcd) = tokio::join!(
        downgrade_transcript(Flavor::Etcd37, 3, &ctl),
        downgrade_transcript(Flavor::Oxcd, 3, &ctl)
    );
    assert_same(&etcd, &oxcd);
}

/// oxcdctl's `downgrade` against oxcd prints what etcdctl 3.7 prints against etcd 3.7.
#[tokio::test]
async fn oxcdctl_downgrade_matches_etcdctl_37() {
    let (etcdctl, oxcdctl) = (etcdctl37(), oxcdctl_bin());
    let (etcd, oxcd) = tokio::join!(
        downgrade_transcript(Flavor::Etcd37, 1, &etcdctl),
        downgrade_transcript(Flavor::Oxcd, 1, &oxcdctl)
    );
    assert_same(&etcd, &oxcd);
}

/// With auth on, Downgrade is for the root role only.
async fn auth_transcript(flavor: Flavor) -> String {
    let server = Server::start(flavor).await;
    let endpoint = server.endpoint();
    let version = server
        .client()
        .await
        .status()
        .await
        .unwrap()
        .version()
        .to_string();
    let v = Versions::of(&version);
    settle(std::slice::from_ref(&endpoint), &v).await;
    for setup in [
        "user add root --new-user-password=rootpw",
        "user grant-role root root",
        "user add alice --new-user-password=alicepw",
        "auth enable",
    ] {
        let (code, _, error) = etcdctl(
            &endpoint,
            &v.fill(setup)
                .split(' ')
                .map(String::from)
                .collect::<Vec<_>>(),
        );
        assert_eq!(code, 0, "{flavor}: {setup}: {error}");
    }
    let mut t = String::new();
    for (user, args) in [
        (None, "downgrade validate {prev}"),
        (Some("--user=alice:alicepw"), "downgrade validate {prev}"),
        (Some("--user=alice:alicepw"), "downgrade cancel"),
        (Some("--user=root:rootpw"), "downgrade validate {prev}"),
        (Some("--user=root:rootpw"), "downgrade enable {prev}"),
    ] {
        t.push_str(&step(&etcdctl37(), &endpoint, &v, args, user.as_slice()));
    }
    // etcd lowers the cluster version a few seconds later, and reports it on a cancel.
    let root = ["--user=root:rootpw"];
    wait_storage_version(std::slice::from_ref(&endpoint), &v, "{prev}.0", &root).await;
    t.push_str(&step(
        &etcdctl37(),
        &endpoint,
        &v,
        "downgrade cancel",
        &root,
    ));
    t
}

#[tokio::test]
async fn downgrade_needs_the_root_role_as_on_etcd_37() {
    let (etcd, oxcd) = tokio::join!(
        auth_transcript(Flavor::Etcd37),
        auth_transcript(Flavor::Oxcd)
    );
    assert_same(&etcd, &oxcd);
    assert!(oxcd.contains("Error: etcdserver: permission denied"));
}

/// A data dir written by a newer oxcd (a higher format version) is refused with both versions
/// named. (Data dirs of earlier formats open converted: tests/tests/upgrade.rs.)
#[tokio::test]
async fn a_data_dir_of_a_newer_format_is_refused() {
    use oxcd::storage::{Cf, Engine, DATA_DIR_FORMAT, FORMAT_KEY};

    let mut server = Server::start(Flavor::Oxcd).await;
    let mut client = server.client().await;
    client.put("k", "v", None).await.unwrap();
    drop(client);
    server.terminate(Duration::from_secs(10)).unwrap();
    let newer = DATA_DIR_FORMAT + 1;
    {
        let engine = Engine::open(server.data_dir()).unwrap();
        assert_eq!(
            engine.get(Cf::RaftState, FORMAT_KEY).unwrap(),
            Some(DATA_DIR_FORMAT.to_be_bytes().to_vec()),
            "a new data dir records its format"
        );
        let mut batch = engine.batch();
        batch.put(Cf::RaftState, FORMAT_KEY, &newer.to_be_bytes());
        engine.write(batch, true).unwrap();
    }

    let log = server.dir().join("newer-format.log");
    let (status, output) =
        run_expecting_exit(server.spec(), &log, Duration::from_secs(20)).unwrap();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!("has format version {newer}, newer than this oxcd"))
            && output.contains(&format!("(format version {DATA_DIR_FORMAT})")),
        "{output}"
    );
}

/// An enabled downgrade and the lowered cluster version survive a restart.
async fn restart_transcript(flavor: Flavor) -> String {
    let mut server = Server::start(flavor).await;
    let endpoint = server.endpoint();
    let version = server
        .client()
        .await
        .status()
        .await
        .unwrap()
        .version()
        .to_string();
    let v = Versions::of(&version);
    let ctl = etcdctl37();
    let endpoints = [endpoint.clone()];
    settle(&endpoints, &v).await;
    let mut t = step(&ctl, &endpoint, &v, "downgrade enable {prev}", &[]);
    wait_storage_version(&endpoints, &v, "{prev}.0", &[]).await;
    server.terminate(Duration::from_secs(10)).unwrap();
    server.restart().await;
    t.push_str(&(status_fields(&endpoints, &v, &[]).join("\n") + "\n"));
    for args in ["downgrade validate {prev}", "downgrade cancel"] {
        t.push_str(&step(&ctl, &endpoint, &v, args, &[]));
    }
    t
}

#[tokio::test]
async fn a_downgrade_survives_a_restart_as_on_etcd_37() {
    let (etcd, oxcd) = tokio::join!(
        restart_transcript(Flavor::Etcd37),
        restart_transcript(Flavor::Oxcd)
    );
    assert_same(&etcd, &oxcd);
    assert!(oxcd.contains("\"enabled\":true"), "{oxcd}");
}

/// A follower that was down while a downgrade was enabled learns it when it returns (on oxcd
/// from a Raft snapshot: with `--snapshot-count=5` the enabling entry is purged from the log
/// by then). etcd lowers the cluster version only once it knows every member's version, so
/// only after the follower is back; oxcd at once (its members all run one version).
async fn returning_member_transcript(flavor: Flavor) -> String {
    let mut cluster = Cluster::start(flavor, 3, &["--snapshot-count=5"]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let endpoint = cluster.members()[leader].endpoint();
    let version = cluster.status(leader).await.unwrap().version().to_string();
    let v = Versions::of(&version);
    let ctl = etcdctl37();
    settle(&cluster.endpoints(), &v).await;
    cluster.kill(follower);
    let mut t = step(&ctl, &endpoint, &v, "downgrade enable {prev}", &[]);
    let mut client = cluster.client_all().await;
    for i in 0..30 {
        client.put(format!("k{i}"), "v", None).await.unwrap();
    }
    cluster.restart(follower).await;
    let returned = [cluster.members()[follower].endpoint()];
    wait_storage_version(&cluster.endpoints(), &v, "{prev}.0", &[]).await;
    t.push_str(&(status_fields(&returned, &v, &[]).join("\n") + "\n"));
    t.push_str(&step(
        &ctl,
        &returned[0],
        &v,
        "downgrade validate {prev2}",
        &[],
    ));
    t
}

#[tokio::test]
async fn a_member_that_was_down_learns_the_downgrade_as_on_etcd_37() {
    let (etcd, oxcd) = tokio::join!(
        returning_member_transcript(Flavor::Etcd37),
        returning_member_transcript(Flavor::Oxcd)
    );
    assert_same(&etcd, &oxcd);
    assert!(oxcd.contains("\"enabled\":true"), "{oxcd}");
}

/// A new member cannot join a cluster with a downgrade enabled (etcd admits only members of the
/// target version then); once the downgrade is canceled it can. (etcd then leaves the cluster
/// version lowered while the refused member, still in the membership, is down.)
async fn joining(flavor: Flavor) -> (String, bool) {
    let mut cluster = Cluster::start(flavor, 3, &[]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let endpoint = cluster.members()[leader].endpoint();
    let version = cluster.status(leader).await.unwrap().version().to_string();
    let v = Versions::of(&version);
    let ctl = etcdctl37();
    settle(&cluster.endpoints(), &v).await;
    step(&ctl, &endpoint, &v, "downgrade enable {prev}", &[]);
    wait_storage_version(&cluster.endpoints(), &v, "{prev}.0", &[]).await;
    let refused = match cluster.try_add_member("early", false).await {
        Ok(_) => "joined".to_string(),
        Err(e) => format!("{e:#}"),
    };
    step(&ctl, &endpoint, &v, "downgrade cancel", &[]);
    // The refused member stays in the membership, down; the cluster keeps its quorum.
    let later = cluster.try_add_member("later", false).await.is_ok();
    (refused, later)
}

#[tokio::test]
async fn a_new_member_is_refused_during_a_downgrade_as_on_etcd_37() {
    let (etcd, oxcd) = tokio::join!(joining(Flavor::Etcd37), joining(Flavor::Oxcd));
    for (flavor, (refused, later)) in [("etcd 3.7", etcd), ("oxcd", oxcd)] {
        assert!(
            refused.contains("incompatible with current running cluster"),
            "{flavor}: {refused}"
        );
        assert!(
            later,
            "{flavor}: a member joins once the downgrade is canceled"
        );
    }
}
