//! The error type of the certificate crate.
//!
//! Owns `CertError`, whose variants say exactly what is wrong with a certificate, key, identity or file.
//! Messages may quote peer-supplied text only after it has been shortened and escaped (`quote`), so a
//! hostile certificate can never flood or forge log lines.

use std::path::PathBuf;

/// What a certificate error says.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Anything not covered by a more precise variant.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a file failed.
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A SPIFFE-style identity URI is malformed or names an unknown role.
    #[error("invalid identity URI {uri}: {reason}")]
    InvalidIdentity { uri: String, reason: String },
    /// A trust domain name is malformed.
    #[error("invalid trust domain {trust_domain}: {reason}")]
    InvalidTrustDomain {
        trust_domain: String,
        reason: String,
    },
    /// A private key file that group or others may read, write or open: refused, never used.
    #[error(
        "private key file {path} is accessible by group or others (mode {mode:o}); chmod 600 it"
    )]
    LooseKeyFile { path: PathBuf, mode: u32 },
    /// PEM text holds no usable certificate or key.
    #[error("malformed PEM: {0}")]
    Pem(String),
    /// DER bytes do not parse as an X.509 certificate (or a required extension is broken).
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// An empty certificate chain was presented.
    #[error("no certificate presented")]
    EmptyChain,
    /// The certificate's validity period ended.
    #[error("certificate expired at {not_after} (now {now})")]
    Expired { not_after: String, now: String },
    /// The certificate's validity period has not started.
    #[error("certificate is not valid before {not_before} (now {now})")]
    NotYetValid { not_before: String, now: String },
    /// A CA certificate was presented where a leaf was expected.
    #[error("certificate is a CA certificate, not a leaf")]
    CaAsLeaf,
    /// A certificate that must be a CA is not one.
    #[error("certificate is not a CA certificate (basic constraints CA flag missing)")]
    NotCa,
    /// A leaf carries the wrong number of URI SANs.
    #[error("certificate has {0} URI SANs, expected exactly one")]
    UriSanCount(usize),
    /// A leaf lacks serverAuth or clientAuth in its extended key usage.
    #[error("certificate's extended key usage lacks {0} (Meridian certificates carry serverAuth and clientAuth)")]
    MissingKeyUsage(&'static str),
    /// The identity (or CA) belongs to another trust domain.
    #[error("trust domain {found} does not match ours ({expected})")]
    WrongTrustDomain { expected: String, found: String },
    /// The chain does not lead to our CA, or the CA rejects the certificate for another reason.
    #[error("certificate is not trusted by the CA of trust domain {trust_domain}: {reason}")]
    Untrusted {
        trust_domain: String,
        reason: String,
    },
    /// A private key does not belong to the certificate it was paired with.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    /// Generating a key or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// The peer's identity has a role that is not accepted here (e.g. an admin API server that is not a
    /// coordinator).
    #[error("certificate names {identity}, which is not a {expected}")]
    WrongRole {
        identity: String,
        expected: &'static str,
    },
    /// Building a rustls configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl CertError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        CertError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Generate(e.to_string())
    }
}

/// Quotes text that may come from a peer: escaped, and cut to a length that keeps messages readable.
pub(crate) fn quote(text: &str) -> String {
    const MAX_CHARS: usize = 160;
    let mut out = String::with_capacity(text.len().min(MAX_CHARS) + 8);
    out.push('"');
    for (i, c) in text.chars().enumerate() {
        if i == MAX_CHARS {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}
