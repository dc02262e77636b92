//! Whether a job could ever run on the fleet as it is registered, as opposed to waiting for capacity.
//!
//! A job that waits for running work to end is pending; a job that no node could take even with the whole
//! fleet idle and healthy (no GPUs where it wants GPUs, no node in its region, nodes too small, no node
//! with its labels or GPU model) will wait forever unless the fleet changes. The API says so at submission
//! and `job run --wait` stops on it. Health, draining, admission and what is allocated are ignored here:
//! each of those can change without anyone adding a node.

use std::fmt::Write as _;

use super::decision::{Filter, FilterCounts};
use super::placement::Resolved;
use super::request::JobRequest;
use super::{NodeSlot, Scheduler};

impl Scheduler {
    /// `Some(why)` when no node of the fleet could ever take every replica of `job` — not even with
    /// nothing else running. `None` when some could (or when no node is registered yet: a fleet that is
    /// still joining is not a verdict).
    pub fn never_placeable(&self, job: &JobRequest) -> Option<String> {
        if self.nodes.is_empty() || job.replicas == 0 {
            return None;
        }
        let r = self.resolve(job);
        let wanted = u64::from(job.replicas);
        let mut counts = FilterCounts::default();
        let mut room: u64 = 0;
        self.visit_buckets(
            &r,
            &mut counts,
            |_, node, counts| match Self::check_fixed(node, &r)
                .and_then(|()| replicas_ever(node, &r))
            {
                Ok(n) => room = room.saturating_add(n),
                Err(filter) => counts.add(filter, 1),
            },
        );
        if room >= wanted {
            return None;
        }
        let mut out = if room == 0 {
            "no node in the fleet could ever run it, even with nothing else running".to_owned()
        } else {
            format!(
                "the fleet could never run all {wanted} replicas at once, even with nothing else \
                 running (room for {room})"
            )
        };
        let mut entries: Vec<(Filter, u32)> = NEVER_FILTERS
            .iter()
            .map(|f| (*f, counts.count(*f)))
            .filter(|(_, n)| *n > 0)
            .collect();
        entries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (i, (filter, n)) in entries.into_iter().enumerate() {
            out.push_str(if i == 0 { ": " } else { ", " });
            let nodes = if n == 1 { "node" } else { "nodes" };
            let _ = write!(out, "{n} {nodes} {}", describe(job, filter, n == 1));
        }
        Some(out)
    }
}

/// The filters a node can fail for good, in the order they apply.
const NEVER_FILTERS: [Filter; 9] = [
    Filter::OutOfRegion,
    Filter::OutOfCluster,
    Filter::WithoutGpus,
    Filter::LabelMismatch,
    Filter::GpuModelMismatch,
    Filter::GpuMemoryTooSmall,
    Filter::InsufficientCpu,
    Filter::InsufficientMemory,
    Filter::InsufficientGpus,
];

/// How many replicas `node` could hold if nothing else ran there; the dimension it is too small in when
/// none.
fn replicas_ever(node: &NodeSlot, r: &Resolved<'_>) -> Result<u64, Filter> {
    let req = &r.job.resources;
    let fits = |capacity: u64, want: u64| capacity.checked_div(want).unwrap_or(u64::MAX);
    let cpu = fits(node.cap_cpu, req.cpu_millis);
    if cpu == 0 {
        return Err(Filter::InsufficientCpu);
    }
    let memory = fits(node.cap_mem, req.memory_bytes);
    if memory == 0 {
        return Err(Filter::InsufficientMemory);
    }
    let gpus = if r.needs_gpus {
        let matching = node
            .gpus
            .iter()
            .filter(|g| Scheduler::gpu_class_fits(r, g.class))
            .count() as u64;
        fits(matching, u64::from(req.gpus))
    } else {
        u64::MAX
    };
    if gpus == 0 {
        return Err(Filter::InsufficientGpus);
    }
    Ok(cpu.min(memory).min(gpus))
}

