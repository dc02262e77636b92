//! The RPC server: accepts QUIC connections, identifies each peer from its certificate, and serves every
//! stream as one call in its own task.
//!
//! Owns the per-connection procedure (identify the peer, admit it through the [`PeerGate`] and the
//! per-identity connection cap, close the connection when the peer's certificate expires) and the
//! per-stream one (reserve the request's bytes from the identity's budget, read the request frame with a
//! timeout, decode, re-check the gate, authorize, run the service under the deadline, answer), and graceful
//! shutdown. It must never let one peer's bytes stop the server or stall another stream: a bad frame or an
//! over-budget request ends that stream, a request that is not Meridian RPC ends that connection, and a
//! failed handshake, refused identity or expired certificate ends only that connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certs::TlsIdentity;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use super::envelope::{decode_request, encode_response, encoded_ok_len};
use super::peer::{self, AdmitAll, Admitted, PeerGate, PeerLimits, PeerTable, Refusal};
use super::transport::{self, SetupError, TransportSettings};
use super::{
    authorize, CallContext, RpcService, RpcStatus, UnknownMethod, CLOSE_PROTOCOL_VIOLATION,
    CLOSE_SHUTDOWN, CLOSE_TOO_MANY_CONNECTIONS, CLOSE_UNAUTHENTICATED, STREAM_BAD_FRAME,
};
use crate::frame::{self, FrameError};

/// Longer than any certificate lives.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How long a finished response stream waits for the peer to acknowledge it.
const RESPONSE_ACK_WAIT: Duration = Duration::from_secs(5);

/// Limits and timeouts of an [`RpcServer`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The longest a call may run, whatever the caller asks for.
    pub max_call_timeout: Duration,
    /// How long a peer has to deliver its whole request frame after opening a stream.
    pub request_read_timeout: Duration,
    /// How long the TLS handshake of a new connection may take.
    pub handshake_timeout: Duration,
    /// The largest request and response frame payload.
    pub max_frame: usize,
    /// How many calls one connection may have in flight.
    pub max_concurrent_streams: u32,
    /// How many connections one identity may hold open at once; one more is closed at once.
    pub max_connections_per_peer: usize,
    /// How many request bytes one identity may have the server hold at once, over all its connections
    /// (frames being read plus the bodies of calls still running). A request that does not fit is refused
    /// with `RESOURCE_EXHAUSTED` before its payload is read. Also bounds what QUIC buffers per connection.
    pub max_buffered_bytes_per_peer: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// How often an otherwise idle connection is kept alive; shorter than `idle_timeout`.
    pub keep_alive: Duration,
    /// How long shutdown waits for calls in flight before closing every connection.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_call_timeout: Duration::from_secs(60),
            request_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_frame: frame::DEFAULT_MAX_FRAME,
            max_concurrent_streams: 128,
            max_connections_per_peer: 8,
            max_buffered_bytes_per_peer: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A bound RPC server; [`RpcServer::run`] serves it until shutdown.
pub struct RpcServer {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    service: Arc<dyn RpcService>,
    trust_domain: String,
    options: ServerOptions,
    peers: PeerTable,
}

