//! Jobs in the replicated registry: their specs, lifecycle, attempts and the indexes that keep the
//! scheduler's and the agents' reads cheap.
//!
//! Owns `SubmitJob`, `CancelJob`, `PlaceJobs` (the leader's scheduling pass), `ReportJobEvents` (what an
//! agent saw happen), `SetIdleGpus`, and the job side of a node's registration and loss. A job moves
//! `pending → scheduled → running → succeeded | failed | cancelled | lost`; a lost or failed attempt sends
//! it back to `pending` while its retry budget allows. Every report is fenced twice: by the node's lease
//! epoch (for the whole command) and by the job's current attempt (for each event), so a result from an
//! old registration or an old attempt never overrides the current one. `PurgeJobs` (the leader's janitor)
//! forgets terminal jobs, oldest first by the (finished_at, id) index, after folding their usage into the
//! project's per-hour archive (`usage.rs`).
//!
//! Like the rest of the state, this module must never read a clock, draw randomness or do I/O: every time
//! arrives inside the command. Floating point appears only in the usage report, which is computed on read
//! and never stored (see `usage.rs`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::policy::{add, running_quota_excess};
use super::tenancy::validate_id;
use super::{Applied, DomainError, Outcome, Page, PageRequest, RegistryState};
use crate::scheduler::{may_evict, Constraints, Locality, ResourceRequest, Resources, Strategy};

/// Longest job name, in bytes.
pub const MAX_JOB_NAME: usize = 128;
/// Longest command, in bytes.
pub const MAX_COMMAND: usize = 4096;
/// Most arguments a job may pass.
pub const MAX_ARGS: usize = 1024;
/// Most environment variables a job may set.
pub const MAX_ENV: usize = 1024;
/// Secrets one job may name.
pub const MAX_JOB_SECRETS: usize = 64;
/// Longest single argument, environment value or working directory, in bytes.
pub const MAX_VALUE: usize = 65_536;
/// Upper bound of [`RetryPolicy::max_attempts`].
pub const MAX_ATTEMPTS: u32 = 20;
/// Most replicas of one (gang) job.
pub const MAX_REPLICAS: u32 = 64;
/// Longest attempt detail or pending reason kept in the state, in bytes (longer ones are cut).
const MAX_DETAIL: usize = 1024;

/// Where a job is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the scheduler.
    Pending,
    /// Placed on a node; the agent has not reported it started yet.
    Scheduled,
    /// The agent started it.
    Running,
    /// Exited with code 0.
    Succeeded,
    /// Failed (non-zero exit, signal, timeout, launch error) with no retry left.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Its node was lost (or its process vanished) with no retry left.
    Lost,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Scheduled,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Lost,
    ];

    /// Lowercase name, as the API and CLI show it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Lost => "lost",
        }
    }

    /// True for the states a job never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Lost
        )
    }

    /// The state named by [`JobState::as_str`] (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
    }

    fn is_active(self) -> bool {
        matches!(self, JobState::Scheduled | JobState::Running)
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    Cancelled,
    Lost,
    /// Evicted for a higher-priority job; does not count against the retry budget.
    Preempted,
    /// Stopped because another replica of its gang ended the attempt (failed, was lost…).
    Stopped,
}

impl AttemptOutcome {
    /// Lowercase name, as the API and CLI show it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Preempted => "preempted",
            AttemptOutcome::Stopped => "stopped",
        }
    }
}

/// When a job is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (preempted ones not counted), 1..=20.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Also retry attempts that failed (non-zero exit, timeout, launch error); lost attempts are always
    /// retried while the budget allows.
    #[serde(default)]
    pub on_failure: bool,
}

fn default_max_attempts() -> u32 {
    3
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            on_failure: false,
        }
    }
}

fn default_cancel_grace_secs() -> u64 {
    10
}

fn yes() -> bool {
    true
}

fn one_replica() -> u32 {
    1
}

/// What a user asked to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Optional label, may be empty; at most 128 bytes.
    #[serde(default)]
    pub name: String,
    /// The program to run; required, at most 4096 bytes, no NUL.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `None`: a fresh directory for each attempt.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Resources of each replica.
    #[serde(default)]
    pub resources: ResourceRequest,
    /// Processes per attempt, 1..=64. More than one makes a gang: every replica is placed or none is, they
    /// start together, the job succeeds when all of them succeed, and one that fails or is lost ends the
    /// attempt for all of them.
    #[serde(default = "one_replica")]
    pub replicas: u32,
    #[serde(default)]
    pub constraints: Constraints,
    #[serde(default)]
    pub data_locality: Option<Locality>,
    #[serde(default)]
    pub priority: i32,
    /// May evict lower-priority preemptible jobs when nothing fits otherwise.
    #[serde(default)]
    pub preemption: bool,
    /// May be evicted by higher-priority jobs that opted into preemption.
    #[serde(default = "yes")]
    pub preemptible: bool,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Wall-clock limit of one attempt.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when the job is cancelled.
    #[serde(default = "default_cancel_grace_secs")]
    pub cancel_grace_secs: u64,
    /// Environment variable → name of a project secret bound to the job's principal (`principal:<id>`,
    /// `principal:<id>/job:<pattern>`). The value is decrypted only when the job's assignment is handed to
    /// its node's agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Also hand the secrets to the process as environment variables. Secrets always reach the job as
    /// files readable only by it; the environment (visible to everything the job starts and easily logged)
    /// is its explicit choice.
    #[serde(default, skip_serializing_if = "is_false")]
    pub secrets_env: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl JobSpec {
    /// A spec running `command` with the defaults for everything else.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            name: String::new(),
            command: command.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            resources: ResourceRequest::default(),
            replicas: 1,
            constraints: Constraints::default(),
            data_locality: None,
            priority: 0,
            preemption: false,
            preemptible: true,
            strategy: Strategy::default(),
            retry: RetryPolicy::default(),
            timeout_secs: None,
            cancel_grace_secs: default_cancel_grace_secs(),
            secrets: BTreeMap::new(),
            secrets_env: false,
        }
    }

    /// Checks the limits every replica enforces before a job enters the state.
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.name.len() > MAX_JOB_NAME {
            return Err(DomainError::invalid(
                "name",
                format!("at most {MAX_JOB_NAME} bytes"),
            ));
        }
        if self.name.chars().any(char::is_control) {
            return Err(DomainError::invalid("name", "no control characters"));
        }
        if self.command.trim().is_empty() {
            return Err(DomainError::invalid("command", "required"));
        }
        if self.command.len() > MAX_COMMAND {
            return Err(DomainError::invalid(
                "command",
                format!("at most {MAX_COMMAND} bytes"),
            ));
        }
        if self.command.contains('\0') {
            return Err(DomainError::invalid("command", "must not contain NUL"));
        }
        if self.args.len() > MAX_ARGS {
            return Err(DomainError::invalid(
                "args",
                format!("at most {MAX_ARGS} arguments"),
            ));
        }
        if self
            .args
            .iter()
            .any(|a| a.len() > MAX_VALUE || a.contains('\0'))
        {
            return Err(DomainError::invalid(
                "args",
                format!("each at most {MAX_VALUE} bytes, without NUL"),
            ));
        }
        if self.env.len() > MAX_ENV {
            return Err(DomainError::invalid(
                "env",
                format!("at most {MAX_ENV} variables"),
            ));
        }
        for (k, v) in &self.env {
            if !valid_env_name(k) {
                return Err(DomainError::invalid(
                    "env",
                    format!("{k:?} is not a variable name (1-256 bytes, no '=' or NUL)"),
                ));
            }
            if v.len() > MAX_VALUE || v.contains('\0') {
                return Err(DomainError::invalid(
                    "env",
                    format!("the value of {k} must be at most {MAX_VALUE} bytes, without NUL"),
                ));
            }
        }
        if let Some(dir) = &self.working_dir {
            if dir.is_empty() || dir.len() > MAX_VALUE || dir.contains('\0') {
                return Err(DomainError::invalid(
                    "working_dir",
                    format!("1-{MAX_VALUE} bytes, without NUL"),
                ));
            }
        }
        if self.secrets.len() > MAX_JOB_SECRETS {
            return Err(DomainError::invalid(
                "secrets",
                format!("at most {MAX_JOB_SECRETS}"),
            ));
        }
        for (var, name) in &self.secrets {
            if !valid_env_name(var) {
                return Err(DomainError::invalid(
                    "secrets",
                    format!("{var:?} is not a variable name (1-256 bytes, no '=' or NUL)"),
                ));
            }
            if self.env.contains_key(var) {
                return Err(DomainError::invalid(
                    "secrets",
                    format!("{var} is also set in env"),
                ));
            }
            super::validate_secret_name(name).map_err(|_| {
                DomainError::invalid("secrets", format!("{name:?} is not a secret name"))
            })?;
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(DomainError::invalid(
                "replicas",
                format!("must be 1-{MAX_REPLICAS}"),
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.retry.max_attempts) {
            return Err(DomainError::invalid(
                "retry.max_attempts",
                format!("must be 1-{MAX_ATTEMPTS}"),
            ));
        }
        Ok(())
    }
}

/// One replica of one try at running a job, on one node. A gang job's attempt has one entry per replica,
/// consecutive in [`JobRecord::attempts`] and in replica order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based.
    pub attempt: u32,
    /// 0-based replica index within the attempt.
    #[serde(default)]
    pub replica: u32,
    /// The node's key, `region/cluster/node`.
    pub node: String,
    pub region: String,
    pub cluster: String,
    pub gpu_uuids: Vec<String>,
    /// What was reserved on the node.
    pub resources: Resources,
    /// The node's lease epoch the attempt is bound to (moved forward when a re-registered agent keeps it).
    pub lease_epoch: u64,
    pub scheduled_at: u64,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub outcome: Option<AttemptOutcome>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub cpu_time_ms: Option<u64>,
    pub max_rss_bytes: Option<u64>,
    /// Why it ended, e.g. `node lost`, `timed out after 5s`, a launch error.
    pub detail: String,
}

/// A job and its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub project_id: String,
    pub spec: JobSpec,
    pub state: JobState,
    /// Every attempt so far, one entry per replica; the current attempt's entries are the last ones while
    /// the job is scheduled or running.
    pub attempts: Vec<Attempt>,
    /// Why the scheduler could not place it yet (only while pending).
    pub pending_reason: Option<String>,
    /// A cancel was asked for while the job was on a node; the node's agent stops it.
    pub cancel_requested: bool,
    /// The region of the last lost or failed attempt: a retry looks there first.
    pub prefer_region: Option<String>,
    /// The name of the actor that submitted it.
    pub created_by: String,
    /// The job's workload identity: the principal that submitted it. Secrets are released to the job
    /// only when bound to this principal. `None` for jobs submitted before workload identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub finished_at: Option<u64>,
}

impl JobRecord {
    /// Replica 0 of the attempt the job is on, while it is scheduled or running.
    pub fn current_attempt(&self) -> Option<&Attempt> {
        self.current_replicas().first()
    }

    /// Every replica of the attempt the job is on (in replica order), while it is scheduled or running;
    /// empty otherwise. A replica that already succeeded stays here until the whole attempt ends.
    pub fn current_replicas(&self) -> &[Attempt] {
        if !self.state.is_active() {
            return &[];
        }
        &self.attempts[self.last_attempt_start()..]
    }

    /// Index of the first entry of the last attempt.
    fn last_attempt_start(&self) -> usize {
        let Some(last) = self.attempts.last().map(|a| a.attempt) else {
            return 0;
        };
        self.attempts
            .iter()
            .rposition(|a| a.attempt != last)
            .map_or(0, |i| i + 1)
    }

    /// How many attempts were made (a gang attempt counts once).
    pub fn attempt_count(&self) -> u32 {
        self.attempts.last().map_or(0, |a| a.attempt)
    }

    /// The number the next attempt gets.
    pub fn next_attempt(&self) -> u32 {
        self.attempt_count().saturating_add(1)
    }

    /// Attempts that count against the retry budget (all but preempted ones).
    fn counted_attempts(&self) -> usize {
        let mut counted = BTreeSet::new();
        let mut preempted = BTreeSet::new();
        for a in &self.attempts {
            if a.outcome == Some(AttemptOutcome::Preempted) {
                preempted.insert(a.attempt);
            } else {
                counted.insert(a.attempt);
            }
        }
        counted.difference(&preempted).count()
    }

    fn budget_left(&self) -> bool {
        self.counted_attempts() < self.spec.retry.max_attempts as usize
    }
}

/// An attempt an agent still holds (running, or launched and not yet reported) when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeldAttempt {
    pub job_id: String,
    pub attempt: u32,
    #[serde(default)]
    pub replica: u32,
}

/// Where one replica of a placed attempt goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPlacement {
    /// The node's key.
    pub node: String,
    /// The node's lease epoch the replica is bound to.
    pub lease_epoch: u64,
    pub gpu_uuids: Vec<String>,
    pub resources: Resources,
}

/// One item of the leader's scheduling pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "PlacementOpWire")]
pub enum PlacementOp {
    /// Start attempt `attempt` of a pending job: one entry per replica, in replica order, each on a node
    /// bound to that node's lease epoch. All are applied or none.
    Place {
        job_id: String,
        attempt: u32,
        replicas: Vec<ReplicaPlacement>,
    },
    /// The job stays pending, for `reason`.
    Wait { job_id: String, reason: String },
    /// Stop attempt `attempt` to make room for job `by`; the job goes back to pending.
    Preempt {
        job_id: String,
        attempt: u32,
        by: String,
    },
}

/// [`PlacementOp`] as stored in Raft logs: also reads a `place` item written before gang jobs existed, which
/// named its one node inline (`node`, `lease_epoch`, `gpu_uuids`, `resources`) instead of `replicas`, so a
/// log from an older build still replays.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PlacementOpWire {
    Place {
        job_id: String,
        attempt: u32,
        #[serde(default)]
        replicas: Vec<ReplicaPlacement>,
        #[serde(default)]
        node: Option<String>,
        #[serde(default)]
        lease_epoch: u64,
        #[serde(default)]
        gpu_uuids: Vec<String>,
        #[serde(default)]
        resources: Resources,
    },
    Wait {
        job_id: String,
        reason: String,
    },
    Preempt {
        job_id: String,
        attempt: u32,
        by: String,
    },
}

impl From<PlacementOpWire> for PlacementOp {
    fn from(wire: PlacementOpWire) -> Self {
        match wire {
            PlacementOpWire::Place {
                job_id,
                attempt,
                mut replicas,
                node,
                lease_epoch,
                gpu_uuids,
                resources,
            } => {
                if let (true, Some(node)) = (replicas.is_empty(), node) {
                    replicas.push(ReplicaPlacement {
                        node,
                        lease_epoch,
                        gpu_uuids,
                        resources,
                    });
                }
                PlacementOp::Place {
                    job_id,
                    attempt,
                    replicas,
                }
            }
            PlacementOpWire::Wait { job_id, reason } => PlacementOp::Wait { job_id, reason },
            PlacementOpWire::Preempt {
                job_id,
                attempt,
                by,
            } => PlacementOp::Preempt {
                job_id,
                attempt,
                by,
            },
        }
    }
}

/// One thing an agent saw happen to an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEventOp {
    pub job_id: String,
    pub attempt: u32,
    #[serde(default)]
    pub replica: u32,
    /// Unix milliseconds on the agent when it happened.
    pub at_ms: u64,
    pub kind: JobEventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEventKind {
    /// The process was launched.
    Started,
    /// The process ended.
    Exited {
        exit_code: Option<i32>,
        signal: Option<i32>,
        /// A cancel was requested before the exit was observed.
        cancelled: bool,
        /// The agent stopped it at its timeout.
        timed_out: bool,
        cpu_time_ms: Option<u64>,
        max_rss_bytes: Option<u64>,
    },
    /// The process could not be launched.
    LaunchFailed { message: String },
    /// The process is gone without a recorded exit status.
    Vanished { reason: String },
}

