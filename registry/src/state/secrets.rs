//! Envelope-encrypted secrets as replicated records: wrapped project data keys and sealed secret versions.
//!
//! Owns the secret records, their version numbering and workload bindings, and master-key rotation of the
//! wrapped data keys. Never holds plaintext or an unwrapped key: encryption happens in `crate::token`
//! before a command is proposed. Caller-facing views never include ciphertext.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::tenancy::{validate_id, validate_wrapped_key};
use super::{Applied, DomainError, Outcome, RegistryState, Subject};

/// The secrets domain's commands: secret versions and the data keys that seal them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretOp {
    /// Adds a version to a secret (creating it when `version` is 1). `version` must be the next version
    /// number: it is bound into the ciphertext's AAD, so a concurrent put is refused rather than mislabelled.
    PutSecret {
        project_id: String,
        name: String,
        version: u32,
        sealed: SealedValue,
        /// New workload bindings; `None` keeps the current ones.
        bindings: Option<Vec<String>>,
    },
    /// Deletes a secret and all its versions.
    DeleteSecret { project_id: String, name: String },
    /// Master-key rotation: replaces every project's wrapped data key. The map must name exactly the
    /// current projects (all-or-nothing).
    RewrapDataKeys { keys: BTreeMap<String, WrappedKey> },
    /// Master-key rotation that also replaces the data keys: every project gets the fresh data key in
    /// `keys` (wrapped by the current master key), and every stored version of every secret is replaced by
    /// its re-encryption under it in `secrets` (project id → secret name → versions). All-or-nothing: the
    /// maps must name exactly the current projects, secrets and versions.
    ReplaceDataKeys {
        keys: BTreeMap<String, WrappedKey>,
        secrets: BTreeMap<String, BTreeMap<String, Vec<ResealedVersion>>>,
    },
}

/// What a secrets command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretOutcome {
    /// A secret version was written.
    Secret { secret: SecretView },
    /// Data keys were re-wrapped for this many projects.
    Rewrapped { projects: u64 },
    /// Data keys were replaced for this many projects, and this many secret versions re-encrypted.
    DataKeysReplaced { projects: u64, secret_versions: u64 },
}

impl RegistryState {
    /// Applies one secrets command (already checked against its actor by `apply`).
    pub(super) fn execute_secrets(
        &mut self,
        op: &SecretOp,
        at: u64,
    ) -> Result<Applied, DomainError> {
        match op {
            SecretOp::PutSecret {
                project_id,
                name,
                version,
                sealed,
                bindings,
            } => self.put_secret(at, project_id, name, *version, sealed, bindings.as_deref()),
            SecretOp::DeleteSecret { project_id, name } => self.secrets.delete(project_id, name),
            SecretOp::RewrapDataKeys { keys } => self.rewrap_data_keys(keys),
            SecretOp::ReplaceDataKeys { keys, secrets } => self.replace_data_keys(keys, secrets),
        }
    }
}

impl SecretOp {
    /// What the audit log records this command as.
    pub(super) fn subject(&self) -> Subject {
        let s = Subject::of;
        match self {
            SecretOp::PutSecret {
                project_id, name, ..
            } => s("secret.put", Some(project_id), name),
            SecretOp::DeleteSecret { project_id, name } => {
                s("secret.delete", Some(project_id), name)
            }
            SecretOp::RewrapDataKeys { .. } => s("secret.rewrap", None, "data-keys"),
            SecretOp::ReplaceDataKeys { .. } => s("secret.rewrap", None, "data-keys+secrets"),
        }
    }
}

/// Largest accepted base64 ciphertext of one secret version (about 64 KiB of plaintext).
pub const MAX_SEALED_B64: usize = 90_000;
/// Versions kept per secret; older ones are dropped when a new one is added.
pub const MAX_SECRET_VERSIONS: usize = 32;
/// Workload bindings per secret.
pub const MAX_SECRET_BINDINGS: usize = 64;

/// A project's data key encrypted (AES-256-GCM) under the master key `master_key_id`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub master_key_id: String,
    pub nonce_b64: String,
    pub ciphertext_b64: String,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("master_key_id", &self.master_key_id)
            .finish_non_exhaustive()
    }
}

/// One secret value encrypted (AES-256-GCM) under its project's data key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValue {
    pub nonce_b64: String,
    pub ciphertext_b64: String,
}

impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValue")
            .field("ciphertext_len", &self.ciphertext_b64.len())
            .finish_non_exhaustive()
    }
}

/// One version of a secret sealed again under a project's new data key (`Op::ReplaceDataKeys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResealedVersion {
    pub version: u32,
    pub sealed: SealedValue,
}

/// One version of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersion {
    pub version: u32,
    pub sealed: SealedValue,
    pub created_at: u64,
}

/// A named secret of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub project_id: String,
    pub name: String,
    /// Oldest first; the last is the latest.
    pub versions: Vec<SecretVersion>,
    /// Who may use it (sorted, unique): `principal:<id>` (jobs the principal or service account submits)
    /// or `principal:<id>/job:<pattern>` (only those whose name matches). Selectors written before
    /// workload identities (`job:<pattern>`) are kept and shown but grant nothing (see [`SecretBinding`]).
    pub bindings: Vec<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A secret as callers see it: names, versions, bindings and times, never ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretView {
    pub project_id: String,
    pub name: String,
    pub latest_version: u32,
    pub versions: Vec<SecretVersionView>,
    pub bindings: Vec<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A version as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SecretVersion))]
pub struct SecretVersionView {
    pub version: u32,
    pub created_at: u64,
}

impl Secret {
    /// The latest version number (0 when there is none, which a stored secret never has).
    pub fn latest_version(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.version)
    }

    /// A version by number, or the latest with `None`.
    pub fn version(&self, version: Option<u32>) -> Option<&SecretVersion> {
        match version {
            None => self.versions.last(),
            Some(n) => self.versions.iter().find(|v| v.version == n),
        }
    }

    /// The caller-facing view.
    pub fn view(&self) -> SecretView {
        SecretView {
            project_id: self.project_id.clone(),
            name: self.name.clone(),
            latest_version: self.latest_version(),
            versions: self
                .versions
                .iter()
                .map(|v| SecretVersionView {
                    version: v.version,
                    created_at: v.created_at,
                })
                .collect(),
            bindings: self.bindings.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// Secret names: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
pub fn validate_secret_name(name: &str) -> Result<(), DomainError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "name",
            "must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}",
        ))
    }
}

/// What one of a secret's bindings names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretBinding<'a> {
    /// `principal:<id>` or `principal:<id>/job:<pattern>`: jobs submitted by that principal (user or
    /// service account), optionally only those whose name (or id) matches the pattern (`*` for any run of
    /// characters). The job's name alone never selects it: the submitter must be the named principal.
    Workload {
        principal_id: &'a str,
        job: Option<&'a str>,
    },
    /// Any other `kind:pattern` selector, as written before secrets were bound to workload identities
    /// (`job:*`, `job:<name>`). Kept and shown so operators can see what to rebind, but it grants nothing to
    /// a job submitted since: a job's name is chosen by whoever submits it.
    Legacy,
}

/// The binding syntax, for messages.
pub const BINDING_SYNTAX: &str = "principal:ID or principal:ID/job:PATTERN";

impl<'a> SecretBinding<'a> {
    /// Reads a stored binding; anything that is not a well-formed workload binding is [`SecretBinding::Legacy`].
    pub fn parse(binding: &'a str) -> Self {
        Self::parse_workload(binding)
            .ok()
            .unwrap_or(SecretBinding::Legacy)
    }

    /// A workload binding, or why `binding` is not one.
    fn parse_workload(binding: &'a str) -> Result<Self, String> {
        let Some(rest) = binding.strip_prefix("principal:") else {
            return Err(format!(
                "{binding:?} is not {BINDING_SYNTAX} (a binding names who may use the secret)"
            ));
        };
        let (principal_id, job) = match rest.split_once('/') {
            None => (rest, None),
            Some((id, tail)) => match tail.strip_prefix("job:") {
                Some(pattern) => (id, Some(pattern)),
                None => {
                    return Err(format!(
                        "{binding:?}: after the principal only /job:PATTERN may follow"
                    ))
                }
            },
        };
        if validate_id("principal", principal_id).is_err() {
            return Err(format!(
                "{binding:?}: the principal id must be 1-64 characters of [A-Za-z0-9_-]"
            ));
        }
        if let Some(pattern) = job {
            let ok = !pattern.is_empty()
                && pattern.len() <= 128
                && pattern
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '.' | '_' | '-'));
            if !ok {
                return Err(format!(
                    "{binding:?}: the job pattern must be 1-128 characters of [A-Za-z0-9*._-]"
                ));
            }
        }
        Ok(SecretBinding::Workload { principal_id, job })
    }
}

