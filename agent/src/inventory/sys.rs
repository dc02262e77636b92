//! The inventory's calls into libc (outside NVML): file-system space and killing a process group.
//!
//! Owns every `unsafe` block of the inventory except NVML's (which lives in `nvml.rs`). It must stay small,
//! take only safe Rust values, and never hand raw pointers out.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Total and available bytes of the file system holding `path`.
pub(crate) struct DiskSpace {
    pub(crate) total_bytes: u64,
    pub(crate) available_bytes: u64,
}

/// `statvfs(path)`.
pub(crate) fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call, and `stat` points to writable
    // memory of the size of `struct statvfs`, which the call fills completely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole structure.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between targets (u32 on some 32-bit ones), hence the conversions.
    #[allow(clippy::useless_conversion)]
    let (fragment, blocks, available) = (
        u64::from(stat.f_frsize),
        u64::from(stat.f_blocks),
        u64::from(stat.f_bavail),
    );
    Ok(DiskSpace {
        total_bytes: blocks.saturating_mul(fragment),
        available_bytes: available.saturating_mul(fragment),
    })
}

/// Sends SIGKILL to the process group `pgid` (a child started as the leader of its own group).
pub(crate) fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process group id"))?;
    // SAFETY: killpg takes plain integers and has no memory effects; `pgid > 1` keeps it from signalling
    // every process we may signal (0 would mean our own group, and 1 is init's).
    let rc = unsafe { libc::killpg(pgid, libc::SIGKILL) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
