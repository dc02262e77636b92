//! The fleet in the admin API, shared by REST and gRPC: the nodes agents registered (list, drain, undrain,
//! approve: `/v1/nodes`, `NodeService`), a cluster's admission policy
//! (`/v1/clusters/{region}/{cluster}/policy`) and the mesh deny-list of identities and certificates
//! (`/v1/denied-identities`, `IdentityService`), with their request and reply types. Every one is
//! platform-level. The REST handlers and route rows are in `rest.rs`, the gRPC adapters and method rows in
//! `grpc.rs`.
//!
//! Owns turning what an operator names (a SPIFFE URI, a serial in any usual spelling, or a node key) into
//! the deny-list's canonical form, in this coordinator group's trust domain, before the command is proposed.
//! Must never decide admission itself (that is `apply`'s) and never close a connection itself (every
//! coordinator does that when it applies the change).

pub(super) mod grpc;
pub(super) mod rest;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::{
    self, normalize_serial, validate_id, DeniedIdentity, DenyKind, FleetOp, FleetOutcome,
    IdentityOp, IdentityOutcome, Op, Outcome,
};

use super::auth::RequestScope;
use super::error::ServiceError;
use super::service::{unexpected, AdminService, ListPage, PageParams};

/// Longest reason kept with a deny-list entry (the registry's limit).
const MAX_REASON: usize = 512;

/// What to deny: exactly one of identity, serial or node.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyIdentityRequest {
    /// A SPIFFE identity URI: every certificate naming it.
    #[serde(default)]
    pub identity: Option<String>,
    /// One certificate's serial number (hex).
    #[serde(default)]
    pub serial: Option<String>,
    /// `REGION/CLUSTER/NODE`: the node's agent identity.
    #[serde(default)]
    pub node: Option<String>,
    /// Why, for operators (at most 512 bytes).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Which entry to remove: exactly one of identity, serial or node, as when it was denied.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowIdentityRequest {
    /// A SPIFFE identity URI: every certificate naming it.
    #[serde(default)]
    pub identity: Option<String>,
    /// One certificate's serial number (hex).
    #[serde(default)]
    pub serial: Option<String>,
    /// `REGION/CLUSTER/NODE`: the node's agent identity.
    #[serde(default)]
    pub node: Option<String>,
}

/// `POST /v1/clusters/{region}/{cluster}/policy`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterPolicyRequest {
    /// Approve nodes new to the cluster on arrival; false: they wait for an operator's approval.
    pub auto_approve: bool,
}

/// A cluster's admission policy as callers see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = ClusterPolicy)]
pub struct ClusterPolicyView {
    pub region: String,
    pub cluster: String,
    pub auto_approve: bool,
}

/// A registered node as operators see it: resources, GPUs, labels, the allocated GPUs that sit idle,
/// health and lease epoch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Node)]
pub struct NodeView {
    pub key: String,
    pub region: String,
    pub cluster: String,
    pub node: String,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpu_count: u32,
    pub gpus: Vec<crate::scheduler::GpuDevice>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// UUIDs of GPUs assigned to a job whose utilization stayed near zero.
    pub idle_gpus: Vec<String>,
    pub os: String,
    /// How the agent limits jobs' resources (cgroup v2, cgroup v1 or rlimits).
    pub limit_mode: String,
    /// Where coordinators reach the agent.
    pub rpc_addr: String,
    pub agent_version: String,
    pub lease_epoch: u64,
    pub health: crate::state::NodeHealthState,
    /// Set by an operator: no new work lands on the node; what runs there keeps running.
    pub draining: bool,
    pub registered_at: u64,
    pub health_changed_at: u64,
    /// `approved`, `pending_approval` or `quarantined`: only an approved node receives new work.
    pub admission: crate::state::NodeAdmission,
    /// Why the node is pending or quarantined.
    pub admission_reason: String,
    /// What was approved; a registration that reports more is quarantined.
    pub approved: Option<crate::state::ApprovedResources>,
    /// The node's agent identity is on the deny-list: it is refused by every coordinator.
    pub denied: bool,
}

