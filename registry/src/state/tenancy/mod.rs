//! Tenancy: projects, principals, API keys and role bindings.
//!
//! `records.rs` holds the records and their validation; `store.rs` the domain's state, [`Tenancy`], and its
//! mutations (unique names, deleting only empty projects, never locking out the last platform admin);
//! `ops.rs` the commands and outcomes and their routing. What tenancy changes reach other domains (a
//! project's deletion) or read from them (the bootstrap principal in the audit log) is the registry glue
//! below. Never sees a key's token, only its SHA-256 hash.

mod ops;
mod records;
mod store;

pub use ops::{TenancyOp, TenancyOutcome};
pub use records::*;
pub use store::Tenancy;
pub(in crate::state) use store::TenancyParts;

use super::{Applied, DomainError, Outcome, RegistryState};

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
