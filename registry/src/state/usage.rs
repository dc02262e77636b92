//! Usage accounting: a project's reserved CPU-, memory- and GPU-seconds and measured CPU time over a time
//! range, per job and in total, the base for cost attribution.
//!
//! Live jobs are read from their attempts at query time; purged jobs (see `Op::PurgeJobs`) live on only in
//! the project's archive, kept per Unix hour: each attempt's reserved resource·milliseconds are split exactly
//! across the hours it overlaps, and its measured CPU time goes to the hour it ended in. Every sum is an exact
//! integer (resource units × milliseconds) and becomes `f64` only in the report. A read must never mutate
//! the state; folding a job into the archive happens only inside `apply`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{JobRecord, RegistryState};

/// The width of one archive bucket: a Unix hour, in milliseconds. Buckets start at multiples of it.
pub const USAGE_BUCKET_MS: u64 = 3_600_000;

/// A project's resource use over a time range, computed on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    pub project_id: String,
    pub since: u64,
    pub until: u64,
    /// Reserved CPU cores × seconds (live and purged jobs).
    pub cpu_core_seconds: f64,
    /// Reserved memory GiB × seconds (live and purged jobs).
    pub memory_gib_seconds: f64,
    /// Reserved GPUs × seconds (live and purged jobs).
    pub gpu_seconds: f64,
    /// Measured CPU time of the attempts that ended in the range (live and purged jobs).
    pub cpu_time_seconds: f64,
    /// The share of the totals above that comes from purged jobs, kept per Unix hour: an hour entirely
    /// inside the range counts fully; one that straddles a bound counts its reserved resources in proportion
    /// to the overlap, and its CPU time when the hour starts inside the range (see [`RegistryState::usage`]).
    /// Per-job lines list live jobs only.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub archived: UsageFigures,
    /// Per live job with any use in the range, in id order; purged jobs appear only in `archived`.
    pub jobs: Vec<JobUsage>,
}

/// The four usage figures of a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageFigures {
    pub cpu_core_seconds: f64,
    pub memory_gib_seconds: f64,
    pub gpu_seconds: f64,
    pub cpu_time_seconds: f64,
}

/// One job's share of a [`UsageReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobUsage {
    pub job_id: String,
    pub name: String,
    pub cpu_core_seconds: f64,
    pub memory_gib_seconds: f64,
    pub gpu_seconds: f64,
    pub cpu_time_seconds: f64,
}

/// Exact integer sums behind a usage figure: resource units × milliseconds (CPU time in milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSums {
    pub cpu_millis_ms: u128,
    pub memory_bytes_ms: u128,
    pub gpus_ms: u128,
    pub cpu_time_ms: u128,
}

impl UsageSums {
    fn add(&mut self, other: &UsageSums) {
        self.cpu_millis_ms += other.cpu_millis_ms;
        self.memory_bytes_ms += other.memory_bytes_ms;
        self.gpus_ms += other.gpus_ms;
        self.cpu_time_ms += other.cpu_time_ms;
    }

    /// Adds `resources` held for `ms` milliseconds.
    fn reserve(&mut self, resources: &crate::scheduler::Resources, ms: u64) {
        let ms = u128::from(ms);
        self.cpu_millis_ms += u128::from(resources.cpu_millis) * ms;
        self.memory_bytes_ms += u128::from(resources.memory_bytes) * ms;
        self.gpus_ms += u128::from(resources.gpus) * ms;
    }

    /// The reserved sums scaled by `part / USAGE_BUCKET_MS` (rounded down); CPU time left out.
    fn reserved_share(&self, part: u64) -> UsageSums {
        let scale = |v: u128| v * u128::from(part) / u128::from(USAGE_BUCKET_MS);
        UsageSums {
            cpu_millis_ms: scale(self.cpu_millis_ms),
            memory_bytes_ms: scale(self.memory_bytes_ms),
            gpus_ms: scale(self.gpus_ms),
            cpu_time_ms: 0,
        }
    }

