//! How each admin API resource reads for people: its row in a list ([`Row`]) and its `key  value` lines
//! ([`Fields`]), written from the typed replies of `coordinator::api::dto`.
//!
//! Times read as an age (`AGE 3m`), relative (`in 89d`, `2h ago`) or RFC 3339 — never as Unix
//! milliseconds; nested objects read as text — never as JSON.

use coordinator::api::dto::{
    ApiKeyView, AttemptView, AuditRecord, ClusterPolicyView, DeniedIdentity, FleetSite, JobView,
    MemberStatus, NodeView, ProjectView, RewrapResult, RoleBindingView, SecretResource, WhoAmI,
};
use coordinator::state::ProjectPolicy;

use crate::output::{self, age, name_of, opt_num, opt_text, relative, text, Fields, Row};

impl Row for ProjectView {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "DESCRIPTION", "AGE"];
    fn row(&self, now: u64) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            text(&self.description),
            age(self.created_at, now),
        ]
    }
}

impl Fields for ProjectView {
    fn fields(&self, now: u64) -> Vec<(&'static str, String)> {
        let mut lines = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("description", text(&self.description)),
            ("created", output::time_and_age(self.created_at, now)),
        ];
        lines.extend(self.policy.fields(now));
        lines
    }
}

impl Fields for ProjectPolicy {
    fn fields(&self, _now: u64) -> Vec<(&'static str, String)> {
        vec![
            ("max pending jobs", self.max_pending_jobs.to_string()),
            ("max running cpu", cores(self.max_running_cpu_millis)),
            (
                "max running memory",
                coordinator::api::format_bytes(self.max_running_memory_bytes),
            ),
            ("max running gpus", self.max_running_gpus.to_string()),
            (
                "max spec bytes",
                coordinator::api::format_bytes(self.max_spec_bytes),
            ),
            ("network", self.network.as_str().to_owned()),
            ("preemption ceiling", self.preemption_ceiling.to_string()),
        ]
    }
}

/// Thousandths of a core as cores (`1.5`).
fn cores(millis: u64) -> String {
    format!("{}", millis as f64 / 1000.0)
}

impl Row for ApiKeyView {
    const HEADERS: &'static [&'static str] = &[
        "ID",
        "NAME",
        "PREFIX",
        "LAST4",
        "PRINCIPAL",
        "ROLES",
        "AGE",
        "EXPIRES",
        "REVOKED",
    ];
    fn row(&self, now: u64) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.prefix.clone(),
            self.last4.clone(),
            self.principal_id.clone(),
            key_roles(self),
            age(self.created_at, now),
            self.expires_at
                .map_or_else(|| "never".to_owned(), |at| relative(at, now)),
            self.revoked_at
                .map_or_else(|| "-".to_owned(), |at| relative(at, now)),
        ]
    }
}

/// The roles a key is narrowed to (`-`: all of its principal's), and `project-only` when scoped.
fn key_roles(key: &ApiKeyView) -> String {
    let mut parts: Vec<String> = key
        .roles
        .iter()
        .flatten()
        .map(|r| r.as_str().to_owned())
        .collect();
    if key.project_scoped {
        parts.push("project-only".to_owned());
    }
    output::joined(&parts)
}

impl Row for RoleBindingView {
    const HEADERS: &'static [&'static str] = &["ID", "PRINCIPAL", "ROLE", "SCOPE", "AGE"];
    fn row(&self, now: u64) -> Vec<String> {
        vec![
            self.id.clone(),
            self.principal_id.clone(),
            self.role.as_str().to_owned(),
            self.scope.clone(),
            age(self.created_at, now),
        ]
    }
}

impl Row for SecretResource {
    const HEADERS: &'static [&'static str] = &["NAME", "VERSION", "BINDINGS", "AGE", "UPDATED"];
    fn row(&self, now: u64) -> Vec<String> {
        let s = &self.secret;
        vec![
            s.name.clone(),
            s.latest_version.to_string(),
            output::joined(&s.bindings),
            age(s.created_at, now),
            relative(s.updated_at, now),
        ]
    }
}

