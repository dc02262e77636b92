//! The agent's RPC service for getting into and out of a running job: `AgentExecInJob` runs a command
//! inside an attempt's sandbox (`exec::enter`), `AgentReadJobFile` reads a chunk of a file from its
//! working directory (`exec::job_file`), and the session call `AgentAttachJob` runs one on a terminal
//! and streams it (`exec::terminal`, pumped by [`terminal_session`](super::terminal_session));
//! everything else goes to the [`LogService`].
//!
//! Owns the checks between a coordinator's request and the process: only an attempt this node's store
//! records as running, with a process handle and not being stopped, is entered or read (anything else
//! is NOT_FOUND or FAILED_PRECONDITION, so no caller-supplied pid or path outside the working directory
//! is ever used); the command, its input, its timeout and its output are bounded; and at most
//! [`MAX_CONCURRENT`] commands and terminal sessions run at once on the node (RESOURCE_EXHAUSTED
//! beyond; a session holds its place until it ends). The command's environment is the job's as
//! launched, without its secrets. Who may call is the RPC layer's table (all three methods:
//! coordinators only); who may ask a coordinator is its admin API's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use protocol::pb;
use protocol::rpc::{
    decode_message, encode_message, CallContext, Method, RpcService, RpcStatus, SessionRunner,
};
use tokio::sync::Semaphore;

use crate::exec::{
    exec_in_job, job_environment, list_job_dir, open_terminal, read_job_file, EnterError,
    ExecInput, JobEntry, JobFileError,
};

use super::store::{AttemptPhase, AttemptRecord, JobStore, StoredAttempt};
use super::terminal_session::{attach_input, run_session, SESSION_IDLE_LIMIT};
use super::{AttemptKey, LogService};

/// Commands running in jobs at once on this node.
pub const MAX_CONCURRENT: usize = 8;
/// The most bytes of stdout and of stderr one command returns.
pub const MAX_OUTPUT_BYTES: u32 = 4 * 1024 * 1024;
/// The most bytes of standard input one command is given.
pub const MAX_STDIN_BYTES: usize = 1024 * 1024;
/// The longest a command may run.
pub const MAX_TIMEOUT_SECS: u32 = 3600;
/// The most arguments, and the most bytes of all of them together.
pub const MAX_ARGS: usize = 1024;
pub const MAX_COMMAND_BYTES: usize = 128 * 1024;
/// The most bytes one file read answers.
pub const MAX_FILE_CHUNK: u32 = 1024 * 1024;

/// Serves `AgentExecInJob`, `AgentReadJobFile` and `AgentAttachJob`, and the log service's methods.
#[derive(Debug, Clone)]
pub struct ExecService {
    store: Arc<JobStore>,
    logs: LogService,
    running: Arc<Semaphore>,
    idle_limit: Duration,
}

impl ExecService {
    pub fn new(store: Arc<JobStore>) -> ExecService {
        ExecService {
            logs: LogService::new(store.clone()),
            store,
            running: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            idle_limit: SESSION_IDLE_LIMIT,
        }
    }

    /// The same with terminal sessions killed after `limit` without input or output instead of
    /// [`SESSION_IDLE_LIMIT`](super::terminal_session::SESSION_IDLE_LIMIT).
    pub fn with_idle_limit(self, limit: Duration) -> ExecService {
        ExecService {
            idle_limit: limit,
            ..self
        }
    }
}

impl RpcService for ExecService {
    fn call(
        &self,
        ctx: CallContext,
        method: Method,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcStatus>> {
        match method {
            Method::AgentExecInJob => {
                let this = self.clone();
                Box::pin(async move {
                    let request: pb::ExecInJobRequest = decode_message(&body)?;
                    this.exec(request).await.map(|r| encode_message(&r))
                })
            }
            Method::AgentReadJobFile => {
                let store = self.store.clone();
                Box::pin(async move {
                    let request: pb::ReadJobFileRequest = decode_message(&body)?;
                    read_file(store, request).await.map(|r| encode_message(&r))
                })
            }
            other => self.logs.call(ctx, other, body),
        }
    }

    fn session(
        &self,
        ctx: CallContext,
        method: Method,
        body: Bytes,
    ) -> BoxFuture<'static, Result<SessionRunner, RpcStatus>> {
        match method {
            Method::AgentAttachJob => {
                let this = self.clone();
                Box::pin(async move { this.attach(ctx, body).await })
            }
            other => self.logs.session(ctx, other, body),
        }
    }
}

