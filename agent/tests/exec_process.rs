//! Real processes through the launcher: sessions and process groups, working directories, the job's
//! environment and GPU pinning, exit codes and signals, captured logs, cancellation.

mod exec_common;

use std::path::Path;
use std::time::{Duration, Instant};

use agent::exec::{follow_logs, read_logs, ExecError, LogOptions, LogStream, Replica};
use exec_common::{alive, eventually, field, read_all, rlimit_launcher, shell_spec, touch};
use futures::StreamExt;

const IDENTITY_SCRIPT: &str = r#"
set -e
read -r stat < /proc/$$/stat
set -- ${stat##*") "}
echo "pgrp=$3"
echo "sid=$4"
echo "cwd=$(pwd)"
echo "cuda=[${CUDA_VISIBLE_DEVICES-unset}]"
echo "nvidia=[${NVIDIA_VISIBLE_DEVICES-unset}]"
echo "job=$MERIDIAN_JOB_ID"
echo "attempt=$MERIDIAN_ATTEMPT"
echo "replica=$MERIDIAN_REPLICA"
echo "replicas=$MERIDIAN_REPLICAS"
echo "hosts=[$MERIDIAN_REPLICA_HOSTS]"
echo "custom=$CUSTOM"
echo "manifest=${CARGO_MANIFEST_DIR-unset}"
echo "to stderr" >&2
"#;

#[tokio::test]
async fn a_job_runs_in_its_own_session_and_directory_with_pinned_gpus() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let mut spec = shell_spec(tmp.path(), "identity", IDENTITY_SCRIPT);
    spec.attempt = 3;
    spec.env.insert("CUSTOM".into(), "value with spaces".into());
    spec.gpu_uuids = vec![
        "GPU-8f6c1f4e-0000-1111-2222-333344445555".into(),
        "GPU-1a2b3c4d-6666-7777-8888-999900001111".into(),
    ];
    let job = launcher.launch(&spec).expect("launch");
    assert_eq!(job.pid(), job.pgid());
    assert!(job.start_time() > 0);
    assert!(!job.is_adopted());
    let report = job.wait().await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(report.exit_code, Some(0));

    let out = read_all(&spec.log.dir, LogStream::Stdout);
    let pid = job.pid().to_string();
    // The command is the wrapper's child, in the wrapper's session and process group.
    assert_eq!(field(&out, "pgrp"), Some(pid.as_str()), "{out}");
    assert_eq!(field(&out, "sid"), Some(pid.as_str()), "{out}");
    let work = launcher.state_dir(&spec.job_id, 3, 0).join("work");
    assert_eq!(field(&out, "cwd"), Some(work.to_str().expect("utf-8 path")));
    let pinned =
        "[GPU-8f6c1f4e-0000-1111-2222-333344445555,GPU-1a2b3c4d-6666-7777-8888-999900001111]";
    assert_eq!(field(&out, "cuda"), Some(pinned));
    assert_eq!(field(&out, "nvidia"), Some(pinned));
    assert_eq!(field(&out, "job"), Some(spec.job_id.as_str()));
    assert_eq!(field(&out, "attempt"), Some("3"));
    // Not a gang: replica 0 of 1, no hosts.
    assert_eq!(field(&out, "replica"), Some("0"));
    assert_eq!(field(&out, "replicas"), Some("1"));
    assert_eq!(field(&out, "hosts"), Some("[]"));
    assert_eq!(field(&out, "custom"), Some("value with spaces"));
    // Nothing of the agent's environment beyond the allowed base reaches the job.
    assert_eq!(field(&out, "manifest"), Some("unset"));
    assert_eq!(read_all(&spec.log.dir, LogStream::Stderr), "to stderr\n");
}

