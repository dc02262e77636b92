//! Who may use this coordinator's QUIC mesh beyond what a certificate's role allows: the replicated
//! deny-list and the Raft membership.
//!
//! Owns [`MeshGate`], the coordinator's [`PeerGate`]: a certificate on the deny-list (by identity or by
//! serial) is refused at the handshake, on every call, and its open connections are closed when the
//! deny-list changes ([`watch_deny_list`]); a coordinator certificate whose name is not a current member
//! (voter or learner, in the membership this node knows) is refused on every coordinator-only method, so a
//! removed member is refused as soon as its removal reaches this node. A node that has no membership yet (it
//! waits to be added) accepts Raft messages from any coordinator of the trust domain — that is how the
//! leader reaches a node being added — and nothing else coordinator-only. It never decides what a role may
//! call (that is the RPC layer's table) and never blocks: it reads the local replica and Raft's metrics.

use protocol::rpc::{Method, PeerCertificate, PeerGate, PeerTable, RpcStatus};
use tokio_util::sync::CancellationToken;

use crate::node::Raft;
use crate::store::SharedState;

/// The coordinator's admission of mesh peers (servers it calls and clients that call it).
pub(crate) struct MeshGate {
    state: SharedState,
    /// Whose membership binds coordinator-only methods; `None` for a client's gate (the deny-list only).
    raft: Option<Raft>,
}

impl MeshGate {
    /// The server's gate: the deny-list, and membership for coordinator-only methods.
    pub(crate) fn new(state: SharedState, raft: Raft) -> Self {
        MeshGate {
            state,
            raft: Some(raft),
        }
    }

    /// A client's gate: the servers it calls must not be denied.
    pub(crate) fn deny_list_only(state: SharedState) -> Self {
        MeshGate { state, raft: None }
    }
}

/// Methods only coordinators call; membership is checked on these.
fn coordinator_only(method: Method) -> bool {
    matches!(
        method,
        Method::RaftAppendEntries
            | Method::RaftVote
            | Method::RaftInstallSnapshot
            | Method::ForwardWrite
            | Method::ReadIndex
            | Method::ChangeMembership
    )
}

/// Raft's own messages: what a node waiting to be added must accept from the leader.
fn raft_message(method: Method) -> bool {
    matches!(
        method,
        Method::RaftAppendEntries | Method::RaftVote | Method::RaftInstallSnapshot
    )
}

impl PeerGate for MeshGate {
    fn admit_connection(&self, peer: &PeerCertificate) -> Result<(), RpcStatus> {
        // A poisoned lock means a reader panicked; readers never mutate, so the state is intact.
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.denial_of(&peer.identity.uri(), &peer.serial) {
            None => Ok(()),
            Some(entry) => Err(RpcStatus::permission_denied(format!(
                "{} is denied ({} {})",
                peer.identity.uri(),
                entry.kind.as_str(),
                entry.value
            ))),
        }
    }

    fn admit_call(&self, peer: &PeerCertificate, method: Method) -> Result<(), RpcStatus> {
        let Some(raft) = &self.raft else {
            return Ok(());
        };
        if !coordinator_only(method) || peer.identity.role() != certs::Role::Coordinator {
            return Ok(());
        }
        let name = peer.identity.name();
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        if membership.nodes().next().is_none() {
            return if raft_message(method) {
                Ok(())
            } else {
                Err(RpcStatus::permission_denied(format!(
                    "this coordinator is not part of a group yet; {} may only send it Raft messages",
                    peer.identity.uri()
                )))
            };
        }
        if membership.nodes().any(|(_, node)| node.name == name) {
            Ok(())
        } else {
            Err(RpcStatus::permission_denied(format!(
                "{} is not a member of this coordinator group: {} is refused",
                peer.identity.uri(),
                method.name()
            )))
        }
    }
}

/// Closes the mesh connections of newly denied certificates: re-checks `peers` whenever the applied
/// deny-list changes, until `stop`.
pub(crate) async fn watch_deny_list(
    raft: Raft,
    state: SharedState,
    peers: PeerTable,
    stop: CancellationToken,
) {
    let mut metrics = raft.metrics();
    let version = |state: &SharedState| {
        state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .deny_list_version()
    };
    let mut seen = version(&state);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let now = version(&state);
        if now != seen {
            seen = now;
            let closed = peers.recheck();
            tracing::info!(
                deny_list_version = now,
                closed,
                "deny-list changed; mesh connections re-checked"
            );
        }
    }
}
