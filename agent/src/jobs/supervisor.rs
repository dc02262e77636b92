//! The job supervisor: re-adopts attempts after a restart, then carries out the reconcile decisions —
//! launching, stopping, recording ends — and queues every report in the local store.
//!
//! Owns the live [`RunningJob`]s, one per (job, attempt, replica): replicas of one attempt on this node
//! are supervised independently (own process, state directory, logs, events, stop and timeout). Every
//! step that must survive a crash is written (and flushed) before it takes effect: an attempt is
//! recorded before it is launched, its handle and `Started` right after, its end together with its
//! final report. It never talks to a coordinator (the sync loop feeds it assignments, the reporter
//! sends what it queues) and never launches an attempt the store already knows, forgotten ones
//! included. A store failure stops it (and with it the agent): without the store, neither exactly-once
//! reports nor re-adoption can be promised. Jobs keep running when the agent stops.
//!
//! It also runs the retention sweep (every `[jobs] sweep_every`, once assignments were heard): the
//! finished attempts [`retention`](super::retention) picks are replaced by tombstones in the store, then
//! their state directories are removed on a blocking thread, so a large removal never holds up
//! launches, stops or timeouts. Sweeps happen here, where launches happen, so no attempt is launched
//! while its job's directory is being cleaned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use protocol::pb;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::JobsConfig;
use crate::exec::{ExitReport, Launcher, RunningJob};
use crate::metrics::{AgentMetrics, ExitOutcome, StartOutcome};

use super::reconcile::{exit_summary, next_timeout, reconcile, Action, LocalAttempt, LocalState};
use super::retention::{self, SweepReport};
use super::store::{AttemptPhase, AttemptRecord, ExitSummary, JobStore, StoreError, StoredAttempt};
use super::{now_ms, Assignment, AttemptKey, StopReason};

/// How long the supervisor waits for a job to die after a store failure left it unrecorded.
const ORPHAN_KILL_WAIT: Duration = Duration::from_secs(5);
/// The shortest pause between two retention sweeps, whatever the options say.
const MIN_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// An attempt whose process this agent supervises now.
struct Active {
    assignment: Assignment,
    started_unix_ms: u64,
    /// Why this agent process is stopping it, once it began to.
    stopping: Option<StopReason>,
    /// A stop begun by an earlier agent process (the attempt was re-adopted since).
    prior_stop: Option<StopReason>,
    /// Hands the grace period to the attempt's watcher task; taken when the stop begins.
    stop: Option<oneshot::Sender<Duration>>,
}

/// An attempt's process ended.
struct Ended {
    key: AttemptKey,
    report: ExitReport,
}

pub(crate) struct Supervisor {
    store: Arc<JobStore>,
    launcher: Launcher,
    active: BTreeMap<AttemptKey, Active>,
    /// Finished attempts (forgotten ones included) and whether their final event was queued.
    finished: BTreeMap<AttemptKey, bool>,
    /// The coordinator's latest assignments; `None` until the first answer.
    assigned: Option<Vec<Assignment>>,
    ended_tx: mpsc::UnboundedSender<Ended>,
    ended_rx: mpsc::UnboundedReceiver<Ended>,
    /// Wakes the reporter when an event was queued.
    queued: Arc<Notify>,
    /// GPU UUIDs of the running attempts.
    allocated: watch::Sender<BTreeSet<String>>,
    /// Tells the watcher tasks to let go of their jobs (the agent is stopping; the jobs keep running).
    detach: CancellationToken,
    /// Retention of finished attempts.
    jobs: JobsConfig,
    /// The latest sweep's directory removal, while it may still run.
    removal: Option<JoinHandle<SweepReport>>,
    /// Starts, ends and the attempts supervised, for the metrics endpoint.
    metrics: Arc<AgentMetrics>,
}

impl Supervisor {
    pub(crate) fn new(
        store: Arc<JobStore>,
        launcher: Launcher,
        queued: Arc<Notify>,
        allocated: watch::Sender<BTreeSet<String>>,
        jobs: JobsConfig,
    ) -> Supervisor {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Supervisor {
            store,
            launcher,
            active: BTreeMap::new(),
            finished: BTreeMap::new(),
            assigned: None,
            ended_tx,
            ended_rx,
            queued,
            allocated,
            detach: CancellationToken::new(),
            jobs,
            removal: None,
            metrics: Arc::default(),
        }
    }

