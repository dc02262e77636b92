//! The admin API's secret operations: putting, reading (metadata only), deleting and re-sealing secrets under
//! rotated master or data keys, with their request and reply types. The REST handlers and route rows are in
//! `rest.rs`, the gRPC adapter and method rows in `grpc.rs`.
//!
//! Values are sealed here, before a command is proposed, and never returned: replies carry versions and
//! bindings only.

pub(super) mod grpc;
pub(super) mod rest;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::crypto::{self, SecretAad};
use crate::state::{self, Op, Outcome, Scope, SecretOp, SecretOutcome, SecretView};

use super::auth::RequestScope;
use super::error::{ErrorKind, ServiceError};
use super::service::{
    crypto_error, unexpected, validate_secret_name, AdminService, ListPage, PageParams,
};

/// Largest secret value accepted (the registry caps sealed values at about 64 KiB).
const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Attempts at a write that lost a race with a concurrent one (secret versions, data-key rotation).
const RACE_ATTEMPTS: usize = 3;

/// `POST /v1/secrets`.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecretRequest {
    pub name: String,
    #[schema(write_only)]
    pub value: String,
    /// Who may use the secret: `principal:ID` (jobs that principal or service account submits) or
    /// `principal:ID/job:PATTERN` (only those whose name matches; `*` is any run of characters). Absent: keep
    /// the current bindings.
    #[serde(default)]
    pub bindings: Option<Vec<String>>,
}

impl Drop for PutSecretRequest {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

impl std::fmt::Debug for PutSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutSecretRequest")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A secret as callers see it, with its name as `id`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Secret)]
pub struct SecretResource {
    pub id: String,
    #[serde(flatten)]
    #[schema(inline)]
    pub secret: SecretView,
}

impl From<SecretView> for SecretResource {
    fn from(secret: SecretView) -> Self {
        SecretResource {
            id: secret.name.clone(),
            secret,
        }
    }
}

/// What `POST /v1/secrets:rewrap` did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RewrapResult {
    pub projects: u64,
    pub master_key_id: String,
    /// The data keys were replaced (not only re-wrapped) and every secret version re-encrypted.
    pub new_data_keys: bool,
    /// Secret versions re-encrypted (0 for a plain re-wrap).
    pub secret_versions: u64,
}

/// Query of `POST /v1/secrets:rewrap`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RewrapQuery {
    /// Replace the data keys and re-encrypt every secret version, not only re-wrap the keys.
    #[serde(default, deserialize_with = "query_bool")]
    pub(crate) new_data_keys: bool,
}

/// A query-string boolean: `true`/`false`/`1`/`0`; empty or absent is false.
fn query_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let raw: Option<String> = Option::deserialize(d)?;
    match raw.as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(t) => Err(serde::de::Error::custom(format!(
            "must be true or false, not {t:?}"
        ))),
    }
}

impl AdminService {
    // ---- secrets ----

