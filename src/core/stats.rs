//! Counters and drop reasons.
//!
//! Every drop is a value with a reason: the data path never propagates an error for a bad
//! packet, it counts it under one [`DropReason`] and moves on. The reasons are a closed enum,
//! so the `reason` label of `overlayd_drops_total` has a bounded set of values.
//!
//! Counters are `AtomicU64`s updated with relaxed `fetch_add`. Each network keeps a few
//! cache-line-aligned shards and each data thread writes to its own shard
//! ([`Shard::per_thread`]), so two threads never bounce a line between cores on the per-frame
//! path; a scrape sums the shards.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident => $label:literal, )*) => {
        /// Why a frame or packet was dropped. One variant per `reason` label value.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[$doc])* $variant, )*
        }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// The Prometheus label value.
            pub const fn as_str(self) -> &'static str {
                match self { $( DropReason::$variant => $label, )* }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than the headers it should hold (outer, tunnel or inner Ethernet).
    Malformed => "malformed",
    /// VXLAN header without the I flag (RFC 7348 §5).
    BadFlags => "bad_flags",
    /// Tunnel packet for a VNI/key that no network of this daemon uses.
    UnknownVni => "unknown_vni",
    /// Tunnel packet whose outer source is not a configured peer of that network.
    UnknownPeer => "unknown_peer",
    /// Source MAC is multicast, broadcast or all-zero: never a valid sender.
    BadSourceMac => "bad_source_mac",
    /// Destination lives on the port the frame came in on.
    Hairpin => "hairpin",
    /// A frame from a tunnel addressed to a MAC behind another tunnel (split horizon).
    SplitHorizon => "split_horizon",
    /// Frame larger than the network's MTU allows.
    MtuExceeded => "mtu_exceeded",
    /// Writing to a local port (TAP) failed.
    TapWriteFailed => "tap_write_failed",
    /// Sending to the underlay failed.
    SendFailed => "send_failed",
    /// GRE version other than 0 (RFC 2784 §2.3.1).
    GreVersion => "gre_version",
    /// GRE routing bit set (RFC 1701 source routing, not supported).
    GreRouting => "gre_routing",
    /// GRE protocol type other than 0x6558 (transparent Ethernet bridging).
    GreProtocol => "gre_protocol",
    /// GRE without a key, but no keyless GRE network is configured.
    GreKeyMissing => "gre_key_missing",
    /// GRE with a key, but only a keyless GRE network is configured.
    GreKeyUnexpected => "gre_key_unexpected",
    /// GRE checksum present and wrong.
    GreChecksum => "gre_checksum",
    /// A VM port's socket buffer is full (the VM does not read fast enough).
    PortBusy => "port_busy",
    /// Writing to a VM port failed, or the port disconnected meanwhile.
    PortWriteFailed => "port_write_failed",
    /// A VM client sent a frame length that cannot be (0 or beyond the largest frame); it is
    /// disconnected.
    BadFraming => "bad_framing",
    /// A datagram from a VM socket client without an address to answer to.
    UnnamedSender => "unnamed_sender",
    /// A flooded (broadcast, multicast, unknown-unicast) frame beyond the ingress port's
    /// `bum_pps_limit`.
    StormLimit => "storm_limit",
    /// A frame whose source MAC is pinned to another port (it moved more than
    /// `mac_move_limit` times within `mac_move_window_secs`).
    MacPinned => "mac_pinned",
    /// A frame from an offloading TAP whose virtio-net header does not match it, or asks for
    /// a segmentation we do not do.
    BadOffload => "bad_offload",
    /// Unicast to a MAC nobody advertises, on a network with `unknown_unicast = "drop"`.
    UnknownUnicast => "unknown_unicast",
}

/// Path-MTU events of a network (see [`super::pmtu`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PmtuEvent {
    /// ICMP "fragmentation needed" sent back to a local port.
    SignalV4,
    /// ICMPv6 "packet too big" sent back to a local port.
    SignalV6,
    /// A signal not sent: the port's rate limit was spent.
    RateLimited,
    /// The MSS option of a TCP SYN lowered (`mss_clamp`).
    MssClamped,
}