/// The attempt's record, when it is running here with a process.
fn running_attempt(store: &JobStore, key: &AttemptKey) -> Result<AttemptRecord, RpcStatus> {
    let name = || {
        format!(
            "replica {} of attempt {} of job {:?}",
            key.replica,
            key.attempt,
            key.job_id.chars().take(128).collect::<String>()
        )
    };
    let record = match store
        .lookup(key)
        .map_err(|e| RpcStatus::internal(e.to_string()))?
    {
        Some(StoredAttempt::Live(record)) => *record,
        Some(StoredAttempt::Forgotten(_)) | None => {
            return Err(RpcStatus::not_found(format!(
                "{} is not known on this node",
                name()
            )))
        }
    };
    if record.phase != AttemptPhase::Running || record.handle.is_none() || record.stop.is_some() {
        return Err(RpcStatus::failed_precondition(format!(
            "{} is not running on this node",
            name()
        )));
    }
    Ok(record)
}

/// The working directory of a running attempt, as its processes see it (the same path on the host).
fn workdir(record: &AttemptRecord) -> Option<PathBuf> {
    let handle = record.handle.as_ref()?;
    if record.assignment.working_dir.is_empty() {
        Some(handle.state_dir.join("work"))
    } else {
        let dir = PathBuf::from(&record.assignment.working_dir);
        Some(std::fs::canonicalize(&dir).unwrap_or(dir))
    }
}

fn entry(record: &AttemptRecord) -> Option<JobEntry> {
    let handle = record.handle.as_ref()?;
    let workdir = workdir(record)?;
    let spec = record.assignment.process_spec(handle.log.dir.clone());
    let sandboxed = handle.uid.is_some();
    let env = job_environment(
        &spec,
        &record.assignment.replica_spec(),
        |key| std::env::var(key).ok(),
        sandboxed.then_some(workdir.as_path()),
    );
    Some(JobEntry {
        pid: handle.pid,
        start_time: handle.start_time,
        cgroups: handle.cgroups.clone(),
        uid: handle.uid,
        workdir,
        env,
    })
}

/// A command for a job, checked: a program named, bounded, no NUL byte.
pub(super) fn check_command(command: &[String]) -> Result<(), RpcStatus> {
    if command.first().is_none_or(|p| p.is_empty()) {
        return Err(RpcStatus::invalid_argument("the command names no program"));
    }
    let bytes: usize = command.iter().map(String::len).sum();
    if command.len() > MAX_ARGS || bytes > MAX_COMMAND_BYTES {
        return Err(RpcStatus::invalid_argument(format!(
            "the command is too long (at most {MAX_ARGS} arguments and {MAX_COMMAND_BYTES} bytes)"
        )));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(RpcStatus::invalid_argument("the command holds a NUL byte"));
    }
    Ok(())
}

/// The request's command and bounds, checked.
fn exec_input(request: &mut pb::ExecInJobRequest) -> Result<ExecInput, RpcStatus> {
    let command = std::mem::take(&mut request.command);
    check_command(&command)?;
    if request.stdin.len() > MAX_STDIN_BYTES {
        return Err(RpcStatus::invalid_argument(format!(
            "stdin is larger than {MAX_STDIN_BYTES} bytes"
        )));
    }
    if request.timeout_secs == 0 || request.timeout_secs > MAX_TIMEOUT_SECS {
        return Err(RpcStatus::invalid_argument(format!(
            "timeout_secs must be 1-{MAX_TIMEOUT_SECS}"
        )));
    }
    let max_output = match request.max_output_bytes {
        0 => MAX_OUTPUT_BYTES,
        n => n.min(MAX_OUTPUT_BYTES),
    };
    Ok(ExecInput {
        command,
        stdin: std::mem::take(&mut request.stdin),
        timeout: Duration::from_secs(u64::from(request.timeout_secs)),
        max_output: max_output as usize,
    })
}

