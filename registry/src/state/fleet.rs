//! The fleet registry: one record per node an agent registered, with its resources, lease epoch and health.
//!
//! Owns `RegisterNode` (create or refresh a node, bump its lease epoch, mark it Ready), `SetNodeHealth`
//! (a health change fenced by the lease epoch, so a decision made about an older registration never
//! overrides a newer one) and `SetNodeDraining` (an operator's drain flag: no new work lands on the node,
//! what runs there keeps running; it survives re-registration); what either health op means for the node's
//! jobs is decided in `jobs.rs`. Liveness itself (heartbeats) is soft state kept by the leader outside the
//! replicated state; this module must never read a clock: every time arrives inside the command.
//!
//! Also owns node admission: a node never seen before joins `pending_approval` unless its cluster's policy
//! (`SetClusterPolicy`, else the default the leader stamps into the registration) approves it on arrival;
//! an approval records what the node reported (`ApproveNode`), and a later registration that reports more
//! (CPUs, memory, GPUs, labels) quarantines the node instead of trusting it: only approved nodes receive new
//! work, and only an operator lifts a quarantine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::jobs::HeldAttempt;
use super::tenancy::validate_id;
use super::{Applied, DomainError, Outcome, Page, PageRequest, RegistryState, Subject};
use crate::scheduler::GpuDevice;

/// The fleet domain's commands: node registration, health, draining, idle GPUs, approval and cluster policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// An op is built once, moved into its command and applied; its size is never multiplied, so the large
// variant stays inline rather than behind a box every construction site would carry.
#[allow(clippy::large_enum_variant)]
pub enum FleetOp {
    /// An agent registered its node: creates or refreshes the record, increments its lease epoch and marks
    /// it Ready. The node's scheduled and running attempts move to the new epoch; a running attempt the
    /// agent does not hold any more is lost. Platform-level (no project).
    RegisterNode {
        region: String,
        cluster: String,
        node: String,
        cpu_cores: u32,
        memory_bytes: u64,
        gpu_count: u32,
        agent_version: String,
        #[serde(default)]
        gpus: Vec<GpuDevice>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// Where the agent's own RPC server listens (log reads).
        #[serde(default)]
        rpc_addr: String,
        /// The attempts the agent still holds.
        #[serde(default)]
        held: Vec<HeldAttempt>,
        #[serde(default)]
        os: String,
        /// How the agent limits resources (cgroup v2, cgroup v1, rlimits).
        #[serde(default)]
        limit_mode: String,
        /// Whether a node never registered before is approved on arrival when its cluster has no policy
        /// (stamped by the leader from its configuration). Absent in entries from before admission, which
        /// approved every node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        admit_new: Option<bool>,
    },
    /// The leader's health monitor changed a node's health; refused when `lease_epoch` is not the node's
    /// current one (the node registered again since the decision was made). `Lost` also loses the
    /// node's jobs (retried per their policy).
    SetNodeHealth {
        key: String,
        health: NodeHealthState,
        lease_epoch: u64,
    },
    /// An operator drains (`true`) or undrains a node: a draining node gets no new work, what already runs
    /// there keeps running. Kept across re-registrations. Platform-level (no project).
    SetNodeDraining { key: String, draining: bool },
    /// The GPUs of a node that are allocated but idle (proposed only when the set changes); fenced by the
    /// lease epoch.
    SetIdleGpus {
        node: String,
        lease_epoch: u64,
        idle_gpus: Vec<String>,
    },
    /// Whether nodes new to a cluster are approved on arrival (otherwise they wait for `ApproveNode`).
    SetClusterPolicy {
        region: String,
        cluster: String,
        auto_approve: bool,
    },
    /// An operator approves a node (pending or quarantined) with the resources and labels it reports now.
    ApproveNode { key: String },
}

/// What a fleet command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// Built once per command and moved to the caller; the dedup table keeps records by id (apply version 3),
// not these, so the record stays inline.
#[allow(clippy::large_enum_variant)]
pub enum FleetOutcome {
    /// A node was registered or its health changed.
    Node { node: NodeRecord },
    /// A cluster's admission policy was set.
    ClusterPolicy {
        region: String,
        cluster: String,
        policy: ClusterPolicy,
    },
}

