//! The idle-GPU signal: GPUs allocated to work but doing next to nothing for a while.
//!
//! Owns the pure bookkeeping from utilization samples and allocations to "idle for N" flags. It takes time as
//! an argument (a `Duration` since any fixed origin, e.g. the agent's start) and must never read a clock, do
//! I/O or guess: a GPU without a recent sample is never reported idle.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::GpuInfo;

/// When an allocated GPU counts as idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdlePolicy {
    /// A sample at or below this GPU utilization counts as idle.
    pub max_utilization_percent: u32,
    /// How long an allocated GPU must stay idle before it is reported.
    pub min_idle: Duration,
    /// Samples farther apart than this break an idle stretch (nobody saw what happened in between), and a GPU
    /// whose last sample is older than this is not reported.
    pub max_sample_gap: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            max_utilization_percent: 5,
            min_idle: Duration::from_secs(10 * 60),
            max_sample_gap: Duration::from_secs(2 * 60),
        }
    }
}

/// An allocated GPU that has been idle for `idle_for` (at least the policy's `min_idle`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleGpu {
    pub uuid: String,
    pub idle_for: Duration,
}

#[derive(Debug, Clone, Default)]
struct GpuState {
    /// When the GPU was last handed to work; `None` while free.
    allocated_since: Option<Duration>,
    last_sample: Option<Duration>,
    /// Start of the current run of idle samples.
    idle_since: Option<Duration>,
}

/// Tracks utilization per GPU UUID and reports allocated GPUs that stay near zero.
#[derive(Debug, Clone)]
pub struct IdleTracker {
    policy: IdlePolicy,
    gpus: BTreeMap<String, GpuState>,
}

impl IdleTracker {
    pub fn new(policy: IdlePolicy) -> IdleTracker {
        IdleTracker {
            policy,
            gpus: BTreeMap::new(),
        }
    }

    pub fn policy(&self) -> IdlePolicy {
        self.policy
    }

