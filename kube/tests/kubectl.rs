//! oxcd-kube on a real oxcd member, driven by the real kubectl (v1.37.2, from `KUBE_BIN_DIR`),
//! and side by side with the real kube-apiserver on the same store: each reads what the other
//! wrote, with the same resourceVersions and fields, and the values under /registry are the
//! bytes kube-apiserver writes.
//!
//! Needs `OXCD_BIN` (or a built oxcd) and kube-apiserver + kubectl in `KUBE_BIN_DIR` (built by
//! `tests/reference/build-kubernetes.sh`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use oxcd_kube::envelope::PROTOBUF_MAGIC;
use oxcd_kube::{encode, object};
use oxcd_tests::certs::Killed;
use oxcd_tests::kube::{eventually, ApiServer, Kubectl};
use oxcd_tests::{free_port, Flavor, Server};
use serde_json::{json, Value};

const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The shim on `etcd_url`, on a free port; killed on drop.
struct Shim {
    process: Killed,
    url: String,
}

impl Shim {
    /// The REST front end alone: no controller writes to the objects the test makes.
    fn start(etcd_url: &str) -> Shim {
        Shim::start_with(etcd_url, &["--controllers="])
    }

    fn start_with(etcd_url: &str, flags: &[&str]) -> Shim {
        let store = format!("--etcd-servers={etcd_url}");
        Shim::spawn(&[&[store.as_str()], flags].concat())
    }

    fn spawn(flags: &[&str]) -> Shim {
        let port = free_port();
        let process = Command::new(env!("CARGO_BIN_EXE_oxcd-kube"))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(flags)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning oxcd-kube");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "oxcd-kube did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Shim {
            process: Killed(process),
            url,
        }
    }
}

async fn stored(client: &mut Client, key: &str) -> Option<(Vec<u8>, i64)> {
    let response = client.get(key, None).await.unwrap();
    response
        .kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision()))
}

fn config_map(namespace: &str, name: &str, labels: Value, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels}, "data": data})
}

fn names(listed: &str) -> Vec<&str> {
    listed.lines().collect()
}

