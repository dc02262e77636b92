//! SPIFFE-style identities: the single URI SAN of every Meridian certificate.
//!
//! Owns `Identity`, `IdentityKind` and `Role`, their parsing from and formatting to URIs, and the validation
//! of trust domains and path segments. Parsing must accept exactly the URIs that formatting produces and
//! must never panic, whatever a peer puts in its certificate. This module does no I/O and knows nothing
//! of certificates beyond the URI text.

use std::fmt;
use std::str::FromStr;

use crate::error::{quote, CertError};

/// The scheme prefix of every identity URI.
const SCHEME: &str = "spiffe://";
/// Upper bound of a whole identity URI (SPIFFE's limit).
const MAX_URI_LEN: usize = 2048;
/// Upper bound of a trust domain's length (a DNS name's).
const MAX_TRUST_DOMAIN_LEN: usize = 253;
/// Upper bound of one DNS label of a trust domain.
const MAX_LABEL_LEN: usize = 63;
/// Upper bound of one path segment (`[a-z0-9][a-z0-9._-]{0,62}`).
const MAX_SEGMENT_LEN: usize = 63;

/// The role an identity plays.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coordinator,
    Agent,
    Gateway,
    Operator,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 4] = [
        Role::Coordinator,
        Role::Agent,
        Role::Gateway,
        Role::Operator,
    ];

    /// Whether certificates of this role may carry DNS or IP address SANs: only the processes that serve
    /// HTTPS to clients checking a host name (coordinators' admin API, gateways). An agent or operator
    /// certificate that also named a host could be presented as that host's server.
    pub fn may_name_hosts(self) -> bool {
        matches!(self, Role::Coordinator | Role::Gateway)
    }

    /// The lowercase name used in URIs, configs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Gateway => "gateway",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                CertError::Invalid(format!(
                    "unknown role {}: expected coordinator, agent, gateway or operator",
                    quote(s)
                ))
            })
    }
}

/// The parsed identity of a process (the certificate's single URI SAN).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub kind: IdentityKind,
}

/// The role-specific part of an identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    Coordinator {
        name: String,
    },
    Agent {
        region: String,
        cluster: String,
        node: String,
    },
    Gateway {
        region: String,
        name: String,
    },
    Operator {
        name: String,
    },
}

