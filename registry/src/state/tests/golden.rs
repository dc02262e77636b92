//! Golden replay: a committed log, written once by an earlier build, must keep replaying to the same
//! outcomes and the same state, and a committed snapshot must keep loading and serializing byte for byte.
//!
//! The files live in `registry/tests/golden/`, as segments that each continue the log before them:
//! `registry-log.jsonl` (one `{index, command, outcome}` per line, every variant of its build at least
//! once) and `registry-snapshot.json` (the state after it), then `registry-log-1.jsonl` and
//! `registry-snapshot-1.json`, which switch on apply version 1 and show commands applied under it. A change
//! that makes either test fail changes what replicas compute from a log they already hold: during a rolling
//! upgrade, old and new coordinators would diverge. Such a change must be gated behind a committed version,
//! never made by rewriting the files.
//!
//! A segment is written only when missing: `cargo test -p meridian-registry golden` with
//! `MERIDIAN_GOLDEN_WRITE=1` writes the first from a seeded log (random commands from the replica test's
//! generator, then one sample of every variant that log did not reach) and each later one from its own
//! script. A new `Op` variant fails to compile in [`variant`] until it has a number;
//! [`every_variant_has_a_golden_sample`] then fails until a new segment carries it. Written segments are
//! never rewritten: new semantics get a new apply version and a new segment.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;
use crate::authz::Role;

/// How many `Op` variants there are; [`variant`] numbers them `0..VARIANTS`.
const VARIANTS: usize = 32;

/// The number of `op`'s variant. Exhaustive on purpose: a new variant does not compile until it is here.
fn variant(op: &Op) -> usize {
    match op {
        Op::Cluster(ClusterOp::Noop) => 0,
        Op::Tenancy(TenancyOp::Bootstrap { .. }) => 1,
        Op::Tenancy(TenancyOp::CreateProject { .. }) => 2,
        Op::Tenancy(TenancyOp::DeleteProject { .. }) => 3,
        Op::Tenancy(TenancyOp::CreatePrincipal { .. }) => 4,
        Op::Tenancy(TenancyOp::SetPrincipalDisabled { .. }) => 5,
        Op::Tenancy(TenancyOp::CreateKey { .. }) => 6,
        Op::Tenancy(TenancyOp::RevokeKey { .. }) => 7,
        Op::Tenancy(TenancyOp::BindRole { .. }) => 8,
        Op::Tenancy(TenancyOp::UnbindRole { .. }) => 9,
        Op::Secrets(SecretOp::PutSecret { .. }) => 10,
        Op::Secrets(SecretOp::DeleteSecret { .. }) => 11,
        Op::Secrets(SecretOp::RewrapDataKeys { .. }) => 12,
        Op::Audit(AuditOp::RecordAudit { .. }) => 13,
        Op::Fleet(FleetOp::RegisterNode { .. }) => 14,
        Op::Cluster(ClusterOp::Batch { .. }) => 15,
        Op::Fleet(FleetOp::SetNodeHealth { .. }) => 16,
        Op::Fleet(FleetOp::SetNodeDraining { .. }) => 17,
        Op::Jobs(JobOp::SubmitJob { .. }) => 18,
        Op::Jobs(JobOp::CancelJob { .. }) => 19,
        Op::Jobs(JobOp::PlaceJobs { .. }) => 20,
        Op::Jobs(JobOp::ReportJobEvents { .. }) => 21,
        Op::Fleet(FleetOp::SetIdleGpus { .. }) => 22,
        Op::Jobs(JobOp::PurgeJobs { .. }) => 23,
        Op::Identity(IdentityOp::DenyIdentity { .. }) => 24,
        Op::Identity(IdentityOp::AllowIdentity { .. }) => 25,
        Op::Fleet(FleetOp::SetClusterPolicy { .. }) => 26,
        Op::Fleet(FleetOp::ApproveNode { .. }) => 27,
        Op::Tenancy(TenancyOp::SetProjectPolicy { .. }) => 28,
        Op::Secrets(SecretOp::ReplaceDataKeys { .. }) => 29,
        Op::Cluster(ClusterOp::SetApplyVersion { .. }) => 30,
        Op::Audit(AuditOp::ArchiveAudit { .. }) => 31,
    }
}

