//! Starting a job attempt's process: state directory, environment, FIFOs for its output, cgroups and the
//! sandbox, the fork into the shim — and finding an attempt's process again after an agent restart.
//!
//! The launcher never waits for or signals a process itself; [`RunningJob`] does. After the fork only the
//! allocation-free code of [`sandbox::child`](super::sandbox::child) runs.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::unix::pipe;

use super::job_cgroup::{self, GroupLimits, JobGroups};
use super::limit_mode::LimitMode;
use super::log_files::{self, LogStream};
use super::proc_stat;
use super::running_job::{Origin, RunningJob};
use super::sandbox::child::{self, Failure, Launch};
use super::sandbox::netfilter;
use super::sandbox::{
    self, JobView, NetworkPolicy, Sandbox, SandboxOptions, UidLease, UidPool, JOB_USER, SECRETS_DIR,
};
use super::{ExecError, ProcessHandle, ProcessSpec, Replica};

const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// `PATH` of a job when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The only variables a job inherits from the agent's environment.
const INHERITED_ENV: [&str; 8] = [
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR",
];
/// The shim's record of the job's status, in the attempt's state directory (out of the job's reach).
pub(crate) const EXIT_STATUS_FILE: &str = "exit_status";
const MAX_JOB_ID_LEN: usize = 128;
/// Longest host name accepted in a replica's host list (DNS names stop at 253).
const MAX_HOST_LEN: usize = 253;
/// How long a launch may take to reach the job's `exec` before it is given up.
const LAUNCH_DEADLINE: Duration = Duration::from_secs(30);

/// Limits every job gets whatever it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDefaults {
    /// The memory limit of a job that asked for none, in bytes (0: none).
    pub memory_bytes: u64,
    /// The most processes and threads one job may have (0: no limit).
    pub pids_max: u64,
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            memory_bytes: 4 << 30,
            pids_max: 4096,
        }
    }
}

/// How to build a [`Launcher`].
#[derive(Debug, Clone)]
pub struct LauncherOptions {
    /// The agent's data directory; processes live in `<data_dir>/jobs/<job_id>/<attempt>/` (replica 0)
    /// or `<data_dir>/jobs/<job_id>/<attempt>-r<replica>/` (the other replicas of a gang job).
    pub data_dir: PathBuf,
    /// Where cgroup hierarchies are mounted; `None` means `/sys/fs/cgroup`.
    pub cgroup_root: Option<PathBuf>,
    /// How jobs are isolated; `None` runs them as the agent's own user without any isolation — for
    /// development only, and said loudly in the log.
    pub sandbox: Option<SandboxOptions>,
    pub defaults: JobDefaults,
}

impl LauncherOptions {
    /// Sandboxed jobs with the default options.
    pub fn new(data_dir: impl Into<PathBuf>) -> LauncherOptions {
        LauncherOptions {
            data_dir: data_dir.into(),
            cgroup_root: None,
            sandbox: Some(SandboxOptions::default()),
            defaults: JobDefaults::default(),
        }
    }
}

/// What isolation this node can give jobs, found when the launcher is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// Jobs are meant to run sandboxed (`false`: the operator turned the sandbox off).
    pub sandboxed: bool,
    /// What is missing for the sandbox, each a sentence; empty when everything works.
    pub problems: Vec<String>,
}

impl Isolation {
    /// Every job gets the full sandbox.
    pub fn complete(&self) -> bool {
        self.sandboxed && self.problems.is_empty()
    }

    /// A line for the node status.
    pub fn status(&self) -> String {
        match (self.sandboxed, self.problems.is_empty()) {
            (false, _) => "none: jobs run as the agent's user (insecure, development only)".into(),
            (true, true) => "sandbox: own user, mount/pid/ipc/uts namespaces, egress filter".into(),
            (true, false) => format!("sandbox incomplete: {}", self.problems.join("; ")),
        }
    }
}

#[derive(Debug)]
struct SandboxState {
    options: SandboxOptions,
    uids: Arc<UidPool>,
    /// Why `egress` jobs cannot be filtered here, if they cannot.
    egress_problem: Option<String>,
}

/// Starts job attempts on this node with the limit mode detected once at construction.
#[derive(Debug, Clone)]
pub struct Launcher {
    data_dir: PathBuf,
    mode: LimitMode,
    defaults: JobDefaults,
    sandbox: Option<Arc<SandboxState>>,
    isolation: Isolation,
}

