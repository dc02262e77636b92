//! HTTPS clients for both systems under test, built the same way so transport costs match: rustls with the
//! ring provider trusting only the given CA, HTTP/1.1 with keep-alive, one connection per simulated client.
//!
//! Owns client construction only; it never sends a request and never trusts the system's root store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Client-side transport settings shared by every request the harness makes.
#[derive(Clone)]
pub(crate) struct HttpSettings {
    tls: Arc<rustls::ClientConfig>,
    /// The same trust, offering HTTP/2 for gRPC.
    tls_h2: Arc<rustls::ClientConfig>,
    pub(crate) request_timeout: Duration,
}

impl HttpSettings {
    /// Trusts exactly the certificates in `ca_pem`.
    pub(crate) fn new(ca_pem: &[u8], request_timeout: Duration) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.context("parsing the CA certificate")?)
                .context("adding the CA certificate")?;
        }
        if roots.is_empty() {
            bail!("the CA file holds no certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("configuring TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // HTTP/1.1 on both sides: etcd's gateway and the admin API would otherwise negotiate different
        // protocols, and the comparison is about the coordinators, not the framing.
        let mut tls_h2 = tls.clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        tls_h2.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            tls: Arc::new(tls),
            tls_h2: Arc::new(tls_h2),
            request_timeout,
        })
    }

    /// A gRPC channel (one HTTP/2 connection, made on first use) to `127.0.0.1:port`.
    pub(crate) fn grpc_channel(&self, port: u16) -> anyhow::Result<tonic::transport::Channel> {
        super::grpc::channel(self.tls_h2.clone(), port, self.request_timeout)
    }

    /// A new client with its own connection pool (one simulated client = one kept-alive connection).
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(4)
            .pool_idle_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.request_timeout)
            .no_proxy()
            .build()
            .context("building the HTTPS client")
    }
}
