//! The core/v1 resources the shim serves, where kube-apiserver keeps them, and what its
//! registry strategies do to an object on create, update and delete (uid, timestamps,
//! generation, status kept from the stored object, a namespace's finalizer and phase), so an
//! object written here is one kube-apiserver could have written.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::status::ApiError;
use oxcd_kube::kubelet_reports::set_condition;

#[derive(Debug)]
pub struct Resource {
    /// The API group (`apps`); core/v1's is empty.
    pub group: &'static str,
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
    /// `…/scale` reads and writes `spec.replicas` as an autoscaling/v1 Scale.
    pub has_scale: bool,
    /// Spec changes count in `metadata.generation`, so a controller can report which spec it
    /// has acted on (`status.observedGeneration`).
    counts_generation: bool,
}

/// Every kind served is at version v1 of its group.
pub const VERSION: &str = "v1";

const fn namespaced(
    group: &'static str,
    name: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
    storage: &'static str,
) -> Resource {
    Resource {
        group,
        name,
        singular,
        kind,
        short_names,
        namespaced: true,
        storage,
        has_status: false,
        has_scale: false,
        counts_generation: false,
    }
}

/// A workload (deployments, replicasets): status, scale and generation.
const fn workload(
    name: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
) -> Resource {
    Resource {
        has_status: true,
        has_scale: true,
        counts_generation: true,
        ..namespaced("apps", name, singular, kind, short_names, name)
    }
}

pub const RESOURCES: &[Resource] = &[
    namespaced(
        "",
        "configmaps",
        "configmap",
        "ConfigMap",
        &["cm"],
        "configmaps",
    ),
    // kube-apiserver keeps endpoints beside their services.
    namespaced(
        "",
        "endpoints",
        "endpoints",
        "Endpoints",
        &["ep"],
        "services/endpoints",
    ),
    namespaced("", "events", "event", "Event", &["ev"], "events"),
    Resource {
        namespaced: false,
        has_status: true,
        ..namespaced(
            "",
            "namespaces",
            "namespace",
            "Namespace",
            &["ns"],
            "namespaces",
        )
    },
    Resource {
        namespaced: false,
        has_status: true,
        ..namespaced("", "nodes", "node", "Node", &["no"], "minions")
    },
    Resource {
        has_status: true,
        counts_generation: true,
        ..namespaced("", "pods", "pod", "Pod", &["po"], "pods")
    },
    namespaced("", "secrets", "secret", "Secret", &[], "secrets"),
    Resource {
        has_status: true,
        ..namespaced(
            "",
            "services",
            "service",
            "Service",
            &["svc"],
            "services/specs",
        )
    },
    workload("deployments", "deployment", "Deployment", &["deploy"]),
    workload("replicasets", "replicaset", "ReplicaSet", &["rs"]),
    namespaced(
        "coordination.k8s.io",
        "leases",
        "lease",
        "Lease",
        &[],
        "leases",
    ),
    // A service's cluster IP, held by the object named after it (kube-apiserver's allocator
    // since MultiCIDRServiceAllocator, 1.33).
    Resource {
        namespaced: false,
        ..namespaced(
            "networking.k8s.io",
            "ipaddresses",
            "ipaddress",
            "IPAddress",
            &["ip"],
            "ipaddresses",
        )
    },
];

/// The groups served under `/apis`, in discovery's order.
pub const GROUPS: &[&str] = &["apps", "coordination.k8s.io", "networking.k8s.io"];

