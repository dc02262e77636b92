//! REST handlers shared by every domain, and the process's own routes: the [`Scoped`] extractor and the
//! answer types the domains' handlers (`<domain>/rest.rs`) use, the probes (`/healthz`, `/readyz`), the
//! OpenAPI document, `/metrics` and the answer for paths no route matches.
//!
//! Every handler is mounted through the route table, behind its route's policy; handlers of authenticated
//! routes take [`Scoped`], which only an admitted request carries. Must never hold domain logic (that lives in
//! the service, shared with gRPC) nor build an error body by hand.

use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};

use super::auth::{missing_scope, RequestScope};
use super::cluster::Health;
use super::error::{ErrorKind, ServiceError};
use super::openapi::{self, schema, OpenApiDocument};
use super::routes::{endpoint, ok, op, HttpMethod, Route, TEXT};
use super::service::AdminService;

/// The process's own routes: REST only, listed first in `routes::DOMAINS`.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Get,
        path: "/healthz",
        op: &op::HEALTH,
        summary: "Whether the process is alive",
        request: None,
        query: &[],
        reply: ok(schema::<Health>),
        endpoint: endpoint!(healthz),
    },
    Route {
        method: HttpMethod::Get,
        path: "/readyz",
        op: &op::READY,
        summary: "Whether this coordinator knows a leader and has caught up (503 until then)",
        request: None,
        query: &[],
        reply: ok(schema::<Health>),
        endpoint: endpoint!(readyz),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/openapi.json",
        op: &op::OPENAPI,
        summary: "This document",
        request: None,
        query: &[],
        reply: ok(schema::<OpenApiDocument>),
        endpoint: endpoint!(openapi),
    },
    Route {
        method: HttpMethod::Get,
        path: "/metrics",
        op: &op::METRICS,
        summary: "Prometheus metrics: requests, latency, Raft term, applied index and leader",
        request: None,
        query: &[],
        reply: TEXT,
        endpoint: endpoint!(metrics),
    },
];

/// The admitted caller of an authenticated route.
pub(crate) struct Scoped(pub(crate) RequestScope);

impl<S: Send + Sync> FromRequestParts<S> for Scoped {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestScope>()
            .cloned()
            .map(Scoped)
            .ok_or_else(missing_scope)
    }
}

/// A handler's answer: the reply body as JSON (200), or the error.
pub(crate) type Answer<T> = Result<Json<T>, ServiceError>;
/// A creating handler's answer: 201 with the new resource, or the error.
pub(crate) type Created<T> = Result<(StatusCode, Json<T>), ServiceError>;
/// A handler's answer without a body: 204, or the error.
pub(crate) type Empty = Result<StatusCode, ServiceError>;

/// The 201 answer of a [`Created`] handler.
pub(crate) fn created_json<T>(value: T) -> (StatusCode, Json<T>) {
    (StatusCode::CREATED, Json(value))
}

/// Answer for paths no route matches.
pub(crate) async fn not_found() -> ServiceError {
    ServiceError::new(ErrorKind::NotFound, "no such route")
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn readyz(State(service): State<AdminService>) -> Result<Json<Health>, ServiceError> {
    if service.is_ready() {
        Ok(Json(Health {
            status: "ready".into(),
        }))
    } else {
        Err(ServiceError::unavailable(
            "not ready: no leader is known or this coordinator is still catching up",
        ))
    }
}

async fn openapi() -> Response {
    let mut resp = openapi::document_json().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn metrics(State(service): State<AdminService>, _scope: Scoped) -> Response {
    let text = service
        .metrics()
        .render(&service.cluster_status().status, &service.fleet_gauges());
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(super::metrics::CONTENT_TYPE),
    );
    resp
}
