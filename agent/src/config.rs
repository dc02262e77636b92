//! The agent's TOML configuration, validated once at start-up into typed values.
//!
//! Owns the file format and its defaults. It must never reach the network or the GPUs: resolving the
//! advertised address and collecting the inventory happen when the agent runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_config::{EnvKind, LayerError};
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
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
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
/// metrics_listen = "127.0.0.1:9464"   # GET /metrics (Prometheus); unset: not served
/// metrics_allow_non_loopback = false  # true to serve it off loopback; it has no authentication
/// [labels]
/// zone = "eu-1a"
/// [idle_gpus]
/// utilization_percent = 5             # at or below: idle
/// window_secs = 600                   # idle this long: flagged
/// [jobs]
/// retain_finished = "7d"              # finished attempts' records, logs and directories
/// sweep_every = "10m"                 # how often to look for attempts past retention
/// [tls]
/// ca = "…"; cert = "…"; key = "…"
/// ```
///
/// Every option can also be set through the environment, which wins over the file: `MERIDIAN_` + its TOML
/// path in upper case joined by `_` (`MERIDIAN_HEARTBEAT_MS`, `MERIDIAN_JOBS_RETAIN_FINISHED`,
/// `MERIDIAN_TLS_CERT`); `MERIDIAN_COORDINATORS=c1:7170,c2:7170` and `MERIDIAN_LABELS=zone=eu-1a,instance=spot`
/// take comma-separated lists.
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
    /// Where `GET /metrics` is served (plain HTTP, no authentication); `None`: nowhere.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Whether `metrics_listen` may be an address other than loopback (the operator's explicit choice,
    /// since anyone who reaches it may read it). Default false: such an address is refused.
    #[serde(default)]
    pub metrics_allow_non_loopback: bool,
    /// Operator labels of the node (e.g. `zone`, `instance = "spot"`), matched by job constraints.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When a GPU assigned to a job counts as idle.
    #[serde(default)]
    pub idle_gpus: IdleGpuConfig,
    /// How long finished attempts are kept on the node.
    #[serde(default)]
    pub jobs: JobsConfig,
    /// How jobs are isolated.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    pub tls: AgentTls,
}

/// `[sandbox]`: the users jobs run as, their default limits, what they may see and where they may not
/// connect. Every job is sandboxed; `meridian agent --insecure-no-sandbox` turns that off for development.
///
/// ```toml
/// [sandbox]
/// first_uid = 200000            # jobs run as uids first_uid .. first_uid + uid_count - 1
/// uid_count = 65536
/// default_memory_mib = 4096     # memory limit of a job that asked for none
/// pids_max = 4096               # processes and threads per job
/// read_only_paths = ["/opt/conda"]          # more host paths every job sees read-only
/// shared_paths = ["/data/shared"]           # host directories a job may name as working_dir
/// hidden_paths = ["/etc/meridian"]          # never visible to jobs
/// deny = ["10.0.0.0/8", "10.1.2.3:5432", ":7070"]   # refused to egress jobs; ":PORT" = on every local address
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SandboxConfigText")]
pub struct SandboxConfig {
    pub options: crate::exec::SandboxOptions,
    pub defaults: crate::exec::JobDefaults,
    /// Ports (`:PORT` entries of `deny`) refused on every local address.
    pub protected_local_ports: Vec<u16>,
}

/// `[sandbox]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxConfigText {
    first_uid: Option<u32>,
    uid_count: Option<u32>,
    default_memory_mib: Option<u64>,
    pids_max: Option<u64>,
    #[serde(default)]
    read_only_paths: Vec<PathBuf>,
    #[serde(default)]
    shared_paths: Vec<PathBuf>,
    #[serde(default)]
    hidden_paths: Vec<PathBuf>,
    #[serde(default)]
    deny: Vec<String>,
}

impl TryFrom<SandboxConfigText> for SandboxConfig {
    type Error = String;

