//! Auth tokens, as etcd's `--auth-token` makes them.
//!
//! - `simple`: `<16 random letters>.<index of the entry that issued it>`. Every member applies
//!   that entry, so every member knows the token; each forgets it after `--auth-token-ttl` of
//!   disuse, when its user is deleted or changes password, and when auth is disabled.
//! - `jwt`: signed with the configured key; its claims (`username`, `revision`, `exp`) are
//!   etcd's, so any member holding the public key accepts a token another member issued.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use rand::Rng;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};

use super::es512::Es512Keys;
use super::store::AuthInfo;
use crate::error::EtcdError;

/// etcd's `--bcrypt-cost` default (Go's bcrypt.DefaultCost).
pub const DEFAULT_BCRYPT_COST: u32 = 10;
const SIMPLE_TOKEN_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const SIMPLE_TOKEN_PREFIX_LEN: usize = 16;
/// etcd's default `ttl` of a JWT.
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(5 * 60);
/// How often expired simple tokens are swept out (etcd's TTL resolution).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// `--auth-token`, parsed.
#[derive(Clone)]
pub enum TokenConfig {
    Simple { ttl: Duration },
    Jwt(Arc<JwtKeys>),
}

pub struct JwtKeys {
    signer: JwtSigner,
    ttl: Duration,
}

enum JwtSigner {
    /// Every method but ES512.
    Library {
        algorithm: Algorithm,
        /// None when only a public key was given: this member then verifies tokens but
        /// cannot issue them (etcd's verify-only mode).
        signing: Option<EncodingKey>,
        verifying: DecodingKey,
    },
    Es512(Box<Es512Keys>),
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl TokenConfig {
    /// etcd's syntax: `simple`, or `jwt,sign-method=RS256,pub-key=…,priv-key=…,ttl=5m`.
    /// `simple_ttl` is `--auth-token-ttl`.
    pub fn parse(spec: &str, simple_ttl: Duration) -> anyhow::Result<TokenConfig> {
        let mut parts = spec.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut opts = HashMap::new();
        for part in parts {
            let Some((key, value)) = part.split_once('=').filter(|(_, v)| !v.contains('=')) else {
                bail!("invalid --auth-token {spec:?}: option {part:?} is not key=value (auth: invalid auth options)");
            };
            if opts.insert(key, value).is_some() {
                bail!("invalid --auth-token {spec:?}: option {key:?} given twice (auth: invalid auth options)");
            }
        }
        match kind {
            "simple" if opts.is_empty() => Ok(TokenConfig::Simple { ttl: simple_ttl }),
            "jwt" => Ok(TokenConfig::Jwt(Arc::new(JwtKeys::from_options(&opts)?))),
            _ => bail!("invalid --auth-token {spec:?}: the token type must be `simple` or `jwt,…` (auth: invalid auth options)"),
        }
    }
}

impl JwtKeys {
    fn from_options(opts: &HashMap<&str, &str>) -> anyhow::Result<JwtKeys> {
        for key in opts.keys() {
            if !["sign-method", "pub-key", "priv-key", "ttl"].contains(key) {
                bail!("unknown --auth-token jwt option {key:?} (known: sign-method, pub-key, priv-key, ttl)");
            }
        }
        let method = opts.get("sign-method").copied().unwrap_or_default();
        let algorithm = match method {
            "RS256" => Some(Algorithm::RS256),
            "RS384" => Some(Algorithm::RS384),
            "RS512" => Some(Algorithm::RS512),
            "PS256" => Some(Algorithm::PS256),
            "PS384" => Some(Algorithm::PS384),
            "PS512" => Some(Algorithm::PS512),
            "ES256" => Some(Algorithm::ES256),
            "ES384" => Some(Algorithm::ES384),
            "EdDSA" => Some(Algorithm::EdDSA),
            "HS256" => Some(Algorithm::HS256),
            "HS384" => Some(Algorithm::HS384),
            "HS512" => Some(Algorithm::HS512),
            "ES512" => None,
            _ => bail!("--auth-token jwt: invalid sign-method {method:?} (auth: invalid auth signature method)"),
        };
        let ttl = match opts.get("ttl") {
            Some(ttl) => crate::config::go_duration(ttl)
                .map_err(|e| anyhow::anyhow!("--auth-token jwt: ttl: {e}"))?,
            None => DEFAULT_JWT_TTL,
        };
        let read = |opt: &str| -> anyhow::Result<Option<Vec<u8>>> {
            opts.get(opt)
                .map(|path| {
                    std::fs::read(path)
                        .with_context(|| format!("--auth-token jwt: reading {opt} {path}"))
                })
                .transpose()
        };
        let (private, public) = (read("priv-key")?, read("pub-key")?);
        let signer = match algorithm {
            None => JwtSigner::Es512(Box::new(Es512Keys::from_pem(
                private.as_deref(),
                public.as_deref(),
            )?)),
            Some(algorithm @ (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) => {
                let secret = private.context(
                    "--auth-token jwt: HMAC signing needs priv-key (auth: missing key data)",
                )?;
                JwtSigner::Library {
                    algorithm,
                    signing: Some(EncodingKey::from_secret(&secret)),
                    verifying: DecodingKey::from_secret(&secret),
                }
            }
            Some(algorithm) => {
                let (signing, verifying) =
                    asymmetric_keys(algorithm, private.as_deref(), public.as_deref())?;
                JwtSigner::Library {
                    algorithm,
                    signing,
                    verifying,
                }
            }
        };
        let jwt = JwtKeys { signer, ttl };
        jwt.check_pair()?;
        Ok(jwt)
    }

    /// etcd refuses a public key that does not belong to the private key.
    fn check_pair(&self) -> anyhow::Result<()> {
        let can_sign = match &self.signer {
            JwtSigner::Library { signing, .. } => signing.is_some(),
            JwtSigner::Es512(keys) => keys.can_sign(),
        };
        if !can_sign {
            return Ok(());
        }
        let token = self
            .sign("probe", 0)
            .map_err(|_| anyhow::anyhow!("--auth-token jwt: cannot sign with priv-key"))?;
        if self.verify(&token).is_none() {
            bail!("--auth-token jwt: public and private keys don't match (auth: public and private keys don't match)");
        }
        Ok(())
    }

    fn sign(&self, user: &str, revision: u64) -> Result<String, EtcdError> {
        let exp = (SystemTime::now() + self.ttl)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp,
        };
        match &self.signer {
            JwtSigner::Library {
                algorithm, signing, ..
            } => {
                let key = signing.as_ref().ok_or(EtcdError::AuthFailed)?;
                jsonwebtoken::encode(&Header::new(*algorithm), &claims, key).map_err(|e| {
                    tracing::warn!(error = %e, "signing a JWT failed");
                    EtcdError::AuthFailed
                })
            }
            JwtSigner::Es512(keys) => keys.sign(&claims).ok_or(EtcdError::AuthFailed),
        }
    }

