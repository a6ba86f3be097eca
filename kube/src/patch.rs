//! The three patch types kube-apiserver takes for built-in kinds: JSON merge patches (RFC 7386),
//! JSON patches (RFC 6902), and strategic merge patches, which `kubectl apply`, `edit`,
//! `set image` and `rollout` send. A strategic merge patch merges lists the Go types mark
//! `patchStrategy:"merge"` element by element on their `patchMergeKey` (containers by name,
//! conditions by type, …) instead of replacing them, and obeys the directives `$patch`,
//! `$retainKeys`, `$setElementOrder/…` and `$deleteFromPrimitiveList/…`.

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    /// The type a PATCH's Content-Type names.
    pub fn from_media_type(media_type: &str) -> Option<PatchType> {
        match media_type {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }

    pub const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json";
}

/// `object` patched; the error says what in the patch could not be applied.
pub fn apply(patch_type: PatchType, object: &mut Value, patch: &Value) -> Result<(), String> {
    match patch_type {
        PatchType::Merge => {
            merge(object, patch);
            Ok(())
        }
        PatchType::Json => json_patch(object, patch),
        PatchType::Strategic => {
            let Value::Object(changes) = patch else {
                return Err("a strategic merge patch is a JSON object".into());
            };
            strategic_map(object, changes, &mut Vec::new())
        }
    }
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let fields = target.as_object_mut().expect("made an object");
    for (key, change) in changes {
        if change.is_null() {
            fields.remove(key);
        } else {
            merge(fields.entry(key.clone()).or_insert(Value::Null), change);
        }
    }
}

/// RFC 6902: add, remove, replace, move, copy and test, at JSON pointers, all or nothing.
fn json_patch(object: &mut Value, patch: &Value) -> Result<(), String> {
    let operations = patch
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    let mut patched = object.clone();
    for operation in operations {
        let op = operation["op"]
            .as_str()
            .ok_or("an operation has no \"op\"")?;
        let path = operation["path"]
            .as_str()
            .ok_or("an operation has no \"path\"")?;
        let value = || {
            operation
                .get("value")
                .cloned()
                .ok_or(format!("{op} at {path:?} has no value"))
        };
        match op {
            "add" => add(&mut patched, path, value()?)?,
            "remove" => {
                remove(&mut patched, path)?;
            }
            "replace" => {
                remove(&mut patched, path)?;
                add(&mut patched, path, value()?)?;
            }
            "move" | "copy" => {
                let from = operation["from"]
                    .as_str()
                    .ok_or(format!("{op} has no \"from\""))?;
                let moved = if op == "move" {
                    remove(&mut patched, from)?
                } else {
                    patched
                        .pointer(from)
                        .cloned()
                        .ok_or(format!("missing value at {from:?}"))?
                };
                add(&mut patched, path, moved)?;
            }
            "test" => {
                if patched.pointer(path) != Some(&value()?) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("Unexpected kind: {other}")),
        }
    }
    *object = patched;
    Ok(())
}

/// The parent of a JSON pointer's target, and the last token (unescaped).
fn parent_of<'a>(object: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or(format!("invalid path {path:?}"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let parent = object
        .pointer_mut(parent)
        .ok_or(format!("doc is missing path: {path:?}"))?;
    Ok((parent, last))
}

fn add(object: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *object = value;
        return Ok(());
    }
    let (parent, last) = parent_of(object, path)?;
    match parent {
        Value::Object(fields) => {
            fields.insert(last, value);
        }
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => {
            let index: usize = last
                .parse()
                .map_err(|_| format!("invalid index {last:?}"))?;
            if index > items.len() {
                return Err(format!(
                    "add operation does not apply: index {index} out of bounds"
                ));
            }
            items.insert(index, value);
        }
        _ => return Err(format!("doc is missing path: {path:?}")),
    }
    Ok(())
}

fn remove(object: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = parent_of(object, path)?;
    let removed = match parent {
        Value::Object(fields) => fields.remove(&last),
        Value::Array(items) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < items.len())
            .map(|i| items.remove(i)),
        _ => None,
    };
    removed.ok_or(format!(
        "remove operation does not apply: doc is missing path: {path:?}"
    ))
}

/// The `patchMergeKey` of a list field of the built-in kinds served, by the field's name and
/// the fields above it; `Some("")` for a merged list of scalars, `None` for a replaced list.
fn merge_key(parents: &[String], field: &str) -> Option<&'static str> {
    let in_container = parents.iter().any(|p| {
        matches!(
            p.as_str(),
            "containers" | "initContainers" | "ephemeralContainers"
        )
    });
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "claims" => "name",
        "ports" if in_container => "containerPort",
        "ports" => "port",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "finalizers" => "",
        _ => return None,
    })
}

fn strategic_map(
    target: &mut Value,
    patch: &Map<String, Value>,
    parents: &mut Vec<String>,
) -> Result<(), String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replacement = patch.clone();
            replacement.remove("$patch");
            *target = Value::Object(replacement);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some(other) => return Err(format!("unknown patch type: {other:?}")),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let fields = target.as_object_mut().expect("made an object");
    for (key, change) in patch {
        if key.starts_with('$') {
            continue;
        }
        if change.is_null() {
            fields.remove(key);
            continue;
        }
        let current = fields.entry(key.clone()).or_insert(Value::Null);
        parents.push(key.clone());
        let merged = match (change, merge_key(&parents[..parents.len() - 1], key)) {
            (Value::Object(changes), _) => strategic_map(current, changes, parents),
            (Value::Array(items), Some(merge_key)) => {
                strategic_list(current, items, merge_key, parents)
            }
            (other, _) => {
                *current = other.clone();
                Ok(())
            }
        };
        parents.pop();
        merged?;
    }
    for (key, values) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(unwanted)) =
                (fields.get_mut(field), values)
            {
                items.retain(|item| !unwanted.contains(item));
            }
        }
    }
    for (key, order) in patch {
        if let (Some(field), Value::Array(order)) = (key.strip_prefix("$setElementOrder/"), order) {
            let merge_key = merge_key(parents, field).unwrap_or("");
            if let Some(Value::Array(items)) = fields.get_mut(field) {
                sort_by_order(items, order, merge_key);
            }
        }
    }
    if let Some(Value::Array(retained)) = patch.get("$retainKeys") {
        fields.retain(|key, _| retained.iter().any(|r| r == key.as_str()));
    }
    Ok(())
}

