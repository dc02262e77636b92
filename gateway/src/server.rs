//! The gateway's listener: accepts TCP connections, speaks HTTP/1.1 and HTTP/2 (prior knowledge) on them,
//! and stops cleanly on shutdown.
//!
//! Owns connections, the header-read timeout, the request body limit and the drain on shutdown. Must never
//! let one slow client hold shutdown up for longer than the drain timeout.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::limit::RequestBodyLimitLayer;
use tracing::Instrument as _;

use crate::error::json_errors;
use crate::routes;
use crate::source::RouteSource;

/// Default request body limit: 64 MiB, room for a large tensor batch in JSON.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// How long an HTTP/1.1 client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight requests before dropping their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How the gateway serves.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Largest accepted request body; a larger one answers 413.
    pub max_body_bytes: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Serves the gateway's routes on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// in-flight requests finish (for a bounded time) and returns. Plain HTTP: the caller decides where that is
/// acceptable.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn RouteSource>,
    options: GatewayOptions,
    shutdown: CancellationToken,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown".to_owned());
    let app = routes::router(source, crate::metrics::GatewayMetrics::new())
        .layer(RequestBodyLimitLayer::new(options.max_body_bytes.max(1)))
        .layer(axum::middleware::map_response(json_errors));
    let connections = TaskTracker::new();
    let span = tracing::info_span!("gateway", %addr);
    async {
        tracing::info!("gateway listening");
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(
                        serve_connection(stream, app.clone(), shutdown.clone())
                            .instrument(tracing::debug_span!("conn", %peer)),
                    );
                }
                Err(e) => {
                    // Typically out of file descriptors: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accepting a gateway connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        drop(listener);
        connections.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("gateway connections did not drain in time; dropping them");
        }
        tracing::info!("gateway stopped");
    }
    .instrument(span)
    .await
}

/// Serves one connection until it closes, or until shutdown lets its in-flight requests finish.
async fn serve_connection(stream: TcpStream, app: axum::Router, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "gateway connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gateway connection ended with an error during shutdown");
            }
        }
    }
}