    /// Declares which GPUs are allocated now. A newly allocated GPU gets the full `min_idle` from `at` before it
    /// can be reported; GPUs not named are free and never reported.
    pub fn set_allocated<'a>(&mut self, uuids: impl IntoIterator<Item = &'a str>, at: Duration) {
        let allocated: std::collections::BTreeSet<&str> = uuids.into_iter().collect();
        for (uuid, state) in &mut self.gpus {
            if !allocated.contains(uuid.as_str()) {
                state.allocated_since = None;
            }
        }
        for uuid in allocated {
            let state = self.gpus.entry(uuid.to_string()).or_default();
            if state.allocated_since.is_none() {
                state.allocated_since = Some(at);
            }
        }
    }

    /// Records one utilization sample (`None`: the GPU could not say, which breaks an idle stretch). A sample
    /// older than the GPU's last one is ignored and `false` returned.
    pub fn record(
        &mut self,
        uuid: &str,
        utilization_gpu_percent: Option<u32>,
        at: Duration,
    ) -> bool {
        let policy = self.policy;
        let state = self.gpus.entry(uuid.to_string()).or_default();
        if state.last_sample.is_some_and(|last| at < last) {
            return false;
        }
        let continuous = state
            .last_sample
            .is_some_and(|last| at - last <= policy.max_sample_gap);
        let idle = utilization_gpu_percent.is_some_and(|u| u <= policy.max_utilization_percent);
        state.idle_since = match (idle, state.idle_since) {
            (false, _) => None,
            (true, Some(since)) if continuous => Some(since),
            (true, _) => Some(at),
        };
        state.last_sample = Some(at);
        true
    }

    /// Records a sample for every GPU of an inventory; an unhealthy GPU counts as unknown.
    pub fn observe(&mut self, gpus: &[GpuInfo], at: Duration) {
        for gpu in gpus.iter().filter(|g| !g.uuid.is_empty()) {
            let utilization = if gpu.healthy {
                gpu.utilization_gpu_percent
            } else {
                None
            };
            self.record(&gpu.uuid, utilization, at);
        }
    }

    /// Stops tracking a GPU that left the node.
    pub fn forget(&mut self, uuid: &str) {
        self.gpus.remove(uuid);
    }

    /// Allocated GPUs idle for at least `min_idle` at `at`, sorted by UUID.
    pub fn idle_gpus(&self, at: Duration) -> Vec<IdleGpu> {
        self.gpus
            .iter()
            .filter_map(|(uuid, state)| {
                let allocated_since = state.allocated_since?;
                let last = state.last_sample?;
                if at < last || at - last > self.policy.max_sample_gap {
                    return None;
                }
                let since = state.idle_since?.max(allocated_since);
                let idle_for = at.checked_sub(since)?;
                (idle_for >= self.policy.min_idle).then(|| IdleGpu {
                    uuid: uuid.clone(),
                    idle_for,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn tracker() -> IdleTracker {
        IdleTracker::new(IdlePolicy {
            max_utilization_percent: 5,
            min_idle: 10 * MIN,
            max_sample_gap: 2 * MIN,
        })
    }

    /// One sample per minute for `a` from minute `from` to `to` inclusive.
    fn samples(t: &mut IdleTracker, uuid: &str, util: Option<u32>, from: u32, to: u32) {
        for m in from..=to {
            assert!(t.record(uuid, util, MIN * m));
        }
    }

    fn idle(t: &IdleTracker, minute: u32) -> Vec<(String, u64)> {
        t.idle_gpus(MIN * minute)
            .into_iter()
            .map(|g| (g.uuid, g.idle_for.as_secs() / 60))
            .collect()
    }

    #[test]
    fn allocated_and_quiet_for_long_enough_is_idle() {
        let mut t = tracker();
        t.set_allocated(["a", "b"], Duration::ZERO);
        samples(&mut t, "a", Some(0), 0, 9);
        samples(&mut t, "b", Some(97), 0, 9);
        assert!(idle(&t, 9).is_empty(), "nine minutes is not yet ten");
        samples(&mut t, "a", Some(5), 10, 12);
        samples(&mut t, "b", Some(97), 10, 12);
        assert_eq!(idle(&t, 12), vec![("a".to_string(), 12)]);
    }

    #[test]
    fn free_gpus_are_never_reported_and_allocation_restarts_the_clock() {
        let mut t = tracker();
        samples(&mut t, "a", Some(0), 0, 30);
        assert!(idle(&t, 30).is_empty(), "not allocated");
        t.set_allocated(["a"], MIN * 30);
        samples(&mut t, "a", Some(0), 31, 39);
        assert!(idle(&t, 39).is_empty(), "allocated nine minutes ago");
        samples(&mut t, "a", Some(0), 40, 40);
        assert_eq!(idle(&t, 40), vec![("a".to_string(), 10)]);
        t.set_allocated([], MIN * 41);
        samples(&mut t, "a", Some(0), 41, 41);
        assert!(idle(&t, 41).is_empty(), "released");
    }

    #[test]
    fn a_busy_or_unknown_sample_breaks_the_stretch() {
        let mut t = tracker();
        t.set_allocated(["a"], Duration::ZERO);
        samples(&mut t, "a", Some(0), 0, 8);
        samples(&mut t, "a", Some(6), 9, 9);
        samples(&mut t, "a", Some(0), 10, 19);
        assert_eq!(idle(&t, 19), Vec::<(String, u64)>::new());
        samples(&mut t, "a", Some(0), 20, 20);
        assert_eq!(idle(&t, 20), vec![("a".to_string(), 10)]);
        samples(&mut t, "a", None, 21, 21);
        assert!(idle(&t, 21).is_empty());
    }

    #[test]
    fn gaps_and_stale_samples_are_not_idleness() {
        let mut t = tracker();
        t.set_allocated(["a"], Duration::ZERO);
        samples(&mut t, "a", Some(0), 0, 5);
        samples(&mut t, "a", Some(0), 9, 14); // a four-minute hole: the stretch restarts at 9
        assert!(idle(&t, 14).is_empty());
        samples(&mut t, "a", Some(0), 15, 19);
        assert_eq!(idle(&t, 19), vec![("a".to_string(), 10)]);
        assert_eq!(
            idle(&t, 21),
            vec![("a".to_string(), 12)],
            "last sample two minutes old still counts"
        );
        assert!(idle(&t, 22).is_empty(), "last sample three minutes old");
    }

    #[test]
    fn out_of_order_samples_are_ignored() {
        let mut t = tracker();
        t.set_allocated(["a"], Duration::ZERO);
        samples(&mut t, "a", Some(0), 0, 10);
        assert!(!t.record("a", Some(100), MIN * 3));
        assert_eq!(idle(&t, 10), vec![("a".to_string(), 10)]);
        assert!(t.idle_gpus(MIN * 9).is_empty(), "asking about the past");
        t.forget("a");
        assert!(idle(&t, 10).is_empty());
    }

    #[test]
    fn observe_reads_inventory_rows() {
        let gpu = |uuid: &str, util: Option<u32>, healthy: bool| GpuInfo {
            index: 0,
            uuid: uuid.into(),
            model: "m".into(),
            memory_total_mib: 1,
            memory_used_mib: 0,
            compute_capability: None,
            mig_enabled: None,
            utilization_gpu_percent: util,
            utilization_memory_percent: None,
            temperature_c: None,
            power_draw_w: None,
            power_limit_w: None,
            pci_bus_id: String::new(),
            healthy,
        };
        let mut t = tracker();
        t.set_allocated(["a", "b", "c"], Duration::ZERO);
        for m in 0..=10 {
            t.observe(
                &[
                    gpu("a", Some(1), true),
                    gpu("b", Some(1), false),
                    gpu("c", None, true),
                ],
                MIN * m,
            );
        }
        assert_eq!(idle(&t, 10), vec![("a".to_string(), 10)]);
    }
}
