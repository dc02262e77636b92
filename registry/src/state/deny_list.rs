//! The replicated deny-list of mesh identities: certificates that coordinators (and, through them, agents)
//! refuse at the handshake and on every call, and whose open connections they close.
//!
//! Owns `DenyIdentity` / `AllowIdentity` and the lookup [`RegistryState::denial_of`]. An entry names either a
//! whole identity (its SPIFFE URI: every certificate ever issued for it) or one certificate (its serial
//! number, so a stolen certificate is revoked while its holder's renewed one keeps working). Values are
//! normalized and validated before they are stored; this module never reads a clock or a certificate:
//! what a connection's certificate says arrives from the RPC layer.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Actor, Applied, DomainError, Outcome, Page, PageRequest, RegistryState, Subject};

/// The deny-list's commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityOp {
    /// Adds an identity (every certificate naming it) or one certificate (by serial) to the deny-list:
    /// coordinators and agents refuse it and close its open connections. Platform-level.
    DenyIdentity {
        kind: DenyKind,
        value: String,
        #[serde(default)]
        reason: String,
    },
    /// Removes a deny-list entry. Platform-level.
    AllowIdentity { kind: DenyKind, value: String },
}

/// What a deny-list command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityOutcome {
    /// A deny-list entry was added or removed.
    Denied { entry: DeniedIdentity },
}

/// The deny-list: this domain's whole state. Only its own commands change it (`DenyList::execute` has
/// nothing else to write to); the rest of the registry reads it through the lookups below.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DenyList {
    /// Deny-list id (`identity:<uri>` or `serial:<hex>`) → entry.
    entries: BTreeMap<String, DeniedIdentity>,
    /// Incremented by every change.
    version: u64,
    /// Index: the keys (`region/cluster/node`) of nodes whose agent identity is denied, derived from the
    /// entries.
    denied_nodes: BTreeSet<String>,
}

impl DenyList {
    /// Applies one identity command (already checked against its actor by `apply`).
    pub(super) fn execute(
        &mut self,
        actor: &Actor,
        op: &IdentityOp,
        at: u64,
    ) -> Result<Applied, DomainError> {
        match op {
            IdentityOp::DenyIdentity {
                kind,
                value,
                reason,
            } => self.deny(at, &actor.name, *kind, value, reason),
            IdentityOp::AllowIdentity { kind, value } => self.allow(*kind, value),
        }
    }

    /// A deny-list holding `entries` at `version` (a snapshot's), its node index derived from them.
    pub(super) fn from_entries(
        entries: BTreeMap<String, DeniedIdentity>,
        version: u64,
    ) -> DenyList {
        let denied_nodes = entries
            .values()
            .filter_map(|e| agent_node_key(e.kind, &e.value))
            .collect();
        DenyList {
            entries,
            version,
            denied_nodes,
        }
    }

    /// The parts a snapshot writes: entries, version, node index.
    pub(super) fn wire(&self) -> (&BTreeMap<String, DeniedIdentity>, u64, &BTreeSet<String>) {
        (&self.entries, self.version, &self.denied_nodes)
    }
}

impl IdentityOp {
    /// What the audit log records this command as.
    pub(super) fn subject(&self) -> Subject {
        let s = Subject::of;
        match self {
            IdentityOp::DenyIdentity { kind, value, .. } => {
                s("identity.deny", None, &deny_id(*kind, value))
            }
            IdentityOp::AllowIdentity { kind, value } => {
                s("identity.allow", None, &deny_id(*kind, value))
            }
        }
    }
}

/// Most entries the deny-list holds (each one is checked on every call).
pub const MAX_DENIED: usize = 10_000;
/// Longest reason kept with an entry.
const MAX_REASON: usize = 512;
/// Longest identity URI (SPIFFE's limit).
const MAX_URI: usize = 2048;
/// Longest serial number in hex (RFC 5280 allows 20 octets).
const MAX_SERIAL_HEX: usize = 40;

