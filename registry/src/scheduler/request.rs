//! What a job asks the scheduler for: resources per replica, hard constraints, soft preferences, priority,
//! gang size and preemption options.
//!
//! Plain serde data that can travel inside a job's spec in the replicated state. Must never hold behaviour
//! that depends on the fleet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Resources one replica of a job needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceRequest {
    /// Thousandths of a CPU core.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub cpu_millis: u64,
    /// Bytes of memory.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub memory_bytes: u64,
    /// Whole GPUs.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub gpus: u32,
    /// GPU model, matched case-insensitively as a substring of the device's model (`H200` matches
    /// `NVIDIA H200`). Ignored when `gpus` is 0.
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// Minimum memory per GPU in MiB. Ignored when `gpus` is 0.
    #[serde(default)]
    pub gpu_min_memory_mib: Option<u64>,
}

/// Hard placement constraints: a node that does not satisfy all of them is never chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = JobConstraints))]
pub struct Constraints {
    /// Only nodes of this region.
    #[serde(default)]
    pub region: Option<String>,
    /// Only nodes of a cluster with this name (in the constrained region, or any region).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Every label must be present on the node with exactly this value.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub labels: BTreeMap<String, String>,
}

/// A soft preference for where a job's data lives. Never overrides [`Constraints`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = DataLocality))]
pub struct Locality {
    /// Preferred region.
    pub region: String,
    /// Preferred cluster within that region; nodes of the region but another cluster are still preferred
    /// over other regions.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// How to choose among the nodes that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Strategy {
    /// Prefer the node left fullest after placement, keeping whole nodes free for large jobs.
    #[default]
    BinPack,
    /// Prefer the node left emptiest after placement.
    Spread,
}

/// A job (or a pipeline stage, or a serving replica set) to place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The job's unique id.
    pub id: String,
    /// Higher runs first in [`super::Scheduler::place_all`] and may preempt lower.
    #[serde(default)]
    pub priority: i32,
    /// Resources for each replica.
    pub resources: ResourceRequest,
    /// Hard constraints.
    #[serde(default)]
    pub constraints: Constraints,
    /// Number of replicas; more than one makes a gang: all are placed, or none.
    #[serde(default = "one")]
    pub replicas: u32,
    /// May evict lower-priority preemptible allocations when nothing fits otherwise: those of its own
    /// project, and those of other projects only below `preemption_ceiling`.
    #[serde(default)]
    pub preemption: bool,
    /// The job's project.
    #[serde(default)]
    pub project: String,
    /// Its project's preemption ceiling: with `preemption`, it may evict another project's job only when
    /// that job's priority is below this ceiling (and below its own priority). `0` (the default): never.
    #[serde(default)]
    pub preemption_ceiling: i32,
    /// Whether this job's own allocations may later be evicted by higher-priority jobs that opted into
    /// preemption. Defaults to true: priority alone protects a job unless it asks for more.
    #[serde(default = "yes")]
    pub preemptible: bool,
    /// Soft preference for the region/cluster holding the job's data.
    #[serde(default)]
    pub data_locality: Option<Locality>,
    /// Bin-packing (default) or spread.
    #[serde(default)]
    pub strategy: Strategy,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

impl JobRequest {
    /// A single-replica, priority-0, bin-packed, preemptible job without constraints.
    pub fn new(id: impl Into<String>, resources: ResourceRequest) -> Self {
        Self {
            id: id.into(),
            priority: 0,
            resources,
            constraints: Constraints::default(),
            replicas: 1,
            preemption: false,
            project: String::new(),
            preemption_ceiling: 0,
            preemptible: true,
            data_locality: None,
            strategy: Strategy::BinPack,
        }
    }
}
