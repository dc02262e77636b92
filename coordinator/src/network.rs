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
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::RPCTypes;
use protocol::pb;
use protocol::rpc::{Method, RpcClient, RpcError, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::node::{MemberNode, NodeId, TypeConfig};

/// The longest pause between attempts to reach an unreachable peer.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a background connection warm-up may take.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates a [`PeerNetwork`] for each peer openraft replicates to or asks for votes.
pub(crate) struct NetworkFactory {
    node_id: NodeId,
    client: RpcClient,
    /// First pause after a peer turned out unreachable; doubled up to [`MAX_BACKOFF`].
    backoff_base: Duration,
}

impl NetworkFactory {
    pub(crate) fn new(node_id: NodeId, client: RpcClient, backoff_base: Duration) -> Self {
        Self { node_id, client, backoff_base }
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
        let data = serde_json::to_vec(request).map_err(|e| CallFailure::Network(NetworkError::new(&e)))?;
        let body = pb::RaftPayload { data: Bytes::from(data) };
        let answer: pb::RaftPayload =
            self.client.call_message(&self.node.raft_addr, method, &body, timeout).await.map_err(|e| match e {
                RpcError::Timeout => CallFailure::Timeout(timeout),
                RpcError::Transport(_) | RpcError::Refused(_) => CallFailure::Unreachable(Unreachable::new(&e)),
                RpcError::Remote(ref status)
                    if matches!(
                        status.code,
                        StatusCode::Unavailable | StatusCode::PermissionDenied | StatusCode::Unauthenticated
                    ) =>
                {
                    CallFailure::Unreachable(Unreachable::new(&e))
                }
                other => CallFailure::Network(NetworkError::new(&other)),
            })?;
        serde_json::from_slice(&answer.data).map_err(|e| CallFailure::Network(NetworkError::new(&e)))
    }

    /// Turns the outcome of [`PeerNetwork::call`] into what openraft expects.
    fn rpc_result<Resp, E: std::error::Error>(
        &self,
        action: RPCTypes,
        result: Result<Result<Resp, RaftError<NodeId, E>>, CallFailure>,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>> {
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => {
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), remote)))
            }
            Err(CallFailure::Unreachable(e)) => Err(RPCError::Unreachable(e)),
            Err(CallFailure::Network(e)) => Err(RPCError::Network(e)),
            Err(CallFailure::Timeout(timeout)) => {
                Err(RPCError::Timeout(Timeout { action, id: self.node_id, target: self.target, timeout }))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        let result = self.call(Method::RaftAppendEntries, &rpc, option.hard_ttl()).await;
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
        let result = self.call(Method::RaftInstallSnapshot, &rpc, option.hard_ttl()).await;
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
        let base = self.backoff_base.max(Duration::from_millis(1));
        Backoff::new(std::iter::successors(Some(base), |d| Some((*d * 2).min(MAX_BACKOFF))))
    }
}