impl RegistryState {
    /// Applies one fleet command (already checked against its actor by `apply`).
    pub(super) fn execute_fleet(&mut self, op: &FleetOp, at: u64) -> Result<Applied, DomainError> {
        match op {
            FleetOp::RegisterNode {
                region,
                cluster,
                node,
                cpu_cores,
                memory_bytes,
                gpu_count,
                agent_version,
                gpus,
                labels,
                rpc_addr,
                held,
                os,
                limit_mode,
                admit_new,
            } => self.register_node(
                at,
                NodeSpec {
                    region,
                    cluster,
                    node,
                    cpu_cores: *cpu_cores,
                    memory_bytes: *memory_bytes,
                    gpu_count: *gpu_count,
                    agent_version,
                    gpus,
                    labels,
                    rpc_addr,
                    held,
                    os,
                    limit_mode,
                    admit_new: *admit_new,
                },
            ),
            FleetOp::SetNodeHealth {
                key,
                health,
                lease_epoch,
            } => self.set_node_health(at, key, *health, *lease_epoch),
            FleetOp::SetNodeDraining { key, draining } => self.fleet.set_draining(key, *draining),
            FleetOp::SetIdleGpus {
                node,
                lease_epoch,
                idle_gpus,
            } => self.fleet.set_idle_gpus(node, *lease_epoch, idle_gpus),
            FleetOp::SetClusterPolicy {
                region,
                cluster,
                auto_approve,
            } => self
                .fleet
                .set_cluster_policy(region, cluster, *auto_approve),
            FleetOp::ApproveNode { key } => self.fleet.approve(key),
        }
    }
}

impl FleetOp {
    /// What the audit log records this command as.
    pub(super) fn subject(&self) -> Subject {
        let s = Subject::of;
        match self {
            FleetOp::RegisterNode {
                region,
                cluster,
                node,
                ..
            } => s("node.register", None, &node_key(region, cluster, node)),
            FleetOp::SetNodeHealth { key, .. } => s("node.health", None, key),
            FleetOp::SetNodeDraining { key, draining } => s(
                if *draining {
                    "node.drain"
                } else {
                    "node.undrain"
                },
                None,
                key,
            ),
            FleetOp::SetIdleGpus { node, .. } => s("node.idle_gpus", None, node),
            FleetOp::SetClusterPolicy {
                region, cluster, ..
            } => s("cluster.policy", None, &cluster_key(region, cluster)),
            FleetOp::ApproveNode { key } => s("node.approve", None, key),
        }
    }
}

/// A node's health as the leader's monitor last decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Whether a node may receive new work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NodeAdmission {
    /// Approved (by an operator or its cluster's policy): schedulable within what was approved. Records
    /// from before admission existed read as approved.
    #[default]
    Approved,
    /// Registered, waiting for an operator's approval; receives no work.
    PendingApproval,
    /// Reported more than was approved; receives no new work until an operator approves it again.
    Quarantined,
}

impl NodeAdmission {
    /// Lowercase name, as the API and CLI show it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAdmission::Approved => "approved",
            NodeAdmission::PendingApproval => "pending_approval",
            NodeAdmission::Quarantined => "quarantined",
        }
    }
}

/// One GPU as it was approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovedGpu {
    pub uuid: String,
    pub model: String,
    pub memory_mib: u64,
}

/// What a node was approved with: a registration may report this or less, never more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovedResources {
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpu_count: u32,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub gpus: Vec<ApprovedGpu>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub labels: BTreeMap<String, String>,
}

/// Memory may vary this much (in thousandths) from what was approved before it counts as more: the
/// total a kernel reports moves by a few pages between boots.
const MEMORY_SLACK_PER_MILLE: u64 = 10;

impl ApprovedResources {
    fn of(record: &NodeRecord) -> Self {
        ApprovedResources {
            cpu_cores: record.cpu_cores,
            memory_bytes: record.memory_bytes,
            gpu_count: record.gpu_count,
            gpus: record
                .gpus
                .iter()
                .map(|g| ApprovedGpu {
                    uuid: g.uuid.clone(),
                    model: g.model.clone(),
                    memory_mib: g.memory_mib,
                })
                .collect(),
            labels: record.labels.clone(),
        }
    }

