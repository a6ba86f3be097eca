//! The garbage collector: an object whose every owner is gone (no object of the owner's kind
//! and name with the owner's uid) is deleted, so deleting a Deployment takes its ReplicaSets,
//! and those their pods, as kube-controller-manager's garbage collector does for background
//! deletion. A pass lists every kind once; an owner missing from those lists is looked up live
//! before anything is deleted, so an owner created after a pass's lists began is never missed. Owners of kinds the shim does not serve are assumed
//! present. Foreground deletion (the `foregroundDeletion` finalizer) and orphaning are not done.

use std::collections::HashSet;

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
    let mut listed = Vec::new();
    for resource in RESOURCES {
        let items = api.list_items(&resource.collection_path(None)).await?;
        listed.push((resource, items));
    }
    let present: HashSet<&str> = listed
        .iter()
        .flat_map(|(_, items)| items.iter().map(ownership::uid))
        .collect();
    for (resource, items) in &listed {
        for object in items {
            if is_orphaned(api, object, &present).await? {
                let path = format!(
                    "{}/{}",
                    resource.collection_path(Some(ownership::namespace(object))),
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

/// Whether every owner of `object` is gone. An owner whose uid the pass's lists did not hold
/// is looked up live before it counts as gone: it may have been made after its kind was listed.
async fn is_orphaned(api: &Api, object: &Value, present: &HashSet<&str>) -> ApiResult<bool> {
    let owners = object["metadata"]["ownerReferences"].as_array();
    let Some(owners) = owners.filter(|o| !o.is_empty()) else {
        return Ok(false);
    };
    for owner in owners {
        let uid = owner["uid"].as_str().unwrap_or_default();
        let Some(owner_kind) = owner_resource(owner) else {
            return Ok(false);
        };
        if present.contains(uid) {
            return Ok(false);
        }
        let path = format!(
            "{}/{}",
            owner_kind.collection_path(Some(ownership::namespace(object))),
            owner["name"].as_str().unwrap_or_default()
        );
        match api.call("GET", &path, None).await {
            Ok(found) if ownership::uid(&found) == uid => return Ok(false),
            Ok(_) => {}
            Err(error) if error.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}