    fn figures(&self) -> UsageFigures {
        UsageFigures {
            cpu_core_seconds: self.cpu_millis_ms as f64 / 1_000_000.0,
            memory_gib_seconds: self.memory_bytes_ms as f64 / (1024.0 * 1024.0 * 1024.0 * 1000.0),
            gpu_seconds: self.gpus_ms as f64 / 1000.0,
            cpu_time_seconds: self.cpu_time_ms as f64 / 1000.0,
        }
    }
}

/// The start of the Unix hour holding `ms`.
fn bucket_of(ms: u64) -> u64 {
    ms - ms % USAGE_BUCKET_MS
}

impl RegistryState {
    /// The project's resource use between `since` and `until` (Unix ms).
    ///
    /// Live jobs count exactly: every started attempt counts from its start to its end (or `until`),
    /// clipped to the range, and measured CPU time counts for the attempts that ended in the range.
    ///
    /// Purged jobs are kept per hour: an archived hour entirely inside the range counts fully; an hour that
    /// straddles `since` or `until` counts its reserved resources in proportion to the overlap, and its CPU
    /// time when the hour starts in `[since, until)`. Over hour-aligned ranges a purge therefore changes no
    /// figure (save CPU time of an attempt that ended exactly on `until`); a range that cuts an hour gets
    /// that hour's average share.
    pub fn usage(&self, project_id: &str, since: u64, until: u64) -> UsageReport {
        let mut total = UsageSums::default();
        let mut jobs = Vec::new();
        let ids = self.jobs.of_project(project_id);
        for job in ids.filter_map(|id| self.jobs.get(id)) {
            let mut sums = UsageSums::default();
            let mut used = false;
            for attempt in &job.attempts {
                let Some(started) = attempt.started_at else {
                    continue;
                };
                let end = attempt.ended_at.unwrap_or(until).min(until);
                let overlap = end.saturating_sub(started.max(since));
                if overlap > 0 {
                    used = true;
                    sums.reserve(&attempt.resources, overlap);
                }
                if let (Some(ended), Some(cpu)) = (attempt.ended_at, attempt.cpu_time_ms) {
                    if (since..=until).contains(&ended) {
                        used = true;
                        sums.cpu_time_ms += u128::from(cpu);
                    }
                }
            }
            if !used {
                continue;
            }
            total.add(&sums);
            let figures = sums.figures();
            jobs.push(JobUsage {
                job_id: job.id.clone(),
                name: job.spec.name.clone(),
                cpu_core_seconds: figures.cpu_core_seconds,
                memory_gib_seconds: figures.memory_gib_seconds,
                gpu_seconds: figures.gpu_seconds,
                cpu_time_seconds: figures.cpu_time_seconds,
            });
        }
        let archived = self.usage.archived(project_id, since, until);
        total.add(&archived);
        let figures = total.figures();
        UsageReport {
            project_id: project_id.to_owned(),
            since,
            until,
            cpu_core_seconds: figures.cpu_core_seconds,
            memory_gib_seconds: figures.memory_gib_seconds,
            gpu_seconds: figures.gpu_seconds,
            cpu_time_seconds: figures.cpu_time_seconds,
            archived: archived.figures(),
            jobs,
        }
    }
}

/// The usage of purged jobs: this domain's own state. Only the registry's purge writes to it (handing over
/// each job it forgets), and a project's deletion clears its share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageArchive {
    /// Project id → start of a Unix hour (ms) → the usage of the purged jobs in that hour.
    hours: BTreeMap<String, BTreeMap<u64, UsageSums>>,
}

impl UsageArchive {
    /// An archive holding a snapshot's hours.
    pub(super) fn from_hours(hours: BTreeMap<String, BTreeMap<u64, UsageSums>>) -> UsageArchive {
        UsageArchive { hours }
    }

    /// The hours, as a snapshot writes them.
    pub(super) fn hours(&self) -> &BTreeMap<String, BTreeMap<u64, UsageSums>> {
        &self.hours
    }

