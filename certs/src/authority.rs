//! The trust domain's certificate authority and leaf issuance.
//!
//! Owns `CertificateAuthority` (generate, load, save), `LeafRequest` and `IssuedLeaf`. Every certificate it
//! signs is an ECDSA P-256 leaf with exactly one URI SAN (the identity, always in the CA's own trust
//! domain), serverAuth + clientAuth, and never the CA flag. The CA's private key only leaves this module
//! as PEM for the operator to store; it is never written with more than owner-only permissions.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::error::{quote, CertError};
use crate::files::{read_pem, write_atomic, CERT_MODE, KEY_MODE};
use crate::identity::{validate_trust_domain, Identity};
use crate::inspect::{
    certs_from_pem, inspect_pem, is_ca, key_from_pem, parse_der, rfc3339, CertInfo, SubjectAltNames,
};
use crate::provider::ring_provider;
use crate::verify::CaTrust;

/// Default lifetime of a leaf certificate.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest a leaf may live unless the issuer allows more (a year and a month, the CA/Browser Forum's
/// limit for server certificates): a stolen key is useful for at most this long.
pub const DEFAULT_MAX_LEAF_LIFETIME: Duration = Duration::from_secs(397 * 24 * 60 * 60);
/// The longest a leaf may ever live, whatever the issuer allows.
pub const LEAF_LIFETIME_HARD_CAP: Duration = Duration::from_secs(825 * 24 * 60 * 60);
/// Default lifetime of a CA certificate (ten years).
pub const DEFAULT_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Certificates start this long before "now", so peers whose clocks lag a little accept them at once.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// File names used by `CertificateAuthority::write_to`.
const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// The trust domain's CA: signs every leaf of the domain.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    trust_domain: String,
    not_after: i64,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

/// What to put in a new leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    /// The identity, carried as the single URI SAN.
    pub identity: Identity,
    /// How long the certificate is valid, counted from now (or from `not_before` when set).
    pub lifetime: Duration,
    /// DNS SANs, so HTTPS clients can check a host name (the admin API).
    pub dns_names: Vec<String>,
    /// IP address SANs, for HTTPS clients that connect by address.
    pub ip_addresses: Vec<IpAddr>,
    /// Start of the validity period; `None` means now minus a small allowance for clock skew.
    pub not_before: Option<SystemTime>,
}

impl LeafRequest {
    /// A request for `identity`, valid from now for `lifetime`, with no DNS or IP SANs.
    pub fn new(identity: Identity, lifetime: Duration) -> Self {
        LeafRequest {
            identity,
            lifetime,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            not_before: None,
        }
    }

    /// Adds a DNS SAN.
    pub fn with_dns_name(mut self, name: impl Into<String>) -> Self {
        self.dns_names.push(name.into());
        self
    }

    /// Adds an IP address SAN.
    pub fn with_ip_address(mut self, ip: IpAddr) -> Self {
        self.ip_addresses.push(ip);
        self
    }

    /// Makes the certificate valid from `not_before` (for `lifetime`), e.g. in the past to test expiry.
    pub fn valid_from(mut self, not_before: SystemTime) -> Self {
        self.not_before = Some(not_before);
        self
    }
}

/// A freshly issued leaf: certificate and private key, PEM-encoded.
#[derive(Clone)]
pub struct IssuedLeaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl IssuedLeaf {
    /// Writes the key (mode 0600) then the certificate (0644), each atomically (temporary file + rename),
    /// so a process reloading them never reads half a file.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        write_atomic(key_path, self.key_pem.as_bytes(), KEY_MODE)?;
        write_atomic(cert_path, self.cert_pem.as_bytes(), CERT_MODE)
    }

    /// What the certificate says.
    pub fn info(&self) -> Result<CertInfo, CertError> {
        inspect_pem(&self.cert_pem)
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, CertError> {
        certs_from_pem(&self.cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| CertError::Pem("no CERTIFICATE block found".into()))
    }
}

