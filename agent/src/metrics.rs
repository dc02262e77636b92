//! The agent's Prometheus metrics, kept with the `prometheus-client` library and served at `GET /metrics`
//! in the OpenMetrics text format on the opt-in `metrics_listen` address.
//!
//! Series: attempts this agent supervises by state, attempt starts and ends by outcome, registrations,
//! heartbeats and report batches by result, whether the agent holds a lease and heard its coordinators
//! last time it called, the events waiting to be reported, and the node's GPUs. The counters and the
//! attempt gauges live as long as the agent and are moved by the tasks that do the work; the link, queue
//! and GPU gauges are read when scraped, into a fresh registry that also holds the long-lived families.
//! Labels come from fixed sets only, never from job ids, names or anything a user sent, so nothing can
//! grow the label set. The listener is unauthenticated: it is refused on a non-loopback address unless the
//! operator set `metrics_allow_non_loopback` (see [`MetricsListener::bind`]). Must never block the tasks
//! that count: an update is one atomic operation.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::jobs::store::{ExitSummary, JobStore};
use crate::link::Link;

/// The content type of the metrics text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the metrics listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "metrics_listen {0} is not a loopback address and the metrics endpoint has no authentication; \
         set metrics_allow_non_loopback = true to serve it there anyway"
    )]
    OffLoopback(SocketAddr),
    #[error("metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The agent's metrics listener, bound before the agent runs so that its address is known (port 0 picks
/// one). Clones share one socket.
#[derive(Debug, Clone)]
pub struct MetricsListener {
    socket: Arc<std::net::TcpListener>,
    local_addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `addr`. The endpoint answers anyone who reaches it, so an address other than loopback is
    /// refused unless `allow_non_loopback` says the operator wants it there (behind a firewall, say).
    pub fn bind(addr: SocketAddr, allow_non_loopback: bool) -> Result<Self, MetricsError> {
        if !addr.ip().is_loopback() && !allow_non_loopback {
            return Err(MetricsError::OffLoopback(addr));
        }
        let bind_error = |source| MetricsError::Bind { addr, source };
        let socket = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        socket.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = socket.local_addr().map_err(bind_error)?;
        Ok(Self {
            socket: Arc::new(socket),
            local_addr,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn tokio_listener(&self) -> std::io::Result<tokio::net::TcpListener> {
        let socket = self.socket.try_clone()?;
        socket.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(socket)
    }
}

/// How a launch went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum StartOutcome {
    started,
    launch_failed,
}

/// How an attempt ended on this node.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum ExitOutcome {
    succeeded,
    failed,
    cancelled,
    timed_out,
    /// Stopped because it was no longer assigned to this node.
    unassigned,
    /// Its process was gone and left no exit status.
    vanished,
}

impl ExitOutcome {
    pub(crate) fn of(exit: &ExitSummary) -> Self {
        if exit.cancelled {
            ExitOutcome::cancelled
        } else if exit.timed_out {
            ExitOutcome::timed_out
        } else if exit.exit_code == Some(0) {
            ExitOutcome::succeeded
        } else {
            ExitOutcome::failed
        }
    }
}

/// Whether a call to the coordinators got an answer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum CallResult {
    ok,
    failed,
}

/// The state of an attempt whose process the agent supervises.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum AttemptState {
    running,
    stopping,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    outcome: StartOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    outcome: ExitOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: CallResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: AttemptState,
}

type CountGauge = Gauge<u64, AtomicU64>;

/// The agent's long-lived metrics, shared by its tasks.
#[derive(Default)]
pub(crate) struct AgentMetrics {
    starts: Family<StartLabels, Counter>,
    exits: Family<ExitLabels, Counter>,
    registrations: Family<ResultLabels, Counter>,
    heartbeats: Family<ResultLabels, Counter>,
    reports: Family<ResultLabels, Counter>,
    attempts: Family<StateLabels, CountGauge>,
    link_up: CountGauge,
}

impl AgentMetrics {
    pub(crate) fn started(&self, outcome: StartOutcome) {
        self.starts.get_or_create(&StartLabels { outcome }).inc();
    }

    pub(crate) fn ended(&self, outcome: ExitOutcome) {
        self.exits.get_or_create(&ExitLabels { outcome }).inc();
    }

    /// A registration (`heartbeat` false) or heartbeat call and whether a coordinator answered it.
    pub(crate) fn called(&self, heartbeat: bool, result: CallResult) {
        let family = if heartbeat {
            &self.heartbeats
        } else {
            &self.registrations
        };
        family.get_or_create(&ResultLabels { result }).inc();
        self.link_up.set(u64::from(result == CallResult::ok));
    }

    /// A report batch and whether a coordinator answered it.
    pub(crate) fn reported(&self, result: CallResult) {
        self.reports.get_or_create(&ResultLabels { result }).inc();
    }