impl From<&crate::state::NodeRecord> for NodeView {
    fn from(n: &crate::state::NodeRecord) -> Self {
        NodeView {
            key: n.key.clone(),
            region: n.region.clone(),
            cluster: n.cluster.clone(),
            node: n.node.clone(),
            cpu_cores: n.cpu_cores,
            memory_bytes: n.memory_bytes,
            gpu_count: n.gpu_count,
            gpus: n.gpus.clone(),
            labels: n.labels.clone(),
            idle_gpus: n.idle_gpus.clone(),
            os: n.os.clone(),
            limit_mode: n.limit_mode.clone(),
            rpc_addr: n.rpc_addr.clone(),
            agent_version: n.agent_version.clone(),
            lease_epoch: n.lease_epoch,
            health: n.health,
            draining: n.draining,
            registered_at: n.registered_at,
            health_changed_at: n.health_changed_at,
            admission: n.admission,
            admission_reason: n.admission_reason.clone(),
            approved: n.approved.clone(),
            denied: false,
        }
    }
}

fn empty(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

impl AdminService {
    /// The registered nodes, in key order (platform-level: no project scoping).
    pub(crate) async fn list_nodes(
        &self,
        page: &PageParams,
    ) -> Result<ListPage<NodeView>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        let page = self.inner.handle.read(|s| {
            s.node_page(&req).map(|n| NodeView {
                denied: s.node_denied(&n.key),
                ..NodeView::from(&n)
            })
        });
        Ok(page.into())
    }

    /// Drains (`draining`) or undrains the node `region/cluster/node`. A malformed name answers 400 naming
    /// the field, an unknown node 404.
    pub(crate) async fn set_node_draining(
        &self,
        scope: &RequestScope,
        region: &str,
        cluster: &str,
        node: &str,
        draining: bool,
    ) -> Result<NodeView, ServiceError> {
        for (field, value) in [("region", region), ("cluster", cluster), ("node", node)] {
            validate_id(field, value)?;
        }
        let op = Op::Fleet(FleetOp::SetNodeDraining {
            key: crate::state::node_key(region, cluster, node),
            draining,
        });
        match self.write(scope, op).await? {
            Outcome::Fleet(FleetOutcome::Node { node }) => Ok(self.node_view(&node)),
            other => Err(unexpected(other)),
        }
    }

    /// A node as callers see it, with whether its agent identity is denied (from the local replica).
    pub(crate) fn node_view(&self, node: &crate::state::NodeRecord) -> NodeView {
        NodeView {
            denied: self.inner.handle.read(|s| s.node_denied(&node.key)),
            ..NodeView::from(node)
        }
    }

    /// The deny-list's `(kind, value)` for a selector, in this group's trust domain.
    fn selected(
        &self,
        identity: &Option<String>,
        serial: &Option<String>,
        node: &Option<String>,
    ) -> Result<(DenyKind, String), ServiceError> {
        let td = self.handle().trust_domain();
        let given = [identity, serial, node]
            .iter()
            .filter(|v| !empty(v))
            .count();
        if given != 1 {
            return Err(ServiceError::invalid(
                "identity",
                "name exactly one of identity, serial or node",
            ));
        }
        if let Some(uri) = identity.as_deref().filter(|v| !v.is_empty()) {
            let parsed = certs::Identity::parse_uri(uri)
                .map_err(|e| ServiceError::invalid("identity", e.to_string()))?;
            if parsed.trust_domain != td {
                return Err(ServiceError::invalid(
                    "identity",
                    format!(
                        "belongs to trust domain {}, not this group's ({td})",
                        parsed.trust_domain
                    ),
                ));
            }
            return Ok((DenyKind::Identity, parsed.uri()));
        }
        if let Some(raw) = serial.as_deref().filter(|v| !v.is_empty()) {
            let hex = normalize_serial(raw).ok_or_else(|| {
                ServiceError::invalid("serial", "must be 1-40 hex digits (':' separators allowed)")
            })?;
            return Ok((DenyKind::Serial, hex));
        }
        let key = node.as_deref().unwrap_or_default();
        let parts: Vec<&str> = key.split('/').collect();
        let [region, cluster, name] = parts.as_slice() else {
            return Err(ServiceError::invalid(
                "node",
                "must be REGION/CLUSTER/NODE, as node list shows it",
            ));
        };
        let agent = certs::Identity::agent(td, region, cluster, name)
            .map_err(|e| ServiceError::invalid("node", e.to_string()))?;
        Ok((DenyKind::Identity, agent.uri()))
    }

    /// Adds an identity or certificate to the deny-list; every coordinator refuses it and closes its
    /// connections when it applies the entry. An entry already present answers 409.
    pub(crate) async fn deny_identity(
        &self,
        scope: &RequestScope,
        req: DenyIdentityRequest,
    ) -> Result<DeniedIdentity, ServiceError> {
        let (kind, value) = self.selected(&req.identity, &req.serial, &req.node)?;
        let reason = req.reason.unwrap_or_default();
        if reason.len() > MAX_REASON {
            return Err(ServiceError::invalid(
                "reason",
                format!("at most {MAX_REASON} bytes"),
            ));
        }
        let op = Op::Identity(IdentityOp::DenyIdentity {
            kind,
            value,
            reason,
        });
        match self.write(scope, op).await? {
            Outcome::Identity(IdentityOutcome::Denied { entry }) => Ok(entry),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a deny-list entry; one that is not there answers 404.
    pub(crate) async fn allow_identity(
        &self,
        scope: &RequestScope,
        req: AllowIdentityRequest,
    ) -> Result<DeniedIdentity, ServiceError> {
        let (kind, value) = self.selected(&req.identity, &req.serial, &req.node)?;
        match self
            .write(
                scope,
                Op::Identity(IdentityOp::AllowIdentity { kind, value }),
            )
            .await?
        {
            Outcome::Identity(IdentityOutcome::Denied { entry }) => Ok(entry),
            other => Err(unexpected(other)),
        }
    }

    /// The deny-list, in id order.
    pub(crate) async fn list_denied(
        &self,
        page: &PageParams,
    ) -> Result<ListPage<DeniedIdentity>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        Ok(self.handle().read(|s| s.denied_page(&req)).into())
    }

    /// Approves node `region/cluster/node` with what it reports now (lifting a quarantine).
    pub(crate) async fn approve_node(
        &self,
        scope: &RequestScope,
        region: &str,
        cluster: &str,
        node: &str,
    ) -> Result<NodeView, ServiceError> {
        for (field, value) in [("region", region), ("cluster", cluster), ("node", node)] {
            state::validate_id(field, value)?;
        }
        let op = Op::Fleet(FleetOp::ApproveNode {
            key: state::node_key(region, cluster, node),
        });
        match self.write(scope, op).await? {
            Outcome::Fleet(FleetOutcome::Node { node }) => Ok(self.node_view(&node)),
            other => Err(unexpected(other)),
        }
    }

    /// Sets whether nodes new to `region/cluster` are approved on arrival.
    pub(crate) async fn set_cluster_policy(
        &self,
        scope: &RequestScope,
        region: &str,
        cluster: &str,
        req: ClusterPolicyRequest,
    ) -> Result<ClusterPolicyView, ServiceError> {
        for (field, value) in [("region", region), ("cluster", cluster)] {
            state::validate_id(field, value)?;
        }
        let op = Op::Fleet(FleetOp::SetClusterPolicy {
            region: region.to_owned(),
            cluster: cluster.to_owned(),
            auto_approve: req.auto_approve,
        });
        match self.write(scope, op).await? {
            Outcome::Fleet(FleetOutcome::ClusterPolicy {
                region,
                cluster,
                policy,
            }) => Ok(ClusterPolicyView {
                region,
                cluster,
                auto_approve: policy.auto_approve,
            }),
            other => Err(unexpected(other)),
        }
    }
}
