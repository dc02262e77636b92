//! The leader's controller runner: every [`Controller`] of the registry runs here, one task each.
//!
//! [`register_all`] is the list: one line per controller. The runner wakes each as its `Wake` says; on a
//! coordinator that is not the leader it does nothing, and every new leadership starts its clocks afresh.
//! Each op a controller decides becomes one command stamped with the tick's time and the system actor,
//! proposed through Raft in order; when one is refused the rest wait for the next tick. The tasks live in one
//! tracker, so shutdown stops and awaits them all.

use std::sync::Arc;
use std::time::Duration;

use meridian_registry::controllers::audit_archive::{AuditArchiver, AuditRetention};
use meridian_registry::controllers::dispatch::Dispatcher;
use meridian_registry::controllers::health::{HealthMonitor, LastHeard};
use meridian_registry::controllers::janitor::{Janitor, JobRetention};
use meridian_registry::controllers::upgrade::ApplyVersionFinalizer;
use meridian_registry::controllers::{Controller, Tick, Wake};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fleet::FleetTimings;
use crate::node::{Handle, RaftTimings, WeakHandle};
use crate::state::{Actor, Command};
use crate::upgrade::{probe_members, MemberVersions};

/// How often the leader looks, when the state moved, whether the audit log holds more records than it keeps.
const AUDIT_ARCHIVE_TICK: Duration = Duration::from_millis(500);

/// How often the leader looks whether every member knows a newer apply version.
const APPLY_VERSION_TICK: Duration = Duration::from_secs(1);

/// What the controllers are built from.
pub(crate) struct ControllerConfig {
    pub(crate) raft: RaftTimings,
    pub(crate) fleet: FleetTimings,
    pub(crate) jobs: JobRetention,
    pub(crate) audit: AuditRetention,
    pub(crate) last_heard: Arc<dyn LastHeard>,
}

/// Every controller this coordinator runs.
pub(crate) fn register_all(runner: &Runner, handle: &Handle, config: ControllerConfig) {
    let fleet = config.fleet;
    // Renewed every heartbeat, so a leader holding its quorum never sees its lease lapse.
    runner.spawn_task(keep_lease(
        handle.downgrade(),
        Duration::from_millis(config.raft.heartbeat_ms.max(1)),
        runner.stop.clone(),
    ));
    runner.spawn(
        handle,
        Dispatcher {
            tick: fleet.dispatch_tick,
        },
    );
    runner.spawn(
        handle,
        Janitor {
            retention: config.jobs,
        },
    );
    runner.spawn(
        handle,
        HealthMonitor {
            ttl: fleet.ttl,
            lost_after: fleet.lost_after,
            tick: fleet.tick,
            last_heard: config.last_heard,
        },
    );
    runner.spawn(
        handle,
        AuditArchiver {
            retention: config.audit,
            tick: AUDIT_ARCHIVE_TICK,
        },
    );
    // Not a leader's controller: every coordinator copies the archived audit segments it lacks.
    runner.spawn_task(crate::audit_repair::repair_loop(
        handle.downgrade(),
        runner.stop.clone(),
    ));
    let versions = Arc::new(MemberVersions::default());
    runner.spawn_task(probe_members(
        handle.downgrade(),
        versions.clone(),
        APPLY_VERSION_TICK,
        runner.stop.clone(),
    ));
    runner.spawn(
        handle,
        ApplyVersionFinalizer {
            tick: APPLY_VERSION_TICK,
            members: versions,
        },
    );
}

/// The tasks of the registered controllers.
#[derive(Default)]
pub(crate) struct Runner {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Runner {
    /// Starts `controller` on its own task.
    pub(crate) fn spawn(&self, handle: &Handle, controller: impl Controller) {
        self.tracker
            .spawn(run(handle.downgrade(), controller, self.stop.clone()));
    }

    /// Starts a task that feeds a controller what it needs from outside the registry (it stops with
    /// the runner's token).
    pub(crate) fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Stops every controller and waits until their tasks are gone.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Renews the leader's lease every `every` (see `Handle::leader_term`).
async fn keep_lease(handle: WeakHandle, every: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(handle) = handle.upgrade() else {
            return;
        };
        handle.renew_lease().await;
    }
}

async fn run(handle: WeakHandle, mut controller: impl Controller, stop: CancellationToken) {
    let (every, on_change) = match controller.wake() {
        Wake::Every(every) => (every, false),
        Wake::OnChange(every) => (every, true),
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The term this node leads in and when (monotonic ms) that began.
    let mut leading: Option<(u64, u64)> = None;
    // The applied index the last decision looked at.
    let mut last_seen: Option<u64> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(handle) = handle.upgrade() else {
            return;
        };
        let Some(term) = handle.leader_term() else {
            leading = None;
            last_seen = None;
            continue;
        };
        let now = handle.clock().now();
        let since = match leading {
            Some((t, since)) if t == term => since,
            _ => {
                leading = Some((term, now.mono_ms));
                now.mono_ms
            }
        };
        let applied = handle.log_status().applied_index;
        if on_change && applied.is_some() && applied == last_seen {
            continue;
        }
        let ops = handle.read(|state| {
            controller.decide(&Tick {
                state,
                now,
                leading_since_ms: since,
            })
        });
        last_seen = applied;
        for op in ops {
            let kind = op.action();
            match handle
                .write(Command::new(now.unix_ms, Actor::system(), op))
                .await
            {
                Ok(outcome) if controller.quiet() => {
                    tracing::debug!(controller = controller.name(), op = %kind, ?outcome, "applied")
                }
                Ok(outcome) => {
                    tracing::info!(controller = controller.name(), op = %kind, ?outcome, "applied")
                }
                Err(e) => {
                    // Decide again at the next tick even if nothing else moves the state.
                    last_seen = None;
                    tracing::debug!(controller = controller.name(), op = %kind, error = %e, "not applied");
                    break;
                }
            }
        }
    }
}
