//! A plain copy of every counter and gauge of a running daemon, taken on the control path.
//!
//! The data path only bumps atomics (sharded per thread role, see `core::stats`); a
//! [`Sample`] folds the shards into plain numbers once per scrape or admin request. The same
//! struct feeds the Prometheus exporter (`metrics::Metrics`) and the admin socket's `stats` and
//! `peers` answers, so the two views can never disagree about what a counter means.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use crate::core::Instant;
use crate::core::fabric::Fabric;
use crate::core::stats::{DropReason, GlobalDrops, PmtuEvent};

/// Counters of the whole daemon at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub networks: Vec<NetSample>,
    /// Drops that belong to no configured network (unknown VNI, a tunnel header too short or
    /// with bad flags to tell the network): reason label -> count, every reason listed.
    pub unattributed_drops: BTreeMap<String, u64>,
    /// The `[cluster]` state, when the daemon has one (filled by the daemon, not by [`take`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::daemon::cluster::ClusterStatus>,
}

/// Counters of one network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetSample {
    pub name: String,
    pub encap: String,
    pub vni: u32,
    pub tap_rx_frames: u64,
    pub tap_rx_bytes: u64,
    pub tap_tx_frames: u64,
    pub tap_tx_bytes: u64,
    pub flooded_frames: u64,
    /// Frames from peers whose partial inner checksum was completed.
    #[serde(default)]
    pub partial_checksums: u64,
    /// Frames read from a local TAP by an underlay thread right after writing into it (run
    /// to completion); also in `tap_rx_frames`.
    #[serde(default)]
    pub tap_rx_inline_frames: u64,
    /// Frames from peers that took the forwarding decision of their GRO run's first datagram
    /// (per-run receive decisions); also in the peers' `rx_packets`.
    #[serde(default)]
    pub run_frames: u64,
    /// UDP datagrams from peers written to a TAP inside a super-frame of several; each
    /// super-frame is one of `tap_tx_frames`.
    #[serde(default)]
    pub tap_tx_udp_coalesced: u64,
    /// Reason label -> count; every reason of `DropReason::ALL` is present.
    pub drops: BTreeMap<String, u64>,
    pub fdb_entries: u64,
    /// The table's cap (`fdb_max_entries`).
    #[serde(default)]
    pub fdb_max_entries: u64,
    pub fdb_events: FdbEventCounts,
    pub peers: Vec<PeerSample>,
    /// VMs connected now (socket and datagram ports).
    #[serde(default)]
    pub vm_ports: u64,
    /// VM connections since start: (connected, disconnected, refused).
    #[serde(default)]
    pub vm_connections: VmConnectionCounts,
    /// Path-MTU signals and MSS clamps since start.
    #[serde(default)]
    pub pmtu: PmtuCounts,
    /// IP → MAC bindings held for ARP/ND suppression.
    #[serde(default)]
    pub neigh_bindings: u64,
    /// ARP requests / neighbour solicitations answered (hit) or flooded for want of a
    /// binding (miss), by family.
    #[serde(default)]
    pub neigh_suppressed: NeighSuppressedCounts,
    /// DHCP messages snooped, in `core::neigh::dhcp::LABELS` order (message, result).
    #[serde(default)]
    pub neigh_dhcp: [u64; crate::core::neigh::dhcp::SLOTS],
    /// Who forwards its known unicast: "ebpf" or "userspace".
    #[serde(default)]
    pub datapath: String,
    /// Frames the eBPF fast path carried: [from TAP ports, tunnel packets received].
    #[serde(default)]
    pub fast_frames: [u64; 2],
}

/// `overlayd_pmtu_signals_total{family}`, `overlayd_pmtu_signals_limited_total`,
/// `overlayd_mss_clamped_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmtuCounts {
    /// ICMP "fragmentation needed" sent to local ports.
    pub signals_ipv4: u64,
    /// ICMPv6 "packet too big" sent to local ports.
    pub signals_ipv6: u64,
    /// Signals not sent: the port's rate limit was spent.
    pub rate_limited: u64,
    /// TCP SYNs whose MSS was lowered.
    pub mss_clamped: u64,
}

/// `overlayd_neigh_suppressed_total{family,result}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighSuppressedCounts {
    pub ipv4_hit: u64,
    pub ipv4_miss: u64,
    pub ipv6_hit: u64,
    pub ipv6_miss: u64,
}

impl NeighSuppressedCounts {
    /// (family label, result label, count), in a fixed order.
    pub fn labelled(&self) -> [(&'static str, &'static str, u64); 4] {
        [
            ("ipv4", "hit", self.ipv4_hit),
            ("ipv4", "miss", self.ipv4_miss),
            ("ipv6", "hit", self.ipv6_hit),
            ("ipv6", "miss", self.ipv6_miss),
        ]
    }
}

