//! The one switch loop of every local port: [`FrameBatch`] holds what a port read (a TAP, a
//! packet socket, a VM's stream or datagrams), and [`Switcher::switch`] decides each frame
//! with [`Network::from_local`], writes the tunnel header into the headroom in front of it
//! (no copy of the frame), queues it for its peer(s), delivers local and flooded copies, and
//! sends the whole batch with one `sendmmsg` per source-port socket (or on the raw GRE
//! socket). TCP super-frames from an offloading TAP are cut into segments by [`Segmenter`],
//! the payload left in place.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::core::neigh;
use crate::core::offload::{TsoPlan, VNET_HDR_LEN, VnetHdr, finish_partial_checksum};
use crate::core::pmtu;
use crate::core::stats::{PmtuEvent, Shard};
use crate::core::wire::ethernet::EthernetFrame;
use crate::core::wire::vxlan;
use crate::core::{Action, DropReason, Instant, LocalPort, Network, PeerIdx, Port};
use crate::io::tap::MAX_FRAME;
use crate::io::udp::{BATCH, GSO_MAX_SEGMENTS, TxSockets};
use crate::io::{SendQueue, Sent, Transmit, TransmitSocket, TxItem, TxScratch};

use super::forward::{Ctx, Forwarder, PmtuSignals};
use super::gre::{GreParams, GreTx};
use super::netio::{HEADROOM, NetIo, RateLimit};

/// The frames of one batch from one local port, back to back in one arena, each with
/// [`HEADROOM`] bytes in front of it for the tunnel header. A TAP with a virtio-net header
/// reads that header into the end of the headroom (`lead` bytes).
pub struct FrameBatch {
    arena: Vec<u8>,
    lead: usize,
    /// (where the frame starts in the arena, its length)
    items: Vec<(usize, usize)>,
}

impl FrameBatch {
    /// A batch whose arena holds `bytes`; `lead` bytes are read in front of each frame.
    pub fn new(bytes: usize, lead: usize) -> FrameBatch {
        FrameBatch { arena: vec![0; bytes.max(HEADROOM + MAX_FRAME)], lead, items: Vec::with_capacity(BATCH) }
    }

    /// Room for [`BATCH`] frames of any size read from a TAP, with or without its virtio-net
    /// header.
    pub fn for_tap(vnet: bool) -> FrameBatch {
        FrameBatch::new(BATCH * (HEADROOM + MAX_FRAME), if vnet { VNET_HDR_LEN } else { 0 })
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Where the next frame starts.
    fn next(&self) -> usize {
        self.items.last().map_or(0, |&(at, len)| at + len) + HEADROOM
    }

    /// Whether a frame of `len` bytes fits in.
    pub fn fits(&self, len: usize) -> bool {
        self.items.len() < BATCH && self.next() + len <= self.arena.len()
    }

    /// Copy `frame` in; the caller checked that it [`fits`](Self::fits).
    pub fn push(&mut self, frame: &[u8]) {
        let at = self.next();
        self.arena[at..at + frame.len()].copy_from_slice(frame);
        self.items.push((at, frame.len()));
    }

    /// Room for reading the next frame in place (its `lead` bytes first), if `want` bytes
    /// fit; [`Self::commit`] what was read.
    pub fn room(&mut self, want: usize) -> Option<&mut [u8]> {
        if !self.fits(want) {
            return None;
        }
        let at = self.next();
        Some(&mut self.arena[at - self.lead..at + want])
    }

    /// `read` bytes were read into [`Self::room`]: the frame after the lead belongs to the
    /// batch. False (nothing added) if `read` is shorter than the lead.
    pub fn commit(&mut self, read: usize) -> bool {
        let Some(len) = read.checked_sub(self.lead) else { return false };
        let at = self.next();
        self.items.push((at, len));
        true
    }

    /// The virtio-net header read in front of frame `i` (none without a lead).
    fn vnet_hdr(&self, at: usize) -> VnetHdr {
        if self.lead == 0 {
            return VnetHdr::NONE;
        }
        VnetHdr::parse(&self.arena[at - self.lead..at]).unwrap_or(VnetHdr::NONE)
    }
}

/// Room for one segment's headers in the header arena: the tunnel header (VXLAN 8, GRE up
/// to 12), Ethernet with two VLAN tags (22), IPv4 or IPv6 with the longest options (60), TCP
/// with the longest options (60).
const SEG_HDR_MAX: usize = 160;

/// Per-thread scratch space for sending the segments of TSO super-frames: each segment is
/// two pieces, its headers (in `arena`) and its payload (in place, in the read buffer), so the
/// payload is copied by the kernel only.
struct Segmenter {
    arena: Vec<u8>,
    scratch: TxScratch,
}

/// Where the segments of a super-frame go.
enum Tunnel<'a> {
    /// VXLAN over the UDP send sockets: the flow `hash` picks the source port, `gso` if the
    /// peer takes UDP GSO.
    Vxlan { tx: &'a TxSockets, hash: usize, gso: bool, dst: SocketAddr, vni: crate::core::Vni },
    /// GRE over the raw socket, with the outer TOS byte `tos`.
    Gre { gre: &'a GreTx, dst: IpAddr, tos: u8 },
}

impl Tunnel<'_> {
    fn header_len(&self) -> usize {
        match self {
            Tunnel::Vxlan { .. } => vxlan::HEADER_LEN,
            Tunnel::Gre { gre, .. } => gre.header_len(),
        }
    }
}

impl Segmenter {
    fn new() -> Self {
        Segmenter { arena: vec![0; GSO_MAX_SEGMENTS * SEG_HDR_MAX], scratch: TxScratch::new() }
    }

