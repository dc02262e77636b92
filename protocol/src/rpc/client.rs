//! The RPC client: one QUIC endpoint, one cached connection per peer address, one stream per call.
//!
//! Owns connecting (with a check of the server's certificate identity and role, and of the client's
//! [`PeerGate`]), closing a connection when the server's certificate expires, the per-call timeout that
//! covers connecting, sending and waiting, and the classification of failures into [`RpcError`]. It must
//! never hand a caller an answer from a server whose identity it did not accept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use certs::{Identity, Role, TlsIdentity};
use tracing::debug;

use super::envelope::{decode_response, encode_request};
use super::faults::{Fault, LinkFaults};
use super::peer::{self, AdmitAll, PeerCertificate, PeerGate};
use super::session::{SessionReceiver, SessionSender};
use super::transport::{self, SetupError, TransportSettings};
use super::{
    encode_message, Method, RpcError, CLOSE_CLIENT_DONE, CLOSE_REVOKED, CLOSE_UNAUTHENTICATED,
};
use crate::frame::{self, FrameError};

/// Transport settings of every client connection.
///
/// The idle timeout is also how long a cached connection to a peer that died (or was restarted: the new
/// process cannot decrypt the old connection's packets, nor send it a valid stateless reset) looks usable,
/// and a call that takes it waits out its own timeout. Three seconds without a single packet, with a
/// keep-alive every second, declares the peer gone: a coordinator restarted a few seconds before the next
/// election is reached on a fresh connection instead of losing the first vote request to the old one.
const CLIENT_TRANSPORT: TransportSettings = TransportSettings {
    max_concurrent_streams: 0,
    idle_timeout: Duration::from_secs(3),
    keep_alive: Duration::from_secs(1),
    receive_window: None,
};

/// Longer than any certificate lives (caps a wait so it cannot overflow).
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How long one connection attempt may take before the next call starts a fresh one. A dead peer never
/// answers, and a peer restarted on the same address should be reached again promptly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnecting to a peer whose connection was lost: each attempt gets this many of the round trips last
/// measured to it (at least [`RECONNECT_MIN`], at most [`CONNECT_TIMEOUT`]). A handshake to a peer that is
/// down resends its first packet with exponential backoff, so one long attempt can leave a peer that comes
/// back unheard for most of a second; short attempts, each starting over, reach it within a few hundred
/// milliseconds — before a restarted coordinator's election timer runs out and it deposes a healthy leader.
const RECONNECT_RTTS: u32 = 8;
const RECONNECT_MIN: Duration = Duration::from_millis(250);

/// Calls methods on other Meridian processes. Cheap to clone; clones share the endpoint and connections.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    trust_domain: String,
    server_roles: Vec<Role>,
    /// Servers must also pass this gate, when connecting and on every call.
    gate: Arc<dyn PeerGate>,
    max_frame: usize,
    /// One slot per address; the async lock makes concurrent first calls share one handshake.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Faults injected on this client's links (tests only; set at most once).
    faults: std::sync::OnceLock<Arc<dyn LinkFaults>>,
}

/// What the client knows about one address.
#[derive(Default)]
struct Slot {
    /// The connection in use, if any (it may have closed since).
    cached: Option<Cached>,
    /// The round-trip time of the last connection that was lost, while no new one is established.
    lost_rtt: Option<Duration>,
}

impl Slot {
    /// How long the next connection attempt may take: shorter when reconnecting to a peer that was lost.
    fn connect_limit(&self) -> Duration {
        self.lost_rtt.map_or(CONNECT_TIMEOUT, |rtt| {
            rtt.saturating_mul(RECONNECT_RTTS)
                .clamp(RECONNECT_MIN, CONNECT_TIMEOUT)
        })
    }
}

#[derive(Clone)]
struct Cached {
    conn: quinn::Connection,
    server: Identity,
    cert: Arc<PeerCertificate>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.endpoint.close(CLOSE_CLIENT_DONE, b"client dropped");
    }
}

impl RpcClient {
    /// A client that talks only to coordinators. Must be called inside a tokio runtime.
    pub fn new(tls: &TlsIdentity) -> Result<Self, SetupError> {
        Self::with_server_roles(tls, &[Role::Coordinator])
    }

    /// A client that accepts servers whose identity has one of `server_roles`. Must be called inside a
    /// tokio runtime.
    pub fn with_server_roles(tls: &TlsIdentity, server_roles: &[Role]) -> Result<Self, SetupError> {
        Self::gated(tls, server_roles, Arc::new(AdmitAll))
    }

