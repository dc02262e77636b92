//! Refused requests (401, 403, and 404 for what the caller may not see) in the admin API process: the rate
//! limit per API key and per source address, and the coalescing buffer that turns any number of refusals
//! into a few audit records.
//!
//! A refusal costs the caller a token from the bucket of its key (when the token names one) and from the
//! bucket of its address; with either bucket empty, the next refusal answers 429 with `Retry-After`
//! instead (admitted requests never consume or check tokens, so a shared address is not locked out of
//! working calls). Every refusal is counted in memory under (principal or address, operation, outcome,
//! project), those answered 429 among them, and the buffer is written to the audit log as one `RecordAudit`
//! per entry each window and on shutdown — never one replicated write per refusal. Memory is bounded: buckets and entries beyond their
//! caps share one overflow bucket and one overflow entry. Owns no replicated state; must never decide
//! whether a request is allowed (that is `auth`'s).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::state::{Actor, AuditOp, AuditOutcome, Command, Op};

/// Most buckets (keys plus addresses) tracked at once; new ones beyond it share one overflow bucket.
const MAX_BUCKETS: usize = 10_000;
/// Most distinct coalesced entries per window; the rest are counted in one overflow entry.
const MAX_ENTRIES: usize = 1_000;
/// Longest target and detail kept in an entry (the audit log's own limits are 256 and 1024).
const MAX_TARGET: usize = 200;
const MAX_REASON: usize = 400;

/// How refusals are limited and coalesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenialLimits {
    /// Refusals a key or an address may collect in a burst before it is answered 429.
    pub burst: u32,
    /// Refusals per second a key or an address earns back.
    pub per_second: u32,
    /// How long refusals are coalesced before their counts are written to the audit log.
    pub window: Duration,
}

impl Default for DenialLimits {
    fn default() -> Self {
        Self {
            burst: 20,
            per_second: 2,
            window: Duration::from_secs(5),
        }
    }
}

/// Why a request was refused, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum DenialKind {
    /// No valid key (401).
    Unauthenticated,
    /// The project or object is missing or hidden from the caller (404).
    NotFound,
    /// The caller's roles lack the action (403).
    Forbidden,
}

impl DenialKind {
    fn as_str(self) -> &'static str {
        match self {
            DenialKind::Unauthenticated => "unauthenticated",
            DenialKind::NotFound => "not_found",
            DenialKind::Forbidden => "forbidden",
        }
    }
}

/// Who was refused: an authenticated principal, or else the address the request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    Principal { id: String, name: String },
    Source(Option<IpAddr>),
}

impl Refused {
    fn key(&self) -> String {
        match self {
            Refused::Principal { id, .. } => format!("principal:{id}"),
            Refused::Source(Some(ip)) => format!("source:{ip}"),
            Refused::Source(None) => "source:unknown".to_owned(),
        }
    }

    fn actor(&self) -> Actor {
        match self {
            Refused::Principal { id, name } => Actor::principal(id.clone(), name.clone()),
            Refused::Source(ip) => Actor {
                principal_id: None,
                key_id: None,
                name: match ip {
                    Some(ip) => format!("anonymous@{ip}"),
                    None => "anonymous".to_owned(),
                },
            },
        }
    }
}

/// One refusal to count.
#[derive(Debug, Clone)]
pub(crate) struct Denial<'a> {
    pub(crate) who: Refused,
    pub(crate) operation: &'a str,
    pub(crate) kind: DenialKind,
    pub(crate) project: Option<String>,
    pub(crate) target: &'a str,
    pub(crate) reason: &'a str,
    /// Answered 429 because the key or address had too many refusals already.
    pub(crate) limited: bool,
}

/// What one bucket of the rate limit is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    Key(String),
    Source(IpAddr),
    Overflow,
}

/// A token bucket in thousandths of a token.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at: Instant,
}

/// The coalesced refusals of one (who, operation, outcome, project).
#[derive(Debug, Clone)]
struct Entry {
    actor: Actor,
    target: String,
    reason: String,
    count: u64,
    limited: u64,
    first_ms: u64,
    last_ms: u64,
}

type EntryKey = (String, String, DenialKind, Option<String>);

#[derive(Debug, Default)]
struct Buffers {
    buckets: HashMap<BucketKey, Bucket>,
    entries: BTreeMap<EntryKey, Entry>,
}

/// The rate limit and the coalescing buffer of one admin API process.
#[derive(Debug)]
pub(crate) struct Denials {
    limits: DenialLimits,
    buffers: Mutex<Buffers>,
}

