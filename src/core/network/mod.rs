//! One virtual network (L2 segment): its peers, its MAC table, its counters, and the
//! forwarding decision for a frame.
//!
//! The decision is the learning-switch rule set of design.md:
//! - learn the source MAC against the ingress port (never a multicast/zero source);
//! - broadcast, multicast and unknown unicast are flooded: to every other local port and, if
//!   the frame came from a local port, to every peer (head-end replication). A frame that
//!   came from a tunnel is never sent into a tunnel again (split horizon; the peers of a
//!   network form a full mesh, so every peer got its own copy from the sender);
//! - known unicast goes to exactly one port, never back to its ingress.
//!
//! Four parts of a network's life live below it: [`liveness`] (is each peer up, and the
//! keepalives that tell), [`handover`] (the next generation on a reload), `suppress`
//! (ARP/ND answers from the neighbour table, checked against the FDB) and [`run`] (one
//! receive decision for the datagrams of a GRO run that share its first one's headers).
//! They extend [`Network`] and nothing else names them from below, so the dependencies
//! inside the core run one way.

pub mod handover;
pub mod liveness;
pub mod run;
mod suppress;
#[cfg(test)]
pub(crate) mod testutil;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::fdb::{Fdb, FdbConfig, Learned};
use super::stats::{DropReason, NetStats, Shard};
use super::storm::StormControl;
use liveness::{Liveness, is_keepalive};
use super::pmtu::Sources;
use super::neigh::{NeighTable, Source};
use super::time::Instant;
use super::wire::ethernet::{EthernetFrame, HEADER_LEN};
use super::{Encap, LocalPort, PeerIdx, Port, Vni};

/// What the configuration says about a network, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub encap: Encap,
    pub vni: Vni,
    /// MTU of the local ports: the largest L3 payload a frame may carry.
    pub mtu: u16,
    /// Underlay endpoints of the peers (address and UDP destination port).
    pub peers: Vec<SocketAddr>,
    pub fdb: FdbConfig,
    /// Flooded frames per second accepted from each port (local port or peer); `None` = no
    /// limit.
    pub bum_pps_limit: Option<u32>,
    /// Number of local ports (TAP devices) the network has.
    pub local_ports: u16,
    /// Lower the MSS option of TCP SYNs from local ports to fit `mtu` (`mss_clamp`).
    pub mss_clamp: bool,
    /// Source addresses of path-MTU signals (the network's `address`, if any).
    pub pmtu_sources: Sources,
    /// Answer ARP requests and neighbour solicitations from bindings (see [`super::neigh`]).
    pub arp_suppress: bool,
    /// `unknown_unicast = "drop"`: unicast to a MAC not in the table is dropped (every MAC
    /// comes from the cluster), not flooded.
    pub unknown_unicast_drop: bool,
    /// Snoop the addresses of local hosts from their ARP/ND (`advertise = "macs+ips"`).
    pub snoop_local: bool,
}

impl NetworkSpec {
    /// A VXLAN network with one local port, an MTU of 1450 and every option as a config without
    /// it gets: the starting point that tests, benchmarks and examples change field by field.
    pub fn vxlan(name: &str, vni: u32, peers: Vec<SocketAddr>) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            encap: Encap::Vxlan,
            vni: Vni::new_unchecked(vni),
            mtu: 1450,
            peers,
            fdb: FdbConfig::default(),
            bum_pps_limit: None,
            local_ports: 1,
            mss_clamp: false,
            pmtu_sources: Default::default(),
            arp_suppress: false,
            unknown_unicast_drop: false,
            snoop_local: false,
        }
    }
}

/// A neighbouring daemon that carries this network.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// When a packet of this network last arrived from the peer (ms, see [`Instant`]); 0 = never.
    pub last_seen: AtomicU64,
    /// Up/down as the control path last decided, and whether the peer sends keepalives.
    pub liveness: Liveness,
}

