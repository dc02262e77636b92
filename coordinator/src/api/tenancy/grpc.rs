//! Tenancy's gRPC face: `ProjectService`, `PrincipalService`, `KeyService` and `RoleBindingService` as thin
//! adapters over the same operations as REST, their rows of the gRPC method table, and the converters of
//! their messages (each destructures what it converts, see `grpc/mod.rs`).

use protocol::pb;
use tonic::service::RoutesBuilder;
use tonic::Request;

use crate::api::grpc::{answer, list, non_empty, page, scope_of, GrpcAdmin, GrpcResult};
use crate::api::routes::{grpc, op, GrpcMethod};
use crate::state::{ApiKeyView, Principal, PrincipalKind, ProjectPolicy, ProjectView};

use super::{
    CreateBindingRequest, CreateKeyRequest, CreateProjectRequest, CreateServiceAccountRequest,
    RoleBindingView, SetPolicyRequest,
};

/// Tenancy's gRPC methods.
pub(crate) static METHODS: &[GrpcMethod] = &[
    grpc(
        "/meridian.v1.ProjectService/CreateProject",
        &op::PROJECT_CREATE,
    ),
    grpc("/meridian.v1.ProjectService/GetProject", &op::PROJECT_GET),
    grpc(
        "/meridian.v1.ProjectService/ListProjects",
        &op::PROJECT_LIST,
    ),
    grpc(
        "/meridian.v1.ProjectService/DeleteProject",
        &op::PROJECT_DELETE,
    ),
    grpc(
        "/meridian.v1.ProjectService/SetProjectPolicy",
        &op::PROJECT_POLICY_SET,
    ),
    grpc(
        "/meridian.v1.PrincipalService/ListPrincipals",
        &op::PRINCIPAL_LIST,
    ),
    grpc(
        "/meridian.v1.PrincipalService/CreateServiceAccount",
        &op::PRINCIPAL_CREATE,
    ),
    grpc("/meridian.v1.PrincipalService/WhoAmI", &op::WHOAMI),
    grpc("/meridian.v1.KeyService/CreateKey", &op::KEY_CREATE),
    grpc("/meridian.v1.KeyService/GetKey", &op::KEY_GET),
    grpc("/meridian.v1.KeyService/ListKeys", &op::KEY_LIST),
    grpc("/meridian.v1.KeyService/RevokeKey", &op::KEY_REVOKE),
    grpc(
        "/meridian.v1.RoleBindingService/CreateRoleBinding",
        &op::BINDING_CREATE,
    ),
    grpc(
        "/meridian.v1.RoleBindingService/ListRoleBindings",
        &op::BINDING_LIST,
    ),
    grpc(
        "/meridian.v1.RoleBindingService/DeleteRoleBinding",
        &op::BINDING_DELETE,
    ),
];

/// Adds this domain's services, decoding messages up to `max_message_bytes`.
pub(crate) fn services(routes: &mut RoutesBuilder, admin: &GrpcAdmin, max_message_bytes: usize) {
    use pb::key_service_server::KeyServiceServer;
    use pb::principal_service_server::PrincipalServiceServer;
    use pb::project_service_server::ProjectServiceServer;
    use pb::role_binding_service_server::RoleBindingServiceServer;
    let n = max_message_bytes;
    routes
        .add_service(ProjectServiceServer::new(admin.clone()).max_decoding_message_size(n))
        .add_service(PrincipalServiceServer::new(admin.clone()).max_decoding_message_size(n))
        .add_service(KeyServiceServer::new(admin.clone()).max_decoding_message_size(n))
        .add_service(RoleBindingServiceServer::new(admin.clone()).max_decoding_message_size(n));
}

#[tonic::async_trait]
impl pb::project_service_server::ProjectService for GrpcAdmin {
    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> GrpcResult<pb::Project> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let req = CreateProjectRequest {
            name: r.name,
            description: non_empty(r.description),
        };
        answer(self.service.create_project(&scope, req).await, project)
    }

    async fn get_project(
        &self,
        request: Request<pb::GetProjectRequest>,
    ) -> GrpcResult<pb::Project> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.get_project(&scope, &r.project).await, project)
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> GrpcResult<pb::ListProjectsResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(
            self.service
                .list_projects(&scope, &page(r.page_size, r.page_token))
                .await,
            |p| {
                let (items, next_page_token) = list(p, project);
                pb::ListProjectsResponse {
                    items,
                    next_page_token,
                }
            },
        )
    }

    async fn set_project_policy(
        &self,
        request: Request<pb::SetProjectPolicyRequest>,
    ) -> GrpcResult<pb::Project> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let req = SetPolicyRequest {
            max_pending_jobs: r.max_pending_jobs,
            max_running_cpu_millis: r.max_running_cpu_millis,
            max_running_memory_bytes: r.max_running_memory_bytes,
            max_running_gpus: r.max_running_gpus,
            max_spec_bytes: r.max_spec_bytes,
            network: r.network,
            preemption_ceiling: r.preemption_ceiling.map(i64::from),
        };
        answer(
            self.service
                .set_project_policy(&scope, &r.project, req)
                .await,
            project,
        )
    }

    async fn delete_project(
        &self,
        request: Request<pb::DeleteProjectRequest>,
    ) -> GrpcResult<pb::DeleteProjectResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(
            self.service.delete_project(&scope, &r.project).await,
            |()| pb::DeleteProjectResponse {},
        )
    }
}

