//! Jobs' and usage's REST face: the handlers of `/v1/jobs` (submit, list, get, cancel, logs) and
//! `/v1/usage`, and their rows of the route table.

use axum::extract::State;
use axum::Json;

use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::api::openapi::schema;
use crate::api::rest::{created_json, Answer, Created, Scoped};
use crate::api::routes::{created, endpoint, ok, op, HttpMethod, Route};
use crate::api::service::{AdminService, ListPage};
use crate::state::UsageReport;

use super::{
    JobListQuery, JobLogsView, JobPlanView, JobView, LogsQuery, SubmitJobRequest, UsageQuery,
};

const JOB_LIST_QUERY: &[(&str, &str)] = &[
    (
        "state",
        "Only jobs in this state (pending, scheduled, running, succeeded, failed, cancelled, lost).",
    ),
    ("page_size", "Items per page (default 100, at most 1000)."),
    ("page_token", "The next_page_token of the previous page."),
];
const JOB_LOGS_QUERY: &[(&str, &str)] = &[
    (
        "stream",
        "all (default: both streams merged in the order the agent read them), stdout or stderr.",
    ),
    (
        "offset",
        "Logical offset to read from (the next_offset of the previous read; default 0).",
    ),
    (
        "max_bytes",
        "Most bytes to return (default 65536, at most 1048576).",
    ),
    (
        "attempt",
        "Attempt number (default: the last attempt that was placed on a node).",
    ),
    ("replica", "Replica of a gang job, 0-based (default 0)."),
    (
        "since",
        "Only output written at or after this time: Unix milliseconds or RFC 3339.",
    ),
    (
        "tail",
        "Start at the last N lines (of what stream and since select) instead of at offset.",
    ),
    (
        "records",
        "true: answer in records with their times, offsets counting the output index, also for stdout or stderr (implied by stream=all, since and tail).",
    ),
];
const USAGE_QUERY: &[(&str, &str)] = &[
    (
        "since",
        "Start of the range: Unix milliseconds or RFC 3339 (default: 24 hours before until).",
    ),
    (
        "until",
        "End of the range: Unix milliseconds or RFC 3339 (default: now).",
    ),
];

/// Jobs' and usage's REST routes.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Post,
        path: "/v1/jobs",
        op: &op::JOB_SUBMIT,
        summary: "Submit a job to the project; it starts pending until the scheduler places it",
        request: Some(schema::<SubmitJobRequest>),
        query: &[],
        reply: created(schema::<JobView>),
        endpoint: endpoint!(submit_job),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/jobs",
        op: &op::JOB_LIST,
        summary: "List the project's jobs in id order, optionally in one state",
        request: None,
        query: JOB_LIST_QUERY,
        reply: ok(schema::<ListPage<JobView>>),
        endpoint: endpoint!(list_jobs),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/jobs/{id}",
        op: &op::JOB_GET,
        summary: "Get a job: state, where it runs, every attempt and why it is still pending",
        request: None,
        query: &[],
        reply: ok(schema::<JobView>),
        endpoint: endpoint!(get_job),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/jobs/{id}:cancel",
        op: &op::JOB_CANCEL,
        summary: "Cancel a job: a pending one at once, a running one by stopping it on its node",
        request: None,
        query: &[],
        reply: ok(schema::<JobView>),
        endpoint: endpoint!(cancel_job),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/jobs/{id}/logs",
        op: &op::JOB_LOGS,
        summary: "Read a job attempt's output from the agent that ran it: merged, or stdout or stderr, from an offset, a time or the last lines",
        request: None,
        query: JOB_LOGS_QUERY,
        reply: ok(schema::<JobLogsView>),
        endpoint: endpoint!(job_logs),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/jobs:plan",
        op: &op::JOB_PLAN,
        summary:
            "A dry run of a submission: where the job would land now, or why it would wait and \
                  whether any node could ever run it; nothing is submitted or reserved",
        request: Some(schema::<SubmitJobRequest>),
        query: &[],
        reply: ok(schema::<JobPlanView>),
        endpoint: endpoint!(plan_job),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/usage",
        op: &op::USAGE_GET,
        summary: "The project's reserved CPU-, memory- and GPU-seconds per job over a time range",
        request: None,
        query: USAGE_QUERY,
        reply: ok(schema::<UsageReport>),
        endpoint: endpoint!(usage),
    },
];

async fn submit_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<SubmitJobRequest>,
) -> Created<JobView> {
    service.submit_job(&scope, req).await.map(created_json)
}

async fn plan_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiJson(req): ApiJson<SubmitJobRequest>,
) -> Answer<JobPlanView> {
    service.plan_job(&scope, req).await.map(Json)
}

async fn list_jobs(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(query): ApiQuery<JobListQuery>,
) -> Answer<ListPage<JobView>> {
    service.list_jobs(&scope, &query).await.map(Json)
}

async fn get_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Answer<JobView> {
    service.get_job(&scope, &id).await.map(Json)
}

async fn cancel_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
) -> Answer<JobView> {
    service.cancel_job(&scope, &id).await.map(Json)
}

async fn job_logs(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Answer<JobLogsView> {
    service
        .read_job_logs(&scope, &id, &query)
        .await
        .map(|chunk| Json(JobLogsView::from(chunk)))
}

async fn usage(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Answer<UsageReport> {
    service.usage(&scope, &query).await.map(Json)
}
