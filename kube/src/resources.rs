//! The core/v1 resources the shim serves, where kube-apiserver keeps them, and what its
//! registry strategies do to an object on create, update and delete (uid, timestamps,
//! generation, status kept from the stored object, a namespace's finalizer and phase), so an
//! object written here is one kube-apiserver could have written.

use serde_json::{json, Map, Value};

use crate::status::ApiError;
use oxcd_kube::kubelet_reports::set_condition;

#[derive(Debug)]
pub struct Resource {
    /// The plural in URLs (`nodes`).
    pub name: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Where kube-apiserver stores it under its prefix (`minions` for nodes).
    storage: &'static str,
    /// Status changes only through the status subresource: an update keeps the stored status.
    pub has_status: bool,
}

pub const RESOURCES: &[Resource] = &[
    Resource {
        name: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        short_names: &["cm"],
        namespaced: true,
        storage: "configmaps",
        has_status: false,
    },
    Resource {
        name: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        short_names: &["ns"],
        namespaced: false,
        storage: "namespaces",
        has_status: true,
    },
    Resource {
        name: "nodes",
        singular: "node",
        kind: "Node",
        short_names: &["no"],
        namespaced: false,
        storage: "minions",
        has_status: true,
    },
    Resource {
        name: "pods",
        singular: "pod",
        kind: "Pod",
        short_names: &["po"],
        namespaced: true,
        storage: "pods",
        has_status: true,
    },
];

pub fn resource(name: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.name == name)
}

/// What a subresource update may change.
#[derive(Clone, Copy, Debug)]
pub enum Part {
    /// `…/status` (kube-apiserver's status strategies).
    Status,
    /// `namespaces/…/finalize`: the only way a namespace's `spec.finalizers` change.
    Finalizers,
}

/// What happens to a deleted object: removed at once, or (a namespace with finalizers) kept,
/// marked Terminating, until its finalizers are done.
pub enum Deletion {
    Remove,
    Finalize(Value),
}

impl Resource {
    /// The prefix of every object listed at `namespace` (all of them for `None`).
    pub fn list_prefix(&self, root: &str, namespace: Option<&str>) -> String {
        match namespace {
            Some(namespace) if self.namespaced => format!("{root}/{}/{namespace}/", self.storage),
            _ => format!("{root}/{}/", self.storage),
        }
    }

    pub fn key(&self, root: &str, namespace: Option<&str>, name: &str) -> String {
        self.list_prefix(root, namespace) + name
    }

