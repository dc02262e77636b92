//! Starting a job attempt's process: state directory, environment, FIFOs for its output, cgroup or rlimit
//! placement before `exec`, a new session — and finding an attempt's process again after an agent restart.
//!
//! The launcher never waits for or signals a process itself; [`RunningJob`] does. Between `fork` and
//! `exec` only async-signal-safe calls are made.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::unix::pipe;

use super::limit_mode::LimitMode;
use super::log_files::{self, LogStream};
use super::proc_stat;
use super::running_job::{Origin, RunningJob};
use super::{job_cgroup, ExecError, ProcessHandle, ProcessSpec, Replica};

const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// `PATH` of a job when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The only variables a job inherits from the agent's environment.
const INHERITED_ENV: [&str; 8] = [
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR",
];
/// The wrapper every job runs under: `$0` is the exit-status file, `"$@"` the command. A trap with a
/// handler (not an ignored signal) lets the wrapper outlive a SIGTERM to the group while the command
/// gets default dispositions on exec; `times` after the command reports its children's CPU time.
const WRAPPER: &str = "trap : HUP INT QUIT TERM USR1 USR2 ALRM
\"$@\"
s=$?
{ echo \"$s\"; times; } > \"$0\"
exit \"$s\"
";
/// The wrapper's record of the command's status, in the attempt's state directory.
pub(crate) const EXIT_STATUS_FILE: &str = "exit_status";
const MAX_JOB_ID_LEN: usize = 128;
/// Longest host name accepted in a replica's host list (DNS names stop at 253).
const MAX_HOST_LEN: usize = 253;

/// How to build a [`Launcher`].
#[derive(Debug, Clone)]
pub struct LauncherOptions {
    /// The agent's data directory; processes live in `<data_dir>/jobs/<job_id>/<attempt>/` (replica 0)
    /// or `<data_dir>/jobs/<job_id>/<attempt>-r<replica>/` (the other replicas of a gang job).
    pub data_dir: PathBuf,
    /// Where cgroup hierarchies are mounted; `None` means `/sys/fs/cgroup`.
    pub cgroup_root: Option<PathBuf>,
}

/// Starts job attempts on this node with the limit mode detected once at construction.
#[derive(Debug, Clone)]
pub struct Launcher {
    data_dir: PathBuf,
    mode: LimitMode,
}

impl Launcher {
    /// Creates `<data_dir>/jobs` and detects the [`LimitMode`].
    pub fn new(options: LauncherOptions) -> Result<Self, ExecError> {
        let jobs = options.data_dir.join("jobs");
        fs::create_dir_all(&jobs).map_err(ExecError::io("creating", &jobs))?;
        let root = options
            .cgroup_root
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CGROUP_ROOT));
        let mode = LimitMode::detect(&root);
        tracing::info!(mode = mode.status(), "job resource limits");
        Ok(Launcher {
            data_dir: options.data_dir,
            mode,
        })
    }

    /// How jobs are limited on this node.
    pub fn mode(&self) -> &LimitMode {
        &self.mode
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
    /// supervision and log copying run as tasks on it. The process is already limited and in its own
    /// session when this returns. Replicas of one attempt are independent processes: each has its own
    /// state directory, cgroup and process group (its logs go where its spec's [`LogOptions`] says).
    ///
    /// [`LogOptions`]: super::LogOptions
    pub fn launch_replica(
        &self,
        spec: &ProcessSpec,
        replica: &Replica,
    ) -> Result<RunningJob, ExecError> {
        validate(spec, replica)?;
        tokio::runtime::Handle::try_current().map_err(|_| ExecError::NoRuntime)?;
        let state_dir = self.state_dir(&spec.job_id, spec.attempt, replica.index);
        fs::create_dir_all(&state_dir).map_err(ExecError::io("creating", &state_dir))?;
        let exit_file = state_dir.join(EXIT_STATUS_FILE);
        remove_if_present(&exit_file)?;
        let working_dir = match &spec.working_dir {
            Some(dir) if dir.is_dir() => dir.clone(),
            Some(dir) => return Err(ExecError::WorkingDir(dir.clone())),
            None => {
                let dir = state_dir.join("work");
                fs::create_dir_all(&dir).map_err(ExecError::io("creating", &dir))?;
                dir
            }
        };
        let env = job_environment(spec, replica, |key| std::env::var(key).ok());
        let path_var = env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
        resolve_command(&spec.command, path_var, &working_dir)?;

        fs::create_dir_all(&spec.log.dir).map_err(ExecError::io("creating", &spec.log.dir))?;
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
                .open(&path)
                .map_err(ExecError::io("opening", &path))?;
            let receiver = pipe::OpenOptions::new()
                .open_receiver(&path)
                .map_err(ExecError::io("opening", &path))?;
            child_ends.push(child_end);
            fifos.push((stream, Some(receiver)));
        }

        let cgroups = job_cgroup::create(
            &self.mode,
            &run_name(&format!("{}-{}", spec.job_id, spec.attempt), replica.index),
            spec.cpu_millis,
            spec.memory_bytes,
        )?;
        let rlimit_as = match self.mode {
            LimitMode::Rlimits if spec.memory_bytes > 0 && spec.gpu_uuids.is_empty() => {
                Some(spec.memory_bytes)
            }
            LimitMode::Rlimits if spec.memory_bytes > 0 => {
                tracing::warn!(job = %spec.job_id, "rlimits mode: memory of a GPU job is not limited");
                None
            }
            _ => None,
        };
        let spawned = spawn(
            spec,
            &exit_file,
            &working_dir,
            &env,
            child_ends,
            &cgroups,
            rlimit_as,
        );
        let (pid, started) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                for dir in &cgroups {
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
            cgroups,
        };
        tracing::info!(job = %spec.job_id, attempt = spec.attempt, replica = replica.index, pid, mode = self.mode.status(), "job started");
        Ok(RunningJob::start(handle, fifos, Origin::Child { started }))
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
        Some(RunningJob::start(handle.clone(), fifos, Origin::Adopted))
    }
}

