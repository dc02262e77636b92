//! Tenancy records and their mutations: projects, principals, API keys and role bindings.
//!
//! Owns name/id validation and the rules that keep tenancy consistent (unique names, deleting only empty
//! projects, never locking out the last platform admin). Never sees a key's token, only its SHA-256 hash.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Applied, DomainError, Outcome, PolicyUpdate, ProjectPolicy, RegistryState, Subject, WrappedKey,
};
use crate::authz::Role;

/// The tenancy domain's commands: projects, principals, API keys, role bindings and project policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenancyOp {
    /// First start: creates project `default`, a platform-admin service account and its key. Refused once
    /// bootstrapped.
    Bootstrap {
        default_project_id: String,
        default_data_key: WrappedKey,
        admin_principal_id: String,
        admin_principal_name: String,
        admin_key_id: String,
        /// Hex SHA-256 of the full admin token.
        admin_key_hash: String,
        admin_key_last4: String,
    },
    /// Creates a project with its (wrapped) data key.
    CreateProject {
        id: String,
        name: String,
        description: String,
        data_key: WrappedKey,
        /// The new project's policy (the coordinator's configured defaults); `None` in entries written before
        /// policies existed, which then get [`ProjectPolicy::BUILTIN`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<ProjectPolicy>,
    },
    /// Deletes a project that holds no active keys, no secrets and no unfinished jobs; its principals,
    /// revoked keys, role bindings and finished jobs go with it.
    DeleteProject { id: String },
    /// Creates a user or service account owned by a project.
    CreatePrincipal {
        id: String,
        kind: PrincipalKind,
        name: String,
        project_id: String,
    },
    /// Disables or re-enables a principal (a disabled principal's keys stop working).
    SetPrincipalDisabled { id: String, disabled: bool },
    /// Creates an API key, optionally with a new service account, and binds `role` in the key's project.
    CreateKey {
        key_id: String,
        name: String,
        project_id: String,
        /// Hex SHA-256 of the full token.
        hash: String,
        last4: String,
        expires_at: Option<u64>,
        principal: KeyPrincipal,
        role: Option<Role>,
        /// How the key narrows its principal's rights (absent: not at all).
        #[serde(default, skip_serializing_if = "KeyLimits::is_none")]
        limits: KeyLimits,
    },
    /// Revokes a key (at `at_ms`).
    RevokeKey { key_id: String },
    /// Grants `role` to a principal in `scope`.
    BindRole {
        principal_id: String,
        scope: Scope,
        role: Role,
    },
    /// Removes a role binding.
    UnbindRole { binding_id: String },
    /// A platform-admin changes a project's policy (quotas, network, preemption ceiling): the fields of
    /// `update` replace the current ones.
    SetProjectPolicy {
        project_id: String,
        update: PolicyUpdate,
    },
}

/// What a tenancy command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenancyOutcome {
    /// Bootstrap created these.
    Bootstrapped {
        project: ProjectView,
        principal: Principal,
        key: ApiKeyView,
    },
    /// A project was created.
    Project { project: ProjectView },
    /// A principal was created or changed.
    Principal { principal: Principal },
    /// A key was created, with its principal and the binding made for it (if any was requested).
    KeyCreated {
        key: ApiKeyView,
        principal: Principal,
        binding: Option<RoleBinding>,
    },
    /// A key changed (revoked).
    Key { key: ApiKeyView },
    /// A role binding was created.
    Binding { binding: RoleBinding },
}

impl RegistryState {
    /// Applies one tenancy command (already checked against its actor by `apply`).
    pub(super) fn execute_tenancy(
        &mut self,
        op: &TenancyOp,
        at: u64,
    ) -> Result<Applied, DomainError> {
        match op {
            TenancyOp::Bootstrap {
                default_project_id,
                default_data_key,
                admin_principal_id,
                admin_principal_name,
                admin_key_id,
                admin_key_hash,
                admin_key_last4,
            } => self.tenancy.bootstrap(
                at,
                BootstrapSpec {
                    project_id: default_project_id,
                    data_key: default_data_key,
                    principal_id: admin_principal_id,
                    principal_name: admin_principal_name,
                    key_id: admin_key_id,
                    key_hash: admin_key_hash,
                    key_last4: admin_key_last4,
                },
            ),
            TenancyOp::CreateProject {
                id,
                name,
                description,
                data_key,
                policy,
            } => self
                .tenancy
                .create_project(at, id, name, description, data_key, policy.as_ref()),
            TenancyOp::DeleteProject { id } => self.delete_project(id),
            TenancyOp::CreatePrincipal {
                id,
                kind,
                name,
                project_id,
            } => self
                .tenancy
                .create_principal(at, id, *kind, name, project_id),
            TenancyOp::SetPrincipalDisabled { id, disabled } => {
                self.tenancy.set_principal_disabled(at, id, *disabled)
            }
            TenancyOp::CreateKey {
                key_id,
                name,
                project_id,
                hash,
                last4,
                expires_at,
                principal,
                role,
                limits,
            } => self.tenancy.create_key(
                at,
                KeySpec {
                    key_id,
                    name,
                    project_id,
                    hash,
                    last4,
                    expires_at: *expires_at,
                    principal,
                    role: *role,
                    limits,
                },
            ),
            TenancyOp::RevokeKey { key_id } => self.tenancy.revoke_key(at, key_id),
            TenancyOp::BindRole {
                principal_id,
                scope,
                role,
            } => self.tenancy.bind_role(at, principal_id, scope, *role),
            TenancyOp::UnbindRole { binding_id } => self.tenancy.unbind_role(at, binding_id),
            TenancyOp::SetProjectPolicy { project_id, update } => {
                self.tenancy.set_project_policy(project_id, update)
            }
        }
    }
}

