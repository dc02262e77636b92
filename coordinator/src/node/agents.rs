//! Calls from a coordinator to the agents of its fleet over the mesh: reading a job's output, running a
//! command or reading a file in a running job, and opening a terminal session in one. The agent's
//! address is the one it registered; the caller decides what may be asked (the admin API's checks).

use std::time::Duration;

use protocol::pb;
use protocol::rpc::{Method, RpcError, SessionReceiver, SessionSender};

use super::Handle;

impl Handle {
    /// Reads a job attempt's output from the agent that ran it, at the QUIC address the agent registered.
    pub async fn read_job_logs(
        &self,
        rpc_addr: &str,
        request: &pb::ReadLogsRequest,
    ) -> Result<pb::ReadLogsResponse, RpcError> {
        self.inner
            .agent_client
            .call_message(
                rpc_addr,
                Method::AgentReadLogs,
                request,
                super::AGENT_CALL_TIMEOUT,
            )
            .await
    }

    /// Calls `method` on the agent at `rpc_addr` with a deadline of `timeout` (a command run in a job, a
    /// file read out of one).
    pub async fn call_agent<Req, Resp>(
        &self,
        rpc_addr: &str,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        self.inner
            .agent_client
            .call_message(rpc_addr, method, request, timeout)
            .await
    }

    /// Opens a session call on the agent at `rpc_addr` (an interactive terminal inside a job); `timeout`
    /// bounds only the opening.
    pub async fn open_agent_session(
        &self,
        rpc_addr: &str,
        method: Method,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<(SessionSender, SessionReceiver), RpcError> {
        self.inner
            .agent_client
            .open_session(rpc_addr, method, body, timeout)
            .await
    }
}
