//! The running agent: wires the inventory, the local store, the job supervisor, the assignment long
//! poll, the reporter, the idle-GPU monitor and the agent's RPC server together, and keeps the node
//! registered and heartbeating for as long as it runs.
//!
//! Owns start-up order (re-adopt jobs before the first registration, which announces them), the
//! registration and heartbeat loop, and shutdown: every task stops, jobs keep running for the next agent
//! process to adopt. It must never give up because coordinators are away: outages are retried with
//! backoff until shutdown. Only a failing local store stops it early.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::pb;
use protocol::rpc::{LinkFaults, Method, PeerTable, RpcClient, RpcServer, ServerOptions};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{IdleGpuConfig, JobsConfig};
use crate::deny_list::DenyListGate;
use crate::exec::sandbox::netfilter;
use crate::exec::{ExecError, JobDefaults, Launcher, LauncherOptions, SandboxOptions};
use crate::inventory::{self, GpuProbe, InventoryOptions, NodeInventory};
use crate::jobs::supervisor::Supervisor;
use crate::jobs::{self, ExecService, JobStore, StoreError};
use crate::link::{pause_unless_shutdown, Backoff, CallError, Link, NodeName};
use crate::metrics::{self, AgentMetrics, CallResult, MetricsListener};

/// How long one registration or heartbeat call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// First and largest pause after a failed registration or heartbeat. Kept near the heartbeat interval:
/// once a coordinator is back, a node that waits longer than its TTL would be marked unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long resolving the first coordinator may take when choosing the advertised address.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the agent runtime needs. Build it with [`AgentOptions::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// QUIC addresses (`host:port`) of the coordinators.
    pub coordinators: Vec<String>,
    pub tls: certs::TlsIdentity,
    /// The agent's data directory: `agent.db`, job state directories and logs; the inventory reports
    /// its file system.
    pub data_dir: PathBuf,
    /// Heartbeat interval used until a coordinator names another.
    pub heartbeat: Duration,
    /// Where the agent's QUIC RPC server (log reads) listens; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The `host:port` coordinators dial; `None`: derived from `listen` (see [`crate::AgentConfig`]).
    pub advertise: Option<String>,
    /// Operator labels announced at registration.
    pub labels: BTreeMap<String, String>,
    /// When an assigned GPU counts as idle.
    pub idle_gpus: IdleGpuConfig,
    /// How long finished attempts are kept and how often the agent looks for expired ones.
    pub jobs: JobsConfig,
    /// Where cgroup hierarchies are mounted; `None`: `/sys/fs/cgroup`.
    pub cgroup_root: Option<PathBuf>,
    /// How jobs are sandboxed; `None` runs them unisolated as the agent's user (development only). With a
    /// sandbox the agent refuses to start on a node that cannot give the full isolation.
    pub sandbox: Option<SandboxOptions>,
    /// Ports of Meridian's listeners on this node that `egress` jobs may not reach on any local address
    /// (the agent's own RPC port and the coordinators' are added by the agent).
    pub protected_local_ports: Vec<u16>,
    /// Default memory and process limits of jobs.
    pub job_defaults: JobDefaults,
    /// Faults injected on the agent's calls to the coordinators (partition tests); `None` in production.
    pub link_faults: Option<Arc<dyn LinkFaults>>,
    /// Where `GET /metrics` is served; `None`: nowhere.
    pub metrics: Option<MetricsListener>,
}

impl AgentOptions {
    /// Options for an embedded agent (dev mode, tests): heartbeat 1 s, listen on `127.0.0.1` with a port
    /// the system picks (so several agents share a host), advertise derived, no labels, idle GPUs at 5 %
    /// for 600 s, finished attempts kept 7 days (swept every 10 minutes), cgroups under
    /// `/sys/fs/cgroup`. A configured agent takes `listen` from its file (default
    /// [`crate::DEFAULT_LISTEN`]).
    pub fn new(coordinators: Vec<String>, tls: certs::TlsIdentity, data_dir: PathBuf) -> Self {
        AgentOptions {
            coordinators,
            tls,
            data_dir,
            heartbeat: Duration::from_secs(1),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            advertise: None,
            labels: BTreeMap::new(),
            idle_gpus: IdleGpuConfig::default(),
            jobs: JobsConfig::default(),
            cgroup_root: None,
            sandbox: Some(SandboxOptions::default()),
            protected_local_ports: Vec::new(),
            job_defaults: JobDefaults::default(),
            link_faults: None,
            metrics: None,
        }
    }
}

