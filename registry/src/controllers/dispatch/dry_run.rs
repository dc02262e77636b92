//! The dispatcher's verdict on one job without placing it: where a job would land if it were submitted now
//! (`meridian job plan`), and whether a pending job could ever be placed on the fleet as registered (so the
//! API can say so at submission and `job run --wait` can stop instead of waiting forever).
//!
//! Pure reads of the replicated state: nothing is reserved and nothing is proposed. The plan is one job
//! against the fleet and what already runs there, under its project's running quota, as the scheduling pass
//! would decide it; other pending jobs are not placed first, so the plan reports how many of them the pass
//! would consider before this one.

use super::{allocations, node_view, request, request_for};
use crate::scheduler::{Assignment, PlacementDecision, Scheduler};
use crate::state::{job_reservation, running_quota_excess, JobRecord, JobSpec, RegistryState};

/// The id the scheduler knows a planned (not submitted) job by.
const PLANNED: &str = "job_plan";

/// What the scheduling pass would do with a job submitted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    /// Where each replica would go; empty when it would wait.
    pub assignments: Vec<Assignment>,
    /// How many running jobs it would preempt (their ids may belong to other projects, so only the count
    /// is told).
    pub preempts: usize,
    /// Why it would wait, when it would.
    pub pending_reason: Option<String>,
    /// Why no node of the fleet could ever run it, when none could.
    pub unsatisfiable: Option<String>,
    /// Pending jobs the pass would consider first (of higher or equal priority).
    pub queue_ahead: usize,
}

/// The scheduler over the registered nodes and what runs on them; `None` if the fleet cannot be indexed
/// (node keys are unique in the registry, so never in practice).
fn fleet(state: &RegistryState) -> Option<Scheduler> {
    let nodes = state.nodes().map(|n| node_view(state, n));
    let held = state.active_jobs().flat_map(allocations);
    Scheduler::new(nodes, held).ok()
}

/// Where a job with `spec` in `project_id` would land now, or why it would wait.
pub fn plan_job(state: &RegistryState, project_id: &str, spec: &JobSpec) -> JobPlan {
    let policy = state.project_policy(project_id);
    let req = request_for(PLANNED, project_id, spec, None, policy.preemption_ceiling);
    let queue_ahead = state
        .pending_jobs()
        .filter(|j| !j.cancel_requested && j.spec.priority >= spec.priority)
        .count();
    let Some(mut scheduler) = fleet(state) else {
        return JobPlan {
            assignments: Vec::new(),
            preempts: 0,
            pending_reason: Some("the fleet cannot be read now".to_owned()),
            unsatisfiable: None,
            queue_ahead,
        };
    };
    let unsatisfiable = scheduler.never_placeable(&req);
    let holds = state.project_load(project_id).running;
    let decision = match running_quota_excess(&policy, holds, job_reservation(spec)) {
        Some(reason) => PlacementDecision::Pending {
            reason,
            filtered: Default::default(),
        },
        None => scheduler.place(&req),
    };
    match decision {
        PlacementDecision::Placed {
            assignments,
            preempted,
        } => JobPlan {
            assignments,
            preempts: preempted.len(),
            pending_reason: None,
            unsatisfiable,
            queue_ahead,
        },
        PlacementDecision::Pending { reason, .. } => JobPlan {
            assignments: Vec::new(),
            preempts: 0,
            pending_reason: Some(reason),
            unsatisfiable,
            queue_ahead,
        },
    }
}

/// The fleet as registered, indexed once to judge many pending jobs (a list of jobs).
pub struct Feasibility {
    scheduler: Option<Scheduler>,
}

impl Feasibility {
    /// Indexes the registered nodes of `state`.
    pub fn new(state: &RegistryState) -> Self {
        let nodes = state.nodes().map(|n| node_view(state, n));
        Self {
            scheduler: Scheduler::new(nodes, std::iter::empty()).ok(),
        }
    }

    /// Why `job` could never be placed on the fleet as registered, whatever else ends; `None` when it
    /// could, when it is not pending, or when no node is registered yet.
    pub fn never_placeable(&self, job: &JobRecord) -> Option<String> {
        if job.state != crate::state::JobState::Pending {
            return None;
        }
        self.scheduler.as_ref()?.never_placeable(&request(job, 0))
    }
}

/// [`Feasibility::never_placeable`] for one job.
pub fn never_placeable(state: &RegistryState, job: &JobRecord) -> Option<String> {
    Feasibility::new(state).never_placeable(job)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fleet, run_pass, submit, PROJECT};
    use super::*;
    use crate::scheduler::ResourceRequest;

    fn spec(cpus: u64, gpus: u32) -> JobSpec {
        let mut spec = JobSpec::new("train");
        spec.resources = ResourceRequest {
            cpu_millis: cpus * 1000,
            memory_bytes: 1 << 30,
            gpus,
            ..ResourceRequest::default()
        };
        spec
    }

    #[test]
    fn a_plan_places_nothing_and_names_the_node() {
        let state = fleet();
        let plan = plan_job(&state, PROJECT, &spec(1, 1));
        assert_eq!(plan.assignments.len(), 1);
        assert_eq!(plan.assignments[0].node_id, "us/us1/us-a1");
        assert_eq!((plan.pending_reason, plan.unsatisfiable), (None, None));
        // Nothing was reserved: the same plan again lands on the same GPU.
        let again = plan_job(&state, PROJECT, &spec(1, 1));
        assert_eq!(again.assignments[0].gpu_uuids, ["GPU-us-a1-0"]);
    }

    #[test]
    fn a_plan_says_why_it_would_wait_and_whether_it_ever_could_run() {
        let mut state = fleet();
        // Every CPU of the fleet taken: a 4-CPU job waits, but could run later.
        for (i, _) in ["eu-a1", "eu-a2", "us-a1"].iter().enumerate() {
            submit(&mut state, &format!("job_fill{i}"), spec(4, 0));
        }
        run_pass(&mut state);
        submit(&mut state, "job_waiting", spec(4, 0));
        let plan = plan_job(&state, PROJECT, &spec(4, 0));
        assert!(plan.assignments.is_empty());
        assert!(plan
            .pending_reason
            .is_some_and(|r| r.contains("too little free CPU")));
        assert_eq!(plan.unsatisfiable, None);
        assert_eq!(plan.queue_ahead, 1, "the job already waiting goes first");

        // Two GPUs on one node: no node has them.
        let plan = plan_job(&state, PROJECT, &spec(1, 2));
        let never = plan.unsatisfiable.expect("never");
        assert!(never.contains("2 nodes have no GPUs"), "{never}");
        assert!(
            never.contains("1 node has fewer than 2 matching GPUs in all"),
            "{never}"
        );
    }

    #[test]
    fn a_pending_job_that_could_never_run_is_told_apart() {
        let mut state = fleet();
        submit(&mut state, "job_two_gpus", spec(1, 2));
        submit(&mut state, "job_big", spec(64, 0));
        run_pass(&mut state);
        let job = |state: &RegistryState, id: &str| state.job(PROJECT, id).expect("job").clone();
        assert!(never_placeable(&state, &job(&state, "job_two_gpus")).is_some());
        assert!(never_placeable(&state, &job(&state, "job_big"))
            .is_some_and(|r| r.ends_with("3 nodes have fewer than 64 CPUs in all")));
        // A placed job is not pending: no verdict.
        submit(&mut state, "job_small", spec(1, 0));
        run_pass(&mut state);
        assert_eq!(never_placeable(&state, &job(&state, "job_small")), None);
    }
}