#[tonic::async_trait]
impl pb::principal_service_server::PrincipalService for GrpcAdmin {
    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> GrpcResult<pb::ListPrincipalsResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(
            self.service
                .list_principals(&scope, &page(r.page_size, r.page_token))
                .await,
            |p| {
                let (items, next_page_token) = list(p, principal);
                pb::ListPrincipalsResponse {
                    items,
                    next_page_token,
                }
            },
        )
    }

    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> GrpcResult<pb::Principal> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(
            self.service
                .create_service_account(&scope, CreateServiceAccountRequest { name: r.name })
                .await,
            principal,
        )
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> GrpcResult<pb::WhoAmIResponse> {
        let scope = scope_of(&request)?;
        answer(self.service.whoami(&scope).await, |w| pb::WhoAmIResponse {
            key_id: w.key.id,
            principal: Some(principal(w.principal)),
            project: Some(project(w.project)),
            bindings: w.bindings.into_iter().map(binding).collect(),
        })
    }
}

#[tonic::async_trait]
impl pb::key_service_server::KeyService for GrpcAdmin {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> GrpcResult<pb::CreateKeyResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let req = CreateKeyRequest {
            name: r.name,
            role: non_empty(r.role),
            expires_in_seconds: r.expires_in_seconds,
            no_expiry: r.no_expiry,
            principal_id: non_empty(r.principal_id),
            roles: (!r.roles.is_empty()).then_some(r.roles),
            project_scoped: r.project_scoped,
        };
        answer(self.service.create_key(&scope, req).await, |mut k| {
            pb::CreateKeyResponse {
                token: std::mem::take(&mut k.token),
                key: Some(api_key(k.key.clone())),
                principal: Some(principal(k.principal.clone())),
            }
        })
    }

    async fn get_key(&self, request: Request<pb::GetKeyRequest>) -> GrpcResult<pb::ApiKey> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.get_key(&scope, &r.id).await, api_key)
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> GrpcResult<pb::ListKeysResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(
            self.service
                .list_keys(&scope, &page(r.page_size, r.page_token))
                .await,
            |p| {
                let (items, next_page_token) = list(p, api_key);
                pb::ListKeysResponse {
                    items,
                    next_page_token,
                }
            },
        )
    }

    async fn revoke_key(&self, request: Request<pb::RevokeKeyRequest>) -> GrpcResult<pb::ApiKey> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.revoke_key(&scope, &r.id).await, api_key)
    }
}

#[tonic::async_trait]
impl pb::role_binding_service_server::RoleBindingService for GrpcAdmin {
    async fn create_role_binding(
        &self,
        request: Request<pb::CreateRoleBindingRequest>,
    ) -> GrpcResult<pb::RoleBinding> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let req = CreateBindingRequest {
            principal_id: r.principal_id,
            role: r.role,
            platform: r.platform,
        };
        answer(self.service.create_binding(&scope, req).await, binding)
    }

    async fn list_role_bindings(
        &self,
        request: Request<pb::ListRoleBindingsRequest>,
    ) -> GrpcResult<pb::ListRoleBindingsResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(
            self.service
                .list_bindings(&scope, &page(r.page_size, r.page_token))
                .await,
            |p| {
                let (items, next_page_token) = list(p, binding);
                pb::ListRoleBindingsResponse {
                    items,
                    next_page_token,
                }
            },
        )
    }

    async fn delete_role_binding(
        &self,
        request: Request<pb::DeleteRoleBindingRequest>,
    ) -> GrpcResult<pb::DeleteRoleBindingResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.delete_binding(&scope, &r.id).await, |()| {
            pb::DeleteRoleBindingResponse {}
        })
    }
}

// ---- converters ----

fn project(v: ProjectView) -> pb::Project {
    let ProjectView {
        id,
        name,
        description,
        created_at,
        policy,
    } = v;
    let ProjectPolicy {
        max_pending_jobs,
        max_running_cpu_millis,
        max_running_memory_bytes,
        max_running_gpus,
        max_spec_bytes,
        network,
        preemption_ceiling,
    } = policy;
    pb::Project {
        id,
        name,
        description,
        created_at,
        policy: Some(pb::ProjectPolicy {
            max_pending_jobs,
            max_running_cpu_millis,
            max_running_memory_bytes,
            max_running_gpus,
            max_spec_bytes,
            network: network.as_str().to_owned(),
            preemption_ceiling,
        }),
    }
}

fn principal(p: Principal) -> pb::Principal {
    let Principal {
        id,
        kind,
        name,
        project_id,
        created_at,
        disabled,
    } = p;
    let kind = match kind {
        PrincipalKind::User => "user",
        PrincipalKind::ServiceAccount => "service_account",
    };
    pb::Principal {
        id,
        kind: kind.to_owned(),
        name,
        // Empty for a platform principal.
        project_id: project_id.unwrap_or_default(),
        created_at,
        disabled,
    }
}

fn api_key(k: ApiKeyView) -> pb::ApiKey {
    let ApiKeyView {
        id,
        prefix,
        principal_id,
        project_id,
        name,
        last4,
        created_at,
        expires_at,
        revoked_at,
        roles,
        project_scoped,
    } = k;
    pb::ApiKey {
        id,
        prefix,
        principal_id,
        project_id,
        name,
        last4,
        created_at,
        expires_at,
        revoked_at,
        roles: roles
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.to_string())
            .collect(),
        project_scoped,
    }
}

fn binding(b: RoleBindingView) -> pb::RoleBinding {
    let RoleBindingView {
        id,
        principal_id,
        role,
        scope,
        project_id,
        created_at,
    } = b;
    pb::RoleBinding {
        id,
        principal_id,
        role: role.to_string(),
        scope,
        created_at,
        project_id: project_id.unwrap_or_default(),
    }
}