/// The coordinator's answer to one reported event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAck {
    /// The event was recorded (or was a harmless repeat).
    pub accepted: bool,
    /// Why not, starting with `stale:`; empty when accepted.
    pub reason: String,
}

impl EventAck {
    fn accepted() -> Self {
        Self {
            accepted: true,
            reason: String::new(),
        }
    }

    fn stale(why: impl std::fmt::Display) -> Self {
        Self {
            accepted: false,
            reason: format!("stale: {why}"),
        }
    }
}

/// How an attempt is being ended (before the retry rule decides the job's state).
#[derive(Clone)]
struct AttemptEnd {
    outcome: AttemptOutcome,
    detail: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    cpu_time_ms: Option<u64>,
    max_rss_bytes: Option<u64>,
}

impl AttemptEnd {
    fn new(outcome: AttemptOutcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            exit_code: None,
            signal: None,
            cpu_time_ms: None,
            max_rss_bytes: None,
        }
    }
}

/// Which replicas of an attempt an end is about; the others of a gang are stopped with them.
#[derive(Clone, Copy)]
enum Cause<'a> {
    /// The whole attempt (cancel, preemption).
    All,
    /// One replica.
    Replica(u32),
    /// Every replica on a node.
    Node(&'a str),
}

impl Attempt {
    /// Records how this replica ended; the end is never before its start.
    fn record_end(&mut self, ended_at: u64, end: AttemptEnd) {
        self.ended_at = Some(self.started_at.map_or(ended_at, |s| ended_at.max(s)));
        self.outcome = Some(end.outcome);
        self.detail = end.detail;
        self.exit_code = end.exit_code;
        self.signal = end.signal;
        self.cpu_time_ms = end.cpu_time_ms;
        self.max_rss_bytes = end.max_rss_bytes;
    }
}

/// What the projects touched by one scheduling pass reserve, each computed from the state the first time
/// it is needed and then kept up to date by the pass's own placements and evictions (so a pass of many
/// items does not recount a project's jobs for each).
#[derive(Default)]
struct RunningByProject(BTreeMap<String, Resources>);

impl RunningByProject {
    fn of(&mut self, state: &RegistryState, project_id: &str) -> Resources {
        *self
            .0
            .entry(project_id.to_owned())
            .or_insert_with(|| state.project_load(project_id).running)
    }

    fn add(&mut self, project_id: &str, more: Resources) {
        if let Some(held) = self.0.get_mut(project_id) {
            *held = add(*held, more);
        }
    }

    fn sub(&mut self, project_id: &str, freed: Resources) {
        if let Some(held) = self.0.get_mut(project_id) {
            *held = super::policy::sub(*held, freed);
        }
    }
}

/// `attempt 2 of job j` or, for a gang, `replica 1 of attempt 2 of job j`, for stale-report reasons.
struct ReplicaName<'a>(&'a str, u32, u32, u32);

impl std::fmt::Display for ReplicaName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ReplicaName(job, attempt, replica, replicas) = *self;
        if replicas > 1 {
            write!(f, "replica {replica} of ")?;
        }
        write!(f, "attempt {attempt} of job {job}")
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// What `Op::SubmitJob` asks for.
pub struct Submission<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    pub spec: &'a JobSpec,
    pub principal_id: Option<&'a str>,
}

impl RegistryState {
    pub fn submit_job(
        &mut self,
        at: u64,
        actor: &super::Actor,
        submission: Submission<'_>,
    ) -> Result<Applied, DomainError> {
        let Submission {
            id,
            project_id,
            spec,
            principal_id,
        } = submission;
        validate_id("id", id)?;
        if !self.projects.contains_key(project_id) {
            return Err(DomainError::not_found("project", project_id));
        }
        if self.jobs.contains_key(id) {
            return Err(DomainError::exists("job", id));
        }
        spec.validate()?;
        match principal_id {
            Some(principal) => self.check_job_secrets(actor, id, project_id, spec, principal)?,
            // A command from before workload identities: replayed under the rule it was accepted by.
            None => {
                for name in spec.secrets.values() {
                    let secret = self
                        .project_scope(project_id)
                        .secret(name)
                        .ok_or_else(|| DomainError::not_found("secret", name))?;
                    if !secret_binds_job(secret, id, &spec.name) {
                        return Err(DomainError::FailedPrecondition(format!(
                            "secret {name} is not bound to this job"
                        )));
                    }
                }
            }
        }
        self.check_submit_quota(project_id, spec)?;
        let job = JobRecord {
            id: id.to_owned(),
            project_id: project_id.to_owned(),
            spec: spec.clone(),
            state: JobState::Pending,
            attempts: Vec::new(),
            pending_reason: None,
            cancel_requested: false,
            prefer_region: None,
            created_by: actor.name.clone(),
            principal_id: principal_id.map(str::to_owned),
            created_at: at,
            updated_at: at,
            finished_at: None,
        };
        self.jobs.insert(id.to_owned(), job.clone());
        self.pending_job_ids.insert(id.to_owned());
        self.job_ids_by_project
            .entry(project_id.to_owned())
            .or_default()
            .insert(id.to_owned());
        self.index_unfinished(project_id, id);
        let detail = if spec.name.is_empty() {
            "pending".to_owned()
        } else {
            format!("name={}", spec.name)
        };
        Ok(Applied::new(Outcome::Job { job }, detail))
    }

    /// The rules for a job's secrets when it has a workload identity: the identity is the submitter
    /// itself; naming secrets needs `use-secrets` in the project (checked here against the acting key, as
    /// the API did before proposing); and every secret named must exist and be bound to the principal (and,
    /// for a binding narrowed to `job:PATTERN`, to a job of that name). A job's name alone never selects a
    /// secret.
    fn check_job_secrets(
        &self,
        actor: &super::Actor,
        id: &str,
        project_id: &str,
        spec: &JobSpec,
        principal: &str,
    ) -> Result<(), DomainError> {
        validate_id("principal_id", principal)?;
        if actor
            .principal_id
            .as_deref()
            .is_some_and(|acting| acting != principal)
        {
            return Err(DomainError::PermissionDenied(
                "a job's workload identity is the principal that submits it".to_owned(),
            ));
        }
        if spec.secrets.is_empty() {
            return Ok(());
        }
        if let Some(caller) = crate::authz::caller_of(self, actor) {
            let action = crate::authz::Action::UseSecrets;
            if crate::authz::authorize_caller(self, &caller, Some(project_id), action).is_err() {
                return Err(DomainError::PermissionDenied(
                    "naming secrets in a job needs use-secrets (the secret-user or project-admin role)"
                        .to_owned(),
                ));
            }
        }
        for name in spec.secrets.values() {
            let secret = self
                .project_scope(project_id)
                .secret(name)
                .ok_or_else(|| DomainError::not_found("secret", name))?;
            if !secret_binds_workload(secret, principal, id, &spec.name) {
                return Err(DomainError::FailedPrecondition(format!(
                    "secret {name} is not bound to principal {principal}; a project-admin binds it with \
                     principal:{principal} or principal:{principal}/job:<name pattern>"
                )));
            }
        }
        Ok(())
    }

    pub fn cancel_job(
        &mut self,
        at: u64,
        project_id: &str,
        id: &str,
    ) -> Result<Applied, DomainError> {
        let job = self
            .jobs
            .get_mut(id)
            .filter(|j| j.project_id == project_id)
            .ok_or_else(|| DomainError::not_found("job", id))?;
        let detail = match job.state {
            JobState::Pending => {
                job.state = JobState::Cancelled;
                job.pending_reason = None;
                job.updated_at = at;
                job.finished_at = Some(at);
                self.pending_job_ids.remove(id);
                self.finished_jobs.insert((at, id.to_owned()));
                self.unindex_unfinished(project_id, id);
                "pending -> cancelled"
            }
            JobState::Scheduled | JobState::Running => {
                if job.cancel_requested {
                    "cancel already requested"
                } else {
                    job.cancel_requested = true;
                    job.updated_at = at;
                    let nodes: BTreeSet<String> = job
                        .current_replicas()
                        .iter()
                        .filter(|a| a.outcome.is_none())
                        .map(|a| a.node.clone())
                        .collect();
                    for node in &nodes {
                        self.bump_assign_version(node);
                    }
                    "cancel requested"
                }
            }
            state => {
                return Err(DomainError::FailedPrecondition(format!(
                    "job {id} is already {}",
                    state.as_str()
                )))
            }
        };
        let job = self.jobs.get(id).cloned();
        // Invariant: the job was found above and nothing removed it since.
        let job = job.expect("cancelled job is present");
        Ok(Applied::new(Outcome::Job { job }, detail))
    }

    pub fn place_jobs(
        &mut self,
        at: u64,
        placements: &[PlacementOp],
    ) -> Result<Applied, DomainError> {
        let (mut placed, mut waiting, mut preempted, mut skipped) = (0u32, 0u32, 0u32, 0u32);
        // What each project touched by this pass reserves, computed once and kept up to date item by item.
        let mut running = RunningByProject::default();
        for item in placements {
            let applied = match item {
                PlacementOp::Place { .. } => {
                    let ok = self.place_one(at, item, &mut running);
                    placed += u32::from(ok);
                    ok
                }
                PlacementOp::Wait { job_id, reason } => {
                    let ok = self.wait_one(at, job_id, reason);
                    waiting += u32::from(ok);
                    ok
                }
                PlacementOp::Preempt {
                    job_id,
                    attempt,
                    by,
                } => {
                    let ok = self.preempt_one(at, job_id, *attempt, by, &mut running);
                    preempted += u32::from(ok);
                    ok
                }
            };
            skipped += u32::from(!applied);
        }
        Ok(Applied::new(
            Outcome::JobsPlaced {
                placed,
                waiting,
                preempted,
                skipped,
            },
            format!("placed={placed} waiting={waiting} preempted={preempted} skipped={skipped}"),
        ))
    }

    /// Applies one `Place` item; false (skipped) unless the job is pending, `attempt` is its next one, there
    /// is one entry per replica and every node is ready, admitted (approved, its agent not denied) and not
    /// draining at the entry's lease epoch. A gang is placed whole or not at all.
    fn place_one(&mut self, at: u64, item: &PlacementOp, running: &mut RunningByProject) -> bool {
        let PlacementOp::Place {
            job_id,
            attempt,
            replicas,
        } = item
        else {
            return false;
        };
        let attempt = *attempt;
        let Some(job) = self.jobs.get(job_id) else {
            return false;
        };
        if job.state != JobState::Pending
            || attempt != job.next_attempt()
            || replicas.len() != job.spec.replicas as usize
        {
            return false;
        }
        // The running quota is re-checked here, so no pass (however stale its view) overshoots it.
        let more = replicas
            .iter()
            .fold(Resources::default(), |sum, r| add(sum, r.resources));
        let project_id = job.project_id.clone();
        let held = running.of(self, &project_id);
        if running_quota_excess(&self.project_policy(&project_id), held, more).is_some() {
            return false;
        }
        let mut entries = Vec::with_capacity(replicas.len());
        for (replica, placement) in (0u32..).zip(replicas) {
            let Some(node) = self.nodes.get(&placement.node) else {
                return false;
            };
            if node.health != super::NodeHealthState::Ready
                || node.draining
                || !node.admitted()
                || self.denied_nodes.contains(&placement.node)
                || node.lease_epoch != placement.lease_epoch
            {
                return false;
            }
            entries.push(Attempt {
                attempt,
                replica,
                node: placement.node.clone(),
                region: node.region.clone(),
                cluster: node.cluster.clone(),
                gpu_uuids: placement.gpu_uuids.clone(),
                resources: placement.resources,
                lease_epoch: placement.lease_epoch,
                scheduled_at: at,
                started_at: None,
                ended_at: None,
                outcome: None,
                exit_code: None,
                signal: None,
                cpu_time_ms: None,
                max_rss_bytes: None,
                detail: String::new(),
            });
        }
        let Some(job) = self.jobs.get_mut(job_id) else {
            return false;
        };
        job.attempts.extend(entries);
        job.state = JobState::Scheduled;
        job.pending_reason = None;
        job.updated_at = at;
        running.add(&project_id, more);
        self.pending_job_ids.remove(job_id);
        let nodes: BTreeSet<&String> = replicas.iter().map(|r| &r.node).collect();
        for node in nodes {
            self.active_job_ids_by_node
                .entry(node.clone())
                .or_default()
                .insert(job_id.to_owned());
            self.bump_assign_version(node);
        }
        true
    }