    /// What `reported` has beyond this approval, one phrase per excess; empty when it stays within.
    pub fn excess(&self, reported: &NodeRecord) -> Vec<String> {
        let mut out = Vec::new();
        if reported.cpu_cores > self.cpu_cores {
            out.push(format!(
                "{} CPU cores reported, {} approved",
                reported.cpu_cores, self.cpu_cores
            ));
        }
        let memory_allowed = self
            .memory_bytes
            .saturating_add(self.memory_bytes / 1000 * MEMORY_SLACK_PER_MILLE);
        if reported.memory_bytes > memory_allowed {
            out.push(format!(
                "{} bytes of memory reported, {} approved",
                reported.memory_bytes, self.memory_bytes
            ));
        }
        if reported.gpu_count > self.gpu_count {
            out.push(format!(
                "{} GPUs reported, {} approved",
                reported.gpu_count, self.gpu_count
            ));
        }
        for gpu in &reported.gpus {
            let approved = self.gpus.iter().find(|a| a.uuid == gpu.uuid);
            match approved {
                None => out.push(format!("GPU {} ({}) was not approved", gpu.uuid, gpu.model)),
                Some(a) if a.model != gpu.model || gpu.memory_mib > a.memory_mib => {
                    out.push(format!(
                        "GPU {} reported as {} with {} MiB, approved as {} with {} MiB",
                        gpu.uuid, gpu.model, gpu.memory_mib, a.model, a.memory_mib
                    ))
                }
                Some(_) => {}
            }
        }
        for (key, value) in &reported.labels {
            if self.labels.get(key) != Some(value) {
                out.push(format!("label {key}={value} was not approved"));
            }
        }
        out
    }
}

/// A cluster's admission policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPolicy {
    /// Nodes never seen before are approved with what they report on their first registration.
    pub auto_approve: bool,
}

/// The registry key of a cluster.
pub fn cluster_key(region: &str, cluster: &str) -> String {
    format!("{region}/{cluster}")
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
    /// Whether the node may receive new work: approved, pending an operator's approval, or quarantined.
    #[serde(default)]
    pub admission: NodeAdmission,
    /// Why it is pending or quarantined; empty when approved.
    #[serde(default)]
    pub admission_reason: String,
    /// What was approved; a registration reporting more is quarantined. `None` until approved.
    #[serde(default)]
    pub approved: Option<ApprovedResources>,
}

impl NodeRecord {
    /// Whether the node may receive new work (it may still be draining or unhealthy).
    pub fn admitted(&self) -> bool {
        self.admission == NodeAdmission::Approved
    }
}

/// The registry key of a node.
pub fn node_key(region: &str, cluster: &str, node: &str) -> String {
    format!("{region}/{cluster}/{node}")
}

/// What a registration names (borrowed from the command).
pub struct NodeSpec<'a> {
    pub region: &'a str,
    pub cluster: &'a str,
    pub node: &'a str,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpu_count: u32,
    pub agent_version: &'a str,
    pub gpus: &'a [GpuDevice],
    pub labels: &'a BTreeMap<String, String>,
    pub rpc_addr: &'a str,
    pub held: &'a [HeldAttempt],
    pub os: &'a str,
    pub limit_mode: &'a str,
    /// How a node never seen before is admitted when its cluster has no policy (stamped by the leader);
    /// `None` in registrations from before admission existed, which approved every node.
    pub admit_new: Option<bool>,
}

const MAX_AGENT_VERSION: usize = 64;
/// Longest OS description, limit mode or RPC address, in bytes.
const MAX_NODE_TEXT: usize = 256;
/// Most GPUs and labels a node may declare.
const MAX_NODE_ITEMS: usize = 256;

/// The fleet: this domain's state, node records and cluster admission policies. Only fleet commands change
/// it, through the methods below; what a node's change does to its jobs (re-adopting them after a
/// registration, losing them with the node) is routed to the jobs domain by the registry
/// (`RegistryState::execute_fleet`), and the one thing jobs hand back to the fleet is a bump of a node's
/// assignment version, so its agent's long poll wakes up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    /// Node key (`region/cluster/node`) → record.
    nodes: BTreeMap<String, NodeRecord>,
    /// `region/cluster` → admission policy; a cluster without one follows the leader's default.
    cluster_policies: BTreeMap<String, ClusterPolicy>,
}

impl Fleet {
    /// A fleet holding a snapshot's records and policies.
    pub(super) fn from_parts(
        nodes: BTreeMap<String, NodeRecord>,
        cluster_policies: BTreeMap<String, ClusterPolicy>,
    ) -> Fleet {
        Fleet {
            nodes,
            cluster_policies,
        }
    }

