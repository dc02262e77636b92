//! Tests of the job lifecycle through `apply`.

use std::collections::BTreeMap;

use super::*;
use crate::scheduler::GpuDevice;
use crate::scheduler::{ResourceRequest, Resources};
use crate::state::{
    node_key, Actor, AuditOutcome, ClusterOp, Command, CommandOutcome, FleetOp, JobOp,
    NodeHealthState, NodeRecord, Op, TenancyOp, WrappedKey,
};
use crate::state::{DomainError, Outcome, PageRequest, RegistryState, OOM_APPLY_VERSION};

const T0: u64 = 1_700_000_000_000;
const A: &str = "eu/eu1/a1";
const B: &str = "eu/eu1/b1";
const US: &str = "us/us1/c1";
const PA: &str = "prj_a";
const PB: &str = "prj_b";

/// A registry with two projects and three ready nodes, applying commands one second apart.
struct World {
    s: RegistryState,
    at: u64,
}

fn register_op(key: &str, held: &[(&str, u32)]) -> Op {
    let mut parts = key.split('/');
    let mut next = || parts.next().unwrap_or_default().to_owned();
    let (region, cluster, node) = (next(), next(), next());
    Op::Fleet(FleetOp::RegisterNode {
        region,
        cluster,
        node,
        cpu_cores: 16,
        memory_bytes: 64 << 30,
        gpu_count: 2,
        agent_version: "1.0".into(),
        gpus: (0..2)
            .map(|i| GpuDevice {
                uuid: format!("GPU-{key}-{i}"),
                index: i,
                model: "NVIDIA H200".into(),
                memory_mib: 143_771,
                healthy: true,
            })
            .collect(),
        labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        rpc_addr: "127.0.0.1:7000".into(),
        held: held
            .iter()
            .map(|(job_id, attempt)| HeldAttempt {
                job_id: (*job_id).to_owned(),
                attempt: *attempt,
                replica: 0,
            })
            .collect(),
        os: "Debian 12".into(),
        limit_mode: "cgroup-v1".into(),
        admit_new: None,
    })
}

fn spec() -> JobSpec {
    let mut spec = JobSpec::new("python3");
    spec.args = vec!["train.py".into()];
    spec.resources = ResourceRequest {
        cpu_millis: 2000,
        memory_bytes: 4 << 30,
        gpus: 1,
        ..ResourceRequest::default()
    };
    spec
}

fn exited(code: i32) -> JobEventKind {
    JobEventKind::Exited {
        exit_code: Some(code),
        signal: None,
        cancelled: false,
        timed_out: false,
        cpu_time_ms: Some(1500),
        max_rss_bytes: Some(1 << 20),
        oom_killed: false,
    }
}

impl World {
    fn new() -> Self {
        let mut w = Self {
            s: RegistryState::default(),
            at: T0,
        };
        for (id, name) in [(PA, "alpha"), (PB, "beta")] {
            w.ok(Op::Tenancy(TenancyOp::CreateProject {
                id: id.into(),
                name: name.into(),
                description: String::new(),
                data_key: WrappedKey {
                    master_key_id: "mk1".into(),
                    nonce_b64: "AAAAAAAAAAAAAAAA".into(),
                    ciphertext_b64: format!("ct-{id}"),
                },
                policy: None,
            }));
        }
        for key in [A, B, US] {
            w.ok(register_op(key, &[]));
        }
        w
    }

    fn apply(&mut self, op: Op) -> CommandOutcome {
        self.at += 1000;
        let index = self.s.applied_index + 1;
        let out = self.s.apply(
            index,
            &Command::new(self.at, Actor::principal("usr_1", "ada"), op),
        );
        self.s.assert_job_indexes_consistent();
        out
    }

    fn ok(&mut self, op: Op) -> Outcome {
        let shown = format!("{op:?}");
        match self.apply(op) {
            Ok(o) => o,
            Err(e) => panic!("{shown} was refused: {e}"),
        }
    }

    fn refused(&mut self, op: Op) -> DomainError {
        let before = self.without_audit();
        let audit_len = self.s.audit.len();
        let shown = format!("{op:?}");
        let Err(e) = self.apply(op) else {
            panic!("{shown} was not refused")
        };
        assert_eq!(
            self.without_audit(),
            before,
            "a refused command changed state"
        );
        assert_eq!(self.s.audit.len(), audit_len + 1);
        assert_eq!(
            self.s.audit.last().map(|r| r.outcome),
            Some(AuditOutcome::Refused)
        );
        e
    }

    fn without_audit(&self) -> RegistryState {
        let mut c = self.s.clone();
        c.audit.clear();
        c.applied_index = 0;
        c
    }

