//! The CLI at a terminal: `--watch` redraws in place (cursor home, clear screen, a title line) when stdout is a
//! terminal. The CLI runs under `script`, which gives it a pseudo-terminal; the test reads what it draws until
//! two frames have arrived, then stops it. Skips, saying why, where `script` (util-linux) is missing.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::dev::DevProcess;
use common::{cli_json, meridian_bin};

const CLEAR: &str = "\u{1b}[H\u{1b}[2J";

/// Runs `command` (a shell line) under a pseudo-terminal and returns what it wrote once `enough` says so, or
/// everything it wrote by `deadline`.
fn at_a_terminal(
    command: &str,
    env: &[(&str, &str)],
    deadline: Duration,
    enough: impl Fn(&str) -> bool,
) -> String {
    let mut child = Command::new("script")
        .args(["-qfec", command, "/dev/null"])
        .envs(env.iter().copied())
        .env("MERIDIAN_CONFIG", "/nonexistent/meridian-tests/config.toml")
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start script");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + deadline;
    let mut seen = Vec::new();
    while Instant::now() < end {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(chunk) => {
                seen.extend(chunk);
                if enough(&String::from_utf8_lossy(&seen)) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn watch_redraws_in_place_at_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: `script` (util-linux) is not installed; it provides the pseudo-terminal"
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = [
        ("MERIDIAN_ADDR", addr.as_str()),
        ("MERIDIAN_TOKEN", &dev.token),
    ];
    cli_json(
        &[
            "job", "run", "-o", "json", "--name", "watched", "--", "true",
        ],
        &env,
    );

    let line = format!("{} job list --watch --interval 200ms", meridian_bin());
    let frames = |text: &str| text.matches(CLEAR).count();
    // Three clears: the frame between the second and the third is whole.
    let drawn = at_a_terminal(&line, &env, Duration::from_secs(30), |t| frames(t) >= 3);
    assert!(frames(&drawn) >= 3, "redraws at a terminal: {drawn:?}");
    let frame = drawn.split(CLEAR).nth(2).unwrap_or_default();
    assert!(
        frame.contains("every 200ms"),
        "the title says the interval: {frame:?}"
    );
    assert!(frame.contains("(Ctrl-C to stop)"), "{frame:?}");
    assert!(
        frame.contains("watched"),
        "the frame holds the table: {frame:?}"
    );
}
