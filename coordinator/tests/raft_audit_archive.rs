//! The audit archive across a coordinator group (the harness of `raft_common`): every replica writes the
//! same segments and a restart replays them unchanged; a member that joined after an archive copies the
//! segments it never wrote from the others, keeping only those that chain to a hash it already trusts.

mod raft_common;

use anyhow::{anyhow, ensure, Context, Result};
use coordinator::state::APPLY_VERSION;
use coordinator::{Handle, NodeId};

use raft_common::*;

/// Every segment file of a member's audit archive: name and bytes.
fn segment_files(handle: &Handle) -> Result<Vec<(String, Vec<u8>)>> {
    handle
        .audit_archive()
        .segments()?
        .into_iter()
        .map(|s| Ok((s.name(), std::fs::read(&s.path)?)))
        .collect()
}

/// The audit retention of the archiving scenarios: a few records live, archived five at a time.
const ARCHIVING: coordinator::AuditRetention = coordinator::AuditRetention {
    keep_records: 8,
    batch: 5,
};

/// Three voters archiving with [`ARCHIVING`], every one at the newest apply version; and the leader.
async fn archiving_cluster(snapshot_every: u64) -> Result<(Cluster, NodeId)> {
    let cluster = Cluster::bootstrap_with(snapshot_every, ARCHIVING, &[1, 2, 3]).await?;
    let leader = cluster.agreed_leader(None).await?;
    for (_, handle) in cluster.running() {
        eventually("every member at the newest apply version", || {
            handle.read(|s| s.apply_version) == APPLY_VERSION
        })
        .await?;
    }
    Ok((cluster, leader))
}

/// A member's checkpoint and audit head once its archiver has settled (at most `keep_records` live).
fn settled(h: &Handle) -> Option<(coordinator::state::AuditCheckpoint, u64)> {
    h.read(|s| {
        let log = s.audit_log();
        log.checkpoint()
            .filter(|_| log.len() as u64 <= ARCHIVING.keep_records)
            .map(|c| (c.clone(), s.audit_head().0))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_writes_the_same_audit_segments_and_a_restart_replays_them_unchanged(
) -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let (mut cluster, leader) = archiving_cluster(1_000).await?;
    let handle = cluster.handle(leader)?;
    for i in 0..25 {
        write_audited(&handle, &format!("archived-{i}")).await?;
    }
    // The archiver settles at most `keep_records` live records, and every member holds the same state.
    let (checkpoint, head) =
        testkit::eventually_some("the leader archived", DEADLINE, || settled(&handle)).await?;
    ensure!(
        checkpoint.seq >= 20,
        "archived only through {}",
        checkpoint.seq
    );
    for (id, member) in cluster.running() {
        eventually(&format!("member {id} caught up with the archive"), || {
            settled(&member).is_some_and(|(c, h)| c == checkpoint && h == head)
        })
        .await?;
    }
    let expected = segment_files(&handle)?;
    ensure!(expected.len() >= 4, "{} segments", expected.len());
    for (id, member) in cluster.running() {
        ensure!(
            segment_files(&member)? == expected,
            "member {id} wrote other segments than the leader"
        );
        let report = coordinator::audit_archive::verify_segments(
            member.audit_archive(),
            Some(&checkpoint),
            &|_| true,
        )?;
        ensure!(
            report.broken.is_none() && report.missing.is_empty(),
            "member {id}: {report:?}"
        );
        ensure!(report.checked == checkpoint.seq, "member {id}: {report:?}");
    }

    // A follower restarted replays the whole log (no snapshot yet): it writes the same segments again,
    // which it accepts, and ends with the same state.
    let follower = cluster.a_follower_of(leader)?;
    let before = cluster.handle(follower)?.read(|s| s.to_bytes());
    cluster.stop(follower).await?;
    cluster.start(follower, None).await?;
    let restarted = cluster.handle(follower)?;
    eventually("the restarted follower replayed the log", || {
        restarted.read(|s| s.to_bytes()) == before
    })
    .await?;
    ensure!(
        segment_files(&restarted)? == expected,
        "the replay changed the archive"
    );
    cluster.shutdown_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_joined_after_an_archive_copies_the_segments_it_never_wrote_if_they_prove_out(
) -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let (mut cluster, leader) = archiving_cluster(5).await?;
    let handle = cluster.handle(leader)?;
    for i in 0..30 {
        write_audited(&handle, &format!("archived-{i}")).await?;
    }
    testkit::eventually_some("the leader archived", DEADLINE, || settled(&handle)).await?;
    // More writes until the leader's log no longer holds the first archives: a member joining now gets a
    // snapshot whose checkpoint is past anything it could write itself.
    let archived_at = handle
        .log_status()
        .applied_index
        .ok_or_else(|| anyhow!("nothing applied"))?;
    let mut n = 0;
    while handle
        .log_status()
        .purged_index
        .is_none_or(|p| p <= archived_at)
    {
        write_audited(&handle, &format!("pushing-{n}")).await?;
        n += 1;
        ensure!(n < 200, "the leader never purged its log");
    }
    let (checkpoint, head) =
        testkit::eventually_some("the leader archived again", DEADLINE, || settled(&handle))
            .await?;
    for (id, member) in cluster.running() {
        eventually(&format!("member {id} caught up with the archive"), || {
            settled(&member).is_some_and(|(c, h)| c == checkpoint && h == head)
        })
        .await?;
    }
    let expected = segment_files(&handle)?;
    ensure!(expected.len() >= 5, "{} segments", expected.len());

    // Members 1 and 2 hold an altered copy of one early segment (their disks changed behind their backs):
    // the newcomer asks them first and must not keep it.
    let victim = expected[1].0.clone();
    for id in [1, 2] {
        let path = cluster.handle(id)?.audit_archive().dir().join(&victim);
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(&path, text.replacen("archived-", "ARCHIVED-", 1))?;
    }

    let joining = cluster.start_new(4).await?;
    handle.add_member(4, joining, true).await?;
    let newcomer = cluster.handle(4)?;
    newcomer
        .wait_for_log(|l| l.snapshot_index.is_some(), DEADLINE)
        .await
        .context("the newcomer installed no snapshot")?;
    eventually("the newcomer holds every archived segment", || {
        segment_files(&newcomer).is_ok_and(|files| files == expected)
    })
    .await?;
    let report = coordinator::audit_archive::verify_segments(
        newcomer.audit_archive(),
        Some(&checkpoint),
        &|_| true,
    )?;
    ensure!(
        report.broken.is_none() && report.missing.is_empty(),
        "{report:?}"
    );
    ensure!(report.checked == checkpoint.seq, "{report:?}");
    cluster.shutdown_all().await
}
