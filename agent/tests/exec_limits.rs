//! Resource limits: mode detection on fake cgroup trees, the limits written for v1 and v2, and real
//! enforcement — in this machine's writable cgroup hierarchy when there is one, and through rlimits.

mod exec_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::exec::{Launcher, LauncherOptions, LimitMode, LogStream, ProcessSpec};
use exec_common::{eventually, read_all, rlimit_launcher, shell_spec, touch};

const MIB: u64 = 1024 * 1024;
/// Allocates about 512 MiB: `tail` keeps the whole (newline-free) last line in memory.
const MEMORY_HOG: &str = "head -c 536870912 /dev/zero | tail -n 1 > /dev/null";
/// Allocates about 4 MiB the same way.
const MEMORY_SIP: &str = "head -c 4194304 /dev/zero | tail -n 1 > /dev/null";

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, text).expect("write");
}

fn launcher_at(tmp: &Path, cgroup_root: &Path) -> Launcher {
    Launcher::new(LauncherOptions {
        data_dir: tmp.join("data"),
        cgroup_root: Some(cgroup_root.to_path_buf()),
        sandbox: None,
        defaults: agent::exec::JobDefaults {
            memory_bytes: 0,
            pids_max: 0,
        },
    })
    .expect("launcher")
}

/// A pure v2 mount with the controllers, as on most production hosts.
fn fake_v2(root: &Path) {
    write(
        &root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    write(&root.join("cgroup.subtree_control"), "");
}

/// Hybrid, as on this kind of build machine: v1 controllers, a v2 `unified` mount without controllers.
fn fake_hybrid(root: &Path) {
    write(&root.join("unified/cgroup.controllers"), "");
    write(&root.join("unified/cgroup.subtree_control"), "");
    write(&root.join("cpu/cpu.cfs_quota_us"), "-1\n");
    write(&root.join("cpu/cpu.cfs_period_us"), "100000\n");
    write(
        &root.join("memory/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
}

#[test]
fn v2_with_cpu_and_memory_is_chosen_and_prepared() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("cg");
    fake_v2(&root);
    let launcher = launcher_at(tmp.path(), &root);
    assert_eq!(
        launcher.mode(),
        &LimitMode::CgroupV2 {
            parent: root.join("meridian")
        }
    );
    assert_eq!(launcher.mode().status(), "cgroup v2 (cpu, memory, pids)");
    // The controllers are handed down to the job groups.
    let enabled = fs::read_to_string(root.join("cgroup.subtree_control")).expect("read");
    assert_eq!(enabled, "+cpu +memory +pids");
    let enabled = fs::read_to_string(root.join("meridian/cgroup.subtree_control")).expect("read");
    assert_eq!(enabled, "+cpu +memory");
}

#[test]
fn hybrid_hosts_use_v1_and_a_v2_unified_mount_with_controllers_wins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("hybrid");
    fake_hybrid(&root);
    let launcher = launcher_at(tmp.path(), &root);
    assert_eq!(
        launcher.mode(),
        &LimitMode::CgroupV1 {
            cpu_parent: root.join("cpu/meridian"),
            memory_parent: root.join("memory/meridian"),
            pids_parent: None,
            unified_parent: Some(root.join("unified/meridian")),
        }
    );
    assert_eq!(
        launcher.mode().status(),
        "cgroup v1 (cpu, memory; processes via RLIMIT_NPROC)"
    );

    write(
        &root.join("unified/cgroup.controllers"),
        "cpu memory pids\n",
    );
    let launcher = launcher_at(tmp.path(), &root);
    assert_eq!(
        launcher.mode(),
        &LimitMode::CgroupV2 {
            parent: root.join("unified/meridian")
        }
    );
}

#[test]
fn v2_without_memory_and_no_v1_falls_back_to_rlimits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("cg");
    write(&root.join("cgroup.controllers"), "cpu io pids\n");
    write(&root.join("cgroup.subtree_control"), "");
    let launcher = launcher_at(tmp.path(), &root);
    assert_eq!(launcher.mode(), &LimitMode::Rlimits);
    assert_eq!(
        launcher.mode().status(),
        "rlimits only: CPU not limited, memory via RLIMIT_AS, processes via RLIMIT_NPROC"
    );
    // Nothing is prepared in a hierarchy that is not used.
    assert!(!root.join("meridian").exists());
}

#[test]
fn cgroups_that_cannot_take_a_child_group_are_not_used() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("hybrid");
    fake_hybrid(&root);
    // The memory hierarchy refuses the parent group.
    write(&root.join("memory/meridian"), "not a directory");
    assert_eq!(launcher_at(tmp.path(), &root).mode(), &LimitMode::Rlimits);

    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    assert_eq!(launcher_at(tmp.path(), &empty).mode(), &LimitMode::Rlimits);
    let missing = tmp.path().join("missing");
    assert_eq!(
        launcher_at(tmp.path(), &missing).mode(),
        &LimitMode::Rlimits
    );
}

