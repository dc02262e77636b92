//! The CLI's HTTP client for the admin API.
//!
//! Turns HTTP answers into [`ClientError`]s whose kind decides the process exit code, so scripts can tell
//! "not found" from "no connection" without parsing text. A client knows every coordinator it was given
//! (`MERIDIAN_ADDR=a,b,c`, or a context's addresses) and moves to the next when one cannot be reached;
//! a request that may have reached a server is repeated elsewhere only when it is safe to repeat.

mod unreachable;
mod upgrade;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::cli::ClientArgs;
use crate::context;
pub use unreachable::Cause;

/// What went wrong talking to the admin API; each kind maps to one exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("over a limit: {0}")]
    Limited(String),
    #[error("{0}")]
    Failed(String),
}

impl ClientError {
    /// The process exit code for this error (documented in `meridian --help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Failed(_) => 1,
            ClientError::Usage(_) | ClientError::Invalid(_) => 2,
            ClientError::Denied(_) | ClientError::Limited(_) => 3,
            ClientError::NotFound(_) => 4,
            ClientError::Conflict(_) => 5,
            ClientError::Unavailable(_) => 6,
        }
    }

    /// A stable name for the kind, as `-o json` writes it (`{"error": {"kind": ...}}`).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Usage(_) => "usage",
            ClientError::Invalid(_) => "invalid",
            ClientError::Denied(_) => "denied",
            ClientError::NotFound(_) => "not_found",
            ClientError::Conflict(_) => "conflict",
            ClientError::Unavailable(_) => "unavailable",
            ClientError::Limited(_) => "limited",
            ClientError::Failed(_) => "failed",
        }
    }
}

/// A configured admin API client.
pub struct ApiClient {
    /// Every coordinator address, `scheme://host:port` without a trailing slash.
    bases: Vec<String>,
    /// The address that answered last; requests start there.
    preferred: AtomicUsize,
    token: Option<String>,
    project: Option<String>,
    http: reqwest::Client,
    /// HTTP/1.1 only, for requests that upgrade the connection (a WebSocket).
    http1: reqwest::Client,
}

/// Where `meridian dev` leaves its admin token by default.
const DEV_TOKEN_FILE: &str = ".meridian/admin.token";

/// The admin API address when neither a flag, the environment nor a context names one.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";

/// The addresses in a comma-separated list (`https://a:7071,https://b:7071`), each checked.
pub fn parse_addrs(list: &str) -> Result<Vec<String>, ClientError> {
    let bases: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.trim_end_matches('/').to_owned())
        .collect();
    if bases.is_empty() {
        return Err(ClientError::Usage(
            "--addr/MERIDIAN_ADDR names no address; give one or more, comma-separated".into(),
        ));
    }
    for base in &bases {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Usage(format!(
                "--addr/MERIDIAN_ADDR: every address must start with http:// or https://, got {base:?}"
            )));
        }
        reqwest::Url::parse(base)
            .map_err(|e| ClientError::Usage(format!("--addr/MERIDIAN_ADDR {base:?}: {e}")))?;
    }
    Ok(bases)
}

