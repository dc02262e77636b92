//! The jobs and their indexes, behind one transition function.
//!
//! [`JobTable`] owns every job record and the five indexes the scheduler, the agents, quotas and the
//! janitor read (pending ids, active ids by node, ids by project, finished `(finished_at, id)`, unfinished
//! ids by project). A record enters with [`JobTable::insert`], changes only inside [`JobTable::update`]
//! and leaves with [`JobTable::remove`]; each of them computes the record's index entries from the record
//! itself before and after ([`Indexed::of`]) and moves only the difference. No caller maintains an index
//! by hand, so an index cannot disagree with the records it indexes, and a loaded snapshot rebuilds them
//! all from the records ([`JobTable::from_records`]).
//!
//! The snapshot's wire form still carries the indexes, in the fields and order it always had
//! (`state/snapshot.rs`), so snapshots from earlier builds load and serialize byte for byte.

use std::collections::{BTreeMap, BTreeSet};

use super::{JobRecord, JobState};

/// Every job of the registry, with the indexes derived from them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobTable {
    /// Job id → job.
    records: BTreeMap<String, JobRecord>,
    /// The ids of pending jobs.
    pending: BTreeSet<String>,
    /// Node key → ids of the active jobs with an unfinished replica of their current attempt on it.
    active_by_node: BTreeMap<String, BTreeSet<String>>,
    /// Project id → ids of its jobs.
    by_project: BTreeMap<String, BTreeSet<String>>,
    /// `(finished_at, id)` of every terminal job, oldest first (what a purge takes).
    finished: BTreeSet<(u64, String)>,
    /// Project id → ids of its jobs that are not finished (what its quotas count).
    unfinished_by_project: BTreeMap<String, BTreeSet<String>>,
}

/// Where one job appears in the indexes, computed from the job alone.
#[derive(Debug, PartialEq, Eq)]
struct Indexed {
    project: String,
    pending: bool,
    active_nodes: BTreeSet<String>,
    finished_at: Option<u64>,
    unfinished: bool,
}

impl Indexed {
    fn of(job: &JobRecord) -> Indexed {
        let active_nodes = if job.state.is_active() {
            job.current_replicas()
                .iter()
                .filter(|a| a.outcome.is_none())
                .map(|a| a.node.clone())
                .collect()
        } else {
            BTreeSet::new()
        };
        Indexed {
            project: job.project_id.clone(),
            pending: job.state == JobState::Pending,
            active_nodes,
            finished_at: job.finished_at.filter(|_| job.state.is_terminal()),
            unfinished: !job.state.is_terminal(),
        }
    }
}

impl JobTable {
    /// A table holding `records`, every index computed from them.
    pub(in crate::state) fn from_records(records: BTreeMap<String, JobRecord>) -> JobTable {
        let mut table = JobTable::default();
        for (id, job) in &records {
            table.index(id, &Indexed::of(job));
        }
        table.records = records;
        table
    }

    /// Adds a job (replacing one with the same id).
    pub(in crate::state) fn insert(&mut self, job: JobRecord) {
        let id = job.id.clone();
        self.remove(&id);
        self.index(&id, &Indexed::of(&job));
        self.records.insert(id, job);
    }

    /// Changes a job through `change` and moves its index entries to match; `None` when there is no such
    /// job. Every change to a job record goes through here.
    pub(in crate::state) fn update<R>(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut JobRecord) -> R,
    ) -> Option<R> {
        let job = self.records.get_mut(id)?;
        let before = Indexed::of(job);
        let out = change(job);
        let after = Indexed::of(job);
        if before != after {
            self.unindex(id, &before);
            self.index(id, &after);
        }
        Some(out)
    }

    /// Forgets a job and its index entries.
    pub(in crate::state) fn remove(&mut self, id: &str) -> Option<JobRecord> {
        let job = self.records.remove(id)?;
        self.unindex(id, &Indexed::of(&job));
        Some(job)
    }

    fn index(&mut self, id: &str, at: &Indexed) {
        let add = |map: &mut BTreeMap<String, BTreeSet<String>>, key: &str| {
            map.entry(key.to_owned()).or_default().insert(id.to_owned());
        };
        add(&mut self.by_project, &at.project);
        if at.unfinished {
            add(&mut self.unfinished_by_project, &at.project);
        }
        for node in &at.active_nodes {
            add(&mut self.active_by_node, node);
        }
        if at.pending {
            self.pending.insert(id.to_owned());
        }
        if let Some(finished_at) = at.finished_at {
            self.finished.insert((finished_at, id.to_owned()));
        }
    }

    fn unindex(&mut self, id: &str, at: &Indexed) {
        let drop = |map: &mut BTreeMap<String, BTreeSet<String>>, key: &str| {
            if let Some(ids) = map.get_mut(key) {
                ids.remove(id);
                if ids.is_empty() {
                    map.remove(key);
                }
            }
        };
        drop(&mut self.by_project, &at.project);
        drop(&mut self.unfinished_by_project, &at.project);
        for node in &at.active_nodes {
            drop(&mut self.active_by_node, node);
        }
        self.pending.remove(id);
        if let Some(finished_at) = at.finished_at {
            self.finished.remove(&(finished_at, id.to_owned()));
        }
    }

    /// The job with this id.
    pub fn get(&self, id: &str) -> Option<&JobRecord> {
        self.records.get(id)
    }

    /// Every job, by id.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &JobRecord> + Clone {
        self.records.values()
    }

    /// Every job, keyed by id.
    pub fn records(&self) -> &BTreeMap<String, JobRecord> {
        &self.records
    }

    /// How many jobs there are.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when there is no job.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The ids of pending jobs.
    pub fn pending(&self) -> &BTreeSet<String> {
        &self.pending
    }

    /// The ids of the active jobs with an unfinished replica on `node_key`.
    pub fn active_on(&self, node_key: &str) -> impl Iterator<Item = &String> {
        self.active_by_node.get(node_key).into_iter().flatten()
    }

    /// The ids of every active job, once per node it runs on (unordered across nodes).
    pub fn active_ids(&self) -> impl Iterator<Item = &String> {
        self.active_by_node.values().flatten()
    }

    /// The ids of a project's jobs.
    pub fn of_project(&self, project_id: &str) -> impl Iterator<Item = &String> {
        self.by_project.get(project_id).into_iter().flatten()
    }

    /// The ids of a project's jobs that are not finished.
    pub fn unfinished_of(&self, project_id: &str) -> impl Iterator<Item = &String> {
        self.unfinished_by_project
            .get(project_id)
            .into_iter()
            .flatten()
    }

    /// `(finished_at, id)` of terminal jobs, oldest first.
    pub fn finished(&self) -> &BTreeSet<(u64, String)> {
        &self.finished
    }

    /// The indexes as the snapshot's wire form names them (see `state/snapshot.rs`).
    pub(in crate::state) fn wire_indexes(&self) -> WireIndexes<'_> {
        WireIndexes {
            pending_job_ids: &self.pending,
            active_job_ids_by_node: &self.active_by_node,
            job_ids_by_project: &self.by_project,
            finished_jobs: &self.finished,
            unfinished_job_ids_by_project: &self.unfinished_by_project,
        }
    }
}

