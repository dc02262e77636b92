//! The admin API's mesh-admission operations, shared by REST and gRPC: the deny-list of identities and
//! certificates (`/v1/denied-identities`, `IdentityService`), node approval (`:approve`) and a cluster's
//! admission policy (`/v1/clusters/{region}/{cluster}/policy`). Every one is platform-level.
//!
//! Owns turning what an operator names (a SPIFFE URI, a serial in any usual spelling, or a node key) into
//! the deny-list's canonical form, in this coordinator group's trust domain, before the command is proposed.
//! Must never decide admission itself (that is `apply`'s) and never close a connection itself (every
//! coordinator does that when it applies the change).

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use protocol::pb;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use utoipa::ToSchema;

use crate::state::{
    self, normalize_serial, DeniedIdentity, DenyKind, FleetOp, FleetOutcome, IdentityOp,
    IdentityOutcome, Op, Outcome,
};

use super::auth::RequestScope;
use super::cluster::NodeView;
use super::error::ServiceError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::rest::Scoped;
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

fn empty(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

impl AdminService {
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

// ---- REST -------------------------------------------------------------------------------------------------

pub(crate) async fn deny_identity(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<DenyIdentityRequest>,
) -> Result<(StatusCode, Json<DeniedIdentity>), ServiceError> {
    let entry = service.deny_identity(&scope, req).await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

pub(crate) async fn allow_identity(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<AllowIdentityRequest>,
) -> Result<Json<DeniedIdentity>, ServiceError> {
    service.allow_identity(&scope, req).await.map(Json)
}

pub(crate) async fn list_denied(
    State(service): State<AdminService>,
    _scope: Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<ListPage<DeniedIdentity>>, ServiceError> {
    service.list_denied(&page).await.map(Json)
}

pub(crate) async fn approve_node(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath((region, cluster, node)): ApiPath<(String, String, String)>,
) -> Result<Json<NodeView>, ServiceError> {
    service
        .approve_node(&scope, &region, &cluster, &node)
        .await
        .map(Json)
}

pub(crate) async fn set_cluster_policy(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath((region, cluster)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<ClusterPolicyRequest>,
) -> Result<Json<ClusterPolicyView>, ServiceError> {
    service
        .set_cluster_policy(&scope, &region, &cluster, req)
        .await
        .map(Json)
}

// ---- gRPC -------------------------------------------------------------------------------------------------

fn denied_pb(entry: DeniedIdentity) -> pb::DeniedIdentity {
    pb::DeniedIdentity {
        id: entry.id,
        kind: entry.kind.as_str().to_owned(),
        value: entry.value,
        reason: entry.reason,
        denied_at: entry.denied_at,
        denied_by: entry.denied_by,
    }
}

pub(super) fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(super) fn scope_of<T>(request: &Request<T>) -> Result<RequestScope, Status> {
    request
        .extensions()
        .get::<RequestScope>()
        .cloned()
        .ok_or_else(|| super::auth::missing_scope().into_status())
}

/// `meridian.v1.IdentityService`, over the same operations as REST.
#[derive(Clone)]
pub(crate) struct GrpcIdentities {
    pub(crate) service: AdminService,
}

#[tonic::async_trait]
impl pb::identity_service_server::IdentityService for GrpcIdentities {
    async fn deny_identity(
        &self,
        request: Request<pb::DenyIdentityRequest>,
    ) -> Result<Response<pb::DeniedIdentity>, Status> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let selector = r.selector.unwrap_or_default();
        let req = DenyIdentityRequest {
            identity: non_empty(selector.identity),
            serial: non_empty(selector.serial),
            node: non_empty(selector.node),
            reason: non_empty(r.reason),
        };
        self.service
            .deny_identity(&scope, req)
            .await
            .map(|e| Response::new(denied_pb(e)))
            .map_err(ServiceError::into_status)
    }

    async fn list_denied_identities(
        &self,
        request: Request<pb::ListDeniedIdentitiesRequest>,
    ) -> Result<Response<pb::ListDeniedIdentitiesResponse>, Status> {
        scope_of(&request)?;
        let r = request.into_inner();
        let page = PageParams {
            page_size: (r.page_size > 0).then_some(u64::from(r.page_size)),
            page_token: non_empty(r.page_token),
        };
        self.service
            .list_denied(&page)
            .await
            .map(|p| {
                Response::new(pb::ListDeniedIdentitiesResponse {
                    items: p.items.into_iter().map(denied_pb).collect(),
                    next_page_token: p.next_page_token,
                })
            })
            .map_err(ServiceError::into_status)
    }

    async fn allow_identity(
        &self,
        request: Request<pb::AllowIdentityRequest>,
    ) -> Result<Response<pb::DeniedIdentity>, Status> {
        let scope = scope_of(&request)?;
        let selector = request.into_inner().selector.unwrap_or_default();
        let req = AllowIdentityRequest {
            identity: non_empty(selector.identity),
            serial: non_empty(selector.serial),
            node: non_empty(selector.node),
        };
        self.service
            .allow_identity(&scope, req)
            .await
            .map(|e| Response::new(denied_pb(e)))
            .map_err(ServiceError::into_status)
    }
}
