//! The migration of a Kubernetes cluster from etcd to oxcd and back, as docs/OPERATIONS.md
//! ("Migrating from etcd to oxcd (and back)") tells an operator to do it: real kube-apiserver and
//! kubectl on real etcd 3.7, kube-apiserver stopped, `etcdctl snapshot save`, `oxcdctl snapshot
//! restore` into each member of a three-member oxcd cluster, the checks the page lists, the same
//! objects served by kube-apiserver on oxcd with the same resourceVersions; then `oxcdctl snapshot
//! save` and `etcdutl snapshot restore` into etcd again.

use std::path::Path;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseTimeToLiveOptions, Txn, TxnOp,
    WatchOptions,
};
use oxcd_tests::cluster::{restored_by, restored_from, Cluster};
use oxcd_tests::kube::{test_dir, ApiServer, Kubectl, PROTOBUF_MAGIC};
use oxcd_tests::{etcd37_tool, oxcdctl_bin, run_ok, served, Flavor, Kv, Server};

const NAMESPACE: &str = "migrated";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// A key written with etcdctl beside Kubernetes' own, to check a Txn on its old mod revision.
const PLAIN_KEY: &str = "/migration/plain";
const LEASED_KEY: &str = "/migration/leased";
/// kube-apiserver's default endpoint reconciler keeps `/registry/masterleases/<ip>` on a 15 s
/// etcd lease; once kube-apiserver is stopped nobody renews it and etcd revokes it on its own
/// clock, before or after the snapshot or the comparisons. A real migration keeps the default (the
/// restored lease simply expires on oxcd); the test wants a store that stands still once
/// kube-apiserver is down.
const APISERVER_FLAGS: &[&str] = &["--endpoint-reconciler-type=none"];

fn etcdctl37(endpoints: &str, args: &[&str]) -> String {
    let mut all = vec![endpoints];
    all.extend_from_slice(args);
    run_ok(&etcd37_tool("etcdctl"), &all)
}

/// What clients see of a store: HashKV and every key at its latest revision, every event after
/// `since` (with the previous values, as kube-apiserver watches), and the leases with their
/// granted TTLs and keys (remaining TTLs restart on a restore, as with etcdutl).
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    hash_kv: (u32, i64),
    kvs: Vec<Kv>,
    events_since: Vec<(bool, Kv, Option<Kv>)>,
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
}

impl Observed {
    fn value(&self, key: &str) -> &Kv {
        self.kvs
            .iter()
            .find(|kv| kv.0 == key.as_bytes())
            .unwrap_or_else(|| panic!("{key} is not stored"))
    }
}

async fn observe(client: &mut Client, since: i64) -> Observed {
    let everything = client
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let revision = everything.header().unwrap().revision();
    let hash = client.hash_kv(revision).await.unwrap();
    assert_eq!(hash.header().unwrap().revision(), revision, "a still store");

    let watch = WatchOptions::new()
        .with_all_keys()
        .with_prev_key()
        .with_start_revision(since + 1);
    let mut stream = client.watch(vec![0u8], Some(watch)).await.unwrap();
    let mut events_since = Vec::new();
    while events_since
        .last()
        .is_none_or(|(_, kv, _): &(bool, Kv, Option<Kv>)| kv.3 < revision)
    {
        let message = stream.message().await.unwrap().expect("the watch ended");
        assert!(!message.canceled(), "watch from {since}: {message:?}");
        events_since.extend(message.events().iter().map(|e| {
            (
                e.event_type() == EventType::Delete,
                served(e.kv().unwrap()),
                e.prev_kv().map(served),
            )
        }));
    }

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
    leases.sort();
    Observed {
        revision,
        hash_kv: (hash.hash(), hash.compact_version()),
        kvs: everything.kvs().iter().map(served).collect(),
        events_since,
        leases,
    }
}

