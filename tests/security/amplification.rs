//! Attack tests: floods of refused requests, existence oracles and unbounded tenants (see main.rs).
//!
//! Each test starts its own `meridian dev` and tries what a hostile client would: a thousand refused
//! requests (each once a replicated audit write), telling a hidden project from a missing one by its
//! answer or its latency, filling the queue with jobs, holding connections open, and sending headers or a
//! body a byte at a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::dev::DevProcess;
use crate::common::{cli, cli_json, wait_for};

fn start(extra: &[&str]) -> (DevProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = DevProcess::start(dir.path(), extra);
    (dev, dir)
}

fn create_project(dev: &DevProcess, name: &str) -> String {
    let (status, body) = dev.request(
        "POST",
        "/v1/projects",
        Some(&dev.token),
        None,
        Some(&json!({ "name": name })),
    );
    assert_eq!(status, 201, "creating project {name}: {body}");
    body["id"].as_str().expect("project id").to_owned()
}

/// A new key with `role` in `project`: (token, principal id).
fn create_key(dev: &DevProcess, project: &str, name: &str, role: &str) -> (String, String) {
    let (status, body) = dev.request(
        "POST",
        "/v1/keys",
        Some(&dev.token),
        Some(project),
        Some(&json!({ "name": name, "role": role })),
    );
    assert_eq!(status, 201, "creating key {name}: {body}");
    (
        body["token"].as_str().expect("token").to_owned(),
        body["principal"]["id"]
            .as_str()
            .expect("principal")
            .to_owned(),
    )
}

/// Every audit record, read as the platform admin.
fn audit_all(dev: &DevProcess) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let (status, page) = dev.request(
            "GET",
            &format!("/v1/audit?after_seq={after}&page_size=1000"),
            Some(&dev.token),
            None,
            None,
        );
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let Some(last) = items.last().and_then(|r| r["seq"].as_u64()) else {
            return all;
        };
        after = last;
        all.extend(items);
    }
}

