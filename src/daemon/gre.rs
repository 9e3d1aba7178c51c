//! The GRE side of the data path: [`GreTx`], what a port thread of a GRE network uses to
//! send: the header it writes in front of each frame (key, checksum), the outer TTL and DSCP,
//! and a send queue flushed with one `sendmmsg` per batch on the daemon's raw GRE socket. The
//! segments of a TSO super-frame go out with one `sendmmsg` each (see the data path's
//! segmenter). Receiving is the underlay thread's, the same loop as VXLAN's
//! ([`super::datapath::UnderlayThread`]), classifying with
//! [`Fabric::classify_gre`](crate::core::Fabric::classify_gre).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::datapath::{HEADROOM, RateLimit};
use crate::core::stats::Shard;
use crate::core::wire::gre::GreRepr;
use crate::core::{Dscp, DropReason, Instant, Network};
use crate::io::gre::GreSocket;
use crate::io::{SendQueue, Sent, Transmit, TransmitSocket, TxItem, TxScratch};

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
    q: SendQueue,
}

impl GreTx {
    pub fn new(params: GreParams) -> Self {
        let q = SendQueue::new(params.sock.slots());
        GreTx { params, q }
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
        let tos = self.tos(&buf[at..at + len]);
        self.params.repr.emit(&mut buf[at - h..at + len]);
        tos
    }

    /// The outer TOS byte for `frame`: its own DSCP if the network inherits it, else the
    /// network's.
    #[inline]
    pub fn tos(&self, frame: &[u8]) -> u8 {
        self.params.dscp.for_frame(frame) << 2
    }

    /// Write the GRE header at the start of `head` for a segment built apart: `head` goes on
    /// with the segment's headers, `payload` is the rest (the checksum, if any, covers both).
    #[inline]
    pub fn emit_segment(&self, head: &mut [u8], payload: &[u8]) {
        self.params.repr.emit_gathered(head, payload);
    }

    /// Send `t` (the segments of one super-frame) on the GRE socket with the network's outer
    /// TTL: one packet per segment, with one `sendmmsg`.
    pub fn send(&self, t: Transmit<'_>, scratch: &mut TxScratch) -> Sent {
        self.params.sock.send(&t.tos_ttl(t.tos, self.params.ttl), scratch)
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
        self.q.push(0, TxItem {
            buf: buf as u16,
            start: (at - h) as u32,
            len: (len + h) as u32,
            dst: SocketAddr::new(dst, 0),
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
                    tracing::warn!(network = net.name(), peer = %it.dst.ip(), error = %e, muted, "GRE send to peer failed");
                }
            }
        });
    }
}
