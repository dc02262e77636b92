//! Agent registration, heartbeats and node health on the coordinator side.
//!
//! Owns the agent RPCs (`AgentRegister`, `AgentHeartbeat`, `AgentSync` — the long poll for a node's job
//! assignments — and `AgentReport`), the in-memory liveness table (soft state: when this coordinator last
//! heard from each node, never replicated) and the leader-only health monitor that turns silence into
//! `SetNodeHealth` commands. The decision itself is the pure [`transitions`]; the monitor task only feeds it.
//! It must never let an agent speak for another node, never accept a report under a lease epoch that is not
//! the node's current one, never propose a health change from a coordinator that is not the leader, and
//! never hand a secret to an agent without an audit record of that release (`secret.release`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use protocol::pb;
use protocol::rpc::{decode_message, encode_message, CallContext, RpcStatus};
use tokio::time::Instant;
use zeroize::Zeroize;

use meridian_registry::controllers::health::LastHeard;

use crate::crypto::{self, MasterKeyring};
use crate::node::{Handle, WeakHandle, WriteError};
use crate::scheduler::GpuDevice;
use crate::state::{
    node_key, secret_binds_workload, Actor, Attempt, AuditOp, AuditOutcome, Command, DenyKind,
    DomainError, FleetOp, FleetOutcome, HeldAttempt, JobEventKind, JobEventOp, JobOp, JobOutcome,
    JobRecord, NodeHealthState, Op, Outcome, RegistryState,
};

/// Timings of the fleet: how often agents beat, and how long silence lasts before a node changes health.
#[derive(Debug, Clone, Copy)]
pub struct FleetTimings {
    /// The heartbeat interval told to agents.
    pub heartbeat: Duration,
    /// A Ready node not heard from for this long becomes Unreachable.
    pub ttl: Duration,
    /// An Unreachable node stays so for this long before it becomes Lost.
    pub lost_after: Duration,
    /// How often the leader's monitor looks.
    pub tick: Duration,
    /// How often the leader's dispatcher looks for pending jobs (a pass runs only when the state moved).
    pub dispatch_tick: Duration,
}

impl Default for FleetTimings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
            lost_after: Duration::from_secs(30),
            tick: Duration::from_millis(250),
            dispatch_tick: Duration::from_millis(50),
        }
    }
}

/// When this coordinator last heard from each node (keyed `region/cluster/node`), in milliseconds of its
/// monotonic clock. Soft state: never replicated, and a new leader starts without it.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    seen: Mutex<HashMap<String, u64>>,
}

impl Liveness {
    fn heard(&self, key: &str, at_ms: u64) {
        self.lock().insert(key.to_owned(), at_ms);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // The map holds plain numbers; a panic while holding the lock cannot leave it half-updated.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LastHeard for Liveness {
    fn last_heard_ms(&self) -> HashMap<String, u64> {
        self.lock().clone()
    }

    fn node_last_heard_ms(&self, key: &str) -> Option<u64> {
        self.lock().get(key).copied()
    }
}

/// The agent-facing side of a coordinator, shared by the RPC service and the monitor.
pub(crate) struct Fleet {
    pub(crate) timings: FleetTimings,
    pub(crate) liveness: Arc<Liveness>,
    /// Set once the node's [`Handle`] exists (the RPC server starts before it).
    handle: OnceLock<WeakHandle>,
    /// Opens the secrets bound to jobs when their assignments are handed over.
    keyring: Option<Arc<MasterKeyring>>,
    /// Whether a node never seen before is approved on arrival when its cluster has no policy (stamped
    /// into its registration).
    approve_new_nodes: bool,
    /// The attempts (job, attempt, replica) whose secret release this coordinator has audited while leading,
    /// so a long poll that answers the same assignment again does not audit it again.
    released: Mutex<HashSet<ReleaseKey>>,
}

/// One replica of one attempt.
type ReleaseKey = (String, u32, u32);

/// A job's secret values by environment variable, and the (name, version) of each.
type OpenedSecrets = (HashMap<String, String>, Vec<(String, u32)>);

/// Secrets handed to an agent with one assignment, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Release {
    project_id: String,
    job_id: String,
    attempt: u32,
    replica: u32,
    node: String,
    /// `(secret name, version)`, in the job's order.
    secrets: Vec<(String, u32)>,
}

