//! gRPC face of the admin API (package `meridian.v1`): the services of `admin.proto` as thin adapters over
//! [`AdminService`], and the gate that admits each call under its method's policy before tonic sees it.
//!
//! The gate refuses methods missing from `routes::GRPC_METHODS` (deny by default) and authenticates with the
//! `authorization: Bearer <token>` metadata, selecting the project with `x-meridian-project`, exactly like
//! REST. Must never hold domain logic or map errors differently from REST.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use protocol::pb;
use tonic::{Request, Response, Status};
use tower::ServiceExt as _;

use crate::node::{ClusterStatus, MemberStatus};
use crate::scheduler::{Constraints, Locality, ResourceRequest, Resources};
use crate::state::{
    Actor, ApiKeyView, AuditRecord, JobUsage, Principal, PrincipalKind, ProjectPolicy, ProjectView,
    RetryPolicy, SecretVersionView, SecretView, UsageFigures, UsageReport,
};

use super::audit::AuditQuery;
use super::auth::{self, missing_scope, RequestScope};
use super::cluster::{AddMemberRequest, ClusterOverview, FleetSite};
use super::error::ServiceError;
use super::jobs::{
    AttemptView, ConstraintsBody, JobListQuery, JobView, LocalityBody, LogsQuery, ResourcesBody,
    RetryBody, SubmitJobRequest, UsageQuery,
};
use super::routes::{grpc_method, MatchedRoute};
use super::secrets::{PutSecretRequest, SecretResource};
use super::service::{AdminService, ListPage, PageParams};
use super::tenancy::{
    CreateBindingRequest, CreateKeyRequest, CreateProjectRequest, CreateServiceAccountRequest,
    RoleBindingView, SetPolicyRequest,
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

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn page(page_size: u32, page_token: String) -> PageParams {
    PageParams {
        page_size: (page_size > 0).then_some(u64::from(page_size)),
        page_token: non_empty(page_token),
    }
}

// ---- conversions ----

// Every converter destructures what it converts and builds its message without `..`: a field added on
// either side fails to compile here until this face handles it. A field that gRPC leaves out on purpose is
// bound to `_` with the reason.

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

fn audit_record(r: AuditRecord) -> pb::AuditRecord {
    let json = serde_json::to_string(&r).unwrap_or_default();
    let AuditRecord {
        seq,
        at_ms,
        actor,
        action,
        project,
        target,
        outcome,
        detail,
        prev_hash,
        hash,
    } = r;
    let outcome = match serde_json::to_value(outcome) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    };
    let Actor {
        principal_id,
        name: actor_name,
        // The acting key is in `json`; the message names the principal.
        key_id: _,
    } = actor;
    pb::AuditRecord {
        seq,
        at_ms,
        actor_principal_id: principal_id.unwrap_or_default(),
        actor_name,
        action,
        project: project.unwrap_or_default(),
        target,
        outcome,
        detail,
        prev_hash,
        hash,
        json,
    }
}

fn secret(s: SecretResource) -> pb::Secret {
    let SecretResource {
        // REST's resource id is the secret's name, which the message carries as `name`.
        id: _,
        secret,
    } = s;
    let SecretView {
        project_id,
        name,
        latest_version,
        versions,
        bindings,
        created_at,
        updated_at,
    } = secret;
    pb::Secret {
        project_id,
        name,
        latest_version,
        versions: versions
            .into_iter()
            .map(|v| {
                let SecretVersionView {
                    version,
                    created_at,
                } = v;
                pb::SecretVersion {
                    version,
                    created_at,
                }
            })
            .collect(),
        bindings,
        created_at,
        updated_at,
    }
}

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
    }
}

fn attempt(a: AttemptView) -> pb::JobAttempt {
    let AttemptView {
        attempt,
        replica,
        node,
        region,
        cluster,
        gpu_uuids,
        resources,
        scheduled_at,
        started_at,
        ended_at,
        outcome,
        exit_code,
        signal,
        cpu_time_ms,
        max_rss_bytes,
        detail,
    } = a;
    let Resources {
        cpu_millis,
        memory_bytes,
        gpus,
    } = resources;
    pb::JobAttempt {
        attempt,
        replica,
        node,
        region,
        cluster,
        gpu_uuids,
        scheduled_at,
        started_at,
        ended_at,
        outcome: outcome.map_or("", |o| o.as_str()).to_owned(),
        exit_code,
        signal,
        detail,
        cpu_time_ms,
        max_rss_bytes,
        resources: Some(pb::ReservedResources {
            cpu_millis,
            memory_bytes,
            gpus,
        }),
    }
}

