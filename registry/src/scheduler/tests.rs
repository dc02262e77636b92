//! Unit tests for the scheduler core: filters and their reasons, scoring, reservations, GPU matching,
//! preemption, gangs, locality and determinism. No I/O, no clock.

use std::collections::BTreeMap;

use super::preemption::{smallest_cover, Deficit, Victim};
use super::*;

const GIB: u64 = 1 << 30;

pub(super) fn cpu_node(
    id: &str,
    region: &str,
    cluster: &str,
    cores: u64,
    mem_gib: u64,
) -> NodeView {
    NodeView {
        id: id.to_owned(),
        region: region.to_owned(),
        cluster: cluster.to_owned(),
        labels: BTreeMap::new(),
        health: NodeHealth::Ready,
        capacity: Resources {
            cpu_millis: cores * 1000,
            memory_bytes: mem_gib * GIB,
            gpus: 0,
        },
        gpus: Vec::new(),
    }
}

pub(super) fn gpu_node(
    id: &str,
    region: &str,
    model: &str,
    memory_mib: u64,
    count: u32,
) -> NodeView {
    let mut node = cpu_node(id, region, "c1", 64, 512);
    node.gpus = (0..count)
        .map(|i| GpuDevice {
            uuid: format!("GPU-{id}-{i}"),
            index: i,
            model: model.to_owned(),
            memory_mib,
            healthy: true,
        })
        .collect();
    node.capacity.gpus = count;
    node
}

pub(super) fn cpu_job(id: &str, cores: u64, mem_gib: u64) -> JobRequest {
    JobRequest::new(
        id,
        ResourceRequest {
            cpu_millis: cores * 1000,
            memory_bytes: mem_gib * GIB,
            ..ResourceRequest::default()
        },
    )
}

pub(super) fn gpu_job(id: &str, gpus: u32) -> JobRequest {
    JobRequest::new(
        id,
        ResourceRequest {
            cpu_millis: 1000,
            memory_bytes: GIB,
            gpus,
            ..ResourceRequest::default()
        },
    )
}

pub(super) fn alloc(
    job: &str,
    node: &str,
    cores: u64,
    priority: i32,
    preemptible: bool,
) -> Allocation {
    Allocation {
        job_id: job.to_owned(),
        node_id: node.to_owned(),
        resources: Resources {
            cpu_millis: cores * 1000,
            memory_bytes: 0,
            gpus: 0,
        },
        gpu_uuids: Vec::new(),
        priority,
        preemptible,
        project: String::new(),
    }
}

pub(super) fn scheduler(nodes: Vec<NodeView>) -> Scheduler {
    Scheduler::new(nodes, Vec::new()).expect("test fleets have unique node ids")
}

/// The nodes of each replica, or the pending reason as the error.
fn nodes_of(decision: &PlacementDecision) -> Result<Vec<String>, String> {
    match decision {
        PlacementDecision::Placed { assignments, .. } => {
            Ok(assignments.iter().map(|a| a.node_id.clone()).collect())
        }
        PlacementDecision::Pending { reason, .. } => Err(reason.clone()),
    }
}

fn node_of(decision: &PlacementDecision) -> String {
    match nodes_of(decision) {
        Ok(nodes) if nodes.len() == 1 => nodes[0].clone(),
        other => panic!("expected one placement, got {other:?}"),
    }
}

fn pending(decision: &PlacementDecision) -> (String, FilterCounts) {
    match decision {
        PlacementDecision::Pending { reason, filtered } => (reason.clone(), *filtered),
        other => panic!("expected pending, got {other:?}"),
    }
}

fn preempted(decision: &PlacementDecision) -> Vec<String> {
    match decision {
        PlacementDecision::Placed { preempted, .. } => preempted.clone(),
        other => panic!("expected placed, got {other:?}"),
    }
}

// ---- filters and reasons ----

#[test]
fn the_pending_reason_names_every_filter_that_excluded_nodes() {
    let mut unreachable = gpu_node("eu-g1", "eu", "NVIDIA H200", 143_771, 8);
    unreachable.health = NodeHealth::Unreachable;
    let mut s = scheduler(vec![
        cpu_node("eu-c1", "eu", "c1", 32, 128),
        cpu_node("eu-c2", "eu", "c1", 32, 128),
        cpu_node("eu-c3", "eu", "c1", 32, 128),
        unreachable,
        gpu_node("us-g1", "us", "NVIDIA H200", 143_771, 8),
        gpu_node("us-g2", "us", "NVIDIA H200", 143_771, 8),
    ]);
    let mut job = gpu_job("train", 2);
    job.resources.gpu_model = Some("H200".to_owned());
    job.resources.gpu_min_memory_mib = Some(80_000);
    job.constraints.region = Some("eu".to_owned());
    let (reason, counts) = pending(&s.place(&job));
    assert_eq!(
        reason,
        "no node has 2 GPUs of model H200 with >= 80000 MiB, 1 CPU and 1 GiB memory free: \
         3 nodes without GPUs, 2 nodes out of region eu, 1 node unreachable"
    );
    assert_eq!(counts.nodes, 6);
    assert_eq!(counts.without_gpus, 3);
    assert_eq!(counts.out_of_region, 2);
    assert_eq!(counts.unreachable, 1);
    // Nothing was reserved anywhere.
    assert_eq!(s.free_capacity("us-g1").map(|r| r.gpus), Some(8));
}

