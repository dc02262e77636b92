//! The admin API's tenancy operations: projects and their policy, principals, API keys and role bindings,
//! with their request and reply types. REST (`rest.rs`) and gRPC (`grpc.rs`) both call these.
//!
//! A key's token leaves the coordinator once, in the reply to its creation ([`CreatedKey`]); nothing here
//! returns a key hash or a data key.

pub(super) mod grpc;
pub(super) mod rest;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::authz::{self, Action, Role};
use crate::crypto;
use crate::state::{
    self, ApiKeyView, Command, KeyPrincipal, Op, Outcome, Page, PolicyUpdate, Principal,
    PrincipalKind, ProjectPolicy, ProjectView, RoleBinding, Scope, TenancyOp, TenancyOutcome,
};

use super::auth::RequestScope;
use super::error::{ErrorKind, ServiceError};
use super::service::{
    key_limits, parse_role, project_role, unexpected, validate_description, validate_display_name,
    validate_project_name, AdminService, ListPage, PageParams,
};

/// `POST /v1/projects`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// `PUT /v1/projects/{project}/policy`: the fields given replace the project's, the others stay.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[schema(as = ProjectPolicyUpdate)]
#[serde(deny_unknown_fields)]
pub struct SetPolicyRequest {
    /// Most jobs pending at once; one more submission is refused (429 quota_exceeded).
    #[serde(default)]
    pub max_pending_jobs: Option<u64>,
    /// Most CPU (thousandths of a core) reserved by scheduled and running jobs together; a job that would
    /// exceed it waits.
    #[serde(default)]
    pub max_running_cpu_millis: Option<u64>,
    /// Most memory reserved by scheduled and running jobs together.
    #[serde(default)]
    pub max_running_memory_bytes: Option<u64>,
    /// Most GPUs held by scheduled and running jobs together.
    #[serde(default)]
    pub max_running_gpus: Option<u64>,
    /// Most bytes of job specs (their text fields plus 256 each) held by unfinished jobs together.
    #[serde(default)]
    pub max_spec_bytes: Option<u64>,
    /// `none` or `egress`.
    #[serde(default)]
    #[schema(value_type = Option<state::NetworkPolicy>)]
    pub network: Option<String>,
    /// Other projects' preemptible jobs below this priority (and below the preempting job's own) may be
    /// evicted for this project's jobs; 0: never.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000)]
    pub preemption_ceiling: Option<i64>,
}

impl SetPolicyRequest {
    /// The update it asks for, naming the first field that is out of range.
    pub(crate) fn update(&self) -> Result<PolicyUpdate, ServiceError> {
        let network = match self.network.as_deref().map(str::trim) {
            None => None,
            Some(n) => Some(state::NetworkPolicy::parse(n).ok_or_else(|| {
                ServiceError::invalid("network", format!("{n:?} is not none or egress"))
            })?),
        };
        let preemption_ceiling = match self.preemption_ceiling {
            None => None,
            Some(c) => Some(
                i32::try_from(c)
                    .ok()
                    .filter(|c| (0..=state::MAX_PREEMPTION_CEILING).contains(c))
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            "preemption_ceiling",
                            format!(
                                "must be 0-{} (0: never preempt other projects)",
                                state::MAX_PREEMPTION_CEILING
                            ),
                        )
                    })?,
            ),
        };
        let update = PolicyUpdate {
            max_pending_jobs: self.max_pending_jobs,
            max_running_cpu_millis: self.max_running_cpu_millis,
            max_running_memory_bytes: self.max_running_memory_bytes,
            max_running_gpus: self.max_running_gpus,
            max_spec_bytes: self.max_spec_bytes,
            network,
            preemption_ceiling,
        };
        if update.is_empty() {
            return Err(ServiceError::invalid(
                "policy",
                "name at least one field to change",
            ));
        }
        // The rule `apply` checks, before anything is proposed.
        ProjectPolicy::BUILTIN.updated(&update).validate()?;
        Ok(update)
    }
}

/// `POST /v1/principals`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccountRequest {
    pub name: String,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    /// Role bound to the key's principal in the project; required for a new service account.
    #[serde(default)]
    #[schema(value_type = Option<Role>)]
    pub role: Option<String>,
    /// Lifetime in seconds; without it (and without no_expiry) the coordinator's `[keys] default_ttl` (90
    /// days).
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
    /// A key that never expires; only platform-admins may ask for one.
    #[serde(default)]
    pub no_expiry: bool,
    /// An existing principal of the project; none creates a service account named after the key.
    #[serde(default)]
    pub principal_id: Option<String>,
    /// Narrow the key to these roles (at least one): it grants only what they allow of the principal's
    /// rights.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Role>>)]
    pub roles: Option<Vec<String>>,
    /// The key acts only in the request's project.
    #[serde(default)]
    pub project_scoped: bool,
}

