//! Kubernetes' types: the descriptors of the vendored .proto files (see build.rs), the message
//! for an apiVersion/kind, and what the Go types say that the protos cannot (`json-hints.txt`).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, FieldDescriptor, MessageDescriptor};

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/k8s.fds"));
/// The Kubernetes release whose types `proto/k8s.io` holds.
pub const KUBERNETES_TYPES: &str = include_str!("../proto/k8s.io/VERSION");

pub(crate) fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET).expect("build.rs wrote a valid descriptor set")
    })
}

/// How a field's JSON differs from the default (scalars omitted when zero, structs always shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    /// An embedded Go struct: its fields appear in the parent object.
    Inline,
    /// A scalar, list or map without `omitempty`: shown even when zero (`restartCount: 0`,
    /// `ready: false`) or absent (`null`).
    Always,
    /// A struct with `omitzero`: left out when zero.
    OmitZero,
}

/// What proto/jsonhints found about each exceptional field, by `<message full name>.<field name>`.
struct Hints {
    json: HashMap<&'static str, Hint>,
    /// Go pointers: the only scalars and structs gogo-protobuf leaves out when unset.
    pointers: HashSet<&'static str>,
}

fn hints() -> &'static Hints {
    static HINTS: OnceLock<Hints> = OnceLock::new();
    HINTS.get_or_init(|| {
        let mut hints = Hints {
            json: HashMap::new(),
            pointers: HashSet::new(),
        };
        for line in include_str!("../proto/k8s.io/json-hints.txt").lines() {
            let Some((field, hint)) = line.split_once(' ') else {
                continue;
            };
            let hint = match hint {
                "inline" => Hint::Inline,
                "always" => Hint::Always,
                "omitzero" => Hint::OmitZero,
                "pointer" => {
                    hints.pointers.insert(field);
                    continue;
                }
                _ => continue,
            };
            hints.json.insert(field, hint);
        }
        hints
    })
}

fn field_key(field: &FieldDescriptor) -> String {
    format!("{}.{}", field.parent_message().full_name(), field.name())
}

pub(crate) fn json_hint(field: &FieldDescriptor) -> Option<Hint> {
    hints().json.get(field_key(field).as_str()).copied()
}

/// A Go pointer: written to protobuf only when set, and then shown in JSON even when zero.
pub(crate) fn is_pointer(field: &FieldDescriptor) -> bool {
    hints().pointers.contains(field_key(field).as_str())
}

/// Whether gogo-protobuf writes the field even when it is zero (every singular field that is
/// not a Go pointer; lists and maps are written entry by entry).
pub(crate) fn always_written(field: &FieldDescriptor) -> bool {
    !field.is_list() && !field.is_map() && !is_pointer(field)
}

pub(crate) fn message_type(full_name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is in the vendored protos"))
}

/// An object's apiVersion and kind, from the envelope alone (cheap: `raw` is not decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMeta {
    pub api_version: String,
    pub kind: String,
}

/// The message type for an apiVersion/kind: built-in groups live in `k8s.io.api.<group>.<version>`
/// under the group's first label, the two types of the extension apiservers in their own trees.
pub(crate) fn typed_message(type_meta: &TypeMeta) -> Option<MessageDescriptor> {
    let (group, version) = type_meta
        .api_version
        .rsplit_once('/')
        .unwrap_or(("", &type_meta.api_version));
    let package = match group {
        "" => "core",
        "internal.apiserver.k8s.io" => "apiserverinternal",
        // Built-in groups are bare (`apps`) or end in .k8s.io; anything else is someone's API
        // group, whose first label may well collide with a built-in one (`apps.example.com`).
        group if !group.contains('.') || group.ends_with(".k8s.io") => {
            group.split('.').next().unwrap_or(group)
        }
        _ => return None,
    };
    let kind = &type_meta.kind;
    [
        format!("k8s.io.api.{package}.{version}.{kind}"),
        format!("k8s.io.apiextensions_apiserver.pkg.apis.{package}.{version}.{kind}"),
        format!("k8s.io.kube_aggregator.pkg.apis.{package}.{version}.{kind}"),
    ]
    .iter()
    .find_map(|name| pool().get_message_by_name(name))
}
