//! Secrets' REST face: the handlers of `/v1/secrets` and `/v1/secrets:rewrap`, and their rows of the route
//! table.

use axum::extract::State;
use axum::Json;
use http::StatusCode;

use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::api::openapi::schema;
use crate::api::rest::{created_json, Answer, Created, Empty, Scoped};
use crate::api::routes::{created, endpoint, ok, op, HttpMethod, Route, NO_CONTENT, PAGING};
use crate::api::service::{AdminService, ListPage, PageParams};

use super::{PutSecretRequest, RewrapQuery, RewrapResult, SecretResource};

const REWRAP_QUERY: &[(&str, &str)] = &[(
    "new_data_keys",
    "true: also replace every project's data key and re-encrypt every secret version under it, in one \
     command (default false: re-wrap the data keys only).",
)];

/// Secrets' REST routes.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Post,
        path: "/v1/secrets",
        op: &op::SECRET_PUT,
        summary: "Create a secret or add a version (the value is encrypted and never returned)",
        request: Some(schema::<PutSecretRequest>),
        query: &[],
        reply: created(schema::<SecretResource>),
        endpoint: endpoint!(put_secret),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/secrets",
        op: &op::SECRET_LIST,
        summary: "List the project's secrets (names, versions, bindings)",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<SecretResource>>),
        endpoint: endpoint!(list_secrets),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/secrets/{name}",
        op: &op::SECRET_GET,
        summary: "Get a secret's metadata",
        request: None,
        query: &[],
        reply: ok(schema::<SecretResource>),
        endpoint: endpoint!(get_secret),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/secrets/{name}",
        op: &op::SECRET_DELETE,
        summary: "Delete a secret and all its versions",
        request: None,
        query: &[],
        reply: NO_CONTENT,
        endpoint: endpoint!(delete_secret),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/secrets:rewrap",
        op: &op::SECRET_REWRAP,
        summary:
            "Re-wrap every project's data key with the current master key (or, with new_data_keys, \
                  replace the data keys and re-encrypt every secret version)",
        request: None,
        query: REWRAP_QUERY,
        reply: ok(schema::<RewrapResult>),
        endpoint: endpoint!(rewrap_secrets),
    },
];

async fn put_secret(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<PutSecretRequest>,
) -> Created<SecretResource> {
    service.put_secret(&scope, req).await.map(created_json)
}

async fn list_secrets(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<ListPage<SecretResource>> {
    service.list_secrets(&scope, &page).await.map(Json)
}

async fn get_secret(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(name): ApiPath<String>,
) -> Answer<SecretResource> {
    service.get_secret(&scope, &name).await.map(Json)
}

async fn delete_secret(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(name): ApiPath<String>,
) -> Empty {
    service
        .delete_secret(&scope, &name)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

async fn rewrap_secrets(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(query): ApiQuery<RewrapQuery>,
) -> Answer<RewrapResult> {
    service
        .rewrap_secrets(&scope, query.new_data_keys)
        .await
        .map(Json)
}
