//! The admin API's job and usage operations, shared by REST and gRPC: submitting (validation of every field,
//! then an `Op::SubmitJob` prepared with a fresh id), listing, reading and cancelling a project's jobs,
//! reading an attempt's output from the agent that ran it, and the project's usage over a time range. The
//! REST handlers and route rows are in `rest.rs`, the gRPC adapters, converters and method rows in `grpc.rs`.
//!
//! Reads go through the project-scoped accessors: another project's job answers exactly like a missing one
//! and the attempt is audited. Asking for preemption needs `preempt-jobs` besides `run-jobs`. Must never decide a job's state itself (that is `apply`'s), never hold a
//! connection to an agent beyond one log read, and never return another project's job or output.

pub(super) mod exec;
pub(super) mod grpc;
mod logs;
mod plan;
pub(super) mod rest;

pub(crate) use logs::LogsQuery;
pub use logs::{JobLogRecordView, JobLogsView, LogCursor, LogStream};
pub use plan::{JobPlanView, PlannedReplica};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::ToSchema;

use crate::authz::{self, Action};
use crate::crypto;
use crate::scheduler::{Constraints, Locality, ResourceRequest, Resources, Strategy};
use crate::state::{
    Attempt, AttemptOutcome, JobOp, JobOutcome, JobRecord, JobSpec, JobState, Op, Outcome,
    RetryPolicy, UsageReport, MAX_REPLICAS,
};

use super::auth::RequestScope;
use super::error::{ErrorKind, ServiceError};
use super::service::{query_u64, unexpected, AdminService, ListPage, PageParams};
use protocol::units::{parse_byte_size, parse_cpu_millis, parse_instant_ms, UnitError};

/// Most GPUs one job may ask for.
pub(crate) const MAX_GPUS: u64 = 64;
/// Most CPU one job may ask for, in thousandths of a core.
const MAX_CPU_MILLIS: u64 = 4_096_000;
/// The range of `priority`.
pub(crate) const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;
/// Longest `timeout_secs`: 365 days.
const MAX_TIMEOUT_SECS: u64 = 365 * 86_400;
/// Longest `cancel_grace_secs`.
const MAX_CANCEL_GRACE_SECS: u64 = 3_600;
/// Most constraint labels.
const MAX_LABELS: usize = 64;
/// The default usage window.
const DEFAULT_USAGE_WINDOW_MS: u64 = 24 * 3_600 * 1_000;
/// Variables the agent sets from the job's GPUs; a job may not override them.
const RESERVED_ENV: [&str; 2] = ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"];

// ---- requests ---------------------------------------------------------------------------------------------

/// `POST /v1/jobs`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJobRequest {
    #[serde(default)]
    pub name: Option<String>,
    /// The program to run.
    // Required (the schema says so); an `Option` so that a missing command is refused like an empty one.
    #[serde(default)]
    #[schema(required = true, value_type = String)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// An absolute path.
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    #[schema(inline)]
    pub resources: ResourcesBody,
    /// Processes per attempt, each with `resources`; more than one is a gang: all placed or none, and one
    /// that fails or is lost stops the others.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64, default = 1)]
    pub replicas: Option<u64>,
    #[serde(default)]
    #[schema(inline)]
    pub constraints: ConstraintsBody,
    #[serde(default)]
    #[schema(inline)]
    pub data_locality: Option<LocalityBody>,
    #[serde(default)]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub preemption: bool,
    #[serde(default)]
    pub preemptible: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<Strategy>)]
    pub strategy: Option<String>,
    #[serde(default)]
    #[schema(inline)]
    pub retry: RetryBody,
    /// Seconds an attempt may run before it is stopped (at most 365 days).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_536_000)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 3600)]
    pub cancel_grace_secs: Option<u64>,
    /// Environment variable name → project secret. Needs use-secrets; each secret must be bound to the
    /// submitting principal (`principal:ID`, or `principal:ID/job:PATTERN` matching the job's name).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Also pass the secrets as environment variables; by default they reach the job only as files readable
    /// by it.
    #[serde(default)]
    #[schema(default = false)]
    pub secrets_env: bool,
}

/// `resources` of a submission: `cpu` in cores (`0.5`, `"2"`, `"500m"`) or `cpu_millis`; `memory` as bytes
/// or a size (`"512Mi"`, `"2G"`) or `memory_bytes`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    #[serde(default)]
    #[schema(schema_with = cpu_schema)]
    pub cpu: Option<Value>,
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    #[serde(default)]
    #[schema(schema_with = memory_schema)]
    pub memory: Option<Value>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 64)]
    pub gpus: Option<u64>,
    #[serde(default)]
    pub gpu_model: Option<String>,
    #[serde(default)]
    pub gpu_min_memory_mib: Option<u64>,
}

