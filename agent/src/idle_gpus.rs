//! The idle-GPU monitor: samples the utilization of the GPUs assigned to running attempts, feeds the
//! pure [`IdleTracker`], and publishes the UUIDs it flags for the heartbeats.
//!
//! Owns the sampling schedule only. It is not started on nodes without GPUs, samples nothing while no
//! GPU is assigned, and never fails the agent: a GPU query that fails is an unknown sample, which never
//! counts as idle.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::inventory::{GpuProbe, IdlePolicy, IdleTracker};

/// Sampling interval bounds: a tenth of the idle window, within these.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(30);

/// The tracker policy and sampling interval for "idle when at or below `percent` for `window`".
pub(crate) fn policy(percent: u32, window: Duration) -> (IdlePolicy, Duration) {
    let interval = (window / 10).clamp(MIN_INTERVAL, MAX_INTERVAL);
    (
        IdlePolicy {
            max_utilization_percent: percent,
            min_idle: window,
            // A few samples may be missed (a slow query) before an idle stretch counts as broken.
            max_sample_gap: interval * 4,
        },
        interval,
    )
}

/// Samples every `interval` until `shutdown`.
pub(crate) async fn run(
    probe: Arc<GpuProbe>,
    policy: IdlePolicy,
    interval: Duration,
    mut allocated: watch::Receiver<BTreeSet<String>>,
    idle: watch::Sender<Vec<String>>,
    shutdown: CancellationToken,
) {
    let origin = tokio::time::Instant::now();
    let mut tracker = IdleTracker::new(policy);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            changed = allocated.changed() => if changed.is_err() { return },
        }
        let assigned = allocated.borrow_and_update().clone();
        tracker.set_allocated(assigned.iter().map(String::as_str), origin.elapsed());
        if !assigned.is_empty() {
            let probe = probe.clone();
            match tokio::task::spawn_blocking(move || probe.report()).await {
                Ok(report) => {
                    let at = origin.elapsed();
                    let sampled: Vec<_> = report
                        .gpus
                        .into_iter()
                        .filter(|g| assigned.contains(&g.uuid))
                        .collect();
                    tracker.observe(&sampled, at);
                }
                Err(e) => tracing::warn!(error = %e, "GPU sampling task failed"),
            }
        }
        let flagged: Vec<String> = tracker
            .idle_gpus(origin.elapsed())
            .into_iter()
            .map(|g| g.uuid)
            .collect();
        idle.send_if_modified(|current| {
            if *current == flagged {
                false
            } else {
                tracing::info!(idle = ?flagged, "idle GPUs");
                *current = flagged;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_follows_the_window_within_bounds() {
        let (p, every) = policy(5, Duration::from_secs(600));
        assert_eq!(every, Duration::from_secs(30));
        assert_eq!(p.min_idle, Duration::from_secs(600));
        assert_eq!(p.max_utilization_percent, 5);
        assert_eq!(p.max_sample_gap, Duration::from_secs(120));
        let (_, every) = policy(5, Duration::from_secs(60));
        assert_eq!(every, Duration::from_secs(6));
        let (_, every) = policy(5, Duration::from_secs(3));
        assert_eq!(every, Duration::from_secs(1));
    }
}
