//! The run's temporary directory (data, certificates, logs of both groups).
//!
//! Shared through `Arc` by the groups that keep files in it, so it is removed only after the last of them is
//! gone — a group's `Drop` stops its processes first, even when aborted load tasks still held it when the run
//! was cancelled. Never removes anything but the directory it created.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

/// A directory removed when the last holder drops it, unless [`WorkDir::keep`] was called.
#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
    keep: AtomicBool,
}

impl WorkDir {
    /// Creates a fresh directory under the system's temporary directory.
    pub(crate) fn create() -> anyhow::Result<Arc<Self>> {
        let dir = tempfile::Builder::new()
            .prefix("meridian-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        Ok(Arc::new(WorkDir {
            path: dir.keep(),
            keep: AtomicBool::new(false),
        }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place when dropped.
    pub(crate) fn keep(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep.load(Ordering::Relaxed) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_lives_until_the_last_holder_drops_it_unless_kept() {
        let dir = WorkDir::create().unwrap();
        let path = dir.path().to_path_buf();
        let other = dir.clone();
        drop(dir);
        assert!(path.is_dir());
        drop(other);
        assert!(!path.exists());

        let kept = WorkDir::create().unwrap();
        let path = kept.path().to_path_buf();
        kept.keep();
        drop(kept);
        assert!(path.is_dir());
        std::fs::remove_dir_all(path).unwrap();
    }
}
