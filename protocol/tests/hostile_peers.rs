//! Peers that send bytes the RPC layer must survive, and certificates it must refuse: the server keeps
//! answering proper calls on new connections, and on the same connection where the damage was confined
//! to one stream.

mod support;

use std::time::Duration;

use bytes::Bytes;
use certs::{CertificateAuthority, IdentityKind, LeafRequest, TlsIdentity};
use protocol::rpc::{Method, RpcClient, RpcError, ServerOptions, StatusCode};
use support::{
    client_config, raw_client_config, raw_connect, raw_exchange, raw_ping, request_frame, uri_san,
    Pki, Server, TestService, CALL, TD,
};

async fn proper_client_still_served(pki: &Pki, server: &Server) {
    let client = RpcClient::new(&pki.coordinator("probe")).unwrap();
    client
        .call(&server.addr(), Method::Ping, Bytes::new(), CALL)
        .await
        .expect("the server still answers proper calls");
}

#[tokio::test]
async fn an_undecodable_request_closes_that_connection_only() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let tls = pki.coordinator("c2");

    let bystander = raw_connect(client_config(&tls), server.addr).await.unwrap();
    raw_ping(&bystander).await.unwrap();

    let conn = raw_connect(client_config(&tls), server.addr).await.unwrap();
    raw_ping(&conn).await.unwrap();
    // A well-formed frame whose payload is not an RpcRequest (wire type 7 does not exist).
    let garbage = [0, 0, 0, 2, 0x0f, 0xff];
    let answer = tokio::time::timeout(CALL, raw_exchange(&conn, &garbage, true))
        .await
        .unwrap();
    assert!(answer.is_err(), "garbage got an answer: {answer:?}");
    match tokio::time::timeout(CALL, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, protocol::rpc::CLOSE_PROTOCOL_VIOLATION)
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    // Only the two proper pings reached the service.
    let served: Vec<Method> = std::iter::from_fn(|| probe.entered.try_recv().ok()).collect();
    assert_eq!(served, vec![Method::Ping, Method::Ping]);

    // Other connections are untouched, new ones are served.
    raw_ping(&bystander).await.unwrap();
    let fresh = raw_connect(client_config(&tls), server.addr).await.unwrap();
    raw_ping(&fresh).await.unwrap();
    proper_client_still_served(&pki, &server).await;
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_length_prefix_is_refused_and_the_connection_lives_on() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let conn = raw_connect(client_config(&pki.coordinator("c2")), server.addr)
        .await
        .unwrap();

    // 4 GiB announced, a few bytes sent, stream left open: refused from the prefix alone.
    let mut oversized = u32::MAX.to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0xab; 1000]);
    // Text that is not a frame at all reads as a huge length prefix too.
    let text = b"GET / HTTP/1.1\r\nHost: meridian\r\n\r\n".to_vec();
    let just_over = {
        let mut bytes = u32::try_from(protocol::DEFAULT_MAX_FRAME + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        bytes.push(0);
        bytes
    };
    for (bytes, finish) in [(oversized, false), (text, true), (just_over, false)] {
        let answer = tokio::time::timeout(CALL, raw_exchange(&conn, &bytes, finish))
            .await
            .unwrap();
        match answer {
            Ok(Err(status)) => {
                assert_eq!(status.code, StatusCode::InvalidArgument);
                assert!(status.message.contains("exceeds"), "{status}");
            }
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
        raw_ping(&conn).await.unwrap();
    }
    proper_client_still_served(&pki, &server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_truncated_frame_is_refused_and_the_connection_lives_on() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let conn = raw_connect(client_config(&pki.coordinator("c2")), server.addr)
        .await
        .unwrap();

    let whole = request_frame(Method::Ping.id(), b"");
    let cuts = [1, 3, whole.len() - 1];
    let mut announced_more = 100u32.to_be_bytes().to_vec();
    announced_more.extend_from_slice(&[1; 10]);
    let inputs = cuts
        .iter()
        .map(|&cut| whole[..cut].to_vec())
        .chain([announced_more, Vec::new()]);
    for bytes in inputs {
        // The stream is finished mid-frame (or before any byte).
        let answer = tokio::time::timeout(CALL, raw_exchange(&conn, &bytes, true))
            .await
            .unwrap();
        match answer {
            Ok(Err(status)) => assert_eq!(status.code, StatusCode::InvalidArgument, "{status}"),
            other => panic!("expected INVALID_ARGUMENT for {bytes:?}, got {other:?}"),
        }
    }
    assert!(probe.entered.try_recv().is_err());
    raw_ping(&conn).await.unwrap();
    proper_client_still_served(&pki, &server).await;
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_method_is_unimplemented() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let conn = raw_connect(client_config(&pki.coordinator("c2")), server.addr)
        .await
        .unwrap();
    let answer = tokio::time::timeout(CALL, raw_exchange(&conn, &request_frame(9999, b""), true))
        .await
        .unwrap();
    match answer {
        Ok(Err(status)) => assert_eq!(status.code, StatusCode::Unimplemented),
        other => panic!("expected UNIMPLEMENTED, got {other:?}"),
    }
    raw_ping(&conn).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn stalled_streams_neither_block_others_nor_exceed_the_stream_limit() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let options = ServerOptions {
        max_concurrent_streams: 3,
        request_read_timeout: Duration::from_secs(60),
        ..ServerOptions::default()
    };
    let server = Server::start_with(&pki.coordinator("c1"), service, options, "127.0.0.1:0");
    let conn = raw_connect(client_config(&pki.coordinator("c2")), server.addr)
        .await
        .unwrap();

    // Two streams that start a frame and never complete it.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0, 0, 0, 50, 1, 2]).await.unwrap();
        stalled.push((send, recv));
    }
    // The third slot still serves a proper call, on this connection and on others.
    raw_ping(&conn).await.unwrap();
    proper_client_still_served(&pki, &server).await;

    // With every slot taken, the peer cannot open another stream until one is released.
    let (mut third, _third_recv) = conn.open_bi().await.unwrap();
    third.write_all(&[0, 0, 0, 50]).await.unwrap();
    let blocked = tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await;
    assert!(blocked.is_err(), "a fourth concurrent stream was allowed");

    // Finishing a stalled stream mid-frame releases its slot.
    let (mut send, mut recv) = stalled.pop().unwrap();
    send.finish().unwrap();
    let refused = tokio::time::timeout(
        CALL,
        protocol::frame::read_frame(&mut recv, protocol::DEFAULT_MAX_FRAME),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(refused.is_some());
    raw_ping(&conn).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_request_is_cut_off_by_the_read_timeout() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let options = ServerOptions {
        request_read_timeout: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let server = Server::start_with(&pki.coordinator("c1"), service, options, "127.0.0.1:0");
    let conn = raw_connect(client_config(&pki.coordinator("c2")), server.addr)
        .await
        .unwrap();
    let answer = tokio::time::timeout(CALL, raw_exchange(&conn, &[0, 0, 0, 9, 1], false))
        .await
        .unwrap();
    match answer {
        Ok(Err(status)) => assert_eq!(status.code, StatusCode::DeadlineExceeded),
        other => panic!("expected DEADLINE_EXCEEDED, got {other:?}"),
    }
    raw_ping(&conn).await.unwrap();
    server.stop().await;
}

/// Connects with `config`, makes one proper call, and returns how the connection ended. The call must
/// fail; the close reason must read as a refusal.
async fn first_call_is_refused(config: quinn::ClientConfig, server: &Server) -> RpcError {
    let reason = match raw_connect(config, server.addr).await {
        // QUIC lets the client finish its handshake before the server has judged its certificate.
        Ok(conn) => {
            let answer = raw_ping(&conn).await;
            assert!(answer.is_err(), "refused client got an answer: {answer:?}");
            tokio::time::timeout(CALL, conn.closed()).await.unwrap()
        }
        Err(e) => e,
    };
    let error = RpcError::from(reason);
    assert!(matches!(error, RpcError::Refused(_)), "{error:?}");
    error
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);

    let stranger_ca = CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap();
    let leaf = stranger_ca
        .issue(&LeafRequest::new(
            certs::Identity {
                trust_domain: TD.into(),
                kind: IdentityKind::Coordinator { name: "c2".into() },
            },
            Duration::from_secs(3600),
        ))
        .unwrap();
    first_call_is_refused(raw_client_config(&leaf.cert_pem, &leaf.key_pem), &server).await;

    // Through RpcClient the stranger refuses our server too (it does not trust our CA).
    let stranger =
        TlsIdentity::from_pem(stranger_ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).unwrap();
    let result = RpcClient::new(&stranger)
        .unwrap()
        .call(&server.addr(), Method::Ping, Bytes::new(), CALL)
        .await;
    assert!(matches!(result, Err(RpcError::Refused(_))), "{result:?}");
    assert!(!result.unwrap_err().is_retryable());

    assert!(probe.entered.try_recv().is_err());
    proper_client_still_served(&pki, &server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_with_two_uri_sans_is_refused() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let (cert, key) = pki.craft(|params| {
        params.subject_alt_names = vec![
            uri_san(&format!("spiffe://{TD}/coordinator/c2")),
            uri_san(&format!("spiffe://{TD}/coordinator/c3")),
        ];
    });
    first_call_is_refused(raw_client_config(&cert, &key), &server).await;
    assert!(probe.entered.try_recv().is_err());
    proper_client_still_served(&pki, &server).await;
    server.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let (cert, key) = pki.craft(|params| {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(3);
        params.not_after = now - time::Duration::hours(1);
    });
    first_call_is_refused(raw_client_config(&cert, &key), &server).await;

    // A crafted certificate that is valid passes the same path: the refusals above are about the
    // certificates, not the crafting.
    let (cert, key) = pki.craft(|_| {});
    let conn = raw_connect(raw_client_config(&cert, &key), server.addr)
        .await
        .unwrap();
    assert_eq!(
        raw_ping(&conn).await.unwrap(),
        format!("spiffe://{TD}/coordinator/crafted")
    );
    assert_eq!(probe.entered.try_recv(), Ok(Method::Ping));
    server.stop().await;
}