/// The identity of a list element: its merge key's value, or itself for scalars.
fn element_key<'a>(item: &'a Value, merge_key: &str) -> &'a Value {
    if merge_key.is_empty() {
        item
    } else {
        &item[merge_key]
    }
}

fn strategic_list(
    target: &mut Value,
    patch: &[Value],
    merge_key: &str,
    parents: &mut Vec<String>,
) -> Result<(), String> {
    if patch.iter().any(|item| item["$patch"] == "replace") {
        *target = Value::Array(
            patch
                .iter()
                .filter(|item| item["$patch"] != "replace")
                .cloned()
                .collect(),
        );
        return Ok(());
    }
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let items = target.as_array_mut().expect("made an array");
    for change in patch {
        let key = element_key(change, merge_key).clone();
        if key.is_null() {
            return Err(format!(
                "map: {change} does not contain declared merge key: {merge_key}"
            ));
        }
        let existing = items
            .iter()
            .position(|item| *element_key(item, merge_key) == key);
        match (existing, change) {
            (Some(index), Value::Object(fields))
                if fields.get("$patch").and_then(Value::as_str) == Some("delete") =>
            {
                items.remove(index);
            }
            (None, Value::Object(fields)) if fields.get("$patch").is_some() => {}
            (Some(index), Value::Object(fields)) => {
                strategic_map(&mut items[index], fields, parents)?
            }
            (Some(_), _) => {}
            (None, _) => items.push(change.clone()),
        }
    }
    Ok(())
}

/// Orders `items` as `order` lists them (by merge key); elements it leaves out keep their
/// relative order, after those it names.
fn sort_by_order(items: &mut [Value], order: &[Value], merge_key: &str) {
    let rank = |item: &Value| {
        let key = element_key(item, merge_key);
        order
            .iter()
            .position(|o| element_key(o, merge_key) == key)
            .unwrap_or(order.len())
    };
    items.sort_by_key(|item| rank(item));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strategic(mut object: Value, patch: Value) -> Value {
        apply(PatchType::Strategic, &mut object, &patch).unwrap();
        object
    }

    #[test]
    fn merge_patches_follow_rfc_7386() {
        let mut object = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
        merge(
            &mut object,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "data": "x"}),
        );
        assert_eq!(
            object,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "data": "x"})
        );
    }

    #[test]
    fn set_image_changes_one_container_and_keeps_the_rest() {
        let deployment = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
            {"name": "log", "image": "busybox"}]}}}});
        // What `kubectl set image deployment/x web=nginx:1.28` sends.
        let patched = strategic(
            deployment,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}}),
        );
        let containers = &patched["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            containers[0],
            json!({"name": "web", "image": "nginx:1.28", "ports": [{"containerPort": 80}]})
        );
        assert_eq!(containers[1]["name"], "log");
    }

    #[test]
    fn apply_directives_order_delete_and_retain() {
        let object = json!({"metadata": {"finalizers": ["a", "b"]},
            "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}}});
        let patched = strategic(
            object,
            json!({
            "metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {
                "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null},
                "template": {"spec": {
                    "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                    "containers": [{"name": "b", "$patch": "delete"}, {"name": "c", "image": "x"}]}}}}),
        );
        assert_eq!(patched["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"],
            json!([{"name": "c", "image": "x"}, {"name": "a"}])
        );
        let replaced = strategic(
            json!({"spec": {"ports": [{"port": 1}, {"port": 2}]}}),
            json!({"spec": {"ports": [{"$patch": "replace"}, {"port": 3}]}}),
        );
        assert_eq!(replaced["spec"]["ports"], json!([{"port": 3}]));
        let mut object = json!({"a": 1});
        let refused = apply(
            PatchType::Strategic,
            &mut object,
            &json!({"spec": {"containers": [{"image": "x"}]}}),
        );
        assert!(refused
            .unwrap_err()
            .contains("does not contain declared merge key: name"));
    }

    #[test]
    fn json_patches_are_all_or_nothing() {
        let mut object = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"items": [1, 2]}});
        let patch = json!([
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "replace", "path": "/spec/items/0", "value": 9},
            {"op": "add", "path": "/spec/items/-", "value": 3},
            {"op": "move", "from": "/metadata/labels/a", "path": "/metadata/labels/moved"},
            {"op": "test", "path": "/spec/items/1", "value": 2}]);
        apply(PatchType::Json, &mut object, &patch).unwrap();
        assert_eq!(
            object,
            json!({"metadata": {"labels": {"b/c": "2", "moved": "1"}},
            "spec": {"items": [9, 2, 3]}})
        );
        let failing = json!([{"op": "remove", "path": "/spec/items/0"},
            {"op": "test", "path": "/spec/items/0", "value": 7}]);
        assert!(apply(PatchType::Json, &mut object, &failing).is_err());
        assert_eq!(object["spec"]["items"], json!([9, 2, 3]), "nothing applied");
    }
}