    /// Checks a new object and fills what kube-apiserver fills on create. `now` is RFC 3339.
    pub fn prepare_create(
        &self,
        object: &mut Value,
        namespace: Option<&str>,
        now: &str,
    ) -> Result<(), ApiError> {
        self.check_type(object)?;
        let meta = metadata(object);
        if metadata_text(meta, "name").is_empty() {
            let prefix = metadata_text(meta, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    self.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            meta.insert("name".into(), format!("{prefix}{}", random_suffix()).into());
        }
        self.check_namespace(meta, namespace)?;
        for server_set in [
            "resourceVersion",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(server_set);
        }
        meta.insert("uid".into(), uuid_v4().into());
        meta.insert("creationTimestamp".into(), now.into());
        match self.kind {
            // Pods count spec changes (PodObservedGenerationTracking).
            "Pod" => {
                meta.insert("generation".into(), 1.into());
                object["status"] = json!({"phase": "Pending"});
                default_pod_spec(&mut object["spec"]);
            }
            "Namespace" => {
                let name = metadata_text(metadata(object), "name");
                let labels = metadata(object)
                    .entry("labels")
                    .or_insert_with(|| json!({}));
                labels["kubernetes.io/metadata.name"] = name.into();
                object["spec"] = json!({"finalizers": ["kubernetes"]});
                object["status"] = json!({"phase": "Active"});
            }
            _ => {
                meta.remove("generation");
            }
        }
        Ok(())
    }

    /// Checks a replacement for `stored` and carries over what an update cannot change.
    pub fn prepare_update(
        &self,
        object: &mut Value,
        stored: &Value,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        self.check_type(object)?;
        let meta = metadata(object);
        let given = metadata_text(meta, "name");
        if given != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({given}) does not match the name on the URL ({name})"
            )));
        }
        self.check_namespace(meta, namespace)?;
        let uid = &stored["metadata"]["uid"];
        match meta.get("uid") {
            Some(given) if !given.is_null() && given != uid => {
                return Err(ApiError::conflict(
                    self.name,
                    name,
                    &format!(
                    "Precondition failed: UID in precondition: {given}, UID in object meta: {uid}"
                ),
                ))
            }
            _ => {}
        }
        meta.remove("resourceVersion");
        meta.remove("selfLink");
        for kept in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match stored["metadata"].get(kept) {
                Some(value) => meta.insert(kept.into(), value.clone()),
                None => meta.remove(kept),
            };
        }
        if self.kind == "Pod" && object["spec"] != stored["spec"] {
            let generation = stored["metadata"]["generation"].as_i64().unwrap_or(0);
            metadata(object).insert("generation".into(), (generation + 1).into());
        }
        if self.kind == "Namespace" {
            object["spec"] = stored["spec"].clone();
        }
        if self.has_status {
            match stored.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    object.as_object_mut().expect("checked").remove("status");
                }
            }
        }
        Ok(())
    }

    /// An update through a subresource: `stored` with `part` taken from `given`, after the
    /// same checks as an update (kind, name, namespace, uid).
    pub fn prepare_part_update(
        &self,
        part: Part,
        given: &Value,
        stored: &Value,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.prepare_update(&mut given.clone(), stored, namespace, name)?;
        let mut object = stored.clone();
        metadata(&mut object).remove("resourceVersion");
        match part {
            Part::Status => {
                object["status"] = given.get("status").cloned().unwrap_or_else(|| json!({}))
            }
            Part::Finalizers => {
                object["spec"]["finalizers"] = match &given["spec"]["finalizers"] {
                    Value::Array(finalizers) => Value::Array(finalizers.clone()),
                    _ => json!([]),
                }
            }
        }
        Ok(object)
    }

    /// `stored` (a pod) assigned to `node`, as kube-apiserver's binding storage assigns it.
    pub fn bind(&self, stored: &Value, node: &str, now: &str) -> Result<Value, ApiError> {
        let name = stored["metadata"]["name"].as_str().unwrap_or_default();
        let conflict = |why: String| ApiError::conflict("pods/binding", name, &why);
        if !stored["metadata"]["deletionTimestamp"].is_null() {
            return Err(conflict(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            )));
        }
        match stored["spec"]["nodeName"].as_str() {
            Some(bound) if !bound.is_empty() => {
                return Err(conflict(format!(
                    "pod {name} is already assigned to node \"{bound}\""
                )))
            }
            _ => {}
        }
        let mut pod = stored.clone();
        metadata(&mut pod).remove("resourceVersion");
        pod["spec"]["nodeName"] = node.into();
        set_condition(
            &mut pod["status"],
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                "lastTransitionTime": now}),
        );
        Ok(pod)
    }

    /// What deleting `stored` does.
    pub fn deletion(&self, stored: &Value, now: &str) -> Deletion {
        let finalizers = stored["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if self.kind != "Namespace" || !finalizers {
            return Deletion::Remove;
        }
        let mut terminating = stored.clone();
        let meta = metadata(&mut terminating);
        meta.remove("resourceVersion");
        meta.entry("deletionTimestamp")
            .or_insert_with(|| now.into());
        terminating["status"]["phase"] = "Terminating".into();
        Deletion::Finalize(terminating)
    }

    fn check_type(&self, object: &mut Value) -> Result<(), ApiError> {
        let Some(fields) = object.as_object_mut() else {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        };
        let api_version = fields.get("apiVersion").and_then(Value::as_str);
        let kind = fields.get("kind").and_then(Value::as_str);
        if api_version.is_some_and(|v| v != "v1") || kind.is_some_and(|k| k != self.kind) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version (v1) or kind {} is not {}",
                api_version.unwrap_or(""),
                kind.unwrap_or(""),
                self.kind
            )));
        }
        fields.insert("apiVersion".into(), "v1".into());
        fields.insert("kind".into(), self.kind.into());
        if !fields.get("metadata").is_some_and(Value::is_object) {
            fields.insert("metadata".into(), json!({}));
        }
        Ok(())
    }

    fn check_namespace(
        &self,
        metadata: &mut Map<String, Value>,
        namespace: Option<&str>,
    ) -> Result<(), ApiError> {
        let given = metadata_text(metadata, "namespace");
        match namespace.filter(|_| self.namespaced) {
            Some(namespace) if !given.is_empty() && given != namespace => {
                Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            Some(namespace) => {
                metadata.insert("namespace".into(), namespace.into());
                Ok(())
            }
            None => {
                metadata.remove("namespace");
                Ok(())
            }
        }
    }
}

fn metadata(object: &mut Value) -> &mut Map<String, Value> {
    object["metadata"]
        .as_object_mut()
        .expect("check_type made metadata an object")
}

