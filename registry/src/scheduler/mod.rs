//! The scheduler core: decides where jobs run. Pure and deterministic — no I/O, no clock, no randomness;
//! the same nodes, allocations and jobs always give the same decisions, whatever order the nodes arrive in.
//! It runs on the coordinator leader; its decisions are proposed as commands, so it must never act on
//! them itself (start, stop or notify anything) and never reads the replicated state directly.
//!
//! # API
//!
//! ```text
//! Scheduler::new(nodes: impl IntoIterator<Item = NodeView>,
//!                allocations: impl IntoIterator<Item = Allocation>) -> Result<Scheduler, SchedulerError>
//! Scheduler::place(&mut self, job: &JobRequest) -> PlacementDecision
//! Scheduler::place_all(&mut self, jobs: &[JobRequest]) -> Vec<JobPlacement>  // priority desc, then id
//! Scheduler::release(&mut self, job_id: &str) -> Vec<Allocation>            // a job finished or was stopped
//! Scheduler::allocations_of(&self, job_id: &str) -> impl Iterator<Item = &Allocation>
//! Scheduler::free_capacity(&self, node_id: &str) -> Option<Resources>
//! Scheduler::never_placeable(&self, job: &JobRequest) -> Option<String>  // why no node ever could
//!
//! PlacementDecision::Placed  { assignments: Vec<Assignment { node_id, gpu_uuids, resources }>,
//!                              preempted: Vec<String /* job ids to stop and return to pending */> }
//! PlacementDecision::Pending { reason: String /* shown by `meridian job status` */, filtered: FilterCounts }
//! ```
//!
//! A scheduling pass on the leader builds a `Scheduler` from the registry's nodes and the allocations of
//! scheduled and running jobs, calls `place_all` with the pending jobs, and proposes the decisions. `place`
//! reserves what it decides, so a burst of jobs spreads over the fleet instead of piling onto the node that
//! looked best at the start.
//!
//! # How a node is chosen
//!
//! Filters, in this order (a node is counted under the first one it fails, see [`FilterCounts`]): region,
//! cluster, has GPUs (GPU jobs only), health (only `ready`), labels, GPU model (case-insensitive substring)
//! and minimum GPU memory, free CPU, free memory, free healthy matching GPUs. Among the nodes left, the
//! best by, in order: data locality (region and cluster named by the job, then the region alone), keeping
//! GPU nodes for GPU work (CPU-only jobs prefer nodes without GPUs), the strategy's fit score, and finally
//! the smallest node id. The fit score is the node's utilization after placement in parts per million,
//! averaged over CPU (weight 1), memory (1) and, for GPU jobs, GPUs (2); bin-packing prefers the highest,
//! spread the lowest. GPUs are assigned lowest device index first.
//!
//! A job with `preemption` that fits nowhere looks for the node where the fewest lower-priority
//! preemptible jobs must go (then the lowest-priority ones) and evicts those jobs entirely. Only jobs of
//! its own project are candidates, plus other projects' jobs whose priority is below its project's
//! preemption ceiling ([`may_evict`]). The search is
//! exact for small sets and falls back to an irreducible greedy set when a node holds very many candidates.
//! A gang (`replicas > 1`) is placed replica by replica; if one does not fit, every reservation and
//! eviction made for it is undone and the job stays pending.
//!
//! # Performance
//!
//! Nodes are bucketed by (region, cluster) and by whether they have GPUs, so constraints and GPU jobs
//! only visit the nodes that can match; regions, clusters and GPU models are interned, and GPU model
//! matching is evaluated once per job over the handful of distinct (model, memory) classes in the fleet.
//! Visiting a node is a few integer comparisons with no allocation. Hash maps are used for lookups only,
//! never iterated, so they cannot make decisions depend on hashing.

mod decision;
mod feasibility;
mod fleet;
mod placement;
mod preemption;
mod request;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub(crate) use decision::format_bytes;
pub use decision::{Assignment, FilterCounts, JobPlacement, PlacementDecision};
pub use fleet::{Allocation, GpuDevice, NodeHealth, NodeView, Resources};
pub use preemption::may_evict;
pub use request::{Constraints, JobRequest, Locality, ResourceRequest, Strategy};