    /// The records and policies, as a snapshot writes them.
    pub(super) fn parts(
        &self,
    ) -> (
        &BTreeMap<String, NodeRecord>,
        &BTreeMap<String, ClusterPolicy>,
    ) {
        (&self.nodes, &self.cluster_policies)
    }

    /// `RegisterNode`: validates and records the node (the registry then re-adopts its jobs); returns
    /// its key and new lease epoch.
    pub(super) fn register(
        &mut self,
        at: u64,
        spec: &NodeSpec<'_>,
    ) -> Result<(String, u64), DomainError> {
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
        let old = self.nodes.get(&key);
        let (epoch, registered_at, assign_version, draining) = match old {
            Some(old) => (
                old.lease_epoch.saturating_add(1),
                old.registered_at,
                old.assign_version.saturating_add(1),
                old.draining,
            ),
            None => (1, at, 1, false),
        };
        let previous_admission =
            old.map(|o| (o.admission, o.admission_reason.clone(), o.approved.clone()));
        let mut record = NodeRecord {
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
            admission: NodeAdmission::Approved,
            admission_reason: String::new(),
            approved: None,
        };
        self.admit(&mut record, previous_admission, spec.admit_new);
        self.nodes.insert(key.clone(), record);
        Ok((key, epoch))
    }

    /// Decides a registering node's admission from what it was before (`None`: never seen), its cluster's
    /// policy and the leader's default for new nodes.
    fn admit(
        &self,
        record: &mut NodeRecord,
        previous: Option<(NodeAdmission, String, Option<ApprovedResources>)>,
        admit_new: Option<bool>,
    ) {
        let Some(admit_new) = admit_new else {
            // A registration from before admission existed: it trusted every node and what it reported,
            // and replaying it must do the same. Leaders always stamp `admit_new` now.
            record.approved = Some(ApprovedResources::of(record));
            return;
        };
        match previous {
            None => {
                let policy = self
                    .cluster_policies
                    .get(&cluster_key(&record.region, &record.cluster))
                    .map(|p| p.auto_approve);
                if policy.unwrap_or(admit_new) {
                    record.approved = Some(ApprovedResources::of(record));
                } else {
                    record.admission = NodeAdmission::PendingApproval;
                    record.admission_reason = format!(
                        "new node: waiting for an operator's approval (cluster {} does not approve nodes on arrival)",
                        cluster_key(&record.region, &record.cluster)
                    );
                }
            }
            Some((NodeAdmission::PendingApproval, reason, _)) => {
                record.admission = NodeAdmission::PendingApproval;
                record.admission_reason = reason;
            }
            Some((admission, reason, approved)) => {
                // A record approved before approvals were recorded adopts what it reports now.
                let approved = approved.unwrap_or_else(|| ApprovedResources::of(record));
                let excess = approved.excess(record);
                if !excess.is_empty() {
                    record.admission = NodeAdmission::Quarantined;
                    record.admission_reason =
                        format!("reported more than was approved: {}", excess.join("; "));
                } else if admission == NodeAdmission::Quarantined {
                    // Back within bounds, but only an operator lifts a quarantine.
                    record.admission = NodeAdmission::Quarantined;
                    record.admission_reason = reason;
                }
                record.approved = Some(approved);
            }
        }
    }

    /// `ApproveNode`: an operator approves the node with what it reports now; it may receive work again.
    pub(super) fn approve(&mut self, key: &str) -> Result<Applied, DomainError> {
        let record = self
            .nodes
            .get_mut(key)
            .ok_or_else(|| DomainError::not_found("node", key))?;
        let before = record.admission;
        record.admission = NodeAdmission::Approved;
        record.admission_reason = String::new();
        record.approved = Some(ApprovedResources::of(record));
        // Its agent's long poll wakes up, as after any change that may bring it work.
        record.assign_version = record.assign_version.saturating_add(1);
        let node = record.clone();
        Ok(Applied::new(
            Outcome::Fleet(FleetOutcome::Node { node }),
            format!(
                "{} -> approved with {} CPU cores, {} bytes of memory, {} GPUs",
                before.as_str(),
                record.cpu_cores,
                record.memory_bytes,
                record.gpu_count
            ),
        ))
    }

