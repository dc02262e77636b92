//! Who is on the other end of a connection, whether they are still welcome, and how much they may hold.
//!
//! Owns [`PeerCertificate`] (the identity, serial and expiry read from a peer's verified certificate), the
//! [`PeerGate`] hook through which the process that runs a server (or client) says, at the handshake and on
//! every call, whether a certificate is still admitted (deny-lists, membership), and [`PeerTable`]: the
//! server's table of open connections per identity, which caps how many connections one identity holds and
//! how many request bytes all of them may keep buffered, and closes the connections a gate stops admitting.
//! It decides nothing itself about who is denied: that is the gate's; and it never lets one identity's
//! traffic exhaust the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certs::Identity;
use rustls_pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Method, RpcStatus, CLOSE_CERT_EXPIRED, CLOSE_REVOKED};

/// What a verified peer certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The single URI SAN.
    pub identity: Identity,
    /// The serial number, lowercase hex without separators (as `meridian certs inspect` prints it).
    pub serial: String,
    /// The end of the validity period, Unix seconds (inclusive).
    pub not_after: i64,
}

impl PeerCertificate {
    /// Reads the leaf of a chain that TLS already verified; the identity must be of `trust_domain`.
    pub fn from_chain(
        chain: &[CertificateDer<'_>],
        trust_domain: &str,
    ) -> Result<PeerCertificate, String> {
        let identity = certs::peer_identity(chain, trust_domain).map_err(|e| e.to_string())?;
        let leaf = chain
            .first()
            .ok_or_else(|| "peer presented no certificate".to_string())?;
        let info = certs::inspect_der(leaf).map_err(|e| e.to_string())?;
        Ok(PeerCertificate {
            identity,
            serial: info.serial,
            not_after: info.not_after,
        })
    }

    /// Whether the certificate's validity period has ended at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        unix_seconds(now) > self.not_after
    }

    /// How long from `now` until the certificate has expired (zero once it has).
    pub fn time_left(&self, now: SystemTime) -> Duration {
        // `not_after` is inclusive: the certificate is expired from the next second on.
        let left = self
            .not_after
            .saturating_add(1)
            .saturating_sub(unix_seconds(now));
        Duration::from_secs(u64::try_from(left).unwrap_or(0))
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Says whether a peer's certificate is still admitted. Implemented by the process that runs the server
/// (a coordinator: its replicated deny-list and Raft membership; an agent: the deny-list its coordinators
/// hand it). Must be cheap and must not block: it runs on every call.
pub trait PeerGate: Send + Sync + 'static {
    /// Whether `peer` may hold a connection at all; checked when the connection is established, on every
    /// call, and whenever [`PeerTable::recheck`] runs. A refusal closes the connection.
    fn admit_connection(&self, peer: &PeerCertificate) -> Result<(), RpcStatus>;

    /// Whether `peer`, already admitted and authorized for `method` by its role, may call it (e.g. only a
    /// current member may send Raft messages). A refusal fails that call only.
    fn admit_call(&self, peer: &PeerCertificate, method: Method) -> Result<(), RpcStatus> {
        let _ = (peer, method);
        Ok(())
    }
}

/// A gate that admits every certificate our CA signed (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAll;

impl PeerGate for AdmitAll {
    fn admit_connection(&self, _peer: &PeerCertificate) -> Result<(), RpcStatus> {
        Ok(())
    }
}

/// What one identity is allowed to hold on a server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerLimits {
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// Request bytes held at once across all its connections (frames being read and calls running).
    pub(crate) max_buffered_bytes: usize,
}

/// One identity's share of the server.
struct PeerSlot {
    connections: AtomicUsize,
    budget: Arc<Semaphore>,
}

struct OpenConnection {
    conn: quinn::Connection,
    peer: Arc<PeerCertificate>,
}

struct TableInner {
    gate: Arc<dyn PeerGate>,
    limits: PeerLimits,
    /// Identity URI → its slot, alive while one of its connections or calls holds it.
    peers: Mutex<HashMap<String, Weak<PeerSlot>>>,
    open: Mutex<HashMap<u64, OpenConnection>>,
    next_id: AtomicU64,
}

/// The server's open connections by identity: connection caps, request-byte budgets and re-checks. Cheap to
/// clone; clones share the table.
#[derive(Clone)]
pub struct PeerTable {
    inner: Arc<TableInner>,
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("limits", &self.inner.limits)
            .field("open", &self.open_connections())
            .finish()
    }
}

/// Why a connection was not admitted.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The gate refused the certificate.
    Gate(RpcStatus),
    /// The identity already holds its maximum of connections.
    TooMany { max: usize },
}

/// An admitted connection; leaving the table when dropped.
pub(crate) struct Admitted {
    table: PeerTable,
    id: u64,
    slot: Arc<PeerSlot>,
    pub(crate) peer: Arc<PeerCertificate>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.slot.connections.fetch_sub(1, Ordering::AcqRel);
        self.table.lock_open().remove(&self.id);
    }
}

