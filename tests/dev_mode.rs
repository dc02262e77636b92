//! `meridian dev` as a real process: the quickstart tour through the CLI, Ctrl-C, and a restart on the same
//! directory that keeps all state.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct DevProcess {
    child: Child,
    addr: String,
    /// Where the process's log (stderr) goes: a file, not a terminal.
    log: std::path::PathBuf,
}

impl DevProcess {
    fn start(dir: &std::path::Path) -> DevProcess {
        common::forget_dev_endpoints(dir);
        let log = dir.with_extension("log");
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(meridian_bin())
            .args(["dev"])
            .args(common::dev_sandbox_args())
            .arg("--data-dir")
            .arg(dir)
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--raft-listen", "127.0.0.1:0"])
            .args(["--gateway-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start meridian dev");
        let (host, _, _) = common::dev_endpoints(dir);
        let addr = format!("http://{host}");
        wait_for("dev to be ready", Duration::from_secs(60), || {
            (http_status(&host, "/readyz") == Some(200)).then_some(())
        });
        // The bootstrap key is usable once its command has been applied.
        let token_path = dir.join("admin.token");
        wait_for("the bootstrap key to work", Duration::from_secs(30), || {
            let token = read_trimmed(&token_path)?;
            let env = [
                ("MERIDIAN_ADDR", addr.as_str()),
                ("MERIDIAN_TOKEN", token.as_str()),
            ];
            cli(&["whoami"], &env).status.success().then_some(())
        });
        DevProcess { child, addr, log }
    }

    /// Ctrl-C, then wait for a clean exit: calls still open (the agent's long poll) are answered, not
    /// waited out and warned about, and a log that is not a terminal carries no colour codes.
    fn interrupt(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("send SIGINT");
        assert!(sent.success());
        let status = self.child.wait().expect("wait for dev");
        assert!(
            status.success(),
            "meridian dev exited with {status:?} after Ctrl-C"
        );
        let log = std::fs::read_to_string(&self.log).expect("read the log");
        assert!(log.contains("meridian dev: stopping"), "{log}");
        assert!(!log.contains("still in flight"), "{log}");
        assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dev_tour_and_restart_keeps_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let dev = DevProcess::start(&dir);

    // The bootstrap token is written with mode 0600.
    let token_path = dir.join("admin.token");
    let token = read_trimmed(&token_path).expect("admin token written");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_path).expect("stat").permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "admin.token must not be readable by others (mode {mode:o})"
    );

    let admin = [
        ("MERIDIAN_ADDR", dev.addr.as_str()),
        ("MERIDIAN_TOKEN", token.as_str()),
    ];
    let status = cli_json(&["cluster", "status", "-o", "json"], &admin);
    assert!(status["leader"].is_u64(), "single node leads: {status}");

    let created = cli_json(&["project", "create", "vision", "-o", "json"], &admin);
    assert_eq!(created["name"], "vision");
    let project_id = created["id"].as_str().expect("project id").to_string();

    // Duplicate name: conflict exit code.
    let dup = cli(&["project", "create", "vision"], &admin);
    assert_eq!(
        dup.status.code(),
        Some(5),
        "duplicate project: {}",
        String::from_utf8_lossy(&dup.stderr)
    );

