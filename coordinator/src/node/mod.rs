//! The running coordinator: Raft node, QUIC RPC server and the cheap [`Handle`] the admin API uses.
//!
//! `CoordinatorOptions` builds it, [`Coordinator::start`] spawns its tasks, [`Handle`] is cloned freely.
//! This module owns leader routing: a follower forwards writes, read-index requests and membership changes
//! to the leader over the QUIC mesh, and retries only when it knows nothing was proposed. It must never
//! prepare or change a command (that happens before [`Handle::write`]) nor touch the disk itself (that is
//! `store`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use protocol::pb;
use protocol::rpc::{
    LinkFaults, Method, PeerTable, RpcClient, RpcError, RpcServer, ServerOptions, StatusCode,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use meridian_registry::controllers::health::LastHeard;

use crate::clock::Clock;
use crate::controllers::{ControllerConfig, Runner};
use crate::fleet::{Fleet, FleetTimings};
use crate::lease::LeaderLease;
use crate::membership::{change_membership_as_leader, membership_request, MemberChange};
use crate::mesh_gate::MeshGate;
use crate::network::NetworkFactory;
use crate::proposer::Proposer;
use crate::random::Randomness;
use crate::rpc_service::CoordinatorService;
use crate::state::{Command, CommandOutcome, DomainError, Outcome, RegistryState};
use crate::store::{self, SharedState, StoreClosed};

mod agents;
mod status;

pub use status::{ClusterStatus, LogStatus, MemberStatus, WaitError};

/// Raft node id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's type configuration for the coordinator group.
    pub(crate) TypeConfig:
        D = Command,
        R = CommandOutcome,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// How a member is reached; stored in Raft membership.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberNode {
    /// Human name, e.g. `c1`.
    pub name: String,
    /// QUIC address for Raft and coordinator RPCs, `host:port`.
    pub raft_addr: String,
    /// Admin API address, `host:port`.
    pub admin_addr: String,
}

/// Raft timing, derived from the expected round-trip time between voters.
#[derive(Debug, Clone, Copy)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
        }
    }
}

/// Everything needed to start a coordinator.
pub struct CoordinatorOptions {
    pub node_id: NodeId,
    pub name: String,
    pub data_dir: PathBuf,
    /// UDP address the QUIC RPC server binds.
    pub raft_listen: SocketAddr,
    /// This member as others should reach it.
    pub advertise: MemberNode,
    pub tls: certs::TlsIdentity,
    pub timings: RaftTimings,
    /// Take a snapshot (and purge the log) after this many applied entries.
    pub snapshot_every: u64,
    /// When the node has never been initialized: form a cluster with these voters (must include this node).
    /// `None` leaves it waiting to be added by an existing cluster.
    pub bootstrap: Option<BTreeMap<NodeId, MemberNode>>,
    /// Agent heartbeat interval and the health monitor's TTLs.
    pub fleet: FleetTimings,
    /// How long finished jobs are kept before the leader's janitor purges them, and how often it looks.
    pub jobs: crate::JobRetention,
    /// How many audit records stay live before the leader archives the oldest, and how many at a time.
    pub audit: crate::AuditRetention,
    /// The master keyring, to open the secrets a job is bound to when its assignment is handed to its
    /// agent. `None`: jobs that name secrets fail to launch with a clear message.
    pub keyring: Option<Arc<crate::crypto::MasterKeyring>>,
    /// Whether a node new to a cluster without an admission policy is approved on arrival (`false`: it
    /// waits as `pending_approval` for `ApproveNode`). Development setups approve; production does not.
    pub approve_new_nodes: bool,
    /// Where the coordinator reads the time: [`clock::system`](crate::clock::system) outside tests.
    pub clock: Arc<dyn Clock>,
    /// Faults injected on the links this coordinator calls (partition tests); `None` in production.
    pub link_faults: Option<Arc<dyn LinkFaults>>,
    /// Where ids, tokens, keys and nonces are drawn: [`random::os`](crate::random::os) outside tests.
    pub randomness: Arc<dyn Randomness>,
}

/// Why a write did not commit (domain refusals are committed and come back as `Domain`).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("no leader is known; try again")]
    NoLeader,
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
}

/// Why a linearizable read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no leader is known; try again")]
    NoLeader,
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
}