impl Identity {
    /// Parses `spiffe://<trust-domain>/<role path>`; anything else is refused with the reason.
    pub fn parse_uri(uri: &str) -> Result<Identity, CertError> {
        let invalid = |reason: String| CertError::InvalidIdentity {
            uri: quote(uri),
            reason,
        };
        if uri.len() > MAX_URI_LEN {
            return Err(invalid(format!(
                "is {} bytes long, at most {MAX_URI_LEN} are allowed",
                uri.len()
            )));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid(format!("must start with {SCHEME}")))?;
        let (trust_domain, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, ""),
        };
        validate_trust_domain(trust_domain).map_err(|e| match e {
            CertError::InvalidTrustDomain { reason, .. } => {
                invalid(format!("trust domain: {reason}"))
            }
            other => other,
        })?;
        if path.is_empty() {
            return Err(invalid(
                "has no path: a trust domain alone names no process".to_string(),
            ));
        }
        let segments: Vec<&str> = path.split('/').collect();
        for (index, segment) in segments.iter().enumerate() {
            validate_segment(segment)
                .map_err(|reason| invalid(format!("path segment {}: {reason}", index + 1)))?;
        }
        let kind = match segments.as_slice() {
            ["coordinator", name] => IdentityKind::Coordinator {
                name: name.to_string(),
            },
            ["region", region, "cluster", cluster, "agent", node] => IdentityKind::Agent {
                region: region.to_string(),
                cluster: cluster.to_string(),
                node: node.to_string(),
            },
            ["region", region, "gateway", name] => IdentityKind::Gateway {
                region: region.to_string(),
                name: name.to_string(),
            },
            ["operator", name] => IdentityKind::Operator {
                name: name.to_string(),
            },
            _ => {
                return Err(invalid(
                    "path matches no role: expected /coordinator/<name>, \
                     /region/<r>/cluster/<c>/agent/<node>, /region/<r>/gateway/<name> \
                     or /operator/<name>"
                        .to_string(),
                ))
            }
        };
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            kind,
        })
    }

    /// The identity as a URI, e.g. `spiffe://example.org/coordinator/c1`.
    pub fn uri(&self) -> String {
        let td = &self.trust_domain;
        match &self.kind {
            IdentityKind::Coordinator { name } => format!("{SCHEME}{td}/coordinator/{name}"),
            IdentityKind::Agent {
                region,
                cluster,
                node,
            } => format!("{SCHEME}{td}/region/{region}/cluster/{cluster}/agent/{node}"),
            IdentityKind::Gateway { region, name } => {
                format!("{SCHEME}{td}/region/{region}/gateway/{name}")
            }
            IdentityKind::Operator { name } => format!("{SCHEME}{td}/operator/{name}"),
        }
    }

    /// The role this identity plays.
    pub fn role(&self) -> Role {
        match self.kind {
            IdentityKind::Coordinator { .. } => Role::Coordinator,
            IdentityKind::Agent { .. } => Role::Agent,
            IdentityKind::Gateway { .. } => Role::Gateway,
            IdentityKind::Operator { .. } => Role::Operator,
        }
    }

    /// The process's own name: the coordinator's, agent's node, gateway's or operator's name.
    pub fn name(&self) -> &str {
        match &self.kind {
            IdentityKind::Coordinator { name }
            | IdentityKind::Gateway { name, .. }
            | IdentityKind::Operator { name } => name,
            IdentityKind::Agent { node, .. } => node,
        }
    }

    /// The region of an agent or gateway.
    pub fn region(&self) -> Option<&str> {
        match &self.kind {
            IdentityKind::Agent { region, .. } | IdentityKind::Gateway { region, .. } => {
                Some(region)
            }
            IdentityKind::Coordinator { .. } | IdentityKind::Operator { .. } => None,
        }
    }

    /// The cluster of an agent.
    pub fn cluster(&self) -> Option<&str> {
        match &self.kind {
            IdentityKind::Agent { cluster, .. } => Some(cluster),
            _ => None,
        }
    }

    /// `spiffe://<td>/coordinator/<name>`, validated.
    pub fn coordinator(trust_domain: &str, name: &str) -> Result<Identity, CertError> {
        Identity {
            trust_domain: trust_domain.to_string(),
            kind: IdentityKind::Coordinator {
                name: name.to_string(),
            },
        }
        .validated()
    }

    /// `spiffe://<td>/region/<r>/cluster/<c>/agent/<node>`, validated.
    pub fn agent(
        trust_domain: &str,
        region: &str,
        cluster: &str,
        node: &str,
    ) -> Result<Identity, CertError> {
        Identity {
            trust_domain: trust_domain.to_string(),
            kind: IdentityKind::Agent {
                region: region.to_string(),
                cluster: cluster.to_string(),
                node: node.to_string(),
            },
        }
        .validated()
    }

    /// `spiffe://<td>/region/<r>/gateway/<name>`, validated.
    pub fn gateway(trust_domain: &str, region: &str, name: &str) -> Result<Identity, CertError> {
        Identity {
            trust_domain: trust_domain.to_string(),
            kind: IdentityKind::Gateway {
                region: region.to_string(),
                name: name.to_string(),
            },
        }
        .validated()
    }

    /// `spiffe://<td>/operator/<name>`, validated.
    pub fn operator(trust_domain: &str, name: &str) -> Result<Identity, CertError> {
        Identity {
            trust_domain: trust_domain.to_string(),
            kind: IdentityKind::Operator {
                name: name.to_string(),
            },
        }
        .validated()
    }

    /// Checks that every part is well-formed, i.e. that `uri()` parses back to `self`. The fields are
    /// public, so an identity built by hand may be invalid until checked.
    pub fn validate(&self) -> Result<(), CertError> {
        let parsed = Identity::parse_uri(&self.uri())?;
        if &parsed == self {
            Ok(())
        } else {
            // A segment held a '/', which `uri()` turned into extra path segments.
            Err(CertError::InvalidIdentity {
                uri: quote(&self.uri()),
                reason: "a part contains '/'".to_string(),
            })
        }
    }

    fn validated(self) -> Result<Identity, CertError> {
        self.validate()?;
        Ok(self)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

impl FromStr for Identity {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse_uri(s)
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri())
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Identity::parse_uri(&text).map_err(serde::de::Error::custom)
    }
}