/// Where one frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// To one local port.
    Local(LocalPort),
    /// Into the tunnel to one peer.
    Peer(PeerIdx),
    /// To every port allowed by [`Network::flood_ports`].
    Flood,
    Drop(DropReason),
    /// A control frame for this daemon (a peer's keepalive): handled, goes nowhere.
    Consumed,
}

#[derive(Debug)]
pub struct Network {
    pub spec: NetworkSpec,
    pub peers: Vec<Peer>,
    pub fdb: Fdb,
    /// IP → MAC bindings for ARP/ND suppression (empty unless `arp_suppress`).
    pub neigh: NeighTable,
    /// Addresses snooped from local ports' ARP/ND, by MAC (empty unless `snoop_local`).
    pub local_neigh: NeighTable,
    pub stats: NetStats,
    pub storm: Option<StormControl>,
    /// Connects and disconnects of VM ports (the I/O side counts them).
    pub vm_ports: super::ports::VmPortCounts,
}

impl Network {
    pub fn new(spec: NetworkSpec) -> Self {
        Network {
            peers: spec.peers.iter().map(|&addr| Peer { addr, last_seen: AtomicU64::new(0), liveness: Liveness::default() }).collect(),
            fdb: Fdb::new(spec.fdb),
            neigh: NeighTable::new(spec.arp_suppress, spec.fdb.max_entries, spec.fdb.ageing),
            local_neigh: NeighTable::new(spec.snoop_local, spec.fdb.max_entries, spec.fdb.ageing),
            stats: NetStats::new(spec.peers.len()),
            storm: spec.bum_pps_limit.map(|pps| StormControl::new(pps, spec.peers.len())),
            vm_ports: Default::default(),
            spec,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The peer whose underlay address is `ip`, if any. Peer lists are short: a linear scan
    /// of a contiguous array beats hashing here.
    pub fn peer_by_ip(&self, ip: std::net::IpAddr) -> Option<PeerIdx> {
        self.peers.iter().position(|p| p.addr.ip() == ip).map(|i| PeerIdx(i as u16))
    }

    /// Decide where a frame read from local port `ingress` goes, learning its source.
    pub fn from_local(&self, ingress: LocalPort, frame: &[u8], now: Instant) -> Action {
        let action = self.decide(Port::Local(ingress), frame, now);
        if matches!(action, Action::Flood | Action::Peer(_) | Action::Local(_)) {
            if self.spec.snoop_local {
                self.local_neigh.snoop(frame, Source::Local, now);
            }
            if self.snoops_dhcp() {
                self.snoop_dhcp(frame, now);
            }
        }
        action
    }

    /// Decide where a frame decapsulated from peer `peer` goes, learning its source.
    /// [`Self::from_peer`] for a tunnel packet of `wire_len` bytes, counted as every underlay
    /// counts it: into the peer's receive counters (keepalives excepted: control traffic), and
    /// a refusal under its reason. Returns only what is left to deliver: `Local`, `Flood`, or
    /// `Consumed` when nothing is (a frame from a tunnel never goes into a tunnel).
    pub fn receive_from_peer(&self, peer: PeerIdx, frame: &[u8], wire_len: usize, shard: Shard, now: Instant) -> Action {
        self.receive_segments_from_peer(peer, frame, 1, wire_len, shard, now)
    }

    /// [`Self::receive_from_peer`] for a whole TSO burst that arrived as one datagram: the
    /// decision is taken on `frame` (its first segment's worth) and the peer's counters grow by
    /// the `packets` datagrams and `wire_len` bytes the burst is on the wire once segmented, as
    /// the fast path counts it.
    pub fn receive_segments_from_peer(&self, peer: PeerIdx, frame: &[u8], packets: usize, wire_len: usize, shard: Shard, now: Instant) -> Action {
        let action = self.from_peer(peer, frame, now);
        if action != Action::Consumed {
            self.stats.peer_rx_n(shard, usize::from(peer.0), packets, wire_len);
        }
        match action {
            Action::Drop(r) => self.stats.count_drop(shard, r),
            // from_peer never sends into a tunnel (split horizon)
            Action::Peer(_) => self.stats.count_drop(shard, DropReason::SplitHorizon),
            Action::Local(_) | Action::Flood | Action::Consumed => return action,
        }
        Action::Consumed
    }

    pub fn from_peer(&self, peer: PeerIdx, frame: &[u8], now: Instant) -> Action {
        if let Some(p) = self.peers.get(usize::from(peer.0)) {
            let ms = now.as_millis().max(1);
            if p.last_seen.load(Relaxed) != ms {
                p.last_seen.store(ms, Relaxed);
            }
            if is_keepalive(frame) {
                p.liveness.keepalive_seen();
                p.liveness.keepalive_version_seen(super::liveness::keepalive_version(frame));
                return Action::Consumed;
            }
        }
        let action = self.decide(Port::Peer(peer), frame, now);
        if matches!(action, Action::Local(_) | Action::Flood) {
            self.neigh.snoop(frame, Source::Snooped(peer), now);
            if self.snoops_dhcp() {
                self.snoop_dhcp(frame, now);
            }
        }
        action
    }

    fn decide(&self, ingress: Port, frame: &[u8], now: Instant) -> Action {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Action::Drop(DropReason::Malformed);
        };
        let src = eth.src();
        if src.is_multicast() || src.is_zero() {
            return Action::Drop(DropReason::BadSourceMac);
        }
        let l3 = eth.l3().map_or(HEADER_LEN, |(off, _)| off);
        if frame.len().saturating_sub(l3) > usize::from(self.spec.mtu) {
            return Action::Drop(DropReason::MtuExceeded);
        }
        // moves are counted in fdb.events; pins are queued there for the control path to log
        if let Learned::Pinned { .. } = self.fdb.learn(src, ingress, now) {
            return Action::Drop(DropReason::MacPinned);
        }
        let dst = eth.dst();
        let known = if dst.is_multicast() { None } else { self.fdb.lookup(dst, now) };
        match known {
            None if self.spec.unknown_unicast_drop && !dst.is_multicast() => Action::Drop(DropReason::UnknownUnicast),
            None => self.flood(ingress, now),
            Some(p) if p == ingress => Action::Drop(DropReason::Hairpin),
            Some(Port::Local(l)) => Action::Local(l),
            Some(Port::Peer(_)) if ingress.is_peer() => Action::Drop(DropReason::SplitHorizon),
            Some(Port::Peer(p)) => Action::Peer(p),
        }
    }

    /// Flood, unless the ingress is over its storm limit.
    fn flood(&self, ingress: Port, now: Instant) -> Action {
        match &self.storm {
            Some(s) if !s.allow(ingress, now) => Action::Drop(DropReason::StormLimit),
            _ => Action::Flood,
        }
    }

    /// The ports a flooded frame from `ingress` goes to: every local port but the ingress,
    /// and every peer if (and only if) the frame came from a local port.
    pub fn flood_ports(&self, ingress: Port) -> impl Iterator<Item = Port> + '_ {
        let locals = (0..self.spec.local_ports)
            .map(|i| Port::Local(LocalPort(i)))
            .filter(move |p| *p != ingress);
        let peers = (0..self.peers.len() as u16)
            .map(|i| Port::Peer(PeerIdx(i)))
            .filter(move |_| !ingress.is_peer());
        locals.chain(peers)
    }