impl TenancyOp {
    /// What the audit log records this command as.
    pub(super) fn subject(&self) -> Subject {
        let s = Subject::of;
        match self {
            TenancyOp::Bootstrap {
                default_project_id,
                admin_principal_id,
                ..
            } => s(
                "system.bootstrap",
                Some(default_project_id),
                admin_principal_id,
            ),
            TenancyOp::CreateProject { id, name, .. } => s("project.create", Some(id), name),
            TenancyOp::DeleteProject { id } => s("project.delete", Some(id), id),
            TenancyOp::CreatePrincipal { id, project_id, .. } => {
                s("principal.create", Some(project_id), id)
            }
            TenancyOp::SetPrincipalDisabled { id, disabled } => s(
                if *disabled {
                    "principal.disable"
                } else {
                    "principal.enable"
                },
                None,
                id,
            ),
            TenancyOp::CreateKey {
                key_id, project_id, ..
            } => s("key.create", Some(project_id), key_id),
            TenancyOp::RevokeKey { key_id } => s("key.revoke", None, key_id),
            TenancyOp::BindRole {
                principal_id,
                scope,
                ..
            } => s("role.bind", scope.project_id(), principal_id),
            TenancyOp::UnbindRole { binding_id } => s("role.unbind", None, binding_id),
            TenancyOp::SetProjectPolicy { project_id, .. } => {
                s("project.policy.set", Some(project_id), project_id)
            }
        }
    }
}

/// Name of the project created at bootstrap.
pub const DEFAULT_PROJECT_NAME: &str = "default";

/// A project: the unit of tenancy. Every stored object carries its project id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: String,
    pub created_at: u64,
    /// The project's data key, wrapped by a master key. Never shown to callers.
    pub data_key: WrappedKey,
    /// Quotas, network and preemption ceiling; set only by a platform-admin.
    #[serde(default)]
    pub policy: ProjectPolicy,
}

/// A project as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Project))]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub created_at: u64,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub policy: ProjectPolicy,
}

impl Project {
    /// The caller-facing view (no data key).
    pub fn view(&self) -> ProjectView {
        ProjectView {
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            created_at: self.created_at,
            policy: self.policy,
        }
    }
}

/// Users are people; service accounts are workloads and automation (every key made with a new account).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PrincipalKind {
    User,
    ServiceAccount,
}

/// Someone or something that holds keys and role bindings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Principal {
    pub id: String,
    pub kind: PrincipalKind,
    pub name: String,
    /// The project that owns it; `None` for a principal of the platform itself (the bootstrap
    /// platform-admin), which no project lists and no project-admin manages.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub project_id: Option<String>,
    pub created_at: u64,
    pub disabled: bool,
}

impl Principal {
    /// Whether `project_id` owns this principal.
    pub fn is_owned_by(&self, project_id: &str) -> bool {
        self.project_id.as_deref() == Some(project_id)
    }
}

/// What a key narrows its principal's rights to. The default narrows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// The key grants only actions these roles allow (and the principal's bindings grant); `None` for
    /// whatever the bindings grant. Sorted, unique, never empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
    /// The key acts only in its own project: another project answers 404 and platform actions 403.
    #[serde(default, skip_serializing_if = "is_false")]
    pub project_scoped: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl KeyLimits {
    /// True when the key narrows nothing (so older keys and commands read the same).
    pub fn is_none(&self) -> bool {
        self.roles.is_none() && !self.project_scoped
    }

    /// Checks the limits before they enter the state: an allow-list names at least one role, each once.
    pub fn validate(&self) -> Result<(), DomainError> {
        if let Some(roles) = &self.roles {
            if roles.is_empty() {
                return Err(DomainError::invalid(
                    "roles",
                    "must name at least one role (leave it out for all of the principal's roles)",
                ));
            }
            if roles.windows(2).any(|w| w[0] >= w[1]) {
                return Err(DomainError::invalid("roles", "must be sorted and unique"));
            }
        }
        Ok(())
    }
}

/// An API key as stored: the token itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub principal_id: String,
    pub project_id: String,
    pub name: String,
    /// Hex SHA-256 of the full token. Never shown to callers.
    pub hash: String,
    /// The token's last four characters, to help people recognise it.
    pub last4: String,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
    /// How the key narrows its principal's rights.
    #[serde(default, skip_serializing_if = "KeyLimits::is_none")]
    pub limits: KeyLimits,
}

/// Whether a key can be used at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
}

