//! Kubernetes objects from their protobuf envelope (runtime.Unknown) to the JSON kubectl shows.
//!
//! Decoding is dynamic, against descriptors of Kubernetes' own .proto files (see build.rs):
//! go-to-protobuf names every proto field after the Go field's JSON tag, so a message's field
//! names are already kubectl's keys, and one walk renders every kind. What the protos cannot
//! say (embedded structs, `omitempty`, `omitzero`) comes from `json-hints.txt`, generated from
//! the Go types. Only the handful of apimachinery types with custom JSON forms (times,
//! quantities, int-or-string, raw JSON) and apiextensions' schema unions need special cases.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat};
use prost_reflect::{DynamicMessage, FieldDescriptor, MapKey, ReflectMessage, Value as Field};
use serde_json::{Map, Value};

pub use crate::types::TypeMeta;
use crate::types::{is_pointer, json_hint, message_type, typed_message, Hint, KUBERNETES_TYPES};

/// A decoded object, and why it is incomplete when it is.
#[derive(Debug)]
pub struct Decoded {
    pub object: Value,
    pub note: Option<String>,
}

struct Unknown {
    type_meta: TypeMeta,
    raw: Vec<u8>,
}

fn unknown(envelope: &[u8]) -> Result<Unknown, String> {
    let message = DynamicMessage::decode(
        message_type("k8s.io.apimachinery.pkg.runtime.Unknown"),
        envelope,
    )
    .map_err(|e| format!("not a Kubernetes protobuf envelope: {e}"))?;
    let text = |m: &DynamicMessage, name: &str| {
        m.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let encoding = text(&message, "contentEncoding");
    if !encoding.is_empty() {
        return Err(format!("content encoding {encoding:?} is not supported"));
    }
    let type_meta = message.get_field_by_name("typeMeta");
    let type_meta = type_meta.as_deref().and_then(Field::as_message);
    let (api_version, kind) = type_meta
        .map(|t| (text(t, "apiVersion"), text(t, "kind")))
        .unwrap_or_default();
    let raw = message
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().map(|b| b.to_vec()))
        .unwrap_or_default();
    Ok(Unknown {
        type_meta: TypeMeta { api_version, kind },
        raw,
    })
}

pub fn type_meta(envelope: &[u8]) -> Result<TypeMeta, String> {
    unknown(envelope).map(|u| u.type_meta)
}

/// Decodes the message after the `k8s\0` magic as the named message, whatever its typeMeta
/// says: for request bodies of kinds that are never stored (`meta.v1.DeleteOptions`).
pub fn decode_as(envelope: &[u8], full_name: &str) -> Result<Value, String> {
    let Unknown { raw, .. } = unknown(envelope)?;
    let message = DynamicMessage::decode(message_type(full_name), raw.as_slice())
        .map_err(|e| format!("not a {full_name}: {e}"))?;
    Ok(message_json(&message))
}

/// Decodes the message after the `k8s\0` magic into the object kubectl would print.
pub fn decode(envelope: &[u8]) -> Result<Decoded, String> {
    let Unknown { type_meta, raw } = unknown(envelope)?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), type_meta.api_version.clone().into());
    object.insert("kind".into(), type_meta.kind.clone().into());
    let note = match typed_message(&type_meta) {
        Some(descriptor) => {
            let message = DynamicMessage::decode(descriptor, raw.as_slice()).map_err(|e| {
                format!(
                    "{} {} does not decode: {e}",
                    type_meta.api_version, type_meta.kind
                )
            })?;
            if let Value::Object(fields) = message_json(&message) {
                object.extend(fields);
            }
            None
        }
        None => {
            // Every top-level kind keeps its ObjectMeta in field 1, which is exactly the shape of
            // PartialObjectMetadata.
            let partial = DynamicMessage::decode(
                message_type("k8s.io.apimachinery.pkg.apis.meta.v1.PartialObjectMetadata"),
                raw.as_slice(),
            )
            .map_err(|e| {
                format!(
                    "{} {} has no readable metadata: {e}",
                    type_meta.api_version, type_meta.kind
                )
            })?;
            if let Value::Object(fields) = message_json(&partial) {
                object.extend(fields);
            }
            Some(format!(
                "{} {} is not among the Kubernetes {} types oxcdctl knows; only its metadata is shown",
                type_meta.api_version,
                type_meta.kind,
                KUBERNETES_TYPES.trim()
            ))
        }
    };
    Ok(Decoded {
        object: Value::Object(object),
        note,
    })
}