#[tokio::test]
async fn kubectl_against_the_shim() {
    let member = Server::start(Flavor::Oxcd).await;
    let mut client = member.client().await;
    let shim = Shim::start(&member.client_url());
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::for_server(&shim.url, dir.path());
    let ns = "shims";

    // Discovery is enough for kubectl's resource names and short names.
    let resources = kubectl.ok(&["api-resources", "--no-headers", "-o", "name"]);
    assert_eq!(
        names(&resources),
        [
            "configmaps",
            "endpoints",
            "events",
            "namespaces",
            "nodes",
            "pods",
            "secrets",
            "services",
            "deployments.apps",
            "replicasets.apps",
            "leases.coordination.k8s.io",
            "ipaddresses.networking.k8s.io"
        ]
    );

    kubectl.ok(&["create", "namespace", ns]);
    let namespace = kubectl.json(&["get", "ns", ns]);
    assert_eq!(namespace["status"]["phase"], "Active");
    assert_eq!(
        namespace["metadata"]["labels"]["kubernetes.io/metadata.name"],
        ns
    );
    let (value, revision) = stored(&mut client, &format!("/registry/namespaces/{ns}"))
        .await
        .unwrap();
    assert!(value.starts_with(PROTOBUF_MAGIC));
    assert_eq!(
        namespace["metadata"]["resourceVersion"],
        revision.to_string()
    );

    // A ConfigMap from literals, as kubectl sends it (protobuf), stored as kube-apiserver would.
    kubectl.ok(&[
        "-n",
        ns,
        "create",
        "configmap",
        "cm-0",
        "--from-literal=k=v0",
    ]);
    let cm = kubectl.json(&["-n", ns, "get", "configmap", "cm-0"]);
    assert_eq!(cm["data"], json!({"k": "v0"}));
    let uid = cm["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(uid.len(), 36);
    let (value, revision) = stored(&mut client, &format!("/registry/configmaps/{ns}/cm-0"))
        .await
        .unwrap();
    assert_eq!(cm["metadata"]["resourceVersion"], revision.to_string());
    let decoded = object::decode(&value[PROTOBUF_MAGIC.len()..])
        .unwrap()
        .object;
    assert_eq!(
        decoded["metadata"].get("resourceVersion"),
        None,
        "not stored"
    );
    assert_eq!(decoded["metadata"]["uid"], uid.as_str());
    assert_eq!(encode::encode(&decoded).unwrap(), value);

    for (name, tier) in [("cm-1", "front"), ("cm-2", "back"), ("cm-3", "front")] {
        let created = kubectl.create(&config_map(
            ns,
            name,
            json!({"tier": tier}),
            json!({"k": name}),
        ));
        assert!(created.contains("created"), "{created}");
    }
    kubectl.create(&config_map(ns, "cm-4", json!({}), json!({"k": "v4"})));
    // `kubectl label` and `patch --type=merge` send JSON merge patches.
    kubectl.ok(&["-n", ns, "label", "cm", "cm-4", "tier=back"]);
    kubectl.ok(&[
        "-n",
        ns,
        "patch",
        "cm",
        "cm-4",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":null}},"data":{"k":"patched"}}"#,
    ]);
    let patched = kubectl.json(&["-n", ns, "get", "cm", "cm-4"]);
    assert_eq!(patched["data"], json!({"k": "patched"}));
    assert_eq!(
        patched["metadata"].get("labels"),
        None,
        "an empty map is not stored"
    );
    // kubectl's default patch type (strategic merge), a JSON patch, and server-side apply,
    // which the shim does not do.
    kubectl.ok(&[
        "-n",
        ns,
        "patch",
        "cm",
        "cm-4",
        "-p",
        r#"{"data":{"k2":"v2"}}"#,
    ]);
    let json_patch =
        r#"[{"op":"replace","path":"/data/k","value":"json"},{"op":"remove","path":"/data/k2"}]"#;
    kubectl.ok(&[
        "-n",
        ns,
        "patch",
        "cm",
        "cm-4",
        "--type=json",
        "-p",
        json_patch,
    ]);
    let patched = kubectl.json(&["-n", ns, "get", "cm", "cm-4"]);
    assert_eq!(patched["data"], json!({"k": "json"}));
    let failed_test = r#"[{"op":"test","path":"/data/k","value":"other"}]"#;
    let refused = kubectl.fails(&[
        "-n",
        ns,
        "patch",
        "cm",
        "cm-4",
        "--type=json",
        "-p",
        failed_test,
    ]);
    assert!(
        refused.contains("testing value /data/k failed"),
        "{refused}"
    );
    let manifest = dir.path().join("cm-4.json");
    std::fs::write(&manifest, patched.to_string()).unwrap();
    let server_side = kubectl.fails(&["apply", "--server-side", "-f", manifest.to_str().unwrap()]);
    assert!(
        server_side.contains("Server-side apply not available on the server"),
        "{server_side}"
    );
    let selected =
        |selector: &str| kubectl.ok(&["-n", ns, "get", "cm", "-l", selector, "-o", "name"]);
    assert_eq!(
        names(&selected("tier=front")),
        ["configmap/cm-1", "configmap/cm-3"]
    );
    assert_eq!(
        names(&selected("tier in (back,front),tier!=back")),
        ["configmap/cm-1", "configmap/cm-3"]
    );
    assert_eq!(
        names(&selected("!tier")),
        ["configmap/cm-0", "configmap/cm-4"]
    );

    // Chunked lists: kubectl's own paging, then the pages and their tokens.
    let all = kubectl.ok(&["-n", ns, "get", "cm", "--chunk-size=2", "-o", "name"]);
    assert_eq!(
        names(&all),
        (0..5)
            .map(|i| format!("configmap/cm-{i}"))
            .collect::<Vec<_>>()
    );
    let mut pages = Vec::new();
    let mut path = format!("/api/v1/namespaces/{ns}/configmaps?limit=2");
    let first_revision = loop {
        let page: Value =
            serde_json::from_str(&kubectl.ok(&["get", &format!("--raw={path}")])).unwrap();
        pages.push(page["items"].as_array().unwrap().len());
        match page["metadata"]["continue"].as_str() {
            Some(token) => {
                path = format!("/api/v1/namespaces/{ns}/configmaps?limit=2&continue={token}")
            }
            None => {
                break page["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        }
    };
    assert_eq!(pages, [2, 2, 1]);

    // A watch sees the object, then a replace; a replace with the old resourceVersion conflicts.
    let (_watch, lines) = kubectl.stream(&[
        "-n",
        ns,
        "get",
        "cm",
        "cm-0",
        "--watch",
        "-o",
        "jsonpath={.data.k}{\"\\n\"}",
    ]);
    assert_eq!(lines.recv_timeout(EVENT_TIMEOUT).as_deref(), Ok("v0"));
    let mut changed = cm.clone();
    changed["data"]["k"] = "updated".into();
    let replaced = kubectl.with_manifest("replace", &changed);
    assert!(replaced.contains("replaced"), "{replaced}");
    assert_eq!(lines.recv_timeout(EVENT_TIMEOUT).as_deref(), Ok("updated"));
    let conflict = kubectl.with_manifest("replace", &changed);
    assert!(conflict.contains("Error from server (Conflict)") && conflict.contains(
        "the object has been modified; please apply your changes to the latest version and try again"),
        "{conflict}");
    let now = kubectl.json(&["-n", ns, "get", "cm", "cm-0"]);
    assert_eq!(
        now["metadata"]["uid"],
        uid.as_str(),
        "an update keeps the uid"
    );
    assert_eq!(
        now["metadata"]["creationTimestamp"],
        cm["metadata"]["creationTimestamp"]
    );

    let exists = kubectl.create(&config_map(ns, "cm-1", json!({}), json!({})));
    assert!(
        exists.contains("Error from server (AlreadyExists)")
            && exists.contains("configmaps \"cm-1\" already exists"),
        "{exists}"
    );
    let missing = kubectl.fails(&["-n", ns, "get", "cm", "nope"]);
    assert!(
        missing.contains("Error from server (NotFound): configmaps \"nope\" not found"),
        "{missing}"
    );
    let elsewhere = kubectl.fails(&["-n", "absent", "create", "configmap", "x"]);
    assert!(
        elsewhere.contains("namespaces \"absent\" not found"),
        "{elsewhere}"
    );

    // Delete: the key goes, the watch reports it.
    kubectl.ok(&["-n", ns, "delete", "cm", "cm-0"]);
    assert_eq!(
        lines.recv_timeout(EVENT_TIMEOUT).as_deref(),
        Ok("updated"),
        "the DELETED event"
    );
    assert_eq!(
        stored(&mut client, &format!("/registry/configmaps/{ns}/cm-0")).await,
        None
    );

    // Reads below the compaction point are 410 Expired, lists and watches alike.
    let current = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(current, None).await.unwrap();
    let expired = kubectl.fails(&["get", &format!(
        "--raw=/api/v1/namespaces/{ns}/configmaps?resourceVersion={first_revision}&resourceVersionMatch=Exact")]);
    assert!(expired.contains("Error from server (Expired)"), "{expired}");
    let watch_path =
        format!("/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={first_revision}");
    let event: Value =
        serde_json::from_str(kubectl.ok(&["get", &format!("--raw={watch_path}")]).trim()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");

    // Nodes (kept under /registry/minions) and pods, with the pod defaults kube-apiserver fills.
    kubectl.create(
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
        "status": {"capacity": {"cpu": "8", "memory": "32Gi"}}}),
    );
    assert!(stored(&mut client, "/registry/minions/node-1")
        .await
        .is_some());
    kubectl.create(&json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": ns, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1",
            "ports": [{"containerPort": 80}],
            "resources": {"requests": {"cpu": "250m"}},
            "readinessProbe": {"httpGet": {"path": "/", "port": 80}}}]}}));
    let pod = kubectl.json(&["-n", ns, "get", "pod", "web"]);
    assert_eq!(pod["metadata"]["generation"], 1);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["spec"]["schedulerName"], "default-scheduler");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(container["resources"]["requests"]["cpu"], "250m");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], 80);
    let listed = kubectl.ok(&[
        "get",
        "pods",
        "--all-namespaces",
        "-l",
        "app=web",
        "-o",
        "name",
    ]);
    assert_eq!(names(&listed), ["pod/web"]);
    kubectl.ok(&["-n", ns, "delete", "pod", "web"]);
    kubectl.ok(&["delete", "node", "node-1"]);
    assert_eq!(stored(&mut client, "/registry/minions/node-1").await, None);

    // A namespace waits, Terminating, for its finalizer (no namespace controller runs).
    kubectl.ok(&["delete", "namespace", ns, "--wait=false"]);
    let phase = kubectl.ok(&["get", "namespace", ns, "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Terminating");
    let refused = kubectl.fails(&["-n", ns, "create", "configmap", "late"]);
    assert!(
        refused.contains("because it is being terminated"),
        "{refused}"
    );
}

/// The object as two servers show it, less what only one of them computes on the way out.
fn comparable(mut object: Value) -> Value {
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("selfLink");
    object
}