impl PmtuEvent {
    pub const COUNT: usize = 4;
}

/// Per-network counters, one instance per shard.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct NetCounters {
    pub tap_rx_frames: AtomicU64,
    pub tap_rx_bytes: AtomicU64,
    pub tap_tx_frames: AtomicU64,
    pub tap_tx_bytes: AtomicU64,
    pub flooded_frames: AtomicU64,
    /// Frames from a peer whose inner TCP/UDP checksum was partial and was completed.
    pub partial_checksums: AtomicU64,
    /// Frames read from a TAP by an underlay thread right after it wrote into that TAP (run to
    /// completion); also in `tap_rx_frames`.
    pub tap_rx_inline_frames: AtomicU64,
    /// Frames from peers that took the receive decision of their GRO run's first datagram
    /// (see [`super::network::run`]); also in the peers' receive counters.
    pub run_frames: AtomicU64,
    /// UDP datagrams from peers written to a TAP inside a super-frame of several (UDP
    /// segmentation offload); each super-frame counts once in `tap_tx_frames`.
    pub tap_tx_udp_coalesced: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
    pub pmtu: [AtomicU64; PmtuEvent::COUNT],
}

/// Per-peer counters, one instance per shard.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PeerCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
}

/// Shards per network. Every data-path thread takes its own ([`Shard::per_thread`]) while there
/// are shards left, then they are shared round robin (still correct: the counters are atomics).
pub const SHARDS: usize = 8;

/// Which shard a thread writes: chosen once per thread, never per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard(pub usize);

impl Shard {
    pub const LOCAL: Shard = Shard(0);
    pub const UNDERLAY: Shard = Shard(1);
    pub const CONTROL: Shard = Shard(2);

    /// The calling thread's own shard: threads are numbered as they first ask (after the
    /// three role shards above), so two data-path threads of one network never write the same
    /// cache line until there are more threads than shards.
    pub fn per_thread() -> Shard {
        static NEXT: AtomicUsize = AtomicUsize::new(3);
        thread_local! {
            static MINE: Cell<Option<usize>> = const { Cell::new(None) };
        }
        MINE.with(|m| {
            let id = m.get().unwrap_or_else(|| {
                let id = next_shard(&NEXT);
                m.set(Some(id));
                id
            });
            Shard(id)
        })
    }
}

fn next_shard(next: &AtomicUsize) -> usize {
    next.fetch_add(1, Relaxed) % SHARDS
}

/// Counters of one network (and of its peers), sharded by thread role.
#[derive(Debug)]
pub struct NetStats {
    net: [NetCounters; SHARDS],
    peers: Box<[[PeerCounters; SHARDS]]>,
}

/// A plain sum over shards, for export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetSnapshot {
    pub tap_rx_frames: u64,
    pub tap_rx_bytes: u64,
    pub tap_tx_frames: u64,
    pub tap_tx_bytes: u64,
    pub flooded_frames: u64,
    pub partial_checksums: u64,
    pub tap_rx_inline_frames: u64,
    pub run_frames: u64,
    pub tap_tx_udp_coalesced: u64,
    pub drops: [u64; DropReason::COUNT],
    /// By [`PmtuEvent`].
    pub pmtu: [u64; PmtuEvent::COUNT],
    pub peers: Vec<PeerSnapshot>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl NetSnapshot {
    /// What was counted between `earlier` and this snapshot of the same counters (wrapping).
    pub fn since(&self, earlier: &NetSnapshot) -> NetSnapshot {
        let d = |a: u64, b: u64| a.wrapping_sub(b);
        let mut drops = [0u64; DropReason::COUNT];
        for (i, v) in drops.iter_mut().enumerate() {
            *v = d(self.drops[i], earlier.drops[i]);
        }
        let mut pmtu = [0u64; PmtuEvent::COUNT];
        for (i, v) in pmtu.iter_mut().enumerate() {
            *v = d(self.pmtu[i], earlier.pmtu[i]);
        }
        NetSnapshot {
            tap_rx_frames: d(self.tap_rx_frames, earlier.tap_rx_frames),
            tap_rx_bytes: d(self.tap_rx_bytes, earlier.tap_rx_bytes),
            tap_tx_frames: d(self.tap_tx_frames, earlier.tap_tx_frames),
            tap_tx_bytes: d(self.tap_tx_bytes, earlier.tap_tx_bytes),
            flooded_frames: d(self.flooded_frames, earlier.flooded_frames),
            partial_checksums: d(self.partial_checksums, earlier.partial_checksums),
            tap_rx_inline_frames: d(self.tap_rx_inline_frames, earlier.tap_rx_inline_frames),
            run_frames: d(self.run_frames, earlier.run_frames),
            tap_tx_udp_coalesced: d(self.tap_tx_udp_coalesced, earlier.tap_tx_udp_coalesced),
            drops,
            pmtu,
            peers: self
                .peers
                .iter()
                .zip(&earlier.peers)
                .map(|(a, b)| PeerSnapshot {
                    tx_packets: d(a.tx_packets, b.tx_packets),
                    tx_bytes: d(a.tx_bytes, b.tx_bytes),
                    rx_packets: d(a.rx_packets, b.rx_packets),
                    rx_bytes: d(a.rx_bytes, b.rx_bytes),
                })
                .collect(),
        }
    }

    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    pub fn pmtu_count(&self, e: PmtuEvent) -> u64 {
        self.pmtu[e as usize]
    }
}

