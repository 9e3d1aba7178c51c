//! Properties the core must keep whatever bytes arrive, as functions over raw input.
//!
//! The fuzz targets in `fuzz/` call these with libFuzzer's input, and `tests/fuzz_replay.rs`
//! calls them with every file of the fuzz corpus and every input that once crashed, so a
//! plain `cargo test` (stable toolchain, no libFuzzer) re-checks everything the fuzzers
//! found. A violated property panics with a message that says which one.
//!
//! - [`check_ethernet`]: Ethernet/802.1Q views never panic on any length, the accessors agree
//!   with the bytes, and writing the parsed fields into a fresh buffer parses back the same.
//! - [`check_vxlan`]: the VXLAN view accepts exactly what RFC 7348 §5 accepts and an emitted
//!   header parses back to the same VNI and payload.
//! - [`check_gre`]: the GRE view refuses what RFC 2784/2890 refuse, finds the optional fields
//!   where the flags put them, and a header emitted from what was parsed parses back the same.
//! - [`check_ipv4`]: the outer IPv4 view accepts exactly the headers whose version, IHL and
//!   total length fit the buffer, and [`ip::inner_dscp`] reads any frame.
//! - [`check_qemu_stream`]: QEMU stream reassembly yields the same frames (and the same
//!   framing error) as a straightforward reading of the stream, however the bytes are split
//!   across reads.
//! - [`check_node`]: one whole node (the networks of a [`Fabric`]) driven by an arbitrary
//!   sequence of underlay datagrams, TAP frames (ARP among them), clock steps, ageing sweeps and
//!   peer flushes, checking the switch's promises after every step (see [`Node`]), ARP/ND
//!   suppression's included: an answer only ever names a MAC the FDB has behind a peer.
//! - [`check_reload`]: one network through reloads that change its peers and table, each
//!   handed over to the next generation while the old one still takes frames.
//! - [`check_pmtu`]: a "too big" reply to any frame is a well-formed frame back to its sender
//!   with correct checksums, and clamping the MSS of any TCP segment keeps its checksums right.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::checksum;
use super::fabric::{Fabric, NetEntry};
use super::offload::TcpSeg;
use super::pmtu::{self, Family};
use super::fdb::FdbConfig;
use super::network::{Action, Network, NetworkSpec};
use super::stats::DropReason;
use super::time::Instant;
use super::wire::ParseError;
use super::wire::gre::{self, GreError, GreHeader, GreRepr};
use super::wire::ip::{self, Ipv4Error, Ipv4Packet};
use super::wire::ethernet::{self, EthernetFrame, MacAddr};
use super::wire::vxlan::{self, VxlanHeader};
use super::{Encap, GreOptions, LocalPort, PeerIdx, Port, Vni};

/// Ethernet parsing: no panic at any length; parse → emit → parse gives the same fields.
pub fn check_ethernet(data: &[u8]) {
    let parsed = EthernetFrame::new_checked(data);
    if data.len() < ethernet::HEADER_LEN {
        assert_eq!(parsed.err(), Some(ParseError::Truncated), "short frame must be Truncated");
        return;
    }
    let f = parsed.expect("a frame of at least 14 bytes parses");
    let (dst, src, et) = (f.dst(), f.src(), f.ethertype());
    assert_eq!(dst.0, data[0..6], "dst is bytes 0..6");
    assert_eq!(src.0, data[6..12], "src is bytes 6..12");
    assert_eq!(et, u16::from_be_bytes([data[12], data[13]]), "ethertype is bytes 12..14");
    let l3 = f.l3();
    if let Some((off, _)) = l3 {
        assert!(off >= ethernet::HEADER_LEN && off <= data.len(), "l3 offset {off} outside the frame of {}", data.len());
        assert!((off - ethernet::HEADER_LEN).is_multiple_of(4) && off <= ethernet::HEADER_LEN + 8, "at most two 4-byte tags are skipped");
    }
    if let Some(vid) = f.vlan_id() {
        assert!(vid < 4096, "VLAN id is 12 bits");
        assert!(matches!(et, ethernet::ethertype::VLAN | ethernet::ethertype::QINQ), "VLAN id only for tagged frames");
    }
    let hash = f.flow_hash();

    // emit the parsed header into a fresh buffer with the same payload: parses back identical
    let mut copy = vec![0u8; data.len()];
    copy[ethernet::HEADER_LEN..].copy_from_slice(&data[ethernet::HEADER_LEN..]);
    let mut w = EthernetFrame::new_unchecked(&mut copy[..]);
    w.set_dst(dst);
    w.set_src(src);
    w.set_ethertype(et);
    assert_eq!(&copy[..], data, "parse -> emit -> bytes differ");
    let g = EthernetFrame::new_checked(&copy[..]).expect("re-parse");
    assert_eq!((g.dst(), g.src(), g.ethertype(), g.l3(), g.vlan_id()), (dst, src, et, l3, f.vlan_id()));
    assert_eq!(g.flow_hash(), hash, "flow hash is a function of the bytes");

    // MAC text form round-trips
    for m in [dst, src] {
        let text = m.to_string();
        assert_eq!(text.parse::<MacAddr>().ok(), Some(m), "MAC {text} does not parse back");
        assert_eq!(m.is_multicast(), !m.is_unicast());
        assert!(!m.is_broadcast() || m.is_multicast(), "broadcast is multicast");
    }
    // and MAC parsing of arbitrary text never panics
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(m) = s.parse::<MacAddr>()
    {
        assert_eq!(m.to_string().parse::<MacAddr>().ok(), Some(m));
    }
}

/// VXLAN parsing: accepted iff long enough and the I flag is set; emit → parse round-trips.
pub fn check_vxlan(data: &[u8]) {
    match VxlanHeader::new_checked(data) {
        Err(ParseError::Truncated) => assert!(data.len() < vxlan::HEADER_LEN, "Truncated for a full header"),
        Err(ParseError::BadFlags) => {
            assert!(data.len() >= vxlan::HEADER_LEN && data[0] & 0x08 == 0, "BadFlags with the I flag set")
        }
        Ok(h) => {
            assert!(data.len() >= vxlan::HEADER_LEN && data[0] & 0x08 != 0);
            let vni = h.vni();
            assert!(vni.get() <= Vni::MAX_VXLAN, "VNI is 24 bits");
            assert_eq!(h.payload(), &data[vxlan::HEADER_LEN..]);
            // reserved bits are ignored on receipt and zero on send
            let mut out = vec![0xa5u8; data.len()];
            vxlan::emit(&mut out, vni);
            out[vxlan::HEADER_LEN..].copy_from_slice(h.payload());
            assert_eq!(&out[..vxlan::HEADER_LEN], &[0x08, 0, 0, 0, data[4], data[5], data[6], 0], "emitted header");
            let again = VxlanHeader::new_checked(&out[..]).expect("emitted header parses");
            assert_eq!(again.vni(), vni);
            assert_eq!(again.payload(), h.payload());
        }
    }
}

