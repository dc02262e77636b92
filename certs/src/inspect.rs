//! Reading what a certificate says.
//!
//! Owns PEM decoding of certificates and keys, the X.509 parsing helpers shared with verification, and
//! `CertInfo`, the summary that `meridian certs inspect` prints. Inspection trusts nothing and decides
//! nothing: it never checks a signature or a validity period (verification does), and never panics on
//! malformed input.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::error::CertError;
use crate::identity::Identity;

/// What a certificate says, as the CLI prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=Meridian CA example.org`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of the validity period, unix seconds.
    pub not_before: i64,
    /// End of the validity period, unix seconds.
    pub not_after: i64,
    /// `not_before` as RFC 3339.
    pub not_before_rfc3339: String,
    /// `not_after` as RFC 3339.
    pub not_after_rfc3339: String,
    /// Whether basic constraints mark it as a CA.
    pub is_ca: bool,
    /// Every URI SAN.
    pub uris: Vec<String>,
    /// The Meridian identity, when there is exactly one URI SAN and it parses as one.
    pub identity: Option<Identity>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ip_addresses: Vec<IpAddr>,
}

impl CertInfo {
    /// Time left until `not_after`, or `None` once it has passed.
    pub fn expires_in(&self, now: SystemTime) -> Option<Duration> {
        let now = unix_seconds(now);
        u64::try_from(self.not_after.checked_sub(now)?)
            .ok()
            .filter(|secs| *secs > 0)
            .map(Duration::from_secs)
    }

    /// Whether `now` lies within the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        let now = unix_seconds(now);
        self.not_before <= now && now <= self.not_after
    }
}

/// Describes the first certificate of a PEM text.
pub fn inspect_pem(pem: &str) -> Result<CertInfo, CertError> {
    let certs = certs_from_pem(pem)?;
    // certs_from_pem never returns an empty list.
    match certs.first() {
        Some(first) => inspect_der(first),
        None => Err(CertError::Pem("no CERTIFICATE block found".into())),
    }
}

/// Describes a DER-encoded certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, CertError> {
    let cert = parse_der(der)?;
    let sans = SubjectAltNames::of(&cert)?;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let identity = match sans.uris.as_slice() {
        [only] => Identity::parse_uri(only).ok(),
        _ => None,
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        not_before,
        not_after,
        not_before_rfc3339: rfc3339(not_before),
        not_after_rfc3339: rfc3339(not_after),
        is_ca: is_ca(&cert)?,
        uris: sans.uris,
        identity,
        dns_names: sans.dns_names,
        ip_addresses: sans.ip_addresses,
    })
}

/// Every CERTIFICATE block of a PEM text; at least one, or an error.
pub(crate) fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(format!("bad CERTIFICATE block: {e}")))?;
    if certs.is_empty() {
        return Err(CertError::Pem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// The private key of a PEM text (PKCS#8, SEC1 or PKCS#1 block).
pub(crate) fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CertError::Pem(format!("no usable PRIVATE KEY block: {e}")))
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Malformed(format!(
            "{} bytes of trailing data after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Whether basic constraints mark the certificate as a CA (a broken extension is an error).
pub(crate) fn is_ca(cert: &X509Certificate<'_>) -> Result<bool, CertError> {
    Ok(cert
        .basic_constraints()
        .map_err(|e| CertError::Malformed(format!("basic constraints: {e}")))?
        .is_some_and(|ext| ext.value.ca))
}

/// The subject alternative names Meridian cares about.
pub(crate) struct SubjectAltNames {
    pub(crate) uris: Vec<String>,
    pub(crate) dns_names: Vec<String>,
    pub(crate) ip_addresses: Vec<IpAddr>,
}

impl SubjectAltNames {
    pub(crate) fn of(cert: &X509Certificate<'_>) -> Result<SubjectAltNames, CertError> {
        let mut names = SubjectAltNames {
            uris: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        };
        let ext = cert
            .subject_alternative_name()
            .map_err(|e| CertError::Malformed(format!("subject alternative names: {e}")))?;
        let Some(ext) = ext else {
            return Ok(names);
        };
        for name in &ext.value.general_names {
            match name {
                GeneralName::URI(uri) => names.uris.push(uri.to_string()),
                GeneralName::DNSName(dns) => names.dns_names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => {
                    names.ip_addresses.push(ip_from_bytes(bytes).ok_or_else(|| {
                        CertError::Malformed(format!(
                            "IP address SAN of {} bytes (expected 4 or 16)",
                            bytes.len()
                        ))
                    })?)
                }
                GeneralName::Invalid(tag, _) => {
                    return Err(CertError::Malformed(format!(
                        "subject alternative name with tag {} is not valid text",
                        tag.0
                    )))
                }
                _ => {}
            }
        }
        Ok(names)
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

/// Unix seconds of a time (negative before 1970).
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs())
            .map(|s| -s)
            .unwrap_or(i64::MIN),
    }
}

/// Unix seconds as RFC 3339 (falls back to the number for times no certificate can hold).
pub(crate) fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_and_never_panics() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(i64::MAX), format!("@{}", i64::MAX));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(matches!(inspect_pem(""), Err(CertError::Pem(_))));
        assert!(matches!(inspect_pem("hello"), Err(CertError::Pem(_))));
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(inspect_pem(bad_base64).is_err());
        let not_x509 = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            inspect_pem(not_x509),
            Err(CertError::Malformed(_))
        ));
        assert!(inspect_der(&[]).is_err());
        assert!(inspect_der(&[0x30, 0x82, 0xff, 0xff, 0x00]).is_err());
        assert!(key_from_pem("nothing").is_err());
    }

    #[test]
    fn expires_in_counts_down_to_none() {
        let info = CertInfo {
            subject: String::new(),
            issuer: String::new(),
            serial: String::new(),
            not_before: 100,
            not_after: 200,
            not_before_rfc3339: String::new(),
            not_after_rfc3339: String::new(),
            is_ca: false,
            uris: vec![],
            identity: None,
            dns_names: vec![],
            ip_addresses: vec![],
        };
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(info.expires_in(at(150)), Some(Duration::from_secs(50)));
        assert_eq!(info.expires_in(at(200)), None);
        assert_eq!(info.expires_in(at(300)), None);
        assert!(
            info.is_valid_at(at(100)) && !info.is_valid_at(at(99)) && !info.is_valid_at(at(201))
        );
    }
}
