//! A launched (or adopted) job attempt: observing its end, reaping it, cancelling it, and the report.
//!
//! Signals go only to the job's own process group and cgroup, and to the group only while its leader's pid
//! is absent or still carries the job's start time — never to a process that merely reuses a number.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::launcher::EXIT_STATUS_FILE;
use super::log_files::{self, LogStream};
use super::output_index::SharedIndex;
use super::sandbox::UidLease;
use super::{job_cgroup, proc_stat, ExitReport, ProcessHandle};

/// How often an exit is re-checked when no pidfd wakes us (and as a safety net when one does).
const EXIT_POLL: Duration = Duration::from_millis(100);
const EXIT_SAFETY_NET: Duration = Duration::from_secs(1);
/// How long the log copy may take after the job ended before the rest is dropped (processes that left
/// the group can hold the pipes open).
const LOG_DRAIN: Duration = Duration::from_secs(2);
/// How often SIGKILL is repeated while a cancelled job has not ended.
const KILL_REPEAT: Duration = Duration::from_secs(1);

/// How the supervisor learns of the exit.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// Our child: pidfd/`waitid`, reaped with `wait4`.
    Child { started: Instant },
    /// Started by an earlier agent: pidfd or `/proc`, status from the wrapper's file.
    Adopted,
}

/// A job attempt whose process this agent supervises. Dropping it does not stop the process or its
/// supervision; [`RunningJob::detach`] stops the supervision only.
#[derive(Debug)]
pub struct RunningJob {
    handle: ProcessHandle,
    adopted: bool,
    cancel_requested: Arc<AtomicBool>,
    report: watch::Receiver<Option<ExitReport>>,
    detach: CancellationToken,
}

impl RunningJob {
    /// Spawns the log pumps and the supervisor on the current runtime.
    pub(crate) fn start(
        handle: ProcessHandle,
        fifos: Vec<(LogStream, Option<pipe::Receiver>)>,
        origin: Origin,
        uid: Option<UidLease>,
    ) -> RunningJob {
        let span = tracing::info_span!(
            "job",
            job = %handle.job_id,
            attempt = handle.attempt,
            replica = handle.replica
        );
        let detach = CancellationToken::new();
        let finish = CancellationToken::new();
        let mut pumps = Vec::new();
        let index = SharedIndex::new(handle.log.clone());
        for (stream, fifo) in fifos {
            match fifo {
                Some(fifo) => pumps.push(tokio::spawn(
                    log_files::pump(
                        fifo,
                        handle.log.clone(),
                        stream,
                        index.clone(),
                        detach.clone(),
                        finish.clone(),
                    )
                    .instrument(span.clone()),
                )),
                None => {
                    // Nothing will ever be copied: say so, so that followers end.
                    if let Err(e) = log_files::mark_closed(&handle.log.dir, stream) {
                        tracing::warn!(?stream, error = %e, "marking the job log as ended failed");
                    }
                }
            }
        }
        let (report_tx, report) = watch::channel(None);
        let cancel_requested = Arc::new(AtomicBool::new(false));
        let supervisor = Supervisor {
            handle: handle.clone(),
            origin,
            cancel_requested: cancel_requested.clone(),
            report: report_tx,
            detach: detach.clone(),
            finish,
            pumps,
            uid,
        };
        tokio::spawn(supervisor.run().instrument(span));
        RunningJob {
            handle,
            adopted: matches!(origin, Origin::Adopted),
            cancel_requested,
            report,
            detach,
        }
    }

    /// What to persist to adopt this job after an agent restart.
    pub fn handle(&self) -> &ProcessHandle {
        &self.handle
    }

    pub fn pid(&self) -> i32 {
        self.handle.pid
    }

    pub fn pgid(&self) -> i32 {
        self.handle.pgid
    }

    /// Field 22 of `/proc/<pid>/stat`.
    pub fn start_time(&self) -> u64 {
        self.handle.start_time
    }

    /// Started by an earlier agent process.
    pub fn is_adopted(&self) -> bool {
        self.adopted
    }

    /// The report, if the job has ended.
    pub fn try_report(&self) -> Option<ExitReport> {
        self.report.borrow().clone()
    }

