//! Identities that must lose their connections or are held to their share: a gate that stops admitting a
//! certificate (a deny-list) refuses it at the handshake and on every call and closes what it holds open,
//! a connection ends when the peer's certificate expires (on the server and on the client), one identity
//! cannot hold more than its connections, and cannot make the server hold more than its budget of request
//! bytes. Real QUIC, real certificates.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use protocol::rpc::{
    Method, PeerCertificate, PeerGate, RpcClient, RpcError, RpcStatus, ServerOptions, StatusCode,
    CLOSE_CERT_EXPIRED, CLOSE_REVOKED, CLOSE_TOO_MANY_CONNECTIONS,
};
use support::{client_config, raw_connect, raw_ping, Pki, Server, TestService, CALL};

/// Denies the identities (URIs) in its set; refuses `ReadIndex` to coordinators named `learner-*`.
#[derive(Default)]
struct DenyList {
    denied: Mutex<HashSet<String>>,
}

impl DenyList {
    fn deny(&self, uri: &str) {
        self.denied.lock().unwrap().insert(uri.to_string());
    }
}

impl PeerGate for DenyList {
    fn admit_connection(&self, peer: &PeerCertificate) -> Result<(), RpcStatus> {
        if self.denied.lock().unwrap().contains(&peer.identity.uri()) {
            Err(RpcStatus::permission_denied("identity denied"))
        } else {
            Ok(())
        }
    }

    fn admit_call(&self, peer: &PeerCertificate, method: Method) -> Result<(), RpcStatus> {
        if method == Method::ReadIndex && peer.identity.name().starts_with("learner-") {
            Err(RpcStatus::permission_denied("not for learners"))
        } else {
            Ok(())
        }
    }
}

