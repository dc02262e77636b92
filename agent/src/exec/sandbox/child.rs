//! The code that runs in a job's processes before `exec`: the shim that outlives the agent and records the
//! exit status, the init that builds the sandbox and becomes pid 1 of the job's pid namespace, and the job
//! process itself up to `execve`.
//!
//! Everything here runs after `fork` from a multi-threaded agent, so it makes only raw system calls on
//! memory prepared before the fork: no allocation, no locks, no standard-library I/O, no panics. New
//! processes are made with the raw `clone` system call (never the C library's `fork`, whose handlers take
//! locks another agent thread may have held). A failure is reported to the agent as a [`Failure`] on a
//! close-on-exec pipe: which step failed and its `errno`.
//!
//! The process tree of one job:
//!
//! ```text
//! agent ── fork ──▶ shim (session leader, outside the sandbox and the job's cgroups; ignores termination
//!                   │     signals; waits for init, writes `exit_status`, exits with init's code)
//!                   └─ clone(new namespaces) ──▶ init (pid 1: joins the cgroups, mounts the sandbox,
//!                                                │      pivots into it, drops privileges, forwards
//!                                                │      termination signals to the job's group, reaps)
//!                                                └─ clone ──▶ job (own process group) ── execve(command)
//! ```

use std::ffi::{c_char, c_int, c_ulong, CString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// Which part of the launch failed, as sent over the failure pipe: a setup step's index, or a phase.
pub(crate) const PHASE_CLONE_INIT: u32 = 0x8000_0001;
pub(crate) const PHASE_CGROUP: u32 = 0x8000_0002;
pub(crate) const PHASE_PRIVATE_MOUNTS: u32 = 0x8000_0003;
pub(crate) const PHASE_LOOPBACK: u32 = 0x8000_0004;
pub(crate) const PHASE_PIVOT_ROOT: u32 = 0x8000_0005;
pub(crate) const PHASE_ROOT_READ_ONLY: u32 = 0x8000_0006;
pub(crate) const PHASE_RLIMIT: u32 = 0x8000_0007;
pub(crate) const PHASE_CREDENTIALS: u32 = 0x8000_0008;
pub(crate) const PHASE_NO_NEW_PRIVS: u32 = 0x8000_0009;
pub(crate) const PHASE_CLONE_JOB: u32 = 0x8000_000a;
pub(crate) const PHASE_CHDIR: u32 = 0x8000_000b;
pub(crate) const PHASE_EXEC: u32 = 0x8000_000c;
pub(crate) const PHASE_SESSION: u32 = 0x8000_000d;

/// A failed step and its `errno`, 8 bytes on the failure pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    pub step: u32,
    pub errno: i32,
}