    /// Counts starts, ends and supervised attempts in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<AgentMetrics>) -> Supervisor {
        self.metrics = metrics;
        self
    }

    /// Takes over what an earlier agent process left: re-adopts every running attempt whose process is
    /// still there; reports the others as exited (with the status their wrapper recorded) or vanished.
    /// Forgotten attempts are known as finished, so they are never launched again. Must run inside a
    /// Tokio runtime, before the node registers (registration announces what is held).
    pub(crate) fn recover(&mut self) -> Result<(), StoreError> {
        for tombstone in self.store.tombstones()? {
            self.finished
                .insert(tombstone.key, tombstone.final_reported);
        }
        for mut record in self.store.attempts()? {
            let key = record.key();
            let handle = match (record.phase, record.handle.clone()) {
                (AttemptPhase::Finished, _) => {
                    if record.finished_at_ms.is_none() {
                        // Written before retention existed: its retention counts from now.
                        record.finished_at_ms = Some(now_ms());
                        self.store.save(&record)?;
                    }
                    self.finished.insert(key, record.final_reported);
                    continue;
                }
                (AttemptPhase::Running, Some(handle)) => handle,
                (AttemptPhase::Launching | AttemptPhase::Running, _) => {
                    tracing::warn!(job = %key.job_id, attempt = key.attempt, replica = key.replica, "the agent stopped while launching this attempt");
                    self.finish_with(
                        record,
                        None,
                        Some("the agent stopped while launching the attempt"),
                    )?;
                    continue;
                }
            };
            if let Some(job) = self.launcher.adopt(&handle) {
                self.watch(record.assignment, job, record.stop);
                continue;
            }
            let exit = handle
                .recorded_exit()
                .map(|report| exit_summary(&report, record.stop));
            tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica, ?exit, "attempt ended while the agent was away");
            self.metrics.ended(match (record.stop, &exit) {
                (Some(StopReason::Unassigned), _) => ExitOutcome::unassigned,
                (_, Some(exit)) => ExitOutcome::of(exit),
                (_, None) => ExitOutcome::vanished,
            });
            if record.stop == Some(StopReason::Unassigned) {
                record.mark_finished(now_ms());
                record.exit = exit;
                self.store.save(&record)?;
                self.finished.insert(key, false);
            } else {
                self.finish_with(
                    record,
                    exit,
                    Some("the process ended while the agent was away and left no exit status"),
                )?;
            }
        }
        self.publish_allocated();
        Ok(())
    }

    /// Runs until `shutdown`: applies every new set of assignments, enforces timeouts, records ends.
    pub(crate) async fn run(
        mut self,
        mut assignments: watch::Receiver<Option<Vec<Assignment>>>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let result = self.serve(&mut assignments, &shutdown).await;
        // Whatever ends the loop, the jobs keep running; a restarted agent adopts them.
        self.detach.cancel();
        result
    }

    async fn serve(
        &mut self,
        assignments: &mut watch::Receiver<Option<Vec<Assignment>>>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        self.reconcile().await?;
        // The first sweep comes as soon as assignments are known, then every `sweep_every`.
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            let due = self.next_timeout_in();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_sweep), if self.assigned.is_some() => {
                    let every = self.jobs.sweep_every.max(MIN_SWEEP_EVERY);
                    next_sweep = tokio::time::Instant::now() + every;
                    if let Some(removal) = self.sweep(now_ms())? {
                        self.removal = Some(removal);
                    }
                }
                changed = assignments.changed() => {
                    if changed.is_err() {
                        // The sync loop is gone: the agent is stopping.
                        return Ok(());
                    }
                    let latest = assignments.borrow_and_update().clone();
                    if latest.is_some() {
                        self.assigned = latest;
                    }
                }
                ended = self.ended_rx.recv() => {
                    if let Some(ended) = ended {
                        self.record_end(ended)?;
                    }
                }
                _ = sleep_for(due) => {}
            }
            self.reconcile().await?;
        }
    }

    /// How long until the next timeout falls due.
    fn next_timeout_in(&self) -> Option<Duration> {
        next_timeout(&self.local_view())
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
    }

    fn local_view(&self) -> Vec<LocalAttempt> {
        let running = self.active.iter().map(|(key, a)| LocalAttempt {
            key: key.clone(),
            state: LocalState::Running {
                started_unix_ms: a.started_unix_ms,
                timeout_ms: a.assignment.timeout_ms,
                cancel_grace_ms: a.assignment.cancel_grace_ms,
                stopping: a.stopping,
            },
        });
        // Finished attempts matter only when assigned (never launch again, report a silent end).
        let assigned: BTreeSet<AttemptKey> = self
            .assigned
            .iter()
            .flatten()
            .map(Assignment::key)
            .collect();
        let finished = self
            .finished
            .iter()
            .filter(|(key, _)| assigned.contains(*key))
            .map(|(key, reported)| LocalAttempt {
                key: key.clone(),
                state: LocalState::Finished {
                    final_reported: *reported,
                },
            });
        running.chain(finished).collect()
    }

    async fn reconcile(&mut self) -> Result<(), StoreError> {
        let actions = reconcile(&self.local_view(), self.assigned.as_deref(), now_ms());
        for action in actions {
            match action {
                Action::Launch(assignment) => self.launch(assignment).await?,
                Action::FinishUnlaunched(assignment) => self.finish_unlaunched(assignment)?,
                Action::Stop { key, reason, grace } => self.stop(key, reason, grace)?,
                Action::ReportEnd { key } => self.report_end(key)?,
            }
        }
        Ok(())
    }

    async fn launch(&mut self, assignment: Assignment) -> Result<(), StoreError> {
        let key = assignment.key();
        let mut record = AttemptRecord::launching(assignment.clone());
        if !self.store.begin_launch(&record)? {
            // Known already (another phase of this loop recorded it): never launch twice.
            tracing::warn!(job = %key.job_id, attempt = key.attempt, replica = key.replica, "attempt already recorded; not launched again");
            return Ok(());
        }
        let log_dir = self
            .launcher
            .state_dir(&key.job_id, key.attempt, key.replica)
            .join("logs");
        let spec = assignment.process_spec(log_dir);
        let launched = if assignment.launch_error.is_empty() {
            self.launcher
                .launch_replica(&spec, &assignment.replica_spec())
                .map_err(|e| e.to_string())
        } else {
            Err(assignment.launch_error.clone())
        };
        let job = match launched {
            Ok(job) => job,
            Err(e) => {
                tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica, error = %e, "launch failed");
                self.metrics.started(StartOutcome::launch_failed);
                record.mark_finished(now_ms());
                record.final_reported = true;
                let event = event(&key, pb::job_event::Kind::LaunchFailed(e));
                self.store.save_with_event(&record, &event)?;
                self.finished.insert(key, true);
                self.queued.notify_one();
                return Ok(());
            }
        };
        record.phase = AttemptPhase::Running;
        record.handle = Some(job.handle().clone());
        let started = event(
            &key,
            pb::job_event::Kind::Started(pb::JobStarted { pid: job.pid() }),
        );
        if let Err(e) = self.store.save_with_event(&record, &started) {
            // Unrecorded, the process could never be adopted or reported: it must not outlive us.
            tracing::error!(job = %key.job_id, attempt = key.attempt, replica = key.replica, error = %e, "recording a launched attempt failed; killing it");
            let _ = tokio::time::timeout(ORPHAN_KILL_WAIT, job.cancel(Duration::ZERO)).await;
            return Err(e);
        }
        self.queued.notify_one();
        self.metrics.started(StartOutcome::started);
        tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica, pid = job.pid(), "attempt started");
        self.watch(assignment, job, None);
        self.publish_allocated();
        Ok(())
    }

    fn finish_unlaunched(&mut self, assignment: Assignment) -> Result<(), StoreError> {
        let key = assignment.key();
        if self.store.lookup(&key)?.is_some() {
            return Ok(());
        }
        tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica, "cancelled before it was launched");
        let mut record = AttemptRecord::launching(assignment);
        record.stop = Some(StopReason::Cancelled);
        let exit = ExitSummary {
            exit_code: None,
            signal: None,
            cancelled: true,
            timed_out: false,
            cpu_time_ms: None,
            max_rss_bytes: None,
            wall_ms: 0,
            oom_killed: false,
        };
        self.finish_with(record, Some(exit), None)
    }

    fn stop(
        &mut self,
        key: AttemptKey,
        reason: StopReason,
        grace: Duration,
    ) -> Result<(), StoreError> {
        let Some(active) = self.active.get_mut(&key) else {
            return Ok(());
        };
        tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica, ?reason, ?grace, "stopping attempt");
        active.stopping = Some(reason);
        // Recorded first: a restarted agent then reports the end the same way.
        if let Some(mut record) = self.store.attempt(&key)? {
            record.stop = Some(reason);
            self.store.save(&record)?;
        }
        if let Some(stop) = active.stop.take() {
            // The watcher is gone only when the job has ended; its end is on the way.
            let _ = stop.send(grace);
        }
        self.publish_supervised();
        Ok(())
    }

    fn report_end(&mut self, key: AttemptKey) -> Result<(), StoreError> {
        let record = match self.store.lookup(&key)? {
            None => return Ok(()),
            Some(StoredAttempt::Live(record)) => *record,
            Some(StoredAttempt::Forgotten(mut tombstone)) => {
                if !tombstone.final_reported {
                    tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica, "forgotten attempt is assigned again; reporting it vanished");
                    tombstone.final_reported = true;
                    let vanished = event(
                        &key,
                        pb::job_event::Kind::Vanished(
                            "the attempt was stopped while it was not assigned to this node, and its \
                             record was removed after the retention period"
                                .to_owned(),
                        ),
                    );
                    self.store
                        .save_tombstone_with_event(&tombstone, &vanished)?;
                    self.queued.notify_one();
                }
                self.finished.insert(key, true);
                return Ok(());
            }
        };
        tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica, "stopped attempt is assigned again; reporting its end");
        let exit = record.exit;
        self.finish_with(
            record,
            exit,
            Some("the attempt was stopped while it was not assigned to this node"),
        )
    }

    fn record_end(&mut self, ended: Ended) -> Result<(), StoreError> {
        let Ended { key, report } = ended;
        let Some(active) = self.active.remove(&key) else {
            return Ok(());
        };
        self.publish_allocated();
        let reason = active.stopping.or(active.prior_stop);
        let exit = exit_summary(&report, reason);
        let mut record = self
            .store
            .attempt(&key)?
            .unwrap_or_else(|| AttemptRecord::launching(active.assignment));
        record.stop = reason;
        tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica, ?exit, "attempt ended");
        self.metrics
            .ended(if reason == Some(StopReason::Unassigned) {
                ExitOutcome::unassigned
            } else {
                ExitOutcome::of(&exit)
            });
        if reason == Some(StopReason::Unassigned) {
            record.mark_finished(now_ms());
            record.exit = Some(exit);
            self.store.save(&record)?;
            self.finished.insert(key, false);
            return Ok(());
        }
        self.finish_with(record, Some(exit), None)
    }

    /// Marks the attempt finished and queues its final event in one write: `Exited` from `exit`, else
    /// `Vanished` with `vanished` as the reason (or an unknown status).
    fn finish_with(
        &mut self,
        mut record: AttemptRecord,
        exit: Option<ExitSummary>,
        vanished: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = record.key();
        let kind = match exit {
            Some(exit) => pb::job_event::Kind::Exited(exit.to_pb()),
            None => pb::job_event::Kind::Vanished(
                vanished.unwrap_or("the exit status is unknown").to_owned(),
            ),
        };
        record.mark_finished(now_ms());
        record.exit = exit;
        record.final_reported = true;
        self.store.save_with_event(&record, &event(&key, kind))?;
        self.finished.insert(key, true);
        self.queued.notify_one();
        Ok(())
    }

    /// One retention sweep at `now_ms`: replaces the finished attempts past retention with tombstones,
    /// drops tombstones old enough, removes job directories an earlier sweep emptied, and starts
    /// removing every forgotten attempt's state directory (on a blocking thread; the returned task
    /// yields what the sweep did and logs it). `None` when nothing may be decided yet (no assignment
    /// list heard since the start) or the previous removal is still running.
    pub(crate) fn sweep(
        &mut self,
        now_ms: u64,
    ) -> Result<Option<JoinHandle<SweepReport>>, StoreError> {
        if self.removal.as_ref().is_some_and(|r| !r.is_finished()) {
            tracing::debug!("retention sweep skipped: the previous removal is still running");
            return Ok(None);
        }
        let Some(assigned) = self.assigned.as_deref() else {
            return Ok(None);
        };
        let assigned: BTreeSet<AttemptKey> = assigned.iter().map(Assignment::key).collect();
        let retain = self.jobs.retain_finished;
        let queued = self.store.queued_keys()?;
        let records = self.store.attempts()?;
        let chosen = retention::attempts_to_forget(&records, &assigned, &queued, now_ms, retain);
        let forgotten: BTreeSet<AttemptKey> = self
            .store
            .forget(&chosen, now_ms)?
            .into_iter()
            .map(|t| t.key)
            .collect();
        let tombstones = self.store.tombstones()?;
        let expired =
            retention::tombstones_to_drop(&tombstones, &assigned, &queued, now_ms, retain);
        let dropped = self.store.drop_tombstones(&expired)?;
        for key in &expired {
            self.finished.remove(key);
        }

        let kept: Vec<&AttemptRecord> = records
            .iter()
            .filter(|r| !forgotten.contains(&r.key()))
            .collect();
        let live_jobs: BTreeSet<&str> = kept.iter().map(|r| r.job_id()).collect();
        let forgotten_jobs: BTreeSet<&str> = tombstones
            .iter()
            .map(|t| t.key.job_id.as_str())
            .filter(|job| !live_jobs.contains(job))
            .collect();
        retention::remove_empty_job_dirs(&self.launcher, forgotten_jobs);

        let kept_working_dirs: Vec<std::path::PathBuf> = kept
            .iter()
            .filter(|r| !r.assignment.working_dir.is_empty())
            .map(|r| r.assignment.working_dir.clone().into())
            .collect();
        let expired: BTreeSet<AttemptKey> = expired.into_iter().collect();
        let to_remove: Vec<AttemptKey> = tombstones
            .into_iter()
            .map(|t| t.key)
            .filter(|key| !expired.contains(key))
            .collect();
        let launcher = self.launcher.clone();
        let forgotten = forgotten.len();
        Ok(Some(tokio::task::spawn_blocking(move || {
            let mut report =
                retention::remove_state_dirs(&launcher, &to_remove, &kept_working_dirs);
            report.forgotten = forgotten;
            report.tombstones_dropped = dropped;
            report.log();
            report
        })))
    }

    /// Supervises a launched or adopted job in its own task until it ends, is stopped, or the agent stops.
    fn watch(&mut self, assignment: Assignment, job: RunningJob, prior_stop: Option<StopReason>) {
        let key = assignment.key();
        let started_unix_ms = job.handle().started_unix_ms;
        let (stop_tx, stop_rx) = oneshot::channel();
        let ended = self.ended_tx.clone();
        let detach = self.detach.clone();
        let span = tracing::info_span!(
            "job",
            job = %key.job_id,
            attempt = key.attempt,
            replica = key.replica
        );
        let task_key = key.clone();
        tokio::spawn(tracing::Instrument::instrument(
            watch_job(job, task_key, stop_rx, ended, detach),
            span,
        ));
        self.active.insert(
            key,
            Active {
                assignment,
                started_unix_ms,
                stopping: None,
                prior_stop,
                stop: Some(stop_tx),
            },
        );
    }

    /// Counts the supervised attempts by state.
    fn publish_supervised(&self) {
        let stopping = self
            .active
            .values()
            .filter(|a| a.stopping.is_some())
            .count() as u64;
        let running = self.active.len() as u64 - stopping;
        self.metrics.supervising(running, stopping);
    }

    /// Publishes the GPUs of the running attempts (and counts the attempts).
    fn publish_allocated(&self) {
        self.publish_supervised();
        let gpus: BTreeSet<String> = self
            .active
            .values()
            .flat_map(|a| a.assignment.gpu_uuids.iter().cloned())
            .collect();
        self.allocated.send_if_modified(|current| {
            if *current == gpus {
                false
            } else {
                *current = gpus;
                true
            }
        });
    }
}

