//! Running a job's process on this node: process groups, resource limits, GPU pinning, captured logs,
//! cancellation and re-adoption after an agent restart.
//!
//! This module owns the operating-system side of a job attempt and nothing else: it never talks to a
//! coordinator, never decides *whether* a job should run, and never kills a process it cannot prove is
//! its own. It must never let a job inherit the agent's GPU assignment or secrets from the agent's
//! environment, and never let a job see or write anything of the node beyond what [`sandbox`] lists.
//!
//! # API
//!
//! ```text
//! Launcher::new(LauncherOptions::new(data_dir)) -> Result<Launcher, ExecError>   // sandboxed by default
//! Launcher::isolation(&self) -> &Isolation                 // what the node could not provide, if anything
//! Launcher::mode(&self) -> &LimitMode                      // LimitMode::status() for the node status
//! Launcher::launch(&self, &ProcessSpec) -> Result<RunningJob, ExecError>   // inside a Tokio runtime
//! Launcher::launch_replica(&self, &ProcessSpec, &Replica) -> Result<RunningJob, ExecError>
//! Launcher::adopt(&self, &ProcessHandle) -> Option<RunningJob>             // after an agent restart
//! Launcher::state_dir(&self, job_id, attempt, replica) -> PathBuf
//! Launcher::jobs_dir(&self) -> PathBuf                    // <data_dir>/jobs, parent of every job's directory
//!
//! Replica { index, count, hosts }   // which process of a gang job; Replica::single() for a plain job
//!
//! RunningJob::handle(&self) -> &ProcessHandle   // persist it (serde) to adopt the job later
//! RunningJob::{pid, pgid, start_time, is_adopted}
//! RunningJob::wait(&self).await -> ExitReport                // ExitReport::succeeded()
//! RunningJob::cancel(&self, grace).await -> ExitReport   // SIGTERM to the group, SIGKILL after `grace`
//! RunningJob::try_report(&self) -> Option<ExitReport>
//! RunningJob::detach(self) -> ProcessHandle     // stop supervising; the process keeps running
//!
//! LogOptions::new(dir)                                   // default rotation: 16 MiB, 4 kept
//! read_logs(dir, LogStream, offset, max) -> Result<LogChunk, ExecError>   // blocking file reads
//! follow_logs(dir, LogStream, offset, poll) -> impl Stream<Item = Result<LogChunk, ExecError>>
//! read_records(dir, &RecordsQuery) -> Result<RecordsChunk, ExecError>   // both streams in read order,
//!                                                  // or one, with times; from an offset, a time, the last lines
//!
//! exec_in_job(&JobEntry, &ExecInput) -> Result<ExecOutput, EnterError>   // blocking; see `enter`
//! open_terminal(&JobEntry, &[String], TerminalSize, term, timeout) -> Result<JobTerminal, EnterError>
//!                                     // blocking, inside a Tokio runtime (spawn_blocking); see `terminal`
//! JobTerminal::read(&self, &mut [u8]).await -> io::Result<usize>   // 0: the terminal closed; cancel-safe
//! JobTerminal::write_all(&self, &[u8]).await -> io::Result<()>     // beside `read`
//! JobTerminal::resize(&self, TerminalSize) -> io::Result<()>
//! JobTerminal::wait(&self).await -> Result<TerminalExit, EnterError>   // exit code / signal / timed out
//! JobTerminal::kill(&self)                   // ends it now; dropping it does too
//! valid_term(&str) -> bool                   // a TERM value the agent accepts; DEFAULT_TERM = "xterm"
//! read_job_file(workdir, uid, path, offset, max) -> Result<FileChunk, JobFileError>   // blocking
//! ```
//!
//! # How a job runs
//!
//! Every process gets a state directory holding `work/` (the default working directory), the two FIFOs
//! `stdout.pipe` and `stderr.pipe`, and `exit_status`: `<data_dir>/jobs/<job_id>/<attempt>/` for replica
//! 0 (every single-replica job), `<data_dir>/jobs/<job_id>/<attempt>-r<replica>/` for the other replicas
//! of a gang job, so that several replicas of one attempt on one node share no path (only replica 0's
//! directory is named by the bare attempt number, so no two (attempt, replica) pairs share one). The data
//! directory, `jobs/` and every state directory are `0700`, owned by the agent.
//!
//! The agent forks a *shim* (see [`sandbox`] and its `child` module): it leads a new session (so the
//! job's process group id is its pid), stays outside the job's sandbox and cgroups, ignores termination
//! signals, waits for the job with `waitpid` and writes the status and the CPU time of everything it
//! reaped to `exit_status` — a file the job can neither see nor reach. The shim starts the job's *init*
//! in new mount, pid, IPC and UTS (and, under the `none` network policy, network) namespaces: init joins
//! the job's cgroups, builds the sandbox, pivots into it, becomes the job's unprivileged user with
//! `no_new_privs`, and starts the command as pid 2 in a process group of its own, forwarding termination
//! signals to it (pid 1 of a namespace would otherwise drop them). The command runs with a cleared
//! environment (see [`ProcessSpec::env`]). Without a sandbox (`LauncherOptions::sandbox` is `None`,
//! development only) the same processes run without namespaces, as the agent's user.
//!
//! Resource limits are placed before `exec`: init writes itself into the job's cgroup(s) (`cgroup.procs`)
//! or sets rlimits, so no instruction of the job runs unconstrained. A job that asked for no memory gets
//! [`JobDefaults::memory_bytes`]; every job gets at most [`JobDefaults::pids_max`] processes.
//!
//! # Exit status
//!
//! While the agent that launched it is alive, the shim is its child: the exit is observed through a
//! pidfd (polling `waitid` where pidfds are missing) and reaped with `wait4`, which gives the CPU time and
//! peak RSS of the shim and every process it (or init) waited for. The shim's exit code is the command's;
//! codes 129–192 are the shell's way of saying "killed by signal `code − 128`" and are reported as a
//! signal, as container runtimes do (a command that *exits* with such a code is reported the same way).
//! After the command ends, whatever is left in its process group and cgroup is killed (in a sandbox the
//! end of init already ended its whole pid namespace): a job owns nothing past its end. When a cancel has
//! to SIGKILL the shim, the command's own CPU time is not reaped by it and is missing from the report.
//!
//! # Re-adoption
//!
//! A restarted agent passes the persisted [`ProcessHandle`] to [`Launcher::adopt`]. The process is
//! accepted only if `/proc/<pid>/stat` still shows the same start time (field 22) and process group, so a
//! reused pid is never mistaken for the job. An adopted job is not the agent's child: its end is
//! observed through a pidfd (or by polling `/proc`), and its exit code and CPU time are read from the
//! shim's `exit_status` file (opened without following symlinks); the peak RSS is unknown. Signals to the
//! group are sent only while the group leader is absent or provably ours (a pid number stays reserved while
//! any process uses it as its process group id). The job's user stays taken while an adopted job runs.
//!
//! # Logs
//!
//! stdout and stderr go to FIFOs that the job opened read-write, so a job never sees `SIGPIPE` while the
//! agent is away: once the pipe buffer is full its writes wait until the (re)started agent reads again.
//! The agent copies them into `stdout.log` / `stderr.log` under [`LogOptions::dir`], rotating at
//! [`LogOptions::max_bytes`] into `stdout.log.<start offset>` files and keeping the newest
//! [`LogOptions::keep`] of those. Offsets are logical: the byte position in everything the stream has ever
//! written, stable across rotations and agent restarts. Output still in a pipe when the job ends while no
//! agent reads it (at most the pipe's buffer) is lost.
//!
//! # Limit modes
//!
//! [`LimitMode`] is detected once per [`Launcher`]: cgroup v2 (controllers `cpu` and `memory` available
//! and writable; `<root>/meridian/<group>` with `cpu.max`, `memory.max`, `memory.swap.max`,
//! `memory.oom.group` and `pids.max`), cgroup v1 (`<root>/{cpu,memory,pids}/meridian/<group>` with
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`, `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` and
//! `pids.max`, plus `<root>/unified/meridian/<group>` on hybrid hosts, where the egress filter attaches),
//! or rlimits, which cannot share CPU and bound memory only through the address space (`RLIMIT_AS`, not
//! applied to GPU jobs: CUDA reserves far more address space than it uses) and processes through
//! `RLIMIT_NPROC` (per user, so per job in a sandbox). The group is named
//! `<job>-<attempt>` for replica 0 and `<job>-<attempt>-r<replica>` for the others, like the state
//! directory.

mod enter;
mod entry;
mod job_cgroup;
mod job_file;
mod launcher;
mod limit_mode;
mod log_files;
mod output_index;
mod proc_stat;
mod running_job;
pub mod sandbox;
mod terminal;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use enter::{exec_in_job, EnterError, ExecInput, ExecOutput, JobEntry};
pub use job_file::{list_job_dir, read_job_file, DirEntry, EntryKind, FileChunk, JobFileError};
pub(crate) use launcher::job_environment;
pub use launcher::{Isolation, JobDefaults, Launcher, LauncherOptions};
pub use limit_mode::LimitMode;
pub use log_files::{
    follow_logs, read_logs, LogChunk, LogOptions, LogStream, DEFAULT_LOG_KEEP,
    DEFAULT_LOG_MAX_BYTES,
};
pub use output_index::{read_records, OutputRecord, RecordsChunk, RecordsQuery};
pub use running_job::RunningJob;
pub use sandbox::netfilter::DenyRule;
pub use sandbox::{NetworkPolicy, SandboxOptions};
pub use terminal::{
    open_terminal, valid_term, JobTerminal, TerminalExit, TerminalSize, DEFAULT_TERM,
};

/// Secret values for a job: kept in memory only (never serialized), redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Which process of a gang job a launch is: a job of `count` replicas runs one process per replica,
/// possibly several on one node; (job id, attempt, replica index) names one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// 0-based; below `count`.
    pub index: u32,
    /// The gang's size, at least 1.
    pub count: u32,
    /// The host of each replica's node, in replica order (`hosts[0]` is the usual rendezvous point);
    /// empty when the coordinator sent none, otherwise exactly `count` entries.
    pub hosts: Vec<String>,
}

impl Replica {
    /// The one process of a job that is not a gang (replica 0 of 1, no hosts).
    pub fn single() -> Replica {
        Replica {
            index: 0,
            count: 1,
            hosts: Vec::new(),
        }
    }
}

impl Default for Replica {
    fn default() -> Self {
        Replica::single()
    }
}

/// What to run for one attempt of a job, as the scheduler assigned it to this node. Which replica of a
/// gang job it is travels beside it ([`Launcher::launch_replica`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// The job's id: 1–128 characters of `[A-Za-z0-9._-]`, not starting with `.` (it names directories).
    pub job_id: String,
    /// The attempt number; each attempt gets its own state directory and cgroup.
    pub attempt: u32,
    /// The program: a path (relative paths are taken from the working directory) or a name looked up in
    /// the job's `PATH`.
    pub command: String,
    pub args: Vec<String>,
    /// The job's environment on top of a minimal base taken from the agent (`PATH`, `HOME`, `LANG`,
    /// `LC_ALL`, `TZ`, `USER`, `LOGNAME`, `TMPDIR`); nothing else of the agent's environment is
    /// inherited. `MERIDIAN_JOB_ID`, `MERIDIAN_ATTEMPT`, `MERIDIAN_REPLICA` (0-based index),
    /// `MERIDIAN_REPLICAS` (gang size, at least 1), `MERIDIAN_REPLICA_HOSTS` (the replicas' hosts,
    /// comma-separated in replica order; empty when unknown), `CUDA_VISIBLE_DEVICES` and
    /// `NVIDIA_VISIBLE_DEVICES` are always set by the launcher and cannot be overridden here.
    pub env: BTreeMap<String, String>,
    /// An existing directory to run in; `None` gives the attempt a fresh `work/` directory in its state
    /// directory.
    pub working_dir: Option<PathBuf>,
    /// CPU share in thousandths of a core; 0 means no CPU limit.
    pub cpu_millis: u64,
    /// Memory limit in bytes; 0 means no memory limit.
    pub memory_bytes: u64,
    /// UUIDs of the GPUs assigned to this attempt (e.g. `GPU-5b1c…` or `MIG-…`); empty for a CPU job.
    /// A sandboxed job sees only these GPUs' device nodes.
    pub gpu_uuids: Vec<String>,
    pub log: LogOptions,
    /// The project's network policy (`egress` when absent).
    #[serde(default)]
    pub network: NetworkPolicy,
    /// Secrets by name: files under `/run/secrets/` in a sandboxed job (readable only by its user);
    /// environment variables as well when `secrets_in_env` (always without a sandbox). Never serialized.
    #[serde(skip)]
    pub secrets: SecretValues,
    #[serde(default)]
    pub secrets_in_env: bool,
}

/// Everything needed to find a launched process again after an agent restart. Persist it when the job
/// starts and pass it to [`Launcher::adopt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessHandle {
    pub job_id: String,
    pub attempt: u32,
    /// Which replica of the attempt (0 for a single-replica job, and in handles persisted before gang
    /// jobs existed).
    #[serde(default)]
    pub replica: u32,
    /// Pid of the job's wrapper, which leads the job's process group and session.
    pub pid: i32,
    /// The job's process group id (equal to `pid`).
    pub pgid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot at which the process started.
    pub start_time: u64,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The process's state directory (FIFOs, `exit_status`, default working directory).
    pub state_dir: PathBuf,
    pub log: LogOptions,
    /// The job's cgroup directories (one for v2, one per controller for v1, none for rlimits).
    pub cgroups: Vec<PathBuf>,
    /// The user the job runs as (`None` without a sandbox, and for jobs started by older agents).
    #[serde(default)]
    pub uid: Option<u32>,
}

