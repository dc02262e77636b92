//! The agent's local database, `<data_dir>/agent.db` (sled): one record per process (job, attempt,
//! replica) this node was given, and the queue of job events not yet answered by a coordinator.
//!
//! Keys of the `attempts` tree are `job_id NUL attempt_be32`, followed by `replica_be32` when the
//! replica is not 0. A job id never contains NUL, and the attempt and replica have a fixed width, so a
//! key names exactly one (job, attempt, replica); every record of a job starts with `job_id NUL`, every
//! replica of an attempt with `job_id NUL attempt_be32`; and byte order is (job id, attempt, replica)
//! order, because replica 0's key is a prefix of its siblings' (it sorts first) and the big-endian
//! replica sorts the rest. Replica 0's key is the one the store used before gang jobs existed, so a
//! database written then opens unchanged: its records load as replica 0 (the new fields default).
//!
//! Owns durability of what the agent must not forget across a restart: which attempts exist (so none is
//! ever launched twice), the process handle of each running one (so it can be re-adopted), and every
//! unsent report (so each is delivered exactly once). Every change that matters is flushed before the
//! call returns. An attempt's end and its final report are written in one transaction, so a finished
//! attempt always has its report queued. This module never launches, signals or reports anything itself,
//! and sled stays behind it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use prost::Message;
use protocol::pb;
use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::exec::ProcessHandle;

use super::{Assignment, AttemptKey, StopReason};

/// File name of the database inside the agent's data directory.
pub const DB_NAME: &str = "agent.db";

const ATTEMPTS_TREE: &str = "attempts";
const REPORTS_TREE: &str = "reports";

/// Why the local database failed. Every variant is fatal for the agent: it can no longer promise
/// exactly-once reports or re-adoption.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("agent database {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("agent database: {0}")]
    Sled(#[from] sled::Error),
    #[error("agent database holds an unreadable {what} record: {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("encoding an attempt record: {0}")]
    Encode(String),
}

/// Where an attempt is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptPhase {
    /// Recorded, launch under way. Found at start-up, it means the agent stopped mid-launch.
    Launching,
    /// The process runs (its handle is in the record).
    Running,
    /// Over: ended, failed to launch, vanished, or never launched because it was cancelled first.
    Finished,
}

/// How a finished attempt ended, as reported (or to be reported) in a `JobExited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitSummary {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub cancelled: bool,
    pub timed_out: bool,
    pub cpu_time_ms: Option<u64>,
    pub max_rss_bytes: Option<u64>,
    pub wall_ms: u64,
}

impl ExitSummary {
    /// The wire form.
    pub fn to_pb(&self) -> pb::JobExited {
        pb::JobExited {
            exit_code: self.exit_code,
            signal: self.signal,
            cancelled: self.cancelled,
            timed_out: self.timed_out,
            cpu_time_ms: self.cpu_time_ms,
            max_rss_bytes: self.max_rss_bytes,
            wall_ms: self.wall_ms,
        }
    }
}

/// Everything the agent keeps about one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// What the coordinator assigned.
    pub assignment: Assignment,
    pub phase: AttemptPhase,
    /// The process, once launched (kept after it ended: its log directory is where the output is).
    pub handle: Option<ProcessHandle>,
    /// Why the agent stopped (or is stopping) the process, if it did.
    pub stop: Option<StopReason>,
    /// How it ended, once finished with a known process status.
    pub exit: Option<ExitSummary>,
    /// A final event (exited, launch failed, vanished) was queued for it at some point.
    pub final_reported: bool,
}

impl AttemptRecord {
    /// A new record for an attempt about to be launched.
    pub fn launching(assignment: Assignment) -> AttemptRecord {
        AttemptRecord {
            assignment,
            phase: AttemptPhase::Launching,
            handle: None,
            stop: None,
            exit: None,
            final_reported: false,
        }
    }

    pub fn job_id(&self) -> &str {
        &self.assignment.job_id
    }

    pub fn attempt(&self) -> u32 {
        self.assignment.attempt
    }

    pub fn replica(&self) -> u32 {
        self.assignment.replica
    }

    /// The (job id, attempt, replica) that names the record.
    pub fn key(&self) -> AttemptKey {
        self.assignment.key()
    }

    /// Where the attempt's output is kept; `None` when no process was ever started.
    pub fn log_dir(&self) -> Option<&Path> {
        self.handle.as_ref().map(|h| h.log.dir.as_path())
    }
}

/// A queued event and its place in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEvent {
    pub seq: u64,
    pub event: pb::JobEvent,
}

/// The agent's sled database. Cheap to share in an `Arc`; every method blocks briefly on disk.
pub struct JobStore {
    path: PathBuf,
    db: sled::Db,
    attempts: sled::Tree,
    reports: sled::Tree,
    /// The next queue sequence number; held while an event is inserted, so the queue's order is the
    /// order events were queued in.
    next_seq: Mutex<u64>,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The record's key; the module documentation gives the format and why its order is (job, attempt,
/// replica).
fn attempt_key(key: &AttemptKey) -> Vec<u8> {
    // A job id never contains NUL (the coordinator's ids are `[A-Za-z0-9_-]`); the separator keeps
    // `a` + attempt 1 apart from any other job id's prefix.
    let mut bytes = Vec::with_capacity(key.job_id.len() + 9);
    bytes.extend_from_slice(key.job_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&key.attempt.to_be_bytes());
    if key.replica != 0 {
        bytes.extend_from_slice(&key.replica.to_be_bytes());
    }
    bytes
}

impl JobStore {
    /// Opens (creating if needed) `<data_dir>/agent.db`.
    pub fn open(data_dir: &Path) -> Result<JobStore, StoreError> {
        let path = data_dir.join(DB_NAME);
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new().path(&path).open().map_err(open_error)?;
        let attempts = db.open_tree(ATTEMPTS_TREE).map_err(open_error)?;
        let reports = db.open_tree(REPORTS_TREE).map_err(open_error)?;
        let next_seq = match reports.last().map_err(open_error)? {
            Some((key, _)) => seq_of(&key)?.saturating_add(1),
            None => 1,
        };
        Ok(JobStore {
            path,
            db,
            attempts,
            reports,
            next_seq: Mutex::new(next_seq),
        })
    }

