//! Coordinator groups on loopback: real QUIC with mutual TLS from Meridian's own CA, real sled in temporary
//! directories, openraft timing as configured. Every wait is on a condition with a deadline.
//!
//! The scenarios run one at a time (they share the machine's cores, and Raft timing suffers under load).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use certs::{CertificateAuthority, Identity, LeafRequest, TlsIdentity};
use coordinator::node::{RaftTimings, ReadError};
use coordinator::state::{Actor, AuditOp, AuditOutcome, Command, Op, Outcome, APPLY_VERSION};
use coordinator::{Coordinator, CoordinatorOptions, Handle, MemberNode, NodeId};
use protocol::rpc::Partitions;
use tempfile::TempDir;
use tokio::sync::Mutex;

const TRUST_DOMAIN: &str = "cluster.meridian.test";
/// Generous: elections and catch-up on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

static ONE_SCENARIO_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn timings() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 100,
        election_min_ms: 800,
        election_max_ms: 1600,
    }
}

/// A write with a visible effect: an audit record whose target names the write.
fn audit_write(target: &str) -> Command {
    Command::new(
        1_700_000_000_000,
        Actor::system(),
        Op::Audit(AuditOp::RecordAudit {
            action: "test.write".to_string(),
            project: None,
            target: target.to_string(),
            outcome: AuditOutcome::Denied,
            detail: String::new(),
        }),
    )
}

fn audit_targets(handle: &Handle) -> Vec<String> {
    handle.read(|state| {
        state
            .audit_records()
            .iter()
            .map(|r| r.target.clone())
            .collect()
    })
}

struct Node {
    dir: PathBuf,
    member: MemberNode,
    running: Option<(Coordinator, Handle)>,
}

struct Cluster {
    ca: CertificateAuthority,
    root: TempDir,
    snapshot_every: u64,
    /// The members' audit retention (the default keeps far more records than any scenario writes).
    audit: coordinator::AuditRetention,
    nodes: BTreeMap<NodeId, Node>,
    /// The links between the members, which tests may cut.
    net: Arc<Partitions>,
}

