//! The mutual TLS configurations carry QUIC: quinn accepts them and a loopback connection learns the
//! peer's identity from the verified chain.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use certs::{peer_identity, Identity, TlsIdentity};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use support::{ca, leaf, TD};

const ALPN: &[u8] = b"meridian/1";

fn tls(ca: &certs::CertificateAuthority, identity: &Identity) -> TlsIdentity {
    let pair = leaf(ca, identity);
    TlsIdentity::from_pem(ca.cert_pem(), &pair.cert_pem, &pair.key_pem).unwrap()
}

fn identity_of(conn: &quinn::Connection) -> Identity {
    let chain = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap();
    peer_identity(&chain, TD).unwrap()
}

#[tokio::test]
async fn quic_connection_over_loopback_authenticates_both_sides() {
    let ca = ca();
    let coordinator = Identity::coordinator(TD, "c1").unwrap();
    let agent = Identity::agent(TD, "eu", "gpu", "n1").unwrap();
    let server_tls = tls(&ca, &coordinator);
    let client_tls = tls(&ca, &agent);

    let server_crypto = QuicServerConfig::try_from(server_tls.mtls_server_config(&[ALPN])).unwrap();
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(server_crypto)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();

    let client_crypto = QuicClientConfig::try_from(client_tls.mtls_client_config(&[ALPN])).unwrap();
    let mut client = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));

    let accept = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let got = recv.read_to_end(64).await.unwrap();
        send.write_all(&got).await.unwrap();
        send.finish().unwrap();
        let seen = identity_of(&conn);
        conn.closed().await;
        seen
    });

    let conn = client.connect(addr, "c1").unwrap().await.unwrap();
    assert_eq!(identity_of(&conn), coordinator);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"hello").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(64).await.unwrap(), b"hello");
    conn.close(0u32.into(), b"done");
    assert_eq!(accept.await.unwrap(), agent);
    client.wait_idle().await;
}
