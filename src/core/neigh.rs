//! The neighbour table of one network (IPv4/IPv6 address → MAC bindings) and ARP/ND
//! suppression: answering a local host's ARP request or IPv6 neighbour solicitation on its own
//! port instead of flooding it to every peer (the kernel bridge's `neigh_suppress`, EVPN's
//! proxy ARP/ND of RFC 9161).
//!
//! Where bindings come from ([`Source`]):
//! - `Snooped(peer)`: ARP and neighbour discovery that crossed the tunnel from `peer`: the
//!   sender of an ARP request or reply (gratuitous ARP included, not a probe's 0.0.0.0), the
//!   target of a neighbour advertisement with its target link-layer option, the source of a
//!   neighbour solicitation with its source link-layer option. The bound MAC must be the
//!   frame's own source MAC, which the FDB has just learned behind that peer.
//! - `Cluster(peer)`: the addresses of a MAC advertisement (`advertise = "macs+ips"`) of the
//!   member behind `peer`, refreshed while its record lives. The table, the answers and the
//!   counters do not care where a binding came from, only
//!   [`Network::neigh_usable`](super::Network) asks the source whether it still holds: the
//!   FDB must have the MAC behind that same peer.
//!
//! How stale answers are avoided: a snooped binding is used only while
//! - it was seen within the FDB ageing time (its own ageing), and
//! - the FDB still has its MAC behind the *same* peer it was snooped from. When the MAC ages
//!   out, moves to a local port or to another peer, or its peer goes down (the FDB flushes
//!   it), the binding is not used: the request floods as it would without suppression, and
//!   the answer that comes back through the tunnel rebinds it. A binding is therefore never
//!   used for a MAC on the asking port's own side.
//!
//! - DHCP (see [`dhcp`]): a DHCPACK crossing a local port binds the address it grants to the
//!   client's MAC until the lease ends: `Local` when the client is on a local port,
//!   `Snooped(peer)` when it is behind `peer`; a release, decline or NAK removes it.
//!
//! Only untagged frames are snooped and answered: an 802.1Q-tagged request floods as before.
//!
//! Cost: only ARP and ICMPv6 neighbour discovery frames are looked at (two byte compares on
//! every other frame), and only when the network has `arp_suppress = true`. The table is a
//! hash map under a mutex (touched only by those frames), reserved at creation for
//! `min(cap, 16384)` bindings and never holding more than `cap` (the FDB's `max_entries`);
//! when full, the oldest-learned binding goes. Answers are written into a caller-owned
//! buffer: nothing is allocated per frame.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::checksum;
use super::time::Instant;
use super::wire::ethernet::{MacAddr, ethertype};
use super::wire::ip::proto::ICMPV6;
use super::PeerIdx;

/// Largest answer written: an IPv6 neighbour advertisement with a target link-layer option
/// (14 Ethernet + 40 IPv6 + 24 NA + 8 option).
pub const REPLY_MAX: usize = 86;
/// An ARP reply without padding (the kernel pads it on a real wire if it must).
pub const ARP_REPLY_LEN: usize = 42;
/// Bindings reserved up front; beyond that the map grows (by doubling, up to the cap).
const RESERVE_MAX: usize = 16_384;

const ND_NS: u8 = 135;
const ND_NA: u8 = 136;
const OPT_SLLA: u8 = 1;
const OPT_TLLA: u8 = 2;
/// NA flags (RFC 4861 §4.4).
const NA_ROUTER: u8 = 0x80;
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;

/// Where a binding was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From ARP/ND frames that came through the tunnel from this peer.
    Snooped(PeerIdx),
    /// From a cluster advertisement of the member behind this peer.
    Cluster(PeerIdx),
    /// From ARP/ND frames of a local port (what `advertise = "macs+ips"` publishes); never
    /// used to answer.
    Local,
}

pub use super::wire::ip::Family;

