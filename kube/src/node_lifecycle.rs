//! The node lifecycle controller, as the seeds describe kube-controller-manager's: every
//! monitor period (5 s) it reads each node's last heartbeat (its Ready condition's
//! `lastHeartbeatTime`, or its Lease's `renewTime` in `kube-node-lease` when later). A node silent for the grace period (40 s) is marked `Ready=Unknown`
//! ("Kubelet stopped posting node status.") and tainted `node.kubernetes.io/unreachable:NoExecute`;
//! once the taint is older than the eviction timeout (5 min), the node's pods are deleted, so that
//! their owners replace them elsewhere, unless they tolerate the taint for good. A node that
//! reports Ready again loses the taint.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use chrono::DateTime;
use serde_json::{json, Value};

use crate::api::{self, Api};
use crate::scheduler::tolerates;
use oxcd_kube::kubelet_reports::set_condition;

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Where each kubelet renews its node's Lease.
pub const NODE_LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub monitor_period: Duration,
    pub grace_period: Duration,
    pub eviction_timeout: Duration,
}

pub async fn run(api: Api, timing: Timing) {
    let mut ticks = tokio::time::interval(timing.monitor_period);
    loop {
        ticks.tick().await;
        if let Err(error) = monitor(&api, &timing).await {
            eprintln!("node lifecycle: {}", error.message);
        }
    }
}

