//! The registry's commands, grouped by the domain that owns them, and their one wire form.
//!
//! Each domain declares its own op sub-enum beside its records (`TenancyOp` in `tenancy.rs`, `JobOp` in
//! `jobs/`, ...); [`Op`] only says which domain a command is for. On the wire (the Raft log, snapshots of
//! the dedup table, forwarded writes) an op is what it always was: a single-key JSON object (or a bare
//! string for a unit variant) named by the variant, `{"submit_job": {...}}` — the domain does not appear.
//! Serialization writes the inner op as it is; deserialization reads the variant name, finds the domain
//! that declares it (from the sub-enums' own serde variant lists, so a new variant needs no table here)
//! and hands the rest to that domain's derived decoder. Logs written before ops were grouped replay
//! unchanged, and the golden tests (`tests/golden.rs`) hold that byte for byte.
//!
//! Variant names are unique across domains; `tests::variant_names_are_unique_across_domains` fails
//! otherwise, since the wire form could not tell two domains apart.

use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, EnumAccess, IntoDeserializer, VariantAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{AuditOp, ClusterOp, FleetOp, IdentityOp, JobOp, SecretOp, TenancyOp};

/// A typed change to global state, committed through Raft: which domain it is for, and the domain's own
/// command. Every field is prepared by the proposing coordinator.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Op {
    /// The log itself and the cluster's apply semantics: no-ops, batches, the apply version.
    Cluster(ClusterOp),
    /// Records written to the audit log without any other change.
    Audit(AuditOp),
    /// Projects, principals, API keys, role bindings and project policy.
    Tenancy(TenancyOp),
    /// Secrets and the data keys that seal them.
    Secrets(SecretOp),
    /// Nodes: registration, health, draining, approval, cluster policy.
    Fleet(FleetOp),
    /// Jobs: submission, cancellation, placement, agent reports, purging.
    Jobs(JobOp),
    /// The deny-list of mesh identities.
    Identity(IdentityOp),
}

/// One domain's variant names, as its derived decoder declares them.
pub(super) type Names = &'static [&'static str];

/// Each domain's variant names, in the order of [`Op`]'s variants.
fn domain_names() -> &'static [Names; 7] {
    static NAMES: OnceLock<[Names; 7]> = OnceLock::new();
    NAMES.get_or_init(|| {
        [
            variants::<ClusterOp>(),
            variants::<AuditOp>(),
            variants::<TenancyOp>(),
            variants::<SecretOp>(),
            variants::<FleetOp>(),
            variants::<JobOp>(),
            variants::<IdentityOp>(),
        ]
    })
}

/// All variant names of all domains, for the format's "expected one of" messages.
fn all_names() -> Names {
    static ALL: OnceLock<Vec<&'static str>> = OnceLock::new();
    ALL.get_or_init(|| {
        domain_names()
            .iter()
            .flat_map(|n| n.iter().copied())
            .collect()
    })
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_enum("Op", all_names(), OpVisitor)
    }
}

struct OpVisitor;

impl<'de> Visitor<'de> for OpVisitor {
    type Value = Op;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a registry op")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Op, A::Error> {
        let (name, rest): (String, A::Variant) = data.variant()?;
        let Some(domain) = domain_names()
            .iter()
            .position(|names| names.contains(&name.as_str()))
        else {
            return Err(de::Error::unknown_variant(&name, all_names()));
        };
        let replay = Replay { name, rest };
        match domain {
            0 => ClusterOp::deserialize(replay).map(Op::Cluster),
            1 => AuditOp::deserialize(replay).map(Op::Audit),
            2 => TenancyOp::deserialize(replay).map(Op::Tenancy),
            3 => SecretOp::deserialize(replay).map(Op::Secrets),
            4 => FleetOp::deserialize(replay).map(Op::Fleet),
            5 => JobOp::deserialize(replay).map(Op::Jobs),
            _ => IdentityOp::deserialize(replay).map(Op::Identity),
        }
    }
}