impl Release {
    fn key(&self) -> ReleaseKey {
        (self.job_id.clone(), self.attempt, self.replica)
    }

    /// The `secret.release` audit record: which job, attempt, replica, node, secrets and versions.
    fn audit_op(&self) -> Op {
        let secrets: Vec<String> = self
            .secrets
            .iter()
            .map(|(name, version)| format!("{name}@v{version}"))
            .collect();
        let detail = format!(
            "attempt={} replica={} node={} secrets={}",
            self.attempt,
            self.replica,
            self.node,
            secrets.join(",")
        );
        Op::Audit(AuditOp::RecordAudit {
            action: "secret.release".to_owned(),
            project: Some(self.project_id.clone()),
            target: self.job_id.chars().take(256).collect(),
            outcome: AuditOutcome::Success,
            detail: detail.chars().take(1024).collect(),
        })
    }
}

impl Fleet {
    pub(crate) fn new(
        timings: FleetTimings,
        keyring: Option<Arc<MasterKeyring>>,
        approve_new_nodes: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            timings,
            liveness: Arc::default(),
            handle: OnceLock::new(),
            keyring,
            approve_new_nodes,
            released: Mutex::new(HashSet::new()),
        })
    }

    /// Records (and waits for) one `secret.release` audit record per release not audited before; an answer
    /// carrying secrets is sent only once its releases are on record. The wait is bounded so a stalled
    /// log delays the agent's poll by seconds at most; then the poll fails and the agent asks again.
    async fn audit_releases(
        &self,
        handle: &Handle,
        ctx: &CallContext,
        releases: Vec<Release>,
        until: Instant,
    ) -> Result<(), RpcStatus> {
        let fresh: Vec<Release> = {
            let done = self.released_set();
            releases
                .into_iter()
                .filter(|r| !done.contains(&r.key()))
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        let at = handle.now_ms();
        let writes = fresh.iter().map(|r| {
            let cmd = Command::new(at, agent_actor(ctx), r.audit_op());
            handle.write(cmd)
        });
        let wait = until
            .saturating_duration_since(Instant::now())
            .clamp(MIN_RELEASE_AUDIT_WAIT, MAX_RELEASE_AUDIT_WAIT);
        let results = tokio::time::timeout(wait, futures::future::join_all(writes))
            .await
            .map_err(|_| {
                RpcStatus::unavailable("the release of secrets could not be audited in time; retry")
            })?;
        let mut done = self.released_set();
        for (release, result) in fresh.iter().zip(results) {
            match result {
                Ok(_) => {
                    done.insert(release.key());
                }
                Err(e) => {
                    tracing::warn!(job = %release.job_id, error = %e, "secret release not audited");
                    return Err(RpcStatus::unavailable(
                        "the release of secrets could not be audited; retry",
                    ));
                }
            }
        }
        // Attempts are short-lived next to this set; forget old ones wholesale rather than track them (a
        // forgotten attempt still answered later is audited once more, never zero times).
        if done.len() > MAX_REMEMBERED_RELEASES {
            done.clear();
            done.extend(fresh.iter().map(Release::key));
        }
        Ok(())
    }

    fn released_set(&self) -> std::sync::MutexGuard<'_, HashSet<ReleaseKey>> {
        // A set of plain keys; a panic while holding the lock cannot leave it half-updated.
        self.released.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The liveness table, as the health monitor reads it.
    pub(crate) fn last_heard(&self) -> Arc<dyn LastHeard> {
        self.liveness.clone()
    }

    pub(crate) fn attach(&self, handle: &Handle) {
        // Only the first handle counts; a node attaches exactly once, right after it starts.
        let _ = self.handle.set(handle.downgrade());
    }

    fn handle(&self) -> Result<Handle, RpcStatus> {
        self.handle
            .get()
            .and_then(WeakHandle::upgrade)
            .ok_or_else(|| RpcStatus::unavailable("the coordinator is starting or stopping"))
    }

    /// The handle for an agent call: the caller speaks for its own node (else refused and audited) and this
    /// coordinator leads.
    async fn admit(
        &self,
        ctx: &CallContext,
        region: &str,
        cluster: &str,
        node: &str,
        action: &str,
    ) -> Result<Handle, RpcStatus> {
        let handle = self.handle()?;
        check_identity(&handle, ctx, region, cluster, node, action).await?;
        handle.ensure_leader()?;
        Ok(handle)
    }

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.timings.heartbeat.as_millis()).unwrap_or(u64::MAX)
    }

    /// `AgentRegister`.
    pub(crate) async fn register(&self, ctx: CallContext, body: Bytes) -> Result<Bytes, RpcStatus> {
        let req: pb::NodeRegistration = decode_message(&body)?;
        let handle = self
            .admit(&ctx, &req.region, &req.cluster, &req.node, "node.register")
            .await?;
        let op = registration_op(req, self.approve_new_nodes)?;
        let cmd = Command::new(handle.now_ms(), agent_actor(&ctx), op);
        let node = match handle.write(cmd).await {
            Ok(Outcome::Fleet(FleetOutcome::Node { node })) => node,
            Ok(other) => return Err(RpcStatus::internal(format!("unexpected outcome {other:?}"))),
            Err(WriteError::Domain(e)) => return Err(RpcStatus::invalid_argument(e.to_string())),
            Err(e) => return Err(RpcStatus::unavailable(e.to_string())),
        };
        self.liveness.heard(&node.key, handle.clock().mono_ms());
        if node.admitted() {
            tracing::info!(node = %node.key, lease_epoch = node.lease_epoch, "node registered");
        } else {
            tracing::warn!(
                node = %node.key,
                lease_epoch = node.lease_epoch,
                admission = node.admission.as_str(),
                reason = %node.admission_reason,
                "node registered but not admitted: it receives no new work until an operator approves it"
            );
        }
        Ok(encode_message(&pb::NodeRegistrationAck {
            lease_epoch: node.lease_epoch,
            heartbeat_interval_ms: self.interval_ms(),
            deny_list: Some(handle.read(deny_list)),
        }))
    }

    /// `AgentHeartbeat`.
    pub(crate) async fn heartbeat(
        &self,
        ctx: CallContext,
        body: Bytes,
    ) -> Result<Bytes, RpcStatus> {
        let req: pb::Heartbeat = decode_message(&body)?;
        let handle = self
            .admit(&ctx, &req.region, &req.cluster, &req.node, "node.heartbeat")
            .await?;
        let key = node_key(&req.region, &req.cluster, &req.node);
        let record = handle.read(|s| s.node(&key).map(|n| (n.lease_epoch, n.health)));
        let Some((lease_epoch, health)) = record else {
            return Err(RpcStatus::not_found(format!(
                "node {key} is not registered"
            )));
        };
        if health != NodeHealthState::Ready {
            // Only a registration makes a node Ready again; the agent registers when told NOT_FOUND.
            return Err(RpcStatus::not_found(format!(
                "node {key} is {}; register again",
                health.as_str()
            )));
        }
        self.liveness.heard(&key, handle.clock().mono_ms());
        let mut idle = req.idle_gpus;
        idle.sort();
        idle.dedup();
        idle.truncate(MAX_GPUS);
        let known = handle.read(|s| s.node(&key).map(|n| n.idle_gpus.clone()));
        if known.as_ref().is_some_and(|k| *k != idle) {
            let cmd = Command::new(
                handle.now_ms(),
                agent_actor(&ctx),
                Op::Fleet(FleetOp::SetIdleGpus {
                    node: key.clone(),
                    lease_epoch,
                    idle_gpus: idle,
                }),
            );
            if let Err(e) = handle.write(cmd).await {
                tracing::debug!(node = %key, error = %e, "idle GPUs not recorded");
            }
        }
        let deny_list =
            handle.read(|s| (s.deny_list_version() != req.deny_list_version).then(|| deny_list(s)));
        Ok(encode_message(&pb::HeartbeatAck {
            lease_epoch,
            heartbeat_interval_ms: self.interval_ms(),
            deny_list,
        }))
    }
}