impl ApiKey {
    /// The key's state at `now_ms` (revocation wins over expiry).
    pub fn state_at(&self, now_ms: u64) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if self.expires_at.is_some_and(|e| now_ms >= e) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// The caller-facing view (no hash).
    pub fn view(&self) -> ApiKeyView {
        ApiKeyView {
            id: self.id.clone(),
            prefix: format!("mrd_{}_", self.id),
            principal_id: self.principal_id.clone(),
            project_id: self.project_id.clone(),
            name: self.name.clone(),
            last4: self.last4.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            roles: self.limits.roles.clone(),
            project_scoped: self.limits.project_scoped,
        }
    }
}

/// An API key as callers see it: never the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ApiKey))]
pub struct ApiKeyView {
    pub id: String,
    /// `mrd_<id>_`, the token's public prefix.
    pub prefix: String,
    pub principal_id: String,
    pub project_id: String,
    pub name: String,
    pub last4: String,
    pub created_at: u64,
    /// `None`: the key never expires (only a platform-admin may make such a key).
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
    /// The roles the key is narrowed to: it grants only what one of them allows (and the principal's
    /// bindings grant); `None` for all of the principal's roles.
    pub roles: Option<Vec<Role>>,
    /// The key acts only in `project_id`: other projects answer 404, platform actions 403.
    pub project_scoped: bool,
}

/// Where a role binding applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everywhere, including platform-wide actions.
    Platform,
    /// One project, by id.
    Project(String),
}

impl Scope {
    /// The project id, for a project scope.
    pub fn project_id(&self) -> Option<&String> {
        match self {
            Scope::Platform => None,
            Scope::Project(p) => Some(p),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Platform => f.write_str("platform"),
            Scope::Project(p) => write!(f, "project:{p}"),
        }
    }
}

/// A grant of one role to one principal in one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleBinding {
    /// Derived from (principal, scope, role), see [`RoleBinding::id_for`].
    pub id: String,
    pub principal_id: String,
    pub scope: Scope,
    pub role: Role,
    pub created_at: u64,
}

impl RoleBinding {
    /// The binding id for a (principal, scope, role) triple: `rb_` and 16 hex digits of its SHA-256, so the same
    /// grant always has the same id on every replica and cannot be duplicated.
    pub fn id_for(principal_id: &str, scope: &Scope, role: Role) -> String {
        let mut h = Sha256::new();
        h.update(principal_id.as_bytes());
        h.update([0]);
        h.update(scope.to_string().as_bytes());
        h.update([0]);
        h.update(role.to_string().as_bytes());
        let digest = hex::encode(h.finalize());
        format!("rb_{}", &digest[..16])
    }
}

/// Whose key `Op::CreateKey` makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPrincipal {
    /// An existing principal of the key's project.
    Existing { principal_id: String },
    /// A new service account in the key's project, created in the same command.
    NewServiceAccount { principal_id: String, name: String },
}

pub struct BootstrapSpec<'a> {
    pub project_id: &'a str,
    pub data_key: &'a WrappedKey,
    pub principal_id: &'a str,
    pub principal_name: &'a str,
    pub key_id: &'a str,
    pub key_hash: &'a str,
    pub key_last4: &'a str,
}

pub struct KeySpec<'a> {
    pub key_id: &'a str,
    pub name: &'a str,
    pub project_id: &'a str,
    pub hash: &'a str,
    pub last4: &'a str,
    pub expires_at: Option<u64>,
    pub principal: &'a KeyPrincipal,
    pub role: Option<Role>,
    pub limits: &'a KeyLimits,
}

/// A change that might leave the platform without a usable admin.
enum AdminChange<'a> {
    DisablePrincipal(&'a str),
    RemoveBinding(&'a str),
    RevokeKey(&'a str),
}

// ---- validation -------------------------------------------------------------------------------------------

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Project names: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn validate_project_name(name: &str) -> Result<(), DomainError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(is_lower_alnum)
        && name.len() <= 63
        && chars.all(|c| is_lower_alnum(c) || c == '-');
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "name",
            "must match [a-z0-9][a-z0-9-]{0,62}",
        ))
    }
}

/// Object ids prepared by the coordinator: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn validate_id(field: &str, id: &str) -> Result<(), DomainError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "must be 1-64 characters of [A-Za-z0-9_-]",
        ))
    }
}

/// Key ids appear inside tokens between `_` separators: 1–32 characters of `[A-Za-z0-9]`.
pub fn validate_key_id(id: &str) -> Result<(), DomainError> {
    if !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "key_id",
            "must be 1-32 characters of [A-Za-z0-9]",
        ))
    }
}

/// Display names of keys and principals: `[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}`.
pub fn validate_display_name(field: &str, name: &str) -> Result<(), DomainError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "must match [A-Za-z0-9][A-Za-z0-9._@+-]{0,127}",
        ))
    }
}

fn validate_hash(hash: &str) -> Result<(), DomainError> {
    if hash.len() == 64
        && hash
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "hash",
            "must be 64 lowercase hex digits (SHA-256)",
        ))
    }
}

fn validate_last4(last4: &str) -> Result<(), DomainError> {
    if last4.len() == 4
        && last4
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "last4",
            "must be the token's last 4 characters",
        ))
    }
}

pub fn validate_description(description: &str) -> Result<(), DomainError> {
    if description.len() <= 1024 && !description.chars().any(|c| c.is_control() && c != '\n') {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "description",
            "at most 1024 characters, no control characters",
        ))
    }
}

