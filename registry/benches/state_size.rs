//! The replicated state at the size the registry must carry: 10,000 nodes, 100,000 finished jobs (each
//! submitted, placed, started and finished through `apply`, as the log would carry them) and about a
//! million audit records. Measures what it costs to hold and snapshot that state, and what one more
//! command costs to apply on it, under apply version 1 (every command audited), 2 (machine traffic counted
//! instead), 3 (the dedup table remembers records by id) and 4 (the oldest audit records archived out of the
//! state, as the leader's archiver does with its defaults: past 100,000 live records, 10,000 at a time).
//!
//! `STATE_SIZE_VERSIONS=3,4` measures only those versions.
//!
//! Run with `cargo bench -p meridian-registry --bench state_size`. The report is this program's output.
//! It never touches the network or the disk.

use std::time::{Duration, Instant};

use meridian_registry::controllers::audit_archive::{archive_op, AuditRetention};
use meridian_registry::scheduler::{ResourceRequest, Resources};
use meridian_registry::state::{
    job_reservation, Actor, AuditOp, AuditOutcome, ClusterOp, Command, FleetOp, JobEventKind,
    JobEventOp, JobOp, JobSpec, Op, PlacementOp, RegistryState, ReplicaPlacement, TenancyOp,
    WrappedKey,
};

const NODES: usize = 10_000;
const JOBS: usize = 100_000;
/// Audit records added by principals besides the workload's own, to reach about a million records.
const EXTRA_AUDIT: usize = 590_000;
/// Jobs run through their whole life again on the full state to time one more command.
const PROBE_JOBS: usize = 1_000;
const T0: u64 = 1_800_000_000_000;
const PROJECT: &str = "prj_default";

struct Builder {
    state: RegistryState,
    index: u64,
    at: u64,
}

impl Builder {
    fn apply(&mut self, actor: Actor, op: Op, request_id: Option<String>) {
        self.index += 1;
        self.at += 1;
        let mut cmd = Command::new(self.at, actor, op);
        cmd.request_id = request_id;
        if let Err(e) = self.state.apply(self.index, &cmd) {
            panic!("command {} refused: {e}", self.index);
        }
    }
}

fn admin() -> Actor {
    Actor::principal("sa_admin", "admin")
}

fn agent(node: usize) -> Actor {
    Actor {
        principal_id: None,
        name: format!("spiffe://bench.meridian.test/agent/eu/eu1/n{node}"),
        key_id: None,
    }
}

fn node_key(node: usize) -> String {
    format!("eu/eu1/n{node}")
}

fn spec() -> JobSpec {
    let mut spec = JobSpec::new("python");
    spec.args = vec!["train.py".into(), "--epochs".into(), "3".into()];
    spec.resources = ResourceRequest {
        cpu_millis: 1_000,
        memory_bytes: 1 << 30,
        ..Default::default()
    };
    spec
}

/// One job's whole life: submitted by a principal, placed by the leader, started and finished by its
/// agent's reports.
fn run_job(b: &mut Builder, n: usize) {
    let id = format!("job_{n:08}");
    let node = n % NODES;
    let spec = spec();
    let resources: Resources = job_reservation(&spec);
    b.apply(
        admin(),
        Op::Jobs(JobOp::SubmitJob {
            principal_id: Some("sa_admin".into()),
            id: id.clone(),
            project_id: PROJECT.into(),
            spec,
        }),
        Some(format!("req_{n:08}")),
    );
    b.apply(
        Actor::system(),
        Op::Jobs(JobOp::PlaceJobs {
            placements: vec![PlacementOp::Place {
                job_id: id.clone(),
                attempt: 1,
                replicas: vec![ReplicaPlacement {
                    node: node_key(node),
                    lease_epoch: 1,
                    gpu_uuids: Vec::new(),
                    resources,
                }],
            }],
        }),
        None,
    );
    for kind in [
        JobEventKind::Started,
        JobEventKind::Exited {
            exit_code: Some(0),
            signal: None,
            cancelled: false,
            timed_out: false,
            cpu_time_ms: Some(1_000),
            max_rss_bytes: Some(1 << 28),
            oom_killed: false,
        },
    ] {
        let at_ms = b.at;
        b.apply(
            agent(node),
            Op::Jobs(JobOp::ReportJobEvents {
                node: node_key(node),
                lease_epoch: 1,
                events: vec![JobEventOp {
                    job_id: id.clone(),
                    attempt: 1,
                    replica: 0,
                    at_ms,
                    kind,
                }],
            }),
            None,
        );
    }
}

