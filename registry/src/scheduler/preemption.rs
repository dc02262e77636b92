//! Preemption planning: for a job that fits nowhere, the node where evicting the fewest lower-priority
//! preemptible jobs (then the lowest-priority ones) makes it fit.
//!
//! Owns the victim search and the rule of who may evict whom ([`may_evict`], which the state machine
//! re-checks when it applies an eviction). It only plans: the caller evicts and can undo. It must never
//! choose a job of equal or higher priority, nor one that is not preemptible, nor another project's job at
//! or above the preempting project's ceiling, and never a node the job's hard filters exclude.

use super::placement::{Freed, Ranked, Resolved};
use super::{FilterCounts, NodeIdx, NodeSlot, Scheduler};

/// Whether a preempting job (`project`, `priority`, its project's `ceiling`) may evict a job (`project`,
/// `priority`, `preemptible`): the victim must be preemptible and of strictly lower priority; a victim of
/// another project must also be below the ceiling, and a ceiling of 0 or less forbids evicting other
/// projects' jobs at all.
pub fn may_evict(preemptor: (&str, i32, i32), victim: (&str, i32, bool)) -> bool {
    let (by_project, by_priority, ceiling) = preemptor;
    let (project, priority, preemptible) = victim;
    if !preemptible || priority >= by_priority {
        return false;
    }
    by_project == project || (ceiling > 0 && priority < ceiling)
}

/// Largest number of victim combinations examined on one node before settling for a greedy set.
const SEARCH_BUDGET: usize = 4096;

/// The chosen node and the jobs to evict there (sorted by job id).
#[derive(Debug)]
pub(super) struct PreemptionPlan {
    pub(super) node: NodeIdx,
    pub(super) victims: Vec<String>,
}

/// What evicting one job frees on the node being considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Victim<'a> {
    pub(super) job_id: &'a str,
    pub(super) priority: i32,
    pub(super) cpu: u64,
    pub(super) mem: u64,
    /// Healthy GPUs it holds that satisfy the preempting job.
    pub(super) gpus: u32,
}

/// What is missing on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Deficit {
    pub(super) cpu: u64,
    pub(super) mem: u64,
    pub(super) gpus: u32,
}

impl Deficit {
    fn covered_by<'v>(&self, set: impl IntoIterator<Item = &'v Victim<'v>>) -> bool {
        let (mut cpu, mut mem, mut gpus) = (0u64, 0u64, 0u32);
        for v in set {
            cpu = cpu.saturating_add(v.cpu);
            mem = mem.saturating_add(v.mem);
            gpus = gpus.saturating_add(v.gpus);
        }
        cpu >= self.cpu && mem >= self.mem && gpus >= self.gpus
    }

    fn helped_by(&self, v: &Victim<'_>) -> bool {
        (self.cpu > 0 && v.cpu > 0) || (self.mem > 0 && v.mem > 0) || (self.gpus > 0 && v.gpus > 0)
    }
}

/// How costly an eviction set is; smaller is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cost {
    count: usize,
    max_priority: i32,
    priority_sum: i64,
}

