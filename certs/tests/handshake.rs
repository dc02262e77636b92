//! Real rustls handshakes over in-memory buffers with the configurations `TlsIdentity` builds.

mod support;

use std::time::{Duration, SystemTime};

use certs::{
    https_client_config, peer_identity, CertificateAuthority, Identity, LeafRequest, TlsIdentity,
};
use support::{ca, handshake, leaf, HandshakeError, TD};

const ALPN: &[&[u8]] = &[b"meridian/1"];

fn tls(ca: &CertificateAuthority, identity: &Identity) -> TlsIdentity {
    let issued = leaf(ca, identity);
    TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
}

fn coordinator() -> Identity {
    Identity::coordinator(TD, "c1").unwrap()
}

fn agent() -> Identity {
    Identity::agent(TD, "eu", "gpu", "node-1").unwrap()
}

#[test]
fn mutual_tls_succeeds_and_each_side_learns_the_other_identity() {
    let ca = ca();
    let server = tls(&ca, &coordinator());
    let client = tls(&ca, &agent());
    assert_eq!(server.identity(), coordinator());
    assert_eq!(client.trust_domain(), TD);

    let (c, s) = handshake(
        client.mtls_client_config(ALPN),
        server.mtls_server_config(ALPN),
        "any-name.invalid",
    )
    .unwrap();
    let seen_by_server = peer_identity(s.peer_certificates().unwrap(), TD).unwrap();
    let seen_by_client = peer_identity(c.peer_certificates().unwrap(), TD).unwrap();
    assert_eq!(seen_by_server, agent());
    assert_eq!(seen_by_client, coordinator());
    assert_eq!(s.alpn_protocol(), Some(&b"meridian/1"[..]));
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let ours = ca();
    let theirs = ca();
    let server = tls(&ours, &coordinator());
    // The intruder trusts both CAs (so it accepts our server and gets to send its certificate), but its
    // own certificate comes from its CA, which our server does not trust.
    let pair = leaf(&theirs, &agent());
    let both = format!("{}{}", ours.cert_pem(), theirs.cert_pem());
    let intruder = TlsIdentity::from_pem(&both, &pair.cert_pem, &pair.key_pem).unwrap();
    // Our own TlsIdentity refuses to even load a pair our CA did not sign.
    let refused = TlsIdentity::from_pem(ours.cert_pem(), &pair.cert_pem, &pair.key_pem)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(refused, certs::CertError::Untrusted { .. }),
        "{refused:?}"
    );

    let err = handshake(
        intruder.mtls_client_config(ALPN),
        server.mtls_server_config(ALPN),
        "x",
    )
    .map(|_| ())
    .unwrap_err();
    assert_refused_as_stranger(&err, "server");
}

#[test]
fn server_certificate_from_another_ca_is_refused() {
    let ours = ca();
    let theirs = ca();
    let client = tls(&ours, &agent());
    let impostor = tls(&theirs, &coordinator());
    let err = handshake(
        client.mtls_client_config(ALPN),
        impostor.mtls_server_config(ALPN),
        "c1",
    )
    .map(|_| ())
    .unwrap_err();
    assert_refused_as_stranger(&err, "client");
}

/// The refusing side says the certificate was not signed by our CA.
fn assert_refused_as_stranger(err: &HandshakeError, refusing_side: &str) {
    let (side, error) = match err {
        HandshakeError::Client(e) => ("client", e),
        HandshakeError::Server(e) => ("server", e),
    };
    assert_eq!(side, refusing_side, "{err:?}");
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(inner)) = error else {
        panic!("expected our verifier's refusal, got {err:?}");
    };
    let message = inner.to_string();
    assert!(message.contains("not signed by this CA"), "{message}");
    assert!(
        matches!(
            inner.0.downcast_ref::<certs::CertError>(),
            Some(certs::CertError::Untrusted { .. })
        ),
        "{inner:?}"
    );
}

#[test]
fn expired_client_certificate_is_refused_with_the_reason() {
    let ca = ca();
    let server = tls(&ca, &coordinator());
    let hour = Duration::from_secs(3600);
    let expired = ca
        .issue(&LeafRequest::new(agent(), hour).valid_from(SystemTime::now() - 3 * hour))
        .unwrap();
    // Loading an out-of-date certificate of our own is allowed (with a warning) so a process can start.
    let client = TlsIdentity::from_pem(ca.cert_pem(), &expired.cert_pem, &expired.key_pem).unwrap();
    let err = handshake(
        client.mtls_client_config(ALPN),
        server.mtls_server_config(ALPN),
        "x",
    )
    .map(|_| ())
    .unwrap_err();
    let HandshakeError::Server(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
        inner,
    ))) = &err
    else {
        panic!("expected the server to refuse, got {err:?}");
    };
    assert!(
        inner.to_string().contains("certificate expired at"),
        "{inner}"
    );
}

#[test]
fn https_admin_api_checks_the_host_name_against_our_ca_only() {
    let ca = ca();
    let issued = ca
        .issue(
            &LeafRequest::new(coordinator(), certs::DEFAULT_LEAF_LIFETIME)
                .with_dns_name("admin.example.org")
                .with_ip_address("127.0.0.1".parse().unwrap()),
        )
        .unwrap();
    let server = TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let client = std::sync::Arc::new(https_client_config(ca.cert_pem()).unwrap());
    let server_config = server.tls_server_config(&[b"http/1.1"]);

    let (c, s) = handshake(client.clone(), server_config.clone(), "admin.example.org").unwrap();
    assert!(
        s.peer_certificates().is_none(),
        "no client certificate is asked for"
    );
    assert!(c.peer_certificates().is_some());
    handshake(client.clone(), server_config.clone(), "127.0.0.1").unwrap();

    let err = handshake(client, server_config.clone(), "other.example.org")
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::Client(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
                    | rustls::CertificateError::NotValidForName
            ))
        ),
        "{err:?}"
    );

    let stranger = support::ca();
    let other_client = std::sync::Arc::new(https_client_config(stranger.cert_pem()).unwrap());
    let err = handshake(other_client, server_config, "admin.example.org")
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::Client(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
            ))
        ),
        "{err:?}"
    );
    assert!(https_client_config("not pem").is_err());
}

#[test]
fn https_admin_api_must_be_a_coordinator() {
    let ca = ca();
    // A gateway may carry host names, and this one names the admin API's host: still not a coordinator.
    let gateway = Identity::gateway(TD, "eu", "gw1").unwrap();
    let issued = ca
        .issue(
            &LeafRequest::new(gateway.clone(), certs::DEFAULT_LEAF_LIFETIME)
                .with_dns_name("admin.example.org")
                .with_ip_address("127.0.0.1".parse().unwrap()),
        )
        .unwrap();
    let server = TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
    let client = std::sync::Arc::new(https_client_config(ca.cert_pem()).unwrap());
    for name in ["admin.example.org", "127.0.0.1"] {
        let err = handshake(
            client.clone(),
            server.tls_server_config(&[b"http/1.1"]),
            name,
        )
        .map(|_| ())
        .unwrap_err();
        let HandshakeError::Client(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(inner),
        )) = &err
        else {
            panic!("expected the client to refuse the gateway, got {err:?}");
        };
        let message = inner.to_string();
        assert!(message.contains(&gateway.uri()), "{message}");
        assert!(message.contains("not a coordinator"), "{message}");
    }
}

#[test]
fn install_crypto_provider_is_idempotent() {
    certs::install_crypto_provider();
    certs::install_crypto_provider();
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());
}
