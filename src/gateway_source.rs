//! The inference gateway's view of a coordinator's registry: bearer keys are checked against the local
//! replica, and deployments would be looked up there.
//!
//! Owns the `gateway::RouteSource` that `meridian dev` hands to its gateway. Reads the local replica only
//! (no read-index): the gateway runs beside the coordinator that applied the key. Must never write to the
//! registry, and never show a caller a deployment of another project.

use std::time::{SystemTime, UNIX_EPOCH};

use coordinator::node::Handle;
use gateway::{Caller, Denied, DeploymentView, RouteSource};

/// Keys and deployments from a running coordinator's replicated state.
pub struct RegistryRoutes {
    handle: Handle,
}

impl RegistryRoutes {
    /// A route source over `handle`'s local replica.
    pub fn new(handle: Handle) -> RegistryRoutes {
        RegistryRoutes { handle }
    }
}

impl RouteSource for RegistryRoutes {
    /// The same check as the admin API's: constant-time hash compare, revocation, expiry, principal. Every
    /// failure is the same refusal.
    fn authenticate(&self, bearer: &str) -> Result<Caller, Denied> {
        let now = now_ms();
        self.handle
            .read(|state| coordinator::authz::authenticate(state, bearer, now))
            .map(|caller| Caller {
                project_id: caller.project_id,
                principal_id: caller.principal_id,
            })
            .map_err(|_| Denied::Unauthenticated)
    }

    /// Always `None`: the registry holds no deployments yet (serving is not built), so no model name denotes
    /// one and every model request answers 404. When deployments join the registry, this looks the name up
    /// through the project-scoped accessor of `caller.project_id`, after checking that the caller may read
    /// that project.
    fn deployment(&self, _caller: &Caller, _name: &str) -> Option<DeploymentView> {
        None
    }

    /// Ready once the registry is bootstrapped: before that no key exists to check.
    fn ready(&self) -> bool {
        self.handle.read(|state| state.is_bootstrapped())
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
