//! ARP/ND suppression for one network: the glue between its neighbour table
//! ([`crate::core::neigh`], which knows bindings and builds answers) and its FDB, which says
//! whether a binding learned from a peer still holds.

use super::Network;
use crate::core::neigh::{Answer, REPLY_MAX, Source};
use crate::core::time::Instant;
use crate::core::wire::ethernet::MacAddr;
use crate::core::Port;

impl Network {
    /// Whether a binding from `source` to `mac` may be used to answer now: a snooped one while
    /// the FDB has `mac` behind the peer it was snooped from.
    pub fn neigh_usable(&self, mac: MacAddr, source: Source, now: Instant) -> bool {
        match source {
            Source::Snooped(p) | Source::Cluster(p) => self.fdb.lookup(mac, now) == Some(Port::Peer(p)),
            Source::Local => false,
        }
    }

    /// ARP/ND suppression for a frame from a local port that [`Self::from_local`] said to
    /// flood: the length of the answer written into `out` (deliver it to the asking port and
    /// flood nothing), or `None` (flood as usual). Hits and misses are counted.
    pub fn answer_neigh(&self, frame: &[u8], out: &mut [u8; REPLY_MAX], now: Instant) -> Option<usize> {
        match self.neigh.answer(frame, out, |mac, s| self.neigh_usable(mac, s, now), now) {
            Answer::NotEligible => None,
            Answer::Miss(f) => {
                self.neigh.counters.count(f, false);
                None
            }
            Answer::Hit(f, len) => {
                self.neigh.counters.count(f, true);
                Some(len)
            }
        }
    }

    /// Remove the bindings that aged out or whose MAC is no longer where they were learned.
    pub fn sweep_neigh(&self, now: Instant) -> usize {
        if !self.neigh.enabled() {
            return 0;
        }
        self.neigh.sweep(now, |mac, s| self.neigh_usable(mac, s, now))
    }
}
