//! What happens to attempts after placement: agent reports fenced by lease epoch, attempt and replica,
//! idle GPUs, a node's loss and re-registration, and the end of an attempt with the retry rule.
use std::collections::BTreeSet;

use super::super::{Applied, DomainError, Outcome, RegistryState, OOM_APPLY_VERSION};
use super::*;

/// How an attempt is being ended (before the retry rule decides the job's state).
#[derive(Clone)]
pub(crate) struct AttemptEnd {
    outcome: AttemptOutcome,
    detail: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    cpu_time_ms: Option<u64>,
    max_rss_bytes: Option<u64>,
}

impl AttemptEnd {
    pub(crate) fn new(outcome: AttemptOutcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            exit_code: None,
            signal: None,
            cpu_time_ms: None,
            max_rss_bytes: None,
        }
    }
}

/// The detail of an attempt the kernel killed at its memory limit.
fn out_of_memory(limit_bytes: u64) -> String {
    if limit_bytes == 0 {
        "out of memory: the kernel killed it".to_owned()
    } else {
        format!(
            "out of memory: killed at its {} memory limit",
            crate::scheduler::format_bytes(limit_bytes)
        )
    }
}

/// Which replicas of an attempt an end is about; the others of a gang are stopped with them.
#[derive(Clone, Copy)]
pub(crate) enum Cause<'a> {
    /// The whole attempt (cancel, preemption).
    All,
    /// One replica.
    Replica(u32),
    /// Every replica on a node.
    Node(&'a str),
}

impl Attempt {
    /// Records how this replica ended; the end is never before its start.
    fn record_end(&mut self, ended_at: u64, end: AttemptEnd) {
        self.ended_at = Some(self.started_at.map_or(ended_at, |s| ended_at.max(s)));
        self.outcome = Some(end.outcome);
        self.detail = end.detail;
        self.exit_code = end.exit_code;
        self.signal = end.signal;
        self.cpu_time_ms = end.cpu_time_ms;
        self.max_rss_bytes = end.max_rss_bytes;
    }
}
/// `attempt 2 of job j` or, for a gang, `replica 1 of attempt 2 of job j`, for stale-report reasons.
struct ReplicaName<'a>(&'a str, u32, u32, u32);

impl std::fmt::Display for ReplicaName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ReplicaName(job, attempt, replica, replicas) = *self;
        if replicas > 1 {
            write!(f, "replica {replica} of ")?;
        }
        write!(f, "attempt {attempt} of job {job}")
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
/// What one reported event does to its job: answered at once, or the end of a replica to apply.
enum Step {
    Ack(EventAck),
    End(u64, AttemptEnd),
}

/// What ending one replica comes to.
enum ReplicaEnd {
    /// The job is not active (or has no such replica): nothing changes.
    Nothing,
    /// A replica of a gang succeeded while others still run: only its end was recorded, on `node`.
    Recorded { node: String },
    /// The whole attempt ends.
    WholeAttempt,
}

