//! The order of a job's output across its two streams: an index of fixed-size records, one per chunk the
//! agent read from the job's stdout or stderr pipe, written in the order the chunks were stored, each
//! naming the stream, the chunk's logical offset and length in that stream's log files, and when the agent
//! read it. Reading the index back gives the job's output merged (or one stream, with times), from a
//! time on, or its last lines.
//!
//! Layout: `output.idx` in the job's log directory, a rotating file like the streams' own (rotated files
//! `output.idx.<start>`, `output.idx.base`), so it is rotated and pruned with the same size and count, and
//! its logical offsets, multiples of [`RECORD_BYTES`], are the cursor of a merged read. A stream's bytes are
//! appended before their record, under one lock shared by both streams' pumps, so the index order is the
//! order of the writes; after an agent restart (or a crash between the two writes) reopening the index
//! covers whatever a stream holds beyond its last record with records stamped at reopening. A record whose
//! bytes were rotated away reads as nothing, and a record torn by a crash fails its check byte and is
//! skipped. Output two pipes received closer together than the agent's reads may come back in either
//! order: the index records the order the agent read them, which is all one reader of two pipes can know.
//!
//! This module never interprets the output beyond counting newlines for a tail, and never writes to a
//! stream's log files.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::log_files::{oldest_kept, read_named, LogOptions, LogStream, RotatingLog};
use super::ExecError;

/// Name of the index's current file in the log directory.
pub const INDEX_FILE: &str = "output.idx";
/// Size of one index record.
pub const RECORD_BYTES: u64 = 24;
/// Most bytes one record covers when reopening covers unindexed output.
const COVER_PIECE: u64 = 64 * 1024;
/// Most index records one read looks at (a read that only skips records answers with no output and an
/// offset that moved).
const SCAN_RECORDS: u64 = 16 * 1024;
/// Records read per step when looking for the last lines.
const TAIL_BLOCK: u64 = 4 * 1024;
/// Marks a written record (with the check byte, tells one from zeros or a torn write).
const MAGIC: u8 = 0xA5;

/// One chunk of output as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexRecord {
    pub(crate) stream: LogStream,
    /// Logical offset of the chunk's first byte in its stream.
    pub(crate) offset: u64,
    pub(crate) len: u32,
    /// When the agent read it, Unix milliseconds.
    pub(crate) at_ms: u64,
}

impl IndexRecord {
    fn encode(&self) -> [u8; RECORD_BYTES as usize] {
        let mut out = [0u8; RECORD_BYTES as usize];
        out[0] = match self.stream {
            LogStream::Stdout => 1,
            LogStream::Stderr => 2,
        };
        out[1] = MAGIC;
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..24].copy_from_slice(&self.at_ms.to_le_bytes());
        out[3] = check_byte(&out);
        out
    }

    /// The record in `bytes`, or `None` for padding or a torn record.
    fn decode(bytes: &[u8]) -> Option<IndexRecord> {
        let bytes: &[u8; RECORD_BYTES as usize] = bytes.try_into().ok()?;
        if bytes[1] != MAGIC || bytes[3] != check_byte(bytes) {
            return None;
        }
        let stream = match bytes[0] {
            1 => LogStream::Stdout,
            2 => LogStream::Stderr,
            _ => return None,
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[4..8]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&bytes[8..16]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&bytes[16..24]);
        Some(IndexRecord {
            stream,
            offset: u64::from_le_bytes(offset),
            len: u32::from_le_bytes(len),
            at_ms: u64::from_le_bytes(at),
        })
    }

    fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// A checksum of every byte of a record but the check byte itself (index 3).
fn check_byte(bytes: &[u8; RECORD_BYTES as usize]) -> u8 {
    bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .fold(0x5Au8, |acc, (_, b)| acc.rotate_left(1) ^ b)
}