impl ApiClient {
    /// Builds a client from the shared CLI options: a flag or `MERIDIAN_*` variable wins, then the
    /// selected context (`--context`, `MERIDIAN_CONTEXT`, or the config file's current one), then the
    /// defaults (`meridian dev`'s address and token file).
    pub fn from_args(args: &ClientArgs) -> Result<Self, ClientError> {
        let ctx = context::selected(args.context.as_deref())?;
        let bases = match (&args.addr, &ctx) {
            (Some(list), _) => parse_addrs(list)?,
            (None, Some(c)) => parse_addrs(&c.addr.join(","))?,
            (None, None) => parse_addrs(DEFAULT_ADDR)?,
        };
        let cacert = args
            .cacert
            .clone()
            .or_else(|| ctx.as_ref().and_then(|c| c.cacert.clone()));
        let builder = || {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(5))
        };
        let (mut builder, mut builder1) = (builder(), builder().http1_only());
        if bases.iter().any(|b| b.starts_with("https://")) {
            let tls = match &cacert {
                Some(path) => {
                    let pem = read_file(path)?;
                    certs::https_client_config(&pem)
                        .map_err(|e| ClientError::Usage(format!("--cacert {}: {e}", path.display())))?
                }
                None => {
                    return Err(ClientError::Usage(
                        "an https:// admin API needs --cacert or MERIDIAN_CACERT (the CA that signed it)".into(),
                    ))
                }
            };
            builder1 = builder1.use_preconfigured_tls(tls.clone());
            builder = builder.use_preconfigured_tls(tls);
        }
        let build = |b: reqwest::ClientBuilder| {
            b.build()
                .map_err(|e| ClientError::Failed(format!("building HTTP client: {e}")))
        };
        let (http, http1) = (build(builder)?, build(builder1)?);
        let token = match (
            &args.token,
            ctx.as_ref().and_then(|c| c.token_file.as_ref()),
        ) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(file)) => Some(read_file(file)?.trim().to_string()),
            (None, None) => std::fs::read_to_string(DEV_TOKEN_FILE)
                .ok()
                .map(|t| t.trim().to_string()),
        };
        if token.is_some() {
            for base in &bases {
                if !plain_http_allowed(base)? {
                    return Err(ClientError::Usage(format!(
                        "refusing to send an API key over plain HTTP to {base}: anyone on the path could read \
                         it; use https:// with --cacert/MERIDIAN_CACERT (plain http:// is only for loopback, \
                         e.g. meridian dev)"
                    )));
                }
            }
        }
        let project = args
            .project
            .clone()
            .or_else(|| ctx.as_ref().and_then(|c| c.project.clone()));
        Ok(Self {
            bases,
            preferred: AtomicUsize::new(0),
            token,
            project,
            http,
            http1,
        })
    }

    /// The API key every request carries.
    fn token(&self) -> Result<&str, ClientError> {
        self.token.as_deref().ok_or_else(|| {
            ClientError::Usage(
                "no API key: set MERIDIAN_TOKEN or --token (meridian dev writes one to .meridian/admin.token)"
                    .into(),
            )
        })
    }

    /// The project requests act in, when one was chosen (flag, environment or context).
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// The same client acting in `project`.
    pub fn in_project(&self, project: &str) -> ApiClient {
        ApiClient {
            bases: self.bases.clone(),
            preferred: AtomicUsize::new(self.preferred.load(Ordering::Relaxed)),
            token: self.token.clone(),
            project: Some(project.to_owned()),
            http: self.http.clone(),
            http1: self.http1.clone(),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(Method::POST, path, Some(body), None).await
    }

    /// `POST path` whose answer may take up to `timeout` (a command run in a job), instead of the usual 30 s.
    pub async fn post_waiting(
        &self,
        path: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.send(Method::POST, path, Some(body), Some(timeout))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(Method::PUT, path, Some(body), None).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::DELETE, path, None, None).await
    }

    /// `GET path` answered with bytes rather than JSON (a file copied out of a job): the response, its body
    /// still to be read, once an address answered with success; errors as for every other call.
    pub async fn download(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let token = self.token()?;
        let first = self.preferred.load(Ordering::Relaxed) % self.bases.len();
        let mut failures: Vec<String> = Vec::new();
        for i in 0..self.bases.len() {
            let base = &self.bases[(first + i) % self.bases.len()];
            let mut req = self
                .http
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                // The body streams for as long as the file takes; the connection itself is bounded.
                .timeout(Duration::from_secs(3600));
            if let Some(p) = &self.project {
                req = req.header("x-meridian-project", p);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    // Not a success, so `answer` says which error it is.
                    return Err(match answer(resp, base).await {
                        Err(e) => e,
                        Ok(_) => ClientError::Failed(format!("GET {path}: an unexpected answer")),
                    });
                }
                Err(e) => failures.push(Cause::of(&e).describe(base)),
            }
        }
        Err(ClientError::Unavailable(failures.join("; ")))
    }

    /// Follows `next_page_token` until the list is complete.
    pub async fn list_all(&self, path: &str) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &token {
                Some(t) => format!("{path}{sep}page_size=1000&page_token={t}"),
                None => format!("{path}{sep}page_size=1000"),
            };
            let page = self.get(&url).await?;
            if let Some(arr) = page.get("items").and_then(Value::as_array) {
                items.extend(arr.iter().cloned());
            }
            match page.get("next_page_token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(items),
            }
        }
    }

    /// Sends one request, starting at the address that answered last and moving on to the next while
    /// addresses cannot be reached.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, ClientError> {
        let token = self.token()?;
        let repeatable = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        let first = self.preferred.load(Ordering::Relaxed) % self.bases.len();
        let mut failures: Vec<String> = Vec::new();
        for i in 0..self.bases.len() {
            let at = (first + i) % self.bases.len();
            let base = &self.bases[at];
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(token);
            if let Some(p) = &self.project {
                req = req.header("x-meridian-project", p);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            match req.send().await {
                Ok(resp) => {
                    let busy = resp.status() == StatusCode::SERVICE_UNAVAILABLE;
                    let result = answer(resp, base).await;
                    // A coordinator without a leader or still catching up: another may serve a read.
                    match result {
                        Err(e) if busy && repeatable && i + 1 < self.bases.len() => {
                            failures.push(format!("{base}: {e}"));
                        }
                        result => {
                            self.preferred.store(at, Ordering::Relaxed);
                            return result;
                        }
                    }
                }
                Err(e) => {
                    let cause = Cause::of(&e);
                    failures.push(cause.describe(base));
                    if cause.reached_server() && !repeatable {
                        break;
                    }
                }
            }
        }
        Err(ClientError::Unavailable(match failures.as_slice() {
            [one] => one.clone(),
            many => format!("no admin API address answered:\n  {}", many.join("\n  ")),
        }))
    }
}

