//! Storm control: a ceiling on the flooded (broadcast, multicast, unknown-unicast) frames per
//! second that each port of a network may inject.
//!
//! A broadcast storm (a loop through a bridge outside the daemon, a misbehaving VM) is
//! replicated by head-end replication to every peer and by every peer to its local ports; the
//! storm limit bounds what one port can cost everybody else. Each ingress (local port slot or
//! peer) has its own bucket, so a storming port spends its own budget and ARP from the others
//! still gets through.
//!
//! The bucket is GCRA (the "virtual scheduling" form of a token bucket): one `AtomicU64` per
//! port holding the theoretical arrival time (TAT) in nanoseconds, updated with a CAS loop, so
//! the data-path threads share it without a lock. With rate `r` frames/s the emission interval
//! is `T = 1/r`; a frame arriving at `t` conforms if `TAT - t <= burst_tolerance` where the
//! burst is one second's worth of frames (`r`), and then `TAT = max(TAT, t) + T`. Time comes
//! from the caller (milliseconds, see [`Instant`]); a thread whose clock reading is slightly
//! behind another's is harmless.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::ports::MAX_PORTS;
use super::time::Instant;
use super::Port;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Per-ingress token buckets of one network.
#[derive(Debug)]
pub struct StormControl {
    /// Nanoseconds between two conforming frames at the steady rate.
    interval_ns: u64,
    /// How far ahead of now the TAT may run: the burst allowed, one second of the rate.
    tolerance_ns: u64,
    /// TAT per ingress: local port slots first, then peers.
    tat: Box<[AtomicU64]>,
}

impl StormControl {
    /// Buckets for `peers` peers and every local port slot, `pps` flooded frames per second
    /// each (at least 1).
    pub fn new(pps: u32, peers: usize) -> Self {
        let pps = u64::from(pps.max(1));
        let interval_ns = NS_PER_SEC / pps;
        StormControl {
            interval_ns,
            tolerance_ns: interval_ns * (pps - 1),
            tat: (0..MAX_PORTS + peers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, ingress: Port) -> Option<&AtomicU64> {
        match ingress {
            Port::Local(l) => self.tat.get(l.slot()),
            Port::Peer(p) => self.tat.get(MAX_PORTS + usize::from(p.0)),
        }
    }

    /// Whether one more flooded frame from `ingress` at `now` is within the limit (and if so,
    /// it is charged to the bucket).
    pub fn allow(&self, ingress: Port, now: Instant) -> bool {
        let Some(tat) = self.slot(ingress) else { return false };
        let t = now.as_millis().saturating_mul(1_000_000);
        let mut cur = tat.load(Relaxed);
        loop {
            let base = cur.max(t);
            if base - t > self.tolerance_ns {
                return false;
            }
            match tat.compare_exchange_weak(cur, base + self.interval_ns, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{LocalPort, PeerIdx};

    const L0: Port = Port::Local(LocalPort(0));
    const L1: Port = Port::Local(LocalPort(1));
    const P0: Port = Port::Peer(PeerIdx(0));

    fn count(s: &StormControl, p: Port, frames: u32, now: Instant) -> u32 {
        (0..frames).filter(|_| s.allow(p, now)).count() as u32
    }

    #[test]
    fn a_burst_of_one_second_passes_then_the_rate_holds() {
        let s = StormControl::new(100, 1);
        let t0 = Instant::from_secs(10);
        assert_eq!(count(&s, L0, 1000, t0), 100, "burst is one second's worth");
        assert_eq!(count(&s, L0, 1000, Instant::from_millis(10_500)), 50, "half a second refills half");
        // sustained: 10 s of a storm at 10x the limit lets 10 s worth through, plus the half
        // second of burst credit left at 11 s
        let mut passed = 0;
        for ms in (11_000..21_000).step_by(10) {
            passed += count(&s, L0, 10, Instant::from_millis(ms));
        }
        assert!((1040..=1060).contains(&passed), "{passed} frames in 10 s at 100 pps");
    }

    #[test]
    fn each_port_has_its_own_budget() {
        let s = StormControl::new(10, 2);
        let t = Instant::from_secs(1);
        assert_eq!(count(&s, L0, 100, t), 10);
        assert_eq!(count(&s, L1, 100, t), 10, "a storming port does not starve another port");
        assert_eq!(count(&s, P0, 100, t), 10);
        assert_eq!(count(&s, Port::Peer(PeerIdx(5)), 1, t), 0, "an unknown peer gets nothing");
    }

    #[test]
    fn a_clock_reading_slightly_behind_is_harmless() {
        let s = StormControl::new(10, 0);
        assert_eq!(count(&s, L0, 10, Instant::from_secs(5)), 10);
        assert_eq!(count(&s, L0, 10, Instant::from_millis(4_990)), 0, "no new budget from going back");
        assert_eq!(count(&s, L0, 10, Instant::from_secs(6)), 10);
    }
}
