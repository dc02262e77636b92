//! REST handlers: thin adapters from HTTP (path, query, JSON body) to [`AdminService`] and back.
//!
//! Every handler here is mounted through the route table, behind its route's policy; handlers of
//! authenticated routes take [`Scoped`], which only an admitted request carries. Must never hold domain logic
//! (that lives in the service, shared with gRPC) nor build an error body by hand.

use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};

use super::audit::AuditQuery;
use super::auth::{missing_scope, RequestScope};
use super::cluster::{AddMemberRequest, Health};
use super::error::{ErrorKind, ServiceError};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::jobs::{JobListQuery, JobLogsView, JobView, LogsQuery, SubmitJobRequest, UsageQuery};
use super::openapi;
use super::secrets::PutSecretRequest;
use super::service::{AdminService, PageParams};
use super::tenancy::{
    CreateBindingRequest, CreateKeyRequest, CreateProjectRequest, CreateServiceAccountRequest,
};

/// The admitted caller of an authenticated route.
pub(crate) struct Scoped(pub(crate) RequestScope);

impl<S: Send + Sync> FromRequestParts<S> for Scoped {
    type Rejection = ServiceError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestScope>()
            .cloned()
            .map(Scoped)
            .ok_or_else(missing_scope)
    }
}

type Answer<T> = Result<Json<T>, ServiceError>;
type Created<T> = Result<(StatusCode, Json<T>), ServiceError>;
type Empty = Result<StatusCode, ServiceError>;

fn created<T>(value: T) -> (StatusCode, Json<T>) {
    (StatusCode::CREATED, Json(value))
}

/// Answer for paths no route matches.
pub(crate) async fn not_found() -> ServiceError {
    ServiceError::new(ErrorKind::NotFound, "no such route")
}

pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

pub(crate) async fn readyz(
    State(service): State<AdminService>,
) -> Result<Json<Health>, ServiceError> {
    if service.is_ready() {
        Ok(Json(Health {
            status: "ready".into(),
        }))
    } else {
        Err(ServiceError::unavailable(
            "not ready: no leader is known or this coordinator is still catching up",
        ))
    }
}

pub(crate) async fn openapi() -> Response {
    let mut resp = openapi::document_json().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) async fn metrics(State(service): State<AdminService>, _scope: Scoped) -> Response {
    let text = service
        .metrics()
        .render(&service.cluster_status().status, &service.fleet_gauges());
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(super::metrics::CONTENT_TYPE),
    );
    resp
}

pub(crate) async fn whoami(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
) -> Answer<super::tenancy::WhoAmI> {
    service.whoami(&scope).await.map(Json)
}

// ---- projects ----

pub(crate) async fn create_project(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<CreateProjectRequest>,
) -> Created<crate::state::ProjectView> {
    service.create_project(&scope, req).await.map(created)
}