/// What a deny-list entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DenyKind {
    /// Every certificate whose URI SAN is this identity.
    Identity,
    /// The one certificate with this serial number (lowercase hex).
    Serial,
}

impl DenyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyKind::Identity => "identity",
            DenyKind::Serial => "serial",
        }
    }
}

/// One denied identity or certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeniedIdentity {
    /// `identity:<uri>` or `serial:<hex>`: unique, and what `AllowIdentity` names.
    pub id: String,
    pub kind: DenyKind,
    /// The identity URI or the serial number.
    pub value: String,
    /// Why, for operators.
    pub reason: String,
    /// Unix milliseconds.
    pub denied_at: u64,
    /// Who denied it (the actor's name).
    pub denied_by: String,
}

/// The deny-list key of `(kind, value)`.
pub fn deny_id(kind: DenyKind, value: &str) -> String {
    format!("{}:{value}", kind.as_str())
}

/// A serial number as the deny-list stores it: lowercase hex, without `:` separators or a `0x` prefix.
/// `None` when it is not 1-40 hex digits.
pub fn normalize_serial(serial: &str) -> Option<String> {
    let trimmed = serial.trim();
    let bare = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let hex: String = bare.chars().filter(|c| *c != ':').collect();
    let ok = !hex.is_empty()
        && hex.len() <= MAX_SERIAL_HEX
        && hex.chars().all(|c| c.is_ascii_hexdigit());
    ok.then(|| hex.to_ascii_lowercase())
}

/// The node key of an agent identity entry (`None` for other roles and for serials).
fn agent_node_key(kind: DenyKind, value: &str) -> Option<String> {
    if kind != DenyKind::Identity {
        return None;
    }
    match certs::Identity::parse_uri(value).ok()?.kind {
        certs::IdentityKind::Agent {
            region,
            cluster,
            node,
        } => Some(super::node_key(&region, &cluster, &node)),
        _ => None,
    }
}

fn validate_value(kind: DenyKind, value: &str) -> Result<(), DomainError> {
    match kind {
        DenyKind::Identity => {
            if value.len() > MAX_URI {
                return Err(DomainError::invalid(
                    "identity",
                    format!("at most {MAX_URI} bytes"),
                ));
            }
            let parsed = certs::Identity::parse_uri(value)
                .map_err(|e| DomainError::invalid("identity", e.to_string()))?;
            if parsed.uri() != value {
                return Err(DomainError::invalid(
                    "identity",
                    "must be written exactly as certificates carry it",
                ));
            }
            Ok(())
        }
        DenyKind::Serial => match normalize_serial(value) {
            Some(normal) if normal == value => Ok(()),
            _ => Err(DomainError::invalid(
                "serial",
                format!("must be 1-{MAX_SERIAL_HEX} lowercase hex digits"),
            )),
        },
    }
}

impl DenyList {
    /// `DenyIdentity`: adds an entry. A repeat of an entry already present is `AlreadyExists`.
    fn deny(
        &mut self,
        at: u64,
        actor: &str,
        kind: DenyKind,
        value: &str,
        reason: &str,
    ) -> Result<Applied, DomainError> {
        validate_value(kind, value)?;
        if reason.len() > MAX_REASON {
            return Err(DomainError::invalid(
                "reason",
                format!("at most {MAX_REASON} bytes"),
            ));
        }
        let id = deny_id(kind, value);
        if self.entries.contains_key(&id) {
            return Err(DomainError::exists("denied identity", &id));
        }
        if self.entries.len() >= MAX_DENIED {
            return Err(DomainError::FailedPrecondition(format!(
                "the deny-list already holds {MAX_DENIED} entries"
            )));
        }
        let entry = DeniedIdentity {
            id: id.clone(),
            kind,
            value: value.to_owned(),
            reason: reason.to_owned(),
            denied_at: at,
            denied_by: actor.to_owned(),
        };
        self.entries.insert(id, entry.clone());
        if let Some(key) = agent_node_key(kind, value) {
            self.denied_nodes.insert(key);
        }
        self.version = self.version.saturating_add(1);
        let detail = if reason.is_empty() {
            format!("{} denied", kind.as_str())
        } else {
            format!("{} denied: {reason}", kind.as_str())
        };
        Ok(Applied::new(
            Outcome::Identity(IdentityOutcome::Denied { entry }),
            detail,
        ))
    }