impl CertificateAuthority {
    /// Creates a self-signed ECDSA P-256 CA for `trust_domain`, valid from now for `lifetime`.
    pub fn generate(trust_domain: &str, lifetime: Duration) -> Result<Self, CertError> {
        validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Meridian CA {trust_domain}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Meridian");
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        // Path length 0: the CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = to_offset(now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now))?;
        params.not_after = to_offset(add_lifetime(now, lifetime)?)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();
        let key_pem = key.serialize_pem();
        let not_after = params.not_after.unix_timestamp();
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            cert_der,
            key_pem,
            trust_domain: trust_domain.to_string(),
            not_after,
        })
    }

    /// Loads a CA from its certificate and key files.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let cert_pem = read_pem(cert)?;
        refuse_if_readable_by_others(key)?;
        let key_pem = read_pem(key)?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Builds a CA from PEM text: the first certificate must be a CA carrying a `spiffe://<td>` URI SAN,
    /// and the key (PKCS#8) must be its private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let cert_der = certs_from_pem(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| CertError::Pem("no CERTIFICATE block found".into()))?;
        let parsed = parse_der(&cert_der)?;
        if !is_ca(&parsed)? {
            return Err(CertError::NotCa);
        }
        let trust_domain = ca_trust_domain(&SubjectAltNames::of(&parsed)?.uris)?;
        let key = KeyPair::try_from(&key_from_pem(key_pem)?).map_err(|e| {
            CertError::Pem(format!(
                "CA key is not a usable PKCS#8 ECDSA/Ed25519 key: {e}"
            ))
        })?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(CertError::KeyMismatch);
        }
        let not_after = parsed.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        let key_pem = issuer.key().serialize_pem();
        Ok(CertificateAuthority {
            issuer,
            cert_pem: pem_of(&cert_der),
            cert_der,
            key_pem,
            trust_domain,
            not_after,
        })
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's private key (PKCS#8 PEM). Store it with owner-only permissions.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// What the CA certificate says.
    pub fn info(&self) -> Result<CertInfo, CertError> {
        inspect_pem(&self.cert_pem)
    }

    /// The verification side of this CA.
    pub fn trust(&self) -> Result<CaTrust, CertError> {
        CaTrust::from_der(vec![self.cert_der.clone()])
    }

    /// Writes `ca.pem` (0644) and `ca.key` (0600, created with that mode) into `dir` (created 0700 if
    /// missing), each atomically. Existing files are replaced: callers decide whether replacing a CA is
    /// wanted (losing a CA key strands every certificate it signed). Returns the certificate and key paths.
    pub fn write_to(&self, dir: &Path) -> Result<(PathBuf, PathBuf), CertError> {
        create_private_dir(dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        write_atomic(&key_path, self.key_pem.as_bytes(), KEY_MODE)?;
        write_atomic(&cert_path, self.cert_pem.as_bytes(), CERT_MODE)?;
        Ok((cert_path, key_path))
    }

    /// Signs a new leaf for `req.identity`, which must belong to this CA's trust domain.
    pub fn issue(&self, req: &LeafRequest) -> Result<IssuedLeaf, CertError> {
        req.identity.validate()?;
        if req.identity.trust_domain != self.trust_domain {
            return Err(CertError::WrongTrustDomain {
                expected: self.trust_domain.clone(),
                found: req.identity.trust_domain.clone(),
            });
        }
        if req.lifetime.is_zero() {
            return Err(CertError::Invalid(
                "leaf lifetime must be longer than zero".into(),
            ));
        }
        if req.lifetime > LEAF_LIFETIME_HARD_CAP {
            return Err(CertError::Invalid(format!(
                "leaf lifetime of {} days exceeds the hard cap of {} days",
                req.lifetime.as_secs() / 86_400,
                LEAF_LIFETIME_HARD_CAP.as_secs() / 86_400
            )));
        }
        let role = req.identity.role();
        let names_hosts = !req.dns_names.is_empty() || !req.ip_addresses.is_empty();
        if names_hosts && !role.may_name_hosts() {
            return Err(CertError::Invalid(format!(
                "a {role} certificate may not carry DNS or IP SANs (only coordinators and gateways serve \
                 HTTPS under a host name)"
            )));
        }
        let now = SystemTime::now();
        let (not_before, not_after) = match req.not_before {
            Some(start) => (start, add_lifetime(start, req.lifetime)?),
            None => (
                now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now),
                add_lifetime(now, req.lifetime)?,
            ),
        };
        let mut not_after = to_offset(not_after)?;
        if not_after.unix_timestamp() > self.not_after {
            tracing::warn!(
                identity = %req.identity,
                ca_not_after = %rfc3339(self.not_after),
                "leaf would outlive the CA; shortening it to end with the CA"
            );
            not_after = OffsetDateTime::from_unix_timestamp(self.not_after)
                .map_err(|e| CertError::Invalid(format!("CA expiry out of range: {e}")))?;
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{} {}", req.identity.role(), req.identity.name()),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Meridian");
        let mut sans = vec![SanType::URI(req.identity.uri().try_into()?)];
        for name in &req.dns_names {
            rustls_pki_types::DnsName::try_from(name.as_str()).map_err(|_| {
                CertError::Invalid(format!("DNS SAN {} is not a valid DNS name", quote(name)))
            })?;
            sans.push(SanType::DnsName(name.as_str().try_into()?));
        }
        sans.extend(req.ip_addresses.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(not_before)?;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedLeaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The trust domain named by a CA's `spiffe://<td>` URI SAN (exactly one such SAN, no path).
pub(crate) fn ca_trust_domain(uris: &[String]) -> Result<String, CertError> {
    let domains: Vec<&str> = uris
        .iter()
        .filter_map(|uri| uri.strip_prefix("spiffe://"))
        .collect();
    match domains.as_slice() {
        [td] => {
            validate_trust_domain(td)?;
            Ok(td.to_string())
        }
        [] => Err(CertError::Invalid(
            "CA certificate has no spiffe://<trust-domain> URI SAN naming its trust domain".into(),
        )),
        more => Err(CertError::Invalid(format!(
            "CA certificate has {} spiffe:// URI SANs, expected exactly one",
            more.len()
        ))),
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    const LINE: usize = 64;
    let encoded = base64_encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in encoded.as_bytes().chunks(LINE) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn add_lifetime(start: SystemTime, lifetime: Duration) -> Result<SystemTime, CertError> {
    start
        .checked_add(lifetime)
        .ok_or_else(|| CertError::Invalid(format!("lifetime of {lifetime:?} is out of range")))
}

/// Converts to the certificate time type, refusing times X.509 cannot express (after year 9999).
fn to_offset(t: SystemTime) -> Result<OffsetDateTime, CertError> {
    let secs = crate::inspect::unix_seconds(t);
    const YEAR_10000: i64 = 253_402_300_800;
    if !(0..YEAR_10000).contains(&secs) {
        return Err(CertError::Invalid(format!(
            "validity time {secs} (unix seconds) is outside what a certificate can express"
        )));
    }
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| CertError::Invalid(format!("validity time out of range: {e}")))
}

/// A random positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    ring_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertError::Generate("the system random generator failed".into()))?;
    // Positive (top bit clear) and minimal-length DER (first byte non-zero).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| CertError::io(dir, e))
}

/// Refuses a private key file that group or others may access (see [`loose_key_mode`]): a key anyone else on
/// the host could read is not one to trust.
pub(crate) fn refuse_if_readable_by_others(path: &Path) -> Result<(), CertError> {
    match crate::files::loose_key_mode(path) {
        Some(mode) => Err(CertError::LooseKeyFile {
            path: path.to_path_buf(),
            mode,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn generated_ca_round_trips_through_pem() {
        let ca = CertificateAuthority::generate("example.org", DEFAULT_CA_LIFETIME).unwrap();
        assert_eq!(ca.trust_domain(), "example.org");
        let info = ca.info().unwrap();
        assert!(info.is_ca);
        assert_eq!(info.uris, vec!["spiffe://example.org".to_string()]);
        assert_eq!(info.identity, None);
        assert!(
            info.subject.contains("CN=Meridian CA example.org"),
            "{}",
            info.subject
        );
        assert_eq!(info.serial.len(), 32);

        let again = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.trust_domain(), "example.org");
        assert_eq!(
            again.cert_pem(),
            ca.cert_pem(),
            "re-encoded PEM is identical"
        );
        // Leaves signed by the reloaded CA chain to the original certificate.
        let leaf = again
            .issue(&LeafRequest::new(
                Identity::coordinator("example.org", "c1").unwrap(),
                DEFAULT_LEAF_LIFETIME,
            ))
            .unwrap();
        let info = leaf.info().unwrap();
        assert_eq!(info.issuer, ca.info().unwrap().subject);
    }

    #[test]
    fn from_pem_refuses_mismatched_key_and_leaf_certificates() {
        let ca = CertificateAuthority::generate("example.org", DEFAULT_CA_LIFETIME).unwrap();
        let other = CertificateAuthority::generate("example.org", DEFAULT_CA_LIFETIME).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem()),
            Err(CertError::KeyMismatch)
        ));
        let leaf = ca
            .issue(&LeafRequest::new(
                Identity::operator("example.org", "alice").unwrap(),
                DEFAULT_LEAF_LIFETIME,
            ))
            .unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(CertError::NotCa)
        ));
        assert!(CertificateAuthority::from_pem("junk", ca.key_pem()).is_err());
        assert!(CertificateAuthority::from_pem(ca.cert_pem(), "junk").is_err());
    }

    #[test]
    fn issue_refuses_bad_requests() {
        let ca = CertificateAuthority::generate("example.org", DEFAULT_CA_LIFETIME).unwrap();
        let id = Identity::coordinator("example.org", "c1").unwrap();
        let foreign = Identity::coordinator("other.org", "c1").unwrap();
        let err = ca
            .issue(&LeafRequest::new(foreign, DEFAULT_LEAF_LIFETIME))
            .unwrap_err();
        assert!(matches!(err, CertError::WrongTrustDomain { .. }), "{err}");
        assert!(ca
            .issue(&LeafRequest::new(id.clone(), Duration::ZERO))
            .is_err());
        assert!(ca
            .issue(&LeafRequest::new(id.clone(), Duration::MAX))
            .is_err());
        let bad_dns =
            LeafRequest::new(id.clone(), DEFAULT_LEAF_LIFETIME).with_dns_name("not a name");
        assert!(ca.issue(&bad_dns).is_err());
        let mut hand_made = LeafRequest::new(id, DEFAULT_LEAF_LIFETIME);
        hand_made.identity.trust_domain = "Example.org".into();
        assert!(ca.issue(&hand_made).is_err());
    }

    #[test]
    fn lifetimes_are_capped_and_host_names_are_for_servers_only() {
        let ca = CertificateAuthority::generate("example.org", DEFAULT_CA_LIFETIME).unwrap();
        let coordinator = Identity::coordinator("example.org", "c1").unwrap();
        let at_cap = LeafRequest::new(coordinator.clone(), LEAF_LIFETIME_HARD_CAP);
        assert!(ca.issue(&at_cap).is_ok());
        let over = LeafRequest::new(
            coordinator.clone(),
            LEAF_LIFETIME_HARD_CAP + Duration::from_secs(1),
        );
        let err = ca.issue(&over).unwrap_err();
        assert!(err.to_string().contains("hard cap"), "{err}");

        let agent = Identity::agent("example.org", "eu", "a", "n1").unwrap();
        let operator = Identity::operator("example.org", "alice").unwrap();
        for id in [agent, operator] {
            let dns =
                LeafRequest::new(id.clone(), DEFAULT_LEAF_LIFETIME).with_dns_name("node.example");
            let err = ca.issue(&dns).unwrap_err();
            assert!(
                err.to_string().contains("may not carry DNS or IP SANs"),
                "{err}"
            );
            let ip = LeafRequest::new(id.clone(), DEFAULT_LEAF_LIFETIME)
                .with_ip_address("10.0.0.1".parse().unwrap());
            assert!(ca.issue(&ip).is_err());
            assert!(ca
                .issue(&LeafRequest::new(id, DEFAULT_LEAF_LIFETIME))
                .is_ok());
        }
        let gateway = Identity::gateway("example.org", "eu", "gw").unwrap();
        for id in [coordinator, gateway] {
            let req = LeafRequest::new(id, DEFAULT_LEAF_LIFETIME)
                .with_dns_name("api.example.org")
                .with_ip_address("10.0.0.1".parse().unwrap());
            assert!(ca.issue(&req).is_ok());
        }
    }

    #[test]
    fn leaf_carries_the_requested_names_and_is_clamped_to_the_ca() {
        let ca = CertificateAuthority::generate("example.org", Duration::from_secs(3600)).unwrap();
        let id = Identity::gateway("example.org", "eu", "gw1").unwrap();
        let leaf = ca
            .issue(
                &LeafRequest::new(id.clone(), Duration::from_secs(48 * 3600))
                    .with_dns_name("admin.example.org")
                    .with_ip_address("127.0.0.1".parse().unwrap()),
            )
            .unwrap();
        let info = leaf.info().unwrap();
        assert_eq!(info.identity, Some(id.clone()));
        assert_eq!(info.uris, vec![id.uri()]);
        assert_eq!(info.dns_names, vec!["admin.example.org".to_string()]);
        assert_eq!(
            info.ip_addresses,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(!info.is_ca);
        assert_eq!(info.not_after, ca.info().unwrap().not_after);
    }

    #[cfg(unix)]
    #[test]
    fn write_to_sets_modes_and_replaces_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = CertificateAuthority::generate("example.org", DEFAULT_CA_LIFETIME).unwrap();
        let (cert, key) = ca.write_to(&ca_dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        let loaded = CertificateAuthority::load(&cert, &key).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(mode(&ca_dir), 0o700);
        let replacement =
            CertificateAuthority::generate("example.org", DEFAULT_CA_LIFETIME).unwrap();
        replacement.write_to(&ca_dir).unwrap();
        let loaded = CertificateAuthority::load(&cert, &key).unwrap();
        assert_eq!(loaded.cert_pem(), replacement.cert_pem());
        assert_eq!(mode(&key), 0o600);
    }
}
