//! `pki init`: the certificates kubeadm makes for a stacked etcd, for every member of a cluster,
//! so a TLS cluster (client and peer certificates required) can be started from its output
//! alone. As kubeadm's `init phase certs` (cmd/kubeadm/app/phases/certs, util/pkiutil):
//!
//! - `ca.crt`/`ca.key`: CN etcd-ca (also its one DNS name), CA:TRUE, key usages
//!   digitalSignature, keyEncipherment, keyCertSign; valid from 5 minutes ago (kubeadm's
//!   backdate against clock skew) for 10 years.
//! - per member `<member>/server.*` and `<member>/peer.*`: CN the member's name; DNS names the
//!   member's name and localhost, IPs 127.0.0.1 and ::1, plus the member's address (IP or DNS
//!   name); usages digitalSignature, keyEncipherment, extended serverAuth and clientAuth.
//! - `healthcheck-client.*` (CN kube-etcd-healthcheck-client) and `apiserver-etcd-client.*`
//!   (CN kube-apiserver-etcd-client): clientAuth only, no organization (kubeadm dropped
//!   system:masters from both in 1.29).
//! - Leaf certificates start when the CA does and end 365 days from now; serials are random in
//!   [1, 2^63), as kubeadm draws them; the authority key identifier names the CA's key.
//!
//! Keys are kubeadm's `encryptionAlgorithm` (`--encryption-algorithm`): RSA-2048 by default,
//! RSA-3072, RSA-4096, ECDSA-P256 or ECDSA-P384; PKCS#8 PEM, mode 0600. Existing files are never overwritten: an existing CA is reused to issue only what is
//! missing, as kubeadm reuses one.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::failure::{CtlResult, ExitCode, Failure};

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Writes a CA and, for each member, the server and peer certificates kubeadm writes for
    /// etcd, plus the healthcheck and kube-apiserver client certificates.
    #[command(
        long_about = "Writes into --dir what kubeadm writes for a stacked etcd:
  ca.crt, ca.key                            the etcd CA (CN etcd-ca, 10 years)
  <member>/server.crt, <member>/server.key  serving certificate (1 year)
  <member>/peer.crt, <member>/peer.key      peer certificate (1 year)
  healthcheck-client.crt, .key              client certificate, CN kube-etcd-healthcheck-client
  apiserver-etcd-client.crt, .key           client certificate, CN kube-apiserver-etcd-client
Server and peer certificates are for the member's name, its address, localhost, 127.0.0.1 and
::1, usable for serverAuth and clientAuth. Keys are --encryption-algorithm's (kubeadm's
encryptionAlgorithm, RSA-2048 by default), mode 0600; an existing CA keeps its own key.

Nothing that exists is overwritten: when ca.crt and ca.key are already in --dir, that CA is
reused and only the missing certificates are issued (run it again with more --members to add
members); an existing certificate and key pair is kept as it is. Delete the files to replace
them."
    )]
    Init(InitArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to write the certificates into (created if missing)
    #[arg(long)]
    dir: PathBuf,
    /// Members as name=address (an IP or a DNS name), comma separated: m1=10.0.0.1,m2=host2.example
    #[arg(long, value_delimiter = ',', required = true)]
    members: Vec<String>,
    /// The keys' type, as kubeadm's encryptionAlgorithm
    #[arg(long, default_value = "RSA-2048", value_parser = ["RSA-2048", "RSA-3072", "RSA-4096", "ECDSA-P256", "ECDSA-P384"])]
    encryption_algorithm: String,
}

/// kubeadm's `encryptionAlgorithm` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa(usize),
    EcdsaP256,
    EcdsaP384,
}

impl KeyType {
    fn parse(name: &str) -> Result<KeyType, String> {
        match name {
            "RSA-2048" => Ok(KeyType::Rsa(2048)),
            "RSA-3072" => Ok(KeyType::Rsa(3072)),
            "RSA-4096" => Ok(KeyType::Rsa(4096)),
            "ECDSA-P256" => Ok(KeyType::EcdsaP256),
            "ECDSA-P384" => Ok(KeyType::EcdsaP384),
            _ => Err(format!("--encryption-algorithm: unknown {name:?}")),
        }
    }

    fn generate(self) -> anyhow::Result<KeyPair> {
        match self {
            KeyType::EcdsaP256 => Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?),
            KeyType::EcdsaP384 => Ok(KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?),
            KeyType::Rsa(bits) => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)?;
                let der = key.to_pkcs8_der()?;
                Ok(KeyPair::from_pkcs8_der_and_sign_algo(
                    &PrivatePkcs8KeyDer::from(der.as_bytes()),
                    &PKCS_RSA_SHA256,
                )?)
            }
        }
    }
}

