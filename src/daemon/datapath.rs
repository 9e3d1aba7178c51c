//! The data path: blocking threads that move frames between local ports and the underlay.
//!
//! - One *port thread* per local port (TAP): wait for readiness, drain up to [`BATCH`] frames,
//!   decide each frame with [`Network::from_local`], write the VXLAN (or GRE) header into the
//!   headroom in front of the frame (no copy of the frame), queue it for its peer(s), and send
//!   the whole batch with one `sendmmsg` per source-port socket (or on the raw GRE socket).
//! - One *underlay thread* per receive socket (a VXLAN port's, or the raw GRE socket: the
//!   same loop, see [`Underlay`]): `recvmmsg` a batch, classify each datagram to a network and
//!   peer, decide with [`Network::from_peer`], and write the inner frame straight from the
//!   receive buffer to the TAP.
//!
//! With offloads (`[node] offload = true`, the default) both threads move 64 KiB units:
//! - the port thread reads TCP super-frames (TAP with a virtio-net header and TSO), cuts each
//!   into segments with [`TsoPlan`] (headers in a per-thread arena, payload left in the read
//!   buffer) and sends all segments for a peer with one UDP GSO `sendmsg` (GRE: one `sendmmsg`
//!   of ordinary GRE packets, raw sockets having no GSO);
//! - the underlay thread receives with `UDP_GRO` (many datagrams per message; GRE: 64 packets
//!   per `recvmmsg`), and chains consecutive TCP segments of a flow into a [`Run`] that is
//!   written to the TAP as one super-frame with `writev`, its payload straight from the
//!   receive buffer.
//!
//! Nothing here allocates per frame, takes a lock, or logs per frame: errors are counted and
//! logged at most once a second per thread with the number suppressed.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::core::fabric::Fabric;
use crate::core::offload::{Coalescer, MAX_HEADER_LEN, MAX_RUN_SEGMENTS, PartialCsum, TcpSeg, TsoPlan, VNET_HDR_LEN, VnetHdr, finish_partial_checksum, tunnel_super_frame};
use crate::core::neigh;
use crate::core::pmtu;
use crate::core::stats::{GlobalDrops, PmtuEvent, Shard};
use crate::core::wire::ethernet::{self, EthernetFrame};
use crate::core::wire::ip::Ipv4Packet;
use crate::core::wire::vxlan;
use crate::core::{Action, DropReason, Instant, LocalPort, Network, PeerIdx, Port, Vni};
use super::gre::{GreParams, GreTx};
use crate::io::clock;
use crate::io::gre::GreSocket;
use crate::io::sys::{self, StopFd, Wake};
use crate::io::tap::{MAX_FRAME, Tap};
use crate::io::udp::{BATCH, GSO_MAX_SEGMENTS, RecvBatch, RxSocket, TxSockets};
use crate::io::{SendQueue, Sent, Transmit, TransmitSocket, TxItem, TxScratch};

use super::forward::{Forwarder, LocalIo, PmtuSignals, Ports};

/// Room in front of a frame read from a port for the tunnel header.
pub const HEADROOM: usize = 64;

/// What the I/O side attaches to each network: its local ports, and the network's current
/// generation.
#[derive(Debug)]
pub struct NetIo {
    /// The network as the data-path threads of its ports see it: each loads it once per batch.
    /// A reload that changes only the network's peers or FDB settings publishes its next
    /// generation here (see [`crate::core::handover`]); ports and threads stay.
    pub net: ArcSwap<Network>,
    /// The TAP devices opened by the daemon, in config order (also in `ports`).
    pub taps: Vec<Arc<Tap>>,
    /// Every live local port (TAPs and VM connections); replaced whole on a connect or a
    /// disconnect, read lock-free by the data path.
    pub ports: ArcSwap<Ports>,
    /// Serialises changes of `ports` (connects, disconnects); never taken by the data path.
    pub port_changes: Mutex<()>,
    /// The reading side of each TAP port, for its thread and for run to completion.
    pub drains: Vec<Arc<PortDrain>>,
}

impl NetIo {
    /// The configured ports (TAPs, attached interfaces) in config order: slots 0...
    pub fn new(net: Arc<Network>, fixed: Vec<LocalIo>) -> NetIo {
        let taps = fixed.iter().filter_map(|p| if let LocalIo::Tap(t) = p { Some(t.clone()) } else { None }).collect();
        let ports = Ports::new(fixed);
        let drains = ports.iter().filter(|(_, p)| matches!(p, LocalIo::Tap(_))).map(|(lp, _)| Arc::new(PortDrain::new(lp))).collect();
        NetIo { net: ArcSwap::new(net), taps, ports: ArcSwap::from_pointee(ports), port_changes: Mutex::new(()), drains }
    }
}