fn message_json(message: &DynamicMessage) -> Value {
    let descriptor = message.descriptor();
    let full_name = descriptor.full_name();
    let field = |name: &str| message.get_field_by_name(name).map(|v| v.into_owned());
    match full_name.strip_prefix("k8s.io.apimachinery.pkg.") {
        Some("apis.meta.v1.Time") => time(message, SecondsFormat::Secs),
        Some("apis.meta.v1.MicroTime") => time(message, SecondsFormat::Micros),
        Some("apis.meta.v1.Duration") => {
            go_duration(field("duration").and_then(|d| d.as_i64()).unwrap_or(0)).into()
        }
        Some("api.resource.Quantity") => field("string").map_or(Value::Null, |q| field_json(&q)),
        Some("util.intstr.IntOrString") => match field("type").and_then(|t| t.as_i64()) {
            Some(1) => field("strVal").map_or(Value::Null, |s| field_json(&s)),
            _ => field("intVal").map_or(Value::Null, |i| field_json(&i)),
        },
        Some("runtime.RawExtension") | Some("apis.meta.v1.FieldsV1") => raw_json(message),
        _ if full_name.starts_with("k8s.io.apiextensions_apiserver.") => schema_json(message),
        _ => fields_json(message, |field| field.name().to_string()),
    }
}

/// Present fields, by JSON name, shaped by the Go struct tags: gogo-protobuf writes every
/// non-pointer field, zero or not, where Go's JSON leaves out zero `omitempty` scalars.
fn fields_json(message: &DynamicMessage, json_name: impl Fn(&FieldDescriptor) -> String) -> Value {
    let descriptor = message.descriptor();
    let mut object = Map::new();
    for field in descriptor.fields() {
        let hint = json_hint(&field);
        if !message.has_field(&field) {
            // gogo-protobuf writes no empty lists or maps, and Go prints nil ones as null
            // unless they are `omitempty`.
            if hint == Some(Hint::Always) && (field.is_list() || field.is_map()) {
                object.insert(json_name(&field), Value::Null);
            }
            continue;
        }
        let value = message.get_field(&field);
        let rendered = field_json(&value);
        match hint {
            Some(Hint::Inline) => {
                if let Value::Object(inner) = rendered {
                    object.extend(inner);
                }
                continue;
            }
            Some(Hint::OmitZero)
                if matches!(&rendered, Value::Null)
                    || rendered.as_object().is_some_and(Map::is_empty) =>
            {
                continue
            }
            Some(Hint::Always) => {}
            // `omitempty` leaves out a zero value, but never a pointer that is set.
            _ if is_zero_scalar(&value) && !is_pointer(&field) => continue,
            _ => {}
        }
        object.insert(json_name(&field), rendered);
    }
    Value::Object(object)
}

fn is_zero_scalar(value: &Field) -> bool {
    match value {
        Field::Bool(b) => !b,
        Field::I32(n) | Field::EnumNumber(n) => *n == 0,
        Field::I64(n) => *n == 0,
        Field::U32(n) => *n == 0,
        Field::U64(n) => *n == 0,
        Field::F32(n) => *n == 0.0,
        Field::F64(n) => *n == 0.0,
        Field::String(s) => s.is_empty(),
        Field::Bytes(b) => b.is_empty(),
        Field::Message(_) | Field::List(_) | Field::Map(_) => false,
    }
}

