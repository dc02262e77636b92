//! The leader's scheduling pass as `apply` checks it: `PlaceJobs` places, preempts and records why jobs
//! wait, re-checking every item against the node's lease, what is free and the project's quota.
use std::collections::{BTreeMap, BTreeSet};

use super::super::policy::{add, running_quota_excess};
use super::super::{Applied, DomainError, Outcome, RegistryState};
use super::events::{clip, AttemptEnd, Cause};
use super::*;
use crate::scheduler::{may_evict, Resources};

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
            *held = crate::state::policy::sub(*held, freed);
        }
    }
}
impl RegistryState {
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
            Outcome::Jobs(JobOutcome::JobsPlaced {
                placed,
                waiting,
                preempted,
                skipped,
            }),
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
            let Some(node) = self.fleet.get(&placement.node) else {
                return false;
            };
            if node.health != crate::state::NodeHealthState::Ready
                || node.draining
                || !node.admitted()
                || self.node_denied(&placement.node)
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
        let placed = self.jobs.update(job_id, |job| {
            job.attempts.extend(entries);
            job.state = JobState::Scheduled;
            job.pending_reason = None;
            job.updated_at = at;
        });
        if placed.is_none() {
            return false;
        }
        running.add(&project_id, more);
        let nodes: BTreeSet<&String> = replicas.iter().map(|r| &r.node).collect();
        for node in nodes {
            self.bump_assign_version(node);
        }
        true
    }

    fn wait_one(&mut self, at: u64, job_id: &str, reason: &str) -> bool {
        let reason = clip(reason, MAX_DETAIL);
        self.jobs
            .update(job_id, |job| {
                if job.state != JobState::Pending {
                    return false;
                }
                if job.pending_reason.as_deref() != Some(reason.as_str()) {
                    job.pending_reason = Some(reason);
                    job.updated_at = at;
                }
                true
            })
            .unwrap_or(false)
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
}
