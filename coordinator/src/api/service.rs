//! The core of the admin API's operations, shared by every domain's module (`tenancy/`, `secrets/`,
//! `cluster/`, `audit/`, `jobs/`, `fleet/`): the [`AdminService`] handle, paging, the validation
//! helpers, and the preparation of commands (time stamp, actor) before they are proposed through
//! [`Handle::write`], consistent reads, and refusals.
//!
//! Everything non-deterministic about a mutation happens in these modules, never in `apply`. Reads of a
//! project's objects go through `RegistryState::project_scope`, so another project's object answers exactly
//! like a missing one, by the same code path (`hidden`), and the attempt is counted for the audit log as
//! `denied` (coalesced, see `denials`). No operation may return a token (except once, from key creation), a
//! key hash, a secret value, a ciphertext or a data key.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::authz::{self, Action, Caller, Role};
use crate::crypto::{CryptoError, MasterKeyring};
use crate::node::Handle;
use crate::state::{self, Command, Op, Outcome, Page, PageRequest, ProjectPolicy};

use super::auth::RequestScope;
use super::denials::{Denial, DenialKind, DenialLimits, Denials, Refused};
use super::error::{ErrorKind, ServiceError};
use super::metrics::ApiMetrics;

// ---- requests ---------------------------------------------------------------------------------------------

/// A query-string integer; an empty value (`page_size=`) counts as absent.
pub(super) fn query_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let raw: Option<String> = Option::deserialize(d)?;
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("must be a non-negative integer, not {t:?}"))
        }),
    }
}

/// `page_size` and `page_token` of a listing.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct PageParams {
    #[serde(default, deserialize_with = "query_u64")]
    pub(crate) page_size: Option<u64>,
    #[serde(default)]
    pub(crate) page_token: Option<String>,
}

impl PageParams {
    pub(super) fn request(&self) -> Result<PageRequest, ServiceError> {
        Ok(PageRequest::new(
            self.page_size,
            self.page_token.as_deref(),
        )?)
    }
}

// ---- responses --------------------------------------------------------------------------------------------

/// One page of a listing; `next_page_token` is empty on the last page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListPage<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl<T> From<Page<T>> for ListPage<T> {
    fn from(p: Page<T>) -> Self {
        ListPage {
            items: p.items,
            next_page_token: p.next_page_token.unwrap_or_default(),
        }
    }
}

// ---- validation -------------------------------------------------------------------------------------------

/// The same rule the state machine applies, checked before proposing so bad input never reaches the log.
pub(super) fn validate_project_name(name: &str) -> Result<(), ServiceError> {
    Ok(crate::state::validate_project_name(name)?)
}

/// The same rule the state machine applies, checked before proposing.
pub(super) fn validate_display_name(field: &str, name: &str) -> Result<(), ServiceError> {
    Ok(crate::state::validate_display_name(field, name)?)
}

/// The same rule the state machine applies, checked before proposing so bad input never reaches the log.
pub(super) fn validate_secret_name(name: &str) -> Result<(), ServiceError> {
    Ok(crate::state::validate_secret_name(name)?)
}

/// The same rule the state machine applies, checked before proposing.
pub(super) fn validate_description(description: &str) -> Result<(), ServiceError> {
    Ok(crate::state::validate_description(description)?)
}

/// `host:port` with a numeric port.
pub(super) fn validate_addr(field: &str, addr: &str) -> Result<(), ServiceError> {
    let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && host.len() <= 253 && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(field, "must be host:port"))
    }
}

pub(super) fn parse_role(role: &str) -> Result<Role, ServiceError> {
    role.parse::<Role>()
        .map_err(|e| ServiceError::invalid("role", e))
}

