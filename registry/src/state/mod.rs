//! The registry's replicated state and its pure `apply`.
//!
//! Owns tenancy (projects, principals, API keys, role bindings), the hash-chained audit log, the
//! envelope-encrypted secrets, the fleet registry and the jobs placed on it, the per-hour usage archive of
//! purged jobs, plus the project-scoped read accessors every API route goes through.
//!
//! Each domain module owns its commands (an op sub-enum with its audit subject and `execute_<domain>`; [`Op`]
//! routes to them, `op.rs` keeps their one wire form), its outcomes (a sub-enum under [`Outcome`], whose
//! wire form `outcome.rs` keeps) and its state, a type with private fields that only
//! its own commands change ([`Tenancy`], [`SecretStore`], [`Fleet`], [`JobTable`] — records and indexes
//! behind one transition function — [`DenyList`], [`UsageArchive`], [`RequestLog`]). Changes that reach
//! across domains are routed by `RegistryState` methods in the owning domain's file. The snapshot's document
//! is `snapshot.rs`.
//!
//! Everything here is deterministic: no clock reads, no randomness, no I/O, no hash-map iteration order.
//! Times, ids, key hashes and ciphertexts arrive inside the [`Command`], stamped by the coordinator that
//! prepared it. Two replicas that applied the same log hold byte-identical state
//! ([`RegistryState::to_bytes`]). This module must never hold plaintext secrets or unwrapped keys.

