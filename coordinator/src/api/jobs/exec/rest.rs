//! The REST face of entering a running job: `POST /v1/jobs/{id}:exec` (a command's exit status and
//! output as JSON) and `GET /v1/jobs/{id}/files?path=P` (the file's bytes, streamed as
//! `application/octet-stream` with its length and `X-Meridian-File-Mode`), and their route rows.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use http::{header, HeaderValue};

use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::api::openapi::schema;
use crate::api::rest::{Answer, Scoped};
use crate::api::routes::{endpoint, ok, op, HttpMethod, Reply, Route};
use crate::api::service::AdminService;

use super::{CopyQuery, ExecJobRequest, ExecJobView, JobDirView};

/// The header naming a copied file's permission bits, in octal.
pub(crate) const FILE_MODE_HEADER: &str = "x-meridian-file-mode";

const COPY_QUERY: &[(&str, &str)] = &[
    (
        "path",
        "The file, relative to the job's working directory (no `..`, no symbolic links).",
    ),
    ("replica", "Replica of a gang job, 0-based (default 0)."),
];

/// A file's bytes.
const FILE: Reply = Reply {
    status: 200,
    schema: None,
    media: "application/octet-stream",
};

/// The routes into and out of a running job.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Post,
        path: "/v1/jobs/{id}:exec",
        op: &op::JOB_EXEC,
        summary: "Run a command inside a running job's sandbox (its user, namespaces, cgroup and working directory); answers its exit status and output",
        request: Some(schema::<ExecJobRequest>),
        query: &[],
        reply: ok(schema::<ExecJobView>),
        endpoint: endpoint!(exec_job),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/jobs/{id}/files",
        op: &op::JOB_COPY,
        summary: "Copy a regular file out of a running job's working directory, read with the job's rights",
        request: None,
        query: COPY_QUERY,
        reply: FILE,
        endpoint: endpoint!(copy_from_job),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/jobs/{id}/dir",
        op: &op::JOB_LIST_DIR,
        summary: "List a directory of a running job's working directory (empty path: the directory itself), read with the job's rights; links are named, never followed",
        request: None,
        query: COPY_QUERY,
        reply: ok(schema::<JobDirView>),
        endpoint: endpoint!(list_job_dir),
    },
];

async fn list_job_dir(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CopyQuery>,
) -> Answer<JobDirView> {
    service.list_job_dir(&scope, &id, &query).await.map(Json)
}

async fn exec_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExecJobRequest>,
) -> Answer<ExecJobView> {
    service.exec_job(&scope, &id, req).await.map(Json)
}

async fn copy_from_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CopyQuery>,
) -> Response {
    let download = match service.copy_from_job(&scope, &id, &query).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    // A piece that fails mid-way aborts the body: with the length announced, the client sees it short.
    let body = Body::from_stream(
        download
            .chunks
            .map_err(|e| std::io::Error::other(e.message)),
    );
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(download.size));
    if let Ok(mode) = HeaderValue::from_str(&format!("{:o}", download.mode)) {
        headers.insert(FILE_MODE_HEADER, mode);
    }
    resp
}
