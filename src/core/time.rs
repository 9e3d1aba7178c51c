//! Time as the core sees it: a monotonic millisecond count handed in by the caller.
//!
//! The core never reads a clock (see `io::clock`). Every `handle_*`-style entry point takes
//! `now: Instant` as its last argument, so tests and fuzzers drive time explicitly and the
//! FDB can store timestamps in a single `AtomicU64`.

use std::fmt;
use std::time::Duration;

/// Milliseconds since an arbitrary origin (the daemon's start, or zero in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    pub const fn from_secs(s: u64) -> Self {
        Instant(s * 1000)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.as_millis() as u64))
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}