pub type SharedFabric = Arc<ArcSwap<Fabric<Arc<NetIo>>>>;

/// Log at most once per second per call site and thread, with the count of what was muted.
#[derive(Debug, Default)]
pub struct RateLimit {
    last: Option<Instant>,
    muted: u64,
}

impl RateLimit {
    /// `Some(muted)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_since(t).as_millis() < 1000 => {
                self.muted += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.muted))
            }
        }
    }
}

/// Everything a port thread needs.
pub struct PortThread {
    pub io: Arc<NetIo>,
    pub port: LocalPort,
    pub tx: Arc<TxSockets>,
    pub stop: Arc<StopFd>,
    /// `Some` for a GRE network: frames go out on the raw GRE socket instead of UDP.
    pub gre: Option<GreParams>,
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
    Vxlan { tx: &'a TxSockets, hash: usize, gso: bool, dst: SocketAddr, vni: Vni },
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

/// Length of the tunnel header a port thread writes: VXLAN's, or its GRE network's.
fn tunnel_header_len(gre: Option<&GreTx>) -> usize {
    gre.map_or(vxlan::HEADER_LEN, GreTx::header_len)
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

/// The reading side of one TAP port: its batch buffers, send queues and rate limits. The
/// port's own thread runs it when the TAP is readable; an underlay thread that has just
/// written into the TAP runs it too, at once (see [`PortDrain`]).
pub struct PortWorker {
    io: Arc<NetIo>,
    port: LocalPort,
    tap: Arc<Tap>,
    tx: Arc<TxSockets>,
    gre: Option<GreTx>,
    vnet: bool,
    rd: usize,
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    q: SendQueue,
    seg: Segmenter,
    scratch: Vec<u8>,
    rl_read: RateLimit,
    rl_send: RateLimit,
    rl_gso: RateLimit,
    rl_gre: RateLimit,
    fwd: Forwarder,
    signals: PmtuSignals,
    answer: [u8; neigh::REPLY_MAX],
    ingress: Port,
}

/// A TAP port's [`PortWorker`], shared by the port's thread and the underlay threads.
///
/// Run to completion: a frame an underlay thread writes into a TAP is handled by the host's
/// stack inside that write, and what the host answers (an echo reply, an ARP reply, a TCP
/// ACK) is often queued on the TAP by the time the write returns. The underlay thread then
/// reads and sends it itself instead of waking the port's thread for it. One reader at a
/// time: whoever holds the lock reads a batch and sends all of it before letting go, so the
/// frames of a flow leave in the order the TAP queued them. The port's thread waits for the
/// lock; an underlay thread only tries it, and leaves the TAP to the port's thread if it is
/// taken.
#[derive(Debug)]
pub struct PortDrain {
    pub port: LocalPort,
    worker: Mutex<Option<PortWorker>>,
}

// SAFETY: a worker moves between threads only behind its drain's lock, one thread at a time.
// The raw pointers it holds (iovecs and message headers in its send queues and segmenter) are
// scratch space, filled and handed to the kernel within one call and never read after it.
#[allow(unsafe_code)]
unsafe impl Send for PortWorker {}

impl std::fmt::Debug for PortWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortWorker").field("port", &self.port).field("tap", &self.tap.name()).finish()
    }
}

impl PortDrain {
    fn new(port: LocalPort) -> Self {
        PortDrain { port, worker: Mutex::new(None) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PortWorker>> {
        self.worker.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read and send one batch from the TAP if no one else is at it: what an underlay thread
    /// does after writing into it. Returns the frames read.
    pub fn try_drain(&self, shard: Shard) -> usize {
        match self.worker.try_lock() {
            Ok(mut w) => w.as_mut().map_or(0, |w| w.drain(shard, true)),
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().as_mut().map_or(0, |w| w.drain(shard, true)),
            Err(std::sync::TryLockError::WouldBlock) => 0,
        }
    }
}

impl PortThread {
    pub fn run(self) {
        let PortThread { io, port, tx, stop, gre } = self;
        let Some(LocalIo::Tap(tap)) = io.ports.load().get(port).cloned() else { return };
        let Some(drain) = io.drains.iter().find(|d| d.port == port).cloned() else {
            tracing::error!(network = io.net.load().name(), tap = tap.name(), "no reader state for this tap; port stopped");
            return;
        };
        *drain.lock() = Some(PortWorker::new(io.clone(), port, tap.clone(), tx, gre));
        let shard = Shard::per_thread();
        loop {
            match sys::wait_readable(tap.fd(), &stop) {
                Ok(Wake::Stop) => break,
                Ok(Wake::Ready) => {}
                Err(e) => {
                    tracing::error!(network = io.net.load().name(), tap = tap.name(), error = %e, "tap poll failed; port stopped");
                    break;
                }
            }
            if let Some(w) = drain.lock().as_mut() {
                w.drain(shard, false);
            }
        }
        // nobody reads the TAP once its thread has stopped
        *drain.lock() = None;
        tracing::debug!(network = io.net.load().name(), tap = tap.name(), "port thread stopped");
    }
}

impl PortWorker {
    fn new(io: Arc<NetIo>, port: LocalPort, tap: Arc<Tap>, tx: Arc<TxSockets>, gre: Option<GreParams>) -> Self {
        // with a virtio-net header, it is read just in front of the frame, inside the headroom
        let vnet = tap.vnet_hdr();
        PortWorker {
            io,
            port,
            tap,
            q: SendQueue::new(tx.slots()),
            tx,
            gre: gre.map(GreTx::new),
            vnet,
            rd: if vnet { HEADROOM - VNET_HDR_LEN } else { HEADROOM },
            bufs: (0..BATCH).map(|_| vec![0u8; HEADROOM + MAX_FRAME]).collect(),
            lens: [0usize; BATCH],
            seg: Segmenter::new(),
            scratch: Vec::new(),
            rl_read: RateLimit::default(),
            rl_send: RateLimit::default(),
            rl_gso: RateLimit::default(),
            rl_gre: RateLimit::default(),
            fwd: Forwarder::default(),
            signals: PmtuSignals::default(),
            answer: [0u8; neigh::REPLY_MAX],
            ingress: Port::Local(port),
        }
    }

    /// Read up to [`BATCH`] frames from the TAP (until it would block), switch them and send
    /// what goes to peers. Returns the frames read.
    fn drain(&mut self, shard: Shard, inline: bool) -> usize {
        let PortWorker { io, tap, tx, gre, bufs, lens, q, seg, scratch, rl_read, rl_send, rl_gso, rl_gre, fwd, signals, answer, .. } = self;
        let (port, vnet, rd, ingress) = (self.port, self.vnet, self.rd, self.ingress);
        // the network's current generation, for this batch
        let net = io.net.load();
        let now = clock::now();
        let mut n = 0;
        while n < BATCH {
            match tap.read(&mut bufs[n][rd..]) {
                Ok(len) if len >= HEADROOM - rd => {
                    lens[n] = len - (HEADROOM - rd);
                    n += 1;
                }
                Ok(_) => net.stats.count_drop(shard, DropReason::Malformed),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if let Some(muted) = rl_read.allow(now) {
                        tracing::warn!(network = net.name(), tap = tap.name(), error = %e, muted, "read from tap failed");
                    }
                    break;
                }
            }
        }
        let mut send_queued = |q: &mut SendQueue, bufs: &[Vec<u8>]| {
            q.flush(tx, bufs, |it, r| match r {
                Ok(()) => net.stats.peer_tx(shard, usize::from(it.tag), it.len as usize),
                Err(e) => {
                    net.stats.count_drop(shard, DropReason::SendFailed);
                    if let Some(muted) = rl_send.allow(now) {
                        tracing::warn!(network = net.name(), peer = %it.dst, error = %e, muted, "send to peer failed");
                    }
                }
            })
        };
        let ports = Forwarder::ports(io);
        for i in 0..n {
            let len = lens[i];
            net.stats.tap_rx(shard, len);
            let vh = if vnet { VnetHdr::parse(&bufs[i][rd..HEADROOM]).unwrap_or(VnetHdr::NONE) } else { VnetHdr::NONE };
            if vh.is_gso() {
                    // a TCP super-frame: its segments go out after what is queued, with UDP
                    // GSO (VXLAN) or one sendmmsg (GRE)
                let frame = &bufs[i][HEADROOM..HEADROOM + len];
                let plan = match TsoPlan::new(frame, &vh) {
                        Ok(p) if tunnel_header_len(gre.as_ref()) + p.header_len() <= SEG_HDR_MAX => p,
                    _ => {
                        net.stats.count_drop(shard, DropReason::BadOffload);
                        continue;
                    }
                };
                // decide on the first segment's worth: the MTU applies per segment, so a
                // super-frame is over the MTU only if its segments are
                let action = net.from_local(port, &frame[..plan.header_len() + plan.mss.min(plan.payload_len)], now);
                if action == Action::Drop(DropReason::MtuExceeded) {
                    // answer about the first segment as the sender's stack would have sent it
                    scratch.clear();
                    scratch.resize(plan.header_len(), 0);
                    plan.write_header(frame, 0, scratch);
                    scratch.extend_from_slice(&frame[plan.payload_range(0)]);
                    signals.too_big(fwd, &net, &ports, port, scratch, shard, now);
                    continue;
                }
                if let Action::Drop(r) = action {
                    net.stats.count_drop(shard, r);
                    continue;
                }
                if !q.is_empty() {
                    send_queued(q, bufs);
                }
                if let Some(g) = gre.as_mut() {
                    g.flush(&net, bufs, shard, rl_gre, now);
                }
                let gre = gre.as_ref();
                // the flow hash picks a VXLAN source port; GRE has none to pick
                let hash = if gre.is_none() { EthernetFrame::new_unchecked(frame).flow_hash() as usize } else { 0 };
                let tos = gre.map_or(0, |g| g.tos(frame));
                let mut to_peer = |p: PeerIdx, seg: &mut Segmenter| {
                    let Some(peer) = net.peers.get(usize::from(p.0)) else { return };
                    let to = match gre {
                        Some(gre) => Tunnel::Gre { gre, dst: peer.addr.ip(), tos },
                        // GSO only to peers known to take it: others may read the link in userspace
                        None => Tunnel::Vxlan { tx, hash, gso: peer.liveness.takes_gso(), dst: peer.addr, vni: net.spec.vni },
                    };
                    let s = seg.send(&to, frame, &plan);
                    let each = s.bytes / s.datagrams.max(1);
                    for _ in 0..s.datagrams {
                        net.stats.peer_tx(shard, usize::from(p.0), each);
                    }
                    if let Some(e) = s.error {
                        let too_big = e.raw_os_error() == Some(libc::EMSGSIZE);
                        net.stats.count_drop(shard, if too_big { DropReason::MtuExceeded } else { DropReason::SendFailed });
                        if let Some(muted) = rl_gso.allow(now) {
                            tracing::warn!(network = net.name(), peer = %peer.addr, error = %e, muted, "send to peer failed");
                        }
                    }
                };
                match action {
                    Action::Peer(p) => to_peer(p, seg),
                    Action::Local(p) => fwd.deliver_super(&net, &ports, p, &vh, frame, &plan, scratch, shard, now),
                    Action::Flood => {
                        net.stats.flooded(shard);
                        for (p, _) in ports.others(Some(port)) {
                            fwd.deliver_super(&net, &ports, p, &vh, frame, &plan, scratch, shard, now);
                        }
                        for p in net.flood_peers(ingress) {
                            to_peer(p, seg);
                        }
                    }
                    Action::Drop(_) | Action::Consumed => {}
                }
                continue;
            }
            // before the checksum is finished: with NEEDS_CSUM the field holds only the
            // pseudo-header sum, and the option bytes are summed when it is finished
            if net.spec.mss_clamp && pmtu::clamp_mss(&mut bufs[i][HEADROOM..HEADROOM + len], net.spec.mtu, vh.needs_csum()) {
                net.stats.pmtu(shard, PmtuEvent::MssClamped);
            }
            if vh.needs_csum() && finish_partial_checksum(&mut bufs[i][HEADROOM..HEADROOM + len], &vh).is_err() {
                net.stats.count_drop(shard, DropReason::BadOffload);
                continue;
            }
            let frame = &bufs[i][HEADROOM..HEADROOM + len];
            let action = net.from_local(port, frame, now);
            let answered = match action {
                Action::Flood if net.neigh.enabled() => net.answer_neigh(frame, answer, now).unwrap_or(0),
                    Action::Flood | Action::Local(_) | Action::Peer(_) | Action::Drop(_) | Action::Consumed => 0,
            };
                // the flow hash picks a VXLAN source port; GRE has none to pick
            let hash = match action {
                    Action::Peer(_) | Action::Flood if gre.is_none() => EthernetFrame::new_unchecked(frame).flow_hash() as usize,
                    Action::Peer(_) | Action::Flood | Action::Local(_) | Action::Drop(_) | Action::Consumed => 0,
            };
            match action {
                Action::Drop(DropReason::MtuExceeded) => signals.too_big(fwd, &net, &ports, port, frame, shard, now),
                Action::Drop(r) => net.stats.count_drop(shard, r),
                Action::Consumed => {}
                Action::Local(p) => fwd.deliver(&net, &ports, p, frame, shard, now),
                Action::Peer(p) => {
                    let tos = encap(&mut bufs[i], len, net.spec.vni, gre.as_ref());
                    queue(&net, tx, q, gre.as_mut(), i, len, p, hash, tos);
                }
                // ARP/ND suppression: answered on the asking port, nothing flooded
                Action::Flood if answered > 0 => fwd.deliver(&net, &ports, port, &answer[..answered], shard, now),
                Action::Flood => {
                    net.stats.flooded(shard);
                    let tos = encap(&mut bufs[i], len, net.spec.vni, gre.as_ref());
                    fwd.flood(&net, &ports, Some(port), &bufs[i][HEADROOM..HEADROOM + len], shard, now);
                    for p in net.flood_peers(ingress) {
                        queue(&net, tx, q, gre.as_mut(), i, len, p, hash, tos);
                    }
                }
            }
        }
        if !q.is_empty() {
            send_queued(q, bufs);
        }
        if let Some(g) = gre.as_mut() {
            g.flush(&net, bufs, shard, rl_gre, now);
        }
        if inline && n > 0 {
            net.stats.tap_rx_inline(shard, n);
        }
        n
    }
}

/// Write the tunnel header in front of the frame at `buf[HEADROOM..HEADROOM + len]`; returns
/// the outer TOS byte (GRE; VXLAN leaves it to the socket).
#[inline]
fn encap(buf: &mut [u8], len: usize, vni: Vni, gre: Option<&GreTx>) -> u8 {
    match gre {
        Some(g) => g.encap(buf, len),
        None => {
            vxlan::emit(&mut buf[HEADROOM - vxlan::HEADER_LEN..], vni);
            0
        }
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
fn queue(net: &Network, tx: &TxSockets, q: &mut SendQueue, gre: Option<&mut GreTx>, buf: usize, len: usize, peer: PeerIdx, hash: usize, tos: u8) {
    if let Some(p) = net.peers.get(usize::from(peer.0)) {
        if let Some(g) = gre {
            g.push(buf, len, p.addr.ip(), tos, peer.0);
            return;
        }
        q.push(
            tx.slot(hash, p.liveness.takes_gso()),
            TxItem {
                buf: buf as u16,
                start: (HEADROOM - vxlan::HEADER_LEN) as u32,
                len: (len + vxlan::HEADER_LEN) as u32,
                dst: p.addr,
                tos: 0,
                ttl: 0,
                tag: peer.0,
            },
        );
    }
}

/// `frame` with its checksum complete: itself, or a copy in `scratch` with the partial
/// checksum finished (for a port that takes no virtio-net header, or several ports).
#[inline]
fn complete<'a>(frame: &'a [u8], partial: Option<PartialCsum>, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    let Some(pc) = partial else { return frame };
    scratch.clear();
    scratch.extend_from_slice(frame);
    pc.finish(scratch);
    scratch
}

/// What a frame from a peer says of its offloads: a whole TSO burst is certain, a partial-looking
/// checksum counts only in a run, a complete one breaks the run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Offloads {
    Burst,
    Partial,
    Complete,
}

/// Note what a frame from `peer` says of its offloads; the first time that makes the peer known
/// to send offloaded packets, log it: from now on it gets UDP GSO.
#[inline]
fn peer_sends_offloads(net: &Network, peer: PeerIdx, from: SocketAddr, seen: Offloads) {
    if let Some(p) = net.peers.get(usize::from(peer.0)) {
        let newly = match seen {
            Offloads::Burst => !p.liveness.sends_offloads() && p.liveness.offloads_seen(),
            Offloads::Partial => p.liveness.partial_seen(),
            Offloads::Complete => {
                p.liveness.complete_seen();
                false
            }
        };
        if newly {
            tracing::info!(
                network = net.name(),
                peer = %from.ip(),
                "peer sends partial TCP/UDP checksums or whole TSO bursts (a kernel on a link that keeps offloads): completing them, and UDP GSO towards it from now on"
            );
        }
    }
}

/// What an underlay thread receives on.
pub enum Underlay {
    /// The UDP socket of one VXLAN port.
    Vxlan(RxSocket),
    /// The daemon's raw GRE socket.
    Gre(Arc<GreSocket>),
}

impl Underlay {
    fn fd(&self) -> RawFd {
        match self {
            Underlay::Vxlan(s) => s.fd(),
            Underlay::Gre(s) => s.fd(),
        }
    }
}

impl fmt::Display for Underlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Underlay::Vxlan(s) => write!(f, "udp {}", s.local),
            Underlay::Gre(s) => write!(f, "gre {}", s.local),
        }
    }
}