    /// Forgets a deleted project's archive.
    pub(super) fn forget_project(&mut self, project_id: &str) {
        self.hours.remove(project_id);
    }

    /// The archived (purged) usage of the project in the range, per the hour rule of [`RegistryState::usage`].
    pub(super) fn archived(&self, project_id: &str, since: u64, until: u64) -> UsageSums {
        let mut sums = UsageSums::default();
        let Some(hours) = self.hours.get(project_id) else {
            return sums;
        };
        if since > until {
            return sums;
        }
        for (&start, bucket) in hours.range(bucket_of(since)..until) {
            let end = start.saturating_add(USAGE_BUCKET_MS);
            if start >= since && end <= until {
                sums.add(bucket);
                continue;
            }
            let overlap = end.min(until).saturating_sub(start.max(since));
            sums.add(&bucket.reserved_share(overlap));
            if start >= since {
                sums.cpu_time_ms += bucket.cpu_time_ms;
            }
        }
        sums
    }

    /// Folds a job's usage into its project's hourly archive (just before the job is purged). Each started
    /// attempt's reservation is split exactly across the hours it overlaps; its CPU time goes to the hour
    /// holding its end.
    pub(super) fn archive(&mut self, job: &JobRecord) {
        let hours = self.hours.entry(job.project_id.clone()).or_default();
        for attempt in &job.attempts {
            let Some(started) = attempt.started_at else {
                continue;
            };
            // A terminal job's attempts have all ended; the job's end stands in should one lack its time.
            let ended = attempt.ended_at.or(job.finished_at).unwrap_or(started);
            let mut from = started;
            while from < ended {
                let hour = bucket_of(from);
                let to = ended.min(hour.saturating_add(USAGE_BUCKET_MS));
                hours
                    .entry(hour)
                    .or_default()
                    .reserve(&attempt.resources, to - from);
                from = to;
            }
            if let (Some(ended), Some(cpu)) = (attempt.ended_at, attempt.cpu_time_ms) {
                hours.entry(bucket_of(ended)).or_default().cpu_time_ms += u128::from(cpu);
            }
        }
        if hours.is_empty() {
            self.hours.remove(&job.project_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Resources;
    use crate::state::{Attempt, AttemptOutcome, JobRecord, JobSpec, JobState};

    const GIB: u64 = 1 << 30;

    fn attempt(
        number: u32,
        started: Option<u64>,
        ended: Option<u64>,
        cpu_ms: Option<u64>,
    ) -> Attempt {
        Attempt {
            attempt: number,
            replica: 0,
            node: "eu/eu1/a1".into(),
            region: "eu".into(),
            cluster: "eu1".into(),
            gpu_uuids: vec!["GPU-0".into()],
            resources: Resources {
                cpu_millis: 2500,
                memory_bytes: 2 * GIB,
                gpus: 1,
            },
            lease_epoch: 1,
            scheduled_at: 0,
            started_at: started,
            ended_at: ended,
            outcome: ended.map(|_| AttemptOutcome::Failed),
            exit_code: None,
            signal: None,
            cpu_time_ms: cpu_ms,
            max_rss_bytes: None,
            detail: String::new(),
        }
    }

    fn add_job(s: &mut RegistryState, project: &str, id: &str, attempts: Vec<Attempt>) {
        let mut spec = JobSpec::new("train");
        spec.name = format!("name-{id}");
        let running = attempts.last().is_some_and(|a| a.ended_at.is_none());
        s.jobs.insert(JobRecord {
            id: id.to_owned(),
            project_id: project.to_owned(),
            spec,
            state: if running {
                JobState::Running
            } else {
                JobState::Failed
            },
            attempts,
            pending_reason: None,
            cancel_requested: false,
            prefer_region: None,
            created_by: "ada".into(),
            principal_id: None,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
        });
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn usage_is_clipped_to_the_range() {
        let mut s = RegistryState::default();
        // 10 s from 0 to 10 000 ms; the range starts at 4 000: 6 s count. Its CPU time counts (ended inside).
        // Then a retry running from 20 000, still running at `until` = 30 000: 10 s count.
        add_job(
            &mut s,
            "prj_a",
            "job_b",
            vec![
                attempt(1, Some(0), Some(10_000), Some(7_000)),
                attempt(2, Some(20_000), None, None),
            ],
        );
        // Entirely before the range: omitted, and its CPU time too.
        add_job(
            &mut s,
            "prj_a",
            "job_c",
            vec![attempt(1, Some(0), Some(3_000), Some(900))],
        );
        // Never started: nothing.
        add_job(
            &mut s,
            "prj_a",
            "job_d",
            vec![attempt(1, None, Some(5_000), None)],
        );
        // Started after the range: nothing.
        add_job(
            &mut s,
            "prj_a",
            "job_e",
            vec![attempt(1, Some(31_000), None, None)],
        );
        // Covers the whole range, ends after it: 26 s count, its CPU time does not.
        add_job(
            &mut s,
            "prj_a",
            "job_a",
            vec![attempt(1, Some(1_000), Some(40_000), Some(99_000))],
        );
        add_job(
            &mut s,
            "prj_b",
            "job_x",
            vec![attempt(1, Some(0), Some(40_000), Some(1))],
        );

        let report = s.usage("prj_a", 4_000, 30_000);
        let ids: Vec<&str> = report.jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(ids, ["job_a", "job_b"], "sorted by id, unused jobs omitted");
        let a = &report.jobs[0];
        assert_eq!(a.name, "name-job_a");
        assert!(close(a.cpu_core_seconds, 2.5 * 26.0), "{a:?}");
        assert!(close(a.memory_gib_seconds, 2.0 * 26.0), "{a:?}");
        assert!(close(a.gpu_seconds, 26.0), "{a:?}");
        assert!(close(a.cpu_time_seconds, 0.0), "{a:?}");
        let b = &report.jobs[1];
        assert!(close(b.cpu_core_seconds, 2.5 * 16.0), "{b:?}");
        assert!(close(b.memory_gib_seconds, 2.0 * 16.0), "{b:?}");
        assert!(close(b.gpu_seconds, 16.0), "{b:?}");
        assert!(close(b.cpu_time_seconds, 7.0), "{b:?}");
        assert!(close(report.cpu_core_seconds, 2.5 * 42.0));
        assert!(close(report.memory_gib_seconds, 2.0 * 42.0));
        assert!(close(report.gpu_seconds, 42.0));
        assert!(close(report.cpu_time_seconds, 7.0));
        assert_eq!(
            (report.project_id.as_str(), report.since, report.until),
            ("prj_a", 4_000, 30_000)
        );
    }

    #[test]
    fn empty_and_inverted_ranges_report_nothing() {
        let mut s = RegistryState::default();
        add_job(
            &mut s,
            "prj_a",
            "job_a",
            vec![attempt(1, Some(0), Some(10_000), Some(5))],
        );
        let inverted = s.usage("prj_a", 20_000, 10_000);
        assert!(inverted.jobs.is_empty() && inverted.cpu_core_seconds == 0.0);
        let unknown = s.usage("prj_missing", 0, u64::MAX);
        assert!(unknown.jobs.is_empty());
        // Sub-second precision: 1 ms of 1 GiB is 0.001 GiB-seconds.
        let mut s = RegistryState::default();
        let mut one = attempt(1, Some(5), Some(6), None);
        one.resources = Resources {
            cpu_millis: 1,
            memory_bytes: GIB,
            gpus: 0,
        };
        add_job(&mut s, "prj_a", "job_a", vec![one]);
        let tiny = s.usage("prj_a", 0, 100);
        assert!(close(tiny.memory_gib_seconds, 0.001), "{tiny:?}");
        assert!(close(tiny.cpu_core_seconds, 0.000_001), "{tiny:?}");
        assert!(close(tiny.gpu_seconds, 0.0));
    }
}