/// GRE parsing (RFC 2784/2890): refusals by reason, field positions, emit → parse round trip.
pub fn check_gre(data: &[u8]) {
    let _ = gre::internet_checksum(data); // any length, odd ones included
    let flags = data.get(0..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match GreHeader::new_checked(data) {
        Err(GreError::Truncated) => {
            let f = flags.unwrap_or(0);
            let want = 4 + 4 * ((f >> 15 & 1) + (f >> 13 & 1) + (f >> 12 & 1)) as usize;
            assert!(data.len() < 4 || data.len() < want, "Truncated although {} >= {want}", data.len());
        }
        Err(GreError::Version) => assert!(flags.is_some_and(|f| f & 7 != 0), "Version error for version 0"),
        Err(GreError::Routing) => assert!(flags.is_some_and(|f| f & 0x4000 != 0 && f & 7 == 0), "Routing error without R"),
        Ok(h) => {
            let f = flags.expect("accepted header has flags");
            assert!(f & 7 == 0 && f & 0x4000 == 0, "accepted version {} / routing bit", f & 7);
            let hl = h.header_len();
            assert!(hl <= data.len() && (4..=16).contains(&hl));
            assert_eq!(h.has_key(), h.key().is_some());
            assert_eq!(h.has_checksum(), h.checksum().is_some());
            if let Some(k) = h.key() {
                let at = if h.has_checksum() { 8 } else { 4 };
                assert_eq!(k.to_be_bytes(), data[at..at + 4], "key read from the wrong offset");
            }
            assert_eq!(h.payload(), &data[hl..]);
            // emit what we understood (key, checksum) around the same payload: parses back
            let repr = GreRepr { key: h.key(), checksum: h.has_checksum() };
            let mut out = vec![0u8; repr.header_len() + h.payload().len()];
            out[repr.header_len()..].copy_from_slice(h.payload());
            repr.emit(&mut out);
            let g = GreHeader::new_checked(&out[..]).expect("emitted GRE header parses");
            assert_eq!((g.key(), g.has_checksum(), g.has_sequence()), (h.key(), h.has_checksum(), false));
            assert_eq!(g.protocol(), gre::PROTO_TEB);
            assert!(g.checksum_ok(), "our own checksum does not verify");
            assert_eq!(g.payload(), h.payload());
            if h.has_checksum() && h.checksum_ok() {
                assert_eq!(gre::internet_checksum(data), 0);
            }
        }
    }
}

/// Outer IPv4 parsing and the inner DSCP reader.
pub fn check_ipv4(data: &[u8]) {
    let dscp = ip::inner_dscp(data);
    assert!(dscp < 64, "DSCP is six bits");
    let ihl = data.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
    let total = data.get(2..4).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let well_formed = data.len() >= ip::IPV4_MIN_HEADER_LEN && data[0] >> 4 == 4 && ihl >= 20 && total >= ihl;
    match Ipv4Packet::new_checked(data) {
        Ok(p) => {
            assert!(well_formed && data.len() >= total, "accepted a bad IPv4 header");
            assert_eq!((p.header_len(), p.total_len()), (ihl, total));
            assert_eq!(p.payload(), &data[ihl..total]);
            assert_eq!(p.src().octets(), data[12..16]);
            assert_eq!(p.dst().octets(), data[16..20]);
            assert_eq!(p.protocol(), data[9]);
        }
        Err(Ipv4Error::Truncated) => assert!(data.len() < ip::IPV4_MIN_HEADER_LEN || (well_formed && data.len() < total)),
        Err(Ipv4Error::Malformed) => assert!(data.len() >= ip::IPV4_MIN_HEADER_LEN && !well_formed),
    }
}

/// QEMU `-netdev stream` reassembly: the first input byte picks how the rest (the stream) is
/// cut into reads; the frames and the error must not depend on the cut.
pub fn check_qemu_stream(data: &[u8]) {
    use super::wire::qemu::{self, FramingError, StreamDecoder};
    let Some((&cut, stream)) = data.split_first() else { return };
    // reference: read the stream front to back
    let mut want: Vec<&[u8]> = Vec::new();
    let mut want_err = None;
    let mut rest = stream;
    while let Some(h) = rest.first_chunk::<4>() {
        let len = u32::from_be_bytes(*h);
        if len == 0 || len as usize > qemu::MAX_FRAME {
            want_err = Some(FramingError { len });
            break;
        }
        let Some(frame) = rest.get(4..4 + len as usize) else { break };
        want.push(frame);
        rest = &rest[4 + len as usize..];
    }
    // decoder: reads of 1..=cut+1 bytes, varying
    let mut dec = StreamDecoder::new(0);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut got_err = None;
    let mut fed = 0;
    let mut i = 0usize;
    'feed: while fed < stream.len() {
        i += 1;
        let n = (1 + (usize::from(cut) * i) % (usize::from(cut) + 1)).min(stream.len() - fed);
        let spare = dec.spare();
        assert!(!spare.is_empty(), "decoder has no room for the next read");
        let n = n.min(spare.len());
        spare[..n].copy_from_slice(&stream[fed..fed + n]);
        dec.filled(n);
        fed += n;
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => got.push(f.to_vec()),
                Ok(None) => break,
                Err(e) => {
                    got_err = Some(e);
                    assert_eq!(dec.next_frame().err(), Some(e), "a broken stream stays broken");
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got_err, want_err, "framing error");
    assert_eq!(got.len(), want.len(), "number of frames");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.as_slice(), *w, "frame bytes");
    }
    if want_err.is_none() {
        assert_eq!(dec.pending(), rest.len(), "bytes of the incomplete last frame");
    }
    // the length prefix we write reads back
    for w in &want {
        assert_eq!(u32::from_be_bytes(qemu::header(w.len())) as usize, w.len());
    }
}

