//! The data path: blocking threads that move frames between local ports and the underlay.
//!
//! - One *port thread* per local port (TAP): wait for readiness, read up to [`BATCH`] frames
//!   into a [`FrameBatch`], and hand it to the port's [`Switcher`] (the switch loop every kind
//!   of local port shares).
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
//!   receive buffer; on a TAP with UDP segmentation offload ([`Tap::uso`]) datagrams of one
//!   UDP flow are chained the same way into one `UDP_L4` super-frame, each still decided on
//!   its own.
//!
//! Nothing here allocates per frame, takes a lock, or logs per frame: errors are counted and
//! logged at most once a second per thread with the number suppressed.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::core::fabric::{Classified, NetEntry};
use crate::core::network::run::Run;
use crate::core::offload::{Coalescer, MAX_HEADER_LEN, MAX_RUN_SEGMENTS, PartialCsum, Segment, tunnel_super_frame};
use crate::core::stats::{GlobalDrops, Shard};
use crate::core::wire::ethernet;
use crate::core::wire::ip::Ipv4Packet;
use crate::core::wire::vxlan;
use crate::core::{Action, DropReason, Instant, LocalPort, Network, PeerIdx};
use crate::io::clock;
use crate::io::gre::GreSocket;
use crate::io::sys::{self, StopFd, Wake};
use crate::io::tap::{MAX_FRAME, Tap};
use crate::io::udp::{BATCH, RecvBatch, RxSocket, TxSockets};

use super::forward::{Ctx, Forwarder};
use super::gre::GreParams;
use super::netio::{Drain, LocalIo, NetIo, RateLimit, SharedFabric};
use super::switch::{FrameBatch, Switcher};

/// Everything a port thread needs.
pub struct PortThread {
    pub io: Arc<NetIo>,
    pub port: LocalPort,
    pub tx: Arc<TxSockets>,
    pub stop: Arc<StopFd>,
    /// `Some` for a GRE network: frames go out on the raw GRE socket instead of UDP.
    pub gre: Option<GreParams>,
}

/// The reading side of one TAP port: read a batch, switch it. The port's own thread runs it
/// when the TAP is readable; an underlay thread that has just written into the TAP runs it
/// too, at once (see [`PortDrain`](super::netio::PortDrain)).
struct PortWorker {
    io: Arc<NetIo>,
    tap: Arc<Tap>,
    batch: FrameBatch,
    sw: Switcher,
    rl_read: RateLimit,
}

impl PortThread {
    pub fn run(self) {
        let PortThread { io, port, tx, stop, gre } = self;
        let Some(LocalIo::Tap(tap)) = io.ports.load().get(port).cloned() else { return };
        let Some(drain) = io.drain(port).cloned() else {
            tracing::error!(network = io.net.load().name(), tap = tap.name(), "no reader state for this tap; port stopped");
            return;
        };
        let sw = Switcher::new(io.clone(), tx, port, gre);
        drain.set(Some(Box::new(PortWorker { io: io.clone(), batch: FrameBatch::for_tap(tap.vnet_hdr()), tap: tap.clone(), sw, rl_read: RateLimit::default() })));
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
            drain.drain(shard);
        }
        // nobody reads the TAP once its thread has stopped
        drain.set(None);
        tracing::debug!(network = io.net.load().name(), tap = tap.name(), "port thread stopped");
    }
}

