//! The admin API's audit listing: pages of the hash-chained log a caller may read (the whole log for platform
//! readers, a project's records otherwise), saying when the records asked for are archived. Verification is
//! `verify.rs`; the REST handlers and route rows are in `rest.rs`, the gRPC adapter and method rows in
//! `grpc.rs`.

pub(super) mod grpc;
pub(super) mod rest;
pub(crate) mod verify;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::authz::Action;
use crate::state::{self, AuditRecord, DEFAULT_PAGE_SIZE};

use super::auth::RequestScope;
use super::error::ServiceError;
use super::service::{query_u64, AdminService};

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) after_seq: Option<u64>,
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) page_size: Option<u64>,
    #[serde(default)]
    pub(crate) page_token: Option<String>,
}

/// One page of the audit log, by sequence number.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditRecord>,
    /// The `seq` to continue after, as text; empty at the end.
    pub next_page_token: String,
    pub next_after_seq: Option<u64>,
    /// Set when the caller asked for records below the checkpoint: the records through this seq are
    /// archived (on the coordinators' disks) and the page starts after them.
    pub archived_through_seq: Option<u64>,
}

impl AdminService {
    // ---- audit ----

    pub(crate) async fn list_audit(
        &self,
        scope: &RequestScope,
        query: &AuditQuery,
    ) -> Result<AuditList, ServiceError> {
        let from_token = match query.page_token.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(t.parse::<u64>().map_err(|_| {
                ServiceError::invalid("page_token", "not a token from a previous page")
            })?),
        };
        let after = from_token.or(query.after_seq).unwrap_or(0);
        let limit = match query.page_size {
            None | Some(0) => DEFAULT_PAGE_SIZE,
            Some(n) => usize::try_from(n)
                .unwrap_or(state::MAX_PAGE_SIZE)
                .min(state::MAX_PAGE_SIZE),
        };
        let platform = self.platform_allows(&scope.caller, Action::ReadAudit);
        self.consistent().await?;
        let page = self.inner.handle.read(|s| {
            if platform {
                s.audit_page(after, limit, None)
            } else {
                s.project_scope(&scope.project_id).audit(after, limit)
            }
        });
        Ok(AuditList {
            items: page.records,
            next_page_token: page
                .next_after_seq
                .map(|n| n.to_string())
                .unwrap_or_default(),
            next_after_seq: page.next_after_seq,
            archived_through_seq: page.archived_through_seq,
        })
    }
}
