//! Attack tests: escalation (see main.rs). A project-admin of `default` tries every path to platform-admin
//! that keys and role bindings offered: minting a key for the bootstrap principal, binding platform-admin,
//! minting a key for a principal that is also bound in another project, taking the platform-admin's key
//! away, and keys that never expire or reach beyond their project.

use serde_json::{json, Value};

use crate::common::cli;
use crate::common::dev::DevProcess;

/// A fresh `meridian dev` and a project-admin key of `default` made by the bootstrap admin.
struct World {
    dev: DevProcess,
    _dir: tempfile::TempDir,
    /// The attacker: project-admin of `default`.
    attacker: String,
    attacker_principal: String,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        // Refusals reach the audit log coalesced, every 200 ms here.
        let dev = DevProcess::start(dir.path(), &["--admin-refused-audit-window-ms", "200"]);
        let (status, body) = dev.request(
            "POST",
            "/v1/keys",
            Some(&dev.token),
            None,
            Some(&json!({ "name": "lead", "role": "project-admin" })),
        );
        assert_eq!(status, 201, "{body}");
        World {
            attacker: text(&body, "/token"),
            attacker_principal: text(&body, "/principal/id"),
            dev,
            _dir: dir,
        }
    }

    fn root(
        &self,
        method: &str,
        path: &str,
        project: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.dev
            .request(method, path, Some(&self.dev.token), project, body)
    }

    fn attack(
        &self,
        method: &str,
        path: &str,
        project: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.dev
            .request(method, path, Some(&self.attacker), project, body)
    }

    /// The bootstrap principal's id, as the platform-admin sees it.
    fn root_principal(&self) -> String {
        let (status, me) = self.root("GET", "/v1/whoami", None, None);
        assert_eq!(status, 200, "{me}");
        text(&me, "/principal/id")
    }

    /// Every key id of `default`, as the platform-admin sees them.
    fn keys(&self) -> Vec<String> {
        let (status, page) = self.root("GET", "/v1/keys", None, None);
        assert_eq!(status, 200, "{page}");
        page["items"]
            .as_array()
            .map(|a| a.iter().map(|k| text(k, "/id")).collect())
            .unwrap_or_default()
    }

    /// Audit records with outcome `denied` for `action`.
    /// How many refusals of `action` the audit log counts (records are coalesced: each carries
    /// `count=N`).
    fn denied(&self, action: &str) -> u64 {
        let (status, page) = self.root("GET", "/v1/audit?page_size=1000", None, None);
        assert_eq!(status, 200, "{page}");
        page["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["action"] == json!(action) && r["outcome"] == json!("denied"))
                    .map(|r| {
                        r["detail"]
                            .as_str()
                            .and_then(|d| d.strip_prefix("count="))
                            .and_then(|d| d.split(' ').next())
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(1)
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Waits until the audit log counts at least `n` refusals of the `actions` together.
    fn wait_denied(&self, actions: &[&str], n: u64) {
        crate::common::wait_for(
            &format!("{n} refusals of {actions:?} in the audit log"),
            std::time::Duration::from_secs(30),
            || (actions.iter().map(|a| self.denied(a)).sum::<u64>() >= n).then_some(()),
        );
    }
}

fn text(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} missing in {v}"))
        .to_owned()
}

#[test]
fn a_project_admin_of_default_cannot_mint_a_key_for_the_bootstrap_principal() {
    let w = World::new();
    let root = w.root_principal();
    // The bootstrap principal is no longer one of default's principals.
    let (status, listed) = w.attack("GET", "/v1/principals", None, None);
    assert_eq!(status, 200, "{listed}");
    assert!(
        !listed.to_string().contains(&root),
        "default lists the bootstrap principal: {listed}"
    );
    let before = w.keys();
    for body in [
        json!({ "name": "mine", "principal_id": root }),
        json!({ "name": "mine2", "principal_id": root, "role": "project-admin" }),
    ] {
        let (status, answer) = w.attack("POST", "/v1/keys", None, Some(&body));
        assert_eq!(status, 404, "minting for the bootstrap principal: {answer}");
        assert_eq!(answer["error"]["code"], json!("not_found"), "{answer}");
        assert!(answer.get("token").is_none(), "{answer}");
    }
    assert_eq!(w.keys(), before, "no key was created");
    // Both attempts are audited.
    w.wait_denied(&["key.create"], 2);
}

#[test]
fn a_project_admin_cannot_bind_platform_admin() {
    let w = World::new();
    let me = w.attacker_principal.clone();
    let (status, answer) = w.attack(
        "POST",
        "/v1/role-bindings",
        None,
        Some(&json!({ "principal_id": me, "role": "platform-admin", "platform": true })),
    );
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = w.attack(
        "POST",
        "/v1/role-bindings",
        None,
        Some(&json!({ "principal_id": me, "role": "viewer", "platform": true })),
    );
    assert_eq!(status, 403, "even a platform viewer: {answer}");
    let (status, answer) = w.attack(
        "POST",
        "/v1/role-bindings",
        None,
        Some(&json!({ "principal_id": me, "role": "platform-admin" })),
    );
    assert_eq!(status, 400, "{answer}");
    // Still no platform right: creating a project is refused.
    let (status, answer) = w.attack(
        "POST",
        "/v1/projects",
        None,
        Some(&json!({ "name": "mine" })),
    );
    assert_eq!(status, 403, "{answer}");
    let (_, me) = w.attack("GET", "/v1/whoami", None, None);
    assert!(
        !me["bindings"].to_string().contains("platform"),
        "the attacker gained a platform binding: {me}"
    );
}

#[test]
fn a_project_admin_cannot_mint_a_key_for_a_principal_bound_in_another_project() {
    let w = World::new();
    let (status, b) = w.root(
        "POST",
        "/v1/projects",
        None,
        Some(&json!({ "name": "payments" })),
    );
    assert_eq!(status, 201, "{b}");
    // A worker of default that the platform-admin also made project-admin of payments.
    let (status, worker) = w.root(
        "POST",
        "/v1/keys",
        None,
        Some(&json!({ "name": "worker", "role": "editor" })),
    );
    assert_eq!(status, 201, "{worker}");
    let worker_principal = text(&worker, "/principal/id");
    let worker_key = text(&worker, "/key/id");
    let (status, bound) = w.root(
        "POST",
        "/v1/role-bindings",
        Some("payments"),
        Some(&json!({ "principal_id": worker_principal, "role": "project-admin" })),
    );
    assert_eq!(status, 201, "{bound}");

    // The attacker administers default, which owns the worker, but not payments.
    let before = w.keys();
    let (status, answer) = w.attack(
        "POST",
        "/v1/keys",
        None,
        Some(&json!({ "name": "into-payments", "principal_id": worker_principal })),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer.get("token").is_none(), "{answer}");
    assert_eq!(w.keys(), before, "no key was created");
    // Nor more roles for it, nor its key taken away.
    let (status, answer) = w.attack(
        "POST",
        "/v1/role-bindings",
        None,
        Some(&json!({ "principal_id": worker_principal, "role": "deployer" })),
    );
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = w.attack("POST", &format!("/v1/keys/{worker_key}:revoke"), None, None);
    assert_eq!(status, 403, "{answer}");
    // The attacker's own key cannot be pointed at payments either.
    let (status, answer) = w.attack("GET", "/v1/jobs", Some("payments"), None);
    assert_eq!(status, 404, "{answer}");
    w.wait_denied(&["key.create"], 1);
}

#[test]
fn a_project_admin_cannot_revoke_the_bootstrap_key() {
    let w = World::new();
    let (_, me) = w.root("GET", "/v1/whoami", None, None);
    let root_key = text(&me, "/key/id");
    let (status, answer) = w.attack("POST", &format!("/v1/keys/{root_key}:revoke"), None, None);
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = w.attack("DELETE", &format!("/v1/keys/{root_key}"), None, None);
    assert_eq!(status, 403, "{answer}");
    let (status, _) = w.root("GET", "/v1/whoami", None, None);
    assert_eq!(status, 200, "the bootstrap key still works");
    w.wait_denied(&["key.revoke", "key.delete"], 2);
}

#[test]
fn a_key_that_never_expires_is_refused_for_a_non_platform_admin() {
    let w = World::new();
    let (status, answer) = w.attack(
        "POST",
        "/v1/keys",
        None,
        Some(&json!({ "name": "forever", "role": "viewer", "no_expiry": true })),
    );
    assert_eq!(status, 403, "{answer}");
    // Through the CLI as well.
    let addr = w.dev.addr();
    let out = cli(
        &["key", "create", "forever-cli", "--no-expiry"],
        &w.dev.env_for(&addr, &w.attacker),
    );
    assert!(
        !out.status.success(),
        "the CLI made a key that never expires"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("never expires"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without asking, a key expires after the default lifetime (90 days).
    let (status, made) = w.attack(
        "POST",
        "/v1/keys",
        None,
        Some(&json!({ "name": "normal", "role": "viewer" })),
    );
    assert_eq!(status, 201, "{made}");
    let created = made["key"]["created_at"].as_u64().expect("created_at");
    let expires = made["key"]["expires_at"]
        .as_u64()
        .expect("keys expire by default");
    assert_eq!(expires - created, 90 * 86_400 * 1000);
    // The platform-admin may still make one.
    let (status, made) = w.root(
        "POST",
        "/v1/keys",
        None,
        Some(&json!({ "name": "break-glass-2", "role": "viewer", "no_expiry": true })),
    );
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["key"]["expires_at"], Value::Null);
}

#[test]
fn a_scoped_key_cannot_act_outside_its_project_or_roles() {
    let w = World::new();
    let (status, _) = w.root(
        "POST",
        "/v1/projects",
        None,
        Some(&json!({ "name": "vision" })),
    );
    assert_eq!(status, 201);
    let root = w.root_principal();
    // The platform-admin's own principal, on a key that only acts in `vision`.
    let (status, made) = w.root(
        "POST",
        "/v1/keys",
        Some("vision"),
        Some(&json!({ "name": "vision-only", "principal_id": root, "project_scoped": true })),
    );
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["key"]["project_scoped"], json!(true));
    let scoped = text(&made, "/token");
    let call = |method: &str, path: &str, project: Option<&str>, body: Option<&Value>| {
        w.dev.request(method, path, Some(&scoped), project, body)
    };
    let (status, jobs) = call("GET", "/v1/jobs", None, None);
    assert_eq!(status, 200, "its own project: {jobs}");
    let (status, answer) = call("GET", "/v1/jobs", Some("default"), None);
    assert_eq!(status, 404, "another project looks missing: {answer}");
    let (status, answer) = call(
        "POST",
        "/v1/projects",
        None,
        Some(&json!({ "name": "escape" })),
    );
    assert_eq!(status, 403, "no platform action: {answer}");
    let (status, answer) = call("GET", "/v1/audit?page_size=1000", None, None);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["items"]
            .as_array()
            .is_some_and(|a| a.iter().all(|r| r["project"] != json!(null))),
        "a project-scoped key reads its project's audit records only"
    );
    let (status, listed) = call("GET", "/v1/projects", None, None);
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["vision"]);

    // An editor's key narrowed to viewer reads but cannot run anything, through the CLI too.
    let addr = w.dev.addr();
    let made = crate::common::cli_json(
        &[
            "key",
            "create",
            "ro",
            "--role",
            "editor",
            "--roles",
            "viewer",
            "--project-only",
            "--project",
            "vision",
            "-o",
            "json",
        ],
        &w.dev.env_for(&addr, &w.dev.token),
    );
    assert_eq!(made["key"]["roles"], json!(["viewer"]), "{made}");
    let ro = text(&made, "/token");
    let (status, _) = w.dev.request("GET", "/v1/jobs", Some(&ro), None, None);
    assert_eq!(status, 200);
    let (status, answer) = w.dev.request(
        "POST",
        "/v1/jobs",
        Some(&ro),
        None,
        Some(&json!({ "command": "true" })),
    );
    assert_eq!(status, 403, "{answer}");
    // Nor can it use the editor binding to mint a wider key for itself.
    let (status, answer) = w.dev.request(
        "POST",
        "/v1/keys",
        Some(&ro),
        None,
        Some(&json!({ "name": "wider", "role": "viewer" })),
    );
    assert_eq!(status, 403, "{answer}");
}
