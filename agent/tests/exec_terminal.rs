//! An interactive terminal inside a running job (`exec::open_terminal`) with real processes: a shell
//! sees a terminal of the requested size that follows resizes, typed input is echoed and runs, Ctrl-C
//! interrupts the foreground command and not the shell, the exit code and a missing program are
//! reported, a session past its timeout is ended and says so, and killing the session leaves none of
//! its processes. The sandboxed half (the job's user,
//! its pid namespace, its cgroup) needs root and skips loudly elsewhere.

mod exec_common;

use std::fs;
use std::time::Duration;

use agent::exec::{open_terminal, JobEntry, JobTerminal, SandboxOptions, TerminalSize};
use exec_common::{entry_of, eventually, rlimit_launcher, sandboxed, started, DEADLINE};

async fn open(entry: &JobEntry, command: &[&str], size: TerminalSize) -> JobTerminal {
    open_for(entry, command, size, Duration::from_secs(60)).await
}

async fn open_for(
    entry: &JobEntry,
    command: &[&str],
    size: TerminalSize,
    timeout: Duration,
) -> JobTerminal {
    let entry = entry.clone();
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        open_terminal(&entry, &command, size, "xterm-256color", timeout)
    })
    .await
    .expect("join")
    .expect("open the terminal")
}

/// What a terminal showed, read as it comes.
struct Screen {
    text: String,
}

impl Screen {
    fn new() -> Screen {
        Screen {
            text: String::new(),
        }
    }

    /// Reads until `marker` appears after what was already consumed; returns the text up to and
    /// including it. Fails the test after [`DEADLINE`] or when the terminal closes first.
    async fn until(&mut self, terminal: &JobTerminal, marker: &str) -> String {
        let reading = async {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(at) = self.text.find(marker) {
                    let upto: String = self.text.drain(..at + marker.len()).collect();
                    return upto;
                }
                let n = terminal.read(&mut buf).await.expect("read the terminal");
                assert!(
                    n > 0,
                    "the terminal closed before {marker:?}: {:?}",
                    self.text
                );
                self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        };
        tokio::time::timeout(DEADLINE, reading)
            .await
            .unwrap_or_else(|_| panic!("no {marker:?} on the terminal: {:?}", self.text))
    }

    /// Reads to the terminal's end; returns everything not consumed yet.
    async fn read_to_end(&mut self, terminal: &JobTerminal) -> String {
        let reading = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = terminal.read(&mut buf).await.expect("read the terminal");
                if n == 0 {
                    return std::mem::take(&mut self.text);
                }
                self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        };
        tokio::time::timeout(DEADLINE, reading)
            .await
            .unwrap_or_else(|_| panic!("the terminal did not close: {:?}", self.text))
    }
}

/// Host pids of the processes whose command line is exactly `args`.
fn processes(args: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| exec_common::alive(*pid))
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