impl RpcServer {
    /// Binds a UDP socket on `addr` with default [`ServerOptions`]. Must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        tls: &TlsIdentity,
        service: Arc<dyn RpcService>,
    ) -> Result<RpcServer, SetupError> {
        Self::bind_with(addr, tls, service, ServerOptions::default())
    }

    /// Binds a UDP socket on `addr` with the given options. Must be called inside a tokio runtime.
    pub fn bind_with(
        addr: SocketAddr,
        tls: &TlsIdentity,
        service: Arc<dyn RpcService>,
        options: ServerOptions,
    ) -> Result<RpcServer, SetupError> {
        Self::bind_gated(addr, tls, service, options, Arc::new(AdmitAll))
    }

    /// Binds a UDP socket on `addr` whose peers must also pass `gate`: when their connection is
    /// established, on every call, and whenever [`PeerTable::recheck`] runs on [`RpcServer::peers`]. Must be
    /// called inside a tokio runtime.
    pub fn bind_gated(
        addr: SocketAddr,
        tls: &TlsIdentity,
        service: Arc<dyn RpcService>,
        options: ServerOptions,
        gate: Arc<dyn PeerGate>,
    ) -> Result<RpcServer, SetupError> {
        if options.max_call_timeout.is_zero() || options.request_read_timeout.is_zero() {
            return Err(SetupError::Config(
                "call and request timeouts must be positive".to_string(),
            ));
        }
        if options.max_connections_per_peer == 0 {
            return Err(SetupError::Config(
                "a peer must be allowed at least one connection".to_string(),
            ));
        }
        if options.max_buffered_bytes_per_peer < options.max_frame.saturating_add(1) {
            return Err(SetupError::Config(
                "the per-peer request budget must hold at least one maximum frame".to_string(),
            ));
        }
        let settings = TransportSettings {
            max_concurrent_streams: options.max_concurrent_streams,
            idle_timeout: options.idle_timeout,
            keep_alive: options.keep_alive,
            receive_window: Some(options.max_buffered_bytes_per_peer),
        };
        let config = transport::server_config(tls, &settings)?;
        let endpoint = quinn::Endpoint::server(config, addr)
            .map_err(|source| SetupError::Bind { addr, source })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| SetupError::Bind { addr, source })?;
        Ok(RpcServer {
            endpoint,
            local_addr,
            shared: Arc::new(Shared {
                service,
                trust_domain: tls.trust_domain().to_string(),
                peers: PeerTable::new(
                    gate,
                    PeerLimits {
                        max_connections: options.max_connections_per_peer,
                        max_buffered_bytes: options.max_buffered_bytes_per_peer,
                    },
                ),
                options,
            }),
        })
    }

    /// The address the server listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The table of this server's open connections, to re-check them against the gate when what it decides
    /// on changed. Stays usable while the server runs.
    pub fn peers(&self) -> PeerTable {
        self.shared.peers.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections and calls, lets the calls in
    /// flight finish within [`ServerOptions::shutdown_grace`], and closes the endpoint.
    pub async fn run(self, shutdown: CancellationToken) {
        let RpcServer {
            endpoint,
            local_addr,
            shared,
        } = self;
        info!(addr = %local_addr, "RPC server listening");
        let tasks = TaskTracker::new();
        let stop_streams = CancellationToken::new();
        loop {
            let incoming = tokio::select! {
                () = shutdown.cancelled() => break,
                incoming = endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else {
                // The endpoint was closed under us; nothing more can arrive.
                break;
            };
            tasks.spawn(serve_connection(
                incoming,
                shared.clone(),
                stop_streams.clone(),
                tasks.clone(),
            ));
        }

        info!(addr = %local_addr, "RPC server shutting down");
        endpoint.set_server_config(None);
        stop_streams.cancel();
        tasks.close();
        if tokio::time::timeout(shared.options.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            warn!(
                addr = %local_addr,
                "calls still in flight after the shutdown grace period; closing their connections"
            );
        }
        endpoint.close(CLOSE_SHUTDOWN, b"server shutting down");
        // Give the close frames a moment to leave; peers time out on their own otherwise.
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        info!(addr = %local_addr, "RPC server stopped");
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    stop_streams: CancellationToken,
    tasks: TaskTracker,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            debug!(%remote, error = %e, "incoming connection failed");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.options.handshake_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            // Includes certificates our CA did not sign, expired ones and wrong ALPN.
            info!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            info!(%remote, "TLS handshake timed out");
            return;
        }
    };
    let peer = match transport::peer_certificate(&conn, &shared.trust_domain) {
        Ok(peer) => peer,
        Err(reason) => {
            warn!(%remote, %reason, "refusing connection: peer identity not accepted");
            conn.close(CLOSE_UNAUTHENTICATED, b"peer identity not accepted");
            return;
        }
    };
    let now = std::time::SystemTime::now();
    if peer.expired_at(now) {
        // The handshake checked validity; it can only have lapsed since.
        peer::close_expired(&conn, &peer);
        return;
    }
    let admitted = match shared.peers.admit(&conn, peer) {
        Ok(admitted) => Arc::new(admitted),
        Err(Refusal::Gate(status)) => {
            warn!(%remote, reason = %status.message, "refusing connection: peer not admitted");
            conn.close(super::CLOSE_REVOKED, b"peer identity not admitted");
            return;
        }
        Err(Refusal::TooMany { max }) => {
            warn!(%remote, max, "refusing connection: the peer holds too many connections");
            conn.close(
                CLOSE_TOO_MANY_CONNECTIONS,
                b"too many connections for this identity",
            );
            return;
        }
    };
    // Close the connection the moment the peer's certificate expires: it was only valid at the handshake.
    // (A century caps the wait so the addition cannot overflow whatever date a certificate names.)
    let expires = Instant::now() + admitted.peer.time_left(now).min(CENTURY);

    let span = info_span!("conn", peer = %admitted.peer.identity.uri(), %remote);
    async {
        debug!("connection established");
        loop {
            let accepted = tokio::select! {
                () = stop_streams.cancelled() => break,
                () = tokio::time::sleep_until(expires) => {
                    peer::close_expired(&conn, &admitted.peer);
                    return;
                }
                accepted = conn.accept_bi() => accepted,
            };
            let (send, recv) = match accepted {
                Ok(streams) => streams,
                Err(e) => {
                    debug!(reason = %e, "connection ended");
                    return;
                }
            };
            let call = serve_stream(
                conn.clone(),
                admitted.clone(),
                send,
                recv,
                shared.clone(),
                stop_streams.clone(),
            );
            tasks.spawn(call.instrument(tracing::Span::current()));
        }
        // Shutting down: refuse new calls, let the streams already accepted finish.
        conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(0));
    }
    .instrument(span)
    .await
}

