//! The coordinator cluster's REST face: the handlers of `/v1/cluster/status` and `/v1/cluster/members`, and
//! their rows of the route table.

use axum::extract::State;
use axum::Json;
use http::StatusCode;

use crate::api::extract::{ApiJson, ApiPath};
use crate::api::openapi::schema;
use crate::api::rest::{created_json, Created, Empty, Scoped};
use crate::api::routes::{created, endpoint, ok, op, HttpMethod, Route, NO_CONTENT};
use crate::api::service::{AdminService, ListPage};
use crate::node::MemberStatus;

use super::{AddMemberRequest, ClusterOverview};

/// The coordinator cluster's REST routes.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Get,
        path: "/v1/cluster/status",
        op: &op::CLUSTER_STATUS,
        summary: "The coordinator cluster as this member sees it",
        request: None,
        query: &[],
        reply: ok(schema::<ClusterOverview>),
        endpoint: endpoint!(cluster_status),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/cluster/members",
        op: &op::MEMBER_LIST,
        summary: "List coordinator members",
        request: None,
        query: &[],
        reply: ok(schema::<ListPage<MemberStatus>>),
        endpoint: endpoint!(list_members),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/cluster/members",
        op: &op::MEMBER_ADD,
        summary: "Add a coordinator (as a learner, then a voter unless voter is false)",
        request: Some(schema::<AddMemberRequest>),
        query: &[],
        reply: created(schema::<MemberStatus>),
        endpoint: endpoint!(add_member),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/cluster/members/{id}",
        op: &op::MEMBER_REMOVE,
        summary: "Remove a coordinator",
        request: None,
        query: &[],
        reply: NO_CONTENT,
        endpoint: endpoint!(remove_member),
    },
];

async fn cluster_status(
    State(service): State<AdminService>,
    _scope: Scoped,
) -> Json<ClusterOverview> {
    Json(service.cluster_status())
}

async fn list_members(
    State(service): State<AdminService>,
    _scope: Scoped,
) -> Json<ListPage<MemberStatus>> {
    Json(service.list_members())
}

async fn add_member(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<AddMemberRequest>,
) -> Created<MemberStatus> {
    service.add_member(&scope, req).await.map(created_json)
}

async fn remove_member(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<u64>,
) -> Empty {
    service
        .remove_member(&scope, id)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}
