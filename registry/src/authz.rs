//! Roles, actions and the permission check every admin-API route runs before it reads or proposes anything.
//!
//! Owns the role → actions table, bearer-token authentication against the local replica and
//! [`authorize`]. Deny by default: an action not in a role's table is refused, and a principal with no binding
//! in a project cannot tell that the project exists. Never mutates state and never sees a master key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::state::{Actor, KeyLimits, KeyPrincipal, KeyState, RegistryState, Scope};
use crate::token;

/// A role bound to a principal in a project (or platform-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Reads the project's objects.
    Viewer,
    /// Viewer, plus writes experiments and pipelines and runs jobs.
    Editor,
    /// Viewer, plus writes serving (deployments, traffic).
    Deployer,
    /// Editor and deployer, plus keys, role bindings, secrets, the project's audit log and submitting
    /// jobs that preempt others (`preempt-jobs`).
    ProjectAdmin,
    /// Everything, everywhere (platform scope only).
    PlatformAdmin,
    /// Viewer, plus the right to reference the project's secrets in jobs (`use-secrets`); bound next to
    /// editor for the people and service accounts whose jobs need secrets. Which secrets a job gets is
    /// still decided by each secret's bindings.
    SecretUser,
}

impl Role {
    /// Every role: the five of the product's matrix, least to most privileged, then `secret-user`.
    pub const ALL: [Role; 6] = [
        Role::Viewer,
        Role::Editor,
        Role::Deployer,
        Role::ProjectAdmin,
        Role::PlatformAdmin,
        Role::SecretUser,
    ];

    /// The role's name as written in bindings and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Deployer => "deployer",
            Role::ProjectAdmin => "project-admin",
            Role::PlatformAdmin => "platform-admin",
            Role::SecretUser => "secret-user",
        }
    }

    /// Whether this role grants `action` (wherever it is bound).
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Viewer => matches!(action, ReadProject),
            Role::Editor => matches!(action, ReadProject | WriteExperiments | RunJobs),
            Role::Deployer => matches!(action, ReadProject | WriteServing),
            Role::ProjectAdmin => matches!(
                action,
                ReadProject
                    | WriteExperiments
                    | RunJobs
                    | WriteServing
                    | ManageKeys
                    | ManageBindings
                    | ManageSecrets
                    | ReadAudit
                    | PreemptJobs
                    | UseSecrets
            ),
            Role::PlatformAdmin => true,
            Role::SecretUser => matches!(action, ReadProject | UseSecrets),
        }
    }
}

/// The roles that grant `action`, least privileged first (`platform-admin`, which grants everything, last).
pub fn roles_granting(action: Action) -> Vec<Role> {
    const BY_PRIVILEGE: [Role; 6] = [
        Role::Viewer,
        Role::Editor,
        Role::Deployer,
        Role::SecretUser,
        Role::ProjectAdmin,
        Role::PlatformAdmin,
    ];
    BY_PRIVILEGE
        .into_iter()
        .filter(|r| r.allows(action))
        .collect()
}