async fn serve_stream(
    conn: quinn::Connection,
    admitted: Arc<Admitted>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let options = &shared.options;
    // The request's bytes are reserved from the identity's budget once its length is known and before any
    // of its payload is read; the reservation lasts until the call is answered.
    let read = tokio::select! {
        read = tokio::time::timeout(
            options.request_read_timeout,
            read_request(&mut recv, options.max_frame, &admitted),
        ) => read,
        // A request still arriving at shutdown is not a call in flight: turn it away at once.
        () = stop.cancelled() => {
            return refuse_stream(send, recv, RpcStatus::unavailable("server shutting down")).await;
        }
    };
    let (payload, _reserved) = match read {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => {
            return refuse_stream(
                send,
                recv,
                RpcStatus::invalid_argument("stream ended before a request frame"),
            )
            .await;
        }
        Ok(Err(RequestError::OverBudget { len })) => {
            warn!(
                len,
                budget = options.max_buffered_bytes_per_peer,
                "request refused: the peer already holds its budget of request bytes"
            );
            return refuse_stream(
                send,
                recv,
                RpcStatus::resource_exhausted(format!(
                    "request of {len} bytes refused: this identity already holds its budget of {} \
                     request bytes on this server",
                    options.max_buffered_bytes_per_peer
                )),
            )
            .await;
        }
        Ok(Err(RequestError::Frame(
            e @ (FrameError::TooLarge { .. } | FrameError::Truncated { .. }),
        ))) => {
            info!(error = %e, "bad request frame");
            return refuse_stream(
                send,
                recv,
                RpcStatus::invalid_argument(format!("bad request frame: {e}")),
            )
            .await;
        }
        Ok(Err(RequestError::Frame(FrameError::Io(e)))) => {
            // Reset by the peer or the connection is gone: nobody is left to answer.
            debug!(error = %e, "request stream failed");
            return;
        }
        Err(_) => {
            info!("request frame not received in time");
            return refuse_stream(
                send,
                recv,
                RpcStatus::deadline_exceeded("request frame not received in time"),
            )
            .await;
        }
    };

    let request = match decode_request(Bytes::from(payload)) {
        Ok(request) => request,
        Err(e) => {
            warn!(error = %e, "undecodable request; closing the connection");
            conn.close(CLOSE_PROTOCOL_VIOLATION, b"undecodable request");
            return;
        }
    };

    let budget = request.timeout.map_or(options.max_call_timeout, |t| {
        t.min(options.max_call_timeout)
    });
    let deadline = Instant::now() + budget;
    if let Ok(method) = request.method.as_ref().copied() {
        if method.is_session() {
            drop(_reserved);
            return serve_session(
                conn,
                &admitted,
                send,
                recv,
                &shared,
                stop,
                method,
                request.body,
                deadline,
            )
            .await;
        }
    }
    let result = match request.method {
        Err(UnknownMethod(id)) => {
            debug!(method_id = id, "unknown method");
            Err(RpcStatus::unimplemented(format!("unknown method id {id}")))
        }
        Ok(method) => match admit_call(&conn, &admitted, &shared.peers, method) {
            Err(status) => Err(status),
            Ok(()) => {
                let ctx = CallContext {
                    peer: admitted.peer.identity.clone(),
                    peer_serial: admitted.peer.serial.clone(),
                    remote: conn.remote_address(),
                    deadline,
                    stopping: stop.clone(),
                };
                let call = shared.service.call(ctx, method, request.body);
                match tokio::time::timeout_at(deadline, call).await {
                    Ok(result) => result,
                    Err(_) => {
                        debug!(method = method.name(), "call passed its deadline");
                        Err(RpcStatus::deadline_exceeded(format!(
                            "{} did not finish within {} ms",
                            method.name(),
                            budget.as_millis()
                        )))
                    }
                }
            }
        },
    };
    let result = match result {
        Ok(body) if encoded_ok_len(body.len()) > options.max_frame => {
            warn!(len = body.len(), "response exceeds the maximum frame");
            Err(RpcStatus::internal(format!(
                "response of {} bytes exceeds the maximum frame of {} bytes",
                body.len(),
                options.max_frame
            )))
        }
        other => other,
    };
    respond(&mut send, result).await;
}