impl Cluster {
    fn new(snapshot_every: u64) -> Result<Self> {
        let ca = CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(3600))?;
        Ok(Self {
            ca,
            root: tempfile::tempdir()?,
            snapshot_every,
            audit: Default::default(),
            nodes: BTreeMap::new(),
            net: Partitions::new(),
        })
    }

    /// Starts `ids` on ports of their own choosing, then forms a group of them as voters.
    async fn bootstrap(snapshot_every: u64, ids: &[NodeId]) -> Result<Self> {
        Self::bootstrap_with(snapshot_every, Default::default(), ids).await
    }

    /// [`Cluster::bootstrap`] with an audit retention of its own.
    async fn bootstrap_with(
        snapshot_every: u64,
        audit: coordinator::AuditRetention,
        ids: &[NodeId],
    ) -> Result<Self> {
        let mut cluster = Self::new(snapshot_every)?;
        cluster.audit = audit;
        let mut voters = BTreeMap::new();
        for &id in ids {
            voters.insert(id, cluster.start_new(id).await?);
        }
        let first = *ids.first().ok_or_else(|| anyhow!("no voters"))?;
        cluster.handle(first)?.bootstrap(voters).await?;
        Ok(cluster)
    }

    fn tls(&self, name: &str) -> Result<TlsIdentity> {
        let identity = Identity::coordinator(TRUST_DOMAIN, name)?;
        let leaf = self.ca.issue(
            &LeafRequest::new(identity, Duration::from_secs(3600))
                .with_ip_address(Ipv4Addr::LOCALHOST.into()),
        )?;
        Ok(TlsIdentity::from_pem(
            self.ca.cert_pem(),
            &leaf.cert_pem,
            &leaf.key_pem,
        )?)
    }

    /// Adds a node that is not a member yet, listening on a port of its own choosing.
    async fn start_new(&mut self, id: NodeId) -> Result<MemberNode> {
        let member = MemberNode {
            name: format!("c{id}"),
            raft_addr: "127.0.0.1:0".to_string(),
            admin_addr: "127.0.0.1:0".to_string(),
        };
        let dir = self.root.path().join(format!("c{id}"));
        self.nodes.insert(
            id,
            Node {
                dir,
                member,
                running: None,
            },
        );
        self.start(id, None).await?;
        let handle = self.handle(id)?;
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("node {id} vanished"))?;
        node.member.raft_addr = handle.raft_addr().to_string();
        Ok(node.member.clone())
    }

    async fn start(
        &mut self,
        id: NodeId,
        bootstrap: Option<BTreeMap<NodeId, MemberNode>>,
    ) -> Result<()> {
        let node = self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let listen: SocketAddr = node.member.raft_addr.parse()?;
        let name = node.member.name.clone();
        let opts = CoordinatorOptions {
            node_id: id,
            name: node.member.name.clone(),
            data_dir: node.dir.clone(),
            raft_listen: listen,
            advertise: node.member.clone(),
            tls: self.tls(&node.member.name)?,
            timings: timings(),
            snapshot_every: self.snapshot_every,
            bootstrap,
            fleet: Default::default(),
            jobs: Default::default(),
            audit: self.audit,
            keyring: None,
            approve_new_nodes: false,
            clock: coordinator::clock::system(),
            link_faults: Some(self.net.view(name.clone())),
            randomness: coordinator::random::os(),
        };
        let running = Coordinator::start(opts)
            .await
            .with_context(|| format!("starting node {id}"))?;
        self.net.register(&name, &running.1.raft_addr().to_string());
        if let Some(node) = self.nodes.get_mut(&id) {
            node.running = Some(running);
        }
        Ok(())
    }

    /// Shuts a node down and drops it; its data directory stays.
    async fn stop(&mut self, id: NodeId) -> Result<()> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        let (coordinator, handle) = node
            .running
            .take()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        drop(handle);
        coordinator.shutdown().await;
        Ok(())
    }

    fn handle(&self, id: NodeId) -> Result<Handle> {
        let node = self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let (_, handle) = node
            .running
            .as_ref()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        Ok(handle.clone())
    }

    fn running(&self) -> Vec<(NodeId, Handle)> {
        self.nodes
            .iter()
            .filter_map(|(id, node)| node.running.as_ref().map(|(_, h)| (*id, h.clone())))
            .collect()
    }

    /// Waits until every running node names the same leader, other than `not`, and returns it.
    async fn agreed_leader(&self, not: Option<NodeId>) -> Result<NodeId> {
        let nodes = self.running();
        let (_, first) = nodes.first().ok_or_else(|| anyhow!("no node is running"))?;
        let status = first
            .wait_for(
                |s| s.leader.is_some() && s.leader != not && s.state != "candidate",
                DEADLINE,
            )
            .await?;
        let leader = status.leader.ok_or_else(|| anyhow!("leader vanished"))?;
        for (_, handle) in &nodes {
            handle
                .wait_for(|s| s.leader == Some(leader), DEADLINE)
                .await?;
        }
        Ok(leader)
    }

    /// Waits until every running node has applied the whole log of `id` as it is now (call it when every
    /// write was acknowledged, so that log is committed). Returns that index.
    async fn converge_on(&self, id: NodeId) -> Result<u64> {
        let last = self
            .handle(id)?
            .log_status()
            .last_log_index
            .ok_or_else(|| anyhow!("node {id} has no log"))?;
        for (_, handle) in self.running() {
            handle
                .wait_for(|s| s.applied_index >= last, DEADLINE)
                .await?;
        }
        Ok(last)
    }

    /// Cuts every link between member `id` and the other members, both ways.
    fn isolate(&self, id: NodeId) {
        let others: Vec<String> = self
            .nodes
            .keys()
            .filter(|other| **other != id)
            .map(|other| name_of(*other))
            .collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        self.net.cut(&[name_of(id).as_str()], &others);
    }

    /// A running member other than `leader`.
    fn a_follower_of(&self, leader: NodeId) -> Result<NodeId> {
        self.running()
            .into_iter()
            .map(|(id, _)| id)
            .find(|id| *id != leader)
            .ok_or_else(|| anyhow!("no follower"))
    }

    async fn shutdown_all(&mut self) -> Result<()> {
        let ids: Vec<NodeId> = self.running().into_iter().map(|(id, _)| id).collect();
        for id in ids {
            self.stop(id).await?;
        }
        Ok(())
    }
}

async fn write_audited(handle: &Handle, target: &str) -> Result<u64> {
    match handle
        .write(audit_write(target))
        .await
        .with_context(|| format!("writing {target}"))?
    {
        Outcome::Audited { seq } => Ok(seq),
        other => bail!("unexpected outcome {other:?}"),
    }
}

fn assert_has_all(handle: &Handle, targets: &[String]) -> Result<()> {
    let seen = audit_targets(handle);
    for target in targets {
        ensure!(
            seen.contains(target),
            "node {} lacks acknowledged write {target}",
            handle.node_id()
        );
    }
    Ok(())
}

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

/// Waits until `condition` holds, for at most [`DEADLINE`].
async fn eventually(what: &str, condition: impl FnMut() -> bool) -> Result<()> {
    Ok(testkit::eventually(what, DEADLINE, condition).await?)
}

fn name_of(id: NodeId) -> String {
    format!("c{id}")
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
