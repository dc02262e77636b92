//! Audit archiving (apply version 4): who may archive, when, which records, and how the live chain, paging,
//! snapshots and the bootstrap principal carry on after a checkpoint.

use super::*;

/// Applies `op` as `actor` at the next index.
fn run_as(s: &mut RegistryState, actor: Actor, op: Op) -> CommandOutcome {
    let index = s.applied_index + 1;
    s.apply(index, &Command::new(T0 + index * 1000, actor, op))
}

fn archive(through_seq: u64) -> Op {
    Op::Audit(AuditOp::ArchiveAudit { through_seq })
}

/// A bootstrapped state with a few projects (one audit record each) at apply version 4.
fn at_version_4() -> RegistryState {
    let mut s = bootstrapped();
    for n in 0..5 {
        create_project(&mut s, &format!("prj_{n}"), &format!("p{n}"));
    }
    let out = run_as(
        &mut s,
        Actor::system(),
        Op::Cluster(ClusterOp::SetApplyVersion { version: 4 }),
    );
    assert_eq!(out, Ok(Outcome::Done));
    s
}

#[test]
fn archiving_is_refused_below_apply_version_4() {
    let mut s = bootstrapped();
    create_project(&mut s, "prj_a", "a");
    let before = s.audit_records().len();
    let out = run_as(&mut s, Actor::system(), archive(1));
    assert!(
        matches!(&out, Err(DomainError::FailedPrecondition(m)) if m.contains("apply version 4")),
        "{out:?}"
    );
    assert_eq!(
        s.audit_records().len(),
        before + 1,
        "the refusal is recorded"
    );
    assert_eq!(s.audit_records()[0].seq, 1, "nothing was archived");
    assert!(s.audit_log().checkpoint().is_none());
    assert!(s.audit_to_archive(&Actor::system(), 1).is_none());
}

#[test]
fn archiving_is_refused_from_a_principal() {
    let mut s = at_version_4();
    let out = run_as(&mut s, admin(), archive(2));
    assert!(
        matches!(&out, Err(DomainError::PermissionDenied(_))),
        "{out:?}"
    );
    assert_eq!(s.audit_records()[0].seq, 1, "nothing was archived");
    assert!(s.audit_to_archive(&admin(), 2).is_none());
    let agent = Actor {
        principal_id: None,
        name: "spiffe://golden.meridian.test/agent/eu/eu1/n1".into(),
        key_id: None,
    };
    let out = run_as(&mut s, agent, archive(2));
    assert!(
        matches!(&out, Err(DomainError::PermissionDenied(_))),
        "an agent is not the system: {out:?}"
    );
}

#[test]
fn archiving_is_refused_when_the_seq_is_not_a_live_record() {
    let mut s = at_version_4();
    for beyond in [false, true, false] {
        // Each refusal is recorded, so the record just past the head is computed anew each time.
        let through = if beyond { s.audit_head().0 + 1 } else { 0 };
        let out = run_as(&mut s, Actor::system(), archive(through));
        assert!(
            matches!(&out, Err(DomainError::NotFound { .. })),
            "through {through}: {out:?}"
        );
    }
    let out = run_as(&mut s, Actor::system(), archive(u64::MAX));
    assert!(matches!(&out, Err(DomainError::NotFound { .. })), "{out:?}");
    run_as(&mut s, Actor::system(), archive(3)).expect("archive through 3");
    for through in [1, 3] {
        let out = run_as(&mut s, Actor::system(), archive(through));
        assert!(
            matches!(&out, Err(DomainError::NotFound { .. })),
            "already archived {through}: {out:?}"
        );
    }
}

#[test]
fn archiving_forgets_the_oldest_records_and_keeps_a_checkpoint_the_chain_continues_from() {
    let mut s = at_version_4();
    let all = s.audit_records().to_vec();
    let to_archive = s
        .audit_to_archive(&Actor::system(), 4)
        .expect("would archive")
        .to_vec();
    assert_eq!(to_archive, all[..4].to_vec());
    let out = run_as(&mut s, Actor::system(), archive(4)).expect("archives");
    let Outcome::AuditArchived { checkpoint } = out else {
        panic!("unexpected outcome {out:?}");
    };
    assert_eq!(checkpoint.seq, 4);
    assert_eq!(checkpoint.hash, all[3].hash);
    assert_eq!(checkpoint.archived, 4);
    assert_eq!(s.audit_log().checkpoint(), Some(&checkpoint));
    // The live records start after the checkpoint, and the archive itself is on record at the end.
    assert_eq!(s.audit_records()[0], all[4]);
    let last = s.audit_records().last().expect("audited");
    assert_eq!(
        (last.action.as_str(), last.target.as_str()),
        ("audit.archive", "4")
    );
    s.audit_log()
        .live_verifier()
        .feed(s.audit_records())
        .expect("the live chain continues from the checkpoint");
    // Archived and live records together are the chain as it was.
    let mut whole = ChainVerifier::default();
    whole.feed(&to_archive).expect("archived part");
    whole.feed(s.audit_records()).expect("live part");

    // A second archive counts on.
    let through = s.audit_records()[1].seq;
    run_as(&mut s, Actor::system(), archive(through)).expect("archives again");
    let c = s.audit_log().checkpoint().expect("checkpoint");
    assert_eq!((c.seq, c.archived), (through, through));
}

