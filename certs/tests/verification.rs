//! Receiving-side verification: what `verify_leaf` accepts, what it refuses and what it says.

mod support;

use std::time::{Duration, SystemTime};

use certs::{
    inspect_pem, peer_identity, verify_leaf, CaTrust, CertError, CertificateAuthority, Identity,
    LeafRequest, UnixTime,
};
use support::{ca, craft, der_of, leaf, uri_san, TD};

fn now() -> UnixTime {
    UnixTime::now()
}

fn identities() -> Vec<Identity> {
    vec![
        Identity::coordinator(TD, "c1").unwrap(),
        Identity::agent(TD, "eu-west", "gpu-a", "node-1").unwrap(),
        Identity::gateway(TD, "eu-west", "gw-1").unwrap(),
        Identity::operator(TD, "alice").unwrap(),
    ]
}

fn refusal(chain: &[certs::CertificateDer<'_>], trust: &CaTrust) -> CertError {
    match verify_leaf(chain, trust, now()) {
        Ok(id) => panic!("accepted as {id}"),
        Err(e) => e,
    }
}

#[test]
fn issued_leaves_verify_for_every_role() {
    let ca = ca();
    let trust = ca.trust().unwrap();
    assert_eq!(trust.trust_domain(), TD);
    for identity in identities() {
        let issued = leaf(&ca, &identity);
        let der = der_of(&issued.cert_pem);
        assert_eq!(
            verify_leaf(std::slice::from_ref(&der), &trust, now()).unwrap(),
            identity
        );
        assert_eq!(peer_identity(&[der], TD).unwrap(), identity);
        let info = inspect_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.identity.as_ref(), Some(&identity));
        assert!(!info.is_ca);
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["identity"], serde_json::json!(identity.uri()));
        assert_eq!(json["uris"], serde_json::json!([identity.uri()]));
    }
}

#[test]
fn trust_read_from_pem_matches_the_ca() {
    let ca = ca();
    let trust = CaTrust::from_pem(ca.cert_pem()).unwrap();
    assert_eq!(trust.trust_domain(), TD);
    assert_eq!(trust.ca_certs(), &[ca.cert_der().clone()]);
    let id = Identity::coordinator(TD, "c1").unwrap();
    let der = der_of(&leaf(&ca, &id).cert_pem);
    assert_eq!(verify_leaf(&[der], &trust, now()).unwrap(), id);
}

#[test]
fn leaf_from_another_ca_is_refused() {
    let ours = ca();
    let theirs = ca(); // same trust domain name, different key: still a stranger
    let der = der_of(&leaf(&theirs, &Identity::coordinator(TD, "c1").unwrap()).cert_pem);
    let err = refusal(&[der], &ours.trust().unwrap());
    assert!(matches!(err, CertError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("not signed by this CA"), "{err}");
}

#[test]
fn chain_with_a_foreign_intermediate_is_refused() {
    let ours = ca();
    let theirs = ca();
    let der = der_of(&leaf(&theirs, &Identity::coordinator(TD, "c1").unwrap()).cert_pem);
    let err = refusal(&[der, theirs.cert_der().clone()], &ours.trust().unwrap());
    assert!(matches!(err, CertError::Untrusted { .. }), "{err:?}");
}

#[test]
fn two_uri_sans_are_refused() {
    let ca = ca();
    let der = craft(&ca, |p| {
        p.subject_alt_names = vec![
            uri_san(&format!("spiffe://{TD}/coordinator/c1")),
            uri_san(&format!("spiffe://{TD}/operator/root")),
        ];
    });
    let err = refusal(std::slice::from_ref(&der), &ca.trust().unwrap());
    assert_eq!(
        err.to_string(),
        "certificate has 2 URI SANs, expected exactly one"
    );
    assert!(matches!(
        peer_identity(&[der], TD),
        Err(CertError::UriSanCount(2))
    ));
}

#[test]
fn missing_uri_san_is_refused() {
    let ca = ca();
    let der = craft(&ca, |p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName(
            "c1.example.org".try_into().unwrap(),
        )];
    });
    let err = refusal(&[der], &ca.trust().unwrap());
    assert!(matches!(err, CertError::UriSanCount(0)), "{err:?}");
}

