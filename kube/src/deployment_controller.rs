//! The Deployment controller: each Deployment owns one ReplicaSet per pod template it has had
//! (named after the template's hash, labelled `pod-template-hash`); the one matching the
//! current template is scaled up and the others down, all at once (`Recreate`: the old ones to
//! zero first) or within `maxSurge` and `maxUnavailable` (`RollingUpdate`), as
//! kube-controller-manager's deployment controller does. Old ReplicaSets beyond
//! `revisionHistoryLimit` are deleted, and the status and the `Available` and `Progressing`
//! conditions report the rollout, which is what `kubectl rollout status` waits on. Not done:
//! pausing, `progressDeadlineSeconds`, proportional scaling during a rollout, adoption of
//! orphaned ReplicaSets.

use serde_json::{json, Map, Value};

use crate::api::{self, now, Api, ApiResult};
use crate::ownership::{self, by_controller, controller_reference, is_terminating};
use oxcd_kube::kubelet_reports::set_condition;

const HASH_LABEL: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";

pub async fn run(api: Api) {
    let watches = [
        "/apis/apps/v1/deployments?watch=true",
        "/apis/apps/v1/replicasets?watch=true",
    ];
    api::control_loop(api, "deployment controller", &watches, |api| async move {
        sync_all(&api).await
    })
    .await
}

async fn sync_all(api: &Api) -> ApiResult<()> {
    let deployments = api.list_items("/apis/apps/v1/deployments").await?;
    let sets = api.list_items("/apis/apps/v1/replicasets").await?;
    let owned = by_controller(&sets);
    for deployment in &deployments {
        if is_terminating(deployment) {
            continue;
        }
        let sets = owned
            .get(ownership::uid(deployment))
            .cloned()
            .unwrap_or_default();
        match sync(api, deployment, sets).await {
            // Changed or gone meanwhile: the next pass sees it.
            Err(error) if matches!(error.code, 404 | 409) => {}
            other => other?,
        }
    }
    Ok(())
}

fn replicas(set: &Value) -> i64 {
    set["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn status_count(object: &Value, field: &str) -> i64 {
    object["status"][field].as_i64().unwrap_or(0)
}

fn revision(set: &Value) -> i64 {
    set["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// A ReplicaSet's template without the hash label, to compare with the Deployment's.
fn template_without_hash(set: &Value) -> Value {
    let mut template = set["spec"]["template"].clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    template
}

async fn sync(api: &Api, deployment: &Value, mut sets: Vec<&Value>) -> ApiResult<()> {
    let template = &deployment["spec"]["template"];
    // Oldest first: scaling down and history cleanup take the oldest revisions first.
    sets.sort_by_key(|set| revision(set));
    let current = sets
        .iter()
        .position(|set| template_without_hash(set) == *template);
    let created;
    let new_set = match current {
        Some(index) => {
            let set = sets.remove(index);
            // A template the Deployment goes back to (`rollout undo`) is its newest revision.
            let newest = sets.last().map_or(0, |set| revision(set));
            if revision(set) < newest {
                let path = format!(
                    "/apis/apps/v1/namespaces/{}/replicasets/{}",
                    ownership::namespace(set),
                    ownership::name(set)
                );
                let patch =
                    json!({"metadata": {"annotations": {REVISION: (newest + 1).to_string()}}});
                api.call("PATCH", &path, Some(patch)).await?;
                // The next pass works from the renumbered set.
                return Ok(());
            }
            set
        }
        None => {
            let next_revision = sets.last().map_or(0, |set| revision(set)) + 1;
            created = create_replica_set(api, deployment, next_revision).await?;
            &created
        }
    };
    let desired = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    let scaling = plan(deployment, new_set, &sets, desired);
    for (set, target) in std::iter::once(new_set)
        .chain(sets.iter().copied())
        .zip(scaling)
    {
        if replicas(set) != target {
            let path = format!(
                "/apis/apps/v1/namespaces/{}/replicasets/{}/scale",
                ownership::namespace(set),
                ownership::name(set)
            );
            api.call("PATCH", &path, Some(json!({"spec": {"replicas": target}})))
                .await?;
        }
    }
    clean_up_history(api, deployment, &sets).await?;
    record_revision(api, deployment, new_set).await?;
    update_status(api, deployment, new_set, &sets, desired).await
}

/// The ReplicaSet for the Deployment's current template.
async fn create_replica_set(api: &Api, deployment: &Value, revision: i64) -> ApiResult<Value> {
    let mut template = deployment["spec"]["template"].clone();
    let collisions = deployment["status"]["collisionCount"].as_i64().unwrap_or(0);
    let hash = template_hash(&template, collisions);
    template["metadata"]["labels"][HASH_LABEL] = hash.clone().into();
    let mut selector = deployment["spec"]["selector"].clone();
    selector["matchLabels"][HASH_LABEL] = hash.clone().into();
    let namespace = ownership::namespace(deployment);
    let set = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{}-{hash}", ownership::name(deployment)),
            "namespace": namespace,
            "labels": template["metadata"]["labels"],
            "annotations": {REVISION: revision.to_string()},
            "ownerReferences": [controller_reference("apps/v1", "Deployment", deployment)],
        },
        "spec": {"replicas": 0, "selector": selector, "template": template},
    });
    let mut set = set;
    if let Some(seconds) = deployment["spec"].get("minReadySeconds") {
        set["spec"]["minReadySeconds"] = seconds.clone();
    }
    let path = format!("/apis/apps/v1/namespaces/{namespace}/replicasets");
    match api.call("POST", &path, Some(set)).await {
        // The name is taken by a ReplicaSet with another template: count the collision, and
        // the next pass hashes to another name, as kube-controller-manager does.
        Err(error) if error.code == 409 => {
            let mut counted = deployment.clone();
            counted["status"]["collisionCount"] = (collisions + 1).into();
            write_status(api, counted).await?;
            Err(error)
        }
        other => other,
    }
}