#[cfg(test)]
mod access_tests;
mod audit;
mod dedup;
mod deny_list;
mod fleet;
mod jobs;
mod op;
mod outcome;
mod paging;
mod policy;
mod scope;
mod secrets;
mod snapshot;
mod tenancy;
#[cfg(test)]
mod tests;
mod usage;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use audit::{
    verify_chain, AuditChainError, AuditOutcome, AuditPage, AuditRecord, ChainVerifier,
    GENESIS_HASH,
};
pub use audit::{AuditCheckpoint, AuditLog, AuditOp, ARCHIVE_APPLY_VERSION};
pub use dedup::{OutcomeRef, RememberedRequest, RequestLog, REMEMBERED_REQUESTS};
pub use deny_list::IdentityOp;
pub use deny_list::IdentityOutcome;
pub use deny_list::{deny_id, normalize_serial, DeniedIdentity, DenyKind, DenyList};
pub use fleet::FleetOp;
pub use fleet::FleetOutcome;
pub use fleet::{
    cluster_key, node_key, ApprovedGpu, ApprovedResources, ClusterPolicy, Fleet, NodeAdmission,
    NodeHealthState, NodeRecord,
};
pub use jobs::JobOp;
pub use jobs::JobOutcome;
pub use jobs::{
    secret_binds_workload, Attempt, AttemptOutcome, EventAck, HeldAttempt, JobEventKind,
    JobEventOp, JobRecord, JobSpec, JobState, PlacementOp, ReplicaPlacement, RetryPolicy,
};
pub use jobs::{JobTable, MAX_REPLICAS};
pub use op::Op;
pub use paging::{Page, PageRequest, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use policy::{
    add as add_resources, job_reservation, running_quota_excess, spec_bytes, sub as sub_resources,
    NetworkPolicy, PolicyUpdate, ProjectLoad, ProjectPolicy, MAX_PREEMPTION_CEILING,
};
pub use scope::ProjectScope;
pub use secrets::SecretOp;
pub use secrets::SecretOutcome;
pub use secrets::{validate_secret_name, validate_workload_binding, BINDING_SYNTAX};
pub use secrets::{
    ResealedVersion, SealedValue, Secret, SecretBinding, SecretStore, SecretVersion,
    SecretVersionView, SecretView, WrappedKey,
};
pub use tenancy::TenancyOp;
pub use tenancy::TenancyOutcome;
pub use tenancy::{
    validate_description, validate_display_name, validate_id, validate_project_name,
};
pub use tenancy::{
    ApiKey, ApiKeyView, KeyLimits, KeyPrincipal, KeyState, Principal, PrincipalKind, Project,
    ProjectView, RoleBinding, Scope, Tenancy, DEFAULT_PROJECT_NAME,
};
pub use usage::{JobUsage, UsageArchive, UsageFigures, UsageReport, USAGE_BUCKET_MS};

/// A typed change to global state, committed through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Unix time in milliseconds, stamped before proposing.
    pub at_ms: u64,
    /// Who asked for it (recorded in the audit log).
    pub actor: Actor,
    /// What to do.
    pub op: Op,
    /// Unique id of the request, set before the command is first proposed. A command whose id was applied
    /// recently is not applied again: its first outcome is returned. That makes re-sending a write after a
    /// leader change safe (exactly once), even when the first attempt was committed before the crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The newest apply semantics this build knows. A replica applies a log with the semantics its state's
/// committed `apply_version` selects, never with whatever its own build prefers, so replicas of different
/// builds compute the same state during a rolling upgrade; the leader commits `SetApplyVersion` only once
/// every member runs a build that knows the version.
///
/// - 0: the original semantics.
/// - 1: command time is monotonic: a command stamped before the last applied one is applied at that one's
///   time (a new leader's clock may be behind), which canary windows, cooldowns and schedules rely on.
/// - 2: machine traffic (placements, agent reports, idle GPUs, health changes not made by a principal) is
///   counted in `machine_counters` instead of recorded in the audit log.
/// - 3: the dedup table remembers a job, project or node outcome by its id ([`OutcomeRef`]); a repeat of
///   the request answers the record as it is now.
/// - 4: `ArchiveAudit` forgets the oldest audit records, leaving a checkpoint the live chain continues
///   from (refused below this version).
/// - 5: an attempt whose exit reports `oom_killed` ended "out of memory" (with its limit) rather than
///   "killed by signal 9".
pub const APPLY_VERSION: u32 = 5;

/// The apply version from which an out-of-memory kill is recorded as such.
pub const OOM_APPLY_VERSION: u32 = 5;

impl Command {
    /// The apply version this command needs a build to know (`SetApplyVersion`, also inside a batch);
    /// `None` for every other command.
    pub fn apply_version_needed(&self) -> Option<u32> {
        match &self.op {
            Op::Cluster(ClusterOp::SetApplyVersion { version }) => Some(*version),
            Op::Cluster(ClusterOp::Batch { commands }) => commands
                .iter()
                .filter_map(Command::apply_version_needed)
                .max(),
            _ => None,
        }
    }

    /// A command stamped at `at_ms` on behalf of `actor`.
    pub fn new(at_ms: u64, actor: Actor, op: Op) -> Self {
        Self {
            at_ms,
            actor,
            op,
            request_id: None,
        }
    }
}

/// Who issued a command: an authenticated principal, or the system itself (bootstrap, internal upkeep).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Actor {
    /// The principal's id; `None` for the system.
    pub principal_id: Option<String>,
    /// Display name (principal name, or `system`).
    pub name: String,
    /// The API key the principal acted with. `apply` refuses the command when this key is revoked or expired
    /// at the command's time, or its principal is disabled, so a write admitted by a lagging replica cannot
    /// commit after the key was taken back. Absent for the system and in commands from before keys were
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl Actor {
    /// The system actor, used for bootstrap and internal commands.
    pub fn system() -> Self {
        Self {
            principal_id: None,
            name: "system".to_owned(),
            key_id: None,
        }
    }

    /// An authenticated principal.
    pub fn principal(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            principal_id: Some(id.into()),
            name: name.into(),
            key_id: None,
        }
    }

    /// This actor, acting with API key `key_id`.
    pub fn with_key(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }
}

/// The log itself and the cluster's apply semantics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterOp {
    /// Does nothing; used to commit an entry in a new term. Not audited.
    Noop,
    /// Several commands proposed together as one log entry (the leader's proposal batching). They are
    /// applied in order, each exactly as if it were its own entry (request id, audit record, outcome). Not
    /// audited itself; a batch inside a batch is refused.
    Batch { commands: Vec<Command> },
    /// The leader switches on newer apply semantics once every member runs a build that knows them (see
    /// [`APPLY_VERSION`]). Only the system proposes it; it never lowers the version.
    SetApplyVersion { version: u32 },
}

/// What a successfully applied command produced: a result every domain shares, or the domain's own
/// outcome. Its wire form is the flat one it always had (see `outcome.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing to report.
    Done,
    /// The object is gone.
    Deleted,
    /// An audit record was appended with this sequence number.
    Audited { seq: u64 },
    /// The outcome of each command of a batch, in order.
    Batch { outcomes: Vec<CommandOutcome> },
    /// The oldest audit records were archived; the live chain continues from this checkpoint.
    AuditArchived { checkpoint: AuditCheckpoint },
    /// A tenancy command's result.
    Tenancy(TenancyOutcome),
    /// A secrets command's result.
    Secrets(SecretOutcome),
    /// A fleet command's result.
    Fleet(FleetOutcome),
    /// A jobs command's result.
    Jobs(JobOutcome),
    /// A deny-list command's result.
    Identity(IdentityOutcome),
}

