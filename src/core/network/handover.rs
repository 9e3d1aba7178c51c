//! A network's next generation, for a reload that changes only what the core holds: its
//! peers, its FDB settings, its storm limit.
//!
//! The daemon builds a new [`Network`] from the new spec and publishes it in place of the old
//! one; the data-path threads pick it up at their next batch, the TAPs and VM connections stay
//! as they are. What the old generation knew carries over, so the reload is invisible to the
//! traffic of the peers that stay:
//! - the FDB: MACs on local ports as they are, MACs behind a peer that stays moved to that
//!   peer's new index, MACs behind a removed peer dropped (they are flooded until relearned),
//!   pins and move counts as they were;
//! - each staying peer's liveness (last seen, up/down, whether it sends keepalives);
//! - every counter, so exported counters never go back: the network's, each staying peer's
//!   (a removed peer's series ends), the FDB events (entries not taken over are counted as
//!   they end: flushed, expired or evicted) and the VM port counts.
//!
//! It happens in two steps because the threads still finish a batch on the old generation
//! after it was replaced: [`Network::successor`] copies the state before the switch (the new
//! generation starts where the old one is), and [`Handover::finish`], called once nobody holds
//! the old generation any more, adds what the old one counted and learned in between.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{Network, NetworkSpec};
use crate::core::neigh::Source;
use crate::core::stats::NetSnapshot;
use crate::core::time::Instant;
use crate::core::{PeerIdx, Port};

/// What [`Network::successor`] copied, for [`Handover::finish`] to add the rest.
#[derive(Debug)]
pub struct Handover {
    /// Old peer index → new peer index (`None`: the peer was removed).
    pub peer_map: Vec<Option<usize>>,
    stats: NetSnapshot,
    vm: [u64; 4],
    /// ARP/ND suppression counts taken over.
    neigh: [u64; 4],
    /// DHCP snooping counts taken over.
    dhcp: [u64; crate::core::neigh::dhcp::SLOTS],
}

fn vm_counts(n: &Network) -> [u64; 4] {
    vm_counters(n).map(|a| a.load(Relaxed))
}

fn vm_counters(n: &Network) -> [&AtomicU64; 4] {
    let v = &n.vm_ports;
    [&v.connected, &v.connects, &v.disconnects, &v.refused]
}

/// Add (wrapping) `from[i] - base[i]` to `to[i]`.
fn add_since(to: &[&AtomicU64], from: &[u64], base: &[u64]) {
    for ((a, f), b) in to.iter().zip(from).zip(base) {
        let d = f.wrapping_sub(*b);
        if d != 0 {
            a.fetch_add(d, Relaxed);
        }
    }
}

/// The port an entry of the old generation has in the new one (`None`: a removed peer).
fn map_port(peer_map: &[Option<usize>]) -> impl Fn(Port) -> Option<Port> + '_ {
    |p| match p {
        Port::Local(l) => Some(Port::Local(l)),
        Port::Peer(i) => peer_map.get(usize::from(i.0)).copied().flatten().map(|n| Port::Peer(PeerIdx(n as u16))),
    }
}

impl Network {
    /// The next generation of this network, for `spec`, with this one's state (see the
    /// module documentation). Publish it, then call [`Handover::finish`] once the old
    /// generation is released.
    pub fn successor(&self, spec: NetworkSpec, now: Instant) -> (Network, Handover) {
        let new = Network::new(spec);
        let peer_map: Vec<Option<usize>> =
            self.peers.iter().map(|p| new.peers.iter().position(|q| q.addr == p.addr)).collect();
        for (old, to) in self.peers.iter().zip(&peer_map) {
            if let Some(q) = to.and_then(|i| new.peers.get(i)) {
                q.last_seen.store(old.last_seen.load(Relaxed), Relaxed);
                q.liveness.copy_from(&old.liveness);
            }
        }
        new.fdb.take_over(&self.fdb, map_port(&peer_map), now);
        new.neigh.take_over(&self.neigh, |s| match s {
            Source::Snooped(p) => peer_map.get(usize::from(p.0)).copied().flatten().map(|n| Source::Snooped(PeerIdx(n as u16))),
            Source::Cluster(p) => peer_map.get(usize::from(p.0)).copied().flatten().map(|n| Source::Cluster(PeerIdx(n as u16))),
            Source::Local => None,
        });
        new.local_neigh.take_over(&self.local_neigh, Some);
        let neigh = self.neigh.counters.snapshot();
        let dhcp = self.neigh.dhcp.snapshot();
        let stats = self.stats.snapshot();
        new.stats.absorb(&stats, &peer_map);
        let vm = vm_counts(self);
        add_since(&vm_counters(&new), &vm, &[0; 4]);
        (new, Handover { peer_map, stats, vm, neigh, dhcp })
    }
}

