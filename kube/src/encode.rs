//! Kubernetes objects from kubectl's JSON to the bytes kube-apiserver stores: `k8s\0` and a
//! runtime.Unknown whose `raw` is the object's protobuf, laid out as gogo-protobuf lays it out
//! (fields in number order, every field that is not a Go pointer written even when zero, map
//! entries sorted by key), so a value written here is the value kube-apiserver would write for
//! the same object.
//!
//! The walk is the mirror of `object`'s: JSON keys are proto field names, embedded structs are
//! filled from their parent's keys, and the apimachinery types with custom JSON forms (times,
//! quantities, int-or-string, raw JSON) are converted back.

use base64::Engine as _;
use chrono::DateTime;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use crate::envelope::PROTOBUF_MAGIC;
use crate::types::{always_written, json_hint, typed_message, Hint, TypeMeta};

/// The stored value of `object` (which must carry its apiVersion and kind).
pub fn encode(object: &Value) -> Result<Vec<u8>, String> {
    let text = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("the object has no {name}"))
    };
    let type_meta = TypeMeta {
        api_version: text("apiVersion")?,
        kind: text("kind")?,
    };
    let descriptor = typed_message(&type_meta).ok_or_else(|| {
        format!(
            "{} {} is not a Kubernetes type",
            type_meta.api_version, type_meta.kind
        )
    })?;
    let fields = object.as_object().expect("an object has an apiVersion");
    let mut raw = Vec::new();
    write_message(&descriptor, fields, &mut raw)?;

    // runtime.Unknown{typeMeta, raw, contentEncoding, contentType}: the last two are written
    // empty, as kube-apiserver's serializer writes them.
    let mut meta = Vec::new();
    prost::encoding::string::encode(1, &type_meta.api_version, &mut meta);
    prost::encoding::string::encode(2, &type_meta.kind, &mut meta);
    let mut value = PROTOBUF_MAGIC.to_vec();
    length_delimited(1, &meta, &mut value);
    length_delimited(2, &raw, &mut value);
    length_delimited(3, b"", &mut value);
    length_delimited(4, b"", &mut value);
    Ok(value)
}

fn length_delimited(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn write_message(
    descriptor: &MessageDescriptor,
    json: &Map<String, Value>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut fields: Vec<FieldDescriptor> = descriptor.fields().collect();
    fields.sort_by_key(FieldDescriptor::number);
    for field in fields {
        if json_hint(&field) == Some(Hint::Inline) {
            let Kind::Message(inner) = field.kind() else {
                return Err(format!(
                    "{} is inlined but not a message",
                    field.full_name()
                ));
            };
            let mut bytes = Vec::new();
            write_message(&inner, json, &mut bytes)?;
            length_delimited(field.number(), &bytes, out);
            continue;
        }
        let value = json.get(field.name()).filter(|v| !v.is_null());
        let at = |e: String| format!("{}: {e}", field.name());
        match value {
            None if always_written(&field) => {
                write_single(&field, &Value::Null, out).map_err(at)?
            }
            None => {}
            Some(Value::Array(items)) if field.is_list() => {
                for item in items {
                    write_single(&field, item, out).map_err(at)?;
                }
            }
            Some(Value::Object(entries)) if field.is_map() => {
                let Kind::Message(entry) = field.kind() else {
                    unreachable!("a map field's kind is its entry message")
                };
                let value_field = entry.map_entry_value_field();
                let mut keys: Vec<&String> = entries.keys().collect();
                keys.sort();
                for key in keys {
                    let mut bytes = Vec::new();
                    prost::encoding::string::encode(1, key, &mut bytes);
                    write_single(&value_field, &entries[key], &mut bytes).map_err(at)?;
                    length_delimited(field.number(), &bytes, out);
                }
            }
            Some(_) if field.is_list() || field.is_map() => {
                return Err(at("expected a list or map".into()))
            }
            Some(value) => write_single(&field, value, out).map_err(at)?,
        }
    }
    Ok(())
}

/// One occurrence of `field`; `Null` writes its zero value.
fn write_single(field: &FieldDescriptor, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let tag = field.number();
    let integer = || {
        value
            .as_i64()
            .or_else(|| {
                value
                    .as_f64()
                    .filter(|f| f.fract() == 0.0)
                    .map(|f| f as i64)
            })
            .or(value.is_null().then_some(0))
            .ok_or_else(|| format!("expected an integer, got {value}"))
    };
    let text = || match value {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        other => Err(format!("expected a string, got {other}")),
    };
    match field.kind() {
        Kind::Message(message) => {
            let mut bytes = Vec::new();
            write_typed(&message, value, &mut bytes)?;
            length_delimited(tag, &bytes, out);
        }
        Kind::String => prost::encoding::string::encode(tag, &text()?, out),
        Kind::Bytes => {
            // Go's encoding/json reads []byte from standard base64.
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text()?)
                .map_err(|e| format!("not base64: {e}"))?;
            length_delimited(tag, &bytes, out);
        }
        Kind::Bool => {
            let flag = value.as_bool().or(value.is_null().then_some(false));
            let flag = flag.ok_or_else(|| format!("expected a boolean, got {value}"))?;
            prost::encoding::bool::encode(tag, &flag, out);
        }
        Kind::Int32 => {
            let n = i32::try_from(integer()?).map_err(|e| e.to_string())?;
            prost::encoding::int32::encode(tag, &n, out);
        }
        Kind::Int64 => prost::encoding::int64::encode(tag, &integer()?, out),
        Kind::Double => {
            let n = value.as_f64().or(value.is_null().then_some(0.0));
            let n = n.ok_or_else(|| format!("expected a number, got {value}"))?;
            prost::encoding::double::encode(tag, &n, out);
        }
        other => return Err(format!("proto type {other:?} does not occur in Kubernetes")),
    }
    Ok(())
}