/// Why a committed command was refused by the domain (the entry is still committed; state is unchanged
/// except for the `refused` audit record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DomainError {
    /// The named object does not exist (or belongs to another project).
    #[error("{kind} {id} not found")]
    NotFound { kind: String, id: String },
    /// An object with this name (or id) already exists.
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: String, name: String },
    /// A field is malformed.
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    /// The object is not in a state that allows this.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The project's policy does not allow this much (pending jobs, bytes of specs, running resources).
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The acting key or principal is no longer valid (revoked, expired, disabled, gone).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The actor may not do this (e.g. grant a role it does not hold).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl DomainError {
    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::NotFound {
            kind: kind.to_owned(),
            id: id.to_owned(),
        }
    }

    pub fn exists(kind: &str, name: &str) -> Self {
        Self::AlreadyExists {
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// The result of applying one command.
pub type CommandOutcome = Result<Outcome, DomainError>;

/// The whole replicated registry.
///
/// Its snapshot form (`to_bytes`, and serde) is the flat document it always was: see `snapshot.rs`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryState {
    /// Index of the last applied log entry.
    pub applied_index: u64,
    /// Projects, principals, API keys and role bindings (their own domain state: see `tenancy.rs`).
    tenancy: Tenancy,
    /// The secrets, sealed (its own domain state: see `secrets.rs`).
    secrets: SecretStore,
    /// The audit log (its own domain state: only audit code appends or archives).
    audit: AuditLog,
    /// The recent requests' first outcomes, for exactly-once writes (its own state: see `dedup.rs`).
    requests: RequestLog,
    /// The fleet: node records and cluster admission policies (its own domain state: see `fleet.rs`).
    fleet: Fleet,
    /// The jobs and their indexes, changed only through the table's transition function.
    pub jobs: JobTable,
    /// The usage of purged jobs, per project and hour (its own domain state: see `usage.rs`).
    usage: UsageArchive,
    /// The mesh deny-list (its own domain state: only identity commands change it).
    identities: DenyList,
    /// Which apply semantics are on: 0 until the leader commits `SetApplyVersion` (see [`APPLY_VERSION`]).
    pub apply_version: u32,
    /// The time of the last applied command, kept from apply version 1 on (commands never go back in time).
    pub last_command_ms: u64,
    /// From apply version 2 on, machine traffic is counted here instead of recorded in the audit log
    /// (see [`is_machine_traffic`]): `ACTION/applied`, `ACTION/refused`, `job.event/accepted|stale`.
    pub machine_counters: BTreeMap<String, u64>,
}

/// Whether a command is machine traffic — placements, agent reports, idle GPUs, health changes, proposed
/// by the coordinators or an agent, not a principal — which from apply version 2 on is counted rather
/// than recorded in the audit log, so the log keeps what people did.
pub fn is_machine_traffic(cmd: &Command) -> bool {
    cmd.actor.principal_id.is_none()
        && matches!(
            cmd.op,
            Op::Jobs(JobOp::PlaceJobs { .. })
                | Op::Jobs(JobOp::ReportJobEvents { .. })
                | Op::Fleet(FleetOp::SetIdleGpus { .. })
                | Op::Fleet(FleetOp::SetNodeHealth { .. })
        )
}

/// What a successful mutation tells the audit log besides the command's subject.
pub struct Applied {
    pub outcome: Outcome,
    pub detail: String,
}

impl Applied {
    pub fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
        }
    }
}

/// The audit subject of an operation: action name, project and target.
pub struct Subject {
    pub action: String,
    pub project: Option<String>,
    pub target: String,
}

impl Subject {
    /// A subject from borrowed parts.
    pub(super) fn of(action: &str, project: Option<&String>, target: &str) -> Subject {
        Subject {
            action: action.to_owned(),
            project: project.cloned(),
            target: target.to_owned(),
        }
    }
}

impl Op {
    /// The audit action this op records, e.g. `job.submit`: a stable name for logs.
    pub fn action(&self) -> String {
        self.subject().action
    }

