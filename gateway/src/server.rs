//! The gateway's listener: serves the gateway's routes over HTTP/1.1 and HTTP/2 (prior knowledge) on the
//! shared HTTP listener (`http_listener`), and stops cleanly on shutdown.
//!
//! Owns the gateway's header-read timeout (a connection must send its first byte, then each request's
//! headers, within it) and request body limit; accepting, connections and the bounded drain on shutdown
//! are the shared listener's. Must never let one slow client hold shutdown up for longer than the drain
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use http_listener::ServeOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tracing::Instrument as _;

use crate::error::json_errors;
use crate::routes;
use crate::source::RouteSource;

/// Default request body limit: 64 MiB, room for a large tensor batch in JSON.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// How long a client may take to send its first byte, and then each request's headers (HTTP/1.1).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    let serving = ServeOptions {
        header_read_timeout: HEADER_READ_TIMEOUT,
        ..ServeOptions::new("gateway")
    };
    http_listener::serve(listener, serving, |_| app.clone(), shutdown)
        .instrument(tracing::info_span!("gateway", %addr))
        .await
}
