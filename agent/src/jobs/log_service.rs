//! The agent's own RPC service: coordinators read an attempt's captured output with `AgentReadLogs`
//! (and anyone may `Ping`).
//!
//! Owns the answer to a log read: only processes this node's store knows are served, each named by
//! (job id, attempt, replica) with logs of its own (anything else is NOT_FOUND, so no caller-supplied
//! path is ever opened), the stream name is checked, and one answer carries at most
//! [`MAX_READ_BYTES`] (besides one record larger than that, which a record never is). A read with
//! `records` answers from the attempt's output index: both streams merged in the order they were read, or
//! one stream, each chunk with its time, from a time on or from the last lines. An attempt forgotten after its retention period is NOT_FOUND too, with a message
//! saying its output was removed. Who may call is the RPC layer's authorization table
//! (`AgentReadLogs`: coordinators only); this service never writes anything.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use protocol::pb;
use protocol::rpc::{decode_message, encode_message, CallContext, Method, RpcService, RpcStatus};

use crate::exec::{read_logs, read_records, LogStream, OutputRecord, RecordsQuery};

use super::store::{JobStore, StoredAttempt};
use super::AttemptKey;

/// The most bytes one read answers (also when the request asks for 0, meaning "as much as allowed").
pub const MAX_READ_BYTES: u32 = 1024 * 1024;

/// Serves `AgentReadLogs` from the attempts recorded in a [`JobStore`].
#[derive(Debug, Clone)]
pub struct LogService {
    store: Arc<JobStore>,
}

impl LogService {
    pub fn new(store: Arc<JobStore>) -> LogService {
        LogService { store }
    }
}

impl RpcService for LogService {
    fn call(
        &self,
        ctx: CallContext,
        method: Method,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcStatus>> {
        let store = self.store.clone();
        Box::pin(async move {
            match method {
                Method::AgentReadLogs => {
                    let request: pb::ReadLogsRequest = decode_message(&body)?;
                    read(store, request).await.map(|r| encode_message(&r))
                }
                Method::Ping => Ok(encode_message(&pb::PingResponse {
                    identity: ctx.peer.uri(),
                    apply_version: 0,
                })),
                other => Err(RpcStatus::unimplemented(format!(
                    "an agent does not serve {}",
                    other.name()
                ))),
            }
        })
    }
}

/// The stream a request names: one of the two, or (`None`) both, which only a records read may ask for.
fn parse_stream(name: &str, records: bool) -> Option<Option<LogStream>> {
    match name {
        "stdout" => Some(Some(LogStream::Stdout)),
        "stderr" => Some(Some(LogStream::Stderr)),
        "all" | "" if records => Some(None),
        _ => None,
    }
}

fn stream_name(stream: LogStream) -> &'static str {
    match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    }
}

async fn read(
    store: Arc<JobStore>,
    request: pb::ReadLogsRequest,
) -> Result<pb::ReadLogsResponse, RpcStatus> {
    let Some(selected) = parse_stream(&request.stream, request.records) else {
        let expected = if request.records {
            "\"all\", \"stdout\" or \"stderr\""
        } else {
            "\"stdout\" or \"stderr\""
        };
        return Err(RpcStatus::invalid_argument(format!(
            "stream {:?}: expected {expected}",
            request.stream.chars().take(64).collect::<String>()
        )));
    };
    let max = match request.max_bytes {
        0 => MAX_READ_BYTES,
        n => n.min(MAX_READ_BYTES),
    };
    let key = AttemptKey::new(request.job_id, request.attempt, request.replica);
    let offset = request.offset;
    let answer = tokio::task::spawn_blocking(move || {
        let stored = store
            .lookup(&key)
            .map_err(|e| RpcStatus::internal(e.to_string()))?;
        let name = || {
            format!(
                "replica {} of attempt {} of job {:?}",
                key.replica,
                key.attempt,
                key.job_id.chars().take(128).collect::<String>()
            )
        };
        let record = match stored {
            Some(StoredAttempt::Live(record)) => record,
            Some(StoredAttempt::Forgotten(_)) => {
                return Err(RpcStatus::not_found(format!(
                    "the output of {} was removed from this node after the retention period",
                    name()
                )))
            }
            None => {
                return Err(RpcStatus::not_found(format!(
                    "{} is not known on this node",
                    name()
                )))
            }
        };
        let Some(dir) = record.log_dir() else {
            // Never started (launch failed, or cancelled first): no output.
            return Ok(pb::ReadLogsResponse::default());
        };
        if request.records {
            let query = RecordsQuery {
                stream: selected,
                offset,
                max_bytes: max as usize,
                since_ms: request.since_ms,
                tail_lines: request.tail_lines,
            };
            let chunk =
                read_records(dir, &query).map_err(|e| RpcStatus::internal(e.to_string()))?;
            return Ok(pb::ReadLogsResponse {
                start_offset: chunk.start_offset,
                next_offset: chunk.next_offset,
                data: Vec::new(),
                records: chunk.records.into_iter().map(output_record).collect(),
            });
        }
        // Not a records read: `parse_stream` named one stream.
        let stream = selected.unwrap_or(LogStream::Stdout);
        let chunk = read_logs(dir, stream, offset, max as usize)
            .map_err(|e| RpcStatus::internal(e.to_string()))?;
        Ok(pb::ReadLogsResponse {
            start_offset: chunk.start_offset(),
            next_offset: chunk.next_offset,
            data: chunk.data,
            records: Vec::new(),
        })
    })
    .await
    .map_err(|e| RpcStatus::internal(format!("reading logs: {e}")))?;
    answer
}

fn output_record(r: OutputRecord) -> pb::OutputRecord {
    pb::OutputRecord {
        stream: stream_name(r.stream).to_owned(),
        at_ms: r.at_ms,
        data: r.data,
    }
}
