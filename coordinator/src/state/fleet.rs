//! The fleet registry: one record per node an agent registered, with its resources, lease epoch and health.
//!
//! Owns `RegisterNode` (create or refresh a node, bump its lease epoch, mark it Ready) and `SetNodeHealth`
//! (a health change fenced by the lease epoch, so a decision made about an older registration never
//! overrides a newer one); what either means for the node's jobs is decided in `jobs.rs`. Liveness itself (heartbeats) is soft state kept by the leader outside the
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
        let (epoch, registered_at, assign_version) = match self.nodes.get(&key) {
            Some(old) => (
                old.lease_epoch.saturating_add(1),
                old.registered_at,
                old.assign_version.saturating_add(1),
            ),
            None => (1, at, 1),
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

    #[test]
    fn malformed_names_are_refused() {
        let mut s = RegistryState::default();
        let out = apply(&mut s, 10, register("a/b"));
        assert!(matches!(out, Err(DomainError::Invalid { .. })));
        assert_eq!(s.nodes().count(), 0);
    }
}
