//! Pure decisions of the job supervisor: given the attempts this node knows and the coordinator's latest
//! assignments, what to launch, stop or report; when the next timeout falls due; and how an ended process
//! is reported.
//!
//! Everything here is a function of its arguments — no clock, no I/O, no processes — so every rule is
//! unit-tested. It must never decide to launch an attempt the node already knows in any state: that is
//! what makes "never launched twice" hold. An attempt here is one process, named by (job id, attempt,
//! replica): two replicas of one attempt are as independent as two jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::exec::ExitReport;

use super::{Assignment, AttemptKey, ExitSummary, StopReason};

/// One attempt (replica) the node knows, as the decisions need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAttempt {
    pub key: AttemptKey,
    pub state: LocalState,
}

/// Where a known attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalState {
    /// Its process runs.
    Running {
        /// When it started (Unix ms): its timeout counts from here.
        started_unix_ms: u64,
        /// 0: none.
        timeout_ms: u64,
        cancel_grace_ms: u64,
        /// Set once the agent has begun stopping it.
        stopping: Option<StopReason>,
    },
    /// It is over. `final_reported`: a final event was queued for it (it was not merely stopped as
    /// stale).
    Finished { final_reported: bool },
}

/// What the supervisor should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an attempt this node has never seen.
    Launch(Assignment),
    /// An attempt this node has never seen arrived already cancelled: record it as cancelled and
    /// report that, without starting it.
    FinishUnlaunched(Assignment),
    /// Stop a running attempt: SIGTERM, SIGKILL after `grace`.
    Stop {
        key: AttemptKey,
        reason: StopReason,
        grace: Duration,
    },
    /// A finished attempt that is still assigned but whose end was never reported (it was stopped as
    /// stale, then assigned again): report how it ended.
    ReportEnd { key: AttemptKey },
}

/// The actions that bring the node in line with `assigned` at `now_ms`.
///
/// `assigned` is `None` until the first answer from a coordinator: then only timeouts are enforced —
/// a restarted agent never stops an attempt before it has heard what is still assigned. Rules, per
/// attempt:
/// - assigned, unknown here: launch it, or record it as cancelled when the assignment says `cancel`;
/// - running, assigned with `cancel`: stop it (cancelled) with the assignment's grace;
/// - running, not assigned: stop it (unassigned, with its own grace), nothing will be reported;
/// - running past `started + timeout`: stop it (timed out);
/// - already stopping: nothing more (a cancel does not replace a timeout in progress, nor the reverse);
/// - finished, still assigned, its end never reported: report it;
/// - finished otherwise: nothing — never launched again.
///
/// "Attempt" is one replica: the rules match (job id, attempt, replica), so a replica is launched
/// while its siblings run, and only the replica that is no longer assigned is stopped.
///
/// Stops come first (in (job, attempt, replica) order), then launches and reports in assignment
/// order; a replica assigned twice in one answer counts once.
pub fn reconcile(
    local: &[LocalAttempt],
    assigned: Option<&[Assignment]>,
    now_ms: u64,
) -> Vec<Action> {
    let known: BTreeMap<AttemptKey, LocalState> =
        local.iter().map(|l| (l.key.clone(), l.state)).collect();
    let by_key: Option<BTreeMap<AttemptKey, &Assignment>> = assigned.map(|list| {
        let mut map = BTreeMap::new();
        for a in list {
            map.entry(a.key()).or_insert(a);
        }
        map
    });

    let mut actions = Vec::new();
    for (key, state) in &known {
        let LocalState::Running {
            started_unix_ms,
            timeout_ms,
            cancel_grace_ms,
            stopping: None,
        } = *state
        else {
            continue;
        };
        let stop = |reason, grace_ms| Action::Stop {
            key: key.clone(),
            reason,
            grace: Duration::from_millis(grace_ms),
        };
        match by_key.as_ref().map(|m| m.get(key)) {
            Some(None) => {
                actions.push(stop(StopReason::Unassigned, cancel_grace_ms));
                continue;
            }
            Some(Some(a)) if a.cancel => {
                actions.push(stop(StopReason::Cancelled, a.cancel_grace_ms));
                continue;
            }
            _ => {}
        }
        if timeout_ms > 0 && now_ms >= started_unix_ms.saturating_add(timeout_ms) {
            actions.push(stop(StopReason::TimedOut, cancel_grace_ms));
        }
    }

    let Some(list) = assigned else {
        return actions;
    };
    let mut seen = BTreeSet::new();
    for a in list {
        let key = a.key();
        if !seen.insert(key.clone()) {
            continue;
        }
        match known.get(&key) {
            None if a.cancel => actions.push(Action::FinishUnlaunched(a.clone())),
            None => actions.push(Action::Launch(a.clone())),
            Some(LocalState::Finished {
                final_reported: false,
            }) => actions.push(Action::ReportEnd { key }),
            Some(_) => {}
        }
    }
    actions
}

/// The earliest instant (Unix ms) at which a running attempt that is not being stopped reaches its
/// timeout; `None` when none has one.
pub fn next_timeout(local: &[LocalAttempt]) -> Option<u64> {
    local
        .iter()
        .filter_map(|l| match l.state {
            LocalState::Running {
                started_unix_ms,
                timeout_ms,
                stopping: None,
                ..
            } if timeout_ms > 0 => Some(started_unix_ms.saturating_add(timeout_ms)),
            _ => None,
        })
        .min()
}

/// How an ended process is reported, given why the agent stopped it (if it did).
///
/// `cancelled` is set when the agent stopped it for a cancel, or when `exec` saw a cancel request
/// before the exit without a recorded reason; `timed_out` when the agent stopped it at its timeout and
/// the process had not already ended by itself. A stale (unassigned) stop is neither.
pub fn exit_summary(report: &ExitReport, stop: Option<StopReason>) -> ExitSummary {
    let (cancelled, timed_out) = match stop {
        Some(StopReason::Cancelled) => (true, false),
        Some(StopReason::TimedOut) => (false, report.cancelled),
        Some(StopReason::Unassigned) => (false, false),
        None => (report.cancelled, false),
    };
    ExitSummary {
        exit_code: report.exit_code,
        signal: report.signal,
        cancelled,
        timed_out,
        cpu_time_ms: report
            .cpu_seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| (s * 1000.0).round() as u64),
        max_rss_bytes: report.max_rss_bytes,
        wall_ms: if report.wall_seconds.is_finite() && report.wall_seconds > 0.0 {
            (report.wall_seconds * 1000.0).round() as u64
        } else {
            0
        },
        oom_killed: report.oom_killed,
    }
}
