//! The namespace controller: a namespace being deleted (marked Terminating, held by the
//! `kubernetes` finalizer) has every object in it deleted; then the finalizer is removed through
//! `namespaces/NAME/finalize` and the namespace deleted, as kube-controller-manager's namespace
//! controller does. Level-triggered: a pass runs after any namespace event, and every few seconds.

use serde_json::{json, Value};

use crate::api::{self, Api};
use crate::resources::RESOURCES;

const FINALIZER: &str = "kubernetes";

pub async fn run(api: Api) {
    let watches = ["/api/v1/namespaces?watch=true"];
    api::control_loop(api, "namespace controller", &watches, |api| async move {
        finalize_terminating(&api).await
    })
    .await
}

async fn finalize_terminating(api: &Api) -> api::ApiResult<()> {
    let namespaces = api.list_items("/api/v1/namespaces").await?;
    for namespace in &namespaces {
        if namespace["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let name = namespace["metadata"]["name"].as_str().unwrap_or_default();
        delete_content(api, name).await?;
        let finalizers: Vec<Value> = namespace["spec"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        let finalized = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "resourceVersion": namespace["metadata"]["resourceVersion"]},
            "spec": {"finalizers": finalizers}});
        let path = format!("/api/v1/namespaces/{name}");
        let outcome = match api
            .call("PUT", &format!("{path}/finalize"), Some(finalized))
            .await
        {
            // Another finalizer is still at work: its owner removes it, then deletes again.
            Ok(_) if !finalizers.is_empty() => Ok(Value::Null),
            Ok(_) => api.call("DELETE", &path, None).await,
            Err(error) => Err(error),
        };
        match outcome {
            // Changed or gone meanwhile: the next pass sees it.
            Err(error) if !matches!(error.code, 404 | 409) => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Deletes every object of every namespaced kind in `namespace`.
async fn delete_content(api: &Api, namespace: &str) -> api::ApiResult<()> {
    for resource in RESOURCES.iter().filter(|r| r.namespaced) {
        let collection = resource.collection_path(Some(namespace));
        let objects = api.list_items(&collection).await?;
        for object in &objects {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            match api
                .call("DELETE", &format!("{collection}/{name}"), None)
                .await
            {
                Err(error) if error.code != 404 => return Err(error),
                _ => {}
            }
        }
    }
    Ok(())
}