    fn wait_one(&mut self, at: u64, job_id: &str, reason: &str) -> bool {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return false;
        };
        if job.state != JobState::Pending {
            return false;
        }
        let reason = clip(reason, MAX_DETAIL);
        if job.pending_reason.as_deref() != Some(reason.as_str()) {
            job.pending_reason = Some(reason);
            job.updated_at = at;
        }
        true
    }

    /// Applies one `Preempt` item; false (skipped) unless `attempt` is the victim's current one and the
    /// preempting job `by` is pending, asked for preemption and may evict the victim: a preemptible job of
    /// lower priority, of its own project or, below the preemptor's project's ceiling, of another one. The
    /// victim's record names the preemptor only when both belong to the same project.
    fn preempt_one(
        &mut self,
        at: u64,
        job_id: &str,
        attempt: u32,
        by: &str,
        running: &mut RunningByProject,
    ) -> bool {
        let Some(victim) = self.jobs.get(job_id) else {
            return false;
        };
        if victim.current_attempt().map(|a| a.attempt) != Some(attempt) {
            return false;
        }
        let Some(preemptor) = self.jobs.get(by) else {
            return false;
        };
        if preemptor.state != JobState::Pending
            || !preemptor.spec.preemption
            || preemptor.cancel_requested
        {
            return false;
        }
        let ceiling = self
            .project_policy(&preemptor.project_id)
            .preemption_ceiling;
        let allowed = may_evict(
            (&preemptor.project_id, preemptor.spec.priority, ceiling),
            (
                &victim.project_id,
                victim.spec.priority,
                victim.spec.preemptible,
            ),
        );
        if !allowed {
            return false;
        }
        let detail = if preemptor.project_id == victim.project_id {
            clip(&format!("preempted by job {by}"), MAX_DETAIL)
        } else {
            "preempted by a higher-priority job".to_owned()
        };
        let freed = victim
            .current_replicas()
            .iter()
            .filter(|a| a.outcome.is_none())
            .fold(Resources::default(), |sum, a| add(sum, a.resources));
        running.sub(&victim.project_id, freed);
        self.end_attempt(
            at,
            job_id,
            at,
            AttemptEnd::new(AttemptOutcome::Preempted, detail),
            Cause::All,
        );
        true
    }

    pub fn report_job_events(
        &mut self,
        at: u64,
        node_key: &str,
        lease_epoch: u64,
        events: &[JobEventOp],
    ) -> Result<Applied, DomainError> {
        let Some(node) = self.nodes.get(node_key) else {
            return Err(DomainError::FailedPrecondition(format!(
                "node {node_key} is not registered"
            )));
        };
        if node.lease_epoch != lease_epoch {
            return Err(DomainError::FailedPrecondition(format!(
                "node {node_key} is at lease epoch {}, not {lease_epoch}",
                node.lease_epoch
            )));
        }
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            acks.push(self.apply_job_event(at, node_key, lease_epoch, event));
        }
        let accepted = acks.iter().filter(|a| a.accepted).count();
        let detail = format!("accepted={accepted} stale={}", acks.len() - accepted);
        Ok(Applied::new(Outcome::JobEvents { acks }, detail))
    }

    /// One reported event; `at` is the command's time (job timestamps), the event's own time goes to the
    /// replica's entry.
    fn apply_job_event(
        &mut self,
        at: u64,
        node_key: &str,
        lease_epoch: u64,
        event: &JobEventOp,
    ) -> EventAck {
        let Some(job) = self.jobs.get_mut(&event.job_id) else {
            return EventAck::stale(format_args!("job {} not found", event.job_id));
        };
        let Some(current) = job.current_attempt().map(|a| a.attempt) else {
            return EventAck::stale(format_args!("job {} is {}", job.id, job.state.as_str()));
        };
        if current != event.attempt {
            return EventAck::stale(format_args!(
                "attempt {} of job {} is not current (attempt {current} is)",
                event.attempt, job.id
            ));
        }
        let start = job.last_attempt_start();
        let Some(idx) = job.attempts[start..]
            .iter()
            .position(|a| a.replica == event.replica)
            .map(|i| start + i)
        else {
            return EventAck::stale(format_args!(
                "attempt {} of job {} has no replica {}",
                event.attempt, job.id, event.replica
            ));
        };
        let entry = &mut job.attempts[idx];
        let name = ReplicaName(&job.id, entry.attempt, entry.replica, job.spec.replicas);
        if entry.node != node_key {
            return EventAck::stale(format_args!("{name} runs on another node"));
        }
        if entry.lease_epoch != lease_epoch {
            return EventAck::stale(format_args!(
                "{name} is bound to lease epoch {}",
                entry.lease_epoch
            ));
        }
        if entry.outcome.is_some() {
            // A replica of a gang that already ended (its peers still run): a repeat changes nothing.
            return EventAck::accepted();
        }
        // The agent's clock is not trusted beyond reason: nothing happens to an attempt before it was
        // scheduled or after this command was stamped. Usage (and its hourly archive) stays bounded by the
        // attempt's real life even when a node's clock is far off.
        let event_at = event
            .at_ms
            .clamp(entry.scheduled_at, at.max(entry.scheduled_at));
        match &event.kind {
            JobEventKind::Started => {
                if entry.started_at.is_none() {
                    entry.started_at = Some(event_at);
                }
                if job.state == JobState::Scheduled {
                    job.state = JobState::Running;
                    job.updated_at = at;
                }
            }
            JobEventKind::Exited {
                exit_code,
                signal,
                cancelled,
                timed_out,
                cpu_time_ms,
                max_rss_bytes,
            } => {
                let (outcome, detail) = if *cancelled || job.cancel_requested {
                    (AttemptOutcome::Cancelled, "cancelled".to_owned())
                } else if *timed_out {
                    let detail = match job.spec.timeout_secs {
                        Some(secs) => format!("timed out after {secs}s"),
                        None => "timed out".to_owned(),
                    };
                    (AttemptOutcome::Failed, detail)
                } else if *exit_code == Some(0) {
                    (AttemptOutcome::Succeeded, String::new())
                } else {
                    let detail = match (exit_code, signal) {
                        (Some(code), _) => format!("exited with code {code}"),
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        (None, None) => "exited without a status".to_owned(),
                    };
                    (AttemptOutcome::Failed, detail)
                };
                let id = job.id.clone();
                self.end_replica(
                    at,
                    &id,
                    event.replica,
                    event_at,
                    AttemptEnd {
                        outcome,
                        detail,
                        exit_code: *exit_code,
                        signal: *signal,
                        cpu_time_ms: *cpu_time_ms,
                        max_rss_bytes: *max_rss_bytes,
                    },
                );
            }
            JobEventKind::LaunchFailed { message } => {
                let id = job.id.clone();
                self.end_replica(
                    at,
                    &id,
                    event.replica,
                    event_at,
                    AttemptEnd::new(AttemptOutcome::Failed, clip(message, MAX_DETAIL)),
                );
            }
            JobEventKind::Vanished { reason } => {
                let id = job.id.clone();
                self.end_replica(
                    at,
                    &id,
                    event.replica,
                    event_at,
                    AttemptEnd::new(AttemptOutcome::Lost, clip(reason, MAX_DETAIL)),
                );
            }
        }
        EventAck::accepted()
    }

    pub fn set_idle_gpus(
        &mut self,
        key: &str,
        lease_epoch: u64,
        idle_gpus: &[String],
    ) -> Result<Applied, DomainError> {
        let record = self
            .nodes
            .get_mut(key)
            .ok_or_else(|| DomainError::not_found("node", key))?;
        if record.lease_epoch != lease_epoch {
            return Err(DomainError::FailedPrecondition(format!(
                "node {key} is at lease epoch {}, not {lease_epoch}",
                record.lease_epoch
            )));
        }
        let set: BTreeSet<&String> = idle_gpus.iter().collect();
        record.idle_gpus = set.into_iter().cloned().collect();
        let detail = format!("{} idle", record.idle_gpus.len());
        Ok(Applied::new(
            Outcome::Node {
                node: record.clone(),
            },
            detail,
        ))
    }

    /// Every active job with a replica on a node that was declared lost loses its attempt (the gang's other
    /// replicas are stopped). Returns how many jobs lost an attempt.
    pub fn lose_node_jobs(&mut self, at: u64, node_key: &str) -> usize {
        let ids: Vec<String> = self
            .active_job_ids_by_node
            .get(node_key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for id in &ids {
            self.end_attempt(
                at,
                id,
                at,
                AttemptEnd::new(AttemptOutcome::Lost, "node lost"),
                Cause::Node(node_key),
            );
        }
        ids.len()
    }

    /// After a node registered again (at `lease_epoch`): its replicas move to the new epoch, and a started
    /// replica the agent no longer holds is lost (ending its attempt). Returns how many attempts were lost.
    pub fn readopt_node_jobs(
        &mut self,
        at: u64,
        node_key: &str,
        lease_epoch: u64,
        held: &[HeldAttempt],
    ) -> usize {
        let held: BTreeSet<(&str, u32, u32)> = held
            .iter()
            .map(|h| (h.job_id.as_str(), h.attempt, h.replica))
            .collect();
        let ids: Vec<String> = self
            .active_job_ids_by_node
            .get(node_key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut lost = 0;
        for id in &ids {
            let Some(job) = self.jobs.get_mut(id) else {
                continue;
            };
            let start = job.last_attempt_start();
            let mut gone = None;
            for entry in &mut job.attempts[start..] {
                if entry.node != node_key || entry.outcome.is_some() {
                    continue;
                }
                entry.lease_epoch = lease_epoch;
                let key = (id.as_str(), entry.attempt, entry.replica);
                if gone.is_none() && entry.started_at.is_some() && !held.contains(&key) {
                    gone = Some(entry.replica);
                }
            }
            if let Some(replica) = gone {
                self.end_attempt(
                    at,
                    id,
                    at,
                    AttemptEnd::new(
                        AttemptOutcome::Lost,
                        "not running after the agent restarted",
                    ),
                    Cause::Replica(replica),
                );
                lost += 1;
            }
        }
        lost
    }

    /// Ends one replica of the current attempt. A replica that succeeded while others of its gang still run
    /// just records its end; anything else (or the last success) ends the whole attempt.
    fn end_replica(&mut self, at: u64, job_id: &str, replica: u32, ended_at: u64, end: AttemptEnd) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if !job.state.is_active() {
            return;
        }
        let start = job.last_attempt_start();
        if end.outcome == AttemptOutcome::Succeeded {
            let others_running = job.attempts[start..]
                .iter()
                .any(|a| a.replica != replica && a.outcome != Some(AttemptOutcome::Succeeded));
            if others_running {
                let Some(entry) = job.attempts[start..]
                    .iter_mut()
                    .find(|a| a.replica == replica)
                else {
                    return;
                };
                entry.record_end(ended_at, end);
                let node = entry.node.clone();
                job.updated_at = at;
                self.unindex_if_done(job_id, &node);
                self.bump_assign_version(&node);
                return;
            }
        }
        self.end_attempt(at, job_id, ended_at, end, Cause::Replica(replica));
    }

    /// Drops `job_id` from `node_key`'s active set once none of its current replicas there is unfinished.
    fn unindex_if_done(&mut self, job_id: &str, node_key: &str) {
        let busy = self.jobs.get(job_id).is_some_and(|j| {
            j.current_replicas()
                .iter()
                .any(|a| a.node == node_key && a.outcome.is_none())
        });
        if busy {
            return;
        }
        if let Some(set) = self.active_job_ids_by_node.get_mut(node_key) {
            set.remove(job_id);
            if set.is_empty() {
                self.active_job_ids_by_node.remove(node_key);
            }
        }
    }

    /// Ends the current attempt of an active job and applies the retry rule: a cancel that was asked for
    /// wins; a preempted attempt returns the job to pending; a lost one (always) or a failed one (with
    /// `retry.on_failure`) is retried while the budget allows; anything else ends the job. The replicas
    /// named by `cause` get `end`; the gang's other unfinished replicas are stopped with it (or get the
    /// same end when the cause is the whole attempt).
    fn end_attempt(
        &mut self,
        at: u64,
        job_id: &str,
        ended_at: u64,
        end: AttemptEnd,
        cause: Cause<'_>,
    ) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if !job.state.is_active() {
            return;
        }
        let start = job.last_attempt_start();
        let gang = job.spec.replicas > 1;
        let mut nodes = BTreeSet::new();
        let mut region = None;
        let mut stopped_detail = None;
        for entry in &mut job.attempts[start..] {
            nodes.insert(entry.node.clone());
            let caused = match cause {
                Cause::All => true,
                Cause::Replica(r) => entry.replica == r,
                Cause::Node(node) => entry.node == node,
            };
            if caused && entry.outcome.is_none() {
                region.get_or_insert_with(|| entry.region.clone());
                if gang && stopped_detail.is_none() {
                    let what = if end.detail.is_empty() {
                        end.outcome.as_str().to_owned()
                    } else {
                        format!("{}: {}", end.outcome.as_str(), end.detail)
                    };
                    stopped_detail = Some(clip(
                        &format!("stopped with its gang (replica {} {what})", entry.replica),
                        MAX_DETAIL,
                    ));
                }
                entry.record_end(ended_at, end.clone());
            }
        }
        for entry in &mut job.attempts[start..] {
            if entry.outcome.is_some() {
                continue;
            }
            let rest = match (&cause, &stopped_detail) {
                (Cause::All, _) | (_, None) => end.clone(),
                (_, Some(detail)) => AttemptEnd::new(AttemptOutcome::Stopped, detail.clone()),
            };
            entry.record_end(ended_at, rest);
        }

        let next = if job.cancel_requested || end.outcome == AttemptOutcome::Cancelled {
            JobState::Cancelled
        } else {
            match end.outcome {
                AttemptOutcome::Succeeded => JobState::Succeeded,
                AttemptOutcome::Cancelled => JobState::Cancelled,
                AttemptOutcome::Preempted => JobState::Pending,
                AttemptOutcome::Lost | AttemptOutcome::Stopped if job.budget_left() => {
                    JobState::Pending
                }
                AttemptOutcome::Lost | AttemptOutcome::Stopped => JobState::Lost,
                AttemptOutcome::Failed if job.spec.retry.on_failure && job.budget_left() => {
                    JobState::Pending
                }
                AttemptOutcome::Failed => JobState::Failed,
            }
        };
        if next == JobState::Pending
            && matches!(end.outcome, AttemptOutcome::Lost | AttemptOutcome::Failed)
        {
            job.prefer_region = region;
        }
        job.state = next;
        job.updated_at = at;
        if next.is_terminal() {
            job.finished_at = Some(at);
            let project_id = job.project_id.clone();
            self.finished_jobs.insert((at, job_id.to_owned()));
            self.unindex_unfinished(&project_id, job_id);
        } else {
            job.pending_reason = None;
            self.pending_job_ids.insert(job_id.to_owned());
        }
        for node in &nodes {
            if let Some(set) = self.active_job_ids_by_node.get_mut(node) {
                set.remove(job_id);
                if set.is_empty() {
                    self.active_job_ids_by_node.remove(node);
                }
            }
            self.bump_assign_version(node);
        }
    }

    pub fn bump_assign_version(&mut self, node_key: &str) {
        if let Some(node) = self.nodes.get_mut(node_key) {
            node.assign_version = node.assign_version.saturating_add(1);
        }
    }

    /// True when the project has jobs that are not finished.
    pub fn project_has_unfinished_jobs(&self, project_id: &str) -> bool {
        self.job_ids_by_project
            .get(project_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.jobs.get(id))
            .any(|j| !j.state.is_terminal())
    }

    /// Forgets a deleted project's (finished) jobs and its usage archive.
    pub fn remove_project_jobs(&mut self, project_id: &str) {
        for id in self
            .job_ids_by_project
            .remove(project_id)
            .unwrap_or_default()
        {
            if let Some(job) = self.jobs.remove(&id) {
                if let Some(finished_at) = job.finished_at {
                    self.finished_jobs.remove(&(finished_at, id.clone()));
                }
            }
            self.pending_job_ids.remove(&id);
        }
        self.unfinished_job_ids_by_project.remove(project_id);
        self.usage_archive.remove(project_id);
    }

    /// `Op::PurgeJobs`: forgets up to `max` terminal jobs that finished before `finished_before`, oldest
    /// first, after folding each one's usage into its project's archive.
    pub fn purge_jobs(&mut self, finished_before: u64, max: u32) -> Applied {
        let mut purged: u32 = 0;
        while purged < max {
            let Some((finished_at, id)) = self.finished_jobs.first().cloned() else {
                break;
            };
            if finished_at >= finished_before {
                break;
            }
            self.finished_jobs.pop_first();
            let Some(job) = self.jobs.remove(&id) else {
                continue;
            };
            self.archive_job_usage(&job);
            if let Some(ids) = self.job_ids_by_project.get_mut(&job.project_id) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.job_ids_by_project.remove(&job.project_id);
                }
            }
            self.pending_job_ids.remove(&id);
            purged += 1;
        }
        Applied::new(
            Outcome::JobsPurged { purged },
            format!("purged={purged} finished_before={finished_before}"),
        )
    }

    /// Recomputes the index of finished jobs from the jobs themselves (after loading a snapshot).
    pub fn rebuild_finished_index(&mut self) {
        self.finished_jobs = self
            .jobs
            .values()
            .filter(|j| j.state.is_terminal())
            .filter_map(|j| j.finished_at.map(|at| (at, j.id.clone())))
            .collect();
    }

    /// The `finished_at` of the terminal job that finished first, if any.
    pub fn oldest_finished_at(&self) -> Option<u64> {
        self.finished_jobs.first().map(|(at, _)| *at)
    }

    /// A job of `project_id`; another project's job answers `None`, exactly like a missing one.
    pub fn job(&self, project_id: &str, id: &str) -> Option<&JobRecord> {
        self.jobs.get(id).filter(|j| j.project_id == project_id)
    }

    /// A page of the project's jobs in id order, optionally only those in `state`.
    pub fn job_page(
        &self,
        project_id: &str,
        state: Option<JobState>,
        req: &PageRequest,
    ) -> Page<JobRecord> {
        let jobs = self
            .job_ids_by_project
            .get(project_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| state.is_none_or(|s| j.state == s))
            .map(|j| (j.id.as_str(), j));
        Page::from_sorted(jobs, req).map(JobRecord::clone)
    }

    /// Every pending job, in id order (for the scheduler).
    pub fn pending_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.pending_job_ids
            .iter()
            .filter_map(|id| self.jobs.get(id))
    }

    /// Every scheduled or running job, in id order (the scheduler's allocations).
    pub fn active_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        let mut ids: Vec<&String> = self.active_job_ids_by_node.values().flatten().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.jobs.get(id))
    }

    /// The node's assignment version and the unfinished replicas of current attempts that run on it, with
    /// their jobs, in (job id, replica) order.
    pub fn node_assignments(&self, node_key: &str) -> (u64, Vec<(&JobRecord, &Attempt)>) {
        let version = self.nodes.get(node_key).map_or(0, |n| n.assign_version);
        let replicas = self
            .active_job_ids_by_node
            .get(node_key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.jobs.get(id))
            .flat_map(|job| {
                job.current_replicas()
                    .iter()
                    .filter(|a| a.node == node_key && a.outcome.is_none())
                    .map(move |a| (job, a))
            })
            .collect();
        (version, replicas)
    }
}

