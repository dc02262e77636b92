//! Meridian's per-node agent.
//!
//! The agent owns one node's CPUs and GPUs, runs its jobs and keeps working when the coordinators are away.
//! Built so far: `inventory` (what the node offers, GPUs through NVML or nvidia-smi) and `exec` (running a
//! job's process: process group, limits, GPU pinning, logs, cancel, re-adoption after a restart). The agent
//! process itself loads and validates its configuration and identity; registration, heartbeats and job
//! assignment over the QUIC mesh are the next step.

mod config;
pub mod exec;
pub mod inventory;

pub use config::{AgentConfig, ConfigError};

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
    #[error("waiting for a shutdown signal: {0}")]
    Signal(std::io::Error),
}

/// `meridian agent --config FILE`: loads the config and identity, then runs until SIGINT/SIGTERM.
pub async fn run_from_file(path: &Path) -> Result<(), AgentError> {
    let cfg = AgentConfig::load(path)?;
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
    tokio::signal::ctrl_c().await.map_err(AgentError::Signal)?;
    Ok(())
}
