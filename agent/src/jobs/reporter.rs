//! The reporter: sends the queued job events to the leader in order, in batches, with the current lease
//! epoch, and removes them from the queue once a coordinator has answered for them.
//!
//! Owns delivery, not content: every event already names its (job, attempt, replica). An answer — each event accepted or refused as stale — removes the batch;
//! a refused lease keeps it and asks for a new registration; an outage keeps it and retries with backoff,
//! for as long as it takes. It never drops an event no coordinator answered for, and never reorders
//! the queue.

use std::sync::Arc;
use std::time::Duration;

use protocol::pb;
use protocol::rpc::Method;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::link::{pause_unless_shutdown, Backoff, CallError, Link};
use crate::metrics::{AgentMetrics, CallResult};

use super::store::{JobStore, StoreError};

/// Events sent in one `AgentReport`.
const BATCH: usize = 64;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Sends until `shutdown`; fails only when the store does.
pub(crate) async fn run(
    link: Arc<Link>,
    store: Arc<JobStore>,
    queued: Arc<Notify>,
    metrics: Arc<AgentMetrics>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let Some(epoch) = link.wait_lease(&shutdown).await else {
            return Ok(());
        };
        let batch = store.pending_events(BATCH)?;
        if batch.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = queued.notified() => {}
            }
            continue;
        }
        let name = link.name();
        let request = pb::ReportRequest {
            node: name.node.clone(),
            region: name.region.clone(),
            cluster: name.cluster.clone(),
            lease_epoch: epoch,
            events: batch.iter().map(|q| q.event.clone()).collect(),
        };
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            answer = link.call::<_, pb::ReportResponse>(Method::AgentReport, &request, CALL_TIMEOUT) => answer,
        };
        match answer {
            Ok(response) => {
                metrics.reported(CallResult::ok);
                backoff.reset();
                log_acks(&request.events, &response.acks);
                let seqs: Vec<u64> = batch.iter().map(|q| q.seq).collect();
                store.remove_events(&seqs)?;
            }
            Err(e) if e.is_fenced() => {
                metrics.reported(CallResult::failed);
                tracing::info!(lease_epoch = epoch, error = %e, events = batch.len(), "report refused the lease; keeping the events");
                link.fenced(epoch);
                if !pause_unless_shutdown(backoff.next_pause(), &shutdown).await {
                    return Ok(());
                }
            }
            Err(e) => {
                metrics.reported(CallResult::failed);
                match &e {
                    CallError::Remote(_) => {
                        tracing::warn!(error = %e, events = batch.len(), "report failed; retrying")
                    }
                    CallError::Unreachable(_) => {
                        tracing::debug!(error = %e, events = batch.len(), "report: no coordinator")
                    }
                }
                if !pause_unless_shutdown(backoff.next_pause(), &shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

fn log_acks(events: &[pb::JobEvent], acks: &[pb::EventAck]) {
    if acks.len() != events.len() {
        tracing::warn!(
            events = events.len(),
            acks = acks.len(),
            "the coordinator answered a report with a different number of acks"
        );
    }
    for (event, ack) in events.iter().zip(acks) {
        if ack.accepted {
            tracing::debug!(job = %event.job_id, attempt = event.attempt, replica = event.replica, "event accepted");
        } else {
            tracing::info!(job = %event.job_id, attempt = event.attempt, replica = event.replica, reason = %ack.reason, "event refused as stale; dropped");
        }
    }
}
