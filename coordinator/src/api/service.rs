//! The admin API's operations, in one place for REST and gRPC: validation, project-scoped reads, and the
//! preparation of commands (time stamp, ids, tokens, ciphertexts) before they are proposed through
//! [`Handle::write`].
//!
//! Everything non-deterministic about a mutation happens here, never in `apply`. Reads of a project's
//! objects go through `RegistryState::project_scope`, so another project's object answers exactly like a
//! missing one, by the same code path (`hidden`), and the attempt is counted for the audit log as `denied`
//! (coalesced, see `denials`). Must never return a token
//! (except once, from key creation), a key hash, a secret value, a ciphertext or a data key.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::authz::{self, Action, Caller, Role};
use crate::crypto::{self, CryptoError, MasterKeyring, SecretAad};
use crate::node::{ClusterStatus, Handle, MemberNode, MemberStatus, NodeId};
use crate::state::{
    self, validate_id, ApiKeyView, AuditOp, AuditRecord, Command, FleetOp, FleetOutcome,
    KeyPrincipal, Op, Outcome, Page, PageRequest, PolicyUpdate, Principal, PrincipalKind,
    ProjectPolicy, ProjectView, RoleBinding, Scope, SecretOp, SecretOutcome, SecretView, TenancyOp,
    TenancyOutcome, DEFAULT_PAGE_SIZE,
};

use super::auth::RequestScope;
use super::denials::{Denial, DenialKind, DenialLimits, Denials, Refused};
use super::error::{ErrorKind, ServiceError};
use super::metrics::ApiMetrics;

/// Largest secret value accepted (the registry caps sealed values at about 64 KiB).
const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Attempts at a write that lost a race with a concurrent one (secret versions, data-key rotation).
const RACE_ATTEMPTS: usize = 3;

// ---- requests ---------------------------------------------------------------------------------------------

/// A query-string integer; an empty value (`page_size=`) counts as absent.
pub(super) fn query_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let raw: Option<String> = Option::deserialize(d)?;
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("must be a non-negative integer, not {t:?}"))
        }),
    }
}

/// `page_size` and `page_token` of a listing.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct PageParams {
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) page_size: Option<u64>,
    #[serde(default)]
    pub(crate) page_token: Option<String>,
}

impl PageParams {
    pub(super) fn request(&self) -> Result<PageRequest, ServiceError> {
        Ok(PageRequest::new(
            self.page_size,
            self.page_token.as_deref(),
        )?)
    }
}

/// `POST /v1/projects`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProjectRequest {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

/// `PUT /v1/projects/{project}/policy`: the fields given replace the project's, the others stay.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[cfg_attr(test, derive(Serialize))]
#[schema(as = ProjectPolicyUpdate)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetPolicyRequest {
    /// Most jobs pending at once; one more submission is refused (429 quota_exceeded).
    #[serde(default)]
    pub(crate) max_pending_jobs: Option<u64>,
    /// Most CPU (thousandths of a core) reserved by scheduled and running jobs together; a job that would
    /// exceed it waits.
    #[serde(default)]
    pub(crate) max_running_cpu_millis: Option<u64>,
    /// Most memory reserved by scheduled and running jobs together.
    #[serde(default)]
    pub(crate) max_running_memory_bytes: Option<u64>,
    /// Most GPUs held by scheduled and running jobs together.
    #[serde(default)]
    pub(crate) max_running_gpus: Option<u64>,
    /// Most bytes of job specs (their text fields plus 256 each) held by unfinished jobs together.
    #[serde(default)]
    pub(crate) max_spec_bytes: Option<u64>,
    /// `none` or `egress`.
    #[serde(default)]
    #[schema(value_type = Option<state::NetworkPolicy>)]
    pub(crate) network: Option<String>,
    /// Other projects' preemptible jobs below this priority (and below the preempting job's own) may be
    /// evicted for this project's jobs; 0: never.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000)]
    pub(crate) preemption_ceiling: Option<i64>,
}

impl SetPolicyRequest {
    /// The update it asks for, naming the first field that is out of range.
    pub(crate) fn update(&self) -> Result<PolicyUpdate, ServiceError> {
        let network = match self.network.as_deref().map(str::trim) {
            None => None,
            Some(n) => Some(state::NetworkPolicy::parse(n).ok_or_else(|| {
                ServiceError::invalid("network", format!("{n:?} is not none or egress"))
            })?),
        };
        let preemption_ceiling = match self.preemption_ceiling {
            None => None,
            Some(c) => Some(
                i32::try_from(c)
                    .ok()
                    .filter(|c| (0..=state::MAX_PREEMPTION_CEILING).contains(c))
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            "preemption_ceiling",
                            format!(
                                "must be 0-{} (0: never preempt other projects)",
                                state::MAX_PREEMPTION_CEILING
                            ),
                        )
                    })?,
            ),
        };
        let update = PolicyUpdate {
            max_pending_jobs: self.max_pending_jobs,
            max_running_cpu_millis: self.max_running_cpu_millis,
            max_running_memory_bytes: self.max_running_memory_bytes,
            max_running_gpus: self.max_running_gpus,
            max_spec_bytes: self.max_spec_bytes,
            network,
            preemption_ceiling,
        };
        if update.is_empty() {
            return Err(ServiceError::invalid(
                "policy",
                "name at least one field to change",
            ));
        }
        // The rule `apply` checks, before anything is proposed.
        ProjectPolicy::BUILTIN.updated(&update).validate()?;
        Ok(update)
    }
}

/// `POST /v1/principals`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateServiceAccountRequest {
    pub(crate) name: String,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKeyRequest {
    pub(crate) name: String,
    /// Role bound to the key's principal in the project; required for a new service account.
    #[serde(default)]
    #[schema(value_type = Option<Role>)]
    pub(crate) role: Option<String>,
    /// Lifetime in seconds; without it (and without no_expiry) the coordinator's `[keys] default_ttl` (90
    /// days).
    #[serde(default)]
    pub(crate) expires_in_seconds: Option<u64>,
    /// A key that never expires; only platform-admins may ask for one.
    #[serde(default)]
    pub(crate) no_expiry: bool,
    /// An existing principal of the project; none creates a service account named after the key.
    #[serde(default)]
    pub(crate) principal_id: Option<String>,
    /// Narrow the key to these roles (at least one): it grants only what they allow of the principal's
    /// rights.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Role>>)]
    pub(crate) roles: Option<Vec<String>>,
    /// The key acts only in the request's project.
    #[serde(default)]
    pub(crate) project_scoped: bool,
}

/// `POST /v1/role-bindings`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[cfg_attr(test, derive(Serialize))]
#[schema(as = CreateRoleBindingRequest)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBindingRequest {
    pub(crate) principal_id: String,
    #[schema(value_type = Role)]
    pub(crate) role: String,
    /// Bind platform-wide instead of in the request's project.
    #[serde(default)]
    pub(crate) platform: bool,
}

