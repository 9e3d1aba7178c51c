//! The GRE side of the data path: [`GreTx`], what a port thread of a GRE network uses to
//! send: the header it writes in front of each frame (key, checksum), the outer TTL and DSCP,
//! and a send queue flushed with one `sendmmsg` per batch on the daemon's raw GRE socket. The
//! segments of a TSO super-frame go out with one `sendmmsg` each (see the data path's
//! segmenter). Receiving is the underlay thread's, the same loop as VXLAN's
//! ([`super::datapath::UnderlayThread`]), classifying with
//! [`Fabric::classify_gre`](crate::core::Fabric::classify_gre).

use std::net::IpAddr;
use std::sync::Arc;

use super::netio::RateLimit;
use crate::core::stats::Shard;
use crate::core::wire::gre::GreRepr;
use crate::core::{Dscp, DropReason, Instant, Network};
use crate::io::gre::{GreSendQueue, GreSocket, GreTxItem};

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

    /// Write the GRE header in front of the frame at `buf[at..at + len]` (the checksum, if
    /// any, covers the frame; at least 12 bytes of room before it); returns the outer TOS byte
    /// for this frame.
    #[inline]
    pub fn encap(&self, buf: &mut [u8], at: usize, len: usize) -> u8 {
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

    /// Send the segments of one super-frame, `per_msg` iovecs each, to `dst` with one
    /// `sendmmsg` (see [`GreSocket::send_each`]).
    pub fn send_each(&self, dst: IpAddr, tos: u8, iovs: &mut [libc::iovec], per_msg: usize, hdrs: &mut Vec<libc::mmsghdr>) -> (usize, Option<std::io::Error>) {
        self.params.sock.send_each(dst, self.params.ttl, tos, iovs, per_msg, hdrs)
    }

    /// Queue the frame at `arena[at..at + len]`, encapsulated by [`GreTx::encap`], for `dst`.
    #[inline]
    pub fn push(&mut self, at: usize, len: usize, dst: IpAddr, tos: u8, tag: u16) {
        let h = self.header_len();
        self.q.push(GreTxItem {
            buf: 0,
            start: (at - h) as u32,
            len: (len + h) as u32,
            dst,
            ttl: self.params.ttl,
            tos,
            tag,
        });
    }

    /// Send the batch; per-peer counters and drops are charged to `net`.
    pub fn flush(&mut self, net: &Network, arena: &[u8], shard: Shard, rl: &mut RateLimit, now: Instant) {
        if self.q.is_empty() {
            return;
        }
        self.q.flush(&self.params.sock, std::slice::from_ref(&arena), |it, r| match r {
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