impl Failure {
    pub(crate) fn decode(bytes: &[u8; 8]) -> Failure {
        Failure {
            step: u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            errno: i32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    pub(crate) fn encode(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.step.to_ne_bytes());
        out[4..].copy_from_slice(&self.errno.to_ne_bytes());
        out
    }
}

/// One filesystem operation of the sandbox's construction, on paths inside the new root (before the
/// pivot, so every path is the host path of the new root followed by the path the job will see).
#[derive(Debug)]
pub(crate) enum Step {
    /// `mkdir`; an existing directory is fine.
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    /// A bind mount, then (for `read_only`) a remount read-only, `nosuid` and `nodev` unless it is a device.
    Bind {
        source: CString,
        target: CString,
        read_only: bool,
        recursive: bool,
        device: bool,
    },
    /// A new mount of a kernel filesystem (`tmpfs`, `proc`).
    Mount {
        fstype: CString,
        target: CString,
        flags: c_ulong,
        data: CString,
    },
    /// A new regular file (never an existing one, never through a symlink) with `contents`, then its mode
    /// and owner.
    File {
        path: CString,
        contents: Vec<u8>,
        mode: libc::mode_t,
        owner: Option<(libc::uid_t, libc::gid_t)>,
    },
    Symlink {
        target: CString,
        link: CString,
    },
}

/// Everything the shim, init and job need, prepared before the fork.
pub(crate) struct Launch {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// Opened close-on-exec by the agent: the shim writes the exit status here.
    pub exit_file: RawFd,
    /// Write end of the failure pipe (close-on-exec).
    pub failure_pipe: RawFd,
    /// `cgroup.procs` of each of the job's cgroups (close-on-exec); init writes itself into them.
    pub cgroup_procs: Vec<RawFd>,
    /// `CLONE_NEW*` flags for init; 0 runs the job without namespaces (no sandbox).
    pub namespaces: c_int,
    /// Mount operations, in order (empty without a sandbox).
    pub steps: Vec<Step>,
    /// The directory that becomes `/` (a tmpfs is mounted on it first); `None` keeps the host's root.
    pub new_root: Option<CString>,
    /// Bring `lo` up (a new network namespace starts with it down).
    pub loopback_up: bool,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// The job's user and group; `None` keeps the agent's.
    pub credentials: Option<(libc::uid_t, libc::gid_t)>,
    pub workdir: CString,
    /// Candidate programs in `PATH` order; the first that executes wins.
    pub programs: Vec<CString>,
    /// Null-terminated pointer arrays into `argv_storage` / `env_storage`.
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
    /// Own the strings `argv` and `envp` point into; never read, only kept alive.
    #[allow(dead_code)]
    pub argv_storage: Vec<CString>,
    #[allow(dead_code)]
    pub env_storage: Vec<CString>,
}

/// The job's process group id, for init's signal forwarding (each process has its own copy).
static JOB_GROUP: AtomicI32 = AtomicI32::new(0);

/// Signals init passes on to the job's process group: pid 1 of a namespace receives only signals it has
/// a handler for, so without forwarding a cancel's SIGTERM would never reach the job.
const FORWARDED: [c_int; 9] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGCONT,
    libc::SIGWINCH,
];