    fn submit_spec(&mut self, id: &str, spec: JobSpec) -> JobRecord {
        match self.ok(Op::Jobs(JobOp::SubmitJob {
            id: id.into(),
            project_id: PA.into(),
            spec,
            principal_id: None,
        })) {
            Outcome::Jobs(JobOutcome::Job { job }) => job,
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    fn submit(&mut self, id: &str) -> JobRecord {
        self.submit_spec(id, spec())
    }

    /// The node's lease epoch (1 for an unknown node).
    fn epoch(&self, key: &str) -> u64 {
        self.s.node(key).map_or(1, |n| n.lease_epoch)
    }

    fn node(&self, key: &str) -> &NodeRecord {
        self.s.node(key).expect("node is registered")
    }

    fn version(&self, key: &str) -> u64 {
        self.node(key).assign_version
    }

    fn place_op(&self, id: &str, attempt: u32, key: &str) -> PlacementOp {
        self.gang_op(id, attempt, &[key])
    }

    /// Replica `r` on `keys[r]`, each on that node's GPU `r`.
    fn gang_op(&self, id: &str, attempt: u32, keys: &[&str]) -> PlacementOp {
        PlacementOp::Place {
            job_id: id.into(),
            attempt,
            replicas: keys
                .iter()
                .enumerate()
                .map(|(r, key)| ReplicaPlacement {
                    node: (*key).into(),
                    lease_epoch: self.epoch(key),
                    gpu_uuids: vec![format!("GPU-{key}-{r}")],
                    resources: Resources {
                        cpu_millis: 2000,
                        memory_bytes: 4 << 30,
                        gpus: 1,
                    },
                })
                .collect(),
        }
    }

    fn placements(&mut self, placements: Vec<PlacementOp>) -> (u32, u32, u32, u32) {
        match self.ok(Op::Jobs(JobOp::PlaceJobs { placements })) {
            Outcome::Jobs(JobOutcome::JobsPlaced {
                placed,
                waiting,
                preempted,
                skipped,
            }) => (placed, waiting, preempted, skipped),
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    fn place(&mut self, id: &str, attempt: u32, key: &str) {
        let op = self.place_op(id, attempt, key);
        assert_eq!(self.placements(vec![op]), (1, 0, 0, 0), "{id} not placed");
    }

    fn report(&mut self, key: &str, events: Vec<(&str, u32, JobEventKind)>) -> Vec<EventAck> {
        let lease_epoch = self.epoch(key);
        self.report_at_epoch(key, lease_epoch, events)
            .unwrap_or_else(|e| panic!("report refused: {e}"))
    }

    fn report_at_epoch(
        &mut self,
        key: &str,
        lease_epoch: u64,
        events: Vec<(&str, u32, JobEventKind)>,
    ) -> Result<Vec<EventAck>, DomainError> {
        let at_ms = self.at + 500;
        let events = events
            .into_iter()
            .map(|(job_id, attempt, kind)| {
                // `job#r` reports for replica r.
                let (job_id, replica) = match job_id.split_once('#') {
                    Some((id, r)) => (id, r.parse().unwrap_or(u32::MAX)),
                    None => (job_id, 0),
                };
                JobEventOp {
                    job_id: job_id.into(),
                    attempt,
                    replica,
                    at_ms,
                    kind,
                }
            })
            .collect();
        match self.apply(Op::Jobs(JobOp::ReportJobEvents {
            node: key.into(),
            lease_epoch,
            events,
        }))? {
            Outcome::Jobs(JobOutcome::JobEvents { acks }) => Ok(acks),
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    fn start(&mut self, id: &str, attempt: u32, key: &str) {
        let acks = self.report(key, vec![(id, attempt, JobEventKind::Started)]);
        assert!(acks[0].accepted, "{acks:?}");
    }

    fn health(&mut self, key: &str, health: NodeHealthState) {
        let lease_epoch = self.epoch(key);
        self.ok(Op::Fleet(FleetOp::SetNodeHealth {
            key: key.into(),
            health,
            lease_epoch,
        }));
    }

    fn job(&self, id: &str) -> &JobRecord {
        self.s.job(PA, id).expect("job exists")
    }
}

#[test]
fn job_state_names_round_trip() {
    for state in JobState::ALL {
        assert_eq!(JobState::parse(state.as_str()), Some(state));
        let json = serde_json::to_string(&state).expect("serializes");
        assert_eq!(json, format!("\"{}\"", state.as_str()));
    }
    assert_eq!(JobState::parse("RUNNING"), Some(JobState::Running));
    assert_eq!(JobState::parse("done"), None);
    let terminal: Vec<JobState> = JobState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(
        terminal,
        [
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Lost
        ]
    );
    assert_eq!(AttemptOutcome::Preempted.as_str(), "preempted");
    let spec: JobSpec = serde_json::from_str(r#"{"command":"true"}"#).expect("minimal spec");
    assert_eq!(spec, JobSpec::new("true"));
    assert_eq!(spec.retry.max_attempts, 3);
    assert_eq!(spec.cancel_grace_secs, 10);
}

#[test]
fn submit_creates_a_pending_job_in_its_project() {
    let mut w = World::new();
    let job = w.submit("job_1");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.project_id, PA);
    assert_eq!(job.created_by, "ada");
    assert_eq!(job.created_at, w.at);
    assert!(job.attempts.is_empty() && job.current_attempt().is_none());
    let pending: Vec<&str> = w.s.pending_jobs().map(|j| j.id.as_str()).collect();
    assert_eq!(pending, ["job_1"]);
    let record = w.s.audit.last().expect("audited");
    assert_eq!(
        (record.action.as_str(), record.project.as_deref()),
        ("job.submit", Some(PA))
    );
    assert_eq!(record.target, "job_1");

    let again = w.refused(Op::Jobs(JobOp::SubmitJob {
        id: "job_1".into(),
        project_id: PB.into(),
        spec: spec(),
        principal_id: None,
    }));
    assert!(
        matches!(again, DomainError::AlreadyExists { .. }),
        "{again:?}"
    );
    let missing = w.refused(Op::Jobs(JobOp::SubmitJob {
        id: "job_2".into(),
        project_id: "prj_missing".into(),
        spec: spec(),
        principal_id: None,
    }));
    assert!(
        matches!(missing, DomainError::NotFound { .. }),
        "{missing:?}"
    );
}

#[test]
fn malformed_specs_are_refused() {
    let mut w = World::new();
    let mut cases: Vec<(&str, JobSpec)> = Vec::new();
    let mut s = spec();
    s.command = "  ".into();
    cases.push(("command", s));
    let mut s = spec();
    s.command = "a\0b".into();
    cases.push(("command", s));
    let mut s = spec();
    s.command = "x".repeat(MAX_COMMAND + 1);
    cases.push(("command", s));
    let mut s = spec();
    s.name = "n".repeat(MAX_JOB_NAME + 1);
    cases.push(("name", s));
    let mut s = spec();
    s.retry.max_attempts = 0;
    cases.push(("retry.max_attempts", s));
    let mut s = spec();
    s.retry.max_attempts = MAX_ATTEMPTS + 1;
    cases.push(("retry.max_attempts", s));
    let mut s = spec();
    s.env.insert("A=B".into(), "1".into());
    cases.push(("env", s));
    let mut s = spec();
    s.args.push("a\0".into());
    cases.push(("args", s));
    let mut s = spec();
    s.working_dir = Some(String::new());
    cases.push(("working_dir", s));
    for (field, spec) in cases {
        let e = w.refused(Op::Jobs(JobOp::SubmitJob {
            id: "job_x".into(),
            project_id: PA.into(),
            spec,
            principal_id: None,
        }));
        assert!(
            matches!(&e, DomainError::Invalid { field: f, .. } if f == field),
            "{field}: {e:?}"
        );
    }
    let bad_id = w.refused(Op::Jobs(JobOp::SubmitJob {
        id: "job/1".into(),
        project_id: PA.into(),
        spec: spec(),
        principal_id: None,
    }));
    assert!(matches!(bad_id, DomainError::Invalid { .. }));
    let mut edge = spec();
    edge.name = "n".repeat(MAX_JOB_NAME);
    edge.retry.max_attempts = MAX_ATTEMPTS;
    w.submit_spec("job_edge", edge);
}

#[test]
fn placement_schedules_the_job_on_the_node() {
    let mut w = World::new();
    w.submit("job_1");
    w.ok(Op::Jobs(JobOp::PlaceJobs {
        placements: vec![PlacementOp::Wait {
            job_id: "job_1".into(),
            reason: "no node has a free GPU".into(),
        }],
    }));
    assert_eq!(
        w.job("job_1").pending_reason.as_deref(),
        Some("no node has a free GPU")
    );
    let version = w.version(A);
    w.place("job_1", 1, A);
    let job = w.job("job_1");
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.pending_reason, None);
    let attempt = job.current_attempt().expect("current attempt");
    assert_eq!(attempt.attempt, 1);
    assert_eq!(attempt.node, A);
    assert_eq!(
        (attempt.region.as_str(), attempt.cluster.as_str()),
        ("eu", "eu1")
    );
    assert_eq!(attempt.lease_epoch, 1);
    assert_eq!(attempt.gpu_uuids, [format!("GPU-{A}-0")]);
    assert_eq!(attempt.resources.gpus, 1);
    assert_eq!(attempt.scheduled_at, w.at);
    assert_eq!(attempt.outcome, None);
    assert_eq!(w.s.pending_jobs().count(), 0);
    let active: Vec<&str> = w.s.active_jobs().map(|j| j.id.as_str()).collect();
    assert_eq!(active, ["job_1"]);
    let (v, jobs) = w.s.node_assignments(A);
    assert_eq!(v, version + 1);
    assert_eq!(jobs.len(), 1);
    assert_eq!(w.s.node_assignments(B).1.len(), 0);
    let record = w.s.audit.last().expect("audited");
    assert_eq!(
        (record.action.as_str(), record.project.as_deref()),
        ("job.place", None)
    );
    assert_eq!(record.detail, "placed=1 waiting=0 preempted=0 skipped=0");
}

#[test]
fn stale_placements_are_skipped() {
    let mut w = World::new();
    w.submit("job_1");
    w.submit("job_2");
    w.health(B, NodeHealthState::Unreachable);
    let before = w.without_audit();
    let mut wrong_epoch = w.place_op("job_1", 1, A);
    if let PlacementOp::Place { replicas, .. } = &mut wrong_epoch {
        replicas[0].lease_epoch += 1;
    }
    let skipped = w.placements(vec![
        w.place_op("job_1", 2, A),           // not the next attempt
        wrong_epoch,                         // another registration
        w.place_op("job_1", 1, B),           // node not ready
        w.place_op("job_missing", 1, A),     // no such job
        w.place_op("job_1", 1, "eu/eu1/zz"), // no such node
        PlacementOp::Preempt {
            job_id: "job_1".into(),
            attempt: 1,
            by: "job_2".into(),
        }, // not on a node
    ]);
    assert_eq!(skipped, (0, 0, 0, 6));
    let mut after = w.without_audit();
    after.applied_index = 0;
    assert_eq!(after, before, "skipped items changed nothing");

    // The same job twice in one pass: the second is stale once the first applied.
    let counts = w.placements(vec![
        w.place_op("job_1", 1, A),
        w.place_op("job_1", 1, US),
        PlacementOp::Wait {
            job_id: "job_1".into(),
            reason: "late".into(),
        },
        PlacementOp::Wait {
            job_id: "job_2".into(),
            reason: "busy".into(),
        },
    ]);
    assert_eq!(counts, (1, 1, 0, 2));
    assert_eq!(w.job("job_1").attempts.len(), 1);
    assert_eq!(
        w.job("job_1").current_attempt().map(|a| a.node.as_str()),
        Some(A)
    );
    assert_eq!(w.job("job_1").pending_reason, None);
}

#[test]
fn an_unchanged_pending_reason_is_a_no_op() {
    let mut w = World::new();
    w.submit("job_1");
    let wait = || PlacementOp::Wait {
        job_id: "job_1".into(),
        reason: "insufficient cpu on 3 nodes".into(),
    };
    w.placements(vec![wait()]);
    let updated = w.job("job_1").updated_at;
    assert_eq!(w.placements(vec![wait()]), (0, 1, 0, 0));
    assert_eq!(w.job("job_1").updated_at, updated);
}

#[test]
fn a_job_runs_and_succeeds() {
    let mut w = World::new();
    w.submit("job_1");
    w.place("job_1", 1, A);
    let version = w.version(A);
    w.start("job_1", 1, A);
    let job = w.job("job_1").clone();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.attempts[0].started_at, Some(w.at - 500));
    assert_eq!(w.version(A), version, "a start changes no assignment");

    // A repeated start is accepted and changes nothing.
    let acks = w.report(A, vec![("job_1", 1, JobEventKind::Started)]);
    assert!(acks[0].accepted);
    let mut again = w.job("job_1").clone();
    again.updated_at = job.updated_at;
    assert_eq!(again, job);

    let acks = w.report(A, vec![("job_1", 1, exited(0))]);
    assert_eq!(acks, [EventAck::accepted()]);
    let job = w.job("job_1");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.finished_at, Some(w.at));
    let attempt = &job.attempts[0];
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(attempt.exit_code, Some(0));
    assert_eq!(attempt.ended_at, Some(w.at - 500));
    assert_eq!(attempt.cpu_time_ms, Some(1500));
    assert_eq!(attempt.max_rss_bytes, Some(1 << 20));
    assert_eq!(job.current_attempt(), None);
    assert_eq!(w.s.node_assignments(A), (version + 1, Vec::new()));
    let record = w.s.audit.last().expect("audited");
    assert_eq!(
        (
            record.action.as_str(),
            record.project.as_deref(),
            record.target.as_str()
        ),
        ("job.report", None, A)
    );
    assert_eq!(record.detail, "accepted=1 stale=0");

    // A report about a finished job is stale.
    let acks = w.report(A, vec![("job_1", 1, exited(0))]);
    assert!(!acks[0].accepted && acks[0].reason.starts_with("stale:"));
}

#[test]
fn reports_are_fenced_by_the_lease_epoch() {
    let mut w = World::new();
    w.submit("job_1");
    w.place("job_1", 1, A);
    w.start("job_1", 1, A);
    w.ok(register_op(A, &[("job_1", 1)]));
    assert_eq!(w.epoch(A), 2);
    let before = w.without_audit();
    let Err(e) = w.report_at_epoch(A, 1, vec![("job_1", 1, exited(0))]) else {
        panic!("an old epoch's report was accepted")
    };
    assert!(matches!(e, DomainError::FailedPrecondition(_)), "{e:?}");
    assert_eq!(w.without_audit(), before);
    assert_eq!(
        w.s.audit.last().map(|r| r.outcome),
        Some(AuditOutcome::Refused)
    );
    let unknown = w.report_at_epoch("eu/eu1/zz", 1, vec![]);
    assert!(matches!(unknown, Err(DomainError::FailedPrecondition(_))));
    // With the current epoch the re-adopted attempt reports normally.
    let acks = w.report(A, vec![("job_1", 1, exited(0))]);
    assert!(acks[0].accepted);
    assert_eq!(w.job("job_1").state, JobState::Succeeded);
}

#[test]
fn an_old_attempt_cannot_report_after_a_reschedule() {
    let mut w = World::new();
    w.submit("job_1");
    w.place("job_1", 1, A);
    w.start("job_1", 1, A);
    w.health(A, NodeHealthState::Lost);
    w.place("job_1", 2, B);
    // A's agent comes back and reports attempt 1 as a success.
    w.ok(register_op(A, &[("job_1", 1)]));
    let before = w.without_audit();
    let acks = w.report(
        A,
        vec![
            ("job_1", 1, exited(0)),
            ("job_1", 2, JobEventKind::Started),
            ("job_missing", 1, JobEventKind::Started),
        ],
    );
    assert_eq!(acks.len(), 3);
    assert!(
        acks.iter()
            .all(|a| !a.accepted && a.reason.starts_with("stale:")),
        "{acks:?}"
    );
    assert!(acks[0].reason.contains("attempt 1"), "{}", acks[0].reason);
    assert!(
        acks[1].reason.contains("another node"),
        "{}",
        acks[1].reason
    );
    let mut after = w.without_audit();
    after.applied_index = 0;
    assert_eq!(after, before, "stale events changed nothing");
    let job = w.job("job_1");
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Lost));
    assert_eq!(job.current_attempt().map(|a| a.node.as_str()), Some(B));

    // In one batch, accepted and stale events are answered in order.
    let acks = w.report(
        B,
        vec![("job_1", 1, exited(0)), ("job_1", 2, JobEventKind::Started)],
    );
    assert_eq!(
        acks.iter().map(|a| a.accepted).collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(w.job("job_1").state, JobState::Running);
}

#[test]
fn a_lost_node_reschedules_its_jobs_until_the_budget_is_spent() {
    let mut w = World::new();
    let mut s = spec();
    s.retry.max_attempts = 2;
    w.submit_spec("job_1", s);
    w.submit("job_other");
    w.place("job_1", 1, A);
    w.place("job_other", 1, B);
    w.start("job_1", 1, A);
    let version = w.version(A);
    w.health(A, NodeHealthState::Lost);
    let job = w.job("job_1");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.prefer_region.as_deref(), Some("eu"));
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Lost));
    assert_eq!(job.attempts[0].detail, "node lost");
    assert_eq!(job.attempts[0].ended_at, Some(w.at));
    assert_eq!(w.version(A), version + 1);
    assert_eq!(
        w.job("job_other").state,
        JobState::Scheduled,
        "other nodes' jobs stay"
    );
    assert!(w
        .s
        .audit
        .last()
        .is_some_and(|r| r.detail.ends_with("1 jobs lost")));
    let pending: Vec<&str> = w.s.pending_jobs().map(|j| j.id.as_str()).collect();
    assert_eq!(pending, ["job_1"]);

    w.place("job_1", 2, US);
    w.start("job_1", 2, US);
    w.health(US, NodeHealthState::Lost);
    let job = w.job("job_1");
    assert_eq!(job.state, JobState::Lost, "two attempts of two are spent");
    assert_eq!(job.finished_at, Some(w.at));
    assert_eq!(job.attempts.len(), 2);
    assert_eq!(w.s.pending_jobs().count(), 0);
}

