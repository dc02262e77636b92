//! The supervisor's pure decisions: what to launch, stop or report for a set of local attempts and the
//! coordinator's assignments; when the next timeout falls due; how an ended process is reported.

use std::time::Duration;

use agent::exec::ExitReport;
use agent::jobs::reconcile::{
    exit_summary, next_timeout, reconcile, Action, LocalAttempt, LocalState,
};
use agent::jobs::{Assignment, AttemptKey, StopReason};

fn assignment(job: &str, attempt: u32) -> Assignment {
    Assignment {
        job_id: job.into(),
        attempt,
        replica: 0,
        replicas: 0,
        replica_hosts: vec![],
        project_id: "p".into(),
        command: "true".into(),
        args: vec![],
        env: Default::default(),
        working_dir: String::new(),
        cpu_millis: 0,
        memory_bytes: 0,
        gpu_uuids: vec![],
        timeout_ms: 0,
        cancel: false,
        cancel_grace_ms: 2_000,
        secret_env: Default::default(),
        launch_error: String::new(),
        network: String::new(),
        secrets_in_env: true,
    }
}

fn cancelled(job: &str, attempt: u32, grace_ms: u64) -> Assignment {
    Assignment {
        cancel: true,
        cancel_grace_ms: grace_ms,
        ..assignment(job, attempt)
    }
}

/// Replica `replica` of a gang of `replicas`.
fn replica(job: &str, attempt: u32, replica: u32, replicas: u32) -> Assignment {
    Assignment {
        replica,
        replicas,
        ..assignment(job, attempt)
    }
}

fn running(job: &str, attempt: u32) -> LocalAttempt {
    running_replica(job, attempt, 0)
}

fn running_replica(job: &str, attempt: u32, replica: u32) -> LocalAttempt {
    LocalAttempt {
        key: AttemptKey::new(job, attempt, replica),
        state: LocalState::Running {
            started_unix_ms: 1_000,
            timeout_ms: 0,
            cancel_grace_ms: 3_000,
            stopping: None,
        },
    }
}

fn with_timeout(mut local: LocalAttempt, timeout_ms: u64) -> LocalAttempt {
    if let LocalState::Running {
        timeout_ms: ref mut t,
        ..
    } = local.state
    {
        *t = timeout_ms;
    }
    local
}

fn stopping(mut local: LocalAttempt, reason: StopReason) -> LocalAttempt {
    if let LocalState::Running {
        stopping: ref mut s,
        ..
    } = local.state
    {
        *s = Some(reason);
    }
    local
}

fn finished(job: &str, attempt: u32, final_reported: bool) -> LocalAttempt {
    LocalAttempt {
        key: AttemptKey::new(job, attempt, 0),
        state: LocalState::Finished { final_reported },
    }
}

fn stop(job: &str, attempt: u32, reason: StopReason, grace_ms: u64) -> Action {
    stop_replica(job, attempt, 0, reason, grace_ms)
}

fn stop_replica(
    job: &str,
    attempt: u32,
    replica: u32,
    reason: StopReason,
    grace_ms: u64,
) -> Action {
    Action::Stop {
        key: AttemptKey::new(job, attempt, replica),
        reason,
        grace: Duration::from_millis(grace_ms),
    }
}

const NOW: u64 = 10_000;

#[test]
fn new_assignments_are_launched_in_order_and_known_ones_are_not() {
    let assigned = [assignment("b", 1), assignment("a", 1), assignment("c", 2)];
    let local = [running("c", 2)];
    assert_eq!(
        reconcile(&local, Some(&assigned), NOW),
        vec![
            Action::Launch(assignment("b", 1)),
            Action::Launch(assignment("a", 1))
        ]
    );
}

#[test]
fn a_finished_attempt_is_never_launched_again() {
    let assigned = [assignment("a", 1), assignment("b", 1)];
    let local = [finished("a", 1, true), finished("b", 1, true)];
    assert!(reconcile(&local, Some(&assigned), NOW).is_empty());
}

#[test]
fn a_new_attempt_of_a_known_job_is_a_different_attempt() {
    let assigned = [assignment("a", 2)];
    let local = [finished("a", 1, true)];
    assert_eq!(
        reconcile(&local, Some(&assigned), NOW),
        vec![Action::Launch(assignment("a", 2))]
    );
}

