//! Scheduler placement throughput on a simulated fleet: 1,000 nodes (800 CPU nodes, 200 nodes with 8 GPUs
//! of H100/H200/A100 models, two regions, five clusters) and 100,000 mixed jobs (CPU and GPU, some with
//! region, cluster, label or GPU-model constraints, data locality, spread, preemption, and a few gangs),
//! all generated from a fixed seed. Jobs arrive in waves of 1,000 and finish after a drawn number of
//! waves, so capacity is freed while the run goes on. One thread; placements per second is what one
//! core does.
//!
//! Run with `cargo bench -p meridian-registry --bench scheduler`. The report is this program's output,
//! written to stdout. It never touches the network or the disk.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::time::{Duration, Instant};

use meridian_registry::scheduler::{
    Constraints, GpuDevice, JobRequest, Locality, NodeHealth, NodeView, PlacementDecision,
    ResourceRequest, Resources, Scheduler, Strategy,
};

const SEED: u64 = 0x5EED_2026_0001;
const CPU_NODES: usize = 800;
const GPU_NODES: usize = 200;
const WAVES: usize = 100;
const JOBS_PER_WAVE: usize = 1_000;
/// A job runs for 1..=MAX_LIFETIME waves.
const MAX_LIFETIME: u64 = 12;
const GIB: u64 = 1 << 30;

/// xorshift64*: tiny, fixed-seed, good enough to vary a simulated fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const SITES: [(&str, &str); 5] = [
    ("eu", "eu-1"),
    ("eu", "eu-2"),
    ("eu", "eu-3"),
    ("us", "us-1"),
    ("us", "us-2"),
];

const GPU_MODELS: [(&str, u64); 4] = [
    ("NVIDIA H100 80GB HBM3", 81_559),
    ("NVIDIA H200", 143_771),
    ("NVIDIA A100-SXM4-80GB", 81_920),
    ("NVIDIA A100-SXM4-40GB", 40_960),
];

fn fleet(rng: &mut Rng) -> Vec<NodeView> {
    let mut nodes = Vec::with_capacity(CPU_NODES + GPU_NODES);
    for i in 0..CPU_NODES + GPU_NODES {
        let (region, cluster) = *rng.pick(&SITES);
        let has_gpus = i >= CPU_NODES;
        let mut labels = BTreeMap::new();
        labels.insert("zone".to_owned(), rng.pick(&["a", "b", "c"]).to_string());
        let instance = if rng.percent(25) { "spot" } else { "on-demand" };
        labels.insert("instance".to_owned(), instance.to_owned());
        let health = match rng.below(1000) {
            0..=9 => NodeHealth::Unreachable,
            10..=14 => NodeHealth::Draining,
            _ => NodeHealth::Ready,
        };
        let (cores, mem_gib, gpus) = if has_gpus {
            let (model, memory_mib) = *rng.pick(&GPU_MODELS);
            let gpus: Vec<GpuDevice> = (0..8)
                .map(|g| GpuDevice {
                    uuid: format!("GPU-{i:04}-{g}"),
                    index: g,
                    model: model.to_owned(),
                    memory_mib,
                    healthy: !rng.percent(1),
                })
                .collect();
            (*rng.pick(&[128, 192]), *rng.pick(&[1024, 2048]), gpus)
        } else {
            (
                *rng.pick(&[32, 48, 64, 96]),
                *rng.pick(&[128, 256, 384, 512]),
                Vec::new(),
            )
        };
        nodes.push(NodeView {
            id: format!("{cluster}-{}{i:04}", if has_gpus { "g" } else { "c" }),
            region: region.to_owned(),
            cluster: cluster.to_owned(),
            labels,
            health,
            capacity: Resources {
                cpu_millis: cores * 1000,
                memory_bytes: mem_gib * GIB,
                gpus: gpus.len() as u32,
            },
            gpus,
        });
    }
    nodes
}