/// A key's limits from a request: roles parsed, sorted and de-duplicated, never an empty list.
pub(super) fn key_limits(
    roles: Option<&[String]>,
    project_scoped: bool,
) -> Result<state::KeyLimits, ServiceError> {
    let roles = match roles {
        None => None,
        Some([]) => {
            return Err(ServiceError::invalid(
                "roles",
                "must name at least one role (leave it out for all of the principal's roles)",
            ))
        }
        Some(names) => {
            let mut parsed = names
                .iter()
                .map(|n| {
                    n.parse::<Role>()
                        .map_err(|e| ServiceError::invalid("roles", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            parsed.sort_unstable();
            parsed.dedup();
            Some(parsed)
        }
    };
    Ok(state::KeyLimits {
        roles,
        project_scoped,
    })
}

/// A role bound in a project: anything but platform-admin (the state machine's rule, checked first so bad
/// input answers 400 before any permission question).
pub(super) fn project_role(role: Role) -> Result<Role, ServiceError> {
    if role == Role::PlatformAdmin {
        return Err(ServiceError::invalid(
            "role",
            "platform-admin can only be bound at platform scope",
        ));
    }
    Ok(role)
}

pub(super) fn crypto_error(e: CryptoError) -> ServiceError {
    match e {
        CryptoError::UnknownMasterKey(id) => ServiceError::new(
            ErrorKind::FailedPrecondition,
            format!("master key {id} is not in this coordinator's keyring"),
        ),
        CryptoError::Malformed(_) | CryptoError::Decrypt => {
            ServiceError::internal("a stored data key could not be opened with the keyring")
        }
    }
}

// ---- the service ------------------------------------------------------------------------------------------

pub(super) struct Inner {
    pub(super) handle: Handle,
    pub(super) keyring: Arc<MasterKeyring>,
    pub(super) metrics: ApiMetrics,
    pub(super) denials: Denials,
    /// The policy new projects get (the coordinator's `[quotas]`).
    pub(super) project_defaults: ProjectPolicy,
    /// Lifetime of a key created without an explicit one, in milliseconds.
    pub(super) default_key_ttl_ms: u64,
    /// Terminal sessions open through this coordinator.
    pub(super) terminals: super::jobs::exec::attach::OpenSessions,
}

/// The admin API's operations over one coordinator; cheap to clone.
#[derive(Clone)]
pub(crate) struct AdminService {
    pub(super) inner: Arc<Inner>,
}

impl AdminService {
    pub(crate) fn new(
        handle: Handle,
        keyring: Arc<MasterKeyring>,
        denial_limits: DenialLimits,
        project_defaults: ProjectPolicy,
        default_key_ttl: std::time::Duration,
    ) -> Self {
        AdminService {
            inner: Arc::new(Inner {
                handle,
                keyring,
                metrics: ApiMetrics::default(),
                denials: Denials::new(denial_limits),
                project_defaults,
                default_key_ttl_ms: u64::try_from(default_key_ttl.as_millis()).unwrap_or(u64::MAX),
                terminals: Default::default(),
            }),
        }
    }

    /// The rate limit and coalescing buffer of refused requests.
    pub(crate) fn denials(&self) -> &Denials {
        &self.inner.denials
    }

    /// The terminal sessions open through this coordinator.
    pub(crate) fn terminals(&self) -> &super::jobs::exec::attach::OpenSessions {
        &self.inner.terminals
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    pub(crate) fn metrics(&self) -> &ApiMetrics {
        &self.inner.metrics
    }

    pub(super) fn command(&self, scope: &RequestScope, op: Op) -> Command {
        Command::new(self.handle().now_ms(), scope.caller.actor(), op)
    }

    pub(super) async fn write(
        &self,
        scope: &RequestScope,
        op: Op,
    ) -> Result<Outcome, ServiceError> {
        Ok(self.inner.handle.write(self.command(scope, op)).await?)
    }

    /// Waits until the local replica reflects every write acknowledged before this call.
    pub(super) async fn consistent(&self) -> Result<(), ServiceError> {
        Ok(self.inner.handle.linearizable_read().await?)
    }

    /// Counts a forbidden attempt (403) for the audit log, charged to the caller's key. Buffered in memory
    /// and written coalesced (see `denials`); never a replicated write of its own.
    pub(crate) async fn record_denied(
        &self,
        caller: &Caller,
        operation: &str,
        project: Option<String>,
        target: &str,
        detail: &str,
    ) {
        let denial = Denial {
            who: Refused::Principal {
                id: caller.principal_id.clone(),
                name: caller.principal_name.clone(),
            },
            operation,
            kind: DenialKind::Forbidden,
            project,
            target,
            reason: detail,
            limited: false,
        };
        self.inner
            .denials
            .charge(Some(&caller.key_id), None, Instant::now());
        self.inner.denials.record(denial, self.handle().now_ms());
    }

    /// The 403 for something the caller may not do (a grant beyond its rights, a secret without the use
    /// right), audited.
    pub(super) async fn refuse(
        &self,
        scope: &RequestScope,
        project: Option<String>,
        target: &str,
        why: &str,
    ) -> ServiceError {
        self.record_denied(&scope.caller, scope.operation, project, target, why)
            .await;
        ServiceError::forbidden(why)
    }

    /// Finds principal `id` for a key or binding made in the request's project: the project's own
    /// principals, those bound in it when `bound_counts`, and any principal (including the platform's) for
    /// a caller holding `right` platform-wide. Anything else answers 404 like a missing principal, audited
    /// when it exists.
    pub(super) async fn visible_principal(
        &self,
        scope: &RequestScope,
        id: &str,
        right: Action,
        bound_counts: bool,
    ) -> Result<(), ServiceError> {
        let caller = &scope.caller;
        let found = self.inner.handle.read(|s| {
            let p = s.principal(id)?;
            let bound_here = bound_counts
                && s.bindings_of(id)
                    .iter()
                    .any(|b| b.scope.project_id() == Some(&scope.project_id));
            let platform = authz::authorize_caller(s, caller, None, right).is_ok();
            let mine = p.is_owned_by(&scope.project_id);
            // Keys live in the project of the request: they can be made for its own principals or,
            // by a platform-admin, for a platform principal.
            let keyable = mine || (p.project_id.is_none() && platform);
            let visible = if bound_counts {
                mine || bound_here || platform
            } else {
                keyable
            };
            Some((visible, p.project_id.clone()))
        });
        match found {
            Some((true, _)) => Ok(()),
            // Missing, another project's or the platform's: one answer, one path (see `hidden`).
            None => Err(self.hidden(scope, "principal", id, None).await),
            Some((false, owner)) => Err(self.hidden(scope, "principal", id, owner).await),
        }
    }

    /// The 404 for an object the caller cannot see, whether it is missing (`owner: None`) or belongs to
    /// another project: one code path for both, so neither the answer nor the work done tells them apart.
    /// The attempt is charged to the caller's key and address and counted for the audit log; a caller
    /// refused too often gets 429 instead.
    pub(super) async fn hidden(
        &self,
        scope: &RequestScope,
        kind: &str,
        id: &str,
        owner: Option<String>,
    ) -> ServiceError {
        let denials = &self.inner.denials;
        let now = Instant::now();
        let key = Some(scope.caller.key_id.as_str());
        let limited = denials.check(key, scope.source, now);
        let denial = Denial {
            who: Refused::Principal {
                id: scope.caller.principal_id.clone(),
                name: scope.caller.principal_name.clone(),
            },
            operation: scope.operation,
            kind: DenialKind::NotFound,
            project: owner,
            target: id,
            reason: kind,
            limited: limited.is_err(),
        };
        denials.record(denial, self.handle().now_ms());
        match limited {
            Ok(()) => {
                denials.charge(key, scope.source, now);
                ServiceError::not_found(kind, id)
            }
            Err(retry) => ServiceError::rate_limited(retry.as_secs_f64().ceil() as u64),
        }
    }

    /// Whether the caller holds `action` platform-wide.
    pub(super) fn platform_allows(&self, caller: &Caller, action: Action) -> bool {
        self.inner
            .handle
            .read(|s| authz::authorize_caller(s, caller, None, action).is_ok())
    }
}

/// An outcome that does not belong to the command that produced it: a bug between API and state.
pub(crate) fn unexpected(outcome: Outcome) -> ServiceError {
    tracing::error!(?outcome, "a command produced an outcome of another kind");
    ServiceError::internal("the registry answered with an unexpected outcome")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        for good in ["a", "vision", "a-1", "0abc", &"a".repeat(63)] {
            assert!(validate_project_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a b", "é", &"a".repeat(64)] {
            let e = validate_project_name(bad).expect_err(bad);
            assert_eq!(e.message, "name: must match [a-z0-9][a-z0-9-]{0,62}");
        }
    }

    #[test]
    fn addresses() {
        assert!(validate_addr("raft_addr", "10.0.0.4:7170").is_ok());
        assert!(validate_addr("raft_addr", "c1.example:7170").is_ok());
        assert!(validate_addr("raft_addr", "[::1]:7170").is_ok());
        for bad in ["", "host", ":7170", "host:0", "host:99999", "host:x"] {
            assert!(validate_addr("raft_addr", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_limits_are_sorted_unique_and_never_empty() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let limits =
            key_limits(Some(&names(&["editor", "viewer", "editor"])), true).expect("valid");
        assert_eq!(limits.roles, Some(vec![Role::Viewer, Role::Editor]));
        assert!(limits.project_scoped);
        assert_eq!(
            key_limits(None, false).expect("valid"),
            state::KeyLimits::default()
        );
        let e = key_limits(Some(&[]), false).expect_err("empty");
        assert!(e.message.starts_with("roles: "), "{}", e.message);
        let e = key_limits(Some(&names(&["root"])), false).expect_err("unknown");
        assert!(e.message.starts_with("roles: "), "{}", e.message);
    }

    #[test]
    fn roles_parse_or_name_the_field() {
        assert_eq!(parse_role("editor").ok(), Some(Role::Editor));
        let e = parse_role("root").expect_err("unknown role");
        assert!(e.message.starts_with("role: "), "{}", e.message);
    }
}