impl Row for DeniedIdentity {
    const HEADERS: &'static [&'static str] = &["KIND", "VALUE", "REASON", "DENIED-BY", "AGE"];
    fn row(&self, now: u64) -> Vec<String> {
        vec![
            self.kind.as_str().to_owned(),
            self.value.clone(),
            text(&self.reason),
            text(&self.denied_by),
            age(self.denied_at, now),
        ]
    }
}

impl Row for AuditRecord {
    const HEADERS: &'static [&'static str] =
        &["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"];
    fn row(&self, _now: u64) -> Vec<String> {
        vec![
            self.seq.to_string(),
            output::time_ms(self.at_ms),
            text(&self.actor.name),
            self.action.clone(),
            text(&self.target),
            name_of(&self.outcome),
        ]
    }
}

impl Row for MemberStatus {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VOTER", "RAFT-ADDR", "ADMIN-ADDR"];
    fn row(&self, _now: u64) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.voter.to_string(),
            self.raft_addr.clone(),
            self.admin_addr.clone(),
        ]
    }
}

impl Row for FleetSite {
    const HEADERS: &'static [&'static str] = &[
        "REGION",
        "CLUSTER",
        "NODES",
        "READY",
        "UNREACHABLE",
        "LOST",
        "DRAINING",
        "GPUS",
        "IDLE-GPUS",
        "ACTIVE-JOBS",
    ];
    fn row(&self, _now: u64) -> Vec<String> {
        vec![
            self.region.clone(),
            self.cluster.clone(),
            self.nodes.to_string(),
            self.ready.to_string(),
            self.unreachable.to_string(),
            self.lost.to_string(),
            self.draining.to_string(),
            self.gpus.to_string(),
            self.idle_gpus.to_string(),
            self.active_jobs.to_string(),
        ]
    }
}

/// A node's row in `node list`: GPUs as count and models, idle allocated GPUs flagged by count, a drained
/// node's health as `ready,draining`, its admission (`denied` when its agent identity is), how long ago it
/// registered, and why it is pending or quarantined.
impl Row for NodeView {
    const HEADERS: &'static [&'static str] = &[
        "NODE",
        "HEALTH",
        "ADMISSION",
        "CPUS",
        "MEMORY",
        "GPUS",
        "IDLE-GPUS",
        "LABELS",
        "LIMITS",
        "EPOCH",
        "AGE",
        "REASON",
    ];
    fn row(&self, now: u64) -> Vec<String> {
        let mut models: Vec<&str> = Vec::new();
        for g in &self.gpus {
            if !models.contains(&g.model.as_str()) {
                models.push(&g.model);
            }
        }
        let gpus = match (self.gpu_count, models.is_empty()) {
            (0, _) => "-".to_owned(),
            (c, true) => c.to_string(),
            (c, false) => format!("{c} × {}", models.join("/")),
        };
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut health = self.health.as_str().to_owned();
        if self.draining {
            health.push_str(",draining");
        }
        let admission = if self.denied {
            "denied".to_owned()
        } else {
            self.admission.as_str().to_owned()
        };
        vec![
            self.key.clone(),
            health,
            admission,
            self.cpu_cores.to_string(),
            output::bytes(self.memory_bytes),
            gpus,
            match self.idle_gpus.len() {
                0 => "-".to_owned(),
                n => format!("{n} idle"),
            },
            output::joined(&labels),
            text(&self.limit_mode),
            self.lease_epoch.to_string(),
            age(self.registered_at, now),
            text(&self.admission_reason),
        ]
    }
}