const SIZE: TerminalSize = TerminalSize { cols: 80, rows: 24 };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_in_a_jobs_terminal_sees_a_terminal_and_runs_what_is_typed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let job = started(&launcher, tmp.path(), "tty", "echo ready; sleep 60").await;
    let entry = entry_of(&job);
    let terminal = open(&entry, &["sh"], SIZE).await;
    let mut screen = Screen::new();

    // Markers are computed by the shell, so the echo of what was typed never matches them.
    terminal
        .write_all(
            b"test -t 0 && test -t 1 && echo T''TY; echo term=$TERM; stty size; echo E$((0))ND\n",
        )
        .await
        .expect("type");
    let shown = screen.until(&terminal, "E0ND").await;
    assert!(shown.contains("TTY\r\n"), "{shown:?}");
    assert!(shown.contains("term=xterm-256color\r\n"), "{shown:?}");
    assert!(shown.contains("24 80\r\n"), "{shown:?}");

    terminal
        .resize(TerminalSize {
            cols: 100,
            rows: 30,
        })
        .expect("resize");
    terminal
        .write_all(b"stty size; echo E$((1))ND\n")
        .await
        .expect("type");
    let shown = screen.until(&terminal, "E1ND").await;
    assert!(shown.contains("30 100\r\n"), "{shown:?}");

    // Typed input is echoed by the terminal and runs.
    terminal.write_all(b"echo $((6*7))\n").await.expect("type");
    let shown = screen.until(&terminal, "42\r\n").await;
    assert!(
        shown.contains("echo $((6*7))"),
        "the input is echoed: {shown:?}"
    );

    // Ctrl-C interrupts the foreground command, and the shell goes on.
    terminal.write_all(b"sleep 1001\n").await.expect("type");
    eventually("sleep to run in the foreground", || {
        !processes(&["sleep", "1001"]).is_empty()
    })
    .await;
    terminal.write_all(&[0x03]).await.expect("Ctrl-C");
    terminal.write_all(b"echo R$?X\n").await.expect("type");
    let shown = screen.until(&terminal, "R130X").await;
    assert!(!shown.is_empty());
    assert!(
        processes(&["sleep", "1001"]).is_empty(),
        "sleep was interrupted"
    );

    terminal.write_all(b"exit 3\n").await.expect("type");
    screen.read_to_end(&terminal).await;
    let exit = terminal.wait().await.expect("wait");
    assert_eq!(exit.exit_code, Some(3), "{exit:?}");
    assert_eq!((exit.signal, exit.timed_out), (None, false));
    drop(terminal);

    // A program that does not exist reads like a shell's answer.
    let missing = open(&entry, &["no-such-program-here"], SIZE).await;
    Screen::new().read_to_end(&missing).await;
    let exit = missing.wait().await.expect("wait");
    assert_eq!(exit.exit_code, Some(127), "{exit:?}");
    assert!(
        exit.message
            .as_deref()
            .is_some_and(|m| m.contains("cannot run")),
        "{exit:?}"
    );

    job.cancel(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_session_ends_its_command_and_what_runs_in_its_foreground() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let job = started(&launcher, tmp.path(), "tty-kill", "echo ready; sleep 60").await;
    let entry = entry_of(&job);
    let terminal = open(&entry, &["sh"], SIZE).await;
    terminal.write_all(b"sleep 1002\n").await.expect("type");
    eventually("sleep to run", || !processes(&["sleep", "1002"]).is_empty()).await;
    terminal.kill();
    let exit = tokio::time::timeout(DEADLINE, terminal.wait())
        .await
        .expect("the session ends")
        .expect("wait");
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    eventually("the foreground sleep to end", || {
        processes(&["sleep", "1002"]).is_empty()
    })
    .await;
    assert!(job.try_report().is_none(), "the job itself goes on");
    job.cancel(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_timeout_is_ended_and_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let job = started(&launcher, tmp.path(), "tty-timeout", "echo ready; sleep 60").await;
    let entry = entry_of(&job);
    let terminal = open_for(&entry, &["sleep", "1003"], SIZE, Duration::from_secs(1)).await;
    let exit = tokio::time::timeout(DEADLINE, terminal.wait())
        .await
        .expect("the session ends at its timeout")
        .expect("wait");
    assert!(exit.timed_out, "{exit:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    eventually("the command to be gone", || {
        processes(&["sleep", "1003"]).is_empty()
    })
    .await;
    assert!(job.try_report().is_none(), "the job itself goes on");
    job.cancel(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_sandbox_the_terminal_is_the_jobs_user_in_its_namespaces_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = sandboxed(tmp.path(), SandboxOptions::default()) else {
        return;
    };
    let job = started(&launcher, tmp.path(), "tty-boxed", "echo ready; sleep 60").await;
    let entry = entry_of(&job);
    let uid = entry.uid.expect("a sandboxed job has a user");
    let procs_file = entry
        .cgroups
        .first()
        .map(|g| g.join("cgroup.procs"))
        .expect("a cgroup");
    let members = || {
        fs::read_to_string(&procs_file)
            .expect("cgroup.procs")
            .lines()
            .count()
    };
    let before = members();

    let terminal = open(&entry, &["sh"], SIZE).await;
    let mut screen = Screen::new();
    let ours = std::process::id();
    terminal
        .write_all(
            format!(
                "echo uid=$(id -u)=; test -e /proc/{ours} && echo SE''EN; echo procs=$(ls /proc | grep -c '^[0-9]')=; echo E$((0))ND\n"
            )
            .as_bytes(),
        )
        .await
        .expect("type");
    let shown = screen.until(&terminal, "E0ND").await;
    assert!(shown.contains(&format!("uid={uid}=")), "{shown:?}");
    assert!(
        !shown.contains("SEEN"),
        "the agent's processes are out of sight: {shown:?}"
    );
    let procs: u32 = shown
        .split("procs=")
        .nth(2)
        .and_then(|rest| rest.split('=').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no process count in {shown:?}"));
    assert!(procs < 10, "its own pid namespace: {shown:?}");

    terminal.write_all(b"sleep 1003\n").await.expect("type");
    eventually("sleep to run", || !processes(&["sleep", "1003"]).is_empty()).await;
    assert!(
        members() > before,
        "the session's processes are in the job's cgroup"
    );
    drop(terminal);
    eventually("the session's processes to be gone", || {
        processes(&["sleep", "1003"]).is_empty() && members() == before
    })
    .await;
    assert!(job.try_report().is_none(), "the job itself goes on");
    job.cancel(Duration::from_secs(1)).await;
}
