//! Coordinator configuration: TOML file, then `MERIDIAN_*` environment variables, validated once.
//!
//! Every option has an environment name made of `MERIDIAN_` and its TOML path in upper case joined by `_`
//! (`[raft] listen` → `MERIDIAN_RAFT_LISTEN`, `node_id` → `MERIDIAN_NODE_ID`). Members of the bootstrap group
//! are a list and only come from the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meridian_config::{EnvKind, LayerError};
use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
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
    #[error("config field {field}: {message}")]
    Invalid { field: String, message: String },
}

/// `meridian coordinator --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Raft node id, unique in the group.
    pub node_id: u64,
    /// Member name, e.g. `c1`.
    pub name: String,
    /// Directory for the Raft log, snapshots and state.
    pub data_dir: PathBuf,
    /// Region label shown in status.
    #[serde(default = "default_region")]
    pub region: String,
    pub raft: RaftSection,
    pub admin: AdminSection,
    pub tls: TlsSection,
    #[serde(default)]
    pub secrets: SecretsSection,
    #[serde(default)]
    pub bootstrap: BootstrapSection,
    #[serde(default)]
    pub fleet: FleetSection,
    #[serde(default)]
    pub jobs: JobsSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub quotas: QuotasSection,
    #[serde(default)]
    pub keys: KeysSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSection {
    /// UDP address the QUIC mesh listens on.
    pub listen: SocketAddr,
    /// Address other coordinators use to reach this one (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    #[serde(default = "default_election_min")]
    pub election_min_ms: u64,
    #[serde(default = "default_election_max")]
    pub election_max_ms: u64,
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// TCP address of the admin API (REST + gRPC).
    pub listen: SocketAddr,
    /// Address clients use to reach it (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Serve TLS (required outside loopback; production coordinators always use it).
    #[serde(default = "yes")]
    pub tls: bool,
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    /// Most connections open at once (one more is refused at once).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections open at once from one source address.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// How long a client may take to send its request headers, in milliseconds.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// How long a client may take to send a request body, in milliseconds (answered 408 after).
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Refused requests (401, 403, 404) a key or an address may collect in a burst before it gets 429.
    #[serde(default = "default_refused_burst")]
    pub refused_burst: u32,
    /// Refused requests per second a key or an address earns back.
    #[serde(default = "default_refused_per_second")]
    pub refused_per_second: u32,
    /// How often the coalesced counts of refused requests are written to the audit log, in milliseconds.
    #[serde(default = "default_refused_audit_window_ms")]
    pub refused_audit_window_ms: u64,
}

impl AdminSection {
    /// The admin API's limits.
    pub fn limits(&self) -> coordinator::api::ApiLimits {
        let ms = std::time::Duration::from_millis;
        coordinator::api::ApiLimits {
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            header_read_timeout: ms(self.header_timeout_ms),
            body_read_timeout: ms(self.body_timeout_ms),
            denials: coordinator::api::DenialLimits {
                burst: self.refused_burst,
                per_second: self.refused_per_second,
                window: ms(self.refused_audit_window_ms),
            },
        }
    }
}

/// `[quotas]`: the quotas every new project starts with (a platform-admin raises or lowers them per
/// project with `meridian project policy set`). Projects created before a change keep theirs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasSection {
    /// Most jobs pending at once.
    #[serde(default = "default_max_pending_jobs")]
    pub max_pending_jobs: u64,
    /// Most CPU, in thousandths of a core, reserved by scheduled and running jobs together.
    #[serde(default = "default_max_running_cpu_millis")]
    pub max_running_cpu_millis: u64,
    /// Most memory, in bytes, reserved by scheduled and running jobs together.
    #[serde(default = "default_max_running_memory_bytes")]
    pub max_running_memory_bytes: u64,
    /// Most GPUs held by scheduled and running jobs together.
    #[serde(default = "default_max_running_gpus")]
    pub max_running_gpus: u64,
    /// Most bytes of job specs held by unfinished jobs together.
    #[serde(default = "default_max_spec_bytes")]
    pub max_spec_bytes: u64,
}

impl Default for QuotasSection {
    fn default() -> Self {
        let p = coordinator::state::ProjectPolicy::BUILTIN;
        Self {
            max_pending_jobs: p.max_pending_jobs,
            max_running_cpu_millis: p.max_running_cpu_millis,
            max_running_memory_bytes: p.max_running_memory_bytes,
            max_running_gpus: p.max_running_gpus,
            max_spec_bytes: p.max_spec_bytes,
        }
    }
}