    /// A client that accepts servers whose identity has one of `server_roles` and that `gate` admits
    /// (checked when connecting and before every call; a server it stops admitting has its connection
    /// closed). Must be called inside a tokio runtime.
    pub fn gated(
        tls: &TlsIdentity,
        server_roles: &[Role],
        gate: Arc<dyn PeerGate>,
    ) -> Result<Self, SetupError> {
        if server_roles.is_empty() {
            return Err(SetupError::Config(
                "a client must accept at least one server role".to_string(),
            ));
        }
        let config = transport::client_config(tls, &CLIENT_TRANSPORT)?;
        let endpoint = transport::client_endpoint()?;
        Ok(RpcClient {
            inner: Arc::new(ClientInner {
                endpoint,
                config,
                trust_domain: tls.trust_domain().to_string(),
                server_roles: server_roles.to_vec(),
                gate,
                max_frame: frame::DEFAULT_MAX_FRAME,
                slots: Mutex::new(HashMap::new()),
                faults: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Subjects every later call of this client (and its clones) to `faults`. Tests use it to partition,
    /// slow down or lose calls; it can be set once.
    pub fn inject_faults(&self, faults: Arc<dyn LinkFaults>) -> Result<(), SetupError> {
        self.inner
            .faults
            .set(faults)
            .map_err(|_| SetupError::Config("faults were injected already".to_string()))
    }

    /// What the injected faults (if any) do to a call to `addr`.
    fn fault(&self, addr: &str, method: Method) -> Fault {
        self.inner
            .faults
            .get()
            .map_or(Fault::Deliver, |f| f.on_call(addr, method))
    }

    /// Calls `method` on the server at `addr` (`host:port`). `timeout` covers the whole call, connecting
    /// included, and travels to the server as the call's deadline.
    ///
    /// A call that times out without a single authenticated packet (an acknowledgement or stream data)
    /// arriving from the server on its connection drops that connection: the peer is most likely gone (a
    /// killed process sends no close, and a restarted one cannot decrypt the old connection's packets), and
    /// the next call should reconnect rather than wait out the idle timeout on a dead connection.
    pub async fn call(
        &self,
        addr: &str,
        method: Method,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let lose_answer = match self.fault(addr, method) {
            Fault::Deliver => false,
            Fault::Cut => return Err(RpcError::Transport(format!("link to {addr} is cut"))),
            Fault::Delay(pause) => {
                tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
                false
            }
            Fault::LoseAnswer => true,
        };
        let cached = self.connection_by(addr, deadline).await?;
        self.still_admitted(addr, &cached)?;
        let received_before = frames_received(&cached.conn);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout_at(deadline, self.call_on(&cached, method, body, remaining))
            .await
        {
            Ok(_) if lose_answer => Err(RpcError::Timeout),
            Ok(result) => result,
            Err(_) => {
                if frames_received(&cached.conn) == received_before {
                    debug!(%addr, "no packet from the server during the call; dropping the connection");
                    cached.conn.close(CLOSE_CLIENT_DONE, b"server silent");
                }
                Err(RpcError::Timeout)
            }
        }
    }

    /// Opens a session call ([`Method::is_session`]) of `method` on the server at `addr`: sends the
    /// request and waits, at most `timeout` (connecting included), for the server to accept it. The
    /// session itself has no deadline here: the two halves live until either side finishes.
    pub async fn open_session(
        &self,
        addr: &str,
        method: Method,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(SessionSender, SessionReceiver), RpcError> {
        if !method.is_session() {
            return Err(RpcError::Decode(format!(
                "{} is not a session method",
                method.name()
            )));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        match self.fault(addr, method) {
            Fault::Deliver | Fault::LoseAnswer => {}
            Fault::Cut => return Err(RpcError::Transport(format!("link to {addr} is cut"))),
            Fault::Delay(pause) => {
                tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
            }
        }
        let cached = self.connection_by(addr, deadline).await?;
        self.still_admitted(addr, &cached)?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let request = encode_request(method, remaining, body);
        if request.len() > self.inner.max_frame {
            return Err(RpcError::Decode(format!(
                "request of {} bytes exceeds the maximum frame of {} bytes",
                request.len(),
                self.inner.max_frame
            )));
        }
        let opening = async {
            let (mut send, mut recv) = cached.conn.open_bi().await?;
            frame::write_frame(&mut send, &request)
                .await
                .map_err(frame_error)?;
            let payload = frame::read_frame(&mut recv, self.inner.max_frame)
                .await
                .map_err(frame_error)?
                .ok_or_else(|| {
                    RpcError::Transport("stream closed without an answer".to_string())
                })?;
            decode_response(Bytes::from(payload))?;
            Ok(super::session::halves(send, recv))
        };
        match tokio::time::timeout_at(deadline, opening).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout),
        }
    }

    /// Like [`call`](Self::call), with protobuf messages for the body and the answer.
    pub async fn call_message<Req, Resp>(
        &self,
        addr: &str,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let body = self
            .call(addr, method, encode_message(request), timeout)
            .await?;
        Resp::decode(body)
            .map_err(|e| RpcError::Decode(format!("undecodable {} response: {e}", method.name())))
    }

    /// Refuses (and closes) a cached connection whose server certificate expired or that the gate no longer
    /// admits.
    fn still_admitted(&self, addr: &str, cached: &Cached) -> Result<(), RpcError> {
        if cached.cert.expired_at(std::time::SystemTime::now()) {
            peer::close_expired(&cached.conn, &cached.cert);
            return Err(RpcError::Refused(format!(
                "the certificate of the server at {addr} expired"
            )));
        }
        if let Err(status) = self.inner.gate.admit_connection(&cached.cert) {
            peer::close_revoked(&cached.conn, &cached.cert, &status);
            return Err(RpcError::Refused(format!(
                "server at {addr} ({}) is no longer admitted: {}",
                cached.server.uri(),
                status.message
            )));
        }
        Ok(())
    }

    async fn call_on(
        &self,
        cached: &Cached,
        method: Method,
        body: Bytes,
        remaining: Duration,
    ) -> Result<Bytes, RpcError> {
        // The server's deadline is what is left of the caller's time after connecting.
        let request = encode_request(method, remaining, body);
        if request.len() > self.inner.max_frame {
            return Err(RpcError::Decode(format!(
                "request of {} bytes exceeds the maximum frame of {} bytes",
                request.len(),
                self.inner.max_frame
            )));
        }
        let result = self.exchange(&cached.conn, &request).await;
        match result {
            Err(RpcError::Transport(detail)) => match cached.conn.close_reason() {
                // The connection died under the call; its reason says more (e.g. a refused certificate).
                Some(reason) => Err(RpcError::from(reason)),
                None => Err(RpcError::Transport(detail)),
            },
            other => other,
        }
    }

    async fn exchange(&self, conn: &quinn::Connection, request: &[u8]) -> Result<Bytes, RpcError> {
        let (mut send, mut recv) = conn.open_bi().await?;
        frame::write_frame(&mut send, request)
            .await
            .map_err(frame_error)?;
        send.finish()
            .map_err(|e| RpcError::Transport(format!("finishing the request: {e}")))?;
        let payload = frame::read_frame(&mut recv, self.inner.max_frame)
            .await
            .map_err(frame_error)?
            .ok_or_else(|| RpcError::Transport("stream closed without a response".to_string()))?;
        decode_response(Bytes::from(payload))
    }

    /// The live connection to `addr`, waiting at most until `deadline`. A handshake in progress is not cut
    /// short when the caller gives up: it runs to completion in its own task, so that callers with short
    /// timeouts (Raft heartbeats) still get a connection on a later call instead of restarting the handshake
    /// every time.
    async fn connection_by(
        &self,
        addr: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Cached, RpcError> {
        let client = self.clone();
        let target = addr.to_string();
        let task = tokio::spawn(async move { client.connection(&target).await });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(RpcError::Transport(format!("connecting to {addr}: {e}"))),
            Err(_) => Err(RpcError::Timeout),
        }
    }

    /// The live connection to `addr`, connecting (or reconnecting) when there is none.
    async fn connection(&self, addr: &str) -> Result<Cached, RpcError> {
        let slot = {
            let mut slots = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            slots.entry(addr.to_string()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(cached) = slot.cached.take() {
            if cached.conn.close_reason().is_none() {
                slot.cached = Some(cached.clone());
                return Ok(cached);
            }
            debug!(%addr, "cached connection closed; reconnecting");
            slot.lost_rtt = Some(cached.conn.rtt());
        }
        let limit = slot.connect_limit();
        let cached = match tokio::time::timeout(limit, self.connect(addr)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(RpcError::Transport(format!(
                    "no handshake with {addr} within {limit:?}"
                )))
            }
        };
        slot.cached = Some(cached.clone());
        slot.lost_rtt = None;
        Ok(cached)
    }

    async fn connect(&self, addr: &str) -> Result<Cached, RpcError> {
        let (remote, server_name) = resolve(addr, &self.inner.endpoint).await?;
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.config.clone(), remote, &server_name)
            .map_err(|e| RpcError::Transport(format!("connecting to {addr}: {e}")))?;
        let conn = connecting.await?;
        let cert = match transport::peer_certificate(&conn, &self.inner.trust_domain) {
            Ok(cert) => Arc::new(cert),
            Err(reason) => {
                conn.close(CLOSE_UNAUTHENTICATED, b"server identity not accepted");
                return Err(RpcError::Refused(format!(
                    "server at {addr} has no acceptable identity: {reason}"
                )));
            }
        };
        let server = cert.identity.clone();
        let role = server.role();
        if !self.inner.server_roles.contains(&role) {
            conn.close(CLOSE_UNAUTHENTICATED, b"server role not accepted");
            return Err(RpcError::Refused(format!(
                "server at {addr} is {} (role {}), not one of the roles this client calls",
                server.uri(),
                role.as_str()
            )));
        }
        if let Err(status) = self.inner.gate.admit_connection(&cert) {
            conn.close(CLOSE_REVOKED, b"server identity not admitted");
            return Err(RpcError::Refused(format!(
                "server at {addr} ({}) is not admitted: {}",
                server.uri(),
                status.message
            )));
        }
        close_at_expiry(&conn, &cert);
        debug!(%addr, server = %server.uri(), "connected");
        Ok(Cached { conn, server, cert })
    }

    /// The identity of the server at `addr`, connecting if needed. Bounded by `timeout`.
    pub async fn server_identity(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Identity, RpcError> {
        if self.fault(addr, Method::Ping) == Fault::Cut {
            return Err(RpcError::Transport(format!("link to {addr} is cut")));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        self.connection_by(addr, deadline)
            .await
            .map(|cached| cached.server)
    }
}

/// Closes `conn` when the server's certificate expires (or lets go when the connection closes first): the
/// certificate was only checked at the handshake.
fn close_at_expiry(conn: &quinn::Connection, cert: &Arc<PeerCertificate>) {
    let left = cert.time_left(std::time::SystemTime::now()).min(CENTURY);
    let (conn, cert) = (conn.clone(), cert.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(left) => peer::close_expired(&conn, &cert),
            _ = conn.closed() => {}
        }
    });
}

/// Frames the peer sent on `conn` that prove it is alive: acknowledgements and stream data.
fn frames_received(conn: &quinn::Connection) -> u64 {
    let rx = conn.stats().frame_rx;
    rx.acks + rx.stream
}

fn frame_error(e: FrameError) -> RpcError {
    match e {
        FrameError::Io(io) => {
            let Some(inner) = io.get_ref() else {
                return RpcError::Transport(io.to_string());
            };
            if let Some(e) = inner.downcast_ref::<quinn::ReadError>() {
                RpcError::from(e.clone())
            } else if let Some(e) = inner.downcast_ref::<quinn::WriteError>() {
                RpcError::from(e.clone())
            } else {
                RpcError::Transport(io.to_string())
            }
        }
        FrameError::TooLarge { len, max } => RpcError::Decode(format!(
            "response frame of {len} bytes exceeds the maximum of {max} bytes"
        )),
        FrameError::Truncated { expected, got } => RpcError::Transport(format!(
            "response truncated: expected {expected} bytes, got {got}"
        )),
    }
}

/// Resolves `host:port` to an address the endpoint can reach, and the name to present in TLS.
async fn resolve(addr: &str, endpoint: &quinn::Endpoint) -> Result<(SocketAddr, String), RpcError> {
    let (host, _port) = addr
        .rsplit_once(':')
        .ok_or_else(|| RpcError::Transport(format!("address {addr:?} is not host:port")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let candidates = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| RpcError::Transport(format!("resolving {addr}: {e}")))?;
    let local_is_v4 = endpoint.local_addr().is_ok_and(|a| a.is_ipv4());
    let remote = candidates
        .into_iter()
        .find(|a| !local_is_v4 || a.is_ipv4())
        .ok_or_else(|| RpcError::Transport(format!("{addr} resolves to no usable address")))?;
    Ok((remote, host.to_string()))
}