extern "C" fn forward(signal: c_int) {
    let group = JOB_GROUP.load(Ordering::Relaxed);
    if group > 0 {
        // SAFETY: kill(2) is async-signal-safe and has no memory-safety preconditions.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

/// `clone` as a plain system call with fork semantics (a copy of this process's memory and stack).
///
/// # Safety
/// The child must only make async-signal-safe calls and must end with `_exit` or `execve`.
pub(crate) unsafe fn raw_clone(flags: c_int) -> libc::pid_t {
    // The argument order differs between architectures, but with no new stack and no thread-id pointers
    // the remaining arguments are all zero.
    let pid = libc::syscall(
        libc::SYS_clone,
        c_ulong::try_from(flags | libc::SIGCHLD).unwrap_or(0),
        0usize,
        0usize,
        0usize,
        0usize,
    );
    libc::pid_t::try_from(pid).unwrap_or(-1)
}

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Reports a failure and ends the process.
///
/// # Safety
/// Only from the processes of a launch (after fork).
pub(crate) unsafe fn fail(pipe: RawFd, step: u32, errno: i32) -> ! {
    let bytes = Failure { step, errno }.encode();
    libc::write(pipe, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(127)
}

/// Runs the shim in the child of the agent's `fork`: never returns.
///
/// # Safety
/// Call only in the child of a `fork`, with `launch` prepared before it.
pub(crate) unsafe fn shim(launch: &Launch) -> ! {
    let pipe = launch.failure_pipe;
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    // Signals 32 and 33 belong to the C library's threads; stay below them.
    for signal in 1..32 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    // The shim outlives a SIGTERM to the group (a cancel) to record the status; SIGKILL still ends it.
    for signal in FORWARDED {
        if signal != libc::SIGCONT && signal != libc::SIGWINCH {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    if libc::setsid() < 0 {
        fail(pipe, PHASE_SESSION, errno());
    }
    for (from, to) in [(launch.stdin, 0), (launch.stdout, 1), (launch.stderr, 2)] {
        if from != to && libc::dup2(from, to) < 0 {
            fail(pipe, PHASE_SESSION, errno());
        }
    }
    close_all_but(launch);

    let init = raw_clone(launch.namespaces);
    if init == 0 {
        run_init(launch);
    }
    if init < 0 {
        fail(pipe, PHASE_CLONE_INIT, errno());
    }
    libc::close(pipe);
    for &fd in &launch.cgroup_procs {
        libc::close(fd);
    }
    let mut status: c_int = 0;
    let code = loop {
        let r = libc::waitpid(init, &mut status, 0);
        if r == init {
            break exit_code(status);
        }
        if r < 0 && errno() != libc::EINTR {
            break 255;
        }
    };
    let mut usage: libc::rusage = std::mem::zeroed();
    libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
    let mut record = Record::new();
    record.exit_file(code, &usage);
    libc::write(launch.exit_file, record.bytes.as_ptr().cast(), record.len);
    libc::fsync(launch.exit_file);
    libc::_exit(code)
}

/// Becomes the job's user and group (when given) with no supplementary groups, sets `no_new_privs`
/// and makes the process undumpable: it is a copy of the agent's memory, never readable or traceable by
/// the job, which runs as the same user (changing user already clears the flag; it is said here so it
/// cannot be lost). A failure is reported on `pipe` and ends the process.
///
/// # Safety
/// After fork only.
pub(crate) unsafe fn become_user(pipe: RawFd, credentials: Option<(u32, u32)>) {
    if let Some((uid, gid)) = credentials {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            fail(pipe, PHASE_CREDENTIALS, errno());
        }
    }
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        fail(pipe, PHASE_NO_NEW_PRIVS, errno());
    }
    libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
}

/// The shell's convention: the exit code, or 128 + the signal that ended the process.
pub(crate) fn exit_code(status: c_int) -> c_int {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// Closes every descriptor except the standard ones and those the launch still needs.
///
/// # Safety
/// After fork only.
unsafe fn close_all_but(launch: &Launch) {
    let mut keep = [0 as RawFd; 64];
    let mut n = 0;
    for fd in [launch.exit_file, launch.failure_pipe]
        .iter()
        .chain(launch.cgroup_procs.iter())
    {
        if n < keep.len() && *fd > 2 {
            keep[n] = *fd;
            n += 1;
        }
    }
    close_all_except(&mut keep[..n]);
}

/// Closes every descriptor above 2 except those in `keep` (which it sorts). Allocation-free.
///
/// # Safety
/// After fork only: descriptors other threads use are closed under them.
pub(crate) unsafe fn close_all_except(keep: &mut [RawFd]) {
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

/// Closes descriptors `first..=last` (one by one where the system call is missing).
///
/// # Safety
/// After fork only: descriptors other threads use are closed under them.
pub(crate) unsafe fn close_range(first: u32, last: u32) {
    if libc::syscall(libc::SYS_close_range, first, last, 0) == 0 {
        return;
    }
    // Kernels before 5.9: close one by one up to the descriptor limit.
    let mut limit: libc::rlimit = std::mem::zeroed();
    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
        u32::try_from(limit.rlim_cur.min(1 << 20)).unwrap_or(1 << 20)
    } else {
        4096
    };
    let mut fd = first;
    while fd <= last && fd < max {
        libc::close(fd as c_int);
        fd += 1;
    }
}

/// Init: pid 1 of the job's namespaces (or a plain child without a sandbox). Never returns.
unsafe fn run_init(launch: &Launch) -> ! {
    let pipe = launch.failure_pipe;
    // If the shim dies, so does the job: nothing would record its end.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    for &fd in &launch.cgroup_procs {
        // "0" moves the writing process itself, whatever pid namespace it sees.
        if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
            fail(pipe, PHASE_CGROUP, errno());
        }
        libc::close(fd);
    }
    let sandboxed = launch.new_root.is_some();
    if let Some(root) = &launch.new_root {
        build_root(launch, root);
    }
    for &(resource, limit) in &launch.rlimits {
        let value = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        if libc::setrlimit(resource, &value) != 0 {
            fail(pipe, PHASE_RLIMIT, errno());
        }
    }
    become_user(pipe, launch.credentials);

    // Block the forwarded signals until the job's group is known, so none is lost in between.
    let mut forwarded: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut forwarded);
    for signal in FORWARDED {
        libc::sigaddset(&mut forwarded, signal);
    }
    if sandboxed {
        libc::sigprocmask(libc::SIG_BLOCK, &forwarded, std::ptr::null_mut());
        for signal in FORWARDED {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as extern "C" fn(c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    let job = raw_clone(0);
    if job == 0 {
        run_job(launch, sandboxed);
    }
    if job < 0 {
        fail(pipe, PHASE_CLONE_JOB, errno());
    }
    JOB_GROUP.store(job, Ordering::Relaxed);
    libc::close(pipe);
    libc::close(launch.exit_file);
    if sandboxed {
        // The job may not have called setpgid yet; doing it here too closes the race.
        libc::setpgid(job, job);
        libc::sigprocmask(libc::SIG_UNBLOCK, &forwarded, std::ptr::null_mut());
    }
    let mut status: c_int = 0;
    loop {
        let r = libc::waitpid(-1, &mut status, 0);
        if r == job {
            libc::_exit(exit_code(status));
        }
        if r < 0 && errno() != libc::EINTR {
            libc::_exit(255);
        }
    }
}

/// Mounts the new root and everything in it, then pivots into it.
unsafe fn build_root(launch: &Launch, root: &CString) {
    let pipe = launch.failure_pipe;
    let none = c"none".as_ptr();
    // Nothing mounted from here on propagates back to the host.
    if libc::mount(
        none,
        c"/".as_ptr(),
        std::ptr::null(),
        libc::MS_REC | libc::MS_PRIVATE,
        std::ptr::null(),
    ) != 0
    {
        fail(pipe, PHASE_PRIVATE_MOUNTS, errno());
    }
    for (index, step) in launch.steps.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if let Err(e) = run_step(step) {
            fail(pipe, index, e);
        }
    }
    if launch.loopback_up {
        if let Err(e) = loopback_up() {
            fail(pipe, PHASE_LOOPBACK, e);
        }
    }
    if libc::chdir(root.as_ptr()) != 0
        || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
        || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
        || libc::chdir(c"/".as_ptr()) != 0
    {
        fail(pipe, PHASE_PIVOT_ROOT, errno());
    }
    if libc::mount(
        none,
        c"/".as_ptr(),
        std::ptr::null(),
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        std::ptr::null(),
    ) != 0
    {
        fail(pipe, PHASE_ROOT_READ_ONLY, errno());
    }
}

unsafe fn run_step(step: &Step) -> Result<(), i32> {
    let check = |r: c_int| if r == 0 { Ok(()) } else { Err(errno()) };
    match step {
        Step::Mkdir { path, mode } => {
            if libc::mkdir(path.as_ptr(), *mode) != 0 && errno() != libc::EEXIST {
                return Err(errno());
            }
            Ok(())
        }
        Step::Bind {
            source,
            target,
            read_only,
            recursive,
            device,
        } => {
            let mut flags = libc::MS_BIND;
            if *recursive {
                flags |= libc::MS_REC;
            }
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ))?;
            let mut remount = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID;
            if !*device {
                remount |= libc::MS_NODEV;
            }
            if *read_only {
                remount |= libc::MS_RDONLY;
            }
            check(libc::mount(
                c"none".as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                remount,
                std::ptr::null(),
            ))
        }
        Step::Mount {
            fstype,
            target,
            flags,
            data,
        } => check(libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            *flags,
            data.as_ptr().cast(),
        )),
        Step::File {
            path,
            contents,
            mode,
            owner,
        } => {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            );
            if fd < 0 {
                return Err(errno());
            }
            let mut written = 0usize;
            while written < contents.len() {
                let n = libc::write(
                    fd,
                    contents[written..].as_ptr().cast(),
                    contents.len() - written,
                );
                if n < 0 {
                    let e = errno();
                    if e == libc::EINTR {
                        continue;
                    }
                    libc::close(fd);
                    return Err(e);
                }
                written += usize::try_from(n).unwrap_or(0);
            }
            let result = (|| {
                if let Some((uid, gid)) = owner {
                    check(libc::fchown(fd, *uid, *gid))?;
                }
                check(libc::fchmod(fd, *mode))
            })();
            libc::close(fd);
            result
        }
        Step::Symlink { target, link } => check(libc::symlink(target.as_ptr(), link.as_ptr())),
    }
}

