//! Server-side printing: objects as the meta.k8s.io/v1 Table kubectl asks for (`Accept:
//! application/json;as=Table;v=v1;g=meta.k8s.io`), with kube-apiserver's columns for each kind
//! (pkg/printers/internalversion), `-o wide`'s extra columns at priority 1, and each row's
//! object as PartialObjectMetadata (or whole, `includeObject=Object`). Kinds without a printer
//! get kube-apiserver's default columns, Name and Created At.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn from_query(value: Option<&str>) -> IncludeObject {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an Accept header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|media_type| {
        let parameters: Vec<&str> = media_type.split(';').map(str::trim).collect();
        parameters.contains(&"as=Table") && parameters.contains(&"g=meta.k8s.io")
    })
}

/// (name, type, priority): priority 1 columns show with `-o wide` only.
type Column = (&'static str, &'static str, u8);

fn columns(kind: &str) -> &'static [Column] {
    match kind {
        "Pod" => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        "Node" => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        "Namespace" => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        "ConfigMap" => &[
            ("Name", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        "Secret" => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        "Service" => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        "Endpoints" => &[
            ("Name", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        "Deployment" => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "string", 0),
            ("Available", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "ReplicaSet" => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "Lease" => &[
            ("Name", "string", 0),
            ("Holder", "string", 0),
            ("Age", "string", 0),
        ],
        "Event" => &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        _ => &[("Name", "string", 0), ("Created At", "date", 0)],
    }
}

/// `objects` (each as the API shows it) of `kind` as one Table, at `resource_version`.
pub fn table(
    kind: &str,
    objects: &[Value],
    list_metadata: Value,
    include: IncludeObject,
    now: DateTime<Utc>,
) -> Value {
    let definitions: Vec<Value> = columns(kind)
        .iter()
        .map(|(name, kind, priority)| {
            let mut column = json!({"name": name, "type": kind, "format": "",
                "description": "", "priority": priority});
            if *name == "Name" {
                column["format"] = "name".into();
            }
            column
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut row = json!({"cells": cells(kind, object, now)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({"kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]});
                }
                IncludeObject::Object => row["object"] = object.clone(),
            }
            row
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_metadata,
        "columnDefinitions": definitions, "rows": rows})
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

fn count(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

/// apimachinery's HumanDuration of the time since `timestamp`.
fn age(timestamp: &Value, now: DateTime<Utc>) -> String {
    let Ok(then) = DateTime::parse_from_rfc3339(text(timestamp)) else {
        return "<unknown>".into();
    };
    let seconds = (now - then.with_timezone(&Utc)).num_seconds();
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    let (days, years) = (hours / 24, hours / 24 / 365);
    let with_rest = |big: i64, unit: &str, rest: i64, rest_unit: &str| match rest {
        0 => format!("{big}{unit}"),
        rest => format!("{big}{unit}{rest}{rest_unit}"),
    };
    match seconds {
        s if s < -1 => "<invalid>".into(),
        s if s < 0 => "0s".into(),
        s if s < 120 => format!("{s}s"),
        _ if minutes < 10 => with_rest(minutes, "m", seconds % 60, "s"),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => with_rest(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => with_rest(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => with_rest(years, "y", days % 365, "d"),
        _ => format!("{years}y"),
    }
}

fn joined_names(items: &Value, field: &str) -> String {
    let names: Vec<&str> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| text(&item[field]))
        .collect();
    names.join(",")
}

fn label_map(map: &Value) -> String {
    let pairs: Vec<String> = map
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={}", text(value)))
        .collect();
    or_none(pairs.join(","))
}

fn workload_wide(object: &Value) -> [Value; 3] {
    let containers = &object["spec"]["template"]["spec"]["containers"];
    let selector = crate::selector::LabelSelector::from_api(&object["spec"]["selector"])
        .map(|s| s.to_query())
        .unwrap_or_default();
    [
        joined_names(containers, "name").into(),
        joined_names(containers, "image").into(),
        or_none(selector).into(),
    ]
}

fn cells(kind: &str, object: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let meta = &object["metadata"];
    let name = Value::from(text(&meta["name"]));
    let created = age(&meta["creationTimestamp"], now);
    let (spec, status) = (&object["spec"], &object["status"]);
    match kind {
        "Pod" => {
            let (ready, status_text, restarts) = pod_summary(object);
            vec![
                name,
                ready.into(),
                status_text.into(),
                restarts.to_string().into(),
                created.into(),
                or_none(text(&status["podIP"]).into()).into(),
                or_none(text(&spec["nodeName"]).into()).into(),
                or_none(text(&status["nominatedNodeName"]).into()).into(),
                "<none>".into(),
            ]
        }
        "Node" => {
            let ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready");
            let mut state = match ready.map(|c| text(&c["status"])) {
                Some("True") => "Ready".to_string(),
                Some("False") => "NotReady".to_string(),
                _ => "Unknown".to_string(),
            };
            if spec["unschedulable"] == true {
                state += ",SchedulingDisabled";
            }
            let mut roles: Vec<&str> = meta["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(key, _)| key.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            roles.sort_unstable();
            let address = |wanted: &str| {
                let addresses = status["addresses"].as_array().into_iter().flatten();
                let found = addresses
                    .filter(|a| a["type"] == wanted)
                    .map(|a| text(&a["address"]))
                    .next();
                or_none(found.unwrap_or_default().into())
            };
            let info = &status["nodeInfo"];
            vec![
                name,
                state.into(),
                or_none(roles.join(",")).into(),
                created.into(),
                text(&info["kubeletVersion"]).into(),
                address("InternalIP").into(),
                address("ExternalIP").into(),
                text(&info["osImage"]).into(),
                text(&info["kernelVersion"]).into(),
                text(&info["containerRuntimeVersion"]).into(),
            ]
        }
        "Namespace" => vec![name, text(&status["phase"]).into(), created.into()],
        "ConfigMap" => {
            let entries = |field: &str| object[field].as_object().map_or(0, |m| m.len());
            vec![
                name,
                (entries("data") + entries("binaryData")).to_string().into(),
                created.into(),
            ]
        }
        "Secret" => {
            let entries = object["data"].as_object().map_or(0, |m| m.len());
            vec![
                name,
                text(&object["type"]).into(),
                entries.to_string().into(),
                created.into(),
            ]
        }
        "Service" => {
            let kind = text(&spec["type"]);
            let external = match kind {
                "ExternalName" => text(&spec["externalName"]).to_string(),
                _ => spec["externalIPs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join(","),
            };
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["nodePort"].as_i64() {
                    Some(node) => format!("{}:{node}/{}", p["port"], text(&p["protocol"])),
                    None => format!("{}/{}", p["port"], text(&p["protocol"])),
                })
                .collect();
            vec![
                name,
                kind.into(),
                or_none(text(&spec["clusterIP"]).into()).into(),
                or_none(external).into(),
                or_none(ports.join(",")).into(),
                created.into(),
                label_map(&spec["selector"]).into(),
            ]
        }
        "Endpoints" => {
            let mut endpoints = Vec::new();
            for subset in object["subsets"].as_array().into_iter().flatten() {
                for address in subset["addresses"].as_array().into_iter().flatten() {
                    let ports = subset["ports"].as_array().filter(|p| !p.is_empty());
                    match ports {
                        Some(ports) => endpoints.extend(
                            ports
                                .iter()
                                .map(|p| format!("{}:{}", text(&address["ip"]), p["port"])),
                        ),
                        None => endpoints.push(text(&address["ip"]).to_string()),
                    }
                }
            }
            let shown = match endpoints.len() {
                n if n > 3 => format!("{} + {} more...", endpoints[..3].join(","), n - 3),
                _ => endpoints.join(","),
            };
            vec![name, or_none(shown).into(), created.into()]
        }
        "Deployment" => {
            let [containers, images, selector] = workload_wide(object);
            vec![
                name,
                format!(
                    "{}/{}",
                    count(&status["readyReplicas"]),
                    count(&spec["replicas"])
                )
                .into(),
                count(&status["updatedReplicas"]).into(),
                count(&status["availableReplicas"]).into(),
                created.into(),
                containers,
                images,
                selector,
            ]
        }
        "ReplicaSet" => {
            let [containers, images, selector] = workload_wide(object);
            vec![
                name,
                count(&spec["replicas"]).into(),
                count(&status["replicas"]).into(),
                count(&status["readyReplicas"]).into(),
                created.into(),
                containers,
                images,
                selector,
            ]
        }
        "Lease" => vec![name, text(&spec["holderIdentity"]).into(), created.into()],
        "Event" => {
            let last = ["lastTimestamp", "eventTime"]
                .iter()
                .map(|field| &object[*field])
                .find(|t| t.is_string())
                .unwrap_or(&meta["creationTimestamp"]);
            let involved = &object["involvedObject"];
            vec![
                age(last, now).into(),
                text(&object["type"]).into(),
                text(&object["reason"]).into(),
                format!(
                    "{}/{}",
                    text(&involved["kind"]).to_lowercase(),
                    text(&involved["name"])
                )
                .into(),
                text(&object["message"]).into(),
            ]
        }
        _ => vec![name, meta["creationTimestamp"].clone()],
    }
}

/// A pod's Ready (`1/2`), Status and Restarts, as kubectl shows them: the phase, unless a
/// container says more (waiting or terminated with a reason), and Terminating once deleted.
fn pod_summary(pod: &Value) -> (String, String, i64) {
    let status = &pod["status"];
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let mut reason = match text(&status["reason"]) {
        "" => text(&status["phase"]).to_string(),
        reason => reason.to_string(),
    };
    let (mut ready, mut restarts, mut running) = (0, 0, false);
    let statuses: Vec<&Value> = status["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for container in statuses.iter().rev() {
        restarts += count(&container["restartCount"]);
        let state = &container["state"];
        if let Some(waiting) = state["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = waiting.to_string();
        } else if state["terminated"].is_object() {
            reason = match text(&state["terminated"]["reason"]) {
                "" => format!("ExitCode:{}", count(&state["terminated"]["exitCode"])),
                terminated => terminated.to_string(),
            };
        } else if container["ready"] == true && state["running"].is_object() {
            running = true;
            ready += 1;
        }
    }
    if reason == "Completed" && running {
        reason = "Running".into();
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    (format!("{ready}/{total}"), reason, restarts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn ages_read_as_kubectls() {
        let now = at("2026-12-06T12:00:00Z");
        let since = |then: &str| age(&json!(then), now);
        assert_eq!(since("2026-12-06T11:59:05Z"), "55s");
        assert_eq!(since("2026-12-06T11:55:30Z"), "4m30s");
        assert_eq!(since("2026-12-06T11:55:00Z"), "5m");
        assert_eq!(since("2026-12-06T10:00:00Z"), "120m");
        assert_eq!(since("2026-12-06T06:30:00Z"), "5h30m");
        assert_eq!(since("2026-12-05T00:00:00Z"), "36h");
        assert_eq!(since("2026-12-03T09:00:00Z"), "3d3h");
        assert_eq!(since("2026-10-01T12:00:00Z"), "66d");
        assert_eq!(since("2026-12-06T12:00:05Z"), "<invalid>");
    }

    #[test]
    fn pods_and_deployments_print_kube_apiservers_columns() {
        let now = at("2026-12-06T12:00:00Z");
        let pod = json!({"metadata": {"name": "web", "creationTimestamp": "2026-12-06T11:59:00Z"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.88.0.1", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let printed = table(
            "Pod",
            &[pod],
            json!({"resourceVersion": "9"}),
            IncludeObject::Metadata,
            now,
        );
        assert_eq!(
            printed["rows"][0]["cells"],
            json!([
                "web",
                "1/2",
                "CrashLoopBackOff",
                "2",
                "60s",
                "10.88.0.1",
                "node-1",
                "<none>",
                "<none>"
            ])
        );
        assert_eq!(
            printed["rows"][0]["object"]["kind"],
            "PartialObjectMetadata"
        );
        assert_eq!(printed["columnDefinitions"][5]["priority"], 1);
        let deployment = json!({"metadata": {"name": "web", "creationTimestamp": "2026-12-06T11:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        assert_eq!(
            cells("Deployment", &deployment, now),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("60m"),
                json!("nginx"),
                json!("nginx:1.27"),
                json!("app=web")
            ]
        );
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
    }
}