/// What [`NeighTable::answer`] did with a frame from a local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not an ARP request / neighbour solicitation suppression applies to (flood it).
    NotEligible,
    /// A request for a target without a usable binding (flood it; counted as a miss).
    Miss(Family),
    /// Answered: the first `len` bytes of the buffer are the reply for the asking port.
    Hit(Family, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    mac: MacAddr,
    source: Source,
    /// The target said it is a router (NA R flag); kept for the answers' R flag.
    router: bool,
    seen_ms: u64,
    seq: u64,
    /// From a DHCP lease: the binding ends then (ms, see [`Instant`]), whatever the ageing
    /// time says; 0 = not from a lease (it ages like the FDB).
    lease_end_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<IpAddr, Binding>,
    /// (address, seq) in learning order, for eviction; stale items are skipped.
    order: VecDeque<(IpAddr, u64)>,
    next_seq: u64,
}

/// One row of [`NeighTable::rows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighRow {
    pub ip: IpAddr,
    pub mac: MacAddr,
    pub source: Source,
    pub age: Duration,
    /// What is left of the DHCP lease it was learned from (`None`: learned from ARP/ND or the
    /// cluster; it ages).
    pub lease_left: Option<Duration>,
}

/// Suppression outcomes since start, by family: (hits, misses).
#[derive(Debug, Default)]
pub struct NeighCounters {
    counts: [AtomicU64; 4],
}

impl NeighCounters {
    fn slot(family: Family, hit: bool) -> usize {
        (family as usize) * 2 + usize::from(!hit)
    }

    pub fn count(&self, family: Family, hit: bool) {
        self.counts[Self::slot(family, hit)].fetch_add(1, Relaxed);
    }

    pub fn get(&self, family: Family, hit: bool) -> u64 {
        self.counts[Self::slot(family, hit)].load(Relaxed)
    }

    /// The four counts in a fixed order (v4 hit, v4 miss, v6 hit, v6 miss).
    pub fn snapshot(&self) -> [u64; 4] {
        self.counts.each_ref().map(|c| c.load(Relaxed))
    }

    /// Add (wrapping) `now - base` to each count.
    pub fn add_since(&self, now: &[u64; 4], base: &[u64; 4]) {
        for ((c, n), b) in self.counts.iter().zip(now).zip(base) {
            let d = n.wrapping_sub(*b);
            if d != 0 {
                c.fetch_add(d, Relaxed);
            }
        }
    }
}

/// The bindings of one network (see the module documentation).
#[derive(Debug)]
pub struct NeighTable {
    enabled: bool,
    cap: usize,
    ageing_ms: u64,
    inner: Mutex<Inner>,
    pub counters: NeighCounters,
    /// DHCP messages snooped ([`dhcp`]), counted on the network's `neigh` table whichever
    /// table took the binding.
    pub dhcp: dhcp::DhcpCounters,
}

