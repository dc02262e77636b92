//! The one wire form of [`Outcome`]: what it always was, a flat, externally tagged enum (`"done"`,
//! `{"job": {...}}`), whether the outcome is shared (`Done`, `Deleted`, `Batch`, and the audit log's
//! `Audited` and `AuditArchived`) or a domain's.
//!
//! Outcomes travel in the dedup table of every snapshot and in the answers to forwarded writes, so a
//! change of form would break rolling upgrades. Serialization writes a shared outcome through [`Shared`]
//! and a domain's as its inner variant; decoding finds who declares the variant name, exactly as ops do
//! (`op.rs`).

use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, EnumAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::op::{variants, Names, Replay};
use super::{
    AuditCheckpoint, CommandOutcome, FleetOutcome, IdentityOutcome, JobOutcome, Outcome,
    SecretOutcome, TenancyOutcome,
};

/// The shared outcomes, borrowed for writing.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Shared<'a> {
    Done,
    Deleted,
    Audited { seq: u64 },
    Batch { outcomes: &'a [CommandOutcome] },
    AuditArchived { checkpoint: &'a AuditCheckpoint },
}

/// The shared outcomes, owned for reading.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum SharedOwned {
    Done,
    Deleted,
    Audited { seq: u64 },
    Batch { outcomes: Vec<CommandOutcome> },
    AuditArchived { checkpoint: AuditCheckpoint },
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Outcome::Done => Shared::Done.serialize(serializer),
            Outcome::Deleted => Shared::Deleted.serialize(serializer),
            Outcome::Audited { seq } => Shared::Audited { seq: *seq }.serialize(serializer),
            Outcome::Batch { outcomes } => Shared::Batch { outcomes }.serialize(serializer),
            Outcome::AuditArchived { checkpoint } => {
                Shared::AuditArchived { checkpoint }.serialize(serializer)
            }
            Outcome::Tenancy(o) => o.serialize(serializer),
            Outcome::Secrets(o) => o.serialize(serializer),
            Outcome::Fleet(o) => o.serialize(serializer),
            Outcome::Jobs(o) => o.serialize(serializer),
            Outcome::Identity(o) => o.serialize(serializer),
        }
    }
}

/// Each declarer's variant names, in the order `OutcomeVisitor` tries them.
fn declared() -> &'static [Names; 6] {
    static NAMES: OnceLock<[Names; 6]> = OnceLock::new();
    NAMES.get_or_init(|| {
        [
            variants::<SharedOwned>(),
            variants::<TenancyOutcome>(),
            variants::<SecretOutcome>(),
            variants::<FleetOutcome>(),
            variants::<JobOutcome>(),
            variants::<IdentityOutcome>(),
        ]
    })
}

fn all_names() -> Names {
    static ALL: OnceLock<Vec<&'static str>> = OnceLock::new();
    ALL.get_or_init(|| declared().iter().flat_map(|n| n.iter().copied()).collect())
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_enum("Outcome", all_names(), OutcomeVisitor)
    }
}

struct OutcomeVisitor;

impl<'de> Visitor<'de> for OutcomeVisitor {
    type Value = Outcome;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a registry outcome")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Outcome, A::Error> {
        let (name, rest): (String, A::Variant) = data.variant()?;
        let Some(declarer) = declared()
            .iter()
            .position(|names| names.contains(&name.as_str()))
        else {
            return Err(de::Error::unknown_variant(&name, all_names()));
        };
        let replay = Replay { name, rest };
        match declarer {
            0 => SharedOwned::deserialize(replay).map(|shared| match shared {
                SharedOwned::Done => Outcome::Done,
                SharedOwned::Deleted => Outcome::Deleted,
                SharedOwned::Audited { seq } => Outcome::Audited { seq },
                SharedOwned::Batch { outcomes } => Outcome::Batch { outcomes },
                SharedOwned::AuditArchived { checkpoint } => Outcome::AuditArchived { checkpoint },
            }),
            1 => TenancyOutcome::deserialize(replay).map(Outcome::Tenancy),
            2 => SecretOutcome::deserialize(replay).map(Outcome::Secrets),
            3 => FleetOutcome::deserialize(replay).map(Outcome::Fleet),
            4 => JobOutcome::deserialize(replay).map(Outcome::Jobs),
            _ => IdentityOutcome::deserialize(replay).map(Outcome::Identity),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::state::DomainError;

    #[test]
    fn variant_names_are_unique_across_declarers() {
        let mut seen = BTreeSet::new();
        for names in declared() {
            assert!(!names.is_empty());
            for name in *names {
                assert!(seen.insert(*name), "two declarers name `{name}`");
            }
        }
    }

    #[test]
    fn outcomes_keep_their_flat_wire_form() {
        let cases = [
            (Outcome::Done, r#""done""#),
            (Outcome::Audited { seq: 7 }, r#"{"audited":{"seq":7}}"#),
            (
                Outcome::Jobs(JobOutcome::JobsPurged { purged: 3 }),
                r#"{"jobs_purged":{"purged":3}}"#,
            ),
            (
                Outcome::Secrets(SecretOutcome::Rewrapped { projects: 2 }),
                r#"{"rewrapped":{"projects":2}}"#,
            ),
            (
                Outcome::Batch {
                    outcomes: vec![
                        Ok(Outcome::Deleted),
                        Err(DomainError::invalid("name", "is empty")),
                    ],
                },
                r#"{"batch":{"outcomes":[{"Ok":"deleted"},{"Err":{"InvalidArgument":{"field":"name","message":"is empty"}}}]}}"#,
            ),
        ];
        for (outcome, wire) in cases {
            let written = serde_json::to_string(&outcome).expect("serializes");
            if !wire.contains("Err") {
                assert_eq!(written, wire);
            }
            let read: Outcome = serde_json::from_str(&written).expect("reads back");
            assert_eq!(read, outcome);
        }
        assert!(serde_json::from_str::<Outcome>(r#"{"exploded":{}}"#).is_err());
    }
}