impl Handover {
    /// Add to `new` what `old` counted (traffic, VM ports) since [`Network::successor`], and
    /// learn the MACs it holds that `new` does not. Call it once no data-path thread holds
    /// `old` any more; returns how many MACs were learned so.
    pub fn finish(self, old: &Network, new: &Network, now: Instant) -> usize {
        new.stats.absorb(&old.stats.snapshot().since(&self.stats), &self.peer_map);
        add_since(&vm_counters(new), &vm_counts(old), &self.vm);
        new.neigh.counters.add_since(&old.neigh.counters.snapshot(), &self.neigh);
        new.neigh.dhcp.add_since(&old.neigh.dhcp.snapshot(), &self.dhcp);
        for (o, to) in old.peers.iter().zip(&self.peer_map) {
            if let Some(q) = to.and_then(|i| new.peers.get(i)) {
                q.last_seen.fetch_max(o.last_seen.load(Relaxed), Relaxed);
            }
        }
        new.fdb.adopt(&old.fdb, map_port(&self.peer_map), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::network::Action;
    use crate::core::stats::{DropReason, Shard};
    use crate::core::wire::ethernet::MacAddr;
    use crate::core::{LocalPort, testutil};
    use std::net::SocketAddr;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 4789))
    }

    fn spec(peers: &[u8]) -> NetworkSpec {
        testutil::spec(1, peers.iter().map(|&p| addr(p)).collect())
    }

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        testutil::frame(dst, src, 60)
    }

    const LOCAL: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const BEHIND_2: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const BEHIND_3: MacAddr = MacAddr([2, 0, 0, 0, 0, 3]);

    #[test]
    fn removing_a_peer_keeps_the_others_macs_counters_and_liveness() {
        let t = Instant::from_secs(10);
        let old = Network::new(spec(&[2, 3]));
        old.from_local(LocalPort(0), &frame(MacAddr::BROADCAST, LOCAL), t);
        old.receive_from_peer(PeerIdx(0), &frame(LOCAL, BEHIND_2), 110, Shard::UNDERLAY, t);
        old.receive_from_peer(PeerIdx(1), &frame(LOCAL, BEHIND_3), 110, Shard::UNDERLAY, t);
        old.stats.count_drop(Shard::LOCAL, DropReason::Malformed);
        old.check_peers(t);

        // peer .2 removed, .4 added: .3 moves from index 1 to index 0
        let (new, h) = old.successor(spec(&[3, 4]), t);
        assert_eq!(h.peer_map, vec![None, Some(0)]);
        assert_eq!(new.fdb.lookup(LOCAL, t), Some(Port::Local(LocalPort(0))));
        assert_eq!(new.fdb.lookup(BEHIND_3, t), Some(Port::Peer(PeerIdx(0))), "remapped to its new index");
        assert_eq!(new.fdb.lookup(BEHIND_2, t), None, "behind a removed peer: flooded until relearned");
        assert_eq!(new.from_local(LocalPort(0), &frame(BEHIND_3, LOCAL), t), Action::Peer(PeerIdx(0)));
        assert_eq!(new.peers[0].liveness.state(), old.peers[1].liveness.state());
        assert_eq!(new.peers[0].last_seen.load(Relaxed), 10_000);
        assert_eq!(new.peers[1].last_seen.load(Relaxed), 0, "the added peer is unknown");
        let s = new.stats.snapshot();
        assert_eq!(s.drop_count(DropReason::Malformed), 1);
        assert_eq!((s.peers[0].rx_packets, s.peers[0].rx_bytes), (1, 110), "peer .3 keeps its counters");
        assert_eq!(s.peers[1].rx_packets, 0);
        assert_eq!(new.fdb.events.learned.load(Relaxed), 3, "taking over is not learning");
        assert_eq!(new.fdb.events.flushed.load(Relaxed), 1, "the MAC behind the removed peer ends as flushed");

        // the old generation is still used for a moment: what it counts and learns carries over
        let late = MacAddr([2, 0, 0, 0, 0, 9]);
        old.receive_from_peer(PeerIdx(1), &frame(LOCAL, late), 100, Shard::UNDERLAY, t);
        old.stats.count_drop(Shard::LOCAL, DropReason::Malformed);
        assert_eq!(h.finish(&old, &new, t), 1);
        let s = new.stats.snapshot();
        assert_eq!(s.drop_count(DropReason::Malformed), 2);
        assert_eq!(s.peers[0].rx_packets, 2);
        assert_eq!(new.fdb.lookup(late, t), Some(Port::Peer(PeerIdx(0))));
        assert_eq!(new.fdb.events.learned.load(Relaxed), 4);
    }

    #[test]
    fn a_pinned_mac_stays_pinned_in_the_next_generation() {
        let t = Instant::from_secs(1);
        let mut s = spec(&[2, 3]);
        s.fdb.move_limit = 1;
        let old = Network::new(s.clone());
        let flap = |n: &Network, p: Port| match p {
            Port::Local(l) => n.from_local(l, &frame(MacAddr::BROADCAST, LOCAL), t),
            Port::Peer(i) => n.from_peer(i, &frame(MacAddr::BROADCAST, LOCAL), t),
        };
        flap(&old, Port::Local(LocalPort(0)));
        flap(&old, Port::Peer(PeerIdx(1)));
        assert_eq!(flap(&old, Port::Local(LocalPort(0))), Action::Drop(DropReason::MacPinned), "the second move pins it");
        // peer .2 removed: .3 is index 0 now, and the MAC stays pinned behind it
        s.peers.remove(0);
        let (new, _) = old.successor(s, t);
        assert!(new.fdb.is_pinned(LOCAL, t));
        assert_eq!(new.fdb.lookup(LOCAL, t), Some(Port::Peer(PeerIdx(0))));
        assert_eq!(flap(&new, Port::Local(LocalPort(0))), Action::Drop(DropReason::MacPinned));
    }

    #[test]
    fn counters_never_go_back_across_generations() {
        let t = Instant::from_secs(1);
        let a = Network::new(spec(&[2]));
        a.from_local(LocalPort(0), &frame(MacAddr::BROADCAST, LOCAL), t);
        a.stats.tap_rx(Shard::LOCAL, 60);
        let (b, h) = a.successor(spec(&[2, 3]), t);
        let before = b.stats.snapshot();
        h.finish(&a, &b, t);
        let (c, h) = b.successor(spec(&[3]), t);
        h.finish(&b, &c, t);
        let after = c.stats.snapshot();
        assert!(after.tap_rx_frames >= before.tap_rx_frames && after.tap_rx_frames == 1);
        assert_eq!(c.fdb.lookup(LOCAL, t), Some(Port::Local(LocalPort(0))));
    }

    #[test]
    fn a_smaller_table_keeps_the_newest_entries_up_to_its_cap() {
        let old = Network::new(spec(&[2]));
        for i in 0..10u8 {
            old.from_local(LocalPort(0), &frame(MacAddr::BROADCAST, MacAddr([2, 0, 0, 0, 1, i])), Instant::from_secs(u64::from(i) + 1));
        }
        let mut s = spec(&[2]);
        s.fdb.max_entries = 4;
        let now = Instant::from_secs(20);
        let (new, _) = old.successor(s, now);
        assert_eq!(new.fdb.len(), 4);
        assert!(new.fdb.lookup(MacAddr([2, 0, 0, 0, 1, 9]), now).is_some(), "the newest stays");
        assert!(new.fdb.lookup(MacAddr([2, 0, 0, 0, 1, 5]), now).is_none(), "older than the newest four");
    }
}
