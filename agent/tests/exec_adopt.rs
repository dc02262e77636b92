//! Re-adoption after an agent restart: a still-running job is taken over (status, logs, cancel), a process
//! that only reuses the pid or group is refused.

mod exec_common;

use std::time::Duration;

use agent::exec::{LogStream, ProcessHandle};
use exec_common::{alive, eventually, field, read_all, rlimit_launcher, shell_spec, touch};

#[tokio::test]
async fn a_restarted_agent_adopts_a_running_job_with_its_logs_and_exit_code() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first_agent = rlimit_launcher(tmp.path());
    let go = tmp.path().join("go");
    let script = format!(
        "echo before; while [ ! -e '{}' ]; do sleep 0.02; done; echo after; echo late >&2; exit 7",
        go.display()
    );
    let spec = shell_spec(tmp.path(), "adopt", &script);
    let job = first_agent.launch(&spec).expect("launch");
    eventually("the first output", || {
        read_all(&spec.log.dir, LogStream::Stdout) == "before\n"
    })
    .await;

    // The agent goes away; what it persisted survives the trip through storage.
    let stored = serde_json::to_vec(&job.detach()).expect("serialize");
    let handle: ProcessHandle = serde_json::from_slice(&stored).expect("deserialize");
    assert!(alive(handle.pid), "the job outlives its agent");

    let second_agent = rlimit_launcher(tmp.path());
    let adopted = second_agent.adopt(&handle).expect("the job is still ours");
    assert!(adopted.is_adopted());
    assert_eq!(adopted.pid(), handle.pid);
    assert!(adopted.try_report().is_none());
    touch(&go);
    let report = adopted.wait().await;
    assert_eq!(report.exit_code, Some(7), "{report:?}");
    assert_eq!(report.signal, None);
    assert!(!report.cancelled);
    assert!(report.cpu_seconds.is_some(), "{report:?}");
    assert!(report.wall_seconds > 0.0);
    // Output written after the restart continues the same files at the same offsets.
    assert_eq!(
        read_all(&spec.log.dir, LogStream::Stdout),
        "before\nafter\n"
    );
    assert_eq!(read_all(&spec.log.dir, LogStream::Stderr), "late\n");
}

#[tokio::test]
async fn an_adopted_job_can_be_cancelled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let script = "trap '' TERM; sleep 60 & echo child=$!; echo ready; wait";
    let spec = shell_spec(tmp.path(), "adopt-cancel", script);
    let job = launcher.launch(&spec).expect("launch");
    eventually("the job to be ready", || {
        read_all(&spec.log.dir, LogStream::Stdout).contains("ready")
    })
    .await;
    let child: i32 = field(&read_all(&spec.log.dir, LogStream::Stdout), "child")
        .and_then(|p| p.parse().ok())
        .expect("child pid");
    let handle = job.detach();
    let adopted = rlimit_launcher(tmp.path()).adopt(&handle).expect("adopted");
    let report = adopted.cancel(Duration::from_millis(200)).await;
    assert!(report.cancelled);
    assert!(!report.succeeded());
    // The wrapper died by SIGKILL before recording a status: unknown, not invented.
    assert_eq!(
        (report.exit_code, report.signal),
        (None, None),
        "{report:?}"
    );
    assert!(!alive(handle.pid));
    assert!(!alive(child));
}

#[tokio::test]
async fn a_mismatched_start_time_or_group_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let go = tmp.path().join("go");
    let script = format!("while [ ! -e '{}' ]; do sleep 0.02; done", go.display());
    let spec = shell_spec(tmp.path(), "mismatch", &script);
    let job = launcher.launch(&spec).expect("launch");
    let handle = job.handle().clone();

    let reused_pid = ProcessHandle {
        start_time: handle.start_time + 1,
        ..handle.clone()
    };
    assert!(launcher.adopt(&reused_pid).is_none());
    let other_group = ProcessHandle {
        pgid: handle.pgid + 1,
        ..handle.clone()
    };
    assert!(launcher.adopt(&other_group).is_none());
    let gone = ProcessHandle {
        pid: i32::MAX,
        pgid: i32::MAX,
        ..handle.clone()
    };
    assert!(launcher.adopt(&gone).is_none());
    for pid in [0, 1, -1] {
        let dangerous = ProcessHandle {
            pid,
            pgid: pid,
            ..handle.clone()
        };
        assert!(launcher.adopt(&dangerous).is_none(), "pid {pid}");
    }
    // The refusals touched nothing: the real job is still running and ends normally.
    assert!(alive(handle.pid));
    touch(&go);
    assert!(job.wait().await.succeeded());
}

#[tokio::test]
async fn a_job_that_ended_while_the_agent_was_away_reports_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let go = tmp.path().join("go");
    let script = format!(
        "echo out; while [ ! -e '{}' ]; do sleep 0.02; done; exit 4",
        go.display()
    );
    let spec = shell_spec(tmp.path(), "ended", &script);
    let job = launcher.launch(&spec).expect("launch");
    eventually("the output to be copied", || {
        read_all(&spec.log.dir, LogStream::Stdout) == "out\n"
    })
    .await;
    let handle = job.detach();
    touch(&go);
    // Detached, nobody reaps it (this test process is its parent and never waits): it stays a zombie
    // with the same start time, which is still the job's.
    eventually("the job to end", || !alive(handle.pid)).await;
    let adopted = launcher
        .adopt(&handle)
        .expect("an unreaped job is still ours");
    let report = adopted.wait().await;
    assert_eq!(report.exit_code, Some(4), "{report:?}");
    assert!(report.cpu_seconds.is_some());
}