impl RegistryState {
    pub fn report_job_events(
        &mut self,
        at: u64,
        node_key: &str,
        lease_epoch: u64,
        events: &[JobEventOp],
    ) -> Result<Applied, DomainError> {
        let Some(node) = self.fleet.get(node_key) else {
            return Err(DomainError::FailedPrecondition(format!(
                "node {node_key} is not registered"
            )));
        };
        if node.lease_epoch != lease_epoch {
            return Err(DomainError::FailedPrecondition(format!(
                "node {node_key} is at lease epoch {}, not {lease_epoch}",
                node.lease_epoch
            )));
        }
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            acks.push(self.apply_job_event(at, node_key, lease_epoch, event));
        }
        let accepted = acks.iter().filter(|a| a.accepted).count();
        let detail = format!("accepted={accepted} stale={}", acks.len() - accepted);
        Ok(Applied::new(
            Outcome::Jobs(JobOutcome::JobEvents { acks }),
            detail,
        ))
    }

    /// One reported event; `at` is the command's time (job timestamps), the event's own time goes to the
    /// replica's entry.
    fn apply_job_event(
        &mut self,
        at: u64,
        node_key: &str,
        lease_epoch: u64,
        event: &JobEventOp,
    ) -> EventAck {
        let apply_version = self.apply_version;
        let step = self.jobs.update(&event.job_id, |job| {
            let Some(current) = job.current_attempt().map(|a| a.attempt) else {
                return Step::Ack(EventAck::stale(format_args!(
                    "job {} is {}",
                    job.id,
                    job.state.as_str()
                )));
            };
            if current != event.attempt {
                return Step::Ack(EventAck::stale(format_args!(
                    "attempt {} of job {} is not current (attempt {current} is)",
                    event.attempt, job.id
                )));
            }
            let start = job.last_attempt_start();
            let Some(idx) = job.attempts[start..]
                .iter()
                .position(|a| a.replica == event.replica)
                .map(|i| start + i)
            else {
                return Step::Ack(EventAck::stale(format_args!(
                    "attempt {} of job {} has no replica {}",
                    event.attempt, job.id, event.replica
                )));
            };
            let entry = &mut job.attempts[idx];
            let name = ReplicaName(&job.id, entry.attempt, entry.replica, job.spec.replicas);
            if entry.node != node_key {
                return Step::Ack(EventAck::stale(format_args!("{name} runs on another node")));
            }
            if entry.lease_epoch != lease_epoch {
                return Step::Ack(EventAck::stale(format_args!(
                    "{name} is bound to lease epoch {}",
                    entry.lease_epoch
                )));
            }
            if entry.outcome.is_some() {
                // A replica of a gang that already ended (its peers still run): a repeat changes nothing.
                return Step::Ack(EventAck::accepted());
            }
            // The agent's clock is not trusted beyond reason: nothing happens to an attempt before it was
            // scheduled or after this command was stamped. Usage (and its hourly archive) stays bounded by the
            // attempt's real life even when a node's clock is far off.
            let event_at = event
                .at_ms
                .clamp(entry.scheduled_at, at.max(entry.scheduled_at));
            let end = match &event.kind {
                JobEventKind::Started => {
                    if entry.started_at.is_none() {
                        entry.started_at = Some(event_at);
                    }
                    if job.state == JobState::Scheduled {
                        job.state = JobState::Running;
                        job.updated_at = at;
                    }
                    return Step::Ack(EventAck::accepted());
                }
                JobEventKind::Exited {
                    exit_code,
                    signal,
                    cancelled,
                    timed_out,
                    cpu_time_ms,
                    max_rss_bytes,
                    oom_killed,
                } => {
                    let oom_killed = *oom_killed && apply_version >= OOM_APPLY_VERSION;
                    let (outcome, detail) = if *cancelled || job.cancel_requested {
                        (AttemptOutcome::Cancelled, "cancelled".to_owned())
                    } else if *timed_out {
                        let detail = match job.spec.timeout_secs {
                            Some(secs) => format!("timed out after {secs}s"),
                            None => "timed out".to_owned(),
                        };
                        (AttemptOutcome::Failed, detail)
                    } else if oom_killed {
                        (
                            AttemptOutcome::Failed,
                            out_of_memory(job.spec.resources.memory_bytes),
                        )
                    } else if *exit_code == Some(0) {
                        (AttemptOutcome::Succeeded, String::new())
                    } else {
                        let detail = match (exit_code, signal) {
                            (Some(code), _) => format!("exited with code {code}"),
                            (None, Some(sig)) => format!("killed by signal {sig}"),
                            (None, None) => "exited without a status".to_owned(),
                        };
                        (AttemptOutcome::Failed, detail)
                    };
                    AttemptEnd {
                        outcome,
                        detail,
                        exit_code: *exit_code,
                        signal: *signal,
                        cpu_time_ms: *cpu_time_ms,
                        max_rss_bytes: *max_rss_bytes,
                    }
                }
                JobEventKind::LaunchFailed { message } => {
                    AttemptEnd::new(AttemptOutcome::Failed, clip(message, MAX_DETAIL))
                }
                JobEventKind::Vanished { reason } => {
                    AttemptEnd::new(AttemptOutcome::Lost, clip(reason, MAX_DETAIL))
                }
            };
            Step::End(event_at, end)
        });
        match step {
            None => EventAck::stale(format_args!("job {} not found", event.job_id)),
            Some(Step::Ack(ack)) => ack,
            Some(Step::End(event_at, end)) => {
                self.end_replica(at, &event.job_id, event.replica, event_at, end);
                EventAck::accepted()
            }
        }
    }

    /// Every active job with a replica on a node that was declared lost loses its attempt (the gang's other
    /// replicas are stopped). Returns how many jobs lost an attempt.
    pub fn lose_node_jobs(&mut self, at: u64, node_key: &str) -> usize {
        let ids: Vec<String> = self.jobs.active_on(node_key).cloned().collect();
        for id in &ids {
            self.end_attempt(
                at,
                id,
                at,
                AttemptEnd::new(AttemptOutcome::Lost, "node lost"),
                Cause::Node(node_key),
            );
        }
        ids.len()
    }

    /// After a node registered again (at `lease_epoch`): its replicas move to the new epoch, and a started
    /// replica the agent no longer holds is lost (ending its attempt). Returns how many attempts were lost.
    pub fn readopt_node_jobs(
        &mut self,
        at: u64,
        node_key: &str,
        lease_epoch: u64,
        held: &[HeldAttempt],
    ) -> usize {
        let held: BTreeSet<(&str, u32, u32)> = held
            .iter()
            .map(|h| (h.job_id.as_str(), h.attempt, h.replica))
            .collect();
        let ids: Vec<String> = self.jobs.active_on(node_key).cloned().collect();
        let mut lost = 0;
        for id in &ids {
            let gone = self.jobs.update(id, |job| {
                let start = job.last_attempt_start();
                let mut gone = None;
                for entry in &mut job.attempts[start..] {
                    if entry.node != node_key || entry.outcome.is_some() {
                        continue;
                    }
                    entry.lease_epoch = lease_epoch;
                    let key = (id.as_str(), entry.attempt, entry.replica);
                    if gone.is_none() && entry.started_at.is_some() && !held.contains(&key) {
                        gone = Some(entry.replica);
                    }
                }
                gone
            });
            if let Some(Some(replica)) = gone {
                self.end_attempt(
                    at,
                    id,
                    at,
                    AttemptEnd::new(
                        AttemptOutcome::Lost,
                        "not running after the agent restarted",
                    ),
                    Cause::Replica(replica),
                );
                lost += 1;
            }
        }
        lost
    }

    /// Ends one replica of the current attempt. A replica that succeeded while others of its gang still run
    /// just records its end; anything else (or the last success) ends the whole attempt.
    fn end_replica(&mut self, at: u64, job_id: &str, replica: u32, ended_at: u64, end: AttemptEnd) {
        let step = self.jobs.update(job_id, |job| {
            if !job.state.is_active() {
                return ReplicaEnd::Nothing;
            }
            let start = job.last_attempt_start();
            if end.outcome == AttemptOutcome::Succeeded {
                let others_running = job.attempts[start..]
                    .iter()
                    .any(|a| a.replica != replica && a.outcome != Some(AttemptOutcome::Succeeded));
                if others_running {
                    let Some(entry) = job.attempts[start..]
                        .iter_mut()
                        .find(|a| a.replica == replica)
                    else {
                        return ReplicaEnd::Nothing;
                    };
                    entry.record_end(ended_at, end.clone());
                    let node = entry.node.clone();
                    job.updated_at = at;
                    return ReplicaEnd::Recorded { node };
                }
            }
            ReplicaEnd::WholeAttempt
        });
        match step {
            None | Some(ReplicaEnd::Nothing) => {}
            // The node index lets the node go by itself once nothing of the job runs there.
            Some(ReplicaEnd::Recorded { node }) => self.bump_assign_version(&node),
            Some(ReplicaEnd::WholeAttempt) => {
                self.end_attempt(at, job_id, ended_at, end, Cause::Replica(replica))
            }
        }
    }

    /// Ends the current attempt of an active job and applies the retry rule: a cancel that was asked for
    /// wins; a preempted attempt returns the job to pending; a lost one (always) or a failed one (with
    /// `retry.on_failure`) is retried while the budget allows; anything else ends the job. The replicas
    /// named by `cause` get `end`; the gang's other unfinished replicas are stopped with it (or get the
    /// same end when the cause is the whole attempt).
    pub(crate) fn end_attempt(
        &mut self,
        at: u64,
        job_id: &str,
        ended_at: u64,
        end: AttemptEnd,
        cause: Cause<'_>,
    ) {
        let nodes = self.jobs.update(job_id, |job| {
            if !job.state.is_active() {
                return BTreeSet::new();
            }
            let start = job.last_attempt_start();
            let gang = job.spec.replicas > 1;
            let mut nodes = BTreeSet::new();
            let mut region = None;
            let mut stopped_detail = None;
            for entry in &mut job.attempts[start..] {
                nodes.insert(entry.node.clone());
                let caused = match cause {
                    Cause::All => true,
                    Cause::Replica(r) => entry.replica == r,
                    Cause::Node(node) => entry.node == node,
                };
                if caused && entry.outcome.is_none() {
                    region.get_or_insert_with(|| entry.region.clone());
                    if gang && stopped_detail.is_none() {
                        let what = if end.detail.is_empty() {
                            end.outcome.as_str().to_owned()
                        } else {
                            format!("{}: {}", end.outcome.as_str(), end.detail)
                        };
                        stopped_detail = Some(clip(
                            &format!("stopped with its gang (replica {} {what})", entry.replica),
                            MAX_DETAIL,
                        ));
                    }
                    entry.record_end(ended_at, end.clone());
                }
            }
            for entry in &mut job.attempts[start..] {
                if entry.outcome.is_some() {
                    continue;
                }
                let rest = match (&cause, &stopped_detail) {
                    (Cause::All, _) | (_, None) => end.clone(),
                    (_, Some(detail)) => AttemptEnd::new(AttemptOutcome::Stopped, detail.clone()),
                };
                entry.record_end(ended_at, rest);
            }

            let next = if job.cancel_requested || end.outcome == AttemptOutcome::Cancelled {
                JobState::Cancelled
            } else {
                match end.outcome {
                    AttemptOutcome::Succeeded => JobState::Succeeded,
                    AttemptOutcome::Cancelled => JobState::Cancelled,
                    AttemptOutcome::Preempted => JobState::Pending,
                    AttemptOutcome::Lost | AttemptOutcome::Stopped if job.budget_left() => {
                        JobState::Pending
                    }
                    AttemptOutcome::Lost | AttemptOutcome::Stopped => JobState::Lost,
                    AttemptOutcome::Failed if job.spec.retry.on_failure && job.budget_left() => {
                        JobState::Pending
                    }
                    AttemptOutcome::Failed => JobState::Failed,
                }
            };
            if next == JobState::Pending
                && matches!(end.outcome, AttemptOutcome::Lost | AttemptOutcome::Failed)
            {
                job.prefer_region = region;
            }
            job.state = next;
            job.updated_at = at;
            if next.is_terminal() {
                job.finished_at = Some(at);
            } else {
                job.pending_reason = None;
            }
            nodes
        });
        for node in nodes.iter().flatten() {
            self.bump_assign_version(node);
        }
    }
}