/// Inputs the scheduler cannot index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// Two nodes share an id, so ties and allocations could not be resolved deterministically.
    #[error("node id {id:?} appears more than once")]
    DuplicateNode {
        /// The repeated id.
        id: String,
    },
}

/// Index of a node in [`Scheduler::nodes`]; nodes are sorted by id, so comparing indexes compares ids.
type NodeIdx = u32;
/// Index of an allocation in [`Scheduler::allocs`].
type AllocId = u32;

/// One GPU of a node.
#[derive(Debug)]
struct GpuSlot {
    uuid: String,
    /// Index into [`Scheduler::gpu_classes`].
    class: u32,
    healthy: bool,
    holder: Option<AllocId>,
}

/// A node with its running totals.
#[derive(Debug)]
struct NodeSlot {
    id: String,
    region: u32,
    cluster: u32,
    health: NodeHealth,
    labels: BTreeMap<String, String>,
    cap_cpu: u64,
    cap_mem: u64,
    used_cpu: u64,
    used_mem: u64,
    /// Sorted by device index, then UUID.
    gpus: Vec<GpuSlot>,
    healthy_gpus: u32,
    /// Healthy GPUs no allocation holds.
    free_gpus: u32,
    allocs: Vec<AllocId>,
}

impl NodeSlot {
    fn free_cpu(&self) -> u64 {
        self.cap_cpu.saturating_sub(self.used_cpu)
    }

    fn free_mem(&self) -> u64 {
        self.cap_mem.saturating_sub(self.used_mem)
    }
}

/// The nodes of one (region, cluster), split by whether they have GPUs.
#[derive(Debug)]
struct Site {
    region: u32,
    cluster: u32,
    cpu_nodes: Vec<NodeIdx>,
    gpu_nodes: Vec<NodeIdx>,
}

impl Site {
    fn len(&self) -> u32 {
        (self.cpu_nodes.len() + self.gpu_nodes.len()) as u32
    }
}

/// A distinct (model, memory) pair among the fleet's GPUs.
#[derive(Debug)]
struct GpuClass {
    model_lower: String,
    memory_mib: u64,
}

#[derive(Debug)]
struct AllocEntry {
    alloc: Allocation,
    /// `None` when the allocation names a node the scheduler does not know: it holds nothing then, but
    /// can still be released.
    node: Option<NodeIdx>,
    /// The GPU slots it holds on its node.
    gpu_slots: Vec<u32>,
}

/// The placement engine over one snapshot of the fleet. See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    nodes: Vec<NodeSlot>,
    node_by_id: HashMap<String, NodeIdx>,
    region_by_name: HashMap<String, u32>,
    cluster_by_name: HashMap<String, u32>,
    /// Sorted by (region, cluster) name.
    sites: Vec<Site>,
    gpu_classes: Vec<GpuClass>,
    allocs: Vec<Option<AllocEntry>>,
    free_alloc_ids: Vec<AllocId>,
    by_job: HashMap<String, Vec<AllocId>>,
}

impl Scheduler {
    /// Indexes `nodes` and charges `allocations` against them. Allocations are applied in a canonical
    /// order; one naming an unknown node holds nothing, and a GPU UUID that its node does not have (or
    /// that another allocation already holds) is not charged.
    pub fn new(
        nodes: impl IntoIterator<Item = NodeView>,
        allocations: impl IntoIterator<Item = Allocation>,
    ) -> Result<Self, SchedulerError> {
        let mut nodes: Vec<NodeView> = nodes.into_iter().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(pair) = nodes.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(SchedulerError::DuplicateNode {
                id: pair[0].id.clone(),
            });
        }

