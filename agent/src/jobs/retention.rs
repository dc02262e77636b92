//! Retention of finished attempts: which ones the agent forgets, when a tombstone may go, and removing a
//! forgotten attempt's state directory without ever reaching outside `<data_dir>/jobs/`.
//!
//! The decisions ([`attempts_to_forget`], [`tombstones_to_drop`]) are pure: the supervisor passes the
//! records, the keys of the latest assignment list, the keys with queued reports, `now` and the retention
//! period, and carries the answer out. An attempt is forgotten only when it is finished on this node, no
//! report about it is still queued (the coordinators answered its final one), it is not in the latest
//! assignment list, and it ended more than the retention period ago. A tombstone goes after
//! [`TOMBSTONE_RETENTION_FACTOR`] retention periods more, by when no coordinator can assign its attempt
//! again (and never while it is assigned or has a queued report).
//!
//! Removal ([`remove_state_dirs`], blocking file I/O) deletes the state directory the launcher gave the
//! attempt (`<data_dir>/jobs/<job>/<attempt>[-r<replica>]`: logs, `work/`, FIFOs, exit status) and
//! nothing else: the path is derived from the key, never taken from a record or a caller; it must
//! resolve to exactly that place under the canonical jobs directory (a symlink anywhere below
//! `<data_dir>/jobs/` refuses it); and a directory that holds the `working_dir` of an attempt still
//! kept waits. `std::fs::remove_dir_all` unlinks symlinks inside the directory without following
//! them, so a user's `working_dir` or anything a job linked to is never touched. Every step can be
//! interrupted: the store writes the tombstone first, and every sweep re-checks every tombstone's
//! directory, so a removal cut short is finished by the next sweep.

use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::exec::Launcher;

use super::store::{AttemptPhase, AttemptRecord, Tombstone};
use super::AttemptKey;

/// A tombstone is dropped this many retention periods after its attempt was forgotten.
pub(crate) const TOMBSTONE_RETENTION_FACTOR: u32 = 4;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The finished attempts to forget at `now_ms`, in record order. See the module documentation for the
/// rules; a finished record without an end time (written before retention existed) is kept.
pub(crate) fn attempts_to_forget(
    records: &[AttemptRecord],
    assigned: &BTreeSet<AttemptKey>,
    queued: &BTreeSet<AttemptKey>,
    now_ms: u64,
    retain: Duration,
) -> Vec<AttemptKey> {
    let retain_ms = millis(retain);
    records
        .iter()
        .filter(|r| r.phase == AttemptPhase::Finished)
        .filter(|r| {
            r.finished_at_ms
                .is_some_and(|at| now_ms.saturating_sub(at) > retain_ms)
        })
        .map(AttemptRecord::key)
        .filter(|key| !queued.contains(key) && !assigned.contains(key))
        .collect()
}