    /// Waits for the job to end (its logs copied, its cgroup removed) and reports how.
    pub async fn wait(&self) -> ExitReport {
        let mut report = self.report.clone();
        let ended = report
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        // Without a report the supervisor is gone (the runtime is shutting down): the outcome is unknown.
        ended.unwrap_or_else(|| ExitReport {
            exit_code: None,
            signal: None,
            cancelled: self.cancel_requested.load(Ordering::SeqCst),
            cpu_seconds: None,
            max_rss_bytes: None,
            wall_seconds: seconds_since_unix_ms(self.handle.started_unix_ms),
            oom_killed: false,
        })
    }

    /// Cancels the job: SIGTERM (and SIGCONT) to its process group, SIGKILL to the group and its cgroup
    /// after `grace`, repeated until it has ended. Always returns; the report says `cancelled` unless the
    /// job had already ended.
    pub async fn cancel(&self, grace: Duration) -> ExitReport {
        if let Some(report) = self.try_report() {
            return report;
        }
        self.cancel_requested.store(true, Ordering::SeqCst);
        tracing::info!(job = %self.handle.job_id, attempt = self.handle.attempt, ?grace, "cancelling job");
        signal_group(&self.handle, libc::SIGTERM);
        signal_group(&self.handle, libc::SIGCONT);
        if let Ok(report) = tokio::time::timeout(grace, self.wait()).await {
            return report;
        }
        loop {
            tracing::info!(job = %self.handle.job_id, "grace period over; killing the job's processes");
            signal_group(&self.handle, libc::SIGKILL);
            job_cgroup::signal_members(&self.handle.cgroups, libc::SIGKILL);
            if let Ok(report) = tokio::time::timeout(KILL_REPEAT, self.wait()).await {
                return report;
            }
        }
    }

    /// Stops supervising without touching the process (the agent is shutting down): the log copy stops
    /// and no report will come. Returns what [`super::Launcher::adopt`] needs to take the job over again.
    pub fn detach(self) -> ProcessHandle {
        self.detach.cancel();
        self.handle
    }
}

impl ProcessHandle {
    /// The status the job's wrapper recorded in the attempt's state directory, for a process that is gone
    /// and could not be adopted; `None` when no status was recorded (the wrapper itself was killed, or the
    /// node rebooted). The peak RSS is unknown; the wall time runs to now.
    pub fn recorded_exit(&self) -> Option<ExitReport> {
        let status = read_exit_file(&self.state_dir.join(EXIT_STATUS_FILE));
        if status.exit_code.is_none() && status.signal.is_none() {
            return None;
        }
        Some(ExitReport {
            exit_code: status.exit_code,
            signal: status.signal,
            cancelled: false,
            cpu_seconds: status.cpu_seconds,
            max_rss_bytes: None,
            wall_seconds: seconds_since_unix_ms(self.started_unix_ms),
            // The cgroup that counted OOM kills is gone with the process.
            oom_killed: false,
        })
    }
}

/// Sends `signal` to the job's process group, unless the group id now belongs to someone else: a pid stays
/// reserved while any process uses it as its group id, so the group is ours while its leader's pid is
/// either free of a process or shows the job's start time.
pub(crate) fn signal_group(handle: &ProcessHandle, signal: i32) -> bool {
    if handle.pgid <= 1 {
        return false;
    }
    if let Some(leader) = proc_stat::read_stat(handle.pgid) {
        if leader.start_time != handle.start_time {
            tracing::debug!(
                pgid = handle.pgid,
                "group id reused by another process; not signalled"
            );
            return false;
        }
    }
    // SAFETY: kill(2) has no memory-safety preconditions; the target was checked above.
    unsafe { libc::kill(-handle.pgid, signal) == 0 }
}

struct Supervisor {
    handle: ProcessHandle,
    origin: Origin,
    cancel_requested: Arc<AtomicBool>,
    report: watch::Sender<Option<ExitReport>>,
    detach: CancellationToken,
    finish: CancellationToken,
    pumps: Vec<JoinHandle<()>>,
    /// The job's user, free for another job once this one has ended (dropped with the supervisor).
    uid: Option<UidLease>,
}

