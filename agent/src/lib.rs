//! Meridian's per-node agent.
//!
//! The agent owns one node's CPUs and GPUs, runs its jobs and keeps working when the coordinators are away.
//! `inventory` says what the node offers (GPUs through NVML or nvidia-smi); `exec` runs one attempt's
//! process (process group, limits, GPU pinning, logs, cancel, re-adoption after a restart); `jobs` turns
//! the coordinators' assignments into attempts, keeps the local database (`agent.db`) of attempts and
//! unsent reports, forgets finished attempts after their retention period, and serves log reads; `link`
//! finds the leader and holds the lease; `runtime` wires it all together with registration and
//! heartbeats. The agent process loads and validates its configuration and identity, then runs `runtime`
//! until stopped. It must never stop a job because the
//! coordinators are away, nor stop itself for that reason.

mod config;
mod deny_list;
pub mod exec;
mod idle_gpus;
pub mod inventory;
pub mod jobs;
mod link;
mod metrics;
mod runtime;

pub use config::{
    AgentConfig, AgentTls, ConfigError, IdleGpuConfig, JobsConfig, DEFAULT_LISTEN,
    MIN_RETAIN_FINISHED,
};
pub use metrics::{MetricsError, MetricsListener};
pub use runtime::{run, AgentOptions, RuntimeError};

use std::path::Path;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("tls: {0}")]
    Tls(#[from] certs::CertError),
    #[error("the agent's certificate names {0}, which is not an agent identity")]
    NotAnAgent(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("waiting for a shutdown signal: {0}")]
    Signal(std::io::Error),
}

/// `meridian agent --config FILE`: loads the config and identity, then runs until SIGINT/SIGTERM.
/// `insecure_no_sandbox` runs jobs unisolated as the agent's user (development only).
pub async fn run_from_file(path: &Path, insecure_no_sandbox: bool) -> Result<(), AgentError> {
    let cfg = AgentConfig::load(path, &config::process_env())?;
    certs::install_crypto_provider();
    let tls = certs::TlsIdentity::load(&certs::TlsPaths {
        ca: cfg.tls.ca.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    })?;
    let identity = tls.identity();
    match &identity.kind {
        certs::IdentityKind::Agent {
            region,
            cluster,
            node,
        } => {
            tracing::info!(%region, %cluster, %node, coordinators = ?cfg.coordinators, "agent identity loaded");
        }
        _ => return Err(AgentError::NotAnAgent(identity.uri())),
    }
    let metrics = cfg
        .metrics_listen
        .map(|addr| MetricsListener::bind(addr, cfg.metrics_allow_non_loopback))
        .transpose()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let runtime = run(
        AgentOptions {
            heartbeat: std::time::Duration::from_millis(cfg.heartbeat_ms),
            listen: cfg.listen,
            advertise: cfg.advertise.clone(),
            labels: cfg.labels.clone(),
            idle_gpus: cfg.idle_gpus,
            jobs: cfg.jobs,
            sandbox: (!insecure_no_sandbox).then(|| {
                let mut options = cfg.sandbox.options.clone();
                // The agent's own key never shows inside a sandbox, wherever the operator keeps it.
                options.hidden_paths.push(
                    std::path::absolute(&cfg.tls.key).unwrap_or_else(|_| cfg.tls.key.clone()),
                );
                options
            }),
            protected_local_ports: cfg.sandbox.protected_local_ports.clone(),
            job_defaults: cfg.sandbox.defaults,
            metrics,
            ..AgentOptions::new(cfg.coordinators.clone(), tls, cfg.data_dir.clone())
        },
        shutdown.clone(),
    );
    tokio::pin!(runtime);
    tokio::select! {
        // The runtime returns by itself only when it cannot start (identity, inventory, client setup).
        result = &mut runtime => Ok(result?),
        signal = shutdown_signal() => {
            shutdown.cancel();
            runtime.await?;
            signal.map_err(AgentError::Signal)
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd's stop).
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