impl Launcher {
    /// Creates `<data_dir>/jobs` (mode `0700`, as is the data directory) and detects the [`LimitMode`] and
    /// what isolation the node offers ([`Launcher::isolation`]).
    pub fn new(options: LauncherOptions) -> Result<Self, ExecError> {
        let jobs = options.data_dir.join("jobs");
        private_dir(&jobs)?;
        restrict(&options.data_dir)?;
        restrict(&jobs)?;
        let root = options
            .cgroup_root
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CGROUP_ROOT));
        let mode = LimitMode::detect(&root);
        tracing::info!(mode = mode.status(), "job resource limits");
        let (sandbox, isolation) = match options.sandbox {
            None => {
                tracing::error!(
                    "JOB SANDBOX DISABLED: jobs run as the agent's own user and can read its keys and \
                     every other job's data; use this only for development"
                );
                (
                    None,
                    Isolation {
                        sandboxed: false,
                        problems: Vec::new(),
                    },
                )
            }
            Some(mut sandbox_options) => {
                sandbox_options.hidden_paths.push(options.data_dir.clone());
                let (problems, egress_problem) = probe_isolation(&mode);
                for problem in &problems {
                    tracing::warn!(%problem, "job sandbox incomplete");
                }
                let uids = UidPool::new(sandbox_options.first_uid, sandbox_options.uid_count);
                (
                    Some(Arc::new(SandboxState {
                        options: sandbox_options,
                        uids,
                        egress_problem,
                    })),
                    Isolation {
                        sandboxed: true,
                        problems,
                    },
                )
            }
        };
        Ok(Launcher {
            data_dir: options.data_dir,
            mode,
            defaults: options.defaults,
            sandbox,
            isolation,
        })
    }

    /// How jobs are limited on this node.
    pub fn mode(&self) -> &LimitMode {
        &self.mode
    }

    /// How jobs are isolated on this node.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// `<data_dir>/jobs`: every state directory is a grandchild of it.
    pub fn jobs_dir(&self) -> PathBuf {
        self.data_dir.join("jobs")
    }

    /// The state directory of one replica of an attempt: `<attempt>` for replica 0 (as for every
    /// single-replica job), `<attempt>-r<replica>` for the others.
    pub fn state_dir(&self, job_id: &str, attempt: u32, replica: u32) -> PathBuf {
        self.data_dir
            .join("jobs")
            .join(job_id)
            .join(run_name(&attempt.to_string(), replica))
    }

    /// Starts the attempt of a job that is not a gang (replica 0 of 1); see [`Launcher::launch_replica`].
    pub fn launch(&self, spec: &ProcessSpec) -> Result<RunningJob, ExecError> {
        self.launch_replica(spec, &Replica::single())
    }

    /// Starts one replica of the attempt. Must be called inside a Tokio runtime: the returned job's
    /// supervision and log copying run as tasks on it. When this returns, the job's command has been
    /// `exec`ed inside its sandbox, limited and in its own session. Replicas of one attempt are independent
    /// processes: each has its own state directory, cgroup, user and process group (its logs go where its
    /// spec's [`LogOptions`] says).
    ///
    /// [`LogOptions`]: super::LogOptions
    pub fn launch_replica(
        &self,
        spec: &ProcessSpec,
        replica: &Replica,
    ) -> Result<RunningJob, ExecError> {
        validate(spec, replica)?;
        tokio::runtime::Handle::try_current().map_err(|_| ExecError::NoRuntime)?;
        let lease = match &self.sandbox {
            Some(state) => Some(state.uids.acquire().ok_or_else(|| {
                ExecError::Sandbox(format!(
                    "all {} job users of this node are taken",
                    state.options.uid_count
                ))
            })?),
            None => None,
        };
        let state_dir = self.state_dir(&spec.job_id, spec.attempt, replica.index);
        private_dir(&state_dir)?;
        let exit_path = state_dir.join(EXIT_STATUS_FILE);
        remove_if_present(&exit_path)?;
        let exit_file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&exit_path)
            .map_err(ExecError::io("creating", &exit_path))?;
        let working_dir = self.working_dir(spec, &state_dir, lease.as_ref())?;
        let env = job_environment(
            spec,
            replica,
            |key| std::env::var(key).ok(),
            self.sandbox.as_ref().map(|_| working_dir.as_path()),
        );
        let path_var = env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
        resolve_command(&spec.command, path_var, &working_dir)?;
        let programs = exec_candidates(&spec.command, path_var, &working_dir);

        private_dir(&spec.log.dir)?;
        let mut child_ends = Vec::new();
        let mut fifos = Vec::new();
        for stream in LogStream::ALL {
            log_files::clear_closed_marker(&spec.log.dir, stream)
                .map_err(ExecError::io("clearing log state in", &spec.log.dir))?;
            let path = state_dir.join(stream.pipe_name());
            make_fifo(&path)?;
            // Read-write: the job itself keeps the FIFO readable, so it never gets SIGPIPE while the
            // agent is away. Opening a FIFO read-write never blocks on Linux.
            let child_end = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(ExecError::io("opening", &path))?;
            let receiver = pipe::OpenOptions::new()
                .open_receiver(&path)
                .map_err(ExecError::io("opening", &path))?;
            child_ends.push(child_end);
            fifos.push((stream, Some(receiver)));
        }

        let memory_bytes = match spec.memory_bytes {
            0 => self.defaults.memory_bytes,
            asked => asked,
        };
        let pids_max = (self.defaults.pids_max > 0).then_some(self.defaults.pids_max);
        let egress = self.sandbox.is_some() && spec.network == NetworkPolicy::Egress;
        let groups = job_cgroup::create(
            &self.mode,
            &run_name(&format!("{}-{}", spec.job_id, spec.attempt), replica.index),
            GroupLimits {
                cpu_millis: spec.cpu_millis,
                memory_bytes,
                pids_max,
            },
            egress,
        )?;
        let prepared = self.prepare(
            spec,
            &state_dir,
            &working_dir,
            &env,
            programs,
            &groups,
            lease.as_ref(),
            memory_bytes,
        );
        let spawned = prepared.and_then(|prepared| {
            spawn(
                prepared,
                SpawnFds {
                    exit_file,
                    child_ends,
                    procs_files: job_cgroup::open_procs_files(&groups.dirs)?,
                },
            )
        });
        let (pid, started) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                for dir in &groups.dirs {
                    let _ = fs::remove_dir(dir);
                }
                return Err(e);
            }
        };
        let started_unix_ms = unix_ms(SystemTime::now());
        let Some(stat) = proc_stat::read_stat(pid) else {
            // Our own unreaped child always has a /proc entry; this is a kernel without procfs.
            // SAFETY: kill/waitpid on our own child have no memory-safety preconditions.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(ExecError::Spawn(io::Error::other(
                "the job's /proc/<pid>/stat is unreadable",
            )));
        };
        let handle = ProcessHandle {
            job_id: spec.job_id.clone(),
            attempt: spec.attempt,
            replica: replica.index,
            pid,
            pgid: pid,
            start_time: stat.start_time,
            started_unix_ms,
            state_dir,
            log: spec.log.clone(),
            cgroups: groups.dirs,
            uid: lease.as_ref().map(|l| l.uid),
        };
        tracing::info!(job = %spec.job_id, attempt = spec.attempt, replica = replica.index, pid, uid = ?handle.uid, mode = self.mode.status(), "job started");
        Ok(RunningJob::start(
            handle,
            fifos,
            Origin::Child { started },
            lease,
        ))
    }

    /// The job's working directory: a fresh `work/` in the state directory (owned by the job's user,
    /// `0700`), or the spec's directory — which a sandboxed job may name only inside one of the node's
    /// shared paths.
    fn working_dir(
        &self,
        spec: &ProcessSpec,
        state_dir: &Path,
        lease: Option<&UidLease>,
    ) -> Result<PathBuf, ExecError> {
        match &spec.working_dir {
            Some(dir) if !dir.is_dir() => Err(ExecError::WorkingDir(dir.clone())),
            Some(dir) => {
                let Some(state) = &self.sandbox else {
                    return Ok(dir.clone());
                };
                let real = fs::canonicalize(dir).map_err(ExecError::io("resolving", dir))?;
                let shared = state
                    .options
                    .shared_paths
                    .iter()
                    .any(|p| fs::canonicalize(p).is_ok_and(|p| real.starts_with(&p)));
                if !shared {
                    return Err(ExecError::InvalidSpec(format!(
                        "working directory {} is not inside a shared path of this node",
                        dir.display()
                    )));
                }
                Ok(real)
            }
            None => {
                let dir = state_dir.join("work");
                private_dir(&dir)?;
                if let Some(lease) = lease {
                    std::os::unix::fs::chown(&dir, Some(lease.uid), Some(lease.uid))
                        .map_err(ExecError::io("handing over", &dir))?;
                }
                Ok(dir)
            }
        }
    }

    /// Everything the forked processes need, built before the fork.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        spec: &ProcessSpec,
        state_dir: &Path,
        working_dir: &Path,
        env: &BTreeMap<String, String>,
        programs: Vec<PathBuf>,
        groups: &JobGroups,
        lease: Option<&UidLease>,
        memory_bytes: u64,
    ) -> Result<Prepared, ExecError> {
        let mut rlimits = Vec::new();
        let cgroup_memory = !matches!(self.mode, LimitMode::Rlimits);
        if !cgroup_memory && memory_bytes > 0 {
            if spec.gpu_uuids.is_empty() {
                rlimits.push((libc::RLIMIT_AS, memory_bytes));
            } else {
                tracing::warn!(job = %spec.job_id, "rlimits mode: memory of a GPU job is not limited");
            }
        }
        let cgroup_pids = match &self.mode {
            LimitMode::CgroupV2 { .. } => true,
            LimitMode::CgroupV1 { pids_parent, .. } => pids_parent.is_some(),
            LimitMode::Rlimits => false,
        };
        if !cgroup_pids && self.defaults.pids_max > 0 && lease.is_some() {
            // Counted per user: with a user of its own, the job's processes and nobody else's.
            rlimits.push((libc::RLIMIT_NPROC, self.defaults.pids_max));
        }
        let (plan, namespaces, credentials) = match (&self.sandbox, lease) {
            (Some(state), Some(lease)) => {
                if spec.network == NetworkPolicy::Egress {
                    if let Some(problem) = &state.egress_problem {
                        return Err(ExecError::Sandbox(format!(
                            "egress filtering is unavailable on this node: {problem}"
                        )));
                    }
                    let Some(unified) = &groups.unified else {
                        return Err(ExecError::Sandbox(
                            "egress filtering needs a cgroup v2 group for the job".into(),
                        ));
                    };
                    let mut rules = netfilter::metadata_rules();
                    rules.extend(state.options.deny.iter().copied());
                    netfilter::attach_to(unified, &rules).map_err(|e| {
                        ExecError::Sandbox(format!("attaching the egress filter: {e}"))
                    })?;
                }
                let plan = Sandbox {
                    options: &state.options,
                }
                .plan(&JobView {
                    state_dir,
                    workdir: working_dir,
                    uid: lease.uid,
                    gid: lease.uid,
                    gpu_uuids: &spec.gpu_uuids,
                    secrets: &spec.secrets.0,
                })?;
                let mut namespaces = libc::CLONE_NEWNS
                    | libc::CLONE_NEWPID
                    | libc::CLONE_NEWIPC
                    | libc::CLONE_NEWUTS;
                if spec.network == NetworkPolicy::None {
                    namespaces |= libc::CLONE_NEWNET;
                }
                (Some(plan), namespaces, Some((lease.uid, lease.uid)))
            }
            _ => (None, 0, None),
        };
        let mut argv_storage = vec![c_text(&spec.command)?];
        for arg in &spec.args {
            argv_storage.push(c_text(arg)?);
        }
        let env_storage = env
            .iter()
            .map(|(k, v)| c_text(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let programs = programs
            .iter()
            .map(|p| sandbox::c_path(p))
            .collect::<Result<Vec<_>, _>>()?;
        let loopback_up = plan.is_some() && spec.network == NetworkPolicy::None;
        let (steps, descriptions, new_root) = match plan {
            Some(plan) => (plan.steps, plan.descriptions, Some(plan.new_root)),
            None => (Vec::new(), Vec::new(), None),
        };
        Ok(Prepared {
            namespaces,
            steps,
            descriptions,
            new_root,
            loopback_up,
            rlimits,
            credentials,
            workdir: sandbox::c_path(working_dir)?,
            programs,
            argv_storage,
            env_storage,
        })
    }

    /// Takes over an attempt launched by an earlier agent process. `None` unless the process is still
    /// there — same pid, same start time, same process group — and a Tokio runtime is running. A process
    /// that has already ended but not yet been reaped is adopted and reports at once.
    pub fn adopt(&self, handle: &ProcessHandle) -> Option<RunningJob> {
        if handle.pid <= 1 || handle.pgid <= 1 {
            return None;
        }
        let stat = proc_stat::read_stat(handle.pid)?;
        if stat.start_time != handle.start_time || stat.pgrp != handle.pgid {
            tracing::info!(job = %handle.job_id, pid = handle.pid, "pid now belongs to another process; not adopted");
            return None;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(job = %handle.job_id, "adopting a job needs a Tokio runtime");
            return None;
        }
        let lease = match (&self.sandbox, handle.uid) {
            (Some(state), Some(uid)) => state.uids.adopt(uid),
            _ => None,
        };
        let mut fifos = Vec::new();
        for stream in LogStream::ALL {
            if let Err(e) = log_files::clear_closed_marker(&handle.log.dir, stream) {
                tracing::warn!(job = %handle.job_id, error = %e, "clearing log state failed");
            }
            let path = handle.state_dir.join(stream.pipe_name());
            let receiver = pipe::OpenOptions::new()
                .open_receiver(&path)
                .map_err(|e| {
                    tracing::warn!(job = %handle.job_id, path = %path.display(), error = %e, "job output pipe lost");
                })
                .ok();
            fifos.push((stream, receiver));
        }
        tracing::info!(job = %handle.job_id, attempt = handle.attempt, replica = handle.replica, pid = handle.pid, "job adopted");
        Some(RunningJob::start(
            handle.clone(),
            fifos,
            Origin::Adopted,
            lease,
        ))
    }
}

/// What the node lacks for the full sandbox (each a sentence), and separately why `egress` jobs could not
/// be filtered.
fn probe_isolation(mode: &LimitMode) -> (Vec<String>, Option<String>) {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        problems.push(format!(
            "jobs run as users of their own, which needs the agent to run as root (it runs as uid {euid})"
        ));
    } else if let Err(e) = probe_namespaces() {
        problems.push(format!("namespaces cannot be created: {e}"));
    }
    if matches!(mode, LimitMode::Rlimits) {
        problems.push("no writable cgroup hierarchy: limits fall back to rlimits".into());
    }
    let has_v2_group = match mode {
        LimitMode::CgroupV2 { .. } => true,
        LimitMode::CgroupV1 { unified_parent, .. } => unified_parent.is_some(),
        LimitMode::Rlimits => false,
    };
    let egress_problem = if !has_v2_group {
        Some("no writable cgroup v2 hierarchy to attach the egress filter to".to_string())
    } else if euid != 0 {
        Some("loading the egress filter needs root".to_string())
    } else {
        netfilter::probe().err().map(|e| e.to_string())
    };
    if let Some(p) = &egress_problem {
        problems.push(format!("egress jobs cannot be filtered: {p}"));
    }
    (problems, egress_problem)
}