    /// `SetClusterPolicy`: whether nodes new to `region/cluster` are approved on arrival.
    pub(super) fn set_cluster_policy(
        &mut self,
        region: &str,
        cluster: &str,
        auto_approve: bool,
    ) -> Result<Applied, DomainError> {
        validate_id("region", region)?;
        validate_id("cluster", cluster)?;
        let policy = ClusterPolicy { auto_approve };
        self.cluster_policies
            .insert(cluster_key(region, cluster), policy);
        Ok(Applied::new(
            Outcome::Fleet(FleetOutcome::ClusterPolicy {
                region: region.to_owned(),
                cluster: cluster.to_owned(),
                policy,
            }),
            format!("auto_approve={auto_approve}"),
        ))
    }

    /// The admission policy of `region/cluster`, when one was set.
    pub fn cluster_policy(&self, region: &str, cluster: &str) -> Option<ClusterPolicy> {
        self.cluster_policies
            .get(&cluster_key(region, cluster))
            .copied()
    }

    /// Every cluster policy, by `region/cluster`.
    pub fn cluster_policies(&self) -> impl Iterator<Item = (&String, &ClusterPolicy)> {
        self.cluster_policies.iter()
    }

    /// The node's record, when `lease_epoch` is still its current one: a decision or report made for an
    /// earlier registration of the node is refused.
    fn fenced(&mut self, key: &str, lease_epoch: u64) -> Result<&mut NodeRecord, DomainError> {
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
        Ok(record)
    }

    /// `SetNodeHealth`: the health monitor's verdict, fenced by the lease epoch; returns the change for the
    /// audit record (the registry loses the node's jobs when it is `Lost`).
    pub(super) fn set_health(
        &mut self,
        at: u64,
        key: &str,
        health: NodeHealthState,
        lease_epoch: u64,
    ) -> Result<String, DomainError> {
        let record = self.fenced(key, lease_epoch)?;
        let detail = format!("{} -> {}", record.health.as_str(), health.as_str());
        if record.health != health {
            record.health = health;
            record.health_changed_at = at;
        }
        Ok(detail)
    }

    /// `SetIdleGpus`: the node's allocated GPUs that sit idle, fenced by the lease epoch.
    pub(super) fn set_idle_gpus(
        &mut self,
        key: &str,
        lease_epoch: u64,
        idle_gpus: &[String],
    ) -> Result<Applied, DomainError> {
        let record = self.fenced(key, lease_epoch)?;
        let set: BTreeSet<&String> = idle_gpus.iter().collect();
        record.idle_gpus = set.into_iter().cloned().collect();
        let detail = format!("{} idle", record.idle_gpus.len());
        Ok(Applied::new(
            Outcome::Fleet(FleetOutcome::Node {
                node: record.clone(),
            }),
            detail,
        ))
    }

    /// Wakes the node's agent's long poll: what may be assigned to it changed.
    pub(super) fn bump_assign_version(&mut self, node_key: &str) {
        if let Some(node) = self.nodes.get_mut(node_key) {
            node.assign_version = node.assign_version.saturating_add(1);
        }
    }

    /// `SetNodeDraining`: sets or clears a node's drain flag. Nothing else changes: its jobs keep running
    /// and its health is still the monitor's to decide. A repeat that changes nothing is still Ok.
    pub(super) fn set_draining(
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
            Outcome::Fleet(FleetOutcome::Node { node }),
            format!("draining={draining}"),
        ))
    }

    /// One node by key.
    pub fn get(&self, key: &str) -> Option<&NodeRecord> {
        self.nodes.get(key)
    }

    /// Every registered node, in key order.
    pub fn values(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// A page of nodes in key order.
    pub fn page(&self, req: &PageRequest) -> Page<NodeRecord> {
        Page::from_sorted(self.nodes.iter().map(|(k, n)| (k, n.clone())), req)
    }
}

impl RegistryState {
    /// One node by key.
    pub fn node(&self, key: &str) -> Option<&NodeRecord> {
        self.fleet.get(key)
    }

