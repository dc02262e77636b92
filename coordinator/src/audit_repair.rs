//! Copying archived audit segments between coordinators: a coordinator that joined (or fell behind)
//! after records were archived installed a snapshot whose checkpoint is past its segments, so it never
//! wrote them; it copies them from another coordinator, and keeps only what it can prove.
//!
//! Serving ([`serve`], the mesh method `ReadAuditArchive`, coordinators only): the list of this
//! coordinator's segments, or a piece of one, read off the executor.
//!
//! Copying ([`repair_loop`], on every coordinator): every [`REPAIR_TICK`] (backing off to
//! [`REPAIR_BACKOFF_MAX`] while no member can help) the segments' names are compared with the replicated
//! checkpoint ([`gaps`]: a directory listing, nothing read). For each gap, the
//! hash the gap's last record must have is one this coordinator already trusts — the checkpoint's, or the
//! `prev_hash` of the first record of the segment it holds right after the gap. A member's segments that
//! fill the gap are copied from the top down, each checked before it is written ([`check_segment`]: its
//! lines are its seqs in order, every record's hash matches its contents and chains to the one before, the
//! last one's hash is the expected one, and the record before it — genesis for seq 1 — is then the next
//! expectation). A segment that fails is dropped and the next member is asked. Copied segments are written
//! like the state machine writes its own (`AuditArchive::write_segment`). Must never install a record it
//! could not chain to a hash it already trusted, and never touch a segment it holds.

use std::time::Duration;

use protocol::pb;
use protocol::rpc::{decode_message, encode_message, Method, RpcStatus};
use tokio_util::sync::CancellationToken;

use crate::audit_archive::{ArchiveError, AuditArchive, MissingRange, SegmentFile};
use crate::node::{Handle, WeakHandle};
use crate::state::{AuditRecord, ChainVerifier, GENESIS_HASH};

/// How often a coordinator looks for archived segments it lacks (a directory listing when it lacks none).
pub(crate) const REPAIR_TICK: Duration = Duration::from_secs(2);
/// The longest pause between attempts while no member can fill a gap.
pub(crate) const REPAIR_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The most bytes one read of a segment answers.
const CHUNK_BYTES: u32 = 1024 * 1024;
/// The largest segment copied (a segment holds one archive batch of records).
const MAX_SEGMENT_BYTES: u64 = 512 * 1024 * 1024;
/// How long one call to another coordinator may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers `ReadAuditArchive`: the segments this coordinator holds, or a piece of one.
pub(crate) async fn serve(archive: AuditArchive, body: &[u8]) -> Result<bytes::Bytes, RpcStatus> {
    let request: pb::ReadAuditArchiveRequest = decode_message(body)?;
    let max = match request.max_bytes {
        0 => CHUNK_BYTES,
        n => n.min(CHUNK_BYTES),
    } as usize;
    let answer = tokio::task::spawn_blocking(move || {
        if request.list {
            let segments = archive.segments().map_err(internal)?;
            let segments = segments
                .into_iter()
                // A segment whose size cannot be read is left out of the list, not offered as empty.
                .filter_map(|s| {
                    let size = std::fs::metadata(&s.path).ok()?.len();
                    Some(pb::AuditSegmentInfo {
                        first_seq: s.first,
                        last_seq: s.last,
                        size,
                    })
                })
                .collect();
            return Ok(pb::ReadAuditArchiveResponse {
                segments,
                ..Default::default()
            });
        }
        match archive.read_chunk(request.first_seq, request.last_seq, request.offset, max) {
            Ok(Some((data, size))) => Ok(pb::ReadAuditArchiveResponse {
                segments: Vec::new(),
                data,
                size,
            }),
            Ok(None) => Err(RpcStatus::not_found(format!(
                "no archived segment {}-{} here",
                request.first_seq, request.last_seq
            ))),
            Err(e) => Err(internal(e)),
        }
    })
    .await
    .map_err(|e| RpcStatus::internal(format!("reading the audit archive: {e}")))??;
    Ok(encode_message(&answer))
}

