//! Coordinator groups on loopback: real QUIC with mutual TLS from Meridian's own CA, real sled in temporary
//! directories, openraft timing as configured. Every wait is on a condition with a deadline.
//!
//! The scenarios run one at a time (they share the machine's cores, and Raft timing suffers under load); the
//! harness is `raft_common`, the audit archive's scenarios are in `raft_audit_archive.rs`.

mod raft_common;

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use coordinator::node::ReadError;
use coordinator::state::{AuditOutcome, Outcome, APPLY_VERSION};
use coordinator::{Handle, NodeId};

use raft_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_switches_on_the_newest_apply_version_its_build_knows() -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(1_000, &[1, 2, 3]).await?;
    cluster.agreed_leader(None).await?;
    for (id, handle) in cluster.running() {
        handle
            .wait_for(
                |_| handle.read(|s| s.apply_version) == APPLY_VERSION,
                DEADLINE,
            )
            .await
            .with_context(|| format!("member {id} never reached apply version {APPLY_VERSION}"))?;
    }
    // Every replica recorded the switch once, as the system.
    let leader = cluster.agreed_leader(None).await?;
    let switches = cluster.handle(leader)?.read(|s| {
        s.audit_records()
            .iter()
            .filter(|r| r.action == "cluster.apply_version" && r.outcome == AuditOutcome::Success)
            .count()
    });
    ensure!(switches == 1, "the version was switched {switches} times");
    cluster.shutdown_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_voters_replicate_forward_and_survive_leader_loss() -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(1_000, &[1, 2, 3]).await?;
    let leader = cluster.agreed_leader(None).await?;

    // A write through every member, followers forwarding to the leader.
    let mut acknowledged = Vec::new();
    for (id, handle) in cluster.running() {
        let target = format!("through-{id}");
        write_audited(&handle, &target).await?;
        acknowledged.push(target);
    }
    cluster.converge_on(leader).await?;
    for (_, handle) in cluster.running() {
        assert_has_all(&handle, &acknowledged)?;
    }
    let statuses: Vec<_> = cluster.running().iter().map(|(_, h)| h.status()).collect();
    for status in &statuses {
        ensure!(
            status.members.len() == 3 && status.members.iter().all(|m| m.voter),
            "members: {status:?}"
        );
    }

    // Lose the leader: a new one is elected, nothing acknowledged is lost, writes go on.
    cluster.stop(leader).await?;
    let new_leader = cluster.agreed_leader(Some(leader)).await?;
    ensure!(new_leader != leader);
    for (_, handle) in cluster.running() {
        assert_has_all(&handle, &acknowledged)?;
    }
    for (id, handle) in cluster.running() {
        let target = format!("after-loss-through-{id}");
        write_audited(&handle, &target).await?;
        acknowledged.push(target);
    }
    cluster.converge_on(new_leader).await?;
    let survivors = cluster.running();
    for (_, handle) in &survivors {
        assert_has_all(handle, &acknowledged)?;
    }
    let bytes: Vec<Vec<u8>> = survivors
        .iter()
        .map(|(_, h)| h.read(|s| s.to_bytes()))
        .collect();
    ensure!(
        bytes.windows(2).all(|w| w[0] == w[1]),
        "survivors hold different states"
    );
    cluster.shutdown_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_member_catches_up_from_a_snapshot_after_purge() -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(5, &[1, 2, 3]).await?;
    let leader = cluster.agreed_leader(None).await?;
    let leader_handle = cluster.handle(leader)?;
    write_audited(&leader_handle, "before-stop").await?;
    cluster.converge_on(leader).await?;

    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .ok_or_else(|| anyhow!("no follower"))?;
    let follower_last = cluster
        .handle(follower)?
        .log_status()
        .last_log_index
        .ok_or_else(|| anyhow!("follower has an empty log"))?;
    cluster.stop(follower).await?;

    // Enough writes for several snapshots; the leader purges the entries the stopped member lacks.
    let mut acknowledged = vec!["before-stop".to_string()];
    for i in 0..40 {
        let target = format!("while-down-{i}");
        write_audited(&leader_handle, &target).await?;
        acknowledged.push(target);
    }
    let purged = leader_handle
        .wait_for_log(
            |l| l.purged_index.is_some_and(|p| p > follower_last + 1),
            DEADLINE,
        )
        .await
        .context("leader never purged past the stopped member's log")?;

    cluster.start(follower, None).await?;
    let follower_handle = cluster.handle(follower)?;
    let applied = cluster.converge_on(leader).await?;
    let caught_up = follower_handle
        .wait_for_log(
            |l| l.snapshot_index.is_some_and(|s| s > follower_last),
            DEADLINE,
        )
        .await
        .context("restarted member holds no snapshot")?;
    ensure!(
        caught_up.snapshot_index >= purged.purged_index,
        "member caught up without the snapshot covering the purged log: {caught_up:?} vs leader {purged:?}"
    );
    follower_handle
        .wait_for(|s| s.applied_index == applied, DEADLINE)
        .await?;
    assert_has_all(&follower_handle, &acknowledged)?;
    ensure!(
        follower_handle.read(|s| s.to_bytes()) == leader_handle.read(|s| s.to_bytes()),
        "caught-up member's state differs from the leader's"
    );
    cluster.shutdown_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_node_restart_keeps_state() -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(3, &[1]).await?;
    cluster.agreed_leader(None).await?;
    let handle = cluster.handle(1)?;
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let target = format!("kept-{i}");
        write_audited(&handle, &target).await?;
        acknowledged.push(target);
    }
    // Snapshot and log both hold part of the state: the restart loads one and re-applies the other.
    handle
        .wait_for_log(|l| l.snapshot_index.is_some(), DEADLINE)
        .await?;
    let before = handle.read(|s| s.to_bytes());
    drop(handle);
    cluster.stop(1).await?;

    cluster.start(1, None).await?;
    cluster.agreed_leader(None).await?;
    let handle = cluster.handle(1)?;
    handle.wait_for(|_| handle.is_ready(), DEADLINE).await?;
    assert_has_all(&handle, &acknowledged)?;
    ensure!(
        handle.read(|s| s.to_bytes()) == before,
        "state changed across the restart"
    );
    write_audited(&handle, "after-restart").await?;
    assert_has_all(&handle, &["after-restart".to_string()])?;
    cluster.shutdown_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fourth_member_is_added_as_voter_and_removed() -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(1_000, &[1, 2, 3]).await?;
    let leader = cluster.agreed_leader(None).await?;
    write_audited(&cluster.handle(leader)?, "before-join").await?;

    let joining = cluster.start_new(4).await?;
    // Through a follower, so the change is forwarded to the leader.
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader && **id != 4)
        .ok_or_else(|| anyhow!("no follower"))?;
    cluster
        .handle(follower)?
        .add_member(4, joining.clone(), true)
        .await?;

    let leader_handle = cluster.handle(leader)?;
    let status = leader_handle
        .wait_for(|s| s.members.iter().any(|m| m.id == 4 && m.voter), DEADLINE)
        .await?;
    ensure!(status
        .members
        .iter()
        .any(|m| m.id == 4 && m.raft_addr == joining.raft_addr));
    let newcomer = cluster.handle(4)?;
    newcomer
        .wait_for(|s| s.leader == Some(leader), DEADLINE)
        .await?;
    write_audited(&newcomer, "through-newcomer").await?;
    cluster.converge_on(leader).await?;
    assert_has_all(
        &newcomer,
        &["before-join".to_string(), "through-newcomer".to_string()],
    )?;

    newcomer.remove_member(4).await?;
    for id in [1, 2, 3] {
        cluster
            .handle(id)?
            .wait_for(|s| s.members.iter().all(|m| m.id != 4), DEADLINE)
            .await?;
    }
    let status = leader_handle.status();
    ensure!(
        status.members.len() == 3 && status.members.iter().all(|m| m.voter),
        "members: {status:?}"
    );
    drop(newcomer);
    cluster.stop(4).await?;
    write_audited(&leader_handle, "after-removal").await?;
    cluster.shutdown_all().await
}

