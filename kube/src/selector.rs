//! `labelSelector` and `fieldSelector` as kube-apiserver parses them: comma-separated
//! requirements, all of which must hold. Labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k`, `!k`. Fields, with `=`, `==`, `!=`: `metadata.name` and
//! `metadata.namespace` (every kind), and the fields each kind adds (`spec.nodeName` and
//! `status.phase` for pods, `involvedObject.*` for events, …).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    test: Test,
}

impl Requirement {
    /// `value` is the label's or field's value, `None` when absent.
    fn holds(&self, value: Option<&str>) -> bool {
        match (&self.test, value) {
            (Test::In(values), Some(v)) => values.iter().any(|x| x == v),
            (Test::NotIn(values), Some(v)) => !values.iter().any(|x| x == v),
            (Test::NotIn(_), None) | (Test::Exists, Some(_)) | (Test::NotExists, None) => true,
            _ => false,
        }
    }
}

/// Splits at the commas outside parentheses.
fn top_level_terms(selector: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn equality(term: &str) -> Option<Requirement> {
    let (key, test, value) = if let Some((k, v)) = term.split_once("!=") {
        (k, false, v)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, true, v)
    } else {
        let (k, v) = term.split_once('=')?;
        (k, true, v)
    };
    let values = vec![value.trim().to_string()];
    Some(Requirement {
        key: key.trim().to_string(),
        test: if test {
            Test::In(values)
        } else {
            Test::NotIn(values)
        },
    })
}

fn set_based(term: &str) -> Option<Requirement> {
    let (head, rest) = term.split_once('(')?;
    let values = rest.strip_suffix(')')?;
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
    let mut words = head.split_whitespace();
    let (key, operator) = (words.next()?, words.next()?);
    let test = match operator {
        "in" => Test::In(values),
        "notin" => Test::NotIn(values),
        _ => return None,
    };
    (words.next().is_none()).then(|| Requirement {
        key: key.to_string(),
        test,
    })
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for term in top_level_terms(selector) {
            let requirement = if term.contains('(') {
                set_based(term)
            } else if term.contains('=') {
                equality(term)
            } else if let Some(key) = term.strip_prefix('!') {
                Some(Requirement {
                    key: key.trim().to_string(),
                    test: Test::NotExists,
                })
            } else {
                Some(Requirement {
                    key: term.to_string(),
                    test: Test::Exists,
                })
            };
            match requirement {
                Some(r) if valid_key(&r.key) => requirements.push(r),
                _ => return Err(format!("unable to parse requirement: {term:?}")),
            }
        }
        Ok(LabelSelector(requirements))
    }

    /// A metav1.LabelSelector (`matchLabels`, `matchExpressions`), as workloads carry it.
    pub fn from_api(selector: &Value) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for (key, value) in selector["matchLabels"].as_object().into_iter().flatten() {
            let value = value.as_str().ok_or("matchLabels values are strings")?;
            requirements.push(Requirement {
                key: key.clone(),
                test: Test::In(vec![value.to_string()]),
            });
        }
        for expression in selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let key = expression["key"].as_str().unwrap_or_default().to_string();
            let values: Vec<String> = expression["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let test = match expression["operator"].as_str() {
                Some("In") if !values.is_empty() => Test::In(values),
                Some("NotIn") if !values.is_empty() => Test::NotIn(values),
                Some("Exists") if values.is_empty() => Test::Exists,
                Some("DoesNotExist") if values.is_empty() => Test::NotExists,
                other => {
                    return Err(format!(
                        "{other:?} is not a valid label selector operator with values {values:?}"
                    ))
                }
            };
            if !valid_key(&key) {
                return Err(format!("{key:?} is not a valid label key"));
            }
            requirements.push(Requirement { key, test });
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector(requirements))
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The selector in labelSelector's syntax, as a Scale's `status.selector` gives it.
    pub fn to_query(&self) -> String {
        let terms: Vec<String> = self
            .0
            .iter()
            .map(|r| match &r.test {
                Test::In(values) if values.len() == 1 => format!("{}={}", r.key, values[0]),
                Test::NotIn(values) if values.len() == 1 => format!("{}!={}", r.key, values[0]),
                Test::In(values) => format!("{} in ({})", r.key, values.join(",")),
                Test::NotIn(values) => format!("{} notin ({})", r.key, values.join(",")),
                Test::Exists => r.key.clone(),
                Test::NotExists => format!("!{}", r.key),
            })
            .collect();
        terms.join(",")
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0
            .iter()
            .all(|r| r.holds(labels.get(&r.key).and_then(Value::as_str)))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<Requirement>);