pub fn resource(group: &str, name: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.name == name)
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
    /// `v1`, `apps/v1`: objects' apiVersion.
    pub fn api_version(&self) -> String {
        match self.group {
            "" => VERSION.to_string(),
            group => format!("{group}/{VERSION}"),
        }
    }

    /// The name messages give it: `pods`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        match self.group {
            "" => self.name.to_string(),
            group => format!("{}.{group}", self.name),
        }
    }

    /// Its collection's URL path in `namespace` (every namespace for `None`).
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let root = match self.group {
            "" => format!("/api/{VERSION}"),
            group => format!("/apis/{group}/{VERSION}"),
        };
        match namespace {
            Some(namespace) if self.namespaced => {
                format!("{root}/namespaces/{namespace}/{}", self.name)
            }
            _ => format!("{root}/{}", self.name),
        }
    }

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
        if self.counts_generation {
            meta.insert("generation".into(), 1.into());
        } else {
            meta.remove("generation");
        }
        match self.kind {
            "Pod" => object["status"] = json!({"phase": "Pending"}),
            "Namespace" => {
                let name = metadata_text(metadata(object), "name");
                let labels = metadata(object)
                    .entry("labels")
                    .or_insert_with(|| json!({}));
                labels["kubernetes.io/metadata.name"] = name.into();
                object["spec"] = json!({"finalizers": ["kubernetes"]});
                object["status"] = json!({"phase": "Active"});
            }
            "Deployment" | "ReplicaSet" => object["status"] = json!({}),
            "Service" => object["status"] = json!({"loadBalancer": {}}),
            _ => {}
        }
        self.default_and_validate(object)?;
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
        if self.kind == "Service" {
            // An update that leaves the cluster IP out keeps the allocated one (it is
            // immutable), as kube-apiserver's service storage fills it in.
            for allocated in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if object["spec"].get(allocated).is_none_or(Value::is_null) {
                    object["spec"][allocated] = stored["spec"][allocated].clone();
                }
            }
            if object["spec"]["clusterIP"] != stored["spec"]["clusterIP"] {
                return Err(ApiError::invalid(
                    &self.qualified_kind(),
                    name,
                    "spec.clusterIPs[0]: Invalid value: field is immutable",
                ));
            }
        }
        let workload = self.kind == "Deployment" || self.kind == "ReplicaSet";
        if workload && object["spec"]["selector"] != stored["spec"]["selector"] {
            return Err(ApiError::invalid(
                &self.qualified_kind(),
                name,
                "spec.selector: Invalid value: field is immutable",
            ));
        }
        self.default_and_validate(object)?;
        if self.counts_generation && object["spec"] != stored["spec"] {
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

    /// Whether `kubectl get all` lists it.
    pub fn in_category_all(&self) -> bool {
        matches!(self.kind, "Pod" | "Service" | "Deployment" | "ReplicaSet")
    }

    /// A workload's replicas as the autoscaling/v1 Scale its `scale` subresource shows.
    pub fn scale_of(&self, object: &Value) -> Value {
        let meta = &object["metadata"];
        let selector = crate::selector::LabelSelector::from_api(&object["spec"]["selector"])
            .map(|s| s.to_query())
            .unwrap_or_default();
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
                "creationTimestamp": meta["creationTimestamp"]},
            "spec": {"replicas": object["spec"]["replicas"]},
            "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
                "selector": selector},
        })
    }

    /// `stored` with the replicas `scale` asks for.
    pub fn rescaled(&self, stored: &Value, scale: &Value, name: &str) -> Result<Value, ApiError> {
        let replicas = &scale["spec"]["replicas"];
        match replicas.as_i64() {
            Some(n) if n >= 0 => {}
            _ => {
                return Err(ApiError::invalid(
                    "Scale.autoscaling",
                    name,
                    &format!(
                    "spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                ),
                ))
            }
        }
        let mut object = stored.clone();
        object["spec"]["replicas"] = replicas.clone();
        Ok(object)
    }

    /// `Pod`, `Deployment.apps`: the kind as validation errors name it.
    pub fn qualified_kind(&self) -> String {
        match self.group {
            "" => self.kind.to_string(),
            group => format!("{}.{group}", self.kind),
        }
    }

    /// kube-apiserver's defaulting (SetDefaults_*) and the validation the controllers rely
    /// on, for a created or updated object.
    fn default_and_validate(&self, object: &mut Value) -> Result<(), ApiError> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let invalid = |why: String| ApiError::invalid(&self.qualified_kind(), &name, &why);
        match self.kind {
            "Pod" => default_pod_spec(&mut object["spec"]),
            "Deployment" | "ReplicaSet" => {
                let spec = object_field(object, "spec");
                spec.entry("replicas").or_insert(1.into());
                if self.kind == "Deployment" {
                    let strategy = spec
                        .entry("strategy")
                        .or_insert_with(|| json!({"type": "RollingUpdate"}));
                    if strategy["type"].is_null() {
                        strategy["type"] = "RollingUpdate".into();
                    }
                    if strategy["type"] == "RollingUpdate" {
                        for bound in ["maxUnavailable", "maxSurge"] {
                            if strategy["rollingUpdate"][bound].is_null() {
                                strategy["rollingUpdate"][bound] = "25%".into();
                            }
                        }
                    }
                    spec.entry("revisionHistoryLimit").or_insert(10.into());
                    spec.entry("progressDeadlineSeconds").or_insert(600.into());
                }
                default_pod_spec(&mut object["spec"]["template"]["spec"]);
                let spec = &object["spec"];
                if !spec["selector"].is_object() {
                    return Err(invalid("spec.selector: Required value".into()));
                }
                let selector = crate::selector::LabelSelector::from_api(&spec["selector"])
                    .map_err(|e| invalid(format!("spec.selector: Invalid value: {e}")))?;
                let template = &spec["template"];
                if !selector.matches(template) || selector.is_empty() {
                    return Err(invalid(format!(
                        "spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`",
                        template["metadata"]["labels"]
                    )));
                }
            }
            "Endpoints" => {
                let subsets = object.get_mut("subsets").and_then(Value::as_array_mut);
                for subset in subsets.into_iter().flatten() {
                    default_protocols(subset.get_mut("ports"));
                }
            }
            "Secret" => {
                let fields = object.as_object_mut().expect("checked");
                fields.entry("type").or_insert("Opaque".into());
                // kube-apiserver folds stringData into data on write; it is never stored.
                if let Some(Value::Object(strings)) = fields.remove("stringData") {
                    let data = fields.entry("data").or_insert_with(|| json!({}));
                    for (key, text) in strings {
                        let text = text.as_str().unwrap_or_default();
                        data[key] = base64::engine::general_purpose::STANDARD
                            .encode(text)
                            .into();
                    }
                }
            }
            "Service" => {
                let spec = object_field(object, "spec");
                let kind = spec
                    .entry("type")
                    .or_insert("ClusterIP".into())
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if !matches!(kind.as_str(), "ClusterIP" | "ExternalName") {
                    return Err(invalid(format!(
                        "spec.type: Unsupported value: {kind:?}: supported values: \"ClusterIP\", \"ExternalName\" (oxcd-kube allocates no node ports)"
                    )));
                }
                spec.entry("sessionAffinity").or_insert("None".into());
                if kind == "ClusterIP" {
                    spec.entry("internalTrafficPolicy")
                        .or_insert("Cluster".into());
                }
                default_protocols(spec.get_mut("ports"));
                let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
                for port in ports.into_iter().flatten() {
                    if port["targetPort"].is_null() {
                        port["targetPort"] = port["port"].clone();
                    }
                }
                let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
                let has_ports = spec
                    .get("ports")
                    .and_then(Value::as_array)
                    .is_some_and(|ports| !ports.is_empty());
                if kind == "ClusterIP" && !headless && !has_ports {
                    return Err(invalid("spec.ports: Required value".into()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn check_type(&self, object: &mut Value) -> Result<(), ApiError> {
        let Some(fields) = object.as_object_mut() else {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        };
        let expected = self.api_version();
        let api_version = fields.get("apiVersion").and_then(Value::as_str);
        let kind = fields.get("kind").and_then(Value::as_str);
        if api_version.is_some_and(|v| v != expected) || kind.is_some_and(|k| k != self.kind) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({expected}) or kind {} is not {}",
                api_version.unwrap_or(""),
                kind.unwrap_or(""),
                self.kind
            )));
        }
        fields.insert("apiVersion".into(), expected.into());
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

/// `object[field]` as an object, made one if it is anything else.
fn object_field<'a>(object: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    if !object[field].is_object() {
        object[field] = json!({});
    }
    object[field].as_object_mut().expect("made an object")
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
    for list in ["initContainers", "containers"] {
        let containers = spec.get_mut(list).and_then(Value::as_array_mut);
        for container in containers.into_iter().flatten() {
            default_container(container);
        }
    }
    let volumes = spec.get_mut("volumes").and_then(Value::as_array_mut);
    for volume in volumes
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        // 0644, the mode files of these volumes get (SetDefaults_*VolumeSource).
        for source in ["secret", "configMap", "downwardAPI", "projected"] {
            if let Some(Value::Object(source)) = volume.get_mut(source) {
                source.entry("defaultMode").or_insert(420.into());
            }
        }
        if let Some(Value::Object(host_path)) = volume.get_mut("hostPath") {
            host_path.entry("type").or_insert("".into());
        }
        let sourced = volume.keys().any(|key| key != "name");
        if !sourced {
            volume.insert("emptyDir".into(), json!({}));
        }
    }
}

