//! The master keyring handed to a process through `MERIDIAN_MASTER_KEY`: taken out of the process
//! environment once, at the very start of `main`, and kept (wiped on drop) until the coordinator reads it.
//!
//! Owns the removal: the variable is deleted from the environment *and* its value is overwritten where the
//! kernel shows it (`/proc/<pid>/environ` reads the process's original environment block, which `unsetenv`
//! alone leaves intact), so neither a child process nor anyone reading `/proc` finds the key; only the empty
//! `MERIDIAN_MASTER_KEY=` remains visible there. Must never log the value and must run before any other
//! thread exists.

use std::ffi::CString;
use std::sync::{Mutex, PoisonError};

use zeroize::Zeroizing;

/// The environment variable holding the master keyring (`base64key`, or `id:base64key,...`).
pub const MASTER_KEY_ENV: &str = "MERIDIAN_MASTER_KEY";

/// What [`take_from_environment`] found; read (and emptied) by [`master_key`].
static TAKEN: Mutex<Option<Zeroizing<String>>> = Mutex::new(None);

/// Moves `MERIDIAN_MASTER_KEY` out of the process environment into this module.
///
/// Call it first thing in `main`, before the async runtime or anything else starts a thread:
/// `std::env::remove_var` and the in-place overwrite of the environment block are only sound while no
/// other thread can read the environment (glibc's `getenv` takes no lock against `unsetenv`). At that
/// point the process has exactly one thread, so nothing can race with it.
pub fn take_from_environment() {
    let Some(value) = std::env::var_os(MASTER_KEY_ENV) else {
        return;
    };
    let value = Zeroizing::new(value.to_string_lossy().into_owned());
    wipe_environment_entry(MASTER_KEY_ENV);
    // SAFETY (and soundness of `remove_var` generally): called from `main` before any thread is spawned;
    // see the function's documentation.
    std::env::remove_var(MASTER_KEY_ENV);
    *TAKEN.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
}

/// The master keyring taken from the environment at start-up, if there was one. Taken once: a second call
/// answers `None`.
pub fn master_key() -> Option<Zeroizing<String>> {
    TAKEN.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Puts a value back for [`master_key`] (e.g. `meridian dev` reads it once to choose its keyring and hands
/// it on to the coordinator it starts).
pub fn restore(value: Zeroizing<String>) {
    *TAKEN.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
}

/// Overwrites the value of `NAME=value` with zero bytes where the C library keeps it. For the environment
/// the process started with, that is the block the kernel reports in `/proc/<pid>/environ`.
fn wipe_environment_entry(name: &str) {
    let Ok(c_name) = CString::new(name) else {
        return;
    };
    // SAFETY: single-threaded (see `take_from_environment`), so no one else reads or changes the
    // environment meanwhile. `getenv` returns a pointer to the value inside the entry `NAME=value` of
    // `environ`, NUL-terminated, in writable memory owned by the process (the initial stack for the
    // environment it started with, the heap for one set later). We overwrite exactly the `strlen` bytes of
    // that value and nothing else; the entry stays a valid (empty) C string.
    unsafe {
        let value = libc::getenv(c_name.as_ptr());
        if value.is_null() {
            return;
        }
        let len = libc::strlen(value);
        std::ptr::write_bytes(value, 0, len);
    }
}
