//! Peer liveness: is the daemon behind a peer address alive, and what to do when it is not.
//!
//! Every second each daemon sends each peer of each network one *keepalive*: an Ethernet frame,
//! tunnelled like any other, addressed to [`KEEPALIVE_DST`] (01:80:c2:00:00:0f, in the IEEE
//! 802.1D link-local range that bridges never forward) with ethertype 0x88b6 (IEEE "local
//! experimental") and a short magic payload. overlayd consumes it ([`is_keepalive`]) and only
//! notes that the peer is alive; a kernel `vxlan` device or Open vSwitch peer receives a
//! link-local multicast frame with an ethertype nobody handles, and drops it. Nothing is
//! learned from a keepalive.
//!
//! A peer is *up* while packets (keepalives or traffic) keep arriving from it. A peer that was
//! seen sending keepalives is declared *down* after [`KEEPALIVE_TIMEOUT`] without a packet; a
//! peer that never sent one (a kernel or OVS peer) only after the FDB ageing time, so an idle
//! kernel peer does not flap. When a peer goes down, the MACs learned behind it are flushed at
//! once: frames for them are flooded (and reach the MACs wherever they are now) instead of
//! being black-holed towards a dead host until ageing.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use super::Network;
use crate::core::time::Instant;
use crate::core::wire::ethernet::{EthernetFrame, HEADER_LEN, MacAddr};
use crate::core::{PeerIdx, Port};

/// Destination of keepalives: IEEE 802.1D reserved link-local address, never forwarded by a
/// bridge.
pub const KEEPALIVE_DST: MacAddr = MacAddr([0x01, 0x80, 0xc2, 0x00, 0x00, 0x0f]);
/// IEEE 802 local experimental ethertype 2.
pub const KEEPALIVE_ETHERTYPE: u16 = 0x88b6;
const MAGIC: &[u8; 8] = b"overlayd";
/// Keepalive protocol version, after the magic. Version 2 says the sender takes VXLAN over
/// IPv6 with a zero UDP checksum (RFC 6935/6936): the eBPF fast path sends super-frames so.
const VERSION: u8 = 2;
/// A keepalive is a minimum-size Ethernet frame (without FCS).
pub const KEEPALIVE_LEN: usize = 60;
/// How often keepalives are sent.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Silence after which a peer that sends keepalives is declared down.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The keepalive frame a node sends; `node` (e.g. a hash of its underlay address) makes its
/// source MAC, a locally administered unicast address.
pub fn keepalive_frame(node: u32) -> [u8; KEEPALIVE_LEN] {
    let mut f = [0u8; KEEPALIVE_LEN];
    let n = node.to_be_bytes();
    f[0..6].copy_from_slice(&KEEPALIVE_DST.0);
    f[6..12].copy_from_slice(&[0x02, 0x6f, n[0], n[1], n[2], n[3]]);
    f[12..14].copy_from_slice(&KEEPALIVE_ETHERTYPE.to_be_bytes());
    f[HEADER_LEN..HEADER_LEN + MAGIC.len()].copy_from_slice(MAGIC);
    f[HEADER_LEN + MAGIC.len()] = VERSION;
    f
}

/// Whether `frame` is an overlayd keepalive (any version).
pub fn is_keepalive(frame: &[u8]) -> bool {
    frame.len() > HEADER_LEN + MAGIC.len() && {
        let e = EthernetFrame::new_unchecked(frame);
        e.dst() == KEEPALIVE_DST && e.ethertype() == KEEPALIVE_ETHERTYPE && &frame[HEADER_LEN..HEADER_LEN + MAGIC.len()] == MAGIC
    }
}

/// The keepalive version in `frame` (one that [`is_keepalive`] accepts).
pub fn keepalive_version(frame: &[u8]) -> u8 {
    frame.get(HEADER_LEN + MAGIC.len()).copied().unwrap_or(0)
}