/// Why a membership change failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("invalid membership change: {0}")]
    Invalid(String),
    #[error("no leader is known; try again")]
    NoLeader,
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
}

/// Fatal start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("network: {0}")]
    Network(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// The raft instance of the coordinator group.
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// Log entries kept behind a snapshot, so a briefly lagging follower catches up from the log.
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 16;
/// Largest snapshot chunk sent in one InstallSnapshot call (it travels JSON-encoded, well under a frame).
const SNAPSHOT_CHUNK_BYTES: usize = 512 * 1024;
/// How long a call to an agent (a log read) may take.
const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the storage to be released by openraft's tasks.
const STORE_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// The timeouts a node derives from its [`RaftTimings`].
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// How long a client request (write, linearizable read) may wait for a leader and an answer.
    request: Duration,
    /// How long a membership change may take, a new member's catch-up included.
    membership: Duration,
    /// How long one wait for a (new) leader lasts before the request is tried again.
    leader_step: Duration,
}

impl Deadlines {
    fn from_timings(t: &RaftTimings) -> Self {
        let election = Duration::from_millis(t.election_max_ms.max(1));
        Self {
            request: (election * 5).clamp(Duration::from_secs(2), Duration::from_secs(30)),
            membership: (election * 50).clamp(Duration::from_secs(10), Duration::from_secs(120)),
            leader_step: election * 2,
        }
    }
}

/// Owns the coordinator's tasks.
pub struct Coordinator {
    handle: Handle,
}

/// Cheap handle to a running coordinator.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<NodeInner>,
}

/// A handle that does not keep the coordinator alive (held by its own RPC service).
#[derive(Clone)]
pub(crate) struct WeakHandle {
    inner: Weak<NodeInner>,
}

impl WeakHandle {
    pub(crate) fn upgrade(&self) -> Option<Handle> {
        self.inner.upgrade().map(|inner| Handle { inner })
    }
}

struct NodeInner {
    id: NodeId,
    name: String,
    raft: Raft,
    state: SharedState,
    committed: watch::Receiver<Option<u64>>,
    client: RpcClient,
    /// Batches concurrent writes into shared log entries on the leader.
    proposer: Proposer,
    /// Calls to agents (log reads): accepts only agent identities as servers.
    agent_client: RpcClient,
    raft_addr: SocketAddr,
    /// The trust domain of this coordinator's certificate (every mesh identity's).
    trust_domain: String,
    /// The mesh server's open connections.
    peers: PeerTable,
    deadlines: Deadlines,
    server_stop: CancellationToken,
    /// The archived audit segments the state machine writes.
    audit_archive: crate::audit_archive::AuditArchive,
    server_task: Mutex<Option<JoinHandle<()>>>,
    deny_watch_task: Mutex<Option<JoinHandle<()>>>,
    /// The leader's controllers (dispatcher, janitor, health monitor).
    controllers: Runner,
    clock: Arc<dyn Clock>,
    randomness: Arc<dyn Randomness>,
    /// How long this node may act as leader without a quorum confirming it (see [`Handle::leader_term`]).
    lease: LeaderLease,
    /// When each node was last heard from (soft state kept by the agent RPCs).
    last_heard: Arc<dyn LastHeard>,
    store_closed: Mutex<Option<StoreClosed>>,
}

/// How a call to the leader failed.
#[derive(Debug)]
enum ForwardError {
    /// No leader received it (unreachable, or no longer the leader): safe to try again elsewhere.
    NotDelivered(String),
    /// The leader refused the request as malformed.
    Invalid(String),
    /// It was handed over but no answer came back: it may or may not have happened.
    Failed(String),
}

/// Why an operation that only the leader performs did not happen here.
#[derive(Debug)]
pub(crate) enum LeaderOnlyError {
    /// This node is not the leader; nothing was proposed. Carries the leader when known.
    NotLeader {
        leader_id: Option<NodeId>,
        leader_node: Option<MemberNode>,
    },
    /// The request itself is wrong.
    Invalid(String),
    /// Raft could not do it now (stopped, no quorum, timed out); it may or may not have happened.
    Unavailable(String),
}