fn job(rng: &mut Rng, n: usize) -> JobRequest {
    let kind = rng.below(1000);
    let mut resources = ResourceRequest::default();
    let mut replicas = 1;
    if kind < 10 {
        // Gang: distributed training or a CPU fan-out.
        replicas = 2 + rng.below(7) as u32;
        if rng.percent(50) {
            resources.gpus = 8;
            resources.cpu_millis = 32_000;
            resources.memory_bytes = 256 * GIB;
        } else {
            resources.cpu_millis = 16_000;
            resources.memory_bytes = 64 * GIB;
        }
    } else if kind < 110 {
        resources.gpus = *rng.pick(&[1, 1, 1, 2, 4, 8]);
        resources.cpu_millis = u64::from(resources.gpus) * 8_000;
        resources.memory_bytes = u64::from(resources.gpus) * 64 * GIB;
        if rng.percent(30) {
            resources.gpu_model = Some(rng.pick(&["H100", "H200", "A100"]).to_string());
        }
        if rng.percent(10) {
            resources.gpu_min_memory_mib = Some(80_000);
        }
    } else {
        resources.cpu_millis = *rng.pick(&[500, 1_000, 2_000, 2_000, 4_000, 4_000, 8_000, 16_000]);
        resources.memory_bytes = *rng.pick(&[1, 2, 4, 8, 8, 16, 32, 64]) * GIB;
    }

    let mut constraints = Constraints::default();
    let site = *rng.pick(&SITES);
    match rng.below(100) {
        0..=19 => constraints.region = Some(site.0.to_owned()),
        20..=24 => {
            constraints.region = Some(site.0.to_owned());
            constraints.cluster = Some(site.1.to_owned());
        }
        25..=29 => {
            constraints
                .labels
                .insert("instance".to_owned(), "on-demand".to_owned());
        }
        _ => {}
    }
    let data_locality = rng.percent(10).then(|| {
        let site = *rng.pick(&SITES);
        Locality {
            region: site.0.to_owned(),
            cluster: rng.percent(50).then(|| site.1.to_owned()),
        }
    });
    let preemption = rng.percent(2);
    JobRequest {
        id: format!("job-{n:06}"),
        priority: if preemption {
            90 + rng.below(10) as i32
        } else {
            rng.below(80) as i32
        },
        resources,
        constraints,
        replicas,
        preemption,
        project: String::new(),
        preemption_ceiling: 0,
        preemptible: true,
        data_locality,
        strategy: if rng.percent(10) {
            Strategy::Spread
        } else {
            Strategy::BinPack
        },
    }
}

/// What one simulated run decided; identical across runs because the scheduler is deterministic.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    decisions: u64,
    placed_jobs: u64,
    placed_replicas: u64,
    pending: u64,
    gangs_placed: u64,
    gangs_pending: u64,
    preempting_jobs: u64,
    preempted_jobs: u64,
    released_jobs: u64,
    /// CPU, memory and GPUs held at the end, summed over the fleet.
    held: Resources,
    over_committed_nodes: u32,
}

/// How long one run took.
struct Timing {
    build: Duration,
    place: Duration,
    release: Duration,
    slowest_wave: Duration,
}

const RUNS: usize = 3;

fn run(
    nodes: &[NodeView],
    jobs: &[JobRequest],
    shape_of: &HashMap<&str, (u64, bool)>,
) -> (Tally, Timing) {
    let started = Instant::now();
    let mut scheduler = match Scheduler::new(nodes.to_vec(), Vec::new()) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "fleet refused: {e}");
            std::process::exit(1);
        }
    };
    let mut timing = Timing {
        build: started.elapsed(),
        place: Duration::ZERO,
        release: Duration::ZERO,
        slowest_wave: Duration::ZERO,
    };

    let mut finishing: Vec<Vec<String>> = vec![Vec::new(); WAVES + MAX_LIFETIME as usize + 1];
    let mut tally = Tally::default();
    for (wave, batch) in jobs.chunks(JOBS_PER_WAVE).enumerate() {
        let started = Instant::now();
        for job_id in std::mem::take(&mut finishing[wave]) {
            if !scheduler.release(&job_id).is_empty() {
                tally.released_jobs += 1;
            }
        }
        timing.release += started.elapsed();

        let started = Instant::now();
        let decisions = scheduler.place_all(batch);
        let elapsed = started.elapsed();
        timing.place += elapsed;
        timing.slowest_wave = timing.slowest_wave.max(elapsed);

        for placement in decisions {
            tally.decisions += 1;
            let (life, gang) = shape_of
                .get(placement.job_id.as_str())
                .copied()
                .unwrap_or((1, false));
            match placement.decision {
                PlacementDecision::Placed {
                    assignments,
                    preempted,
                } => {
                    tally.placed_jobs += 1;
                    tally.placed_replicas += assignments.len() as u64;
                    tally.gangs_placed += u64::from(gang);
                    if !preempted.is_empty() {
                        tally.preempting_jobs += 1;
                        tally.preempted_jobs += preempted.len() as u64;
                    }
                    finishing[wave + life as usize].push(placement.job_id);
                }
                PlacementDecision::Pending { .. } => {
                    tally.pending += 1;
                    tally.gangs_pending += u64::from(gang);
                }
            }
        }
    }

    // Check the books after the timed run: nothing a node holds exceeds its capacity.
    for node in nodes {
        let healthy = node.gpus.iter().filter(|g| g.healthy).count() as u32;
        match scheduler.free_capacity(&node.id) {
            Some(free)
                if free.cpu_millis <= node.capacity.cpu_millis
                    && free.memory_bytes <= node.capacity.memory_bytes
                    && free.gpus <= healthy =>
            {
                tally.held.cpu_millis += node.capacity.cpu_millis - free.cpu_millis;
                tally.held.memory_bytes += node.capacity.memory_bytes - free.memory_bytes;
                tally.held.gpus += healthy - free.gpus;
            }
            _ => tally.over_committed_nodes += 1,
        }
    }
    (tally, timing)
}