/// The tombstones to drop at `now_ms`: forgotten more than [`TOMBSTONE_RETENTION_FACTOR`] × `retain`
/// ago, not assigned, nothing queued about them.
pub(crate) fn tombstones_to_drop(
    tombstones: &[Tombstone],
    assigned: &BTreeSet<AttemptKey>,
    queued: &BTreeSet<AttemptKey>,
    now_ms: u64,
    retain: Duration,
) -> Vec<AttemptKey> {
    let keep_ms = millis(retain).saturating_mul(u64::from(TOMBSTONE_RETENTION_FACTOR));
    tombstones
        .iter()
        .filter(|t| now_ms.saturating_sub(t.forgotten_at_ms) > keep_ms)
        .map(|t| t.key.clone())
        .filter(|key| !queued.contains(key) && !assigned.contains(key))
        .collect()
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SweepReport {
    /// Records replaced by tombstones.
    pub forgotten: usize,
    /// Tombstones removed entirely.
    pub tombstones_dropped: usize,
    /// State directories removed.
    pub dirs_removed: usize,
    /// Bytes of the regular files in the removed directories.
    pub bytes_freed: u64,
    /// State directories left in place: refused (outside the jobs directory, a symlink, holding a
    /// kept attempt's working directory) or failed to remove; retried by the next sweep.
    pub dirs_kept: usize,
}

impl SweepReport {
    /// Logs the sweep at info level when it changed anything.
    pub(crate) fn log(&self) {
        if self.forgotten + self.tombstones_dropped + self.dirs_removed > 0 {
            tracing::info!(
                forgotten = self.forgotten,
                tombstones_dropped = self.tombstones_dropped,
                dirs_removed = self.dirs_removed,
                bytes_freed = self.bytes_freed,
                dirs_kept = self.dirs_kept,
                "finished attempts past retention removed"
            );
        } else if self.dirs_kept > 0 {
            tracing::debug!(
                dirs_kept = self.dirs_kept,
                "retention sweep kept directories"
            );
        }
    }
}

/// Removes the state directories of the forgotten attempts `keys` that still exist (blocking). A
/// directory that is, or lies within, one of `kept_working_dirs` (the working directories of attempts
/// still kept) stays. Fills in `dirs_removed`, `bytes_freed` and `dirs_kept` of the report.
pub(crate) fn remove_state_dirs(
    launcher: &Launcher,
    keys: &[AttemptKey],
    kept_working_dirs: &[PathBuf],
) -> SweepReport {
    let mut report = SweepReport::default();
    let jobs_dir = launcher.jobs_dir();
    let jobs_root = match std::fs::canonicalize(&jobs_dir) {
        Ok(root) => root,
        Err(e) => {
            tracing::warn!(dir = %jobs_dir.display(), error = %e, "jobs directory unreadable; nothing removed");
            report.dirs_kept = keys.len();
            return report;
        }
    };
    // Resolved once, and only when there is something to remove.
    let mut protected: Option<Vec<PathBuf>> = None;
    for key in keys {
        let dir = match checked_state_dir(launcher, &jobs_root, key) {
            Ok(Some(dir)) => dir,
            Ok(None) => continue,
            Err(reason) => {
                tracing::warn!(job = %key.job_id, attempt = key.attempt, replica = key.replica, %reason, "state directory of a forgotten attempt not removed");
                report.dirs_kept += 1;
                continue;
            }
        };
        let protected = protected.get_or_insert_with(|| {
            kept_working_dirs
                .iter()
                .filter_map(|d| std::fs::canonicalize(d).ok())
                .collect()
        });
        if let Some(inside) = protected.iter().find(|wd| wd.starts_with(&dir)) {
            tracing::warn!(job = %key.job_id, attempt = key.attempt, replica = key.replica, working_dir = %inside.display(), "state directory of a forgotten attempt holds another attempt's working directory; kept for now");
            report.dirs_kept += 1;
            continue;
        }
        let bytes = tree_bytes(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                report.dirs_removed += 1;
                report.bytes_freed = report.bytes_freed.saturating_add(bytes);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(job = %key.job_id, attempt = key.attempt, replica = key.replica, dir = %dir.display(), error = %e, "removing a forgotten attempt's state directory failed; retried next sweep");
                report.dirs_kept += 1;
            }
        }
    }
    report
}

/// Removes `<data_dir>/jobs/<job>` of each of `jobs` when it is empty (blocking, cheap: one `rmdir`
/// each). Call it only where no attempt of these jobs can be launched meanwhile.
pub(crate) fn remove_empty_job_dirs<'a>(
    launcher: &Launcher,
    jobs: impl IntoIterator<Item = &'a str>,
) {
    let jobs_dir = launcher.jobs_dir();
    for job in jobs {
        if is_plain_name(job) {
            // Fails (and changes nothing) unless it is an empty directory; a symlink is never removed.
            let _ = std::fs::remove_dir(jobs_dir.join(job));
        }
    }
}

/// The attempt's state directory when it exists and is safe to remove; `None` when there is none;
/// an error saying why it must stay otherwise.
fn checked_state_dir(
    launcher: &Launcher,
    jobs_root: &Path,
    key: &AttemptKey,
) -> Result<Option<PathBuf>, String> {
    if !is_plain_name(&key.job_id) {
        // The launcher refuses such ids before it creates anything: there is nothing of ours.
        return Ok(None);
    }
    let dir = launcher.state_dir(&key.job_id, key.attempt, key.replica);
    let Some(name) = dir.file_name() else {
        return Err(format!("{} has no final component", dir.display()));
    };
    let expected = jobs_root.join(&key.job_id).join(name);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(format!("{} is a symlink", dir.display()))
        }
        Ok(meta) if !meta.is_dir() => return Err(format!("{} is not a directory", dir.display())),
        Ok(_) => {}
    }
    let resolved = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if resolved != expected {
        return Err(format!(
            "{} resolves to {}, not {}",
            dir.display(),
            resolved.display(),
            expected.display()
        ));
    }
    Ok(Some(resolved))
}