    fn try_from(text: SandboxConfigText) -> Result<Self, String> {
        let mut cfg = SandboxConfig::default();
        let options = &mut cfg.options;
        if let Some(first) = text.first_uid {
            if first < 1000 {
                return Err(
                    "sandbox.first_uid: must be at least 1000 (away from system users)".into(),
                );
            }
            options.first_uid = first;
        }
        if let Some(count) = text.uid_count {
            if count == 0 {
                return Err("sandbox.uid_count: must be positive".into());
            }
            options.uid_count = count;
        }
        if options.first_uid.checked_add(options.uid_count).is_none() {
            return Err("sandbox: first_uid + uid_count is past the largest uid".into());
        }
        if let Some(mib) = text.default_memory_mib {
            cfg.defaults.memory_bytes = mib
                .checked_mul(1 << 20)
                .ok_or("sandbox.default_memory_mib: too large")?;
        }
        if let Some(pids) = text.pids_max {
            if pids > 0 && pids < 16 {
                return Err("sandbox.pids_max: at least 16 (0 for no limit)".into());
            }
            cfg.defaults.pids_max = pids;
        }
        for (name, paths) in [
            ("read_only_paths", &text.read_only_paths),
            ("shared_paths", &text.shared_paths),
            ("hidden_paths", &text.hidden_paths),
        ] {
            if let Some(bad) = paths.iter().find(|p| !p.is_absolute()) {
                return Err(format!(
                    "sandbox.{name}: {} is not an absolute path",
                    bad.display()
                ));
            }
        }
        options.read_only_paths = text.read_only_paths;
        options.shared_paths = text.shared_paths;
        options.hidden_paths = text.hidden_paths;
        for entry in &text.deny {
            match entry.trim().strip_prefix(':') {
                Some(port) => cfg.protected_local_ports.push(
                    port.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("sandbox.deny: {entry:?} is not :PORT"))?,
                ),
                None => options.deny.push(
                    crate::exec::DenyRule::parse(entry)
                        .map_err(|e| format!("sandbox.deny: {e}"))?,
                ),
            }
        }
        Ok(cfg)
    }
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

/// Shortest `retain_finished` accepted: a finished attempt's logs must outlive a user's first look.
pub const MIN_RETAIN_FINISHED: Duration = Duration::from_secs(60);

/// `[jobs]`: a finished attempt (its record, logs and state directory) is kept for `retain_finished`
/// after it ended, then forgotten; the agent looks for such attempts every `sweep_every`. Both are
/// durations like `30s`, `10m`, `7d` or `1h30m` (a bare number is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "JobsConfigText")]
pub struct JobsConfig {
    /// Default 7 days; at least [`MIN_RETAIN_FINISHED`].
    pub retain_finished: Duration,
    /// Default 10 minutes; positive.
    pub sweep_every: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            retain_finished: Duration::from_secs(7 * 86_400),
            sweep_every: Duration::from_secs(600),
        }
    }
}

/// `[jobs]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsConfigText {
    retain_finished: Option<String>,
    sweep_every: Option<String>,
}

impl TryFrom<JobsConfigText> for JobsConfig {
    type Error = String;

    fn try_from(text: JobsConfigText) -> Result<Self, String> {
        let defaults = JobsConfig::default();
        let field = |name: &str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(v) => parse_duration(&v).map_err(|e| format!("jobs.{name}: {e}")),
        };
        let cfg = JobsConfig {
            retain_finished: field(
                "retain_finished",
                text.retain_finished,
                defaults.retain_finished,
            )?,
            sweep_every: field("sweep_every", text.sweep_every, defaults.sweep_every)?,
        };
        if cfg.retain_finished < MIN_RETAIN_FINISHED {
            return Err(format!(
                "jobs.retain_finished: must be at least 1m (got {}s)",
                cfg.retain_finished.as_secs()
            ));
        }
        if cfg.sweep_every.is_zero() {
            return Err("jobs.sweep_every: must be positive".into());
        }
        Ok(cfg)
    }
}

/// A duration like `30s`, `5m`, `2h`, `7d` or `1h30m`; a bare number is seconds. The CLI's and the
/// coordinator's syntax: one parser for all ([`protocol::units::parse_duration`]).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    protocol::units::parse_duration(text).map_err(|e| e.to_string())
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

