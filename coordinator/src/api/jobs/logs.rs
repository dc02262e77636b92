//! Reading a job attempt's output through the admin API: the query of `GET /v1/jobs/{id}/logs` (and gRPC
//! `ReadJobLogs`), the one read from the agent that ran the attempt, and the reply.
//!
//! Two kinds of read: one stream's bytes by logical offset (`stream=stdout` or `stderr`, as every client
//! before the output index asked), or records from the attempt's output index (`stream=all`, the default,
//! or any read with `since`, `tail` or `records`), whose offsets count the index and whose reply carries
//! each chunk with its stream and the time the agent read it. Which kind a reply is says its `cursor`.
//! Must never open more than one connection to an agent per read, never return another project's output
//! (the job is read through the project-scoped accessors), and never pass the agent's own error text, which
//! names its addresses and paths, to the caller.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::{JobState, MAX_REPLICAS};

use super::super::auth::RequestScope;
use super::super::error::{ErrorKind, ServiceError};
use super::super::service::{query_u64, AdminService};
use super::invalid;
use protocol::pb;
use protocol::units::parse_instant_ms;

/// A log read's default and largest size.
const DEFAULT_LOG_BYTES: u64 = 64 * 1024;
const MAX_LOG_BYTES: u64 = 1 << 20;

/// Query of `GET /v1/jobs/{id}/logs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    pub(crate) stream: Option<String>,
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) offset: Option<u64>,
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) attempt: Option<u64>,
    /// Which replica of a gang job (default 0).
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) replica: Option<u64>,
    /// Only output written at or after this time: Unix milliseconds or RFC 3339.
    #[serde(default)]
    pub(crate) since: Option<String>,
    /// Start at the last N lines instead of at `offset`.
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) tail: Option<u64>,
    /// Answer in records counting offsets in the output index, also for one stream.
    #[serde(default)]
    pub(crate) records: Option<String>,
}

/// A chunk of one attempt's output, as read from its agent.
#[derive(Debug, Clone)]
pub(crate) struct LogChunk {
    pub(crate) attempt: u32,
    pub(crate) replica: u32,
    pub(crate) node: String,
    pub(crate) stream: LogStream,
    pub(crate) start_offset: u64,
    pub(crate) next_offset: u64,
    pub(crate) data: Vec<u8>,
    pub(crate) job_state: JobState,
    pub(crate) cursor: LogCursor,
    /// With [`LogCursor::Records`]: the output chunk by chunk (`data` is then empty).
    pub(crate) records: Vec<LogRecord>,
}

/// One chunk of output as the agent read it from one of the job's pipes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogRecord {
    pub(crate) stream: LogStream,
    pub(crate) at_ms: u64,
    pub(crate) data: Vec<u8>,
}

/// What a log read's offsets count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogCursor {
    /// Bytes of the one stream read (`stream` stdout or stderr without `since`, `tail` or `records`).
    Bytes,
    /// Bytes of the attempt's output index, which records every chunk of either stream in the order the
    /// agent read it and when.
    Records,
}

impl LogCursor {
    /// The name the gRPC reply carries.
    pub fn as_str(self) -> &'static str {
        match self {
            LogCursor::Bytes => "bytes",
            LogCursor::Records => "records",
        }
    }
}

/// One chunk of a job's output as its agent read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = JobLogRecord)]
pub struct JobLogRecordView {
    /// `stdout` or `stderr`.
    pub stream: LogStream,
    /// When the agent read it from the job's pipe, Unix milliseconds of the agent's clock.
    pub at_ms: u64,
    /// The bytes as UTF-8 (invalid sequences replaced).
    pub data: String,
}

/// `GET /v1/jobs/{id}/logs`: the chunk as text.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = JobLogs)]
pub struct JobLogsView {
    pub attempt: u32,
    pub replica: u32,
    pub node: String,
    /// `all` when both streams were read merged.
    pub stream: LogStream,
    pub start_offset: u64,
    /// Where the next read starts (pass it as `offset`, with the same `stream` and `records`).
    pub next_offset: u64,
    /// The bytes as UTF-8 (invalid sequences replaced).
    pub data: String,
    pub job_state: JobState,
    /// The job is in a terminal state: once a read returns no data, there is no more.
    pub done: bool,
    /// What `start_offset` and `next_offset` count.
    pub cursor: LogCursor,
    /// With the `records` cursor: the output chunk by chunk, each with its stream and time (`data` is
    /// their concatenation); empty with the `bytes` cursor.
    pub records: Vec<JobLogRecordView>,
}