/// Seconds since the epoch of an RFC 3339 time, if it is one.
fn epoch_seconds(time: &Value) -> Option<i64> {
    DateTime::parse_from_rfc3339(time.as_str()?)
        .ok()
        .map(|t| t.timestamp())
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn ready_condition(node: &Value) -> Value {
    node["status"]["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null)
}

fn unreachable_taint(node: &Value) -> Option<&Value> {
    node["spec"]["taints"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == UNREACHABLE_TAINT && t["effect"] == "NoExecute")
}

/// What the controller does to one node now.
#[derive(Debug, PartialEq)]
enum Step {
    /// Its Ready condition becomes Unknown.
    MarkUnknown,
    Taint,
    Untaint,
    /// Its pods are deleted.
    Evict,
    Nothing,
}

/// `lease_renewed`: when the node's Lease was last renewed, if it has one.
fn next_step(node: &Value, lease_renewed: Option<i64>, now: i64, timing: &Timing) -> Step {
    let ready = ready_condition(node);
    let reported = epoch_seconds(&ready["lastHeartbeatTime"])
        .or_else(|| epoch_seconds(&node["metadata"]["creationTimestamp"]))
        .unwrap_or(now);
    let heartbeat = reported.max(lease_renewed.unwrap_or(reported));
    let silent_too_long = now - heartbeat > timing.grace_period.as_secs() as i64;
    match (ready["status"].as_str(), unreachable_taint(node)) {
        // A node that never reported counts from its creation.
        (Some("True") | None, _) if silent_too_long => Step::MarkUnknown,
        (Some("True"), Some(_)) => Step::Untaint,
        (Some("Unknown"), None) => Step::Taint,
        (Some("Unknown"), Some(taint)) => {
            let tainted_at = epoch_seconds(&taint["timeAdded"]).unwrap_or(now);
            if now - tainted_at >= timing.eviction_timeout.as_secs() as i64 {
                Step::Evict
            } else {
                Step::Nothing
            }
        }
        // A kubelet's own NotReady is its business (kube-controller-manager taints it
        // not-ready, which this controller does not do).
        _ => Step::Nothing,
    }
}

async fn monitor(api: &Api, timing: &Timing) -> api::ApiResult<()> {
    let nodes = api.list_items("/api/v1/nodes").await?;
    let leases = api.list_items(NODE_LEASES).await?;
    let renewals: HashMap<&str, i64> = leases
        .iter()
        .filter_map(|lease| {
            let name = lease["metadata"]["name"].as_str()?;
            Some((name, epoch_seconds(&lease["spec"]["renewTime"])?))
        })
        .collect();
    for node in &nodes {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("/api/v1/nodes/{name}");
        let revision = &node["metadata"]["resourceVersion"];
        let taints = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let renewed = renewals.get(name).copied();
        let result = match next_step(node, renewed, now_seconds(), timing) {
            Step::Nothing => Ok(Value::Null),
            Step::MarkUnknown => {
                let mut status = node["status"].clone();
                let mut ready = ready_condition(node);
                ready["type"] = "Ready".into();
                ready["status"] = "Unknown".into();
                ready["reason"] = "NodeStatusUnknown".into();
                ready["message"] = "Kubelet stopped posting node status.".into();
                ready["lastTransitionTime"] = api::now().into();
                set_condition(&mut status, ready);
                let patch = json!({"metadata": {"resourceVersion": revision}, "status": status});
                api.call("PATCH", &format!("{path}/status"), Some(patch))
                    .await
            }
            Step::Taint => {
                let mut taints = taints;
                taints.push(json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute",
                    "timeAdded": api::now()}));
                let patch = json!({"metadata": {"resourceVersion": revision},
                    "spec": {"taints": taints}});
                api.call("PATCH", &path, Some(patch)).await
            }
            Step::Untaint => {
                let kept: Vec<Value> = taints
                    .into_iter()
                    .filter(|t| t["key"] != UNREACHABLE_TAINT)
                    .collect();
                let patch = json!({"metadata": {"resourceVersion": revision},
                    "spec": {"taints": kept}});
                api.call("PATCH", &path, Some(patch)).await
            }
            Step::Evict => evict(api, name, unreachable_taint(node)).await,
        };
        match result {
            // A node changed or removed meanwhile is looked at again next period.
            Err(error) if !matches!(error.code, 404 | 409) => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Deletes the node's pods that do not tolerate the taint for good.
async fn evict(api: &Api, node: &str, taint: Option<&Value>) -> api::ApiResult<Value> {
    let pods = api.list_items("/api/v1/pods").await?;
    for pod in &pods {
        let tolerated_for_good = taint.is_some_and(|taint| {
            tolerates(pod, taint)
                && pod["spec"]["tolerations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|t| t["tolerationSeconds"].is_null())
        });
        if pod["spec"]["nodeName"] != node || tolerated_for_good {
            continue;
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}",
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default()
        );
        api.delete_if_present(&path, None).await?;
    }
    Ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        monitor_period: Duration::from_secs(5),
        grace_period: Duration::from_secs(40),
        eviction_timeout: Duration::from_secs(300),
    };

    fn node(ready: &str, heartbeat: &str, taint_added: Option<&str>) -> Value {
        let taints = match taint_added {
            Some(at) => json!([{"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": at}]),
            None => json!([]),
        };
        json!({"metadata": {"name": "n"}, "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready,
                "lastHeartbeatTime": heartbeat}]}})
    }

    #[test]
    fn silence_past_the_grace_period_then_the_eviction_timeout() {
        let at = |seconds: i64| {
            DateTime::from_timestamp(seconds, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        let now = 1_000_000;
        assert_eq!(
            next_step(&node("True", &at(now - 10), None), None, now, &TIMING),
            Step::Nothing
        );
        assert_eq!(
            next_step(&node("True", &at(now - 41), None), None, now, &TIMING),
            Step::MarkUnknown
        );
        assert_eq!(
            next_step(&node("Unknown", &at(now - 41), None), None, now, &TIMING),
            Step::Taint
        );
        let tainted = Some(at(now - 299));
        assert_eq!(
            next_step(
                &node("Unknown", &at(now - 400), tainted.as_deref()),
                None,
                now,
                &TIMING
            ),
            Step::Nothing
        );
        let long_ago = Some(at(now - 300));
        assert_eq!(
            next_step(
                &node("Unknown", &at(now - 400), long_ago.as_deref()),
                None,
                now,
                &TIMING
            ),
            Step::Evict
        );
        assert_eq!(
            next_step(
                &node("True", &at(now - 1), long_ago.as_deref()),
                None,
                now,
                &TIMING
            ),
            Step::Untaint
        );
        assert_eq!(
            next_step(&node("False", &at(now - 1), None), None, now, &TIMING),
            Step::Nothing
        );
        let never_reported = |created: i64| json!({"metadata": {"name": "n", "creationTimestamp": at(created)}, "spec": {}});
        assert_eq!(
            next_step(&never_reported(now - 10), None, now, &TIMING),
            Step::Nothing
        );
        assert_eq!(
            next_step(&never_reported(now - 41), None, now, &TIMING),
            Step::MarkUnknown
        );
        // A Lease renewed lately is a heartbeat too, as kubelets mostly send them now.
        assert_eq!(
            next_step(
                &node("True", &at(now - 100), None),
                Some(now - 5),
                now,
                &TIMING
            ),
            Step::Nothing
        );
        assert_eq!(
            next_step(
                &node("True", &at(now - 100), None),
                Some(now - 41),
                now,
                &TIMING
            ),
            Step::MarkUnknown
        );
    }
}
