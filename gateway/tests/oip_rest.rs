//! The gateway over real TCP and HTTP/1.1: health, authentication, deployment lookup with project isolation,
//! name validation, error shapes, the body limit and shutdown. The route source is an in-memory table
//! behind the real `RouteSource` trait.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::{Backend, Caller, Denied, DeploymentView, GatewayOptions, RouteSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const TOKEN_A: &str = "mrd_a_secret";
const TOKEN_B: &str = "mrd_b_secret";
const LIMIT: usize = 4096;

/// Keys of two projects and a table of deployments.
struct TableSource {
    keys: HashMap<&'static str, Caller>,
    deployments: Mutex<Vec<DeploymentView>>,
    ready: AtomicBool,
}

impl RouteSource for TableSource {
    fn authenticate(&self, bearer: &str) -> Result<Caller, Denied> {
        self.keys
            .get(bearer)
            .cloned()
            .ok_or(Denied::Unauthenticated)
    }

    fn deployment(&self, caller: &Caller, name: &str) -> Option<DeploymentView> {
        let table = self.deployments.lock().expect("deployments lock");
        table
            .iter()
            .find(|d| d.name == name && d.project_id == caller.project_id)
            .cloned()
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

fn deployment(name: &str, project: &str, ready: bool, backends: Vec<Backend>) -> DeploymentView {
    DeploymentView {
        name: name.into(),
        project_id: project.into(),
        ready,
        backends,
    }
}

fn table() -> Arc<TableSource> {
    let caller = |p: &str| Caller {
        project_id: p.into(),
        principal_id: format!("sa_{p}"),
    };
    Arc::new(TableSource {
        keys: HashMap::from([(TOKEN_A, caller("prj_a")), (TOKEN_B, caller("prj_b"))]),
        deployments: Mutex::new(vec![
            deployment("resnet", "prj_a", true, vec![]),
            deployment("paused", "prj_a", false, vec![]),
            deployment(
                "served",
                "prj_a",
                true,
                vec![Backend {
                    addr: SocketAddr::from(([127, 0, 0, 1], 9)),
                }],
            ),
            deployment("llm-b", "prj_b", true, vec![]),
        ]),
        ready: AtomicBool::new(true),
    })
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(source: Arc<TableSource>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway::serve(
        listener,
        source,
        GatewayOptions {
            max_body_bytes: LIMIT,
        },
        shutdown.clone(),
    ));
    Running {
        addr,
        shutdown,
        task,
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The OIP error message, checking the body is exactly `{"error": "..."}`.
    fn error(&self) -> String {
        let v = self.json();
        let obj = v.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 1, "only `error` in {v}");
        obj["error"].as_str().expect("error is a string").to_owned()
    }
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("send head");
    s.write_all(body).await.expect("send body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("reply within 10 s")
        .expect("read reply");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .expect("chunk size");
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    request(addr, "GET", path, &headers, b"").await
}

async fn infer(addr: SocketAddr, model: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth.as_deref() {
        headers.push(("Authorization", a));
    }
    let body = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.0]}]}"#;
    request(
        addr,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &headers,
        body,
    )
    .await
}

#[tokio::test]
async fn health_needs_no_key_and_follows_the_source() {
    let source = table();
    let gw = start(source.clone()).await;
    for path in ["/v2/health/live", "/v2/health/ready"] {
        let r = get(gw.addr, path, None).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(r.body.is_empty(), "{path} answers with an empty body");
    }
    source.ready.store(false, Ordering::SeqCst);
    let r = get(gw.addr, "/v2/health/ready", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error(), "the gateway is not ready");
    let r = get(gw.addr, "/v2/health/live", None).await;
    assert_eq!(r.status, 200, "live does not depend on the source");
}

