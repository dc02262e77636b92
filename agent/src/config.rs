//! The agent's TOML configuration, validated once at start-up into typed values.
//!
//! Owns the file format and its defaults. It must never reach the network or the GPUs: resolving the
//! advertised address and collecting the inventory happen when the agent runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The default QUIC address of the agent's own RPC server (log reads by coordinators).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";

/// `meridian agent --config FILE`.
///
/// ```toml
/// data_dir = "/var/lib/meridian/agent"
/// coordinators = ["c1:7170", "c2:7170", "c3:7170"]
/// heartbeat_ms = 1000                 # until a coordinator names another
/// listen = "0.0.0.0:7443"             # the agent's QUIC RPC server
/// advertise = "node-7.example:7443"   # what coordinators dial; see below
/// [labels]
/// zone = "eu-1a"
/// [idle_gpus]
/// utilization_percent = 5             # at or below: idle
/// window_secs = 600                   # idle this long: flagged
/// [tls]
/// ca = "…"; cert = "…"; key = "…"
/// ```
///
/// `advertise` defaults to `listen`. When `listen` has an unspecified IP (`0.0.0.0`, `::`), the agent
/// advertises the local address of its route towards the first coordinator (127.0.0.1 when the
/// coordinators are on loopback, or when no route can be found); when `listen` has port 0, the port the
/// system chose. Set `advertise` explicitly where coordinators reach the node through another name or
/// address (NAT, several interfaces).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Directory for the agent's local state (`agent.db`, job state directories and logs).
    pub data_dir: PathBuf,
    /// QUIC addresses (`host:port`) of the coordinators; any one of them is enough to join.
    pub coordinators: Vec<String>,
    /// Heartbeat interval in milliseconds until a coordinator names another (default 1000).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Where the agent's QUIC RPC server listens (default `0.0.0.0:7443`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The `host:port` coordinators dial to reach the agent; see the type's documentation for the default.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Operator labels of the node (e.g. `zone`, `instance = "spot"`), matched by job constraints.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When a GPU assigned to a job counts as idle.
    #[serde(default)]
    pub idle_gpus: IdleGpuConfig,
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

/// `[idle_gpus]`: a GPU assigned to a job whose utilization stays at or below `utilization_percent` for
/// `window_secs` is reported idle in heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleGpuConfig {
    /// Default 5.
    #[serde(default = "default_idle_percent")]
    pub utilization_percent: u32,
    /// Default 600.
    #[serde(default = "default_idle_window_secs")]
    pub window_secs: u64,
}

impl Default for IdleGpuConfig {
    fn default() -> Self {
        IdleGpuConfig {
            utilization_percent: default_idle_percent(),
            window_secs: default_idle_window_secs(),
        }
    }
}

impl IdleGpuConfig {
    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }
}

fn default_heartbeat_ms() -> u64 {
    1000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}

fn default_idle_percent() -> u32 {
    5
}

fn default_idle_window_secs() -> u64 {
    600
}

impl AgentConfig {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Parse {
            path: path.into(),
            message,
        };
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if cfg.coordinators.is_empty() {
            return Err(invalid("coordinators: must not be empty".into()));
        }
        if let Some(bad) = cfg.coordinators.iter().find(|c| !is_host_port(c)) {
            return Err(invalid(format!("coordinators: {bad:?} is not host:port")));
        }
        if cfg.heartbeat_ms == 0 {
            return Err(invalid("heartbeat_ms: must be positive".into()));
        }
        if let Some(advertise) = &cfg.advertise {
            if !is_host_port(advertise) {
                return Err(invalid(format!(
                    "advertise: {advertise:?} is not host:port with a port from 1 to 65535"
                )));
            }
        }
        crate::inventory::validate_labels(&cfg.labels)
            .map_err(|e| invalid(format!("labels: {e}")))?;
        if cfg.idle_gpus.utilization_percent > 100 {
            return Err(invalid(
                "idle_gpus.utilization_percent: must be at most 100".into(),
            ));
        }
        if cfg.idle_gpus.window_secs == 0 {
            return Err(invalid("idle_gpus.window_secs: must be positive".into()));
        }
        Ok(cfg)
    }
}