/// What the control path knows about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PeerState {
    /// Nothing received yet.
    Unknown = 0,
    Up = 1,
    Down = 2,
}

/// A peer's liveness, shared between the data path (which marks keepalives) and the control
/// path (which decides up/down).
#[derive(Debug, Default)]
pub struct Liveness {
    state: AtomicU8,
    /// Set once a keepalive arrived: the peer is an overlayd and can be held to the short timeout.
    speaks_keepalive: AtomicU8,
    /// Set once the control path has reported `speaks_keepalive` ([`Liveness::newly_speaks`]).
    reported: AtomicU8,
    /// Set once the peer sent a whole TSO burst or a run of partial checksums: its own kernel
    /// stack sends offloaded packets on this link, so it receives ours (UDP GSO) just as well.
    sends_offloads: AtomicU8,
    /// Frames in a row whose inner checksum looked partial (see [`Liveness::partial_seen`]).
    partial_run: AtomicU8,
    /// Set once a keepalive of version 2 or later arrived: the peer takes VXLAN over IPv6 with
    /// a zero UDP checksum.
    zero_csum6: AtomicU8,
}

/// Partial-looking checksums in a row that make a peer known to send offloads. One alone is no
/// evidence: a complete checksum equals the pseudo-header sum once in 65,536 frames, so a peer
/// that never offloads (Open vSwitch's userspace datapath) shows one every few tens of MB.
pub const PARTIAL_RUN: u8 = 4;

impl Liveness {
    pub fn state(&self) -> PeerState {
        match self.state.load(Relaxed) {
            1 => PeerState::Up,
            2 => PeerState::Down,
            _ => PeerState::Unknown,
        }
    }

    pub fn speaks_keepalive(&self) -> bool {
        self.speaks_keepalive.load(Relaxed) != 0
    }

    /// Take over what another generation of the same peer knew (a reload).
    /// Whether the peer has sent partial checksums or whole TSO bursts (see the field).
    pub fn sends_offloads(&self) -> bool {
        self.sends_offloads.load(Relaxed) != 0
    }

    /// The data path saw the peer send a whole TSO burst (certain evidence); true the first time.
    pub fn offloads_seen(&self) -> bool {
        self.sends_offloads.load(Relaxed) == 0 && self.sends_offloads.swap(1, Relaxed) == 0
    }

    /// The data path saw a frame from the peer whose checksum looked partial; true the first
    /// time this completes a run of [`PARTIAL_RUN`] (the peer then counts as sending offloads).
    pub fn partial_seen(&self) -> bool {
        if self.sends_offloads() {
            return false;
        }
        let run = self.partial_run.fetch_add(1, Relaxed).saturating_add(1);
        run >= PARTIAL_RUN && self.offloads_seen()
    }

    /// A frame from the peer whose checksum did not look partial: a run is broken.
    #[inline]
    pub fn complete_seen(&self) {
        if self.partial_run.load(Relaxed) != 0 && !self.sends_offloads() {
            self.partial_run.store(0, Relaxed);
        }
    }

    /// Whether frames to the peer may go out as UDP GSO super-datagrams with checksums the
    /// kernel may leave partial: yes for an overlayd peer and for a peer whose own stack sends
    /// offloaded packets; no for the others (a userspace datapath reading the link, such as
    /// Open vSwitch's, takes neither).
    #[inline]
    pub fn takes_gso(&self) -> bool {
        self.speaks_keepalive() || self.sends_offloads()
    }

    /// True once, the first time it is asked after the peer's first keepalive: for the
    /// control path to log that the peer runs overlayd (and now gets UDP GSO).
    pub fn newly_speaks(&self) -> bool {
        self.speaks_keepalive() && self.reported.swap(1, Relaxed) == 0
    }