    /// Cut `frame` (planned by `plan`) into tunnel packets and send them, up to 64 segments
    /// a [`Transmit`]: the socket sends each run with UDP GSO or one datagram per segment
    /// (see [`crate::io::transmit`]).
    fn send(&mut self, to: &Tunnel<'_>, frame: &[u8], plan: &TsoPlan) -> Sent {
        let tun = to.header_len();
        let seg_hdr = tun + plan.header_len();
        let mut out = Sent::default();
        let Ok(seg) = u16::try_from(seg_hdr + plan.mss) else {
            out.error = Some(io::Error::from_raw_os_error(libc::EMSGSIZE));
            return out;
        };
        let mut i = 0;
        while i < plan.segments {
            let n = GSO_MAX_SEGMENTS.min(plan.segments - i);
            for k in 0..n {
                let h = &mut self.arena[k * SEG_HDR_MAX..k * SEG_HDR_MAX + seg_hdr];
                plan.write_header(frame, i + k, &mut h[tun..]);
                match to {
                    Tunnel::Vxlan { vni, .. } => vxlan::emit(&mut h[..tun], *vni),
                    // after the inner headers: a GRE checksum covers them
                    Tunnel::Gre { gre, .. } => gre.emit_segment(h, &frame[plan.payload_range(i + k)]),
                }
            }
            let mut data = [IoSlice::new(&[]); 2 * GSO_MAX_SEGMENTS];
            for k in 0..n {
                data[2 * k] = IoSlice::new(&self.arena[k * SEG_HDR_MAX..k * SEG_HDR_MAX + seg_hdr]);
                data[2 * k + 1] = IoSlice::new(&frame[plan.payload_range(i + k)]);
            }
            let s = match *to {
                Tunnel::Vxlan { tx, hash, gso, dst, .. } => tx.send(&Transmit::new(dst, &data[..2 * n]).segments(seg).flow(hash, gso), &mut self.scratch),
                Tunnel::Gre { gre, dst, tos } => gre.send(Transmit::new(SocketAddr::new(dst, 0), &data[..2 * n]).segments(seg).tos_ttl(tos, 0), &mut self.scratch),
            };
            out.datagrams += s.datagrams;
            out.bytes += s.bytes;
            if s.error.is_some() {
                out.error = s.error;
            }
            i += n;
        }
        out
    }
}

/// The sending side of a switcher: frames encapsulated in place go into one send queue for
/// the network's tunnel socket, flushed once per batch; super-frames go out at once, segment
/// by segment.
struct Sender {
    tx: Arc<TxSockets>,
    /// `Some` for a GRE network: frames for peers go out on the raw GRE socket.
    gre: Option<GreTx>,
    q: SendQueue,
    seg: Segmenter,
    rl_send: RateLimit,
    rl_gso: RateLimit,
}

impl Sender {
    fn new(tx: Arc<TxSockets>, gre: Option<GreParams>) -> Sender {
        let gre = gre.map(GreTx::new);
        let q = SendQueue::new(gre.as_ref().map_or(tx.slots(), |g| g.socket().slots()));
        Sender { tx, gre, q, seg: Segmenter::new(), rl_send: RateLimit::default(), rl_gso: RateLimit::default() }
    }

