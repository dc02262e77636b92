//! Outcomes of a call: [`RpcStatus`], the error a callee answers with, and [`RpcError`], everything a
//! caller can get back instead of a response.
//!
//! Owns the mapping between the Rust types and the wire's `meridian.v1.RpcStatus`, and the classification
//! of QUIC failures into caller-facing errors. It must never turn a peer's text into anything but a message.

use std::fmt;

use crate::pb;
pub use crate::pb::StatusCode;

/// The error a service answers with: a code for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", status_code_name(*.code))]
pub struct RpcStatus {
    pub code: StatusCode,
    pub message: String,
}

/// The lowercase name of a status code, e.g. `permission_denied`.
pub fn status_code_name(code: StatusCode) -> &'static str {
    match code {
        StatusCode::Ok => "ok",
        StatusCode::InvalidArgument => "invalid_argument",
        StatusCode::NotFound => "not_found",
        StatusCode::PermissionDenied => "permission_denied",
        StatusCode::Unauthenticated => "unauthenticated",
        StatusCode::Unavailable => "unavailable",
        StatusCode::DeadlineExceeded => "deadline_exceeded",
        StatusCode::Unimplemented => "unimplemented",
        StatusCode::FailedPrecondition => "failed_precondition",
        StatusCode::Internal => "internal",
        StatusCode::ResourceExhausted => "resource_exhausted",
    }
}

impl RpcStatus {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        RpcStatus {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NotFound, message)
    }
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PermissionDenied, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Unauthenticated, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Unavailable, message)
    }
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::DeadlineExceeded, message)
    }
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Unimplemented, message)
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FailedPrecondition, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Internal, message)
    }
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(StatusCode::ResourceExhausted, message)
    }
}

impl From<RpcStatus> for pb::RpcStatus {
    fn from(status: RpcStatus) -> Self {
        pb::RpcStatus {
            code: status.code as i32,
            message: status.message,
        }
    }
}

impl From<pb::RpcStatus> for RpcStatus {
    /// A code this build does not know (a newer peer) becomes `Internal`, keeping the number in the message.
    fn from(status: pb::RpcStatus) -> Self {
        match StatusCode::try_from(status.code) {
            // `OK` inside an error is a peer bug; it must not read as success.
            Ok(StatusCode::Ok) => RpcStatus::internal(format!(
                "peer answered an error with code OK: {}",
                status.message
            )),
            Ok(code) => RpcStatus::new(code, status.message),
            Err(_) => RpcStatus::internal(format!(
                "unknown status code {}: {}",
                status.code, status.message
            )),
        }
    }
}

impl From<prost::DecodeError> for RpcStatus {
    fn from(e: prost::DecodeError) -> Self {
        RpcStatus::invalid_argument(format!("undecodable message: {e}"))
    }
}

impl From<RpcStatus> for tonic::Status {
    fn from(status: RpcStatus) -> Self {
        let code = match status.code {
            StatusCode::Ok => tonic::Code::Ok,
            StatusCode::InvalidArgument => tonic::Code::InvalidArgument,
            StatusCode::NotFound => tonic::Code::NotFound,
            StatusCode::PermissionDenied => tonic::Code::PermissionDenied,
            StatusCode::Unauthenticated => tonic::Code::Unauthenticated,
            StatusCode::Unavailable => tonic::Code::Unavailable,
            StatusCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            StatusCode::Unimplemented => tonic::Code::Unimplemented,
            StatusCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            StatusCode::Internal => tonic::Code::Internal,
            StatusCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        };
        tonic::Status::new(code, status.message)
    }
}

/// What a caller gets instead of a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The connection or stream failed, or the address could not be resolved or reached.
    #[error("transport: {0}")]
    Transport(String),
    /// The whole call did not complete within the caller's timeout.
    #[error("call timed out")]
    Timeout,
    /// The callee answered with an error.
    #[error("remote error: {0}")]
    Remote(RpcStatus),
    /// The answer (or the body handed to `call_message`) could not be decoded or encoded.
    #[error("decode: {0}")]
    Decode(String),
    /// The peer's certificate or identity was refused, by the callee or by us.
    #[error("refused: {0}")]
    Refused(String),
}

impl RpcError {
    /// Whether the same call may succeed if tried again (on this peer later, or on another one).
    ///
    /// Transport failures, timeouts and a callee that says it is unavailable are retryable; a refusal, a
    /// decoding failure or any other answer from the callee is not. A timed-out write may still have been
    /// applied: retrying it is safe only for idempotent calls.
    pub fn is_retryable(&self) -> bool {
        match self {
            RpcError::Transport(_) | RpcError::Timeout => true,
            RpcError::Remote(status) => matches!(
                status.code,
                StatusCode::Unavailable | StatusCode::ResourceExhausted
            ),
            RpcError::Decode(_) | RpcError::Refused(_) => false,
        }
    }
}

impl From<quinn::ConnectionError> for RpcError {
    fn from(e: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        let refused = match &e {
            E::TransportError(err) => is_tls_alert(err.code),
            E::ConnectionClosed(close) => is_tls_alert(close.error_code),
            E::ApplicationClosed(close) => [
                super::CLOSE_UNAUTHENTICATED,
                super::CLOSE_REVOKED,
                super::CLOSE_CERT_EXPIRED,
            ]
            .contains(&close.error_code),
            _ => false,
        };
        if refused {
            RpcError::Refused(Detail(&e).to_string())
        } else {
            RpcError::Transport(Detail(&e).to_string())
        }
    }
}

impl From<quinn::WriteError> for RpcError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(e) => e.into(),
            other => RpcError::Transport(format!("sending the request: {other}")),
        }
    }
}

impl From<quinn::ReadError> for RpcError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(e) => e.into(),
            other => RpcError::Transport(format!("receiving the response: {other}")),
        }
    }
}

/// QUIC carries TLS alerts as transport error codes `0x100..=0x1ff` (RFC 9001, section 4.8).
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

/// Formats a connection error with the peer's reason, which may be arbitrary bytes: shown escaped.
struct Detail<'a>(&'a quinn::ConnectionError);

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            quinn::ConnectionError::ApplicationClosed(close) => write!(
                f,
                "closed by peer (code {}): {}",
                close.error_code,
                String::from_utf8_lossy(&close.reason).escape_debug()
            ),
            other => write!(f, "{other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_code_and_message() {
        let status = RpcStatus::permission_denied("no");
        let wire: pb::RpcStatus = status.clone().into();
        assert_eq!(RpcStatus::from(wire), status);
    }

    #[test]
    fn unknown_or_ok_codes_never_read_as_success() {
        let unknown = RpcStatus::from(pb::RpcStatus {
            code: 4242,
            message: "x".into(),
        });
        assert_eq!(unknown.code, StatusCode::Internal);
        assert!(unknown.message.contains("4242"));
        let ok = RpcStatus::from(pb::RpcStatus {
            code: 0,
            message: "x".into(),
        });
        assert_eq!(ok.code, StatusCode::Internal);
    }

    #[test]
    fn retryable_classification() {
        assert!(RpcError::Timeout.is_retryable());
        assert!(RpcError::Transport("x".into()).is_retryable());
        assert!(RpcError::Remote(RpcStatus::unavailable("x")).is_retryable());
        assert!(!RpcError::Remote(RpcStatus::permission_denied("x")).is_retryable());
        assert!(!RpcError::Refused("x".into()).is_retryable());
        assert!(!RpcError::Decode("x".into()).is_retryable());
    }

    #[test]
    fn display_names_the_code() {
        assert_eq!(RpcStatus::not_found("gone").to_string(), "not_found: gone");
    }
}
