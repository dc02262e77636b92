//! One job attempt's cgroup directories: creating them with the attempt's CPU and memory limits, the
//! `cgroup.procs` files the forked child writes itself into before `exec`, killing whatever is left in
//! them, and removing them.
//!
//! Touches only directories under the `meridian` parent chosen by [`LimitMode`]; never a group it did not
//! create for the attempt.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::limit_mode::LimitMode;
use super::ExecError;

/// CFS period used for the CPU quota, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long removal waits for a group to empty (processes still exiting answer `EBUSY`).
const REMOVE_DEADLINE: Duration = Duration::from_secs(5);

/// The CFS quota for a share of `cpu_millis` thousandths of a core, or `None` for no limit.
pub(crate) fn cpu_quota_us(cpu_millis: u64) -> Option<u64> {
    (cpu_millis > 0)
        .then(|| (cpu_millis.saturating_mul(CPU_PERIOD_US) / 1000).max(MIN_CPU_QUOTA_US))
}

/// The limits of one attempt's groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupLimits {
    /// Thousandths of a core; 0: no CPU limit.
    pub cpu_millis: u64,
    /// Bytes; 0: no memory limit.
    pub memory_bytes: u64,
    /// Processes and threads; `None`: no limit.
    pub pids_max: Option<u64>,
}

/// The attempt's groups: every directory (for placing, killing and removing) and the cgroup v2 one, when
/// there is one, where a network filter can attach.
#[derive(Debug, Default)]
pub(crate) struct JobGroups {
    pub dirs: Vec<PathBuf>,
    pub unified: Option<PathBuf>,
}

/// Creates the attempt's group(s) named `name` and writes the limits; returns the directories (none in
/// rlimits mode). `unified` asks for a cgroup v2 group even on a hybrid host (for the network filter). On
/// failure nothing created here is left behind.
pub(crate) fn create(
    mode: &LimitMode,
    name: &str,
    limits: GroupLimits,
    unified: bool,
) -> Result<JobGroups, ExecError> {
    let mut groups = JobGroups::default();
    let result = create_inner(mode, name, limits, unified, &mut groups);
    if result.is_err() {
        for dir in &groups.dirs {
            let _ = fs::remove_dir(dir);
        }
    }
    result.map(|()| groups)
}

fn create_inner(
    mode: &LimitMode,
    name: &str,
    limits: GroupLimits,
    unified: bool,
    groups: &mut JobGroups,
) -> Result<(), ExecError> {
    let GroupLimits {
        cpu_millis,
        memory_bytes,
        pids_max,
    } = limits;
    let quota = cpu_quota_us(cpu_millis);
    let pids = pids_max.map_or_else(|| "max".to_string(), |p| p.to_string());
    let created = &mut groups.dirs;
    match mode {
        LimitMode::Rlimits => {}
        LimitMode::CgroupV2 { parent } => {
            let dir = make_group(parent, name, created)?;
            groups.unified = Some(dir.clone());
            write_if_present(&dir, "pids.max", &pids);
            let cpu_max = match quota {
                Some(q) => format!("{q} {CPU_PERIOD_US}"),
                None => format!("max {CPU_PERIOD_US}"),
            };
            write_control(&dir, "cpu.max", &cpu_max)?;
            // Written even without a limit: a group left by an earlier agent may carry an old one.
            let memory_max = match memory_bytes {
                0 => "max".to_string(),
                bytes => bytes.to_string(),
            };
            write_control(&dir, "memory.max", &memory_max)?;
            // Optional controls: absent on kernels without swap accounting or without oom.group.
            let swap_max = if memory_bytes > 0 { "0" } else { "max" };
            write_if_present(&dir, "memory.swap.max", swap_max);
            write_if_present(&dir, "memory.oom.group", "1");
        }
        LimitMode::CgroupV1 {
            cpu_parent,
            memory_parent,
            pids_parent,
            unified_parent,
        } => {
            // Limits are written even when there are none: a group left by an earlier agent may carry
            // old ones.
            let cpu = make_group(cpu_parent, name, created)?;
            write_control(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            let quota = quota.map_or_else(|| "-1".to_string(), |q| q.to_string());
            write_control(&cpu, "cpu.cfs_quota_us", &quota)?;
            let memory = make_group(memory_parent, name, created)?;
            let limit = match memory_bytes {
                0 => "-1".to_string(),
                bytes => bytes.to_string(),
            };
            // memory+swap may never be below memory: lift it first, then set both. Without the second
            // the job could spill into swap instead of meeting its limit.
            write_if_present(&memory, "memory.memsw.limit_in_bytes", "-1");
            write_control(&memory, "memory.limit_in_bytes", &limit)?;
            write_if_present(&memory, "memory.memsw.limit_in_bytes", &limit);
            if let Some(parent) = pids_parent {
                let dir = make_group(parent, name, created)?;
                write_control(&dir, "pids.max", &pids)?;
            }
            if let (true, Some(parent)) = (unified, unified_parent) {
                let dir = make_group(parent, name, created)?;
                groups.unified = Some(dir);
            }
        }
    }
    Ok(())
}

fn make_group(parent: &Path, name: &str, created: &mut Vec<PathBuf>) -> Result<PathBuf, ExecError> {
    let dir = parent.join(name);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        // Left over from an agent that died before removing it: reuse it, the limits are rewritten.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ExecError::io("creating cgroup", &dir)(e)),
    }
    created.push(dir.clone());
    Ok(dir)
}

