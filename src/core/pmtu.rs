//! Path MTU signals for frames too large for the network, and TCP MSS clamping.
//!
//! A VM left at the default MTU of 1500 on a network that carries 1450 sends full-size frames
//! the switch cannot carry. Dropping them silently stalls every TCP connection the moment it
//! sends a full segment. Because the switch sees the frame, it can tell the sender what a
//! router would (RFC 1191, RFC 8201):
//! - IPv4 with DF set: ICMP "destination unreachable / fragmentation needed" (type 3 code 4,
//!   RFC 792) with the next-hop MTU (RFC 1191 §4), quoting the offending IP header and the
//!   first 8 bytes of its payload;
//! - IPv6: ICMPv6 "packet too big" (RFC 4443 §3.2) with the MTU, quoting as much of the
//!   invoking packet as fits a 1280-byte IPv6 packet (RFC 4443 §2.4(c));
//! - IPv4 without DF: no signal (the sender allowed fragmentation, not a smaller MTU); the
//!   frame is dropped and counted like every oversized frame.
//!
//! The reply is a whole Ethernet frame, written back out of the port the frame came in on:
//! - destination MAC: the sender's; source MAC: the offending frame's destination MAC (the
//!   next hop the sender addressed, so the reply looks like it came from that neighbour; the
//!   sender needs no new neighbour entry), with the same VLAN tags;
//! - IP source: the network's `address` of that family, unless the offending packet came from
//!   that very address (the host's own stack on the TAP: Linux drops IPv4 packets from one of
//!   its own addresses as martians); otherwise the offending packet's destination. A Linux host
//!   accepts a "too big" from any source as long as the quoted header matches one of its
//!   sockets (`icmp_unreach` → `tcp_v4_err` looks the socket up by the quoted addresses and
//!   ports), and the destination is reachable through the very interface the reply arrives
//!   on, so reverse-path filtering passes too.
//!
//! No signal is sent about an ICMP error message, a non-initial IPv4 fragment, a packet from
//! an address that is not unicast, or an IPv4 packet to a broadcast or multicast address
//! (RFC 1812 §4.3.2.7, RFC 4443 §2.4(e)), nor for a frame sent to a group MAC (there would be
//! no neighbour MAC to answer from).
//!
//! Signals are rate-limited per ingress port ([`PortBuckets`]), like any host limits its ICMP
//! errors: a VM blasting oversized frames gets at most [`SIGNALS_PER_SEC`] replies a second.
//!
//! MSS clamping ([`clamp_mss`]) is the fallback for senders that drop ICMP: the MSS option of
//! a SYN is lowered to what fits the network MTU, with the TCP checksum updated incrementally
//! (RFC 1624). A frame whose checksum is left to the device (`NEEDS_CSUM`: the field holds the
//! pseudo-header sum only, the option bytes are summed later) keeps its checksum field as is.
//!
//! Nothing here allocates: replies are built into a buffer the caller owns.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::ports::MAX_PORTS;
use super::time::Instant;
use super::wire::ethernet::{EthernetFrame, ethertype};
use super::wire::ip::proto;
use super::LocalPort;

/// IPv6's minimum MTU (RFC 8200 §5): a "packet too big" never makes a longer packet.
pub const IPV6_MIN_MTU: usize = 1280;
/// The longest reply: Ethernet with two VLAN tags and a 1280-byte IPv6 packet.
pub const MAX_REPLY: usize = 22 + IPV6_MIN_MTU;
/// Replies per second per ingress port, at the steady rate.
pub const SIGNALS_PER_SEC: u32 = 100;
/// Replies a port may get at once after being quiet.
pub const SIGNALS_BURST: u32 = 50;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const REPLY_TTL: u8 = 64;

pub use super::wire::ip::Family;

/// Why an oversized frame gets no signal (it is dropped and counted as `mtu_exceeded` all
/// the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSignal {
    /// Not IPv4/IPv6, or its IP header is cut short or malformed.
    NotIp,
    /// IPv4 without DF: fragmentation allowed, no smaller MTU to report.
    Fragmentable,
    /// An ICMP error, a later fragment, a non-unicast source or destination: RFC 1812 and
    /// RFC 4443 forbid an error about it.
    Exempt,
}

/// The addresses the network has (its `address`), the preferred sources of signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sources {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// A reply built by [`too_big`]: `len` bytes at the start of the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub len: usize,
    pub family: Family,
}

