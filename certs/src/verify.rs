//! Verification on the receiving side: is this peer one of ours, and who is it?
//!
//! Owns `CaTrust` (our CA certificates and the trust domain read from them), `verify_leaf` and
//! `peer_identity`. A peer is accepted only when its chain leads to our CA, it is not a CA itself, it is
//! within its validity period, it carries serverAuth + clientAuth, and it has exactly one URI SAN that
//! parses as an identity in our trust domain. This module never accepts a certificate on any other
//! ground and never panics on peer input.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;

use crate::authority::ca_trust_domain;
use crate::error::CertError;
use crate::identity::Identity;
use crate::inspect::{certs_from_pem, is_ca, parse_der, rfc3339, SubjectAltNames};
use crate::provider::ring_provider;

/// The CA certificates a process trusts, all of one trust domain.
#[derive(Clone)]
pub struct CaTrust {
    trust_domain: String,
    ca_certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    subjects: Vec<rustls::DistinguishedName>,
}

impl std::fmt::Debug for CaTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaTrust")
            .field("trust_domain", &self.trust_domain)
            .field("ca_certs", &self.ca_certs.len())
            .finish()
    }
}

impl CaTrust {
    /// Trusts every CERTIFICATE of a PEM bundle (one CA, or an old and a new one during a CA rotation).
    pub fn from_pem(ca_pem: &str) -> Result<Self, CertError> {
        Self::from_der(certs_from_pem(ca_pem)?)
    }

    /// Trusts these DER CA certificates. Each must be a CA naming its trust domain in a
    /// `spiffe://<td>` URI SAN, and all must name the same one.
    pub fn from_der(ca_certs: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        let mut trust_domain: Option<String> = None;
        let mut anchors = Vec::with_capacity(ca_certs.len());
        let mut subjects = Vec::with_capacity(ca_certs.len());
        for der in &ca_certs {
            let parsed = parse_der(der)?;
            if !is_ca(&parsed)? {
                return Err(CertError::NotCa);
            }
            let td = ca_trust_domain(&SubjectAltNames::of(&parsed)?.uris)?;
            match &trust_domain {
                Some(first) if *first != td => {
                    return Err(CertError::WrongTrustDomain {
                        expected: first.clone(),
                        found: td,
                    })
                }
                Some(_) => {}
                None => trust_domain = Some(td),
            }
            let anchor = webpki::anchor_from_trusted_cert(der)
                .map_err(|e| CertError::Malformed(format!("CA certificate: {e}")))?
                .to_owned();
            subjects.push(rustls::DistinguishedName::from(
                anchor.subject.as_ref().to_vec(),
            ));
            anchors.push(anchor);
        }
        let trust_domain = trust_domain.ok_or(CertError::EmptyChain)?;
        Ok(CaTrust {
            trust_domain,
            ca_certs,
            anchors,
            subjects,
        })
    }

    /// The trust domain every accepted identity must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trusted CA certificates.
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca_certs
    }

    /// Subjects of the trusted CAs (hints sent to clients in a certificate request).
    pub(crate) fn subjects(&self) -> &[rustls::DistinguishedName] {
        &self.subjects
    }
}

