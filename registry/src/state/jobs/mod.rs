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
mod events;
mod placement;
mod queries;
mod records;
mod submit;
mod table;
#[cfg(test)]
mod tests;

pub use records::*;
pub use submit::{secret_binds_workload, Submission};
pub use table::JobTable;

use serde::{Deserialize, Serialize};

use super::{Actor, Applied, DomainError, RegistryState, Subject};

/// The jobs domain's commands: submission, cancellation, the leader's placements, agents' reports and the
/// janitor's purges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// An op is built once, moved into its command and applied; its size is never multiplied, so the large
// variant stays inline rather than behind a box every construction site would carry.
#[allow(clippy::large_enum_variant)]
pub enum JobOp {
    /// A new job, pending. `id` is unique.
    SubmitJob {
        id: String,
        project_id: String,
        spec: JobSpec,
        /// The job's workload identity: the principal that submits it (the acting principal, when the
        /// command has one). The secrets the job names must be bound to it. Absent in commands from before
        /// workload identities, which replay under the old rule and get no secrets released.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal_id: Option<String>,
    },
    /// Cancels a job: a pending one at once, a scheduled or running one by asking its agent to stop it.
    /// Refused for a finished job.
    CancelJob { project_id: String, id: String },
    /// The leader's scheduling pass. Items that no longer apply are skipped, not refused.
    PlaceJobs { placements: Vec<PlacementOp> },
    /// What an agent saw happen to its attempts; refused as a whole when `lease_epoch` is not the node's.
    ReportJobEvents {
        node: String,
        lease_epoch: u64,
        events: Vec<JobEventOp>,
    },
    /// The leader's janitor: forgets up to `max` finished jobs whose `finished_at` is before
    /// `finished_before` (Unix ms), oldest first. Each job's usage is folded into its project's per-hour
    /// archive before the job goes. Running and pending jobs are never touched. Platform-level.
    PurgeJobs { finished_before: u64, max: u32 },
}

/// What a jobs command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// Built once per command and moved to the caller; the dedup table keeps records by id (apply version 3),
// not these, so the record stays inline.
#[allow(clippy::large_enum_variant)]
pub enum JobOutcome {
    /// A job was submitted or changed.
    Job { job: JobRecord },
    /// What a scheduling pass did.
    JobsPlaced {
        placed: u32,
        waiting: u32,
        preempted: u32,
        skipped: u32,
    },
    /// One acknowledgement per reported event, in order.
    JobEvents { acks: Vec<EventAck> },
    /// How many finished jobs a purge forgot.
    JobsPurged { purged: u32 },
}

impl RegistryState {
    /// Applies one jobs command (already checked against its actor by `apply`).
    pub(super) fn execute_jobs(
        &mut self,
        actor: &Actor,
        op: &JobOp,
        at: u64,
    ) -> Result<Applied, DomainError> {
        match op {
            JobOp::SubmitJob {
                id,
                project_id,
                spec,
                principal_id,
            } => self.submit_job(
                at,
                actor,
                Submission {
                    id,
                    project_id,
                    spec,
                    principal_id: principal_id.as_deref(),
                },
            ),
            JobOp::CancelJob { project_id, id } => self.cancel_job(at, project_id, id),
            JobOp::PlaceJobs { placements } => self.place_jobs(at, placements),
            JobOp::ReportJobEvents {
                node,
                lease_epoch,
                events,
            } => self.report_job_events(at, node, *lease_epoch, events),
            JobOp::PurgeJobs {
                finished_before,
                max,
            } => Ok(self.purge_jobs(*finished_before, *max)),
        }
    }
}

impl JobOp {
    /// What the audit log records this command as.
    pub(super) fn subject(&self) -> Subject {
        let s = Subject::of;
        match self {
            JobOp::SubmitJob { id, project_id, .. } => s("job.submit", Some(project_id), id),
            JobOp::CancelJob { project_id, id } => s("job.cancel", Some(project_id), id),
            JobOp::PlaceJobs { .. } => s("job.place", None, "scheduler"),
            JobOp::ReportJobEvents { node, .. } => s("job.report", None, node),
            JobOp::PurgeJobs { .. } => s("job.purge", None, "janitor"),
        }
    }
}
