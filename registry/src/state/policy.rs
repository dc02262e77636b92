//! Per-project policy, set only by a platform-admin: quotas (pending jobs, running CPU, memory and GPUs,
//! bytes of job specs held), the network policy carried to agents, and the preemption ceiling that bounds
//! how this project's jobs may evict other projects' jobs. Also the accounting of what a project holds
//! (its [`ProjectLoad`]) and the quota checks `apply` runs on submission and placement.
//!
//! Owns the policy's validation and the rules "a submission never overshoots the pending or spec-bytes
//! quota" and "a placement never overshoots the running quota", checked inside `apply` so concurrent
//! submissions cannot race past them. Like the rest of the state it must never read a clock, draw
//! randomness or do I/O, and it must never decide placements (the dispatcher does; this only re-checks).

use serde::{Deserialize, Serialize};

use super::jobs::{JobRecord, JobSpec, JobState};
use super::{DomainError, RegistryState};
use crate::scheduler::Resources;

/// The highest `preemption_ceiling` (the top of the priority range).
pub const MAX_PREEMPTION_CEILING: i32 = 1000;
/// Upper bound of every count and size in a policy, so sums never overflow.
const MAX_QUOTA: u64 = 1 << 53;

/// Which network a project's jobs get on their node: `none`, loopback only; `egress`, outbound connections
/// (never to the coordinators or the cloud metadata address).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NetworkPolicy {
    /// A private network namespace with loopback only.
    None,
    /// Outbound connections allowed (never to the coordinators' ports or the cloud metadata address).
    #[default]
    Egress,
}

impl NetworkPolicy {
    /// The name used on the wire, in the API and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkPolicy::None => "none",
            NetworkPolicy::Egress => "egress",
        }
    }

    /// Parses `none` or `egress`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(NetworkPolicy::None),
            "egress" => Some(NetworkPolicy::Egress),
            _ => None,
        }
    }
}

/// What a project may hold and do. Every field deserializes with its built-in default, so projects stored
/// before policies existed read as bounded by [`ProjectPolicy::BUILTIN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectPolicy {
    /// Most jobs waiting in `pending` at once; a submission beyond it is refused (429 quota_exceeded).
    #[serde(default = "builtin_pending")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub max_pending_jobs: u64,
    /// Most CPU (thousandths of a core) the project's scheduled and running jobs may reserve together; a
    /// job that would exceed it stays pending until enough of the project's work ends.
    #[serde(default = "builtin_cpu")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub max_running_cpu_millis: u64,
    /// Most memory, in bytes, reserved by scheduled and running jobs together (same rule as CPU).
    #[serde(default = "builtin_memory")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub max_running_memory_bytes: u64,
    /// Most GPUs held by scheduled and running jobs together (same rule as CPU).
    #[serde(default = "builtin_gpus")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub max_running_gpus: u64,
    /// Most bytes of job specs (their text fields plus 256 each, see [`spec_bytes`]) the project's
    /// unfinished jobs hold together; a submission beyond it is refused.
    #[serde(default = "builtin_spec_bytes")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub max_spec_bytes: u64,
    /// The network the project's jobs get.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub network: NetworkPolicy,
    /// Across projects, a preempting job of this project may evict only preemptible jobs whose priority is
    /// below both this ceiling and its own priority. `0` (the default) means never: only jobs of the same
    /// project are ever evicted on its behalf.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, minimum = 0, maximum = 1000)
    )]
    pub preemption_ceiling: i32,
}

fn builtin_pending() -> u64 {
    ProjectPolicy::BUILTIN.max_pending_jobs
}
fn builtin_cpu() -> u64 {
    ProjectPolicy::BUILTIN.max_running_cpu_millis
}
fn builtin_memory() -> u64 {
    ProjectPolicy::BUILTIN.max_running_memory_bytes
}
fn builtin_gpus() -> u64 {
    ProjectPolicy::BUILTIN.max_running_gpus
}
fn builtin_spec_bytes() -> u64 {
    ProjectPolicy::BUILTIN.max_spec_bytes
}