#[test]
fn an_attempt_listed_twice_is_launched_once() {
    let assigned = [assignment("a", 1), assignment("a", 1)];
    assert_eq!(
        reconcile(&[], Some(&assigned), NOW),
        vec![Action::Launch(assignment("a", 1))]
    );
}

#[test]
fn a_replica_is_launched_while_its_sibling_of_the_same_attempt_runs() {
    let assigned = [
        replica("g", 1, 0, 3),
        replica("g", 1, 1, 3),
        replica("g", 1, 2, 3),
    ];
    let local = [running_replica("g", 1, 0)];
    assert_eq!(
        reconcile(&local, Some(&assigned), NOW),
        vec![
            Action::Launch(replica("g", 1, 1, 3)),
            Action::Launch(replica("g", 1, 2, 3))
        ]
    );
    // A replica listed twice counts once; its siblings are not duplicates of it.
    let twice = [
        replica("g", 1, 1, 2),
        replica("g", 1, 1, 2),
        replica("g", 1, 0, 2),
    ];
    assert_eq!(
        reconcile(&[], Some(&twice), NOW),
        vec![
            Action::Launch(replica("g", 1, 1, 2)),
            Action::Launch(replica("g", 1, 0, 2))
        ]
    );
    // A finished replica is never launched again, and does not hold back its sibling.
    let local = [LocalAttempt {
        key: AttemptKey::new("g", 1, 1),
        state: LocalState::Finished {
            final_reported: true,
        },
    }];
    let assigned = [replica("g", 1, 0, 2), replica("g", 1, 1, 2)];
    assert_eq!(
        reconcile(&local, Some(&assigned), NOW),
        vec![Action::Launch(replica("g", 1, 0, 2))]
    );
}

#[test]
fn only_the_replica_no_longer_assigned_or_cancelled_or_due_is_stopped() {
    let local = [
        running_replica("g", 1, 0),
        running_replica("g", 1, 1),
        with_timeout(running_replica("g", 1, 2), 5_000),
    ];
    // Replica 1 moved away; 0 stays; 2 is still assigned but past its timeout.
    let assigned = [replica("g", 1, 0, 3), replica("g", 1, 2, 3)];
    assert_eq!(
        reconcile(&local, Some(&assigned), NOW),
        vec![
            stop_replica("g", 1, 1, StopReason::Unassigned, 3_000),
            stop_replica("g", 1, 2, StopReason::TimedOut, 3_000),
        ]
    );
    // A cancel names each replica it applies to.
    let assigned = [
        replica("g", 1, 0, 3),
        Assignment {
            cancel: true,
            cancel_grace_ms: 400,
            ..replica("g", 1, 1, 3)
        },
        replica("g", 1, 2, 3),
    ];
    let local = [running_replica("g", 1, 0), running_replica("g", 1, 1)];
    assert_eq!(
        reconcile(&local, Some(&assigned), NOW),
        vec![
            stop_replica("g", 1, 1, StopReason::Cancelled, 400),
            Action::Launch(replica("g", 1, 2, 3)),
        ]
    );
    // A stale replica's end is reported only for that replica.
    let local = [
        LocalAttempt {
            key: AttemptKey::new("g", 1, 1),
            state: LocalState::Finished {
                final_reported: false,
            },
        },
        running_replica("g", 1, 0),
    ];
    assert_eq!(
        reconcile(
            &local,
            Some(&[replica("g", 1, 0, 2), replica("g", 1, 1, 2)]),
            NOW
        ),
        vec![Action::ReportEnd {
            key: AttemptKey::new("g", 1, 1)
        }]
    );
}

#[test]
fn the_next_timeout_counts_each_replica_on_its_own() {
    let local = [
        with_timeout(running_replica("g", 1, 0), 9_000),
        stopping(
            with_timeout(running_replica("g", 1, 1), 1),
            StopReason::TimedOut,
        ),
        with_timeout(running_replica("g", 1, 2), 2_000),
    ];
    assert_eq!(next_timeout(&local), Some(3_000));
}

#[test]
fn an_attempt_cancelled_before_it_arrived_is_recorded_not_launched() {
    let assigned = [cancelled("a", 1, 500)];
    assert_eq!(
        reconcile(&[], Some(&assigned), NOW),
        vec![Action::FinishUnlaunched(cancelled("a", 1, 500))]
    );
}