pub fn run(command: PkiCommand) -> CtlResult {
    match command {
        PkiCommand::Init(args) => {
            let members = args
                .members
                .iter()
                .map(|m| Member::parse(m))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::new(ExitCode::BadArgs, e))?;
            let key_type = KeyType::parse(&args.encryption_algorithm)
                .map_err(|e| Failure::new(ExitCode::BadArgs, e))?;
            init(&args.dir, &members, key_type, &mut std::io::stdout())?;
            Ok(())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    name: String,
    address: String,
}

impl Member {
    fn parse(spec: &str) -> Result<Member, String> {
        let (name, address) = spec
            .split_once('=')
            .ok_or_else(|| format!("--members: {spec:?} is not name=address"))?;
        // The name is a directory and a DNS name of the member's certificates.
        let is_dns_name = |s: &str| matches!(ServerName::try_from(s), Ok(ServerName::DnsName(_)));
        if !is_dns_name(name) {
            return Err(format!(
                "--members: member name {name:?} must be a DNS name (letters, digits, '-', '.')"
            ));
        }
        if address.parse::<IpAddr>().is_err() && !is_dns_name(address) {
            return Err(format!(
                "--members: address {address:?} of {name} is neither an IP address nor a DNS name"
            ));
        }
        Ok(Member {
            name: name.to_string(),
            address: address.to_string(),
        })
    }
}

/// What one certificate is: its files (without extension), subject and usages.
struct Leaf {
    base: String,
    common_name: String,
    /// Subject alternative names; server and peer certificates only.
    sans: Vec<String>,
    server_auth: bool,
}

fn leaves(members: &[Member]) -> Vec<Leaf> {
    let mut leaves = Vec::new();
    for m in members {
        for kind in ["server", "peer"] {
            leaves.push(Leaf {
                base: format!("{}/{kind}", m.name),
                common_name: m.name.clone(),
                sans: sans(m),
                server_auth: true,
            });
        }
    }
    for (base, cn) in [
        ("healthcheck-client", "kube-etcd-healthcheck-client"),
        ("apiserver-etcd-client", "kube-apiserver-etcd-client"),
    ] {
        leaves.push(Leaf {
            base: base.to_string(),
            common_name: cn.to_string(),
            sans: Vec::new(),
            server_auth: false,
        });
    }
    leaves
}

/// kubeadm's etcd SANs: DNS names sorted and deduplicated, then the IPs in order, deduplicated.
fn sans(m: &Member) -> Vec<String> {
    let mut dns = vec![m.name.clone(), "localhost".to_string()];
    let mut ips = vec!["127.0.0.1".to_string(), "::1".to_string()];
    match m.address.parse::<IpAddr>() {
        Ok(_) => ips.insert(0, m.address.clone()),
        Err(_) => dns.push(m.address.clone()),
    }
    dns.sort();
    dns.dedup();
    let mut unique_ips: Vec<String> = Vec::new();
    for ip in ips {
        let parsed: IpAddr = ip.parse().expect("checked above");
        if !unique_ips
            .iter()
            .any(|u| u.parse::<IpAddr>().ok() == Some(parsed))
        {
            unique_ips.push(ip);
        }
    }
    dns.into_iter().chain(unique_ips).collect()
}

/// Which of a certificate's two files exist.
fn existing(dir: &Path, base: &str) -> anyhow::Result<bool> {
    let (crt, key) = paths(dir, base);
    match (crt.exists(), key.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => bail!("{} exists without its key {}", crt.display(), key.display()),
        (false, true) => bail!(
            "{} exists without its certificate {}",
            key.display(),
            crt.display()
        ),
    }
}

fn paths(dir: &Path, base: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{base}.crt")),
        dir.join(format!("{base}.key")),
    )
}

fn init(
    dir: &Path,
    members: &[Member],
    key_type: KeyType,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    mkdir(dir)?;
    let leaves = leaves(members);
    let (issuer, ca_not_before) = if existing(dir, "ca")? {
        writeln!(out, "[certs] Using the existing \"ca\" certificate and key")?;
        load_ca(dir)?
    } else {
        writeln!(out, "[certs] Generating \"ca\" certificate and key")?;
        new_ca(dir, key_type)?
    };
    for leaf in &leaves {
        if existing(dir, &leaf.base)? {
            writeln!(
                out,
                "[certs] Using the existing \"{}\" certificate and key",
                leaf.base
            )?;
            continue;
        }
        writeln!(
            out,
            "[certs] Generating \"{}\" certificate and key",
            leaf.base
        )?;
        if !leaf.sans.is_empty() {
            writeln!(
                out,
                "[certs] {} certificate is signed for {}",
                leaf.base,
                leaf.sans.join(", ")
            )?;
        }
        if let Some(parent) = Path::new(&leaf.base).parent() {
            mkdir(&dir.join(parent))?;
        }
        issue(dir, leaf, &issuer, ca_not_before, key_type)?;
    }
    Ok(())
}