/// The schema of `resources.cpu`, which is read as JSON and parsed by [`parse_cpu_millis`]: written by hand
/// because the field's type is any JSON value, of which only a number or a string is accepted.
fn cpu_schema() -> Schema {
    number_or_string(
        Type::Number,
        "CPU cores: a number (0.5) or a string (\"2\", \"500m\").",
    )
}

/// The schema of `resources.memory` (see [`cpu_schema`]; parsed by [`parse_byte_size`]).
fn memory_schema() -> Schema {
    number_or_string(
        Type::Integer,
        "Bytes, or a size such as \"512Mi\", \"2G\" or \"1GiB\".",
    )
}

fn number_or_string(number: Type, description: &str) -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(number))
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(description))
        .into()
}

/// `constraints` of a submission.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConstraintsBody {
    /// Only nodes of this region.
    #[serde(default)]
    pub region: Option<String>,
    /// Only nodes of a cluster with this name (in the constrained region, or any region).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Every label must be present on the node with exactly this value.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `data_locality` of a submission: where the job's data lives, a preference that never overrides
/// `constraints`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalityBody {
    pub region: String,
    #[serde(default)]
    pub cluster: Option<String>,
}

/// `retry` of a submission.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Attempts in all (preempted ones not counted); default 3.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 20)]
    pub max_attempts: Option<u64>,
    /// Also retry attempts that failed (non-zero exit, timeout, launch error); lost attempts are always
    /// retried while the budget allows.
    #[serde(default)]
    pub on_failure: bool,
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct JobListQuery {
    #[serde(default)]
    pub(crate) state: Option<String>,
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) page_size: Option<u64>,
    #[serde(default)]
    pub(crate) page_token: Option<String>,
}

/// Query of `GET /v1/usage`: Unix milliseconds or RFC 3339.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct UsageQuery {
    #[serde(default)]
    pub(crate) since: Option<String>,
    #[serde(default)]
    pub(crate) until: Option<String>,
}

// ---- responses --------------------------------------------------------------------------------------------

/// One attempt as callers see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = JobAttempt)]
pub struct AttemptView {
    pub attempt: u32,
    /// 0-based; a gang job's attempt has one entry per replica.
    pub replica: u32,
    pub node: String,
    pub region: String,
    pub cluster: String,
    pub gpu_uuids: Vec<String>,
    pub resources: Resources,
    pub scheduled_at: u64,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub outcome: Option<AttemptOutcome>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub cpu_time_ms: Option<u64>,
    pub max_rss_bytes: Option<u64>,
    pub detail: String,
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        AttemptView {
            attempt: a.attempt,
            replica: a.replica,
            node: a.node.clone(),
            region: a.region.clone(),
            cluster: a.cluster.clone(),
            gpu_uuids: a.gpu_uuids.clone(),
            resources: a.resources,
            scheduled_at: a.scheduled_at,
            started_at: a.started_at,
            ended_at: a.ended_at,
            outcome: a.outcome,
            exit_code: a.exit_code,
            signal: a.signal,
            cpu_time_ms: a.cpu_time_ms,
            max_rss_bytes: a.max_rss_bytes,
            detail: a.detail.clone(),
        }
    }
}

/// A job as callers see it: its spec, its state, where its current (or last) attempt is, and every attempt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Job)]
pub struct JobView {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub state: JobState,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub resources: ResourceRequest,
    pub replicas: u32,
    pub constraints: Constraints,
    pub data_locality: Option<Locality>,
    pub priority: i32,
    pub preemption: bool,
    pub preemptible: bool,
    pub strategy: Strategy,
    pub retry: RetryPolicy,
    pub timeout_secs: Option<u64>,
    pub cancel_grace_secs: u64,
    /// Environment variable → secret name (names only, never values).
    pub secrets: BTreeMap<String, String>,
    /// The secrets are also passed as environment variables (they always arrive as files).
    pub secrets_env: bool,
    /// Node key, region and cluster of the current or last attempt (its replica 0 for a gang).
    pub node: Option<String>,
    pub region: Option<String>,
    pub cluster: Option<String>,
    pub attempt_count: u32,
    pub attempts: Vec<AttemptView>,
    pub pending_reason: Option<String>,
    /// Set while the job is pending and no node of the fleet as registered could ever run it (too few
    /// GPUs anywhere, no node in its region, nodes too small...): it waits until the fleet changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsatisfiable: Option<String>,
    pub cancel_requested: bool,
    /// Exit code of the last attempt (of the replica that ended it, for a gang).
    pub exit_code: Option<i32>,
    pub created_by: String,
    /// The job's workload identity: the principal that submitted it (secrets are bound to principals).
    pub principal_id: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub finished_at: Option<u64>,
}