#[test]
fn an_unreachable_node_keeps_its_jobs() {
    let mut w = World::new();
    w.submit("job_1");
    w.place("job_1", 1, A);
    w.start("job_1", 1, A);
    let job = w.job("job_1").clone();
    w.health(A, NodeHealthState::Unreachable);
    assert_eq!(w.job("job_1"), &job);
    w.health(A, NodeHealthState::Ready);
    assert_eq!(w.job("job_1"), &job);
}

#[test]
fn a_lost_node_ends_a_job_being_cancelled_as_cancelled() {
    let mut w = World::new();
    w.submit("job_1");
    w.place("job_1", 1, A);
    w.ok(Op::Jobs(JobOp::CancelJob {
        project_id: PA.into(),
        id: "job_1".into(),
    }));
    w.health(A, NodeHealthState::Lost);
    let job = w.job("job_1");
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Lost));
}

#[test]
fn re_registration_keeps_held_attempts_and_loses_unheld_running_ones() {
    let mut w = World::new();
    for id in ["job_held", "job_gone", "job_waiting"] {
        w.submit(id);
        w.place(id, 1, A);
    }
    w.start("job_held", 1, A);
    w.start("job_gone", 1, A);
    let version = w.version(A);
    w.ok(register_op(A, &[("job_held", 1), ("job_unknown", 4)]));
    assert_eq!(w.epoch(A), 2);
    assert_eq!(
        w.version(A),
        version + 2,
        "registration and the lost attempt"
    );

    let held = w.job("job_held");
    assert_eq!(held.state, JobState::Running);
    assert_eq!(held.attempts[0].lease_epoch, 2);
    let gone = w.job("job_gone");
    assert_eq!(gone.state, JobState::Pending);
    assert_eq!(gone.attempts[0].outcome, Some(AttemptOutcome::Lost));
    assert_eq!(
        gone.attempts[0].detail,
        "not running after the agent restarted"
    );
    assert_eq!(gone.prefer_region.as_deref(), Some("eu"));
    let waiting = w.job("job_waiting");
    assert_eq!(
        waiting.state,
        JobState::Scheduled,
        "a scheduled attempt may still start"
    );
    assert_eq!(waiting.attempts[0].lease_epoch, 2);
    let (_, jobs) = w.s.node_assignments(A);
    let ids: Vec<&str> = jobs.iter().map(|(j, _)| j.id.as_str()).collect();
    assert_eq!(ids, ["job_held", "job_waiting"]);
    assert!(w
        .s
        .audit
        .last()
        .is_some_and(|r| r.detail == "lease epoch 2, 1 jobs lost"));
    // The re-adopted attempts report under the new epoch.
    let acks = w.report(
        A,
        vec![
            ("job_held", 1, exited(0)),
            ("job_waiting", 1, JobEventKind::Started),
        ],
    );
    assert!(acks.iter().all(|a| a.accepted), "{acks:?}");
}

#[test]
fn cancel_depends_on_the_state() {
    let mut w = World::new();
    w.submit("job_pending");
    let out = w.ok(Op::Jobs(JobOp::CancelJob {
        project_id: PA.into(),
        id: "job_pending".into(),
    }));
    let Outcome::Jobs(JobOutcome::Job { job }) = out else {
        panic!("unexpected outcome {out:?}")
    };
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.finished_at, Some(w.at));
    assert_eq!(w.s.pending_jobs().count(), 0);
    let record = w.s.audit.last().expect("audited");
    assert_eq!(
        (record.action.as_str(), record.project.as_deref()),
        ("job.cancel", Some(PA))
    );

    w.submit("job_running");
    w.place("job_running", 1, A);
    w.start("job_running", 1, A);
    let version = w.version(A);
    let cancel = || {
        Op::Jobs(JobOp::CancelJob {
            project_id: PA.into(),
            id: "job_running".into(),
        })
    };
    w.ok(cancel());
    let job = w.job("job_running");
    assert_eq!(job.state, JobState::Running, "the agent stops it first");
    assert!(job.cancel_requested);
    assert_eq!(w.version(A), version + 1);
    w.ok(cancel());
    assert_eq!(
        w.version(A),
        version + 1,
        "a repeated cancel changes nothing"
    );
    // The process exits 0 after the cancel was asked for: cancel wins.
    let acks = w.report(A, vec![("job_running", 1, exited(0))]);
    assert!(acks[0].accepted);
    let job = w.job("job_running");
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Cancelled));
    assert_eq!(job.attempts[0].exit_code, Some(0));

    let finished = w.refused(cancel());
    assert!(
        matches!(finished, DomainError::FailedPrecondition(_)),
        "{finished:?}"
    );
    let finished = w.refused(Op::Jobs(JobOp::CancelJob {
        project_id: PA.into(),
        id: "job_pending".into(),
    }));
    assert!(matches!(finished, DomainError::FailedPrecondition(_)));
}

#[test]
fn an_exit_reported_as_cancelled_ends_the_job_cancelled() {
    let mut w = World::new();
    w.submit("job_1");
    w.place("job_1", 1, A);
    w.start("job_1", 1, A);
    let acks = w.report(
        A,
        vec![(
            "job_1",
            1,
            JobEventKind::Exited {
                exit_code: None,
                signal: Some(15),
                cancelled: true,
                timed_out: false,
                cpu_time_ms: None,
                max_rss_bytes: None,
                oom_killed: false,
            },
        )],
    );
    assert!(acks[0].accepted);
    assert_eq!(w.job("job_1").state, JobState::Cancelled);
    assert_eq!(w.job("job_1").attempts[0].signal, Some(15));
}