fn mkdir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn new_ca(
    dir: &Path,
    key_type: KeyType,
) -> anyhow::Result<(Issuer<'static, KeyPair>, OffsetDateTime)> {
    let mut params = CertificateParams::new(vec!["etcd-ca".to_string()])?;
    params.distinguished_name = common_name("etcd-ca");
    params.serial_number = Some(serial()?);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(3650);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    let key = key_type.generate()?;
    let cert = params.self_signed(&key)?;
    write_pair(dir, "ca", &cert.pem(), &key)?;
    let not_before = params.not_before;
    Ok((Issuer::new(params, key), not_before))
}

fn load_ca(dir: &Path) -> anyhow::Result<(Issuer<'static, KeyPair>, OffsetDateTime)> {
    let (crt, key) = paths(dir, "ca");
    let pem =
        std::fs::read_to_string(&crt).with_context(|| format!("cannot read {}", crt.display()))?;
    let key_pem =
        std::fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
    let key = KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{} is not a private key rcgen can sign with", key.display()))?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .with_context(|| format!("{} holds no certificate", crt.display()))?;
    let (_, parsed) =
        X509Certificate::from_der(&der).map_err(|e| anyhow::anyhow!("{}: {e}", crt.display()))?;
    if !parsed.is_ca() {
        bail!("{} is not a CA certificate", crt.display());
    }
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        bail!(
            "{} is not the key of {}",
            paths(dir, "ca").1.display(),
            crt.display()
        );
    }
    let not_before = OffsetDateTime::from_unix_timestamp(parsed.validity().not_before.timestamp())?;
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .with_context(|| format!("cannot issue certificates with {}", crt.display()))?;
    Ok((issuer, not_before))
}

