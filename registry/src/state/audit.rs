//! The hash-chained audit log: records, their hashing, chain verification and paged reads.
//!
//! Every applied mutation (and every refused or denied attempt) appends one record inside the same `apply`,
//! so the chain is part of the replicated state. [`verify_chain`] depends on nothing but the records, so
//! exported JSON can be checked offline. Records are never rewritten or removed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Actor, Command, DomainError, RegistryState, Subject};

/// Audit records written without any other change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOp {
    /// Records an attempt the API refused before proposing anything (e.g. a denied cross-project read), or
    /// an event that changes no state but must be on record (`secret.release`: secrets handed to an agent).
    RecordAudit {
        action: String,
        project: Option<String>,
        target: String,
        outcome: AuditOutcome,
        detail: String,
    },
}

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How an audited attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AuditOutcome {
    /// The mutation was applied.
    Success,
    /// The domain refused the command (duplicate name, missing object, ...).
    Refused,
    /// The API refused the caller before proposing anything (authorization).
    Denied,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    /// 1, 2, 3, ... without gaps.
    pub seq: u64,
    pub at_ms: u64,
    pub actor: Actor,
    /// e.g. `project.create`, `key.revoke`.
    pub action: String,
    /// The project concerned, when there is one.
    pub project: Option<String>,
    pub target: String,
    pub outcome: AuditOutcome,
    pub detail: String,
    /// `hash` of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over `prev_hash` followed by the canonical JSON of this record without `hash`.
    pub hash: String,
}

/// The hashed part of a record: every field but `hash`, in this order.
#[derive(Serialize)]
struct HashedFields<'a> {
    seq: u64,
    at_ms: u64,
    actor: &'a Actor,
    action: &'a str,
    project: &'a Option<String>,
    target: &'a str,
    outcome: AuditOutcome,
    detail: &'a str,
    prev_hash: &'a str,
}

impl AuditRecord {
    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        let fields = HashedFields {
            seq: self.seq,
            at_ms: self.at_ms,
            actor: &self.actor,
            action: &self.action,
            project: &self.project,
            target: &self.target,
            outcome: self.outcome,
            detail: &self.detail,
            prev_hash: &self.prev_hash,
        };
        // Invariant: a struct of strings and integers always serializes to JSON.
        let json = serde_json::to_vec(&fields).expect("audit fields serialize");
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(&json);
        hex::encode(h.finalize())
    }
}

/// Where and why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {reason}")]
pub struct AuditChainError {
    pub seq: u64,
    pub reason: String,
}

/// Checks a run of consecutive records: sequence numbers without gaps, each `prev_hash` equal to the previous
/// record's `hash`, each `hash` recomputed. A run that starts at seq 1 must start from [`GENESIS_HASH`]; a run
/// starting later is checked from its first record on.
pub fn verify_chain(records: &[AuditRecord]) -> Result<(), AuditChainError> {
    ChainVerifier::default().feed(records)
}

/// [`verify_chain`] a piece at a time: feeding consecutive runs one after another checks the same as
/// feeding them all at once, so a long log can be verified without holding it (or a lock on it) whole.
#[derive(Debug, Clone, Default)]
pub struct ChainVerifier {
    /// The last record checked: its seq and hash.
    last: Option<(u64, String)>,
}

impl ChainVerifier {
    /// Checks the next run of records, continuing from the last one fed.
    pub fn feed(&mut self, records: &[AuditRecord]) -> Result<(), AuditChainError> {
        for r in records {
            let fail = |reason: String| Err(AuditChainError { seq: r.seq, reason });
            match &self.last {
                None => {
                    if r.seq == 0 {
                        return fail("sequence numbers start at 1".to_owned());
                    }
                    if r.seq == 1 && r.prev_hash != GENESIS_HASH {
                        return fail("the first record must follow the genesis hash".to_owned());
                    }
                }
                Some((seq, hash)) => {
                    if seq.checked_add(1) != Some(r.seq) {
                        return fail(format!(
                            "expected seq {} after {}",
                            seq.saturating_add(1),
                            seq
                        ));
                    }
                    if r.prev_hash != *hash {
                        return fail(
                            "prev_hash does not match the previous record's hash".to_owned(),
                        );
                    }
                }
            }
            if r.compute_hash() != r.hash {
                return fail("hash does not match the record's contents".to_owned());
            }
            self.last = Some((r.seq, r.hash.clone()));
        }
        Ok(())
    }
}

/// One page of audit records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Pass as `after_seq` for the next page; `None` at the end.
    pub next_after_seq: Option<u64>,
}

pub fn validate_recorded(subject: &Subject, detail: &str) -> Result<(), DomainError> {
    let action_ok = !subject.action.is_empty()
        && subject.action.len() <= 64
        && subject
            .action
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !action_ok {
        return Err(DomainError::invalid(
            "action",
            "1-64 characters of [a-z0-9._-]",
        ));
    }
    if subject.target.len() > 256 {
        return Err(DomainError::invalid("target", "at most 256 characters"));
    }
    if detail.len() > 1024 {
        return Err(DomainError::invalid("detail", "at most 1024 characters"));
    }
    Ok(())
}

impl RegistryState {
    /// Appends a record for `cmd`; returns its seq.
    pub fn append_audit(
        &mut self,
        cmd: &Command,
        at_ms: u64,
        subject: &Subject,
        outcome: AuditOutcome,
        detail: String,
    ) -> u64 {
        let (seq, prev_hash) = match self.audit.last() {
            Some(last) => (last.seq + 1, last.hash.clone()),
            None => (1, GENESIS_HASH.to_owned()),
        };
        let mut record = AuditRecord {
            seq,
            at_ms,
            actor: cmd.actor.clone(),
            action: subject.action.clone(),
            project: subject.project.clone(),
            target: subject.target.clone(),
            outcome,
            detail,
            prev_hash,
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        self.audit.push(record);
        seq
    }

    /// Records with `seq > after_seq`, at most `limit` (clamped to 1..=1000), only those of `project` when
    /// given. Records are stored in seq order starting at 1, so the start is found without a scan.
    pub fn audit_page(&self, after_seq: u64, limit: usize, project: Option<&str>) -> AuditPage {
        let limit = limit.clamp(1, super::MAX_PAGE_SIZE);
        let start = usize::try_from(after_seq)
            .unwrap_or(usize::MAX)
            .min(self.audit.len());
        let mut records = Vec::new();
        let mut next_after_seq = None;
        for r in self.audit[start..]
            .iter()
            .filter(|r| project.is_none() || r.project.as_deref() == project)
        {
            if records.len() == limit {
                next_after_seq = records.last().map(|l: &AuditRecord| l.seq);
                break;
            }
            records.push(r.clone());
        }
        AuditPage {
            records,
            next_after_seq,
        }
    }

    /// The last record's seq and hash (`0` and [`GENESIS_HASH`] when empty).
    pub fn audit_head(&self) -> (u64, &str) {
        self.audit
            .last()
            .map_or((0, GENESIS_HASH), |r| (r.seq, r.hash.as_str()))
    }

    /// The whole log (for export and verification).
    pub fn audit_records(&self) -> &[AuditRecord] {
        &self.audit
    }
}
