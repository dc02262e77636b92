//! Key tokens, token hashing, the master keyring and envelope encryption of secrets.
//!
//! Runs where a request is prepared, never inside `apply`: randomness comes in as `&mut impl RngCore`, so
//! tests can seed it. API tokens are `mrd_<key_id>_<secret>` and only their SHA-256 is stored; each project
//! has a data key wrapped (AES-256-GCM) by a master key, and secret values are sealed (AES-256-GCM) under the
//! data key with an AAD binding project, name and version. Never log or return key material or plaintext in
//! errors, and never compare secrets with `==`. Key material and plaintext are wiped from memory when their
//! owner drops them (`zeroize`): master keys, data keys, opened secret values, generated tokens, the
//! keyring file's text.

use std::collections::BTreeMap;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::state::{ResealedVersion, SealedValue, WrappedKey};

use meridian_registry::token::random_chars;
pub use meridian_registry::token::{
    generate_token, hash_token, parse_token, random_id, verify_token, GeneratedToken, ParsedToken,
    TokenError, TOKEN_PREFIX,
};

const NONCE_LEN: usize = 12;

// ---- master keyring ---------------------------------------------------------------------------------------

/// Why a keyring could not be loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("reading master key file {path}: {message}")]
    Io { path: String, message: String },
    #[error("master key entry {entry}: {reason}")]
    Entry { entry: usize, reason: String },
    #[error("no master key given")]
    Empty,
    #[error("master key id {0} appears twice")]
    Duplicate(String),
    #[error(
        "master key file {path} is accessible by group or others (mode {mode:o}); chmod 600 it"
    )]
    LooseMode { path: String, mode: u32 },
}

/// The master keys this coordinator knows; the current one wraps new data keys, the others still unwrap.
///
/// Keeping old and new keys in the ring while [`rewrap_data_key`] runs is what makes rotation work without
/// downtime. The keys are wiped from memory when the ring is dropped.
#[derive(Clone)]
pub struct MasterKeyring {
    current: String,
    keys: BTreeMap<String, [u8; 32]>,
}

impl Drop for MasterKeyring {
    fn drop(&mut self) {
        for key in self.keys.values_mut() {
            key.zeroize();
        }
    }
}

impl std::fmt::Debug for MasterKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeyring")
            .field("current", &self.current)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn valid_master_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn decode_key_b64(b64: &str) -> Option<[u8; 32]> {
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(b64).ok())
        .map(Zeroizing::new)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
}

impl MasterKeyring {
    /// A ring from `(id, key)` entries; the last entry is current.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (String, [u8; 32])>,
    ) -> Result<Self, KeyringError> {
        // Built inside a ring from the start, so keys read before a bad entry are wiped on the way out too.
        let mut ring = Self {
            current: String::new(),
            keys: BTreeMap::new(),
        };
        for (n, (id, key)) in entries.into_iter().enumerate() {
            if !valid_master_key_id(&id) {
                return Err(KeyringError::Entry {
                    entry: n + 1,
                    reason: "id must be 1-64 of [A-Za-z0-9_-]".into(),
                });
            }
            if let Some(mut old) = ring.keys.insert(id.clone(), key) {
                old.zeroize();
                return Err(KeyringError::Duplicate(id));
            }
            ring.current = id;
        }
        if ring.keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(ring)
    }

    /// Parses `id:base64key` lines; `#` starts a comment line, blank lines are skipped, the LAST key is
    /// current. Errors name the line number, never its content.
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let mut entries = Entries(Vec::new());
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            entries.0.push(
                parse_entry(line, None).map_err(|reason| KeyringError::Entry {
                    entry: n + 1,
                    reason,
                })?,
            );
        }
        Self::from_entries(entries.0.iter().cloned())
    }

    /// Loads a key file (see [`MasterKeyring::parse`]). Refuses a file that group or others may access.
    pub fn load_file(path: &Path) -> Result<Self, KeyringError> {
        let io = |e: std::io::Error| KeyringError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(mode) = certs::loose_key_mode(path) {
            return Err(KeyringError::LooseMode {
                path: path.display().to_string(),
                mode,
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        Self::parse(&text)
    }

    /// From an environment variable's value: a bare `base64key` (id `env`), or comma-separated
    /// `id:base64key` pairs, the last current.
    pub fn from_env_value(value: &str) -> Result<Self, KeyringError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut entries = Entries(Vec::new());
        for (n, part) in value.split(',').enumerate() {
            let default_id = (!value.contains(':')).then_some("env");
            entries
                .0
                .push(parse_entry(part.trim(), default_id).map_err(|reason| {
                    KeyringError::Entry {
                        entry: n + 1,
                        reason,
                    }
                })?);
        }
        Self::from_entries(entries.0.iter().cloned())
    }

    /// A new `id:base64key` line for a key file (id `mk_` and 8 random characters).
    pub fn generate_line(rng: &mut impl RngCore) -> Zeroizing<String> {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        let encoded = Zeroizing::new(STANDARD.encode(key.as_ref()));
        Zeroizing::new(format!("mk_{}:{}", random_chars(rng, 8), encoded.as_str()))
    }

    /// The id of the key that wraps new data keys.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Every key id in the ring.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Whether the ring holds key `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    fn current_key(&self) -> &[u8; 32] {
        // Invariant: every constructor sets `current` to the id of an entry it inserted.
        self.keys
            .get(&self.current)
            .expect("current master key is in the ring")
    }
}

