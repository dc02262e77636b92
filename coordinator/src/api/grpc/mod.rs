//! gRPC face of the admin API (package `meridian.v1`): the services of `admin.proto` as thin adapters over
//! [`AdminService`], and the gate that admits each call under its method's policy before tonic sees it.
//!
//! The gate refuses methods missing from `routes::GRPC_METHODS` (deny by default) and authenticates with the
//! `authorization: Bearer <token>` metadata, selecting the project with `x-meridian-project`, exactly like
//! REST. Must never hold domain logic or map errors differently from REST.

mod convert;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use protocol::pb;
use tonic::{Request, Response, Status};
use tower::ServiceExt as _;

use super::audit::AuditQuery;
use super::auth::{self, missing_scope, RequestScope};
use super::cluster::AddMemberRequest;
use super::error::ServiceError;
use super::jobs::{JobListQuery, LogsQuery, UsageQuery};
use super::routes::{grpc_method, MatchedRoute};
use super::secrets::PutSecretRequest;
use super::service::{AdminService, ListPage, PageParams};
use super::tenancy::{
    CreateBindingRequest, CreateKeyRequest, CreateProjectRequest, CreateServiceAccountRequest,
    SetPolicyRequest,
};
use convert::{
    api_key, audit_record, binding, cluster_status, job, member, principal, project, secret,
    submission, usage_report,
};

type GrpcResult<T> = Result<Response<T>, Status>;

/// The admin gRPC services, all served by one value.
#[derive(Clone)]
pub(crate) struct GrpcAdmin {
    service: AdminService,
}

/// Builds tonic's routes for every admin service, decoding messages up to `max_message_bytes`.
pub(crate) fn routes(service: AdminService, max_message_bytes: usize) -> tonic::service::Routes {
    use pb::audit_service_server::AuditServiceServer;
    use pb::cluster_service_server::ClusterServiceServer;
    use pb::identity_service_server::IdentityServiceServer;
    use pb::job_service_server::JobServiceServer;
    use pb::key_service_server::KeyServiceServer;
    use pb::node_service_server::NodeServiceServer;
    use pb::principal_service_server::PrincipalServiceServer;
    use pb::project_service_server::ProjectServiceServer;
    use pb::role_binding_service_server::RoleBindingServiceServer;
    use pb::secret_service_server::SecretServiceServer;
    use pb::usage_service_server::UsageServiceServer;

    let identities = super::admission::GrpcIdentities {
        service: service.clone(),
    };
    let nodes = super::nodes::GrpcNodes {
        service: service.clone(),
    };
    let admin = GrpcAdmin { service };
    let n = max_message_bytes;
    tonic::service::Routes::new(
        ProjectServiceServer::new(admin.clone()).max_decoding_message_size(n),
    )
    .add_service(PrincipalServiceServer::new(admin.clone()).max_decoding_message_size(n))
    .add_service(KeyServiceServer::new(admin.clone()).max_decoding_message_size(n))
    .add_service(RoleBindingServiceServer::new(admin.clone()).max_decoding_message_size(n))
    .add_service(AuditServiceServer::new(admin.clone()).max_decoding_message_size(n))
    .add_service(SecretServiceServer::new(admin.clone()).max_decoding_message_size(n))
    .add_service(ClusterServiceServer::new(admin.clone()).max_decoding_message_size(n))
    .add_service(JobServiceServer::new(admin.clone()).max_decoding_message_size(n))
    .add_service(UsageServiceServer::new(admin).max_decoding_message_size(n))
    .add_service(IdentityServiceServer::new(identities).max_decoding_message_size(n))
    .add_service(NodeServiceServer::new(nodes).max_decoding_message_size(n))
}

/// Admits gRPC calls under their method's policy, then hands them to tonic.
#[derive(Clone)]
pub(crate) struct GrpcGate {
    service: AdminService,
    routes: tonic::service::Routes,
}

impl GrpcGate {
    pub(crate) fn new(service: AdminService, routes: tonic::service::Routes) -> Self {
        GrpcGate { service, routes }
    }
}

fn status_response(status: Status) -> http::Response<Body> {
    status.into_http::<Body>()
}

impl tower::Service<http::Request<Body>> for GrpcGate {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        let routes = self.routes.clone();
        Box::pin(async move {
            let Some(method) = grpc_method(req.uri().path()) else {
                return Ok(status_response(Status::unimplemented("no such method")));
            };
            let source = req.extensions().get::<auth::ClientAddr>().map(|c| c.0);
            let mut resp = match auth::admit(&service, req.headers(), method.op, source).await {
                Ok(scope) => {
                    if let Some(scope) = scope {
                        req.extensions_mut().insert(scope);
                    }
                    match routes.oneshot(req).await {
                        Ok(resp) => resp.map(Body::new),
                        Err(never) => match never {},
                    }
                }
                Err(e) => status_response(e.into_status()),
            };
            resp.extensions_mut().insert(MatchedRoute(method.path));
            Ok(resp)
        })
    }
}

fn scope_of<T>(request: &Request<T>) -> Result<RequestScope, Status> {
    request
        .extensions()
        .get::<RequestScope>()
        .cloned()
        .ok_or_else(|| missing_scope().into_status())
}

fn answer<T, U>(result: Result<T, ServiceError>, convert: impl FnOnce(T) -> U) -> GrpcResult<U> {
    result
        .map(|v| Response::new(convert(v)))
        .map_err(ServiceError::into_status)
}