/// Starts `/bin/true` in every namespace a sandbox uses, to learn whether this host allows them.
fn probe_namespaces() -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("/bin/sh");
    command
        .args(["-c", "exit 0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: unshare(2) is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            let flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWNET;
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = command.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("probe exited with {status}")))
    }
}

/// The C strings and settings of a launch, built before the descriptors are attached.
struct Prepared {
    namespaces: libc::c_int,
    steps: Vec<child::Step>,
    descriptions: Vec<String>,
    new_root: Option<CString>,
    loopback_up: bool,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    credentials: Option<(u32, u32)>,
    workdir: CString,
    programs: Vec<CString>,
    argv_storage: Vec<CString>,
    env_storage: Vec<CString>,
}

/// The descriptors a launch hands to its processes; closed in the agent once the fork is done.
struct SpawnFds {
    exit_file: File,
    child_ends: Vec<File>,
    procs_files: Vec<File>,
}

/// Forks the shim and waits until the job's command has been `exec`ed (or its launch failed).
fn spawn(prepared: Prepared, fds: SpawnFds) -> Result<(i32, Instant), ExecError> {
    let mut ends = fds.child_ends.into_iter();
    let (Some(stdout), Some(stderr)) = (ends.next(), ends.next()) else {
        return Err(ExecError::Spawn(io::Error::other("output pipes missing")));
    };
    let stdin = File::open("/dev/null").map_err(ExecError::io("opening", "/dev/null"))?;
    let (failure_read, failure_write) = failure_pipe()?;
    let Prepared {
        namespaces,
        steps,
        descriptions,
        new_root,
        loopback_up,
        rlimits,
        credentials,
        workdir,
        programs,
        argv_storage,
        env_storage,
    } = prepared;
    let mut argv: Vec<*const libc::c_char> = argv_storage.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env_storage.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let launch = Launch {
        stdin: stdin.as_raw_fd(),
        stdout: stdout.as_raw_fd(),
        stderr: stderr.as_raw_fd(),
        exit_file: fds.exit_file.as_raw_fd(),
        failure_pipe: failure_write.as_raw_fd(),
        cgroup_procs: fds.procs_files.iter().map(AsRawFd::as_raw_fd).collect(),
        namespaces,
        steps,
        new_root,
        loopback_up,
        rlimits,
        credentials,
        workdir,
        programs,
        argv,
        envp,
        argv_storage,
        env_storage,
    };
    let started = Instant::now();
    // SAFETY: fork has no memory-safety preconditions; the child runs only `child::shim`, which makes
    // async-signal-safe system calls on memory prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the child of the fork just made, and `launch` was fully built before it.
        unsafe { child::shim(&launch) }
    }
    if pid < 0 {
        return Err(ExecError::Spawn(io::Error::last_os_error()));
    }
    // The agent's copies go: the FIFOs reach EOF when the job's processes close theirs, and the failure
    // pipe when every process of the launch has exec'ed or ended.
    drop(launch);
    drop((
        stdin,
        stdout,
        stderr,
        fds.exit_file,
        fds.procs_files,
        failure_write,
    ));
    match read_failure(&failure_read) {
        Ok(None) => Ok((pid, started)),
        Ok(Some(failure)) => {
            reap(pid);
            Err(describe_failure(failure, &descriptions))
        }
        Err(e) => {
            // SAFETY: kill/waitpid on our own child have no memory-safety preconditions.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            reap(pid);
            Err(ExecError::Sandbox(format!(
                "waiting for the job to start: {e}"
            )))
        }
    }
}