fn field_json(value: &Field) -> Value {
    match value {
        Field::Bool(b) => (*b).into(),
        Field::I32(n) | Field::EnumNumber(n) => (*n).into(),
        Field::I64(n) => (*n).into(),
        Field::U32(n) => (*n).into(),
        Field::U64(n) => (*n).into(),
        Field::F32(n) => float_json(f64::from(*n)),
        Field::F64(n) => float_json(*n),
        Field::String(s) => s.clone().into(),
        // Go's encoding/json writes []byte (Secret data) as standard base64.
        Field::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b).into(),
        Field::Message(m) => message_json(m),
        Field::List(items) => items.iter().map(field_json).collect(),
        Field::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, value)| (map_key(key), field_json(value)))
                .collect(),
        ),
    }
}

/// Go prints whole floats without a fraction (`minimum: 1`, not `1.0`).
fn float_json(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        return (n as i64).into();
    }
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

/// metav1.Time as RFC 3339 in UTC; the zero time is `null`, as Go marshals it.
fn time(message: &DynamicMessage, precision: SecondsFormat) -> Value {
    let number = |name: &str| {
        message
            .get_field_by_name(name)
            .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)))
            .unwrap_or(0)
    };
    let (seconds, nanos) = (number("seconds"), number("nanos"));
    if seconds == 0 && nanos == 0 {
        return Value::Null;
    }
    DateTime::from_timestamp(seconds, u32::try_from(nanos).unwrap_or(0))
        .map_or(Value::Null, |t| t.to_rfc3339_opts(precision, true).into())
}

/// Raw JSON carried as bytes (RawExtension, FieldsV1, apiextensions' JSON): shown as the JSON
/// it is; bytes that are not JSON are shown as Go would show []byte.
fn raw_json(message: &DynamicMessage) -> Value {
    let raw = message.get_field_by_number(1);
    let bytes = raw
        .as_deref()
        .and_then(Field::as_bytes)
        .map(|b| b.to_vec())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_else(|_| field_json(&Field::Bytes(bytes.into())))
}

/// CustomResourceDefinition schemas: JSON Schema keywords that are not proto identifiers
/// (`$ref`, `x-kubernetes-*`), and the "schema or …" unions, which JSON writes as either arm.
fn schema_json(message: &DynamicMessage) -> Value {
    let present = |name: &str| {
        message
            .get_field_by_name(name)
            .filter(|_| message.has_field_by_name(name))
            .map(|v| v.into_owned())
    };
    let non_empty_list =
        |name: &str| present(name).filter(|v| v.as_list().is_some_and(|l| !l.is_empty()));
    match message.descriptor().name() {
        "JSON" => raw_json(message),
        "JSONSchemaPropsOrArray" => non_empty_list("jSONSchemas")
            .or_else(|| present("schema"))
            .map_or(Value::Null, |v| field_json(&v)),
        "JSONSchemaPropsOrStringArray" => non_empty_list("property")
            .or_else(|| present("schema"))
            .map_or(Value::Null, |v| field_json(&v)),
        "JSONSchemaPropsOrBool" => present("schema")
            .or_else(|| present("allows"))
            .map_or(Value::Null, |v| field_json(&v)),
        "JSONSchemaProps" => fields_json(message, |field| match field.name() {
            "ref" => "$ref".to_string(),
            "schema" => "$schema".to_string(),
            name if name.starts_with("xKubernetes") => {
                name.chars().fold(String::new(), |mut kebab, c| {
                    if c.is_ascii_uppercase() {
                        kebab.push('-');
                    }
                    kebab.push(c.to_ascii_lowercase());
                    kebab
                })
            }
            name => name.to_string(),
        }),
        _ => fields_json(message, |field| field.name().to_string()),
    }
}

