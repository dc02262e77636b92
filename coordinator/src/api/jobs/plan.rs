//! The scheduler's verdicts on jobs as the API tells them: `POST /v1/jobs:plan` (gRPC `PlanJob`), a dry run
//! of a submission that says where the job would land or why it would wait, and the `unsatisfiable` reason a
//! pending job's view carries when no node of the fleet could ever run it.
//!
//! Reads only: a plan reserves nothing and proposes nothing, and is never audited as a change. The decisions
//! are the registry's (`controllers::dispatch::{plan_job, Feasibility}`); this module only validates the
//! request as a submission would and shapes the answer. A plan names nodes and counts other jobs it would
//! preempt, never their ids (they may belong to other projects).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use meridian_registry::controllers::dispatch::plan_job;
use meridian_registry::controllers::dispatch::Feasibility;

use crate::api::auth::RequestScope;
use crate::api::error::ServiceError;
use crate::api::service::AdminService;
use crate::scheduler::Resources;
use crate::state::{JobRecord, RegistryState};

use super::{job_spec, JobView, SubmitJobRequest};

/// Where one replica would go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = PlannedReplica)]
pub struct PlannedReplica {
    pub replica: u32,
    /// Node key, `region/cluster/node`.
    pub node: String,
    pub region: String,
    pub cluster: String,
    pub gpu_uuids: Vec<String>,
    pub resources: Resources,
}

/// `POST /v1/jobs:plan`: what the scheduler would do with the job if it were submitted now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = JobPlan)]
pub struct JobPlanView {
    /// Every replica would be placed now.
    pub placeable: bool,
    /// Where, one entry per replica (empty when it would wait).
    pub replicas: Vec<PlannedReplica>,
    /// How many running jobs it would preempt to get there.
    pub preempts: u32,
    /// Why it would wait, when it would.
    pub pending_reason: Option<String>,
    /// Why no node of the fleet could ever run it, when none could (it would wait until the fleet
    /// changes).
    pub unsatisfiable: Option<String>,
    /// Pending jobs of higher or equal priority the scheduler would consider first; the plan does not
    /// place them, so the capacity it shows may go to them.
    pub queue_ahead: u32,
}

/// The part of a node key before the node: (`region`, `cluster`).
fn site_of(node: &str) -> (String, String) {
    let mut parts = node.splitn(3, '/');
    let region = parts.next().unwrap_or_default().to_owned();
    let cluster = parts.next().unwrap_or_default().to_owned();
    (region, cluster)
}

/// Jobs' views with the scheduler's verdict on whether each could ever run. The fleet is indexed once, and
/// only when a pending job needs it: reading a running or finished job costs nothing more than its view.
pub(crate) struct Judge<'s> {
    state: &'s RegistryState,
    fleet: std::cell::OnceCell<Feasibility>,
}

impl<'s> Judge<'s> {
    pub(crate) fn new(state: &'s RegistryState) -> Self {
        Self {
            state,
            fleet: std::cell::OnceCell::new(),
        }
    }

    /// `job`'s view, with `unsatisfiable` set when it is pending and no node could ever run it.
    pub(crate) fn view(&self, job: &JobRecord) -> JobView {
        let mut view = JobView::from(job);
        if job.state == crate::state::JobState::Pending {
            let fleet = self.fleet.get_or_init(|| Feasibility::new(self.state));
            view.unsatisfiable = fleet.never_placeable(job);
        }
        view
    }
}

impl AdminService {
    /// A dry run of [`AdminService::submit_job`]: the same validation, then the scheduler's decision
    /// against the fleet as it is, without submitting.
    pub(crate) async fn plan_job(
        &self,
        scope: &RequestScope,
        req: SubmitJobRequest,
    ) -> Result<JobPlanView, ServiceError> {
        let spec = job_spec(req)?;
        self.consistent().await?;
        let plan = self
            .handle()
            .read(|s| plan_job(s, &scope.project_id, &spec));
        let replicas = plan
            .assignments
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let (region, cluster) = site_of(&a.node_id);
                PlannedReplica {
                    replica: u32::try_from(i).unwrap_or(u32::MAX),
                    node: a.node_id,
                    region,
                    cluster,
                    gpu_uuids: a.gpu_uuids,
                    resources: a.resources,
                }
            })
            .collect::<Vec<_>>();
        Ok(JobPlanView {
            placeable: !replicas.is_empty(),
            replicas,
            preempts: u32::try_from(plan.preempts).unwrap_or(u32::MAX),
            pending_reason: plan.pending_reason,
            unsatisfiable: plan.unsatisfiable,
            queue_ahead: u32::try_from(plan.queue_ahead).unwrap_or(u32::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_key_names_its_site() {
        assert_eq!(site_of("eu/eu1/a1"), ("eu".to_owned(), "eu1".to_owned()));
        assert_eq!(site_of("odd"), ("odd".to_owned(), String::new()));
    }
}