/// One line of the golden log.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    index: u64,
    command: Command,
    /// `{"Ok": outcome}` or `{"Err": refusal}`, as `apply` answered when the log was written.
    outcome: serde_json::Value,
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The segments' files, (log, snapshot), oldest first; each log continues the one before it.
const SEGMENTS: [(&str, &str); 6] = [
    ("registry-log.jsonl", "registry-snapshot.json"),
    ("registry-log-1.jsonl", "registry-snapshot-1.json"),
    ("registry-log-2.jsonl", "registry-snapshot-2.json"),
    ("registry-log-3.jsonl", "registry-snapshot-3.json"),
    ("registry-log-4.jsonl", "registry-snapshot-4.json"),
    ("registry-log-5.jsonl", "registry-snapshot-5.json"),
];

/// One segment as read back.
struct Segment {
    log_path: PathBuf,
    snapshot_path: PathBuf,
    entries: Vec<Entry>,
}

/// Writes the segment that continues `state` (after the log's `last` entry), the `n`th.
fn generate_segment(n: usize, state: RegistryState, last: Option<&Entry>) -> Recorder {
    match n {
        0 => {
            let (entries, state) = generate();
            Recorder {
                state,
                entries,
                next_index: 0,
            }
        }
        1 => {
            let last = last.expect("a later segment continues a log");
            apply_version_1(state, last.index + 1, last.command.at_ms)
        }
        2 => {
            let last = last.expect("a later segment continues a log");
            apply_version_2(state, last.index + 1, last.command.at_ms)
        }
        3 => {
            let last = last.expect("a later segment continues a log");
            apply_version_3(state, last.index + 1, last.command.at_ms)
        }
        4 => {
            let last = last.expect("a later segment continues a log");
            apply_version_4(state, last.index + 1, last.command.at_ms)
        }
        _ => {
            let last = last.expect("a later segment continues a log");
            apply_version_5(state, last.index + 1, last.command.at_ms)
        }
    }
}

/// Reads every golden segment, writing the missing ones first when `MERIDIAN_GOLDEN_WRITE` is set.
fn golden_segments() -> Vec<Segment> {
    // Tests run in parallel: one of them writes the files, the others wait for it.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _writing = WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut segments: Vec<Segment> = Vec::new();
    let mut state = RegistryState::default();
    for (n, (log, snapshot)) in SEGMENTS.iter().enumerate() {
        let log_path = golden_dir().join(log);
        let snapshot_path = golden_dir().join(snapshot);
        if !log_path.exists() && std::env::var_os("MERIDIAN_GOLDEN_WRITE").is_some() {
            let last = segments.last().and_then(|s| s.entries.last());
            let rec = generate_segment(n, state.clone(), last);
            std::fs::create_dir_all(golden_dir()).expect("golden dir");
            let mut text = String::new();
            for e in &rec.entries {
                text.push_str(&serde_json::to_string(e).expect("entry serializes"));
                text.push('\n');
            }
            std::fs::write(&log_path, text).expect("write golden log");
            std::fs::write(&snapshot_path, rec.state.to_bytes()).expect("write golden snapshot");
        }
        let text = std::fs::read_to_string(&log_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (write it once with MERIDIAN_GOLDEN_WRITE=1)",
                log_path.display()
            )
        });
        let entries: Vec<Entry> = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{} line {}: {e}", log_path.display(), i + 1))
            })
            .collect();
        for entry in &entries {
            let _ = state.apply(entry.index, &entry.command);
        }
        segments.push(Segment {
            log_path,
            snapshot_path,
            entries,
        });
    }
    segments
}

/// Every golden entry, in log order.
fn golden_log() -> Vec<Entry> {
    golden_segments()
        .into_iter()
        .flat_map(|s| s.entries)
        .collect()
}