/// Take bytes off the front of the fuzz input; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// Underlay addresses of the test node's world: .2 .3 .4 are peers (of some network), .9 is
/// nobody's peer, and 2001:db8::2 peers with the IPv6 network.
const ADDRS: [IpAddr; 5] = [
    IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2)),
    IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 3)),
    IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 4)),
    IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 9)),
    IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
];
const UDP_PORTS: [u16; 3] = [vxlan::DEFAULT_PORT, 8472, 4790];
const VNIS: [u32; 4] = [42, 43, 44, 0x00ff_ffff];

/// One node in memory: three VXLAN and two GRE networks (keyed with checksums, keyless) with
/// small tables so that caps, eviction and ageing
/// are reached within a few dozen frames.
///
/// Checked after every step:
/// - a datagram is only accepted for a network whose (UDP port, VNI) it names and whose peer
///   list holds its outer source (isolation, spoofing);
/// - a frame is never sent back to its ingress, a frame from a tunnel never goes into a
///   tunnel (split horizon), and every output names an existing port or peer;
/// - the source of a forwarded frame is then found on its ingress port (learning);
/// - every FDB stays within its cap, its per-port counts add up to its size, and its event
///   counters agree with its size (learned − evicted − expired − flushed = entries);
/// - a frame sent into a tunnel, encapsulated, parses back to the same VNI and bytes;
/// - the counters agree with what the node was fed.
pub struct Node {
    pub fabric: Fabric<()>,
    now: u64,
    /// Frames fed per network from local ports / from peers (accepted by classification).
    fed_local: Vec<u64>,
    fed_peer: Vec<Vec<u64>>,
    /// The latest time any step saw (the clock may step back a little).
    max_now: u64,
    /// Flooded frames per (network, ingress): first flood time and count, for the storm limit.
    floods: std::collections::HashMap<(usize, Port), (u64, u64)>,
}

/// A network of the model: where it is (encapsulation, VNI, UDP port, peers), then its size
/// and limits (local ports, FDB, broadcast rate).
fn spec(name: &str, encap: Encap, vni: u32, port: u16, peers: &[IpAddr]) -> NetworkSpec {
    NetworkSpec { encap, mtu: 200, peers: peers.iter().map(|&ip| SocketAddr::new(ip, port)).collect(), ..NetworkSpec::vxlan(name, vni, Vec::new()) }
}

