//! The fleet's gRPC face: `NodeService` (listing nodes, draining and undraining them, approving them and
//! setting a cluster's admission policy) and `IdentityService` (the deny-list), as thin adapters over the
//! same operations, policies and answers as `/v1/nodes`, `/v1/clusters/{region}/{cluster}/policy` and
//! `/v1/denied-identities`; their rows of the gRPC method table.
//!
//! The converters destructure their source exhaustively, so a field added to [`NodeView`] does not compile
//! until the gRPC message carries it too.

use protocol::pb;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};

use crate::api::error::ServiceError;
use crate::api::grpc::{answer, non_empty, scope_of, GrpcAdmin, GrpcResult};
use crate::api::routes::{grpc, op, GrpcMethod};
use crate::api::service::PageParams;
use crate::state::{ApprovedGpu, ApprovedResources, DeniedIdentity};

use super::{
    AllowIdentityRequest, ClusterPolicyRequest, ClusterPolicyView, DenyIdentityRequest, NodeView,
};

/// The fleet's gRPC methods.
pub(crate) static METHODS: &[GrpcMethod] = &[
    grpc(
        "/meridian.v1.IdentityService/DenyIdentity",
        &op::IDENTITY_DENY,
    ),
    grpc(
        "/meridian.v1.IdentityService/ListDeniedIdentities",
        &op::IDENTITY_DENY_LIST,
    ),
    grpc(
        "/meridian.v1.IdentityService/AllowIdentity",
        &op::IDENTITY_ALLOW,
    ),
    grpc("/meridian.v1.NodeService/ListNodes", &op::NODE_LIST),
    grpc("/meridian.v1.NodeService/DrainNode", &op::NODE_DRAIN),
    grpc("/meridian.v1.NodeService/UndrainNode", &op::NODE_UNDRAIN),
    grpc("/meridian.v1.NodeService/ApproveNode", &op::NODE_APPROVE),
    grpc(
        "/meridian.v1.NodeService/SetClusterPolicy",
        &op::CLUSTER_POLICY_SET,
    ),
];

/// Adds this domain's services, decoding messages up to `max_message_bytes`.
pub(crate) fn services(routes: &mut RoutesBuilder, admin: &GrpcAdmin, max_message_bytes: usize) {
    use pb::identity_service_server::IdentityServiceServer;
    use pb::node_service_server::NodeServiceServer;
    let n = max_message_bytes;
    routes
        .add_service(IdentityServiceServer::new(admin.clone()).max_decoding_message_size(n))
        .add_service(NodeServiceServer::new(admin.clone()).max_decoding_message_size(n));
}

#[tonic::async_trait]
impl pb::node_service_server::NodeService for GrpcAdmin {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> GrpcResult<pb::ListNodesResponse> {
        scope_of(&request)?;
        let r = request.into_inner();
        let page = PageParams {
            page_size: (r.page_size > 0).then_some(u64::from(r.page_size)),
            page_token: non_empty(r.page_token),
        };
        answer(self.service.list_nodes(&page).await, |p| {
            pb::ListNodesResponse {
                items: p.items.into_iter().map(node_pb).collect(),
                next_page_token: p.next_page_token,
            }
        })
    }

    async fn drain_node(&self, request: Request<pb::NodeRef>) -> GrpcResult<pb::Node> {
        self.set_draining(request, true).await
    }

    async fn undrain_node(&self, request: Request<pb::NodeRef>) -> GrpcResult<pb::Node> {
        self.set_draining(request, false).await
    }

    async fn approve_node(&self, request: Request<pb::NodeRef>) -> GrpcResult<pb::Node> {
        let scope = scope_of(&request)?;
        let pb::NodeRef {
            region,
            cluster,
            node,
        } = request.into_inner();
        let approved = self
            .service
            .approve_node(&scope, &region, &cluster, &node)
            .await;
        answer(approved, node_pb)
    }

    async fn set_cluster_policy(
        &self,
        request: Request<pb::NodeSetClusterPolicyRequest>,
    ) -> GrpcResult<pb::NodeClusterPolicy> {
        let scope = scope_of(&request)?;
        let pb::NodeSetClusterPolicyRequest {
            region,
            cluster,
            auto_approve,
        } = request.into_inner();
        let set = self
            .service
            .set_cluster_policy(
                &scope,
                &region,
                &cluster,
                ClusterPolicyRequest { auto_approve },
            )
            .await;
        answer(set, |v| {
            let ClusterPolicyView {
                region,
                cluster,
                auto_approve,
            } = v;
            pb::NodeClusterPolicy {
                region,
                cluster,
                auto_approve,
            }
        })
    }
}

impl GrpcAdmin {
    /// Drains (`draining`) or undrains the node named in `request`.
    async fn set_draining(
        &self,
        request: Request<pb::NodeRef>,
        draining: bool,
    ) -> GrpcResult<pb::Node> {
        let scope = scope_of(&request)?;
        let pb::NodeRef {
            region,
            cluster,
            node,
        } = request.into_inner();
        let set = self
            .service
            .set_node_draining(&scope, &region, &cluster, &node, draining)
            .await;
        answer(set, node_pb)
    }
}

#[tonic::async_trait]
impl pb::identity_service_server::IdentityService for GrpcAdmin {
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

// ---- converters ----

/// A node as the gRPC face answers it: every field of the REST view.
fn node_pb(view: NodeView) -> pb::Node {
    let NodeView {
        key,
        region,
        cluster,
        node,
        cpu_cores,
        memory_bytes,
        gpu_count,
        gpus,
        labels,
        idle_gpus,
        os,
        limit_mode,
        rpc_addr,
        agent_version,
        lease_epoch,
        health,
        draining,
        registered_at,
        health_changed_at,
        admission,
        admission_reason,
        approved,
        denied,
    } = view;
    pb::Node {
        key,
        region,
        cluster,
        node,
        cpu_cores,
        memory_bytes,
        gpu_count,
        gpus: gpus
            .into_iter()
            .map(|g| {
                let crate::scheduler::GpuDevice {
                    uuid,
                    index,
                    model,
                    memory_mib,
                    healthy,
                } = g;
                pb::GpuDevice {
                    uuid,
                    index,
                    model,
                    memory_mib,
                    healthy,
                }
            })
            .collect(),
        labels: labels.into_iter().collect(),
        idle_gpus,
        os,
        limit_mode,
        rpc_addr,
        agent_version,
        lease_epoch,
        health: health.as_str().to_owned(),
        draining,
        registered_at,
        health_changed_at,
        admission: admission.as_str().to_owned(),
        admission_reason,
        approved: approved.map(approved_pb),
        denied,
    }
}

fn approved_pb(approved: ApprovedResources) -> pb::NodeApprovedResources {
    let ApprovedResources {
        cpu_cores,
        memory_bytes,
        gpu_count,
        gpus,
        labels,
    } = approved;
    pb::NodeApprovedResources {
        cpu_cores,
        memory_bytes,
        gpu_count,
        gpus: gpus
            .into_iter()
            .map(|g| {
                let ApprovedGpu {
                    uuid,
                    model,
                    memory_mib,
                } = g;
                pb::NodeApprovedGpu {
                    uuid,
                    model,
                    memory_mib,
                }
            })
            .collect(),
        labels: labels.into_iter().collect(),
    }
}