/// The segment that switches on apply version 5: a node joins, a job runs there and is killed at its
/// memory limit before the switch (recorded as a signal) and another after it (recorded as out of memory).
fn apply_version_5(state: RegistryState, next_index: u64, at: u64) -> Recorder {
    const NODE: &str = "eu/eu1/oom";
    let mut rec = Recorder::continuing(state, next_index);
    let mut at = at;
    let mut push = |rec: &mut Recorder, actor: Actor, op: Op| {
        at += 1_000;
        rec.push(Command::new(at, actor, op));
        at
    };
    push(
        &mut rec,
        Actor::system(),
        Op::Fleet(FleetOp::RegisterNode {
            region: "eu".into(),
            cluster: "eu1".into(),
            node: "oom".into(),
            cpu_cores: 8,
            memory_bytes: 1 << 34,
            gpu_count: 0,
            agent_version: "golden".into(),
            gpus: Vec::new(),
            labels: BTreeMap::new(),
            rpc_addr: "127.0.0.1:7301".into(),
            held: Vec::new(),
            os: "linux".into(),
            limit_mode: "cgroup-v2".into(),
            admit_new: Some(true),
        }),
    );
    let epoch = rec
        .state
        .nodes()
        .find(|n| n.key == NODE)
        .map_or(1, |n| n.lease_epoch);
    for (n, job) in ["job_oom_before", "job_oom_after"].into_iter().enumerate() {
        let mut spec = JobSpec::new("tail");
        spec.resources.memory_bytes = 32 << 20;
        push(
            &mut rec,
            admin(),
            Op::Jobs(JobOp::SubmitJob {
                id: job.into(),
                project_id: "prj_default".into(),
                spec,
                principal_id: Some("sa_admin".into()),
            }),
        );
        push(
            &mut rec,
            Actor::system(),
            Op::Jobs(JobOp::PlaceJobs {
                placements: vec![PlacementOp::Place {
                    job_id: job.into(),
                    attempt: 1,
                    replicas: vec![ReplicaPlacement {
                        node: NODE.into(),
                        lease_epoch: epoch,
                        gpu_uuids: Vec::new(),
                        resources: crate::scheduler::Resources {
                            cpu_millis: 0,
                            memory_bytes: 32 << 20,
                            gpus: 0,
                        },
                    }],
                }],
            }),
        );
        if n == 1 {
            push(
                &mut rec,
                Actor::system(),
                Op::Cluster(ClusterOp::SetApplyVersion { version: 5 }),
            );
        }
        let report = |at: u64, kind: JobEventKind| {
            Op::Jobs(JobOp::ReportJobEvents {
                node: NODE.into(),
                lease_epoch: epoch,
                events: vec![JobEventOp {
                    job_id: job.into(),
                    attempt: 1,
                    replica: 0,
                    at_ms: at,
                    kind,
                }],
            })
        };
        let started = push(&mut rec, Actor::system(), Op::Cluster(ClusterOp::Noop));
        push(
            &mut rec,
            Actor::system(),
            report(started, JobEventKind::Started),
        );
        push(
            &mut rec,
            Actor::system(),
            report(
                started + 500,
                JobEventKind::Exited {
                    exit_code: None,
                    signal: Some(9),
                    cancelled: false,
                    timed_out: false,
                    cpu_time_ms: Some(30),
                    max_rss_bytes: Some(32 << 20),
                    oom_killed: true,
                },
            ),
        );
    }
    rec
}

