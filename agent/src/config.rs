//! The agent's TOML configuration.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why an agent configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// `meridian agent --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Directory for the agent's local state.
    pub data_dir: PathBuf,
    /// QUIC addresses (`host:port`) of the coordinators; any one of them is enough to join.
    pub coordinators: Vec<String>,
    /// Heartbeat interval in milliseconds until a coordinator names another (default 1000).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    pub tls: AgentTls,
}

/// TLS material of the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_heartbeat_ms() -> u64 {
    1000
}

impl AgentConfig {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        if cfg.coordinators.is_empty() {
            return Err(ConfigError::Parse {
                path: path.into(),
                message: "coordinators: must not be empty".into(),
            });
        }
        if cfg.heartbeat_ms == 0 {
            return Err(ConfigError::Parse {
                path: path.into(),
                message: "heartbeat_ms: must be positive".into(),
            });
        }
        Ok(cfg)
    }
}
