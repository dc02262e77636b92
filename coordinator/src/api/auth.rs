//! Admission of one request, for REST and gRPC alike: the bearer key is authenticated against the local
//! replica, the project the request acts in is resolved (`X-Meridian-Project`, else the key's own project)
//! and the route's declared action is checked against the caller's role bindings.
//!
//! Owns the answers a caller gets when refused: 401 with one fixed message whatever was wrong with the key,
//! 404 worded exactly like a missing project when the caller cannot see the project, 403 when its roles lack
//! the action, 429 once its key or address has been refused too often (`denials`). A missing and a hidden
//! project take one code path: the same lookups, the same catch-up read, the same coalesced audit count, so
//! neither the answer nor its timing tells them apart. Must never reveal which part of a token failed, nor
//! whether a hidden project exists, and never write to the replicated log per refusal.

use std::net::IpAddr;
use std::time::Instant;

use http::{header, HeaderMap};

use crate::authz::{self, Action, AuthnError, Caller, Denied};
use crate::crypto;
use crate::state::RegistryState;

use super::denials::{Denial, DenialKind, Refused};
use super::error::{ErrorKind, ServiceError};
use super::routes::{Operation, Policy};
use super::service::AdminService;

/// Header (and gRPC metadata key) naming the project a request acts in.
pub(crate) const PROJECT_HEADER: &str = "x-meridian-project";

/// The address a request came from, put into its extensions by the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub(crate) IpAddr);

