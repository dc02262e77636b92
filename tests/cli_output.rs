//! The CLI's output for people and scripts, as a real process against `meridian dev`: lists newest first,
//! `--limit`, an AGE column, no Unix milliseconds and no raw JSON in any table, RFC 3339 times in `-o json`,
//! `--watch` printing a new table each interval (and `job status --watch` ending with the job); and a reply that does not fit the API's types failing
//! cleanly instead of panicking.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::dev::DevProcess;
use common::*;
use serde_json::Value;

/// The first run of 13 or more digits in `text` (Unix milliseconds, as the API writes times).
fn epoch_ms(text: &str) -> Option<String> {
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
        } else if run.len() >= 13 {
            return Some(run);
        } else {
            run.clear();
        }
    }
    None
}

/// Whether `s` is an RFC 3339 time as the CLI writes it: `2026-11-02T10:00:00.000Z`.
fn is_rfc3339(s: &Value) -> bool {
    let Some(s) = s.as_str() else { return false };
    let b = s.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

/// Stdout of a successful table-mode run.
fn table(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = cli(args, env);
    assert!(
        out.status.success(),
        "meridian {args:?} failed with {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The values of `field` in a JSON array.
fn column<'a>(items: &'a Value, field: &str) -> Vec<&'a Value> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"))
        .iter()
        .map(|item| &item[field])
        .collect()
}

/// Asserts RFC 3339 texts that never increase (newest first).
fn newest_first(times: &[&Value], what: &str) {
    assert!(times.iter().all(|t| is_rfc3339(t)), "{what}: {times:?}");
    let texts: Vec<&str> = times.iter().filter_map(|t| t.as_str()).collect();
    assert!(
        texts.windows(2).all(|w| w[0] >= w[1]),
        "{what} not newest first: {texts:?}"
    );
}

#[test]
fn lists_and_tables_read_for_people_and_json_carries_rfc3339_times() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("state"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);

    // Made one after another, so each is newer than the one before.
    for name in ["alpha", "beta", "gamma"] {
        table(&["project", "create", name], &env);
    }
    for name in ["k1", "k2"] {
        table(&["key", "create", name, "--role", "viewer"], &env);
    }
    for name in ["s1", "s2"] {
        table(&["secret", "put", name, "--value", "v"], &env);
    }
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(table(&["job", "run", "--", "true"], &env).trim().to_owned());
    }

    // Newest first, and --limit keeps the newest.
    let projects = cli_json(&["project", "list", "-o", "json"], &env);
    let names: Vec<&str> = column(&projects, "name")
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(names, ["gamma", "beta", "alpha", "default"]);
    newest_first(&column(&projects, "created_at"), "projects");
    let two = cli_json(&["project", "list", "--limit", "2", "-o", "json"], &env);
    assert_eq!(
        column(&two, "name"),
        [&Value::from("gamma"), &Value::from("beta")]
    );

    let listed = cli_json(&["job", "list", "-o", "json"], &env);
    let ids: Vec<&str> = column(&listed, "id")
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    let newest: Vec<&str> = jobs.iter().rev().map(String::as_str).collect();
    assert_eq!(ids, newest, "jobs newest first");
    newest_first(&column(&listed, "created_at"), "jobs");
    let one = cli_json(&["job", "list", "--limit", "1", "-o", "json"], &env);
    assert_eq!(column(&one, "id"), [&Value::from(jobs[2].as_str())]);

    let keys = cli_json(&["key", "list", "-o", "json"], &env);
    let key_names: Vec<&str> = column(&keys, "name")
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(key_names[..2], ["k2", "k1"], "{keys}");
    newest_first(&column(&keys, "created_at"), "keys");
    assert!(
        column(&keys, "expires_at")
            .iter()
            .all(|t| t.is_null() || is_rfc3339(t)),
        "{keys}"
    );
    let secrets = cli_json(&["secret", "list", "-o", "json"], &env);
    assert_eq!(
        column(&secrets, "name")[..2],
        [&Value::from("s2"), &Value::from("s1")]
    );
    newest_first(&column(&secrets, "created_at"), "secrets");
    newest_first(
        &column(
            &cli_json(&["role", "list", "-o", "json"], &env),
            "created_at",
        ),
        "role bindings",
    );

    // The audit log: the newest first; --after reads forward in order. Times are RFC 3339.
    let audit = cli_json(&["audit", "list", "--limit", "5", "-o", "json"], &env);
    let seqs: Vec<u64> = column(&audit, "seq")
        .into_iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(seqs.len(), 5, "{audit}");
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    assert!(
        column(&audit, "at_ms").iter().all(|t| is_rfc3339(t)),
        "{audit}"
    );
    let forward = cli_json(
        &[
            "audit", "list", "--after", "1", "--limit", "2", "-o", "json",
        ],
        &env,
    );
    assert_eq!(column(&forward, "seq"), [&Value::from(2), &Value::from(3)]);

    // Nested times too.
    let me = cli_json(&["whoami", "-o", "json"], &env);
    assert!(is_rfc3339(&me["key"]["created_at"]), "{me}");
    assert!(is_rfc3339(&me["project"]["created_at"]), "{me}");
    let job = cli_json(&["job", "status", &jobs[0], "-o", "json"], &env);
    assert!(is_rfc3339(&job["created_at"]), "{job}");

    // Tables: an AGE column where the list has ages, and never Unix milliseconds.
    wait_for("the dev node to be listed", Duration::from_secs(30), || {
        let nodes = cli_json(&["node", "list", "-o", "json"], &env);
        (!nodes.as_array()?.is_empty()).then_some(())
    });
    for (args, age) in [
        (&["project", "list"][..], true),
        (&["key", "list"][..], true),
        (&["secret", "list"][..], true),
        (&["job", "list"][..], true),
        (&["node", "list"][..], true),
        (&["role", "list"][..], true),
        (&["certs", "deny-list"][..], true),
        (&["audit", "list"][..], false),
        (&["cluster", "status"][..], false),
        (&["project", "get", "alpha"][..], false),
        (&["project", "policy", "get", "alpha"][..], false),
        (&["job", "status", jobs[0].as_str()][..], false),
        (&["whoami"][..], false),
        (&["usage"][..], false),
    ] {
        let text = table(args, &env);
        assert!(!text.trim().is_empty(), "{args:?} printed nothing");
        if age {
            let header = text.lines().next().unwrap_or_default();
            assert!(
                header.split_whitespace().any(|h| h == "AGE"),
                "{args:?}: {header}"
            );
        }
        assert_eq!(
            epoch_ms(&text),
            None,
            "{args:?} shows Unix milliseconds:\n{text}"
        );
        assert!(
            !text.contains('{') && !text.contains("\":"),
            "{args:?} shows JSON:\n{text}"
        );
    }
    let listed = table(&["project", "list"], &env);
    let rows: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(rows, ["gamma", "beta", "alpha", "default"], "{listed}");
    let limited = table(&["project", "list", "--limit", "1"], &env);
    assert_eq!(
        limited.lines().count(),
        2,
        "a header and one row: {limited}"
    );

    // whoami for people: labelled lines, not JSON.
    let me = table(&["whoami"], &env);
    assert!(serde_json::from_str::<Value>(&me).is_err(), "{me}");
    let labels: Vec<&str> = me
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for label in ["principal", "key", "project", "bindings"] {
        assert!(labels.contains(&label), "no {label} line: {me}");
    }
    assert!(me.contains("platform-admin in platform"), "{me}");
}

