//! Prometheus metrics of the admin API: request counts by route, method and status, a latency histogram by
//! route, the Raft gauges of this coordinator, and fleet gauges (jobs by state, nodes by health, each node's
//! GPUs and idle allocated GPUs), rendered in the text exposition format.
//!
//! Labels come only from the route table (declared paths, never raw request paths) and from the registry's
//! validated node keys, so a caller cannot grow the label set. Must never block a request for longer than
//! one counter update.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::node::ClusterStatus;
use crate::state::{JobState, NodeHealthState, RegistryState};

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The label used for requests that matched no route.
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Default)]
struct Histogram {
    /// Cumulative counts are computed when rendering; these are per bucket, plus one overflow bucket.
    buckets: [u64; BUCKETS.len() + 1],
    sum_seconds: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    requests: BTreeMap<(&'static str, &'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
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

/// Counters and histograms shared by every request of one admin API.
#[derive(Default)]
pub(crate) struct ApiMetrics {
    registry: Mutex<Registry>,
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
        let mut reg = match self.registry.lock() {
            Ok(g) => g,
            // A panic while holding the lock leaves plain counters behind; they are still usable.
            Err(poisoned) => poisoned.into_inner(),
        };
        *reg.requests.entry((route, method, status)).or_insert(0) += 1;
        let h = reg.latency.entry(route).or_default();
        let secs = elapsed.as_secs_f64();
        let idx = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        h.buckets[idx] += 1;
        h.sum_seconds += secs;
        h.count += 1;
    }

    /// The exposition text, with the Raft gauges taken from `status` and the fleet's from `fleet`.
    pub(crate) fn render(&self, status: &ClusterStatus, fleet: &FleetGauges) -> String {
        let mut out = String::new();
        {
            let reg = match self.registry.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            out.push_str("# HELP meridian_api_requests_total Admin API requests by route, method and status.\n");
            out.push_str("# TYPE meridian_api_requests_total counter\n");
            for ((route, method, code), n) in &reg.requests {
                let _ = writeln!(
                    out,
                    "meridian_api_requests_total{{route=\"{}\",method=\"{}\",status=\"{}\"}} {n}",
                    escape(route),
                    method,
                    code
                );
            }
            out.push_str("# HELP meridian_api_request_duration_seconds Admin API request latency by route.\n");
            out.push_str("# TYPE meridian_api_request_duration_seconds histogram\n");
            for (route, h) in &reg.latency {
                let route = escape(route);
                let mut cumulative = 0u64;
                for (i, bound) in BUCKETS.iter().enumerate() {
                    cumulative += h.buckets[i];
                    let _ = writeln!(
                        out,
                        "meridian_api_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "meridian_api_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "meridian_api_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    h.sum_seconds
                );
                let _ = writeln!(
                    out,
                    "meridian_api_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
        }
        let is_leader = status.leader == Some(status.node_id);
        let gauges: [(&str, &str, u64); 5] = [
            (
                "meridian_raft_term",
                "Current Raft term seen by this coordinator.",
                status.term,
            ),
            (
                "meridian_raft_applied_index",
                "Last log index applied to the registry.",
                status.applied_index,
            ),
            (
                "meridian_raft_committed_index",
                "Last log index known committed (0 when unknown).",
                status.committed_index.unwrap_or(0),
            ),
            (
                "meridian_raft_leader_id",
                "Node id of the current leader (0 when none is known).",
                status.leader.unwrap_or(0),
            ),
            (
                "meridian_raft_is_leader",
                "1 when this coordinator is the leader.",
                u64::from(is_leader),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{node_id=\"{}\"}} {value}", status.node_id);
        }
        render_fleet(&mut out, fleet);
        out
    }
}

fn render_fleet(out: &mut String, fleet: &FleetGauges) {
    out.push_str("# HELP meridian_jobs Jobs in the registry by state.\n");
    out.push_str("# TYPE meridian_jobs gauge\n");
    for (state, n) in &fleet.jobs {
        let _ = writeln!(out, "meridian_jobs{{state=\"{state}\"}} {n}");
    }
    out.push_str("# HELP meridian_nodes Registered nodes by health.\n");
    out.push_str("# TYPE meridian_nodes gauge\n");
    for (health, n) in &fleet.nodes {
        let _ = writeln!(out, "meridian_nodes{{health=\"{health}\"}} {n}");
    }
    out.push_str(
        "# HELP meridian_nodes_draining Nodes an operator drained (no new work lands there).\n",
    );
    out.push_str("# TYPE meridian_nodes_draining gauge\n");
    let _ = writeln!(out, "meridian_nodes_draining {}", fleet.draining);
    out.push_str(
        "# HELP meridian_registry_machine_commands_total Machine traffic the registry applied (placements, agent reports and their events, idle GPUs, health changes), by action and outcome.\n",
    );
    out.push_str("# TYPE meridian_registry_machine_commands_total counter\n");
    for ((action, outcome), n) in &fleet.machine {
        let _ = writeln!(
            out,
            "meridian_registry_machine_commands_total{{action=\"{}\",outcome=\"{}\"}} {n}",
            escape(action),
            escape(outcome)
        );
    }
    out.push_str("# HELP meridian_node_gpus GPUs of a node.\n");
    out.push_str("# TYPE meridian_node_gpus gauge\n");
    for (node, (gpus, _)) in &fleet.gpus {
        let _ = writeln!(
            out,
            "meridian_node_gpus{{node=\"{}\"}} {gpus}",
            escape(node)
        );
    }
    out.push_str(
        "# HELP meridian_node_idle_gpus GPUs of a node allocated to a job but near-idle for the agent's window.\n",
    );
    out.push_str("# TYPE meridian_node_idle_gpus gauge\n");
    for (node, (_, idle)) in &fleet.gpus {
        let _ = writeln!(
            out,
            "meridian_node_idle_gpus{{node=\"{}\"}} {idle}",
            escape(node)
        );
    }
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
        }
    }

    #[test]
    fn renders_counts_histogram_and_gauges() {
        let m = ApiMetrics::default();
        m.observe("GET", "/v1/projects", 200, Duration::from_millis(3));
        m.observe("GET", "/v1/projects", 200, Duration::from_millis(30));
        m.observe("POST", "/v1/projects", 409, Duration::from_secs(20));
        let text = m.render(&status(), &FleetGauges::default());
        assert!(text.contains(
            "meridian_api_requests_total{route=\"/v1/projects\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "meridian_api_requests_total{route=\"/v1/projects\",method=\"POST\",status=\"409\"} 1"
        ));
        assert!(text.contains(
            "meridian_api_request_duration_seconds_bucket{route=\"/v1/projects\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "meridian_api_request_duration_seconds_bucket{route=\"/v1/projects\",le=\"0.05\"} 2"
        ));
        assert!(text.contains(
            "meridian_api_request_duration_seconds_bucket{route=\"/v1/projects\",le=\"5\"} 2"
        ));
        assert!(text.contains(
            "meridian_api_request_duration_seconds_bucket{route=\"/v1/projects\",le=\"+Inf\"} 3"
        ));
        assert!(
            text.contains("meridian_api_request_duration_seconds_count{route=\"/v1/projects\"} 3")
        );
        assert!(text.contains("meridian_raft_term{node_id=\"1\"} 7"));
        assert!(text.contains("meridian_raft_applied_index{node_id=\"1\"} 42"));
        assert!(text.contains("meridian_raft_is_leader{node_id=\"1\"} 1"));
        assert!(text.contains("meridian_raft_leader_id{node_id=\"1\"} 1"));
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
