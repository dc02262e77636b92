//! A job's output through the CLI against a real `meridian dev`: `job logs` merges stdout and stderr in
//! the order they were written, picks one stream, starts at the last lines or at a time, prefixes lines
//! with RFC 3339 times; `job run --wait` streams the output and exits with the job's status, `--quiet`
//! prints none of it, `--wait-timeout` gives up with its own exit code while the job runs on; and on a
//! terminal, `--wait` shows the job's state changes.

mod common;

use std::process::{Command, Output};

use common::dev::DevProcess;
use common::*;

/// The job id `job run --wait` names on stderr.
fn job_id(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("job_"))
        .map(|w| w.trim_end_matches([':', ',']).to_owned())
        .unwrap_or_else(|| panic!("no job id in: {}", String::from_utf8_lossy(&out.stderr)))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn explain(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn output_is_merged_selected_and_streamed_while_waiting() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);

    // The job writes to its two streams in turn; the pauses are the job's own behaviour, so that the two
    // pipes are read apart and the order is the write order.
    let script = "echo out1; sleep 0.3; echo err1 >&2; sleep 0.3; echo out2";
    let run = cli(&["job", "run", "--wait", "--", "sh", "-c", script], &env);
    assert!(run.status.success(), "{}", explain(&run));
    // Waiting streams the merged output, and nothing else, to stdout (not a terminal here).
    assert_eq!(stdout(&run), "out1\nerr1\nout2\n", "{}", explain(&run));
    let stderr = String::from_utf8_lossy(&run.stderr);
    // Progress lines are for a terminal: stderr here is a pipe.
    assert!(!stderr.contains(": running"), "{stderr}");
    assert!(stderr.contains("succeeded"), "{stderr}");
    let id = job_id(&run);

    let logs = |args: &[&str]| {
        let mut all = vec!["job", "logs"];
        all.extend_from_slice(args);
        all.push(&id);
        let out = cli(&all, &env);
        assert!(out.status.success(), "{args:?}: {}", explain(&out));
        stdout(&out)
    };
    assert_eq!(logs(&[]), "out1\nerr1\nout2\n");
    assert_eq!(logs(&["--stdout"]), "out1\nout2\n");
    assert_eq!(logs(&["--stderr"]), "err1\n");
    assert_eq!(logs(&["--tail", "1"]), "out2\n");
    assert_eq!(logs(&["--tail", "2", "--stdout"]), "out1\nout2\n");
    assert_eq!(logs(&["-f"]), "out1\nerr1\nout2\n");

    // Each line with the time it was read: RFC 3339, in order.
    let stamped = logs(&["--timestamps"]);
    let lines: Vec<(u64, &str)> = stamped
        .lines()
        .map(|line| {
            let (time, text) = line.split_once(' ').expect("time, then the line");
            let ms = coordinator::api::parse_instant_ms(time)
                .unwrap_or_else(|e| panic!("{time:?} is not RFC 3339: {e}"));
            assert!(time.ends_with('Z') && time.contains('T'), "{time}");
            (ms, text)
        })
        .collect();
    let texts: Vec<&str> = lines.iter().map(|(_, t)| *t).collect();
    assert_eq!(texts, ["out1", "err1", "out2"], "{stamped}");
    assert!(lines[0].0 < lines[1].0, "{stamped}");
    // From the time the second line was read: that line and the next, in both forms of --since.
    let second = coordinator::api::format_rfc3339_ms(lines[1].0);
    assert_eq!(logs(&["--since", &second]), "err1\nout2\n");
    assert_eq!(logs(&["--since", "1h"]), "out1\nerr1\nout2\n");
    assert_eq!(
        logs(&["--stderr", "--timestamps"])
            .split_once(' ')
            .map(|(_, t)| t),
        Some("err1\n")
    );

    // --quiet waits and prints none of the output; a failure exits 7 after streaming what it wrote.
    let quiet = cli(
        &["job", "run", "--quiet", "--", "sh", "-c", "echo hidden"],
        &env,
    );
    assert!(quiet.status.success(), "{}", explain(&quiet));
    assert_eq!(stdout(&quiet), "");
    let failing = cli(
        &[
            "job",
            "run",
            "--follow",
            "--",
            "sh",
            "-c",
            "echo bye; exit 3",
        ],
        &env,
    );
    assert_eq!(failing.status.code(), Some(7), "{}", explain(&failing));
    assert_eq!(stdout(&failing), "bye\n");

    // A limit on the wait: its own exit code, the job runs on, and the message says how to follow it.
    let limited = cli(
        &["job", "run", "--wait-timeout", "1s", "--", "sleep", "30"],
        &env,
    );
    assert_eq!(limited.status.code(), Some(9), "{}", explain(&limited));
    let message = String::from_utf8_lossy(&limited.stderr);
    assert!(message.contains("keeps running"), "{message}");
    assert!(message.contains("meridian job logs -f"), "{message}");
    let sleeper = job_id(&limited);
    let status = cli_json(&["job", "status", &sleeper, "-o", "json"], &env);
    assert!(
        !["succeeded", "failed", "cancelled", "lost"]
            .contains(&status["state"].as_str().unwrap_or("")),
        "{status}"
    );
    let cancel = cli(&["job", "cancel", &sleeper], &env);
    assert!(cancel.status.success(), "{}", explain(&cancel));
}

/// `script` from util-linux gives the command a pseudo-terminal for stdin, stdout and stderr.
fn pty_runner() -> Option<&'static str> {
    let found = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then_some("script")
}

#[test]
fn on_a_terminal_wait_shows_the_state_changes() {
    let Some(script) = pty_runner() else {
        eprintln!(
            "SKIPPED on_a_terminal_wait_shows_the_state_changes: no `script` (util-linux) on this machine to give the CLI a terminal"
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let command = format!(
        "'{}' job run --wait -- sh -c 'sleep 1; echo finished'",
        meridian_bin()
    );
    let out = Command::new(script)
        .args(["-qfec", &command, "/dev/null"])
        .env("MERIDIAN_ADDR", &addr)
        .env("MERIDIAN_TOKEN", &dev.token)
        .env("MERIDIAN_CONFIG", "/nonexistent/meridian-tests/config.toml")
        .env_remove("MERIDIAN_PROJECT")
        .env_remove("MERIDIAN_CONTEXT")
        .env_remove("MERIDIAN_CACERT")
        .output()
        .expect("run script");
    let shown = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(out.status.success(), "{}", explain(&out));
    // The job's own output and its state as it changed, all on the one terminal.
    assert!(shown.contains("finished\n"), "{shown}");
    let id = shown
        .split_whitespace()
        .find(|w| w.starts_with("job_"))
        .map(|w| w.trim_end_matches(':').to_owned())
        .expect("the job id");
    assert!(
        shown.contains(&format!("job {id}: running on ")),
        "no state change shown: {shown}"
    );
    assert!(shown.contains(&format!("job {id} succeeded")), "{shown}");
    // Polls of an unchanged state say nothing new.
    assert_eq!(
        shown.matches(&format!("job {id}: running")).count(),
        1,
        "{shown}"
    );
}