impl QuotasSection {
    /// The policy new projects get: these quotas, the built-in network (`egress`) and ceiling (0).
    pub fn project_defaults(&self) -> coordinator::state::ProjectPolicy {
        coordinator::state::ProjectPolicy {
            max_pending_jobs: self.max_pending_jobs,
            max_running_cpu_millis: self.max_running_cpu_millis,
            max_running_memory_bytes: self.max_running_memory_bytes,
            max_running_gpus: self.max_running_gpus,
            max_spec_bytes: self.max_spec_bytes,
            ..coordinator::state::ProjectPolicy::BUILTIN
        }
    }
}

fn default_max_pending_jobs() -> u64 {
    QuotasSection::default().max_pending_jobs
}
fn default_max_running_cpu_millis() -> u64 {
    QuotasSection::default().max_running_cpu_millis
}
fn default_max_running_memory_bytes() -> u64 {
    QuotasSection::default().max_running_memory_bytes
}
fn default_max_running_gpus() -> u64 {
    QuotasSection::default().max_running_gpus
}
fn default_max_spec_bytes() -> u64 {
    QuotasSection::default().max_spec_bytes
}

fn default_max_connections() -> usize {
    coordinator::api::ApiLimits::default().max_connections
}
fn default_max_connections_per_source() -> usize {
    coordinator::api::ApiLimits::default().max_connections_per_source
}
fn default_header_timeout_ms() -> u64 {
    millis(coordinator::api::ApiLimits::default().header_read_timeout)
}
fn default_body_timeout_ms() -> u64 {
    millis(coordinator::api::ApiLimits::default().body_read_timeout)
}
fn default_refused_burst() -> u32 {
    coordinator::api::DenialLimits::default().burst
}
fn default_refused_per_second() -> u32 {
    coordinator::api::DenialLimits::default().per_second
}
fn default_refused_audit_window_ms() -> u64 {
    millis(coordinator::api::DenialLimits::default().window)
}
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSection {
    /// Master keyring file (`id:base64key` lines, last is current). `MERIDIAN_MASTER_KEY` is used when unset.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSection {
    /// Form the group from `members` if this node has never been initialized. Set on one node only.
    #[serde(default)]
    pub init: bool,
    /// Where the bootstrap platform-admin token is written (mode 0600), or read from if it already exists.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// The initial voters.
    #[serde(default)]
    pub members: Vec<BootstrapMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapMember {
    pub id: u64,
    pub name: String,
    pub raft_addr: String,
    pub admin_addr: String,
}

/// `[fleet]`: how agents beat and when silence changes a node's health.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// Heartbeat interval told to agents.
    #[serde(default = "default_fleet_heartbeat")]
    pub heartbeat_ms: u64,
    /// A node silent this long becomes `unreachable`.
    #[serde(default = "default_fleet_ttl")]
    pub ttl_ms: u64,
    /// An `unreachable` node silent this much longer becomes `lost`, and its jobs are rescheduled.
    #[serde(default = "default_fleet_lost_after")]
    pub lost_after_ms: u64,
    /// Approve a node on its first registration when its cluster has no admission policy of its own
    /// (`meridian cluster policy`). Off by default: a new node waits as `pending_approval` until
    /// `meridian node approve`. `meridian dev` turns it on.
    #[serde(default)]
    pub approve_new_nodes: bool,
}

impl Default for FleetSection {
    fn default() -> Self {
        Self {
            heartbeat_ms: default_fleet_heartbeat(),
            ttl_ms: default_fleet_ttl(),
            lost_after_ms: default_fleet_lost_after(),
            approve_new_nodes: false,
        }
    }
}

impl FleetSection {
    /// The coordinator's fleet timings.
    pub fn timings(&self) -> coordinator::fleet::FleetTimings {
        let ms = std::time::Duration::from_millis;
        let defaults = coordinator::fleet::FleetTimings::default();
        coordinator::fleet::FleetTimings {
            heartbeat: ms(self.heartbeat_ms),
            ttl: ms(self.ttl_ms),
            lost_after: ms(self.lost_after_ms),
            // The monitor looks several times per heartbeat, so a transition is never late by much.
            tick: ms((self.heartbeat_ms / 4).clamp(10, 250)),
            dispatch_tick: defaults.dispatch_tick,
        }
    }
}