impl Fleet {
    /// `AgentSync`: the node's assignments, answered when their version differs from the agent's or when
    /// it changes within the agent's wait (a long poll).
    pub(crate) async fn sync(&self, ctx: CallContext, body: Bytes) -> Result<Bytes, RpcStatus> {
        let req: pb::SyncRequest = decode_message(&body)?;
        let handle = self
            .admit(&ctx, &req.region, &req.cluster, &req.node, "node.sync")
            .await?;
        let key = node_key(&req.region, &req.cluster, &req.node);
        current_lease(&handle, &key, req.lease_epoch)?;
        let wait = Duration::from_millis(req.wait_ms.min(MAX_SYNC_WAIT_MS));
        let answer_by = ctx
            .deadline
            .checked_sub(SYNC_ANSWER_MARGIN)
            .unwrap_or(ctx.deadline);
        let until = (Instant::now() + wait).min(answer_by);
        loop {
            let applied = handle.log_status().applied_index;
            let keyring = self.keyring.as_deref();
            let (version, assignments, releases) = handle.read(|s| {
                let (version, replicas) = s.node_assignments(&key);
                let mut releases = Vec::new();
                let assignments = replicas
                    .into_iter()
                    .map(|(job, replica)| {
                        let mut a = assignment(s, job, replica);
                        if !job.spec.secrets.is_empty() && !a.cancel {
                            match open_job_secrets(s, job, keyring) {
                                Ok((values, versions)) => {
                                    a.secret_env = values;
                                    releases.push(Release {
                                        project_id: job.project_id.clone(),
                                        job_id: job.id.clone(),
                                        attempt: replica.attempt,
                                        replica: replica.replica,
                                        node: key.clone(),
                                        secrets: versions,
                                    });
                                }
                                Err(message) => a.launch_error = message,
                            }
                        }
                        a
                    })
                    .collect::<Vec<_>>();
                (version, assignments, releases)
            });
            let remaining = until.saturating_duration_since(Instant::now());
            let stopping = ctx.stopping.is_cancelled();
            if version != req.version || remaining.is_zero() || stopping {
                self.audit_releases(&handle, &ctx, releases, until).await?;
                let mut answer = pb::SyncResponse {
                    version,
                    assignments,
                };
                let encoded = encode_message(&answer);
                // The values now live only in the encoded answer; wipe the decoded copies.
                for a in &mut answer.assignments {
                    a.secret_env.values_mut().for_each(Zeroize::zeroize);
                }
                return Ok(encoded);
            }
            // Wait for the next applied entry (or the end of the poll, or this coordinator's shutdown, which
            // answers what there is now), then look again.
            tokio::select! {
                _ = handle.wait_for_log(|l| l.applied_index > applied, remaining) => {}
                () = ctx.stopping.cancelled() => {}
            }
            current_lease(&handle, &key, req.lease_epoch)?;
        }
    }