/// Why the runtime could not start, or had to stop (it never stops for coordinator outages).
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
    #[error("agent RPC server on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: protocol::rpc::SetupError,
    },
    #[error("job launcher: {0}")]
    Launcher(#[from] ExecError),
    #[error(
        "jobs cannot be isolated on this node: {0}. Run the agent as root on a host with namespaces, \
         cgroups and eBPF, or (for development only) turn the sandbox off with --insecure-no-sandbox"
    )]
    Isolation(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("agent task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs the agent until `shutdown` is cancelled: re-adopts jobs, registers, heartbeats, runs the node's
/// assignments, reports, serves log reads. Returns early only when it cannot start or its local store
/// fails. Returns after every task has stopped (the store is closed then); jobs keep running.
#[tracing::instrument(skip_all, fields(node))]
pub async fn run(mut opts: AgentOptions, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    if opts.coordinators.is_empty() {
        return Err(RuntimeError::NoCoordinators);
    }
    // Jobs run in their own working directories: every path handed to them must not depend on ours.
    opts.data_dir =
        std::path::absolute(&opts.data_dir).map_err(|source| RuntimeError::DataDir {
            path: opts.data_dir.clone(),
            source,
        })?;
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
    tracing::Span::current().record("node", name.key());
    inventory::validate_labels(&opts.labels)?;

    let inventory_opts = InventoryOptions {
        data_dir: opts.data_dir.clone(),
        labels: opts.labels.clone(),
        gpu: Default::default(),
    };
    let (probe, inv) = tokio::task::spawn_blocking(move || {
        let probe = GpuProbe::open(&inventory_opts.gpu);
        inventory::collect_with(&inventory_opts, &probe).map(|inv| (Arc::new(probe), inv))
    })
    .await
    .map_err(|e| RuntimeError::InventoryTask(e.to_string()))??;

    let data_dir = opts.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || JobStore::open(&data_dir))
        .await
        .map_err(|e| RuntimeError::Task(e.to_string()))??;
    let store = Arc::new(store);
    // Coordinators on the mesh deny-list are refused by the agent's server and by the link.
    let gate = Arc::new(DenyListGate::default());
    let server = RpcServer::bind_gated(
        opts.listen,
        &opts.tls,
        Arc::new(ExecService::new(store.clone())),
        ServerOptions::default(),
        gate.clone(),
    )
    .map_err(|source| RuntimeError::Listen {
        addr: opts.listen,
        source,
    })?;
    let sandbox = match opts.sandbox.clone() {
        Some(mut sandbox) => {
            let coordinators = resolve_all(&opts.coordinators).await;
            let mut ports = opts.protected_local_ports.clone();
            ports.push(server.local_addr().port());
            ports.extend(opts.metrics.as_ref().map(|m| m.local_addr().port()));
            sandbox.deny.extend(netfilter::deny_rules(
                &coordinators,
                &ports,
                &netfilter::local_addresses(),
            ));
            sandbox.hidden_paths.push(opts.data_dir.clone());
            Some(sandbox)
        }
        None => None,
    };
    let launcher = Launcher::new(LauncherOptions {
        data_dir: opts.data_dir.clone(),
        cgroup_root: opts.cgroup_root.clone(),
        sandbox,
        defaults: opts.job_defaults,
    })?;
    let isolation = launcher.isolation().clone();
    if isolation.sandboxed && !isolation.complete() {
        return Err(RuntimeError::Isolation(isolation.problems.join("; ")));
    }
    tracing::info!(isolation = %isolation.status(), "job isolation");
    let server_peers = server.peers();
    let rpc_addr = match &opts.advertise {
        Some(addr) => addr.clone(),
        None => derived_advertise(server.local_addr(), &opts.coordinators).await,
    };
    tracing::info!(%rpc_addr, listen = %server.local_addr(), "agent RPC server ready");

    let client = RpcClient::gated(&opts.tls, &[certs::Role::Coordinator], gate.clone())?;
    if let Some(faults) = opts.link_faults.take() {
        client.inject_faults(faults)?;
    }
    let link = Arc::new(Link::new(client, name, opts.coordinators.clone()));
    let queued = Arc::new(Notify::new());
    let (allocated_tx, allocated_rx) = watch::channel(BTreeSet::new());
    let (idle_tx, idle_rx) = watch::channel(Vec::new());
    let (assign_tx, assign_rx) = watch::channel(None);

    let counters = Arc::new(AgentMetrics::default());
    let mut supervisor = Supervisor::new(
        store.clone(),
        launcher.clone(),
        queued.clone(),
        allocated_tx,
        opts.jobs,
    )
    .with_metrics(counters.clone());
    // Before the first registration: it announces the attempts held.
    supervisor.recover()?;

    let registration = Registration {
        link: link.clone(),
        store: store.clone(),
        resources: resources_of(&inv),
        labels: opts
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        rpc_addr,
        os: os_line(&inv),
        limit_mode: format!(
            "{}; isolation: {}",
            launcher.mode().status(),
            isolation.status()
        ),
        interval: opts.heartbeat,
        sequence: 0,
        idle: idle_rx,
        gate,
        server_peers,
        metrics: counters.clone(),
    };

    let stop = shutdown.child_token();
    let mut tasks: JoinSet<Result<(), RuntimeError>> = JoinSet::new();
    let server_stop = stop.clone();
    tasks.spawn(async move {
        server.run(server_stop).await;
        Ok(())
    });
    tasks.spawn(
        supervisor
            .run(assign_rx, stop.clone())
            .map_result(RuntimeError::Store),
    );
    let sync_stop = stop.clone();
    let sync_link = link.clone();
    tasks.spawn(async move {
        jobs::sync::run(sync_link, assign_tx, sync_stop).await;
        Ok(())
    });
    tasks.spawn(
        jobs::reporter::run(
            link.clone(),
            store.clone(),
            queued,
            counters.clone(),
            stop.clone(),
        )
        .map_result(RuntimeError::Store),
    );
    if let Some(listener) = opts.metrics.take() {
        let scrape = metrics::Scrape {
            metrics: counters,
            link: link.clone(),
            store: store.clone(),
            gpus: inv.gpus.len() as u64,
        };
        tasks.spawn(
            metrics::serve(listener, scrape, stop.clone()).map_result(RuntimeError::Metrics),
        );
    }
    if inv.gpus.is_empty() {
        tracing::debug!("no GPUs: idle-GPU monitor not started");
    } else {
        let (policy, interval) =
            crate::idle_gpus::policy(opts.idle_gpus.utilization_percent, opts.idle_gpus.window());
        let monitor_stop = stop.clone();
        tasks.spawn(async move {
            crate::idle_gpus::run(probe, policy, interval, allocated_rx, idle_tx, monitor_stop)
                .await;
            Ok(())
        });
    }
    let registration_stop = stop.clone();
    tasks.spawn(async move {
        registration.run(registration_stop).await;
        Ok(())
    });
    drop(link);
    drop(store);

    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => RuntimeError::Task(e.to_string()),
        };
        tracing::error!(error = %failure, "agent stopping");
        stop.cancel();
        if result.is_ok() {
            result = Err(failure);
        }
    }
    result
}