/// The segment that switches on apply version 4: archiving refused before the switch and from a
/// principal, the oldest records archived by the system (all but the last ten), the same archive again
/// (refused: those records are gone), and a record appended after, chained to the live records.
fn apply_version_4(state: RegistryState, next_index: u64, at: u64) -> Recorder {
    let through_seq = state.audit_head().0.saturating_sub(10).max(1);
    let archive = || Op::Audit(AuditOp::ArchiveAudit { through_seq });
    let mut rec = Recorder::continuing(state, next_index);
    rec.push(Command::new(at + 1_000, Actor::system(), archive()));
    rec.push(Command::new(
        at + 2_000,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 4 }),
    ));
    rec.push(Command::new(at + 3_000, admin(), archive()));
    rec.push(Command::new(at + 4_000, Actor::system(), archive()));
    rec.push(Command::new(at + 5_000, Actor::system(), archive()));
    rec.push(Command::new(
        at + 6_000,
        admin(),
        Op::Audit(AuditOp::RecordAudit {
            action: "golden.after_archive".into(),
            project: None,
            target: "golden".into(),
            outcome: AuditOutcome::Denied,
            detail: "chained to the checkpoint".into(),
        }),
    ));
    rec
}

/// The segment that switches on apply version 3: a project created with a request id, its policy changed,
/// and the creation sent again, which answers the project as it is now.
fn apply_version_3(state: RegistryState, next_index: u64, at: u64) -> Recorder {
    let mut rec = Recorder::continuing(state, next_index);
    rec.push(Command::new(
        at + 1_000,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 3 }),
    ));
    let mut create = Command::new(
        at + 2_000,
        admin(),
        Op::Tenancy(TenancyOp::CreateProject {
            id: "prj_v3".into(),
            name: "v3".into(),
            description: "remembered by id".into(),
            data_key: wk("mk1", "v3"),
            policy: None,
        }),
    );
    create.request_id = Some("req-v3-create".into());
    rec.push(create.clone());
    rec.push(Command::new(
        at + 3_000,
        admin(),
        Op::Tenancy(TenancyOp::SetProjectPolicy {
            project_id: "prj_v3".into(),
            update: PolicyUpdate {
                max_pending_jobs: Some(7),
                ..PolicyUpdate::default()
            },
        }),
    ));
    create.at_ms = at + 4_000;
    rec.push(create);
    rec
}

/// The segment that switches on apply version 2: machine traffic after it is counted, not audited (a
/// health change and an empty placement pass by the system, a report from an agent for a node it does not
/// hold, refused).
fn apply_version_2(state: RegistryState, next_index: u64, at: u64) -> Recorder {
    let (key, lease_epoch) = state
        .nodes()
        .next()
        .map(|n| (n.key.clone(), n.lease_epoch))
        .expect("the first segment registers nodes");
    let mut rec = Recorder::continuing(state, next_index);
    rec.push(Command::new(
        at + 1_000,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 2 }),
    ));
    rec.push(Command::new(
        at + 2_000,
        Actor::system(),
        Op::Fleet(FleetOp::SetNodeHealth {
            key,
            health: NodeHealthState::Unreachable,
            lease_epoch,
        }),
    ));
    rec.push(Command::new(
        at + 3_000,
        Actor::system(),
        Op::Jobs(JobOp::PlaceJobs {
            placements: Vec::new(),
        }),
    ));
    let agent = Actor {
        principal_id: None,
        name: "spiffe://golden.meridian.test/agent/xx/xx1/ghost".into(),
        key_id: None,
    };
    rec.push(Command::new(
        at + 4_000,
        agent,
        Op::Jobs(JobOp::ReportJobEvents {
            node: "xx/xx1/ghost".into(),
            lease_epoch: 1,
            events: Vec::new(),
        }),
    ));
    rec
}

/// The segment that switches on apply version 1: the switch, then a command stamped before the one
/// before it (applied at that one's time), and the refusals of lowering the version and of a principal
/// changing it.
fn apply_version_1(state: RegistryState, next_index: u64, at: u64) -> Recorder {
    let mut rec = Recorder::continuing(state, next_index);
    rec.push(Command::new(
        at + 1_000,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 1 }),
    ));
    let project = |id: &str, name: &str| {
        Op::Tenancy(TenancyOp::CreateProject {
            id: id.into(),
            name: name.into(),
            description: "apply version 1".into(),
            data_key: wk("mk1", name),
            policy: None,
        })
    };
    rec.push(Command::new(at + 2_000, admin(), project("prj_v1", "v1")));
    // A leader whose clock is a minute behind: the project is created at the previous command's time.
    rec.push(Command::new(
        at - 60_000,
        admin(),
        project("prj_v1_late", "v1-late"),
    ));
    rec.push(Command::new(
        at + 3_000,
        admin(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 1 }),
    ));
    rec.push(Command::new(
        at + 4_000,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 0 }),
    ));
    rec
}

