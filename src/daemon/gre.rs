//! The GRE side of the data path.
//!
//! - [`GreTx`]: what a port thread of a GRE network uses to send: the header it writes in
//!   front of each frame (key, checksum), the outer TTL and DSCP, and a send queue flushed
//!   with one `sendmmsg` per batch on the daemon's raw GRE socket.
//! - [`GreUnderlayThread`]: receives GRE on the raw socket in batches, strips the outer IPv4
//!   header (IPv6 raw sockets deliver none), classifies each packet with
//!   [`Fabric::classify_gre`](crate::core::Fabric::classify_gre) and delivers the inner frame
//!   to the local ports, like the VXLAN underlay thread.

use std::net::IpAddr;
use std::sync::Arc;

use super::datapath::{HEADROOM, RateLimit, SharedFabric};
use super::forward::Forwarder;
use crate::core::stats::{GlobalDrops, Shard};
use crate::core::wire::gre::GreRepr;
use crate::core::wire::ip::Ipv4Packet;
use crate::core::{Action, Dscp, DropReason, Instant, Network};
use crate::io::clock;
use crate::io::gre::{BATCH, GreSendQueue, GreSocket, GreTxItem};
use crate::io::udp::RecvBatch;
use crate::io::sys::{self, StopFd, Wake};

/// How one GRE network sends: fixed per network, shared by its port threads.
#[derive(Debug, Clone)]
pub struct GreParams {
    pub sock: Arc<GreSocket>,
    pub repr: GreRepr,
    pub ttl: u8,
    pub dscp: Dscp,
}

/// The sending half a port thread of a GRE network owns.
pub struct GreTx {
    params: GreParams,
    q: GreSendQueue,
}

impl GreTx {
    pub fn new(params: GreParams) -> Self {
        GreTx { params, q: GreSendQueue::default() }
    }

    pub fn header_len(&self) -> usize {
        self.params.repr.header_len()
    }

    /// Write the GRE header in front of the frame at `buf[HEADROOM..HEADROOM + len]` (the
    /// checksum, if any, covers the frame); returns the outer TOS byte for this frame.
    #[inline]
    pub fn encap(&self, buf: &mut [u8], len: usize) -> u8 {
        self.encap_at(buf, HEADROOM, len)
    }

    /// [`GreTx::encap`] for a frame at `buf[at..at + len]`, with at least 12 bytes before it.
    #[inline]
    pub fn encap_at(&self, buf: &mut [u8], at: usize, len: usize) -> u8 {
        let h = self.header_len();
        let tos = self.params.dscp.for_frame(&buf[at..at + len]) << 2;
        self.params.repr.emit(&mut buf[at - h..at + len]);
        tos
    }

    /// Queue the frame in buffer `buf` (already encapsulated) for `dst`.
    #[inline]
    pub fn push(&mut self, buf: usize, len: usize, dst: IpAddr, tos: u8, tag: u16) {
        self.push_at(buf, HEADROOM, len, dst, tos, tag);
    }

    /// [`GreTx::push`] for a frame encapsulated by [`GreTx::encap_at`] at `at`.
    #[inline]
    pub fn push_at(&mut self, buf: usize, at: usize, len: usize, dst: IpAddr, tos: u8, tag: u16) {
        let h = self.header_len();
        self.q.push(GreTxItem {
            buf: buf as u16,
            start: (at - h) as u32,
            len: (len + h) as u32,
            dst,
            ttl: self.params.ttl,
            tos,
            tag,
        });
    }

    /// Send the batch; per-peer counters and drops are charged to `net`.
    pub fn flush<B: AsRef<[u8]>>(&mut self, net: &Network, bufs: &[B], shard: Shard, rl: &mut RateLimit, now: Instant) {
        if self.q.is_empty() {
            return;
        }
        self.q.flush(&self.params.sock, bufs, |it, r| match r {
            Ok(()) => net.stats.peer_tx(shard, usize::from(it.tag), it.len as usize),
            Err(e) => {
                let too_big = e.raw_os_error() == Some(libc::EMSGSIZE);
                net.stats.count_drop(shard, if too_big { DropReason::MtuExceeded } else { DropReason::SendFailed });
                if let Some(muted) = rl.allow(now) {
                    tracing::warn!(network = net.name(), peer = %it.dst, error = %e, muted, "GRE send to peer failed");
                }
            }
        });
    }
}

/// Everything the GRE underlay thread needs.
pub struct GreUnderlayThread {
    pub sock: Arc<GreSocket>,
    pub fabric: SharedFabric,
    pub global: Arc<GlobalDrops>,
    pub stop: Arc<StopFd>,
    /// Largest packet accepted (underlay MTU plus room).
    pub slot: usize,
}

impl GreUnderlayThread {
    pub fn run(self) {
        let GreUnderlayThread { sock, fabric, global, stop, slot } = self;
        let mut batch = RecvBatch::new(slot);
        let mut rl_recv = RateLimit::default();
        let mut fwd = Forwarder::default();
        let shard = Shard::per_thread();
        let v6 = sock.is_ipv6();
        loop {
            match sys::wait_readable(sock.fd(), &stop) {
                Ok(Wake::Stop) => break,
                Ok(Wake::Ready) => {}
                Err(e) => {
                    tracing::error!(local = %sock.local, error = %e, "GRE poll failed; receiver stopped");
                    break;
                }
            }
            loop {
                let now = clock::now();
                let n = match batch.recv(sock.fd()) {
                    Ok(n) => n,
                    Err(e) => {
                        // (recv already maps WouldBlock to 0)
                        if let Some(muted) = rl_recv.allow(now) {
                            tracing::warn!(local = %sock.local, error = %e, muted, "GRE receive failed");
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
                    let (src, packet) = if v6 {
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
                    let c = match f.classify_gre(src, packet) {
                        Ok(c) => c,
                        Err(refused) => {
                            f.count_refused(refused, shard, &global);
                            continue;
                        }
                    };
                    let net = &c.entry.net;
                    match net.receive_from_peer(c.peer, c.inner, packet.len(), shard, now) {
                        Action::Local(p) => fwd.deliver(net, &Forwarder::ports(&c.entry.io), p, c.inner, shard, now),
                        Action::Flood => {
                            net.stats.flooded(shard);
                            fwd.flood(net, &Forwarder::ports(&c.entry.io), None, c.inner, shard, now);
                        }
                        Action::Peer(_) | Action::Drop(_) | Action::Consumed => {}
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
        tracing::debug!(local = %sock.local, "GRE underlay thread stopped");
    }
}
