//! Jobs' and usage's gRPC face: `JobService` and `UsageService` as thin adapters over the same operations as
//! REST, their rows of the gRPC method table, and the converters of their messages (each destructures what
//! it converts, see `grpc/mod.rs`).

use protocol::pb;
use tonic::service::RoutesBuilder;
use tonic::Request;

use crate::api::grpc::{answer, list, non_empty, scope_of, GrpcAdmin, GrpcResult};
use crate::api::routes::{grpc, op, GrpcMethod};
use crate::scheduler::{Constraints, Locality, ResourceRequest, Resources};
use crate::state::{JobUsage, RetryPolicy, UsageFigures, UsageReport};

use super::{
    AttemptView, ConstraintsBody, JobListQuery, JobPlanView, JobView, LocalityBody, LogsQuery,
    PlannedReplica, ResourcesBody, RetryBody, SubmitJobRequest, UsageQuery,
};

/// Jobs' and usage's gRPC methods.
pub(crate) static METHODS: &[GrpcMethod] = &[
    grpc("/meridian.v1.JobService/SubmitJob", &op::JOB_SUBMIT),
    grpc("/meridian.v1.JobService/GetJob", &op::JOB_GET),
    grpc("/meridian.v1.JobService/ListJobs", &op::JOB_LIST),
    grpc("/meridian.v1.JobService/CancelJob", &op::JOB_CANCEL),
    grpc("/meridian.v1.JobService/ReadJobLogs", &op::JOB_LOGS),
    grpc("/meridian.v1.JobService/PlanJob", &op::JOB_PLAN),
    grpc("/meridian.v1.UsageService/GetUsage", &op::USAGE_GET),
];

/// Adds this domain's services, decoding messages up to `max_message_bytes`.
pub(crate) fn services(routes: &mut RoutesBuilder, admin: &GrpcAdmin, max_message_bytes: usize) {
    use pb::job_service_server::JobServiceServer;
    use pb::usage_service_server::UsageServiceServer;
    let n = max_message_bytes;
    routes
        .add_service(JobServiceServer::new(admin.clone()).max_decoding_message_size(n))
        .add_service(UsageServiceServer::new(admin.clone()).max_decoding_message_size(n));
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for GrpcAdmin {
    async fn submit_job(&self, request: Request<pb::SubmitJobRequest>) -> GrpcResult<pb::Job> {
        let scope = scope_of(&request)?;
        let req = submission(request.into_inner());
        answer(self.service.submit_job(&scope, req).await, job)
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> GrpcResult<pb::Job> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.get_job(&scope, &r.id).await, job)
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> GrpcResult<pb::ListJobsResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let query = JobListQuery {
            state: non_empty(r.state),
            page_size: (r.page_size > 0).then_some(u64::from(r.page_size)),
            page_token: non_empty(r.page_token),
        };
        answer(self.service.list_jobs(&scope, &query).await, |p| {
            let (items, next_page_token) = list(p, job);
            pb::ListJobsResponse {
                items,
                next_page_token,
            }
        })
    }

    async fn plan_job(&self, request: Request<pb::SubmitJobRequest>) -> GrpcResult<pb::JobPlan> {
        let scope = scope_of(&request)?;
        let req = submission(request.into_inner());
        answer(self.service.plan_job(&scope, req).await, job_plan)
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> GrpcResult<pb::Job> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        answer(self.service.cancel_job(&scope, &r.id).await, job)
    }

    async fn read_job_logs(
        &self,
        request: Request<pb::ReadJobLogsRequest>,
    ) -> GrpcResult<pb::ReadJobLogsResponse> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let query = LogsQuery {
            stream: non_empty(r.stream),
            offset: Some(r.offset),
            max_bytes: (r.max_bytes > 0).then_some(u64::from(r.max_bytes)),
            attempt: (r.attempt > 0).then_some(u64::from(r.attempt)),
            replica: Some(u64::from(r.replica)),
            since: non_empty(r.since),
            tail: r.tail.map(u64::from),
            records: r.records.then(|| "true".to_owned()),
        };
        answer(
            self.service.read_job_logs(&scope, &r.id, &query).await,
            super::logs::grpc_reply,
        )
    }
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for GrpcAdmin {
    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> GrpcResult<pb::UsageReport> {
        let scope = scope_of(&request)?;
        let r = request.into_inner();
        let query = UsageQuery {
            since: non_empty(r.since),
            until: non_empty(r.until),
        };
        answer(self.service.usage(&scope, &query).await, usage_report)
    }
}