/// Keyring entries being read, wiped when dropped (also when a later entry is refused).
struct Entries(Vec<(String, [u8; 32])>);

impl Drop for Entries {
    fn drop(&mut self) {
        for (_, key) in &mut self.0 {
            key.zeroize();
        }
    }
}

fn parse_entry(entry: &str, default_id: Option<&str>) -> Result<(String, [u8; 32]), String> {
    let (id, b64) = match (entry.split_once(':'), default_id) {
        (Some((id, b64)), _) => (id.trim(), b64.trim()),
        (None, Some(id)) => (id, entry),
        (None, None) => return Err("expected id:base64key".into()),
    };
    if !valid_master_key_id(id) {
        return Err("id must be 1-64 of [A-Za-z0-9_-]".into());
    }
    let key = decode_key_b64(b64).ok_or_else(|| "key must be 32 bytes of base64".to_owned())?;
    Ok((id.to_owned(), key))
}

// ---- envelope encryption ----------------------------------------------------------------------------------

/// Why a wrapped key or sealed value could not be opened. Deliberately vague about the cause of a failed
/// decryption (wrong key, tampering and wrong AAD look the same).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("master key {0} is not in the keyring")]
    UnknownMasterKey(String),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("decryption failed")]
    Decrypt,
}

/// A project's data key in the clear. Lives only while a request is prepared; never stored or logged, and
/// wiped from memory when dropped.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// What a secret's ciphertext is bound to: decrypting under another project, name or version fails.
#[derive(Debug, Clone, Copy)]
pub struct SecretAad<'a> {
    pub project_id: &'a str,
    pub name: &'a str,
    pub version: u32,
}

impl SecretAad<'_> {
    /// Length-prefixed, so no two distinct triples encode alike.
    fn to_bytes(self) -> Vec<u8> {
        format!(
            "meridian/secret/v1|{}:{}|{}:{}|{}",
            self.project_id.len(),
            self.project_id,
            self.name.len(),
            self.name,
            self.version
        )
        .into_bytes()
    }
}

fn wrap_aad(master_key_id: &str) -> Vec<u8> {
    format!("meridian/data-key/v1|{master_key_id}").into_bytes()
}

fn seal(
    key: &[u8; 32],
    plaintext: &[u8],
    aad: &[u8],
    rng: &mut impl RngCore,
) -> ([u8; NONCE_LEN], Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(key.into());
    // Invariant: AES-GCM encryption fails only for inputs beyond 64 GiB; callers pass data keys or secret
    // values that the registry caps at 64 KiB.
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encrypts small inputs");
    (nonce, ciphertext)
}

fn open(
    key: &[u8; 32],
    nonce_b64: &str,
    ciphertext_b64: &str,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let nonce = STANDARD
        .decode(nonce_b64)
        .map_err(|_| CryptoError::Malformed("nonce"))?;
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::Malformed("nonce"));
    }
    let ciphertext = STANDARD
        .decode(ciphertext_b64)
        .map_err(|_| CryptoError::Malformed("ciphertext"))?;
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