/// Checks a trust domain: lowercase DNS-like labels (`[a-z0-9]`, inner `-`) separated by dots.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), CertError> {
    let invalid = |reason: &str| CertError::InvalidTrustDomain {
        trust_domain: quote(trust_domain),
        reason: reason.to_string(),
    };
    if trust_domain.is_empty() {
        return Err(invalid("is empty"));
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(invalid("is longer than 253 characters"));
    }
    for label in trust_domain.split('.') {
        if label.is_empty() {
            return Err(invalid(
                "has an empty label (leading, trailing or double dot)",
            ));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(invalid("has a label longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(invalid(&format!(
                "contains {}: only lowercase letters, digits, '-' and '.' are allowed",
                quote(&c.to_string())
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("has a label that starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Checks one path segment: `[a-z0-9][a-z0-9._-]{0,62}`.
fn validate_segment(segment: &str) -> Result<(), String> {
    let mut chars = segment.chars();
    let Some(first) = chars.next() else {
        return Err("is empty".to_string());
    };
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "starts with {}: must start with a lowercase letter or digit",
            quote(&first.to_string())
        ));
    }
    if let Some(c) = chars
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "contains {}: only lowercase letters, digits, '.', '_' and '-' are allowed",
            quote(&c.to_string())
        ));
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(format!(
            "is {} characters long, at most {MAX_SEGMENT_LEN} are allowed",
            segment.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_uri() {
        let ids = [
            Identity::coordinator("example.org", "c1").unwrap(),
            Identity::agent("example.org", "eu-west", "gpu-a", "node-7.rack_2").unwrap(),
            Identity::gateway("example.org", "us", "gw0").unwrap(),
            Identity::operator("prod.example.org", "alice").unwrap(),
        ];
        let uris = [
            "spiffe://example.org/coordinator/c1",
            "spiffe://example.org/region/eu-west/cluster/gpu-a/agent/node-7.rack_2",
            "spiffe://example.org/region/us/gateway/gw0",
            "spiffe://prod.example.org/operator/alice",
        ];
        for (id, uri) in ids.iter().zip(uris) {
            assert_eq!(id.uri(), uri);
            assert_eq!(id.to_string(), uri);
            assert_eq!(&Identity::parse_uri(uri).unwrap(), id);
            assert_eq!(uri.parse::<Identity>().unwrap(), *id);
        }
        let roles: Vec<Role> = ids.iter().map(Identity::role).collect();
        assert_eq!(roles, Role::ALL);
        assert_eq!(ids[1].name(), "node-7.rack_2");
        assert_eq!(ids[1].region(), Some("eu-west"));
        assert_eq!(ids[1].cluster(), Some("gpu-a"));
        assert_eq!(ids[0].region(), None);
    }

    #[test]
    fn role_parses_and_prints() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        let err = "Agent".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("unknown role \"Agent\""), "{err}");
        assert_eq!(
            serde_json::to_string(&Role::Gateway).unwrap(),
            "\"gateway\""
        );
    }

    #[test]
    fn identity_serializes_as_its_uri() {
        let id = Identity::agent("td", "r", "c", "n").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://td/region/r/cluster/c/agent/n\"");
        assert_eq!(serde_json::from_str::<Identity>(&json).unwrap(), id);
        assert!(serde_json::from_str::<Identity>("\"spiffe://td/agent/n\"").is_err());
    }

    fn reason(uri: &str) -> String {
        match Identity::parse_uri(uri) {
            Ok(id) => panic!("{uri} parsed as {id:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_uris_are_refused_with_the_reason() {
        let long = "a".repeat(64);
        let cases: &[(&str, &str)] = &[
            ("", "must start with spiffe://"),
            ("https://td/coordinator/c1", "must start with spiffe://"),
            ("SPIFFE://td/coordinator/c1", "must start with spiffe://"),
            ("spiffe://td", "has no path"),
            ("spiffe://td/", "has no path"),
            ("spiffe:///coordinator/c1", "trust domain: is empty"),
            ("spiffe://Example.org/coordinator/c1", "contains \"E\""),
            ("spiffe://td:443/coordinator/c1", "contains \":\""),
            ("spiffe://user@td/coordinator/c1", "contains \"@\""),
            ("spiffe://td./coordinator/c1", "empty label"),
            ("spiffe://-td/coordinator/c1", "starts or ends with '-'"),
            ("spiffe://td/coordinator/c1/", "path segment 3: is empty"),
            ("spiffe://td//coordinator/c1", "path segment 1: is empty"),
            (
                "spiffe://td/coordinator/C1",
                "path segment 2: starts with \"C\"",
            ),
            ("spiffe://td/coordinator/.hidden", "starts with \".\""),
            ("spiffe://td/coordinator/c%41", "contains \"%\""),
            ("spiffe://td/coordinator/c1?x=1", "contains \"?\""),
            ("spiffe://td/coordinator/c1#f", "contains \"#\""),
            ("spiffe://td/coordinator/ñ", "starts with \"ñ\""),
            ("spiffe://td/coordinator", "path matches no role"),
            ("spiffe://td/agent/n1", "path matches no role"),
            (
                "spiffe://td/region/r/cluster/c/agent/n/extra",
                "path matches no role",
            ),
            ("spiffe://td/region/r/gateway", "path matches no role"),
            ("spiffe://td/admin/root", "path matches no role"),
        ];
        for (uri, expected) in cases {
            let got = reason(uri);
            assert!(got.contains(expected), "{uri}: {got:?} lacks {expected:?}");
        }
        let got = reason(&format!("spiffe://td/coordinator/{long}"));
        assert!(got.contains("64 characters long"), "{got}");
        let ok = format!("spiffe://td/coordinator/{}", &long[..63]);
        assert!(Identity::parse_uri(&ok).is_ok());
        let huge = format!("spiffe://td/{}", "x/".repeat(100_000));
        let got = reason(&huge);
        assert!(got.contains("at most 2048"), "{got}");
        assert!(got.len() < 600, "messages about peer input stay short");
    }

    #[test]
    fn constructors_validate_their_parts() {
        assert!(Identity::coordinator("td", "a/b").is_err());
        assert!(Identity::agent("td", "r", "", "n").is_err());
        assert!(Identity::gateway("bad domain", "r", "g").is_err());
        assert!(Identity::operator("td", "Bob").is_err());
        let hand_made = Identity {
            trust_domain: "td".into(),
            kind: IdentityKind::Coordinator { name: "x/y".into() },
        };
        assert!(hand_made.validate().is_err());
    }

    #[test]
    fn trust_domains() {
        for ok in ["td", "example.org", "a-b.c0.d", "1.2"] {
            validate_trust_domain(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "a..b",
            "a_b",
            "UPPER",
            "a-",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert!(validate_trust_domain(bad).is_err(), "{bad}");
        }
    }
}
