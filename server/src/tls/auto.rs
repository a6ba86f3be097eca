//! `--auto-tls` / `--peer-auto-tls`: a self-signed certificate made at start, as etcd's
//! `transport.SelfCert` makes it: `<data-dir>/fixtures/client` (or `peer`) holds `cert.pem` and
//! `key.pem` (0600), reused when both exist; subject O=etcd, a CA certificate (etcd's has
//! CA:TRUE) with key usages keyEncipherment, digitalSignature and cRLSign, extended key usage
//! serverAuth, valid from now for `--self-signed-cert-validity` years of 365 days, and the
//! listen URLs' hosts as IP or DNS subject alternative names.
//!
//! etcd's key is ECDSA P-521; ring (rustls' and rcgen's provider here) signs with P-256 and
//! P-384 only, so the key is P-256, which every TLS client takes.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// The certificate and key files for `urls`, made under `dir` unless already there.
pub fn self_cert(
    dir: &Path,
    urls: &[String],
    validity_years: u32,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if validity_years == 0 {
        // etcd's words.
        bail!("selfSignedCertValidity is invalid,it should be greater than 0");
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create cert directory {}", dir.display()))?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    let hosts = urls
        .iter()
        .map(|u| {
            let parsed = url::Url::parse(u).with_context(|| format!("invalid URL {u:?}"))?;
            let host = parsed
                .host_str()
                .with_context(|| format!("URL {u:?} has no host"))?;
            Ok(host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut params = CertificateParams::new(hosts).context("invalid host for a certificate")?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "etcd");
    params.distinguished_name = subject;
    let mut serial = [0u8; 16];
    fill_random(&mut serial)?;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + Duration::days(365 * i64::from(validity_years));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    tracing::warn!(not_after = %params.not_after, dir = %dir.display(), "automatically generate certificates");
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    let mut key_file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    key_file.write_all(key.serialize_pem().as_bytes())?;
    key_file.sync_all()?;
    Ok((cert_path, key_path))
}

/// Random bytes from ring's system source (the certificate serial, 128 bits as etcd's).
fn fill_random(buf: &mut [u8]) -> anyhow::Result<()> {
    use tokio_rustls::rustls::crypto::ring::default_provider;
    default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| anyhow::anyhow!("no system randomness for a certificate serial"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_for_the_listen_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = dir.path().join("fixtures/client");
        let urls = [
            "https://127.0.0.1:2379".to_string(),
            "https://[::1]:2379".to_string(),
            "https://etcd.example:2379".to_string(),
        ];
        let (cert, key) = self_cert(&fixtures, &urls, 2).unwrap();
        let pem = std::fs::read(&cert).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, parsed) = X509Certificate::from_der(&der).unwrap();
        assert!(parsed.is_ca());
        let sans = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 3);
        let days = (parsed.validity().not_after.timestamp()
            - parsed.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 730);
        assert!(
            parsed
                .extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&fixtures), 0o700);

        // A second start keeps the files.
        let again = self_cert(&fixtures, &urls, 2).unwrap();
        assert_eq!(again, (cert.clone(), key));
        assert_eq!(std::fs::read(&cert).unwrap(), pem);
        let zero = self_cert(&dir.path().join("other"), &urls, 0).unwrap_err();
        assert!(zero.to_string().contains("should be greater than 0"));
    }
}