impl From<&JobRecord> for JobView {
    fn from(j: &JobRecord) -> Self {
        let last_no = j.attempt_count();
        let last = j
            .attempts
            .iter()
            .find(|a| a.attempt == last_no && a.replica == 0);
        let spec = &j.spec;
        JobView {
            id: j.id.clone(),
            project_id: j.project_id.clone(),
            name: spec.name.clone(),
            state: j.state,
            command: spec.command.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            working_dir: spec.working_dir.clone(),
            resources: spec.resources.clone(),
            replicas: spec.replicas,
            constraints: spec.constraints.clone(),
            data_locality: spec.data_locality.clone(),
            priority: spec.priority,
            preemption: spec.preemption,
            preemptible: spec.preemptible,
            strategy: spec.strategy,
            retry: spec.retry,
            timeout_secs: spec.timeout_secs,
            cancel_grace_secs: spec.cancel_grace_secs,
            secrets: spec.secrets.clone(),
            secrets_env: spec.secrets_env,
            node: last.map(|a| a.node.clone()),
            region: last.map(|a| a.region.clone()),
            cluster: last.map(|a| a.cluster.clone()),
            attempt_count: last_no,
            attempts: j.attempts.iter().map(AttemptView::from).collect(),
            pending_reason: j.pending_reason.clone(),
            // Needs the fleet: set by `plan::Judge`.
            unsatisfiable: None,
            cancel_requested: j.cancel_requested,
            exit_code: j
                .attempts
                .iter()
                .filter(|a| a.attempt == last_no)
                .find_map(|a| a.exit_code.filter(|code| *code != 0))
                .or_else(|| last.and_then(|a| a.exit_code)),
            created_by: j.created_by.clone(),
            principal_id: j.principal_id.clone(),
            created_at: j.created_at,
            updated_at: j.updated_at,
            finished_at: j.finished_at,
        }
    }
}

// ---- validation -------------------------------------------------------------------------------------------

fn invalid(field: &str, message: impl std::fmt::Display) -> ServiceError {
    ServiceError::invalid(field, message)
}

fn unit(field: &str) -> impl Fn(UnitError) -> ServiceError + '_ {
    move |e| invalid(field, e)
}

/// `[A-Za-z0-9_-]{1,64}`, the rule for region, cluster and node names.
fn validate_name_part(field: &str, v: &str) -> Result<(), ServiceError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, "must be 1-64 characters of [A-Za-z0-9_-]"))
    }
}

fn validate_env_name(name: &str) -> Result<(), ServiceError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 256
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(invalid(
            "env",
            format!("{name:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most 256 bytes)"),
        ));
    }
    if RESERVED_ENV.contains(&name) {
        return Err(invalid(
            "env",
            format!("{name} is set by Meridian from the GPUs assigned to the job"),
        ));
    }
    Ok(())
}

fn validate_label(key: &str, value: &str) -> Result<(), ServiceError> {
    let key_ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !key_ok {
        return Err(invalid(
            "constraints.labels",
            format!("{key:?} is not a label name (1-128 characters of [A-Za-z0-9._/-])"),
        ));
    }
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(invalid(
            "constraints.labels",
            format!("the value of {key} must be at most 256 bytes without control characters"),
        ));
    }
    Ok(())
}

fn cpu_millis(r: &ResourcesBody) -> Result<u64, ServiceError> {
    let millis = match (&r.cpu, r.cpu_millis) {
        (Some(_), Some(_)) => {
            return Err(invalid("resources.cpu", "give cpu or cpu_millis, not both"))
        }
        (None, None) => return Ok(0),
        (None, Some(m)) => (m, "resources.cpu_millis"),
        (Some(Value::Number(n)), None) => (
            parse_cpu_millis(&n.to_string()).map_err(unit("resources.cpu"))?,
            "resources.cpu",
        ),
        (Some(Value::String(s)), None) => (
            parse_cpu_millis(s).map_err(unit("resources.cpu"))?,
            "resources.cpu",
        ),
        (Some(_), None) => {
            return Err(invalid(
                "resources.cpu",
                "must be a number of cores (0.5) or a string (\"2\", \"500m\")",
            ))
        }
    };
    let (millis, field) = millis;
    if millis == 0 {
        return Err(invalid(field, "must be more than 0"));
    }
    if millis > MAX_CPU_MILLIS {
        return Err(invalid(
            field,
            format!("at most {} cores", MAX_CPU_MILLIS / 1000),
        ));
    }
    Ok(millis)
}

