//! Request extractors of the REST API whose rejections are our JSON errors: a JSON body ([`ApiJson`]), query
//! parameters ([`ApiQuery`]) and path parameters ([`ApiPath`]).
//!
//! Owns the mapping of every way a body or parameter can be wrong to a 4xx with a message naming the field.
//! Must never let axum's plain-text rejections reach a caller, and never answer 5xx for bad input.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::error::{ErrorKind, ServiceError};

/// A JSON request body (`content-type: application/json`), parsed strictly.
pub(crate) struct ApiJson<T>(pub(crate) T);

/// Query parameters.
pub(crate) struct ApiQuery<T>(pub(crate) T);

/// Path parameters.
pub(crate) struct ApiPath<T>(pub(crate) T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Parses a JSON body; syntax errors are `malformed_json`, shape errors name the offending field.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ServiceError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end()
        .map_err(|e| ServiceError::new(ErrorKind::MalformedJson, format!("malformed JSON: {e}")))?;
    Ok(value)
}

fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ServiceError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data => {
            if path.is_empty() || path == "." {
                ServiceError::new(ErrorKind::InvalidArgument, inner.to_string())
            } else {
                ServiceError::invalid(&path, inner)
            }
        }
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ServiceError::new(ErrorKind::MalformedJson, format!("malformed JSON: {inner}"))
        }
        serde_json::error::Category::Io => ServiceError::new(
            ErrorKind::InvalidArgument,
            format!("reading the body: {inner}"),
        ),
    }
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ServiceError::new(
                ErrorKind::UnsupportedMediaType,
                "the body must be JSON (content-type: application/json)",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ServiceError::new(
                    ErrorKind::PayloadTooLarge,
                    "the request body is larger than the limit",
                )
            } else {
                ServiceError::new(
                    ErrorKind::InvalidArgument,
                    "the request body could not be read",
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// axum's rejection texts start with a sentence about deserializing; keep only the part naming the field.
fn strip_prefix(text: &str) -> String {
    match text.split_once(": ") {
        Some((head, rest)) if head.starts_with("Failed to deserialize") => rest.to_owned(),
        _ => text.to_owned(),
    }
}

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r| {
                ServiceError::new(ErrorKind::InvalidArgument, strip_prefix(&r.body_text()))
            })
    }
}

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|r| {
                if r.status().is_server_error() {
                    // Only reachable when a handler's parameters do not fit its route: a bug, not input.
                    ServiceError::internal("route parameters do not match the handler")
                } else {
                    ServiceError::new(ErrorKind::InvalidArgument, strip_prefix(&r.body_text()))
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn malformed_json_is_malformed() {
        for bad in [
            "{",
            "{\"name\": }",
            "not json",
            "",
            "{\"name\":\"a\"} trailing",
        ] {
            let e = parse_json::<Body>(bad.as_bytes()).expect_err(bad);
            assert_eq!(e.kind, ErrorKind::MalformedJson, "{bad}: {e}");
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        let e = parse_json::<Body>(br#"{"name": 5}"#).expect_err("wrong type");
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.starts_with("name: "), "{}", e.message);

        let e = parse_json::<Body>(br#"{"name": "a", "count": -1}"#).expect_err("negative");
        assert!(e.message.starts_with("count: "), "{}", e.message);

        let e =
            parse_json::<Body>(br#"{"name": "a", "colour": "red"}"#).expect_err("unknown field");
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("colour"), "{}", e.message);

        let e = parse_json::<Body>(br#"{}"#).expect_err("missing field");
        assert!(e.message.contains("name"), "{}", e.message);
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            // Invariant: a constant, valid header value.
            "application/json; charset=utf-8"
                .parse()
                .expect("static header"),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "text/plain".parse().expect("static header"),
        );
        assert!(!is_json(&h));
    }

    #[test]
    fn rejection_prefix_is_removed() {
        assert_eq!(
            strip_prefix(
                "Failed to deserialize query string: page_size: invalid digit found in string"
            ),
            "page_size: invalid digit found in string"
        );
        assert_eq!(strip_prefix("other"), "other");
    }
}
