//! The coordinator's side of the QUIC RPCs: from other coordinators Raft traffic, forwarded writes,
//! read-index, membership changes, archived audit segments (`audit_repair`) and ping; from agents
//! registration and heartbeats (handled by `fleet`).
//!
//! Owns decoding each method's body, handing it to openraft (or to the leader-only operations of `node`) and
//! encoding the answer. A leader-only method on a node that is not the leader answers `FAILED_PRECONDITION`
//! and guarantees nothing was proposed. It must never trust a peer's bytes: undecodable input is
//! `INVALID_ARGUMENT`, never a panic. Callers were already authorized as coordinators by the RPC layer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use protocol::pb;
use protocol::rpc::{decode_message, encode_message, CallContext, Method, RpcService, RpcStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::audit_archive::AuditArchive;
use crate::fleet::Fleet;
use crate::membership::{change_membership_as_leader, member_change_from};
use crate::node::{LeaderOnlyError, NodeId, Raft};
use crate::proposer::Proposer;
use crate::state::Command;

/// Serves coordinator RPCs for one Raft node.
pub(crate) struct CoordinatorService {
    node_id: NodeId,
    raft: Raft,
    /// Forwarded writes join the leader's proposal batches.
    proposer: Proposer,
    /// Upper bound of a membership change, whatever the caller's deadline.
    membership_timeout: Duration,
    /// Agent registration and heartbeats.
    fleet: Arc<Fleet>,
    /// The archived audit segments other coordinators may copy.
    audit_archive: AuditArchive,
}

impl CoordinatorService {
    pub(crate) fn new(
        node_id: NodeId,
        raft: Raft,
        proposer: Proposer,
        membership_timeout: Duration,
        fleet: Arc<Fleet>,
        audit_archive: AuditArchive,
    ) -> Self {
        Self {
            node_id,
            raft,
            proposer,
            membership_timeout,
            fleet,
            audit_archive,
        }
    }
}

impl RpcService for CoordinatorService {
    fn call(
        &self,
        ctx: CallContext,
        method: Method,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcStatus>> {
        let raft = self.raft.clone();
        let proposer = self.proposer.clone();
        let node_id = self.node_id;
        let fleet = self.fleet.clone();
        let audit_archive = self.audit_archive.clone();
        let membership_deadline = ctx.deadline.min(Instant::now() + self.membership_timeout);
        Box::pin(async move {
            match method {
                Method::RaftAppendEntries => raft_call(&body, |req| raft.append_entries(req)).await,
                Method::RaftVote => raft_call(&body, |req| raft.vote(req)).await,
                Method::RaftInstallSnapshot => {
                    raft_call(&body, |req| raft.install_snapshot(req)).await
                }
                Method::ForwardWrite => forward_write(&proposer, &body).await,
                Method::ReadIndex => read_index(&raft, node_id).await,
                Method::ChangeMembership => {
                    change_membership(&raft, &body, membership_deadline).await
                }
                Method::ReadAuditArchive => crate::audit_repair::serve(audit_archive, &body).await,
                Method::AgentRegister => fleet.register(ctx, body).await,
                Method::AgentHeartbeat => fleet.heartbeat(ctx, body).await,
                Method::AgentSync => fleet.sync(ctx, body).await,
                Method::AgentReport => fleet.report(ctx, body).await,
                Method::Ping => Ok(encode_message(&pb::PingResponse {
                    identity: ctx.peer.uri(),
                    apply_version: crate::state::APPLY_VERSION,
                })),
                other => Err(RpcStatus::unimplemented(format!(
                    "a coordinator does not serve {other}"
                ))),
            }
        })
    }
}

/// Decodes an openraft request from a `RaftPayload`, runs it, and answers openraft's whole `Result`.
async fn raft_call<Req, Resp, E, Fut>(
    body: &[u8],
    run: impl FnOnce(Req) -> Fut,
) -> Result<Bytes, RpcStatus>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    E: Serialize,
    Fut: std::future::Future<Output = Result<Resp, E>>,
{
    let payload: pb::RaftPayload = decode_message(body)?;
    let request: Req = serde_json::from_slice(&payload.data)
        .map_err(|e| RpcStatus::invalid_argument(format!("undecodable raft request: {e}")))?;
    let result = run(request).await;
    let data = serde_json::to_vec(&result)
        .map_err(|e| RpcStatus::internal(format!("encoding raft answer: {e}")))?;
    Ok(encode_message(&pb::RaftPayload {
        data: Bytes::from(data),
    }))
}

fn not_leader() -> RpcStatus {
    RpcStatus::failed_precondition("this coordinator is not the leader")
}

async fn forward_write(proposer: &Proposer, body: &[u8]) -> Result<Bytes, RpcStatus> {
    let request: pb::ForwardWriteRequest = decode_message(body)?;
    let command: Command = serde_json::from_slice(&request.command)
        .map_err(|e| RpcStatus::invalid_argument(format!("undecodable command: {e}")))?;
    let outcome = match proposer.propose(command).await {
        Some(Ok(outcome)) => outcome,
        Some(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            return Err(not_leader())
        }
        Some(Err(e)) => return Err(RpcStatus::unavailable(e.to_string())),
        None => return Err(RpcStatus::unavailable("the coordinator is shutting down")),
    };
    let outcome = serde_json::to_vec(&outcome)
        .map_err(|e| RpcStatus::internal(format!("encoding outcome: {e}")))?;
    Ok(encode_message(&pb::ForwardWriteResponse {
        outcome: Bytes::from(outcome),
    }))
}

async fn read_index(raft: &Raft, node_id: NodeId) -> Result<Bytes, RpcStatus> {
    match raft.get_read_log_id().await {
        Ok((read_log_id, _)) => Ok(encode_message(&pb::ReadIndexResponse {
            read_index: read_log_id.map_or(0, |id| id.index),
            leader_id: node_id,
        })),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(not_leader()),
        Err(e) => Err(RpcStatus::unavailable(e.to_string())),
    }
}

async fn change_membership(
    raft: &Raft,
    body: &[u8],
    deadline: Instant,
) -> Result<Bytes, RpcStatus> {
    let request: pb::MembershipChangeRequest = decode_message(body)?;
    let change = member_change_from(request)
        .ok_or_else(|| RpcStatus::invalid_argument("membership change names no change"))?;
    match change_membership_as_leader(raft, &change, deadline).await {
        Ok(()) => Ok(encode_message(&pb::MembershipChangeResponse {})),
        Err(LeaderOnlyError::NotLeader { .. }) => Err(not_leader()),
        Err(LeaderOnlyError::Invalid(m)) => Err(RpcStatus::invalid_argument(m)),
        Err(LeaderOnlyError::Unavailable(m)) => Err(RpcStatus::unavailable(m)),
    }
}