    /// Length of the tunnel header: VXLAN's, or the GRE network's.
    fn header_len(&self) -> usize {
        self.gre.as_ref().map_or(vxlan::HEADER_LEN, GreTx::header_len)
    }

    /// The flow hash that picks a VXLAN source port; GRE has none to pick.
    #[inline]
    fn hash(&self, frame: &[u8]) -> usize {
        if self.gre.is_some() { 0 } else { EthernetFrame::new_unchecked(frame).flow_hash() as usize }
    }

    /// Write the tunnel header in front of the frame at `arena[at..at + len]`; returns the
    /// outer TOS byte (GRE; VXLAN leaves it to the socket).
    #[inline]
    fn encap(&self, arena: &mut [u8], at: usize, len: usize, net: &Network) -> u8 {
        match &self.gre {
            Some(g) => g.encap(arena, at, len),
            None => {
                vxlan::emit(&mut arena[at - vxlan::HEADER_LEN..at + len], net.spec.vni);
                0
            }
        }
    }

    /// Queue the frame at `arena[at..at + len]`, encapsulated by [`Sender::encap`], for `peer`.
    #[inline]
    fn queue(&mut self, net: &Network, at: usize, len: usize, peer: PeerIdx, hash: usize, tos: u8) {
        let Some(p) = net.peers.get(usize::from(peer.0)) else { return };
        match &self.gre {
            Some(g) => self.q.push(0, g.item(at, len, p.addr.ip(), tos, peer.0)),
            None => {
                let h = vxlan::HEADER_LEN;
                let item = TxItem { buf: 0, start: (at - h) as u32, len: (len + h) as u32, dst: p.addr, tos: 0, ttl: 0, tag: peer.0 };
                self.q.push(self.tx.slot(hash, p.liveness.takes_gso()), item);
            }
        }
    }

    /// Send what is queued; per-peer counters and drops are charged to `net`.
    fn flush(&mut self, net: &Network, arena: &[u8], shard: Shard, now: Instant) {
        if self.q.is_empty() {
            return;
        }
        let rl = &mut self.rl_send;
        let done = |it: &TxItem, r: io::Result<()>| match r {
            Ok(()) => net.stats.peer_tx(shard, usize::from(it.tag), it.len as usize),
            Err(e) => {
                let too_big = e.raw_os_error() == Some(libc::EMSGSIZE);
                net.stats.count_drop(shard, if too_big { DropReason::MtuExceeded } else { DropReason::SendFailed });
                if let Some(muted) = rl.allow(now) {
                    tracing::warn!(network = net.name(), peer = %it.dst.ip(), error = %e, muted, "send to peer failed");
                }
            }
        };
        let bufs = std::slice::from_ref(&arena);
        match &self.gre {
            Some(g) => self.q.flush(g.socket(), bufs, done),
            None => self.q.flush(&*self.tx, bufs, done),
        }
    }

    /// Send the segments of super-frame `frame` (planned by `plan`) to `peer`.
    fn send_super(&mut self, cx: &Ctx<'_>, peer: PeerIdx, frame: &[u8], plan: &TsoPlan) {
        let Ctx { net, shard, now, .. } = *cx;
        let Some(p) = net.peers.get(usize::from(peer.0)) else { return };
        let to = match &self.gre {
            Some(gre) => Tunnel::Gre { gre, dst: p.addr.ip(), tos: gre.tos(frame) },
            // GSO only to peers known to take it: others may read the link in userspace
            None => Tunnel::Vxlan { tx: &self.tx, hash: self.hash(frame), gso: p.liveness.takes_gso(), dst: p.addr, vni: net.spec.vni },
        };
        let s = self.seg.send(&to, frame, plan);
        net.stats.peer_tx_n(shard, usize::from(peer.0), s.datagrams, s.bytes);
        if let Some(e) = s.error {
            let too_big = e.raw_os_error() == Some(libc::EMSGSIZE);
            net.stats.count_drop(shard, if too_big { DropReason::MtuExceeded } else { DropReason::SendFailed });
            if let Some(muted) = self.rl_gso.allow(now) {
                tracing::warn!(network = net.name(), peer = %p.addr, error = %e, muted, "send to peer failed");
            }
        }
    }
}

/// Switches the batches of one local port: what every local port's reader calls.
pub struct Switcher {
    io: Arc<NetIo>,
    port: LocalPort,
    out: Sender,
    fwd: Forwarder,
    signals: PmtuSignals,
    /// The first segment of a super-frame over the MTU, for the answer about it.
    scratch: Vec<u8>,
    /// An ARP/ND answer for the asking port (suppression).
    answer: [u8; neigh::REPLY_MAX],
}

impl Switcher {
    /// A switcher for frames from `port` of the network `io`; frames for peers go out over GRE
    /// with `gre` (a GRE network), else VXLAN on `tx`.
    pub fn new(io: Arc<NetIo>, tx: Arc<TxSockets>, port: LocalPort, gre: Option<GreParams>) -> Switcher {
        Switcher { io, port, out: Sender::new(tx, gre), fwd: Forwarder::default(), signals: PmtuSignals::default(), scratch: Vec::new(), answer: [0; neigh::REPLY_MAX] }
    }

