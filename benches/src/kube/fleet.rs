//! The simulated nodes. Each registers its Node and Lease, renews the Lease every interval (a
//! kubelet's node lease controller) and runs the pods bound to it: like a kubelet it watches
//! the pods with `spec.nodeName` = its name, reports them Running and Ready and finishes their
//! graceful deletion. Thousands of nodes cost a task each, not a process. A separate observer
//! watches the whole namespace to time each pod from its creation; it never acts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::client::{ApiClient, BodyKind};
use crate::stats::{micros, new_latency_histogram};
use oxcd_kube::kubelet_reports::{self, started_pod_status, NodeShape};

/// The namespace the benchmark's Deployments and pods live in.
pub const NAMESPACE: &str = "bench";
/// Calls in flight at once from registration, and from all kubelets together.
const CONCURRENT_CALLS: usize = 64;
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
/// The system namespaces controller creates kube-node-lease shortly after the apiserver is up.
const LEASE_NAMESPACE_WAIT: Duration = Duration::from_secs(30);

/// A timestamp as Kubernetes writes it: RFC 3339 in UTC, with microseconds for MicroTime.
fn timestamp(micro: bool) -> String {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let at =
        chrono::DateTime::from_timestamp(since_epoch.as_secs() as i64, since_epoch.subsec_nanos())
            .unwrap_or_default();
    let format = if micro {
        chrono::SecondsFormat::Micros
    } else {
        chrono::SecondsFormat::Secs
    };
    at.to_rfc3339_opts(format, true)
}

const NODE_PREFIX: &str = "sim-node-";

pub fn node_name(index: usize) -> String {
    format!("{NODE_PREFIX}{index:05}")
}

/// A node's InternalIP in 10.0.0.0/12 (sim-node-00000 has 10.0.0.1), unique for a million nodes.
fn node_address(index: usize) -> String {
    let number = index + 1;
    format!(
        "10.{}.{}.{}",
        (number >> 16) & 0x0f,
        (number >> 8) & 0xff,
        number & 0xff
    )
}

/// Runs `call` for every index in `0..count`, `CONCURRENT_CALLS` at a time; the results in
/// index order, or the first error.
async fn for_each_concurrently<T, F>(count: usize, call: impl Fn(usize) -> F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(CONCURRENT_CALLS));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let future = call(index);
        tasks.spawn(async move {
            let result = future.await;
            drop(permit);
            (index, result)
        });
    }
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined?;
        results[index] = Some(result?);
    }
    Ok(results.into_iter().flatten().collect())
}

/// Registers `count` ready nodes with room for 110 pods each, and their Leases; returns the
/// Leases as stored, for [`LeaseRenewer::start`].
pub async fn register_nodes(client: &Arc<ApiClient>, count: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + LEASE_NAMESPACE_WAIT;
    while client
        .call(Method::GET, "/api/v1/namespaces/kube-node-lease", None)
        .await?
        .status
        != StatusCode::OK
    {
        if Instant::now() > deadline {
            bail!("namespace kube-node-lease not created within {LEASE_NAMESPACE_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for_each_concurrently(count, |index| {
        let client = Arc::clone(client);
        async move { register_node(&client, index).await }
    })
    .await
}

async fn register_node(client: &ApiClient, index: usize) -> Result<Value> {
    let name = node_name(index);
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "oxcd-bench/simulated": "true"}},
    });
    client
        .call(
            Method::POST,
            "/api/v1/nodes",
            Some((BodyKind::Object, &node)),
        )
        .await?
        .success(&format!("registering node {name}"))?;
    let shape = NodeShape {
        name: &name,
        address: &node_address(index),
        cpu: "8",
        memory: "32Gi",
        pods: 110,
    };
    let status = json!({"status": kubelet_reports::node_status(&shape, &timestamp(false))});
    client
        .call(
            Method::PATCH,
            &format!("/api/v1/nodes/{name}/status"),
            Some((BodyKind::MergePatch, &status)),
        )
        .await?
        .success(&format!("reporting node {name} ready"))?;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": timestamp(true)},
    });
    client
        .call(Method::POST, LEASES, Some((BodyKind::Object, &lease)))
        .await?
        .success(&format!("creating node {name}'s lease"))
}

