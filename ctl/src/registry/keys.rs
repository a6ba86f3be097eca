//! Where kube-apiserver keeps each resource under `/registry`, and how user-facing resource
//! names (`pods`, `po`, `deploy`, `widgets.example.com`) map to those key prefixes.

/// A resource's stored objects: every key starting with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The name operators know it by (`nodes`), which is not always the stored one (`minions`).
    pub name: String,
    /// Key prefix without the root, with a trailing slash: `minions/`, `services/specs/`.
    pub path: String,
    /// `None` for resources this table does not know: then `-n` decides.
    pub namespaced: Option<bool>,
}

/// Built-in resources whose names or storage paths operators would not guess, and the common
/// ones with short names. Storage paths come from kube-apiserver's storage factories, which kept
/// historical locations (`minions`, `services/specs`, `controllers`, `ingress`) when types moved.
const KNOWN: &[(&[&str], &str, bool)] = &[
    (&["pods", "pod", "po"], "pods", true),
    (&["nodes", "node", "no"], "minions", false),
    (&["services", "service", "svc"], "services/specs", true),
    (&["endpoints", "ep"], "services/endpoints", true),
    (&["namespaces", "namespace", "ns"], "namespaces", false),
    (&["configmaps", "configmap", "cm"], "configmaps", true),
    (&["secrets", "secret"], "secrets", true),
    (
        &["serviceaccounts", "serviceaccount", "sa"],
        "serviceaccounts",
        true,
    ),
    (&["events", "event", "ev"], "events", true),
    (
        &["persistentvolumes", "persistentvolume", "pv"],
        "persistentvolumes",
        false,
    ),
    (
        &["persistentvolumeclaims", "persistentvolumeclaim", "pvc"],
        "persistentvolumeclaims",
        true,
    ),
    (
        &["replicationcontrollers", "replicationcontroller", "rc"],
        "controllers",
        true,
    ),
    (
        &["resourcequotas", "resourcequota", "quota"],
        "resourcequotas",
        true,
    ),
    (
        &["limitranges", "limitrange", "limits"],
        "limitranges",
        true,
    ),
    (&["podtemplates", "podtemplate"], "podtemplates", true),
    (
        &["deployments", "deployment", "deploy"],
        "deployments",
        true,
    ),
    (&["replicasets", "replicaset", "rs"], "replicasets", true),
    (
        &["statefulsets", "statefulset", "sts"],
        "statefulsets",
        true,
    ),
    (&["daemonsets", "daemonset", "ds"], "daemonsets", true),
    (
        &["controllerrevisions", "controllerrevision"],
        "controllerrevisions",
        true,
    ),
    (&["jobs", "job"], "jobs", true),
    (&["cronjobs", "cronjob", "cj"], "cronjobs", true),
    (
        &["horizontalpodautoscalers", "horizontalpodautoscaler", "hpa"],
        "horizontalpodautoscalers",
        true,
    ),
    (
        &["poddisruptionbudgets", "poddisruptionbudget", "pdb"],
        "poddisruptionbudgets",
        true,
    ),
    (&["ingresses", "ingress", "ing"], "ingress", true),
    (&["ingressclasses", "ingressclass"], "ingressclasses", false),
    (
        &["networkpolicies", "networkpolicy", "netpol"],
        "networkpolicies",
        true,
    ),
    (&["endpointslices", "endpointslice"], "endpointslices", true),
    (&["leases", "lease"], "leases", true),
    (&["roles", "role"], "roles", true),
    (&["rolebindings", "rolebinding"], "rolebindings", true),
    (&["clusterroles", "clusterrole"], "clusterroles", false),
    (
        &["clusterrolebindings", "clusterrolebinding"],
        "clusterrolebindings",
        false,
    ),
    (
        &["storageclasses", "storageclass", "sc"],
        "storageclasses",
        false,
    ),
    (
        &["volumeattachments", "volumeattachment"],
        "volumeattachments",
        false,
    ),
    (&["csidrivers", "csidriver"], "csidrivers", false),
    (&["csinodes", "csinode"], "csinodes", false),
    (
        &["priorityclasses", "priorityclass", "pc"],
        "priorityclasses",
        false,
    ),
    (&["runtimeclasses", "runtimeclass"], "runtimeclasses", false),
    (
        &[
            "certificatesigningrequests",
            "certificatesigningrequest",
            "csr",
        ],
        "certificatesigningrequests",
        false,
    ),
    (
        &[
            "mutatingwebhookconfigurations",
            "mutatingwebhookconfiguration",
        ],
        "mutatingwebhookconfigurations",
        false,
    ),
    (
        &[
            "validatingwebhookconfigurations",
            "validatingwebhookconfiguration",
        ],
        "validatingwebhookconfigurations",
        false,
    ),
    (&["flowschemas", "flowschema"], "flowschemas", false),
    (
        &["prioritylevelconfigurations", "prioritylevelconfiguration"],
        "prioritylevelconfigurations",
        false,
    ),
    (
        &[
            "customresourcedefinitions",
            "customresourcedefinition",
            "crd",
            "crds",
        ],
        "apiextensions.k8s.io/customresourcedefinitions",
        false,
    ),
    (
        &["apiservices", "apiservice"],
        "apiregistration.k8s.io/apiservices",
        false,
    ),
    (&["masterleases"], "masterleases", false),
];

