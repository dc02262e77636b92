//! Leader failover under write load: SIGKILL the leader while a prober keeps writing, time how long until a
//! write sent after the kill is acknowledged by a surviving member, restart the victim, wait until it has
//! caught up, repeat; finally read back every acknowledged write.
//!
//! The prober sends a new write every `probe_interval` (open loop, bounded in-flight, each with its own short
//! timeout) round-robin over the members that are up, so the resolution of the measurement is the probe
//! interval whatever the system does with requests it cannot serve. This module owns that timing and the
//! loss check; it never decides which system is better.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::http::HttpSettings;
use super::stats::{self, Spread};
use super::system::{self, SystemUnderTest};

/// How one system's failover is measured.
#[derive(Debug, Clone)]
pub(crate) struct FailoverPlan {
    pub(crate) rounds: usize,
    /// A new probe write starts this often.
    pub(crate) probe_interval: Duration,
    /// Each probe gives up after this long (its write may still commit; it just is not acknowledged).
    pub(crate) probe_timeout: Duration,
    pub(crate) max_in_flight: usize,
    /// Writes flow this long before the kill.
    pub(crate) before_kill: Duration,
    /// Writes keep flowing this long after the first post-kill acknowledgement.
    pub(crate) after_recovery: Duration,
    /// A round fails when no write is acknowledged this long after the kill.
    pub(crate) recovery_timeout: Duration,
    /// How long a restarted member may take to catch up.
    pub(crate) catch_up_timeout: Duration,
    /// Unique per system; keys are `{key_prefix}-{round}-{seq}`.
    pub(crate) key_prefix: String,
}

/// One kill.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoundResult {
    /// The member killed (0-based), always the leader at the time.
    pub(crate) killed: usize,
    /// The leader elected afterwards.
    pub(crate) new_leader: usize,
    /// From the kill to the first acknowledgement of a write sent after it.
    pub(crate) recovery_ms: f64,
    /// From the restart of the killed member until it had applied everything the leader had.
    pub(crate) catch_up_ms: f64,
}

/// All rounds of one system.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailoverResult {
    pub(crate) rounds: Vec<RoundResult>,
    pub(crate) recovery: Option<Spread>,
    /// How long restarted members took to catch up.
    pub(crate) catch_up: Option<Spread>,
    pub(crate) acknowledged_writes: usize,
    pub(crate) lost_writes: usize,
    /// Up to ten of the lost keys.
    pub(crate) lost_examples: Vec<String>,
}

