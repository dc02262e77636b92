//! Tenancy's commands and outcomes, what the audit log records them as, and how the registry routes each
//! to [`Tenancy`] (or, for a project's deletion, across domains).

use serde::{Deserialize, Serialize};

use super::super::{
    Applied, DomainError, PolicyUpdate, ProjectPolicy, RegistryState, Subject, WrappedKey,
};
use super::*;
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
    pub(in crate::state) fn execute_tenancy(
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
    pub(in crate::state) fn subject(&self) -> Subject {
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
