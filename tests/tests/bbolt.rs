//! oxcd-bbolt against files made by real etcd: a snapshot saved by etcdctl from etcd 3.7 (and
//! Debian's 3.4) after puts, overwrites, deletions, a compaction, leases, users and roles is read
//! bucket by bucket and must hold exactly what etcd serves; the writer's copy of it must be what
//! `etcdutl snapshot status` accepts with the same hash, revision and key count.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};
use oxcd_bbolt::trailer::{self, HashingWriter};
use oxcd_bbolt::{Bucket, Builder, Db, Value, WriteOptions};
use oxcd_proto::authpb;
use oxcd_proto::mvccpb;
use oxcd_tests::cluster::{restored_by, restored_from, Cluster};
use oxcd_tests::{etcd37_tool, oxcdctl_bin, require_etcd, run_ok, served, Flavor, Kv, Server};
use prost::Message;

const ETCD_BUCKETS: [&str; 10] = [
    "alarm",
    "auth",
    "authRoles",
    "authUsers",
    "cluster",
    "key",
    "lease",
    "members",
    "members_removed",
    "meta",
];

fn etcdutl37() -> PathBuf {
    etcd37_tool("etcdutl")
}

fn etcdctl_for(flavor: Flavor) -> PathBuf {
    match flavor {
        Flavor::Etcd37 => etcd37_tool("etcdctl"),
        _ => oxcd_tests::cluster::etcdctl_bin(),
    }
}

/// A revision key: 8-byte main, '_', 8-byte sub, and a 't' for a tombstone.
fn parse_revision(key: &[u8]) -> (i64, i64, bool) {
    assert!(matches!(key.len(), 17 | 18), "revision key {key:?}");
    let main = i64::from_be_bytes(key[..8].try_into().unwrap());
    let sub = i64::from_be_bytes(key[9..17].try_into().unwrap());
    assert_eq!(key[8], b'_');
    (main, sub, key.len() == 18 && key[17] == b't')
}

/// Every entry of a bucket that holds no nested bucket.
fn data_entries(db: &Db, bucket: &Bucket) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.entries(bucket)
        .map(|e| {
            let e = e.unwrap();
            match e.value {
                Value::Data(v) => (e.key, v),
                Value::Bucket(_) => panic!("unexpected nested bucket {:?}", e.key),
            }
        })
        .collect()
}

fn bucket(db: &Db, name: &str) -> Bucket {
    db.bucket(&db.root(), name.as_bytes())
        .unwrap()
        .unwrap_or_else(|| panic!("no bucket {name}"))
}

fn stored(kv: &mvccpb::KeyValue) -> Kv {
    (
        kv.key.clone(),
        kv.value.clone(),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease,
    )
}

