//! The health monitor: turns a node's silence into health changes, Ready → Unreachable → Lost.
//!
//! Owns [`transitions`], the pure rule, and [`HealthMonitor`], the controller that proposes one
//! `SetNodeHealth` per change. When a node was last heard from is soft state the coordinator keeps in memory
//! (never replicated, since heartbeats are not commands); it reaches the monitor through [`LastHeard`], in
//! milliseconds of the coordinator's monotonic clock. A node this leader never heard from counts as heard
//! when the leadership began, so a new leader gives every node a full TTL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Controller, Tick, Wake};
use crate::state::{FleetOp, NodeHealthState, NodeRecord, Op};

/// When each node (keyed `region/cluster/node`) was last heard from, in monotonic milliseconds.
pub trait LastHeard: Send + Sync {
    /// Every node's.
    fn last_heard_ms(&self) -> HashMap<String, u64>;
    /// One node's.
    fn node_last_heard_ms(&self, key: &str) -> Option<u64> {
        self.last_heard_ms().get(key).copied()
    }
}

/// The health changes due at `now_ms`: a Ready node silent for `ttl` becomes Unreachable; a node silent for
/// `ttl + lost_after` (Unreachable for `lost_after`) becomes Lost. A node missing from `last_seen` is
/// treated as heard from at `fresh_since_ms` (when this coordinator became leader). All instants are
/// milliseconds of one monotonic clock.
pub fn transitions<'a>(
    nodes: impl IntoIterator<Item = &'a NodeRecord>,
    last_seen: &HashMap<String, u64>,
    fresh_since_ms: u64,
    now_ms: u64,
    ttl: Duration,
    lost_after: Duration,
) -> Vec<(String, u64, NodeHealthState)> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let lost_ms = ttl_ms.saturating_add(u64::try_from(lost_after.as_millis()).unwrap_or(u64::MAX));
    let mut out = Vec::new();
    for node in nodes {
        let seen = last_seen
            .get(&node.key)
            .map_or(fresh_since_ms, |at| (*at).max(fresh_since_ms));
        let silent = now_ms.saturating_sub(seen);
        let next = match node.health {
            NodeHealthState::Ready if silent >= ttl_ms => Some(NodeHealthState::Unreachable),
            NodeHealthState::Unreachable if silent >= lost_ms => Some(NodeHealthState::Lost),
            _ => None,
        };
        if let Some(health) = next {
            out.push((node.key.clone(), node.lease_epoch, health));
        }
    }
    out
}

/// Node health as a controller: every tick, one `SetNodeHealth` per change [`transitions`] finds due.
pub struct HealthMonitor {
    /// A Ready node not heard from for this long becomes Unreachable.
    pub ttl: Duration,
    /// An Unreachable node stays so for this long before it becomes Lost.
    pub lost_after: Duration,
    /// How often the leader looks.
    pub tick: Duration,
    pub last_heard: Arc<dyn LastHeard>,
}

impl Controller for HealthMonitor {
    fn name(&self) -> &'static str {
        "health-monitor"
    }

    fn wake(&self) -> Wake {
        Wake::Every(self.tick)
    }

    fn decide(&mut self, tick: &Tick<'_>) -> Vec<Op> {
        let seen = self.last_heard.last_heard_ms();
        transitions(
            tick.state.nodes(),
            &seen,
            tick.leading_since_ms,
            tick.now.mono_ms,
            self.ttl,
            self.lost_after,
        )
        .into_iter()
        .map(|(key, lease_epoch, health)| {
            Op::Fleet(FleetOp::SetNodeHealth {
                key,
                health,
                lease_epoch,
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, health: NodeHealthState) -> NodeRecord {
        NodeRecord {
            key: key.into(),
            region: "eu".into(),
            cluster: "eu1".into(),
            node: key.into(),
            cpu_cores: 1,
            memory_bytes: 1,
            gpu_count: 0,
            agent_version: String::new(),
            lease_epoch: 3,
            health,
            registered_at: 0,
            health_changed_at: 0,
            gpus: Vec::new(),
            labels: Default::default(),
            rpc_addr: String::new(),
            os: String::new(),
            limit_mode: String::new(),
            idle_gpus: Vec::new(),
            assign_version: 0,
            draining: false,
            admission: Default::default(),
            admission_reason: String::new(),
            approved: None,
        }
    }

    const TTL: Duration = Duration::from_secs(5);
    const LOST: Duration = Duration::from_secs(30);
    const TTL_MS: u64 = 5_000;
    const LOST_MS: u64 = 30_000;

    #[test]
    fn silence_makes_ready_unreachable_then_lost() {
        let t0: u64 = 1_000_000;
        let nodes = [
            record("fresh", NodeHealthState::Ready),
            record("quiet", NodeHealthState::Ready),
            record("gone", NodeHealthState::Unreachable),
            record("long-gone", NodeHealthState::Lost),
        ];
        let seen = HashMap::from([
            ("fresh".to_owned(), t0 + 40_000),
            ("quiet".to_owned(), t0 + 35_000),
            ("gone".to_owned(), t0),
            ("long-gone".to_owned(), t0),
        ]);
        let now = t0 + 41_000;
        let out = transitions(&nodes, &seen, t0, now, TTL, LOST);
        assert_eq!(
            out,
            vec![
                ("quiet".to_owned(), 3, NodeHealthState::Unreachable),
                ("gone".to_owned(), 3, NodeHealthState::Lost),
            ]
        );
    }

    #[test]
    fn unreachable_is_not_lost_before_lost_after() {
        let t0: u64 = 1_000_000;
        let nodes = [record("n", NodeHealthState::Unreachable)];
        let seen = HashMap::from([("n".to_owned(), t0)]);
        let just_before = t0 + TTL_MS + LOST_MS - 1;
        assert!(transitions(&nodes, &seen, t0, just_before, TTL, LOST).is_empty());
        let at = t0 + TTL_MS + LOST_MS;
        assert_eq!(transitions(&nodes, &seen, t0, at, TTL, LOST).len(), 1);
    }

    #[test]
    fn a_new_leader_gives_every_node_a_full_ttl() {
        let t0: u64 = 1_000_000;
        let nodes = [
            record("old", NodeHealthState::Ready),
            record("unknown", NodeHealthState::Ready),
        ];
        let seen = HashMap::from([("old".to_owned(), t0)]);
        let leader_since = t0 + 100_000;
        let before_ttl = leader_since + TTL_MS - 1;
        assert!(transitions(&nodes, &seen, leader_since, before_ttl, TTL, LOST).is_empty());
        let after_ttl = leader_since + TTL_MS;
        assert_eq!(
            transitions(&nodes, &seen, leader_since, after_ttl, TTL, LOST).len(),
            2
        );
    }
}