impl Row for JobView {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "STATE", "NODE", "ATTEMPTS", "AGE"];
    fn row(&self, now: u64) -> Vec<String> {
        vec![
            self.id.clone(),
            text(&self.name),
            self.state.as_str().to_owned(),
            opt_text(self.node.as_deref()),
            self.attempt_count.to_string(),
            age(self.created_at, now),
        ]
    }
}

impl Fields for JobView {
    fn fields(&self, now: u64) -> Vec<(&'static str, String)> {
        let mut command = vec![self.command.clone()];
        command.extend(self.args.iter().cloned());
        let r = &self.resources;
        let cpu = match r.cpu_millis {
            0 => "-".to_owned(),
            m => cores(m),
        };
        let gpus = match (r.gpus, &r.gpu_model) {
            (0, _) => "-".to_owned(),
            (n, Some(model)) => format!("{n} × {model}"),
            (n, None) => n.to_string(),
        };
        vec![
            ("id", self.id.clone()),
            ("name", text(&self.name)),
            ("state", self.state.as_str().to_owned()),
            ("node", opt_text(self.node.as_deref())),
            ("region", opt_text(self.region.as_deref())),
            ("cluster", opt_text(self.cluster.as_deref())),
            ("attempts", self.attempt_count.to_string()),
            ("replicas", self.replicas.to_string()),
            ("pending reason", opt_text(self.pending_reason.as_deref())),
            ("exit code", opt_num(self.exit_code)),
            ("cancel requested", self.cancel_requested.to_string()),
            ("command", command.join(" ")),
            ("cpu", cpu),
            ("memory", output::bytes(r.memory_bytes)),
            ("gpus", gpus),
            ("created", output::time_and_age(self.created_at, now)),
            (
                "finished",
                self.finished_at
                    .map_or_else(|| "-".to_owned(), |at| output::time_and_age(at, now)),
            ),
        ]
    }
}

impl Row for AttemptView {
    const HEADERS: &'static [&'static str] = &[
        "ATTEMPT", "REPLICA", "NODE", "GPUS", "STARTED", "ENDED", "OUTCOME", "EXIT", "SIGNAL",
        "CPU", "PEAK-MEM", "DETAIL",
    ];
    fn row(&self, _now: u64) -> Vec<String> {
        vec![
            self.attempt.to_string(),
            self.replica.to_string(),
            text(&self.node),
            output::joined(&self.gpu_uuids),
            output::opt_time(self.started_at),
            output::opt_time(self.ended_at),
            self.outcome
                .map_or_else(|| "-".to_owned(), |o| o.as_str().to_owned()),
            opt_num(self.exit_code),
            opt_num(self.signal),
            // As the agent measured them: CPU time of the job's processes, the largest resident set.
            self.cpu_time_ms.map_or_else(
                || "-".to_owned(),
                |ms| format!("{:.2}s", ms as f64 / 1000.0),
            ),
            self.max_rss_bytes
                .map_or_else(|| "-".to_owned(), output::bytes),
            text(&self.detail),
        ]
    }
}

/// The caller: principal, key, project and each role binding on a line of its own.
impl Fields for WhoAmI {
    fn fields(&self, now: u64) -> Vec<(&'static str, String)> {
        let p = &self.principal;
        let k = &self.key;
        let expiry = k.expires_at.map_or_else(
            || "never expires".to_owned(),
            |at| {
                if at > now {
                    format!("expires {}", relative(at, now))
                } else {
                    format!("expired {}", relative(at, now))
                }
            },
        );
        let mut lines = vec![
            (
                "principal",
                format!("{} ({}, {})", p.name, name_of(&p.kind), p.id),
            ),
            (
                "key",
                format!("{} ({}, {}…{}), {expiry}", k.name, k.id, k.prefix, k.last4),
            ),
        ];
        // A key narrowed to some roles, or to its project, says so.
        if k.roles.is_some() || k.project_scoped {
            lines.push(("key limits", key_roles(k)));
        }
        lines.push((
            "project",
            format!("{} ({})", self.project.name, self.project.id),
        ));
        if self.bindings.is_empty() {
            lines.push(("bindings", "-".to_owned()));
        }
        for (i, b) in self.bindings.iter().enumerate() {
            let label = if i == 0 { "bindings" } else { "" };
            lines.push((
                label,
                format!("{} in {} ({})", b.role.as_str(), b.scope, b.id),
            ));
        }
        lines
    }
}

