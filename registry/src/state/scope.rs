//! Project-scoped reads: the only way API routes read a project's objects.
//!
//! Every lookup filters by the scope's project, so an object of another project answers exactly like a
//! missing one. Never widen a lookup here to "any project".

use super::{
    ApiKey, ApiKeyView, AuditPage, Page, PageRequest, Principal, Project, RegistryState,
    RoleBinding, Scope, Secret, SecretView, WrappedKey,
};

/// Reads confined to one project.
#[derive(Debug, Clone, Copy)]
pub struct ProjectScope<'a> {
    state: &'a RegistryState,
    project_id: &'a str,
}

impl RegistryState {
    /// Reads confined to `project_id`. A project that does not exist yields a scope in which nothing exists.
    pub fn project_scope<'a>(&'a self, project_id: &'a str) -> ProjectScope<'a> {
        ProjectScope {
            state: self,
            project_id,
        }
    }
}

impl<'a> ProjectScope<'a> {
    /// The project id this scope reads.
    pub fn project_id(&self) -> &'a str {
        self.project_id
    }

    /// The project itself.
    pub fn project(&self) -> Option<&'a Project> {
        self.state.tenancy.project(self.project_id)
    }

    /// The project's wrapped data key.
    pub fn data_key(&self) -> Option<&'a WrappedKey> {
        self.project().map(|p| &p.data_key)
    }

    /// A key of this project (with its hash; use [`ApiKey::view`] for callers).
    pub fn key(&self, id: &str) -> Option<&'a ApiKey> {
        self.state
            .tenancy
            .keys()
            .get(id)
            .filter(|k| k.project_id == self.project_id)
    }

    /// This project's keys in id order, as caller-facing views.
    pub fn keys(&self, req: &PageRequest) -> Page<ApiKeyView> {
        let pid = self.project_id;
        Page::from_sorted(
            self.state
                .tenancy
                .keys()
                .iter()
                .filter(|(_, k)| k.project_id == pid)
                .map(|(id, k)| (id.as_str(), k)),
            req,
        )
        .map(ApiKey::view)
    }

    /// A principal owned by this project (never a platform principal, which no project owns).
    pub fn principal(&self, id: &str) -> Option<&'a Principal> {
        self.state
            .tenancy
            .principals()
            .get(id)
            .filter(|p| p.is_owned_by(self.project_id))
    }

    /// Principals owned by this project, in id order.
    pub fn principals(&self, req: &PageRequest) -> Page<Principal> {
        let pid = self.project_id;
        Page::from_sorted(
            self.state
                .tenancy
                .principals()
                .iter()
                .filter(|(_, p)| p.is_owned_by(pid))
                .map(|(id, p)| (id.as_str(), p)),
            req,
        )
        .map(Principal::clone)
    }

    /// A role binding scoped to this project.
    pub fn binding(&self, id: &str) -> Option<&'a RoleBinding> {
        self.state
            .tenancy
            .bindings()
            .get(id)
            .filter(|b| self.is_ours(&b.scope))
    }

    /// Role bindings scoped to this project, in id order.
    pub fn bindings(&self, req: &PageRequest) -> Page<RoleBinding> {
        Page::from_sorted(
            self.state
                .tenancy
                .bindings()
                .iter()
                .filter(|(_, b)| self.is_ours(&b.scope))
                .map(|(id, b)| (id.as_str(), b)),
            req,
        )
        .map(RoleBinding::clone)
    }

    /// A secret of this project (with its sealed versions; use [`Secret::view`] for callers).
    pub fn secret(&self, name: &str) -> Option<&'a Secret> {
        self.state.secrets.get(self.project_id, name)
    }

    /// This project's secrets in name order, as caller-facing views.
    pub fn secrets(&self, req: &PageRequest) -> Page<SecretView> {
        let all = self.state.secrets.of_project(self.project_id);
        Page::from_sorted(all.map(|(name, s)| (name.as_str(), s)), req).map(Secret::view)
    }

    /// This project's audit records after `after_seq`.
    pub fn audit(&self, after_seq: u64, limit: usize) -> AuditPage {
        self.state
            .audit_page(after_seq, limit, Some(self.project_id))
    }

    fn is_ours(&self, scope: &Scope) -> bool {
        scope.project_id().is_some_and(|p| p == self.project_id)
    }
}
