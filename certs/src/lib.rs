//! Meridian's certificate authority, SPIFFE-style identities and rustls configurations.
//!
//! Owns the trust domain's CA and leaf issuance (`CertificateAuthority`), identities (`Identity`, `Role`),
//! certificate inspection (`inspect_pem`), peer verification (`verify_leaf`, `peer_identity`) and the
//! TLS configurations every listener and client uses (`TlsIdentity`, `https_client_config`). An identity
//! *is* the certificate's single URI SAN; a peer is accepted only when its chain leads to our CA, it is
//! not a CA, it is within its validity period and its one URI SAN is an identity of our trust domain.
//! This crate knows nothing about Raft, RPCs or the registry, and never decides what a peer may do.

mod authority;
mod error;
mod files;
mod identity;
mod inspect;
mod provider;
mod reload;
mod tls;
mod verifier;
mod verify;

pub use authority::{
    CertificateAuthority, IssuedLeaf, LeafRequest, DEFAULT_CA_LIFETIME, DEFAULT_LEAF_LIFETIME,
    DEFAULT_MAX_LEAF_LIFETIME, LEAF_LIFETIME_HARD_CAP,
};
pub use error::CertError;
pub use files::loose_key_mode;
pub use identity::{validate_trust_domain, Identity, IdentityKind, Role};
pub use inspect::{inspect_der, inspect_pem, CertInfo};
pub use provider::install_crypto_provider;
pub use tls::{https_client_config, TlsIdentity, TlsPaths};
pub use verify::{peer_identity, verify_leaf, CaTrust};

pub use rustls_pki_types::{CertificateDer, UnixTime};
