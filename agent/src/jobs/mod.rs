//! The job side of the agent: the node's assignments from the coordinators, the attempts it runs for
//! them, the reports it owes, and the log reads coordinators make.
//!
//! - [`store`] — the local sled database (`<data_dir>/agent.db`): attempt records and the report queue.
//! - [`reconcile`] — pure decisions: what to launch, stop or report given the local attempts and the
//!   coordinator's assignments, and how an ended process is reported.
//! - `supervisor` — carries the decisions out with `exec` and records every step before it matters.
//! - `sync` — the long poll on `AgentSync` that feeds the supervisor the node's assignments.
//! - `reporter` — sends queued events in order with `AgentReport`, removes them once answered.
//! - `retention` — which finished attempts to forget (pure) and removing their state directories.
//! - [`log_service`] — the agent's RPC service: `AgentReadLogs` for attempts this node knows.
//! - [`exec_service`] — the agent's RPC service as served: `AgentExecInJob`, `AgentReadJobFile` and the
//!   terminal session `AgentAttachJob` for attempts running here, everything else passed to the log
//!   service.
//! - [`terminal_session`] — checks an `AgentAttachJob` request and pumps its session: input and
//!   resizes into the job's terminal, output and the end back, idle limit and shutdown.
//!
//! One process is named by (job id, attempt, replica) — an [`AttemptKey`]: a gang job of N replicas runs
//! one process per replica, possibly several of one attempt on this node, and each is recorded,
//! launched, stopped, timed out, reported and logged on its own. A single-replica job is replica 0.
//!
//! This module never decides *where* work runs (the coordinators' scheduler does) and never runs an
//! attempt the coordinators did not assign; it never launches the same (job, attempt, replica) twice,
//! not even across restarts. A finished attempt is kept (record, logs, state directory) for `[jobs]
//! retain_finished` after it ended and its final report was answered, unless it is still assigned;
//! then its record becomes a tombstone (so it still never launches again), its state directory is
//! removed, and a log read of it answers NOT_FOUND. Tombstones go after four more retention periods.
//! Nothing outside `<data_dir>/jobs/` is ever removed (a user's `working_dir` included).

pub mod exec_service;
pub mod log_service;
pub mod reconcile;
pub(crate) mod reporter;
pub(crate) mod retention;
pub mod store;
pub(crate) mod supervisor;
pub(crate) mod sync;
pub mod terminal_session;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use protocol::pb;
use serde::{Deserialize, Serialize};

use crate::exec::{LogOptions, NetworkPolicy, ProcessSpec, Replica, SecretValues};

pub use exec_service::ExecService;
pub use log_service::LogService;
pub use reconcile::{exit_summary, next_timeout, reconcile, Action, LocalAttempt, LocalState};
pub use store::{
    AttemptPhase, AttemptRecord, ExitSummary, JobStore, QueuedEvent, StoreError, StoredAttempt,
    Tombstone,
};

/// Why the agent stopped an attempt's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The job was cancelled: reported as exited with `cancelled`.
    Cancelled,
    /// It ran past its timeout: reported as exited with `timed_out`.
    TimedOut,
    /// It is no longer assigned to this node: stale, nothing to report.
    Unassigned,
}

/// One replica of an attempt as the coordinator assigned it (the stored form of `pb::JobAssignment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: String,
    pub attempt: u32,
    /// Which replica of the attempt, 0-based (0 in records written before gang jobs existed).
    #[serde(default)]
    pub replica: u32,
    /// The gang's size; 0 is read as 1.
    #[serde(default)]
    pub replicas: u32,
    /// The host of each replica's node, in replica order; may be empty.
    #[serde(default)]
    pub replica_hosts: Vec<String>,
    pub project_id: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Empty: a fresh directory for the attempt.
    pub working_dir: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpu_uuids: Vec<String>,
    /// 0: no timeout.
    pub timeout_ms: u64,
    pub cancel: bool,
    pub cancel_grace_ms: u64,
    /// Values of the job's secrets, by variable. Never serialized: they are not written to the agent's
    /// database, and `Debug` shows only their names.
    #[serde(skip)]
    pub secret_env: SecretEnv,
    /// The coordinator could not hand the attempt over (e.g. a secret is gone): report it as failed to
    /// launch with this message instead of starting it.
    #[serde(default)]
    pub launch_error: String,
    /// The project's network policy (`none` or `egress`; empty is `egress`).
    #[serde(default)]
    pub network: String,
    /// Pass the secrets as environment variables too (they are always files in a sandbox).
    #[serde(default)]
    pub secrets_in_env: bool,
}

/// Secret values passed to a job's process: kept in memory only, redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl From<pb::JobAssignment> for Assignment {
    fn from(a: pb::JobAssignment) -> Self {
        Assignment {
            job_id: a.job_id,
            attempt: a.attempt,
            replica: a.replica,
            replicas: a.replicas,
            replica_hosts: a.replica_hosts,
            project_id: a.project_id,
            command: a.command,
            args: a.args,
            env: a.env.into_iter().collect(),
            working_dir: a.working_dir,
            cpu_millis: a.cpu_millis,
            memory_bytes: a.memory_bytes,
            gpu_uuids: a.gpu_uuids,
            timeout_ms: a.timeout_ms,
            cancel: a.cancel,
            cancel_grace_ms: a.cancel_grace_ms,
            secret_env: SecretEnv(a.secret_env.into_iter().collect()),
            launch_error: a.launch_error,
            network: a.network,
            secrets_in_env: a.secrets_in_env,
        }
    }
}

impl Assignment {
    /// The (job id, attempt, replica) that names the process.
    pub fn key(&self) -> AttemptKey {
        AttemptKey::new(&self.job_id, self.attempt, self.replica)
    }

    /// Which process of its gang this is, for `exec` (a gang size of 0 is read as 1).
    pub fn replica_spec(&self) -> Replica {
        Replica {
            index: self.replica,
            count: self.replicas.max(1),
            hosts: self.replica_hosts.clone(),
        }
    }

    /// The grace between SIGTERM and SIGKILL when the attempt is stopped.
    pub fn cancel_grace(&self) -> Duration {
        Duration::from_millis(self.cancel_grace_ms)
    }

    /// What `exec` runs for it, with its logs in `log_dir`.
    pub fn process_spec(&self, log_dir: PathBuf) -> ProcessSpec {
        ProcessSpec {
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            working_dir: (!self.working_dir.is_empty()).then(|| PathBuf::from(&self.working_dir)),
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            gpu_uuids: self.gpu_uuids.clone(),
            log: LogOptions::new(log_dir),
            network: NetworkPolicy::from_wire(&self.network),
            secrets: SecretValues(self.secret_env.0.clone()),
            secrets_in_env: self.secrets_in_env,
        }
    }
}

/// (job id, attempt, replica): what names one process of a job on this node. Ordered by job id, then
/// attempt, then replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptKey {
    pub job_id: String,
    pub attempt: u32,
    /// 0 for a single-replica job.
    pub replica: u32,
}

impl AttemptKey {
    pub fn new(job_id: impl Into<String>, attempt: u32, replica: u32) -> AttemptKey {
        AttemptKey {
            job_id: job_id.into(),
            attempt,
            replica,
        }
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
