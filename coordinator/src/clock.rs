//! The coordinator's clock: the one place that reads the time.
//!
//! Commands are stamped with [`Clock::unix_ms`] before they are proposed (the state machine never reads a
//! clock), and silences and intervals are measured with [`Clock::mono_ms`], which never jumps. Production
//! uses [`SystemClock`]; tests give a coordinator a [`ManualClock`] and move time themselves, so a condition
//! like "silent for the TTL" holds exactly when they say so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use meridian_registry::controllers::Now;

/// A source of time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock Unix milliseconds.
    fn unix_ms(&self) -> u64;
    /// Milliseconds since an arbitrary fixed origin, never going backwards.
    fn mono_ms(&self) -> u64;
    /// Both, read together.
    fn now(&self) -> Now {
        Now {
            unix_ms: self.unix_ms(),
            mono_ms: self.mono_ms(),
        }
    }
}

/// The operating system's clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The system clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock::new())
}

/// A clock that moves only when told to: both readings advance together.
#[derive(Debug)]
pub struct ManualClock {
    unix_ms: AtomicU64,
    mono_ms: AtomicU64,
}

impl ManualClock {
    /// Starts at `unix_ms` on the wall clock and 0 on the monotonic one.
    pub fn new(unix_ms: u64) -> Self {
        Self {
            unix_ms: AtomicU64::new(unix_ms),
            mono_ms: AtomicU64::new(0),
        }
    }

    /// Moves both clocks forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.unix_ms.fetch_add(ms, Ordering::SeqCst);
        self.mono_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the wall clock alone (it may go backwards, as NTP can make it); the monotonic clock stays.
    pub fn set_unix_ms(&self, unix_ms: u64) {
        self.unix_ms.store(unix_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix_ms(&self) -> u64 {
        self.unix_ms.load(Ordering::SeqCst)
    }

    fn mono_ms(&self) -> u64 {
        self.mono_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(
            clock.now(),
            Now {
                unix_ms: 1_000,
                mono_ms: 0
            }
        );
        clock.advance_ms(250);
        assert_eq!(
            clock.now(),
            Now {
                unix_ms: 1_250,
                mono_ms: 250
            }
        );
        clock.set_unix_ms(500);
        assert_eq!(
            clock.now(),
            Now {
                unix_ms: 500,
                mono_ms: 250
            }
        );
    }

    #[test]
    fn the_system_clock_is_past_2020_and_monotonic() {
        let clock = SystemClock::new();
        assert!(clock.unix_ms() > 1_577_836_800_000);
        let a = clock.mono_ms();
        let b = clock.mono_ms();
        assert!(b >= a);
    }
}