fn limits(spec: NetworkSpec, local_ports: u16, fdb: FdbConfig, bum_pps_limit: Option<u32>) -> NetworkSpec {
    NetworkSpec { local_ports, fdb, bum_pps_limit, ..spec }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    pub fn new() -> Self {
        let small = |max_entries, move_limit, window: u64| FdbConfig {
            ageing: Duration::from_secs(5),
            max_entries,
            move_limit,
            move_window: Duration::from_secs(window),
        };
        let gre = |key, checksum| Encap::Gre(GreOptions { key, checksum });
        // blue and keyless answer ARP/ND from snooped bindings
        let suppress = |mut s: NetworkSpec| {
            s.arp_suppress = true;
            s
        };
        let specs = [
            (suppress(limits(spec("blue", Encap::Vxlan, 42, 4789, &ADDRS[0..2]), 2, small(8, 3, 10), Some(20))), 4789),
            (limits(spec("red", Encap::Vxlan, 43, 4789, &ADDRS[1..3]), 1, small(4, 5, 180), None), 4789),
            (limits(spec("green", Encap::Vxlan, 42, 4790, &ADDRS[4..5]), 3, small(6, 1, 2), Some(1)), 4790),
            (limits(spec("keyed", gre(true, true), 43, 0, &[ADDRS[0], ADDRS[2]]), 1, small(5, 2, 5), Some(5)), 0),
            (suppress(limits(spec("keyless", gre(false, false), 0, 0, &ADDRS[1..2]), 2, small(5, 0, 1), None)), 0),
        ];
        let ports: Vec<u16> = specs.iter().map(|(_, p)| *p).collect();
        let networks: Vec<NetEntry<()>> =
            specs.into_iter().map(|(s, _)| NetEntry { net: Arc::new(Network::new(s)), io: () }).collect();
        let fed_peer = networks.iter().map(|e| vec![0; e.net.peers.len()]).collect();
        Node {
            fed_local: vec![0; networks.len()],
            fed_peer,
            fabric: Fabric::new(networks, &ports),
            now: 1000,
            max_now: 1000,
            floods: Default::default(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    /// A frame built from a small pool of addresses, so the fuzzer meets known MACs often.
    fn frame(inp: &mut Input<'_>) -> Vec<u8> {
        let mac = |i: u8, inp: &mut Input<'_>| match i % 16 {
            12 => MacAddr::BROADCAST,
            13 => MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]),
            14 => MacAddr([0; 6]),
            15 => MacAddr::from_bytes(inp.bytes(6)).unwrap_or_default(),
            n => MacAddr([0x02, 0, 0, 0, 0, n]),
        };
        let (d, s) = (inp.u8(), inp.u8());
        let dst = mac(d, inp);
        let src = mac(s, inp);
        // payload of zeros (no input spent on it); long enough to cross the MTU of 200
        let l = inp.u8();
        let len = 14 + 2 * usize::from(l);
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&ethernet::ethertype::IPV4.to_be_bytes());
        if d >> 6 == 2 {
            // an ARP request (to broadcast) or reply between pool addresses 198.51.100.0..=15,
            // from the frame's source MAC (for ARP/ND suppression: snooped, answered)
            f.resize(len.max(42), 0);
            f[12..22].copy_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, if dst.is_broadcast() { 1 } else { 2 }]);
            f[22..28].copy_from_slice(&src.0);
            f[28..32].copy_from_slice(&[198, 51, 100, s & 0x0f]);
            f[32..38].copy_from_slice(&if dst.is_broadcast() { [0; 6] } else { dst.0 });
            f[38..42].copy_from_slice(&[198, 51, 100, l & 0x0f]);
        }
        f
    }

    /// Run one step of the fuzz input; false once the input is used up.
    fn step(&mut self, inp: &mut Input<'_>) -> bool {
        if inp.is_empty() {
            return false;
        }
        match inp.u8() % 11 {
            0 => {
                // a raw underlay datagram
                let (a, p) = (inp.u8(), inp.u8());
                let n = usize::from(inp.u8());
                let d = inp.bytes(n).to_vec();
                self.underlay(ADDRS[usize::from(a) % ADDRS.len()], UDP_PORTS[usize::from(p) % UDP_PORTS.len()], &d);
            }
            1 => {
                // a well-formed VXLAN datagram around a pool frame
                let (a, p, v) = (inp.u8(), inp.u8(), inp.u8());
                let mut d = vec![0u8; vxlan::HEADER_LEN];
                vxlan::emit(&mut d, Vni::new_unchecked(VNIS[usize::from(v) % VNIS.len()]));
                d.extend_from_slice(&Self::frame(inp));
                self.underlay(ADDRS[usize::from(a) % ADDRS.len()], UDP_PORTS[usize::from(p) % UDP_PORTS.len()], &d);
            }
            2 => {
                let (n, p) = (inp.u8(), inp.u8());
                let len = usize::from(inp.u16() % 300);
                let f = inp.bytes(len).to_vec();
                self.local(usize::from(n), p, &f);
            }
            3 | 4 => {
                let (n, p) = (inp.u8(), inp.u8());
                let f = Self::frame(inp);
                self.local(usize::from(n), p, &f);
            }
            5 => {
                // the clock moves (data threads may also see it a little out of order)
                let d = inp.u16();
                if d & 0x8000 != 0 {
                    self.now = self.now.saturating_sub(u64::from(d & 0x3ff));
                } else {
                    self.now += u64::from(d) * 4;
                }
                self.max_now = self.max_now.max(self.now);
            }
            6 => {
                let now = self.now();
                // the control path's tick: ageing, and the pin events it logs
                for e in &self.fabric.networks {
                    e.net.fdb.sweep(now);
                    e.net.sweep_neigh(now);
                    for c in e.net.check_peers(now) {
                        let port = Port::Peer(c.peer);
                        if c.state == super::liveness::PeerState::Down {
                            assert_eq!(e.net.fdb.count_on(port), 0, "{}: MACs left behind a peer that went down", e.net.name());
                        }
                        assert_eq!(e.net.peers[usize::from(c.peer.0)].liveness.state(), c.state);
                    }
                    let (events, _) = e.net.fdb.take_pin_events();
                    let cfg = e.net.fdb.config();
                    for ev in events {
                        assert!(cfg.move_limit > 0, "{}: pinned with damping off", e.net.name());
                        assert_ne!(ev.kept, ev.refused, "pinned against its own port");
                        assert!(ev.moves > cfg.move_limit, "pinned after {} moves (limit {})", ev.moves, cfg.move_limit);
                    }
                }
            }
            10 => {
                // a peer's keepalive
                let (a, p, v) = (inp.u8(), inp.u8(), inp.u8());
                let mut d = vec![0u8; vxlan::HEADER_LEN];
                vxlan::emit(&mut d, Vni::new_unchecked(VNIS[usize::from(v) % VNIS.len()]));
                d.extend_from_slice(&super::liveness::keepalive_frame(u32::from(a)));
                self.underlay(ADDRS[usize::from(a) % ADDRS.len()], UDP_PORTS[usize::from(p) % UDP_PORTS.len()], &d);
            }
            8 => {
                // a raw GRE packet (the IP payload)
                let a = inp.u8();
                let n = usize::from(inp.u8());
                let d = inp.bytes(n).to_vec();
                self.underlay_gre(ADDRS[usize::from(a) % ADDRS.len()], &d);
            }
            9 => {
                // a well-formed GRE packet around a pool frame
                let (a, k) = (inp.u8(), inp.u8());
                let repr = GreRepr { key: (k & 1 != 0).then_some(u32::from(k >> 1) % 4 + 42), checksum: k & 0x80 != 0 };
                let f = Self::frame(inp);
                let mut d = vec![0u8; repr.header_len() + f.len()];
                d[repr.header_len()..].copy_from_slice(&f);
                repr.emit(&mut d);
                self.underlay_gre(ADDRS[usize::from(a) % ADDRS.len()], &d);
            }
            _ => {
                let (n, p) = (inp.u8(), inp.u8());
                let nets = &self.fabric.networks;
                let e = &nets[usize::from(n) % nets.len()];
                let port = if p & 1 == 0 {
                    Port::Peer(PeerIdx(u16::from(p >> 1) % e.net.peers.len() as u16))
                } else {
                    Port::Local(LocalPort(u16::from(p >> 1) % e.net.spec.local_ports))
                };
                e.net.fdb.flush_port(port, self.now());
                assert_eq!(e.net.fdb.count_on(port), 0, "flush left entries on {port:?}");
            }
        }
        self.check_tables();
        true
    }

    fn underlay(&mut self, src: IpAddr, udp_port: u16, datagram: &[u8]) {
        let now = self.now();
        let c = match self.fabric.classify_vxlan(udp_port, src, datagram) {
            Err(r) => {
                let hdr = VxlanHeader::new_checked(datagram);
                #[allow(clippy::wildcard_enum_match_arm, reason = "every other reason is a refusal the oracle does not expect")]
                match r.reason {
                    DropReason::Malformed => assert!(datagram.len() < vxlan::HEADER_LEN),
                    DropReason::BadFlags => assert!(hdr.is_err()),
                    DropReason::UnknownVni => {
                        let vni = hdr.expect("UnknownVni after a parsed header").vni();
                        assert!(
                            !self.fabric.networks.iter().any(|e| e.net.spec.encap == Encap::Vxlan && e.net.spec.vni == vni && self.port_of(e) == udp_port),
                            "vni {vni} on port {udp_port} refused although configured"
                        );
                    }
                    DropReason::UnknownPeer => {
                        let e = &self.fabric.networks[r.network.expect("UnknownPeer names its network")];
                        assert!(e.net.peer_by_ip(src).is_none(), "a configured peer was refused");
                    }
                    other => panic!("classification refused with {other:?}"),
                }
                return;
            }
            Ok(c) => c,
        };
        let hdr = VxlanHeader::new_checked(datagram).expect("accepted datagram parses");
        let idx = self.index_of(&c.entry.net);
        let net = &c.entry.net;
        assert_eq!(net.spec.encap, Encap::Vxlan, "VXLAN datagram accepted into a GRE network");
        assert_eq!(net.spec.vni, hdr.vni(), "datagram accepted into another VNI");
        assert_eq!(self.port_of(c.entry), udp_port, "datagram accepted from another UDP port");
        assert_eq!(net.peers[usize::from(c.peer.0)].addr.ip(), src, "datagram charged to the wrong peer");
        assert_eq!(c.inner, hdr.payload());
        let ingress = Port::Peer(c.peer);
        let action = net.from_peer(c.peer, c.inner, now);
        if action != Action::Consumed {
            self.fed_peer[idx][usize::from(c.peer.0)] += 1;
            net.stats.peer_rx(super::stats::Shard::UNDERLAY, usize::from(c.peer.0), datagram.len());
        }
        assert!(net.peers[usize::from(c.peer.0)].last_seen.load(Relaxed) >= 1, "peer not marked seen");
        self.check_action(idx, ingress, c.inner, action);
    }

    fn underlay_gre(&mut self, src: IpAddr, packet: &[u8]) {
        let now = self.now();
        let c = match self.fabric.classify_gre(src, packet) {
            Err(r) => {
                let hdr = GreHeader::new_checked(packet);
                #[allow(clippy::wildcard_enum_match_arm, reason = "every other reason is a refusal the oracle does not expect")]
                match r.reason {
                    DropReason::Malformed => assert_eq!(hdr.err(), Some(GreError::Truncated)),
                    DropReason::GreVersion => assert_eq!(hdr.err(), Some(GreError::Version)),
                    DropReason::GreRouting => assert_eq!(hdr.err(), Some(GreError::Routing)),
                    DropReason::GreProtocol => assert_ne!(hdr.expect("parsed").protocol(), gre::PROTO_TEB),
                    DropReason::GreChecksum => assert!(!hdr.expect("parsed").checksum_ok()),
                    DropReason::UnknownVni | DropReason::GreKeyUnexpected | DropReason::GreKeyMissing => {
                        let key = hdr.expect("parsed").key();
                        assert!(
                            !self.fabric.networks.iter().any(|e| Self::gre_key(e) == Some(key)),
                            "GRE key {key:?} refused although a network uses it"
                        );
                    }
                    DropReason::UnknownPeer => {
                        let e = &self.fabric.networks[r.network.expect("UnknownPeer names its network")];
                        assert!(e.net.peer_by_ip(src).is_none(), "a configured GRE peer was refused");
                    }
                    other => panic!("GRE classification refused with {other:?}"),
                }
                return;
            }
            Ok(c) => c,
        };
        let hdr = GreHeader::new_checked(packet).expect("accepted GRE packet parses");
        assert!(hdr.checksum_ok(), "accepted a GRE packet with a bad checksum");
        assert_eq!(hdr.protocol(), gre::PROTO_TEB);
        assert_eq!(Self::gre_key(c.entry), Some(hdr.key()), "GRE packet accepted into a network of another key");
        let net = c.entry.net.clone();
        assert_eq!(net.peers[usize::from(c.peer.0)].addr.ip(), src, "GRE packet charged to the wrong peer");
        assert_eq!(c.inner, hdr.payload());
        let idx = self.index_of(&net);
        self.fed_peer[idx][usize::from(c.peer.0)] += 1;
        net.stats.peer_rx(super::stats::Shard::UNDERLAY, usize::from(c.peer.0), packet.len());
        let inner = c.inner.to_vec();
        let action = net.from_peer(c.peer, &inner, now);
        self.check_action(idx, Port::Peer(c.peer), &inner, action);
    }

    /// The GRE key a network's packets carry (`Some(None)` = keyless), `None` for VXLAN.
    fn gre_key(e: &NetEntry<()>) -> Option<Option<u32>> {
        match e.net.spec.encap {
            Encap::Gre(o) => Some(o.key.then_some(e.net.spec.vni.get())),
            Encap::Vxlan => None,
        }
    }

    fn local(&mut self, n: usize, p: u8, frame: &[u8]) {
        let idx = n % self.fabric.networks.len();
        let net = self.fabric.networks[idx].net.clone();
        let port = LocalPort(u16::from(p) % net.spec.local_ports);
        self.fed_local[idx] += 1;
        net.stats.tap_rx(super::stats::Shard::LOCAL, frame.len());
        let action = net.from_local(port, frame, self.now());
        self.check_action(idx, Port::Local(port), frame, action);
        if action == Action::Flood {
            self.check_answer(&net, Port::Local(port), frame);
        }
    }

    /// ARP/ND suppression answers only for a target whose MAC the FDB has behind a peer (never
    /// one on the asking side), to the asker, within the reply buffer.
    fn check_answer(&self, net: &Network, ingress: Port, frame: &[u8]) {
        let now = self.now();
        let mut out = [0xa5u8; super::neigh::REPLY_MAX];
        let Some(len) = net.answer_neigh(frame, &mut out, now) else { return };
        assert!(net.spec.arp_suppress, "{}: answered without arp_suppress", net.name());
        assert!(len == super::neigh::ARP_REPLY_LEN || len == super::neigh::REPLY_MAX, "answer of {len} bytes");
        let owner = MacAddr::from_bytes(&out[6..12]).expect("six bytes");
        let on = net.fdb.lookup(owner, now);
        assert!(matches!(on, Some(Port::Peer(_))), "{}: answered for {owner}, which the FDB has on {on:?}", net.name());
        assert_ne!(on, Some(ingress));
        let asker = EthernetFrame::new_checked(frame).expect("answered frame has a header").src();
        let dst = MacAddr::from_bytes(&out[0..6]).expect("six bytes");
        assert!(dst == asker || dst == MacAddr([0x33, 0x33, 0, 0, 0, 1]), "answer to {dst}, asked by {asker}");
    }

    fn check_action(&mut self, idx: usize, ingress: Port, frame: &[u8], action: Action) {
        let net = &self.fabric.networks[idx].net;
        let now = self.now();
        let valid = |p: Port| match p {
            Port::Local(LocalPort(l)) => l < net.spec.local_ports,
            Port::Peer(PeerIdx(i)) => usize::from(i) < net.peers.len(),
        };
        let outputs: Vec<Port> = match action {
            Action::Drop(r) => {
                net.stats.count_drop(super::stats::Shard::CONTROL, r);
                Vec::new()
            }
            Action::Consumed => {
                assert!(ingress.is_peer() && super::liveness::is_keepalive(frame), "consumed a frame that is no keepalive");
                Vec::new()
            }
            Action::Local(p) => vec![Port::Local(p)],
            Action::Peer(p) => vec![Port::Peer(p)],
            Action::Flood => net.flood_ports(ingress).collect(),
        };
        for &o in &outputs {
            assert!(valid(o), "output {o:?} is not a port of {}", net.name());
            assert_ne!(o, ingress, "frame sent back to its ingress");
            assert!(!(ingress.is_peer() && o.is_peer()), "tunnel-to-tunnel forwarding {ingress:?} -> {o:?}");
            if o.is_peer() {
                // encapsulate as the data path does and parse it back
                match net.spec.encap {
                    Encap::Vxlan => {
                        let mut d = vec![0u8; vxlan::HEADER_LEN + frame.len()];
                        vxlan::emit(&mut d, net.spec.vni);
                        d[vxlan::HEADER_LEN..].copy_from_slice(frame);
                        let h = VxlanHeader::new_checked(&d[..]).expect("our own encapsulation parses");
                        assert_eq!((h.vni(), h.payload()), (net.spec.vni, frame));
                    }
                    Encap::Gre(opt) => {
                        let repr = GreRepr { key: opt.key.then_some(net.spec.vni.get()), checksum: opt.checksum };
                        let mut d = vec![0u8; repr.header_len() + frame.len()];
                        d[repr.header_len()..].copy_from_slice(frame);
                        repr.emit(&mut d);
                        let h = GreHeader::new_checked(&d[..]).expect("our own GRE encapsulation parses");
                        assert!(h.checksum_ok());
                        assert_eq!((h.key(), h.payload()), (repr.key, frame));
                    }
                }
            }
        }
        if let Action::Flood = action {
            let locals = outputs.iter().filter(|p| !p.is_peer()).count();
            let expect_locals = usize::from(net.spec.local_ports) - usize::from(!ingress.is_peer());
            assert_eq!(locals, expect_locals, "a flood reaches every other local port");
            if !ingress.is_peer() {
                assert_eq!(outputs.len() - locals, net.peers.len(), "a local flood reaches every peer");
            }
        }
        if let Action::Flood = action
            && let Some(limit) = net.spec.bum_pps_limit
        {
            let max_now = self.max_now.max(self.now);
            let (first, n) = {
                let e = self.floods.entry((idx, ingress)).or_insert((self.now, 0));
                e.1 += 1;
                *e
            };
            // a burst of one second's worth, then the rate
            let allowed = u64::from(limit) + u64::from(limit) * max_now.saturating_sub(first) / 1000 + 1;
            assert!(n <= allowed, "{}: {n} floods from {ingress:?} since {first} ms, limit {limit}/s", net.name());
        }
        if let Action::Drop(DropReason::MacPinned) = action {
            let src = EthernetFrame::new_checked(frame).expect("pinned frame has a header").src();
            assert!(net.fdb.config().move_limit > 0, "{}: MAC pinned with damping off", net.name());
            assert!(net.fdb.is_pinned(src, now), "dropped as pinned but not pinned");
            let on = net.fdb.lookup(src, now);
            assert!(on.is_some() && on != Some(ingress), "pinned MAC {src} not kept on another port ({on:?})");
        }
        if !matches!(action, Action::Drop(_) | Action::Consumed) {
            let eth = EthernetFrame::new_checked(frame).expect("a forwarded frame has an Ethernet header");
            assert!(eth.src().is_unicast() && !eth.src().is_zero(), "forwarded a frame with source {}", eth.src());
            assert_eq!(
                net.fdb.lookup(eth.src(), now),
                Some(ingress),
                "{}: source {} not learned on its ingress at {now} (table {}/{}, {:?})",
                net.name(),
                eth.src(),
                net.fdb.len(),
                net.fdb.config().max_entries,
                net.fdb.entries(now)
            );
            if eth.dst().is_unicast()
                && let Some(known) = net.fdb.lookup(eth.dst(), now)
                    && known != ingress && !(ingress.is_peer() && known.is_peer()) {
                        assert_eq!(outputs, vec![known], "known unicast goes to exactly its port");
                    }
        }
        if let Action::Drop(DropReason::Malformed) = action {
            assert!(frame.len() < ethernet::HEADER_LEN);
        }
    }

    fn check_tables(&self) {
        let now = self.now();
        for (i, e) in self.fabric.networks.iter().enumerate() {
            let fdb = &e.net.fdb;
            let cap = fdb.config().max_entries;
            let len = fdb.len();
            assert!(len <= cap, "{}: FDB holds {len} entries, cap {cap}", e.net.name());
            assert!(e.net.neigh.len() <= cap, "{}: {} bindings, cap {cap}", e.net.name(), e.net.neigh.len());
            let ports = (0..e.net.spec.local_ports)
                .map(|l| Port::Local(LocalPort(l)))
                .chain((0..e.net.peers.len() as u16).map(|p| Port::Peer(PeerIdx(p))));
            let per_port: usize = ports.map(|p| fdb.count_on(p)).sum();
            assert_eq!(per_port, len, "{}: per-port counts do not add up", e.net.name());
            let ev = &fdb.events;
            let (l, ev_, ex, fl) = (ev.learned.load(Relaxed), ev.evicted.load(Relaxed), ev.expired.load(Relaxed), ev.flushed.load(Relaxed));
            assert_eq!(l, ev_ + ex + fl + len as u64, "{}: learned {l} != evicted {ev_} + expired {ex} + flushed {fl} + entries {len}", e.net.name());
            let rows = fdb.entries(now);
            assert!(rows.len() <= len);
            let snap = e.net.stats.snapshot();
            assert_eq!(snap.tap_rx_frames, self.fed_local[i], "tap_rx_frames");
            for (p, fed) in snap.peers.iter().zip(&self.fed_peer[i]) {
                assert_eq!(p.rx_packets, *fed, "peer rx_packets");
            }
        }
    }

    fn index_of(&self, net: &Arc<Network>) -> usize {
        self.fabric.networks.iter().position(|e| Arc::ptr_eq(&e.net, net)).expect("network of the fabric")
    }

    fn port_of(&self, e: &NetEntry<()>) -> u16 {
        e.net.spec.peers.first().map_or(vxlan::DEFAULT_PORT, |p| p.port())
    }
}