#[inline]
fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

impl NetStats {
    pub fn new(peers: usize) -> Self {
        NetStats {
            net: Default::default(),
            peers: (0..peers).map(|_| Default::default()).collect(),
        }
    }

    #[inline]
    pub fn shard(&self, s: Shard) -> &NetCounters {
        &self.net[s.0 % SHARDS]
    }

    #[inline]
    pub fn count_drop(&self, s: Shard, r: DropReason) {
        add(&self.shard(s).drops[r as usize], 1);
    }

    #[inline]
    pub fn tap_rx(&self, s: Shard, bytes: usize) {
        let c = self.shard(s);
        add(&c.tap_rx_frames, 1);
        add(&c.tap_rx_bytes, bytes as u64);
    }

    #[inline]
    pub fn tap_tx(&self, s: Shard, bytes: usize) {
        let c = self.shard(s);
        add(&c.tap_tx_frames, 1);
        add(&c.tap_tx_bytes, bytes as u64);
    }

    #[inline]
    pub fn pmtu(&self, s: Shard, e: PmtuEvent) {
        add(&self.shard(s).pmtu[e as usize], 1);
    }

    #[inline]
    pub fn flooded(&self, s: Shard) {
        add(&self.shard(s).flooded_frames, 1);
    }

    #[inline]
    pub fn partial_checksum(&self, s: Shard) {
        add(&self.shard(s).partial_checksums, 1);
    }

    /// `frames` read from a TAP by an underlay thread (run to completion), once per batch.
    #[inline]
    pub fn tap_rx_inline(&self, s: Shard, frames: usize) {
        add(&self.shard(s).tap_rx_inline_frames, frames as u64);
    }

    /// `frames` from peers decided by their run (see [`super::network::run`]), once per run.
    #[inline]
    pub fn run_frames(&self, s: Shard, frames: usize) {
        add(&self.shard(s).run_frames, frames as u64);
    }

    /// `datagrams` written to a TAP as one UDP super-frame, once per super-frame.
    #[inline]
    pub fn tap_tx_udp_coalesced(&self, s: Shard, datagrams: usize) {
        add(&self.shard(s).tap_tx_udp_coalesced, datagrams as u64);
    }

    #[inline]
    pub fn peer_tx(&self, s: Shard, peer: usize, bytes: usize) {
        self.peer_tx_n(s, peer, 1, bytes);
    }

    /// `packets` tunnel packets of `bytes` in all to `peer` (the segments of one send).
    #[inline]
    pub fn peer_tx_n(&self, s: Shard, peer: usize, packets: usize, bytes: usize) {
        if let Some(p) = self.peers.get(peer) {
            let c = &p[s.0 % SHARDS];
            add(&c.tx_packets, packets as u64);
            add(&c.tx_bytes, bytes as u64);
        }
    }

    #[inline]
    pub fn peer_rx(&self, s: Shard, peer: usize, bytes: usize) {
        self.peer_rx_n(s, peer, 1, bytes);
    }

