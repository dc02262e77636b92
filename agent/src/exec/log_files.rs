//! A job's captured stdout and stderr on disk: the pump that copies a stream from its FIFO into size-rotated
//! files, and reading them back by logical offset (once, or following new output).
//!
//! Layout in the log directory, per stream (`stdout` shown):
//! - `stdout.log` — the current file;
//! - `stdout.log.<start>` — rotated files, `<start>` being the 20-digit logical offset of their first byte;
//! - `stdout.log.base` — the logical offset of the first byte of `stdout.log`;
//! - `stdout.log.closed` — present once the stream has ended (every writer closed it).
//!
//! Rotation renames the current file, then records the new base, then creates the new current file;
//! readers detect a rotation that happens under them and retry. This module never interprets the bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use super::launcher::unix_ms;
use super::output_index::SharedIndex;
use super::ExecError;

/// Default size at which a log file is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Default number of rotated files kept per stream.
pub const DEFAULT_LOG_KEEP: u32 = 4;

/// Size of one read from a job's FIFO and of one chunk of a followed log.
const CHUNK: usize = 64 * 1024;
/// How often a reader retries when a rotation happened under it.
const READ_RETRIES: usize = 50;

/// Where and how a job's output is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// Directory of the log files (created when missing).
    pub dir: PathBuf,
    /// Rotate the current file when it reaches this size; 0 never rotates.
    pub max_bytes: u64,
    /// Rotated files kept per stream; older ones are deleted.
    pub keep: u32,
}

impl LogOptions {
    /// Logs in `dir` with the default rotation.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogOptions {
            dir: dir.into(),
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            keep: DEFAULT_LOG_KEEP,
        }
    }
}

/// One of a job's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub(crate) const ALL: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];

    /// Name of the current log file (`stdout.log`, `stderr.log`).
    pub fn file_name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout.log",
            LogStream::Stderr => "stderr.log",
        }
    }

    /// Name of the FIFO in the attempt's state directory.
    pub(crate) fn pipe_name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout.pipe",
            LogStream::Stderr => "stderr.pipe",
        }
    }

    fn sibling(self, suffix: &str) -> String {
        sibling(self.file_name(), suffix)
    }
}

/// `<name>.<suffix>`: a rotated file, the base or the closed marker of the file `name`.
fn sibling(name: &str, suffix: &str) -> String {
    format!("{name}.{suffix}")
}

/// Bytes read from a log and where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub data: Vec<u8>,
    /// Logical offset just after `data`. When the requested offset had already been rotated away, `data`
    /// starts at the oldest byte still kept, i.e. at `next_offset - data.len()`.
    pub next_offset: u64,
}

impl LogChunk {
    /// Logical offset of the first byte of `data`.
    pub fn start_offset(&self) -> u64 {
        self.next_offset - self.data.len() as u64
    }
}

struct Segment {
    start: u64,
    len: u64,
    path: PathBuf,
}

/// Rotated files of the rotating file `name`, oldest first. A missing directory has none.
fn rotated_segments(dir: &Path, name: &str) -> io::Result<Vec<Segment>> {
    let prefix = format!("{name}.");
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(digits) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(start) = digits.parse::<u64>() else {
            continue;
        };
        let len = match entry.metadata() {
            Ok(m) => m.len(),
            // Pruned since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        segments.push(Segment {
            start,
            len,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|s| s.start);
    Ok(segments)
}