fn reap(pid: i32) {
    // SAFETY: waiting for our own child has no memory-safety preconditions.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

fn failure_pipe() -> Result<(File, OwnedFd), ExecError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(ExecError::Spawn(io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { Ok((File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// Reads the failure pipe until EOF (the job exec'ed) or a [`Failure`], within [`LAUNCH_DEADLINE`].
fn read_failure(pipe: &File) -> io::Result<Option<Failure>> {
    let deadline = Instant::now() + LAUNCH_DEADLINE;
    let mut buf = [0u8; 8];
    let mut got = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the launch did not finish in time",
            ));
        }
        let mut poll = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready == 0 {
            continue;
        }
        let n = match io::Read::read(&mut &*pipe, &mut buf[got..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(None);
        }
        got += n;
        if got == buf.len() {
            return Ok(Some(Failure::decode(&buf)));
        }
    }
}

fn describe_failure(failure: Failure, descriptions: &[String]) -> ExecError {
    let error = io::Error::from_raw_os_error(failure.errno);
    let what = match failure.step {
        child::PHASE_EXEC if failure.errno == libc::ENOENT => {
            return ExecError::CommandNotFound(
                "the command is not inside the job's sandbox (only system paths and the work \
                 directory are)"
                    .into(),
            )
        }
        child::PHASE_EXEC => "executing the command".to_string(),
        child::PHASE_CLONE_INIT => "creating the job's namespaces".into(),
        child::PHASE_CGROUP => "joining the job's cgroups".into(),
        child::PHASE_PRIVATE_MOUNTS => "making the mounts private".into(),
        child::PHASE_LOOPBACK => "bringing up loopback".into(),
        child::PHASE_PIVOT_ROOT => "entering the new root".into(),
        child::PHASE_ROOT_READ_ONLY => "making the root read-only".into(),
        child::PHASE_RLIMIT => "setting resource limits".into(),
        child::PHASE_CREDENTIALS => "switching to the job's user".into(),
        child::PHASE_NO_NEW_PRIVS => "forbidding new privileges".into(),
        child::PHASE_CLONE_JOB => "starting the job's process".into(),
        child::PHASE_CHDIR => "entering the working directory".into(),
        child::PHASE_SESSION => "starting a session".into(),
        index => descriptions
            .get(index as usize)
            .cloned()
            .unwrap_or_else(|| format!("step {index}")),
    };
    match failure.step {
        child::PHASE_EXEC => {
            ExecError::Spawn(io::Error::new(error.kind(), format!("{what}: {error}")))
        }
        _ => ExecError::Sandbox(format!("{what}: {error}")),
    }
}

fn c_text(text: &str) -> Result<CString, ExecError> {
    CString::new(text)
        .map_err(|_| ExecError::InvalidSpec("text passed to exec contains a NUL byte".into()))
}

/// Creates `dir` (and missing parents) with mode `0700` and makes sure `dir` itself has it.
fn private_dir(dir: &Path) -> Result<(), ExecError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(ExecError::io("creating", dir))?;
    restrict(dir)
}

fn restrict(dir: &Path) -> Result<(), ExecError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(ExecError::io("restricting", dir))
}

fn make_fifo(path: &Path) -> Result<(), ExecError> {
    remove_if_present(path)?;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        ExecError::InvalidSpec(format!("path {} contains a NUL byte", path.display()))
    })?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        return Err(ExecError::io("creating FIFO", path)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), ExecError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ExecError::io("removing", path)(e)),
        _ => Ok(()),
    }
}

