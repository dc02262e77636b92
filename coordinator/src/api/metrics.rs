//! Prometheus metrics of the admin API, kept with the `prometheus-client` library and served at
//! `GET /metrics` in the OpenMetrics text format: request counts by route, method and status, a latency
//! histogram by route, the Raft gauges of this coordinator, and fleet gauges (jobs by state, nodes by
//! health, each node's GPUs and idle allocated GPUs, the registry's machine-traffic counters).
//!
//! The request counter and the latency histogram live as long as the API. Everything else is read from the
//! local replica at scrape time: each scrape builds a fresh registry holding those two families and the
//! gauges of that moment, so no gauge can go stale between scrapes. Labels come only from the route table
//! (declared paths, never raw request paths) and from the registry's validated node keys and counter
//! names, so a caller cannot grow the label set; values from the replica are escaped all the same, since
//! the library writes label values as they are. In the OpenMetrics form `# EOF` ends the text, `HELP` and
//! `TYPE` name a counter without its `_total` (its samples keep it), a bucket's `le` label comes first and
//! whole bounds read `1.0`, `5.0`.
//! Must never block a request for longer than one counter update.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::node::ClusterStatus;
use crate::state::{JobState, NodeHealthState, RegistryState};

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The label used for requests that matched no route.
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

/// The content type of [`ApiMetrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoordinatorLabels {
    node_id: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineLabels {
    action: String,
    outcome: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;
/// A gauge of a whole count (prometheus-client's default gauge is signed).
type CountGauge = Gauge<u64, AtomicU64>;

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The fleet as the gauges show it, taken from one read of the local replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FleetGauges {
    /// Jobs per state, every state present.
    pub(crate) jobs: BTreeMap<&'static str, u64>,
    /// Nodes per health, every health present.
    pub(crate) nodes: BTreeMap<&'static str, u64>,
    /// Node key → (GPUs, allocated GPUs that sit idle).
    pub(crate) gpus: BTreeMap<String, (u64, u64)>,
    /// Nodes an operator drained.
    pub(crate) draining: u64,
    /// The registry's machine-traffic counters, `(action, outcome)` → count (see
    /// `RegistryState::machine_counters`).
    pub(crate) machine: BTreeMap<(String, String), u64>,
}

impl FleetGauges {
    pub(crate) fn of(state: &RegistryState) -> FleetGauges {
        let mut g = FleetGauges::default();
        for s in JobState::ALL {
            g.jobs.insert(s.as_str(), 0);
        }
        for h in [
            NodeHealthState::Ready,
            NodeHealthState::Unreachable,
            NodeHealthState::Lost,
        ] {
            g.nodes.insert(h.as_str(), 0);
        }
        for job in state.jobs.values() {
            *g.jobs.entry(job.state.as_str()).or_insert(0) += 1;
        }
        for (name, n) in &state.machine_counters {
            let (action, outcome) = name.split_once('/').unwrap_or((name.as_str(), ""));
            g.machine
                .insert((action.to_owned(), outcome.to_owned()), *n);
        }
        for node in state.nodes() {
            *g.nodes.entry(node.health.as_str()).or_insert(0) += 1;
            g.draining += u64::from(node.draining);
            g.gpus.insert(
                node.key.clone(),
                (u64::from(node.gpu_count), node.idle_gpus.len() as u64),
            );
        }
        g
    }
}

/// The request counter and latency histogram shared by every request of one admin API.
pub(crate) struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

/// The method as a metrics label (a fixed set).
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

impl ApiMetrics {
    /// Records one finished request.
    pub(crate) fn observe(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text ([`CONTENT_TYPE`]), with the Raft gauges taken from `status` and the fleet's
    /// from `fleet`.
    pub(crate) fn render(&self, status: &ClusterStatus, fleet: &FleetGauges) -> String {
        let mut registry = Registry::default();
        registry.register(
            "meridian_api_requests",
            "Admin API requests by route, method and status",
            self.requests.clone(),
        );
        registry.register(
            "meridian_api_request_duration_seconds",
            "Admin API request latency by route",
            self.latency.clone(),
        );
        register_raft(&mut registry, status);
        register_fleet(&mut registry, fleet);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Registers a gauge family holding `values`.
fn register_gauges<L>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) where
    L: EncodeLabelSet + Clone + Debug + Hash + Eq + Send + Sync + 'static,
{
    let family = Family::<L, CountGauge>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
    registry.register(name, help, family);
}

fn register_raft(registry: &mut Registry, status: &ClusterStatus) {
    let is_leader = status.leader == Some(status.node_id);
    let gauges: [(&str, &str, u64); 5] = [
        (
            "meridian_raft_term",
            "Current Raft term seen by this coordinator",
            status.term,
        ),
        (
            "meridian_raft_applied_index",
            "Last log index applied to the registry",
            status.applied_index,
        ),
        (
            "meridian_raft_committed_index",
            "Last log index known committed (0 when unknown)",
            status.committed_index.unwrap_or(0),
        ),
        (
            "meridian_raft_leader_id",
            "Node id of the current leader (0 when none is known)",
            status.leader.unwrap_or(0),
        ),
        (
            "meridian_raft_is_leader",
            "1 when this coordinator is the leader",
            u64::from(is_leader),
        ),
    ];
    let labels = CoordinatorLabels {
        node_id: status.node_id,
    };
    for (name, help, value) in gauges {
        register_gauges(registry, name, help, [(labels.clone(), value)]);
    }
}

fn register_fleet(registry: &mut Registry, fleet: &FleetGauges) {
    register_gauges(
        registry,
        "meridian_jobs",
        "Jobs in the registry by state",
        fleet
            .jobs
            .iter()
            .map(|(state, n)| (JobStateLabels { state }, *n)),
    );
    register_gauges(
        registry,
        "meridian_nodes",
        "Registered nodes by health",
        fleet
            .nodes
            .iter()
            .map(|(health, n)| (HealthLabels { health }, *n)),
    );
    let draining = CountGauge::default();
    draining.set(fleet.draining);
    registry.register(
        "meridian_nodes_draining",
        "Nodes an operator drained (no new work lands there)",
        draining,
    );
    let machine = Family::<MachineLabels, Counter>::default();
    for ((action, outcome), n) in &fleet.machine {
        machine
            .get_or_create(&MachineLabels {
                action: escape(action),
                outcome: escape(outcome),
            })
            .inc_by(*n);
    }
    registry.register(
        "meridian_registry_machine_commands",
        "Machine traffic the registry applied (placements, agent reports and their events, idle GPUs, \
         health changes), by action and outcome",
        machine,
    );
    let node = |key: &String| NodeLabels { node: escape(key) };
    register_gauges(
        registry,
        "meridian_node_gpus",
        "GPUs of a node",
        fleet.gpus.iter().map(|(key, (gpus, _))| (node(key), *gpus)),
    );
    register_gauges(
        registry,
        "meridian_node_idle_gpus",
        "GPUs of a node allocated to a job but near-idle for the agent's window",
        fleet.gpus.iter().map(|(key, (_, idle))| (node(key), *idle)),
    );
}

/// Escapes a label value for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ClusterStatus {
        ClusterStatus {
            node_id: 1,
            name: "c1".into(),
            state: "Leader".into(),
            leader: Some(1),
            term: 7,
            applied_index: 42,
            committed_index: Some(42),
            members: Vec::new(),
            apply_version: 5,
            apply_version_known: 5,
        }
    }

    #[test]
    fn renders_counts_histogram_and_gauges() {
        let m = ApiMetrics::default();
        m.observe("GET", "/v1/projects", 200, Duration::from_millis(3));
        m.observe("GET", "/v1/projects", 200, Duration::from_millis(30));
        m.observe("POST", "/v1/projects", 409, Duration::from_secs(20));
        let text = m.render(&status(), &FleetGauges::default());
        assert!(
        text.contains(
            "meridian_api_requests_total{route=\"/v1/projects\",method=\"GET\",status=\"200\"} 2"
        ),
        "{text}"
    );
        assert!(
        text.contains(
            "meridian_api_requests_total{route=\"/v1/projects\",method=\"POST\",status=\"409\"} 1"
        ),
        "{text}"
    );
        assert!(
        text.contains(
            "meridian_api_request_duration_seconds_bucket{le=\"0.005\",route=\"/v1/projects\"} 1"
        ),
        "{text}"
    );
        assert!(
        text.contains(
            "meridian_api_request_duration_seconds_bucket{le=\"0.05\",route=\"/v1/projects\"} 2"
        ),
        "{text}"
    );
        assert!(
            text.contains(
                "meridian_api_request_duration_seconds_bucket{le=\"5.0\",route=\"/v1/projects\"} 2"
            ),
            "{text}"
        );
        assert!(
        text.contains(
            "meridian_api_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/projects\"} 3"
        ),
        "{text}"
    );
        assert!(
            text.contains("meridian_api_request_duration_seconds_count{route=\"/v1/projects\"} 3")
        );
        assert!(text.contains("meridian_raft_term{node_id=\"1\"} 7"));
        assert!(text.contains("meridian_raft_applied_index{node_id=\"1\"} 42"));
        assert!(text.contains("meridian_raft_is_leader{node_id=\"1\"} 1"));
        assert!(text.contains("meridian_raft_leader_id{node_id=\"1\"} 1"));
        assert!(
            text.contains("# TYPE meridian_api_requests counter\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn machine_traffic_counters_render_by_action_and_outcome() {
        let mut state = RegistryState::default();
        state
            .machine_counters
            .insert("job.report/applied".into(), 5);
        state.machine_counters.insert("job.event/stale".into(), 2);
        let fleet = FleetGauges::of(&state);
        let text = ApiMetrics::default().render(&status(), &fleet);
        assert!(
            text.contains(
                "meridian_registry_machine_commands_total{action=\"job.report\",outcome=\"applied\"} 5"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "meridian_registry_machine_commands_total{action=\"job.event\",outcome=\"stale\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn follower_without_leader_reports_zero() {
        let mut s = status();
        s.leader = None;
        let text = ApiMetrics::default().render(&s, &FleetGauges::default());
        assert!(text.contains("meridian_raft_is_leader{node_id=\"1\"} 0"));
        assert!(text.contains("meridian_raft_leader_id{node_id=\"1\"} 0"));
    }

    #[test]
    fn fleet_gauges_list_every_state_and_each_nodes_idle_gpus() {
        let state = RegistryState::default();
        let mut fleet = FleetGauges::of(&state);
        assert_eq!(fleet.jobs.len(), JobState::ALL.len());
        assert!(fleet.jobs.values().all(|n| *n == 0));
        *fleet.jobs.entry("running").or_insert(0) = 2;
        fleet.gpus.insert("eu/eu1/a1".into(), (8, 3));
        fleet.draining = 1;
        let text = ApiMetrics::default().render(&status(), &fleet);
        assert!(text.contains("meridian_nodes_draining 1"), "{text}");
        assert!(
            text.contains("meridian_jobs{state=\"running\"} 2"),
            "{text}"
        );
        assert!(text.contains("meridian_jobs{state=\"lost\"} 0"), "{text}");
        assert!(
            text.contains("meridian_nodes{health=\"ready\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("meridian_node_gpus{node=\"eu/eu1/a1\"} 8"),
            "{text}"
        );
        assert!(
            text.contains("meridian_node_idle_gpus{node=\"eu/eu1/a1\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