#[test]
fn a_tampered_live_record_fails_verification_from_the_checkpoint() {
    let mut s = at_version_4();
    run_as(&mut s, Actor::system(), archive(3)).expect("archives");
    let mut records = s.audit_records().to_vec();
    let err = ChainVerifier::after(3, "not the checkpoint hash")
        .feed(&records)
        .expect_err("a wrong checkpoint hash");
    assert_eq!(err.seq, 4);
    records[1].detail.push('!');
    let err = s
        .audit_log()
        .live_verifier()
        .feed(&records)
        .expect_err("altered detail");
    assert_eq!(err.seq, records[1].seq);
}

#[test]
fn the_whole_log_can_be_archived_and_the_next_record_follows_the_checkpoint() {
    let mut s = at_version_4();
    let head = s.audit_head().0;
    run_as(&mut s, Actor::system(), archive(head)).expect("archives all");
    // Only the archive's own record is live, chained to the checkpoint.
    let live = s.audit_records();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].seq, head + 1);
    assert_eq!(
        live[0].prev_hash,
        s.audit_log().checkpoint().expect("checkpoint").hash
    );
}

#[test]
fn pages_below_the_checkpoint_say_what_is_archived() {
    let mut s = at_version_4();
    run_as(&mut s, Actor::system(), archive(3)).expect("archives");
    let page = s.audit_page(0, 2, None);
    assert_eq!(page.archived_through_seq, Some(3));
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![4, 5]
    );
    let page = s.audit_page(4, 2, None);
    assert_eq!(
        page.archived_through_seq, None,
        "nothing below was asked for"
    );
    assert_eq!(page.records[0].seq, 5);
    let page = s.audit_page(3, 1, None);
    assert_eq!(page.archived_through_seq, None);
    assert_eq!(page.records[0].seq, 4);
    let scoped = s.project_scope("prj_4").audit(0, 10);
    assert_eq!(scoped.archived_through_seq, Some(3));
    assert!(scoped
        .records
        .iter()
        .all(|r| r.project.as_deref() == Some("prj_4")));
}

#[test]
fn the_checkpoint_survives_a_snapshot_and_an_unarchived_snapshot_has_no_field() {
    let s = at_version_4();
    let bytes = s.to_bytes();
    assert!(
        !String::from_utf8_lossy(&bytes).contains("audit_checkpoint"),
        "an unarchived snapshot names no checkpoint"
    );
    let mut s = s;
    run_as(&mut s, Actor::system(), archive(2)).expect("archives");
    let bytes = s.to_bytes();
    let loaded = RegistryState::from_bytes(&bytes).expect("loads");
    assert_eq!(loaded, s);
    assert_eq!(loaded.to_bytes(), bytes);
    assert_eq!(loaded.audit_log().checkpoint().map(|c| c.seq), Some(2));
}

#[test]
fn the_bootstrap_principal_is_remembered_once_its_record_is_archived() {
    let mut s = at_version_4();
    let before = s.bootstrap_principal_id().map(str::to_owned);
    assert_eq!(before.as_deref(), Some("sa_admin"));
    run_as(&mut s, Actor::system(), archive(2)).expect("archives");
    assert_eq!(s.bootstrap_principal_id(), before.as_deref());
    let through = s.audit_records()[0].seq;
    run_as(&mut s, Actor::system(), archive(through)).expect("archives again");
    assert_eq!(s.bootstrap_principal_id(), before.as_deref());
}

#[test]
fn replicas_archiving_the_same_log_stay_byte_identical() {
    let mut a = at_version_4();
    let mut b = at_version_4();
    for s in [&mut a, &mut b] {
        run_as(s, Actor::system(), archive(3)).expect("archives");
        create_project(s, "prj_after", "after");
    }
    assert_eq!(a.to_bytes(), b.to_bytes());
}
