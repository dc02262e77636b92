//! The process's own certificate and key, re-read from disk when they change.
//!
//! Owns `ReloadingCertResolver`, which serves the current pair to rustls as both a server and a client
//! certificate resolver. At most about once per second a handshake (or an `identity()` call) looks at the
//! files' modification time, size and inode; when they changed, the pair is loaded and checked against
//! our CA, and replaces the current one only if it is good. A bad pair is logged and ignored: the last
//! good pair keeps being served, so rotation never needs a restart and never breaks a running process.
//! This module never serves a pair that fails verification against our CA.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::UnixTime;

use crate::error::CertError;
use crate::files::{read_pem, FileStamp};
use crate::identity::Identity;
use crate::inspect::{certs_from_pem, key_from_pem};
use crate::verify::{verify_own_leaf, CaTrust};

/// How often, at most, the files are looked at.
pub(crate) const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A verified certificate chain with its signing key and the identity it carries.
#[derive(Debug)]
pub(crate) struct CurrentPair {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) identity: Identity,
}

/// Where the pair comes from on disk.
#[derive(Debug, Clone)]
pub(crate) struct PairFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

#[derive(Debug)]
struct ResolverState {
    current: Arc<CurrentPair>,
    /// Stamps of the files last loaded or last refused; a change means there is something new to try.
    stamps: Option<(FileStamp, FileStamp)>,
    next_check: Instant,
}

/// Serves our certificate to rustls, reloading it from `files` when they change.
#[derive(Debug)]
pub(crate) struct ReloadingCertResolver {
    trust: CaTrust,
    provider: Arc<CryptoProvider>,
    files: Option<PairFiles>,
    state: Mutex<ResolverState>,
}

impl ReloadingCertResolver {
    /// A resolver that always serves this pair.
    pub(crate) fn fixed(trust: CaTrust, provider: Arc<CryptoProvider>, pair: CurrentPair) -> Self {
        ReloadingCertResolver {
            trust,
            provider,
            files: None,
            state: Mutex::new(ResolverState {
                current: Arc::new(pair),
                stamps: None,
                next_check: Instant::now(),
            }),
        }
    }

    /// Loads the pair from `files` (failing if it is unusable) and keeps watching them.
    pub(crate) fn watching(
        trust: CaTrust,
        provider: Arc<CryptoProvider>,
        files: PairFiles,
    ) -> Result<Self, CertError> {
        let stamps = stamps_of(&files).ok();
        let pair = load_files(&files, &trust, &provider, true)?;
        Ok(ReloadingCertResolver {
            trust,
            provider,
            state: Mutex::new(ResolverState {
                current: Arc::new(pair),
                stamps,
                next_check: Instant::now() + RELOAD_CHECK_INTERVAL,
            }),
            files: Some(files),
        })
    }

    /// The pair to serve now, after reloading the files if they changed and a check is due.
    pub(crate) fn current(&self) -> Arc<CurrentPair> {
        self.current_at(Instant::now())
    }

    /// [`current`](Self::current) as of `now` (the clock is the caller's, so tests can stand before or at
    /// the next check instead of racing it).
    fn current_at(&self, now: Instant) -> Arc<CurrentPair> {
        let mut state = self.lock();
        if let Some(files) = &self.files {
            if now >= state.next_check {
                state.next_check = now + RELOAD_CHECK_INTERVAL;
                self.reload_if_changed(files, &mut state);
            }
        }
        state.current.clone()
    }

