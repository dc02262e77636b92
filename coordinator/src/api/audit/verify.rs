//! `GET /v1/audit/verify` (and `AuditService/VerifyAudit`): the whole audit chain checked on this
//! coordinator, from genesis through the archived segments on its disk up to the state's checkpoint, then
//! the live records from the checkpoint on.
//!
//! Owns [`AuditVerification`], the report both faces return. Segments are streamed on a blocking thread
//! without the state's lock; the live records are hashed a chunk per hold of the lock, letting writers in
//! between chunks. Archived seqs this coordinator has no segment for (it installed a snapshot taken after
//! they were archived) are reported in `missing` and make the report not `ok`: they are never counted as
//! verified. It never changes the state.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::auth::RequestScope;
use crate::api::error::ServiceError;
use crate::api::service::AdminService;
use crate::audit_archive::{verify_segments, MissingRange, SegmentReport};
use crate::authz::Action;
use crate::state::{AuditCheckpoint, AuditRecord};

/// Live records hashed per hold of the state's read lock.
const VERIFY_CHUNK: usize = 1024;

/// How often verification starts over when records are archived while it runs.
const ATTEMPTS: usize = 3;

/// What verifying the audit chain found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    /// The whole chain verified: nothing broken, nothing missing.
    pub ok: bool,
    /// Records checked that the caller can read (the whole log for platform readers): archived and live.
    pub records: u64,
    /// Of `records`, those read from the archived segments.
    pub archived_records: u64,
    /// Of `records`, those in the replicated state after the checkpoint.
    pub live_records: u64,
    /// Archived seqs this coordinator holds no segment for; not verified.
    pub missing: Vec<MissingRange>,
    pub broken_at_seq: Option<u64>,
    /// The segment file where the chain breaks, when it breaks in the archive.
    pub broken_segment: Option<String>,
    pub error: Option<String>,
}

/// One run through the live records: checked, visible, and the break when there is one.
enum Live {
    Checked {
        visible: u64,
    },
    Broken {
        visible: u64,
        seq: u64,
        error: String,
    },
    /// Records still to check were archived meanwhile: start over.
    Archived,
}

impl AdminService {
    pub(crate) async fn verify_audit(
        &self,
        scope: &RequestScope,
    ) -> Result<AuditVerification, ServiceError> {
        let platform = self.platform_allows(&scope.caller, Action::ReadAudit);
        self.consistent().await?;
        let project = (!platform).then(|| scope.project_id.clone());
        for _ in 0..ATTEMPTS {
            if let Some(report) = self.verify_once(project.as_deref()).await? {
                return Ok(report);
            }
        }
        Err(ServiceError::unavailable(
            "the audit log kept being archived while it was verified; try again",
        ))
    }

    /// Verifies the archive up to the checkpoint as it is now, then the live records from it; `None` when
    /// records were archived meanwhile.
    async fn verify_once(
        &self,
        project: Option<&str>,
    ) -> Result<Option<AuditVerification>, ServiceError> {
        let handle = self.handle();
        let (checkpoint, end) = handle.read(|s| {
            let log = s.audit_log();
            (log.checkpoint().cloned(), s.audit_head().0)
        });
        let archive = handle.audit_archive().clone();
        let owned_project = project.map(str::to_owned);
        let segments_checkpoint = checkpoint.clone();
        let segments = tokio::task::spawn_blocking(move || {
            let visible = |r: &AuditRecord| is_visible(owned_project.as_deref(), r);
            verify_segments(&archive, segments_checkpoint.as_ref(), &visible)
        })
        .await
        .map_err(|e| ServiceError::internal(format!("audit archive verification: {e}")))?
        .map_err(|e| ServiceError::internal(format!("audit archive: {e}")))?;
        if let Some(broken) = &segments.broken {
            return Ok(Some(AuditVerification {
                ok: false,
                records: segments.visible,
                archived_records: segments.visible,
                live_records: 0,
                missing: segments.missing.clone(),
                broken_at_seq: Some(broken.seq),
                broken_segment: Some(broken.segment.clone()),
                error: Some(format!(
                    "audit chain broken at seq {} in archived segment {}: {}",
                    broken.seq, broken.segment, broken.reason
                )),
            }));
        }
        Ok(
            match self.verify_live(checkpoint.as_ref(), end, project).await {
                Live::Archived => None,
                Live::Checked { visible } => Some(report(&segments, visible, None)),
                Live::Broken {
                    visible,
                    seq,
                    error,
                } => Some(report(&segments, visible, Some((seq, error)))),
            },
        )
    }

    /// Hashes the live records from `checkpoint` through seq `end`, a chunk per hold of the lock.
    async fn verify_live(
        &self,
        checkpoint: Option<&AuditCheckpoint>,
        end: u64,
        project: Option<&str>,
    ) -> Live {
        let mut verifier = match checkpoint {
            Some(c) => crate::state::ChainVerifier::after(c.seq, &c.hash),
            None => crate::state::ChainVerifier::default(),
        };
        let mut next = checkpoint.map_or(1, |c| c.seq + 1);
        let mut visible = 0u64;
        while next <= end {
            let step = self.handle().read(|s| {
                let archived = s.audit_log().archived_through();
                if next <= archived {
                    return None;
                }
                let all = s.audit_records();
                let at = usize::try_from(next - archived - 1).unwrap_or(usize::MAX);
                let upto = usize::try_from(end - archived)
                    .unwrap_or(usize::MAX)
                    .min(at.saturating_add(VERIFY_CHUNK))
                    .min(all.len());
                let chunk = &all[at.min(upto)..upto];
                let seen = chunk.iter().filter(|r| is_visible(project, r)).count() as u64;
                Some((verifier.feed(chunk), seen, chunk.len() as u64))
            });
            let Some((result, seen, len)) = step else {
                return Live::Archived;
            };
            visible += seen;
            if let Err(e) = result {
                return Live::Broken {
                    visible,
                    seq: e.seq,
                    error: e.to_string(),
                };
            }
            if len == 0 {
                break;
            }
            next += len;
            tokio::task::yield_now().await;
        }
        Live::Checked { visible }
    }
}

fn is_visible(project: Option<&str>, r: &AuditRecord) -> bool {
    project.is_none() || r.project.as_deref() == project
}

fn report(segments: &SegmentReport, live: u64, broken: Option<(u64, String)>) -> AuditVerification {
    let missing = segments.missing.clone();
    let error = match (&broken, missing.first()) {
        (Some((_, e)), _) => Some(e.clone()),
        (None, Some(_)) => Some(format!(
            "archived records {} are not on this coordinator (it joined after they were archived) \
             and were not verified",
            missing
                .iter()
                .map(|m| format!("{}..={}", m.from_seq, m.to_seq))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        (None, None) => None,
    };
    AuditVerification {
        ok: broken.is_none() && missing.is_empty(),
        records: segments.visible + live,
        archived_records: segments.visible,
        live_records: live,
        missing,
        broken_at_seq: broken.map(|(seq, _)| seq),
        broken_segment: None,
        error,
    }
}