impl NeighTable {
    /// A table holding at most `cap` bindings, each for `ageing` after it was last seen;
    /// `enabled = false` (no `arp_suppress`) keeps it empty and reserves nothing.
    pub fn new(enabled: bool, cap: usize, ageing: Duration) -> Self {
        let reserve = if enabled { cap.min(RESERVE_MAX) } else { 0 };
        NeighTable {
            enabled,
            cap,
            ageing_ms: ageing.as_millis() as u64,
            inner: Mutex::new(Inner {
                map: HashMap::with_capacity(reserve),
                order: VecDeque::with_capacity(if enabled { 2 * reserve + 64 } else { 0 }),
                next_seq: 0,
            }),
            counters: NeighCounters::default(),
            dhcp: Default::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, b: &Binding, now: Instant) -> bool {
        fresh(self.ageing_ms, b, now)
    }

    /// Bind `ip` to `mac` (learned from `source`); `router`: `Some` when the frame said whether
    /// the owner is a router (a neighbour advertisement), `None` to keep what is known.
    /// A binding from a DHCP lease keeps its end: seeing the address in ARP/ND does not make
    /// it outlive the lease.
    pub fn learn(&self, ip: IpAddr, mac: MacAddr, source: Source, router: Option<bool>, now: Instant) {
        self.bind(ip, mac, source, router, None, now);
    }

    /// Bind `ip` to `mac` for a DHCP lease of `lease` granted at `now`: the binding ends with
    /// the lease (a renewal moves the end), not with the ageing time.
    pub fn learn_lease(&self, ip: IpAddr, mac: MacAddr, source: Source, lease: Duration, now: Instant) {
        let end = now.as_millis().saturating_add(lease.as_millis().min(u128::from(u64::MAX)) as u64).max(1);
        self.bind(ip, mac, source, None, Some(end), now);
    }

    fn bind(&self, ip: IpAddr, mac: MacAddr, source: Source, router: Option<bool>, lease_end: Option<u64>, now: Instant) {
        if !self.enabled || self.cap == 0 {
            return;
        }
        let ms = now.as_millis();
        let ageing = self.ageing_ms;
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(b) = inner.map.get_mut(&ip) {
            if b.mac == mac && b.source == source && fresh(ageing, b, now) {
                b.seen_ms = ms;
                if let Some(r) = router {
                    b.router = r;
                }
                if let Some(e) = lease_end {
                    b.lease_end_ms = e;
                }
                return;
            }
            // rebound (another MAC or another peer, or it had ended): a new binding in
            // learning order
            let seq = inner.next_seq;
            inner.next_seq += 1;
            *b = Binding { mac, source, router: router.unwrap_or(false), seen_ms: ms, seq, lease_end_ms: lease_end.unwrap_or(0) };
            inner.order.push_back((ip, seq));
            Self::compact(inner);
            return;
        }
        while inner.map.len() >= self.cap {
            let Some((old, seq)) = inner.order.pop_front() else { break };
            if inner.map.get(&old).is_some_and(|b| b.seq == seq) {
                inner.map.remove(&old);
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.map.insert(ip, Binding { mac, source, router: router.unwrap_or(false), seen_ms: ms, seq, lease_end_ms: lease_end.unwrap_or(0) });
        inner.order.push_back((ip, seq));
        Self::compact(inner);
    }

    /// Drop order items of bindings rebound or removed once they outnumber the live ones.
    fn compact(inner: &mut Inner) {
        if inner.order.len() > 2 * inner.map.len() + 64 {
            let map = &inner.map;
            inner.order.retain(|(ip, seq)| map.get(ip).is_some_and(|b| b.seq == *seq));
        }
    }

    /// The binding of `ip` if seen within the ageing time: (MAC, source, router flag).
    pub fn lookup(&self, ip: IpAddr, now: Instant) -> Option<(MacAddr, Source, bool)> {
        let g = self.lock();
        let b = g.map.get(&ip)?;
        self.fresh(b, now).then_some((b.mac, b.source, b.router))
    }

    /// Remove the bindings `keep` refuses or that aged out (or whose lease ended); returns how
    /// many went.
    pub fn sweep(&self, now: Instant, keep: impl Fn(MacAddr, Source) -> bool) -> usize {
        let mut g = self.lock();
        let before = g.map.len();
        let ageing = self.ageing_ms;
        g.map.retain(|_, b| fresh(ageing, b, now) && keep(b.mac, b.source));
        let gone = before - g.map.len();
        if gone > 0 {
            Self::compact(&mut g);
        }
        gone
    }

    /// Forget every binding learned from `source` (its peer went down).
    pub fn forget(&self, source: Source) -> usize {
        let mut g = self.lock();
        let before = g.map.len();
        g.map.retain(|_, b| b.source != source);
        before - g.map.len()
    }

    /// Forget the binding of `ip` if it is to `mac` (its owner released or declined it);
    /// returns whether it went.
    pub fn release(&self, ip: IpAddr, mac: MacAddr) -> bool {
        let mut g = self.lock();
        if g.map.get(&ip).is_some_and(|b| b.mac == mac) {
            g.map.remove(&ip);
            return true;
        }
        false
    }

    /// Forget every binding of `mac` learned from a DHCP lease (its server refused the lease,
    /// a DHCPNAK); returns how many went.
    pub fn forget_leases(&self, mac: MacAddr) -> usize {
        let mut g = self.lock();
        let before = g.map.len();
        g.map.retain(|_, b| !(b.mac == mac && b.lease_end_ms != 0));
        before - g.map.len()
    }

    /// Forget everything (the FDB was flushed).
    pub fn clear(&self) -> usize {
        let mut g = self.lock();
        let n = g.map.len();
        g.map.clear();
        g.order.clear();
        n
    }

    /// Bindings held (aged ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live bindings, sorted by address (admin view, tests).
    pub fn rows(&self, now: Instant) -> Vec<NeighRow> {
        let g = self.lock();
        let mut rows: Vec<NeighRow> = g
            .map
            .iter()
            .filter(|(_, b)| self.fresh(b, now))
            .map(|(ip, b)| NeighRow {
                ip: *ip,
                mac: b.mac,
                source: b.source,
                age: now.saturating_since(Instant::from_millis(b.seen_ms)),
                lease_left: (b.lease_end_ms != 0).then(|| Instant::from_millis(b.lease_end_ms).saturating_since(now)),
            })
            .collect();
        rows.sort_by_key(|r| r.ip);
        rows
    }

    /// Take over the bindings and counts of `old` (a network's previous generation), each on
    /// the source `map_source` gives it (`None`: its peer was removed, the binding goes).
    pub fn take_over(&self, old: &NeighTable, map_source: impl Fn(Source) -> Option<Source>) {
        self.counters.add_since(&old.counters.snapshot(), &[0; 4]);
        self.dhcp.add_since(&old.dhcp.snapshot(), &[0; dhcp::SLOTS]);
        if !self.enabled {
            return;
        }
        let mut rows: Vec<(IpAddr, Binding)> = old.lock().map.iter().map(|(ip, b)| (*ip, *b)).collect();
        rows.sort_by_key(|(_, b)| b.seq);
        for (ip, b) in rows {
            if let Some(s) = map_source(b.source) {
                let lease_end = (b.lease_end_ms != 0).then_some(b.lease_end_ms);
                self.bind(ip, b.mac, s, Some(b.router), lease_end, Instant::from_millis(b.seen_ms));
            }
        }
    }

    /// Learn what an ARP or neighbour discovery frame that came from `source` tells (see the
    /// module documentation); every other frame is ignored at the cost of a compare.
    pub fn snoop(&self, frame: &[u8], source: Source, now: Instant) {
        if !self.enabled || frame.len() < 14 {
            return;
        }
        let src = mac_at(frame, 6);
        match ethertype_of(frame) {
            ethertype::ARP => {
                let Some(a) = Arp::parse(frame) else { return };
                if (a.op == 1 || a.op == 2) && a.sha == src && usable_v4(a.spa) {
                    self.learn(IpAddr::V4(a.spa), a.sha, source, None, now);
                }
            }
            ethertype::IPV6 => {
                let Some(nd) = Nd::parse(frame) else { return };
                match nd.kind {
                    ND_NA if nd.lla == Some(src) && usable_v6(&nd.target) => {
                        let router = nd.flags & NA_ROUTER != 0;
                        self.learn(IpAddr::V6(nd.target), src, source, Some(router), now);
                    }
                    ND_NS if nd.lla == Some(src) && usable_v6(&nd.src) => {
                        self.learn(IpAddr::V6(nd.src), src, source, None, now);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Answer `frame`, read from a local port, into `out` if it is a broadcast ARP request or
    /// a neighbour solicitation for a target bound to a MAC that `usable` accepts. Gratuitous
    /// ARP and unsolicited advertisements are never answered (they are no requests).
    pub fn answer(&self, frame: &[u8], out: &mut [u8; REPLY_MAX], usable: impl Fn(MacAddr, Source) -> bool, now: Instant) -> Answer {
        if !self.enabled || frame.len() < 14 || !mac_at(frame, 0).is_multicast() {
            return Answer::NotEligible;
        }
        match ethertype_of(frame) {
            ethertype::ARP => {
                let Some(a) = Arp::parse(frame) else { return Answer::NotEligible };
                // a request for someone else's address; not a gratuitous one (spa == tpa)
                if a.op != 1 || !mac_at(frame, 0).is_broadcast() || a.spa == a.tpa || !usable_v4(a.tpa) {
                    return Answer::NotEligible;
                }
                match self.lookup(IpAddr::V4(a.tpa), now) {
                    Some((mac, s, _)) if usable(mac, s) => Answer::Hit(Family::V4, emit_arp_reply(out, &a, mac_at(frame, 6), mac)),
                    _ => Answer::Miss(Family::V4),
                }
            }
            ethertype::IPV6 => {
                let Some(nd) = Nd::parse(frame) else { return Answer::NotEligible };
                if nd.kind != ND_NS || !usable_v6(&nd.target) || nd.dst != solicited_node(&nd.target) {
                    return Answer::NotEligible;
                }
                let dad = nd.src.is_unspecified();
                // RFC 4861 §7.1.1: a DAD probe carries no source link-layer option
                if dad && nd.lla.is_some() {
                    return Answer::NotEligible;
                }
                match self.lookup(IpAddr::V6(nd.target), now) {
                    Some((mac, s, router)) if usable(mac, s) => {
                        Answer::Hit(Family::V6, emit_na(out, &nd, mac_at(frame, 6), mac, router))
                    }
                    _ => Answer::Miss(Family::V6),
                }
            }
            _ => Answer::NotEligible,
        }
    }
}

/// Whether `b` may still be used at `now`: within its lease if it came from one, else seen
/// within the ageing time.
fn fresh(ageing_ms: u64, b: &Binding, now: Instant) -> bool {
    if b.lease_end_ms != 0 {
        return now.as_millis() < b.lease_end_ms;
    }
    now.as_millis().saturating_sub(b.seen_ms) <= ageing_ms
}

fn mac_at(frame: &[u8], at: usize) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[at..at + 6]);
    MacAddr(m)
}

fn ethertype_of(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// An address a host can own (not 0.0.0.0, broadcast, multicast or loopback).
pub(crate) fn usable_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

fn usable_v6(a: &Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_loopback())
}

/// The solicited-node multicast address of `a` (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX.
fn solicited_node(a: &Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]))
}

/// An Ethernet/IPv4 ARP packet (RFC 826), untagged.
struct Arp {
    op: u16,
    sha: MacAddr,
    spa: Ipv4Addr,
    tpa: Ipv4Addr,
}

impl Arp {
    fn parse(f: &[u8]) -> Option<Arp> {
        let a = f.get(14..42)?;
        // htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4
        if a[0..6] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        let ip = |at: usize| Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]);
        Some(Arp { op: u16::from_be_bytes([a[6], a[7]]), sha: mac_at(a, 8), spa: ip(14), tpa: ip(24) })
    }
}

/// An untagged IPv6 neighbour solicitation or advertisement (RFC 4861 §4.3, §4.4), checked:
/// hop limit 255, code 0, ICMPv6 checksum right, options well formed.
struct Nd {
    kind: u8,
    flags: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    /// The source (NS) or target (NA) link-layer address option.
    lla: Option<MacAddr>,
}

impl Nd {
    fn parse(f: &[u8]) -> Option<Nd> {
        let ip = f.get(14..54)?;
        if ip[0] >> 4 != 6 || ip[6] != ICMPV6 || ip[7] != 255 {
            return None;
        }
        let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let icmp = f.get(54..54 + plen)?;
        if icmp.len() < 24 || !(icmp[0] == ND_NS || icmp[0] == ND_NA) || icmp[1] != 0 {
            return None;
        }
        let addr = |b: &[u8]| -> Ipv6Addr {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            Ipv6Addr::from(o)
        };
        let (src, dst) = (addr(&ip[8..24]), addr(&ip[24..40]));
        if !checksum::verify(icmp, checksum::pseudo_v6(&src.octets(), &dst.octets(), ICMPV6, plen as u32)) {
            return None;
        }
        let want = if icmp[0] == ND_NS { OPT_SLLA } else { OPT_TLLA };
        let mut lla = None;
        let mut opts = &icmp[24..];
        while !opts.is_empty() {
            let len = usize::from(*opts.get(1)?) * 8;
            if len == 0 || len > opts.len() {
                return None; // RFC 4861 §4.6: a zero-length option invalidates the message
            }
            if opts[0] == want && len >= 8 {
                lla = Some(mac_at(opts, 2));
            }
            opts = &opts[len..];
        }
        Some(Nd { kind: icmp[0], flags: icmp[4], src, dst, target: addr(&icmp[8..24]), lla })
    }
}

/// An ARP reply from `owner` to the request `req` of the host at `asker`; returns its length.
fn emit_arp_reply(out: &mut [u8; REPLY_MAX], req: &Arp, asker: MacAddr, owner: MacAddr) -> usize {
    let o = &mut out[..ARP_REPLY_LEN];
    o[0..6].copy_from_slice(&asker.0);
    o[6..12].copy_from_slice(&owner.0);
    o[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
    o[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    o[22..28].copy_from_slice(&owner.0);
    o[28..32].copy_from_slice(&req.tpa.octets());
    // to the asker (a probe's sender address is 0.0.0.0: so is the reply's target, RFC 5227)
    o[32..38].copy_from_slice(&req.sha.0);
    o[38..42].copy_from_slice(&req.spa.octets());
    ARP_REPLY_LEN
}

/// The neighbour advertisement `owner` would send for the solicitation `ns` from `asker`:
/// - to the asker (S flag set), or for a DAD probe (source ::) to all nodes, ff02::1, with S
///   clear (RFC 4861 §7.2.4);
/// - O flag set, as the kernel bridge's `neigh_suppress` does: the answer carries the owner's
///   own MAC, not a proxy's (RFC 4861 §7.2.8 asks O clear only of a proxy answering with its
///   own address);
/// - R flag as the owner last advertised it;
/// - from the target address, hop limit 255, a target link-layer option.
fn emit_na(out: &mut [u8; REPLY_MAX], ns: &Nd, asker: MacAddr, owner: MacAddr, router: bool) -> usize {
    let dad = ns.src.is_unspecified();
    let (eth_dst, ip_dst) = if dad {
        (MacAddr([0x33, 0x33, 0, 0, 0, 1]), Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1))
    } else {
        (asker, ns.src)
    };
    let o = &mut out[..REPLY_MAX];
    o[0..6].copy_from_slice(&eth_dst.0);
    o[6..12].copy_from_slice(&owner.0);
    o[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
    o[14..22].copy_from_slice(&[0x60, 0, 0, 0, 0, 32, ICMPV6, 255]);
    o[22..38].copy_from_slice(&ns.target.octets());
    o[38..54].copy_from_slice(&ip_dst.octets());
    let mut flags = NA_OVERRIDE;
    if !dad {
        flags |= NA_SOLICITED;
    }
    if router {
        flags |= NA_ROUTER;
    }
    let icmp = &mut o[54..86];
    icmp[..8].copy_from_slice(&[ND_NA, 0, 0, 0, flags, 0, 0, 0]);
    icmp[8..24].copy_from_slice(&ns.target.octets());
    icmp[24..26].copy_from_slice(&[OPT_TLLA, 1]);
    icmp[26..32].copy_from_slice(&owner.0);
    let c = checksum::finish(checksum::sum(icmp, checksum::pseudo_v6(&ns.target.octets(), &ip_dst.octets(), ICMPV6, 32)));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    REPLY_MAX
}

pub mod dhcp;

#[cfg(test)]
mod tests;
