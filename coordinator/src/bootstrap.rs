//! First start of a registry: the `default` project and the platform-admin key whose token the operator holds.
//!
//! The token is created (or read back) from a file before the bootstrap command is proposed, so a crash between
//! the two is repaired by the next start with the same token. Only the token's hash enters the registry.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::crypto::{self, MasterKeyring};
use crate::node::{Handle, WriteError};
use crate::state::{Actor, Command, Op, TenancyOp};

/// Why bootstrapping failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("admin token file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("admin token file {path} does not hold a Meridian API key")]
    BadToken { path: String },
    #[error(
        "admin token file {path} is accessible by group or others (mode {mode:o}); chmod 600 it"
    )]
    LooseMode { path: String, mode: u32 },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Refuses an existing admin token file that group or others may access; a missing file is fine (it is
/// created `0600`).
pub fn refuse_loose_token_file(path: &Path) -> Result<(), BootstrapError> {
    match certs::loose_key_mode(path) {
        Some(mode) => Err(BootstrapError::LooseMode {
            path: path.display().to_string(),
            mode,
        }),
        None => Ok(()),
    }
}

/// Reads the admin token from `path`, or creates a new one there (mode 0600) if the file does not exist.
/// A file that group or others may access is refused. The token is wiped from memory when the caller drops
/// it.
pub fn read_or_create_token(path: &Path) -> Result<Zeroizing<String>, BootstrapError> {
    let shown = path.display().to_string();
    refuse_loose_token_file(path)?;
    match std::fs::read_to_string(path).map(Zeroizing::new) {
        Ok(text) => {
            let token = Zeroizing::new(text.trim().to_string());
            crypto::parse_token(&token).map_err(|_| BootstrapError::BadToken { path: shown })?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let generated = crypto::generate_token(&mut OsRng);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| BootstrapError::Io {
                    path: shown.clone(),
                    source,
                })?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| BootstrapError::Io {
                    path: shown.clone(),
                    source,
                })?;
            let line = Zeroizing::new(format!("{}\n", generated.token.as_str()));
            f.write_all(line.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|source| BootstrapError::Io {
                    path: shown,
                    source,
                })?;
            Ok(generated.token.clone())
        }
        Err(source) => Err(BootstrapError::Io {
            path: shown,
            source,
        }),
    }
}

/// Proposes the bootstrap command for `token`; succeeds as well when the registry is already bootstrapped.
pub async fn propose(
    handle: &Handle,
    keyring: &MasterKeyring,
    token: &str,
) -> Result<(), BootstrapError> {
    if handle.read(|s| s.is_bootstrapped()) {
        return Ok(());
    }
    let parsed = crypto::parse_token(token).map_err(|_| BootstrapError::BadToken {
        path: "<token>".into(),
    })?;
    let mut rng = handle.rng();
    let data_key = crypto::new_data_key(&mut rng);
    let op = Op::Tenancy(TenancyOp::Bootstrap {
        default_project_id: crypto::random_id("prj", &mut rng),
        default_data_key: crypto::wrap_data_key(keyring, &data_key, &mut rng),
        admin_principal_id: crypto::random_id("sa", &mut rng),
        admin_principal_name: "platform-admin".into(),
        admin_key_id: parsed.key_id,
        admin_key_hash: crypto::hash_token(token),
        admin_key_last4: token
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect(),
    });
    match handle
        .write(Command::new(handle.now_ms(), Actor::system(), op))
        .await
    {
        Ok(_) => Ok(()),
        Err(_) if handle.read(|s| s.is_bootstrapped()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
