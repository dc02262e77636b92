//! Tests of the registry state: apply rules, determinism across replicas, audit chain, scoping, paging.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::authz::Role;
use crate::token;

mod archive;
mod golden;
mod versions;

const T0: u64 = 1_700_000_000_000;

fn wk(master: &str, tag: &str) -> WrappedKey {
    WrappedKey {
        master_key_id: master.to_owned(),
        nonce_b64: "AAAAAAAAAAAAAAAA".to_owned(),
        ciphertext_b64: format!("ct-{tag}"),
    }
}

fn sealed(tag: &str) -> SealedValue {
    SealedValue {
        nonce_b64: "AAAAAAAAAAAAAAAA".to_owned(),
        ciphertext_b64: format!("sealed-{tag}"),
    }
}

fn admin() -> Actor {
    Actor::principal("sa_admin", "admin")
}

fn hash_of(tag: &str) -> String {
    token::hash_token(tag)
}

fn bootstrap_op() -> Op {
    Op::Tenancy(TenancyOp::Bootstrap {
        default_project_id: "prj_default".into(),
        default_data_key: wk("mk1", "default"),
        admin_principal_id: "sa_admin".into(),
        admin_principal_name: "admin".into(),
        admin_key_id: "adminkey".into(),
        admin_key_hash: hash_of("admin-token"),
        admin_key_last4: "abcd".into(),
    })
}

/// Applies `op` at the next index and time.
fn run(s: &mut RegistryState, op: Op) -> CommandOutcome {
    let index = s.applied_index + 1;
    s.apply(index, &Command::new(T0 + index * 1000, admin(), op))
}

fn bootstrapped() -> RegistryState {
    let mut s = RegistryState::default();
    let out = s.apply(1, &Command::new(T0, Actor::system(), bootstrap_op()));
    assert!(
        matches!(
            out,
            Ok(Outcome::Tenancy(TenancyOutcome::Bootstrapped { .. }))
        ),
        "{out:?}"
    );
    s
}

fn create_project(s: &mut RegistryState, id: &str, name: &str) {
    let out = run(
        s,
        Op::Tenancy(TenancyOp::CreateProject {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            data_key: wk("mk1", id),
            policy: None,
        }),
    );
    assert!(
        matches!(out, Ok(Outcome::Tenancy(TenancyOutcome::Project { .. }))),
        "{out:?}"
    );
}

fn key_op(
    key_id: &str,
    name: &str,
    project: &str,
    principal: KeyPrincipal,
    role: Option<Role>,
) -> Op {
    Op::Tenancy(TenancyOp::CreateKey {
        key_id: key_id.into(),
        name: name.into(),
        project_id: project.into(),
        hash: hash_of(key_id),
        last4: "wxyz".into(),
        expires_at: None,
        principal,
        role,
        limits: crate::state::KeyLimits::default(),
    })
}

fn new_sa(id: &str) -> KeyPrincipal {
    KeyPrincipal::NewServiceAccount {
        principal_id: id.into(),
        name: id.into(),
    }
}

/// The state without its audit log, to check that a refused command changed nothing else.
fn without_audit(s: &RegistryState) -> RegistryState {
    let mut c = s.clone();
    c.audit.clear();
    c.applied_index = 0;
    c
}

fn assert_refused(s: &mut RegistryState, op: Op, check: impl Fn(&DomainError) -> bool) {
    let before = without_audit(s);
    let audit_len = s.audit.len();
    let out = run(s, op);
    match out {
        Err(e) => assert!(check(&e), "unexpected error {e:?}"),
        Ok(o) => panic!("expected a refusal, got {o:?}"),
    }
    assert_eq!(without_audit(s), before, "a refused command changed state");
    assert_eq!(
        s.audit.len(),
        audit_len + 1,
        "a refused command must be audited"
    );
    assert_eq!(
        s.audit.last().map(|r| r.outcome),
        Some(AuditOutcome::Refused)
    );
}

// ---- determinism ------------------------------------------------------------------------------------------

/// Prepares a random but plausible command from the current state, the way a coordinator would: some refer
/// to objects that exist, some do not, some collide, so the log mixes successes and refusals.
fn random_command(rng: &mut StdRng, view: &RegistryState, at: u64, n: usize) -> Command {
    let names = ["alpha", "beta", "gamma", "delta", "Bad_Name", "epsilon"];
    let project_ids: Vec<String> = view
        .projects()
        .map(|p| &p.id)
        .cloned()
        .chain(["prj_missing".to_owned()])
        .collect();
    let pick_project = |rng: &mut StdRng| project_ids[rng.gen_range(0..project_ids.len())].clone();
    let key_ids: Vec<String> = view
        .tenancy
        .keys()
        .keys()
        .cloned()
        .chain(["nokey".to_owned()])
        .collect();
    let principal_ids: Vec<String> = view
        .tenancy
        .principals()
        .keys()
        .cloned()
        .chain(["sa_missing".to_owned()])
        .collect();
    let binding_ids: Vec<String> = view
        .tenancy
        .bindings()
        .keys()
        .cloned()
        .chain(["rb_missing".to_owned()])
        .collect();
    let roles = Role::ALL;
    let op = match rng.gen_range(0..24) {
        0 => Op::Cluster(ClusterOp::Noop),
        1 | 2 => Op::Tenancy(TenancyOp::CreateProject {
            id: format!("prj_{}", rng.gen_range(0..12)),
            name: names[rng.gen_range(0..names.len())].to_owned(),
            description: format!("project {n}"),
            data_key: wk("mk1", &n.to_string()),
            policy: None,
        }),
        3 => Op::Tenancy(TenancyOp::DeleteProject {
            id: pick_project(rng),
        }),
        4 | 5 => {
            let principal = if rng.gen_bool(0.7) {
                new_sa(&format!("sa_{n}"))
            } else {
                KeyPrincipal::Existing {
                    principal_id: principal_ids[rng.gen_range(0..principal_ids.len())].clone(),
                }
            };
            let role = rng
                .gen_bool(0.9)
                .then(|| roles[rng.gen_range(0..roles.len())]);
            key_op(
                &format!("k{}", rng.gen_range(0..40)),
                &format!("key{}", rng.gen_range(0..5)),
                &pick_project(rng),
                principal,
                role,
            )
        }
        6 => Op::Tenancy(TenancyOp::RevokeKey {
            key_id: key_ids[rng.gen_range(0..key_ids.len())].clone(),
        }),
        7 => Op::Tenancy(TenancyOp::BindRole {
            principal_id: principal_ids[rng.gen_range(0..principal_ids.len())].clone(),
            scope: if rng.gen_bool(0.2) {
                Scope::Platform
            } else {
                Scope::Project(pick_project(rng))
            },
            role: roles[rng.gen_range(0..roles.len())],
        }),
        8 => Op::Tenancy(TenancyOp::UnbindRole {
            binding_id: binding_ids[rng.gen_range(0..binding_ids.len())].clone(),
        }),
        9 | 10 => {
            let project_id = pick_project(rng);
            let name = format!("s{}", rng.gen_range(0..4));
            let next = view
                .project_scope(&project_id)
                .secret(&name)
                .map_or(1, |s| s.latest_version() + 1);
            let version = if rng.gen_bool(0.8) { next } else { next + 1 };
            let bindings = rng
                .gen_bool(0.5)
                .then(|| vec!["job:*".to_owned(), format!("deployment:d{n}")]);
            Op::Secrets(SecretOp::PutSecret {
                project_id,
                name,
                version,
                sealed: sealed(&n.to_string()),
                bindings,
            })
        }
        11 => Op::Secrets(SecretOp::DeleteSecret {
            project_id: pick_project(rng),
            name: format!("s{}", rng.gen_range(0..4)),
        }),
        12 => {
            let mut keys: BTreeMap<String, WrappedKey> = view
                .projects()
                .map(|p| &p.id)
                .map(|id| (id.clone(), wk("mk2", &format!("{id}-{n}"))))
                .collect();
            if rng.gen_bool(0.3) {
                keys.pop_first();
            }
            Op::Secrets(SecretOp::RewrapDataKeys { keys })
        }
        13 => Op::Audit(AuditOp::RecordAudit {
            action: if rng.gen_bool(0.9) {
                "secret.read".into()
            } else {
                "BAD ACTION".into()
            },
            project: Some(pick_project(rng)),
            target: format!("s{n}"),
            outcome: AuditOutcome::Denied,
            detail: "cross-project read".into(),
        }),
        15 => Op::Fleet(FleetOp::RegisterNode {
            region: "eu".into(),
            cluster: "eu1".into(),
            node: names[rng.gen_range(0..names.len())].to_owned(),
            cpu_cores: rng.gen_range(1..128),
            memory_bytes: rng.gen(),
            gpu_count: rng.gen_range(0..9),
            agent_version: "1.0".into(),
            gpus: Vec::new(),
            labels: BTreeMap::new(),
            rpc_addr: String::new(),
            // Sometimes the agent still holds some of its node's attempts.
            held: view
                .jobs
                .values()
                .flat_map(|j| j.current_replicas().iter().map(move |a| (j, a)))
                .filter(|_| rng.gen_bool(0.5))
                .map(|(j, a)| HeldAttempt {
                    job_id: j.id.clone(),
                    attempt: a.attempt,
                    replica: a.replica,
                })
                .collect(),
            os: String::new(),
            limit_mode: String::new(),
            // As before admission existed (every node approved); `admission_op` exercises the rest.
            admit_new: None,
        }),
        16 => {
            let node_keys: Vec<(String, u64)> = view
                .nodes()
                .map(|n| (n.key.clone(), n.lease_epoch))
                .chain([("eu/eu1/missing".to_owned(), 1)])
                .collect();
            let (key, epoch) = node_keys[rng.gen_range(0..node_keys.len())].clone();
            let health = [
                NodeHealthState::Ready,
                NodeHealthState::Unreachable,
                NodeHealthState::Lost,
            ][rng.gen_range(0..3)];
            Op::Fleet(FleetOp::SetNodeHealth {
                key,
                health,
                // Mostly the current epoch, sometimes a stale one.
                lease_epoch: if rng.gen_bool(0.7) {
                    epoch
                } else {
                    epoch.saturating_sub(1)
                },
            })
        }
        17..=23 => random_job_op(rng, view, at, n),
        _ => Op::Tenancy(TenancyOp::SetPrincipalDisabled {
            id: principal_ids[rng.gen_range(0..principal_ids.len())].clone(),
            disabled: rng.gen_bool(0.5),
        }),
    };
    let actor = if rng.gen_bool(0.5) {
        admin()
    } else {
        Actor::principal(format!("sa_{n}"), "someone")
    };
    Command::new(at, actor, op)
}