// ---- converters ----

fn attempt(a: AttemptView) -> pb::JobAttempt {
    let AttemptView {
        attempt,
        replica,
        node,
        region,
        cluster,
        gpu_uuids,
        resources,
        scheduled_at,
        started_at,
        ended_at,
        outcome,
        exit_code,
        signal,
        cpu_time_ms,
        max_rss_bytes,
        detail,
    } = a;
    pb::JobAttempt {
        attempt,
        replica,
        node,
        region,
        cluster,
        gpu_uuids,
        scheduled_at,
        started_at,
        ended_at,
        outcome: outcome.map_or("", |o| o.as_str()).to_owned(),
        exit_code,
        signal,
        detail,
        cpu_time_ms,
        max_rss_bytes,
        resources: Some(reserved(resources)),
    }
}

fn job(j: JobView) -> pb::Job {
    let JobView {
        id,
        project_id,
        name,
        state,
        command,
        args,
        env,
        working_dir,
        resources,
        replicas,
        constraints,
        data_locality,
        priority,
        preemption,
        preemptible,
        strategy,
        retry,
        timeout_secs,
        cancel_grace_secs,
        secrets,
        secrets_env,
        node,
        region,
        cluster,
        attempt_count,
        attempts,
        pending_reason,
        unsatisfiable,
        cancel_requested,
        exit_code,
        created_by,
        principal_id,
        created_at,
        updated_at,
        finished_at,
    } = j;
    let strategy = match serde_json::to_value(strategy) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    };
    let (locality_region, locality_cluster) = match data_locality {
        Some(Locality { region, cluster }) => (region, cluster.unwrap_or_default()),
        None => (String::new(), String::new()),
    };
    let ResourceRequest {
        cpu_millis,
        memory_bytes,
        gpus,
        gpu_model,
        gpu_min_memory_mib,
    } = resources;
    let Constraints {
        region: constraint_region,
        cluster: constraint_cluster,
        labels,
    } = constraints;
    let RetryPolicy {
        max_attempts,
        on_failure,
    } = retry;
    pb::Job {
        id,
        project_id,
        name,
        state: state.as_str().to_owned(),
        command,
        args,
        env: env.into_iter().collect(),
        working_dir: working_dir.unwrap_or_default(),
        resources: Some(pb::JobResources {
            cpu_millis,
            memory_bytes,
            gpus,
            gpu_model: gpu_model.unwrap_or_default(),
            gpu_min_memory_mib,
        }),
        constraints: Some(pb::JobConstraints {
            region: constraint_region.unwrap_or_default(),
            cluster: constraint_cluster.unwrap_or_default(),
            labels: labels.into_iter().collect(),
        }),
        priority,
        retry: Some(pb::JobRetry {
            max_attempts,
            on_failure,
        }),
        timeout_secs,
        node: node.unwrap_or_default(),
        region: region.unwrap_or_default(),
        cluster: cluster.unwrap_or_default(),
        attempt_count,
        attempts: attempts.into_iter().map(attempt).collect(),
        pending_reason: pending_reason.unwrap_or_default(),
        cancel_requested,
        exit_code,
        created_by,
        created_at,
        updated_at,
        finished_at,
        preemption,
        preemptible,
        strategy,
        cancel_grace_secs,
        secrets: secrets.into_iter().collect(),
        data_locality_region: locality_region,
        data_locality_cluster: locality_cluster,
        replicas,
        principal_id: principal_id.unwrap_or_default(),
        secrets_env,
        unsatisfiable,
    }
}

