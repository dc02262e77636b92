//! Into and out of a running job, shared by REST and gRPC: `POST /v1/jobs/{id}:exec` runs a command
//! inside a running job's sandbox and answers its exit status and capped output; `GET
//! /v1/jobs/{id}/files?path=P` copies a regular file out of the job's working directory, a chunk at a
//! time from the agent, streamed to the caller; `GET /v1/jobs/{id}/dir?path=P` lists a directory there
//! (for `job cp -r`), checked and audited like a copy; `GET /v1/jobs/{id}:attach` (a WebSocket) opens an
//! interactive terminal session in it (`attach.rs`). The REST handlers and route rows are in `rest.rs`, the
//! gRPC adapters and method rows in `grpc.rs`.
//!
//! Both need `run-jobs` in the job's project (viewers never enter a job): a caller who may run jobs may
//! already run any code in the project's sandboxes, so entering a running one gives no new power — except
//! over its secrets, which the job's files (`/run/secrets`) hold. So a job that was given secrets is
//! entered or read only by its own principal (its workload identity) or by a caller holding
//! `manage-secrets` in the project; anyone else is refused (403, audited). Another project's job answers
//! exactly like a missing one (404, audited). Only a running job is entered (409 otherwise). Every
//! command and copy is recorded in the audit log (`job.exec` with the command line, `job.cp` with the
//! path) before it reaches the agent: no record, no command.
//!
//! The coordinator reaches the job's agent only over the mesh RPC (`AgentExecInJob`, `AgentReadJobFile`,
//! the session call `AgentAttachJob`),
//! at the address the agent registered; nothing here opens a port on an agent. Must never decide what a
//! path means (the agent resolves it beneath the working directory), never buffer a whole file, and
//! never answer with another project's job or output.

pub(in crate::api) mod attach;
pub(in crate::api) mod grpc;
pub(in crate::api) mod rest;
pub(in crate::api) mod terminal_frames;

use std::pin::Pin;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use futures::Stream;
use protocol::pb;
use protocol::rpc::{Method, RpcError, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::authz::{self, Action};
use crate::state::{AuditOp, AuditOutcome, JobRecord, JobState, Op, MAX_REPLICAS};

use crate::api::auth::RequestScope;
use crate::api::error::{ErrorKind, ServiceError};
use crate::api::service::{query_u64, AdminService};

/// A command's default and longest run.
pub(crate) const DEFAULT_EXEC_TIMEOUT_SECS: u32 = 60;
pub(crate) const MAX_EXEC_TIMEOUT_SECS: u32 = 3600;
/// The most bytes of each of stdout and stderr a command answers.
pub(crate) const MAX_EXEC_OUTPUT_BYTES: u32 = 1024 * 1024;
/// The most bytes of standard input a command is given.
pub(crate) const MAX_EXEC_STDIN_BYTES: usize = 1024 * 1024;
/// The largest file `job cp` copies, and the size of each piece read from the agent.
pub(crate) const MAX_COPY_BYTES: u64 = 256 * 1024 * 1024;
const COPY_CHUNK_BYTES: u32 = 1024 * 1024;
/// How long one chunk of a copy may take, and how long past its own timeout a command's answer may.
const AGENT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
const AGENT_EXEC_SLACK: Duration = Duration::from_secs(15);

// ---- requests and replies ----------------------------------------------------------------------------------

/// `POST /v1/jobs/{id}:exec`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecJobRequest {
    /// The program and its arguments; the program is looked up in the job's `PATH` inside its sandbox.
    pub command: Vec<String>,
    /// Which replica of a gang job (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 63)]
    pub replica: Option<u64>,
    /// Standard input for the command, base64-encoded (at most 1 MiB decoded); end of file after it.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Seconds before the command is killed (default 60, at most 3600).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_secs: Option<u64>,
}

/// What a command run in a job did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = JobExecResult)]
pub struct ExecJobView {
    /// The exit code, when the command exited (127: the program was not found).
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did (9 after the timeout).
    pub signal: Option<i32>,
    /// Its standard output, base64-encoded (at most 1 MiB decoded).
    pub stdout: String,
    /// Its standard error, base64-encoded (at most 1 MiB decoded).
    pub stderr: String,
    /// More output was written than was kept.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// It ran past `timeout_secs` and was killed.
    pub timed_out: bool,
    /// Where it ran.
    pub attempt: u32,
    pub replica: u32,
    pub node: String,
}