impl ProjectPolicy {
    /// The policy of a project created without one (the bootstrap's `default` project, projects stored
    /// before policies existed). Part of the replicated format: changing these values changes how old logs
    /// replay, so coordinators configure their own defaults for new projects instead (`[quotas]`).
    pub const BUILTIN: ProjectPolicy = ProjectPolicy {
        max_pending_jobs: 1_000,
        max_running_cpu_millis: 256_000,
        max_running_memory_bytes: 1 << 40,
        max_running_gpus: 64,
        max_spec_bytes: 64 << 20,
        network: NetworkPolicy::Egress,
        preemption_ceiling: 0,
    };

    /// Checks every field's range, naming the first one that is out of it.
    pub fn validate(&self) -> Result<(), DomainError> {
        for (field, value) in [
            ("max_pending_jobs", self.max_pending_jobs),
            ("max_running_cpu_millis", self.max_running_cpu_millis),
            ("max_running_memory_bytes", self.max_running_memory_bytes),
            ("max_running_gpus", self.max_running_gpus),
            ("max_spec_bytes", self.max_spec_bytes),
        ] {
            if value > MAX_QUOTA {
                return Err(DomainError::invalid(field, format!("at most {MAX_QUOTA}")));
            }
        }
        if !(0..=MAX_PREEMPTION_CEILING).contains(&self.preemption_ceiling) {
            return Err(DomainError::invalid(
                "preemption_ceiling",
                format!("must be 0-{MAX_PREEMPTION_CEILING} (0: never preempt other projects)"),
            ));
        }
        Ok(())
    }

    /// This policy with the fields `update` names replaced.
    pub fn updated(&self, update: &PolicyUpdate) -> ProjectPolicy {
        ProjectPolicy {
            max_pending_jobs: update.max_pending_jobs.unwrap_or(self.max_pending_jobs),
            max_running_cpu_millis: update
                .max_running_cpu_millis
                .unwrap_or(self.max_running_cpu_millis),
            max_running_memory_bytes: update
                .max_running_memory_bytes
                .unwrap_or(self.max_running_memory_bytes),
            max_running_gpus: update.max_running_gpus.unwrap_or(self.max_running_gpus),
            max_spec_bytes: update.max_spec_bytes.unwrap_or(self.max_spec_bytes),
            network: update.network.unwrap_or(self.network),
            preemption_ceiling: update.preemption_ceiling.unwrap_or(self.preemption_ceiling),
        }
    }

    /// The running quota as resources (saturating into the scheduler's `u32` GPU count).
    pub fn running_limit(&self) -> Resources {
        Resources {
            cpu_millis: self.max_running_cpu_millis,
            memory_bytes: self.max_running_memory_bytes,
            gpus: u32::try_from(self.max_running_gpus).unwrap_or(u32::MAX),
        }
    }
}

impl Default for ProjectPolicy {
    fn default() -> Self {
        Self::BUILTIN
    }
}

/// A change to a project's policy: the fields given replace the current ones, the others stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_jobs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_gpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_spec_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption_ceiling: Option<i32>,
}

impl PolicyUpdate {
    /// True when the update changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == PolicyUpdate::default()
    }

    /// `field=value` for each field given, for the audit record.
    pub(super) fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{name}={v}"));
            }
        };
        push(
            "max_pending_jobs",
            self.max_pending_jobs.map(|v| v.to_string()),
        );
        push(
            "max_running_cpu_millis",
            self.max_running_cpu_millis.map(|v| v.to_string()),
        );
        push(
            "max_running_memory_bytes",
            self.max_running_memory_bytes.map(|v| v.to_string()),
        );
        push(
            "max_running_gpus",
            self.max_running_gpus.map(|v| v.to_string()),
        );
        push("max_spec_bytes", self.max_spec_bytes.map(|v| v.to_string()));
        push("network", self.network.map(|v| v.as_str().to_owned()));
        push(
            "preemption_ceiling",
            self.preemption_ceiling.map(|v| v.to_string()),
        );
        parts.join(" ")
    }
}