impl Drain for PortWorker {
    /// Read up to [`BATCH`] frames from the TAP (until it would block), switch them and send
    /// what goes to peers.
    fn drain(&mut self, shard: Shard, inline: bool) -> usize {
        let PortWorker { io, tap, batch, sw, rl_read } = self;
        let net = io.net.load();
        let now = clock::now();
        while let Some(room) = batch.room(MAX_FRAME) {
            match tap.read(room) {
                Ok(len) => {
                    if !batch.commit(len) {
                        net.stats.count_drop(shard, DropReason::Malformed);
                    }
                }
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
        let n = batch.len();
        sw.switch(batch, shard, now);
        if inline && n > 0 {
            net.stats.tap_rx_inline(shard, n);
        }
        n
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
/// written, it drains them itself ([`PortDrain::try_drain`](super::netio::PortDrain::try_drain)), so that what the host answered
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
            if let Some(d) = io.drain(port) {
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

/// A run of TCP segments or UDP datagrams (inside the current receive batch) on its way to
/// one TAP; the coalescing itself is [`Coalescer`]'s.
struct Pending<'a> {
    net: &'a Network,
    port: LocalPort,
    tap: Arc<Tap>,
    run: Coalescer<'a>,
}

impl<'a> Pending<'a> {
    fn new(net: &'a Network, port: LocalPort, tap: Arc<Tap>, seg: Segment, frame: &'a [u8]) -> Self {
        Pending { net, port, tap, run: Coalescer::start(seg, frame) }
    }

    /// Add a segment or datagram if it continues this run to the same port.
    fn push(&mut self, net: &Network, port: LocalPort, seg: Segment, frame: &'a [u8]) -> bool {
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
            Ok(_) => {
                self.net.stats.tap_tx(shard, self.run.frame_len());
                if self.run.is_udp() && payloads.len() > 1 {
                    self.net.stats.tap_tx_udp_coalesced(shard, payloads.len());
                }
            }
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

/// Count the datagrams that took the decision of the run (if any) in bulk, and end it.
fn end_run<P>(run: &mut Option<(Run<'_>, &NetEntry<P>)>, shard: Shard) {
    if let Some((r, entry)) = run.take() {
        entry.net.end_run(r, shard);
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
                    // those that share the first one's headers take its decision (see Run)
                    let runs = vxlan && data.len() > stride;
                    let mut run: Option<(Run<'_>, &NetEntry<_>)> = None;
                    for datagram in data.chunks(stride) {
                        let decided = run
                            .as_mut()
                            .and_then(|(r, entry)| r.decide(datagram).map(|(p, inner)| (Classified { entry: *entry, peer: r.peer(), inner }, p)));
                        let (c, by_run) = match decided {
                            Some((c, p)) => (c, Some(p)),
                            None => {
                                end_run(&mut run, shard);
                                let classified = if vxlan { f.classify_vxlan(port, src, datagram) } else { f.classify_gre(src, datagram) };
                                match classified {
                                    Ok(c) => (c, None),
                                    Err(refused) => {
                                        f.count_refused(refused, shard, &global);
                                        continue;
                                    }
                                }
                            }
                        };
                        let net = &c.entry.net;
                        // larger than any frame of the network: a kernel peer's whole TSO burst?
                        // (never one of a run: no longer than the run's first, which was not)
                        if vxlan
                            && by_run.is_none()
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
                            let cx = Ctx { net, ports: &ports, shard, now };
                            match action {
                                Action::Local(p) => {
                                    fwd.deliver_super(&cx, p, &vh, c.inner, &plan);
                                    touched.note(&c.entry.io, p);
                                }
                                Action::Flood => {
                                    net.stats.flooded(shard);
                                    for (p, _) in ports.others(None) {
                                        fwd.deliver_super(&cx, p, &vh, c.inner, &plan);
                                        touched.note(&c.entry.io, p);
                                    }
                                }
                                Action::Peer(_) | Action::Drop(_) | Action::Consumed => continue,
                            }
                            net.stats.partial_checksum(shard);
                            peer_sends_offloads(net, c.peer, from, Offloads::Burst);
                            continue;
                        }
                        let action = match by_run {
                            Some(p) => Action::Local(p),
                            None => {
                                let action = net.receive_from_peer(c.peer, c.inner, datagram.len(), shard, now);
                                if runs {
                                    run = Run::start(datagram, vxlan::HEADER_LEN, c.peer, action).map(|r| (r, c.entry));
                                }
                                action
                            }
                        };
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
                                    && let Some(seg) = Segment::parse(c.inner, partial.is_some(), tap.uso())
                                {
                                    if pending.as_mut().is_some_and(|pd| pd.push(net, p, seg, c.inner)) {
                                        continue;
                                    }
                                    flush(&mut pending, shard, &mut rl_write, now);
                                    pending = Some(Pending::new(net, p, tap.clone(), seg, c.inner));
                                    continue;
                                }
                                flush(&mut pending, shard, &mut rl_write, now);
                                let cx = Ctx { net, ports: &ports, shard, now };
                                fwd.deliver(&cx, p, complete(c.inner, partial, &mut scratch));
                            }
                            Action::Flood => {
                                flush(&mut pending, shard, &mut rl_write, now);
                                net.stats.flooded(shard);
                                let ports = Forwarder::ports(&c.entry.io);
                                let cx = Ctx { net, ports: &ports, shard, now };
                                fwd.flood(&cx, None, complete(c.inner, partial, &mut scratch));
                                for (p, _) in ports.others(None) {
                                    touched.note(&c.entry.io, p);
                                }
                            }
                            Action::Peer(_) | Action::Drop(_) | Action::Consumed => {}
                        }
                    }
                    end_run(&mut run, shard);
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