/// Turns an HTTP answer into the reply's JSON or a [`ClientError`] of the answer's kind.
async fn answer(resp: reqwest::Response, base: &str) -> Result<Value, ClientError> {
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| ClientError::Unavailable(format!("reading the answer from {base}: {e}")))?;
    let value: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text.clone()))
    };
    if status.is_success() {
        return Ok(value);
    }
    let message = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}: {text}"));
    Err(match status {
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => ClientError::Invalid(message),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ClientError::Denied(message),
        StatusCode::NOT_FOUND => ClientError::NotFound(message),
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => ClientError::Conflict(message),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            ClientError::Unavailable(message)
        }
        // A project quota or the refusal rate limit: the caller must wait or ask for more.
        StatusCode::TOO_MANY_REQUESTS => ClientError::Limited(message),
        _ => ClientError::Failed(message),
    })
}

/// Whether a bearer token may travel to `base` as it is: always over https://, over http:// only to a
/// loopback host (`localhost`, 127.0.0.0/8, `::1`). Names other than `localhost` are not resolved: a
/// name that happens to resolve to loopback today is still refused.
fn plain_http_allowed(base: &str) -> Result<bool, ClientError> {
    let url = reqwest::Url::parse(base)
        .map_err(|e| ClientError::Usage(format!("--addr/MERIDIAN_ADDR {base:?}: {e}")))?;
    if url.scheme() == "https" {
        return Ok(true);
    }
    let Some(host) = url.host_str() else {
        return Ok(false);
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Ok(match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    })
}

fn read_file(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`) is escaped in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment (names are restricted server-side, but ids come from users too).
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Default path of the dev token, for messages.
pub fn dev_token_path() -> PathBuf {
    PathBuf::from(DEV_TOKEN_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_escape_everything_but_unreserved_characters() {
        assert_eq!(segment("job_a-1.x~"), "job_a-1.x~");
        assert_eq!(segment("../etc/passwd"), "..%2Fetc%2Fpasswd");
        assert_eq!(segment("a b?c#d%"), "a%20b%3Fc%23d%25");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn tokens_travel_in_clear_only_to_loopback() {
        for ok in [
            "https://10.0.0.1:7070",
            "https://admin.example.org",
            "http://127.0.0.1:7070",
            "http://127.9.9.9:7070",
            "http://localhost:7070",
            "http://LOCALHOST",
            "http://[::1]:7070",
        ] {
            assert!(plain_http_allowed(ok).unwrap(), "{ok}");
        }
        for refused in [
            "http://10.0.0.1:7070",
            "http://admin.example.org:7070",
            "http://localhost.example.org",
            "http://[2001:db8::1]:7070",
            "http://0.0.0.0:7070",
        ] {
            assert!(!plain_http_allowed(refused).unwrap(), "{refused}");
        }
        assert!(plain_http_allowed("http://").is_err());
    }
}