/// A new random data key.
pub fn new_data_key(rng: &mut impl RngCore) -> DataKey {
    let mut key = DataKey([0u8; 32]);
    rng.fill_bytes(&mut key.0);
    key
}

/// Wraps a data key with the ring's current master key.
pub fn wrap_data_key(ring: &MasterKeyring, key: &DataKey, rng: &mut impl RngCore) -> WrappedKey {
    let id = ring.current_id();
    let (nonce, ciphertext) = seal(ring.current_key(), &key.0, &wrap_aad(id), rng);
    WrappedKey {
        master_key_id: id.to_owned(),
        nonce_b64: STANDARD.encode(nonce),
        ciphertext_b64: STANDARD.encode(ciphertext),
    }
}

/// Unwraps a data key with whichever master key wrapped it.
pub fn unwrap_data_key(ring: &MasterKeyring, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
    let master = ring
        .keys
        .get(&wrapped.master_key_id)
        .ok_or_else(|| CryptoError::UnknownMasterKey(wrapped.master_key_id.clone()))?;
    let plain = open(
        master,
        &wrapped.nonce_b64,
        &wrapped.ciphertext_b64,
        &wrap_aad(&wrapped.master_key_id),
    )?;
    <[u8; 32]>::try_from(plain.as_slice())
        .map(DataKey)
        .map_err(|_| CryptoError::Malformed("data key"))
}

/// Re-wraps a data key under the current master key (the data key itself, and so every secret, is unchanged).
pub fn rewrap_data_key(
    ring: &MasterKeyring,
    wrapped: &WrappedKey,
    rng: &mut impl RngCore,
) -> Result<WrappedKey, CryptoError> {
    let key = unwrap_data_key(ring, wrapped)?;
    Ok(wrap_data_key(ring, &key, rng))
}

/// Re-wraps every project's data key (the payload of `Op::RewrapDataKeys`); fails if any cannot be opened.
pub fn rewrap_all(
    ring: &MasterKeyring,
    keys: &BTreeMap<String, WrappedKey>,
    rng: &mut impl RngCore,
) -> Result<BTreeMap<String, WrappedKey>, CryptoError> {
    keys.iter()
        .map(|(project, wrapped)| Ok((project.clone(), rewrap_data_key(ring, wrapped, rng)?)))
        .collect()
}

/// Every project's secrets (project id → secret name → versions) as stored, for [`reseal_all`].
pub type SealedSecrets = BTreeMap<String, BTreeMap<String, Vec<ResealedVersion>>>;

/// Fresh data keys for every project (wrapped by the current master key) and every secret version sealed
/// again under its project's new key (the payload of `Op::ReplaceDataKeys`). Fails if any old data key or
/// version cannot be opened, so nothing is left behind under an old key.
pub fn reseal_all(
    ring: &MasterKeyring,
    keys: &BTreeMap<String, WrappedKey>,
    secrets: &SealedSecrets,
    rng: &mut impl RngCore,
) -> Result<(BTreeMap<String, WrappedKey>, SealedSecrets), CryptoError> {
    let mut new_keys = BTreeMap::new();
    let mut resealed = BTreeMap::new();
    for (project_id, wrapped) in keys {
        let old = unwrap_data_key(ring, wrapped)?;
        let new = new_data_key(rng);
        new_keys.insert(project_id.clone(), wrap_data_key(ring, &new, rng));
        let Some(by_name) = secrets.get(project_id) else {
            continue;
        };
        let mut project_secrets = BTreeMap::new();
        for (name, versions) in by_name {
            let mut out = Vec::with_capacity(versions.len());
            for v in versions {
                let aad = SecretAad {
                    project_id,
                    name,
                    version: v.version,
                };
                let plain = decrypt_secret(&old, &v.sealed, aad)?;
                out.push(ResealedVersion {
                    version: v.version,
                    sealed: encrypt_secret(&new, &plain, aad, rng),
                });
            }
            project_secrets.insert(name.clone(), out);
        }
        resealed.insert(project_id.clone(), project_secrets);
    }
    Ok((new_keys, resealed))
}

