//! The admin API's job and usage operations, shared by REST and gRPC: submitting (validation of every field,
//! then an `Op::SubmitJob` prepared with a fresh id), listing, reading and cancelling a project's jobs,
//! reading an attempt's output from the agent that ran it, and the project's usage over a time range. The
//! submission's checks are in `validate.rs`, the REST handlers and route rows in `rest.rs`, the gRPC
//! adapters, converters and method rows in `grpc.rs`.
//!
//! Reads go through the project-scoped accessors: another project's job answers exactly like a missing one
//! and the attempt is audited. Asking for preemption needs `preempt-jobs` besides `run-jobs`. Must never decide a job's state itself (that is `apply`'s), never hold a
//! connection to an agent beyond one log read, and never return another project's job or output.

pub(super) mod exec;
pub(super) mod grpc;
mod logs;
mod plan;
pub(super) mod rest;
mod validate;

pub(crate) use logs::LogsQuery;
pub use logs::{JobLogRecordView, JobLogsView, LogCursor, LogStream};
pub use plan::{JobPlanView, PlannedReplica};
use validate::*;
pub(crate) use validate::{job_spec, usage_range};

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