/// Everything an underlay thread needs.
pub struct UnderlayThread {
    pub rx: Underlay,
    pub fabric: SharedFabric,
    pub global: Arc<GlobalDrops>,
    pub stop: Arc<StopFd>,
    /// Largest datagram accepted (underlay MTU).
    pub slot: usize,
    /// Coalesce TCP segments for offloading TAPs (and receive VXLAN with `UDP_GRO`).
    pub offload: bool,
}

/// Most TAP ports one receive batch notes for [`Touched`]; the rest are left to their threads.
const TOUCHED_MAX: usize = 8;

/// The TAP ports an underlay thread wrote into during one receive batch: once the batch is
/// written, it drains them itself ([`PortDrain::try_drain`]), so that what the host answered
/// inside those writes leaves without a wake-up of the ports' threads.
struct Touched {
    ports: Vec<(Arc<NetIo>, LocalPort)>,
}

impl Touched {
    fn new() -> Self {
        Touched { ports: Vec::with_capacity(TOUCHED_MAX) }
    }

    #[inline]
    fn note(&mut self, io: &Arc<NetIo>, port: LocalPort) {
        if self.ports.len() < TOUCHED_MAX && !self.ports.iter().any(|(i, p)| *p == port && Arc::ptr_eq(i, io)) {
            self.ports.push((io.clone(), port));
        }
    }