/// Applies `cmd` at the next index and records what it answered.
struct Recorder {
    state: RegistryState,
    entries: Vec<Entry>,
    /// The index of the first entry when there is none yet (0: index 1).
    next_index: u64,
}

impl Recorder {
    /// A recorder that goes on from `state`, numbering its first entry `next_index`.
    fn continuing(state: RegistryState, next_index: u64) -> Self {
        Self {
            state,
            entries: Vec::new(),
            next_index,
        }
    }

    fn push(&mut self, command: Command) {
        let index = self
            .entries
            .last()
            .map_or(self.next_index.max(1), |e| e.index + 1);
        let outcome = self.state.apply(index, &command);
        self.entries.push(Entry {
            index,
            command,
            outcome: serde_json::to_value(&outcome).expect("outcome serializes"),
        });
    }

    fn seen(&self) -> BTreeSet<usize> {
        self.entries
            .iter()
            .map(|e| variant(&e.command.op))
            .collect()
    }
}

/// The seeded log: bootstrap, random commands with operator admission changes among them, then one sample
/// of each variant the random part did not reach.
fn generate() -> (Vec<Entry>, RegistryState) {
    let mut rec = Recorder {
        state: RegistryState::default(),
        entries: Vec::new(),
        next_index: 1,
    };
    rec.push(Command::new(T0, Actor::system(), bootstrap_op()));
    let mut rng = StdRng::seed_from_u64(2026);
    let mut admission_rng = StdRng::seed_from_u64(2027);
    let mut at = T0;
    for n in 0..300usize {
        at += rng.gen_range(0..5000);
        let mut cmd = random_command(&mut rng, &rec.state, at, n);
        if rng.gen_bool(0.8) {
            cmd.request_id = Some(format!("req-{n}"));
        }
        rec.push(cmd);
        if admission_rng.gen_bool(0.1) {
            let op = admission_op(&mut admission_rng, &rec.state, n);
            rec.push(Command::new(at, admin(), op));
        }
    }
    let seen = rec.seen();
    for op in samples(&rec.state, at) {
        if !seen.contains(&variant(&op)) {
            at += 1000;
            rec.push(Command::new(at, admin(), op));
        }
    }
    (rec.entries, rec.state)
}

