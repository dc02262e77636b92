//! Entering a running job's sandbox from outside (`meridian job exec`): a command runs with the same
//! user, namespaces, cgroups, resource limits, working directory and environment as the job's own
//! processes, and its output comes back capped.
//!
//! Before the fork the agent finds the job's init — the one child of the job's shim, whose start time
//! is checked — and opens what the entry needs: init's namespace files (`/proc/<init>/ns/{ipc,uts,net,
//! pid,mnt}`, those that differ from the agent's own), the `cgroup.procs` of the job's groups, and
//! init's resource limits (read from `/proc/<init>/limits`). Init's parent is checked again once its namespaces are open, so a
//! pid reused in between is never entered. The forked *entry* process then, with raw system calls only
//! (it is a copy of a multi-threaded agent, see `sandbox::child`): leads a session of its own, writes
//! itself into the job's cgroups, enters the namespaces with `setns`, sets the limits, becomes the job's
//! user with no supplementary groups, `no_new_privs` and no capabilities, and starts the command as its
//! child — the first process it makes is inside the job's pid namespace — in a process group of its own,
//! in the working directory. It waits for the command, kills what is left of that group, and reports the
//! wait status on a close-on-exec pipe; at the timeout it kills the group itself (SIGALRM). The agent
//! kills the entry as a backstop if it overstays, and the command dies with it (parent-death signal).
//!
//! stdin is the request's bytes, then end of file; stdout and stderr are pipes of which the agent keeps
//! at most `max_output` bytes each, dropping the rest. A process of the command that left its process
//! group stays where it is — in the job's cgroup and pid namespace — and ends with the job.
//!
//! The split between [`enter`] (the process exists, its pipes are open) and [`Entered::collect`] (feed
//! stdin, gather output, wait) is where an interactive session would diverge: it would keep the pipes
//! (or a terminal) and stream them instead of collecting.
//!
//! Must never enter a process it cannot prove is the job's, and never give the command more than the
//! job's own processes have. No allocation, lock or panic after the fork.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::proc_stat::read_stat;
use super::sandbox::child::{
    close_range, errno, exec_first, exit_code, fail, raw_clone, Failure, PHASE_CGROUP, PHASE_CHDIR,
    PHASE_CLONE_JOB, PHASE_CREDENTIALS, PHASE_EXEC, PHASE_NO_NEW_PRIVS, PHASE_RLIMIT,
    PHASE_SESSION,
};

/// The namespaces a job may have of its own, in the order they are entered (the mount namespace last:
/// it changes the root and working directory of the entry).
const NAMESPACES: [(&str, c_int); 5] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
];

/// The resource limits copied from the job's init, by their names in `/proc/<pid>/limits` (read there
/// rather than with `prlimit`, which another user's process refuses without `CAP_SYS_RESOURCE`).
const RLIMITS: [(&str, libc::__rlimit_resource_t); 16] = [
    ("Max cpu time", libc::RLIMIT_CPU),
    ("Max file size", libc::RLIMIT_FSIZE),
    ("Max data size", libc::RLIMIT_DATA),
    ("Max stack size", libc::RLIMIT_STACK),
    ("Max core file size", libc::RLIMIT_CORE),
    ("Max resident set", libc::RLIMIT_RSS),
    ("Max processes", libc::RLIMIT_NPROC),
    ("Max open files", libc::RLIMIT_NOFILE),
    ("Max locked memory", libc::RLIMIT_MEMLOCK),
    ("Max address space", libc::RLIMIT_AS),
    ("Max file locks", libc::RLIMIT_LOCKS),
    ("Max pending signals", libc::RLIMIT_SIGPENDING),
    ("Max msgqueue size", libc::RLIMIT_MSGQUEUE),
    ("Max nice priority", libc::RLIMIT_NICE),
    ("Max realtime priority", libc::RLIMIT_RTPRIO),
    ("Max realtime timeout", libc::RLIMIT_RTTIME),
];