impl Admitted {
    /// Reserves `bytes` of the identity's request budget for one call; `None` when the budget is spent.
    /// The reservation lasts as long as the returned permit.
    pub(crate) fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        self.slot.budget.clone().try_acquire_many_owned(bytes).ok()
    }
}

impl PeerTable {
    pub(crate) fn new(gate: Arc<dyn PeerGate>, limits: PeerLimits) -> PeerTable {
        PeerTable {
            inner: Arc::new(TableInner {
                gate,
                limits,
                peers: Mutex::new(HashMap::new()),
                open: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    pub(crate) fn gate(&self) -> &dyn PeerGate {
        self.inner.gate.as_ref()
    }

    /// Admits a freshly established connection: the gate must accept the certificate and the identity must
    /// hold fewer than its maximum of connections.
    pub(crate) fn admit(
        &self,
        conn: &quinn::Connection,
        peer: PeerCertificate,
    ) -> Result<Admitted, Refusal> {
        self.inner
            .gate
            .admit_connection(&peer)
            .map_err(Refusal::Gate)?;
        let uri = peer.identity.uri();
        let slot = {
            let mut peers = self
                .inner
                .peers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match peers.get(&uri).and_then(Weak::upgrade) {
                Some(slot) => slot,
                None => {
                    // Forget identities that hold nothing any more before adding one.
                    peers.retain(|_, slot| slot.strong_count() > 0);
                    let slot = Arc::new(PeerSlot {
                        connections: AtomicUsize::new(0),
                        budget: Arc::new(Semaphore::new(self.inner.limits.max_buffered_bytes)),
                    });
                    peers.insert(uri, Arc::downgrade(&slot));
                    slot
                }
            }
        };
        let max = self.inner.limits.max_connections;
        let admitted = slot
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(Refusal::TooMany { max });
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = Arc::new(peer);
        self.lock_open().insert(
            id,
            OpenConnection {
                conn: conn.clone(),
                peer: peer.clone(),
            },
        );
        Ok(Admitted {
            table: self.clone(),
            id,
            slot,
            peer,
        })
    }

    /// Asks the gate again about every open connection and closes those it no longer admits, and those
    /// whose certificate has expired. Returns how many were closed. Call it whenever what the gate decides
    /// on may have changed (a deny-list or membership update).
    pub fn recheck(&self) -> usize {
        let now = SystemTime::now();
        let open: Vec<(quinn::Connection, Arc<PeerCertificate>)> = self
            .lock_open()
            .values()
            .map(|o| (o.conn.clone(), o.peer.clone()))
            .collect();
        let mut closed = 0;
        for (conn, peer) in open {
            if peer.expired_at(now) {
                close_expired(&conn, &peer);
                closed += 1;
            } else if let Err(status) = self.inner.gate.admit_connection(&peer) {
                close_revoked(&conn, &peer, &status);
                closed += 1;
            }
        }
        closed
    }

    /// How many connections are open, in total.
    pub fn open_connections(&self) -> usize {
        self.lock_open().len()
    }

    /// How many connections `identity` holds.
    pub fn connections_of(&self, identity: &Identity) -> usize {
        self.lock_open()
            .values()
            .filter(|o| o.peer.identity == *identity)
            .count()
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenConnection>> {
        // The map holds handles only; a panic while holding the lock cannot leave it inconsistent.
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes a connection whose peer the gate no longer admits.
pub(crate) fn close_revoked(conn: &quinn::Connection, peer: &PeerCertificate, status: &RpcStatus) {
    tracing::warn!(
        peer = %peer.identity.uri(),
        serial = %peer.serial,
        reason = %status.message,
        "closing the connection of a peer no longer admitted"
    );
    conn.close(CLOSE_REVOKED, b"peer identity no longer admitted");
}

/// Closes a connection whose peer certificate has expired.
pub(crate) fn close_expired(conn: &quinn::Connection, peer: &PeerCertificate) {
    tracing::info!(
        peer = %peer.identity.uri(),
        serial = %peer.serial,
        "closing the connection: the peer's certificate expired"
    );
    conn.close(CLOSE_CERT_EXPIRED, b"peer certificate expired");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_after: i64) -> PeerCertificate {
        PeerCertificate {
            identity: Identity::coordinator("meridian.test", "c1").expect("valid"),
            serial: "01".into(),
            not_after,
        }
    }

    #[test]
    fn expiry_is_inclusive_of_not_after() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        let c = cert(1_000);
        assert!(!c.expired_at(at(999)));
        assert!(!c.expired_at(at(1_000)));
        assert!(c.expired_at(at(1_001)));
        assert_eq!(c.time_left(at(990)), Duration::from_secs(11));
        assert_eq!(c.time_left(at(1_001)), Duration::ZERO);
        assert_eq!(c.time_left(at(5_000)), Duration::ZERO);
    }
}