#[test]
fn an_out_of_memory_kill_is_named_with_the_limit_from_apply_version_5() {
    let oom = || JobEventKind::Exited {
        exit_code: None,
        signal: Some(9),
        cancelled: false,
        timed_out: false,
        cpu_time_ms: Some(20),
        max_rss_bytes: Some(4 << 30),
        oom_killed: true,
    };
    for (version, detail) in [
        (OOM_APPLY_VERSION - 1, "killed by signal 9"),
        (
            OOM_APPLY_VERSION,
            "out of memory: killed at its 4 GiB memory limit",
        ),
    ] {
        let mut w = World::new();
        w.s.apply_version = version;
        w.submit("job_1");
        w.place("job_1", 1, A);
        w.start("job_1", 1, A);
        let acks = w.report(A, vec![("job_1", 1, oom())]);
        assert!(acks[0].accepted);
        let job = w.job("job_1");
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts[0].detail, detail, "apply version {version}");
        assert_eq!(job.attempts[0].signal, Some(9));
    }
}

#[test]
fn failures_end_the_job_unless_retry_on_failure() {
    let mut w = World::new();
    w.submit("job_exit");
    let mut timed = spec();
    timed.timeout_secs = Some(5);
    w.submit_spec("job_timeout", timed);
    w.submit("job_launch");
    let mut retried = spec();
    retried.retry = RetryPolicy {
        max_attempts: 2,
        on_failure: true,
    };
    w.submit_spec("job_retried", retried);
    for id in ["job_exit", "job_timeout", "job_launch", "job_retried"] {
        w.place(id, 1, A);
    }
    for id in ["job_exit", "job_timeout", "job_retried"] {
        w.start(id, 1, A);
    }
    let acks = w.report(
        A,
        vec![
            ("job_exit", 1, exited(3)),
            (
                "job_timeout",
                1,
                JobEventKind::Exited {
                    exit_code: None,
                    signal: Some(9),
                    cancelled: false,
                    timed_out: true,
                    cpu_time_ms: None,
                    max_rss_bytes: None,
                    oom_killed: false,
                },
            ),
            (
                "job_launch",
                1,
                JobEventKind::LaunchFailed {
                    message: "no such file: python3".into(),
                },
            ),
            ("job_retried", 1, exited(1)),
        ],
    );
    assert!(acks.iter().all(|a| a.accepted), "{acks:?}");
    let exit = w.job("job_exit");
    assert_eq!(exit.state, JobState::Failed);
    assert_eq!(exit.attempts[0].detail, "exited with code 3");
    let timeout = w.job("job_timeout");
    assert_eq!(timeout.state, JobState::Failed);
    assert_eq!(timeout.attempts[0].detail, "timed out after 5s");
    assert_eq!(timeout.attempts[0].outcome, Some(AttemptOutcome::Failed));
    let launch = w.job("job_launch");
    assert_eq!(launch.state, JobState::Failed);
    assert_eq!(launch.attempts[0].detail, "no such file: python3");
    assert_eq!(launch.attempts[0].started_at, None);
    let retried = w.job("job_retried");
    assert_eq!(retried.state, JobState::Pending);
    assert_eq!(retried.prefer_region.as_deref(), Some("eu"));
    w.place("job_retried", 2, US);
    w.start("job_retried", 2, US);
    w.report(US, vec![("job_retried", 2, exited(1))]);
    let retried = w.job("job_retried");
    assert_eq!(
        retried.state,
        JobState::Failed,
        "the budget of two is spent"
    );
    assert_eq!(w.s.node_assignments(A).1.len(), 0);
}

#[test]
fn a_vanished_process_is_lost_and_retried() {
    let mut w = World::new();
    let mut s = spec();
    s.retry.max_attempts = 1;
    w.submit("job_retry");
    w.submit_spec("job_once", s);
    w.place("job_retry", 1, A);
    w.place("job_once", 1, A);
    let vanished = || JobEventKind::Vanished {
        reason: "process gone after reboot".into(),
    };
    w.report(
        A,
        vec![("job_retry", 1, vanished()), ("job_once", 1, vanished())],
    );
    let retry = w.job("job_retry");
    assert_eq!(retry.state, JobState::Pending);
    assert_eq!(retry.attempts[0].outcome, Some(AttemptOutcome::Lost));
    assert_eq!(retry.attempts[0].detail, "process gone after reboot");
    assert_eq!(w.job("job_once").state, JobState::Lost);
}

#[test]
fn preemption_returns_the_job_to_pending_without_spending_its_budget() {
    let mut w = World::new();
    let mut s = spec();
    s.retry.max_attempts = 2;
    w.submit_spec("job_low", s);
    w.place("job_low", 1, A);
    w.start("job_low", 1, A);
    let mut high = spec();
    high.priority = 10;
    high.preemption = true;
    w.submit_spec("job_high", high);
    let version = w.version(A);
    let preempt = |attempt| PlacementOp::Preempt {
        job_id: "job_low".into(),
        attempt,
        by: "job_high".into(),
    };
    assert_eq!(
        w.placements(vec![preempt(2)]),
        (0, 0, 0, 1),
        "wrong attempt"
    );
    assert_eq!(w.placements(vec![preempt(1)]), (0, 0, 1, 0));
    let job = w.job("job_low");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Preempted));
    assert_eq!(job.attempts[0].detail, "preempted by job job_high");
    assert_eq!(job.prefer_region, None);
    assert_eq!(w.version(A), version + 1);

    // Attempt 2 is lost: one counted attempt of two, so the job is retried.
    w.place("job_low", 2, B);
    w.start("job_low", 2, B);
    w.health(B, NodeHealthState::Lost);
    assert_eq!(w.job("job_low").state, JobState::Pending);
    w.place("job_low", 3, US);
    w.start("job_low", 3, US);
    w.health(US, NodeHealthState::Lost);
    assert_eq!(w.job("job_low").state, JobState::Lost);
}

#[test]
fn other_projects_jobs_are_invisible() {
    let mut w = World::new();
    w.submit("job_1");
    assert!(w.s.job(PA, "job_1").is_some());
    assert!(w.s.job(PB, "job_1").is_none());
    assert!(w
        .s
        .job_page(PB, None, &PageRequest::default())
        .items
        .is_empty());
    let e = w.refused(Op::Jobs(JobOp::CancelJob {
        project_id: PB.into(),
        id: "job_1".into(),
    }));
    assert_eq!(e, DomainError::not_found("job", "job_1"));
    assert_eq!(
        w.s.audit.last().and_then(|r| r.project.as_deref()),
        Some(PB)
    );
    assert_eq!(w.job("job_1").state, JobState::Pending);
    assert!(w.s.usage(PB, 0, u64::MAX).jobs.is_empty());
}

#[test]
fn job_pages_come_in_id_order_filtered_by_state() {
    let mut w = World::new();
    for id in ["job_c", "job_a", "job_b", "job_d"] {
        w.submit(id);
    }
    w.place("job_b", 1, A);
    w.ok(Op::Jobs(JobOp::SubmitJob {
        id: "job_0".into(),
        project_id: PB.into(),
        spec: spec(),
        principal_id: None,
    }));
    let req = PageRequest {
        page_size: 2,
        after: None,
    };
    let first = w.s.job_page(PA, None, &req);
    let ids: Vec<&str> = first.items.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job_a", "job_b"]);
    let token = first.next_page_token.expect("more pages");
    let next = w.s.job_page(
        PA,
        None,
        &PageRequest::new(Some(2), Some(&token)).expect("token"),
    );
    let ids: Vec<&str> = next.items.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job_c", "job_d"]);
    assert_eq!(next.next_page_token, None);
    let pending =
        w.s.job_page(PA, Some(JobState::Pending), &PageRequest::default());
    let ids: Vec<&str> = pending.items.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job_a", "job_c", "job_d"]);
    let pending: Vec<&str> = w.s.pending_jobs().map(|j| j.id.as_str()).collect();
    assert_eq!(
        pending,
        ["job_0", "job_a", "job_c", "job_d"],
        "all projects"
    );
}

#[test]
fn active_jobs_span_nodes_in_id_order() {
    let mut w = World::new();
    for (id, node) in [("job_3", A), ("job_1", US), ("job_2", A)] {
        w.submit(id);
        w.place(id, 1, node);
    }
    let ids: Vec<&str> = w.s.active_jobs().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job_1", "job_2", "job_3"]);
    assert_eq!(w.s.node_assignments("eu/eu1/zz"), (0, Vec::new()));
}

#[test]
fn idle_gpus_are_fenced_and_sorted() {
    let mut w = World::new();
    let op = |epoch| {
        Op::Fleet(FleetOp::SetIdleGpus {
            node: A.into(),
            lease_epoch: epoch,
            idle_gpus: vec!["GPU-b".into(), "GPU-a".into(), "GPU-b".into()],
        })
    };
    w.ok(op(1));
    assert_eq!(w.node(A).idle_gpus, ["GPU-a", "GPU-b"]);
    let record = w.s.audit.last().expect("audited");
    assert_eq!(
        (record.action.as_str(), record.project.as_deref()),
        ("node.idle_gpus", None)
    );
    let stale = w.refused(op(7));
    assert!(matches!(stale, DomainError::FailedPrecondition(_)));
    let unknown = w.refused(Op::Fleet(FleetOp::SetIdleGpus {
        node: "eu/eu1/zz".into(),
        lease_epoch: 1,
        idle_gpus: Vec::new(),
    }));
    assert!(matches!(unknown, DomainError::NotFound { .. }));
    w.ok(register_op(A, &[]));
    assert!(
        w.node(A).idle_gpus.is_empty(),
        "a new registration starts afresh"
    );
}