/// What a watcher saw first.
enum Next {
    Ended(ExitReport),
    Stop(Duration),
    /// The supervisor dropped the stop sender without stopping: keep waiting for the end.
    NoStop,
    Detach,
}

async fn watch_job(
    job: RunningJob,
    key: AttemptKey,
    mut stop: oneshot::Receiver<Duration>,
    ended: mpsc::UnboundedSender<Ended>,
    detach: CancellationToken,
) {
    let mut stoppable = true;
    loop {
        let next = tokio::select! {
            report = job.wait() => Next::Ended(report),
            grace = &mut stop, if stoppable => grace.map_or(Next::NoStop, Next::Stop),
            _ = detach.cancelled() => Next::Detach,
        };
        match next {
            Next::Ended(report) => {
                let _ = ended.send(Ended { key, report });
                return;
            }
            Next::Stop(grace) => {
                let report = tokio::select! {
                    report = job.cancel(grace) => report,
                    // Stopping mid-cancel: the restarted agent sees the stop recorded and repeats it.
                    _ = detach.cancelled() => return,
                };
                let _ = ended.send(Ended { key, report });
                return;
            }
            Next::NoStop => stoppable = false,
            Next::Detach => {
                job.detach();
                return;
            }
        }
    }
}

fn event(key: &AttemptKey, kind: pb::job_event::Kind) -> pb::JobEvent {
    pb::JobEvent {
        job_id: key.job_id.clone(),
        attempt: key.attempt,
        replica: key.replica,
        at_ms: now_ms(),
        kind: Some(kind),
    }
}