fn cost(set: &[&Victim<'_>]) -> Cost {
    Cost {
        count: set.len(),
        max_priority: set.iter().map(|v| v.priority).max().unwrap_or(i32::MIN),
        priority_sum: set.iter().map(|v| i64::from(v.priority)).sum(),
    }
}

/// The smallest set of `victims` (sorted by priority, then job id) that covers `deficit`, preferring
/// lower priorities among sets of the same size; searches sets of at most `max_count` victims. Exact
/// within [`SEARCH_BUDGET`] combinations, otherwise a greedy set from which no victim can be dropped.
/// Returns indexes into `victims`, ascending.
pub(super) fn smallest_cover(
    victims: &[Victim<'_>],
    deficit: Deficit,
    max_count: usize,
) -> Option<Vec<usize>> {
    if !deficit.covered_by(victims) {
        return None;
    }
    let n = victims.len();
    let mut examined = 0usize;
    for k in 1..=n.min(max_count) {
        let mut combo: Vec<usize> = (0..k).collect();
        let mut best: Option<(Cost, Vec<usize>)> = None;
        loop {
            examined += 1;
            if examined > SEARCH_BUDGET {
                // A set found at this size is already of the smallest size; otherwise settle.
                return match best {
                    Some((_, set)) => Some(set),
                    None => greedy_cover(victims, deficit).filter(|set| set.len() <= max_count),
                };
            }
            let set: Vec<&Victim<'_>> = combo.iter().map(|i| &victims[*i]).collect();
            if deficit.covered_by(set.iter().copied()) {
                let c = cost(&set);
                if best.as_ref().is_none_or(|(b, _)| c < *b) {
                    best = Some((c, combo.clone()));
                }
            }
            // Next combination in lexicographic order.
            let Some(i) = (0..k).rev().find(|i| combo[*i] < n - k + i) else {
                break;
            };
            combo[i] += 1;
            for j in i + 1..k {
                combo[j] = combo[j - 1] + 1;
            }
        }
        if let Some((_, set)) = best {
            return Some(set);
        }
    }
    None
}

/// Takes victims lowest priority first until the deficit is covered, then drops every victim (highest
/// priority first) that the rest can do without.
fn greedy_cover(victims: &[Victim<'_>], deficit: Deficit) -> Option<Vec<usize>> {
    let mut chosen = Vec::new();
    for i in 0..victims.len() {
        chosen.push(i);
        if deficit.covered_by(chosen.iter().map(|i| &victims[*i])) {
            break;
        }
    }
    if !deficit.covered_by(chosen.iter().map(|i| &victims[*i])) {
        return None;
    }
    let mut pos = chosen.len();
    while pos > 0 {
        pos -= 1;
        let without: Vec<usize> = chosen
            .iter()
            .enumerate()
            .filter(|(p, _)| *p != pos)
            .map(|(_, i)| *i)
            .collect();
        if deficit.covered_by(without.iter().map(|i| &victims[*i])) {
            chosen = without;
        }
    }
    Some(chosen)
}

impl Scheduler {
    /// The node and victims for preempting on behalf of `r`, or `None` when no eviction of lower-priority
    /// preemptible jobs on a single node makes one replica fit.
    pub(super) fn plan_preemption(&self, r: &Resolved<'_>) -> Option<PreemptionPlan> {
        let mut best: Option<(Cost, Ranked, Vec<String>)> = None;
        let mut ignored = FilterCounts::default();
        self.visit_buckets(r, &mut ignored, |idx, node, _| {
            if self.check_static(node, r).is_err() {
                return;
            }
            let Some(deficit) = self.deficit(node, r) else {
                return;
            };
            let victims = self.victims_on(node, r, deficit);
            let max_count = best.as_ref().map_or(usize::MAX, |(c, _, _)| c.count);
            let Some(set) = smallest_cover(&victims, deficit, max_count) else {
                return;
            };
            let chosen: Vec<&Victim<'_>> = set.iter().map(|i| &victims[*i]).collect();
            let c = cost(&chosen);
            let freed = Freed {
                cpu: chosen.iter().map(|v| v.cpu).sum(),
                mem: chosen.iter().map(|v| v.mem).sum(),
                gpus: chosen.iter().map(|v| v.gpus).sum(),
            };
            let ranked = Ranked {
                key: Self::placement_key(node, r, freed),
                node: idx,
            };
            let better = match &best {
                None => true,
                Some((bc, br, _)) => c < *bc || (c == *bc && ranked.beats(br)),
            };
            if better {
                let mut ids: Vec<String> = chosen.iter().map(|v| v.job_id.to_owned()).collect();
                ids.sort();
                best = Some((c, ranked, ids));
            }
        });
        best.map(|(_, ranked, victims)| PreemptionPlan {
            node: ranked.node,
            victims,
        })
    }

    /// What `node` lacks for one replica, or `None` when even an empty node of this size could not hold
    /// it (or it already fits, which the caller has ruled out).
    fn deficit(&self, node: &NodeSlot, r: &Resolved<'_>) -> Option<Deficit> {
        let req = &r.job.resources;
        let matching_healthy = node
            .gpus
            .iter()
            .filter(|g| g.healthy && Self::gpu_class_fits(r, g.class))
            .count() as u32;
        if node.cap_cpu < req.cpu_millis
            || node.cap_mem < req.memory_bytes
            || (r.needs_gpus && matching_healthy < req.gpus)
        {
            return None;
        }
        let free_gpus = if r.needs_gpus {
            node.gpus
                .iter()
                .filter(|g| g.healthy && g.holder.is_none() && Self::gpu_class_fits(r, g.class))
                .count() as u32
        } else {
            0
        };
        let deficit = Deficit {
            cpu: req.cpu_millis.saturating_sub(node.free_cpu()),
            mem: req.memory_bytes.saturating_sub(node.free_mem()),
            gpus: if r.needs_gpus {
                req.gpus.saturating_sub(free_gpus)
            } else {
                0
            },
        };
        (deficit
            != Deficit {
                cpu: 0,
                mem: 0,
                gpus: 0,
            })
        .then_some(deficit)
    }

    /// The jobs on `node` that `r` may evict and that help with `deficit`, grouped per job (a job may
    /// hold several allocations on one node), sorted by priority then job id.
    fn victims_on<'s>(
        &'s self,
        node: &NodeSlot,
        r: &Resolved<'_>,
        deficit: Deficit,
    ) -> Vec<Victim<'s>> {
        let mut entries: Vec<_> = node
            .allocs
            .iter()
            .filter_map(|id| self.allocs.get(*id as usize)?.as_ref())
            .collect();
        entries.sort_by(|a, b| a.alloc.job_id.cmp(&b.alloc.job_id));
        let mut victims: Vec<Victim<'s>> = Vec::new();
        let mut eligible = true;
        for (pos, entry) in entries.iter().enumerate() {
            let a = &entry.alloc;
            let first_of_job = pos == 0 || entries[pos - 1].alloc.job_id != a.job_id;
            if first_of_job {
                if let Some(last) = victims.last() {
                    if !eligible || !deficit.helped_by(last) {
                        victims.pop();
                    }
                }
                eligible = true;
                victims.push(Victim {
                    job_id: a.job_id.as_str(),
                    priority: a.priority,
                    cpu: 0,
                    mem: 0,
                    gpus: 0,
                });
            }
            eligible &= may_evict(
                (&r.job.project, r.job.priority, r.job.preemption_ceiling),
                (&a.project, a.priority, a.preemptible),
            );
            if let Some(v) = victims.last_mut() {
                v.priority = v.priority.max(a.priority);
                v.cpu = v.cpu.saturating_add(a.resources.cpu_millis);
                v.mem = v.mem.saturating_add(a.resources.memory_bytes);
                v.gpus += entry
                    .gpu_slots
                    .iter()
                    .filter(|s| {
                        let g = &node.gpus[**s as usize];
                        g.healthy && Self::gpu_class_fits(r, g.class)
                    })
                    .count() as u32;
            }
        }
        if let Some(last) = victims.last() {
            if !eligible || !deficit.helped_by(last) {
                victims.pop();
            }
        }
        victims.sort_by(|a, b| (a.priority, a.job_id).cmp(&(b.priority, b.job_id)));
        victims
    }
}