pub fn validate_wrapped_key(field: &str, key: &WrappedKey) -> Result<(), DomainError> {
    validate_id(field, &key.master_key_id)?;
    if key.nonce_b64.is_empty() || key.ciphertext_b64.is_empty() || key.ciphertext_b64.len() > 256 {
        return Err(DomainError::invalid(
            field,
            "nonce and ciphertext must be present",
        ));
    }
    Ok(())
}

fn validate_binding(scope: &Scope, role: Role) -> Result<(), DomainError> {
    if role == Role::PlatformAdmin && *scope != Scope::Platform {
        return Err(DomainError::invalid(
            "role",
            "platform-admin can only be bound at platform scope",
        ));
    }
    Ok(())
}

// ---- mutations and reads ----------------------------------------------------------------------------------

/// Tenancy: this domain's state — projects, principals, API keys and role bindings, with the name index.
/// Only tenancy commands change it, through the methods below; deleting a project is the one change that
/// reaches other domains, and the registry routes it (`RegistryState::delete_project`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tenancy {
    default_project_id: Option<String>,
    projects: BTreeMap<String, Project>,
    /// Project name → id (names are unique), so name lookups do not scan every project.
    project_ids_by_name: BTreeMap<String, String>,
    principals: BTreeMap<String, Principal>,
    keys: BTreeMap<String, ApiKey>,
    bindings: BTreeMap<String, RoleBinding>,
}

/// Tenancy's records as a snapshot writes and reads them.
pub(super) struct TenancyParts {
    pub default_project_id: Option<String>,
    pub projects: BTreeMap<String, Project>,
    pub project_ids_by_name: BTreeMap<String, String>,
    pub principals: BTreeMap<String, Principal>,
    pub keys: BTreeMap<String, ApiKey>,
    pub bindings: BTreeMap<String, RoleBinding>,
}

impl Tenancy {
    /// Tenancy holding a snapshot's records.
    pub(super) fn from_parts(parts: TenancyParts) -> Tenancy {
        let TenancyParts {
            default_project_id,
            projects,
            project_ids_by_name,
            principals,
            keys,
            bindings,
        } = parts;
        Tenancy {
            default_project_id,
            projects,
            project_ids_by_name,
            principals,
            keys,
            bindings,
        }
    }

    /// The records, borrowed for a snapshot: default project, projects, name index, principals, keys,
    /// bindings.
    #[allow(clippy::type_complexity)]
    pub(super) fn parts(
        &self,
    ) -> (
        &Option<String>,
        &BTreeMap<String, Project>,
        &BTreeMap<String, String>,
        &BTreeMap<String, Principal>,
        &BTreeMap<String, ApiKey>,
        &BTreeMap<String, RoleBinding>,
    ) {
        (
            &self.default_project_id,
            &self.projects,
            &self.project_ids_by_name,
            &self.principals,
            &self.keys,
            &self.bindings,
        )
    }

    /// The principals, for tests that build states older builds wrote.
    #[cfg(test)]
    pub(super) fn principals_mut(&mut self) -> &mut BTreeMap<String, Principal> {
        &mut self.principals
    }

    /// The keys, for tests that build states older builds wrote.
    #[cfg(test)]
    pub(super) fn keys_mut(&mut self) -> &mut BTreeMap<String, ApiKey> {
        &mut self.keys
    }

    /// Every API key, by id (for project-scoped reads).
    pub fn keys(&self) -> &BTreeMap<String, ApiKey> {
        &self.keys
    }

    /// Every principal, by id (for project-scoped reads).
    pub fn principals(&self) -> &BTreeMap<String, Principal> {
        &self.principals
    }

    /// Every role binding, by id (for project-scoped reads).
    pub fn bindings(&self) -> &BTreeMap<String, RoleBinding> {
        &self.bindings
    }

    /// The id of project `default` (after bootstrap).
    pub fn default_project_id(&self) -> Option<&str> {
        self.default_project_id.as_deref()
    }

    /// Replaces a project's wrapped data key (master-key rotation); false for an unknown project.
    pub(super) fn set_data_key(&mut self, project_id: &str, key: &WrappedKey) -> bool {
        match self.projects.get_mut(project_id) {
            Some(project) => {
                project.data_key = key.clone();
                true
            }
            None => false,
        }
    }

    /// Moves a principal to the platform (no owning project).
    pub(super) fn move_principal_to_platform(&mut self, id: &str) {
        if let Some(p) = self.principals.get_mut(id) {
            p.project_id = None;
        }
    }

