//! The data path: blocking threads that move frames between local ports and the underlay.
//!
//! - One *port thread* per local port (TAP): wait for readiness, drain up to [`BATCH`] frames,
//!   decide each frame with [`Network::from_local`], write the VXLAN header into the headroom
//!   in front of the frame (no copy of the frame), queue it for its peer(s), and send the whole
//!   batch with one `sendmmsg` per source-port socket.
//! - One *underlay thread* per receive socket: `recvmmsg` a batch, classify each datagram to a
//!   network and peer, decide with [`Network::from_peer`], and write the inner frame straight
//!   from the receive buffer to the TAP.
//!
//! With offloads (`[node] offload = true`, the default) both threads move 64 KiB units:
//! - the port thread reads TCP super-frames (TAP with a virtio-net header and TSO), cuts each
//!   into segments with [`TsoPlan`] (headers in a per-thread arena, payload left in the read
//!   buffer) and sends all segments for a peer with one UDP GSO `sendmsg`;
//! - the underlay thread receives with `UDP_GRO` (many datagrams per message), and chains
//!   consecutive TCP segments of a flow into a [`Run`] that is written to the TAP as one
//!   super-frame with `writev`, its payload straight from the receive buffer.
//!
//! Nothing here allocates per frame, takes a lock, or logs per frame: errors are counted and
//! logged at most once a second per thread with the number suppressed.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::core::fabric::Fabric;
use crate::core::offload::{MAX_RUN_SEGMENTS, PartialCsum, Run, TcpSeg, TsoPlan, VNET_HDR_LEN, VnetHdr, finish_partial_checksum, tunnel_super_frame};
use crate::core::neigh;
use crate::core::pmtu;
use crate::core::stats::{GlobalDrops, PmtuEvent, Shard};
use crate::core::wire::ethernet::{self, EthernetFrame};
use crate::core::wire::vxlan;
use crate::core::{Action, DropReason, Instant, LocalPort, Network, PeerIdx, Port, Vni};
use super::gre::{GreParams, GreTx};
use crate::io::clock;
use crate::io::sys::{self, StopFd, Wake};
use crate::io::tap::{MAX_FRAME, Tap};
use crate::io::udp::{BATCH, GSO_MAX_BYTES, GSO_MAX_SEGMENTS, GsoError, RecvBatch, RxSocket, SendQueue, TxItem, TxSockets};

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

/// Room for one segment's headers in the header arena: VXLAN (8), Ethernet with two VLAN
/// tags (22), IPv4 or IPv6 with the longest options (60), TCP with the longest options (60).
const SEG_HDR_MAX: usize = 160;

/// Per-thread scratch space for sending the segments of TSO super-frames: each segment is
/// two iovecs, its headers (in `arena`) and its payload (in place, in the read buffer), so the
/// payload is copied by the kernel only.
struct Segmenter {
    arena: Vec<u8>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    warned: bool,
}

/// What became of one super-frame sent to one peer.
struct Sent {
    segments: usize,
    bytes: usize,
    error: Option<io::Error>,
}

impl Segmenter {
    fn new() -> Self {
        Segmenter {
            arena: vec![0; GSO_MAX_SEGMENTS * SEG_HDR_MAX],
            iovs: Vec::with_capacity(2 * GSO_MAX_SEGMENTS),
            hdrs: Vec::with_capacity(BATCH),
            warned: false,
        }
    }