/// Which roles grant `action`, for a refusal: "the editor or project-admin role (or platform-admin)", or
/// "only the platform-admin role".
pub fn granted_by(action: Action) -> String {
    let roles: Vec<&str> = roles_granting(action)
        .into_iter()
        .filter(|r| *r != Role::PlatformAdmin)
        .map(Role::as_str)
        .collect();
    match roles.as_slice() {
        [] => "only the platform-admin role".to_owned(),
        [one] => format!("the {one} role (or platform-admin)"),
        [rest @ .., last] => format!("the {} or {last} role (or platform-admin)", rest.join(", ")),
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?} (expected viewer, editor, deployer, project-admin, platform-admin or secret-user)"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Something a route does; every route declares one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Read a project's objects (experiments, jobs, deployments, key and secret metadata, bindings).
    ReadProject,
    /// Create or change experiments, runs, models and pipelines.
    WriteExperiments,
    /// Submit and cancel the project's jobs.
    RunJobs,
    /// Create or change deployments, revisions and traffic.
    WriteServing,
    /// Create and revoke the project's API keys.
    ManageKeys,
    /// Bind and unbind roles in the project.
    ManageBindings,
    /// Put and delete the project's secrets.
    ManageSecrets,
    /// Read the audit log (a project's, or all of it with no project).
    ReadAudit,
    /// Create projects.
    CreateProject,
    /// Delete projects.
    DeleteProject,
    /// Read cluster status (members, leader, term).
    ClusterRead,
    /// Add and remove coordinators.
    ClusterMembership,
    /// Re-wrap data keys under a new master key.
    RotateMasterKey,
    /// Submit jobs that may evict other jobs (`preemption: true`).
    PreemptJobs,
    /// Change a project's policy: quotas, network, preemption ceiling.
    SetProjectPolicy,
    /// Reference the project's secrets in a job (which ones it gets still depends on their bindings).
    UseSecrets,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 16] = [
        Action::ReadProject,
        Action::WriteExperiments,
        Action::RunJobs,
        Action::WriteServing,
        Action::ManageKeys,
        Action::ManageBindings,
        Action::ManageSecrets,
        Action::ReadAudit,
        Action::CreateProject,
        Action::DeleteProject,
        Action::ClusterRead,
        Action::ClusterMembership,
        Action::RotateMasterKey,
        Action::PreemptJobs,
        Action::SetProjectPolicy,
        Action::UseSecrets,
    ];

    /// Platform actions are granted only by platform-scoped bindings.
    pub fn is_platform(self) -> bool {
        matches!(
            self,
            Action::CreateProject
                | Action::DeleteProject
                | Action::ClusterRead
                | Action::ClusterMembership
                | Action::RotateMasterKey
                | Action::SetProjectPolicy
        )
    }
}

/// Why [`authorize`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Denied {
    /// The principal is unknown or disabled (HTTP 401).
    #[error("unauthenticated")]
    Unauthenticated,
    /// The project does not exist, or the principal has no binding that lets it see it (HTTP 404).
    #[error("not found")]
    NotFound,
    /// The principal can see the project but its roles do not grant the action (HTTP 403).
    #[error("permission denied")]
    Forbidden,
}

