//! How `registry` prints: kubectl-style tables, kubectl's JSON and YAML, and the per-revision
//! change summaries of `history`.

use serde::Serialize;
use serde_json::Value;

use crate::failure::{CtlResult, ExitCode, Failure};

/// Left-aligned columns three spaces apart, headers in capitals, as kubectl prints.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("   ").trim_end().to_string() + "\n"
    };
    let mut text = line(headers.to_vec());
    for row in rows {
        text += &line(row.iter().map(String::as_str).collect());
    }
    text
}

/// The `-o` formats of `registry get`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// kubectl's `-o json` (four-space indent; keys sorted, as kubectl prints the unstructured maps
/// it decodes into) or `-o yaml`.
pub fn document(object: &Value, format: Format) -> CtlResult<String> {
    let failed = |e: &dyn std::fmt::Display| Failure::new(ExitCode::Error, e.to_string());
    match format {
        Format::Json => {
            let mut out = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            object
                .serialize(&mut serde_json::Serializer::with_formatter(
                    &mut out, formatter,
                ))
                .map_err(|e| failed(&e))?;
            Ok(String::from_utf8(out).expect("serde_json writes UTF-8") + "\n")
        }
        Format::Yaml => serde_norway::to_string(object).map_err(|e| failed(&e)),
    }
}

/// How many changed paths one history entry lists before summing up the rest.
const CHANGES_SHOWN: usize = 12;
/// Paths whose contents churn on every write and say nothing an operator reads: one line each.
const SUMMARISED: &[&str] = &["metadata.managedFields"];

/// What changed from `older` to `newer`, one line per changed leaf (`path: old → new`, `+path: new`,
/// `-path`), capped at a screenful.
pub fn changes(older: &Value, newer: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    diff("", older, newer, &mut lines);
    if lines.len() > CHANGES_SHOWN {
        let hidden = lines.len() - CHANGES_SHOWN + 1;
        lines.truncate(CHANGES_SHOWN - 1);
        lines.push(format!("… and {hidden} more"));
    }
    lines
}

fn diff(path: &str, older: &Value, newer: &Value, lines: &mut Vec<String>) {
    if older == newer {
        return;
    }
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (older, newer) {
        _ if SUMMARISED.contains(&path) => lines.push(format!("{path}: changed")),
        (Value::Object(old), Value::Object(new)) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                match (old.get(key), new.get(key)) {
                    (Some(o), Some(n)) => diff(&child(key), o, n, lines),
                    (None, Some(n)) => lines.push(format!("+{}: {}", child(key), brief(n))),
                    (Some(_), None) => lines.push(format!("-{}", child(key))),
                    (None, None) => unreachable!("key came from one of the maps"),
                }
            }
        }
        (Value::Array(old), Value::Array(new)) if old.len() == new.len() => {
            for (index, (o, n)) in old.iter().zip(new).enumerate() {
                diff(&format!("{path}[{index}]"), o, n, lines);
            }
        }
        _ => lines.push(format!("{path}: {} → {}", brief(older), brief(newer))),
    }
}

/// A value short enough for one line of a table.
fn brief(value: &Value) -> String {
    const LIMIT: usize = 40;
    let text = match value {
        Value::Array(items) => format!("[{} items]", items.len()),
        Value::Object(fields) => format!("{{{} fields}}", fields.len()),
        scalar => scalar.to_string(),
    };
    if text.chars().count() <= LIMIT {
        return text;
    }
    text.chars().take(LIMIT - 1).collect::<String>() + "…"
}

/// Byte counts as operators read them: exact below 10 KiB, then KiB/MiB/GiB with one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: &[&str] = &["KiB", "MiB", "GiB", "TiB"];
    if n < 10 * 1024 {
        return n.to_string();
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["pods".to_string(), "12".to_string()],
            vec!["nodes".into(), "3".into()],
        ];
        assert_eq!(
            table(&["RESOURCE", "OBJECTS"], &rows),
            "RESOURCE   OBJECTS\npods       12\nnodes      3\n"
        );
    }

    #[test]
    fn documents_look_like_kubectl_output() {
        let object = json!({"kind": "Pod", "apiVersion": "v1", "spec": {"containers": [{"image": "nginx"}]}});
        assert_eq!(
            document(&object, Format::Json).unwrap(),
            "{\n    \"apiVersion\": \"v1\",\n    \"kind\": \"Pod\",\n    \"spec\": {\n        \"containers\": [\n            {\n                \"image\": \"nginx\"\n            }\n        ]\n    }\n}\n"
        );
        assert_eq!(
            document(&object, Format::Yaml).unwrap(),
            "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - image: nginx\n"
        );
    }

    #[test]
    fn changes_list_changed_leaves() {
        let older = json!({"metadata": {"generation": 1, "managedFields": [1], "labels": {"a": "1"}},
            "spec": {"replicas": 2, "template": {"containers": [{"image": "nginx:1.27"}]}}});
        let newer = json!({"metadata": {"generation": 2, "managedFields": [2], "annotations": {"x": "y"}},
            "spec": {"replicas": 3, "template": {"containers": [{"image": "nginx:1.28"}, {"image": "sidecar"}]}}});
        assert_eq!(
            changes(&older, &newer),
            vec![
                "+metadata.annotations: {1 fields}",
                "metadata.generation: 1 → 2",
                "-metadata.labels",
                "metadata.managedFields: changed",
                "spec.replicas: 2 → 3",
                "spec.template.containers: [1 items] → [2 items]",
            ]
        );
        assert!(changes(&older, &older).is_empty());
        let many = Value::Object((0..30).map(|i| (i.to_string(), json!(i))).collect());
        let lines = changes(&json!({}), &many);
        assert_eq!(lines.len(), CHANGES_SHOWN);
        assert_eq!(lines.last().unwrap(), "… and 19 more");
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes(549), "549");
        assert_eq!(bytes(20 * 1024), "20.0KiB");
        assert_eq!(bytes(3 * 1024 * 1024 + 512 * 1024), "3.5MiB");
    }
}
