//! API tokens and object ids: how they are generated, parsed and checked.
//!
//! Pure apart from the randomness handed in as `&mut impl RngCore`, so tests seed it. A token is
//! `mrd_<key_id>_<secret>`; the registry stores only its SHA-256, and a presented token is compared with
//! that hash in constant time. A generated token is wiped from memory when its owner drops it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Every API token starts with this.
pub const TOKEN_PREFIX: &str = "mrd_";
/// Length of a generated key id.
const KEY_ID_LEN: usize = 12;
/// Random bytes in a token's secret part.
const TOKEN_SECRET_BYTES: usize = 32;
/// base64url (no padding) length of the secret part.
const TOKEN_SECRET_B64_LEN: usize = 43;
/// Longest string `parse_token` looks at.
const MAX_TOKEN_LEN: usize = 128;
const ID_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

// ---- ids and tokens ---------------------------------------------------------------------------------------

/// `n` random characters of `[a-z0-9]`, without modulo bias.
pub fn random_chars(rng: &mut impl RngCore, n: usize) -> String {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 32];
    while out.len() < n {
        rng.fill_bytes(&mut buf);
        for &b in &buf {
            // 252 = 7 * 36: drop the last four byte values so every character is equally likely.
            if b < 252 && out.len() < n {
                out.push(char::from(ID_ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    out
}

/// A new object id: `<prefix>_` and 16 random characters of `[a-z0-9]`, e.g. `prj_3kq9x0c2m4v7b1zd`.
pub fn random_id(prefix: &str, rng: &mut impl RngCore) -> String {
    format!("{prefix}_{}", random_chars(rng, 16))
}

/// A freshly generated API token. The token is shown to its owner once and never stored; it is wiped from
/// memory when this is dropped.
#[derive(Clone)]
pub struct GeneratedToken {
    /// The full bearer token, `mrd_<key_id>_<secret>`.
    pub token: Zeroizing<String>,
    pub key_id: String,
    /// Hex SHA-256 of `token`: what the registry stores.
    pub hash: String,
    /// The token's last four characters.
    pub last4: String,
}

impl std::fmt::Debug for GeneratedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedToken")
            .field("key_id", &self.key_id)
            .field("last4", &self.last4)
            .finish_non_exhaustive()
    }
}

/// Generates a token with a new key id and 32 random bytes of secret.
pub fn generate_token(rng: &mut impl RngCore) -> GeneratedToken {
    let key_id = random_chars(rng, KEY_ID_LEN);
    let mut secret = Zeroizing::new([0u8; TOKEN_SECRET_BYTES]);
    rng.fill_bytes(secret.as_mut());
    let encoded = Zeroizing::new(URL_SAFE_NO_PAD.encode(secret.as_ref()));
    let token = Zeroizing::new(format!("{TOKEN_PREFIX}{key_id}_{}", encoded.as_str()));
    let hash = hash_token(&token);
    let last4 = token[token.len() - 4..].to_owned();
    GeneratedToken {
        token,
        key_id,
        hash,
        last4,
    }
}

/// A token whose shape is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    pub key_id: String,
}

/// Why a string is not a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token too long")]
    TooLong,
    #[error("token does not start with {TOKEN_PREFIX}")]
    Prefix,
    #[error("token has no key id")]
    KeyId,
    #[error("token secret is malformed")]
    Secret,
}

/// Parses `mrd_<key_id>_<secret>`: key id of 1–32 `[A-Za-z0-9]`, secret exactly 32 bytes of canonical
/// base64url without padding. Rejects anything else without panicking.
pub fn parse_token(token: &str) -> Result<ParsedToken, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let rest = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Prefix)?;
    let (key_id, secret) = rest.split_once('_').ok_or(TokenError::KeyId)?;
    if key_id.is_empty() || key_id.len() > 32 || !key_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(TokenError::KeyId);
    }
    if secret.len() != TOKEN_SECRET_B64_LEN {
        return Err(TokenError::Secret);
    }
    match URL_SAFE_NO_PAD.decode(secret).map(Zeroizing::new) {
        Ok(bytes) if bytes.len() == TOKEN_SECRET_BYTES => Ok(ParsedToken {
            key_id: key_id.to_owned(),
        }),
        _ => Err(TokenError::Secret),
    }
}

/// Hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` hashes to `stored_hash` (hex SHA-256), compared in constant time.
pub fn verify_token(token: &str, stored_hash: &str) -> bool {
    let mut stored = [0u8; 32];
    if hex::decode_to_slice(stored_hash, &mut stored).is_err() {
        return false;
    }
    let actual: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    actual.ct_eq(&stored).into()
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    #[test]
    fn tokens_round_trip_and_verify() {
        let mut r = rng(1);
        let t = generate_token(&mut r);
        assert!(t.token.starts_with(&format!("mrd_{}_", t.key_id)));
        assert_eq!(t.key_id.len(), KEY_ID_LEN);
        assert_eq!(
            t.token.len(),
            TOKEN_PREFIX.len() + KEY_ID_LEN + 1 + TOKEN_SECRET_B64_LEN
        );
        assert!(t.token.ends_with(&t.last4) && t.last4.len() == 4);
        assert_eq!(
            parse_token(&t.token),
            Ok(ParsedToken {
                key_id: t.key_id.clone()
            })
        );
        assert_eq!(t.hash, hash_token(&t.token));
        assert_eq!(t.hash.len(), 64);
        assert!(verify_token(&t.token, &t.hash));
        assert!(!verify_token(&t.token, &hash_token("other")));
        assert!(!verify_token(&t.token, "zz"));
        assert!(!verify_token(&t.token, ""));
        let mut flipped = t.token.as_bytes().to_vec();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(!verify_token(
            &String::from_utf8(flipped).expect("ascii"),
            &t.hash
        ));
        // Seeded generation is reproducible, fresh generation is not.
        assert_eq!(generate_token(&mut rng(1)).token, t.token);
        assert_ne!(generate_token(&mut r).token, t.token);
        // Debug output never shows the token.
        assert!(!format!("{t:?}").contains(t.token.as_str()));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let good = generate_token(&mut rng(2)).token.to_string();
        let secret = good
            .rsplit_once('_')
            .map(|(_, s)| s.to_owned())
            .unwrap_or_default();
        let cases = [
            String::new(),
            "mrd_".into(),
            "mrd__".into(),
            format!("mrd__{secret}"),
            format!("mrd_abc{secret}"),
            format!("mrx_abc_{secret}"),
            format!("MRD_abc_{secret}"),
            format!("mrd_ab-c_{secret}"),
            format!("mrd_abc_{}", &secret[1..]),
            format!("mrd_abc_{secret}A"),
            format!("mrd_abc_{}=", &secret[..42]),
            format!(
                "mrd_abc_{}",
                secret.replace(|c: char| c.is_ascii_alphanumeric(), "+")
            ),
            format!("mrd_{}_{secret}", "a".repeat(33)),
            format!("mrd_é_{secret}"),
            format!(" {good}"),
            format!("{good}\n"),
            "x".repeat(10_000),
        ];
        for c in &cases {
            assert!(parse_token(c).is_err(), "accepted {c:?}");
        }
        // 43 base64 characters carry 258 bits for 256: the last character's two low bits must be zero, so
        // one secret has exactly one spelling.
        assert!(parse_token(&format!("mrd_abc_{}A", &secret[..42])).is_ok());
        assert_eq!(
            parse_token(&format!("mrd_abc_{}B", &secret[..42])),
            Err(TokenError::Secret)
        );
    }

    #[test]
    fn token_parsing_survives_random_mutation() {
        let mut r = rng(3);
        let good = generate_token(&mut r).token.to_string();
        let alphabet: Vec<char> = "mrd_-=+/AZaz09é\u{0}\u{202e} ".chars().collect();
        for _ in 0..20_000 {
            let mut chars: Vec<char> = good.chars().collect();
            for _ in 0..r.gen_range(1..4) {
                match r.gen_range(0..4) {
                    0 if !chars.is_empty() => {
                        let i = r.gen_range(0..chars.len());
                        chars.remove(i);
                    }
                    1 => {
                        let i = r.gen_range(0..=chars.len());
                        chars.insert(i, alphabet[r.gen_range(0..alphabet.len())]);
                    }
                    2 if !chars.is_empty() => {
                        let i = r.gen_range(0..chars.len());
                        chars[i] = alphabet[r.gen_range(0..alphabet.len())];
                    }
                    _ => {
                        let cut = r.gen_range(0..=chars.len());
                        chars.truncate(cut);
                    }
                }
            }
            let s: String = chars.into_iter().collect();
            if let Ok(p) = parse_token(&s) {
                // Whatever is accepted has the exact shape.
                assert!(
                    s.starts_with(TOKEN_PREFIX)
                        && p.key_id.bytes().all(|b| b.is_ascii_alphanumeric())
                );
                assert_eq!(
                    s.len(),
                    TOKEN_PREFIX.len() + p.key_id.len() + 1 + TOKEN_SECRET_B64_LEN
                );
                assert_eq!(verify_token(&s, &hash_token(&good)), s == good);
            }
        }
        for _ in 0..5_000 {
            let bytes: Vec<u8> = (0..r.gen_range(0..80)).map(|_| r.gen()).collect();
            let _ = parse_token(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn random_ids_have_the_expected_shape() {
        let mut r = rng(4);
        let id = random_id("prj", &mut r);
        assert_eq!(id.len(), 4 + 16);
        assert!(id.starts_with("prj_") && id[4..].bytes().all(|b| ID_ALPHABET.contains(&b)));
        assert_ne!(random_id("prj", &mut r), id);
    }
}