fn main() {
    let mut rng = Rng(SEED);
    let nodes = fleet(&mut rng);
    let jobs: Vec<JobRequest> = (0..WAVES * JOBS_PER_WAVE)
        .map(|n| job(&mut rng, n))
        .collect();
    let lifetimes: Vec<u64> = jobs.iter().map(|_| 1 + rng.below(MAX_LIFETIME)).collect();
    // Per job: how many waves it runs, and whether it is a gang.
    let shape_of: HashMap<&str, (u64, bool)> = jobs
        .iter()
        .zip(&lifetimes)
        .map(|(j, l)| (j.id.as_str(), (*l, j.replicas > 1)))
        .collect();

    let mut runs: Vec<(Tally, Timing)> = (0..RUNS).map(|_| run(&nodes, &jobs, &shape_of)).collect();
    let deterministic = runs.windows(2).all(|w| w[0].0 == w[1].0);
    runs.sort_by_key(|(_, timing)| timing.place);
    let place_times: Vec<String> = runs
        .iter()
        .map(|(_, t)| format!("{:.3}", t.place.as_secs_f64()))
        .collect();
    let (tally, timing) = &runs[RUNS / 2];

    let total = nodes.iter().fold(Resources::default(), |mut acc, n| {
        acc.cpu_millis += n.capacity.cpu_millis;
        acc.memory_bytes += n.capacity.memory_bytes;
        acc.gpus += n.gpus.iter().filter(|g| g.healthy).count() as u32;
        acc
    });
    let per_second = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    let share = |n: u64| 100.0 * n as f64 / tally.decisions as f64;
    let report = format!(
        "scheduler benchmark (single thread, seed {SEED:#x}, median of {RUNS} runs by placement time)\n\
         fleet: {} nodes ({CPU_NODES} CPU, {GPU_NODES} with 8 GPUs), 2 regions, {} clusters; index built in {:.2} ms\n\
         jobs: {} in {WAVES} waves of {JOBS_PER_WAVE}, each running 1..={MAX_LIFETIME} waves\n\
         decisions: {} in {:.3} s -> {:.0} decisions/s, {:.1} us/decision (slowest wave {:.1} ms)\n\
         placed: {} jobs ({:.1}%), {} replicas -> {:.0} placements/s\n\
         pending: {} jobs ({:.1}%); gangs placed {} / pending {}\n\
         preemption: {} jobs evicted {} jobs\n\
         releases: {} jobs in {:.3} s\n\
         end state: CPU {:.1}% held, memory {:.1}% held, healthy GPUs {:.1}% held; over-committed nodes: {}\n\
         placement time per run (s): {}; identical decisions in every run: {deterministic}\n",
        nodes.len(),
        SITES.len(),
        timing.build.as_secs_f64() * 1e3,
        jobs.len(),
        tally.decisions,
        timing.place.as_secs_f64(),
        per_second(tally.decisions, timing.place),
        timing.place.as_secs_f64() * 1e6 / tally.decisions as f64,
        timing.slowest_wave.as_secs_f64() * 1e3,
        tally.placed_jobs,
        share(tally.placed_jobs),
        tally.placed_replicas,
        per_second(tally.placed_replicas, timing.place),
        tally.pending,
        share(tally.pending),
        tally.gangs_placed,
        tally.gangs_pending,
        tally.preempting_jobs,
        tally.preempted_jobs,
        tally.released_jobs,
        timing.release.as_secs_f64(),
        100.0 * tally.held.cpu_millis as f64 / total.cpu_millis as f64,
        100.0 * tally.held.memory_bytes as f64 / total.memory_bytes as f64,
        100.0 * f64::from(tally.held.gpus) / f64::from(total.gpus),
        tally.over_committed_nodes,
        place_times.join(", "),
    );
    let _ = std::io::stdout().lock().write_all(report.as_bytes());
    if tally.over_committed_nodes > 0 || !deterministic {
        std::process::exit(1);
    }
}
