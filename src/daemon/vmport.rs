//! VM ports: the accept loop of a network's `vm_socket`, and one reader thread per connected
//! VM.
//!
//! A connection becomes a port the moment it is accepted: it gets a slot in the network's
//! [`PortTable`](crate::core::ports::PortTable) (a new table is published; the data path
//! never waits for this), and from then on floods reach it and its source MACs are learned
//! against it. When the VM disconnects, or sends something that is not QEMU framing, the
//! port leaves the table and every MAC learned on it is flushed from the FDB at once, so
//! traffic for those MACs floods again instead of going nowhere until it ages out.
//!
//! The reader thread works like a TAP port thread: wait for readiness, read as much as the
//! socket holds into the [`StreamDecoder`], switch every complete frame, and send the frames
//! for peers in one `sendmmsg` per source socket. Frames for peers are copied once into a
//! batch arena with room for the tunnel header in front (the stream has none between
//! frames); frames for local ports are written straight from the decoder buffer's copy.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;

use crate::core::pmtu;
use crate::core::stats::{PmtuEvent, Shard};
use crate::core::neigh;
use crate::core::wire::ethernet::EthernetFrame;
use crate::core::wire::qemu::{FramingError, StreamDecoder};
use crate::core::wire::vxlan;
use crate::core::{Action, DropReason, Instant, LocalPort, Network, PeerIdx, Port};
use crate::io::clock;
use crate::io::sys::{self, StopFd, Wake};
use crate::io::udp::{BATCH, TxSockets};
use crate::io::{SendQueue, TxItem};
use crate::io::vmsock::{DgramPeer, VmConn, VmDgramSocket, VmListener};

use super::datapath::{NetIo, RateLimit};
use super::gre::{GreParams, GreTx};
use super::forward::{Forwarder, LocalIo, PmtuSignals};

/// Bytes read per `read` call at most (many small frames per syscall).
const READ_BUF: usize = 256 << 10;
/// Bytes of frames (plus tunnel headers) collected before a batch is sent.
const ARENA: usize = 256 << 10;

/// The accept loop of one network's VM socket.
pub struct VmPortServer {
    pub listener: VmListener,
    pub io: Arc<NetIo>,
    pub tx: Arc<TxSockets>,
    pub stop: Arc<StopFd>,
    /// `Some` for a GRE network.
    pub gre: Option<GreParams>,
}

impl VmPortServer {
    pub fn run(self) {
        let mut readers: Vec<JoinHandle<()>> = Vec::new();
        let mut rl = RateLimit::default();
        loop {
            match sys::wait_readable(self.listener.fd(), &self.stop) {
                Ok(Wake::Stop) => break,
                Ok(Wake::Ready) => {}
                Err(e) => {
                    tracing::error!(network = self.io.net.load().name(), path = %self.listener.path().display(), error = %e, "vm socket poll failed; no more VMs accepted");
                    break;
                }
            }
            loop {
                match self.listener.accept() {
                    Ok(Some(conn)) => {
                        if let Some(h) = self.connect(conn, &mut rl) {
                            readers.push(h);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if let Some(muted) = rl.allow(clock::now()) {
                            tracing::warn!(network = self.io.net.load().name(), error = %e, muted, "accept on vm socket failed");
                        }
                        // e.g. out of descriptors: do not spin on a listener that stays readable
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        break;
                    }
                }
            }
            // reap the readers of VMs that are gone
            let (done, live): (Vec<_>, Vec<_>) = readers.into_iter().partition(|h| h.is_finished());
            readers = live;
            for h in done {
                if h.join().is_err() {
                    tracing::error!(network = self.io.net.load().name(), "a vm reader thread panicked");
                }
            }
        }
        for h in readers {
            if h.join().is_err() {
                tracing::error!(network = self.io.net.load().name(), "a vm reader thread panicked");
            }
        }
        tracing::debug!(network = self.io.net.load().name(), "vm socket closed");
    }

    /// Give `conn` a port and start its reader; `None` if it was turned away.
    fn connect(&self, conn: VmConn, rl: &mut RateLimit) -> Option<JoinHandle<()>> {
        let conn = Arc::new(conn);
        let port = add_port(&self.io, LocalIo::Vm(conn.clone()));
        let Some(port) = port else {
            if let Some(muted) = rl.allow(clock::now()) {
                tracing::warn!(network = self.io.net.load().name(), vm_pid = conn.pid, muted, "port table full; vm connection refused");
            }
            return None;
        };
        tracing::info!(network = self.io.net.load().name(), port = port.slot(), vm_pid = conn.pid, ports = self.io.ports.load().len(), "vm connected");
        let reader = VmReader { io: self.io.clone(), tx: self.tx.clone(), stop: self.stop.clone(), conn, port, gre: self.gre.clone() };
        match std::thread::Builder::new().name(format!("vm-{}-{}", self.io.net.load().name(), port.slot())).spawn(move || reader.run()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(network = self.io.net.load().name(), error = %e, "cannot start a vm reader; connection dropped");
                remove_port(&self.io, port);
                None
            }
        }
    }
}