/// The query of `GET /v1/jobs/{id}/files`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct CopyQuery {
    pub(crate) path: Option<String>,
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) replica: Option<u64>,
}

/// What a directory entry is, as it is: a link is named, never followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobFileKind {
    File,
    Dir,
    Link,
    Other,
}

impl JobFileKind {
    fn parse(kind: &str) -> JobFileKind {
        match kind {
            "file" => JobFileKind::File,
            "dir" => JobFileKind::Dir,
            "link" => JobFileKind::Link,
            _ => JobFileKind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobFileKind::File => "file",
            JobFileKind::Dir => "dir",
            JobFileKind::Link => "link",
            JobFileKind::Other => "other",
        }
    }
}

/// One entry of a listed directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = JobDirEntry)]
pub struct JobDirEntryView {
    pub name: String,
    pub kind: JobFileKind,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// `GET /v1/jobs/{id}/dir`: a directory of a running job's working directory, read with the job's
/// rights; at most 10,000 entries, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = JobDirListing)]
pub struct JobDirView {
    /// The directory, relative to the working directory (empty: the working directory itself).
    pub path: String,
    pub entries: Vec<JobDirEntryView>,
}

/// A file being copied out of a job: its size and mode, then its bytes in order. A piece that cannot be
/// read (the file changed, the agent went away) ends the stream with an error.
pub(crate) struct FileDownload {
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) chunks: Pin<Box<dyn Stream<Item = Result<Bytes, ServiceError>> + Send>>,
}

/// Where a running replica of a job runs.
struct Target {
    attempt: u32,
    replica: u32,
    node: String,
    rpc_addr: String,
}

fn invalid(field: &str, message: impl std::fmt::Display) -> ServiceError {
    ServiceError::invalid(field, message)
}

fn replica_of(replica: Option<u64>) -> Result<u32, ServiceError> {
    match replica {
        None => Ok(0),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|r| *r < MAX_REPLICAS)
            .ok_or_else(|| invalid("replica", format!("must be 0-{}", MAX_REPLICAS - 1))),
    }
}

/// The path as the agent will take it: relative to the working directory, never `..`.
fn checked_path(path: Option<&str>) -> Result<&str, ServiceError> {
    let path = path.unwrap_or_default();
    if path.is_empty() {
        return Err(invalid(
            "path",
            "a path relative to the job's working directory is required",
        ));
    }
    if path.len() > 4096 || path.contains('\0') {
        return Err(invalid("path", "too long or holds a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(invalid(
            "path",
            "absolute paths are refused; name the file relative to the job's working directory",
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(invalid("path", "`..` is refused"));
    }
    Ok(path)
}

/// A command as the agent takes it: a program named, at most 1024 words and 128 KiB, no NUL byte.
fn validate_command(command: &[String]) -> Result<(), ServiceError> {
    if command.first().is_none_or(|p| p.is_empty()) {
        return Err(invalid("command", "name the program to run"));
    }
    if command.len() > 1024 || command.iter().map(String::len).sum::<usize>() > 128 * 1024 {
        return Err(invalid("command", "at most 1024 words and 128 KiB"));
    }
    if command.iter().any(|w| w.contains('\0')) {
        return Err(invalid("command", "holds a NUL byte"));
    }
    Ok(())
}

/// The command line as the audit log records it: each word quoted when it needs to be, at most 900 bytes.
fn command_line(command: &[String]) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                w.clone()
            } else {
                format!("{w:?}")
            }
        })
        .collect();
    let line = words.join(" ");
    if line.len() <= 900 {
        return line;
    }
    let mut cut = 900;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &line[..cut])
}