/// Verifies a peer's chain (leaf first) against our CA at time `now` and returns the peer's identity.
pub fn verify_leaf(
    chain: &[CertificateDer<'_>],
    trust: &CaTrust,
    now: UnixTime,
) -> Result<Identity, CertError> {
    let leaf_der = chain.first().ok_or(CertError::EmptyChain)?;
    let leaf = parse_der(leaf_der)?;
    if is_ca(&leaf)? {
        return Err(CertError::CaAsLeaf);
    }
    check_validity(&leaf, now)?;
    check_key_usage(&leaf)?;
    verify_signature_chain(leaf_der, &chain[1..], trust, now)?;
    identity_of(&leaf, &trust.trust_domain)
}

/// Verifies our own certificate: like `verify_leaf`, except that being outside the validity period is
/// reported beside the identity instead of failing, so a process can still start (and say why peers will
/// refuse it) with a certificate that expired while it was down.
pub(crate) fn verify_own_leaf(
    chain: &[CertificateDer<'_>],
    trust: &CaTrust,
    now: UnixTime,
) -> Result<(Identity, Option<CertError>), CertError> {
    match verify_leaf(chain, trust, now) {
        Ok(identity) => Ok((identity, None)),
        Err(time_error @ (CertError::Expired { .. } | CertError::NotYetValid { .. })) => {
            let leaf_der = chain.first().ok_or(CertError::EmptyChain)?;
            let not_before = parse_der(leaf_der)?.validity().not_before.timestamp();
            let within = UnixTime::since_unix_epoch(Duration::from_secs(
                u64::try_from(not_before).unwrap_or(0),
            ));
            let identity = verify_leaf(chain, trust, within)?;
            Ok((identity, Some(time_error)))
        }
        Err(other) => Err(other),
    }
}

/// The identity of a leaf that rustls already verified (e.g. `Connection::peer_certificates()`): exactly
/// one URI SAN, parsing as an identity of `trust_domain`.
pub fn peer_identity(
    chain: &[CertificateDer<'_>],
    trust_domain: &str,
) -> Result<Identity, CertError> {
    let leaf_der = chain.first().ok_or(CertError::EmptyChain)?;
    let leaf = parse_der(leaf_der)?;
    identity_of(&leaf, trust_domain)
}

fn identity_of(leaf: &X509Certificate<'_>, trust_domain: &str) -> Result<Identity, CertError> {
    let uris = SubjectAltNames::of(leaf)?.uris;
    let [uri] = uris.as_slice() else {
        return Err(CertError::UriSanCount(uris.len()));
    };
    let identity = Identity::parse_uri(uri)?;
    if identity.trust_domain != trust_domain {
        return Err(CertError::WrongTrustDomain {
            expected: trust_domain.to_string(),
            found: identity.trust_domain.clone(),
        });
    }
    Ok(identity)
}

fn check_validity(leaf: &X509Certificate<'_>, now: UnixTime) -> Result<(), CertError> {
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    if now_secs < not_before {
        return Err(CertError::NotYetValid {
            not_before: rfc3339(not_before),
            now: rfc3339(now_secs),
        });
    }
    if now_secs > not_after {
        return Err(CertError::Expired {
            not_after: rfc3339(not_after),
            now: rfc3339(now_secs),
        });
    }
    Ok(())
}

fn check_key_usage(leaf: &X509Certificate<'_>) -> Result<(), CertError> {
    let eku = leaf
        .extended_key_usage()
        .map_err(|e| CertError::Malformed(format!("extended key usage: {e}")))?;
    let Some(eku) = eku else {
        return Err(CertError::MissingKeyUsage("serverAuth and clientAuth"));
    };
    match (eku.value.server_auth, eku.value.client_auth) {
        (true, true) => Ok(()),
        (false, true) => Err(CertError::MissingKeyUsage("serverAuth")),
        (true, false) => Err(CertError::MissingKeyUsage("clientAuth")),
        (false, false) => Err(CertError::MissingKeyUsage("serverAuth and clientAuth")),
    }
}

fn verify_signature_chain(
    leaf_der: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &CaTrust,
    now: UnixTime,
) -> Result<(), CertError> {
    let untrusted = |reason: String| CertError::Untrusted {
        trust_domain: trust.trust_domain.clone(),
        reason,
    };
    let leaf = webpki::EndEntityCert::try_from(leaf_der)
        .map_err(|e| CertError::Malformed(format!("{e}")))?;
    let provider = ring_provider();
    leaf.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &trust.anchors,
        intermediates,
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| untrusted(describe_webpki_error(&e)))
}

fn describe_webpki_error(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "it was not signed by this CA (unknown issuer)".to_string(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "it was not signed by this CA (its issuer has the CA's name but not the CA's key)"
                .to_string()
        }
        webpki::Error::CaUsedAsEndEntity => "it is a CA certificate".to_string(),
        other => format!("{other}"),
    }
}
