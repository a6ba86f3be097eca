//! What a stored value is before any decoding: kube-apiserver's protobuf envelope, JSON, or a
//! value encrypted at rest, which can only be described (provider and key), never decoded.

use std::fmt;

/// The 4 bytes kube-apiserver's protobuf serializer starts every value with.
pub const PROTOBUF_MAGIC: &[u8] = b"k8s\0";
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";

#[derive(Debug, PartialEq, Eq)]
pub enum Envelope<'v> {
    /// `k8s\0` followed by a runtime.Unknown message (decoded by `object`).
    Protobuf(&'v [u8]),
    /// Custom resources and objects written with `--storage-media-type=application/json`.
    Json(serde_json::Value),
    Encrypted(Encryption),
    /// Anything else (not written by kube-apiserver, or damaged).
    Opaque,
}

/// An encryption-at-rest header: `k8s:enc:<provider>:<version>:<key name>:<ciphertext>`.
/// For KMS the name is the KMS plugin's, as the key itself lives in the KMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    pub provider: String,
    pub version: String,
    pub key_name: String,
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, key {:?}",
            self.provider, self.version, self.key_name
        )
    }
}

pub fn classify(value: &[u8]) -> Envelope<'_> {
    if let Some(message) = value.strip_prefix(PROTOBUF_MAGIC) {
        return Envelope::Protobuf(message);
    }
    if let Some(header) = value.strip_prefix(ENCRYPTED_PREFIX) {
        return encryption(header).map_or(Envelope::Opaque, Envelope::Encrypted);
    }
    if value.first() == Some(&b'{') {
        if let Ok(json) = serde_json::from_slice(value) {
            return Envelope::Json(json);
        }
    }
    Envelope::Opaque
}

/// Reads `<provider>:<version>:<key name>:` off the front of the ciphertext. The key name is
/// free text chosen by the operator, so it ends at the first colon, as the apiserver's prefix
/// matching implies.
fn encryption(header: &[u8]) -> Option<Encryption> {
    let mut fields = header.splitn(4, |b| *b == b':');
    let mut text = || std::str::from_utf8(fields.next()?).ok().map(str::to_string);
    let (provider, version, key_name) = (text()?, text()?, text()?);
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
    (valid(&provider) && valid(&version) && valid(&key_name)).then_some(Encryption {
        provider,
        version,
        key_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypted(provider: &str, version: &str, key_name: &str) -> Envelope<'static> {
        let (provider, version, key_name) = (provider.into(), version.into(), key_name.into());
        Envelope::Encrypted(Encryption {
            provider,
            version,
            key_name,
        })
    }

    #[test]
    fn encryption_headers_name_provider_and_key() {
        assert_eq!(
            classify(b"k8s:enc:aescbc:v1:key1:\x01\x02\xff"),
            encrypted("aescbc", "v1", "key1")
        );
        assert_eq!(
            classify(b"k8s:enc:aesgcm:v1:2024-rotation:\x00"),
            encrypted("aesgcm", "v1", "2024-rotation")
        );
        assert_eq!(
            classify(b"k8s:enc:secretbox:v1:sb:xyz"),
            encrypted("secretbox", "v1", "sb")
        );
        assert_eq!(
            classify(b"k8s:enc:kms:v2:vault-kms:\x0a\x03abc"),
            encrypted("kms", "v2", "vault-kms")
        );
        assert_eq!(
            classify(b"k8s:enc:kms:v1:awskms:\x00\x10"),
            encrypted("kms", "v1", "awskms")
        );
        assert_eq!(classify(b"k8s:enc:aescbc"), Envelope::Opaque);
    }

    #[test]
    fn protobuf_json_and_other_values_are_told_apart() {
        assert_eq!(classify(b"k8s\0\x0a\x00"), Envelope::Protobuf(b"\x0a\x00"));
        assert_eq!(
            classify(br#"{"kind":"Widget"}"#),
            Envelope::Json(serde_json::json!({"kind": "Widget"}))
        );
        assert_eq!(classify(b"{not json"), Envelope::Opaque);
        assert_eq!(classify(b"10.0.0.1"), Envelope::Opaque);
        assert_eq!(classify(b""), Envelope::Opaque);
    }
}
