//! The registry's snapshot form: one flat JSON document, field for field what every earlier build wrote.
//!
//! The in-memory [`RegistryState`] groups what a domain owns (the jobs and their indexes live in a
//! [`JobTable`], for one); the wire form does not follow, because a snapshot travels between replicas of
//! different builds during a rolling upgrade and golden snapshots must load and serialize byte for byte.
//! Tenancy is its own [`Tenancy`], the fleet its own [`Fleet`], the deny-list its own [`DenyList`], the
//! usage of purged jobs its own [`UsageArchive`], the audit log its own [`AuditLog`] (its checkpoint
//! written after every older field, only once there is one). [`Wire`] borrows the state for writing;
//! [`Owned`] reads it back. Indexes a domain derives from its
//! records are written (older builds read them) but never read: loading rebuilds them from the records,
//! so a snapshot from before an index existed, or one whose index an older build let drift, loads whole.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tenancy::TenancyParts;
use super::usage::UsageSums;
use super::{
    ApiKey, AuditCheckpoint, AuditLog, AuditRecord, ClusterPolicy, DeniedIdentity, DenyList, Fleet,
    JobRecord, JobTable, NodeRecord, Principal, Project, RegistryState, RememberedRequest,
    RequestLog, RoleBinding, Secret, SecretStore, Tenancy, UsageArchive,
};

/// The state as a snapshot writes it. Field order is the document's order: never reorder.
#[derive(Serialize)]
struct Wire<'a> {
    applied_index: u64,
    default_project_id: &'a Option<String>,
    projects: &'a BTreeMap<String, Project>,
    project_ids_by_name: &'a BTreeMap<String, String>,
    principals: &'a BTreeMap<String, Principal>,
    keys: &'a BTreeMap<String, ApiKey>,
    bindings: &'a BTreeMap<String, RoleBinding>,
    secrets: &'a BTreeMap<String, BTreeMap<String, Secret>>,
    audit: &'a [AuditRecord],
    requests: &'a BTreeMap<String, RememberedRequest>,
    request_order: &'a BTreeMap<u64, String>,
    nodes: &'a BTreeMap<String, NodeRecord>,
    jobs: &'a BTreeMap<String, JobRecord>,
    pending_job_ids: &'a BTreeSet<String>,
    active_job_ids_by_node: &'a BTreeMap<String, BTreeSet<String>>,
    job_ids_by_project: &'a BTreeMap<String, BTreeSet<String>>,
    finished_jobs: &'a BTreeSet<(u64, String)>,
    usage_archive: &'a BTreeMap<String, BTreeMap<u64, UsageSums>>,
    denied_identities: &'a BTreeMap<String, DeniedIdentity>,
    deny_list_version: u64,
    denied_nodes: &'a BTreeSet<String>,
    cluster_policies: &'a BTreeMap<String, ClusterPolicy>,
    unfinished_job_ids_by_project: &'a BTreeMap<String, BTreeSet<String>>,
    /// Left out while 0, so a snapshot from before apply versions serializes unchanged.
    #[serde(skip_serializing_if = "is_zero_u32")]
    apply_version: u32,
    #[serde(skip_serializing_if = "is_zero_u64")]
    last_command_ms: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    machine_counters: &'a BTreeMap<String, u64>,
    /// Left out until the audit log was first archived (apply version 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_checkpoint: Option<&'a AuditCheckpoint>,
}

/// The state as a snapshot is read. Fields added after the first release default when absent; derived
/// indexes are not read at all (see the module doc).
#[derive(Deserialize)]
struct Owned {
    applied_index: u64,
    default_project_id: Option<String>,
    projects: BTreeMap<String, Project>,
    principals: BTreeMap<String, Principal>,
    keys: BTreeMap<String, ApiKey>,
    bindings: BTreeMap<String, RoleBinding>,
    secrets: BTreeMap<String, BTreeMap<String, Secret>>,
    audit: Vec<AuditRecord>,
    #[serde(default)]
    requests: BTreeMap<String, RememberedRequest>,
    #[serde(default)]
    request_order: BTreeMap<u64, String>,
    #[serde(default)]
    nodes: BTreeMap<String, NodeRecord>,
    #[serde(default)]
    jobs: BTreeMap<String, JobRecord>,
    #[serde(default)]
    usage_archive: BTreeMap<String, BTreeMap<u64, UsageSums>>,
    #[serde(default)]
    denied_identities: BTreeMap<String, DeniedIdentity>,
    #[serde(default)]
    deny_list_version: u64,
    #[serde(default)]
    cluster_policies: BTreeMap<String, ClusterPolicy>,
    #[serde(default)]
    apply_version: u32,
    #[serde(default)]
    last_command_ms: u64,
    #[serde(default)]
    machine_counters: BTreeMap<String, u64>,
    #[serde(default)]
    audit_checkpoint: Option<AuditCheckpoint>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Serialize for RegistryState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let indexes = self.jobs.wire_indexes();
        let (denied_identities, deny_list_version, denied_nodes) = self.identities.wire();
        let (nodes, cluster_policies) = self.fleet.parts();
        let (requests, request_order) = self.requests.parts();
        let (default_project_id, projects, project_ids_by_name, principals, keys, bindings) =
            self.tenancy.parts();
        Wire {
            applied_index: self.applied_index,
            default_project_id,
            projects,
            project_ids_by_name,
            principals,
            keys,
            bindings,
            secrets: self.secrets.parts(),
            audit: self.audit.records(),
            requests,
            request_order,
            nodes,
            jobs: self.jobs.records(),
            pending_job_ids: indexes.pending_job_ids,
            active_job_ids_by_node: indexes.active_job_ids_by_node,
            job_ids_by_project: indexes.job_ids_by_project,
            finished_jobs: indexes.finished_jobs,
            usage_archive: self.usage.hours(),
            denied_identities,
            deny_list_version,
            denied_nodes,
            cluster_policies,
            unfinished_job_ids_by_project: indexes.unfinished_job_ids_by_project,
            apply_version: self.apply_version,
            last_command_ms: self.last_command_ms,
            machine_counters: &self.machine_counters,
            audit_checkpoint: self.audit.checkpoint(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RegistryState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let o = Owned::deserialize(deserializer)?;
        Ok(RegistryState {
            applied_index: o.applied_index,
            tenancy: Tenancy::from_parts(TenancyParts {
                default_project_id: o.default_project_id,
                projects: o.projects,
                principals: o.principals,
                keys: o.keys,
                bindings: o.bindings,
            }),
            secrets: SecretStore::from_parts(o.secrets),
            audit: AuditLog::from_wire(o.audit, o.audit_checkpoint),
            requests: RequestLog::from_parts(o.requests, o.request_order),
            fleet: Fleet::from_parts(o.nodes, o.cluster_policies),
            jobs: JobTable::from_records(o.jobs),
            usage: UsageArchive::from_hours(o.usage_archive),
            identities: DenyList::from_entries(o.denied_identities, o.deny_list_version),
            apply_version: o.apply_version,
            last_command_ms: o.last_command_ms,
            machine_counters: o.machine_counters,
        })
    }
}