    fn reload_if_changed(&self, files: &PairFiles, state: &mut ResolverState) {
        let stamps = match stamps_of(files) {
            Ok(stamps) => stamps,
            Err(e) => {
                // Between a delete and a re-create, or a permission problem: keep serving what we have.
                if state.stamps.take().is_some() {
                    tracing::warn!(error = %e, "certificate files unreadable; keeping the current certificate");
                }
                return;
            }
        };
        if state.stamps.as_ref() == Some(&stamps) {
            return;
        }
        state.stamps = Some(stamps);
        match load_files(files, &self.trust, &self.provider, false) {
            Ok(pair) => {
                if pair.identity != state.current.identity {
                    tracing::warn!(
                        old = %state.current.identity,
                        new = %pair.identity,
                        "reloaded certificate carries a different identity"
                    );
                }
                tracing::info!(
                    identity = %pair.identity,
                    cert = %files.cert.display(),
                    "reloaded certificate and key"
                );
                state.current = Arc::new(pair);
            }
            Err(e) => tracing::warn!(
                error = %e,
                cert = %files.cert.display(),
                key = %files.key.display(),
                "new certificate files are not usable; keeping the last good certificate"
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ResolverState> {
        // The state is replaced whole under the lock, so a panic elsewhere cannot leave it half-updated.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified.clone())
    }
}

impl ResolvesClientCert for ReloadingCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn stamps_of(files: &PairFiles) -> std::io::Result<(FileStamp, FileStamp)> {
    Ok((FileStamp::of(&files.cert)?, FileStamp::of(&files.key)?))
}

fn load_files(
    files: &PairFiles,
    trust: &CaTrust,
    provider: &CryptoProvider,
    at_start: bool,
) -> Result<CurrentPair, CertError> {
    crate::authority::refuse_if_readable_by_others(&files.key)?;
    let cert_pem = read_pem(&files.cert)?;
    let key_pem = read_pem(&files.key)?;
    load_pair(&cert_pem, &key_pem, trust, provider, at_start)
}

/// Builds a pair from PEM text and checks it: the key matches, and the chain passes `verify_leaf`
/// (at start-up, a certificate outside its validity period is accepted with a warning).
pub(crate) fn load_pair(
    cert_pem: &str,
    key_pem: &str,
    trust: &CaTrust,
    provider: &CryptoProvider,
    at_start: bool,
) -> Result<CurrentPair, CertError> {
    let chain = certs_from_pem(cert_pem)?;
    let key = key_from_pem(key_pem)?;
    let (identity, time_problem) = verify_own_leaf(&chain, trust, UnixTime::now())?;
    if let Some(problem) = time_problem {
        if !at_start {
            return Err(problem);
        }
        tracing::warn!(identity = %identity, error = %problem, "own certificate is not valid now; peers will refuse it until it is replaced");
    }
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch,
        other => CertError::Tls(format!("unusable private key: {other}")),
    })?;
    Ok(CurrentPair {
        certified: Arc::new(certified),
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::{CertificateAuthority, IssuedLeaf, LeafRequest, DEFAULT_LEAF_LIFETIME};
    use crate::provider::ring_provider;
    use std::time::SystemTime;

    struct Fixture {
        _dir: tempfile::TempDir,
        ca: CertificateAuthority,
        files: PairFiles,
        resolver: ReloadingCertResolver,
        first: IssuedLeaf,
    }

    impl ReloadingCertResolver {
        /// Looks at the files now, regardless of when they were last looked at.
        fn check_now(&self) -> Arc<CurrentPair> {
            self.lock().next_check = Instant::now();
            self.current()
        }
    }

    fn id(name: &str) -> Identity {
        Identity::coordinator("example.org", name).unwrap()
    }

    fn issue(ca: &CertificateAuthority, name: &str) -> IssuedLeaf {
        ca.issue(&LeafRequest::new(id(name), DEFAULT_LEAF_LIFETIME))
            .unwrap()
    }

    fn served(pair: &CurrentPair) -> Vec<u8> {
        pair.certified.cert[0].to_vec()
    }

    fn der(leaf: &IssuedLeaf) -> Vec<u8> {
        leaf.cert_der().unwrap().to_vec()
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("example.org", Duration::from_secs(86400)).unwrap();
        let files = PairFiles {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("c.key"),
        };
        let first = issue(&ca, "c1");
        first.write(&files.cert, &files.key).unwrap();
        let resolver =
            ReloadingCertResolver::watching(ca.trust().unwrap(), ring_provider(), files.clone())
                .unwrap();
        Fixture {
            _dir: dir,
            ca,
            files,
            resolver,
            first,
        }
    }

    #[test]
    fn changes_are_looked_at_no_more_than_once_per_interval() {
        let f = fixture();
        issue(&f.ca, "c2")
            .write(&f.files.cert, &f.files.key)
            .unwrap();
        let due = f.resolver.lock().next_check;
        let just_before = due
            .checked_sub(Duration::from_millis(1))
            .expect("an instant before the check");
        assert_eq!(
            served(&f.resolver.current_at(just_before)),
            der(&f.first),
            "checked before the interval passed"
        );
        assert_eq!(f.resolver.current_at(due).identity, id("c2"));
        // The next look is a whole interval later: a change right after is not seen before it.
        issue(&f.ca, "c3")
            .write(&f.files.cert, &f.files.key)
            .unwrap();
        assert_eq!(f.resolver.current_at(due).identity, id("c2"));
        assert_eq!(
            f.resolver.current_at(due + RELOAD_CHECK_INTERVAL).identity,
            id("c3")
        );
    }

    #[test]
    fn bad_files_keep_the_last_good_pair() {
        let f = fixture();
        // Garbage certificate.
        crate::files::write_atomic(&f.files.cert, b"not a certificate", 0o644).unwrap();
        assert_eq!(served(&f.resolver.check_now()), der(&f.first));

        // A certificate from another CA.
        let stranger =
            CertificateAuthority::generate("example.org", Duration::from_secs(86400)).unwrap();
        issue(&stranger, "c1")
            .write(&f.files.cert, &f.files.key)
            .unwrap();
        assert_eq!(served(&f.resolver.check_now()), der(&f.first));

        // An expired certificate of our own CA.
        let hour = Duration::from_secs(3600);
        f.ca.issue(&LeafRequest::new(id("c1"), hour).valid_from(SystemTime::now() - 2 * hour))
            .unwrap()
            .write(&f.files.cert, &f.files.key)
            .unwrap();
        assert_eq!(served(&f.resolver.check_now()), der(&f.first));

        // Files gone altogether.
        std::fs::remove_file(&f.files.cert).unwrap();
        assert_eq!(served(&f.resolver.check_now()), der(&f.first));

        // A good pair afterwards is picked up.
        let good = issue(&f.ca, "c1");
        good.write(&f.files.cert, &f.files.key).unwrap();
        assert_eq!(served(&f.resolver.check_now()), der(&good));
    }

    #[test]
    fn half_rotated_pair_waits_for_the_matching_key() {
        let f = fixture();
        let next = issue(&f.ca, "c1");
        // The certificate lands first, next to the old key: refused, the old pair stays.
        crate::files::write_atomic(&f.files.cert, next.cert_pem.as_bytes(), 0o644).unwrap();
        assert_eq!(served(&f.resolver.check_now()), der(&f.first));
        // Then the key: now the pair matches and is served.
        crate::files::write_atomic(&f.files.key, next.key_pem.as_bytes(), 0o600).unwrap();
        assert_eq!(served(&f.resolver.check_now()), der(&next));
    }

    #[test]
    fn a_fixed_pair_never_touches_the_disk() {
        let ca = CertificateAuthority::generate("example.org", Duration::from_secs(86400)).unwrap();
        let trust = ca.trust().unwrap();
        let leaf = issue(&ca, "c1");
        let pair = load_pair(
            &leaf.cert_pem,
            &leaf.key_pem,
            &trust,
            &ring_provider(),
            true,
        )
        .unwrap();
        let resolver = ReloadingCertResolver::fixed(trust.clone(), ring_provider(), pair);
        assert_eq!(resolver.check_now().identity, id("c1"));
        let other = issue(&ca, "c2");
        assert!(matches!(
            load_pair(
                &leaf.cert_pem,
                &other.key_pem,
                &trust,
                &ring_provider(),
                true
            ),
            Err(CertError::KeyMismatch)
        ));
    }
}