/// One plausible command of every variant, against what `state` holds.
fn samples(state: &RegistryState, at: u64) -> Vec<Op> {
    let project = state
        .projects()
        .map(|p| &p.id)
        .find(|id| id.as_str() != "prj_default")
        .cloned()
        .unwrap_or_else(|| "prj_default".to_owned());
    let node = state.nodes().next().map(|n| (n.key.clone(), n.lease_epoch));
    let (node_key, epoch) = node.unwrap_or_else(|| ("eu/eu1/alpha".to_owned(), 1));
    let job = state.jobs.values().next().map(|j| j.id.clone());
    let job = job.unwrap_or_else(|| "job_missing".to_owned());
    vec![
        Op::Cluster(ClusterOp::Noop),
        bootstrap_op(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 1 }),
        Op::Tenancy(TenancyOp::CreateProject {
            id: "prj_golden".into(),
            name: "golden".into(),
            description: "one of each".into(),
            data_key: wk("mk1", "golden"),
            policy: None,
        }),
        Op::Tenancy(TenancyOp::DeleteProject {
            id: "prj_golden".into(),
        }),
        Op::Tenancy(TenancyOp::CreatePrincipal {
            id: "usr_golden".into(),
            kind: PrincipalKind::User,
            name: "golden-user".into(),
            project_id: project.clone(),
        }),
        Op::Tenancy(TenancyOp::SetPrincipalDisabled {
            id: "usr_golden".into(),
            disabled: true,
        }),
        key_op(
            "kgolden",
            "golden-key",
            &project,
            new_sa("sa_golden"),
            Some(Role::Viewer),
        ),
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "kgolden".into(),
        }),
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "sa_golden".into(),
            scope: Scope::Project(project.clone()),
            role: Role::Editor,
        }),
        Op::Tenancy(TenancyOp::UnbindRole {
            binding_id: "rb_missing".into(),
        }),
        Op::Secrets(SecretOp::PutSecret {
            project_id: project.clone(),
            name: "golden-secret".into(),
            version: 1,
            sealed: sealed("golden"),
            bindings: Some(vec!["principal:sa_golden".into()]),
        }),
        Op::Secrets(SecretOp::DeleteSecret {
            project_id: project.clone(),
            name: "golden-secret".into(),
        }),
        Op::Secrets(SecretOp::RewrapDataKeys {
            keys: state
                .projects()
                .map(|p| &p.id)
                .map(|id| (id.clone(), wk("mk2", id)))
                .collect(),
        }),
        Op::Audit(AuditOp::RecordAudit {
            action: "golden.check".into(),
            project: Some(project.clone()),
            target: "golden".into(),
            outcome: AuditOutcome::Denied,
            detail: "count=3".into(),
        }),
        Op::Fleet(FleetOp::RegisterNode {
            region: "eu".into(),
            cluster: "eu1".into(),
            node: "golden".into(),
            cpu_cores: 8,
            memory_bytes: 1 << 34,
            gpu_count: 0,
            agent_version: "golden".into(),
            gpus: Vec::new(),
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            rpc_addr: "127.0.0.1:7300".into(),
            held: Vec::new(),
            os: "linux".into(),
            limit_mode: "cgroup-v1".into(),
            admit_new: Some(true),
        }),
        Op::Cluster(ClusterOp::Batch {
            commands: vec![Command::new(at, admin(), Op::Cluster(ClusterOp::Noop))],
        }),
        Op::Fleet(FleetOp::SetNodeHealth {
            key: node_key.clone(),
            health: NodeHealthState::Unreachable,
            lease_epoch: epoch,
        }),
        Op::Fleet(FleetOp::SetNodeDraining {
            key: node_key.clone(),
            draining: true,
        }),
        Op::Jobs(JobOp::SubmitJob {
            id: "job_golden".into(),
            project_id: project.clone(),
            spec: JobSpec::new("train"),
            principal_id: Some("sa_admin".into()),
        }),
        Op::Jobs(JobOp::CancelJob {
            project_id: project.clone(),
            id: "job_golden".into(),
        }),
        Op::Jobs(JobOp::PlaceJobs {
            placements: vec![PlacementOp::Wait {
                job_id: job.clone(),
                reason: "golden".into(),
            }],
        }),
        Op::Jobs(JobOp::ReportJobEvents {
            node: node_key.clone(),
            lease_epoch: epoch,
            events: vec![JobEventOp {
                job_id: job,
                attempt: 1,
                replica: 0,
                at_ms: at,
                kind: JobEventKind::Started,
            }],
        }),
        Op::Fleet(FleetOp::SetIdleGpus {
            node: node_key.clone(),
            lease_epoch: epoch,
            idle_gpus: Vec::new(),
        }),
        Op::Jobs(JobOp::PurgeJobs {
            finished_before: at,
            max: 2,
        }),
        Op::Identity(IdentityOp::DenyIdentity {
            kind: DenyKind::Serial,
            value: "0abc".into(),
            reason: "golden".into(),
        }),
        Op::Identity(IdentityOp::AllowIdentity {
            kind: DenyKind::Serial,
            value: "0abc".into(),
        }),
        Op::Fleet(FleetOp::SetClusterPolicy {
            region: "eu".into(),
            cluster: "eu1".into(),
            auto_approve: false,
        }),
        Op::Fleet(FleetOp::ApproveNode { key: node_key }),
        Op::Tenancy(TenancyOp::SetProjectPolicy {
            project_id: project,
            update: PolicyUpdate {
                max_pending_jobs: Some(50),
                network: Some(NetworkPolicy::None),
                ..PolicyUpdate::default()
            },
        }),
        Op::Secrets(SecretOp::ReplaceDataKeys {
            keys: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }),
        Op::Audit(AuditOp::ArchiveAudit { through_seq: 1 }),
    ]
}

