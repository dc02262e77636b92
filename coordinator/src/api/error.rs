//! Errors of the admin API: why it could not start ([`ApiError`]) and why a request failed
//! ([`ServiceError`]), with the one mapping from each request error to an HTTP status, a JSON body
//! `{"error": {"code", "message"}}` and a gRPC status.
//!
//! Must never leak internals in a message (no token parts, hashes, ciphertexts or stack traces) and never map
//! a caller's input to a 500.

use std::net::SocketAddr;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::node::{MembershipError, ReadError, WriteError};
use crate::state::DomainError;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Without TLS the API may only listen on loopback (that is what `meridian dev` does).
    #[error("the admin API needs TLS unless it listens on a loopback address, and {0} is not one")]
    PlainHttpOffLoopback(SocketAddr),
    /// The listening socket could not be opened.
    #[error("binding the admin API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// An option of the admin API is out of range.
    #[error("admin API configuration: {0}")]
    Config(String),
}

/// The kinds of request failure; each has one HTTP status, one error code and one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// A field is missing or malformed.
    InvalidArgument,
    /// The body is not JSON at all.
    MalformedJson,
    /// No usable API key. The message never says which part was wrong.
    Unauthenticated,
    /// The caller's roles do not grant the action.
    PermissionDenied,
    /// The object does not exist, or belongs to a project the caller cannot see.
    NotFound,
    /// An object with this name already exists.
    AlreadyExists,
    /// The object is not in a state that allows the operation.
    FailedPrecondition,
    /// The operation conflicts with the object's current state (a finished job cancelled again, logs of a
    /// job that has not run yet).
    Conflict,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// No leader, or the coordinator cannot serve right now; retrying may help.
    Unavailable,
    /// A bug on our side; never caused by input.
    Internal,
    /// The project's policy does not allow this much (pending jobs, bytes of specs, running resources).
    QuotaExceeded,
    /// Too many denied requests from this key or address; `Retry-After` says when to try again.
    RateLimited,
    /// The client took too long to send the request body.
    RequestTimeout,
}

impl ErrorKind {
    /// The `code` field of the JSON error body.
    pub(crate) fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::MalformedJson => "malformed_json",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Conflict => "conflict",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::RequestTimeout => "request_timeout",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidArgument | ErrorKind::MalformedJson => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::QuotaExceeded | ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub(crate) fn grpc(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument
            | ErrorKind::MalformedJson
            | ErrorKind::UnsupportedMediaType => tonic::Code::InvalidArgument,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::FailedPrecondition | ErrorKind::Conflict => tonic::Code::FailedPrecondition,
            ErrorKind::MethodNotAllowed => tonic::Code::Unimplemented,
            ErrorKind::PayloadTooLarge => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
            ErrorKind::QuotaExceeded | ErrorKind::RateLimited => tonic::Code::ResourceExhausted,
            ErrorKind::RequestTimeout => tonic::Code::DeadlineExceeded,
        }
    }

    /// The kind a bare HTTP status stands for (used to give JSON bodies to errors produced by layers).
    pub(crate) fn from_status(status: StatusCode) -> ErrorKind {
        match status {
            StatusCode::BAD_REQUEST => ErrorKind::InvalidArgument,
            StatusCode::UNAUTHORIZED => ErrorKind::Unauthenticated,
            StatusCode::FORBIDDEN => ErrorKind::PermissionDenied,
            StatusCode::NOT_FOUND => ErrorKind::NotFound,
            StatusCode::CONFLICT => ErrorKind::AlreadyExists,
            StatusCode::PRECONDITION_FAILED => ErrorKind::FailedPrecondition,
            StatusCode::METHOD_NOT_ALLOWED => ErrorKind::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::UnsupportedMediaType,
            StatusCode::SERVICE_UNAVAILABLE => ErrorKind::Unavailable,
            StatusCode::TOO_MANY_REQUESTS => ErrorKind::RateLimited,
            StatusCode::REQUEST_TIMEOUT => ErrorKind::RequestTimeout,
            s if s.is_client_error() => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }
}

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ServiceError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    /// Seconds for `Retry-After` (rate limits); `None` uses the kind's default.
    pub(crate) retry_after_secs: Option<u64>,
}

/// The one message every authentication failure carries, whatever was wrong.
pub(crate) const UNAUTHENTICATED_MESSAGE: &str =
    "a valid API key is required (Authorization: Bearer <token>)";

impl ServiceError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// Too many denied requests; try again after `retry_after_secs`.
    pub(crate) fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(
                ErrorKind::RateLimited,
                format!(
                    "too many refused requests from this key or address; retry after {} s",
                    retry_after_secs.max(1)
                ),
            )
        }
    }

    /// A bad field: the message starts with the field's name.
    pub(crate) fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidArgument, format!("{field}: {message}"))
    }

    /// A missing object, worded the same whether it is missing or hidden in another project.
    pub(crate) fn not_found(kind: &str, id: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("{kind} {id} not found"))
    }

    pub(crate) fn unauthenticated() -> Self {
        Self::new(ErrorKind::Unauthenticated, UNAUTHENTICATED_MESSAGE)
    }

    pub(crate) fn forbidden(what: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::PermissionDenied,
            format!("permission denied: {what}"),
        )
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The JSON body `{"error": {"code", "message"}}`.
    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.kind.code(), "message": self.message } })
    }

    /// The gRPC status for this error.
    pub(crate) fn into_status(self) -> tonic::Status {
        tonic::Status::new(self.kind.grpc(), self.message)
    }
}