#[test]
fn registration_records_the_node_inventory() {
    let w = World::new();
    let node = w.node(A);
    assert_eq!(node.gpus.len(), 2);
    assert_eq!(node.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(node.rpc_addr, "127.0.0.1:7000");
    assert_eq!(
        (node.os.as_str(), node.limit_mode.as_str()),
        ("Debian 12", "cgroup-v1")
    );
    assert_eq!(node.assign_version, 1);
    assert_eq!(node.key, node_key("eu", "eu1", "a1"));
}

#[test]
fn assign_version_moves_with_the_assignments() {
    let mut w = World::new();
    w.submit("job_1");
    let v0 = w.version(A);
    w.place("job_1", 1, A);
    assert_eq!(w.version(A), v0 + 1, "placement");
    w.start("job_1", 1, A);
    assert_eq!(w.version(A), v0 + 1, "a start is not an assignment change");
    w.ok(Op::Jobs(JobOp::CancelJob {
        project_id: PA.into(),
        id: "job_1".into(),
    }));
    assert_eq!(w.version(A), v0 + 2, "cancel flag");
    w.report(A, vec![("job_1", 1, exited(0))]);
    assert_eq!(w.version(A), v0 + 3, "attempt ended");
    w.ok(register_op(A, &[]));
    assert_eq!(w.version(A), v0 + 4, "registration");
    assert_eq!(w.version(B), 1, "other nodes are untouched");
}

#[test]
fn deleting_a_project_needs_its_jobs_finished() {
    let mut w = World::new();
    w.ok(Op::Jobs(JobOp::SubmitJob {
        id: "job_b".into(),
        project_id: PB.into(),
        spec: spec(),
        principal_id: None,
    }));
    let e = w.refused(Op::Tenancy(TenancyOp::DeleteProject { id: PB.into() }));
    assert!(matches!(e, DomainError::FailedPrecondition(_)), "{e:?}");
    w.ok(Op::Jobs(JobOp::CancelJob {
        project_id: PB.into(),
        id: "job_b".into(),
    }));
    w.ok(Op::Tenancy(TenancyOp::DeleteProject { id: PB.into() }));
    assert!(w.s.job(PB, "job_b").is_none());
    assert!(w.s.jobs.is_empty() && w.s.jobs.of_project(PB).next().is_none());
}

#[test]
fn snapshots_keep_jobs_and_indexes() {
    let mut w = World::new();
    w.submit("job_1");
    w.submit("job_2");
    w.place("job_2", 1, A);
    let bytes = w.s.to_bytes();
    let restored = RegistryState::from_bytes(&bytes).expect("restores");
    assert_eq!(restored, w.s);
    restored.assert_job_indexes_consistent();
    assert_eq!(restored.to_bytes(), bytes);
}

// ---- gangs ----

fn gang_spec(replicas: u32) -> JobSpec {
    let mut spec = spec();
    spec.replicas = replicas;
    spec
}

fn outcomes(job: &JobRecord, attempt: u32) -> Vec<Option<AttemptOutcome>> {
    job.attempts
        .iter()
        .filter(|a| a.attempt == attempt)
        .map(|a| a.outcome)
        .collect()
}

#[test]
fn a_gang_is_placed_whole_or_not_at_all() {
    let mut w = World::new();
    w.submit_spec("gang", gang_spec(3));
    let before = w.without_audit();
    let mut stale_epoch = w.gang_op("gang", 1, &[A, B, US]);
    if let PlacementOp::Place { replicas, .. } = &mut stale_epoch {
        replicas[2].lease_epoch += 1;
    }
    let skipped = w.placements(vec![
        w.gang_op("gang", 1, &[A, B]),              // one replica short
        w.gang_op("gang", 1, &[A, B, US, A]),       // one too many
        w.gang_op("gang", 1, &[A, B, "eu/eu1/zz"]), // a node that does not exist
        stale_epoch,                                // a node registered again since
    ]);
    assert_eq!(skipped, (0, 0, 0, 4));
    let mut after = w.without_audit();
    after.fleet = before.fleet.clone();
    assert_eq!(after.jobs, before.jobs, "a skipped gang leaves no trace");

    let versions = [w.version(A), w.version(B), w.version(US)];
    w.placements(vec![w.gang_op("gang", 1, &[A, A, US])]);
    let job = w.job("gang");
    assert_eq!(job.state, JobState::Scheduled);
    let placed: Vec<(u32, u32, &str)> = job
        .attempts
        .iter()
        .map(|a| (a.attempt, a.replica, a.node.as_str()))
        .collect();
    assert_eq!(placed, [(1, 0, A), (1, 1, A), (1, 2, US)]);
    assert_eq!(job.current_replicas().len(), 3);
    assert_eq!(job.attempt_count(), 1);
    assert_eq!(w.version(A), versions[0] + 1, "one bump per node");
    assert_eq!(w.version(B), versions[1]);
    assert_eq!(w.version(US), versions[2] + 1);
    // Two replicas of the gang share node A; each is its own assignment there.
    let (_, on_a) = w.s.node_assignments(A);
    let on_a: Vec<(&str, u32)> = on_a
        .iter()
        .map(|(j, a)| (j.id.as_str(), a.replica))
        .collect();
    assert_eq!(on_a, [("gang", 0), ("gang", 1)]);
    let (_, on_us) = w.s.node_assignments(US);
    assert_eq!(on_us.len(), 1);
}

#[test]
fn a_gang_succeeds_when_every_replica_has_succeeded() {
    let mut w = World::new();
    w.submit_spec("gang", gang_spec(2));
    w.placements(vec![w.gang_op("gang", 1, &[A, B])]);
    let acks = w.report(A, vec![("gang#0", 1, JobEventKind::Started)]);
    assert!(acks[0].accepted, "{acks:?}");
    assert_eq!(w.job("gang").state, JobState::Running);
    w.report(B, vec![("gang#1", 1, JobEventKind::Started)]);

    // Replica 0 finishes first: the job keeps running, node A has nothing left to run.
    let version_a = w.version(A);
    w.report(A, vec![("gang#0", 1, exited(0))]);
    let job = w.job("gang");
    assert_eq!(job.state, JobState::Running);
    assert_eq!(outcomes(job, 1), [Some(AttemptOutcome::Succeeded), None]);
    assert_eq!(w.version(A), version_a + 1);
    assert!(w.s.node_assignments(A).1.is_empty());
    assert_eq!(w.s.node_assignments(B).1.len(), 1);
    // A repeated report of the finished replica changes nothing.
    let before = w.without_audit();
    let again = w.report(A, vec![("gang#0", 1, exited(0))]);
    assert!(again[0].accepted);
    let mut after = w.without_audit().jobs.records().clone();
    after.get_mut("gang").expect("job").updated_at = before.jobs.records()["gang"].updated_at;
    assert_eq!(&after, before.jobs.records());
    // A replica the gang does not have is stale.
    let unknown = w.report(B, vec![("gang#2", 1, exited(0))]);
    assert!(
        !unknown[0].accepted && unknown[0].reason.contains("no replica 2"),
        "{unknown:?}"
    );
    // A replica reported from the wrong node is stale.
    let wrong = w.report(A, vec![("gang#1", 1, exited(0))]);
    assert!(
        wrong[0]
            .reason
            .contains("replica 1 of attempt 1 of job gang runs on another node"),
        "{wrong:?}"
    );

    w.report(B, vec![("gang#1", 1, exited(0))]);
    let job = w.job("gang");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        outcomes(job, 1),
        [
            Some(AttemptOutcome::Succeeded),
            Some(AttemptOutcome::Succeeded)
        ]
    );
    assert!(job.finished_at.is_some());
    assert!(w.s.node_assignments(B).1.is_empty());
}

#[test]
fn one_failed_replica_stops_the_whole_gang() {
    let mut w = World::new();
    let mut spec = gang_spec(2);
    spec.retry = RetryPolicy {
        max_attempts: 2,
        on_failure: true,
    };
    w.submit_spec("gang", spec);
    w.placements(vec![w.gang_op("gang", 1, &[A, B])]);
    w.report(A, vec![("gang#0", 1, JobEventKind::Started)]);
    w.report(B, vec![("gang#1", 1, JobEventKind::Started)]);
    let versions = (w.version(A), w.version(B));
    w.report(B, vec![("gang#1", 1, exited(3))]);
    let job = w.job("gang");
    assert_eq!(
        job.state,
        JobState::Pending,
        "retried: on_failure with budget left"
    );
    assert_eq!(
        outcomes(job, 1),
        [Some(AttemptOutcome::Stopped), Some(AttemptOutcome::Failed)]
    );
    assert_eq!(
        job.attempts[0].detail,
        "stopped with its gang (replica 1 failed: exited with code 3)"
    );
    assert_eq!(job.attempts[1].exit_code, Some(3));
    assert_eq!(job.prefer_region.as_deref(), Some("eu"));
    assert_eq!(
        (w.version(A), w.version(B)),
        (versions.0 + 1, versions.1 + 1)
    );
    assert!(w.s.node_assignments(A).1.is_empty(), "replica 0 must stop");
    // The stopped replica's own exit arrives later: the attempt is over.
    let late = w.report(A, vec![("gang#0", 1, exited(143))]);
    assert!(!late[0].accepted, "{late:?}");

    // The second attempt fails too: no budget left.
    w.placements(vec![w.gang_op("gang", 2, &[A, B])]);
    assert_eq!(w.job("gang").attempt_count(), 2);
    w.report(
        A,
        vec![(
            "gang#0",
            2,
            JobEventKind::LaunchFailed {
                message: "no such file".into(),
            },
        )],
    );
    let job = w.job("gang");
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        outcomes(job, 2),
        [Some(AttemptOutcome::Failed), Some(AttemptOutcome::Stopped)]
    );
}

