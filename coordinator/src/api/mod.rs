//! The coordinator's admin API: REST under `/v1` (axum) and gRPC `meridian.v1` (tonic) on one listener,
//! HTTP/1.1 and HTTP/2, over TLS (plain HTTP only on loopback, for `meridian dev`).
//!
//! One tower service receives every request: `content-type: application/grpc*` goes to the gRPC gate and
//! tonic, everything else to the axum router built from the route table (`routes`). Both authenticate,
//! select the project and check the declared policy the same way (`auth`), and both call the operations in
//! `service`. This module owns the listener's settings (TLS, the connection caps in all and per source
//! address and the refusal they answer; the shared `http_listener` runs the accept loop, connections and
//! the drain), the header and body read timeouts (a body that does not arrive in time is answered 408),
//! the body limit, the periodic write of coalesced refusals to the audit log (`denials`), metrics timing
//! and the rule that every REST error is JSON. It must never serve a route that is not in the table.

mod audit;
mod auth;
mod body_deadline;
mod cluster;
mod denials;
mod error;
mod extract;
mod fleet;
mod grpc;
mod jobs;
mod metrics;
mod openapi;
mod rest;
mod routes;
mod secrets;
mod service;
mod suggest;
mod tenancy;

/// The admin API's request and reply bodies, as the server writes and reads them. Clients (the `meridian`
/// CLI, tests) decode replies into these types and build requests from them, so a field renamed on the
/// server fails to compile in its clients instead of reading as missing.
pub mod dto {
    pub use super::audit::verify::AuditVerification;
    pub use super::audit::AuditList;
    pub use super::cluster::{AddMemberRequest, ClusterOverview, FleetSite, Health};
    pub use super::fleet::{
        AllowIdentityRequest, ClusterPolicyRequest, ClusterPolicyView, DenyIdentityRequest,
        NodeView,
    };
    pub use super::jobs::exec::attach::{AttachJobRequest, TERMINAL_PROTOCOL};
    pub use super::jobs::exec::terminal_frames::{
        TerminalClientFrame, TerminalEndView, TerminalServerFrame, MAX_INPUT_FRAME,
    };
    pub use super::jobs::exec::{
        ExecJobRequest, ExecJobView, JobDirEntryView, JobDirView, JobFileKind,
    };
    pub use super::jobs::{
        AttemptView, ConstraintsBody, JobLogRecordView, JobLogsView, JobPlanView, JobView,
        LocalityBody, LogCursor, LogStream, PlannedReplica, ResourcesBody, RetryBody,
        SubmitJobRequest,
    };
    pub use super::secrets::{PutSecretRequest, RewrapResult, SecretResource};
    pub use super::service::ListPage;
    pub use super::tenancy::{
        CreateBindingRequest, CreateKeyRequest, CreateProjectRequest, CreateServiceAccountRequest,
        CreatedKey, RoleBindingView, SetPolicyRequest, WhoAmI,
    };
    pub use crate::node::{ClusterStatus, MemberStatus};
    pub use crate::state::{
        ApiKeyView, AuditRecord, DeniedIdentity, JobState, Principal, ProjectView, UsageReport,
    };
}

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::Router;
use http::{header, HeaderValue};
use http_listener::{ConnectionLimits, Refusal, ServeOptions};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tower_http::limit::RequestBodyLimitLayer;

use crate::crypto::MasterKeyring;
use crate::node::Handle;
use crate::state::ProjectPolicy;

pub use denials::DenialLimits;
pub use error::ApiError;
pub use protocol::units::{
    format_bytes, format_rfc3339_ms, parse_byte_size, parse_cpu_millis, parse_duration,
    parse_duration_secs, parse_instant_ms, UnitError,
};

use auth::ClientAddr;
use body_deadline::{BodyDeadline, DeadlineBody};
use error::{ErrorKind, ServiceError};
use grpc::GrpcGate;
use routes::MatchedRoute;
use service::AdminService;

/// Default request body limit (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// How long a key created without an explicit lifetime lasts: 90 days.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(90 * 86_400);
/// How long shutdown waits for the last coalesced refusals to reach the audit log.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What one admin API process allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Most connections open at once; one more is answered 503 (plain HTTP) or closed (TLS) at once.
    pub max_connections: usize,
    /// Most connections open at once from one source address.
    pub max_connections_per_source: usize,
    /// How long a client may take to send its first byte, and then its request headers (HTTP/1.1; the
    /// connection is closed).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request body once its headers arrived (answered 408).
    pub body_read_timeout: Duration,
    /// The rate limit and audit coalescing of refused requests.
    pub denials: DenialLimits,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_source: 256,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            denials: DenialLimits::default(),
        }
    }
}