#[tokio::test]
async fn server_metadata_needs_a_key() {
    let gw = start(table()).await;
    let r = get(gw.addr, "/v2", Some(TOKEN_A)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let meta = r.json();
    assert_eq!(meta["name"], "meridian");
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["extensions"], serde_json::json!([]));
    let r = get(gw.addr, "/v2", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}

#[tokio::test]
async fn model_routes_refuse_missing_and_wrong_keys_alike() {
    let gw = start(table()).await;
    let none = infer(gw.addr, "resnet", None).await;
    let wrong = infer(gw.addr, "resnet", Some("mrd_a_wrong")).await;
    let basic = request(
        gw.addr,
        "GET",
        "/v2/models/resnet",
        &[("Authorization", "Basic YTpi")],
        b"",
    )
    .await;
    for r in [&none, &wrong, &basic] {
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            r.error(),
            "missing or invalid API key: send Authorization: Bearer <key>"
        );
    }
    // Authentication comes before anything about the model: an invalid name is still 401 without a key.
    let r = get(gw.addr, "/v2/models/bad!name/ready", None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn another_projects_deployment_is_exactly_a_missing_one() {
    let source = table();
    let gw = start(source.clone()).await;
    // Project B's key sees llm-b (it exists, with no backends yet).
    let own = infer(gw.addr, "llm-b", Some(TOKEN_B)).await;
    assert_eq!(own.status, 503, "{own:?}");

    let hidden = infer(gw.addr, "llm-b", Some(TOKEN_A)).await;
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.error(), r#"deployment "llm-b" not found"#);
    let missing = infer(gw.addr, "ghost", Some(TOKEN_A)).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error(), r#"deployment "ghost" not found"#);

    // Remove llm-b altogether: project A's view of the same request does not change by a byte.
    source
        .deployments
        .lock()
        .expect("deployments lock")
        .retain(|d| d.name != "llm-b");
    let gone = infer(gw.addr, "llm-b", Some(TOKEN_A)).await;
    assert_eq!(gone.status, hidden.status);
    assert_eq!(gone.body, hidden.body);
    let without_date = |r: &Reply| -> Vec<(String, String)> {
        r.headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
            .cloned()
            .collect()
    };
    assert_eq!(without_date(&gone), without_date(&hidden));
    for path in ["/v2/models/llm-b", "/v2/models/llm-b/versions/1/ready"] {
        let r = get(gw.addr, path, Some(TOKEN_A)).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.body, hidden.body, "{path}");
    }
}

#[tokio::test]
async fn invalid_names_are_400_naming_the_field() {
    let gw = start(table()).await;
    let long = "x".repeat(129);
    for name in [
        "bad!name",
        "a%20b",
        ".hidden",
        "-x",
        long.as_str(),
        "%C3%BC",
    ] {
        let r = infer(gw.addr, name, Some(TOKEN_A)).await;
        assert_eq!(r.status, 400, "{name}: {r:?}");
        let msg = r.error();
        assert!(msg.starts_with("invalid model name "), "{name}: {msg}");
        assert!(msg.contains("[A-Za-z0-9][A-Za-z0-9._-]{0,127}"), "{msg}");
    }
    // A path segment that does not decode to UTF-8 cannot be a name either.
    let r = infer(gw.addr, "%FF", Some(TOKEN_A)).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.error(), "malformed request path");
    let r = get(gw.addr, "/v2/models/resnet/versions/v%2F1", Some(TOKEN_A)).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().starts_with(r#"invalid model version "v/1""#));
    // The longest valid name gets past validation (and is then simply not found).
    let ok = "x".repeat(128);
    let r = infer(gw.addr, &ok, Some(TOKEN_A)).await;
    assert_eq!(r.status, 404, "{r:?}");
}

#[tokio::test]
async fn deployments_without_backends_are_503_and_say_why() {
    let gw = start(table()).await;
    let no_backends =
        r#"deployment "resnet" is unavailable: it has no backends (no replica is serving it)"#;
    for (method, path) in [
        ("POST", "/v2/models/resnet/infer"),
        ("POST", "/v2/models/resnet/versions/3/infer"),
        ("GET", "/v2/models/resnet"),
        ("GET", "/v2/models/resnet/ready"),
        ("GET", "/v2/models/resnet/versions/3"),
        ("GET", "/v2/models/resnet/versions/3/ready"),
    ] {
        let r = request(
            gw.addr,
            method,
            path,
            &[("Authorization", &format!("Bearer {TOKEN_A}"))],
            b"",
        )
        .await;
        assert_eq!(r.status, 503, "{method} {path}: {r:?}");
        assert_eq!(r.error(), no_backends, "{method} {path}");
    }
    let r = infer(gw.addr, "paused", Some(TOKEN_A)).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.error(),
        r#"deployment "paused" is unavailable: it is not ready"#
    );
}