#[test]
fn a_lost_node_costs_the_gang_one_attempt_and_a_preemption_none() {
    let mut w = World::new();
    w.submit_spec("gang", gang_spec(3));
    w.placements(vec![w.gang_op("gang", 1, &[A, A, B])]);
    w.report(
        A,
        vec![
            ("gang#0", 1, JobEventKind::Started),
            ("gang#1", 1, JobEventKind::Started),
        ],
    );
    w.health(A, NodeHealthState::Lost);
    let job = w.job("gang");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(
        outcomes(job, 1),
        [
            Some(AttemptOutcome::Lost),
            Some(AttemptOutcome::Lost),
            Some(AttemptOutcome::Stopped)
        ]
    );
    assert!(w.s.node_assignments(B).1.is_empty());
    assert_eq!(job.counted_attempts(), 1, "a gang attempt counts once");

    w.placements(vec![w.gang_op("gang", 2, &[B, B, US])]);
    let mut urgent = spec();
    urgent.priority = 1;
    urgent.preemption = true;
    w.submit_spec("urgent", urgent);
    w.placements(vec![PlacementOp::Preempt {
        job_id: "gang".into(),
        attempt: 2,
        by: "urgent".into(),
    }]);
    let job = w.job("gang");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(outcomes(job, 2), [Some(AttemptOutcome::Preempted); 3]);
    assert_eq!(job.counted_attempts(), 1, "preempted attempts are free");
    assert_eq!(job.next_attempt(), 3);
}

#[test]
fn cancelling_a_gang_stops_every_replica() {
    let mut w = World::new();
    w.submit_spec("gang", gang_spec(2));
    w.placements(vec![w.gang_op("gang", 1, &[A, US])]);
    let versions = (w.version(A), w.version(US));
    w.ok(Op::Jobs(JobOp::CancelJob {
        project_id: PA.into(),
        id: "gang".into(),
    }));
    assert_eq!(
        (w.version(A), w.version(US)),
        (versions.0 + 1, versions.1 + 1)
    );
    w.report(US, vec![("gang#1", 1, exited(143))]);
    let job = w.job("gang");
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(
        outcomes(job, 1),
        [
            Some(AttemptOutcome::Stopped),
            Some(AttemptOutcome::Cancelled)
        ]
    );
    assert!(w.s.node_assignments(A).1.is_empty());
}

#[test]
fn a_restarted_agent_that_lost_one_replica_loses_the_gang_attempt() {
    let mut w = World::new();
    w.submit_spec("gang", gang_spec(2));
    w.placements(vec![w.gang_op("gang", 1, &[A, A])]);
    w.report(
        A,
        vec![
            ("gang#0", 1, JobEventKind::Started),
            ("gang#1", 1, JobEventKind::Started),
        ],
    );
    // The agent comes back holding replica 0 only.
    let mut op = register_op(A, &[("gang", 1)]);
    if let Op::Fleet(FleetOp::RegisterNode { held, .. }) = &mut op {
        held[0].replica = 0;
    }
    w.ok(op);
    let job = w.job("gang");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(
        outcomes(job, 1),
        [Some(AttemptOutcome::Stopped), Some(AttemptOutcome::Lost)]
    );
    assert_eq!(
        job.attempts[1].detail,
        "not running after the agent restarted"
    );

    // Holding both, the attempt is kept and moves to the new epoch.
    w.placements(vec![w.gang_op("gang", 2, &[A, A])]);
    w.report(
        A,
        vec![
            ("gang#0", 2, JobEventKind::Started),
            ("gang#1", 2, JobEventKind::Started),
        ],
    );
    let mut op = register_op(A, &[("gang", 2), ("gang", 2)]);
    if let Op::Fleet(FleetOp::RegisterNode { held, .. }) = &mut op {
        held[1].replica = 1;
    }
    w.ok(op);
    let job = w.job("gang");
    assert_eq!(job.state, JobState::Running);
    let epoch = w.epoch(A);
    assert!(job
        .current_replicas()
        .iter()
        .all(|a| a.lease_epoch == epoch));
}

const HOUR: u64 = 3_600_000;
const MINUTE: u64 = 60_000;

impl World {
    /// The next command is stamped `at - 500`, so a report it carries happens exactly at `at`.
    fn report_at(&mut self, at: u64, key: &str, event: (&str, u32, JobEventKind)) {
        self.at = at - 500;
        let acks = self.report(key, vec![event]);
        assert!(acks[0].accepted, "{acks:?}");
    }