/// `POST /v1/secrets`.
#[derive(Clone, Deserialize, ToSchema)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub(crate) struct PutSecretRequest {
    pub(crate) name: String,
    #[schema(write_only)]
    pub(crate) value: String,
    /// Who may use the secret: `principal:ID` (jobs that principal or service account submits) or
    /// `principal:ID/job:PATTERN` (only those whose name matches; `*` is any run of characters). Absent: keep
    /// the current bindings.
    #[serde(default)]
    pub(crate) bindings: Option<Vec<String>>,
}

impl Drop for PutSecretRequest {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

impl std::fmt::Debug for PutSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutSecretRequest")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn default_true() -> bool {
    true
}

/// `POST /v1/cluster/members`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[cfg_attr(test, derive(Serialize))]
#[schema(as = AddClusterMemberRequest)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMemberRequest {
    #[schema(value_type = u64)]
    pub(crate) id: NodeId,
    pub(crate) name: String,
    pub(crate) raft_addr: String,
    pub(crate) admin_addr: String,
    /// Promote the new member to a voter once it caught up; false keeps it a learner.
    #[serde(default = "default_true")]
    #[schema(default = true)]
    pub(crate) voter: bool,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) after_seq: Option<u64>,
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) page_size: Option<u64>,
    #[serde(default)]
    pub(crate) page_token: Option<String>,
}

// ---- responses --------------------------------------------------------------------------------------------

/// One page of a listing; `next_page_token` is empty on the last page.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListPage<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_page_token: String,
}

impl<T> From<Page<T>> for ListPage<T> {
    fn from(p: Page<T>) -> Self {
        ListPage {
            items: p.items,
            next_page_token: p.next_page_token.unwrap_or_default(),
        }
    }
}

/// A role binding as callers see it; `scope` is `platform` or `project:<id>`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = RoleBinding)]
pub(crate) struct RoleBindingView {
    pub(crate) id: String,
    pub(crate) principal_id: String,
    pub(crate) role: Role,
    pub(crate) scope: String,
    pub(crate) project_id: Option<String>,
    pub(crate) created_at: u64,
}

impl From<&RoleBinding> for RoleBindingView {
    fn from(b: &RoleBinding) -> Self {
        RoleBindingView {
            id: b.id.clone(),
            principal_id: b.principal_id.clone(),
            role: b.role,
            scope: b.scope.to_string(),
            project_id: b.scope.project_id().cloned(),
            created_at: b.created_at,
        }
    }
}

/// A secret as callers see it, with its name as `id`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Secret)]
pub(crate) struct SecretResource {
    pub(crate) id: String,
    #[serde(flatten)]
    #[schema(inline)]
    pub(crate) secret: SecretView,
}

impl From<SecretView> for SecretResource {
    fn from(secret: SecretView) -> Self {
        SecretResource {
            id: secret.name.clone(),
            secret,
        }
    }
}

/// A new key: the token (shown only here), the key, its principal and the binding made for it.
#[derive(Clone, Serialize, ToSchema)]
pub(crate) struct CreatedKey {
    pub(crate) id: String,
    /// The bearer token; shown only once.
    pub(crate) token: String,
    pub(crate) key: ApiKeyView,
    pub(crate) principal: Principal,
    pub(crate) binding: Option<RoleBindingView>,
}

impl Drop for CreatedKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The caller: its principal, the key it called with, the project it acts in and its role bindings there.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WhoAmI {
    pub(crate) principal: Principal,
    pub(crate) key: ApiKeyView,
    /// The project this request acts in.
    pub(crate) project: ProjectView,
    pub(crate) bindings: Vec<RoleBindingView>,
}

/// One page of the audit log, by sequence number.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct AuditList {
    pub(crate) items: Vec<AuditRecord>,
    /// The `seq` to continue after, as text; empty at the end.
    pub(crate) next_page_token: String,
    pub(crate) next_after_seq: Option<u64>,
    /// Set when the caller asked for records below the checkpoint: the records through this seq are
    /// archived (on the coordinators' disks) and the page starts after them.
    pub(crate) archived_through_seq: Option<u64>,
}

/// What `POST /v1/secrets:rewrap` did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct RewrapResult {
    pub(crate) projects: u64,
    pub(crate) master_key_id: String,
    /// The data keys were replaced (not only re-wrapped) and every secret version re-encrypted.
    pub(crate) new_data_keys: bool,
    /// Secret versions re-encrypted (0 for a plain re-wrap).
    pub(crate) secret_versions: u64,
}

/// Query of `POST /v1/secrets:rewrap`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RewrapQuery {
    /// Replace the data keys and re-encrypt every secret version, not only re-wrap the keys.
    #[serde(default, deserialize_with = "query_bool")]
    pub(crate) new_data_keys: bool,
}

/// A query-string boolean: `true`/`false`/`1`/`0`; empty or absent is false.
fn query_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let raw: Option<String> = Option::deserialize(d)?;
    match raw.as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(t) => Err(serde::de::Error::custom(format!(
            "must be true or false, not {t:?}"
        ))),
    }
}

/// A registered node as operators see it: resources, GPUs, labels, the allocated GPUs that sit idle,
/// health and lease epoch.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Node)]
pub(crate) struct NodeView {
    pub(crate) key: String,
    pub(crate) region: String,
    pub(crate) cluster: String,
    pub(crate) node: String,
    pub(crate) cpu_cores: u32,
    pub(crate) memory_bytes: u64,
    pub(crate) gpu_count: u32,
    pub(crate) gpus: Vec<crate::scheduler::GpuDevice>,
    pub(crate) labels: std::collections::BTreeMap<String, String>,
    /// UUIDs of GPUs assigned to a job whose utilization stayed near zero.
    pub(crate) idle_gpus: Vec<String>,
    pub(crate) os: String,
    /// How the agent limits jobs' resources (cgroup v2, cgroup v1 or rlimits).
    pub(crate) limit_mode: String,
    /// Where coordinators reach the agent.
    pub(crate) rpc_addr: String,
    pub(crate) agent_version: String,
    pub(crate) lease_epoch: u64,
    pub(crate) health: crate::state::NodeHealthState,
    /// Set by an operator: no new work lands on the node; what runs there keeps running.
    pub(crate) draining: bool,
    pub(crate) registered_at: u64,
    pub(crate) health_changed_at: u64,
    /// `approved`, `pending_approval` or `quarantined`: only an approved node receives new work.
    pub(crate) admission: crate::state::NodeAdmission,
    /// Why the node is pending or quarantined.
    pub(crate) admission_reason: String,
    /// What was approved; a registration that reports more is quarantined.
    pub(crate) approved: Option<crate::state::ApprovedResources>,
    /// The node's agent identity is on the deny-list: it is refused by every coordinator.
    pub(crate) denied: bool,
}

impl From<&crate::state::NodeRecord> for NodeView {
    fn from(n: &crate::state::NodeRecord) -> Self {
        NodeView {
            key: n.key.clone(),
            region: n.region.clone(),
            cluster: n.cluster.clone(),
            node: n.node.clone(),
            cpu_cores: n.cpu_cores,
            memory_bytes: n.memory_bytes,
            gpu_count: n.gpu_count,
            gpus: n.gpus.clone(),
            labels: n.labels.clone(),
            idle_gpus: n.idle_gpus.clone(),
            os: n.os.clone(),
            limit_mode: n.limit_mode.clone(),
            rpc_addr: n.rpc_addr.clone(),
            agent_version: n.agent_version.clone(),
            lease_epoch: n.lease_epoch,
            health: n.health,
            draining: n.draining,
            registered_at: n.registered_at,
            health_changed_at: n.health_changed_at,
            admission: n.admission,
            admission_reason: n.admission_reason.clone(),
            approved: n.approved.clone(),
            denied: false,
        }
    }
}

