//! The endpoints controller: each Service with a selector gets an Endpoints object of its name
//! listing the pods it selects, the ready ones as addresses and the others as
//! notReadyAddresses, each with the service's ports resolved against the pod (a named
//! targetPort is looked up in its containers), as kube-controller-manager's endpoints
//! controller writes it. Labels are the service's, with `endpoints.kubernetes.io/managed-by`;
//! the Endpoints of a deleted Service are deleted. Services without a selector keep the
//! Endpoints their users write.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::api::{self, Api, ApiResult};
use crate::ownership::{self, is_terminating};
use crate::replicaset_controller::is_ready;

const MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpoint-controller";

pub async fn run(api: Api) {
    let watches = ["/api/v1/services?watch=true", "/api/v1/pods?watch=true"];
    api::control_loop(api, "endpoints controller", &watches, |api| async move {
        sync_all(&api).await
    })
    .await
}

fn key(object: &Value) -> (String, String) {
    (
        ownership::namespace(object).to_string(),
        ownership::name(object).to_string(),
    )
}

async fn sync_all(api: &Api) -> ApiResult<()> {
    let services = api.list_items("/api/v1/services").await?;
    let pods = api.list_items("/api/v1/pods").await?;
    let endpoints = api.list_items("/api/v1/endpoints").await?;
    let existing: HashMap<(String, String), &Value> =
        endpoints.iter().map(|e| (key(e), e)).collect();
    let mut served = Vec::new();
    for service in &services {
        served.push(key(service));
        let selector = &service["spec"]["selector"];
        if service["spec"]["type"] == "ExternalName" || !selector.is_object() {
            continue;
        }
        let selected: Vec<&Value> = pods
            .iter()
            .filter(|pod| pod["metadata"]["namespace"] == service["metadata"]["namespace"])
            .filter(|pod| {
                selector
                    .as_object()
                    .into_iter()
                    .flatten()
                    .all(|(label, value)| pod["metadata"]["labels"][label] == *value)
            })
            .collect();
        let desired = endpoints_of(service, &selected);
        let written = match existing.get(&key(service)) {
            Some(current)
                if current["subsets"] == desired["subsets"]
                    && current["metadata"]["labels"] == desired["metadata"]["labels"] =>
            {
                continue
            }
            Some(current) => {
                let mut updated = desired;
                updated["metadata"]["resourceVersion"] =
                    current["metadata"]["resourceVersion"].clone();
                let path = format!(
                    "/api/v1/namespaces/{}/endpoints/{}",
                    ownership::namespace(service),
                    ownership::name(service)
                );
                api.call("PUT", &path, Some(updated)).await
            }
            None => {
                let path = format!(
                    "/api/v1/namespaces/{}/endpoints",
                    ownership::namespace(service)
                );
                api.call("POST", &path, Some(desired)).await
            }
        };
        match written {
            // Changed meanwhile, or its namespace is going: the next pass sees it.
            Err(error) if matches!(error.code, 403 | 404 | 409) => {}
            other => {
                other?;
            }
        }
    }
    for stale in endpoints
        .iter()
        .filter(|e| e["metadata"]["labels"][MANAGED_BY] == CONTROLLER && !served.contains(&key(e)))
    {
        let path = format!(
            "/api/v1/namespaces/{}/endpoints/{}",
            ownership::namespace(stale),
            ownership::name(stale)
        );
        api.delete_if_present(&path, None).await?;
    }
    Ok(())
}

/// The service's ports as they reach `pod`: a named targetPort resolved in its containers
/// (a port that does not resolve is left out, as kube-controller-manager leaves it out).
fn ports_on(service: &Value, pod: &Value) -> Vec<Value> {
    let container_ports: Vec<&Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .collect();
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|port| {
            let target = match &port["targetPort"] {
                Value::String(name) => container_ports
                    .iter()
                    .find(|p| p["name"] == name.as_str())?["containerPort"]
                    .clone(),
                Value::Null => port["port"].clone(),
                number => number.clone(),
            };
            let mut resolved = json!({"port": target, "protocol": port["protocol"]});
            if let Some(name) = port["name"].as_str().filter(|n| !n.is_empty()) {
                resolved["name"] = name.into();
            }
            Some(resolved)
        })
        .collect()
}

/// The Endpoints a Service with `selected` pods has: one subset per set of resolved ports,
/// addresses in IP order.
fn endpoints_of(service: &Value, selected: &[&Value]) -> Value {
    let mut subsets: Vec<(Vec<Value>, Vec<Value>, Vec<Value>)> = Vec::new();
    let mut pods: Vec<&&Value> = selected
        .iter()
        .filter(|pod| {
            !is_terminating(pod)
                && pod["status"]["podIP"]
                    .as_str()
                    .is_some_and(|ip| !ip.is_empty())
        })
        .collect();
    pods.sort_by_key(|pod| {
        pod["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    for pod in pods {
        let ports = ports_on(service, pod);
        if ports.is_empty()
            && service["spec"]["ports"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        {
            continue;
        }
        let meta = &pod["metadata"];
        let mut address = json!({"ip": pod["status"]["podIP"],
            "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                "uid": meta["uid"]}});
        if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            address["nodeName"] = node.into();
        }
        let index = match subsets.iter().position(|(p, _, _)| *p == ports) {
            Some(index) => index,
            None => {
                subsets.push((ports, Vec::new(), Vec::new()));
                subsets.len() - 1
            }
        };
        if is_ready(pod) {
            subsets[index].1.push(address);
        } else {
            subsets[index].2.push(address);
        }
    }
    let mut labels: Map<String, Value> = service["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(MANAGED_BY.into(), CONTROLLER.into());
    if service["spec"]["clusterIP"] == "None" {
        labels.insert("service.kubernetes.io/headless".into(), "".into());
    }
    let mut endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": service["metadata"]["name"],
            "namespace": service["metadata"]["namespace"], "labels": labels}});
    if !subsets.is_empty() {
        let subsets: Vec<Value> = subsets
            .into_iter()
            .map(|(ports, ready, not_ready)| {
                let mut subset = json!({"ports": ports});
                if !ready.is_empty() {
                    subset["addresses"] = ready.into();
                }
                if !not_ready.is_empty() {
                    subset["notReadyAddresses"] = not_ready.into();
                }
                subset
            })
            .collect();
        endpoints["subsets"] = subsets.into();
    }
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}"),
                "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn ready_pods_are_addresses_and_named_ports_resolve() {
        let service = json!({"metadata": {"name": "web", "namespace": "ns", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.0.0.5",
                "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]}});
        let (a, b, c) = (
            pod("a", "10.88.0.2", true),
            pod("b", "10.88.0.1", true),
            pod("c", "10.88.0.3", false),
        );
        let unstarted = pod("d", "", false);
        let endpoints = endpoints_of(&service, &[&a, &b, &c, &unstarted]);
        let subset = &endpoints["subsets"][0];
        assert_eq!(
            subset["ports"],
            json!([{"name": "web", "port": 8080, "protocol": "TCP"}])
        );
        let ips: Vec<&str> = subset["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["ip"].as_str().unwrap())
            .collect();
        assert_eq!(ips, ["10.88.0.1", "10.88.0.2"]);
        assert_eq!(subset["notReadyAddresses"][0]["targetRef"]["name"], "c");
        assert_eq!(
            endpoints["metadata"]["labels"],
            json!({"tier": "front", MANAGED_BY: CONTROLLER})
        );
        let empty = endpoints_of(&service, &[]);
        assert_eq!(empty.get("subsets"), None, "no pods: no subsets, as stored");
    }
}
