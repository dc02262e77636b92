//! Session calls over real QUIC on loopback with real certificates: frames both ways until either side
//! finishes, refusals as the call's error, the authorization table, and a peer that breaks the framing
//! rules losing its session but not its connection.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use protocol::rpc::{
    CallContext, Method, RpcClient, RpcError, RpcService, RpcStatus, SessionRunner, StatusCode,
    SESSION_MAX_FRAME,
};
use support::{Pki, Server, CALL};

/// Answers each frame with its bytes upper-cased; a session opened with `no` is refused; one opened with
/// `greet` speaks first.
struct Shouter;

impl RpcService for Shouter {
    fn call(
        &self,
        _ctx: CallContext,
        method: Method,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcStatus>> {
        Box::pin(async move {
            match method {
                Method::Ping => Ok(body),
                _ => Err(RpcStatus::unimplemented("not here")),
            }
        })
    }

    fn session(
        &self,
        _ctx: CallContext,
        _method: Method,
        body: Bytes,
    ) -> BoxFuture<'static, Result<SessionRunner, RpcStatus>> {
        Box::pin(async move {
            if &body[..] == b"no" {
                return Err(RpcStatus::failed_precondition("not now"));
            }
            let greet = &body[..] == b"greet";
            let runner: SessionRunner = Box::new(move |mut tx, mut rx| {
                Box::pin(async move {
                    if greet && tx.send(b"hello").await.is_err() {
                        return;
                    }
                    while let Ok(Some(frame)) = rx.recv().await {
                        if tx.send(&frame.to_ascii_uppercase()).await.is_err() {
                            return;
                        }
                    }
                    tx.finish();
                    tx.flushed(CALL).await;
                })
            });
            Ok(runner)
        })
    }
}

#[tokio::test]
async fn frames_flow_both_ways_until_the_caller_finishes() {
    let pki = Pki::new();
    let server = Server::start(&pki.agent("n1"), Arc::new(Shouter));
    let client =
        RpcClient::with_server_roles(&pki.coordinator("c1"), &[certs::Role::Agent]).unwrap();
    let (mut tx, mut rx) = client
        .open_session(
            &server.addr(),
            Method::AgentAttachJob,
            Bytes::from_static(b"greet"),
            CALL,
        )
        .await
        .expect("opened");
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&b"hello"[..]));
    for word in ["one", "two", "three"] {
        tx.send(word.as_bytes()).await.unwrap();
        let answer = rx.recv().await.unwrap().expect("an answer");
        assert_eq!(answer, word.to_uppercase().as_bytes());
    }
    // A frame as large as allowed goes through whole.
    let big = vec![b'a'; SESSION_MAX_FRAME];
    tx.send(&big).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().map(|f| f.len()), Some(big.len()));
    tx.finish();
    assert_eq!(
        rx.recv().await.unwrap(),
        None,
        "the server finished after us"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_refused_session_is_the_calls_error_and_ordinary_methods_are_not_sessions() {
    let pki = Pki::new();
    let server = Server::start(&pki.agent("n1"), Arc::new(Shouter));
    let client =
        RpcClient::with_server_roles(&pki.coordinator("c1"), &[certs::Role::Agent]).unwrap();
    match client
        .open_session(
            &server.addr(),
            Method::AgentAttachJob,
            Bytes::from_static(b"no"),
            CALL,
        )
        .await
    {
        Err(RpcError::Remote(status)) => {
            assert_eq!(status.code, StatusCode::FailedPrecondition);
            assert_eq!(status.message, "not now");
        }
        other => panic!("expected the refusal, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        client
            .open_session(&server.addr(), Method::Ping, Bytes::new(), CALL)
            .await,
        Err(RpcError::Decode(_))
    ));
    server.stop().await;
}

#[tokio::test]
async fn only_coordinators_may_open_a_terminal_session() {
    let pki = Pki::new();
    let server = Server::start(&pki.agent("n1"), Arc::new(Shouter));
    let other_agent =
        RpcClient::with_server_roles(&pki.agent("n2"), &[certs::Role::Agent]).unwrap();
    match other_agent
        .open_session(
            &server.addr(),
            Method::AgentAttachJob,
            Bytes::from_static(b"greet"),
            CALL,
        )
        .await
    {
        Err(RpcError::Remote(status)) => assert_eq!(status.code, StatusCode::PermissionDenied),
        other => panic!("an agent must be refused, got {:?}", other.map(|_| ())),
    }
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_ends_the_session_but_not_the_connection() {
    let pki = Pki::new();
    let server = Server::start(&pki.agent("n1"), Arc::new(Shouter));
    let tls = pki.coordinator("c1");
    let client = RpcClient::with_server_roles(&tls, &[certs::Role::Agent]).unwrap();
    let (mut tx, mut rx) = client
        .open_session(&server.addr(), Method::AgentAttachJob, Bytes::new(), CALL)
        .await
        .expect("opened");
    // Our sender refuses to send one...
    assert!(tx.send(&vec![0u8; SESSION_MAX_FRAME + 1]).await.is_err());
    // ...so write a length prefix past the limit by hand, through a raw stream on a raw connection.
    let conn = support::raw_connect(support::client_config(&tls), server.addr().parse().unwrap())
        .await
        .expect("connected");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let request = support::request_frame(Method::AgentAttachJob.id(), b"");
    send.write_all(&request).await.unwrap();
    let accepted = protocol::frame::read_frame(&mut recv, 1 << 20)
        .await
        .unwrap()
        .expect("the opening is answered");
    assert!(!accepted.is_empty());
    let too_long = u32::try_from(SESSION_MAX_FRAME + 1).unwrap().to_be_bytes();
    send.write_all(&too_long).await.unwrap();
    // The server ends that session: its side finishes with nothing more.
    let end = protocol::frame::read_frame(&mut recv, 1 << 20).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    // The same connection still serves calls, and the first session is untouched.
    assert!(support::raw_ping(&conn).await.is_ok());
    tx.send(b"still here").await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap().as_deref(),
        Some(&b"STILL HERE"[..])
    );
    tx.finish();
    assert_eq!(rx.recv().await.unwrap(), None);
    server.stop().await;
}