#[test]
fn a_cancelled_running_attempt_is_stopped_with_the_assignment_grace() {
    let assigned = [cancelled("a", 1, 500)];
    assert_eq!(
        reconcile(&[running("a", 1)], Some(&assigned), NOW),
        vec![stop("a", 1, StopReason::Cancelled, 500)]
    );
}

#[test]
fn an_attempt_no_longer_assigned_is_stopped_without_a_report() {
    let assigned = [assignment("b", 1)];
    let local = [running("a", 1), running("b", 1)];
    assert_eq!(
        reconcile(&local, Some(&assigned), NOW),
        vec![stop("a", 1, StopReason::Unassigned, 3_000)]
    );
    // An empty answer is the complete set too: everything stops.
    assert_eq!(
        reconcile(&local, Some(&[]), NOW),
        vec![
            stop("a", 1, StopReason::Unassigned, 3_000),
            stop("b", 1, StopReason::Unassigned, 3_000)
        ]
    );
}

#[test]
fn before_the_first_answer_nothing_is_stopped_or_launched_but_timeouts_hold() {
    let local = [
        running("a", 1),
        with_timeout(running("b", 1), 5_000),
        with_timeout(running("c", 1), 50_000),
    ];
    assert_eq!(
        reconcile(&local, None, NOW),
        vec![stop("b", 1, StopReason::TimedOut, 3_000)]
    );
}

#[test]
fn timeouts_fall_due_at_start_plus_timeout() {
    let assigned = [assignment("a", 1)];
    let local = [with_timeout(running("a", 1), 9_000)];
    assert!(reconcile(&local, Some(&assigned), 9_999).is_empty());
    assert_eq!(
        reconcile(&local, Some(&assigned), 10_000),
        vec![stop("a", 1, StopReason::TimedOut, 3_000)]
    );
    // No timeout: never.
    assert!(reconcile(&[running("a", 1)], Some(&assigned), u64::MAX).is_empty());
    // A huge timeout does not overflow into "due".
    let local = [with_timeout(running("a", 1), u64::MAX)];
    assert!(reconcile(&local, Some(&assigned), u64::MAX - 1).is_empty());
}

#[test]
fn cancel_and_unassignment_take_precedence_over_a_due_timeout() {
    let local = [with_timeout(running("a", 1), 1)];
    assert_eq!(
        reconcile(&local, Some(&[cancelled("a", 1, 700)]), NOW),
        vec![stop("a", 1, StopReason::Cancelled, 700)]
    );
    assert_eq!(
        reconcile(&local, Some(&[]), NOW),
        vec![stop("a", 1, StopReason::Unassigned, 3_000)]
    );
}

#[test]
fn an_attempt_being_stopped_gets_no_second_stop() {
    for reason in [
        StopReason::Cancelled,
        StopReason::TimedOut,
        StopReason::Unassigned,
    ] {
        let local = [stopping(with_timeout(running("a", 1), 1), reason)];
        assert!(reconcile(&local, Some(&[cancelled("a", 1, 1)]), NOW).is_empty());
        assert!(reconcile(&local, Some(&[]), NOW).is_empty());
        assert!(reconcile(&local, None, NOW).is_empty());
        assert!(reconcile(&local, Some(&[assignment("a", 1)]), NOW).is_empty());
    }
}

#[test]
fn a_stale_stopped_attempt_assigned_again_gets_its_end_reported_once() {
    let local = [finished("a", 1, false)];
    assert_eq!(
        reconcile(&local, Some(&[assignment("a", 1)]), NOW),
        vec![Action::ReportEnd {
            key: AttemptKey::new("a", 1, 0)
        }]
    );
    // Also when the assignment now says cancel: it is over either way, and never launched again.
    assert_eq!(
        reconcile(&local, Some(&[cancelled("a", 1, 1)]), NOW),
        vec![Action::ReportEnd {
            key: AttemptKey::new("a", 1, 0)
        }]
    );
    // Not assigned: nothing to say.
    assert!(reconcile(&local, Some(&[]), NOW).is_empty());
    // Reported: nothing more.
    assert!(reconcile(&[finished("a", 1, true)], Some(&[assignment("a", 1)]), NOW).is_empty());
}

