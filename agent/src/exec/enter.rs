//! Running a command inside a running job from outside (`meridian job exec`): it runs with the same
//! user, namespaces, cgroups, resource limits, working directory and environment as the job's own
//! processes (the entry process of [`entry`](super::entry) puts it there, in a process group of its
//! own), and its output comes back capped. The agent kills the entry as a backstop if it overstays its
//! timeout, and the command dies with it (parent-death signal).
//!
//! stdin is the request's bytes, then end of file; stdout and stderr are pipes of which the agent keeps
//! at most `max_output` bytes each, dropping the rest. A process of the command that left its process
//! group stays where it is — in the job's cgroup and pid namespace — and ends with the job.
//!
//! [`enter`] starts the process with its pipes open and [`Entered::collect`] feeds stdin, gathers
//! output and waits; an interactive session takes a terminal instead (see [`terminal`](super::terminal)).
//!
//! Also holds the types both share: [`JobEntry`] (what to enter) and [`EnterError`]. Must never enter a
//! process it cannot prove is the job's, and never give the command more than the job's own processes
//! have.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::entry::{
    pipe, prepare, read_report, set_nonblocking, spawn_entry, ChildFds, Stdio, BACKSTOP,
};
use super::sandbox::child::errno;

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

/// Runs `input` inside the job and waits for it (blocking: call it from a blocking thread).
pub fn exec_in_job(job: &JobEntry, input: &ExecInput) -> Result<ExecOutput, EnterError> {
    let entered = enter(job, input)?;
    entered.collect(&input.stdin, input.max_output)
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
    let prepared = prepare(job, &input.command, input.timeout, Stdio::Pipes, "")?;
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
    let pid = spawn_entry(&prepared, &fds)?;
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
        match read_report(&report)? {
            Some(ended) => {
                if let Some(why) = ended.cannot_run {
                    output.stderr.extend_from_slice(
                        format!("meridian: cannot run the command: {why}\n").as_bytes(),
                    );
                }
                output.exit_code = ended.exit_code;
                output.signal = ended.signal;
                output.timed_out = ended.timed_out;
                Ok(output)
            }
            None => Err(EnterError::Step {
                step: "waiting for the command",
                source: io::Error::other(if killed {
                    "it overstayed its timeout and was killed"
                } else {
                    "the entry process ended without a status"
                }),
            }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
