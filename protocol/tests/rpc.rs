//! Calls over real QUIC on loopback with real certificates: round trips, the authorization table,
//! deadlines, reconnecting and graceful shutdown.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use certs::{IdentityKind, Role};
use protocol::pb;
use protocol::rpc::{Method, RpcClient, RpcError, ServerOptions, StatusCode};
use support::{Pki, Server, TestService, CALL};

#[tokio::test]
async fn ping_returns_the_callers_identity() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);

    for tls in [pki.coordinator("c2"), pki.agent("n1")] {
        let client = RpcClient::new(&tls).unwrap();
        let answer: pb::PingResponse = client
            .call_message(&server.addr(), Method::Ping, &pb::PingRequest {}, CALL)
            .await
            .unwrap();
        assert_eq!(answer.identity, tls.identity().uri());
        let seen = client.server_identity(&server.addr(), CALL).await.unwrap();
        assert_eq!(
            seen.kind,
            IdentityKind::Coordinator {
                name: "c1".to_string()
            }
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn raft_methods_are_for_coordinators_only() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let body = Bytes::from_static(b"{\"vote\":1}");

    let agent = RpcClient::new(&pki.agent("n1")).unwrap();
    match agent
        .call(&server.addr(), Method::RaftVote, body.clone(), CALL)
        .await
    {
        Err(RpcError::Remote(status)) => {
            assert_eq!(status.code, StatusCode::PermissionDenied);
            assert!(!RpcError::Remote(status).is_retryable());
        }
        other => panic!("an agent calling RaftVote must be denied, got {other:?}"),
    }
    // The refused call never reached the service.
    assert!(probe.entered.try_recv().is_err());

    let coordinator = RpcClient::new(&pki.coordinator("c2")).unwrap();
    let echoed = coordinator
        .call(&server.addr(), Method::RaftVote, body.clone(), CALL)
        .await
        .unwrap();
    assert_eq!(echoed, body);
    assert_eq!(probe.entered.try_recv(), Ok(Method::RaftVote));

    // And the other way round: agent methods refuse coordinators.
    let beat = pb::Heartbeat {
        node: "n1".into(),
        region: "eu".into(),
        cluster: "a".into(),
        lease_epoch: 3,
        ..Default::default()
    };
    let refused = coordinator
        .call_message::<_, pb::HeartbeatAck>(&server.addr(), Method::AgentHeartbeat, &beat, CALL)
        .await;
    assert!(
        matches!(&refused, Err(RpcError::Remote(s)) if s.code == StatusCode::PermissionDenied),
        "{refused:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_agent_speaks_only_for_its_own_node() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let agent = RpcClient::new(&pki.agent("n1")).unwrap();

    let mut beat = pb::Heartbeat {
        node: "n1".into(),
        region: "eu".into(),
        cluster: "a".into(),
        lease_epoch: 3,
        ..Default::default()
    };
    let ack: pb::HeartbeatAck = agent
        .call_message(&server.addr(), Method::AgentHeartbeat, &beat, CALL)
        .await
        .unwrap();
    assert_eq!(ack.lease_epoch, 3);

    beat.node = "n2".into();
    let refused = agent
        .call_message::<_, pb::HeartbeatAck>(&server.addr(), Method::AgentHeartbeat, &beat, CALL)
        .await;
    assert!(
        matches!(&refused, Err(RpcError::Remote(s)) if s.code == StatusCode::PermissionDenied),
        "{refused:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_slow_call_times_out_at_the_callers_deadline() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let client = RpcClient::new(&pki.coordinator("c2")).unwrap();
    // Connect first, so the timeout below measures the call itself.
    client.server_identity(&server.addr(), CALL).await.unwrap();

    let started = Instant::now();
    let result = client
        .call(
            &server.addr(),
            Method::ReadIndex,
            Bytes::new(),
            Duration::from_millis(300),
        )
        .await;
    // The deadline travels with the call, so whichever side notices first ends it: the client's own timer,
    // or the server dropping the call at the deadline and saying so (the later of the two loses the race).
    match &result {
        Err(RpcError::Timeout) => {}
        Err(RpcError::Remote(status)) if status.code == StatusCode::DeadlineExceeded => {}
        other => panic!("the call did not end at its deadline: {other:?}"),
    }
    assert!(RpcError::Timeout.is_retryable());
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < CALL, "took {:?}", started.elapsed());
    assert_eq!(probe.entered.recv().await, Some(Method::ReadIndex));

    // The connection stays usable after a timed-out call.
    client
        .call(&server.addr(), Method::Ping, Bytes::new(), CALL)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_server_caps_every_deadline() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let options = ServerOptions {
        max_call_timeout: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let server = Server::start_with(&pki.coordinator("c1"), service, options, "127.0.0.1:0");
    let client = RpcClient::new(&pki.coordinator("c2")).unwrap();

    let started = Instant::now();
    let result = client
        .call(&server.addr(), Method::ReadIndex, Bytes::new(), CALL)
        .await;
    assert!(
        matches!(&result, Err(RpcError::Remote(s)) if s.code == StatusCode::DeadlineExceeded),
        "{result:?}"
    );
    assert!(started.elapsed() < CALL / 2, "took {:?}", started.elapsed());

    // The service sees the capped deadline.
    let answer: pb::ForwardWriteResponse = client
        .call_message(
            &server.addr(),
            Method::ForwardWrite,
            &pb::ForwardWriteRequest::default(),
            CALL,
        )
        .await
        .unwrap();
    let left: u64 = String::from_utf8(answer.outcome.to_vec())
        .unwrap()
        .parse()
        .unwrap();
    assert!(left <= 200, "service saw {left} ms left");
    server.stop().await;
}

#[tokio::test]
async fn the_callers_timeout_travels_as_the_deadline() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let client = RpcClient::new(&pki.coordinator("c2")).unwrap();

    let answer: pb::ForwardWriteResponse = client
        .call_message(
            &server.addr(),
            Method::ForwardWrite,
            &pb::ForwardWriteRequest::default(),
            Duration::from_secs(4),
        )
        .await
        .unwrap();
    let left: u64 = String::from_utf8(answer.outcome.to_vec())
        .unwrap()
        .parse()
        .unwrap();
    assert!(left <= 4000, "service saw {left} ms left");
    assert!(left > 0, "service saw no time left");
    server.stop().await;
}

#[tokio::test]
async fn the_client_refuses_servers_of_other_roles() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    // An agent serving RPC: a coordinator-only client must not talk to it.
    let server = Server::start(&pki.agent("n1"), service);

    let client = RpcClient::new(&pki.coordinator("c2")).unwrap();
    let result = client
        .call(&server.addr(), Method::Ping, Bytes::new(), CALL)
        .await;
    assert!(matches!(result, Err(RpcError::Refused(_))), "{result:?}");
    assert!(probe.entered.try_recv().is_err());

    let accepting = RpcClient::with_server_roles(&pki.coordinator("c2"), &[Role::Agent]).unwrap();
    accepting
        .call(&server.addr(), Method::Ping, Bytes::new(), CALL)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_client_reconnects_after_the_server_restarts() {
    let pki = Pki::new();
    let tls = pki.coordinator("c1");
    let (service, _probe) = TestService::new();
    let first = Server::start(&tls, service.clone());
    let addr = first.addr;
    let client = RpcClient::new(&pki.coordinator("c2")).unwrap();
    client
        .call(&addr.to_string(), Method::Ping, Bytes::new(), CALL)
        .await
        .unwrap();
    first.stop().await;

    let while_down = client
        .call(
            &addr.to_string(),
            Method::Ping,
            Bytes::new(),
            Duration::from_millis(500),
        )
        .await;
    assert!(
        matches!(&while_down, Err(e) if e.is_retryable()),
        "{while_down:?}"
    );

    let second = Server::start_with(&tls, service, ServerOptions::default(), &addr.to_string());
    // The cached connection is gone; calls succeed again once the client has reconnected.
    let deadline = Instant::now() + CALL;
    loop {
        match client
            .call(
                &addr.to_string(),
                Method::Ping,
                Bytes::new(),
                Duration::from_secs(2),
            )
            .await
        {
            Ok(_) => break,
            Err(e) if e.is_retryable() && Instant::now() < deadline => continue,
            Err(e) => panic!("no successful call after the restart: {e:?}"),
        }
    }
    second.stop().await;
}

#[tokio::test]
async fn reconnecting_to_a_lost_peer_starts_over_quickly() {
    let pki = Pki::new();
    let client = RpcClient::new(&pki.coordinator("c2")).unwrap();
    let call = |addr: String| {
        let client = client.clone();
        async move {
            client
                .call(&addr, Method::Ping, Bytes::new(), Duration::from_secs(5))
                .await
        }
    };

    // An address that never answered: one handshake attempt gets the full connect window.
    let unused = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap();
    let never = call(unused.to_string()).await;
    assert!(
        matches!(&never, Err(RpcError::Transport(m)) if m.contains("within 2s")),
        "{never:?}"
    );

    // A peer this client was connected to, now gone: each attempt is a few round trips long (at least
    // 250 ms), so a peer that comes back is reached by the next fresh handshake instead of waiting out
    // the backoff of one long one.
    let tls = pki.coordinator("c1");
    let (service, _probe) = TestService::new();
    let server = Server::start(&tls, service.clone());
    let addr = server.addr.to_string();
    call(addr.clone()).await.unwrap();
    server.stop().await;
    for _ in 0..2 {
        let lost = call(addr.clone()).await;
        assert!(
            matches!(&lost, Err(RpcError::Transport(m)) if m.contains("within 250ms")),
            "{lost:?}"
        );
    }
    let back = Server::start_with(&tls, service, ServerOptions::default(), &addr);
    let answered = wait_until_answered(&client, &addr).await;
    assert!(answered, "the restarted server was never reached");
    back.stop().await;
}

/// Calls until one succeeds (true) or the test's call budget runs out (false).
async fn wait_until_answered(client: &RpcClient, addr: &str) -> bool {
    let deadline = Instant::now() + CALL;
    while Instant::now() < deadline {
        let answer = client
            .call(addr, Method::Ping, Bytes::new(), Duration::from_secs(1))
            .await;
        if answer.is_ok() {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn shutdown_lets_calls_in_flight_finish() {
    let pki = Pki::new();
    let (service, mut probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let client = RpcClient::new(&pki.coordinator("c2")).unwrap();

    let addr = server.addr();
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call_message::<_, pb::ReadIndexResponse>(
                    &addr,
                    Method::ReadIndex,
                    &pb::ReadIndexRequest {},
                    CALL,
                )
                .await
        }
    });
    assert_eq!(probe.entered.recv().await, Some(Method::ReadIndex));

    server.shutdown.cancel();
    probe.gate.send(true).unwrap();
    let answer = tokio::time::timeout(CALL, call).await.unwrap().unwrap();
    assert_eq!(answer.unwrap().read_index, 7);
    tokio::time::timeout(CALL, server.task)
        .await
        .expect("run returns after shutdown")
        .unwrap();

    // Stopped means stopped: nothing answers any more.
    let after = client
        .call(
            &server.addr.to_string(),
            Method::Ping,
            Bytes::new(),
            Duration::from_millis(500),
        )
        .await;
    assert!(after.is_err(), "{after:?}");
}

#[tokio::test]
async fn concurrent_calls_on_one_client_all_succeed() {
    let pki = Pki::new();
    let (service, _probe) = TestService::new();
    let server = Server::start(&pki.coordinator("c1"), service);
    let client = RpcClient::new(&pki.coordinator("c2")).unwrap();

    let calls = (0..64u32).map(|i| {
        let client = client.clone();
        let addr = server.addr();
        async move {
            let body = Bytes::from(i.to_be_bytes().to_vec());
            let echoed = client
                .call(&addr, Method::RaftVote, body.clone(), CALL)
                .await?;
            assert_eq!(echoed, body);
            Ok::<_, RpcError>(())
        }
    });
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    server.stop().await;
}
