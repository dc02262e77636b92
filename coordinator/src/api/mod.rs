//! The coordinator's admin API: REST under `/v1` (axum) and gRPC `meridian.v1` (tonic) on one listener,
//! HTTP/1.1 and HTTP/2, over TLS (plain HTTP only on loopback, for `meridian dev`).
//!
//! One tower service receives every request: `content-type: application/grpc*` goes to the gRPC gate and
//! tonic, everything else to the axum router built from the route table (`routes`). Both authenticate,
//! select the project and check the declared policy the same way (`auth`), and both call the operations in
//! `service`. This module owns the listener, connections, the body limit, metrics timing and the rule that
//! every REST error is JSON. It must never serve a route that is not in the table.

mod auth;
mod error;
mod extract;
mod grpc;
mod jobs;
mod metrics;
mod openapi;
mod rest;
mod routes;
mod service;
mod units;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::Router;
use http::{header, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tower_http::limit::RequestBodyLimitLayer;
use tracing::Instrument as _;

use crate::crypto::MasterKeyring;
use crate::node::Handle;

pub use error::ApiError;
pub use units::{
    format_bytes, format_rfc3339_ms, parse_byte_size, parse_cpu_millis, parse_duration_secs,
    parse_instant_ms, UnitError,
};

use error::{ErrorKind, ServiceError};
use grpc::GrpcGate;
use routes::MatchedRoute;
use service::AdminService;

/// Default request body limit (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// How long a key created without an explicit lifetime lasts: 90 days.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(90 * 86_400);
/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1.1 client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight requests before dropping their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the admin API needs.
pub struct AdminApiOptions {
    /// TCP address to listen on (port 0 picks one; see [`AdminApi::local_addr`]).
    pub listen: SocketAddr,
    /// Server certificate; `None` serves plain HTTP, which is refused unless `listen` is loopback.
    pub tls: Option<certs::TlsIdentity>,
    /// The running coordinator.
    pub handle: Handle,
    /// Master keys, to wrap new projects' data keys and seal secrets.
    pub keyring: Arc<MasterKeyring>,
    /// Largest accepted request body (REST) or message (gRPC); [`DEFAULT_MAX_BODY_BYTES`] is usual.
    pub max_body_bytes: usize,
    /// Lifetime of a key created without one; [`DEFAULT_KEY_TTL`] is usual.
    pub default_key_ttl: Duration,
}

/// The admin API, bound and ready to [`run`](AdminApi::run).
pub struct AdminApi {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: AdminHttp,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl AdminApi {
    /// Binds the listener and builds the REST router and gRPC services.
    pub async fn bind(opts: AdminApiOptions) -> Result<AdminApi, ApiError> {
        if opts.tls.is_none() && !opts.listen.ip().is_loopback() {
            return Err(ApiError::PlainHttpOffLoopback(opts.listen));
        }
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ApiError::Bind {
                addr: opts.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ApiError::Bind {
            addr: opts.listen,
            source,
        })?;
        let tls = opts
            .tls
            .map(|t| TlsAcceptor::from(t.tls_server_config(&[b"h2", b"http/1.1"])));
        let max_body = opts.max_body_bytes.max(1);
        let service = AdminService::new(opts.handle, opts.keyring, opts.default_key_ttl);
        let rest = routes::build_router(service.clone())
            .layer(DefaultBodyLimit::disable())
            .layer(RequestBodyLimitLayer::new(max_body));
        let grpc = GrpcGate::new(service.clone(), grpc::routes(service.clone(), max_body));
        Ok(AdminApi {
            listener,
            local_addr,
            tls,
            app: AdminHttp {
                rest,
                grpc,
                service,
            },
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight requests finish (for a
    /// bounded time) and returns.
    #[tracing::instrument(name = "admin_api", skip_all, fields(addr = %self.local_addr, tls = self.tls.is_some()))]
    pub async fn run(self, shutdown: CancellationToken) {
        let connections = TaskTracker::new();
        tracing::info!("admin API listening");
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let app = self.app.clone();
                    let tls = self.tls.clone();
                    let shutdown = shutdown.clone();
                    connections.spawn(
                        serve_connection(stream, tls, app, shutdown)
                            .instrument(tracing::debug_span!("conn", %peer)),
                    );
                }
                Err(e) => {
                    // Typically out of file descriptors: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accepting an admin API connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        drop(self.listener);
        connections.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("admin API connections did not drain in time; dropping them");
        }
        tracing::info!("admin API stopped");
    }
}

/// Serves one TCP connection (after its TLS handshake, when TLS is on) until it closes or shutdown.
async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    app: AdminHttp,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        Some(acceptor) => {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls_stream)) => serve_http(TokioIo::new(tls_stream), app, shutdown).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
        None => serve_http(TokioIo::new(stream), app, shutdown).await,
    }
}

async fn serve_http<I>(io: I, app: AdminHttp, shutdown: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "admin API connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin API connection ended with an error during shutdown");
            }
        }
    }
}

/// The one service behind the listener: routes gRPC to the gate, everything else to the REST router.
#[derive(Clone)]
struct AdminHttp {
    rest: Router,
    grpc: GrpcGate,
    service: AdminService,
}

fn is_grpc(req: &http::Request<hyper::body::Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

impl tower::Service<http::Request<hyper::body::Incoming>> for AdminHttp {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let started = Instant::now();
        let method = metrics::method_label(req.method());
        let grpc = is_grpc(&req);
        let app = self.clone();
        Box::pin(async move {
            let mut req = req.map(Body::new);
            let resp = if grpc {
                match app.grpc.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            } else {
                if let Some(path) = routes::rewrite_custom_method(req.uri().path()) {
                    rewrite_path(&mut req, &path);
                }
                match app.rest.oneshot(req).await {
                    Ok(resp) => json_errors(resp),
                    Err(never) => match never {},
                }
            };
            let route = resp
                .extensions()
                .get::<MatchedRoute>()
                .map_or(metrics::UNMATCHED_ROUTE, |m| m.0);
            let elapsed = started.elapsed();
            let status = resp.status().as_u16();
            app.service
                .metrics()
                .observe(method, route, status, elapsed);
            tracing::debug!(
                method,
                route,
                status,
                grpc,
                elapsed_us = elapsed.as_micros() as u64,
                "admin API request"
            );
            Ok(resp)
        })
    }
}

/// Replaces the request's path, keeping its query.
fn rewrite_path(req: &mut http::Request<Body>, path: &str) {
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => return,
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Gives every error response of the REST side our JSON body (axum's 405 and the body limit's 413 come
/// without one). Responses that already carry JSON are left alone.
fn json_errors(resp: http::Response<Body>) -> http::Response<Body> {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let kind = ErrorKind::from_status(status);
    let message = match kind {
        ErrorKind::MethodNotAllowed => "this route does not accept that method".to_owned(),
        ErrorKind::PayloadTooLarge => "the request body is larger than the limit".to_owned(),
        ErrorKind::NotFound => "no such route".to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
    };
    let (parts, _) = resp.into_parts();
    let mut fresh = ServiceError::new(kind, message).into_response();
    *fresh.status_mut() = status;
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            fresh.headers_mut().insert(name, v.clone());
        }
    }
    fresh.extensions_mut().extend(parts.extensions);
    fresh.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    fresh
}