    /// `AgentReport`: job events, fenced by the node's lease epoch and each job's current attempt.
    pub(crate) async fn report(&self, ctx: CallContext, body: Bytes) -> Result<Bytes, RpcStatus> {
        let req: pb::ReportRequest = decode_message(&body)?;
        let handle = self
            .admit(&ctx, &req.region, &req.cluster, &req.node, "node.report")
            .await?;
        if req.events.len() > MAX_EVENTS_PER_REPORT {
            return Err(RpcStatus::invalid_argument(format!(
                "at most {MAX_EVENTS_PER_REPORT} events per report"
            )));
        }
        let key = node_key(&req.region, &req.cluster, &req.node);
        current_lease(&handle, &key, req.lease_epoch)?;
        let events = req
            .events
            .into_iter()
            .map(event_op)
            .collect::<Result<Vec<_>, _>>()?;
        if events.is_empty() {
            return Ok(encode_message(&pb::ReportResponse { acks: Vec::new() }));
        }
        let cmd = Command::new(
            handle.now_ms(),
            agent_actor(&ctx),
            Op::Jobs(JobOp::ReportJobEvents {
                node: key.clone(),
                lease_epoch: req.lease_epoch,
                events,
            }),
        );
        match handle.write(cmd).await {
            Ok(Outcome::Jobs(JobOutcome::JobEvents { acks })) => {
                Ok(encode_message(&pb::ReportResponse {
                    acks: acks
                        .into_iter()
                        .map(|a| pb::EventAck {
                            accepted: a.accepted,
                            reason: a.reason,
                        })
                        .collect(),
                }))
            }
            Ok(other) => Err(RpcStatus::internal(format!("unexpected outcome {other:?}"))),
            // The epoch moved between the check and the apply: the agent registers again.
            Err(WriteError::Domain(DomainError::FailedPrecondition(m))) => {
                Err(RpcStatus::not_found(format!("{m}; register again")))
            }
            Err(WriteError::Domain(e)) => Err(RpcStatus::invalid_argument(e.to_string())),
            Err(e) => Err(RpcStatus::unavailable(e.to_string())),
        }
    }
}

