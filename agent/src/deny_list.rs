//! The mesh deny-list as this agent knows it: the certificates its own RPC server (log reads, called by
//! coordinators) and its client (towards coordinators) refuse.
//!
//! Owns [`DenyListGate`], the agent's [`PeerGate`]. The list comes from the coordinators with each
//! registration and with any heartbeat after it changed; an update closes the open connections of newly
//! denied certificates. Until the first answer the list is empty (the agent's peers are coordinators of its
//! own trust domain, already checked by TLS). It never decides what a role may call.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};

use protocol::pb;
use protocol::rpc::{PeerCertificate, PeerGate, PeerTable, RpcStatus};

#[derive(Debug, Default)]
struct Denied {
    version: u64,
    identities: HashSet<String>,
    serials: HashSet<String>,
}

/// The deny-list the coordinators last sent, shared by the agent's RPC server and client.
#[derive(Debug, Default)]
pub(crate) struct DenyListGate {
    denied: RwLock<Denied>,
}

impl DenyListGate {
    /// The version held (0 before the first list arrived).
    pub(crate) fn version(&self) -> u64 {
        self.read().version
    }

    /// Takes a list from a coordinator and, when it changed, closes the server connections it no longer
    /// admits. Returns how many were closed.
    pub(crate) fn update(&self, list: pb::DenyList, server: &PeerTable) -> usize {
        let version = list.version;
        if !self.replace(list) {
            return 0;
        }
        let closed = server.recheck();
        tracing::info!(version, closed, "mesh deny-list updated");
        closed
    }

    /// Replaces the list unless it has the version already held; whether it changed.
    fn replace(&self, list: pb::DenyList) -> bool {
        let mut denied = self.denied.write().unwrap_or_else(PoisonError::into_inner);
        if list.version == denied.version {
            return false;
        }
        *denied = Denied {
            version: list.version,
            identities: list.identities.into_iter().collect(),
            serials: list.serials.into_iter().collect(),
        };
        true
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Denied> {
        // Plain sets replaced whole under the lock: a panic elsewhere cannot leave them half-written.
        self.denied.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PeerGate for DenyListGate {
    fn admit_connection(&self, peer: &PeerCertificate) -> Result<(), RpcStatus> {
        let denied = self.read();
        let uri = peer.identity.uri();
        if denied.identities.contains(&uri) || denied.serials.contains(&peer.serial) {
            Err(RpcStatus::permission_denied(format!("{uri} is denied")))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str, serial: &str) -> PeerCertificate {
        PeerCertificate {
            identity: certs::Identity::coordinator("td.test", name).expect("valid"),
            serial: serial.into(),
            not_after: i64::MAX,
        }
    }

    #[test]
    fn denies_by_identity_or_serial_and_keeps_the_newest_version() {
        let gate = DenyListGate::default();
        assert_eq!(gate.version(), 0);
        assert!(gate.admit_connection(&cert("c1", "aa")).is_ok());
        let list = pb::DenyList {
            version: 3,
            identities: vec!["spiffe://td.test/coordinator/c1".into()],
            serials: vec!["bb".into()],
        };
        assert!(gate.replace(list.clone()));
        assert!(!gate.replace(list), "the same version changes nothing");
        assert!(gate.admit_connection(&cert("c1", "aa")).is_err());
        assert!(gate.admit_connection(&cert("c2", "bb")).is_err());
        assert!(gate.admit_connection(&cert("c2", "cc")).is_ok());
        assert_eq!(gate.version(), 3);
        assert!(gate.replace(pb::DenyList {
            version: 4,
            identities: Vec::new(),
            serials: Vec::new(),
        }));
        assert!(gate.admit_connection(&cert("c1", "aa")).is_ok());
    }
}
