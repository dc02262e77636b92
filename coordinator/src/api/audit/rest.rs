//! The audit log's REST face: the handlers of `/v1/audit` and `/v1/audit/verify`, and their rows of the
//! route table.

use axum::extract::State;
use axum::Json;

use crate::api::extract::ApiQuery;
use crate::api::openapi::schema;
use crate::api::rest::{Answer, Scoped};
use crate::api::routes::{endpoint, ok, op, HttpMethod, Route};
use crate::api::service::AdminService;

use super::verify::AuditVerification;
use super::{AuditList, AuditQuery};

const AUDIT_QUERY: &[(&str, &str)] = &[
    ("after_seq", "Return records with a larger sequence number."),
    ("page_size", "Records per page (default 100, at most 1000)."),
    (
        "page_token",
        "The next_page_token of the previous page (same as after_seq).",
    ),
];

/// The audit log's REST routes.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Get,
        path: "/v1/audit",
        op: &op::AUDIT_LIST,
        summary: "Read the hash-chained audit log by sequence number",
        request: None,
        query: AUDIT_QUERY,
        reply: ok(schema::<AuditList>),
        endpoint: endpoint!(list_audit),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/audit/verify",
        op: &op::AUDIT_VERIFY,
        summary: "Verify the audit log's hash chain on the server",
        request: None,
        query: &[],
        reply: ok(schema::<AuditVerification>),
        endpoint: endpoint!(verify_audit),
    },
];

async fn list_audit(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Answer<AuditList> {
    service.list_audit(&scope, &query).await.map(Json)
}

async fn verify_audit(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
) -> Answer<AuditVerification> {
    service.verify_audit(&scope).await.map(Json)
}