    /// The database's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One process's record.
    pub fn attempt(&self, key: &AttemptKey) -> Result<Option<AttemptRecord>, StoreError> {
        self.attempts
            .get(attempt_key(key))?
            .map(|bytes| decode_record(&bytes))
            .transpose()
    }

    /// Every record, in (job id, attempt, replica) order.
    pub fn attempts(&self) -> Result<Vec<AttemptRecord>, StoreError> {
        self.attempts
            .iter()
            .map(|entry| {
                let (_, bytes) = entry?;
                decode_record(&bytes)
            })
            .collect()
    }

    /// Records a process that is about to be launched, unless one with the same job id, attempt and
    /// replica exists (then nothing changes and `false` is returned): the guard against launching twice.
    pub fn begin_launch(&self, record: &AttemptRecord) -> Result<bool, StoreError> {
        let key = attempt_key(&record.key());
        let swapped =
            self.attempts
                .compare_and_swap(key, None::<&[u8]>, Some(encode_record(record)?))?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.db.flush()?;
        Ok(true)
    }

    /// Writes a record (replacing the process's previous one).
    pub fn save(&self, record: &AttemptRecord) -> Result<(), StoreError> {
        self.attempts
            .insert(attempt_key(&record.key()), encode_record(record)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// Writes a record and queues an event about it in one transaction; returns the event's sequence
    /// number.
    pub fn save_with_event(
        &self,
        record: &AttemptRecord,
        event: &pb::JobEvent,
    ) -> Result<u64, StoreError> {
        let key = attempt_key(&record.key());
        let value = encode_record(record)?;
        let seq = self.insert_event(Some((&key, &value)), event)?;
        self.db.flush()?;
        Ok(seq)
    }

    /// Queues an event; returns its sequence number.
    pub fn queue_event(&self, event: &pb::JobEvent) -> Result<u64, StoreError> {
        let seq = self.insert_event(None, event)?;
        self.db.flush()?;
        Ok(seq)
    }

    fn insert_event(
        &self,
        record: Option<(&[u8], &[u8])>,
        event: &pb::JobEvent,
    ) -> Result<u64, StoreError> {
        let mut next = self.next_seq.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = *next;
        let event_bytes = event.encode_to_vec();
        (&self.attempts, &self.reports)
            .transaction(|(attempts, reports)| {
                if let Some((key, value)) = record {
                    attempts.insert(key, value)?;
                }
                reports.insert(seq.to_be_bytes().to_vec(), event_bytes.as_slice())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                // The closure never aborts.
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Encode("transaction aborted".into())
                }
            })?;
        *next = seq.saturating_add(1);
        Ok(seq)
    }

    /// Up to `limit` queued events, oldest first.
    pub fn pending_events(&self, limit: usize) -> Result<Vec<QueuedEvent>, StoreError> {
        self.reports
            .iter()
            .take(limit)
            .map(|entry| {
                let (key, bytes) = entry?;
                Ok(QueuedEvent {
                    seq: seq_of(&key)?,
                    event: decode_event(&bytes)?,
                })
            })
            .collect()
    }

    /// How many events are queued.
    pub fn pending_count(&self) -> usize {
        self.reports.len()
    }

    /// Removes answered events from the queue.
    pub fn remove_events(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for seq in seqs {
            batch.remove(seq.to_be_bytes().to_vec());
        }
        self.reports.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The processes to announce in a registration: those running (or being launched) now, and
    /// finished ones whose final report is still queued, in (job id, attempt, replica) order, each
    /// with its replica.
    pub fn held(&self) -> Result<Vec<pb::HeldAttempt>, StoreError> {
        // Attempts first, then the queue: an attempt that finishes in between is seen running in the
        // first scan, so the result never misses one.
        let mut held: Vec<AttemptKey> = self
            .attempts()?
            .into_iter()
            .filter(|r| r.phase != AttemptPhase::Finished)
            .map(|r| r.key())
            .collect();
        for entry in self.reports.iter() {
            let (_, bytes) = entry?;
            let event = decode_event(&bytes)?;
            if is_final(&event) {
                held.push(AttemptKey::new(event.job_id, event.attempt, event.replica));
            }
        }
        held.sort();
        held.dedup();
        Ok(held
            .into_iter()
            .map(|key| pb::HeldAttempt {
                job_id: key.job_id,
                attempt: key.attempt,
                replica: key.replica,
            })
            .collect())
    }
}

/// Whether an event ends its attempt.
pub fn is_final(event: &pb::JobEvent) -> bool {
    use pb::job_event::Kind;
    matches!(
        event.kind,
        Some(Kind::Exited(_) | Kind::LaunchFailed(_) | Kind::Vanished(_))
    )
}

fn encode_record(record: &AttemptRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Encode(e.to_string()))
}

fn decode_record(bytes: &[u8]) -> Result<AttemptRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: "attempt",
        message: e.to_string(),
    })
}

fn decode_event(bytes: &[u8]) -> Result<pb::JobEvent, StoreError> {
    pb::JobEvent::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: "report",
        message: e.to_string(),
    })
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        what: "report",
        message: format!("key of {} bytes", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}
