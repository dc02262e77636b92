//! The fleet registry: one record per node an agent registered, with its resources, lease epoch and health.
//!
//! Owns `RegisterNode` (create or refresh a node, bump its lease epoch, mark it Ready), `SetNodeHealth`
//! (a health change fenced by the lease epoch, so a decision made about an older registration never
//! overrides a newer one) and `SetNodeDraining` (an operator's drain flag: no new work lands on the node,
//! what runs there keeps running; it survives re-registration); what either health op means for the node's
//! jobs is decided in `jobs.rs`. Liveness itself (heartbeats) is soft state kept by the leader outside the
//! replicated state; this module must never read a clock: every time arrives inside the command.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::jobs::HeldAttempt;
use super::tenancy::validate_id;
use super::{Applied, DomainError, Outcome, Page, PageRequest, RegistryState};
use crate::scheduler::GpuDevice;

/// A node's health as the leader's monitor last decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealthState {
    /// Registered and heard from recently.
    Ready,
    /// Not heard from for the heartbeat TTL.
    Unreachable,
    /// Unreachable for long enough that its work should be considered gone.
    Lost,
}

impl NodeHealthState {
    /// Lowercase name, as the API and CLI show it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeHealthState::Ready => "ready",
            NodeHealthState::Unreachable => "unreachable",
            NodeHealthState::Lost => "lost",
        }
    }
}

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `region/cluster/node`.
    pub key: String,
    pub region: String,
    pub cluster: String,
    pub node: String,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpu_count: u32,
    pub agent_version: String,
    /// Incremented by every registration; fences health changes and heartbeats.
    pub lease_epoch: u64,
    pub health: NodeHealthState,
    /// Unix milliseconds of the first registration.
    pub registered_at: u64,
    /// Unix milliseconds of the last health change (a registration counts).
    pub health_changed_at: u64,
    /// The node's GPUs as its agent last registered them.
    #[serde(default)]
    pub gpus: Vec<GpuDevice>,
    /// Operator labels from the agent's configuration.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the agent's own RPC server listens.
    #[serde(default)]
    pub rpc_addr: String,
    #[serde(default)]
    pub os: String,
    /// How the agent limits resources (cgroup v2, cgroup v1, rlimits).
    #[serde(default)]
    pub limit_mode: String,
    /// UUIDs of allocated GPUs that have been idle for a while, sorted.
    #[serde(default)]
    pub idle_gpus: Vec<String>,
    /// Incremented whenever the set of attempts assigned to the node, or one of their cancel flags,
    /// changes; agents long-poll on it.
    #[serde(default)]
    pub assign_version: u64,
    /// Set by an operator: the scheduler places no new work here; jobs already on the node keep running.
    /// Kept across re-registrations (operator intent outlives agent restarts).
    #[serde(default)]
    pub draining: bool,
}

/// The registry key of a node.
pub fn node_key(region: &str, cluster: &str, node: &str) -> String {
    format!("{region}/{cluster}/{node}")
}

/// What a registration names (borrowed from the command).
pub(crate) struct NodeSpec<'a> {
    pub(crate) region: &'a str,
    pub(crate) cluster: &'a str,
    pub(crate) node: &'a str,
    pub(crate) cpu_cores: u32,
    pub(crate) memory_bytes: u64,
    pub(crate) gpu_count: u32,
    pub(crate) agent_version: &'a str,
    pub(crate) gpus: &'a [GpuDevice],
    pub(crate) labels: &'a BTreeMap<String, String>,
    pub(crate) rpc_addr: &'a str,
    pub(crate) held: &'a [HeldAttempt],
    pub(crate) os: &'a str,
    pub(crate) limit_mode: &'a str,
}

const MAX_AGENT_VERSION: usize = 64;
/// Longest OS description, limit mode or RPC address, in bytes.
const MAX_NODE_TEXT: usize = 256;
/// Most GPUs and labels a node may declare.
const MAX_NODE_ITEMS: usize = 256;

