//! The HTTP listener every Meridian HTTP server runs on: the admin API, the inference gateway and the
//! agent's metrics endpoint hand [`serve`] a bound TCP listener, a service and [`ServeOptions`].
//!
//! It owns accepting connections, the optional TLS handshake, HTTP/1.1 and HTTP/2 through hyper's automatic
//! connection builder, the connection caps (in all and per source address), the deadline for a
//! connection's first byte and then its request headers, and the graceful stop: on shutdown it stops
//! accepting, lets in-flight requests finish for a bounded time and returns. It knows nothing of routes,
//! keys or bodies: what a request means is the service's business. It must never let one slow or silent
//! client hold a connection's place, or shutdown, for longer than its timeouts.

mod caps;
mod first_byte;
mod serve;

pub use caps::{ConnectionLimits, Refusal};
pub use serve::{
    serve, ConnectionService, ResponseBody, ServeOptions, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HEADER_READ_TIMEOUT,
};