    fn verify(&self, token: &str) -> Option<AuthInfo> {
        let claims = match &self.signer {
            JwtSigner::Library {
                algorithm,
                verifying,
                ..
            } => {
                let mut validation = Validation::new(*algorithm);
                // Go's jwt library, which etcd uses, allows no clock skew.
                validation.leeway = 0;
                jsonwebtoken::decode::<Claims>(token, verifying, &validation)
                    .ok()?
                    .claims
            }
            JwtSigner::Es512(keys) => {
                let claims: Claims = keys.verify(token)?;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                // Go's jwt library: a token is expired from its `exp` second on.
                (claims.exp > now).then_some(claims)?
            }
        };
        Some(AuthInfo {
            user: claims.username,
            revision: claims.revision,
        })
    }
}

/// The keys of an RSA, ECDSA or Ed25519 method from PEM files. Without `pub-key` the public key
/// is derived from the private one (etcd accepts either file alone).
fn asymmetric_keys(
    algorithm: Algorithm,
    private: Option<&[u8]>,
    public: Option<&[u8]>,
) -> anyhow::Result<(Option<EncodingKey>, DecodingKey)> {
    use ring::signature::{self, KeyPair};
    let family = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => "ec",
        Algorithm::EdDSA => "ed",
        _ => "rsa",
    };
    let signing = private
        .map(|pem| match family {
            "ec" => EncodingKey::from_ec_pem(pem),
            "ed" => EncodingKey::from_ed_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        })
        .transpose()
        .context("--auth-token jwt: priv-key is not a PEM private key of the sign-method's type (EC keys must be PKCS#8)")?;
    let verifying = match (public, private) {
        (Some(pem), _) => match family {
            "ec" => DecodingKey::from_ec_pem(pem),
            "ed" => DecodingKey::from_ed_pem(pem),
            _ => DecodingKey::from_rsa_pem(pem),
        }
        .context("--auth-token jwt: pub-key is not a PEM public key of the sign-method's type")?,
        (None, Some(pem)) => {
            let der = PrivateKeyDer::from_pem_slice(pem)
                .context("--auth-token jwt: priv-key is not a PEM private key")?;
            let bad = || {
                anyhow::anyhow!("--auth-token jwt: cannot derive the public key from priv-key; give pub-key too")
            };
            match (family, &der) {
                ("rsa", PrivateKeyDer::Pkcs1(k)) => DecodingKey::from_rsa_der(
                    signature::RsaKeyPair::from_der(k.secret_pkcs1_der())
                        .map_err(|_| bad())?
                        .public_key()
                        .as_ref(),
                ),
                ("rsa", PrivateKeyDer::Pkcs8(k)) => DecodingKey::from_rsa_der(
                    signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
                        .map_err(|_| bad())?
                        .public_key()
                        .as_ref(),
                ),
                ("ec", PrivateKeyDer::Pkcs8(k)) => {
                    let alg = if algorithm == Algorithm::ES256 {
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING
                    } else {
                        &signature::ECDSA_P384_SHA384_FIXED_SIGNING
                    };
                    let pair = signature::EcdsaKeyPair::from_pkcs8(
                        alg,
                        k.secret_pkcs8_der(),
                        &ring::rand::SystemRandom::new(),
                    )
                    .map_err(|_| bad())?;
                    DecodingKey::from_ec_der(pair.public_key().as_ref())
                }
                ("ed", PrivateKeyDer::Pkcs8(k)) => DecodingKey::from_ed_der(
                    signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der())
                        .map_err(|_| bad())?
                        .public_key()
                        .as_ref(),
                ),
                _ => return Err(bad()),
            }
        }
        (None, None) => {
            bail!("--auth-token jwt: give priv-key and/or pub-key (auth: missing key data)")
        }
    };
    Ok((signing, verifying))
}