fn write_control(dir: &Path, file: &str, value: &str) -> Result<(), ExecError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(ExecError::io("writing cgroup control", path))
}

fn write_if_present(dir: &Path, file: &str, value: &str) {
    let path = dir.join(file);
    if path.exists() {
        if let Err(e) = fs::write(&path, value) {
            tracing::debug!(path = %path.display(), error = %e, "optional cgroup control not written");
        }
    }
}

/// Opens each group's `cgroup.procs` for the child to write its pid into after `fork`.
pub(crate) fn open_procs_files(dirs: &[PathBuf]) -> Result<Vec<File>, ExecError> {
    dirs.iter()
        .map(|dir| {
            let path = dir.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(ExecError::io("opening", path))
        })
        .collect()
}

/// The pids listed in the groups' `cgroup.procs`.
pub(crate) fn member_pids(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|w| w.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|&pid| pid > 0)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Sends `signal` to every process in the groups. Every member was placed there by us (directly or as a
/// descendant of the job), so no pid check is needed.
pub(crate) fn signal_members(dirs: &[PathBuf], signal: i32) {
    for pid in member_pids(dirs) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// How many times the kernel killed a process in the groups at their memory limit: `oom_kill` in cgroup
/// v2's `memory.events`, or in cgroup v1's `memory.oom_control` (kernels since 4.13). 0 when neither says.
pub(crate) fn oom_kills(dirs: &[PathBuf]) -> u64 {
    dirs.iter()
        .flat_map(|dir| ["memory.events", "memory.oom_control"].map(|f| dir.join(f)))
        .filter_map(|file| fs::read_to_string(file).ok())
        .map(|text| oom_kill_count(&text))
        .sum()
}

/// The `oom_kill N` line of a `memory.events` or `memory.oom_control` file.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == "oom_kill")
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Removes the groups, waiting (bounded) for exiting processes to leave them.
pub(crate) async fn remove(dirs: &[PathBuf]) {
    for dir in dirs {
        let deadline = Instant::now() + REMOVE_DEADLINE;
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    signal_members(std::slice::from_ref(dir), libc::SIGKILL);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "job cgroup not removed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_either_cgroup_version() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(oom_kill_count(v2), 1);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(oom_kill_count(v1), 3);
        assert_eq!(oom_kill_count("low 0\nhigh 0\n"), 0);

        let dir = tempfile::tempdir().expect("tempdir");
        let group = dir.path().join("g");
        fs::create_dir(&group).expect("mkdir");
        assert_eq!(oom_kills(std::slice::from_ref(&group)), 0);
        fs::write(group.join("memory.events"), v2).expect("write");
        assert_eq!(oom_kills(&[group]), 1);
    }

    #[test]
    fn cpu_quota_follows_the_share() {
        assert_eq!(cpu_quota_us(0), None);
        assert_eq!(cpu_quota_us(1000), Some(100_000));
        assert_eq!(cpu_quota_us(2500), Some(250_000));
        assert_eq!(cpu_quota_us(250), Some(25_000));
        assert_eq!(cpu_quota_us(1), Some(MIN_CPU_QUOTA_US));
        assert!(cpu_quota_us(u64::MAX).is_some());
    }
}
