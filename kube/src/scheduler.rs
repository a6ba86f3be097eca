//! The scheduler: every pod without a node is bound, through the API's binding subresource, to
//! the node that passes every filter (ready and schedulable, node selector, taints tolerated,
//! requests fit) and scores best (least allocated plus balanced allocation, kube-scheduler's
//! default scoring plugins). A pod that no node passes gets a PodScheduled=False condition
//! saying why, as kube-scheduler writes it. Level-triggered: a pass over all pending pods runs
//! after any pod or node changes, and every few seconds.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::api::{self, Api};
use crate::quantity::parse_quantity;
use oxcd_kube::kubelet_reports::set_condition;

pub const SCHEDULER_NAME: &str = "default-scheduler";

pub async fn run(api: Api) {
    let watches = ["/api/v1/pods?watch=true", "/api/v1/nodes?watch=true"];
    api::control_loop(api, "scheduler", &watches, |api| async move {
        schedule_pending(&api).await
    })
    .await
}

/// What a pod asks for, or what a node has room for.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Resources {
    cpu: f64,
    memory: f64,
    pods: f64,
}

fn pod_requests(pod: &Value) -> Resources {
    let mut requests = Resources {
        pods: 1.0,
        ..Resources::default()
    };
    for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let request = &container["resources"]["requests"];
        requests.cpu += request["cpu"]
            .as_str()
            .and_then(parse_quantity)
            .unwrap_or(0.0);
        requests.memory += request["memory"]
            .as_str()
            .and_then(parse_quantity)
            .unwrap_or(0.0);
    }
    requests
}

fn allocatable(node: &Value) -> Resources {
    let of = |name: &str| {
        node["status"]["allocatable"][name]
            .as_str()
            .and_then(parse_quantity)
            .unwrap_or(0.0)
    };
    Resources {
        cpu: of("cpu"),
        memory: of("memory"),
        pods: of("pods"),
    }
}

fn is_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Whether one of the pod's tolerations tolerates the taint.
pub(crate) fn tolerates(pod: &Value, taint: &Value) -> bool {
    pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|toleration| {
            let text = |v: &Value, field: &str| v[field].as_str().unwrap_or("").to_string();
            let key_matches = match text(toleration, "key").as_str() {
                "" => text(toleration, "operator") == "Exists",
                key => key == text(taint, "key"),
            };
            let value_matches = text(toleration, "operator") == "Exists"
                || text(toleration, "value") == text(taint, "value");
            let effect = text(toleration, "effect");
            key_matches && value_matches && (effect.is_empty() || effect == text(taint, "effect"))
        })
}

/// Why `node` cannot take the pod (kube-scheduler's wording), or None if it can.
fn filter(pod: &Value, node: &Value, requests: Resources, used: Resources) -> Option<String> {
    if !is_ready(node) {
        return Some("node(s) were not ready".into());
    }
    if node["spec"]["unschedulable"] == true {
        return Some("node(s) were unschedulable".into());
    }
    let labels = &node["metadata"]["labels"];
    let selector = pod["spec"]["nodeSelector"].as_object();
    if selector
        .into_iter()
        .flatten()
        .any(|(key, value)| &labels[key] != value)
    {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
        let hard = matches!(taint["effect"].as_str(), Some("NoSchedule" | "NoExecute"));
        if hard && !tolerates(pod, taint) {
            let text = |field: &str| taint[field].as_str().unwrap_or("").to_string();
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                text("key"),
                text("value")
            ));
        }
    }
    let room = allocatable(node);
    if used.pods + requests.pods > room.pods {
        return Some("Too many pods".into());
    }
    if used.cpu + requests.cpu > room.cpu {
        return Some("Insufficient cpu".into());
    }
    if used.memory + requests.memory > room.memory {
        return Some("Insufficient memory".into());
    }
    None
}

/// NodeResourcesFit's LeastAllocated plus NodeResourcesBalancedAllocation, each 0–100, for the
/// node with the pod placed on it.
fn score(node: &Value, requests: Resources, used: Resources) -> f64 {
    let room = allocatable(node);
    let fraction = |used: f64, room: f64| {
        if room > 0.0 {
            (used / room).min(1.0)
        } else {
            1.0
        }
    };
    let cpu = fraction(used.cpu + requests.cpu, room.cpu);
    let memory = fraction(used.memory + requests.memory, room.memory);
    let least_allocated = ((1.0 - cpu) + (1.0 - memory)) / 2.0 * 100.0;
    let balanced = (1.0 - (cpu - memory).abs()) * 100.0;
    least_allocated + balanced
}