/// The replicas of the new ReplicaSet, then of each old one (in order), for this pass.
fn plan(deployment: &Value, new_set: &Value, old: &[&Value], desired: i64) -> Vec<i64> {
    let mut targets: Vec<i64> = std::iter::once(new_set)
        .chain(old.iter().copied())
        .map(replicas)
        .collect();
    let old_running: i64 = targets[1..].iter().sum();
    let strategy = &deployment["spec"]["strategy"];
    if strategy["type"] == "Recreate" {
        // Every old pod is gone before a new one starts.
        let old_pods: i64 = old.iter().map(|set| status_count(set, "replicas")).sum();
        targets[1..].fill(0);
        if old_running == 0 && old_pods == 0 {
            targets[0] = desired;
        }
        return targets;
    }
    if old_running == 0 {
        targets[0] = desired;
        return targets;
    }
    let surge = scaled_value(&strategy["rollingUpdate"]["maxSurge"], desired, true);
    let mut unavailable =
        scaled_value(&strategy["rollingUpdate"]["maxUnavailable"], desired, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    // Up: the new set grows while the total stays within desired + maxSurge.
    let total: i64 = targets.iter().sum();
    if total < desired + surge {
        targets[0] = (targets[0] + desired + surge - total).min(desired);
    }
    // Down: old sets shrink (oldest first) while availability stays above desired -
    // maxUnavailable; their unavailable pods may go at once.
    let min_available = desired - unavailable;
    let new_unavailable = targets[0] - status_count(new_set, "availableReplicas");
    let total: i64 = targets.iter().sum();
    let mut budget = (total - min_available - new_unavailable).max(0);
    for (index, set) in old.iter().enumerate() {
        let unhealthy = (replicas(set) - status_count(set, "availableReplicas")).max(0);
        let cut = unhealthy.min(budget).min(targets[index + 1]);
        targets[index + 1] -= cut;
        budget -= cut;
    }
    let available: i64 = std::iter::once(new_set)
        .chain(old.iter().copied())
        .map(|set| status_count(set, "availableReplicas"))
        .sum();
    let mut budget = (available - min_available).max(0).min(budget);
    for target in targets[1..].iter_mut() {
        let cut = (*target).min(budget);
        *target -= cut;
        budget -= cut;
    }
    targets
}

/// maxSurge or maxUnavailable against `desired`: a count, or a percentage rounded up (surge)
/// or down (unavailable).
fn scaled_value(value: &Value, desired: i64, round_up: bool) -> i64 {
    if let Some(count) = value.as_i64() {
        return count.max(0);
    }
    let percent = value
        .as_str()
        .and_then(|p| p.strip_suffix('%'))
        .and_then(|p| p.parse::<i64>().ok())
        .unwrap_or(25);
    let scaled = desired * percent;
    if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    }
}

