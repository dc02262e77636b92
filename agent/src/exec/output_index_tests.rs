//! The output index's bookkeeping: merged order, one stream, since, tail, rotation, torn records and an
//! agent restart between a chunk and its record.

use std::path::Path;

use super::*;
use crate::exec::log_files::RotatingLog;

fn options(dir: &Path, max_bytes: u64, keep: u32) -> LogOptions {
    LogOptions {
        dir: dir.to_path_buf(),
        max_bytes,
        keep,
    }
}

/// Both streams' logs and the shared index, written the way the pumps write them.
struct Writer {
    index: SharedIndex,
    logs: [RotatingLog; 2],
}

impl Writer {
    fn open(opts: &LogOptions) -> Writer {
        let index = SharedIndex::new(opts.clone());
        let logs = [
            RotatingLog::open(opts, LogStream::Stdout).expect("open stdout"),
            RotatingLog::open(opts, LogStream::Stderr).expect("open stderr"),
        ];
        for (stream, log) in LogStream::ALL.into_iter().zip(&logs) {
            index.cover(stream, log.end(), 1);
        }
        Writer { index, logs }
    }

    fn write(&mut self, stream: LogStream, data: &str, at_ms: u64) {
        let log = &mut self.logs[stream_slot(stream)];
        self.index
            .write_indexed(stream, at_ms, || {
                let start = log.end();
                let result = log.append(data.as_bytes());
                (start, log.end(), result)
            })
            .expect("write");
    }
}

fn query() -> RecordsQuery {
    RecordsQuery {
        stream: None,
        offset: 0,
        max_bytes: 1 << 20,
        since_ms: 0,
        tail_lines: None,
    }
}

/// Everything `query` selects, read in steps of `max_bytes`, as (stream, time, text).
fn read_all(dir: &Path, mut query: RecordsQuery) -> Vec<(LogStream, u64, String)> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let chunk = read_records(dir, &query).expect("read");
        let moved = chunk.next_offset != query.offset;
        for r in chunk.records {
            out.push((
                r.stream,
                r.at_ms,
                String::from_utf8_lossy(&r.data).into_owned(),
            ));
        }
        query.offset = chunk.next_offset;
        query.tail_lines = None;
        if !moved {
            return out;
        }
    }
    panic!("the reads never reached the end");
}

fn text(records: &[(LogStream, u64, String)]) -> String {
    records.iter().map(|(_, _, t)| t.as_str()).collect()
}

#[test]
fn records_come_back_in_write_order_across_streams() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = options(tmp.path(), 0, 4);
    let mut w = Writer::open(&opts);
    w.write(LogStream::Stdout, "out1\n", 10);
    w.write(LogStream::Stderr, "err1\n", 20);
    w.write(LogStream::Stdout, "out2\n", 30);
    let all = read_all(tmp.path(), query());
    assert_eq!(
        all,
        vec![
            (LogStream::Stdout, 10, "out1\n".to_owned()),
            (LogStream::Stderr, 20, "err1\n".to_owned()),
            (LogStream::Stdout, 30, "out2\n".to_owned()),
        ]
    );
    // One stream, with its times.
    let only_err = read_all(
        tmp.path(),
        RecordsQuery {
            stream: Some(LogStream::Stderr),
            ..query()
        },
    );
    assert_eq!(only_err, vec![(LogStream::Stderr, 20, "err1\n".to_owned())]);
    // Since a time: that record and later ones.
    let since = read_all(
        tmp.path(),
        RecordsQuery {
            since_ms: 20,
            ..query()
        },
    );
    assert_eq!(text(&since), "err1\nout2\n");
}

#[test]
fn a_small_budget_answers_whole_records_and_continues() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = Writer::open(&options(tmp.path(), 0, 4));
    w.write(LogStream::Stdout, "aaaa", 1);
    w.write(LogStream::Stderr, "bb", 2);
    w.write(LogStream::Stdout, "cccccc", 3);
    let first = read_records(
        tmp.path(),
        &RecordsQuery {
            max_bytes: 5,
            ..query()
        },
    )
    .expect("read");
    // The first record fits; the second would pass the budget.
    assert_eq!(first.records.len(), 1);
    assert_eq!(first.next_offset, RECORD_BYTES);
    let rest = read_all(
        tmp.path(),
        RecordsQuery {
            max_bytes: 5,
            offset: first.next_offset,
            ..query()
        },
    );
    // A record larger than the budget still comes back whole.
    assert_eq!(text(&rest), "bbcccccc");
}