/// The best node for the pod, or kube-scheduler's "0/N nodes are available: …" message.
fn choose(
    pod: &Value,
    nodes: &[Value],
    usage: &HashMap<String, Resources>,
) -> Result<String, String> {
    let requests = pod_requests(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(f64, &str)> = None;
    for node in nodes {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let used = usage.get(name).copied().unwrap_or_default();
        if let Some(reason) = filter(pod, node, requests, used) {
            *reasons.entry(reason).or_default() += 1;
            continue;
        }
        let score = score(node, requests, used);
        // Ties go to the first name, so placement is reproducible.
        if best.is_none_or(|(top, top_name)| score > top || (score == top && name < top_name)) {
            best = Some((score, name));
        }
    }
    match best {
        Some((_, name)) => Ok(name.to_string()),
        None => {
            let reasons: Vec<String> = reasons
                .into_iter()
                .map(|(reason, count)| format!("{count} {reason}"))
                .collect();
            Err(format!(
                "0/{} nodes are available: {}.",
                nodes.len(),
                reasons.join(", ")
            ))
        }
    }
}

fn name_of(object: &Value) -> (&str, &str) {
    (
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

/// Whether the pod waits for this scheduler.
fn pending(pod: &Value) -> bool {
    let unbound = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let ours = pod["spec"]["schedulerName"]
        .as_str()
        .is_none_or(|name| name.is_empty() || name == SCHEDULER_NAME);
    unbound && ours && pod["metadata"]["deletionTimestamp"].is_null()
}

async fn schedule_pending(api: &Api) -> api::ApiResult<()> {
    let pods = api.list_items("/api/v1/pods").await?;
    // Most passes (woken by a node's heartbeat) find nothing to do: the nodes are not read.
    if !pods.iter().any(pending) {
        return Ok(());
    }
    let nodes = api.list_items("/api/v1/nodes").await?;
    let mut usage: HashMap<String, Resources> = HashMap::new();
    let finished = |pod: &Value| {
        matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
    };
    for pod in &pods {
        if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            if !finished(pod) {
                let requests = pod_requests(pod);
                let used = usage.entry(node.to_string()).or_default();
                used.cpu += requests.cpu;
                used.memory += requests.memory;
                used.pods += requests.pods;
            }
        }
    }
    for pod in pods.iter().filter(|pod| pending(pod)) {
        let (namespace, name) = name_of(pod);
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        match choose(pod, &nodes, &usage) {
            Ok(node) => {
                let binding = json!({"apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name, "namespace": namespace},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                match api
                    .call("POST", &format!("{path}/binding"), Some(binding))
                    .await
                {
                    Ok(_) => {
                        let requests = pod_requests(pod);
                        let used = usage.entry(node).or_default();
                        used.cpu += requests.cpu;
                        used.memory += requests.memory;
                        used.pods += requests.pods;
                    }
                    // Bound or deleted meanwhile: the next pass sees it.
                    Err(error) if matches!(error.code, 404 | 409) => {}
                    Err(error) => return Err(error),
                }
            }
            Err(message) => mark_unschedulable(api, pod, &path, &message).await?,
        }
    }
    Ok(())
}

/// Writes why the pod waits, unless its condition already says so (a write would wake the
/// scheduler again).
async fn mark_unschedulable(
    api: &Api,
    pod: &Value,
    path: &str,
    message: &str,
) -> api::ApiResult<()> {
    let current = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled");
    if current.is_some_and(|c| c["status"] == "False" && c["message"] == message) {
        return Ok(());
    }
    let mut status = pod["status"].clone();
    set_condition(
        &mut status,
        json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null,
            "lastTransitionTime": api::now(), "reason": "Unschedulable", "message": message}),
    );
    match api
        .call(
            "PATCH",
            &format!("{path}/status"),
            Some(json!({"status": status})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if matches!(error.code, 404 | 409) => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "3"},
                "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(cpu: &str, spec: Value) -> Value {
        let mut pod = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c",
                "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}});
        for (key, value) in spec.as_object().unwrap() {
            pod["spec"][key] = value.clone();
        }
        pod
    }

    #[test]
    fn the_emptier_node_wins_and_ties_go_to_the_first_name() {
        let nodes = [
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
        ];
        let mut usage = HashMap::new();
        assert_eq!(
            choose(&pod("500m", json!({})), &nodes, &usage),
            Ok("a".into())
        );
        usage.insert(
            "a".to_string(),
            Resources {
                cpu: 1.0,
                memory: 1024.0 * 1024.0 * 1024.0,
                pods: 1.0,
            },
        );
        assert_eq!(
            choose(&pod("500m", json!({})), &nodes, &usage),
            Ok("b".into())
        );
    }

    #[test]
    fn filters_say_why_no_node_fits() {
        let nodes = [
            node("a", json!({"disk": "ssd"}), json!([])),
            node(
                "b",
                json!({}),
                json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
            ),
            node("c", json!({}), json!([])),
        ];
        let usage = HashMap::new();
        assert_eq!(
            choose(&pod("3", json!({})), &nodes, &usage),
            Err("0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}.".into())
        );
        let on_ssd = json!({"nodeSelector": {"disk": "ssd"}});
        assert_eq!(choose(&pod("1", on_ssd), &nodes, &usage), Ok("a".into()));
        let tolerant = json!({"nodeSelector": {}, "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]});
        let mut crowded = HashMap::new();
        crowded.insert(
            "a".to_string(),
            Resources {
                cpu: 0.0,
                memory: 0.0,
                pods: 3.0,
            },
        );
        crowded.insert(
            "c".to_string(),
            Resources {
                cpu: 1.8,
                memory: 0.0,
                pods: 1.0,
            },
        );
        assert_eq!(
            choose(&pod("1", tolerant), &nodes, &crowded),
            Ok("b".into())
        );
        assert_eq!(
            choose(&pod("1", json!({})), &nodes, &crowded),
            Err("0/3 nodes are available: 1 Insufficient cpu, 1 Too many pods, 1 node(s) had untolerated taint {dedicated: db}.".into())
        );
    }

    #[test]
    fn a_node_that_is_not_ready_or_cordoned_takes_nothing() {
        let mut not_ready = node("a", json!({}), json!([]));
        not_ready["status"]["conditions"][0]["status"] = "Unknown".into();
        let mut cordoned = node("b", json!({}), json!([]));
        cordoned["spec"]["unschedulable"] = true.into();
        assert_eq!(
            choose(
                &pod("1", json!({})),
                &[not_ready, cordoned],
                &HashMap::new()
            ),
            Err(
                "0/2 nodes are available: 1 node(s) were not ready, 1 node(s) were unschedulable."
                    .into()
            )
        );
    }
}