    /// Whether the peer takes VXLAN over IPv6 with a zero UDP checksum (it said so in its
    /// keepalives; see [`VERSION`]).
    #[inline]
    pub fn takes_zero_csum6(&self) -> bool {
        self.zero_csum6.load(Relaxed) != 0
    }

    /// A keepalive of `version` arrived from the peer.
    pub(crate) fn keepalive_version_seen(&self, version: u8) {
        if version >= 2 && self.zero_csum6.load(Relaxed) == 0 {
            self.zero_csum6.store(1, Relaxed);
        }
    }

    pub(crate) fn copy_from(&self, other: &Liveness) {
        self.zero_csum6.store(other.zero_csum6.load(Relaxed), Relaxed);
        self.state.store(other.state.load(Relaxed), Relaxed);
        self.speaks_keepalive.store(other.speaks_keepalive.load(Relaxed), Relaxed);
        self.reported.store(other.reported.load(Relaxed), Relaxed);
        self.sends_offloads.store(other.sends_offloads.load(Relaxed), Relaxed);
    }

    pub(crate) fn keepalive_seen(&self) {
        if self.speaks_keepalive.load(Relaxed) == 0 {
            self.speaks_keepalive.store(1, Relaxed);
        }
    }
}

/// A peer changed state (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerChange {
    pub peer: PeerIdx,
    pub state: PeerState,
    /// Time since the peer was last heard from (zero when it came up).
    pub silent_for: Duration,
    /// MACs flushed because the peer went down.
    pub flushed: usize,
}