/// `POST /v1/role-bindings`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[schema(as = CreateRoleBindingRequest)]
#[serde(deny_unknown_fields)]
pub struct CreateBindingRequest {
    pub principal_id: String,
    #[schema(value_type = Role)]
    pub role: String,
    /// Bind platform-wide instead of in the request's project.
    #[serde(default)]
    pub platform: bool,
}

/// A role binding as callers see it; `scope` is `platform` or `project:<id>`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = RoleBinding)]
pub struct RoleBindingView {
    pub id: String,
    pub principal_id: String,
    pub role: Role,
    pub scope: String,
    pub project_id: Option<String>,
    pub created_at: u64,
}

impl From<&RoleBinding> for RoleBindingView {
    fn from(b: &RoleBinding) -> Self {
        RoleBindingView {
            id: b.id.clone(),
            principal_id: b.principal_id.clone(),
            role: b.role,
            scope: b.scope.to_string(),
            project_id: b.scope.project_id().cloned(),
            created_at: b.created_at,
        }
    }
}

/// A new key: the token (shown only here), the key, its principal and the binding made for it.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    pub id: String,
    /// The bearer token; shown only once.
    pub token: String,
    pub key: ApiKeyView,
    pub principal: Principal,
    pub binding: Option<RoleBindingView>,
}

impl Drop for CreatedKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The caller: its principal, the key it called with, the project it acts in and its role bindings there.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub principal: Principal,
    pub key: ApiKeyView,
    /// The project this request acts in.
    pub project: ProjectView,
    pub bindings: Vec<RoleBindingView>,
}

impl AdminService {
    // ---- projects ----