#[tokio::test]
async fn two_replicas_of_one_attempt_are_separate_processes_in_separate_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let go = tmp.path().join("go");
    let script = format!(
        "{IDENTITY_SCRIPT}\nwhile [ ! -e '{}' ]; do sleep 0.02; done",
        go.display()
    );
    let first = shell_spec(tmp.path(), "pair", &script);
    let mut second = first.clone();
    second.log = LogOptions::new(tmp.path().join("logs").join("pair-replica-1"));
    let hosts = vec!["10.0.0.1".to_string(), "10.0.0.1".to_string()];
    let place = |index| Replica {
        index,
        count: 2,
        hosts: hosts.clone(),
    };
    let zero = launcher
        .launch_replica(&first, &place(0))
        .expect("launch 0");
    let one = launcher
        .launch_replica(&second, &place(1))
        .expect("launch 1");
    assert_ne!(zero.pgid(), one.pgid());
    assert_eq!((zero.handle().replica, one.handle().replica), (0, 1));
    assert_ne!(zero.handle().state_dir, one.handle().state_dir);
    for (job, spec, index) in [(&zero, &first, 0), (&one, &second, 1)] {
        eventually("the replica's output", || {
            read_all(&spec.log.dir, LogStream::Stdout).contains("custom=")
        })
        .await;
        let out = read_all(&spec.log.dir, LogStream::Stdout);
        let pid = job.pid().to_string();
        assert_eq!(field(&out, "sid"), Some(pid.as_str()), "{out}");
        assert_eq!(field(&out, "replica"), Some(index.to_string().as_str()));
        assert_eq!(field(&out, "replicas"), Some("2"));
        assert_eq!(field(&out, "hosts"), Some("[10.0.0.1,10.0.0.1]"));
        let work = launcher.state_dir(&first.job_id, 1, index).join("work");
        assert_eq!(field(&out, "cwd"), Some(work.to_str().expect("utf-8 path")));
    }
    // Cancelling one replica leaves the other running.
    let cancelled = one.cancel(Duration::from_millis(500)).await;
    assert!(cancelled.cancelled);
    assert!(zero.try_report().is_none());
    assert!(alive(zero.pid()));
    touch(&go);
    assert!(zero.wait().await.succeeded());
}

#[tokio::test]
async fn a_cpu_job_gets_empty_gpu_variables_and_the_given_working_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let own_dir = tmp.path().join("chosen");
    std::fs::create_dir(&own_dir).expect("mkdir");
    let mut spec = shell_spec(tmp.path(), "cpu-only", IDENTITY_SCRIPT);
    spec.working_dir = Some(own_dir.clone());
    let job = launcher.launch(&spec).expect("launch");
    assert!(job.wait().await.succeeded());
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    assert_eq!(field(&out, "cuda"), Some("[]"), "{out}");
    assert_eq!(field(&out, "nvidia"), Some("[]"), "{out}");
    assert_eq!(
        field(&out, "cwd"),
        Some(own_dir.to_str().expect("utf-8 path"))
    );
}

#[tokio::test]
async fn exit_codes_signals_and_usage_are_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());

    let job = launcher
        .launch(&shell_spec(tmp.path(), "exit3", "exit 3"))
        .expect("launch");
    let report = job.wait().await;
    assert_eq!((report.exit_code, report.signal), (Some(3), None));
    assert!(!report.succeeded());
    assert!(!report.cancelled);

    let job = launcher
        .launch(&shell_spec(tmp.path(), "term", "kill -TERM $$"))
        .expect("launch");
    let report = job.wait().await;
    assert_eq!((report.exit_code, report.signal), (None, Some(15)));

    let job = launcher
        .launch(&shell_spec(tmp.path(), "kill", "kill -KILL $$"))
        .expect("launch");
    let report = job.wait().await;
    assert_eq!((report.exit_code, report.signal), (None, Some(9)));

    // Some CPU work, waited for through the wrapper: its usage is counted.
    let busy = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done";
    let job = launcher
        .launch(&shell_spec(tmp.path(), "busy", busy))
        .expect("launch");
    let report = job.wait().await;
    assert!(report.succeeded(), "{report:?}");
    assert!(report.cpu_seconds.expect("cpu time") > 0.0, "{report:?}");
    assert!(report.max_rss_bytes.expect("max rss") > 0, "{report:?}");
    assert!(report.wall_seconds > 0.0);
    // The report stays available.
    assert_eq!(job.try_report(), Some(report.clone()));
    assert_eq!(job.wait().await, report);
}