unsafe fn loopback_up() -> Result<(), i32> {
    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if sock < 0 {
        return Err(errno());
    }
    let mut request: libc::ifreq = std::mem::zeroed();
    request.ifr_name[0] = b'l' as c_char;
    request.ifr_name[1] = b'o' as c_char;
    let result = if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut request) != 0 {
        Err(errno())
    } else {
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock, libc::SIOCSIFFLAGS, &request) != 0 {
            Err(errno())
        } else {
            Ok(())
        }
    };
    libc::close(sock);
    result
}

/// The job process: default signals, its own process group, the working directory, `execve`.
unsafe fn run_job(launch: &Launch, sandboxed: bool) -> ! {
    let pipe = launch.failure_pipe;
    // If init dies, so does the job (in a pid namespace the kernel would see to it anyway).
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    for signal in 1..32 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    if sandboxed {
        libc::setpgid(0, 0);
    }
    if libc::chdir(launch.workdir.as_ptr()) != 0 {
        fail(pipe, PHASE_CHDIR, errno());
    }
    let last = exec_first(&launch.programs, &launch.argv, &launch.envp);
    fail(pipe, PHASE_EXEC, last)
}

/// Executes the first of `programs` that can be (returns only when none could, with the errno to
/// report). Like execvp: a candidate that is missing lets the search go on; one that exists but may not
/// be executed is remembered; anything else ends it. Allocation-free.
///
/// # Safety
/// `argv` and `envp` are NULL-terminated arrays of pointers into strings that outlive the call; called
/// only where `execve` may replace the process (after a fork).
pub(crate) unsafe fn exec_first(
    programs: &[std::ffi::CString],
    argv: &[*const c_char],
    envp: &[*const c_char],
) -> i32 {
    let mut last = libc::ENOENT;
    for program in programs {
        libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => last = libc::EACCES,
            other => {
                last = other;
                break;
            }
        }
    }
    last
}

