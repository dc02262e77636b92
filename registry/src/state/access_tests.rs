//! Tests of who may act through the state machine: the acting key re-checked in `apply`, the bootstrap
//! principal's ownership, key and binding grants, and secrets bound to workload identities.

use super::*;
use crate::authz::Role;
use crate::token;

const T0: u64 = 1_700_000_000_000;

fn wk(tag: &str) -> WrappedKey {
    WrappedKey {
        master_key_id: "mk1".to_owned(),
        nonce_b64: "AAAAAAAAAAAAAAAA".to_owned(),
        ciphertext_b64: format!("ct-{tag}"),
    }
}

/// A bootstrapped registry: project `default` (`prj_default`), the platform-admin `sa_root` with key `root`.
fn bootstrapped() -> RegistryState {
    let mut s = RegistryState::default();
    let op = Op::Tenancy(TenancyOp::Bootstrap {
        default_project_id: "prj_default".into(),
        default_data_key: wk("default"),
        admin_principal_id: "sa_root".into(),
        admin_principal_name: "root".into(),
        admin_key_id: "root".into(),
        admin_key_hash: token::hash_token("root"),
        admin_key_last4: "abcd".into(),
    });
    let out = s.apply(1, &Command::new(T0, Actor::system(), op));
    assert!(
        matches!(
            out,
            Ok(Outcome::Tenancy(TenancyOutcome::Bootstrapped { .. }))
        ),
        "{out:?}"
    );
    s
}

/// Applies `op` as `actor` at `at`, at the next index.
fn apply_as(s: &mut RegistryState, actor: &Actor, at: u64, op: Op) -> CommandOutcome {
    let index = s.applied_index + 1;
    s.apply(index, &Command::new(at, actor.clone(), op))
}

fn system(s: &mut RegistryState, op: Op) {
    let out = apply_as(s, &Actor::system(), T0, op);
    assert!(out.is_ok(), "{out:?}");
}

/// A key `key_id` for a new service account `principal` bound `role` in `project`.
fn key_for(
    s: &mut RegistryState,
    key_id: &str,
    project: &str,
    principal: &str,
    role: Role,
    expires_at: Option<u64>,
) {
    system(
        s,
        Op::Tenancy(TenancyOp::CreateKey {
            key_id: key_id.into(),
            name: key_id.into(),
            project_id: project.into(),
            hash: token::hash_token(key_id),
            last4: "abcd".into(),
            expires_at,
            principal: KeyPrincipal::NewServiceAccount {
                principal_id: principal.into(),
                name: principal.into(),
            },
            role: Some(role),
            limits: crate::state::KeyLimits::default(),
        }),
    );
}

fn project(id: &str, name: &str) -> Op {
    Op::Tenancy(TenancyOp::CreateProject {
        policy: None,
        id: id.into(),
        name: name.into(),
        description: String::new(),
        data_key: wk(id),
    })
}

// ---- the acting key, re-checked in apply ------------------------------------------------------------------

#[test]
fn a_command_made_with_a_key_revoked_before_it_commits_is_refused() {
    let mut s = bootstrapped();
    key_for(
        &mut s,
        "ci",
        "prj_default",
        "sa_ci",
        Role::ProjectAdmin,
        None,
    );
    let ci = Actor::principal("sa_ci", "ci").with_key("ci");

    // Valid: applied, and the audit record names the key.
    let out = apply_as(&mut s, &ci, T0 + 10, project("prj_a", "aaa"));
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(
        s.audit.last().map(|r| r.actor.key_id.clone()),
        Some(Some("ci".to_owned()))
    );

    // The key is revoked; a write a lagging replica admitted earlier commits afterwards and is refused.
    system(
        &mut s,
        Op::Tenancy(TenancyOp::RevokeKey {
            key_id: "ci".into(),
        }),
    );
    let before = s.projects().count();
    let out = apply_as(&mut s, &ci, T0 + 20, project("prj_b", "bbb"));
    assert!(
        matches!(&out, Err(DomainError::Unauthenticated(m)) if m.contains("revoked")),
        "{out:?}"
    );
    assert_eq!(s.projects().count(), before, "nothing was created");
    let last = s.audit.last().cloned().expect("audited");
    assert_eq!(last.outcome, AuditOutcome::Refused);
    assert_eq!(last.action, "project.create");
}

