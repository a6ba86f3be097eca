//! The ReplicaSet controller: each ReplicaSet gets pods from its template until as many of its
//! own (those it controls, not terminating, not finished) exist as `spec.replicas` asks, and
//! loses the ones that matter least beyond that; its status reports what it saw, as
//! kube-controller-manager's replicaset controller does. Orphans its selector matches are
//! adopted, and its pods that no longer match are released. Level-triggered: a pass runs after any ReplicaSet or pod event, and every few
//! seconds. Lists are read from the store (not a cache), so a pass never counts a pod twice or
//! misses one it created in the pass before.

use std::cmp::Reverse;

use serde_json::{json, Value};

use crate::api::{self, Api, ApiResult};
use crate::ownership::{self, controller_reference, is_terminating, Dependents};

/// Pods created or deleted for one ReplicaSet in one pass (kube-controller-manager's
/// burstReplicas).
const BURST: usize = 500;

pub async fn run(api: Api) {
    let watches = [
        "/apis/apps/v1/replicasets?watch=true",
        "/api/v1/pods?watch=true",
    ];
    api::control_loop(api, "replicaset controller", &watches, |api| async move {
        sync_all(&api).await
    })
    .await
}

async fn sync_all(api: &Api) -> ApiResult<()> {
    let sets = api.list_items("/apis/apps/v1/replicasets").await?;
    let pods = api.list_items("/api/v1/pods").await?;
    let dependents = Dependents::new(&pods);
    for set in &sets {
        let namespace = ownership::namespace(set);
        let collection = format!("/api/v1/namespaces/{namespace}/pods");
        if dependents
            .claim(api, set, "ReplicaSet", &collection)
            .await?
            || is_terminating(set)
        {
            continue;
        }
        let own = dependents.of(set);
        let active: Vec<&Value> = own.iter().copied().filter(|pod| is_active(pod)).collect();
        match sync(api, set, &active).await {
            // Changed or gone meanwhile: the next pass sees it.
            Err(error) if matches!(error.code, 404 | 409) => {}
            other => other?,
        }
    }
    Ok(())
}

async fn sync(api: &Api, set: &Value, active: &[&Value]) -> ApiResult<()> {
    let namespace = ownership::namespace(set);
    let wanted = set["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let pods_path = format!("/api/v1/namespaces/{namespace}/pods");
    if active.len() < wanted {
        for _ in 0..(wanted - active.len()).min(BURST) {
            api.call("POST", &pods_path, Some(pod_from_template(set)))
                .await?;
        }
    } else if active.len() > wanted {
        for pod in deletion_order(active)
            .into_iter()
            .take(active.len() - wanted)
        {
            let path = format!("{pods_path}/{}", ownership::name(pod));
            let options = json!({"preconditions": {"uid": ownership::uid(pod)}});
            api.delete_if_present(&path, Some(options)).await?;
        }
    }
    let status = status_of(set, active);
    if status != set["status"] {
        let mut updated = set.clone();
        updated["status"] = status;
        updated["apiVersion"] = "apps/v1".into();
        updated["kind"] = "ReplicaSet".into();
        let path = format!(
            "/apis/apps/v1/namespaces/{namespace}/replicasets/{}/status",
            ownership::name(set)
        );
        api.call("PUT", &path, Some(updated)).await?;
    }
    Ok(())
}

fn is_active(pod: &Value) -> bool {
    !is_terminating(pod)
        && !matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
}

pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A new pod of `set`: its template's labels, annotations and spec, controlled by it.
fn pod_from_template(set: &Value) -> Value {
    let template = &set["spec"]["template"];
    let mut metadata = json!({
        "generateName": format!("{}-", ownership::name(set)),
        "namespace": ownership::namespace(set),
        "ownerReferences": [controller_reference("apps/v1", "ReplicaSet", set)],
    });
    for copied in ["labels", "annotations"] {
        if template["metadata"][copied].is_object() {
            metadata[copied] = template["metadata"][copied].clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

/// The pods to delete first, as kube-controller-manager ranks them: not on a node before on
/// one, Pending before Unknown before Running, not ready before ready, newer before older.
fn deletion_order<'a>(pods: &[&'a Value]) -> Vec<&'a Value> {
    let mut ranked = pods.to_vec();
    ranked.sort_by_key(|pod| {
        let assigned = pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let phase = match pod["status"]["phase"].as_str() {
            Some("Pending") => 0,
            Some("Unknown") => 1,
            Some("Running") => 2,
            _ => 0,
        };
        let created = pod["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (assigned, phase, is_ready(pod), Reverse(created))
    });
    ranked
}

/// What the ReplicaSet's status says after seeing `active`.
fn status_of(set: &Value, active: &[&Value]) -> Value {
    let template_labels = set["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|pod| {
            template_labels
                .iter()
                .all(|(key, value)| pod["metadata"]["labels"][key] == *value)
        })
        .count();
    let ready = active.iter().filter(|pod| is_ready(pod)).count();
    let mut status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": set["metadata"]["generation"],
    });
    // Zero counts are omitted, as Go's omitempty leaves them out of the stored object.
    let fields = status.as_object_mut().expect("an object");
    fields.retain(|key, value| key == "replicas" || value.as_u64() != Some(0));
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, ready: bool, created: &str) -> Value {
        json!({"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn the_least_useful_pods_go_first() {
        let running_old = pod("a", "n1", "Running", true, "2026-01-01T00:00:00Z");
        let running_new = pod("b", "n1", "Running", true, "2026-01-02T00:00:00Z");
        let unready = pod("c", "n1", "Running", false, "2026-01-01T00:00:00Z");
        let pending = pod("d", "n1", "Pending", false, "2026-01-01T00:00:00Z");
        let unbound = pod("e", "", "Pending", false, "2026-01-01T00:00:00Z");
        let pods = [&running_old, &running_new, &unready, &pending, &unbound];
        let order: Vec<&str> = deletion_order(&pods)
            .into_iter()
            .map(ownership::name)
            .collect();
        assert_eq!(order, ["e", "d", "c", "b", "a"]);
    }

    #[test]
    fn status_counts_ready_and_fully_labeled_pods() {
        let set = json!({"metadata": {"generation": 3},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}}}}});
        let mut labelled = pod("a", "n1", "Running", true, "");
        labelled["metadata"]["labels"] = json!({"app": "web"});
        let unready = pod("b", "n1", "Pending", false, "");
        let status = status_of(&set, &[&labelled, &unready]);
        assert_eq!(
            status,
            json!({"replicas": 2, "fullyLabeledReplicas": 1, "readyReplicas": 1,
                "availableReplicas": 1, "observedGeneration": 3})
        );
        assert_eq!(
            status_of(&set, &[]),
            json!({"replicas": 0, "observedGeneration": 3})
        );
    }
}
