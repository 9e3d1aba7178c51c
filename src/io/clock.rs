//! The one place that reads the system clock.
//!
//! `clippy.toml` forbids `Instant::now` and `SystemTime::now` everywhere else: the core takes
//! `now` as an argument, and the adapters and the shell ask here.
#![allow(clippy::disallowed_methods, reason = "this module is the clock")]

use std::sync::OnceLock;

use crate::core::Instant;

static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();

/// Milliseconds since the process first asked, plus one second so that 0 keeps meaning
/// "never" in timestamps such as a peer's last-seen time.
pub fn now() -> Instant {
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    Instant::from_millis(1000 + origin.elapsed().as_millis() as u64)
}

/// The monotonic clock at full resolution, for deadlines and durations measured in the
/// adapters and the shell (a partial write's grace, a retry budget, how long a reload took).
/// The core never sees it: it takes [`now`]'s millisecond count.
pub fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}

/// Wall-clock time as Unix seconds (for exported timestamps only; never for timeouts).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