impl Network {
    /// Decide every peer's state at `now`; peers that went down have their MACs flushed.
    /// Returns the changes, for the caller to log.
    pub fn check_peers(&self, now: Instant) -> Vec<PeerChange> {
        let mut changes = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            let peer = PeerIdx(i as u16);
            let last = p.last_seen.load(Relaxed);
            let old = p.liveness.state();
            if last == 0 {
                continue; // never heard of: stays Unknown (or Down)
            }
            let silent = now.saturating_since(Instant::from_millis(last));
            let timeout = if p.liveness.speaks_keepalive() { KEEPALIVE_TIMEOUT } else { self.fdb.config().ageing };
            let new = if silent > timeout { PeerState::Down } else { PeerState::Up };
            if new == old || (old == PeerState::Unknown && new == PeerState::Down) {
                if old == PeerState::Unknown && new == PeerState::Down {
                    p.liveness.state.store(PeerState::Down as u8, Relaxed);
                }
                continue;
            }
            p.liveness.state.store(new as u8, Relaxed);
            let flushed = if new == PeerState::Down {
                self.neigh.forget(crate::core::neigh::Source::Snooped(peer));
                self.neigh.forget(crate::core::neigh::Source::Cluster(peer));
                self.fdb.flush_port(Port::Peer(peer), now)
            } else {
                0
            };
            changes.push(PeerChange { peer, state: new, silent_for: if new == PeerState::Up { Duration::ZERO } else { silent }, flushed });
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::network::Action;
    use crate::core::{LocalPort, testutil};
    use std::net::SocketAddr;

    fn net() -> Network {
        // default FDB settings: 300 s ageing, the timeout of peers without keepalives
        Network::new(testutil::spec(1, vec![SocketAddr::from(([192, 0, 2, 2], 4789)), SocketAddr::from(([192, 0, 2, 3], 4789))]))
    }

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        testutil::frame(dst, src, 60)
    }

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);

    #[test]
    fn keepalive_is_consumed_marks_the_peer_and_teaches_nothing() {
        let n = net();
        let ka = keepalive_frame(0x0102_0304);
        assert!(is_keepalive(&ka));
        assert!(!n.peers[0].liveness.newly_speaks());
        assert_eq!(n.from_peer(PeerIdx(0), &ka, Instant::from_secs(1)), Action::Consumed);
        assert!(n.fdb.is_empty(), "nothing learned from a keepalive");
        assert!(n.peers[0].liveness.speaks_keepalive());
        // reported once
        assert!(n.peers[0].liveness.newly_speaks());
        assert!(!n.peers[0].liveness.newly_speaks());
        assert_eq!(n.from_peer(PeerIdx(0), &ka, Instant::from_secs(1)), Action::Consumed);
        assert!(!n.peers[0].liveness.newly_speaks());
        // an overlayd peer takes GSO; another peer only once it sent offloaded packets itself
        assert!(n.peers[0].liveness.takes_gso());
        let other = &n.peers[1].liveness;
        assert!(!other.takes_gso() && !other.sends_offloads());
        assert!(other.offloads_seen());
        assert!(!other.offloads_seen(), "reported once");
        assert!(other.takes_gso() && !other.speaks_keepalive());
        assert_eq!(n.peers[0].last_seen.load(Relaxed), 1000);
        // partial-looking checksums count only in a run: a lone one is a complete checksum that
        // happens to equal the pseudo-header sum
        let third = &n.peers[0].liveness;
        for _ in 0..10 {
            for _ in 1..PARTIAL_RUN {
                assert!(!third.partial_seen());
            }
            third.complete_seen();
        }
        assert!(!third.sends_offloads(), "broken runs are no evidence");
        for _ in 1..PARTIAL_RUN {
            assert!(!third.partial_seen());
        }
        assert!(third.partial_seen(), "a run of {PARTIAL_RUN} is, once");
        assert!(!third.partial_seen());
        assert!(third.sends_offloads());
        // from a local port it is just a (link-local multicast) frame
        assert_eq!(n.from_local(LocalPort(0), &ka, Instant::from_secs(1)), Action::Flood);
        // a frame to the same address with another payload is not a keepalive
        let mut other = ka;
        other[HEADER_LEN] ^= 1;
        assert!(!is_keepalive(&other));
        assert!(!is_keepalive(&ka[..20]));
    }

    #[test]
    fn a_silent_overlayd_peer_goes_down_and_its_macs_are_flushed() {
        let n = net();
        let ka = keepalive_frame(7);
        n.from_peer(PeerIdx(0), &ka, Instant::from_secs(1));
        n.from_peer(PeerIdx(0), &frame(MacAddr::BROADCAST, A), Instant::from_secs(1));
        assert_eq!(n.fdb.lookup(A, Instant::from_secs(1)), Some(Port::Peer(PeerIdx(0))));
        let up = n.check_peers(Instant::from_secs(2));
        assert_eq!(up, vec![PeerChange { peer: PeerIdx(0), state: PeerState::Up, silent_for: Duration::ZERO, flushed: 0 }]);
        assert_eq!(n.peers[1].liveness.state(), PeerState::Unknown, "never heard of");
        assert_eq!(n.check_peers(Instant::from_secs(4)), vec![], "3 s of silence is still up");
        let down = n.check_peers(Instant::from_millis(4_001));
        assert_eq!(down.len(), 1);
        assert_eq!((down[0].state, down[0].flushed), (PeerState::Down, 1));
        assert_eq!(n.fdb.lookup(A, Instant::from_secs(5)), None, "flushed: frames for A flood now");
        // it comes back
        n.from_peer(PeerIdx(0), &ka, Instant::from_secs(10));
        assert_eq!(n.check_peers(Instant::from_secs(10))[0].state, PeerState::Up);
    }

    #[test]
    fn a_peer_without_keepalives_is_held_to_the_ageing_time() {
        let n = net();
        n.from_peer(PeerIdx(1), &frame(MacAddr::BROADCAST, A), Instant::from_secs(1));
        assert_eq!(n.check_peers(Instant::from_secs(1))[0].state, PeerState::Up);
        assert_eq!(n.check_peers(Instant::from_secs(60)), vec![], "an idle kernel peer does not flap");
        assert_eq!(n.check_peers(Instant::from_secs(302))[0].state, PeerState::Down);
    }
}