/// Checks a binding written through the API now: only workload bindings are accepted.
pub fn validate_workload_binding(binding: &str) -> Result<SecretBinding<'_>, DomainError> {
    SecretBinding::parse_workload(binding).map_err(|m| DomainError::invalid("bindings", m))
}

/// Bindings as stored: workload bindings, or (so that logs from before them still replay) `kind:pattern`
/// selectors, kind `[a-z][a-z0-9-]*`, pattern of `[A-Za-z0-9*._/-]`; each at most 256 characters. Returns
/// them sorted and de-duplicated.
pub fn normalize_bindings(bindings: &[String]) -> Result<Vec<String>, DomainError> {
    if bindings.len() > MAX_SECRET_BINDINGS {
        return Err(DomainError::invalid(
            "bindings",
            format!("at most {MAX_SECRET_BINDINGS}"),
        ));
    }
    let mut out = BTreeSet::new();
    for b in bindings {
        let legacy = b.len() <= 128
            && b.split_once(':').is_some_and(|(kind, pattern)| {
                let mut k = kind.chars();
                k.next().is_some_and(|c| c.is_ascii_lowercase())
                    && k.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !pattern.is_empty()
                    && pattern.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '*' | '.' | '_' | '/' | '-')
                    })
            });
        if !legacy && SecretBinding::parse_workload(b).is_err() {
            return Err(DomainError::invalid(
                "bindings",
                format!("{b:?} is not {BINDING_SYNTAX}"),
            ));
        }
        out.insert(b.clone());
    }
    Ok(out.into_iter().collect())
}

fn validate_sealed(sealed: &SealedValue) -> Result<(), DomainError> {
    if sealed.nonce_b64.is_empty() || sealed.nonce_b64.len() > 32 {
        return Err(DomainError::invalid("sealed", "nonce missing or too long"));
    }
    if sealed.ciphertext_b64.is_empty() || sealed.ciphertext_b64.len() > MAX_SEALED_B64 {
        return Err(DomainError::invalid(
            "sealed",
            "ciphertext missing or larger than 64 KiB",
        ));
    }
    Ok(())
}

/// The secrets: this domain's state, every project's secrets with their sealed versions (never plaintext).
/// Only secret commands change it, through the methods below; the registry checks the project against
/// tenancy first, and routes data-key changes to the projects (`RegistryState::rewrap_data_keys`,
/// `RegistryState::replace_data_keys`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretStore {
    /// project id → secret name → secret.
    by_project: BTreeMap<String, BTreeMap<String, Secret>>,
}

impl SecretStore {
    /// A store holding a snapshot's secrets.
    pub(super) fn from_parts(
        by_project: BTreeMap<String, BTreeMap<String, Secret>>,
    ) -> SecretStore {
        SecretStore { by_project }
    }

    /// The secrets, as a snapshot writes them.
    pub(super) fn parts(&self) -> &BTreeMap<String, BTreeMap<String, Secret>> {
        &self.by_project
    }

    /// A secret of a project.
    pub fn get(&self, project_id: &str, name: &str) -> Option<&Secret> {
        self.by_project.get(project_id).and_then(|s| s.get(name))
    }

    /// A project's secrets, by name.
    pub fn of_project(&self, project_id: &str) -> impl Iterator<Item = (&String, &Secret)> {
        self.by_project.get(project_id).into_iter().flatten()
    }

    /// Whether the project holds any secret.
    pub fn project_has_secrets(&self, project_id: &str) -> bool {
        self.by_project
            .get(project_id)
            .is_some_and(|s| !s.is_empty())
    }

    /// Forgets a deleted project's secrets.
    pub(super) fn forget_project(&mut self, project_id: &str) {
        self.by_project.remove(project_id);
    }