/// Options the environment may set, as TOML paths: `MERIDIAN_` + the path in upper case joined by `_`
/// (`[jobs] retain_finished` → `MERIDIAN_JOBS_RETAIN_FINISHED`). A variable replaces the file's value;
/// `MERIDIAN_COORDINATORS` is a comma-separated list and `MERIDIAN_LABELS` comma-separated `key=value`
/// pairs (replacing the whole `[labels]` table).
const ENV_KEYS: &[(&str, EnvKind)] = &[
    ("data_dir", EnvKind::Text),
    ("coordinators", EnvKind::List),
    ("heartbeat_ms", EnvKind::Integer),
    ("listen", EnvKind::Text),
    ("advertise", EnvKind::Text),
    ("metrics_listen", EnvKind::Text),
    ("metrics_allow_non_loopback", EnvKind::Boolean),
    ("labels", EnvKind::Pairs),
    ("idle_gpus.utilization_percent", EnvKind::Integer),
    ("idle_gpus.window_secs", EnvKind::Integer),
    ("jobs.retain_finished", EnvKind::Text),
    ("jobs.sweep_every", EnvKind::Text),
    ("sandbox.first_uid", EnvKind::Integer),
    ("sandbox.uid_count", EnvKind::Integer),
    ("sandbox.default_memory_mib", EnvKind::Integer),
    ("sandbox.pids_max", EnvKind::Integer),
    ("sandbox.read_only_paths", EnvKind::List),
    ("sandbox.shared_paths", EnvKind::List),
    ("sandbox.hidden_paths", EnvKind::List),
    ("sandbox.deny", EnvKind::List),
    ("tls.ca", EnvKind::Text),
    ("tls.cert", EnvKind::Text),
    ("tls.key", EnvKind::Text),
];

pub use meridian_config::process_env;

