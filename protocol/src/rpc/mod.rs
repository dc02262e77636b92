//! The RPC layer between Meridian processes: QUIC (quinn) with mutual TLS, one bidirectional stream per
//! call.
//!
//! A call is one `RpcRequest` frame from the caller, who then finishes its send side, and one
//! `RpcResponse` frame back; a session call ([`Method::is_session`], see [`session`]) keeps the stream
//! open after that answer and carries frames both ways. The callee identifies the caller from its certificate, checks the
//! authorization table ([`authorize`]) and runs the [`RpcService`] under the call's deadline. This module
//! owns the envelope, deadlines and authorization; it must never interpret a method's body, and nothing a
//! peer sends may panic it, stall other streams or connections, or stop a server.

mod client;
mod envelope;
mod faults;
mod method;
mod peer;
mod server;
pub mod session;
mod status;
mod transport;

use std::net::SocketAddr;

use bytes::Bytes;
use certs::Identity;
use futures::future::BoxFuture;

pub use client::RpcClient;
pub(crate) use envelope::{decode_request, decode_response};
pub use faults::{Fault, LinkFaults, Partitions};
pub use method::{allowed_roles, authorize, ensure_speaks_for_node, Method, UnknownMethod};
pub use peer::{AdmitAll, PeerCertificate, PeerGate, PeerTable};
pub use server::{RpcServer, ServerOptions};
pub use session::{SessionReceiver, SessionRunner, SessionSender, SESSION_MAX_FRAME};
pub use status::{status_code_name, RpcError, RpcStatus, StatusCode};
pub use transport::SetupError;

/// The ALPN protocol of Meridian's QUIC RPC.
pub const ALPN: &[u8] = b"meridian/1";

/// Application close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: quinn::VarInt = quinn::VarInt::from_u32(1);
/// Application close code: the peer's certificate does not carry an identity we accept.
pub const CLOSE_UNAUTHENTICATED: quinn::VarInt = quinn::VarInt::from_u32(2);
/// Application close code: the peer sent something that is not Meridian RPC.
pub const CLOSE_PROTOCOL_VIOLATION: quinn::VarInt = quinn::VarInt::from_u32(3);
/// Application close code: the client no longer needs the connection.
pub const CLOSE_CLIENT_DONE: quinn::VarInt = quinn::VarInt::from_u32(4);
/// Application close code: the peer's identity is no longer admitted (denied, revoked, or no longer a
/// member where membership is required).
pub const CLOSE_REVOKED: quinn::VarInt = quinn::VarInt::from_u32(5);
/// Application close code: the peer's certificate expired while the connection was open.
pub const CLOSE_CERT_EXPIRED: quinn::VarInt = quinn::VarInt::from_u32(6);
/// Application close code: the peer's identity already holds as many connections as it may.
pub const CLOSE_TOO_MANY_CONNECTIONS: quinn::VarInt = quinn::VarInt::from_u32(7);

/// Stream error code (`STOP_SENDING`): the request frame broke the framing rules or came too late.
pub const STREAM_BAD_FRAME: quinn::VarInt = quinn::VarInt::from_u32(1);

/// What a service knows about the call it is answering.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The caller's identity, from its verified certificate.
    pub peer: Identity,
    /// The caller's certificate serial number (lowercase hex).
    pub peer_serial: String,
    /// The caller's address.
    pub remote: SocketAddr,
    /// When the caller stops waiting; the server drops the call at this instant.
    pub deadline: tokio::time::Instant,
    /// Cancelled when the server begins to stop: a call that waits for something (a long poll) answers
    /// with what it has now instead of holding shutdown up.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl CallContext {
    /// Checks that the caller is the agent of this node (see [`ensure_speaks_for_node`]).
    pub fn ensure_speaks_for_node(
        &self,
        region: &str,
        cluster: &str,
        node: &str,
    ) -> Result<(), RpcStatus> {
        ensure_speaks_for_node(&self.peer, region, cluster, node)
    }
}

/// The callee's side of every method. Called only after the caller was authorized for `method`; the
/// returned future is dropped when the call's deadline passes.
pub trait RpcService: Send + Sync + 'static {
    fn call(
        &self,
        ctx: CallContext,
        method: Method,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcStatus>>;

    /// Opens a session call ([`Method::is_session`]): checks the request and answers with what runs the
    /// accepted session, or a refusal the caller receives as the call's error. Only the opening is
    /// bounded by the call's deadline; the runner must bound the session itself. By default no method
    /// is a session.
    fn session(
        &self,
        ctx: CallContext,
        method: Method,
        body: Bytes,
    ) -> BoxFuture<'static, Result<SessionRunner, RpcStatus>> {
        let _ = (ctx, body);
        Box::pin(async move {
            Err(RpcStatus::unimplemented(format!(
                "{} is not served here",
                method.name()
            )))
        })
    }
}

/// Decodes a method's message from a call body; failure is `INVALID_ARGUMENT`.
pub fn decode_message<M: prost::Message + Default>(body: &[u8]) -> Result<M, RpcStatus> {
    M::decode(body).map_err(RpcStatus::from)
}

/// Encodes a method's message as a call body.
pub fn encode_message<M: prost::Message>(message: &M) -> Bytes {
    Bytes::from(message.encode_to_vec())
}