impl Supervisor {
    async fn run(self) {
        let Supervisor {
            handle,
            origin,
            cancel_requested,
            report,
            detach,
            finish,
            pumps,
            uid,
        } = self;
        let child = matches!(origin, Origin::Child { .. });
        tokio::select! {
            _ = detach.cancelled() => {
                tracing::info!("job detached; it keeps running");
                // Its user stays taken: the job runs on, and an adopting launcher marks it again.
                std::mem::forget(uid);
                return;
            }
            () = wait_for_exit(handle.pid, handle.start_time, child) => {}
        }
        // The leader has ended; as our child it is still an unreaped zombie, so its pid (the group id) cannot
        // be reused yet. Whatever is left of the job goes now.
        signal_group(&handle, libc::SIGKILL);
        job_cgroup::signal_members(&handle.cgroups, libc::SIGKILL);
        let (status, wall_seconds) = match origin {
            Origin::Child { started } => (reap(handle.pid), started.elapsed().as_secs_f64()),
            Origin::Adopted => (
                read_exit_file(&handle.state_dir.join(EXIT_STATUS_FILE)),
                seconds_since_unix_ms(handle.started_unix_ms),
            ),
        };
        let mut drained = Box::pin(futures::future::join_all(pumps));
        if tokio::time::timeout(LOG_DRAIN, &mut drained).await.is_err() {
            tracing::warn!("job output still open after the job ended; the rest is dropped");
            finish.cancel();
            drained.await;
        }
        // Read before the groups go: their OOM counters go with them.
        let oom_killed = job_cgroup::oom_kills(&handle.cgroups) > 0;
        job_cgroup::remove(&handle.cgroups).await;
        let ended = ExitReport {
            exit_code: status.exit_code,
            signal: status.signal,
            cancelled: cancel_requested.load(Ordering::SeqCst),
            cpu_seconds: status.cpu_seconds,
            max_rss_bytes: status.max_rss_bytes,
            wall_seconds,
            oom_killed,
        };
        tracing::info!(exit_code = ?ended.exit_code, signal = ?ended.signal, cancelled = ended.cancelled, oom_killed, "job ended");
        // Every process of the job is gone (its namespace and cgroups with it): its user may serve again.
        drop(uid);
        report.send_replace(Some(ended));
    }
}

/// Resolves when the process has ended (for our child: is waitable; otherwise: gone, a zombie, or its pid
/// reused).
async fn wait_for_exit(pid: i32, start_time: u64, child: bool) {
    let has_exited = move || {
        if child {
            child_has_exited(pid)
        } else {
            match proc_stat::read_stat(pid) {
                None => true,
                Some(stat) => stat.start_time != start_time || stat.has_exited(),
            }
        }
    };
    if let Some(pidfd) = pidfd_open(pid) {
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open, naming the same pidfd, until it is
        // dropped with it.
        let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
        if let Ok(pidfd) = registered {
            loop {
                if has_exited() {
                    return;
                }
                match tokio::time::timeout(EXIT_SAFETY_NET, pidfd.readable()).await {
                    Ok(Ok(mut ready)) => ready.clear_ready(),
                    Ok(Err(_)) => break,
                    Err(_) => {}
                }
            }
        }
    }
    while !has_exited() {
        tokio::time::sleep(EXIT_POLL).await;
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Our child has ended (without reaping it). A child that is no longer ours to wait for counts as ended.
fn child_has_exited(pid: i32) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid value; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc < 0 {
        return io::Error::last_os_error().raw_os_error() != Some(libc::EINTR);
    }
    // SAFETY: after a successful waitid the pid field is initialized (0 when nothing is waitable).
    unsafe { info.si_pid() != 0 }
}

/// The command's status as far as it is known.
#[derive(Debug, Default, PartialEq)]
struct ExitStatus {
    exit_code: Option<i32>,
    signal: Option<i32>,
    cpu_seconds: Option<f64>,
    max_rss_bytes: Option<u64>,
}

/// Reaps our ended child with its resource usage.
fn reap(pid: i32) -> ExitStatus {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are valid and writable; the child has ended, so this does not block.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if rc < 0 && err.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        tracing::warn!(pid, error = %err, "job process could not be reaped; status unknown");
        return ExitStatus::default();
    }
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        decode_code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    ExitStatus {
        exit_code,
        signal,
        cpu_seconds: Some(seconds(usage.ru_utime) + seconds(usage.ru_stime)),
        // Linux reports kibibytes.
        max_rss_bytes: u64::try_from(usage.ru_maxrss).ok().map(|kib| kib * 1024),
    }
}

