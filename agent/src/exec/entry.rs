//! The entry process shared by [`enter`](super::enter) (a command on pipes) and
//! [`terminal`](super::terminal) (a command on a pseudo-terminal): what is prepared before the fork,
//! the allocation-free code that runs after it, and the reading of its report.
//!
//! [`prepare`] finds the job's init — the one child of the job's shim, whose start time is checked —
//! and opens what the entry needs: init's namespace files (`/proc/<init>/ns/{ipc,uts,net,pid,mnt}`,
//! those that differ from the agent's own), the `cgroup.procs` of the job's groups, and init's resource
//! limits (read from `/proc/<init>/limits`). Init's parent is checked again once its namespaces are
//! open, so a pid reused in between is never entered. [`spawn_entry`] forks the *entry*, which with raw
//! system calls only (it is a copy of a multi-threaded agent, see `sandbox::child`) leads a session of
//! its own, takes the given descriptors as its fds 0–2, writes itself into the job's cgroups, enters the
//! namespaces with `setns`, sets the limits, becomes the job's user with no supplementary groups,
//! `no_new_privs` and no capabilities, and starts the command as its child — the first process it makes
//! is inside the job's pid namespace — in the working directory. With [`Stdio::Pipes`] the command leads
//! a process group of its own; with [`Stdio::Terminal`] it leads a session of its own whose controlling
//! terminal is its fd 0 (so the terminal's Ctrl-C reaches its foreground group). Either way its process
//! group id is its pid. The entry waits for the command, kills what is left of that group, and reports
//! the wait status on a close-on-exec pipe ([`read_report`]); at the timeout it kills the command and
//! its group itself (SIGALRM). The command dies with the entry (parent-death signal).
//!
//! Must never enter a process it cannot prove is the job's, and never give the command more than the
//! job's own processes have. No allocation, lock or panic after the fork.

use std::ffi::{c_char, c_int, CString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use super::enter::{EnterError, JobEntry};
use super::proc_stat::read_stat;
use super::sandbox::child::{
    become_user, close_all_except, errno, exec_first, exit_code, fail, raw_clone, Failure,
    PHASE_CGROUP, PHASE_CHDIR, PHASE_CLONE_JOB, PHASE_CREDENTIALS, PHASE_EXEC, PHASE_NO_NEW_PRIVS,
    PHASE_RLIMIT, PHASE_SESSION,
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
/// Making the terminal the command's controlling terminal (`setsid`, `TIOCSCTTY`).
const PHASE_CONTROLLING_TERMINAL: u32 = 0x8000_0102;
/// The entry's last record: the command's wait status.
const RECORD_STATUS: u32 = 0x8000_0110;
/// The same, when the command was killed at its timeout.
const RECORD_TIMED_OUT: u32 = 0x8000_0111;

/// How long the agent waits past the timeout before it kills the entry itself.
pub(super) const BACKSTOP: Duration = Duration::from_secs(5);
/// The `PATH` used when the job's environment has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> EnterError {
    move |source| EnterError::Io { context, source }
}

/// How the command's standard streams are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stdio {
    /// Three pipes; the command leads a process group of its own.
    Pipes,
    /// One pseudo-terminal's slave as fds 0–2; the command leads a session of its own with it as its
    /// controlling terminal.
    Terminal,
}

/// Everything the entry process needs, prepared before the fork.
pub(super) struct Prepared {
    stdio: Stdio,
    namespaces: Vec<(File, c_int)>,
    cgroup_procs: Vec<File>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    uid: Option<u32>,
    /// The command's timeout in whole seconds, at least 1.
    pub(super) timeout_secs: u32,
    workdir: CString,
    programs: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// Own the strings `argv` and `envp` point into.
    _argv_storage: Vec<CString>,
    _env_storage: Vec<CString>,
}

/// The fds the entry process starts with (its ends of the pipes, or the terminal's slave three times)
/// and the write end of the report pipe.
pub(super) struct ChildFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub report: RawFd,
}