fn waiting_spec(tmp: &Path, name: &str) -> (ProcessSpec, PathBuf) {
    let go = tmp.join(format!("go-{name}"));
    let script = format!("while [ ! -e '{}' ]; do sleep 0.02; done", go.display());
    let mut spec = shell_spec(tmp, name, &script);
    spec.cpu_millis = 1500;
    spec.memory_bytes = 64 * MIB;
    (spec, go)
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test]
async fn v2_job_groups_get_the_limits_and_the_process_before_it_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("cg");
    fake_v2(&root);
    let launcher = launcher_at(tmp.path(), &root);
    let (spec, go) = waiting_spec(tmp.path(), "v2");
    let group = root.join("meridian").join(format!("{}-1", spec.job_id));
    // Optional controls that a real kernel offers.
    write(&group.join("memory.swap.max"), "max\n");
    write(&group.join("memory.oom.group"), "0\n");
    let job = launcher.launch(&spec).expect("launch");
    assert_eq!(job.handle().cgroups, vec![group.clone()]);
    assert_eq!(
        fs::read_to_string(group.join("cpu.max")).expect("cpu.max"),
        "150000 100000"
    );
    assert_eq!(
        fs::read_to_string(group.join("memory.max")).expect("memory.max"),
        (64 * MIB).to_string()
    );
    assert_eq!(
        fs::read_to_string(group.join("memory.swap.max")).expect("swap"),
        "0"
    );
    assert_eq!(
        fs::read_to_string(group.join("memory.oom.group")).expect("oom"),
        "1"
    );
    // The job's first process wrote itself in ("0": the writer) before exec, so it is there as soon as
    // launch returns; the shim that records the exit status stays outside.
    assert_eq!(
        fs::read_to_string(group.join("cgroup.procs")).expect("procs"),
        "0"
    );
    touch(&go);
    assert!(job.wait().await.succeeded());

    // A group left behind with old limits (an agent died before removing it) loses them when reused by
    // an attempt without limits.
    let mut unlimited = shell_spec(tmp.path(), "v2-free", "true");
    unlimited.job_id = spec.job_id.clone();
    let job = launcher.launch(&unlimited).expect("launch");
    assert_eq!(
        fs::read_to_string(group.join("cpu.max")).expect("cpu.max"),
        "max 100000"
    );
    assert_eq!(
        fs::read_to_string(group.join("memory.max")).expect("memory.max"),
        "max"
    );
    assert_eq!(
        fs::read_to_string(group.join("memory.swap.max")).expect("swap"),
        "max"
    );
    assert!(job.wait().await.succeeded());
}

#[tokio::test]
async fn v1_job_groups_get_quota_period_and_memory_limits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("hybrid");
    fake_hybrid(&root);
    let launcher = launcher_at(tmp.path(), &root);
    let (spec, go) = waiting_spec(tmp.path(), "v1");
    let name = format!("{}-1", spec.job_id);
    let memory = root.join("memory/meridian").join(&name);
    write(&memory.join("memory.memsw.limit_in_bytes"), "-1\n");
    let job = launcher.launch(&spec).expect("launch");
    let cpu = root.join("cpu/meridian").join(&name);
    assert_eq!(job.handle().cgroups, vec![cpu.clone(), memory.clone()]);
    let read = |p: PathBuf| fs::read_to_string(p).expect("control file");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "150000");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(
        read(memory.join("memory.limit_in_bytes")),
        (64 * MIB).to_string()
    );
    assert_eq!(
        read(memory.join("memory.memsw.limit_in_bytes")),
        (64 * MIB).to_string()
    );
    for group in [&cpu, &memory] {
        assert_eq!(
            fs::read_to_string(group.join("cgroup.procs")).expect("procs"),
            "0"
        );
    }
    touch(&go);
    assert!(job.wait().await.succeeded());
}

#[tokio::test]
async fn rlimits_stop_a_job_that_allocates_too_much() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    assert_eq!(launcher.mode(), &LimitMode::Rlimits);
    let mut hog = shell_spec(tmp.path(), "rlimit-hog", MEMORY_HOG);
    hog.memory_bytes = 128 * MIB;
    let report = launcher.launch(&hog).expect("launch").wait().await;
    assert!(!report.succeeded(), "{report:?}");
    assert!(!read_all(&hog.log.dir, LogStream::Stderr).is_empty());

    let mut sip = shell_spec(tmp.path(), "rlimit-sip", MEMORY_SIP);
    sip.memory_bytes = 128 * MIB;
    let report = launcher.launch(&sip).expect("launch").wait().await;
    assert!(report.succeeded(), "{report:?}");

    // The same hog without a limit is fine: the failure above was the limit's doing.
    let unlimited = shell_spec(tmp.path(), "rlimit-free", MEMORY_HOG);
    let report = launcher.launch(&unlimited).expect("launch").wait().await;
    assert!(report.succeeded(), "{report:?}");
}