#[tokio::test]
async fn a_deployment_with_backends_is_not_answered_on_its_behalf() {
    let gw = start(table()).await;
    let r = infer(gw.addr, "served", Some(TOKEN_A)).await;
    assert_eq!(r.status, 501, "{r:?}");
    assert!(r.error().contains(r#"deployment "served" has backends"#));
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_large_bodies_answer_json() {
    let gw = start(table()).await;
    for path in [
        "/",
        "/v1/projects",
        "/v2/models",
        "/v2/models/resnet/explain",
    ] {
        let r = get(gw.addr, path, Some(TOKEN_A)).await;
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert_eq!(r.error(), "no such route", "{path}");
    }
    let r = get(gw.addr, "/v2/models/resnet/infer", Some(TOKEN_A)).await;
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.error(), "this route does not accept that method");
    assert_eq!(r.header("allow"), Some("POST"));

    let auth = format!("Bearer {TOKEN_A}");
    let big = vec![b'x'; LIMIT + 1];
    let r = request(
        gw.addr,
        "POST",
        "/v2/models/resnet/infer",
        &[("Authorization", &auth)],
        &big,
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.error(), "the request body is larger than the limit");
    let fits = vec![b'x'; LIMIT];
    let r = request(
        gw.addr,
        "POST",
        "/v2/models/resnet/infer",
        &[("Authorization", &auth)],
        &fits,
    )
    .await;
    assert_eq!(r.status, 503, "a body at the limit is accepted: {r:?}");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_idle_connections() {
    let gw = start(table()).await;
    // A keep-alive connection that finished a request, and one that never sent anything.
    let mut kept = TcpStream::connect(gw.addr).await.expect("connect");
    kept.write_all(format!("GET /v2/health/live HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr).as_bytes())
        .await
        .expect("send");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), kept.read(&mut buf))
        .await
        .expect("reply in time")
        .expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");

    gw.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), gw.task)
        .await
        .expect("the gateway stops well before its drain timeout")
        .expect("the gateway task does not panic");
    for conn in [&mut kept, &mut silent] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "open connections are closed: {read:?}"
        );
    }
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "nothing accepts on the gateway's address after shutdown"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status_never_by_name() {
    let gw = start(table()).await;
    for _ in 0..2 {
        assert_eq!(infer(gw.addr, "secret-model-name", None).await.status, 401);
    }
    assert_eq!(get(gw.addr, "/v2/health/live", None).await.status, 200);
    assert_eq!(get(gw.addr, "/nowhere/at/all", None).await.status, 404);

    let r = get(gw.addr, "/metrics", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{r:?}"
    );
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains(
            "meridian_gateway_requests_total{route=\"/v2/models/{name}/infer\",code=\"401\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("meridian_gateway_requests_total{route=\"/v2/health/live\",code=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("meridian_gateway_requests_total{route=\"unmatched\",code=\"404\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("secret-model-name"),
        "a model name became a label: {text}"
    );
    assert!(
        !text.contains("nowhere"),
        "a raw path became a label: {text}"
    );
}
