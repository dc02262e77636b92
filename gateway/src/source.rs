//! What the gateway asks of the rest of Meridian: who a bearer key belongs to and which deployment a model
//! name denotes for that caller.
//!
//! Owns the [`RouteSource`] trait and the plain values crossing it. Implementations live with whoever holds
//! the registry (a coordinator's replica today, pushed routing tables later). Must never leak another
//! project's deployment: for a caller outside the deployment's project it is simply absent.

use std::net::SocketAddr;

/// Where the gateway learns keys and deployments. Calls are synchronous and must be cheap (a lookup in
/// memory): they run on every request.
pub trait RouteSource: Send + Sync + 'static {
    /// Authenticates the token of an `Authorization: Bearer <token>` header.
    fn authenticate(&self, bearer: &str) -> Result<Caller, Denied>;

    /// The deployment named `name` in `caller`'s project. A deployment of another project, or one the caller
    /// may not see, is `None`, exactly like a missing one.
    fn deployment(&self, caller: &Caller, name: &str) -> Option<DeploymentView>;

    /// Whether the source can answer for callers at all (it has keys to check tokens against). Backs
    /// `GET /v2/health/ready`.
    fn ready(&self) -> bool;
}

/// An authenticated inference client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The project the caller's key belongs to; deployments are looked up in it.
    pub project_id: String,
    /// The principal behind the key, for logs.
    pub principal_id: String,
}

/// Why a token was refused. The gateway answers 401 without saying which part of the token was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Malformed, unknown, revoked or expired key, or a disabled principal.
    #[error("invalid or unknown API key")]
    Unauthenticated,
}

/// A deployment as the gateway sees it: enough to route a request, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentView {
    /// The deployment's name: the OIP model name clients use.
    pub name: String,
    /// The project the deployment belongs to.
    pub project_id: String,
    /// Whether the deployment accepts traffic (serving decides; a paused or failed deployment does not).
    pub ready: bool,
    /// The replicas requests may go to. Empty until serving places replicas.
    pub backends: Vec<Backend>,
}

/// One replica serving a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Where the replica's model server listens.
    pub addr: SocketAddr,
}
