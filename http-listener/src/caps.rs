//! The connection caps of one listener: how many connections may be open at once, in all and from one
//! source address, and what a connection over a cap is told before it is closed.
//!
//! Owns the counts; a connection's place is released when its permit drops. Must never block: a
//! connection over a cap is refused at once, never queued.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long writing the refusal to a connection over a cap may take.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many connections a listener keeps open at once.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Most connections open at once (at least 1).
    pub max_connections: usize,
    /// Most connections open at once from one source address (at least 1).
    pub max_per_source: usize,
    /// What a plain-HTTP connection over a cap is answered before it is closed (a TLS one is closed).
    pub refusal: Refusal,
}

/// The body of the `503 Service Unavailable` (with `retry-after: 1`) sent to a plain-HTTP connection
/// over a cap, in the server's own error format.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub content_type: &'static str,
    pub body: String,
}

/// The caps being enforced.
pub(crate) struct ConnectionCaps {
    total: Arc<Semaphore>,
    per_source: usize,
    by_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    refusal: Arc<str>,
}

/// A connection's place under the caps; released when dropped.
pub(crate) struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    source: IpAddr,
    by_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut by_source = self
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

impl ConnectionCaps {
    pub(crate) fn new(limits: &ConnectionLimits) -> Self {
        let body = &limits.refusal.body;
        let refusal = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\nretry-after: 1\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            limits.refusal.content_type,
            body.len()
        );
        Self {
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_source: limits.max_per_source.max(1),
            by_source: Arc::new(Mutex::new(HashMap::new())),
            refusal: refusal.into(),
        }
    }

    /// A place for one more connection from `source`, or `None` at either cap.
    pub(crate) fn admit(&self, source: IpAddr) -> Option<ConnectionPermit> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let mut by_source = self
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = by_source.entry(source).or_insert(0);
        if *n >= self.per_source {
            return None;
        }
        *n += 1;
        Some(ConnectionPermit {
            _total: total,
            source,
            by_source: self.by_source.clone(),
        })
    }

    /// Answers a plain-HTTP connection over a cap with the refusal and closes it.
    pub(crate) fn refuse(&self, mut stream: TcpStream) -> impl std::future::Future<Output = ()> {
        let response = self.refusal.clone();
        async move {
            let write = async {
                stream.write_all(response.as_bytes()).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(total: usize, per_source: usize) -> ConnectionCaps {
        ConnectionCaps::new(&ConnectionLimits {
            max_connections: total,
            max_per_source: per_source,
            refusal: Refusal {
                content_type: "text/plain",
                body: "busy".into(),
            },
        })
    }

    #[test]
    fn both_caps_hold_and_a_dropped_permit_frees_its_place() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let caps = caps(3, 2);
        let first = caps.admit(a).expect("first from a");
        let _second = caps.admit(a).expect("second from a");
        assert!(
            caps.admit(a).is_none(),
            "a third from one source is over its cap"
        );
        let _third = caps.admit(b).expect("another source still fits");
        assert!(caps.admit(b).is_none(), "over the cap in all");
        drop(first);
        assert!(caps.admit(a).is_some(), "a freed place is taken again");
    }

    #[test]
    fn the_refusal_is_a_complete_503() {
        let text = caps(1, 1).refusal;
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("content-type: text/plain\r\n"), "{text}");
        assert!(text.ends_with("content-length: 4\r\n\r\nbusy"), "{text}");
    }
}