fn job(j: JobView) -> pb::Job {
    let JobView {
        id,
        project_id,
        name,
        state,
        command,
        args,
        env,
        working_dir,
        resources,
        replicas,
        constraints,
        data_locality,
        priority,
        preemption,
        preemptible,
        strategy,
        retry,
        timeout_secs,
        cancel_grace_secs,
        secrets,
        secrets_env,
        node,
        region,
        cluster,
        attempt_count,
        attempts,
        pending_reason,
        cancel_requested,
        exit_code,
        created_by,
        principal_id,
        created_at,
        updated_at,
        finished_at,
    } = j;
    let strategy = match serde_json::to_value(strategy) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    };
    let (locality_region, locality_cluster) = match data_locality {
        Some(Locality { region, cluster }) => (region, cluster.unwrap_or_default()),
        None => (String::new(), String::new()),
    };
    let ResourceRequest {
        cpu_millis,
        memory_bytes,
        gpus,
        gpu_model,
        gpu_min_memory_mib,
    } = resources;
    let Constraints {
        region: constraint_region,
        cluster: constraint_cluster,
        labels,
    } = constraints;
    let RetryPolicy {
        max_attempts,
        on_failure,
    } = retry;
    pb::Job {
        id,
        project_id,
        name,
        state: state.as_str().to_owned(),
        command,
        args,
        env: env.into_iter().collect(),
        working_dir: working_dir.unwrap_or_default(),
        resources: Some(pb::JobResources {
            cpu_millis,
            memory_bytes,
            gpus,
            gpu_model: gpu_model.unwrap_or_default(),
            gpu_min_memory_mib,
        }),
        constraints: Some(pb::JobConstraints {
            region: constraint_region.unwrap_or_default(),
            cluster: constraint_cluster.unwrap_or_default(),
            labels: labels.into_iter().collect(),
        }),
        priority,
        retry: Some(pb::JobRetry {
            max_attempts,
            on_failure,
        }),
        timeout_secs,
        node: node.unwrap_or_default(),
        region: region.unwrap_or_default(),
        cluster: cluster.unwrap_or_default(),
        attempt_count,
        attempts: attempts.into_iter().map(attempt).collect(),
        pending_reason: pending_reason.unwrap_or_default(),
        cancel_requested,
        exit_code,
        created_by,
        created_at,
        updated_at,
        finished_at,
        preemption,
        preemptible,
        strategy,
        cancel_grace_secs,
        secrets: secrets.into_iter().collect(),
        data_locality_region: locality_region,
        data_locality_cluster: locality_cluster,
        replicas,
        principal_id: principal_id.unwrap_or_default(),
        secrets_env,
    }
}

/// A gRPC submission in the REST body's terms; proto3 zero values mean "not given".
fn submission(r: pb::SubmitJobRequest) -> SubmitJobRequest {
    let pb::SubmitJobRequest {
        name,
        command,
        args,
        env,
        working_dir,
        resources,
        constraints,
        priority,
        retry,
        timeout_secs,
        preemption,
        preemptible,
        strategy,
        cancel_grace_secs,
        data_locality_region,
        data_locality_cluster,
        secrets,
        replicas,
        secrets_env,
    } = r;
    let pb::JobResources {
        cpu_millis,
        memory_bytes,
        gpus,
        gpu_model,
        gpu_min_memory_mib,
    } = resources.unwrap_or_default();
    let pb::JobConstraints {
        region,
        cluster,
        labels,
    } = constraints.unwrap_or_default();
    let pb::JobRetry {
        max_attempts,
        on_failure,
    } = retry.unwrap_or_default();
    SubmitJobRequest {
        name: non_empty(name),
        command: Some(command),
        args,
        env: env.into_iter().collect(),
        working_dir: non_empty(working_dir),
        resources: ResourcesBody {
            cpu: None,
            cpu_millis: (cpu_millis > 0).then_some(cpu_millis),
            memory: None,
            memory_bytes: (memory_bytes > 0).then_some(memory_bytes),
            gpus: (gpus > 0).then_some(u64::from(gpus)),
            gpu_model: non_empty(gpu_model),
            gpu_min_memory_mib,
        },
        constraints: ConstraintsBody {
            region: non_empty(region),
            cluster: non_empty(cluster),
            labels: labels.into_iter().collect(),
        },
        data_locality: non_empty(data_locality_region).map(|region| LocalityBody {
            region,
            cluster: non_empty(data_locality_cluster),
        }),
        priority: Some(i64::from(priority)),
        preemption,
        preemptible,
        strategy: non_empty(strategy),
        retry: RetryBody {
            max_attempts: (max_attempts > 0).then_some(u64::from(max_attempts)),
            on_failure,
        },
        timeout_secs: (timeout_secs > 0).then_some(timeout_secs),
        cancel_grace_secs,
        secrets: secrets.into_iter().collect(),
        secrets_env,
        replicas: (replicas > 0).then_some(u64::from(replicas)),
    }
}

fn usage_figures(f: UsageFigures) -> pb::UsageFigures {
    let UsageFigures {
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
    } = f;
    pb::UsageFigures {
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
    }
}

fn usage_report(u: UsageReport) -> pb::UsageReport {
    let UsageReport {
        project_id,
        since,
        until,
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
        archived,
        jobs,
    } = u;
    pb::UsageReport {
        project_id,
        since,
        until,
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
        archived: Some(usage_figures(archived)),
        jobs: jobs
            .into_iter()
            .map(|j| {
                let JobUsage {
                    job_id,
                    name,
                    cpu_core_seconds,
                    memory_gib_seconds,
                    gpu_seconds,
                    cpu_time_seconds,
                } = j;
                pb::JobUsage {
                    job_id,
                    name,
                    cpu_core_seconds,
                    memory_gib_seconds,
                    gpu_seconds,
                    cpu_time_seconds,
                }
            })
            .collect(),
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
                stream: c.stream.to_owned(),
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