/// How long an agent's long poll may wait at most.
const MAX_SYNC_WAIT_MS: u64 = 30_000;
/// Bounds on how long an answer carrying secrets waits for their release to be on record.
const MIN_RELEASE_AUDIT_WAIT: Duration = Duration::from_millis(500);
const MAX_RELEASE_AUDIT_WAIT: Duration = Duration::from_secs(3);
/// Audited releases remembered per leader before the set starts over.
const MAX_REMEMBERED_RELEASES: usize = 100_000;
/// A long poll answers this long before the caller's deadline, so the answer arrives in time.
const SYNC_ANSWER_MARGIN: Duration = Duration::from_millis(250);
/// Events in one report.
const MAX_EVENTS_PER_REPORT: usize = 1_000;
/// GPUs, labels and held attempts a registration may name.
const MAX_GPUS: usize = 64;
const MAX_LABELS: usize = 64;
const MAX_HELD: usize = 10_000;

/// Refuses a call made under a lease epoch that is not the node's current one, or for a node that is not
/// Ready: the agent must register again (NOT_FOUND is the agent's cue to do so).
fn current_lease(handle: &Handle, key: &str, lease_epoch: u64) -> Result<(), RpcStatus> {
    let record = handle.read(|s| s.node(key).map(|n| (n.lease_epoch, n.health)));
    match record {
        None => Err(RpcStatus::not_found(format!(
            "node {key} is not registered"
        ))),
        Some((epoch, _)) if epoch != lease_epoch => Err(RpcStatus::not_found(format!(
            "lease epoch {lease_epoch} of node {key} is stale (current {epoch}); register again"
        ))),
        Some((_, health)) if health != NodeHealthState::Ready => Err(RpcStatus::not_found(
            format!("node {key} is {}; register again", health.as_str()),
        )),
        Some(_) => Ok(()),
    }
}

/// The registration command, with the agent's input bounded. What the agent reports is not trusted: the
/// state machine compares it with what was approved for the node and quarantines it when it reports more.
fn registration_op(req: pb::NodeRegistration, admit_new: bool) -> Result<Op, RpcStatus> {
    let resources = req.resources.unwrap_or_default();
    if resources.gpus.len() > MAX_GPUS {
        return Err(RpcStatus::invalid_argument(format!(
            "at most {MAX_GPUS} GPUs per node"
        )));
    }
    if req.labels.len() > MAX_LABELS {
        return Err(RpcStatus::invalid_argument(format!(
            "at most {MAX_LABELS} labels per node"
        )));
    }
    if req.held.len() > MAX_HELD {
        return Err(RpcStatus::invalid_argument(format!(
            "at most {MAX_HELD} held attempts"
        )));
    }
    if !req.rpc_addr.is_empty() && !valid_host_port(&req.rpc_addr) {
        return Err(RpcStatus::invalid_argument(format!(
            "rpc_addr {:?} is not host:port",
            truncated(&req.rpc_addr)
        )));
    }
    let gpus = resources
        .gpus
        .into_iter()
        .map(|g| GpuDevice {
            uuid: g.uuid,
            index: g.index,
            model: g.model,
            memory_mib: g.memory_mib,
            healthy: g.healthy,
        })
        .collect::<Vec<_>>();
    let gpu_count = u32::try_from(gpus.len())
        .unwrap_or(u32::MAX)
        .max(resources.gpu_count.min(MAX_GPUS as u32));
    Ok(Op::Fleet(FleetOp::RegisterNode {
        region: req.region,
        cluster: req.cluster,
        node: req.node,
        cpu_cores: resources.cpu_cores,
        memory_bytes: resources.memory_bytes,
        gpu_count,
        agent_version: req.agent_version,
        gpus,
        labels: req.labels.into_iter().collect(),
        rpc_addr: req.rpc_addr,
        held: req
            .held
            .into_iter()
            .map(|h| HeldAttempt {
                job_id: h.job_id,
                attempt: h.attempt,
                replica: h.replica,
            })
            .collect(),
        os: req.os,
        limit_mode: req.limit_mode,
        admit_new: Some(admit_new),
    }))
}

