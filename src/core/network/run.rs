//! Per-run receive decisions: one decision for the datagrams of a GRO run that share the
//! first one's headers.
//!
//! With UDP GRO, one message from the underlay socket is a run of datagrams of one outer flow
//! (same source, same ports), most of them TCP segments of one inner flow. The decision of
//! [`Network::receive_from_peer`] for a frame depends on the peer (the outer source, the same
//! for the whole message), the network (the tunnel header: VNI, flags), the inner Ethernet
//! header (destination and source MAC, VLAN tags, EtherType), the frame's length (MTU) and,
//! for the neighbour and DHCP snooping, on whether it is ARP, ND or DHCP. [`RunKey`] is those
//! headers of the run's first datagram; a later datagram that shares them (same bytes, a TCP
//! segment, no longer than the first) would get the same decision from the same state, so
//! [`Run`] hands it the first one's and counts it for [`Network::end_run`], in bulk.
//!
//! Everything else is decided frame by frame, as before: a frame of another protocol (ARP,
//! ND and DHCP must reach the snooping), a broadcast, multicast or unknown destination (a
//! flood, under the storm limit of its port), a keepalive, another source MAC (learning and
//! its move limit), a frame longer than the first (MTU) or too short for the key's headers
//! (malformed). Only a delivery to one local port is reused: the state it read (the source
//! learned on this peer, the destination on that port) is what its own decision left, and a
//! frame decided on its own ends the run (it may have changed that state).

use super::{Action, Network};
use crate::core::stats::Shard;
use crate::core::wire::ethernet::{EthernetFrame, ethertype};
use crate::core::wire::ip::proto;
use crate::core::{LocalPort, PeerIdx};

/// The headers of a run's first datagram that its receive decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct RunKey<'a> {
    /// The tunnel header and the inner Ethernet header with its VLAN tags.
    head: &'a [u8],
    /// Where the inner IP protocol (IPv4) or next header (IPv6) is in the datagram.
    proto_at: usize,
    /// The first datagram's length: later ones may be shorter (a GRO run's last), not longer.
    len: usize,
}

impl<'a> RunKey<'a> {
    /// The key of `datagram` (a tunnel header of `tunnel_len` bytes, then an Ethernet frame)
    /// if datagrams sharing it may take its decision: a TCP segment over IPv4 or IPv6 (no
    /// ARP, ND or DHCP to snoop) from a unicast source to a unicast destination.
    pub fn of(datagram: &'a [u8], tunnel_len: usize) -> Option<Self> {
        let eth = EthernetFrame::new_checked(datagram.get(tunnel_len..)?).ok()?;
        let (dst, src) = (eth.dst(), eth.src());
        if !dst.is_unicast() || !src.is_unicast() || src.is_zero() {
            return None;
        }
        let (l3, et) = eth.l3()?;
        let proto_at = tunnel_len
            + l3
            + match et {
                ethertype::IPV4 => 9,
                ethertype::IPV6 => 6,
                _ => return None,
            };
        (datagram.get(proto_at) == Some(&proto::TCP)).then(|| RunKey { head: &datagram[..tunnel_len + l3], proto_at, len: datagram.len() })
    }

    /// Whether `datagram` shares this key: the same tunnel and Ethernet headers, a TCP
    /// segment, and no longer than the key's datagram.
    pub fn shares(&self, datagram: &[u8]) -> bool {
        datagram.len() <= self.len && datagram.get(self.proto_at) == Some(&proto::TCP) && datagram.get(..self.head.len()) == Some(self.head)
    }
}

/// A decision taken for a run's first datagram, and the datagrams after it that took it,
/// not counted yet.
#[derive(Debug)]
pub struct Run<'a> {
    key: RunKey<'a>,
    tunnel_len: usize,
    peer: PeerIdx,
    port: LocalPort,
    frames: usize,
    bytes: usize,
}

impl<'a> Run<'a> {
    /// The run that `datagram` (from `peer`; a tunnel header of `tunnel_len` bytes, then the
    /// frame) starts, given `action`, what its own decision was: only a delivery to one local
    /// port of a datagram with a [`RunKey`] is reused.
    pub fn start(datagram: &'a [u8], tunnel_len: usize, peer: PeerIdx, action: Action) -> Option<Self> {
        let Action::Local(port) = action else { return None };
        let key = RunKey::of(datagram, tunnel_len)?;
        Some(Run { key, tunnel_len, peer, port, frames: 0, bytes: 0 })
    }

