//! QUIC endpoint configuration: TLS from `certs`, stream and receive-window limits, idle timeout and
//! keep-alive, and the peer certificate (identity, serial, expiry) taken from a connection's verified chain.
//!
//! Owns every quinn setting of the RPC layer so client and server stay consistent. It must never accept a
//! TLS configuration other than the mutual one `certs` builds for [`ALPN`](super::ALPN).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use certs::TlsIdentity;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;

use super::peer::PeerCertificate;
use super::ALPN;

/// Why an RPC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The TLS configuration cannot carry QUIC (QUIC needs TLS 1.3 and its initial cipher suite).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("binding UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
}

/// The round-trip time assumed before one is measured (quinn's default is 333 ms).
const INITIAL_RTT: Duration = Duration::from_millis(50);

/// Transport settings shared by both sides.
pub(crate) struct TransportSettings {
    /// How many requests a peer may have in flight on one connection.
    pub(crate) max_concurrent_streams: u32,
    pub(crate) idle_timeout: Duration,
    pub(crate) keep_alive: Duration,
    /// The most stream data a connection may have in flight towards us, unread (quinn's default is
    /// unbounded across streams); `None` keeps quinn's default.
    pub(crate) receive_window: Option<usize>,
}

fn transport_config(
    settings: &TransportSettings,
    accept_streams: bool,
) -> Result<quinn::TransportConfig, SetupError> {
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout)
        .map_err(|_| SetupError::Config("idle timeout out of range".to_string()))?;
    if settings.keep_alive >= settings.idle_timeout {
        return Err(SetupError::Config(
            "keep-alive interval must be shorter than the idle timeout".to_string(),
        ));
    }
    let mut config = quinn::TransportConfig::default();
    let streams = if accept_streams {
        settings.max_concurrent_streams
    } else {
        // The other side never opens streams towards a client.
        0
    };
    config
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(settings.keep_alive))
        // Meridian's mesh runs inside and between data centres: assume a short path until measured, so a
        // handshake whose first packet was lost (a peer restarting on its address) is resent in tens of
        // milliseconds rather than about a second — before a Raft election timer can run out on it.
        .initial_rtt(INITIAL_RTT);
    if let Some(window) = settings.receive_window {
        let window = u32::try_from(window).unwrap_or(u32::MAX);
        config.receive_window(quinn::VarInt::from_u32(window));
    }
    Ok(config)
}

/// The server side: mutual TLS with our CA, streams bounded per connection.
pub(crate) fn server_config(
    tls: &TlsIdentity,
    settings: &TransportSettings,
) -> Result<quinn::ServerConfig, SetupError> {
    let crypto = QuicServerConfig::try_from(tls.mtls_server_config(&[ALPN]))
        .map_err(|e| SetupError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(settings, true)?));
    Ok(config)
}

/// The client side: mutual TLS with our CA.
pub(crate) fn client_config(
    tls: &TlsIdentity,
    settings: &TransportSettings,
) -> Result<quinn::ClientConfig, SetupError> {
    let crypto = QuicClientConfig::try_from(tls.mtls_client_config(&[ALPN]))
        .map_err(|e| SetupError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(settings, false)?));
    Ok(config)
}

/// A client endpoint on an ephemeral port: dual-stack where the host has IPv6, IPv4 otherwise.
pub(crate) fn client_endpoint() -> Result<quinn::Endpoint, SetupError> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
    match quinn::Endpoint::client(v6) {
        Ok(endpoint) => Ok(endpoint),
        Err(_) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
            quinn::Endpoint::client(v4).map_err(|source| SetupError::Bind { addr: v4, source })
        }
    }
}

/// The identity, serial and expiry of the peer's verified certificate chain.
pub(crate) fn peer_certificate(
    conn: &quinn::Connection,
    trust_domain: &str,
) -> Result<PeerCertificate, String> {
    let any = conn
        .peer_identity()
        .ok_or_else(|| "peer presented no certificate".to_string())?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "peer identity is not an X.509 certificate chain".to_string())?;
    PeerCertificate::from_chain(&chain, trust_domain)
}