/// One normal path component that does not start with `.`.
fn is_plain_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(components.next(), Some(Component::Normal(_)))
        && components.next().is_none()
        && !name.starts_with('.')
        && !name.contains('/')
}

/// Total size of the regular files under `dir`, symlinks not followed.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total: u64 = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                if let Ok(meta) = entry.metadata() {
                    total = total.saturating_add(meta.len());
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::LauncherOptions;
    use crate::jobs::Assignment;

    const MINUTE_MS: u64 = 60_000;
    const RETAIN: Duration = Duration::from_secs(3_600);
    const NOW: u64 = 1_800_000_000_000;

    fn assignment(job: &str) -> Assignment {
        Assignment {
            job_id: job.into(),
            attempt: 1,
            replica: 0,
            replicas: 0,
            replica_hosts: vec![],
            project_id: "p".into(),
            command: "true".into(),
            args: vec![],
            env: Default::default(),
            working_dir: String::new(),
            cpu_millis: 0,
            memory_bytes: 0,
            gpu_uuids: vec![],
            timeout_ms: 0,
            cancel: false,
            cancel_grace_ms: 0,
            secret_env: Default::default(),
            launch_error: String::new(),
            network: String::new(),
            secrets_in_env: true,
        }
    }

    /// A record of `job` finished `ago_ms` before [`NOW`].
    fn finished(job: &str, ago_ms: u64) -> AttemptRecord {
        let mut record = AttemptRecord::launching(assignment(job));
        record.mark_finished(NOW - ago_ms);
        record.final_reported = true;
        record
    }

    fn key(job: &str) -> AttemptKey {
        AttemptKey::new(job, 1, 0)
    }

    fn keys(jobs: &[&str]) -> BTreeSet<AttemptKey> {
        jobs.iter().map(|j| key(j)).collect()
    }

    fn forget(
        records: &[AttemptRecord],
        assigned: &[&str],
        queued: &[&str],
        now: u64,
    ) -> Vec<AttemptKey> {
        attempts_to_forget(records, &keys(assigned), &keys(queued), now, RETAIN)
    }

    #[test]
    fn an_attempt_is_forgotten_only_when_every_rule_holds() {
        let hour = 60 * MINUTE_MS;
        let old = finished("old", hour + 1);
        assert_eq!(
            forget(std::slice::from_ref(&old), &[], &[], NOW),
            vec![key("old")]
        );

        // Each rule failing alone keeps it.
        let mut running = old.clone();
        running.phase = AttemptPhase::Running;
        let mut launching = old.clone();
        launching.phase = AttemptPhase::Launching;
        assert!(
            forget(&[running, launching], &[], &[], NOW).is_empty(),
            "not finished"
        );
        assert!(
            forget(std::slice::from_ref(&old), &[], &["old"], NOW).is_empty(),
            "report queued"
        );
        assert!(
            forget(std::slice::from_ref(&old), &["old"], &[], NOW).is_empty(),
            "still assigned"
        );
        assert!(
            forget(&[finished("recent", hour)], &[], &[], NOW).is_empty(),
            "exactly the retention period ago is not more than it"
        );
        let mut legacy = old.clone();
        legacy.finished_at_ms = None;
        assert!(forget(&[legacy], &[], &[], NOW).is_empty(), "no end time");
        // A clock that went back forgets nothing.
        assert!(forget(std::slice::from_ref(&old), &[], &[], NOW - 2 * hour).is_empty());
    }

    #[test]
    fn only_the_matching_replica_and_attempt_count() {
        let hour = 60 * MINUTE_MS;
        let zero = finished("gang", 2 * hour);
        let mut one = finished("gang", 2 * hour);
        one.assignment.replica = 1;
        let mut two = finished("gang", 2 * hour);
        two.assignment.attempt = 2;
        let records = [zero, one, two];
        // Replica 0 of attempt 1 is assigned and queued: its sibling and the next attempt still go.
        let chosen = forget(&records, &["gang"], &["gang"], NOW);
        assert_eq!(
            chosen,
            vec![AttemptKey::new("gang", 1, 1), AttemptKey::new("gang", 2, 0)]
        );
        // An unreported (stale-stopped) end is no obstacle once nothing is queued.
        let mut stale = finished("stale", 2 * hour);
        stale.final_reported = false;
        assert_eq!(forget(&[stale], &[], &[], NOW), vec![key("stale")]);
    }

    #[test]
    fn a_tombstone_goes_after_four_retention_periods_unless_assigned_or_queued() {
        let four = 4 * 60 * MINUTE_MS;
        let tombstone = |job: &str, ago: u64| Tombstone {
            key: key(job),
            forgotten_at_ms: NOW - ago,
            final_reported: true,
        };
        let all = [
            tombstone("young", four),
            tombstone("old", four + 1),
            tombstone("assigned", four + 1),
            tombstone("queued", four + 1),
        ];
        let dropped =
            tombstones_to_drop(&all, &keys(&["assigned"]), &keys(&["queued"]), NOW, RETAIN);
        assert_eq!(dropped, vec![key("old")]);
        assert!(tombstones_to_drop(&all, &keys(&[]), &keys(&[]), NOW - four, RETAIN).is_empty());
    }

    #[test]
    fn plain_names_only() {
        for good in ["job_1", "a.b-c", "x"] {
            assert!(is_plain_name(good), "{good}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "/abs", ".hidden", "a/"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }

    fn launcher(root: &Path) -> Launcher {
        let fake_cgroups = root.join("no-cgroups");
        std::fs::create_dir_all(&fake_cgroups).expect("mkdir");
        Launcher::new(LauncherOptions {
            data_dir: root.join("data"),
            cgroup_root: Some(fake_cgroups),
            sandbox: None,
            defaults: crate::exec::JobDefaults {
                memory_bytes: 0,
                pids_max: 0,
            },
        })
        .expect("launcher")
    }

    #[test]
    fn removal_stays_inside_the_jobs_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let launcher = launcher(tmp.path());
        let outside = tmp.path().join("precious");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("data"), b"keep me").expect("write");

        // A real-looking state directory with a symlink to the outside inside it: removed, the
        // target kept.
        let plain = launcher.state_dir("plain", 1, 0);
        std::fs::create_dir_all(plain.join("logs")).expect("mkdir");
        std::fs::write(plain.join("logs/stdout.log"), vec![b'x'; 1000]).expect("write");
        std::os::unix::fs::symlink(&outside, plain.join("link")).expect("symlink");
        // A job directory that is a symlink to the outside: refused.
        std::os::unix::fs::symlink(&outside, launcher.jobs_dir().join("escape")).expect("symlink");
        std::fs::create_dir_all(outside.join("1")).expect("mkdir");
        // A state directory that is itself a symlink: refused.
        std::fs::create_dir_all(launcher.jobs_dir().join("linked")).expect("mkdir");
        std::os::unix::fs::symlink(&outside, launcher.state_dir("linked", 1, 0)).expect("symlink");
        // A state directory holding a kept attempt's working directory: kept for now.
        let holder = launcher.state_dir("holder", 1, 0);
        std::fs::create_dir_all(holder.join("work/shared")).expect("mkdir");

        let forgotten = [
            key("plain"),
            key("escape"),
            key("linked"),
            key("holder"),
            key("never-ran"),
            key("../precious"),
        ];
        let report = remove_state_dirs(&launcher, &forgotten, &[holder.join("work/shared")]);
        assert_eq!(
            (report.dirs_removed, report.bytes_freed, report.dirs_kept),
            (1, 1000, 3),
            "{report:?}"
        );
        assert!(!plain.exists());
        assert!(holder.join("work/shared").is_dir());
        assert!(launcher.state_dir("linked", 1, 0).is_symlink());
        assert_eq!(
            std::fs::read(outside.join("data")).expect("read"),
            b"keep me"
        );
        assert!(outside.join("1").is_dir());

        // Once nothing holds it any more, the next sweep removes it; an emptied job directory goes.
        let report = remove_state_dirs(&launcher, &[key("holder")], &[]);
        assert_eq!((report.dirs_removed, report.dirs_kept), (1, 0));
        remove_empty_job_dirs(&launcher, ["plain", "holder", "escape", "linked"]);
        assert!(!launcher.jobs_dir().join("plain").exists());
        assert!(!launcher.jobs_dir().join("holder").exists());
        assert!(launcher.jobs_dir().join("escape").is_symlink());
        assert!(launcher.jobs_dir().join("linked").is_dir(), "not empty");
        assert!(outside.join("1").is_dir());
    }
}