/// The `count=N` a coalesced refusal record carries.
fn count_of(record: &Value) -> u64 {
    record["detail"]
        .as_str()
        .and_then(|d| d.strip_prefix("count="))
        .and_then(|d| d.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A response as read off the wire: status, lower-cased header lines, body.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 response (with a `content-length` body) from `reader`.
fn read_response(reader: &mut impl BufRead) -> std::io::Result<RawResponse> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(RawResponse {
        status,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// A GET on one connection (closed after), with headers kept.
fn raw_get(host: &str, path: &str, token: Option<&str>, project: Option<&str>) -> RawResponse {
    let mut s = TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(p) = project {
        req.push_str(&format!("X-Meridian-Project: {p}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    read_response(&mut BufReader::new(s)).expect("a response")
}

/// A keep-alive connection that times each request, so connection set-up does not blur the comparison.
struct KeepAlive {
    reader: BufReader<TcpStream>,
    host: String,
}

impl KeepAlive {
    fn open(host: &str) -> KeepAlive {
        let s = TcpStream::connect(host).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        KeepAlive {
            reader: BufReader::new(s),
            host: host.to_owned(),
        }
    }

    fn get(&mut self, path: &str, token: &str, project: &str) -> (Duration, RawResponse) {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             X-Meridian-Project: {project}\r\n\r\n",
            self.host
        );
        let started = Instant::now();
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .expect("write");
        let resp = read_response(&mut self.reader).expect("a response");
        (started.elapsed(), resp)
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn a_thousand_denied_requests_leave_a_handful_of_audit_records() {
    // A window longer than the flood, so its refusals land in one or two windows.
    let (dev, _dir) = start(&["--admin-refused-audit-window-ms", "10000"]);
    create_project(&dev, "mine");
    create_project(&dev, "theirs");
    let (token, principal) = create_key(&dev, "mine", "prober", "editor");
    let before = audit_all(&dev);
    let last_seq = before.last().and_then(|r| r["seq"].as_u64()).unwrap_or(0);

    // A thousand probes of a project the key may not see.
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    let mut limited = None;
    for _ in 0..1000 {
        let r = raw_get(&dev.admin, "/v1/jobs", Some(&token), Some("theirs"));
        *statuses.entry(r.status).or_default() += 1;
        if r.status == 429 && limited.is_none() {
            limited = Some(r);
        }
    }
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [404, 429],
        "refused, then rate-limited: {statuses:?}"
    );
    let limited = limited.expect("a 429");
    assert_eq!(
        limited.body["error"]["code"], "rate_limited",
        "{}",
        limited.body
    );
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // The limit is on refusals: the same key and address still do their own work.
    let (status, body) = dev.request("GET", "/v1/jobs", Some(&token), None, None);
    assert_eq!(status, 200, "{body}");

    // All thousand are accounted for, in a handful of records.
    let denied = wait_for(
        "the refusals to reach the audit log",
        Duration::from_secs(30),
        || {
            let records: Vec<Value> = audit_all(&dev)
                .into_iter()
                .filter(|r| r["seq"].as_u64().unwrap_or(0) > last_seq)
                .filter(|r| r["outcome"] == "denied" && r["actor"]["principal_id"] == principal)
                .collect();
            let total: u64 = records.iter().map(count_of).sum();
            (total >= 1000).then_some(records)
        },
    );
    let total: u64 = denied.iter().map(count_of).sum();
    assert_eq!(total, 1000, "{denied:#?}");
    assert!(
        denied.len() <= 3,
        "{} records for 1000 refusals: {denied:#?}",
        denied.len()
    );
    // They say how many were answered 429.
    assert!(
        denied.iter().any(|r| r["detail"]
            .as_str()
            .is_some_and(|d| !d.contains("rate_limited=0 "))),
        "{denied:#?}"
    );
    assert!(denied.iter().all(|r| r["action"] == "job.list"));
    let after = audit_all(&dev);
    let new_records = after
        .iter()
        .filter(|r| r["seq"].as_u64().unwrap_or(0) > last_seq)
        .count();
    assert!(
        new_records <= 10,
        "{new_records} new audit records: {after:#?}"
    );
    // The log still verifies on the server.
    let (status, verified) = dev.request("GET", "/v1/audit/verify", Some(&dev.token), None, None);
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["ok"], true, "{verified}");
}

#[test]
fn hidden_and_missing_projects_answer_alike_in_content_and_time() {
    // Refusals are not rate-limited here, so every probe takes the full refusal path.
    let (dev, _dir) = start(&[
        "--admin-refused-burst",
        "1000000",
        "--admin-refused-per-second",
        "1000000",
    ]);
    create_project(&dev, "mine");
    create_project(&dev, "hidden");
    let (token, _) = create_key(&dev, "mine", "prober", "viewer");

    let mut conn = KeepAlive::open(&dev.admin);
    let (mut hidden, mut missing) = (Vec::new(), Vec::new());
    let (mut hidden_body, mut missing_body) = (Value::Null, Value::Null);
    for i in 0..600 {
        // Interleaved, so drift on a busy machine affects both alike.
        let (project, samples, body) = if i % 2 == 0 {
            ("hidden", &mut hidden, &mut hidden_body)
        } else {
            ("nosuch", &mut missing, &mut missing_body)
        };
        let (took, r) = conn.get("/v1/jobs", &token, project);
        assert_eq!(r.status, 404, "{}", r.body);
        samples.push(took);
        *body = r.body;
    }
    // The same answer, word for word, but for the name asked about.
    assert_eq!(
        hidden_body.to_string().replace("hidden", "<p>"),
        missing_body.to_string().replace("nosuch", "<p>")
    );
    // And no measurable difference in time: medians within a generous factor (a replicated write for one
    // of them, as before, was several times slower).
    let (h, m) = (median(hidden), median(missing));
    let ratio = h.as_secs_f64() / m.as_secs_f64();
    assert!(
        (0.5..=2.0).contains(&ratio),
        "hidden {h:?} vs missing {m:?} (ratio {ratio:.2})"
    );
}

#[test]
fn the_pending_job_quota_refuses_one_more_with_a_clear_error() {
    let (dev, _dir) = start(&[]);
    let addr = dev.addr();
    create_project(&dev, "queue");
    let (editor, _) = create_key(&dev, "queue", "flooder", "editor");
    let (lead, _) = create_key(&dev, "queue", "lead", "project-admin");

    // A fresh project is bounded by the built-in defaults.
    let policy = cli_json(
        &["project", "policy", "get", "queue", "-o", "json"],
        &dev.env_for(&addr, &dev.token),
    );
    assert_eq!(policy["max_pending_jobs"], 1000, "{policy}");
    // Only a platform-admin changes it.
    let refused = cli(
        &[
            "project",
            "policy",
            "set",
            "queue",
            "--max-pending-jobs",
            "100000",
        ],
        &dev.env_for(&addr, &lead),
    );
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let set = cli_json(
        &[
            "project",
            "policy",
            "set",
            "queue",
            "--max-pending-jobs",
            "3",
            "-o",
            "json",
        ],
        &dev.env_for(&addr, &dev.token),
    );
    assert_eq!(set["max_pending_jobs"], 3, "{set}");

    // Jobs that can never fit the node stay pending: three are accepted, the fourth refused.
    let job = json!({ "command": "true", "resources": { "cpu_millis": 200_000 } });
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = dev.request("POST", "/v1/jobs", Some(&editor), None, Some(&job));
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    let (status, body) = dev.request("POST", "/v1/jobs", Some(&editor), None, Some(&job));
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("3 pending jobs") && message.contains("max_pending_jobs"),
        "{message}"
    );
    // The CLI says the same and exits 3.
    let out = cli(
        &["job", "run", "--cpu", "200", "--", "true"],
        &dev.env_for(&addr, &editor),
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_pending_jobs"),
        "{out:?}"
    );
    let (_, listed) = dev.request("GET", "/v1/jobs", Some(&editor), None, None);
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
    // Hammering the full queue costs the coordinators no replicated writes.
    for _ in 0..50 {
        let (status, _) = dev.request("POST", "/v1/jobs", Some(&editor), None, Some(&job));
        assert_eq!(status, 429);
    }
    let refused_writes = audit_all(&dev)
        .into_iter()
        .filter(|r| r["action"] == "job.submit" && r["outcome"] != "success")
        .count();
    assert_eq!(refused_writes, 0, "refused submissions reached the log");

    // Cancelling one frees its place.
    let (status, _) = dev.request(
        "POST",
        &format!("/v1/jobs/{}:cancel", ids[0]),
        Some(&editor),
        None,
        None,
    );
    assert_eq!(status, 200);
    let (status, body) = dev.request("POST", "/v1/jobs", Some(&editor), None, Some(&job));
    assert_eq!(status, 201, "{body}");
}

#[test]
fn slow_loris_headers_and_bodies_are_cut_off() {
    let (dev, _dir) = start(&[
        "--admin-body-timeout-ms",
        "1000",
        "--admin-header-timeout-ms",
        "1000",
    ]);
    let host = dev.admin.clone();

    // A body announced as 200 bytes, sent a byte every 200 ms: answered 408 well before it is complete.
    let mut s = TcpStream::connect(&host).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n",
        dev.token
    );
    s.write_all(head.as_bytes()).expect("headers");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(15) && !closed {
        let _ = s.write_all(b" ");
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => closed = true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => closed = true,
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(closed, "the connection is closed after the 408");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Headers dribbled a byte at a time: the connection is dropped at the header timeout.
    let mut s = TcpStream::connect(&host).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let started = Instant::now();
    let slow = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Padding: ";
    let mut sent = 0;
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(15) && !closed {
        let byte = if sent < slow.len() { slow[sent] } else { b'a' };
        if s.write_all(&[byte]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(_) => closed = true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => closed = true,
        }
    }
    assert!(closed, "a dribbling header was not cut off");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A connection that never says anything is dropped at the same timeout, freeing its place.
    let mut silent = TcpStream::connect(&host).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)) && started.elapsed() < Duration::from_secs(10),
        "{read:?} after {:?}",
        started.elapsed()
    );

    // The API serves others all along.
    let (status, _) = dev.request("GET", "/v1/whoami", Some(&dev.token), None, None);
    assert_eq!(status, 200);
}

#[test]
fn the_connection_cap_holds() {
    let (dev, _dir) = start(&["--admin-max-connections", "8"]);
    let host = dev.admin.clone();
    // Eight connections that say nothing hold every place.
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&host).expect("connect"))
        .collect();
    // The ninth is refused at once with a JSON 503, and closed.
    let refused = raw_get(&host, "/v1/whoami", Some(&dev.token), None);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.body["error"]["code"], "unavailable",
        "{}",
        refused.body
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Their places come back when they go.
    drop(idle);
    wait_for(
        "a place under the cap to come back",
        Duration::from_secs(10),
        || (raw_get(&host, "/v1/whoami", Some(&dev.token), None).status == 200).then_some(()),
    );
}
