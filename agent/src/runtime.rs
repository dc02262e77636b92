//! The agent's link to the coordinators: registration, then heartbeats, for as long as the agent runs.
//!
//! Owns finding the leader (rotating through the configured coordinators, following a
//! "not the leader; leader at ADDR" answer), the node's lease epoch, and re-registering when a coordinator
//! no longer knows the node or holds a newer epoch. It must never give up because coordinators are away:
//! outages are retried with backoff until shutdown.

use std::path::PathBuf;
use std::time::Duration;

use protocol::pb;
use protocol::rpc::{Method, RpcClient, RpcError, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::inventory::{self, InventoryOptions, NodeInventory};

/// How long one registration or heartbeat call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// First and largest pause after every coordinator failed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Leader redirects followed in a row before treating the round as failed.
const MAX_REDIRECTS: usize = 3;

/// What the agent runtime needs.
pub struct AgentOptions {
    /// QUIC addresses (`host:port`) of the coordinators.
    pub coordinators: Vec<String>,
    pub tls: certs::TlsIdentity,
    /// The agent's data directory (the inventory reports its file system).
    pub data_dir: PathBuf,
    /// Heartbeat interval used until a coordinator names another.
    pub heartbeat: Duration,
}

/// Why the runtime could not start (it never stops for coordinator outages).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no coordinator addresses configured")]
    NoCoordinators,
    #[error("the certificate names {0}, which is not an agent identity")]
    NotAnAgent(String),
    #[error("collecting the inventory: {0}")]
    Inventory(#[from] inventory::InventoryError),
    #[error("collecting the inventory: {0}")]
    InventoryTask(String),
    #[error("rpc client: {0}")]
    Client(#[from] protocol::rpc::SetupError),
}

/// The node this agent speaks for.
struct NodeName {
    region: String,
    cluster: String,
    node: String,
}

/// Registers the node and heartbeats until `shutdown` is cancelled.
#[tracing::instrument(skip_all, fields(node))]
pub async fn run(opts: AgentOptions, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    if opts.coordinators.is_empty() {
        return Err(RuntimeError::NoCoordinators);
    }
    let identity = opts.tls.identity();
    let name = match &identity.kind {
        certs::IdentityKind::Agent {
            region,
            cluster,
            node,
        } => NodeName {
            region: region.clone(),
            cluster: cluster.clone(),
            node: node.clone(),
        },
        _ => return Err(RuntimeError::NotAnAgent(identity.uri())),
    };
    tracing::Span::current().record(
        "node",
        format!("{}/{}/{}", name.region, name.cluster, name.node),
    );
    let inventory_opts = InventoryOptions {
        data_dir: opts.data_dir.clone(),
        labels: Default::default(),
        gpu: Default::default(),
    };
    let inv = tokio::task::spawn_blocking(move || inventory::collect(&inventory_opts))
        .await
        .map_err(|e| RuntimeError::InventoryTask(e.to_string()))??;
    let client = RpcClient::new(&opts.tls)?;
    let mut link = Link {
        client,
        name,
        resources: resources_of(&inv),
        coordinators: opts.coordinators,
        next: 0,
        current: None,
        epoch: None,
        interval: opts.heartbeat,
        sequence: 0,
        backoff: BACKOFF_MIN,
    };
    loop {
        let pause = link.step().await;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn resources_of(inv: &NodeInventory) -> pb::NodeResources {
    pb::NodeResources {
        cpu_cores: inv.cpu_cores,
        memory_bytes: inv.memory_bytes,
        gpu_count: u32::try_from(inv.gpus.len()).unwrap_or(u32::MAX),
    }
}

/// The agent's view of its coordinators and lease.
struct Link {
    client: RpcClient,
    name: NodeName,
    resources: pb::NodeResources,
    coordinators: Vec<String>,
    /// Index of the next configured coordinator to try.
    next: usize,
    /// The coordinator that answered last (the leader, as far as we know).
    current: Option<String>,
    /// The lease epoch of our registration; `None` until registered (or after being told to re-register).
    epoch: Option<u64>,
    interval: Duration,
    sequence: u64,
    backoff: Duration,
}

impl Link {
    /// One registration or heartbeat (following leader redirects); returns how long to wait before the next.
    async fn step(&mut self) -> Duration {
        for _ in 0..=MAX_REDIRECTS {
            let addr = match &self.current {
                Some(addr) => addr.clone(),
                None => {
                    let addr = self.coordinators[self.next % self.coordinators.len()].clone();
                    self.next = self.next.wrapping_add(1);
                    addr
                }
            };
            let result = match self.epoch {
                None => self.register(&addr).await,
                Some(epoch) => self.heartbeat(&addr, epoch).await,
            };
            match result {
                Ok(()) => {
                    self.current = Some(addr);
                    self.backoff = BACKOFF_MIN;
                    return self.interval;
                }
                Err(RpcError::Remote(status)) if status.code == StatusCode::FailedPrecondition => {
                    let leader = status
                        .message
                        .split_once("leader at ")
                        .map(|(_, a)| a.trim().to_owned());
                    tracing::debug!(%addr, ?leader, "not the leader");
                    self.current = leader;
                    if self.current.is_none() {
                        break;
                    }
                }
                Err(RpcError::Remote(status)) if status.code == StatusCode::NotFound => {
                    tracing::info!(%addr, message = %status.message, "coordinator asks to register again");
                    self.epoch = None;
                    self.current = Some(addr);
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "coordinator call failed");
                    self.current = None;
                    break;
                }
            }
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        pause
    }

    async fn register(&mut self, addr: &str) -> Result<(), RpcError> {
        let request = pb::NodeRegistration {
            node: self.name.node.clone(),
            region: self.name.region.clone(),
            cluster: self.name.cluster.clone(),
            resources: Some(self.resources),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let ack: pb::NodeRegistrationAck = self
            .client
            .call_message(addr, Method::AgentRegister, &request, CALL_TIMEOUT)
            .await?;
        tracing::info!(%addr, lease_epoch = ack.lease_epoch, "registered");
        self.epoch = Some(ack.lease_epoch);
        self.set_interval(ack.heartbeat_interval_ms);
        Ok(())
    }

    async fn heartbeat(&mut self, addr: &str, epoch: u64) -> Result<(), RpcError> {
        self.sequence += 1;
        let request = pb::Heartbeat {
            node: self.name.node.clone(),
            region: self.name.region.clone(),
            cluster: self.name.cluster.clone(),
            lease_epoch: epoch,
            sequence: self.sequence,
            allocatable: Some(self.resources),
        };
        let ack: pb::HeartbeatAck = self
            .client
            .call_message(addr, Method::AgentHeartbeat, &request, CALL_TIMEOUT)
            .await?;
        if ack.lease_epoch > epoch {
            tracing::info!(
                ours = epoch,
                theirs = ack.lease_epoch,
                "newer lease epoch; registering again"
            );
            self.epoch = None;
        }
        self.set_interval(ack.heartbeat_interval_ms);
        Ok(())
    }

    fn set_interval(&mut self, ms: u64) {
        if ms > 0 {
            self.interval = Duration::from_millis(ms);
        }
    }
}
