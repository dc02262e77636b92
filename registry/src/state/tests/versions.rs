//! Apply versions: what each version changes in `apply`, and who may switch one on.

use super::*;

/// Applies `op` as `actor` at index `applied + 1`, stamped `at`.
fn run_at(s: &mut RegistryState, at: u64, actor: Actor, op: Op) -> CommandOutcome {
    let index = s.applied_index + 1;
    s.apply(index, &Command::new(at, actor, op))
}

fn project_op(id: &str) -> Op {
    Op::Tenancy(TenancyOp::CreateProject {
        id: id.into(),
        name: id.replace('_', "-"),
        description: String::new(),
        data_key: wk("mk1", id),
        policy: None,
    })
}

#[test]
fn command_time_goes_back_under_version_0_and_never_under_version_1() {
    for version in [0, 1] {
        let mut s = bootstrapped();
        if version == 1 {
            let out = run_at(
                &mut s,
                T0 + 1_000,
                Actor::system(),
                Op::Cluster(ClusterOp::SetApplyVersion { version: 1 }),
            );
            assert_eq!(out, Ok(Outcome::Done));
        }
        run_at(&mut s, T0 + 10_000, admin(), project_op("prj_first")).expect("first");
        run_at(&mut s, T0 + 5_000, admin(), project_op("prj_behind")).expect("behind");
        let first = s.project("prj_first").expect("project").created_at;
        let behind = s.project("prj_behind").expect("project").created_at;
        let last_audit = s.audit.last().expect("audit").at_ms;
        if version == 0 {
            assert_eq!(behind, T0 + 5_000, "version 0 applies the stamped time");
        } else {
            assert_eq!(behind, first, "version 1 never goes back");
            assert_eq!(
                last_audit, first,
                "the audit record carries the applied time"
            );
        }
    }
}

#[test]
fn under_version_1_a_key_expired_at_the_last_command_stays_expired_for_a_late_stamp() {
    let mut s = bootstrapped();
    run_at(
        &mut s,
        T0 + 1,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 1 }),
    )
    .expect("version 1");
    run_at(&mut s, T0 + 60_000, admin(), project_op("prj_now")).expect("now");
    let expires = T0 + 30_000;
    s.tenancy
        .keys_mut()
        .get_mut("adminkey")
        .expect("admin key")
        .expires_at = Some(expires);
    // Stamped before the key's expiry by a leader whose clock is behind: applied at the later time.
    let late = Actor {
        key_id: Some("adminkey".into()),
        ..admin()
    };
    let out = run_at(&mut s, T0 + 20_000, late, project_op("prj_late"));
    assert!(
        matches!(&out, Err(DomainError::Unauthenticated(m)) if m.contains("expired")),
        "{out:?}"
    );
}

#[test]
fn only_the_system_moves_the_apply_version_and_only_forward_within_what_the_build_knows() {
    let mut s = bootstrapped();
    let out = run_at(
        &mut s,
        T0 + 1,
        admin(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 1 }),
    );
    assert!(
        matches!(out, Err(DomainError::PermissionDenied(_))),
        "{out:?}"
    );
    assert_eq!(s.apply_version, 0);
    let beyond = APPLY_VERSION + 1;
    let out = run_at(
        &mut s,
        T0 + 2,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: beyond }),
    );
    assert!(
        matches!(&out, Err(DomainError::Invalid { field, .. }) if field == "version"),
        "{out:?}"
    );
    run_at(
        &mut s,
        T0 + 3,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 1 }),
    )
    .expect("forward");
    let out = run_at(
        &mut s,
        T0 + 4,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 0 }),
    );
    assert!(
        matches!(&out, Err(DomainError::Invalid { field, .. }) if field == "version"),
        "{out:?}"
    );
    assert_eq!(s.apply_version, 1);
    let last = s.audit.last().expect("audit");
    assert_eq!(last.action, "cluster.apply_version");
}

#[test]
fn a_command_says_which_apply_version_it_needs_also_inside_a_batch() {
    let plain = Command::new(T0, admin(), project_op("prj_x"));
    assert_eq!(plain.apply_version_needed(), None);
    let batch = Command::new(
        T0,
        Actor::system(),
        Op::Cluster(ClusterOp::Batch {
            commands: vec![
                plain.clone(),
                Command::new(
                    T0,
                    Actor::system(),
                    Op::Cluster(ClusterOp::SetApplyVersion { version: 7 }),
                ),
            ],
        }),
    );
    assert_eq!(batch.apply_version_needed(), Some(7));
}

#[test]
fn from_version_2_machine_traffic_is_counted_and_what_principals_do_is_still_audited() {
    let mut s = bootstrapped();
    run_at(
        &mut s,
        T0 + 1,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 2 }),
    )
    .expect("v2");
    let audited = s.audit.len();
    let placed = run_at(
        &mut s,
        T0 + 2,
        Actor::system(),
        Op::Jobs(JobOp::PlaceJobs {
            placements: Vec::new(),
        }),
    );
    assert!(placed.is_ok(), "{placed:?}");
    let refused = run_at(
        &mut s,
        T0 + 3,
        Actor::system(),
        Op::Fleet(FleetOp::SetNodeHealth {
            key: "eu/eu1/none".into(),
            health: NodeHealthState::Lost,
            lease_epoch: 1,
        }),
    );
    assert!(refused.is_err());
    assert_eq!(s.audit.len(), audited, "machine traffic was audited");
    assert_eq!(s.machine_counter("job.place/applied"), 1);
    assert_eq!(s.machine_counter("node.health/refused"), 1);
    run_at(&mut s, T0 + 4, admin(), project_op("prj_people")).expect("project");
    assert_eq!(
        s.audit.len(),
        audited + 1,
        "a principal's change was not audited"
    );
}

#[test]
fn from_version_3_a_repeated_submission_answers_the_job_as_it_is_and_remembers_only_its_id() {
    let mut s = bootstrapped();
    run_at(
        &mut s,
        T0 + 1,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 3 }),
    )
    .expect("v3");
    let project = s.default_project_id().expect("default project").to_owned();
    let mut submit = Command::new(
        T0 + 2,
        admin(),
        Op::Jobs(JobOp::SubmitJob {
            principal_id: Some("sa_admin".into()),
            id: "job_once".into(),
            project_id: project.clone(),
            spec: JobSpec::new("true"),
        }),
    );
    submit.request_id = Some("req-submit".into());
    let first = s.apply(s.applied_index + 1, &submit);
    assert!(
        matches!(&first, Ok(Outcome::Jobs(JobOutcome::Job { job })) if job.id == "job_once"),
        "{first:?}"
    );
    let remembered = serde_json::to_string(s.requests.get("req-submit").expect("remembered"))
        .expect("serializes");
    assert!(
        !remembered.contains("\"spec\""),
        "the dedup table holds the job record: {remembered}"
    );
    run_at(
        &mut s,
        T0 + 3,
        admin(),
        Op::Jobs(JobOp::CancelJob {
            project_id: project,
            id: "job_once".into(),
        }),
    )
    .expect("cancel");
    let jobs_before = s.jobs.len();
    let again = s.apply(s.applied_index + 1, &submit);
    assert_eq!(s.jobs.len(), jobs_before, "the repeat submitted again");
    match again {
        Ok(Outcome::Jobs(JobOutcome::Job { job })) => {
            assert!(job.cancel_requested || job.state.is_terminal())
        }
        other => panic!("{other:?}"),
    }
}