/// Deletes scaled-down old ReplicaSets beyond the history limit, oldest first.
async fn clean_up_history(api: &Api, deployment: &Value, old: &[&Value]) -> ApiResult<()> {
    let limit = deployment["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10);
    let idle: Vec<&&Value> = old
        .iter()
        .filter(|set| replicas(set) == 0 && status_count(set, "replicas") == 0)
        .collect();
    let excess = (idle.len() as i64 - limit).max(0) as usize;
    for set in idle.into_iter().take(excess) {
        let path = format!(
            "/apis/apps/v1/namespaces/{}/replicasets/{}",
            ownership::namespace(set),
            ownership::name(set)
        );
        match api.call("DELETE", &path, None).await {
            Err(error) if error.code != 404 => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// The Deployment carries its current revision as an annotation, as `kubectl rollout
/// history` reads it.
async fn record_revision(api: &Api, deployment: &Value, new_set: &Value) -> ApiResult<()> {
    let revision = new_set["metadata"]["annotations"][REVISION].clone();
    if deployment["metadata"]["annotations"][REVISION] == revision {
        return Ok(());
    }
    let path = format!(
        "/apis/apps/v1/namespaces/{}/deployments/{}",
        ownership::namespace(deployment),
        ownership::name(deployment)
    );
    let patch = json!({"metadata": {"annotations": {REVISION: revision},
        "resourceVersion": deployment["metadata"]["resourceVersion"]}});
    api.call("PATCH", &path, Some(patch)).await.map(drop)
}

async fn update_status(
    api: &Api,
    deployment: &Value,
    new_set: &Value,
    old: &[&Value],
    desired: i64,
) -> ApiResult<()> {
    let all = || std::iter::once(new_set).chain(old.iter().copied());
    let sum = |field: &str| all().map(|set| status_count(set, field)).sum::<i64>();
    let (available, ready, total) = (
        sum("availableReplicas"),
        sum("readyReplicas"),
        sum("replicas"),
    );
    let updated = status_count(new_set, "replicas");
    let spec_total: i64 = all().map(replicas).sum();
    let strategy = &deployment["spec"]["strategy"];
    let max_unavailable = if strategy["type"] == "RollingUpdate" {
        scaled_value(&strategy["rollingUpdate"]["maxUnavailable"], desired, false)
    } else {
        0
    };
    let mut status = deployment["status"].clone();
    let mut counts = Map::new();
    counts.insert(
        "observedGeneration".into(),
        deployment["metadata"]["generation"].clone(),
    );
    counts.insert("replicas".into(), total.into());
    counts.insert("updatedReplicas".into(), updated.into());
    counts.insert("readyReplicas".into(), ready.into());
    counts.insert("availableReplicas".into(), available.into());
    counts.insert(
        "unavailableReplicas".into(),
        (spec_total - available).max(0).into(),
    );
    for (field, value) in counts {
        if value.as_i64() == Some(0) && field != "replicas" {
            if let Some(fields) = status.as_object_mut() {
                fields.remove(&field);
            }
        } else {
            status[field] = value;
        }
    }
    let name = ownership::name(new_set);
    let (available_status, available_reason, available_message) =
        if available >= desired - max_unavailable {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
    let complete = updated == desired && total == desired && available == desired;
    let (progress_reason, progress_message) = if complete {
        (
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{name}\" has successfully progressed."),
        )
    } else {
        (
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{name}\" is progressing."),
        )
    };
    let now = now();
    set_changed_condition(
        &mut status,
        "Available",
        available_status,
        available_reason,
        available_message,
        &now,
    );
    set_changed_condition(
        &mut status,
        "Progressing",
        "True",
        progress_reason,
        &progress_message,
        &now,
    );
    if status == deployment["status"] {
        return Ok(());
    }
    let mut updated_deployment = deployment.clone();
    updated_deployment["status"] = status;
    write_status(api, updated_deployment).await
}

/// Sets a condition unless it already says the same (so a pass that changes nothing writes
/// nothing); `lastTransitionTime` moves only when its status does.
fn set_changed_condition(
    status: &mut Value,
    kind: &str,
    state: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    let existing = status["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == kind))
        .cloned();
    if let Some(existing) = &existing {
        if existing["status"] == state
            && existing["reason"] == reason
            && existing["message"] == message
        {
            return;
        }
    }
    let transition = match &existing {
        Some(existing) if existing["status"] == state => existing["lastTransitionTime"].clone(),
        _ => now.into(),
    };
    set_condition(
        status,
        json!({"type": kind, "status": state, "lastUpdateTime": now,
        "lastTransitionTime": transition, "reason": reason, "message": message}),
    );
}

async fn write_status(api: &Api, mut deployment: Value) -> ApiResult<()> {
    deployment["apiVersion"] = "apps/v1".into();
    deployment["kind"] = "Deployment".into();
    let path = format!(
        "/apis/apps/v1/namespaces/{}/deployments/{}/status",
        ownership::namespace(&deployment),
        ownership::name(&deployment)
    );
    api.call("PUT", &path, Some(deployment)).await.map(drop)
}

/// The `pod-template-hash` of a template: FNV-1a (32 bits) of the template and the collision
/// count, its decimal digits spelled in apimachinery's safe alphabet, as kube-controller-manager
/// names ReplicaSets (the hash of the same template differs from Go's, which hashes Go's own
/// printing of the struct; both controllers only need it to be stable and to tell templates
/// apart).
fn template_hash(template: &Value, collisions: i64) -> String {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    let text = template.to_string();
    let bytes = text.as_bytes().iter().copied();
    let collision_bytes = (collisions > 0).then(|| collisions.to_string().into_bytes());
    for byte in bytes.chain(collision_bytes.into_iter().flatten()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|digit| SAFE[usize::from(digit) % SAFE.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(replicas: i64, available: i64) -> Value {
        json!({"spec": {"replicas": replicas},
            "status": {"replicas": replicas, "availableReplicas": available}})
    }

    fn rolling(desired: i64) -> Value {
        json!({"spec": {"replicas": desired, "strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}})
    }

    #[test]
    fn a_rollout_surges_then_trades_old_pods_for_available_new_ones() {
        let deployment = rolling(4);
        // Start: 4 old, a new set at 0. One surge pod (25% of 4, rounded up) starts, and one
        // old pod may go (25% unavailable).
        let (new, old) = (set(0, 0), set(4, 4));
        assert_eq!(plan(&deployment, &new, &[&old], 4), [1, 3]);
        // The new pod is available: another old one can go, another new one start.
        let (new, old) = (set(2, 1), set(3, 3));
        assert_eq!(plan(&deployment, &new, &[&old], 4), [2, 2]);
        // Done: the old set goes to zero.
        let (new, old) = (set(4, 4), set(1, 1));
        assert_eq!(plan(&deployment, &new, &[&old], 4), [4, 0]);
    }

    #[test]
    fn recreate_empties_the_old_sets_first_and_scaling_follows_replicas() {
        let mut deployment = rolling(3);
        deployment["spec"]["strategy"] = json!({"type": "Recreate"});
        assert_eq!(plan(&deployment, &set(0, 0), &[&set(3, 3)], 3), [0, 0]);
        let draining = json!({"spec": {"replicas": 0}, "status": {"replicas": 2}});
        assert_eq!(plan(&deployment, &set(0, 0), &[&draining], 3), [0, 0]);
        assert_eq!(plan(&deployment, &set(0, 0), &[&set(0, 0)], 3), [3, 0]);
        assert_eq!(plan(&rolling(7), &set(3, 3), &[], 7), [7]);
    }

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        assert_eq!(scaled_value(&json!("25%"), 10, true), 3);
        assert_eq!(scaled_value(&json!("25%"), 10, false), 2);
        assert_eq!(scaled_value(&json!(2), 10, false), 2);
    }

    #[test]
    fn template_hashes_are_stable_safe_names() {
        let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {}});
        let hash = template_hash(&template, 0);
        assert_eq!(hash, template_hash(&template, 0));
        assert_ne!(hash, template_hash(&template, 1));
        assert!(hash
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert!((1..=10).contains(&hash.len()));
    }
}