/// The wrapper's code: the command's exit code, or 128 + the signal that killed it.
fn decode_code(code: i32) -> (Option<i32>, Option<i32>) {
    if (129..=192).contains(&code) {
        (None, Some(code - 128))
    } else {
        (Some(code), None)
    }
}

/// Parses the wrapper's `exit_status`: the code, then the output of `times` (the shell's own times, then
/// its children's, each `<min>m<sec>s <min>m<sec>s`).
fn parse_exit_file(text: &str) -> ExitStatus {
    let mut lines = text.lines();
    let Some(code) = lines.next().and_then(|l| l.trim().parse::<i32>().ok()) else {
        return ExitStatus::default();
    };
    let (exit_code, signal) = decode_code(code);
    let cpu_seconds = lines.nth(1).and_then(|children| {
        let mut times = children.split_whitespace().map(parse_shell_time);
        match (times.next(), times.next()) {
            (Some(Some(user)), Some(Some(system))) => Some(user + system),
            _ => None,
        }
    });
    ExitStatus {
        exit_code,
        signal,
        cpu_seconds,
        max_rss_bytes: None,
    }
}

fn read_exit_file(path: &Path) -> ExitStatus {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_exit_file(&text),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "adopted job left no exit status");
            ExitStatus::default()
        }
    }
}

/// `1m2.500000s` → 62.5.
fn parse_shell_time(text: &str) -> Option<f64> {
    let (minutes, seconds) = text.strip_suffix('s')?.split_once('m')?;
    let total = minutes.parse::<f64>().ok()? * 60.0 + seconds.parse::<f64>().ok()?;
    total.is_finite().then_some(total)
}

fn seconds_since_unix_ms(started_unix_ms: u64) -> f64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now_ms.saturating_sub(started_unix_ms) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_codes_above_128_are_signals() {
        assert_eq!(decode_code(0), (Some(0), None));
        assert_eq!(decode_code(3), (Some(3), None));
        assert_eq!(decode_code(128), (Some(128), None));
        assert_eq!(decode_code(137), (None, Some(9)));
        assert_eq!(decode_code(143), (None, Some(15)));
        assert_eq!(decode_code(255), (Some(255), None));
    }

    #[test]
    fn exit_files_of_dash_and_bash_parse() {
        let dash = "7\n0m0.001000s 0m0.002000s\n1m2.500000s 0m0.250000s\n";
        let status = parse_exit_file(dash);
        assert_eq!(status.exit_code, Some(7));
        assert_eq!(status.signal, None);
        let cpu = status.cpu_seconds.expect("children's times");
        assert!((cpu - 62.75).abs() < 1e-9, "{cpu}");

        let bash = "143\n0m0.001s 0m0.000s\n0m0.120s 0m0.030s\n";
        let status = parse_exit_file(bash);
        assert_eq!((status.exit_code, status.signal), (None, Some(15)));
        assert!((status.cpu_seconds.expect("times") - 0.15).abs() < 1e-9);

        // Killed while writing: only the code made it.
        let status = parse_exit_file("0\n");
        assert_eq!(status.exit_code, Some(0));
        assert_eq!(status.cpu_seconds, None);
        assert_eq!(parse_exit_file(""), ExitStatus::default());
        assert_eq!(parse_exit_file("garbage\n"), ExitStatus::default());
    }

    #[test]
    fn shell_times_parse() {
        assert_eq!(parse_shell_time("0m0.000000s"), Some(0.0));
        assert_eq!(parse_shell_time("2m1.5s"), Some(121.5));
        assert_eq!(parse_shell_time("1.5s"), None);
        assert_eq!(parse_shell_time("xm1s"), None);
    }
}
