//! The scheduler's view of the fleet: nodes with their resources, GPUs and health, and the allocations that
//! hold part of them.
//!
//! Plain serde data that the coordinator can keep in its replicated state. Owns no behaviour beyond trivial
//! accessors; it must never read a clock, draw randomness or do I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An amount of compute: CPU in thousandths of a core, memory in bytes, whole GPUs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// Thousandths of a CPU core (1000 = one core).
    pub cpu_millis: u64,
    /// Bytes of memory.
    pub memory_bytes: u64,
    /// Whole GPUs.
    pub gpus: u32,
}

/// One GPU of a node, as the node's agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuDevice {
    /// The device's UUID (`GPU-…`), what jobs see in `CUDA_VISIBLE_DEVICES`.
    pub uuid: String,
    /// The device's index on its node; the scheduler hands out lower indexes first.
    pub index: u32,
    /// The model name as the driver reports it, e.g. `NVIDIA H200`.
    pub model: String,
    /// Total device memory in MiB.
    pub memory_mib: u64,
    /// Only healthy devices are ever assigned.
    pub healthy: bool,
}

/// Where a node stands; only [`NodeHealth::Ready`] nodes receive new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    /// Heartbeating and accepting work.
    Ready,
    /// Missed heartbeats; its work is left alone for a grace period.
    Unreachable,
    /// Declared lost after the grace period.
    Lost,
    /// Finishing its work; takes nothing new.
    Draining,
    /// Not admitted to the fleet (waiting for approval, quarantined, or its identity denied); takes nothing
    /// new.
    NotAdmitted,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's unique id (its agent name). Ties between equally good nodes go to the smallest id.
    pub id: String,
    /// Region the node lives in.
    pub region: String,
    /// Cluster within the region.
    pub cluster: String,
    /// Operator labels, e.g. `zone=a`, `instance=spot`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Current health.
    pub health: NodeHealth,
    /// Total schedulable CPU and memory. `capacity.gpus` is not consulted: GPUs are counted from
    /// [`NodeView::gpus`], because every GPU placement must name device UUIDs.
    pub capacity: Resources,
    /// The node's GPUs; empty for CPU-only nodes.
    #[serde(default)]
    pub gpus: Vec<GpuDevice>,
}

/// Resources held on one node by one replica of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The job holding the resources (a gang job holds one allocation per replica).
    pub job_id: String,
    /// The node the resources are on.
    pub node_id: String,
    /// CPU and memory held; `gpus` is the number of GPUs asked for.
    pub resources: Resources,
    /// The GPUs held, by UUID.
    #[serde(default)]
    pub gpu_uuids: Vec<String>,
    /// The job's priority; only strictly higher-priority jobs may preempt it.
    pub priority: i32,
    /// Whether a higher-priority job that opted into preemption may evict it.
    pub preemptible: bool,
    /// The job's project: a job of another project may evict it only below its own project's preemption
    /// ceiling (see [`super::may_evict`]).
    #[serde(default)]
    pub project: String,
}