/// Checks that `principal_id` may perform `action` in `project_id` (or platform-wide with `None`).
///
/// A platform-scoped binding applies in every project; platform actions need a platform-scoped binding
/// whose role grants them. A principal with neither a binding in the project nor any platform binding
/// gets [`Denied::NotFound`], exactly as if the project did not exist.
pub fn authorize(
    state: &RegistryState,
    principal_id: &str,
    project_id: Option<&str>,
    action: Action,
) -> Result<(), Denied> {
    let principal = state
        .principal(principal_id)
        .ok_or(Denied::Unauthenticated)?;
    if principal.disabled {
        return Err(Denied::Unauthenticated);
    }
    let bindings = state.bindings_of(principal_id);
    let platform: Vec<_> = bindings
        .iter()
        .filter(|b| b.scope == Scope::Platform)
        .collect();
    let Some(project_id) = project_id else {
        // Platform-wide: only platform bindings count.
        return if platform.iter().any(|b| b.role.allows(action)) {
            Ok(())
        } else {
            Err(Denied::Forbidden)
        };
    };
    if state.project(project_id).is_none() {
        return Err(Denied::NotFound);
    }
    let in_project: Vec<_> = bindings
        .iter()
        .filter(|b| b.scope.project_id().is_some_and(|p| p == project_id))
        .collect();
    if platform.is_empty() && in_project.is_empty() {
        return Err(Denied::NotFound);
    }
    let granted_by_platform = platform.iter().any(|b| b.role.allows(action));
    let granted_in_project =
        !action.is_platform() && in_project.iter().any(|b| b.role.allows(action));
    if granted_by_platform || granted_in_project {
        Ok(())
    } else {
        Err(Denied::Forbidden)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub principal_id: String,
    pub principal_name: String,
    /// The project the key belongs to (the default project for requests that name none).
    pub project_id: String,
    /// How the key narrows the principal's rights.
    pub limits: KeyLimits,
}

/// Checks that `caller` may perform `action` in `project_id` (or platform-wide with `None`): the principal's
/// bindings must grant it ([`authorize`]) and the key's limits must allow it. A project-scoped key sees no
/// other project (as if it did not exist) and no platform action; a key narrowed to roles grants only the
/// actions one of them allows.
pub fn authorize_caller(
    state: &RegistryState,
    caller: &Caller,
    project_id: Option<&str>,
    action: Action,
) -> Result<(), Denied> {
    if caller.limits.project_scoped {
        match project_id {
            None => return Err(Denied::Forbidden),
            Some(p) if p != caller.project_id => return Err(Denied::NotFound),
            Some(_) => {}
        }
    }
    authorize(state, &caller.principal_id, project_id, action)?;
    match &caller.limits.roles {
        Some(roles) if !roles.iter().any(|r| r.allows(action)) => Err(Denied::Forbidden),
        _ => Ok(()),
    }
}

/// The caller behind a command's actor, when it acted with a key that is still in the state.
pub fn caller_of(state: &RegistryState, actor: &Actor) -> Option<Caller> {
    let key = state.key_by_id(actor.key_id.as_deref()?)?;
    let principal = state.principal(&key.principal_id)?;
    Some(Caller {
        key_id: key.id.clone(),
        principal_id: principal.id.clone(),
        principal_name: principal.name.clone(),
        project_id: key.project_id.clone(),
        limits: key.limits.clone(),
    })
}

/// Whether `caller` holds every right `role` grants in `scope`. Nobody may grant a role beyond what they
/// hold: a binding (or a key's new service account) is made only when this is true. Roles compare by what
/// they allow, not by rank (an editor does not hold deployer).
pub fn holds_role(state: &RegistryState, caller: &Caller, scope: &Scope, role: Role) -> bool {
    // platform-admin is held platform-wide or not at all, whatever scope it is asked about.
    let project = match role {
        Role::PlatformAdmin => None,
        _ => scope.project_id().map(String::as_str),
    };
    Action::ALL
        .into_iter()
        .filter(|a| role.allows(*a))
        // In a project, platform actions are never granted by the binding, so they are not needed either.
        .filter(|a| project.is_none() || !a.is_platform())
        .all(|a| authorize_caller(state, caller, project, a).is_ok())
}

/// Whether `caller` holds `right` (`ManageKeys` to mint or revoke keys, `ManageBindings` to bind roles)
/// everywhere principal `principal_id` belongs or is bound: in its owning project (platform-wide for a
/// platform principal) and in every scope of its bindings (platform-wide for a platform binding). Managing a
/// principal hands out what it holds everywhere, so a project-admin cannot reach a principal that also acts
/// in a project they do not administer, nor a platform principal. The error says where the right is missing.
pub fn may_manage_principal(
    state: &RegistryState,
    caller: &Caller,
    principal_id: &str,
    right: Action,
) -> Result<(), String> {
    let principal = state
        .principal(principal_id)
        .ok_or_else(|| format!("principal {principal_id} not found"))?;
    let mut scopes: Vec<Option<&str>> = vec![principal.project_id.as_deref()];
    scopes.extend(
        state
            .bindings_of(principal_id)
            .into_iter()
            .map(|b| b.scope.project_id().map(String::as_str)),
    );
    scopes.sort_unstable();
    scopes.dedup();
    for scope in scopes {
        if authorize_caller(state, caller, scope, right).is_err() {
            return Err(match scope {
                None => format!(
                    "principal {principal_id} belongs to or is bound on the platform; managing it needs \
                     platform-admin"
                ),
                Some(p) => format!(
                    "principal {principal_id} belongs to or is bound in project {p}, where you lack {}",
                    action_label(right)
                ),
            });
        }
    }
    Ok(())
}

/// Whether `caller` may bind `role` to `principal_id` in `scope`: the right to bind there, the role itself
/// held there, and the right to manage the principal wherever it is bound.
pub fn check_bind(
    state: &RegistryState,
    caller: &Caller,
    principal_id: &str,
    scope: &Scope,
    role: Role,
) -> Result<(), String> {
    let project = scope.project_id().map(String::as_str);
    if authorize_caller(state, caller, project, Action::ManageBindings).is_err() {
        return Err(match project {
            None => "platform-wide bindings need platform-admin".to_owned(),
            Some(p) => format!("binding roles in project {p} needs manage-bindings"),
        });
    }
    if !holds_role(state, caller, scope, role) {
        return Err(format!(
            "you cannot bind {role}: you do not hold all of its rights in {}",
            scope_label(scope)
        ));
    }
    may_manage_principal(state, caller, principal_id, Action::ManageBindings)
}

/// Whether `caller` may create a key in `project_id` for `principal`, binding `role` to it, with expiry
/// `expires_at`: the right to manage keys there; for an existing principal, the right to manage it wherever
/// it is bound; a role only if the caller holds it there; and a key that never expires only from a
/// platform-admin.
pub fn check_key(
    state: &RegistryState,
    caller: &Caller,
    project_id: &str,
    principal: &KeyPrincipal,
    role: Option<Role>,
    expires_at: Option<u64>,
) -> Result<(), String> {
    if authorize_caller(state, caller, Some(project_id), Action::ManageKeys).is_err() {
        return Err(format!(
            "creating keys in project {project_id} needs manage-keys"
        ));
    }
    if expires_at.is_none() && !is_platform_admin(state, caller) {
        return Err("only a platform-admin may create a key that never expires".to_owned());
    }
    let scope = Scope::Project(project_id.to_owned());
    if let Some(role) = role {
        if !holds_role(state, caller, &scope, role) {
            return Err(format!(
                "you cannot bind {role}: you do not hold all of its rights in {}",
                scope_label(&scope)
            ));
        }
    }
    match principal {
        KeyPrincipal::Existing { principal_id } => {
            may_manage_principal(state, caller, principal_id, Action::ManageKeys)
        }
        KeyPrincipal::NewServiceAccount { .. } => Ok(()),
    }
}

/// Whether `caller` acts as a platform-admin (bound so platform-wide, and its key not narrowed below it).
pub fn is_platform_admin(state: &RegistryState, caller: &Caller) -> bool {
    holds_role(state, caller, &Scope::Platform, Role::PlatformAdmin)
}

fn scope_label(scope: &Scope) -> String {
    match scope {
        Scope::Platform => "the platform".to_owned(),
        Scope::Project(p) => format!("project {p}"),
    }
}

fn action_label(action: Action) -> String {
    match serde_json::to_value(action) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{action:?}"),
    }
}