    /// For a datagram of the run that shares its key: the local port it goes to and the frame
    /// inside it, counted for [`Network::end_run`]. `None`: it is decided on its own, and the
    /// run is over (end it first).
    pub fn decide<'d>(&mut self, datagram: &'d [u8]) -> Option<(LocalPort, &'d [u8])> {
        if !self.key.shares(datagram) {
            return None;
        }
        self.frames += 1;
        self.bytes += datagram.len();
        Some((self.port, &datagram[self.tunnel_len..]))
    }

    /// The peer the run came from.
    pub fn peer(&self) -> PeerIdx {
        self.peer
    }

    /// Datagrams that took the first one's decision so far.
    pub fn frames(&self) -> usize {
        self.frames
    }
}

impl Network {
    /// Count the datagrams that took `run`'s decision (its first counted itself), in bulk: in
    /// the peer's receive counters, as [`Self::receive_from_peer`] would have one by one, and
    /// among the frames decided by their run.
    pub fn end_run(&self, run: Run<'_>, shard: Shard) {
        if run.frames > 0 {
            self.stats.peer_rx_n(shard, usize::from(run.peer.0), run.frames, run.bytes);
            self.stats.run_frames(shard, run.frames);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::network::testutil::{frame, spec};
    use crate::core::time::Instant;
    use crate::core::wire::ethernet::MacAddr;
    use crate::core::wire::vxlan;
    use crate::core::{Vni, network::Network};
    use std::net::SocketAddr;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
    const C: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xc]);
    const T: Instant = Instant::from_secs(1);
    const P0: PeerIdx = PeerIdx(0);
    const L0: LocalPort = LocalPort(0);
    const VX: usize = vxlan::HEADER_LEN;

    /// A VXLAN datagram (VNI `vni`) holding an IPv4 frame of `len` bytes, `proto` as its IP
    /// protocol.
    fn dgram(vni: u32, dst: MacAddr, src: MacAddr, proto: u8, len: usize) -> Vec<u8> {
        let mut f = frame(dst, src, len);
        f[14] = 0x45;
        f[14 + 9] = proto;
        let mut d = vec![0u8; VX];
        vxlan::emit(&mut d, Vni::new_unchecked(vni));
        d.extend_from_slice(&f);
        d
    }

    fn tcp(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
        dgram(42, dst, src, proto::TCP, len)
    }

    /// Network blue with one local port and peers 192.0.2.10, .11; C is known on the local
    /// port.
    fn net() -> Network {
        let n = Network::new(spec(1, vec![SocketAddr::from(([192, 0, 2, 10], 4789)), SocketAddr::from(([192, 0, 2, 11], 4789))]));
        n.from_local(L0, &frame(MacAddr::BROADCAST, C, 60), T);
        n
    }

    /// What the daemon does with the datagrams of one message from `peer`: each decided on its
    /// own unless its run decides it. Returns the actions and how many took a run's decision.
    fn receive(n: &Network, peer: PeerIdx, msg: &[Vec<u8>], runs: bool) -> (Vec<Action>, usize) {
        let (mut actions, mut by_run) = (Vec::new(), 0);
        let mut run: Option<Run<'_>> = None;
        for d in msg {
            if let Some((p, inner)) = run.as_mut().and_then(|r| r.decide(d)) {
                assert_eq!(inner, &d[VX..]);
                actions.push(Action::Local(p));
                by_run += 1;
                continue;
            }
            if let Some(r) = run.take() {
                n.end_run(r, Shard::UNDERLAY);
            }
            let a = n.receive_from_peer(peer, &d[VX..], d.len(), Shard::UNDERLAY, T);
            actions.push(a);
            if runs {
                run = Run::start(d, VX, peer, a);
            }
        }
        if let Some(r) = run.take() {
            n.end_run(r, Shard::UNDERLAY);
        }
        (actions, by_run)
    }

    /// The same message through two networks, per frame and per run: the same actions and
    /// the same counters (and FDB), and how many frames the run decided.
    fn same_as_per_frame(msg: &[Vec<u8>]) -> usize {
        let (per_frame, by_run) = (net(), net());
        let (a, none) = receive(&per_frame, P0, msg, false);
        let (b, decided) = receive(&by_run, P0, msg, true);
        assert_eq!(none, 0);
        assert_eq!(a, b, "actions");
        let (s, r) = (per_frame.stats.snapshot(), by_run.stats.snapshot());
        assert_eq!(s.peers, r.peers, "peer counters");
        assert_eq!(s.drops, r.drops, "drops");
        assert_eq!(s.flooded_frames, r.flooded_frames);
        assert_eq!(r.run_frames, decided as u64, "run frames counted");
        assert_eq!(s.run_frames, 0);
        for m in [A, B, C] {
            assert_eq!(per_frame.fdb.lookup(m, T), by_run.fdb.lookup(m, T), "fdb entry of {m:?}");
        }
        decided
    }