    // A key for `vision` with role editor sees its project, and `default` is invisible to it.
    let key = cli_json(
        &[
            "key",
            "create",
            "ci",
            "--role",
            "editor",
            "--project",
            "vision",
            "-o",
            "json",
        ],
        &admin,
    );
    let ci_token = key["token"].as_str().expect("token shown once").to_string();
    let ci = [
        ("MERIDIAN_ADDR", dev.addr.as_str()),
        ("MERIDIAN_TOKEN", ci_token.as_str()),
    ];
    let listed = cli_json(&["project", "list", "-o", "json"], &ci);
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        names,
        vec!["vision"],
        "an editor of vision sees only vision"
    );
    let other = cli(&["project", "get", "default"], &ci);
    assert_eq!(other.status.code(), Some(4), "another project is not found");

    // Keys are listed without their secret.
    let keys = cli_json(
        &["key", "list", "--project", "vision", "-o", "json"],
        &admin,
    );
    let text = keys.to_string();
    assert!(!text.contains(&ci_token), "key listing leaks the token");

    // Missing token / bad token: exit code 3.
    let bad = cli(
        &["project", "list"],
        &[
            ("MERIDIAN_ADDR", dev.addr.as_str()),
            ("MERIDIAN_TOKEN", "mrd_nope_nope"),
        ],
    );
    assert_eq!(bad.status.code(), Some(3));

    // The embedded agent registers this machine as node local/dev/dev.
    let node = wait_for(
        "the dev agent's node to be ready",
        Duration::from_secs(30),
        || {
            let nodes = cli_json(&["node", "list", "-o", "json"], &admin);
            nodes
                .as_array()?
                .iter()
                .find(|n| n["key"] == "local/dev/dev" && n["health"] == "ready")
                .cloned()
        },
    );
    assert!(node["cpu_cores"].as_u64().is_some_and(|c| c > 0), "{node}");

    // A job runs on the embedded agent: `--wait` exits 0 on success, the status and output are there.
    let run = cli(
        &[
            "job",
            "run",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo hello from dev",
        ],
        &admin,
    );
    assert!(
        run.status.success(),
        "job run --wait: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    // With --wait, stdout carries the job's output and stderr the job id.
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from dev\n");
    let job_id = String::from_utf8_lossy(&run.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("job_"))
        .map(String::from)
        .expect("job run names the job id");
    let job = cli_json(&["job", "status", &job_id, "-o", "json"], &admin);
    assert_eq!(job["id"].as_str(), Some(job_id.as_str()), "{job}");
    assert_eq!(job["state"], "succeeded", "{job}");
    let logs = cli(&["job", "logs", &job_id], &admin);
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout).trim(),
        "hello from dev"
    );
    let failed = cli(&["job", "run", "--wait", "--", "false"], &admin);
    assert!(!failed.status.success(), "--wait fails with the job");

    // A gang of two on the one node: two processes, each with its own replica index, host list and output.
    let gang = cli(
        &[
            "job",
            "run",
            "--wait",
            "--replicas",
            "2",
            "--",
            "sh",
            "-c",
            "echo replica $MERIDIAN_REPLICA of $MERIDIAN_REPLICAS on $MERIDIAN_REPLICA_HOSTS",
        ],
        &admin,
    );
    assert!(
        gang.status.success(),
        "job run --replicas 2 --wait: {}",
        String::from_utf8_lossy(&gang.stderr)
    );
    let gang_id = String::from_utf8_lossy(&gang.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("job_"))
        .map(String::from)
        .expect("job run names the job id");
    let gang_job = cli_json(&["job", "status", &gang_id, "-o", "json"], &admin);
    assert_eq!(gang_job["replicas"], 2, "{gang_job}");
    assert_eq!(
        gang_job["attempts"].as_array().map(Vec::len),
        Some(2),
        "{gang_job}"
    );
    for replica in ["0", "1"] {
        let out = cli(&["job", "logs", "--replica", replica, &gang_id], &admin);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!("replica {replica} of 2 on ")),
            "replica {replica}: {text}"
        );
    }

    // A secret bound to the admin's principal reaches the admin's job that names it, as an environment
    // variable.
    let me = cli_json(&["whoami", "-o", "json"], &admin);
    let binding = format!(
        "principal:{}",
        me["principal"]["id"].as_str().expect("principal id")
    );
    let put = cli(
        &[
            "secret",
            "put",
            "api-token",
            "--value",
            "s3cr3t-v4lue",
            "--bind",
            &binding,
        ],
        &admin,
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let with_secret = cli(
        &[
            "job",
            "run",
            "--wait",
            "--secret",
            "API_TOKEN=api-token",
            "--secret-env",
            "--",
            "sh",
            "-c",
            "test \"$API_TOKEN\" = s3cr3t-v4lue && echo token-ok",
        ],
        &admin,
    );
    assert!(
        with_secret.status.success(),
        "the job saw its secret: {}",
        String::from_utf8_lossy(&with_secret.stderr)
    );

    let verified = cli_json(&["audit", "verify", "-o", "json"], &admin);
    assert_eq!(verified["ok"], true, "{verified}");

    dev.interrupt();

    // Same directory, new process: the project and the keys are still there.
    let dev = DevProcess::start(&dir);
    let again = read_trimmed(&token_path).expect("token kept");
    assert_eq!(again, token, "restart keeps the admin token");
    let admin = [
        ("MERIDIAN_ADDR", dev.addr.as_str()),
        ("MERIDIAN_TOKEN", token.as_str()),
    ];
    let p = cli_json(&["project", "get", "vision", "-o", "json"], &admin);
    assert_eq!(p["id"].as_str(), Some(project_id.as_str()));
    let ci = [
        ("MERIDIAN_ADDR", dev.addr.as_str()),
        ("MERIDIAN_TOKEN", ci_token.as_str()),
    ];
    let listed = cli_json(&["project", "list", "-o", "json"], &ci);
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "ci key still works after restart"
    );
    let job = cli_json(&["job", "status", &job_id, "-o", "json"], &admin);
    assert_eq!(job["state"], "succeeded", "jobs survive a restart: {job}");
    dev.interrupt();
}