/// Build the "too big" reply to `frame` (a frame from a local port, longer than `mtu` allows)
/// into `out`, which must hold [`MAX_REPLY`] bytes.
///
/// # Panics
/// If `out` is shorter than [`MAX_REPLY`].
pub fn too_big(frame: &[u8], mtu: u16, sources: &Sources, out: &mut [u8]) -> Result<Signal, NoSignal> {
    assert!(out.len() >= MAX_REPLY, "reply buffer shorter than MAX_REPLY");
    let eth = EthernetFrame::new_checked(frame).map_err(|_| NoSignal::NotIp)?;
    let (l3, et) = eth.l3().ok_or(NoSignal::NotIp)?;
    if !eth.dst().is_unicast() {
        return Err(NoSignal::Exempt);
    }
    let ip = frame.get(l3..).ok_or(NoSignal::NotIp)?;
    let (ip_len, family) = match et {
        ethertype::IPV4 => (v4_reply(ip, mtu, sources.v4, &mut out[l3..])?, Family::V4),
        ethertype::IPV6 => (v6_reply(ip, mtu, sources.v6, &mut out[l3..])?, Family::V6),
        _ => return Err(NoSignal::NotIp),
    };
    // L2: the same header (VLAN tags included), MACs swapped
    out[..l3].copy_from_slice(&frame[..l3]);
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[0..6]);
    Ok(Signal { len: l3 + ip_len, family })
}

fn v4_reply(ip: &[u8], mtu: u16, own: Option<Ipv4Addr>, out: &mut [u8]) -> Result<usize, NoSignal> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(NoSignal::NotIp);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl {
        return Err(NoSignal::NotIp);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x4000 == 0 {
        return Err(NoSignal::Fragmentable);
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let unicast = |a: Ipv4Addr| !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback());
    if frag & 0x1fff != 0 || !unicast(src) || !unicast(dst) {
        return Err(NoSignal::Exempt);
    }
    let quote = (ihl + 8).min(ip.len());
    if ip[9] == proto::ICMP && ihl < ip.len() && !is_icmp_query(ip[ihl]) {
        return Err(NoSignal::Exempt);
    }
    let from = own.filter(|a| *a != src).unwrap_or(dst);
    let total = 20 + 8 + quote;
    let h = &mut out[..total];
    h[0] = 0x45;
    h[1] = 0xc0; // precedence "internetwork control", as hosts send their ICMP errors
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[4..8].fill(0); // id 0, no flags: a 76..96-byte packet is never fragmented anyway
    h[8] = REPLY_TTL;
    h[9] = proto::ICMP;
    h[10..12].fill(0);
    h[12..16].copy_from_slice(&from.octets());
    h[16..20].copy_from_slice(&src.octets());
    let c = checksum::finish(checksum::sum(&h[..20], 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    // RFC 792 / RFC 1191 §4: type, code, checksum, unused, next-hop MTU, quote
    let m = &mut h[20..];
    m[0] = ICMP_DEST_UNREACH;
    m[1] = ICMP_FRAG_NEEDED;
    m[2..6].fill(0);
    m[6..8].copy_from_slice(&mtu.to_be_bytes());
    m[8..].copy_from_slice(&ip[..quote]);
    let c = checksum::finish(checksum::sum(m, 0));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

/// ICMP types that are not errors (echo, timestamp, ... : RFC 1812 §4.3.2.7 lets us answer
/// those).
fn is_icmp_query(t: u8) -> bool {
    matches!(t, 0 | 8 | 9 | 10 | 13 | 14 | 15 | 16 | 17 | 18)
}

fn v6_reply(ip: &[u8], mtu: u16, own: Option<Ipv6Addr>, out: &mut [u8]) -> Result<usize, NoSignal> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Err(NoSignal::NotIp);
    }
    let addr = |o: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&ip[o..o + 16]);
        Ipv6Addr::from(a)
    };
    let (src, dst) = (addr(8), addr(24));
    if src.is_unspecified() || src.is_multicast() || src.is_loopback() {
        return Err(NoSignal::Exempt);
    }
    // an ICMPv6 error (types 0..=127) right after the fixed header gets no error back
    if ip[6] == proto::ICMPV6 && ip.get(40).is_some_and(|t| *t < 128) {
        return Err(NoSignal::Exempt);
    }
    let from = own.filter(|a| *a != src).unwrap_or(dst);
    let quote = ip.len().min(IPV6_MIN_MTU - 40 - 8);
    let plen = 8 + quote;
    let h = &mut out[..40 + plen];
    h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    h[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
    h[6] = proto::ICMPV6;
    h[7] = REPLY_TTL;
    h[8..24].copy_from_slice(&from.octets());
    h[24..40].copy_from_slice(&src.octets());
    let (hdr, m) = h.split_at_mut(40);
    m[0] = ICMPV6_PACKET_TOO_BIG;
    m[1] = 0;
    m[2..4].fill(0);
    m[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    m[8..].copy_from_slice(&ip[..quote]);
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s.copy_from_slice(&hdr[8..24]);
    d.copy_from_slice(&hdr[24..40]);
    let c = checksum::finish(checksum::sum(m, checksum::pseudo_v6(&s, &d, proto::ICMPV6, plen as u32)));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(40 + plen)
}

/// One token bucket (milli-tokens; refilled `rate` per millisecond of elapsed time).
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    milli: u64,
    last: u64,
    used: bool,
}