/// A fixed buffer for the exit record, formatted without allocating.
struct Record {
    bytes: [u8; 160],
    len: usize,
}

impl Record {
    fn new() -> Record {
        Record {
            bytes: [0; 160],
            len: 0,
        }
    }

    fn push(&mut self, text: &[u8]) {
        for &b in text {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut n: u64, min_digits: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 && digits.len() - i >= min_digits {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    /// `1m2.500000s`, as the shell's `times` prints it.
    fn push_time(&mut self, t: &libc::timeval) {
        let secs = u64::try_from(t.tv_sec).unwrap_or(0);
        let micros = u64::try_from(t.tv_usec).unwrap_or(0);
        self.push_number(secs / 60, 1);
        self.push(b"m");
        self.push_number(secs % 60, 1);
        self.push(b".");
        self.push_number(micros, 6);
        self.push(b"s");
    }

    /// The record the agent reads back for a job it did not see end: the code on the first line, the
    /// shim's own times (always zero) on the second and its children's on the third — the layout of the
    /// shell's `times`, so records of jobs started by older agents read the same way.
    fn exit_file(&mut self, code: c_int, children: &libc::rusage) {
        self.push_number(u64::try_from(code).unwrap_or(255), 1);
        self.push(b"\n0m0.000000s 0m0.000000s\n");
        self.push_time(&children.ru_utime);
        self.push(b" ");
        self.push_time(&children.ru_stime);
        self.push(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_round_trip_through_their_bytes() {
        let f = Failure {
            step: PHASE_EXEC,
            errno: libc::ENOENT,
        };
        assert_eq!(Failure::decode(&f.encode()), f);
    }

    #[test]
    fn exit_records_read_like_the_shells_times() {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        usage.ru_utime.tv_sec = 62;
        usage.ru_utime.tv_usec = 500_000;
        usage.ru_stime.tv_sec = 0;
        usage.ru_stime.tv_usec = 250;
        let mut record = Record::new();
        record.exit_file(137, &usage);
        assert_eq!(
            std::str::from_utf8(&record.bytes[..record.len]).expect("text"),
            "137\n0m0.000000s 0m0.000000s\n1m2.500000s 0m0.000250s\n"
        );
    }

    #[test]
    fn codes_follow_the_shell_convention() {
        // WIFEXITED with code 3: status = 3 << 8; killed by SIGKILL: status = 9.
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(9), 137);
    }
}
