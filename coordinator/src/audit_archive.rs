//! Archived audit segments on this coordinator's disk: writing them before `ArchiveAudit` is applied, and
//! verifying them, streamed, from genesis up to the state's checkpoint.
//!
//! Owns `<data_dir>/audit-archive/`, one file per archived run of records, `<first_seq>-<last_seq>.jsonl`
//! (one record's JSON per line, as the admin API returns it). The state machine calls
//! [`AuditArchive::write_segment`] with the records an `ArchiveAudit` entry is about to forget, before it
//! applies the entry; every replica holds the same records then, so every replica writes the same file. A
//! segment is written to a temporary file, synced, renamed into place and the directory synced; an
//! existing file with the same bytes is accepted, so replaying the log after a restart is idempotent. An
//! existing file with other bytes is refused, never overwritten: it means this disk was changed.
//!
//! [`verify_segments`] reads the segments one line at a time (never a whole segment in memory, never under
//! the state's lock) and reports how many records it checked, which range it does not have (a coordinator
//! that installed a snapshot taken after an archive never saw those records: they are reported missing,
//! never verified) and where the chain breaks. It decides nothing about the registry.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::state::{AuditCheckpoint, AuditRecord, ChainVerifier};

/// The directory under the data directory that holds the segments.
pub const ARCHIVE_DIR: &str = "audit-archive";

/// Records checked per [`ChainVerifier::feed`] call while streaming a segment.
const VERIFY_CHUNK: usize = 1024;

/// Why a segment could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} exists with other contents than the records being archived; refusing to overwrite it"
    )]
    Conflict { path: PathBuf },
    #[error("audit record does not serialize: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One segment file: the seqs its name says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub first: u64,
    pub last: u64,
    pub path: PathBuf,
}

impl SegmentFile {
    /// The file's name, e.g. `1-10000.jsonl`.
    pub fn name(&self) -> String {
        segment_name(self.first, self.last)
    }
}

fn segment_name(first: u64, last: u64) -> String {
    format!("{first}-{last}.jsonl")
}

/// The archive directory of one coordinator.
#[derive(Debug, Clone)]
pub struct AuditArchive {
    dir: PathBuf,
}

impl AuditArchive {
    /// The archive of the coordinator whose data directory is `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(ARCHIVE_DIR),
        }
    }

    /// Where the segments are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `records` (consecutive, oldest first) as one segment; returns its path, or `None` for no
    /// records. Blocking: call it off the async executor.
    pub fn write_segment(&self, records: &[AuditRecord]) -> Result<Option<PathBuf>, ArchiveError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        for r in records {
            serde_json::to_writer(&mut bytes, r)?;
            bytes.push(b'\n');
        }
        let name = segment_name(first.seq, last.seq);
        let path = self.dir.join(&name);
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        match fs::read(&path) {
            Ok(existing) if existing == bytes => return Ok(Some(path)),
            Ok(_) => return Err(ArchiveError::Conflict { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(Some(path))
    }

    /// The segments on disk, by first seq; files that are not segments are left out.
    pub fn segments(&self) -> Result<Vec<SegmentFile>, ArchiveError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut segments = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            let Some((first, last)) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            segments.push(SegmentFile {
                first,
                last,
                path: entry.path(),
            });
        }
        segments.sort_by_key(|s| (s.first, s.last));
        Ok(segments)
    }
}

impl AuditArchive {
    /// Up to `max` bytes of segment `first`-`last` from `offset`, and the segment's whole size. Only a
    /// segment the directory lists is read (the path is built from the two numbers). Blocking.
    pub fn read_chunk(
        &self,
        first: u64,
        last: u64,
        offset: u64,
        max: usize,
    ) -> Result<Option<(Vec<u8>, u64)>, ArchiveError> {
        use std::io::{Read, Seek, SeekFrom};
        let Some(segment) = self
            .segments()?
            .into_iter()
            .find(|s| s.first == first && s.last == last)
        else {
            return Ok(None);
        };
        let mut file = File::open(&segment.path).map_err(io(&segment.path))?;
        let size = file.metadata().map_err(io(&segment.path))?.len();
        file.seek(SeekFrom::Start(offset.min(size)))
            .map_err(io(&segment.path))?;
        let mut data = Vec::new();
        file.take(max as u64)
            .read_to_end(&mut data)
            .map_err(io(&segment.path))?;
        Ok(Some((data, size)))
    }
}