impl Resource {
    /// Resolves what the user typed. Unknown names are stored as `/registry/<name>/`, and
    /// kubectl's `<plural>.<group>` form of custom resources as `/registry/<group>/<plural>/`.
    pub fn named(typed: &str) -> Resource {
        let typed = typed.trim_matches('/');
        if let Some((aliases, path, namespaced)) = KNOWN
            .iter()
            .find(|(aliases, _, _)| aliases.contains(&typed))
        {
            return Resource {
                name: aliases[0].to_string(),
                path: format!("{path}/"),
                namespaced: Some(*namespaced),
            };
        }
        let path = match typed.split_once('.') {
            Some((plural, group)) if !typed.contains('/') => format!("{group}/{plural}/"),
            _ => format!("{typed}/"),
        };
        Resource {
            name: typed.to_string(),
            path,
            namespaced: None,
        }
    }

    /// The resource a stored path (as found by discovery) belongs to, named as operators know it.
    pub fn stored_at(path: &str) -> Resource {
        let bare = path.trim_end_matches('/');
        match KNOWN.iter().find(|(_, stored, _)| *stored == bare) {
            Some((aliases, _, namespaced)) => Resource {
                name: aliases[0].to_string(),
                path: path.to_string(),
                namespaced: Some(*namespaced),
            },
            None => {
                // Custom resources get kubectl's `<plural>.<group>` name, which `named` resolves.
                let name = match bare.split_once('/') {
                    Some((group, plural)) if group.contains('.') && !plural.contains('/') => {
                        format!("{plural}.{group}")
                    }
                    _ => bare.to_string(),
                };
                Resource {
                    name,
                    path: path.to_string(),
                    namespaced: None,
                }
            }
        }
    }

    /// The key of one object. Namespaced resources default to namespace `default`, as kubectl
    /// does; for resources of unknown scope, giving a namespace is what makes them namespaced.
    pub fn object_key(&self, root: &str, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (Some(false), _) | (None, None) => format!("{root}/{}{name}", self.path),
            (_, namespace) => format!(
                "{root}/{}{}/{name}",
                self.path,
                namespace.unwrap_or("default")
            ),
        }
    }

    /// The prefix that holds the objects `ls` lists: one namespace's, or all of them.
    pub fn list_prefix(&self, root: &str, namespace: Option<&str>) -> String {
        match namespace {
            Some(namespace) if self.namespaced != Some(false) => {
                format!("{root}/{}{namespace}/", self.path)
            }
            _ => format!("{root}/{}", self.path),
        }
    }
}

/// The resource path a key under `<root>/` belongs to, as it should be grouped when discovering
/// resources: `pods/`, `services/specs/`, `example.com/widgets/` (API groups contain a dot and
/// add a level), or the whole remainder for a key that sits directly under the root
/// (`masterleases` style singletons have no object level).
pub fn resource_path_of(root: &str, key: &[u8]) -> Option<String> {
    let rest = std::str::from_utf8(key)
        .ok()?
        .strip_prefix(root)?
        .strip_prefix('/')?;
    let mut segments = rest.split('/');
    let first = segments.next().filter(|s| !s.is_empty())?;
    let grouped = first.contains('.') || first == "services";
    match (segments.next(), grouped) {
        (None, _) => Some(first.to_string()),
        (Some(second), true) if rest.len() > first.len() + second.len() + 1 => {
            Some(format!("{first}/{second}/"))
        }
        _ => Some(format!("{first}/")),
    }
}