#[test]
fn an_expired_key_a_foreign_key_and_a_disabled_principal_are_refused() {
    let mut s = bootstrapped();
    key_for(
        &mut s,
        "short",
        "prj_default",
        "sa_short",
        Role::Editor,
        Some(T0 + 100),
    );
    key_for(
        &mut s,
        "other",
        "prj_default",
        "sa_other",
        Role::Editor,
        None,
    );
    let short = Actor::principal("sa_short", "short").with_key("short");
    let op = || {
        Op::Tenancy(TenancyOp::CreatePrincipal {
            id: "sa_x".into(),
            kind: PrincipalKind::ServiceAccount,
            name: "x".into(),
            project_id: "prj_default".into(),
        })
    };
    // Expiry is judged at the command's time, not the replica's.
    let out = apply_as(&mut s, &short, T0 + 100, op());
    assert!(
        matches!(&out, Err(DomainError::Unauthenticated(m)) if m.contains("expired")),
        "{out:?}"
    );
    // A key of another principal.
    let forged = Actor::principal("sa_short", "short").with_key("other");
    let out = apply_as(&mut s, &forged, T0 + 10, op());
    assert!(
        matches!(out, Err(DomainError::Unauthenticated(_))),
        "{out:?}"
    );
    // An unknown key.
    let ghost = Actor::principal("sa_short", "short").with_key("ghost");
    let out = apply_as(&mut s, &ghost, T0 + 10, op());
    assert!(
        matches!(out, Err(DomainError::Unauthenticated(_))),
        "{out:?}"
    );
    // A disabled principal.
    system(
        &mut s,
        Op::Tenancy(TenancyOp::SetPrincipalDisabled {
            id: "sa_other".into(),
            disabled: true,
        }),
    );
    let other = Actor::principal("sa_other", "other").with_key("other");
    let out = apply_as(&mut s, &other, T0 + 10, op());
    assert!(
        matches!(&out, Err(DomainError::Unauthenticated(m)) if m.contains("disabled")),
        "{out:?}"
    );
    // Still valid at its time: applied.
    let out = apply_as(&mut s, &short, T0 + 99, op());
    assert!(out.is_ok(), "{out:?}");
}

#[test]
fn commands_without_a_key_apply_as_before() {
    let mut s = bootstrapped();
    // Commands logged before keys were recorded name a principal but no key.
    let old = Actor::principal("sa_gone", "gone");
    let out = apply_as(&mut s, &old, T0 + 10, project("prj_a", "aaa"));
    assert!(out.is_ok(), "{out:?}");
    // The recorded actor serializes exactly as before.
    let json = serde_json::to_value(&old).expect("actor serializes");
    assert_eq!(
        json,
        serde_json::json!({"principal_id": "sa_gone", "name": "gone"})
    );
}

// ---- the bootstrap principal belongs to the platform ------------------------------------------------------

#[test]
fn the_bootstrap_principal_belongs_to_no_project() {
    let s = bootstrapped();
    let root = s.principal("sa_root").expect("bootstrap principal");
    assert_eq!(root.project_id, None);
    assert_eq!(s.bootstrap_principal_id(), Some("sa_root"));
    let default = s.project_scope("prj_default");
    assert!(default.principal("sa_root").is_none(), "no project owns it");
    let listed = default.principals(&PageRequest::new(None, None).expect("page"));
    assert!(listed.items.iter().all(|p| p.id != "sa_root"), "{listed:?}");
    // Its key still acts in the default project by default.
    assert_eq!(
        s.key_by_id("root").map(|k| k.project_id.as_str()),
        Some("prj_default")
    );
}

#[test]
fn a_snapshot_from_before_moves_the_bootstrap_principal_to_the_platform() {
    let mut s = bootstrapped();
    key_for(&mut s, "ci", "prj_default", "sa_ci", Role::Editor, None);
    // What an older build wrote: the bootstrap principal owned by `default`.
    if let Some(p) = s.tenancy.principals_mut().get_mut("sa_root") {
        p.project_id = Some("prj_default".into());
    }
    let old = s.to_bytes();
    assert!(
        String::from_utf8_lossy(&old).contains(
            r#""id":"sa_root","kind":"service_account","name":"root","project_id":"prj_default""#
        ),
        "the old form is a plain project id"
    );
    let loaded = RegistryState::from_bytes(&old).expect("old snapshot loads");
    assert_eq!(
        loaded.principal("sa_root").map(|p| p.project_id.clone()),
        Some(None)
    );
    // Nothing else moved.
    assert_eq!(
        loaded.principal("sa_ci").and_then(|p| p.project_id.clone()),
        Some("prj_default".to_owned())
    );
    // Loading is idempotent: a migrated snapshot reloads byte for byte.
    let again = RegistryState::from_bytes(&loaded.to_bytes()).expect("reloads");
    assert_eq!(again.to_bytes(), loaded.to_bytes());
}