impl RegistryState {
    pub(crate) fn register_node(
        &mut self,
        at: u64,
        spec: NodeSpec<'_>,
    ) -> Result<Applied, DomainError> {
        validate_id("region", spec.region)?;
        validate_id("cluster", spec.cluster)?;
        validate_id("node", spec.node)?;
        if spec.agent_version.len() > MAX_AGENT_VERSION {
            return Err(DomainError::invalid(
                "agent_version",
                format!("at most {MAX_AGENT_VERSION} bytes"),
            ));
        }
        for (field, value) in [
            ("os", spec.os),
            ("limit_mode", spec.limit_mode),
            ("rpc_addr", spec.rpc_addr),
        ] {
            if value.len() > MAX_NODE_TEXT {
                return Err(DomainError::invalid(
                    field,
                    format!("at most {MAX_NODE_TEXT} bytes"),
                ));
            }
        }
        if spec.gpus.len() > MAX_NODE_ITEMS {
            return Err(DomainError::invalid(
                "gpus",
                format!("at most {MAX_NODE_ITEMS}"),
            ));
        }
        if spec
            .gpus
            .iter()
            .any(|g| g.uuid.is_empty() || g.uuid.len() > MAX_NODE_TEXT)
        {
            return Err(DomainError::invalid(
                "gpus",
                format!("every GPU needs a UUID of 1-{MAX_NODE_TEXT} bytes"),
            ));
        }
        if spec.labels.len() > MAX_NODE_ITEMS
            || spec
                .labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > MAX_NODE_TEXT || v.len() > MAX_NODE_TEXT)
        {
            return Err(DomainError::invalid(
                "labels",
                format!("at most {MAX_NODE_ITEMS}, each key 1-{MAX_NODE_TEXT} bytes and value at most {MAX_NODE_TEXT}"),
            ));
        }
        let key = node_key(spec.region, spec.cluster, spec.node);
        let (epoch, registered_at, assign_version, draining) = match self.nodes.get(&key) {
            Some(old) => (
                old.lease_epoch.saturating_add(1),
                old.registered_at,
                old.assign_version.saturating_add(1),
                old.draining,
            ),
            None => (1, at, 1, false),
        };
        let record = NodeRecord {
            key: key.clone(),
            region: spec.region.to_owned(),
            cluster: spec.cluster.to_owned(),
            node: spec.node.to_owned(),
            cpu_cores: spec.cpu_cores,
            memory_bytes: spec.memory_bytes,
            gpu_count: spec.gpu_count,
            agent_version: spec.agent_version.to_owned(),
            lease_epoch: epoch,
            health: NodeHealthState::Ready,
            registered_at,
            health_changed_at: at,
            gpus: spec.gpus.to_vec(),
            labels: spec.labels.clone(),
            rpc_addr: spec.rpc_addr.to_owned(),
            os: spec.os.to_owned(),
            limit_mode: spec.limit_mode.to_owned(),
            idle_gpus: Vec::new(),
            assign_version,
            draining,
        };
        self.nodes.insert(key.clone(), record);
        let lost = self.readopt_node_jobs(at, &key, epoch, spec.held);
        // Invariant: the record was inserted just above.
        let record = self
            .nodes
            .get(&key)
            .cloned()
            .expect("registered node is present");
        let detail = if lost == 0 {
            format!("lease epoch {epoch}")
        } else {
            format!("lease epoch {epoch}, {lost} jobs lost")
        };
        Ok(Applied::new(Outcome::Node { node: record }, detail))
    }

    pub(crate) fn set_node_health(
        &mut self,
        at: u64,
        key: &str,
        health: NodeHealthState,
        lease_epoch: u64,
    ) -> Result<Applied, DomainError> {
        let record = self
            .nodes
            .get_mut(key)
            .ok_or_else(|| DomainError::not_found("node", key))?;
        if record.lease_epoch != lease_epoch {
            return Err(DomainError::FailedPrecondition(format!(
                "node {key} is at lease epoch {}, not {lease_epoch}",
                record.lease_epoch
            )));
        }
        let mut detail = format!("{} -> {}", record.health.as_str(), health.as_str());
        if record.health != health {
            record.health = health;
            record.health_changed_at = at;
        }
        if health == NodeHealthState::Lost {
            let lost = self.lose_node_jobs(at, key);
            if lost > 0 {
                detail.push_str(&format!(", {lost} jobs lost"));
            }
        }
        let node = self.nodes.get(key).cloned();
        // Invariant: the node was found above and nothing removes nodes.
        let node = node.expect("node is present");
        Ok(Applied::new(Outcome::Node { node }, detail))
    }

    /// `SetNodeDraining`: sets or clears a node's drain flag. Nothing else changes: its jobs keep running
    /// and its health is still the monitor's to decide. A repeat that changes nothing is still Ok.
    pub(crate) fn set_node_draining(
        &mut self,
        key: &str,
        draining: bool,
    ) -> Result<Applied, DomainError> {
        let record = self
            .nodes
            .get_mut(key)
            .ok_or_else(|| DomainError::not_found("node", key))?;
        record.draining = draining;
        let node = record.clone();
        Ok(Applied::new(
            Outcome::Node { node },
            format!("draining={draining}"),
        ))
    }

    /// One node by key.
    pub fn node(&self, key: &str) -> Option<&NodeRecord> {
        self.nodes.get(key)
    }

    /// Every registered node, in key order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// A page of nodes in key order.
    pub fn node_page(&self, req: &PageRequest) -> Page<NodeRecord> {
        Page::from_sorted(self.nodes.iter().map(|(k, n)| (k, n.clone())), req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Actor, AuditOutcome, Command, Op};

    fn register(node: &str) -> Op {
        Op::RegisterNode {
            region: "eu".into(),
            cluster: "eu1".into(),
            node: node.into(),
            cpu_cores: 8,
            memory_bytes: 1 << 30,
            gpu_count: 2,
            agent_version: "1.0".into(),
            gpus: Vec::new(),
            labels: BTreeMap::new(),
            rpc_addr: String::new(),
            held: Vec::new(),
            os: String::new(),
            limit_mode: String::new(),
        }
    }

    fn apply(state: &mut RegistryState, at: u64, op: Op) -> crate::state::CommandOutcome {
        let index = state.applied_index + 1;
        state.apply(index, &Command::new(at, Actor::system(), op))
    }

    fn health(key: &str, health: NodeHealthState, lease_epoch: u64) -> Op {
        Op::SetNodeHealth {
            key: key.into(),
            health,
            lease_epoch,
        }
    }

    #[test]
    fn registration_bumps_the_epoch_and_marks_ready() {
        let mut s = RegistryState::default();
        apply(&mut s, 10, register("a1")).expect("first registration");
        let key = node_key("eu", "eu1", "a1");
        assert_eq!(s.node(&key).map(|n| n.lease_epoch), Some(1));
        apply(&mut s, 20, health(&key, NodeHealthState::Unreachable, 1)).expect("current epoch");
        assert_eq!(
            s.node(&key).map(|n| n.health),
            Some(NodeHealthState::Unreachable)
        );
        let again = apply(&mut s, 30, register("a1")).expect("re-registration");
        let Outcome::Node { node } = again else {
            panic!("unexpected outcome {again:?}")
        };
        assert_eq!(node.lease_epoch, 2);
        assert_eq!(node.health, NodeHealthState::Ready);
        assert_eq!(node.registered_at, 10);
        assert_eq!(node.health_changed_at, 30);
    }

    #[test]
    fn stale_epoch_health_change_is_refused() {
        let mut s = RegistryState::default();
        apply(&mut s, 10, register("a1")).expect("registration");
        apply(&mut s, 11, register("a1")).expect("re-registration");
        let key = node_key("eu", "eu1", "a1");
        let stale = apply(&mut s, 20, health(&key, NodeHealthState::Lost, 1));
        assert!(matches!(stale, Err(DomainError::FailedPrecondition(_))));
        assert_eq!(s.node(&key).map(|n| n.health), Some(NodeHealthState::Ready));
        let last = s.audit_records().last().expect("refusal is audited");
        assert_eq!(last.outcome, AuditOutcome::Refused);
        assert_eq!(last.project, None);
        let unknown = apply(&mut s, 21, health("eu/eu1/zz", NodeHealthState::Lost, 1));
        assert!(matches!(unknown, Err(DomainError::NotFound { .. })));
    }

    fn drain(key: &str, draining: bool) -> Op {
        Op::SetNodeDraining {
            key: key.into(),
            draining,
        }
    }

    #[test]
    fn draining_is_set_cleared_audited_and_survives_registration() {
        let mut s = RegistryState::default();
        apply(&mut s, 10, register("a1")).expect("registration");
        let key = node_key("eu", "eu1", "a1");
        let out = apply(&mut s, 20, drain(&key, true)).expect("drain");
        let Outcome::Node { node } = out else {
            panic!("unexpected outcome {out:?}")
        };
        assert!(node.draining);
        assert_eq!(node.health, NodeHealthState::Ready);
        assert_eq!(node.lease_epoch, 1);
        let last = s.audit_records().last().expect("audited");
        assert_eq!(last.action, "node.drain");
        assert_eq!(last.target, key);
        assert_eq!(last.detail, "draining=true");
        assert_eq!(last.outcome, AuditOutcome::Success);

        // A repeat changes nothing and is still Ok.
        apply(&mut s, 21, drain(&key, true)).expect("repeat");
        assert_eq!(s.node(&key).map(|n| n.draining), Some(true));

        // The agent restarts: the operator's intent stays.
        apply(&mut s, 30, register("a1")).expect("re-registration");
        let node = s.node(&key).expect("node");
        assert_eq!(node.lease_epoch, 2);
        assert!(node.draining, "draining survives re-registration");

        // Health changes leave it alone too.
        apply(&mut s, 40, health(&key, NodeHealthState::Unreachable, 2)).expect("health");
        assert_eq!(s.node(&key).map(|n| n.draining), Some(true));

        apply(&mut s, 50, drain(&key, false)).expect("undrain");
        assert_eq!(s.node(&key).map(|n| n.draining), Some(false));
        let last = s.audit_records().last().expect("audited");
        assert_eq!(last.action, "node.undrain");
        assert_eq!(last.detail, "draining=false");
    }

    #[test]
    fn draining_an_unknown_node_is_not_found_and_audited() {
        let mut s = RegistryState::default();
        let out = apply(&mut s, 10, drain("eu/eu1/zz", true));
        assert!(matches!(out, Err(DomainError::NotFound { .. })), "{out:?}");
        let last = s.audit_records().last().expect("refusal is audited");
        assert_eq!(last.outcome, AuditOutcome::Refused);
        assert_eq!(last.target, "eu/eu1/zz");
    }

    #[test]
    fn a_record_without_the_flag_reads_as_not_draining() {
        let mut s = RegistryState::default();
        apply(&mut s, 10, register("a1")).expect("registration");
        let key = node_key("eu", "eu1", "a1");
        let mut json = serde_json::to_value(s.node(&key).expect("node")).expect("serializes");
        json.as_object_mut().expect("an object").remove("draining");
        let record: NodeRecord = serde_json::from_value(json).expect("older record reads");
        assert!(!record.draining);
    }

    #[test]
    fn malformed_names_are_refused() {
        let mut s = RegistryState::default();
        let out = apply(&mut s, 10, register("a/b"));
        assert!(matches!(out, Err(DomainError::Invalid { .. })));
        assert_eq!(s.nodes().count(), 0);
    }
}