    pub fn bootstrap(&mut self, at: u64, spec: BootstrapSpec<'_>) -> Result<Applied, DomainError> {
        if self.default_project_id.is_some() {
            return Err(DomainError::FailedPrecondition(
                "already bootstrapped".to_owned(),
            ));
        }
        validate_id("default_project_id", spec.project_id)?;
        validate_wrapped_key("default_data_key", spec.data_key)?;
        validate_id("admin_principal_id", spec.principal_id)?;
        validate_display_name("admin_principal_name", spec.principal_name)?;
        validate_key_id(spec.key_id)?;
        validate_hash(spec.key_hash)?;
        validate_last4(spec.key_last4)?;
        // A fresh state holds nothing, but a snapshot restored from elsewhere might: keep ids unique anyway.
        if self.projects.contains_key(spec.project_id)
            || self.project_by_name(DEFAULT_PROJECT_NAME).is_some()
        {
            return Err(DomainError::exists("project", DEFAULT_PROJECT_NAME));
        }
        if self.principals.contains_key(spec.principal_id) {
            return Err(DomainError::exists("principal", spec.principal_id));
        }
        if self.keys.contains_key(spec.key_id) {
            return Err(DomainError::exists("key", spec.key_id));
        }
        let project = Project {
            id: spec.project_id.to_owned(),
            name: DEFAULT_PROJECT_NAME.to_owned(),
            description: "Created at bootstrap".to_owned(),
            created_at: at,
            data_key: spec.data_key.clone(),
            policy: ProjectPolicy::BUILTIN,
        };
        let principal = Principal {
            id: spec.principal_id.to_owned(),
            kind: PrincipalKind::ServiceAccount,
            name: spec.principal_name.to_owned(),
            // The operator's break-glass principal belongs to the platform, not to project `default`.
            project_id: None,
            created_at: at,
            disabled: false,
        };
        let key = ApiKey {
            id: spec.key_id.to_owned(),
            principal_id: spec.principal_id.to_owned(),
            project_id: spec.project_id.to_owned(),
            name: spec.principal_name.to_owned(),
            hash: spec.key_hash.to_owned(),
            last4: spec.key_last4.to_owned(),
            created_at: at,
            // The operator's break-glass key: it never expires and narrows nothing.
            expires_at: None,
            revoked_at: None,
            limits: KeyLimits::default(),
        };
        let binding = RoleBinding {
            id: RoleBinding::id_for(spec.principal_id, &Scope::Platform, Role::PlatformAdmin),
            principal_id: spec.principal_id.to_owned(),
            scope: Scope::Platform,
            role: Role::PlatformAdmin,
            created_at: at,
        };
        let outcome = Outcome::Tenancy(TenancyOutcome::Bootstrapped {
            project: project.view(),
            principal: principal.clone(),
            key: key.view(),
        });
        self.default_project_id = Some(project.id.clone());
        self.project_ids_by_name
            .insert(project.name.clone(), project.id.clone());
        self.projects.insert(project.id.clone(), project);
        self.principals.insert(principal.id.clone(), principal);
        self.keys.insert(key.id.clone(), key);
        self.bindings.insert(binding.id.clone(), binding);
        Ok(Applied::new(outcome, format!("admin key {}", spec.key_id)))
    }

    pub fn create_project(
        &mut self,
        at: u64,
        id: &str,
        name: &str,
        description: &str,
        data_key: &WrappedKey,
        policy: Option<&ProjectPolicy>,
    ) -> Result<Applied, DomainError> {
        validate_id("id", id)?;
        validate_project_name(name)?;
        validate_description(description)?;
        validate_wrapped_key("data_key", data_key)?;
        let policy = policy.copied().unwrap_or(ProjectPolicy::BUILTIN);
        policy.validate()?;
        if self.project_by_name(name).is_some() {
            return Err(DomainError::exists("project", name));
        }
        if self.projects.contains_key(id) {
            return Err(DomainError::exists("project", id));
        }
        let project = Project {
            id: id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            created_at: at,
            data_key: data_key.clone(),
            policy,
        };
        let view = project.view();
        self.project_ids_by_name
            .insert(name.to_owned(), id.to_owned());
        self.projects.insert(id.to_owned(), project);
        Ok(Applied::new(
            Outcome::Tenancy(TenancyOutcome::Project { project: view }),
            format!("name={name}"),
        ))
    }

    /// The checks of `DeleteProject` that tenancy owns: the project exists, is not `default` and has no
    /// active key. Returns its name.
    fn deletable(&self, id: &str) -> Result<String, DomainError> {
        let project = self
            .projects
            .get(id)
            .ok_or_else(|| DomainError::not_found("project", id))?;
        if self.default_project_id.as_deref() == Some(id) {
            return Err(DomainError::FailedPrecondition(
                "the default project cannot be deleted".to_owned(),
            ));
        }
        if self
            .keys
            .values()
            .any(|k| k.project_id == id && k.revoked_at.is_none())
        {
            return Err(DomainError::FailedPrecondition(format!(
                "project {} still has API keys; revoke them first",
                project.name
            )));
        }
        Ok(project.name.clone())
    }

    /// Removes a project with the principals it owns and their keys, and every binding in it or of them.
    fn remove_project(&mut self, id: &str) {
        let owned: BTreeSet<String> = self
            .principals
            .values()
            .filter(|p| p.is_owned_by(id))
            .map(|p| p.id.clone())
            .collect();
        self.keys
            .retain(|_, k| k.project_id != id && !owned.contains(&k.principal_id));
        self.bindings.retain(|_, b| {
            b.scope.project_id().map(String::as_str) != Some(id) && !owned.contains(&b.principal_id)
        });
        self.principals.retain(|pid, _| !owned.contains(pid));
        if let Some(project) = self.projects.remove(id) {
            self.project_ids_by_name.remove(&project.name);
        }
    }