/// How a job's process ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitReport {
    /// The exit code, when the command exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed the command, when one did. Both are `None` when the status is unknown (an
    /// adopted job whose wrapper was killed before it could record the status).
    pub signal: Option<i32>,
    /// A cancel was requested before the exit was observed.
    pub cancelled: bool,
    /// User + system CPU time of the job's processes that were waited for, when known.
    pub cpu_seconds: Option<f64>,
    /// Largest resident set of any single process of the job, when known (not for adopted jobs).
    pub max_rss_bytes: Option<u64>,
    /// From the start to the observed end.
    pub wall_seconds: f64,
    /// The kernel killed a process of the job at its memory limit (counted by its cgroup; never known in
    /// rlimits mode, where an allocation past the limit fails instead).
    pub oom_killed: bool,
}

impl ExitReport {
    /// Exit code 0 and not cancelled.
    pub fn succeeded(&self) -> bool {
        !self.cancelled && self.exit_code == Some(0)
    }
}

/// Why a job could not be launched or its logs read.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid process spec: {0}")]
    InvalidSpec(String),
    #[error("command not found or not executable: {0}")]
    CommandNotFound(String),
    #[error("working directory {0} is not a directory")]
    WorkingDir(PathBuf),
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spawning the job: {0}")]
    Spawn(std::io::Error),
    #[error("launching needs a Tokio runtime")]
    NoRuntime,
    #[error("setting up the job's sandbox: {0}")]
    Sandbox(String),
}

impl ExecError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ExecError::Io {
            context,
            path,
            source,
        }
    }
}