#[test]
fn tail_starts_at_the_last_lines_across_records_and_streams() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = Writer::open(&options(tmp.path(), 0, 4));
    w.write(LogStream::Stdout, "one\ntwo\nth", 1);
    w.write(LogStream::Stderr, "ree\nfour\n", 2);
    w.write(LogStream::Stdout, "five\n", 3);
    let tail = |lines, stream| {
        text(&read_all(
            tmp.path(),
            RecordsQuery {
                tail_lines: Some(lines),
                stream,
                ..query()
            },
        ))
    };
    assert_eq!(tail(1, None), "five\n");
    assert_eq!(tail(2, None), "four\nfive\n");
    assert_eq!(tail(3, None), "three\nfour\nfive\n");
    assert_eq!(tail(4, None), "two\nthree\nfour\nfive\n");
    assert_eq!(tail(100, None), "one\ntwo\nthree\nfour\nfive\n");
    assert_eq!(tail(0, None), "");
    // One stream's lines: stdout alone reads "one\ntwo\nthfive\n".
    assert_eq!(tail(1, Some(LogStream::Stdout)), "thfive\n");
    // A last line without its newline counts as a line.
    w.write(LogStream::Stdout, "six", 4);
    assert_eq!(tail(2, None), "five\nsix");
}

#[test]
fn rotation_keeps_the_order_of_what_is_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Files of 50 bytes: the index rotates every two records and keeps 3 rotated files; each stream
    // keeps little of its own.
    let mut w = Writer::open(&options(tmp.path(), 50, 3));
    let mut expected = Vec::new();
    for i in 0..40u64 {
        let stream = if i % 3 == 0 {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        };
        let line = format!("line {i:02}\n");
        w.write(stream, &line, 100 + i);
        expected.push((stream, 100 + i, line));
    }
    let all = read_all(tmp.path(), query());
    assert!(!all.is_empty());
    assert!(all.len() < expected.len(), "old records were pruned");
    // What comes back is the newest part of the output, in order, nothing repeated or reordered.
    let tail = &expected[expected.len() - all.len()..];
    assert_eq!(all, tail);
    // An offset that was rotated away continues at the oldest record kept.
    let from_zero = read_records(tmp.path(), &query()).expect("read");
    assert!(from_zero.start_offset > 0);
    // The last lines are found across rotated index files.
    let last = read_all(
        tmp.path(),
        RecordsQuery {
            tail_lines: Some(2),
            ..query()
        },
    );
    assert_eq!(text(&last), "line 38\nline 39\n");
}

#[test]
fn a_restart_continues_the_index_and_covers_unrecorded_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = options(tmp.path(), 0, 4);
    let mut w = Writer::open(&opts);
    w.write(LogStream::Stdout, "before\n", 10);
    w.write(LogStream::Stderr, "oops\n", 20);
    // The agent stops after a chunk reached the log but before its record did.
    w.logs[0].append(b"lost record\n").expect("append");
    drop(w);
    let mut w = Writer::open(&opts);
    w.write(LogStream::Stdout, "after\n", 30);
    let all = read_all(tmp.path(), query());
    assert_eq!(
        all,
        vec![
            (LogStream::Stdout, 10, "before\n".to_owned()),
            (LogStream::Stderr, 20, "oops\n".to_owned()),
            // Covered on reopening, stamped then (the Writer reopens at time 1).
            (LogStream::Stdout, 1, "lost record\n".to_owned()),
            (LogStream::Stdout, 30, "after\n".to_owned()),
        ]
    );
    // Reopening with nothing unrecorded adds nothing.
    drop(w);
    let _again = Writer::open(&opts);
    assert_eq!(read_all(tmp.path(), query()).len(), 4);
}

#[test]
fn a_torn_record_is_skipped_and_later_records_stay_aligned() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = options(tmp.path(), 0, 4);
    let mut w = Writer::open(&opts);
    w.write(LogStream::Stdout, "whole\n", 10);
    drop(w);
    // A crash in the middle of a record's write.
    let mut raw = RotatingLog::open_named(&opts, INDEX_FILE).expect("open index");
    let torn = IndexRecord {
        stream: LogStream::Stdout,
        offset: 6,
        len: 3,
        at_ms: 11,
    }
    .encode();
    raw.append(&torn[..10]).expect("append");
    drop(raw);
    let mut w = Writer::open(&opts);
    w.write(LogStream::Stderr, "next\n", 20);
    assert_eq!(text(&read_all(tmp.path(), query())), "whole\nnext\n");
}

#[test]
fn records_round_trip_and_garbage_is_refused() {
    let record = IndexRecord {
        stream: LogStream::Stderr,
        offset: 1 << 40,
        len: 65_536,
        at_ms: 1_790_000_000_000,
    };
    assert_eq!(IndexRecord::decode(&record.encode()), Some(record));
    assert_eq!(IndexRecord::decode(&[0u8; 24]), None);
    let mut flipped = record.encode();
    flipped[12] ^= 1;
    assert_eq!(IndexRecord::decode(&flipped), None);
    assert_eq!(IndexRecord::decode(&[1u8; 7]), None);
}

#[test]
fn an_attempt_without_output_reads_as_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chunk = read_records(&tmp.path().join("none"), &query()).expect("read");
    assert!(chunk.records.is_empty());
    assert_eq!(chunk.next_offset, 0);
}