/// Puts, overwrites, a deletion, a range deletion, leased keys, a compaction, then more writes;
/// a user and a role. Returns the compaction revision.
async fn write_history(client: &mut Client) -> i64 {
    let lease = client.lease_grant(600, None).await.unwrap().id();
    for i in 0..40 {
        client
            .put(format!("k/{i:03}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    client.put("k/005", "again", None).await.unwrap();
    client.delete("k/007", None).await.unwrap();
    let opts = PutOptions::new().with_lease(lease);
    client
        .put("leased/a", "x", Some(opts.clone()))
        .await
        .unwrap();
    client.put("leased/b", "y", Some(opts)).await.unwrap();
    // Values over a page in a row: writers pack them into shared overflow pages.
    for i in 0..5 {
        client
            .put(format!("wide/{i}"), vec![b'w' + i; 6000], None)
            .await
            .unwrap();
    }
    let compact = client
        .put("k/001", "before-compaction", None)
        .await
        .unwrap();
    let compact = compact.header().unwrap().revision();
    client.compact(compact, None).await.unwrap();
    client.put("k/001", "after-compaction", None).await.unwrap();
    client
        .delete(
            "k/01",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    client.put("big", vec![b'z'; 10_000], None).await.unwrap();
    client.user_add("alice", "secret", None).await.unwrap();
    client.role_add("reader").await.unwrap();
    client.user_grant_role("alice", "reader").await.unwrap();
    let perm = etcd_client::Permission::read("k/").with_prefix();
    client.role_grant_permission("reader", perm).await.unwrap();
    let member = client.member_list().await.unwrap().members()[0].id();
    let mut on_member = etcd_client::AlarmOptions::new();
    on_member.with_member(member);
    client
        .alarm(
            etcd_client::AlarmAction::Activate,
            etcd_client::AlarmType::Nospace,
            Some(on_member),
        )
        .await
        .unwrap();
    compact
}

/// The key bucket holds exactly etcd's history since the compaction: the kvs alive at the
/// compaction revision, then one entry per event a watch from there delivers.
async fn assert_key_bucket_is_what_etcd_serves(db: &Db, client: &mut Client, compact: i64) {
    let mut at_compaction = Vec::new();
    let mut since = Vec::new();
    let mut last_main = 0;
    for (k, v) in data_entries(db, &bucket(db, "key")) {
        let (main, _sub, tombstone) = parse_revision(&k);
        assert!(main >= last_main);
        last_main = main;
        let kv = mvccpb::KeyValue::decode(v.as_slice()).unwrap();
        if main <= compact {
            assert!(!tombstone, "compaction keeps no tombstone at or before it");
            at_compaction.push(stored(&kv));
        } else {
            assert!(tombstone || kv.mod_revision == main);
            since.push((tombstone, (kv.key.clone(), main), stored(&kv)));
        }
    }
    let current = client
        .get("k", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(last_main, current);

    let all = GetOptions::new().with_from_key().with_revision(compact);
    let mut alive = client
        .get(vec![0u8], Some(all))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(served)
        .collect::<Vec<_>>();
    alive.sort_by_key(|kv| kv.3);
    at_compaction.sort_by_key(|kv| kv.3);
    assert_eq!(at_compaction, alive);

    let opts = WatchOptions::new()
        .with_all_keys()
        .with_start_revision(compact + 1);
    let mut stream = client.watch(vec![0u8], Some(opts)).await.unwrap();
    let mut events = Vec::new();
    while events.len() < since.len() {
        let message = stream.message().await.unwrap().expect("watch ended");
        events.extend(
            message
                .events()
                .iter()
                .map(|e| (e.event_type(), served(e.kv().unwrap()))),
        );
    }
    assert_eq!(events.len(), since.len());
    for ((kind, kv), (tombstone, (key, main), stored)) in events.iter().zip(&since) {
        assert_eq!(*kind == etcd_client::EventType::Delete, *tombstone);
        assert_eq!((&kv.0, kv.3), (key, *main));
        if !tombstone {
            assert_eq!(kv, stored);
        }
    }
}

/// Copies every bucket and entry of `db` into `builder`, nested buckets included.
fn copy(db: &Db, from: &Bucket, to: &mut Builder<'_>) -> Result<(), oxcd_bbolt::Error> {
    for entry in db.entries(from) {
        let entry = entry?;
        match entry.value {
            Value::Data(v) => to.put(&entry.key, &v)?,
            Value::Bucket(b) => {
                to.begin_bucket(&entry.key)?;
                copy(db, &b, to)?;
                to.end_bucket()?;
            }
        }
    }
    Ok(())
}

fn tree(db: &Db, bucket: &Bucket) -> Vec<(Vec<u8>, Option<Vec<u8>>, usize)> {
    let mut out = Vec::new();
    for e in db.entries(bucket) {
        let e = e.unwrap();
        match e.value {
            Value::Data(v) => out.push((e.key, Some(v), 0)),
            Value::Bucket(b) => {
                let inner = tree(db, &b);
                out.push((e.key, None, inner.len()));
                out.extend(inner);
            }
        }
    }
    out
}

fn status(file: &Path) -> serde_json::Value {
    let out = run_ok(
        &etcdutl37(),
        &["snapshot", "status", file.to_str().unwrap(), "-w", "json"],
    );
    serde_json::from_str(&out).unwrap()
}

async fn snapshot_of(flavor: Flavor, dir: &Path) {
    let server = Server::start(flavor).await;
    let mut client = server.client().await;
    let compact = write_history(&mut client).await;
    let file = dir.join(format!("{flavor}.db").replace(' ', ""));
    let endpoint = format!("--endpoints={}", server.endpoint());
    run_ok(
        &etcdctl_for(flavor),
        &[&endpoint, "snapshot", "save", file.to_str().unwrap()],
    );
    assert!(trailer::check(&std::fs::File::open(&file).unwrap())
        .unwrap()
        .is_valid());

    let db = Db::open(&file).unwrap();
    let names: BTreeSet<String> = db
        .entries(&db.root())
        .map(|e| String::from_utf8(e.unwrap().key).unwrap())
        .collect();
    for name in ETCD_BUCKETS {
        // 3.4 has no members_removed bucket until a member is removed.
        assert!(
            names.contains(name) || (flavor == Flavor::Etcd && name == "members_removed"),
            "{flavor}: no {name} in {names:?}"
        );
    }
    assert_key_bucket_is_what_etcd_serves(&db, &mut client, compact).await;

    let meta: std::collections::BTreeMap<_, _> = data_entries(&db, &bucket(&db, "meta"))
        .into_iter()
        .collect();
    for name in ["finishedCompactRev", "scheduledCompactRev"] {
        let rev = &meta[name.as_bytes()];
        assert_eq!(parse_revision(rev).0, compact, "{name}");
    }
    assert_eq!(meta[b"consistent_index".as_slice()].len(), 8);

    let leases: Vec<i64> = client
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    let stored_leases: Vec<i64> = data_entries(&db, &bucket(&db, "lease"))
        .iter()
        .map(|(k, _)| i64::from_be_bytes(k.as_slice().try_into().unwrap()))
        .collect();
    assert_eq!(stored_leases, leases);

    let users = data_entries(&db, &bucket(&db, "authUsers"));
    let alice = authpb::User::decode(users[0].1.as_slice()).unwrap();
    assert_eq!(
        (users.len(), alice.name.as_slice(), alice.roles.clone()),
        (1, b"alice".as_slice(), vec!["reader".to_string()])
    );
    let roles = data_entries(&db, &bucket(&db, "authRoles"));
    assert_eq!(
        roles.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![b"reader".to_vec()]
    );

    let members: Vec<u64> = client
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .map(|m| m.id())
        .collect();
    let stored_members: Vec<u64> = data_entries(&db, &bucket(&db, "members"))
        .iter()
        .map(|(k, _)| u64::from_str_radix(std::str::from_utf8(k).unwrap(), 16).unwrap())
        .collect();
    assert_eq!(stored_members, members);

    // The writer's copy: same content, accepted by etcdutl with the same hash, revision and keys.
    let copy_file = dir.join("copy.db");
    let mut out = HashingWriter::new(std::io::BufWriter::new(
        std::fs::File::create(&copy_file).unwrap(),
    ));
    oxcd_bbolt::write(&mut out, WriteOptions::default(), |b| {
        copy(&db, &db.root(), b)
    })
    .unwrap();
    out.finish().unwrap();
    let copied = Db::open(&copy_file).unwrap();
    assert_eq!(tree(&copied, &copied.root()), tree(&db, &db.root()));
    let (original, rewritten) = (status(&file), status(&copy_file));
    for field in ["hash", "revision", "totalKey", "version"] {
        assert_eq!(
            original[field], rewritten[field],
            "{flavor} status {field}: {original} vs {rewritten}"
        );
    }
    assert_eq!(rewritten["revision"], serde_json::json!(compact + 3));

    // `oxcdctl snapshot status` on etcd's file prints what etcdctl (3.4, the last etcdctl with
    // the command) prints.
    for format in ["json", "table", "simple", "fields"] {
        let args = ["snapshot", "status", file.to_str().unwrap(), "-w", format];
        assert_eq!(
            run_ok(&oxcdctl_bin(), &args),
            run_ok(&oxcd_tests::cluster::etcdctl_bin(), &args),
            "{flavor} -w {format}"
        );
    }
}

#[tokio::test]
async fn etcd_37_snapshots_are_read_and_rewritten_faithfully() {
    let dir = tempfile::tempdir().unwrap();
    snapshot_of(Flavor::Etcd37, dir.path()).await;
}

#[tokio::test]
async fn etcd_34_snapshots_are_read_and_rewritten_faithfully() {
    require_etcd();
    let dir = tempfile::tempdir().unwrap();
    snapshot_of(Flavor::Etcd, dir.path()).await;
}

/// oxcd's own backup (saved here by etcdctl 3.4) is etcd's format: the same buckets and records
/// as etcd's, accepted by etcdutl 3.7 and etcdctl 3.4.
#[tokio::test]
async fn oxcd_snapshots_are_etcds_format() {
    require_etcd();
    let dir = tempfile::tempdir().unwrap();
    snapshot_of(Flavor::Oxcd, dir.path()).await;
}

/// What a client sees of a store: every key now, every key at the compaction revision, every
/// event since it, HashKV now, leases with their keys, users and roles.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    now: Vec<Kv>,
    at_compaction: Vec<Kv>,
    events: Vec<(bool, Kv)>,
    hash_kv: (u32, i64),
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
    users: Vec<(String, Vec<String>)>,
    roles: Vec<(String, String)>,
    alarms: Vec<(u64, i32)>,
}

async fn observe(client: &mut Client, compact: i64) -> Observed {
    let all = |rev| Some(GetOptions::new().with_from_key().with_revision(rev));
    let now = client.get(vec![0u8], all(0)).await.unwrap();
    let revision = now.header().unwrap().revision();
    let at_compaction = client.get(vec![0u8], all(compact)).await.unwrap();
    let opts = WatchOptions::new()
        .with_all_keys()
        .with_start_revision(compact + 1);
    let mut stream = client.watch(vec![0u8], Some(opts)).await.unwrap();
    let mut events = Vec::new();
    while events
        .last()
        .is_none_or(|(_, kv): &(bool, Kv)| kv.3 < revision)
    {
        let message = stream.message().await.unwrap().expect("watch ended");
        events.extend(message.events().iter().map(|e| {
            let deleted = e.event_type() == etcd_client::EventType::Delete;
            (deleted, served(e.kv().unwrap()))
        }));
    }
    let hash = client.hash_kv(revision).await.unwrap();
    let mut leases = Vec::new();
    for lease in client.leases().await.unwrap().leases() {
        let ttl = client
            .lease_time_to_live(lease.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        let mut keys = ttl.keys().to_vec();
        keys.sort();
        leases.push((lease.id(), ttl.granted_ttl(), keys));
    }
    let mut users = Vec::new();
    for name in client.user_list().await.unwrap().users().to_vec() {
        users.push((
            name.clone(),
            client.user_get(name).await.unwrap().roles().to_vec(),
        ));
    }
    let mut roles = Vec::new();
    for name in client.role_list().await.unwrap().roles().to_vec() {
        let perms = client.role_get(name.clone()).await.unwrap().permissions();
        roles.push((name, format!("{perms:?}")));
    }
    let alarms = client
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .unwrap();
    let alarms = alarms
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm() as i32))
        .collect();
    Observed {
        alarms,
        revision,
        now: now.kvs().iter().map(served).collect(),
        at_compaction: at_compaction.kvs().iter().map(served).collect(),
        events,
        hash_kv: (hash.hash(), hash.compact_version()),
        leases,
        users,
        roles,
    }
}

/// The way from etcd to oxcd: a snapshot saved from real etcd, restored by oxcdctl, serves the
/// same keys, history, compaction point, HashKV, leases (keys attached), users and roles.
async fn restored_into_oxcd(flavor: Flavor) {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Server::start(flavor).await;
    let mut client = etcd.client().await;
    let compact = write_history(&mut client).await;
    let file = dir.path().join("etcd.db");
    let endpoint = format!("--endpoints={}", etcd.endpoint());
    run_ok(
        &etcdctl_for(flavor),
        &[&endpoint, "snapshot", "save", file.to_str().unwrap()],
    );
    let expected = observe(&mut client, compact).await;
    assert_eq!(expected.leases.len(), 1);
    assert_eq!(expected.leases[0].2.len(), 2);
    assert!(expected.events.iter().any(|(deleted, _)| *deleted));
    assert!(expected.at_compaction.len() > 30);
    assert_eq!(expected.alarms.len(), 1);
    assert_eq!(
        expected.users,
        [("alice".to_string(), vec!["reader".to_string()])]
    );
    // A copied `member/snap/db` of the stopped member: no trailer, and a live file's layout
    // (two meta pages of different transactions, free pages, pages past the high-water mark).
    let mut etcd = etcd;
    etcd.terminate(std::time::Duration::from_secs(10)).unwrap();
    let copied = dir.path().join("copied-db");
    std::fs::copy(etcd.data_dir().join("member/snap/db"), &copied).unwrap();
    drop(etcd);

    for (file, extra) in [(&file, None), (&copied, Some("--skip-hash-check"))] {
        let oxcd = Cluster::start_prepared(
            Flavor::Oxcd,
            1,
            &[],
            restored_from(file.clone(), extra.map(String::from).into_iter().collect()),
        )
        .await;
        let mut client = oxcd.client_all().await;
        assert_eq!(observe(&mut client, compact).await, expected, "{file:?}");
        let compacted = client
            .get("k/001", Some(GetOptions::new().with_revision(compact - 1)))
            .await;
        assert!(format!("{compacted:?}").contains("required revision has been compacted"));
    }
}

#[tokio::test]
async fn an_etcd_37_snapshot_restored_into_oxcd_serves_the_same_history() {
    restored_into_oxcd(Flavor::Etcd37).await;
}

#[tokio::test]
async fn an_etcd_34_snapshot_restored_into_oxcd_serves_the_same_history() {
    require_etcd();
    restored_into_oxcd(Flavor::Etcd).await;
}

/// The way back: oxcd's backup, restored by etcdutl 3.7 into three real etcd members, serves
/// the same keys, history, compaction point, HashKV, leases (keys attached), users, roles and
/// alarms as the oxcd member it was taken from.
#[tokio::test]
async fn an_oxcd_snapshot_restored_into_etcd_37_serves_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let oxcd = Server::start(Flavor::Oxcd).await;
    let mut client = oxcd.client().await;
    let compact = write_history(&mut client).await;
    let file = dir.path().join("oxcd.db");
    let endpoint = format!("--endpoints={}", oxcd.endpoint());
    run_ok(
        &oxcdctl_bin(),
        &[&endpoint, "snapshot", "save", file.to_str().unwrap()],
    );
    let expected = observe(&mut client, compact).await;
    assert_eq!(expected.leases[0].2.len(), 2);
    assert_eq!(expected.alarms.len(), 1);
    drop(oxcd);

    let etcd = Cluster::start_prepared(
        Flavor::Etcd37,
        3,
        &[],
        restored_by(etcdutl37(), file.clone(), Vec::new()),
    )
    .await;
    for endpoint in etcd.endpoints() {
        let mut client = Client::connect([endpoint.as_str()], None).await.unwrap();
        assert_eq!(observe(&mut client, compact).await, expected, "{endpoint}");
    }
    let mut client = etcd.client_all().await;
    let compacted = client
        .get("k/001", Some(GetOptions::new().with_revision(compact - 1)))
        .await;
    assert!(format!("{compacted:?}").contains("required revision has been compacted"));
}

/// tests/reference/bbolt, real bbolt (the version etcd 3.7.3 uses), built once per test binary.
fn bbolt_ref() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bbolt-ref");
        let source = oxcd_tests::package_dir().join("reference/bbolt");
        // The same Go settings as tests/reference/build-etcd.sh: caches under ~/.cache, the
        // committed go.sum as the truth, the machine's own Go (>= 1.26) only.
        let cache =
            Path::new(&std::env::var("HOME").expect("HOME is set")).join(".cache/oxcd-reference");
        let status = Command::new("go")
            .args(["build", "-trimpath", "-o", out.to_str().unwrap(), "."])
            .current_dir(&source)
            .env("GOMODCACHE", cache.join("gomod"))
            .env("GOCACHE", cache.join("gocache"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=readonly")
            .env("CGO_ENABLED", "0")
            .status()
            .expect("go (>= 1.26, as for tests/reference/build-etcd.sh) must be on PATH");
        assert!(status.success(), "building tests/reference/bbolt failed");
        out
    })
}

/// Bytes as `bbolt-ref dump` names them.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|x| format!("{x:02x}")).collect()
}