/// Forks the entry process, which runs `command` in the job with `fds`; returns its pid. The caller
/// closes its copies of the child's ends afterwards.
pub(super) fn spawn_entry(prepared: &Prepared, fds: &ChildFds) -> Result<libc::pid_t, EnterError> {
    // SAFETY: the child runs only `run_entry`, which makes raw system calls on memory prepared before
    // the clone and ends in `_exit` or `execve`.
    let pid = unsafe { raw_clone(0) };
    if pid == 0 {
        // SAFETY: in the child of the clone, with `prepared` and `fds` built before it.
        unsafe { run_entry(prepared, fds) }
    }
    if pid < 0 {
        return Err(EnterError::Step {
            step: "fork",
            source: io::Error::last_os_error(),
        });
    }
    Ok(pid)
}

/// Checks `command` and prepares the entry into `job`. With `stdio` [`Stdio::Terminal`], `term` is the
/// command's `TERM` (over the job's).
pub(super) fn prepare(
    job: &JobEntry,
    command: &[String],
    timeout: Duration,
    stdio: Stdio,
    term: &str,
) -> Result<Prepared, EnterError> {
    let Some(program) = command.first().filter(|p| !p.is_empty()) else {
        return Err(EnterError::InvalidCommand("no program named".into()));
    };
    let text = |s: &str| {
        CString::new(s).map_err(|_| {
            EnterError::InvalidCommand("a NUL byte in the command or environment".into())
        })
    };
    let argv_storage = command
        .iter()
        .map(|a| text(a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = job.env.clone();
    if stdio == Stdio::Terminal {
        env.insert("TERM".to_owned(), term.to_owned());
    }
    let env_storage = env
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
    let timeout_secs = u32::try_from(timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    Ok(Prepared {
        stdio,
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

pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), EnterError> {
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

pub(super) fn set_nonblocking(fd: RawFd) {
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
        // The command too, in case it has not made its group (or session) yet.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
            libc::kill(group, libc::SIGKILL);
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
    become_user(report, p.uid.map(|uid| (uid, uid)));
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
    if p.stdio == Stdio::Pipes {
        // The command may not have called setpgid yet; doing it here too closes the race. (Never for a
        // terminal: a group leader could not call setsid.)
        libc::setpgid(command, command);
    }
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
    close_all_except(&mut keep[..n]);
}

/// The command: its own process group (on pipes) or session with fd 0 as its controlling terminal (on a
/// terminal), default signals, the working directory, `execve`.
///
/// # Safety
/// Only in the entry's child.
unsafe fn run_command(p: &Prepared, report: RawFd) -> ! {
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    match p.stdio {
        Stdio::Pipes => {
            libc::setpgid(0, 0);
        }
        Stdio::Terminal => {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                fail(report, PHASE_CONTROLLING_TERMINAL, errno());
            }
        }
    }
    libc::signal(libc::SIGALRM, libc::SIG_DFL);
    if libc::chdir(p.workdir.as_ptr()) != 0 {
        fail(report, PHASE_CHDIR, errno());
    }
    let last = exec_first(&p.programs, &p.argv, &p.envp);
    fail(report, PHASE_EXEC, last)
}

/// How the command ended, as the entry reported it.
#[derive(Debug)]
pub(super) struct Ended {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// The program could not be executed (exit code 127 when it was not found, 126 otherwise): why.
    pub cannot_run: Option<io::Error>,
}

/// Reads the entry's records (everything it wrote on the report pipe). `Ok(None)` when it ended
/// without reporting a status (it was killed); an error when a step of the entry failed.
pub(super) fn read_report(report: &[u8]) -> Result<Option<Ended>, EnterError> {
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
            return Ok(Some(Ended {
                exit_code: Some(code),
                signal: None,
                timed_out: false,
                cannot_run: Some(io::Error::from_raw_os_error(failure.errno)),
            }));
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
        return Ok(None);
    };
    let status = end.errno;
    let mut ended = Ended {
        exit_code: None,
        signal: None,
        timed_out: end.step == RECORD_TIMED_OUT,
        cannot_run: None,
    };
    if libc::WIFEXITED(status) {
        ended.exit_code = Some(libc::WEXITSTATUS(status));
    } else if libc::WIFSIGNALED(status) {
        ended.signal = Some(libc::WTERMSIG(status));
    } else {
        ended.exit_code = Some(exit_code(status));
    }
    Ok(Some(ended))
}

fn step_name(step: u32) -> &'static str {
    match step {
        PHASE_CONTROLLING_TERMINAL => "making the terminal the command's controlling terminal",
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
}
