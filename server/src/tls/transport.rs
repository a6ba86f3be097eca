//! etcd's transport flags, shared by every TLS endpoint of a member (client and peer listeners,
//! peer dials): `--cipher-suites` and `--tls-min-version` / `--tls-max-version`.
//!
//! etcd takes Go's cipher suite names and hands them to Go's TLS stack, which applies them to
//! TLS 1.2 only (TLS 1.3 suites cannot be chosen in Go). oxcd maps them onto rustls' suites the
//! same way: the TLS 1.2 suites are narrowed to the list, the TLS 1.3 ones always stay. A name
//! Go does not know is refused with etcd's error; one Go knows but rustls does not implement
//! (CBC, RC4, 3DES, RSA key exchange) is refused too, since serving without it would not be
//! what the operator asked for.

use std::sync::Arc;

use anyhow::bail;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::{version, SupportedCipherSuite, SupportedProtocolVersion};

/// Every name Go's `tls.CipherSuites()` and `tls.InsecureCipherSuites()` list (Go 1.26), which
/// is what etcd's `tlsutil.GetCipherSuite` accepts, plus its two legacy ChaCha20 aliases.
const GO_CIPHER_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
];

/// Go's TLS 1.3 suites, which every TLS 1.3 handshake may use whatever the flag says.
const GO_TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The TLS versions etcd 3.6+ takes; TLS 1.0 and 1.1 are no value of its flags (and rustls
/// implements neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TlsVersion {
    Tls12,
    Tls13,
}

/// etcd's `tlsutil.GetTLSVersion`: `None` for the empty value (the TLS stack's own choice).
fn parse_version(value: &str) -> anyhow::Result<Option<TlsVersion>> {
    match value {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(TlsVersion::Tls12)),
        "TLS1.3" => Ok(Some(TlsVersion::Tls13)),
        other => bail!("unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"),
    }
}

/// The cipher suites and protocol versions every TLS endpoint of this member uses.
#[derive(Debug, Clone)]
pub struct Transport {
    provider: Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
}