fn stream_slot(stream: LogStream) -> usize {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

/// Appends records to one attempt's index.
pub(crate) struct OutputIndex {
    file: RotatingLog,
    /// Per stream (stdout, stderr), the logical offset up to which its output is indexed.
    covered: [u64; 2],
}

impl OutputIndex {
    /// Opens (or continues) the index in `options.dir`. A record torn by a crash is padded to a whole one
    /// (which reads as nothing), so later records stay aligned.
    pub(crate) fn open(options: &LogOptions) -> io::Result<OutputIndex> {
        let mut file = RotatingLog::open_named(options, INDEX_FILE)?;
        let torn = file.end() % RECORD_BYTES;
        if torn != 0 {
            let pad = vec![0u8; usize::try_from(RECORD_BYTES - torn).unwrap_or(0)];
            file.append(&pad)?;
        }
        let covered = last_covered(&options.dir, file.end()).map_err(io::Error::other)?;
        Ok(OutputIndex { file, covered })
    }

    /// Records that `len` bytes of `stream` from logical `offset` on were read at `at_ms`.
    pub(crate) fn record(
        &mut self,
        stream: LogStream,
        offset: u64,
        len: u64,
        at_ms: u64,
    ) -> io::Result<()> {
        let mut offset = offset;
        let end = offset + len;
        while offset < end {
            let piece = (end - offset).min(COVER_PIECE);
            let record = IndexRecord {
                stream,
                offset,
                // At most COVER_PIECE.
                len: u32::try_from(piece).unwrap_or(u32::MAX),
                at_ms,
            };
            self.file.append(&record.encode())?;
            offset += piece;
        }
        let slot = &mut self.covered[stream_slot(stream)];
        *slot = (*slot).max(end);
        Ok(())
    }

    /// Indexes what `stream` holds beyond its last record, from `oldest` (its oldest byte still kept) to
    /// `end` (just after its last byte), as read at `at_ms`: output written before a crash or an agent
    /// restart without its record.
    pub(crate) fn cover(
        &mut self,
        stream: LogStream,
        oldest: u64,
        end: u64,
        at_ms: u64,
    ) -> io::Result<()> {
        let from = self.covered[stream_slot(stream)].max(oldest);
        if from < end {
            self.record(stream, from, end - from, at_ms)?;
        }
        Ok(())
    }
}

/// Per stream, the end of the output its newest record covers, looking back from the index's `end`.
fn last_covered(dir: &Path, end: u64) -> Result<[u64; 2], ExecError> {
    let floor = index_floor(dir)?;
    let mut found: [Option<u64>; 2] = [None, None];
    let mut block_end = end;
    while block_end > floor && found.iter().any(Option::is_none) {
        let block_start = block_end
            .saturating_sub(TAIL_BLOCK * RECORD_BYTES)
            .max(floor);
        let (entries, _) = read_index(dir, block_start, block_end)?;
        for (_, record) in entries.iter().rev() {
            let slot = &mut found[stream_slot(record.stream)];
            if slot.is_none() {
                *slot = Some(record.end());
            }
        }
        block_end = block_start;
    }
    Ok([found[0].unwrap_or(0), found[1].unwrap_or(0)])
}

/// Index offset of the oldest whole record the index still keeps.
fn index_floor(dir: &Path) -> Result<u64, ExecError> {
    let oldest =
        oldest_kept(dir, INDEX_FILE).map_err(ExecError::io("reading the index in", dir))?;
    Ok(oldest.div_ceil(RECORD_BYTES) * RECORD_BYTES)
}

/// The index records whose positions lie in `[from, until)` (`from` rounded up to a record), with their
/// positions, and where the next read of the index starts: after the last whole record read. Positions
/// rotated away are skipped; padding and torn records are left out.
fn read_index(
    dir: &Path,
    from: u64,
    until: u64,
) -> Result<(Vec<(u64, IndexRecord)>, u64), ExecError> {
    let mut pos = from.div_ceil(RECORD_BYTES) * RECORD_BYTES;
    let mut entries = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_at = pos;
    while pos < until {
        let want = usize::try_from(until - pos).unwrap_or(usize::MAX);
        let mut chunk = read_named(dir, INDEX_FILE, pos, want)?;
        let start = chunk.start_offset();
        if chunk.data.is_empty() || start >= until {
            if chunk.next_offset < pending_at {
                // Asked for past the end: continue at the end's last whole record.
                pending_at = chunk.next_offset / RECORD_BYTES * RECORD_BYTES;
            }
            break;
        }
        // Skipping over bytes rotated away may have read beyond `until`.
        chunk
            .data
            .truncate(usize::try_from(until - start).unwrap_or(usize::MAX));
        if start != pos {
            // Rotated away under us: continue at the first whole record kept.
            let aligned = start.div_ceil(RECORD_BYTES) * RECORD_BYTES;
            pending.clear();
            pending_at = aligned;
            let skip = usize::try_from(aligned - start).unwrap_or(usize::MAX);
            pending.extend_from_slice(chunk.data.get(skip..).unwrap_or(&[]));
        } else {
            pending.extend_from_slice(&chunk.data);
        }
        pos = chunk.next_offset;
        let whole = pending.len() / RECORD_BYTES as usize * RECORD_BYTES as usize;
        for (i, bytes) in pending[..whole]
            .chunks_exact(RECORD_BYTES as usize)
            .enumerate()
        {
            let at = pending_at + i as u64 * RECORD_BYTES;
            if let Some(record) = IndexRecord::decode(bytes) {
                entries.push((at, record));
            }
        }
        pending_at += whole as u64;
        pending.drain(..whole);
    }
    // A partial record at the end is read again next time, once it is whole.
    Ok((entries, pending_at))
}

/// Logical offset just after the index's last byte.
fn index_end(dir: &Path) -> Result<u64, ExecError> {
    Ok(read_named(dir, INDEX_FILE, u64::MAX, 0)?.next_offset)
}

/// The bytes `record` names that its stream still keeps (none when they were rotated away).
fn record_data(dir: &Path, record: &IndexRecord) -> Result<Vec<u8>, ExecError> {
    let end = record.end();
    let mut out = Vec::new();
    let mut pos = record.offset;
    while pos < end {
        let want = usize::try_from(end - pos).unwrap_or(usize::MAX);
        let chunk = read_named(dir, record.stream.file_name(), pos, want)?;
        let start = chunk.start_offset();
        if chunk.data.is_empty() || start >= end {
            break;
        }
        let take = usize::try_from(end - start).unwrap_or(usize::MAX);
        out.extend_from_slice(&chunk.data[..take.min(chunk.data.len())]);
        pos = chunk.next_offset;
    }
    Ok(out)
}

/// A read of the index: which output, from where, how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsQuery {
    /// One stream, or both (`None`).
    pub stream: Option<LogStream>,
    /// Logical offset in the index (a `next_offset` of an earlier read; rounded up to a record).
    pub offset: u64,
    /// Most output bytes to answer; the first record is answered whole even when it is larger.
    pub max_bytes: usize,
    /// Only output read at or after this time, Unix milliseconds.
    pub since_ms: u64,
    /// Start at the last N lines of the selected output instead of at `offset`.
    pub tail_lines: Option<u32>,
}