impl ExecService {
    async fn exec(
        &self,
        mut request: pb::ExecInJobRequest,
    ) -> Result<pb::ExecInJobResponse, RpcStatus> {
        let input = exec_input(&mut request)?;
        let Ok(_permit) = self.running.clone().try_acquire_owned() else {
            return Err(RpcStatus::resource_exhausted(format!(
                "{MAX_CONCURRENT} commands already run in jobs on this node; try again"
            )));
        };
        let key = AttemptKey::new(request.job_id, request.attempt, request.replica);
        let store = self.store.clone();
        let job = key.job_id.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let record = running_attempt(&store, &key)?;
            let entry = entry(&record).ok_or_else(|| {
                RpcStatus::failed_precondition("the attempt has no process to enter")
            })?;
            tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica,
                program = %input.command[0].chars().take(128).collect::<String>(), "running a command in a job");
            exec_in_job(&entry, &input).map_err(enter_status)
        })
        .await
        .map_err(|e| RpcStatus::internal(format!("running the command in job {job}: {e}")))??;
        Ok(pb::ExecInJobResponse {
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            stdout_truncated: outcome.stdout_truncated,
            stderr_truncated: outcome.stderr_truncated,
            timed_out: outcome.timed_out,
        })
    }
}

/// A command that could not be started in a job as the RPC status the coordinator maps to its answer.
fn enter_status(e: EnterError) -> RpcStatus {
    match e {
        EnterError::NotRunning => RpcStatus::failed_precondition(e.to_string()),
        EnterError::InvalidCommand(_) => RpcStatus::invalid_argument(e.to_string()),
        EnterError::Io { .. } | EnterError::Step { .. } => RpcStatus::internal(e.to_string()),
    }
}

impl ExecService {
    /// Opens a terminal session in a running attempt (see `terminal_session`).
    async fn attach(&self, ctx: CallContext, body: Bytes) -> Result<SessionRunner, RpcStatus> {
        let mut request: pb::AttachJobRequest = decode_message(&body)?;
        let input = attach_input(&mut request)?;
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            return Err(RpcStatus::resource_exhausted(format!(
                "{MAX_CONCURRENT} commands or terminals already run in jobs on this node; try again"
            )));
        };
        let key = AttemptKey::new(request.job_id, request.attempt, request.replica);
        let program: String = input.command[0].chars().take(128).collect();
        let store = self.store.clone();
        let opening = key.clone();
        let terminal = tokio::task::spawn_blocking(move || {
            let record = running_attempt(&store, &opening)?;
            let entry = entry(&record).ok_or_else(|| {
                RpcStatus::failed_precondition("the attempt has no process to enter")
            })?;
            open_terminal(
                &entry,
                &input.command,
                input.size,
                &input.term,
                input.timeout,
            )
            .map_err(enter_status)
        })
        .await
        .map_err(|e| {
            RpcStatus::internal(format!("opening a terminal in job {}: {e}", key.job_id))
        })??;
        tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica,
            program = %program, "a terminal session started in a job");
        let idle_limit = self.idle_limit;
        let runner: SessionRunner = Box::new(move |tx, rx| {
            Box::pin(async move {
                let end = run_session(terminal, tx, rx, ctx.stopping, idle_limit).await;
                drop(permit);
                tracing::info!(job = %key.job_id, attempt = key.attempt, replica = key.replica,
                    program = %program, exit_code = ?end.exit_code, signal = ?end.signal,
                    timed_out = end.timed_out, idle = end.idle, error = %end.error,
                    "a terminal session in a job ended");
            })
        });
        Ok(runner)
    }
}

