//! Placing one job: resolving its request against the fleet's interned names, filtering and scoring the
//! nodes it may use, reserving what it gets, and undoing a gang's partial work.
//!
//! Owns the filter order and the scoring; must never allocate per visited node (the per-node checks are
//! integer comparisons over the index) and never consult anything but the scheduler's own index.

use super::decision::{describe_unplaceable, Filter};
use super::{
    Allocation, Assignment, FilterCounts, JobPlacement, JobRequest, NodeHealth, NodeIdx, NodeSlot,
    PlacementDecision, Resources, Scheduler, Strategy,
};

/// Utilization is scored in parts per million.
const PPM: u64 = 1_000_000;
const CPU_WEIGHT: u64 = 1;
const MEMORY_WEIGHT: u64 = 1;
const GPU_WEIGHT: u64 = 2;

/// Which interned region or cluster a job accepts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope {
    Any,
    Only(u32),
    /// The job names one the fleet does not have.
    Nowhere,
}

impl Scope {
    fn resolve(name: Option<&str>, lookup: &std::collections::HashMap<String, u32>) -> Self {
        match name {
            None => Scope::Any,
            Some(name) => lookup
                .get(name)
                .map_or(Scope::Nowhere, |id| Scope::Only(*id)),
        }
    }

    pub(super) fn matches(self, id: u32) -> bool {
        match self {
            Scope::Any => true,
            Scope::Only(want) => want == id,
            Scope::Nowhere => false,
        }
    }
}

/// Which GPU classes satisfy a job's model and memory requirements.
#[derive(Debug)]
pub(super) struct GpuMatch {
    model_ok: Vec<bool>,
    fits: Vec<bool>,
}

/// A job's request, resolved once against the index so visiting a node does no string work.
#[derive(Debug)]
pub(super) struct Resolved<'j> {
    pub(super) job: &'j JobRequest,
    region: Scope,
    cluster: Scope,
    pub(super) needs_gpus: bool,
    /// `None` when any healthy GPU will do.
    gpu_match: Option<GpuMatch>,
    /// Preferred region and cluster (`Scope::Any` for "any cluster of the region").
    locality: Option<(u32, Scope)>,
}

/// How good a node is for a job; larger is better. Ties go to the smaller node index (= node id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PlacementKey {
    locality: u8,
    keeps_gpus_free: u8,
    fit: u64,
}

/// A candidate node with its key.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ranked {
    pub(super) key: PlacementKey,
    pub(super) node: NodeIdx,
}

impl Ranked {
    pub(super) fn beats(&self, other: &Ranked) -> bool {
        self.key > other.key || (self.key == other.key && self.node < other.node)
    }
}

/// Resources freed on a node by evicting allocations (for scoring a node as it would be afterwards).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Freed {
    pub(super) cpu: u64,
    pub(super) mem: u64,
    pub(super) gpus: u32,
}

/// What a placement did, so a failing gang can undo it.
#[derive(Debug, Default)]
pub(super) struct Txn {
    reserved: Vec<super::AllocId>,
    evicted: Vec<Allocation>,
    preempted: Vec<String>,
}

impl Txn {
    pub(super) fn record_eviction(&mut self, job_id: &str, allocations: Vec<Allocation>) {
        self.preempted.push(job_id.to_owned());
        self.evicted.extend(allocations);
    }
}

impl Scheduler {
    /// Decides where every replica of `job` goes and reserves it, or leaves everything as it was and
    /// says why the job must wait. A job that already holds allocations is refused (release it first).
    pub fn place(&mut self, job: &JobRequest) -> PlacementDecision {
        let nodes = self.nodes.len() as u32;
        if job.replicas == 0 {
            return pending(
                "the job asks for 0 replicas; at least 1 is needed".to_owned(),
                FilterCounts {
                    nodes,
                    ..FilterCounts::default()
                },
            );
        }
        if let Some(held) = self.by_job.get(&job.id) {
            return pending(
                format!(
                    "job {} already holds {} allocation(s); release them before placing it again",
                    job.id,
                    held.len()
                ),
                FilterCounts {
                    nodes,
                    ..FilterCounts::default()
                },
            );
        }

        let resolved = self.resolve(job);
        let mut txn = Txn::default();
        let mut assignments = Vec::with_capacity(job.replicas as usize);
        for replica in 0..job.replicas {
            match self.place_replica(&resolved, &mut txn) {
                Ok(assignment) => assignments.push(assignment),
                Err(counts) => {
                    self.rollback(txn);
                    let mut reason = describe_unplaceable(job, &counts);
                    if job.replicas > 1 {
                        reason = format!(
                            "gang of {} replicas, none placed (replica {} does not fit): {reason}",
                            job.replicas,
                            replica + 1
                        );
                    }
                    if job.preemption {
                        reason.push_str(
                            "; preemption: no node has enough lower-priority preemptible work to evict",
                        );
                    }
                    return pending(reason, counts);
                }
            }
        }
        let mut preempted = txn.preempted;
        preempted.sort();
        preempted.dedup();
        PlacementDecision::Placed {
            assignments,
            preempted,
        }
    }