impl From<DomainError> for ServiceError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound { kind, id } => ServiceError::not_found(&kind, &id),
            DomainError::AlreadyExists { kind, name } => ServiceError::new(
                ErrorKind::AlreadyExists,
                format!("{kind} {name} already exists"),
            ),
            DomainError::Invalid { field, message } => ServiceError::invalid(&field, message),
            DomainError::FailedPrecondition(m) => {
                ServiceError::new(ErrorKind::FailedPrecondition, m)
            }
            DomainError::QuotaExceeded(m) => {
                ServiceError::new(ErrorKind::QuotaExceeded, format!("quota exceeded: {m}"))
            }
            // Whatever was wrong with the key, the caller hears what an invalid key always gets.
            DomainError::Unauthenticated(_) => ServiceError::unauthenticated(),
            DomainError::PermissionDenied(m) => ServiceError::forbidden(m),
        }
    }
}

/// A coordinator-side failure to reach the leader or a peer. The cause names internal addresses, so it is
/// logged here and the caller hears only that it may try again.
fn unavailable(cause: &str) -> ServiceError {
    tracing::warn!(cause, "a request could not reach the coordinator it needed");
    ServiceError::unavailable(
        "coordinator unavailable; try again (the coordinator's log has the details)",
    )
}

impl From<WriteError> for ServiceError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Domain(d) => d.into(),
            WriteError::NoLeader => {
                ServiceError::unavailable("no coordinator leader is known; try again")
            }
            WriteError::Unavailable(m) => unavailable(&m),
        }
    }
}

impl From<ReadError> for ServiceError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::NoLeader => {
                ServiceError::unavailable("no coordinator leader is known; try again")
            }
            ReadError::Unavailable(m) => unavailable(&m),
        }
    }
}

impl From<MembershipError> for ServiceError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::Invalid(m) => ServiceError::new(ErrorKind::FailedPrecondition, m),
            MembershipError::NoLeader => {
                ServiceError::unavailable("no coordinator leader is known; try again")
            }
            MembershipError::Unavailable(m) => unavailable(&m),
        }
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let mut resp = (status, axum::Json(self.body())).into_response();
        let headers = resp.headers_mut();
        match self.kind {
            ErrorKind::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ErrorKind::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ErrorKind::RateLimited => {
                let secs = self.retry_after_secs.unwrap_or(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ErrorKind::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_the_documented_statuses() {
        let cases = [
            (
                DomainError::NotFound {
                    kind: "key".into(),
                    id: "k1".into(),
                },
                StatusCode::NOT_FOUND,
                "key k1 not found",
            ),
            (
                DomainError::AlreadyExists {
                    kind: "project".into(),
                    name: "p".into(),
                },
                StatusCode::CONFLICT,
                "project p already exists",
            ),
            (
                DomainError::Invalid {
                    field: "name".into(),
                    message: "must match x".into(),
                },
                StatusCode::BAD_REQUEST,
                "name: must match x",
            ),
            (
                DomainError::FailedPrecondition("not empty".into()),
                StatusCode::PRECONDITION_FAILED,
                "not empty",
            ),
            (
                DomainError::PermissionDenied("needs platform-admin".into()),
                StatusCode::FORBIDDEN,
                "permission denied: needs platform-admin",
            ),
        ];
        for (domain, status, message) in cases {
            let e = ServiceError::from(domain);
            assert_eq!(e.kind.status(), status);
            assert_eq!(e.message, message);
        }
        assert_eq!(
            ServiceError::from(WriteError::NoLeader).kind.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let cause = "forwarding to 10.20.30.40:7200: connection refused";
        for e in [
            ServiceError::from(WriteError::Unavailable(cause.into())),
            ServiceError::from(ReadError::Unavailable(cause.into())),
            ServiceError::from(MembershipError::Unavailable(cause.into())),
        ] {
            assert_eq!(e.kind.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(!e.message.contains("10.20.30.40"), "{}", e.message);
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_status() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::MethodNotAllowed,
            ErrorKind::PayloadTooLarge,
            ErrorKind::UnsupportedMediaType,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
            ErrorKind::RateLimited,
            ErrorKind::RequestTimeout,
        ];
        for kind in kinds {
            assert_eq!(ErrorKind::from_status(kind.status()), kind, "{kind:?}");
        }
        assert_eq!(ErrorKind::MalformedJson.status(), StatusCode::BAD_REQUEST);
        // A conflict shares 409 with a duplicate name; the body's code tells them apart.
        assert_eq!(ErrorKind::Conflict.status(), StatusCode::CONFLICT);
        assert_eq!(
            ServiceError::conflict("x").body()["error"]["code"],
            "conflict"
        );
    }

    #[test]
    fn quota_and_rate_limit_errors_are_429_with_their_own_codes() {
        let quota = ServiceError::from(DomainError::QuotaExceeded("3 pending".into()));
        assert_eq!(quota.kind.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(quota.body()["error"]["code"], "quota_exceeded");
        assert_eq!(quota.message, "quota exceeded: 3 pending");
        let limited = ServiceError::rate_limited(7).into_response();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            limited.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(7u64))
        );
        assert_eq!(
            ServiceError::rate_limited(0).into_status().code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn body_has_code_and_message() {
        let e = ServiceError::invalid("name", "must match [a-z0-9][a-z0-9-]{0,62}");
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"code": "invalid_argument", "message": "name: must match [a-z0-9][a-z0-9-]{0,62}"}})
        );
        let status = ServiceError::unauthenticated().into_status();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
}