#[cfg(test)]
impl RegistryState {
    /// Panics unless every job index agrees with the jobs themselves.
    pub fn assert_job_indexes_consistent(&self) {
        let pending: BTreeSet<String> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending)
            .map(|j| j.id.clone())
            .collect();
        assert_eq!(self.pending_job_ids, pending, "pending index");
        let mut by_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for job in self.jobs.values() {
            let current = job.current_replicas();
            for a in current.iter().filter(|a| a.outcome.is_none()) {
                by_node
                    .entry(a.node.clone())
                    .or_default()
                    .insert(job.id.clone());
            }
            if job.state.is_active() {
                assert_eq!(current.len(), job.spec.replicas as usize, "{}", job.id);
                assert!(
                    current.iter().any(|a| a.outcome.is_none()),
                    "every replica of the current attempt of {} has ended",
                    job.id
                );
                assert!(
                    current.iter().zip(0u32..).all(|(a, r)| a.replica == r),
                    "replicas of {} out of order",
                    job.id
                );
            }
            assert!(
                job.attempts[..job.attempts.len() - current.len()]
                    .iter()
                    .all(|a| a.outcome.is_some()),
                "a past attempt of {} has not ended",
                job.id
            );
            assert_eq!(job.finished_at.is_some(), job.state.is_terminal());
        }
        assert_eq!(self.active_job_ids_by_node, by_node, "node index");
        let mut by_project: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for job in self.jobs.values() {
            by_project
                .entry(job.project_id.clone())
                .or_default()
                .insert(job.id.clone());
        }
        assert_eq!(self.job_ids_by_project, by_project, "project index");
        let finished: BTreeSet<(u64, String)> = self
            .jobs
            .values()
            .filter_map(|j| j.finished_at.map(|at| (at, j.id.clone())))
            .collect();
        assert_eq!(self.finished_jobs, finished, "finished index");
        let mut unfinished: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for job in self.jobs.values().filter(|j| !j.state.is_terminal()) {
            unfinished
                .entry(job.project_id.clone())
                .or_default()
                .insert(job.id.clone());
        }
        assert_eq!(
            self.unfinished_job_ids_by_project, unfinished,
            "unfinished index"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::GpuDevice;
    use crate::state::{
        node_key, Actor, AuditOutcome, Command, CommandOutcome, NodeHealthState, NodeRecord, Op,
        WrappedKey,
    };

    const T0: u64 = 1_700_000_000_000;
    const A: &str = "eu/eu1/a1";
    const B: &str = "eu/eu1/b1";
    const US: &str = "us/us1/c1";
    const PA: &str = "prj_a";
    const PB: &str = "prj_b";

    /// A registry with two projects and three ready nodes, applying commands one second apart.
    struct World {
        s: RegistryState,
        at: u64,
    }

    fn register_op(key: &str, held: &[(&str, u32)]) -> Op {
        let mut parts = key.split('/');
        let mut next = || parts.next().unwrap_or_default().to_owned();
        let (region, cluster, node) = (next(), next(), next());
        Op::RegisterNode {
            region,
            cluster,
            node,
            cpu_cores: 16,
            memory_bytes: 64 << 30,
            gpu_count: 2,
            agent_version: "1.0".into(),
            gpus: (0..2)
                .map(|i| GpuDevice {
                    uuid: format!("GPU-{key}-{i}"),
                    index: i,
                    model: "NVIDIA H200".into(),
                    memory_mib: 143_771,
                    healthy: true,
                })
                .collect(),
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            rpc_addr: "127.0.0.1:7000".into(),
            held: held
                .iter()
                .map(|(job_id, attempt)| HeldAttempt {
                    job_id: (*job_id).to_owned(),
                    attempt: *attempt,
                    replica: 0,
                })
                .collect(),
            os: "Debian 12".into(),
            limit_mode: "cgroup-v1".into(),
            admit_new: None,
        }
    }

    fn spec() -> JobSpec {
        let mut spec = JobSpec::new("python3");
        spec.args = vec!["train.py".into()];
        spec.resources = ResourceRequest {
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            gpus: 1,
            ..ResourceRequest::default()
        };
        spec
    }

    fn exited(code: i32) -> JobEventKind {
        JobEventKind::Exited {
            exit_code: Some(code),
            signal: None,
            cancelled: false,
            timed_out: false,
            cpu_time_ms: Some(1500),
            max_rss_bytes: Some(1 << 20),
        }
    }

    impl World {
        fn new() -> Self {
            let mut w = Self {
                s: RegistryState::default(),
                at: T0,
            };
            for (id, name) in [(PA, "alpha"), (PB, "beta")] {
                w.ok(Op::CreateProject {
                    id: id.into(),
                    name: name.into(),
                    description: String::new(),
                    data_key: WrappedKey {
                        master_key_id: "mk1".into(),
                        nonce_b64: "AAAAAAAAAAAAAAAA".into(),
                        ciphertext_b64: format!("ct-{id}"),
                    },
                    policy: None,
                });
            }
            for key in [A, B, US] {
                w.ok(register_op(key, &[]));
            }
            w
        }

        fn apply(&mut self, op: Op) -> CommandOutcome {
            self.at += 1000;
            let index = self.s.applied_index + 1;
            let out = self.s.apply(
                index,
                &Command::new(self.at, Actor::principal("usr_1", "ada"), op),
            );
            self.s.assert_job_indexes_consistent();
            out
        }

        fn ok(&mut self, op: Op) -> Outcome {
            let shown = format!("{op:?}");
            match self.apply(op) {
                Ok(o) => o,
                Err(e) => panic!("{shown} was refused: {e}"),
            }
        }

        fn refused(&mut self, op: Op) -> DomainError {
            let before = self.without_audit();
            let audit_len = self.s.audit.len();
            let shown = format!("{op:?}");
            let Err(e) = self.apply(op) else {
                panic!("{shown} was not refused")
            };
            assert_eq!(
                self.without_audit(),
                before,
                "a refused command changed state"
            );
            assert_eq!(self.s.audit.len(), audit_len + 1);
            assert_eq!(
                self.s.audit.last().map(|r| r.outcome),
                Some(AuditOutcome::Refused)
            );
            e
        }

        fn without_audit(&self) -> RegistryState {
            let mut c = self.s.clone();
            c.audit.clear();
            c.applied_index = 0;
            c
        }

        fn submit_spec(&mut self, id: &str, spec: JobSpec) -> JobRecord {
            match self.ok(Op::SubmitJob {
                id: id.into(),
                project_id: PA.into(),
                spec,
                principal_id: None,
            }) {
                Outcome::Job { job } => job,
                other => panic!("unexpected outcome {other:?}"),
            }
        }

        fn submit(&mut self, id: &str) -> JobRecord {
            self.submit_spec(id, spec())
        }

        /// The node's lease epoch (1 for an unknown node).
        fn epoch(&self, key: &str) -> u64 {
            self.s.node(key).map_or(1, |n| n.lease_epoch)
        }

        fn node(&self, key: &str) -> &NodeRecord {
            self.s.node(key).expect("node is registered")
        }

        fn version(&self, key: &str) -> u64 {
            self.node(key).assign_version
        }

        fn place_op(&self, id: &str, attempt: u32, key: &str) -> PlacementOp {
            self.gang_op(id, attempt, &[key])
        }

        /// Replica `r` on `keys[r]`, each on that node's GPU `r`.
        fn gang_op(&self, id: &str, attempt: u32, keys: &[&str]) -> PlacementOp {
            PlacementOp::Place {
                job_id: id.into(),
                attempt,
                replicas: keys
                    .iter()
                    .enumerate()
                    .map(|(r, key)| ReplicaPlacement {
                        node: (*key).into(),
                        lease_epoch: self.epoch(key),
                        gpu_uuids: vec![format!("GPU-{key}-{r}")],
                        resources: Resources {
                            cpu_millis: 2000,
                            memory_bytes: 4 << 30,
                            gpus: 1,
                        },
                    })
                    .collect(),
            }
        }

        fn placements(&mut self, placements: Vec<PlacementOp>) -> (u32, u32, u32, u32) {
            match self.ok(Op::PlaceJobs { placements }) {
                Outcome::JobsPlaced {
                    placed,
                    waiting,
                    preempted,
                    skipped,
                } => (placed, waiting, preempted, skipped),
                other => panic!("unexpected outcome {other:?}"),
            }
        }

        fn place(&mut self, id: &str, attempt: u32, key: &str) {
            let op = self.place_op(id, attempt, key);
            assert_eq!(self.placements(vec![op]), (1, 0, 0, 0), "{id} not placed");
        }

        fn report(&mut self, key: &str, events: Vec<(&str, u32, JobEventKind)>) -> Vec<EventAck> {
            let lease_epoch = self.epoch(key);
            self.report_at_epoch(key, lease_epoch, events)
                .unwrap_or_else(|e| panic!("report refused: {e}"))
        }

        fn report_at_epoch(
            &mut self,
            key: &str,
            lease_epoch: u64,
            events: Vec<(&str, u32, JobEventKind)>,
        ) -> Result<Vec<EventAck>, DomainError> {
            let at_ms = self.at + 500;
            let events = events
                .into_iter()
                .map(|(job_id, attempt, kind)| {
                    // `job#r` reports for replica r.
                    let (job_id, replica) = match job_id.split_once('#') {
                        Some((id, r)) => (id, r.parse().unwrap_or(u32::MAX)),
                        None => (job_id, 0),
                    };
                    JobEventOp {
                        job_id: job_id.into(),
                        attempt,
                        replica,
                        at_ms,
                        kind,
                    }
                })
                .collect();
            match self.apply(Op::ReportJobEvents {
                node: key.into(),
                lease_epoch,
                events,
            })? {
                Outcome::JobEvents { acks } => Ok(acks),
                other => panic!("unexpected outcome {other:?}"),
            }
        }

        fn start(&mut self, id: &str, attempt: u32, key: &str) {
            let acks = self.report(key, vec![(id, attempt, JobEventKind::Started)]);
            assert!(acks[0].accepted, "{acks:?}");
        }

        fn health(&mut self, key: &str, health: NodeHealthState) {
            let lease_epoch = self.epoch(key);
            self.ok(Op::SetNodeHealth {
                key: key.into(),
                health,
                lease_epoch,
            });
        }

        fn job(&self, id: &str) -> &JobRecord {
            self.s.job(PA, id).expect("job exists")
        }
    }

    #[test]
    fn job_state_names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).expect("serializes");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(JobState::parse("RUNNING"), Some(JobState::Running));
        assert_eq!(JobState::parse("done"), None);
        let terminal: Vec<JobState> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                JobState::Succeeded,
                JobState::Failed,
                JobState::Cancelled,
                JobState::Lost
            ]
        );
        assert_eq!(AttemptOutcome::Preempted.as_str(), "preempted");
        let spec: JobSpec = serde_json::from_str(r#"{"command":"true"}"#).expect("minimal spec");
        assert_eq!(spec, JobSpec::new("true"));
        assert_eq!(spec.retry.max_attempts, 3);
        assert_eq!(spec.cancel_grace_secs, 10);
    }

    #[test]
    fn submit_creates_a_pending_job_in_its_project() {
        let mut w = World::new();
        let job = w.submit("job_1");
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.project_id, PA);
        assert_eq!(job.created_by, "ada");
        assert_eq!(job.created_at, w.at);
        assert!(job.attempts.is_empty() && job.current_attempt().is_none());
        let pending: Vec<&str> = w.s.pending_jobs().map(|j| j.id.as_str()).collect();
        assert_eq!(pending, ["job_1"]);
        let record = w.s.audit.last().expect("audited");
        assert_eq!(
            (record.action.as_str(), record.project.as_deref()),
            ("job.submit", Some(PA))
        );
        assert_eq!(record.target, "job_1");

        let again = w.refused(Op::SubmitJob {
            id: "job_1".into(),
            project_id: PB.into(),
            spec: spec(),
            principal_id: None,
        });
        assert!(
            matches!(again, DomainError::AlreadyExists { .. }),
            "{again:?}"
        );
        let missing = w.refused(Op::SubmitJob {
            id: "job_2".into(),
            project_id: "prj_missing".into(),
            spec: spec(),
            principal_id: None,
        });
        assert!(
            matches!(missing, DomainError::NotFound { .. }),
            "{missing:?}"
        );
    }

    #[test]
    fn malformed_specs_are_refused() {
        let mut w = World::new();
        let mut cases: Vec<(&str, JobSpec)> = Vec::new();
        let mut s = spec();
        s.command = "  ".into();
        cases.push(("command", s));
        let mut s = spec();
        s.command = "a\0b".into();
        cases.push(("command", s));
        let mut s = spec();
        s.command = "x".repeat(MAX_COMMAND + 1);
        cases.push(("command", s));
        let mut s = spec();
        s.name = "n".repeat(MAX_JOB_NAME + 1);
        cases.push(("name", s));
        let mut s = spec();
        s.retry.max_attempts = 0;
        cases.push(("retry.max_attempts", s));
        let mut s = spec();
        s.retry.max_attempts = MAX_ATTEMPTS + 1;
        cases.push(("retry.max_attempts", s));
        let mut s = spec();
        s.env.insert("A=B".into(), "1".into());
        cases.push(("env", s));
        let mut s = spec();
        s.args.push("a\0".into());
        cases.push(("args", s));
        let mut s = spec();
        s.working_dir = Some(String::new());
        cases.push(("working_dir", s));
        for (field, spec) in cases {
            let e = w.refused(Op::SubmitJob {
                id: "job_x".into(),
                project_id: PA.into(),
                spec,
                principal_id: None,
            });
            assert!(
                matches!(&e, DomainError::Invalid { field: f, .. } if f == field),
                "{field}: {e:?}"
            );
        }
        let bad_id = w.refused(Op::SubmitJob {
            id: "job/1".into(),
            project_id: PA.into(),
            spec: spec(),
            principal_id: None,
        });
        assert!(matches!(bad_id, DomainError::Invalid { .. }));
        let mut edge = spec();
        edge.name = "n".repeat(MAX_JOB_NAME);
        edge.retry.max_attempts = MAX_ATTEMPTS;
        w.submit_spec("job_edge", edge);
    }

    #[test]
    fn placement_schedules_the_job_on_the_node() {
        let mut w = World::new();
        w.submit("job_1");
        w.ok(Op::PlaceJobs {
            placements: vec![PlacementOp::Wait {
                job_id: "job_1".into(),
                reason: "no node has a free GPU".into(),
            }],
        });
        assert_eq!(
            w.job("job_1").pending_reason.as_deref(),
            Some("no node has a free GPU")
        );
        let version = w.version(A);
        w.place("job_1", 1, A);
        let job = w.job("job_1");
        assert_eq!(job.state, JobState::Scheduled);
        assert_eq!(job.pending_reason, None);
        let attempt = job.current_attempt().expect("current attempt");
        assert_eq!(attempt.attempt, 1);
        assert_eq!(attempt.node, A);
        assert_eq!(
            (attempt.region.as_str(), attempt.cluster.as_str()),
            ("eu", "eu1")
        );
        assert_eq!(attempt.lease_epoch, 1);
        assert_eq!(attempt.gpu_uuids, [format!("GPU-{A}-0")]);
        assert_eq!(attempt.resources.gpus, 1);
        assert_eq!(attempt.scheduled_at, w.at);
        assert_eq!(attempt.outcome, None);
        assert_eq!(w.s.pending_jobs().count(), 0);
        let active: Vec<&str> = w.s.active_jobs().map(|j| j.id.as_str()).collect();
        assert_eq!(active, ["job_1"]);
        let (v, jobs) = w.s.node_assignments(A);
        assert_eq!(v, version + 1);
        assert_eq!(jobs.len(), 1);
        assert_eq!(w.s.node_assignments(B).1.len(), 0);
        let record = w.s.audit.last().expect("audited");
        assert_eq!(
            (record.action.as_str(), record.project.as_deref()),
            ("job.place", None)
        );
        assert_eq!(record.detail, "placed=1 waiting=0 preempted=0 skipped=0");
    }

    #[test]
    fn stale_placements_are_skipped() {
        let mut w = World::new();
        w.submit("job_1");
        w.submit("job_2");
        w.health(B, NodeHealthState::Unreachable);
        let before = w.without_audit();
        let mut wrong_epoch = w.place_op("job_1", 1, A);
        if let PlacementOp::Place { replicas, .. } = &mut wrong_epoch {
            replicas[0].lease_epoch += 1;
        }
        let skipped = w.placements(vec![
            w.place_op("job_1", 2, A),           // not the next attempt
            wrong_epoch,                         // another registration
            w.place_op("job_1", 1, B),           // node not ready
            w.place_op("job_missing", 1, A),     // no such job
            w.place_op("job_1", 1, "eu/eu1/zz"), // no such node
            PlacementOp::Preempt {
                job_id: "job_1".into(),
                attempt: 1,
                by: "job_2".into(),
            }, // not on a node
        ]);
        assert_eq!(skipped, (0, 0, 0, 6));
        let mut after = w.without_audit();
        after.applied_index = 0;
        assert_eq!(after, before, "skipped items changed nothing");

        // The same job twice in one pass: the second is stale once the first applied.
        let counts = w.placements(vec![
            w.place_op("job_1", 1, A),
            w.place_op("job_1", 1, US),
            PlacementOp::Wait {
                job_id: "job_1".into(),
                reason: "late".into(),
            },
            PlacementOp::Wait {
                job_id: "job_2".into(),
                reason: "busy".into(),
            },
        ]);
        assert_eq!(counts, (1, 1, 0, 2));
        assert_eq!(w.job("job_1").attempts.len(), 1);
        assert_eq!(
            w.job("job_1").current_attempt().map(|a| a.node.as_str()),
            Some(A)
        );
        assert_eq!(w.job("job_1").pending_reason, None);
    }

    #[test]
    fn an_unchanged_pending_reason_is_a_no_op() {
        let mut w = World::new();
        w.submit("job_1");
        let wait = || PlacementOp::Wait {
            job_id: "job_1".into(),
            reason: "insufficient cpu on 3 nodes".into(),
        };
        w.placements(vec![wait()]);
        let updated = w.job("job_1").updated_at;
        assert_eq!(w.placements(vec![wait()]), (0, 1, 0, 0));
        assert_eq!(w.job("job_1").updated_at, updated);
    }

    #[test]
    fn a_job_runs_and_succeeds() {
        let mut w = World::new();
        w.submit("job_1");
        w.place("job_1", 1, A);
        let version = w.version(A);
        w.start("job_1", 1, A);
        let job = w.job("job_1").clone();
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.attempts[0].started_at, Some(w.at - 500));
        assert_eq!(w.version(A), version, "a start changes no assignment");

        // A repeated start is accepted and changes nothing.
        let acks = w.report(A, vec![("job_1", 1, JobEventKind::Started)]);
        assert!(acks[0].accepted);
        let mut again = w.job("job_1").clone();
        again.updated_at = job.updated_at;
        assert_eq!(again, job);

        let acks = w.report(A, vec![("job_1", 1, exited(0))]);
        assert_eq!(acks, [EventAck::accepted()]);
        let job = w.job("job_1");
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.finished_at, Some(w.at));
        let attempt = &job.attempts[0];
        assert_eq!(attempt.outcome, Some(AttemptOutcome::Succeeded));
        assert_eq!(attempt.exit_code, Some(0));
        assert_eq!(attempt.ended_at, Some(w.at - 500));
        assert_eq!(attempt.cpu_time_ms, Some(1500));
        assert_eq!(attempt.max_rss_bytes, Some(1 << 20));
        assert_eq!(job.current_attempt(), None);
        assert_eq!(w.s.node_assignments(A), (version + 1, Vec::new()));
        let record = w.s.audit.last().expect("audited");
        assert_eq!(
            (
                record.action.as_str(),
                record.project.as_deref(),
                record.target.as_str()
            ),
            ("job.report", None, A)
        );
        assert_eq!(record.detail, "accepted=1 stale=0");

        // A report about a finished job is stale.
        let acks = w.report(A, vec![("job_1", 1, exited(0))]);
        assert!(!acks[0].accepted && acks[0].reason.starts_with("stale:"));
    }

    #[test]
    fn reports_are_fenced_by_the_lease_epoch() {
        let mut w = World::new();
        w.submit("job_1");
        w.place("job_1", 1, A);
        w.start("job_1", 1, A);
        w.ok(register_op(A, &[("job_1", 1)]));
        assert_eq!(w.epoch(A), 2);
        let before = w.without_audit();
        let Err(e) = w.report_at_epoch(A, 1, vec![("job_1", 1, exited(0))]) else {
            panic!("an old epoch's report was accepted")
        };
        assert!(matches!(e, DomainError::FailedPrecondition(_)), "{e:?}");
        assert_eq!(w.without_audit(), before);
        assert_eq!(
            w.s.audit.last().map(|r| r.outcome),
            Some(AuditOutcome::Refused)
        );
        let unknown = w.report_at_epoch("eu/eu1/zz", 1, vec![]);
        assert!(matches!(unknown, Err(DomainError::FailedPrecondition(_))));
        // With the current epoch the re-adopted attempt reports normally.
        let acks = w.report(A, vec![("job_1", 1, exited(0))]);
        assert!(acks[0].accepted);
        assert_eq!(w.job("job_1").state, JobState::Succeeded);
    }

    #[test]
    fn an_old_attempt_cannot_report_after_a_reschedule() {
        let mut w = World::new();
        w.submit("job_1");
        w.place("job_1", 1, A);
        w.start("job_1", 1, A);
        w.health(A, NodeHealthState::Lost);
        w.place("job_1", 2, B);
        // A's agent comes back and reports attempt 1 as a success.
        w.ok(register_op(A, &[("job_1", 1)]));
        let before = w.without_audit();
        let acks = w.report(
            A,
            vec![
                ("job_1", 1, exited(0)),
                ("job_1", 2, JobEventKind::Started),
                ("job_missing", 1, JobEventKind::Started),
            ],
        );
        assert_eq!(acks.len(), 3);
        assert!(
            acks.iter()
                .all(|a| !a.accepted && a.reason.starts_with("stale:")),
            "{acks:?}"
        );
        assert!(acks[0].reason.contains("attempt 1"), "{}", acks[0].reason);
        assert!(
            acks[1].reason.contains("another node"),
            "{}",
            acks[1].reason
        );
        let mut after = w.without_audit();
        after.applied_index = 0;
        assert_eq!(after, before, "stale events changed nothing");
        let job = w.job("job_1");
        assert_eq!(job.state, JobState::Scheduled);
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Lost));
        assert_eq!(job.current_attempt().map(|a| a.node.as_str()), Some(B));

        // In one batch, accepted and stale events are answered in order.
        let acks = w.report(
            B,
            vec![("job_1", 1, exited(0)), ("job_1", 2, JobEventKind::Started)],
        );
        assert_eq!(
            acks.iter().map(|a| a.accepted).collect::<Vec<_>>(),
            [false, true]
        );
        assert_eq!(w.job("job_1").state, JobState::Running);
    }

    #[test]
    fn a_lost_node_reschedules_its_jobs_until_the_budget_is_spent() {
        let mut w = World::new();
        let mut s = spec();
        s.retry.max_attempts = 2;
        w.submit_spec("job_1", s);
        w.submit("job_other");
        w.place("job_1", 1, A);
        w.place("job_other", 1, B);
        w.start("job_1", 1, A);
        let version = w.version(A);
        w.health(A, NodeHealthState::Lost);
        let job = w.job("job_1");
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.prefer_region.as_deref(), Some("eu"));
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Lost));
        assert_eq!(job.attempts[0].detail, "node lost");
        assert_eq!(job.attempts[0].ended_at, Some(w.at));
        assert_eq!(w.version(A), version + 1);
        assert_eq!(
            w.job("job_other").state,
            JobState::Scheduled,
            "other nodes' jobs stay"
        );
        assert!(w
            .s
            .audit
            .last()
            .is_some_and(|r| r.detail.ends_with("1 jobs lost")));
        let pending: Vec<&str> = w.s.pending_jobs().map(|j| j.id.as_str()).collect();
        assert_eq!(pending, ["job_1"]);

        w.place("job_1", 2, US);
        w.start("job_1", 2, US);
        w.health(US, NodeHealthState::Lost);
        let job = w.job("job_1");
        assert_eq!(job.state, JobState::Lost, "two attempts of two are spent");
        assert_eq!(job.finished_at, Some(w.at));
        assert_eq!(job.attempts.len(), 2);
        assert_eq!(w.s.pending_jobs().count(), 0);
    }

    #[test]
    fn an_unreachable_node_keeps_its_jobs() {
        let mut w = World::new();
        w.submit("job_1");
        w.place("job_1", 1, A);
        w.start("job_1", 1, A);
        let job = w.job("job_1").clone();
        w.health(A, NodeHealthState::Unreachable);
        assert_eq!(w.job("job_1"), &job);
        w.health(A, NodeHealthState::Ready);
        assert_eq!(w.job("job_1"), &job);
    }

    #[test]
    fn a_lost_node_ends_a_job_being_cancelled_as_cancelled() {
        let mut w = World::new();
        w.submit("job_1");
        w.place("job_1", 1, A);
        w.ok(Op::CancelJob {
            project_id: PA.into(),
            id: "job_1".into(),
        });
        w.health(A, NodeHealthState::Lost);
        let job = w.job("job_1");
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Lost));
    }

    #[test]
    fn re_registration_keeps_held_attempts_and_loses_unheld_running_ones() {
        let mut w = World::new();
        for id in ["job_held", "job_gone", "job_waiting"] {
            w.submit(id);
            w.place(id, 1, A);
        }
        w.start("job_held", 1, A);
        w.start("job_gone", 1, A);
        let version = w.version(A);
        w.ok(register_op(A, &[("job_held", 1), ("job_unknown", 4)]));
        assert_eq!(w.epoch(A), 2);
        assert_eq!(
            w.version(A),
            version + 2,
            "registration and the lost attempt"
        );

        let held = w.job("job_held");
        assert_eq!(held.state, JobState::Running);
        assert_eq!(held.attempts[0].lease_epoch, 2);
        let gone = w.job("job_gone");
        assert_eq!(gone.state, JobState::Pending);
        assert_eq!(gone.attempts[0].outcome, Some(AttemptOutcome::Lost));
        assert_eq!(
            gone.attempts[0].detail,
            "not running after the agent restarted"
        );
        assert_eq!(gone.prefer_region.as_deref(), Some("eu"));
        let waiting = w.job("job_waiting");
        assert_eq!(
            waiting.state,
            JobState::Scheduled,
            "a scheduled attempt may still start"
        );
        assert_eq!(waiting.attempts[0].lease_epoch, 2);
        let (_, jobs) = w.s.node_assignments(A);
        let ids: Vec<&str> = jobs.iter().map(|(j, _)| j.id.as_str()).collect();
        assert_eq!(ids, ["job_held", "job_waiting"]);
        assert!(w
            .s
            .audit
            .last()
            .is_some_and(|r| r.detail == "lease epoch 2, 1 jobs lost"));
        // The re-adopted attempts report under the new epoch.
        let acks = w.report(
            A,
            vec![
                ("job_held", 1, exited(0)),
                ("job_waiting", 1, JobEventKind::Started),
            ],
        );
        assert!(acks.iter().all(|a| a.accepted), "{acks:?}");
    }

    #[test]
    fn cancel_depends_on_the_state() {
        let mut w = World::new();
        w.submit("job_pending");
        let out = w.ok(Op::CancelJob {
            project_id: PA.into(),
            id: "job_pending".into(),
        });
        let Outcome::Job { job } = out else {
            panic!("unexpected outcome {out:?}")
        };
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.finished_at, Some(w.at));
        assert_eq!(w.s.pending_jobs().count(), 0);
        let record = w.s.audit.last().expect("audited");
        assert_eq!(
            (record.action.as_str(), record.project.as_deref()),
            ("job.cancel", Some(PA))
        );

        w.submit("job_running");
        w.place("job_running", 1, A);
        w.start("job_running", 1, A);
        let version = w.version(A);
        let cancel = || Op::CancelJob {
            project_id: PA.into(),
            id: "job_running".into(),
        };
        w.ok(cancel());
        let job = w.job("job_running");
        assert_eq!(job.state, JobState::Running, "the agent stops it first");
        assert!(job.cancel_requested);
        assert_eq!(w.version(A), version + 1);
        w.ok(cancel());
        assert_eq!(
            w.version(A),
            version + 1,
            "a repeated cancel changes nothing"
        );
        // The process exits 0 after the cancel was asked for: cancel wins.
        let acks = w.report(A, vec![("job_running", 1, exited(0))]);
        assert!(acks[0].accepted);
        let job = w.job("job_running");
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Cancelled));
        assert_eq!(job.attempts[0].exit_code, Some(0));

        let finished = w.refused(cancel());
        assert!(
            matches!(finished, DomainError::FailedPrecondition(_)),
            "{finished:?}"
        );
        let finished = w.refused(Op::CancelJob {
            project_id: PA.into(),
            id: "job_pending".into(),
        });
        assert!(matches!(finished, DomainError::FailedPrecondition(_)));
    }

    #[test]
    fn an_exit_reported_as_cancelled_ends_the_job_cancelled() {
        let mut w = World::new();
        w.submit("job_1");
        w.place("job_1", 1, A);
        w.start("job_1", 1, A);
        let acks = w.report(
            A,
            vec![(
                "job_1",
                1,
                JobEventKind::Exited {
                    exit_code: None,
                    signal: Some(15),
                    cancelled: true,
                    timed_out: false,
                    cpu_time_ms: None,
                    max_rss_bytes: None,
                },
            )],
        );
        assert!(acks[0].accepted);
        assert_eq!(w.job("job_1").state, JobState::Cancelled);
        assert_eq!(w.job("job_1").attempts[0].signal, Some(15));
    }

    #[test]
    fn failures_end_the_job_unless_retry_on_failure() {
        let mut w = World::new();
        w.submit("job_exit");
        let mut timed = spec();
        timed.timeout_secs = Some(5);
        w.submit_spec("job_timeout", timed);
        w.submit("job_launch");
        let mut retried = spec();
        retried.retry = RetryPolicy {
            max_attempts: 2,
            on_failure: true,
        };
        w.submit_spec("job_retried", retried);
        for id in ["job_exit", "job_timeout", "job_launch", "job_retried"] {
            w.place(id, 1, A);
        }
        for id in ["job_exit", "job_timeout", "job_retried"] {
            w.start(id, 1, A);
        }
        let acks = w.report(
            A,
            vec![
                ("job_exit", 1, exited(3)),
                (
                    "job_timeout",
                    1,
                    JobEventKind::Exited {
                        exit_code: None,
                        signal: Some(9),
                        cancelled: false,
                        timed_out: true,
                        cpu_time_ms: None,
                        max_rss_bytes: None,
                    },
                ),
                (
                    "job_launch",
                    1,
                    JobEventKind::LaunchFailed {
                        message: "no such file: python3".into(),
                    },
                ),
                ("job_retried", 1, exited(1)),
            ],
        );
        assert!(acks.iter().all(|a| a.accepted), "{acks:?}");
        let exit = w.job("job_exit");
        assert_eq!(exit.state, JobState::Failed);
        assert_eq!(exit.attempts[0].detail, "exited with code 3");
        let timeout = w.job("job_timeout");
        assert_eq!(timeout.state, JobState::Failed);
        assert_eq!(timeout.attempts[0].detail, "timed out after 5s");
        assert_eq!(timeout.attempts[0].outcome, Some(AttemptOutcome::Failed));
        let launch = w.job("job_launch");
        assert_eq!(launch.state, JobState::Failed);
        assert_eq!(launch.attempts[0].detail, "no such file: python3");
        assert_eq!(launch.attempts[0].started_at, None);
        let retried = w.job("job_retried");
        assert_eq!(retried.state, JobState::Pending);
        assert_eq!(retried.prefer_region.as_deref(), Some("eu"));
        w.place("job_retried", 2, US);
        w.start("job_retried", 2, US);
        w.report(US, vec![("job_retried", 2, exited(1))]);
        let retried = w.job("job_retried");
        assert_eq!(
            retried.state,
            JobState::Failed,
            "the budget of two is spent"
        );
        assert_eq!(w.s.node_assignments(A).1.len(), 0);
    }

    #[test]
    fn a_vanished_process_is_lost_and_retried() {
        let mut w = World::new();
        let mut s = spec();
        s.retry.max_attempts = 1;
        w.submit("job_retry");
        w.submit_spec("job_once", s);
        w.place("job_retry", 1, A);
        w.place("job_once", 1, A);
        let vanished = || JobEventKind::Vanished {
            reason: "process gone after reboot".into(),
        };
        w.report(
            A,
            vec![("job_retry", 1, vanished()), ("job_once", 1, vanished())],
        );
        let retry = w.job("job_retry");
        assert_eq!(retry.state, JobState::Pending);
        assert_eq!(retry.attempts[0].outcome, Some(AttemptOutcome::Lost));
        assert_eq!(retry.attempts[0].detail, "process gone after reboot");
        assert_eq!(w.job("job_once").state, JobState::Lost);
    }

    #[test]
    fn preemption_returns_the_job_to_pending_without_spending_its_budget() {
        let mut w = World::new();
        let mut s = spec();
        s.retry.max_attempts = 2;
        w.submit_spec("job_low", s);
        w.place("job_low", 1, A);
        w.start("job_low", 1, A);
        let mut high = spec();
        high.priority = 10;
        high.preemption = true;
        w.submit_spec("job_high", high);
        let version = w.version(A);
        let preempt = |attempt| PlacementOp::Preempt {
            job_id: "job_low".into(),
            attempt,
            by: "job_high".into(),
        };
        assert_eq!(
            w.placements(vec![preempt(2)]),
            (0, 0, 0, 1),
            "wrong attempt"
        );
        assert_eq!(w.placements(vec![preempt(1)]), (0, 0, 1, 0));
        let job = w.job("job_low");
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Preempted));
        assert_eq!(job.attempts[0].detail, "preempted by job job_high");
        assert_eq!(job.prefer_region, None);
        assert_eq!(w.version(A), version + 1);

        // Attempt 2 is lost: one counted attempt of two, so the job is retried.
        w.place("job_low", 2, B);
        w.start("job_low", 2, B);
        w.health(B, NodeHealthState::Lost);
        assert_eq!(w.job("job_low").state, JobState::Pending);
        w.place("job_low", 3, US);
        w.start("job_low", 3, US);
        w.health(US, NodeHealthState::Lost);
        assert_eq!(w.job("job_low").state, JobState::Lost);
    }

    #[test]
    fn other_projects_jobs_are_invisible() {
        let mut w = World::new();
        w.submit("job_1");
        assert!(w.s.job(PA, "job_1").is_some());
        assert!(w.s.job(PB, "job_1").is_none());
        assert!(w
            .s
            .job_page(PB, None, &PageRequest::default())
            .items
            .is_empty());
        let e = w.refused(Op::CancelJob {
            project_id: PB.into(),
            id: "job_1".into(),
        });
        assert_eq!(e, DomainError::not_found("job", "job_1"));
        assert_eq!(
            w.s.audit.last().and_then(|r| r.project.as_deref()),
            Some(PB)
        );
        assert_eq!(w.job("job_1").state, JobState::Pending);
        assert!(w.s.usage(PB, 0, u64::MAX).jobs.is_empty());
    }

    #[test]
    fn job_pages_come_in_id_order_filtered_by_state() {
        let mut w = World::new();
        for id in ["job_c", "job_a", "job_b", "job_d"] {
            w.submit(id);
        }
        w.place("job_b", 1, A);
        w.ok(Op::SubmitJob {
            id: "job_0".into(),
            project_id: PB.into(),
            spec: spec(),
            principal_id: None,
        });
        let req = PageRequest {
            page_size: 2,
            after: None,
        };
        let first = w.s.job_page(PA, None, &req);
        let ids: Vec<&str> = first.items.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["job_a", "job_b"]);
        let token = first.next_page_token.expect("more pages");
        let next = w.s.job_page(
            PA,
            None,
            &PageRequest::new(Some(2), Some(&token)).expect("token"),
        );
        let ids: Vec<&str> = next.items.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["job_c", "job_d"]);
        assert_eq!(next.next_page_token, None);
        let pending =
            w.s.job_page(PA, Some(JobState::Pending), &PageRequest::default());
        let ids: Vec<&str> = pending.items.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["job_a", "job_c", "job_d"]);
        let pending: Vec<&str> = w.s.pending_jobs().map(|j| j.id.as_str()).collect();
        assert_eq!(
            pending,
            ["job_0", "job_a", "job_c", "job_d"],
            "all projects"
        );
    }

    #[test]
    fn active_jobs_span_nodes_in_id_order() {
        let mut w = World::new();
        for (id, node) in [("job_3", A), ("job_1", US), ("job_2", A)] {
            w.submit(id);
            w.place(id, 1, node);
        }
        let ids: Vec<&str> = w.s.active_jobs().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["job_1", "job_2", "job_3"]);
        assert_eq!(w.s.node_assignments("eu/eu1/zz"), (0, Vec::new()));
    }

    #[test]
    fn idle_gpus_are_fenced_and_sorted() {
        let mut w = World::new();
        let op = |epoch| Op::SetIdleGpus {
            node: A.into(),
            lease_epoch: epoch,
            idle_gpus: vec!["GPU-b".into(), "GPU-a".into(), "GPU-b".into()],
        };
        w.ok(op(1));
        assert_eq!(w.node(A).idle_gpus, ["GPU-a", "GPU-b"]);
        let record = w.s.audit.last().expect("audited");
        assert_eq!(
            (record.action.as_str(), record.project.as_deref()),
            ("node.idle_gpus", None)
        );
        let stale = w.refused(op(7));
        assert!(matches!(stale, DomainError::FailedPrecondition(_)));
        let unknown = w.refused(Op::SetIdleGpus {
            node: "eu/eu1/zz".into(),
            lease_epoch: 1,
            idle_gpus: Vec::new(),
        });
        assert!(matches!(unknown, DomainError::NotFound { .. }));
        w.ok(register_op(A, &[]));
        assert!(
            w.node(A).idle_gpus.is_empty(),
            "a new registration starts afresh"
        );
    }

    #[test]
    fn registration_records_the_node_inventory() {
        let w = World::new();
        let node = w.node(A);
        assert_eq!(node.gpus.len(), 2);
        assert_eq!(node.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(node.rpc_addr, "127.0.0.1:7000");
        assert_eq!(
            (node.os.as_str(), node.limit_mode.as_str()),
            ("Debian 12", "cgroup-v1")
        );
        assert_eq!(node.assign_version, 1);
        assert_eq!(node.key, node_key("eu", "eu1", "a1"));
    }

    #[test]
    fn assign_version_moves_with_the_assignments() {
        let mut w = World::new();
        w.submit("job_1");
        let v0 = w.version(A);
        w.place("job_1", 1, A);
        assert_eq!(w.version(A), v0 + 1, "placement");
        w.start("job_1", 1, A);
        assert_eq!(w.version(A), v0 + 1, "a start is not an assignment change");
        w.ok(Op::CancelJob {
            project_id: PA.into(),
            id: "job_1".into(),
        });
        assert_eq!(w.version(A), v0 + 2, "cancel flag");
        w.report(A, vec![("job_1", 1, exited(0))]);
        assert_eq!(w.version(A), v0 + 3, "attempt ended");
        w.ok(register_op(A, &[]));
        assert_eq!(w.version(A), v0 + 4, "registration");
        assert_eq!(w.version(B), 1, "other nodes are untouched");
    }

    #[test]
    fn deleting_a_project_needs_its_jobs_finished() {
        let mut w = World::new();
        w.ok(Op::SubmitJob {
            id: "job_b".into(),
            project_id: PB.into(),
            spec: spec(),
            principal_id: None,
        });
        let e = w.refused(Op::DeleteProject { id: PB.into() });
        assert!(matches!(e, DomainError::FailedPrecondition(_)), "{e:?}");
        w.ok(Op::CancelJob {
            project_id: PB.into(),
            id: "job_b".into(),
        });
        w.ok(Op::DeleteProject { id: PB.into() });
        assert!(w.s.job(PB, "job_b").is_none());
        assert!(w.s.jobs.is_empty() && w.s.job_ids_by_project.is_empty());
    }

    #[test]
    fn snapshots_keep_jobs_and_indexes() {
        let mut w = World::new();
        w.submit("job_1");
        w.submit("job_2");
        w.place("job_2", 1, A);
        let bytes = w.s.to_bytes();
        let restored = RegistryState::from_bytes(&bytes).expect("restores");
        assert_eq!(restored, w.s);
        restored.assert_job_indexes_consistent();
        assert_eq!(restored.to_bytes(), bytes);
    }

    // ---- gangs ----

    fn gang_spec(replicas: u32) -> JobSpec {
        let mut spec = spec();
        spec.replicas = replicas;
        spec
    }

    fn outcomes(job: &JobRecord, attempt: u32) -> Vec<Option<AttemptOutcome>> {
        job.attempts
            .iter()
            .filter(|a| a.attempt == attempt)
            .map(|a| a.outcome)
            .collect()
    }

    #[test]
    fn a_gang_is_placed_whole_or_not_at_all() {
        let mut w = World::new();
        w.submit_spec("gang", gang_spec(3));
        let before = w.without_audit();
        let mut stale_epoch = w.gang_op("gang", 1, &[A, B, US]);
        if let PlacementOp::Place { replicas, .. } = &mut stale_epoch {
            replicas[2].lease_epoch += 1;
        }
        let skipped = w.placements(vec![
            w.gang_op("gang", 1, &[A, B]),              // one replica short
            w.gang_op("gang", 1, &[A, B, US, A]),       // one too many
            w.gang_op("gang", 1, &[A, B, "eu/eu1/zz"]), // a node that does not exist
            stale_epoch,                                // a node registered again since
        ]);
        assert_eq!(skipped, (0, 0, 0, 4));
        let mut after = w.without_audit();
        after.nodes = before.nodes.clone();
        assert_eq!(after.jobs, before.jobs, "a skipped gang leaves no trace");

        let versions = [w.version(A), w.version(B), w.version(US)];
        w.placements(vec![w.gang_op("gang", 1, &[A, A, US])]);
        let job = w.job("gang");
        assert_eq!(job.state, JobState::Scheduled);
        let placed: Vec<(u32, u32, &str)> = job
            .attempts
            .iter()
            .map(|a| (a.attempt, a.replica, a.node.as_str()))
            .collect();
        assert_eq!(placed, [(1, 0, A), (1, 1, A), (1, 2, US)]);
        assert_eq!(job.current_replicas().len(), 3);
        assert_eq!(job.attempt_count(), 1);
        assert_eq!(w.version(A), versions[0] + 1, "one bump per node");
        assert_eq!(w.version(B), versions[1]);
        assert_eq!(w.version(US), versions[2] + 1);
        // Two replicas of the gang share node A; each is its own assignment there.
        let (_, on_a) = w.s.node_assignments(A);
        let on_a: Vec<(&str, u32)> = on_a
            .iter()
            .map(|(j, a)| (j.id.as_str(), a.replica))
            .collect();
        assert_eq!(on_a, [("gang", 0), ("gang", 1)]);
        let (_, on_us) = w.s.node_assignments(US);
        assert_eq!(on_us.len(), 1);
    }

    #[test]
    fn a_gang_succeeds_when_every_replica_has_succeeded() {
        let mut w = World::new();
        w.submit_spec("gang", gang_spec(2));
        w.placements(vec![w.gang_op("gang", 1, &[A, B])]);
        let acks = w.report(A, vec![("gang#0", 1, JobEventKind::Started)]);
        assert!(acks[0].accepted, "{acks:?}");
        assert_eq!(w.job("gang").state, JobState::Running);
        w.report(B, vec![("gang#1", 1, JobEventKind::Started)]);

        // Replica 0 finishes first: the job keeps running, node A has nothing left to run.
        let version_a = w.version(A);
        w.report(A, vec![("gang#0", 1, exited(0))]);
        let job = w.job("gang");
        assert_eq!(job.state, JobState::Running);
        assert_eq!(outcomes(job, 1), [Some(AttemptOutcome::Succeeded), None]);
        assert_eq!(w.version(A), version_a + 1);
        assert!(w.s.node_assignments(A).1.is_empty());
        assert_eq!(w.s.node_assignments(B).1.len(), 1);
        // A repeated report of the finished replica changes nothing.
        let before = w.without_audit();
        let again = w.report(A, vec![("gang#0", 1, exited(0))]);
        assert!(again[0].accepted);
        let mut after = w.without_audit();
        after.jobs.get_mut("gang").expect("job").updated_at = before.jobs["gang"].updated_at;
        assert_eq!(after.jobs, before.jobs);
        // A replica the gang does not have is stale.
        let unknown = w.report(B, vec![("gang#2", 1, exited(0))]);
        assert!(
            !unknown[0].accepted && unknown[0].reason.contains("no replica 2"),
            "{unknown:?}"
        );
        // A replica reported from the wrong node is stale.
        let wrong = w.report(A, vec![("gang#1", 1, exited(0))]);
        assert!(
            wrong[0]
                .reason
                .contains("replica 1 of attempt 1 of job gang runs on another node"),
            "{wrong:?}"
        );

        w.report(B, vec![("gang#1", 1, exited(0))]);
        let job = w.job("gang");
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(
            outcomes(job, 1),
            [
                Some(AttemptOutcome::Succeeded),
                Some(AttemptOutcome::Succeeded)
            ]
        );
        assert!(job.finished_at.is_some());
        assert!(w.s.node_assignments(B).1.is_empty());
    }

    #[test]
    fn one_failed_replica_stops_the_whole_gang() {
        let mut w = World::new();
        let mut spec = gang_spec(2);
        spec.retry = RetryPolicy {
            max_attempts: 2,
            on_failure: true,
        };
        w.submit_spec("gang", spec);
        w.placements(vec![w.gang_op("gang", 1, &[A, B])]);
        w.report(A, vec![("gang#0", 1, JobEventKind::Started)]);
        w.report(B, vec![("gang#1", 1, JobEventKind::Started)]);
        let versions = (w.version(A), w.version(B));
        w.report(B, vec![("gang#1", 1, exited(3))]);
        let job = w.job("gang");
        assert_eq!(
            job.state,
            JobState::Pending,
            "retried: on_failure with budget left"
        );
        assert_eq!(
            outcomes(job, 1),
            [Some(AttemptOutcome::Stopped), Some(AttemptOutcome::Failed)]
        );
        assert_eq!(
            job.attempts[0].detail,
            "stopped with its gang (replica 1 failed: exited with code 3)"
        );
        assert_eq!(job.attempts[1].exit_code, Some(3));
        assert_eq!(job.prefer_region.as_deref(), Some("eu"));
        assert_eq!(
            (w.version(A), w.version(B)),
            (versions.0 + 1, versions.1 + 1)
        );
        assert!(w.s.node_assignments(A).1.is_empty(), "replica 0 must stop");
        // The stopped replica's own exit arrives later: the attempt is over.
        let late = w.report(A, vec![("gang#0", 1, exited(143))]);
        assert!(!late[0].accepted, "{late:?}");

        // The second attempt fails too: no budget left.
        w.placements(vec![w.gang_op("gang", 2, &[A, B])]);
        assert_eq!(w.job("gang").attempt_count(), 2);
        w.report(
            A,
            vec![(
                "gang#0",
                2,
                JobEventKind::LaunchFailed {
                    message: "no such file".into(),
                },
            )],
        );
        let job = w.job("gang");
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(
            outcomes(job, 2),
            [Some(AttemptOutcome::Failed), Some(AttemptOutcome::Stopped)]
        );
    }

    #[test]
    fn a_lost_node_costs_the_gang_one_attempt_and_a_preemption_none() {
        let mut w = World::new();
        w.submit_spec("gang", gang_spec(3));
        w.placements(vec![w.gang_op("gang", 1, &[A, A, B])]);
        w.report(
            A,
            vec![
                ("gang#0", 1, JobEventKind::Started),
                ("gang#1", 1, JobEventKind::Started),
            ],
        );
        w.health(A, NodeHealthState::Lost);
        let job = w.job("gang");
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(
            outcomes(job, 1),
            [
                Some(AttemptOutcome::Lost),
                Some(AttemptOutcome::Lost),
                Some(AttemptOutcome::Stopped)
            ]
        );
        assert!(w.s.node_assignments(B).1.is_empty());
        assert_eq!(job.counted_attempts(), 1, "a gang attempt counts once");

        w.placements(vec![w.gang_op("gang", 2, &[B, B, US])]);
        let mut urgent = spec();
        urgent.priority = 1;
        urgent.preemption = true;
        w.submit_spec("urgent", urgent);
        w.placements(vec![PlacementOp::Preempt {
            job_id: "gang".into(),
            attempt: 2,
            by: "urgent".into(),
        }]);
        let job = w.job("gang");
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(outcomes(job, 2), [Some(AttemptOutcome::Preempted); 3]);
        assert_eq!(job.counted_attempts(), 1, "preempted attempts are free");
        assert_eq!(job.next_attempt(), 3);
    }

    #[test]
    fn cancelling_a_gang_stops_every_replica() {
        let mut w = World::new();
        w.submit_spec("gang", gang_spec(2));
        w.placements(vec![w.gang_op("gang", 1, &[A, US])]);
        let versions = (w.version(A), w.version(US));
        w.ok(Op::CancelJob {
            project_id: PA.into(),
            id: "gang".into(),
        });
        assert_eq!(
            (w.version(A), w.version(US)),
            (versions.0 + 1, versions.1 + 1)
        );
        w.report(US, vec![("gang#1", 1, exited(143))]);
        let job = w.job("gang");
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(
            outcomes(job, 1),
            [
                Some(AttemptOutcome::Stopped),
                Some(AttemptOutcome::Cancelled)
            ]
        );
        assert!(w.s.node_assignments(A).1.is_empty());
    }

    #[test]
    fn a_restarted_agent_that_lost_one_replica_loses_the_gang_attempt() {
        let mut w = World::new();
        w.submit_spec("gang", gang_spec(2));
        w.placements(vec![w.gang_op("gang", 1, &[A, A])]);
        w.report(
            A,
            vec![
                ("gang#0", 1, JobEventKind::Started),
                ("gang#1", 1, JobEventKind::Started),
            ],
        );
        // The agent comes back holding replica 0 only.
        let mut op = register_op(A, &[("gang", 1)]);
        if let Op::RegisterNode { held, .. } = &mut op {
            held[0].replica = 0;
        }
        w.ok(op);
        let job = w.job("gang");
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(
            outcomes(job, 1),
            [Some(AttemptOutcome::Stopped), Some(AttemptOutcome::Lost)]
        );
        assert_eq!(
            job.attempts[1].detail,
            "not running after the agent restarted"
        );

        // Holding both, the attempt is kept and moves to the new epoch.
        w.placements(vec![w.gang_op("gang", 2, &[A, A])]);
        w.report(
            A,
            vec![
                ("gang#0", 2, JobEventKind::Started),
                ("gang#1", 2, JobEventKind::Started),
            ],
        );
        let mut op = register_op(A, &[("gang", 2), ("gang", 2)]);
        if let Op::RegisterNode { held, .. } = &mut op {
            held[1].replica = 1;
        }
        w.ok(op);
        let job = w.job("gang");
        assert_eq!(job.state, JobState::Running);
        let epoch = w.epoch(A);
        assert!(job
            .current_replicas()
            .iter()
            .all(|a| a.lease_epoch == epoch));
    }

    const HOUR: u64 = 3_600_000;
    const MINUTE: u64 = 60_000;

    impl World {
        /// The next command is stamped `at - 500`, so a report it carries happens exactly at `at`.
        fn report_at(&mut self, at: u64, key: &str, event: (&str, u32, JobEventKind)) {
            self.at = at - 500;
            let acks = self.report(key, vec![event]);
            assert!(acks[0].accepted, "{acks:?}");
        }

        fn purge(&mut self, finished_before: u64, max: u32) -> u32 {
            match self.ok(Op::PurgeJobs {
                finished_before,
                max,
            }) {
                Outcome::JobsPurged { purged } => purged,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
    }

    /// The first Unix hour after `T0`.
    fn first_hour() -> u64 {
        (T0 / HOUR + 1) * HOUR
    }

    /// A long single-replica job (`long`, on A from h0+20m to h0+3h10m) and a gang of two (`gang`, on B
    /// and US from h0+50m to h0+1h30m/h0+1h31m), both succeeded. Returns h0.
    fn finished_usage_world(w: &mut World) -> u64 {
        let h0 = first_hour();
        w.submit("long");
        w.submit_spec("gang", gang_spec(2));
        w.place("long", 1, A);
        w.placements(vec![w.gang_op("gang", 1, &[B, US])]);
        w.report_at(h0 + 20 * MINUTE, A, ("long", 1, JobEventKind::Started));
        w.report_at(h0 + 50 * MINUTE, B, ("gang#0", 1, JobEventKind::Started));
        w.report_at(h0 + 51 * MINUTE, US, ("gang#1", 1, JobEventKind::Started));
        w.report_at(h0 + HOUR + 30 * MINUTE, B, ("gang#0", 1, exited(0)));
        w.report_at(h0 + HOUR + 31 * MINUTE, US, ("gang#1", 1, exited(0)));
        w.report_at(h0 + 3 * HOUR + 10 * MINUTE, A, ("long", 1, exited(0)));
        assert_eq!(w.job("long").state, JobState::Succeeded);
        assert_eq!(w.job("gang").state, JobState::Succeeded);
        h0
    }

    fn figures(r: &super::super::UsageReport) -> [f64; 4] {
        [
            r.cpu_core_seconds,
            r.memory_gib_seconds,
            r.gpu_seconds,
            r.cpu_time_seconds,
        ]
    }

    #[test]
    fn purge_forgets_only_old_finished_jobs_oldest_first() {
        let mut w = World::new();
        for id in ["j1", "j2", "j3", "j4", "j5"] {
            w.submit(id);
        }
        w.ok(Op::CancelJob {
            project_id: PA.into(),
            id: "j1".into(),
        });
        let t1 = w.at;
        w.place("j2", 1, A);
        w.start("j2", 1, A);
        w.report(A, vec![("j2", 1, exited(0))]);
        let t2 = w.at;
        w.ok(Op::CancelJob {
            project_id: PA.into(),
            id: "j3".into(),
        });
        let t3 = w.at;
        w.place("j5", 1, B);
        w.start("j5", 1, B);
        assert_eq!(w.s.oldest_finished_at(), Some(t1));

        // At most `max`, oldest first.
        assert_eq!(w.purge(t3 + 1, 1), 1);
        assert!(w.s.job(PA, "j1").is_none());
        assert_eq!(w.s.oldest_finished_at(), Some(t2));
        // Only jobs finished strictly before the cutoff.
        assert_eq!(w.purge(t3, 10), 1);
        assert!(w.s.job(PA, "j2").is_none() && w.s.job(PA, "j3").is_some());
        // However late the cutoff, pending and running jobs stay.
        assert_eq!(w.purge(u64::MAX, 10), 1);
        assert!(w.s.job(PA, "j3").is_none());
        assert_eq!(w.job("j4").state, JobState::Pending);
        assert_eq!(w.job("j5").state, JobState::Running);
        assert_eq!(w.purge(u64::MAX, 10), 0, "nothing left to purge");
        assert_eq!(w.s.oldest_finished_at(), None);
        let last = w.s.audit.last().expect("audited");
        assert_eq!(
            (last.action.as_str(), last.outcome),
            ("job.purge", AuditOutcome::Success)
        );
        // A later end of a running job enters the index as usual.
        w.report(B, vec![("j5", 1, exited(1))]);
        assert_eq!(w.s.oldest_finished_at(), Some(w.at));
    }

    #[test]
    fn usage_over_whole_hours_is_the_same_after_a_purge() {
        let mut w = World::new();
        let h0 = finished_usage_world(&mut w);
        let ranges = [
            (h0, h0 + HOUR),
            (h0 + HOUR, h0 + 2 * HOUR),
            (h0 + 2 * HOUR, h0 + 4 * HOUR),
            (h0, h0 + 4 * HOUR),
            (h0 - 5 * HOUR, h0 + 10 * HOUR),
        ];
        let before: Vec<_> = ranges.iter().map(|&(a, b)| w.s.usage(PA, a, b)).collect();
        assert!(before.iter().all(|r| !r.jobs.is_empty()));
        assert!(before
            .iter()
            .all(|r| r.archived == super::super::UsageFigures::default()));

        assert_eq!(w.purge(u64::MAX, 100), 2);
        assert!(w.s.job(PA, "long").is_none() && w.s.job(PA, "gang").is_none());
        for (&(a, b), old) in ranges.iter().zip(&before) {
            let new = w.s.usage(PA, a, b);
            assert_eq!(figures(&new), figures(old), "range {a}..{b}");
            assert!(new.jobs.is_empty(), "purged jobs have no per-job line");
            assert_eq!(
                [
                    new.archived.cpu_core_seconds,
                    new.archived.memory_gib_seconds,
                    new.archived.gpu_seconds,
                    new.archived.cpu_time_seconds,
                ],
                figures(&new),
                "everything comes from the archive"
            );
        }
        // The whole life: long 2h50m and the gang 2 × 40m, 2 cores / 4 GiB / 1 GPU each; CPU time 3 × 1.5 s.
        let all = w.s.usage(PA, h0 - 5 * HOUR, h0 + 10 * HOUR);
        let gpu_seconds = (170.0 + 80.0) * 60.0;
        assert_eq!(
            figures(&all),
            [2.0 * gpu_seconds, 4.0 * gpu_seconds, gpu_seconds, 4.5]
        );
        // The archive survives a snapshot.
        let restored = RegistryState::from_bytes(&w.s.to_bytes()).expect("restores");
        assert_eq!(restored, w.s);
    }

    #[test]
    fn a_range_that_cuts_an_hour_gets_its_share() {
        let mut w = World::new();
        let h0 = finished_usage_world(&mut w);
        w.purge(u64::MAX, 100);
        // Hour h0 holds long 40 min and the gang 10 + 9 min: 59 GPU-minutes. Half the hour, half of that.
        let cut = w.s.usage(PA, h0 + 30 * MINUTE, h0 + HOUR);
        assert_eq!(cut.gpu_seconds, 59.0 * 60.0 / 2.0);
        assert_eq!(cut.cpu_core_seconds, 2.0 * 59.0 * 60.0 / 2.0);
        assert_eq!(
            cut.cpu_time_seconds, 0.0,
            "the hour starts before the range"
        );
        // Hour h0+1h holds the gang's two ends: their CPU time counts when the hour starts in the range.
        let ends = w.s.usage(PA, h0 + HOUR, h0 + HOUR + 15 * MINUTE);
        assert_eq!(ends.cpu_time_seconds, 3.0);
        // Hour h0+1h: long 60 min + the gang 30 + 31 min = 121 GPU-minutes; a quarter of it.
        assert_eq!(ends.gpu_seconds, 121.0 * 60.0 / 4.0);
        // An empty or inverted range reports nothing.
        assert_eq!(figures(&w.s.usage(PA, h0 + HOUR, h0)), [0.0; 4]);
    }

    #[test]
    fn deleting_a_project_drops_its_usage_archive() {
        let mut w = World::new();
        w.ok(Op::SubmitJob {
            id: "job_b".into(),
            project_id: PB.into(),
            spec: spec(),
            principal_id: None,
        });
        w.place("job_b", 1, A);
        w.start("job_b", 1, A);
        w.report(A, vec![("job_b", 1, exited(0))]);
        assert_eq!(w.purge(u64::MAX, 10), 1);
        assert!(w.s.usage_archive.contains_key(PB));
        assert!(w.s.usage(PB, 0, u64::MAX).archived.gpu_seconds > 0.0);
        w.ok(Op::DeleteProject { id: PB.into() });
        assert!(w.s.usage_archive.is_empty());
        assert_eq!(figures(&w.s.usage(PB, 0, u64::MAX)), [0.0; 4]);
    }

    #[test]
    fn a_snapshot_from_before_the_purge_fields_loads() {
        let mut w = World::new();
        w.submit("job_1");
        w.ok(Op::CancelJob {
            project_id: PA.into(),
            id: "job_1".into(),
        });
        w.submit("job_2");
        let mut old: serde_json::Value =
            serde_json::from_slice(&w.s.to_bytes()).expect("state is json");
        let fields = old.as_object_mut().expect("state is an object");
        assert!(fields.remove("finished_jobs").is_some());
        assert!(fields.remove("usage_archive").is_some());
        let bytes = serde_json::to_vec(&old).expect("serializes");
        let restored = RegistryState::from_bytes(&bytes).expect("an older snapshot loads");
        restored.assert_job_indexes_consistent();
        assert_eq!(restored, w.s, "the finished index is rebuilt");
    }

    #[test]
    fn agent_times_are_kept_within_the_attempts_life() {
        let mut w = World::new();
        w.submit("job_clock");
        w.place("job_clock", 1, A);
        let scheduled_at = w.job("job_clock").attempts[0].scheduled_at;
        // A node whose clock is decades behind, then one far ahead.
        let report = |w: &mut World, at_ms: u64, kind: JobEventKind| {
            let op = Op::ReportJobEvents {
                node: A.into(),
                lease_epoch: w.epoch(A),
                events: vec![JobEventOp {
                    job_id: "job_clock".into(),
                    attempt: 1,
                    replica: 0,
                    at_ms,
                    kind,
                }],
            };
            w.ok(op);
        };
        report(&mut w, 7, JobEventKind::Started);
        assert_eq!(
            w.job("job_clock").attempts[0].started_at,
            Some(scheduled_at)
        );
        report(&mut w, u64::MAX, exited(0));
        let job = w.job("job_clock");
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(
            job.attempts[0].ended_at,
            Some(w.at),
            "an end cannot be later than the command that reported it"
        );
    }

    #[test]
    fn a_placement_planned_before_a_drain_is_skipped() {
        let mut w = World::new();
        w.submit("job_d");
        let planned = w.place_op("job_d", 1, A);
        w.ok(Op::SetNodeDraining {
            key: A.into(),
            draining: true,
        });
        assert_eq!(w.placements(vec![planned]), (0, 0, 0, 1));
        assert_eq!(w.job("job_d").state, JobState::Pending);
        w.ok(Op::SetNodeDraining {
            key: A.into(),
            draining: false,
        });
        w.place("job_d", 1, A);
    }

    #[test]
    fn placements_from_before_gangs_still_replay() {
        // A `place` item as older builds wrote it into the Raft log: one node, inline.
        let old = r#"{"place_jobs":{"placements":[
            {"place":{"job_id":"job_old","attempt":1,"node":"eu/eu1/a1","lease_epoch":1,
                      "gpu_uuids":["GPU-eu/eu1/a1-0"],
                      "resources":{"cpu_millis":2000,"memory_bytes":4294967296,"gpus":1}}},
            {"wait":{"job_id":"job_other","reason":"no room"}}]}}"#;
        let op: Op = serde_json::from_str(old).expect("an old placement deserializes");
        let mut w = World::new();
        w.submit("job_old");
        assert_eq!(
            op,
            Op::PlaceJobs {
                placements: vec![
                    w.place_op("job_old", 1, A),
                    PlacementOp::Wait {
                        job_id: "job_other".into(),
                        reason: "no room".into(),
                    },
                ],
            }
        );
        w.ok(op);
        let job = w.job("job_old");
        assert_eq!(job.state, JobState::Scheduled);
        assert_eq!(
            (job.attempts[0].node.as_str(), job.attempts[0].replica),
            (A, 0)
        );
        // What this build writes reads back as itself.
        let new = Op::PlaceJobs {
            placements: vec![w.gang_op("job_new", 1, &[A, B])],
        };
        let text = serde_json::to_string(&new).expect("serializes");
        assert_eq!(serde_json::from_str::<Op>(&text).expect("reads back"), new);
    }

    #[test]
    fn gang_sizes_are_validated() {
        let mut w = World::new();
        for bad in [0, MAX_REPLICAS + 1] {
            let e = w.refused(Op::SubmitJob {
                id: "gang".into(),
                project_id: PA.into(),
                spec: gang_spec(bad),
                principal_id: None,
            });
            assert!(e.to_string().contains("replicas"), "{e}");
        }
        let spec: JobSpec = serde_json::from_str(r#"{"command":"true"}"#).expect("minimal spec");
        assert_eq!(spec.replicas, 1, "older specs read as one replica");
    }

    fn set_policy(w: &mut World, project: &str, update: crate::state::PolicyUpdate) {
        w.ok(Op::SetProjectPolicy {
            project_id: project.into(),
            update,
        });
    }

    fn submit_in(w: &mut World, project: &str, id: &str, spec: JobSpec) -> CommandOutcome {
        w.apply(Op::SubmitJob {
            principal_id: None,
            id: id.into(),
            project_id: project.into(),
            spec,
        })
    }

    #[test]
    fn the_pending_quota_refuses_one_more_and_frees_up_as_jobs_start() {
        let mut w = World::new();
        set_policy(
            &mut w,
            PA,
            crate::state::PolicyUpdate {
                max_pending_jobs: Some(2),
                ..Default::default()
            },
        );
        w.submit("job_1");
        w.submit("job_2");
        let e = w.refused(Op::SubmitJob {
            principal_id: None,
            id: "job_3".into(),
            project_id: PA.into(),
            spec: spec(),
        });
        let DomainError::QuotaExceeded(why) = &e else {
            panic!("not a quota refusal: {e:?}");
        };
        assert!(
            why.contains("2 pending jobs") && why.contains("max_pending_jobs"),
            "{why}"
        );
        // Another project is not held back by this one's queue.
        assert!(submit_in(&mut w, PB, "job_b", spec()).is_ok());
        // Two submissions in one batch: the second sees the first (no race past the quota).
        w.place("job_1", 1, A);
        let batch = Op::Batch {
            commands: ["job_4", "job_5"]
                .iter()
                .map(|id| {
                    Command::new(
                        w.at + 1,
                        Actor::system(),
                        Op::SubmitJob {
                            principal_id: None,
                            id: (*id).into(),
                            project_id: PA.into(),
                            spec: spec(),
                        },
                    )
                })
                .collect(),
        };
        let Ok(Outcome::Batch { outcomes }) = w.apply(batch) else {
            panic!("a batch applies");
        };
        assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
        assert!(matches!(outcomes[1], Err(DomainError::QuotaExceeded(_))));
        // A cancelled pending job frees its place.
        w.ok(Op::CancelJob {
            project_id: PA.into(),
            id: "job_2".into(),
        });
        w.submit("job_6");
        assert_eq!(w.s.project_load(PA).pending_jobs, 2);
        assert_eq!(w.s.project_load(PA).unfinished_jobs, 3);
    }

    #[test]
    fn the_spec_bytes_quota_counts_unfinished_jobs_only() {
        let mut w = World::new();
        let one = crate::state::spec_bytes(&spec());
        set_policy(
            &mut w,
            PA,
            crate::state::PolicyUpdate {
                max_spec_bytes: Some(2 * one),
                ..Default::default()
            },
        );
        w.submit("job_1");
        w.submit("job_2");
        let e = w.refused(Op::SubmitJob {
            principal_id: None,
            id: "job_3".into(),
            project_id: PA.into(),
            spec: spec(),
        });
        assert!(
            matches!(&e, DomainError::QuotaExceeded(m) if m.contains("max_spec_bytes")),
            "{e:?}"
        );
        let mut big = spec();
        big.args = vec!["x".repeat(4096)];
        assert!(matches!(
            submit_in(&mut w, PB, "job_b", big.clone()),
            Ok(Outcome::Job { .. })
        ));
        // Once a job finishes its bytes no longer count.
        w.place("job_1", 1, A);
        w.start("job_1", 1, A);
        w.report(A, vec![("job_1", 1, exited(0))]);
        assert_eq!(w.job("job_1").state, JobState::Succeeded);
        w.submit("job_3");
        assert_eq!(w.s.project_load(PA).spec_bytes, 2 * one);
    }

    #[test]
    fn a_job_larger_than_the_running_quota_is_refused_at_submission() {
        let mut w = World::new();
        set_policy(
            &mut w,
            PA,
            crate::state::PolicyUpdate {
                max_running_gpus: Some(1),
                ..Default::default()
            },
        );
        let mut gang = spec();
        gang.replicas = 2;
        let e = w.refused(Op::SubmitJob {
            principal_id: None,
            id: "gang".into(),
            project_id: PA.into(),
            spec: gang,
        });
        assert!(
            matches!(&e, DomainError::QuotaExceeded(m) if m.contains("could never start") && m.contains("max_running_gpus")),
            "{e:?}"
        );
    }

    #[test]
    fn a_placement_past_the_running_quota_is_skipped_in_apply() {
        let mut w = World::new();
        set_policy(
            &mut w,
            PA,
            crate::state::PolicyUpdate {
                max_running_gpus: Some(1),
                ..Default::default()
            },
        );
        w.submit("job_1");
        w.submit("job_2");
        submit_in(&mut w, PB, "job_b", spec()).expect("project B submits");
        // A pass that (wrongly) places both of A's jobs: the second is skipped and stays pending.
        let counts = w.placements(vec![
            w.place_op("job_1", 1, A),
            w.place_op("job_2", 1, B),
            w.place_op("job_b", 1, US),
        ]);
        assert_eq!(counts, (2, 0, 0, 1));
        assert_eq!(w.job("job_2").state, JobState::Pending);
        assert_eq!(
            w.s.job(PB, "job_b").expect("job_b").state,
            JobState::Scheduled
        );
        assert_eq!(w.s.project_load(PA).running.gpus, 1);
        // When job_1 ends, job_2 fits.
        w.start("job_1", 1, A);
        w.report(A, vec![("job_1", 1, exited(0))]);
        assert_eq!(w.s.project_load(PA).running, Resources::default());
        w.place("job_2", 1, B);
    }

    #[test]
    fn an_eviction_frees_quota_for_the_placement_in_the_same_pass() {
        let mut w = World::new();
        set_policy(
            &mut w,
            PA,
            crate::state::PolicyUpdate {
                max_running_gpus: Some(1),
                ..Default::default()
            },
        );
        w.submit("job_low");
        w.place("job_low", 1, A);
        let mut high = spec();
        high.priority = 5;
        high.preemption = true;
        w.submit_spec("job_high", high);
        // Placing it first fails the quota; evicting first makes room, within one command.
        assert_eq!(
            w.placements(vec![w.place_op("job_high", 1, A)]),
            (0, 0, 0, 1)
        );
        let counts = w.placements(vec![
            PlacementOp::Preempt {
                job_id: "job_low".into(),
                attempt: 1,
                by: "job_high".into(),
            },
            w.place_op("job_high", 1, A),
            // The evicted job cannot come straight back: the quota is taken again.
            w.place_op("job_low", 2, B),
        ]);
        assert_eq!(counts, (1, 0, 1, 1));
        assert_eq!(w.job("job_high").state, JobState::Scheduled);
        assert_eq!(w.job("job_low").state, JobState::Pending);
        assert_eq!(w.s.project_load(PA).running.gpus, 1);
    }

    #[test]
    fn preemption_across_projects_needs_the_ceiling_and_hides_the_preemptor() {
        let mut w = World::new();
        // Project B's job (priority 3) runs on A.
        let mut theirs = spec();
        theirs.priority = 3;
        submit_in(&mut w, PB, "victim", theirs).expect("submitted");
        w.place("victim", 1, A);
        w.start("victim", 1, A);
        // Project A's urgent job asks for preemption.
        let mut urgent = spec();
        urgent.priority = 1000;
        urgent.preemption = true;
        w.submit_spec("urgent", urgent);
        let preempt = PlacementOp::Preempt {
            job_id: "victim".into(),
            attempt: 1,
            by: "urgent".into(),
        };
        // Ceiling 0 (the default): skipped, whatever the priority.
        assert_eq!(w.placements(vec![preempt.clone()]), (0, 0, 0, 1));
        assert_eq!(
            w.s.job(PB, "victim").expect("victim").state,
            JobState::Running
        );
        // A ceiling at the victim's priority is not enough: it must be strictly below.
        set_policy(
            &mut w,
            PA,
            crate::state::PolicyUpdate {
                preemption_ceiling: Some(3),
                ..Default::default()
            },
        );
        assert_eq!(w.placements(vec![preempt.clone()]), (0, 0, 0, 1));
        // A job that did not ask for preemption cannot be named as the preemptor either.
        w.submit("polite");
        set_policy(
            &mut w,
            PA,
            crate::state::PolicyUpdate {
                preemption_ceiling: Some(5),
                ..Default::default()
            },
        );
        let by_polite = PlacementOp::Preempt {
            job_id: "victim".into(),
            attempt: 1,
            by: "polite".into(),
        };
        assert_eq!(w.placements(vec![by_polite]), (0, 0, 0, 1));
        // Below the ceiling: evicted, and its record does not name the other project's job.
        assert_eq!(w.placements(vec![preempt]), (0, 0, 1, 0));
        let victim = w.s.job(PB, "victim").expect("victim");
        assert_eq!(victim.state, JobState::Pending);
        assert_eq!(victim.attempts[0].outcome, Some(AttemptOutcome::Preempted));
        assert_eq!(
            victim.attempts[0].detail,
            "preempted by a higher-priority job"
        );
        assert!(!victim.attempts[0].detail.contains("urgent"));
    }

    #[test]
    fn a_policy_change_is_validated_and_audited() {
        let mut w = World::new();
        let e = w.refused(Op::SetProjectPolicy {
            project_id: PA.into(),
            update: crate::state::PolicyUpdate {
                preemption_ceiling: Some(5000),
                ..Default::default()
            },
        });
        assert!(matches!(&e, DomainError::Invalid { field, .. } if field == "preemption_ceiling"));
        w.refused(Op::SetProjectPolicy {
            project_id: "prj_missing".into(),
            update: crate::state::PolicyUpdate {
                max_pending_jobs: Some(1),
                ..Default::default()
            },
        });
        set_policy(
            &mut w,
            PA,
            crate::state::PolicyUpdate {
                network: Some(crate::state::NetworkPolicy::None),
                ..Default::default()
            },
        );
        assert_eq!(
            w.s.project_policy(PA).network,
            crate::state::NetworkPolicy::None
        );
        assert_eq!(w.s.project_policy(PB), crate::state::ProjectPolicy::BUILTIN);
        let last = w.s.audit.last().expect("audited");
        assert_eq!(last.action, "project.policy.set");
        assert_eq!(last.project.as_deref(), Some(PA));
        assert_eq!(last.detail, "network=none");
    }

    #[test]
    fn the_unfinished_index_is_rebuilt_from_a_snapshot() {
        let mut w = World::new();
        w.submit("job_1");
        w.submit("job_2");
        w.place("job_1", 1, A);
        let mut bytes: serde_json::Value =
            serde_json::from_slice(&w.s.to_bytes()).expect("state is JSON");
        // A snapshot written before the index existed.
        bytes
            .as_object_mut()
            .expect("an object")
            .remove("unfinished_job_ids_by_project");
        let restored =
            RegistryState::from_bytes(&serde_json::to_vec(&bytes).expect("JSON")).expect("loads");
        restored.assert_job_indexes_consistent();
        assert_eq!(restored.project_load(PA).unfinished_jobs, 2);
        assert_eq!(restored, w.s);
    }
}