impl From<LogChunk> for JobLogsView {
    /// A multi-byte character cut at the end of the chunk is left for the next read (the offset stops
    /// before it), so following a stream chunk by chunk never garbles text.
    fn from(c: LogChunk) -> Self {
        let (next_offset, data, records) = match c.cursor {
            // Each record on its own: a character split between two reads of a pipe comes out replaced.
            LogCursor::Records => {
                let records: Vec<JobLogRecordView> = c
                    .records
                    .into_iter()
                    .map(|r| JobLogRecordView {
                        stream: r.stream,
                        at_ms: r.at_ms,
                        data: String::from_utf8_lossy(&r.data).into_owned(),
                    })
                    .collect();
                let data = records.iter().map(|r| r.data.as_str()).collect();
                (c.next_offset, data, records)
            }
            LogCursor::Bytes => {
                let held_back = match incomplete_utf8_tail(&c.data) {
                    // Only the incomplete bytes: hand them out (lossy) so a reader always moves forward.
                    Some(n) if n < c.data.len() => n,
                    _ => 0,
                };
                let keep = c.data.len() - held_back;
                (
                    c.next_offset.saturating_sub(held_back as u64),
                    String::from_utf8_lossy(&c.data[..keep]).into_owned(),
                    Vec::new(),
                )
            }
        };
        JobLogsView {
            attempt: c.attempt,
            replica: c.replica,
            node: c.node,
            stream: c.stream,
            start_offset: c.start_offset,
            next_offset,
            data,
            job_state: c.job_state,
            done: c.job_state.is_terminal(),
            cursor: c.cursor,
            records,
        }
    }
}

/// What a failed log read from the agent of `node` tells the caller about `what` (`2 of job j`): the agent's
/// NOT_FOUND (with its reason, e.g. the output was removed after the retention period) is a 404, anything
/// else means the agent could not be reached (503).
fn log_read_error(e: protocol::rpc::RpcError, what: &str, node: &str) -> ServiceError {
    match e {
        protocol::rpc::RpcError::Remote(status)
            if status.code == protocol::rpc::StatusCode::NotFound =>
        {
            let mut not_found =
                ServiceError::not_found("output of attempt", &format!("{what} on node {node}"));
            if !status.message.is_empty() {
                not_found.message = format!("{}: {}", not_found.message, status.message);
            }
            not_found
        }
        // The transport's own words name the agent's internal address (and the agent's, its paths): they go
        // to the coordinator's log, never to the caller.
        other => {
            tracing::warn!(node, error = %other, "reading a job's output from its agent failed");
            ServiceError::unavailable(format!(
                "the agent of node {node} could not be reached for the output; try again (the coordinator's log has the details)"
            ))
        }
    }
}

/// The length of an incomplete (so far well-formed) UTF-8 sequence at the end of `data`, if there is one.
fn incomplete_utf8_tail(data: &[u8]) -> Option<usize> {
    let start = data.len().saturating_sub(3);
    for i in (start..data.len()).rev() {
        let b = data[i];
        if b & 0b1100_0000 == 0b1000_0000 {
            // A continuation byte: the lead byte is further back.
            continue;
        }
        let needed = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return None,
        };
        let have = data.len() - i;
        return (have < needed).then_some(have);
    }
    None
}

/// One of an attempt's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Both, merged in the order the agent read them from the job's two pipes.
    All,
}

impl LogStream {
    /// The name `stream` takes and the agent reads.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::All => "all",
        }
    }

    /// The stream an agent's record names.
    fn of_record(name: &str) -> Option<LogStream> {
        match name {
            "stdout" => Some(LogStream::Stdout),
            "stderr" => Some(LogStream::Stderr),
            _ => None,
        }
    }
}