/// Borrowed indexes, for the snapshot's wire form.
pub(in crate::state) struct WireIndexes<'a> {
    pub pending_job_ids: &'a BTreeSet<String>,
    pub active_job_ids_by_node: &'a BTreeMap<String, BTreeSet<String>>,
    pub job_ids_by_project: &'a BTreeMap<String, BTreeSet<String>>,
    pub finished_jobs: &'a BTreeSet<(u64, String)>,
    pub unfinished_job_ids_by_project: &'a BTreeMap<String, BTreeSet<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Resources;
    use crate::state::{AttemptOutcome, JobSpec};

    fn job(id: &str, project: &str) -> JobRecord {
        JobRecord {
            id: id.to_owned(),
            project_id: project.to_owned(),
            spec: JobSpec::new("train"),
            state: JobState::Pending,
            attempts: Vec::new(),
            pending_reason: None,
            cancel_requested: false,
            prefer_region: None,
            created_by: "ada".into(),
            principal_id: None,
            created_at: 1,
            updated_at: 1,
            finished_at: None,
        }
    }

    fn replica(replica: u32, node: &str) -> crate::state::Attempt {
        crate::state::Attempt {
            attempt: 1,
            replica,
            node: node.to_owned(),
            region: "r".into(),
            cluster: "c".into(),
            gpu_uuids: Vec::new(),
            resources: Resources::default(),
            lease_epoch: 1,
            scheduled_at: 2,
            started_at: None,
            ended_at: None,
            outcome: None,
            exit_code: None,
            signal: None,
            cpu_time_ms: None,
            max_rss_bytes: None,
            detail: String::new(),
        }
    }

    /// The indexes of `table`, as the table computes them from scratch.
    fn rebuilt(table: &JobTable) -> JobTable {
        JobTable::from_records(table.records().clone())
    }

    #[test]
    fn a_job_moves_through_the_indexes_as_its_record_changes() {
        let mut t = JobTable::default();
        t.insert(job("j1", "p"));
        assert!(t.pending().contains("j1"));
        assert_eq!(t.unfinished_of("p").count(), 1);

        // Placed as a gang on two nodes.
        t.update("j1", |j| {
            j.state = JobState::Scheduled;
            j.attempts = vec![replica(0, "n1"), replica(1, "n2")];
        });
        assert!(t.pending().is_empty());
        assert_eq!(t.active_on("n1").count(), 1);
        assert_eq!(t.active_on("n2").count(), 1);

        // One replica ends: only its node lets the job go.
        t.update("j1", |j| {
            j.attempts[0].outcome = Some(AttemptOutcome::Succeeded)
        });
        assert_eq!(t.active_on("n1").count(), 0);
        assert_eq!(t.active_on("n2").count(), 1);

        // The job finishes.
        t.update("j1", |j| {
            j.attempts[1].outcome = Some(AttemptOutcome::Succeeded);
            j.state = JobState::Succeeded;
            j.finished_at = Some(9);
        });
        assert_eq!(t.active_ids().count(), 0);
        assert_eq!(t.unfinished_of("p").count(), 0);
        assert!(t.finished().contains(&(9, "j1".to_owned())));
        assert_eq!(t.of_project("p").count(), 1);
        assert_eq!(t, rebuilt(&t));

        let gone = t.remove("j1").expect("the job was there");
        assert_eq!(gone.id, "j1");
        assert_eq!(t, JobTable::default(), "no index keeps a removed job");
    }

    #[test]
    fn updates_and_inserts_agree_with_a_table_built_from_the_records() {
        let mut t = JobTable::default();
        for (i, project) in ["a", "b", "a", "c"].iter().enumerate() {
            t.insert(job(&format!("j{i}"), project));
        }
        t.update("j0", |j| {
            j.state = JobState::Running;
            j.attempts = vec![replica(0, "n1")];
        });
        t.update("j1", |j| {
            j.state = JobState::Cancelled;
            j.finished_at = Some(5);
        });
        // Replacing a record moves its entries too (here to another project).
        t.insert(job("j2", "b"));
        assert_eq!(t.of_project("a").count(), 1);
        assert_eq!(t, rebuilt(&t));
        assert_eq!(t.update("missing", |_| ()), None);
    }
}