async fn read_file(
    store: Arc<JobStore>,
    request: pb::ReadJobFileRequest,
) -> Result<pb::ReadJobFileResponse, RpcStatus> {
    let max = match request.max_bytes {
        0 => MAX_FILE_CHUNK,
        n => n.min(MAX_FILE_CHUNK),
    };
    let key = AttemptKey::new(request.job_id, request.attempt, request.replica);
    let path = request.path;
    let offset = request.offset;
    tokio::task::spawn_blocking(move || {
        let record = running_attempt(&store, &key)?;
        let (Some(dir), Some(handle)) = (workdir(&record), record.handle.as_ref()) else {
            return Err(RpcStatus::failed_precondition(
                "the attempt has no working directory",
            ));
        };
        if request.list {
            let entries = list_job_dir(&dir, handle.uid, &path).map_err(file_status)?;
            return Ok(pb::ReadJobFileResponse {
                entries: entries
                    .into_iter()
                    .map(|e| pb::JobDirEntry {
                        name: e.name,
                        kind: e.kind.as_str().to_owned(),
                        size: e.size,
                        mode: e.mode,
                    })
                    .collect(),
                ..Default::default()
            });
        }
        let chunk =
            read_job_file(&dir, handle.uid, &path, offset, max as usize).map_err(file_status)?;
        Ok(pb::ReadJobFileResponse {
            data: chunk.data,
            size: chunk.size,
            mode: chunk.mode,
            device: chunk.device,
            inode: chunk.inode,
            modified_ns: chunk.modified_ns,
            entries: Vec::new(),
        })
    })
    .await
    .map_err(|e| RpcStatus::internal(format!("reading a job's file: {e}")))?
}

/// A refused read or listing as the RPC status the coordinator maps to its answer.
fn file_status(e: JobFileError) -> RpcStatus {
    match e {
        JobFileError::NotFound(_) => RpcStatus::not_found(e.to_string()),
        JobFileError::BadPath(..) | JobFileError::NotAFile(_) | JobFileError::NotADirectory(_) => {
            RpcStatus::invalid_argument(e.to_string())
        }
        JobFileError::Escapes(_) | JobFileError::PermissionDenied(_) => {
            RpcStatus::permission_denied(e.to_string())
        }
        JobFileError::Io { .. } => RpcStatus::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &[&str]) -> pb::ExecInJobRequest {
        pb::ExecInJobRequest {
            job_id: "j".into(),
            attempt: 1,
            replica: 0,
            command: command.iter().map(|s| s.to_string()).collect(),
            stdin: Vec::new(),
            timeout_secs: 10,
            max_output_bytes: 0,
        }
    }

    #[test]
    fn commands_and_bounds_are_checked_before_anything_runs() {
        let code = |mut r: pb::ExecInJobRequest| exec_input(&mut r).map(|_| ()).map_err(|s| s.code);
        use protocol::StatusCode::InvalidArgument;
        assert_eq!(code(request(&[])), Err(InvalidArgument));
        assert_eq!(code(request(&[""])), Err(InvalidArgument));
        assert_eq!(code(request(&["cat", "a\0b"])), Err(InvalidArgument));
        let mut long = request(&["true"]);
        long.timeout_secs = MAX_TIMEOUT_SECS + 1;
        assert_eq!(code(long), Err(InvalidArgument));
        let mut zero = request(&["true"]);
        zero.timeout_secs = 0;
        assert_eq!(code(zero), Err(InvalidArgument));
        let mut big = request(&["cat"]);
        big.stdin = vec![0; MAX_STDIN_BYTES + 1];
        assert_eq!(code(big), Err(InvalidArgument));
        let many: Vec<String> = (0..=MAX_ARGS).map(|i| i.to_string()).collect();
        let mut r = request(&["echo"]);
        r.command.extend(many);
        assert_eq!(code(r), Err(InvalidArgument));
        let mut capped = request(&["cat"]);
        capped.max_output_bytes = u32::MAX;
        assert_eq!(
            exec_input(&mut capped).expect("valid").max_output,
            MAX_OUTPUT_BYTES as usize
        );
    }
}
