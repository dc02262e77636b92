//! What the scheduler answers: where each replica goes (and whom it evicted), or why the job must wait.
//!
//! Owns the placement decision types and the human-readable pending reason that `meridian job status` shows.
//! Must never decide anything itself: it only counts and describes.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::fleet::Resources;
use super::request::JobRequest;

/// Where one replica goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The chosen node.
    pub node_id: String,
    /// The GPUs assigned on that node, lowest device index first.
    pub gpu_uuids: Vec<String>,
    /// The resources reserved for the replica.
    pub resources: Resources,
}

/// The outcome of placing one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PlacementDecision {
    /// Every replica has a node; the resources are reserved.
    Placed {
        /// One entry per replica, in replica order.
        assignments: Vec<Assignment>,
        /// Jobs whose allocations were evicted to make room (sorted, no duplicates); they must be stopped
        /// and returned to pending.
        preempted: Vec<String>,
    },
    /// Nothing was reserved; the job waits.
    Pending {
        /// Why, precisely enough for an operator to act on it.
        reason: String,
        /// Per filter, how many nodes it excluded (for the last replica tried, for a gang).
        filtered: FilterCounts,
    },
}

/// One job's decision inside a [`super::Scheduler::place_all`] batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlacement {
    /// The job.
    pub job_id: String,
    /// Its decision.
    pub decision: PlacementDecision,
}

/// How many nodes each filter excluded. Each node is counted once, under the first filter it failed, in
/// the order of the fields below.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterCounts {
    /// Nodes in the fleet.
    pub nodes: u32,
    /// Outside the required region.
    pub out_of_region: u32,
    /// Outside the required cluster.
    pub out_of_cluster: u32,
    /// No GPUs at all (counted only for jobs that need GPUs).
    pub without_gpus: u32,
    /// Health `unreachable`.
    pub unreachable: u32,
    /// Health `lost`.
    pub lost: u32,
    /// Health `draining`.
    pub draining: u32,
    /// Not admitted (pending approval, quarantined or denied).
    pub not_admitted: u32,
    /// Missing a required label.
    pub label_mismatch: u32,
    /// No GPU of the required model.
    pub gpu_model_mismatch: u32,
    /// GPUs of the model, but none with the required memory.
    pub gpu_memory_too_small: u32,
    /// Too little free CPU.
    pub insufficient_cpu: u32,
    /// Too little free memory.
    pub insufficient_memory: u32,
    /// Too few free healthy (matching) GPUs.
    pub insufficient_gpus: u32,
}

/// The filter that excluded a node, in the order filters apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filter {
    OutOfRegion,
    OutOfCluster,
    WithoutGpus,
    Unreachable,
    Lost,
    Draining,
    NotAdmitted,
    LabelMismatch,
    GpuModelMismatch,
    GpuMemoryTooSmall,
    InsufficientCpu,
    InsufficientMemory,
    InsufficientGpus,
}

const ALL_FILTERS: [Filter; 13] = [
    Filter::OutOfRegion,
    Filter::OutOfCluster,
    Filter::WithoutGpus,
    Filter::Unreachable,
    Filter::Lost,
    Filter::Draining,
    Filter::NotAdmitted,
    Filter::LabelMismatch,
    Filter::GpuModelMismatch,
    Filter::GpuMemoryTooSmall,
    Filter::InsufficientCpu,
    Filter::InsufficientMemory,
    Filter::InsufficientGpus,
];

impl FilterCounts {
    pub fn count_mut(&mut self, filter: Filter) -> &mut u32 {
        match filter {
            Filter::OutOfRegion => &mut self.out_of_region,
            Filter::OutOfCluster => &mut self.out_of_cluster,
            Filter::WithoutGpus => &mut self.without_gpus,
            Filter::Unreachable => &mut self.unreachable,
            Filter::Lost => &mut self.lost,
            Filter::Draining => &mut self.draining,
            Filter::NotAdmitted => &mut self.not_admitted,
            Filter::LabelMismatch => &mut self.label_mismatch,
            Filter::GpuModelMismatch => &mut self.gpu_model_mismatch,
            Filter::GpuMemoryTooSmall => &mut self.gpu_memory_too_small,
            Filter::InsufficientCpu => &mut self.insufficient_cpu,
            Filter::InsufficientMemory => &mut self.insufficient_memory,
            Filter::InsufficientGpus => &mut self.insufficient_gpus,
        }
    }

    pub fn add(&mut self, filter: Filter, n: u32) {
        *self.count_mut(filter) += n;
    }

    pub(super) fn count(&self, filter: Filter) -> u32 {
        match filter {
            Filter::OutOfRegion => self.out_of_region,
            Filter::OutOfCluster => self.out_of_cluster,
            Filter::WithoutGpus => self.without_gpus,
            Filter::Unreachable => self.unreachable,
            Filter::Lost => self.lost,
            Filter::Draining => self.draining,
            Filter::NotAdmitted => self.not_admitted,
            Filter::LabelMismatch => self.label_mismatch,
            Filter::GpuModelMismatch => self.gpu_model_mismatch,
            Filter::GpuMemoryTooSmall => self.gpu_memory_too_small,
            Filter::InsufficientCpu => self.insufficient_cpu,
            Filter::InsufficientMemory => self.insufficient_memory,
            Filter::InsufficientGpus => self.insufficient_gpus,
        }
    }
}

