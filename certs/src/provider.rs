//! The rustls crypto provider Meridian uses everywhere: ring.
//!
//! Owns the single shared provider instance and the idempotent installation of ring as the process
//! default. Every configuration in this crate is built from `ring_provider()` explicitly, so nothing here
//! depends on which provider (if any) the process installed as its default.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The ring provider shared by every configuration and verifier of this crate.
pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Installs ring as the process-wide default rustls provider. Safe to call any number of times; if another
/// provider was installed first it stays (this crate's configurations name ring explicitly anyway).
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed a provider in between, which is just as good.
        let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    }
}