    /// `PutSecret` for a project tenancy knows.
    fn put(
        &mut self,
        at: u64,
        project_id: &str,
        name: &str,
        version: u32,
        sealed: &SealedValue,
        bindings: Option<&[String]>,
    ) -> Result<Applied, DomainError> {
        validate_secret_name(name)?;
        validate_sealed(sealed)?;
        let bindings = bindings.map(normalize_bindings).transpose()?;
        let existing = self.get(project_id, name);
        let expected = existing.map_or(1, |s| s.latest_version() + 1);
        if version != expected {
            return Err(DomainError::FailedPrecondition(format!(
                "secret {name}: version {version} was prepared but the next version is {expected}; retry"
            )));
        }
        let entry = self
            .by_project
            .entry(project_id.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_insert_with(|| Secret {
                project_id: project_id.to_owned(),
                name: name.to_owned(),
                versions: Vec::new(),
                bindings: Vec::new(),
                created_at: at,
                updated_at: at,
            });
        entry.versions.push(SecretVersion {
            version,
            sealed: sealed.clone(),
            created_at: at,
        });
        if entry.versions.len() > MAX_SECRET_VERSIONS {
            let excess = entry.versions.len() - MAX_SECRET_VERSIONS;
            entry.versions.drain(..excess);
        }
        if let Some(b) = bindings {
            entry.bindings = b;
        }
        entry.updated_at = at;
        let view = entry.view();
        Ok(Applied::new(
            Outcome::Secrets(SecretOutcome::Secret { secret: view }),
            format!("version={version}"),
        ))
    }

    /// `DeleteSecret`.
    pub(super) fn delete(&mut self, project_id: &str, name: &str) -> Result<Applied, DomainError> {
        let Some(secrets) = self.by_project.get_mut(project_id) else {
            return Err(DomainError::not_found("secret", name));
        };
        let Some(removed) = secrets.remove(name) else {
            return Err(DomainError::not_found("secret", name));
        };
        if secrets.is_empty() {
            self.by_project.remove(project_id);
        }
        Ok(Applied::new(
            Outcome::Deleted,
            format!("versions={}", removed.versions.len()),
        ))
    }

    /// Whether `resealed` names exactly the stored versions, each once; how many it names.
    fn matches_resealed(
        &self,
        resealed: &BTreeMap<String, BTreeMap<String, Vec<ResealedVersion>>>,
    ) -> Option<usize> {
        let stored: BTreeSet<(&String, &String, u32)> = self
            .by_project
            .iter()
            .flat_map(|(p, by_name)| {
                by_name
                    .iter()
                    .flat_map(move |(n, s)| s.versions.iter().map(move |v| (p, n, v.version)))
            })
            .collect();
        let given: BTreeSet<(&String, &String, u32)> = resealed
            .iter()
            .flat_map(|(p, by_name)| {
                by_name
                    .iter()
                    .flat_map(move |(n, vs)| vs.iter().map(move |v| (p, n, v.version)))
            })
            .collect();
        let count: usize = resealed
            .values()
            .flat_map(BTreeMap::values)
            .map(Vec::len)
            .sum();
        (stored == given && count == given.len()).then_some(count)
    }

    /// Replaces every stored version's ciphertext by its re-encryption (checked by `matches_resealed`).
    fn reseal(&mut self, resealed: &BTreeMap<String, BTreeMap<String, Vec<ResealedVersion>>>) {
        for (project_id, by_name) in resealed {
            for (name, versions) in by_name {
                let Some(secret) = self
                    .by_project
                    .get_mut(project_id)
                    .and_then(|s| s.get_mut(name))
                else {
                    continue;
                };
                for resealed in versions {
                    if let Some(v) = secret
                        .versions
                        .iter_mut()
                        .find(|v| v.version == resealed.version)
                    {
                        v.sealed = resealed.sealed.clone();
                    }
                }
            }
        }
    }

    /// Every stored secret version, by project and name (for re-encryption under new data keys).
    pub fn sealed_versions(&self) -> BTreeMap<String, BTreeMap<String, Vec<ResealedVersion>>> {
        self.by_project
            .iter()
            .map(|(p, by_name)| {
                let by_name = by_name
                    .iter()
                    .map(|(n, s)| {
                        let versions = s
                            .versions
                            .iter()
                            .map(|v| ResealedVersion {
                                version: v.version,
                                sealed: v.sealed.clone(),
                            })
                            .collect();
                        (n.clone(), versions)
                    })
                    .collect();
                (p.clone(), by_name)
            })
            .collect()
    }
}

impl RegistryState {
    /// `PutSecret`: the project must exist (tenancy), then the store adds the version.
    pub fn put_secret(
        &mut self,
        at: u64,
        project_id: &str,
        name: &str,
        version: u32,
        sealed: &SealedValue,
        bindings: Option<&[String]>,
    ) -> Result<Applied, DomainError> {
        if self.tenancy.project(project_id).is_none() {
            return Err(DomainError::not_found("project", project_id));
        }
        self.secrets
            .put(at, project_id, name, version, sealed, bindings)
    }

