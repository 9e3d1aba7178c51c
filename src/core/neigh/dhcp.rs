//! DHCP snooping (RFC 2131): IPv4 address → MAC bindings from the DHCP messages that cross a
//! network's local ports, for hosts that got their address by DHCP and never announced it
//! (no gratuitous ARP, no request of their own yet).
//!
//! What is learned, and from what:
//! - a DHCPACK (server → client, whichever side the server is on: it may come from a local
//!   port or from a peer) binds `yiaddr` to `chaddr` for the lease time (option 51). Where
//!   the binding goes depends on where the FDB has `chaddr`:
//!   - on a local port: a *local* binding (source `Local`), which `advertise = "macs+ips"`
//!     publishes with the MAC's record, so every other member answers ARP for it;
//!   - behind a peer: a *snooped* binding of that peer (`arp_suppress`), used like one
//!     snooped from ARP: only while the FDB still has the MAC behind that same peer;
//!   - nowhere: ignored (counted).
//! - a DHCPRELEASE or DHCPDECLINE (client → server) removes the binding of the address it
//!   names (`ciaddr`, or the requested address of a decline) if it is to `chaddr`;
//! - a DHCPNAK (server → client) removes every lease binding of `chaddr`.
//!
//! A binding from a lease ends with the lease: it does not age like the FDB, and seeing the
//! address in ARP does not stretch it past the lease's end; a renewal (another DHCPACK)
//! moves the end. An infinite lease (0xffffffff) gives an ordinary binding that ages. Its
//! use stays bound to the FDB as every binding's is (see the module above).
//!
//! Only untagged IPv4/UDP frames with ports 67/68 are parsed, with every length checked
//! against the IP, UDP and frame lengths; anything that does not hold together is ignored
//! and counted as `malformed`. Fragments are not reassembled (a DHCP message fits one frame).
//! Option overload (option 52: options in `sname`/`file`) is not followed: the message type
//! and lease time are in the options field in every client and server we know of.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::mac_at;
use crate::core::wire::ethernet::{MacAddr, ethertype};
use crate::core::wire::ip::proto::UDP;

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
/// The BOOTP fixed part (RFC 2131 §2: op .. file) and the magic cookie before the options.
const FIXED: usize = 236;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Smallest frame that can carry a DHCP message: Ethernet, IPv4, UDP, fixed part, cookie.
const MIN_FRAME: usize = 14 + 20 + 8 + FIXED + 4;

const OPT_PAD: u8 = 0;
const OPT_END: u8 = 255;
const OPT_REQUESTED: u8 = 50;
const OPT_LEASE: u8 = 51;
const OPT_TYPE: u8 = 53;

const DHCPDECLINE: u8 = 4;
const DHCPACK: u8 = 5;
const DHCPNAK: u8 = 6;
const DHCPRELEASE: u8 = 7;
const INFINITE: u32 = u32::MAX;

/// A DHCP message the neighbour tables act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// `yiaddr` is `chaddr`'s for `lease` (`None`: infinite).
    Ack { chaddr: MacAddr, yiaddr: Ipv4Addr, lease: Option<Duration> },
    Nak { chaddr: MacAddr },
    /// The client gives `ciaddr` up.
    Release { chaddr: MacAddr, ciaddr: Ipv4Addr },
    /// The client found `addr` in use and will not take it.
    Decline { chaddr: MacAddr, addr: Ipv4Addr },
}

/// What [`parse`] made of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a DHCP message (not IPv4/UDP with ports 67/68): the common case.
    NotDhcp,
    /// UDP 67/68 that does not hold together as a DHCP message.
    Malformed,
    /// A DHCP (or plain BOOTP) message the tables do not act on: discover, offer, request,
    /// inform, an ACK of an inform (no address), a lease of 0 s.
    Other,
    Dhcp(Message),
}

/// What a frame's DHCP message did (the `message` and `result` labels of
/// `overlayd_neigh_dhcp_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An ACK bound its address; a NAK/release/decline removed a binding.
    Applied,
    /// It named a MAC the table does not have where a binding could go, or a binding that
    /// was not there.
    Ignored,
}

/// Counts of DHCP messages snooped, by message and outcome, and malformed ones.
#[derive(Debug, Default)]
pub struct DhcpCounters {
    counts: [AtomicU64; SLOTS],
}

/// (message, result) of each slot, in [`DhcpCounters::snapshot`] order.
pub const LABELS: [(&str, &str); SLOTS] = [
    ("ack", "applied"),
    ("ack", "ignored"),
    ("nak", "applied"),
    ("nak", "ignored"),
    ("release", "applied"),
    ("release", "ignored"),
    ("decline", "applied"),
    ("decline", "ignored"),
    ("malformed", "ignored"),
];
pub const SLOTS: usize = 9;

impl DhcpCounters {
    pub(crate) fn count(&self, m: &Message, o: Outcome) {
        let base = match m {
            Message::Ack { .. } => 0,
            Message::Nak { .. } => 2,
            Message::Release { .. } => 4,
            Message::Decline { .. } => 6,
        };
        self.counts[base + usize::from(o == Outcome::Ignored)].fetch_add(1, Relaxed);
    }