/// The fields kube-apiserver selects on for `kind` besides `metadata.name` and
/// `metadata.namespace` (each kind's GetAttrs), and each one's value when the object lacks it.
fn selectable_fields(kind: &str) -> &'static [(&'static str, &'static str)] {
    match kind {
        "Pod" => &[
            ("spec.nodeName", ""),
            ("spec.restartPolicy", ""),
            ("spec.schedulerName", ""),
            ("spec.serviceAccountName", ""),
            ("spec.hostNetwork", "false"),
            ("status.phase", ""),
            ("status.podIP", ""),
            ("status.nominatedNodeName", ""),
        ],
        "Node" => &[("spec.unschedulable", "false")],
        "Namespace" => &[("status.phase", "")],
        "Secret" => &[("type", "")],
        "ReplicaSet" => &[("status.replicas", "0")],
        "Event" => &[
            ("involvedObject.kind", ""),
            ("involvedObject.namespace", ""),
            ("involvedObject.name", ""),
            ("involvedObject.uid", ""),
            ("involvedObject.apiVersion", ""),
            ("involvedObject.resourceVersion", ""),
            ("involvedObject.fieldPath", ""),
            ("reason", ""),
            ("reportingComponent", ""),
            ("source", ""),
            ("type", ""),
        ],
        _ => &[],
    }
}

impl FieldSelector {
    /// A selector on objects of `kind`: `metadata.name`, `metadata.namespace`, and the fields
    /// kube-apiserver lets that kind be selected by (`spec.nodeName` for pods, …).
    pub fn parse(selector: &str, kind: &str) -> Result<FieldSelector, String> {
        let mut requirements = Vec::new();
        for term in top_level_terms(selector) {
            let requirement =
                equality(term).ok_or_else(|| format!("invalid selector: {term:?}"))?;
            let known = matches!(
                requirement.key.as_str(),
                "metadata.name" | "metadata.namespace"
            ) || selectable_fields(kind)
                .iter()
                .any(|(field, _)| *field == requirement.key);
            if !known {
                return Err(format!("field label not supported: {}", requirement.key));
            }
            requirements.push(requirement);
        }
        Ok(FieldSelector(requirements))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let kind = object["kind"].as_str().unwrap_or_default();
        self.0.iter().all(|r| {
            let mut value = object;
            for step in r.key.split('.') {
                value = &value[step];
            }
            // An absent field has its zero value, as in kube-apiserver's field sets.
            let absent = selectable_fields(kind)
                .iter()
                .find(|(field, _)| *field == r.key)
                .map_or("", |(_, zero)| zero);
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Bool(flag) => flag.to_string(),
                Value::Number(number) => number.to_string(),
                _ => absent.to_string(),
            };
            r.holds(Some(&text))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selectors_match_as_kubernetes_does() {
        let object = labelled(json!({"app": "web", "tier": "front"}));
        let matches = |s: &str| LabelSelector::parse(s).unwrap().matches(&object);
        assert!(matches(""));
        assert!(matches("app=web"));
        assert!(matches("app==web,tier"));
        assert!(!matches("app!=web"));
        assert!(matches("app in (db, web),!missing"));
        assert!(!matches("tier notin (front)"));
        assert!(matches("missing notin (x)"));
        assert!(!matches("missing"));
        assert!(!matches("app=web,tier=back"));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn workload_selectors_read_match_labels_and_expressions() {
        let selector = LabelSelector::from_api(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"}]}))
        .unwrap();
        assert_eq!(selector.to_query(), "app=web,!canary,tier in (front,edge)");
        assert!(selector.matches(&labelled(json!({"app": "web", "tier": "edge"}))));
        assert!(!selector.matches(&labelled(json!({"app": "web", "tier": "back"}))));
        assert_eq!(
            LabelSelector::parse(&selector.to_query()).unwrap(),
            selector
        );
        let wrong =
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]});
        assert!(LabelSelector::from_api(&wrong).is_err());
        assert!(LabelSelector::from_api(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn field_selectors_know_name_namespace_and_each_kinds_fields() {
        let object = labelled(json!({}));
        let matches = |s: &str| {
            FieldSelector::parse(s, "ConfigMap")
                .unwrap()
                .matches(&object)
        };
        assert!(matches("metadata.name=a"));
        assert!(matches("metadata.name==a,metadata.namespace=ns"));
        assert!(!matches("metadata.namespace!=ns"));
        assert_eq!(
            FieldSelector::parse("spec.nodeName=x", "ConfigMap").unwrap_err(),
            "field label not supported: spec.nodeName"
        );
        // What kubelets and kube-scheduler select pods by.
        let pod = json!({"kind": "Pod", "metadata": {"name": "p"},
            "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}});
        let pod_matches = |s: &str| FieldSelector::parse(s, "Pod").unwrap().matches(&pod);
        assert!(pod_matches("spec.nodeName=node-1"));
        assert!(!pod_matches("spec.nodeName=node-2"));
        assert!(pod_matches("status.phase!=Succeeded,status.phase!=Failed"));
        assert!(pod_matches("spec.hostNetwork=false"));
        let unbound = json!({"kind": "Pod", "metadata": {"name": "q"}, "spec": {}});
        assert!(FieldSelector::parse("spec.nodeName=", "Pod")
            .unwrap()
            .matches(&unbound));
    }
}