/// What `filter` says of the nodes it excluded, as a predicate ("have no GPUs"), singular when `one`.
fn describe(job: &JobRequest, filter: Filter, one: bool) -> String {
    let c = &job.constraints;
    let r = &job.resources;
    let (is, has, lacks) = if one {
        ("is", "has", "lacks")
    } else {
        ("are", "have", "lack")
    };
    match filter {
        Filter::OutOfRegion => {
            format!("{is} outside region {}", c.region.as_deref().unwrap_or("?"))
        }
        Filter::OutOfCluster => format!(
            "{is} outside cluster {}",
            c.cluster.as_deref().unwrap_or("?")
        ),
        Filter::WithoutGpus => format!("{has} no GPUs"),
        Filter::LabelMismatch => {
            let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let word = if labels.len() == 1 { "label" } else { "labels" };
            format!("{lacks} the {word} {}", labels.join(", "))
        }
        Filter::GpuModelMismatch => format!(
            "{has} no {} GPUs",
            r.gpu_model.as_deref().unwrap_or("matching")
        ),
        Filter::GpuMemoryTooSmall => format!(
            "{has} only GPUs of less than {} MiB",
            r.gpu_min_memory_mib.unwrap_or(0)
        ),
        Filter::InsufficientCpu => {
            let unit = if r.cpu_millis == 1000 { "CPU" } else { "CPUs" };
            format!(
                "{has} fewer than {} {unit} in all",
                super::decision::format_cpu(r.cpu_millis)
            )
        }
        Filter::InsufficientMemory => format!(
            "{has} less than {} of memory in all",
            super::decision::format_bytes(r.memory_bytes)
        ),
        Filter::InsufficientGpus => {
            let unit = if r.gpus == 1 { "GPU" } else { "GPUs" };
            format!("{has} fewer than {} matching {unit} in all", r.gpus)
        }
        // Not among NEVER_FILTERS: each of these can change without a new node.
        Filter::Unreachable | Filter::Lost | Filter::Draining | Filter::NotAdmitted => {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{alloc, cpu_job, cpu_node, gpu_job, gpu_node, scheduler};
    use super::super::{NodeHealth, Scheduler};

    #[test]
    fn a_gpu_job_on_a_fleet_without_gpus_could_never_run() {
        let s = scheduler(vec![
            cpu_node("a", "eu", "c1", 8, 32),
            cpu_node("b", "us", "c1", 8, 32),
        ]);
        let why = s.never_placeable(&gpu_job("j", 1)).expect("never");
        assert_eq!(
            why,
            "no node in the fleet could ever run it, even with nothing else running: \
             2 nodes have no GPUs"
        );
    }

    #[test]
    fn waiting_for_capacity_or_health_is_not_never() {
        // Full of other work: the job waits, but it could run once that work ends.
        let nodes = vec![cpu_node("a", "eu", "c1", 4, 16)];
        let busy = Scheduler::new(nodes, vec![alloc("other", "a", 4, 0, false)]).expect("fleet");
        assert_eq!(busy.never_placeable(&cpu_job("j", 4, 8)), None);
        // The only matching node is unreachable or draining: that can change without a new node.
        let mut down = cpu_node("a", "eu", "c1", 4, 16);
        down.health = NodeHealth::Unreachable;
        assert_eq!(
            scheduler(vec![down]).never_placeable(&cpu_job("j", 1, 1)),
            None
        );
        // No node registered yet: a fleet still joining is not a verdict.
        assert_eq!(
            scheduler(Vec::new()).never_placeable(&cpu_job("j", 1, 1)),
            None
        );
    }

    #[test]
    fn every_permanent_filter_is_named_largest_first() {
        let s = scheduler(vec![
            cpu_node("small-1", "eu", "c1", 2, 64),
            cpu_node("small-2", "eu", "c1", 2, 64),
            cpu_node("tiny-mem", "eu", "c1", 64, 2),
            cpu_node("us", "us", "c1", 64, 64),
        ]);
        let mut job = cpu_job("j", 4, 8);
        job.constraints.region = Some("eu".into());
        let why = s.never_placeable(&job).expect("never");
        assert!(
            why.ends_with(
                ": 2 nodes have fewer than 4 CPUs in all, 1 node is outside region eu, \
                 1 node has less than 8 GiB of memory in all"
            ),
            "{why}"
        );
        let mut labelled = cpu_job("j", 1, 1);
        labelled
            .constraints
            .labels
            .insert("zone".into(), "b".into());
        let why = s.never_placeable(&labelled).expect("never");
        assert!(why.ends_with(": 4 nodes lack the label zone=b"), "{why}");
    }

    #[test]
    fn gpu_model_memory_and_count_are_checked_against_whole_nodes() {
        let s = scheduler(vec![
            gpu_node("a100", "eu", "NVIDIA A100-SXM4-40GB", 40_960, 8),
            gpu_node("h100", "eu", "NVIDIA H100 80GB HBM3", 81_559, 2),
        ]);
        let mut h200 = gpu_job("j", 1);
        h200.resources.gpu_model = Some("h200".into());
        let why = s.never_placeable(&h200).expect("never");
        assert!(why.ends_with(": 2 nodes have no h200 GPUs"), "{why}");

        let mut big = gpu_job("j", 4);
        big.resources.gpu_min_memory_mib = Some(80_000);
        let why = s.never_placeable(&big).expect("never");
        assert!(
            why.ends_with(
                ": 1 node has only GPUs of less than 80000 MiB, \
                 1 node has fewer than 4 matching GPUs in all"
            ),
            "{why}"
        );
        big.resources.gpus = 2;
        assert_eq!(s.never_placeable(&big), None);
    }

    #[test]
    fn a_gang_needs_room_for_every_replica_at_once() {
        let s = scheduler(vec![
            cpu_node("a", "eu", "c1", 8, 64),
            cpu_node("b", "eu", "c1", 8, 64),
        ]);
        let mut gang = cpu_job("g", 8, 8);
        gang.replicas = 2;
        assert_eq!(s.never_placeable(&gang), None);
        gang.replicas = 3;
        let why = s.never_placeable(&gang).expect("never");
        assert!(
            why.starts_with("the fleet could never run all 3 replicas at once")
                && why.contains("(room for 2)"),
            "{why}"
        );
    }
}