/// Whether the process is alive (`ok`) or ready (`ready`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Health {
    pub(crate) status: &'static str,
}

// ---- validation -------------------------------------------------------------------------------------------

fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn validate_project_name(name: &str) -> Result<(), ServiceError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(lower_alnum)
        && name.len() <= 63
        && chars.all(|c| lower_alnum(c) || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "name",
            "must match [a-z0-9][a-z0-9-]{0,62}",
        ))
    }
}

fn validate_display_name(field: &str, name: &str) -> Result<(), ServiceError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            field,
            "must match [A-Za-z0-9][A-Za-z0-9._@+-]{0,127}",
        ))
    }
}

/// The same rule the state machine applies, checked before proposing so bad input never reaches the log.
fn validate_secret_name(name: &str) -> Result<(), ServiceError> {
    Ok(crate::state::validate_secret_name(name)?)
}

/// The same rule the state machine applies, checked before proposing.
fn validate_description(description: &str) -> Result<(), ServiceError> {
    Ok(crate::state::validate_description(description)?)
}

/// `host:port` with a numeric port.
fn validate_addr(field: &str, addr: &str) -> Result<(), ServiceError> {
    let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && host.len() <= 253 && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(field, "must be host:port"))
    }
}

fn parse_role(role: &str) -> Result<Role, ServiceError> {
    role.parse::<Role>()
        .map_err(|e| ServiceError::invalid("role", e))
}