#[tokio::test]
async fn the_shim_and_kube_apiserver_share_the_store() {
    let member = Server::start(Flavor::Oxcd).await;
    let mut client = member.client().await;
    let dir = tempfile::tempdir().unwrap();
    let apiserver = ApiServer::start_ready(&member.client_url(), dir.path(), &[], "oxcd");
    let kube = apiserver.kubectl();
    let shim_process = Shim::start(&member.client_url());
    let shim = Kubectl::for_server(&shim_process.url, dir.path());
    let ns = "shared";

    // The shim writes; kube-apiserver reads the same objects at the same resourceVersions.
    shim.ok(&["create", "namespace", ns]);
    shim.create(&config_map(
        ns,
        "from-shim",
        json!({"by": "shim"}),
        json!({"k": "v"}),
    ));
    let via_shim = shim.json(&["-n", ns, "get", "cm", "from-shim"]);
    let via_apiserver = kube.json(&["-n", ns, "get", "cm", "from-shim"]);
    assert_eq!(comparable(via_apiserver), comparable(via_shim));
    let namespace = kube.json(&["get", "ns", ns]);
    assert_eq!(
        comparable(namespace),
        comparable(shim.json(&["get", "ns", ns]))
    );
    // Every other kind the shim serves, written with its defaults (kube-apiserver defaults
    // what it reads, so a default the shim missed would show here), its cluster IP held as
    // kube-apiserver's allocator holds one.
    shim.ok(&[
        "-n",
        ns,
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--port=80",
        "--replicas=2",
    ]);
    shim.ok(&[
        "-n",
        ns,
        "create",
        "service",
        "clusterip",
        "web",
        "--tcp=80:8080",
    ]);
    shim.ok(&[
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "token",
        "--from-literal=t=s3cret",
    ]);
    shim.create(
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "leader", "namespace": ns},
        "spec": {"holderIdentity": "web-0", "leaseDurationSeconds": 15}}),
    );
    shim.create(&json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": ns},
        "subsets": [{"addresses": [{"ip": "10.88.0.5"}], "ports": [{"port": 8080}]}]}));
    shim.create(&json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "solo", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "solo"}},
            "template": {"metadata": {"labels": {"app": "solo"}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "ports": [{"containerPort": 9000}]}]}}}}));
    for kind in [
        "deployment",
        "service",
        "secret",
        "lease",
        "endpoints",
        "replicaset",
    ] {
        let name = match kind {
            "secret" => "token",
            "lease" => "leader",
            "replicaset" => "solo",
            _ => "web",
        };
        let via_shim = shim.json(&["-n", ns, "get", kind, name]);
        let via_apiserver = kube.json(&["-n", ns, "get", kind, name]);
        assert_eq!(comparable(via_apiserver), comparable(via_shim), "{kind}");
    }
    let service = shim.json(&["-n", ns, "get", "service", "web"]);
    let ip = service["spec"]["clusterIP"].as_str().unwrap();
    let holder = kube.json(&["get", "ipaddress", ip]);
    assert_eq!(holder["spec"]["parentRef"]["name"], "web");
    let taken = kube.fails(&[
        "-n",
        ns,
        "create",
        "service",
        "clusterip",
        "twin",
        "--tcp=80:80",
        &format!("--clusterip={ip}"),
    ]);
    assert!(taken.contains("already allocated"), "{taken}");
    let taken = kube.fails(&[
        "-n",
        ns,
        "create",
        "service",
        "clusterip",
        "twin",
        "--tcp=80:80",
        &format!("--clusterip={ip}"),
    ]);
    assert!(
        taken.contains("already allocated"),
        "kube-apiserver: {taken}"
    );

    // kube-apiserver writes (into the namespace the shim made); the shim reads them.
    kube.ok(&[
        "-n",
        ns,
        "create",
        "configmap",
        "from-apiserver",
        "--from-literal=k=v",
    ]);
    kube.ok(&["create", "namespace", "made-by-apiserver"]);
    for (namespace, resource, name) in [
        (ns, "cm", "from-apiserver"),
        ("default", "ns", "made-by-apiserver"),
        ("default", "ns", "kube-system"),
        ("default", "svc", "kubernetes"),
        ("default", "endpoints", "kubernetes"),
    ] {
        let via_apiserver = kube.json(&["-n", namespace, "get", resource, name]);
        let via_shim = shim.json(&["-n", namespace, "get", resource, name]);
        assert_eq!(
            comparable(via_shim),
            comparable(via_apiserver),
            "{resource} {name}"
        );
    }

    // kube-apiserver's identity lease, renewed every 10 s: both read the same version.
    let leases = kube.json(&["-n", "kube-system", "get", "leases"]);
    let lease = leases["items"][0]["metadata"]["name"].as_str().unwrap();
    eventually(
        "one version of the lease read through both",
        EVENT_TIMEOUT,
        || {
            let via_shim = shim.json(&["-n", "kube-system", "get", "lease", lease]);
            let via_apiserver = kube.json(&["-n", "kube-system", "get", "lease", lease]);
            (comparable(via_shim) == comparable(via_apiserver)).then_some(())
        },
    );

    // Updates cross over: the shim replaces what kube-apiserver made, kube-apiserver's watch
    // sees it, and kube-apiserver refuses a replace with the old resourceVersion.
    let (_watch, lines) = kube.stream(&[
        "-n",
        ns,
        "get",
        "cm",
        "from-apiserver",
        "--watch",
        "-o",
        "jsonpath={.data.k}{\"\\n\"}",
    ]);
    assert_eq!(lines.recv_timeout(EVENT_TIMEOUT).as_deref(), Ok("v"));
    let old = kube.json(&["-n", ns, "get", "cm", "from-apiserver"]);
    let mut changed = old.clone();
    changed["data"]["k"] = "from the shim".into();
    assert!(shim.with_manifest("replace", &changed).contains("replaced"));
    assert_eq!(
        lines.recv_timeout(EVENT_TIMEOUT).as_deref(),
        Ok("from the shim")
    );
    let conflict = kube.with_manifest("replace", &changed);
    assert!(
        conflict.contains("Error from server (Conflict)"),
        "{conflict}"
    );

    // A continue token from kube-apiserver pages on through the shim.
    for i in 0..3 {
        shim.create(&config_map(
            ns,
            &format!("page-{i}"),
            json!({"paged": "yes"}),
            json!({}),
        ));
    }
    let first: Value = serde_json::from_str(&kube.ok(&[
        "get",
        &format!("--raw=/api/v1/namespaces/{ns}/configmaps?labelSelector=paged%3Dyes&limit=1"),
    ]))
    .unwrap();
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("a continue token");
    let rest: Value = serde_json::from_str(&shim.ok(&["get",
        &format!("--raw=/api/v1/namespaces/{ns}/configmaps?labelSelector=paged%3Dyes&limit=5&continue={token}")])).unwrap();
    let rest: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(rest, ["page-1", "page-2"]);

    // Every protobuf value kube-apiserver wrote (its bootstrap objects of every kind included)
    // decodes and encodes back to the same bytes.
    let everything = client
        .get("/registry/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let (mut checked, mut different) = (0, Vec::new());
    for kv in everything.kvs() {
        let Some(envelope) = kv.value().strip_prefix(PROTOBUF_MAGIC) else {
            continue;
        };
        let key = kv.key_str().unwrap();
        let decoded = object::decode(envelope).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(decoded.note, None, "{key}");
        let encoded = encode::encode(&decoded.object).unwrap_or_else(|e| panic!("{key}: {e}"));
        if encoded != kv.value() {
            different.push(key.to_string());
        }
        checked += 1;
    }
    assert!(
        different.is_empty(),
        "{} of {checked} values do not encode back to kube-apiserver's bytes: {different:?}",
        different.len()
    );
    eprintln!("{checked} values under /registry round-trip byte for byte");
    assert!(checked > 30, "only {checked} protobuf values");
}

