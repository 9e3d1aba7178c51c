//! ARP/ND suppression and DHCP snooping for one network: the glue between its neighbour
//! tables ([`crate::core::neigh`], which knows bindings, builds answers and parses DHCP) and
//! its FDB, which says whether a binding learned from a peer still holds and where a DHCP
//! client is.

use std::net::IpAddr;

use super::Network;
use crate::core::neigh::dhcp::{self, Message, Outcome, Parsed};
use crate::core::neigh::{Answer, REPLY_MAX, Source, usable_v4};
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

impl Network {
    /// Whether DHCP messages are snooped (some table takes their bindings).
    pub fn snoops_dhcp(&self) -> bool {
        self.spec.snoop_local || self.spec.arp_suppress
    }

    /// Learn or forget what the DHCP message in `frame` (from a local port or a peer, already
    /// forwarded) says; see the module documentation.
    pub fn snoop_dhcp(&self, frame: &[u8], now: Instant) {
        let m = match dhcp::parse(frame) {
            Parsed::NotDhcp | Parsed::Other => return,
            Parsed::Malformed => return self.neigh.dhcp.malformed(),
            Parsed::Dhcp(m) => m,
        };
        let outcome = match m {
            Message::Ack { chaddr, yiaddr, lease } => {
                let ip = IpAddr::V4(yiaddr);
                let table = match self.fdb.lookup(chaddr, now) {
                    _ if !usable_v4(yiaddr) => None,
                    Some(Port::Local(_)) if self.local_neigh.enabled() => Some((&self.local_neigh, Source::Local)),
                    Some(Port::Peer(p)) if self.neigh.enabled() => Some((&self.neigh, Source::Snooped(p))),
                    _ => None,
                };
                match (table, lease) {
                    (Some((t, s)), Some(lease)) => t.learn_lease(ip, chaddr, s, lease, now),
                    (Some((t, s)), None) => t.learn(ip, chaddr, s, None, now),
                    (None, _) => {}
                }
                if table.is_some() { Outcome::Applied } else { Outcome::Ignored }
            }
            Message::Nak { chaddr } => {
                let gone = self.local_neigh.forget_leases(chaddr) + self.neigh.forget_leases(chaddr);
                if gone > 0 { Outcome::Applied } else { Outcome::Ignored }
            }
            Message::Release { chaddr, ciaddr: a } | Message::Decline { chaddr, addr: a } => {
                let ip = IpAddr::V4(a);
                // both tables: the address is gone wherever it was bound
                let (l, r) = (self.local_neigh.release(ip, chaddr), self.neigh.release(ip, chaddr));
                if l || r { Outcome::Applied } else { Outcome::Ignored }
            }
        };
        self.neigh.dhcp.count(&m, outcome);
    }
}