/// The lines `bbolt-ref dump` prints, from oxcd-bbolt's reading of the same file.
fn dump(db: &Db, bucket: &Bucket, path: &str, out: &mut String) {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    writeln!(out, "B {path}").unwrap();
    for entry in db.entries(bucket) {
        let entry = entry.unwrap();
        match entry.value {
            Value::Data(v) => {
                let sum = Sha256::digest(&v);
                let (k, n, s) = (hex(&entry.key), v.len(), hex(&sum));
                writeln!(out, "K {path} {k} {n} {s}").unwrap();
            }
            Value::Bucket(inner) => dump(db, &inner, &format!("{path}/{}", hex(&entry.key)), out),
        }
    }
}

fn dump_all(db: &Db) -> String {
    let mut out = String::new();
    for entry in db.entries(&db.root()) {
        let entry = entry.unwrap();
        let Value::Bucket(bucket) = entry.value else {
            panic!("data in the root bucket")
        };
        dump(db, &bucket, &hex(&entry.key), &mut out);
    }
    out
}

/// Nested, inline and empty buckets, overflow pages and branch pages, as real bbolt writes them,
/// are read as real bbolt reads them; and files the writer makes from them pass bbolt's
/// consistency check and read back in bbolt identically, at several page sizes.
#[test]
fn files_made_by_real_bbolt_and_by_the_writer_read_the_same_in_both() {
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made-by-bbolt.db");
    let path = made.to_str().unwrap();
    run_ok(bbolt_ref(), &["make", path]);
    let expected = run_ok(bbolt_ref(), &["dump", path]);
    assert!(expected.lines().count() > 6000);
    let db = Db::open(&made).unwrap();
    assert_eq!(dump_all(&db), expected);

    for page_size in [4096, 16384, 1024] {
        let written = dir.path().join(format!("written-{page_size}.db"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&written).unwrap());
        let options = WriteOptions {
            page_size,
            ..WriteOptions::default()
        };
        oxcd_bbolt::write(&mut out, options, |b| copy(&db, &db.root(), b)).unwrap();
        drop(out);
        assert_eq!(
            run_ok(bbolt_ref(), &["dump", written.to_str().unwrap()]),
            expected,
            "page size {page_size}"
        );
    }
}

