//! The Deployment controller: each Deployment owns one ReplicaSet per pod template it has had
//! (named after the template's hash, labelled `pod-template-hash`); the one matching the
//! current template is scaled up and the others down, all at once (`Recreate`: the old ones to
//! zero first) or within `maxSurge` and `maxUnavailable` (`RollingUpdate`), as
//! kube-controller-manager's deployment controller does. Old ReplicaSets beyond
//! `revisionHistoryLimit` are deleted, and the status and the `Available` and `Progressing`
//! conditions report the rollout, which is what `kubectl rollout status` waits on; a rollout
//! that makes no progress for `progressDeadlineSeconds` is reported stuck. A paused Deployment
//! starts no rollout and only follows `replicas`. Orphaned ReplicaSets its selector matches
//! are adopted, and its own that it no longer matches released. Not done: proportional scaling
//! across several active ReplicaSets (during a rollout or while paused).

use serde_json::{json, Map, Value};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use crate::api::{self, current_time, Api, ApiResult};
use crate::ownership::{self, controller_reference, is_terminating, Dependents};
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
    let dependents = Dependents::new(&sets);
    for deployment in &deployments {
        let namespace = ownership::namespace(deployment);
        let collection = format!("/apis/apps/v1/namespaces/{namespace}/replicasets");
        if dependents
            .claim(api, deployment, "Deployment", &collection)
            .await?
            || is_terminating(deployment)
        {
            continue;
        }
        let own = dependents.of(deployment).to_vec();
        match sync(api, deployment, own).await {
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
    let paused = deployment["spec"]["paused"] == true;
    // Oldest first: scaling down and history cleanup take the oldest revisions first.
    sets.sort_by_key(|set| revision(set));
    let current = sets
        .iter()
        .position(|set| template_without_hash(set) == *template);
    let created_set;
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
            Some(set)
        }
        // A paused Deployment starts no rollout: its new template waits for the resume.
        None if paused => None,
        None => {
            let next_revision = sets.last().map_or(0, |set| revision(set)) + 1;
            created_set = create_replica_set(api, deployment, next_revision).await?;
            Some(&created_set)
        }
    };
    let desired = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    let scaling = match new_set {
        Some(new_set) if !paused => plan(deployment, new_set, &sets, desired),
        _ => plan_paused(new_set, &sets, desired),
    };
    for (set, target) in new_set.into_iter().chain(sets.iter().copied()).zip(scaling) {
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
    if let Some(new_set) = new_set {
        record_revision(api, deployment, new_set).await?;
    }
    let pass = Pass {
        new_set,
        old: &sets,
        created: current.is_none() && new_set.is_some(),
        now: current_time(),
    };
    let status = next_status(deployment, &pass);
    if status == deployment["status"] {
        return Ok(());
    }
    let mut updated = deployment.clone();
    updated["status"] = status;
    write_status(api, updated).await
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

/// The replicas of the new ReplicaSet (if any), then of each old one, while the Deployment is
/// paused: no rollout moves, but a change of `replicas` reaches the one active set (or, with
/// none active, the newest), as kube-controller-manager's paused sync scales it. With several
/// active sets nothing is scaled (kube-controller-manager scales them in proportion; the shim
/// does not).
fn plan_paused(new_set: Option<&Value>, old: &[&Value], desired: i64) -> Vec<i64> {
    let all: Vec<&Value> = new_set.into_iter().chain(old.iter().copied()).collect();
    let mut targets: Vec<i64> = all.iter().map(|set| replicas(set)).collect();
    let active: Vec<usize> = (0..all.len()).filter(|&i| targets[i] > 0).collect();
    let chosen = match active.as_slice() {
        [only] => Some(*only),
        // The new set comes first; among old ones (oldest first) the newest is last.
        [] if new_set.is_some() => Some(0),
        [] => all.len().checked_sub(1),
        _ => None,
    };
    if let Some(index) = chosen {
        targets[index] = desired;
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
        api.delete_if_present(&path, None).await?;
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

/// What one pass saw and did, for the status it leaves.
struct Pass<'a> {
    new_set: Option<&'a Value>,
    old: &'a [&'a Value],
    /// The pass created the new ReplicaSet.
    created: bool,
    now: DateTime<Utc>,
}

/// The Deployment's status after `pass`: the counts, `Available`, and `Progressing` as
/// kube-controller-manager's syncRolloutStatus keeps it. Progress (more updated, ready or
/// available pods, fewer old ones) renews its `lastUpdateTime`; a rollout that makes none for
/// `progressDeadlineSeconds` turns it False with ProgressDeadlineExceeded, which `kubectl
/// rollout status` reports as a failure. Pausing and resuming set it Unknown, so a resumed
/// rollout gets a fresh deadline; a paused Deployment's progress is not judged.
fn next_status(deployment: &Value, pass: &Pass) -> Value {
    let all = || pass.new_set.into_iter().chain(pass.old.iter().copied());
    let sum = |field: &str| all().map(|set| status_count(set, field)).sum::<i64>();
    let (available, ready, total) = (
        sum("availableReplicas"),
        sum("readyReplicas"),
        sum("replicas"),
    );
    let updated = pass.new_set.map_or(0, |set| status_count(set, "replicas"));
    let spec_total: i64 = all().map(replicas).sum();
    let desired = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    let strategy = &deployment["spec"]["strategy"];
    let max_unavailable = if strategy["type"] == "RollingUpdate" {
        scaled_value(&strategy["rollingUpdate"]["maxUnavailable"], desired, false)
    } else {
        0
    };
    let previous = &deployment["status"];
    let mut status = previous.clone();
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
    let now = pass.now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let now = now.as_str();
    if available >= desired - max_unavailable {
        let message = "Deployment has minimum availability.";
        set_condition_of(
            &mut status,
            AVAILABLE,
            "True",
            "MinimumReplicasAvailable",
            message,
            now,
        );
    } else {
        let message = "Deployment does not have minimum availability.";
        set_condition_of(
            &mut status,
            AVAILABLE,
            "False",
            "MinimumReplicasUnavailable",
            message,
            now,
        );
    }

    let deadline = deployment["spec"]["progressDeadlineSeconds"]
        .as_i64()
        .filter(|&seconds| seconds != i64::from(i32::MAX));
    let Some(deadline) = deadline else {
        remove_condition(&mut status, PROGRESSING);
        return status;
    };
    let paused = deployment["spec"]["paused"] == true;
    let reason = condition(&status, PROGRESSING).map(|c| c["reason"].clone());
    if reason.as_ref().is_none_or(|r| r != TIMED_OUT) {
        let was_paused = reason.as_ref().is_some_and(|r| r == "DeploymentPaused");
        if paused && !was_paused {
            set_condition_of(
                &mut status,
                PROGRESSING,
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
                now,
            );
        } else if !paused && was_paused {
            set_condition_of(
                &mut status,
                PROGRESSING,
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                now,
            );
        }
    }
    if paused {
        return status;
    }
    let subject = match pass.new_set {
        Some(set) => format!("ReplicaSet \"{}\"", ownership::name(set)),
        None => format!("Deployment \"{}\"", ownership::name(deployment)),
    };
    if let Some(set) = pass.new_set {
        let name = ownership::name(set);
        if pass.created {
            let message = format!("Created new replica set \"{name}\"");
            set_condition_of(
                &mut status,
                PROGRESSING,
                "True",
                "NewReplicaSetCreated",
                &message,
                now,
            );
        } else if condition(&status, PROGRESSING).is_none() {
            let message = format!("Found new replica set \"{name}\"");
            set_condition_of(
                &mut status,
                PROGRESSING,
                "True",
                "FoundNewReplicaSet",
                &message,
                now,
            );
        }
    }
    let current = condition(&status, PROGRESSING).cloned();
    let reason_is = |reason: &str| current.as_ref().is_some_and(|c| c["reason"] == reason);
    if total == updated && reason_is(COMPLETE) {
        return status;
    }
    let count = |object: &Value, field: &str| object[field].as_i64().unwrap_or(0);
    let progressed = count(&status, "updatedReplicas") > count(previous, "updatedReplicas")
        || count(&status, "replicas") - count(&status, "updatedReplicas")
            < count(previous, "replicas") - count(previous, "updatedReplicas")
        || count(&status, "readyReplicas") > count(previous, "readyReplicas")
        || count(&status, "availableReplicas") > count(previous, "availableReplicas");
    if updated == desired && total == desired && available == desired {
        let message = format!("{subject} has successfully progressed.");
        set_condition_of(&mut status, PROGRESSING, "True", COMPLETE, &message, now);
    } else if progressed {
        // Renewed even when it says the same: its lastUpdateTime is when progress was last seen.
        let transition = match &current {
            Some(c) if c["status"] == "True" => c["lastTransitionTime"].clone(),
            _ => now.into(),
        };
        remove_condition(&mut status, PROGRESSING);
        set_condition(
            &mut status,
            json!({"type": PROGRESSING, "status": "True", "lastUpdateTime": now,
                "lastTransitionTime": transition, "reason": "ReplicaSetUpdated",
                "message": format!("{subject} is progressing.")}),
        );
    } else if let Some(current) = current.filter(|c| c["reason"] != COMPLETE) {
        let last_progress = current["lastUpdateTime"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        let timed_out = current["reason"] == TIMED_OUT
            || last_progress.is_some_and(|since| since + TimeDelta::seconds(deadline) < pass.now);
        if timed_out {
            let message = format!("{subject} has timed out progressing.");
            set_condition_of(&mut status, PROGRESSING, "False", TIMED_OUT, &message, now);
        }
    }
    status
}

const AVAILABLE: &str = "Available";
const PROGRESSING: &str = "Progressing";
const COMPLETE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn remove_condition(status: &mut Value, kind: &str) {
    if let Some(conditions) = status["conditions"].as_array_mut() {
        conditions.retain(|c| c["type"] != kind);
    }
}

/// kube-controller-manager's SetDeploymentCondition: nothing changes while the condition has
/// the same status and reason (so a pass that changes nothing writes nothing);
/// `lastTransitionTime` moves only when its status does.
fn set_condition_of(
    status: &mut Value,
    kind: &str,
    state: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    let existing = condition(status, kind).cloned();
    if let Some(existing) = &existing {
        if existing["status"] == state && existing["reason"] == reason {
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
    fn a_paused_deployment_scales_its_one_active_set_only() {
        let (new, old) = (set(0, 0), set(3, 3));
        assert_eq!(plan_paused(Some(&new), &[&old], 5), [0, 5]);
        assert_eq!(plan_paused(None, &[&set(0, 0), &set(0, 0)], 2), [0, 2]);
        assert_eq!(plan_paused(Some(&set(0, 0)), &[], 2), [2]);
        // Mid-rollout: two active sets are left as they are.
        assert_eq!(plan_paused(Some(&set(2, 2)), &[&old], 5), [2, 3]);
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn progressing(status: &Value) -> (String, String) {
        let c = condition(status, PROGRESSING).expect("a Progressing condition");
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
        )
    }

    #[test]
    fn a_rollout_without_progress_times_out_after_its_deadline() {
        let mut deployment = rolling(2);
        deployment["metadata"] = json!({"name": "web", "generation": 2});
        deployment["spec"]["progressDeadlineSeconds"] = 60.into();
        // The last rollout was complete; the template has just changed.
        deployment["status"] = json!({"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
            "availableReplicas": 2, "conditions": [{"type": PROGRESSING, "status": "True",
            "reason": COMPLETE, "lastUpdateTime": "2027-01-15T08:00:00Z"}]});
        let new = json!({"metadata": {"name": "web-abc"}, "spec": {"replicas": 1},
            "status": {"replicas": 1}});
        let old = set(2, 2);
        let olds = [&old];
        let pass = |created, now| Pass {
            new_set: Some(&new),
            old: &olds,
            created,
            now: at(now),
        };
        let created = json!({"metadata": {"name": "web-abc"}, "spec": {"replicas": 1}});
        let first = Pass {
            new_set: Some(&created),
            ..pass(true, 0)
        };
        deployment["status"] = next_status(&deployment, &first);
        assert_eq!(
            progressing(&deployment["status"]),
            ("True".into(), "NewReplicaSetCreated".into())
        );
        // The new set's pod counts as progress at 10 s; nothing more happens after it.
        deployment["status"] = next_status(&deployment, &pass(false, 10));
        assert_eq!(
            progressing(&deployment["status"]),
            ("True".into(), "ReplicaSetUpdated".into())
        );
        let status = next_status(&deployment, &pass(false, 69));
        assert_eq!(
            status, deployment["status"],
            "within the deadline nothing changes"
        );
        let status = next_status(&deployment, &pass(false, 71));
        assert_eq!(progressing(&status), ("False".into(), TIMED_OUT.into()));
        assert_eq!(
            condition(&status, PROGRESSING).unwrap()["message"],
            "ReplicaSet \"web-abc\" has timed out progressing."
        );
    }

    #[test]
    fn pausing_and_resuming_reset_the_progress_condition() {
        let mut deployment = rolling(1);
        deployment["metadata"] = json!({"name": "web", "generation": 1});
        deployment["spec"]["progressDeadlineSeconds"] = 600.into();
        deployment["spec"]["paused"] = true.into();
        let new = json!({"metadata": {"name": "web-abc"}, "spec": {"replicas": 1},
            "status": {"replicas": 1, "availableReplicas": 1}});
        let pass = Pass {
            new_set: Some(&new),
            old: &[],
            created: false,
            now: at(0),
        };
        deployment["status"] = next_status(&deployment, &pass);
        assert_eq!(
            progressing(&deployment["status"]),
            ("Unknown".into(), "DeploymentPaused".into())
        );
        deployment["spec"]["paused"] = false.into();
        let resumed = next_status(&deployment, &Pass { now: at(1), ..pass });
        // Resumed, then judged in the same pass: complete.
        assert_eq!(progressing(&resumed), ("True".into(), COMPLETE.into()));
        assert_eq!(
            condition(&resumed, AVAILABLE).unwrap()["reason"],
            "MinimumReplicasAvailable"
        );
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