    pub fn rewrap_data_keys(
        &mut self,
        keys: &BTreeMap<String, WrappedKey>,
    ) -> Result<Applied, DomainError> {
        let current: BTreeSet<&String> = self.tenancy.projects().map(|p| &p.id).collect();
        let given: BTreeSet<&String> = keys.keys().collect();
        if current != given {
            return Err(DomainError::FailedPrecondition(
                "the set of projects changed while the data keys were re-wrapped; retry".to_owned(),
            ));
        }
        for (project_id, key) in keys {
            validate_id("project_id", project_id)?;
            validate_wrapped_key("keys", key)?;
        }
        let master_ids: BTreeSet<&str> = keys.values().map(|k| k.master_key_id.as_str()).collect();
        for (project_id, key) in keys {
            self.tenancy.set_data_key(project_id, key);
        }
        let ids: Vec<&str> = master_ids.into_iter().collect();
        Ok(Applied::new(
            Outcome::Secrets(SecretOutcome::Rewrapped {
                projects: keys.len() as u64,
            }),
            format!("projects={} master_keys={}", keys.len(), ids.join(",")),
        ))
    }

    /// `ReplaceDataKeys`: every project gets its new data key (tenancy) and every stored secret version its
    /// re-encryption (the store), all or nothing.
    pub fn replace_data_keys(
        &mut self,
        keys: &BTreeMap<String, WrappedKey>,
        secrets: &BTreeMap<String, BTreeMap<String, Vec<ResealedVersion>>>,
    ) -> Result<Applied, DomainError> {
        let changed = || {
            DomainError::FailedPrecondition(
                "projects or secrets changed while the data keys were replaced; retry".to_owned(),
            )
        };
        let current: BTreeSet<&String> = self.tenancy.projects().map(|p| &p.id).collect();
        if current != keys.keys().collect::<BTreeSet<_>>() {
            return Err(changed());
        }
        for (project_id, key) in keys {
            validate_id("project_id", project_id)?;
            validate_wrapped_key("keys", key)?;
        }
        // Exactly the stored secrets and versions, each sealed afresh: nothing may be left under an old key.
        let Some(count) = self.secrets.matches_resealed(secrets) else {
            return Err(changed());
        };
        for v in secrets.values().flat_map(BTreeMap::values).flatten() {
            validate_sealed(&v.sealed)?;
        }
        for (project_id, key) in keys {
            self.tenancy.set_data_key(project_id, key);
        }
        self.secrets.reseal(secrets);
        let master_ids: BTreeSet<&str> = keys.values().map(|k| k.master_key_id.as_str()).collect();
        let ids: Vec<&str> = master_ids.into_iter().collect();
        Ok(Applied::new(
            Outcome::Secrets(SecretOutcome::DataKeysReplaced {
                projects: keys.len() as u64,
                secret_versions: count as u64,
            }),
            format!(
                "projects={} secret_versions={count} master_keys={} new_data_keys=true",
                keys.len(),
                ids.join(",")
            ),
        ))
    }

    /// Every stored secret version, by project and name (for re-encryption under new data keys).
    pub fn sealed_versions(&self) -> BTreeMap<String, BTreeMap<String, Vec<ResealedVersion>>> {
        self.secrets.sealed_versions()
    }

    /// A project's wrapped data key.
    pub fn data_key(&self, project_id: &str) -> Option<&WrappedKey> {
        self.tenancy.project(project_id).map(|p| &p.data_key)
    }

    /// Every project's wrapped data key, for master-key rotation.
    pub fn data_keys(&self) -> BTreeMap<String, WrappedKey> {
        self.tenancy
            .projects()
            .map(|p| (p.id.clone(), p.data_key.clone()))
            .collect()
    }
}
