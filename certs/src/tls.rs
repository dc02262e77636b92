//! rustls configurations for every Meridian listener and client.
//!
//! Owns `TlsPaths`, `TlsIdentity` (our CA plus our own reloading certificate) and the configurations built
//! from it: mutual TLS 1.3 for the QUIC mesh, server-only TLS for the HTTPS admin API, and the CLI's HTTPS
//! client rooted only at our CA, which accepts only a coordinator's certificate. Every configuration names the ring provider explicitly. Nothing here
//! decides what an authenticated peer may do.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::version::TLS13;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::error::CertError;
use crate::files::read_pem;
use crate::identity::Identity;
use crate::inspect::certs_from_pem;
use crate::provider::ring_provider;
use crate::reload::{load_pair, PairFiles, ReloadingCertResolver};
use crate::verifier::{AdminServerVerifier, MeshClientVerifier, MeshServerVerifier};
use crate::verify::CaTrust;

/// Paths of a process's TLS material.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A process's TLS material: our CA and its own (reloading) certificate and key. Cheap to clone.
#[derive(Clone)]
pub struct TlsIdentity {
    inner: Arc<TlsInner>,
}

struct TlsInner {
    trust: CaTrust,
    ca_pem: String,
    provider: Arc<CryptoProvider>,
    resolver: Arc<ReloadingCertResolver>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("trust_domain", &self.trust_domain())
            .field("identity", &self.identity().uri())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Loads the CA, certificate and key files; the certificate and key are re-read when they change
    /// on disk (the CA is read once). Fails if the pair does not belong to the CA's trust domain.
    pub fn load(paths: &TlsPaths) -> Result<Self, CertError> {
        let ca_pem = read_pem(&paths.ca)?;
        let trust = CaTrust::from_pem(&ca_pem)?;
        let provider = ring_provider();
        let files = PairFiles {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        };
        let resolver = ReloadingCertResolver::watching(trust.clone(), provider.clone(), files)?;
        Ok(Self::assemble(trust, ca_pem, provider, resolver))
    }

    /// Builds from PEM text; the certificate never changes.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let trust = CaTrust::from_pem(ca_pem)?;
        let provider = ring_provider();
        let pair = load_pair(cert_pem, key_pem, &trust, &provider, true)?;
        let resolver = ReloadingCertResolver::fixed(trust.clone(), provider.clone(), pair);
        Ok(Self::assemble(
            trust,
            ca_pem.to_string(),
            provider,
            resolver,
        ))
    }

    fn assemble(
        trust: CaTrust,
        ca_pem: String,
        provider: Arc<CryptoProvider>,
        resolver: ReloadingCertResolver,
    ) -> Self {
        TlsIdentity {
            inner: Arc::new(TlsInner {
                trust,
                ca_pem,
                provider,
                resolver: Arc::new(resolver),
            }),
        }
    }

    /// Our trust domain (read from the CA certificate).
    pub fn trust_domain(&self) -> &str {
        self.inner.trust.trust_domain()
    }

    /// Our own identity, from the certificate currently served.
    pub fn identity(&self) -> Identity {
        self.inner.resolver.current().identity.clone()
    }

    /// The certificate currently served (leaf first).
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.inner.resolver.current().certified.cert.clone()
    }

    /// The CA certificate(s), PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.inner.ca_pem
    }

    /// The CA trust used by the verifiers.
    pub fn ca_trust(&self) -> &CaTrust {
        &self.inner.trust
    }

    /// Mutual TLS 1.3 server (QUIC mesh): a client certificate from our CA is mandatory. Session
    /// resumption is off, so every connection re-verifies the peer's certificate.
    pub fn mtls_server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let verifier =
            MeshClientVerifier::new(self.inner.trust.clone(), self.inner.provider.clone());
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&TLS13])
            // ring's default provider always includes TLS 1.3 cipher suites and key exchange groups.
            .expect("the ring provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(self.inner.resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }

    /// Mutual TLS 1.3 client (QUIC mesh): presents our certificate and accepts any server that passes
    /// `verify_leaf` (the server name is not checked; the caller checks the returned identity).
    pub fn mtls_client_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let verifier =
            MeshServerVerifier::new(self.inner.trust.clone(), self.inner.provider.clone());
        let mut config = ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&TLS13])
            // ring's default provider always includes TLS 1.3 cipher suites and key exchange groups.
            .expect("the ring provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.inner.resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }

    /// Server-only TLS (HTTPS admin API): serves our certificate and asks for no client certificate;
    /// callers authenticate with bearer tokens.
    pub fn tls_server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()
            // ring's default provider always includes cipher suites for the default versions.
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.inner.resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// An HTTPS client configuration for the CLI talking to the admin API: ordinary host-name verification
/// against the CA certificate(s) in `ca_pem` only, and in addition the server's certificate must name a
/// coordinator of the CA's trust domain. Any other certificate of the CA — an agent's, a gateway's, an
/// operator's, even one whose DNS or IP SANs match the address — is refused, so a stolen non-coordinator
/// key cannot impersonate the admin API and collect bearer tokens.
pub fn https_client_config(ca_pem: &str) -> Result<ClientConfig, CertError> {
    let trust = CaTrust::from_pem(ca_pem)?;
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| CertError::Tls(format!("CA certificate not usable as a root: {e}")))?;
    }
    let provider = ring_provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let verifier = AdminServerVerifier::new(webpki, trust.trust_domain().to_string());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CertError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}