impl Caller {
    /// The actor to stamp on commands this caller causes.
    pub fn actor(&self) -> Actor {
        Actor::principal(self.principal_id.clone(), self.principal_name.clone())
            .with_key(self.key_id.clone())
    }
}

/// Why a bearer token was not accepted. The API answers 401 for all of them without saying which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown key")]
    UnknownKey,
    #[error("token does not match the key")]
    Mismatch,
    #[error("key revoked")]
    Revoked,
    #[error("key expired")]
    Expired,
    #[error("principal disabled")]
    Disabled,
}

/// Authenticates a bearer token against the local replica: parses it, finds the key, compares the token's
/// SHA-256 with the stored hash in constant time, and checks revocation, expiry at `now_ms` and the
/// principal.
pub fn authenticate(state: &RegistryState, token: &str, now_ms: u64) -> Result<Caller, AuthnError> {
    let parsed = token::parse_token(token).map_err(|_| AuthnError::Malformed)?;
    let key = state
        .key_by_id(&parsed.key_id)
        .ok_or(AuthnError::UnknownKey)?;
    if !token::verify_token(token, &key.hash) {
        return Err(AuthnError::Mismatch);
    }
    match key.state_at(now_ms) {
        KeyState::Active => {}
        KeyState::Revoked => return Err(AuthnError::Revoked),
        KeyState::Expired => return Err(AuthnError::Expired),
    }
    let principal = state
        .principal(&key.principal_id)
        .ok_or(AuthnError::Disabled)?;
    if principal.disabled {
        return Err(AuthnError::Disabled);
    }
    Ok(Caller {
        key_id: key.id.clone(),
        principal_id: principal.id.clone(),
        principal_name: principal.name.clone(),
        project_id: key.project_id.clone(),
        limits: key.limits.clone(),
    })
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::state::{Command, KeyPrincipal, Op, TenancyOp, WrappedKey};

    #[test]
    fn a_refusal_names_the_roles_that_grant_the_action() {
        assert_eq!(
            granted_by(Action::RunJobs),
            "the editor or project-admin role (or platform-admin)"
        );
        assert_eq!(
            granted_by(Action::UseSecrets),
            "the secret-user or project-admin role (or platform-admin)"
        );
        assert_eq!(
            granted_by(Action::ReadProject),
            "the viewer, editor, deployer, secret-user or project-admin role (or platform-admin)"
        );
        assert_eq!(
            granted_by(Action::ClusterMembership),
            "only the platform-admin role"
        );
        for action in Action::ALL {
            assert!(roles_granting(action).iter().all(|r| r.allows(action)));
            assert!(roles_granting(action).contains(&Role::PlatformAdmin));
        }
    }

    const T0: u64 = 1_700_000_000_000;

    /// The matrix as the product defines it, written out independently of `Role::allows`.
    fn spec_allows(role: Role, action: Action) -> bool {
        let allowed: &[&str] = match role {
            Role::Viewer => &["read-project"],
            Role::Editor => &["read-project", "write-experiments", "run-jobs"],
            Role::Deployer => &["read-project", "write-serving"],
            Role::ProjectAdmin => &[
                "read-project",
                "write-experiments",
                "run-jobs",
                "write-serving",
                "manage-keys",
                "manage-bindings",
                "manage-secrets",
                "read-audit",
                "preempt-jobs",
                "use-secrets",
            ],
            Role::SecretUser => &["read-project", "use-secrets"],
            Role::PlatformAdmin => &[
                "read-project",
                "write-experiments",
                "run-jobs",
                "write-serving",
                "manage-keys",
                "manage-bindings",
                "manage-secrets",
                "read-audit",
                "create-project",
                "delete-project",
                "cluster-read",
                "cluster-membership",
                "rotate-master-key",
                "preempt-jobs",
                "set-project-policy",
                "use-secrets",
            ],
        };
        let name = serde_json::to_value(action).expect("action serializes");
        allowed.iter().any(|a| name == *a)
    }

    fn wk(tag: &str) -> WrappedKey {
        WrappedKey {
            master_key_id: "mk1".into(),
            nonce_b64: "AAAA".into(),
            ciphertext_b64: tag.into(),
        }
    }

    fn apply(s: &mut RegistryState, op: Op) {
        let index = s.applied_index + 1;
        let out = s.apply(index, &Command::new(T0 + index, Actor::system(), op));
        assert!(out.is_ok(), "{out:?}");
    }

    fn new_key(
        s: &mut RegistryState,
        key_id: &str,
        project: &str,
        principal: &str,
        role: Option<Role>,
    ) {
        apply(
            s,
            Op::Tenancy(TenancyOp::CreateKey {
                key_id: key_id.into(),
                name: key_id.into(),
                project_id: project.into(),
                hash: token::hash_token(key_id),
                last4: "abcd".into(),
                expires_at: None,
                principal: KeyPrincipal::NewServiceAccount {
                    principal_id: principal.into(),
                    name: principal.into(),
                },
                role,
                limits: crate::state::KeyLimits::default(),
            }),
        );
    }

    /// Projects A and B; for every role a principal bound in A and one bound platform-wide (where the role
    /// allows it); a principal with no binding and a disabled one.
    fn world() -> RegistryState {
        let mut s = RegistryState::default();
        apply(
            &mut s,
            Op::Tenancy(TenancyOp::Bootstrap {
                default_project_id: "prj_default".into(),
                default_data_key: wk("d"),
                admin_principal_id: "sa_root".into(),
                admin_principal_name: "root".into(),
                admin_key_id: "root".into(),
                admin_key_hash: token::hash_token("root"),
                admin_key_last4: "abcd".into(),
            }),
        );
        for (id, name) in [("prj_a", "aaa"), ("prj_b", "bbb")] {
            apply(
                &mut s,
                Op::Tenancy(TenancyOp::CreateProject {
                    id: id.into(),
                    name: name.into(),
                    description: String::new(),
                    data_key: wk(id),
                    policy: None,
                }),
            );
        }
        for role in Role::ALL {
            if role != Role::PlatformAdmin {
                new_key(
                    &mut s,
                    &format!("p{}", role as u8),
                    "prj_a",
                    &format!("in_a_{role}"),
                    Some(role),
                );
            }
            let platform = format!("plat_{role}");
            new_key(
                &mut s,
                &format!("g{}", role as u8),
                "prj_default",
                &platform,
                None,
            );
            apply(
                &mut s,
                Op::Tenancy(TenancyOp::BindRole {
                    principal_id: platform,
                    scope: Scope::Platform,
                    role,
                }),
            );
        }
        new_key(&mut s, "nobind", "prj_a", "no_binding", None);
        new_key(&mut s, "off", "prj_a", "disabled", Some(Role::ProjectAdmin));
        apply(
            &mut s,
            Op::Tenancy(TenancyOp::SetPrincipalDisabled {
                id: "disabled".into(),
                disabled: true,
            }),
        );
        s
    }

    #[test]
    fn role_table_matches_the_product_matrix() {
        for role in Role::ALL {
            for action in Action::ALL {
                assert_eq!(
                    role.allows(action),
                    spec_allows(role, action),
                    "{role} / {action:?}"
                );
            }
        }
        for action in Action::ALL {
            if Role::Viewer.allows(action) {
                assert!(
                    Role::Editor.allows(action) && Role::Deployer.allows(action),
                    "viewer ⊂ editor, deployer"
                );
            }
            if Role::Editor.allows(action) || Role::Deployer.allows(action) {
                assert!(
                    Role::ProjectAdmin.allows(action),
                    "project-admin ⊇ editor ∪ deployer"
                );
            }
            assert!(Role::PlatformAdmin.allows(action));
            if action.is_platform() {
                assert!(Role::ALL
                    .iter()
                    .filter(|r| r.allows(action))
                    .eq([Role::PlatformAdmin].iter()));
            }
        }
    }

    #[test]
    fn secrets_are_used_only_by_those_given_the_right_explicitly() {
        let users: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| r.allows(Action::UseSecrets))
            .collect();
        assert_eq!(
            users,
            [Role::ProjectAdmin, Role::PlatformAdmin, Role::SecretUser]
        );
        assert!(
            !Role::Editor.allows(Action::UseSecrets),
            "running jobs does not imply using secrets"
        );
        assert!(!Action::UseSecrets.is_platform());
    }

    #[test]
    fn jobs_are_run_by_editors_and_admins_and_read_by_everyone() {
        let runners: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| r.allows(Action::RunJobs))
            .collect();
        assert_eq!(
            runners,
            [Role::Editor, Role::ProjectAdmin, Role::PlatformAdmin]
        );
        assert!(!Action::RunJobs.is_platform());
        assert!(Role::ALL.iter().all(|r| r.allows(Action::ReadProject)));
    }

    #[test]
    fn authorize_matrix_is_exhaustive() {
        let s = world();
        let projects = [Some("prj_a"), Some("prj_b"), Some("prj_missing"), None];
        let mut checked = 0;
        for role in Role::ALL {
            for action in Action::ALL {
                for project in projects {
                    // Bound in project A.
                    if role != Role::PlatformAdmin {
                        let expected = match project {
                            Some("prj_a") if spec_allows(role, action) && !action.is_platform() => {
                                Ok(())
                            }
                            Some("prj_a") | None => Err(Denied::Forbidden),
                            Some(_) => Err(Denied::NotFound),
                        };
                        let got = authorize(&s, &format!("in_a_{role}"), project, action);
                        assert_eq!(got, expected, "{role} in A, {action:?} on {project:?}");
                        checked += 1;
                    }
                    // Bound platform-wide.
                    let expected = match project {
                        Some("prj_missing") => Err(Denied::NotFound),
                        _ if spec_allows(role, action) => Ok(()),
                        _ => Err(Denied::Forbidden),
                    };
                    let got = authorize(&s, &format!("plat_{role}"), project, action);
                    assert_eq!(got, expected, "platform {role}, {action:?} on {project:?}");
                    checked += 1;
                }
            }
        }
        for action in Action::ALL {
            for project in projects {
                let expected = if project.is_some() {
                    Err(Denied::NotFound)
                } else {
                    Err(Denied::Forbidden)
                };
                assert_eq!(
                    authorize(&s, "no_binding", project, action),
                    expected,
                    "{action:?} {project:?}"
                );
                assert_eq!(
                    authorize(&s, "disabled", project, action),
                    Err(Denied::Unauthenticated)
                );
                assert_eq!(
                    authorize(&s, "nobody", project, action),
                    Err(Denied::Unauthenticated)
                );
                checked += 3;
            }
        }
        let actions = Action::ALL.len();
        assert_eq!(checked, (5 + 6) * actions * 4 + 3 * actions * 4);
    }

    #[test]
    fn roles_parse_print_and_serialize_in_kebab_case() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
            let json = serde_json::to_string(&role).expect("role serializes");
            assert_eq!(json, format!("\"{role}\""));
        }
        assert_eq!("project-admin".parse::<Role>(), Ok(Role::ProjectAdmin));
        assert!("admin".parse::<Role>().is_err());
        assert!("Viewer".parse::<Role>().is_err());
        assert!(serde_json::from_str::<Role>("\"platform_admin\"").is_err());
    }

    #[test]
    fn authenticate_checks_hash_state_and_principal() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut s = world();
        let t = token::generate_token(&mut rng);
        let op = |expires_at| {
            Op::Tenancy(TenancyOp::CreateKey {
                key_id: t.key_id.clone(),
                name: "ci".into(),
                project_id: "prj_a".into(),
                hash: t.hash.clone(),
                last4: t.last4.clone(),
                expires_at,
                principal: KeyPrincipal::NewServiceAccount {
                    principal_id: "sa_ci".into(),
                    name: "ci".into(),
                },
                role: Some(Role::Editor),
                limits: crate::state::KeyLimits::default(),
            })
        };
        apply(&mut s, op(Some(T0 + 1_000_000)));
        let caller = authenticate(&s, &t.token, T0 + 10).expect("valid token");
        assert_eq!(
            (caller.principal_id.as_str(), caller.project_id.as_str()),
            ("sa_ci", "prj_a")
        );
        assert_eq!(
            caller.actor(),
            Actor::principal("sa_ci", "ci").with_key(t.key_id.clone())
        );
        assert_eq!(
            authenticate(&s, &t.token, T0 + 1_000_000),
            Err(AuthnError::Expired)
        );

        let other = token::generate_token(&mut rng);
        let forged = format!(
            "mrd_{}_{}",
            t.key_id,
            other.token.splitn(3, '_').nth(2).unwrap_or_default()
        );
        assert_eq!(authenticate(&s, &forged, T0), Err(AuthnError::Mismatch));
        assert_eq!(
            authenticate(&s, &other.token, T0),
            Err(AuthnError::UnknownKey)
        );
        assert_eq!(
            authenticate(&s, "Bearer nonsense", T0),
            Err(AuthnError::Malformed)
        );
        assert_eq!(authenticate(&s, "", T0), Err(AuthnError::Malformed));

        apply(
            &mut s,
            Op::Tenancy(TenancyOp::SetPrincipalDisabled {
                id: "sa_ci".into(),
                disabled: true,
            }),
        );
        assert_eq!(authenticate(&s, &t.token, T0), Err(AuthnError::Disabled));
        apply(
            &mut s,
            Op::Tenancy(TenancyOp::SetPrincipalDisabled {
                id: "sa_ci".into(),
                disabled: false,
            }),
        );
        assert!(authenticate(&s, &t.token, T0).is_ok());
        apply(
            &mut s,
            Op::Tenancy(TenancyOp::RevokeKey {
                key_id: t.key_id.clone(),
            }),
        );
        assert_eq!(authenticate(&s, &t.token, T0), Err(AuthnError::Revoked));
    }
}
