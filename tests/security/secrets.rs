//! Attack tests: secrets (see main.rs). An editor tries to obtain a secret bound to someone else's job by
//! naming a job like it, a principal without the use right names a secret bound to it, and every secret that
//! does reach a job leaves an audit record.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::dev::DevProcess;
use crate::common::wait_for;

const SECRET: &str = "prod-s3cr3t-7d1e";

/// A fresh `meridian dev` with a `trainer` service account (editor and secret-user) whose `train-prod`
/// jobs may use the secret `prod-token`.
struct World {
    dev: DevProcess,
    _dir: tempfile::TempDir,
    trainer: String,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        // Refusals reach the audit log coalesced, every 200 ms here.
        let dev = DevProcess::start(dir.path(), &["--admin-refused-audit-window-ms", "200"]);
        let (trainer, trainer_principal) = key(&dev, "trainer", "editor");
        bind(&dev, &trainer_principal, "secret-user");
        let (status, put) = dev.request(
            "POST",
            "/v1/secrets",
            Some(&dev.token),
            None,
            Some(&json!({
                "name": "prod-token",
                "value": SECRET,
                "bindings": [format!("principal:{trainer_principal}/job:train-prod")],
            })),
        );
        assert_eq!(status, 201, "{put}");
        World {
            dev,
            _dir: dir,
            trainer,
        }
    }

    /// The trainer's principal id.
    fn trainer_principal(&self) -> String {
        let (_, me) = self.as_(&self.trainer, "GET", "/v1/whoami", None);
        me["principal"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn as_(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.dev.request(method, path, Some(token), None, body)
    }

    /// Audit records of `action` with `outcome`, as the platform-admin reads them.
    fn audited(&self, action: &str, outcome: &str) -> Vec<Value> {
        let (status, page) = self.as_(&self.dev.token, "GET", "/v1/audit?page_size=1000", None);
        assert_eq!(status, 200, "{page}");
        page["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["action"] == json!(action) && r["outcome"] == json!(outcome))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until job `id` (seen with `token`) is finished; returns it.
    fn finished(&self, token: &str, id: &str) -> Value {
        wait_for("the job to finish", Duration::from_secs(60), || {
            let (status, job) = self.as_(token, "GET", &format!("/v1/jobs/{id}"), None);
            assert_eq!(status, 200, "{job}");
            matches!(
                job["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled" | "lost")
            )
            .then_some(job)
        })
    }

    /// The job's stdout.
    fn stdout(&self, token: &str, id: &str) -> String {
        let (status, logs) = self.as_(token, "GET", &format!("/v1/jobs/{id}/logs"), None);
        assert_eq!(status, 200, "{logs}");
        logs["data"].as_str().unwrap_or_default().to_owned()
    }
}

/// A key of `default` with a new service account bound `role`; (token, principal id).
fn key(dev: &DevProcess, name: &str, role: &str) -> (String, String) {
    let (status, made) = dev.request(
        "POST",
        "/v1/keys",
        Some(&dev.token),
        None,
        Some(&json!({ "name": name, "role": role })),
    );
    assert_eq!(status, 201, "{made}");
    let text = |p: &str| {
        made.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (text("/token"), text("/principal/id"))
}

fn bind(dev: &DevProcess, principal: &str, role: &str) {
    let (status, b) = dev.request(
        "POST",
        "/v1/role-bindings",
        Some(&dev.token),
        None,
        Some(&json!({ "principal_id": principal, "role": role })),
    );
    assert_eq!(status, 201, "{b}");
}

#[test]
fn an_editor_naming_a_job_like_a_bound_job_gets_no_secret() {
    let w = World::new();
    // The attacker even holds the use right: what stops them is that the secret names another principal.
    let (attacker, attacker_principal) = key(&w.dev, "mallory", "editor");
    bind(&w.dev, &attacker_principal, "secret-user");
    let steal = json!({
        "name": "train-prod",
        "command": "sh",
        "args": ["-c", "echo \"token=$TOKEN\""],
        "secrets": { "TOKEN": "prod-token" },
    });
    let (status, answer) = w.as_(&attacker, "POST", "/v1/jobs", Some(&steal));
    assert_eq!(status, 412, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not bound")),
        "{answer}"
    );
    let (_, jobs) = w.as_(&attacker, "GET", "/v1/jobs", None);
    assert_eq!(jobs["items"], json!([]), "no job was accepted");
    assert!(
        !w.audited("job.submit", "refused").is_empty(),
        "the attempt is audited"
    );

    // Nor can they rebind it to job names, or to themselves (they are no project-admin).
    let (status, answer) = w.as_(
        &attacker,
        "POST",
        "/v1/secrets",
        Some(&json!({ "name": "prod-token", "value": "x", "bindings": ["job:train-prod"] })),
    );
    assert_eq!(status, 403, "{answer}");

    // A job of that name without the secret runs, and its environment holds no secret.
    let plain = json!({
        "name": "train-prod",
        "command": "sh",
        "args": ["-c", "env"],
    });
    let (status, job) = w.as_(&attacker, "POST", "/v1/jobs", Some(&plain));
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("job id").to_owned();
    let done = w.finished(&attacker, &id);
    assert_eq!(done["state"], json!("succeeded"), "{done}");
    let out = w.stdout(&attacker, &id);
    assert!(out.contains("MERIDIAN_JOB_ID"), "the job ran: {out}");
    assert!(
        !out.contains(SECRET),
        "the secret reached a job named like the bound one"
    );
    assert!(
        w.audited("secret.release", "success").is_empty(),
        "nothing was released"
    );
}

#[test]
fn a_principal_without_the_use_right_is_refused() {
    let w = World::new();
    // An editor the secret IS bound to, but who was never given use-secrets.
    let (editor, editor_principal) = key(&w.dev, "plain-editor", "editor");
    let (status, put) = w.as_(
        &w.dev.token,
        "POST",
        "/v1/secrets",
        Some(&json!({
            "name": "editor-token",
            "value": SECRET,
            "bindings": [format!("principal:{editor_principal}")],
        })),
    );
    assert_eq!(status, 201, "{put}");
    let (status, answer) = w.as_(
        &editor,
        "POST",
        "/v1/jobs",
        Some(&json!({ "command": "true", "secrets": { "TOKEN": "editor-token" } })),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("use-secrets")),
        "{answer}"
    );
    let (_, jobs) = w.as_(&editor, "GET", "/v1/jobs", None);
    assert_eq!(jobs["items"], json!([]), "no job was accepted");
    wait_for(
        "the refusal in the audit log",
        Duration::from_secs(30),
        || (!w.audited("job.submit", "denied").is_empty()).then_some(()),
    );
    // The trainer, who holds the right and is bound, may.
    let (status, job) = w.as_(
        &w.trainer,
        "POST",
        "/v1/jobs",
        Some(&json!({
            "name": "train-prod",
            "command": "true",
            "secrets": { "TOKEN": "prod-token" },
        })),
    );
    assert_eq!(status, 201, "{job}");
}

#[test]
fn every_release_of_a_secret_to_an_agent_is_audited_once() {
    let w = World::new();
    let (status, job) = w.as_(
        &w.trainer,
        "POST",
        "/v1/jobs",
        Some(&json!({
            "name": "train-prod",
            "command": "sleep",
            "args": ["1"],
            "secrets": { "TOKEN": "prod-token" },
        })),
    );
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("job id").to_owned();
    assert_eq!(job["principal_id"], json!(w.trainer_principal()), "{job}");
    let done = w.finished(&w.trainer, &id);
    assert_eq!(done["state"], json!("succeeded"), "{done}");
    // The agent polled its assignments several times while the job ran; the release is recorded once,
    // naming the job, attempt, node, secret and version, before the agent got the value.
    let releases = w.audited("secret.release", "success");
    assert_eq!(releases.len(), 1, "{releases:?}");
    let r = &releases[0];
    assert_eq!(r["target"], json!(id));
    let detail = r["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("attempt=1 replica=0 node=local/dev/dev")
            && detail.ends_with("secrets=prod-token@v1"),
        "{detail}"
    );
    assert!(
        !r.to_string().contains(SECRET),
        "the record names, never shows"
    );
    // The platform-admin's audit verify still holds.
    let (status, verified) = w.as_(&w.dev.token, "GET", "/v1/audit/verify", None);
    assert_eq!(status, 200);
    assert_eq!(verified["ok"], json!(true), "{verified}");
}

#[test]
fn a_released_secret_is_a_private_file_and_in_the_environment_only_when_asked() {
    if !crate::common::is_root() {
        eprintln!("SKIPPED: secrets as private files need the job sandbox, which needs root");
        return;
    }
    let w = World::new();
    // Prints where the secret is, who may read it, and whether the environment holds it.
    let script = "f=\"$MERIDIAN_SECRETS_DIR/TOKEN\"; \
                  echo \"dir=$MERIDIAN_SECRETS_DIR\"; \
                  echo \"file=$(cat \"$f\")\"; \
                  echo \"mode=$(stat -c %a \"$f\") owner=$(stat -c %u \"$f\") me=$(id -u)\"; \
                  echo \"env=${TOKEN:-unset}\"";
    let run = |secrets_env: bool| {
        let (status, job) = w.as_(
            &w.trainer,
            "POST",
            "/v1/jobs",
            Some(&json!({
                "name": "train-prod",
                "command": "sh",
                "args": ["-c", script],
                "secrets": { "TOKEN": "prod-token" },
                "secrets_env": secrets_env,
            })),
        );
        assert_eq!(status, 201, "{job}");
        let id = job["id"].as_str().expect("job id").to_owned();
        let done = w.finished(&w.trainer, &id);
        assert_eq!(done["state"], json!("succeeded"), "{done}");
        w.stdout(&w.trainer, &id)
    };
    let field = |out: &str, key: &str| -> String {
        out.split_whitespace()
            .find_map(|t| t.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_owned()
    };

    let out = run(false);
    assert_eq!(field(&out, "dir"), "/run/secrets", "{out}");
    assert_eq!(field(&out, "file"), SECRET, "{out}");
    assert_eq!(field(&out, "mode"), "400", "{out}");
    assert_eq!(field(&out, "owner"), field(&out, "me"), "{out}");
    assert_eq!(
        field(&out, "env"),
        "unset",
        "the environment holds it unasked: {out}"
    );
    // Nothing of it stays on the node's disk: the agent's data directory never holds the value.
    let mut stack = vec![w.dev.dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && !path.ends_with("stdout.log") {
                let bytes = std::fs::read(&path).unwrap_or_default();
                assert!(
                    !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                    "the secret is on disk in {}",
                    path.display()
                );
            }
        }
    }

    let out = run(true);
    assert_eq!(field(&out, "file"), SECRET, "{out}");
    assert_eq!(
        field(&out, "env"),
        SECRET,
        "asked for, the environment has it: {out}"
    );
}
