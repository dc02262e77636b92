//! The admin API's cluster operations: readiness, the coordinator group and its membership, and the per-site
//! summary of the fleet in the cluster status, with their request and reply types. The REST handlers and
//! route rows are in `rest.rs`, the gRPC adapter and method rows in `grpc.rs`; the nodes themselves are the
//! fleet's (`fleet/`).

pub(super) mod grpc;
pub(super) mod rest;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::node::{ClusterStatus, MemberNode, MemberStatus, NodeId};
use crate::state::{AuditOp, Command, Op};

use super::auth::RequestScope;
use super::error::ServiceError;
use super::service::{validate_addr, AdminService, ListPage};

fn default_true() -> bool {
    true
}

/// `POST /v1/cluster/members`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[schema(as = AddClusterMemberRequest)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    #[schema(value_type = u64)]
    pub id: NodeId,
    pub name: String,
    pub raft_addr: String,
    pub admin_addr: String,
    /// Promote the new member to a voter once it caught up; false keeps it a learner.
    #[serde(default = "default_true")]
    #[schema(default = true)]
    pub voter: bool,
}

/// Whether the process is alive (`ok`) or ready (`ready`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// `GET /v1/cluster/status`: the coordinator group and the fleet per region and cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = ClusterStatus)]
pub struct ClusterOverview {
    #[serde(flatten)]
    #[schema(inline)]
    pub status: ClusterStatus,
    pub sites: Vec<FleetSite>,
}

/// The nodes of one region/cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FleetSite {
    pub region: String,
    pub cluster: String,
    pub nodes: u32,
    pub ready: u32,
    pub unreachable: u32,
    pub lost: u32,
    /// Nodes an operator drained (whatever their health): no new work lands there.
    pub draining: u32,
    pub cpu_cores: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    pub gpu_models: std::collections::BTreeMap<String, u32>,
    pub idle_gpus: u32,
    pub active_jobs: u32,
}

/// The fleet summed per (region, cluster), in name order.
pub(crate) fn fleet_sites(state: &crate::state::RegistryState) -> Vec<FleetSite> {
    use crate::state::NodeHealthState;
    let mut sites: std::collections::BTreeMap<(String, String), FleetSite> = Default::default();
    for node in state.nodes() {
        let site = sites
            .entry((node.region.clone(), node.cluster.clone()))
            .or_insert_with(|| FleetSite {
                region: node.region.clone(),
                cluster: node.cluster.clone(),
                ..FleetSite::default()
            });
        site.nodes += 1;
        match node.health {
            NodeHealthState::Ready => site.ready += 1,
            NodeHealthState::Unreachable => site.unreachable += 1,
            NodeHealthState::Lost => site.lost += 1,
        }
        site.draining += u32::from(node.draining);
        site.cpu_cores += u64::from(node.cpu_cores);
        site.memory_bytes = site.memory_bytes.saturating_add(node.memory_bytes);
        for gpu in &node.gpus {
            site.gpus += 1;
            *site.gpu_models.entry(gpu.model.clone()).or_default() += 1;
        }
        site.idle_gpus += u32::try_from(node.idle_gpus.len()).unwrap_or(u32::MAX);
        let (_, jobs) = state.node_assignments(&node.key);
        site.active_jobs += u32::try_from(jobs.len()).unwrap_or(u32::MAX);
    }
    sites.into_values().collect()
}

impl AdminService {
    // ---- health and cluster ----

    pub(crate) fn is_ready(&self) -> bool {
        self.inner.handle.is_ready()
    }

    pub(crate) fn cluster_status(&self) -> ClusterOverview {
        ClusterOverview {
            status: self.inner.handle.status(),
            sites: self.inner.handle.read(fleet_sites),
        }
    }

    pub(crate) fn list_members(&self) -> ListPage<MemberStatus> {
        ListPage {
            items: self.inner.handle.status().members,
            next_page_token: String::new(),
        }
    }

    /// The fleet's gauges for `/metrics`, from the local replica.
    pub(crate) fn fleet_gauges(&self) -> super::metrics::FleetGauges {
        self.inner.handle.read(super::metrics::FleetGauges::of)
    }

    pub(crate) async fn add_member(
        &self,
        scope: &RequestScope,
        req: AddMemberRequest,
    ) -> Result<MemberStatus, ServiceError> {
        if req.id == 0 {
            return Err(ServiceError::invalid("id", "must be a positive integer"));
        }
        if req.name.is_empty() || req.name.len() > 63 {
            return Err(ServiceError::invalid("name", "must be 1-63 characters"));
        }
        // Peers admit a coordinator while its certificate's name is a member's: the name must be one a
        // coordinator certificate can carry.
        certs::Identity::coordinator(self.inner.handle.trust_domain(), &req.name)
            .map_err(|e| ServiceError::invalid("name", e.to_string()))?;
        validate_addr("raft_addr", &req.raft_addr)?;
        validate_addr("admin_addr", &req.admin_addr)?;
        let node = MemberNode {
            name: req.name.clone(),
            raft_addr: req.raft_addr.clone(),
            admin_addr: req.admin_addr.clone(),
        };
        let result = self.inner.handle.add_member(req.id, node, req.voter).await;
        let detail = format!(
            "{} {} ({}) at {}",
            if req.voter { "voter" } else { "learner" },
            req.id,
            req.name,
            req.raft_addr
        );
        self.record_membership(scope, &req.id.to_string(), &detail, &result)
            .await;
        result?;
        Ok(MemberStatus {
            id: req.id,
            name: req.name,
            raft_addr: req.raft_addr,
            admin_addr: req.admin_addr,
            voter: req.voter,
        })
    }

    pub(crate) async fn remove_member(
        &self,
        scope: &RequestScope,
        id: NodeId,
    ) -> Result<(), ServiceError> {
        let Some(member) = self
            .inner
            .handle
            .status()
            .members
            .into_iter()
            .find(|m| m.id == id)
        else {
            return Err(ServiceError::not_found("member", &id.to_string()));
        };
        let result = self.inner.handle.remove_member(id).await;
        let detail = format!(
            "{} {id} ({}) at {}",
            if member.voter { "voter" } else { "learner" },
            member.name,
            member.raft_addr
        );
        self.record_membership(scope, &id.to_string(), &detail, &result)
            .await;
        Ok(result?)
    }

    /// Audits a membership change (which Raft carries out itself, outside the registry's commands) once
    /// its outcome is known: `cluster.member.add` or `.remove` by the caller, succeeded or refused.
    async fn record_membership<T>(
        &self,
        scope: &RequestScope,
        target: &str,
        detail: &str,
        result: &Result<T, crate::node::MembershipError>,
    ) {
        let (outcome, detail) = match result {
            Ok(_) => (crate::state::AuditOutcome::Success, detail.to_owned()),
            Err(e) => (
                crate::state::AuditOutcome::Refused,
                format!("{detail}: {e}"),
            ),
        };
        let op = Op::Audit(AuditOp::RecordAudit {
            action: scope.operation.to_owned(),
            project: None,
            target: super::denials::clip(target, 256),
            outcome,
            detail: super::denials::clip(&detail, 1024),
        });
        let cmd = Command::new(self.handle().now_ms(), scope.caller.actor(), op);
        if let Err(e) = self.inner.handle.write(cmd).await {
            tracing::warn!(error = %e, target, "could not audit a membership change");
        }
    }
}