/// Whether this test process can create groups in the host's hierarchy that offer cpu and memory: a v2
/// mount listing both controllers, or the v1 `cpu` and `memory` mounts. Decided without the launcher, so
/// that a detection that wrongly falls back to rlimits fails the real-cgroup tests instead of skipping them.
fn host_cgroups_writable() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    let can_create_in = |dir: PathBuf| {
        let probe = dir.join(format!("meridian-test-probe-{}", exec_common::job_id("p")));
        fs::create_dir(&probe).is_ok() && fs::remove_dir(&probe).is_ok()
    };
    let v2 = fs::read_to_string(root.join("cgroup.controllers")).is_ok_and(|c| {
        let words: Vec<&str> = c.split_whitespace().collect();
        words.contains(&"cpu") && words.contains(&"memory")
    });
    if v2 {
        return can_create_in(root.to_path_buf());
    }
    root.join("cpu/cpu.cfs_quota_us").is_file()
        && root.join("memory/memory.limit_in_bytes").is_file()
        && can_create_in(root.join("cpu"))
        && can_create_in(root.join("memory"))
}

/// This machine's own cgroup hierarchy, when the tests run with the rights to use it.
fn real_launcher(tmp: &Path) -> Option<Launcher> {
    let launcher = Launcher::new(LauncherOptions {
        data_dir: tmp.join("data"),
        cgroup_root: None,
        sandbox: None,
        defaults: agent::exec::JobDefaults {
            memory_bytes: 0,
            pids_max: 0,
        },
    })
    .expect("launcher");
    if !host_cgroups_writable() {
        // Not root or no writable hierarchy: the rlimit tests cover this host.
        return None;
    }
    assert_ne!(
        launcher.mode(),
        &LimitMode::Rlimits,
        "the host's cgroups are writable but the launcher fell back to rlimits"
    );
    Some(launcher)
}

#[tokio::test]
async fn real_cgroups_enforce_memory_and_are_removed_afterwards() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = real_launcher(tmp.path()) else {
        return;
    };
    let (mut spec, go) = waiting_spec(tmp.path(), "real-cg");
    spec.memory_bytes = 64 * MIB;
    let pid_file = tmp.path().join("real-cg.pid");
    spec.args[1] = format!("echo $$ > '{}'; {}", pid_file.display(), spec.args[1]);
    let job = launcher.launch(&spec).expect("launch");
    let groups = job.handle().cgroups.clone();
    assert!(!groups.is_empty());
    let mut command_pid = None;
    exec_common::eventually("the command's pid", || {
        command_pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        command_pid.is_some()
    })
    .await;
    let command_pid = command_pid.expect("pid");
    for group in &groups {
        let members = procs(group);
        assert!(
            members.contains(&command_pid),
            "{}: {members:?}",
            group.display()
        );
        assert!(
            !members.contains(&job.pid()),
            "the shim stays outside {}",
            group.display()
        );
    }
    touch(&go);
    assert!(job.wait().await.succeeded());
    for group in &groups {
        assert!(!group.exists(), "{} left behind", group.display());
    }

    let mut hog = shell_spec(tmp.path(), "real-hog", MEMORY_HOG);
    hog.memory_bytes = 64 * MIB;
    let report = launcher.launch(&hog).expect("launch").wait().await;
    assert!(!report.succeeded(), "{report:?}");
    // The kernel's OOM killer ends the allocating process.
    assert_eq!(report.signal, Some(9), "{report:?}");

    let mut sip = shell_spec(tmp.path(), "real-sip", MEMORY_SIP);
    sip.memory_bytes = 64 * MIB;
    let report = launcher.launch(&sip).expect("launch").wait().await;
    assert!(report.succeeded(), "{report:?}");
}

#[tokio::test]
async fn real_cgroups_throttle_cpu() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = real_launcher(tmp.path()) else {
        return;
    };
    // Two seconds of a busy loop with a tenth of a core: about 0.2 s of CPU, never the 2 s it would take.
    let mut spec = shell_spec(
        tmp.path(),
        "real-cpu",
        "timeout --foreground 2 sh -c 'while :; do :; done'; exit 0",
    );
    spec.cpu_millis = 100;
    let job = launcher.launch(&spec).expect("launch");
    let report = job.wait().await;
    assert!(report.succeeded(), "{report:?}");
    let cpu = report.cpu_seconds.expect("cpu time");
    assert!(report.wall_seconds >= 2.0, "{report:?}");
    assert!(cpu < 0.7, "a tenth of a core used {cpu} s of CPU in 2 s");
    assert!(cpu > 0.0);
}

#[tokio::test]
async fn cancel_reaches_processes_that_left_the_group_through_the_cgroup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = real_launcher(tmp.path()) else {
        return;
    };
    // `setsid` puts the sleeper in a new session and group, out of reach of a group signal.
    let script = "setsid sh -c 'echo escaped=$$; exec sleep 60' & wait";
    let spec = shell_spec(tmp.path(), "escape", script);
    let job = launcher.launch(&spec).expect("launch");
    eventually("the escaped process to start", || {
        read_all(&spec.log.dir, LogStream::Stdout).contains("escaped=")
    })
    .await;
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    let escaped: i32 = exec_common::field(&out, "escaped")
        .and_then(|p| p.parse().ok())
        .expect("pid");
    assert!(exec_common::alive(escaped));
    let report = job.cancel(Duration::from_millis(200)).await;
    assert!(report.cancelled);
    eventually("the escaped process to end", || {
        !exec_common::alive(escaped)
    })
    .await;
}