#[test]
fn health_filters_count_each_state() {
    let mut nodes = vec![
        cpu_node("a", "eu", "c1", 8, 8),
        cpu_node("b", "eu", "c1", 8, 8),
        cpu_node("c", "eu", "c1", 8, 8),
        cpu_node("d", "eu", "c1", 8, 8),
    ];
    nodes[0].health = NodeHealth::Unreachable;
    nodes[1].health = NodeHealth::Lost;
    nodes[2].health = NodeHealth::Draining;
    let mut s = scheduler(nodes);
    assert_eq!(node_of(&s.place(&cpu_job("j1", 1, 1))), "d");
    let (reason, counts) = pending(&s.place(&cpu_job("j2", 8, 1)));
    assert_eq!(
        (counts.unreachable, counts.lost, counts.draining),
        (1, 1, 1)
    );
    assert_eq!(counts.insufficient_cpu, 1);
    assert!(reason.contains("1 node unreachable"), "{reason}");
    assert!(reason.contains("1 node lost"), "{reason}");
    assert!(reason.contains("1 node draining"), "{reason}");
    assert!(
        reason.contains("1 node with too little free CPU"),
        "{reason}"
    );
}

#[test]
fn region_cluster_and_label_constraints_are_hard() {
    let mut spot = cpu_node("eu-1", "eu", "c1", 8, 8);
    spot.labels.insert("instance".into(), "spot".into());
    let mut on_demand = cpu_node("eu-2", "eu", "c2", 8, 8);
    on_demand
        .labels
        .insert("instance".into(), "on-demand".into());
    on_demand.labels.insert("zone".into(), "a".into());
    let mut s = scheduler(vec![spot, on_demand, cpu_node("us-1", "us", "c1", 8, 8)]);

    let mut job = cpu_job("j-cluster", 1, 1);
    job.constraints.cluster = Some("c1".into());
    job.constraints.region = Some("eu".into());
    assert_eq!(node_of(&s.place(&job)), "eu-1");

    let mut job = cpu_job("j-labels", 1, 1);
    job.constraints
        .labels
        .insert("instance".into(), "on-demand".into());
    job.constraints.labels.insert("zone".into(), "a".into());
    assert_eq!(node_of(&s.place(&job)), "eu-2");

    let mut job = cpu_job("j-none", 1, 1);
    job.constraints.labels.insert("zone".into(), "b".into());
    job.constraints.cluster = Some("c2".into());
    let (reason, counts) = pending(&s.place(&job));
    assert_eq!(counts.out_of_cluster, 2);
    assert_eq!(counts.label_mismatch, 1);
    assert!(
        reason.ends_with("2 nodes out of cluster c2, 1 node without label zone=b"),
        "{reason}"
    );

    let mut job = cpu_job("j-mars", 1, 1);
    job.constraints.region = Some("mars".into());
    let (reason, counts) = pending(&s.place(&job));
    assert_eq!(counts.out_of_region, 3);
    assert!(reason.ends_with(": 3 nodes out of region mars"), "{reason}");
}

#[test]
fn cpu_and_memory_filters_say_which_resource_is_short() {
    let mut s = scheduler(vec![
        cpu_node("small-cpu", "eu", "c1", 2, 64),
        cpu_node("small-mem", "eu", "c1", 16, 4),
    ]);
    let (reason, counts) = pending(&s.place(&cpu_job("j", 4, 1536 / 1024 + 7)));
    assert_eq!(
        (counts.insufficient_cpu, counts.insufficient_memory),
        (1, 1)
    );
    assert_eq!(
        reason,
        "no node has 4 CPUs and 8 GiB memory free: 1 node with too little free CPU, \
         1 node with too little free memory"
    );
}