/// Renews every node's Lease once per interval, spread evenly over it.
pub struct LeaseRenewer {
    tasks: JoinSet<()>,
    renewals: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

impl LeaseRenewer {
    pub fn start(client: &Arc<ApiClient>, leases: Vec<Value>, interval: Duration) -> Self {
        let renewals = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let count = leases.len().max(1) as u32;
        let start = tokio::time::Instant::now();
        for (index, mut lease) in leases.into_iter().enumerate() {
            let client = Arc::clone(client);
            let (renewals, failures) = (Arc::clone(&renewals), Arc::clone(&failures));
            let first = start + interval * index as u32 / count;
            tasks.spawn(async move {
                let mut ticks = tokio::time::interval_at(first, interval);
                let path = format!(
                    "{LEASES}/{}",
                    lease["metadata"]["name"].as_str().unwrap_or_default()
                );
                loop {
                    ticks.tick().await;
                    lease["spec"]["renewTime"] = json!(timestamp(true));
                    match renew(&client, &path, &lease).await {
                        Ok(stored) => {
                            lease = stored;
                            renewals.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        Self {
            tasks,
            renewals,
            failures,
        }
    }

    /// Stops renewing; (renewals, failed renewals) so far.
    pub fn stop(mut self) -> (u64, u64) {
        self.tasks.abort_all();
        (
            self.renewals.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

/// One renewal as a kubelet does it: an update of the lease it holds, and after a conflict an
/// update of the lease read again.
async fn renew(client: &ApiClient, path: &str, lease: &Value) -> Result<Value> {
    let reply = client
        .call(Method::PUT, path, Some((BodyKind::Object, lease)))
        .await?;
    if reply.status != StatusCode::CONFLICT {
        return reply.success("renewing a lease");
    }
    let mut current = client
        .call(Method::GET, path, None)
        .await?
        .success("reading a lease")?;
    current["spec"]["renewTime"] = lease["spec"]["renewTime"].clone();
    client
        .call(Method::PUT, path, Some((BodyKind::Object, &current)))
        .await?
        .success("renewing a lease again")
}

/// What the kubelets know of one pod.
struct Pod {
    seen: Instant,
    bound: bool,
    running: bool,
    deleting: bool,
}

/// The pods of the namespace, and how long they took to be bound and to run.
pub struct PodBook {
    pods: HashMap<String, Pod>,
    /// From the watch's first sight of a pod to its first sight bound to a node.
    pub bound_us: Histogram<u64>,
    /// From the first sight of a pod to its first sight Running.
    pub running_us: Histogram<u64>,
    /// How often the observer's watch ended and the pods were listed again. (Under CPU
    /// starvation the apiserver's watch cache closes a watcher its handler does not drain in
    /// time.)
    pub watch_restarts: u64,
}

impl PodBook {
    /// Pods Running and not being deleted.
    pub fn running(&self) -> usize {
        self.pods
            .values()
            .filter(|pod| pod.running && !pod.deleting)
            .count()
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }
}

/// The kubelets of all simulated nodes, and the observer that times the pods.
pub struct Kubelets {
    book: Arc<Mutex<PodBook>>,
    changed: Arc<Notify>,
    failures: Arc<AtomicU64>,
    kubelet_watch_restarts: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

/// Watch streams per HTTP/2 connection of the kubelets' client (kube-apiserver allows 1,000
/// streams on one, Go's default 250).
const WATCHES_PER_CONNECTION: usize = 100;

impl Kubelets {
    /// The observer on `client`, and a kubelet for each of the first `nodes` nodes on
    /// connections of their own (their watches hold a stream each for good).
    pub async fn start(client: &Arc<ApiClient>, nodes: usize) -> Result<Self> {
        let book = Arc::new(Mutex::new(PodBook {
            pods: HashMap::new(),
            bound_us: new_latency_histogram(),
            running_us: new_latency_histogram(),
            watch_restarts: 0,
        }));
        let changed = Arc::new(Notify::new());
        let failures = Arc::new(AtomicU64::new(0));
        let kubelet_watch_restarts = Arc::new(AtomicU64::new(0));
        let mut tasks = vec![tokio::spawn(observe_pods(
            Arc::clone(client),
            Arc::clone(&book),
            Arc::clone(&changed),
        ))];
        let watch_client = Arc::new(
            client
                .reconnect(nodes.div_ceil(WATCHES_PER_CONNECTION).max(1))
                .await?,
        );
        let actions = Arc::new(Semaphore::new(CONCURRENT_CALLS));
        for index in 0..nodes {
            let kubelet = Kubelet {
                node: node_name(index),
                watches: Arc::clone(&watch_client),
                client: Arc::clone(client),
                failures: Arc::clone(&failures),
                actions: Arc::clone(&actions),
            };
            let restarts = Arc::clone(&kubelet_watch_restarts);
            tasks.push(tokio::spawn(async move {
                let mut sent = HashMap::new();
                loop {
                    if kubelet.list_and_watch(&mut sent).await.is_err() {
                        restarts.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        Ok(Self {
            book,
            changed,
            failures,
            kubelet_watch_restarts,
            tasks,
        })
    }

    /// Waits until `done` holds for the pods, for at most `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&PodBook) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            {
                let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
                if done(&book) {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
                bail!(
                    "{what}: not within {timeout:?} ({} pods, {} running)",
                    book.len(),
                    book.running()
                );
            }
        }
    }

    /// Reads the pods' latencies (and leaves them in place).
    pub fn with_book<T>(&self, read: impl FnOnce(&PodBook) -> T) -> T {
        read(&self.book.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Stops; the kubelets' failed calls, and how often their watches were closed.
    pub fn stop(self) -> (u64, u64) {
        for task in &self.tasks {
            task.abort();
        }
        (
            self.failures.load(Ordering::Relaxed),
            self.kubelet_watch_restarts.load(Ordering::Relaxed),
        )
    }
}

/// Lists the namespace's pods, then watches them from the list's revision; again from a fresh
/// list whenever the watch ends or fails.
async fn observe_pods(client: Arc<ApiClient>, book: Arc<Mutex<PodBook>>, changed: Arc<Notify>) {
    let observer = Observer { client, book };
    loop {
        if let Err(error) = observer.list_and_watch(&changed).await {
            let mut book = observer.book.lock().unwrap_or_else(|e| e.into_inner());
            book.watch_restarts += 1;
            if book.watch_restarts == 1 {
                eprintln!("observer: pod watch ended ({error:#}); listing again (counted)");
            }
        }
    }
}

/// What a list-then-watch hands on: the whole list first, then each event.
enum Seen<'a> {
    Listed(&'a [Value]),
    Event(&'a str, &'a Value),
}

/// Lists what `path` selects, then watches it from the list's revision, handing the list and
/// each event to `seen`; ends with an error when the watch does.
async fn list_then_watch(
    lister: &ApiClient,
    watcher: &ApiClient,
    path: &str,
    mut seen: impl FnMut(Seen<'_>),
) -> Result<()> {
    let list = lister
        .call(Method::GET, path, None)
        .await?
        .success("listing pods")?;
    let listed: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
    seen(Seen::Listed(&listed));
    let revision = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut events = watcher
        .watch(&format!(
            "{path}{separator}watch=true&resourceVersion={revision}&allowWatchBookmarks=true&timeoutSeconds=3600"
        ))
        .await?;
    while let Some(event) = events.recv().await {
        let event = event?;
        match event["type"].as_str().unwrap_or_default() {
            "ERROR" => bail!("{}", event["object"]["message"]),
            "BOOKMARK" => continue,
            kind => seen(Seen::Event(kind, &event["object"])),
        }
    }
    bail!("the apiserver ended the watch")
}

/// Times the pods of the benchmark's namespace from their first sight.
struct Observer {
    client: Arc<ApiClient>,
    book: Arc<Mutex<PodBook>>,
}

impl Observer {
    async fn list_and_watch(&self, changed: &Notify) -> Result<()> {
        let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        list_then_watch(&self.client, &self.client, &pods, |seen| {
            match seen {
                Seen::Listed(listed) => {
                    // Pods the list no longer has are gone; what it holds is booked.
                    {
                        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
                        book.pods.retain(|name, _| {
                            listed
                                .iter()
                                .any(|pod| pod["metadata"]["name"].as_str() == Some(name))
                        });
                    }
                    for pod in listed {
                        self.record("ADDED", pod);
                    }
                }
                Seen::Event(kind, pod) => self.record(kind, pod),
            }
            changed.notify_waiters();
        })
        .await
    }

    /// Books one pod's new state.
    fn record(&self, kind: &str, object: &Value) {
        let Some(name) = object["metadata"]["name"].as_str() else {
            return;
        };
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if kind == "DELETED" {
            book.pods.remove(name);
            return;
        }
        let now = Instant::now();
        let book = &mut *book;
        let pod = book.pods.entry(name.to_owned()).or_insert(Pod {
            seen: now,
            bound: false,
            running: false,
            deleting: false,
        });
        if !pod.bound
            && object["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        {
            pod.bound = true;
            book.bound_us.saturating_record(micros(now - pod.seen));
        }
        if !pod.running && object["status"]["phase"] == "Running" {
            pod.running = true;
            book.running_us.saturating_record(micros(now - pod.seen));
        }
        pod.deleting = !object["metadata"]["deletionTimestamp"].is_null();
    }
}

/// What one kubelet already asked for a pod.
#[derive(Default)]
struct Sent {
    status: bool,
    delete: bool,
}

/// One simulated node's kubelet: its pods, as its field-selected watch shows them.
struct Kubelet {
    node: String,
    /// The connections its watch holds a stream on.
    watches: Arc<ApiClient>,
    client: Arc<ApiClient>,
    failures: Arc<AtomicU64>,
    actions: Arc<Semaphore>,
}

impl Kubelet {
    async fn list_and_watch(&self, sent: &mut HashMap<String, Sent>) -> Result<()> {
        let pods = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", self.node);
        list_then_watch(&self.client, &self.watches, &pods, |seen| match seen {
            Seen::Listed(listed) => {
                for pod in listed {
                    self.act("ADDED", pod, sent);
                }
            }
            Seen::Event(kind, pod) => self.act(kind, pod, sent),
        })
        .await
    }

    /// Does what a kubelet would about a pod bound to its node.
    fn act(&self, kind: &str, object: &Value, sent: &mut HashMap<String, Sent>) {
        let Some(name) = object["metadata"]["name"].as_str() else {
            return;
        };
        if kind == "DELETED" {
            sent.remove(name);
            return;
        }
        let asked = sent.entry(name.to_owned()).or_default();
        let deleting = !object["metadata"]["deletionTimestamp"].is_null();
        let running = object["status"]["phase"] == "Running";
        let delete = deleting && !asked.delete;
        let start = !running && !deleting && !asked.status;
        asked.delete |= delete;
        asked.status |= start;
        if !(start || delete) {
            return;
        }
        let actions = Arc::clone(&self.actions);
        let client = Arc::clone(&self.client);
        let failures = Arc::clone(&self.failures);
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(NAMESPACE);
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        let pod = object.clone();
        // The permit is taken in the task: the watch must be read without pause, or the
        // apiserver closes it as unresponsive.
        tokio::spawn(async move {
            let Ok(_permit) = actions.acquire_owned().await else {
                return;
            };
            let reply = if delete {
                let options = json!({"apiVersion": "v1", "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}});
                client
                    .call(Method::DELETE, &path, Some((BodyKind::Object, &options)))
                    .await
            } else {
                client
                    .call(
                        Method::PATCH,
                        &format!("{path}/status"),
                        Some((BodyKind::MergePatch, &running_status(&pod))),
                    )
                    .await
            };
            // A pod deleted meanwhile (404) or replaced under its name (409) needs nothing more.
            let fine = reply.is_ok_and(|reply| {
                reply.status.is_success()
                    || matches!(reply.status, StatusCode::NOT_FOUND | StatusCode::CONFLICT)
            });
            if !fine {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// The status patch a kubelet sends once `pod` (bound to one of the simulated nodes) runs.
fn running_status(pod: &Value) -> Value {
    static NEXT_IP: AtomicU64 = AtomicU64::new(1);
    let host_ip = pod["spec"]["nodeName"]
        .as_str()
        .and_then(|node| node.strip_prefix(NODE_PREFIX)?.parse().ok())
        .map(node_address)
        .unwrap_or_default();
    // Pods in 10.244.0.0/16, as a default pod network; wrapping after 65,536 is harmless here.
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    let pod_ip = format!("10.244.{}.{}", (n >> 8) & 0xff, n & 0xff);
    json!({"status": started_pod_status(pod, &host_ip, &pod_ip, &timestamp(false))})
}