/// The datagram socket of one network: every sender address is a VM port.
///
/// One thread reads the socket for all its VMs, so frames are batched per run of datagrams
/// from the same VM. A VM is connected by its first datagram; it is disconnected when sending
/// to it finds nobody there (its QEMU stopped), noticed within a second.
pub struct VmDgramServer {
    pub sock: Arc<VmDgramSocket>,
    pub io: Arc<NetIo>,
    pub tx: Arc<TxSockets>,
    pub stop: Arc<StopFd>,
    pub gre: Option<GreParams>,
}

impl VmDgramServer {
    pub fn run(self) {
        let want = usize::from(self.io.net.load().spec.mtu) + 32;
        let mut rx = vec![0u8; want + 1];
        let mut vms: HashMap<PathBuf, (LocalPort, Arc<DgramPeer>)> = HashMap::new();
        let mut batch = Batch::new();
        let mut sw = Switcher::new(self.io.clone(), self.tx.clone(), LocalPort(0)).with_gre(self.gre.clone());
        let mut rl = RateLimit::default();
        let mut last_sweep = clock::now();
        loop {
            match sys::wait_readable_for(self.sock.fd(), &self.stop, 1000) {
                Ok(Some(Wake::Stop)) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(network = self.io.net.load().name(), path = %self.sock.path().display(), error = %e, "vm dgram socket poll failed; closed");
                    break;
                }
            }
            let net = self.io.net.load();
            let now = clock::now();
            loop {
                let (n, from) = match self.sock.recv(&mut rx) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if let Some(muted) = rl.allow(now) {
                            tracing::warn!(network = net.name(), error = %e, muted, "receive on vm dgram socket failed");
                        }
                        break;
                    }
                };
                let Some(path) = from.as_pathname() else {
                    net.stats.count_drop(Shard::LOCAL, DropReason::UnnamedSender);
                    continue;
                };
                let port = match vms.get(path) {
                    Some((p, vm)) if !vm.is_gone() => *p,
                    _ => {
                        if let Some((old, _)) = vms.remove(path) {
                            sw.switch(&mut batch, now);
                            remove_port(&self.io, old);
                        }
                        let vm = Arc::new(DgramPeer::new(self.sock.clone(), path.to_path_buf()));
                        let Some(p) = add_port(&self.io, LocalIo::Dgram(vm.clone())) else {
                            if let Some(muted) = rl.allow(now) {
                                tracing::warn!(network = net.name(), vm = %path.display(), muted, "port table full; vm datagrams dropped");
                            }
                            continue;
                        };
                        tracing::info!(network = net.name(), port = p.slot(), vm = %path.display(), ports = self.io.ports.load().len(), "vm connected (dgram)");
                        vms.insert(path.to_path_buf(), (p, vm));
                        p
                    }
                };
                if n > want {
                    // longer than any frame within the MTU (the datagram was cut at want + 1)
                    sw.too_big(port, &rx[..n.min(rx.len())], now);
                    continue;
                }
                if port != sw.port || !batch.fits(n) {
                    sw.switch(&mut batch, now);
                    sw.port = port;
                }
                batch.push(&rx[..n]);
            }
            sw.switch(&mut batch, now);
            if now.saturating_since(last_sweep).as_millis() >= 1000 {
                last_sweep = now;
                vms.retain(|path, (port, vm)| {
                    if !vm.is_gone() {
                        return true;
                    }
                    let flushed = remove_port(&self.io, *port);
                    tracing::info!(network = net.name(), port = port.slot(), vm = %path.display(), flushed_macs = flushed, "vm disconnected (dgram: nobody at its address)");
                    false
                });
            }
        }
        tracing::debug!(network = self.io.net.load().name(), "vm dgram socket closed");
    }
}

