//! The garbage collector: an object whose every owner is gone (no object of the owner's kind
//! and name with the owner's uid) is deleted, so deleting a Deployment takes its ReplicaSets,
//! and those their pods, as kube-controller-manager's garbage collector does for background
//! deletion. An owner is looked up live before anything is deleted, so an owner created after
//! a pass's lists began is never missed. Owners of kinds the shim does not serve are assumed
//! present. Foreground deletion (the `foregroundDeletion` finalizer) and orphaning are not done.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::api::{self, Api, ApiResult};
use crate::ownership;
use crate::resources::{Resource, RESOURCES};

pub async fn run(api: Api) {
    let watches = [
        "/apis/apps/v1/deployments?watch=true",
        "/apis/apps/v1/replicasets?watch=true",
    ];
    api::control_loop(api, "garbage collector", &watches, |api| async move {
        collect(&api).await
    })
    .await
}

/// The served resource an owner reference names (`apps/v1`, `ReplicaSet`).
fn owner_resource(reference: &Value) -> Option<&'static Resource> {
    let api_version = reference["apiVersion"].as_str()?;
    let kind = reference["kind"].as_str()?;
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

async fn collect(api: &Api) -> ApiResult<()> {
    // Whether the owner (resource, namespace, name, uid) exists, looked up once per pass.
    let mut present: HashMap<String, bool> = HashMap::new();
    for resource in RESOURCES {
        let list = api
            .call("GET", &resource.collection_path(None), None)
            .await?;
        for object in list["items"].as_array().into_iter().flatten() {
            let owners = object["metadata"]["ownerReferences"].as_array();
            let Some(owners) = owners.filter(|o| !o.is_empty()) else {
                continue;
            };
            let namespace = ownership::namespace(object);
            let mut orphaned = true;
            for owner in owners {
                let Some(owner_kind) = owner_resource(owner) else {
                    orphaned = false;
                    break;
                };
                let path = format!(
                    "{}/{}",
                    owner_kind.collection_path(Some(namespace)),
                    owner["name"].as_str().unwrap_or_default()
                );
                let uid = owner["uid"].as_str().unwrap_or_default();
                let key = format!("{path} {uid}");
                let exists = match present.get(&key) {
                    Some(exists) => *exists,
                    None => {
                        let exists = match api.call("GET", &path, None).await {
                            Ok(found) => ownership::uid(&found) == uid,
                            Err(error) if error.code == 404 => false,
                            Err(error) => return Err(error),
                        };
                        present.insert(key, exists);
                        exists
                    }
                };
                if exists {
                    orphaned = false;
                    break;
                }
            }
            if orphaned {
                let path = format!(
                    "{}/{}",
                    resource.collection_path(Some(namespace)),
                    ownership::name(object)
                );
                let options = json!({"preconditions": {"uid": ownership::uid(object)}});
                match api.call("DELETE", &path, Some(options)).await {
                    Err(error) if !matches!(error.code, 404 | 409) => return Err(error),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}