#[tokio::test]
async fn bad_specs_and_missing_commands_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let mut spec = shell_spec(tmp.path(), "missing", "");
    spec.command = "meridian-no-such-command".into();
    spec.args.clear();
    assert!(matches!(
        launcher.launch(&spec),
        Err(ExecError::CommandNotFound(_))
    ));
    let mut spec = shell_spec(tmp.path(), "nodir", "true");
    spec.working_dir = Some(tmp.path().join("does-not-exist"));
    assert!(matches!(
        launcher.launch(&spec),
        Err(ExecError::WorkingDir(_))
    ));
    let mut spec = shell_spec(tmp.path(), "badid", "true");
    spec.job_id = "../escape".into();
    assert!(matches!(
        launcher.launch(&spec),
        Err(ExecError::InvalidSpec(_))
    ));
    // A replica outside its gang runs nothing.
    let spec = shell_spec(tmp.path(), "badreplica", "true");
    let outside = Replica {
        index: 2,
        count: 2,
        hosts: vec![],
    };
    assert!(matches!(
        launcher.launch_replica(&spec, &outside),
        Err(ExecError::InvalidSpec(_))
    ));
    assert!(!launcher.state_dir(&spec.job_id, 1, 2).exists());
}

#[test]
fn launching_outside_a_runtime_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let spec = shell_spec(tmp.path(), "noruntime", "true");
    assert!(matches!(launcher.launch(&spec), Err(ExecError::NoRuntime)));
}

#[tokio::test]
async fn output_is_captured_rotated_and_read_back_from_offsets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done; echo done >&2";
    let mut spec = shell_spec(tmp.path(), "rotate", script);
    spec.log = LogOptions {
        dir: spec.log.dir.clone(),
        max_bytes: 4096,
        keep: 1000,
    };
    let job = launcher.launch(&spec).expect("launch");
    assert!(job.wait().await.succeeded());

    let expected: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(read_all(&spec.log.dir, LogStream::Stdout), expected);
    assert_eq!(read_all(&spec.log.dir, LogStream::Stderr), "done\n");
    let rotated = count_rotated(&spec.log.dir);
    assert!(rotated >= expected.len() / 4096, "{rotated} rotated files");
    let current = std::fs::metadata(spec.log.dir.join("stdout.log"))
        .expect("current file")
        .len();
    assert!(current <= 4096);

    // Reading from an offset in the middle of a rotated file.
    let offset = expected.find("line 1234\n").expect("present") as u64;
    let chunk = read_logs(&spec.log.dir, LogStream::Stdout, offset, 10).expect("read");
    assert_eq!(chunk.data, b"line 1234\n");
    assert_eq!(chunk.next_offset, offset + 10);
}

#[tokio::test]
async fn only_the_newest_rotated_files_are_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done";
    let mut spec = shell_spec(tmp.path(), "keep", script);
    spec.log = LogOptions {
        dir: spec.log.dir.clone(),
        max_bytes: 2048,
        keep: 2,
    };
    let job = launcher.launch(&spec).expect("launch");
    assert!(job.wait().await.succeeded());
    assert_eq!(count_rotated(&spec.log.dir), 2);
    let expected: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    let kept = read_all(&spec.log.dir, LogStream::Stdout);
    assert!(
        kept.len() <= 3 * 2048 && kept.len() > 2 * 2048,
        "{}",
        kept.len()
    );
    assert!(expected.ends_with(&kept));
    // An offset that was rotated away answers from the oldest byte kept.
    let chunk = read_logs(&spec.log.dir, LogStream::Stdout, 0, 100).expect("read");
    assert_eq!(chunk.start_offset() as usize, expected.len() - kept.len());
}

