//! Owner references: which object controls which (a ReplicaSet its pods, a Deployment its
//! ReplicaSets), as the workload controllers write, adopt and release them and the garbage
//! collector follows them.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::api::{Api, ApiResult};
use crate::selector::LabelSelector;

/// The uid of the object's controller, if it has one.
pub fn controller_uid(object: &Value) -> Option<&str> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|owner| owner["controller"] == true)?["uid"]
        .as_str()
}

/// The reference a controller puts on what it creates. `owner` carries its apiVersion and
/// kind (an object as read, not a list item).
pub fn controller_reference(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// A kind's objects as the controllers of another see them: by the uid of their controller,
/// and those without one (which a controller may adopt) by namespace.
pub struct Dependents<'a> {
    owned: HashMap<&'a str, Vec<&'a Value>>,
    orphans: HashMap<&'a str, Vec<&'a Value>>,
}

impl<'a> Dependents<'a> {
    pub fn new(objects: &'a [Value]) -> Dependents<'a> {
        let mut dependents = Dependents {
            owned: HashMap::new(),
            orphans: HashMap::new(),
        };
        for object in objects {
            match controller_uid(object) {
                Some(uid) => dependents.owned.entry(uid).or_default().push(object),
                None => dependents
                    .orphans
                    .entry(namespace(object))
                    .or_default()
                    .push(object),
            }
        }
        dependents
    }

    /// What `owner` controls.
    pub fn of(&self, owner: &Value) -> &[&'a Value] {
        self.owned.get(uid(owner)).map_or(&[], Vec::as_slice)
    }

    /// Adopts the orphans in `owner`'s namespace (at `collection`) that its selector matches,
    /// and releases those it controls that it no longer matches, as kube-controller-manager's
    /// workload controllers do: a bare pod with a ReplicaSet's labels becomes one of its
    /// replicas, and a pod relabelled out of it is replaced. Each change is a patch of the
    /// owner references on the version read, so a concurrent change wins. True when anything
    /// changed: the caller then leaves `owner` to the next pass, which sees the result.
    pub async fn claim(
        &self,
        api: &Api,
        owner: &Value,
        owner_kind: &str,
        collection: &str,
    ) -> ApiResult<bool> {
        let Ok(selector) = LabelSelector::from_api(&owner["spec"]["selector"]) else {
            return Ok(false);
        };
        let orphans = self.orphans.get(namespace(owner)).into_iter().flatten();
        let mut changed = false;
        for object in self.of(owner).iter().chain(orphans) {
            let references = object["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let references: Vec<Value> = match claim_of(owner, &selector, object) {
                Claim::Keep | Claim::Ignore => continue,
                Claim::Adopt => references
                    .into_iter()
                    .chain([controller_reference("apps/v1", owner_kind, owner)])
                    .collect(),
                Claim::Release => references
                    .into_iter()
                    .filter(|r| r["uid"] != uid(owner))
                    .collect(),
            };
            let patch = json!({"metadata": {"ownerReferences": references,
                "resourceVersion": object["metadata"]["resourceVersion"]}});
            let path = format!("{collection}/{}", name(object));
            match api.call("PATCH", &path, Some(patch)).await {
                // Changed or gone meanwhile: the next pass decides again.
                Err(error) if matches!(error.code, 404 | 409) => {}
                Err(error) => return Err(error),
                Ok(_) => {}
            }
            changed = true;
        }
        Ok(changed)
    }
}

/// What a controller does with an object it might control, as kube-controller-manager's
/// ControllerRefManager decides.
#[derive(Debug, PartialEq)]
enum Claim {
    Keep,
    /// An orphan its selector matches: the controller takes it.
    Adopt,
    /// Its own, no longer matched: the controller lets it go.
    Release,
    /// Another controller's, or an orphan it does not want.
    Ignore,
}

fn claim_of(owner: &Value, selector: &LabelSelector, object: &Value) -> Claim {
    let owner_deleting = is_terminating(owner);
    match controller_uid(object) {
        Some(controller) if controller == uid(owner) => {
            if owner_deleting || selector.matches(object) {
                Claim::Keep
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None if owner_deleting
            || is_terminating(object)
            || selector.is_empty()
            || !selector.matches(object) =>
        {
            Claim::Ignore
        }
        None => Claim::Adopt,
    }
}

pub fn is_terminating(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null()
}

pub fn uid(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or_default()
}

pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn namespace(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_matching_the_selector_are_adopted_and_unmatched_own_objects_released() {
        let owner = json!({"metadata": {"name": "web", "uid": "u1"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}}});
        let selector = LabelSelector::from_api(&owner["spec"]["selector"]).unwrap();
        let labelled = |app: &str, controller: Option<&str>| {
            let references: Vec<Value> = controller
                .map(|uid| json!({"uid": uid, "controller": true}))
                .into_iter()
                .collect();
            json!({"metadata": {"labels": {"app": app}, "ownerReferences": references}})
        };
        let claim = |object: &Value| claim_of(&owner, &selector, object);
        assert_eq!(claim(&labelled("web", None)), Claim::Adopt);
        assert_eq!(claim(&labelled("db", None)), Claim::Ignore);
        assert_eq!(claim(&labelled("web", Some("u1"))), Claim::Keep);
        assert_eq!(claim(&labelled("db", Some("u1"))), Claim::Release);
        assert_eq!(claim(&labelled("web", Some("u2"))), Claim::Ignore);
        let mut terminating = labelled("web", None);
        terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        assert_eq!(claim(&terminating), Claim::Ignore);
        // An owner being deleted neither adopts nor releases.
        let mut deleting = owner.clone();
        deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        assert_eq!(
            claim_of(&deleting, &selector, &labelled("web", None)),
            Claim::Ignore
        );
        assert_eq!(
            claim_of(&deleting, &selector, &labelled("db", Some("u1"))),
            Claim::Keep
        );
    }

    #[test]
    fn objects_group_under_their_controller_only() {
        let owner = json!({"metadata": {"name": "web", "uid": "u1"}});
        let controlled = json!({"metadata": {"ownerReferences": [
            {"uid": "other", "controller": false},
            controller_reference("apps/v1", "ReplicaSet", &owner)]}});
        let referenced = json!({"metadata": {"ownerReferences": [{"uid": "u1"}]}});
        let objects = [controlled, referenced, json!({"metadata": {}})];
        let dependents = Dependents::new(&objects);
        assert_eq!(dependents.of(&owner).len(), 1);
        assert_eq!(
            dependents.orphans[""].len(),
            2,
            "no controller, some owner or none"
        );
        assert_eq!(
            objects[0]["metadata"]["ownerReferences"][1]["kind"],
            "ReplicaSet"
        );
    }
}
