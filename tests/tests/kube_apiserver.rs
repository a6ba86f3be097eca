//! The real Kubernetes API server (v1.37.2, built from the Go module proxy by
//! `tests/reference/build-kubernetes.sh`) on a single member, driven by the real kubectl:
//! namespaces, ConfigMaps and a Deployment are created, listed in chunks, watched, updated and
//! deleted, and every object is then read back from the store where Kubernetes keeps it
//! (`/registry/<resource>/<namespace>/<name>`, protobuf with the `k8s\0` magic). The same body runs
//! against etcd 3.7 first, as calibration.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use oxcd_tests::kube::{
    eventually, register_node, test_dir, ApiServer, Kubectl, NODE, PROTOBUF_MAGIC,
};
use oxcd_tests::{against, Flavor, Target};

const NAMESPACE: &str = "oxcd-kube";
const CONFIG_MAPS: usize = 5;
const CHUNK: usize = 2;
const WATCH_EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The resource types each flavour's run found under /registry, compared once both ran.
static RESOURCES: Mutex<Vec<(Flavor, BTreeSet<String>)>> = Mutex::new(Vec::new());

fn config_map_names() -> Vec<String> {
    (0..CONFIG_MAPS).map(|i| format!("cm-{i}")).collect()
}

/// Pages through the ConfigMaps with `limit` and `continue` as a client of the REST API does,
/// returning each page's names.
fn list_in_pages(kubectl: &Kubectl) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let mut path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps?limit={CHUNK}");
        if !token.is_empty() {
            path.push_str(&format!("&continue={token}"));
        }
        let list: serde_json::Value =
            serde_json::from_str(&kubectl.ok(&["get", &format!("--raw={path}")])).unwrap();
        pages.push(
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["metadata"]["name"].as_str().unwrap().to_string())
                .collect(),
        );
        token = list["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if token.is_empty() {
            return pages;
        }
        assert!(pages.len() <= CONFIG_MAPS, "paging does not end: {pages:?}");
    }
}