/// `<first>-<last>.jsonl` → (first, last), with `1 <= first <= last`.
fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let (first, last) = name.strip_suffix(".jsonl")?.split_once('-')?;
    let (first, last) = (first.parse::<u64>().ok()?, last.parse::<u64>().ok()?);
    (1 <= first && first <= last).then_some((first, last))
}

/// A run of archived seqs this coordinator does not hold.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct MissingRange {
    pub from_seq: u64,
    pub to_seq: u64,
}

/// Where the archived chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBreak {
    /// The segment's file name.
    pub segment: String,
    /// The seq where it breaks (the segment's first seq when the file itself is unreadable).
    pub seq: u64,
    pub reason: String,
}

/// What [`verify_segments`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentReport {
    /// Archived records checked.
    pub checked: u64,
    /// Of those, the ones `visible` accepted.
    pub visible: u64,
    /// Archived seqs this coordinator has no segment for.
    pub missing: Vec<MissingRange>,
    /// The first break found; verification stops there.
    pub broken: Option<SegmentBreak>,
}

/// Verifies the segments of `archive` in order from genesis up to `checkpoint` (nothing when `None`):
/// each segment's records are consecutive, named by the file, and chained to the segment before it; the
/// last archived record's hash is the checkpoint's. A gap between segments (or before the first, or after
/// the last) is reported missing and the chain is picked up again after it, never assumed. Segments past
/// the checkpoint (written for an archive not applied yet) are left out. Blocking and streamed.
pub fn verify_segments(
    archive: &AuditArchive,
    checkpoint: Option<&AuditCheckpoint>,
    visible: &dyn Fn(&AuditRecord) -> bool,
) -> Result<SegmentReport, ArchiveError> {
    let mut report = SegmentReport::default();
    let Some(checkpoint) = checkpoint else {
        return Ok(report);
    };
    let mut next = 1u64;
    let mut verifier = ChainVerifier::default();
    let segments = archive.segments()?;
    for segment in segments.iter().filter(|s| s.first <= checkpoint.seq) {
        let fail = |seq: u64, reason: String| SegmentBreak {
            segment: segment.name(),
            seq,
            reason,
        };
        if segment.first < next {
            report.broken = Some(fail(
                segment.first,
                format!("overlaps the segment before it (expected seq {next})"),
            ));
            return Ok(report);
        }
        if segment.last > checkpoint.seq {
            report.broken = Some(fail(
                checkpoint.seq,
                format!("runs past the checkpoint at seq {}", checkpoint.seq),
            ));
            return Ok(report);
        }
        if segment.first > next {
            report.missing.push(MissingRange {
                from_seq: next,
                to_seq: segment.first - 1,
            });
            // The chain is picked up again at the segment's first record, checked on its own.
            verifier = ChainVerifier::default();
        }
        if let Some(broken) = verify_one(segment, &mut verifier, &mut report, visible)? {
            report.broken = Some(broken);
            return Ok(report);
        }
        next = segment.last + 1;
    }
    if next <= checkpoint.seq {
        report.missing.push(MissingRange {
            from_seq: next,
            to_seq: checkpoint.seq,
        });
    } else if let Some((seq, hash)) = verifier.last() {
        if hash != checkpoint.hash {
            let segment = segments
                .iter()
                .rev()
                .find(|s| s.last == seq)
                .map(SegmentFile::name)
                .unwrap_or_default();
            report.broken = Some(SegmentBreak {
                segment,
                seq,
                reason: "the last archived record's hash is not the checkpoint's".to_owned(),
            });
        }
    }
    Ok(report)
}