/// Drive one in-memory node with `data` (see [`Node`]).
pub fn check_node(data: &[u8]) {
    let mut node = Node::new();
    let mut inp = Input(data);
    while node.step(&mut inp) {}
}

/// Peer addresses a reloaded network picks its peers from.
const RELOAD_POOL: [u8; 4] = [2, 3, 4, 5];

/// One network through a sequence of reloads ([`check_reload`]).
struct Reloads {
    cur: Arc<Network>,
    /// The previous generation while the data path still uses it, with its handover.
    pending: Option<(Arc<Network>, super::handover::Handover)>,
    now: u64,
    /// Frames read from local ports, over every generation.
    fed_local: u64,
    /// Tunnel packets from each pool address since it last became a peer.
    fed_peer: [u64; RELOAD_POOL.len()],
    /// (MAC, where it was seen): `None` = a local port, `Some(i)` = pool address `i`.
    seen: std::collections::HashSet<(MacAddr, Option<usize>)>,
    /// Counters read before, which must never go back.
    last_tap_rx: u64,
}

fn pool_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, RELOAD_POOL[i]], vxlan::DEFAULT_PORT))
}

fn reload_spec(mask: u8, cap: u8, move_limit: u8) -> NetworkSpec {
    NetworkSpec {
        mtu: 200,
        fdb: FdbConfig {
            ageing: Duration::from_secs(10),
            max_entries: 1 + usize::from(cap % 12),
            move_limit: u32::from(move_limit % 4),
            move_window: Duration::from_secs(5),
        },
        local_ports: 2,
        ..NetworkSpec::vxlan("blue", 42, (0..RELOAD_POOL.len()).filter(|i| mask & (1 << i) != 0).map(pool_addr).collect())
    }
}

