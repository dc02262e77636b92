//! Reads of jobs and their retention: lookups, pages, the scheduler's and the agents' views, and
//! `PurgeJobs`, which forgets the oldest finished jobs after folding their usage into the archive.

use super::super::{Applied, Outcome, Page, PageRequest, RegistryState};
use super::*;

impl RegistryState {
    /// True when the project has jobs that are not finished.
    pub fn project_has_unfinished_jobs(&self, project_id: &str) -> bool {
        self.jobs.unfinished_of(project_id).next().is_some()
    }

    /// Forgets a deleted project's (finished) jobs and its usage archive.
    pub fn remove_project_jobs(&mut self, project_id: &str) {
        let ids: Vec<String> = self.jobs.of_project(project_id).cloned().collect();
        for id in ids {
            self.jobs.remove(&id);
        }
        self.usage.forget_project(project_id);
    }

    /// `Op::PurgeJobs`: forgets up to `max` terminal jobs that finished before `finished_before`, oldest
    /// first, after folding each one's usage into its project's archive.
    pub fn purge_jobs(&mut self, finished_before: u64, max: u32) -> Applied {
        let mut purged: u32 = 0;
        while purged < max {
            let Some((finished_at, id)) = self.jobs.finished().first().cloned() else {
                break;
            };
            if finished_at >= finished_before {
                break;
            }
            // The finished index holds only jobs of the table, so the removal always finds it.
            let Some(job) = self.jobs.remove(&id) else {
                break;
            };
            self.usage.archive(&job);
            purged += 1;
        }
        Applied::new(
            Outcome::Jobs(JobOutcome::JobsPurged { purged }),
            format!("purged={purged} finished_before={finished_before}"),
        )
    }

    /// The `finished_at` of the terminal job that finished first, if any.
    pub fn oldest_finished_at(&self) -> Option<u64> {
        self.jobs.finished().first().map(|(at, _)| *at)
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
            .jobs
            .of_project(project_id)
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| state.is_none_or(|s| j.state == s))
            .map(|j| (j.id.as_str(), j));
        Page::from_sorted(jobs, req).map(JobRecord::clone)
    }

    /// Every pending job, in id order (for the scheduler).
    pub fn pending_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs
            .pending()
            .iter()
            .filter_map(|id| self.jobs.get(id))
    }

    /// Every scheduled or running job, in id order (the scheduler's allocations).
    pub fn active_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        let mut ids: Vec<&String> = self.jobs.active_ids().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().filter_map(|id| self.jobs.get(id))
    }

    /// The node's assignment version and the unfinished replicas of current attempts that run on it, with
    /// their jobs, in (job id, replica) order.
    pub fn node_assignments(&self, node_key: &str) -> (u64, Vec<(&JobRecord, &Attempt)>) {
        let version = self.fleet.get(node_key).map_or(0, |n| n.assign_version);
        let replicas = self
            .jobs
            .active_on(node_key)
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
use std::collections::{BTreeMap, BTreeSet};

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
        assert_eq!(self.jobs.pending(), &pending, "pending index");
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
        assert_eq!(
            self.jobs.wire_indexes().active_job_ids_by_node,
            &by_node,
            "node index"
        );
        let mut by_project: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for job in self.jobs.values() {
            by_project
                .entry(job.project_id.clone())
                .or_default()
                .insert(job.id.clone());
        }
        assert_eq!(
            self.jobs.wire_indexes().job_ids_by_project,
            &by_project,
            "project index"
        );
        let finished: BTreeSet<(u64, String)> = self
            .jobs
            .values()
            .filter_map(|j| j.finished_at.map(|at| (at, j.id.clone())))
            .collect();
        assert_eq!(self.jobs.finished(), &finished, "finished index");
        let mut unfinished: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for job in self.jobs.values().filter(|j| !j.state.is_terminal()) {
            unfinished
                .entry(job.project_id.clone())
                .or_default()
                .insert(job.id.clone());
        }
        assert_eq!(
            self.jobs.wire_indexes().unfinished_job_ids_by_project,
            &unfinished,
            "unfinished index"
        );
    }
}