    /// The peers a flooded frame from `ingress` goes to: all of them if it came from a local
    /// port, none if it came from a tunnel (split horizon). Local ports are the caller's: the
    /// live ones are in its [`super::ports::PortTable`].
    pub fn flood_peers(&self, ingress: Port) -> impl Iterator<Item = PeerIdx> + '_ {
        let n = if ingress.is_peer() { 0 } else { self.peers.len() as u16 };
        (0..n).map(PeerIdx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testutil::{frame, spec};
    use crate::core::wire::ethernet::MacAddr;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
    const C: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xc]);
    const L0: LocalPort = LocalPort(0);

    fn net(local_ports: u16, peers: usize) -> Network {
        Network::new(spec(local_ports, (0..peers).map(|i| SocketAddr::from(([192, 0, 2, 10 + i as u8], 4789))).collect()))
    }

    const T: Instant = Instant::ZERO;

    #[test]
    fn a_whole_tso_burst_counts_as_the_datagrams_it_is_on_the_wire() {
        let n = net(1, 2);
        n.from_local(L0, &frame(B, A, 60), T);
        // one datagram (a 10-segment burst decided on its first segment) and one plain one
        let a = n.receive_segments_from_peer(PeerIdx(1), &frame(A, B, 1464), 10, 10 * (8 + 54) + 14_100, Shard::UNDERLAY, T);
        assert_eq!(a, Action::Local(L0));
        n.receive_from_peer(PeerIdx(1), &frame(A, B, 100), 108, Shard::UNDERLAY, T);
        let s = n.stats.snapshot();
        assert_eq!((s.peers[1].rx_packets, s.peers[1].rx_bytes), (11, 10 * 62 + 14_100 + 108));
        assert_eq!(s.peers[0].rx_packets, 0);
    }

    #[test]
    fn broadcast_from_local_port_floods_to_every_peer_not_back() {
        let n = net(1, 3);
        assert_eq!(n.from_local(L0, &frame(MacAddr::BROADCAST, A, 60), T), Action::Flood);
        let ports: Vec<Port> = n.flood_ports(Port::Local(L0)).collect();
        assert_eq!(ports, vec![Port::Peer(PeerIdx(0)), Port::Peer(PeerIdx(1)), Port::Peer(PeerIdx(2))]);
    }

    #[test]
    fn flood_from_a_tunnel_never_reenters_a_tunnel() {
        let n = net(2, 3);
        assert_eq!(n.from_peer(PeerIdx(1), &frame(MacAddr::BROADCAST, A, 60), T), Action::Flood);
        let ports: Vec<Port> = n.flood_ports(Port::Peer(PeerIdx(1))).collect();
        assert_eq!(ports, vec![Port::Local(LocalPort(0)), Port::Local(LocalPort(1))]);
    }

    #[test]
    fn unicast_after_learning_goes_to_exactly_one_peer() {
        let n = net(1, 3);
        // B answers from peer 2: learned there
        assert_eq!(n.from_peer(PeerIdx(2), &frame(A, B, 60), T), Action::Flood);
        assert_eq!(n.from_local(L0, &frame(B, A, 60), T), Action::Peer(PeerIdx(2)));
        // and the reply direction now knows A on the local port
        assert_eq!(n.from_peer(PeerIdx(2), &frame(A, B, 60), T), Action::Local(L0));
    }

    #[test]
    fn tunnel_frame_for_a_mac_behind_another_tunnel_is_dropped() {
        let n = net(1, 3);
        n.from_peer(PeerIdx(0), &frame(MacAddr::BROADCAST, B, 60), T);
        assert_eq!(n.from_peer(PeerIdx(1), &frame(B, C, 60), T), Action::Drop(DropReason::SplitHorizon));
        assert_eq!(n.from_peer(PeerIdx(0), &frame(B, A, 60), T), Action::Drop(DropReason::Hairpin));
    }

    #[test]
    fn unknown_unicast_is_dropped_when_configured_and_broadcast_still_floods() {
        let mut s = spec(1, vec![SocketAddr::from(([192, 0, 2, 10], 4789))]);
        s.unknown_unicast_drop = true;
        let n = Network::new(s);
        assert_eq!(n.from_local(L0, &frame(B, A, 60), T), Action::Drop(DropReason::UnknownUnicast));
        assert_eq!(n.from_peer(PeerIdx(0), &frame(A, C, 60), T), Action::Local(L0), "A was learned by its first frame");
        assert_eq!(n.from_local(L0, &frame(MacAddr::BROADCAST, A, 60), T), Action::Flood);
        n.fdb.set_cluster(B, Port::Peer(PeerIdx(0)), false, T);
        assert_eq!(n.from_local(L0, &frame(B, A, 60), T), Action::Peer(PeerIdx(0)), "advertised: known");
    }

    #[test]
    fn multicast_source_is_never_learned() {
        let n = net(1, 1);
        let m = MacAddr([0x01, 0, 0x5e, 0, 0, 1]);
        assert_eq!(n.from_local(L0, &frame(B, m, 60), T), Action::Drop(DropReason::BadSourceMac));
        assert!(n.fdb.is_empty());
    }

    #[test]
    fn short_and_oversized_frames_are_dropped_with_their_reason() {
        let n = net(1, 1);
        assert_eq!(n.from_peer(PeerIdx(0), &[0u8; 13], T), Action::Drop(DropReason::Malformed));
        assert_eq!(n.from_local(L0, &frame(B, A, 14 + 1450), T), Action::Flood);
        assert_eq!(n.from_local(L0, &frame(B, A, 14 + 1451), T), Action::Drop(DropReason::MtuExceeded));
    }

    #[test]
    fn tunnel_frames_mark_the_peer_as_seen() {
        let n = net(1, 2);
        n.from_peer(PeerIdx(1), &frame(A, B, 60), Instant::from_secs(7));
        assert_eq!(n.peers[1].last_seen.load(Relaxed), 7000);
        assert_eq!(n.peers[0].last_seen.load(Relaxed), 0);
    }

    #[test]
    fn floods_beyond_the_storm_limit_are_dropped_per_port_and_unicast_is_not_limited() {
        let mut n = net(2, 1);
        n.storm = Some(StormControl::new(5, 1));
        let t = Instant::from_secs(1);
        let bcast = frame(MacAddr::BROADCAST, A, 60);
        let actions: Vec<Action> = (0..10).map(|_| n.from_local(L0, &bcast, t)).collect();
        assert_eq!(actions.iter().filter(|a| **a == Action::Flood).count(), 5);
        assert_eq!(actions.iter().filter(|a| **a == Action::Drop(DropReason::StormLimit)).count(), 5);
        // another port still floods: the storming port spent only its own budget
        assert_eq!(n.from_local(LocalPort(1), &frame(MacAddr::BROADCAST, B, 60), t), Action::Flood);
        // known unicast is never limited
        n.from_peer(PeerIdx(0), &frame(A, C, 60), t);
        for _ in 0..20 {
            assert_eq!(n.from_local(L0, &frame(C, A, 60), t), Action::Peer(PeerIdx(0)));
        }
        // and a second later the port may flood again
        assert_eq!(n.from_local(L0, &bcast, Instant::from_secs(2)), Action::Flood);
    }

    #[test]
    fn a_flapping_mac_is_pinned_and_its_frames_from_elsewhere_dropped() {
        let n = net(1, 1); // default damping: more than 5 moves in 180 s
        let p0 = PeerIdx(0);
        n.from_local(L0, &frame(MacAddr::BROADCAST, A, 60), T);
        for i in 1..=5u64 {
            let t = Instant::from_secs(i);
            let a = if i % 2 == 1 { n.from_peer(p0, &frame(MacAddr::BROADCAST, A, 60), t) } else { n.from_local(L0, &frame(MacAddr::BROADCAST, A, 60), t) };
            assert_eq!(a, Action::Flood, "move {i}");
        }
        assert_eq!(n.fdb.lookup(A, Instant::from_secs(5)), Some(Port::Peer(p0)));
        let a = n.from_local(L0, &frame(MacAddr::BROADCAST, A, 60), Instant::from_secs(6));
        assert_eq!(a, Action::Drop(DropReason::MacPinned));
        assert_eq!(n.fdb.lookup(A, Instant::from_secs(6)), Some(Port::Peer(p0)), "stays where it was");
        assert_eq!(n.fdb.take_pin_events().0.len(), 1);
        // its frames from the port it is pinned to still flow
        assert_eq!(n.from_peer(p0, &frame(B, A, 60), Instant::from_secs(7)), Action::Flood);
    }
}