pub(super) fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn page(page_size: u32, page_token: String) -> PageParams {
    PageParams {
        page_size: (page_size > 0).then_some(u64::from(page_size)),
        page_token: non_empty(page_token),
    }
}

fn list<T, U>(page: ListPage<T>, convert: impl FnMut(T) -> U) -> (Vec<U>, String) {
    (
        page.items.into_iter().map(convert).collect(),
        page.next_page_token,
    )
}

// ---- services ----

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

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for GrpcAdmin {
    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> GrpcResult<pb::ListAuditResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let query = AuditQuery {
            after_seq: Some(r.after_seq),
            page_size: (r.page_size > 0).then_some(u64::from(r.page_size)),
            page_token: None,
        };
        answer(self.service.list_audit(&scope, &query).await, |a| {
            pb::ListAuditResponse {
                items: a.items.into_iter().map(audit_record).collect(),
                next_page_token: a.next_page_token,
                archived_through_seq: a.archived_through_seq,
            }
        })
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> GrpcResult<pb::VerifyAuditResponse> {
        let scope = scope_of(&request)?;
        answer(self.service.verify_audit(&scope).await, |v| {
            pb::VerifyAuditResponse {
                ok: v.ok,
                records: v.records,
                broken_at_seq: v.broken_at_seq,
                error: v.error.unwrap_or_default(),
                archived_records: v.archived_records,
                live_records: v.live_records,
                missing: v
                    .missing
                    .into_iter()
                    .map(|m| pb::MissingAuditRange {
                        from_seq: m.from_seq,
                        to_seq: m.to_seq,
                    })
                    .collect(),
                broken_segment: v.broken_segment.unwrap_or_default(),
            }
        })
    }
}

#[tonic::async_trait]
impl pb::secret_service_server::SecretService for GrpcAdmin {
    async fn put_secret(&self, request: Request<pb::PutSecretRequest>) -> GrpcResult<pb::Secret> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let req = PutSecretRequest {
            name: r.name,
            value: r.value,
            bindings: r.bindings.map(|b| b.items),
        };
        answer(self.service.put_secret(&scope, req).await, secret)
    }

    async fn get_secret(&self, request: Request<pb::GetSecretRequest>) -> GrpcResult<pb::Secret> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.get_secret(&scope, &r.name).await, secret)
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> GrpcResult<pb::ListSecretsResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(
            self.service
                .list_secrets(&scope, &page(r.page_size, r.page_token))
                .await,
            |p| {
                let (items, next_page_token) = list(p, secret);
                pb::ListSecretsResponse {
                    items,
                    next_page_token,
                }
            },
        )
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> GrpcResult<pb::DeleteSecretResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.delete_secret(&scope, &r.name).await, |()| {
            pb::DeleteSecretResponse {}
        })
    }

    async fn rewrap_secrets(
        &self,
        request: Request<pb::RewrapSecretsRequest>,
    ) -> GrpcResult<pb::RewrapSecretsResponse> {
        let scope = scope_of(&request)?;
        let new_data_keys = request.get_ref().new_data_keys;
        answer(
            self.service.rewrap_secrets(&scope, new_data_keys).await,
            |r| pb::RewrapSecretsResponse {
                projects: r.projects,
                master_key_id: r.master_key_id,
                new_data_keys: r.new_data_keys,
                secret_versions: r.secret_versions,
            },
        )
    }
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

#[tonic::async_trait]
impl pb::job_service_server::JobService for GrpcAdmin {
    async fn submit_job(&self, request: Request<pb::SubmitJobRequest>) -> GrpcResult<pb::Job> {
        let scope = scope_of(&request)?;
        let req = submission(request.into_inner());
        answer(self.service.submit_job(&scope, req).await, job)
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> GrpcResult<pb::Job> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.get_job(&scope, &r.id).await, job)
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> GrpcResult<pb::ListJobsResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let query = JobListQuery {
            state: non_empty(r.state),
            page_size: (r.page_size > 0).then_some(u64::from(r.page_size)),
            page_token: non_empty(r.page_token),
        };
        answer(self.service.list_jobs(&scope, &query).await, |p| {
            let (items, next_page_token) = list(p, job);
            pb::ListJobsResponse {
                items,
                next_page_token,
            }
        })
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> GrpcResult<pb::Job> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.cancel_job(&scope, &r.id).await, job)
    }

    async fn read_job_logs(
        &self,
        request: Request<pb::ReadJobLogsRequest>,
    ) -> GrpcResult<pb::ReadJobLogsResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let query = LogsQuery {
            stream: non_empty(r.stream),
            offset: Some(r.offset),
            max_bytes: (r.max_bytes > 0).then_some(u64::from(r.max_bytes)),
            attempt: (r.attempt > 0).then_some(u64::from(r.attempt)),
            replica: Some(u64::from(r.replica)),
        };
        answer(
            self.service.read_job_logs(&scope, &r.id, &query).await,
            |c| pb::ReadJobLogsResponse {
                attempt: c.attempt,
                replica: c.replica,
                node: c.node,
                stream: c.stream.as_str().to_owned(),
                start_offset: c.start_offset,
                next_offset: c.next_offset,
                data: c.data,
                job_state: c.job_state.as_str().to_owned(),
                done: c.job_state.is_terminal(),
            },
        )
    }
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for GrpcAdmin {
    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> GrpcResult<pb::UsageReport> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let query = UsageQuery {
            since: non_empty(r.since),
            until: non_empty(r.until),
        };
        answer(self.service.usage(&scope, &query).await, usage_report)
    }
}
