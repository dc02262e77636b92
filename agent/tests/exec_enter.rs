//! Running a command inside a running job (`exec::exec_in_job`) with real processes: it gets the job's
//! user, namespaces, cgroup, limits and working directory; its exit code, output and input travel; its
//! bounds hold; a job that ended is never entered. The sandboxed half needs root and skips loudly
//! elsewhere; the half without a sandbox runs everywhere.

mod exec_common;

use std::time::Duration;

use agent::exec::{exec_in_job, EnterError, ExecInput, ExecOutput, JobEntry, SandboxOptions};
use exec_common::{entry_of, rlimit_launcher, sandboxed, started};

fn input(command: &[&str]) -> ExecInput {
    ExecInput {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: Vec::new(),
        timeout: Duration::from_secs(20),
        max_output: 1 << 20,
    }
}

async fn run(entry: &JobEntry, input: ExecInput) -> Result<ExecOutput, EnterError> {
    let entry = entry.clone();
    tokio::task::spawn_blocking(move || exec_in_job(&entry, &input))
        .await
        .expect("join")
}

async fn sh(entry: &JobEntry, script: &str) -> ExecOutput {
    run(entry, input(&["sh", "-c", script]))
        .await
        .expect("exec")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn without_a_sandbox_the_command_runs_in_the_jobs_directory_with_its_exit_code_and_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let job = started(
        &launcher,
        tmp.path(),
        "plain",
        "echo hello-from-job > note.txt; echo ready; sleep 60",
    )
    .await;
    let entry = entry_of(&job);

    let out = sh(&entry, "cat note.txt; echo $MARKER; echo oops >&2; exit 7").await;
    assert_eq!(text(&out.stdout), "hello-from-job\nfrom-the-job\n");
    assert_eq!(text(&out.stderr), "oops\n");
    assert_eq!(
        (out.exit_code, out.signal, out.timed_out),
        (Some(7), None, false)
    );

    let mut with_stdin = input(&["sh", "-c", "tr a-z A-Z"]);
    with_stdin.stdin = b"shout this".to_vec();
    let out = run(&entry, with_stdin).await.expect("exec");
    assert_eq!(text(&out.stdout), "SHOUT THIS");

    // Output past the cap is dropped, and said.
    let mut capped = input(&["sh", "-c", "head -c 100000 /dev/zero"]);
    capped.max_output = 1000;
    let out = run(&entry, capped).await.expect("exec");
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.stdout_truncated && !out.stderr_truncated);

    // The timeout kills the command and whatever it started in its group.
    let mut slow = input(&["sh", "-c", "sleep 100 & sleep 100"]);
    slow.timeout = Duration::from_secs(1);
    let out = run(&entry, slow).await.expect("exec");
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.signal, Some(libc::SIGKILL));

    // A program that does not exist reads like a shell's answer.
    let out = run(&entry, input(&["no-such-program-here"]))
        .await
        .expect("exec");
    assert_eq!(out.exit_code, Some(127));
    assert!(text(&out.stderr).contains("cannot run"), "{out:?}");

    let report = job.cancel(Duration::from_secs(1)).await;
    assert!(report.cancelled);
    assert!(matches!(
        run(&entry, input(&["true"])).await,
        Err(EnterError::NotRunning)
    ));
}

#[tokio::test]
async fn in_a_sandbox_the_command_is_the_jobs_user_in_its_namespaces_and_cgroup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = sandboxed(tmp.path(), SandboxOptions::default()) else {
        return;
    };
    let job = started(
        &launcher,
        tmp.path(),
        "boxed",
        "echo inside > note.txt; echo ready; sleep 60",
    )
    .await;
    let other = started(
        &launcher,
        tmp.path(),
        "neighbour",
        "echo ready; exec sleep 61",
    )
    .await;
    let entry = entry_of(&job);
    let uid = entry.uid.expect("a sandboxed job has a user");

    let out = sh(
        &entry,
        "echo uid=$(id -u); echo groups=$(id -G); echo pwd=$(pwd); cat note.txt; \
         grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; \
         echo procs=$(ls /proc | grep -c '^[0-9]'); echo cgroup=$(cat /proc/self/cgroup | tail -1); \
         echo agentdir=$(ls /proc/1/root 2>&1 | head -1)",
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(stdout.contains(&format!("uid={uid}\n")), "{stdout}");
    assert!(stdout.contains(&format!("groups={uid}\n")), "{stdout}");
    assert!(
        stdout.contains(&format!("pwd={}\n", entry.workdir.display())),
        "{stdout}"
    );
    assert!(stdout.contains("inside\n"), "{stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    // Its own pid namespace: the job's init, sleep and this pipeline, never the node's processes.
    let procs: u32 = exec_common::field(&stdout, "procs")
        .and_then(|p| p.parse().ok())
        .expect("procs");
    assert!(procs < 10, "{stdout}");
    // The job's cgroup, named after the job.
    let group = entry
        .cgroups
        .first()
        .and_then(|g| g.file_name())
        .expect("a cgroup");
    let cgroup = exec_common::field(&stdout, "cgroup").unwrap_or_default();
    assert!(cgroup.contains(&*group.to_string_lossy()), "{stdout}");

    // The neighbour's files and processes are out of sight.
    let theirs = other.handle().state_dir.join("work");
    let out = sh(
        &entry,
        &format!(
            "ls {} >/dev/null 2>&1 && echo SE''EN; cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
            theirs.display()
        ),
    )
    .await;
    assert!(
        theirs.is_dir(),
        "the neighbour's directory exists on the host"
    );
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("SEEN"), "{stdout}");
    assert!(!stdout.contains("sleep 61"), "{stdout}");
    assert!(
        stdout.contains("sleep 60"),
        "its own processes are listed: {stdout}"
    );

    let report = job.cancel(Duration::from_secs(1)).await;
    assert!(report.cancelled);
    assert!(matches!(
        run(&entry, input(&["true"])).await,
        Err(EnterError::NotRunning)
    ));
    other.cancel(Duration::from_secs(1)).await;
}