#[test]
fn gpu_model_and_memory_filters_match_case_insensitive_substrings() {
    let mut s = scheduler(vec![
        gpu_node("a100", "eu", "NVIDIA A100-SXM4-40GB", 40_960, 8),
        gpu_node("h100", "eu", "NVIDIA H100 80GB HBM3", 81_559, 8),
        gpu_node("h200", "eu", "NVIDIA H200", 143_771, 8),
        cpu_node("cpu", "eu", "c1", 64, 256),
    ]);
    let mut job = gpu_job("needs-h", 1);
    job.resources.gpu_model = Some("h1".into());
    assert_eq!(node_of(&s.place(&job)), "h100");

    let mut job = gpu_job("big-memory", 1);
    job.resources.gpu_min_memory_mib = Some(100_000);
    assert_eq!(node_of(&s.place(&job)), "h200");

    let mut job = gpu_job("b200", 1);
    job.resources.gpu_model = Some("B200".into());
    let (reason, counts) = pending(&s.place(&job));
    assert_eq!((counts.gpu_model_mismatch, counts.without_gpus), (3, 1));
    assert!(
        reason.contains("3 nodes without B200 GPUs, 1 node without GPUs"),
        "{reason}"
    );

    let mut job = gpu_job("a100-80", 1);
    job.resources.gpu_model = Some("a100".into());
    job.resources.gpu_min_memory_mib = Some(80_000);
    let (reason, counts) = pending(&s.place(&job));
    assert_eq!(
        (counts.gpu_model_mismatch, counts.gpu_memory_too_small),
        (2, 1)
    );
    assert!(
        reason.contains("1 node whose a100 GPUs have less than 80000 MiB"),
        "{reason}"
    );

    let mut job = gpu_job("too-many", 9);
    job.resources.gpu_model = Some("H200".into());
    let (reason, counts) = pending(&s.place(&job));
    assert_eq!(counts.insufficient_gpus, 1);
    assert!(
        reason.contains("1 node with too few free matching GPUs"),
        "{reason}"
    );
}

#[test]
fn gpus_are_assigned_lowest_index_first_skipping_unhealthy_and_held_ones() {
    let mut node = gpu_node("g", "eu", "NVIDIA H200", 143_771, 4);
    node.gpus.reverse(); // input order must not matter
    if let Some(g) = node.gpus.iter_mut().find(|g| g.index == 1) {
        g.healthy = false;
    }
    let held = Allocation {
        gpu_uuids: vec!["GPU-g-0".into()],
        resources: Resources {
            gpus: 1,
            ..Resources::default()
        },
        ..alloc("old", "g", 1, 0, false)
    };
    let mut s = Scheduler::new(vec![node], vec![held]).expect("unique ids");
    assert_eq!(s.free_capacity("g").map(|r| r.gpus), Some(2));
    let PlacementDecision::Placed { assignments, .. } = s.place(&gpu_job("j", 2)) else {
        panic!("two healthy free GPUs remain");
    };
    assert_eq!(assignments[0].gpu_uuids, vec!["GPU-g-2", "GPU-g-3"]);
    assert_eq!(assignments[0].resources.gpus, 2);
    let (_, counts) = pending(&s.place(&gpu_job("k", 1)));
    assert_eq!(counts.insufficient_gpus, 1);
    // Releasing gives the same devices back.
    assert_eq!(s.release("j").len(), 1);
    let PlacementDecision::Placed { assignments, .. } = s.place(&gpu_job("k", 1)) else {
        panic!("GPUs were released");
    };
    assert_eq!(assignments[0].gpu_uuids, vec!["GPU-g-2"]);
}

#[test]
fn no_nodes_means_a_plain_reason() {
    let mut s = scheduler(Vec::new());
    let (reason, counts) = pending(&s.place(&cpu_job("j", 1, 1)));
    assert_eq!(reason, "no nodes are registered");
    assert_eq!(counts, FilterCounts::default());
}

// ---- scoring ----

#[test]
fn bin_packing_prefers_the_fullest_node_and_spread_the_emptiest() {
    let nodes = vec![
        cpu_node("a", "eu", "c1", 8, 32),
        cpu_node("b", "eu", "c1", 8, 32),
    ];
    let busy = vec![alloc("existing", "b", 4, 0, false)];
    let mut s = Scheduler::new(nodes, busy).expect("unique ids");
    assert_eq!(node_of(&s.place(&cpu_job("pack", 1, 1))), "b");
    let mut spread = cpu_job("spread", 1, 1);
    spread.strategy = Strategy::Spread;
    assert_eq!(node_of(&s.place(&spread)), "a");
}

#[test]
fn gpu_utilization_weighs_in_for_gpu_jobs() {
    // Node "a" is busier on CPU, node "b" on GPUs; GPUs weigh double, so bin-packing picks "b".
    let nodes = vec![
        gpu_node("a", "eu", "NVIDIA H100", 81_559, 8),
        gpu_node("b", "eu", "NVIDIA H100", 81_559, 8),
    ];
    let mut cpu_heavy = alloc("cpu-heavy", "a", 40, 0, false);
    cpu_heavy.resources.memory_bytes = 256 * GIB;
    let mut gpu_heavy = alloc("gpu-heavy", "b", 8, 0, false);
    gpu_heavy.gpu_uuids = (0..6).map(|i| format!("GPU-b-{i}")).collect();
    gpu_heavy.resources.gpus = 6;
    let mut s = Scheduler::new(nodes, vec![cpu_heavy, gpu_heavy]).expect("unique ids");
    assert_eq!(node_of(&s.place(&gpu_job("g", 1))), "b");
}

