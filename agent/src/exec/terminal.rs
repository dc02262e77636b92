//! An interactive terminal inside a running job (`meridian job exec -it`): the command runs in the job
//! exactly as [`enter`](super::enter) runs one (same user, namespaces, cgroups, limits, working
//! directory and environment, through the entry process of [`entry`](super::entry)), but on a
//! pseudo-terminal the agent holds the master of, which Meridian streams to the user.
//!
//! Before the fork the agent opens the pair (`posix_openpt`, `grantpt`, `unlockpt`, `ptsname_r`, the
//! slave opened `O_NOCTTY`) and sets its size; the entry gets the slave as its fds 0–2, and the command
//! leads a session of its own with the slave as its controlling terminal, so a Ctrl-C typed is a SIGINT
//! to its foreground group and a resize a SIGWINCH. `TERM` is the caller's terminal type (checked by
//! [`valid_term`]), over the job's. The agent keeps no copy of the slave: once every process holding it
//! has ended, reads of the master end (EIO, read as end of file) after what they wrote.
//!
//! [`JobTerminal`] is driven from Tokio: reads, writes and the entry's report go through `AsyncFd` on
//! non-blocking descriptors, and the entry is reaped with `WNOHANG`, so nothing blocks the runtime past a
//! system call. It ends at the command's timeout (the entry's alarm), at [`JobTerminal::kill`], and when
//! it is dropped; the command dies with the entry (parent-death signal). A process of the command that
//! left its process group and survives the terminal's hang-up stays in the job's cgroup and pid
//! namespace and ends with the job. Never blocks a runtime thread and never outlives its owner.

use std::ffi::c_char;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;

use super::enter::{EnterError, JobEntry};
use super::entry::{
    pipe, prepare, read_report, set_nonblocking, spawn_entry, ChildFds, Stdio, BACKSTOP,
};
use super::sandbox::child::errno;

/// The terminal type a command gets when the caller names none.
pub const DEFAULT_TERM: &str = "xterm";

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub cols: u16,
    pub rows: u16,
}

/// How a terminal's command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalExit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Why the program could not be run (with exit code 127 or 126), for the user.
    pub message: Option<String>,
}

/// Whether `term` may be given to a command as `TERM`: 1–64 characters of `[A-Za-z0-9._+-]`.
pub fn valid_term(term: &str) -> bool {
    (1..=64).contains(&term.len())
        && term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// What the agent knows of the entry process; guarded, so that it is never signalled once reaped (its
/// pid could be another process's by then).
#[derive(Default)]
struct EntryState {
    reaped: bool,
    killed: bool,
    /// The entry's report, as read so far, and whether it reached end of file.
    report: Vec<u8>,
    report_done: bool,
}

/// A command running in a job on a pseudo-terminal: the entry's pid and the terminal's master.
pub struct JobTerminal {
    pid: libc::pid_t,
    master: AsyncFd<OwnedFd>,
    report: AsyncFd<OwnedFd>,
    /// When the agent kills the entry itself (its timeout and a backstop past it).
    deadline: Instant,
    state: Mutex<EntryState>,
}

impl std::fmt::Debug for JobTerminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTerminal")
            .field("pid", &self.pid)
            .finish()
    }
}