/// What an agent's refusal means to the caller. The transport's own words name internal addresses and
/// paths: they go to the coordinator's log, never to the caller.
fn agent_error(e: RpcError, node: &str) -> ServiceError {
    match e {
        RpcError::Remote(status) => match status.code {
            StatusCode::InvalidArgument => {
                ServiceError::new(ErrorKind::InvalidArgument, status.message)
            }
            StatusCode::PermissionDenied => {
                ServiceError::new(ErrorKind::PermissionDenied, status.message)
            }
            StatusCode::NotFound if status.message.contains("working directory") => {
                ServiceError::new(ErrorKind::NotFound, status.message)
            }
            StatusCode::NotFound | StatusCode::FailedPrecondition => {
                ServiceError::conflict(format!("the job is no longer running on node {node}"))
            }
            StatusCode::ResourceExhausted => ServiceError::unavailable(format!(
                "node {node} runs as many commands in jobs as it allows; try again"
            )),
            StatusCode::Unimplemented => ServiceError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "the agent of node {node} runs an older build that cannot do this; upgrade it"
                ),
            ),
            _ => {
                tracing::warn!(node, error = %status.message, "a command or copy in a job failed on its agent");
                ServiceError::unavailable(format!(
                    "the agent of node {node} could not do it; try again (the coordinator's log has the details)"
                ))
            }
        },
        other => {
            tracing::warn!(node, error = %other, "reaching a job's agent failed");
            ServiceError::unavailable(format!(
                "the agent of node {node} could not be reached; try again (the coordinator's log has the details)"
            ))
        }
    }
}

