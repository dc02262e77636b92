//! Leader controllers: the loops the leader runs to move the registry towards what it should be.
//!
//! A controller is a [`Controller`]: given the replicated state and the time, it decides which commands to
//! propose ([`Controller::decide`]), and nothing else. It never proposes, sleeps or spawns; the coordinator's
//! runner wakes it as its [`Wake`] says, only on the leader, stamps each returned op into a command with the
//! tick's time and the system actor, and proposes it through Raft, where `apply` re-checks it. Because a
//! decision is a pure function of its inputs, a test drives a controller with a state and a time of its own.
//!
//! Today: the [`dispatch::Dispatcher`] (placements), the [`janitor::Janitor`] (job retention), the
//! [`health::HealthMonitor`] (node health) and the [`audit_archive::AuditArchiver`] (audit retention). Adding one is a module here and one registration line in the
//! coordinator's `controllers.rs`.

pub mod audit_archive;
pub mod dispatch;
pub mod health;
pub mod janitor;
pub mod upgrade;

use std::time::Duration;

use crate::state::{Op, RegistryState};

/// The time a controller decides at, read once per tick from the coordinator's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock Unix milliseconds: what commands are stamped with.
    pub unix_ms: u64,
    /// Milliseconds of a monotonic clock that never jumps: what silences and intervals are measured in.
    pub mono_ms: u64,
}

/// What a controller sees on one tick.
#[derive(Debug, Clone, Copy)]
pub struct Tick<'a> {
    pub state: &'a RegistryState,
    pub now: Now,
    /// When this coordinator's current leadership began, in the same monotonic milliseconds as `now`.
    pub leading_since_ms: u64,
}

/// When the runner asks a controller to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// At every tick of this interval.
    Every(Duration),
    /// At a tick of this interval when the applied state moved since the last decision (or the last
    /// proposal failed): a decision on an unchanged state would be the same.
    OnChange(Duration),
}

/// One of the leader's decision loops.
pub trait Controller: Send + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// How often it is asked.
    fn wake(&self) -> Wake;
    /// Whether its applied proposals are logged at debug level only (it runs often and its effects are
    /// visible elsewhere).
    fn quiet(&self) -> bool {
        false
    }
    /// The ops to propose now, each as its own command, in order. Pure: everything it needs is in `tick`
    /// and in what the controller was built with.
    fn decide(&mut self, tick: &Tick<'_>) -> Vec<Op>;
}