/// Why one replica of `job` found no node: "no node has …: 3 nodes without GPUs, 1 node unreachable".
/// Categories are listed by count, largest first (ties in filter order).
pub fn describe_unplaceable(job: &JobRequest, counts: &FilterCounts) -> String {
    if counts.nodes == 0 {
        return "no nodes are registered".to_owned();
    }
    let mut out = match describe_request(job) {
        Some(wants) => format!("no node has {wants} free"),
        None => "no node can take it now".to_owned(),
    };
    let mut entries: Vec<(Filter, u32)> = ALL_FILTERS
        .iter()
        .map(|f| (*f, counts.count(*f)))
        .filter(|(_, n)| *n > 0)
        .collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (i, (filter, n)) in entries.into_iter().enumerate() {
        out.push_str(if i == 0 { ": " } else { ", " });
        let nodes = if n == 1 { "node" } else { "nodes" };
        let _ = write!(out, "{n} {nodes} {}", describe_filter(job, filter));
    }
    out
}

fn describe_filter(job: &JobRequest, filter: Filter) -> String {
    let c = &job.constraints;
    let r = &job.resources;
    match filter {
        Filter::OutOfRegion => format!("out of region {}", c.region.as_deref().unwrap_or("?")),
        Filter::OutOfCluster => format!("out of cluster {}", c.cluster.as_deref().unwrap_or("?")),
        Filter::WithoutGpus => "without GPUs".to_owned(),
        Filter::Unreachable => "unreachable".to_owned(),
        Filter::Lost => "lost".to_owned(),
        Filter::Draining => "draining".to_owned(),
        Filter::NotAdmitted => "not admitted (pending approval, quarantined or denied)".to_owned(),
        Filter::LabelMismatch => {
            let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let word = if labels.len() == 1 { "label" } else { "labels" };
            format!("without {word} {}", labels.join(", "))
        }
        Filter::GpuModelMismatch => {
            format!(
                "without {} GPUs",
                r.gpu_model.as_deref().unwrap_or("matching")
            )
        }
        Filter::GpuMemoryTooSmall => {
            let model = r
                .gpu_model
                .as_deref()
                .map(|m| format!("{m} "))
                .unwrap_or_default();
            format!(
                "whose {model}GPUs have less than {} MiB",
                r.gpu_min_memory_mib.unwrap_or(0)
            )
        }
        Filter::InsufficientCpu => "with too little free CPU".to_owned(),
        Filter::InsufficientMemory => "with too little free memory".to_owned(),
        Filter::InsufficientGpus => {
            if r.gpu_model.is_some() || r.gpu_min_memory_mib.is_some() {
                "with too few free matching GPUs".to_owned()
            } else {
                "with too few free GPUs".to_owned()
            }
        }
    }
}

/// "2 GPUs of model H200 with >= 80000 MiB, 8 CPUs and 64 GiB memory"; `None` for a job that asks for
/// nothing.
fn describe_request(job: &JobRequest) -> Option<String> {
    let r = &job.resources;
    let mut parts = Vec::new();
    if r.gpus > 0 {
        let mut gpus = format!("{} {}", r.gpus, if r.gpus == 1 { "GPU" } else { "GPUs" });
        if let Some(model) = &r.gpu_model {
            let _ = write!(gpus, " of model {model}");
        }
        if let Some(mib) = r.gpu_min_memory_mib {
            let _ = write!(gpus, " with >= {mib} MiB");
        }
        parts.push(gpus);
    }
    if r.cpu_millis > 0 {
        let unit = if r.cpu_millis == 1000 { "CPU" } else { "CPUs" };
        parts.push(format!("{} {unit}", format_cpu(r.cpu_millis)));
    }
    if r.memory_bytes > 0 {
        parts.push(format!("{} memory", format_bytes(r.memory_bytes)));
    }
    match parts.len() {
        0 => None,
        1 => Some(parts.remove(0)),
        _ => {
            let last = parts.pop().unwrap_or_default();
            Some(format!("{} and {last}", parts.join(", ")))
        }
    }
}

pub(super) fn format_cpu(millis: u64) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

pub(crate) fn format_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    const TIB: u64 = 1024 * GIB;
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit {
            let tenths = (u128::from(bytes) * 10 / u128::from(unit)) as u64;
            let (whole, tenth) = (tenths / 10, tenths % 10);
            return if tenth == 0 {
                format!("{whole} {name}")
            } else {
                format!("{whole}.{tenth} {name}")
            };
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_naturally() {
        assert_eq!(format_cpu(4000), "4");
        assert_eq!(format_cpu(1500), "1.5");
        assert_eq!(format_cpu(250), "0.25");
        assert_eq!(format_bytes(64 << 30), "64 GiB");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(100), "100 bytes");
    }

    #[test]
    fn a_job_that_asks_for_nothing_reads_plainly() {
        let mut job = JobRequest::new("j", crate::scheduler::ResourceRequest::default());
        job.constraints.region = Some("nowhere".into());
        let counts = FilterCounts {
            nodes: 1,
            out_of_region: 1,
            ..FilterCounts::default()
        };
        assert_eq!(
            describe_unplaceable(&job, &counts),
            "no node can take it now: 1 node out of region nowhere"
        );
    }
}