/// `[jobs]`: how long finished jobs stay in the registry before the leader forgets them (their usage is
/// kept per hour).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    /// A finished job older than this many seconds is purged. At least 60.
    #[serde(default = "default_retain_finished_secs")]
    pub retain_finished_secs: u64,
    /// How often the leader looks for jobs to purge, in seconds.
    #[serde(default = "default_sweep_secs")]
    pub sweep_secs: u64,
}

impl Default for JobsSection {
    fn default() -> Self {
        Self {
            retain_finished_secs: default_retain_finished_secs(),
            sweep_secs: default_sweep_secs(),
        }
    }
}

impl JobsSection {
    /// The coordinator's job retention.
    pub fn retention(&self) -> coordinator::JobRetention {
        coordinator::JobRetention {
            retain_finished: std::time::Duration::from_secs(self.retain_finished_secs),
            sweep: std::time::Duration::from_secs(self.sweep_secs),
        }
    }
}

/// `[audit]`: how many audit records stay in the replicated state; the leader archives the oldest beyond
/// that (each coordinator writes them to `<data_dir>/audit-archive/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Live records kept before the oldest are archived. At least 1.
    #[serde(default = "default_audit_keep_records")]
    pub keep_records: u64,
    /// Records one archive takes. At least 1.
    #[serde(default = "default_audit_archive_batch")]
    pub archive_batch: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            keep_records: default_audit_keep_records(),
            archive_batch: default_audit_archive_batch(),
        }
    }
}

impl AuditSection {
    /// The coordinator's audit retention.
    pub fn retention(&self) -> coordinator::AuditRetention {
        coordinator::AuditRetention {
            keep_records: self.keep_records,
            batch: self.archive_batch,
        }
    }
}

fn default_audit_keep_records() -> u64 {
    coordinator::AuditRetention::default().keep_records
}
fn default_audit_archive_batch() -> u64 {
    coordinator::AuditRetention::default().batch
}

/// `[keys]`: API keys the admin API creates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Lifetime of a key created without an explicit one: a duration such as `90d`, `12h` or `1d12h`, or
    /// a number of seconds. A key that never expires must be asked for (platform-admins only).
    #[serde(default = "default_key_ttl", deserialize_with = "duration_text")]
    pub default_ttl: String,
}

impl Default for KeysSection {
    fn default() -> Self {
        Self {
            default_ttl: default_key_ttl(),
        }
    }
}

impl KeysSection {
    /// The default key lifetime (validated when the config was loaded).
    pub fn default_ttl(&self) -> std::time::Duration {
        coordinator::api::parse_duration_secs(&self.default_ttl)
            .map(std::time::Duration::from_secs)
            .unwrap_or(coordinator::api::DEFAULT_KEY_TTL)
    }
}

fn default_key_ttl() -> String {
    "90d".to_owned()
}

/// Longest default key lifetime: ten years.
const MAX_KEY_TTL_SECS: u64 = 10 * 365 * 86_400;

/// A duration written as text (`90d`) or as a number of seconds (what a `MERIDIAN_*` variable of digits
/// becomes).
fn duration_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Seconds(u64),
        Text(String),
    }
    Ok(match Text::deserialize(d)? {
        Text::Seconds(n) => n.to_string(),
        Text::Text(t) => t,
    })
}

fn default_retain_finished_secs() -> u64 {
    coordinator::JobRetention::default()
        .retain_finished
        .as_secs()
}
fn default_sweep_secs() -> u64 {
    coordinator::JobRetention::default().sweep.as_secs()
}

fn default_fleet_heartbeat() -> u64 {
    1_000
}
fn default_fleet_ttl() -> u64 {
    5_000
}
fn default_fleet_lost_after() -> u64 {
    30_000
}

fn default_region() -> String {
    "default".into()
}
fn default_heartbeat() -> u64 {
    50
}
fn default_election_min() -> u64 {
    300
}
fn default_election_max() -> u64 {
    600
}
fn default_snapshot_every() -> u64 {
    10_000
}
fn default_body_limit() -> usize {
    1 << 20
}
fn yes() -> bool {
    true
}