/// The pod once `done` holds for it, as kubectl shows it.
fn pod_when(kubectl: &Kubectl, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(what, EVENT_TIMEOUT, || {
        let pod = kubectl.json(&["get", "pod", name]);
        done(&pod).then_some(pod)
    })
}

fn condition<'a>(pod: &'a Value, kind: &str) -> &'a Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
}

fn pod_manifest(name: &str, cpu: &str, spec: Value) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27",
            "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}]}});
    for (key, value) in spec.as_object().unwrap() {
        pod["spec"][key] = value.clone();
    }
    pod
}

/// The seeds' ten steps of creating a pod, with kubectl against the shim and its scheduler and
/// simulated kubelets: the pod is stored (1–4), the scheduler binds it through the binding
/// subresource (5–7), the node's kubelet reports it Running (8–10). The scheduler's filters and
/// scores decide where pods go, and a real kube-apiserver started on the same store then reads
/// the same objects.
#[tokio::test]
async fn the_ten_steps_of_creating_a_pod() {
    let member = Server::start(Flavor::Oxcd).await;
    let mut client = member.client().await;
    let shim_process = Shim::start_with(
        &member.client_url(),
        &[
            "--nodes=2",
            "--node-cpu=2",
            "--node-memory=4Gi",
            "--node-status-interval=1",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::for_server(&shim_process.url, dir.path());

    // The kubelets register their nodes, Ready, with what they offer.
    let nodes = eventually("two ready nodes", EVENT_TIMEOUT, || {
        let nodes = kubectl.json(&["get", "nodes"]);
        let ready = nodes["items"]
            .as_array()?
            .iter()
            .filter(|node| condition(node, "Ready")["status"] == "True")
            .count();
        (ready == 2).then_some(nodes)
    });
    assert_eq!(nodes["items"][0]["metadata"]["name"], "node-1");
    assert_eq!(nodes["items"][0]["status"]["allocatable"]["cpu"], "2");
    let heartbeat = |node: &str| {
        condition(&kubectl.json(&["get", "node", node]), "Ready")["lastHeartbeatTime"].clone()
    };
    let first_beat = heartbeat("node-2");
    eventually("a later heartbeat", EVENT_TIMEOUT, || {
        (heartbeat("node-2") != first_beat).then_some(())
    });

    // 1–4: kubectl asks, the API stores the pod, unscheduled.
    kubectl.ok(&["run", "web", "--image=nginx:1.27", "--restart=Never"]);
    // 5–10: bound by the scheduler, then Running as its node's kubelet reports.
    let web = pod_when(&kubectl, "web", "web running", running);
    assert_eq!(
        web["spec"]["nodeName"], "node-1",
        "ties go to the first node"
    );
    assert_eq!(condition(&web, "PodScheduled")["status"], "True");
    assert_eq!(condition(&web, "Ready")["status"], "True");
    assert!(web["status"]["podIP"]
        .as_str()
        .unwrap()
        .starts_with("10.88."));
    assert_eq!(web["status"]["hostIP"], "10.0.0.1");
    let (value, revision) = stored(&mut client, "/registry/pods/default/web")
        .await
        .unwrap();
    let decoded = object::decode(value.strip_prefix(PROTOBUF_MAGIC).unwrap()).unwrap();
    assert_eq!(decoded.object["spec"]["nodeName"], "node-1");
    assert_eq!(decoded.object["status"]["phase"], "Running");
    assert_eq!(web["metadata"]["resourceVersion"], revision.to_string());
    // kubectl's own view, printed by the shim in kube-apiserver's columns.
    let listed = kubectl.ok(&["get", "pods", "-o", "wide", "--no-headers"]);
    let cells: Vec<&str> = listed.split_whitespace().collect();
    assert_eq!(
        [cells[0], cells[1], cells[2], cells[3], cells[5], cells[6]],
        ["web", "1/1", "Running", "0", "10.88.0.1", "node-1"]
    );

    // A second bind is refused as kube-apiserver refuses it.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web"},
        "target": {"kind": "Node", "name": "node-2"}});
    let binding_file = dir.path().join("binding.json");
    std::fs::write(&binding_file, binding.to_string()).unwrap();
    let refused = kubectl.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/web/binding",
        "-f",
        &binding_file.display().to_string(),
    ]);
    assert!(
        refused.contains("pod web is already assigned to node \"node-1\""),
        "{refused}"
    );

    // Scores: the emptier node wins (least allocated, balanced).
    kubectl.create(&pod_manifest("a", "500m", json!({})));
    assert_eq!(
        pod_when(&kubectl, "a", "a running", running)["spec"]["nodeName"],
        "node-1"
    );
    kubectl.create(&pod_manifest("b", "500m", json!({})));
    assert_eq!(
        pod_when(&kubectl, "b", "b running", running)["spec"]["nodeName"],
        "node-2"
    );

    // Filters: requests that fit nowhere leave the pod Pending, saying why.
    kubectl.create(&pod_manifest("huge", "3", json!({})));
    let huge = pod_when(&kubectl, "huge", "huge unschedulable", |pod| {
        condition(pod, "PodScheduled")["reason"] == "Unschedulable"
    });
    assert_eq!(
        condition(&huge, "PodScheduled")["message"],
        "0/2 nodes are available: 2 Insufficient cpu."
    );
    assert_eq!(huge["status"]["phase"], "Pending");
    // A node selector, and a taint only a toleration passes.
    kubectl.ok(&[
        "patch",
        "node",
        "node-1",
        "--type=merge",
        "-p",
        r#"{"spec":{"taints":[{"key":"dedicated","value":"db","effect":"NoSchedule"}]}}"#,
    ]);
    kubectl.create(&pod_manifest("c", "100m", json!({})));
    assert_eq!(
        pod_when(&kubectl, "c", "c running", running)["spec"]["nodeName"],
        "node-2"
    );
    let on_node_1 = json!({"nodeSelector": {"kubernetes.io/hostname": "node-1"}});
    kubectl.create(&pod_manifest("d", "100m", on_node_1.clone()));
    let d = pod_when(&kubectl, "d", "d unschedulable", |pod| {
        condition(pod, "PodScheduled")["reason"] == "Unschedulable"
    });
    assert_eq!(
        condition(&d, "PodScheduled")["message"],
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: db}."
    );
    let mut tolerant = on_node_1;
    tolerant["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]);
    kubectl.create(&pod_manifest("e", "100m", tolerant));
    assert_eq!(
        pod_when(&kubectl, "e", "e running", running)["spec"]["nodeName"],
        "node-1"
    );

    // The real kube-apiserver, started on the same store, reads the same objects.
    let apiserver = ApiServer::start_ready(&member.client_url(), dir.path(), &[], "oxcd");
    let kube = apiserver.kubectl();
    let web_there = kube.json(&["get", "pod", "web"]);
    assert_eq!(web_there["spec"]["nodeName"], "node-1");
    assert_eq!(web_there["status"]["phase"], "Running");
    assert_eq!(web_there["status"]["podIP"], web["status"]["podIP"]);
    let node_there = kube.json(&["get", "node", "node-2"]);
    assert_eq!(condition(&node_there, "Ready")["status"], "True");
    assert_eq!(node_there["status"]["allocatable"]["memory"], "4Gi");
    let wide = kube.ok(&["get", "pods", "-o", "wide", "--no-headers"]);
    for (pod, node) in [
        ("a", "node-1"),
        ("b", "node-2"),
        ("c", "node-2"),
        ("e", "node-1"),
    ] {
        assert!(
            wide.lines().any(|line| line.starts_with(&format!("{pod} "))
                && line.contains("Running")
                && line.contains(node)),
            "{pod} on {node}: {wide}"
        );
    }
}