/// One chunk of output as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub stream: LogStream,
    pub at_ms: u64,
    pub data: Vec<u8>,
}

/// Output read from the index and where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsChunk {
    pub records: Vec<OutputRecord>,
    /// Index offset of the first record looked at (later than asked when older records were rotated away).
    pub start_offset: u64,
    /// Index offset at which the next read continues.
    pub next_offset: u64,
}

impl RecordsQuery {
    fn selects(&self, record: &IndexRecord) -> bool {
        self.stream.is_none_or(|s| s == record.stream) && record.at_ms >= self.since_ms
    }
}

/// Reads the output `query` selects. Blocking (file I/O): call it from `spawn_blocking` in async code. An
/// attempt without an index (it wrote nothing yet) answers no records with `next_offset` 0.
pub fn read_records(dir: &Path, query: &RecordsQuery) -> Result<RecordsChunk, ExecError> {
    let end = index_end(dir)?;
    let (from, mut skip) = match query.tail_lines {
        Some(lines) => tail_start(dir, query, end, lines)?,
        None => (query.offset, 0),
    };
    let until = end.min(from.saturating_add(SCAN_RECORDS * RECORD_BYTES));
    let (entries, scanned_to) = read_index(dir, from, until)?;
    let start_offset = entries.first().map_or(scanned_to, |(pos, _)| *pos);
    let mut records = Vec::new();
    let mut total = 0usize;
    let mut next_offset = scanned_to;
    for (pos, record) in entries {
        if !query.selects(&record) {
            continue;
        }
        let mut data = record_data(dir, &record)?;
        if skip > 0 {
            data.drain(..skip.min(data.len()));
            skip = 0;
        }
        if data.is_empty() {
            continue;
        }
        if !records.is_empty() && total + data.len() > query.max_bytes {
            next_offset = pos;
            break;
        }
        total += data.len();
        records.push(OutputRecord {
            stream: record.stream,
            at_ms: record.at_ms,
            data,
        });
        if total >= query.max_bytes {
            next_offset = pos + RECORD_BYTES;
            break;
        }
    }
    Ok(RecordsChunk {
        records,
        start_offset,
        next_offset,
    })
}