impl Coordinator {
    /// Opens storage, starts Raft and the QUIC RPC server, bootstraps when asked.
    ///
    /// When `advertise.raft_addr` is empty or names port 0, the bound address is advertised instead; when
    /// bootstrapping, this node's entry in the voter map is always the advertised one.
    #[tracing::instrument(skip_all, fields(node = opts.node_id, name = %opts.name))]
    pub async fn start(opts: CoordinatorOptions) -> Result<(Coordinator, Handle), StartError> {
        if let Some(members) = &opts.bootstrap {
            if !members.contains_key(&opts.node_id) {
                return Err(StartError::Raft(format!(
                    "bootstrap voters {:?} do not include this node ({})",
                    members.keys().collect::<Vec<_>>(),
                    opts.node_id
                )));
            }
        }
        let config = raft_config(&opts.timings, opts.snapshot_every)?;

        std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
            StartError::Storage(format!("creating {}: {e}", opts.data_dir.display()))
        })?;
        let (log_store, state_machine) = store::open(&opts.data_dir)
            .await
            .map_err(|e| StartError::Storage(e.to_string()))?;
        let state = state_machine.state();
        let audit_archive = state_machine.audit_archive();
        let committed = log_store.committed();
        let store_closed = log_store.closed_signal();

        // Peers this coordinator calls must not be on the deny-list either.
        let client_gate = Arc::new(MeshGate::deny_list_only(state.clone()));
        let client = RpcClient::gated(&opts.tls, &[certs::Role::Coordinator], client_gate.clone())
            .map_err(|e| StartError::Network(e.to_string()))?;
        let agent_client = RpcClient::gated(&opts.tls, &[certs::Role::Agent], client_gate)
            .map_err(|e| StartError::Network(e.to_string()))?;
        if let Some(faults) = &opts.link_faults {
            for c in [&client, &agent_client] {
                c.inject_faults(faults.clone())
                    .map_err(|e| StartError::Network(e.to_string()))?;
            }
        }
        // A peer that was down is retried at least once per minimum election timeout, so a restarted member
        // hears from the leader before its own election timer (lease + timeout) runs out.
        let network = NetworkFactory::new(
            opts.node_id,
            client.clone(),
            Duration::from_millis(opts.timings.heartbeat_ms),
            Duration::from_millis(opts.timings.election_min_ms),
        );
        let raft = Raft::new(
            opts.node_id,
            Arc::new(config),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let deadlines = Deadlines::from_timings(&opts.timings);
        let fleet = Fleet::new(opts.fleet, opts.keyring.clone(), opts.approve_new_nodes);
        let proposer = Proposer::start(raft.clone());
        let service = Arc::new(CoordinatorService::new(
            opts.node_id,
            raft.clone(),
            proposer.clone(),
            deadlines.membership,
            fleet.clone(),
            audit_archive.clone(),
        ));
        let gate = Arc::new(MeshGate::new(state.clone(), raft.clone()));
        let server = match RpcServer::bind_gated(
            opts.raft_listen,
            &opts.tls,
            service,
            ServerOptions::default(),
            gate,
        ) {
            Ok(server) => server,
            Err(e) => {
                stop_raft(&raft).await;
                return Err(StartError::Network(e.to_string()));
            }
        };
        let raft_addr = server.local_addr();
        let server_stop = CancellationToken::new();
        let peers = server.peers();
        let server_task = tokio::spawn(server.run(server_stop.clone()));
        let deny_watch_task = tokio::spawn(crate::mesh_gate::watch_deny_list(
            raft.clone(),
            state.clone(),
            peers.clone(),
            server_stop.clone(),
        ));

        let advertise = advertised(opts.advertise, raft_addr);
        tracing::info!(node = opts.node_id, name = %opts.name, %raft_addr, "coordinator started");

        let handle = Handle {
            inner: Arc::new(NodeInner {
                id: opts.node_id,
                name: opts.name,
                raft,
                state,
                committed,
                client,
                proposer,
                agent_client,
                raft_addr,
                trust_domain: opts.tls.trust_domain().to_owned(),
                peers,
                deadlines,
                server_stop,
                audit_archive,
                server_task: Mutex::new(Some(server_task)),
                deny_watch_task: Mutex::new(Some(deny_watch_task)),
                controllers: Runner::default(),
                clock: opts.clock,
                randomness: opts.randomness,
                lease: LeaderLease::new(Duration::from_millis(opts.timings.election_min_ms)),
                last_heard: fleet.last_heard(),
                store_closed: Mutex::new(Some(store_closed)),
            }),
        };
        fleet.attach(&handle);
        crate::controllers::register_all(
            &handle.inner.controllers,
            &handle,
            ControllerConfig {
                fleet: opts.fleet,
                jobs: opts.jobs,
                audit: opts.audit,
                last_heard: handle.inner.last_heard.clone(),
                raft: opts.timings,
            },
        );

        if let Some(mut members) = opts.bootstrap {
            members.insert(opts.node_id, advertise);
            if let Err(e) = handle.bootstrap(members).await {
                handle.shutdown().await;
                return Err(e);
            }
        }
        Ok((
            Coordinator {
                handle: handle.clone(),
            },
            handle,
        ))
    }

    /// Another handle to this coordinator.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops Raft and the RPC server (same as [`Handle::shutdown`]).
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
    }
}