#[test]
fn cpu_jobs_keep_off_gpu_nodes_while_cpu_nodes_have_room() {
    let mut s = scheduler(vec![
        gpu_node("a-gpu", "eu", "NVIDIA H200", 143_771, 8),
        cpu_node("z-cpu", "eu", "c1", 4, 16),
    ]);
    assert_eq!(node_of(&s.place(&cpu_job("1", 2, 1))), "z-cpu");
    assert_eq!(node_of(&s.place(&cpu_job("2", 2, 1))), "z-cpu");
    // Full: the GPU node takes the overflow rather than leaving it pending.
    assert_eq!(node_of(&s.place(&cpu_job("3", 2, 1))), "a-gpu");
}

#[test]
fn reservations_spread_a_burst_and_stop_at_capacity() {
    let nodes: Vec<NodeView> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|id| cpu_node(id, "eu", "c1", 4, 16))
        .collect();
    let mut s = scheduler(nodes.clone());
    let burst: Vec<JobRequest> = (0..17)
        .map(|i| {
            let mut job = cpu_job(&format!("j{i:02}"), 1, 1);
            job.strategy = Strategy::Spread;
            job
        })
        .collect();
    let decisions = s.place_all(&burst);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for d in &decisions[..16] {
        *per_node.entry(node_of(&d.decision)).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4, 4]
    );
    // The first four go to four different nodes.
    let first: std::collections::BTreeSet<String> = decisions[..4]
        .iter()
        .map(|d| node_of(&d.decision))
        .collect();
    assert_eq!(first.len(), 4);
    let (_, counts) = pending(&decisions[16].decision);
    assert_eq!(counts.insufficient_cpu, 4);
    for n in ["n1", "n2", "n3", "n4"] {
        assert_eq!(s.free_capacity(n).map(|r| r.cpu_millis), Some(0));
    }

    // Bin-packing fills one node before touching the next.
    let mut s = scheduler(nodes);
    let packed: Vec<String> = (0..5)
        .map(|i| node_of(&s.place(&cpu_job(&format!("p{i}"), 1, 1))))
        .collect();
    assert_eq!(packed, vec!["n1", "n1", "n1", "n1", "n2"]);
}

#[test]
fn place_all_serves_higher_priority_first() {
    let mut s = scheduler(vec![cpu_node("only", "eu", "c1", 4, 16)]);
    let mut urgent = cpu_job("z-urgent", 4, 1);
    urgent.priority = 10;
    let jobs = vec![cpu_job("a-batch", 4, 1), urgent];
    let decisions = s.place_all(&jobs);
    assert_eq!(decisions[0].job_id, "z-urgent");
    assert_eq!(node_of(&decisions[0].decision), "only");
    assert_eq!(decisions[1].job_id, "a-batch");
    pending(&decisions[1].decision);
}

// ---- locality ----

#[test]
fn data_locality_is_preferred_but_never_overrides_constraints() {
    let nodes = vec![
        cpu_node("eu-a", "eu", "c1", 16, 64),
        cpu_node("eu-b", "eu", "c2", 16, 64),
        cpu_node("us-a", "us", "c1", 16, 64),
    ];
    // Bin-packing alone would choose the busy eu-a.
    let mut s =
        Scheduler::new(nodes, vec![alloc("busy", "eu-a", 8, 0, false)]).expect("unique ids");
    assert_eq!(node_of(&s.place(&cpu_job("no-preference", 1, 1))), "eu-a");

    let mut job = cpu_job("us-data", 1, 1);
    job.data_locality = Some(Locality {
        region: "us".into(),
        cluster: None,
    });
    assert_eq!(node_of(&s.place(&job)), "us-a");

    let mut job = cpu_job("eu-c2-data", 1, 1);
    job.data_locality = Some(Locality {
        region: "eu".into(),
        cluster: Some("c2".into()),
    });
    assert_eq!(node_of(&s.place(&job)), "eu-b");

    // The preferred cluster does not exist: both eu nodes are equally near, and bin-packing picks eu-a.
    let mut job = cpu_job("eu-data", 1, 1);
    job.data_locality = Some(Locality {
        region: "eu".into(),
        cluster: Some("c9".into()),
    });
    assert_eq!(node_of(&s.place(&job)), "eu-a");

    let mut job = cpu_job("constrained", 1, 1);
    job.constraints.region = Some("us".into());
    job.data_locality = Some(Locality {
        region: "eu".into(),
        cluster: None,
    });
    assert_eq!(node_of(&s.place(&job)), "us-a");

    // A locality the fleet does not know is no preference at all.
    let mut job = cpu_job("mars-data", 1, 1);
    job.data_locality = Some(Locality {
        region: "mars".into(),
        cluster: None,
    });
    assert_eq!(node_of(&s.place(&job)), "eu-a");
}

// ---- preemption ----