    fn drain(&mut self, shard: Shard) {
        for (io, port) in self.ports.drain(..) {
            if let Some(d) = io.drains.iter().find(|d| d.port == port) {
                d.try_drain(shard);
            }
        }
    }
}

/// Messages per `recvmmsg` with GRO (each up to 64 KiB of datagrams): as many as without GRO,
/// since small datagrams that GRO did not merge (many flows, or an underlay path without GRO)
/// arrive one per message.
const GRO_BATCH: usize = BATCH;
/// Receive slot with GRO: a whole coalesced message.
const GRO_SLOT: usize = 65_536;

/// A run of TCP segments (inside the current receive batch) on its way to one TAP; the
/// coalescing itself is [`Coalescer`]'s.
struct Pending<'a> {
    net: &'a Network,
    port: LocalPort,
    tap: Arc<Tap>,
    run: Coalescer<'a>,
}

impl<'a> Pending<'a> {
    fn new(net: &'a Network, port: LocalPort, tap: Arc<Tap>, seg: TcpSeg, frame: &'a [u8]) -> Self {
        Pending { net, port, tap, run: Coalescer::start(seg, frame) }
    }

    /// Add a segment if it continues this run to the same port.
    fn push(&mut self, net: &Network, port: LocalPort, seg: &TcpSeg, frame: &'a [u8]) -> bool {
        std::ptr::eq(self.net, net) && self.port == port && self.run.push(seg, frame)
    }

