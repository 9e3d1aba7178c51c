//! The GRE side of the data path: [`GreTx`], what a switcher of a GRE network uses to send:
//! the header it writes in front of each frame (key, checksum), the outer TTL and DSCP, and
//! the daemon's raw GRE socket its send queue is flushed on (one `sendmmsg` per batch). The
//! segments of a TSO super-frame go out with one `sendmmsg` each (see the switch's
//! segmenter). Receiving is the underlay thread's, the same loop as VXLAN's
//! ([`super::datapath::UnderlayThread`]), classifying with
//! [`Fabric::classify_gre`](crate::core::Fabric::classify_gre).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::core::wire::gre::GreRepr;
use crate::core::Dscp;
use crate::io::gre::GreSocket;
use crate::io::{Sent, Transmit, TransmitSocket, TxItem, TxScratch};

/// How one GRE network sends: fixed per network, shared by its port threads.
#[derive(Debug, Clone)]
pub struct GreParams {
    pub sock: Arc<GreSocket>,
    pub repr: GreRepr,
    pub ttl: u8,
    pub dscp: Dscp,
}

/// The sending side of a GRE network, for one switcher.
pub struct GreTx {
    params: GreParams,
}

impl GreTx {
    pub fn new(params: GreParams) -> Self {
        GreTx { params }
    }

    pub fn header_len(&self) -> usize {
        self.params.repr.header_len()
    }

    /// The raw socket the frames go out on.
    pub fn socket(&self) -> &GreSocket {
        &self.params.sock
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

    /// Send `t` (the segments of one super-frame) on the GRE socket with the network's outer
    /// TTL: one packet per segment, with one `sendmmsg`.
    pub fn send(&self, t: Transmit<'_>, scratch: &mut TxScratch) -> Sent {
        self.params.sock.send(&t.tos_ttl(t.tos, self.params.ttl), scratch)
    }

    /// The queue item for the frame at `arena[at..at + len]`, encapsulated by
    /// [`GreTx::encap`], to `dst`.
    #[inline]
    pub fn item(&self, at: usize, len: usize, dst: IpAddr, tos: u8, tag: u16) -> TxItem {
        let h = self.header_len();
        TxItem { buf: 0, start: (at - h) as u32, len: (len + h) as u32, dst: SocketAddr::new(dst, 0), ttl: self.params.ttl, tos, tag }
    }
}
