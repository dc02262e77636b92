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
//!
//! A finished attempt past its retention period is *forgotten*: its record is replaced by a
//! [`Tombstone`] under the same key (10 bytes: a tag byte no JSON record starts with, a flag byte, and
//! the time it was forgotten), so the key still refuses [`JobStore::begin_launch`] and the attempt is
//! never launched again, while its assignment, handle and exit are gone. [`JobStore::attempt`] and
//! [`JobStore::attempts`] see live records only; [`JobStore::lookup`] and [`JobStore::tombstones`] see
//! tombstones too. Which attempts to forget, and when a tombstone may go, is decided elsewhere
//! (`retention`); the store only carries it out.

use std::collections::BTreeSet;
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
/// First byte of a tombstone's value (a record is JSON and starts with `{`).
const TOMBSTONE_TAG: u8 = 0x01;
/// Tag, flags, forgotten-at milliseconds (big-endian).
const TOMBSTONE_LEN: usize = 10;
/// Flag bit: a final event was queued for the attempt at some point.
const FLAG_FINAL_REPORTED: u8 = 0x01;

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
    /// Killed at its memory limit (absent in records of older agents).
    #[serde(default)]
    pub oom_killed: bool,
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
            oom_killed: self.oom_killed,
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
    /// When it became finished on this node (Unix ms); its retention counts from here. `None` in
    /// records written before retention existed until the agent's next start stamps them.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
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
            finished_at_ms: None,
        }
    }

    /// Marks it finished at `at_ms`, unless an earlier end time is already recorded (an end reported
    /// late keeps the time the attempt really ended).
    pub fn mark_finished(&mut self, at_ms: u64) {
        self.phase = AttemptPhase::Finished;
        self.finished_at_ms.get_or_insert(at_ms);
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

/// What is left of a forgotten attempt: its key (so it is never launched again) and when it was
/// forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub key: AttemptKey,
    /// When its record, logs and state directory were given up (Unix ms).
    pub forgotten_at_ms: u64,
    /// A final event was queued for the attempt at some point (else it was stopped as stale and its
    /// end is still owed, should the attempt ever be assigned here again).
    pub final_reported: bool,
}

/// What the store holds under one (job, attempt, replica).
#[derive(Debug, Clone, PartialEq)]
pub enum StoredAttempt {
    Live(Box<AttemptRecord>),
    Forgotten(Tombstone),
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

    /// One process's record; `None` when it is unknown or forgotten (see [`JobStore::lookup`]).
    pub fn attempt(&self, key: &AttemptKey) -> Result<Option<AttemptRecord>, StoreError> {
        Ok(match self.lookup(key)? {
            Some(StoredAttempt::Live(record)) => Some(*record),
            Some(StoredAttempt::Forgotten(_)) | None => None,
        })
    }

    /// What the store holds for one process: its record, its tombstone, or nothing.
    pub fn lookup(&self, key: &AttemptKey) -> Result<Option<StoredAttempt>, StoreError> {
        self.attempts
            .get(attempt_key(key))?
            .map(|bytes| decode_stored(key.clone(), &bytes))
            .transpose()
    }

    /// Every live record (tombstones left out), in (job id, attempt, replica) order.
    pub fn attempts(&self) -> Result<Vec<AttemptRecord>, StoreError> {
        let mut records = Vec::new();
        for entry in self.attempts.iter() {
            let (_, bytes) = entry?;
            if !is_tombstone(&bytes) {
                records.push(decode_record(&bytes)?);
            }
        }
        Ok(records)
    }