/// The deny-list as agents receive it (for their own RPC server, which coordinators call).
fn deny_list(state: &RegistryState) -> pb::DenyList {
    let mut list = pb::DenyList {
        version: state.deny_list_version(),
        identities: Vec::new(),
        serials: Vec::new(),
    };
    for entry in state.denied_identities() {
        match entry.kind {
            DenyKind::Identity => list.identities.push(entry.value.clone()),
            DenyKind::Serial => list.serials.push(entry.value.clone()),
        }
    }
    list
}

fn valid_host_port(addr: &str) -> bool {
    addr.len() <= 262
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        })
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Whether the secrets `job` names may still be released to it now: it has a workload identity (a
/// principal that submitted it), that principal still exists, is enabled and holds `use-secrets` in the
/// job's project, and every secret still exists and is still bound to it. The error says why not (it never
/// names a value).
fn may_release(state: &RegistryState, job: &JobRecord) -> Result<(), String> {
    let principal = job.principal_id.as_deref().ok_or_else(|| {
        "the job has no workload identity (it was submitted before secrets were bound to principals); \
         submit it again"
            .to_owned()
    })?;
    crate::authz::authorize(
        state,
        principal,
        Some(&job.project_id),
        crate::authz::Action::UseSecrets,
    )
    .map_err(|_| format!("principal {principal} no longer holds use-secrets in the project"))?;
    let scope = state.project_scope(&job.project_id);
    for name in job.spec.secrets.values() {
        let secret = scope
            .secret(name)
            .ok_or_else(|| format!("secret {name} no longer exists"))?;
        if !secret_binds_workload(secret, principal, &job.id, &job.spec.name) {
            return Err(format!(
                "secret {name} is no longer bound to the job's principal {principal}"
            ));
        }
    }
    Ok(())
}

/// The values of the secrets `job` names, by environment variable, opened with the master keyring, after
/// [`may_release`] agreed, with the (name, version) of each; otherwise the message says why the attempt
/// cannot start (it never names a value).
fn open_job_secrets(
    state: &RegistryState,
    job: &JobRecord,
    keyring: Option<&MasterKeyring>,
) -> Result<OpenedSecrets, String> {
    may_release(state, job)?;
    let keyring = keyring.ok_or("this coordinator has no master keyring to open secrets")?;
    let scope = state.project_scope(&job.project_id);
    let wrapped = scope
        .data_key()
        .ok_or_else(|| format!("project {} has no data key", job.project_id))?;
    let data_key = crypto::unwrap_data_key(keyring, wrapped)
        .map_err(|e| format!("opening the project's data key: {e}"))?;
    let mut values = HashMap::new();
    let mut versions = Vec::new();
    for (var, name) in &job.spec.secrets {
        let secret = scope
            .secret(name)
            .ok_or_else(|| format!("secret {name} no longer exists"))?;
        let latest = secret
            .versions
            .last()
            .ok_or_else(|| format!("secret {name} has no version"))?;
        let aad = crypto::SecretAad {
            project_id: &job.project_id,
            name,
            version: latest.version,
        };
        let plain = crypto::decrypt_secret(&data_key, &latest.sealed, aad)
            .map_err(|e| format!("secret {name} could not be opened: {e}"))?;
        let value = std::str::from_utf8(&plain)
            .map(str::to_owned)
            .map_err(|_| {
                format!("secret {name} is not UTF-8 text, so it cannot be an env value")
            })?;
        values.insert(var.clone(), value);
        versions.push((name.clone(), latest.version));
    }
    Ok((values, versions))
}

/// The wire form of one replica of a job's current attempt, as its node should run it, with its project's
/// network policy (`none` or `egress`).
fn assignment(state: &RegistryState, job: &JobRecord, attempt: &Attempt) -> pb::JobAssignment {
    let spec = &job.spec;
    // Every replica's host, or none at all when one of them is unknown (an agent without an address).
    let replica_hosts: Vec<String> = job
        .current_replicas()
        .iter()
        .map(|r| {
            state
                .node(&r.node)
                .map(|n| addr_host(&n.rpc_addr).to_owned())
                .unwrap_or_default()
        })
        .collect();
    let replica_hosts = if replica_hosts.iter().any(String::is_empty) {
        Vec::new()
    } else {
        replica_hosts
    };
    pb::JobAssignment {
        job_id: job.id.clone(),
        attempt: attempt.attempt,
        replica: attempt.replica,
        replicas: spec.replicas,
        replica_hosts,
        project_id: job.project_id.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.clone().into_iter().collect(),
        working_dir: spec.working_dir.clone().unwrap_or_default(),
        cpu_millis: attempt.resources.cpu_millis,
        memory_bytes: attempt.resources.memory_bytes,
        gpu_uuids: attempt.gpu_uuids.clone(),
        timeout_ms: spec.timeout_secs.map_or(0, |s| s.saturating_mul(1000)),
        cancel: job.cancel_requested,
        cancel_grace_ms: spec.cancel_grace_secs.saturating_mul(1000),
        secret_env: HashMap::new(),
        launch_error: String::new(),
        network: state
            .project_policy(&job.project_id)
            .network
            .as_str()
            .to_owned(),
        secrets_in_env: spec.secrets_env,
    }
}

/// The host part of a `host:port` address (`[::1]:7270` → `::1`); empty for an empty address.
fn addr_host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One reported event as the state machine takes it; an event without a kind is refused.
fn event_op(event: pb::JobEvent) -> Result<JobEventOp, RpcStatus> {
    use pb::job_event::Kind;
    let kind = match event.kind {
        Some(Kind::Started(_)) => JobEventKind::Started,
        Some(Kind::Exited(e)) => JobEventKind::Exited {
            exit_code: e.exit_code,
            signal: e.signal,
            cancelled: e.cancelled,
            timed_out: e.timed_out,
            cpu_time_ms: e.cpu_time_ms,
            max_rss_bytes: e.max_rss_bytes,
            oom_killed: e.oom_killed,
        },
        Some(Kind::LaunchFailed(message)) => JobEventKind::LaunchFailed {
            message: message.chars().take(1024).collect(),
        },
        Some(Kind::Vanished(reason)) => JobEventKind::Vanished {
            reason: reason.chars().take(1024).collect(),
        },
        None => {
            return Err(RpcStatus::invalid_argument(format!(
                "event for job {} has no kind",
                truncated(&event.job_id)
            )))
        }
    };
    Ok(JobEventOp {
        job_id: event.job_id,
        attempt: event.attempt,
        replica: event.replica,
        at_ms: event.at_ms,
        kind,
    })
}

/// Refuses (and audits) an agent speaking for a node other than its own.
async fn check_identity(
    handle: &Handle,
    ctx: &CallContext,
    region: &str,
    cluster: &str,
    node: &str,
    action: &str,
) -> Result<(), RpcStatus> {
    let Err(status) = ctx.ensure_speaks_for_node(region, cluster, node) else {
        return Ok(());
    };
    let target: String = node_key(region, cluster, node).chars().take(256).collect();
    tracing::warn!(caller = %ctx.peer.uri(), %target, "agent refused: not its own node");
    let record = Command::new(
        handle.now_ms(),
        agent_actor(ctx),
        Op::Audit(AuditOp::RecordAudit {
            action: action.to_owned(),
            project: None,
            target,
            outcome: AuditOutcome::Denied,
            detail: status.message.clone(),
        }),
    );
    if let Err(e) = handle.write(record).await {
        tracing::warn!(error = %e, "could not record a refused agent call");
    }
    Err(status)
}

fn agent_actor(ctx: &CallContext) -> Actor {
    Actor {
        principal_id: None,
        name: ctx.peer.uri(),
        key_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TenancyOp;

    #[test]
    fn a_release_is_recorded_with_job_attempt_node_and_versions() {
        let release = Release {
            project_id: "prj_a".into(),
            job_id: "job_1".into(),
            attempt: 2,
            replica: 1,
            node: "eu/eu1/n1".into(),
            secrets: vec![("wandb".into(), 3), ("s3".into(), 1)],
        };
        assert_eq!(release.key(), ("job_1".to_owned(), 2, 1));
        match release.audit_op() {
            Op::Audit(AuditOp::RecordAudit {
                action,
                project,
                target,
                outcome,
                detail,
            }) => {
                assert_eq!(action, "secret.release");
                assert_eq!(project.as_deref(), Some("prj_a"));
                assert_eq!(target, "job_1");
                assert_eq!(outcome, AuditOutcome::Success);
                assert_eq!(
                    detail,
                    "attempt=2 replica=1 node=eu/eu1/n1 secrets=wandb@v3,s3@v1"
                );
            }
            other => panic!("not an audit record: {other:?}"),
        }
    }

    #[test]
    fn replica_hosts_are_the_host_part_of_agent_addresses() {
        assert_eq!(addr_host("127.0.0.1:7270"), "127.0.0.1");
        assert_eq!(addr_host("[::1]:7270"), "::1");
        assert_eq!(addr_host("gpu-17.eu.example:7270"), "gpu-17.eu.example");
        assert_eq!(addr_host(""), "");
    }

    #[test]
    fn an_assignment_carries_its_projects_network_policy() {
        use crate::state::{Actor, Command, JobSpec, Op, PolicyUpdate, WrappedKey};
        let mut s = RegistryState::default();
        let mut apply = |op: Op| {
            let index = s.applied_index + 1;
            let out = s.apply(index, &Command::new(index * 1_000, Actor::system(), op));
            assert!(out.is_ok(), "{out:?}");
        };
        for id in ["prj_open", "prj_closed"] {
            apply(Op::Tenancy(TenancyOp::CreateProject {
                id: id.into(),
                name: id.replace('_', "-"),
                description: String::new(),
                data_key: WrappedKey {
                    master_key_id: "mk1".into(),
                    nonce_b64: "AAAA".into(),
                    ciphertext_b64: id.into(),
                },
                policy: None,
            }));
            apply(Op::Jobs(JobOp::SubmitJob {
                principal_id: None,
                id: format!("job_{id}"),
                project_id: id.into(),
                spec: JobSpec::new("true"),
            }));
        }
        apply(Op::Tenancy(TenancyOp::SetProjectPolicy {
            project_id: "prj_closed".into(),
            update: PolicyUpdate {
                network: Some(crate::state::NetworkPolicy::None),
                ..Default::default()
            },
        }));
        let network = |project: &str| {
            let job = s.job(project, &format!("job_{project}")).expect("job");
            let attempt = crate::state::Attempt {
                attempt: 1,
                replica: 0,
                node: "eu/eu1/n1".into(),
                region: "eu".into(),
                cluster: "eu1".into(),
                gpu_uuids: Vec::new(),
                resources: Default::default(),
                lease_epoch: 1,
                scheduled_at: 0,
                started_at: None,
                ended_at: None,
                outcome: None,
                exit_code: None,
                signal: None,
                cpu_time_ms: None,
                max_rss_bytes: None,
                detail: String::new(),
            };
            assignment(&s, job, &attempt).network
        };
        assert_eq!(network("prj_open"), "egress");
        assert_eq!(network("prj_closed"), "none");
    }
}
