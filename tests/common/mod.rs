//! Helpers shared by the process-level tests: ports, waiting on conditions, running the CLI.

#![allow(dead_code)]

pub mod cluster;
pub mod dev;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Whether these tests run as root (the job sandbox needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Extra `meridian dev` arguments for this host: none as root; elsewhere the job sandbox cannot exist, so
/// `--insecure-no-sandbox`, said loudly (the sandbox's own attack tests skip there).
pub fn dev_sandbox_args() -> &'static [&'static str] {
    if is_root() {
        return &[];
    }
    eprintln!("NOTE: not root: meridian dev runs jobs without the sandbox (--insecure-no-sandbox)");
    &["--insecure-no-sandbox"]
}

/// The `meridian` binary cargo built for these tests.
pub fn meridian_bin() -> &'static str {
    env!("CARGO_BIN_EXE_meridian")
}

/// A TCP port that was free a moment ago on 127.0.0.1: for an address nothing listens on, or for the GPU
/// check script, which takes its ports from the environment. `meridian dev` and `meridian coordinator` bind
/// port 0 and name their ports in `endpoints.json` ([`endpoints`]).
pub fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A UDP port that was free a moment ago on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
    s.local_addr().expect("local addr").port()
}

/// Removes the `endpoints.json` an earlier `meridian dev` left in `dir`: call before starting one there, so
/// [`dev_endpoints`] reads the new process's ports.
pub fn forget_dev_endpoints(dir: &std::path::Path) {
    let _ = std::fs::remove_file(dir.join("endpoints.json"));
}

/// The addresses a `meridian dev` started on port 0 got, as it names them in `<dir>/endpoints.json`:
/// (admin `host:port`, raft `host:port`, gateway `host:port`). Waits for the file.
pub fn dev_endpoints(dir: &std::path::Path) -> (String, String, String) {
    let [admin, raft, gateway] = endpoints(dir, ["admin", "raft", "gateway"]);
    (admin, raft, gateway)
}

/// The `host:port` of each of `keys` in `<dir>/endpoints.json`, written by a `meridian dev` or
/// `meridian coordinator` that bound port 0. Waits for the file.
pub fn endpoints<const N: usize>(dir: &std::path::Path, keys: [&str; N]) -> [String; N] {
    let path = dir.join("endpoints.json");
    wait_for(
        "the process to name its endpoints",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&path).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let mut out = Vec::with_capacity(N);
            for key in keys {
                let url = v[key].as_str()?;
                let host = url.split_once("://").map_or(url, |(_, rest)| rest);
                out.push(host.to_owned());
            }
            out.try_into().ok()
        },
    )
}

/// Polls `cond` until it returns `Some` or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, cond: impl FnMut() -> Option<T>) -> T {
    testkit::eventually_blocking(what, timeout, cond).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the CLI with the given environment.
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(meridian_bin());
    cmd.args(args);
    cmd.env_remove("MERIDIAN_ADDR")
        .env_remove("MERIDIAN_TOKEN")
        .env_remove("MERIDIAN_CACERT");
    cmd.env_remove("MERIDIAN_PROJECT")
        .env_remove("MERIDIAN_CONTEXT");
    // The user's own contexts never steer a test; a test that wants one names its config file.
    cmd.env("MERIDIAN_CONFIG", "/nonexistent/meridian-tests/config.toml");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run meridian")
}

/// Stdout of a successful CLI run parsed as JSON; panics with stderr otherwise.
pub fn cli_json(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let out = cli(args, env);
    assert!(
        out.status.success(),
        "meridian {args:?} failed with {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "meridian {args:?} printed non-JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Submits `sh -c SCRIPT` through the CLI (with `flags` before `--`), waits until the job's output says
/// `ready`, and returns its id.
pub fn ready_job(env: &[(&str, &str)], flags: &[&str], script: &str) -> String {
    let mut args = vec!["job", "run", "-o", "json"];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", script]);
    let job = cli_json(&args, env);
    let id = job["id"].as_str().expect("the job has an id").to_owned();
    wait_for("the job to be ready", Duration::from_secs(60), || {
        let logs = cli(&["job", "logs", &id], env);
        String::from_utf8_lossy(&logs.stdout)
            .contains("ready")
            .then_some(())
    });
    id
}

/// Reads a file, trimmed; `None` while it does not exist or is empty.
pub fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Status code of a plain-HTTP GET on loopback (`None` when the server is not answering yet).
pub fn http_status(host_port: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host_port).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}