/// An admission command: deny-list entries (added and removed), cluster policies and approvals. (Which
/// registrations wait for approval or are quarantined is left to `state::fleet`'s tests: nodes added here
/// would change what the main log's job commands pick.)
fn admission_op(rng: &mut StdRng, view: &RegistryState, n: usize) -> Op {
    // Denials name nodes the main log never registers, so its job lifecycle stays whole.
    let node = format!("new-{}", rng.gen_range(0..20));
    match rng.gen_range(0..6) {
        0 | 1 => {
            let (kind, value) = if rng.gen_bool(0.5) {
                (
                    DenyKind::Identity,
                    format!("spiffe://td.test/region/eu/cluster/eu1/agent/{node}"),
                )
            } else {
                (DenyKind::Serial, format!("{:02x}", rng.gen_range(0..8)))
            };
            if rng.gen_bool(0.5) {
                Op::Identity(IdentityOp::DenyIdentity {
                    kind,
                    value,
                    reason: format!("reason {n}"),
                })
            } else {
                Op::Identity(IdentityOp::AllowIdentity { kind, value })
            }
        }
        2 => Op::Fleet(FleetOp::SetClusterPolicy {
            region: "eu".into(),
            cluster: if rng.gen_bool(0.9) { "eu1" } else { "bad/name" }.into(),
            auto_approve: rng.gen_bool(0.5),
        }),
        _ => {
            let keys: Vec<String> = view
                .nodes()
                .map(|n| n.key.clone())
                .chain(["eu/eu1/missing".to_owned()])
                .collect();
            Op::Fleet(FleetOp::ApproveNode {
                key: keys[rng.gen_range(0..keys.len())].clone(),
            })
        }
    }
}

/// A job command: mostly about jobs and nodes that exist, sometimes stale or wrong.
fn random_job_op(rng: &mut StdRng, view: &RegistryState, at: u64, n: usize) -> Op {
    let names = ["alpha", "beta", "gamma", "delta", "Bad_Name", "epsilon"];
    let job_ids: Vec<&JobRecord> = view.jobs.values().collect();
    let nodes: Vec<&NodeRecord> = view.nodes().collect();
    let pick_job = |rng: &mut StdRng| -> Option<&JobRecord> {
        (!job_ids.is_empty()).then(|| job_ids[rng.gen_range(0..job_ids.len())])
    };
    let project = || {
        view.projects()
            .map(|p| &p.id)
            .next()
            .cloned()
            .unwrap_or_else(|| "prj_missing".to_owned())
    };
    match rng.gen_range(0..7) {
        0 | 1 => {
            let mut spec = JobSpec::new(if rng.gen_bool(0.95) { "train" } else { "" });
            spec.retry.max_attempts = rng.gen_range(1..4);
            spec.retry.on_failure = rng.gen_bool(0.3);
            spec.replicas = if rng.gen_bool(0.3) { 2 } else { 1 };
            let project_id = match pick_job(rng) {
                Some(j) if rng.gen_bool(0.5) => j.project_id.clone(),
                _ => project(),
            };
            Op::Jobs(JobOp::SubmitJob {
                id: format!("job_{}", rng.gen_range(0..300)),
                project_id,
                spec,
                // From `n`, not `rng`, so the rest of the log does not shift with this field.
                principal_id: n.is_multiple_of(2).then(|| "sa_admin".to_owned()),
            })
        }
        2 => match pick_job(rng) {
            Some(j) => Op::Jobs(JobOp::CancelJob {
                project_id: if rng.gen_bool(0.9) {
                    j.project_id.clone()
                } else {
                    "prj_other".to_owned()
                },
                id: j.id.clone(),
            }),
            None => Op::Jobs(JobOp::CancelJob {
                project_id: project(),
                id: "job_missing".to_owned(),
            }),
        },
        3 | 4 => {
            let mut placements = Vec::new();
            for _ in 0..rng.gen_range(1..6) {
                let Some(job) = pick_job(rng) else { break };
                let item = match rng.gen_range(0..4) {
                    0 | 1 if !nodes.is_empty() => {
                        // Usually one entry per replica, sometimes a wrong count (skipped).
                        let count = if rng.gen_bool(0.9) {
                            job.spec.replicas
                        } else {
                            rng.gen_range(1..4)
                        };
                        let replicas = (0..count)
                            .map(|_| {
                                let node = nodes[rng.gen_range(0..nodes.len())];
                                ReplicaPlacement {
                                    node: node.key.clone(),
                                    lease_epoch: node.lease_epoch,
                                    gpu_uuids: vec![format!("GPU-{n}")],
                                    resources: crate::scheduler::Resources {
                                        cpu_millis: rng.gen_range(0..4000),
                                        memory_bytes: rng.gen_range(0..1 << 34),
                                        gpus: rng.gen_range(0..2),
                                    },
                                }
                            })
                            .collect();
                        PlacementOp::Place {
                            job_id: job.id.clone(),
                            attempt: job.next_attempt() + u32::from(rng.gen_bool(0.1)),
                            replicas,
                        }
                    }
                    2 => PlacementOp::Preempt {
                        job_id: job.id.clone(),
                        attempt: job.attempt_count(),
                        by: format!("job_{n}"),
                    },
                    _ => PlacementOp::Wait {
                        job_id: job.id.clone(),
                        reason: format!("reason {}", rng.gen_range(0..3)),
                    },
                };
                placements.push(item);
            }
            Op::Jobs(JobOp::PlaceJobs { placements })
        }
        5 => {
            let Some(node) = (!nodes.is_empty()).then(|| nodes[rng.gen_range(0..nodes.len())])
            else {
                return Op::Cluster(ClusterOp::Noop);
            };
            // Mostly the jobs whose current attempt is on this node (what a real agent reports), now and
            // then any job (stale or foreign reports).
            let on_node = |j: &JobRecord| {
                j.attempts
                    .last()
                    .is_some_and(|a| a.node == node.key && a.outcome.is_none())
            };
            let chosen: Vec<&JobRecord> = view
                .jobs
                .values()
                .filter(|j| rng.gen_bool(if on_node(j) { 0.8 } else { 0.1 }))
                .take(4)
                .collect();
            let events = chosen
                .into_iter()
                .map(|j| {
                    let kind = match rng.gen_range(0..6) {
                        0 | 1 => JobEventKind::Started,
                        2 | 3 => JobEventKind::Exited {
                            exit_code: Some(rng.gen_range(0..3)),
                            signal: None,
                            cancelled: rng.gen_bool(0.1),
                            timed_out: rng.gen_bool(0.1),
                            cpu_time_ms: Some(rng.gen_range(0..10_000)),
                            max_rss_bytes: None,
                            oom_killed: false,
                        },
                        4 => JobEventKind::LaunchFailed {
                            message: "no such file".into(),
                        },
                        _ => JobEventKind::Vanished {
                            reason: "gone".into(),
                        },
                    };
                    JobEventOp {
                        job_id: j.id.clone(),
                        attempt: j.attempt_count(),
                        // Now and then a replica the job does not have.
                        replica: if rng.gen_bool(0.9) {
                            rng.gen_range(0..j.spec.replicas)
                        } else {
                            j.spec.replicas
                        },
                        at_ms: at.saturating_sub(rng.gen_range(0..2000)),
                        kind,
                    }
                })
                .collect();
            Op::Jobs(JobOp::ReportJobEvents {
                node: node.key.clone(),
                lease_epoch: if rng.gen_bool(0.8) {
                    node.lease_epoch
                } else {
                    node.lease_epoch.saturating_sub(1)
                },
                events,
            })
        }
        _ => {
            let node = names[rng.gen_range(0..names.len())];
            Op::Fleet(FleetOp::SetIdleGpus {
                node: format!("eu/eu1/{node}"),
                lease_epoch: view
                    .node(&format!("eu/eu1/{node}"))
                    .map_or(1, |r| r.lease_epoch),
                idle_gpus: vec![format!("GPU-{}", rng.gen_range(0..3))],
            })
        }
    }
}

