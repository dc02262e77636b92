//! openraft's network over Meridian's QUIC RPC client: one [`PeerNetwork`] per Raft peer.
//!
//! Owns how openraft's AppendEntries, Vote and InstallSnapshot requests travel between coordinators: each is
//! serde-JSON-encoded inside a `meridian.v1.RaftPayload`, and the peer answers with the JSON of openraft's
//! own `Result`, so a refusal by the remote Raft comes back as openraft's remote error. Transport failures
//! become `Unreachable` (openraft backs off) or `Network`. It must never interpret or alter the Raft
//! messages it carries.

// openraft's error types are large by design and fixed by its traits; boxing them here would only add copies.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use protocol::pb;
use protocol::rpc::{Method, RpcClient, RpcError, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::node::{MemberNode, NodeId, TypeConfig};

/// The longest pause between attempts to reach an unreachable peer, whatever the timings.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Largest encoded Raft request: half a frame, leaving room for the envelope.
const MAX_RAFT_PAYLOAD: usize = protocol::DEFAULT_MAX_FRAME / 2;
/// How long a background connection warm-up may take.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates a [`PeerNetwork`] for each peer openraft replicates to or asks for votes.
pub(crate) struct NetworkFactory {
    node_id: NodeId,
    client: RpcClient,
    /// First pause after a peer turned out unreachable; doubled up to `backoff_max`.
    backoff_base: Duration,
    /// Longest pause (at most [`MAX_BACKOFF`]). A restarted member that hears nothing from the leader for an
    /// election timeout starts an election and deposes it, so the leader must retry well within that.
    backoff_max: Duration,
}

impl NetworkFactory {
    pub(crate) fn new(
        node_id: NodeId,
        client: RpcClient,
        backoff_base: Duration,
        backoff_max: Duration,
    ) -> Self {
        Self {
            node_id,
            client,
            backoff_base,
            backoff_max: backoff_max.min(MAX_BACKOFF),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerNetwork {
        // Connect in the background: openraft's per-call timeouts are as short as a heartbeat, and a QUIC
        // handshake cut short by one would start over on the next call.
        let client = self.client.clone();
        let addr = node.raft_addr.clone();
        tokio::spawn(async move {
            if let Err(e) = client.server_identity(&addr, WARM_UP_TIMEOUT).await {
                tracing::debug!(%addr, error = %e, "raft peer not reachable yet");
            }
        });
        PeerNetwork {
            node_id: self.node_id,
            target,
            node: node.clone(),
            client: self.client.clone(),
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
        }
    }
}

/// openraft's connection to one peer.
pub(crate) struct PeerNetwork {
    node_id: NodeId,
    target: NodeId,
    node: MemberNode,
    client: RpcClient,
    backoff_base: Duration,
    backoff_max: Duration,
}

/// What can go wrong below openraft's own error: the transport, or an undecodable answer.
enum CallFailure {
    Unreachable(Unreachable),
    Network(NetworkError),
    Timeout(Duration),
}

impl PeerNetwork {
    /// Sends `request` as `method` and decodes the remote Raft's `Result`.
    async fn call<Req, Resp, E>(
        &self,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Result<Resp, E>, CallFailure>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned,
    {
        let data = encode(request)?;
        self.send(method, data, timeout).await
    }

    async fn send<Resp, E>(
        &self,
        method: Method,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Result<Resp, E>, CallFailure>
    where
        Resp: DeserializeOwned,
        E: DeserializeOwned,
    {
        let body = pb::RaftPayload {
            data: Bytes::from(data),
        };
        let answer: pb::RaftPayload = self
            .client
            .call_message(&self.node.raft_addr, method, &body, timeout)
            .await
            .map_err(|e| match e {
                RpcError::Timeout => CallFailure::Timeout(timeout),
                RpcError::Transport(_) | RpcError::Refused(_) => {
                    CallFailure::Unreachable(Unreachable::new(&e))
                }
                RpcError::Remote(ref status)
                    if matches!(
                        status.code,
                        StatusCode::Unavailable
                            | StatusCode::PermissionDenied
                            | StatusCode::Unauthenticated
                    ) =>
                {
                    CallFailure::Unreachable(Unreachable::new(&e))
                }
                other => CallFailure::Network(NetworkError::new(&other)),
            })?;
        serde_json::from_slice(&answer.data)
            .map_err(|e| CallFailure::Network(NetworkError::new(&e)))
    }

    /// Turns the outcome of [`PeerNetwork::call`] into what openraft expects.
    fn rpc_result<Resp, E: std::error::Error>(
        &self,
        action: RPCTypes,
        result: Result<Result<Resp, RaftError<NodeId, E>>, CallFailure>,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>> {
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                remote,
            ))),
            Err(CallFailure::Unreachable(e)) => Err(RPCError::Unreachable(e)),
            Err(CallFailure::Network(e)) => Err(RPCError::Network(e)),
            Err(CallFailure::Timeout(timeout)) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.node_id,
                target: self.target,
                timeout,
            })),
        }
    }
}

