//! The dispatcher: the leader's scheduling pass, from pending jobs to one `PlaceJobs` command.
//!
//! Owns [`plan`], the pure step from the replicated state to a batch of [`PlacementOp`]s (it builds a
//! [`Scheduler`] over the nodes and the allocations of scheduled and running jobs, places the pending jobs
//! and records why the rest wait; a node an operator drains is offered as `Draining`, so nothing new lands
//! there; a job whose project's running quota it would exceed waits, saying so, and never reaches the
//! scheduler, so it cannot evict anything either), and [`Dispatcher`], the controller that runs a pass
//! whenever the applied state moved. It must never start or stop anything itself: agents learn their
//! assignments from the committed state (`AgentSync`), and the state machine re-checks every placement when
//! it applies it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{Controller, Tick, Wake};
use crate::scheduler::{
    Allocation, JobRequest, Locality, NodeHealth, NodeView, PlacementDecision, Resources, Scheduler,
};
use crate::state::{
    job_reservation, running_quota_excess, JobOp, JobRecord, JobSpec, NodeHealthState, Op,
    PlacementOp, RegistryState, ReplicaPlacement,
};

mod dry_run;
pub use dry_run::{never_placeable, plan_job, Feasibility, JobPlan};

/// Most placements proposed in one command; the rest wait for the next pass.
pub const MAX_PLACEMENTS_PER_PASS: usize = 2_000;

/// The leader's scheduling pass as a controller: runs [`plan`] whenever the applied state moved since the
/// last pass and proposes the result as one `PlaceJobs` command.
#[derive(Debug, Clone, Copy)]
pub struct Dispatcher {
    /// How often the leader looks whether the state moved.
    pub tick: Duration,
}

impl Controller for Dispatcher {
    fn name(&self) -> &'static str {
        "dispatcher"
    }

    fn wake(&self) -> Wake {
        Wake::OnChange(self.tick)
    }

    fn quiet(&self) -> bool {
        true
    }

    fn decide(&mut self, tick: &Tick<'_>) -> Vec<Op> {
        let placements = plan(tick.state);
        if placements.is_empty() {
            return Vec::new();
        }
        vec![Op::Jobs(JobOp::PlaceJobs { placements })]
    }
}

/// The scheduler's view of a registered node. A ready node that is not admitted (pending approval,
/// quarantined, or whose agent identity is denied) is `NotAdmitted`, and one an operator drains is
/// `Draining`: neither gets new work; an unreachable or lost one stays what it is.
fn node_view(state: &RegistryState, node: &crate::state::NodeRecord) -> NodeView {
    let admitted = node.admitted() && !state.node_denied(&node.key);
    let health = match node.health {
        NodeHealthState::Ready if !admitted => NodeHealth::NotAdmitted,
        NodeHealthState::Ready if node.draining => NodeHealth::Draining,
        NodeHealthState::Ready => NodeHealth::Ready,
        NodeHealthState::Unreachable => NodeHealth::Unreachable,
        NodeHealthState::Lost => NodeHealth::Lost,
    };
    NodeView {
        id: node.key.clone(),
        region: node.region.clone(),
        cluster: node.cluster.clone(),
        labels: node.labels.clone(),
        health,
        capacity: Resources {
            cpu_millis: u64::from(node.cpu_cores).saturating_mul(1000),
            memory_bytes: node.memory_bytes,
            gpus: u32::try_from(node.gpus.len()).unwrap_or(u32::MAX),
        },
        gpus: node.gpus.clone(),
    }
}

/// The resources a scheduled or running job holds: one allocation per replica that has not finished.
fn allocations(job: &JobRecord) -> impl Iterator<Item = Allocation> + '_ {
    job.current_replicas()
        .iter()
        .filter(|a| a.outcome.is_none())
        .map(|attempt| Allocation {
            job_id: job.id.clone(),
            node_id: attempt.node.clone(),
            resources: attempt.resources,
            gpu_uuids: attempt.gpu_uuids.clone(),
            priority: job.spec.priority,
            preemptible: job.spec.preemptible,
            project: job.project_id.clone(),
        })
}