#[test]
fn replicas_are_byte_identical() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut a = RegistryState::default();
    let mut b = RegistryState::default();
    let boot = Command::new(T0, Actor::system(), bootstrap_op());
    assert_eq!(a.apply(1, &boot), b.apply(1, &boot));
    let mut restored: Option<RegistryState> = None;
    let (mut ok, mut refused) = (0, 0);
    let mut purged = 0;
    let mut drain_rng = StdRng::seed_from_u64(11);
    let mut admission_rng = StdRng::seed_from_u64(13);
    let mut drains = 0usize;
    // What the jobs went through, seen along the way (purges forget finished jobs).
    let mut states: BTreeSet<JobState> = BTreeSet::new();
    let (mut retried, mut gang_ended) = (false, false);
    let mut at = T0;
    for n in 0..1500usize {
        at += rng.gen_range(0..5000);
        let mut cmd = random_command(&mut rng, &a, at, n);
        // Most commands carry a request id; some repeat an earlier one (a re-sent write).
        if rng.gen_bool(0.8) {
            let id = if n > 10 && rng.gen_bool(0.1) {
                rng.gen_range(0..n)
            } else {
                n
            };
            cmd.request_id = Some(format!("req-{id}"));
        }
        // Every command gets two log indexes: its own, and one for the janitor's purges below.
        let index = 2 * n as u64 + 2;
        let out_a = a.apply(index, &cmd);
        let out_b = b.apply(index, &cmd);
        assert_eq!(out_a, out_b, "replicas disagree on the outcome of {cmd:?}");
        if let Some(c) = restored.as_mut() {
            assert_eq!(
                c.apply(index, &cmd),
                out_a,
                "restored replica disagrees on {cmd:?}"
            );
        }
        match out_a {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        for job in a.jobs.values() {
            states.insert(job.state);
            retried |= job.attempt_count() > 1;
            gang_ended |= job.spec.replicas > 1
                && job
                    .attempts
                    .iter()
                    .any(|r| r.replica == 1 && r.outcome.is_some());
        }
        // Now and then an operator changes admission (deny-list, policies, approvals) or a node registers
        // under it; from their own generator too, so the rest of the log stays as it was.
        if n % 97 != 96 && admission_rng.gen_bool(0.1) {
            let cmd = Command::new(at, admin(), admission_op(&mut admission_rng, &a, n));
            let index = 2 * n as u64 + 2;
            let out_a = a.apply(index, &cmd);
            assert_eq!(out_a, b.apply(index, &cmd), "replicas disagree on {cmd:?}");
            if let Some(c) = restored.as_mut() {
                assert_eq!(c.apply(index, &cmd), out_a, "restored replica disagrees");
            }
        }
        // Now and then an operator drains or undrains a node (or names one that does not exist). These
        // draw from their own generator so the rest of the log stays as it was.
        if n % 97 != 96 && drain_rng.gen_bool(0.1) {
            let keys: Vec<String> = a
                .nodes()
                .map(|n| n.key.clone())
                .chain(["eu/eu1/missing".to_owned()])
                .collect();
            let mut drain = Command::new(
                at,
                admin(),
                Op::Fleet(FleetOp::SetNodeDraining {
                    key: keys[drain_rng.gen_range(0..keys.len())].clone(),
                    draining: drain_rng.gen_bool(0.5),
                }),
            );
            drain.request_id = Some(format!("drain-{n}"));
            let out_a = a.apply(index + 1, &drain);
            assert_eq!(
                out_a,
                b.apply(index + 1, &drain),
                "replicas disagree on {drain:?}"
            );
            if let Some(c) = restored.as_mut() {
                assert_eq!(
                    c.apply(index + 1, &drain),
                    out_a,
                    "restored replica disagrees"
                );
            }
            drains += usize::from(out_a.is_ok());
        }
        // Now and then the leader's janitor forgets a few jobs that finished over half an hour ago.
        if n % 97 == 96 {
            let purge = Command::new(
                at,
                Actor::system(),
                Op::Jobs(JobOp::PurgeJobs {
                    finished_before: at.saturating_sub(1_800_000),
                    max: 3,
                }),
            );
            let out_a = a.apply(index + 1, &purge);
            assert_eq!(
                out_a,
                b.apply(index + 1, &purge),
                "replicas disagree on a purge"
            );
            if let Some(c) = restored.as_mut() {
                assert_eq!(
                    c.apply(index + 1, &purge),
                    out_a,
                    "restored replica disagrees"
                );
            }
            if let Ok(Outcome::Jobs(JobOutcome::JobsPurged { purged: p })) = out_a {
                purged += p;
            }
        }
        if n == 700 {
            // A snapshot taken mid-way, restored and continued, must stay identical too.
            let snapshot = a.to_bytes();
            let c = RegistryState::from_bytes(&snapshot).expect("snapshot restores");
            assert_eq!(
                c.to_bytes(),
                snapshot,
                "restore then serialize is not the identity"
            );
            restored = Some(c);
        }
        if n % 100 == 0 {
            a.assert_job_indexes_consistent();
            assert_eq!(
                a.to_bytes(),
                b.to_bytes(),
                "replicas diverged after command {n}"
            );
        }
    }
    assert!(
        ok > 300 && refused > 300,
        "the log should mix successes ({ok}) and refusals ({refused})"
    );
    let bytes = a.to_bytes();
    assert_eq!(bytes, b.to_bytes());
    assert_eq!(restored.expect("restored mid-way").to_bytes(), bytes);
    assert!(
        a.projects().count() > 2 && !a.tenancy.keys().is_empty() && !a.secrets.parts().is_empty(),
        "log exercised the domain"
    );
    assert!(
        states.len() >= 5 && retried,
        "log exercised the job lifecycle: {states:?}"
    );
    assert!(gang_ended, "log exercised gang attempts");
    assert!(
        drains > 10 && a.nodes().any(|n| n.draining),
        "log exercised draining ({drains})"
    );
    assert!(
        purged > 0 && !a.usage.hours().is_empty(),
        "log exercised purges ({purged} jobs)"
    );
    assert!(
        a.deny_list_version() > 10 && a.cluster_policies().next().is_some(),
        "log exercised the deny-list ({}) and cluster policies",
        a.deny_list_version()
    );
    a.assert_job_indexes_consistent();
    verify_chain(a.audit_records()).expect("the audit chain of a long log verifies");
}

