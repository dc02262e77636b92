//! Attack tests: priority and preemption used against another project (see main.rs).
//!
//! Each test starts its own `meridian dev` (one coordinator, one agent on this machine), fills the one node
//! with a long `sleep` job that reserves every core, and then tries to get another job onto the node the
//! only way left: by preempting. A project's own jobs may be evicted by a project-admin's preempting job;
//! another project's may not (unless a platform-admin raised the attacker's ceiling above them), an editor
//! may not ask for preemption at all, and a victim's record never names another project's job.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::dev::DevProcess;
use crate::common::wait_for;

/// How long a `sleep` job lives if a test fails before cancelling it.
const SLEEP_SECS: &str = "300";

/// A `meridian dev` with two projects and keys in them.
struct Tenants {
    dev: DevProcess,
    _dir: tempfile::TempDir,
    /// Cores of the dev node, in thousandths.
    node_cpu_millis: u64,
}

impl Tenants {
    fn start() -> Tenants {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev = DevProcess::start(dir.path(), &[]);
        let node_cpu_millis = wait_for("the dev node to be ready", Duration::from_secs(60), || {
            let (status, nodes) = dev.request("GET", "/v1/nodes", Some(&dev.token), None, None);
            let node = nodes["items"].as_array()?.first()?.clone();
            (status == 200 && node["health"] == "ready")
                .then(|| node["cpu_cores"].as_u64())
                .flatten()
                .map(|cores| cores * 1000)
        });
        Tenants {
            dev,
            _dir: dir,
            node_cpu_millis,
        }
    }

    fn admin_token(&self) -> &str {
        &self.dev.token
    }

    fn project(&self, name: &str) -> String {
        let (status, body) = self.dev.request(
            "POST",
            "/v1/projects",
            Some(self.admin_token()),
            None,
            Some(&json!({ "name": name })),
        );
        assert_eq!(status, 201, "creating project {name}: {body}");
        body["id"].as_str().expect("project id").to_owned()
    }

    /// A new key with `role` in `project`: its token.
    fn key(&self, project: &str, name: &str, role: &str) -> String {
        let (status, body) = self.dev.request(
            "POST",
            "/v1/keys",
            Some(self.admin_token()),
            Some(project),
            Some(&json!({ "name": name, "role": role })),
        );
        assert_eq!(status, 201, "creating key {name}: {body}");
        body["token"].as_str().expect("token").to_owned()
    }

    fn submit(&self, token: &str, body: &Value) -> (u16, Value) {
        self.dev
            .request("POST", "/v1/jobs", Some(token), None, Some(body))
    }

    fn job(&self, token: &str, id: &str) -> Value {
        let (status, body) =
            self.dev
                .request("GET", &format!("/v1/jobs/{id}"), Some(token), None, None);
        assert_eq!(status, 200, "reading job {id}: {body}");
        body
    }

    /// A job that holds every core of the node until cancelled.
    fn fill_node(&self, token: &str) -> String {
        let (status, body) = self.submit(
            token,
            &json!({
                "name": "victim",
                "command": "sleep",
                "args": [SLEEP_SECS],
                "resources": { "cpu_millis": self.node_cpu_millis },
            }),
        );
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().expect("job id").to_owned();
        wait_for("the victim to run", Duration::from_secs(60), || {
            (self.job(token, &id)["state"] == "running").then_some(())
        });
        id
    }

    /// A one-core job at `priority` that asks for preemption.
    fn preempting(&self, token: &str, priority: i64) -> (u16, Value) {
        self.submit(
            token,
            &json!({
                "name": "urgent",
                "command": "sleep",
                "args": [SLEEP_SECS],
                "resources": { "cpu_millis": 1000 },
                "priority": priority,
                "preemption": true,
            }),
        )
    }

    fn cancel(&self, token: &str, id: &str) {
        let _ = self.dev.request(
            "POST",
            &format!("/v1/jobs/{id}:cancel"),
            Some(token),
            None,
            None,
        );
    }

    fn set_policy(&self, token: &str, project: &str, body: &Value) -> (u16, Value) {
        self.dev.request(
            "PUT",
            &format!("/v1/projects/{project}/policy"),
            Some(token),
            None,
            Some(body),
        )
    }
}

/// The victim is still on its first attempt, running, never preempted.
fn assert_untouched(victim: &Value) {
    assert_eq!(victim["state"], "running", "{victim}");
    let attempts = victim["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{victim}");
    assert!(attempts[0]["outcome"].is_null(), "{victim}");
}