#[test]
fn the_golden_log_replays_to_its_outcomes_and_snapshot() {
    let mut state = RegistryState::default();
    for segment in golden_segments() {
        for entry in &segment.entries {
            let outcome = state.apply(entry.index, &entry.command);
            assert_eq!(
                serde_json::to_value(&outcome).expect("outcome serializes"),
                entry.outcome,
                "entry {} ({:?}) is answered differently than when the log was written",
                entry.index,
                entry.command.op
            );
        }
        state.assert_job_indexes_consistent();
        let snapshot = std::fs::read(&segment.snapshot_path).expect("golden snapshot");
        assert!(
            state.to_bytes() == snapshot,
            "the golden log no longer replays to {}",
            segment.snapshot_path.display()
        );
    }
}

#[test]
fn the_golden_snapshots_load_and_serialize_unchanged() {
    for segment in golden_segments() {
        let snapshot = std::fs::read(&segment.snapshot_path).expect("golden snapshot");
        let state = RegistryState::from_bytes(&snapshot).expect("the golden snapshot loads");
        assert!(
            state.to_bytes() == snapshot,
            "loading and serializing {} changed it",
            segment.snapshot_path.display()
        );
    }
}

#[test]
fn every_golden_command_serializes_as_it_was_written() {
    for segment in golden_segments() {
        let text = std::fs::read_to_string(&segment.log_path).expect("golden log");
        assert_eq!(text.lines().count(), segment.entries.len());
        for (line, entry) in text.lines().zip(segment.entries) {
            let written: serde_json::Value = serde_json::from_str(line).expect("json");
            let again = serde_json::to_value(&entry.command).expect("command serializes");
            assert_eq!(
                again, written["command"],
                "entry {} serializes differently now",
                entry.index
            );
        }
    }
}

#[test]
fn apply_version_5_names_out_of_memory_kills_in_the_golden_log() {
    let segments = golden_segments();
    let mut state = RegistryState::default();
    for entry in segments.iter().flat_map(|s| &s.entries) {
        let _ = state.apply(entry.index, &entry.command);
    }
    assert_eq!(state.apply_version, 5);
    let detail = |id: &str| {
        let job = state.jobs.get(id).expect("the golden job");
        assert_eq!(job.state, JobState::Failed, "{id}");
        job.attempts[0].detail.clone()
    };
    assert_eq!(detail("job_oom_before"), "killed by signal 9");
    assert_eq!(
        detail("job_oom_after"),
        "out of memory: killed at its 32 MiB memory limit"
    );
}

#[test]
fn apply_version_4_archives_the_oldest_audit_records_in_the_golden_log() {
    let segments = golden_segments();
    let v4 = &segments[4];
    let mut state = RegistryState::default();
    for entry in segments[..=4].iter().flat_map(|s| &s.entries) {
        let _ = state.apply(entry.index, &entry.command);
    }
    assert_eq!(state.apply_version, 4);
    let outcomes: Vec<&serde_json::Value> = v4.entries.iter().map(|e| &e.outcome).collect();
    assert!(
        outcomes[0]["Err"]["FailedPrecondition"].is_string(),
        "archiving before version 4: {}",
        outcomes[0]
    );
    assert!(
        outcomes[2]["Err"]["PermissionDenied"].is_string(),
        "a principal archiving: {}",
        outcomes[2]
    );
    let checkpoint = &outcomes[3]["Ok"]["audit_archived"]["checkpoint"];
    assert!(checkpoint.is_object(), "the archive: {}", outcomes[3]);
    assert!(
        outcomes[4]["Err"]["NotFound"].is_object(),
        "archiving the same records twice: {}",
        outcomes[4]
    );
    let kept = state.audit_log().checkpoint().expect("a checkpoint");
    assert_eq!(checkpoint["seq"], serde_json::json!(kept.seq));
    assert_eq!(kept.archived, kept.seq, "every record from 1 was archived");
    assert_eq!(state.audit_records()[0].seq, kept.seq + 1);
    assert_eq!(state.audit_records()[0].prev_hash, kept.hash);
    let mut verifier = state.audit_log().live_verifier();
    verifier
        .feed(state.audit_records())
        .expect("the live records chain to the checkpoint");
    assert!(
        verify_chain(state.audit_records()).is_ok(),
        "a run after a checkpoint checks from its first record"
    );
    assert_eq!(state.bootstrap_principal_id(), Some("sa_admin"));
}