/// Logical offset of the first byte of the current file: the recorded base, or the end of the newest
/// rotated file when a rotation was interrupted before recording it.
fn current_base(dir: &Path, name: &str, segments: &[Segment]) -> io::Result<u64> {
    let recorded = match fs::read_to_string(dir.join(sibling(name, "base"))) {
        Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let rotated_end = segments.last().map_or(0, |s| s.start + s.len);
    Ok(recorded.max(rotated_end))
}

/// Logical offset of the oldest byte the rotating file `name` still keeps (its end when it keeps none).
pub(crate) fn oldest_kept(dir: &Path, name: &str) -> io::Result<u64> {
    let segments = rotated_segments(dir, name)?;
    match segments.first() {
        Some(s) => Ok(s.start),
        None => current_base(dir, name, &segments),
    }
}

fn closed_marker(dir: &Path, stream: LogStream) -> PathBuf {
    dir.join(stream.sibling("closed"))
}

/// Opens a log file for reading, refusing a symlink in its place.
fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Forgets that a stream ended, before a new writer starts on the same directory.
pub(crate) fn clear_closed_marker(dir: &Path, stream: LogStream) -> io::Result<()> {
    match fs::remove_file(closed_marker(dir, stream)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Records that a stream has ended.
pub(crate) fn mark_closed(dir: &Path, stream: LogStream) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    File::create(closed_marker(dir, stream)).map(drop)
}

/// Appends to one rotating file (a stream's log, or the output index), rotating by size.
pub(crate) struct RotatingLog {
    dir: PathBuf,
    /// Name of the current file.
    name: &'static str,
    max_bytes: u64,
    keep: usize,
    file: File,
    /// Length of the current file.
    len: u64,
    /// Logical offset of the current file's first byte.
    base: u64,
}

impl RotatingLog {
    /// Opens (or continues) the stream's files in `options.dir`.
    pub(crate) fn open(options: &LogOptions, stream: LogStream) -> io::Result<Self> {
        Self::open_named(options, stream.file_name())
    }

    /// Opens (or continues) the rotating file `name` in `options.dir`.
    pub(crate) fn open_named(options: &LogOptions, name: &'static str) -> io::Result<Self> {
        fs::create_dir_all(&options.dir)?;
        let segments = rotated_segments(&options.dir, name)?;
        let base = current_base(&options.dir, name, &segments)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(options.dir.join(name))?;
        let len = file.metadata()?.len();
        Ok(RotatingLog {
            dir: options.dir.clone(),
            name,
            max_bytes: options.max_bytes,
            keep: usize::try_from(options.keep).unwrap_or(usize::MAX),
            file,
            len,
            base,
        })
    }

    /// Logical offset just after the last byte written: where the next append starts.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.len
    }

    /// Appends `data`, rotating whenever the current file reaches `max_bytes`.
    pub(crate) fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let take = if self.max_bytes == 0 {
                data.len()
            } else {
                let room = self.max_bytes.saturating_sub(self.len);
                if room == 0 {
                    self.rotate()?;
                    continue;
                }
                data.len().min(usize::try_from(room).unwrap_or(usize::MAX))
            };
            self.file.write_all(&data[..take])?;
            self.len += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let current = self.dir.join(self.name);
        let rotated = self
            .dir
            .join(sibling(self.name, &format!("{:020}", self.base)));
        fs::rename(&current, &rotated)?;
        let new_base = self.base + self.len;
        let base_file = self.dir.join(sibling(self.name, "base"));
        let tmp = self.dir.join(sibling(self.name, "base.tmp"));
        fs::write(&tmp, new_base.to_string())?;
        fs::rename(&tmp, &base_file)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&current)?;
        self.base = new_base;
        self.len = 0;
        let segments = rotated_segments(&self.dir, self.name)?;
        let excess = segments.len().saturating_sub(self.keep);
        for old in &segments[..excess] {
            match fs::remove_file(&old.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Copies one stream from the job's FIFO into its log files until every writer closed it (the job and
/// all its processes ended), `finish` fires (then the stream is marked ended), or `detach` fires (the agent
/// stops supervising; the stream is not marked ended). Each chunk is recorded in the attempt's output
/// `index` (shared with the other stream's pump) with the time it was read; opening indexes what an
/// earlier pump wrote without recording it. The FIFO is drained even when the files cannot be written, so
/// that the job never blocks on its output.
pub(crate) async fn pump(
    mut fifo: pipe::Receiver,
    options: LogOptions,
    stream: LogStream,
    index: SharedIndex,
    detach: CancellationToken,
    finish: CancellationToken,
) {
    let dir = options.dir.clone();
    let cover = index.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let log = RotatingLog::open(&options, stream)?;
        cover.cover(stream, log.end(), unix_ms(std::time::SystemTime::now()));
        Ok::<_, io::Error>(log)
    })
    .await;
    let log = match opened {
        Ok(Ok(log)) => Some(log),
        Ok(Err(e)) => {
            tracing::warn!(dir = %dir.display(), ?stream, error = %e, "job log not writable; output is dropped");
            None
        }
        Err(e) => {
            tracing::warn!(?stream, error = %e, "opening the job log failed");
            None
        }
    };
    let mut sink = LogSink {
        log,
        index,
        dir: dir.clone(),
        stream,
        failed: false,
    };
    let mut buf = vec![0u8; CHUNK];
    // A FIFO opened after its last writer left never reports end-of-file through epoll, but a direct read
    // answers 0 at once; so read directly until the pipe is empty before waiting for readiness.
    let mut ended = loop {
        match read_now(&fifo, &mut buf) {
            Ok(0) => break true,
            Ok(n) => sink.store(&buf[..n]).await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(?stream, error = %e, "reading the job's output failed");
                break true;
            }
        }
    };
    if !ended {
        ended = loop {
            let read = tokio::select! {
                biased;
                _ = detach.cancelled() => break false,
                _ = finish.cancelled() => break true,
                read = fifo.read(&mut buf) => read,
            };
            match read {
                Ok(0) => break true,
                Ok(n) => sink.store(&buf[..n]).await,
                Err(e) => {
                    tracing::warn!(?stream, error = %e, "reading the job's output failed");
                    break true;
                }
            }
        };
    }
    if ended {
        let closed = tokio::task::spawn_blocking(move || mark_closed(&dir, stream)).await;
        if !matches!(closed, Ok(Ok(()))) {
            tracing::warn!(?stream, "marking the job log as ended failed");
        }
    }
}