impl Reloads {
    fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    /// The generation a frame meets: the old one while it is still in use, if `old` says so.
    fn generation(&self, old: bool) -> Arc<Network> {
        match (&self.pending, old) {
            (Some((o, _)), true) => o.clone(),
            _ => self.cur.clone(),
        }
    }

    fn step(&mut self, inp: &mut Input<'_>) -> bool {
        if inp.is_empty() {
            return false;
        }
        let op = inp.u8();
        let old = op & 0x80 != 0;
        match op % 6 {
            0 => {
                let net = self.generation(old);
                let port = LocalPort(u16::from(inp.u8()) % net.spec.local_ports);
                let f = Node::frame(inp);
                net.stats.tap_rx(super::stats::Shard::LOCAL, f.len());
                self.fed_local += 1;
                let action = net.from_local(port, &f, self.now());
                self.check_action(&net, Port::Local(port), &f, action);
            }
            1 => {
                let net = self.generation(old);
                let a = usize::from(inp.u8()) % RELOAD_POOL.len();
                let f = Node::frame(inp);
                let Some(peer) = net.peer_by_ip(pool_addr(a).ip()) else { return true };
                // counted where it lands: carried over only if the address stays a peer
                if Arc::ptr_eq(&net, &self.cur) || self.cur.peer_by_ip(pool_addr(a).ip()).is_some() {
                    self.fed_peer[a] += 1;
                }
                let action = net.receive_from_peer(peer, &f, f.len() + 50, super::stats::Shard::UNDERLAY, self.now());
                self.check_action(&net, Port::Peer(peer), &f, action);
            }
            2 => self.now += u64::from(inp.u16()) * 4,
            3 => {
                self.finish();
                let (mask, cap, ml) = (inp.u8(), inp.u8(), inp.u8());
                let spec = reload_spec(mask, cap, ml);
                let (next, h) = self.cur.successor(spec, self.now());
                for (i, f) in self.fed_peer.iter_mut().enumerate() {
                    if next.peer_by_ip(pool_addr(i).ip()).is_none() {
                        *f = 0;
                    }
                }
                let prev = std::mem::replace(&mut self.cur, Arc::new(next));
                self.pending = Some((prev, h));
            }
            4 => self.finish(),
            _ => {
                self.cur.fdb.sweep(self.now());
                if inp.u8() & 1 == 0 {
                    let p = PeerIdx(u16::from(inp.u8()) % (self.cur.peers.len().max(1) as u16));
                    self.cur.fdb.flush_port(Port::Peer(p), self.now());
                }
            }
        }
        self.check();
        true
    }