/// Steps and records of the report pipe besides `sandbox::child`'s phases.
const PHASE_SETNS: u32 = 0x8000_0101;
/// The entry's last record: the command's wait status.
const RECORD_STATUS: u32 = 0x8000_0110;
/// The same, when the command was killed at its timeout.
const RECORD_TIMED_OUT: u32 = 0x8000_0111;

/// How long the agent waits past the timeout before it kills the entry itself.
const BACKSTOP: Duration = Duration::from_secs(5);
/// The `PATH` used when the job's environment has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The running job to enter, as the agent recorded it when it launched it.
#[derive(Debug, Clone)]
pub struct JobEntry {
    /// The shim's pid and its start time (field 22 of `/proc/<pid>/stat`).
    pub pid: i32,
    pub start_time: u64,
    /// The job's cgroup directories (none in rlimits mode).
    pub cgroups: Vec<PathBuf>,
    /// The job's user (and group); `None` without a sandbox (the agent's own user).
    pub uid: Option<u32>,
    /// The job's working directory, at the same path inside its sandbox as on the host.
    pub workdir: PathBuf,
    /// The environment the command gets (the job's, without its secrets).
    pub env: BTreeMap<String, String>,
}

/// What to run and its bounds.
#[derive(Debug, Clone)]
pub struct ExecInput {
    /// The program (looked up in the environment's `PATH` inside the sandbox) and its arguments.
    pub command: Vec<String>,
    pub stdin: Vec<u8>,
    /// Rounded up to whole seconds, at least 1.
    pub timeout: Duration,
    /// The most bytes kept of each of stdout and stderr.
    pub max_output: usize,
}

/// How the command ended and what it wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timed_out: bool,
}

/// Why a command could not be run in a job.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("the job's process is no longer running")]
    NotRunning,
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
    #[error("entering the job failed at {step}: {source}")]
    Step {
        step: &'static str,
        source: io::Error,
    },
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> EnterError {
    move |source| EnterError::Io { context, source }
}

/// Runs `input` inside the job and waits for it (blocking: call it from a blocking thread).
pub fn exec_in_job(job: &JobEntry, input: &ExecInput) -> Result<ExecOutput, EnterError> {
    let entered = enter(job, input)?;
    entered.collect(&input.stdin, input.max_output)
}

/// Everything the entry process needs, prepared before the fork.
struct Prepared {
    namespaces: Vec<(File, c_int)>,
    cgroup_procs: Vec<File>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    uid: Option<u32>,
    timeout_secs: u32,
    workdir: CString,
    programs: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// Own the strings `argv` and `envp` point into.
    _argv_storage: Vec<CString>,
    _env_storage: Vec<CString>,
}

/// The fds the entry process starts with (its ends of the pipes).
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
}

/// A command started inside a job: the entry's pid and the agent's ends of its pipes.
pub struct Entered {
    pid: libc::pid_t,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    report: Option<OwnedFd>,
    deadline: Instant,
}

/// Starts `input.command` inside the job; its input and output are the returned pipes.
pub fn enter(job: &JobEntry, input: &ExecInput) -> Result<Entered, EnterError> {
    let prepared = prepare(job, input)?;
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let fds = ChildFds {
        stdin: stdin_r.as_raw_fd(),
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
    };
    // SAFETY: the child runs only `run_entry`, which makes raw system calls on memory prepared above
    // and ends in `_exit` or `execve`.
    let pid = unsafe { raw_clone(0) };
    if pid == 0 {
        // SAFETY: in the child of the clone, with `prepared` and `fds` built before it.
        unsafe { run_entry(&prepared, &fds) }
    }
    if pid < 0 {
        return Err(EnterError::Step {
            step: "fork",
            source: io::Error::last_os_error(),
        });
    }
    drop((stdin_r, stdout_w, stderr_w, report_w));
    for fd in [&stdin_w, &stdout_r, &stderr_r] {
        set_nonblocking(fd.as_raw_fd());
    }
    let timeout = Duration::from_secs(u64::from(prepared.timeout_secs));
    Ok(Entered {
        pid,
        stdin: Some(stdin_w),
        stdout: Some(stdout_r),
        stderr: Some(stderr_r),
        report: Some(report_r),
        deadline: Instant::now() + timeout + BACKSTOP,
    })
}