#[test]
fn an_old_log_minting_a_key_for_the_bootstrap_principal_still_replays() {
    let mut s = bootstrapped();
    // Logged by an older build (no acting key): a second key for the bootstrap principal in `default`.
    let out = apply_as(
        &mut s,
        &Actor::principal("sa_root", "root"),
        T0 + 10,
        Op::Tenancy(TenancyOp::CreateKey {
            key_id: "root2".into(),
            name: "root2".into(),
            project_id: "prj_default".into(),
            hash: token::hash_token("root2"),
            last4: "abcd".into(),
            expires_at: None,
            principal: KeyPrincipal::Existing {
                principal_id: "sa_root".into(),
            },
            role: None,
            limits: crate::state::KeyLimits::default(),
        }),
    );
    assert!(
        matches!(out, Ok(Outcome::Tenancy(TenancyOutcome::KeyCreated { .. }))),
        "{out:?}"
    );
}

// ---- who may mint keys and bind roles ---------------------------------------------------------------------

use crate::authz::{self, Caller};

/// The caller of key `key_id` as the API would authenticate it.
fn caller(s: &RegistryState, key_id: &str) -> Caller {
    let actor = Actor::principal(s.key_by_id(key_id).expect("key").principal_id.clone(), "x")
        .with_key(key_id);
    authz::caller_of(s, &actor).expect("caller")
}

/// Projects A and B besides `default`; `sa_pa` project-admin of `default` and of A (key `pa`), `sa_ed`
/// editor of A (key `ed`), `sa_both` owned by A and bound in A and B, `sa_only` owned by and bound in A.
fn world() -> RegistryState {
    let mut s = bootstrapped();
    system(&mut s, project("prj_a", "aaa"));
    system(&mut s, project("prj_b", "bbb"));
    key_for(
        &mut s,
        "pa",
        "prj_default",
        "sa_pa",
        Role::ProjectAdmin,
        Some(T0 + 1_000_000),
    );
    system(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "sa_pa".into(),
            scope: Scope::Project("prj_a".into()),
            role: Role::ProjectAdmin,
        }),
    );
    key_for(
        &mut s,
        "ed",
        "prj_a",
        "sa_ed",
        Role::Editor,
        Some(T0 + 1_000_000),
    );
    key_for(
        &mut s,
        "both",
        "prj_a",
        "sa_both",
        Role::Editor,
        Some(T0 + 1_000_000),
    );
    system(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "sa_both".into(),
            scope: Scope::Project("prj_b".into()),
            role: Role::Viewer,
        }),
    );
    key_for(
        &mut s,
        "only",
        "prj_a",
        "sa_only",
        Role::Viewer,
        Some(T0 + 1_000_000),
    );
    s
}

fn existing(id: &str) -> KeyPrincipal {
    KeyPrincipal::Existing {
        principal_id: id.into(),
    }
}

#[test]
fn a_project_admin_of_default_cannot_reach_platform_admin() {
    let s = world();
    let pa = caller(&s, "pa");
    let expiring = Some(T0 + 5_000);
    // A key for the bootstrap principal, in the project they administer.
    let e = authz::check_key(&s, &pa, "prj_default", &existing("sa_root"), None, expiring)
        .expect_err("refused");
    assert!(e.contains("platform-admin"), "{e}");
    // platform-admin, bound on the platform or (invalid anyway) in the project.
    assert!(authz::check_bind(&s, &pa, "sa_pa", &Scope::Platform, Role::PlatformAdmin).is_err());
    assert!(authz::check_bind(&s, &pa, "sa_only", &Scope::Platform, Role::Viewer).is_err());
    // A key for a principal that is also bound in a project they do not administer.
    let e = authz::check_key(&s, &pa, "prj_a", &existing("sa_both"), None, expiring)
        .expect_err("refused");
    assert!(e.contains("prj_b"), "{e}");
    // Nor may they bind it more roles.
    assert!(authz::check_bind(
        &s,
        &pa,
        "sa_both",
        &Scope::Project("prj_a".into()),
        Role::Deployer
    )
    .is_err());
    // A role in a project they do not administer.
    assert!(authz::check_bind(
        &s,
        &pa,
        "sa_only",
        &Scope::Project("prj_b".into()),
        Role::Viewer
    )
    .is_err());
    // What they do manage is fine.
    assert_eq!(
        authz::check_key(
            &s,
            &pa,
            "prj_a",
            &existing("sa_only"),
            Some(Role::Editor),
            expiring
        ),
        Ok(())
    );
    assert_eq!(
        authz::check_bind(
            &s,
            &pa,
            "sa_only",
            &Scope::Project("prj_a".into()),
            Role::ProjectAdmin
        ),
        Ok(())
    );
    // The platform-admin may do all of it.
    let root = caller(&s, "root");
    assert_eq!(
        authz::check_key(&s, &root, "prj_default", &existing("sa_root"), None, None),
        Ok(())
    );
    assert_eq!(
        authz::check_bind(&s, &root, "sa_both", &Scope::Platform, Role::Viewer),
        Ok(())
    );
}

