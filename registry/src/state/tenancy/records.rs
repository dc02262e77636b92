//! Tenancy's records (projects, principals, API keys, role bindings) and the validation of names, ids,
//! hashes and wrapped keys. Never sees a key's token, only its SHA-256 hash.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::super::{DomainError, ProjectPolicy, WrappedKey};
use crate::authz::Role;

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

pub(super) fn is_false(b: &bool) -> bool {
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
pub(super) enum AdminChange<'a> {
    DisablePrincipal(&'a str),
    RemoveBinding(&'a str),
    RevokeKey(&'a str),
}

// ---- validation -------------------------------------------------------------------------------------------

pub(super) fn is_lower_alnum(c: char) -> bool {
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

pub(super) fn validate_hash(hash: &str) -> Result<(), DomainError> {
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

pub(super) fn validate_last4(last4: &str) -> Result<(), DomainError> {
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

pub(super) fn validate_binding(scope: &Scope, role: Role) -> Result<(), DomainError> {
    if role == Role::PlatformAdmin && *scope != Scope::Platform {
        return Err(DomainError::invalid(
            "role",
            "platform-admin can only be bound at platform scope",
        ));
    }
    Ok(())
}
