//! Rolling upgrades: which apply version every coordinator's build knows, learned by asking them.
//!
//! On the leader, [`probe_members`] pings every other member (voters and learners) now and then and keeps
//! the lowest apply version they answer ([`MemberVersions`]); the registry's `ApplyVersionFinalizer`
//! controller reads it. A member that does not answer makes the answer unknown, and a build from before
//! apply versions answers 0, so the registry's rules change only once the whole cluster runs builds that
//! know them.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use meridian_registry::controllers::upgrade::MemberApplyVersions;
use protocol::pb;
use protocol::rpc::Method;
use tokio_util::sync::CancellationToken;

use crate::node::WeakHandle;
use crate::state::APPLY_VERSION;

/// How long one member has to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The lowest apply version the members answered at the last probe.
#[derive(Debug, Default)]
pub(crate) struct MemberVersions {
    lowest: Mutex<Option<u32>>,
}

impl MemberVersions {
    fn set(&self, lowest: Option<u32>) {
        *self.lowest.lock().unwrap_or_else(PoisonError::into_inner) = lowest;
    }
}

impl MemberApplyVersions for MemberVersions {
    fn lowest_supported(&self) -> Option<u32> {
        *self.lowest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Asks every other member for its apply version every `every` while this coordinator leads and the
/// registry is behind this build.
pub(crate) async fn probe_members(
    handle: WeakHandle,
    versions: std::sync::Arc<MemberVersions>,
    every: Duration,
    stop: CancellationToken,
) {
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
        if handle.leader_term().is_none() || handle.read(|s| s.apply_version) >= APPLY_VERSION {
            versions.set(None);
            continue;
        }
        let status = handle.status();
        let mut lowest = Some(APPLY_VERSION);
        for member in status.members.iter().filter(|m| m.id != status.node_id) {
            let answer: Result<pb::PingResponse, _> = handle
                .rpc_client()
                .call_message(
                    &member.raft_addr,
                    Method::Ping,
                    &pb::PingRequest {},
                    PING_TIMEOUT,
                )
                .await;
            match answer {
                Ok(pong) => lowest = lowest.map(|v| v.min(pong.apply_version)),
                Err(e) => {
                    tracing::debug!(member = member.id, error = %e, "apply version unknown");
                    lowest = None;
                    break;
                }
            }
        }
        versions.set(lowest);
    }
}