    /// The port the next batch comes from.
    pub fn port(&self) -> LocalPort {
        self.port
    }

    /// The next batch comes from `port` (a datagram socket's VMs share one reader).
    pub fn set_port(&mut self, port: LocalPort) {
        self.port = port;
    }

    /// A frame from `port` too long to read whole (`frame` is its start): dropped as over the
    /// MTU, and answered with a path-MTU signal.
    pub fn too_big(&mut self, port: LocalPort, frame: &[u8], now: Instant) {
        let net = self.io.net.load();
        let ports = Forwarder::ports(&self.io);
        let cx = Ctx { net: &net, ports: &ports, shard: Shard::per_thread(), now };
        self.signals.too_big(&mut self.fwd, &cx, port, frame);
    }

    /// Switch every frame of `batch` and send what goes to peers; empties the batch.
    pub fn switch(&mut self, batch: &mut FrameBatch, shard: Shard, now: Instant) {
        if batch.items.is_empty() {
            return;
        }
        // the network's current generation and ports, for this batch
        let net = self.io.net.load();
        let ports = Forwarder::ports(&self.io);
        let cx = Ctx { net: &net, ports: &ports, shard, now };
        let (port, ingress) = (self.port, Port::Local(self.port));
        for i in 0..batch.items.len() {
            let (at, len) = batch.items[i];
            net.stats.tap_rx(shard, len);
            let vh = batch.vnet_hdr(at);
            if vh.is_gso() {
                self.super_frame(&cx, &batch.arena, at, len, &vh);
                continue;
            }
            let frame = &mut batch.arena[at..at + len];
            // before the checksum is finished: with NEEDS_CSUM the field holds only the
            // pseudo-header sum, and the option bytes are summed when it is finished
            if net.spec.mss_clamp && pmtu::clamp_mss(frame, net.spec.mtu, vh.needs_csum()) {
                net.stats.pmtu(shard, PmtuEvent::MssClamped);
            }
            if vh.needs_csum() && finish_partial_checksum(frame, &vh).is_err() {
                net.stats.count_drop(shard, DropReason::BadOffload);
                continue;
            }
            let frame = &batch.arena[at..at + len];
            match net.from_local(port, frame, now) {
                Action::Drop(DropReason::MtuExceeded) => self.signals.too_big(&mut self.fwd, &cx, port, frame),
                Action::Drop(r) => net.stats.count_drop(shard, r),
                Action::Consumed => {}
                Action::Local(p) => self.fwd.deliver(&cx, p, frame),
                Action::Peer(p) => {
                    let hash = self.out.hash(frame);
                    let tos = self.out.encap(&mut batch.arena, at, len, &net);
                    self.out.queue(&net, at, len, p, hash, tos);
                }
                Action::Flood => {
                    // ARP/ND suppression: answered on the asking port, nothing flooded
                    let answered = if net.neigh.enabled() { net.answer_neigh(frame, &mut self.answer, now).unwrap_or(0) } else { 0 };
                    if answered > 0 {
                        self.fwd.deliver(&cx, port, &self.answer[..answered]);
                        continue;
                    }
                    net.stats.flooded(shard);
                    self.fwd.flood(&cx, Some(port), frame);
                    let hash = self.out.hash(frame);
                    let tos = self.out.encap(&mut batch.arena, at, len, &net);
                    for p in net.flood_peers(ingress) {
                        self.out.queue(&net, at, len, p, hash, tos);
                    }
                }
            }
        }
        self.out.flush(&net, &batch.arena, shard, now);
        batch.items.clear();
    }