/// Who is calling, in which project, for which operation. Exists only for admitted requests.
#[derive(Debug, Clone)]
pub(crate) struct RequestScope {
    pub(crate) caller: Caller,
    /// The project the request acts in. For platform actions this is the key's own project.
    pub(crate) project_id: String,
    /// The operation's name, as recorded in the audit log (e.g. `key.get`).
    pub(crate) operation: &'static str,
    /// The address the request came from, when the listener knows it.
    pub(crate) source: Option<IpAddr>,
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

/// What the local replica said about a request, before anything is counted.
#[derive(Debug)]
enum Verdict {
    Admitted(RequestScope),
    /// The token is malformed, does not match its key, or the key or principal cannot be used.
    Unauthenticated,
    /// The token names a key this replica does not know (yet).
    UnknownKey,
    /// The named project does not exist, or exists and the caller may not know it: one verdict for both,
    /// so nothing downstream can treat them differently. `owner` is the project's id when it exists (for
    /// the audit record only).
    NotVisible {
        caller: Caller,
        requested: String,
        owner: Option<String>,
        /// The nearest name among the projects the caller can see, when the requested one looks like a
        /// typo of it.
        nearest: Option<String>,
    },
    /// The caller lacks the action (in the project, or platform-wide with `project_id: None`).
    Forbidden {
        caller: Caller,
        project_id: Option<String>,
        action: Action,
    },
}

/// Decides a request from one consistent view of the local replica. A missing and a hidden project run
/// the same steps: the lookup, then `authorize` (which scans the caller's bindings before it finds that the
/// project is missing, exactly as it does before finding it hidden).
fn judge(
    state: &RegistryState,
    token: &str,
    now: u64,
    requested: Option<&str>,
    action: Action,
    operation: &'static Operation,
    source: Option<IpAddr>,
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
                source,
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
    let owner = state.project_by_id_or_name(&wanted).map(|p| p.id.clone());
    let project_id = owner.clone().unwrap_or_else(|| wanted.clone());
    match authz::authorize_caller(state, &caller, Some(&project_id), action) {
        Ok(()) => Verdict::Admitted(RequestScope {
            caller,
            project_id,
            operation: operation.name,
            source,
        }),
        Err(Denied::Unauthenticated) => Verdict::Unauthenticated,
        Err(Denied::NotFound) => {
            let visible = state.projects_visible_to(&caller.principal_id);
            let nearest = super::suggest::nearest(&wanted, visible.iter().map(|p| p.name.as_str()))
                .map(str::to_owned);
            Verdict::NotVisible {
                caller,
                requested: wanted,
                owner,
                nearest,
            }
        }
        Err(Denied::Forbidden) => Verdict::Forbidden {
            caller,
            project_id: Some(project_id),
            action,
        },
    }
}

/// The key id a token names, when it is shaped like one of ours (rate limits count per key).
fn key_id_of(token: Option<&str>) -> Option<String> {
    crypto::parse_token(token?).ok().map(|t| t.key_id)
}

/// Admits a request under `operation`'s policy, or says why not (counting the refusal).
///
/// Keys and projects are looked up in the local replica, so a revocation bites here as soon as this
/// coordinator applies it (within a heartbeat). When the key or the project is not found, the replica may
/// simply be behind a write acknowledged elsewhere: it catches up once (read-index) and decides again. A
/// key or address refused too often is answered 429 before that catch-up.
pub(crate) async fn admit(
    service: &AdminService,
    headers: &HeaderMap,
    operation: &'static Operation,
    source: Option<IpAddr>,
) -> Result<Option<RequestScope>, ServiceError> {
    let action = match operation.policy {
        Policy::Public => return Ok(None),
        Policy::Authenticated(action) => action,
    };
    let token = bearer_token(headers);
    let key_id = key_id_of(token);
    let key = key_id.as_deref();
    let requested = requested_project(headers)?;
    let now = service.handle().now_ms();
    let decide = |state: &RegistryState| match token {
        Some(token) => judge(
            state,
            token,
            now,
            requested.as_deref(),
            action,
            operation,
            source,
        ),
        None => Verdict::Unauthenticated,
    };
    let mut verdict = service.handle().read(decide);
    if !matches!(verdict, Verdict::Admitted(_)) {
        if let Err(retry) = service.denials().check(key, source, Instant::now()) {
            // Counted with what it would have been, without the catch-up read or a token charged.
            if let Err(refusal) = refusal(verdict, key, source) {
                service
                    .denials()
                    .record(refusal.denial(operation, true), now);
            }
            return Err(ServiceError::rate_limited(retry.as_secs_f64().ceil() as u64));
        }
        let behind = match verdict {
            Verdict::Unauthenticated => token.is_some(),
            Verdict::UnknownKey | Verdict::NotVisible { .. } => true,
            Verdict::Admitted(_) | Verdict::Forbidden { .. } => false,
        };
        if behind && service.handle().linearizable_read().await.is_ok() {
            verdict = service.handle().read(decide);
        }
    }
    match refusal(verdict, key, source) {
        Ok(scope) => Ok(Some(scope)),
        Err(refusal) => {
            service.denials().charge(key, source, Instant::now());
            service
                .denials()
                .record(refusal.denial(operation, false), service.handle().now_ms());
            Err(refusal.answer)
        }
    }
}

/// Why a request is refused: who, how, for the audit count; and the answer it gets.
struct Refusal {
    who: Refused,
    kind: DenialKind,
    project: Option<String>,
    target: String,
    reason: String,
    answer: ServiceError,
}

impl Refusal {
    fn denial<'a>(&'a self, operation: &'a Operation, limited: bool) -> Denial<'a> {
        Denial {
            who: self.who.clone(),
            operation: operation.name,
            kind: self.kind,
            project: self.project.clone(),
            target: &self.target,
            reason: &self.reason,
            limited,
        }
    }
}

/// The admitted scope, or the refusal a verdict stands for.
fn refusal(
    verdict: Verdict,
    key_id: Option<&str>,
    source: Option<IpAddr>,
) -> Result<RequestScope, Box<Refusal>> {
    match verdict {
        Verdict::Admitted(scope) => Ok(scope),
        Verdict::Unauthenticated | Verdict::UnknownKey => Err(Box::new(Refusal {
            who: Refused::Source(source),
            kind: DenialKind::Unauthenticated,
            project: None,
            target: key_id.unwrap_or_default().to_owned(),
            reason: "no valid API key".to_owned(),
            answer: ServiceError::unauthenticated(),
        })),
        Verdict::NotVisible {
            caller,
            requested,
            owner,
            nearest,
        } => Err(Box::new(Refusal {
            who: principal(&caller),
            kind: DenialKind::NotFound,
            // The record names the project by id when it exists (what its admins look for).
            target: owner.clone().unwrap_or_else(|| requested.clone()),
            project: owner,
            reason: "no such project, or no role in it".to_owned(),
            answer: match nearest {
                Some(name) => ServiceError::new(
                    ErrorKind::NotFound,
                    format!("project {requested} not found; did you mean {name}?"),
                ),
                None => ServiceError::not_found("project", &requested),
            },
        })),
        Verdict::Forbidden {
            caller,
            project_id,
            action,
        } => Err(Box::new(Refusal {
            who: principal(&caller),
            kind: DenialKind::Forbidden,
            target: project_id.clone().unwrap_or_else(|| "platform".to_owned()),
            project: project_id,
            reason: format!("roles do not grant {}", action_name(action)),
            answer: ServiceError::forbidden(format_args!(
                "this operation needs {}, which {} grants",
                action_name(action),
                crate::authz::granted_by(action)
            )),
        })),
    }
}

fn principal(caller: &Caller) -> Refused {
    Refused::Principal {
        id: caller.principal_id.clone(),
        name: caller.principal_name.clone(),
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

    /// A missing and a hidden project come out of `judge` as the same verdict, differing only in the
    /// owner recorded for the audit log; everything after it is one code path.
    #[test]
    fn a_missing_and_a_hidden_project_are_one_verdict() {
        use crate::state::{Actor, Command, KeyPrincipal, Op, TenancyOp, WrappedKey};
        let mut s = RegistryState::default();
        let mut apply = |op: Op| {
            let index = s.applied_index + 1;
            let out = s.apply(index, &Command::new(1_000 + index, Actor::system(), op));
            assert!(out.is_ok(), "{out:?}");
        };
        let wk = WrappedKey {
            master_key_id: "mk1".into(),
            nonce_b64: "AAAA".into(),
            ciphertext_b64: "ct".into(),
        };
        for (id, name) in [("prj_mine", "mine"), ("prj_theirs", "theirs")] {
            apply(Op::Tenancy(TenancyOp::CreateProject {
                id: id.into(),
                name: name.into(),
                description: String::new(),
                data_key: wk.clone(),
                policy: None,
            }));
        }
        let token = crypto::generate_token(&mut rand::rngs::OsRng);
        apply(Op::Tenancy(TenancyOp::CreateKey {
            limits: Default::default(),
            key_id: token.key_id.clone(),
            name: "k".into(),
            project_id: "prj_mine".into(),
            hash: token.hash.clone(),
            last4: token.last4.clone(),
            expires_at: None,
            principal: KeyPrincipal::NewServiceAccount {
                principal_id: "sa_me".into(),
                name: "me".into(),
            },
            role: Some(crate::authz::Role::Editor),
        }));
        let op = &super::super::routes::op::JOB_LIST;
        let verdict = |project: &str| {
            judge(
                &s,
                &token.token,
                2_000,
                Some(project),
                Action::ReadProject,
                op,
                None,
            )
        };
        let Verdict::NotVisible {
            caller: c1,
            requested: r1,
            owner: o1,
            nearest: n1,
        } = verdict("theirs")
        else {
            panic!("a hidden project is not visible");
        };
        let Verdict::NotVisible {
            caller: c2,
            requested: r2,
            owner: o2,
            nearest: n2,
        } = verdict("nosuch")
        else {
            panic!("a missing project is not visible");
        };
        assert_eq!((n1, n2), (None, None));
        // A typo is answered with the nearest project the caller sees, never with a hidden one.
        let nearest = |project: &str| match verdict(project) {
            Verdict::NotVisible { nearest, .. } => nearest,
            _ => panic!("{project} is not visible"),
        };
        assert_eq!(nearest("mina").as_deref(), Some("mine"));
        assert_eq!(
            nearest("their"),
            None,
            "a hidden project is never suggested"
        );
        assert_eq!(c1, c2);
        assert_eq!((r1.as_str(), r2.as_str()), ("theirs", "nosuch"));
        assert_eq!((o1.as_deref(), o2), (Some("prj_theirs"), None));
        assert!(matches!(verdict("mine"), Verdict::Admitted(_)));
        assert_eq!(
            ServiceError::not_found("project", "theirs").kind,
            ServiceError::not_found("project", "nosuch").kind
        );
    }

    #[test]
    fn action_names_are_kebab_case() {
        assert_eq!(action_name(Action::ReadProject), "read-project");
        assert_eq!(action_name(Action::RotateMasterKey), "rotate-master-key");
    }
}
