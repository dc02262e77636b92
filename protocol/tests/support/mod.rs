//! Fixtures for the RPC integration tests: a test CA and identities from `certs`, certificates that `certs`
//! refuses to issue (built with rcgen and signed by the same CA), a test service, a running server on
//! loopback, and raw QUIC connections that write whatever bytes a test wants.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certs::{CertificateAuthority, Identity, IdentityKind, LeafRequest, TlsIdentity};
use futures::future::BoxFuture;
use futures::FutureExt;
use prost::Message;
use protocol::pb;
use protocol::rpc::{
    encode_message, CallContext, Method, RpcServer, RpcService, RpcStatus, ServerOptions, ALPN,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TD: &str = "meridian.test";
/// Generous bound for calls that must succeed on a loaded machine.
pub const CALL: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A CA of trust domain [`TD`] and the identities it issues.
pub struct Pki {
    pub ca: CertificateAuthority,
}

impl Pki {
    pub fn new() -> Pki {
        init_tracing();
        certs::install_crypto_provider();
        let ca = CertificateAuthority::generate(TD, Duration::from_secs(24 * 3600)).unwrap();
        Pki { ca }
    }

    pub fn tls(&self, kind: IdentityKind) -> TlsIdentity {
        let identity = Identity {
            trust_domain: TD.to_string(),
            kind,
        };
        let leaf = self
            .ca
            .issue(&LeafRequest::new(identity, Duration::from_secs(3600)))
            .unwrap();
        TlsIdentity::from_pem(self.ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).unwrap()
    }

    pub fn coordinator(&self, name: &str) -> TlsIdentity {
        self.tls(IdentityKind::Coordinator { name: name.into() })
    }

    /// A coordinator certificate that expires `left` from now (it started an hour ago).
    pub fn coordinator_expiring(&self, name: &str, left: Duration) -> TlsIdentity {
        let identity = Identity {
            trust_domain: TD.to_string(),
            kind: IdentityKind::Coordinator { name: name.into() },
        };
        let started = std::time::SystemTime::now() - Duration::from_secs(3600);
        let leaf = self
            .ca
            .issue(
                &LeafRequest::new(identity, Duration::from_secs(3600) + left).valid_from(started),
            )
            .unwrap();
        TlsIdentity::from_pem(self.ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).unwrap()
    }

    pub fn agent(&self, node: &str) -> TlsIdentity {
        self.tls(IdentityKind::Agent {
            region: "eu".into(),
            cluster: "a".into(),
            node: node.into(),
        })
    }

    /// A certificate and key signed by this CA's key, built from what Meridian would issue and then edited
    /// by the test (so it can be expired, carry two URI SANs, ...). Returns `(cert_pem, key_pem)`.
    pub fn craft(&self, edit: impl FnOnce(&mut rcgen::CertificateParams)) -> (String, String) {
        let ca_key = rcgen::KeyPair::from_pem(self.ca.key_pem()).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(self.ca.cert_pem(), ca_key).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "crafted");
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{TD}/coordinator/crafted"))];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::hours(1);
        edit(&mut params);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn uri_san(uri: &str) -> rcgen::SanType {
    rcgen::SanType::URI(uri.try_into().unwrap())
}

/// What the test service has been asked, so tests can wait for a call to be in flight.
pub struct Probe {
    pub entered: mpsc::UnboundedReceiver<Method>,
    /// Opens the gate that `ReadIndex` calls wait on.
    pub gate: watch::Sender<bool>,
}

/// Ping answers the caller's identity; RaftVote echoes; ForwardWrite answers the milliseconds left until
/// its deadline; ReadIndex waits for the probe's gate; AgentHeartbeat checks the agent speaks for its node.
pub struct TestService {
    entered: mpsc::UnboundedSender<Method>,
    gate: watch::Receiver<bool>,
}

impl TestService {
    pub fn new() -> (Arc<TestService>, Probe) {
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (gate, gate_rx) = watch::channel(false);
        (
            Arc::new(TestService {
                entered: entered_tx,
                gate: gate_rx,
            }),
            Probe { entered, gate },
        )
    }
}

impl RpcService for TestService {
    fn call(
        &self,
        ctx: CallContext,
        method: Method,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcStatus>> {
        let _ = self.entered.send(method);
        let mut gate = self.gate.clone();
        async move {
            match method {
                Method::Ping => Ok(encode_message(&pb::PingResponse {
                    identity: ctx.peer.uri(),
                    apply_version: 0,
                })),
                Method::RaftVote => Ok(body),
                Method::ForwardWrite => {
                    let left = ctx
                        .deadline
                        .saturating_duration_since(tokio::time::Instant::now());
                    Ok(encode_message(&pb::ForwardWriteResponse {
                        outcome: Bytes::from(left.as_millis().to_string()),
                    }))
                }
                Method::ReadIndex => {
                    gate.wait_for(|open| *open)
                        .await
                        .map_err(|_| RpcStatus::unavailable("gate dropped"))?;
                    Ok(encode_message(&pb::ReadIndexResponse {
                        read_index: 7,
                        leader_id: 1,
                    }))
                }
                Method::AgentHeartbeat => {
                    let beat: pb::Heartbeat = protocol::rpc::decode_message(&body)?;
                    ctx.ensure_speaks_for_node(&beat.region, &beat.cluster, &beat.node)?;
                    Ok(encode_message(&pb::HeartbeatAck {
                        lease_epoch: beat.lease_epoch,
                        heartbeat_interval_ms: 1000,
                        deny_list: None,
                    }))
                }
                other => Err(RpcStatus::unimplemented(format!("{other} not served here"))),
            }
        }
        .boxed()
    }
}

/// An RPC server running on loopback.
pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Server {
    pub fn start(tls: &TlsIdentity, service: Arc<dyn RpcService>) -> Server {
        Self::start_with(tls, service, ServerOptions::default(), "127.0.0.1:0")
    }

    pub fn start_with(
        tls: &TlsIdentity,
        service: Arc<dyn RpcService>,
        options: ServerOptions,
        addr: &str,
    ) -> Server {
        let server = RpcServer::bind_with(addr.parse().unwrap(), tls, service, options).unwrap();
        Self::run(server)
    }

    /// A server whose peers must also pass `gate`; returns its table of open connections too.
    pub fn start_gated(
        tls: &TlsIdentity,
        service: Arc<dyn RpcService>,
        options: ServerOptions,
        gate: Arc<dyn protocol::rpc::PeerGate>,
    ) -> (Server, protocol::rpc::PeerTable) {
        let server =
            RpcServer::bind_gated("127.0.0.1:0".parse().unwrap(), tls, service, options, gate)
                .unwrap();
        let peers = server.peers();
        (Self::run(server), peers)
    }

    fn run(server: RpcServer) -> Server {
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Server {
            addr,
            shutdown,
            task,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Cancels the server and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(CALL, self.task)
            .await
            .expect("server stops within the bound")
            .unwrap();
    }
}

/// A quinn client config that presents `cert_pem`/`key_pem` and accepts any server certificate, so a test
/// can show up with a certificate `TlsIdentity` would refuse to load.
pub fn raw_client_config(cert_pem: &str, key_pem: &str) -> quinn::ClientConfig {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(Arc::new(config)).unwrap(),
    ))
}

/// The same client config `RpcClient` uses, for raw streams with a proper identity.
pub fn client_config(tls: &TlsIdentity) -> quinn::ClientConfig {
    let crypto = QuicClientConfig::try_from(tls.mtls_client_config(&[ALPN])).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// Opens a QUIC connection to `addr` with `config`, on its own endpoint.
pub async fn raw_connect(
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint
        .connect_with(config, addr, "localhost")
        .unwrap()
        .await
}

/// One framed request payload, as `RpcClient` would send it.
pub fn request_frame(method: u32, body: &[u8]) -> Vec<u8> {
    let request = pb::RpcRequest {
        method,
        timeout_ms: 5000,
        body: Bytes::copy_from_slice(body),
    };
    protocol::frame::encode_frame(&request.encode_to_vec(), protocol::DEFAULT_MAX_FRAME).unwrap()
}

/// Writes `bytes` on a new stream, optionally finishes it, and reads the answer: `Ok(result)` with the
/// decoded response, or `Err` with what went wrong on the stream.
pub async fn raw_exchange(
    conn: &quinn::Connection,
    bytes: &[u8],
    finish: bool,
) -> Result<Result<Bytes, RpcStatus>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    if finish {
        send.finish().map_err(|e| e.to_string())?;
    }
    let payload = protocol::frame::read_frame(&mut recv, protocol::DEFAULT_MAX_FRAME)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no response".to_string())?;
    let response = pb::RpcResponse::decode(&payload[..]).map_err(|e| e.to_string())?;
    match response.result {
        Some(pb::rpc_response::Result::Ok(body)) => Ok(Ok(body)),
        Some(pb::rpc_response::Result::Error(status)) => Ok(Err(status.into())),
        None => Err("empty response".to_string()),
    }
}

/// A proper Ping on a raw connection; returns the identity the server saw.
pub async fn raw_ping(conn: &quinn::Connection) -> Result<String, String> {
    match tokio::time::timeout(
        CALL,
        raw_exchange(conn, &request_frame(Method::Ping.id(), &[]), true),
    )
    .await
    {
        Ok(Ok(Ok(body))) => pb::PingResponse::decode(body)
            .map(|r| r.identity)
            .map_err(|e| e.to_string()),
        Ok(Ok(Err(status))) => Err(status.to_string()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".to_string()),
    }
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
