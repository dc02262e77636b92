//! The RPC server: accepts QUIC connections, identifies each peer from its certificate, and serves every
//! stream as one call in its own task.
//!
//! Owns the per-stream procedure (read the request frame with a timeout, decode, authorize, run the
//! service under the deadline, answer) and graceful shutdown. It must never let one peer's bytes stop the
//! server or stall another stream: a bad frame ends that stream, a request that is not Meridian RPC ends
//! that connection, and a failed handshake or refused identity ends only that connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certs::{Identity, TlsIdentity};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use super::envelope::{decode_request, encode_response, encoded_ok_len};
use super::transport::{self, SetupError, TransportSettings};
use super::{
    authorize, CallContext, RpcService, RpcStatus, UnknownMethod, CLOSE_PROTOCOL_VIOLATION,
    CLOSE_SHUTDOWN, CLOSE_UNAUTHENTICATED, STREAM_BAD_FRAME,
};
use crate::frame::{self, FrameError};

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
            max_concurrent_streams: 256,
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
        if options.max_call_timeout.is_zero() || options.request_read_timeout.is_zero() {
            return Err(SetupError::Config(
                "call and request timeouts must be positive".to_string(),
            ));
        }
        let settings = TransportSettings {
            max_concurrent_streams: options.max_concurrent_streams,
            idle_timeout: options.idle_timeout,
            keep_alive: options.keep_alive,
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
                options,
            }),
        })
    }

    /// The address the server listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
    let peer = match transport::peer_identity(&conn, &shared.trust_domain) {
        Ok(peer) => peer,
        Err(reason) => {
            warn!(%remote, %reason, "refusing connection: peer identity not accepted");
            conn.close(CLOSE_UNAUTHENTICATED, b"peer identity not accepted");
            return;
        }
    };

    let span = info_span!("conn", peer = %peer.uri(), %remote);
    async {
        debug!("connection established");
        loop {
            let accepted = tokio::select! {
                () = stop_streams.cancelled() => break,
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
                peer.clone(),
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
    peer: Identity,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let options = &shared.options;
    let read = tokio::select! {
        read = tokio::time::timeout(
            options.request_read_timeout,
            frame::read_frame(&mut recv, options.max_frame),
        ) => read,
        // A request still arriving at shutdown is not a call in flight: turn it away at once.
        () = stop.cancelled() => {
            return refuse_stream(send, recv, RpcStatus::unavailable("server shutting down")).await;
        }
    };
    let payload = match read {
        Ok(Ok(Some(payload))) => payload,
        Ok(Ok(None)) => {
            return refuse_stream(
                send,
                recv,
                RpcStatus::invalid_argument("stream ended before a request frame"),
            )
            .await;
        }
        Ok(Err(e @ (FrameError::TooLarge { .. } | FrameError::Truncated { .. }))) => {
            info!(error = %e, "bad request frame");
            return refuse_stream(
                send,
                recv,
                RpcStatus::invalid_argument(format!("bad request frame: {e}")),
            )
            .await;
        }
        Ok(Err(FrameError::Io(e))) => {
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
    let result = match request.method {
        Err(UnknownMethod(id)) => {
            debug!(method_id = id, "unknown method");
            Err(RpcStatus::unimplemented(format!("unknown method id {id}")))
        }
        Ok(method) => match authorize(method, &peer) {
            Err(status) => {
                warn!(
                    peer = %peer.uri(),
                    method = method.name(),
                    "call refused by the authorization table"
                );
                Err(status)
            }
            Ok(()) => {
                let ctx = CallContext {
                    peer,
                    remote: conn.remote_address(),
                    deadline,
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