    /// `AllowIdentity`: removes an entry; an entry that is not there is `NotFound`.
    fn allow(&mut self, kind: DenyKind, value: &str) -> Result<Applied, DomainError> {
        let id = deny_id(kind, value);
        let entry = self
            .entries
            .remove(&id)
            .ok_or_else(|| DomainError::not_found("denied identity", &id))?;
        if let Some(key) = agent_node_key(kind, value) {
            self.denied_nodes.remove(&key);
        }
        self.version = self.version.saturating_add(1);
        Ok(Applied::new(
            Outcome::Identity(IdentityOutcome::Denied { entry }),
            format!("{} allowed again", kind.as_str()),
        ))
    }

    /// The entry that denies a certificate with this identity URI and serial, if any.
    pub fn denial_of(&self, identity_uri: &str, serial: &str) -> Option<&DeniedIdentity> {
        if self.entries.is_empty() {
            return None;
        }
        self.entries
            .get(&deny_id(DenyKind::Identity, identity_uri))
            .or_else(|| self.entries.get(&deny_id(DenyKind::Serial, serial)))
    }

    /// Whether the agent identity of node `key` (`region/cluster/node`) is denied.
    pub fn node_denied(&self, key: &str) -> bool {
        self.denied_nodes.contains(key)
    }

    /// Whether the identity (any certificate of it) is denied.
    pub fn identity_denied(&self, identity_uri: &str) -> bool {
        self.entries
            .contains_key(&deny_id(DenyKind::Identity, identity_uri))
    }

    /// Every entry, in id order.
    pub fn entries(&self) -> impl Iterator<Item = &DeniedIdentity> {
        self.entries.values()
    }

    /// A page of entries in id order.
    pub fn page(&self, req: &PageRequest) -> Page<DeniedIdentity> {
        Page::from_sorted(self.entries.iter().map(|(k, v)| (k, v.clone())), req)
    }

    /// Moves whenever the deny-list changes, so watchers re-check open connections only then.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl RegistryState {
    /// The entry that denies a certificate with this identity URI and serial, if any.
    pub fn denial_of(&self, identity_uri: &str, serial: &str) -> Option<&DeniedIdentity> {
        self.identities.denial_of(identity_uri, serial)
    }

    /// Whether the agent identity of node `key` (`region/cluster/node`) is denied.
    pub fn node_denied(&self, key: &str) -> bool {
        self.identities.node_denied(key)
    }

    /// Whether the identity (any certificate of it) is denied.
    pub fn identity_denied(&self, identity_uri: &str) -> bool {
        self.identities.identity_denied(identity_uri)
    }

    /// Every deny-list entry, in id order.
    pub fn denied_identities(&self) -> impl Iterator<Item = &DeniedIdentity> {
        self.identities.entries()
    }

    /// A page of deny-list entries in id order.
    pub fn denied_page(&self, req: &PageRequest) -> Page<DeniedIdentity> {
        self.identities.page(req)
    }