#[test]
fn expired_and_not_yet_valid_leaves_are_refused() {
    let ca = ca();
    let trust = ca.trust().unwrap();
    let id = Identity::agent(TD, "r", "c", "n").unwrap();
    let hour = Duration::from_secs(3600);

    let expired = ca
        .issue(&LeafRequest::new(id.clone(), hour).valid_from(SystemTime::now() - 2 * hour))
        .unwrap();
    let err = refusal(&[der_of(&expired.cert_pem)], &trust);
    assert!(matches!(err, CertError::Expired { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("certificate expired at "),
        "{err}"
    );

    let future = ca
        .issue(&LeafRequest::new(id.clone(), hour).valid_from(SystemTime::now() + hour))
        .unwrap();
    let err = refusal(&[der_of(&future.cert_pem)], &trust);
    assert!(matches!(err, CertError::NotYetValid { .. }), "{err:?}");
}

#[test]
fn validity_bounds_are_inclusive_and_exact() {
    let ca = ca();
    let trust = ca.trust().unwrap();
    let id = Identity::coordinator(TD, "c1").unwrap();
    let issued = leaf(&ca, &id);
    let info = issued.info().unwrap();
    let der = der_of(&issued.cert_pem);
    let at = |secs: i64| UnixTime::since_unix_epoch(Duration::from_secs(secs as u64));
    assert!(verify_leaf(std::slice::from_ref(&der), &trust, at(info.not_before)).is_ok());
    assert!(verify_leaf(std::slice::from_ref(&der), &trust, at(info.not_after)).is_ok());
    assert!(matches!(
        verify_leaf(std::slice::from_ref(&der), &trust, at(info.not_before - 1)),
        Err(CertError::NotYetValid { .. })
    ));
    assert!(matches!(
        verify_leaf(&[der], &trust, at(info.not_after + 1)),
        Err(CertError::Expired { .. })
    ));
}

#[test]
fn ca_certificate_presented_as_leaf_is_refused() {
    let ca = ca();
    let err = refusal(&[ca.cert_der().clone()], &ca.trust().unwrap());
    assert!(matches!(err, CertError::CaAsLeaf), "{err:?}");
    assert_eq!(
        err.to_string(),
        "certificate is a CA certificate, not a leaf"
    );
}

#[test]
fn intermediate_ca_signed_by_our_ca_is_refused_as_leaf() {
    let ca = ca();
    let der = craft(&ca, |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    });
    let err = refusal(&[der], &ca.trust().unwrap());
    assert!(matches!(err, CertError::CaAsLeaf), "{err:?}");
}

#[test]
fn identity_of_another_trust_domain_is_refused() {
    let ca = ca();
    // Our CA's signature, but an identity of a different trust domain.
    let der = craft(&ca, |p| {
        p.subject_alt_names = vec![uri_san("spiffe://other.org/coordinator/c1")];
    });
    let err = refusal(std::slice::from_ref(&der), &ca.trust().unwrap());
    assert!(matches!(err, CertError::WrongTrustDomain { .. }), "{err:?}");
    assert!(err.to_string().contains("other.org"), "{err}");
    assert!(matches!(
        peer_identity(&[der], TD),
        Err(CertError::WrongTrustDomain { .. })
    ));

    // And a CA of another trust domain does not vouch for ours.
    let foreign = CertificateAuthority::generate("other.org", Duration::from_secs(3600)).unwrap();
    let der = der_of(&leaf(&foreign, &Identity::coordinator("other.org", "c1").unwrap()).cert_pem);
    assert!(matches!(
        refusal(&[der], &ca.trust().unwrap()),
        CertError::Untrusted { .. }
    ));
}

#[test]
fn uri_that_is_not_an_identity_is_refused() {
    let ca = ca();
    let der = craft(&ca, |p| {
        p.subject_alt_names = vec![uri_san(&format!("spiffe://{TD}/admin/root"))];
    });
    let err = refusal(&[der], &ca.trust().unwrap());
    assert!(matches!(err, CertError::InvalidIdentity { .. }), "{err:?}");
    assert!(err.to_string().contains("path matches no role"), "{err}");
}

#[test]
fn leaf_without_both_extended_key_usages_is_refused() {
    let ca = ca();
    let trust = ca.trust().unwrap();
    let server_only = craft(&ca, |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    });
    assert!(matches!(
        refusal(&[server_only], &trust),
        CertError::MissingKeyUsage("clientAuth")
    ));
    let none = craft(&ca, |p| p.extended_key_usages.clear());
    assert!(matches!(
        refusal(&[none], &trust),
        CertError::MissingKeyUsage(_)
    ));
}

#[test]
fn empty_and_garbage_chains_are_refused() {
    let ca = ca();
    let trust = ca.trust().unwrap();
    assert!(matches!(refusal(&[], &trust), CertError::EmptyChain));
    assert!(matches!(peer_identity(&[], TD), Err(CertError::EmptyChain)));
    let garbage = certs::CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(matches!(
        refusal(&[garbage], &trust),
        CertError::Malformed(_)
    ));
    let mut truncated = ca.cert_der().to_vec();
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        refusal(&[truncated.into()], &trust),
        CertError::Malformed(_)
    ));
}

#[test]
fn ca_bundle_trusts_both_cas_of_one_domain_only() {
    let old = ca();
    let new = ca();
    let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
    let trust = CaTrust::from_pem(&bundle).unwrap();
    let id = Identity::coordinator(TD, "c1").unwrap();
    for issuer in [&old, &new] {
        let der = der_of(&leaf(issuer, &id).cert_pem);
        assert_eq!(verify_leaf(&[der], &trust, now()).unwrap(), id);
    }
    let foreign = CertificateAuthority::generate("other.org", Duration::from_secs(3600)).unwrap();
    let mixed = format!("{}{}", old.cert_pem(), foreign.cert_pem());
    assert!(matches!(
        CaTrust::from_pem(&mixed),
        Err(CertError::WrongTrustDomain { .. })
    ));
    let leaf_pem = leaf(&old, &id).cert_pem;
    assert!(matches!(
        CaTrust::from_pem(&leaf_pem),
        Err(CertError::NotCa)
    ));
    assert!(CaTrust::from_pem("").is_err());
}

#[test]
fn mutated_and_truncated_certificates_never_panic_and_never_pass() {
    let ca = ca();
    let trust = ca.trust().unwrap();
    let issued = leaf(&ca, &Identity::coordinator(TD, "c1").unwrap());
    let original = der_of(&issued.cert_pem).to_vec();
    let mut accepted = Vec::new();
    for i in 0..original.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bytes = original.clone();
            bytes[i] ^= mask;
            let der = certs::CertificateDer::from(bytes);
            let _ = certs::inspect_der(&der);
            let _ = peer_identity(std::slice::from_ref(&der), TD);
            if verify_leaf(std::slice::from_ref(&der), &trust, now()).is_ok() {
                accepted.push((i, mask));
            }
        }
    }
    for len in 0..original.len() {
        let der = certs::CertificateDer::from(original[..len].to_vec());
        assert!(certs::inspect_der(&der).is_err());
        assert!(verify_leaf(&[der], &trust, now()).is_err());
    }
    assert!(accepted.is_empty(), "mutations accepted at {accepted:?}");
}