/// Seals a secret value under a project's data key, bound to `aad`.
pub fn encrypt_secret(
    key: &DataKey,
    plaintext: &[u8],
    aad: SecretAad<'_>,
    rng: &mut impl RngCore,
) -> SealedValue {
    let (nonce, ciphertext) = seal(&key.0, plaintext, &aad.to_bytes(), rng);
    SealedValue {
        nonce_b64: STANDARD.encode(nonce),
        ciphertext_b64: STANDARD.encode(ciphertext),
    }
}

/// Opens a sealed secret value; fails on the wrong key, tampering or a different project/name/version. The
/// plaintext is wiped from memory when dropped.
pub fn decrypt_secret(
    key: &DataKey,
    sealed: &SealedValue,
    aad: SecretAad<'_>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    open(
        &key.0,
        &sealed.nonce_b64,
        &sealed.ciphertext_b64,
        &aad.to_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn ring(entries: &[(&str, u8)]) -> MasterKeyring {
        MasterKeyring::from_entries(entries.iter().map(|(id, b)| ((*id).to_owned(), [*b; 32])))
            .expect("ring")
    }

    #[test]
    fn keyring_files_and_env_values_parse() {
        let k1 = STANDARD.encode([1u8; 32]);
        let k2 = STANDARD_NO_PAD.encode([2u8; 32]);
        let text = format!("# master keys\n\nold:{k1}\n  # rotated 2026-01\nnew:{k2}\n");
        let ring = MasterKeyring::parse(&text).expect("parses");
        assert_eq!(ring.current_id(), "new");
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["new", "old"]);

        let env = MasterKeyring::from_env_value(&k1).expect("bare key");
        assert_eq!(env.current_id(), "env");
        let env = MasterKeyring::from_env_value(&format!("a:{k1}, b:{k2}")).expect("pairs");
        assert_eq!((env.current_id(), env.contains("a")), ("b", true));

        assert!(matches!(
            MasterKeyring::parse("# nothing\n"),
            Err(KeyringError::Empty)
        ));
        assert!(matches!(
            MasterKeyring::from_env_value("  "),
            Err(KeyringError::Empty)
        ));
        assert!(matches!(
            MasterKeyring::parse(&format!("a:{k1}\na:{k2}")),
            Err(KeyringError::Duplicate(_))
        ));
        let short = STANDARD.encode([9u8; 16]);
        let err = MasterKeyring::parse(&format!("a:{k1}\nb:{short}")).expect_err("16-byte key");
        assert!(
            matches!(err, KeyringError::Entry { entry: 2, .. }),
            "{err:?}"
        );
        assert!(
            !err.to_string().contains(&short),
            "errors never echo key material"
        );
        assert!(
            matches!(
                MasterKeyring::parse(&k1),
                Err(KeyringError::Entry { entry: 1, .. })
            ),
            "id required in files"
        );
        assert!(MasterKeyring::parse(&format!("bad id:{k1}")).is_err());
        assert!(
            MasterKeyring::from_env_value(&format!("{k1},{k2}")).is_err(),
            "two bare keys share id env"
        );
        assert!(!format!("{ring:?}").contains(&k1));
    }

    #[test]
    fn keyring_loads_from_a_file_and_generated_lines_parse() {
        let mut r = rng(5);
        let (l1, l2) = (
            MasterKeyring::generate_line(&mut r).to_string(),
            MasterKeyring::generate_line(&mut r).to_string(),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.keys");
        std::fs::write(&path, format!("{l1}\n{l2}\n")).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let ring = MasterKeyring::load_file(&path).expect("loads");
        let current = l2.split(':').next().expect("id");
        assert_eq!(ring.current_id(), current);
        assert!(current.starts_with("mk_") && ring.ids().count() == 2);
        assert!(matches!(
            MasterKeyring::load_file(&dir.path().join("missing")),
            Err(KeyringError::Io { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for mode in [0o644, 0o640, 0o604, 0o660] {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .expect("chmod");
                let refused = MasterKeyring::load_file(&path).expect_err("a loose key file");
                assert!(
                    matches!(refused, KeyringError::LooseMode { mode: m, .. } if m == mode),
                    "{mode:o}: {refused}"
                );
            }
        }
    }

    #[test]
    fn data_keys_wrap_and_unwrap() {
        let mut r = rng(6);
        let ring1 = ring(&[("k1", 1)]);
        let key = new_data_key(&mut r);
        let wrapped = wrap_data_key(&ring1, &key, &mut r);
        assert_eq!(wrapped.master_key_id, "k1");
        assert_eq!(unwrap_data_key(&ring1, &wrapped).map(|k| k.0), Ok(key.0));
        assert_ne!(
            wrap_data_key(&ring1, &key, &mut r),
            wrapped,
            "fresh nonce each time"
        );

        // Same id, different key material: refused.
        assert_eq!(
            unwrap_data_key(&ring(&[("k1", 9)]), &wrapped).map(|k| k.0),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            unwrap_data_key(&ring(&[("k2", 1)]), &wrapped).map(|k| k.0),
            Err(CryptoError::UnknownMasterKey("k1".into()))
        );
        // Relabelling the master key id breaks the AAD even when that id holds the same bytes.
        let relabelled = WrappedKey {
            master_key_id: "k2".into(),
            ..wrapped.clone()
        };
        assert!(unwrap_data_key(&ring(&[("k1", 1), ("k2", 1)]), &relabelled).is_err());
        let mut tampered = wrapped.clone();
        let mut ct = STANDARD.decode(&tampered.ciphertext_b64).expect("b64");
        ct[0] ^= 1;
        tampered.ciphertext_b64 = STANDARD.encode(ct);
        assert_eq!(
            unwrap_data_key(&ring1, &tampered).map(|k| k.0),
            Err(CryptoError::Decrypt)
        );
        let bad_nonce = WrappedKey {
            nonce_b64: "AAAA".into(),
            ..wrapped.clone()
        };
        assert_eq!(
            unwrap_data_key(&ring1, &bad_nonce).map(|k| k.0),
            Err(CryptoError::Malformed("nonce"))
        );
        let not_b64 = WrappedKey {
            ciphertext_b64: "***".into(),
            ..wrapped
        };
        assert_eq!(
            unwrap_data_key(&ring1, &not_b64).map(|k| k.0),
            Err(CryptoError::Malformed("ciphertext"))
        );
        assert_eq!(format!("{key:?}"), "DataKey(..)");
    }

    #[test]
    fn secrets_seal_and_open_only_with_their_aad() {
        let mut r = rng(7);
        let key = new_data_key(&mut r);
        let aad = SecretAad {
            project_id: "prj_a",
            name: "s3-key",
            version: 3,
        };
        let sealed = encrypt_secret(&key, b"hunter2", aad, &mut r);
        assert!(!sealed.ciphertext_b64.contains("hunter2"));
        assert_eq!(
            decrypt_secret(&key, &sealed, aad)
                .as_deref()
                .map(Vec::as_slice),
            Ok(&b"hunter2"[..])
        );
        for wrong in [
            SecretAad {
                project_id: "prj_b",
                ..aad
            },
            SecretAad {
                name: "s3-key2",
                ..aad
            },
            SecretAad { version: 2, ..aad },
            // Length prefixes keep shifted boundaries apart.
            SecretAad {
                project_id: "prj_a|6:s3",
                name: "-key",
                ..aad
            },
        ] {
            assert_eq!(
                decrypt_secret(&key, &sealed, wrong),
                Err(CryptoError::Decrypt),
                "{wrong:?}"
            );
        }
        assert_eq!(
            decrypt_secret(&new_data_key(&mut r), &sealed, aad),
            Err(CryptoError::Decrypt)
        );
        let mut ct = STANDARD.decode(&sealed.ciphertext_b64).expect("b64");
        let last = ct.len() - 1;
        ct[last] ^= 0x80;
        let tampered = SealedValue {
            ciphertext_b64: STANDARD.encode(ct),
            ..sealed.clone()
        };
        assert_eq!(
            decrypt_secret(&key, &tampered, aad),
            Err(CryptoError::Decrypt)
        );
        let empty = encrypt_secret(&key, b"", aad, &mut r);
        assert_eq!(
            decrypt_secret(&key, &empty, aad).map(|p| p.to_vec()),
            Ok(Vec::new())
        );
    }

    #[test]
    fn rotation_keeps_secrets_readable() {
        let mut r = rng(8);
        let before = ring(&[("k1", 1)]);
        let data_key = new_data_key(&mut r);
        let wrapped = wrap_data_key(&before, &data_key, &mut r);
        let aad = SecretAad {
            project_id: "prj_a",
            name: "db",
            version: 1,
        };
        let sealed = encrypt_secret(&data_key, b"s3cret", aad, &mut r);

        // During rotation both keys are in the ring; the new one is current.
        let during = ring(&[("k1", 1), ("k2", 2)]);
        assert_eq!(during.current_id(), "k2");
        let keys: BTreeMap<String, WrappedKey> = [("prj_a".to_owned(), wrapped.clone())].into();
        let rewrapped = rewrap_all(&during, &keys, &mut r).expect("rewraps");
        let new_wrapped = &rewrapped["prj_a"];
        assert_eq!(new_wrapped.master_key_id, "k2");

        // Afterwards the old master key can go; the secret still opens.
        let after = ring(&[("k2", 2)]);
        let opened = unwrap_data_key(&after, new_wrapped).expect("unwraps with the new key");
        assert_eq!(
            decrypt_secret(&opened, &sealed, aad)
                .as_deref()
                .map(Vec::as_slice),
            Ok(&b"s3cret"[..])
        );
        assert_eq!(
            unwrap_data_key(&after, &wrapped).map(|k| k.0),
            Err(CryptoError::UnknownMasterKey("k1".into()))
        );
        // A ring missing the old key cannot rewrap.
        assert!(rewrap_all(&after, &keys, &mut r).is_err());
    }

    #[test]
    fn replacing_data_keys_reseals_every_version_under_the_new_key() {
        let mut r = rng(9);
        let before = ring(&[("k1", 1)]);
        let old_key = new_data_key(&mut r);
        let wrapped = wrap_data_key(&before, &old_key, &mut r);
        let aad = |version| SecretAad {
            project_id: "prj_a",
            name: "db",
            version,
        };
        let v1 = encrypt_secret(&old_key, b"one", aad(1), &mut r);
        let v2 = encrypt_secret(&old_key, b"two", aad(2), &mut r);
        let keys: BTreeMap<String, WrappedKey> = [
            ("prj_a".to_owned(), wrapped.clone()),
            (
                "prj_b".to_owned(),
                wrap_data_key(&before, &new_data_key(&mut r), &mut r),
            ),
        ]
        .into();
        let sealed: SealedSecrets = [(
            "prj_a".to_owned(),
            [(
                "db".to_owned(),
                vec![
                    ResealedVersion {
                        version: 1,
                        sealed: v1.clone(),
                    },
                    ResealedVersion {
                        version: 2,
                        sealed: v2,
                    },
                ],
            )]
            .into(),
        )]
        .into();
        let during = ring(&[("k1", 1), ("k2", 2)]);
        let (new_keys, resealed) = reseal_all(&during, &keys, &sealed, &mut r).expect("reseals");
        assert_eq!(new_keys.len(), 2);
        assert_eq!(new_keys["prj_a"].master_key_id, "k2");
        let after = ring(&[("k2", 2)]);
        let new_key = unwrap_data_key(&after, &new_keys["prj_a"]).expect("new key opens");
        assert_ne!(
            new_key.0, old_key.0,
            "a fresh data key, not the old one re-wrapped"
        );
        let versions = &resealed["prj_a"]["db"];
        assert_eq!(versions.len(), 2);
        for (v, plain) in versions.iter().zip([&b"one"[..], &b"two"[..]]) {
            assert_eq!(
                decrypt_secret(&new_key, &v.sealed, aad(v.version))
                    .as_deref()
                    .map(Vec::as_slice),
                Ok(plain)
            );
            assert_eq!(
                decrypt_secret(&old_key, &v.sealed, aad(v.version)).map(|p| p.to_vec()),
                Err(CryptoError::Decrypt),
                "the old data key opens nothing any more"
            );
        }
        assert_ne!(versions[0].sealed, v1);
        // A version that does not open under its project's key stops the whole replacement.
        let mut broken = sealed.clone();
        if let Some(db) = broken.get_mut("prj_a").and_then(|p| p.get_mut("db")) {
            db[1].sealed = v1;
        }
        assert!(reseal_all(&during, &keys, &broken, &mut r).is_err());
    }
}