/// Namespace (empty for cluster-scoped objects) and name of a key within a resource's prefix.
pub fn namespace_and_name<'k>(resource_prefix: &str, key: &'k str) -> (&'k str, &'k str) {
    let rest = key.strip_prefix(resource_prefix).unwrap_or(key);
    rest.rsplit_once('/').unwrap_or(("", rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_to_kube_apiserver_storage_paths() {
        assert_eq!(Resource::named("po").path, "pods/");
        assert_eq!(Resource::named("nodes").path, "minions/");
        assert_eq!(Resource::named("svc").path, "services/specs/");
        assert_eq!(Resource::named("ep").path, "services/endpoints/");
        assert_eq!(Resource::named("deploy").path, "deployments/");
        assert_eq!(Resource::named("rc").path, "controllers/");
        assert_eq!(Resource::named("ns").namespaced, Some(false));
        assert_eq!(
            Resource::named("crd").path,
            "apiextensions.k8s.io/customresourcedefinitions/"
        );
        assert_eq!(Resource::named("svc").name, "services");
    }

    #[test]
    fn unknown_names_and_custom_resources_fall_back_to_their_own_prefix() {
        let widgets = Resource::named("widgets.example.com");
        assert_eq!(widgets.path, "example.com/widgets/");
        assert_eq!(widgets.namespaced, None);
        assert_eq!(Resource::named("gadgets").path, "gadgets/");
        assert_eq!(
            Resource::named("example.com/widgets").path,
            "example.com/widgets/"
        );
    }

    #[test]
    fn object_keys_follow_scope() {
        let root = "/registry";
        assert_eq!(
            Resource::named("pods").object_key(root, None, "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(
            Resource::named("pods").object_key(root, Some("kube-system"), "dns"),
            "/registry/pods/kube-system/dns"
        );
        assert_eq!(
            Resource::named("nodes").object_key(root, Some("ignored"), "n1"),
            "/registry/minions/n1"
        );
        let widgets = Resource::named("widgets.example.com");
        assert_eq!(
            widgets.object_key(root, None, "w"),
            "/registry/example.com/widgets/w"
        );
        assert_eq!(
            widgets.object_key(root, Some("ns1"), "w"),
            "/registry/example.com/widgets/ns1/w"
        );
        assert_eq!(
            Resource::named("pods").list_prefix(root, None),
            "/registry/pods/"
        );
        assert_eq!(
            Resource::named("pods").list_prefix(root, Some("a")),
            "/registry/pods/a/"
        );
        assert_eq!(
            Resource::named("nodes").list_prefix(root, Some("a")),
            "/registry/minions/"
        );
    }

    #[test]
    fn discovery_groups_keys_by_resource() {
        let path = |key: &str| resource_path_of("/registry", key.as_bytes());
        assert_eq!(path("/registry/pods/default/web"), Some("pods/".into()));
        assert_eq!(path("/registry/minions/node-1"), Some("minions/".into()));
        assert_eq!(
            path("/registry/services/specs/default/web"),
            Some("services/specs/".into())
        );
        assert_eq!(
            path("/registry/apiregistration.k8s.io/apiservices/v1.apps"),
            Some("apiregistration.k8s.io/apiservices/".into())
        );
        assert_eq!(
            path("/registry/example.com/widgets/default/w"),
            Some("example.com/widgets/".into())
        );
        assert_eq!(path("/registry/health"), Some("health".into()));
        assert_eq!(path("/registryx/pods/a"), None);
        assert_eq!(path("compact_rev_key"), None);
        assert_eq!(Resource::stored_at("minions/").name, "nodes");
        assert_eq!(
            Resource::stored_at("example.com/widgets/").name,
            "widgets.example.com"
        );
        let widgets = Resource::stored_at("example.com/widgets/");
        assert_eq!(Resource::named(&widgets.name).path, widgets.path);
    }

    #[test]
    fn keys_split_into_namespace_and_name() {
        assert_eq!(
            namespace_and_name("/registry/pods/", "/registry/pods/default/web"),
            ("default", "web")
        );
        assert_eq!(
            namespace_and_name("/registry/minions/", "/registry/minions/n1"),
            ("", "n1")
        );
    }
}
