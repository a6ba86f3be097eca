//! The real Kubernetes API server (v1.37.2, built from the Go module proxy by
//! `tests/reference/build-kubernetes.sh`) on a single member, driven by the real kubectl:
//! namespaces, ConfigMaps and a Deployment are created, listed in chunks, watched, updated and
//! deleted, and every object is then read back from the store where Kubernetes keeps it
//! (`/registry/<resource>/<namespace>/<name>`, protobuf with the `k8s\0` magic). The same body runs
//! against etcd 3.7 first, as calibration.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use oxcd_tests::certs::{openssl, Killed};
use oxcd_tests::{against, free_port, kube_bin_dir, wait_timeout, Flavor, Target};

const NAMESPACE: &str = "oxcd-kube";
const CONFIG_MAPS: usize = 5;
const CHUNK: usize = 2;
/// Startup runs post-start hooks that write the bootstrap objects (priority levels, the
/// `kubernetes` Service, system namespaces); on a loaded two-core machine that takes a while.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(180);
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
const WATCH_EVENT_TIMEOUT: Duration = Duration::from_secs(30);
const ADMIN_TOKEN: &str = "oxcd-test-admin-token";
/// What Kubernetes' protobuf serializer writes before every stored object.
const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// The resource types each flavour's run found under /registry, compared once both ran.
static RESOURCES: Mutex<Vec<(Flavor, BTreeSet<String>)>> = Mutex::new(Vec::new());

fn kube_binary(name: &str) -> PathBuf {
    let path = kube_bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing; tests/reference/build-kubernetes.sh builds it (./dev test runs that, or \
         set KUBE_BIN_DIR)",
        path.display()
    );
    path
}

/// A kube-apiserver process on `etcd_url`, serving HTTPS on a free port with a self-signed
/// certificate it makes itself. Killed on drop; its log tail is printed if the test panics.
struct ApiServer {
    process: Killed,
    dir: PathBuf,
    port: u16,
}

impl ApiServer {
    fn start(etcd_url: &str, dir: &Path) -> ApiServer {
        // Service account tokens need a signing key; the apiserver refuses to start without one.
        openssl(dir, &["genrsa", "-out", "sa.key", "2048"]);
        openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("kube-apiserver.log")).unwrap();
        let process = Command::new(kube_binary("kube-apiserver"))
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--etcd-prefix=/registry")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            // Only published in the `kubernetes` Service's endpoints, which nothing here dials;
            // a loopback address would be refused by their validation.
            .arg("--advertise-address=198.51.100.1")
            .arg(format!("--cert-dir={}", dir.join("serving").display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ))
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=AlwaysAllow")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning kube-apiserver");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: oxcd\n  cluster:\n    \
             server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\n\
             contexts:\n- name: oxcd\n  context:\n    cluster: oxcd\n    user: admin\n\
             current-context: oxcd\n"
        );
        std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
        ApiServer {
            process: Killed(process),
            dir: dir.to_path_buf(),
            port,
        }
    }

    fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.dir.join("kubeconfig"),
            dir: self.dir.clone(),
        }
    }

    /// Starts kube-controller-manager or kube-scheduler against this apiserver as its admin,
    /// serving its own health port on a free port. Killed on drop.
    fn start_component(&self, name: &str) -> Killed {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let process = Command::new(kube_binary(name))
            .arg(format!(
                "--kubeconfig={}",
                self.dir.join("kubeconfig").display()
            ))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Killed(process)
    }

    /// Polls /readyz (all post-start hooks done, storage reachable) until it answers "ok".
    fn wait_ready(&mut self) {
        let kubectl = self.kubectl();
        let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.process.0.try_wait() {
                panic!("kube-apiserver exited before it was ready ({status})");
            }
            let out = kubectl.run(&["get", "--raw=/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver on port {} not ready within {APISERVER_READY_TIMEOUT:?}: {}",
                self.port,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ] {
                if self.dir.join(format!("{name}.log")).exists() {
                    eprintln!(
                        "\n===== {name} log tail ({}) =====\n{}",
                        self.dir.display(),
                        self.log_tail(name, 60)
                    );
                }
            }
        }
    }
}

/// The real kubectl with a kubeconfig for the admin token, every call bounded in time.
struct Kubectl {
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kube_binary("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs to completion (output captured in files, so a chatty call cannot block on a pipe);
    /// killed and reported if it outlives [`KUBECTL_TIMEOUT`].
    fn run(&self, args: &[&str]) -> Output {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let stdout_path = self.dir.join(format!("kubectl-{n}.out"));
        let stderr_path = self.dir.join(format!("kubectl-{n}.err"));
        let mut child = self
            .command(args)
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawning kubectl");
        let status = match wait_timeout(&mut child, KUBECTL_TIMEOUT).unwrap() {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kubectl {args:?} still running after {KUBECTL_TIMEOUT:?}");
            }
        };
        Output {
            status,
            stdout: std::fs::read(&stdout_path).unwrap(),
            stderr: std::fs::read(&stderr_path).unwrap(),
        }
    }

    /// Runs a call that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A long-running call whose stdout lines arrive on the returned channel.
    fn stream(&self, args: &[&str]) -> (Killed, mpsc::Receiver<String>) {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning kubectl");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (Killed(child), rx)
    }
}

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
    let mut apiserver = ApiServer::start(&format!("http://{}", target.endpoint), dir);
    let started = Instant::now();
    apiserver.wait_ready();
    eprintln!(
        "[{}] kube-apiserver ready after {:.1}s",
        target.flavor,
        started.elapsed().as_secs_f64()
    );
    apiserver
}

fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxcd-test-kube-")
        .tempdir()
        .unwrap()
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
    assert_eq!(
        runs[0].1, runs[1].1,
        "kube-apiserver stored different resource types on {} and {}",
        runs[0].0, runs[1].0
    );
}

/// A Node as a kubelet would register it, ready and with room for pods; nothing renews its Lease,
/// so the node lifecycle controller marks it unreachable after its 40 s grace period, by which
/// time the scheduler has bound the pods.
const NODE: &str = "fake-node";

fn register_node(kubectl: &Kubectl, dir: &Path) {
    let manifest = dir.join("node.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n  labels:\n    \
             kubernetes.io/hostname: {NODE}\n"
        ),
    )
    .unwrap();
    kubectl.ok(&["create", "-f", &manifest.display().to_string()]);
    let resources = r#"{"cpu":"8","memory":"32Gi","pods":"110"}"#;
    kubectl.ok(&[
        "patch",
        "node",
        NODE,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status":{{"capacity":{resources},"allocatable":{resources},"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"simulated"}}]}}}}"#
        ),
    ]);
}

/// Polls `probe` every half second until it returns `Some`, for at most `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

async fn controllers_on_the_store(target: Target) {
    const REPLICAS: usize = 3;
    let dir = test_dir();
    let mut client = target.client.clone();
    let apiserver = ready_apiserver(&target, dir.path());
    let _controller_manager = apiserver.start_component("kube-controller-manager");
    let _scheduler = apiserver.start_component("kube-scheduler");
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
