//! The hash-chained audit log: records, their hashing, chain verification, paged reads and archiving.
//!
//! Every applied mutation (and every refused or denied attempt) appends one record inside the same `apply`,
//! so the chain is part of the replicated state. [`verify_chain`] depends on nothing but the records, so
//! exported JSON can be checked offline. Records are never rewritten.
//!
//! [`AuditLog`] is this domain's whole state, changed only here: the live records and, once old ones were
//! archived (`ArchiveAudit`, apply version 4), an [`AuditCheckpoint`] naming the last archived record and
//! its hash, from which the live records' chain continues. Archiving only forgets records; writing them out
//! (segments on a coordinator's disk) is the caller's I/O, done before the command is applied. This module
//! never reads a clock or touches a disk.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Actor, Applied, Command, DomainError, Outcome, RegistryState, Subject};

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
    /// Forgets the records with `seq <= through_seq` (already written out by every replica before it
    /// applies this) and keeps a checkpoint of the last one. Only the system proposes it (the leader's
    /// audit-archive controller); refused below apply version 4 and when `through_seq` is not a record the
    /// state holds.
    ArchiveAudit { through_seq: u64 },
}

/// The apply version that knows `ArchiveAudit`.
pub const ARCHIVE_APPLY_VERSION: u32 = 4;

impl AuditOp {
    /// What the audit log records this command as.
    pub(super) fn subject(&self) -> Subject {
        match self {
            AuditOp::RecordAudit {
                action,
                project,
                target,
                ..
            } => Subject::of(action, project.as_ref(), target),
            AuditOp::ArchiveAudit { through_seq } => {
                Subject::of("audit.archive", None, &through_seq.to_string())
            }
        }
    }
}

/// Where the live records' chain continues from once older records were archived: the last archived
/// record's seq and hash, and how many records were archived in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The last archived record's seq; the first live record has `seq + 1`.
    pub seq: u64,
    /// That record's hash: the first live record's `prev_hash`.
    pub hash: String,
    /// Records archived in all (every seq from 1 to `seq`).
    pub archived: u64,
    /// The bootstrap principal, named by the archived `system.bootstrap` record (see
    /// [`AuditLog::bootstrap_principal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_principal: Option<String>,
}

/// The audit log: the live records in seq order and the checkpoint of what was archived before them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditLog {
    records: Vec<AuditRecord>,
    checkpoint: Option<AuditCheckpoint>,
}

impl AuditLog {
    /// A log holding a snapshot's records after its checkpoint.
    pub(super) fn from_wire(
        records: Vec<AuditRecord>,
        checkpoint: Option<AuditCheckpoint>,
    ) -> Self {
        Self {
            records,
            checkpoint,
        }
    }

    /// The live records, oldest first.
    pub fn records(&self) -> &[AuditRecord] {
        &self.records
    }

    /// The checkpoint of the archived records, once some were archived.
    pub fn checkpoint(&self) -> Option<&AuditCheckpoint> {
        self.checkpoint.as_ref()
    }

    /// The newest record.
    pub fn last(&self) -> Option<&AuditRecord> {
        self.records.last()
    }

    /// How many live records there are.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is live.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The live records, oldest first.
    pub fn iter(&self) -> std::slice::Iter<'_, AuditRecord> {
        self.records.iter()
    }

    /// The seq and hash the next record follows: the newest live record's, else the checkpoint's, else 0
    /// and [`GENESIS_HASH`].
    pub fn head(&self) -> (u64, &str) {
        match (self.records.last(), &self.checkpoint) {
            (Some(r), _) => (r.seq, r.hash.as_str()),
            (None, Some(c)) => (c.seq, c.hash.as_str()),
            (None, None) => (0, GENESIS_HASH),
        }
    }

    /// The last archived seq (0 when nothing was archived).
    pub fn archived_through(&self) -> u64 {
        self.checkpoint.as_ref().map_or(0, |c| c.seq)
    }

    /// A verifier that checks the live records from the checkpoint on (from genesis when none).
    pub fn live_verifier(&self) -> ChainVerifier {
        match &self.checkpoint {
            Some(c) => ChainVerifier::after(c.seq, &c.hash),
            None => ChainVerifier::default(),
        }
    }

    /// The live records with `seq <= through_seq`, when `through_seq` is a live record; what an
    /// `ArchiveAudit { through_seq }` would forget.
    pub fn through(&self, through_seq: u64) -> Option<&[AuditRecord]> {
        let first = self.records.first()?.seq;
        let pos = usize::try_from(through_seq.checked_sub(first)?).ok()?;
        (pos < self.records.len()).then(|| &self.records[..=pos])
    }

    /// The principal the first successful `system.bootstrap` record names, live or archived.
    pub fn bootstrap_principal(&self) -> Option<&str> {
        self.checkpoint
            .as_ref()
            .and_then(|c| c.bootstrap_principal.as_deref())
            .or_else(|| bootstrap_target(&self.records))
    }

    fn push(&mut self, record: AuditRecord) {
        self.records.push(record);
    }

    /// Forgets the live records through `through_seq` and moves the checkpoint to the last of them.
    fn archive(&mut self, through_seq: u64) -> Result<&AuditCheckpoint, DomainError> {
        let count = self
            .through(through_seq)
            .map(<[AuditRecord]>::len)
            .ok_or_else(|| DomainError::not_found("audit record", &through_seq.to_string()))?;
        let archived: Vec<AuditRecord> = self.records.drain(..count).collect();
        let bootstrap_principal = self
            .bootstrap_principal()
            .map(str::to_owned)
            .or_else(|| bootstrap_target(&archived).map(str::to_owned));
        // Invariant: `through` found `through_seq` among the live records, so at least one was drained.
        let last = archived
            .last()
            .expect("archiving drains at least one record");
        let before = self.checkpoint.as_ref().map_or(0, |c| c.archived);
        Ok(self.checkpoint.insert(AuditCheckpoint {
            seq: last.seq,
            hash: last.hash.clone(),
            archived: before.saturating_add(count as u64),
            bootstrap_principal,
        }))
    }

    /// Empties the live log (tests that compare states without it).
    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        self.records.clear();
    }
}

