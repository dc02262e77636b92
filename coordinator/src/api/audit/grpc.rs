//! The audit log's gRPC face: `AuditService` as a thin adapter over the same operations as REST, its rows of
//! the gRPC method table, and the converter of its record (which destructures it, see `grpc/mod.rs`).

use protocol::pb;
use tonic::service::RoutesBuilder;
use tonic::Request;

use crate::api::grpc::{answer, scope_of, GrpcAdmin, GrpcResult};
use crate::api::routes::{grpc, op, GrpcMethod};
use crate::state::{Actor, AuditRecord};

use super::AuditQuery;

/// The audit log's gRPC methods.
pub(crate) static METHODS: &[GrpcMethod] = &[
    grpc("/meridian.v1.AuditService/ListAudit", &op::AUDIT_LIST),
    grpc("/meridian.v1.AuditService/VerifyAudit", &op::AUDIT_VERIFY),
];

/// Adds this domain's services, decoding messages up to `max_message_bytes`.
pub(crate) fn services(routes: &mut RoutesBuilder, admin: &GrpcAdmin, max_message_bytes: usize) {
    use pb::audit_service_server::AuditServiceServer;
    let n = max_message_bytes;
    routes.add_service(AuditServiceServer::new(admin.clone()).max_decoding_message_size(n));
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

// ---- converters ----

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