/// A key's limits from a request: roles parsed, sorted and de-duplicated, never an empty list.
fn key_limits(
    roles: Option<&[String]>,
    project_scoped: bool,
) -> Result<state::KeyLimits, ServiceError> {
    let roles = match roles {
        None => None,
        Some([]) => {
            return Err(ServiceError::invalid(
                "roles",
                "must name at least one role (leave it out for all of the principal's roles)",
            ))
        }
        Some(names) => {
            let mut parsed = names
                .iter()
                .map(|n| {
                    n.parse::<Role>()
                        .map_err(|e| ServiceError::invalid("roles", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            parsed.sort_unstable();
            parsed.dedup();
            Some(parsed)
        }
    };
    Ok(state::KeyLimits {
        roles,
        project_scoped,
    })
}

/// A role bound in a project: anything but platform-admin (the state machine's rule, checked first so bad
/// input answers 400 before any permission question).
fn project_role(role: Role) -> Result<Role, ServiceError> {
    if role == Role::PlatformAdmin {
        return Err(ServiceError::invalid(
            "role",
            "platform-admin can only be bound at platform scope",
        ));
    }
    Ok(role)
}

fn crypto_error(e: CryptoError) -> ServiceError {
    match e {
        CryptoError::UnknownMasterKey(id) => ServiceError::new(
            ErrorKind::FailedPrecondition,
            format!("master key {id} is not in this coordinator's keyring"),
        ),
        CryptoError::Malformed(_) | CryptoError::Decrypt => {
            ServiceError::internal("a stored data key could not be opened with the keyring")
        }
    }
}

// ---- the service ------------------------------------------------------------------------------------------

struct Inner {
    handle: Handle,
    keyring: Arc<MasterKeyring>,
    metrics: ApiMetrics,
    denials: Denials,
    /// The policy new projects get (the coordinator's `[quotas]`).
    project_defaults: ProjectPolicy,
    /// Lifetime of a key created without an explicit one, in milliseconds.
    default_key_ttl_ms: u64,
}

/// The admin API's operations over one coordinator; cheap to clone.
#[derive(Clone)]
pub(crate) struct AdminService {
    inner: Arc<Inner>,
}

impl AdminService {
    pub(crate) fn new(
        handle: Handle,
        keyring: Arc<MasterKeyring>,
        denial_limits: DenialLimits,
        project_defaults: ProjectPolicy,
        default_key_ttl: std::time::Duration,
    ) -> Self {
        AdminService {
            inner: Arc::new(Inner {
                handle,
                keyring,
                metrics: ApiMetrics::default(),
                denials: Denials::new(denial_limits),
                project_defaults,
                default_key_ttl_ms: u64::try_from(default_key_ttl.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// The rate limit and coalescing buffer of refused requests.
    pub(crate) fn denials(&self) -> &Denials {
        &self.inner.denials
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    pub(crate) fn metrics(&self) -> &ApiMetrics {
        &self.inner.metrics
    }

    fn command(&self, scope: &RequestScope, op: Op) -> Command {
        Command::new(self.handle().now_ms(), scope.caller.actor(), op)
    }

    pub(super) async fn write(
        &self,
        scope: &RequestScope,
        op: Op,
    ) -> Result<Outcome, ServiceError> {
        Ok(self.inner.handle.write(self.command(scope, op)).await?)
    }

    /// Waits until the local replica reflects every write acknowledged before this call.
    pub(super) async fn consistent(&self) -> Result<(), ServiceError> {
        Ok(self.inner.handle.linearizable_read().await?)
    }

    /// Counts a forbidden attempt (403) for the audit log, charged to the caller's key. Buffered in memory
    /// and written coalesced (see `denials`); never a replicated write of its own.
    pub(crate) async fn record_denied(
        &self,
        caller: &Caller,
        operation: &str,
        project: Option<String>,
        target: &str,
        detail: &str,
    ) {
        let denial = Denial {
            who: Refused::Principal {
                id: caller.principal_id.clone(),
                name: caller.principal_name.clone(),
            },
            operation,
            kind: DenialKind::Forbidden,
            project,
            target,
            reason: detail,
            limited: false,
        };
        self.inner
            .denials
            .charge(Some(&caller.key_id), None, Instant::now());
        self.inner.denials.record(denial, self.handle().now_ms());
    }

    /// The 403 for something the caller may not do (a grant beyond its rights, a secret without the use
    /// right), audited.
    pub(super) async fn refuse(
        &self,
        scope: &RequestScope,
        project: Option<String>,
        target: &str,
        why: &str,
    ) -> ServiceError {
        self.record_denied(&scope.caller, scope.operation, project, target, why)
            .await;
        ServiceError::forbidden(why)
    }

    /// Finds principal `id` for a key or binding made in the request's project: the project's own
    /// principals, those bound in it when `bound_counts`, and any principal (including the platform's) for
    /// a caller holding `right` platform-wide. Anything else answers 404 like a missing principal, audited
    /// when it exists.
    async fn visible_principal(
        &self,
        scope: &RequestScope,
        id: &str,
        right: Action,
        bound_counts: bool,
    ) -> Result<(), ServiceError> {
        let caller = &scope.caller;
        let found = self.inner.handle.read(|s| {
            let p = s.principal(id)?;
            let bound_here = bound_counts
                && s.bindings_of(id)
                    .iter()
                    .any(|b| b.scope.project_id() == Some(&scope.project_id));
            let platform = authz::authorize_caller(s, caller, None, right).is_ok();
            let mine = p.is_owned_by(&scope.project_id);
            // Keys live in the project of the request: they can be made for its own principals or,
            // by a platform-admin, for a platform principal.
            let keyable = mine || (p.project_id.is_none() && platform);
            let visible = if bound_counts {
                mine || bound_here || platform
            } else {
                keyable
            };
            Some((visible, p.project_id.clone()))
        });
        match found {
            Some((true, _)) => Ok(()),
            // Missing, another project's or the platform's: one answer, one path (see `hidden`).
            None => Err(self.hidden(scope, "principal", id, None).await),
            Some((false, owner)) => Err(self.hidden(scope, "principal", id, owner).await),
        }
    }

    /// The 404 for an object the caller cannot see, whether it is missing (`owner: None`) or belongs to
    /// another project: one code path for both, so neither the answer nor the work done tells them apart.
    /// The attempt is charged to the caller's key and address and counted for the audit log; a caller
    /// refused too often gets 429 instead.
    pub(super) async fn hidden(
        &self,
        scope: &RequestScope,
        kind: &str,
        id: &str,
        owner: Option<String>,
    ) -> ServiceError {
        let denials = &self.inner.denials;
        let now = Instant::now();
        let key = Some(scope.caller.key_id.as_str());
        let limited = denials.check(key, scope.source, now);
        let denial = Denial {
            who: Refused::Principal {
                id: scope.caller.principal_id.clone(),
                name: scope.caller.principal_name.clone(),
            },
            operation: scope.operation,
            kind: DenialKind::NotFound,
            project: owner,
            target: id,
            reason: kind,
            limited: limited.is_err(),
        };
        denials.record(denial, self.handle().now_ms());
        match limited {
            Ok(()) => {
                denials.charge(key, scope.source, now);
                ServiceError::not_found(kind, id)
            }
            Err(retry) => ServiceError::rate_limited(retry.as_secs_f64().ceil() as u64),
        }
    }

    /// Whether the caller holds `action` platform-wide.
    pub(super) fn platform_allows(&self, caller: &Caller, action: Action) -> bool {
        self.inner
            .handle
            .read(|s| authz::authorize_caller(s, caller, None, action).is_ok())
    }

    // ---- health and cluster ----

    pub(crate) fn is_ready(&self) -> bool {
        self.inner.handle.is_ready()
    }

    pub(crate) fn cluster_status(&self) -> ClusterOverview {
        ClusterOverview {
            status: self.inner.handle.status(),
            sites: self.inner.handle.read(fleet_sites),
        }
    }

    pub(crate) fn list_members(&self) -> ListPage<MemberStatus> {
        ListPage {
            items: self.inner.handle.status().members,
            next_page_token: String::new(),
        }
    }

    /// The registered nodes, in key order (platform-level: no project scoping).
    pub(crate) async fn list_nodes(
        &self,
        page: &PageParams,
    ) -> Result<ListPage<NodeView>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        let page = self.inner.handle.read(|s| {
            s.node_page(&req).map(|n| NodeView {
                denied: s.node_denied(&n.key),
                ..NodeView::from(&n)
            })
        });
        Ok(page.into())
    }

    /// Drains (`draining`) or undrains the node `region/cluster/node`. A malformed name answers 400 naming
    /// the field, an unknown node 404.
    pub(crate) async fn set_node_draining(
        &self,
        scope: &RequestScope,
        region: &str,
        cluster: &str,
        node: &str,
        draining: bool,
    ) -> Result<NodeView, ServiceError> {
        for (field, value) in [("region", region), ("cluster", cluster), ("node", node)] {
            validate_id(field, value)?;
        }
        let op = Op::Fleet(FleetOp::SetNodeDraining {
            key: crate::state::node_key(region, cluster, node),
            draining,
        });
        match self.write(scope, op).await? {
            Outcome::Fleet(FleetOutcome::Node { node }) => Ok(self.node_view(&node)),
            other => Err(unexpected(other)),
        }
    }

    /// A node as callers see it, with whether its agent identity is denied (from the local replica).
    pub(crate) fn node_view(&self, node: &crate::state::NodeRecord) -> NodeView {
        NodeView {
            denied: self.inner.handle.read(|s| s.node_denied(&node.key)),
            ..NodeView::from(node)
        }
    }

    /// The fleet's gauges for `/metrics`, from the local replica.
    pub(crate) fn fleet_gauges(&self) -> super::metrics::FleetGauges {
        self.inner.handle.read(super::metrics::FleetGauges::of)
    }

    pub(crate) async fn add_member(
        &self,
        scope: &RequestScope,
        req: AddMemberRequest,
    ) -> Result<MemberStatus, ServiceError> {
        if req.id == 0 {
            return Err(ServiceError::invalid("id", "must be a positive integer"));
        }
        if req.name.is_empty() || req.name.len() > 63 {
            return Err(ServiceError::invalid("name", "must be 1-63 characters"));
        }
        // Peers admit a coordinator while its certificate's name is a member's: the name must be one a
        // coordinator certificate can carry.
        certs::Identity::coordinator(self.inner.handle.trust_domain(), &req.name)
            .map_err(|e| ServiceError::invalid("name", e.to_string()))?;
        validate_addr("raft_addr", &req.raft_addr)?;
        validate_addr("admin_addr", &req.admin_addr)?;
        let node = MemberNode {
            name: req.name.clone(),
            raft_addr: req.raft_addr.clone(),
            admin_addr: req.admin_addr.clone(),
        };
        let result = self.inner.handle.add_member(req.id, node, req.voter).await;
        let detail = format!(
            "{} {} ({}) at {}",
            if req.voter { "voter" } else { "learner" },
            req.id,
            req.name,
            req.raft_addr
        );
        self.record_membership(scope, &req.id.to_string(), &detail, &result)
            .await;
        result?;
        Ok(MemberStatus {
            id: req.id,
            name: req.name,
            raft_addr: req.raft_addr,
            admin_addr: req.admin_addr,
            voter: req.voter,
        })
    }

    pub(crate) async fn remove_member(
        &self,
        scope: &RequestScope,
        id: NodeId,
    ) -> Result<(), ServiceError> {
        let Some(member) = self
            .inner
            .handle
            .status()
            .members
            .into_iter()
            .find(|m| m.id == id)
        else {
            return Err(ServiceError::not_found("member", &id.to_string()));
        };
        let result = self.inner.handle.remove_member(id).await;
        let detail = format!(
            "{} {id} ({}) at {}",
            if member.voter { "voter" } else { "learner" },
            member.name,
            member.raft_addr
        );
        self.record_membership(scope, &id.to_string(), &detail, &result)
            .await;
        Ok(result?)
    }

    /// Audits a membership change (which Raft carries out itself, outside the registry's commands) once
    /// its outcome is known: `cluster.member.add` or `.remove` by the caller, succeeded or refused.
    async fn record_membership<T>(
        &self,
        scope: &RequestScope,
        target: &str,
        detail: &str,
        result: &Result<T, crate::node::MembershipError>,
    ) {
        let (outcome, detail) = match result {
            Ok(_) => (crate::state::AuditOutcome::Success, detail.to_owned()),
            Err(e) => (
                crate::state::AuditOutcome::Refused,
                format!("{detail}: {e}"),
            ),
        };
        let op = Op::Audit(AuditOp::RecordAudit {
            action: scope.operation.to_owned(),
            project: None,
            target: super::denials::clip(target, 256),
            outcome,
            detail: super::denials::clip(&detail, 1024),
        });
        let cmd = Command::new(self.handle().now_ms(), scope.caller.actor(), op);
        if let Err(e) = self.inner.handle.write(cmd).await {
            tracing::warn!(error = %e, target, "could not audit a membership change");
        }
    }

    // ---- projects ----

    pub(crate) async fn create_project(
        &self,
        scope: &RequestScope,
        req: CreateProjectRequest,
    ) -> Result<ProjectView, ServiceError> {
        validate_project_name(&req.name)?;
        let description = req.description.unwrap_or_default();
        validate_description(&description)?;
        let mut rng = self.inner.handle.rng();
        let data_key = crypto::wrap_data_key(
            &self.inner.keyring,
            &crypto::new_data_key(&mut rng),
            &mut rng,
        );
        let op = Op::Tenancy(TenancyOp::CreateProject {
            id: crypto::random_id("prj", &mut rng),
            name: req.name,
            description,
            data_key,
            // The built-in policy travels as `None` (what `apply` reads as built-in): the same state, and a
            // log entry ~200 bytes smaller on every replica.
            policy: (self.inner.project_defaults != ProjectPolicy::BUILTIN)
                .then_some(self.inner.project_defaults),
        });
        match self.write(scope, op).await? {
            Outcome::Tenancy(TenancyOutcome::Project { project }) => Ok(project),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn list_projects(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<ProjectView>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        let caller = &scope.caller;
        let page = self.inner.handle.read(|s| {
            let visible = s
                .projects_visible_to(&caller.principal_id)
                .into_iter()
                // A project-scoped key sees its own project only.
                .filter(|p| !caller.limits.project_scoped || p.id == caller.project_id);
            Page::from_sorted(visible.map(|p| (p.id.clone(), p.view())), &req)
        });
        Ok(page.into())
    }

    /// A project by id or name, if the caller may read it (404 otherwise, audited when it exists).
    pub(crate) async fn get_project(
        &self,
        scope: &RequestScope,
        project: &str,
    ) -> Result<ProjectView, ServiceError> {
        self.consistent().await?;
        // A missing project goes through the same lookups and the same `authorize` (which scans the
        // caller's bindings before finding it missing) as a hidden one.
        let (owner, verdict) = self.inner.handle.read(|s| {
            let project_ref = s.project_by_id_or_name(project);
            let owner = project_ref.map(|p| p.id.clone());
            let id = owner.as_deref().unwrap_or(project);
            let verdict = authz::authorize_caller(s, &scope.caller, Some(id), Action::ReadProject)
                .map(|()| project_ref.map(|p| p.view()));
            (owner, verdict)
        });
        match (owner, verdict) {
            (Some(_), Ok(Some(view))) => Ok(view),
            (Some(id), Err(authz::Denied::Forbidden)) => {
                self.record_denied(
                    &scope.caller,
                    scope.operation,
                    Some(id.clone()),
                    &id,
                    "roles do not grant read-project",
                )
                .await;
                Err(ServiceError::forbidden("this operation needs read-project"))
            }
            (owner, _) => Err(self.hidden(scope, "project", project, owner).await),
        }
    }

    /// Changes a project's policy (platform-admin only, by the route's policy); answers the project.
    pub(crate) async fn set_project_policy(
        &self,
        scope: &RequestScope,
        project: &str,
        req: SetPolicyRequest,
    ) -> Result<ProjectView, ServiceError> {
        let update = req.update()?;
        self.consistent().await?;
        let id = self
            .inner
            .handle
            .read(|s| s.project_by_id_or_name(project).map(|p| p.id.clone()));
        let id = id.ok_or_else(|| ServiceError::not_found("project", project))?;
        let op = Op::Tenancy(TenancyOp::SetProjectPolicy {
            project_id: id,
            update,
        });
        match self.write(scope, op).await {
            Ok(Outcome::Tenancy(TenancyOutcome::Project { project })) => Ok(project),
            Ok(other) => Err(unexpected(other)),
            Err(e) if e.kind == ErrorKind::NotFound => {
                Err(ServiceError::not_found("project", project))
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn delete_project(
        &self,
        scope: &RequestScope,
        project: &str,
    ) -> Result<(), ServiceError> {
        self.consistent().await?;
        let id = self
            .inner
            .handle
            .read(|s| s.project_by_id_or_name(project).map(|p| p.id.clone()));
        let id = id.ok_or_else(|| ServiceError::not_found("project", project))?;
        match self
            .write(scope, Op::Tenancy(TenancyOp::DeleteProject { id }))
            .await
        {
            Ok(_) => Ok(()),
            // The domain names the id; callers asked by name or id, so answer in their words.
            Err(e) if e.kind == ErrorKind::NotFound => {
                Err(ServiceError::not_found("project", project))
            }
            Err(e) => Err(e),
        }
    }

    // ---- principals ----

    pub(crate) async fn list_principals(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<Principal>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        Ok(self
            .inner
            .handle
            .read(|s| s.project_scope(&scope.project_id).principals(&req))
            .into())
    }

    pub(crate) async fn create_service_account(
        &self,
        scope: &RequestScope,
        req: CreateServiceAccountRequest,
    ) -> Result<Principal, ServiceError> {
        validate_display_name("name", &req.name)?;
        let op = Op::Tenancy(TenancyOp::CreatePrincipal {
            id: crypto::random_id("sa", &mut self.inner.handle.rng()),
            kind: PrincipalKind::ServiceAccount,
            name: req.name,
            project_id: scope.project_id.clone(),
        });
        match self.write(scope, op).await? {
            Outcome::Tenancy(TenancyOutcome::Principal { principal }) => Ok(principal),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn whoami(&self, scope: &RequestScope) -> Result<WhoAmI, ServiceError> {
        self.consistent().await?;
        let found = self.inner.handle.read(|s| {
            let principal = s.principal(&scope.caller.principal_id)?.clone();
            let key = s.key_by_id(&scope.caller.key_id)?.view();
            let project = s.project(&scope.project_id)?.view();
            let bindings = s
                .bindings_of(&principal.id)
                .into_iter()
                .map(RoleBindingView::from)
                .collect();
            Some(WhoAmI {
                principal,
                key,
                project,
                bindings,
            })
        });
        // The key was found a moment ago during admission; it can only be gone if deleted in between.
        found.ok_or_else(ServiceError::unauthenticated)
    }

    // ---- keys ----

    pub(crate) async fn create_key(
        &self,
        scope: &RequestScope,
        req: CreateKeyRequest,
    ) -> Result<CreatedKey, ServiceError> {
        validate_display_name("name", &req.name)?;
        let role = req
            .role
            .as_deref()
            .map(|r| parse_role(r).and_then(project_role))
            .transpose()?;
        let limits = key_limits(req.roles.as_deref(), req.project_scoped)?;
        let at = self.handle().now_ms();
        let expires_at = match (req.expires_in_seconds, req.no_expiry) {
            (Some(_), true) => {
                return Err(ServiceError::invalid(
                    "no_expiry",
                    "give expires_in_seconds or no_expiry, not both",
                ))
            }
            (None, true) => None,
            (Some(0), false) => {
                return Err(ServiceError::invalid(
                    "expires_in_seconds",
                    "must be positive",
                ))
            }
            (Some(secs), false) => Some(
                secs.checked_mul(1000)
                    .and_then(|ms| at.checked_add(ms))
                    .ok_or_else(|| ServiceError::invalid("expires_in_seconds", "is too large"))?,
            ),
            // Keys expire by default.
            (None, false) => Some(at.saturating_add(self.inner.default_key_ttl_ms)),
        };
        let mut rng = self.inner.handle.rng();
        let principal = match req.principal_id.as_deref().filter(|p| !p.is_empty()) {
            Some(id) => {
                self.consistent().await?;
                self.visible_principal(scope, id, Action::ManageKeys, false)
                    .await?;
                KeyPrincipal::Existing {
                    principal_id: id.to_owned(),
                }
            }
            None => {
                if role.is_none() {
                    return Err(ServiceError::invalid(
                        "role",
                        "is required when the key gets a new service account",
                    ));
                }
                KeyPrincipal::NewServiceAccount {
                    principal_id: crypto::random_id("sa", &mut rng),
                    name: req.name.clone(),
                }
            }
        };
        // The grant rules on this replica; the state machine checks them again in the log's order.
        let verdict = self.inner.handle.read(|s| {
            authz::check_key(
                s,
                &scope.caller,
                &scope.project_id,
                &principal,
                role,
                expires_at,
            )
        });
        if let Err(why) = verdict {
            return Err(self
                .refuse(scope, Some(scope.project_id.clone()), "key", &why)
                .await);
        }
        let token = crypto::generate_token(&mut rng);
        let op = Op::Tenancy(TenancyOp::CreateKey {
            key_id: token.key_id.clone(),
            name: req.name,
            project_id: scope.project_id.clone(),
            hash: token.hash.clone(),
            last4: token.last4.clone(),
            expires_at,
            principal,
            role,
            limits,
        });
        let cmd = Command::new(at, scope.caller.actor(), op);
        match self.inner.handle.write(cmd).await? {
            Outcome::Tenancy(TenancyOutcome::KeyCreated {
                key,
                principal,
                binding,
            }) => Ok(CreatedKey {
                id: key.id.clone(),
                token: token.token.to_string(),
                key,
                principal,
                binding: binding.as_ref().map(RoleBindingView::from),
            }),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn list_keys(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<ApiKeyView>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        Ok(self
            .inner
            .handle
            .read(|s| s.project_scope(&scope.project_id).keys(&req))
            .into())
    }

    /// The key if it is the project's; the owner project of a key hidden elsewhere.
    fn find_key(&self, scope: &RequestScope, id: &str) -> Result<ApiKeyView, Option<String>> {
        self.inner
            .handle
            .read(|s| match s.project_scope(&scope.project_id).key(id) {
                Some(k) => Ok(k.view()),
                None => Err(s.key_by_id(id).map(|k| k.project_id.clone())),
            })
    }

    pub(crate) async fn get_key(
        &self,
        scope: &RequestScope,
        id: &str,
    ) -> Result<ApiKeyView, ServiceError> {
        self.consistent().await?;
        match self.find_key(scope, id) {
            Ok(view) => Ok(view),
            Err(owner) => Err(self.hidden(scope, "key", id, owner).await),
        }
    }

    pub(crate) async fn revoke_key(
        &self,
        scope: &RequestScope,
        id: &str,
    ) -> Result<ApiKeyView, ServiceError> {
        self.consistent().await?;
        let key = match self.find_key(scope, id) {
            Ok(key) => key,
            Err(owner) => return Err(self.hidden(scope, "key", id, owner).await),
        };
        // Revoking one's own key is always allowed; anyone else's needs the right to manage its principal
        // wherever that principal is bound (a project-admin cannot take the platform-admin's key away).
        if key.id != scope.caller.key_id {
            let verdict = self.inner.handle.read(|s| {
                authz::may_manage_principal(s, &scope.caller, &key.principal_id, Action::ManageKeys)
            });
            if let Err(why) = verdict {
                return Err(self
                    .refuse(scope, Some(key.project_id.clone()), id, &why)
                    .await);
            }
        }
        match self
            .write(
                scope,
                Op::Tenancy(TenancyOp::RevokeKey {
                    key_id: id.to_owned(),
                }),
            )
            .await?
        {
            Outcome::Tenancy(TenancyOutcome::Key { key }) => Ok(key),
            other => Err(unexpected(other)),
        }
    }

    // ---- role bindings ----

    pub(crate) async fn create_binding(
        &self,
        scope: &RequestScope,
        req: CreateBindingRequest,
    ) -> Result<RoleBindingView, ServiceError> {
        let role = parse_role(&req.role)?;
        if !req.platform {
            project_role(role)?;
        }
        let platform_admin = self.platform_allows(&scope.caller, Action::ManageBindings);
        if req.platform && !platform_admin {
            self.record_denied(
                &scope.caller,
                scope.operation,
                None,
                &req.principal_id,
                "platform binding needs platform-admin",
            )
            .await;
            return Err(ServiceError::forbidden(
                "platform-wide bindings need platform-admin",
            ));
        }
        self.consistent().await?;
        self.visible_principal(scope, &req.principal_id, Action::ManageBindings, true)
            .await?;
        let binding_scope = if req.platform {
            Scope::Platform
        } else {
            Scope::Project(scope.project_id.clone())
        };
        // The grant rules on this replica; the state machine checks them again in the log's order.
        let verdict = self
            .inner
            .handle
            .read(|s| authz::check_bind(s, &scope.caller, &req.principal_id, &binding_scope, role));
        if let Err(why) = verdict {
            let project = binding_scope.project_id().cloned();
            return Err(self.refuse(scope, project, &req.principal_id, &why).await);
        }
        let op = Op::Tenancy(TenancyOp::BindRole {
            principal_id: req.principal_id,
            scope: binding_scope,
            role,
        });
        match self.write(scope, op).await? {
            Outcome::Tenancy(TenancyOutcome::Binding { binding }) => {
                Ok(RoleBindingView::from(&binding))
            }
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn list_bindings(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<RoleBindingView>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        let page = self
            .inner
            .handle
            .read(|s| s.project_scope(&scope.project_id).bindings(&req));
        Ok(page.map(|b| RoleBindingView::from(&b)).into())
    }

    pub(crate) async fn delete_binding(
        &self,
        scope: &RequestScope,
        id: &str,
    ) -> Result<(), ServiceError> {
        self.consistent().await?;
        let found = self.inner.handle.read(|s| {
            if s.project_scope(&scope.project_id).binding(id).is_some() {
                return Ok(());
            }
            match s.binding(id) {
                Some(b) => Err(Some(b.scope.clone())),
                None => Err(None),
            }
        });
        match found {
            Ok(()) => {}
            Err(Some(Scope::Platform))
                if self.platform_allows(&scope.caller, Action::ManageBindings) => {}
            Err(Some(Scope::Platform)) => {
                return Err(self.hidden(scope, "role binding", id, None).await)
            }
            Err(Some(Scope::Project(owner))) => {
                return Err(self.hidden(scope, "role binding", id, Some(owner)).await)
            }
            Err(None) => return Err(self.hidden(scope, "role binding", id, None).await),
        }
        self.write(
            scope,
            Op::Tenancy(TenancyOp::UnbindRole {
                binding_id: id.to_owned(),
            }),
        )
        .await
        .map(|_| ())
    }

    // ---- audit ----

    pub(crate) async fn list_audit(
        &self,
        scope: &RequestScope,
        query: &AuditQuery,
    ) -> Result<AuditList, ServiceError> {
        let from_token = match query.page_token.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(t.parse::<u64>().map_err(|_| {
                ServiceError::invalid("page_token", "not a token from a previous page")
            })?),
        };
        let after = from_token.or(query.after_seq).unwrap_or(0);
        let limit = match query.page_size {
            None | Some(0) => DEFAULT_PAGE_SIZE,
            Some(n) => usize::try_from(n)
                .unwrap_or(state::MAX_PAGE_SIZE)
                .min(state::MAX_PAGE_SIZE),
        };
        let platform = self.platform_allows(&scope.caller, Action::ReadAudit);
        self.consistent().await?;
        let page = self.inner.handle.read(|s| {
            if platform {
                s.audit_page(after, limit, None)
            } else {
                s.project_scope(&scope.project_id).audit(after, limit)
            }
        });
        Ok(AuditList {
            items: page.records,
            next_page_token: page
                .next_after_seq
                .map(|n| n.to_string())
                .unwrap_or_default(),
            next_after_seq: page.next_after_seq,
            archived_through_seq: page.archived_through_seq,
        })
    }

    // ---- secrets ----

    pub(crate) async fn put_secret(
        &self,
        scope: &RequestScope,
        req: PutSecretRequest,
    ) -> Result<SecretResource, ServiceError> {
        validate_secret_name(&req.name)?;
        if req.value.is_empty() {
            return Err(ServiceError::invalid("value", "must not be empty"));
        }
        if req.value.len() > MAX_SECRET_BYTES {
            return Err(ServiceError::invalid(
                "value",
                format!("at most {MAX_SECRET_BYTES} bytes"),
            ));
        }
        if let Some(bindings) = &req.bindings {
            self.consistent().await?;
            self.check_secret_bindings(&scope.project_id, bindings)?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.consistent().await?;
            let (wrapped, latest) = self.inner.handle.read(|s| {
                let scoped = s.project_scope(&scope.project_id);
                (
                    scoped.data_key().cloned(),
                    scoped.secret(&req.name).map_or(0, |x| x.latest_version()),
                )
            });
            let wrapped =
                wrapped.ok_or_else(|| ServiceError::not_found("project", &scope.project_id))?;
            let data_key =
                crypto::unwrap_data_key(&self.inner.keyring, &wrapped).map_err(crypto_error)?;
            let version = latest + 1;
            let aad = SecretAad {
                project_id: &scope.project_id,
                name: &req.name,
                version,
            };
            let sealed = crypto::encrypt_secret(
                &data_key,
                req.value.as_bytes(),
                aad,
                &mut self.inner.handle.rng(),
            );
            let op = Op::Secrets(SecretOp::PutSecret {
                project_id: scope.project_id.clone(),
                name: req.name.clone(),
                version,
                sealed,
                bindings: req.bindings.clone(),
            });
            match self.write(scope, op).await {
                Ok(Outcome::Secrets(SecretOutcome::Secret { secret })) => return Ok(secret.into()),
                Ok(other) => return Err(unexpected(other)),
                // Another put took this version number first: seal again for the next one.
                Err(e) if e.kind == ErrorKind::FailedPrecondition && attempt < RACE_ATTEMPTS => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Bindings written now name who may use the secret ([`state::BINDING_SYNTAX`]), and each principal
    /// they name acts in the project: owned by it, bound in it, or bound on the platform. A principal of
    /// another project is refused like a missing one.
    fn check_secret_bindings(
        &self,
        project_id: &str,
        bindings: &[String],
    ) -> Result<(), ServiceError> {
        let mut principals = Vec::new();
        for b in bindings {
            match state::validate_workload_binding(b)? {
                state::SecretBinding::Workload { principal_id, .. } => {
                    principals.push(principal_id)
                }
                state::SecretBinding::Legacy => {
                    return Err(ServiceError::invalid(
                        "bindings",
                        format!("{b:?} is not {}", state::BINDING_SYNTAX),
                    ))
                }
            }
        }
        let unknown = self.inner.handle.read(|s| {
            principals.into_iter().find(|id| {
                let Some(p) = s.principal(id) else {
                    return true;
                };
                let acts_here = s.bindings_of(id).iter().any(|b| match &b.scope {
                    Scope::Platform => true,
                    Scope::Project(p) => p == project_id,
                });
                !(p.is_owned_by(project_id) || acts_here)
            })
        });
        match unknown {
            Some(id) => Err(ServiceError::invalid(
                "bindings",
                format!("principal {id} is not a principal of this project"),
            )),
            None => Ok(()),
        }
    }

    pub(crate) async fn list_secrets(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<SecretResource>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        let page = self
            .inner
            .handle
            .read(|s| s.project_scope(&scope.project_id).secrets(&req));
        Ok(page.map(SecretResource::from).into())
    }

    pub(crate) async fn get_secret(
        &self,
        scope: &RequestScope,
        name: &str,
    ) -> Result<SecretResource, ServiceError> {
        self.consistent().await?;
        self.inner
            .handle
            .read(|s| {
                s.project_scope(&scope.project_id)
                    .secret(name)
                    .map(|x| x.view().into())
            })
            .ok_or_else(|| ServiceError::not_found("secret", name))
    }

    pub(crate) async fn delete_secret(
        &self,
        scope: &RequestScope,
        name: &str,
    ) -> Result<(), ServiceError> {
        let op = Op::Secrets(SecretOp::DeleteSecret {
            project_id: scope.project_id.clone(),
            name: name.to_owned(),
        });
        self.write(scope, op).await.map(|_| ())
    }

    /// Master-key rotation: re-wraps every project's data key with the current master key, or with
    /// `new_data_keys` replaces the data keys themselves and re-encrypts every secret version under them,
    /// in one replicated command either way.
    pub(crate) async fn rewrap_secrets(
        &self,
        scope: &RequestScope,
        new_data_keys: bool,
    ) -> Result<RewrapResult, ServiceError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.consistent().await?;
            let op = if new_data_keys {
                let (keys, sealed) = self
                    .inner
                    .handle
                    .read(|s| (s.data_keys(), s.sealed_versions()));
                let (keys, secrets) = crypto::reseal_all(
                    &self.inner.keyring,
                    &keys,
                    &sealed,
                    &mut self.inner.handle.rng(),
                )
                .map_err(crypto_error)?;
                Op::Secrets(SecretOp::ReplaceDataKeys { keys, secrets })
            } else {
                let keys = self.inner.handle.read(|s| s.data_keys());
                let keys =
                    crypto::rewrap_all(&self.inner.keyring, &keys, &mut self.inner.handle.rng())
                        .map_err(crypto_error)?;
                Op::Secrets(SecretOp::RewrapDataKeys { keys })
            };
            let master_key_id = self.inner.keyring.current_id().to_owned();
            match self.write(scope, op).await {
                Ok(Outcome::Secrets(SecretOutcome::Rewrapped { projects })) => {
                    return Ok(RewrapResult {
                        projects,
                        master_key_id,
                        new_data_keys: false,
                        secret_versions: 0,
                    })
                }
                Ok(Outcome::Secrets(SecretOutcome::DataKeysReplaced {
                    projects,
                    secret_versions,
                })) => {
                    return Ok(RewrapResult {
                        projects,
                        master_key_id,
                        new_data_keys: true,
                        secret_versions,
                    })
                }
                Ok(other) => return Err(unexpected(other)),
                // A project or secret was created or deleted in between: the set must be complete, so read
                // it again.
                Err(e) if e.kind == ErrorKind::FailedPrecondition && attempt < RACE_ATTEMPTS => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// An outcome that does not belong to the command that produced it: a bug between API and state.
pub(crate) fn unexpected(outcome: Outcome) -> ServiceError {
    tracing::error!(?outcome, "a command produced an outcome of another kind");
    ServiceError::internal("the registry answered with an unexpected outcome")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        for good in ["a", "vision", "a-1", "0abc", &"a".repeat(63)] {
            assert!(validate_project_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a b", "é", &"a".repeat(64)] {
            let e = validate_project_name(bad).expect_err(bad);
            assert_eq!(e.message, "name: must match [a-z0-9][a-z0-9-]{0,62}");
        }
    }

    #[test]
    fn addresses() {
        assert!(validate_addr("raft_addr", "10.0.0.4:7170").is_ok());
        assert!(validate_addr("raft_addr", "c1.example:7170").is_ok());
        assert!(validate_addr("raft_addr", "[::1]:7170").is_ok());
        for bad in ["", "host", ":7170", "host:0", "host:99999", "host:x"] {
            assert!(validate_addr("raft_addr", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_requests_do_not_debug_print_values() {
        let req = PutSecretRequest {
            name: "s3-key".into(),
            value: "hunter2".into(),
            bindings: None,
        };
        let text = format!("{req:?}");
        assert!(
            text.contains("s3-key") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn policy_requests_name_the_offending_field() {
        let field = |req: SetPolicyRequest| req.update().expect_err("refused").message;
        assert!(field(SetPolicyRequest::default()).starts_with("policy: "));
        let bad_network = SetPolicyRequest {
            network: Some("host".into()),
            ..Default::default()
        };
        assert!(field(bad_network).starts_with("network: "));
        for ceiling in [-1, 1001, i64::MAX] {
            let bad = SetPolicyRequest {
                preemption_ceiling: Some(ceiling),
                ..Default::default()
            };
            assert!(field(bad).starts_with("preemption_ceiling: "), "{ceiling}");
        }
        let too_big = SetPolicyRequest {
            max_spec_bytes: Some(u64::MAX),
            ..Default::default()
        };
        assert!(field(too_big).starts_with("max_spec_bytes: "));
        let ok = SetPolicyRequest {
            max_pending_jobs: Some(3),
            network: Some("none".into()),
            preemption_ceiling: Some(10),
            ..Default::default()
        }
        .update()
        .expect("valid");
        assert_eq!(ok.max_pending_jobs, Some(3));
        assert_eq!(ok.network, Some(state::NetworkPolicy::None));
        assert_eq!(ok.preemption_ceiling, Some(10));
        assert_eq!(ok.max_running_gpus, None);
    }

    #[test]
    fn key_limits_are_sorted_unique_and_never_empty() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let limits =
            key_limits(Some(&names(&["editor", "viewer", "editor"])), true).expect("valid");
        assert_eq!(limits.roles, Some(vec![Role::Viewer, Role::Editor]));
        assert!(limits.project_scoped);
        assert_eq!(
            key_limits(None, false).expect("valid"),
            state::KeyLimits::default()
        );
        let e = key_limits(Some(&[]), false).expect_err("empty");
        assert!(e.message.starts_with("roles: "), "{}", e.message);
        let e = key_limits(Some(&names(&["root"])), false).expect_err("unknown");
        assert!(e.message.starts_with("roles: "), "{}", e.message);
    }

    #[test]
    fn roles_parse_or_name_the_field() {
        assert_eq!(parse_role("editor").ok(), Some(Role::Editor));
        let e = parse_role("root").expect_err("unknown role");
        assert!(e.message.starts_with("role: "), "{}", e.message);
    }
}

/// `GET /v1/cluster/status`: the coordinator group and the fleet per region and cluster.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = ClusterStatus)]
pub(crate) struct ClusterOverview {
    #[serde(flatten)]
    #[schema(inline)]
    pub(crate) status: ClusterStatus,
    pub(crate) sites: Vec<FleetSite>,
}

/// The nodes of one region/cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct FleetSite {
    pub(crate) region: String,
    pub(crate) cluster: String,
    pub(crate) nodes: u32,
    pub(crate) ready: u32,
    pub(crate) unreachable: u32,
    pub(crate) lost: u32,
    /// Nodes an operator drained (whatever their health): no new work lands there.
    pub(crate) draining: u32,
    pub(crate) cpu_cores: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) gpus: u32,
    pub(crate) gpu_models: std::collections::BTreeMap<String, u32>,
    pub(crate) idle_gpus: u32,
    pub(crate) active_jobs: u32,
}

/// The fleet summed per (region, cluster), in name order.
pub(crate) fn fleet_sites(state: &crate::state::RegistryState) -> Vec<FleetSite> {
    use crate::state::NodeHealthState;
    let mut sites: std::collections::BTreeMap<(String, String), FleetSite> = Default::default();
    for node in state.nodes() {
        let site = sites
            .entry((node.region.clone(), node.cluster.clone()))
            .or_insert_with(|| FleetSite {
                region: node.region.clone(),
                cluster: node.cluster.clone(),
                ..FleetSite::default()
            });
        site.nodes += 1;
        match node.health {
            NodeHealthState::Ready => site.ready += 1,
            NodeHealthState::Unreachable => site.unreachable += 1,
            NodeHealthState::Lost => site.lost += 1,
        }
        site.draining += u32::from(node.draining);
        site.cpu_cores += u64::from(node.cpu_cores);
        site.memory_bytes = site.memory_bytes.saturating_add(node.memory_bytes);
        for gpu in &node.gpus {
            site.gpus += 1;
            *site.gpu_models.entry(gpu.model.clone()).or_default() += 1;
        }
        site.idle_gpus += u32::try_from(node.idle_gpus.len()).unwrap_or(u32::MAX);
        let (_, jobs) = state.node_assignments(&node.key);
        site.active_jobs += u32::try_from(jobs.len()).unwrap_or(u32::MAX);
    }
    sites.into_values().collect()
}