/// Starts `command` inside the job on a new terminal of `size`, with `TERM=term`, killed after
/// `timeout` (rounded up to whole seconds). Blocking (it reads `/proc`): call it from a blocking thread
/// of a Tokio runtime, e.g. `spawn_blocking`.
pub fn open_terminal(
    job: &JobEntry,
    command: &[String],
    size: TerminalSize,
    term: &str,
    timeout: Duration,
) -> Result<JobTerminal, EnterError> {
    if !valid_term(term) {
        return Err(EnterError::InvalidCommand(
            "the terminal type must be 1-64 characters of A-Z a-z 0-9 . _ + -".into(),
        ));
    }
    // Before anything is forked: registering the descriptors needs a runtime.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(EnterError::Io {
            context: "opening a terminal",
            source: io::Error::other("not inside a Tokio runtime"),
        });
    }
    let prepared = prepare(job, command, timeout, Stdio::Terminal, term)?;
    let (master, slave) = open_pty()?;
    resize_fd(master.as_raw_fd(), size).map_err(io_step("setting the terminal's size"))?;
    let (report_r, report_w) = pipe()?;
    let fds = ChildFds {
        stdin: slave.as_raw_fd(),
        stdout: slave.as_raw_fd(),
        stderr: slave.as_raw_fd(),
        report: report_w.as_raw_fd(),
    };
    let pid = spawn_entry(&prepared, &fds)?;
    // The agent keeps no slave, so reads of the master end once the job's side is gone.
    drop((slave, report_w));
    set_nonblocking(master.as_raw_fd());
    set_nonblocking(report_r.as_raw_fd());
    let registered = watch(master, Interest::READABLE | Interest::WRITABLE)
        .and_then(|m| Ok((m, watch(report_r, Interest::READABLE)?)));
    let (master, report) = match registered {
        Ok(both) => both,
        Err(source) => {
            // SAFETY: kill and waitpid on our own unreaped child; `status` outlives the call.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                let mut status = 0;
                while libc::waitpid(pid, &mut status, 0) < 0 && errno() == libc::EINTR {}
            }
            return Err(EnterError::Io {
                context: "watching the terminal",
                source,
            });
        }
    };
    let timeout = Duration::from_secs(u64::from(prepared.timeout_secs));
    Ok(JobTerminal {
        pid,
        master,
        report,
        deadline: Instant::now() + timeout + BACKSTOP,
        state: Mutex::new(EntryState::default()),
    })
}

/// Registers `fd` with the runtime's reactor.
fn watch(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open and stays the same descriptor until the `AsyncFd` owning it drops it.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

fn io_step(step: &'static str) -> impl FnOnce(io::Error) -> EnterError {
    move |source| EnterError::Step { step, source }
}

/// A new pseudo-terminal pair, both ends close-on-exec and neither the agent's controlling terminal.
fn open_pty() -> Result<(OwnedFd, OwnedFd), EnterError> {
    let step = "opening a terminal";
    // SAFETY: posix_openpt takes flags only; the descriptor it returns is owned by nothing else.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return Err(io_step(step)(io::Error::last_os_error()));
    }
    // SAFETY: just created above and owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as c_char; 128];
    // SAFETY: grantpt and unlockpt take a descriptor we own; ptsname_r writes at most `name.len()`
    // bytes (NUL included) into `name`, which outlives the call.
    unsafe {
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(io_step(step)(io::Error::last_os_error()));
        }
        let e = libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len());
        if e != 0 {
            return Err(io_step(step)(io::Error::from_raw_os_error(e)));
        }
    }
    // SAFETY: `name` is NUL-terminated by ptsname_r's success; the returned descriptor is ours alone.
    let slave = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io_step(step)(io::Error::last_os_error()));
    }
    // SAFETY: just opened above and owned by nothing else.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