impl Transport {
    /// From `--cipher-suites`, `--tls-min-version` and `--tls-max-version`, refused with etcd's
    /// errors where etcd refuses them.
    pub fn from_flags(
        cipher_suites: &[String],
        min_version: &str,
        max_version: &str,
    ) -> anyhow::Result<Transport> {
        let min = parse_version(min_version)?;
        let max = parse_version(max_version)?;
        // An empty minimum is TLS 1.2 in etcd too (its TLS configuration's floor).
        let min = min.unwrap_or(TlsVersion::Tls12);
        if max.is_some_and(|max| min > max) {
            bail!("min version ({min_version}) is greater than max version ({max_version})");
        }
        let names: Vec<&str> = cipher_suites
            .iter()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
            .collect();
        if min == TlsVersion::Tls13 && !names.is_empty() {
            bail!("cipher suites cannot be configured when only TLS1.3 is enabled");
        }
        let max = max.unwrap_or(TlsVersion::Tls13);
        let versions = [
            (TlsVersion::Tls12, &version::TLS12),
            (TlsVersion::Tls13, &version::TLS13),
        ]
        .into_iter()
        .filter(|(v, _)| (min..=max).contains(v))
        .map(|(_, v)| v)
        .collect();
        let mut provider = ring::default_provider();
        if !names.is_empty() {
            provider.cipher_suites = tls12_suites_named(&names, &provider.cipher_suites)?;
        }
        Ok(Transport {
            provider: Arc::new(provider),
            versions,
        })
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    pub fn versions(&self) -> &[&'static SupportedProtocolVersion] {
        &self.versions
    }
}

/// Every TLS 1.3 suite of `available`, and its TLS 1.2 suites named in `names`.
fn tls12_suites_named(
    names: &[&str],
    available: &[SupportedCipherSuite],
) -> anyhow::Result<Vec<SupportedCipherSuite>> {
    fn rustls_name(name: &str) -> &str {
        match name {
            // etcd's aliases of the ChaCha20 suites.
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            other => other,
        }
    }
    for name in names {
        if !GO_CIPHER_SUITES.contains(name) {
            bail!("unexpected TLS cipher suite {name:?}");
        }
        if GO_TLS13_SUITES.contains(name) {
            // Go accepts these names and ignores them; so does oxcd.
            continue;
        }
        let supported = available
            .iter()
            .any(|s| s.suite().as_str() == Some(rustls_name(name)));
        if !supported {
            let tls12: Vec<&str> = available
                .iter()
                .filter(|s| s.version() == &version::TLS12)
                .filter_map(|s| s.suite().as_str())
                .collect();
            bail!(
                "TLS cipher suite {name:?} is not supported by oxcd (its TLS 1.2 suites are {})",
                tls12.join(", ")
            );
        }
    }
    Ok(available
        .iter()
        .filter(|s| {
            s.version() == &version::TLS13
                || names
                    .iter()
                    .any(|n| s.suite().as_str() == Some(rustls_name(n)))
        })
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn suites(t: &Transport) -> Vec<&'static str> {
        t.provider
            .cipher_suites
            .iter()
            .filter_map(|s| s.suite().as_str())
            .collect()
    }

    #[test]
    fn versions_default_to_tls12_and_up() {
        let t = Transport::from_flags(&[], "TLS1.2", "").unwrap();
        assert_eq!(t.versions.len(), 2);
        let t = Transport::from_flags(&[], "", "").unwrap();
        assert_eq!(t.versions.len(), 2);
        let t = Transport::from_flags(&[], "TLS1.3", "").unwrap();
        assert_eq!(t.versions, [&version::TLS13]);
        let t = Transport::from_flags(&[], "TLS1.2", "TLS1.2").unwrap();
        assert_eq!(t.versions, [&version::TLS12]);
    }

    #[test]
    fn versions_are_refused_with_etcds_errors() {
        let err = |min: &str, max: &str| {
            Transport::from_flags(&[], min, max)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("TLS1.1", ""),
            "unexpected TLS version \"TLS1.1\" (must be one of: TLS1.2, TLS1.3)"
        );
        assert_eq!(
            err("TLS1.2", "TLS1.0"),
            "unexpected TLS version \"TLS1.0\" (must be one of: TLS1.2, TLS1.3)"
        );
        assert_eq!(
            err("TLS1.3", "TLS1.2"),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
    }

    #[test]
    fn cipher_suites_narrow_tls12_only() {
        let t = Transport::from_flags(
            &names(&[
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            ]),
            "TLS1.2",
            "",
        )
        .unwrap();
        let got = suites(&t);
        assert!(got.contains(&"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"));
        assert!(got.contains(&"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"));
        assert!(!got.contains(&"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"));
        // TLS 1.3's suites are not chosen by the flag (as in Go).
        assert!(got.contains(&"TLS13_AES_128_GCM_SHA256"));
        assert_eq!(got.len(), 5);
        // A TLS 1.3 name is taken and changes nothing.
        let t13 = Transport::from_flags(
            &names(&[
                "TLS_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ]),
            "TLS1.2",
            "",
        )
        .unwrap();
        assert_eq!(suites(&t13).len(), 4);
        // An empty value (ETCD_CIPHER_SUITES="") is no list.
        let all = Transport::from_flags(&names(&[""]), "TLS1.3", "").unwrap();
        assert_eq!(suites(&all).len(), ring::DEFAULT_CIPHER_SUITES.len());
    }

    #[test]
    fn cipher_suites_are_refused_as_etcd_refuses_them_and_where_rustls_has_none() {
        let err = |list: &[&str], min: &str| {
            Transport::from_flags(&names(list), min, "")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&["TLS_FOO"], "TLS1.2"),
            "unexpected TLS cipher suite \"TLS_FOO\""
        );
        assert_eq!(
            err(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], "TLS1.3"),
            "cipher suites cannot be configured when only TLS1.3 is enabled"
        );
        let cbc = err(&["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"], "TLS1.2");
        assert!(
            cbc.starts_with(
                "TLS cipher suite \"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\" is not supported by oxcd"
            ),
            "{cbc}"
        );
    }
}
