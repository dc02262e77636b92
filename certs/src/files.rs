//! Writing and reading certificate and key files.
//!
//! Owns the atomic write used for every certificate and key: the bytes go to a temporary file in the
//! target's directory, created with its final mode (a key is never readable by others, not even for a
//! moment), flushed to disk, then renamed over the target, so a process that reloads the files sees
//! either the old or the new file, never half of one. Never writes anywhere but the named paths and
//! their temporary siblings.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::CertError;

/// Mode of a private key file.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of a certificate file.
pub(crate) const CERT_MODE: u32 = 0o644;

/// Upper bound on a PEM file we agree to read (certificates and keys are a few KiB).
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// Replaces `path` with `contents`, atomically, the new file carrying `mode` from its creation.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| CertError::Invalid(format!("{} does not name a file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_new_file(&tmp, contents, mode).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| CertError::io(path, e))?;
        sync_dir(&dir);
        Ok(())
    });
    if result.is_err() {
        // Best effort: the temporary file is garbage whatever happened.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut file: File = options.open(path).map_err(|e| CertError::io(path, e))?;
    #[cfg(unix)]
    {
        // The umask may have cleared bits of `mode` at creation; set it exactly (never adds access
        // beyond `mode`, which for keys is owner-only).
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| CertError::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| CertError::io(path, e))
}

/// Flushes a directory entry change (the rename) to disk; failure only weakens crash durability.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Reads a PEM file, refusing absurdly large ones and non-UTF-8 content.
pub(crate) fn read_pem(path: &Path) -> Result<String, CertError> {
    let meta = fs::metadata(path).map_err(|e| CertError::io(path, e))?;
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(CertError::Pem(format!(
            "{} is {} bytes, more than a PEM file of certificates or keys can reasonably be",
            path.display(),
            meta.len()
        )));
    }
    let bytes = fs::read(path).map_err(|e| CertError::io(path, e))?;
    String::from_utf8(bytes)
        .map_err(|_| CertError::Pem(format!("{} is not UTF-8 text", path.display())))
}

/// What identifies one version of a file cheaply: modification time, size and (on Unix) inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    pub(crate) fn of(path: &Path) -> std::io::Result<FileStamp> {
        let meta = fs::metadata(path)?;
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            meta.ino()
        };
        #[cfg(not(unix))]
        let inode = 0;
        Ok(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

/// The permission bits of a private key file that group or others may access (any of `0o077`), or `None`
/// when only its owner may (or it cannot be inspected: the read that follows reports why). Every loader of
/// key material (keys, master keyring, admin token) refuses a file for which this is `Some`.
pub fn loose_key_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn atomic_write_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leaf.key");
        write_atomic(&path, b"first", CERT_MODE).unwrap();
        let before = FileStamp::of(&path).unwrap();
        write_atomic(&path, b"second", KEY_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_ne!(FileStamp::of(&path).unwrap(), before);
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(&dir.path().join("missing/leaf.pem"), b"x", CERT_MODE).unwrap_err();
        assert!(matches!(err, CertError::Io { .. }), "{err}");
    }

    #[test]
    fn read_pem_refuses_huge_and_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        fs::write(&big, vec![b'a'; (MAX_PEM_FILE_BYTES + 1) as usize]).unwrap();
        assert!(matches!(read_pem(&big), Err(CertError::Pem(_))));
        let bin = dir.path().join("bin.pem");
        fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(read_pem(&bin), Err(CertError::Pem(_))));
    }
}