fn encode<T: Serialize>(request: &T) -> Result<Vec<u8>, CallFailure> {
    serde_json::to_vec(request).map_err(|e| CallFailure::Network(NetworkError::new(&e)))
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        let data = match encode(&rpc) {
            Ok(data) => data,
            Err(e) => return self.rpc_result(RPCTypes::AppendEntries, Err(e)),
        };
        let entries = rpc.entries.len();
        if data.len() > MAX_RAFT_PAYLOAD && entries > 1 {
            // Ask openraft for fewer entries per call, in proportion to the overshoot.
            let hint = (entries as u64).saturating_mul(MAX_RAFT_PAYLOAD as u64) / data.len() as u64;
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint.max(1)),
            ));
        }
        let result = self
            .send(Method::RaftAppendEntries, data, option.hard_ttl())
            .await;
        self.rpc_result(RPCTypes::AppendEntries, result)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let result = self
            .call(Method::RaftInstallSnapshot, &rpc, option.hard_ttl())
            .await;
        self.rpc_result(RPCTypes::InstallSnapshot, result)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        let result = self.call(Method::RaftVote, &rpc, option.hard_ttl()).await;
        self.rpc_result(RPCTypes::Vote, result)
    }

    fn backoff(&self) -> Backoff {
        let max = self.backoff_max.max(Duration::from_millis(1));
        let base = self.backoff_base.max(Duration::from_millis(1)).min(max);
        Backoff::new(std::iter::successors(Some(base), move |d| {
            Some((*d * 2).min(max))
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use certs::{CertificateAuthority, Identity, LeafRequest, TlsIdentity};
    use openraft::error::RPCError;
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::AppendEntriesRequest;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    use protocol::rpc::RpcClient;

    use super::{NetworkFactory, MAX_RAFT_PAYLOAD};
    use crate::node::{MemberNode, TypeConfig};
    use crate::state::{Actor, AuditOp, AuditOutcome, Command, Op};

    fn big_entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
        let op = Op::Audit(AuditOp::RecordAudit {
            action: "test.big".to_string(),
            project: None,
            target: String::new(),
            outcome: AuditOutcome::Denied,
            detail: "x".repeat(bytes),
        });
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::new(0, Actor::system(), op)),
        }
    }

    #[tokio::test]
    async fn oversized_append_asks_openraft_for_fewer_entries() -> anyhow::Result<()> {
        let ca = CertificateAuthority::generate("net.meridian.test", Duration::from_secs(600))?;
        let leaf = ca.issue(&LeafRequest::new(
            Identity::coordinator("net.meridian.test", "c1")?,
            Duration::from_secs(600),
        ))?;
        let tls = TlsIdentity::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem)?;
        let mut factory = NetworkFactory::new(
            1,
            RpcClient::new(&tls)?,
            Duration::from_millis(10),
            Duration::from_millis(100),
        );
        // Nothing listens there: only a request that is refused before sending can answer quickly.
        let node = MemberNode {
            name: "c2".into(),
            raft_addr: "127.0.0.1:9".into(),
            admin_addr: String::new(),
        };
        let mut peer = factory.new_client(2, &node).await;

        let entry_bytes = MAX_RAFT_PAYLOAD / 3;
        let request = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=4).map(|i| big_entry(i, entry_bytes)).collect(),
        };
        let option = RPCOption::new(Duration::from_secs(5));
        match peer.append_entries(request, option).await {
            Err(RPCError::PayloadTooLarge(too_large)) => {
                let hint = too_large.entries_hint();
                assert!(
                    (1..4).contains(&hint),
                    "hint {hint} must shrink the batch of 4"
                );
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        Ok(())
    }
}