/// One 8-core node, full: a (1 core, prio 1), b (1, prio 1), c (4, prio 5), d (2, prio 2).
fn full_node() -> Scheduler {
    Scheduler::new(
        vec![cpu_node("n", "eu", "c1", 8, 64)],
        vec![
            alloc("a", "n", 1, 1, true),
            alloc("b", "n", 1, 1, true),
            alloc("c", "n", 4, 5, true),
            alloc("d", "n", 2, 2, true),
        ],
    )
    .expect("unique ids")
}

#[test]
fn preemption_evicts_the_smallest_set_then_the_lowest_priority() {
    let mut s = full_node();
    let mut job = cpu_job("big", 4, 1);
    job.priority = 10;
    job.preemption = true;
    // {c} is one job; {a, b, d} would be three lower-priority ones.
    assert_eq!(preempted(&s.place(&job)), vec!["c"]);
    assert_eq!(s.allocations_of("c").count(), 0);
    assert_eq!(s.allocations_of("big").count(), 1);

    let mut s = full_node();
    let mut job = cpu_job("two", 2, 1);
    job.priority = 10;
    job.preemption = true;
    // Both {d} and {c} free enough alone; d has the lower priority.
    assert_eq!(preempted(&s.place(&job)), vec!["d"]);

    let mut s = full_node();
    let mut job = cpu_job("pair", 2, 1);
    job.priority = 3;
    job.preemption = true;
    // c (5) is above 3; d (2) frees 2 alone, which beats the pair {a, b}.
    assert_eq!(preempted(&s.place(&job)), vec!["d"]);
}

#[test]
fn preemption_never_touches_equal_higher_or_protected_work() {
    let mut s = full_node();
    let mut job = cpu_job("equal", 4, 1);
    job.priority = 5;
    job.preemption = true;
    // a, b and d are below 5 but only free 4 cores together: that is enough.
    assert_eq!(preempted(&s.place(&job)), vec!["a", "b", "d"]);
    assert_eq!(s.allocations_of("c").count(), 1);

    let mut s = full_node();
    let mut job = cpu_job("low", 2, 1);
    job.priority = 1;
    job.preemption = true;
    let (reason, _) = pending(&s.place(&job));
    assert!(reason
        .ends_with("; preemption: no node has enough lower-priority preemptible work to evict"));
    for victim in ["a", "b", "c", "d"] {
        assert_eq!(
            s.allocations_of(victim).count(),
            1,
            "{victim} must be untouched"
        );
    }

    let mut s = Scheduler::new(
        vec![cpu_node("n", "eu", "c1", 4, 64)],
        vec![alloc("protected", "n", 4, 0, false)],
    )
    .expect("unique ids");
    let mut job = cpu_job("vip", 1, 1);
    job.priority = 100;
    job.preemption = true;
    pending(&s.place(&job));

    // Without opting in, nothing is evicted.
    let mut s = full_node();
    let mut job = cpu_job("polite", 1, 1);
    job.priority = 100;
    pending(&s.place(&job));
    assert_eq!(s.free_capacity("n").map(|r| r.cpu_millis), Some(0));
}

#[test]
fn preemption_crosses_projects_only_below_the_ceiling() {
    // Project "theirs" holds the node: a (priority 0), b (priority 3); "ours" holds m (priority 0).
    let owned = |job: &str, cores: u64, priority: i32, project: &str| Allocation {
        project: project.to_owned(),
        ..alloc(job, "n", cores, priority, true)
    };
    let fleet = || {
        Scheduler::new(
            vec![cpu_node("n", "eu", "c1", 6, 64)],
            vec![
                owned("a", 2, 0, "theirs"),
                owned("b", 2, 3, "theirs"),
                owned("m", 2, 0, "ours"),
            ],
        )
        .expect("unique ids")
    };
    let ours = |cores: u64, ceiling: i32| {
        let mut job = cpu_job("urgent", cores, 1);
        job.priority = 1000;
        job.preemption = true;
        job.project = "ours".into();
        job.preemption_ceiling = ceiling;
        job
    };

    // Ceiling 0 (the default): only our own job is a candidate, however high our priority.
    let mut s = fleet();
    assert_eq!(preempted(&s.place(&ours(2, 0))), vec!["m"]);
    let mut s = fleet();
    let (reason, _) = pending(&s.place(&ours(4, 0)));
    assert!(reason.contains("preemption"), "{reason}");
    for victim in ["a", "b", "m"] {
        assert_eq!(s.allocations_of(victim).count(), 1, "{victim} untouched");
    }

    // Ceiling 2: their priority-0 job may go too, their priority-3 job never.
    let mut s = fleet();
    assert_eq!(preempted(&s.place(&ours(4, 2))), vec!["a", "m"]);
    let mut s = fleet();
    pending(&s.place(&ours(6, 2)));
    assert_eq!(s.allocations_of("b").count(), 1);

    // The ceiling never lifts the victim's protection from equal or higher priority.
    assert!(!may_evict(("ours", 3, 1000), ("theirs", 3, true)));
    assert!(!may_evict(("ours", 5, 1000), ("theirs", 1, false)));
    assert!(may_evict(("ours", 5, 1000), ("theirs", 4, true)));
    assert!(!may_evict(("ours", 5, 0), ("theirs", -10, true)));
    assert!(may_evict(("ours", 5, 0), ("ours", -10, true)));
}