    /// Write the run to its TAP as one frame: virtio-net header, the first segment's rewritten
    /// headers, then every payload straight from the receive buffer.
    fn flush(self, shard: Shard, rl: &mut RateLimit, now: Instant) {
        let mut hdr = [0u8; MAX_HEADER_LEN];
        let (vh, hlen) = self.run.header(&mut hdr);
        let vb = vh.to_bytes();
        let mut parts = [IoSlice::new(&[]); MAX_RUN_SEGMENTS + 2];
        parts[0] = IoSlice::new(&vb);
        parts[1] = IoSlice::new(&hdr[..hlen]);
        let payloads = self.run.payloads();
        for (part, p) in parts[2..].iter_mut().zip(payloads) {
            *part = IoSlice::new(p);
        }
        match self.tap.write_vectored(&parts[..2 + payloads.len()]) {
            Ok(_) => self.net.stats.tap_tx(shard, self.run.frame_len()),
            Err(e) => {
                self.net.stats.count_drop(shard, DropReason::TapWriteFailed);
                if let Some(muted) = rl.allow(now) {
                    tracing::warn!(network = self.net.name(), tap = self.tap.name(), error = %e, muted, "write to tap failed");
                }
            }
        }
    }
}

fn flush(p: &mut Option<Pending<'_>>, shard: Shard, rl: &mut RateLimit, now: Instant) {
    if let Some(p) = p.take() {
        p.flush(shard, rl, now);
    }
}