/// Options the environment may set, as TOML paths with the kind of their value (see `meridian_config`).
const ENV_KEYS: &[(&str, EnvKind)] = &[
    ("node_id", EnvKind::Integer),
    ("name", EnvKind::Text),
    ("data_dir", EnvKind::Text),
    ("region", EnvKind::Text),
    ("raft.listen", EnvKind::Text),
    ("raft.advertise", EnvKind::Text),
    ("raft.heartbeat_ms", EnvKind::Integer),
    ("raft.election_min_ms", EnvKind::Integer),
    ("raft.election_max_ms", EnvKind::Integer),
    ("raft.snapshot_every", EnvKind::Integer),
    ("admin.listen", EnvKind::Text),
    ("admin.advertise", EnvKind::Text),
    ("admin.tls", EnvKind::Boolean),
    ("admin.max_body_bytes", EnvKind::Integer),
    ("admin.max_connections", EnvKind::Integer),
    ("admin.max_connections_per_source", EnvKind::Integer),
    ("admin.header_timeout_ms", EnvKind::Integer),
    ("admin.body_timeout_ms", EnvKind::Integer),
    ("admin.refused_burst", EnvKind::Integer),
    ("admin.refused_per_second", EnvKind::Integer),
    ("admin.refused_audit_window_ms", EnvKind::Integer),
    ("tls.ca", EnvKind::Text),
    ("tls.cert", EnvKind::Text),
    ("tls.key", EnvKind::Text),
    ("secrets.master_key_file", EnvKind::Text),
    ("bootstrap.init", EnvKind::Boolean),
    ("bootstrap.admin_token_file", EnvKind::Text),
    ("fleet.heartbeat_ms", EnvKind::Integer),
    ("fleet.ttl_ms", EnvKind::Integer),
    ("fleet.lost_after_ms", EnvKind::Integer),
    ("fleet.approve_new_nodes", EnvKind::Boolean),
    ("jobs.retain_finished_secs", EnvKind::Integer),
    ("jobs.sweep_secs", EnvKind::Integer),
    ("audit.keep_records", EnvKind::Integer),
    ("audit.archive_batch", EnvKind::Integer),
    ("quotas.max_pending_jobs", EnvKind::Integer),
    ("quotas.max_running_cpu_millis", EnvKind::Integer),
    ("quotas.max_running_memory_bytes", EnvKind::Integer),
    ("quotas.max_running_gpus", EnvKind::Integer),
    ("quotas.max_spec_bytes", EnvKind::Integer),
    ("keys.default_ttl", EnvKind::Text),
];

pub use meridian_config::{env_name, process_env};