/// `host:port` with a non-empty host (brackets allowed around IPv6) and a port from 1 to 65535.
pub(crate) fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
data_dir = "/var/lib/meridian/agent"
coordinators = ["c1:7170"]
[tls]
ca = "ca.pem"
cert = "agent.pem"
key = "agent.key"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("agent.toml"))
    }

    fn refused(text: &str, needle: &str) {
        match parse(text) {
            Err(e) => assert!(e.to_string().contains(needle), "{e}"),
            Ok(cfg) => panic!("accepted {cfg:?}; expected an error naming {needle}"),
        }
    }

    #[test]
    fn defaults_fill_every_optional_field() {
        let cfg = parse(MINIMAL).expect("minimal config");
        assert_eq!(cfg.heartbeat_ms, 1000);
        assert_eq!(cfg.listen, DEFAULT_LISTEN.parse().expect("constant"));
        assert_eq!(cfg.advertise, None);
        assert!(cfg.labels.is_empty());
        assert_eq!(cfg.idle_gpus.utilization_percent, 5);
        assert_eq!(cfg.idle_gpus.window(), Duration::from_secs(600));
    }

    #[test]
    fn every_field_is_read() {
        let text = MINIMAL.replace(
            "[tls]",
            "heartbeat_ms = 250\nlisten = \"127.0.0.1:0\"\nadvertise = \"[::1]:7443\"\n[tls]",
        ) + "[labels]\nzone = \"eu-1a\"\ninstance = \"spot\"\n[idle_gpus]\nutilization_percent = 10\nwindow_secs = 60\n";
        let cfg = parse(&text).expect("full config");
        assert_eq!(cfg.heartbeat_ms, 250);
        assert_eq!(cfg.listen, "127.0.0.1:0".parse().expect("literal"));
        assert_eq!(cfg.advertise.as_deref(), Some("[::1]:7443"));
        assert_eq!(cfg.labels.get("zone").map(String::as_str), Some("eu-1a"));
        assert_eq!(cfg.labels.get("instance").map(String::as_str), Some("spot"));
        assert_eq!(
            cfg.idle_gpus,
            IdleGpuConfig {
                utilization_percent: 10,
                window_secs: 60
            }
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        refused(
            &MINIMAL.replace("[\"c1:7170\"]", "[]"),
            "coordinators: must not be empty",
        );
        refused(&MINIMAL.replace("c1:7170", "c1"), "coordinators");
        refused(
            &MINIMAL.replace("[tls]", "heartbeat_ms = 0\n[tls]"),
            "heartbeat_ms",
        );
        refused(
            &MINIMAL.replace("[tls]", "listen = \"nowhere\"\n[tls]"),
            "listen",
        );
        for bad in ["host", "host:0", ":7443", "host:70000", "a b:1"] {
            refused(
                &MINIMAL.replace("[tls]", &format!("advertise = \"{bad}\"\n[tls]")),
                "advertise",
            );
        }
        refused(
            &format!("{MINIMAL}[labels]\n\"-zone\" = \"x\"\n"),
            "labels: label \"-zone\"",
        );
        refused(
            &format!("{MINIMAL}[idle_gpus]\nutilization_percent = 101\n"),
            "utilization_percent",
        );
        refused(
            &format!("{MINIMAL}[idle_gpus]\nwindow_secs = 0\n"),
            "window_secs",
        );
        refused(&format!("{MINIMAL}[idle_gpus]\nwindow = 3\n"), "window");
        refused(&MINIMAL.replace("[tls]", "colour = 1\n[tls]"), "colour");
    }

    #[test]
    fn the_shipped_agent_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.toml");
        let cfg = AgentConfig::load(&path).expect("deploy/config/agent.toml");
        assert_eq!(cfg.coordinators.len(), 3);
    }
}