/// The stream a `stream` query names; both when it names none.
fn log_stream(s: Option<&str>) -> Result<LogStream, ServiceError> {
    match s.map(str::trim) {
        None | Some("") | Some("all") => Ok(LogStream::All),
        Some("stdout") => Ok(LogStream::Stdout),
        Some("stderr") => Ok(LogStream::Stderr),
        Some(name) => Err(invalid(
            "stream",
            format!("{name:?} is not all, stdout or stderr"),
        )),
    }
}

/// How a read selects output beyond its stream: whether it reads the output index, from when, and whether
/// it starts at the last lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Selection {
    records: bool,
    since_ms: u64,
    tail_lines: Option<u32>,
}

/// Most lines `tail` may ask for.
const MAX_TAIL_LINES: u64 = 1_000_000;

fn selection(stream: LogStream, query: &LogsQuery) -> Result<Selection, ServiceError> {
    let since_ms = match query.since.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(parse_instant_ms(t).map_err(|e| invalid("since", e))?),
    };
    let tail_lines = match query.tail {
        None => None,
        Some(n) if n <= MAX_TAIL_LINES => u32::try_from(n).ok(),
        Some(_) => return Err(invalid("tail", format!("at most {MAX_TAIL_LINES} lines"))),
    };
    let asked = match query.records.as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(invalid(
                "records",
                format!("{other:?} is not true or false"),
            ))
        }
    };
    Ok(Selection {
        records: asked || stream == LogStream::All || since_ms.is_some() || tail_lines.is_some(),
        since_ms: since_ms.unwrap_or(0),
        tail_lines,
    })
}

impl AdminService {
    pub(crate) async fn read_job_logs(
        &self,
        scope: &RequestScope,
        id: &str,
        query: &LogsQuery,
    ) -> Result<LogChunk, ServiceError> {
        let stream = log_stream(query.stream.as_deref())?;
        let select = selection(stream, query)?;
        let max_bytes = match query.max_bytes {
            None | Some(0) => DEFAULT_LOG_BYTES,
            Some(n) => n.min(MAX_LOG_BYTES),
        };
        let wanted = match query.attempt {
            None | Some(0) => None,
            Some(n) => {
                Some(u32::try_from(n).map_err(|_| invalid("attempt", "no such attempt number"))?)
            }
        };
        let replica = match query.replica {
            None => 0,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|r| *r < MAX_REPLICAS)
                .ok_or_else(|| invalid("replica", format!("must be 0-{}", MAX_REPLICAS - 1)))?,
        };
        let job = self.scoped_job(scope, id).await?;
        if replica >= job.spec.replicas {
            return Err(invalid(
                "replica",
                format!(
                    "job {id} has {} replica(s), numbered from 0",
                    job.spec.replicas
                ),
            ));
        }
        let attempt = match wanted {
            Some(n) => job
                .attempts
                .iter()
                .find(|a| a.attempt == n && a.replica == replica)
                .ok_or_else(|| {
                    ServiceError::new(
                        ErrorKind::NotFound,
                        format!("job {id} has no attempt {n}"),
                    )
                })?,
            None => job
                .attempts
                .iter()
                .rev()
                .find(|a| a.replica == replica && !a.node.is_empty())
                .ok_or_else(|| {
                    let why = match &job.pending_reason {
                        Some(r) if job.state == JobState::Pending => format!(" ({r})"),
                        _ => String::new(),
                    };
                    ServiceError::conflict(format!(
                        "job {id} has not run on any node yet: it is {}{why}, so there is no output to read",
                        job.state.as_str()
                    ))
                })?,
        };
        let node = attempt.node.clone();
        let rpc_addr = self
            .handle()
            .read(|s| s.node(&node).map(|n| n.rpc_addr.clone()))
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                ServiceError::unavailable(format!(
                    "node {node} has no known agent address; its output cannot be read now"
                ))
            })?;
        let request = pb::ReadLogsRequest {
            job_id: id.to_owned(),
            attempt: attempt.attempt,
            replica: attempt.replica,
            stream: stream.as_str().to_owned(),
            offset: query.offset.unwrap_or(0),
            // Bounded by MAX_LOG_BYTES.
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            records: select.records,
            since_ms: select.since_ms,
            tail_lines: select.tail_lines,
        };
        let resp = self
            .handle()
            .read_job_logs(&rpc_addr, &request)
            .await
            .map_err(|e| log_read_error(e, &format!("{} of job {id}", attempt.attempt), &node))?;
        // The job may have moved on while we read; report its state as of now.
        let job_state = self
            .handle()
            .read(|s| s.job(&scope.project_id, id).map(|j| j.state))
            .unwrap_or(job.state);
        Ok(LogChunk {
            attempt: attempt.attempt,
            replica: attempt.replica,
            node,
            stream,
            start_offset: resp.start_offset,
            next_offset: resp.next_offset,
            data: resp.data,
            job_state,
            cursor: if select.records {
                LogCursor::Records
            } else {
                LogCursor::Bytes
            },
            records: resp
                .records
                .into_iter()
                .filter_map(|r| {
                    Some(LogRecord {
                        stream: LogStream::of_record(&r.stream)?,
                        at_ms: r.at_ms,
                        data: r.data,
                    })
                })
                .collect(),
        })
    }
}