#[test]
fn nobody_binds_a_role_beyond_their_own() {
    let s = world();
    let pa = caller(&s, "pa");
    let ed = caller(&s, "ed");
    let a = Scope::Project("prj_a".into());
    for role in [
        Role::Viewer,
        Role::Editor,
        Role::Deployer,
        Role::ProjectAdmin,
    ] {
        assert!(authz::holds_role(&s, &pa, &a, role), "{role}");
    }
    assert!(!authz::holds_role(&s, &pa, &Scope::Platform, Role::Viewer));
    assert!(!authz::holds_role(
        &s,
        &pa,
        &Scope::Project("prj_b".into()),
        Role::Viewer
    ));
    // Roles compare by what they allow: an editor holds viewer, not deployer.
    assert!(authz::holds_role(&s, &ed, &a, Role::Viewer));
    assert!(authz::holds_role(&s, &ed, &a, Role::Editor));
    assert!(!authz::holds_role(&s, &ed, &a, Role::Deployer));
    // A new service account's role is a grant too.
    let sa = KeyPrincipal::NewServiceAccount {
        principal_id: "sa_new".into(),
        name: "new".into(),
    };
    assert!(authz::check_key(
        &s,
        &pa,
        "prj_a",
        &sa,
        Some(Role::PlatformAdmin),
        Some(T0 + 5)
    )
    .is_err());
    assert!(authz::check_key(&s, &ed, "prj_a", &sa, Some(Role::Viewer), Some(T0 + 5)).is_err());
}

#[test]
fn only_a_platform_admin_makes_keys_that_never_expire() {
    let s = world();
    let sa = KeyPrincipal::NewServiceAccount {
        principal_id: "sa_new".into(),
        name: "new".into(),
    };
    let e = authz::check_key(
        &s,
        &caller(&s, "pa"),
        "prj_a",
        &sa,
        Some(Role::Viewer),
        None,
    )
    .expect_err("refused");
    assert!(e.contains("never expires"), "{e}");
    assert_eq!(
        authz::check_key(
            &s,
            &caller(&s, "root"),
            "prj_a",
            &sa,
            Some(Role::Viewer),
            None
        ),
        Ok(())
    );
}

#[test]
fn apply_refuses_a_grant_its_acting_key_could_not_make() {
    let mut s = world();
    let pa = Actor::principal("sa_pa", "pa").with_key("pa");
    let keys = s.tenancy.keys().len();
    let out = apply_as(
        &mut s,
        &pa,
        T0 + 10,
        Op::Tenancy(TenancyOp::CreateKey {
            key_id: "stolen".into(),
            name: "stolen".into(),
            project_id: "prj_default".into(),
            hash: token::hash_token("stolen"),
            last4: "abcd".into(),
            expires_at: Some(T0 + 5_000),
            principal: existing("sa_root"),
            role: None,
            limits: KeyLimits::default(),
        }),
    );
    assert!(
        matches!(out, Err(DomainError::PermissionDenied(_))),
        "{out:?}"
    );
    assert_eq!(s.tenancy.keys().len(), keys);
    let out = apply_as(
        &mut s,
        &pa,
        T0 + 10,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "sa_pa".into(),
            scope: Scope::Platform,
            role: Role::PlatformAdmin,
        }),
    );
    assert!(
        matches!(out, Err(DomainError::PermissionDenied(_))),
        "{out:?}"
    );
    assert_eq!(
        s.audit.last().map(|r| (r.action.as_str(), r.outcome)),
        Some(("role.bind", AuditOutcome::Refused))
    );
    // A grant within its rights applies.
    let out = apply_as(
        &mut s,
        &pa,
        T0 + 10,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "sa_only".into(),
            scope: Scope::Project("prj_a".into()),
            role: Role::Deployer,
        }),
    );
    assert!(out.is_ok(), "{out:?}");
}