/// `overlayd_vm_connections_total{event}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConnectionCounts {
    pub connected: u64,
    pub disconnected: u64,
    pub refused: u64,
}

impl VmConnectionCounts {
    /// (event label, count) pairs, in a fixed order.
    pub fn labelled(&self) -> [(&'static str, u64); 3] {
        [("connected", self.connected), ("disconnected", self.disconnected), ("refused", self.refused)]
    }
}

/// Changes of a MAC table since start (`overlayd_fdb_events_total{event}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEventCounts {
    pub learned: u64,
    pub moved: u64,
    pub expired: u64,
    pub evicted: u64,
    pub flushed: u64,
    /// MACs pinned to their port for moving too often (`mac_move_limit`).
    #[serde(default)]
    pub pinned: u64,
    /// Entries of type `cluster` moved by the data path (a frame from elsewhere).
    #[serde(default)]
    pub cluster_moved: u64,
}

impl FdbEventCounts {
    /// (event label, count) pairs, in a fixed order.
    pub fn labelled(&self) -> [(&'static str, u64); 7] {
        [
            ("learned", self.learned),
            ("moved", self.moved),
            ("expired", self.expired),
            ("evicted", self.evicted),
            ("flushed", self.flushed),
            ("pinned", self.pinned),
            ("cluster_moved", self.cluster_moved),
        ]
    }
}

/// Traffic with one peer of a network, and when it was last heard from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerSample {
    /// The peer's underlay address (no port).
    pub peer: String,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Seconds since a packet of this network last came from the peer; `None` = never.
    pub last_seen_ago_secs: Option<f64>,
    /// The same moment as a Unix time in seconds; `None` = never.
    pub last_seen_unix: Option<f64>,
    /// The peer is alive (packets or keepalives keep coming); false when down or never heard.
    #[serde(default)]
    pub up: bool,
    /// The peer sent overlayd keepalives: it gets UDP GSO and checksummed datagrams; any other
    /// peer (a kernel vxlan device, Open vSwitch) gets one datagram per segment.
    #[serde(default)]
    pub speaks_overlayd: bool,
    /// The peer gets UDP GSO: it speaks overlayd, or its own stack sends offloaded packets
    /// (partial checksums, whole TSO bursts: a kernel on a link that keeps offloads).
    #[serde(default)]
    pub gets_gso: bool,
    /// "static" (the config file's) or "cluster" (a member found through `[cluster]`).
    #[serde(default = "static_source")]
    pub source: String,
}

fn static_source() -> String {
    "static".into()
}

fn drop_map(counts: &[u64; DropReason::COUNT]) -> BTreeMap<String, u64> {
    DropReason::ALL.iter().map(|r| (r.as_str().to_string(), counts[*r as usize])).collect()
}