    fn finish(&mut self) {
        if let Some((old, h)) = self.pending.take() {
            h.finish(&old, &self.cur, self.now());
        }
    }

    fn check_action(&mut self, net: &Network, ingress: Port, frame: &[u8], action: Action) {
        if let Ok(eth) = EthernetFrame::new_checked(frame) {
            let from = match ingress {
                Port::Local(_) => None,
                Port::Peer(p) => RELOAD_POOL.iter().position(|&a| IpAddr::from([192, 0, 2, a]) == net.peers[usize::from(p.0)].addr.ip()),
            };
            self.seen.insert((eth.src(), from));
        }
        let out = match action {
            Action::Local(p) => Some(Port::Local(p)),
            Action::Peer(p) => Some(Port::Peer(p)),
            Action::Flood | Action::Drop(_) | Action::Consumed => None,
        };
        if let Some(o) = out {
            assert_ne!(o, ingress, "sent back to its ingress");
            match o {
                Port::Local(l) => assert!(l.0 < net.spec.local_ports, "local port {l:?} out of range"),
                Port::Peer(p) => assert!(usize::from(p.0) < net.peers.len(), "peer {p:?} of {} peers", net.peers.len()),
            }
        }
    }

    fn check(&mut self) {
        let now = self.now();
        let net = &self.cur;
        let fdb = &net.fdb;
        let (cap, len) = (fdb.config().max_entries, fdb.len());
        assert!(len <= cap, "FDB holds {len} entries, cap {cap}");
        let ev = &fdb.events;
        let (l, e, x, f) = (ev.learned.load(Relaxed), ev.evicted.load(Relaxed), ev.expired.load(Relaxed), ev.flushed.load(Relaxed));
        assert_eq!(l, e + x + f + len as u64, "across generations: learned {l} != evicted {e} + expired {x} + flushed {f} + entries {len}");
        for r in fdb.entries(now) {
            let from = match r.port {
                Port::Local(LocalPort(p)) => {
                    assert!(p < net.spec.local_ports, "entry {} on local port {p} of {}", r.mac, net.spec.local_ports);
                    None
                }
                Port::Peer(PeerIdx(p)) => {
                    let peer = net.peers.get(usize::from(p)).unwrap_or_else(|| panic!("entry {} on peer {p} of {}", r.mac, net.peers.len()));
                    RELOAD_POOL.iter().position(|&a| IpAddr::from([192, 0, 2, a]) == peer.addr.ip())
                }
            };
            assert!(self.seen.contains(&(r.mac, from)), "{} is on {:?} but never came from there", r.mac, r.port);
        }
        let snap = net.stats.snapshot();
        assert!(snap.tap_rx_frames >= self.last_tap_rx, "tap_rx_frames went back from {} to {}", self.last_tap_rx, snap.tap_rx_frames);
        self.last_tap_rx = snap.tap_rx_frames;
        if self.pending.is_none() {
            assert_eq!(snap.tap_rx_frames, self.fed_local, "frames read from local ports, over every generation");
            for (i, p) in net.peers.iter().enumerate() {
                let a = RELOAD_POOL.iter().position(|&x| IpAddr::from([192, 0, 2, x]) == p.addr.ip()).expect("a pool address");
                assert_eq!(snap.peers[i].rx_packets, self.fed_peer[a], "rx packets of peer {}", p.addr);
            }
        }
    }
}