    /// `packets` tunnel packets of `bytes` in all from `peer`.
    pub fn peer_rx_n(&self, s: Shard, peer: usize, packets: usize, bytes: usize) {
        if let Some(p) = self.peers.get(peer) {
            let c = &p[s.0 % SHARDS];
            add(&c.rx_packets, packets as u64);
            add(&c.rx_bytes, bytes as u64);
        }
    }

    /// Add `d` to these counters (into the control shard), its peer `i` counted as peer
    /// `peer_map[i]` here and left out where that is `None`. Wrapping: `d` may be a difference
    /// of two snapshots ([`NetSnapshot::since`]). Carries a network's counters over to its next
    /// generation on a reload, so exported counters never go back.
    pub fn absorb(&self, d: &NetSnapshot, peer_map: &[Option<usize>]) {
        let c = self.shard(Shard::CONTROL);
        let wadd = |a: &AtomicU64, n: u64| {
            if n != 0 {
                a.fetch_add(n, Relaxed);
            }
        };
        wadd(&c.tap_rx_frames, d.tap_rx_frames);
        wadd(&c.tap_rx_bytes, d.tap_rx_bytes);
        wadd(&c.tap_tx_frames, d.tap_tx_frames);
        wadd(&c.tap_tx_bytes, d.tap_tx_bytes);
        wadd(&c.flooded_frames, d.flooded_frames);
        wadd(&c.partial_checksums, d.partial_checksums);
        wadd(&c.tap_rx_inline_frames, d.tap_rx_inline_frames);
        wadd(&c.run_frames, d.run_frames);
        wadd(&c.tap_tx_udp_coalesced, d.tap_tx_udp_coalesced);
        for (a, n) in c.drops.iter().zip(&d.drops) {
            wadd(a, *n);
        }
        for (a, n) in c.pmtu.iter().zip(&d.pmtu) {
            wadd(a, *n);
        }
        for (p, to) in d.peers.iter().zip(peer_map) {
            if let Some(pc) = to.and_then(|i| self.peers.get(i)) {
                let pc = &pc[Shard::CONTROL.0];
                wadd(&pc.tx_packets, p.tx_packets);
                wadd(&pc.tx_bytes, p.tx_bytes);
                wadd(&pc.rx_packets, p.rx_packets);
                wadd(&pc.rx_bytes, p.rx_bytes);
            }
        }
    }

    pub fn snapshot(&self) -> NetSnapshot {
        let mut s = NetSnapshot::default();
        for c in &self.net {
            s.tap_rx_frames += c.tap_rx_frames.load(Relaxed);
            s.tap_rx_bytes += c.tap_rx_bytes.load(Relaxed);
            s.tap_tx_frames += c.tap_tx_frames.load(Relaxed);
            s.tap_tx_bytes += c.tap_tx_bytes.load(Relaxed);
            s.flooded_frames += c.flooded_frames.load(Relaxed);
            s.partial_checksums += c.partial_checksums.load(Relaxed);
            s.tap_rx_inline_frames += c.tap_rx_inline_frames.load(Relaxed);
            s.run_frames += c.run_frames.load(Relaxed);
            s.tap_tx_udp_coalesced += c.tap_tx_udp_coalesced.load(Relaxed);
            for (d, a) in s.drops.iter_mut().zip(&c.drops) {
                *d += a.load(Relaxed);
            }
            for (d, a) in s.pmtu.iter_mut().zip(&c.pmtu) {
                *d += a.load(Relaxed);
            }
        }
        s.peers = self
            .peers
            .iter()
            .map(|shards| {
                let mut p = PeerSnapshot::default();
                for c in shards {
                    p.tx_packets += c.tx_packets.load(Relaxed);
                    p.tx_bytes += c.tx_bytes.load(Relaxed);
                    p.rx_packets += c.rx_packets.load(Relaxed);
                    p.rx_bytes += c.rx_bytes.load(Relaxed);
                }
                p
            })
            .collect();
        s
    }
}

/// Drops that cannot be charged to a network (the VNI names none), daemon-wide.
#[derive(Debug, Default)]
pub struct GlobalDrops {
    drops: [AtomicU64; DropReason::COUNT],
}