/// What the scheduler is asked for a pending job. A job that lost its node prefers that node's region
/// (elsewhere in the region first), unless it names its own data locality. `preemption_ceiling` is its
/// project's.
fn request(job: &JobRecord, preemption_ceiling: i32) -> JobRequest {
    request_for(
        &job.id,
        &job.project_id,
        &job.spec,
        job.prefer_region.as_deref(),
        preemption_ceiling,
    )
}

/// [`request`] from a job's parts (a job not submitted yet has no record).
fn request_for(
    id: &str,
    project_id: &str,
    spec: &JobSpec,
    prefer_region: Option<&str>,
    preemption_ceiling: i32,
) -> JobRequest {
    let data_locality = spec.data_locality.clone().or_else(|| {
        prefer_region.map(|region| Locality {
            region: region.to_owned(),
            cluster: None,
        })
    });
    JobRequest {
        id: id.to_owned(),
        priority: spec.priority,
        resources: spec.resources.clone(),
        constraints: spec.constraints.clone(),
        replicas: spec.replicas,
        preemption: spec.preemption,
        project: project_id.to_owned(),
        preemption_ceiling,
        preemptible: spec.preemptible,
        data_locality,
        strategy: spec.strategy,
    }
}

/// One scheduling pass over `state`: placements for the pending jobs that fit (preceded by the
/// preemptions they need), and the reason for each one that waits when it changed. Pure.
pub fn plan(state: &RegistryState) -> Vec<PlacementOp> {
    let pending: Vec<&JobRecord> = state
        .pending_jobs()
        .filter(|j| !j.cancel_requested)
        .collect();
    if pending.is_empty() {
        return Vec::new();
    }
    let by_id: HashMap<&str, &JobRecord> = pending.iter().map(|j| (j.id.as_str(), *j)).collect();
    let active: HashMap<&str, &JobRecord> =
        state.active_jobs().map(|j| (j.id.as_str(), j)).collect();
    let nodes = state.nodes().map(|n| node_view(state, n));
    let held_now = active.values().flat_map(|j| allocations(j));
    let mut scheduler = match Scheduler::new(nodes, held_now) {
        Ok(s) => s,
        Err(e) => {
            // Node keys are unique in the registry, so this cannot happen; refuse to guess if it does.
            tracing::error!(error = %e, "cannot index the fleet");
            return Vec::new();
        }
    };
    let mut requests: Vec<JobRequest> = pending
        .iter()
        .map(|j| request(j, state.project_policy(&j.project_id).preemption_ceiling))
        .collect();
    // The order `Scheduler::place_all` uses: higher priority first, then job id.
    requests.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    // What each project concerned holds, kept up to date as this pass places and evicts.
    let mut held: BTreeMap<&str, crate::scheduler::Resources> = BTreeMap::new();
    for job in &pending {
        held.entry(job.project_id.as_str())
            .or_insert_with(|| state.project_load(&job.project_id).running);
    }
    let mut ops = Vec::new();
    let mut placed = 0usize;
    for req in &requests {
        let Some(job) = by_id.get(req.id.as_str()).copied() else {
            continue;
        };
        let wants = job_reservation(&job.spec);
        let policy = state.project_policy(&job.project_id);
        let holds = held
            .get(job.project_id.as_str())
            .copied()
            .unwrap_or_default();
        let decision = match running_quota_excess(&policy, holds, wants) {
            Some(reason) => PlacementDecision::Pending {
                reason,
                filtered: Default::default(),
            },
            None => scheduler.place(req),
        };
        match decision {
            PlacementDecision::Placed {
                assignments,
                preempted,
            } => {
                if placed >= MAX_PLACEMENTS_PER_PASS {
                    continue;
                }
                let replicas: Option<Vec<ReplicaPlacement>> = assignments
                    .into_iter()
                    .map(|a| {
                        let lease_epoch = state.node(&a.node_id)?.lease_epoch;
                        Some(ReplicaPlacement {
                            node: a.node_id,
                            lease_epoch,
                            gpu_uuids: a.gpu_uuids,
                            resources: a.resources,
                        })
                    })
                    .collect();
                let Some(replicas) = replicas.filter(|r| !r.is_empty()) else {
                    continue;
                };
                for victim in preempted {
                    let victim_job = active.get(victim.as_str()).copied();
                    if let Some(v) = victim_job {
                        let freed = allocations(v).fold(Default::default(), |sum, a| {
                            crate::state::add_resources(sum, a.resources)
                        });
                        if let Some(h) = held.get_mut(v.project_id.as_str()) {
                            *h = crate::state::sub_resources(*h, freed);
                        }
                    }
                    let attempt = victim_job
                        .and_then(|j| j.current_attempt())
                        .map(|a| a.attempt);
                    if let Some(attempt) = attempt {
                        ops.push(PlacementOp::Preempt {
                            job_id: victim,
                            attempt,
                            by: job.id.clone(),
                        });
                    }
                }
                ops.push(PlacementOp::Place {
                    job_id: job.id.clone(),
                    attempt: job.next_attempt(),
                    replicas,
                });
                if let Some(h) = held.get_mut(job.project_id.as_str()) {
                    *h = crate::state::add_resources(*h, wants);
                }
                placed += 1;
            }
            PlacementDecision::Pending { reason, .. } => {
                if job.pending_reason.as_deref() != Some(reason.as_str()) {
                    ops.push(PlacementOp::Wait {
                        job_id: job.id.clone(),
                        reason,
                    });
                }
            }
        }
    }
    ops
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::scheduler::{GpuDevice, ResourceRequest};
    use crate::state::TenancyOutcome;
    use crate::state::{
        Actor, Command, JobSpec, JobState, NodeHealthState, Op, Outcome, PlacementOp, WrappedKey,
    };
    use crate::state::{FleetOp, TenancyOp};

    pub(super) const PROJECT: &str = "prj_default";

    pub(super) fn apply(state: &mut RegistryState, op: Op) -> crate::state::CommandOutcome {
        let index = state.applied_index + 1;
        state.apply(index, &Command::new(index * 1_000, Actor::system(), op))
    }

    pub(super) fn fleet() -> RegistryState {
        let mut s = RegistryState::default();
        let out = apply(
            &mut s,
            Op::Tenancy(TenancyOp::Bootstrap {
                default_project_id: PROJECT.into(),
                default_data_key: WrappedKey {
                    master_key_id: "mk1".into(),
                    nonce_b64: "AAAAAAAAAAAAAAAA".into(),
                    ciphertext_b64: "ct".into(),
                },
                admin_principal_id: "sa_admin".into(),
                admin_principal_name: "admin".into(),
                admin_key_id: "adminkey".into(),
                admin_key_hash: crate::token::hash_token("t"),
                admin_key_last4: "abcd".into(),
            }),
        );
        assert!(
            matches!(
                out,
                Ok(Outcome::Tenancy(TenancyOutcome::Bootstrapped { .. }))
            ),
            "{out:?}"
        );
        for (region, node, gpus) in [("eu", "eu-a1", 0), ("eu", "eu-a2", 0), ("us", "us-a1", 1)] {
            let gpus: Vec<GpuDevice> = (0..gpus)
                .map(|i| GpuDevice {
                    uuid: format!("GPU-{node}-{i}"),
                    index: i,
                    model: "NVIDIA H200".into(),
                    memory_mib: 143_771,
                    healthy: true,
                })
                .collect();
            let out = apply(
                &mut s,
                Op::Fleet(FleetOp::RegisterNode {
                    region: region.into(),
                    cluster: format!("{region}1"),
                    node: node.into(),
                    cpu_cores: 4,
                    memory_bytes: 8 << 30,
                    gpu_count: gpus.len() as u32,
                    agent_version: "test".into(),
                    gpus,
                    labels: Default::default(),
                    rpc_addr: "127.0.0.1:7443".into(),
                    held: Vec::new(),
                    os: String::new(),
                    limit_mode: String::new(),
                    admit_new: None,
                }),
            );
            assert!(out.is_ok(), "{out:?}");
        }
        s
    }

    pub(super) fn submit(state: &mut RegistryState, id: &str, spec: JobSpec) {
        let out = apply(
            state,
            Op::Jobs(JobOp::SubmitJob {
                id: id.into(),
                project_id: PROJECT.into(),
                spec,
                principal_id: None,
            }),
        );
        assert!(out.is_ok(), "{out:?}");
    }

    pub(super) fn run_pass(state: &mut RegistryState) -> Vec<PlacementOp> {
        let ops = plan(state);
        if !ops.is_empty() {
            let out = apply(
                state,
                Op::Jobs(JobOp::PlaceJobs {
                    placements: ops.clone(),
                }),
            );
            assert!(out.is_ok(), "{out:?}");
        }
        ops
    }

    #[test]
    fn a_pass_places_what_fits_explains_what_waits_and_then_rests() {
        let mut s = fleet();
        let mut cpu = JobSpec::new("true");
        cpu.resources = ResourceRequest {
            cpu_millis: 3_000,
            ..Default::default()
        };
        submit(&mut s, "job_a", cpu.clone());
        submit(&mut s, "job_b", cpu);
        let mut gpu = JobSpec::new("nvidia-smi");
        gpu.resources.gpus = 2;
        submit(&mut s, "job_gpu", gpu);

        let ops = run_pass(&mut s);
        let placed: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                PlacementOp::Place { job_id, .. } => Some(job_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(placed, ["job_a", "job_b"]);
        let a = s.job(PROJECT, "job_a").expect("job_a");
        let b = s.job(PROJECT, "job_b").expect("job_b");
        assert_eq!(a.state, JobState::Scheduled);
        // 3 of 4 cores each: the reservation made for the first keeps the second off its node, and CPU
        // jobs stay off the GPU node while CPU nodes fit.
        let nodes = [a.attempts[0].node.as_str(), b.attempts[0].node.as_str()];
        assert!(nodes.iter().all(|n| n.starts_with("eu/")), "{nodes:?}");
        assert_ne!(nodes[0], nodes[1]);
        let gpu = s.job(PROJECT, "job_gpu").expect("job_gpu");
        assert_eq!(gpu.state, JobState::Pending);
        let reason = gpu.pending_reason.clone().expect("a reason");
        assert!(reason.to_lowercase().contains("gpu"), "{reason}");

        // Nothing changed: the next pass proposes nothing (no repeated reasons, no re-placement).
        assert!(plan(&s).is_empty());
    }

    #[test]
    fn a_job_that_lost_its_node_prefers_the_same_region() {
        let mut s = fleet();
        let mut spec = JobSpec::new("train");
        spec.resources.cpu_millis = 1_000;
        submit(&mut s, "job_r", spec);
        run_pass(&mut s);
        let first = s.job(PROJECT, "job_r").expect("job").attempts[0].clone();
        let epoch = s.node(&first.node).expect("node").lease_epoch;
        let out = apply(
            &mut s,
            Op::Fleet(FleetOp::SetNodeHealth {
                key: first.node.clone(),
                health: NodeHealthState::Lost,
                lease_epoch: epoch,
            }),
        );
        assert!(out.is_ok(), "{out:?}");
        let waiting = s.job(PROJECT, "job_r").expect("job");
        assert_eq!(waiting.state, JobState::Pending);
        assert_eq!(
            request(waiting, 0).data_locality.map(|l| l.region),
            Some(first.region.clone()),
            "the scheduler is asked to prefer the lost node's region"
        );
        run_pass(&mut s);
        let job = s.job(PROJECT, "job_r").expect("job");
        assert_eq!(job.attempts.len(), 2);
        let second = &job.attempts[1];
        assert_ne!(second.node, first.node);
        assert_eq!(
            second.region, first.region,
            "rescheduled in its region first"
        );
    }

    #[test]
    fn a_gang_is_placed_in_one_item_and_its_replicas_hold_capacity() {
        let mut s = fleet();
        // Three replicas of 3 of 4 cores: one per node, or nothing.
        let mut gang = JobSpec::new("train");
        gang.resources.cpu_millis = 3_000;
        gang.replicas = 3;
        submit(&mut s, "job_gang", gang.clone());
        let ops = run_pass(&mut s);
        let [PlacementOp::Place {
            job_id, replicas, ..
        }] = ops.as_slice()
        else {
            panic!("one placement expected: {ops:?}");
        };
        assert_eq!(job_id, "job_gang");
        let mut nodes: Vec<&str> = replicas.iter().map(|r| r.node.as_str()).collect();
        nodes.sort_unstable();
        assert_eq!(nodes, ["eu/eu1/eu-a1", "eu/eu1/eu-a2", "us/us1/us-a1"]);
        let job = s.job(PROJECT, "job_gang").expect("job");
        assert_eq!(job.current_replicas().len(), 3);

        // Its replicas hold their cores: a second gang waits, whole.
        submit(&mut s, "job_gang2", gang);
        run_pass(&mut s);
        let waiting = s.job(PROJECT, "job_gang2").expect("job");
        assert_eq!(waiting.state, JobState::Pending);
        assert!(waiting.attempts.is_empty());
        let reason = waiting.pending_reason.clone().expect("a reason");
        assert!(reason.contains("gang of 3"), "{reason}");
    }

    fn set_policy(state: &mut RegistryState, update: crate::state::PolicyUpdate) {
        let out = apply(
            state,
            Op::Tenancy(TenancyOp::SetProjectPolicy {
                project_id: PROJECT.into(),
                update,
            }),
        );
        assert!(out.is_ok(), "{out:?}");
    }

    #[test]
    fn a_job_past_its_projects_running_quota_waits_and_says_why() {
        let mut s = fleet();
        set_policy(
            &mut s,
            crate::state::PolicyUpdate {
                max_running_cpu_millis: Some(4_000),
                ..Default::default()
            },
        );
        let mut cpu = JobSpec::new("true");
        cpu.resources.cpu_millis = 3_000;
        submit(&mut s, "job_a", cpu.clone());
        submit(&mut s, "job_b", cpu);
        let ops = run_pass(&mut s);
        // The fleet has room for both; the quota has room for one.
        let placed = ops
            .iter()
            .filter(|op| matches!(op, PlacementOp::Place { .. }))
            .count();
        assert_eq!(placed, 1, "{ops:?}");
        assert_eq!(
            s.job(PROJECT, "job_a").expect("job_a").state,
            JobState::Scheduled
        );
        let waiting = s.job(PROJECT, "job_b").expect("job_b");
        assert_eq!(waiting.state, JobState::Pending);
        let reason = waiting.pending_reason.clone().expect("a reason");
        assert!(
            reason.contains("max_running_cpu_millis") && reason.contains("6.000 of 4.000 cores"),
            "{reason}"
        );
        // Raised, the next pass places it.
        set_policy(
            &mut s,
            crate::state::PolicyUpdate {
                max_running_cpu_millis: Some(8_000),
                ..Default::default()
            },
        );
        run_pass(&mut s);
        assert_eq!(
            s.job(PROJECT, "job_b").expect("job_b").state,
            JobState::Scheduled
        );
    }

    #[test]
    fn a_pass_never_evicts_another_projects_job_below_a_zero_ceiling() {
        let mut s = fleet();
        let out = apply(
            &mut s,
            Op::Tenancy(TenancyOp::CreateProject {
                id: "prj_other".into(),
                name: "other".into(),
                description: String::new(),
                data_key: WrappedKey {
                    master_key_id: "mk1".into(),
                    nonce_b64: "AAAAAAAAAAAAAAAA".into(),
                    ciphertext_b64: "ct2".into(),
                },
                policy: None,
            }),
        );
        assert!(out.is_ok(), "{out:?}");
        // The other project fills the GPU node.
        let mut theirs = JobSpec::new("train");
        theirs.resources.gpus = 1;
        let out = apply(
            &mut s,
            Op::Jobs(JobOp::SubmitJob {
                principal_id: None,
                id: "job_theirs".into(),
                project_id: "prj_other".into(),
                spec: theirs,
            }),
        );
        assert!(out.is_ok(), "{out:?}");
        run_pass(&mut s);
        assert_eq!(
            s.job("prj_other", "job_theirs").expect("job").state,
            JobState::Scheduled
        );
        let mut urgent = JobSpec::new("train");
        urgent.resources.gpus = 1;
        urgent.priority = 1000;
        urgent.preemption = true;
        submit(&mut s, "job_urgent", urgent);
        let ops = run_pass(&mut s);
        assert!(
            !ops.iter()
                .any(|op| matches!(op, PlacementOp::Preempt { .. })),
            "{ops:?}"
        );
        assert_eq!(
            s.job("prj_other", "job_theirs").expect("job").state,
            JobState::Scheduled
        );
        assert_eq!(
            s.job(PROJECT, "job_urgent").expect("job").state,
            JobState::Pending
        );
        // With a ceiling above the victim's priority, the same pass evicts it.
        set_policy(
            &mut s,
            crate::state::PolicyUpdate {
                preemption_ceiling: Some(1),
                ..Default::default()
            },
        );
        let ops = run_pass(&mut s);
        assert!(
            ops.iter().any(
                |op| matches!(op, PlacementOp::Preempt { job_id, .. } if job_id == "job_theirs")
            ),
            "{ops:?}"
        );
        assert_eq!(
            s.job(PROJECT, "job_urgent").expect("job").state,
            JobState::Scheduled
        );
        let theirs = s.job("prj_other", "job_theirs").expect("job");
        assert_eq!(theirs.state, JobState::Pending);
        assert_eq!(
            theirs.attempts[0].detail,
            "preempted by a higher-priority job"
        );
    }

    fn set_draining(state: &mut RegistryState, key: &str, draining: bool) {
        let out = apply(
            state,
            Op::Fleet(FleetOp::SetNodeDraining {
                key: key.into(),
                draining,
            }),
        );
        assert!(out.is_ok(), "{out:?}");
    }

    #[test]
    fn a_draining_node_gets_no_new_work_until_undrained() {
        let mut s = fleet();
        // Drain one CPU node: a job that fits anywhere lands on the other.
        set_draining(&mut s, "eu/eu1/eu-a1", true);
        let mut spec = JobSpec::new("true");
        spec.resources.cpu_millis = 1_000;
        submit(&mut s, "job_elsewhere", spec);
        run_pass(&mut s);
        let job = s.job(PROJECT, "job_elsewhere").expect("job");
        assert_eq!(job.state, JobState::Scheduled);
        assert_ne!(job.attempts[0].node, "eu/eu1/eu-a1");

        // The GPU job fits only on the GPU node; drained, it waits and says why.
        set_draining(&mut s, "us/us1/us-a1", true);
        let mut gpu = JobSpec::new("nvidia-smi");
        gpu.resources.gpus = 1;
        submit(&mut s, "job_gpu", gpu);
        run_pass(&mut s);
        let job = s.job(PROJECT, "job_gpu").expect("job");
        assert_eq!(job.state, JobState::Pending);
        let reason = job.pending_reason.clone().expect("a reason");
        assert!(reason.contains("draining"), "{reason}");

        // Work already on a draining node keeps running there.
        let placed = s.job(PROJECT, "job_elsewhere").expect("job").attempts[0]
            .node
            .clone();
        set_draining(&mut s, &placed, true);
        let job = s.job(PROJECT, "job_elsewhere").expect("job");
        assert_eq!(job.state, JobState::Scheduled);
        assert_eq!(job.attempts.len(), 1);

        // Undrained, the GPU node takes the waiting job.
        set_draining(&mut s, "us/us1/us-a1", false);
        run_pass(&mut s);
        let job = s.job(PROJECT, "job_gpu").expect("job");
        assert_eq!(job.state, JobState::Scheduled);
        assert_eq!(job.attempts[0].node, "us/us1/us-a1");
    }

    #[test]
    fn only_a_ready_node_reads_as_draining() {
        let mut s = fleet();
        let key = "eu/eu1/eu-a1";
        set_draining(&mut s, key, true);
        let view = |s: &RegistryState| node_view(s, s.node(key).expect("node")).health;
        assert_eq!(view(&s), NodeHealth::Draining);
        let epoch = s.node(key).expect("node").lease_epoch;
        let out = apply(
            &mut s,
            Op::Fleet(FleetOp::SetNodeHealth {
                key: key.into(),
                health: NodeHealthState::Unreachable,
                lease_epoch: epoch,
            }),
        );
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(view(&s), NodeHealth::Unreachable);
    }
}