    fn purge(&mut self, finished_before: u64, max: u32) -> u32 {
        match self.ok(Op::Jobs(JobOp::PurgeJobs {
            finished_before,
            max,
        })) {
            Outcome::Jobs(JobOutcome::JobsPurged { purged }) => purged,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
}

/// The first Unix hour after `T0`.
fn first_hour() -> u64 {
    (T0 / HOUR + 1) * HOUR
}

/// A long single-replica job (`long`, on A from h0+20m to h0+3h10m) and a gang of two (`gang`, on B
/// and US from h0+50m to h0+1h30m/h0+1h31m), both succeeded. Returns h0.
fn finished_usage_world(w: &mut World) -> u64 {
    let h0 = first_hour();
    w.submit("long");
    w.submit_spec("gang", gang_spec(2));
    w.place("long", 1, A);
    w.placements(vec![w.gang_op("gang", 1, &[B, US])]);
    w.report_at(h0 + 20 * MINUTE, A, ("long", 1, JobEventKind::Started));
    w.report_at(h0 + 50 * MINUTE, B, ("gang#0", 1, JobEventKind::Started));
    w.report_at(h0 + 51 * MINUTE, US, ("gang#1", 1, JobEventKind::Started));
    w.report_at(h0 + HOUR + 30 * MINUTE, B, ("gang#0", 1, exited(0)));
    w.report_at(h0 + HOUR + 31 * MINUTE, US, ("gang#1", 1, exited(0)));
    w.report_at(h0 + 3 * HOUR + 10 * MINUTE, A, ("long", 1, exited(0)));
    assert_eq!(w.job("long").state, JobState::Succeeded);
    assert_eq!(w.job("gang").state, JobState::Succeeded);
    h0
}

fn figures(r: &super::super::UsageReport) -> [f64; 4] {
    [
        r.cpu_core_seconds,
        r.memory_gib_seconds,
        r.gpu_seconds,
        r.cpu_time_seconds,
    ]
}

#[test]
fn purge_forgets_only_old_finished_jobs_oldest_first() {
    let mut w = World::new();
    for id in ["j1", "j2", "j3", "j4", "j5"] {
        w.submit(id);
    }
    w.ok(Op::Jobs(JobOp::CancelJob {
        project_id: PA.into(),
        id: "j1".into(),
    }));
    let t1 = w.at;
    w.place("j2", 1, A);
    w.start("j2", 1, A);
    w.report(A, vec![("j2", 1, exited(0))]);
    let t2 = w.at;
    w.ok(Op::Jobs(JobOp::CancelJob {
        project_id: PA.into(),
        id: "j3".into(),
    }));
    let t3 = w.at;
    w.place("j5", 1, B);
    w.start("j5", 1, B);
    assert_eq!(w.s.oldest_finished_at(), Some(t1));

    // At most `max`, oldest first.
    assert_eq!(w.purge(t3 + 1, 1), 1);
    assert!(w.s.job(PA, "j1").is_none());
    assert_eq!(w.s.oldest_finished_at(), Some(t2));
    // Only jobs finished strictly before the cutoff.
    assert_eq!(w.purge(t3, 10), 1);
    assert!(w.s.job(PA, "j2").is_none() && w.s.job(PA, "j3").is_some());
    // However late the cutoff, pending and running jobs stay.
    assert_eq!(w.purge(u64::MAX, 10), 1);
    assert!(w.s.job(PA, "j3").is_none());
    assert_eq!(w.job("j4").state, JobState::Pending);
    assert_eq!(w.job("j5").state, JobState::Running);
    assert_eq!(w.purge(u64::MAX, 10), 0, "nothing left to purge");
    assert_eq!(w.s.oldest_finished_at(), None);
    let last = w.s.audit.last().expect("audited");
    assert_eq!(
        (last.action.as_str(), last.outcome),
        ("job.purge", AuditOutcome::Success)
    );
    // A later end of a running job enters the index as usual.
    w.report(B, vec![("j5", 1, exited(1))]);
    assert_eq!(w.s.oldest_finished_at(), Some(w.at));
}

#[test]
fn usage_over_whole_hours_is_the_same_after_a_purge() {
    let mut w = World::new();
    let h0 = finished_usage_world(&mut w);
    let ranges = [
        (h0, h0 + HOUR),
        (h0 + HOUR, h0 + 2 * HOUR),
        (h0 + 2 * HOUR, h0 + 4 * HOUR),
        (h0, h0 + 4 * HOUR),
        (h0 - 5 * HOUR, h0 + 10 * HOUR),
    ];
    let before: Vec<_> = ranges.iter().map(|&(a, b)| w.s.usage(PA, a, b)).collect();
    assert!(before.iter().all(|r| !r.jobs.is_empty()));
    assert!(before
        .iter()
        .all(|r| r.archived == super::super::UsageFigures::default()));

    assert_eq!(w.purge(u64::MAX, 100), 2);
    assert!(w.s.job(PA, "long").is_none() && w.s.job(PA, "gang").is_none());
    for (&(a, b), old) in ranges.iter().zip(&before) {
        let new = w.s.usage(PA, a, b);
        assert_eq!(figures(&new), figures(old), "range {a}..{b}");
        assert!(new.jobs.is_empty(), "purged jobs have no per-job line");
        assert_eq!(
            [
                new.archived.cpu_core_seconds,
                new.archived.memory_gib_seconds,
                new.archived.gpu_seconds,
                new.archived.cpu_time_seconds,
            ],
            figures(&new),
            "everything comes from the archive"
        );
    }
    // The whole life: long 2h50m and the gang 2 × 40m, 2 cores / 4 GiB / 1 GPU each; CPU time 3 × 1.5 s.
    let all = w.s.usage(PA, h0 - 5 * HOUR, h0 + 10 * HOUR);
    let gpu_seconds = (170.0 + 80.0) * 60.0;
    assert_eq!(
        figures(&all),
        [2.0 * gpu_seconds, 4.0 * gpu_seconds, gpu_seconds, 4.5]
    );
    // The archive survives a snapshot.
    let restored = RegistryState::from_bytes(&w.s.to_bytes()).expect("restores");
    assert_eq!(restored, w.s);
}

#[test]
fn a_range_that_cuts_an_hour_gets_its_share() {
    let mut w = World::new();
    let h0 = finished_usage_world(&mut w);
    w.purge(u64::MAX, 100);
    // Hour h0 holds long 40 min and the gang 10 + 9 min: 59 GPU-minutes. Half the hour, half of that.
    let cut = w.s.usage(PA, h0 + 30 * MINUTE, h0 + HOUR);
    assert_eq!(cut.gpu_seconds, 59.0 * 60.0 / 2.0);
    assert_eq!(cut.cpu_core_seconds, 2.0 * 59.0 * 60.0 / 2.0);
    assert_eq!(
        cut.cpu_time_seconds, 0.0,
        "the hour starts before the range"
    );
    // Hour h0+1h holds the gang's two ends: their CPU time counts when the hour starts in the range.
    let ends = w.s.usage(PA, h0 + HOUR, h0 + HOUR + 15 * MINUTE);
    assert_eq!(ends.cpu_time_seconds, 3.0);
    // Hour h0+1h: long 60 min + the gang 30 + 31 min = 121 GPU-minutes; a quarter of it.
    assert_eq!(ends.gpu_seconds, 121.0 * 60.0 / 4.0);
    // An empty or inverted range reports nothing.
    assert_eq!(figures(&w.s.usage(PA, h0 + HOUR, h0)), [0.0; 4]);
}

#[test]
fn deleting_a_project_drops_its_usage_archive() {
    let mut w = World::new();
    w.ok(Op::Jobs(JobOp::SubmitJob {
        id: "job_b".into(),
        project_id: PB.into(),
        spec: spec(),
        principal_id: None,
    }));
    w.place("job_b", 1, A);
    w.start("job_b", 1, A);
    w.report(A, vec![("job_b", 1, exited(0))]);
    assert_eq!(w.purge(u64::MAX, 10), 1);
    assert!(w.s.usage.hours().contains_key(PB));
    assert!(w.s.usage(PB, 0, u64::MAX).archived.gpu_seconds > 0.0);
    w.ok(Op::Tenancy(TenancyOp::DeleteProject { id: PB.into() }));
    assert!(w.s.usage.hours().is_empty());
    assert_eq!(figures(&w.s.usage(PB, 0, u64::MAX)), [0.0; 4]);
}

#[test]
fn a_snapshot_from_before_the_purge_fields_loads() {
    let mut w = World::new();
    w.submit("job_1");
    w.ok(Op::Jobs(JobOp::CancelJob {
        project_id: PA.into(),
        id: "job_1".into(),
    }));
    w.submit("job_2");
    let mut old: serde_json::Value =
        serde_json::from_slice(&w.s.to_bytes()).expect("state is json");
    let fields = old.as_object_mut().expect("state is an object");
    assert!(fields.remove("finished_jobs").is_some());
    assert!(fields.remove("usage_archive").is_some());
    let bytes = serde_json::to_vec(&old).expect("serializes");
    let restored = RegistryState::from_bytes(&bytes).expect("an older snapshot loads");
    restored.assert_job_indexes_consistent();
    assert_eq!(restored, w.s, "the finished index is rebuilt");
}

#[test]
fn agent_times_are_kept_within_the_attempts_life() {
    let mut w = World::new();
    w.submit("job_clock");
    w.place("job_clock", 1, A);
    let scheduled_at = w.job("job_clock").attempts[0].scheduled_at;
    // A node whose clock is decades behind, then one far ahead.
    let report = |w: &mut World, at_ms: u64, kind: JobEventKind| {
        let op = Op::Jobs(JobOp::ReportJobEvents {
            node: A.into(),
            lease_epoch: w.epoch(A),
            events: vec![JobEventOp {
                job_id: "job_clock".into(),
                attempt: 1,
                replica: 0,
                at_ms,
                kind,
            }],
        });
        w.ok(op);
    };
    report(&mut w, 7, JobEventKind::Started);
    assert_eq!(
        w.job("job_clock").attempts[0].started_at,
        Some(scheduled_at)
    );
    report(&mut w, u64::MAX, exited(0));
    let job = w.job("job_clock");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        job.attempts[0].ended_at,
        Some(w.at),
        "an end cannot be later than the command that reported it"
    );
}

#[test]
fn a_placement_planned_before_a_drain_is_skipped() {
    let mut w = World::new();
    w.submit("job_d");
    let planned = w.place_op("job_d", 1, A);
    w.ok(Op::Fleet(FleetOp::SetNodeDraining {
        key: A.into(),
        draining: true,
    }));
    assert_eq!(w.placements(vec![planned]), (0, 0, 0, 1));
    assert_eq!(w.job("job_d").state, JobState::Pending);
    w.ok(Op::Fleet(FleetOp::SetNodeDraining {
        key: A.into(),
        draining: false,
    }));
    w.place("job_d", 1, A);
}

#[test]
fn placements_from_before_gangs_still_replay() {
    // A `place` item as older builds wrote it into the Raft log: one node, inline.
    let old = r#"{"place_jobs":{"placements":[
        {"place":{"job_id":"job_old","attempt":1,"node":"eu/eu1/a1","lease_epoch":1,
                  "gpu_uuids":["GPU-eu/eu1/a1-0"],
                  "resources":{"cpu_millis":2000,"memory_bytes":4294967296,"gpus":1}}},
        {"wait":{"job_id":"job_other","reason":"no room"}}]}}"#;
    let op: Op = serde_json::from_str(old).expect("an old placement deserializes");
    let mut w = World::new();
    w.submit("job_old");
    assert_eq!(
        op,
        Op::Jobs(JobOp::PlaceJobs {
            placements: vec![
                w.place_op("job_old", 1, A),
                PlacementOp::Wait {
                    job_id: "job_other".into(),
                    reason: "no room".into(),
                },
            ],
        })
    );
    w.ok(op);
    let job = w.job("job_old");
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(
        (job.attempts[0].node.as_str(), job.attempts[0].replica),
        (A, 0)
    );
    // What this build writes reads back as itself.
    let new = Op::Jobs(JobOp::PlaceJobs {
        placements: vec![w.gang_op("job_new", 1, &[A, B])],
    });
    let text = serde_json::to_string(&new).expect("serializes");
    assert_eq!(serde_json::from_str::<Op>(&text).expect("reads back"), new);
}

