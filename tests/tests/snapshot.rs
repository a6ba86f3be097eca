//! Backups: `oxcdctl snapshot save` (and etcdctl's) against a running oxcd, `snapshot status`,
//! and `snapshot restore` into new single- and three-member clusters that must hold exactly the
//! saved keys, revisions, leases and compaction point.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use oxcd_tests::cluster::{etcdctl, restored_by, restored_from, Cluster};
use oxcd_tests::{oxcdctl_bin, Flavor};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn expect_ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "oxcdctl failed: {self:#?}");
        &self.stdout
    }
}

fn oxcdctl_command(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(oxcdctl_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Runs oxcdctl to the end (restores are blocking work; saves are short in these tests).
fn oxcdctl(args: &[&str]) -> Run {
    let output = oxcdctl_command(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", oxcdctl_bin().display()));
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn save(endpoint: &str, file: &Path) {
    let file = file.to_str().unwrap();
    let run = oxcdctl(&[&format!("--endpoints={endpoint}"), "snapshot", "save", file]);
    assert_eq!(run.expect_ok(), format!("Snapshot saved at {file}\n"));
}

fn status_json(file: &Path) -> serde_json::Value {
    let run = oxcdctl(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    serde_json::from_str(run.expect_ok()).unwrap()
}

/// Keys, values, revisions and lease ids of every key, and the store's revision, as seen by
/// `endpoint` alone (member ids, cluster id and term differ between clusters).
async fn everything(endpoint: &str) -> (serde_json::Value, serde_json::Value) {
    let out = etcdctl(
        &[endpoint.to_string()],
        &["get", "", "--from-key", "-w", "json"],
    )
    .await;
    let json = out.json();
    (json["kvs"].clone(), json["header"]["revision"].clone())
}

/// `lease list`, and `lease timetolive --keys` of each lease without the remaining time (a
/// restored lease starts its TTL afresh, as on etcd).
async fn leases(endpoint: &str) -> (String, Vec<String>) {
    let endpoints = [endpoint.to_string()];
    let list = etcdctl(&endpoints, &["lease", "list"]).await;
    let list = list.expect_ok().to_string();
    let mut details = Vec::new();
    for id in list.lines().skip(1) {
        let out = etcdctl(&endpoints, &["lease", "timetolive", id, "--keys"]).await;
        let line = out.expect_ok().trim().to_string();
        let start = line
            .find("remaining(")
            .expect("timetolive prints the remaining TTL");
        let end = start + line[start..].find("), ").unwrap() + 3;
        details.push(format!("{}{}", &line[..start], &line[end..]));
    }
    (list, details)
}

/// A history with overwrites, a deletion, a leased key and a compaction. Returns a revision
/// that is compacted away.
async fn write_history(endpoints: &[String]) -> i64 {
    let grant = etcdctl(endpoints, &["lease", "grant", "600"]).await;
    let lease = grant
        .expect_ok()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    for args in [
        ["put", "a", "1"],
        ["put", "b", "2"],
        ["put", "a", "3"],
        ["del", "b", ""],
        ["put", "c", "4"],
    ] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        etcdctl(endpoints, &args).await.expect_ok();
    }
    etcdctl(
        endpoints,
        &["put", "leased", "x", &format!("--lease={lease}")],
    )
    .await
    .expect_ok();
    etcdctl(endpoints, &["compact", "4"]).await.expect_ok();
    etcdctl(endpoints, &["put", "a", "after-compaction"])
        .await
        .expect_ok();
    3
}

async fn assert_compacted_at(endpoint: &str, rev: i64) {
    let out = etcdctl(
        &[endpoint.to_string()],
        &["get", "a", &format!("--rev={rev}")],
    )
    .await;
    assert_eq!(out.error(), Some(COMPACTED), "{out:#?}");
}

#[tokio::test]
async fn a_member_restored_from_a_backup_has_the_same_keys_revisions_leases_and_compaction() {
    let source = Cluster::start(Flavor::Oxcd, 1, &[]).await;
    let endpoint = source.endpoints()[0].clone();
    let compacted = write_history(&source.endpoints()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    save(&endpoint, &file);
    assert!(!dir.path().join("backup.db.part").exists());

    // etcdctl's own save against oxcd writes the same file.
    let by_etcdctl = dir.path().join("etcdctl.db");
    etcdctl(
        std::slice::from_ref(&endpoint),
        &["snapshot", "save", by_etcdctl.to_str().unwrap()],
    )
    .await
    .expect_ok();
    assert_eq!(status_json(&by_etcdctl), status_json(&file));
    assert_eq!(
        std::fs::read(&by_etcdctl).unwrap(),
        std::fs::read(&file).unwrap()
    );

    let (kvs, revision) = everything(&endpoint).await;
    let saved_leases = leases(&endpoint).await;
    let status = status_json(&file);
    assert_eq!(status["revision"], revision);
    // etcd's database size: the file without its sha256.
    assert_eq!(
        status["totalSize"],
        std::fs::metadata(&file).unwrap().len() - 32
    );

    let restored =
        Cluster::start_prepared(Flavor::Oxcd, 1, &[], restored_from(file, Vec::new())).await;
    let at = restored.endpoints()[0].clone();
    assert_eq!(everything(&at).await, (kvs.clone(), revision.clone()));
    assert_eq!(leases(&at).await, saved_leases);
    assert_eq!(saved_leases.1.len(), 1);
    assert_compacted_at(&at, compacted).await;

    // The restored member is a working cluster that goes on from the saved revision.
    let put = etcdctl(
        std::slice::from_ref(&at),
        &["put", "new", "v", "-w", "json"],
    )
    .await;
    assert_eq!(
        put.json()["header"]["revision"].as_i64(),
        Some(revision.as_i64().unwrap() + 1)
    );
    drop(source);
}

#[tokio::test]
async fn three_members_restored_from_one_file_form_one_cluster() {
    let source = Cluster::start(Flavor::Oxcd, 3, &[]).await;
    let compacted = write_history(&source.endpoints()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    save(&source.endpoints()[1], &file);
    let saved = everything(&source.endpoints()[0]).await;
    let saved_leases = leases(&source.endpoints()[0]).await;
    drop(source);

    let restored =
        Cluster::start_prepared(Flavor::Oxcd, 3, &[], restored_from(file, Vec::new())).await;
    let endpoints = restored.endpoints();
    for at in &endpoints {
        assert_eq!(everything(at).await, saved, "member at {at}");
        assert_eq!(leases(at).await, saved_leases, "member at {at}");
        assert_compacted_at(at, compacted).await;
    }
    let members = etcdctl(&endpoints, &["member", "list"]).await;
    let mut names: Vec<&str> = members
        .expect_ok()
        .lines()
        .map(|l| l.split(", ").nth(2).unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"]);

    // A write through one member is seen by every member.
    etcdctl(&endpoints[..1], &["put", "after-restore", "yes"])
        .await
        .expect_ok();
    for at in &endpoints {
        let got = etcdctl(
            std::slice::from_ref(at),
            &["get", "after-restore", "--print-value-only"],
        )
        .await;
        assert_eq!(got.expect_ok(), "yes\n", "member at {at}");
    }
}

#[tokio::test]
async fn a_backup_taken_while_a_writer_runs_holds_whole_transactions() {
    let source = Cluster::start(Flavor::Oxcd, 1, &[]).await;
    let endpoint = source.endpoints()[0].clone();
    let mut client = source.client_all().await;
    // Enough data that the backup takes a while.
    let value = vec![b'x'; 4096];
    for i in 0..2000 {
        client
            .put(format!("fill/{i:05}"), value.clone(), None)
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let puts = (0..10).map(|j| TxnOp::put(format!("w/{j}"), round.to_string(), None));
                client
                    .txn(Txn::new().and_then(puts.collect::<Vec<_>>()))
                    .await
                    .unwrap();
            }
            round
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let saved = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || save(&endpoint, &file))
    };
    saved.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    let revision = status_json(&file)["revision"].as_i64().unwrap();

    let restored =
        Cluster::start_prepared(Flavor::Oxcd, 1, &[], restored_from(file, Vec::new())).await;
    let at = restored.endpoints()[0].clone();
    let out = etcdctl(&[at], &["get", "w/", "--prefix", "-w", "json"]).await;
    let json = out.json();
    let kvs = json["kvs"].as_array().unwrap();
    assert_eq!(kvs.len(), 10, "every key of the transaction");
    let first = &kvs[0];
    for kv in kvs {
        assert_eq!(kv["value"], first["value"], "one transaction's values");
        assert_eq!(kv["mod_revision"], first["mod_revision"]);
    }
    assert_eq!(first["mod_revision"].as_i64(), Some(revision));
    assert_eq!(json["header"]["revision"].as_i64(), Some(revision));
    assert!(rounds > 1);
}

#[tokio::test]
async fn damaged_backups_are_refused_and_create_no_data_dir() {
    let source = Cluster::start(Flavor::Oxcd, 1, &[]).await;
    write_history(&source.endpoints()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    save(&source.endpoints()[0], &file);
    let good = std::fs::read(&file).unwrap();
    let target = dir.path().join("restored");
    let restore = |bytes: &[u8]| {
        let damaged = dir.path().join("damaged.db");
        std::fs::write(&damaged, bytes).unwrap();
        let run = oxcdctl(&[
            "snapshot",
            "restore",
            damaged.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert!(!target.exists(), "no data dir is left behind");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "nothing next to it either: {names:?}");
        run.stderr
    };

    let truncated = restore(&good[..good.len() - 100]);
    assert_eq!(
        truncated,
        "Error: snapshot missing hash but --skip-hash-check=false\n"
    );
    let mut flipped = good.clone();
    flipped[good.len() / 3] ^= 0x01;
    let err = restore(&flipped);
    assert!(err.starts_with("Error: expected sha256 ["), "{err}");

    std::fs::create_dir(&target).unwrap();
    let run = oxcdctl(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.stderr,
        format!("Error: data-dir {:?} exists\n", target.to_str().unwrap())
    );
}

#[tokio::test]
async fn a_member_added_to_a_restored_cluster_gets_the_restored_keys() {
    let source = Cluster::start(Flavor::Oxcd, 1, &[]).await;
    write_history(&source.endpoints()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    save(&source.endpoints()[0], &file);
    let saved = everything(&source.endpoints()[0]).await;
    drop(source);

    let mut restored =
        Cluster::start_prepared(Flavor::Oxcd, 1, &[], restored_from(file, Vec::new())).await;
    // A learner: the harness adds voters only to clusters that keep a quorum without them.
    let added = restored.add_member("n2", true).await;
    let at = restored.members()[added.index].endpoint();
    let (kvs, _) = saved;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = etcdctl(
            std::slice::from_ref(&at),
            &["get", "", "--from-key", "-w", "json", "--consistency=s"],
        )
        .await;
        if out.json()["kvs"] == kvs {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the learner never got the restored keys: {out:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a client sees of a member restored with `--bump-revision 1000 --mark-compacted` from a
/// store saved at revision `saved`.
#[derive(Debug, PartialEq)]
struct Bumped {
    revision: i64,
    /// Every key at the latest revision and at the bumped one: (key, value, create, mod, version).
    now: Vec<(String, String, i64, i64, i64)>,
    at_bump: Vec<(String, String, i64, i64, i64)>,
    hash_kv: (u32, i64),
    /// The error of a read at the saved revision, and at the one just below the bump.
    below: [String; 2],
    /// A watch from the saved revision: canceled, and the compaction revision it names.
    watch_from_saved: (bool, i64),
    next_put: i64,
    /// A Txn comparing the old keys' mod and create revisions: succeeded, at which revision.
    txn: (bool, i64),
}

async fn observe_bumped(client: &mut Client, saved: i64) -> Bumped {
    let all = |rev| Some(GetOptions::new().with_from_key().with_revision(rev));
    let kvs = |resp: &etcd_client::GetResponse| {
        resp.kvs()
            .iter()
            .map(|kv| {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let (key, value) = (text(kv.key()), text(kv.value()));
                (
                    key,
                    value,
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect::<Vec<_>>()
    };
    let now = client.get(vec![0u8], all(0)).await.unwrap();
    let revision = now.header().unwrap().revision();
    let at_bump = client.get(vec![0u8], all(revision)).await.unwrap();
    let hash = client.hash_kv(revision).await.unwrap();
    let mut below = Vec::new();
    for rev in [saved, revision - 1] {
        let err = client
            .get("a", Some(GetOptions::new().with_revision(rev)))
            .await;
        below.push(err.expect_err("compacted").to_string());
    }
    let mut stream = client
        .watch("a", Some(WatchOptions::new().with_start_revision(saved)))
        .await
        .unwrap();
    let watch_from_saved = loop {
        let message = stream.message().await.unwrap().expect("watch ended");
        if !message.created() || message.canceled() {
            break (message.canceled(), message.compact_revision());
        }
    };
    let next_put = client.put("new", "v", None).await.unwrap();
    let old = &kvs(&now)[0];
    let txn = Txn::new()
        .when([
            Compare::mod_revision(old.0.clone(), CompareOp::Equal, old.3),
            Compare::create_revision(old.0.clone(), CompareOp::Equal, old.2),
        ])
        .and_then([TxnOp::put("txn", "ok", None)]);
    let txn = client.txn(txn).await.unwrap();
    Bumped {
        revision,
        now: kvs(&now),
        at_bump: kvs(&at_bump),
        hash_kv: (hash.hash(), hash.compact_version()),
        below: below.try_into().unwrap(),
        watch_from_saved,
        next_put: next_put.header().unwrap().revision(),
        txn: (txn.succeeded(), txn.header().unwrap().revision()),
    }
}

/// `snapshot restore --bump-revision 1000 --mark-compacted`: oxcdctl on oxcd's backup and on
/// etcd 3.7's snapshot gives a member that serves what etcd 3.7 serves after etcdutl 3.7's
/// restore of the same history: the revision goes on from the bump, everything below it reads
/// and watches as compacted, the old keys keep their revisions, and HashKV agrees.
#[tokio::test]
async fn a_restore_with_a_revision_bump_serves_what_etcd_serves_after_etcdutls() {
    let dir = tempfile::tempdir().unwrap();
    let bump = ["--bump-revision", "1000", "--mark-compacted"].map(String::from);
    let etcdutl = oxcd_tests::etcd37_bin().with_file_name("etcdutl");
    let mut files = Vec::new();
    for flavor in [Flavor::Oxcd, Flavor::Etcd37] {
        let source = Cluster::start(flavor, 1, &[]).await;
        let mut client = source.client_all().await;
        for (key, value) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")] {
            client.put(key, value, None).await.unwrap();
        }
        client.delete("b", None).await.unwrap();
        client.compact(4, None).await.unwrap();
        let saved = client.put("a", "5", None).await.unwrap();
        assert_eq!(saved.header().unwrap().revision(), 7, "{flavor}");
        let file = dir.path().join(format!("{flavor}.db").replace(' ', ""));
        save(&source.endpoints()[0], &file);
        files.push(file);
    }
    let [oxcd_file, etcd_file] = <[_; 2]>::try_from(files).unwrap();
    let etcd = Cluster::start_prepared(
        Flavor::Etcd37,
        1,
        &[],
        restored_by(etcdutl, etcd_file.clone(), bump.to_vec()),
    )
    .await;
    let expected = observe_bumped(&mut etcd.client_all().await, 7).await;
    assert_eq!(expected.revision, 1007);
    assert_eq!(expected.next_put, 1008);
    assert_eq!(expected.txn, (true, 1009));
    assert_eq!(expected.watch_from_saved, (true, 1007));
    assert_eq!(expected.now, expected.at_bump);
    assert_eq!(
        expected.now.iter().map(|kv| kv.3).collect::<Vec<_>>(),
        [7, 5],
        "a and c keep their revisions"
    );
    for message in &expected.below {
        assert!(message.contains(COMPACTED), "{message}");
    }
    drop(etcd);

    for file in [oxcd_file, etcd_file] {
        let oxcd = Cluster::start_prepared(
            Flavor::Oxcd,
            1,
            &[],
            restored_from(file.clone(), bump.to_vec()),
        )
        .await;
        let observed = observe_bumped(&mut oxcd.client_all().await, 7).await;
        assert_eq!(observed, expected, "{file:?}");
    }
}

/// `snapshot restore` draws its progress on stderr when stderr is a terminal (script(1) gives
/// it one), and prints only its result line otherwise.
#[test]
fn a_restore_shows_its_progress_on_a_terminal_only() {
    let fixture = oxcd_tests::package_dir().join("../bbolt/testdata/etcd-3.7.3.db");
    let dir = tempfile::tempdir().unwrap();
    let target = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let fixture = fixture.to_str().unwrap();
    let piped = oxcdctl(&[
        "snapshot",
        "restore",
        fixture,
        "--data-dir",
        &target("piped"),
    ]);
    piped.expect_ok();
    assert!(
        piped.stderr.starts_with("restored snapshot ") && piped.stderr.lines().count() == 1,
        "{piped:#?}"
    );

    let command = format!(
        "'{}' snapshot restore '{fixture}' --data-dir '{}'",
        oxcdctl_bin().display(),
        target("on-a-terminal")
    );
    let out = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    // Each stage ends drawn full: "<stage> [####…] 100% <size> / <size>".
    let full = format!("[{}] 100% ", "#".repeat(40));
    let ends_full = |line: &str, stage: &str| {
        let Some((_, sizes)) = line.rsplit_once(&format!("{stage} {full}")) else {
            return false;
        };
        matches!(sizes.split_once(" / "), Some((done, total)) if done == total && total.ends_with(" kB"))
    };
    let lines: Vec<&str> = shown.split("\r\n").collect();
    assert!(lines[0].starts_with("\rchecking sha256 ["), "{shown:?}");
    assert!(ends_full(lines[0], "checking sha256"), "{shown:?}");
    assert!(lines[1].starts_with("\rrestoring ["), "{shown:?}");
    assert!(ends_full(lines[1], "restoring"), "{shown:?}");
    assert!(lines[2].starts_with("restored snapshot "), "{shown:?}");
}