/// Serves a session call: opens it under the call's deadline, answers the opening, then hands the stream
/// to the service's runner for as long as it runs.
#[allow(clippy::too_many_arguments)]
async fn serve_session(
    conn: quinn::Connection,
    admitted: &Admitted,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: &Shared,
    stop: CancellationToken,
    method: super::Method,
    body: Bytes,
    deadline: Instant,
) {
    if let Err(status) = admit_call(&conn, admitted, &shared.peers, method) {
        return refuse_stream(send, recv, status).await;
    }
    let ctx = CallContext {
        peer: admitted.peer.identity.clone(),
        peer_serial: admitted.peer.serial.clone(),
        remote: conn.remote_address(),
        deadline,
        stopping: stop,
    };
    let opened =
        match tokio::time::timeout_at(deadline, shared.service.session(ctx, method, body)).await {
            Ok(opened) => opened,
            Err(_) => Err(RpcStatus::deadline_exceeded(format!(
                "{} was not opened in time",
                method.name()
            ))),
        };
    let runner = match opened {
        Ok(runner) => runner,
        Err(status) => return refuse_stream(send, recv, status).await,
    };
    let accepted = encode_response(Ok(Bytes::new()));
    if let Err(e) = frame::write_frame(&mut send, &accepted).await {
        debug!(error = %e, "could not accept the session");
        return;
    }
    let (sender, receiver) = super::session::halves(send, recv);
    runner(sender, receiver).await;
}

/// Why a request could not be read.
enum RequestError {
    Frame(FrameError),
    /// Its length does not fit in what is left of the identity's budget.
    OverBudget {
        len: usize,
    },
}

/// Reads one request frame, reserving its length from the identity's budget first. `Ok(None)` when the
/// stream ended before a frame.
async fn read_request(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
    admitted: &Admitted,
) -> Result<Option<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>, RequestError> {
    let Some(len) = frame::read_prefix(recv, max_frame)
        .await
        .map_err(RequestError::Frame)?
    else {
        return Ok(None);
    };
    let reserved = admitted
        .reserve(len)
        .ok_or(RequestError::OverBudget { len })?;
    let payload = frame::read_payload(recv, len)
        .await
        .map_err(RequestError::Frame)?;
    Ok(Some((payload, reserved)))
}

/// Checks a call against everything that may have changed since the connection was admitted: the peer's
/// certificate must not have expired and the gate must still admit it (else the connection is closed), its
/// role must be allowed to call `method`, and the gate must admit this call.
fn admit_call(
    conn: &quinn::Connection,
    admitted: &Admitted,
    peers: &PeerTable,
    method: super::Method,
) -> Result<(), RpcStatus> {
    let peer = &admitted.peer;
    if peer.expired_at(std::time::SystemTime::now()) {
        peer::close_expired(conn, peer);
        return Err(RpcStatus::unauthenticated(
            "the caller's certificate expired",
        ));
    }
    if let Err(status) = peers.gate().admit_connection(peer) {
        peer::close_revoked(conn, peer, &status);
        return Err(status);
    }
    if let Err(status) = authorize(method, &peer.identity) {
        warn!(
            peer = %peer.identity.uri(),
            method = method.name(),
            "call refused by the authorization table"
        );
        return Err(status);
    }
    peers.gate().admit_call(peer, method).inspect_err(|status| {
        warn!(
            peer = %peer.identity.uri(),
            method = method.name(),
            reason = %status.message,
            "call refused by the gate"
        );
    })
}

/// Answers a stream whose request frame was unusable, and asks the peer to stop sending on it.
async fn refuse_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    status: RpcStatus,
) {
    // The stream may already be finished or reset by the peer; either way nothing more is read from it.
    let _ = recv.stop(STREAM_BAD_FRAME);
    respond(&mut send, Err(status)).await;
}

async fn respond(send: &mut quinn::SendStream, result: Result<Bytes, RpcStatus>) {
    let payload = encode_response(result);
    if let Err(e) = frame::write_frame(send, &payload).await {
        debug!(error = %e, "could not send the response");
        return;
    }
    if let Err(e) = send.finish() {
        debug!(error = %e, "could not finish the response stream");
        return;
    }
    // Hold the stream (and with it the connection) until the peer has the whole response: during shutdown
    // this task may hold the last handle, and dropping it would close the connection before the data left.
    if tokio::time::timeout(RESPONSE_ACK_WAIT, send.stopped())
        .await
        .is_err()
    {
        debug!("response not acknowledged in time");
    }
}