impl Fields for RewrapResult {
    fn fields(&self, _now: u64) -> Vec<(&'static str, String)> {
        vec![
            ("projects", self.projects.to_string()),
            ("master key", self.master_key_id.clone()),
            ("new data keys", self.new_data_keys.to_string()),
            ("secret versions", self.secret_versions.to_string()),
        ]
    }
}

impl Fields for ClusterPolicyView {
    fn fields(&self, _now: u64) -> Vec<(&'static str, String)> {
        vec![
            ("cluster", format!("{}/{}", self.region, self.cluster)),
            ("auto approve", self.auto_approve.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn read<T: DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("a reply sample")
    }

    /// No cell holds Unix milliseconds (13 digits) or JSON.
    fn readable(cells: &[String]) {
        for c in cells {
            let digits = c.chars().filter(char::is_ascii_digit).count();
            assert!(
                !(digits >= 13 && c.chars().all(|ch| ch.is_ascii_digit())),
                "epoch ms in {cells:?}"
            );
            assert!(!c.contains('{') && !c.contains('"'), "JSON in {cells:?}");
        }
    }

    fn node(extra: serde_json::Value) -> NodeView {
        let mut v = json!({
            "key": "eu/c1/n1", "region": "eu", "cluster": "c1", "node": "n1", "cpu_cores": 8,
            "memory_bytes": 1u64 << 34, "gpu_count": 0, "gpus": [], "labels": {}, "idle_gpus": [],
            "os": "linux", "limit_mode": "cgroup_v2", "rpc_addr": "", "agent_version": "0.1.0",
            "lease_epoch": 3, "health": "ready", "draining": false, "registered_at": NOW - 120_000,
            "health_changed_at": NOW - 60_000, "admission": "approved", "admission_reason": "",
            "approved": null, "denied": false,
        });
        if let (Some(base), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in more {
                base.insert(k.clone(), x.clone());
            }
        }
        read(v)
    }

    #[test]
    fn a_quarantined_or_denied_node_shows_why() {
        let row = node(json!({ "admission": "quarantined",
                               "admission_reason": "64 CPU cores reported, 8 approved" }))
        .row(NOW);
        assert_eq!(row[2], "quarantined");
        assert_eq!(
            row.last().map(String::as_str),
            Some("64 CPU cores reported, 8 approved")
        );
        let denied = node(json!({ "denied": true })).row(NOW);
        assert_eq!(denied[2], "denied");
        assert_eq!(denied.last().map(String::as_str), Some("-"));
    }

    #[test]
    fn a_node_row_reads_draining_gpus_labels_and_age() {
        let n = node(json!({
            "draining": true, "gpu_count": 2, "labels": {"zone": "a"}, "idle_gpus": ["GPU-1"],
            "gpus": [
                {"uuid": "GPU-1", "index": 0, "model": "NVIDIA H200", "memory_mib": 1, "healthy": true},
                {"uuid": "GPU-2", "index": 1, "model": "NVIDIA H200", "memory_mib": 1, "healthy": true}],
        }));
        let row = n.row(NOW);
        assert_eq!(row.len(), NodeView::HEADERS.len());
        assert_eq!(row[0], "eu/c1/n1");
        assert_eq!(row[1], "ready,draining");
        assert_eq!(row[4], "16 GiB");
        assert_eq!(row[5], "2 × NVIDIA H200");
        assert_eq!(row[6], "1 idle");
        assert_eq!(row[7], "zone=a");
        assert_eq!(row[10], "2m");
        readable(&row);
    }

    #[test]
    fn keys_read_their_age_expiry_and_revocation() {
        let key: ApiKeyView = read(json!({
            "id": "key_1", "prefix": "mrd_key_1_", "principal_id": "sa_1", "project_id": "prj_1",
            "name": "ci", "last4": "abcd", "created_at": NOW - 3 * 86_400_000,
            "expires_at": NOW + 87 * 86_400_000, "revoked_at": NOW - 3_600_000,
            "roles": ["viewer"], "project_scoped": true,
        }));
        let row = key.row(NOW);
        assert_eq!(row.len(), ApiKeyView::HEADERS.len());
        assert_eq!(row[5], "viewer,project-only");
        assert_eq!(row[6], "3d");
        assert_eq!(row[7], "in 87d");
        assert_eq!(row[8], "1h ago");
        readable(&row);
    }

    #[test]
    fn whoami_reads_as_lines_with_one_binding_each() {
        let me: WhoAmI = read(json!({
            "principal": {"id": "usr_1", "kind": "user", "name": "admin", "project_id": null,
                          "created_at": NOW, "disabled": false},
            "key": {"id": "key_1", "prefix": "mrd_key_1_", "principal_id": "usr_1", "project_id": "prj_1",
                    "name": "bootstrap", "last4": "abcd", "created_at": NOW, "expires_at": null,
                    "revoked_at": null, "roles": null, "project_scoped": false},
            "project": {"id": "prj_1", "name": "default", "description": "", "created_at": NOW,
                        "policy": {"max_pending_jobs": 1, "max_running_cpu_millis": 1,
                                   "max_running_memory_bytes": 1, "max_running_gpus": 1,
                                   "max_spec_bytes": 1, "network": "egress", "preemption_ceiling": 0}},
            "bindings": [
                {"id": "rb_1", "principal_id": "usr_1", "role": "platform-admin", "scope": "platform",
                 "project_id": null, "created_at": NOW},
                {"id": "rb_2", "principal_id": "usr_1", "role": "editor", "scope": "project:prj_1",
                 "project_id": "prj_1", "created_at": NOW}],
        }));
        let lines = me.fields(NOW);
        assert!(
            lines.contains(&("principal", "admin (user, usr_1)".to_owned())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&("project", "default (prj_1)".to_owned())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&("bindings", "platform-admin in platform (rb_1)".to_owned())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&("", "editor in project:prj_1 (rb_2)".to_owned())),
            "{lines:?}"
        );
        assert!(lines[1].1.ends_with("never expires"), "{lines:?}");
        assert!(
            !lines.iter().any(|(k, _)| *k == "key limits"),
            "a key narrowed to nothing: {lines:?}"
        );
        let mut narrowed = me.clone();
        narrowed.key.roles = Some(vec![coordinator::authz::Role::Viewer]);
        narrowed.key.expires_at = Some(NOW + 2 * 3_600_000);
        let lines = narrowed.fields(NOW);
        assert_eq!(lines[2], ("key limits", "viewer".to_owned()), "{lines:?}");
        assert!(lines[1].1.ends_with("expires in 2h"), "{lines:?}");
        let cells: Vec<String> = lines.into_iter().map(|(_, v)| v).collect();
        readable(&cells);
    }

    #[test]
    fn audit_rows_read_a_time_not_milliseconds() {
        let record: AuditRecord = read(json!({
            "seq": 7, "at_ms": 1_700_000_000_000u64,
            "actor": {"principal_id": "usr_1", "name": "admin"},
            "action": "project.create", "project": null, "target": "vision", "outcome": "success",
            "detail": "", "prev_hash": "00", "hash": "11",
        }));
        let row = record.row(NOW);
        assert_eq!(
            row,
            [
                "7",
                "2023-11-14T22:13:20.000Z",
                "admin",
                "project.create",
                "vision",
                "success"
            ]
        );
    }
}