/// Streams one segment through `verifier`; `Some` names where it breaks.
fn verify_one(
    segment: &SegmentFile,
    verifier: &mut ChainVerifier,
    report: &mut SegmentReport,
    visible: &dyn Fn(&AuditRecord) -> bool,
) -> Result<Option<SegmentBreak>, ArchiveError> {
    let fail = |seq: u64, reason: String| {
        Ok(Some(SegmentBreak {
            segment: segment.name(),
            seq,
            reason,
        }))
    };
    let file = File::open(&segment.path).map_err(io(&segment.path))?;
    let mut chunk = Vec::with_capacity(VERIFY_CHUNK);
    let mut expected = segment.first;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(&segment.path))?;
        let record: AuditRecord = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => return fail(expected, format!("line {} does not parse: {e}", n + 1)),
        };
        if record.seq != expected {
            return fail(
                expected,
                format!(
                    "line {} holds seq {}, expected {expected}",
                    n + 1,
                    record.seq
                ),
            );
        }
        expected += 1;
        chunk.push(record);
        if chunk.len() == VERIFY_CHUNK {
            if let Some(broken) = feed(segment, verifier, report, visible, &mut chunk) {
                return Ok(Some(broken));
            }
        }
    }
    if let Some(broken) = feed(segment, verifier, report, visible, &mut chunk) {
        return Ok(Some(broken));
    }
    if expected != segment.last + 1 {
        return fail(
            expected,
            format!("ends before seq {}, which its name promises", segment.last),
        );
    }
    Ok(None)
}

