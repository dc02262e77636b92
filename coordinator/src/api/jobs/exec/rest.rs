//! The REST face of entering a running job: `POST /v1/jobs/{id}:exec` (a command's exit status and
//! output as JSON), `GET /v1/jobs/{id}/files?path=P` (the file's bytes, streamed as
//! `application/octet-stream` with its length and `X-Meridian-File-Mode`), `GET /v1/jobs/{id}/dir`, and
//! `GET /v1/jobs/{id}:attach` (an interactive terminal session as a WebSocket: every check, the audit
//! record and the agent's acceptance happen before the upgrade is answered, so a refusal is an ordinary
//! JSON error), and their route rows.

use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{SinkExt, StreamExt, TryStreamExt};
use http::{header, HeaderValue};

use crate::api::error::ServiceError;
use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::api::openapi::schema;
use crate::api::rest::{Answer, Scoped};
use crate::api::routes::{endpoint, ok, op, HttpMethod, Reply, Route};
use crate::api::service::AdminService;

use super::attach::{
    caller_channels, AttachJobRequest, CallerSide, TerminalRelay, ATTACH_QUERY, TERMINAL_PROTOCOL,
};
use super::terminal_frames::{TerminalClientFrame, TerminalServerFrame, MAX_INPUT_FRAME};
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

/// A WebSocket accepted: the session's frames follow on the connection.
const SWITCHING: Reply = Reply {
    status: 101,
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
    Route {
        method: HttpMethod::Get,
        path: "/v1/jobs/{id}:attach",
        op: &op::JOB_ATTACH,
        summary: "Open an interactive terminal session inside a running job's sandbox: a WebSocket (subprotocol meridian.terminal.v1) whose binary messages are 0x00+input or 0x01+cols,rows (u16 BE) from the caller, and 0x10+output or, last, 0x11+TerminalEnd JSON to it",
        request: None,
        query: ATTACH_QUERY,
        reply: SWITCHING,
        endpoint: endpoint!(attach_job),
    },
];

async fn attach_job(
    State(service): State<AdminService>,
    Scoped(scope): Scoped,
    ApiPath(id): ApiPath<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return ServiceError::invalid(
            "upgrade",
            "a terminal session is a WebSocket: send `Connection: upgrade` and `Upgrade: websocket` over HTTP/1.1",
        )
        .into_response();
    };
    let opened = match AttachJobRequest::from_query(query.as_deref().unwrap_or_default()) {
        Ok(req) => service.attach_job(&scope, &id, req).await,
        Err(e) => Err(e),
    };
    match opened {
        Ok(relay) => upgrade
            .protocols([TERMINAL_PROTOCOL])
            .max_message_size(MAX_INPUT_FRAME + 16)
            .on_upgrade(move |socket| relay_socket(socket, relay)),
        Err(e) => e.into_response(),
    }
}

/// Carries a session over its WebSocket: the caller's binary messages to the relay, the relay's frames
/// back, and a normal close after the last one. A message that is not a terminal frame ends the session.
async fn relay_socket(socket: WebSocket, relay: TerminalRelay) {
    let (side, ends) = caller_channels();
    let CallerSide {
        input,
        mut output,
        refuse,
    } = side;
    let (mut sink, mut stream) = socket.split();
    let reader = async move {
        // Why the caller's frames stopped, when it sent one it should not have.
        let refused = loop {
            let Some(Ok(message)) = stream.next().await else {
                break None;
            };
            let frame = match message {
                Message::Binary(bytes) => TerminalClientFrame::decode(&bytes),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => break None,
                Message::Text(_) => {
                    break Some(
                        "a terminal session takes binary frames; a text message ends it".to_owned(),
                    )
                }
            };
            match frame {
                Ok(frame) => {
                    if input.send(frame).await.is_err() {
                        break None;
                    }
                }
                Err(e) => break Some(e.to_string()),
            }
        };
        if let Some(why) = refused {
            tracing::debug!(why, "ending a terminal session");
            refuse.because(why).await;
        }
        // Dropping `input` tells the relay the caller left.
    };
    let writer = async move {
        while let Some(frame) = output.recv().await {
            let last = matches!(frame, TerminalServerFrame::End(_));
            if sink
                .send(Message::Binary(frame.encode().into()))
                .await
                .is_err()
            {
                return;
            }
            if last {
                let close = CloseFrame {
                    code: 1000,
                    reason: "session ended".into(),
                };
                let _ = sink.send(Message::Close(Some(close))).await;
                return;
            }
        }
    };
    let session = async move {
        tokio::join!(relay.run(ends), writer);
    };
    tokio::pin!(session, reader);
    tokio::select! {
        () = &mut session => {}
        () = &mut reader => session.await,
    }
}

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