/// Waits for `conn` to close and returns the application close code.
async fn close_code(conn: &quinn::Connection, within: Duration) -> quinn::VarInt {
    match tokio::time::timeout(within, conn.closed())
        .await
        .expect("the connection closes in time")
    {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code,
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_denied_identity_is_refused_on_its_next_call_and_at_its_next_handshake() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let gate = Arc::new(DenyList::default());
    let (server, peers) = Server::start_gated(
        &pki.coordinator("c1"),
        service,
        ServerOptions::default(),
        gate.clone(),
    );
    let mallory = pki.coordinator("mallory");
    let conn = raw_connect(client_config(&mallory), server.addr)
        .await
        .unwrap();
    raw_ping(&conn).await.unwrap();
    assert_eq!(probe.entered.try_recv(), Ok(Method::Ping));

    gate.deny(&mallory.identity().uri());
    // The open connection's next call is refused before it reaches the service, and the connection goes.
    let answer = raw_ping(&conn).await;
    assert!(answer.is_err(), "a denied identity was served: {answer:?}");
    assert_eq!(close_code(&conn, CALL).await, CLOSE_REVOKED);
    assert!(probe.entered.try_recv().is_err());

    // A new connection completes its handshake (QUIC lets it) but is closed before its first call.
    let again = raw_connect(client_config(&mallory), server.addr)
        .await
        .unwrap();
    assert!(raw_ping(&again).await.is_err());
    assert_eq!(close_code(&again, CALL).await, CLOSE_REVOKED);
    let through_client = RpcClient::new(&mallory)
        .unwrap()
        .call(&server.addr(), Method::Ping, Bytes::new(), CALL)
        .await;
    assert!(
        matches!(through_client, Err(RpcError::Refused(_))),
        "{through_client:?}"
    );
    assert!(probe.entered.try_recv().is_err());
    assert_eq!(peers.connections_of(&mallory.identity()), 0);

    // Everyone else is served as before.
    let honest = pki.coordinator("c2");
    let conn = raw_connect(client_config(&honest), server.addr)
        .await
        .unwrap();
    raw_ping(&conn).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn recheck_closes_the_idle_connections_of_a_newly_denied_identity() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let gate = Arc::new(DenyList::default());
    let (server, peers) = Server::start_gated(
        &pki.coordinator("c1"),
        service,
        ServerOptions::default(),
        gate.clone(),
    );
    let denied = pki.agent("stolen");
    let kept = pki.agent("n2");
    let first = raw_connect(client_config(&denied), server.addr)
        .await
        .unwrap();
    let second = raw_connect(client_config(&denied), server.addr)
        .await
        .unwrap();
    let bystander = raw_connect(client_config(&kept), server.addr)
        .await
        .unwrap();
    for conn in [&first, &second, &bystander] {
        raw_ping(conn).await.unwrap();
    }
    assert_eq!(peers.connections_of(&denied.identity()), 2);
    assert_eq!(peers.recheck(), 0, "nothing is denied yet");

    gate.deny(&denied.identity().uri());
    assert_eq!(peers.recheck(), 2);
    // Neither connection made a call: the server closed them on its own.
    assert_eq!(close_code(&first, CALL).await, CLOSE_REVOKED);
    assert_eq!(close_code(&second, CALL).await, CLOSE_REVOKED);
    raw_ping(&bystander).await.unwrap();
    assert_eq!(peers.connections_of(&kept.identity()), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_call_the_gate_refuses_fails_alone() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let (server, _peers) = Server::start_gated(
        &pki.coordinator("c1"),
        service,
        ServerOptions::default(),
        Arc::new(DenyList::default()),
    );
    let client = RpcClient::new(&pki.coordinator("learner-1")).unwrap();
    let refused = client
        .call(&server.addr(), Method::ReadIndex, Bytes::new(), CALL)
        .await;
    match refused {
        Err(RpcError::Remote(status)) => {
            assert_eq!(status.code, StatusCode::PermissionDenied);
            assert!(status.message.contains("not for learners"), "{status}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    // The same connection still carries the calls the gate admits.
    client
        .call(&server.addr(), Method::Ping, Bytes::new(), CALL)
        .await
        .unwrap();
    assert_eq!(probe.entered.try_recv(), Ok(Method::Ping));
    server.stop().await;
}

#[tokio::test]
async fn the_server_closes_a_connection_when_the_peer_certificate_expires() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let (server, peers) = Server::start_gated(
        &pki.coordinator("c1"),
        service,
        ServerOptions::default(),
        Arc::new(DenyList::default()),
    );
    let short = pki.coordinator_expiring("c2", Duration::from_secs(2));
    let conn = raw_connect(client_config(&short), server.addr)
        .await
        .unwrap();
    raw_ping(&conn).await.unwrap();
    // Keep the connection busy with pings so that only the expiry can end it (not the idle timeout).
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(reason) = conn.close_reason() {
                return reason;
            }
            let _ = raw_ping(&conn).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the connection is closed within seconds of the expiry");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_CERT_EXPIRED)
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    assert_eq!(peers.connections_of(&short.identity()), 0);
    server.stop().await;
}

#[tokio::test]
async fn the_client_drops_a_connection_when_the_server_certificate_expires() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let short = pki.coordinator_expiring("c1", Duration::from_secs(2));
    let (server, peers) = Server::start_gated(
        &short,
        service,
        ServerOptions::default(),
        Arc::new(DenyList::default()),
    );
    let client_tls = pki.coordinator("c2");
    let client = RpcClient::new(&client_tls).unwrap();
    client
        .call(&server.addr(), Method::Ping, Bytes::new(), CALL)
        .await
        .unwrap();
    assert_eq!(peers.connections_of(&client_tls.identity()), 1);
    // The client's certificate is valid for an hour: only the client can end this connection, at the
    // server certificate's expiry.
    testkit::eventually(
        "the client closing the connection at the server certificate's expiry",
        Duration::from_secs(10),
        || peers.connections_of(&client_tls.identity()) == 0,
    )
    .await
    .unwrap();
    // And it does not connect again: the server's certificate no longer verifies.
    let again = client
        .call(&server.addr(), Method::Ping, Bytes::new(), CALL)
        .await;
    assert!(matches!(again, Err(RpcError::Refused(_))), "{again:?}");
    server.stop().await;
}

#[tokio::test]
async fn one_identity_holds_at_most_its_connections() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let options = ServerOptions {
        max_connections_per_peer: 2,
        ..ServerOptions::default()
    };
    let (server, peers) = Server::start_gated(
        &pki.coordinator("c1"),
        service,
        options,
        Arc::new(DenyList::default()),
    );
    let greedy = pki.agent("greedy");
    let first = raw_connect(client_config(&greedy), server.addr)
        .await
        .unwrap();
    let second = raw_connect(client_config(&greedy), server.addr)
        .await
        .unwrap();
    raw_ping(&first).await.unwrap();
    raw_ping(&second).await.unwrap();
    let third = raw_connect(client_config(&greedy), server.addr)
        .await
        .unwrap();
    assert!(raw_ping(&third).await.is_err());
    assert_eq!(close_code(&third, CALL).await, CLOSE_TOO_MANY_CONNECTIONS);
    assert_eq!(peers.connections_of(&greedy.identity()), 2);

    // Another identity is not affected.
    let other = raw_connect(client_config(&pki.agent("n2")), server.addr)
        .await
        .unwrap();
    raw_ping(&other).await.unwrap();

    // A connection given back makes room again.
    first.close(quinn::VarInt::from_u32(0), b"done");
    testkit::eventually_async("the closed connection given back", CALL, || async {
        let fourth = raw_connect(client_config(&greedy), server.addr)
            .await
            .unwrap();
        raw_ping(&fourth).await.ok()
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn one_identity_cannot_make_the_server_hold_more_than_its_budget() {
    const FRAME: usize = 1024 * 1024;
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let options = ServerOptions {
        max_frame: FRAME,
        max_buffered_bytes_per_peer: 3 * FRAME,
        request_read_timeout: Duration::from_secs(60),
        ..ServerOptions::default()
    };
    let (server, _peers) = Server::start_gated(
        &pki.coordinator("c1"),
        service,
        options,
        Arc::new(DenyList::default()),
    );
    let hog = pki.coordinator("hog");
    let conn = raw_connect(client_config(&hog), server.addr).await.unwrap();
    let second_conn = raw_connect(client_config(&hog), server.addr).await.unwrap();

    // Four requests announcing a whole frame each, started and never finished: the server reserves each
    // one's length before reading its payload. Three fit in the budget (over two connections); whichever
    // comes fourth is refused at once.
    let announce = u32::try_from(FRAME).unwrap().to_be_bytes();
    let mut streams = Vec::new();
    for conn in [&conn, &conn, &second_conn, &second_conn] {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&announce).await.unwrap();
        send.write_all(&[7; 1000]).await.unwrap();
        streams.push((send, recv));
    }
    let (sends, recvs): (Vec<_>, Vec<_>) = streams.into_iter().unzip();
    let answers = recvs.into_iter().map(|mut recv| {
        Box::pin(async move {
            let frame = protocol::frame::read_frame(&mut recv, protocol::DEFAULT_MAX_FRAME).await;
            (frame, recv)
        })
    });
    let ((first, _), _index, pending) =
        tokio::time::timeout(CALL, futures::future::select_all(answers))
            .await
            .expect("one of the four requests is refused");
    let payload = first.unwrap().expect("an answer");
    let response = <protocol::pb::RpcResponse as prost::Message>::decode(&payload[..]).unwrap();
    let Some(protocol::pb::rpc_response::Result::Error(status)) = response.result else {
        panic!("expected a refusal, got {response:?}");
    };
    let refusal = RpcStatus::from(status);
    assert_eq!(refusal.code, StatusCode::ResourceExhausted);
    // The three others are still held, unanswered.
    let rest = tokio::time::timeout(
        Duration::from_millis(300),
        futures::future::select_all(pending),
    )
    .await;
    assert!(rest.is_err(), "a held request was answered");
    assert!(refusal.message.contains("budget"), "{refusal}");
    // Even a small call of this identity waits for its budget; the connections themselves live on.
    let small = raw_ping(&conn).await.unwrap_err();
    assert!(small.contains("resource_exhausted"), "{small}");
    assert!(conn.close_reason().is_none());

    // Other identities are served meanwhile.
    let other = raw_connect(client_config(&pki.coordinator("c2")), server.addr)
        .await
        .unwrap();
    raw_ping(&other).await.unwrap();

    // Dropping the stalled requests gives the budget back.
    for mut send in sends {
        let _ = send.reset(quinn::VarInt::from_u32(0));
    }
    testkit::eventually_async("the budget given back", CALL, || async {
        raw_ping(&conn).await.ok()
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn limits_that_cannot_work_are_refused() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let tls = pki.coordinator("c1");
    let addr = "127.0.0.1:0".parse().unwrap();
    let no_connections = ServerOptions {
        max_connections_per_peer: 0,
        ..ServerOptions::default()
    };
    assert!(
        protocol::rpc::RpcServer::bind_with(addr, &tls, service.clone(), no_connections).is_err()
    );
    let budget_below_a_frame = ServerOptions {
        max_buffered_bytes_per_peer: protocol::DEFAULT_MAX_FRAME,
        ..ServerOptions::default()
    };
    assert!(
        protocol::rpc::RpcServer::bind_with(addr, &tls, service, budget_below_a_frame).is_err()
    );
}