/// Publish a port table with VM port `p` added; the port it got, or `None` if the table is
/// full.
pub fn add_port(io: &NetIo, p: LocalIo) -> Option<LocalPort> {
    let _g = io.port_changes.lock().unwrap_or_else(|p| p.into_inner());
    let net = io.net.load();
    let Some((t, port)) = io.ports.load().with(p) else {
        net.vm_ports.refused.fetch_add(1, Relaxed);
        return None;
    };
    io.ports.store(Arc::new(t));
    net.vm_ports.connects.fetch_add(1, Relaxed);
    net.vm_ports.connected.fetch_add(1, Relaxed);
    Some(port)
}

/// Publish a port table without VM port `port` and forget the MACs learned on it; returns
/// how many.
pub fn remove_port(io: &NetIo, port: LocalPort) -> usize {
    let net = io.net.load();
    {
        let _g = io.port_changes.lock().unwrap_or_else(|p| p.into_inner());
        let cur = io.ports.load();
        if cur.get(port).is_some() {
            io.ports.store(Arc::new(cur.without(port)));
            net.vm_ports.disconnects.fetch_add(1, Relaxed);
            net.vm_ports.connected.fetch_sub(1, Relaxed);
        }
    }
    // only this port's reader learns on it, and it has stopped: nothing re-learns after this
    net.fdb.flush_port(Port::Local(port), clock::now())
}

/// Why a VM's connection ended.
enum End {
    Closed,
    Stopped,
    Error(io::Error),
    Framing(FramingError),
}

struct VmReader {
    io: Arc<NetIo>,
    tx: Arc<TxSockets>,
    stop: Arc<StopFd>,
    conn: Arc<VmConn>,
    port: LocalPort,
    gre: Option<GreParams>,
}

/// Room in front of each frame for the longest tunnel header (VXLAN 8 bytes, GRE up to 12).
const ROOM: usize = 16;

/// Frames of one batch: each sits in `arena` after [`ROOM`] bytes of room.
pub(super) struct Batch {
    arena: Vec<u8>,
    /// (offset of the room, frame length)
    items: Vec<(usize, usize)>,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch { arena: vec![0; ARENA.max(ROOM + crate::core::wire::qemu::MAX_FRAME)], items: Vec::with_capacity(BATCH) }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn fits(&self, len: usize) -> bool {
        self.items.len() < BATCH && self.used() + ROOM + len <= self.arena.len()
    }

    fn used(&self) -> usize {
        self.items.last().map_or(0, |&(o, l)| o + ROOM + l)
    }

    pub(super) fn push(&mut self, frame: &[u8]) {
        let o = self.used();
        self.arena[o + ROOM..o + ROOM + frame.len()].copy_from_slice(frame);
        self.items.push((o, frame.len()));
    }

    /// Room for reading the next frame in place, if `want` bytes fit; [`Self::commit`] it.
    pub(super) fn room(&mut self, want: usize) -> Option<&mut [u8]> {
        if !self.fits(want) {
            return None;
        }
        let o = self.used() + ROOM;
        Some(&mut self.arena[o..o + want])
    }

