//! Faults on the links a client calls over, for tests: partitions, delays and lost answers, per link.
//!
//! A process's [`RpcClient`](super::RpcClient) may be given a [`LinkFaults`]; before each call it asks what
//! happens to that call on its way to the address. Production clients have none and pay one branch. Cutting
//! a link both ways means giving both processes' clients a rule for the other's address, which
//! [`Partitions`] does for a whole set of processes from one table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::Method;

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It travels normally.
    Deliver,
    /// The link is down: the call fails at once as a transport error, nothing is sent.
    Cut,
    /// The call waits this long before it is sent (within its own timeout).
    Delay(Duration),
    /// The call is delivered and carried out, and its answer is lost: the caller sees a timeout.
    LoseAnswer,
}

/// Decides the fate of each call a client makes.
pub trait LinkFaults: Send + Sync + std::fmt::Debug {
    fn on_call(&self, addr: &str, method: Method) -> Fault;
}

/// One table of link rules for a set of processes, each known by a name and reached at the addresses
/// [`Partitions::register`] gives it. [`Partitions::view`] gives the [`LinkFaults`] of one process.
#[derive(Debug, Default)]
pub struct Partitions {
    rules: Mutex<BTreeMap<(String, String), Fault>>,
    names: Mutex<BTreeMap<String, String>>,
}

impl Partitions {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The faults seen by the process named `me`.
    pub fn view(self: &Arc<Self>, me: impl Into<String>) -> Arc<dyn LinkFaults> {
        Arc::new(PartitionView {
            table: self.clone(),
            me: me.into(),
        })
    }

    /// Calls to `addr` reach the process named `name` (known once it has bound its port).
    pub fn register(&self, name: &str, addr: &str) {
        self.names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr.to_owned(), name.to_owned());
    }

    /// Cuts every link between a process of `side` and one of `other`, both ways.
    pub fn cut(&self, side: &[&str], other: &[&str]) {
        self.set_between(side, other, Fault::Cut);
    }

    /// Makes every call between `side` and `other`, both ways, meet `fault`.
    pub fn set_between(&self, side: &[&str], other: &[&str], fault: Fault) {
        let mut rules = self.lock();
        for a in side {
            for b in other {
                rules.insert(((*a).to_owned(), (*b).to_owned()), fault);
                rules.insert(((*b).to_owned(), (*a).to_owned()), fault);
            }
        }
    }

    /// Makes calls from `from` to `to` (one way) meet `fault`.
    pub fn set_one_way(&self, from: &str, to: &str, fault: Fault) {
        self.lock().insert((from.to_owned(), to.to_owned()), fault);
    }

    /// Every link works again.
    pub fn heal(&self) {
        self.lock().clear();
    }

    /// The addresses some rule names.
    pub fn named(&self) -> BTreeSet<String> {
        self.lock()
            .keys()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Fault>> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct PartitionView {
    table: Arc<Partitions>,
    me: String,
}

impl LinkFaults for PartitionView {
    fn on_call(&self, addr: &str, _method: Method) -> Fault {
        let callee = self
            .table
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(addr)
            .cloned();
        let Some(callee) = callee else {
            return Fault::Deliver;
        };
        self.table
            .lock()
            .get(&(self.me.clone(), callee))
            .copied()
            .unwrap_or(Fault::Deliver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_applies_both_ways_and_heals() {
        let net = Partitions::new();
        let (a, b, c) = (net.view("a"), net.view("b"), net.view("c"));
        for name in ["a", "b", "c"] {
            net.register(name, &format!("{name}:1"));
        }
        net.cut(&["a"], &["b", "c"]);
        assert_eq!(a.on_call("b:1", Method::Ping), Fault::Cut);
        assert_eq!(b.on_call("a:1", Method::Ping), Fault::Cut);
        assert_eq!(c.on_call("a:1", Method::Ping), Fault::Cut);
        assert_eq!(b.on_call("c:1", Method::Ping), Fault::Deliver);
        net.set_one_way("b", "c", Fault::LoseAnswer);
        assert_eq!(b.on_call("c:1", Method::Ping), Fault::LoseAnswer);
        assert_eq!(c.on_call("b:1", Method::Ping), Fault::Deliver);
        net.heal();
        assert_eq!(a.on_call("b:1", Method::Ping), Fault::Deliver);
        assert!(net.named().is_empty());
        assert_eq!(a.on_call("unknown:1", Method::Ping), Fault::Deliver);
    }
}