#[test]
fn preemption_prefers_the_node_needing_fewer_evictions_and_evicts_whole_gangs() {
    let nodes = vec![
        cpu_node("x", "eu", "c1", 4, 64),
        cpu_node("y", "eu", "c1", 4, 64),
    ];
    let allocations = vec![
        alloc("small-1", "x", 2, 0, true),
        alloc("small-2", "x", 2, 0, true),
        // A gang with a replica on each node.
        alloc("gang", "y", 4, 1, true),
        alloc("gang", "x", 0, 1, true),
    ];
    let mut s = Scheduler::new(nodes, allocations).expect("unique ids");
    let mut job = cpu_job("urgent", 4, 1);
    job.priority = 9;
    job.preemption = true;
    let decision = s.place(&job);
    assert_eq!(preempted(&decision), vec!["gang"]);
    assert_eq!(node_of(&decision), "y");
    assert_eq!(
        s.allocations_of("gang").count(),
        0,
        "every replica of the gang is evicted"
    );
    assert_eq!(s.allocations_of("small-1").count(), 1);
}

#[test]
fn gpu_preemption_counts_only_matching_gpus() {
    let mut node = gpu_node("g", "eu", "NVIDIA H100", 81_559, 2);
    node.gpus[1].model = "NVIDIA A100".into();
    let holder = |job: &str, uuid: &str, priority| Allocation {
        gpu_uuids: vec![uuid.to_owned()],
        resources: Resources {
            gpus: 1,
            ..Resources::default()
        },
        ..alloc(job, "g", 0, priority, true)
    };
    let mut s = Scheduler::new(
        vec![node],
        vec![
            holder("on-h100", "GPU-g-0", 5),
            holder("on-a100", "GPU-g-1", 0),
        ],
    )
    .expect("unique ids");
    let mut job = gpu_job("wants-h100", 1);
    job.resources.gpu_model = Some("H100".into());
    job.priority = 10;
    job.preemption = true;
    let decision = s.place(&job);
    // The A100 holder has the lower priority but freeing it would not help.
    assert_eq!(preempted(&decision), vec!["on-h100"]);
}

#[test]
fn smallest_cover_falls_back_to_an_irreducible_greedy_set() {
    let names: Vec<String> = (0..40).map(|i| format!("v{i:02}")).collect();
    let victims: Vec<Victim<'_>> = names
        .iter()
        .map(|n| Victim {
            job_id: n,
            priority: 0,
            cpu: 100,
            mem: 0,
            gpus: 0,
        })
        .collect();
    // Needs 12 victims: C(40, k) for k up to 12 is far over the search budget.
    let deficit = Deficit {
        cpu: 1200,
        mem: 0,
        gpus: 0,
    };
    let set = smallest_cover(&victims, deficit, usize::MAX).expect("40 victims cover 1200");
    assert_eq!(set.len(), 12);
    assert_eq!(set, (0..12).collect::<Vec<_>>());
    assert_eq!(
        smallest_cover(
            &victims,
            Deficit {
                cpu: 4001,
                ..deficit
            },
            usize::MAX
        ),
        None
    );
    // A bound on the set size is respected.
    assert_eq!(
        smallest_cover(
            &victims,
            Deficit {
                cpu: 300,
                ..deficit
            },
            2
        ),
        None
    );
}

// ---- gangs ----

#[test]
fn a_gang_is_placed_whole_or_not_at_all() {
    let nodes = vec![
        gpu_node("g1", "eu", "NVIDIA H100", 81_559, 2),
        gpu_node("g2", "eu", "NVIDIA H100", 81_559, 2),
        gpu_node("g3", "eu", "NVIDIA H100", 81_559, 2),
    ];
    let mut s = scheduler(nodes);
    let mut gang = gpu_job("gang-4", 2);
    gang.replicas = 4;
    let (reason, counts) = pending(&s.place(&gang));
    assert!(
        reason.starts_with(
            "gang of 4 replicas, none placed (replica 4 does not fit): no node has 2 GPUs"
        ),
        "{reason}"
    );
    assert_eq!(counts.insufficient_gpus, 3);
    for n in ["g1", "g2", "g3"] {
        assert_eq!(
            s.free_capacity(n).map(|r| r.gpus),
            Some(2),
            "{n} was released"
        );
    }
    assert_eq!(s.allocations_of("gang-4").count(), 0);

    gang.id = "gang-3".into();
    gang.replicas = 3;
    assert_eq!(
        nodes_of(&s.place(&gang)),
        Ok(vec!["g1".to_owned(), "g2".to_owned(), "g3".to_owned()])
    );
    assert_eq!(s.allocations_of("gang-3").count(), 3);
    assert_eq!(s.release("gang-3").len(), 3);

    // Replicas share a node when it has room.
    let mut pair = gpu_job("pair", 1);
    pair.replicas = 2;
    assert_eq!(
        nodes_of(&s.place(&pair)),
        Ok(vec!["g1".to_owned(), "g1".to_owned()])
    );
}