    /// The frame of `len` bytes read into [`Self::room`] belongs to the batch.
    pub(super) fn commit(&mut self, len: usize) {
        let o = self.used();
        self.items.push((o, len));
    }
}

/// Switches batches of frames that arrived on one local port.
pub(super) struct Switcher {
    pub io: Arc<NetIo>,
    pub tx: Arc<TxSockets>,
    pub port: LocalPort,
    q: SendQueue,
    /// `Some` for a GRE network: frames for peers go out on the raw GRE socket.
    gre: Option<GreTx>,
    fwd: Forwarder,
    signals: PmtuSignals,
    rl_send: RateLimit,
    /// An ARP/ND answer for the asking port (suppression).
    answer: [u8; neigh::REPLY_MAX],
}

impl Switcher {
    pub(super) fn new(io: Arc<NetIo>, tx: Arc<TxSockets>, port: LocalPort) -> Switcher {
        let q = SendQueue::new(tx.slots());
        Switcher { io, tx, port, q, gre: None, fwd: Forwarder::default(), signals: PmtuSignals::default(), rl_send: RateLimit::default(), answer: [0; neigh::REPLY_MAX] }
    }

    /// Send to peers over GRE with these parameters (a GRE network), or VXLAN (`None`).
    pub(super) fn with_gre(mut self, gre: Option<GreParams>) -> Switcher {
        self.gre = gre.map(GreTx::new);
        self
    }

    /// A frame from `port` too long to read whole (`frame` is its start): dropped as over the
    /// MTU, and answered with a path-MTU signal.
    pub(super) fn too_big(&mut self, port: LocalPort, frame: &[u8], now: Instant) {
        let net = self.io.net.load();
        let ports = Forwarder::ports(&self.io);
        self.signals.too_big(&mut self.fwd, &net, &ports, port, frame, Shard::per_thread(), now);
    }

    /// Switch every frame of `batch` and send what goes to peers; empties the batch.
    pub(super) fn switch(&mut self, batch: &mut Batch, now: Instant) {
        if batch.items.is_empty() {
            return;
        }
        // the network's current generation, for this batch
        let current = self.io.net.load();
        let (net, shard, ingress) = (&**current, Shard::per_thread(), Port::Local(self.port));
        let (q, fwd, gre, signals, tx, answer) = (&mut self.q, &mut self.fwd, &mut self.gre, &mut self.signals, &*self.tx, &mut self.answer);
        let ports = Forwarder::ports(&self.io);
        for &(o, len) in &batch.items {
            let at = o + ROOM;
            let room = at - vxlan::HEADER_LEN..at + len;
            if net.spec.mss_clamp && pmtu::clamp_mss(&mut batch.arena[at..room.end], net.spec.mtu, false) {
                net.stats.pmtu(shard, PmtuEvent::MssClamped);
            }
            let frame = &batch.arena[at..room.end];
            net.stats.tap_rx(shard, len);
            let action = net.from_local(self.port, frame, now);
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
                Action::Drop(DropReason::MtuExceeded) => signals.too_big(fwd, net, &ports, self.port, frame, shard, now),
                Action::Drop(r) => net.stats.count_drop(shard, r),
                Action::Consumed => {}
                Action::Local(p) => fwd.deliver(net, &ports, p, frame, shard, now),
                Action::Peer(p) => match gre.as_mut() {
                    Some(g) => {
                        let tos = g.encap_at(&mut batch.arena, at, len);
                        if let Some(peer) = net.peers.get(usize::from(p.0)) {
                            g.push_at(0, at, len, peer.addr.ip(), tos, p.0);
                        }
                    }
                    None => {
                        vxlan::emit(&mut batch.arena[room.clone()], net.spec.vni);
                        queue(net, tx, q, room, p, hash);
                    }
                },
                // ARP/ND suppression: answered on the asking port, nothing flooded
                Action::Flood if answered > 0 => fwd.deliver(net, &ports, self.port, &answer[..answered], shard, now),
                Action::Flood => {
                    net.stats.flooded(shard);
                    fwd.flood(net, &ports, Some(self.port), frame, shard, now);
                    match gre.as_mut() {
                        Some(g) => {
                            let tos = g.encap_at(&mut batch.arena, at, len);
                            for p in net.flood_peers(ingress) {
                                if let Some(peer) = net.peers.get(usize::from(p.0)) {
                                    g.push_at(0, at, len, peer.addr.ip(), tos, p.0);
                                }
                            }
                        }
                        None => {
                            vxlan::emit(&mut batch.arena[room.clone()], net.spec.vni);
                            for p in net.flood_peers(ingress) {
                                queue(net, tx, q, room.clone(), p, hash);
                            }
                        }
                    }
                }
            }
        }
        if !q.is_empty() {
            let rl_send = &mut self.rl_send;
            q.flush(&self.tx, std::slice::from_ref(&batch.arena), |it, r| match r {
                Ok(()) => net.stats.peer_tx(shard, usize::from(it.tag), it.len as usize),
                Err(e) => {
                    net.stats.count_drop(shard, DropReason::SendFailed);
                    if let Some(muted) = rl_send.allow(now) {
                        tracing::warn!(network = net.name(), peer = %it.dst, error = %e, muted, "send to peer failed");
                    }
                }
            });
        }
        if let Some(g) = gre.as_mut() {
            g.flush(net, std::slice::from_ref(&batch.arena), shard, &mut self.rl_send, now);
        }
        batch.items.clear();
    }
}