/// Fold every counter of `fabric` into a [`Sample`]. `now` is the data path's clock (the one
/// peers' last-seen times are taken on), `unix_now` the wall clock at the same moment.
pub fn take<P>(fabric: &Fabric<P>, global: &GlobalDrops, now: Instant, unix_now: f64) -> Sample {
    let networks = fabric
        .networks
        .iter()
        .map(|e| {
            let net = &e.net;
            let s = net.stats.snapshot();
            let ev = &net.fdb.events;
            let peers = net
                .peers
                .iter()
                .zip(s.peers.iter().copied().chain(std::iter::repeat(Default::default())))
                .map(|(p, c)| {
                    let seen = p.last_seen.load(Relaxed);
                    let ago = (seen != 0).then(|| now.saturating_since(Instant::from_millis(seen)).as_secs_f64());
                    PeerSample {
                        peer: p.addr.ip().to_string(),
                        tx_packets: c.tx_packets,
                        tx_bytes: c.tx_bytes,
                        rx_packets: c.rx_packets,
                        rx_bytes: c.rx_bytes,
                        last_seen_ago_secs: ago,
                        last_seen_unix: ago.map(|a| unix_now - a),
                        up: p.liveness.state() == crate::core::liveness::PeerState::Up,
                        speaks_overlayd: p.liveness.speaks_keepalive(),
                        gets_gso: p.liveness.takes_gso(),
                        source: static_source(),
                    }
                })
                .collect();
            NetSample {
                name: net.name().to_string(),
                encap: net.spec.encap.to_string(),
                vni: net.spec.vni.get(),
                tap_rx_frames: s.tap_rx_frames,
                tap_rx_bytes: s.tap_rx_bytes,
                tap_tx_frames: s.tap_tx_frames,
                tap_tx_bytes: s.tap_tx_bytes,
                flooded_frames: s.flooded_frames,
                partial_checksums: s.partial_checksums,
                tap_rx_inline_frames: s.tap_rx_inline_frames,
                run_frames: s.run_frames,
                tap_tx_udp_coalesced: s.tap_tx_udp_coalesced,
                drops: drop_map(&s.drops),
                fdb_entries: net.fdb.len() as u64,
                fdb_max_entries: net.fdb.config().max_entries as u64,
                fdb_events: FdbEventCounts {
                    learned: ev.learned.load(Relaxed),
                    moved: ev.moved.load(Relaxed),
                    expired: ev.expired.load(Relaxed),
                    evicted: ev.evicted.load(Relaxed),
                    flushed: ev.flushed.load(Relaxed),
                    pinned: ev.pinned.load(Relaxed),
                    cluster_moved: ev.cluster_moved.load(Relaxed),
                },
                peers,
                vm_ports: net.vm_ports.connected.load(Relaxed),
                vm_connections: VmConnectionCounts {
                    connected: net.vm_ports.connects.load(Relaxed),
                    disconnected: net.vm_ports.disconnects.load(Relaxed),
                    refused: net.vm_ports.refused.load(Relaxed),
                },
                pmtu: PmtuCounts {
                    signals_ipv4: s.pmtu_count(PmtuEvent::SignalV4),
                    signals_ipv6: s.pmtu_count(PmtuEvent::SignalV6),
                    rate_limited: s.pmtu_count(PmtuEvent::RateLimited),
                    mss_clamped: s.pmtu_count(PmtuEvent::MssClamped),
                },
                neigh_bindings: net.neigh.len() as u64,
                neigh_suppressed: {
                    let [ipv4_hit, ipv4_miss, ipv6_hit, ipv6_miss] = net.neigh.counters.snapshot();
                    NeighSuppressedCounts { ipv4_hit, ipv4_miss, ipv6_hit, ipv6_miss }
                },
                neigh_dhcp: net.neigh.dhcp.snapshot(),
                datapath: "userspace".into(),
                fast_frames: [0, 0],
            }
        })
        .collect();
    Sample { networks, unattributed_drops: drop_map(&global.snapshot()), cluster: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fabric::NetEntry;
    use crate::core::stats::Shard;
    use crate::core::{FdbConfig, Network, NetworkSpec, PeerIdx};
    use std::net::SocketAddr;
    use std::sync::Arc;

    pub(crate) fn fabric() -> Fabric<()> {
        let net = Network::new(NetworkSpec::vxlan("blue", 42, vec![SocketAddr::from(([192, 0, 2, 2], 4789)), SocketAddr::from(([192, 0, 2, 3], 4789))]));
        Fabric::new(vec![NetEntry { net: Arc::new(net), io: () }], &[4789])
    }

    #[test]
    fn sample_carries_every_counter_and_the_peer_ages() {
        let f = fabric();
        let net = &f.networks[0].net;
        net.stats.tap_rx(Shard::LOCAL, 60);
        net.stats.peer_tx(Shard::LOCAL, 1, 110);
        net.stats.count_drop(Shard::UNDERLAY, DropReason::UnknownPeer);
        let frame = [[0xffu8; 6], [2, 0, 0, 0, 0, 1]].concat().into_iter().chain([8, 0]).chain([0; 46]).collect::<Vec<u8>>();
        net.from_peer(PeerIdx(0), &frame, Instant::from_secs(10));
        let global = GlobalDrops::default();
        global.count_drop(DropReason::UnknownVni);

        let s = take(&f, &global, Instant::from_secs(13), 1_000_000.0);
        let n = &s.networks[0];
        assert_eq!((n.name.as_str(), n.vni, n.encap.as_str()), ("blue", 42, "vxlan"));
        assert_eq!((n.tap_rx_frames, n.tap_rx_bytes), (1, 60));
        assert_eq!(n.drops.len(), DropReason::COUNT);
        assert_eq!(n.drops["unknown_peer"], 1);
        assert_eq!(n.drops["unknown_vni"], 0);
        assert_eq!(s.unattributed_drops["unknown_vni"], 1);
        assert_eq!(n.fdb_entries, 1);
        assert_eq!(n.fdb_max_entries, FdbConfig::default().max_entries as u64);
        assert_eq!(n.fdb_events.learned, 1);
        assert_eq!(n.peers[0].peer, "192.0.2.2");
        assert_eq!(n.peers[0].last_seen_ago_secs, Some(3.0));
        assert_eq!(n.peers[0].last_seen_unix, Some(999_997.0));
        assert_eq!(n.peers[1].last_seen_ago_secs, None, "never heard from");
        assert_eq!((n.peers[1].tx_packets, n.peers[1].tx_bytes), (1, 110));
    }
}
