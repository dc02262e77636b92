//! `meridian job logs` and the output half of `job run --wait`: reading a job attempt's output through the
//! admin API and writing it to stdout as it was written — both streams merged in the order the agent read
//! them (or one stream), from the last lines or from a time, each line prefixed with the time it was read
//! when asked — once, or following it until the job has ended.
//!
//! Owns the read cursor (which attempt, which offset) and the line prefixes; never prints anything but
//! the job's output to stdout (notes about attempts go to stderr), and never waits by sleeping a fixed
//! time in place of a condition: a follower polls with a short, growing interval.

use std::time::Duration;

use clap::Args;
use coordinator::api::dto::{JobLogRecordView, JobLogsView, JobView, LogCursor};

use crate::client::{ApiClient, ClientError};
use crate::output;

use super::get_as;
use super::jobs::{ending, job_path, pause, POLL_FAILURES_TOLERATED, POLL_FIRST};

/// Bytes asked for per log read.
const LOG_CHUNK: u64 = 1 << 20;

/// Which of a job's output `job logs` prints, and how.
#[derive(Debug, Clone, Default, Args)]
pub struct LogSelectArgs {
    /// Only stdout (by default both streams, merged in the order the agent read them).
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,
    /// Only stderr.
    #[arg(long)]
    pub stderr: bool,
    /// Start with the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// Only output written at or after this time: a duration ago (30s, 10m, 1h30m) or an RFC 3339 time.
    #[arg(long, value_name = "DURATION|RFC3339", value_parser = since_arg)]
    pub since: Option<Since>,
    /// Prefix each line with the RFC 3339 time the agent read it from the job.
    #[arg(long)]
    pub timestamps: bool,
}

/// `--since`: a time, or how long ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(u64),
}

impl Since {
    /// Unix milliseconds, for a read made at `now_ms`.
    fn at(self, now_ms: u64) -> u64 {
        match self {
            Since::At(ms) => ms,
            Since::Ago(d) => {
                now_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
        }
    }
}

fn since_arg(s: &str) -> Result<Since, String> {
    if let Ok(d) = coordinator::api::parse_duration(s) {
        return Ok(Since::Ago(d));
    }
    coordinator::api::parse_instant_ms(s)
        .map(Since::At)
        .map_err(|_| format!("{s:?} is neither a duration (10m, 1h30m) nor an RFC 3339 time"))
}

/// What one read of a follower did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Output was printed or the cursor moved: read again at once.
    Moved,
    /// Nothing new; `done` when the job has ended (so nothing more will come).
    Idle { done: bool },
    /// Whoever reads our stdout has gone (`| head`): stop.
    Closed,
}

/// Reads one job's output chunk by chunk and prints it.
pub(crate) struct LogFollower {
    id: String,
    stream: &'static str,
    records: bool,
    since_ms: Option<u64>,
    /// Asked for on the first read of an attempt only.
    tail: Option<u32>,
    attempt: Option<u32>,
    replica: u32,
    current: Option<u32>,
    offset: u64,
    printer: LinePrinter,
}

impl LogFollower {
    pub(crate) fn new(
        id: &str,
        select: &LogSelectArgs,
        attempt: Option<u32>,
        replica: u32,
    ) -> LogFollower {
        let stream = match (select.stdout, select.stderr) {
            (true, _) => "stdout",
            (_, true) => "stderr",
            _ => "all",
        };
        LogFollower {
            id: id.to_owned(),
            stream,
            records: stream == "all"
                || select.tail.is_some()
                || select.since.is_some()
                || select.timestamps,
            since_ms: select.since.map(|s| s.at(output::now_ms())),
            tail: select.tail,
            attempt,
            replica,
            current: None,
            offset: 0,
            printer: LinePrinter::new(select.timestamps),
        }
    }

    fn path(&self) -> String {
        let mut path = format!(
            "{}/logs?stream={}&offset={}&max_bytes={LOG_CHUNK}",
            job_path(&self.id),
            self.stream,
            self.offset
        );
        if self.records {
            path.push_str("&records=true");
        }
        if let Some(since) = self.since_ms {
            path.push_str(&format!("&since={since}"));
        }
        if let Some(n) = self.tail {
            path.push_str(&format!("&tail={n}"));
        }
        if let Some(n) = self.attempt {
            path.push_str(&format!("&attempt={n}"));
        }
        if self.replica > 0 {
            path.push_str(&format!("&replica={}", self.replica));
        }
        path
    }

    /// One read: prints what came. Without a pinned attempt, a newer attempt is announced on stderr and
    /// read from its beginning. A job not yet on a node is `ClientError::Conflict`.
    pub(crate) async fn step(&mut self, api: &ApiClient) -> Result<Step, ClientError> {
        let chunk: JobLogsView = get_as(api, &self.path()).await?;
        if self.attempt.is_none() && self.current.is_some() && self.current != Some(chunk.attempt) {
            output::note(&format!(
                "--- attempt {} on {} ---",
                chunk.attempt, chunk.node
            ));
            self.current = Some(chunk.attempt);
            self.offset = 0;
            self.printer.at_line_start = true;
            return Ok(Step::Moved);
        }
        self.current = Some(chunk.attempt);
        // The last lines are where the first read of an attempt starts; later reads go on from there.
        self.tail = None;
        let printed = match chunk.cursor {
            LogCursor::Records => self.printer.records(&chunk.records),
            LogCursor::Bytes => self.printer.text(chunk.data.as_bytes(), None),
        };
        match printed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(Step::Closed),
            Err(e) => return Err(ClientError::Failed(format!("writing the output: {e}"))),
        }
        let moved = chunk.next_offset != self.offset || !chunk.data.is_empty();
        self.offset = chunk.next_offset;
        Ok(if moved {
            Step::Moved
        } else {
            Step::Idle { done: chunk.done }
        })
    }
}