/// Writes from one prober, shared with its in-flight requests.
struct ProbeLog {
    /// Members the prober writes to (the victim is removed just before it is killed).
    targets: Mutex<Vec<usize>>,
    /// Keys of acknowledged writes.
    acked: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning means a probe task panicked; the data (a list) is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs all rounds against `sut` and checks every acknowledged write afterwards.
pub(crate) async fn run<S: SystemUnderTest>(
    sut: Arc<S>,
    http: &HttpSettings,
    plan: &FailoverPlan,
) -> anyhow::Result<FailoverResult> {
    let control = http.client()?;
    let mut probe_settings = http.clone();
    probe_settings.request_timeout = plan.probe_timeout;
    let probe_client = probe_settings.client()?;
    let all: Vec<usize> = (0..sut.members()).collect();
    let mut rounds = Vec::new();
    let mut acked_keys = Vec::new();
    for round in 0..plan.rounds {
        let (result, keys) = run_round(sut.clone(), &control, &probe_client, plan, round)
            .await
            .with_context(|| format!("{} failover round {}", sut.name(), round + 1))?;
        tracing::info!(
            system = sut.name(),
            round = round + 1,
            killed = result.killed,
            new_leader = result.new_leader,
            recovery_ms = format!("{:.1}", result.recovery_ms),
            catch_up_ms = format!("{:.1}", result.catch_up_ms),
            "failover round done"
        );
        rounds.push(result);
        acked_keys.extend(keys);
    }
    let reader =
        system::wait_for_leader(sut.as_ref(), &control, &all, plan.recovery_timeout).await?;
    let lost = sut
        .unreadable(&control, reader, &acked_keys)
        .await
        .context("reading back acknowledged writes")?;
    let durations = |ms: fn(&RoundResult) -> f64| -> Vec<Duration> {
        rounds
            .iter()
            .map(|r| Duration::from_secs_f64(ms(r) / 1000.0))
            .collect()
    };
    let mut recoveries = durations(|r| r.recovery_ms);
    let mut catch_ups = durations(|r| r.catch_up_ms);
    Ok(FailoverResult {
        recovery: stats::spread(&mut recoveries),
        catch_up: stats::spread(&mut catch_ups),
        rounds,
        acknowledged_writes: acked_keys.len(),
        lost_writes: lost.len(),
        lost_examples: lost.into_iter().take(10).collect(),
    })
}

async fn run_round<S: SystemUnderTest>(
    sut: Arc<S>,
    control: &reqwest::Client,
    probe_client: &reqwest::Client,
    plan: &FailoverPlan,
    round: usize,
) -> anyhow::Result<(RoundResult, Vec<String>)> {
    let all: Vec<usize> = (0..sut.members()).collect();
    let leader =
        system::wait_for_leader(sut.as_ref(), control, &all, plan.recovery_timeout).await?;
    let log = Arc::new(ProbeLog {
        targets: Mutex::new(all.clone()),
        acked: Mutex::new(Vec::new()),
    });
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<(Instant, Instant)>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let prober = tokio::spawn(probe(
        sut.clone(),
        probe_client.clone(),
        log.clone(),
        acks_tx,
        stop_rx,
        plan.clone(),
        format!("{}-{}", plan.key_prefix, round + 1),
    ));
    let outcome = async {
        // Writes must be flowing before the kill, or the measurement means nothing.
        let settle_end = Instant::now() + plan.before_kill;
        let mut acked_before = 0usize;
        let give_up = settle_end + plan.recovery_timeout;
        while Instant::now() < settle_end || acked_before == 0 {
            let wake = if acked_before == 0 {
                give_up
            } else {
                settle_end
            };
            match tokio::time::timeout_at(wake.into(), acks.recv()).await {
                Ok(Some(_)) => acked_before += 1,
                Ok(None) => bail!("the prober stopped"),
                Err(_) if acked_before == 0 => bail!("no write acknowledged before the kill"),
                Err(_) => {}
            }
        }
        lock(&log.targets).retain(|&m| m != leader);
        let killed_at = sut.kill(leader).await?;
        let deadline = killed_at + plan.recovery_timeout;
        let recovered_at = loop {
            match tokio::time::timeout_at(deadline.into(), acks.recv()).await {
                Ok(Some((sent, acked))) if sent >= killed_at => break acked,
                Ok(Some(_)) => {}
                Ok(None) => bail!("the prober stopped"),
                Err(_) => bail!(
                    "no write acknowledged within {:?} of killing the leader",
                    plan.recovery_timeout
                ),
            }
        };
        tokio::time::sleep(plan.after_recovery).await;
        anyhow::Ok((killed_at, recovered_at))
    }
    .await;
    let _ = stop_tx.send(true);
    prober
        .await
        .map_err(|e| anyhow!("the prober panicked: {e}"))?;
    let (killed_at, recovered_at) = match outcome {
        Ok(times) => times,
        Err(e) => {
            // Leave the group whole for whatever runs next.
            let _ = sut.restart(leader).await;
            return Err(e);
        }
    };
    let survivors: Vec<usize> = all.iter().copied().filter(|&m| m != leader).collect();
    let new_leader =
        system::wait_for_leader(sut.as_ref(), control, &survivors, plan.recovery_timeout).await?;
    // Writes have stopped: this is everything the restarted member must catch up with.
    let target = sut.applied_index(control, new_leader).await?;
    let restarted_at = Instant::now();
    sut.restart(leader).await?;
    system::wait_applied(sut.as_ref(), control, leader, target, plan.catch_up_timeout).await?;
    let keys = std::mem::take(&mut *lock(&log.acked));
    let result = RoundResult {
        killed: leader,
        new_leader,
        recovery_ms: stats::millis(recovered_at - killed_at),
        catch_up_ms: stats::millis(restarted_at.elapsed()),
    };
    Ok((result, keys))
}

/// Starts a write every `plan.probe_interval` until told to stop, then waits for the writes in flight.
async fn probe<S: SystemUnderTest>(
    sut: Arc<S>,
    http: reqwest::Client,
    log: Arc<ProbeLog>,
    acks: mpsc::UnboundedSender<(Instant, Instant)>,
    mut stop: watch::Receiver<bool>,
    plan: FailoverPlan,
    key_prefix: String,
) {
    let slots = Arc::new(Semaphore::new(plan.max_in_flight));
    let mut in_flight = JoinSet::new();
    let mut ticker = tokio::time::interval(plan.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
        }
        while in_flight.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let member = {
            let targets = lock(&log.targets);
            if targets.is_empty() {
                continue;
            }
            targets[(seq as usize) % targets.len()]
        };
        seq += 1;
        let key = format!("{key_prefix}-{seq}");
        let (sut, http, log, acks) = (sut.clone(), http.clone(), log.clone(), acks.clone());
        in_flight.spawn(async move {
            let sent = Instant::now();
            if sut.write(&http, member, &key).await.is_ok() {
                let acked = Instant::now();
                lock(&log.acked).push(key);
                let _ = acks.send((sent, acked));
            }
            drop(slot);
        });
    }
    // Each write has its own timeout, so this ends within `probe_timeout`.
    while in_flight.join_next().await.is_some() {}
}
