//! [`Tenancy`], the domain's state, with its mutations and reads: the rules that keep tenancy consistent
//! (unique names, deleting only empty projects, never locking out the last platform admin).

use std::collections::{BTreeMap, BTreeSet};

use super::super::{Applied, DomainError, Outcome, PolicyUpdate, ProjectPolicy, WrappedKey};
use super::*;
use crate::authz::Role;

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

/// Tenancy's records as a snapshot reads them (the name index is derived from the projects).
pub(in crate::state) struct TenancyParts {
    pub default_project_id: Option<String>,
    pub projects: BTreeMap<String, Project>,
    pub principals: BTreeMap<String, Principal>,
    pub keys: BTreeMap<String, ApiKey>,
    pub bindings: BTreeMap<String, RoleBinding>,
}

impl Tenancy {
    /// Tenancy holding a snapshot's records, the name index rebuilt from the projects.
    pub(in crate::state) fn from_parts(parts: TenancyParts) -> Tenancy {
        let TenancyParts {
            default_project_id,
            projects,
            principals,
            keys,
            bindings,
        } = parts;
        let project_ids_by_name = projects
            .values()
            .map(|p| (p.name.clone(), p.id.clone()))
            .collect();
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
    pub(in crate::state) fn parts(
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
    pub(in crate::state) fn principals_mut(&mut self) -> &mut BTreeMap<String, Principal> {
        &mut self.principals
    }

    /// The keys, for tests that build states older builds wrote.
    #[cfg(test)]
    pub(in crate::state) fn keys_mut(&mut self) -> &mut BTreeMap<String, ApiKey> {
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
    pub(in crate::state) fn set_data_key(&mut self, project_id: &str, key: &WrappedKey) -> bool {
        match self.projects.get_mut(project_id) {
            Some(project) => {
                project.data_key = key.clone();
                true
            }
            None => false,
        }
    }

    /// Moves a principal to the platform (no owning project).
    pub(in crate::state) fn move_principal_to_platform(&mut self, id: &str) {
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
    pub(super) fn deletable(&self, id: &str) -> Result<String, DomainError> {
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
    pub(super) fn remove_project(&mut self, id: &str) {
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