/// A read below the compaction point is refused as compacted, one at it is served.
async fn assert_compacted_below(client: &mut Client, compacted: i64) {
    let below = client
        .get(
            PLAIN_KEY,
            Some(GetOptions::new().with_revision(compacted - 1)),
        )
        .await;
    assert!(
        format!("{below:?}").contains(COMPACTED),
        "a read at {}: {below:?}",
        compacted - 1
    );
    client
        .get(PLAIN_KEY, Some(GetOptions::new().with_revision(compacted)))
        .await
        .unwrap_or_else(|e| panic!("a read at the compaction point {compacted}: {e}"));
}

/// kube-apiserver's GuaranteedUpdate: a Txn comparing the mod revision the client last read.
/// The stale revision fails, the one read before the move succeeds.
async fn assert_update_on_mod_revision(client: &mut Client, key: &str, mod_revision: i64) {
    let update = |revision| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::put(key, "updated after the move", None)])
    };
    let stale = client.txn(update(mod_revision - 1)).await.unwrap();
    assert!(!stale.succeeded(), "{key} compared with a stale revision");
    let fresh = client.txn(update(mod_revision)).await.unwrap();
    assert!(
        fresh.succeeded(),
        "{key} compared with its mod revision {mod_revision}"
    );
}

/// The objects of the test's namespace as kubectl shows them, the namespace itself first: whole
/// objects, so resourceVersions, uids, timestamps and data are all compared.
fn objects(kubectl: &Kubectl) -> Vec<serde_json::Value> {
    let namespace: serde_json::Value =
        serde_json::from_str(&kubectl.ok(&["get", "namespace", NAMESPACE, "-o", "json"])).unwrap();
    let listed: serde_json::Value = serde_json::from_str(&kubectl.ok(&[
        "-n",
        NAMESPACE,
        "get",
        "configmaps,secrets,deployments",
        "-o",
        "json",
    ]))
    .unwrap();
    let mut all = vec![namespace];
    all.extend(listed["items"].as_array().unwrap().iter().cloned());
    all
}

/// Creates, updates and deletes objects through kubectl, writes a leased and a plain key with
/// etcdctl and compacts. Returns (the compaction revision, R0): R0 comes before the last few
/// changes.
async fn kubernetes_history(kubectl: &Kubectl, etcd: &Server) -> (i64, i64) {
    let endpoints = format!("--endpoints={}", etcd.client_url());
    let mut client = etcd.client().await;
    let current = |resp: etcd_client::GetResponse| resp.header().unwrap().revision();
    kubectl.ok(&["create", "namespace", NAMESPACE]);
    for i in 0..4 {
        kubectl.ok(&[
            "-n",
            NAMESPACE,
            "create",
            "configmap",
            &format!("cm-{i}"),
            &format!("--from-literal=k=v{i}"),
        ]);
    }
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "credentials",
        "--from-literal=password=hunter2",
    ]);
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/web:1",
        "--replicas=2",
    ]);
    let granted = etcdctl37(&endpoints, &["lease", "grant", "3600"]);
    let lease = granted.split_whitespace().nth(1).unwrap().to_string();
    etcdctl37(
        &endpoints,
        &["put", LEASED_KEY, "x", &format!("--lease={lease}")],
    );
    etcdctl37(&endpoints, &["put", PLAIN_KEY, "before the compaction"]);
    patch_configmap(kubectl, "cm-0", "before the compaction");
    let compacted = current(client.get(PLAIN_KEY, None).await.unwrap());
    etcdctl37(&endpoints, &["compaction", &compacted.to_string()]);
    etcdctl37(&endpoints, &["put", PLAIN_KEY, "after the compaction"]);

    let r0 = current(client.get(PLAIN_KEY, None).await.unwrap());
    patch_configmap(kubectl, "cm-0", "after R0");
    kubectl.ok(&["-n", NAMESPACE, "delete", "configmap", "cm-1"]);
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "scale",
        "deployment",
        "web",
        "--replicas=3",
    ]);
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "cm-after-r0",
        "--from-literal=k=new",
    ]);
    (compacted, r0)
}

fn patch_configmap(kubectl: &Kubectl, name: &str, value: &str) {
    let patch = format!(r#"{{"data":{{"k":"{value}"}}}}"#);
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "patch",
        "configmap",
        name,
        "--type=merge",
        "-p",
        &patch,
    ]);
}