#[test]
fn apply_version_3_remembers_records_by_id_in_the_golden_log() {
    let segments = golden_segments();
    let v3 = &segments[3];
    let mut state = RegistryState::default();
    for entry in segments.iter().flat_map(|s| &s.entries) {
        let _ = state.apply(entry.index, &entry.command);
    }
    assert!(state.apply_version >= 3);
    let remembered = state.requests.get("req-v3-create").expect("remembered");
    assert!(
        remembered.outcome.is_none(),
        "the record itself was remembered"
    );
    assert_eq!(
        remembered.record,
        Some(OutcomeRef::Project {
            id: "prj_v3".into()
        })
    );
    // The repeat answered the project with the policy set after the first answer.
    let repeat = &v3.entries.last().expect("entries").outcome;
    assert_eq!(
        repeat["Ok"]["project"]["project"]["policy"]["max_pending_jobs"],
        serde_json::json!(7),
        "{repeat}"
    );
}

#[test]
fn apply_version_2_counts_machine_traffic_instead_of_auditing_it_in_the_golden_log() {
    let mut state = RegistryState::default();
    let segments = golden_segments();
    // The log up to the end of the segment that switched version 2 on.
    for entry in segments.iter().take(3).flat_map(|s| &s.entries) {
        let _ = state.apply(entry.index, &entry.command);
    }
    assert_eq!(state.apply_version, 2);
    let last = state.audit.last().expect("audit");
    assert_eq!(
        last.action, "cluster.apply_version",
        "machine traffic reached the audit log"
    );
    assert_eq!(state.machine_counter("node.health/applied"), 1);
    assert_eq!(state.machine_counter("job.place/applied"), 1);
    assert_eq!(state.machine_counter("job.report/refused"), 1);
}

#[test]
fn apply_version_1_makes_command_time_monotonic_in_the_golden_log() {
    let segments = golden_segments();
    let [v0, v1, ..] = segments.as_slice() else {
        panic!("expected the golden segments");
    };
    let mut state = RegistryState::default();
    for entry in v0.entries.iter().chain(&v1.entries) {
        let _ = state.apply(entry.index, &entry.command);
    }
    assert_eq!(state.apply_version, 1);
    let on_time = state.project_by_name("v1").expect("v1 project").created_at;
    let late = state
        .project_by_name("v1-late")
        .expect("late project")
        .created_at;
    assert_eq!(late, on_time, "a command stamped earlier went back in time");
    assert!(late > v1.entries[2].command.at_ms);
}

#[test]
fn every_variant_has_a_golden_sample() {
    let seen: BTreeSet<usize> = golden_log()
        .iter()
        .map(|e| variant(&e.command.op))
        .collect();
    let missing: Vec<usize> = (0..VARIANTS).filter(|v| !seen.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "Op variants {missing:?} (numbered in `variant`) have no line in the golden log"
    );
    // The samples cover every variant too, so writing the files again can always reach all of them.
    let covered: BTreeSet<usize> = samples(&RegistryState::default(), T0)
        .iter()
        .map(variant)
        .collect();
    assert_eq!(covered.len(), VARIANTS);
}