    pub(crate) async fn create_project(
        &self,
        scope: &RequestScope,
        req: CreateProjectRequest,
    ) -> Result<ProjectView, ServiceError> {
        validate_project_name(&req.name)?;
        let description = req.description.unwrap_or_default();
        validate_description(&description)?;
        let mut rng = self.inner.handle.rng();
        let data_key = crypto::wrap_data_key(
            &self.inner.keyring,
            &crypto::new_data_key(&mut rng),
            &mut rng,
        );
        let op = Op::Tenancy(TenancyOp::CreateProject {
            id: crypto::random_id("prj", &mut rng),
            name: req.name,
            description,
            data_key,
            // The built-in policy travels as `None` (what `apply` reads as built-in): the same state, and a
            // log entry ~200 bytes smaller on every replica.
            policy: (self.inner.project_defaults != ProjectPolicy::BUILTIN)
                .then_some(self.inner.project_defaults),
        });
        match self.write(scope, op).await? {
            Outcome::Tenancy(TenancyOutcome::Project { project }) => Ok(project),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn list_projects(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<ProjectView>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        let caller = &scope.caller;
        let page = self.inner.handle.read(|s| {
            let visible = s
                .projects_visible_to(&caller.principal_id)
                .into_iter()
                // A project-scoped key sees its own project only.
                .filter(|p| !caller.limits.project_scoped || p.id == caller.project_id);
            Page::from_sorted(visible.map(|p| (p.id.clone(), p.view())), &req)
        });
        Ok(page.into())
    }

    /// A project by id or name, if the caller may read it (404 otherwise, audited when it exists).
    pub(crate) async fn get_project(
        &self,
        scope: &RequestScope,
        project: &str,
    ) -> Result<ProjectView, ServiceError> {
        self.consistent().await?;
        // A missing project goes through the same lookups and the same `authorize` (which scans the
        // caller's bindings before finding it missing) as a hidden one.
        let (owner, verdict) = self.inner.handle.read(|s| {
            let project_ref = s.project_by_id_or_name(project);
            let owner = project_ref.map(|p| p.id.clone());
            let id = owner.as_deref().unwrap_or(project);
            let verdict = authz::authorize_caller(s, &scope.caller, Some(id), Action::ReadProject)
                .map(|()| project_ref.map(|p| p.view()));
            (owner, verdict)
        });
        match (owner, verdict) {
            (Some(_), Ok(Some(view))) => Ok(view),
            (Some(id), Err(authz::Denied::Forbidden)) => {
                self.record_denied(
                    &scope.caller,
                    scope.operation,
                    Some(id.clone()),
                    &id,
                    "roles do not grant read-project",
                )
                .await;
                Err(ServiceError::forbidden(format_args!(
                    "this operation needs read-project, which {} grants",
                    authz::granted_by(authz::Action::ReadProject)
                )))
            }
            (owner, _) => {
                let mut err = self.hidden(scope, "project", project, owner).await;
                if err.kind == super::error::ErrorKind::NotFound {
                    let nearest = self.handle().read(|s| {
                        let visible = s.projects_visible_to(&scope.caller.principal_id);
                        super::suggest::nearest(project, visible.iter().map(|p| p.name.as_str()))
                            .map(str::to_owned)
                    });
                    if let Some(name) = nearest {
                        err.message.push_str(&format!("; did you mean {name}?"));
                    }
                }
                Err(err)
            }
        }
    }

    /// Changes a project's policy (platform-admin only, by the route's policy); answers the project.
    pub(crate) async fn set_project_policy(
        &self,
        scope: &RequestScope,
        project: &str,
        req: SetPolicyRequest,
    ) -> Result<ProjectView, ServiceError> {
        let update = req.update()?;
        self.consistent().await?;
        let id = self
            .inner
            .handle
            .read(|s| s.project_by_id_or_name(project).map(|p| p.id.clone()));
        let id = id.ok_or_else(|| ServiceError::not_found("project", project))?;
        let op = Op::Tenancy(TenancyOp::SetProjectPolicy {
            project_id: id,
            update,
        });
        match self.write(scope, op).await {
            Ok(Outcome::Tenancy(TenancyOutcome::Project { project })) => Ok(project),
            Ok(other) => Err(unexpected(other)),
            Err(e) if e.kind == ErrorKind::NotFound => {
                Err(ServiceError::not_found("project", project))
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn delete_project(
        &self,
        scope: &RequestScope,
        project: &str,
    ) -> Result<(), ServiceError> {
        self.consistent().await?;
        let id = self
            .inner
            .handle
            .read(|s| s.project_by_id_or_name(project).map(|p| p.id.clone()));
        let id = id.ok_or_else(|| ServiceError::not_found("project", project))?;
        match self
            .write(scope, Op::Tenancy(TenancyOp::DeleteProject { id }))
            .await
        {
            Ok(_) => Ok(()),
            // The domain names the id; callers asked by name or id, so answer in their words.
            Err(e) if e.kind == ErrorKind::NotFound => {
                Err(ServiceError::not_found("project", project))
            }
            Err(e) => Err(e),
        }
    }

    // ---- principals ----

    pub(crate) async fn list_principals(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<Principal>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        Ok(self
            .inner
            .handle
            .read(|s| s.project_scope(&scope.project_id).principals(&req))
            .into())
    }

    pub(crate) async fn create_service_account(
        &self,
        scope: &RequestScope,
        req: CreateServiceAccountRequest,
    ) -> Result<Principal, ServiceError> {
        validate_display_name("name", &req.name)?;
        let op = Op::Tenancy(TenancyOp::CreatePrincipal {
            id: crypto::random_id("sa", &mut self.inner.handle.rng()),
            kind: PrincipalKind::ServiceAccount,
            name: req.name,
            project_id: scope.project_id.clone(),
        });
        match self.write(scope, op).await? {
            Outcome::Tenancy(TenancyOutcome::Principal { principal }) => Ok(principal),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn whoami(&self, scope: &RequestScope) -> Result<WhoAmI, ServiceError> {
        self.consistent().await?;
        let found = self.inner.handle.read(|s| {
            let principal = s.principal(&scope.caller.principal_id)?.clone();
            let key = s.key_by_id(&scope.caller.key_id)?.view();
            let project = s.project(&scope.project_id)?.view();
            let bindings = s
                .bindings_of(&principal.id)
                .into_iter()
                .map(RoleBindingView::from)
                .collect();
            Some(WhoAmI {
                principal,
                key,
                project,
                bindings,
            })
        });
        // The key was found a moment ago during admission; it can only be gone if deleted in between.
        found.ok_or_else(ServiceError::unauthenticated)
    }

    // ---- keys ----

    pub(crate) async fn create_key(
        &self,
        scope: &RequestScope,
        req: CreateKeyRequest,
    ) -> Result<CreatedKey, ServiceError> {
        validate_display_name("name", &req.name)?;
        let role = req
            .role
            .as_deref()
            .map(|r| parse_role(r).and_then(project_role))
            .transpose()?;
        let limits = key_limits(req.roles.as_deref(), req.project_scoped)?;
        let at = self.handle().now_ms();
        let expires_at = match (req.expires_in_seconds, req.no_expiry) {
            (Some(_), true) => {
                return Err(ServiceError::invalid(
                    "no_expiry",
                    "give expires_in_seconds or no_expiry, not both",
                ))
            }
            (None, true) => None,
            (Some(0), false) => {
                return Err(ServiceError::invalid(
                    "expires_in_seconds",
                    "must be positive",
                ))
            }
            (Some(secs), false) => Some(
                secs.checked_mul(1000)
                    .and_then(|ms| at.checked_add(ms))
                    .ok_or_else(|| ServiceError::invalid("expires_in_seconds", "is too large"))?,
            ),
            // Keys expire by default.
            (None, false) => Some(at.saturating_add(self.inner.default_key_ttl_ms)),
        };
        let mut rng = self.inner.handle.rng();
        let principal = match req.principal_id.as_deref().filter(|p| !p.is_empty()) {
            Some(id) => {
                self.consistent().await?;
                self.visible_principal(scope, id, Action::ManageKeys, false)
                    .await?;
                KeyPrincipal::Existing {
                    principal_id: id.to_owned(),
                }
            }
            None => {
                if role.is_none() {
                    return Err(ServiceError::invalid(
                        "role",
                        "is required when the key gets a new service account",
                    ));
                }
                KeyPrincipal::NewServiceAccount {
                    principal_id: crypto::random_id("sa", &mut rng),
                    name: req.name.clone(),
                }
            }
        };
        // The grant rules on this replica; the state machine checks them again in the log's order.
        let verdict = self.inner.handle.read(|s| {
            authz::check_key(
                s,
                &scope.caller,
                &scope.project_id,
                &principal,
                role,
                expires_at,
            )
        });
        if let Err(why) = verdict {
            return Err(self
                .refuse(scope, Some(scope.project_id.clone()), "key", &why)
                .await);
        }
        let token = crypto::generate_token(&mut rng);
        let op = Op::Tenancy(TenancyOp::CreateKey {
            key_id: token.key_id.clone(),
            name: req.name,
            project_id: scope.project_id.clone(),
            hash: token.hash.clone(),
            last4: token.last4.clone(),
            expires_at,
            principal,
            role,
            limits,
        });
        let cmd = Command::new(at, scope.caller.actor(), op);
        match self.inner.handle.write(cmd).await? {
            Outcome::Tenancy(TenancyOutcome::KeyCreated {
                key,
                principal,
                binding,
            }) => Ok(CreatedKey {
                id: key.id.clone(),
                token: token.token.to_string(),
                key,
                principal,
                binding: binding.as_ref().map(RoleBindingView::from),
            }),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn list_keys(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<ApiKeyView>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        Ok(self
            .inner
            .handle
            .read(|s| s.project_scope(&scope.project_id).keys(&req))
            .into())
    }

    /// The key if it is the project's; the owner project of a key hidden elsewhere.
    fn find_key(&self, scope: &RequestScope, id: &str) -> Result<ApiKeyView, Option<String>> {
        self.inner
            .handle
            .read(|s| match s.project_scope(&scope.project_id).key(id) {
                Some(k) => Ok(k.view()),
                None => Err(s.key_by_id(id).map(|k| k.project_id.clone())),
            })
    }

    pub(crate) async fn get_key(
        &self,
        scope: &RequestScope,
        id: &str,
    ) -> Result<ApiKeyView, ServiceError> {
        self.consistent().await?;
        match self.find_key(scope, id) {
            Ok(view) => Ok(view),
            Err(owner) => Err(self.hidden(scope, "key", id, owner).await),
        }
    }

    pub(crate) async fn revoke_key(
        &self,
        scope: &RequestScope,
        id: &str,
    ) -> Result<ApiKeyView, ServiceError> {
        self.consistent().await?;
        let key = match self.find_key(scope, id) {
            Ok(key) => key,
            Err(owner) => return Err(self.hidden(scope, "key", id, owner).await),
        };
        // Revoking one's own key is always allowed; anyone else's needs the right to manage its principal
        // wherever that principal is bound (a project-admin cannot take the platform-admin's key away).
        if key.id != scope.caller.key_id {
            let verdict = self.inner.handle.read(|s| {
                authz::may_manage_principal(s, &scope.caller, &key.principal_id, Action::ManageKeys)
            });
            if let Err(why) = verdict {
                return Err(self
                    .refuse(scope, Some(key.project_id.clone()), id, &why)
                    .await);
            }
        }
        match self
            .write(
                scope,
                Op::Tenancy(TenancyOp::RevokeKey {
                    key_id: id.to_owned(),
                }),
            )
            .await?
        {
            Outcome::Tenancy(TenancyOutcome::Key { key }) => Ok(key),
            other => Err(unexpected(other)),
        }
    }

    // ---- role bindings ----

    pub(crate) async fn create_binding(
        &self,
        scope: &RequestScope,
        req: CreateBindingRequest,
    ) -> Result<RoleBindingView, ServiceError> {
        let role = parse_role(&req.role)?;
        if !req.platform {
            project_role(role)?;
        }
        let platform_admin = self.platform_allows(&scope.caller, Action::ManageBindings);
        if req.platform && !platform_admin {
            self.record_denied(
                &scope.caller,
                scope.operation,
                None,
                &req.principal_id,
                "platform binding needs platform-admin",
            )
            .await;
            return Err(ServiceError::forbidden(
                "platform-wide bindings need platform-admin",
            ));
        }
        self.consistent().await?;
        self.visible_principal(scope, &req.principal_id, Action::ManageBindings, true)
            .await?;
        let binding_scope = if req.platform {
            Scope::Platform
        } else {
            Scope::Project(scope.project_id.clone())
        };
        // The grant rules on this replica; the state machine checks them again in the log's order.
        let verdict = self
            .inner
            .handle
            .read(|s| authz::check_bind(s, &scope.caller, &req.principal_id, &binding_scope, role));
        if let Err(why) = verdict {
            let project = binding_scope.project_id().cloned();
            return Err(self.refuse(scope, project, &req.principal_id, &why).await);
        }
        let op = Op::Tenancy(TenancyOp::BindRole {
            principal_id: req.principal_id,
            scope: binding_scope,
            role,
        });
        match self.write(scope, op).await? {
            Outcome::Tenancy(TenancyOutcome::Binding { binding }) => {
                Ok(RoleBindingView::from(&binding))
            }
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn list_bindings(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<RoleBindingView>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        let page = self
            .inner
            .handle
            .read(|s| s.project_scope(&scope.project_id).bindings(&req));
        Ok(page.map(|b| RoleBindingView::from(&b)).into())
    }

    pub(crate) async fn delete_binding(
        &self,
        scope: &RequestScope,
        id: &str,
    ) -> Result<(), ServiceError> {
        self.consistent().await?;
        let found = self.inner.handle.read(|s| {
            if s.project_scope(&scope.project_id).binding(id).is_some() {
                return Ok(());
            }
            match s.binding(id) {
                Some(b) => Err(Some(b.scope.clone())),
                None => Err(None),
            }
        });
        match found {
            Ok(()) => {}
            Err(Some(Scope::Platform))
                if self.platform_allows(&scope.caller, Action::ManageBindings) => {}
            Err(Some(Scope::Platform)) => {
                return Err(self.hidden(scope, "role binding", id, None).await)
            }
            Err(Some(Scope::Project(owner))) => {
                return Err(self.hidden(scope, "role binding", id, Some(owner)).await)
            }
            Err(None) => return Err(self.hidden(scope, "role binding", id, None).await),
        }
        self.write(
            scope,
            Op::Tenancy(TenancyOp::UnbindRole {
                binding_id: id.to_owned(),
            }),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_requests_name_the_offending_field() {
        let field = |req: SetPolicyRequest| req.update().expect_err("refused").message;
        assert!(field(SetPolicyRequest::default()).starts_with("policy: "));
        let bad_network = SetPolicyRequest {
            network: Some("host".into()),
            ..Default::default()
        };
        assert!(field(bad_network).starts_with("network: "));
        for ceiling in [-1, 1001, i64::MAX] {
            let bad = SetPolicyRequest {
                preemption_ceiling: Some(ceiling),
                ..Default::default()
            };
            assert!(field(bad).starts_with("preemption_ceiling: "), "{ceiling}");
        }
        let too_big = SetPolicyRequest {
            max_spec_bytes: Some(u64::MAX),
            ..Default::default()
        };
        assert!(field(too_big).starts_with("max_spec_bytes: "));
        let ok = SetPolicyRequest {
            max_pending_jobs: Some(3),
            network: Some("none".into()),
            preemption_ceiling: Some(10),
            ..Default::default()
        }
        .update()
        .expect("valid");
        assert_eq!(ok.max_pending_jobs, Some(3));
        assert_eq!(ok.network, Some(state::NetworkPolicy::None));
        assert_eq!(ok.preemption_ceiling, Some(10));
        assert_eq!(ok.max_running_gpus, None);
    }
}