impl VmReader {
    fn run(self) {
        let mut dec = StreamDecoder::new(READ_BUF);
        let mut batch = Batch::new();
        let mut sw = Switcher::new(self.io.clone(), self.tx.clone(), self.port).with_gre(self.gre.clone());
        let end = 'conn: loop {
            match sys::wait_readable(self.conn.fd(), &self.stop) {
                Ok(Wake::Stop) => break 'conn End::Stopped,
                Ok(Wake::Ready) => {}
                Err(e) => break 'conn End::Error(e),
            }
            let now = clock::now();
            loop {
                match self.conn.read(&mut dec) {
                    Ok(0) => {
                        sw.switch(&mut batch, now);
                        break 'conn End::Closed;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        sw.switch(&mut batch, now);
                        break 'conn End::Error(e);
                    }
                }
                loop {
                    match dec.next_frame() {
                        Ok(Some(frame)) => {
                            if !batch.fits(frame.len()) {
                                sw.switch(&mut batch, now);
                            }
                            batch.push(frame);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            sw.switch(&mut batch, now);
                            self.io.net.load().stats.count_drop(Shard::LOCAL, DropReason::BadFraming);
                            break 'conn End::Framing(e);
                        }
                    }
                }
            }
            sw.switch(&mut batch, now);
        };
        let flushed = remove_port(&self.io, self.port);
        let current = self.io.net.load();
        let (net, slot, pid) = (current.name(), self.port.slot(), self.conn.pid);
        match end {
            End::Closed => tracing::info!(network = net, port = slot, vm_pid = pid, flushed_macs = flushed, "vm disconnected"),
            End::Stopped => tracing::debug!(network = net, port = slot, vm_pid = pid, "vm port closed on shutdown"),
            End::Error(e) => tracing::warn!(network = net, port = slot, vm_pid = pid, flushed_macs = flushed, error = %e, "vm connection failed; disconnected"),
            End::Framing(e) => tracing::warn!(network = net, port = slot, vm_pid = pid, flushed_macs = flushed, error = %e, "vm sent bad framing; disconnected"),
        }
    }
}

#[inline]
fn queue(net: &Network, tx: &TxSockets, q: &mut SendQueue, room: std::ops::Range<usize>, peer: PeerIdx, hash: usize) {
    if let Some(p) = net.peers.get(usize::from(peer.0)) {
        q.push(tx.slot(hash, p.liveness.takes_gso()), TxItem { buf: 0, start: room.start as u32, len: room.len() as u32, dst: p.addr, tos: 0, ttl: 0, tag: peer.0 });
    }
}
