//! The coordinator cluster's gRPC face: `ClusterService` as a thin adapter over the same operations as REST,
//! its rows of the gRPC method table, and the converters of its messages (each destructures what it
//! converts, see `grpc/mod.rs`).

use protocol::pb;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response};

use crate::api::grpc::{answer, list, scope_of, GrpcAdmin, GrpcResult};
use crate::api::routes::{grpc, op, GrpcMethod};
use crate::node::{ClusterStatus, MemberStatus};

use super::{AddMemberRequest, ClusterOverview, FleetSite};

/// The coordinator cluster's gRPC methods.
pub(crate) static METHODS: &[GrpcMethod] = &[
    grpc(
        "/meridian.v1.ClusterService/GetClusterStatus",
        &op::CLUSTER_STATUS,
    ),
    grpc(
        "/meridian.v1.ClusterService/ListClusterMembers",
        &op::MEMBER_LIST,
    ),
    grpc(
        "/meridian.v1.ClusterService/AddClusterMember",
        &op::MEMBER_ADD,
    ),
    grpc(
        "/meridian.v1.ClusterService/RemoveClusterMember",
        &op::MEMBER_REMOVE,
    ),
];

/// Adds this domain's services, decoding messages up to `max_message_bytes`.
pub(crate) fn services(routes: &mut RoutesBuilder, admin: &GrpcAdmin, max_message_bytes: usize) {
    use pb::cluster_service_server::ClusterServiceServer;
    let n = max_message_bytes;
    routes.add_service(ClusterServiceServer::new(admin.clone()).max_decoding_message_size(n));
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for GrpcAdmin {
    async fn get_cluster_status(
        &self,
        request: Request<pb::GetClusterStatusRequest>,
    ) -> GrpcResult<pb::ClusterStatusResponse> {
        scope_of(&request)?;
        Ok(Response::new(cluster_status(self.service.cluster_status())))
    }

    async fn list_cluster_members(
        &self,
        request: Request<pb::ListClusterMembersRequest>,
    ) -> GrpcResult<pb::ListClusterMembersResponse> {
        scope_of(&request)?;
        let (items, next_page_token) = list(self.service.list_members(), member);
        Ok(Response::new(pb::ListClusterMembersResponse {
            items,
            next_page_token,
        }))
    }

    async fn add_cluster_member(
        &self,
        request: Request<pb::AddClusterMemberRequest>,
    ) -> GrpcResult<pb::ClusterMember> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let req = AddMemberRequest {
            id: r.id,
            name: r.name,
            raft_addr: r.raft_addr,
            admin_addr: r.admin_addr,
            voter: r.voter,
        };
        answer(self.service.add_member(&scope, req).await, member)
    }

    async fn remove_cluster_member(
        &self,
        request: Request<pb::RemoveClusterMemberRequest>,
    ) -> GrpcResult<pb::RemoveClusterMemberResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.remove_member(&scope, r.id).await, |()| {
            pb::RemoveClusterMemberResponse {}
        })
    }
}

// ---- converters ----

fn member(m: MemberStatus) -> pb::ClusterMember {
    let MemberStatus {
        id,
        name,
        raft_addr,
        admin_addr,
        voter,
    } = m;
    pb::ClusterMember {
        id,
        name,
        raft_addr,
        admin_addr,
        voter,
    }
}

fn fleet_site(f: FleetSite) -> pb::FleetSite {
    let FleetSite {
        region,
        cluster,
        nodes,
        ready,
        unreachable,
        lost,
        draining,
        cpu_cores,
        memory_bytes,
        gpus,
        gpu_models,
        idle_gpus,
        active_jobs,
    } = f;
    pb::FleetSite {
        region,
        cluster,
        nodes,
        ready,
        unreachable,
        lost,
        cpu_cores,
        memory_bytes,
        gpus,
        gpu_models: gpu_models.into_iter().collect(),
        idle_gpus,
        active_jobs,
        draining,
    }
}

fn cluster_status(overview: ClusterOverview) -> pb::ClusterStatusResponse {
    let ClusterOverview { status, sites } = overview;
    let ClusterStatus {
        node_id,
        name,
        state,
        leader,
        term,
        applied_index,
        committed_index,
        members,
        apply_version,
        apply_version_known,
    } = status;
    pb::ClusterStatusResponse {
        sites: sites.into_iter().map(fleet_site).collect(),
        node_id,
        name,
        state,
        leader,
        term,
        applied_index,
        committed_index,
        members: members.into_iter().map(member).collect(),
        apply_version,
        apply_version_known,
    }
}