    fn subject(&self) -> Subject {
        let s = Subject::of;
        match self {
            Op::Cluster(ClusterOp::Noop) => s("noop", None, ""),
            Op::Cluster(ClusterOp::Batch { .. }) => s("batch", None, ""),
            Op::Cluster(ClusterOp::SetApplyVersion { version }) => {
                s("cluster.apply_version", None, &version.to_string())
            }

            Op::Audit(op) => op.subject(),
            Op::Tenancy(op) => op.subject(),
            Op::Secrets(op) => op.subject(),
            Op::Fleet(op) => op.subject(),
            Op::Jobs(op) => op.subject(),
            Op::Identity(op) => op.subject(),
        }
    }
}

impl RegistryState {
    /// Applies one committed command at log index `index`.
    ///
    /// Pure: the result depends only on `self` and `cmd`. A refused command leaves the state unchanged except
    /// for its `refused` audit record.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> CommandOutcome {
        if let Op::Cluster(ClusterOp::Batch { commands }) = &cmd.op {
            self.applied_index = index;
            if commands
                .iter()
                .any(|c| matches!(c.op, Op::Cluster(ClusterOp::Batch { .. })))
            {
                return Err(DomainError::invalid(
                    "commands",
                    "a batch cannot hold a batch",
                ));
            }
            let outcomes = commands.iter().map(|c| self.apply(index, c)).collect();
            return Ok(Outcome::Batch { outcomes });
        }
        let Some(request_id) = &cmd.request_id else {
            return self.apply_once(index, cmd);
        };
        if let Some(first) = self.requests.get(request_id) {
            self.applied_index = index;
            return self.repeat(first);
        }
        let outcome = self.apply_once(index, cmd);
        let remembered = RememberedRequest::of(index, &outcome, self.apply_version);
        self.requests.remember(index, request_id, remembered);
        outcome
    }

    fn apply_once(&mut self, index: u64, cmd: &Command) -> CommandOutcome {
        self.applied_index = index;
        if matches!(cmd.op, Op::Cluster(ClusterOp::Noop)) {
            return Ok(Outcome::Done);
        }
        let at = self.command_time(cmd.at_ms);
        let mut subject = cmd.op.subject();
        if let Op::Audit(AuditOp::RecordAudit {
            outcome, detail, ..
        }) = &cmd.op
        {
            return match audit::validate_recorded(&subject, detail) {
                Ok(()) => {
                    let seq = self.append_audit(cmd, at, &subject, *outcome, detail.clone());
                    Ok(Outcome::Audited { seq })
                }
                Err(e) => {
                    let subject = Subject {
                        action: "audit.record".to_owned(),
                        project: None,
                        target: String::new(),
                    };
                    self.append_audit(cmd, at, &subject, AuditOutcome::Refused, e.to_string());
                    Err(e)
                }
            };
        }
        // Objects addressed by id alone are attributed to their project when it is known.
        if subject.project.is_none() {
            subject.project = self.project_of_target(&cmd.op);
        }
        let result = self
            .check_actor(cmd, at)
            .and_then(|()| self.check_grant(cmd))
            .and_then(|()| self.execute(cmd, at));
        if self.apply_version >= 2 && is_machine_traffic(cmd) {
            self.count_machine_traffic(&subject.action, &result);
            return result.map(|applied| applied.outcome);
        }
        match result {
            Ok(applied) => {
                self.append_audit(cmd, at, &subject, AuditOutcome::Success, applied.detail);
                Ok(applied.outcome)
            }
            Err(e) => {
                self.append_audit(cmd, at, &subject, AuditOutcome::Refused, e.to_string());
                Err(e)
            }
        }
    }

    fn execute(&mut self, cmd: &Command, at: u64) -> Result<Applied, DomainError> {
        match &cmd.op {
            Op::Cluster(ClusterOp::Noop) => Ok(Applied::new(Outcome::Done, "")),
            Op::Audit(op) => self.execute_audit(&cmd.actor, op),
            // `apply` unpacks batches before they get here; one reaching this point was nested.
            Op::Cluster(ClusterOp::Batch { .. }) => Err(DomainError::invalid(
                "commands",
                "a batch cannot hold a batch",
            )),
            Op::Cluster(ClusterOp::SetApplyVersion { version }) => {
                self.set_apply_version(cmd, *version, at)
            }
            Op::Tenancy(op) => self.execute_tenancy(op, at),
            Op::Secrets(op) => self.execute_secrets(op, at),
            Op::Fleet(op) => self.execute_fleet(op, at),
            Op::Jobs(op) => self.execute_jobs(&cmd.actor, op, at),
            Op::Identity(op) => self.identities.execute(&cmd.actor, op, at),
        }
    }

    /// The answer to a repeated request: its first outcome, or the record it named as it is now.
    fn repeat(&self, first: &RememberedRequest) -> CommandOutcome {
        if let Some(outcome) = &first.outcome {
            return outcome.clone();
        }
        let gone = |what: &str| {
            Err(DomainError::FailedPrecondition(format!(
                "this request was applied at index {}; its {what} is gone since",
                first.index
            )))
        };
        match &first.record {
            Some(OutcomeRef::Job { id }) => match self.jobs.get(id) {
                Some(job) => Ok(Outcome::Jobs(JobOutcome::Job { job: job.clone() })),
                None => gone("job"),
            },
            Some(OutcomeRef::Project { id }) => match self.tenancy.project(id) {
                Some(project) => Ok(Outcome::Tenancy(TenancyOutcome::Project {
                    project: project.view(),
                })),
                None => gone("project"),
            },
            Some(OutcomeRef::Node { key }) => match self.fleet.get(key) {
                Some(node) => Ok(Outcome::Fleet(FleetOutcome::Node { node: node.clone() })),
                None => gone("node"),
            },
            None => gone("outcome"),
        }
    }

    /// Counts a machine command (see [`is_machine_traffic`]) instead of recording it in the audit log:
    /// `ACTION/applied` or `ACTION/refused`, and for agent reports the events accepted and stale.
    fn count_machine_traffic(&mut self, action: &str, result: &Result<Applied, DomainError>) {
        let mut bump = |name: String, by: u64| {
            if by > 0 {
                let counter = self.machine_counters.entry(name).or_insert(0);
                *counter = counter.saturating_add(by);
            }
        };
        match result {
            Ok(applied) => {
                bump(format!("{action}/applied"), 1);
                if let Outcome::Jobs(JobOutcome::JobEvents { acks }) = &applied.outcome {
                    let accepted = acks.iter().filter(|a| a.accepted).count() as u64;
                    bump("job.event/accepted".to_owned(), accepted);
                    bump("job.event/stale".to_owned(), acks.len() as u64 - accepted);
                }
            }
            Err(_) => bump(format!("{action}/refused"), 1),
        }
    }

    /// A counter of machine traffic (see [`is_machine_traffic`]), e.g. `job.report/applied`; 0 before apply
    /// version 2.
    pub fn machine_counter(&self, name: &str) -> u64 {
        self.machine_counters.get(name).copied().unwrap_or(0)
    }

    /// Moves the apply version forward (see [`APPLY_VERSION`]).
    fn set_apply_version(
        &mut self,
        cmd: &Command,
        version: u32,
        at: u64,
    ) -> Result<Applied, DomainError> {
        if cmd.actor.principal_id.is_some() || cmd.actor.key_id.is_some() {
            return Err(DomainError::PermissionDenied(
                "only the coordinators change the apply version".to_owned(),
            ));
        }
        if version < self.apply_version {
            return Err(DomainError::invalid(
                "version",
                format!("is {}; it never goes back", self.apply_version),
            ));
        }
        if version > APPLY_VERSION {
            // The state machine refuses such a command before `apply` (`Command::apply_version_needed`), so a
            // build this old stops instead of applying later commands with the wrong rules.
            return Err(DomainError::invalid(
                "version",
                format!("this build knows versions up to {APPLY_VERSION}"),
            ));
        }
        let was = self.apply_version;
        self.apply_version = version;
        if version >= 1 {
            self.last_command_ms = self.last_command_ms.max(at);
        }
        Ok(Applied::new(
            Outcome::Done,
            format!("apply version {was} -> {version}"),
        ))
    }

    /// The time a command is applied at: its own, except that from apply version 1 on it never goes back
    /// behind the last applied command's (a new leader's clock may be behind the old one's).
    fn command_time(&mut self, stamped: u64) -> u64 {
        if self.apply_version < 1 {
            return stamped;
        }
        let at = stamped.max(self.last_command_ms);
        self.last_command_ms = at;
        at
    }

    /// Refuses a command whose acting key is no longer valid at the command's time: unknown, revoked,
    /// expired, not the actor's, or its principal disabled or gone. The API checked all of this when it
    /// admitted the request, but on a replica that may have been behind; this check runs on the log's
    /// order, so a revocation committed first always wins.
    fn check_actor(&self, cmd: &Command, at: u64) -> Result<(), DomainError> {
        let Some(key_id) = &cmd.actor.key_id else {
            return Ok(());
        };
        let refused = |why: &str| Err(DomainError::Unauthenticated(format!("key {key_id} {why}")));
        let Some(key) = self.tenancy.key_by_id(key_id) else {
            return refused("does not exist");
        };
        if cmd.actor.principal_id.as_deref() != Some(key.principal_id.as_str()) {
            return refused("belongs to another principal");
        }
        match key.state_at(at) {
            KeyState::Active => {}
            KeyState::Revoked => return refused("was revoked"),
            KeyState::Expired => return refused("has expired"),
        }
        match self.tenancy.principal(&key.principal_id) {
            Some(p) if !p.disabled => Ok(()),
            Some(_) => refused("belongs to a disabled principal"),
            None => refused("belongs to a principal that no longer exists"),
        }
    }

    /// Refuses a key or a role binding its acting key could not grant at the command's place in the log
    /// (the API checked the same rules on a replica that may have been behind): see
    /// [`authz::check_key`](crate::authz::check_key) and [`authz::check_bind`](crate::authz::check_bind).
    /// Commands without an acting key (the system's, or logged by older builds) are not checked here.
    fn check_grant(&self, cmd: &Command) -> Result<(), DomainError> {
        if cmd.actor.key_id.is_none() {
            return Ok(());
        }
        let verdict = match &cmd.op {
            Op::Tenancy(TenancyOp::CreateKey {
                project_id,
                principal,
                role,
                expires_at,
                ..
            }) => Some(crate::authz::caller_of(self, &cmd.actor).map(|caller| {
                crate::authz::check_key(self, &caller, project_id, principal, *role, *expires_at)
            })),
            Op::Tenancy(TenancyOp::BindRole {
                principal_id,
                scope,
                role,
            }) => {
                Some(crate::authz::caller_of(self, &cmd.actor).map(|caller| {
                    crate::authz::check_bind(self, &caller, principal_id, scope, *role)
                }))
            }
            _ => None,
        };
        match verdict {
            None | Some(Some(Ok(()))) => Ok(()),
            Some(Some(Err(why))) => Err(DomainError::PermissionDenied(why)),
            // `check_actor` found the key a moment ago; it cannot be gone, but refuse rather than assume.
            Some(None) => Err(DomainError::Unauthenticated(
                "the acting key is unknown".to_owned(),
            )),
        }
    }

    fn project_of_target(&self, op: &Op) -> Option<String> {
        match op {
            Op::Tenancy(TenancyOp::RevokeKey { key_id }) => {
                self.tenancy.key_by_id(key_id).map(|k| k.project_id.clone())
            }
            Op::Tenancy(TenancyOp::SetPrincipalDisabled { id, .. }) => self
                .tenancy
                .principal(id)
                .and_then(|p| p.project_id.clone()),
            Op::Tenancy(TenancyOp::UnbindRole { binding_id }) => self
                .tenancy
                .binding(binding_id)
                .and_then(|b| b.scope.project_id().cloned()),
            _ => None,
        }
    }

    /// Canonical serialization (used for snapshots and the byte-identical replica check).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Invariant: the state is plain data (strings, integers, BTreeMaps, Vecs) with string map keys, which
        // serde_json always serializes.
        serde_json::to_vec(self).expect("registry state serializes")
    }

    /// Restores state from [`RegistryState::to_bytes`] output. Every job index is rebuilt from the jobs
    /// (`snapshot.rs`), so a snapshot written before an index existed loads complete, and a bootstrap
    /// principal that an older build gave to project `default` moves to the platform.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut state: Self = serde_json::from_slice(bytes)?;
        state.migrate_bootstrap_principal();
        Ok(state)
    }

    /// Tenancy, read-only: projects, principals, keys and bindings.
    pub fn tenancy(&self) -> &Tenancy {
        &self.tenancy
    }

    /// True once `Op::Bootstrap` has been applied.
    pub fn is_bootstrapped(&self) -> bool {
        self.tenancy.default_project_id().is_some()
    }

    /// The id of project `default` (after bootstrap).
    pub fn default_project_id(&self) -> Option<&str> {
        self.tenancy.default_project_id()
    }
}
