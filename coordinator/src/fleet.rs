//! Agent registration, heartbeats and node health on the coordinator side.
//!
//! Owns the agent RPCs (`AgentRegister`, `AgentHeartbeat`), the in-memory liveness table (soft state: when
//! this coordinator last heard from each node, never replicated) and the leader-only health monitor that
//! turns silence into `SetNodeHealth` commands. The decision itself is the pure [`transitions`]; the monitor
//! task only feeds it. It must never let an agent speak for another node, and never propose a health change
//! from a coordinator that is not the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use protocol::pb;
use protocol::rpc::{decode_message, encode_message, CallContext, RpcStatus};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::node::{Handle, WeakHandle, WriteError};
use crate::state::{
    node_key, Actor, AuditOutcome, Command, NodeHealthState, NodeRecord, Op, Outcome,
};

/// Timings of the fleet: how often agents beat, and how long silence lasts before a node changes health.
#[derive(Debug, Clone, Copy)]
pub struct FleetTimings {
    /// The heartbeat interval told to agents.
    pub heartbeat: Duration,
    /// A Ready node not heard from for this long becomes Unreachable.
    pub ttl: Duration,
    /// An Unreachable node stays so for this long before it becomes Lost.
    pub lost_after: Duration,
    /// How often the leader's monitor looks.
    pub tick: Duration,
}

impl Default for FleetTimings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
            lost_after: Duration::from_secs(30),
            tick: Duration::from_millis(250),
        }
    }
}

/// When this coordinator last heard from each node (keyed `region/cluster/node`).
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    seen: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    fn heard(&self, key: &str, at: Instant) {
        self.lock().insert(key.to_owned(), at);
    }

    fn snapshot(&self) -> HashMap<String, Instant> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // The map holds plain instants; a panic while holding the lock cannot leave it half-updated.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The health changes due at `now`: a Ready node silent for `ttl` becomes Unreachable; a node silent for
/// `ttl + lost_after` (Unreachable for `lost_after`) becomes Lost. A node missing from `last_seen` is
/// treated as heard from at `fresh_since` (the instant this coordinator became leader), so a new leader
/// gives every node a full TTL.
pub(crate) fn transitions<'a>(
    nodes: impl IntoIterator<Item = &'a NodeRecord>,
    last_seen: &HashMap<String, Instant>,
    fresh_since: Instant,
    now: Instant,
    ttl: Duration,
    lost_after: Duration,
) -> Vec<(String, u64, NodeHealthState)> {
    let mut out = Vec::new();
    for node in nodes {
        let seen = last_seen
            .get(&node.key)
            .map_or(fresh_since, |at| (*at).max(fresh_since));
        let silent = now.saturating_duration_since(seen);
        let next = match node.health {
            NodeHealthState::Ready if silent >= ttl => Some(NodeHealthState::Unreachable),
            NodeHealthState::Unreachable if silent >= ttl + lost_after => {
                Some(NodeHealthState::Lost)
            }
            _ => None,
        };
        if let Some(health) = next {
            out.push((node.key.clone(), node.lease_epoch, health));
        }
    }
    out
}

/// The agent-facing side of a coordinator, shared by the RPC service and the monitor.
pub(crate) struct Fleet {
    pub(crate) timings: FleetTimings,
    pub(crate) liveness: Liveness,
    /// Set once the node's [`Handle`] exists (the RPC server starts before it).
    handle: OnceLock<WeakHandle>,
}

impl Fleet {
    pub(crate) fn new(timings: FleetTimings) -> Arc<Self> {
        Arc::new(Self {
            timings,
            liveness: Liveness::default(),
            handle: OnceLock::new(),
        })
    }

    pub(crate) fn attach(&self, handle: &Handle) {
        // Only the first handle counts; a node attaches exactly once, right after it starts.
        let _ = self.handle.set(handle.downgrade());
    }

    fn handle(&self) -> Result<Handle, RpcStatus> {
        self.handle
            .get()
            .and_then(WeakHandle::upgrade)
            .ok_or_else(|| RpcStatus::unavailable("the coordinator is starting or stopping"))
    }

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.timings.heartbeat.as_millis()).unwrap_or(u64::MAX)
    }

    /// `AgentRegister`.
    pub(crate) async fn register(&self, ctx: CallContext, body: Bytes) -> Result<Bytes, RpcStatus> {
        let req: pb::NodeRegistration = decode_message(&body)?;
        let handle = self.handle()?;
        check_identity(
            &handle,
            &ctx,
            &req.region,
            &req.cluster,
            &req.node,
            "node.register",
        )
        .await?;
        handle.ensure_leader()?;
        let resources = req.resources.unwrap_or_default();
        let cmd = Command::new(
            now_ms(),
            agent_actor(&ctx),
            Op::RegisterNode {
                region: req.region,
                cluster: req.cluster,
                node: req.node,
                cpu_cores: resources.cpu_cores,
                memory_bytes: resources.memory_bytes,
                gpu_count: resources.gpu_count,
                agent_version: req.agent_version,
            },
        );
        let node = match handle.write(cmd).await {
            Ok(Outcome::Node { node }) => node,
            Ok(other) => return Err(RpcStatus::internal(format!("unexpected outcome {other:?}"))),
            Err(WriteError::Domain(e)) => return Err(RpcStatus::invalid_argument(e.to_string())),
            Err(e) => return Err(RpcStatus::unavailable(e.to_string())),
        };
        self.liveness.heard(&node.key, Instant::now());
        tracing::info!(node = %node.key, lease_epoch = node.lease_epoch, "node registered");
        Ok(encode_message(&pb::NodeRegistrationAck {
            lease_epoch: node.lease_epoch,
            heartbeat_interval_ms: self.interval_ms(),
        }))
    }

    /// `AgentHeartbeat`.
    pub(crate) async fn heartbeat(
        &self,
        ctx: CallContext,
        body: Bytes,
    ) -> Result<Bytes, RpcStatus> {
        let req: pb::Heartbeat = decode_message(&body)?;
        let handle = self.handle()?;
        check_identity(
            &handle,
            &ctx,
            &req.region,
            &req.cluster,
            &req.node,
            "node.heartbeat",
        )
        .await?;
        handle.ensure_leader()?;
        let key = node_key(&req.region, &req.cluster, &req.node);
        let record = handle.read(|s| s.node(&key).map(|n| (n.lease_epoch, n.health)));
        let Some((lease_epoch, health)) = record else {
            return Err(RpcStatus::not_found(format!(
                "node {key} is not registered"
            )));
        };
        if health != NodeHealthState::Ready {
            // Only a registration makes a node Ready again; the agent registers when told NOT_FOUND.
            return Err(RpcStatus::not_found(format!(
                "node {key} is {}; register again",
                health.as_str()
            )));
        }
        self.liveness.heard(&key, Instant::now());
        Ok(encode_message(&pb::HeartbeatAck {
            lease_epoch,
            heartbeat_interval_ms: self.interval_ms(),
        }))
    }
}