async fn sleep_for(due: Option<Duration>) {
    match due {
        Some(pause) => tokio::time::sleep(pause).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor with real processes and a real store, fed assignments directly (no coordinator).

    use std::path::Path;
    use std::time::Instant;

    use super::*;
    use crate::exec::{read_logs, LauncherOptions, LogStream};
    use crate::jobs::SecretEnv;

    const DEADLINE: Duration = Duration::from_secs(30);

    struct Fixture {
        _tmp: tempfile::TempDir,
        store: Arc<JobStore>,
        launcher: Launcher,
        queued: Arc<Notify>,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fake_cgroups = tmp.path().join("no-cgroups");
        std::fs::create_dir_all(&fake_cgroups).expect("mkdir");
        let launcher = Launcher::new(LauncherOptions {
            data_dir: tmp.path().join("data"),
            cgroup_root: Some(fake_cgroups),
            sandbox: None,
            defaults: crate::exec::JobDefaults {
                memory_bytes: 0,
                pids_max: 0,
            },
        })
        .expect("launcher");
        let store = Arc::new(JobStore::open(tmp.path()).expect("store"));
        Fixture {
            _tmp: tmp,
            store,
            launcher,
            queued: Arc::new(Notify::new()),
        }
    }

    impl Fixture {
        fn supervisor(&self) -> (Supervisor, watch::Receiver<BTreeSet<String>>) {
            let (tx, rx) = watch::channel(BTreeSet::new());
            (
                Supervisor::new(
                    self.store.clone(),
                    self.launcher.clone(),
                    self.queued.clone(),
                    tx,
                    JobsConfig::default(),
                ),
                rx,
            )
        }

        fn events(&self) -> Vec<pb::JobEvent> {
            self.store
                .pending_events(1000)
                .expect("queue")
                .into_iter()
                .map(|q| q.event)
                .collect()
        }

        async fn wait_events(&self, what: &str, done: impl Fn(&[pb::JobEvent]) -> bool) {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let events = self.events();
                if done(&events) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: events so far {events:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn shell(job: &str, script: &str) -> Assignment {
        Assignment {
            job_id: job.into(),
            attempt: 1,
            replica: 0,
            replicas: 0,
            replica_hosts: vec![],
            project_id: "p".into(),
            command: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Default::default(),
            working_dir: String::new(),
            cpu_millis: 0,
            memory_bytes: 0,
            gpu_uuids: vec![],
            timeout_ms: 0,
            cancel: false,
            cancel_grace_ms: 200,
            secret_env: Default::default(),
            launch_error: String::new(),
            network: String::new(),
            secrets_in_env: true,
        }
    }

    fn kinds_of(events: &[pb::JobEvent], job: &str) -> Vec<pb::job_event::Kind> {
        events
            .iter()
            .filter(|e| e.job_id == job)
            .filter_map(|e| e.kind.clone())
            .collect()
    }

    fn exited(events: &[pb::JobEvent], job: &str) -> Option<pb::JobExited> {
        kinds_of(events, job).into_iter().find_map(|k| match k {
            pb::job_event::Kind::Exited(x) => Some(x),
            _ => None,
        })
    }

    fn kinds_of_replica(
        events: &[pb::JobEvent],
        job: &str,
        replica: u32,
    ) -> Vec<pb::job_event::Kind> {
        events
            .iter()
            .filter(|e| e.job_id == job && e.replica == replica)
            .filter_map(|e| e.kind.clone())
            .collect()
    }

    fn exited_replica(events: &[pb::JobEvent], job: &str, replica: u32) -> Option<pb::JobExited> {
        kinds_of_replica(events, job, replica)
            .into_iter()
            .find_map(|k| match k {
                pb::job_event::Kind::Exited(x) => Some(x),
                _ => None,
            })
    }

    /// Everything a process wrote to `stream` so far.
    fn output(fx: &Fixture, key: &AttemptKey, stream: LogStream) -> String {
        let record = fx.store.attempt(key).expect("read").expect("record");
        let dir = record.log_dir().expect("launched");
        let chunk = read_logs(dir, stream, 0, 1 << 20).expect("logs");
        String::from_utf8_lossy(&chunk.data).into_owned()
    }

    fn touch(path: &Path) {
        std::fs::write(path, b"").expect("touch");
    }

    /// Launches `assignment` as an earlier agent process would have, and records it as running.
    fn launched_by_earlier_agent(fx: &Fixture, assignment: &Assignment) -> RunningJob {
        let key = assignment.key();
        let mut record = AttemptRecord::launching(assignment.clone());
        assert!(fx.store.begin_launch(&record).expect("begin"));
        let spec = assignment.process_spec(
            fx.launcher
                .state_dir(&key.job_id, key.attempt, key.replica)
                .join("logs"),
        );
        let job = fx
            .launcher
            .launch_replica(&spec, &assignment.replica_spec())
            .expect("launch");
        record.phase = AttemptPhase::Running;
        record.handle = Some(job.handle().clone());
        fx.store.save(&record).expect("save");
        job
    }

    #[tokio::test]
    async fn recovery_adopts_live_attempts_and_reports_the_others_once() {
        let fx = fixture();
        let go = fx._tmp.path().join("go");
        // Still running when the agent comes back.
        let alive = shell(
            "alive",
            &format!(
                "while [ ! -e '{}' ]; do sleep 0.02; done; exit 4",
                go.display()
            ),
        );
        let alive_job = launched_by_earlier_agent(&fx, &alive);
        alive_job.detach();
        // Ended while the agent was away, with a recorded status.
        let ended = shell("ended", "exit 3");
        let ended_job = launched_by_earlier_agent(&fx, &ended);
        ended_job.wait().await;
        // Its sibling replica on this node ended too, differently.
        let ended_sibling = Assignment {
            replica: 1,
            replicas: 2,
            ..shell("ended", "exit 5")
        };
        let sibling_job = launched_by_earlier_agent(&fx, &ended_sibling);
        sibling_job.wait().await;
        // Ended after the agent began stopping it as stale.
        let stale = shell("stale", "exit 0");
        let stale_job = launched_by_earlier_agent(&fx, &stale);
        stale_job.wait().await;
        let mut record = fx
            .store
            .attempt(&AttemptKey::new("stale", 1, 0))
            .expect("read")
            .expect("record");
        record.stop = Some(StopReason::Unassigned);
        fx.store.save(&record).expect("save");
        // The agent died between recording and launching.
        fx.store
            .begin_launch(&AttemptRecord::launching(shell("half", "true")))
            .expect("begin");

        let (mut supervisor, allocated) = fx.supervisor();
        supervisor.recover().expect("recover");
        assert!(allocated.borrow().is_empty());
        let events = fx.events();
        let code = exited_replica(&events, "ended", 0).expect("ended reported");
        assert_eq!(code.exit_code, Some(3));
        assert!(!code.cancelled && !code.timed_out);
        let sibling = exited_replica(&events, "ended", 1).expect("sibling reported");
        assert_eq!(sibling.exit_code, Some(5));
        assert!(matches!(
            kinds_of(&events, "half").as_slice(),
            [pb::job_event::Kind::Vanished(_)]
        ));
        assert!(kinds_of(&events, "stale").is_empty(), "{events:?}");
        assert!(kinds_of(&events, "alive").is_empty(), "{events:?}");
        let held: Vec<(String, u32)> = fx
            .store
            .held()
            .expect("held")
            .into_iter()
            .map(|h| (h.job_id, h.replica))
            .collect();
        let expected = [("alive", 0), ("ended", 0), ("ended", 1), ("half", 0)];
        assert_eq!(
            held,
            expected.map(|(job, replica)| (job.to_owned(), replica))
        );

        // The adopted attempt is supervised: its end is reported, and a second recovery (another
        // restart) reports nothing twice.
        let (assign_tx, assign_rx) = watch::channel(Some(vec![alive.clone()]));
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(assign_rx, stop.clone()));
        touch(&go);
        fx.wait_events("the adopted attempt's end", |e| {
            exited(e, "alive").is_some()
        })
        .await;
        assert_eq!(
            exited(&fx.events(), "alive").and_then(|x| x.exit_code),
            Some(4)
        );
        stop.cancel();
        running.await.expect("join").expect("supervisor");
        drop(assign_tx);
        let before = fx.events();
        let (mut again, _) = fx.supervisor();
        again.recover().expect("recover again");
        assert_eq!(fx.events(), before);
    }

    #[tokio::test]
    async fn secrets_reach_the_process_but_not_the_disk_and_launch_errors_are_reported() {
        let fx = fixture();
        let (supervisor, _allocated) = fx.supervisor();
        let (assign_tx, assign_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(assign_rx, stop.clone()));

        let out = fx._tmp.path().join("seen");
        let mut with_secret = shell(
            "secretive",
            &format!("printf %s \"$API_TOKEN\" > {}", out.display()),
        );
        with_secret.secret_env =
            SecretEnv([("API_TOKEN".to_owned(), "t0p-s3cret".to_owned())].into());
        let refused = Assignment {
            launch_error: "secret s3 is no longer bound to this job".into(),
            ..shell("refused", "exit 0")
        };
        assign_tx.send_replace(Some(vec![with_secret, refused]));
        fx.wait_events("both attempts to end", |e| {
            exited(e, "secretive").is_some() && !kinds_of(e, "refused").is_empty()
        })
        .await;
        assert_eq!(std::fs::read_to_string(&out).expect("output"), "t0p-s3cret");
        assert!(matches!(
            kinds_of(&fx.events(), "refused").as_slice(),
            [pb::job_event::Kind::LaunchFailed(m)] if m.contains("no longer bound")
        ));
        let record = fx
            .store
            .attempt(&AttemptKey::new("secretive", 1, 0))
            .expect("read")
            .expect("record");
        assert!(record.assignment.secret_env.0.is_empty(), "not stored");
        assert!(
            !format!("{:?}", SecretEnv([("K".into(), "v4lue".into())].into())).contains("v4lue")
        );
        stop.cancel();
        running.await.expect("join").expect("supervisor");
        // Nothing under the agent's data directory holds the value.
        let mut stack = vec![fx._tmp.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
                let path = entry.path();
                if path == out {
                    continue;
                }
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(path);
                } else if !kind.is_file() {
                    // FIFOs (the job's output pipes) would block a read.
                    continue;
                } else if let Ok(bytes) = std::fs::read(&path) {
                    assert!(
                        !bytes.windows(10).any(|w| w == b"t0p-s3cret"),
                        "{} holds the secret",
                        path.display()
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn assignments_are_launched_once_cancelled_timed_out_and_stopped() {
        let fx = fixture();
        let (supervisor, allocated) = fx.supervisor();
        let (assign_tx, assign_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(assign_rx, stop.clone()));

        let mut quick = shell("quick", "echo hi; exit 0");
        quick.gpu_uuids = vec!["GPU-x".into()];
        let stubborn = shell("stubborn", "trap '' TERM; while :; do sleep 0.05; done");
        let mut slow = shell("slow", "while :; do sleep 0.05; done");
        slow.timeout_ms = 300;
        let stale = shell("stale", "while :; do sleep 0.05; done");
        let broken = Assignment {
            command: "/definitely/not/here".into(),
            ..shell("broken", "")
        };
        let early = Assignment {
            cancel: true,
            ..shell("early", "exit 0")
        };
        let all = vec![
            quick.clone(),
            stubborn.clone(),
            slow.clone(),
            stale.clone(),
            broken,
            early,
        ];
        assign_tx.send_replace(Some(all.clone()));
        fx.wait_events("quick to end, slow to time out, the others to start", |e| {
            exited(e, "quick").is_some()
                && exited(e, "slow").is_some()
                && exited(e, "early").is_some()
                && kinds_of(e, "stubborn").len() == 1
                && kinds_of(e, "stale").len() == 1
                && kinds_of(e, "broken").len() == 1
        })
        .await;
        let events = fx.events();
        assert!(matches!(
            kinds_of(&events, "quick").as_slice(),
            [pb::job_event::Kind::Started(_), pb::job_event::Kind::Exited(x)] if x.exit_code == Some(0)
        ));
        let slow_end = exited(&events, "slow").expect("slow");
        assert!(slow_end.timed_out && !slow_end.cancelled, "{slow_end:?}");
        let early_end = exited(&events, "early").expect("early");
        assert!(early_end.cancelled);
        assert_eq!(kinds_of(&events, "early").len(), 1, "never started");
        assert!(matches!(
            kinds_of(&events, "broken").as_slice(),
            [pb::job_event::Kind::LaunchFailed(m)] if m.contains("not found")
        ));
        assert!(allocated.borrow().is_empty(), "quick's GPU is free again");

        // Cancel the one that ignores SIGTERM; drop the stale one from the assignments.
        let mut cancelled = stubborn.clone();
        cancelled.cancel = true;
        let remaining: Vec<Assignment> = all
            .iter()
            .filter(|a| a.job_id != "stale")
            .map(|a| {
                if a.job_id == "stubborn" {
                    cancelled.clone()
                } else {
                    a.clone()
                }
            })
            .collect();
        assign_tx.send_replace(Some(remaining.clone()));
        fx.wait_events("the cancel to end", |e| exited(e, "stubborn").is_some())
            .await;
        let end = exited(&fx.events(), "stubborn").expect("stubborn");
        assert!(end.cancelled && end.signal == Some(9), "{end:?}");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let record = fx
                .store
                .attempt(&AttemptKey::new("stale", 1, 0))
                .expect("read")
                .expect("record");
            if record.phase == AttemptPhase::Finished {
                assert_eq!(record.stop, Some(StopReason::Unassigned));
                assert!(!record.final_reported);
                break;
            }
            assert!(Instant::now() < deadline, "stale never stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(kinds_of(&fx.events(), "stale").len(), 1, "only Started");

        // Nothing is ever launched twice: the same answer again changes nothing.
        let count = fx.events().len();
        assign_tx.send_replace(Some(remaining));
        tokio::task::yield_now().await;
        // The stale one assigned again: its end is reported, it is not launched again.
        assign_tx.send_replace(Some(vec![stale.clone(), quick.clone()]));
        fx.wait_events("the stale end to be reported", |e| {
            exited(e, "stale").is_some()
        })
        .await;
        let events = fx.events();
        assert_eq!(events.len(), count + 1, "{events:?}");
        let stale_end = exited(&events, "stale").expect("stale");
        assert!(!stale_end.cancelled && !stale_end.timed_out);
        let started = |job: &str| {
            kinds_of(&events, job)
                .iter()
                .filter(|k| matches!(k, pb::job_event::Kind::Started(_)))
                .count()
        };
        assert_eq!((started("quick"), started("stale")), (1, 1));
        stop.cancel();
        running.await.expect("join").expect("supervisor");
    }

    #[tokio::test]
    async fn replicas_of_one_attempt_run_side_by_side_each_with_its_own_process_logs_and_end() {
        let fx = fixture();
        let (supervisor, _allocated) = fx.supervisor();
        let (assign_tx, assign_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(assign_rx, stop.clone()));

        let go = fx._tmp.path().join("go");
        let script = format!(
            "echo replica=$MERIDIAN_REPLICA; echo replicas=$MERIDIAN_REPLICAS; \
             echo hosts=$MERIDIAN_REPLICA_HOSTS; echo cwd=$(pwd); echo err-$MERIDIAN_REPLICA >&2; \
             while [ ! -e '{}' ]; do sleep 0.02; done",
            go.display()
        );
        let replica = |index: u32| Assignment {
            replica: index,
            replicas: 3,
            replica_hosts: vec!["node-a".into(), "node-a".into(), "10.0.0.9".into()],
            ..shell("gang", &script)
        };
        // Replica 1 has its own timeout; replica 2 will be taken off this node; replica 0 runs on.
        let timed = Assignment {
            timeout_ms: 1_500,
            ..replica(1)
        };
        assign_tx.send_replace(Some(vec![replica(0), timed.clone(), replica(2)]));
        fx.wait_events("replica 1 to time out while 0 and 2 run", |e| {
            exited_replica(e, "gang", 1).is_some()
                && kinds_of_replica(e, "gang", 0).len() == 1
                && kinds_of_replica(e, "gang", 2).len() == 1
        })
        .await;
        let end = exited_replica(&fx.events(), "gang", 1).expect("replica 1");
        assert!(end.timed_out && !end.cancelled, "{end:?}");
        let key = |index| AttemptKey::new("gang", 1, index);
        let deadline = Instant::now() + DEADLINE;
        while !(output(&fx, &key(0), LogStream::Stdout).contains("cwd=")
            && output(&fx, &key(2), LogStream::Stdout).contains("cwd="))
        {
            assert!(Instant::now() < deadline, "replicas 0 and 2 never wrote");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Replica 2 is no longer assigned: only it stops, without a report; replica 0 keeps running.
        assign_tx.send_replace(Some(vec![replica(0), timed]));
        let deadline = Instant::now() + DEADLINE;
        loop {
            let record = fx.store.attempt(&key(2)).expect("read").expect("record");
            if record.phase == AttemptPhase::Finished {
                assert_eq!(record.stop, Some(StopReason::Unassigned));
                break;
            }
            assert!(Instant::now() < deadline, "replica 2 never stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let zero = fx.store.attempt(&key(0)).expect("read").expect("record");
        assert_eq!(zero.phase, AttemptPhase::Running);
        assert_eq!(zero.stop, None);

        touch(&go);
        fx.wait_events("replica 0 to end", |e| {
            exited_replica(e, "gang", 0).is_some()
        })
        .await;
        let events = fx.events();
        assert_eq!(
            exited_replica(&events, "gang", 0).and_then(|x| x.exit_code),
            Some(0)
        );
        assert_eq!(
            kinds_of_replica(&events, "gang", 2).len(),
            1,
            "only Started"
        );
        assert_eq!(kinds_of(&events, "gang").len(), 5, "{events:?}");
        let pids: BTreeSet<i32> = events
            .iter()
            .filter_map(|e| match e.kind {
                Some(pb::job_event::Kind::Started(ref s)) => Some(s.pid),
                _ => None,
            })
            .collect();
        assert_eq!(pids.len(), 3, "three processes: {events:?}");

        // Each replica saw its own place in the gang and ran in its own directory with its own logs;
        // replica 0 keeps the layout of a single-replica job.
        let mut dirs = BTreeSet::new();
        for index in 0..3 {
            let out = output(&fx, &key(index), LogStream::Stdout);
            let work = fx.launcher.state_dir("gang", 1, index).join("work");
            assert_eq!(
                out,
                format!(
                    "replica={index}\nreplicas=3\nhosts=node-a,node-a,10.0.0.9\ncwd={}\n",
                    work.display()
                )
            );
            // (A stopped replica's shell may add its own note after the line.)
            let stderr = output(&fx, &key(index), LogStream::Stderr);
            assert!(stderr.starts_with(&format!("err-{index}\n")), "{stderr:?}");
            assert_eq!(stderr.matches("err-").count(), 1, "{stderr:?}");
            let record = fx
                .store
                .attempt(&key(index))
                .expect("read")
                .expect("record");
            let handle = record.handle.expect("launched");
            assert_eq!(handle.replica, index);
            assert!(dirs.insert(handle.state_dir.clone()));
            assert!(dirs.insert(handle.log.dir.clone()));
        }
        assert!(fx.launcher.state_dir("gang", 1, 0).ends_with("jobs/gang/1"));
        stop.cancel();
        running.await.expect("join").expect("supervisor");
    }

    /// Removes every queued event except those of `keep`, as a coordinator's answer would.
    fn acknowledge_all_but(fx: &Fixture, keep: &str) {
        let seqs: Vec<u64> = fx
            .store
            .pending_events(1000)
            .expect("queue")
            .into_iter()
            .filter(|q| q.event.job_id != keep)
            .map(|q| q.seq)
            .collect();
        fx.store.remove_events(&seqs).expect("acknowledge");
    }

    fn forgotten(fx: &Fixture, job: &str) -> bool {
        matches!(
            fx.store.lookup(&AttemptKey::new(job, 1, 0)).expect("read"),
            Some(StoredAttempt::Forgotten(_))
        )
    }

    async fn sweep_at(supervisor: &mut Supervisor, now: u64) -> SweepReport {
        supervisor
            .sweep(now)
            .expect("sweep")
            .expect("assignments are known")
            .await
            .expect("removal task")
    }

    #[tokio::test]
    async fn finished_attempts_past_retention_are_forgotten_and_never_launched_again() {
        let fx = fixture();
        let retain = JobsConfig::default().retain_finished.as_millis() as u64;
        let outside = fx._tmp.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("dataset"), b"the user's").expect("write");

        // Four attempts run to their end: one links to the outside from its own work directory, one
        // runs in a working directory outside the data directory.
        let (supervisor, _allocated) = fx.supervisor();
        let (assign_tx, assign_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(assign_rx, stop.clone()));
        let old = shell(
            "old",
            &format!("ln -s '{}' escape; echo old-output", outside.display()),
        );
        let user_dir = Assignment {
            working_dir: outside.display().to_string(),
            ..shell("userdir", "echo result > result")
        };
        let all = vec![
            old.clone(),
            user_dir,
            shell("unacked", "echo unacked"),
            shell("recent", "echo recent"),
        ];
        assign_tx.send_replace(Some(all));
        fx.wait_events("every attempt to end", |e| {
            ["old", "userdir", "unacked", "recent"]
                .iter()
                .all(|job| exited(e, job).is_some())
        })
        .await;
        stop.cancel();
        running.await.expect("join").expect("supervisor");
        acknowledge_all_but(&fx, "unacked");

        // A restarted agent sweeps a retention period later: "recent" ended just inside it.
        let t1 = now_ms() + retain + 60_000;
        let mut record = fx
            .store
            .attempt(&AttemptKey::new("recent", 1, 0))
            .expect("read")
            .expect("record");
        assert!(record.finished_at_ms.is_some_and(|at| at <= now_ms()));
        record.finished_at_ms = Some(t1 - 1_000);
        fx.store.save(&record).expect("save");
        let (mut supervisor, _allocated) = fx.supervisor();
        supervisor.recover().expect("recover");
        assert!(
            supervisor.sweep(t1).expect("sweep").is_none(),
            "nothing is decided before the first assignment list"
        );
        supervisor.assigned = Some(Vec::new());
        let report = sweep_at(&mut supervisor, t1).await;
        assert_eq!(
            (report.forgotten, report.dirs_removed, report.dirs_kept),
            (2, 2, 0),
            "{report:?}"
        );
        assert!(
            report.bytes_freed >= "old-output\n".len() as u64,
            "{report:?}"
        );
        let dir = |job: &str| fx.launcher.state_dir(job, 1, 0);
        assert!(forgotten(&fx, "old") && forgotten(&fx, "userdir"));
        assert!(!dir("old").exists() && !dir("userdir").exists());
        for job in ["unacked", "recent"] {
            assert!(!forgotten(&fx, job), "{job} is kept");
            assert!(dir(job).join("logs").is_dir(), "{job}'s logs are kept");
        }
        assert_eq!(
            std::fs::read(outside.join("dataset")).expect("dataset"),
            b"the user's"
        );
        assert_eq!(
            std::fs::read(outside.join("result")).expect("result"),
            b"result\n"
        );
        // A second sweep at the same time finds nothing more to do but the job directories the
        // first one emptied.
        assert!(fx.launcher.jobs_dir().join("userdir").is_dir());
        assert_eq!(sweep_at(&mut supervisor, t1).await, SweepReport::default());
        assert!(!fx.launcher.jobs_dir().join("userdir").exists());

        // Interrupted sweeps converge: a forgotten attempt whose directory is back, and a record
        // whose directory went before its tombstone was written.
        std::fs::create_dir_all(dir("old").join("logs")).expect("mkdir");
        std::fs::write(dir("old").join("logs/stdout.log"), b"12345").expect("write");
        std::fs::remove_dir_all(dir("recent")).expect("rm");
        let t2 = t1 + retain;
        let report = sweep_at(&mut supervisor, t2).await;
        assert_eq!(
            (report.forgotten, report.dirs_removed, report.bytes_freed),
            (1, 1, 5),
            "{report:?}"
        );
        assert!(forgotten(&fx, "recent") && !dir("old").exists());
        drop(supervisor);

        // After another restart the forgotten attempt is assigned again beside a new one: only the
        // new one runs.
        let (mut supervisor, _allocated) = fx.supervisor();
        supervisor.recover().expect("recover");
        let (assign_tx, assign_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(assign_rx, stop.clone()));
        assign_tx.send_replace(Some(vec![old.clone(), shell("fresh", "echo fresh")]));
        fx.wait_events("the new attempt to end", |e| exited(e, "fresh").is_some())
            .await;
        assert!(
            kinds_of(&fx.events(), "old").is_empty(),
            "{:?}",
            fx.events()
        );
        assert!(!dir("old").exists());
        assert!(forgotten(&fx, "old"));
        stop.cancel();
        running.await.expect("join").expect("supervisor");

        // Four retention periods after they were forgotten, the tombstones go; what still has a
        // queued report stays.
        let (mut supervisor, _allocated) = fx.supervisor();
        supervisor.recover().expect("recover");
        supervisor.assigned = Some(Vec::new());
        let report = sweep_at(&mut supervisor, t1 + 5 * retain + 1_000).await;
        assert_eq!(
            (report.forgotten, report.tombstones_dropped),
            (0, 3),
            "{report:?}"
        );
        for job in ["old", "userdir", "recent"] {
            let gone = fx.store.lookup(&AttemptKey::new(job, 1, 0)).expect("read");
            assert_eq!(gone, None, "{job}");
        }
        for job in ["unacked", "fresh"] {
            assert!(fx
                .store
                .attempt(&AttemptKey::new(job, 1, 0))
                .expect("read")
                .is_some());
        }
    }

    #[tokio::test]
    async fn a_forgotten_stale_attempt_assigned_again_is_reported_vanished_not_relaunched() {
        let fx = fixture();
        let retain = JobsConfig::default().retain_finished.as_millis() as u64;
        let (supervisor, _allocated) = fx.supervisor();
        let (assign_tx, assign_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(assign_rx, stop.clone()));
        let stale = shell("stale", "while :; do sleep 0.05; done");
        assign_tx.send_replace(Some(vec![stale.clone()]));
        fx.wait_events("the attempt to start", |e| !kinds_of(e, "stale").is_empty())
            .await;
        assign_tx.send_replace(Some(Vec::new()));
        let key = AttemptKey::new("stale", 1, 0);
        let deadline = Instant::now() + DEADLINE;
        while fx.store.attempt(&key).expect("read").map(|r| r.phase) != Some(AttemptPhase::Finished)
        {
            assert!(Instant::now() < deadline, "never stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        running.await.expect("join").expect("supervisor");
        acknowledge_all_but(&fx, "");

        let (mut supervisor, _allocated) = fx.supervisor();
        supervisor.recover().expect("recover");
        supervisor.assigned = Some(Vec::new());
        let report = sweep_at(&mut supervisor, now_ms() + retain + 60_000).await;
        assert_eq!(
            (report.forgotten, report.dirs_removed),
            (1, 1),
            "{report:?}"
        );
        assert!(matches!(
            fx.store.lookup(&key).expect("read"),
            Some(StoredAttempt::Forgotten(t)) if !t.final_reported
        ));

        // Assigned again: its end is owed, so it is reported vanished, once; nothing is launched.
        let (assign_tx, assign_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(assign_rx, stop.clone()));
        assign_tx.send_replace(Some(vec![stale.clone()]));
        fx.wait_events("the vanished report", |e| !kinds_of(e, "stale").is_empty())
            .await;
        assign_tx.send_replace(Some(vec![stale, shell("marker", "true")]));
        fx.wait_events("a later pass", |e| exited(e, "marker").is_some())
            .await;
        assert!(matches!(
            kinds_of(&fx.events(), "stale").as_slice(),
            [pb::job_event::Kind::Vanished(m)] if m.contains("retention period")
        ));
        assert!(matches!(
            fx.store.lookup(&key).expect("read"),
            Some(StoredAttempt::Forgotten(t)) if t.final_reported
        ));
        assert!(!fx.launcher.state_dir("stale", 1, 0).exists());
        stop.cancel();
        running.await.expect("join").expect("supervisor");
    }
}