/// `base` for replica 0, `base-r<replica>` for the others. Names built from distinct (attempt, replica)
/// pairs never meet: replica 0's ends in the attempt's digits, the others' in `-r<digits>`.
fn run_name(base: &str, replica: u32) -> String {
    if replica == 0 {
        base.to_owned()
    } else {
        format!("{base}-r{replica}")
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Refuses specs that would name unsafe paths or could not be passed to `exec`, and replicas that are
/// not a consistent place in their gang.
fn validate(spec: &ProcessSpec, replica: &Replica) -> Result<(), ExecError> {
    let bad = |m: String| Err(ExecError::InvalidSpec(m));
    let id = &spec.job_id;
    if id.is_empty()
        || id.len() > MAX_JOB_ID_LEN
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad(format!(
            "job id {id:?}: 1-{MAX_JOB_ID_LEN} characters of [A-Za-z0-9._-], not starting with '.'"
        ));
    }
    if spec.command.is_empty() || spec.command.contains('\0') {
        return bad("command must be non-empty and free of NUL bytes".into());
    }
    if spec.args.iter().any(|a| a.contains('\0')) {
        return bad("arguments must be free of NUL bytes".into());
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return bad(format!("environment variable {key:?} is not valid"));
        }
    }
    for uuid in &spec.gpu_uuids {
        if uuid.is_empty() || uuid.contains([',', '\0']) || uuid.contains(char::is_whitespace) {
            return bad(format!("GPU UUID {uuid:?} is not valid"));
        }
    }
    if replica.count == 0 || replica.index >= replica.count {
        return bad(format!(
            "replica {} of a job with {} replica(s)",
            replica.index, replica.count
        ));
    }
    if !replica.hosts.is_empty() && replica.hosts.len() != replica.count as usize {
        return bad(format!(
            "{} replica host(s) for a job with {} replicas",
            replica.hosts.len(),
            replica.count
        ));
    }
    for host in &replica.hosts {
        if host.is_empty()
            || host.len() > MAX_HOST_LEN
            || host.contains([',', '\0'])
            || host.contains(char::is_whitespace)
        {
            return bad(format!(
                "replica host {:?} is not valid",
                host.chars().take(64).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// The job's environment: the allowed part of the agent's (in a sandbox, with the job's own home, user and
/// temporary directory instead), the spec's, the secrets when the spec wants them there, then the
/// launcher's own variables, which always win. `sandbox_home` is the work directory of a sandboxed job.
pub(crate) fn job_environment(
    spec: &ProcessSpec,
    replica: &Replica,
    agent_env: impl Fn(&str) -> Option<String>,
    sandbox_home: Option<&Path>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for key in INHERITED_ENV {
        if let Some(value) = agent_env(key) {
            env.insert(key.to_string(), value);
        }
    }
    env.entry("PATH".to_string())
        .or_insert_with(|| DEFAULT_PATH.to_string());
    if let Some(home) = sandbox_home {
        env.insert("HOME".into(), home.display().to_string());
        env.insert("TMPDIR".into(), "/tmp".into());
        env.insert("USER".into(), JOB_USER.into());
        env.insert("LOGNAME".into(), JOB_USER.into());
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Without a sandbox there is no private place for secret files: the environment is all there is.
    if spec.secrets_in_env || sandbox_home.is_none() {
        env.extend(spec.secrets.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if sandbox_home.is_some() && !spec.secrets.0.is_empty() {
        env.insert("MERIDIAN_SECRETS_DIR".into(), SECRETS_DIR.into());
    }
    let gpus = spec.gpu_uuids.join(",");
    env.insert("CUDA_VISIBLE_DEVICES".into(), gpus.clone());
    env.insert("NVIDIA_VISIBLE_DEVICES".into(), gpus);
    env.insert("MERIDIAN_JOB_ID".into(), spec.job_id.clone());
    env.insert("MERIDIAN_ATTEMPT".into(), spec.attempt.to_string());
    env.insert("MERIDIAN_REPLICA".into(), replica.index.to_string());
    env.insert("MERIDIAN_REPLICAS".into(), replica.count.max(1).to_string());
    env.insert("MERIDIAN_REPLICA_HOSTS".into(), replica.hosts.join(","));
    env
}

/// Where the program may be, in search order: a name with a `/` relative to the working directory, any
/// other name in each `PATH` entry (an empty entry meaning the working directory).
fn exec_candidates(command: &str, path_var: &str, working_dir: &Path) -> Vec<PathBuf> {
    if command.contains('/') {
        vec![working_dir.join(command)]
    } else {
        path_var
            .split(':')
            .map(|dir| working_dir.join(dir).join(command))
            .collect()
    }
}

/// Finds the program the way the job's `exec` will (on the host; a sandbox sees a subset of it).
fn resolve_command(
    command: &str,
    path_var: &str,
    working_dir: &Path,
) -> Result<PathBuf, ExecError> {
    exec_candidates(command, path_var, working_dir)
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| ExecError::CommandNotFound(command.to_string()))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{LogOptions, SecretValues};

    fn spec(job_id: &str) -> ProcessSpec {
        ProcessSpec {
            job_id: job_id.into(),
            attempt: 2,
            command: "true".into(),
            args: vec![],
            env: BTreeMap::new(),
            working_dir: None,
            cpu_millis: 0,
            memory_bytes: 0,
            gpu_uuids: vec![],
            log: LogOptions::new("/tmp/logs"),
            network: NetworkPolicy::Egress,
            secrets: SecretValues::default(),
            secrets_in_env: false,
        }
    }

    #[test]
    fn environment_is_minimal_and_pins_gpus() {
        let mut s = spec("j1");
        s.env.insert("FOO".into(), "bar".into());
        s.env
            .insert("CUDA_VISIBLE_DEVICES".into(), "0,1,2,3".into());
        let agent = |k: &str| match k {
            "HOME" => Some("/home/agent".to_string()),
            "SECRET_TOKEN" | "CUDA_VISIBLE_DEVICES" => Some("leak".to_string()),
            _ => None,
        };
        let env = job_environment(&s, &Replica::single(), agent, None);
        assert_eq!(env.get("FOO").map(String::as_str), Some("bar"));
        assert_eq!(env.get("HOME").map(String::as_str), Some("/home/agent"));
        assert_eq!(env.get("PATH").map(String::as_str), Some(DEFAULT_PATH));
        assert_eq!(
            env.get("CUDA_VISIBLE_DEVICES").map(String::as_str),
            Some("")
        );
        assert_eq!(
            env.get("NVIDIA_VISIBLE_DEVICES").map(String::as_str),
            Some("")
        );
        assert_eq!(env.get("MERIDIAN_JOB_ID").map(String::as_str), Some("j1"));
        assert_eq!(env.get("MERIDIAN_ATTEMPT").map(String::as_str), Some("2"));
        assert!(!env.contains_key("SECRET_TOKEN"));
        assert_eq!(env.get("MERIDIAN_REPLICA").map(String::as_str), Some("0"));
        assert_eq!(env.get("MERIDIAN_REPLICAS").map(String::as_str), Some("1"));
        assert_eq!(
            env.get("MERIDIAN_REPLICA_HOSTS").map(String::as_str),
            Some("")
        );

        s.gpu_uuids = vec!["GPU-aaa".into(), "MIG-bbb".into()];
        let env = job_environment(&s, &Replica::single(), |_| None, None);
        assert_eq!(
            env.get("CUDA_VISIBLE_DEVICES").map(String::as_str),
            Some("GPU-aaa,MIG-bbb")
        );
        assert_eq!(
            env.get("NVIDIA_VISIBLE_DEVICES").map(String::as_str),
            Some("GPU-aaa,MIG-bbb")
        );
    }

    #[test]
    fn a_replica_sees_its_place_in_the_gang_and_cannot_be_told_otherwise() {
        let mut s = spec("gang");
        s.env.insert("MERIDIAN_REPLICA".into(), "7".into());
        s.env.insert("MERIDIAN_REPLICA_HOSTS".into(), "evil".into());
        let replica = Replica {
            index: 2,
            count: 3,
            hosts: vec!["n1.example".into(), "n1.example".into(), "10.0.0.7".into()],
        };
        let env = job_environment(&s, &replica, |_| None, None);
        assert_eq!(env.get("MERIDIAN_REPLICA").map(String::as_str), Some("2"));
        assert_eq!(env.get("MERIDIAN_REPLICAS").map(String::as_str), Some("3"));
        assert_eq!(
            env.get("MERIDIAN_REPLICA_HOSTS").map(String::as_str),
            Some("n1.example,n1.example,10.0.0.7")
        );
        assert!(validate(&s, &replica).is_ok());
    }

    #[test]
    fn replicas_outside_their_gang_or_with_bad_hosts_are_refused() {
        let s = spec("gang");
        let replica = |index, count, hosts: &[&str]| Replica {
            index,
            count,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        assert!(validate(&s, &replica(1, 2, &[])).is_ok());
        assert!(validate(&s, &replica(1, 2, &["a", "b"])).is_ok());
        for bad in [
            replica(0, 0, &[]),
            replica(2, 2, &[]),
            replica(0, 2, &["only-one"]),
            replica(0, 2, &["a", "b", "c"]),
            replica(0, 2, &["a", ""]),
            replica(0, 2, &["a", "b,c"]),
            replica(0, 2, &["a", "b c"]),
        ] {
            assert!(
                matches!(validate(&s, &bad), Err(ExecError::InvalidSpec(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_replica_of_an_attempt_gets_its_own_directory_and_replica_0_keeps_the_plain_one() {
        let launcher = Launcher {
            data_dir: PathBuf::from("/data"),
            mode: LimitMode::Rlimits,
            defaults: JobDefaults::default(),
            sandbox: None,
            isolation: Isolation {
                sandboxed: false,
                problems: Vec::new(),
            },
        };
        assert_eq!(launcher.state_dir("j", 12, 0), Path::new("/data/jobs/j/12"));
        assert_eq!(
            launcher.state_dir("j", 1, 2),
            Path::new("/data/jobs/j/1-r2")
        );
        // Directories and cgroup names of distinct (attempt, replica) pairs never meet.
        let mut dirs = std::collections::BTreeSet::new();
        let mut groups = std::collections::BTreeSet::new();
        for attempt in [1, 2, 12, 21] {
            for replica in [0, 1, 2, 12] {
                assert!(dirs.insert(launcher.state_dir("j", attempt, replica)));
                assert!(groups.insert(run_name(&format!("j-{attempt}"), replica)));
            }
        }
    }

    #[test]
    fn specs_that_would_escape_or_break_exec_are_refused() {
        for id in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(
                matches!(
                    validate(&spec(id), &Replica::single()),
                    Err(ExecError::InvalidSpec(_))
                ),
                "{id:?}"
            );
        }
        assert!(validate(&spec("job-1.retry_2"), &Replica::single()).is_ok());
        let mut s = spec("j");
        s.env.insert("A=B".into(), "x".into());
        assert!(validate(&s, &Replica::single()).is_err());
        let mut s = spec("j");
        s.gpu_uuids = vec!["GPU-1,GPU-2".into()];
        assert!(validate(&s, &Replica::single()).is_err());
        let mut s = spec("j");
        s.args = vec!["a\0b".into()];
        assert!(validate(&s, &Replica::single()).is_err());
    }

    #[test]
    fn commands_are_found_like_the_shell_finds_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path().join("bin");
        fs::create_dir(&bin).expect("mkdir");
        let tool = bin.join("tool");
        fs::write(&tool, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).expect("chmod");
        let plain = bin.join("plain");
        fs::write(&plain, "data").expect("write");
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(
            resolve_command("tool", &path, tmp.path()).expect("found"),
            tool
        );
        assert!(resolve_command("plain", &path, tmp.path()).is_err());
        assert!(resolve_command("missing", &path, tmp.path()).is_err());
        assert_eq!(
            resolve_command("bin/tool", "", tmp.path()).expect("relative"),
            tool
        );
        assert!(resolve_command("/bin/sh", "", tmp.path()).is_ok());
    }
}