fn memory_bytes(r: &ResourcesBody) -> Result<u64, ServiceError> {
    let (bytes, field) = match (&r.memory, r.memory_bytes) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "resources.memory",
                "give memory or memory_bytes, not both",
            ))
        }
        (None, None) => return Ok(0),
        (None, Some(b)) => (b, "resources.memory_bytes"),
        (Some(Value::Number(n)), None) => match n.as_u64() {
            Some(b) => (b, "resources.memory"),
            None => {
                return Err(invalid(
                    "resources.memory",
                    "must be a whole number of bytes or a size such as \"512Mi\"",
                ))
            }
        },
        (Some(Value::String(s)), None) => (
            parse_byte_size(s).map_err(unit("resources.memory"))?,
            "resources.memory",
        ),
        (Some(_), None) => {
            return Err(invalid(
                "resources.memory",
                "must be a number of bytes or a size such as \"512Mi\", \"2G\" or \"1GiB\"",
            ))
        }
    };
    if bytes == 0 {
        return Err(invalid(field, "must be more than 0"));
    }
    Ok(bytes)
}

fn resources(r: &ResourcesBody) -> Result<ResourceRequest, ServiceError> {
    let cpu_millis = cpu_millis(r)?;
    let memory_bytes = memory_bytes(r)?;
    let gpus = r.gpus.unwrap_or(0);
    if gpus > MAX_GPUS {
        return Err(invalid("resources.gpus", format!("at most {MAX_GPUS}")));
    }
    let gpu_model = match r.gpu_model.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(m) if m.len() > 128 || m.chars().any(char::is_control) => {
            return Err(invalid(
                "resources.gpu_model",
                "at most 128 bytes without control characters",
            ))
        }
        Some(m) => Some(m.to_owned()),
    };
    if gpu_model.is_some() && gpus == 0 {
        return Err(invalid(
            "resources.gpu_model",
            "needs resources.gpus of at least 1",
        ));
    }
    if let Some(mib) = r.gpu_min_memory_mib {
        if gpus == 0 {
            return Err(invalid(
                "resources.gpu_min_memory_mib",
                "needs resources.gpus of at least 1",
            ));
        }
        if mib == 0 {
            return Err(invalid(
                "resources.gpu_min_memory_mib",
                "must be more than 0",
            ));
        }
    }
    Ok(ResourceRequest {
        cpu_millis,
        memory_bytes,
        // Bounded by MAX_GPUS above.
        gpus: u32::try_from(gpus).unwrap_or(u32::MAX),
        gpu_model,
        gpu_min_memory_mib: r.gpu_min_memory_mib,
    })
}

fn optional_name_part(field: &str, v: &Option<String>) -> Result<Option<String>, ServiceError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => validate_name_part(field, s).map(|()| Some(s.to_owned())),
    }
}