fn resize_fd(fd: RawFd, size: TerminalSize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize`, which outlives the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &winsize) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `read(2)` on a non-blocking descriptor (EAGAIN is `WouldBlock`).
fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: read into a buffer of the length given.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl JobTerminal {
    fn state(&self) -> MutexGuard<'_, EntryState> {
        // The state is plain data, consistent after every statement: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads what the command wrote to the terminal; `Ok(0)` once the terminal closed (every process
    /// holding it ended, after everything they wrote was read). Cancel-safe.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| read_fd(fd.as_raw_fd(), buf)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Types `data` into the terminal, waiting while its input buffer is full. Runs beside [`read`]
    /// (both take `&self`); an error once the terminal closed.
    ///
    /// [`read`]: JobTerminal::read
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let mut guard = self.master.writable().await?;
            let written = guard.try_io(|fd| loop {
                // SAFETY: write from a slice of the length given.
                let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
                if n >= 0 {
                    return Ok(n as usize);
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            });
            match written {
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Changes the terminal's size; its foreground group gets SIGWINCH.
    pub fn resize(&self, size: TerminalSize) -> io::Result<()> {
        resize_fd(self.master.as_raw_fd(), size)
    }

    /// Ends the session now: SIGKILL to the entry, and the command dies with it. [`wait`] then reports
    /// the command as killed by SIGKILL.
    ///
    /// [`wait`]: JobTerminal::wait
    pub fn kill(&self) {
        let mut state = self.state();
        if !state.reaped {
            // SAFETY: kill(2) of our own child, not reaped yet (so its pid is still its own).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            state.killed = true;
        }
    }

    /// Waits for the command to end (reading the entry's report to its end, then reaping the entry)
    /// and says how it ended. The agent kills the entry itself if it overstays its timeout. A program
    /// that could not be run ends with 127 (not found) or 126 and a [`TerminalExit::message`]; a step
    /// of entering the job that failed is an error. Cancel-safe; once it answered, it answers the same.
    pub async fn wait(&self) -> Result<TerminalExit, EnterError> {
        let mut deadline = self.deadline;
        let mut overstayed = false;
        while !self.state().report_done {
            match tokio::time::timeout_at(deadline, self.report.readable()).await {
                Err(_elapsed) if overstayed => {
                    return Err(EnterError::Step {
                        step: "waiting for the command",
                        source: io::Error::other("it overstayed its timeout and was killed"),
                    })
                }
                Err(_elapsed) => {
                    self.kill();
                    overstayed = true;
                    deadline = Instant::now() + BACKSTOP;
                }
                Ok(Err(source)) => {
                    return Err(EnterError::Io {
                        context: "reading the entry's report",
                        source,
                    })
                }
                Ok(Ok(mut guard)) => {
                    // `Err` only for "nothing more yet", which clears the readiness.
                    let _ = guard.try_io(|fd| self.drain_report(fd.as_raw_fd()));
                }
            }
        }
        self.reap().await;
        let state = self.state();
        match read_report(&state.report)? {
            Some(ended) => Ok(TerminalExit {
                exit_code: ended.exit_code,
                signal: ended.signal,
                timed_out: ended.timed_out,
                message: ended
                    .cannot_run
                    .map(|why| format!("meridian: cannot run the command: {why}")),
            }),
            None if state.killed => Ok(TerminalExit {
                signal: Some(libc::SIGKILL),
                ..TerminalExit::default()
            }),
            None => Err(EnterError::Step {
                step: "waiting for the command",
                source: io::Error::other("the entry process ended without a status"),
            }),
        }
    }

    /// Reads the report until it would block (`Err(WouldBlock)`) or ends (`Ok`).
    fn drain_report(&self, fd: RawFd) -> io::Result<()> {
        let mut buf = [0u8; 64];
        loop {
            match read_fd(fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => self.state().report.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // Unreadable: nothing more will come of it.
                Err(_) => break,
            }
        }
        self.state().report_done = true;
        Ok(())
    }

    /// Reaps the entry, whose report has ended (so it is exiting): polls with `WNOHANG`, killing it if
    /// it lingers.
    async fn reap(&self) {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            {
                let mut state = self.state();
                if state.reaped {
                    return;
                }
                let mut status = 0;
                // SAFETY: waitpid on our own child; `status` outlives the call.
                let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
                if r == self.pid || (r < 0 && errno() != libc::EINTR) {
                    state.reaped = true;
                    return;
                }
            }
            if started.elapsed() > BACKSTOP {
                self.kill();
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl Drop for JobTerminal {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if state.reaped {
            return;
        }
        let pid = self.pid;
        let mut status = 0;
        // SAFETY: kill and waitpid on our own unreaped child; `status` outlives the call.
        let reaped = unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, libc::WNOHANG) == pid
        };
        if reaped {
            return;
        }
        // Killed but not gone yet: reap it where blocking is allowed (nobody else signals it now).
        let reap = move || {
            let mut status = 0;
            // SAFETY: waitpid on our own child, which nothing else reaps; `status` outlives the call.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && errno() == libc::EINTR {}
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(reap)),
            Err(_) => reap(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_types_are_checked() {
        for good in [
            "xterm",
            "xterm-256color",
            "screen.xterm-new",
            "rxvt-unicode+x",
            "a",
        ] {
            assert!(valid_term(good), "{good}");
        }
        for bad in ["", "xterm 256", "x/y", "a\0", "é", &"x".repeat(65)] {
            assert!(!valid_term(bad), "{bad:?}");
        }
        assert!(valid_term(&"x".repeat(64)));
        assert!(valid_term(DEFAULT_TERM));
    }
}
