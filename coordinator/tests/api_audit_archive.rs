//! Audit retention end to end on a real single-node coordinator (real QUIC, sled and disk): with a small
//! `keep`/`batch`, the leader's archiver archives the oldest records once apply version 4 is on, the
//! segments appear under `<data_dir>/audit-archive/`, `GET /v1/audit/verify` checks the archive from
//! genesis and the live records from the checkpoint, `GET /v1/audit` says which records are archived, and
//! a tampered segment line fails verification naming its segment and seq.

mod api_common;

use std::time::Duration;

use anyhow::Context;
use coordinator::state::{AuditRecord, ChainVerifier, APPLY_VERSION};
use coordinator::AuditRetention;
use serde_json::{json, Value};

use api_common::{start_with, Setup};

const DEADLINE: Duration = Duration::from_secs(30);
const KEEP: u64 = 6;
const BATCH: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_archives_old_audit_records_to_disk_and_verify_checks_the_whole_chain(
) -> anyhow::Result<()> {
    let api = start_with(Setup {
        audit: AuditRetention {
            keep_records: KEEP,
            batch: BATCH,
        },
        ..Setup::default()
    })
    .await?;
    testkit::eventually("apply version 4 switched on", DEADLINE, || {
        api.handle.read(|s| s.apply_version) == APPLY_VERSION
    })
    .await?;
    for n in 0..12 {
        api.create_project(&format!("archived-{n}")).await?;
    }
    // The archiver brings the live log down to at most `KEEP` records, archiving `BATCH` at a time.
    let checkpoint =
        testkit::eventually_some("the audit log archived down to keep", DEADLINE, || {
            api.handle.read(|s| {
                let log = s.audit_log();
                let cp = log.checkpoint()?;
                (log.len() as u64 <= KEEP).then(|| cp.clone())
            })
        })
        .await?;
    assert!(checkpoint.archived >= 12, "{checkpoint:?}");
    assert_eq!(checkpoint.archived, checkpoint.seq);

    // Segments on disk cover 1..=checkpoint in order, and chain into the live records.
    let archive = api.handle.audit_archive().clone();
    let segments = archive.segments()?;
    assert!(segments.len() >= 3, "{segments:?}");
    assert_eq!(segments[0].first, 1);
    assert_eq!(segments.last().map(|s| s.last), Some(checkpoint.seq));
    let mut chain = ChainVerifier::default();
    for (i, segment) in segments.iter().enumerate() {
        assert!(segment.path.starts_with(archive.dir()));
        assert!(archive.dir().ends_with("audit-archive"));
        if i > 0 {
            assert_eq!(segment.first, segments[i - 1].last + 1);
        }
        let text = std::fs::read_to_string(&segment.path)?;
        let records: Vec<AuditRecord> = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(records.len() as u64, segment.last - segment.first + 1);
        chain.feed(&records)?;
    }
    assert_eq!(
        chain.last().map(|(seq, hash)| (seq, hash.to_owned())),
        Some((checkpoint.seq, checkpoint.hash.clone()))
    );
    let bootstrap = std::fs::read_to_string(&segments[0].path)?;
    assert!(bootstrap.contains("system.bootstrap"), "seq 1 is archived");

    // The server verifies archive and live records; the numbers add up.
    let report = api.get("/v1/audit/verify").send().await?;
    assert_eq!(report.status, 200, "{:?}", report.body);
    assert_eq!(report.body["ok"], json!(true), "{:#}", report.body);
    assert_eq!(report.body["missing"], json!([]));
    let archived = report.body["archived_records"]
        .as_u64()
        .context("archived")?;
    let live = report.body["live_records"].as_u64().context("live")?;
    assert!(archived >= checkpoint.seq, "{:#}", report.body);
    assert!(live >= 1);
    assert_eq!(report.body["records"].as_u64(), Some(archived + live));

    // Asking for records below the checkpoint says they are archived; the page starts after them.
    let page = api
        .get("/v1/audit?after_seq=0&page_size=1000")
        .send()
        .await?;
    let through = page.body["archived_through_seq"]
        .as_u64()
        .context("the archived seq is named")?;
    assert!(through >= checkpoint.seq);
    assert_eq!(page.body["items"][0]["seq"].as_u64(), Some(through + 1));
    let after = api
        .get(&format!("/v1/audit?after_seq={through}"))
        .send()
        .await?;
    assert_eq!(after.body["archived_through_seq"], Value::Null);

    // Tampering with one line of a segment fails verification, naming the segment and the seq.
    let victim = &segments[1];
    let text = std::fs::read_to_string(&victim.path)?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut record: Value = serde_json::from_str(&lines[1])?;
    let seq = record["seq"].as_u64().context("seq")?;
    record["detail"] = json!("rewritten after the fact");
    lines[1] = serde_json::to_string(&record)?;
    std::fs::write(&victim.path, lines.join("\n") + "\n")?;
    let report = api.get("/v1/audit/verify").send().await?;
    assert_eq!(report.status, 200);
    assert_eq!(report.body["ok"], json!(false), "{:#}", report.body);
    assert_eq!(report.body["broken_at_seq"].as_u64(), Some(seq));
    assert_eq!(report.body["broken_segment"], json!(victim.name()));
    let error = report.body["error"].as_str().unwrap_or_default();
    assert!(error.contains(&victim.name()), "{error}");
    api.stop().await;
    Ok(())
}
