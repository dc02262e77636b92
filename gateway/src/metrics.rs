//! The gateway's Prometheus metrics, kept with the `prometheus-client` library: requests by route and
//! status, and their latency by route, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Labels come only from the route table (the matched route template, or `unmatched`) and the status code,
//! never from raw paths, model names or keys, so a caller cannot grow the label set. Serving's autoscaler
//! will read the per-deployment series that forwarding adds here.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The route label of a request that matched no route.
pub(crate) const UNMATCHED: &str = "unmatched";

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The gateway's metrics registry.
pub(crate) struct GatewayMetrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl GatewayMetrics {
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("meridian_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "requests",
            "Gateway requests by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Gateway request latency by route",
            latency.clone(),
        );
        Arc::new(Self {
            registry: Mutex::new(registry),
            requests,
            latency,
        })
    }

    /// Counts one request on `route` answered with `code` after `took`.
    pub(crate) fn observe(&self, route: &str, code: StatusCode, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                code: code.as_u16(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Middleware of the routed requests: counts each one under its route template.
pub(crate) async fn track(
    State(metrics): State<Arc<GatewayMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    metrics.observe(&route, response.status(), started.elapsed());
    response
}

/// `GET /metrics`.
pub(crate) async fn serve_metrics(State(metrics): State<Arc<GatewayMetrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_code_with_their_latency() {
        let m = GatewayMetrics::new();
        m.observe(
            "/v2/models/{name}/infer",
            StatusCode::UNAUTHORIZED,
            Duration::from_millis(3),
        );
        m.observe(
            "/v2/models/{name}/infer",
            StatusCode::UNAUTHORIZED,
            Duration::from_millis(30),
        );
        m.observe(UNMATCHED, StatusCode::NOT_FOUND, Duration::from_micros(50));
        let text = m.render();
        assert!(
            text.contains(
                "meridian_gateway_requests_total{route=\"/v2/models/{name}/infer\",code=\"401\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("meridian_gateway_requests_total{route=\"unmatched\",code=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "meridian_gateway_request_duration_seconds_count{route=\"/v2/models/{name}/infer\"} 2"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