impl AgentConfig {
    /// Reads the file, applies the `MERIDIAN_*` overrides found in `env`, validates.
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Parses `text`, applies the overrides in `env`, validates; `path` only names the file in errors.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Parse {
            path: path.into(),
            message,
        };
        let doc = meridian_config::layered(text, ENV_KEYS, env).map_err(|e| match e {
            LayerError::File(message) => invalid(message),
            LayerError::Env { name, message } => ConfigError::Env { name, message },
        })?;
        let cfg: AgentConfig = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
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
        if let Some(addr) = cfg.metrics_listen {
            if !addr.ip().is_loopback() && !cfg.metrics_allow_non_loopback {
                return Err(invalid(format!(
                    "metrics_listen: {addr} is not a loopback address and the metrics endpoint has no \
                     authentication; set metrics_allow_non_loopback = true to serve it there anyway"
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
        AgentConfig::parse(text, Path::new("agent.toml"), &BTreeMap::new())
    }

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AgentConfig::parse(text, Path::new("agent.toml"), &env)
    }

    #[test]
    fn the_sandbox_section_is_validated_and_read() {
        let cfg = parse(MINIMAL).expect("defaults");
        assert_eq!(cfg.sandbox, SandboxConfig::default());
        let text = format!(
            "{MINIMAL}\n[sandbox]\nfirst_uid = 300000\nuid_count = 10\ndefault_memory_mib = 512\n\
             pids_max = 64\nread_only_paths = [\"/opt/conda\"]\ndeny = [\"10.0.0.0/8\", \":7070\"]\n"
        );
        let cfg = parse(&text).expect("valid");
        assert_eq!(cfg.sandbox.options.first_uid, 300_000);
        assert_eq!(cfg.sandbox.options.uid_count, 10);
        assert_eq!(cfg.sandbox.defaults.memory_bytes, 512 << 20);
        assert_eq!(cfg.sandbox.defaults.pids_max, 64);
        assert_eq!(
            cfg.sandbox.options.read_only_paths,
            [PathBuf::from("/opt/conda")]
        );
        assert_eq!(cfg.sandbox.options.deny.len(), 1);
        assert_eq!(cfg.sandbox.protected_local_ports, [7070]);
        for (bad, field) in [
            ("first_uid = 0", "first_uid"),
            ("uid_count = 0", "uid_count"),
            ("pids_max = 3", "pids_max"),
            ("read_only_paths = [\"opt\"]", "read_only_paths"),
            ("deny = [\"nowhere\"]", "deny"),
            ("deny = [\":x\"]", "deny"),
            ("unknown = 1", "unknown"),
        ] {
            let err = parse(&format!("{MINIMAL}\n[sandbox]\n{bad}\n")).expect_err(bad);
            assert!(err.to_string().contains(field), "{bad}: {err}");
        }
        let cfg = parse_env(
            MINIMAL,
            &[
                ("MERIDIAN_SANDBOX_PIDS_MAX", "128"),
                ("MERIDIAN_SANDBOX_DENY", "192.168.0.0/16,:8080"),
            ],
        )
        .expect("env");
        assert_eq!(cfg.sandbox.defaults.pids_max, 128);
        assert_eq!(cfg.sandbox.protected_local_ports, [8080]);
    }

    #[test]
    fn environment_variables_override_the_file() {
        let cfg = parse_env(
            MINIMAL,
            &[
                ("MERIDIAN_DATA_DIR", "/srv/agent"),
                ("MERIDIAN_COORDINATORS", "c1:7170, c2:7170,c3:7170"),
                ("MERIDIAN_HEARTBEAT_MS", "250"),
                ("MERIDIAN_LISTEN", "127.0.0.1:7444"),
                ("MERIDIAN_ADVERTISE", "node-7.example:7444"),
                ("MERIDIAN_LABELS", "zone=eu-1a, instance=spot"),
                ("MERIDIAN_IDLE_GPUS_UTILIZATION_PERCENT", "3"),
                ("MERIDIAN_JOBS_RETAIN_FINISHED", "2d"),
                ("MERIDIAN_TLS_KEY", "/etc/meridian/other.key"),
                ("MERIDIAN_UNRELATED", "ignored"),
            ],
        )
        .expect("overrides apply");
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/agent"));
        assert_eq!(cfg.coordinators, ["c1:7170", "c2:7170", "c3:7170"]);
        assert_eq!(cfg.heartbeat_ms, 250);
        assert_eq!(cfg.listen, "127.0.0.1:7444".parse().expect("literal"));
        assert_eq!(cfg.advertise.as_deref(), Some("node-7.example:7444"));
        assert_eq!(
            cfg.labels,
            BTreeMap::from([
                ("instance".to_owned(), "spot".to_owned()),
                ("zone".to_owned(), "eu-1a".to_owned())
            ])
        );
        assert_eq!(cfg.idle_gpus.utilization_percent, 3);
        assert_eq!(cfg.jobs.retain_finished, Duration::from_secs(2 * 86_400));
        assert_eq!(cfg.tls.key, PathBuf::from("/etc/meridian/other.key"));
        assert_eq!(
            cfg.tls.ca,
            PathBuf::from("ca.pem"),
            "the file's value stays"
        );
    }

    #[test]
    fn bad_environment_values_name_the_variable_and_validation_still_applies() {
        for (name, value, needle) in [
            ("MERIDIAN_HEARTBEAT_MS", "fast", "MERIDIAN_HEARTBEAT_MS"),
            ("MERIDIAN_LABELS", "zone", "MERIDIAN_LABELS"),
            ("MERIDIAN_HEARTBEAT_MS", "0", "heartbeat_ms"),
            ("MERIDIAN_COORDINATORS", "c1", "not host:port"),
            (
                "MERIDIAN_COORDINATORS",
                " , ",
                "coordinators: must not be empty",
            ),
            ("MERIDIAN_JOBS_SWEEP_EVERY", "soon", "jobs.sweep_every"),
        ] {
            match parse_env(MINIMAL, &[(name, value)]) {
                Err(e) => assert!(e.to_string().contains(needle), "{name}={value}: {e}"),
                Ok(_) => panic!("{name}={value} was accepted"),
            }
        }
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
        assert_eq!(cfg.jobs.retain_finished, Duration::from_secs(7 * 86_400));
        assert_eq!(cfg.jobs.sweep_every, Duration::from_secs(600));
        assert_eq!(cfg.jobs, JobsConfig::default());
    }

    #[test]
    fn every_field_is_read() {
        let text = MINIMAL.replace(
            "[tls]",
            "heartbeat_ms = 250\nlisten = \"127.0.0.1:0\"\nadvertise = \"[::1]:7443\"\n[tls]",
        ) + "[labels]\nzone = \"eu-1a\"\ninstance = \"spot\"\n[idle_gpus]\nutilization_percent = 10\nwindow_secs = 60\n"
            + "[jobs]\nretain_finished = \"1d12h\"\nsweep_every = \"90s\"\n";
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
        assert_eq!(
            cfg.jobs,
            JobsConfig {
                retain_finished: Duration::from_secs(36 * 3_600),
                sweep_every: Duration::from_secs(90),
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
        for (bad, needle) in [
            (
                "retain_finished = \"59s\"",
                "jobs.retain_finished: must be at least 1m",
            ),
            (
                "retain_finished = \"0\"",
                "jobs.retain_finished: must be at least 1m",
            ),
            ("retain_finished = \"7 days\"", "jobs.retain_finished"),
            (
                "retain_finished = \"7w\"",
                "jobs.retain_finished: unknown unit",
            ),
            ("retain_finished = \"\"", "jobs.retain_finished: empty"),
            ("sweep_every = \"0s\"", "jobs.sweep_every: must be positive"),
            ("sweep_every = \"m\"", "jobs.sweep_every"),
            ("sweep_every = 600", "sweep_every"),
            ("retain = \"7d\"", "retain"),
        ] {
            refused(&format!("{MINIMAL}[jobs]\n{bad}\n"), needle);
        }
        refused(&MINIMAL.replace("[tls]", "colour = 1\n[tls]"), "colour");
    }

    #[test]
    fn durations_take_the_cli_syntax() {
        let secs = |text: &str| parse_duration(text).map(|d| d.as_secs());
        assert_eq!(secs("45"), Ok(45));
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("10m"), Ok(600));
        assert_eq!(secs("2h"), Ok(7_200));
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("1h30m"), Ok(5_400));
        assert_eq!(secs(" 1d2h3m4s "), Ok(93_784));
        assert_eq!(secs("30m1h"), Ok(5_400));
        for bad in [
            "",
            "  ",
            "m",
            "10x",
            "1.5h",
            "-1m",
            "1h 30m",
            "h1",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("213503982334602d").is_err_and(|e| e.contains("too large")));
    }

    #[test]
    fn the_metrics_listener_is_opt_in_and_stays_on_loopback_unless_allowed() {
        let cfg = parse(MINIMAL).expect("minimal config");
        assert_eq!(cfg.metrics_listen, None);
        assert!(!cfg.metrics_allow_non_loopback);
        let cfg =
            parse_env(MINIMAL, &[("MERIDIAN_METRICS_LISTEN", "127.0.0.1:9464")]).expect("loopback");
        assert_eq!(
            cfg.metrics_listen,
            Some("127.0.0.1:9464".parse().expect("literal"))
        );
        refused(
            &MINIMAL.replace("[tls]", "metrics_listen = \"0.0.0.0:9464\"\n[tls]"),
            "metrics_listen: 0.0.0.0:9464 is not a loopback address",
        );
        let cfg = parse_env(
            MINIMAL,
            &[
                ("MERIDIAN_METRICS_LISTEN", "0.0.0.0:9464"),
                ("MERIDIAN_METRICS_ALLOW_NON_LOOPBACK", "true"),
            ],
        )
        .expect("opted in");
        assert!(cfg.metrics_allow_non_loopback);
        assert_eq!(
            cfg.metrics_listen,
            Some("0.0.0.0:9464".parse().expect("literal"))
        );
    }

    #[test]
    fn the_shipped_agent_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.toml");
        let cfg = AgentConfig::load(&path, &BTreeMap::new()).expect("deploy/config/agent.toml");
        assert_eq!(cfg.coordinators.len(), 3);
        assert_eq!(cfg.jobs, JobsConfig::default());
    }
}
