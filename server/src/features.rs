//! etcd's `--feature-gates` (3.6/3.7): the same gates, defaults and error messages. Every gate is
//! either honoured or refused at start; a gate oxcd does not implement cannot be turned on
//! silently.

use std::collections::BTreeMap;

/// What oxcd does with a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Support {
    /// Implemented: the value changes what oxcd does.
    Honoured,
    /// The gate selects between two etcd implementations of the same behaviour; oxcd has one,
    /// which behaves as both do, so either value is fine.
    NoEffect(&'static str),
    /// Not implemented: only the default is accepted.
    Refused,
}

struct Gate {
    name: &'static str,
    default: bool,
    /// ALPHA or BETA, as etcd's help prints it.
    stage: &'static str,
    support: Support,
}

/// etcd 3.7's gates (server/features/etcd_features.go), in etcd's order.
const GATES: [Gate; 11] = [
    Gate {
        name: "AllAlpha",
        default: false,
        stage: "ALPHA",
        support: Support::Honoured,
    },
    Gate {
        name: "AllBeta",
        default: false,
        stage: "BETA",
        support: Support::Honoured,
    },
    Gate {
        name: "CompactHashCheck",
        default: false,
        stage: "ALPHA",
        support: Support::Refused,
    },
    Gate {
        name: "FastLeaseKeepAlive",
        default: true,
        stage: "BETA",
        support: Support::Honoured,
    },
    Gate {
        name: "InitialCorruptCheck",
        default: false,
        stage: "ALPHA",
        support: Support::Honoured,
    },
    Gate {
        name: "LeaseCheckpoint",
        default: false,
        stage: "ALPHA",
        support: Support::Refused,
    },
    Gate {
        name: "LeaseCheckpointPersist",
        default: false,
        stage: "ALPHA",
        support: Support::Refused,
    },
    Gate {
        name: "PriorityRequest",
        default: false,
        stage: "ALPHA",
        support: Support::Refused,
    },
    Gate {
        name: "SetMemberLocalAddr",
        default: false,
        stage: "ALPHA",
        support: Support::Refused,
    },
    Gate {
        name: "StopGRPCServiceOnDefrag",
        default: false,
        stage: "ALPHA",
        support: Support::Honoured,
    },
    Gate {
        name: "TxnModeWriteWithSharedBuffer",
        default: true,
        stage: "BETA",
        support: Support::NoEffect(
            "oxcd's read-write transactions never hold up reads, with or without etcd's shared buffer",
        ),
    },
];

/// The gates in force, after the defaults and `AllAlpha`/`AllBeta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureGates {
    enabled: BTreeMap<&'static str, bool>,
    /// Gates set to a value that changes nothing in oxcd, with why (logged at start).
    no_effect: Vec<(&'static str, bool, &'static str)>,
}

impl Default for FeatureGates {
    fn default() -> Self {
        FeatureGates::parse("").expect("the defaults are supported")
    }
}

impl FeatureGates {
    /// Parses `Name=bool,Name=bool` as etcd does (same messages), then refuses what oxcd cannot
    /// honour.
    pub fn parse(value: &str) -> Result<FeatureGates, String> {
        let mut set: BTreeMap<&'static str, bool> = BTreeMap::new();
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, flag) = match pair.split_once('=') {
                Some((name, flag)) => (name.trim(), flag.trim()),
                None => return Err(format!("missing bool value for {pair}")),
            };
            let gate = GATES
                .iter()
                .find(|g| g.name == name)
                .ok_or_else(|| format!("unrecognized feature gate: {name}"))?;
            let on = parse_go_bool(flag).ok_or_else(|| {
                format!(
                    "invalid value of {name}={flag}, err: strconv.ParseBool: parsing {flag:?}: invalid syntax"
                )
            })?;
            set.insert(gate.name, on);
        }
        let all_alpha = set.get("AllAlpha").copied();
        let all_beta = set.get("AllBeta").copied();
        let mut enabled = BTreeMap::new();
        let mut no_effect = Vec::new();
        for gate in &GATES {
            let implied = match gate.stage {
                "ALPHA" => all_alpha,
                _ => all_beta,
            }
            .filter(|_| !gate.name.starts_with("All"));
            let on = set
                .get(gate.name)
                .copied()
                .or(implied)
                .unwrap_or(gate.default);
            match gate.support {
                Support::Refused if on != gate.default => {
                    return Err(format!(
                        "feature gate {}={on} is not supported by oxcd (only its default, {}, is)",
                        gate.name, gate.default
                    ))
                }
                Support::NoEffect(why) if on != gate.default => {
                    no_effect.push((gate.name, on, why))
                }
                _ => {}
            }
            enabled.insert(gate.name, on);
        }
        Ok(FeatureGates { enabled, no_effect })
    }

    pub fn enabled(&self, name: &str) -> bool {
        self.enabled.get(name).copied().unwrap_or(false)
    }

    /// Says at start which gates were set to a value that changes nothing here, and why.
    pub fn log_no_effect(&self) {
        for (name, on, why) in &self.no_effect {
            tracing::info!(gate = name, value = on, "feature gate has no effect: {why}");
        }
    }
}

/// Go's strconv.ParseBool.
pub(crate) fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_kubeadms_gate() {
        let gates = FeatureGates::default();
        assert!(gates.enabled("FastLeaseKeepAlive"));
        assert!(!gates.enabled("InitialCorruptCheck"));
        let gates = FeatureGates::parse("InitialCorruptCheck=true").unwrap();
        assert!(gates.enabled("InitialCorruptCheck"));
    }

    #[test]
    fn etcds_errors() {
        let err = |v| FeatureGates::parse(v).unwrap_err();
        assert_eq!(
            err("NoSuchGate=true"),
            "unrecognized feature gate: NoSuchGate"
        );
        assert_eq!(
            err("compacthashcheck=true"),
            "unrecognized feature gate: compacthashcheck"
        );
        assert_eq!(
            err("CompactHashCheck"),
            "missing bool value for CompactHashCheck"
        );
        assert_eq!(
            err("InitialCorruptCheck=maybe"),
            "invalid value of InitialCorruptCheck=maybe, err: strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
    }

    #[test]
    fn unimplemented_gates_are_refused_not_ignored() {
        assert!(FeatureGates::parse("LeaseCheckpoint=true")
            .unwrap_err()
            .contains("not supported by oxcd"));
        assert!(FeatureGates::parse("LeaseCheckpoint=false").is_ok());
        // AllAlpha would turn the unimplemented alpha gates on.
        assert!(FeatureGates::parse("AllAlpha=true").is_err());
        let beta = FeatureGates::parse("AllBeta=false").unwrap();
        assert!(!beta.enabled("FastLeaseKeepAlive"));
        assert_eq!(
            beta.no_effect.len(),
            1,
            "TxnModeWriteWithSharedBuffer=false is logged"
        );
    }
}
