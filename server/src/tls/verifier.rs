//! Client certificates checked as etcd's Go TLS stack checks them.
//!
//! Chains and handshake signatures are left to rustls' webpki verifier. On top of it:
//! - etcd's identity flags: the verified certificate's subject CN must be one of
//!   `--peer-cert-allowed-cn`, or the certificate must be valid for one of the
//!   `--*-cert-allowed-hostname` names (Go's `VerifyHostname`: SANs only, wildcards allowed).
//! - A self-signed certificate that is itself in the trusted CA file is accepted as a client
//!   certificate, as Go accepts it (its pool holds the certificate, so the chain is the
//!   certificate alone); webpki refuses any CA certificate as an end entity.
//! - `--client-crl-file` / `--peer-crl-file`: a chain with a revoked certificate is refused
//!   (see `crl`).

use std::fmt;
use std::sync::Arc;

use anyhow::bail;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::{ASN1Time, FromDer};

use super::crl::{Refusal, RevocationList};

/// Whom etcd's identity flags let in, beyond a certificate chain to a trusted CA.
#[derive(Debug)]
pub enum AllowedIdentity {
    Anyone,
    CommonNames(Vec<String>),
    Hostnames(Vec<ServerName<'static>>),
}

impl AllowedIdentity {
    /// From `--<prefix>cert-allowed-cn` and `--<prefix>cert-allowed-hostname` (each a comma
    /// separated list since etcd 3.5; one name in 3.4). etcd refuses both at once.
    pub fn from_flags(
        common_names: &[String],
        hostnames: &[String],
        flag_prefix: &str,
    ) -> anyhow::Result<AllowedIdentity> {
        let given = |names: &[String]| -> Vec<String> {
            names.iter().filter(|n| !n.is_empty()).cloned().collect()
        };
        let (common_names, hostnames) = (given(common_names), given(hostnames));
        match (common_names.is_empty(), hostnames.is_empty()) {
            (true, true) => Ok(AllowedIdentity::Anyone),
            (false, true) => Ok(AllowedIdentity::CommonNames(common_names)),
            (true, false) => Ok(AllowedIdentity::Hostnames(
                hostnames
                    .into_iter()
                    .map(|name| {
                        ServerName::try_from(name.clone()).map_err(|_| {
                            anyhow::anyhow!(
                                "--{flag_prefix}cert-allowed-hostname: {name:?} is neither a DNS name nor an IP address"
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            )),
            (false, false) => bail!(
                "--{flag_prefix}cert-allowed-cn and --{flag_prefix}cert-allowed-hostname are mutually exclusive (cn={common_names:?}, hostname={hostnames:?})"
            ),
        }
    }

    fn admits(&self, cert: &CertificateDer<'_>) -> Result<(), Error> {
        let admitted = match self {
            AllowedIdentity::Anyone => true,
            AllowedIdentity::CommonNames(allowed) => {
                let (_, parsed) = X509Certificate::from_der(cert)
                    .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
                last_common_name(&parsed).is_some_and(|cn| allowed.iter().any(|a| a == cn))
            }
            AllowedIdentity::Hostnames(allowed) => {
                let cert = webpki::EndEntityCert::try_from(cert)
                    .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
                allowed
                    .iter()
                    .any(|name| cert.verify_is_valid_for_subject_name(name).is_ok())
            }
        };
        if admitted {
            Ok(())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

/// Go keeps the last CN of the subject.
fn last_common_name<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a str> {
    cert.subject()
        .iter_common_name()
        .last()
        .and_then(|cn| cn.as_str().ok())
}

/// The subject common name of a client certificate: the user it authenticates as when auth is
/// on (etcd's AuthInfoFromTLS).
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    last_common_name(&parsed).map(str::to_string)
}

/// rustls' webpki verifier plus etcd's rules (see the module docs).
pub struct EtcdClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    /// The certificates of the trusted CA file, as they are on disk.
    trusted: Vec<CertificateDer<'static>>,
    allowed: AllowedIdentity,
    revoked: Option<RevocationList>,
}

impl EtcdClientVerifier {
    pub fn new(
        chain: Arc<dyn ClientCertVerifier>,
        trusted: Vec<CertificateDer<'static>>,
        allowed: AllowedIdentity,
        revoked: Option<RevocationList>,
    ) -> EtcdClientVerifier {
        EtcdClientVerifier {
            chain,
            trusted,
            allowed,
            revoked,
        }
    }
}

impl fmt::Debug for EtcdClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdClientVerifier")
            .field("trusted", &self.trusted.len())
            .field("allowed", &self.allowed)
            .field("crl", &self.revoked.is_some())
            .finish()
    }
}

impl ClientCertVerifier for EtcdClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match self
            .chain
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(_) => {}
            Err(e) if is_ca_used_as_end_entity(&e) && self.trusted.contains(end_entity) => {
                trusted_ca_as_client_certificate(end_entity, now)?;
            }
            Err(e) => return Err(e),
        }
        self.allowed.admits(end_entity)?;
        if let Some(list) = &self.revoked {
            let presented: Vec<&CertificateDer<'_>> =
                std::iter::once(end_entity).chain(intermediates).collect();
            list.check(&presented).map_err(|refusal| {
                tracing::warn!(error = %refusal, "rejected a client certificate");
                Error::InvalidCertificate(match refusal {
                    Refusal::Revoked(_) => CertificateError::Revoked,
                    Refusal::Unreadable(_) => CertificateError::ApplicationVerificationFailure,
                })
            })?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The certificate of a member this one dials: rustls' webpki checks (chain, host name) plus
/// the same identity flags as for members dialling in, because etcd's Go TLS config applies
/// `--peer-cert-allowed-cn`/`-hostname` to both directions.
#[derive(Debug)]
pub struct EtcdPeerServerVerifier {
    chain: Arc<WebPkiServerVerifier>,
    allowed: AllowedIdentity,
}

impl EtcdPeerServerVerifier {
    pub fn new(chain: Arc<WebPkiServerVerifier>, allowed: AllowedIdentity) -> Self {
        EtcdPeerServerVerifier { chain, allowed }
    }
}

impl ServerCertVerifier for EtcdPeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.allowed.admits(end_entity).inspect_err(|_| {
            tracing::warn!(?server_name, allowed = ?self.allowed, "a member's certificate is not one the peer identity flags allow");
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn is_ca_used_as_end_entity(e: &Error) -> bool {
    match e {
        Error::InvalidCertificate(CertificateError::Other(OtherError(source))) => matches!(
            source.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// What Go still checks of a trusted certificate presented as the whole chain: its validity
/// period, and that its extended key usage (if it has one) allows client authentication.
fn trusted_ca_as_client_certificate(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), Error> {
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = i64::try_from(now.as_secs())
        .ok()
        .and_then(|secs| ASN1Time::from_timestamp(secs).ok())
        .ok_or(Error::FailedToGetCurrentTime)?;
    let validity = parsed.validity();
    if now < validity.not_before {
        return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    if now > validity.not_after {
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }
    match parsed.extended_key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(eku)) if eku.value.any || eku.value.client_auth => Ok(()),
        Ok(Some(_)) => Err(Error::InvalidCertificate(CertificateError::InvalidPurpose)),
        Err(_) => Err(Error::InvalidCertificate(CertificateError::BadEncoding)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls_pki_types::pem::PemObject;

    use super::*;

    /// Self-signed, valid 2026-2126: subject `CN=first, O=oxcd, CN=last`, SANs `*.oxcd.test`
    /// and 10.0.0.1, no extended key usage.
    const ANY_USAGE: &str = include_str!("testdata/any-usage.pem");
    /// Self-signed, valid 2026-2126, extended key usage serverAuth only.
    const SERVER_ONLY: &str = include_str!("testdata/server-only.pem");

    fn cert(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn hostnames(list: &[&str]) -> AllowedIdentity {
        AllowedIdentity::from_flags(&[], &names(list), "").unwrap()
    }

    #[test]
    fn the_subjects_last_common_name_is_the_one_checked() {
        let cert = cert(ANY_USAGE);
        let cns = |list: &[&str]| AllowedIdentity::CommonNames(names(list));
        assert!(cns(&["last"]).admits(&cert).is_ok());
        assert!(cns(&["other", "last"]).admits(&cert).is_ok());
        assert!(cns(&["first"]).admits(&cert).is_err());
        assert!(AllowedIdentity::Anyone.admits(&cert).is_ok());
    }

    #[test]
    fn hostnames_match_subject_alternative_names_as_go_does() {
        let cert = cert(ANY_USAGE);
        for admitted in ["a.oxcd.test", "A.OXCD.TEST", "10.0.0.1"] {
            assert!(hostnames(&[admitted]).admits(&cert).is_ok(), "{admitted}");
        }
        // A wildcard covers one label; the CN is no host name (Go 1.15+).
        for refused in ["oxcd.test", "a.b.oxcd.test", "10.0.0.2", "last"] {
            assert!(hostnames(&[refused]).admits(&cert).is_err(), "{refused}");
        }
        assert!(hostnames(&["x.example", "b.oxcd.test"])
            .admits(&cert)
            .is_ok());
    }

    #[test]
    fn a_trusted_ca_as_client_certificate_must_be_current_and_allow_client_auth() {
        let at = |secs: u64| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let year_2050 = at(2_524_608_000);
        assert!(trusted_ca_as_client_certificate(&cert(ANY_USAGE), year_2050).is_ok());
        assert!(matches!(
            trusted_ca_as_client_certificate(&cert(ANY_USAGE), at(1_000_000_000)),
            Err(Error::InvalidCertificate(CertificateError::NotValidYet))
        ));
        assert!(matches!(
            trusted_ca_as_client_certificate(&cert(ANY_USAGE), at(5_000_000_000)),
            Err(Error::InvalidCertificate(CertificateError::Expired))
        ));
        assert!(matches!(
            trusted_ca_as_client_certificate(&cert(SERVER_ONLY), year_2050),
            Err(Error::InvalidCertificate(CertificateError::InvalidPurpose))
        ));
    }

    #[test]
    fn identity_flags_parse_as_etcd_takes_them() {
        assert!(matches!(
            AllowedIdentity::from_flags(&[], &[], "peer-").unwrap(),
            AllowedIdentity::Anyone
        ));
        // An empty value is etcd 3.4's unset flag.
        assert!(matches!(
            AllowedIdentity::from_flags(&names(&[""]), &[], "peer-").unwrap(),
            AllowedIdentity::Anyone
        ));
        assert!(matches!(
            AllowedIdentity::from_flags(&names(&["a", "b"]), &[], "peer-").unwrap(),
            AllowedIdentity::CommonNames(cns) if cns == ["a", "b"]
        ));
        assert!(matches!(
            AllowedIdentity::from_flags(&[], &names(&["etcd.example", "10.0.0.1"]), "").unwrap(),
            AllowedIdentity::Hostnames(h) if h.len() == 2
        ));
        let both = AllowedIdentity::from_flags(&names(&["a"]), &names(&["h.example"]), "peer-");
        assert!(both.unwrap_err().to_string().contains("mutually exclusive"));
        assert!(AllowedIdentity::from_flags(&[], &names(&["not a name"]), "").is_err());
    }
}
