//! The inference gateway inside `meridian dev`, as a real process: it serves the Open Inference Protocol v2
//! routes on `--gateway-listen`, checks keys against the registry, answers 404 for every model while no
//! deployment exists, refuses a non-loopback address, and stops with Ctrl-C. Beside it, the agent's metrics
//! listener that `--agent-metrics-listen` asks for.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Status, headers (lower-case names) and body of one HTTP/1.1 exchange on loopback.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The OIP error message of a JSON `{"error": "..."}` body.
    fn error(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body));
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {v}"))
            .to_owned()
    }
}

fn exchange(host: &str, method: &str, path: &str, token: Option<&str>) -> Option<Reply> {
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = if method == "POST" {
        "{\"inputs\":[]}"
    } else {
        ""
    };
    if method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Kills the dev process if a check fails before its Ctrl-C.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_serves_the_gateway_on_its_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let child = Command::new(meridian_bin())
        .args(["dev"])
        .args(common::dev_sandbox_args())
        .arg("--data-dir")
        .arg(&dir)
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--raft-listen", "127.0.0.1:0"])
        .args(["--gateway-listen", "127.0.0.1:0"])
        .args(["--agent-metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start meridian dev");
    let mut dev = Dev(child);
    let (_, _, gw) = common::dev_endpoints(&dir);
    let [agent_metrics] = common::endpoints(&dir, ["agent_metrics"]);

    // Ready once the registry holds the bootstrap key; live needs no key either way.
    wait_for("the gateway to be ready", Duration::from_secs(60), || {
        if let Ok(Some(exit)) = dev.0.try_wait() {
            panic!("meridian dev exited early with {exit:?}");
        }
        (http_status(&gw, "/v2/health/ready") == Some(200)).then_some(())
    });
    let live = exchange(&gw, "GET", "/v2/health/live", None).expect("live answers");
    assert_eq!(live.status, 200);
    assert!(live.body.is_empty(), "live has an empty body");
    let token = read_trimmed(&dir.join("admin.token")).expect("admin token written");

    let anonymous = exchange(&gw, "POST", "/v2/models/x/infer", None).expect("infer answers");
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    anonymous.error();
    let wrong =
        exchange(&gw, "POST", "/v2/models/x/infer", Some("mrd_nope_nope")).expect("infer answers");
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    let admin = exchange(&gw, "POST", "/v2/models/x/infer", Some(&token)).expect("infer answers");
    assert_eq!(admin.status, 404, "{}", admin.body);
    assert_eq!(admin.error(), r#"deployment "x" not found"#);
    let meta = exchange(&gw, "GET", "/v2", Some(&token)).expect("metadata answers");
    assert_eq!(meta.status, 200, "{}", meta.body);
    let meta: serde_json::Value = serde_json::from_str(&meta.body).expect("metadata is JSON");
    assert_eq!(meta["name"], "meridian");

    // The agent's metrics, asked for on port 0, are served where endpoints.json says, once it registered.
    wait_for("the agent to register", Duration::from_secs(60), || {
        let reply = exchange(&agent_metrics, "GET", "/metrics", None)?;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply
            .body
            .lines()
            .any(|l| {
                l.starts_with("meridian_agent_registrations_total{result=\"ok\"} ")
                    && !l.ends_with(" 0")
            })
            .then_some(())
    });

    // Ctrl-C stops the gateway with the rest.
    let pid = dev.0.id().to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("send SIGINT");
    assert!(sent.success());
    let status = dev.0.wait().expect("wait for dev");
    assert!(status.success(), "meridian dev exited with {status:?}");
    assert!(
        std::net::TcpStream::connect(&gw).is_err(),
        "the gateway port is closed after Ctrl-C"
    );
}

#[test]
fn dev_refuses_a_gateway_off_loopback() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(meridian_bin())
        .args(["dev"])
        .args(common::dev_sandbox_args())
        .arg("--data-dir")
        .arg(tmp.path().join("state"))
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--raft-listen", "127.0.0.1:0"])
        .args(["--gateway-listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run meridian dev");
    assert!(!out.status.success(), "a non-loopback gateway is refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--gateway-listen") && stderr.contains("loopback"),
        "the refusal names the flag: {stderr}"
    );
}