#[test]
fn to_bytes_is_canonical_json_in_key_order() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_b", "bbb");
    create_project(&mut s, "prj_a", "aaa");
    let text = String::from_utf8(s.to_bytes()).expect("state is UTF-8 JSON");
    let at = |id: &str| {
        text.find(&format!("\"{id}\":{{\"id\""))
            .expect("project serialized")
    };
    assert!(
        at("prj_a") < at("prj_b") && at("prj_b") < at("prj_default"),
        "maps serialize in key order"
    );
    assert_eq!(
        RegistryState::from_bytes(text.as_bytes())
            .map(|r| r.to_bytes())
            .ok(),
        Some(text.into_bytes())
    );
}

#[test]
fn the_project_name_index_is_rebuilt_from_a_snapshot() {
    let s = bootstrapped();
    let mut doc: serde_json::Value = serde_json::from_slice(&s.to_bytes()).expect("state is JSON");
    // A snapshot whose name index is missing (or disagrees with the projects) loads with it rebuilt.
    doc.as_object_mut().expect("an object").insert(
        "project_ids_by_name".into(),
        serde_json::json!({"stale": "prj_gone"}),
    );
    let loaded =
        RegistryState::from_bytes(&serde_json::to_vec(&doc).expect("JSON")).expect("loads");
    assert_eq!(
        loaded
            .project_by_name(DEFAULT_PROJECT_NAME)
            .map(|p| p.id.as_str()),
        s.default_project_id()
    );
    assert!(loaded.project_by_name("stale").is_none());
    assert_eq!(loaded, s);
}

// ---- bootstrap and projects -------------------------------------------------------------------------------

#[test]
fn bootstrap_creates_default_project_admin_and_key_once() {
    let mut s = bootstrapped();
    assert!(s.is_bootstrapped());
    let default = s
        .project_by_name(DEFAULT_PROJECT_NAME)
        .expect("default project");
    assert_eq!(default.id, "prj_default");
    assert_eq!(s.default_project_id(), Some("prj_default"));
    let key = s.key_by_id("adminkey").expect("admin key");
    assert_eq!(key.principal_id, "sa_admin");
    assert_eq!(key.state_at(T0 + 1), KeyState::Active);
    let bindings = s.bindings_of("sa_admin");
    assert_eq!(bindings.len(), 1);
    assert_eq!(
        (bindings[0].role, &bindings[0].scope),
        (Role::PlatformAdmin, &Scope::Platform)
    );
    assert_eq!(s.audit_records().len(), 1);
    assert_eq!(s.audit_records()[0].action, "system.bootstrap");
    assert_refused(&mut s, bootstrap_op(), |e| {
        matches!(e, DomainError::FailedPrecondition(_))
    });
}

#[test]
fn bootstrap_validates_its_fields() {
    let mut s = RegistryState::default();
    let Op::Tenancy(TenancyOp::Bootstrap {
        default_project_id,
        default_data_key,
        admin_principal_id,
        admin_principal_name,
        admin_key_id,
        ..
    }) = bootstrap_op()
    else {
        unreachable!()
    };
    let bad = Op::Tenancy(TenancyOp::Bootstrap {
        default_project_id,
        default_data_key,
        admin_principal_id,
        admin_principal_name,
        admin_key_id,
        admin_key_hash: "not-hex".into(),
        admin_key_last4: "abcd".into(),
    });
    let out = s.apply(1, &Command::new(T0, Actor::system(), bad));
    assert!(
        matches!(out, Err(DomainError::Invalid { ref field, .. }) if field == "hash"),
        "{out:?}"
    );
    assert!(!s.is_bootstrapped());
    assert!(s.projects().next().is_none() && s.tenancy.keys().is_empty());
}

#[test]
fn project_names_are_validated_and_unique() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_v", "vision");
    for bad in [
        "",
        "-lead",
        "Upper",
        "under_score",
        "sp ace",
        &"x".repeat(64),
        "é",
    ] {
        assert_refused(
            &mut s,
            Op::Tenancy(TenancyOp::CreateProject {
                id: "prj_new".into(),
                name: bad.into(),
                description: String::new(),
                data_key: wk("mk1", "n"),
                policy: None,
            }),
            |e| matches!(e, DomainError::Invalid { field, .. } if field == "name"),
        );
    }
    create_project(&mut s, "prj_63", &"a".repeat(63));
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::CreateProject {
            id: "prj_other".into(),
            name: "vision".into(),
            description: String::new(),
            data_key: wk("mk1", "n"),
            policy: None,
        }),
        |e| matches!(e, DomainError::AlreadyExists { name, .. } if name == "vision"),
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::CreateProject {
            id: "prj_v".into(),
            name: "fresh".into(),
            description: String::new(),
            data_key: wk("mk1", "n"),
            policy: None,
        }),
        |e| matches!(e, DomainError::AlreadyExists { .. }),
    );
    assert_eq!(
        s.project_by_id_or_name("vision").map(|p| p.id.as_str()),
        Some("prj_v")
    );
    assert_eq!(
        s.project_by_id_or_name("prj_v").map(|p| p.name.as_str()),
        Some("vision")
    );
}

#[test]
fn deleting_a_project_requires_it_empty_and_cascades() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_v", "vision");
    run(
        &mut s,
        key_op("k1", "ci", "prj_v", new_sa("sa_ci"), Some(Role::Editor)),
    )
    .expect("key");
    run(
        &mut s,
        Op::Secrets(SecretOp::PutSecret {
            project_id: "prj_v".into(),
            name: "db".into(),
            version: 1,
            sealed: sealed("1"),
            bindings: None,
        }),
    )
    .expect("secret");
    run(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "sa_admin".into(),
            scope: Scope::Project("prj_v".into()),
            role: Role::Viewer,
        }),
    )
    .expect("bind");

    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::DeleteProject { id: "prj_v".into() }),
        |e| matches!(e, DomainError::FailedPrecondition(m) if m.contains("keys")),
    );
    run(
        &mut s,
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "k1".into(),
        }),
    )
    .expect("revoke");
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::DeleteProject { id: "prj_v".into() }),
        |e| matches!(e, DomainError::FailedPrecondition(m) if m.contains("secrets")),
    );
    run(
        &mut s,
        Op::Secrets(SecretOp::DeleteSecret {
            project_id: "prj_v".into(),
            name: "db".into(),
        }),
    )
    .expect("delete secret");
    assert_eq!(
        run(
            &mut s,
            Op::Tenancy(TenancyOp::DeleteProject { id: "prj_v".into() })
        ),
        Ok(Outcome::Deleted)
    );

    assert!(s.project("prj_v").is_none());
    assert!(
        s.key_by_id("k1").is_none(),
        "revoked keys go with the project"
    );
    assert!(
        s.principal("sa_ci").is_none(),
        "owned principals go with the project"
    );
    assert!(
        s.tenancy
            .bindings()
            .values()
            .all(|b| b.scope != Scope::Project("prj_v".into())),
        "bindings go too"
    );
    assert_eq!(
        s.bindings_of("sa_admin").len(),
        1,
        "the admin keeps its platform binding"
    );
    // The name is free again.
    create_project(&mut s, "prj_v2", "vision");
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::DeleteProject {
            id: "prj_default".into(),
        }),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::DeleteProject {
            id: "prj_nope".into(),
        }),
        |e| matches!(e, DomainError::NotFound { .. }),
    );
}

// ---- keys, principals, bindings ---------------------------------------------------------------------------