/// `future.map_result(f)`: maps the error of a `Result` future.
trait MapResult<T, E>: std::future::Future<Output = Result<T, E>> + Sized {
    fn map_result<F>(self, f: fn(E) -> F) -> impl std::future::Future<Output = Result<T, F>> {
        async move { self.await.map_err(f) }
    }
}

impl<T, E, Fut: std::future::Future<Output = Result<T, E>>> MapResult<T, E> for Fut {}

/// The address to advertise when none is configured: the bound address, with an unspecified IP replaced
/// by the local address of the route towards the first coordinator (loopback when there is none).
async fn derived_advertise(bound: SocketAddr, coordinators: &[String]) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let ip = match route_ip(bound.is_ipv4(), coordinators).await {
        Some(ip) => ip,
        None if bound.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        None => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, bound.port()).to_string()
}

/// Every address the coordinators' names resolve to (names that do not resolve in time are skipped).
async fn resolve_all(coordinators: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for name in coordinators {
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name.as_str())).await {
            Ok(Ok(addrs)) => out.extend(addrs),
            _ => {
                tracing::warn!(coordinator = %name, "not resolved; jobs' egress filter cannot name it")
            }
        }
    }
    out
}

/// The local IP the system would use to reach the first coordinator (no packet is sent).
async fn route_ip(ipv4: bool, coordinators: &[String]) -> Option<IpAddr> {
    let first = coordinators.first()?;
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(first.as_str()))
        .await
        .ok()?
        .ok()?;
    let target = resolved.into_iter().find(|a| a.is_ipv4() == ipv4)?;
    let local: SocketAddr = if ipv4 {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(local).ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

fn resources_of(inv: &NodeInventory) -> pb::NodeResources {
    pb::NodeResources {
        cpu_cores: inv.cpu_cores,
        memory_bytes: inv.memory_bytes,
        gpu_count: u32::try_from(inv.gpus.len()).unwrap_or(u32::MAX),
        gpus: inv
            .gpus
            .iter()
            .map(|g| pb::GpuDevice {
                uuid: g.uuid.clone(),
                index: g.index,
                model: g.model.clone(),
                memory_mib: g.memory_total_mib,
                healthy: g.healthy,
            })
            .collect(),
    }
}

/// OS, kernel, architecture and GPU driver, for operators.
fn os_line(inv: &NodeInventory) -> String {
    let mut line = format!("{}; kernel {}; {}", inv.os, inv.kernel, inv.arch);
    if let Some(driver) = &inv.gpu_driver_version {
        line.push_str(&format!("; NVIDIA driver {driver}"));
    }
    line
}

/// Registration and heartbeats.
struct Registration {
    link: Arc<Link>,
    store: Arc<JobStore>,
    resources: pb::NodeResources,
    labels: std::collections::HashMap<String, String>,
    rpc_addr: String,
    os: String,
    limit_mode: String,
    interval: Duration,
    sequence: u64,
    idle: watch::Receiver<Vec<String>>,
    /// The deny-list, refreshed from registration and heartbeat answers.
    gate: Arc<DenyListGate>,
    /// The agent's RPC server connections, re-checked when the deny-list changes.
    server_peers: PeerTable,
    /// Counts registrations and heartbeats.
    metrics: Arc<AgentMetrics>,
}

impl Registration {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let step = async {
                match self.link.lease_epoch() {
                    None => self.register().await,
                    Some(epoch) => self.heartbeat(epoch).await,
                }
            };
            let ok = tokio::select! {
                _ = shutdown.cancelled() => return,
                ok = step => ok,
            };
            let pause = if ok {
                backoff.reset();
                self.interval
            } else {
                backoff.next_pause()
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.link.reregister_requested() => {
                    if self.link.lease_epoch().is_some() {
                        // A stale wake-up; keep the rhythm without hammering.
                        if !pause_unless_shutdown(pause, &shutdown).await {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn register(&mut self) -> bool {
        let held = match self.store.held() {
            Ok(held) => held,
            Err(e) => {
                tracing::error!(error = %e, "reading the attempts held; not registering");
                return false;
            }
        };
        let name = self.link.name();
        let request = pb::NodeRegistration {
            node: name.node.clone(),
            region: name.region.clone(),
            cluster: name.cluster.clone(),
            resources: Some(self.resources.clone()),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: self.labels.clone(),
            rpc_addr: self.rpc_addr.clone(),
            held,
            os: self.os.clone(),
            limit_mode: self.limit_mode.clone(),
        };
        match self
            .link
            .call::<_, pb::NodeRegistrationAck>(Method::AgentRegister, &request, CALL_TIMEOUT)
            .await
        {
            Ok(ack) => {
                self.metrics.called(false, CallResult::ok);
                tracing::info!(
                    lease_epoch = ack.lease_epoch,
                    held = request.held.len(),
                    "registered"
                );
                self.set_interval(ack.heartbeat_interval_ms);
                self.link.set_lease(ack.lease_epoch);
                if let Some(list) = ack.deny_list {
                    self.gate.update(list, &self.server_peers);
                }
                true
            }
            Err(e) => {
                // A refusal is an answer: the coordinators are there.
                let heard = matches!(e, CallError::Remote(_));
                self.metrics.called(
                    false,
                    if heard {
                        CallResult::ok
                    } else {
                        CallResult::failed
                    },
                );
                match &e {
                    CallError::Remote(_) => tracing::warn!(error = %e, "registration refused"),
                    CallError::Unreachable(_) => {
                        tracing::debug!(error = %e, "registration: no coordinator")
                    }
                }
                false
            }
        }
    }

    async fn heartbeat(&mut self, epoch: u64) -> bool {
        self.sequence += 1;
        let name = self.link.name();
        let request = pb::Heartbeat {
            node: name.node.clone(),
            region: name.region.clone(),
            cluster: name.cluster.clone(),
            lease_epoch: epoch,
            sequence: self.sequence,
            allocatable: Some(self.resources.clone()),
            idle_gpus: self.idle.borrow().clone(),
            deny_list_version: self.gate.version(),
        };
        match self
            .link
            .call::<_, pb::HeartbeatAck>(Method::AgentHeartbeat, &request, CALL_TIMEOUT)
            .await
        {
            Ok(ack) => {
                self.metrics.called(true, CallResult::ok);
                self.set_interval(ack.heartbeat_interval_ms);
                if let Some(list) = ack.deny_list {
                    self.gate.update(list, &self.server_peers);
                }
                if ack.lease_epoch > epoch {
                    tracing::info!(
                        ours = epoch,
                        theirs = ack.lease_epoch,
                        "newer lease epoch; registering again"
                    );
                    self.link.fenced(epoch);
                }
                true
            }
            Err(CallError::Remote(status))
                if status.code == protocol::rpc::StatusCode::NotFound =>
            {
                self.metrics.called(true, CallResult::ok);
                tracing::info!(message = %status.message, "coordinator asks to register again");
                self.link.fenced(epoch);
                true
            }
            Err(e) => {
                self.metrics.called(true, CallResult::failed);
                tracing::debug!(error = %e, "heartbeat failed");
                false
            }
        }
    }

    fn set_interval(&mut self, ms: u64) {
        if ms > 0 {
            self.interval = Duration::from_millis(ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_advertised_address_replaces_only_an_unspecified_ip() {
        let bound: SocketAddr = "10.1.2.3:7443".parse().expect("literal");
        assert_eq!(derived_advertise(bound, &[]).await, "10.1.2.3:7443");
        let any: SocketAddr = "0.0.0.0:7443".parse().expect("literal");
        // Coordinators on loopback: the route towards them starts at loopback.
        assert_eq!(
            derived_advertise(any, &["127.0.0.1:7170".into()]).await,
            "127.0.0.1:7443"
        );
        // Nothing to route towards: loopback.
        assert_eq!(derived_advertise(any, &[]).await, "127.0.0.1:7443");
        assert_eq!(
            derived_advertise(any, &["not a host:1".into()]).await,
            "127.0.0.1:7443"
        );
    }
}
