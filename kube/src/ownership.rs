//! Owner references: which object controls which (a ReplicaSet its pods, a Deployment its
//! ReplicaSets), as the workload controllers write them and the garbage collector follows them.

use std::collections::HashMap;

use serde_json::{json, Value};

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

/// `objects` by the uid of their controller; those without one are left out.
pub fn by_controller(objects: &[Value]) -> HashMap<&str, Vec<&Value>> {
    let mut grouped: HashMap<&str, Vec<&Value>> = HashMap::new();
    for object in objects {
        if let Some(uid) = controller_uid(object) {
            grouped.entry(uid).or_default().push(object);
        }
    }
    grouped
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
    fn objects_group_under_their_controller_only() {
        let owner = json!({"metadata": {"name": "web", "uid": "u1"}});
        let controlled = json!({"metadata": {"ownerReferences": [
            {"uid": "other", "controller": false},
            controller_reference("apps/v1", "ReplicaSet", &owner)]}});
        let referenced = json!({"metadata": {"ownerReferences": [{"uid": "u1"}]}});
        let objects = [controlled, referenced, json!({"metadata": {}})];
        let grouped = by_controller(&objects);
        assert_eq!(grouped.len(), 1);
        assert_eq!(grouped["u1"].len(), 1);
        assert_eq!(
            objects[0]["metadata"]["ownerReferences"][1]["kind"],
            "ReplicaSet"
        );
    }
}