    /// Every registered node, in key order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.fleet.values()
    }

    /// A page of nodes in key order.
    pub fn node_page(&self, req: &PageRequest) -> Page<NodeRecord> {
        self.fleet.page(req)
    }

    /// The admission policy of `region/cluster`, when one was set.
    pub fn cluster_policy(&self, region: &str, cluster: &str) -> Option<ClusterPolicy> {
        self.fleet.cluster_policy(region, cluster)
    }

    /// Every cluster policy, by `region/cluster`.
    pub fn cluster_policies(&self) -> impl Iterator<Item = (&String, &ClusterPolicy)> {
        self.fleet.cluster_policies()
    }

    /// `RegisterNode`: the fleet records the node, then the node's jobs move to its new lease epoch (a
    /// started one its agent no longer holds is lost).
    fn register_node(&mut self, at: u64, spec: NodeSpec<'_>) -> Result<Applied, DomainError> {
        let (key, epoch) = self.fleet.register(at, &spec)?;
        let lost = self.readopt_node_jobs(at, &key, epoch, spec.held);
        let Some(record) = self.fleet.get(&key).cloned() else {
            return Err(DomainError::not_found("node", &key));
        };
        let mut detail = if lost == 0 {
            format!("lease epoch {epoch}")
        } else {
            format!("lease epoch {epoch}, {lost} jobs lost")
        };
        if !record.admitted() {
            detail.push_str(&format!(
                ", {}: {}",
                record.admission.as_str(),
                record.admission_reason
            ));
        }
        Ok(Applied::new(
            Outcome::Fleet(FleetOutcome::Node { node: record }),
            detail,
        ))
    }

    /// `SetNodeHealth`: the fleet records the health; a lost node loses its jobs.
    fn set_node_health(
        &mut self,
        at: u64,
        key: &str,
        health: NodeHealthState,
        lease_epoch: u64,
    ) -> Result<Applied, DomainError> {
        let mut detail = self.fleet.set_health(at, key, health, lease_epoch)?;
        if health == NodeHealthState::Lost {
            let lost = self.lose_node_jobs(at, key);
            if lost > 0 {
                detail.push_str(&format!(", {lost} jobs lost"));
            }
        }
        let Some(node) = self.fleet.get(key).cloned() else {
            return Err(DomainError::not_found("node", key));
        };
        Ok(Applied::new(
            Outcome::Fleet(FleetOutcome::Node { node }),
            detail,
        ))
    }

    /// Wakes the agent of `node_key` (see [`Fleet::bump_assign_version`]).
    pub(super) fn bump_assign_version(&mut self, node_key: &str) {
        self.fleet.bump_assign_version(node_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::state::{Actor, AuditOutcome, Command, FleetOp, Op};

    fn register(node: &str) -> Op {
        Op::Fleet(FleetOp::RegisterNode {
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
            admit_new: None,
        })
    }

    fn apply(state: &mut RegistryState, at: u64, op: Op) -> crate::state::CommandOutcome {
        let index = state.applied_index + 1;
        state.apply(index, &Command::new(at, Actor::system(), op))
    }

    fn health(key: &str, health: NodeHealthState, lease_epoch: u64) -> Op {
        Op::Fleet(FleetOp::SetNodeHealth {
            key: key.into(),
            health,
            lease_epoch,
        })
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
        let Outcome::Fleet(FleetOutcome::Node { node }) = again else {
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
        Op::Fleet(FleetOp::SetNodeDraining {
            key: key.into(),
            draining,
        })
    }

    #[test]
    fn draining_is_set_cleared_audited_and_survives_registration() {
        let mut s = RegistryState::default();
        apply(&mut s, 10, register("a1")).expect("registration");
        let key = node_key("eu", "eu1", "a1");
        let out = apply(&mut s, 20, drain(&key, true)).expect("drain");
        let Outcome::Fleet(FleetOutcome::Node { node }) = out else {
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

    fn register_with(node: &str, cpu: u32, labels: &[(&str, &str)], admit_new: Option<bool>) -> Op {
        let Op::Fleet(FleetOp::RegisterNode {
            region,
            cluster,
            node,
            memory_bytes,
            gpu_count,
            agent_version,
            gpus,
            rpc_addr,
            held,
            os,
            limit_mode,
            ..
        }) = register(node)
        else {
            unreachable!("register builds a registration")
        };
        Op::Fleet(FleetOp::RegisterNode {
            region,
            cluster,
            node,
            cpu_cores: cpu,
            memory_bytes,
            gpu_count,
            agent_version,
            gpus,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            rpc_addr,
            held,
            os,
            limit_mode,
            admit_new,
        })
    }

    fn admission_of(s: &RegistryState, key: &str) -> (NodeAdmission, String) {
        let n = s.node(key).expect("node");
        (n.admission, n.admission_reason.clone())
    }

    #[test]
    fn a_new_node_waits_for_approval_unless_its_cluster_approves_on_arrival() {
        let mut s = RegistryState::default();
        let key = node_key("eu", "eu1", "a1");
        apply(&mut s, 10, register_with("a1", 8, &[], Some(false))).expect("registers");
        let (admission, reason) = admission_of(&s, &key);
        assert_eq!(admission, NodeAdmission::PendingApproval);
        assert!(reason.contains("waiting for an operator"), "{reason}");
        assert!(!s.node(&key).expect("node").admitted());
        let last = s.audit_records().last().expect("audited");
        assert!(last.detail.contains("pending_approval"), "{}", last.detail);

        // Re-registering does not approve it, even reporting less.
        apply(&mut s, 11, register_with("a1", 4, &[], Some(true))).expect("registers");
        assert_eq!(admission_of(&s, &key).0, NodeAdmission::PendingApproval);

        apply(
            &mut s,
            12,
            Op::Fleet(FleetOp::ApproveNode { key: key.clone() }),
        )
        .expect("approved");
        let node = s.node(&key).expect("node");
        assert!(node.admitted());
        assert_eq!(node.approved.as_ref().map(|a| a.cpu_cores), Some(4));
        let last = s.audit_records().last().expect("audited");
        assert_eq!(last.action, "node.approve");
        assert_eq!(last.target, key);

        // The leader's default approves a new node; a cluster policy overrides the default either way.
        apply(&mut s, 13, register_with("a2", 8, &[], Some(true))).expect("registers");
        assert!(s.node("eu/eu1/a2").expect("node").admitted());
        apply(
            &mut s,
            14,
            Op::Fleet(FleetOp::SetClusterPolicy {
                region: "eu".into(),
                cluster: "eu1".into(),
                auto_approve: false,
            }),
        )
        .expect("policy");
        assert_eq!(
            s.cluster_policy("eu", "eu1"),
            Some(ClusterPolicy {
                auto_approve: false
            })
        );
        apply(&mut s, 15, register_with("a3", 8, &[], Some(true))).expect("registers");
        assert_eq!(
            admission_of(&s, "eu/eu1/a3").0,
            NodeAdmission::PendingApproval
        );
        apply(
            &mut s,
            16,
            Op::Fleet(FleetOp::SetClusterPolicy {
                region: "eu".into(),
                cluster: "eu1".into(),
                auto_approve: true,
            }),
        )
        .expect("policy");
        apply(&mut s, 17, register_with("a4", 8, &[], Some(false))).expect("registers");
        assert!(s.node("eu/eu1/a4").expect("node").admitted());
        // Registrations from before admission existed approved every node whatever it reported, and
        // replay the same way.
        let mut replayed = RegistryState::default();
        apply(&mut replayed, 1, register_with("a5", 8, &[], None)).expect("registers");
        apply(
            &mut replayed,
            2,
            register_with("a5", 64, &[("x", "y")], None),
        )
        .expect("registers");
        let node = replayed.node("eu/eu1/a5").expect("node");
        assert!(node.admitted());
        assert_eq!(node.approved.as_ref().map(|a| a.cpu_cores), Some(64));
    }

    #[test]
    fn reporting_more_than_was_approved_quarantines_until_an_operator_approves() {
        let mut s = RegistryState::default();
        let key = node_key("eu", "eu1", "a1");
        apply(
            &mut s,
            10,
            register_with("a1", 8, &[("zone", "a")], Some(true)),
        )
        .expect("registers");
        assert!(s.node(&key).expect("node").admitted());

        // Less, or the same, is fine.
        apply(&mut s, 11, register_with("a1", 4, &[], Some(true))).expect("registers");
        assert!(s.node(&key).expect("node").admitted());
        assert_eq!(
            s.node(&key)
                .and_then(|n| n.approved.as_ref())
                .map(|a| a.cpu_cores),
            Some(8),
            "what was approved does not shrink with a smaller report"
        );

        // More CPUs and a label nobody approved: quarantined, with the reasons.
        apply(
            &mut s,
            12,
            register_with("a1", 64, &[("zone", "a"), ("tier", "gold")], Some(true)),
        )
        .expect("registers");
        let (admission, reason) = admission_of(&s, &key);
        assert_eq!(admission, NodeAdmission::Quarantined);
        assert!(
            reason.contains("64 CPU cores reported, 8 approved"),
            "{reason}"
        );
        assert!(
            reason.contains("label tier=gold was not approved"),
            "{reason}"
        );

        // Back within bounds: still quarantined until an operator says otherwise.
        apply(
            &mut s,
            13,
            register_with("a1", 8, &[("zone", "a")], Some(true)),
        )
        .expect("registers");
        assert_eq!(admission_of(&s, &key).0, NodeAdmission::Quarantined);

        apply(
            &mut s,
            14,
            Op::Fleet(FleetOp::ApproveNode { key: key.clone() }),
        )
        .expect("approved");
        assert!(s.node(&key).expect("node").admitted());
        // An unknown node cannot be approved.
        let unknown = apply(
            &mut s,
            15,
            Op::Fleet(FleetOp::ApproveNode {
                key: "eu/eu1/zz".into(),
            }),
        );
        assert!(
            matches!(unknown, Err(DomainError::NotFound { .. })),
            "{unknown:?}"
        );
    }

    #[test]
    fn more_gpus_or_other_gpus_are_excess_and_memory_has_a_little_slack() {
        let approved = ApprovedResources {
            cpu_cores: 8,
            memory_bytes: 1_000_000_000,
            gpu_count: 1,
            gpus: vec![ApprovedGpu {
                uuid: "GPU-1".into(),
                model: "NVIDIA H200".into(),
                memory_mib: 143_771,
            }],
            labels: BTreeMap::new(),
        };
        let mut s = RegistryState::default();
        apply(&mut s, 10, register("a1")).expect("registers");
        let mut reported = s.node("eu/eu1/a1").expect("node").clone();
        reported.cpu_cores = 8;
        reported.gpu_count = 1;
        reported.memory_bytes = 1_009_000_000;
        reported.gpus = vec![GpuDevice {
            uuid: "GPU-1".into(),
            index: 0,
            model: "NVIDIA H200".into(),
            memory_mib: 143_771,
            healthy: true,
        }];
        assert!(approved.excess(&reported).is_empty());
        reported.memory_bytes = 1_020_000_000;
        assert_eq!(approved.excess(&reported).len(), 1);
        reported.memory_bytes = 1_000_000_000;
        reported.gpus[0].uuid = "GPU-2".into();
        let excess = approved.excess(&reported);
        assert!(excess[0].contains("GPU GPU-2"), "{excess:?}");
        reported.gpus[0].uuid = "GPU-1".into();
        reported.gpus[0].memory_mib = 200_000;
        assert_eq!(approved.excess(&reported).len(), 1);
        reported.gpus[0].memory_mib = 143_771;
        reported.gpu_count = 2;
        assert_eq!(approved.excess(&reported).len(), 1);
    }

    #[test]
    fn a_record_from_before_admission_reads_as_approved() {
        let mut s = RegistryState::default();
        apply(&mut s, 10, register("a1")).expect("registration");
        let key = node_key("eu", "eu1", "a1");
        let mut json = serde_json::to_value(s.node(&key).expect("node")).expect("serializes");
        let object = json.as_object_mut().expect("an object");
        for field in ["admission", "admission_reason", "approved"] {
            object.remove(field);
        }
        let record: NodeRecord = serde_json::from_value(json).expect("older record reads");
        assert!(record.admitted());
        assert_eq!(record.approved, None);
        // Its next registration adopts what it reports as approved; the one after that is held to it.
        let mut s = RegistryState {
            fleet: Fleet::from_parts(BTreeMap::from([(key.clone(), record)]), BTreeMap::new()),
            ..RegistryState::default()
        };
        apply(&mut s, 20, register_with("a1", 8, &[], Some(false))).expect("registers");
        assert!(s.node(&key).expect("node").admitted());
        apply(&mut s, 21, register_with("a1", 9, &[], Some(false))).expect("registers");
        assert_eq!(admission_of(&s, &key).0, NodeAdmission::Quarantined);
    }

    #[test]
    fn malformed_names_are_refused() {
        let mut s = RegistryState::default();
        let out = apply(&mut s, 10, register("a/b"));
        assert!(matches!(out, Err(DomainError::Invalid { .. })));
        assert_eq!(s.nodes().count(), 0);
    }
}
