//! A `meridian dev` process for process-level tests, and a small blocking HTTP/1.1 JSON client for its
//! plain-HTTP loopback admin API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{cli, dev_endpoints, http_status, meridian_bin, read_trimmed, wait_for};

/// A running `meridian dev` on free loopback ports; killed when dropped.
pub struct DevProcess {
    child: Child,
    pub dir: PathBuf,
    /// `127.0.0.1:<port>` of the admin API.
    pub admin: String,
    /// `127.0.0.1:<port>` of the gateway.
    pub gateway: String,
    /// `127.0.0.1:<port>` (UDP) of the coordinator's QUIC mesh, where agents and coordinators call.
    pub raft: String,
    /// The bootstrap platform-admin token.
    pub token: String,
}

impl DevProcess {
    /// Starts `meridian dev --data-dir DIR` with `extra` arguments and waits until the bootstrap key works.
    pub fn start(dir: &Path, extra: &[&str]) -> DevProcess {
        DevProcess::start_with_env(dir, extra, &[])
    }

    /// [`DevProcess::start`] with extra environment variables for the process.
    /// Where the tests do not run as root, the job sandbox cannot exist: the process then runs with
    /// `--insecure-no-sandbox` and says so (the sandbox's own attack tests skip loudly there).
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> DevProcess {
        let mut extra = extra.to_vec();
        if !extra.contains(&"--insecure-no-sandbox") {
            extra.extend_from_slice(super::dev_sandbox_args());
        }
        // Every listener asks for a free port; the process names the ones it got in endpoints.json.
        super::forget_dev_endpoints(dir);
        let child = Command::new(meridian_bin())
            .args(["dev", "--data-dir"])
            .arg(dir)
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--raft-listen", "127.0.0.1:0"])
            .args(["--gateway-listen", "127.0.0.1:0"])
            .args(&extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meridian dev");
        let (admin, raft, gateway) = dev_endpoints(dir);
        wait_for("dev to be ready", Duration::from_secs(60), || {
            (http_status(&admin, "/readyz") == Some(200)).then_some(())
        });
        let token_path = dir.join("admin.token");
        let addr = format!("http://{admin}");
        let token = wait_for("the bootstrap key to work", Duration::from_secs(30), || {
            let token = read_trimmed(&token_path)?;
            let env = [
                ("MERIDIAN_ADDR", addr.as_str()),
                ("MERIDIAN_TOKEN", token.as_str()),
            ];
            cli(&["whoami"], &env).status.success().then_some(token)
        });
        DevProcess {
            child,
            dir: dir.to_path_buf(),
            admin,
            gateway,
            raft,
            token,
        }
    }

    /// `http://127.0.0.1:<admin port>`.
    pub fn addr(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The CLI environment for `token`.
    pub fn env_for<'a>(&'a self, addr: &'a str, token: &'a str) -> [(&'a str, &'a str); 2] {
        [("MERIDIAN_ADDR", addr), ("MERIDIAN_TOKEN", token)]
    }

    /// One request to the admin API; the status and the body parsed as JSON (`Value::Null` when empty or
    /// not JSON).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        project: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        http_json(&self.admin, method, path, token, project, body)
    }

    /// Whether the audit log holds a successful `action` on `target` whose detail contains `detail`.
    pub fn audited(&self, action: &str, target: &str, detail: &str) -> bool {
        let (status, audit) = self.request(
            "GET",
            "/v1/audit?page_size=1000",
            Some(&self.token),
            None,
            None,
        );
        assert_eq!(status, 200, "{audit}");
        audit["items"].as_array().into_iter().flatten().any(|r| {
            r["action"] == action
                && r["target"] == target
                && r["outcome"] == "success"
                && r["detail"].as_str().is_some_and(|d| d.contains(detail))
        })
    }

    /// The OS pid of the `meridian dev` process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with an optional bearer token, `X-Meridian-Project` header and JSON body.
pub fn http_json(
    host_port: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    project: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(host_port).expect("connect to the admin API");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(project) = project {
        head.push_str(&format!("X-Meridian-Project: {project}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).expect("write request");
    s.write_all(body.as_bytes()).expect("write body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (headers, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let payload = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    let json = serde_json::from_str(&payload).unwrap_or(Value::Null);
    (status, json)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
