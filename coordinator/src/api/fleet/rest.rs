//! The fleet's REST face: the handlers of `/v1/nodes` (list, drain, undrain, approve), a cluster's admission
//! policy (`/v1/clusters/{region}/{cluster}/policy`) and the deny-list (`/v1/denied-identities`), and their
//! rows of the route table.

use axum::extract::State;
use axum::Json;

use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::api::openapi::schema;
use crate::api::rest::{created_json, Answer, Created, Scoped};
use crate::api::routes::{created, endpoint, ok, op, HttpMethod, Route, PAGING};
use crate::api::service::{AdminService, ListPage, PageParams};
use crate::state::DeniedIdentity;

use super::{
    AllowIdentityRequest, ClusterPolicyRequest, ClusterPolicyView, DenyIdentityRequest, NodeView,
};

/// The fleet's REST routes.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Get,
        path: "/v1/nodes",
        op: &op::NODE_LIST,
        summary: "List the nodes agents registered: resources, GPUs, labels, idle GPUs, health and lease epoch",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<NodeView>>),
        endpoint: endpoint!(list_nodes),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/nodes/{region}/{cluster}/{node}:drain",
        op: &op::NODE_DRAIN,
        summary: "Drain a node: the scheduler places no new work on it; jobs already there keep running",
        request: None,
        query: &[],
        reply: ok(schema::<NodeView>),
        endpoint: endpoint!(drain_node),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/nodes/{region}/{cluster}/{node}:undrain",
        op: &op::NODE_UNDRAIN,
        summary: "Undrain a node: it receives new work again",
        request: None,
        query: &[],
        reply: ok(schema::<NodeView>),
        endpoint: endpoint!(undrain_node),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/nodes/{region}/{cluster}/{node}:approve",
        op: &op::NODE_APPROVE,
        summary: "Approve a node (pending, or quarantined for reporting more than was approved) with the resources and labels it reports now",
        request: None,
        query: &[],
        reply: ok(schema::<NodeView>),
        endpoint: endpoint!(approve_node),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/clusters/{region}/{cluster}/policy",
        op: &op::CLUSTER_POLICY_SET,
        summary: "Set whether nodes new to a cluster are approved on arrival (otherwise they wait for approval)",
        request: Some(schema::<ClusterPolicyRequest>),
        query: &[],
        reply: ok(schema::<ClusterPolicyView>),
        endpoint: endpoint!(set_cluster_policy),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/denied-identities",
        op: &op::IDENTITY_DENY_LIST,
        summary: "List the mesh deny-list: identities and certificates every coordinator and agent refuses",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<DeniedIdentity>>),
        endpoint: endpoint!(list_denied),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/denied-identities",
        op: &op::IDENTITY_DENY,
        summary: "Deny an identity, a certificate (by serial) or a node's agent: refused at once, its open connections closed within seconds",
        request: Some(schema::<DenyIdentityRequest>),
        query: &[],
        reply: created(schema::<DeniedIdentity>),
        endpoint: endpoint!(deny_identity),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/denied-identities:remove",
        op: &op::IDENTITY_ALLOW,
        summary: "Remove a deny-list entry",
        request: Some(schema::<AllowIdentityRequest>),
        query: &[],
        reply: ok(schema::<DeniedIdentity>),
        endpoint: endpoint!(allow_identity),
    },
];

// ---- nodes ----

async fn list_nodes(
    State(service): State<AdminService>,
    _scope: Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<ListPage<NodeView>> {
    service.list_nodes(&page).await.map(Json)
}

async fn drain_node(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath((region, cluster, node)): ApiPath<(String, String, String)>,
) -> Answer<NodeView> {
    service
        .set_node_draining(&scope, &region, &cluster, &node, true)
        .await
        .map(Json)
}

async fn undrain_node(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath((region, cluster, node)): ApiPath<(String, String, String)>,
) -> Answer<NodeView> {
    service
        .set_node_draining(&scope, &region, &cluster, &node, false)
        .await
        .map(Json)
}

async fn approve_node(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath((region, cluster, node)): ApiPath<(String, String, String)>,
) -> Answer<NodeView> {
    service
        .approve_node(&scope, &region, &cluster, &node)
        .await
        .map(Json)
}

// ---- cluster admission policy ----

async fn set_cluster_policy(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath((region, cluster)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<ClusterPolicyRequest>,
) -> Answer<ClusterPolicyView> {
    service
        .set_cluster_policy(&scope, &region, &cluster, req)
        .await
        .map(Json)
}

// ---- deny-list ----

async fn deny_identity(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<DenyIdentityRequest>,
) -> Created<DeniedIdentity> {
    service.deny_identity(&scope, req).await.map(created_json)
}

async fn allow_identity(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<AllowIdentityRequest>,
) -> Answer<DeniedIdentity> {
    service.allow_identity(&scope, req).await.map(Json)
}

async fn list_denied(
    State(service): State<AdminService>,
    _scope: Scoped,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Answer<ListPage<DeniedIdentity>> {
    service.list_denied(&page).await.map(Json)
}