/// A member's tokens: the configuration and, for simple tokens, the ones it has issued.
pub(super) struct Tokens {
    config: TokenConfig,
    simple: Mutex<SimpleTokens>,
}

struct SimpleTokens {
    /// token -> (user, when it lapses unless used)
    live: HashMap<String, (String, Instant)>,
    last_sweep: Instant,
}

impl Tokens {
    pub(super) fn new(config: TokenConfig) -> Tokens {
        Tokens {
            config,
            simple: Mutex::new(SimpleTokens {
                live: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// The random part of a simple token, chosen by the member that proposes the login.
    pub(super) fn new_prefix(&self) -> String {
        match self.config {
            TokenConfig::Simple { .. } => {
                let mut rng = rand::thread_rng();
                (0..SIMPLE_TOKEN_PREFIX_LEN)
                    .map(|_| {
                        SIMPLE_TOKEN_LETTERS[rng.gen_range(0..SIMPLE_TOKEN_LETTERS.len())] as char
                    })
                    .collect()
            }
            TokenConfig::Jwt(_) => String::new(),
        }
    }

    pub(super) fn assign(
        &self,
        user: &str,
        revision: u64,
        prefix: &str,
        index: u64,
    ) -> Result<String, EtcdError> {
        match &self.config {
            TokenConfig::Simple { ttl } => {
                if prefix.is_empty() {
                    // Proposed by a member configured for JWT: a misconfigured cluster.
                    return Err(EtcdError::AuthFailed);
                }
                let token = format!("{prefix}.{index}");
                let now = Instant::now();
                let mut simple = self.simple.lock();
                if now.duration_since(simple.last_sweep) >= SWEEP_INTERVAL {
                    simple.live.retain(|_, (_, lapses)| *lapses > now);
                    simple.last_sweep = now;
                }
                simple
                    .live
                    .insert(token.clone(), (user.to_string(), now + *ttl));
                Ok(token)
            }
            TokenConfig::Jwt(jwt) => jwt.sign(user, revision),
        }
    }

    /// Who a token names, or None for an unknown, expired or forged one. A simple token stands
    /// for its user at the current revision; a JWT for the revision it was issued at.
    pub(super) fn resolve(&self, token: &str, current_revision: u64) -> Option<AuthInfo> {
        match &self.config {
            TokenConfig::Simple { ttl } => {
                let now = Instant::now();
                let mut simple = self.simple.lock();
                let (user, lapses) = simple.live.get_mut(token)?;
                if *lapses <= now {
                    simple.live.remove(token);
                    return None;
                }
                *lapses = now + *ttl;
                Some(AuthInfo {
                    user: user.clone(),
                    revision: current_revision,
                })
            }
            TokenConfig::Jwt(jwt) => jwt.verify(token),
        }
    }

    /// The log index a simple token was issued at: a member that has not applied it yet waits
    /// for it before deciding the token is unknown.
    pub(super) fn simple_token_index(&self, token: &str) -> Option<u64> {
        match self.config {
            TokenConfig::Simple { .. } => {
                let (_, index) = token.split_once('.')?;
                index.parse().ok()
            }
            TokenConfig::Jwt(_) => None,
        }
    }

    pub(super) fn invalidate_user(&self, user: &str) {
        self.simple.lock().live.retain(|_, (u, _)| u != user);
    }

    pub(super) fn clear(&self) {
        self.simple.lock().live.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple() -> Tokens {
        Tokens::new(TokenConfig::Simple {
            ttl: Duration::from_secs(300),
        })
    }

    #[test]
    fn simple_tokens_are_prefix_dot_index_and_resolve_at_the_current_revision() {
        let tokens = simple();
        let prefix = tokens.new_prefix();
        assert_eq!(prefix.len(), 16);
        assert!(prefix.bytes().all(|b| b.is_ascii_alphabetic()));
        let token = tokens.assign("alice", 3, &prefix, 42).unwrap();
        assert_eq!(token, format!("{prefix}.42"));
        assert_eq!(tokens.simple_token_index(&token), Some(42));
        let who = tokens.resolve(&token, 7).unwrap();
        assert_eq!((who.user.as_str(), who.revision), ("alice", 7));
        assert!(tokens.resolve("forged.42", 7).is_none());
        tokens.invalidate_user("alice");
        assert!(tokens.resolve(&token, 7).is_none());
    }

    #[test]
    fn simple_tokens_lapse_after_their_ttl_of_disuse() {
        let tokens = Tokens::new(TokenConfig::Simple {
            ttl: Duration::from_millis(50),
        });
        let token = tokens.assign("bob", 1, "abc", 1).unwrap();
        assert!(tokens.resolve(&token, 1).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(tokens.resolve(&token, 1).is_none());
    }

    #[test]
    fn token_options_are_parsed_as_etcd_parses_them() {
        let ttl = Duration::from_secs(300);
        assert!(matches!(
            TokenConfig::parse("simple", ttl).unwrap(),
            TokenConfig::Simple { .. }
        ));
        for bad in [
            "",
            "plain",
            "jwt,sign-method",
            "jwt,ttl=1m,ttl=2m",
            "jwt,sign-method=XX",
        ] {
            assert!(TokenConfig::parse(bad, ttl).is_err(), "{bad}");
        }
    }

    #[test]
    fn hmac_jwts_carry_etcds_claims_and_reject_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret");
        std::fs::write(&key, b"0123456789abcdef").unwrap();
        let spec = format!("jwt,sign-method=HS256,priv-key={},ttl=1m", key.display());
        let TokenConfig::Jwt(jwt) = TokenConfig::parse(&spec, Duration::ZERO).unwrap() else {
            panic!("not a JWT config");
        };
        let tokens = Tokens::new(TokenConfig::Jwt(jwt));
        let token = tokens.assign("carol", 9, "", 5).unwrap();
        let who = tokens.resolve(&token, 100).unwrap();
        assert_eq!((who.user.as_str(), who.revision), ("carol", 9));
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(tokens.resolve(&forged, 100).is_none());
    }
}
