//! The gateway's refusals and their HTTP form: a status and the Open Inference Protocol error body
//! `{"error": "<message>"}`.
//!
//! Owns the status for each refusal and the rule that every error the gateway sends is JSON, including the
//! ones produced below the handlers (unknown route, wrong method, body too large, malformed path). Must never
//! tell a caller why a token failed, nor whether another project's deployment exists.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, StatusCode};

use crate::names;

/// Why the gateway refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GatewayError {
    /// No bearer token, or one the route source refused.
    #[error("missing or invalid API key: send Authorization: Bearer <key>")]
    Unauthenticated,
    /// A model name or version outside the name rule.
    #[error("invalid {field} {shown:?}: {rule}", shown = names::for_message(.value), rule = names::NAME_RULE)]
    InvalidName { field: &'static str, value: String },
    /// No deployment of that name in the caller's project (or one the caller may not see).
    #[error("deployment {0:?} not found")]
    DeploymentNotFound(String),
    /// The deployment exists but cannot take requests now.
    #[error("deployment {name:?} is unavailable: {reason}")]
    DeploymentUnavailable { name: String, reason: &'static str },
    /// The deployment has backends, but this gateway cannot forward to them.
    #[error(
        "deployment {0:?} has backends, but this gateway does not forward requests to them yet"
    )]
    ForwardingUnsupported(String),
    /// No route has this path.
    #[error("no such route")]
    NoRoute,
    /// The route source cannot answer for callers yet.
    #[error("the gateway is not ready")]
    NotReady,
}

impl GatewayError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            GatewayError::Unauthenticated => StatusCode::UNAUTHORIZED,
            GatewayError::InvalidName { .. } => StatusCode::BAD_REQUEST,
            GatewayError::DeploymentNotFound(_) | GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::DeploymentUnavailable { .. } | GatewayError::NotReady => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::ForwardingUnsupported(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut resp = error_response(self.status(), self.to_string());
        if self == GatewayError::Unauthenticated {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// `status` with the body `{"error": message}`.
fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Gives every error response that is not JSON yet our body: axum's 404 and 405, the body limit's 413 and
/// path rejections come as plain text or empty. Keeps `Allow` and `WWW-Authenticate`.
pub(crate) async fn json_errors(resp: Response) -> Response {
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
    let message = match status {
        StatusCode::NOT_FOUND => "no such route",
        StatusCode::METHOD_NOT_ALLOWED => "this route does not accept that method",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than the limit",
        StatusCode::BAD_REQUEST => "malformed request path",
        _ => status.canonical_reason().unwrap_or("request failed"),
    };
    let (parts, _) = resp.into_parts();
    let mut fresh = error_response(status, message.to_owned());
    for name in [header::ALLOW, header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            fresh.headers_mut().insert(name, v.clone());
        }
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_deployment_and_the_reason() {
        assert_eq!(
            GatewayError::DeploymentNotFound("resnet".into()).to_string(),
            r#"deployment "resnet" not found"#
        );
        let invalid = GatewayError::InvalidName {
            field: "model name",
            value: "a b".into(),
        };
        assert_eq!(
            invalid.to_string(),
            r#"invalid model name "a b": must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}"#
        );
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    }
}
