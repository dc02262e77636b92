//! A job as the registry keeps it: the spec a user asked for, its attempts, and the wire types of the
//! commands that move it (placements, agent events and their acknowledgements). Plain data with the checks
//! that need nothing but the data itself.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::super::DomainError;
use crate::scheduler::{Constraints, Locality, ResourceRequest, Resources, Strategy};

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
pub(crate) const MAX_DETAIL: usize = 1024;

/// Where a job is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

    pub(crate) fn is_active(self) -> bool {
        matches!(self, JobState::Scheduled | JobState::Running)
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryPolicy {
    /// Attempts in all (preempted ones not counted), 1..=20.
    #[serde(default = "default_max_attempts")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub max_attempts: u32,
    /// Also retry attempts that failed (non-zero exit, timeout, launch error); lost attempts are always
    /// retried while the budget allows.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
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
            crate::state::validate_secret_name(name).map_err(|_| {
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
    pub(crate) fn last_attempt_start(&self) -> usize {
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
    pub(crate) fn counted_attempts(&self) -> usize {
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

    pub(crate) fn budget_left(&self) -> bool {
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
        /// The kernel killed a process of the job at its memory limit (the job's cgroup counted an OOM
        /// kill). Read from apply version 5 on ([`crate::state::OOM_APPLY_VERSION`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        oom_killed: bool,
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
    pub(crate) fn accepted() -> Self {
        Self {
            accepted: true,
            reason: String::new(),
        }
    }

    pub(crate) fn stale(why: impl std::fmt::Display) -> Self {
        Self {
            accepted: false,
            reason: format!("stale: {why}"),
        }
    }
}

/// An environment variable name a job may set: 1–256 bytes, without `=` or NUL.
pub(crate) fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.contains(['=', '\0'])
}