#[tokio::test]
async fn followers_see_output_while_the_job_runs_and_end_with_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let go = tmp.path().join("go");
    let script = format!(
        "echo first; while [ ! -e '{}' ]; do sleep 0.02; done; echo second",
        go.display()
    );
    let spec = shell_spec(tmp.path(), "follow", &script);
    let job = launcher.launch(&spec).expect("launch");
    let mut follow = Box::pin(follow_logs(
        spec.log.dir.clone(),
        LogStream::Stdout,
        0,
        Duration::from_millis(20),
    ));
    let first = tokio::time::timeout(exec_common::DEADLINE, follow.next())
        .await
        .expect("first output in time")
        .expect("stream open")
        .expect("read");
    assert_eq!(first.data, b"first\n");
    assert_eq!(first.next_offset, 6);
    assert!(job.try_report().is_none(), "the job is still waiting");
    touch(&go);
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(exec_common::DEADLINE, follow.next())
        .await
        .expect("the follower ends when the job does")
    {
        rest.extend_from_slice(&chunk.expect("read").data);
    }
    assert_eq!(rest, b"second\n");
    assert!(job.wait().await.succeeded());
}

#[tokio::test]
async fn cancel_kills_a_group_that_ignores_sigterm_after_the_grace_period() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    // The command and its child both ignore SIGTERM.
    let script = "trap '' TERM; sleep 60 & echo child=$!; echo ready; wait; echo unreachable";
    let spec = shell_spec(tmp.path(), "stubborn", script);
    let job = launcher.launch(&spec).expect("launch");
    eventually("the job to start its child", || {
        read_all(&spec.log.dir, LogStream::Stdout).contains("ready")
    })
    .await;
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    let child: i32 = field(&out, "child")
        .and_then(|p| p.parse().ok())
        .expect("child pid");
    assert!(alive(child));

    let grace = Duration::from_millis(400);
    let started = Instant::now();
    let report = job.cancel(grace).await;
    let took = started.elapsed();
    assert!(
        took >= grace,
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(report.cancelled);
    assert!(!report.succeeded());
    assert_eq!(report.signal, Some(9), "{report:?}");
    assert!(!alive(child), "the command's child survived the cancel");
    assert!(!alive(job.pid()));
    assert!(!read_all(&spec.log.dir, LogStream::Stdout).contains("unreachable"));
    // Cancelling again answers the same report.
    assert_eq!(job.cancel(grace).await, report);
}

#[tokio::test]
async fn cancel_of_a_cooperative_job_ends_at_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let spec = shell_spec(
        tmp.path(),
        "polite",
        "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.02; done",
    );
    let job = launcher.launch(&spec).expect("launch");
    eventually("the job to be ready", || {
        read_all(&spec.log.dir, LogStream::Stdout).contains("ready")
    })
    .await;
    let report = job.cancel(Duration::from_secs(60)).await;
    assert!(report.cancelled);
    assert!(
        !report.succeeded(),
        "a cancelled job never counts as succeeded"
    );
    assert_eq!(report.exit_code, Some(0), "{report:?}");
    assert!(read_all(&spec.log.dir, LogStream::Stdout).contains("bye"));
}

#[tokio::test]
async fn processes_left_behind_by_a_finished_job_are_killed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());
    let spec = shell_spec(tmp.path(), "straggler", "sleep 60 & echo bg=$!; exit 0");
    let job = launcher.launch(&spec).expect("launch");
    let report = job.wait().await;
    assert!(report.succeeded(), "{report:?}");
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    let bg: i32 = field(&out, "bg")
        .and_then(|p| p.parse().ok())
        .expect("background pid");
    eventually("the background process to end", || !alive(bg)).await;
}

fn count_rotated(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("log dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("stdout.log."))
                .is_some_and(|rest| rest.len() == 20 && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}
