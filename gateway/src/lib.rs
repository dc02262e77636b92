//! Meridian's inference gateway: the Open Inference Protocol v2 REST surface (`/v2/...`) where inference
//! clients address a deployment by its name as the OIP model name.
//!
//! The gateway authenticates every model request with `Authorization: Bearer <key>`, finds the caller's
//! deployment through a [`RouteSource`] and would forward the request to one of its backends. Serving (replicas,
//! traffic splits, routing tables) is not built yet, so no deployment has a backend and every model route ends
//! in a JSON error: 404 for a deployment the caller cannot see, 503 for one with no backend. The gateway never
//! answers an inference request itself and never pretends that a model exists.
//!
//! Owns the HTTP listener's connections, the OIP routes, their error shape (`{"error": "<message>"}`), the
//! request body limit and model-name validation. It must never depend on the coordinator: keys and deployments
//! arrive through [`RouteSource`], so a production gateway can run as its own process fed by coordinators.

mod error;
mod metrics;
mod names;
mod routes;
mod server;
mod source;

pub use server::{serve, GatewayOptions, DEFAULT_MAX_BODY_BYTES};
pub use source::{Backend, Caller, Denied, DeploymentView, RouteSource};