impl CoordinatorConfig {
    /// Reads the file, applies `MERIDIAN_*` overrides from `env`, validates.
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Parses TOML text with environment overrides.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let doc = meridian_config::layered(text, ENV_KEYS, env).map_err(|e| match e {
            LayerError::File(message) => ConfigError::Parse {
                path: path.into(),
                message,
            },
            LayerError::Env { name, message } => ConfigError::Env { name, message },
        })?;
        let cfg: CoordinatorConfig =
            toml::Value::Table(doc)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.into(),
                    message: e.to_string(),
                })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        };
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if self.raft.heartbeat_ms == 0 {
            return Err(invalid("raft.heartbeat_ms", "must be positive"));
        }
        if self.raft.election_min_ms < 3 * self.raft.heartbeat_ms {
            return Err(invalid(
                "raft.election_min_ms",
                "must be at least 3 x raft.heartbeat_ms",
            ));
        }
        if self.raft.election_max_ms <= self.raft.election_min_ms {
            return Err(invalid(
                "raft.election_max_ms",
                "must be greater than raft.election_min_ms",
            ));
        }
        if self.fleet.heartbeat_ms == 0 {
            return Err(invalid("fleet.heartbeat_ms", "must be positive"));
        }
        if self.fleet.ttl_ms < 2 * self.fleet.heartbeat_ms {
            return Err(invalid(
                "fleet.ttl_ms",
                "must be at least 2 x fleet.heartbeat_ms",
            ));
        }
        if self.fleet.lost_after_ms == 0 {
            return Err(invalid("fleet.lost_after_ms", "must be positive"));
        }
        if self.jobs.retain_finished_secs < 60 {
            return Err(invalid(
                "jobs.retain_finished_secs",
                "must be at least 60 (finished jobs are kept at least a minute)",
            ));
        }
        if self.jobs.sweep_secs == 0 {
            return Err(invalid("jobs.sweep_secs", "must be positive"));
        }
        if self.audit.keep_records == 0 {
            return Err(invalid("audit.keep_records", "must be positive"));
        }
        if self.audit.archive_batch == 0 {
            return Err(invalid("audit.archive_batch", "must be positive"));
        }
        for (field, value) in [
            ("admin.max_connections", self.admin.max_connections as u64),
            (
                "admin.max_connections_per_source",
                self.admin.max_connections_per_source as u64,
            ),
            ("admin.header_timeout_ms", self.admin.header_timeout_ms),
            ("admin.body_timeout_ms", self.admin.body_timeout_ms),
            ("admin.refused_burst", u64::from(self.admin.refused_burst)),
            (
                "admin.refused_per_second",
                u64::from(self.admin.refused_per_second),
            ),
            (
                "admin.refused_audit_window_ms",
                self.admin.refused_audit_window_ms,
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if let Err(e) = self.quotas.project_defaults().validate() {
            return Err(ConfigError::Invalid {
                field: "quotas".into(),
                message: e.to_string(),
            });
        }
        match coordinator::api::parse_duration_secs(&self.keys.default_ttl) {
            Ok(0) => return Err(invalid("keys.default_ttl", "must be positive")),
            Ok(secs) if secs > MAX_KEY_TTL_SECS => {
                return Err(invalid("keys.default_ttl", "at most 3650d"))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ConfigError::Invalid {
                    field: "keys.default_ttl".into(),
                    message: e.to_string(),
                })
            }
        }
        if !self.admin.tls && !self.admin.listen.ip().is_loopback() {
            return Err(invalid(
                "admin.tls",
                "plain HTTP is only allowed on a loopback address",
            ));
        }
        if self.bootstrap.init {
            if self.bootstrap.members.is_empty() {
                return Err(invalid(
                    "bootstrap.members",
                    "bootstrap.init needs the initial members",
                ));
            }
            if !self.bootstrap.members.iter().any(|m| m.id == self.node_id) {
                return Err(invalid(
                    "bootstrap.members",
                    "must include this node's node_id",
                ));
            }
            if ![1, 3, 5].contains(&self.bootstrap.members.len()) {
                return Err(invalid("bootstrap.members", "a group has 1, 3 or 5 voters"));
            }
        }
        Ok(())
    }

    /// Raft address as advertised to other members.
    pub fn raft_advertise(&self) -> String {
        self.raft
            .advertise
            .clone()
            .unwrap_or_else(|| self.raft.listen.to_string())
    }

    /// Admin API address as advertised to clients.
    pub fn admin_advertise(&self) -> String {
        self.admin
            .advertise
            .clone()
            .unwrap_or_else(|| self.admin.listen.to_string())
    }
}