impl UnderlayThread {
    pub fn run(self) {
        let UnderlayThread { rx, fabric, global, stop, slot, offload } = self;
        // VXLAN: the UDP port, GRO, and the kernel's ways with offloads (partial checksums,
        // whole TSO bursts). GRE over a raw socket has none of these; its packets are single
        // segments whose inner checksums are complete, and are checked before coalescing (no
        // outer checksum covers them unless the network sends GRE checksums).
        let (port, vxlan, gro, v6) = match &rx {
            Underlay::Vxlan(s) => (s.local.port(), true, offload && s.enable_gro(), false),
            Underlay::Gre(s) => (0, false, false, s.is_ipv6()),
        };
        if offload && vxlan && !gro {
            tracing::warn!(socket = %rx, "UDP GRO not available; receiving one datagram per message");
        }
        let coalesce = gro || (offload && !vxlan);
        // Without GRO, VXLAN slots still hold a whole 64 KiB message: a kernel peer on a link
        // that keeps offloads sends its TSO bursts as one tunnel GSO packet, which the kernel
        // queues to us whole (see `tunnel_super_frame`).
        let mut batch = if gro {
            RecvBatch::with_gro(GRO_SLOT, GRO_BATCH)
        } else if vxlan {
            RecvBatch::new(slot.max(GRO_SLOT))
        } else {
            RecvBatch::new(slot)
        };
        let (mut rl_recv, mut rl_write) = (RateLimit::default(), RateLimit::default());
        let mut fwd = Forwarder::default();
        let shard = Shard::per_thread();
        // room for one frame whose partial checksum is finished in a copy
        let mut scratch: Vec<u8> = Vec::with_capacity(GRO_SLOT);
        // one segment of a super-frame cut for a port that takes no offloads
        let mut seg_scratch: Vec<u8> = Vec::with_capacity(MAX_FRAME);
        let mut touched = Touched::new();
        loop {
            match sys::wait_readable(rx.fd(), &stop) {
                Ok(Wake::Stop) => break,
                Ok(Wake::Ready) => {}
                Err(e) => {
                    tracing::error!(socket = %rx, error = %e, "underlay poll failed; receiver stopped");
                    break;
                }
            }
            loop {
                let now = clock::now();
                let n = match batch.recv(rx.fd()) {
                    Ok(n) => n,
                    Err(e) => {
                        if let Some(muted) = rl_recv.allow(now) {
                            tracing::warn!(socket = %rx, error = %e, muted, "underlay receive failed");
                        }
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                let f = fabric.load();
                let mut pending: Option<Pending<'_>> = None;
                for i in 0..n {
                    let Some((from, data, truncated)) = batch.get(i) else { continue };
                    if truncated {
                        global.count_drop(DropReason::MtuExceeded);
                        continue;
                    }
                    // an IPv4 raw socket delivers the IP header too (IPv6 ones do not)
                    let (src, data) = if vxlan || v6 {
                        (from.ip(), data)
                    } else {
                        match Ipv4Packet::new_checked(data) {
                            Ok(ip) => (IpAddr::V4(ip.src()), &data[ip.header_len()..ip.total_len()]),
                            Err(_) => {
                                global.count_drop(DropReason::Malformed);
                                continue;
                            }
                        }
                    };
                    // with GRO, one message holds datagrams of `stride` bytes back to back
                    let stride = batch.stride(i).unwrap_or(data.len()).max(1);
                    for datagram in data.chunks(stride) {
                        let classified = if vxlan { f.classify_vxlan(port, src, datagram) } else { f.classify_gre(src, datagram) };
                        let c = match classified {
                            Ok(c) => c,
                            Err(refused) => {
                                f.count_refused(refused, shard, &global);
                                continue;
                            }
                        };
                        let net = &c.entry.net;
                        // larger than any frame of the network: a kernel peer's whole TSO burst?
                        if vxlan
                            && c.inner.len() > usize::from(net.spec.mtu) + ethernet::HEADER_LEN
                            && let Some((vh, plan)) = tunnel_super_frame(c.inner, usize::from(net.spec.mtu))
                        {
                            flush(&mut pending, shard, &mut rl_write, now);
                            // decide on the first segment's worth, as for a TAP's super-frame
                            let first = &c.inner[..plan.header_len() + plan.mss];
                            // counted as the datagrams it is once segmented, as the fast path does
                            let wire = plan.segments * (vxlan::HEADER_LEN + plan.header_len()) + plan.payload_len;
                            let action = net.receive_segments_from_peer(c.peer, first, plan.segments, wire, shard, now);
                            let ports = Forwarder::ports(&c.entry.io);
                            match action {
                                Action::Local(p) => {
                                    fwd.deliver_super(net, &ports, p, &vh, c.inner, &plan, &mut seg_scratch, shard, now);
                                    touched.note(&c.entry.io, p);
                                }
                                Action::Flood => {
                                    net.stats.flooded(shard);
                                    for (p, _) in ports.others(None) {
                                        fwd.deliver_super(net, &ports, p, &vh, c.inner, &plan, &mut seg_scratch, shard, now);
                                        touched.note(&c.entry.io, p);
                                    }
                                }
                                Action::Peer(_) | Action::Drop(_) | Action::Consumed => continue,
                            }
                            net.stats.partial_checksum(shard);
                            peer_sends_offloads(net, c.peer, from, Offloads::Burst);
                            continue;
                        }
                        let action = net.receive_from_peer(c.peer, c.inner, datagram.len(), shard, now);
                        if !matches!(action, Action::Local(_) | Action::Flood) {
                            continue;
                        }
                        // a kernel peer on a link that keeps checksum offload leaves inner
                        // TCP/UDP checksums partial: take them as such (see PartialCsum)
                        let partial = if vxlan { PartialCsum::detect(c.inner) } else { None };
                        if partial.is_some() {
                            net.stats.partial_checksum(shard);
                            peer_sends_offloads(net, c.peer, from, Offloads::Partial);
                        } else if vxlan {
                            peer_sends_offloads(net, c.peer, from, Offloads::Complete);
                        }
                        match action {
                            Action::Local(p) => {
                                touched.note(&c.entry.io, p);
                                let ports = Forwarder::ports(&c.entry.io);
                                if coalesce
                                    && let Some(LocalIo::Tap(tap)) = ports.get(p).filter(|io| matches!(io, LocalIo::Tap(t) if t.vnet_hdr()))
                                {
                                    // a run's frame goes to the TAP with a partial checksum anyway
                                    if let Some(seg) = TcpSeg::parse(c.inner).filter(|s| s.mergeable() && (partial.is_some() || s.checksums_ok(c.inner))) {
                                        if pending.as_mut().is_some_and(|pd| pd.push(net, p, &seg, c.inner)) {
                                            continue;
                                        }
                                        flush(&mut pending, shard, &mut rl_write, now);
                                        pending = Some(Pending::new(net, p, tap.clone(), seg, c.inner));
                                        continue;
                                    }
                                }
                                flush(&mut pending, shard, &mut rl_write, now);
                                fwd.deliver(net, &ports, p, complete(c.inner, partial, &mut scratch), shard, now);
                            }
                            Action::Flood => {
                                flush(&mut pending, shard, &mut rl_write, now);
                                net.stats.flooded(shard);
                                let ports = Forwarder::ports(&c.entry.io);
                                fwd.flood(net, &ports, None, complete(c.inner, partial, &mut scratch), shard, now);
                                for (p, _) in ports.others(None) {
                                    touched.note(&c.entry.io, p);
                                }
                            }
                            Action::Peer(_) | Action::Drop(_) | Action::Consumed => {}
                        }
                    }
                }
                flush(&mut pending, shard, &mut rl_write, now);
                // run to completion: send what the host answered inside those writes
                touched.drain(shard);
                if n < batch.capacity() {
                    break;
                }
            }
        }
        tracing::debug!(socket = %rx, "underlay thread stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Dscp;
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