fn prepare(job: &JobEntry, input: &ExecInput) -> Result<Prepared, EnterError> {
    let Some(program) = input.command.first().filter(|p| !p.is_empty()) else {
        return Err(EnterError::InvalidCommand("no program named".into()));
    };
    let text = |s: &str| {
        CString::new(s).map_err(|_| {
            EnterError::InvalidCommand("a NUL byte in the command or environment".into())
        })
    };
    let argv_storage = input
        .command
        .iter()
        .map(|a| text(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env_storage = job
        .env
        .iter()
        .map(|(k, v)| text(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    let path = job.env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
    let programs = program_candidates(program, path)
        .iter()
        .map(|p| text(p))
        .collect::<Result<Vec<_>, _>>()?;
    let workdir = CString::new(job.workdir.as_os_str().as_encoded_bytes())
        .map_err(|_| EnterError::InvalidCommand("a NUL byte in the working directory".into()))?;

    let init = job_init(job.pid, job.start_time)?;
    let mut namespaces = Vec::new();
    for (name, flag) in NAMESPACES {
        let ours = fs::metadata(format!("/proc/self/ns/{name}"))
            .map_err(io_err("reading the agent's namespaces"))?;
        let path = format!("/proc/{init}/ns/{name}");
        let theirs = fs::metadata(&path).map_err(|_| EnterError::NotRunning)?;
        if (ours.dev(), ours.ino()) != (theirs.dev(), theirs.ino()) {
            namespaces.push((File::open(&path).map_err(|_| EnterError::NotRunning)?, flag));
        }
    }
    let limits =
        fs::read_to_string(format!("/proc/{init}/limits")).map_err(|_| EnterError::NotRunning)?;
    let rlimits = parse_limits(&limits).ok_or_else(|| EnterError::Io {
        context: "reading the job's limits",
        source: io::Error::other(format!("unexpected /proc/{init}/limits")),
    })?;
    // Init's namespaces and limits are in hand: make sure they were the job's init's (a pid reused
    // since would have another parent, or the shim would be gone).
    let still_init = read_stat(init).is_some_and(|s| s.ppid == job.pid && !s.has_exited());
    if !still_init || !shim_alive(job.pid, job.start_time) {
        return Err(EnterError::NotRunning);
    }
    let cgroup_procs = job
        .cgroups
        .iter()
        .map(|dir| {
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .map_err(|_| EnterError::NotRunning)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let argv = argv_storage
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp = env_storage
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let timeout_secs = u32::try_from(input.timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    Ok(Prepared {
        namespaces,
        cgroup_procs,
        rlimits,
        uid: job.uid,
        timeout_secs,
        workdir,
        programs,
        argv,
        envp,
        _argv_storage: argv_storage,
        _env_storage: env_storage,
    })
}

/// Every limit of [`RLIMITS`] from the text of `/proc/<pid>/limits`; `None` when one is missing or
/// unreadable.
fn parse_limits(text: &str) -> Option<Vec<(libc::__rlimit_resource_t, libc::rlimit)>> {
    let value = |word: &str| match word {
        "unlimited" => Some(libc::RLIM_INFINITY),
        n => n.parse::<u64>().ok(),
    };
    RLIMITS
        .iter()
        .map(|&(name, resource)| {
            let line = text.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?;
                // "Max realtime priority" must not match "Max realtime timeout"'s prefix, nor the reverse.
                rest.starts_with("  ").then_some(rest)
            })?;
            let mut words = line.split_whitespace();
            let soft = value(words.next()?)?;
            let hard = value(words.next()?)?;
            Some((
                resource,
                libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                },
            ))
        })
        .collect()
}

/// Where the program may be, in search order: a name with a `/` as it is (relative to the working
/// directory), any other name in each `PATH` entry (an empty entry meaning the working directory).
fn program_candidates(program: &str, path: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    path.split(':')
        .map(|dir| match dir {
            "" => format!("./{program}"),
            dir => format!("{}/{program}", dir.trim_end_matches('/')),
        })
        .collect()
}

fn shim_alive(pid: i32, start_time: u64) -> bool {
    read_stat(pid).is_some_and(|s| s.start_time == start_time && !s.has_exited())
}

/// The job's init: the shim's one child.
fn job_init(shim: i32, start_time: u64) -> Result<i32, EnterError> {
    if !shim_alive(shim, start_time) {
        return Err(EnterError::NotRunning);
    }
    let listed = fs::read_to_string(format!("/proc/{shim}/task/{shim}/children"))
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<i32>().ok());
    let init = match listed {
        Some(pid) => Some(pid),
        // Kernels without the `children` file: look for the process whose parent is the shim.
        None => fs::read_dir("/proc")
            .map_err(io_err("listing /proc"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|&pid| read_stat(pid).is_some_and(|s| s.ppid == shim)),
    };
    init.ok_or(EnterError::NotRunning)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), EnterError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(EnterError::Io {
            context: "creating a pipe",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor this process owns; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// The entry's command, for the SIGALRM handler (each entry process has its own copy).
static COMMAND_GROUP: AtomicI32 = AtomicI32::new(0);
static TIMED_OUT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_timeout(_signal: c_int) {
    TIMED_OUT.store(true, Ordering::Relaxed);
    let group = COMMAND_GROUP.load(Ordering::Relaxed);
    if group > 0 {
        // SAFETY: kill(2) is async-signal-safe and has no memory-safety preconditions.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
}

/// The entry process: joins the job and runs the command as its child. Never returns.
///
/// # Safety
/// Call only in the child of a clone, with `p` and `fds` prepared before it.
unsafe fn run_entry(p: &Prepared, fds: &ChildFds) -> ! {
    let report = fds.report;
    // If the agent dies, nobody reads the output: end, and the command with us.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for signal in 1..32 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    if libc::setsid() < 0 {
        fail(report, PHASE_SESSION, errno());
    }
    for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
        let moved = if from == to {
            libc::fcntl(to, libc::F_SETFD, 0)
        } else {
            libc::dup2(from, to)
        };
        if moved < 0 {
            fail(report, PHASE_SESSION, errno());
        }
    }
    close_all_but(p, report);
    for file in &p.cgroup_procs {
        // "0" moves the writing process itself.
        if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) < 0 {
            fail(report, PHASE_CGROUP, errno());
        }
    }
    for (file, flag) in &p.namespaces {
        if libc::setns(file.as_raw_fd(), *flag) != 0 {
            fail(report, PHASE_SETNS, errno());
        }
    }
    for (resource, limit) in &p.rlimits {
        if libc::setrlimit(*resource, limit) != 0 {
            fail(report, PHASE_RLIMIT, errno());
        }
    }
    if let Some(uid) = p.uid {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(uid, uid, uid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            fail(report, PHASE_CREDENTIALS, errno());
        }
    }
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        fail(report, PHASE_NO_NEW_PRIVS, errno());
    }
    // A copy of the agent's memory: never readable or traceable from the job.
    libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    let mut action: libc::sigaction = std::mem::zeroed();
    action.sa_sigaction = on_timeout as extern "C" fn(c_int) as usize;
    libc::sigemptyset(&mut action.sa_mask);
    libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());

    let command = raw_clone(0);
    if command == 0 {
        run_command(p, report);
    }
    if command < 0 {
        fail(report, PHASE_CLONE_JOB, errno());
    }
    COMMAND_GROUP.store(command, Ordering::Relaxed);
    // The command may not have called setpgid yet; doing it here too closes the race.
    libc::setpgid(command, command);
    libc::alarm(p.timeout_secs);
    for fd in 0..3 {
        libc::close(fd);
    }
    let mut status: c_int = 0;
    loop {
        let r = libc::waitpid(command, &mut status, 0);
        if r == command {
            break;
        }
        if r < 0 && errno() != libc::EINTR {
            status = 255 << 8;
            break;
        }
    }
    libc::alarm(0);
    libc::kill(-command, libc::SIGKILL);
    let step = if TIMED_OUT.load(Ordering::Relaxed) {
        RECORD_TIMED_OUT
    } else {
        RECORD_STATUS
    };
    let bytes = Failure {
        step,
        errno: status,
    }
    .encode();
    libc::write(report, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(0)
}

/// Closes every descriptor but 0–2, the report pipe and what the entry still needs.
///
/// # Safety
/// After fork only.
unsafe fn close_all_but(p: &Prepared, report: RawFd) {
    let mut keep = [0 as RawFd; 32];
    let mut n = 0;
    let needed = std::iter::once(report)
        .chain(p.namespaces.iter().map(|(f, _)| f.as_raw_fd()))
        .chain(p.cgroup_procs.iter().map(|f| f.as_raw_fd()));
    for fd in needed {
        if n < keep.len() && fd > 2 {
            keep[n] = fd;
            n += 1;
        }
    }
    let keep = &mut keep[..n];
    keep.sort_unstable();
    let mut next: u32 = 3;
    for &fd in keep.iter() {
        let fd = u32::try_from(fd).unwrap_or(0);
        if fd > next {
            close_range(next, fd - 1);
        }
        next = next.max(fd.saturating_add(1));
    }
    close_range(next, u32::MAX);
}

/// The command: its own process group, default signals, the working directory, `execve`.
///
/// # Safety
/// Only in the entry's child.
unsafe fn run_command(p: &Prepared, report: RawFd) -> ! {
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    libc::setpgid(0, 0);
    libc::signal(libc::SIGALRM, libc::SIG_DFL);
    if libc::chdir(p.workdir.as_ptr()) != 0 {
        fail(report, PHASE_CHDIR, errno());
    }
    let last = exec_first(&p.programs, &p.argv, &p.envp);
    fail(report, PHASE_EXEC, last)
}

/// One output stream being collected.
#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn take(&mut self, chunk: &[u8], max: usize) {
        let room = max.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated |= chunk.len() > room;
    }
}

/// Reads what is there on a non-blocking `fd` into `capture`; `false` once it reached end of file.
fn drain(fd: RawFd, capture: &mut Capture, max: usize) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        // SAFETY: read into a buffer of the length given.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return false,
            n if n > 0 => capture.take(&buf[..n as usize], max),
            _ => {
                return match errno() {
                    libc::EINTR => continue,
                    libc::EAGAIN => true,
                    _ => false,
                }
            }
        }
    }
}