/// One non-blocking `read(2)` on the FIFO, bypassing the runtime's readiness cache.
fn read_now(fifo: &pipe::Receiver, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the descriptor is open for the call.
    let n = unsafe { libc::read(fifo.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Where the pump puts what it read.
struct LogSink {
    log: Option<RotatingLog>,
    index: SharedIndex,
    dir: PathBuf,
    stream: LogStream,
    failed: bool,
}

impl LogSink {
    /// Appends `data` (file I/O off the runtime's threads); failures are logged once and the data dropped.
    async fn store(&mut self, data: &[u8]) {
        let at_ms = unix_ms(std::time::SystemTime::now());
        let Some(mut log) = self.log.take() else {
            return;
        };
        let data = data.to_vec();
        let index = self.index.clone();
        let stream = self.stream;
        let written = tokio::task::spawn_blocking(move || {
            let result = index.write_indexed(stream, at_ms, || {
                let start = log.end();
                let result = log.append(&data);
                (start, log.end(), result)
            });
            (log, result)
        })
        .await;
        match written {
            Ok((log, result)) => {
                if let Err(e) = result {
                    if !self.failed {
                        tracing::warn!(dir = %self.dir.display(), stream = ?self.stream, error = %e, "writing the job log failed");
                    }
                    self.failed = true;
                }
                self.log = Some(log);
            }
            Err(e) => tracing::warn!(stream = ?self.stream, error = %e, "job log writer stopped"),
        }
    }
}

/// Reads up to `max` bytes of `stream` from logical `offset`. Blocking (file I/O): call it from
/// `spawn_blocking` in async code. An offset past the end answers no data with `next_offset` at the end;
/// an offset already rotated away answers from the oldest byte kept.
pub fn read_logs(
    dir: &Path,
    stream: LogStream,
    offset: u64,
    max: usize,
) -> Result<LogChunk, ExecError> {
    read_named(dir, stream.file_name(), offset, max)
}

/// [`read_logs`] of the rotating file `name` (a stream's log or the output index).
pub(crate) fn read_named(
    dir: &Path,
    name: &str,
    offset: u64,
    max: usize,
) -> Result<LogChunk, ExecError> {
    let mut offset = offset;
    for _ in 0..READ_RETRIES {
        match try_read(dir, name, offset, max).map_err(ExecError::io("reading logs in", dir))? {
            Attempt::Done(chunk) => return Ok(chunk),
            Attempt::SkipTo(later) => offset = later,
            // A rotation is in progress; it takes a few syscalls.
            Attempt::Raced => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    Ok(LogChunk {
        data: Vec::new(),
        next_offset: offset,
    })
}

enum Attempt {
    Done(LogChunk),
    SkipTo(u64),
    Raced,
}

fn try_read(dir: &Path, name: &str, offset: u64, max: usize) -> io::Result<Attempt> {
    let segments = rotated_segments(dir, name)?;
    let base = current_base(dir, name, &segments)?;
    if offset >= base {
        let mut file = match open_no_follow(&dir.join(name)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if segments.is_empty() && base == 0 {
                    // Nothing was ever written.
                    return Ok(Attempt::Done(LogChunk {
                        data: Vec::new(),
                        next_offset: 0,
                    }));
                }
                return Ok(Attempt::Raced);
            }
            Err(e) => return Err(e),
        };
        // The file we opened belongs to `base` only if no rotation completed meanwhile.
        let after = rotated_segments(dir, name)?;
        if current_base(dir, name, &after)? != base {
            return Ok(Attempt::Raced);
        }
        return read_at(&mut file, base, offset, max).map(Attempt::Done);
    }
    let Some(index) = segments.iter().rposition(|s| s.start <= offset) else {
        // Rotated away: continue from the oldest byte kept.
        return Ok(Attempt::SkipTo(segments.first().map_or(base, |s| s.start)));
    };
    let segment = &segments[index];
    if offset >= segment.start + segment.len {
        // A gap (a segment shorter than the next start says): continue with what follows.
        let next = segments.get(index + 1).map_or(base, |s| s.start);
        return Ok(if next > offset {
            Attempt::SkipTo(next)
        } else {
            Attempt::Raced
        });
    }
    let mut file = match open_no_follow(&segment.path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Raced),
        Err(e) => return Err(e),
    };
    read_at(&mut file, segment.start, offset, max).map(Attempt::Done)
}

/// Reads from `file`, whose first byte is at logical `start`, beginning at logical `offset`.
fn read_at(file: &mut File, start: u64, offset: u64, max: usize) -> io::Result<LogChunk> {
    let len = file.metadata()?.len();
    let relative = offset - start;
    if relative >= len {
        return Ok(LogChunk {
            data: Vec::new(),
            next_offset: start + len,
        });
    }
    let want = (len - relative).min(max as u64);
    file.seek(SeekFrom::Start(relative))?;
    let mut data = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    file.take(want).read_to_end(&mut data)?;
    Ok(LogChunk {
        next_offset: offset + data.len() as u64,
        data,
    })
}

/// New bytes of `stream` from `offset` on, as they are written; the stream ends after the last byte once
/// the job's stream has ended. `poll` is how often the files are checked when nothing new is there.
pub fn follow_logs(
    dir: PathBuf,
    stream: LogStream,
    offset: u64,
    poll: Duration,
) -> impl Stream<Item = Result<LogChunk, ExecError>> + Send + 'static {
    struct Follow {
        dir: PathBuf,
        stream: LogStream,
        offset: u64,
        poll: Duration,
        failed: bool,
    }
    let start = Follow {
        dir,
        stream,
        offset,
        poll,
        failed: false,
    };
    futures::stream::unfold(start, |mut state| async move {
        if state.failed {
            return None;
        }
        loop {
            let (dir, stream, offset) = (state.dir.clone(), state.stream, state.offset);
            let step = tokio::task::spawn_blocking(move || {
                // Checked before reading: if the stream had ended then, this read sees all of it.
                let ended = closed_marker(&dir, stream).exists();
                (ended, read_logs(&dir, stream, offset, CHUNK))
            })
            .await;
            match step {
                Ok((_, Ok(chunk))) if !chunk.data.is_empty() => {
                    state.offset = chunk.next_offset;
                    return Some((Ok(chunk), state));
                }
                Ok((true, Ok(_))) => return None,
                Ok((false, Ok(chunk))) => {
                    state.offset = chunk.next_offset;
                    tokio::time::sleep(state.poll).await;
                }
                Ok((_, Err(e))) => {
                    state.failed = true;
                    return Some((Err(e), state));
                }
                Err(e) => {
                    state.failed = true;
                    let err = ExecError::io("following logs in", &state.dir)(io::Error::other(e));
                    return Some((Err(err), state));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, max_bytes: u64, keep: u32) -> LogOptions {
        LogOptions {
            dir: dir.to_path_buf(),
            max_bytes,
            keep,
        }
    }

    fn read_all(dir: &Path, stream: LogStream, mut offset: u64) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        loop {
            let chunk = read_logs(dir, stream, offset, 7).expect("read");
            if chunk.data.is_empty() {
                return (out, chunk.next_offset);
            }
            out.extend_from_slice(&chunk.data);
            offset = chunk.next_offset;
        }
    }

    #[test]
    fn rotation_keeps_offsets_and_prunes_old_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("logs");
        let mut log = RotatingLog::open(&options(&dir, 10, 2), LogStream::Stdout).expect("open");
        let all: Vec<u8> = (0..45u8).collect();
        log.append(&all[..3]).expect("append");
        log.append(&all[3..25]).expect("append");
        log.append(&all[25..]).expect("append");
        // 45 bytes in files of 10: [0,10) [10,20) [20,30) [30,40) rotated, [40,45) current; keep 2.
        let segments = rotated_segments(&dir, LogStream::Stdout.file_name()).expect("list");
        let starts: Vec<u64> = segments.iter().map(|s| s.start).collect();
        assert_eq!(starts, vec![20, 30]);
        assert_eq!(
            fs::read(dir.join("stdout.log")).expect("current"),
            &all[40..]
        );

        let chunk = read_logs(&dir, LogStream::Stdout, 22, 100).expect("read");
        assert_eq!(chunk.data, &all[22..30]);
        assert_eq!(chunk.next_offset, 30);
        assert_eq!(chunk.start_offset(), 22);

        // Offsets rotated away continue at the oldest kept byte.
        let chunk = read_logs(&dir, LogStream::Stdout, 3, 4).expect("read");
        assert_eq!(chunk.start_offset(), 20);
        assert_eq!(chunk.data, &all[20..24]);

        let (rest, end) = read_all(&dir, LogStream::Stdout, 0);
        assert_eq!(rest, &all[20..]);
        assert_eq!(end, 45);
        // Past the end: nothing, and the end as the next offset.
        let chunk = read_logs(&dir, LogStream::Stdout, 1000, 10).expect("read");
        assert!(chunk.data.is_empty());
        assert_eq!(chunk.next_offset, 45);
        // The other stream is independent and empty.
        assert_eq!(read_all(&dir, LogStream::Stderr, 0), (Vec::new(), 0));
    }

    #[test]
    fn a_reopened_log_continues_at_the_same_offsets() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let opts = options(dir, 8, 10);
        let mut log = RotatingLog::open(&opts, LogStream::Stderr).expect("open");
        log.append(b"0123456789abc").expect("append");
        drop(log);
        let mut log = RotatingLog::open(&opts, LogStream::Stderr).expect("reopen");
        log.append(b"defghij").expect("append");
        let (all, end) = read_all(dir, LogStream::Stderr, 0);
        assert_eq!(all, b"0123456789abcdefghij");
        assert_eq!(end, 20);
        // A read stops at the end of a file; the next one continues in the following file.
        let chunk = read_logs(dir, LogStream::Stderr, 13, 100).expect("read");
        assert_eq!(chunk.data, b"def");
        let chunk = read_logs(dir, LogStream::Stderr, chunk.next_offset, 100).expect("read");
        assert_eq!(chunk.data, b"ghij");
        assert_eq!(chunk.next_offset, 20);
    }

    #[test]
    fn keep_zero_still_knows_the_base() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let mut log = RotatingLog::open(&options(dir, 4, 0), LogStream::Stdout).expect("open");
        log.append(b"aaaabbbbcc").expect("append");
        assert!(rotated_segments(dir, LogStream::Stdout.file_name())
            .expect("list")
            .is_empty());
        let chunk = read_logs(dir, LogStream::Stdout, 0, 100).expect("read");
        assert_eq!(chunk.data, b"cc");
        assert_eq!(chunk.start_offset(), 8);
    }

    #[test]
    fn max_bytes_zero_never_rotates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut log =
            RotatingLog::open(&options(tmp.path(), 0, 1), LogStream::Stdout).expect("open");
        log.append(&[7u8; 10_000]).expect("append");
        assert!(rotated_segments(tmp.path(), LogStream::Stdout.file_name())
            .expect("list")
            .is_empty());
        assert_eq!(read_all(tmp.path(), LogStream::Stdout, 0).1, 10_000);
    }

    #[test]
    fn a_missing_directory_reads_as_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let chunk = read_logs(&tmp.path().join("none"), LogStream::Stdout, 5, 10).expect("read");
        assert_eq!(
            chunk,
            LogChunk {
                data: Vec::new(),
                next_offset: 0
            }
        );
    }
}