    pub(crate) fn malformed(&self) {
        self.counts[SLOTS - 1].fetch_add(1, Relaxed);
    }

    /// The counts in [`LABELS`] order.
    pub fn snapshot(&self) -> [u64; SLOTS] {
        self.counts.each_ref().map(|c| c.load(Relaxed))
    }

    /// Add (wrapping) `now - base` to each count.
    pub fn add_since(&self, now: &[u64; SLOTS], base: &[u64; SLOTS]) {
        for ((c, n), b) in self.counts.iter().zip(now).zip(base) {
            let d = n.wrapping_sub(*b);
            if d != 0 {
                c.fetch_add(d, Relaxed);
            }
        }
    }

    pub fn get(&self, message: &str, result: &str) -> u64 {
        LABELS.iter().position(|l| *l == (message, result)).map_or(0, |i| self.counts[i].load(Relaxed))
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn v4(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Parse the DHCP message an untagged Ethernet frame carries, if any (see the module
/// documentation). Never panics: every index is checked first.
pub fn parse(frame: &[u8]) -> Parsed {
    // cheap tests first: most frames stop at one of these
    if frame.len() < MIN_FRAME || be16(frame, 12) != ethertype::IPV4 || frame[23] != UDP {
        return Parsed::NotDhcp;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || be16(ip, 6) & 0x1fff != 0 {
        return Parsed::NotDhcp; // not IPv4, or a later fragment (no UDP header in it)
    }
    let Some(udp) = ip.get(ihl..ihl + 8) else { return Parsed::NotDhcp };
    let (sport, dport) = (be16(udp, 0), be16(udp, 2));
    if !matches!(dport, SERVER_PORT | CLIENT_PORT) || !matches!(sport, SERVER_PORT | CLIENT_PORT) {
        return Parsed::NotDhcp;
    }
    // from here on it claims to be DHCP: what does not hold together is malformed
    let total = usize::from(be16(ip, 2));
    let udp_len = usize::from(be16(udp, 4));
    if be16(ip, 6) & 0x2000 != 0 || total > ip.len() || udp_len < 8 || ihl + udp_len > total {
        return Parsed::Malformed;
    }
    let msg = &ip[ihl + 8..ihl + udp_len];
    if msg.len() < FIXED + COOKIE.len() || msg[1] != 1 || msg[2] != 6 || msg[FIXED..FIXED + 4] != COOKIE {
        return Parsed::Malformed;
    }
    let (mut kind, mut lease, mut requested) = (None, None, None);
    let mut o = &msg[FIXED + 4..];
    loop {
        match o.first() {
            None | Some(&OPT_END) => break,
            Some(&OPT_PAD) => o = &o[1..],
            Some(&code) => {
                let Some(&len) = o.get(1) else { return Parsed::Malformed };
                let Some(v) = o.get(2..2 + usize::from(len)) else { return Parsed::Malformed };
                // the first instance of each (RFC 3396 concatenation does not apply to these)
                match (code, v.len()) {
                    (OPT_TYPE, 1) => kind = kind.or(Some(v[0])),
                    (OPT_LEASE, 4) => lease = lease.or(Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))),
                    (OPT_REQUESTED, 4) => requested = requested.or(Some(v4(v, 0))),
                    (OPT_TYPE | OPT_LEASE | OPT_REQUESTED, _) => return Parsed::Malformed,
                    _ => {}
                }
                o = &o[2 + usize::from(len)..];
            }
        }
    }
    let Some(kind) = kind else { return Parsed::Other }; // plain BOOTP
    let op = msg[0];
    let chaddr = mac_at(msg, 28);
    let (ciaddr, yiaddr) = (v4(msg, 12), v4(msg, 16));
    let reply = match kind {
        DHCPACK | DHCPNAK => true,
        DHCPRELEASE | DHCPDECLINE => false,
        _ => return Parsed::Other,
    };
    if op != if reply { 2 } else { 1 } || chaddr.is_multicast() || chaddr.is_zero() {
        return Parsed::Malformed;
    }
    Parsed::Dhcp(match kind {
        DHCPACK => {
            if yiaddr.is_unspecified() {
                return Parsed::Other; // the answer to an inform: no address granted
            }
            match lease {
                None => return Parsed::Malformed, // RFC 2131 §4.3.1: an ACK to a request has one
                Some(0) => return Parsed::Other,
                Some(INFINITE) => Message::Ack { chaddr, yiaddr, lease: None },
                Some(s) => Message::Ack { chaddr, yiaddr, lease: Some(Duration::from_secs(u64::from(s))) },
            }
        }
        DHCPNAK => Message::Nak { chaddr },
        DHCPRELEASE => Message::Release { chaddr, ciaddr },
        _ => match requested {
            Some(addr) => Message::Decline { chaddr, addr },
            None => return Parsed::Malformed, // RFC 2131 table 5: a decline names the address
        },
    })
}

#[cfg(test)]
mod tests;
