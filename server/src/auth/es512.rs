//! ES512 JWTs (ECDSA over P-521 with SHA-512), which etcd accepts as `sign-method=ES512` and
//! jsonwebtoken cannot make: RFC 7515's compact form, `base64url(header).base64url(claims).
//! base64url(r ‖ s)`, with r and s 66 bytes each, as Go's jwt library writes them.

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p521::ecdsa::signature::{Signer, Verifier};
use p521::ecdsa::{Signature, SigningKey, VerifyingKey};
use p521::pkcs8::{DecodePrivateKey, DecodePublicKey};
use p521::{PublicKey, SecretKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The header Go's jwt library writes, byte for byte.
const HEADER: &str = r#"{"alg":"ES512","typ":"JWT"}"#;

pub(super) struct Es512Keys {
    signing: Option<SigningKey>,
    verifying: VerifyingKey,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

impl Es512Keys {
    /// A private key in PKCS#8 or SEC1 PEM (openssl's `ecparam -genkey` writes SEC1; Go reads
    /// both), a public key in SubjectPublicKeyInfo PEM; either alone, as etcd allows.
    pub(super) fn from_pem(private: Option<&[u8]>, public: Option<&[u8]>) -> anyhow::Result<Self> {
        let signing = private
            .map(|pem| {
                let pem = std::str::from_utf8(pem).ok().unwrap_or_default();
                SecretKey::from_pkcs8_pem(pem)
                    .or_else(|_| SecretKey::from_sec1_pem(pem))
                    .ok()
                    .and_then(|secret| SigningKey::from_bytes(&secret.to_bytes()).ok())
                    .context("--auth-token jwt: priv-key is not a PEM P-521 private key (ES512)")
            })
            .transpose()?;
        let verifying = match (public, &signing) {
            (Some(pem), _) => {
                let public = std::str::from_utf8(pem)
                    .ok()
                    .and_then(|pem| PublicKey::from_public_key_pem(pem).ok())
                    .context("--auth-token jwt: pub-key is not a PEM P-521 public key (ES512)")?;
                VerifyingKey::from_affine(*public.as_affine())
                    .context("--auth-token jwt: pub-key is not a P-521 point")?
            }
            (None, Some(signing)) => VerifyingKey::from(signing),
            (None, None) => {
                anyhow::bail!(
                    "--auth-token jwt: give priv-key and/or pub-key (auth: missing key data)"
                )
            }
        };
        Ok(Es512Keys { signing, verifying })
    }

    pub(super) fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    pub(super) fn sign(&self, claims: &impl Serialize) -> Option<String> {
        let key = self.signing.as_ref()?;
        let claims = serde_json::to_vec(claims).ok()?;
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature: Signature = key.sign(signed.as_bytes());
        Some(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// The claims of a token this key signed with ES512; None for anything else.
    pub(super) fn verify<C: DeserializeOwned>(&self, token: &str) -> Option<C> {
        let (signed, signature) = token.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.alg != "ES512" {
            return None;
        }
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
        self.verifying.verify(signed.as_bytes(), &signature).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key openssl made (`ecparam -name secp521r1 -genkey`, SEC1), and a token etcd 3.7.3
    /// issued with it for root at auth revision 4.
    const PRIVATE: &str = "-----BEGIN EC PRIVATE KEY-----
MIHcAgEBBEIBFFNvZ9EfpDonv7gE8UfeSQHGnavZwCidq6XPIvs02rOt8NKbhulO
sXV93MwWX19kV4qsrALJ8YPJC4m7QE5pxWSgBwYFK4EEACOhgYkDgYYABADioHbg
SIe+PAmgV97tnJLoin0gubVC1zm9wn9rvVkEzfzK08I+3yqsBtNXd+46S9iX5sPL
xyw0gczBQOC8PJlxwwCXXGuCAkytD0cjElwvYVBypAP9Sm9501ZRwNvkgl5GJ86u
JMWnYHCddI9ZyJBYLd1oLG/12vLHEDWW1pc1hLgCnQ==
-----END EC PRIVATE KEY-----
";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQA4qB24EiHvjwJoFfe7ZyS6Ip9ILm1
Qtc5vcJ/a71ZBM38ytPCPt8qrAbTV3fuOkvYl+bDy8csNIHMwUDgvDyZccMAl1xr
ggJMrQ9HIxJcL2FQcqQD/UpvedNWUcDb5IJeRifOriTFp2BwnXSPWciQWC3daCxv
9dryxxA1ltaXNYS4Ap0=
-----END PUBLIC KEY-----
";
    const ETCD_TOKEN: &str = "eyJhbGciOiJFUzUxMiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE3OTY1MjY4NTgsInJldmlzaW9uIjo0LCJ1c2VybmFtZSI6InJvb3QifQ.AHaau0UhOSSzw6gFn22jH_e6npziezh_51rL0zk_B2CJKay3BgPxaT3pp3ph1sTyCTjOK2olsBZzcPHOZTYuK8WiAEKiRoAuIatYkcQT5Y7zkiTeh4ydDxZ67ASUVcpM9ZCkHVBEykxfONw29nPm40fwC9FBJriiSebs71ETvMmzdXsv";

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Claims {
        username: String,
        revision: u64,
    }

    #[test]
    fn a_token_etcd_signed_verifies_and_tampering_does_not() {
        let keys = Es512Keys::from_pem(None, Some(PUBLIC.as_bytes())).unwrap();
        assert!(!keys.can_sign());
        let claims: Claims = keys.verify(ETCD_TOKEN).unwrap();
        assert_eq!(
            claims,
            Claims {
                username: "root".into(),
                revision: 4
            }
        );
        let (signed, _) = ETCD_TOKEN.rsplit_once('.').unwrap();
        let (_, payload) = signed.split_once('.').unwrap();
        let as_es256 = ETCD_TOKEN.replacen(
            signed.split_once('.').unwrap().0,
            &URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
            1,
        );
        let other_claims = ETCD_TOKEN.replacen(
            payload,
            &URL_SAFE_NO_PAD.encode(r#"{"revision":4,"username":"admin"}"#),
            1,
        );
        for bad in [
            as_es256.as_str(),
            &other_claims,
            signed,
            "",
            "a.b.c",
            "....",
        ] {
            assert!(keys.verify::<Claims>(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tokens_signed_with_the_private_key_verify_with_the_public_one() {
        let signer = Es512Keys::from_pem(Some(PRIVATE.as_bytes()), None).unwrap();
        let verifier = Es512Keys::from_pem(None, Some(PUBLIC.as_bytes())).unwrap();
        let claims = Claims {
            username: "alice".into(),
            revision: 9,
        };
        let token = signer.sign(&claims).unwrap();
        assert!(token.starts_with("eyJhbGciOiJFUzUxMiIsInR5cCI6IkpXVCJ9."));
        assert_eq!(verifier.verify::<Claims>(&token), Some(claims));
        assert!(Es512Keys::from_pem(Some(PUBLIC.as_bytes()), None).is_err());
        assert!(Es512Keys::from_pem(None, Some(b"garbage")).is_err());
        assert!(Es512Keys::from_pem(None, None).is_err());
    }
}