    /// Every tombstone, in (job id, attempt, replica) order.
    pub fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        let mut tombstones = Vec::new();
        for entry in self.attempts.iter() {
            let (key, bytes) = entry?;
            if is_tombstone(&bytes) {
                tombstones.push(decode_tombstone(key_of(&key)?, &bytes)?);
            }
        }
        Ok(tombstones)
    }

    /// Replaces the records of `keys` with tombstones forgotten at `at_ms`, in one flushed batch, and
    /// returns them. Only finished records are replaced: a key that is unknown, already forgotten, or
    /// whose attempt is not finished is left alone. The caller has checked everything else (no queued
    /// report, not assigned, past retention).
    pub fn forget(&self, keys: &[AttemptKey], at_ms: u64) -> Result<Vec<Tombstone>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut forgotten = Vec::new();
        for key in keys {
            let Some(StoredAttempt::Live(record)) = self.lookup(key)? else {
                continue;
            };
            if record.phase != AttemptPhase::Finished {
                continue;
            }
            let tombstone = Tombstone {
                key: key.clone(),
                forgotten_at_ms: at_ms,
                final_reported: record.final_reported,
            };
            batch.insert(attempt_key(key), encode_tombstone(&tombstone).to_vec());
            forgotten.push(tombstone);
        }
        if !forgotten.is_empty() {
            self.attempts.apply_batch(batch)?;
            self.db.flush()?;
        }
        Ok(forgotten)
    }

    /// Removes the tombstones of `keys` entirely (their keys become unknown); a key holding a live
    /// record or nothing is left alone. Returns how many were removed.
    pub fn drop_tombstones(&self, keys: &[AttemptKey]) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut dropped = 0;
        for key in keys {
            if let Some(StoredAttempt::Forgotten(_)) = self.lookup(key)? {
                batch.remove(attempt_key(key));
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.attempts.apply_batch(batch)?;
            self.db.flush()?;
        }
        Ok(dropped)
    }

    /// Writes a tombstone and queues an event about its attempt in one transaction (the end of a
    /// forgotten attempt reported late); returns the event's sequence number.
    pub fn save_tombstone_with_event(
        &self,
        tombstone: &Tombstone,
        event: &pb::JobEvent,
    ) -> Result<u64, StoreError> {
        let key = attempt_key(&tombstone.key);
        let value = encode_tombstone(tombstone);
        let seq = self.insert_event(Some((&key, &value)), event)?;
        self.db.flush()?;
        Ok(seq)
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

    /// The (job, attempt, replica) of every queued event.
    pub fn queued_keys(&self) -> Result<BTreeSet<AttemptKey>, StoreError> {
        let mut keys = BTreeSet::new();
        for entry in self.reports.iter() {
            let (_, bytes) = entry?;
            let event = decode_event(&bytes)?;
            keys.insert(AttemptKey::new(event.job_id, event.attempt, event.replica));
        }
        Ok(keys)
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

/// The key a record is stored under, read back (the inverse of [`attempt_key`]).
fn key_of(bytes: &[u8]) -> Result<AttemptKey, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        what: "attempt key",
        message,
    };
    let nul = bytes
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| corrupt("no separator".into()))?;
    let job_id = std::str::from_utf8(&bytes[..nul])
        .map_err(|e| corrupt(e.to_string()))?
        .to_owned();
    let rest = &bytes[nul + 1..];
    let word = |b: &[u8]| -> u32 {
        let mut array = [0; 4];
        array.copy_from_slice(b);
        u32::from_be_bytes(array)
    };
    match rest.len() {
        4 => Ok(AttemptKey::new(job_id, word(rest), 0)),
        8 => Ok(AttemptKey::new(job_id, word(&rest[..4]), word(&rest[4..]))),
        n => Err(corrupt(format!("{n} bytes after the job id"))),
    }
}

fn is_tombstone(bytes: &[u8]) -> bool {
    bytes.first() == Some(&TOMBSTONE_TAG)
}

fn encode_tombstone(tombstone: &Tombstone) -> [u8; TOMBSTONE_LEN] {
    let mut bytes = [0; TOMBSTONE_LEN];
    bytes[0] = TOMBSTONE_TAG;
    if tombstone.final_reported {
        bytes[1] |= FLAG_FINAL_REPORTED;
    }
    bytes[2..].copy_from_slice(&tombstone.forgotten_at_ms.to_be_bytes());
    bytes
}

fn decode_tombstone(key: AttemptKey, bytes: &[u8]) -> Result<Tombstone, StoreError> {
    let bytes: &[u8; TOMBSTONE_LEN] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: "tombstone",
        message: format!("{} bytes", bytes.len()),
    })?;
    let mut at = [0; 8];
    at.copy_from_slice(&bytes[2..]);
    Ok(Tombstone {
        key,
        forgotten_at_ms: u64::from_be_bytes(at),
        final_reported: bytes[1] & FLAG_FINAL_REPORTED != 0,
    })
}

fn decode_stored(key: AttemptKey, bytes: &[u8]) -> Result<StoredAttempt, StoreError> {
    if is_tombstone(bytes) {
        decode_tombstone(key, bytes).map(StoredAttempt::Forgotten)
    } else {
        decode_record(bytes).map(|record| StoredAttempt::Live(Box::new(record)))
    }
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