#[test]
fn gang_sizes_are_validated() {
    let mut w = World::new();
    for bad in [0, MAX_REPLICAS + 1] {
        let e = w.refused(Op::Jobs(JobOp::SubmitJob {
            id: "gang".into(),
            project_id: PA.into(),
            spec: gang_spec(bad),
            principal_id: None,
        }));
        assert!(e.to_string().contains("replicas"), "{e}");
    }
    let spec: JobSpec = serde_json::from_str(r#"{"command":"true"}"#).expect("minimal spec");
    assert_eq!(spec.replicas, 1, "older specs read as one replica");
}

fn set_policy(w: &mut World, project: &str, update: crate::state::PolicyUpdate) {
    w.ok(Op::Tenancy(TenancyOp::SetProjectPolicy {
        project_id: project.into(),
        update,
    }));
}

fn submit_in(w: &mut World, project: &str, id: &str, spec: JobSpec) -> CommandOutcome {
    w.apply(Op::Jobs(JobOp::SubmitJob {
        principal_id: None,
        id: id.into(),
        project_id: project.into(),
        spec,
    }))
}

#[test]
fn the_pending_quota_refuses_one_more_and_frees_up_as_jobs_start() {
    let mut w = World::new();
    set_policy(
        &mut w,
        PA,
        crate::state::PolicyUpdate {
            max_pending_jobs: Some(2),
            ..Default::default()
        },
    );
    w.submit("job_1");
    w.submit("job_2");
    let e = w.refused(Op::Jobs(JobOp::SubmitJob {
        principal_id: None,
        id: "job_3".into(),
        project_id: PA.into(),
        spec: spec(),
    }));
    let DomainError::QuotaExceeded(why) = &e else {
        panic!("not a quota refusal: {e:?}");
    };
    assert!(
        why.contains("2 pending jobs") && why.contains("max_pending_jobs"),
        "{why}"
    );
    // Another project is not held back by this one's queue.
    assert!(submit_in(&mut w, PB, "job_b", spec()).is_ok());
    // Two submissions in one batch: the second sees the first (no race past the quota).
    w.place("job_1", 1, A);
    let batch = Op::Cluster(ClusterOp::Batch {
        commands: ["job_4", "job_5"]
            .iter()
            .map(|id| {
                Command::new(
                    w.at + 1,
                    Actor::system(),
                    Op::Jobs(JobOp::SubmitJob {
                        principal_id: None,
                        id: (*id).into(),
                        project_id: PA.into(),
                        spec: spec(),
                    }),
                )
            })
            .collect(),
    });
    let Ok(Outcome::Batch { outcomes }) = w.apply(batch) else {
        panic!("a batch applies");
    };
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(matches!(outcomes[1], Err(DomainError::QuotaExceeded(_))));
    // A cancelled pending job frees its place.
    w.ok(Op::Jobs(JobOp::CancelJob {
        project_id: PA.into(),
        id: "job_2".into(),
    }));
    w.submit("job_6");
    assert_eq!(w.s.project_load(PA).pending_jobs, 2);
    assert_eq!(w.s.project_load(PA).unfinished_jobs, 3);
}

#[test]
fn the_spec_bytes_quota_counts_unfinished_jobs_only() {
    let mut w = World::new();
    let one = crate::state::spec_bytes(&spec());
    set_policy(
        &mut w,
        PA,
        crate::state::PolicyUpdate {
            max_spec_bytes: Some(2 * one),
            ..Default::default()
        },
    );
    w.submit("job_1");
    w.submit("job_2");
    let e = w.refused(Op::Jobs(JobOp::SubmitJob {
        principal_id: None,
        id: "job_3".into(),
        project_id: PA.into(),
        spec: spec(),
    }));
    assert!(
        matches!(&e, DomainError::QuotaExceeded(m) if m.contains("max_spec_bytes")),
        "{e:?}"
    );
    let mut big = spec();
    big.args = vec!["x".repeat(4096)];
    assert!(matches!(
        submit_in(&mut w, PB, "job_b", big.clone()),
        Ok(Outcome::Jobs(JobOutcome::Job { .. }))
    ));
    // Once a job finishes its bytes no longer count.
    w.place("job_1", 1, A);
    w.start("job_1", 1, A);
    w.report(A, vec![("job_1", 1, exited(0))]);
    assert_eq!(w.job("job_1").state, JobState::Succeeded);
    w.submit("job_3");
    assert_eq!(w.s.project_load(PA).spec_bytes, 2 * one);
}

#[test]
fn a_job_larger_than_the_running_quota_is_refused_at_submission() {
    let mut w = World::new();
    set_policy(
        &mut w,
        PA,
        crate::state::PolicyUpdate {
            max_running_gpus: Some(1),
            ..Default::default()
        },
    );
    let mut gang = spec();
    gang.replicas = 2;
    let e = w.refused(Op::Jobs(JobOp::SubmitJob {
        principal_id: None,
        id: "gang".into(),
        project_id: PA.into(),
        spec: gang,
    }));
    assert!(
        matches!(&e, DomainError::QuotaExceeded(m) if m.contains("could never start") && m.contains("max_running_gpus")),
        "{e:?}"
    );
}

#[test]
fn a_placement_past_the_running_quota_is_skipped_in_apply() {
    let mut w = World::new();
    set_policy(
        &mut w,
        PA,
        crate::state::PolicyUpdate {
            max_running_gpus: Some(1),
            ..Default::default()
        },
    );
    w.submit("job_1");
    w.submit("job_2");
    submit_in(&mut w, PB, "job_b", spec()).expect("project B submits");
    // A pass that (wrongly) places both of A's jobs: the second is skipped and stays pending.
    let counts = w.placements(vec![
        w.place_op("job_1", 1, A),
        w.place_op("job_2", 1, B),
        w.place_op("job_b", 1, US),
    ]);
    assert_eq!(counts, (2, 0, 0, 1));
    assert_eq!(w.job("job_2").state, JobState::Pending);
    assert_eq!(
        w.s.job(PB, "job_b").expect("job_b").state,
        JobState::Scheduled
    );
    assert_eq!(w.s.project_load(PA).running.gpus, 1);
    // When job_1 ends, job_2 fits.
    w.start("job_1", 1, A);
    w.report(A, vec![("job_1", 1, exited(0))]);
    assert_eq!(w.s.project_load(PA).running, Resources::default());
    w.place("job_2", 1, B);
}

#[test]
fn an_eviction_frees_quota_for_the_placement_in_the_same_pass() {
    let mut w = World::new();
    set_policy(
        &mut w,
        PA,
        crate::state::PolicyUpdate {
            max_running_gpus: Some(1),
            ..Default::default()
        },
    );
    w.submit("job_low");
    w.place("job_low", 1, A);
    let mut high = spec();
    high.priority = 5;
    high.preemption = true;
    w.submit_spec("job_high", high);
    // Placing it first fails the quota; evicting first makes room, within one command.
    assert_eq!(
        w.placements(vec![w.place_op("job_high", 1, A)]),
        (0, 0, 0, 1)
    );
    let counts = w.placements(vec![
        PlacementOp::Preempt {
            job_id: "job_low".into(),
            attempt: 1,
            by: "job_high".into(),
        },
        w.place_op("job_high", 1, A),
        // The evicted job cannot come straight back: the quota is taken again.
        w.place_op("job_low", 2, B),
    ]);
    assert_eq!(counts, (1, 0, 1, 1));
    assert_eq!(w.job("job_high").state, JobState::Scheduled);
    assert_eq!(w.job("job_low").state, JobState::Pending);
    assert_eq!(w.s.project_load(PA).running.gpus, 1);
}

#[test]
fn preemption_across_projects_needs_the_ceiling_and_hides_the_preemptor() {
    let mut w = World::new();
    // Project B's job (priority 3) runs on A.
    let mut theirs = spec();
    theirs.priority = 3;
    submit_in(&mut w, PB, "victim", theirs).expect("submitted");
    w.place("victim", 1, A);
    w.start("victim", 1, A);
    // Project A's urgent job asks for preemption.
    let mut urgent = spec();
    urgent.priority = 1000;
    urgent.preemption = true;
    w.submit_spec("urgent", urgent);
    let preempt = PlacementOp::Preempt {
        job_id: "victim".into(),
        attempt: 1,
        by: "urgent".into(),
    };
    // Ceiling 0 (the default): skipped, whatever the priority.
    assert_eq!(w.placements(vec![preempt.clone()]), (0, 0, 0, 1));
    assert_eq!(
        w.s.job(PB, "victim").expect("victim").state,
        JobState::Running
    );
    // A ceiling at the victim's priority is not enough: it must be strictly below.
    set_policy(
        &mut w,
        PA,
        crate::state::PolicyUpdate {
            preemption_ceiling: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(w.placements(vec![preempt.clone()]), (0, 0, 0, 1));
    // A job that did not ask for preemption cannot be named as the preemptor either.
    w.submit("polite");
    set_policy(
        &mut w,
        PA,
        crate::state::PolicyUpdate {
            preemption_ceiling: Some(5),
            ..Default::default()
        },
    );
    let by_polite = PlacementOp::Preempt {
        job_id: "victim".into(),
        attempt: 1,
        by: "polite".into(),
    };
    assert_eq!(w.placements(vec![by_polite]), (0, 0, 0, 1));
    // Below the ceiling: evicted, and its record does not name the other project's job.
    assert_eq!(w.placements(vec![preempt]), (0, 0, 1, 0));
    let victim = w.s.job(PB, "victim").expect("victim");
    assert_eq!(victim.state, JobState::Pending);
    assert_eq!(victim.attempts[0].outcome, Some(AttemptOutcome::Preempted));
    assert_eq!(
        victim.attempts[0].detail,
        "preempted by a higher-priority job"
    );
    assert!(!victim.attempts[0].detail.contains("urgent"));
}

#[test]
fn a_policy_change_is_validated_and_audited() {
    let mut w = World::new();
    let e = w.refused(Op::Tenancy(TenancyOp::SetProjectPolicy {
        project_id: PA.into(),
        update: crate::state::PolicyUpdate {
            preemption_ceiling: Some(5000),
            ..Default::default()
        },
    }));
    assert!(matches!(&e, DomainError::Invalid { field, .. } if field == "preemption_ceiling"));
    w.refused(Op::Tenancy(TenancyOp::SetProjectPolicy {
        project_id: "prj_missing".into(),
        update: crate::state::PolicyUpdate {
            max_pending_jobs: Some(1),
            ..Default::default()
        },
    }));
    set_policy(
        &mut w,
        PA,
        crate::state::PolicyUpdate {
            network: Some(crate::state::NetworkPolicy::None),
            ..Default::default()
        },
    );
    assert_eq!(
        w.s.project_policy(PA).network,
        crate::state::NetworkPolicy::None
    );
    assert_eq!(w.s.project_policy(PB), crate::state::ProjectPolicy::BUILTIN);
    let last = w.s.audit.last().expect("audited");
    assert_eq!(last.action, "project.policy.set");
    assert_eq!(last.project.as_deref(), Some(PA));
    assert_eq!(last.detail, "network=none");
}

#[test]
fn the_unfinished_index_is_rebuilt_from_a_snapshot() {
    let mut w = World::new();
    w.submit("job_1");
    w.submit("job_2");
    w.place("job_1", 1, A);
    let mut bytes: serde_json::Value =
        serde_json::from_slice(&w.s.to_bytes()).expect("state is JSON");
    // A snapshot written before the index existed.
    bytes
        .as_object_mut()
        .expect("an object")
        .remove("unfinished_job_ids_by_project");
    let restored =
        RegistryState::from_bytes(&serde_json::to_vec(&bytes).expect("JSON")).expect("loads");
    restored.assert_job_indexes_consistent();
    assert_eq!(restored.project_load(PA).unfinished_jobs, 2);
    assert_eq!(restored, w.s);
}
