//! Shared fixtures for the certs integration tests: CAs, leaves, hand-crafted certificates that Meridian's
//! own issuer refuses to produce, and an in-memory TLS handshake.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use certs::{CertificateAuthority, Identity, LeafRequest, DEFAULT_LEAF_LIFETIME};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

pub const TD: &str = "example.org";

pub fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(TD, Duration::from_secs(3650 * 24 * 3600)).unwrap()
}

pub fn leaf(ca: &CertificateAuthority, identity: &Identity) -> certs::IssuedLeaf {
    ca.issue(&LeafRequest::new(identity.clone(), DEFAULT_LEAF_LIFETIME))
        .unwrap()
}

pub fn der_of(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Signs a certificate with `ca`'s key, starting from what Meridian would issue and letting the test
/// change anything (so it can build certificates Meridian's issuer refuses to make).
pub fn craft(
    ca: &CertificateAuthority,
    edit: impl FnOnce(&mut CertificateParams),
) -> CertificateDer<'static> {
    let ca_key = KeyPair::from_pem(ca.key_pem()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(ca.cert_pem(), ca_key).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "crafted");
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{TD}/coordinator/c1").try_into().unwrap(),
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::hours(1);
    edit(&mut params);
    let key = KeyPair::generate().unwrap();
    params.signed_by(&key, &issuer).unwrap().der().clone()
}

pub fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.try_into().unwrap())
}

/// Which side of a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Runs a TLS handshake between two in-memory connections, then sends one message each way.
pub fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    server_name: &str,
) -> Result<(ClientConnection, ServerConnection), HandshakeError> {
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut c = ClientConnection::new(client, name).map_err(HandshakeError::Client)?;
    let mut s = ServerConnection::new(server).map_err(HandshakeError::Server)?;
    // A TLS 1.3 handshake needs two round trips; a bound keeps a broken exchange from spinning forever.
    for _ in 0..10 {
        move_bytes(&mut *c, &mut *s).map_err(HandshakeError::Server)?;
        move_bytes(&mut *s, &mut *c).map_err(HandshakeError::Client)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake stalled"
    );

    c.writer().write_all(b"ping").unwrap();
    move_bytes(&mut *c, &mut *s).map_err(HandshakeError::Server)?;
    let mut got = [0u8; 4];
    s.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s.writer().write_all(b"pong").unwrap();
    move_bytes(&mut *s, &mut *c).map_err(HandshakeError::Client)?;
    c.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    Ok((c, s))
}

/// Moves every pending TLS record from `from` to `to` and lets `to` process them.
fn move_bytes<DA, DB>(
    from: &mut rustls::ConnectionCommon<DA>,
    to: &mut rustls::ConnectionCommon<DB>,
) -> Result<(), rustls::Error> {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).unwrap();
    }
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets()?;
    }
    to.process_new_packets()?;
    Ok(())
}