/// A message's body, for the apimachinery types whose JSON is not an object of their fields.
fn write_typed(
    descriptor: &MessageDescriptor,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match descriptor
        .full_name()
        .strip_prefix("k8s.io.apimachinery.pkg.")
    {
        Some("apis.meta.v1.Time") | Some("apis.meta.v1.MicroTime") => write_time(value, out),
        Some("api.resource.Quantity") => {
            let quantity = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                // The zero Quantity prints as "0".
                Value::Null => "0".to_string(),
                other => return Err(format!("expected a quantity, got {other}")),
            };
            prost::encoding::string::encode(1, &quantity, out);
            Ok(())
        }
        Some("util.intstr.IntOrString") => {
            // {type, intVal, strVal}, all three always written.
            let (kind, int, string) = match value {
                Value::String(s) => (1, 0, s.clone()),
                Value::Number(_) | Value::Null => {
                    let n = value.as_i64().unwrap_or(0);
                    (
                        0,
                        i32::try_from(n).map_err(|e| e.to_string())?,
                        String::new(),
                    )
                }
                other => return Err(format!("expected an int or a string, got {other}")),
            };
            prost::encoding::int64::encode(1, &kind, out);
            prost::encoding::int32::encode(2, &int, out);
            prost::encoding::string::encode(3, &string, out);
            Ok(())
        }
        Some("runtime.RawExtension") | Some("apis.meta.v1.FieldsV1") => {
            if !value.is_null() {
                let raw = serde_json::to_vec(value).expect("JSON values serialize");
                length_delimited(1, &raw, out);
            }
            Ok(())
        }
        _ => match value {
            Value::Object(fields) => write_message(descriptor, fields, out),
            Value::Null => write_message(descriptor, &Map::new(), out),
            other => Err(format!("expected an object, got {other}")),
        },
    }
}

/// The apimachinery types whose JSON is not an object of their fields.
const CUSTOM_JSON: &[&str] = &[
    "apis.meta.v1.Time",
    "apis.meta.v1.MicroTime",
    "api.resource.Quantity",
    "util.intstr.IntOrString",
    "runtime.RawExtension",
    "apis.meta.v1.FieldsV1",
];