    #[test]
    fn a_run_of_one_flow_is_decided_once_with_the_same_totals() {
        // a GRO run: equal strides, the last one shorter
        let mut msg = vec![tcp(C, A, 1464); 9];
        msg.push(tcp(C, A, 300));
        assert_eq!(same_as_per_frame(&msg), 9);
        let n = net();
        let (actions, decided) = receive(&n, PeerIdx(1), &msg, true);
        assert!(actions.iter().all(|a| *a == Action::Local(L0)));
        assert_eq!(decided, 9);
        let s = n.stats.snapshot();
        assert_eq!((s.peers[1].rx_packets, s.peers[1].rx_bytes), (10, 9 * (VX + 1464) as u64 + (VX + 300) as u64));
    }

    #[test]
    fn a_frame_that_differs_is_decided_on_its_own_and_ends_the_run() {
        let run = tcp(C, A, 1000);
        let others = [
            ("another source MAC", tcp(C, B, 1000)),
            ("broadcast", tcp(MacAddr::BROADCAST, A, 1000)),
            ("multicast", tcp(MacAddr([0x01, 0, 0x5e, 0, 0, 1]), A, 1000)),
            ("unknown destination", tcp(B, A, 1000)),
            ("another VNI", dgram(43, C, A, proto::TCP, 1000)),
            ("UDP (DHCP is)", dgram(42, C, A, proto::UDP, 1000)),
            ("longer than the first", tcp(C, A, 1001)),
            ("truncated", run[..VX + 20].to_vec()),
        ];
        for (what, other) in &others {
            let msg = vec![run.clone(), run.clone(), other.clone(), run.clone(), run.clone()];
            // the first run decides one; the other, and the first after it, decide themselves
            // (a longer frame delivered to the same port starts a run the shorter ones share)
            let expect = if *what == "longer than the first" { 3 } else { 2 };
            assert_eq!(same_as_per_frame(&msg), expect, "{what}");
            let mut r = Run::start(&run, VX, P0, Action::Local(L0)).expect("a run");
            assert!(r.decide(&run).is_some());
            assert!(r.decide(other).is_none(), "{what} is decided on its own");
        }
    }

    #[test]
    fn arp_nd_and_tagged_frames_follow_their_ethertype() {
        let mut arp = tcp(C, A, 60);
        arp[VX + 12..VX + 14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        assert!(RunKey::of(&arp, VX).is_none(), "ARP is never a run's key");
        let run = tcp(C, A, 60);
        let key = RunKey::of(&run, VX).expect("TCP is");
        assert!(!key.shares(&arp), "nor shares one");
        // IPv6: TCP keys a run, ICMPv6 (ND) does not share it
        let v6 = |next: u8| {
            let mut d = tcp(C, A, 100);
            d[VX + 12..VX + 14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
            d[VX + 14] = 0x60;
            d[VX + 14 + 9] = 0;
            d[VX + 14 + 6] = next;
            d
        };
        let v6_tcp = v6(proto::TCP);
        let key = RunKey::of(&v6_tcp, VX).expect("TCP over IPv6");
        assert!(key.shares(&v6(proto::TCP)));
        assert!(!key.shares(&v6(proto::ICMPV6)));
        assert!(RunKey::of(&v6(proto::ICMPV6), VX).is_none());
        // a VLAN tag is part of the key: another VLAN is another key
        let tagged = |vid: u8| {
            let plain = tcp(C, A, 100);
            let mut d = plain[..VX + 12].to_vec();
            d.extend_from_slice(&[0x81, 0x00, 0, vid]);
            d.extend_from_slice(&plain[VX + 12..]);
            d
        };
        let vlan5 = tagged(5);
        let key = RunKey::of(&vlan5, VX).expect("TCP in a VLAN");
        assert!(key.shares(&tagged(5)));
        assert!(!key.shares(&tagged(6)));
        assert!(!key.shares(&run));
    }

    #[test]
    fn only_a_delivery_to_one_local_port_is_reused() {
        let d = tcp(C, A, 100);
        assert!(Run::start(&d, VX, P0, Action::Local(L0)).is_some());
        for a in [Action::Flood, Action::Consumed, Action::Peer(P0), Action::Drop(crate::core::stats::DropReason::Hairpin)] {
            assert!(Run::start(&d, VX, P0, a).is_none(), "{a:?}");
        }
        // the flood of unknown or broadcast destinations stays per frame (storm limit)
        assert_eq!(same_as_per_frame(&vec![tcp(B, A, 100); 4]), 0);
        assert_eq!(same_as_per_frame(&vec![tcp(MacAddr::BROADCAST, A, 100); 4]), 0);
    }
}