    pub fn create_principal(
        &mut self,
        at: u64,
        id: &str,
        kind: PrincipalKind,
        name: &str,
        project_id: &str,
    ) -> Result<Applied, DomainError> {
        validate_id("id", id)?;
        validate_display_name("name", name)?;
        if !self.projects.contains_key(project_id) {
            return Err(DomainError::not_found("project", project_id));
        }
        if self.principals.contains_key(id) {
            return Err(DomainError::exists("principal", id));
        }
        let principal = Principal {
            id: id.to_owned(),
            kind,
            name: name.to_owned(),
            project_id: Some(project_id.to_owned()),
            created_at: at,
            disabled: false,
        };
        self.principals.insert(id.to_owned(), principal.clone());
        Ok(Applied::new(
            Outcome::Tenancy(TenancyOutcome::Principal { principal }),
            format!("name={name}"),
        ))
    }

    pub fn set_principal_disabled(
        &mut self,
        at: u64,
        id: &str,
        disabled: bool,
    ) -> Result<Applied, DomainError> {
        let current = self
            .principals
            .get(id)
            .ok_or_else(|| DomainError::not_found("principal", id))?;
        if current.disabled == disabled {
            let principal = current.clone();
            return Ok(Applied::new(
                Outcome::Tenancy(TenancyOutcome::Principal { principal }),
                "unchanged",
            ));
        }
        if disabled && !self.admins_remain_after(at, AdminChange::DisablePrincipal(id)) {
            return Err(DomainError::FailedPrecondition(
                "this would leave no usable platform-admin".to_owned(),
            ));
        }
        let Some(p) = self.principals.get_mut(id) else {
            return Err(DomainError::not_found("principal", id));
        };
        p.disabled = disabled;
        let principal = p.clone();
        Ok(Applied::new(
            Outcome::Tenancy(TenancyOutcome::Principal { principal }),
            format!("disabled={disabled}"),
        ))
    }

    pub fn create_key(&mut self, at: u64, spec: KeySpec<'_>) -> Result<Applied, DomainError> {
        validate_key_id(spec.key_id)?;
        validate_display_name("name", spec.name)?;
        validate_hash(spec.hash)?;
        validate_last4(spec.last4)?;
        if spec.expires_at.is_some_and(|e| e <= at) {
            return Err(DomainError::invalid("expires_at", "must be in the future"));
        }
        if !self.projects.contains_key(spec.project_id) {
            return Err(DomainError::not_found("project", spec.project_id));
        }
        if self.keys.contains_key(spec.key_id) {
            return Err(DomainError::exists("key", spec.key_id));
        }
        if self.keys.values().any(|k| {
            k.project_id == spec.project_id && k.name == spec.name && k.revoked_at.is_none()
        }) {
            return Err(DomainError::exists("key", spec.name));
        }
        if let Some(role) = spec.role {
            validate_binding(&Scope::Project(spec.project_id.to_owned()), role)?;
        }
        spec.limits.validate()?;
        let principal = match spec.principal {
            KeyPrincipal::Existing { principal_id } => {
                // A project's own principal, or a platform principal (whose keys may live in any project).
                let p = self
                    .principals
                    .get(principal_id)
                    .filter(|p| p.project_id.is_none() || p.is_owned_by(spec.project_id))
                    .ok_or_else(|| DomainError::not_found("principal", principal_id))?;
                if p.disabled {
                    return Err(DomainError::FailedPrecondition(format!(
                        "principal {principal_id} is disabled"
                    )));
                }
                p.clone()
            }
            KeyPrincipal::NewServiceAccount { principal_id, name } => {
                validate_id("principal_id", principal_id)?;
                validate_display_name("principal_name", name)?;
                if self.principals.contains_key(principal_id) {
                    return Err(DomainError::exists("principal", principal_id));
                }
                Principal {
                    id: principal_id.clone(),
                    kind: PrincipalKind::ServiceAccount,
                    name: name.clone(),
                    project_id: Some(spec.project_id.to_owned()),
                    created_at: at,
                    disabled: false,
                }
            }
        };
        let binding = spec.role.map(|role| {
            let scope = Scope::Project(spec.project_id.to_owned());
            let id = RoleBinding::id_for(&principal.id, &scope, role);
            self.bindings.get(&id).cloned().unwrap_or(RoleBinding {
                id,
                principal_id: principal.id.clone(),
                scope,
                role,
                created_at: at,
            })
        });
        let key = ApiKey {
            id: spec.key_id.to_owned(),
            principal_id: principal.id.clone(),
            project_id: spec.project_id.to_owned(),
            name: spec.name.to_owned(),
            hash: spec.hash.to_owned(),
            last4: spec.last4.to_owned(),
            created_at: at,
            expires_at: spec.expires_at,
            revoked_at: None,
            limits: spec.limits.clone(),
        };
        let detail = match spec.role {
            Some(role) => format!("principal={} role={role}", principal.id),
            None => format!("principal={}", principal.id),
        };
        let outcome = Outcome::Tenancy(TenancyOutcome::KeyCreated {
            key: key.view(),
            principal: principal.clone(),
            binding: binding.clone(),
        });
        self.principals
            .entry(principal.id.clone())
            .or_insert(principal);
        if let Some(b) = binding {
            self.bindings.entry(b.id.clone()).or_insert(b);
        }
        self.keys.insert(key.id.clone(), key);
        Ok(Applied::new(outcome, detail))
    }