#[test]
fn create_key_with_new_service_account_binds_the_role() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_v", "vision");
    let out = run(
        &mut s,
        key_op("k1", "ci", "prj_v", new_sa("sa_ci"), Some(Role::Editor)),
    )
    .expect("key");
    let Outcome::Tenancy(TenancyOutcome::KeyCreated {
        key,
        principal,
        binding,
    }) = out
    else {
        panic!("unexpected outcome {out:?}")
    };
    assert_eq!(
        (
            key.id.as_str(),
            key.project_id.as_str(),
            key.prefix.as_str()
        ),
        ("k1", "prj_v", "mrd_k1_")
    );
    assert_eq!(principal.kind, PrincipalKind::ServiceAccount);
    assert_eq!(principal.project_id.as_deref(), Some("prj_v"));
    let binding = binding.expect("binding made");
    assert_eq!(
        (binding.role, &binding.scope),
        (Role::Editor, &Scope::Project("prj_v".into()))
    );
    assert_eq!(s.bindings_of("sa_ci").len(), 1);
    // The caller-facing view never carries the hash.
    let json = serde_json::to_string(&key).expect("view serializes");
    assert!(
        !json.contains(&hash_of("k1")) && !json.contains("hash"),
        "{json}"
    );

    // A second key for the same principal with the same role reuses the binding.
    let out = run(
        &mut s,
        key_op(
            "k2",
            "ci-2",
            "prj_v",
            KeyPrincipal::Existing {
                principal_id: "sa_ci".into(),
            },
            Some(Role::Editor),
        ),
    )
    .expect("second key");
    assert!(
        matches!(out, Outcome::Tenancy(TenancyOutcome::KeyCreated { binding: Some(ref b), .. }) if b.id == RoleBinding::id_for("sa_ci", &Scope::Project("prj_v".into()), Role::Editor))
    );
    assert_eq!(s.bindings_of("sa_ci").len(), 1);
}

#[test]
fn create_key_refusals() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_v", "vision");
    create_project(&mut s, "prj_w", "web");
    run(
        &mut s,
        key_op("k1", "ci", "prj_v", new_sa("sa_ci"), Some(Role::Viewer)),
    )
    .expect("key");
    // Duplicate id, duplicate active name.
    assert_refused(
        &mut s,
        key_op("k1", "other", "prj_v", new_sa("sa_x"), None),
        |e| matches!(e, DomainError::AlreadyExists { .. }),
    );
    assert_refused(
        &mut s,
        key_op("k9", "ci", "prj_v", new_sa("sa_x"), None),
        |e| matches!(e, DomainError::AlreadyExists { name, .. } if name == "ci"),
    );
    // The principal of another project is indistinguishable from a missing one.
    assert_refused(
        &mut s,
        key_op(
            "k9",
            "x",
            "prj_w",
            KeyPrincipal::Existing {
                principal_id: "sa_ci".into(),
            },
            None,
        ),
        |e| matches!(e, DomainError::NotFound { .. }),
    );
    assert_refused(
        &mut s,
        key_op("k9", "x", "prj_v", new_sa("sa_ci"), None),
        |e| matches!(e, DomainError::AlreadyExists { .. }),
    );
    assert_refused(
        &mut s,
        key_op(
            "k9",
            "x",
            "prj_v",
            new_sa("sa_y"),
            Some(Role::PlatformAdmin),
        ),
        |e| matches!(e, DomainError::Invalid { field, .. } if field == "role"),
    );
    assert_refused(
        &mut s,
        key_op("k_9", "x", "prj_v", new_sa("sa_y"), None),
        |e| matches!(e, DomainError::Invalid { field, .. } if field == "key_id"),
    );
    assert_refused(
        &mut s,
        key_op("k9", "x", "prj_gone", new_sa("sa_y"), None),
        |e| matches!(e, DomainError::NotFound { .. }),
    );
    let mut expired = key_op("k9", "x", "prj_v", new_sa("sa_y"), None);
    if let Op::Tenancy(TenancyOp::CreateKey { expires_at, .. }) = &mut expired {
        *expires_at = Some(T0);
    }
    assert_refused(
        &mut s,
        expired,
        |e| matches!(e, DomainError::Invalid { field, .. } if field == "expires_at"),
    );
    // After revocation the name is free again.
    run(
        &mut s,
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "k1".into(),
        }),
    )
    .expect("revoke");
    run(
        &mut s,
        key_op(
            "k2",
            "ci",
            "prj_v",
            KeyPrincipal::Existing {
                principal_id: "sa_ci".into(),
            },
            None,
        ),
    )
    .expect("reuse name");
    // A disabled principal gets no new keys.
    run(
        &mut s,
        Op::Tenancy(TenancyOp::SetPrincipalDisabled {
            id: "sa_ci".into(),
            disabled: true,
        }),
    )
    .expect("disable");
    assert_refused(
        &mut s,
        key_op(
            "k3",
            "ci3",
            "prj_v",
            KeyPrincipal::Existing {
                principal_id: "sa_ci".into(),
            },
            None,
        ),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
}

#[test]
fn keys_revoke_and_expire() {
    let mut s = bootstrapped();
    let mut op = key_op(
        "k1",
        "ci",
        "prj_default",
        new_sa("sa_ci"),
        Some(Role::Viewer),
    );
    if let Op::Tenancy(TenancyOp::CreateKey { expires_at, .. }) = &mut op {
        *expires_at = Some(T0 + 1_000_000);
    }
    run(&mut s, op).expect("key");
    let key = s.key_by_id("k1").expect("key");
    assert_eq!(key.state_at(T0 + 999_999), KeyState::Active);
    assert_eq!(key.state_at(T0 + 1_000_000), KeyState::Expired);
    let out = run(
        &mut s,
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "k1".into(),
        }),
    )
    .expect("revoke");
    let Outcome::Tenancy(TenancyOutcome::Key { key }) = out else {
        panic!("{out:?}")
    };
    assert!(key.revoked_at.is_some());
    assert_eq!(
        s.key_by_id("k1").map(|k| k.state_at(T0)),
        Some(KeyState::Revoked)
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "k1".into(),
        }),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "nokey".into(),
        }),
        |e| matches!(e, DomainError::NotFound { .. }),
    );
    let last = s
        .audit_records()
        .iter()
        .rev()
        .find(|r| r.outcome == AuditOutcome::Success)
        .expect("a success");
    assert_eq!(
        (last.action.as_str(), last.project.as_deref()),
        ("key.revoke", Some("prj_default"))
    );
}

#[test]
fn the_last_usable_platform_admin_cannot_be_removed() {
    let mut s = bootstrapped();
    let admin_binding = RoleBinding::id_for("sa_admin", &Scope::Platform, Role::PlatformAdmin);
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "adminkey".into(),
        }),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::UnbindRole {
            binding_id: admin_binding.clone(),
        }),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::SetPrincipalDisabled {
            id: "sa_admin".into(),
            disabled: true,
        }),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
    // With a second usable admin, the first can go.
    run(
        &mut s,
        key_op("k2", "ops", "prj_default", new_sa("sa_ops"), None),
    )
    .expect("key");
    run(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "sa_ops".into(),
            scope: Scope::Platform,
            role: Role::PlatformAdmin,
        }),
    )
    .expect("bind");
    run(
        &mut s,
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "adminkey".into(),
        }),
    )
    .expect("revoke first admin's key");
    run(
        &mut s,
        Op::Tenancy(TenancyOp::UnbindRole {
            binding_id: admin_binding,
        }),
    )
    .expect("unbind first admin");
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::SetPrincipalDisabled {
            id: "sa_ops".into(),
            disabled: true,
        }),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
}

#[test]
fn role_bindings_are_validated_and_unique() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_v", "vision");
    run(
        &mut s,
        Op::Tenancy(TenancyOp::CreatePrincipal {
            id: "u_ann".into(),
            kind: PrincipalKind::User,
            name: "ann@example.com".into(),
            project_id: "prj_v".into(),
        }),
    )
    .expect("user");
    let scope = Scope::Project("prj_v".into());
    let out = run(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "u_ann".into(),
            scope: scope.clone(),
            role: Role::Deployer,
        }),
    )
    .expect("bind");
    let Outcome::Tenancy(TenancyOutcome::Binding { binding }) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        binding.id,
        RoleBinding::id_for("u_ann", &scope, Role::Deployer)
    );
    assert_eq!(
        s.project_scope("prj_v")
            .binding(&binding.id)
            .map(|b| b.role),
        Some(Role::Deployer)
    );
    assert!(s
        .project_scope("prj_default")
        .binding(&binding.id)
        .is_none());
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "u_ann".into(),
            scope: scope.clone(),
            role: Role::Deployer,
        }),
        |e| matches!(e, DomainError::AlreadyExists { .. }),
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "u_ann".into(),
            scope: scope.clone(),
            role: Role::PlatformAdmin,
        }),
        |e| matches!(e, DomainError::Invalid { .. }),
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "nobody".into(),
            scope,
            role: Role::Viewer,
        }),
        |e| matches!(e, DomainError::NotFound { .. }),
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "u_ann".into(),
            scope: Scope::Project("prj_gone".into()),
            role: Role::Viewer,
        }),
        |e| matches!(e, DomainError::NotFound { .. }),
    );
    assert_eq!(
        run(
            &mut s,
            Op::Tenancy(TenancyOp::UnbindRole {
                binding_id: binding.id.clone()
            })
        ),
        Ok(Outcome::Deleted)
    );
    assert_refused(
        &mut s,
        Op::Tenancy(TenancyOp::UnbindRole {
            binding_id: binding.id,
        }),
        |e| matches!(e, DomainError::NotFound { .. }),
    );
}