/// openraft's configuration from our timings.
fn raft_config(timings: &RaftTimings, snapshot_every: u64) -> Result<openraft::Config, StartError> {
    let install_snapshot_ms = timings.election_max_ms.saturating_mul(4).max(2_000);
    let config = openraft::Config {
        cluster_name: "meridian".to_string(),
        heartbeat_interval: timings.heartbeat_ms,
        election_timeout_min: timings.election_min_ms,
        election_timeout_max: timings.election_max_ms,
        install_snapshot_timeout: install_snapshot_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES as u64,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| StartError::Raft(format!("raft timings: {e}")))
}

/// The member as others reach it: the bound address fills in an empty or port-0 advertised address.
fn advertised(mut advertise: MemberNode, bound: SocketAddr) -> MemberNode {
    let unset = advertise.raft_addr.is_empty()
        || advertise
            .raft_addr
            .parse::<SocketAddr>()
            .is_ok_and(|addr| addr.port() == 0);
    if unset {
        advertise.raft_addr = bound.to_string();
    }
    advertise
}

async fn stop_raft(raft: &Raft) {
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
}

impl Handle {
    /// Proposes a prepared command; forwards it to the leader when this node is a follower.
    ///
    /// The command gets a request id (unless it has one), which makes it safe to send again: it is retried
    /// until the deadline when no leader is known, the leader cannot be reached, the node asked is no longer
    /// the leader, or an attempt went unanswered (a forward is abandoned as soon as this node sees the leader
    /// change). Only a deadline passed with the outcome unknown is `Unavailable`.
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.inner.id))]
    pub async fn write(&self, mut cmd: Command) -> Result<Outcome, WriteError> {
        if cmd.request_id.is_none() {
            cmd.request_id = Some(crate::crypto::random_id("req", &mut self.rng()));
        }
        let deadline = Instant::now() + self.inner.deadlines.request;
        let mut last_failure = None;
        loop {
            let proposed =
                tokio::time::timeout_at(deadline, self.inner.proposer.propose(cmd.clone())).await;
            let forward = match proposed {
                Err(_) => {
                    return Err(WriteError::Unavailable(
                        "write not confirmed in time; it may still apply".into(),
                    ))
                }
                Ok(None) => {
                    return Err(WriteError::Unavailable(
                        "the coordinator is shutting down".into(),
                    ))
                }
                Ok(Some(Ok(outcome))) => return outcome.map_err(WriteError::Domain),
                Ok(Some(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))))) => {
                    forward
                }
                Ok(Some(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))))) => {
                    return Err(WriteError::Unavailable(e.to_string()))
                }
                Ok(Some(Err(RaftError::Fatal(e)))) => {
                    return Err(WriteError::Unavailable(e.to_string()))
                }
            };
            if let Some(leader) = &forward.leader_node {
                match self.forward_write(leader, &cmd, deadline).await {
                    Ok(outcome) => return outcome.map_err(WriteError::Domain),
                    // The command carries its request id, so sending it again after an unanswered attempt
                    // cannot apply it twice: the state machine answers a repeat with the first outcome.
                    Err(ForwardError::NotDelivered(m) | ForwardError::Failed(m)) => {
                        last_failure = Some(m)
                    }
                    Err(ForwardError::Invalid(m)) => return Err(WriteError::Unavailable(m)),
                }
            }
            if !self
                .wait_for_other_leader(forward.leader_id, deadline)
                .await
            {
                return Err(last_failure.map_or(WriteError::NoLeader, WriteError::Unavailable));
            }
        }
    }

    async fn forward_write(
        &self,
        leader: &MemberNode,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<CommandOutcome, ForwardError> {
        let command = serde_json::to_vec(cmd)
            .map_err(|e| ForwardError::Invalid(format!("encoding command: {e}")))?;
        let request = pb::ForwardWriteRequest {
            command: Bytes::from(command),
        };
        let response: pb::ForwardWriteResponse = self
            .call_leader(leader, Method::ForwardWrite, &request, deadline)
            .await?;
        serde_json::from_slice(&response.outcome)
            .map_err(|e| ForwardError::Failed(format!("undecodable outcome from the leader: {e}")))
    }

    /// Calls a leader-only method on `leader`. The connection is made first, so a leader that cannot be
    /// reached is known not to have received the request; a `FAILED_PRECONDITION` answer means it is not
    /// the leader (and did nothing).
    async fn call_leader<Req, Resp>(
        &self,
        leader: &MemberNode,
        method: Method,
        request: &Req,
        deadline: Instant,
    ) -> Result<Resp, ForwardError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ForwardError::NotDelivered(
                "deadline passed before reaching the leader".into(),
            ));
        }
        let connect_timeout = remaining.min(self.inner.deadlines.leader_step);
        if let Err(e) = self
            .inner
            .client
            .server_identity(&leader.raft_addr, connect_timeout)
            .await
        {
            return Err(ForwardError::NotDelivered(format!(
                "leader {} at {} unreachable: {e}",
                leader.name, leader.raft_addr
            )));
        }
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let call = self
            .inner
            .client
            .call_message(&leader.raft_addr, method, request, remaining);
        let leader_id = self.leader_id_of(leader);
        let answer = tokio::select! {
            answer = call => answer,
            () = self.leader_moved_from(leader_id) => {
                return Err(ForwardError::Failed(format!(
                    "leader {} was replaced while the request was in flight",
                    leader.name
                )))
            }
        };
        match answer {
            Ok(response) => Ok(response),
            Err(RpcError::Remote(status)) => Err(match status.code {
                StatusCode::FailedPrecondition => {
                    ForwardError::NotDelivered(format!("{} is no longer the leader", leader.name))
                }
                StatusCode::InvalidArgument => ForwardError::Invalid(status.message),
                _ => ForwardError::Failed(format!("leader {}: {}", leader.name, status.message)),
            }),
            Err(e) => Err(ForwardError::Failed(format!(
                "leader {} at {}: {e}",
                leader.name, leader.raft_addr
            ))),
        }
    }

    /// The node id of `member` in the current membership, if it is a member.
    fn leader_id_of(&self, member: &MemberNode) -> Option<NodeId> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let id = m
            .membership_config
            .nodes()
            .find(|(_, node)| node.raft_addr == member.raft_addr)
            .map(|(id, _)| *id);
        id
    }

    /// Resolves once this node no longer believes `leader` leads (an election started or finished).
    /// Never resolves when `leader` is unknown.
    async fn leader_moved_from(&self, leader: Option<NodeId>) {
        let Some(leader) = leader else {
            return std::future::pending().await;
        };
        let mut metrics = self.inner.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader != Some(leader) {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Waits (one step, at most until `deadline`) for a leader other than `stale`. False when the deadline
    /// passed; true when it is worth trying again.
    async fn wait_for_other_leader(&self, stale: Option<NodeId>, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let step = (now + self.inner.deadlines.leader_step).min(deadline);
        let mut metrics = self.inner.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.current_leader.is_some() && m.current_leader != stale {
                    return true;
                }
            }
            match tokio::time::timeout_at(step, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return false,
                Err(_) => return Instant::now() < deadline,
            }
        }
    }

    /// Waits until this replica has applied everything committed before the call (read-index).
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.inner.id))]
    pub async fn linearizable_read(&self) -> Result<(), ReadError> {
        let deadline = Instant::now() + self.inner.deadlines.request;
        let mut last_failure = None;
        loop {
            let asked = tokio::time::timeout_at(deadline, self.inner.raft.get_read_log_id()).await;
            let forward = match asked {
                Err(_) => {
                    return Err(ReadError::Unavailable(
                        "leadership not confirmed in time".into(),
                    ))
                }
                Ok(Ok((read_log_id, _))) => {
                    return self
                        .wait_applied(read_log_id.map(|id| id.index), deadline)
                        .await;
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                    forward
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                    return Err(ReadError::Unavailable(e.to_string()))
                }
                Ok(Err(RaftError::Fatal(e))) => return Err(ReadError::Unavailable(e.to_string())),
            };
            if let Some(leader) = &forward.leader_node {
                let answer: Result<pb::ReadIndexResponse, _> = self
                    .call_leader(
                        leader,
                        Method::ReadIndex,
                        &pb::ReadIndexRequest {},
                        deadline,
                    )
                    .await;
                match answer {
                    Ok(response) => {
                        return self.wait_applied(Some(response.read_index), deadline).await
                    }
                    // Asking for a read index changes nothing, so any failure may be retried.
                    Err(ForwardError::NotDelivered(m) | ForwardError::Failed(m)) => {
                        last_failure = Some(m)
                    }
                    Err(ForwardError::Invalid(m)) => return Err(ReadError::Unavailable(m)),
                }
            }
            if !self
                .wait_for_other_leader(forward.leader_id, deadline)
                .await
            {
                return Err(last_failure.map_or(ReadError::NoLeader, ReadError::Unavailable));
            }
        }
    }

    async fn wait_applied(&self, index: Option<u64>, deadline: Instant) -> Result<(), ReadError> {
        let Some(index) = index else {
            return Ok(());
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| {
                ReadError::Unavailable(format!("replica did not apply index {index} in time: {e}"))
            })
    }

    /// Reads the local replica's state.
    /// The client this coordinator calls its peers with.
    pub(crate) fn rpc_client(&self) -> &RpcClient {
        &self.inner.client
    }

    /// The clock this coordinator reads the time from.
    pub fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    /// When this coordinator last heard from a node (registration or heartbeat), in its clock's monotonic
    /// milliseconds; `None` when it has not since it started.
    pub fn last_heard_ms(&self, node_key: &str) -> Option<u64> {
        self.inner.last_heard.node_last_heard_ms(node_key)
    }

    /// A generator for one use (an id, a token, a key, a nonce), from this coordinator's randomness.
    pub fn rng(&self) -> Box<dyn rand::RngCore + Send> {
        self.inner.randomness.rng()
    }

    /// Wall-clock Unix milliseconds, for stamping a command before it is proposed.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.unix_ms()
    }

    /// This coordinator's archived audit segments (`<data_dir>/audit-archive/`).
    pub fn audit_archive(&self) -> &crate::audit_archive::AuditArchive {
        &self.inner.audit_archive
    }

    pub fn read<R>(&self, f: impl FnOnce(&RegistryState) -> R) -> R {
        // A poisoned lock means a reader panicked; readers never mutate, so the state is intact.
        let state = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&state)
    }

    pub(crate) fn downgrade(&self) -> WeakHandle {
        WeakHandle {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The current term while this node leads: Raft made it leader and its lease holds (see
    /// [`LeaderLease`]), so a leader cut off from the majority stops acting as one — its controllers pause
    /// and agents are sent elsewhere — even before it learns of the new term.
    pub(crate) fn leader_term(&self) -> Option<u64> {
        let term = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            (m.state == ServerState::Leader && m.current_leader == Some(self.inner.id))
                .then_some(m.current_term)?
        };
        self.inner.lease.holds(term, Instant::now()).then_some(term)
    }

    /// Whether this node acts as the leader now (see [`Handle::leader_term`]).
    pub fn leads(&self) -> bool {
        self.leader_term().is_some()
    }

    /// On the leader, asks a quorum to confirm the leadership and renews the lease when it does (the
    /// lease counts from before the question). Does nothing on a follower.
    pub(crate) async fn renew_lease(&self) {
        let term = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            if m.state != ServerState::Leader {
                return;
            }
            m.current_term
        };
        let asked = Instant::now();
        let round = self.inner.raft.get_read_log_id();
        let confirmed = tokio::time::timeout(self.inner.lease.lasts(), round)
            .await
            .is_ok_and(|r| r.is_ok());
        if confirmed {
            self.inner.lease.confirmed(term, asked);
        }
    }

    /// `FAILED_PRECONDITION` naming the leader's QUIC address (when known) unless this node leads.
    pub(crate) fn ensure_leader(&self) -> Result<(), protocol::rpc::RpcStatus> {
        if self.leader_term().is_some() {
            return Ok(());
        }
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        // A leader whose lease ran out does not send agents back to itself.
        let leader_addr = m
            .current_leader
            .filter(|id| *id != self.inner.id)
            .and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.raft_addr.clone())
            });
        Err(protocol::rpc::RpcStatus::failed_precondition(
            match leader_addr {
                Some(addr) => format!("not the leader; leader at {addr}"),
                None => "not the leader; no leader known".to_owned(),
            },
        ))
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The address the QUIC RPC server is bound to (with the real port when configured with port 0).
    pub fn raft_addr(&self) -> SocketAddr {
        self.inner.raft_addr
    }

    /// The trust domain every mesh identity of this coordinator group belongs to.
    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }

    /// The mesh server's open connections (to count or re-check them).
    pub fn mesh_connections(&self) -> PeerTable {
        self.inner.peers.clone()
    }

    /// Adds a member (as learner, then voter when `voter`); forwarded to the leader.
    pub async fn add_member(
        &self,
        id: NodeId,
        node: MemberNode,
        voter: bool,
    ) -> Result<(), MembershipError> {
        self.change_members(MemberChange::Add { id, node, voter })
            .await
    }

    /// Removes a member from the voters and learners; forwarded to the leader.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), MembershipError> {
        self.change_members(MemberChange::Remove { id }).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.inner.id))]
    async fn change_members(&self, change: MemberChange) -> Result<(), MembershipError> {
        let deadline = Instant::now() + self.inner.deadlines.membership;
        let mut last_failure = None;
        loop {
            let (leader_id, leader_node) =
                match change_membership_as_leader(&self.inner.raft, &change, deadline).await {
                    Ok(()) => return Ok(()),
                    Err(LeaderOnlyError::NotLeader {
                        leader_id,
                        leader_node,
                    }) => (leader_id, leader_node),
                    Err(LeaderOnlyError::Invalid(m)) => return Err(MembershipError::Invalid(m)),
                    Err(LeaderOnlyError::Unavailable(m)) => {
                        return Err(MembershipError::Unavailable(m))
                    }
                };
            if let Some(leader) = &leader_node {
                let request = membership_request(&change);
                let answer: Result<pb::MembershipChangeResponse, _> = self
                    .call_leader(leader, Method::ChangeMembership, &request, deadline)
                    .await;
                match answer {
                    Ok(_) => return Ok(()),
                    Err(ForwardError::NotDelivered(m)) => last_failure = Some(m),
                    Err(ForwardError::Invalid(m)) => return Err(MembershipError::Invalid(m)),
                    Err(ForwardError::Failed(m)) => return Err(MembershipError::Unavailable(m)),
                }
            }
            if !self.wait_for_other_leader(leader_id, deadline).await {
                return Err(
                    last_failure.map_or(MembershipError::NoLeader, MembershipError::Unavailable)
                );
            }
        }
    }

    /// Forms a new cluster from `members` unless this node was initialized before (what
    /// [`CoordinatorOptions::bootstrap`] does at start; tests call it once every member has bound its
    /// port).
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, MemberNode>) -> Result<(), StartError> {
        let raft = &self.inner.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if initialized {
            tracing::info!("raft state found on disk; not bootstrapping again");
            return Ok(());
        }
        tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "bootstrapping the coordinator group");
        match raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another voter bootstrapped first and already replicated to us.
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(reason = %e, "cluster already initialized");
                Ok(())
            }
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    /// Stops Raft and the RPC server, and waits until the storage is released (so the same data directory
    /// can be opened again).
    pub async fn shutdown(&self) {
        self.inner.server_stop.cancel();
        stop_raft(&self.inner.raft).await;
        let server_task = self
            .inner
            .server_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = server_task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "RPC server task failed");
            }
        }
        let deny_watch_task = self
            .inner
            .deny_watch_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = deny_watch_task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "deny-list watcher failed");
            }
        }
        self.inner.controllers.shutdown().await;
        let store_closed = self
            .inner
            .store_closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(closed) = store_closed {
            if tokio::time::timeout(STORE_RELEASE_TIMEOUT, closed.wait())
                .await
                .is_err()
            {
                tracing::warn!("raft storage still in use after shutdown");
            }
        }
        tracing::info!(node = self.inner.id, "coordinator stopped");
    }
}