/// Environment values are TOML scalars when they parse as one, strings otherwise.
#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
node_id = 1
name = "c1"
data_dir = "/tmp/c1"
[raft]
listen = "127.0.0.1:7171"
[admin]
listen = "127.0.0.1:7071"
[tls]
ca = "ca.pem"
cert = "c1.pem"
key = "c1.key"
[bootstrap]
init = true
members = [{ id = 1, name = "c1", raft_addr = "127.0.0.1:7171", admin_addr = "127.0.0.1:7071" }]
"#;

    #[test]
    fn a_name_of_digits_from_the_environment_stays_a_name() {
        let env = BTreeMap::from([
            ("MERIDIAN_NAME".to_string(), "1".to_string()),
            ("MERIDIAN_REGION".to_string(), "42".to_string()),
        ]);
        let cfg = CoordinatorConfig::parse(SAMPLE, Path::new("c.toml"), &env).expect("parses");
        assert_eq!(cfg.name, "1");
        let env = BTreeMap::from([("MERIDIAN_NODE_ID".to_string(), "one".to_string())]);
        match CoordinatorConfig::parse(SAMPLE, Path::new("c.toml"), &env) {
            Err(ConfigError::Env { name, .. }) => assert_eq!(name, "MERIDIAN_NODE_ID"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn audit_retention_defaults_reads_file_and_env_and_validates() {
        let none = BTreeMap::new();
        let cfg = CoordinatorConfig::parse(SAMPLE, Path::new("c.toml"), &none).expect("parses");
        assert_eq!(
            cfg.audit.retention(),
            coordinator::AuditRetention::default()
        );
        assert_eq!(cfg.audit.keep_records, 100_000);
        assert_eq!(cfg.audit.archive_batch, 10_000);
        let text = format!("{SAMPLE}\n[audit]\nkeep_records = 500\n");
        let env = BTreeMap::from([("MERIDIAN_AUDIT_ARCHIVE_BATCH".to_string(), "50".to_string())]);
        let cfg = CoordinatorConfig::parse(&text, Path::new("c.toml"), &env).expect("parses");
        assert_eq!(
            cfg.audit.retention(),
            coordinator::AuditRetention {
                keep_records: 500,
                batch: 50
            }
        );
        for (name, field) in [
            ("MERIDIAN_AUDIT_KEEP_RECORDS", "audit.keep_records"),
            ("MERIDIAN_AUDIT_ARCHIVE_BATCH", "audit.archive_batch"),
        ] {
            let env = BTreeMap::from([(name.to_string(), "0".to_string())]);
            let err = CoordinatorConfig::parse(SAMPLE, Path::new("c.toml"), &env)
                .expect_err("0 is refused");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn env_overrides_file() {
        let mut env = BTreeMap::new();
        env.insert("MERIDIAN_RAFT_HEARTBEAT_MS".to_string(), "20".to_string());
        env.insert("MERIDIAN_NAME".to_string(), "c9".to_string());
        let cfg = CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &env).expect("valid");
        assert_eq!(cfg.raft.heartbeat_ms, 20);
        assert_eq!(cfg.name, "c9");
        assert!(cfg.admin.tls, "TLS is the default");
    }

    #[test]
    fn fleet_timings_default_and_validate() {
        let cfg =
            CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &BTreeMap::new()).expect("valid");
        assert_eq!(cfg.fleet.timings().heartbeat.as_millis(), 1_000);
        assert_eq!(cfg.fleet.timings().ttl.as_millis(), 5_000);
        let mut env = BTreeMap::new();
        env.insert("MERIDIAN_FLEET_TTL_MS".to_string(), "100".to_string());
        let err = CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &env).expect_err("refused");
        assert!(err.to_string().contains("fleet.ttl_ms"), "{err}");
    }

    #[test]
    fn job_retention_defaults_env_and_validation() {
        let cfg =
            CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &BTreeMap::new()).expect("valid");
        let retention = cfg.jobs.retention();
        assert_eq!(retention.retain_finished.as_secs(), 604_800);
        assert_eq!(retention.sweep.as_secs(), 60);

        let text = format!("{SAMPLE}\n[jobs]\nretain_finished_secs = 3600\n");
        let mut env = BTreeMap::new();
        env.insert("MERIDIAN_JOBS_SWEEP_SECS".to_string(), "5".to_string());
        let cfg = CoordinatorConfig::parse(&text, Path::new("t.toml"), &env).expect("valid");
        assert_eq!(cfg.jobs.retention().retain_finished.as_secs(), 3_600);
        assert_eq!(cfg.jobs.retention().sweep.as_secs(), 5);

        for (name, value, field) in [
            (
                "MERIDIAN_JOBS_RETAIN_FINISHED_SECS",
                "0",
                "jobs.retain_finished_secs",
            ),
            (
                "MERIDIAN_JOBS_RETAIN_FINISHED_SECS",
                "59",
                "jobs.retain_finished_secs",
            ),
            ("MERIDIAN_JOBS_SWEEP_SECS", "0", "jobs.sweep_secs"),
        ] {
            let env = BTreeMap::from([(name.to_string(), value.to_string())]);
            let err =
                CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &env).expect_err("refused");
            assert!(err.to_string().contains(field), "{name}={value}: {err}");
        }
    }

    #[test]
    fn admin_limits_and_quotas_default_override_and_validate() {
        let cfg =
            CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &BTreeMap::new()).expect("valid");
        assert_eq!(cfg.admin.limits(), coordinator::api::ApiLimits::default());
        assert_eq!(
            cfg.quotas.project_defaults(),
            coordinator::state::ProjectPolicy::BUILTIN
        );

        let text = format!("{SAMPLE}\n[quotas]\nmax_pending_jobs = 10\n");
        let env = BTreeMap::from([
            (
                "MERIDIAN_ADMIN_MAX_CONNECTIONS".to_string(),
                "64".to_string(),
            ),
            (
                "MERIDIAN_ADMIN_BODY_TIMEOUT_MS".to_string(),
                "2000".to_string(),
            ),
            (
                "MERIDIAN_QUOTAS_MAX_RUNNING_GPUS".to_string(),
                "2".to_string(),
            ),
        ]);
        let cfg = CoordinatorConfig::parse(&text, Path::new("t.toml"), &env).expect("valid");
        let limits = cfg.admin.limits();
        assert_eq!(limits.max_connections, 64);
        assert_eq!(limits.body_read_timeout.as_millis(), 2000);
        let defaults = cfg.quotas.project_defaults();
        assert_eq!(defaults.max_pending_jobs, 10);
        assert_eq!(defaults.max_running_gpus, 2);
        assert_eq!(defaults.network, coordinator::state::NetworkPolicy::Egress);
        assert_eq!(defaults.preemption_ceiling, 0);

        for (name, value, field) in [
            (
                "MERIDIAN_ADMIN_MAX_CONNECTIONS",
                "0",
                "admin.max_connections",
            ),
            (
                "MERIDIAN_ADMIN_BODY_TIMEOUT_MS",
                "0",
                "admin.body_timeout_ms",
            ),
            (
                "MERIDIAN_QUOTAS_MAX_SPEC_BYTES",
                "18446744073709551615",
                "MERIDIAN_QUOTAS_MAX_SPEC_BYTES: \"18446744073709551615\" is too large",
            ),
        ] {
            let env = BTreeMap::from([(name.to_string(), value.to_string())]);
            let err =
                CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &env).expect_err("refused");
            assert!(err.to_string().contains(field), "{name}={value}: {err}");
        }
    }

    #[test]
    fn keys_expire_after_a_configurable_default() {
        let cfg =
            CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &BTreeMap::new()).expect("valid");
        assert_eq!(cfg.keys.default_ttl().as_secs(), 90 * 86_400);

        let text = format!("{SAMPLE}\n[keys]\ndefault_ttl = \"1d12h\"\n");
        let cfg =
            CoordinatorConfig::parse(&text, Path::new("t.toml"), &BTreeMap::new()).expect("valid");
        assert_eq!(cfg.keys.default_ttl().as_secs(), 36 * 3_600);

        let env = BTreeMap::from([("MERIDIAN_KEYS_DEFAULT_TTL".to_string(), "3600".to_string())]);
        let cfg = CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &env).expect("valid");
        assert_eq!(cfg.keys.default_ttl().as_secs(), 3_600);

        for bad in ["0", "0d", "soon", "4000d"] {
            let env = BTreeMap::from([("MERIDIAN_KEYS_DEFAULT_TTL".to_string(), bad.to_string())]);
            let err =
                CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &env).expect_err("refused");
            assert!(err.to_string().contains("keys.default_ttl"), "{bad}: {err}");
        }
    }

    #[test]
    fn plain_http_outside_loopback_is_refused() {
        let mut env = BTreeMap::new();
        env.insert(
            "MERIDIAN_ADMIN_LISTEN".to_string(),
            "0.0.0.0:7071".to_string(),
        );
        env.insert("MERIDIAN_ADMIN_TLS".to_string(), "false".to_string());
        let err = CoordinatorConfig::parse(SAMPLE, Path::new("t.toml"), &env).expect_err("refused");
        assert!(err.to_string().contains("admin.tls"), "{err}");
    }

    #[test]
    fn unknown_field_names_the_field() {
        let text = format!("{SAMPLE}\n[extra]\nx = 1\n");
        let err = CoordinatorConfig::parse(&text, Path::new("t.toml"), &BTreeMap::new())
            .expect_err("refused");
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn bad_group_size_is_refused() {
        let text = SAMPLE.replace(
            "members = [",
            "members = [{ id = 2, name = \"c2\", raft_addr = \"x:1\", admin_addr = \"x:2\" }, ",
        );
        let err = CoordinatorConfig::parse(&text, Path::new("t.toml"), &BTreeMap::new())
            .expect_err("refused");
        assert!(err.to_string().contains("1, 3 or 5"), "{err}");
    }

    #[test]
    fn shipped_deploy_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config");
        for name in ["c1.toml", "c2.toml", "c3.toml"] {
            let cfg = CoordinatorConfig::load(&dir.join(name), &BTreeMap::new())
                .unwrap_or_else(|e| panic!("deploy/config/{name}: {e}"));
            assert!(cfg.admin.tls, "{name}: production coordinators serve TLS");
            assert_eq!(cfg.bootstrap.members.len(), 3, "{name}");
            assert_eq!(
                cfg.bootstrap.init,
                name == "c1.toml",
                "{name}: exactly one member bootstraps"
            );
        }
    }
}