/// Calls `method` on the coordinator at `addr` as `client` and returns the remote refusal's message.
async fn refused_message(
    client: &protocol::rpc::RpcClient,
    addr: &str,
    method: protocol::rpc::Method,
    body: bytes::Bytes,
) -> Result<String> {
    use protocol::rpc::{RpcError, StatusCode};
    match client
        .call(addr, method, body, Duration::from_secs(10))
        .await
    {
        Err(RpcError::Remote(status)) if status.code == StatusCode::PermissionDenied => {
            Ok(status.message)
        }
        other => bail!("{method} was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_member_is_refused_on_every_coordinator_method() -> Result<()> {
    use protocol::pb;
    use protocol::rpc::{encode_message, Method, RpcClient};
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(1_000, &[1, 2, 3]).await?;
    let leader = cluster.agreed_leader(None).await?;
    let removed = if leader == 3 { 2 } else { 3 };
    let kept = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader && *id != removed)
        .ok_or_else(|| anyhow!("no remaining follower"))?;
    let leader_handle = cluster.handle(leader)?;
    // A committed write first: then the leader's initial membership is committed too, and a change may start.
    write_audited(&leader_handle, "before-removal").await?;
    leader_handle.remove_member(removed).await?;
    for id in [leader, kept] {
        cluster
            .handle(id)?
            .wait_for(|s| s.members.iter().all(|m| m.id != removed), DEADLINE)
            .await?;
    }
    cluster.stop(removed).await?;

    // The removed member's certificate is still valid: only the membership says it is no longer one of us.
    let forger = RpcClient::new(&cluster.tls(&format!("c{removed}"))?)?;
    let forged = serde_json::to_vec(&audit_write("forged-by-removed-member"))?;
    let forward = encode_message(&pb::ForwardWriteRequest {
        command: bytes::Bytes::from(forged),
    });
    for id in [leader, kept] {
        let addr = cluster.handle(id)?.raft_addr().to_string();
        let message =
            refused_message(&forger, &addr, Method::ForwardWrite, forward.clone()).await?;
        ensure!(message.contains("not a member"), "{message}");
        for method in [
            Method::ReadIndex,
            Method::RaftVote,
            Method::RaftAppendEntries,
            Method::ChangeMembership,
        ] {
            refused_message(&forger, &addr, method, bytes::Bytes::new()).await?;
        }
    }
    // A coordinator certificate that was never a member is refused the same way.
    let stranger = RpcClient::new(&cluster.tls("c9")?)?;
    let addr = leader_handle.raft_addr().to_string();
    refused_message(&stranger, &addr, Method::ForwardWrite, forward.clone()).await?;

    // A current member's forward of the same kind is accepted, and only it was applied.
    let member = RpcClient::new(&cluster.tls(&format!("c{kept}"))?)?;
    let honest = encode_message(&pb::ForwardWriteRequest {
        command: bytes::Bytes::from(serde_json::to_vec(&audit_write("forwarded-by-member"))?),
    });
    member
        .call(&addr, Method::ForwardWrite, honest, Duration::from_secs(10))
        .await?;
    let targets = audit_targets(&leader_handle);
    ensure!(targets.iter().any(|t| t == "forwarded-by-member"));
    ensure!(
        !targets.iter().any(|t| t == "forged-by-removed-member"),
        "a removed member's forward was applied"
    );
    cluster.shutdown_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_linearizable_read_sees_the_write_acknowledged_before() -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(1_000, &[1, 2, 3]).await?;
    let leader = cluster.agreed_leader(None).await?;
    let followers: Vec<Handle> = cluster
        .running()
        .into_iter()
        .filter(|(id, _)| *id != leader)
        .map(|(_, h)| h)
        .collect();
    let writer = cluster.handle(leader)?;
    for i in 0..10 {
        let target = format!("read-after-{i}");
        write_audited(&writer, &target).await?;
        for follower in &followers {
            follower.linearizable_read().await?;
            ensure!(
                audit_targets(follower).contains(&target),
                "follower {} read without write {target} after a linearizable read",
                follower.node_id()
            );
        }
    }
    // A write forwarded by one follower is visible to a linearizable read on the other.
    let (a, b) = (&followers[0], &followers[1]);
    write_audited(a, "forwarded").await?;
    b.linearizable_read().await?;
    ensure!(audit_targets(b).contains(&"forwarded".to_string()));

    // With no quorum the read is refused rather than served stale.
    let survivors: Vec<NodeId> = followers.iter().map(|h| h.node_id()).collect();
    cluster.stop(leader).await?;
    cluster.stop(survivors[0]).await?;
    let lonely = cluster.handle(survivors[1])?;
    match lonely.linearizable_read().await {
        Err(ReadError::NoLeader | ReadError::Unavailable(_)) => {}
        Ok(()) => bail!("a linearizable read succeeded without a quorum"),
    }
    cluster.shutdown_all().await
}

/// Many concurrent writes through the leader and a follower: each caller gets its own outcome, nothing is
/// lost or applied twice, the replicas agree, and the leader packed them into fewer log entries than writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_log_entries_and_keep_their_own_outcomes() -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(1_000, &[1, 2, 3]).await?;
    let leader = cluster.agreed_leader(None).await?;
    let running = cluster.running();
    let before = running
        .iter()
        .find(|(id, _)| *id == leader)
        .and_then(|(_, h)| h.log_status().last_log_index)
        .unwrap_or(0);

    const WRITES: usize = 400;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITES {
        let handle = running[i % running.len()].1.clone();
        tasks.spawn(async move {
            let target = format!("concurrent-{i}");
            let seq = write_audited(&handle, &target).await?;
            Ok::<_, anyhow::Error>((target, seq))
        });
    }
    let mut acknowledged = Vec::new();
    let mut seqs = std::collections::BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        let (target, seq) = done??;
        ensure!(seqs.insert(seq), "two writes answered with audit seq {seq}");
        acknowledged.push(target);
    }
    cluster.converge_on(leader).await?;
    for (_, handle) in cluster.running() {
        assert_has_all(&handle, &acknowledged)?;
        let targets = audit_targets(&handle);
        let concurrent = targets
            .iter()
            .filter(|t| t.starts_with("concurrent-"))
            .count();
        ensure!(
            concurrent == WRITES,
            "{concurrent} concurrent records, not {WRITES}"
        );
    }
    // Each caller's outcome is its own record: the seq it got names its target.
    let (_, leader_handle) = cluster
        .running()
        .into_iter()
        .find(|(id, _)| *id == leader)
        .context("leader")?;
    leader_handle.read(|s| {
        for record in s.audit_records() {
            if record.target.starts_with("concurrent-") {
                ensure!(
                    seqs.contains(&record.seq),
                    "record {record:?} was not answered"
                );
            }
        }
        Ok(())
    })?;
    let after = leader_handle.log_status().last_log_index.unwrap_or(0);
    ensure!(
        after - before < WRITES as u64,
        "{WRITES} concurrent writes took {} log entries: no batching",
        after - before
    );
    let bytes: Vec<Vec<u8>> = cluster
        .running()
        .iter()
        .map(|(_, h)| h.read(|s| s.to_bytes()))
        .collect();
    ensure!(bytes.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    cluster.shutdown_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_into_the_minority_steps_down_and_no_acknowledged_write_is_lost(
) -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(1_000, &[1, 2, 3]).await?;
    let old = cluster.agreed_leader(None).await?;
    let mut acknowledged = Vec::new();
    for (id, handle) in cluster.running() {
        let target = format!("before-{id}");
        write_audited(&handle, &target).await?;
        acknowledged.push(target);
    }
    let majority: Vec<NodeId> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    cluster.isolate(old);

    // The majority elects a leader of its own and keeps acknowledging writes.
    let mut new = None;
    for id in &majority {
        let status = cluster
            .handle(*id)?
            .wait_for(
                |s| s.leader.is_some_and(|l| l != old) && s.state != "candidate",
                DEADLINE,
            )
            .await?;
        new = status.leader;
    }
    let new = new.ok_or_else(|| anyhow!("no new leader"))?;
    let new_handle = cluster.handle(new)?;
    write_audited(&new_handle, "during-partition").await?;
    acknowledged.push("during-partition".to_string());

    // The old leader stops acting as one once its lease runs out, without hearing of the new term.
    let old_handle = cluster.handle(old)?;
    eventually("the cut-off leader stepping down", || !old_handle.leads()).await?;
    // What it is asked meanwhile is never acknowledged.
    let lost = tokio::time::timeout(
        Duration::from_secs(2),
        old_handle.write(audit_write("minority-write")),
    )
    .await;
    ensure!(
        !matches!(lost, Ok(Ok(_))),
        "the minority acknowledged a write: {lost:?}"
    );

    cluster.net.heal();
    // Healed, the old leader hears of the newer term and follows.
    old_handle
        .wait_for(|s| s.state != "leader" && s.leader.is_some(), DEADLINE)
        .await?;
    let leader = cluster.agreed_leader(None).await?;
    write_audited(&cluster.handle(leader)?, "after-heal").await?;
    acknowledged.push("after-heal".to_string());
    cluster.converge_on(leader).await?;
    let leader_bytes = cluster.handle(leader)?.read(|s| s.to_bytes());
    for (id, handle) in cluster.running() {
        assert_has_all(&handle, &acknowledged)?;
        ensure!(
            !audit_targets(&handle).contains(&"minority-write".to_string()),
            "node {id} applied the write only the cut-off leader took"
        );
        ensure!(
            handle.read(|s| s.to_bytes()) == leader_bytes,
            "node {id} did not converge on the leader's state"
        );
    }
    cluster.shutdown_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_write_whose_answer_is_lost_applies_exactly_once() -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(1_000, &[1, 2, 3]).await?;
    let leader = cluster.agreed_leader(None).await?;
    let follower = cluster.a_follower_of(leader)?;
    // The follower's calls reach the leader, but every answer is lost on the way back.
    cluster.net.set_one_way(
        &name_of(follower),
        &name_of(leader),
        protocol::rpc::Fault::LoseAnswer,
    );
    let mut cmd = audit_write("once");
    cmd.request_id = Some("req_exactly_once".to_string());
    let unanswered = cluster.handle(follower)?.write(cmd.clone()).await;
    ensure!(
        unanswered.is_err(),
        "a write whose answers were all lost was acknowledged: {unanswered:?}"
    );
    // It was applied all the same; sent again with its request id, it answers its first outcome.
    let leader_handle = cluster.handle(leader)?;
    eventually("the unanswered write applying on the leader", || {
        audit_targets(&leader_handle).contains(&"once".to_string())
    })
    .await?;
    cluster.net.heal();
    let again = cluster.handle(follower)?.write(cmd).await?;
    let Outcome::Audited { seq } = again else {
        bail!("unexpected outcome {again:?}");
    };
    let records: Vec<u64> = leader_handle.read(|s| {
        s.audit_records()
            .iter()
            .filter(|r| r.target == "once")
            .map(|r| r.seq)
            .collect()
    });
    ensure!(
        records == vec![seq],
        "applied as {records:?}, answered {seq}"
    );
    cluster.shutdown_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_cut_off_while_writes_go_on_catches_up_when_the_partition_heals() -> Result<()> {
    let _one = ONE_SCENARIO_AT_A_TIME.lock().await;
    let mut cluster = Cluster::bootstrap(1_000, &[1, 2, 3]).await?;
    let leader = cluster.agreed_leader(None).await?;
    let follower = cluster.a_follower_of(leader)?;
    cluster.isolate(follower);
    let leader_handle = cluster.handle(leader)?;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let target = format!("while-cut-{i}");
        write_audited(&leader_handle, &target).await?;
        acknowledged.push(target);
    }
    let missing = audit_targets(&cluster.handle(follower)?);
    ensure!(
        !acknowledged.iter().any(|t| missing.contains(t)),
        "the cut-off follower received writes"
    );
    cluster.net.heal();
    let leader = cluster.agreed_leader(None).await?;
    cluster.converge_on(leader).await?;
    let follower_handle = cluster.handle(follower)?;
    assert_has_all(&follower_handle, &acknowledged)?;
    ensure!(
        follower_handle.read(|s| s.to_bytes()) == cluster.handle(leader)?.read(|s| s.to_bytes()),
        "the healed follower's state differs from the leader's"
    );
    cluster.shutdown_all().await
}