fn feed(
    segment: &SegmentFile,
    verifier: &mut ChainVerifier,
    report: &mut SegmentReport,
    visible: &dyn Fn(&AuditRecord) -> bool,
    chunk: &mut Vec<AuditRecord>,
) -> Option<SegmentBreak> {
    let result = verifier.feed(chunk);
    let checked = match &result {
        Ok(()) => chunk.len(),
        Err(e) => chunk.iter().take_while(|r| r.seq < e.seq).count(),
    };
    report.checked += checked as u64;
    report.visible += chunk[..checked].iter().filter(|r| visible(r)).count() as u64;
    chunk.clear();
    result.err().map(|e| SegmentBreak {
        segment: segment.name(),
        seq: e.seq,
        reason: e.reason,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::{Actor, AuditOutcome, GENESIS_HASH};

    /// A chain of `n` records from seq 1.
    pub(crate) fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    seq,
                    at_ms: seq * 1000,
                    actor: Actor::system(),
                    action: "test.record".into(),
                    project: (seq % 2 == 0).then(|| "prj_even".to_owned()),
                    target: format!("t{seq}"),
                    outcome: AuditOutcome::Success,
                    detail: String::new(),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn checkpoint(records: &[AuditRecord], through: u64) -> AuditCheckpoint {
        let r = &records[usize::try_from(through).expect("small") - 1];
        AuditCheckpoint {
            seq: r.seq,
            hash: r.hash.clone(),
            archived: through,
            bootstrap_principal: None,
        }
    }

    fn all(_: &AuditRecord) -> bool {
        true
    }

    #[test]
    fn a_listed_segment_is_read_in_pieces_and_nothing_else_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = AuditArchive::in_data_dir(dir.path());
        archive.write_segment(&chain(3)).expect("writes");
        let whole = fs::read(dir.path().join("audit-archive/1-3.jsonl")).expect("reads");
        let (head, size) = archive
            .read_chunk(1, 3, 0, 10)
            .expect("reads")
            .expect("listed");
        assert_eq!((head.as_slice(), size), (&whole[..10], whole.len() as u64));
        let (tail, _) = archive
            .read_chunk(1, 3, 10, usize::MAX)
            .expect("reads")
            .expect("listed");
        assert_eq!([head, tail].concat(), whole);
        assert!(archive.read_chunk(1, 2, 0, 10).expect("reads").is_none());
    }

    #[test]
    fn segments_are_written_once_and_an_identical_rewrite_is_accepted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = AuditArchive::in_data_dir(dir.path());
        let records = chain(5);
        let path = archive
            .write_segment(&records[..3])
            .expect("writes")
            .expect("a segment");
        assert_eq!(path, dir.path().join("audit-archive/1-3.jsonl"));
        let text = fs::read_to_string(&path).expect("reads");
        assert_eq!(text.lines().count(), 3);
        let again = archive.write_segment(&records[..3]).expect("replay");
        assert_eq!(again, Some(path.clone()));
        // Other bytes under the same name are refused and left as they are.
        let mut changed = records[..3].to_vec();
        changed[1].detail = "other".into();
        assert!(matches!(
            archive.write_segment(&changed),
            Err(ArchiveError::Conflict { .. })
        ));
        assert_eq!(fs::read_to_string(&path).expect("reads"), text);
        assert_eq!(archive.write_segment(&[]).expect("nothing"), None);
        // No temporary file stays behind, and only segments are listed.
        fs::write(archive.dir().join("notes.txt"), "x").expect("write");
        let listed = archive.segments().expect("lists");
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].first, listed[0].last), (1, 3));
    }

    #[test]
    fn segments_verify_in_order_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = AuditArchive::in_data_dir(dir.path());
        let records = chain(2500);
        archive.write_segment(&records[..1500]).expect("first");
        archive.write_segment(&records[1500..2000]).expect("second");
        let cp = checkpoint(&records, 2000);
        let report = verify_segments(&archive, Some(&cp), &|r: &AuditRecord| r.project.is_some())
            .expect("verifies");
        assert_eq!(report.checked, 2000);
        assert_eq!(report.visible, 1000);
        assert!(report.missing.is_empty());
        assert_eq!(report.broken, None);
        // No checkpoint: nothing archived, nothing to check.
        let none = verify_segments(&archive, None, &all).expect("verifies");
        assert_eq!(none, SegmentReport::default());
        // A segment written for an archive not applied yet is left out.
        archive.write_segment(&records[2000..2100]).expect("third");
        let report = verify_segments(&archive, Some(&cp), &all).expect("verifies");
        assert_eq!((report.checked, report.broken), (2000, None));
    }

    #[test]
    fn a_tampered_line_names_its_segment_and_seq() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = AuditArchive::in_data_dir(dir.path());
        let records = chain(20);
        archive.write_segment(&records[..10]).expect("first");
        let second = archive
            .write_segment(&records[10..20])
            .expect("second")
            .expect("a segment");
        let text = fs::read_to_string(&second).expect("reads");
        fs::write(&second, text.replacen("\"t14\"", "\"t14x\"", 1)).expect("tamper");
        let report =
            verify_segments(&archive, Some(&checkpoint(&records, 20)), &all).expect("runs");
        let broken = report.broken.expect("the tampering is found");
        assert_eq!(broken.segment, "11-20.jsonl");
        assert_eq!(broken.seq, 14);
        assert_eq!(report.checked, 13, "records before the break were checked");
    }

    #[test]
    fn a_checkpoint_hash_that_does_not_match_the_last_segment_is_a_break() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = AuditArchive::in_data_dir(dir.path());
        let records = chain(10);
        archive.write_segment(&records).expect("writes");
        let mut cp = checkpoint(&records, 10);
        cp.hash = GENESIS_HASH.to_owned();
        let report = verify_segments(&archive, Some(&cp), &all).expect("runs");
        let broken = report.broken.expect("a break");
        assert_eq!((broken.segment.as_str(), broken.seq), ("1-10.jsonl", 10));
    }

    #[test]
    fn segments_this_coordinator_never_wrote_are_reported_missing_not_verified() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = AuditArchive::in_data_dir(dir.path());
        let records = chain(40);
        // Joined late: it installed a snapshot checkpointed at 20, then archived 21..=30 itself.
        archive.write_segment(&records[20..30]).expect("writes");
        let report =
            verify_segments(&archive, Some(&checkpoint(&records, 30)), &all).expect("runs");
        assert_eq!(
            report.missing,
            vec![MissingRange {
                from_seq: 1,
                to_seq: 20
            }]
        );
        assert_eq!((report.checked, report.broken), (10, None));
        // Nothing on disk at all: the whole archived range is missing.
        let empty = tempfile::tempdir().expect("temp dir");
        let report = verify_segments(
            &AuditArchive::in_data_dir(empty.path()),
            Some(&checkpoint(&records, 30)),
            &all,
        )
        .expect("runs");
        assert_eq!(
            report.missing,
            vec![MissingRange {
                from_seq: 1,
                to_seq: 30
            }]
        );
        assert_eq!(report.checked, 0);
    }

    #[test]
    fn a_truncated_segment_is_a_break() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = AuditArchive::in_data_dir(dir.path());
        let records = chain(10);
        let path = archive
            .write_segment(&records)
            .expect("writes")
            .expect("a segment");
        let text = fs::read_to_string(&path).expect("reads");
        let kept: String = text.lines().take(7).map(|l| format!("{l}\n")).collect();
        fs::write(&path, kept).expect("truncate");
        let report =
            verify_segments(&archive, Some(&checkpoint(&records, 10)), &all).expect("runs");
        let broken = report.broken.expect("a break");
        assert_eq!((broken.segment.as_str(), broken.seq), ("1-10.jsonl", 8));
    }
}