fn metadata_text(metadata: &Map<String, Value>, field: &str) -> String {
    metadata
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The defaults of core/v1's SetDefaults_PodSpec and SetDefaults_Container that every pod
/// gets, so `kubectl get` shows what it shows on kube-apiserver.
fn default_pod_spec(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    for (field, default) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
    ] {
        spec.entry(field).or_insert(default);
    }
    let containers = spec.get_mut("containers").and_then(Value::as_array_mut);
    for container in containers.into_iter().flatten() {
        let Some(container) = container.as_object_mut() else {
            continue;
        };
        let image = container.get("image").and_then(Value::as_str).unwrap_or("");
        // An untagged or `:latest` image is pulled every time; a pinned one when missing.
        let tag = image.rsplit('/').next().unwrap_or("").split_once(':');
        let pull = if image.contains('@') || tag.is_some_and(|(_, t)| t != "latest") {
            "IfNotPresent"
        } else {
            "Always"
        };
        for (field, default) in [
            ("imagePullPolicy", json!(pull)),
            ("resources", json!({})),
            ("terminationMessagePath", json!("/dev/termination-log")),
            ("terminationMessagePolicy", json!("File")),
        ] {
            container.entry(field).or_insert(default);
        }
    }
}

/// A version 4 UUID, as kube-apiserver's uuid.NewUUID makes them.
fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// generateName's suffix: five characters of apimachinery's alphabet (no vowels, no 0/1/3).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-05T22:00:00Z";

    #[test]
    fn keys_are_where_kube_apiserver_keeps_them() {
        let nodes = resource("nodes").unwrap();
        assert_eq!(
            nodes.key("/registry", Some("x"), "n1"),
            "/registry/minions/n1"
        );
        let pods = resource("pods").unwrap();
        assert_eq!(
            pods.key("/registry", Some("ns"), "p"),
            "/registry/pods/ns/p"
        );
        assert_eq!(pods.list_prefix("/registry", None), "/registry/pods/");
    }

    #[test]
    fn creation_fills_what_the_apiserver_fills() {
        let namespaces = resource("namespaces").unwrap();
        let mut ns = json!({"metadata": {"name": "team", "resourceVersion": "5"}});
        namespaces.prepare_create(&mut ns, None, NOW).unwrap();
        assert_eq!(ns["kind"], "Namespace");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team"
        );
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(ns["metadata"]["creationTimestamp"], NOW);
        assert_eq!(ns["metadata"].get("resourceVersion"), None);
        let uid = ns["metadata"]["uid"].as_str().unwrap();
        assert_eq!((uid.len(), &uid[14..15]), (36, "4"));

        let pods = resource("pods").unwrap();
        let mut pod = json!({"metadata": {"generateName": "web-"},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}});
        pods.prepare_create(&mut pod, Some("ns"), NOW).unwrap();
        assert_eq!(
            pod["metadata"]["name"].as_str().unwrap().len(),
            "web-".len() + 5
        );
        assert_eq!(pod["metadata"]["namespace"], "ns");
        assert_eq!(pod["metadata"]["generation"], 1);
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["status"]["phase"], "Pending");

        let configmaps = resource("configmaps").unwrap();
        let mut elsewhere = json!({"metadata": {"name": "c", "namespace": "other"}});
        let refused = configmaps.prepare_create(&mut elsewhere, Some("ns"), NOW);
        assert_eq!(refused.unwrap_err().code, 400);
        let mut nameless = json!({"metadata": {}});
        let refused = configmaps.prepare_create(&mut nameless, Some("ns"), NOW);
        assert_eq!(refused.unwrap_err().code, 422);
    }

    #[test]
    fn updates_keep_identity_and_status() {
        let pods = resource("pods").unwrap();
        let stored = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": 1,
                "creationTimestamp": NOW},
            "spec": {"containers": [{"name": "c", "image": "a"}]},
            "status": {"phase": "Running"}});
        let mut changed = json!({"metadata": {"name": "p", "resourceVersion": "7"},
            "spec": {"containers": [{"name": "c", "image": "b"}]},
            "status": {"phase": "Failed"}});
        pods.prepare_update(&mut changed, &stored, Some("ns"), "p")
            .unwrap();
        assert_eq!(changed["metadata"]["uid"], "u1");
        assert_eq!(changed["metadata"]["generation"], 2);
        assert_eq!(changed["metadata"]["creationTimestamp"], NOW);
        assert_eq!(changed["status"]["phase"], "Running");
        let mut other = json!({"metadata": {"name": "p", "uid": "u2"}});
        let refused = pods.prepare_update(&mut other, &stored, Some("ns"), "p");
        assert_eq!(refused.unwrap_err().code, 409);
    }

    #[test]
    fn namespaces_with_finalizers_terminate() {
        let namespaces = resource("namespaces").unwrap();
        let stored = json!({"metadata": {"name": "team"}, "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}});
        let Deletion::Finalize(terminating) = namespaces.deletion(&stored, NOW) else {
            panic!("a namespace with finalizers is kept");
        };
        assert_eq!(terminating["status"]["phase"], "Terminating");
        assert_eq!(terminating["metadata"]["deletionTimestamp"], NOW);
        let configmaps = resource("configmaps").unwrap();
        assert!(matches!(
            configmaps.deletion(&stored, NOW),
            Deletion::Remove
        ));
    }
}