    pub fn revoke_key(&mut self, at: u64, key_id: &str) -> Result<Applied, DomainError> {
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| DomainError::not_found("key", key_id))?;
        if key.revoked_at.is_some() {
            return Err(DomainError::FailedPrecondition(format!(
                "key {key_id} is already revoked"
            )));
        }
        let name = key.name.clone();
        if !self.admins_remain_after(at, AdminChange::RevokeKey(key_id)) {
            return Err(DomainError::FailedPrecondition(
                "this would leave no usable platform-admin key".to_owned(),
            ));
        }
        let Some(key) = self.keys.get_mut(key_id) else {
            return Err(DomainError::not_found("key", key_id));
        };
        key.revoked_at = Some(at);
        let view = key.view();
        Ok(Applied::new(
            Outcome::Tenancy(TenancyOutcome::Key { key: view }),
            format!("name={name}"),
        ))
    }

    pub fn bind_role(
        &mut self,
        at: u64,
        principal_id: &str,
        scope: &Scope,
        role: Role,
    ) -> Result<Applied, DomainError> {
        validate_binding(scope, role)?;
        if !self.principals.contains_key(principal_id) {
            return Err(DomainError::not_found("principal", principal_id));
        }
        if let Scope::Project(p) = scope {
            if !self.projects.contains_key(p) {
                return Err(DomainError::not_found("project", p));
            }
        }
        let id = RoleBinding::id_for(principal_id, scope, role);
        if self.bindings.contains_key(&id) {
            return Err(DomainError::exists("role binding", &id));
        }
        let binding = RoleBinding {
            id: id.clone(),
            principal_id: principal_id.to_owned(),
            scope: scope.clone(),
            role,
            created_at: at,
        };
        self.bindings.insert(id, binding.clone());
        Ok(Applied::new(
            Outcome::Tenancy(TenancyOutcome::Binding { binding }),
            format!("role={role} scope={scope}"),
        ))
    }

    pub fn unbind_role(&mut self, at: u64, binding_id: &str) -> Result<Applied, DomainError> {
        let binding = self
            .bindings
            .get(binding_id)
            .ok_or_else(|| DomainError::not_found("role binding", binding_id))?;
        let detail = format!(
            "principal={} role={} scope={}",
            binding.principal_id, binding.role, binding.scope
        );
        if !self.admins_remain_after(at, AdminChange::RemoveBinding(binding_id)) {
            return Err(DomainError::FailedPrecondition(
                "this would leave no usable platform-admin".to_owned(),
            ));
        }
        self.bindings.remove(binding_id);
        Ok(Applied::new(Outcome::Deleted, detail))
    }

    /// Counts principals that could act as platform-admin at `at` (enabled, bound platform-admin, holding an
    /// active key), with and without `change`; refuses a change that takes the count from some to none.
    fn admins_remain_after(&self, at: u64, change: AdminChange<'_>) -> bool {
        let count = |change: Option<&AdminChange<'_>>| {
            self.principals
                .values()
                .filter(|p| !p.disabled && !matches!(change, Some(AdminChange::DisablePrincipal(id)) if *id == p.id))
                .filter(|p| {
                    self.bindings.values().any(|b| {
                        b.principal_id == p.id
                            && b.scope == Scope::Platform
                            && b.role == Role::PlatformAdmin
                            && !matches!(change, Some(AdminChange::RemoveBinding(id)) if *id == b.id)
                    })
                })
                .filter(|p| {
                    self.keys.values().any(|k| {
                        k.principal_id == p.id
                            && k.state_at(at) == KeyState::Active
                            && !matches!(change, Some(AdminChange::RevokeKey(id)) if *id == k.id)
                    })
                })
                .count()
        };
        count(None) == 0 || count(Some(&change)) > 0
    }

    // ---- reads ----

    /// A project by id.
    pub fn project(&self, id: &str) -> Option<&Project> {
        self.projects.get(id)
    }

    /// A project by its unique name.
    pub fn project_by_name(&self, name: &str) -> Option<&Project> {
        self.project_ids_by_name
            .get(name)
            .and_then(|id| self.projects.get(id))
    }

    /// A project by id, or else by name (what the CLI's `--project` accepts).
    pub fn project_by_id_or_name(&self, id_or_name: &str) -> Option<&Project> {
        self.project(id_or_name)
            .or_else(|| self.project_by_name(id_or_name))
    }

    /// Every project, in id order (platform-wide listing; callers must check authorization).
    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.projects.values()
    }

    /// The projects a principal can see: all of them with any platform binding, else those it is bound in.
    pub fn projects_visible_to(&self, principal_id: &str) -> Vec<&Project> {
        let scopes: Vec<&Scope> = self
            .bindings
            .values()
            .filter(|b| b.principal_id == principal_id)
            .map(|b| &b.scope)
            .collect();
        if scopes.contains(&&Scope::Platform) {
            return self.projects.values().collect();
        }
        let ids: BTreeSet<&String> = scopes.iter().filter_map(|s| s.project_id()).collect();
        self.projects
            .values()
            .filter(|p| ids.contains(&p.id))
            .collect()
    }

    /// A key by id, with its hash (for authentication; never hand this to a caller, use [`ApiKey::view`]).
    pub fn key_by_id(&self, id: &str) -> Option<&ApiKey> {
        self.keys.get(id)
    }

    /// A principal by id.
    pub fn principal(&self, id: &str) -> Option<&Principal> {
        self.principals.get(id)
    }

    /// A role binding by id.
    pub fn binding(&self, id: &str) -> Option<&RoleBinding> {
        self.bindings.get(id)
    }

    /// Every role binding of a principal, in binding-id order.
    pub fn bindings_of(&self, principal_id: &str) -> Vec<&RoleBinding> {
        self.bindings
            .values()
            .filter(|b| b.principal_id == principal_id)
            .collect()
    }

    /// Platform-scoped bindings (platform listing).
    pub fn platform_bindings(&self) -> Vec<&RoleBinding> {
        self.bindings
            .values()
            .filter(|b| b.scope == Scope::Platform)
            .collect()
    }

    /// `Op::SetProjectPolicy`: replaces the fields `update` names.
    pub fn set_project_policy(
        &mut self,
        project_id: &str,
        update: &PolicyUpdate,
    ) -> Result<Applied, DomainError> {
        let project = self
            .projects
            .get(project_id)
            .ok_or_else(|| DomainError::not_found("project", project_id))?;
        if update.is_empty() {
            return Err(DomainError::invalid(
                "policy",
                "name at least one field to change",
            ));
        }
        let policy = project.policy.updated(update);
        policy.validate()?;
        let Some(project) = self.projects.get_mut(project_id) else {
            return Err(DomainError::not_found("project", project_id));
        };
        project.policy = policy;
        let view = project.view();
        Ok(Applied::new(
            Outcome::Tenancy(TenancyOutcome::Project { project: view }),
            update.describe(),
        ))
    }
}

