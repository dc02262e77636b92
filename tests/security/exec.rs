//! Attack tests: `job exec` and `job cp` used to get more than a job's own processes have — by a viewer,
//! from another project, into a finished job, out of the work directory through `..`, an absolute path
//! or a link the job planted, or to see other jobs — on a real `meridian dev`.
//!
//! The checks of the admin API (roles, projects, states, paths) hold with or without the sandbox; those
//! of the sandbox itself (the job's user, its pid namespace, its mounts) need root and skip loudly
//! elsewhere, like `sandbox.rs`.

use serde_json::{json, Value};

use crate::common::dev::DevProcess;
use crate::common::{cli, is_root, ready_job};

pub(crate) fn start() -> (tempfile::TempDir, DevProcess) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    (tmp, dev)
}

/// Starts `script` (which prints `ready` once set up) and waits for it.
pub(crate) fn running_job(dev: &DevProcess, script: &str) -> String {
    let addr = dev.addr();
    ready_job(&dev.env_for(&addr, &dev.token), &[], script)
}

fn exec(
    dev: &DevProcess,
    token: &str,
    project: Option<&str>,
    id: &str,
    cmd: &[&str],
) -> (u16, Value) {
    dev.request(
        "POST",
        &format!("/v1/jobs/{id}:exec"),
        Some(token),
        project,
        Some(&json!({ "command": cmd })),
    )
}

fn stdout_of(answer: &Value) -> String {
    use base64::Engine as _;
    let text = answer["stdout"].as_str().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    String::from_utf8_lossy(&bytes).into_owned()
}

fn copy(dev: &DevProcess, id: &str, path: &str) -> (u16, Value) {
    let query: String = path
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect();
    dev.request(
        "GET",
        &format!("/v1/jobs/{id}/files?path={query}"),
        Some(&dev.token),
        None,
        None,
    )
}