/// The bytes a job spec counts against `max_spec_bytes`: the length of every text it carries (name,
/// command, arguments, environment names and values, working directory, constraints, locality, GPU model,
/// secret references) plus 256 for its fixed-size fields. Deterministic and cheap: no serialization.
pub fn spec_bytes(spec: &JobSpec) -> u64 {
    let pairs = |m: &std::collections::BTreeMap<String, String>| -> usize {
        m.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
    };
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let locality = spec
        .data_locality
        .as_ref()
        .map_or(0, |l| l.region.len() + opt(&l.cluster));
    let total = 256
        + spec.name.len()
        + spec.command.len()
        + spec.args.iter().map(|a| a.len() + 1).sum::<usize>()
        + pairs(&spec.env)
        + opt(&spec.working_dir)
        + opt(&spec.constraints.region)
        + opt(&spec.constraints.cluster)
        + pairs(&spec.constraints.labels)
        + locality
        + opt(&spec.resources.gpu_model)
        + pairs(&spec.secrets);
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// What a job reserves while it is scheduled or running: its request times its replicas.
pub fn job_reservation(spec: &JobSpec) -> Resources {
    let n = u64::from(spec.replicas);
    Resources {
        cpu_millis: spec.resources.cpu_millis.saturating_mul(n),
        memory_bytes: spec.resources.memory_bytes.saturating_mul(n),
        gpus: spec.resources.gpus.saturating_mul(spec.replicas),
    }
}

/// What a project holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectLoad {
    /// Jobs in `pending`.
    pub pending_jobs: u64,
    /// Jobs not finished (pending, scheduled, running).
    pub unfinished_jobs: u64,
    /// [`spec_bytes`] summed over the unfinished jobs.
    pub spec_bytes: u64,
    /// Resources reserved by the unfinished replicas of scheduled and running jobs.
    pub running: Resources,
}

impl ProjectLoad {
    fn add_job(&mut self, job: &JobRecord) {
        self.unfinished_jobs += 1;
        self.spec_bytes = self.spec_bytes.saturating_add(spec_bytes(&job.spec));
        if job.state == JobState::Pending {
            self.pending_jobs += 1;
        }
        for a in job
            .current_replicas()
            .iter()
            .filter(|a| a.outcome.is_none())
        {
            self.running = add(self.running, a.resources);
        }
    }
}

/// `a + b`, saturating.
pub fn add(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.saturating_add(b.cpu_millis),
        memory_bytes: a.memory_bytes.saturating_add(b.memory_bytes),
        gpus: a.gpus.saturating_add(b.gpus),
    }
}

/// `a - b`, saturating at zero.
pub fn sub(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.saturating_sub(b.cpu_millis),
        memory_bytes: a.memory_bytes.saturating_sub(b.memory_bytes),
        gpus: a.gpus.saturating_sub(b.gpus),
    }
}

/// Why `held + more` does not fit under `policy`'s running quota, naming the resource and the field; `None`
/// when it fits. Used by the dispatcher as the job's pending reason and by `apply` to refuse a placement.
pub fn running_quota_excess(
    policy: &ProjectPolicy,
    held: Resources,
    more: Resources,
) -> Option<String> {
    let after = add(held, more);
    let limit = policy.running_limit();
    let cores = |m: u64| format!("{}.{:03}", m / 1000, m % 1000);
    if more.cpu_millis > 0 && after.cpu_millis > limit.cpu_millis {
        return Some(format!(
            "waiting for the project's CPU quota: it would reserve {} of {} cores (max_running_cpu_millis)",
            cores(after.cpu_millis),
            cores(limit.cpu_millis)
        ));
    }
    if more.memory_bytes > 0 && after.memory_bytes > limit.memory_bytes {
        return Some(format!(
            "waiting for the project's memory quota: it would reserve {} of {} bytes (max_running_memory_bytes)",
            after.memory_bytes, limit.memory_bytes
        ));
    }
    if more.gpus > 0 && after.gpus > limit.gpus {
        return Some(format!(
            "waiting for the project's GPU quota: it would hold {} of {} GPUs (max_running_gpus)",
            after.gpus, limit.gpus
        ));
    }
    None
}

