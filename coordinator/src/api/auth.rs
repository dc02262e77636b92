//! Admission of one request, for REST and gRPC alike: the bearer key is authenticated against the local
//! replica, the project the request acts in is resolved (`X-Meridian-Project`, else the key's own project)
//! and the route's declared action is checked against the caller's role bindings.
//!
//! Owns the answers a caller gets when refused: 401 with one fixed message whatever was wrong with the key,
//! 404 worded exactly like a missing project when the caller cannot see the project, 403 when its roles lack
//! the action. Hidden-project and forbidden attempts are written to the audit log before answering. Must
//! never reveal which part of a token failed, nor whether a hidden project exists.

use http::{header, HeaderMap};

use crate::authz::{self, Action, AuthnError, Caller, Denied};
use crate::state::RegistryState;

use super::error::{ErrorKind, ServiceError};
use super::routes::{Operation, Policy};
use super::service::{now_ms, AdminService};

/// Header (and gRPC metadata key) naming the project a request acts in.
pub(crate) const PROJECT_HEADER: &str = "x-meridian-project";

/// Who is calling, in which project, for which operation. Exists only for admitted requests.
#[derive(Debug, Clone)]
pub(crate) struct RequestScope {
    pub(crate) caller: Caller,
    /// The project the request acts in. For platform actions this is the key's own project.
    pub(crate) project_id: String,
    /// The operation's name, as recorded in the audit log (e.g. `key.get`).
    pub(crate) operation: &'static str,
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// The project a request names, if it names one. A header that is not text names nothing findable.
fn requested_project(headers: &HeaderMap) -> Result<Option<String>, ServiceError> {
    match headers.get(PROJECT_HEADER) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(_) => Err(ServiceError::invalid(
                PROJECT_HEADER,
                "must be a project name or id",
            )),
        },
    }
}

/// What the local replica said about a request, before any audit record is written.
enum Verdict {
    Admitted(RequestScope),
    Unauthenticated,
    /// The token names a key this replica does not know (yet).
    UnknownKey,
    /// The named project does not exist: nothing to hide, nothing to audit.
    Missing(String),
    /// The project exists but the caller may not know it.
    Hidden {
        caller: Caller,
        requested: String,
        project_id: String,
    },
    /// The caller lacks the action (in the project, or platform-wide with `project_id: None`).
    Forbidden {
        caller: Caller,
        project_id: Option<String>,
        action: Action,
    },
}

/// Decides a request from one consistent view of the local replica.
fn judge(
    state: &RegistryState,
    token: &str,
    now: u64,
    requested: Option<&str>,
    action: Action,
    operation: &'static Operation,
) -> Verdict {
    let caller = match authz::authenticate(state, token, now) {
        Ok(caller) => caller,
        Err(AuthnError::UnknownKey) => return Verdict::UnknownKey,
        Err(_) => return Verdict::Unauthenticated,
    };
    if action.is_platform() {
        return match authz::authorize_caller(state, &caller, None, action) {
            Ok(()) => Verdict::Admitted(RequestScope {
                project_id: caller.project_id.clone(),
                caller,
                operation: operation.name,
            }),
            Err(Denied::Unauthenticated) => Verdict::Unauthenticated,
            Err(Denied::NotFound | Denied::Forbidden) => Verdict::Forbidden {
                caller,
                project_id: None,
                action,
            },
        };
    }
    let wanted = requested.map_or_else(|| caller.project_id.clone(), str::to_owned);
    let Some(project_id) = state.project_by_id_or_name(&wanted).map(|p| p.id.clone()) else {
        return Verdict::Missing(wanted);
    };
    match authz::authorize_caller(state, &caller, Some(&project_id), action) {
        Ok(()) => Verdict::Admitted(RequestScope {
            caller,
            project_id,
            operation: operation.name,
        }),
        Err(Denied::Unauthenticated) => Verdict::Unauthenticated,
        Err(Denied::NotFound) => Verdict::Hidden {
            caller,
            requested: wanted,
            project_id,
        },
        Err(Denied::Forbidden) => Verdict::Forbidden {
            caller,
            project_id: Some(project_id),
            action,
        },
    }
}

/// Admits a request under `operation`'s policy, or says why not (writing the audit record for denials).
///
/// Keys and projects are looked up in the local replica, so a revocation bites here as soon as this
/// coordinator applies it (within a heartbeat). When the key or the project is not found, the replica may
/// simply be behind a write acknowledged elsewhere: it catches up once (read-index) and decides again.
pub(crate) async fn admit(
    service: &AdminService,
    headers: &HeaderMap,
    operation: &'static Operation,
) -> Result<Option<RequestScope>, ServiceError> {
    let action = match operation.policy {
        Policy::Public => return Ok(None),
        Policy::Authenticated(action) => action,
    };
    let Some(token) = bearer_token(headers) else {
        return Err(ServiceError::unauthenticated());
    };
    let requested = requested_project(headers)?;
    let now = now_ms();
    let decide =
        |state: &RegistryState| judge(state, token, now, requested.as_deref(), action, operation);
    let mut verdict = service.handle().read(decide);
    if matches!(verdict, Verdict::UnknownKey | Verdict::Missing(_))
        && service.handle().linearizable_read().await.is_ok()
    {
        verdict = service.handle().read(decide);
    }
    match verdict {
        Verdict::Admitted(scope) => Ok(Some(scope)),
        Verdict::Unauthenticated | Verdict::UnknownKey => Err(ServiceError::unauthenticated()),
        Verdict::Missing(requested) => Err(ServiceError::not_found("project", &requested)),
        Verdict::Hidden {
            caller,
            requested,
            project_id,
        } => {
            service
                .record_denied(
                    &caller,
                    operation.name,
                    Some(project_id.clone()),
                    &project_id,
                    "no role in this project",
                )
                .await;
            Err(ServiceError::not_found("project", &requested))
        }
        Verdict::Forbidden {
            caller,
            project_id,
            action,
        } => {
            let target = project_id.clone().unwrap_or_else(|| "platform".to_owned());
            let detail = format!("roles do not grant {}", action_name(action));
            service
                .record_denied(&caller, operation.name, project_id, &target, &detail)
                .await;
            Err(ServiceError::forbidden(format_args!(
                "this operation needs {}",
                action_name(action)
            )))
        }
    }
}

/// An action's name as written in policies (`read-project`, `manage-keys`, ...).
pub(crate) fn action_name(action: Action) -> String {
    match serde_json::to_value(action) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{action:?}"),
    }
}

/// The error for an admitted request that reached a handler without its scope: a wiring bug.
pub(crate) fn missing_scope() -> ServiceError {
    ServiceError::new(
        ErrorKind::Internal,
        "request reached a handler without being admitted",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
                v.parse().expect("test header value"),
            );
        }
        h
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer mrd_a_b")])),
            Some("mrd_a_b")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bearer  mrd_a_b ")])),
            Some("mrd_a_b")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(bearer_token(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(bearer_token(&headers(&[])), None);
    }

    #[test]
    fn project_header() {
        assert_eq!(requested_project(&headers(&[])).ok().flatten(), None);
        assert_eq!(
            requested_project(&headers(&[(PROJECT_HEADER, " vision ")]))
                .ok()
                .flatten(),
            Some("vision".into())
        );
        assert_eq!(
            requested_project(&headers(&[(PROJECT_HEADER, "")]))
                .ok()
                .flatten(),
            None
        );
    }

    #[test]
    fn action_names_are_kebab_case() {
        assert_eq!(action_name(Action::ReadProject), "read-project");
        assert_eq!(action_name(Action::RotateMasterKey), "rotate-master-key");
    }
}