fn constraints(c: &ConstraintsBody) -> Result<Constraints, ServiceError> {
    if c.labels.len() > MAX_LABELS {
        return Err(invalid(
            "constraints.labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in &c.labels {
        validate_label(k, v)?;
    }
    Ok(Constraints {
        region: optional_name_part("constraints.region", &c.region)?,
        cluster: optional_name_part("constraints.cluster", &c.cluster)?,
        labels: c.labels.clone(),
    })
}

fn strategy(s: Option<&str>) -> Result<Strategy, ServiceError> {
    match s.map(str::trim) {
        None | Some("") => Ok(Strategy::default()),
        Some("bin_pack" | "binpack" | "bin-pack") => Ok(Strategy::BinPack),
        Some("spread") => Ok(Strategy::Spread),
        Some(other) => Err(invalid(
            "strategy",
            format!("{other:?} is not bin_pack or spread"),
        )),
    }
}

/// Turns a submission into the spec that enters the state, naming the first offending field.
pub(crate) fn job_spec(req: SubmitJobRequest) -> Result<JobSpec, ServiceError> {
    let command = req.command.unwrap_or_default();
    if command.trim().is_empty() {
        return Err(invalid("command", "required: the program to run"));
    }
    let mut spec = JobSpec::new(command);
    spec.name = req.name.unwrap_or_default();
    for name in req.env.keys() {
        validate_env_name(name)?;
    }
    if let Some(dir) = &req.working_dir {
        if !dir.starts_with('/') {
            return Err(invalid("working_dir", "must be an absolute path"));
        }
    }
    spec.args = req.args;
    spec.env = req.env;
    spec.working_dir = req.working_dir.filter(|d| !d.is_empty());
    spec.resources = resources(&req.resources)?;
    spec.replicas = match req.replicas {
        None => 1,
        Some(n) if (1..=u64::from(MAX_REPLICAS)).contains(&n) => {
            // Bounded by the check above.
            u32::try_from(n).unwrap_or(1)
        }
        Some(_) => {
            return Err(invalid(
                "replicas",
                format!("must be 1-{MAX_REPLICAS} (more than 1 runs a gang: all replicas or none)"),
            ))
        }
    };
    spec.constraints = constraints(&req.constraints)?;
    spec.data_locality = match req.data_locality {
        None => None,
        Some(l) => {
            validate_name_part("data_locality.region", &l.region)?;
            Some(Locality {
                region: l.region,
                cluster: optional_name_part("data_locality.cluster", &l.cluster)?,
            })
        }
    };
    let priority = req.priority.unwrap_or(0);
    if !PRIORITY_RANGE.contains(&priority) {
        return Err(invalid(
            "priority",
            format!(
                "must be between {} and {}",
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end()
            ),
        ));
    }
    // Bounded by PRIORITY_RANGE above.
    spec.priority = i32::try_from(priority).unwrap_or_default();
    spec.preemption = req.preemption;
    spec.preemptible = req.preemptible.unwrap_or(true);
    spec.strategy = strategy(req.strategy.as_deref())?;
    let max_attempts = req.retry.max_attempts.unwrap_or(3);
    if !(1..=20).contains(&max_attempts) {
        return Err(invalid("retry.max_attempts", "must be 1-20"));
    }
    spec.retry = RetryPolicy {
        // Bounded by the check above.
        max_attempts: u32::try_from(max_attempts).unwrap_or(3),
        on_failure: req.retry.on_failure,
    };
    spec.timeout_secs = match req.timeout_secs {
        None => None,
        Some(0) => {
            return Err(invalid(
                "timeout_secs",
                "must be positive (leave it out for no timeout)",
            ))
        }
        Some(s) if s > MAX_TIMEOUT_SECS => {
            return Err(invalid(
                "timeout_secs",
                format!("at most {MAX_TIMEOUT_SECS} (365 days)"),
            ))
        }
        Some(s) => Some(s),
    };
    if let Some(grace) = req.cancel_grace_secs {
        if grace > MAX_CANCEL_GRACE_SECS {
            return Err(invalid(
                "cancel_grace_secs",
                format!("at most {MAX_CANCEL_GRACE_SECS}"),
            ));
        }
        spec.cancel_grace_secs = grace;
    }
    spec.secrets = req.secrets.clone();
    if req.secrets_env && spec.secrets.is_empty() {
        return Err(invalid("secrets_env", "needs secrets to pass"));
    }
    spec.secrets_env = req.secrets_env;
    // The limits every replica enforces (sizes, NUL bytes): the same rule, checked before proposing.
    spec.validate()?;
    Ok(spec)
}

fn job_state(s: Option<&str>) -> Result<Option<JobState>, ServiceError> {
    match s.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => JobState::parse(t).map(Some).ok_or_else(|| {
            let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            invalid("state", format!("{t:?} is not one of {}", names.join(", ")))
        }),
    }
}

/// `(since, until)` of a usage query, defaulting to the 24 hours before now.
pub(crate) fn usage_range(q: &UsageQuery, now: u64) -> Result<(u64, u64), ServiceError> {
    let parse = |field: &'static str, v: &Option<String>| match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => parse_instant_ms(t).map(Some).map_err(unit(field)),
    };
    let until = parse("until", &q.until)?.unwrap_or(now);
    let since = parse("since", &q.since)?.unwrap_or(until.saturating_sub(DEFAULT_USAGE_WINDOW_MS));
    if since > until {
        return Err(invalid("since", "must not be after until"));
    }
    Ok((since, until))
}

// ---- the operations ---------------------------------------------------------------------------------------

impl AdminService {
    /// The project's job, or the owner project of a job hidden in another one (`None` when missing).
    fn find_job(&self, scope: &RequestScope, id: &str) -> Result<JobRecord, Option<String>> {
        self.handle().read(|s| match s.job(&scope.project_id, id) {
            Some(j) => Ok(j.clone()),
            None => Err(s.jobs.get(id).map(|j| j.project_id.clone())),
        })
    }

    /// Reads the job consistently; 404 (audited when it is another project's) otherwise.
    async fn scoped_job(&self, scope: &RequestScope, id: &str) -> Result<JobRecord, ServiceError> {
        self.consistent().await?;
        match self.find_job(scope, id) {
            Ok(job) => Ok(job),
            Err(owner) => Err(self.hidden(scope, "job", id, owner).await),
        }
    }