        let intern = |names: BTreeSet<&str>| -> HashMap<String, u32> {
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.to_owned(), i as u32))
                .collect()
        };
        let region_by_name = intern(nodes.iter().map(|n| n.region.as_str()).collect());
        let cluster_by_name = intern(nodes.iter().map(|n| n.cluster.as_str()).collect());
        let classes: BTreeSet<(&str, u64)> = nodes
            .iter()
            .flat_map(|n| n.gpus.iter().map(|g| (g.model.as_str(), g.memory_mib)))
            .collect();
        let gpu_classes: Vec<GpuClass> = classes
            .iter()
            .map(|(model, memory_mib)| GpuClass {
                model_lower: model.to_lowercase(),
                memory_mib: *memory_mib,
            })
            .collect();
        let class_of: HashMap<(&str, u64), u32> = classes
            .iter()
            .enumerate()
            .map(|(i, key)| (*key, i as u32))
            .collect();

        let mut slots = Vec::with_capacity(nodes.len());
        let mut sites: BTreeMap<(u32, u32), Site> = BTreeMap::new();
        for (idx, node) in nodes.iter().enumerate() {
            let mut devices: Vec<&GpuDevice> = node.gpus.iter().collect();
            devices.sort_by(|a, b| a.index.cmp(&b.index).then_with(|| a.uuid.cmp(&b.uuid)));
            let gpus: Vec<GpuSlot> = devices
                .iter()
                .map(|g| GpuSlot {
                    uuid: g.uuid.clone(),
                    // Every (model, memory) of the fleet was collected into `class_of` above.
                    class: class_of
                        .get(&(g.model.as_str(), g.memory_mib))
                        .copied()
                        .unwrap_or_default(),
                    healthy: g.healthy,
                    holder: None,
                })
                .collect();
            let healthy_gpus = gpus.iter().filter(|g| g.healthy).count() as u32;
            // Interned above from these very nodes, so both lookups succeed.
            let region = region_by_name
                .get(&node.region)
                .copied()
                .unwrap_or_default();
            let cluster = cluster_by_name
                .get(&node.cluster)
                .copied()
                .unwrap_or_default();
            let site = sites.entry((region, cluster)).or_insert_with(|| Site {
                region,
                cluster,
                cpu_nodes: Vec::new(),
                gpu_nodes: Vec::new(),
            });
            if gpus.is_empty() {
                site.cpu_nodes.push(idx as NodeIdx);
            } else {
                site.gpu_nodes.push(idx as NodeIdx);
            }
            slots.push(NodeSlot {
                id: node.id.clone(),
                region,
                cluster,
                health: node.health,
                labels: node.labels.clone(),
                cap_cpu: node.capacity.cpu_millis,
                cap_mem: node.capacity.memory_bytes,
                used_cpu: 0,
                used_mem: 0,
                gpus,
                healthy_gpus,
                free_gpus: healthy_gpus,
                allocs: Vec::new(),
            });
        }

        let node_by_id = slots
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i as NodeIdx))
            .collect();
        let mut scheduler = Self {
            nodes: slots,
            node_by_id,
            region_by_name,
            cluster_by_name,
            sites: sites.into_values().collect(),
            gpu_classes,
            allocs: Vec::new(),
            free_alloc_ids: Vec::new(),
            by_job: HashMap::new(),
        };

        let mut allocations: Vec<Allocation> = allocations.into_iter().collect();
        allocations.sort_by(|a, b| {
            (
                &a.node_id,
                &a.job_id,
                &a.gpu_uuids,
                a.priority,
                a.preemptible,
                a.resources,
                &a.project,
            )
                .cmp(&(
                    &b.node_id,
                    &b.job_id,
                    &b.gpu_uuids,
                    b.priority,
                    b.preemptible,
                    b.resources,
                    &b.project,
                ))
        });
        for alloc in allocations {
            scheduler.insert_existing(alloc);
        }
        Ok(scheduler)
    }

    /// Frees everything `job_id` holds (it finished, failed or was stopped) and returns its allocations,
    /// sorted by node id. Unknown jobs return nothing.
    pub fn release(&mut self, job_id: &str) -> Vec<Allocation> {
        let Some(ids) = self.by_job.remove(job_id) else {
            return Vec::new();
        };
        let mut released: Vec<Allocation> = ids
            .into_iter()
            .filter_map(|id| self.remove_alloc(id, false))
            .collect();
        released.sort_by(|a, b| (&a.node_id, &a.gpu_uuids).cmp(&(&b.node_id, &b.gpu_uuids)));
        released
    }

    /// The allocations `job_id` holds, in the order they were made.
    pub fn allocations_of<'s>(&'s self, job_id: &str) -> impl Iterator<Item = &'s Allocation> + 's {
        self.by_job
            .get(job_id)
            .map(|ids| ids.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|id| self.allocs.get(*id as usize)?.as_ref().map(|e| &e.alloc))
    }

    /// What is still free on a node: CPU, memory and healthy unallocated GPUs. `None` for unknown nodes.
    pub fn free_capacity(&self, node_id: &str) -> Option<Resources> {
        let node = &self.nodes[*self.node_by_id.get(node_id)? as usize];
        Some(Resources {
            cpu_millis: node.free_cpu(),
            memory_bytes: node.free_mem(),
            gpus: node.free_gpus,
        })
    }

    /// Charges an allocation that came from outside (the registry, or an eviction being undone), matching
    /// its GPUs by UUID.
    fn insert_existing(&mut self, alloc: Allocation) -> AllocId {
        let node = self.node_by_id.get(&alloc.node_id).copied();
        let mut gpu_slots = Vec::new();
        if let Some(idx) = node {
            let gpus = &self.nodes[idx as usize].gpus;
            for uuid in &alloc.gpu_uuids {
                let free_match = gpus.iter().enumerate().find(|(i, g)| {
                    g.uuid == *uuid && g.holder.is_none() && !gpu_slots.contains(&(*i as u32))
                });
                if let Some((i, _)) = free_match {
                    gpu_slots.push(i as u32);
                }
            }
        }
        self.insert_alloc(alloc, node, gpu_slots)
    }

    /// Records an allocation and charges its node and GPU slots.
    fn insert_alloc(
        &mut self,
        alloc: Allocation,
        node: Option<NodeIdx>,
        gpu_slots: Vec<u32>,
    ) -> AllocId {
        let id = self
            .free_alloc_ids
            .pop()
            .unwrap_or(self.allocs.len() as AllocId);
        if let Some(idx) = node {
            let slot = &mut self.nodes[idx as usize];
            slot.used_cpu = slot.used_cpu.saturating_add(alloc.resources.cpu_millis);
            slot.used_mem = slot.used_mem.saturating_add(alloc.resources.memory_bytes);
            for g in &gpu_slots {
                let gpu = &mut slot.gpus[*g as usize];
                gpu.holder = Some(id);
                if gpu.healthy {
                    slot.free_gpus -= 1;
                }
            }
            slot.allocs.push(id);
        }
        match self.by_job.get_mut(&alloc.job_id) {
            Some(ids) => ids.push(id),
            None => {
                self.by_job.insert(alloc.job_id.clone(), vec![id]);
            }
        }
        let entry = Some(AllocEntry {
            alloc,
            node,
            gpu_slots,
        });
        if id as usize == self.allocs.len() {
            self.allocs.push(entry);
        } else {
            self.allocs[id as usize] = entry;
        }
        id
    }

    /// Frees one allocation. `unlink_job` also removes it from its job's list (callers that already took
    /// the whole list pass false).
    fn remove_alloc(&mut self, id: AllocId, unlink_job: bool) -> Option<Allocation> {
        let entry = self.allocs.get_mut(id as usize)?.take()?;
        self.free_alloc_ids.push(id);
        if let Some(idx) = entry.node {
            let slot = &mut self.nodes[idx as usize];
            slot.used_cpu = slot
                .used_cpu
                .saturating_sub(entry.alloc.resources.cpu_millis);
            slot.used_mem = slot
                .used_mem
                .saturating_sub(entry.alloc.resources.memory_bytes);
            for g in &entry.gpu_slots {
                let gpu = &mut slot.gpus[*g as usize];
                gpu.holder = None;
                if gpu.healthy {
                    slot.free_gpus += 1;
                }
            }
            if let Some(pos) = slot.allocs.iter().position(|a| *a == id) {
                slot.allocs.swap_remove(pos);
            }
        }
        if unlink_job {
            if let Some(ids) = self.by_job.get_mut(&entry.alloc.job_id) {
                ids.retain(|a| *a != id);
                if ids.is_empty() {
                    self.by_job.remove(&entry.alloc.job_id);
                }
            }
        }
        Some(entry.alloc)
    }
}
