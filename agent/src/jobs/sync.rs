//! The assignment long poll: asks the leader for the node's assignments with `AgentSync`, passing the
//! version last seen so the coordinator answers as soon as anything changes, and hands every answer to
//! the supervisor.
//!
//! Owns the assignment version. It never interprets assignments (the supervisor's reconcile does) and
//! never stops because coordinators are away: it waits for a lease, backs off on outages, and asks for a
//! new registration when the coordinator refuses the lease.

use std::sync::Arc;
use std::time::Duration;

use protocol::pb;
use protocol::rpc::Method;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::link::{pause_unless_shutdown, Backoff, CallError, Link};

use super::Assignment;

/// How long the coordinator may hold a poll open.
const WAIT_MS: u64 = 10_000;
/// The call's timeout: the poll plus room for the answer.
const CALL_TIMEOUT: Duration = Duration::from_millis(WAIT_MS + 5_000);
/// The version sent when the agent has no answer under its current lease: it differs from any real
/// version, so the coordinator answers at once.
const UNKNOWN_VERSION: u64 = u64::MAX;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Polls until `shutdown`, publishing every answer's assignments.
pub(crate) async fn run(
    link: Arc<Link>,
    assignments: watch::Sender<Option<Vec<Assignment>>>,
    shutdown: CancellationToken,
) {
    let mut version = UNKNOWN_VERSION;
    let mut synced_epoch = None;
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let Some(epoch) = link.wait_lease(&shutdown).await else {
            return;
        };
        if synced_epoch != Some(epoch) {
            version = UNKNOWN_VERSION;
        }
        let name = link.name();
        let request = pb::SyncRequest {
            node: name.node.clone(),
            region: name.region.clone(),
            cluster: name.cluster.clone(),
            lease_epoch: epoch,
            version,
            wait_ms: WAIT_MS,
        };
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            answer = link.call::<_, pb::SyncResponse>(Method::AgentSync, &request, CALL_TIMEOUT) => answer,
        };
        match answer {
            Ok(response) => {
                backoff.reset();
                if synced_epoch != Some(epoch) || response.version != version {
                    tracing::debug!(
                        version = response.version,
                        assignments = response.assignments.len(),
                        "assignments"
                    );
                }
                version = response.version;
                synced_epoch = Some(epoch);
                let list: Vec<Assignment> = response
                    .assignments
                    .into_iter()
                    .map(Assignment::from)
                    .collect();
                assignments.send_replace(Some(list));
            }
            Err(e) if e.is_fenced() => {
                tracing::info!(lease_epoch = epoch, error = %e, "assignment poll refused the lease");
                link.fenced(epoch);
                synced_epoch = None;
                if !pause_unless_shutdown(backoff.next_pause(), &shutdown).await {
                    return;
                }
            }
            Err(e) => {
                match &e {
                    CallError::Remote(_) => tracing::warn!(error = %e, "assignment poll failed"),
                    CallError::Unreachable(_) => {
                        tracing::debug!(error = %e, "assignment poll: no coordinator")
                    }
                }
                if !pause_unless_shutdown(backoff.next_pause(), &shutdown).await {
                    return;
                }
            }
        }
    }
}
