//! The Open Inference Protocol v2 REST routes and what each answers.
//!
//! Owns the route table, bearer authentication of model routes, and the order of checks on a model request:
//! key (401), name (400), deployment in the caller's project (404), a backend to send to (503). Health
//! routes need no key. Must never answer a model request on a deployment's behalf: until forwarding exists,
//! a request that gets past every check is refused as not implemented.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::request::Parts;
use http::{header, HeaderMap, StatusCode};
use serde::Deserialize;

use crate::error::GatewayError;
use crate::metrics::GatewayMetrics;
use crate::names;
use crate::source::{Caller, DeploymentView, RouteSource};

/// The name `GET /v2` reports.
const SERVER_NAME: &str = "meridian";

#[derive(Clone)]
pub(crate) struct GatewayState {
    source: Arc<dyn RouteSource>,
    metrics: Arc<GatewayMetrics>,
}

/// The gateway's routes over `source`, counted in `metrics` (served at `GET /metrics`, without a key).
pub(crate) fn router(source: Arc<dyn RouteSource>, metrics: Arc<GatewayMetrics>) -> Router {
    let exposition = Router::new()
        .route("/metrics", get(crate::metrics::serve_metrics))
        .with_state(metrics.clone());
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route_layer(axum::middleware::from_fn_with_state(
            metrics.clone(),
            crate::metrics::track,
        ))
        .fallback(no_route)
        .with_state(GatewayState { source, metrics })
        .merge(exposition)
}

/// `GET /v2/health/live`: the process answers.
async fn live() -> StatusCode {
    StatusCode::OK
}

/// `GET /v2/health/ready`: the route source can check keys and find deployments.
async fn ready(State(g): State<GatewayState>) -> Response {
    if g.source.ready() {
        StatusCode::OK.into_response()
    } else {
        GatewayError::NotReady.into_response()
    }
}

/// `GET /v2`: server metadata.
async fn server_metadata(_caller: Authenticated) -> Response {
    Json(serde_json::json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
    .into_response()
}

async fn no_route(State(g): State<GatewayState>) -> GatewayError {
    // Routed requests are counted by the route layer; this one matched nothing.
    let refusal = GatewayError::NoRoute;
    g.metrics.observe(
        crate::metrics::UNMATCHED,
        refusal.status(),
        std::time::Duration::ZERO,
    );
    refusal
}

/// The path of a model route: `/v2/models/{name}[/versions/{version}]/...`.
#[derive(Debug, Deserialize)]
struct ModelPath {
    name: String,
    #[serde(default)]
    version: Option<String>,
}

/// `GET /v2/models/{name}[/versions/{version}]`: model metadata, which the model server behind the
/// deployment knows.
async fn model_metadata(
    State(g): State<GatewayState>,
    Authenticated(caller): Authenticated,
    Path(path): Path<ModelPath>,
) -> GatewayError {
    g.refuse("metadata", &caller, &path)
}

/// `GET /v2/models/{name}[/versions/{version}]/ready`: whether the deployment can take requests here.
async fn model_ready(
    State(g): State<GatewayState>,
    Authenticated(caller): Authenticated,
    Path(path): Path<ModelPath>,
) -> GatewayError {
    g.refuse("ready", &caller, &path)
}

/// `POST /v2/models/{name}[/versions/{version}]/infer`: an inference request for the deployment.
async fn infer(
    State(g): State<GatewayState>,
    Authenticated(caller): Authenticated,
    Path(path): Path<ModelPath>,
) -> GatewayError {
    g.refuse("infer", &caller, &path)
}

impl GatewayState {
    /// What a model request gets today: the first check it fails, or, past every check, the refusal to
    /// forward (forwarding to backends arrives with serving).
    fn refuse(&self, op: &'static str, caller: &Caller, path: &ModelPath) -> GatewayError {
        let refusal = match self.resolve(caller, &path.name, path.version.as_deref()) {
            Ok(deployment) => GatewayError::ForwardingUnsupported(deployment.name),
            Err(e) => e,
        };
        tracing::debug!(
            op,
            project = %caller.project_id,
            principal = %caller.principal_id,
            model = %names::for_message(&path.name),
            refusal = %refusal,
            "model request refused"
        );
        refusal
    }

    /// The deployment a model request addresses, once it has somewhere to go. The version is checked like a
    /// name and carried for serving, which will decide what it selects.
    fn resolve(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<&str>,
    ) -> Result<DeploymentView, GatewayError> {
        check_name("model name", name)?;
        if let Some(version) = version {
            check_name("model version", version)?;
        }
        let deployment = self
            .source
            .deployment(caller, name)
            .ok_or_else(|| GatewayError::DeploymentNotFound(name.to_owned()))?;
        if !deployment.ready {
            return Err(GatewayError::DeploymentUnavailable {
                name: deployment.name,
                reason: "it is not ready",
            });
        }
        if deployment.backends.is_empty() {
            return Err(GatewayError::DeploymentUnavailable {
                name: deployment.name,
                reason: "it has no backends (no replica is serving it)",
            });
        }
        Ok(deployment)
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), GatewayError> {
    if names::is_valid_name(value) {
        Ok(())
    } else {
        Err(GatewayError::InvalidName {
            field,
            value: value.to_owned(),
        })
    }
}

/// A request whose bearer key the route source accepted.
pub(crate) struct Authenticated(Caller);

impl FromRequestParts<GatewayState> for Authenticated {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &GatewayState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or(GatewayError::Unauthenticated)?;
        state
            .source
            .authenticate(token)
            .map(Authenticated)
            .map_err(|_| GatewayError::Unauthenticated)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, surrounding blanks
/// ignored).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            value.parse().expect("test header value"),
        );
        h
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token(&auth("Bearer mrd_a_b")), Some("mrd_a_b"));
        assert_eq!(bearer_token(&auth("bearer  mrd_a_b ")), Some("mrd_a_b"));
        assert_eq!(bearer_token(&auth("Basic abc")), None);
        assert_eq!(bearer_token(&auth("Bearer")), None);
        assert_eq!(bearer_token(&auth("Bearer ")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