/// Refuses (and audits) an agent speaking for a node other than its own.
async fn check_identity(
    handle: &Handle,
    ctx: &CallContext,
    region: &str,
    cluster: &str,
    node: &str,
    action: &str,
) -> Result<(), RpcStatus> {
    let Err(status) = ctx.ensure_speaks_for_node(region, cluster, node) else {
        return Ok(());
    };
    let target: String = node_key(region, cluster, node).chars().take(256).collect();
    tracing::warn!(caller = %ctx.peer.uri(), %target, "agent refused: not its own node");
    let record = Command::new(
        now_ms(),
        agent_actor(ctx),
        Op::RecordAudit {
            action: action.to_owned(),
            project: None,
            target,
            outcome: AuditOutcome::Denied,
            detail: status.message.clone(),
        },
    );
    if let Err(e) = handle.write(record).await {
        tracing::warn!(error = %e, "could not record a refused agent call");
    }
    Err(status)
}

fn agent_actor(ctx: &CallContext) -> Actor {
    Actor {
        principal_id: None,
        name: ctx.peer.uri(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The leader-only health monitor: every tick, when this node leads, proposes the due health changes.
pub(crate) async fn run_monitor(fleet: Arc<Fleet>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(fleet.timings.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The term in which this node became leader, and when: clocks start fresh with every leadership.
    let mut leading: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Ok(handle) = fleet.handle() else {
            continue;
        };
        let Some(term) = handle.leader_term() else {
            leading = None;
            continue;
        };
        let since = match leading {
            Some((t, since)) if t == term => since,
            _ => {
                let now = Instant::now();
                leading = Some((term, now));
                now
            }
        };
        let nodes: Vec<NodeRecord> = handle.read(|s| s.nodes().cloned().collect());
        let due = transitions(
            &nodes,
            &fleet.liveness.snapshot(),
            since,
            Instant::now(),
            fleet.timings.ttl,
            fleet.timings.lost_after,
        );
        for (key, lease_epoch, health) in due {
            let cmd = Command::new(
                now_ms(),
                Actor::system(),
                Op::SetNodeHealth {
                    key: key.clone(),
                    health,
                    lease_epoch,
                },
            );
            match handle.write(cmd).await {
                Ok(_) => {
                    tracing::info!(node = %key, health = health.as_str(), "node health changed")
                }
                Err(e) => tracing::debug!(node = %key, error = %e, "health change not applied"),
            }
        }
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
        }
    }

    const TTL: Duration = Duration::from_secs(5);
    const LOST: Duration = Duration::from_secs(30);

    #[test]
    fn silence_makes_ready_unreachable_then_lost() {
        let t0 = Instant::now();
        let nodes = [
            record("fresh", NodeHealthState::Ready),
            record("quiet", NodeHealthState::Ready),
            record("gone", NodeHealthState::Unreachable),
            record("long-gone", NodeHealthState::Lost),
        ];
        let seen = HashMap::from([
            ("fresh".to_owned(), t0 + Duration::from_secs(40)),
            ("quiet".to_owned(), t0 + Duration::from_secs(35)),
            ("gone".to_owned(), t0),
            ("long-gone".to_owned(), t0),
        ]);
        let now = t0 + Duration::from_secs(41);
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
        let t0 = Instant::now();
        let nodes = [record("n", NodeHealthState::Unreachable)];
        let seen = HashMap::from([("n".to_owned(), t0)]);
        let just_before = t0 + TTL + LOST - Duration::from_millis(1);
        assert!(transitions(&nodes, &seen, t0, just_before, TTL, LOST).is_empty());
        let at = t0 + TTL + LOST;
        assert_eq!(transitions(&nodes, &seen, t0, at, TTL, LOST).len(), 1);
    }

    #[test]
    fn a_new_leader_gives_every_node_a_full_ttl() {
        let t0 = Instant::now();
        let nodes = [
            record("old", NodeHealthState::Ready),
            record("unknown", NodeHealthState::Ready),
        ];
        let seen = HashMap::from([("old".to_owned(), t0)]);
        let leader_since = t0 + Duration::from_secs(100);
        let before_ttl = leader_since + TTL - Duration::from_millis(1);
        assert!(transitions(&nodes, &seen, leader_since, before_ttl, TTL, LOST).is_empty());
        let after_ttl = leader_since + TTL;
        assert_eq!(
            transitions(&nodes, &seen, leader_since, after_ttl, TTL, LOST).len(),
            2
        );
    }
}