fn job_plan(p: JobPlanView) -> pb::JobPlan {
    let JobPlanView {
        placeable,
        replicas,
        preempts,
        pending_reason,
        unsatisfiable,
        queue_ahead,
    } = p;
    pb::JobPlan {
        placeable,
        replicas: replicas.into_iter().map(planned_replica).collect(),
        preempts,
        pending_reason,
        unsatisfiable,
        queue_ahead,
    }
}

fn planned_replica(r: PlannedReplica) -> pb::PlannedReplica {
    let PlannedReplica {
        replica,
        node,
        region,
        cluster,
        gpu_uuids,
        resources,
    } = r;
    pb::PlannedReplica {
        replica,
        node,
        region,
        cluster,
        gpu_uuids,
        resources: Some(reserved(resources)),
    }
}

fn reserved(r: Resources) -> pb::ReservedResources {
    let Resources {
        cpu_millis,
        memory_bytes,
        gpus,
    } = r;
    pb::ReservedResources {
        cpu_millis,
        memory_bytes,
        gpus,
    }
}

/// A gRPC submission in the REST body's terms; proto3 zero values mean "not given".
fn submission(r: pb::SubmitJobRequest) -> SubmitJobRequest {
    let pb::SubmitJobRequest {
        name,
        command,
        args,
        env,
        working_dir,
        resources,
        constraints,
        priority,
        retry,
        timeout_secs,
        preemption,
        preemptible,
        strategy,
        cancel_grace_secs,
        data_locality_region,
        data_locality_cluster,
        secrets,
        replicas,
        secrets_env,
    } = r;
    let pb::JobResources {
        cpu_millis,
        memory_bytes,
        gpus,
        gpu_model,
        gpu_min_memory_mib,
    } = resources.unwrap_or_default();
    let pb::JobConstraints {
        region,
        cluster,
        labels,
    } = constraints.unwrap_or_default();
    let pb::JobRetry {
        max_attempts,
        on_failure,
    } = retry.unwrap_or_default();
    SubmitJobRequest {
        name: non_empty(name),
        command: Some(command),
        args,
        env: env.into_iter().collect(),
        working_dir: non_empty(working_dir),
        resources: ResourcesBody {
            cpu: None,
            cpu_millis: (cpu_millis > 0).then_some(cpu_millis),
            memory: None,
            memory_bytes: (memory_bytes > 0).then_some(memory_bytes),
            gpus: (gpus > 0).then_some(u64::from(gpus)),
            gpu_model: non_empty(gpu_model),
            gpu_min_memory_mib,
        },
        constraints: ConstraintsBody {
            region: non_empty(region),
            cluster: non_empty(cluster),
            labels: labels.into_iter().collect(),
        },
        data_locality: non_empty(data_locality_region).map(|region| LocalityBody {
            region,
            cluster: non_empty(data_locality_cluster),
        }),
        priority: Some(i64::from(priority)),
        preemption,
        preemptible,
        strategy: non_empty(strategy),
        retry: RetryBody {
            max_attempts: (max_attempts > 0).then_some(u64::from(max_attempts)),
            on_failure,
        },
        timeout_secs: (timeout_secs > 0).then_some(timeout_secs),
        cancel_grace_secs,
        secrets: secrets.into_iter().collect(),
        secrets_env,
        replicas: (replicas > 0).then_some(u64::from(replicas)),
    }
}

fn usage_figures(f: UsageFigures) -> pb::UsageFigures {
    let UsageFigures {
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
    } = f;
    pb::UsageFigures {
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
    }
}

fn usage_report(u: UsageReport) -> pb::UsageReport {
    let UsageReport {
        project_id,
        since,
        until,
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
        archived,
        jobs,
    } = u;
    pb::UsageReport {
        project_id,
        since,
        until,
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
        archived: Some(usage_figures(archived)),
        jobs: jobs
            .into_iter()
            .map(|j| {
                let JobUsage {
                    job_id,
                    name,
                    cpu_core_seconds,
                    memory_gib_seconds,
                    gpu_seconds,
                    cpu_time_seconds,
                } = j;
                pb::JobUsage {
                    job_id,
                    name,
                    cpu_core_seconds,
                    memory_gib_seconds,
                    gpu_seconds,
                    cpu_time_seconds,
                }
            })
            .collect(),
    }
}