#[test]
fn key_limits_narrow_what_the_bindings_grant() {
    let mut s = world();
    // The platform-admin's own principal on a key narrowed to viewer and to project A.
    system(
        &mut s,
        Op::Tenancy(TenancyOp::CreateKey {
            key_id: "narrow".into(),
            name: "narrow".into(),
            project_id: "prj_a".into(),
            hash: token::hash_token("narrow"),
            last4: "abcd".into(),
            expires_at: None,
            principal: existing("sa_root"),
            role: None,
            limits: KeyLimits {
                roles: Some(vec![Role::Viewer]),
                project_scoped: true,
            },
        }),
    );
    let c = caller(&s, "narrow");
    assert_eq!(
        authz::authorize_caller(&s, &c, Some("prj_a"), authz::Action::ReadProject),
        Ok(())
    );
    assert_eq!(
        authz::authorize_caller(&s, &c, Some("prj_a"), authz::Action::RunJobs),
        Err(authz::Denied::Forbidden)
    );
    assert_eq!(
        authz::authorize_caller(&s, &c, Some("prj_b"), authz::Action::ReadProject),
        Err(authz::Denied::NotFound),
        "another project looks missing"
    );
    assert_eq!(
        authz::authorize_caller(&s, &c, None, authz::Action::CreateProject),
        Err(authz::Denied::Forbidden)
    );
    assert!(!authz::is_platform_admin(&s, &c));
    // The same principal's unlimited key is untouched.
    let root = caller(&s, "root");
    assert!(authz::is_platform_admin(&s, &root));
    // An empty or unsorted allow-list never enters the state.
    let bad = |roles: Vec<Role>| {
        Op::Tenancy(TenancyOp::CreateKey {
            key_id: "bad".into(),
            name: "bad".into(),
            project_id: "prj_a".into(),
            hash: token::hash_token("bad"),
            last4: "abcd".into(),
            expires_at: None,
            principal: existing("sa_root"),
            role: None,
            limits: KeyLimits {
                roles: Some(roles),
                project_scoped: false,
            },
        })
    };
    for roles in [vec![], vec![Role::Editor, Role::Viewer]] {
        let out = apply_as(&mut s, &Actor::system(), T0, bad(roles));
        assert!(
            matches!(out, Err(DomainError::Invalid { ref field, .. }) if field == "roles"),
            "{out:?}"
        );
    }
}

// ---- secrets bound to workload identities -----------------------------------------------------------------

fn put_secret(s: &mut RegistryState, name: &str, bindings: &[&str]) {
    let version = s
        .project_scope("prj_a")
        .secret(name)
        .map_or(1, |x| x.latest_version() + 1);
    system(
        s,
        Op::Secrets(SecretOp::PutSecret {
            project_id: "prj_a".into(),
            name: name.into(),
            version,
            sealed: SealedValue {
                nonce_b64: "AAAAAAAAAAAAAAAA".into(),
                ciphertext_b64: format!("sealed-{name}"),
            },
            bindings: Some(bindings.iter().map(|b| (*b).to_owned()).collect()),
        }),
    );
}

fn job_with_secret(name: &str, secret: &str) -> JobSpec {
    let mut spec = JobSpec::new("true");
    spec.name = name.into();
    spec.secrets.insert("TOKEN".into(), secret.into());
    spec
}

fn submit(s: &mut RegistryState, actor: &Actor, id: &str, spec: JobSpec) -> CommandOutcome {
    let principal_id = actor.principal_id.clone();
    apply_as(
        s,
        actor,
        T0 + 10,
        Op::Jobs(JobOp::SubmitJob {
            id: id.into(),
            project_id: "prj_a".into(),
            spec,
            principal_id,
        }),
    )
}