    pub(crate) async fn submit_job(
        &self,
        scope: &RequestScope,
        req: SubmitJobRequest,
    ) -> Result<JobView, ServiceError> {
        let spec = job_spec(req)?;
        if spec.preemption {
            let allowed = self.handle().read(|s| {
                crate::authz::authorize_caller(
                    s,
                    &scope.caller,
                    Some(&scope.project_id),
                    crate::authz::Action::PreemptJobs,
                )
            });
            if allowed.is_err() {
                self.record_denied(
                    &scope.caller,
                    scope.operation,
                    Some(scope.project_id.clone()),
                    &scope.project_id,
                    "roles do not grant preempt-jobs",
                )
                .await;
                return Err(ServiceError::forbidden(
                    "preemption: true needs preempt-jobs (project-admin); submit without it to wait for room",
                ));
            }
        }
        // Checked here too, so a client hammering a full quota costs reads, not replicated refusals;
        // `apply` checks again, so concurrent submissions cannot overshoot.
        self.handle()
            .read(|s| s.check_submit_quota(&scope.project_id, &spec))?;
        if !spec.secrets.is_empty() {
            // Naming secrets is a right of its own: running jobs (editor) does not include it.
            let allowed = self.handle().read(|s| {
                authz::authorize_caller(
                    s,
                    &scope.caller,
                    Some(&scope.project_id),
                    Action::UseSecrets,
                )
                .is_ok()
            });
            if !allowed {
                let why = "naming secrets in a job needs use-secrets (the secret-user or project-admin role)";
                return Err(self
                    .refuse(scope, Some(scope.project_id.clone()), "secrets", why)
                    .await);
            }
        }
        let op = Op::Jobs(JobOp::SubmitJob {
            id: crypto::random_id("job", &mut self.handle().rng()),
            project_id: scope.project_id.clone(),
            spec,
            // The job's workload identity: the secrets it names must be bound to this principal.
            principal_id: Some(scope.caller.principal_id.clone()),
        });
        match self.write(scope, op).await? {
            Outcome::Jobs(JobOutcome::Job { job }) => {
                Ok(self.handle().read(|s| plan::Judge::new(s).view(&job)))
            }
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn list_jobs(
        &self,
        scope: &RequestScope,
        query: &JobListQuery,
    ) -> Result<ListPage<JobView>, ServiceError> {
        let state = job_state(query.state.as_deref())?;
        let req = PageParams {
            page_size: query.page_size,
            page_token: query.page_token.clone(),
        }
        .request()?;
        self.consistent().await?;
        let page = self.handle().read(|s| {
            let judge = plan::Judge::new(s);
            s.job_page(&scope.project_id, state, &req)
                .map(|j| judge.view(&j))
        });
        Ok(page.into())
    }

    pub(crate) async fn get_job(
        &self,
        scope: &RequestScope,
        id: &str,
    ) -> Result<JobView, ServiceError> {
        let job = self.scoped_job(scope, id).await?;
        Ok(self.handle().read(|s| plan::Judge::new(s).view(&job)))
    }

    pub(crate) async fn cancel_job(
        &self,
        scope: &RequestScope,
        id: &str,
    ) -> Result<JobView, ServiceError> {
        let job = self.scoped_job(scope, id).await?;
        if job.state.is_terminal() {
            return Err(ServiceError::conflict(format!(
                "job {id} already ended ({}); there is nothing to cancel",
                job.state.as_str()
            )));
        }
        let op = Op::Jobs(JobOp::CancelJob {
            project_id: scope.project_id.clone(),
            id: id.to_owned(),
        });
        match self.write(scope, op).await {
            Ok(Outcome::Jobs(JobOutcome::Job { job })) => Ok(JobView::from(&job)),
            Ok(other) => Err(unexpected(other)),
            // It finished between our read and the commit.
            Err(e) if e.kind == ErrorKind::FailedPrecondition => {
                Err(ServiceError::conflict(e.message))
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn usage(
        &self,
        scope: &RequestScope,
        query: &UsageQuery,
    ) -> Result<UsageReport, ServiceError> {
        let (since, until) = usage_range(query, self.handle().now_ms())?;
        self.consistent().await?;
        Ok(self
            .handle()
            .read(|s| s.usage(&scope.project_id, since, until)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> SubmitJobRequest {
        super::super::extract::parse_json(v.to_string().as_bytes()).expect("valid shape")
    }

    fn field_of(v: serde_json::Value) -> String {
        let e = job_spec(body(v)).expect_err("invalid");
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        e.message.split(':').next().unwrap_or_default().to_owned()
    }

    /// The bounds the OpenAPI schema states (written as literals, which is all `#[schema(minimum, maximum)]`
    /// takes) are exactly the ones a submission is held to: each bound is accepted, one step past it refused.
    #[test]
    fn the_openapi_bounds_of_a_submission_are_the_ones_enforced() {
        let schema = serde_json::to_value(<SubmitJobRequest as utoipa::PartialSchema>::schema())
            .expect("schema");
        let fields: [&[&str]; 6] = [
            &["replicas"],
            &["priority"],
            &["timeout_secs"],
            &["cancel_grace_secs"],
            &["resources", "gpus"],
            &["retry", "max_attempts"],
        ];
        for path in fields {
            let at = path
                .iter()
                .map(|p| format!("/properties/{p}"))
                .collect::<String>();
            for (key, step) in [("minimum", -1), ("maximum", 1)] {
                let bound = schema
                    .pointer(&format!("{at}/{key}"))
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or_else(|| panic!("{} has no {key}", path.join(".")));
                for (value, accepted) in [(bound, true), (bound + step, false)] {
                    let mut req = serde_json::json!({ "command": "x" });
                    let mut slot = &mut req;
                    for p in &path[..path.len() - 1] {
                        slot = &mut slot[*p];
                    }
                    slot[path[path.len() - 1]] = serde_json::json!(value);
                    let ok = super::super::extract::parse_json::<SubmitJobRequest>(
                        req.to_string().as_bytes(),
                    )
                    .is_ok_and(|r| job_spec(r).is_ok());
                    assert_eq!(ok, accepted, "{} = {value}", path.join("."));
                }
            }
        }
        // The policy update's ceiling, checked by `SetPolicyRequest::update`.
        let policy = serde_json::to_value(
            <super::super::tenancy::SetPolicyRequest as utoipa::PartialSchema>::schema(),
        )
        .expect("schema");
        assert_eq!(
            policy.pointer("/properties/preemption_ceiling/maximum"),
            Some(&serde_json::json!(crate::state::MAX_PREEMPTION_CEILING))
        );
    }

    #[test]
    fn secrets_reach_the_environment_only_when_asked() {
        let files = job_spec(body(serde_json::json!({
            "command": "true", "secrets": {"TOKEN": "api-token"}
        })))
        .expect("valid");
        assert!(!files.secrets_env, "files only by default");
        let env = job_spec(body(serde_json::json!({
            "command": "true", "secrets": {"TOKEN": "api-token"}, "secrets_env": true
        })))
        .expect("valid");
        assert!(env.secrets_env);
        assert_eq!(
            field_of(serde_json::json!({"command": "true", "secrets_env": true})),
            "secrets_env"
        );
        // Older specs (no field) read as files only, and a spec without it serializes as before.
        let old: JobSpec = serde_json::from_str(r#"{"command":"true"}"#).expect("old spec");
        assert!(!old.secrets_env);
        assert!(!serde_json::to_string(&old)
            .expect("serializes")
            .contains("secrets_env"));
    }

    #[test]
    fn a_full_submission_becomes_its_spec() {
        let spec = job_spec(body(serde_json::json!({
            "name": "train",
            "command": "python3",
            "args": ["train.py", "--epochs", "3"],
            "env": {"SEED": "1"},
            "working_dir": "/data",
            "resources": {"cpu": 0.5, "memory": "512Mi", "gpus": 2, "gpu_model": "H200",
                          "gpu_min_memory_mib": 40000},
            "constraints": {"region": "eu", "cluster": "eu1", "labels": {"zone": "a"}},
            "data_locality": {"region": "eu"},
            "priority": 10,
            "preemption": true,
            "strategy": "spread",
            "retry": {"max_attempts": 5, "on_failure": true},
            "timeout_secs": 300,
            "cancel_grace_secs": 2,
        })))
        .expect("valid");
        assert_eq!(spec.command, "python3");
        assert_eq!(spec.args, ["train.py", "--epochs", "3"]);
        assert_eq!(spec.resources.cpu_millis, 500);
        assert_eq!(spec.resources.memory_bytes, 512 << 20);
        assert_eq!(spec.resources.gpus, 2);
        assert_eq!(spec.resources.gpu_model.as_deref(), Some("H200"));
        assert_eq!(spec.constraints.region.as_deref(), Some("eu"));
        assert_eq!(
            spec.constraints.labels.get("zone").map(String::as_str),
            Some("a")
        );
        assert_eq!(spec.priority, 10);
        assert_eq!(spec.strategy, Strategy::Spread);
        assert_eq!(spec.retry.max_attempts, 5);
        assert!(spec.retry.on_failure);
        assert_eq!(spec.timeout_secs, Some(300));
        assert_eq!(spec.cancel_grace_secs, 2);

        let minimal = job_spec(body(serde_json::json!({"command": "true"}))).expect("valid");
        assert_eq!(minimal.resources, ResourceRequest::default());
        assert_eq!(minimal.retry.max_attempts, 3);
        assert!(minimal.preemptible);
        assert_eq!(minimal.cancel_grace_secs, 10);
        let cores = job_spec(body(
            serde_json::json!({"command": "x", "resources": {"cpu": "250m", "memory": 1024}}),
        ))
        .expect("valid");
        assert_eq!(
            (cores.resources.cpu_millis, cores.resources.memory_bytes),
            (250, 1024)
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        use serde_json::json;
        let cases = [
            (json!({}), "command"),
            (json!({"command": "  "}), "command"),
            (json!({"command": "a\u{0}b"}), "command"),
            (
                json!({"command": "x", "resources": {"cpu": 0}}),
                "resources.cpu",
            ),
            (
                json!({"command": "x", "resources": {"cpu": -1}}),
                "resources.cpu",
            ),
            (
                json!({"command": "x", "resources": {"cpu": "lots"}}),
                "resources.cpu",
            ),
            (
                json!({"command": "x", "resources": {"cpu": 1, "cpu_millis": 5}}),
                "resources.cpu",
            ),
            (
                json!({"command": "x", "resources": {"memory": "12X"}}),
                "resources.memory",
            ),
            (
                json!({"command": "x", "resources": {"memory": 1.5}}),
                "resources.memory",
            ),
            (
                json!({"command": "x", "resources": {"gpus": 65}}),
                "resources.gpus",
            ),
            (
                json!({"command": "x", "resources": {"gpu_model": "H200"}}),
                "resources.gpu_model",
            ),
            (json!({"command": "x", "env": {"1X": "v"}}), "env"),
            (json!({"command": "x", "env": {"A=B": "v"}}), "env"),
            (
                json!({"command": "x", "env": {"CUDA_VISIBLE_DEVICES": "0"}}),
                "env",
            ),
            (
                json!({"command": "x", "working_dir": "rel/dir"}),
                "working_dir",
            ),
            (json!({"command": "x", "timeout_secs": 0}), "timeout_secs"),
            (
                json!({"command": "x", "retry": {"max_attempts": 0}}),
                "retry.max_attempts",
            ),
            (
                json!({"command": "x", "retry": {"max_attempts": 21}}),
                "retry.max_attempts",
            ),
            (json!({"command": "x", "priority": 1001}), "priority"),
            (json!({"command": "x", "strategy": "random"}), "strategy"),
            (
                json!({"command": "x", "constraints": {"region": "e u"}}),
                "constraints.region",
            ),
            (
                json!({"command": "x", "constraints": {"labels": {"": "v"}}}),
                "constraints.labels",
            ),
            (
                json!({"command": "x", "cancel_grace_secs": 7200}),
                "cancel_grace_secs",
            ),
            (json!({"command": "x", "name": "a\nb"}), "name"),
            (json!({"command": "x", "replicas": 0}), "replicas"),
            (json!({"command": "x", "replicas": 65}), "replicas"),
        ];
        for (input, field) in cases {
            assert_eq!(field_of(input.clone()), field, "{input}");
        }
    }

    #[test]
    fn usage_ranges_default_to_a_day_and_must_be_ordered() {
        let now = 1_700_000_000_000;
        let q = |since: Option<&str>, until: Option<&str>| UsageQuery {
            since: since.map(str::to_owned),
            until: until.map(str::to_owned),
        };
        assert_eq!(
            usage_range(&q(None, None), now),
            Ok((now - 86_400_000, now))
        );
        assert_eq!(
            usage_range(&q(Some("2023-11-14T00:00:00Z"), Some("1700000000000")), now),
            Ok((1_699_920_000_000, now))
        );
        let e = usage_range(&q(Some("tomorrow"), None), now).expect_err("bad");
        assert!(e.message.starts_with("since: "), "{}", e.message);
        let e = usage_range(&q(Some("20"), Some("10")), now).expect_err("reversed");
        assert!(e.message.starts_with("since: "), "{}", e.message);
    }

    #[test]
    fn states_parse_or_name_the_field() {
        assert_eq!(job_state(Some("Pending")), Ok(Some(JobState::Pending)));
        assert_eq!(job_state(Some("")), Ok(None));
        assert!(job_state(Some("done")).is_err_and(|e| e.message.starts_with("state: ")));
    }
}