/// One network driven through frames from its ports and peers, clock steps, sweeps, peer
/// flushes and reloads that change its peers, table size and move damping, each handed over
/// to the next generation while the old one still takes frames for a while
/// ([`crate::core::handover`]). After every step: the table within its cap, every entry on a
/// port of the current generation where its MAC really came from, learned = evicted +
/// expired + flushed + entries across generations, counters that never go back, and per-peer and
/// local counts equal to what was fed once the handover is finished.
pub fn check_reload(data: &[u8]) {
    let mut inp = Input(data);
    let (mask, cap, ml) = (inp.u8(), inp.u8(), inp.u8());
    let mut r = Reloads {
        cur: Arc::new(Network::new(reload_spec(mask, cap, ml))),
        pending: None,
        now: 1000,
        fed_local: 0,
        fed_peer: [0; RELOAD_POOL.len()],
        seen: Default::default(),
        last_tap_rx: 0,
    };
    while r.step(&mut inp) {}
    r.finish();
    r.check();
}

/// Path-MTU replies and MSS clamping over arbitrary frames: no panic; a reply goes back to the
/// sender from the MAC it addressed, with valid IP/ICMP (or ICMPv6) checksums and within
/// [`pmtu::MAX_REPLY`]; a clamped segment whose checksums were right keeps them right, and
/// only the MSS value and the checksum change.
pub fn check_pmtu(data: &[u8]) {
    let mut out = [0u8; pmtu::MAX_REPLY];
    let sources = pmtu::Sources { v4: Some([198, 51, 100, 1].into()), v6: None };
    if let Ok(sig) = pmtu::too_big(data, 1450, &sources, &mut out) {
        let r = &out[..sig.len];
        assert!(sig.len <= pmtu::MAX_REPLY, "reply longer than MAX_REPLY");
        assert_eq!((&r[0..6], &r[6..12]), (&data[6..12], &data[0..6]), "reply MACs are the frame's, swapped");
        let (l3, _) = EthernetFrame::new_unchecked(r).l3().expect("the reply has an L3 header");
        let ip = &r[l3..];
        match sig.family {
            Family::V4 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                assert!(checksum::verify(&ip[..ihl], 0), "reply IPv4 header checksum");
                assert!(checksum::verify(&ip[ihl..], 0), "reply ICMP checksum");
                assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len(), "reply IPv4 total length");
            }
            Family::V6 => {
                let (s, d): ([u8; 16], [u8; 16]) = (ip[8..24].try_into().expect("16 bytes"), ip[24..40].try_into().expect("16 bytes"));
                assert!(checksum::verify(&ip[40..], checksum::pseudo_v6(&s, &d, 58, (ip.len() - 40) as u32)), "reply ICMPv6 checksum");
                assert!(ip.len() <= pmtu::IPV6_MIN_MTU, "ICMPv6 reply over 1280 bytes");
            }
        }
    }
    let mut f = data.to_vec();
    let was_ok = TcpSeg::parse(data).is_some_and(|s| s.checksums_ok(data));
    if pmtu::clamp_mss(&mut f, 1450, false) {
        assert_eq!(f.len(), data.len(), "clamping changes no length");
        assert!(f.iter().zip(data).filter(|(a, b)| a != b).count() <= 4, "clamping changes only the MSS and the checksum");
        if was_ok {
            assert!(TcpSeg::parse(&f).is_some_and(|s| s.checksums_ok(&f)), "checksums broken by clamping");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::neigh::Family;

    fn arp(op: u8, dst: [u8; 6], sha: [u8; 6], spa: u8, tpa: u8) -> Vec<u8> {
        let mut f = vec![0u8; 42];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&sha);
        f[12..22].copy_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, op]);
        f[22..28].copy_from_slice(&sha);
        f[28..32].copy_from_slice(&[198, 51, 100, spa]);
        if op == 2 {
            f[32..38].copy_from_slice(&dst);
        }
        f[38..42].copy_from_slice(&[198, 51, 100, tpa]);
        f
    }

    #[test]
    fn the_node_checks_reach_an_answered_arp_request() {
        let mut node = Node::new();
        let (asker, remote) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        // blue (VNI 42 on 4789, peers ADDRS[0..2]): remote answers through the tunnel
        let mut d = vec![0u8; vxlan::HEADER_LEN];
        vxlan::emit(&mut d, Vni::new_unchecked(42));
        d.extend_from_slice(&arp(2, asker, remote, 2, 1));
        node.underlay(ADDRS[0], 4789, &d);
        node.local(0, 0, &arp(1, [0xff; 6], asker, 1, 2));
        let blue = &node.fabric.networks[0].net;
        assert_eq!(blue.neigh.counters.get(Family::V4, true), 1, "answered (and checked) once");
        node.check_tables();
    }
}