#[test]
fn job_list_watch_prints_a_new_table_each_interval() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("state"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let id = table(&["job", "run", "--", "true"], &env).trim().to_owned();

    let mut watch = Command::new(meridian_bin())
        .args(["job", "list", "--watch", "--interval", "200ms"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start job list --watch");
    let stdout = watch.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Two tables, each with its header and the job, a blank line between them; the process keeps going.
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines
        .iter()
        .filter(|l: &&String| l.starts_with("ID "))
        .count()
        < 2
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(e) => panic!("waiting for a second table ({e}); got {lines:?}"),
        }
    }
    // The second table's rows, too.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        let job_row = line.starts_with(&id);
        lines.push(line);
        if job_row {
            break;
        }
    }
    assert!(
        watch.try_wait().expect("poll the watch").is_none(),
        "--watch ended by itself: {lines:?}"
    );
    let _ = watch.kill();
    let _ = watch.wait();
    let headers: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("ID "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(headers[0], 0, "{lines:?}");
    assert_eq!(
        lines[headers[1] - 1],
        "",
        "tables are apart by a blank line: {lines:?}"
    );
    assert!(lines[headers[1]].contains("AGE"), "{lines:?}");
    for table in [&lines[1..headers[1]], &lines[headers[1] + 1..]] {
        assert!(
            table.iter().any(|l| l.starts_with(&id)),
            "each table lists the job: {lines:?}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains('\u{1b}')),
        "no screen control codes into a pipe: {lines:?}"
    );
}

/// A loopback HTTP server that answers every request with `body` (status 200, JSON).
fn serve_forever(body: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            // Read the request head; these requests have no body worth reading.
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_reply_that_does_not_fit_fails_with_a_clear_error_not_a_panic() {
    let addr = serve_forever(r#"{"items": [{"id": 7, "name": "x"}], "next_page_token": ""}"#);
    let env = [
        ("MERIDIAN_ADDR", addr.as_str()),
        ("MERIDIAN_TOKEN", "mrd_x_y"),
    ];
    for args in [
        &["project", "list"][..],
        &["project", "list", "-o", "json"][..],
        &["whoami"][..],
        &["job", "list", "--watch", "--interval", "100ms"][..],
    ] {
        let out = cli(args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("does not read as"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a result");
    }
}

#[test]
fn job_status_watch_redraws_until_the_job_ends_then_exits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("state"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let id = ready_job(
        &env,
        &[],
        "echo ready; while [ ! -e go ]; do sleep 0.1; done",
    );

    let mut watch = Command::new(meridian_bin())
        .args(["job", "status", &id, "--watch", "--interval", "200ms"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start job status --watch");
    let stdout = watch.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines: Vec<String> = Vec::new();
    let mut released = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            // The watch ended by itself: its output is complete.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("waiting for the watch ({e}); got {lines:?}"),
        }
        if !released && lines.iter().any(|l| l.contains("running")) {
            // Seen running: let the job end.
            let out = cli(&["job", "exec", &id, "--", "touch", "go"], &env);
            assert!(out.status.success(), "{out:?}");
            released = true;
        }
    }
    let status = watch.wait().expect("the watch exits");
    assert!(status.success(), "{status:?}: {lines:?}");
    // Each frame opens with the job's `id` row: more than one was drawn, the first running, the last ended.
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("id "))
        .collect();
    assert!(starts.len() >= 2, "{lines:?}");
    let state_in = |frame: &[String]| {
        frame
            .iter()
            .find_map(|l| l.strip_prefix("state").map(|v| v.trim().to_owned()))
    };
    assert_eq!(
        state_in(&lines[starts[0]..starts[1]]).as_deref(),
        Some("running")
    );
    let last = &lines[starts[starts.len() - 1]..];
    assert_eq!(state_in(last).as_deref(), Some("succeeded"), "{lines:?}");
}
