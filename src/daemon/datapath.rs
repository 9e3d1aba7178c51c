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
//! Nothing here allocates per frame, takes a lock, or logs per frame: errors are counted and
//! logged at most once a second per thread with the number suppressed.

use std::io;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::core::fabric::Fabric;
use crate::core::stats::{GlobalDrops, Shard};
use crate::core::wire::ethernet::EthernetFrame;
use crate::core::wire::vxlan;
use crate::core::{Action, DropReason, Instant, LocalPort, Network, PeerIdx, Port, Vni};
use super::gre::{GreParams, GreTx};
use crate::io::clock;
use crate::io::sys::{self, StopFd, Wake};
use crate::io::tap::{MAX_FRAME, Tap};
use crate::io::udp::{BATCH, RecvBatch, RxSocket, SendQueue, TxItem, TxSockets};

use super::forward::{Forwarder, LocalIo, Ports};

/// Room in front of a frame read from a port for the tunnel header.
pub const HEADROOM: usize = 64;

/// What the I/O side attaches to each network: its local ports.
#[derive(Debug)]
pub struct NetIo {
    /// The TAP devices opened by the daemon, in config order (also in `ports`).
    pub taps: Vec<Arc<Tap>>,
    /// Every live local port (TAPs and VM connections); replaced whole on a connect or a
    /// disconnect, read lock-free by the data path.
    pub ports: ArcSwap<Ports>,
    /// Serialises changes of `ports` (connects, disconnects); never taken by the data path.
    pub port_changes: Mutex<()>,
}

impl NetIo {
    /// The configured ports (TAPs, attached interfaces) in config order: slots 0...
    pub fn new(fixed: Vec<LocalIo>) -> NetIo {
        let taps = fixed.iter().filter_map(|p| if let LocalIo::Tap(t) = p { Some(t.clone()) } else { None }).collect();
        NetIo { taps, ports: ArcSwap::from_pointee(Ports::new(fixed)), port_changes: Mutex::new(()) }
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
    pub net: Arc<Network>,
    pub io: Arc<NetIo>,
    pub port: LocalPort,
    pub tx: Arc<TxSockets>,
    pub stop: Arc<StopFd>,
    /// `Some` for a GRE network: frames go out on the raw GRE socket instead of UDP.
    pub gre: Option<GreParams>,
}

impl PortThread {
    pub fn run(self) {
        let PortThread { net, io, port, tx, stop, gre } = self;
        let mut gre = gre.map(GreTx::new);
        let Some(LocalIo::Tap(tap)) = io.ports.load().get(port).cloned() else { return };
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; HEADROOM + MAX_FRAME]).collect();
        let mut lens = [0usize; BATCH];
        let mut q = SendQueue::new(tx.len());
        let (mut rl_read, mut rl_send) = (RateLimit::default(), RateLimit::default());
        let mut fwd = Forwarder::default();
        let shard = Shard::per_thread();
        let ingress = Port::Local(port);
        loop {
            match sys::wait_readable(tap.fd(), &stop) {
                Ok(Wake::Stop) => break,
                Ok(Wake::Ready) => {}
                Err(e) => {
                    tracing::error!(network = net.name(), tap = tap.name(), error = %e, "tap poll failed; port stopped");
                    break;
                }
            }
            let now = clock::now();
            let mut n = 0;
            while n < BATCH {
                match tap.read(&mut bufs[n][HEADROOM..]) {
                    Ok(len) => {
                        lens[n] = len;
                        n += 1;
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
            let ports = Forwarder::ports(&io);
            for i in 0..n {
                let len = lens[i];
                let frame = &bufs[i][HEADROOM..HEADROOM + len];
                net.stats.tap_rx(shard, len);
                let action = net.from_local(port, frame, now);
                let hash = match action {
                    Action::Peer(_) | Action::Flood => EthernetFrame::new_unchecked(frame).flow_hash() as usize,
                    _ => 0,
                };
                match action {
                    Action::Drop(r) => net.stats.count_drop(shard, r),
                    Action::Consumed => {}
                    Action::Local(p) => fwd.deliver(&net, &ports, p, frame, shard, now),
                    Action::Peer(p) => {
                        let tos = encap(&mut bufs[i], len, net.spec.vni, gre.as_ref());
                        queue(&net, &mut q, gre.as_mut(), i, len, p, hash, tos);
                    }
                    Action::Flood => {
                        net.stats.flooded(shard);
                        let tos = encap(&mut bufs[i], len, net.spec.vni, gre.as_ref());
                        fwd.flood(&net, &ports, Some(port), &bufs[i][HEADROOM..HEADROOM + len], shard, now);
                        for p in net.flood_peers(ingress) {
                            queue(&net, &mut q, gre.as_mut(), i, len, p, hash, tos);
                        }
                    }
                }
            }
            if !q.is_empty() {
                q.flush(&tx, &bufs, |it, r| match r {
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
                g.flush(&net, &bufs, shard, &mut rl_send, now);
            }
        }
        tracing::debug!(network = net.name(), tap = tap.name(), "port thread stopped");
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
fn queue(net: &Network, q: &mut SendQueue, gre: Option<&mut GreTx>, buf: usize, len: usize, peer: PeerIdx, hash: usize, tos: u8) {
    if let Some(p) = net.peers.get(usize::from(peer.0)) {
        if let Some(g) = gre {
            g.push(buf, len, p.addr.ip(), tos, peer.0);
            return;
        }
        q.push(
            hash,
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

/// Everything an underlay thread needs.
pub struct UnderlayThread {
    pub rx: RxSocket,
    pub fabric: SharedFabric,
    pub global: Arc<GlobalDrops>,
    pub stop: Arc<StopFd>,
    /// Largest datagram accepted (underlay MTU).
    pub slot: usize,
}

impl UnderlayThread {
    pub fn run(self) {
        let UnderlayThread { rx, fabric, global, stop, slot } = self;
        let port = rx.local.port();
        let mut batch = RecvBatch::new(slot);
        let mut rl_recv = RateLimit::default();
        let mut fwd = Forwarder::default();
        let shard = Shard::per_thread();
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
                for i in 0..n {
                    let Some((from, data, truncated)) = batch.get(i) else { continue };
                    if truncated {
                        global.count_drop(DropReason::MtuExceeded);
                        continue;
                    }
                    let c = match f.classify_vxlan(port, from.ip(), data) {
                        Ok(c) => c,
                        Err(refused) => {
                            match refused.network.and_then(|i| f.networks.get(i)) {
                                Some(e) => e.net.stats.count_drop(shard, refused.reason),
                                None => global.count_drop(refused.reason),
                            }
                            continue;
                        }
                    };
                    let net = &c.entry.net;
                    let action = net.from_peer(c.peer, c.inner, now);
                    // keepalives are control traffic: not in the tunnel counters
                    if action != Action::Consumed {
                        net.stats.peer_rx(shard, usize::from(c.peer.0), data.len());
                    }
                    match action {
                        Action::Drop(r) => net.stats.count_drop(shard, r),
                        Action::Consumed => {}
                        Action::Local(p) => fwd.deliver(net, &Forwarder::ports(&c.entry.io), p, c.inner, shard, now),
                        Action::Flood => {
                            net.stats.flooded(shard);
                            fwd.flood(net, &Forwarder::ports(&c.entry.io), None, c.inner, shard, now);
                        }
                        // from_peer never sends into a tunnel (split horizon)
                        Action::Peer(_) => net.stats.count_drop(shard, DropReason::SplitHorizon),
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
        tracing::debug!(socket = %rx.local, "underlay thread stopped");
    }
}