#[test]
fn a_failed_gang_restores_the_jobs_it_preempted() {
    let nodes = vec![
        cpu_node("a", "eu", "c1", 4, 64),
        cpu_node("b", "eu", "c1", 4, 64),
    ];
    let allocations = vec![
        alloc("victim", "a", 4, 0, true),
        alloc("guard", "b", 4, 50, true),
    ];
    let mut s = Scheduler::new(nodes, allocations).expect("unique ids");
    let mut gang = cpu_job("gang", 4, 1);
    gang.replicas = 2;
    gang.priority = 10;
    gang.preemption = true;
    pending(&s.place(&gang));
    let victim: Vec<&Allocation> = s.allocations_of("victim").collect();
    assert_eq!(victim.len(), 1);
    assert_eq!(victim[0].node_id, "a");
    assert_eq!(s.free_capacity("a").map(|r| r.cpu_millis), Some(0));
    assert_eq!(s.allocations_of("gang").count(), 0);
}

// ---- bookkeeping ----

#[test]
fn existing_allocations_are_charged_and_released() {
    let nodes = vec![gpu_node("g", "eu", "NVIDIA H100", 81_559, 2)];
    let mut existing = alloc("old", "g", 10, 0, true);
    existing.gpu_uuids = vec!["GPU-g-1".into(), "GPU-unknown".into()];
    let orphan = alloc("orphan", "gone", 10, 0, true);
    let mut s = Scheduler::new(nodes, vec![existing.clone(), orphan.clone()]).expect("unique ids");
    assert_eq!(
        s.free_capacity("g"),
        Some(Resources {
            cpu_millis: 54_000,
            memory_bytes: 512 * GIB,
            gpus: 1
        })
    );
    assert_eq!(s.release("orphan"), vec![orphan]);
    assert_eq!(s.release("old"), vec![existing]);
    assert_eq!(s.release("old"), Vec::<Allocation>::new());
    assert_eq!(
        s.free_capacity("g").map(|r| (r.cpu_millis, r.gpus)),
        Some((64_000, 2))
    );
    assert_eq!(s.free_capacity("nope"), None);
}

#[test]
fn a_job_is_not_placed_twice_and_needs_a_replica() {
    let mut s = scheduler(vec![cpu_node("n", "eu", "c1", 8, 8)]);
    node_of(&s.place(&cpu_job("j", 1, 1)));
    let (reason, _) = pending(&s.place(&cpu_job("j", 1, 1)));
    assert!(
        reason.starts_with("job j already holds 1 allocation(s)"),
        "{reason}"
    );
    let mut zero = cpu_job("z", 1, 1);
    zero.replicas = 0;
    let (reason, _) = pending(&s.place(&zero));
    assert!(reason.contains("0 replicas"), "{reason}");
    assert_eq!(s.free_capacity("n").map(|r| r.cpu_millis), Some(7000));
}

#[test]
fn duplicate_node_ids_are_refused() {
    let err = Scheduler::new(
        vec![
            cpu_node("n", "eu", "c1", 8, 8),
            cpu_node("n", "us", "c1", 8, 8),
        ],
        Vec::new(),
    )
    .map(|_| ())
    .unwrap_err();
    assert_eq!(err, SchedulerError::DuplicateNode { id: "n".into() });
}