/// The files of bbolt/testdata/make-fixtures.sh: each etcd release's (3.4 to 3.7) saved snapshot
/// `etcd-VERSION.db` and copied backend `etcd-VERSION-member.db`, all of one history.
fn fixtures() -> Vec<PathBuf> {
    let testdata = oxcd_tests::package_dir().join("../bbolt/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&testdata)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "db"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    files
}

/// Every fixture passes bbolt's check and reads in oxcd-bbolt as it reads in real bbolt.
#[test]
fn every_etcd_releases_files_read_as_real_bbolt_reads_them() {
    for file in fixtures() {
        let expected = run_ok(bbolt_ref(), &["dump", file.to_str().unwrap()]);
        for bucket in ETCD_BUCKETS {
            let line = format!("B {}\n", hex(bucket.as_bytes()));
            assert!(expected.contains(&line), "{file:?}: no bucket {bucket}");
        }
        let db = Db::open(&file).unwrap();
        assert_eq!(dump_all(&db), expected, "{file:?}");
    }
}

/// `oxcdctl snapshot status` on every fixture prints what etcdctl (3.4, the last etcdctl with the
/// command) prints, in every output format.
#[test]
fn every_etcd_releases_files_have_etcdctls_status() {
    require_etcd();
    for file in fixtures() {
        for format in ["json", "table", "simple", "fields"] {
            let args = ["snapshot", "status", file.to_str().unwrap(), "-w", format];
            assert_eq!(
                run_ok(&oxcdctl_bin(), &args),
                run_ok(&oxcd_tests::cluster::etcdctl_bin(), &args),
                "{file:?} -w {format}"
            );
        }
    }
}

/// Every fixture, restored by oxcdctl (a saved snapshot with its hash checked, a copied backend
/// with --skip-hash-check), serves make-fixtures.sh's history: the same keys in every release,
/// compacted at 34, the leased key with its lease, the user with its role.
#[tokio::test]
async fn every_etcd_releases_files_restore_into_the_same_store() {
    let mut first: Option<(PathBuf, Vec<Kv>)> = None;
    for file in fixtures() {
        let copied = file.to_string_lossy().ends_with("-member.db");
        let extra = copied.then(|| "--skip-hash-check".to_string());
        let oxcd = Cluster::start_prepared(
            Flavor::Oxcd,
            1,
            &[],
            restored_from(file.clone(), extra.into_iter().collect()),
        )
        .await;
        let mut client = oxcd.client_all().await;
        let all = |rev| Some(GetOptions::new().with_from_key().with_revision(rev));
        let now = client.get(vec![0u8], all(0)).await.unwrap();
        assert_eq!(now.header().unwrap().revision(), 36, "{file:?}");
        // key/01..30, less key/02 and key/10..19 deleted, and the leased key.
        let kvs: Vec<Kv> = now.kvs().iter().map(served).collect();
        assert_eq!(kvs.len(), 20, "{file:?}");
        let at_compaction = client.get(vec![0u8], all(34)).await.unwrap();
        assert_eq!(at_compaction.kvs().len(), 29, "{file:?}");
        let compacted = client.get(vec![0u8], all(33)).await;
        assert!(
            format!("{compacted:?}").contains("required revision has been compacted"),
            "{file:?}: {compacted:?}"
        );
        let leased = client.get("leased", None).await.unwrap();
        let lease = leased.kvs()[0].lease();
        let ttl = client
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(
            (ttl.granted_ttl(), ttl.keys()),
            (3600, [b"leased".to_vec()].as_slice()),
            "{file:?}"
        );
        let alice = client.user_get("alice").await.unwrap();
        assert_eq!(alice.roles(), ["reader".to_string()], "{file:?}");
        // Lease ids differ between the runs that made the files; all else is one history.
        let comparable: Vec<Kv> = kvs
            .into_iter()
            .map(|mut kv| {
                kv.5 = i64::from(kv.5 != 0);
                kv
            })
            .collect();
        match &first {
            None => first = Some((file, comparable)),
            Some((first_file, expected)) => {
                assert_eq!(&comparable, expected, "{file:?} vs {first_file:?}")
            }
        }
    }
}