    /// Moves whenever the deny-list changes, so watchers re-check open connections only then.
    pub fn deny_list_version(&self) -> u64 {
        self.identities.version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::state::{Actor, AuditOutcome, Command, IdentityOp, Op};

    const URI: &str = "spiffe://td.example/region/eu/cluster/a/agent/n1";

    fn apply(state: &mut RegistryState, op: Op) -> crate::state::CommandOutcome {
        let index = state.applied_index + 1;
        state.apply(index, &Command::new(100, Actor::principal("p1", "ops"), op))
    }

    fn deny(kind: DenyKind, value: &str) -> Op {
        Op::Identity(IdentityOp::DenyIdentity {
            kind,
            value: value.into(),
            reason: "stolen".into(),
        })
    }

    #[test]
    fn serials_are_normalized() {
        assert_eq!(normalize_serial("4A:0b:FF").as_deref(), Some("4a0bff"));
        assert_eq!(normalize_serial("0x4a0b").as_deref(), Some("4a0b"));
        assert_eq!(normalize_serial(" 01 ").as_deref(), Some("01"));
        assert_eq!(normalize_serial(""), None);
        assert_eq!(normalize_serial("xyz"), None);
        assert_eq!(normalize_serial(&"a".repeat(41)), None);
    }

    #[test]
    fn deny_and_allow_are_audited_and_move_the_version() {
        let mut s = RegistryState::default();
        assert_eq!(s.deny_list_version(), 0);
        let out = apply(&mut s, deny(DenyKind::Identity, URI)).expect("denied");
        let Outcome::Identity(IdentityOutcome::Denied { entry }) = out else {
            panic!("unexpected {out:?}")
        };
        assert_eq!(entry.id, format!("identity:{URI}"));
        assert_eq!(entry.denied_by, "ops");
        assert_eq!(entry.denied_at, 100);
        assert_eq!(s.deny_list_version(), 1);
        assert!(s.denial_of(URI, "0a").is_some());
        assert!(s.identity_denied(URI));
        assert!(s.node_denied("eu/a/n1"));
        assert!(!s.node_denied("eu/a/n2"));
        assert!(s
            .denial_of("spiffe://td.example/coordinator/c1", "0a")
            .is_none());
        let last = s.audit_records().last().expect("audited");
        assert_eq!(last.action, "identity.deny");
        assert_eq!(last.target, entry.id);
        assert_eq!(last.outcome, AuditOutcome::Success);

        let again = apply(&mut s, deny(DenyKind::Identity, URI));
        assert!(
            matches!(again, Err(DomainError::AlreadyExists { .. })),
            "{again:?}"
        );
        assert_eq!(s.deny_list_version(), 1);

        apply(&mut s, deny(DenyKind::Serial, "4a0bff")).expect("serial denied");
        let c1 = "spiffe://td.example/coordinator/c1";
        assert_eq!(
            s.denial_of(c1, "4a0bff").map(|e| e.kind),
            Some(DenyKind::Serial)
        );
        assert!(!s.identity_denied(c1));

        apply(
            &mut s,
            Op::Identity(IdentityOp::AllowIdentity {
                kind: DenyKind::Identity,
                value: URI.into(),
            }),
        )
        .expect("allowed");
        assert!(s.denial_of(URI, "0a").is_none());
        assert!(!s.node_denied("eu/a/n1"));
        assert_eq!(s.deny_list_version(), 3);
        assert_eq!(
            s.audit_records().last().map(|r| r.action.as_str()),
            Some("identity.allow")
        );
        let missing = apply(
            &mut s,
            Op::Identity(IdentityOp::AllowIdentity {
                kind: DenyKind::Identity,
                value: URI.into(),
            }),
        );
        assert!(
            matches!(missing, Err(DomainError::NotFound { .. })),
            "{missing:?}"
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        let mut s = RegistryState::default();
        for op in [
            deny(DenyKind::Identity, "not a uri"),
            deny(DenyKind::Identity, "spiffe://td.example/nobody/x"),
            deny(DenyKind::Serial, "4A:0B"),
            deny(DenyKind::Serial, ""),
            Op::Identity(IdentityOp::DenyIdentity {
                kind: DenyKind::Serial,
                value: "01".into(),
                reason: "x".repeat(MAX_REASON + 1),
            }),
        ] {
            assert!(
                matches!(apply(&mut s, op), Err(DomainError::Invalid { .. })),
                "accepted"
            );
        }
        assert_eq!(s.denied_identities().count(), 0);
        assert_eq!(s.deny_list_version(), 0);
    }
}