    pub(crate) async fn put_secret(
        &self,
        scope: &RequestScope,
        req: PutSecretRequest,
    ) -> Result<SecretResource, ServiceError> {
        validate_secret_name(&req.name)?;
        if req.value.is_empty() {
            return Err(ServiceError::invalid("value", "must not be empty"));
        }
        if req.value.len() > MAX_SECRET_BYTES {
            return Err(ServiceError::invalid(
                "value",
                format!("at most {MAX_SECRET_BYTES} bytes"),
            ));
        }
        if let Some(bindings) = &req.bindings {
            self.consistent().await?;
            self.check_secret_bindings(&scope.project_id, bindings)?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.consistent().await?;
            let (wrapped, latest) = self.inner.handle.read(|s| {
                let scoped = s.project_scope(&scope.project_id);
                (
                    scoped.data_key().cloned(),
                    scoped.secret(&req.name).map_or(0, |x| x.latest_version()),
                )
            });
            let wrapped =
                wrapped.ok_or_else(|| ServiceError::not_found("project", &scope.project_id))?;
            let data_key =
                crypto::unwrap_data_key(&self.inner.keyring, &wrapped).map_err(crypto_error)?;
            let version = latest + 1;
            let aad = SecretAad {
                project_id: &scope.project_id,
                name: &req.name,
                version,
            };
            let sealed = crypto::encrypt_secret(
                &data_key,
                req.value.as_bytes(),
                aad,
                &mut self.inner.handle.rng(),
            );
            let op = Op::Secrets(SecretOp::PutSecret {
                project_id: scope.project_id.clone(),
                name: req.name.clone(),
                version,
                sealed,
                bindings: req.bindings.clone(),
            });
            match self.write(scope, op).await {
                Ok(Outcome::Secrets(SecretOutcome::Secret { secret })) => return Ok(secret.into()),
                Ok(other) => return Err(unexpected(other)),
                // Another put took this version number first: seal again for the next one.
                Err(e) if e.kind == ErrorKind::FailedPrecondition && attempt < RACE_ATTEMPTS => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Bindings written now name who may use the secret ([`state::BINDING_SYNTAX`]), and each principal
    /// they name acts in the project: owned by it, bound in it, or bound on the platform. A principal of
    /// another project is refused like a missing one.
    fn check_secret_bindings(
        &self,
        project_id: &str,
        bindings: &[String],
    ) -> Result<(), ServiceError> {
        let mut principals = Vec::new();
        for b in bindings {
            match state::validate_workload_binding(b)? {
                state::SecretBinding::Workload { principal_id, .. } => {
                    principals.push(principal_id)
                }
                state::SecretBinding::Legacy => {
                    return Err(ServiceError::invalid(
                        "bindings",
                        format!("{b:?} is not {}", state::BINDING_SYNTAX),
                    ))
                }
            }
        }
        let unknown = self.inner.handle.read(|s| {
            principals.into_iter().find(|id| {
                let Some(p) = s.principal(id) else {
                    return true;
                };
                let acts_here = s.bindings_of(id).iter().any(|b| match &b.scope {
                    Scope::Platform => true,
                    Scope::Project(p) => p == project_id,
                });
                !(p.is_owned_by(project_id) || acts_here)
            })
        });
        match unknown {
            Some(id) => Err(ServiceError::invalid(
                "bindings",
                format!("principal {id} is not a principal of this project"),
            )),
            None => Ok(()),
        }
    }

    pub(crate) async fn list_secrets(
        &self,
        scope: &RequestScope,
        page: &PageParams,
    ) -> Result<ListPage<SecretResource>, ServiceError> {
        let req = page.request()?;
        self.consistent().await?;
        let page = self
            .inner
            .handle
            .read(|s| s.project_scope(&scope.project_id).secrets(&req));
        Ok(page.map(SecretResource::from).into())
    }

    pub(crate) async fn get_secret(
        &self,
        scope: &RequestScope,
        name: &str,
    ) -> Result<SecretResource, ServiceError> {
        self.consistent().await?;
        self.inner
            .handle
            .read(|s| {
                s.project_scope(&scope.project_id)
                    .secret(name)
                    .map(|x| x.view().into())
            })
            .ok_or_else(|| ServiceError::not_found("secret", name))
    }

    pub(crate) async fn delete_secret(
        &self,
        scope: &RequestScope,
        name: &str,
    ) -> Result<(), ServiceError> {
        let op = Op::Secrets(SecretOp::DeleteSecret {
            project_id: scope.project_id.clone(),
            name: name.to_owned(),
        });
        self.write(scope, op).await.map(|_| ())
    }

    /// Master-key rotation: re-wraps every project's data key with the current master key, or with
    /// `new_data_keys` replaces the data keys themselves and re-encrypts every secret version under them,
    /// in one replicated command either way.
    pub(crate) async fn rewrap_secrets(
        &self,
        scope: &RequestScope,
        new_data_keys: bool,
    ) -> Result<RewrapResult, ServiceError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.consistent().await?;
            let op = if new_data_keys {
                let (keys, sealed) = self
                    .inner
                    .handle
                    .read(|s| (s.data_keys(), s.sealed_versions()));
                let (keys, secrets) = crypto::reseal_all(
                    &self.inner.keyring,
                    &keys,
                    &sealed,
                    &mut self.inner.handle.rng(),
                )
                .map_err(crypto_error)?;
                Op::Secrets(SecretOp::ReplaceDataKeys { keys, secrets })
            } else {
                let keys = self.inner.handle.read(|s| s.data_keys());
                let keys =
                    crypto::rewrap_all(&self.inner.keyring, &keys, &mut self.inner.handle.rng())
                        .map_err(crypto_error)?;
                Op::Secrets(SecretOp::RewrapDataKeys { keys })
            };
            let master_key_id = self.inner.keyring.current_id().to_owned();
            match self.write(scope, op).await {
                Ok(Outcome::Secrets(SecretOutcome::Rewrapped { projects })) => {
                    return Ok(RewrapResult {
                        projects,
                        master_key_id,
                        new_data_keys: false,
                        secret_versions: 0,
                    })
                }
                Ok(Outcome::Secrets(SecretOutcome::DataKeysReplaced {
                    projects,
                    secret_versions,
                })) => {
                    return Ok(RewrapResult {
                        projects,
                        master_key_id,
                        new_data_keys: true,
                        secret_versions,
                    })
                }
                Ok(other) => return Err(unexpected(other)),
                // A project or secret was created or deleted in between: the set must be complete, so read
                // it again.
                Err(e) if e.kind == ErrorKind::FailedPrecondition && attempt < RACE_ATTEMPTS => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_requests_do_not_debug_print_values() {
        let req = PutSecretRequest {
            name: "s3-key".into(),
            value: "hunter2".into(),
            bindings: None,
        };
        let text = format!("{req:?}");
        assert!(
            text.contains("s3-key") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