pub(crate) fn new_key(dev: &DevProcess, project: &str, role: &str) -> String {
    let (status, body) = dev.request(
        "POST",
        "/v1/keys",
        Some(&dev.token),
        Some(project),
        Some(&json!({ "name": format!("{role}-key"), "role": role })),
    );
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

#[test]
fn a_viewer_cannot_enter_a_job_and_another_projects_job_answers_like_a_missing_one() {
    let (_tmp, dev) = start();
    let id = running_job(&dev, "echo private > mine.txt; echo ready; sleep 60");

    let viewer = new_key(&dev, "default", "viewer");
    let (status, answer) = exec(&dev, &viewer, None, &id, &["cat", "mine.txt"]);
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = dev.request(
        "GET",
        &format!("/v1/jobs/{id}/files?path=mine.txt"),
        Some(&viewer),
        None,
        None,
    );
    assert_eq!(status, 403, "{answer}");

    let (status, body) = dev.request(
        "POST",
        "/v1/projects",
        Some(&dev.token),
        None,
        Some(&json!({ "name": "other" })),
    );
    assert_eq!(status, 201, "{body}");
    let stranger = new_key(&dev, "other", "editor");
    let (status, hidden) = exec(&dev, &stranger, Some("other"), &id, &["cat", "mine.txt"]);
    assert_eq!(status, 404, "{hidden}");
    let (status, missing) = exec(
        &dev,
        &stranger,
        Some("other"),
        "job_nosuchjob",
        &["cat", "mine.txt"],
    );
    assert_eq!(status, 404, "{missing}");
    assert_eq!(hidden["error"]["code"], missing["error"]["code"]);
    assert_eq!(
        hidden["error"]["message"]
            .as_str()
            .map(|m| m.replace(&id, "ID")),
        missing["error"]["message"]
            .as_str()
            .map(|m| m.replace("job_nosuchjob", "ID"))
    );
    assert!(!hidden.to_string().contains("private"));

    // The one who may: it runs, and the audit log names the command line.
    let (status, answer) = exec(&dev, &dev.token, None, &id, &["cat", "mine.txt"]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(stdout_of(&answer), "private\n");
    assert!(
        dev.audited("job.exec", &id, "cat mine.txt"),
        "no job.exec record with the command line"
    );
}

#[test]
fn a_finished_job_cannot_be_entered() {
    let (_tmp, dev) = start();
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let out = cli(
        &[
            "job",
            "run",
            "--wait",
            "-o",
            "json",
            "--",
            "sh",
            "-c",
            "echo done > out.txt",
        ],
        &env,
    );
    let job: Value = serde_json::from_slice(&out.stdout).expect("job");
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = job["id"].as_str().expect("id");
    let (status, answer) = exec(&dev, &dev.token, None, id, &["cat", "out.txt"]);
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = copy(&dev, id, "out.txt");
    assert_eq!(status, 409, "{answer}");
    let out = cli(&["job", "exec", id, "--", "true"], &env);
    assert!(!out.status.success());
}

#[test]
fn cp_refuses_climbing_absolute_paths_and_links_the_job_planted() {
    let (_tmp, dev) = start();
    let id = running_job(
        &dev,
        "echo fine > fine.txt; ln -s /etc/shadow shadow-link; ln -s / root-link; \
         mkdir -p sub; ln -s ../fine.txt sub/inner-link; echo ready; sleep 60",
    );
    let (status, _) = copy(&dev, &id, "fine.txt");
    assert_eq!(status, 200, "the plain file is copied");
    for (path, expected) in [
        ("../../etc/shadow", 400),
        ("sub/../../../../etc/shadow", 400),
        ("/etc/shadow", 400),
        ("shadow-link", 403),
        ("root-link/etc/shadow", 403),
        ("sub/inner-link", 403),
    ] {
        let (status, answer) = copy(&dev, &id, path);
        assert_eq!(status, expected, "{path}: {answer}");
        assert!(!answer.to_string().contains("root:"), "{path}: {answer}");
    }
    // Through the CLI as well: refused, nothing written.
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let dest = _tmp.path().join("shadow-copy");
    let out = cli(
        &[
            "job",
            "cp",
            &format!("{id}:shadow-link"),
            dest.to_str().expect("utf-8"),
        ],
        &env,
    );
    assert!(!out.status.success());
    assert!(!dest.exists());

    // Listing a directory goes no further: a planted link to `/` is refused, the working directory's
    // listing names the links as links, and `cp -r` copies the files and leaves every link out.
    let list = |path: &str| {
        dev.request(
            "GET",
            &format!("/v1/jobs/{id}/dir?path={path}"),
            Some(&dev.token),
            None,
            None,
        )
    };
    let (status, answer) = list("root-link");
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = list("..");
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = list("");
    assert_eq!(status, 200, "{answer}");
    let kind_of = |name: &str| {
        answer["entries"]
            .as_array()
            .and_then(|e| e.iter().find(|x| x["name"] == name))
            .map(|x| x["kind"].clone())
    };
    assert_eq!(kind_of("shadow-link"), Some(json!("link")));
    assert_eq!(kind_of("root-link"), Some(json!("link")));
    assert_eq!(kind_of("sub"), Some(json!("dir")));
    let tree = _tmp.path().join("tree");
    let out = cli(
        &[
            "job",
            "cp",
            "-r",
            &format!("{id}:."),
            tree.to_str().expect("utf-8"),
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("fine.txt")).expect("copied"),
        "fine\n"
    );
    for link in ["shadow-link", "root-link", "sub/inner-link"] {
        assert!(
            std::fs::symlink_metadata(tree.join(link)).is_err(),
            "{link} was left out"
        );
    }
}

#[test]
fn exec_runs_as_the_jobs_user_and_sees_only_its_own_job() {
    if !is_root() {
        eprintln!("SKIPPED: the job sandbox needs root; exec's sandbox tests run only as root");
        return;
    }
    let (_tmp, dev) = start();
    let victim = running_job(
        &dev,
        "echo victim-secret-9f2 > mine.txt; echo workdir=$PWD; echo ready; exec sleep 61",
    );
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let logs = String::from_utf8_lossy(&cli(&["job", "logs", &victim], &env).stdout).into_owned();
    let victim_dir = logs
        .lines()
        .find_map(|l| l.strip_prefix("workdir="))
        .expect("workdir")
        .to_owned();
    let id = running_job(&dev, "echo uid=$(id -u); echo ready; sleep 60");
    let job_uid = String::from_utf8_lossy(&cli(&["job", "logs", &id], &env).stdout)
        .lines()
        .find_map(|l| l.strip_prefix("uid=").map(str::to_owned))
        .expect("uid");

    let script = format!(
        "echo uid=$(id -u); grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; \
         echo procs=$(ls /proc | grep -c '^[0-9]'); cat {victim_dir}/mine.txt 2>&1; \
         cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; kill -9 -1 2>&1; echo end"
    );
    let (status, answer) = exec(&dev, &dev.token, None, &id, &["sh", "-c", &script]);
    assert_eq!(status, 200, "{answer}");
    let out = stdout_of(&answer);
    assert!(out.contains(&format!("uid={job_uid}\n")), "{out}");
    assert_ne!(job_uid, "0");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(!out.contains("victim-secret-9f2"), "{out}");
    assert!(
        !out.contains("sleep 61"),
        "another job's process is visible: {out}"
    );
    let procs: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|p| p.parse().ok())
        .expect("procs");
    assert!(procs < 10, "{out}");
    // `kill -9 -1` from inside reached nothing outside: the other job still runs.
    let status = cli(&["job", "status", &victim, "-o", "json"], &env);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status");
    assert_eq!(status["state"], "running", "{status}");
}

/// Starts a job of the bootstrap principal holding secret `DB` (value `hunter2`, bound to that principal)
/// and waits for it to run.
pub(crate) fn job_holding_a_secret(dev: &DevProcess) -> String {
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let (status, me) = dev.request("GET", "/v1/whoami", Some(&dev.token), None, None);
    assert_eq!(status, 200, "{me}");
    let principal = me["principal"]["id"].as_str().expect("principal id");
    let bind = format!("principal:{principal}");
    let out = cli(
        &[
            "secret", "put", "db-pass", "--value", "hunter2", "--bind", &bind,
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ready_job(&env, &["--secret", "DB=db-pass"], "echo ready; sleep 60")
}

#[test]
fn a_job_holding_secrets_is_entered_only_by_its_own_principal() {
    let (_tmp, dev) = start();
    let id = job_holding_a_secret(&dev);

    // An editor of the same project may run jobs, but not enter one that holds someone else's secrets.
    let editor = new_key(&dev, "default", "editor");
    let (status, body) = exec(&dev, &editor, None, &id, &["cat", "/run/secrets/DB"]);
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("holds secrets")),
        "{body}"
    );
    assert!(!body.to_string().contains("hunter2"));

    // Its own principal may.
    let (status, body) = exec(&dev, &dev.token, None, &id, &["true"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["exit_code"], 0, "{body}");
}