impl Entered {
    /// Writes `stdin`, gathers stdout and stderr (at most `max_output` bytes of each) and waits for the
    /// command. Blocking.
    pub fn collect(mut self, stdin: &[u8], max_output: usize) -> Result<ExecOutput, EnterError> {
        let mut out = Capture::default();
        let mut err = Capture::default();
        let mut report = Vec::new();
        let mut written = 0usize;
        if stdin.is_empty() {
            self.stdin = None;
        }
        let mut killed = false;
        while let Some(report_fd) = self.report.as_ref().map(AsRawFd::as_raw_fd) {
            let now = Instant::now();
            if now >= self.deadline {
                if killed {
                    break;
                }
                // The entry overstayed its own timeout: end it (the command dies with it).
                // SAFETY: kill(2) of our own child, which we have not reaped yet.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                killed = true;
                self.deadline = now + BACKSTOP;
            }
            let mut polled = Vec::with_capacity(4);
            let watch = |fd: &Option<OwnedFd>, events: i16| {
                fd.as_ref().map(|fd| libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events,
                    revents: 0,
                })
            };
            polled.extend(watch(&self.report, libc::POLLIN));
            polled.extend(watch(&self.stdout, libc::POLLIN));
            polled.extend(watch(&self.stderr, libc::POLLIN));
            polled.extend(watch(&self.stdin, libc::POLLOUT));
            let wait = self.deadline.saturating_duration_since(now).as_millis();
            let wait = c_int::try_from(wait.max(1)).unwrap_or(c_int::MAX);
            // SAFETY: poll on a vector of the length given.
            let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, wait) };
            if n < 0 && errno() != libc::EINTR {
                return Err(EnterError::Io {
                    context: "waiting for the command's output",
                    source: io::Error::last_os_error(),
                });
            }
            for p in polled.iter().filter(|p| p.revents != 0) {
                if Some(p.fd) == self.stdout.as_ref().map(AsRawFd::as_raw_fd) {
                    if !drain(p.fd, &mut out, max_output) {
                        self.stdout = None;
                    }
                } else if Some(p.fd) == self.stderr.as_ref().map(AsRawFd::as_raw_fd) {
                    if !drain(p.fd, &mut err, max_output) {
                        self.stderr = None;
                    }
                } else if Some(p.fd) == self.stdin.as_ref().map(AsRawFd::as_raw_fd) {
                    let rest = &stdin[written..];
                    // SAFETY: write from a slice of the length given.
                    let n = unsafe { libc::write(p.fd, rest.as_ptr().cast(), rest.len()) };
                    if n > 0 {
                        written += n as usize;
                    }
                    let stuck = n < 0 && !matches!(errno(), libc::EAGAIN | libc::EINTR);
                    if written >= stdin.len() || stuck {
                        self.stdin = None;
                    }
                } else if p.fd == report_fd {
                    let mut sink = Capture::default();
                    if !drain(p.fd, &mut sink, 64) {
                        self.report = None;
                    }
                    report.extend_from_slice(&sink.bytes);
                }
            }
        }
        // The entry is gone: whatever the command wrote before its end is in the pipes now. Processes
        // that left its group may still hold them open; they are not waited for.
        if let Some(fd) = &self.stdout {
            drain(fd.as_raw_fd(), &mut out, max_output);
        }
        if let Some(fd) = &self.stderr {
            drain(fd.as_raw_fd(), &mut err, max_output);
        }
        let mut status: c_int = 0;
        // SAFETY: reaps our own child; `status` outlives the call.
        unsafe {
            if !killed {
                libc::kill(self.pid, libc::SIGKILL);
            }
            while libc::waitpid(self.pid, &mut status, 0) < 0 && errno() == libc::EINTR {}
        }
        // Reaped: nothing left for `drop` to do.
        self.report = None;
        let mut output = ExecOutput {
            stdout: out.bytes,
            stderr: err.bytes,
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
            ..ExecOutput::default()
        };
        let records: Vec<Failure> = report
            .chunks_exact(8)
            .filter_map(|c| <&[u8; 8]>::try_from(c).ok().map(Failure::decode))
            .collect();
        if let Some(failure) = records.iter().find(|r| r.step < RECORD_STATUS) {
            if failure.step == PHASE_EXEC {
                // Like a shell: 127 for a program not found, 126 for one that may not run.
                let code = if failure.errno == libc::ENOENT {
                    127
                } else {
                    126
                };
                output.exit_code = Some(code);
                let why = io::Error::from_raw_os_error(failure.errno);
                output.stderr.extend_from_slice(
                    format!("meridian: cannot run the command: {why}\n").as_bytes(),
                );
                return Ok(output);
            }
            return Err(EnterError::Step {
                step: step_name(failure.step),
                source: io::Error::from_raw_os_error(failure.errno),
            });
        }
        let Some(end) = records
            .iter()
            .find(|r| matches!(r.step, RECORD_STATUS | RECORD_TIMED_OUT))
        else {
            return Err(EnterError::Step {
                step: "waiting for the command",
                source: io::Error::other(if killed {
                    "it overstayed its timeout and was killed"
                } else {
                    "the entry process ended without a status"
                }),
            });
        };
        let status = end.errno;
        output.timed_out = end.step == RECORD_TIMED_OUT;
        if libc::WIFEXITED(status) {
            output.exit_code = Some(libc::WEXITSTATUS(status));
        } else if libc::WIFSIGNALED(status) {
            output.signal = Some(libc::WTERMSIG(status));
        } else {
            output.exit_code = Some(exit_code(status));
        }
        Ok(output)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if self.report.is_some() {
            // Never collected: end the entry and reap it.
            // SAFETY: kill and waitpid on our own unreaped child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status: c_int = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

fn step_name(step: u32) -> &'static str {
    match step {
        PHASE_SESSION => "setting up the session",
        PHASE_CGROUP => "joining the job's cgroup",
        PHASE_SETNS => "entering the job's namespaces",
        PHASE_RLIMIT => "setting the job's limits",
        PHASE_CREDENTIALS => "becoming the job's user",
        PHASE_NO_NEW_PRIVS => "setting no_new_privs",
        PHASE_CLONE_JOB => "starting the command",
        PHASE_CHDIR => "entering the working directory",
        _ => "an unknown step",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_looked_up_like_the_shell_does() {
        assert_eq!(program_candidates("./run.sh", "/bin"), ["./run.sh"]);
        assert_eq!(program_candidates("/bin/cat", "/usr/bin"), ["/bin/cat"]);
        assert_eq!(
            program_candidates("cat", "/usr/bin/:/bin::"),
            ["/usr/bin/cat", "/bin/cat", "./cat", "./cat"]
        );
    }

    #[test]
    fn limits_are_read_as_the_kernel_writes_them() {
        let ours = fs::read_to_string("/proc/self/limits").expect("limits");
        let limits = parse_limits(&ours).expect("every limit is listed");
        assert_eq!(limits.len(), RLIMITS.len());
        let mut real = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `real`, which outlives the call.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut real) },
            0
        );
        let nofile = limits
            .iter()
            .find(|(r, _)| *r == libc::RLIMIT_NOFILE)
            .map(|(_, l)| (l.rlim_cur, l.rlim_max));
        assert_eq!(nofile, Some((real.rlim_cur, real.rlim_max)));
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max cpu time              unlimited            unlimited            seconds\n";
        assert!(
            parse_limits(text).is_none(),
            "a missing limit is not guessed"
        );
    }

    #[test]
    fn output_beyond_the_cap_is_dropped_and_said() {
        let mut c = Capture::default();
        c.take(b"hello", 8);
        assert!(!c.truncated);
        c.take(b"world", 8);
        assert_eq!(c.bytes, b"hellowor");
        assert!(c.truncated);
    }

    #[test]
    fn a_process_that_is_not_running_is_never_entered() {
        let job = JobEntry {
            pid: std::process::id() as i32,
            start_time: 1, // not this process's
            cgroups: Vec::new(),
            uid: None,
            workdir: std::env::temp_dir(),
            env: BTreeMap::new(),
        };
        let input = ExecInput {
            command: vec!["true".into()],
            stdin: Vec::new(),
            timeout: Duration::from_secs(1),
            max_output: 10,
        };
        assert!(matches!(
            exec_in_job(&job, &input),
            Err(EnterError::NotRunning)
        ));
        let empty = ExecInput {
            command: Vec::new(),
            ..input
        };
        assert!(matches!(
            exec_in_job(&job, &empty),
            Err(EnterError::InvalidCommand(_))
        ));
    }
}