fn has_custom_json(descriptor: &MessageDescriptor) -> bool {
    descriptor
        .full_name()
        .strip_prefix("k8s.io.apimachinery.pkg.")
        .is_some_and(|name| CUSTOM_JSON.contains(&name))
}

/// The fields of `object` its type does not declare, named as kube-apiserver's strict field
/// validation names them (`spec.replicass`, `spec.template.spec.containers[0].imagee`). Keys
/// starting with `$` (patch directives) are not fields. Empty for a kind it does not know.
pub fn unknown_fields(object: &Value) -> Vec<String> {
    let text = |name: &str| object[name].as_str().unwrap_or_default().to_string();
    let type_meta = TypeMeta {
        api_version: text("apiVersion"),
        kind: text("kind"),
    };
    let mut unknown = Vec::new();
    if let (Some(descriptor), Some(fields)) = (typed_message(&type_meta), object.as_object()) {
        let mut fields = fields.clone();
        fields.remove("apiVersion");
        fields.remove("kind");
        unknown_in(&descriptor, &fields, "", &mut unknown);
    }
    unknown
}

/// Every field a message's JSON object may hold: its own, and those of its inlined structs.
fn declared_fields(descriptor: &MessageDescriptor, declared: &mut Vec<FieldDescriptor>) {
    for field in descriptor.fields() {
        match (json_hint(&field), field.kind()) {
            (Some(Hint::Inline), Kind::Message(inner)) => declared_fields(&inner, declared),
            _ => declared.push(field),
        }
    }
}

fn unknown_in(
    descriptor: &MessageDescriptor,
    json: &Map<String, Value>,
    path: &str,
    unknown: &mut Vec<String>,
) {
    let mut declared = Vec::new();
    declared_fields(descriptor, &mut declared);
    for (key, value) in json {
        if key.starts_with('$') {
            continue;
        }
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let Some(field) = declared.iter().find(|f| f.name() == key) else {
            unknown.push(here);
            continue;
        };
        let inner = match field.kind() {
            Kind::Message(inner) if field.is_map() => inner.map_entry_value_field().kind(),
            kind => kind,
        };
        let Kind::Message(inner) = inner else {
            continue;
        };
        if has_custom_json(&inner) {
            continue;
        }
        match value {
            Value::Object(entries) if field.is_map() => {
                for (entry, value) in entries {
                    if let Value::Object(fields) = value {
                        unknown_in(&inner, fields, &format!("{here}.{entry}"), unknown);
                    }
                }
            }
            Value::Object(fields) => unknown_in(&inner, fields, &here, unknown),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if let Value::Object(fields) = item {
                        unknown_in(&inner, fields, &format!("{here}[{index}]"), unknown);
                    }
                }
            }
            _ => {}
        }
    }
}

