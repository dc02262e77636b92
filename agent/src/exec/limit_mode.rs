//! Which mechanism limits a job's CPU and memory on this node, detected once when the launcher starts.
//!
//! Detection may create the `meridian` parent cgroup and enable the `cpu` and `memory` controllers for
//! its children — the preparation that the chosen mode needs — and nothing else. It never moves a
//! process and never changes limits of a cgroup that is not Meridian's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Name of the parent cgroup under which every job's cgroup is created.
pub(crate) const PARENT_CGROUP: &str = "meridian";

/// How jobs' resources are limited on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitMode {
    /// Unified hierarchy: job groups are created under `parent` (`<mount>/meridian`).
    CgroupV2 { parent: PathBuf },
    /// Legacy per-controller hierarchies: job groups under `cpu_parent` and `memory_parent`
    /// (`<root>/cpu/meridian`, `<root>/memory/meridian`), under `pids_parent` when the `pids` hierarchy is
    /// writable, and under `unified_parent` (`<root>/unified/meridian`, hybrid hosts) when the cgroup v2
    /// hierarchy is mounted beside them without controllers: there the job's network filter attaches.
    CgroupV1 {
        cpu_parent: PathBuf,
        memory_parent: PathBuf,
        pids_parent: Option<PathBuf>,
        unified_parent: Option<PathBuf>,
    },
    /// No writable cgroup: the CPU share is not enforced; memory is bounded through `RLIMIT_AS`.
    Rlimits,
}

impl LimitMode {
    /// A line for the node status.
    pub fn status(&self) -> &'static str {
        match self {
            LimitMode::CgroupV2 { .. } => "cgroup v2 (cpu, memory, pids)",
            LimitMode::CgroupV1 {
                pids_parent: Some(_),
                ..
            } => "cgroup v1 (cpu, memory, pids)",
            LimitMode::CgroupV1 { .. } => "cgroup v1 (cpu, memory; processes via RLIMIT_NPROC)",
            LimitMode::Rlimits => {
                "rlimits only: CPU not limited, memory via RLIMIT_AS, processes via RLIMIT_NPROC"
            }
        }
    }

    /// Detects the mode under `root` (normally `/sys/fs/cgroup`): cgroup v2 at `root` or at
    /// `root/unified` when it offers `cpu` and `memory` and accepts a child group, else cgroup v1 when
    /// `root/cpu` and `root/memory` accept child groups, else rlimits.
    pub(crate) fn detect(root: &Path) -> LimitMode {
        for mount in [root.to_path_buf(), root.join("unified")] {
            let Ok(controllers) = fs::read_to_string(mount.join("cgroup.controllers")) else {
                continue;
            };
            if !lists_cpu_and_memory(&controllers) {
                tracing::debug!(mount = %mount.display(), %controllers, "cgroup v2 without cpu and memory controllers");
                continue;
            }
            match prepare_v2(&mount) {
                Ok(parent) => return LimitMode::CgroupV2 { parent },
                Err(e) => {
                    tracing::info!(mount = %mount.display(), error = %e, "cgroup v2 present but not writable")
                }
            }
        }
        let (cpu, memory) = (root.join("cpu"), root.join("memory"));
        if cpu.join("cpu.cfs_quota_us").is_file() && memory.join("memory.limit_in_bytes").is_file()
        {
            match (prepare_parent(&cpu), prepare_parent(&memory)) {
                (Ok(cpu_parent), Ok(memory_parent)) => {
                    let pids = root.join("pids");
                    let pids_parent = pids
                        .join("cgroup.procs")
                        .is_file()
                        .then(|| prepare_parent(&pids).ok())
                        .flatten();
                    let unified = root.join("unified");
                    let unified_parent = unified
                        .join("cgroup.controllers")
                        .is_file()
                        .then(|| prepare_parent(&unified).ok())
                        .flatten();
                    return LimitMode::CgroupV1 {
                        cpu_parent,
                        memory_parent,
                        pids_parent,
                        unified_parent,
                    };
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::info!(root = %root.display(), error = %e, "cgroup v1 present but not writable")
                }
            }
        }
        tracing::warn!(root = %root.display(), "no writable cgroup hierarchy: CPU not limited, memory via RLIMIT_AS");
        LimitMode::Rlimits
    }
}

fn lists_cpu_and_memory(controllers: &str) -> bool {
    let words: Vec<&str> = controllers.split_whitespace().collect();
    words.contains(&"cpu") && words.contains(&"memory")
}

/// Enables `cpu` and `memory` (and `pids` where `dir` offers it) for the children of `dir` unless they
/// already are.
fn enable_controllers(dir: &Path) -> io::Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let current = match fs::read_to_string(&path) {
        Ok(current) => current,
        // Only a tree that is not cgroupfs lacks the file; writing it is then harmless.
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let offers_pids = fs::read_to_string(dir.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "pids"));
    let has_pids = current.split_whitespace().any(|w| w == "pids");
    if lists_cpu_and_memory(&current) && (has_pids || !offers_pids) {
        return Ok(());
    }
    if offers_pids && fs::write(&path, "+cpu +memory +pids").is_ok() {
        return Ok(());
    }
    // Without pids (not offered, or refused) processes are still bounded through RLIMIT_NPROC.
    fs::write(&path, "+cpu +memory")?;
    Ok(())
}

fn prepare_v2(mount: &Path) -> io::Result<PathBuf> {
    enable_controllers(mount)?;
    let parent = prepare_parent(mount)?;
    enable_controllers(&parent)?;
    Ok(parent)
}

/// Creates `<dir>/meridian` and proves that a job group can be created (and removed) inside it.
fn prepare_parent(dir: &Path) -> io::Result<PathBuf> {
    let parent = dir.join(PARENT_CGROUP);
    fs::create_dir_all(&parent)?;
    // Unique per detection: launchers may be built concurrently in one process.
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let probe = parent.join(format!(
        ".probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&probe)?;
    fs::remove_dir(&probe)?;
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_lists_need_both_words() {
        assert!(lists_cpu_and_memory("cpuset cpu io memory pids\n"));
        assert!(!lists_cpu_and_memory("cpuset io memory pids"));
        assert!(!lists_cpu_and_memory("cpu cpuset"));
        assert!(!lists_cpu_and_memory(""));
    }

    #[test]
    fn status_lines_say_what_is_limited() {
        assert_eq!(
            LimitMode::Rlimits.status(),
            "rlimits only: CPU not limited, memory via RLIMIT_AS, processes via RLIMIT_NPROC"
        );
        let v1 = LimitMode::CgroupV1 {
            cpu_parent: "/c".into(),
            memory_parent: "/m".into(),
            pids_parent: Some("/p".into()),
            unified_parent: None,
        };
        assert_eq!(v1.status(), "cgroup v1 (cpu, memory, pids)");
        let v2 = LimitMode::CgroupV2 {
            parent: "/u".into(),
        };
        assert_eq!(v2.status(), "cgroup v2 (cpu, memory, pids)");
    }
}