/// The gRPC reply of a read, every field of the chunk accounted for.
pub(super) fn grpc_reply(c: LogChunk) -> pb::ReadJobLogsResponse {
    let LogChunk {
        attempt,
        replica,
        node,
        stream,
        start_offset,
        next_offset,
        data,
        job_state,
        cursor,
        records,
    } = c;
    let data = if cursor == LogCursor::Records {
        records
            .iter()
            .flat_map(|r| r.data.iter().copied())
            .collect()
    } else {
        data
    };
    pb::ReadJobLogsResponse {
        attempt,
        replica,
        node,
        stream: stream.as_str().to_owned(),
        start_offset,
        next_offset,
        data,
        job_state: job_state.as_str().to_owned(),
        done: job_state.is_terminal(),
        cursor: cursor.as_str().to_owned(),
        records: records
            .into_iter()
            .map(
                |LogRecord {
                     stream,
                     at_ms,
                     data,
                 }| pb::JobLogRecord {
                    stream: stream.as_str().to_owned(),
                    at_ms,
                    data,
                },
            )
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_log_read_does_not_tell_the_caller_the_agents_address() {
        use protocol::rpc::{RpcError, RpcStatus};
        for e in [
            RpcError::Transport("connecting to 10.20.30.40:7300: connection refused".into()),
            RpcError::Remote(RpcStatus::internal(
                "reading /var/lib/meridian/agent/jobs/j1/1/stdout.log at 10.20.30.40",
            )),
            RpcError::Refused("peer 10.20.30.40:7300 presented a wrong identity".into()),
        ] {
            let answer = log_read_error(e, "1 of job j1", "eu/eu1/n1");
            assert_eq!(answer.kind, ErrorKind::Unavailable);
            assert!(
                !answer.message.contains("10.20.30.40"),
                "{}",
                answer.message
            );
            assert!(!answer.message.contains("/var/lib"), "{}", answer.message);
            assert!(answer.message.contains("eu/eu1/n1"), "{}", answer.message);
        }
    }

    #[test]
    fn a_log_read_the_agent_refused_says_why() {
        use protocol::rpc::{RpcError, RpcStatus, StatusCode};
        let gone = RpcError::Remote(RpcStatus::new(
            StatusCode::NotFound,
            "removed after the retention period",
        ));
        let e = log_read_error(gone, "2 of job j", "eu/eu1/a1");
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.message,
            "output of attempt 2 of job j on node eu/eu1/a1 not found: removed after the retention period"
        );
        let e = log_read_error(RpcError::Timeout, "2 of job j", "eu/eu1/a1");
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("eu/eu1/a1"), "{}", e.message);
    }

    #[test]
    fn log_chunks_never_end_inside_a_character() {
        let chunk = |data: &[u8]| LogChunk {
            attempt: 1,
            replica: 0,
            node: "eu/eu1/a1".into(),
            stream: LogStream::Stdout,
            start_offset: 10,
            next_offset: 10 + data.len() as u64,
            data: data.to_vec(),
            job_state: JobState::Running,
            cursor: LogCursor::Bytes,
            records: Vec::new(),
        };
        let whole = JobLogsView::from(chunk("héllo".as_bytes()));
        assert_eq!((whole.data.as_str(), whole.next_offset), ("héllo", 16));
        // "aé" cut after the first byte of "é": the byte is read again next time.
        let cut = JobLogsView::from(chunk(&[b'a', 0xC3]));
        assert_eq!((cut.data.as_str(), cut.next_offset), ("a", 11));
        // Only the incomplete bytes: hand them out (lossy) so a reader always moves forward.
        let alone = JobLogsView::from(chunk(&[0xE2, 0x82]));
        assert_eq!(alone.next_offset, 12);
        assert!(!alone.data.is_empty());
        let invalid = JobLogsView::from(chunk(&[b'a', 0xFF]));
        assert_eq!(invalid.next_offset, 12);
        assert!(!JobLogsView::from(chunk(b"")).done);
    }

    #[test]
    fn streams_default_to_all_and_anything_but_a_plain_stream_reads_records() {
        assert_eq!(log_stream(None), Ok(LogStream::All));
        assert_eq!(log_stream(Some("stderr")), Ok(LogStream::Stderr));
        assert!(log_stream(Some("both")).is_err_and(|e| e.message.starts_with("stream: ")));
        let q = |since: Option<&str>, tail: Option<u64>, records: Option<&str>| LogsQuery {
            since: since.map(str::to_owned),
            tail,
            records: records.map(str::to_owned),
            ..LogsQuery::default()
        };
        // An old client naming one stream reads bytes, as before.
        let plain = selection(LogStream::Stdout, &q(None, None, None)).expect("valid");
        assert!(!plain.records);
        assert!(
            selection(LogStream::All, &q(None, None, None))
                .expect("valid")
                .records
        );
        let since = selection(
            LogStream::Stderr,
            &q(Some("2026-11-27T09:30:00Z"), None, None),
        )
        .expect("valid");
        assert_eq!((since.records, since.since_ms), (true, 1_795_771_800_000));
        let tail = selection(LogStream::Stdout, &q(None, Some(3), None)).expect("valid");
        assert_eq!((tail.records, tail.tail_lines), (true, Some(3)));
        assert!(
            selection(LogStream::Stdout, &q(None, None, Some("true")))
                .expect("valid")
                .records
        );
        for (bad, field) in [
            (q(Some("soon"), None, None), "since"),
            (q(None, Some(MAX_TAIL_LINES + 1), None), "tail"),
            (q(None, None, Some("maybe")), "records"),
        ] {
            let e = selection(LogStream::All, &bad).expect_err("invalid");
            assert!(
                e.message.starts_with(&format!("{field}: ")),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn a_records_reply_carries_each_chunk_and_their_text() {
        let chunk = LogChunk {
            attempt: 1,
            replica: 0,
            node: "eu/eu1/a1".into(),
            stream: LogStream::All,
            start_offset: 0,
            next_offset: 48,
            data: Vec::new(),
            job_state: JobState::Running,
            cursor: LogCursor::Records,
            records: vec![
                LogRecord {
                    stream: LogStream::Stdout,
                    at_ms: 5,
                    data: b"out\n".to_vec(),
                },
                LogRecord {
                    stream: LogStream::Stderr,
                    at_ms: 6,
                    data: b"err\n".to_vec(),
                },
            ],
        };
        let view = JobLogsView::from(chunk.clone());
        assert_eq!(view.data, "out\nerr\n");
        assert_eq!(view.records.len(), 2);
        assert_eq!(
            (view.records[1].stream, view.records[1].at_ms),
            (LogStream::Stderr, 6)
        );
        let reply = grpc_reply(chunk);
        assert_eq!(reply.data, b"out\nerr\n".to_vec());
        assert_eq!(
            (reply.cursor.as_str(), reply.stream.as_str()),
            ("records", "all")
        );
        assert_eq!(reply.records[0].stream, "stdout");
    }
}
