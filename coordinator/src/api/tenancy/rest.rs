//! Tenancy's REST face: the handlers of `/v1/whoami`, `/v1/projects`, `/v1/principals`, `/v1/keys` and
//! `/v1/role-bindings`, and their rows of the route table.

use axum::extract::State;
use axum::Json;
use http::StatusCode;

use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::api::openapi::schema;
use crate::api::rest::{created_json, Answer, Created, Empty, Scoped};
use crate::api::routes::{created, endpoint, ok, op, HttpMethod, Route, NO_CONTENT, PAGING};
use crate::api::service::{AdminService, ListPage, PageParams};
use crate::state::{ApiKeyView, Principal, ProjectView};

use super::{
    CreateBindingRequest, CreateKeyRequest, CreateProjectRequest, CreateServiceAccountRequest,
    CreatedKey, RoleBindingView, SetPolicyRequest, WhoAmI,
};

/// Tenancy's REST routes.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Get,
        path: "/v1/whoami",
        op: &op::WHOAMI,
        summary: "The caller's principal, key, project and role bindings",
        request: None,
        query: &[],
        reply: ok(schema::<WhoAmI>),
        endpoint: endpoint!(whoami),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/projects",
        op: &op::PROJECT_CREATE,
        summary: "Create a project",
        request: Some(schema::<CreateProjectRequest>),
        query: &[],
        reply: created(schema::<ProjectView>),
        endpoint: endpoint!(create_project),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/projects",
        op: &op::PROJECT_LIST,
        summary: "List the projects the caller can see",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<ProjectView>>),
        endpoint: endpoint!(list_projects),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/projects/{project}",
        op: &op::PROJECT_GET,
        summary: "Get a project by id or name",
        request: None,
        query: &[],
        reply: ok(schema::<ProjectView>),
        endpoint: endpoint!(get_project),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/projects/{project}",
        op: &op::PROJECT_DELETE,
        summary: "Delete a project that holds no active keys and no secrets",
        request: None,
        query: &[],
        reply: NO_CONTENT,
        endpoint: endpoint!(delete_project),
    },
    Route {
        method: HttpMethod::Put,
        path: "/v1/projects/{project}/policy",
        op: &op::PROJECT_POLICY_SET,
        summary: "Change a project's policy (quotas, network, preemption ceiling); fields left out keep their value. Platform-admin only",
        request: Some(schema::<SetPolicyRequest>),
        query: &[],
        reply: ok(schema::<ProjectView>),
        endpoint: endpoint!(set_project_policy),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/principals",
        op: &op::PRINCIPAL_LIST,
        summary: "List the project's users and service accounts",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<Principal>>),
        endpoint: endpoint!(list_principals),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/principals",
        op: &op::PRINCIPAL_CREATE,
        summary: "Create a service account in the project",
        request: Some(schema::<CreateServiceAccountRequest>),
        query: &[],
        reply: created(schema::<Principal>),
        endpoint: endpoint!(create_service_account),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/keys",
        op: &op::KEY_CREATE,
        summary: "Create an API key (the token is returned once, here)",
        request: Some(schema::<CreateKeyRequest>),
        query: &[],
        reply: created(schema::<CreatedKey>),
        endpoint: endpoint!(create_key),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/keys",
        op: &op::KEY_LIST,
        summary: "List the project's keys (prefix and last four characters only)",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<ApiKeyView>>),
        endpoint: endpoint!(list_keys),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/keys/{id}",
        op: &op::KEY_GET,
        summary: "Get a key",
        request: None,
        query: &[],
        reply: ok(schema::<ApiKeyView>),
        endpoint: endpoint!(get_key),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/keys/{id}:revoke",
        op: &op::KEY_REVOKE,
        summary: "Revoke a key; it stops working on every coordinator",
        request: None,
        query: &[],
        reply: ok(schema::<ApiKeyView>),
        endpoint: endpoint!(revoke_key),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/keys/{id}",
        op: &op::KEY_DELETE,
        summary: "Revoke a key (same as :revoke)",
        request: None,
        query: &[],
        reply: ok(schema::<ApiKeyView>),
        endpoint: endpoint!(revoke_key),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/role-bindings",
        op: &op::BINDING_CREATE,
        summary: "Bind a role to a principal in the project (or platform-wide)",
        request: Some(schema::<CreateBindingRequest>),
        query: &[],
        reply: created(schema::<RoleBindingView>),
        endpoint: endpoint!(create_binding),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/role-bindings",
        op: &op::BINDING_LIST,
        summary: "List the project's role bindings",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<RoleBindingView>>),
        endpoint: endpoint!(list_bindings),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/role-bindings/{id}",
        op: &op::BINDING_DELETE,
        summary: "Remove a role binding",
        request: None,
        query: &[],
        reply: NO_CONTENT,
        endpoint: endpoint!(delete_binding),
    },
];

async fn whoami(State(service): State<AdminService>, Scoped(scope): Scoped) -> Answer<WhoAmI> {
    service.whoami(&scope).await.map(Json)
}

// ---- projects ----

async fn create_project(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<CreateProjectRequest>,
) -> Created<ProjectView> {
    service.create_project(&scope, req).await.map(created_json)
}

async fn list_projects(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<ListPage<ProjectView>> {
    service.list_projects(&scope, &page).await.map(Json)
}

async fn get_project(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(project): ApiPath<String>,
) -> Answer<ProjectView> {
    service.get_project(&scope, &project).await.map(Json)
}

async fn set_project_policy(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<SetPolicyRequest>,
) -> Answer<ProjectView> {
    service
        .set_project_policy(&scope, &project, req)
        .await
        .map(Json)
}

async fn delete_project(
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

async fn list_principals(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<ListPage<Principal>> {
    service.list_principals(&scope, &page).await.map(Json)
}

async fn create_service_account(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<CreateServiceAccountRequest>,
) -> Created<Principal> {
    service
        .create_service_account(&scope, req)
        .await
        .map(created_json)
}

// ---- keys ----

async fn create_key(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> Created<CreatedKey> {
    service.create_key(&scope, req).await.map(created_json)
}

async fn list_keys(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<ListPage<ApiKeyView>> {
    service.list_keys(&scope, &page).await.map(Json)
}

async fn get_key(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Answer<ApiKeyView> {
    service.get_key(&scope, &id).await.map(Json)
}

async fn revoke_key(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Answer<ApiKeyView> {
    service.revoke_key(&scope, &id).await.map(Json)
}

// ---- role bindings ----

async fn create_binding(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<CreateBindingRequest>,
) -> Created<RoleBindingView> {
    service.create_binding(&scope, req).await.map(created_json)
}

async fn list_bindings(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<ListPage<RoleBindingView>> {
    service.list_bindings(&scope, &page).await.map(Json)
}

async fn delete_binding(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Empty {
    service
        .delete_binding(&scope, &id)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}
