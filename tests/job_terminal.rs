//! `meridian job exec -it` as a user runs it, at a terminal, against a real `meridian dev`: a shell inside a
//! running job answers what is typed, sees a terminal of this terminal's size and follows it when it is
//! resized, Ctrl-C interrupts its foreground command without ending it, and the CLI exits with the shell's
//! exit code; a CLI told to stop gives the terminal back. The CLI runs under `script`, which gives it a
//! pseudo-terminal; the test types into it and reads what it draws. Skips, saying why, where `script`
//! (util-linux) is missing. The same session over gRPC (`AttachJob`) closes the file.

mod common;

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::dev::DevProcess;
use common::{cli, meridian_bin, ready_job, wait_for};
use serde_json::Value;

/// How long any one thing the test waits for may take.
const PATIENCE: Duration = Duration::from_secs(30);

fn have_script() -> bool {
    if Command::new("script").arg("--version").output().is_ok() {
        return true;
    }
    eprintln!("SKIPPED: `script` (util-linux) is not installed; it provides the pseudo-terminal");
    false
}

fn started_job(env: &[(&str, &str)]) -> String {
    ready_job(
        env,
        &[],
        "echo job-state > state.txt; echo ready; sleep 300",
    )
}

/// A command running under `script` on a pseudo-terminal of a given size, typed into and read from.
struct AtATerminal {
    child: Child,
    input: ChildStdin,
    output: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl AtATerminal {
    fn start(command: &str, env: &[(&str, &str)], cols: u16, rows: u16) -> AtATerminal {
        // `stty` sets the size of script's terminal before the CLI reads it.
        AtATerminal::shell(
            &format!("stty cols {cols} rows {rows}; exec {command}"),
            env,
        )
    }

    /// Runs a shell line on the terminal.
    fn shell(line: &str, env: &[(&str, &str)]) -> AtATerminal {
        let mut child = Command::new("script")
            .args(["-qfec", line, "/dev/null"])
            .envs(env.iter().copied())
            .env("MERIDIAN_CONFIG", "/nonexistent/meridian-tests/config.toml")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start script");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let input = child.stdin.take().expect("piped stdin");
        let (tx, output) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        AtATerminal {
            child,
            input,
            output,
            seen: String::new(),
        }
    }

    fn type_in(&mut self, bytes: &[u8]) {
        self.input.write_all(bytes).expect("typing");
        self.input.flush().expect("typing");
    }

    /// Reads until `marker` appears after what was already consumed; returns what came before it.
    fn expect(&mut self, marker: &str) -> String {
        let end = Instant::now() + PATIENCE;
        loop {
            if let Some(at) = self.seen.find(marker) {
                let before = self.seen[..at].to_owned();
                self.seen.drain(..at + marker.len());
                return before;
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!(
                    "{marker:?} never appeared; the terminal showed {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Like [`expect`](Self::expect), typing `nudge` again each second until `marker` appears (a key
    /// whose effect depends on what the remote side is doing at the instant it arrives).
    fn expect_nudging(&mut self, marker: &str, nudge: &[u8]) -> String {
        let end = Instant::now() + PATIENCE;
        loop {
            if let Some(at) = self.seen.find(marker) {
                let before = self.seen[..at].to_owned();
                self.seen.drain(..at + marker.len());
                return before;
            }
            assert!(
                Instant::now() < end,
                "{marker:?} never appeared; the terminal showed {:?}",
                self.seen
            );
            self.type_in(nudge);
            let until = Instant::now() + Duration::from_secs(1);
            while let Ok(chunk) = self
                .output
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                self.seen.push_str(&String::from_utf8_lossy(&chunk));
                if self.seen.contains(marker) {
                    break;
                }
            }
        }
    }

    /// Waits for the command to end and returns its exit code and what it wrote to stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let end = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                let mut err = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                return (status.code(), err);
            }
            assert!(
                Instant::now() < end,
                "the CLI did not exit; the terminal showed {:?}",
                self.seen
            );
            // Drain what arrives meanwhile so the pipe never fills.
            if let Ok(chunk) = self.output.recv_timeout(Duration::from_millis(50)) {
                self.seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    }
}

impl Drop for AtATerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of `meridian job exec -it ID -- sh` itself: its command line is exactly these words (`script`
/// and its shell carry them inside a longer one).
fn cli_pid(id: &str) -> i32 {
    let words = [meridian_bin(), "job", "exec", "-it", id, "--", "sh"];
    let wanted: Vec<u8> = words
        .iter()
        .flat_map(|w| [w.as_bytes(), b"\0"].concat())
        .collect();
    wait_for("the CLI's pid", PATIENCE, || {
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
    })
}

/// Resizes the terminal the CLI with `pid` runs on (its stdin), as a user resizing a window would: the
/// kernel sends the CLI SIGWINCH.
fn resize_terminal_of(pid: i32, cols: u16, rows: u16) {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/fd/0"))
        .expect("the CLI's terminal");
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize`, which outlives the call, on a descriptor we own.
    let set = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&tty),
            libc::TIOCSWINSZ,
            &size,
        )
    };
    assert_eq!(set, 0, "resizing the terminal");
}

#[test]
fn a_shell_inside_a_job_is_interactive_and_its_exit_code_is_the_clis() {
    if !have_script() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let id = started_job(&env);

    let command = format!("{} job exec -it {id} -- sh", meridian_bin());
    let mut term = AtATerminal::start(&command, &env, 101, 37);
    // Markers are computed by the shell, so the echo of what was typed never matches them.
    term.type_in(b"echo A$((6*7))Z; cat state.txt\r");
    term.expect("A42Z");
    term.expect("job-state");
    // The job's terminal has this terminal's size and type.
    term.type_in(b"echo S$(stty size)E T${TERM}E; test -t 0 && echo I$((1+1))TTY\r");
    term.expect("S37 101E");
    term.expect("Txterm-256colorE");
    term.expect("I2TTY");
    // Resizing this terminal resizes the job's (each nudge asks again until the resize has gone through).
    resize_terminal_of(cli_pid(&id), 50, 10);
    term.expect_nudging("W10 50E", b"echo W$(stty size)E\r");
    // Ctrl-C interrupts the foreground command, not the shell.
    // (A ^C also drops what was typed ahead, so each nudge types the next line again.)
    term.type_in(b"echo R$((1+1))UN; sleep 100; echo after-$((1+1))sleep\r");
    term.expect("R2UN");
    let between = term.expect_nudging("B5Z", b"\x03echo B$((2+3))Z\r");
    assert!(!between.contains("after-2sleep"), "{between:?}");
    term.type_in(b"exit 7\r");
    let (code, stderr) = term.finish();
    assert_eq!(code, Some(7), "{stderr}");

    // The session is in the audit log with its command line.
    assert!(
        dev.audited("job.attach", &id, "terminal: sh"),
        "no job.attach record"
    );
    // And its end, once the relay has closed it.
    wait_for("the end of the session in the audit log", PATIENCE, || {
        dev.audited("job.attach.end", &id, "exit code 7 after")
            .then_some(())
    });
}

#[test]
fn the_job_keeps_running_after_the_session_and_a_missing_program_exits_127() {
    if !have_script() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let id = started_job(&env);

    let command = format!("{} job exec -it {id} -- no-such-program", meridian_bin());
    let term = AtATerminal::start(&command, &env, 80, 24);
    let (code, stderr) = term.finish();
    assert_eq!(code, Some(127), "{stderr}");

    // Leaving a session by killing the CLI ends it; the job itself goes on.
    let command = format!("{} job exec -it {id} -- sh", meridian_bin());
    let mut term = AtATerminal::start(&command, &env, 80, 24);
    term.type_in(b"echo U$((40+2))P\r");
    term.expect("U42P");
    drop(term);
    wait_for("the session's end in the audit log", PATIENCE, || {
        dev.audited("job.attach.end", &id, "the caller left")
            .then_some(())
    });
    let out = cli(&["job", "status", &id, "-o", "json"], &env);
    let job: Value = serde_json::from_slice(&out.stdout).expect("job");
    assert_eq!(job["state"], "running", "{job}");
    // And it can be entered again.
    let out = cli(&["job", "exec", &id, "--", "cat", "state.txt"], &env);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "job-state\n");
}

#[test]
fn a_terminal_needs_a_terminal_and_a_running_job() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    // -it with piped input is refused before anything is sent.
    let out = Command::new(meridian_bin())
        .args(["job", "exec", "-it", "job_whatever", "--", "sh"])
        .envs(env.iter().copied())
        .env("MERIDIAN_CONFIG", "/nonexistent/meridian-tests/config.toml")
        .stdin(Stdio::piped())
        .output()
        .expect("run the CLI");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("terminal"));
    // A job that ended cannot be entered: a conflict, as for `job exec`.
    let out = cli(&["job", "run", "--wait", "-o", "json", "--", "true"], &env);
    let job: Value = serde_json::from_slice(&out.stdout).expect("job");
    let id = job["id"].as_str().expect("id");
    let out = cli(&["job", "exec", "-t", id, "--", "sh"], &env);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("only a running job can be entered"),
        "{stderr}"
    );
}

#[test]
fn the_same_session_over_grpc() {
    use protocol::pb;
    use protocol::pb::attach_job_input::Input;
    use protocol::pb::terminal_output::Output;

    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let id = started_job(&env);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = pb::job_exec_service_client::JobExecServiceClient::new(channel);
        let authed = |inputs: Vec<pb::AttachJobInput>| {
            let mut req = tonic::Request::new(futures::stream::iter(inputs));
            let bearer = format!("Bearer {}", dev.token).parse().expect("metadata");
            req.metadata_mut().insert("authorization", bearer);
            req
        };
        // A stream that does not open with `open` is refused, naming it.
        let refused = client
            .attach_job(authed(vec![pb::AttachJobInput {
                input: Some(Input::Data(b"ls\r".to_vec())),
            }]))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().starts_with("open"), "{refused:?}");

        let (tx, rx) = tokio::sync::mpsc::channel::<pb::AttachJobInput>(4);
        let open = pb::AttachJobInput {
            input: Some(Input::Open(pb::AttachJobOpen {
                id: id.clone(),
                command: vec!["sh".into()],
                size: Some(pb::TerminalSize { cols: 70, rows: 20 }),
                ..Default::default()
            })),
        };
        tx.send(open).await.expect("queue");
        let mut req = tonic::Request::new(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        let bearer = format!("Bearer {}", dev.token).parse().expect("metadata");
        req.metadata_mut().insert("authorization", bearer);
        let mut outputs = client.attach_job(req).await.expect("opened").into_inner();
        let data = |bytes: &[u8]| pb::AttachJobInput {
            input: Some(Input::Data(bytes.to_vec())),
        };
        tx.send(data(b"echo G$((3*3))RPC $(stty size)\r"))
            .await
            .expect("send");
        let mut seen = String::new();
        let end = tokio::time::timeout(PATIENCE, async {
            let mut typing = Some(tx);
            while let Some(message) = outputs.message().await.expect("a message") {
                match message.output {
                    Some(Output::Data(bytes)) => {
                        seen.push_str(&String::from_utf8_lossy(&bytes));
                        if let Some(tx) = typing.take_if(|_| seen.contains("G9RPC 20 70")) {
                            tx.send(data(b"sleep 0.2; exit 5\r")).await.expect("send");
                            // Dropped here: closing our side (nothing more to type) leaves the
                            // session running until the shell exits.
                        }
                    }
                    Some(Output::End(end)) => return Some(end),
                    None => {}
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("no end; the session showed {seen:?}"));
        assert!(seen.contains("G9RPC 20 70"), "{seen:?}");
        assert_eq!(end.and_then(|e| e.exit_code), Some(5), "{seen:?}");
    });
}

#[test]
fn a_cli_told_to_stop_ends_the_session_and_gives_the_terminal_back() {
    if !have_script() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let id = started_job(&env);
    let line = format!(
        "{} job exec -it {id} -- sh; echo EXIT=$?; stty -a | tr ' ' '\\n' | grep -x -- '-*icanon'",
        meridian_bin()
    );
    let mut term = AtATerminal::shell(&line, &env);
    term.type_in(b"echo IN$((3+4))SIDE\r");
    term.expect("IN7SIDE");
    let cli_pid = cli_pid(&id);
    // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
    assert_eq!(unsafe { libc::kill(cli_pid, libc::SIGTERM) }, 0);
    term.expect("EXIT=143");
    // The terminal is back in canonical mode ("icanon", not "-icanon").
    let after = term.expect("icanon");
    assert!(!after.ends_with('-'), "{after:?}");
    let (code, stderr) = term.finish();
    assert_eq!(code, Some(0), "{stderr}");
    // The job goes on.
    let out = cli(&["job", "status", &id, "-o", "json"], &env);
    let job: Value = serde_json::from_slice(&out.stdout).expect("job");
    assert_eq!(job["state"], "running", "{job}");
}
