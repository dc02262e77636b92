//! Closed-loop write load at a fixed number of concurrent clients: each client is one task with its own HTTPS
//! connection sending one write, waiting for the acknowledgement, and sending the next.
//!
//! Clients are spread round-robin over the members (client i writes through member i mod 3), identically for
//! every system. Owns the timing of one concurrency level (warm-up, then a fixed measurement window) and never
//! retries a failed write under the same key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde::Serialize;
use tokio::task::JoinSet;

use super::http::HttpSettings;
use super::stats::{self, Percentiles};
use super::system::SystemUnderTest;

/// Pause after a failed write, so a broken member does not turn a client into a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// One concurrency level to measure.
#[derive(Debug, Clone)]
pub(crate) struct LoadPlan {
    pub(crate) clients: usize,
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
    /// Unique per system and level; keys are `{key_prefix}-{client}-{seq}`.
    pub(crate) key_prefix: String,
    /// JSON over HTTPS/1.1, or each system's native gRPC API over HTTP/2.
    pub(crate) protocol: Protocol,
}

/// How the clients write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    /// etcd's JSON gateway (`/v3/kv/put`) and Meridian's REST API (`POST /v1/projects`).
    Json,
    /// etcd's `KV/Put` and Meridian's `ProjectService/CreateProject`.
    Grpc,
}

/// One simulated client's connection.
enum Connection {
    Http(reqwest::Client),
    Grpc(tonic::transport::Channel),
}

/// What one concurrency level measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LevelResult {
    pub(crate) clients: usize,
    pub(crate) seconds: f64,
    /// Writes acknowledged inside the measurement window.
    pub(crate) writes: u64,
    /// Writes that failed inside the measurement window.
    pub(crate) errors: u64,
    pub(crate) writes_per_sec: f64,
    /// Latency of the acknowledged writes; `None` when there were none.
    pub(crate) latency: Option<Percentiles>,
    /// The first failure seen at this level (warm-up included), for diagnosis.
    pub(crate) first_error: Option<String>,
}

#[derive(Default)]
struct ClientTally {
    samples: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `plan.clients` closed-loop writers against `sut` and summarizes the measurement window.
pub(crate) async fn run_level<S: SystemUnderTest>(
    sut: Arc<S>,
    http: &HttpSettings,
    plan: &LoadPlan,
) -> anyhow::Result<LevelResult> {
    let clients: Vec<Connection> = (0..plan.clients)
        .map(|index| match plan.protocol {
            Protocol::Json => http.client().map(Connection::Http),
            Protocol::Grpc => http
                .grpc_channel(sut.grpc_port(index % sut.members()))
                .map(Connection::Grpc),
        })
        .collect::<Result<_, _>>()?;
    let begin = Instant::now();
    let window_start = begin + plan.warmup;
    let window_end = window_start + plan.measure;
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        let sut = sut.clone();
        let member = index % sut.members();
        let prefix = format!("{}-{index}", plan.key_prefix);
        tasks.spawn(async move {
            let mut tally = ClientTally::default();
            let mut seq = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= window_end {
                    break;
                }
                seq += 1;
                let key = format!("{prefix}-{seq}");
                let result = match &client {
                    Connection::Http(http) => sut.write(http, member, &key).await,
                    Connection::Grpc(channel) => sut.write_grpc(channel, &key).await,
                };
                let done = Instant::now();
                let counted = sent >= window_start && done <= window_end;
                match result {
                    Ok(()) if counted => tally.samples.push(done - sent),
                    Ok(()) => {}
                    Err(e) => {
                        if counted {
                            tally.errors += 1;
                        }
                        if tally.first_error.is_none() {
                            tally.first_error = Some(format!("member {member}: {e}"));
                        }
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                }
            }
            tally
        });
    }
    // Every request has its own timeout, so the level ends shortly after the window; this bound is a backstop.
    let bound = plan.warmup + plan.measure + http.request_timeout + Duration::from_secs(10);
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let joined = tokio::time::timeout(bound, async {
        while let Some(done) = tasks.join_next().await {
            let tally = done.context("a load client panicked")?;
            samples.extend(tally.samples);
            errors += tally.errors;
            if first_error.is_none() {
                first_error = tally.first_error;
            }
        }
        anyhow::Ok(())
    })
    .await;
    match joined {
        Ok(result) => result?,
        Err(_) => {
            tasks.abort_all();
            return Err(anyhow!(
                "{}: load clients still running {bound:?} after the level began",
                sut.name()
            ));
        }
    }
    let seconds = plan.measure.as_secs_f64();
    let writes = samples.len() as u64;
    Ok(LevelResult {
        clients: plan.clients,
        seconds,
        writes,
        errors,
        writes_per_sec: writes as f64 / seconds,
        latency: stats::percentiles(&mut samples),
        first_error,
    })
}