/// The node lifecycle controller as the seeds describe it, with short timings: a node whose
/// heartbeats stop is marked Unknown and tainted unreachable after the grace period, and after
/// the eviction timeout its pods are deleted (not one that tolerates the taint for good); a node
/// that reports Ready again loses the taint. A node whose kubelet keeps reporting is untouched.
#[tokio::test]
async fn a_silent_node_is_marked_unreachable_and_its_pods_evicted() {
    let member = Server::start(Flavor::Oxcd).await;
    let shim_process = Shim::start_with(
        &member.client_url(),
        &[
            "--nodes=1",
            "--node-status-interval=1",
            "--node-monitor-period=1",
            "--node-monitor-grace-period=4",
            "--pod-eviction-timeout=3",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::for_server(&shim_process.url, dir.path());
    eventually("node-1 ready", EVENT_TIMEOUT, || {
        let node = kubectl.run(&["get", "node", "node-1", "-o", "json"]);
        let node: Value = serde_json::from_slice(&node.stdout).ok()?;
        (condition(&node, "Ready")["status"] == "True").then_some(())
    });
    // A node whose kubelet reports once and never again.
    kubectl.create(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ghost"}}));
    let report_ready = || {
        let now = chrono_now();
        kubectl.ok(&[
            "patch",
            "node",
            "ghost",
            "--subresource=status",
            "--type=merge",
            "-p",
            &json!({"status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
            .to_string(),
        ]);
    };
    report_ready();
    let bound_to = |name: &str, node: &str, tolerations: Value| {
        let mut pod = pod_manifest(name, "100m", json!({"nodeName": node}));
        pod["spec"]["tolerations"] = tolerations;
        kubectl.create(&pod);
    };
    bound_to("stranded", "ghost", json!([]));
    let forever = json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
        "effect": "NoExecute"}]);
    bound_to("patient", "ghost", forever);
    bound_to("kept", "node-1", json!([]));

    let unreachable = |node: &Value| {
        node["spec"]["taints"].as_array().is_some_and(|taints| {
            taints
                .iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
        })
    };
    let ghost = eventually("ghost unreachable", EVENT_TIMEOUT, || {
        let node = kubectl.json(&["get", "node", "ghost"]);
        unreachable(&node).then_some(node)
    });
    let ready = condition(&ghost, "Ready");
    assert_eq!(ready["status"], "Unknown");
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    eventually("stranded evicted", EVENT_TIMEOUT, || {
        let out = kubectl.run(&["get", "pod", "stranded"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("NotFound")
            .then_some(())
    });
    kubectl.ok(&["get", "pod", "patient"]);
    assert_eq!(
        kubectl.json(&["get", "pod", "kept"])["status"]["phase"],
        "Running"
    );
    let node_1 = kubectl.json(&["get", "node", "node-1"]);
    assert_eq!(condition(&node_1, "Ready")["status"], "True");
    assert!(!unreachable(&node_1));

    // Back: Ready again, and the taint goes.
    report_ready();
    eventually("ghost untainted", EVENT_TIMEOUT, || {
        let node = kubectl.json(&["get", "node", "ghost"]);
        (!unreachable(&node) && condition(&node, "Ready")["status"] == "True").then_some(())
    });
}

/// Now as Kubernetes writes object timestamps.
fn chrono_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    chrono::DateTime::from_timestamp(seconds as i64, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The namespace controller: `kubectl delete namespace` returns once the namespace is gone, with
/// every object that was in it gone from the store, and other namespaces untouched.
#[tokio::test]
async fn a_deleted_namespace_is_emptied_then_removed() {
    let member = Server::start(Flavor::Oxcd).await;
    let mut client = member.client().await;
    let shim_process = Shim::start_with(&member.client_url(), &["--controllers=namespace"]);
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::for_server(&shim_process.url, dir.path());
    for namespace in ["doomed", "kept"] {
        kubectl.ok(&["create", "namespace", namespace]);
        kubectl.ok(&[
            "-n",
            namespace,
            "create",
            "configmap",
            "settings",
            "--from-literal=k=v",
        ]);
    }
    let mut worker = pod_manifest("worker", "100m", json!({}));
    worker["metadata"]["namespace"] = "doomed".into();
    kubectl.create(&worker);

    kubectl.ok(&["delete", "namespace", "doomed", "--timeout=30s"]);
    let refused = kubectl.fails(&["get", "namespace", "doomed"]);
    assert!(refused.contains("NotFound"), "{refused}");
    for prefix in [
        "/registry/namespaces/doomed",
        "/registry/configmaps/doomed/",
        "/registry/pods/doomed/",
    ] {
        let left = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(left.kvs().is_empty(), "{prefix} still holds objects");
    }
    kubectl.ok(&["-n", "kept", "get", "configmap", "settings"]);
}

/// `--etcd-servers` lists every member of a cluster, as kube-apiserver's does: the shim keeps
/// serving through the first listed member's death, reads and writes alike.
#[tokio::test]
async fn the_shim_serves_on_through_a_members_death() {
    let mut cluster = oxcd_tests::cluster::Cluster::start(Flavor::Oxcd, 3, &[]).await;
    let servers: Vec<String> = cluster
        .members()
        .iter()
        .map(|member| member.client_url())
        .collect();
    let shim_process = Shim::start_with(&servers.join(","), &["--controllers="]);
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::for_server(&shim_process.url, dir.path());
    kubectl.ok(&["create", "configmap", "before", "--from-literal=k=v"]);

    cluster.kill(0);
    // Calls in flight to the dead member fail; the next ones go to the others.
    eventually("a write after the death", EVENT_TIMEOUT, || {
        kubectl
            .run(&["create", "configmap", "after", "--from-literal=k=v"])
            .status
            .success()
            .then_some(())
    });
    for _ in 0..10 {
        let listed = kubectl.ok(&["get", "configmaps", "-o", "name"]);
        assert!(
            listed.contains("configmap/before") && listed.contains("configmap/after"),
            "{listed}"
        );
    }
}

/// Pods of `namespace` as NAME IMAGE PHASE triples, Running or not.
fn pod_images(kubectl: &Kubectl, selector: &str) -> Vec<(String, String, String)> {
    let pods = kubectl.json(&["get", "pods", "-l", selector]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pod| {
            (
                pod["metadata"]["name"].as_str().unwrap().to_string(),
                pod["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                pod["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// The seeds' Deployment flow on the shim's own controllers: the Deployment makes a
/// ReplicaSet, the ReplicaSet pods, the scheduler binds them and the kubelets run them; a
/// scale, a rolling update by `kubectl set image` (a strategic merge patch), `rollout undo`,
/// `kubectl apply` of a changed manifest, and a delete whose ReplicaSets and pods the garbage
/// collector removes.
#[tokio::test]
async fn a_deployment_rolls_out_scales_and_is_collected() {
    let member = Server::start(Flavor::Oxcd).await;
    let mut client = member.client().await;
    let shim_process = Shim::start_with(
        &member.client_url(),
        &["--nodes=2", "--node-status-interval=1"],
    );
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::for_server(&shim_process.url, dir.path());
    let rollout = |what: &str| {
        let done = kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
        assert!(done.contains("successfully rolled out"), "{what}: {done}");
    };
    let running = |count: usize, image: &str| {
        eventually(
            &format!("{count} pods of {image} running"),
            EVENT_TIMEOUT,
            || {
                let pods = pod_images(&kubectl, "app=web");
                let all = pods.len() == count
                    && pods
                        .iter()
                        .all(|(_, i, phase)| i == image && phase == "Running");
                all.then_some(pods)
            },
        )
    };

    kubectl.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=3",
    ]);
    rollout("created");
    let pods = running(3, "nginx:1.27");
    let sets = kubectl.json(&["get", "replicasets"]);
    let first_set = sets["items"][0].clone();
    assert_eq!(sets["items"].as_array().unwrap().len(), 1);
    let hash = first_set["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap();
    assert_eq!(first_set["metadata"]["name"], format!("web-{hash}"));
    assert_eq!(
        first_set["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );
    assert_eq!(first_set["status"]["readyReplicas"], 3);
    assert!(pods
        .iter()
        .all(|(name, _, _)| name.starts_with(&format!("web-{hash}-"))));
    let deployment = kubectl.json(&["get", "deployment", "web"]);
    assert_eq!(deployment["status"]["availableReplicas"], 3);
    assert_eq!(deployment["status"]["observedGeneration"], 1);
    assert_eq!(
        deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    // Printed by the server, in kube-apiserver's columns.
    let printed = kubectl.ok(&["get", "deployment", "web", "-o", "wide"]);
    let lines: Vec<Vec<&str>> = printed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert_eq!(
        [
            lines[1][0],
            lines[1][1],
            lines[1][2],
            lines[1][3],
            lines[1][6],
            lines[1][7]
        ],
        ["web", "3/3", "3", "3", "nginx:1.27", "app=web"]
    );
    let printed = kubectl.ok(&["get", "pods", "--no-headers"]);
    assert!(
        printed
            .lines()
            .all(|l| l.contains("1/1") && l.contains("Running")),
        "{printed}"
    );
    // Pods by node and phase, as kubelets and kube-scheduler select them.
    let on_node = |node: &str| {
        let selector = format!("--field-selector=spec.nodeName={node},status.phase=Running");
        kubectl
            .ok(&["get", "pods", &selector, "-o", "name"])
            .lines()
            .count()
    };
    assert_eq!(on_node("node-1") + on_node("node-2"), 3);
    let refused = kubectl.fails(&["get", "configmaps", "--field-selector=spec.nodeName=x"]);
    assert!(
        refused.contains("field label not supported: spec.nodeName"),
        "{refused}"
    );
    // Each kubelet renews its node's Lease.
    let lease = kubectl.json(&["-n", "kube-node-lease", "get", "lease", "node-1"]);
    assert_eq!(lease["spec"]["holderIdentity"], "node-1");
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");

    // Scale through the scale subresource.
    kubectl.ok(&["scale", "deployment", "web", "--replicas=5"]);
    running(5, "nginx:1.27");
    let scale = kubectl.ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]);
    let scale: Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(
        (scale["kind"].as_str(), &scale["spec"]["replicas"]),
        (Some("Scale"), &json!(5))
    );
    assert_eq!(scale["status"]["selector"], "app=web");

    // A Service in front of them: its Endpoints list the five ready pods, and are left alone
    // while nothing changes.
    kubectl.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    let endpoints = eventually("five endpoints", EVENT_TIMEOUT, || {
        let endpoints = kubectl.json(&["get", "endpoints", "web"]);
        let ready = endpoints["subsets"][0]["addresses"]
            .as_array()
            .map_or(0, Vec::len);
        (ready == 5).then_some(endpoints)
    });
    assert_eq!(
        endpoints["subsets"][0]["ports"],
        json!([{"port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        endpoints["subsets"][0]["addresses"][0]["targetRef"]["kind"],
        "Pod"
    );
    std::thread::sleep(Duration::from_secs(3));
    let again = kubectl.json(&["get", "endpoints", "web"]);
    assert_eq!(
        again["metadata"]["resourceVersion"], endpoints["metadata"]["resourceVersion"],
        "no rewrite without a change"
    );

    // A rolling update: a second ReplicaSet takes over, the first is scaled to zero and kept.
    kubectl.ok(&["set", "image", "deployment/web", "nginx=nginx:1.28"]);
    rollout("new image");
    running(5, "nginx:1.28");
    let deployment = kubectl.json(&["get", "deployment", "web"]);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["terminationMessagePath"], "/dev/termination-log",
        "the patch kept the rest"
    );
    let sets = kubectl.json(&["get", "replicasets"]);
    let replicas: Vec<i64> = sets["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|set| set["spec"]["replicas"].as_i64().unwrap())
        .collect();
    assert_eq!(replicas.iter().sum::<i64>(), 5);
    assert!(replicas.contains(&0) && replicas.len() == 2, "{replicas:?}");
    let history = kubectl.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Back to the first template: its ReplicaSet returns as revision 3.
    kubectl.ok(&["rollout", "undo", "deployment/web"]);
    rollout("undone");
    running(5, "nginx:1.27");
    let set = kubectl.json(&[
        "get",
        "replicaset",
        first_set["metadata"]["name"].as_str().unwrap(),
    ]);
    assert_eq!(set["spec"]["replicas"], 5);
    assert_eq!(
        set["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );

    // kubectl apply takes the Deployment over and changes it; a field its type lacks is refused.
    let mut manifest = kubectl.json(&["get", "deployment", "web"]);
    for server_set in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "generation",
        "annotations",
    ] {
        manifest["metadata"]
            .as_object_mut()
            .unwrap()
            .remove(server_set);
    }
    manifest.as_object_mut().unwrap().remove("status");
    // With kubectl's default validation, which the shim's OpenAPI leaves to the server.
    let apply = |manifest: &Value| {
        let file = dir.path().join("web.json");
        std::fs::write(&file, manifest.to_string()).unwrap();
        let out = kubectl.run(&["apply", "-f", file.to_str().unwrap()]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    manifest["spec"]["replicas"] = 2.into();
    let applied = apply(&manifest);
    assert!(applied.contains("configured"), "{applied}");
    running(2, "nginx:1.27");
    manifest["spec"]["replicass"] = 3.into();
    let refused = apply(&manifest);
    assert!(
        refused.contains(r#"strict decoding error: unknown field "spec.replicass""#),
        "{refused}"
    );

    // Deleting the Service takes its Endpoints; deleting the Deployment takes its ReplicaSets
    // and their pods.
    kubectl.ok(&["delete", "service", "web"]);
    eventually("the endpoints deleted", EVENT_TIMEOUT, || {
        (!kubectl.run(&["get", "endpoints", "web"]).status.success()).then_some(())
    });
    kubectl.ok(&["delete", "deployment", "web"]);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let mut left = 0;
        for prefix in ["/registry/replicasets/default/", "/registry/pods/default/"] {
            let counted = client
                .get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .unwrap();
            left += counted.count();
        }
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} ReplicaSets and pods left uncollected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Without `--etcd-servers` the shim runs an oxcd member itself: the objects it serves are in
/// that member (reachable by any etcd client on its client URL), and survive a stop (SIGTERM,
/// which stops the member cleanly) and a start on the same data dir.
#[tokio::test]
async fn the_shim_embeds_a_member_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("store");
    let client_url = format!("http://127.0.0.1:{}", free_port());
    let member_flags = [
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client_url}"),
        format!("--listen-peer-urls=http://127.0.0.1:{}", free_port()),
    ];
    let flags: Vec<&str> = member_flags.iter().map(String::as_str).collect();
    let mut shim = Shim::spawn(&flags);
    let kubectl = Kubectl::for_server(&shim.url, dir.path());
    kubectl.ok(&["create", "configmap", "kept", "--from-literal=k=v"]);
    let mut client = Client::connect([client_url.as_str()], None).await.unwrap();
    let (value, _) = stored(&mut client, "/registry/configmaps/default/kept")
        .await
        .expect("the configmap is in the embedded member");
    assert!(value.starts_with(PROTOBUF_MAGIC));

    let pid = shim.process.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopped = shim.process.0.wait().unwrap();
    assert!(
        stopped.success(),
        "oxcd-kube exited with {stopped} on SIGTERM"
    );
    drop(shim);

    let shim = Shim::spawn(&flags);
    let kubectl = Kubectl::for_server(&shim.url, dir.path());
    let kept = kubectl.json(&["get", "configmap", "kept"]);
    assert_eq!(kept["data"]["k"], "v");
}

fn event(name: &str, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": reason, "message": "seen", "type": "Normal"})
}

/// Events expire as kube-apiserver's do: attached to a lease of --event-ttl (plus the minute
/// a lease is reused for), one lease for a burst of them.
#[tokio::test]
async fn events_expire_after_the_event_ttl() {
    let member = Server::start(Flavor::Oxcd).await;
    let mut client = member.client().await;
    let dir = tempfile::tempdir().unwrap();
    let lasting = Shim::start(&member.client_url());
    let kubectl = Kubectl::for_server(&lasting.url, dir.path());
    kubectl.create(&event("first", "Scheduled"));
    kubectl.create(&event("second", "Pulled"));
    let lease_of = |kvs: &[etcd_client::KeyValue]| kvs[0].lease();
    let first = client
        .get("/registry/events/default/first", None)
        .await
        .unwrap();
    let second = client
        .get("/registry/events/default/second", None)
        .await
        .unwrap();
    let lease = lease_of(first.kvs());
    assert_ne!(lease, 0, "an event is attached to a lease");
    assert_eq!(
        lease_of(second.kvs()),
        lease,
        "a burst of events shares one lease"
    );
    let ttl = client.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3600 + 60);
    // A configmap lives on.
    kubectl.ok(&["create", "configmap", "kept"]);
    let kept = client
        .get("/registry/configmaps/default/kept", None)
        .await
        .unwrap();
    assert_eq!(lease_of(kept.kvs()), 0);
    drop(lasting);

    let brief = Shim::start_with(&member.client_url(), &["--controllers=", "--event-ttl=2s"]);
    let kubectl = Kubectl::for_server(&brief.url, dir.path());
    kubectl.create(&event("brief", "Killing"));
    let printed = kubectl.ok(&["get", "events", "--no-headers"]);
    assert!(
        printed.contains("pod/web") && printed.contains("Killing"),
        "{printed}"
    );
    eventually("the brief event expired", EVENT_TIMEOUT, || {
        let out = kubectl.run(&["get", "event", "brief"]);
        (!out.status.success()).then_some(())
    });
    kubectl.ok(&["get", "event", "first"]);
}

/// The shim compacts the store as kube-apiserver does: each interval, through
/// `compact_rev_key`, to the revision of the interval before; a list at a compacted
/// resourceVersion is then 410 Gone.
#[tokio::test]
async fn the_store_is_compacted_every_interval() {
    let member = Server::start(Flavor::Oxcd).await;
    let mut client = member.client().await;
    let shim = Shim::start_with(
        &member.client_url(),
        &["--controllers=", "--etcd-compaction-interval=1s"],
    );
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::for_server(&shim.url, dir.path());
    kubectl.ok(&["create", "configmap", "churn", "--from-literal=k=0"]);
    let first = kubectl.json(&["get", "configmap", "churn"]);
    let first_version = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut writes = 0;
    let compacted_to = loop {
        writes += 1;
        let patch = format!(r#"{{"data":{{"k":"{writes}"}}}}"#);
        kubectl.ok(&["patch", "configmap", "churn", "--type=merge", "-p", &patch]);
        let status = client.status().await.unwrap();
        let key = client.get("compact_rev_key", None).await.unwrap();
        let compacted: i64 = key
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok()?.parse().ok())
            .unwrap_or(0);
        if compacted > first_version.parse::<i64>().unwrap() {
            assert!(compacted < status.header().unwrap().revision());
            break compacted;
        }
        assert!(
            Instant::now() < deadline,
            "no compaction past {first_version}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("compacted to {compacted_to}");
    let gone = kubectl.fails(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?resourceVersion={first_version}&resourceVersionMatch=Exact"),
    ]);
    assert!(gone.contains("too old"), "{gone}");
}

/// The ownership and rollout rules kube-controller-manager keeps beyond the happy path: a
/// ReplicaSet adopts a bare pod its selector matches (and makes one pod fewer) and releases a
/// pod relabelled out of it (and replaces it); a paused Deployment starts no rollout but
/// follows a scale, and rolls out on resume; a rollout that cannot progress is reported stuck
/// once its progress deadline passes, which `kubectl rollout status` fails on.
#[tokio::test]
async fn orphans_are_adopted_and_paused_or_stuck_rollouts_say_so() {
    let member = Server::start(Flavor::Oxcd).await;
    let shim_process = Shim::start_with(
        &member.client_url(),
        &["--nodes=1", "--node-status-interval=1"],
    );
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::for_server(&shim_process.url, dir.path());
    let owner_kinds = |selector: &str| -> Vec<(String, String)> {
        let pods = kubectl.json(&["get", "pods", "-l", selector]);
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pod| {
                let owner = &pod["metadata"]["ownerReferences"][0];
                (
                    pod["metadata"]["name"].as_str().unwrap().to_string(),
                    owner["name"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };

    kubectl.ok(&[
        "run",
        "stray",
        "--image=nginx:1.27",
        "--labels=app=cache",
        "--restart=Never",
    ]);
    let set = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "cache", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "cache"}},
            "template": {"metadata": {"labels": {"app": "cache"}},
                "spec": {"containers": [{"name": "redis", "image": "redis:7"}]}}}});
    kubectl.create(&set);
    let pods = eventually("the stray pod adopted", EVENT_TIMEOUT, || {
        let pods = owner_kinds("app=cache");
        (pods.len() == 2 && pods.iter().all(|(_, owner)| owner == "cache")).then_some(pods)
    });
    assert!(
        pods.iter().any(|(name, _)| name == "stray"),
        "the bare pod counts as one of the two: {pods:?}"
    );
    let stray = kubectl.json(&["get", "pod", "stray"]);
    assert_eq!(stray["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        stray["metadata"]["ownerReferences"][0]["kind"],
        "ReplicaSet"
    );

    kubectl.ok(&["label", "pod", "stray", "app=gone", "--overwrite"]);
    eventually(
        "the relabelled pod released and replaced",
        EVENT_TIMEOUT,
        || {
            let pods = owner_kinds("app=cache");
            let released = kubectl.json(&["get", "pod", "stray"])["metadata"]["ownerReferences"]
                .as_array()
                .is_none_or(|r| r.is_empty());
            (released && pods.len() == 2 && pods.iter().all(|(name, _)| name != "stray"))
                .then_some(())
        },
    );

    kubectl.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=2",
    ]);
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let progressing = |reason: &str| {
        eventually(&format!("Progressing: {reason}"), EVENT_TIMEOUT, || {
            let deployment = kubectl.json(&["get", "deployment", "web"]);
            let conditions = deployment["status"]["conditions"].as_array().cloned()?;
            conditions
                .into_iter()
                .find(|c| c["type"] == "Progressing" && c["reason"] == reason)
        })
    };
    kubectl.ok(&["rollout", "pause", "deployment/web"]);
    assert_eq!(progressing("DeploymentPaused")["status"], "Unknown");
    kubectl.ok(&["set", "image", "deployment/web", "nginx=nginx:1.28"]);
    kubectl.ok(&["scale", "deployment/web", "--replicas=3"]);
    let images = eventually("the paused Deployment scaled", EVENT_TIMEOUT, || {
        let pods = pod_images(&kubectl, "app=web");
        (pods.len() == 3 && pods.iter().all(|(_, _, phase)| phase == "Running")).then_some(pods)
    });
    assert!(
        images.iter().all(|(_, image, _)| image == "nginx:1.27"),
        "paused: no rollout to the new image: {images:?}"
    );
    assert_eq!(
        kubectl.json(&["get", "replicasets", "-l", "app=web"])["items"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "paused: no new ReplicaSet"
    );
    kubectl.ok(&["rollout", "resume", "deployment/web"]);
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let images = pod_images(&kubectl, "app=web");
    assert!(
        images.len() == 3 && images.iter().all(|(_, image, _)| image == "nginx:1.28"),
        "resumed: rolled out: {images:?}"
    );

    // No node has the label: the new pods stay Pending, and the rollout makes no progress.
    kubectl.ok(&[
        "patch",
        "deployment/web",
        "--type=merge",
        "-p",
        r#"{"spec": {"progressDeadlineSeconds": 2,
            "template": {"spec": {"nodeSelector": {"disk": "none"}}}}}"#,
    ]);
    let stuck = progressing("ProgressDeadlineExceeded");
    assert_eq!(stuck["status"], "False");
    assert!(
        stuck["message"]
            .as_str()
            .unwrap()
            .ends_with("has timed out progressing."),
        "{stuck}"
    );
    let refused = kubectl.fails(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(
        refused.contains("deployment \"web\" exceeded its progress deadline"),
        "{refused}"
    );
}