/// Every object of the namespace is stored in Kubernetes' protobuf envelope.
fn assert_protobuf_objects(store: &Observed) {
    let prefixes = [
        format!("/registry/namespaces/{NAMESPACE}"),
        format!("/registry/configmaps/{NAMESPACE}/"),
        format!("/registry/secrets/{NAMESPACE}/"),
        format!("/registry/deployments/{NAMESPACE}/"),
    ];
    let ours: Vec<&Kv> = store
        .kvs
        .iter()
        .filter(|kv| prefixes.iter().any(|p| kv.0.starts_with(p.as_bytes())))
        .collect();
    assert_eq!(
        ours.len(),
        1 + 4 + 1 + 1,
        "{:?}",
        ours.iter().map(|kv| &kv.0)
    );
    for kv in ours {
        assert!(
            kv.1.starts_with(PROTOBUF_MAGIC),
            "{}: {:?}",
            String::from_utf8_lossy(&kv.0),
            kv.1
        );
    }
}

/// The store's position as docs/OPERATIONS.md has the operator check it with etcdctl: each
/// endpoint's revision (`endpoint status`) and HashKV (`endpoint hashkv`, at `revision` if given).
fn positions(endpoints: &[&str], revision: Option<i64>) -> Vec<(i64, u64)> {
    let json = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend_from_slice(endpoints);
        serde_json::from_str(&run_ok(&etcd37_tool("etcdctl"), &all)).unwrap()
    };
    let rev = revision.map(|r| format!("--rev={r}"));
    let mut hashkv_args = vec!["endpoint", "hashkv", "-w", "json"];
    hashkv_args.extend(rev.as_deref());
    let statuses = json(&["endpoint", "status", "-w", "json"]);
    let hashes = json(&hashkv_args);
    assert_eq!(statuses.len(), hashes.len());
    statuses
        .iter()
        .zip(&hashes)
        .map(|(status, hash)| {
            (
                status["Status"]["header"]["revision"].as_i64().unwrap(),
                hash["HashKV"]["hash"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `snapshot save` with `tool` (etcdctl or oxcdctl) from `endpoint` into `file`.
fn save(tool: &Path, endpoint: &str, file: &Path) {
    run_ok(
        tool,
        &[
            &format!("--endpoints={endpoint}"),
            "snapshot",
            "save",
            file.to_str().unwrap(),
        ],
    );
}

#[tokio::test]
async fn a_kubernetes_cluster_moves_from_etcd_to_oxcd_and_back() {
    let dir = tempfile::tempdir().unwrap();

    // Kubernetes on etcd 3.7.
    let mut etcd = Server::start(Flavor::Etcd37).await;
    let on_etcd = test_dir();
    let mut apiserver =
        ApiServer::start_ready(&etcd.client_url(), on_etcd.path(), APISERVER_FLAGS, "etcd");
    let kubectl = apiserver.kubectl();
    let (compacted, r0) = kubernetes_history(&kubectl, &etcd).await;
    let kube_objects = objects(&kubectl);
    assert_eq!(kube_objects.len(), 1 + 4 + 1 + 1);

    // The move: kube-apiserver stopped, etcd's snapshot, etcd stopped.
    apiserver.stop();
    let from_etcd = dir.path().join("etcd.db");
    save(&etcd37_tool("etcdctl"), &etcd.client_url(), &from_etcd);
    let mut client = etcd.client().await;
    let on_etcd_store = observe(&mut client, r0).await;
    let etcd_endpoint = format!("--endpoints={}", etcd.client_url());
    let etcd_position = positions(&[&etcd_endpoint], None);
    assert_eq!(
        etcd_position[0],
        (on_etcd_store.revision, on_etcd_store.hash_kv.0.into())
    );
    etcd.terminate(std::time::Duration::from_secs(10)).unwrap();
    eprintln!(
        "etcd at revision {}: {} keys, {} events after R0 = {r0}, {} leases, compacted at {compacted}",
        on_etcd_store.revision,
        on_etcd_store.kvs.len(),
        on_etcd_store.events_since.len(),
        on_etcd_store.leases.len()
    );
    assert_protobuf_objects(&on_etcd_store);
    assert_eq!(on_etcd_store.hash_kv.1, compacted);
    assert!(
        on_etcd_store.events_since.len() >= 4,
        "{:?}",
        on_etcd_store.events_since
    );
    let leased = on_etcd_store.value(LEASED_KEY).5;
    assert!(
        on_etcd_store
            .leases
            .iter()
            .any(|(id, ttl, keys)| (*id, *ttl) == (leased, 3600)
                && keys == &[LEASED_KEY.as_bytes().to_vec()]),
        "{:?}",
        on_etcd_store.leases
    );

    let oxcd =
        Cluster::start_prepared(Flavor::Oxcd, 3, &[], restored_from(from_etcd, Vec::new())).await;
    let mut client = oxcd.client_all().await;
    assert_eq!(observe(&mut client, r0).await, on_etcd_store);
    let oxcd_endpoint = format!("--endpoints={}", oxcd.endpoints()[0]);
    let every_member = [oxcd_endpoint.as_str(), "--cluster"];
    assert_eq!(
        positions(&every_member, Some(on_etcd_store.revision)),
        vec![etcd_position[0]; 3]
    );
    assert_compacted_below(&mut client, compacted).await;
    let plain_mod_revision = on_etcd_store.value(PLAIN_KEY).3;
    assert_update_on_mod_revision(&mut client, PLAIN_KEY, plain_mod_revision).await;

    // Kubernetes on the three oxcd members: the same objects, the same resourceVersions.
    let on_oxcd = test_dir();
    let etcd_servers: Vec<String> = oxcd.members().iter().map(Server::client_url).collect();
    let mut apiserver = ApiServer::start_ready(
        &etcd_servers.join(","),
        on_oxcd.path(),
        APISERVER_FLAGS,
        "oxcd",
    );
    let kubectl = apiserver.kubectl();
    assert_eq!(objects(&kubectl), kube_objects);
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "cm-on-oxcd",
        "--from-literal=k=oxcd",
    ]);
    let created = client
        .get(format!("/registry/configmaps/{NAMESPACE}/cm-on-oxcd"), None)
        .await
        .unwrap();
    let created = served(&created.kvs()[0]);
    assert!(created.1.starts_with(PROTOBUF_MAGIC));
    assert!(created.3 > on_etcd_store.revision);
    let kube_objects = objects(&kubectl);
    apiserver.stop();

    // And back: oxcd's snapshot restored by etcdutl into etcd.
    let from_oxcd = dir.path().join("oxcd.db");
    save(&oxcdctl_bin(), &oxcd.endpoints()[1], &from_oxcd);
    let on_oxcd_store = observe(&mut client, r0).await;
    let oxcd_position = (on_oxcd_store.revision, on_oxcd_store.hash_kv.0.into());
    assert_eq!(positions(&every_member, None), vec![oxcd_position; 3]);
    drop(oxcd);
    let etcd_again = Cluster::start_prepared(
        Flavor::Etcd37,
        1,
        &[],
        restored_by(etcd37_tool("etcdutl"), from_oxcd, Vec::new()),
    )
    .await;
    let mut client = etcd_again.client_all().await;
    assert_eq!(observe(&mut client, r0).await, on_oxcd_store);
    let etcd_endpoint = format!("--endpoints={}", etcd_again.endpoints()[0]);
    assert_eq!(
        positions(&[&etcd_endpoint], Some(on_oxcd_store.revision)),
        vec![oxcd_position]
    );
    assert_compacted_below(&mut client, compacted).await;
    let plain_mod_revision = on_oxcd_store.value(PLAIN_KEY).3;
    assert_update_on_mod_revision(&mut client, PLAIN_KEY, plain_mod_revision).await;

    // Kubernetes on etcd again: what it had on oxcd, the object created there included.
    let on_etcd_again = test_dir();
    let apiserver = ApiServer::start_ready(
        &etcd_again.members()[0].client_url(),
        on_etcd_again.path(),
        APISERVER_FLAGS,
        "etcd again",
    );
    assert_eq!(objects(&apiserver.kubectl()), kube_objects);
}