#[test]
fn projects_visible_to_follow_bindings() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_a", "aaa");
    create_project(&mut s, "prj_b", "bbb");
    run(
        &mut s,
        key_op("k1", "ci", "prj_a", new_sa("sa_a"), Some(Role::Viewer)),
    )
    .expect("key");
    run(&mut s, key_op("k2", "ci", "prj_b", new_sa("sa_b"), None)).expect("key");
    let ids = |v: Vec<&Project>| v.into_iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(s.projects_visible_to("sa_a")), ["prj_a"]);
    assert!(
        s.projects_visible_to("sa_b").is_empty(),
        "no binding, no visibility"
    );
    assert_eq!(
        ids(s.projects_visible_to("sa_admin")),
        ["prj_a", "prj_b", "prj_default"]
    );
}

// ---- secrets ----------------------------------------------------------------------------------------------

fn put(
    s: &mut RegistryState,
    project: &str,
    name: &str,
    version: u32,
    bindings: Option<Vec<String>>,
) -> CommandOutcome {
    run(
        s,
        Op::Secrets(SecretOp::PutSecret {
            project_id: project.into(),
            name: name.into(),
            version,
            sealed: sealed(&version.to_string()),
            bindings,
        }),
    )
}

#[test]
fn secrets_version_and_bind_and_never_show_ciphertext() {
    let mut s = bootstrapped();
    put(
        &mut s,
        "prj_default",
        "s3-key",
        1,
        Some(vec![
            "job:*".into(),
            "deployment:fraud-scorer".into(),
            "job:*".into(),
        ]),
    )
    .expect("v1");
    let out = put(&mut s, "prj_default", "s3-key", 2, None).expect("v2");
    let Outcome::Secrets(SecretOutcome::Secret { secret }) = out else {
        panic!("{out:?}")
    };
    assert_eq!(secret.latest_version, 2);
    assert_eq!(
        secret.bindings,
        ["deployment:fraud-scorer", "job:*"],
        "sorted, unique, kept when not given"
    );
    let json = serde_json::to_string(&secret).expect("view serializes");
    assert!(
        !json.contains("sealed-"),
        "views never carry ciphertext: {json}"
    );
    let stored = s
        .project_scope("prj_default")
        .secret("s3-key")
        .expect("stored");
    assert_eq!(
        stored
            .version(Some(1))
            .map(|v| v.sealed.ciphertext_b64.as_str()),
        Some("sealed-1")
    );
    assert_eq!(stored.version(None).map(|v| v.version), Some(2));

    assert_refused(
        &mut s,
        Op::Secrets(SecretOp::PutSecret {
            project_id: "prj_default".into(),
            name: "s3-key".into(),
            version: 2,
            sealed: sealed("x"),
            bindings: None,
        }),
        |e| matches!(e, DomainError::FailedPrecondition(m) if m.contains("next version is 3")),
    );
    assert_refused(
        &mut s,
        Op::Secrets(SecretOp::PutSecret {
            project_id: "prj_default".into(),
            name: "new".into(),
            version: 2,
            sealed: sealed("x"),
            bindings: None,
        }),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
    for bad in ["job", ":x", "Job:x", "job:", "job:a b", "job:$(rm)"] {
        assert_refused(
            &mut s,
            Op::Secrets(SecretOp::PutSecret {
                project_id: "prj_default".into(),
                name: "s3-key".into(),
                version: 3,
                sealed: sealed("x"),
                bindings: Some(vec![bad.into()]),
            }),
            |e| matches!(e, DomainError::Invalid { field, .. } if field == "bindings"),
        );
    }
    assert_refused(
        &mut s,
        Op::Secrets(SecretOp::PutSecret {
            project_id: "prj_default".into(),
            name: "../etc".into(),
            version: 1,
            sealed: sealed("x"),
            bindings: None,
        }),
        |e| matches!(e, DomainError::Invalid { field, .. } if field == "name"),
    );
    let huge = SealedValue {
        nonce_b64: "AAAAAAAAAAAAAAAA".into(),
        ciphertext_b64: "A".repeat(secrets::MAX_SEALED_B64 + 1),
    };
    assert_refused(
        &mut s,
        Op::Secrets(SecretOp::PutSecret {
            project_id: "prj_default".into(),
            name: "big".into(),
            version: 1,
            sealed: huge,
            bindings: None,
        }),
        |e| matches!(e, DomainError::Invalid { .. }),
    );
    assert_refused(
        &mut s,
        Op::Secrets(SecretOp::PutSecret {
            project_id: "prj_gone".into(),
            name: "x".into(),
            version: 1,
            sealed: sealed("x"),
            bindings: None,
        }),
        |e| matches!(e, DomainError::NotFound { .. }),
    );

    assert_eq!(
        run(
            &mut s,
            Op::Secrets(SecretOp::DeleteSecret {
                project_id: "prj_default".into(),
                name: "s3-key".into()
            })
        ),
        Ok(Outcome::Deleted)
    );
    assert!(s.project_scope("prj_default").secret("s3-key").is_none());
    assert_refused(
        &mut s,
        Op::Secrets(SecretOp::DeleteSecret {
            project_id: "prj_default".into(),
            name: "s3-key".into(),
        }),
        |e| matches!(e, DomainError::NotFound { .. }),
    );
}

#[test]
fn secret_versions_are_capped() {
    let mut s = bootstrapped();
    let total = secrets::MAX_SECRET_VERSIONS as u32 + 5;
    for v in 1..=total {
        put(&mut s, "prj_default", "rotating", v, None).expect("put");
    }
    let secret = s
        .project_scope("prj_default")
        .secret("rotating")
        .expect("stored");
    assert_eq!(secret.versions.len(), secrets::MAX_SECRET_VERSIONS);
    assert_eq!(secret.versions.first().map(|v| v.version), Some(6));
    assert_eq!(secret.latest_version(), total);
    put(&mut s, "prj_default", "rotating", total + 1, None).expect("numbering continues");
}

#[test]
fn rewrap_is_all_or_nothing() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_v", "vision");
    let mut keys: BTreeMap<String, WrappedKey> = s
        .data_keys()
        .into_keys()
        .map(|id| (id.clone(), wk("mk2", &id)))
        .collect();
    let full = keys.clone();
    keys.remove("prj_v");
    assert_refused(
        &mut s,
        Op::Secrets(SecretOp::RewrapDataKeys { keys: keys.clone() }),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
    keys.insert("prj_v".into(), wk("mk2", "v"));
    keys.insert("prj_extra".into(), wk("mk2", "x"));
    assert_refused(
        &mut s,
        Op::Secrets(SecretOp::RewrapDataKeys { keys }),
        |e| matches!(e, DomainError::FailedPrecondition(_)),
    );
    let mut bad = full.clone();
    bad.insert(
        "prj_v".into(),
        WrappedKey {
            master_key_id: "mk2".into(),
            nonce_b64: String::new(),
            ciphertext_b64: "x".into(),
        },
    );
    assert_refused(
        &mut s,
        Op::Secrets(SecretOp::RewrapDataKeys { keys: bad }),
        |e| matches!(e, DomainError::Invalid { .. }),
    );
    assert_eq!(
        run(
            &mut s,
            Op::Secrets(SecretOp::RewrapDataKeys { keys: full.clone() })
        ),
        Ok(Outcome::Secrets(SecretOutcome::Rewrapped { projects: 2 }))
    );
    assert_eq!(s.data_keys(), full);
    assert_eq!(
        s.project_scope("prj_v")
            .data_key()
            .map(|k| k.master_key_id.as_str()),
        Some("mk2")
    );
}

#[test]
fn replacing_data_keys_is_all_or_nothing_over_every_secret_version() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_v", "vision");
    assert!(put(&mut s, "prj_v", "db", 1, None).is_ok());
    assert!(put(&mut s, "prj_v", "db", 2, None).is_ok());
    assert!(put(&mut s, "prj_default", "api", 1, None).is_ok());
    let keys: BTreeMap<String, WrappedKey> = s
        .data_keys()
        .into_keys()
        .map(|id| (id.clone(), wk("mk2", &format!("new-{id}"))))
        .collect();
    let mut resealed = s.sealed_versions();
    for v in resealed.values_mut().flat_map(|p| p.values_mut()).flatten() {
        v.sealed = sealed(&format!("new-{}", v.version));
    }
    // A version left out, or one that does not exist, refuses the whole command.
    let mut missing = resealed.clone();
    if let Some(db) = missing.get_mut("prj_v").and_then(|p| p.get_mut("db")) {
        db.pop();
    }
    let op = |secrets| {
        Op::Secrets(SecretOp::ReplaceDataKeys {
            keys: keys.clone(),
            secrets,
        })
    };
    assert_refused(&mut s, op(missing), |e| {
        matches!(e, DomainError::FailedPrecondition(_))
    });
    let mut extra = resealed.clone();
    if let Some(db) = extra.get_mut("prj_v").and_then(|p| p.get_mut("db")) {
        db.push(ResealedVersion {
            version: 9,
            sealed: sealed("9"),
        });
    }
    assert_refused(&mut s, op(extra), |e| {
        matches!(e, DomainError::FailedPrecondition(_))
    });
    let mut twice = resealed.clone();
    if let Some(db) = twice.get_mut("prj_v").and_then(|p| p.get_mut("db")) {
        let first = db[0].clone();
        db.push(first);
    }
    assert_refused(&mut s, op(twice), |e| {
        matches!(e, DomainError::FailedPrecondition(_))
    });
    // Everything at once: keys and every version replaced.
    assert_eq!(
        run(&mut s, op(resealed.clone())),
        Ok(Outcome::Secrets(SecretOutcome::DataKeysReplaced {
            projects: 2,
            secret_versions: 3
        }))
    );
    assert_eq!(s.data_keys(), keys);
    assert_eq!(s.sealed_versions(), resealed);
    assert_eq!(
        s.audit.last().map(|r| r.action.as_str()),
        Some("secret.rewrap")
    );
}

