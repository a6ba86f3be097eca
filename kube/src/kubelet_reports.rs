//! What a kubelet writes about its node and its pods, as JSON for the status subresources: the
//! node's status with a Ready heartbeat, and a started pod's status. Shared by oxcd-kube's
//! simulated kubelets and oxcd-bench's, so both report what a real kubelet does.

use serde_json::{json, Value};

/// What a node offers and where it is.
pub struct NodeShape<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub cpu: &'a str,
    pub memory: &'a str,
    pub pods: u32,
}

/// The node's status with a Ready heartbeat at `now` (RFC 3339).
pub fn node_status(node: &NodeShape<'_>, now: &str) -> Value {
    let capacity = json!({"cpu": node.cpu, "memory": node.memory, "pods": node.pods.to_string()});
    json!({
        "capacity": capacity, "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status (simulated)",
            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": node.address},
            {"type": "Hostname", "address": node.name}],
        "nodeInfo": {"kubeletVersion": "v1.37.2-simulated", "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH, "containerRuntimeVersion": "simulated://1",
            "osImage": "simulated node", "kernelVersion": "", "kubeProxyVersion": "",
            "machineID": "", "systemUUID": "", "bootID": ""},
    })
}

/// `pod`'s status once every container of it runs on the node at `host_ip`, with `pod_ip`.
pub fn started_pod_status(pod: &Value, host_ip: &str, pod_ip: &str, now: &str) -> Value {
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|container| {
            let name = container["name"].as_str().unwrap_or("");
            json!({"name": name, "image": container["image"], "imageID": "",
                "containerID": format!("simulated://{name}"), "ready": true, "started": true,
                "restartCount": 0, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let mut status = pod["status"].clone();
    for kind in [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
    ] {
        set_condition(
            &mut status,
            json!({"type": kind, "status": "True", "lastProbeTime": null,
                "lastTransitionTime": now}),
        );
    }
    status["phase"] = "Running".into();
    status["hostIP"] = host_ip.into();
    status["hostIPs"] = json!([{"ip": host_ip}]);
    status["podIP"] = pod_ip.into();
    status["podIPs"] = json!([{"ip": pod_ip}]);
    status["startTime"] = now.into();
    status["containerStatuses"] = containers.into();
    status
}

/// Puts `condition` in `status.conditions` in place of one of its type, or at the end.
pub fn set_condition(status: &mut Value, condition: Value) {
    if !status.is_object() {
        *status = json!({});
    }
    let conditions = status
        .as_object_mut()
        .expect("made an object")
        .entry("conditions")
        .or_insert_with(|| json!([]));
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let list = conditions.as_array_mut().expect("made an array");
    match list.iter_mut().find(|c| c["type"] == condition["type"]) {
        Some(existing) => *existing = condition,
        None => list.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_pod_keeps_its_other_conditions_and_reports_each_container() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False"}]}});
        let status = started_pod_status(&pod, "10.0.0.1", "10.88.0.1", "2026-12-06T00:00:00Z");
        assert_eq!(status["phase"], "Running");
        let conditions = status["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 5);
        assert_eq!(conditions[0]["type"], "PodScheduled");
        assert_eq!(conditions[1]["status"], "True", "Ready replaced in place");
        assert_eq!(
            status["containerStatuses"][1]["containerID"],
            "simulated://b"
        );
        assert_eq!(status["podIPs"][0]["ip"], "10.88.0.1");
    }
}
