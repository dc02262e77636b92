//! The call envelope: encoding and decoding `RpcRequest` / `RpcResponse` frame payloads.
//!
//! Pure functions, shared by the server, the client and the fuzz targets, so the fuzzers exercise exactly
//! the code that reads peer bytes. Nothing here does I/O, and no input may make it panic.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::{Method, RpcError, RpcStatus, UnknownMethod};
use crate::pb;

/// A decoded request, before authorization.
#[derive(Debug)]
pub(crate) struct Request {
    /// The method, or the unknown id the caller sent.
    pub(crate) method: Result<Method, UnknownMethod>,
    /// How long the caller waits; `None` when it left the choice to the callee.
    pub(crate) timeout: Option<Duration>,
    pub(crate) body: Bytes,
}

/// Decodes a request frame's payload. The body is a slice of `payload`, not a copy.
pub(crate) fn decode_request(payload: Bytes) -> Result<Request, prost::DecodeError> {
    let request = pb::RpcRequest::decode(payload)?;
    Ok(Request {
        method: Method::try_from(request.method),
        timeout: (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms)),
        body: request.body,
    })
}

/// Encodes a request; `timeout` is rounded up to whole milliseconds so a short timeout never reads as
/// "no timeout".
pub(crate) fn encode_request(method: Method, timeout: Duration, body: Bytes) -> Vec<u8> {
    let millis = timeout.as_millis().max(1);
    pb::RpcRequest {
        method: method.id(),
        timeout_ms: u64::try_from(millis).unwrap_or(u64::MAX),
        body,
    }
    .encode_to_vec()
}

/// Encodes the answer to a call.
pub(crate) fn encode_response(result: Result<Bytes, RpcStatus>) -> Vec<u8> {
    let result = match result {
        Ok(body) => pb::rpc_response::Result::Ok(body),
        Err(status) => pb::rpc_response::Result::Error(status.into()),
    };
    pb::RpcResponse {
        result: Some(result),
    }
    .encode_to_vec()
}

/// The encoded size of an answer carrying `body_len` bytes, for checking it against the frame limit.
pub(crate) fn encoded_ok_len(body_len: usize) -> usize {
    // Field 1 (tag 1 byte) + length varint + body, inside the oneof.
    1 + prost::length_delimiter_len(body_len) + body_len
}

/// Decodes a response frame's payload into the method's body or the callee's error.
pub(crate) fn decode_response(payload: Bytes) -> Result<Bytes, RpcError> {
    let response = pb::RpcResponse::decode(payload)
        .map_err(|e| RpcError::Decode(format!("undecodable response: {e}")))?;
    match response.result {
        Some(pb::rpc_response::Result::Ok(body)) => Ok(body),
        Some(pb::rpc_response::Result::Error(status)) => Err(RpcError::Remote(status.into())),
        None => Err(RpcError::Decode(
            "response carries neither a body nor an error".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StatusCode;

    #[test]
    fn request_round_trip() {
        let wire = encode_request(
            Method::RaftVote,
            Duration::from_micros(10),
            Bytes::from_static(b"vote"),
        );
        let request = decode_request(Bytes::from(wire)).unwrap();
        assert_eq!(request.method, Ok(Method::RaftVote));
        // Sub-millisecond timeouts round up instead of turning into "no timeout".
        assert_eq!(request.timeout, Some(Duration::from_millis(1)));
        assert_eq!(&request.body[..], b"vote");
    }

    #[test]
    fn unknown_methods_and_missing_timeouts_decode() {
        let wire = pb::RpcRequest {
            method: 999,
            timeout_ms: 0,
            body: Bytes::new(),
        }
        .encode_to_vec();
        let request = decode_request(Bytes::from(wire)).unwrap();
        assert_eq!(request.method, Err(UnknownMethod(999)));
        assert_eq!(request.timeout, None);
    }

    #[test]
    fn response_round_trip() {
        let ok = encode_response(Ok(Bytes::from_static(b"fine")));
        assert_eq!(ok.len(), encoded_ok_len(4));
        assert_eq!(&decode_response(Bytes::from(ok)).unwrap()[..], b"fine");
        let err = encode_response(Err(RpcStatus::not_found("gone")));
        match decode_response(Bytes::from(err)) {
            Err(RpcError::Remote(status)) => {
                assert_eq!(status.code, StatusCode::NotFound);
                assert_eq!(status.message, "gone");
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        assert!(matches!(
            decode_response(Bytes::new()),
            Err(RpcError::Decode(_))
        ));
        assert!(matches!(
            decode_response(Bytes::from_static(&[0x0f])),
            Err(RpcError::Decode(_))
        ));
    }

    #[test]
    fn encoded_ok_len_is_exact_for_large_bodies() {
        for len in [0, 127, 128, 16_383, 16_384, 70_000] {
            let wire = encode_response(Ok(Bytes::from(vec![7u8; len])));
            assert_eq!(wire.len(), encoded_ok_len(len), "len {len}");
        }
    }
}