// ---- scoping ----------------------------------------------------------------------------------------------

#[test]
fn other_projects_objects_look_missing() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_a", "aaa");
    create_project(&mut s, "prj_b", "bbb");
    run(
        &mut s,
        key_op("ka", "ci", "prj_a", new_sa("sa_a"), Some(Role::Editor)),
    )
    .expect("key");
    put(&mut s, "prj_a", "token", 1, None).expect("secret");
    let a = s.project_scope("prj_a");
    let b = s.project_scope("prj_b");
    assert!(a.key("ka").is_some() && b.key("ka").is_none());
    assert!(a.principal("sa_a").is_some() && b.principal("sa_a").is_none());
    assert!(a.secret("token").is_some() && b.secret("token").is_none());
    assert_eq!(a.keys(&PageRequest::default()).items.len(), 1);
    assert!(b.keys(&PageRequest::default()).items.is_empty());
    assert!(b.secrets(&PageRequest::default()).items.is_empty());
    assert!(b.bindings(&PageRequest::default()).items.is_empty());
    assert_eq!(a.bindings(&PageRequest::default()).items.len(), 1);
    let missing = s.project_scope("prj_none");
    assert!(
        missing.project().is_none() && missing.key("ka").is_none() && missing.data_key().is_none()
    );
}

#[test]
fn paging_walks_everything_once() {
    let mut s = bootstrapped();
    for i in 0..25 {
        put(&mut s, "prj_default", &format!("s{i:02}"), 1, None).expect("secret");
    }
    let scope = s.project_scope("prj_default");
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = PageRequest::new(Some(10), token.as_deref()).expect("token from a previous page");
        let page = scope.secrets(&req);
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|v| v.name));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("s{i:02}")).collect();
    assert_eq!(seen, expected);
    assert!(matches!(
        PageRequest::new(None, Some("!!!")),
        Err(DomainError::Invalid { .. })
    ));
    assert_eq!(
        PageRequest::new(Some(0), None).map(|r| r.page_size),
        Ok(DEFAULT_PAGE_SIZE)
    );
    assert_eq!(
        PageRequest::new(Some(1_000_000), None).map(|r| r.page_size),
        Ok(MAX_PAGE_SIZE)
    );
    // An exact multiple ends without an empty trailing page.
    let page = Page::from_sorted(
        (0..10).map(|i| (format!("{i}"), i)),
        &PageRequest {
            page_size: 10,
            after: None,
        },
    );
    assert_eq!(page.next_page_token, None);
}

// ---- audit ------------------------------------------------------------------------------------------------

fn audited_state() -> RegistryState {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_a", "aaa");
    create_project(&mut s, "prj_b", "bbb");
    run(
        &mut s,
        key_op("ka", "ci", "prj_a", new_sa("sa_a"), Some(Role::Editor)),
    )
    .expect("key");
    let _ = run(
        &mut s,
        Op::Tenancy(TenancyOp::DeleteProject { id: "prj_a".into() }),
    );
    run(
        &mut s,
        Op::Audit(AuditOp::RecordAudit {
            action: "secret.read".into(),
            project: Some("prj_b".into()),
            target: "token".into(),
            outcome: AuditOutcome::Denied,
            detail: "key ka of prj_a".into(),
        }),
    )
    .expect("recorded");
    run(
        &mut s,
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "ka".into(),
        }),
    )
    .expect("revoke");
    s
}

#[test]
fn every_mutation_and_attempt_is_audited_in_a_chain() {
    let s = audited_state();
    let records = s.audit_records();
    let summary: Vec<(u64, &str, Option<&str>, AuditOutcome)> = records
        .iter()
        .map(|r| (r.seq, r.action.as_str(), r.project.as_deref(), r.outcome))
        .collect();
    assert_eq!(
        summary,
        [
            (
                1,
                "system.bootstrap",
                Some("prj_default"),
                AuditOutcome::Success
            ),
            (2, "project.create", Some("prj_a"), AuditOutcome::Success),
            (3, "project.create", Some("prj_b"), AuditOutcome::Success),
            (4, "key.create", Some("prj_a"), AuditOutcome::Success),
            (5, "project.delete", Some("prj_a"), AuditOutcome::Refused),
            (6, "secret.read", Some("prj_b"), AuditOutcome::Denied),
            (7, "key.revoke", Some("prj_a"), AuditOutcome::Success),
        ]
    );
    assert_eq!(records[0].prev_hash, GENESIS_HASH);
    assert_eq!(records[3].actor, admin());
    assert!(
        records[4].detail.contains("API keys"),
        "refusals record why: {}",
        records[4].detail
    );
    assert_eq!(s.audit_head(), (7, records[6].hash.as_str()));
    verify_chain(records).expect("chain verifies");
    // Exported as JSON and read back (what the CLI does), it still verifies.
    let json = serde_json::to_string(records).expect("records serialize");
    let back: Vec<AuditRecord> = serde_json::from_str(&json).expect("records deserialize");
    verify_chain(&back).expect("exported chain verifies");
    // A later run of the chain verifies on its own.
    verify_chain(&records[3..]).expect("a suffix verifies");
}

#[test]
fn tampering_with_the_audit_chain_is_detected() {
    let s = audited_state();
    let records = s.audit_records().to_vec();

    let mut edited = records.clone();
    edited[3].detail = "principal=someone-else".into();
    assert_eq!(verify_chain(&edited).map_err(|e| e.seq), Err(4));

    let mut rehashed = records.clone();
    rehashed[3].actor = Actor::system();
    rehashed[3].hash = rehashed[3].compute_hash();
    assert_eq!(
        verify_chain(&rehashed).map_err(|e| e.seq),
        Err(5),
        "the next record's prev_hash catches a rehash"
    );

    let mut dropped = records.clone();
    dropped.remove(2);
    assert_eq!(verify_chain(&dropped).map_err(|e| e.seq), Err(4));

    let mut swapped = records.clone();
    swapped.swap(1, 2);
    assert!(verify_chain(&swapped).is_err());

    let mut outcome = records.clone();
    outcome[4].outcome = AuditOutcome::Success;
    assert_eq!(verify_chain(&outcome).map_err(|e| e.seq), Err(5));

    let mut genesis = records.clone();
    genesis[0].prev_hash = "f".repeat(64);
    genesis[0].hash = genesis[0].compute_hash();
    assert_eq!(verify_chain(&genesis).map_err(|e| e.seq), Err(1));
}