impl Denials {
    pub(crate) fn new(limits: DenialLimits) -> Self {
        Self {
            limits: DenialLimits {
                burst: limits.burst.max(1),
                per_second: limits.per_second.max(1),
                window: limits.window.max(Duration::from_millis(100)),
            },
            buffers: Mutex::new(Buffers::default()),
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.limits.window
    }

    fn capacity(&self) -> u64 {
        u64::from(self.limits.burst) * 1000
    }

    fn keys(key_id: Option<&str>, source: Option<IpAddr>) -> Vec<BucketKey> {
        let mut keys = Vec::with_capacity(2);
        if let Some(k) = key_id {
            keys.push(BucketKey::Key(k.to_owned()));
        }
        if let Some(ip) = source {
            keys.push(BucketKey::Source(ip));
        }
        keys
    }

    /// `bucket` refilled up to `now`.
    fn refilled(&self, bucket: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(bucket.at).as_millis();
        let earned = u64::try_from(elapsed)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.limits.per_second));
        Bucket {
            milli: bucket.milli.saturating_add(earned).min(self.capacity()),
            at: now,
        }
    }

    /// `Err(retry_after)` when the key's or the address's bucket cannot pay for another refusal.
    pub(crate) fn check(
        &self,
        key_id: Option<&str>,
        source: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        let buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        for key in Self::keys(key_id, source) {
            let key = if buffers.buckets.contains_key(&key) {
                key
            } else if buffers.buckets.len() >= MAX_BUCKETS {
                BucketKey::Overflow
            } else {
                continue;
            };
            let Some(bucket) = buffers.buckets.get(&key) else {
                continue;
            };
            let bucket = self.refilled(*bucket, now);
            if bucket.milli < 1000 {
                let missing = 1000 - bucket.milli;
                let per_ms = u64::from(self.limits.per_second);
                return Err(Duration::from_millis(missing.div_ceil(per_ms)));
            }
        }
        Ok(())
    }

    /// Takes one refusal's token from the key's and the address's buckets.
    pub(crate) fn charge(&self, key_id: Option<&str>, source: Option<IpAddr>, now: Instant) {
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        if buffers.buckets.len() >= MAX_BUCKETS {
            // Forget buckets that have filled up again: they hold no information.
            let capacity = self.capacity();
            buffers
                .buckets
                .retain(|_, b| self.refilled(*b, now).milli < capacity);
        }
        let full = Bucket {
            milli: self.capacity(),
            at: now,
        };
        for key in Self::keys(key_id, source) {
            let key = if buffers.buckets.contains_key(&key) || buffers.buckets.len() < MAX_BUCKETS {
                key
            } else {
                BucketKey::Overflow
            };
            let bucket = buffers.buckets.get(&key).copied().unwrap_or(full);
            let mut bucket = self.refilled(bucket, now);
            bucket.milli = bucket.milli.saturating_sub(1000);
            buffers.buckets.insert(key, bucket);
        }
    }

    /// Counts one refusal in the current window.
    pub(crate) fn record(&self, denial: Denial<'_>, now_ms: u64) {
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key: EntryKey = (
            denial.who.key(),
            denial.operation.to_owned(),
            denial.kind,
            denial.project.clone(),
        );
        let mut actor = denial.who.actor();
        if !buffers.entries.contains_key(&key) && buffers.entries.len() >= MAX_ENTRIES {
            key = (
                "overflow".to_owned(),
                "audit.overflow".to_owned(),
                denial.kind,
                None,
            );
            actor = Actor {
                principal_id: None,
                key_id: None,
                name: "many".to_owned(),
            };
        }
        let entry = buffers.entries.entry(key).or_insert_with(|| Entry {
            actor,
            target: clip(denial.target, MAX_TARGET),
            reason: clip(denial.reason, MAX_REASON),
            count: 0,
            limited: 0,
            first_ms: now_ms,
            last_ms: now_ms,
        });
        entry.count += 1;
        entry.limited += u64::from(denial.limited);
        entry.last_ms = entry.last_ms.max(now_ms);
    }

    /// Empties the buffer into one `RecordAudit` command per entry, stamped `now_ms`.
    pub(crate) fn drain(&self, now_ms: u64) -> Vec<Command> {
        let entries = {
            let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut buffers.entries)
        };
        entries
            .into_iter()
            .map(|((_, operation, kind, project), e)| {
                let detail = format!(
                    "count={} rate_limited={} outcome={} first_at={} last_at={}: {}",
                    e.count,
                    e.limited,
                    kind.as_str(),
                    e.first_ms,
                    e.last_ms,
                    e.reason
                );
                let op = Op::Audit(AuditOp::RecordAudit {
                    action: operation,
                    project,
                    target: e.target,
                    outcome: AuditOutcome::Denied,
                    detail,
                });
                Command::new(now_ms, e.actor, op)
            })
            .collect()
    }

    /// Refusals counted and not yet written.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> u64 {
        let buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        buffers.entries.values().map(|e| e.count).sum()
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(super) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DenialLimits {
        DenialLimits {
            burst: 3,
            per_second: 2,
            window: Duration::from_secs(5),
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    fn denial(who: Refused, operation: &str, kind: DenialKind) -> Denial<'_> {
        Denial {
            who,
            operation,
            kind,
            project: None,
            target: "prj_x",
            reason: "no role in this project",
            limited: false,
        }
    }

    #[test]
    fn a_burst_of_refusals_is_then_limited_until_tokens_come_back() {
        let d = Denials::new(limits());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(d.check(Some("k1"), ip(1), t0), Ok(()));
            d.charge(Some("k1"), ip(1), t0);
        }
        let retry = d.check(Some("k1"), ip(1), t0).expect_err("limited");
        assert_eq!(retry, Duration::from_millis(500), "2 tokens a second");
        // Another key from the same address is limited by the address; the same key from elsewhere by
        // the key; a stranger is not.
        assert!(d.check(Some("k2"), ip(1), t0).is_err());
        assert!(d.check(Some("k1"), ip(2), t0).is_err());
        assert_eq!(d.check(Some("k2"), ip(2), t0), Ok(()));
        assert_eq!(d.check(None, ip(3), t0), Ok(()));
        // Half a second later one token is back.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(d.check(Some("k1"), ip(1), later), Ok(()));
        d.charge(Some("k1"), ip(1), later);
        assert!(d.check(Some("k1"), ip(1), later).is_err());
    }

    #[test]
    fn a_thousand_refusals_coalesce_into_one_record_per_who_operation_and_outcome() {
        let d = Denials::new(limits());
        let who = Refused::Principal {
            id: "sa_1".into(),
            name: "mallory".into(),
        };
        for i in 0..1000u64 {
            d.record(
                Denial {
                    limited: i >= 20,
                    ..denial(who.clone(), "project.get", DenialKind::NotFound)
                },
                1_000 + i,
            );
        }
        for _ in 0..10 {
            d.record(
                denial(
                    Refused::Source(ip(9)),
                    "job.list",
                    DenialKind::Unauthenticated,
                ),
                5_000,
            );
        }
        assert_eq!(d.buffered(), 1010);
        let commands = d.drain(9_000);
        assert_eq!(commands.len(), 2);
        assert_eq!(d.buffered(), 0, "draining empties the buffer");
        assert!(d.drain(9_500).is_empty());
        let find = |wanted: &str| {
            commands
                .iter()
                .find_map(|c| match &c.op {
                    Op::Audit(AuditOp::RecordAudit {
                        action,
                        outcome,
                        detail,
                        target,
                        ..
                    }) if action == wanted => Some((c, *outcome, detail.clone(), target.clone())),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no {wanted} record"))
        };
        let (cmd, outcome, detail, target) = find("job.list");
        assert_eq!(outcome, AuditOutcome::Denied);
        assert_eq!(target, "prj_x");
        assert!(
            detail.starts_with("count=10 rate_limited=0 outcome=unauthenticated"),
            "{detail}"
        );
        assert_eq!(cmd.actor.name, "anonymous@10.0.0.9");
        assert_eq!(cmd.at_ms, 9_000);
        let (cmd, _, detail, _) = find("project.get");
        assert!(
            detail.starts_with(
                "count=1000 rate_limited=980 outcome=not_found first_at=1000 last_at=1999"
            ),
            "{detail}"
        );
        assert_eq!(cmd.actor, Actor::principal("sa_1", "mallory"));
    }

    #[test]
    fn the_buffer_and_the_buckets_stay_bounded() {
        let d = Denials::new(limits());
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 500) {
            let who = Refused::Principal {
                id: format!("p{i}"),
                name: "x".into(),
            };
            d.record(denial(who, "whoami", DenialKind::Forbidden), 1);
        }
        let commands = d.drain(2);
        assert_eq!(commands.len(), MAX_ENTRIES + 1, "one overflow entry");
        assert!(commands.iter().any(|c| c.actor.name == "many"));
        for i in 0..(MAX_BUCKETS as u32 + 10) {
            d.charge(Some(&format!("key{i}")), None, t0);
        }
        let buckets = d.buffers.lock().expect("not poisoned").buckets.len();
        assert!(buckets <= MAX_BUCKETS + 1, "{buckets}");
    }

    #[test]
    fn long_targets_and_reasons_are_cut_to_what_the_audit_log_takes() {
        let d = Denials::new(limits());
        let target = "é".repeat(300);
        d.record(
            Denial {
                target: &target,
                reason: &"r".repeat(2000),
                ..denial(Refused::Source(None), "key.get", DenialKind::NotFound)
            },
            1,
        );
        let commands = d.drain(2);
        let Op::Audit(AuditOp::RecordAudit { target, detail, .. }) = &commands[0].op else {
            panic!("a RecordAudit command");
        };
        assert!(target.len() <= 256 && detail.len() <= 1024);
    }
}
