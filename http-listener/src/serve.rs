//! The accept loop and the life of one connection: admission under the caps, the TLS handshake, hyper's
//! HTTP/1.1 (with upgrades) and HTTP/2 connection with its header timeout, and the graceful stop.
//!
//! Owns the connections' tasks and the drain on shutdown. Must never let a failed accept, a failed
//! handshake or a connection's error reach anything but that connection.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::caps::{ConnectionCaps, ConnectionLimits};
use crate::first_byte::FirstByteDeadline;

/// How long a client may take to send its first byte, and then its request headers, unless told otherwise.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight requests before dropping their connections, unless told otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the loop pauses after a failed accept (typically out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type BoxError = Box<dyn StdError + Send + Sync>;

/// A service that answers the requests of one connection: any tower service hyper can drive on a task,
/// such as an axum `Router`.
pub trait ConnectionService<B>:
    tower::Service<
        http::Request<Incoming>,
        Response = http::Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> ConnectionService<B> for S
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
}

/// The body of a [`ConnectionService`]'s responses.
pub trait ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ResponseBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// How one listener serves.
#[derive(Clone)]
pub struct ServeOptions {
    /// What the server is called in logs (`admin API`, `gateway`).
    pub name: &'static str,
    /// TLS for every connection; `None` serves plain HTTP (the caller decides where that is acceptable).
    pub tls: Option<TlsAcceptor>,
    /// How long a connection may take to send its first byte, and then each request's headers (HTTP/1.1;
    /// the connection is closed).
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// The connection caps; `None`: no cap.
    pub limits: Option<ConnectionLimits>,
}

impl ServeOptions {
    /// Plain HTTP, no caps, [`DEFAULT_HEADER_READ_TIMEOUT`] and [`DEFAULT_DRAIN_TIMEOUT`].
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            tls: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            limits: None,
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .field("header_read_timeout", &self.header_read_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Serves `listener` until `shutdown` is cancelled, then stops accepting, lets in-flight requests finish
/// (for [`ServeOptions::drain_timeout`]) and returns. `service_for` makes the service of each admitted
/// connection from its peer's address.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    options: ServeOptions,
    service_for: F,
    shutdown: CancellationToken,
) where
    F: Fn(SocketAddr) -> S,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let name = options.name;
    let connections = TaskTracker::new();
    let caps = options.limits.as_ref().map(ConnectionCaps::new);
    tracing::info!("{name} listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a {name} connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
                continue;
            }
        };
        let permit = match &caps {
            None => None,
            Some(caps) => match caps.admit(peer.ip()) {
                Some(permit) => Some(permit),
                None => {
                    tracing::debug!(%peer, "{name} connection refused: too many connections");
                    if options.tls.is_none() {
                        connections.spawn(caps.refuse(stream));
                    }
                    continue;
                }
            },
        };
        let service = service_for(peer);
        let connection = serve_connection(
            stream,
            options.tls.clone(),
            service,
            options.header_read_timeout,
            name,
            shutdown.clone(),
        );
        connections.spawn(
            async move {
                connection.await;
                drop(permit);
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(options.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("{name} connections did not drain in time; dropping them");
    }
    tracing::info!("{name} stopped");
}

/// Serves one TCP connection (after its TLS handshake, when TLS is on) until it closes or shutdown.
async fn serve_connection<S, B>(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    service: S,
    header_timeout: Duration,
    name: &'static str,
    shutdown: CancellationToken,
) where
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let _ = stream.set_nodelay(true);
    match tls {
        Some(acceptor) => {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls_stream)) => {
                    let io = FirstByteDeadline::new(tls_stream, header_timeout);
                    serve_http(TokioIo::new(io), service, header_timeout, name, shutdown).await
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
        None => {
            let io = FirstByteDeadline::new(stream, header_timeout);
            serve_http(TokioIo::new(io), service, header_timeout, name, shutdown).await
        }
    }
}

async fn serve_http<I, S, B>(
    io: I,
    service: S,
    header_timeout: Duration,
    name: &'static str,
    shutdown: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    // With upgrades: a WebSocket (an interactive terminal session) takes the connection over once its
    // handler answered 101; the connection's task then ends and the handler's task owns the socket.
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "{name} connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "{name} connection ended with an error during shutdown");
            }
        }
    }
}