/// The target of the first successful `system.bootstrap` record among `records`.
fn bootstrap_target(records: &[AuditRecord]) -> Option<&str> {
    records
        .iter()
        .find(|r| r.action == "system.bootstrap" && r.outcome == AuditOutcome::Success)
        .map(|r| r.target.as_str())
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
    /// A verifier whose next record must be `seq + 1` and follow `hash`: it continues a chain checked
    /// elsewhere (archived segments) or vouched for by a checkpoint.
    pub fn after(seq: u64, hash: &str) -> Self {
        Self {
            last: Some((seq, hash.to_owned())),
        }
    }

    /// The seq and hash of the last record checked (or given to [`ChainVerifier::after`]).
    pub fn last(&self) -> Option<(u64, &str)> {
        self.last.as_ref().map(|(seq, hash)| (*seq, hash.as_str()))
    }

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
    /// Set when the page was asked to start below the checkpoint: the records through this seq are
    /// archived (on the coordinators' disks, not in the state), so the page starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_through_seq: Option<u64>,
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
    /// Applies one audit command other than `RecordAudit`, which `apply` records on its own path.
    pub(super) fn execute_audit(
        &mut self,
        actor: &Actor,
        op: &AuditOp,
    ) -> Result<Applied, DomainError> {
        match op {
            AuditOp::RecordAudit { .. } => Ok(Applied::new(Outcome::Done, "")),
            AuditOp::ArchiveAudit { through_seq } => self.archive_audit(actor, *through_seq),
        }
    }

    fn archive_audit(&mut self, actor: &Actor, through_seq: u64) -> Result<Applied, DomainError> {
        if *actor != Actor::system() {
            return Err(DomainError::PermissionDenied(
                "only the coordinators archive the audit log".to_owned(),
            ));
        }
        if self.apply_version < ARCHIVE_APPLY_VERSION {
            return Err(DomainError::FailedPrecondition(format!(
                "archiving the audit log needs apply version {ARCHIVE_APPLY_VERSION}; the registry is at {}",
                self.apply_version
            )));
        }
        let from = self.audit.archived_through().saturating_add(1);
        let checkpoint = self.audit.archive(through_seq)?.clone();
        let detail = format!(
            "archived seq {from}..={} ({} archived in all)",
            checkpoint.seq, checkpoint.archived
        );
        Ok(Applied::new(Outcome::AuditArchived { checkpoint }, detail))
    }

    /// The live records an `ArchiveAudit` by `actor` through `through_seq` would archive if applied now,
    /// `None` when it would be refused: what a coordinator writes out before applying it.
    pub fn audit_to_archive(&self, actor: &Actor, through_seq: u64) -> Option<&[AuditRecord]> {
        if *actor != Actor::system() || self.apply_version < ARCHIVE_APPLY_VERSION {
            return None;
        }
        self.audit.through(through_seq)
    }

    /// Appends a record for `cmd`; returns its seq.
    pub fn append_audit(
        &mut self,
        cmd: &Command,
        at_ms: u64,
        subject: &Subject,
        outcome: AuditOutcome,
        detail: String,
    ) -> u64 {
        let (seq, prev_hash) = {
            let (last, hash) = self.audit.head();
            (last + 1, hash.to_owned())
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

    /// Live records with `seq > after_seq`, at most `limit` (clamped to 1..=1000), only those of `project`
    /// when given. Records are stored in seq order without gaps after the checkpoint, so the start is found
    /// without a scan; a start below the checkpoint is answered from the first live record on, saying the
    /// records before it are archived.
    pub fn audit_page(&self, after_seq: u64, limit: usize, project: Option<&str>) -> AuditPage {
        let limit = limit.clamp(1, super::MAX_PAGE_SIZE);
        let archived = self.audit.archived_through();
        let start = usize::try_from(after_seq.saturating_sub(archived))
            .unwrap_or(usize::MAX)
            .min(self.audit.len());
        let mut records = Vec::new();
        let mut next_after_seq = None;
        for r in self.audit.records()[start..]
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
            archived_through_seq: (after_seq < archived).then_some(archived),
        }
    }

    /// The last record's seq and hash (the checkpoint's once every live record was archived; `0` and
    /// [`GENESIS_HASH`] when empty).
    pub fn audit_head(&self) -> (u64, &str) {
        self.audit.head()
    }

    /// The live records, after the checkpoint (for export and verification).
    pub fn audit_records(&self) -> &[AuditRecord] {
        self.audit.records()
    }

    /// The audit log: live records and the checkpoint of the archived ones.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }
}