pub(crate) async fn list_projects(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<super::service::ListPage<crate::state::ProjectView>> {
    service.list_projects(&scope, &page).await.map(Json)
}

pub(crate) async fn get_project(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(project): ApiPath<String>,
) -> Answer<crate::state::ProjectView> {
    service.get_project(&scope, &project).await.map(Json)
}

pub(crate) async fn set_project_policy(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<super::tenancy::SetPolicyRequest>,
) -> Answer<crate::state::ProjectView> {
    service
        .set_project_policy(&scope, &project, req)
        .await
        .map(Json)
}

pub(crate) async fn delete_project(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(project): ApiPath<String>,
) -> Empty {
    service
        .delete_project(&scope, &project)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

// ---- principals ----

pub(crate) async fn list_principals(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<super::service::ListPage<crate::state::Principal>> {
    service.list_principals(&scope, &page).await.map(Json)
}

pub(crate) async fn create_service_account(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<CreateServiceAccountRequest>,
) -> Created<crate::state::Principal> {
    service
        .create_service_account(&scope, req)
        .await
        .map(created)
}

// ---- keys ----

pub(crate) async fn create_key(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> Created<super::tenancy::CreatedKey> {
    service.create_key(&scope, req).await.map(created)
}

pub(crate) async fn list_keys(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<super::service::ListPage<crate::state::ApiKeyView>> {
    service.list_keys(&scope, &page).await.map(Json)
}

pub(crate) async fn get_key(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Answer<crate::state::ApiKeyView> {
    service.get_key(&scope, &id).await.map(Json)
}

pub(crate) async fn revoke_key(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Answer<crate::state::ApiKeyView> {
    service.revoke_key(&scope, &id).await.map(Json)
}

// ---- role bindings ----

pub(crate) async fn create_binding(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<CreateBindingRequest>,
) -> Created<super::tenancy::RoleBindingView> {
    service.create_binding(&scope, req).await.map(created)
}

pub(crate) async fn list_bindings(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<super::service::ListPage<super::tenancy::RoleBindingView>> {
    service.list_bindings(&scope, &page).await.map(Json)
}

pub(crate) async fn delete_binding(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Empty {
    service
        .delete_binding(&scope, &id)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

// ---- audit ----

pub(crate) async fn list_audit(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Answer<super::audit::AuditList> {
    service.list_audit(&scope, &query).await.map(Json)
}

pub(crate) async fn verify_audit(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
) -> Answer<super::audit_verify::AuditVerification> {
    service.verify_audit(&scope).await.map(Json)
}

// ---- secrets ----

pub(crate) async fn put_secret(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<PutSecretRequest>,
) -> Created<super::secrets::SecretResource> {
    service.put_secret(&scope, req).await.map(created)
}

pub(crate) async fn list_secrets(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<super::service::ListPage<super::secrets::SecretResource>> {
    service.list_secrets(&scope, &page).await.map(Json)
}

pub(crate) async fn get_secret(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(name): ApiPath<String>,
) -> Answer<super::secrets::SecretResource> {
    service.get_secret(&scope, &name).await.map(Json)
}

pub(crate) async fn delete_secret(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(name): ApiPath<String>,
) -> Empty {
    service
        .delete_secret(&scope, &name)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

pub(crate) async fn rewrap_secrets(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(query): ApiQuery<super::secrets::RewrapQuery>,
) -> Answer<super::secrets::RewrapResult> {
    service
        .rewrap_secrets(&scope, query.new_data_keys)
        .await
        .map(Json)
}

// ---- cluster ----

pub(crate) async fn cluster_status(
    State(service): State<AdminService>,
    _scope: Scoped,
) -> Json<super::cluster::ClusterOverview> {
    Json(service.cluster_status())
}

pub(crate) async fn list_members(
    State(service): State<AdminService>,
    _scope: Scoped,
) -> Json<super::service::ListPage<crate::node::MemberStatus>> {
    Json(service.list_members())
}

pub(crate) async fn list_nodes(
    State(service): State<AdminService>,
    _scope: Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<super::service::ListPage<super::cluster::NodeView>> {
    service.list_nodes(&page).await.map(Json)
}

pub(crate) async fn drain_node(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath((region, cluster, node)): ApiPath<(String, String, String)>,
) -> Answer<super::cluster::NodeView> {
    service
        .set_node_draining(&scope, &region, &cluster, &node, true)
        .await
        .map(Json)
}

pub(crate) async fn undrain_node(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath((region, cluster, node)): ApiPath<(String, String, String)>,
) -> Answer<super::cluster::NodeView> {
    service
        .set_node_draining(&scope, &region, &cluster, &node, false)
        .await
        .map(Json)
}

pub(crate) async fn add_member(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<AddMemberRequest>,
) -> Created<crate::node::MemberStatus> {
    service.add_member(&scope, req).await.map(created)
}

pub(crate) async fn remove_member(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<u64>,
) -> Empty {
    service
        .remove_member(&scope, id)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

// ---- jobs and usage ----

pub(crate) async fn submit_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<SubmitJobRequest>,
) -> Created<JobView> {
    service.submit_job(&scope, req).await.map(created)
}

pub(crate) async fn list_jobs(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(query): ApiQuery<JobListQuery>,
) -> Answer<super::service::ListPage<JobView>> {
    service.list_jobs(&scope, &query).await.map(Json)
}

pub(crate) async fn get_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Answer<JobView> {
    service.get_job(&scope, &id).await.map(Json)
}

pub(crate) async fn cancel_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Answer<JobView> {
    service.cancel_job(&scope, &id).await.map(Json)
}

pub(crate) async fn job_logs(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Answer<JobLogsView> {
    service
        .read_job_logs(&scope, &id, &query)
        .await
        .map(|chunk| Json(JobLogsView::from(chunk)))
}

pub(crate) async fn usage(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Answer<crate::state::UsageReport> {
    service.usage(&scope, &query).await.map(Json)
}
