//! What a coordinator says of itself: the cluster as this member sees it ([`ClusterStatus`]), its log and
//! snapshot positions ([`LogStatus`]), readiness, and waiting on either until a condition holds, re-checked
//! on every change of openraft's metrics. Reads only; the state is read outside the metrics' borrow.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Handle, MemberNode, NodeId};

/// One member as the cluster-status view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ClusterMember)]
pub struct MemberStatus {
    // `NodeId` is an alias, which utoipa would reference as a schema of its own.
    #[schema(value_type = u64)]
    pub id: NodeId,
    pub name: String,
    pub raft_addr: String,
    pub admin_addr: String,
    pub voter: bool,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    #[schema(value_type = u64)]
    pub node_id: NodeId,
    pub name: String,
    pub state: String,
    #[schema(value_type = Option<u64>)]
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied_index: u64,
    pub committed_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// The apply semantics the replicated state runs under, as committed by the group.
    pub apply_version: u32,
    /// The newest apply version this member's build knows.
    pub apply_version_known: u32,
}

/// Why [`Handle::wait_for`] or [`Handle::wait_for_log`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The condition did not hold before the deadline; `last` describes the last status seen.
    #[error("condition not met in time; last seen: {last}")]
    Timeout { last: String },
    /// Raft stopped while waiting.
    #[error("raft stopped")]
    Stopped,
}

/// This node's log and snapshot positions (`None`: nothing yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStatus {
    /// The last entry in the local log.
    pub last_log_index: Option<u64>,
    /// The last entry applied to the local state machine.
    pub applied_index: Option<u64>,
    /// The last entry covered by the local snapshot.
    pub snapshot_index: Option<u64>,
    /// The last entry removed from the local log (covered by the snapshot).
    pub purged_index: Option<u64>,
}

fn log_status_from(m: &RaftMetrics<NodeId, MemberNode>) -> LogStatus {
    LogStatus {
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|id| id.index),
        snapshot_index: m.snapshot.map(|id| id.index),
        purged_index: m.purged.map(|id| id.index),
    }
}

fn server_state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Learner => "learner",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Leader => "leader",
        ServerState::Shutdown => "shutdown",
    }
}

impl Handle {
    /// The cluster as this node sees it.
    pub fn status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        self.status_from(&m)
    }

    fn status_from(&self, m: &RaftMetrics<NodeId, MemberNode>) -> ClusterStatus {
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                name: node.name.clone(),
                raft_addr: node.raft_addr.clone(),
                admin_addr: node.admin_addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        ClusterStatus {
            node_id: self.inner.id,
            name: self.inner.name.clone(),
            state: server_state_name(m.state).to_string(),
            leader: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map_or(0, |id| id.index),
            committed_index: *self.inner.committed.borrow(),
            members,
            apply_version: self.read(|s| s.apply_version),
            apply_version_known: crate::state::APPLY_VERSION,
        }
    }

    /// True once a leader is known and this node has applied up to its committed index.
    pub fn is_ready(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let applied = m.last_applied.map(|id| id.index);
        let committed = *self.inner.committed.borrow();
        m.current_leader.is_some() && applied >= committed
    }

    /// Waits until `condition` holds for this node's status, re-checking on every Raft metrics change.
    pub async fn wait_for(
        &self,
        condition: impl FnMut(&ClusterStatus) -> bool,
        timeout: Duration,
    ) -> Result<ClusterStatus, WaitError> {
        self.wait_metrics(|m| self.status_from(m), condition, timeout)
            .await
    }

    /// This node's log and snapshot positions.
    pub fn log_status(&self) -> LogStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        log_status_from(&m)
    }

    /// Waits until `condition` holds for this node's log status, re-checking on every Raft metrics change.
    pub async fn wait_for_log(
        &self,
        condition: impl FnMut(&LogStatus) -> bool,
        timeout: Duration,
    ) -> Result<LogStatus, WaitError> {
        self.wait_metrics(log_status_from, condition, timeout).await
    }

    async fn wait_metrics<T: std::fmt::Debug>(
        &self,
        view: impl Fn(&RaftMetrics<NodeId, MemberNode>) -> T,
        mut condition: impl FnMut(&T) -> bool,
        timeout: Duration,
    ) -> Result<T, WaitError> {
        let deadline = Instant::now() + timeout;
        let mut metrics = self.inner.raft.metrics();
        loop {
            // A copy: the view may read the state, which must never wait while openraft's metrics are
            // borrowed.
            let current = metrics.borrow_and_update().clone();
            let seen = view(&current);
            if condition(&seen) {
                return Ok(seen);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WaitError::Stopped),
                Err(_) => {
                    return Err(WaitError::Timeout {
                        last: format!("{seen:?}"),
                    })
                }
            }
        }
    }
}