#[test]
fn bindings_name_principals_optionally_narrowed_by_job_name() {
    let parse = SecretBinding::parse;
    assert_eq!(
        parse("principal:sa_ci"),
        SecretBinding::Workload {
            principal_id: "sa_ci",
            job: None
        }
    );
    assert_eq!(
        parse("principal:sa_ci/job:train-*"),
        SecretBinding::Workload {
            principal_id: "sa_ci",
            job: Some("train-*")
        }
    );
    for legacy in ["job:*", "job:train-prod", "deployment:fraud"] {
        assert_eq!(parse(legacy), SecretBinding::Legacy, "{legacy}");
    }
    for bad in [
        "principal:",
        "principal:sa ci",
        "principal:sa_ci/",
        "principal:sa_ci/job:",
        "principal:sa_ci/run:x",
        "principal:sa_ci/job:a/b",
        "job:*",
    ] {
        let e = validate_workload_binding(bad).expect_err(bad);
        assert!(
            matches!(e, DomainError::Invalid { ref field, .. } if field == "bindings"),
            "{e:?}"
        );
    }

    let mut s = world();
    put_secret(
        &mut s,
        "wandb",
        &["principal:sa_only/job:train-*", "principal:sa_ed", "job:*"],
    );
    let secret = s
        .project_scope("prj_a")
        .secret("wandb")
        .expect("stored")
        .clone();
    assert!(secret_binds_workload(&secret, "sa_ed", "job_1", "anything"));
    assert!(secret_binds_workload(
        &secret, "sa_only", "job_1", "train-7"
    ));
    assert!(!secret_binds_workload(
        &secret, "sa_only", "job_1", "eval-7"
    ));
    // Another principal naming its job like a bound one gets nothing; the legacy `job:*` grants nothing.
    assert!(!secret_binds_workload(
        &secret, "sa_both", "job_1", "train-7"
    ));
    assert!(!secret_binds_workload(&secret, "sa_pa", "job_1", "x"));
}

#[test]
fn a_job_named_like_a_bound_job_gets_no_secret() {
    let mut s = world();
    system(
        &mut s,
        Op::Tenancy(TenancyOp::BindRole {
            principal_id: "sa_ed".into(),
            scope: Scope::Project("prj_a".into()),
            role: Role::SecretUser,
        }),
    );
    put_secret(&mut s, "prod-token", &["principal:sa_only/job:train-prod"]);
    let ed = Actor::principal("sa_ed", "ed").with_key("ed");
    let jobs = s.jobs.len();
    let out = submit(
        &mut s,
        &ed,
        "job_steal",
        job_with_secret("train-prod", "prod-token"),
    );
    assert!(
        matches!(&out, Err(DomainError::FailedPrecondition(m)) if m.contains("not bound to principal sa_ed")),
        "{out:?}"
    );
    assert_eq!(s.jobs.len(), jobs, "no job was accepted");
    // Nor can a command claim another principal's identity.
    let out = apply_as(
        &mut s,
        &ed,
        T0 + 10,
        Op::Jobs(JobOp::SubmitJob {
            id: "job_steal2".into(),
            project_id: "prj_a".into(),
            spec: job_with_secret("train-prod", "prod-token"),
            principal_id: Some("sa_only".into()),
        }),
    );
    assert!(
        matches!(out, Err(DomainError::PermissionDenied(_))),
        "{out:?}"
    );
    // Bound to the editor itself, the same job is accepted and records its identity.
    put_secret(&mut s, "ed-token", &["principal:sa_ed"]);
    let out = submit(
        &mut s,
        &ed,
        "job_ok",
        job_with_secret("train-prod", "ed-token"),
    );
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(
        s.jobs.get("job_ok").and_then(|j| j.principal_id.as_deref()),
        Some("sa_ed")
    );
}

#[test]
fn naming_a_secret_needs_the_use_right() {
    let mut s = world();
    put_secret(&mut s, "ed-token", &["principal:sa_ed"]);
    // An editor runs jobs but does not use secrets until given secret-user.
    let ed = Actor::principal("sa_ed", "ed").with_key("ed");
    let out = submit(&mut s, &ed, "job_1", job_with_secret("x", "ed-token"));
    assert!(
        matches!(&out, Err(DomainError::PermissionDenied(m)) if m.contains("use-secrets")),
        "{out:?}"
    );
    // Without secrets an editor's job is fine.
    let out = submit(&mut s, &ed, "job_2", JobSpec::new("true"));
    assert!(out.is_ok(), "{out:?}");
}

#[test]
fn submissions_from_before_workload_identities_replay_under_their_rule() {
    let mut s = world();
    put_secret(&mut s, "legacy", &["job:train-*"]);
    // Logged by an older build: no principal on the command.
    let out = apply_as(
        &mut s,
        &Actor::principal("sa_ed", "ed"),
        T0 + 10,
        Op::Jobs(JobOp::SubmitJob {
            id: "job_old".into(),
            project_id: "prj_a".into(),
            spec: job_with_secret("train-1", "legacy"),
            principal_id: None,
        }),
    );
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(
        s.jobs.get("job_old").map(|j| j.principal_id.clone()),
        Some(None)
    );
}