    /// The attempts supervised now: `running` of them, `stopping` being stopped.
    pub(crate) fn supervising(&self, running: u64, stopping: u64) {
        for (state, n) in [
            (AttemptState::running, running),
            (AttemptState::stopping, stopping),
        ] {
            self.attempts.get_or_create(&StateLabels { state }).set(n);
        }
    }

    /// The OpenMetrics text, with the gauges read now from `scrape`.
    fn render(&self, scrape: &Scrape) -> String {
        let mut registry = Registry::with_prefix("meridian_agent");
        registry.register(
            "job_starts",
            "Attempts launched on this node by outcome",
            self.starts.clone(),
        );
        registry.register(
            "job_exits",
            "Attempts that ended on this node by outcome",
            self.exits.clone(),
        );
        registry.register(
            "attempts",
            "Attempts whose processes the agent supervises, by state",
            self.attempts.clone(),
        );
        registry.register(
            "registrations",
            "Registration calls to the coordinators by result",
            self.registrations.clone(),
        );
        registry.register(
            "heartbeats",
            "Heartbeat calls to the coordinators by result",
            self.heartbeats.clone(),
        );
        registry.register(
            "report_batches",
            "Batches of job events sent to the coordinators by result",
            self.reports.clone(),
        );
        registry.register(
            "coordinator_link_up",
            "1 when the last registration or heartbeat call got a coordinator's answer",
            self.link_up.clone(),
        );
        for (name, help, value) in [
            (
                "registered",
                "1 while the node holds a lease from the coordinators",
                u64::from(scrape.link.lease_epoch().is_some()),
            ),
            (
                "reports_queued",
                "Job events waiting to be reported",
                scrape.store.pending_count() as u64,
            ),
            ("gpus", "GPUs of this node", scrape.gpus),
        ] {
            let gauge = CountGauge::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// What a scrape reads besides the long-lived metrics.
#[derive(Clone)]
pub(crate) struct Scrape {
    pub(crate) metrics: Arc<AgentMetrics>,
    pub(crate) link: Arc<Link>,
    pub(crate) store: Arc<JobStore>,
    pub(crate) gpus: u64,
}

async fn serve_metrics(State(scrape): State<Scrape>) -> axum::response::Response {
    (
        [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
        scrape.metrics.render(&scrape),
    )
        .into_response()
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: MetricsListener,
    scrape: Scrape,
    shutdown: CancellationToken,
) -> Result<(), MetricsError> {
    let addr = listener.local_addr();
    let tokio_listener = listener
        .tokio_listener()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(serve_metrics))
        .with_state(scrape);
    let options = http_listener::ServeOptions {
        limits: Some(http_listener::ConnectionLimits {
            max_connections: 64,
            max_per_source: 16,
            refusal: http_listener::Refusal {
                content_type: "text/plain; charset=utf-8",
                body: "too many connections; try again\n".into(),
            },
        }),
        ..http_listener::ServeOptions::new("agent metrics")
    };
    tracing::info!(%addr, "agent metrics endpoint");
    http_listener::serve(tokio_listener, options, |_| app.clone(), shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, cancelled: bool, timed_out: bool) -> ExitSummary {
        ExitSummary {
            exit_code: code,
            signal: None,
            cancelled,
            timed_out,
            cpu_time_ms: None,
            max_rss_bytes: None,
            wall_ms: 1,
            oom_killed: false,
        }
    }

    #[test]
    fn exits_are_sorted_into_their_outcomes() {
        assert_eq!(
            ExitOutcome::of(&exit(Some(0), false, false)),
            ExitOutcome::succeeded
        );
        assert_eq!(
            ExitOutcome::of(&exit(Some(3), false, false)),
            ExitOutcome::failed
        );
        assert_eq!(
            ExitOutcome::of(&exit(None, false, false)),
            ExitOutcome::failed
        );
        assert_eq!(
            ExitOutcome::of(&exit(None, true, false)),
            ExitOutcome::cancelled
        );
        assert_eq!(
            ExitOutcome::of(&exit(Some(0), false, true)),
            ExitOutcome::timed_out
        );
    }

    #[test]
    fn a_non_loopback_address_needs_the_operator_to_opt_in() {
        let any: SocketAddr = "0.0.0.0:0".parse().expect("literal");
        assert!(matches!(
            MetricsListener::bind(any, false),
            Err(MetricsError::OffLoopback(_))
        ));
        let bound = MetricsListener::bind(any, true).expect("opted in");
        assert_ne!(bound.local_addr().port(), 0);
        let local = MetricsListener::bind("127.0.0.1:0".parse().expect("literal"), false)
            .expect("loopback needs no opt-in");
        assert!(local.local_addr().ip().is_loopback());
    }
}