/// metav1.Time and MicroTime: RFC 3339 in JSON, {seconds, nanos} on the wire; the zero time
/// (JSON null) is an empty message, as its Marshal writes it.
fn write_time(value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let text = match value {
        Value::Null => return Ok(()),
        Value::String(text) => text,
        other => return Err(format!("expected an RFC 3339 time, got {other}")),
    };
    let time = DateTime::parse_from_rfc3339(text).map_err(|e| format!("{text:?}: {e}"))?;
    prost::encoding::int64::encode(1, &time.timestamp(), out);
    let nanos = i32::try_from(time.timestamp_subsec_nanos()).expect("under a second");
    prost::encoding::int32::encode(2, &nanos, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::decode;
    use crate::object::tests::fixture;
    use serde_json::json;

    /// Values kube-apiserver wrote, decoded to kubectl's JSON and encoded again, come back byte
    /// for byte.
    #[test]
    fn undeclared_fields_are_named_by_their_path() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "creationTimestamp": null},
            "spec": {"replicass": 3, "template": {"spec": {"containers": [
                {"name": "web", "imagee": "nginx", "resources": {"limits": {"cpu": "1"}},
                    "ports": [{"containerPort": 80}]}]}},
                "strategy": {"rollingUpdate": {"maxSurge": "25%"}}},
            "$setElementOrder/x": []});
        assert_eq!(
            unknown_fields(&deployment),
            ["spec.replicass", "spec.template.spec.containers[0].imagee"]
        );
        let unknown_kind = json!({"apiVersion": "example.com/v1", "kind": "Widget", "x": 1});
        assert!(unknown_fields(&unknown_kind).is_empty());
    }

    #[test]
    fn stored_values_round_trip_byte_for_byte() {
        for name in [
            "pod-web-1",
            "node-node-1",
            "configmap-cluster-info",
            "namespace-default",
            "secret-db-creds",
            "service-web",
            "deployment-web-v1",
            "deployment-web-v2",
            "lease-node-1",
        ] {
            let stored = fixture(&format!("{name}.bin"));
            let object = decode(&stored[PROTOBUF_MAGIC.len()..]).unwrap().object;
            let expected: Value =
                serde_json::from_slice(&fixture(&format!("{name}.kubectl.json"))).unwrap();
            assert_eq!(object, expected, "{name} decodes as kubectl shows it");
            let encoded = encode(&object).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                encoded, stored,
                "{name} encodes to the bytes kube-apiserver wrote"
            );
        }
    }

    #[test]
    fn special_types_take_their_json_forms() {
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}},
                "ports": [{"containerPort": 80}],
                "livenessProbe": {"httpGet": {"port": "http", "path": "/"}},
                "readinessProbe": {"tcpSocket": {"port": 8080}}}]},
            "status": {"startTime": "2026-01-02T03:04:05.5Z"}
        });
        let stored = encode(&object).unwrap();
        let decoded = decode(&stored[PROTOBUF_MAGIC.len()..]).unwrap().object;
        let container = &decoded["spec"]["containers"][0];
        assert_eq!(
            container["resources"]["limits"],
            json!({"cpu": "500m", "memory": "1Gi"})
        );
        assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http");
        assert_eq!(container["readinessProbe"]["tcpSocket"]["port"], 8080);
        assert_eq!(
            decoded["metadata"]["creationTimestamp"],
            "2026-01-02T03:04:05Z"
        );
        // metav1.Time has second precision in JSON; the stored nanos survive in protobuf.
        assert_eq!(decoded["status"]["startTime"], "2026-01-02T03:04:05Z");
    }

    /// A Go pointer set to zero is on the wire and in JSON (kube-apiserver's bootstrap
    /// PriorityLevelConfigurations have `lendablePercent: 0`); an unset one is in neither.
    #[test]
    fn pointers_set_to_zero_survive_both_ways() {
        let level = |exempt: Value| {
            json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
                "metadata": {"name": "exempt", "creationTimestamp": "2026-01-02T03:04:05Z"},
                "spec": {"type": "Exempt", "exempt": exempt}, "status": {}})
        };
        for exempt in [
            json!({"lendablePercent": 0, "nominalConcurrencyShares": 0}),
            json!({}),
        ] {
            let stored = encode(&level(exempt.clone())).unwrap();
            let decoded = decode(&stored[PROTOBUF_MAGIC.len()..]).unwrap().object;
            assert_eq!(decoded["spec"]["exempt"], exempt);
        }
        let set = encode(&level(json!({"lendablePercent": 0}))).unwrap();
        let unset = encode(&level(json!({}))).unwrap();
        assert_eq!(
            set.len(),
            unset.len() + 2,
            "a zero varint field is two bytes"
        );
    }

    #[test]
    fn malformed_objects_are_refused_with_the_field() {
        let no_kind = json!({"apiVersion": "v1", "metadata": {"name": "x"}});
        assert_eq!(encode(&no_kind).unwrap_err(), "the object has no kind");
        let unknown = json!({"apiVersion": "example.com/v1", "kind": "Widget"});
        assert_eq!(
            encode(&unknown).unwrap_err(),
            "example.com/v1 Widget is not a Kubernetes type"
        );
        let wrong = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 5}});
        assert_eq!(
            encode(&wrong).unwrap_err(),
            "metadata: name: expected a string, got 5"
        );
    }
}