    /// Cut `frame` (planned by `plan`) into VXLAN datagrams for `dst` and send them with UDP
    /// GSO, at most 64 segments / 65507 bytes per call, if `gso` (the peer runs overlayd) and
    /// the kernel allows it; else one datagram per segment, batched with `sendmmsg`.
    #[allow(clippy::too_many_arguments)]
    fn send(&mut self, tx: &TxSockets, hash: usize, gso: bool, dst: SocketAddr, vni: Vni, frame: &[u8], plan: &TsoPlan) -> Sent {
        let seg_hdr = vxlan::HEADER_LEN + plan.header_len();
        let seg_size = seg_hdr + plan.mss;
        let per_call = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / seg_size).max(1);
        let mut out = Sent { segments: 0, bytes: 0, error: None };
        let mut i = 0;
        while i < plan.segments {
            let n = per_call.min(plan.segments - i);
            let mut bytes = 0;
            for k in 0..n {
                let h = &mut self.arena[k * SEG_HDR_MAX..k * SEG_HDR_MAX + seg_hdr];
                vxlan::emit(&mut h[..vxlan::HEADER_LEN], vni);
                plan.write_header(frame, i + k, &mut h[vxlan::HEADER_LEN..]);
            }
            self.iovs.clear();
            for k in 0..n {
                let payload = &frame[plan.payload_range(i + k)];
                bytes += seg_hdr + payload.len();
                self.iovs.push(libc::iovec { iov_base: self.arena[k * SEG_HDR_MAX..].as_ptr() as *mut libc::c_void, iov_len: seg_hdr });
                self.iovs.push(libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() });
            }
            let mut fallback = !gso || !tx.gso_enabled();
            if !fallback {
                match tx.send_gso(hash, dst, &self.iovs, seg_size as u16) {
                    Ok(()) => {
                        out.segments += n;
                        out.bytes += bytes;
                    }
                    Err(GsoError::Unavailable(e)) => {
                        if !self.warned {
                            self.warned = true;
                            tracing::warn!(error = %e, "the kernel refused UDP GSO; sending segments one datagram each from now on");
                        }
                        fallback = true;
                    }
                    Err(GsoError::Io(e)) => out.error = Some(e),
                }
            }
            if fallback {
                let (sent, err) = tx.send_each(tx.slot(hash, gso), dst, &mut self.iovs, 2, &mut self.hdrs);
                out.segments += sent;
                out.bytes += (0..sent).map(|k| self.iovs[2 * k].iov_len + self.iovs[2 * k + 1].iov_len).sum::<usize>();
                if err.is_some() {
                    out.error = err;
                }
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
        let Some(drain) = io.drains.iter().find(|d| d.port == port).cloned() else { return };
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
            fwd: Forwarder::default(),
            signals: PmtuSignals::default(),
            answer: [0u8; neigh::REPLY_MAX],
            ingress: Port::Local(port),
        }
    }

    /// Read up to [`BATCH`] frames from the TAP (until it would block), switch them and send
    /// what goes to peers. Returns the frames read.
    fn drain(&mut self, shard: Shard, inline: bool) -> usize {
        let PortWorker { io, tap, tx, gre, bufs, lens, q, seg, scratch, rl_read, rl_send, rl_gso, fwd, signals, answer, .. } = self;
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
        let ports = Forwarder::ports(&io);
        for i in 0..n {
            let len = lens[i];
            net.stats.tap_rx(shard, len);
            let vh = if vnet { VnetHdr::parse(&bufs[i][rd..HEADROOM]).unwrap_or(VnetHdr::NONE) } else { VnetHdr::NONE };
            if vh.is_gso() {
                // a TCP super-frame: its segments go out with UDP GSO, after what is queued
                let frame = &bufs[i][HEADROOM..HEADROOM + len];
                let plan = match TsoPlan::new(frame, &vh) {
                    Ok(p) if vxlan::HEADER_LEN + p.header_len() <= SEG_HDR_MAX => p,
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
                let hash = EthernetFrame::new_unchecked(frame).flow_hash() as usize;
                let mut to_peer = |p: PeerIdx, seg: &mut Segmenter| {
                    let Some(peer) = net.peers.get(usize::from(p.0)) else { return };
                    // GSO only to peers known to take it: others may read the link in userspace
                    let s = seg.send(tx, hash, peer.liveness.takes_gso(), peer.addr, net.spec.vni, frame, &plan);
                    let each = s.bytes / s.segments.max(1);
                    for _ in 0..s.segments {
                        net.stats.peer_tx(shard, usize::from(p.0), each);
                    }
                    if let Some(e) = s.error {
                        net.stats.count_drop(shard, DropReason::SendFailed);
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
                _ => 0,
            };
            let hash = match action {
                Action::Peer(_) | Action::Flood => EthernetFrame::new_unchecked(frame).flow_hash() as usize,
                _ => 0,
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
            g.flush(&net, bufs, shard, rl_send, now);
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

/// Everything an underlay thread needs.
pub struct UnderlayThread {
    pub rx: RxSocket,
    pub fabric: SharedFabric,
    pub global: Arc<GlobalDrops>,
    pub stop: Arc<StopFd>,
    /// Largest datagram accepted (underlay MTU).
    pub slot: usize,
    /// Receive with `UDP_GRO` and coalesce TCP segments for offloading TAPs.
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

/// A run of TCP segments (inside the current receive batch) on its way to one TAP.
struct Pending<'a> {
    net: &'a Network,
    port: LocalPort,
    tap: Arc<Tap>,
    run: Run,
    first: &'a [u8],
    payloads: [&'a [u8]; MAX_RUN_SEGMENTS],
    n: usize,
}

impl<'a> Pending<'a> {
    fn new(net: &'a Network, port: LocalPort, tap: Arc<Tap>, seg: TcpSeg, frame: &'a [u8]) -> Self {
        let mut payloads: [&'a [u8]; MAX_RUN_SEGMENTS] = [&[]; MAX_RUN_SEGMENTS];
        payloads[0] = seg.payload(frame);
        Pending { net, port, tap, run: Run::start(seg), first: frame, payloads, n: 1 }
    }

    /// Add a segment if it continues this run to the same port.
    fn push(&mut self, net: &Network, port: LocalPort, seg: &TcpSeg, frame: &'a [u8]) -> bool {
        if !std::ptr::eq(self.net, net) || self.port != port || self.n >= MAX_RUN_SEGMENTS || !self.run.try_push(self.first, seg, frame) {
            return false;
        }
        self.payloads[self.n] = seg.payload(frame);
        self.n += 1;
        true
    }

    /// Write the run to its TAP as one frame: virtio-net header, the first segment's rewritten
    /// headers, then every payload straight from the receive buffer.
    fn flush(self, shard: Shard, rl: &mut RateLimit, now: Instant) {
        let mut hdr = [0u8; 160];
        let hlen = self.run.first.layout.hdr_len;
        let vh = self.run.header(self.first, &mut hdr);
        let vb = vh.to_bytes();
        let mut parts = [IoSlice::new(&[]); MAX_RUN_SEGMENTS + 2];
        parts[0] = IoSlice::new(&vb);
        parts[1] = IoSlice::new(&hdr[..hlen]);
        for k in 0..self.n {
            parts[2 + k] = IoSlice::new(self.payloads[k]);
        }
        match self.tap.write_vectored(&parts[..2 + self.n]) {
            Ok(_) => self.net.stats.tap_tx(shard, hlen + self.run.payload_len),
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
        let port = rx.local.port();
        let gro = offload && rx.enable_gro();
        if offload && !gro {
            tracing::warn!(socket = %rx.local, "UDP GRO not available; receiving one datagram per message");
        }
        // Without GRO, slots still hold a whole 64 KiB message: a kernel peer on a link that
        // keeps offloads sends its TSO bursts as one tunnel GSO packet, which the kernel queues
        // to us whole (see `tunnel_super_frame`).
        let mut batch = if gro { RecvBatch::with_gro(GRO_SLOT, GRO_BATCH) } else { RecvBatch::new(slot.max(GRO_SLOT)) };
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
                    tracing::error!(socket = %rx.local, error = %e, "underlay poll failed; receiver stopped");
                    break;
                }
            }
            loop {
                let now = clock::now();
                let n = match batch.recv(rx.fd()) {
                    Ok(n) => n,
                    Err(e) => {
                        if let Some(muted) = rl_recv.allow(now) {
                            tracing::warn!(socket = %rx.local, error = %e, muted, "underlay receive failed");
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
                    // with GRO, one message holds datagrams of `stride` bytes back to back
                    let stride = batch.stride(i).unwrap_or(data.len()).max(1);
                    for datagram in data.chunks(stride) {
                        let c = match f.classify_vxlan(port, from.ip(), datagram) {
                            Ok(c) => c,
                            Err(refused) => {
                                f.count_refused(refused, shard, &global);
                                continue;
                            }
                        };
                        let net = &c.entry.net;
                        // larger than any frame of the network: a kernel peer's whole TSO burst?
                        if c.inner.len() > usize::from(net.spec.mtu) + ethernet::HEADER_LEN {
                            if let Some((vh, plan)) = tunnel_super_frame(c.inner, usize::from(net.spec.mtu)) {
                                flush(&mut pending, shard, &mut rl_write, now);
                                // decide on the first segment's worth, as for a TAP's super-frame
                                let first = &c.inner[..plan.header_len() + plan.mss];
                                let action = net.receive_from_peer(c.peer, first, datagram.len(), shard, now);
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
                                    _ => continue,
                                }
                                net.stats.partial_checksum(shard);
                                peer_sends_offloads(net, c.peer, from, Offloads::Burst);
                                continue;
                            }
                        }
                        let action = net.receive_from_peer(c.peer, c.inner, datagram.len(), shard, now);
                        if !matches!(action, Action::Local(_) | Action::Flood) {
                            continue;
                        }
                        // a kernel peer on a link that keeps checksum offload leaves inner
                        // TCP/UDP checksums partial: take them as such (see PartialCsum)
                        let partial = PartialCsum::detect(c.inner);
                        if partial.is_some() {
                            net.stats.partial_checksum(shard);
                            peer_sends_offloads(net, c.peer, from, Offloads::Partial);
                        } else {
                            peer_sends_offloads(net, c.peer, from, Offloads::Complete);
                        }
                        match action {
                            Action::Local(p) => {
                                touched.note(&c.entry.io, p);
                                let ports = Forwarder::ports(&c.entry.io);
                                if gro {
                                    if let Some(LocalIo::Tap(tap)) = ports.get(p).filter(|io| matches!(io, LocalIo::Tap(t) if t.vnet_hdr())) {
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
                            _ => {}
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
        tracing::debug!(socket = %rx.local, "underlay thread stopped");
    }
}