    /// A TCP or UDP super-frame from an offloading TAP: decided once, its segments sent after what
    /// is queued, with UDP GSO (VXLAN) or one `sendmmsg` (GRE).
    fn super_frame(&mut self, cx: &Ctx<'_>, arena: &[u8], at: usize, len: usize, vh: &VnetHdr) {
        let Ctx { net, ports, shard, now } = *cx;
        let frame = &arena[at..at + len];
        let plan = match TsoPlan::new(frame, vh) {
            Ok(p) if self.out.header_len() + p.header_len() <= SEG_HDR_MAX => p,
            _ => {
                net.stats.count_drop(shard, DropReason::BadOffload);
                return;
            }
        };
        // decide on the first segment's worth: the MTU applies per segment, so a super-frame
        // is over the MTU only if its segments are
        let action = net.from_local(self.port, &frame[..plan.header_len() + plan.mss.min(plan.payload_len)], now);
        match action {
            Action::Drop(DropReason::MtuExceeded) => {
                // answer about the first segment as the sender's stack would have sent it
                plan.segment_into(frame, 0, &mut self.scratch);
                self.signals.too_big(&mut self.fwd, cx, self.port, &self.scratch);
            }
            Action::Drop(r) => net.stats.count_drop(shard, r),
            Action::Consumed => {}
            Action::Local(p) => self.fwd.deliver_super(cx, p, vh, frame, &plan),
            Action::Peer(p) => {
                self.out.flush(net, arena, shard, now);
                self.out.send_super(cx, p, frame, &plan);
            }
            Action::Flood => {
                net.stats.flooded(shard);
                for (p, _) in ports.others(Some(self.port)) {
                    self.fwd.deliver_super(cx, p, vh, frame, &plan);
                }
                self.out.flush(net, arena, shard, now);
                for p in net.flood_peers(Port::Local(self.port)) {
                    self.out.send_super(cx, p, frame, &plan);
                }
            }
        }
    }
}

// SAFETY: a switcher moves between threads only behind its port's drain lock, one thread at a
// time. The raw pointers it holds (iovecs and message headers in its send queues and
// segmenter) are scratch space, filled and handed to the kernel within one call and never read
// after it.
#[allow(unsafe_code)]
unsafe impl Send for Switcher {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Dscp;
    use crate::core::offload::TcpSeg;
    use crate::core::wire::ip::Ipv4Packet;
    use crate::io::gre::GreSocket;
    use crate::core::offload::{flags, gso};
    use crate::core::wire::gre::{GreHeader, GreRepr};
    use etherparse::PacketBuilder;