fn spawn(
    spec: &ProcessSpec,
    exit_file: &Path,
    working_dir: &Path,
    env: &BTreeMap<String, String>,
    child_ends: Vec<fs::File>,
    cgroups: &[PathBuf],
    rlimit_as: Option<u64>,
) -> Result<(i32, Instant), ExecError> {
    let mut ends = child_ends.into_iter();
    let (Some(stdout), Some(stderr)) = (ends.next(), ends.next()) else {
        return Err(ExecError::Spawn(io::Error::other("output pipes missing")));
    };
    let procs_files = job_cgroup::open_procs_files(cgroups)?;
    let procs_fds: Vec<RawFd> = procs_files.iter().map(AsRawFd::as_raw_fd).collect();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(WRAPPER)
        .arg(exit_file)
        .arg(&spec.command)
        .args(&spec.args)
        .env_clear()
        .envs(env)
        .current_dir(working_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: `child_setup` runs between fork and exec and makes only async-signal-safe calls without
    // allocating; the descriptors it writes to stay open in the parent until `spawn` returns.
    unsafe {
        command.pre_exec(move || child_setup(&procs_fds, rlimit_as));
    }
    let started = Instant::now();
    let child = command.spawn().map_err(ExecError::Spawn)?;
    // pid_t is an i32 that std widened to u32; narrowing it back is lossless.
    let pid = child.id() as i32;
    // Dropping `command` closes the agent's copies of the job's output ends, so the FIFOs reach EOF when
    // the job's processes close theirs. Dropping `child` neither waits nor kills.
    drop(command);
    drop(child);
    drop(procs_files);
    Ok((pid, started))
}

/// In the forked child, before exec: default signal dispositions, a new session (process group id = pid),
/// the cgroups, the address-space limit.
fn child_setup(procs_fds: &[RawFd], rlimit_as: Option<u64>) -> io::Result<()> {
    // SAFETY: all calls below are async-signal-safe syscalls on plain values and stack buffers.
    unsafe {
        // Signals 32 and 33 belong to the C library's threads; stay below them.
        for signal in 1..32 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 12];
        let digits = format_pid(libc::getpid(), &mut buf);
        for &fd in procs_fds {
            if libc::write(fd, digits.as_ptr().cast(), digits.len()) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(limit) = rlimit_as {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &rlimit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Decimal digits of `pid` in `buf`, without allocating.
fn format_pid(pid: i32, buf: &mut [u8; 12]) -> &[u8] {
    let mut n = pid.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
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

fn unix_ms(t: SystemTime) -> u64 {
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

/// The job's environment: the allowed part of the agent's, the spec's, then the launcher's own variables,
/// which always win.
pub(crate) fn job_environment(
    spec: &ProcessSpec,
    replica: &Replica,
    agent_env: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for key in INHERITED_ENV {
        if let Some(value) = agent_env(key) {
            env.insert(key.to_string(), value);
        }
    }
    env.entry("PATH".to_string())
        .or_insert_with(|| DEFAULT_PATH.to_string());
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
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

/// Finds the program the way the shell will: a name with a `/` relative to the working directory, any
/// other name in `PATH` (an empty entry meaning the working directory).
fn resolve_command(
    command: &str,
    path_var: &str,
    working_dir: &Path,
) -> Result<PathBuf, ExecError> {
    let candidates: Vec<PathBuf> = if command.contains('/') {
        vec![working_dir.join(command)]
    } else {
        path_var
            .split(':')
            .map(|dir| working_dir.join(dir).join(command))
            .collect()
    };
    candidates
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
    use crate::exec::LogOptions;

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
        let env = job_environment(&s, &Replica::single(), agent);
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
        let env = job_environment(&s, &Replica::single(), |_| None);
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
        let env = job_environment(&s, &replica, |_| None);
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

    #[test]
    fn pids_format_without_allocating() {
        let mut buf = [0u8; 12];
        assert_eq!(format_pid(0, &mut buf), b"0");
        assert_eq!(format_pid(7, &mut buf), b"7");
        assert_eq!(format_pid(4_194_304, &mut buf), b"4194304");
        assert_eq!(format_pid(i32::MAX, &mut buf), b"2147483647");
    }
}