/// Writes output to stdout, prefixing each line with its time when asked.
pub(crate) struct LinePrinter {
    timestamps: bool,
    at_line_start: bool,
}

impl LinePrinter {
    pub(crate) fn new(timestamps: bool) -> LinePrinter {
        LinePrinter {
            timestamps,
            at_line_start: true,
        }
    }

    fn records(&mut self, records: &[JobLogRecordView]) -> std::io::Result<()> {
        for r in records {
            self.text(r.data.as_bytes(), Some(r.at_ms))?;
        }
        Ok(())
    }

    /// Writes `data`, read at `at_ms` (when known).
    fn text(&mut self, data: &[u8], at_ms: Option<u64>) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let Some(at_ms) = at_ms.filter(|_| self.timestamps) else {
            return output::raw(data);
        };
        output::raw(&self.prefixed(data, at_ms))
    }

    /// `data` with each line that starts in it prefixed by `<RFC 3339 time> `.
    fn prefixed(&mut self, data: &[u8], at_ms: u64) -> Vec<u8> {
        let stamp = format!("{} ", output::time_ms(at_ms));
        let mut out = Vec::with_capacity(data.len() + stamp.len());
        for line in data.split_inclusive(|b| *b == b'\n') {
            if self.at_line_start {
                out.extend_from_slice(stamp.as_bytes());
            }
            out.extend_from_slice(line);
            self.at_line_start = line.ends_with(b"\n");
        }
        out
    }
}

/// `meridian job logs`: a job's output from the start (or its last lines, or from a time): everything there
/// is, or with `follow` until the job has ended and its output is drained. Without `--attempt`, a newer
/// attempt that starts while following is printed from its beginning after a note.
pub(crate) async fn logs(
    id: &str,
    follow: bool,
    select: &LogSelectArgs,
    attempt: Option<u32>,
    replica: u32,
    api: &ApiClient,
) -> Result<(), ClientError> {
    let mut follower = LogFollower::new(id, select, attempt, replica);
    let mut interval = POLL_FIRST;
    let mut failures = 0;
    loop {
        let step = match follower.step(api).await {
            Ok(step) => step,
            // Not on a node yet: wait for it to start, unless it ended without ever running.
            Err(ClientError::Conflict(_)) if follow => {
                let job: JobView = get_as(api, &job_path(id)).await?;
                if job.state.is_terminal() {
                    output::note(&format!("{}; it produced no output", ending(&job)));
                    return Ok(());
                }
                pause(&mut interval).await;
                continue;
            }
            // The agent or the coordinator is briefly away: keep following while the job may still run.
            Err(ClientError::Unavailable(message)) if follow => {
                failures += 1;
                let job = get_as::<JobView>(api, &job_path(id)).await.ok();
                if failures > POLL_FAILURES_TOLERATED
                    || job.as_ref().is_some_and(|j| j.state.is_terminal())
                {
                    return Err(ClientError::Unavailable(message));
                }
                pause(&mut interval).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        failures = 0;
        match step {
            Step::Closed => return Ok(()),
            Step::Moved => interval = POLL_FIRST,
            Step::Idle { done } if !follow || done => return Ok(()),
            Step::Idle { .. } => pause(&mut interval).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_prefix_each_line_where_it_starts() {
        let mut p = LinePrinter::new(true);
        let at = 1_790_000_000_250;
        let stamp = output::time_ms(at);
        assert_eq!(
            String::from_utf8(p.prefixed(b"a\nb", at)).expect("utf8"),
            format!("{stamp} a\n{stamp} b")
        );
        // The line "b" continues in the next record: no second prefix.
        let later = at + 1000;
        let stamp2 = output::time_ms(later);
        assert_eq!(
            String::from_utf8(p.prefixed(b"c\nd\n", later)).expect("utf8"),
            format!("c\n{stamp2} d\n")
        );
        assert!(stamp.ends_with('Z') && stamp.contains('T'), "{stamp}");
    }

    #[test]
    fn since_reads_a_duration_ago_or_a_time() {
        assert_eq!(since_arg("10m"), Ok(Since::Ago(Duration::from_secs(600))));
        assert_eq!(
            since_arg("2026-11-27T09:30:00Z"),
            Ok(Since::At(1_795_771_800_000))
        );
        assert!(since_arg("yesterday").is_err());
        assert_eq!(Since::Ago(Duration::from_secs(1)).at(5_000), 4_000);
    }

    #[test]
    fn a_plain_stream_read_asks_as_before_and_anything_else_asks_for_records() {
        let plain = LogFollower::new(
            "job_1",
            &LogSelectArgs {
                stderr: true,
                ..LogSelectArgs::default()
            },
            None,
            0,
        );
        assert_eq!(
            plain.path(),
            "/v1/jobs/job_1/logs?stream=stderr&offset=0&max_bytes=1048576"
        );
        let merged = LogFollower::new(
            "job_1",
            &LogSelectArgs {
                tail: Some(3),
                ..LogSelectArgs::default()
            },
            Some(2),
            1,
        );
        assert_eq!(
            merged.path(),
            "/v1/jobs/job_1/logs?stream=all&offset=0&max_bytes=1048576&records=true&tail=3&attempt=2&replica=1"
        );
    }
}