#[test]
fn cross_project_preemption_fails_and_the_victim_keeps_running() {
    let t = Tenants::start();
    t.project("victims");
    t.project("attackers");
    let victim_token = t.key("victims", "worker", "editor");
    // The attacker holds every right a project can grant, preemption included.
    let attacker_token = t.key("attackers", "boss", "project-admin");
    let victim = t.fill_node(&victim_token);

    let (status, body) = t.preempting(&attacker_token, 1000);
    assert_eq!(
        status, 201,
        "a project-admin may ask for preemption: {body}"
    );
    let urgent = body["id"].as_str().expect("job id").to_owned();
    // The scheduler considered it and found nothing it may evict.
    let reason = wait_for(
        "the scheduler to give up on preempting",
        Duration::from_secs(30),
        || {
            let job = t.job(&attacker_token, &urgent);
            let reason = job["pending_reason"].as_str()?.to_owned();
            reason.contains("preemption").then_some(reason)
        },
    );
    assert!(reason.contains("lower-priority preemptible"), "{reason}");
    // That reason was committed by the same pass that would have evicted the victim: it stays.
    assert_untouched(&t.job(&victim_token, &victim));
    assert_eq!(t.job(&attacker_token, &urgent)["state"], "pending");

    // Nor can the attacker lift its own ceiling: that is a platform-admin's.
    let (status, body) = t.set_policy(
        &attacker_token,
        "attackers",
        &json!({ "preemption_ceiling": 1000 }),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");
    let (_, project) = t.dev.request(
        "GET",
        "/v1/projects/attackers",
        Some(&attacker_token),
        None,
        None,
    );
    assert_eq!(project["policy"]["preemption_ceiling"], 0, "{project}");
    assert_untouched(&t.job(&victim_token, &victim));

    t.cancel(&attacker_token, &urgent);
    t.cancel(&victim_token, &victim);
}

#[test]
fn preemption_within_a_project_evicts_the_lower_priority_job() {
    let t = Tenants::start();
    t.project("team");
    let editor = t.key("team", "trainer", "editor");
    let lead = t.key("team", "lead", "project-admin");
    let low = t.fill_node(&editor);

    let (status, body) = t.preempting(&lead, 500);
    assert_eq!(status, 201, "{body}");
    let high = body["id"].as_str().expect("job id").to_owned();
    wait_for("the urgent job to land", Duration::from_secs(60), || {
        let state = t.job(&lead, &high)["state"].clone();
        (state == "scheduled" || state == "running").then_some(())
    });
    let evicted = t.job(&editor, &low);
    let first = &evicted["attempts"][0];
    assert_eq!(first["outcome"], "preempted", "{evicted}");
    // Within one project the record may say who took its place.
    assert_eq!(
        first["detail"],
        json!(format!("preempted by job {high}")),
        "{evicted}"
    );
    assert_eq!(evicted["state"], "pending", "{evicted}");

    t.cancel(&lead, &high);
    t.cancel(&editor, &low);
}

#[test]
fn an_editor_without_the_preempt_right_is_refused() {
    let t = Tenants::start();
    t.project("team");
    let editor = t.key("team", "trainer", "editor");
    let (status, body) = t.preempting(&editor, 1000);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("preempt-jobs"), "{message}");
    // Nothing was submitted.
    let (_, jobs) = t.dev.request("GET", "/v1/jobs", Some(&editor), None, None);
    assert_eq!(jobs["items"], json!([]), "{jobs}");
    // The same editor may still submit without preemption, at any priority.
    let (status, body) = t.submit(&editor, &json!({ "command": "true", "priority": 1000 }));
    assert_eq!(status, 201, "{body}");
}

#[test]
fn a_ceiling_set_by_a_platform_admin_allows_preemption_below_it_and_hides_the_preemptor() {
    let t = Tenants::start();
    t.project("victims");
    let attackers = t.project("attackers");
    let victim_token = t.key("victims", "worker", "editor");
    let attacker_token = t.key("attackers", "boss", "project-admin");
    let victim = t.fill_node(&victim_token);

    // The victim runs at priority 0; a ceiling of 10 lets the attackers' jobs evict it.
    let (status, body) = t.set_policy(
        t.admin_token(),
        &attackers,
        &json!({ "preemption_ceiling": 10 }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"]["preemption_ceiling"], 10, "{body}");
    let (status, body) = t.preempting(&attacker_token, 1000);
    assert_eq!(status, 201, "{body}");
    let urgent = body["id"].as_str().expect("job id").to_owned();
    let evicted = wait_for(
        "the victim to be preempted",
        Duration::from_secs(60),
        || {
            let job = t.job(&victim_token, &victim);
            (job["attempts"][0]["outcome"] == "preempted").then_some(job)
        },
    );
    // The victim's record does not name the other project's job.
    let detail = evicted["attempts"][0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(detail, "preempted by a higher-priority job", "{evicted}");
    assert!(!evicted.to_string().contains(&urgent), "{evicted}");

    t.cancel(&attacker_token, &urgent);
    t.cancel(&victim_token, &victim);
}