/// Rate limits for the signals of one data-path thread, a bucket per local port slot (a
/// thread that reads several ports, like the datagram socket's, keeps them apart). Allocated
/// once when the thread starts.
#[derive(Debug)]
pub struct PortBuckets {
    rate: u64,
    burst_milli: u64,
    buckets: Box<[Bucket]>,
}

impl PortBuckets {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        PortBuckets { rate: u64::from(per_sec), burst_milli: u64::from(burst.max(1)) * 1000, buckets: vec![Bucket::default(); MAX_PORTS].into_boxed_slice() }
    }

    /// Whether `port` may get one more signal at `now` (and if so, it is charged).
    pub fn allow(&mut self, port: LocalPort, now: Instant) -> bool {
        let Some(b) = self.buckets.get_mut(port.slot()) else { return false };
        let t = now.as_millis();
        if !b.used {
            *b = Bucket { milli: self.burst_milli, last: t, used: true };
        } else {
            let refill = t.saturating_sub(b.last).saturating_mul(self.rate);
            b.milli = b.milli.saturating_add(refill).min(self.burst_milli);
            b.last = b.last.max(t);
        }
        if b.milli >= 1000 {
            b.milli -= 1000;
            true
        } else {
            false
        }
    }
}

impl Default for PortBuckets {
    fn default() -> Self {
        PortBuckets::new(SIGNALS_PER_SEC, SIGNALS_BURST)
    }
}

/// Lower the MSS option of a TCP SYN (or SYN-ACK) in `frame` to what fits `mtu` (MTU − 40
/// for IPv4, MTU − 60 for IPv6), fixing the TCP checksum up incrementally unless `partial`
/// (the checksum field holds only the pseudo-header sum, `NEEDS_CSUM`). Returns whether the
/// option was changed.
pub fn clamp_mss(frame: &mut [u8], mtu: u16, partial: bool) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(&*frame) else { return false };
    let Some((l3, et)) = eth.l3() else { return false };
    let Some(ip) = frame.get(l3..) else { return false };
    let (tcp, max) = match et {
        ethertype::IPV4 => {
            if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != proto::TCP || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return false;
            }
            (l3 + usize::from(ip[0] & 0x0f) * 4, mtu.saturating_sub(40))
        }
        // TCP right after the fixed header (SYNs carry no extension headers in practice)
        ethertype::IPV6 if ip.len() >= 40 && ip[0] >> 4 == 6 && ip[6] == proto::TCP => (l3 + 40, mtu.saturating_sub(60)),
        _ => return false,
    };
    let Some(th) = frame.get_mut(tcp..) else { return false };
    if th.len() < 20 || th[13] & 0x02 == 0 {
        return false;
    }
    let doff = usize::from(th[12] >> 4) * 4;
    if doff < 20 || th.len() < doff {
        return false;
    }
    let mut i = 20;
    while i < doff {
        match th[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = th.get(i + 1) else { return false };
                let len = usize::from(len);
                if len < 2 || i + len > doff {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([th[i + 2], th[i + 3]]);
                    if old <= max {
                        return false;
                    }
                    th[i + 2..i + 4].copy_from_slice(&max.to_be_bytes());
                    if !partial {
                        // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). After a lone NOP the field
                        // sits at an odd offset: its bytes count swapped in the 16-bit sum.
                        let (m, m2) = if i % 2 == 1 { (old.swap_bytes(), max.swap_bytes()) } else { (old, max) };
                        let hc = u16::from_be_bytes([th[16], th[17]]);
                        let acc = u64::from(!hc) + u64::from(!m) + u64::from(m2);
                        th[16..18].copy_from_slice(&checksum::finish(acc).to_be_bytes());
                    }
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

#[cfg(test)]
#[path = "pmtu_tests.rs"]
mod tests;