fn issue(
    dir: &Path,
    leaf: &Leaf,
    issuer: &Issuer<'_, KeyPair>,
    not_before: OffsetDateTime,
    key_type: KeyType,
) -> anyhow::Result<()> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = leaf
        .sans
        .iter()
        .map(|san| match san.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(san.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.distinguished_name = common_name(&leaf.common_name);
    params.serial_number = Some(serial()?);
    params.not_before = not_before;
    params.not_after = OffsetDateTime::now_utc() + Duration::days(365);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if leaf.server_auth {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    let key = key_type.generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write_pair(dir, &leaf.base, &cert.pem(), &key)
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name
}

/// kubeadm's serials: uniform in [1, 2^63 - 1).
fn serial() -> anyhow::Result<SerialNumber> {
    use rustls::crypto::ring::default_provider;
    loop {
        let mut bytes = [0u8; 8];
        default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("no system randomness for a certificate serial"))?;
        let n = u64::from_be_bytes(bytes) >> 1;
        if n != 0 && n != i64::MAX as u64 {
            return Ok(SerialNumber::from(n));
        }
    }
}

/// The key (0600, created new: never over an existing file) and then the certificate, in the
/// order kubeadm writes them.
fn write_pair(dir: &Path, base: &str, cert_pem: &str, key: &KeyPair) -> anyhow::Result<()> {
    let (crt, key_path) = paths(dir, base);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("cannot create {}", key_path.display()))?;
    file.write_all(key.serialize_pem().as_bytes())?;
    file.sync_all()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&crt)
        .with_context(|| format!("cannot create {}", crt.display()))?;
    file.write_all(cert_pem.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use x509_parser::extensions::GeneralName;
    use x509_parser::public_key::PublicKey;

    use super::*;

    fn members(list: &[&str]) -> Vec<Member> {
        list.iter().map(|m| Member::parse(m).unwrap()).collect()
    }

    fn read(dir: &Path, base: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(dir.join(format!("{base}.crt"))).unwrap()
    }

    #[test]
    fn members_are_name_equals_address() {
        assert_eq!(
            Member::parse("m1=10.0.0.1").unwrap(),
            Member {
                name: "m1".into(),
                address: "10.0.0.1".into()
            }
        );
        assert!(Member::parse("m2=host2.example").is_ok());
        assert!(Member::parse("m3=::1").is_ok());
        for bad in ["m1", "../x=10.0.0.1", "m1=not an address", "=10.0.0.1"] {
            assert!(Member::parse(bad).is_err(), "{bad}");
        }
    }

    fn rsa_bits(cert: &X509Certificate<'_>) -> Option<usize> {
        match cert.public_key().parsed() {
            Ok(PublicKey::RSA(key)) => Some(key.key_size()),
            _ => None,
        }
    }

    #[test]
    fn writes_what_kubeadm_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        init(
            dir.path(),
            &members(&["m1=10.0.0.1", "m2=host2.example"]),
            KeyType::parse("RSA-2048").unwrap(),
            &mut out,
        )
        .unwrap();

        let ca = read(dir.path(), "ca");
        let (_, ca) = X509Certificate::from_der(&ca).unwrap();
        assert!(ca.is_ca());
        assert_eq!(ca.subject().to_string(), "CN=etcd-ca");
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.digital_signature() && ku.key_encipherment());
        let ca_days =
            (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / 86_400;
        assert_eq!(ca_days, 3650);
        assert_eq!(rsa_bits(&ca), Some(2048));

        let server = read(dir.path(), "m2/server");
        let (_, server) = X509Certificate::from_der(&server).unwrap();
        assert_eq!(server.subject().to_string(), "CN=m2");
        assert_eq!(server.issuer().to_string(), "CN=etcd-ca");
        assert!(!server.is_ca());
        let names: Vec<String> = server
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(&[a, b, c, d]) => IpAddr::from([a, b, c, d]).to_string(),
                GeneralName::IPAddress(ip) => {
                    IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            ["host2.example", "localhost", "m2", "127.0.0.1", "::1"]
        );
        let eku = server.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let ku = server.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        assert_eq!(server.validity().not_before, ca.validity().not_before);
        let days = (server.validity().not_after.timestamp()
            - OffsetDateTime::now_utc().unix_timestamp())
            / 86_400;
        assert!((364..=365).contains(&days), "{days}");
        assert_eq!(rsa_bits(&server), Some(2048));
        assert!(server.verify_signature(Some(ca.public_key())).is_ok());

        let m1_peer = read(dir.path(), "m1/peer");
        let (_, m1_peer) = X509Certificate::from_der(&m1_peer).unwrap();
        let sans = m1_peer.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 5);
        assert!(sans
            .general_names
            .contains(&GeneralName::IPAddress(&[10, 0, 0, 1])));

        for (base, cn) in [
            ("healthcheck-client", "CN=kube-etcd-healthcheck-client"),
            ("apiserver-etcd-client", "CN=kube-apiserver-etcd-client"),
        ] {
            let der = read(dir.path(), base);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(cert.subject().to_string(), cn);
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && !eku.server_auth);
            assert!(cert.subject_alternative_name().unwrap().is_none());
        }
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        for key in [
            "ca.key",
            "m1/server.key",
            "m2/peer.key",
            "healthcheck-client.key",
        ] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        assert_eq!(mode("ca.crt"), 0o644);
    }

    #[test]
    fn an_existing_ca_is_reused_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        init(
            dir.path(),
            &members(&["m1=10.0.0.1"]),
            KeyType::EcdsaP384,
            &mut Vec::new(),
        )
        .unwrap();
        let ca_before = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let m1_before = std::fs::read(dir.path().join("m1/server.crt")).unwrap();

        let mut out = Vec::new();
        init(
            dir.path(),
            &members(&["m1=10.0.0.1", "m2=10.0.0.2"]),
            KeyType::Rsa(3072),
            &mut out,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("Using the existing \"ca\""), "{out}");
        assert!(out.contains("Using the existing \"m1/server\""), "{out}");
        assert!(out.contains("Generating \"m2/peer\""), "{out}");
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca_before);
        assert_eq!(
            std::fs::read(dir.path().join("m1/server.crt")).unwrap(),
            m1_before
        );
        // m2's certificate is signed by the same (ECDSA P-384) CA, with a key of the type
        // asked for this time.
        let ca = read(dir.path(), "ca");
        let (_, ca) = X509Certificate::from_der(&ca).unwrap();
        assert!(matches!(
            ca.public_key().parsed(),
            Ok(PublicKey::EC(point)) if point.key_size() == 384
        ));
        let m2 = read(dir.path(), "m2/server");
        let (_, m2) = X509Certificate::from_der(&m2).unwrap();
        assert!(m2.verify_signature(Some(ca.public_key())).is_ok());
        assert_eq!(rsa_bits(&m2), Some(3072));

        // A CA certificate whose key is gone cannot issue anything.
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = init(
            dir.path(),
            &members(&["m3=10.0.0.3"]),
            KeyType::EcdsaP256,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("without its key"), "{err}");
    }
}