fn internal(e: ArchiveError) -> RpcStatus {
    tracing::warn!(error = %e, "serving the audit archive failed");
    RpcStatus::internal("the audit archive could not be read here")
}

/// The archived seqs up to `checkpoint_seq` that no segment in `segments` (sorted by first seq) holds,
/// judged by the segments' names alone: what a coordinator has to copy from another.
pub fn gaps(segments: &[SegmentFile], checkpoint_seq: u64) -> Vec<MissingRange> {
    let mut missing = Vec::new();
    let mut next = 1u64;
    for s in segments.iter().filter(|s| s.first <= checkpoint_seq) {
        if s.first > next {
            missing.push(MissingRange {
                from_seq: next,
                to_seq: s.first - 1,
            });
        }
        next = next.max(s.last.saturating_add(1));
    }
    if next <= checkpoint_seq {
        missing.push(MissingRange {
            from_seq: next,
            to_seq: checkpoint_seq,
        });
    }
    missing
}

/// Checks a copied segment `first`-`last` before it is trusted: one record per line, seqs `first..=last`
/// in order, each record's hash its contents' and chained to the one before, and the last one's hash
/// `expected_last`. Returns the records and the hash the record before `first` must have (genesis for
/// seq 1).
pub(crate) fn check_segment(
    bytes: &[u8],
    first: u64,
    last: u64,
    expected_last: &str,
) -> Result<(Vec<AuditRecord>, String), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let record: AuditRecord = serde_json::from_str(line)
            .map_err(|e| format!("line {} does not parse: {e}", n + 1))?;
        let expected = first + n as u64;
        if record.seq != expected {
            return Err(format!(
                "line {} holds seq {}, not {expected}",
                n + 1,
                record.seq
            ));
        }
        records.push(record);
    }
    let (Some(head), Some(tail)) = (records.first(), records.last()) else {
        return Err("no records".to_owned());
    };
    if tail.seq != last {
        return Err(format!("ends at seq {}, not {last}", tail.seq));
    }
    if tail.hash != expected_last {
        return Err(format!(
            "seq {last}'s hash is not the one the records after it name"
        ));
    }
    let before = head.prev_hash.clone();
    if first == 1 && before != GENESIS_HASH {
        return Err("seq 1 does not follow the genesis hash".to_owned());
    }
    let mut chain = if first == 1 {
        ChainVerifier::default()
    } else {
        ChainVerifier::after(first - 1, &before)
    };
    chain.feed(&records).map_err(|e| e.to_string())?;
    Ok((records, before))
}

/// Looks for archived segments this coordinator lacks every [`REPAIR_TICK`] and copies them from the
/// others, backing off while they cannot help, until `stop`.
pub(crate) async fn repair_loop(handle: WeakHandle, stop: CancellationToken) {
    let mut pause = REPAIR_TICK;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let Some(handle) = handle.upgrade() else {
            return;
        };
        pause = match repair_once(&handle).await {
            Ok(()) => REPAIR_TICK,
            Err(e) => {
                tracing::info!(error = %e, retry_in = ?pause * 2, "audit archive repair: not now");
                (pause * 2).min(REPAIR_BACKOFF_MAX)
            }
        };
    }
}