#[test]
fn the_audit_chain_verifies_the_same_fed_a_chunk_at_a_time() {
    let s = audited_state();
    let records = s.audit_records().to_vec();
    for chunk in 1..=records.len() {
        let mut v = ChainVerifier::default();
        for piece in records.chunks(chunk) {
            v.feed(piece)
                .expect("every chunking of a good chain verifies");
        }
    }
    // A break between two chunks is caught at the chunk boundary, with the same seq as whole.
    let mut edited = records.clone();
    edited[3].prev_hash = "f".repeat(64);
    let whole = verify_chain(&edited).map_err(|e| e.seq);
    let mut v = ChainVerifier::default();
    v.feed(&edited[..3]).expect("the first three are intact");
    assert_eq!(v.feed(&edited[3..]).map_err(|e| e.seq), whole);
    assert_eq!(whole, Err(4));
    // A gap between chunks too.
    let mut v = ChainVerifier::default();
    v.feed(&records[..2]).expect("intact");
    assert_eq!(v.feed(&records[3..]).map_err(|e| e.seq), Err(4));
}

#[test]
fn audit_pages_by_seq_and_filters_by_project() {
    let s = audited_state();
    let page = s.audit_page(0, 3, None);
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(page.next_after_seq, Some(3));
    let page = s.audit_page(3, 100, None);
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert_eq!(page.next_after_seq, None);
    let a = s.audit_page(0, 2, Some("prj_a"));
    assert_eq!(a.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 4]);
    assert_eq!(a.next_after_seq, Some(4));
    let a = s.project_scope("prj_a").audit(4, 10);
    assert_eq!(a.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 7]);
    assert!(s.audit_page(100, 10, None).records.is_empty());
    assert!(s.audit_page(u64::MAX, 10, None).records.is_empty());
}

#[test]
fn invalid_audit_records_are_refused_and_noop_is_not_audited() {
    let mut s = bootstrapped();
    let out = run(
        &mut s,
        Op::Audit(AuditOp::RecordAudit {
            action: "Not An Action".into(),
            project: None,
            target: String::new(),
            outcome: AuditOutcome::Denied,
            detail: String::new(),
        }),
    );
    assert!(matches!(out, Err(DomainError::Invalid { .. })), "{out:?}");
    assert_eq!(
        s.audit_records()
            .last()
            .map(|r| (r.action.as_str(), r.outcome)),
        Some(("audit.record", AuditOutcome::Refused))
    );
    let len = s.audit_records().len();
    assert_eq!(run(&mut s, Op::Cluster(ClusterOp::Noop)), Ok(Outcome::Done));
    assert_eq!(s.audit_records().len(), len);
}

#[test]
fn commands_and_outcomes_round_trip_through_json() {
    let mut rng = StdRng::seed_from_u64(3);
    let s = bootstrapped();
    for n in 0..200 {
        let cmd = random_command(&mut rng, &s, T0 + n as u64, n);
        let json = serde_json::to_vec(&cmd).expect("command serializes");
        let back: Command = serde_json::from_slice(&json).expect("command deserializes");
        assert_eq!(back, cmd);
        let out = s.clone().apply(2, &cmd);
        let json = serde_json::to_vec(&out).expect("outcome serializes");
        let back: CommandOutcome = serde_json::from_slice(&json).expect("outcome deserializes");
        assert_eq!(back, out);
    }
}

#[test]
fn a_resent_request_is_applied_once() {
    let mut state = RegistryState::default();
    state
        .apply(1, &Command::new(T0, Actor::system(), bootstrap_op()))
        .expect("bootstrap");
    let mut create = Command::new(
        T0 + 1,
        admin(),
        Op::Tenancy(TenancyOp::CreateProject {
            id: "prj_once".to_owned(),
            name: "once".to_owned(),
            description: String::new(),
            data_key: wk("mk1", "once"),
            policy: None,
        }),
    );
    create.request_id = Some("req-1".to_owned());
    let first = state.apply(2, &create).expect("created");
    let audit_len = state.audit.len();
    // The same request committed again (a follower re-sent it after a leader change): same answer, no effect.
    let again = state.apply(3, &create);
    assert_eq!(again, Ok(first.clone()));
    assert_eq!(
        state.audit.len(),
        audit_len,
        "a duplicate is not audited twice"
    );
    assert_eq!(state.applied_index, 3);
    // Without the id, the same operation is a new request and is refused as a duplicate name.
    let mut fresh = create.clone();
    fresh.request_id = Some("req-2".to_owned());
    assert!(matches!(
        state.apply(4, &fresh),
        Err(DomainError::AlreadyExists { .. })
    ));
}

#[test]
fn remembered_requests_are_bounded() {
    let mut state = RegistryState::default();
    for i in 0..(REMEMBERED_REQUESTS as u64 + 50) {
        let mut noop = Command::new(T0, Actor::system(), Op::Cluster(ClusterOp::Noop));
        noop.request_id = Some(format!("r{i}"));
        let _ = state.apply(i + 1, &noop);
    }
    assert_eq!(state.requests.len(), REMEMBERED_REQUESTS);
    assert_eq!(state.requests.parts().1.len(), REMEMBERED_REQUESTS);
    assert!(
        state.requests.get("r0").is_none(),
        "the oldest id is forgotten first"
    );
    assert!(state
        .requests
        .get(&format!("r{}", REMEMBERED_REQUESTS as u64 + 49))
        .is_some());
}

#[test]
fn a_batch_applies_each_command_as_its_own_entry_would() {
    let project = |id: &str, name: &str, request: &str| {
        let mut cmd = Command::new(
            T0 + 5_000,
            admin(),
            Op::Tenancy(TenancyOp::CreateProject {
                id: id.into(),
                name: name.into(),
                description: String::new(),
                data_key: wk("mk1", id),
                policy: None,
            }),
        );
        cmd.request_id = Some(request.into());
        cmd
    };
    let commands = vec![
        project("prj_b1", "alpha", "req-1"),
        // Same name: refused, and the refusal is this command's outcome only.
        project("prj_b2", "alpha", "req-2"),
        project("prj_b3", "gamma", "req-3"),
        // A repeated request id answers the first outcome without applying again.
        project("prj_b1", "alpha", "req-1"),
    ];
    let mut batched = bootstrapped();
    let audit_before = batched.audit_records().len();
    let out = batched.apply(
        2,
        &Command::new(
            T0 + 5_000,
            Actor::system(),
            Op::Cluster(ClusterOp::Batch {
                commands: commands.clone(),
            }),
        ),
    );
    let Ok(Outcome::Batch { outcomes }) = out else {
        panic!("unexpected {out:?}")
    };
    assert_eq!(outcomes.len(), 4);
    assert!(matches!(
        outcomes[0],
        Ok(Outcome::Tenancy(TenancyOutcome::Project { .. }))
    ));
    assert!(matches!(
        outcomes[1],
        Err(DomainError::AlreadyExists { .. })
    ));
    assert!(matches!(
        outcomes[2],
        Ok(Outcome::Tenancy(TenancyOutcome::Project { .. }))
    ));
    assert_eq!(outcomes[3], outcomes[0]);
    assert_eq!(batched.audit_records().len(), audit_before + 3);
    assert_eq!(batched.applied_index, 2);

    // The same commands as separate entries give the same outcomes and the same registry.
    let mut separate = bootstrapped();
    for (i, cmd) in commands.iter().enumerate() {
        let out = separate.apply(2 + i as u64, cmd);
        assert_eq!(out, outcomes[i]);
    }
    assert_eq!(
        separate.projects().map(|p| &p.id).collect::<Vec<_>>(),
        batched.projects().map(|p| &p.id).collect::<Vec<_>>()
    );

    // A batch inside a batch is refused as a whole.
    let nested = Command::new(
        T0,
        Actor::system(),
        Op::Cluster(ClusterOp::Batch {
            commands: vec![Command::new(
                T0,
                Actor::system(),
                Op::Cluster(ClusterOp::Batch { commands }),
            )],
        }),
    );
    assert!(matches!(
        batched.apply(3, &nested),
        Err(DomainError::Invalid { .. })
    ));
}