/// An environment variable name a job may set: 1–256 bytes, without `=` or NUL.
fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.contains(['=', '\0'])
}

/// Whether one of the secret's bindings names the workload: the job's principal (its workload identity,
/// the principal that submitted it), and when the binding is narrowed to `job:PATTERN`, a job whose name or
/// id matches. Bindings from before workload identities ([`SecretBinding::Legacy`](super::SecretBinding))
/// select nothing.
pub fn secret_binds_workload(
    secret: &super::Secret,
    principal_id: &str,
    job_id: &str,
    job_name: &str,
) -> bool {
    secret
        .bindings
        .iter()
        .any(|b| match super::SecretBinding::parse(b) {
            super::SecretBinding::Workload {
                principal_id: bound,
                job,
            } => {
                bound == principal_id
                    && job.is_none_or(|pattern| {
                        glob_matches(pattern, job_id)
                            || (!job_name.is_empty() && glob_matches(pattern, job_name))
                    })
            }
            super::SecretBinding::Legacy => false,
        })
}

/// The rule of builds before workload identities, kept only to replay their `SubmitJob` commands exactly
/// (those carry no principal): one of the secret's selectors is `job:PATTERN` where PATTERN matches the
/// job's name or id. Never used to decide a new submission or a release.
pub fn secret_binds_job(secret: &super::Secret, job_id: &str, job_name: &str) -> bool {
    secret.bindings.iter().any(|b| {
        b.strip_prefix("job:").is_some_and(|pattern| {
            glob_matches(pattern, job_id)
                || (!job_name.is_empty() && glob_matches(pattern, job_name))
        })
    })
}

/// `*` matches any run of characters (also none); everything else matches itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: the whole text must have been the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod secret_binding_tests {
    use super::glob_matches;

    #[test]
    fn globs_match_like_shell_stars() {
        for (pattern, text, expected) in [
            ("*", "anything", true),
            ("*", "", true),
            ("train", "train", true),
            ("train", "trainer", false),
            ("train-*", "train-7", true),
            ("train-*", "eval-7", false),
            ("*-gpu", "resnet-gpu", true),
            ("*-gpu", "resnet-cpu", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXcYYb", false),
            ("ab*ab", "ab", false),
            ("ab*ab", "abab", true),
        ] {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} vs {text}");
        }
    }
}