async fn stored(client: &mut Client, key: &str) -> Option<(Vec<u8>, i64)> {
    let resp = client.get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A ready kube-apiserver on `target`, in `dir`.
fn ready_apiserver(target: &Target, dir: &Path) -> ApiServer {
    let etcd_url = format!("http://{}", target.endpoint);
    ApiServer::start_ready(&etcd_url, dir, &[], &target.flavor.to_string())
}

async fn apiserver_on_the_store(target: Target) {
    let dir = test_dir();
    let mut client = target.client.clone();
    let apiserver = ready_apiserver(&target, dir.path());
    let kubectl = apiserver.kubectl();

    kubectl.ok(&["create", "namespace", NAMESPACE]);
    for (i, name) in config_map_names().iter().enumerate() {
        kubectl.ok(&[
            "-n",
            NAMESPACE,
            "create",
            "configmap",
            name,
            &format!("--from-literal=k=v{i}"),
        ]);
    }
    // No controller-manager runs, so the Deployment stays as created: no ReplicaSet, no status.
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/web:1",
        "--replicas=2",
    ]);

    // Chunked lists: kubectl's own paging, and the pages themselves through the REST API.
    let listed = kubectl.ok(&[
        "-n",
        NAMESPACE,
        "get",
        "configmaps",
        &format!("--chunk-size={CHUNK}"),
        "-o",
        "name",
    ]);
    let expected: Vec<String> = config_map_names()
        .iter()
        .map(|n| format!("configmap/{n}"))
        .collect();
    assert_eq!(listed.lines().collect::<Vec<_>>(), expected);
    let pages = list_in_pages(&kubectl);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1],
        "pages of {CHUNK}: {pages:?}"
    );
    assert_eq!(pages.concat(), config_map_names());

    // A watch sees the current object, then an update made while it runs.
    let (_watch, lines) = kubectl.stream(&[
        "-n",
        NAMESPACE,
        "get",
        "configmap",
        "cm-0",
        "--watch",
        "--request-timeout=90s",
        "-o",
        "jsonpath={.data.k}{\"\\n\"}",
    ]);
    assert_eq!(
        lines.recv_timeout(WATCH_EVENT_TIMEOUT).as_deref(),
        Ok("v0"),
        "the watch's initial state"
    );
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "patch",
        "configmap",
        "cm-0",
        "--type=merge",
        "-p",
        r#"{"data":{"k":"updated"}}"#,
    ]);
    assert_eq!(
        lines.recv_timeout(WATCH_EVENT_TIMEOUT).as_deref(),
        Ok("updated"),
        "the watch's event for the update"
    );

    // The objects as Kubernetes stored them: protobuf under /registry, and the resourceVersion
    // the API reports is the key's mod revision.
    let (value, mod_revision) = stored(
        &mut client,
        &format!("/registry/configmaps/{NAMESPACE}/cm-0"),
    )
    .await
    .expect("cm-0 is stored");
    assert!(value.starts_with(PROTOBUF_MAGIC), "cm-0: {value:?}");
    assert!(contains(&value, b"updated"), "cm-0 holds the update");
    let resource_version = kubectl.ok(&[
        "-n",
        NAMESPACE,
        "get",
        "configmap",
        "cm-0",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    assert_eq!(resource_version, mod_revision.to_string());
    let (value, _) = stored(
        &mut client,
        &format!("/registry/deployments/{NAMESPACE}/web"),
    )
    .await
    .expect("the Deployment is stored");
    assert!(value.starts_with(PROTOBUF_MAGIC), "web: {value:?}");
    assert!(contains(&value, b"registry.invalid/web:1"));
    let (value, _) = stored(&mut client, &format!("/registry/namespaces/{NAMESPACE}"))
        .await
        .expect("the namespace is stored");
    assert!(value.starts_with(PROTOBUF_MAGIC));
    let in_namespace = client
        .get(
            format!("/registry/configmaps/{NAMESPACE}/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let keys: Vec<String> = in_namespace
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    let expected_keys: Vec<String> = config_map_names()
        .iter()
        .map(|n| format!("/registry/configmaps/{NAMESPACE}/{n}"))
        .collect();
    assert_eq!(keys, expected_keys);

    // Deletes remove the keys.
    kubectl.ok(&["-n", NAMESPACE, "delete", "configmap", "cm-1"]);
    kubectl.ok(&["-n", NAMESPACE, "delete", "deployment", "web"]);
    assert_eq!(
        stored(
            &mut client,
            &format!("/registry/configmaps/{NAMESPACE}/cm-1")
        )
        .await,
        None
    );
    assert_eq!(
        stored(
            &mut client,
            &format!("/registry/deployments/{NAMESPACE}/web")
        )
        .await,
        None
    );
    let left = kubectl.ok(&["-n", NAMESPACE, "get", "configmaps", "-o", "name"]);
    assert_eq!(left.lines().count(), CONFIG_MAPS - 1, "{left}");
    // Without the namespace controller a deleted namespace waits in Terminating for its
    // finalizer, still stored.
    kubectl.ok(&["delete", "namespace", NAMESPACE, "--wait=false"]);
    let phase = kubectl.ok(&[
        "get",
        "namespace",
        NAMESPACE,
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(phase, "Terminating");
    let (value, _) = stored(&mut client, &format!("/registry/namespaces/{NAMESPACE}"))
        .await
        .expect("the terminating namespace is still stored");
    assert!(contains(&value, b"Terminating"));

    let everything = client
        .get("/registry/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut resources = BTreeSet::new();
    for kv in everything.kvs() {
        let key = kv.key_str().unwrap();
        let resource = key.split('/').nth(2).unwrap_or_default().to_string();
        assert!(
            kv.value().starts_with(PROTOBUF_MAGIC) || kv.value().starts_with(b"{"),
            "{key} is neither protobuf nor JSON: {:?}",
            kv.value()
        );
        resources.insert(resource);
    }
    eprintln!(
        "[{}] {} keys under /registry, resources: {resources:?}",
        target.flavor,
        everything.kvs().len()
    );
    RESOURCES.lock().unwrap().push((target.flavor, resources));
}

#[tokio::test]
async fn kube_apiserver_and_kubectl_on_a_single_member() {
    against(Flavor::Etcd37, apiserver_on_the_store).await;
    let runs = RESOURCES.lock().unwrap();
    assert_eq!(runs.len(), 2);
    // kube-apiserver's own Events go out through its event broadcaster, batched and
    // asynchronously: whether one is stored yet when the keys are listed is a matter of timing
    // (a cold CI run had one on etcd and none on oxcd).
    let without_events = |resources: &BTreeSet<String>| {
        let mut resources = resources.clone();
        resources.remove("events");
        resources
    };
    assert_eq!(
        without_events(&runs[0].1),
        without_events(&runs[1].1),
        "kube-apiserver stored different resource types on {} and {}",
        runs[0].0,
        runs[1].0
    );
}

async fn controllers_on_the_store(target: Target) {
    const REPLICAS: usize = 3;
    let dir = test_dir();
    let mut client = target.client.clone();
    let apiserver = ready_apiserver(&target, dir.path());
    let _controller_manager = apiserver.start_component("kube-controller-manager", &[]);
    let _scheduler = apiserver.start_component("kube-scheduler", &[]);
    let kubectl = apiserver.kubectl();
    register_node(&kubectl, dir.path());
    kubectl.ok(&["create", "namespace", NAMESPACE]);
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/web:1",
        &format!("--replicas={REPLICAS}"),
    ]);

    // The deployment controller makes a ReplicaSet, the ReplicaSet controller its Pods, and the
    // scheduler binds each to the one node.
    let started = Instant::now();
    let nodes = eventually("pods created and bound", Duration::from_secs(120), || {
        let out = kubectl.ok(&[
            "-n",
            NAMESPACE,
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ]);
        let nodes: Vec<String> = out.lines().map(str::to_string).collect();
        (nodes.len() == REPLICAS && nodes.iter().all(|n| n == NODE)).then_some(nodes)
    });
    eprintln!(
        "[{}] {} pods created and bound in {:.1}s",
        target.flavor,
        nodes.len(),
        started.elapsed().as_secs_f64()
    );
    let replica_sets = kubectl.ok(&["-n", NAMESPACE, "get", "replicasets", "-o", "name"]);
    assert_eq!(replica_sets.lines().count(), 1, "{replica_sets}");

    // Each object the controllers wrote is in the store where Kubernetes keeps it.
    for (prefix, count) in [
        (format!("/registry/replicasets/{NAMESPACE}/"), 1),
        (format!("/registry/pods/{NAMESPACE}/"), REPLICAS),
        (format!("/registry/minions/{NODE}"), 1),
    ] {
        let stored = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(stored.kvs().len(), count, "{prefix}");
        for kv in stored.kvs() {
            assert!(kv.value().starts_with(PROTOBUF_MAGIC), "{:?}", kv.key_str());
        }
    }
    let pods = client
        .get(
            format!("/registry/pods/{NAMESPACE}/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    for kv in pods.kvs() {
        assert!(
            contains(kv.value(), NODE.as_bytes()),
            "{:?} is bound",
            kv.key_str()
        );
    }
}

#[tokio::test]
async fn controllers_and_scheduler_place_a_deployment() {
    against(Flavor::Etcd37, controllers_on_the_store).await;
}