#[test]
fn job_requests_deserialize_with_documented_defaults() {
    let job: JobRequest =
        serde_json::from_str(r#"{"id":"j","resources":{"cpu_millis":500}}"#).expect("valid json");
    assert_eq!(job.replicas, 1);
    assert!(job.preemptible);
    assert!(!job.preemption);
    assert_eq!(job.strategy, Strategy::BinPack);
    assert_eq!(job, {
        let mut expected = JobRequest::new(
            "j",
            ResourceRequest {
                cpu_millis: 500,
                ..ResourceRequest::default()
            },
        );
        expected.priority = 0;
        expected
    });
    let spread: Strategy = serde_json::from_str(r#""spread""#).expect("valid json");
    assert_eq!(spread, Strategy::Spread);
    let decision = PlacementDecision::Pending {
        reason: "r".into(),
        filtered: FilterCounts::default(),
    };
    let json = serde_json::to_value(&decision).expect("serializable");
    assert_eq!(json["outcome"], "pending");
    let back: PlacementDecision = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, decision);
}

// ---- determinism ----

/// A tiny xorshift so the fleet below is varied but fixed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn varied_fleet(rng: &mut Rng) -> (Vec<NodeView>, Vec<Allocation>, Vec<JobRequest>) {
    let models = [
        ("NVIDIA H100", 81_559),
        ("NVIDIA H200", 143_771),
        ("NVIDIA A100", 40_960),
    ];
    let mut nodes = Vec::new();
    for i in 0..40 {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let cluster = ["c1", "c2"][(i / 2) % 2];
        let mut node = if i % 4 == 0 {
            let (model, mem) = models[i % 3];
            gpu_node(&format!("n{i:03}"), region, model, mem, 4)
        } else {
            cpu_node(&format!("n{i:03}"), region, cluster, 8 + rng.below(24), 64)
        };
        node.cluster = cluster.into();
        if i % 7 == 0 {
            node.health = NodeHealth::Unreachable;
        }
        nodes.push(node);
    }
    let allocations = (0..30)
        .map(|i| {
            let node = &nodes[rng.below(40) as usize];
            alloc(
                &format!("old{i}"),
                &node.id,
                1 + rng.below(3),
                rng.below(5) as i32,
                true,
            )
        })
        .collect();
    let jobs = (0..300)
        .map(|i| {
            let mut job = if i % 5 == 0 {
                let mut j = gpu_job(&format!("job{i:03}"), 1 + rng.below(3) as u32);
                if i % 10 == 0 {
                    j.resources.gpu_model = Some("h".into());
                }
                j
            } else {
                cpu_job(&format!("job{i:03}"), 1 + rng.below(6), 1 + rng.below(8))
            };
            // The first 200 fill the fleet; the rest have higher priority and often may preempt.
            job.priority = if i < 200 {
                rng.below(5)
            } else {
                5 + rng.below(5)
            } as i32;
            job.preemption = i >= 200 && i % 3 != 0;
            job.replicas = if i % 17 == 0 { 3 } else { 1 };
            if i % 4 == 0 {
                job.strategy = Strategy::Spread;
            }
            if i % 6 == 0 {
                job.data_locality = Some(Locality {
                    region: "us".into(),
                    cluster: None,
                });
            }
            job
        })
        .collect();
    (nodes, allocations, jobs)
}

#[test]
fn decisions_do_not_depend_on_input_order() {
    let (nodes, allocations, jobs) = varied_fleet(&mut Rng(0x9E37_79B9_7F4A_7C15));
    let (fill, urgent) = jobs.split_at(200);
    let mut forward = Scheduler::new(nodes.clone(), allocations.clone()).expect("unique ids");
    let mut expected = forward.place_all(fill);
    expected.extend(forward.place_all(urgent));

    let mut shuffled_nodes = nodes.clone();
    let mut rng = Rng(42);
    for i in (1..shuffled_nodes.len()).rev() {
        shuffled_nodes.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut reversed_allocations = allocations.clone();
    reversed_allocations.reverse();
    let mut other = Scheduler::new(shuffled_nodes, reversed_allocations).expect("unique ids");
    let mut fill_reversed = fill.to_vec();
    fill_reversed.reverse();
    let mut urgent_reversed = urgent.to_vec();
    urgent_reversed.reverse();
    let mut actual = other.place_all(&fill_reversed);
    actual.extend(other.place_all(&urgent_reversed));
    assert_eq!(actual, expected);

    // The run exercised every kind of outcome.
    let placed = expected
        .iter()
        .filter(|p| matches!(p.decision, PlacementDecision::Placed { .. }))
        .count();
    let preempting = expected
        .iter()
        .filter(|p| {
            matches!(&p.decision, PlacementDecision::Placed { preempted, .. } if !preempted.is_empty())
        })
        .count();
    assert!(placed > 50 && placed < expected.len(), "placed {placed}");
    assert!(preempting > 0);

    // What is still held never exceeds any node's capacity.
    let holders = allocations
        .iter()
        .map(|a| a.job_id.clone())
        .chain(jobs.iter().map(|j| j.id.clone()))
        .collect::<std::collections::BTreeSet<_>>();
    for node in &nodes {
        let held: u64 = holders
            .iter()
            .flat_map(|job| other.allocations_of(job))
            .filter(|a| a.node_id == node.id)
            .map(|a| a.resources.cpu_millis)
            .sum();
        assert!(
            held <= node.capacity.cpu_millis,
            "{} over-committed",
            node.id
        );
        let free = other.free_capacity(&node.id).expect("known node");
        assert_eq!(free.cpu_millis, node.capacity.cpu_millis - held);
    }
}

#[test]
fn equal_nodes_tie_on_the_smallest_id() {
    let mut s = scheduler(vec![
        cpu_node("b", "eu", "c1", 8, 8),
        cpu_node("a", "eu", "c1", 8, 8),
    ]);
    let mut job = cpu_job("j", 1, 1);
    job.strategy = Strategy::Spread;
    assert_eq!(node_of(&s.place(&job)), "a");
}