/// Where the last `lines` lines of the selected output start: the index offset of their first record and
/// how many of its bytes to skip. A final newline ends the last line rather than starting another one.
fn tail_start(
    dir: &Path,
    query: &RecordsQuery,
    end: u64,
    lines: u32,
) -> Result<(u64, usize), ExecError> {
    let last = end / RECORD_BYTES * RECORD_BYTES;
    if lines == 0 {
        return Ok((last, 0));
    }
    let floor = index_floor(dir)?;
    let mut newlines = 0u32;
    let mut at_end = true;
    let mut block_end = end;
    while block_end > floor {
        let block_start = block_end
            .saturating_sub(TAIL_BLOCK * RECORD_BYTES)
            .max(floor);
        let (entries, _) = read_index(dir, block_start, block_end)?;
        for (pos, record) in entries.iter().rev() {
            if !query.selects(record) {
                continue;
            }
            let data = record_data(dir, record)?;
            for (i, byte) in data.iter().enumerate().rev() {
                if std::mem::take(&mut at_end) && *byte == b'\n' {
                    continue;
                }
                if *byte == b'\n' {
                    newlines += 1;
                    if newlines == lines {
                        return Ok((*pos, i + 1));
                    }
                }
            }
        }
        block_end = block_start;
    }
    // Fewer lines than asked for: all of it.
    Ok((0, 0))
}

/// The index of one attempt, shared by the pumps of its two streams so that each chunk is written to its
/// stream and recorded in the index under one lock. Opened on first use; when it cannot be opened or
/// written, the streams' own logs go on and the failure is logged once.
#[derive(Clone)]
pub(crate) struct SharedIndex(Arc<Mutex<IndexSlot>>);

struct IndexSlot {
    options: LogOptions,
    index: Option<OutputIndex>,
    failed: bool,
}

impl SharedIndex {
    pub(crate) fn new(options: LogOptions) -> SharedIndex {
        SharedIndex(Arc::new(Mutex::new(IndexSlot {
            options,
            index: None,
            failed: false,
        })))
    }

    /// Runs `write` (appending a chunk to `stream`'s log, answering the logical offsets before and after
    /// it and how the write went) and records the chunk, read at `at_ms`, in the index, holding the index's lock throughout.
    /// Blocking (file I/O). The write's own error is returned; the index's is logged.
    pub(crate) fn write_indexed(
        &self,
        stream: LogStream,
        at_ms: u64,
        write: impl FnOnce() -> (u64, u64, io::Result<()>),
    ) -> io::Result<()> {
        // A panic while holding the lock leaves at worst an unrecorded chunk, which reopening covers.
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // What was written is recorded even when the write failed part way.
        let (start, end, written) = write();
        slot.with_index(|index| index.record(stream, start, end.saturating_sub(start), at_ms));
        written
    }

    /// Indexes what `stream`'s log (in the index's directory) holds up to `end` beyond the last record, as
    /// read at `at_ms` (see [`OutputIndex::cover`]). Blocking.
    pub(crate) fn cover(&self, stream: LogStream, end: u64, at_ms: u64) {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = slot.options.dir.clone();
        slot.with_index(|index| {
            let oldest = oldest_kept(&dir, stream.file_name())?;
            index.cover(stream, oldest, end, at_ms)
        });
    }
}

impl IndexSlot {
    fn with_index(&mut self, f: impl FnOnce(&mut OutputIndex) -> io::Result<()>) {
        if self.index.is_none() && !self.failed {
            match OutputIndex::open(&self.options) {
                Ok(index) => self.index = Some(index),
                Err(e) => self.fail(&e),
            }
        }
        if let Some(index) = self.index.as_mut() {
            if let Err(e) = f(index) {
                self.fail(&e);
            }
        }
    }

    fn fail(&mut self, e: &io::Error) {
        if !self.failed {
            tracing::warn!(dir = %self.options.dir.display(), error = %e, "writing the job's output index failed; merged output may miss chunks");
        }
        self.failed = true;
        self.index = None;
    }
}

#[cfg(test)]
#[path = "output_index_tests.rs"]
mod tests;
