//! Simulated kubelets, one task set for any number of nodes: each node registers itself (a
//! Node with its capacity, Ready), reports a heartbeat in its status every interval, renews its
//! Lease in `kube-node-lease` every 10 s (a quarter of its 40 s duration, as kubelets do), and starts
//! the pods bound to it: a bound Pending pod is reported Running and Ready with an IP, the last
//! of the seeds' ten steps of creating a pod. Nothing runs; no image is pulled.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{self, Api};
use crate::node_lifecycle::NODE_LEASES;
use oxcd_kube::kubelet_reports::{self, started_pod_status, NodeShape};

const RETRY: Duration = Duration::from_secs(1);

/// The simulated nodes and what each offers.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub names: Vec<String>,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    /// How often each node reports its status (kubelet's --node-status-update-frequency).
    pub status_interval: Duration,
}

/// The InternalIP of the node at `index` (node-1 at 0 is 10.0.0.1).
fn node_address(index: usize) -> String {
    let number = index + 1;
    format!("10.0.{}.{}", (number >> 8) & 0xff, number & 0xff)
}

pub async fn run(api: Api, fleet: Fleet) {
    for (index, name) in fleet.names.iter().enumerate() {
        while let Err(error) = register(&api, &fleet, index, name).await {
            eprintln!("kubelet {name}: registering: {}", error.message);
            tokio::time::sleep(RETRY).await;
        }
    }
    for (index, name) in fleet.names.iter().enumerate() {
        tokio::spawn(heartbeat(api.clone(), fleet.clone(), index, name.clone()));
    }
    loop {
        if let Ok(mut events) = api.watch_events("/api/v1/pods?watch=true").await {
            while let Some(event) = events.recv().await {
                if let Err(error) = start_if_ours(&api, &fleet, &event["object"]).await {
                    eprintln!("kubelet: starting a pod: {}", error.message);
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The Node's status as this kubelet reports it, with a heartbeat of now.
fn node_status(fleet: &Fleet, index: usize, name: &str) -> Value {
    let shape = NodeShape {
        name,
        address: &node_address(index),
        cpu: &fleet.cpu,
        memory: &fleet.memory,
        pods: fleet.pods,
    };
    kubelet_reports::node_status(&shape, &api::now())
}

/// Creates the Node unless it exists, then reports its status.
async fn register(api: &Api, fleet: &Fleet, index: usize, name: &str) -> api::ApiResult<()> {
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux", "kubernetes.io/arch": std::env::consts::ARCH}}});
    match api.call("POST", "/api/v1/nodes", Some(node)).await {
        Ok(_) => {}
        Err(error) if error.code == 409 => {}
        Err(error) => return Err(error),
    }
    report_status(api, fleet, index, name).await
}

async fn report_status(api: &Api, fleet: &Fleet, index: usize, name: &str) -> api::ApiResult<()> {
    let status = node_status(fleet, index, name);
    api.call(
        "PATCH",
        &format!("/api/v1/nodes/{name}/status"),
        Some(json!({"status": status})),
    )
    .await
    .map(drop)
}

async fn heartbeat(api: Api, fleet: Fleet, index: usize, name: String) {
    let mut status_ticks = tokio::time::interval(fleet.status_interval);
    let mut lease_ticks = tokio::time::interval(LEASE_RENEWAL);
    status_ticks.tick().await;
    loop {
        tokio::select! {
            _ = status_ticks.tick() => {
                if let Err(error) = report_status(&api, &fleet, index, &name).await {
                    eprintln!("kubelet {name}: heartbeat: {}", error.message);
                }
            }
            _ = lease_ticks.tick() => {
                if let Err(error) = renew_lease(&api, &name).await {
                    eprintln!("kubelet {name}: renewing its lease: {}", error.message);
                }
            }
        }
    }
}

/// kubelet's node lease: 40 s long, renewed every quarter of that.
const LEASE_SECONDS: u64 = 40;
const LEASE_RENEWAL: Duration = Duration::from_secs(LEASE_SECONDS / 4);

/// Renews the node's Lease, creating it (owned by the Node, so it goes with it) if missing.
async fn renew_lease(api: &Api, name: &str) -> api::ApiResult<()> {
    let path = format!("{NODE_LEASES}/{name}");
    let renewal = json!({"spec": {"holderIdentity": name, "renewTime": api::now()}});
    match api.call("PATCH", &path, Some(renewal)).await {
        Err(error) if error.code == 404 => {}
        other => return other.map(drop),
    }
    let node = api
        .call("GET", &format!("/api/v1/nodes/{name}"), None)
        .await?;
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": api::now()}});
    match api.call("POST", NODE_LEASES, Some(lease)).await {
        Err(error) if error.code != 409 => Err(error),
        _ => Ok(()),
    }
}

/// A bound Pending pod of one of the fleet's nodes, reported Running.
async fn start_if_ours(api: &Api, fleet: &Fleet, pod: &Value) -> api::ApiResult<()> {
    static NEXT_POD_IP: AtomicU32 = AtomicU32::new(1);
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    let Some(index) = fleet.names.iter().position(|name| name == node) else {
        return Ok(());
    };
    if pod["status"]["phase"] != "Pending" || !pod["metadata"]["deletionTimestamp"].is_null() {
        return Ok(());
    }
    let n = NEXT_POD_IP.fetch_add(1, Ordering::Relaxed);
    let pod_ip = format!("10.88.{}.{}", (n >> 8) & 0xff, n & 0xff);
    let status = started_pod_status(pod, &node_address(index), &pod_ip, &api::now());
    // The pod's resourceVersion makes this a conditional write: a pod changed since is seen
    // again by the watch.
    let patch = json!({"metadata": {"resourceVersion": pod["metadata"]["resourceVersion"]},
        "status": status});
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/status",
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default()
    );
    match api.call("PATCH", &path, Some(patch)).await {
        Ok(_) => Ok(()),
        Err(error) if matches!(error.code, 404 | 409) => Ok(()),
        Err(error) => Err(error),
    }
}