impl GlobalDrops {
    #[inline]
    pub fn count_drop(&self, r: DropReason) {
        add(&self.drops[r as usize], 1);
    }

    pub fn snapshot(&self) -> [u64; DropReason::COUNT] {
        let mut out = [0; DropReason::COUNT];
        for (o, a) in out.iter_mut().zip(&self.drops) {
            *o = a.load(Relaxed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            let l = r.as_str();
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
            assert!(seen.insert(l), "duplicate label {l}");
        }
    }

    #[test]
    fn each_thread_gets_its_own_shard_and_keeps_it() {
        let mine = Shard::per_thread();
        assert_eq!(Shard::per_thread(), mine, "a thread keeps its shard");
        assert!(mine.0 < SHARDS);
        // numbering starts after the role shards and uses every shard before reusing one
        let next = AtomicUsize::new(3);
        let ids: Vec<usize> = (0..SHARDS).map(|_| next_shard(&next)).collect();
        assert_eq!(&ids[..SHARDS - 3], &[3, 4, 5, 6, 7][..SHARDS - 3]);
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), SHARDS);
    }

    #[test]
    fn counts_from_many_threads_all_arrive() {
        let s = std::sync::Arc::new(NetStats::new(1));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let shard = Shard::per_thread();
                    for _ in 0..1000 {
                        s.tap_rx(shard, 2);
                        s.peer_tx(shard, 0, 3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let snap = s.snapshot();
        assert_eq!((snap.tap_rx_frames, snap.tap_rx_bytes), (12_000, 24_000));
        assert_eq!((snap.peers[0].tx_packets, snap.peers[0].tx_bytes), (12_000, 36_000));
    }

    #[test]
    fn snapshot_sums_every_shard() {
        let s = NetStats::new(2);
        s.tap_rx(Shard::LOCAL, 100);
        s.tap_rx(Shard::UNDERLAY, 50);
        s.count_drop(Shard::LOCAL, DropReason::Hairpin);
        s.count_drop(Shard::CONTROL, DropReason::Hairpin);
        s.peer_tx(Shard::LOCAL, 1, 10);
        s.peer_tx(Shard::UNDERLAY, 1, 5);
        s.peer_tx(Shard::LOCAL, 9, 5); // no such peer: ignored, not a panic
        let snap = s.snapshot();
        assert_eq!(snap.tap_rx_frames, 2);
        assert_eq!(snap.tap_rx_bytes, 150);
        assert_eq!(snap.drop_count(DropReason::Hairpin), 2);
        assert_eq!(snap.peers[1], PeerSnapshot { tx_packets: 2, tx_bytes: 15, ..Default::default() });
        assert_eq!(snap.peers[0], PeerSnapshot::default());
    }

    #[test]
    fn a_send_of_segments_counts_its_exact_bytes() {
        let s = NetStats::new(1);
        // 3 segments of 1514 + 1514 + 100 bytes: no share of the total dropped per segment
        s.peer_tx_n(Shard::LOCAL, 0, 3, 3128);
        s.run_frames(Shard::UNDERLAY, 4);
        let snap = s.snapshot();
        assert_eq!((snap.peers[0].tx_packets, snap.peers[0].tx_bytes), (3, 3128));
        assert_eq!(snap.run_frames, 4);
    }

    #[test]
    fn a_udp_super_frame_is_one_tap_frame_and_its_datagrams_are_counted_coalesced() {
        let s = NetStats::new(1);
        s.tap_tx(Shard::UNDERLAY, 14 + 20 + 8 + 3 * 64);
        s.tap_tx_udp_coalesced(Shard::UNDERLAY, 3);
        s.tap_tx_udp_coalesced(Shard::LOCAL, 2);
        let snap = s.snapshot();
        assert_eq!((snap.tap_tx_frames, snap.tap_tx_bytes, snap.tap_tx_udp_coalesced), (1, 234, 5));
        assert_eq!(snap.since(&NetSnapshot { tap_tx_udp_coalesced: 2, ..snap.clone() }).tap_tx_udp_coalesced, 3);
    }
}