    /// A TCP super-frame as an offloading TAP hands it over, and its virtio-net header.
    fn super_frame(payload: &[u8], mss: u16) -> (Vec<u8>, VnetHdr) {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 51, 100, 1], [198, 51, 100, 2], 64)
            .tcp(40000, 5201, 1000, 64240)
            .ack(1)
            .psh();
        let mut f = Vec::new();
        b.write(&mut f, payload).unwrap();
        let h = VnetHdr { flags: flags::NEEDS_CSUM, gso_type: gso::TCPV4, hdr_len: 54, gso_size: mss, csum_start: 34, csum_offset: 16 };
        (f, h)
    }

    /// Frames read in place and frames copied in sit back to back, each with the whole
    /// headroom in front of it (and a TAP's virtio-net header at its end), until the arena or
    /// the batch count is full.
    #[test]
    fn a_frame_batch_keeps_headroom_and_the_lead_in_front_of_every_frame() {
        let mut b = FrameBatch::new(0, VNET_HDR_LEN);
        let vh = VnetHdr { flags: flags::NEEDS_CSUM, gso_type: gso::TCPV4, hdr_len: 54, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        let room = b.room(1500).expect("room in an empty batch");
        assert_eq!(room.len(), VNET_HDR_LEN + 1500);
        room[..VNET_HDR_LEN].copy_from_slice(&vh.to_bytes());
        room[VNET_HDR_LEN..VNET_HDR_LEN + 3].copy_from_slice(b"abc");
        assert!(b.commit(VNET_HDR_LEN + 3));
        // a read shorter than the virtio-net header is no frame
        assert!(b.room(1500).is_some());
        assert!(!b.commit(VNET_HDR_LEN - 1));
        assert_eq!(b.len(), 1);
        let (at, len) = b.items[0];
        assert_eq!((at, len), (HEADROOM, 3));
        assert_eq!(&b.arena[at..at + len], b"abc");
        assert_eq!(b.vnet_hdr(at), vh);
        let room = b.room(10).expect("room for a second frame");
        room[VNET_HDR_LEN..VNET_HDR_LEN + 2].copy_from_slice(b"de");
        assert!(b.commit(VNET_HDR_LEN + 2));
        let (at2, len2) = b.items[1];
        assert_eq!(at2, at + len + HEADROOM, "the next frame starts a headroom after the last");
        assert_eq!(&b.arena[at2..at2 + len2], b"de");
        assert_eq!(b.vnet_hdr(at2), VnetHdr::NONE, "an all-zero header is no offload");

        // without a lead: frames copied in, and the arena's end respected
        let mut b = FrameBatch::new(0, 0);
        let big = vec![7u8; MAX_FRAME - 2 * HEADROOM - 100];
        assert!(b.fits(big.len()));
        b.push(&big);
        assert!(b.room(MAX_FRAME).is_none(), "a whole frame's room no longer fits");
        while b.fits(1) {
            b.push(&[1]);
        }
        // what was left (2 headrooms + 100 bytes) took three more frames of 1 byte
        assert_eq!(b.len(), 4);
        assert_eq!(&b.arena[b.items[0].0..b.items[0].0 + big.len()], &big[..]);
        assert_eq!(b.vnet_hdr(b.items[1].0), VnetHdr::NONE);
        // and never more than a batch of frames, however small
        let mut b = FrameBatch::for_tap(false);
        while b.fits(1) {
            b.push(&[1]);
        }
        assert_eq!(b.len(), BATCH);
    }

    /// The GRE side of the segmenter over loopback (needs CAP_NET_RAW, as the tests of
    /// io::gre): one super-frame becomes one GRE packet per segment, each with a GRE checksum
    /// over headers and payload and a valid inner TCP segment, carrying the payload in order.
    #[test]
    fn a_super_frame_leaves_as_checksummed_gre_segments_in_order() {
        let lo: IpAddr = [127, 0, 0, 1].into();
        let sock = Arc::new(GreSocket::open(lo).expect("raw GRE socket on 127.0.0.1 (run the tests as root)"));
        let key = std::process::id() ^ 0x5e9_0000;
        let gre = GreTx::new(GreParams { sock: sock.clone(), repr: GreRepr { key: Some(key), checksum: true }, ttl: 64, dscp: Dscp::Inherit });
        let payload: Vec<u8> = (0..10_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (frame, vh) = super_frame(&payload, 1000);
        let plan = TsoPlan::new(&frame, &vh).unwrap();
        assert_eq!(plan.segments, 11);
        let mut seg = Segmenter::new();
        let s = seg.send(&Tunnel::Gre { gre: &gre, dst: lo, tos: 0 }, &frame, &plan);
        assert!(s.error.is_none(), "{:?}", s.error);
        assert_eq!(s.datagrams, 11);
        assert_eq!(s.bytes, 11 * (12 + 54) + payload.len());
        let mut joined = Vec::new();
        let mut n_seen = 0;
        for data in crate::io::gre::recv_keyed_v4(&sock, key, 11) {
            let ip = Ipv4Packet::new_checked(&data[..]).unwrap();
            let g = GreHeader::new_checked(ip.payload()).unwrap();
            assert!(g.checksum_ok(), "GRE checksum of segment {n_seen}");
            let inner = g.payload();
            let t = TcpSeg::parse(inner).expect("a TCP segment inside");
            assert!(t.checksums_ok(inner), "inner checksums of segment {n_seen}");
            assert_eq!(t.seq, 1000u32.wrapping_add(joined.len() as u32), "sequence number of segment {n_seen}");
            joined.extend_from_slice(t.payload(inner));
            n_seen += 1;
        }
        assert_eq!(n_seen, 11);
        assert_eq!(joined, payload);
    }
}