impl RegistryState {
    /// The policy of `project_id` ([`ProjectPolicy::BUILTIN`] for an unknown project).
    pub fn project_policy(&self, project_id: &str) -> ProjectPolicy {
        self.tenancy
            .project(project_id)
            .map_or(ProjectPolicy::BUILTIN, |p| p.policy)
    }

    /// What `project_id` holds: pending and unfinished jobs, their spec bytes, running reservations. Costs
    /// one lookup per unfinished job of the project (bounded by its quotas).
    pub fn project_load(&self, project_id: &str) -> ProjectLoad {
        let mut load = ProjectLoad::default();
        for job in self
            .jobs
            .unfinished_of(project_id)
            .filter_map(|id| self.jobs.get(id))
        {
            load.add_job(job);
        }
        load
    }

    /// Refuses a submission that would take the project past its pending-jobs or spec-bytes quota, or that
    /// asks for more than its running quota could ever allow.
    pub fn check_submit_quota(&self, project_id: &str, spec: &JobSpec) -> Result<(), DomainError> {
        let policy = self.project_policy(project_id);
        let load = self.project_load(project_id);
        if load.pending_jobs >= policy.max_pending_jobs {
            return Err(DomainError::QuotaExceeded(format!(
                "the project already has {} pending jobs (max_pending_jobs is {}); wait for some to start or cancel them",
                load.pending_jobs, policy.max_pending_jobs
            )));
        }
        let bytes = spec_bytes(spec);
        if load.spec_bytes.saturating_add(bytes) > policy.max_spec_bytes {
            return Err(DomainError::QuotaExceeded(format!(
                "the project's unfinished jobs would hold {} bytes of specs (max_spec_bytes is {}; this job's spec is {bytes})",
                load.spec_bytes.saturating_add(bytes),
                policy.max_spec_bytes
            )));
        }
        let wants = job_reservation(spec);
        if let Some(why) = running_quota_excess(&policy, Resources::default(), wants) {
            return Err(DomainError::QuotaExceeded(format!(
                "the job alone exceeds the project's running quota, so it could never start ({})",
                why.trim_start_matches("waiting for ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_policy_is_bounded_and_valid() {
        let p = ProjectPolicy::default();
        assert_eq!(p, ProjectPolicy::BUILTIN);
        assert!(p.validate().is_ok());
        assert!(p.max_pending_jobs > 0 && p.max_pending_jobs < MAX_QUOTA);
        assert_eq!(p.network, NetworkPolicy::Egress);
        assert_eq!(p.preemption_ceiling, 0, "never across projects by default");
    }

    #[test]
    fn a_policy_stored_before_policies_existed_reads_as_the_builtin_one() {
        let p: ProjectPolicy = serde_json::from_str("{}").expect("empty policy");
        assert_eq!(p, ProjectPolicy::BUILTIN);
        let p: ProjectPolicy =
            serde_json::from_str(r#"{"max_pending_jobs": 5, "network": "none"}"#).expect("partial");
        assert_eq!(p.max_pending_jobs, 5);
        assert_eq!(p.network, NetworkPolicy::None);
        assert_eq!(p.max_spec_bytes, ProjectPolicy::BUILTIN.max_spec_bytes);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |update: PolicyUpdate| {
            ProjectPolicy::BUILTIN
                .updated(&update)
                .validate()
                .expect_err("out of range")
        };
        let e = bad(PolicyUpdate {
            preemption_ceiling: Some(-1),
            ..Default::default()
        });
        assert!(matches!(&e, DomainError::Invalid { field, .. } if field == "preemption_ceiling"));
        let e = bad(PolicyUpdate {
            preemption_ceiling: Some(1001),
            ..Default::default()
        });
        assert!(matches!(&e, DomainError::Invalid { field, .. } if field == "preemption_ceiling"));
        let e = bad(PolicyUpdate {
            max_spec_bytes: Some(u64::MAX),
            ..Default::default()
        });
        assert!(matches!(&e, DomainError::Invalid { field, .. } if field == "max_spec_bytes"));
        let zero = ProjectPolicy::BUILTIN.updated(&PolicyUpdate {
            max_pending_jobs: Some(0),
            max_running_gpus: Some(0),
            ..Default::default()
        });
        assert!(
            zero.validate().is_ok(),
            "a frozen project is a valid policy"
        );
    }

    #[test]
    fn an_update_changes_only_the_fields_it_names() {
        let update = PolicyUpdate {
            max_running_gpus: Some(2),
            network: Some(NetworkPolicy::None),
            ..Default::default()
        };
        let p = ProjectPolicy::BUILTIN.updated(&update);
        assert_eq!(p.max_running_gpus, 2);
        assert_eq!(p.network, NetworkPolicy::None);
        assert_eq!(p.max_pending_jobs, ProjectPolicy::BUILTIN.max_pending_jobs);
        assert_eq!(update.describe(), "max_running_gpus=2 network=none");
        assert!(PolicyUpdate::default().is_empty());
        assert!(!update.is_empty());
    }

    #[test]
    fn network_names_round_trip() {
        for n in [NetworkPolicy::None, NetworkPolicy::Egress] {
            assert_eq!(NetworkPolicy::parse(n.as_str()), Some(n));
            assert_eq!(
                serde_json::to_value(n).expect("serializes"),
                serde_json::json!(n.as_str())
            );
        }
        assert_eq!(NetworkPolicy::parse("host"), None);
    }

    #[test]
    fn spec_bytes_grow_with_the_text_a_spec_carries() {
        let small = JobSpec::new("true");
        let mut big = JobSpec::new("true");
        big.args = vec!["x".repeat(1000); 3];
        big.env.insert("K".into(), "v".repeat(500));
        assert_eq!(spec_bytes(&small), 256 + 4);
        assert_eq!(spec_bytes(&big), 256 + 4 + 3 * 1001 + (1 + 500 + 2));
    }

    #[test]
    fn the_running_quota_names_the_resource_it_would_exceed() {
        let mut policy = ProjectPolicy::BUILTIN;
        policy.max_running_cpu_millis = 4_000;
        policy.max_running_gpus = 1;
        let held = Resources {
            cpu_millis: 3_000,
            memory_bytes: 0,
            gpus: 1,
        };
        let cpu = Resources {
            cpu_millis: 1_500,
            ..Default::default()
        };
        let why = running_quota_excess(&policy, held, cpu).expect("over the CPU quota");
        assert!(why.contains("4.500 of 4.000 cores"), "{why}");
        assert!(why.contains("max_running_cpu_millis"), "{why}");
        let gpu = Resources {
            gpus: 1,
            ..Default::default()
        };
        let why = running_quota_excess(&policy, held, gpu).expect("over the GPU quota");
        assert!(why.contains("max_running_gpus"), "{why}");
        let fits = Resources {
            cpu_millis: 1_000,
            ..Default::default()
        };
        assert_eq!(running_quota_excess(&policy, held, fits), None);
        // A job that asks for no GPUs is not held back by a project over its GPU quota.
        let over = Resources { gpus: 5, ..held };
        assert_eq!(running_quota_excess(&policy, over, fits), None);
    }
}