/// One look: the gaps up to the checkpoint, each filled from whichever member can.
pub(crate) async fn repair_once(handle: &Handle) -> Result<(), String> {
    let Some(checkpoint) = handle.read(|s| s.audit_log().checkpoint().cloned()) else {
        return Ok(());
    };
    let archive = handle.audit_archive().clone();
    let listed = archive.clone();
    let segments = blocking(move || listed.segments()).await?;
    let missing = gaps(&segments, checkpoint.seq);
    if missing.is_empty() {
        return Ok(());
    }
    let status = handle.status();
    let peers: Vec<String> = status
        .members
        .iter()
        .filter(|m| m.id != status.node_id)
        .map(|m| m.raft_addr.clone())
        .collect();
    // Highest first: each gap is anchored by what follows it.
    for range in missing.iter().rev() {
        let anchor = if range.to_seq == checkpoint.seq {
            checkpoint.hash.clone()
        } else {
            let next = segments
                .iter()
                .find(|s| s.first == range.to_seq + 1)
                .cloned()
                .ok_or("no segment after the gap")?;
            let reader = archive.clone();
            blocking(move || first_prev_hash(&reader, next.first, next.last)).await?
        };
        let mut filled = false;
        for peer in &peers {
            match fill(handle, &archive, peer, *range, &anchor).await {
                Ok(copied) => {
                    tracing::info!(
                        peer,
                        from_seq = range.from_seq,
                        to_seq = range.to_seq,
                        segments = copied,
                        "copied archived audit records this coordinator lacked"
                    );
                    filled = true;
                    break;
                }
                Err(e) => tracing::info!(peer, error = %e, "archived audit records not copied"),
            }
        }
        if !filled {
            return Err(format!(
                "no member could fill archived seqs {}-{}",
                range.from_seq, range.to_seq
            ));
        }
    }
    Ok(())
}

/// The `prev_hash` of the first record of a segment this coordinator holds.
fn first_prev_hash(archive: &AuditArchive, first: u64, last: u64) -> Result<String, ArchiveError> {
    // A record's line is a few KiB at most (its target and detail are bounded).
    let Some((head, _)) = archive.read_chunk(first, last, 0, 64 * 1024)? else {
        return Err(ArchiveError::Io {
            path: archive.dir().join(format!("{first}-{last}.jsonl")),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "the segment is gone"),
        });
    };
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let record: AuditRecord = serde_json::from_slice(line)?;
    Ok(record.prev_hash)
}