struct Measured {
    build: Duration,
    commands: u64,
    audit: usize,
    bytes: usize,
    serialize: Duration,
    load: Duration,
    copy: Duration,
    per_job: Duration,
}

fn measure(version: u32) -> Measured {
    let mut b = Builder {
        state: RegistryState::default(),
        index: 0,
        at: T0,
    };
    let started = Instant::now();
    b.apply(
        Actor::system(),
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
            admin_key_hash: "00".repeat(32),
            admin_key_last4: "abcd".into(),
        }),
        None,
    );
    b.apply(
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version }),
        None,
    );
    for node in 0..NODES {
        b.apply(
            agent(node),
            Op::Fleet(FleetOp::RegisterNode {
                region: "eu".into(),
                cluster: "eu1".into(),
                node: format!("n{node}"),
                cpu_cores: 64,
                memory_bytes: 512 << 30,
                gpu_count: 0,
                agent_version: "1.0".into(),
                gpus: Vec::new(),
                labels: Default::default(),
                rpc_addr: format!("10.0.{}.{}:7180", node / 250, node % 250),
                held: Vec::new(),
                os: "linux".into(),
                limit_mode: "cgroup-v2".into(),
                admit_new: Some(true),
            }),
            None,
        );
    }
    for n in 0..JOBS {
        run_job(&mut b, n);
    }
    for n in 0..EXTRA_AUDIT {
        b.apply(
            admin(),
            Op::Audit(AuditOp::RecordAudit {
                action: "job.logs".into(),
                project: Some(PROJECT.into()),
                target: format!("job_{:08}", n % JOBS),
                outcome: AuditOutcome::Success,
                detail: String::new(),
            }),
            None,
        );
    }
    if version >= 4 {
        // What the leader's archiver proposes with its defaults, until it finds nothing due. (Writing the
        // records to segment files is the coordinator's I/O, not measured here.)
        while let Some(op) = archive_op(&b.state, AuditRetention::default()) {
            b.apply(Actor::system(), op, None);
        }
    }
    let build = started.elapsed();
    let commands = b.index;

    let t = Instant::now();
    let copy = b.state.clone();
    let copy_time = t.elapsed();
    drop(copy);
    let t = Instant::now();
    let bytes = b.state.to_bytes();
    let serialize = t.elapsed();
    let t = Instant::now();
    let loaded = RegistryState::from_bytes(&bytes).expect("the snapshot loads");
    let load = t.elapsed();
    assert!(loaded.to_bytes() == bytes, "the snapshot round-trips");
    drop(loaded);

    let probe = std::env::var("STATE_SIZE_PROBE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(PROBE_JOBS);
    let t = Instant::now();
    for n in JOBS..JOBS + probe {
        run_job(&mut b, n);
    }
    let per_job = t.elapsed() / probe as u32;
    Measured {
        build,
        commands,
        audit: b.state.audit_records().len(),
        bytes: bytes.len(),
        serialize,
        load,
        copy: copy_time,
        per_job,
    }
}

fn main() {
    println!(
        "# Registry state: {NODES} nodes, {JOBS} finished jobs, {EXTRA_AUDIT} principal audit records on top"
    );
    println!();
    println!("| apply version | commands | audit records | state bytes | serialize | load | copy under lock | one job's 4 commands |");
    println!("|---|---|---|---|---|---|---|---|");
    let versions: Vec<u32> = match std::env::var("STATE_SIZE_VERSIONS") {
        Ok(list) => list
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect(),
        Err(_) => vec![1, 2, 3, 4],
    };
    for version in versions {
        // Twice each, keeping the faster time of each measure: the first run also pays for the
        // allocator's first touch of the memory.
        let (a, b) = (measure(version), measure(version));
        let m = Measured {
            serialize: a.serialize.min(b.serialize),
            load: a.load.min(b.load),
            copy: a.copy.min(b.copy),
            per_job: a.per_job.min(b.per_job),
            ..a
        };
        println!(
            "| {version} | {} | {} | {:.1} MiB | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} µs |",
            m.commands,
            m.audit,
            m.bytes as f64 / f64::from(1 << 20),
            m.serialize.as_secs_f64() * 1e3,
            m.load.as_secs_f64() * 1e3,
            m.copy.as_secs_f64() * 1e3,
            m.per_job.as_secs_f64() * 1e6,
        );
        eprintln!(
            "(version {version}: built in {:.1} s)",
            m.build.as_secs_f64()
        );
    }
}