impl AdminService {
    /// The running replica `replica` of job `id` in the caller's project, after the checks every entry
    /// into a job makes: visible (404 otherwise, audited), running (409), and its secrets guarded (403,
    /// audited).
    async fn running_target(
        &self,
        scope: &RequestScope,
        id: &str,
        replica: u32,
    ) -> Result<Target, ServiceError> {
        let job: JobRecord = self.scoped_job(scope, id).await?;
        if job.state != JobState::Running {
            return Err(ServiceError::conflict(format!(
                "job {id} is {}; only a running job can be entered",
                job.state.as_str()
            )));
        }
        if replica >= job.spec.replicas {
            return Err(invalid(
                "replica",
                format!(
                    "job {id} has {} replica(s), numbered from 0",
                    job.spec.replicas
                ),
            ));
        }
        let workload = job.principal_id.as_deref() == Some(scope.caller.principal_id.as_str());
        if !job.spec.secrets.is_empty() && !workload {
            let guards = self.handle().read(|s| {
                authz::authorize_caller(
                    s,
                    &scope.caller,
                    Some(&scope.project_id),
                    Action::ManageSecrets,
                )
            });
            if guards.is_err() {
                return Err(self
                    .refuse(
                        scope,
                        Some(scope.project_id.clone()),
                        id,
                        "the job holds secrets: only its own principal or a holder of manage-secrets may enter it",
                    )
                    .await);
            }
        }
        let attempt = job
            .attempts
            .iter()
            .rev()
            .find(|a| a.replica == replica && !a.node.is_empty() && a.ended_at.is_none())
            .ok_or_else(|| {
                ServiceError::conflict(format!("replica {replica} of job {id} is not running"))
            })?;
        let node = attempt.node.clone();
        let rpc_addr = self
            .handle()
            .read(|s| s.node(&node).map(|n| n.rpc_addr.clone()))
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                ServiceError::unavailable(format!("node {node} has no known agent address now"))
            })?;
        Ok(Target {
            attempt: attempt.attempt,
            replica,
            node,
            rpc_addr,
        })
    }

    /// Records that the caller is about to enter job `id`: nothing reaches the agent without it.
    async fn audit_entry(
        &self,
        scope: &RequestScope,
        id: &str,
        target: &Target,
        what: String,
    ) -> Result<(), ServiceError> {
        let detail = format!(
            "attempt {} replica {} on node {}: {what}",
            target.attempt, target.replica, target.node
        );
        let op = Op::Audit(AuditOp::RecordAudit {
            action: scope.operation.to_owned(),
            project: Some(scope.project_id.clone()),
            target: id.chars().take(256).collect(),
            outcome: AuditOutcome::Success,
            detail: detail.chars().take(1024).collect(),
        });
        self.write(scope, op).await.map(|_| ())
    }

    pub(crate) async fn exec_job(
        &self,
        scope: &RequestScope,
        id: &str,
        req: ExecJobRequest,
    ) -> Result<ExecJobView, ServiceError> {
        let replica = replica_of(req.replica)?;
        validate_command(&req.command)?;
        let stdin = match &req.stdin {
            None => Vec::new(),
            Some(text) => STANDARD
                .decode(text)
                .map_err(|_| invalid("stdin", "not base64"))?,
        };
        if stdin.len() > MAX_EXEC_STDIN_BYTES {
            return Err(invalid("stdin", "at most 1 MiB"));
        }
        let timeout_secs = match req.timeout_secs {
            None => DEFAULT_EXEC_TIMEOUT_SECS,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_EXEC_TIMEOUT_SECS).contains(n))
                .ok_or_else(|| {
                    invalid("timeout_secs", format!("must be 1-{MAX_EXEC_TIMEOUT_SECS}"))
                })?,
        };
        let target = self.running_target(scope, id, replica).await?;
        self.audit_entry(scope, id, &target, command_line(&req.command))
            .await?;
        let request = pb::ExecInJobRequest {
            job_id: id.to_owned(),
            attempt: target.attempt,
            replica: target.replica,
            command: req.command,
            stdin,
            timeout_secs,
            max_output_bytes: MAX_EXEC_OUTPUT_BYTES,
        };
        let deadline = Duration::from_secs(u64::from(timeout_secs)) + AGENT_EXEC_SLACK;
        let resp: pb::ExecInJobResponse = self
            .handle()
            .call_agent(&target.rpc_addr, Method::AgentExecInJob, &request, deadline)
            .await
            .map_err(|e| agent_error(e, &target.node))?;
        Ok(ExecJobView {
            exit_code: resp.exit_code,
            signal: resp.signal,
            stdout: STANDARD.encode(&resp.stdout),
            stderr: STANDARD.encode(&resp.stderr),
            stdout_truncated: resp.stdout_truncated,
            stderr_truncated: resp.stderr_truncated,
            timed_out: resp.timed_out,
            attempt: target.attempt,
            replica: target.replica,
            node: target.node,
        })
    }

    /// Lists a directory of a running job's working directory (empty path: the directory itself),
    /// checked and audited like a copy.
    pub(crate) async fn list_job_dir(
        &self,
        scope: &RequestScope,
        id: &str,
        query: &CopyQuery,
    ) -> Result<JobDirView, ServiceError> {
        let replica = replica_of(query.replica)?;
        let path = match query.path.as_deref().unwrap_or_default() {
            "" | "." => String::new(),
            other => checked_path(Some(other))?.to_owned(),
        };
        let target = self.running_target(scope, id, replica).await?;
        self.audit_entry(scope, id, &target, format!("list {path:?}"))
            .await?;
        let request = pb::ReadJobFileRequest {
            job_id: id.to_owned(),
            attempt: target.attempt,
            replica: target.replica,
            path: path.clone(),
            offset: 0,
            max_bytes: 0,
            list: true,
        };
        let listed: pb::ReadJobFileResponse = self
            .handle()
            .call_agent(
                &target.rpc_addr,
                Method::AgentReadJobFile,
                &request,
                AGENT_CHUNK_TIMEOUT,
            )
            .await
            .map_err(|e| agent_error(e, &target.node))?;
        Ok(JobDirView {
            path,
            entries: listed
                .entries
                .into_iter()
                .map(|e| JobDirEntryView {
                    name: e.name,
                    kind: JobFileKind::parse(&e.kind),
                    size: e.size,
                    mode: e.mode,
                })
                .collect(),
        })
    }

    pub(crate) async fn copy_from_job(
        &self,
        scope: &RequestScope,
        id: &str,
        query: &CopyQuery,
    ) -> Result<FileDownload, ServiceError> {
        let replica = replica_of(query.replica)?;
        let path = checked_path(query.path.as_deref())?.to_owned();
        let target = self.running_target(scope, id, replica).await?;
        self.audit_entry(scope, id, &target, format!("copy {path:?}"))
            .await?;
        let handle = self.handle().clone();
        let request = |offset: u64| pb::ReadJobFileRequest {
            job_id: id.to_owned(),
            attempt: target.attempt,
            replica: target.replica,
            path: path.clone(),
            offset,
            max_bytes: COPY_CHUNK_BYTES,
            list: false,
        };
        let first: pb::ReadJobFileResponse = handle
            .call_agent(
                &target.rpc_addr,
                Method::AgentReadJobFile,
                &request(0),
                AGENT_CHUNK_TIMEOUT,
            )
            .await
            .map_err(|e| agent_error(e, &target.node))?;
        if first.size > MAX_COPY_BYTES {
            return Err(ServiceError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "{path:?} is {} bytes; at most {MAX_COPY_BYTES} are copied",
                    first.size
                ),
            ));
        }
        let (size, mode) = (first.size, first.mode);
        let identity = (first.device, first.inode, first.size, first.modified_ns);
        let node = target.node.clone();
        let addr = target.rpc_addr.clone();
        let next_request = request(0);
        let chunks = futures::stream::unfold(
            (Some(first), 0u64, next_request),
            move |(pending, offset, mut next)| {
                let handle = handle.clone();
                let node = node.clone();
                let addr = addr.clone();
                async move {
                    let chunk = match pending {
                        Some(chunk) => chunk,
                        None if offset >= size => return None,
                        None => {
                            next.offset = offset;
                            let read: Result<pb::ReadJobFileResponse, _> = handle
                                .call_agent(
                                    &addr,
                                    Method::AgentReadJobFile,
                                    &next,
                                    AGENT_CHUNK_TIMEOUT,
                                )
                                .await;
                            match read {
                                Ok(chunk) => chunk,
                                Err(e) => {
                                    return Some((Err(agent_error(e, &node)), (None, size, next)))
                                }
                            }
                        }
                    };
                    let same =
                        (chunk.device, chunk.inode, chunk.size, chunk.modified_ns) == identity;
                    if !same || (chunk.data.is_empty() && offset < size) {
                        let e =
                            ServiceError::conflict("the file changed while it was being copied");
                        // Stop after the error: `size` as the offset ends the stream.
                        return Some((Err(e), (None, size, next)));
                    }
                    let offset = offset + chunk.data.len() as u64;
                    Some((Ok(Bytes::from(chunk.data)), (None, offset, next)))
                }
            },
        );
        Ok(FileDownload {
            size,
            mode,
            chunks: Box::pin(chunks),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_and_never_climb() {
        for bad in [
            None,
            Some(""),
            Some("/etc/shadow"),
            Some("../../etc/shadow"),
            Some("a/../b"),
            Some("a\0"),
        ] {
            let e = checked_path(bad).expect_err("refused");
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}");
        }
        assert_eq!(
            checked_path(Some("out/result.txt")).ok(),
            Some("out/result.txt")
        );
        assert_eq!(checked_path(Some("..hidden")).ok(), Some("..hidden"));
    }

    #[test]
    fn the_audited_command_line_reads_like_a_shell_line_and_is_bounded() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(command_line(&words(&["cat", "out/a.txt"])), "cat out/a.txt");
        assert_eq!(
            command_line(&words(&["sh", "-c", "echo hi; rm -rf /"])),
            r#"sh -c "echo hi; rm -rf /""#
        );
        let long = command_line(&words(&["echo", &"é".repeat(2000)]));
        assert!(long.len() <= 904 && long.ends_with('…'));
    }

    #[test]
    fn replicas_are_bounded() {
        assert_eq!(replica_of(None).ok(), Some(0));
        assert_eq!(replica_of(Some(3)).ok(), Some(3));
        assert!(replica_of(Some(u64::from(MAX_REPLICAS))).is_err());
    }

    #[test]
    fn an_agents_refusals_keep_their_meaning_and_its_internals_stay_inside() {
        let remote = |code, message: &str| {
            RpcError::Remote(protocol::rpc::RpcStatus {
                code,
                message: message.into(),
            })
        };
        let e = agent_error(
            remote(StatusCode::PermissionDenied, "\"link\" is a symbolic link"),
            "n1",
        );
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        let e = agent_error(remote(StatusCode::FailedPrecondition, "x"), "n1");
        assert_eq!(e.kind, ErrorKind::Conflict);
        let e = agent_error(
            remote(StatusCode::Unimplemented, "unknown method id 43"),
            "n1",
        );
        assert_eq!(e.kind, ErrorKind::FailedPrecondition);
        assert!(e.message.contains("older build"), "{}", e.message);
        let e = agent_error(
            remote(StatusCode::Internal, "/var/lib/meridian/agent.db: broken"),
            "n1",
        );
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(!e.message.contains("/var/lib"), "{}", e.message);
    }
}