impl RegistryState {
    /// `DeleteProject`: tenancy's checks, then the project must hold no secrets and no unfinished jobs;
    /// its principals, keys and bindings go (tenancy), with its finished jobs and usage archive (jobs,
    /// usage).
    pub fn delete_project(&mut self, id: &str) -> Result<Applied, DomainError> {
        let name = self.tenancy.deletable(id)?;
        if self.secrets.project_has_secrets(id) {
            return Err(DomainError::FailedPrecondition(format!(
                "project {name} still has secrets; delete them first"
            )));
        }
        if self.project_has_unfinished_jobs(id) {
            return Err(DomainError::FailedPrecondition(format!(
                "project {name} still has unfinished jobs; cancel them first"
            )));
        }
        self.tenancy.remove_project(id);
        self.secrets.forget_project(id);
        self.remove_project_jobs(id);
        Ok(Applied::new(Outcome::Deleted, format!("name={name}")))
    }

    /// Moves the bootstrap principal to the platform in a state written before it belonged there (it used
    /// to be owned by project `default`, which let that project's admins mint keys for it). The principal is
    /// the target of the first successful `system.bootstrap` audit record (remembered by the audit
    /// checkpoint once archived), so every replica finds the same one.
    pub fn migrate_bootstrap_principal(&mut self) {
        let Some(id) = self.audit.bootstrap_principal().map(str::to_owned) else {
            return;
        };
        self.tenancy.move_principal_to_platform(&id);
    }

    /// The bootstrap principal's id (the operator's break-glass platform-admin), once bootstrapped.
    pub fn bootstrap_principal_id(&self) -> Option<&str> {
        self.audit.bootstrap_principal()
    }

    /// A project by id.
    pub fn project(&self, id: &str) -> Option<&Project> {
        self.tenancy.project(id)
    }

    /// A project by its unique name.
    pub fn project_by_name(&self, name: &str) -> Option<&Project> {
        self.tenancy.project_by_name(name)
    }

    /// A project by id, else by name.
    pub fn project_by_id_or_name(&self, id_or_name: &str) -> Option<&Project> {
        self.tenancy.project_by_id_or_name(id_or_name)
    }

    /// Every project, in id order.
    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.tenancy.projects()
    }

    /// The projects a principal can see: all of them with any platform binding, else those it is bound in.
    pub fn projects_visible_to(&self, principal_id: &str) -> Vec<&Project> {
        self.tenancy.projects_visible_to(principal_id)
    }

    /// An API key by id.
    pub fn key_by_id(&self, id: &str) -> Option<&ApiKey> {
        self.tenancy.key_by_id(id)
    }

    /// A principal by id.
    pub fn principal(&self, id: &str) -> Option<&Principal> {
        self.tenancy.principal(id)
    }

    /// A role binding by id.
    pub fn binding(&self, id: &str) -> Option<&RoleBinding> {
        self.tenancy.binding(id)
    }

    /// Every role binding of a principal, in binding-id order.
    pub fn bindings_of(&self, principal_id: &str) -> Vec<&RoleBinding> {
        self.tenancy.bindings_of(principal_id)
    }

    /// Platform-scoped bindings (platform listing).
    pub fn platform_bindings(&self) -> Vec<&RoleBinding> {
        self.tenancy.platform_bindings()
    }
}
