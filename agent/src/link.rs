//! The agent's link to its coordinators, shared by registration, heartbeats, the assignment long poll and
//! the reporter: which coordinator to call (the leader as far as we know, else the next configured one),
//! following "not the leader; leader at ADDR" answers, and the node's lease epoch.
//!
//! Owns the lease: set by a registration, dropped when any caller learns it is fenced (which wakes the
//! registration loop to register again). It never retries on its own beyond leader redirects: each
//! caller decides its backoff. It never gives up on the coordinators either: an outage is an error for
//! one call, never for the agent.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use protocol::rpc::{Method, RpcClient, RpcError, RpcStatus, StatusCode};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Leader redirects followed within one call.
const MAX_REDIRECTS: usize = 3;

/// The node this agent speaks for, from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeName {
    pub(crate) region: String,
    pub(crate) cluster: String,
    pub(crate) node: String,
}

impl NodeName {
    pub(crate) fn key(&self) -> String {
        format!("{}/{}/{}", self.region, self.cluster, self.node)
    }
}

/// How a call through the link failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The leader answered with an error.
    #[error("{0}")]
    Remote(RpcStatus),
    /// No leader answered: every coordinator tried was unreachable, none is leader, or redirects ran out.
    #[error("no coordinator answered: {0}")]
    Unreachable(String),
}

impl CallError {
    /// The coordinator refuses our lease: the node is unknown, not Ready, or holds another epoch. The
    /// agent must register again.
    pub(crate) fn is_fenced(&self) -> bool {
        matches!(self, CallError::Remote(s)
            if matches!(s.code, StatusCode::NotFound | StatusCode::FailedPrecondition))
    }
}

struct Route {
    /// The coordinator that answered last.
    current: Option<String>,
    /// Index of the next configured coordinator to try.
    next: usize,
}

pub(crate) struct Link {
    client: RpcClient,
    name: NodeName,
    coordinators: Vec<String>,
    route: Mutex<Route>,
    lease: watch::Sender<Option<u64>>,
    reregister: Notify,
}

/// Whether a status is a follower's redirect, and where it points.
fn redirect(status: &RpcStatus) -> Option<Option<String>> {
    if status.code != StatusCode::FailedPrecondition || !status.message.contains("not the leader") {
        return None;
    }
    Some(
        status
            .message
            .split_once("leader at ")
            .map(|(_, addr)| addr.trim().to_owned())
            .filter(|addr| !addr.is_empty()),
    )
}

impl Link {
    /// `coordinators` must not be empty.
    pub(crate) fn new(client: RpcClient, name: NodeName, coordinators: Vec<String>) -> Link {
        Link {
            client,
            name,
            coordinators,
            route: Mutex::new(Route {
                current: None,
                next: 0,
            }),
            lease: watch::Sender::new(None),
            reregister: Notify::new(),
        }
    }

    pub(crate) fn name(&self) -> &NodeName {
        &self.name
    }

    fn target(&self) -> String {
        let mut route = self.route.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = &route.current {
            return current.clone();
        }
        let addr = self.coordinators[route.next % self.coordinators.len()].clone();
        route.next = route.next.wrapping_add(1);
        addr
    }

    fn set_current(&self, addr: Option<String>) {
        self.route
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .current = addr;
    }

    /// Calls `method` on the leader (as far as we know it), following redirects.
    pub(crate) async fn call<Req, Resp>(
        &self,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut last = String::from("no coordinator tried");
        for _ in 0..=MAX_REDIRECTS {
            let addr = self.target();
            match self
                .client
                .call_message::<Req, Resp>(&addr, method, request, timeout)
                .await
            {
                Ok(answer) => {
                    self.set_current(Some(addr));
                    return Ok(answer);
                }
                Err(RpcError::Remote(status)) => match redirect(&status) {
                    Some(leader) => {
                        tracing::debug!(%addr, ?leader, method = method.name(), "not the leader");
                        last = format!("{addr}: {}", status.message);
                        let known = leader.is_some();
                        self.set_current(leader);
                        if !known {
                            break;
                        }
                    }
                    None if status.code == StatusCode::Unavailable => {
                        self.set_current(None);
                        return Err(CallError::Unreachable(format!("{addr}: {status}")));
                    }
                    None => {
                        self.set_current(Some(addr));
                        return Err(CallError::Remote(status));
                    }
                },
                Err(e) => {
                    tracing::debug!(%addr, error = %e, method = method.name(), "coordinator call failed");
                    self.set_current(None);
                    return Err(CallError::Unreachable(format!("{addr}: {e}")));
                }
            }
        }
        Err(CallError::Unreachable(last))
    }

    /// The lease epoch of the current registration, if any.
    pub(crate) fn lease_epoch(&self) -> Option<u64> {
        *self.lease.borrow()
    }

    /// Records a successful registration.
    pub(crate) fn set_lease(&self, epoch: u64) {
        self.lease.send_replace(Some(epoch));
    }

    /// Drops the lease `epoch` (if it is still the current one) and asks for a new registration.
    pub(crate) fn fenced(&self, epoch: u64) {
        let dropped = self.lease.send_if_modified(|lease| {
            if *lease == Some(epoch) {
                *lease = None;
                true
            } else {
                false
            }
        });
        if dropped {
            tracing::info!(lease_epoch = epoch, "lease fenced; registering again");
        }
        self.reregister.notify_one();
    }

    /// Resolves when someone asked for a new registration.
    pub(crate) async fn reregister_requested(&self) {
        self.reregister.notified().await;
    }

    /// Waits for a lease; `None` when `shutdown` comes first.
    pub(crate) async fn wait_lease(&self, shutdown: &CancellationToken) -> Option<u64> {
        let mut lease = self.lease.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => None,
            epoch = lease.wait_for(Option::is_some) => epoch.ok().and_then(|e| *e),
        }
    }
}

/// Doubling backoff between a floor and a ceiling.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    current: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            current: min,
            min,
            max,
        }
    }

    /// The pause to take now; the next one doubles.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.current;
        self.current = (self.current * 2).min(self.max);
        pause
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Sleeps for `pause`; `false` when `shutdown` came first.
pub(crate) async fn pause_unless_shutdown(pause: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_told_apart_from_fencing() {
        let to = |m: &str| redirect(&RpcStatus::failed_precondition(m));
        assert_eq!(
            to("not the leader; leader at 10.0.0.2:7170"),
            Some(Some("10.0.0.2:7170".into()))
        );
        assert_eq!(to("not the leader; no leader known"), Some(None));
        assert_eq!(to("this coordinator is not the leader"), Some(None));
        assert_eq!(to("lease epoch 3 is stale (node holds 4)"), None);
        assert_eq!(
            redirect(&RpcStatus::not_found("not the leader; leader at x:1")),
            None
        );
    }

    #[test]
    fn fencing_is_recognised() {
        assert!(CallError::Remote(RpcStatus::failed_precondition("stale epoch")).is_fenced());
        assert!(CallError::Remote(RpcStatus::not_found("node unknown")).is_fenced());
        assert!(!CallError::Remote(RpcStatus::invalid_argument("bad")).is_fenced());
        assert!(!CallError::Unreachable("down".into()).is_fenced());
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let pauses: Vec<u128> = (0..4).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(100));
    }
}