/// Go's time.Duration.String(): `1h2m3.5s`, `2m0s`, `1.5ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    fn scaled(value: u64, scale: u64) -> String {
        let (whole, fraction) = (value / scale, value % scale);
        if fraction == 0 {
            return whole.to_string();
        }
        let digits = format!("{fraction:0width$}", width = scale.ilog10() as usize);
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    const SECOND: u64 = 1_000_000_000;
    if n == 0 {
        return "0s".into();
    }
    if n < SECOND {
        let (unit, scale) = match n {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", scaled(n, scale));
    }
    let (hours, minutes, seconds) = (
        n / (3600 * SECOND),
        n / (60 * SECOND) % 60,
        n % (60 * SECOND),
    );
    let mut text = sign.to_string();
    if hours > 0 {
        text += &format!("{hours}h");
    }
    if hours > 0 || minutes > 0 {
        text += &format!("{minutes}m");
    }
    text + &format!("{}s", scaled(seconds, SECOND))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::envelope::PROTOBUF_MAGIC;

    /// A value kube-apiserver wrote (tests/fixtures/registry).
    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        // Read at run time: the shared build cache may hold a binary built in another checkout.
        let dir = std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap())
            .join("../tests/fixtures/registry");
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    fn decoded(name: &str) -> Decoded {
        decode(
            fixture(name)
                .strip_prefix(PROTOBUF_MAGIC)
                .expect("fixture has the protobuf magic"),
        )
        .expect("fixture decodes")
    }

    /// Every protobuf fixture decodes to exactly what kubectl shows (the generator wrote
    /// kubectl's view next to each one).
    #[test]
    fn fixtures_decode_as_kubectl_shows_them() {
        for name in [
            "crd-widgets",
            "lease-node-1",
            "pod-web-1",
            "deployment-web-v1",
            "deployment-web-v2",
            "service-web",
            "node-node-1",
            "configmap-cluster-info",
            "namespace-default",
            "secret-db-creds",
        ] {
            let expected: Value =
                serde_json::from_slice(&fixture(&format!("{name}.kubectl.json"))).unwrap();
            let got = decoded(&format!("{name}.bin"));
            assert_eq!(got.note, None, "{name}");
            assert_eq!(
                got.object,
                expected,
                "{name}:\n{}",
                serde_json::to_string_pretty(&got.object).unwrap()
            );
        }
    }

    #[test]
    fn envelope_type_meta_is_read_without_decoding_the_object() {
        let pod = fixture("pod-web-1.bin");
        let meta = type_meta(&pod[PROTOBUF_MAGIC.len()..]).unwrap();
        assert_eq!(
            meta,
            TypeMeta {
                api_version: "v1".into(),
                kind: "Pod".into()
            }
        );
        assert!(type_meta(b"\xff\xff\xff").is_err());
    }

    /// A kind the vendored types lack still shows apiVersion, kind and metadata, with a note.
    #[test]
    fn unknown_kinds_fall_back_to_metadata() {
        let pod = fixture("pod-web-1.bin");
        let mut unknown = DynamicMessage::decode(
            message_type("k8s.io.apimachinery.pkg.runtime.Unknown"),
            &pod[PROTOBUF_MAGIC.len()..],
        )
        .unwrap();
        let mut type_meta =
            DynamicMessage::new(message_type("k8s.io.apimachinery.pkg.runtime.TypeMeta"));
        type_meta.set_field_by_name("apiVersion", Field::String("future.k8s.io/v9".into()));
        type_meta.set_field_by_name("kind", Field::String("Gizmo".into()));
        unknown.set_field_by_name("typeMeta", Field::Message(type_meta));
        let envelope = prost::Message::encode_to_vec(&unknown);
        let got = decode(&envelope).unwrap();
        assert_eq!(got.object["kind"], "Gizmo");
        assert_eq!(got.object["apiVersion"], "future.k8s.io/v9");
        assert_eq!(got.object["metadata"]["name"], "web-1");
        assert_eq!(got.object.get("spec"), None);
        assert!(got.note.unwrap().contains("only its metadata"));
        let lookalike = TypeMeta {
            api_version: "apps.example.com/v1".into(),
            kind: "Deployment".into(),
        };
        assert!(typed_message(&lookalike).is_none());
        let builtin = TypeMeta {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
        };
        assert_eq!(
            typed_message(&builtin).unwrap().full_name(),
            "k8s.io.api.apps.v1.Deployment"
        );
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
        assert_eq!(go_duration(3600 * 1_000_000_000), "1h0m0s");
        assert_eq!(go_duration(-2_500_000_000), "-2.5s");
    }
}