/// Everything the admin API needs.
pub struct AdminApiOptions {
    /// TCP address to listen on (port 0 picks one; see [`AdminApi::local_addr`]).
    pub listen: SocketAddr,
    /// A listener already bound to `listen` (so its address can be advertised before the API starts);
    /// `None` binds `listen` here.
    pub listener: Option<std::net::TcpListener>,
    /// Server certificate; `None` serves plain HTTP, which is refused unless `listen` is loopback.
    pub tls: Option<certs::TlsIdentity>,
    /// The running coordinator.
    pub handle: Handle,
    /// Master keys, to wrap new projects' data keys and seal secrets.
    pub keyring: Arc<MasterKeyring>,
    /// Largest accepted request body (REST) or message (gRPC); [`DEFAULT_MAX_BODY_BYTES`] is usual.
    pub max_body_bytes: usize,
    /// Connection caps, read timeouts and the limit on refused requests.
    pub limits: ApiLimits,
    /// The policy (quotas, network, preemption ceiling) new projects get.
    pub project_defaults: ProjectPolicy,
    /// Lifetime of a key created without one; [`DEFAULT_KEY_TTL`] is usual.
    pub default_key_ttl: Duration,
}

/// The admin API, bound and ready to [`run`](AdminApi::run).
pub struct AdminApi {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: AdminHttp,
    limits: ApiLimits,
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
        let bound = match opts.listener {
            Some(listener) => listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener)),
            None => TcpListener::bind(opts.listen).await,
        };
        let listener = bound.map_err(|source| ApiError::Bind {
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
        opts.project_defaults
            .validate()
            .map_err(|e| ApiError::Config(format!("project defaults: {e}")))?;
        let service = AdminService::new(
            opts.handle,
            opts.keyring,
            opts.limits.denials,
            opts.project_defaults,
            opts.default_key_ttl,
        );
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
                peer: None,
                body_timeout: opts.limits.body_read_timeout,
            },
            limits: opts.limits,
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
        // Stopped only after the connections drained, so refusals made while draining are written too.
        let stop_flusher = CancellationToken::new();
        let flusher = tokio::spawn(flush_denials(
            self.app.service.clone(),
            stop_flusher.clone(),
        ));
        let options = ServeOptions {
            tls: self.tls,
            header_read_timeout: self.limits.header_read_timeout,
            limits: Some(ConnectionLimits {
                max_connections: self.limits.max_connections,
                max_per_source: self.limits.max_connections_per_source,
                refusal: Refusal {
                    content_type: "application/json",
                    body: ServiceError::unavailable("too many connections; try again")
                        .body()
                        .to_string(),
                },
            }),
            ..ServeOptions::new("admin API")
        };
        let app = self.app;
        let service_for = |peer: SocketAddr| {
            let mut app = app.clone();
            app.peer = Some(peer.ip());
            app
        };
        http_listener::serve(self.listener, options, service_for, shutdown).await;
        // The flusher writes what is left when it stops; wait for it (bounded).
        stop_flusher.cancel();
        if tokio::time::timeout(FLUSH_TIMEOUT, flusher).await.is_err() {
            tracing::warn!(
                "the last refused requests could not be written to the audit log in time"
            );
        }
    }
}

/// Writes the coalesced refusals to the audit log every window, and once more when `stop` is cancelled.
async fn flush_denials(service: AdminService, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(service.denials().window());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = ticker.tick() => false,
        };
        let commands = service.denials().drain(service.handle().now_ms());
        let count = commands.len();
        // Written together so the proposer packs them into one log entry.
        let writes = commands.into_iter().map(|cmd| service.handle().write(cmd));
        let failed = futures::future::join_all(writes)
            .await
            .into_iter()
            .filter(Result::is_err)
            .count();
        if failed > 0 {
            tracing::warn!(
                failed,
                of = count,
                "could not write coalesced refusals to the audit log"
            );
        }
        if stopping {
            return;
        }
    }
}

/// The one service behind the listener: routes gRPC to the gate, everything else to the REST router.
#[derive(Clone)]
struct AdminHttp {
    rest: Router,
    grpc: GrpcGate,
    service: AdminService,
    /// The connection's source address (set per connection).
    peer: Option<IpAddr>,
    /// How long a request body may take to arrive.
    body_timeout: Duration,
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
            let deadline = BodyDeadline::new(app.body_timeout);
            let mut req = req.map(|b| Body::new(DeadlineBody::new(b, deadline.clone())));
            if let Some(peer) = app.peer {
                req.extensions_mut().insert(ClientAddr(peer));
            }
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
                    // A body cut off by its deadline is the client's slowness, whatever the handler made
                    // of the failed read: 408, and the connection is closed.
                    Ok(resp) if deadline.expired() => {
                        let mut timeout = ServiceError::new(
                            ErrorKind::RequestTimeout,
                            "the request body did not arrive in time",
                        )
                        .into_response();
                        timeout
                            .extensions_mut()
                            .extend(resp.into_parts().0.extensions);
                        timeout
                    }
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