/// Copies `peer`'s segments that fill `range`, from the top down, each checked against `anchor` and then
/// the hash before it; the number copied.
async fn fill(
    handle: &Handle,
    archive: &AuditArchive,
    peer: &str,
    range: MissingRange,
    anchor: &str,
) -> Result<usize, String> {
    let listed: pb::ReadAuditArchiveResponse = handle
        .rpc_client()
        .call_message(
            peer,
            Method::ReadAuditArchive,
            &pb::ReadAuditArchiveRequest {
                list: true,
                ..Default::default()
            },
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
    // The peer's segments inside the gap, contiguous down from its top.
    let mut offered: Vec<pb::AuditSegmentInfo> = listed
        .segments
        .into_iter()
        .filter(|s| {
            s.first_seq >= range.from_seq
                && s.last_seq <= range.to_seq
                && s.first_seq <= s.last_seq
                && s.size <= MAX_SEGMENT_BYTES
        })
        .collect();
    offered.sort_by_key(|s| std::cmp::Reverse(s.last_seq));
    let mut expect_last_seq = range.to_seq;
    let mut expect_hash = anchor.to_owned();
    let mut copied = 0;
    for segment in offered {
        if segment.last_seq != expect_last_seq {
            break;
        }
        let bytes = download(handle, peer, &segment).await?;
        let (records, before) =
            check_segment(&bytes, segment.first_seq, segment.last_seq, &expect_hash)
                .map_err(|e| format!("segment {}-{}: {e}", segment.first_seq, segment.last_seq))?;
        let writer = archive.clone();
        blocking(move || writer.write_segment(&records)).await?;
        copied += 1;
        expect_hash = before;
        expect_last_seq = segment.first_seq - 1;
        if segment.first_seq == range.from_seq {
            return Ok(copied);
        }
    }
    Err(format!(
        "it holds no segment ending at seq {expect_last_seq} (copied {copied})"
    ))
}

/// A whole segment from `peer`, a piece at a time.
async fn download(
    handle: &Handle,
    peer: &str,
    segment: &pb::AuditSegmentInfo,
) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    loop {
        let piece: pb::ReadAuditArchiveResponse = handle
            .rpc_client()
            .call_message(
                peer,
                Method::ReadAuditArchive,
                &pb::ReadAuditArchiveRequest {
                    list: false,
                    first_seq: segment.first_seq,
                    last_seq: segment.last_seq,
                    offset: bytes.len() as u64,
                    max_bytes: CHUNK_BYTES,
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())?;
        if piece.size > MAX_SEGMENT_BYTES {
            return Err(format!("a segment of {} bytes", piece.size));
        }
        let done = piece.data.is_empty();
        bytes.extend_from_slice(&piece.data);
        if bytes.len() as u64 >= piece.size || done {
            return Ok(bytes);
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::audit_archive::tests::chain;

    fn lines(records: &[AuditRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            serde_json::to_writer(&mut out, r).expect("serializes");
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn gaps_are_read_from_the_segments_names() {
        let seg = |first, last| SegmentFile {
            first,
            last,
            path: PathBuf::from(format!("{first}-{last}.jsonl")),
        };
        assert_eq!(gaps(&[], 0), vec![]);
        assert_eq!(
            gaps(&[], 8),
            vec![MissingRange {
                from_seq: 1,
                to_seq: 8
            }]
        );
        let segments = [seg(1, 4), seg(9, 12), seg(17, 20), seg(21, 24)];
        assert_eq!(
            gaps(&segments, 30),
            vec![
                MissingRange {
                    from_seq: 5,
                    to_seq: 8
                },
                MissingRange {
                    from_seq: 13,
                    to_seq: 16
                },
                MissingRange {
                    from_seq: 25,
                    to_seq: 30
                },
            ]
        );
        // Segments past the checkpoint (an archive not applied yet) change nothing.
        assert_eq!(
            gaps(&segments, 12),
            vec![MissingRange {
                from_seq: 5,
                to_seq: 8
            }]
        );
    }

    #[test]
    fn a_copied_segment_is_kept_only_when_it_chains_to_a_trusted_hash() {
        let records = chain(12);
        // Seqs 5-8, whose last hash the segment after it (9-12) names as its first prev_hash.
        let anchor = records[8].prev_hash.clone();
        let (got, before) = check_segment(&lines(&records[4..8]), 5, 8, &anchor).expect("good");
        assert_eq!(got, records[4..8].to_vec());
        assert_eq!(
            before, records[3].hash,
            "the next expectation is seq 4's hash"
        );
        let (_, genesis) =
            check_segment(&lines(&records[..4]), 1, 4, &before).expect("the first segment");
        assert_eq!(genesis, GENESIS_HASH);

        // A forged segment with a perfectly good chain of its own, but not the one the anchor names.
        let mut forged = records[4..8].to_vec();
        forged[1].detail = "rewritten".into();
        let mut prev = forged[0].hash.clone();
        for r in forged.iter_mut().skip(1) {
            r.prev_hash = prev.clone();
            r.hash = r.compute_hash();
            prev = r.hash.clone();
        }
        assert!(check_segment(&lines(&forged), 5, 8, &anchor).is_err());
        // The right last record with a changed middle one: the chain breaks.
        let mut tampered = records[4..8].to_vec();
        tampered[1].detail = "rewritten".into();
        assert!(check_segment(&lines(&tampered), 5, 8, &anchor).is_err());
        // Missing, extra or misnumbered lines.
        assert!(check_segment(&lines(&records[4..7]), 5, 8, &anchor).is_err());
        assert!(check_segment(&lines(&records[4..8]), 4, 7, &anchor).is_err());
        assert!(check_segment(b"", 5, 8, &anchor).is_err());
        assert!(check_segment(b"{not json\n", 5, 8, &anchor).is_err());
    }
}
