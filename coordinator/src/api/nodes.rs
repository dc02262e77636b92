//! The fleet's gRPC face, `meridian.v1.NodeService`: listing nodes, draining and undraining them,
//! approving them and setting a cluster's admission policy — the same operations, policies and answers as
//! `/v1/nodes` and `/v1/clusters/{region}/{cluster}/policy` (whose handlers live in `rest.rs` and
//! `admission.rs`).
//!
//! The converters destructure their source exhaustively, so a field added to [`NodeView`] does not compile
//! until the gRPC message carries it too.

use protocol::pb;
use tonic::{Request, Response, Status};

use crate::state::{ApprovedGpu, ApprovedResources};

use super::admission::{non_empty, scope_of, ClusterPolicyRequest, ClusterPolicyView};
use super::cluster::NodeView;
use super::error::ServiceError;
use super::service::{AdminService, PageParams};

/// `meridian.v1.NodeService`, over the same operations as REST.
#[derive(Clone)]
pub(crate) struct GrpcNodes {
    pub(crate) service: AdminService,
}

type GrpcResult<T> = Result<Response<T>, Status>;

fn answer<T, M>(result: Result<T, ServiceError>, to_pb: impl FnOnce(T) -> M) -> GrpcResult<M> {
    result
        .map(|v| Response::new(to_pb(v)))
        .map_err(ServiceError::into_status)
}

#[tonic::async_trait]
impl pb::node_service_server::NodeService for GrpcNodes {
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

impl GrpcNodes {
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
