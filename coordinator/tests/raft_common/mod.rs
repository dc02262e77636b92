//! The harness of the coordinator-group tests: a group of coordinators on loopback with real QUIC and mutual
//! TLS from Meridian's own CA, real sled in temporary directories and the links between members cuttable
//! (`Cluster`), and the audited writes the scenarios make and check.
//!
//! The scenarios of one test binary run one at a time (`ONE_SCENARIO_AT_A_TIME`): they share the machine's
//! cores, and Raft timing suffers under load.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use certs::{CertificateAuthority, Identity, LeafRequest, TlsIdentity};
use coordinator::node::RaftTimings;
use coordinator::state::{Actor, AuditOp, AuditOutcome, Command, Op, Outcome};
use coordinator::{Coordinator, CoordinatorOptions, Handle, MemberNode, NodeId};
use protocol::rpc::Partitions;
use tempfile::TempDir;
use tokio::sync::Mutex;

pub const TRUST_DOMAIN: &str = "cluster.meridian.test";
/// Generous: elections and catch-up on a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub static ONE_SCENARIO_AT_A_TIME: Mutex<()> = Mutex::const_new(());

pub fn timings() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 100,
        election_min_ms: 800,
        election_max_ms: 1600,
    }
}

/// A write with a visible effect: an audit record whose target names the write.
pub fn audit_write(target: &str) -> Command {
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

pub fn audit_targets(handle: &Handle) -> Vec<String> {
    handle.read(|state| {
        state
            .audit_records()
            .iter()
            .map(|r| r.target.clone())
            .collect()
    })
}

pub struct Node {
    pub dir: PathBuf,
    pub member: MemberNode,
    pub running: Option<(Coordinator, Handle)>,
}

pub struct Cluster {
    pub ca: CertificateAuthority,
    pub root: TempDir,
    pub snapshot_every: u64,
    /// The members' audit retention (the default keeps far more records than any scenario writes).
    pub audit: coordinator::AuditRetention,
    pub nodes: BTreeMap<NodeId, Node>,
    /// The links between the members, which tests may cut.
    pub net: Arc<Partitions>,
}

impl Cluster {
    pub fn new(snapshot_every: u64) -> Result<Self> {
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
    pub async fn bootstrap(snapshot_every: u64, ids: &[NodeId]) -> Result<Self> {
        Self::bootstrap_with(snapshot_every, Default::default(), ids).await
    }

    /// [`Cluster::bootstrap`] with an audit retention of its own.
    pub async fn bootstrap_with(
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

    pub fn tls(&self, name: &str) -> Result<TlsIdentity> {
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
    pub async fn start_new(&mut self, id: NodeId) -> Result<MemberNode> {
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

    pub async fn start(
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
    pub async fn stop(&mut self, id: NodeId) -> Result<()> {
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

    pub fn handle(&self, id: NodeId) -> Result<Handle> {
        let node = self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let (_, handle) = node
            .running
            .as_ref()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        Ok(handle.clone())
    }

    pub fn running(&self) -> Vec<(NodeId, Handle)> {
        self.nodes
            .iter()
            .filter_map(|(id, node)| node.running.as_ref().map(|(_, h)| (*id, h.clone())))
            .collect()
    }

    /// Waits until every running node names the same leader, other than `not`, and returns it.
    pub async fn agreed_leader(&self, not: Option<NodeId>) -> Result<NodeId> {
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
    pub async fn converge_on(&self, id: NodeId) -> Result<u64> {
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
    pub fn isolate(&self, id: NodeId) {
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
    pub fn a_follower_of(&self, leader: NodeId) -> Result<NodeId> {
        self.running()
            .into_iter()
            .map(|(id, _)| id)
            .find(|id| *id != leader)
            .ok_or_else(|| anyhow!("no follower"))
    }

    pub async fn shutdown_all(&mut self) -> Result<()> {
        let ids: Vec<NodeId> = self.running().into_iter().map(|(id, _)| id).collect();
        for id in ids {
            self.stop(id).await?;
        }
        Ok(())
    }
}

pub async fn write_audited(handle: &Handle, target: &str) -> Result<u64> {
    match handle
        .write(audit_write(target))
        .await
        .with_context(|| format!("writing {target}"))?
    {
        Outcome::Audited { seq } => Ok(seq),
        other => bail!("unexpected outcome {other:?}"),
    }
}

pub fn assert_has_all(handle: &Handle, targets: &[String]) -> Result<()> {
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

/// Waits until `condition` holds, for at most [`DEADLINE`].
pub async fn eventually(what: &str, condition: impl FnMut() -> bool) -> Result<()> {
    Ok(testkit::eventually(what, DEADLINE, condition).await?)
}

pub fn name_of(id: NodeId) -> String {
    format!("c{id}")
}
