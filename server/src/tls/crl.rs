//! `--client-crl-file` / `--peer-crl-file`: certificate revocation lists checked as etcd
//! checks them. etcd reads the file again for every connection that presents certificates and
//! refuses it when the serial number of any presented certificate is listed, so a revocation
//! takes effect for new connections without a restart. It does not check the list's signature
//! (the file is the operator's own configuration), nor whether the list is current.
//!
//! oxcd does the same, parsing with rustls-webpki's CRL support, and reads the file again only
//! when its modification time or size changed. It accepts PEM (`X509 CRL` blocks, one or more)
//! as well as etcd's DER, and refuses an unreadable list at start rather than at every
//! handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use parking_lot::Mutex;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use webpki::{CertRevocationList, OwnedCertRevocationList};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// A revocation list file, re-read when it changes.
pub struct RevocationList {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

struct Loaded {
    /// The modification time and size the lists were read at.
    stamp: (SystemTime, u64),
    lists: Arc<Vec<CertRevocationList<'static>>>,
}

impl RevocationList {
    /// Reads `path`, refusing a file that is missing or holds no valid list.
    pub fn open(path: &Path, flag: &str) -> anyhow::Result<RevocationList> {
        let (stamp, lists) = read(path).with_context(|| format!("--{flag} {}", path.display()))?;
        Ok(RevocationList {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp,
                lists: Arc::new(lists),
            }),
        })
    }

    /// Whether any certificate of `chain` is revoked (named as etcd's error names it), or the
    /// file can no longer be read (the connection is then refused, as etcd refuses it).
    pub fn check(&self, chain: &[&CertificateDer<'_>]) -> Result<(), Refusal> {
        let lists = self.current().map_err(Refusal::Unreadable)?;
        for cert in chain {
            let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| {
                Refusal::Unreadable(format!("cannot parse a presented certificate: {e}"))
            })?;
            // DER content bytes, as webpki keys the revoked serials.
            let serial = parsed.tbs_certificate.raw_serial();
            for list in lists.iter() {
                match list.find_serial(serial) {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        return Err(Refusal::Revoked(format!(
                            "transport: certificate serial {} revoked",
                            hex(magnitude(serial))
                        )))
                    }
                    Err(e) => {
                        return Err(Refusal::Unreadable(format!(
                            "revocation list {}: {e}",
                            self.path.display()
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    fn current(&self) -> Result<Arc<Vec<CertRevocationList<'static>>>, String> {
        let mut loaded = self.loaded.lock();
        let stamp = stamp(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if stamp != loaded.stamp {
            let (stamp, lists) = read(&self.path).map_err(|e| format!("{e:#}"))?;
            *loaded = Loaded {
                stamp,
                lists: Arc::new(lists),
            };
        }
        Ok(loaded.lists.clone())
    }
}

/// Why [`RevocationList::check`] refused a chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Revoked(String),
    Unreadable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Revoked(why) | Refusal::Unreadable(why) => f.write_str(why),
        }
    }
}

fn stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

fn read(path: &Path) -> anyhow::Result<((SystemTime, u64), Vec<CertRevocationList<'static>>)> {
    // The stamp is taken first: a write racing the read is seen as a change next time.
    let stamp = stamp(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ders: Vec<CertificateRevocationListDer<'static>> = if bytes.starts_with(b"-----") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .with_context(|| format!("invalid PEM in {}", path.display()))?
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    if ders.is_empty() {
        anyhow::bail!("{} holds no certificate revocation list", path.display());
    }
    let lists = ders
        .iter()
        .map(|der| {
            OwnedCertRevocationList::from_der(der)
                .map(CertRevocationList::from)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{} is not a valid certificate revocation list: {e}",
                        path.display()
                    )
                })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((stamp, lists))
}

/// A DER serial number without the zero byte that keeps a positive number's top bit clear, as
/// Go prints it in its error (big.Int.Bytes).
fn magnitude(der_integer: &[u8]) -> &[u8] {
    match der_integer {
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};

    use super::*;

    struct Fixture {
        issuer: Issuer<'static, KeyPair>,
        certs: Vec<CertificateDer<'static>>,
    }

    /// A CA and two certificates it signed, serials 0x0100 and 0x80 (DER needs a leading zero).
    fn fixture() -> Fixture {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = Issuer::new(ca, KeyPair::generate().unwrap());
        let certs = [vec![1u8, 0], vec![0x80]]
            .into_iter()
            .map(|serial| {
                let mut params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
                params.serial_number = Some(SerialNumber::from_slice(&serial));
                params
                    .signed_by(&KeyPair::generate().unwrap(), &issuer)
                    .unwrap()
                    .der()
                    .clone()
            })
            .collect();
        Fixture { issuer, certs }
    }

    fn crl(issuer: &Issuer<'_, KeyPair>, revoked: &[u8]) -> rcgen::CertificateRevocationList {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(revoked),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
    }

    #[test]
    fn a_listed_serial_is_refused_in_der_and_pem_and_changes_are_seen() {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.der");
        std::fs::write(&path, crl(&f.issuer, &[1, 0]).der()).unwrap();
        let list = RevocationList::open(&path, "client-crl-file").unwrap();
        assert_eq!(
            list.check(&[&f.certs[0]]).unwrap_err(),
            Refusal::Revoked("transport: certificate serial 0100 revoked".into())
        );
        assert!(list.check(&[&f.certs[1]]).is_ok());
        // Any certificate of the presented chain counts.
        assert!(list.check(&[&f.certs[1], &f.certs[0]]).is_err());

        // A new list (PEM this time, longer so the size differs) is read at the next check.
        let pem = crl(&f.issuer, &[0x80]).pem().unwrap();
        std::fs::write(&path, format!("{pem}\n")).unwrap();
        assert!(list.check(&[&f.certs[0]]).is_ok());
        assert_eq!(
            list.check(&[&f.certs[1]]).unwrap_err(),
            Refusal::Revoked("transport: certificate serial 80 revoked".into())
        );

        // A list that goes missing refuses every certificate.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            list.check(&[&f.certs[1]]),
            Err(Refusal::Unreadable(_))
        ));
    }

    #[test]
    fn an_unreadable_list_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = RevocationList::open(&dir.path().join("none"), "peer-crl-file");
        assert!(missing
            .err()
            .unwrap()
            .to_string()
            .contains("--peer-crl-file"));
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, b"not a list").unwrap();
        assert!(RevocationList::open(&garbage, "client-crl-file").is_err());
    }
}