/// SetDefaults_Container and what it holds: ports, probes, field references.
fn default_container(container: &mut Value) {
    let Some(fields) = container.as_object_mut() else {
        return;
    };
    let image = fields.get("image").and_then(Value::as_str).unwrap_or("");
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
        fields.entry(field).or_insert(default);
    }
    default_protocols(fields.get_mut("ports"));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(Value::Object(probe)) = fields.get_mut(probe) else {
            continue;
        };
        for (field, default) in [
            ("timeoutSeconds", 1),
            ("periodSeconds", 10),
            ("successThreshold", 1),
            ("failureThreshold", 3),
        ] {
            probe.entry(field).or_insert(default.into());
        }
        if let Some(Value::Object(get)) = probe.get_mut("httpGet") {
            get.entry("path").or_insert("/".into());
            get.entry("scheme").or_insert("HTTP".into());
        }
    }
    let env = fields.get_mut("env").and_then(Value::as_array_mut);
    for variable in env.into_iter().flatten() {
        if let Some(Value::Object(field_ref)) = variable.pointer_mut("/valueFrom/fieldRef") {
            field_ref.entry("apiVersion").or_insert("v1".into());
        }
    }
}

/// Ports without a protocol are TCP (containers', endpoints', services').
fn default_protocols(ports: Option<&mut Value>) {
    let ports = ports.and_then(Value::as_array_mut);
    for port in ports.into_iter().flatten().filter_map(Value::as_object_mut) {
        port.entry("protocol").or_insert("TCP".into());
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
        let nodes = resource("", "nodes").unwrap();
        assert_eq!(
            nodes.key("/registry", Some("x"), "n1"),
            "/registry/minions/n1"
        );
        let pods = resource("", "pods").unwrap();
        assert_eq!(
            pods.key("/registry", Some("ns"), "p"),
            "/registry/pods/ns/p"
        );
        assert_eq!(pods.list_prefix("/registry", None), "/registry/pods/");
    }

    #[test]
    fn creation_fills_what_the_apiserver_fills() {
        let namespaces = resource("", "namespaces").unwrap();
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

        let pods = resource("", "pods").unwrap();
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

        let configmaps = resource("", "configmaps").unwrap();
        let mut elsewhere = json!({"metadata": {"name": "c", "namespace": "other"}});
        let refused = configmaps.prepare_create(&mut elsewhere, Some("ns"), NOW);
        assert_eq!(refused.unwrap_err().code, 400);
        let mut nameless = json!({"metadata": {}});
        let refused = configmaps.prepare_create(&mut nameless, Some("ns"), NOW);
        assert_eq!(refused.unwrap_err().code, 422);
    }

    #[test]
    fn updates_keep_identity_and_status() {
        let pods = resource("", "pods").unwrap();
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
    fn workloads_are_defaulted_validated_and_scaled() {
        let deployments = resource("apps", "deployments").unwrap();
        let mut web = json!({"metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx",
                        "ports": [{"containerPort": 80}]}]}}}});
        deployments
            .prepare_create(&mut web, Some("ns"), NOW)
            .unwrap();
        assert_eq!(web["apiVersion"], "apps/v1");
        assert_eq!(web["metadata"]["generation"], 1);
        assert_eq!(web["spec"]["replicas"], 1);
        assert_eq!(web["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let container = &web["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["ports"][0]["protocol"], "TCP");
        assert_eq!(container["imagePullPolicy"], "Always");

        let mut scaled = deployments
            .rescaled(&web, &json!({"spec": {"replicas": 4}}), "web")
            .unwrap();
        deployments
            .prepare_update(&mut scaled, &web, Some("ns"), "web")
            .unwrap();
        assert_eq!(scaled["metadata"]["generation"], 2, "a spec change counts");
        let scale = deployments.scale_of(&scaled);
        assert_eq!(
            (
                scale["spec"]["replicas"].as_i64(),
                scale["status"]["selector"].as_str()
            ),
            (Some(4), Some("app=web"))
        );
        let negative = deployments.rescaled(&web, &json!({"spec": {"replicas": -1}}), "web");
        assert_eq!(negative.unwrap_err().code, 422);

        let mut mismatched = json!({"metadata": {"name": "odd"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "b"}}, "spec": {}}}});
        let refused = deployments
            .prepare_create(&mut mismatched, Some("ns"), NOW)
            .unwrap_err();
        assert!(
            refused
                .message
                .starts_with("Deployment.apps \"odd\" is invalid: spec.template.metadata.labels"),
            "{}",
            refused.message
        );
        let mut moved = scaled.clone();
        moved["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        moved["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let refused = deployments
            .prepare_update(&mut moved, &web, Some("ns"), "web")
            .unwrap_err();
        assert!(refused
            .message
            .contains("spec.selector: Invalid value: field is immutable"));
    }

    #[test]
    fn secrets_and_services_get_kube_apiservers_defaults() {
        let secrets = resource("", "secrets").unwrap();
        let mut secret = json!({"metadata": {"name": "s"}, "data": {"a": "eA=="},
            "stringData": {"b": "y"}});
        secrets
            .prepare_create(&mut secret, Some("ns"), NOW)
            .unwrap();
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(secret["data"], json!({"a": "eA==", "b": "eQ=="}));
        assert_eq!(secret.get("stringData"), None);

        let services = resource("", "services").unwrap();
        let mut service = json!({"metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
        services
            .prepare_create(&mut service, Some("ns"), NOW)
            .unwrap();
        assert_eq!(service["spec"]["type"], "ClusterIP");
        assert_eq!(
            service["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(service["status"], json!({"loadBalancer": {}}));
        let mut node_port = json!({"metadata": {"name": "np"},
            "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let refused = services
            .prepare_create(&mut node_port, Some("ns"), NOW)
            .unwrap_err();
        assert_eq!(refused.code, 422);
        // An update that leaves the cluster IP out keeps it; one that changes it is refused.
        let mut stored = service.clone();
        stored["spec"]["clusterIP"] = "10.0.0.9".into();
        let mut update = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 81}]}});
        services
            .prepare_update(&mut update, &stored, Some("ns"), "web")
            .unwrap();
        assert_eq!(update["spec"]["clusterIP"], "10.0.0.9");
        let mut moved = json!({"metadata": {"name": "web"},
            "spec": {"clusterIP": "10.0.0.8", "ports": [{"port": 81}]}});
        assert_eq!(
            services
                .prepare_update(&mut moved, &stored, Some("ns"), "web")
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn namespaces_with_finalizers_terminate() {
        let namespaces = resource("", "namespaces").unwrap();
        let stored = json!({"metadata": {"name": "team"}, "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}});
        let Deletion::Finalize(terminating) = namespaces.deletion(&stored, NOW) else {
            panic!("a namespace with finalizers is kept");
        };
        assert_eq!(terminating["status"]["phase"], "Terminating");
        assert_eq!(terminating["metadata"]["deletionTimestamp"], NOW);
        let configmaps = resource("", "configmaps").unwrap();
        assert!(matches!(
            configmaps.deletion(&stored, NOW),
            Deletion::Remove
        ));
    }
}