/// An enum whose variant name was already read: hands a domain's derived decoder that name, then the
/// format's own access to the variant's contents, so the contents are decoded exactly once.
pub(super) struct Replay<V> {
    pub(super) name: String,
    pub(super) rest: V,
}

impl<'de, A: VariantAccess<'de>> Deserializer<'de> for Replay<A> {
    type Error = A::Error;

    fn deserialize_any<W: Visitor<'de>>(self, visitor: W) -> Result<W::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: VariantAccess<'de>> EnumAccess<'de> for Replay<A> {
    type Error = A::Error;
    type Variant = A;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, A), A::Error> {
        let name: de::value::StringDeserializer<A::Error> = self.name.into_deserializer();
        Ok((seed.deserialize(name)?, self.rest))
    }
}

/// The variant names a derived enum decoder declares: it is asked to decode from a probe that records the
/// names it is offered and then fails.
pub(super) fn variants<T: for<'de> Deserialize<'de>>() -> Names {
    let mut names: Names = &[];
    // The probe always fails; the names are what it is for.
    let _ = T::deserialize(Probe(&mut names));
    names
}

struct Probe<'a>(&'a mut Names);

/// The probe's error: it carries nothing, since nobody reads it.
#[derive(Debug)]
struct Probed;

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probed")
    }
}

impl std::error::Error for Probed {}

impl de::Error for Probed {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Probed
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Probed;

    fn deserialize_any<W: Visitor<'de>>(self, _: W) -> Result<W::Value, Probed> {
        Err(Probed)
    }

    fn deserialize_enum<W: Visitor<'de>>(
        self,
        _: &'static str,
        variants: Names,
        _: W,
    ) -> Result<W::Value, Probed> {
        *self.0 = variants;
        Err(Probed)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn variant_names_are_unique_across_domains() {
        let mut seen = BTreeSet::new();
        for names in domain_names() {
            assert!(!names.is_empty(), "a domain declares no variants");
            for name in *names {
                assert!(seen.insert(*name), "two domains declare `{name}`");
            }
        }
    }

    #[test]
    fn an_op_keeps_its_wire_form_and_reads_back() {
        let ops = [
            Op::Cluster(ClusterOp::Noop),
            Op::Cluster(ClusterOp::SetApplyVersion { version: 2 }),
            Op::Jobs(JobOp::CancelJob {
                project_id: "p".to_owned(),
                id: "j".to_owned(),
            }),
            Op::Identity(IdentityOp::AllowIdentity {
                kind: super::super::DenyKind::Identity,
                value: "agent/n1".to_owned(),
            }),
        ];
        let wire = [
            r#""noop""#,
            r#"{"set_apply_version":{"version":2}}"#,
            r#"{"cancel_job":{"project_id":"p","id":"j"}}"#,
            r#"{"allow_identity":{"kind":"identity","value":"agent/n1"}}"#,
        ];
        for (op, wire) in ops.iter().zip(wire) {
            assert_eq!(serde_json::to_string(op).unwrap(), wire);
            assert_eq!(&serde_json::from_str::<Op>(wire).unwrap(), op);
        }
    }

    #[test]
    fn unknown_and_malformed_ops_are_refused_with_the_reason() {
        let unknown = serde_json::from_str::<Op>(r#"{"launch_rockets":{}}"#).unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("unknown variant `launch_rockets`"),
            "{unknown}"
        );
        let missing = serde_json::from_str::<Op>(r#"{"cancel_job":{"id":"j"}}"#).unwrap_err();
        assert!(missing.to_string().contains("project_id"), "{missing}");
        let wrong_shape = serde_json::from_str::<Op>(r#"{"noop":{"x":1}}"#);
        assert!(wrong_shape.is_err());
        assert!(serde_json::from_str::<Op>("42").is_err());
    }
}