#[test]
fn stops_come_before_launches() {
    let local = [running("old", 1)];
    let assigned = [assignment("new", 1)];
    assert_eq!(
        reconcile(&local, Some(&assigned), NOW),
        vec![
            stop("old", 1, StopReason::Unassigned, 3_000),
            Action::Launch(assignment("new", 1))
        ]
    );
}

#[test]
fn reconcile_is_idempotent_once_applied() {
    // After the supervisor applied the actions, the same answer asks for nothing more.
    let assigned = [
        assignment("a", 1),
        cancelled("b", 1, 10),
        assignment("c", 1),
    ];
    let before = [running("b", 1), running("d", 1)];
    let actions = reconcile(&before, Some(&assigned), NOW);
    assert_eq!(actions.len(), 4, "{actions:?}");
    let after = [
        running("a", 1),
        stopping(running("b", 1), StopReason::Cancelled),
        running("c", 1),
        stopping(running("d", 1), StopReason::Unassigned),
    ];
    assert!(reconcile(&after, Some(&assigned), NOW).is_empty());
}

#[test]
fn the_next_timeout_is_the_earliest_of_the_attempts_not_being_stopped() {
    assert_eq!(next_timeout(&[]), None);
    assert_eq!(
        next_timeout(&[running("a", 1), finished("b", 1, true)]),
        None
    );
    let local = [
        with_timeout(running("a", 1), 9_000),
        with_timeout(running("b", 1), 4_000),
        stopping(with_timeout(running("c", 1), 1), StopReason::TimedOut),
    ];
    assert_eq!(next_timeout(&local), Some(5_000));
}

fn report(exit_code: Option<i32>, signal: Option<i32>, cancelled: bool) -> ExitReport {
    ExitReport {
        exit_code,
        signal,
        cancelled,
        cpu_seconds: Some(1.2345),
        max_rss_bytes: Some(4096),
        wall_seconds: 2.5,
        oom_killed: false,
    }
}

#[test]
fn an_exit_reports_why_the_agent_stopped_it() {
    let natural = exit_summary(&report(Some(3), None, false), None);
    assert_eq!(natural.exit_code, Some(3));
    assert!(!natural.cancelled && !natural.timed_out);
    assert_eq!(natural.cpu_time_ms, Some(1235));
    assert_eq!(natural.max_rss_bytes, Some(4096));
    assert_eq!(natural.wall_ms, 2500);

    let cancel = exit_summary(&report(None, Some(15), true), Some(StopReason::Cancelled));
    assert!(cancel.cancelled && !cancel.timed_out);
    assert_eq!(cancel.signal, Some(15));
    // Ended by itself just as the cancel came: still reported cancelled (the user asked).
    assert!(exit_summary(&report(Some(0), None, false), Some(StopReason::Cancelled)).cancelled);

    let timeout = exit_summary(&report(None, Some(9), true), Some(StopReason::TimedOut));
    assert!(timeout.timed_out && !timeout.cancelled);
    // Ended by itself before the timeout's signal: its own exit, not a timeout.
    let raced = exit_summary(&report(Some(0), None, false), Some(StopReason::TimedOut));
    assert!(!raced.timed_out && !raced.cancelled);

    let stale = exit_summary(&report(None, Some(15), true), Some(StopReason::Unassigned));
    assert!(!stale.cancelled && !stale.timed_out);

    // exec saw a cancel request the agent did not record (e.g. before a restart).
    assert!(exit_summary(&report(None, Some(15), true), None).cancelled);
}

#[test]
fn unknown_or_odd_measurements_stay_unknown() {
    let odd = ExitReport {
        exit_code: None,
        signal: None,
        cancelled: false,
        cpu_seconds: Some(f64::NAN),
        max_rss_bytes: None,
        wall_seconds: -1.0,
        oom_killed: false,
    };
    let summary = exit_summary(&odd, None);
    assert_eq!(summary.cpu_time_ms, None);
    assert_eq!(summary.wall_ms, 0);
    assert_eq!((summary.exit_code, summary.signal), (None, None));
    let pb = summary.to_pb();
    assert_eq!(pb.exit_code, None);
    assert_eq!(pb.cpu_time_ms, None);
}