    /// Places `jobs` in order of priority (highest first), then id, reserving as it goes.
    pub fn place_all(&mut self, jobs: &[JobRequest]) -> Vec<JobPlacement> {
        let mut order: Vec<&JobRequest> = jobs.iter().collect();
        order.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        order
            .into_iter()
            .map(|job| JobPlacement {
                job_id: job.id.clone(),
                decision: self.place(job),
            })
            .collect()
    }

    pub(super) fn resolve<'j>(&self, job: &'j JobRequest) -> Resolved<'j> {
        let r = &job.resources;
        let needs_gpus = r.gpus > 0;
        let gpu_match = if needs_gpus && (r.gpu_model.is_some() || r.gpu_min_memory_mib.is_some()) {
            let model = r.gpu_model.as_deref().unwrap_or("").to_lowercase();
            let min_mib = r.gpu_min_memory_mib.unwrap_or(0);
            let model_ok: Vec<bool> = self
                .gpu_classes
                .iter()
                .map(|c| c.model_lower.contains(&model))
                .collect();
            let fits = self
                .gpu_classes
                .iter()
                .zip(&model_ok)
                .map(|(c, ok)| *ok && c.memory_mib >= min_mib)
                .collect();
            Some(GpuMatch { model_ok, fits })
        } else {
            None
        };
        let locality = job.data_locality.as_ref().and_then(|l| {
            let region = self.region_by_name.get(&l.region)?;
            Some((
                *region,
                Scope::resolve(l.cluster.as_deref(), &self.cluster_by_name),
            ))
        });
        Resolved {
            job,
            region: Scope::resolve(job.constraints.region.as_deref(), &self.region_by_name),
            cluster: Scope::resolve(job.constraints.cluster.as_deref(), &self.cluster_by_name),
            needs_gpus,
            gpu_match,
            locality,
        }
    }

    /// Calls `visit` for every node in the buckets the job may use, and counts the nodes of the other
    /// buckets under the region, cluster and has-GPUs filters.
    pub(super) fn visit_buckets(
        &self,
        r: &Resolved<'_>,
        counts: &mut FilterCounts,
        mut visit: impl FnMut(NodeIdx, &NodeSlot, &mut FilterCounts),
    ) {
        counts.nodes = self.nodes.len() as u32;
        for site in &self.sites {
            if !r.region.matches(site.region) {
                counts.add(Filter::OutOfRegion, site.len());
                continue;
            }
            if !r.cluster.matches(site.cluster) {
                counts.add(Filter::OutOfCluster, site.len());
                continue;
            }
            if r.needs_gpus {
                counts.add(Filter::WithoutGpus, site.cpu_nodes.len() as u32);
            } else {
                for idx in &site.cpu_nodes {
                    visit(*idx, &self.nodes[*idx as usize], counts);
                }
            }
            for idx in &site.gpu_nodes {
                visit(*idx, &self.nodes[*idx as usize], counts);
            }
        }
    }

    /// The filters that do not depend on what is currently allocated: health, labels, GPU model and
    /// memory.
    pub(super) fn check_static(&self, node: &NodeSlot, r: &Resolved<'_>) -> Result<(), Filter> {
        match node.health {
            NodeHealth::Ready => {}
            NodeHealth::Unreachable => return Err(Filter::Unreachable),
            NodeHealth::Lost => return Err(Filter::Lost),
            NodeHealth::Draining => return Err(Filter::Draining),
            NodeHealth::NotAdmitted => return Err(Filter::NotAdmitted),
        }
        Self::check_fixed(node, r)
    }

    /// The filters that only a different node could pass: labels, GPU model and memory.
    pub(super) fn check_fixed(node: &NodeSlot, r: &Resolved<'_>) -> Result<(), Filter> {
        let labels = &r.job.constraints.labels;
        if !labels.is_empty()
            && !labels
                .iter()
                .all(|(k, v)| node.labels.get(k).is_some_and(|have| have == v))
        {
            return Err(Filter::LabelMismatch);
        }
        if let Some(m) = &r.gpu_match {
            if !node.gpus.iter().any(|g| m.model_ok[g.class as usize]) {
                return Err(Filter::GpuModelMismatch);
            }
            if !node.gpus.iter().any(|g| m.fits[g.class as usize]) {
                return Err(Filter::GpuMemoryTooSmall);
            }
        }
        Ok(())
    }

    /// Whether a GPU slot's class satisfies the job.
    pub(super) fn gpu_class_fits(r: &Resolved<'_>, class: u32) -> bool {
        r.gpu_match.as_ref().is_none_or(|m| m.fits[class as usize])
    }

    /// Healthy GPUs on `node` that no allocation holds and that satisfy the job.
    fn free_matching_gpus(node: &NodeSlot, r: &Resolved<'_>) -> u32 {
        if r.gpu_match.is_none() {
            return node.free_gpus;
        }
        node.gpus
            .iter()
            .filter(|g| g.healthy && g.holder.is_none() && Self::gpu_class_fits(r, g.class))
            .count() as u32
    }

    fn check_free(node: &NodeSlot, r: &Resolved<'_>) -> Result<(), Filter> {
        let req = &r.job.resources;
        if node.free_cpu() < req.cpu_millis {
            return Err(Filter::InsufficientCpu);
        }
        if node.free_mem() < req.memory_bytes {
            return Err(Filter::InsufficientMemory);
        }
        if r.needs_gpus && Self::free_matching_gpus(node, r) < req.gpus {
            return Err(Filter::InsufficientGpus);
        }
        Ok(())
    }

    /// How good `node` is for the job, as it would be after evicting `freed` and placing one replica.
    pub(super) fn placement_key(node: &NodeSlot, r: &Resolved<'_>, freed: Freed) -> PlacementKey {
        let (locality, keeps_gpus_free) = Self::preference(node, r);
        PlacementKey {
            locality,
            keeps_gpus_free,
            fit: Self::fit(node, r, freed),
        }
    }

    /// The first two parts of the [`PlacementKey`]: data locality, then keeping GPU nodes for GPU work.
    fn preference(node: &NodeSlot, r: &Resolved<'_>) -> (u8, u8) {
        let locality = match r.locality {
            None => 0,
            Some((region, _)) if region != node.region => 0,
            Some((_, cluster)) if cluster.matches(node.cluster) => 2,
            Some(_) => 1,
        };
        (locality, u8::from(!r.needs_gpus && node.gpus.is_empty()))
    }

    /// The strategy's fit score (see the module documentation).
    fn fit(node: &NodeSlot, r: &Resolved<'_>, freed: Freed) -> u64 {
        let req = &r.job.resources;
        let mut weighted = 0u64;
        let mut weights = 0u64;
        let mut add = |used: u64, freed: u64, request: u64, capacity: u64, weight: u64| {
            if capacity == 0 {
                return;
            }
            let after = used
                .saturating_sub(freed)
                .saturating_add(request)
                .min(capacity);
            weighted += weight * utilization_ppm(after, capacity);
            weights += weight;
        };
        add(
            node.used_cpu,
            freed.cpu,
            req.cpu_millis,
            node.cap_cpu,
            CPU_WEIGHT,
        );
        add(
            node.used_mem,
            freed.mem,
            req.memory_bytes,
            node.cap_mem,
            MEMORY_WEIGHT,
        );
        if r.needs_gpus {
            add(
                u64::from(node.healthy_gpus - node.free_gpus),
                u64::from(freed.gpus),
                u64::from(req.gpus),
                u64::from(node.healthy_gpus),
                GPU_WEIGHT,
            );
        }
        let utilization = weighted.checked_div(weights).unwrap_or(0);
        match r.job.strategy {
            Strategy::BinPack => utilization,
            Strategy::Spread => PPM - utilization,
        }
    }

    /// The best node that fits one replica right now, or the filter counts when none does.
    fn best_fit(&self, r: &Resolved<'_>) -> Result<NodeIdx, FilterCounts> {
        let mut counts = FilterCounts::default();
        let mut best: Option<Ranked> = None;
        self.visit_buckets(r, &mut counts, |idx, node, counts| {
            let verdict = self
                .check_static(node, r)
                .and_then(|()| Self::check_free(node, r));
            match verdict {
                Err(filter) => counts.add(filter, 1),
                Ok(()) => {
                    let (locality, keeps_gpus_free) = Self::preference(node, r);
                    if best.as_ref().is_some_and(|b| {
                        (locality, keeps_gpus_free) < (b.key.locality, b.key.keeps_gpus_free)
                    }) {
                        // Loses on preference whatever its fit; skip the arithmetic.
                        return;
                    }
                    let ranked = Ranked {
                        key: PlacementKey {
                            locality,
                            keeps_gpus_free,
                            fit: Self::fit(node, r, Freed::default()),
                        },
                        node: idx,
                    };
                    if best.as_ref().is_none_or(|b| ranked.beats(b)) {
                        best = Some(ranked);
                    }
                }
            }
        });
        best.map(|b| b.node).ok_or(counts)
    }

    /// Places one replica, preempting if the job allows it and nothing fits otherwise.
    fn place_replica(
        &mut self,
        r: &Resolved<'_>,
        txn: &mut Txn,
    ) -> Result<Assignment, FilterCounts> {
        let counts = match self.best_fit(r) {
            Ok(node) => return Ok(self.reserve(node, r, txn)),
            Err(counts) => counts,
        };
        if !r.job.preemption {
            return Err(counts);
        }
        let Some(plan) = self.plan_preemption(r) else {
            return Err(counts);
        };
        for victim in &plan.victims {
            let released = self.release(victim);
            txn.record_eviction(victim, released);
        }
        let node = &self.nodes[plan.node as usize];
        if self
            .check_static(node, r)
            .and_then(|()| Self::check_free(node, r))
            .is_err()
        {
            // The plan freed what the check needs by construction; should that ever not hold, the job
            // stays pending and the caller's rollback restores the victims.
            return Err(counts);
        }
        Ok(self.reserve(plan.node, r, txn))
    }

    /// Reserves one replica on `node_idx`, which must pass the free-capacity check for `r`.
    fn reserve(&mut self, node_idx: NodeIdx, r: &Resolved<'_>, txn: &mut Txn) -> Assignment {
        let req = &r.job.resources;
        let node = &self.nodes[node_idx as usize];
        let gpu_slots: Vec<u32> = if r.needs_gpus {
            node.gpus
                .iter()
                .enumerate()
                .filter(|(_, g)| {
                    g.healthy && g.holder.is_none() && Self::gpu_class_fits(r, g.class)
                })
                .take(req.gpus as usize)
                .map(|(i, _)| i as u32)
                .collect()
        } else {
            Vec::new()
        };
        let gpu_uuids: Vec<String> = gpu_slots
            .iter()
            .map(|i| node.gpus[*i as usize].uuid.clone())
            .collect();
        let resources = Resources {
            cpu_millis: req.cpu_millis,
            memory_bytes: req.memory_bytes,
            gpus: req.gpus,
        };
        let node_id = node.id.clone();
        let alloc = Allocation {
            job_id: r.job.id.clone(),
            node_id: node_id.clone(),
            resources,
            gpu_uuids: gpu_uuids.clone(),
            priority: r.job.priority,
            preemptible: r.job.preemptible,
            project: r.job.project.clone(),
        };
        let id = self.insert_alloc(alloc, Some(node_idx), gpu_slots);
        txn.reserved.push(id);
        Assignment {
            node_id,
            gpu_uuids,
            resources,
        }
    }

    /// Undoes a failed gang: frees its reservations, then restores what it evicted.
    fn rollback(&mut self, txn: Txn) {
        for id in txn.reserved.into_iter().rev() {
            self.remove_alloc(id, true);
        }
        for alloc in txn.evicted {
            self.insert_existing(alloc);
        }
    }
}

/// `used / capacity` in parts per million (`used <= capacity`, `capacity > 0`). Both are scaled down to
/// at most 44 bits first so the product fits in a `u64`: one 64-bit division per dimension, no 128-bit
/// arithmetic on the hot path.
fn utilization_ppm(used: u64, capacity: u64) -> u64 {
    let shift = (u64::BITS - capacity.leading_zeros()).saturating_sub(44);
    let (used, capacity) = (used >> shift, (capacity >> shift).max(1));
    used * PPM / capacity
}

fn pending(reason: String, filtered: FilterCounts) -> PlacementDecision {
    PlacementDecision::Pending { reason, filtered }
}
