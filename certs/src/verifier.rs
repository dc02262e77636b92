//! rustls certificate verifiers for Meridian's mutual TLS.
//!
//! Owns `MeshClientVerifier` (server side: a client certificate is mandatory), `MeshServerVerifier`
//! (client side: the server name is ignored, the peer must instead pass the full `verify_leaf` check) and
//! `AdminServerVerifier` (the CLI's HTTPS: host-name verification by webpki, and the certificate must name
//! a coordinator).
//! Both verify handshake signatures with the ring provider's algorithms. They decide *who* a peer is,
//! never *what* it may do: authorization by role belongs to the RPC layer.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use rustls::client::WebPkiServerVerifier;

use crate::error::CertError;
use crate::identity::Role;
use crate::verify::{peer_identity, verify_leaf, CaTrust};

/// Verifies client certificates of the mesh: mandatory, and only ours.
#[derive(Debug)]
pub(crate) struct MeshClientVerifier {
    trust: CaTrust,
    provider: Arc<CryptoProvider>,
}

impl MeshClientVerifier {
    pub(crate) fn new(trust: CaTrust, provider: Arc<CryptoProvider>) -> Self {
        MeshClientVerifier { trust, provider }
    }
}

/// Verifies server certificates of the mesh by identity, not by host name.
#[derive(Debug)]
pub(crate) struct MeshServerVerifier {
    trust: CaTrust,
    provider: Arc<CryptoProvider>,
}

impl MeshServerVerifier {
    pub(crate) fn new(trust: CaTrust, provider: Arc<CryptoProvider>) -> Self {
        MeshServerVerifier { trust, provider }
    }
}

/// Runs `verify_leaf` over a chain rustls hands us in two parts.
fn verify_presented(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &CaTrust,
    now: UnixTime,
    side: &'static str,
) -> Result<(), rustls::Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    match verify_leaf(&chain, trust, now) {
        Ok(identity) => {
            tracing::trace!(peer = %identity, side, "peer certificate accepted");
            Ok(())
        }
        Err(e) => {
            tracing::debug!(error = %e, side, "peer certificate refused");
            Err(to_rustls_error(e))
        }
    }
}

/// Keeps our precise message inside `Other` (which callers can display or downcast to `CertError`).
fn to_rustls_error(e: CertError) -> rustls::Error {
    let certificate_error = match e {
        CertError::Malformed(_) => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(certificate_error)
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.trust.subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_presented(end_entity, intermediates, &self.trust, now, "client")?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_presented(end_entity, intermediates, &self.trust, now, "server")?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        Some(self.trust.subjects())
    }
}

/// Verifies the admin API's server certificate for the CLI: webpki's host-name and chain checks against our
/// CA, then the leaf's single URI SAN must be a coordinator of our trust domain.
#[derive(Debug)]
pub(crate) struct AdminServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    trust_domain: String,
}

impl AdminServerVerifier {
    pub(crate) fn new(webpki: Arc<WebPkiServerVerifier>, trust_domain: String) -> Self {
        AdminServerVerifier {
            webpki,
            trust_domain,
        }
    }
}

/// Accepts only a coordinator identity of `trust_domain` in the leaf `end_entity`.
pub(crate) fn ensure_coordinator(
    end_entity: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<(), CertError> {
    let identity = peer_identity(std::slice::from_ref(end_entity), trust_domain)?;
    if identity.role() == Role::Coordinator {
        Ok(())
    } else {
        Err(CertError::WrongRole {
            identity: identity.uri(),
            expected: "coordinator",
        })
    }
}

impl ServerCertVerifier for AdminServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        ensure_coordinator(end_entity, &self.trust_domain).map_err(|e| {
            tracing::debug!(error = %e, "admin API certificate refused");
            to_rustls_error(e)
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
