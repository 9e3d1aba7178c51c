//! One shape for everything the data path sends on the underlay: a [`Transmit`], one tunnel
//! packet or one run of equal-size segments to one destination, and the [`TransmitSocket`]s
//! that send it (the VXLAN send sockets, [`super::udp::TxSockets`], and the raw GRE socket,
//! [`super::gre::GreSocket`]).
//!
//! How a run leaves is the socket's business, not its caller's:
//! - the UDP sockets try UDP GSO (one `sendmsg`, the kernel cuts the gathered bytes into
//!   datagrams) when the receiver takes offloaded packets and the kernel has not refused GSO
//!   before; the first refusal turns GSO off for good, with one warning;
//! - otherwise, and always on the raw GRE socket (which has no GSO), the run is cut into one
//!   datagram per segment, sent with one `sendmmsg` per [`BATCH`] datagrams.
//!
//! Both ways put the same bytes on the wire: datagrams of `segment_size` bytes cut from the
//! gathered data, the last one possibly shorter.
//!
//! Frames switched one by one go through a [`SendQueue`]: byte ranges of the caller's
//! buffers, collected per send socket during a batch and flushed with `sendmmsg`, the caller
//! hearing of each one's fate (per-peer counters, drops).
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Messages per `sendmmsg` call.
pub const BATCH: usize = 64;

/// One tunnel packet, or a run of equal-size segments, to send to `dst`.
///
/// The bytes are gathered from `data` in order (e.g. each segment's headers and its payload
/// apart, so the payload is copied by the kernel only). With a `segment_size`, they are cut
/// into datagrams of that many bytes (the last may be shorter), each sent as its own packet;
/// without, they are one packet.
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    /// Where to (a raw GRE socket ignores the port).
    pub dst: SocketAddr,
    /// The bytes, gathered.
    pub data: &'a [IoSlice<'a>],
    /// Bytes per datagram: `None` (or 0) for one packet of all the data.
    pub segment_size: Option<u16>,
    /// The outer TOS / traffic class byte; 0 leaves the socket's (0).
    pub tos: u8,
    /// The outer TTL / hop limit; 0 leaves the socket's default.
    pub ttl: u8,
    /// The flow hash: picks the send socket (the outer UDP source port) of a socket set.
    pub flow: usize,
    /// The receiver takes offloaded packets (UDP GSO, partial checksums): a UDP peer known to
    /// run overlayd, or whose kernel sends offloaded packets on the link. Others get one
    /// datagram per segment from the zero-checksum sockets (see [`super::udp::TxSockets`]).
    pub offload: bool,
}

impl<'a> Transmit<'a> {
    /// One packet of `data` to `dst`, with the socket's TOS and TTL.
    pub fn new(dst: SocketAddr, data: &'a [IoSlice<'a>]) -> Self {
        Transmit { dst, data, segment_size: None, tos: 0, ttl: 0, flow: 0, offload: false }
    }

    /// Cut the data into datagrams of `size` bytes (the last may be shorter).
    pub fn segments(self, size: u16) -> Self {
        Transmit { segment_size: Some(size), ..self }
    }

    /// Outer TOS / traffic class and TTL / hop limit (0: the socket's).
    pub fn tos_ttl(self, tos: u8, ttl: u8) -> Self {
        Transmit { tos, ttl, ..self }
    }

    /// The flow hash and whether the receiver takes offloaded packets.
    pub fn flow(self, flow: usize, offload: bool) -> Self {
        Transmit { flow, offload, ..self }
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.data.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per datagram: the segment size, or everything for one packet.
    fn stride(&self, len: usize) -> usize {
        self.segment_size.filter(|&s| s > 0).map_or(len, usize::from).max(1)
    }

    /// How many datagrams this is.
    pub fn datagrams(&self) -> usize {
        let len = self.len();
        len.div_ceil(self.stride(len)).max(1)
    }
}

/// What became of one [`Transmit`].
#[derive(Debug, Default)]
pub struct Sent {
    /// Datagrams that left (the first ones of the run, in order).
    pub datagrams: usize,
    /// Their bytes.
    pub bytes: usize,
    /// What stopped the rest, if anything did.
    pub error: Option<io::Error>,
}

/// A socket (or set of sockets) that sends [`Transmit`]s and flushes [`SendQueue`]s.
pub trait TransmitSocket {
    /// Send `t`, as the socket can best: see the module documentation. `scratch` is the
    /// caller's, reused from call to call.
    fn send(&self, t: &Transmit<'_>, scratch: &mut TxScratch) -> Sent;

    /// Number of send sockets (*slots*); a [`SendQueue`] for this socket has as many queues.
    fn slots(&self) -> usize;

    /// The slot of a datagram of flow `flow` to a receiver that takes offloaded packets or not.
    fn slot(&self, flow: usize, offload: bool) -> usize;

    /// The descriptor of slot `slot` (taken modulo the count).
    fn slot_fd(&self, slot: usize) -> RawFd;

    /// The socket address to send to `dst` at, or why this socket cannot.
    fn address(&self, dst: SocketAddr) -> io::Result<SockAddr>;
}

impl<S: TransmitSocket + ?Sized> TransmitSocket for std::sync::Arc<S> {
    fn send(&self, t: &Transmit<'_>, scratch: &mut TxScratch) -> Sent {
        (**self).send(t, scratch)
    }
    fn slots(&self) -> usize {
        (**self).slots()
    }
    fn slot(&self, flow: usize, offload: bool) -> usize {
        (**self).slot(flow, offload)
    }
    fn slot_fd(&self, slot: usize) -> RawFd {
        (**self).slot_fd(slot)
    }
    fn address(&self, dst: SocketAddr) -> io::Result<SockAddr> {
        (**self).address(dst)
    }
}

/// Scratch space for sending a [`Transmit`] one datagram per segment: the cut iovecs and the
/// message headers. Owned by the caller, allocated once (it grows to the largest run seen).
#[derive(Debug, Default)]
pub struct TxScratch {
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl TxScratch {
    pub fn new() -> Self {
        TxScratch { iovs: Vec::with_capacity(2 * BATCH), hdrs: Vec::with_capacity(BATCH) }
    }

    /// The iovecs covering bytes `from..from + len` of `data`, in this scratch space.
    pub(crate) fn iovs_for(&mut self, data: &[IoSlice<'_>], from: usize, len: usize) -> &[libc::iovec] {
        self.iovs.clear();
        cut(data, from, len, &mut self.iovs);
        &self.iovs
    }
}

/// Control messages for one send: `UDP_SEGMENT`, outer TOS and TTL (u64 for alignment;
/// room for three messages of up to 8 data bytes, 24 bytes each on 64-bit Linux).
#[derive(Clone, Copy)]
pub(crate) struct Ctrl {
    buf: [u64; 12],
    len: usize,
}

impl Ctrl {
    pub(crate) const EMPTY: Ctrl = Ctrl { buf: [0; 12], len: 0 };

    /// The TOS and TTL control messages of a packet to `dst` (none for zeros).
    pub(crate) fn tos_ttl(dst: SocketAddr, tos: u8, ttl: u8) -> Ctrl {
        let mut c = Ctrl::EMPTY;
        c.push_tos_ttl(dst, tos, ttl);
        c
    }

    pub(crate) fn push_tos_ttl(&mut self, dst: SocketAddr, tos: u8, ttl: u8) {
        let (level, tos_opt, ttl_opt) = if dst.is_ipv6() {
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, libc::IPV6_HOPLIMIT)
        } else {
            (libc::IPPROTO_IP, libc::IP_TOS, libc::IP_TTL)
        };
        if tos != 0 {
            self.push(level, tos_opt, &i32::from(tos).to_ne_bytes());
        }
        if ttl != 0 {
            self.push(level, ttl_opt, &i32::from(ttl).to_ne_bytes());
        }
    }

    /// Append one control message with `data`.
    pub(crate) fn push(&mut self, level: i32, kind: i32, data: &[u8]) {
        // SAFETY: CMSG_SPACE and CMSG_LEN are pure size computations.
        let (space, clen) = unsafe { (libc::CMSG_SPACE(data.len() as u32) as usize, libc::CMSG_LEN(data.len() as u32) as usize) };
        assert!(self.len + space <= mem::size_of_val(&self.buf), "control messages overflow");
        // SAFETY: the header goes at a multiple of 8 bytes (CMSG_SPACE keeps alignment) inside
        // our u64 buffer, its data right after it (CMSG_DATA), all within `space` bytes that
        // the assert above keeps inside the buffer.
        unsafe {
            let c = self.buf.as_mut_ptr().cast::<u8>().add(self.len).cast::<libc::cmsghdr>();
            std::ptr::write_bytes(c.cast::<u8>(), 0, space);
            (*c).cmsg_level = level;
            (*c).cmsg_type = kind;
            (*c).cmsg_len = clen as _;
            std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
        }
        self.len += space;
    }

    /// Point `m` at these control messages (none: no control data).
    pub(crate) fn attach(&self, m: &mut libc::msghdr) {
        if self.len == 0 {
            m.msg_control = std::ptr::null_mut();
            m.msg_controllen = 0;
        } else {
            // the kernel only reads a send's control data
            m.msg_control = self.buf.as_ptr() as *mut libc::c_void;
            m.msg_controllen = self.len as _;
        }
    }
}

/// Append to `out` the iovecs covering bytes `from..from + len` of `data` (pieces cut where
/// the range starts and ends inside one).
fn cut(data: &[IoSlice<'_>], from: usize, len: usize, out: &mut Vec<libc::iovec>) {
    let (mut skip, mut want) = (from, len);
    for s in data {
        if want == 0 {
            break;
        }
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        let take = (s.len() - skip).min(want);
        out.push(libc::iovec { iov_base: s[skip..].as_ptr() as *mut libc::c_void, iov_len: take });
        skip = 0;
        want -= take;
    }
}

/// The iovecs of `data` as the kernel takes them.
pub(crate) fn as_iovecs<'a>(data: &'a [IoSlice<'a>]) -> &'a [libc::iovec] {
    // SAFETY: on Unix, `IoSlice` is ABI-compatible with `iovec` (std documents it), and the
    // slices live as long as the borrow.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<libc::iovec>(), data.len()) }
}

/// Send the datagrams of `t` from byte `from` on, one per segment, to `name` on `fd` with the
/// control messages `ctrl`, with one `sendmmsg` per [`BATCH`] datagrams. Adds what left to
/// `out`; stops at the first error.
pub(crate) fn send_each(fd: RawFd, name: &SockAddr, ctrl: &Ctrl, t: &Transmit<'_>, from: usize, scratch: &mut TxScratch, out: &mut Sent) {
    let len = t.len();
    let stride = t.stride(len);
    let mut pos = from;
    // one datagram even when there is nothing to send (an empty packet is a packet)
    let mut first = from == 0;
    while pos < len || first {
        first = false;
        scratch.iovs.clear();
        scratch.hdrs.clear();
        // per message: its bytes and its iovecs
        let (mut lens, mut pieces) = ([0usize; BATCH], [0usize; BATCH]);
        let mut end = pos;
        while scratch.hdrs.len() < BATCH && (end < len || scratch.hdrs.is_empty()) {
            let n = stride.min(len - end);
            let before = scratch.iovs.len();
            cut(t.data, end, n, &mut scratch.iovs);
            // SAFETY: mmsghdr is a plain C struct; zero is valid and we fill what matters.
            let h: libc::mmsghdr = unsafe { mem::zeroed() };
            lens[scratch.hdrs.len()] = n;
            pieces[scratch.hdrs.len()] = scratch.iovs.len() - before;
            scratch.hdrs.push(h);
            end += n;
        }
        // the iovecs are all in place now: point each header at its own
        let mut at = 0;
        for (h, &k) in scratch.hdrs.iter_mut().zip(&pieces) {
            h.msg_hdr.msg_name = name.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = name.len();
            h.msg_hdr.msg_iov = scratch.iovs[at..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = k as _;
            at += k;
            ctrl.attach(&mut h.msg_hdr);
        }
        let mut done = 0;
        while done < scratch.hdrs.len() {
            let rest = &mut scratch.hdrs[done..];
            // SAFETY: the headers point into `name`, `ctrl`, scratch.iovs and the caller's
            // data, all alive for the call.
            let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
            if r <= 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                out.error = Some(e);
                return;
            }
            let r = r as usize;
            out.datagrams += r;
            out.bytes += lens[done..done + r].iter().sum::<usize>();
            done += r;
        }
        pos = end;
    }
}

/// One datagram queued for sending: a byte range of one of the caller's buffers.
#[derive(Debug, Clone, Copy)]
pub struct TxItem {
    pub buf: u16,
    pub start: u32,
    pub len: u32,
    /// Where to (a raw GRE socket ignores the port).
    pub dst: SocketAddr,
    /// Outer TOS / traffic class and TTL / hop limit, as in [`Transmit`] (0: the socket's).
    pub tos: u8,
    pub ttl: u8,
    /// Caller's tag, handed back with the result (e.g. the peer index).
    pub tag: u16,
}

/// Datagrams collected per send socket (slot) during one batch, flushed with `sendmmsg`.
pub struct SendQueue {
    per_slot: Vec<Vec<TxItem>>,
    names: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<Ctrl>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendQueue {
    /// One queue per slot: `SendQueue::new(sock.slots())`.
    pub fn new(slots: usize) -> Self {
        SendQueue {
            per_slot: (0..slots.max(1)).map(|_| Vec::with_capacity(BATCH)).collect(),
            names: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            ctrl: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        }
    }

    /// Queue `item` on slot `slot` ([`TransmitSocket::slot`]; taken modulo the count).
    #[inline]
    pub fn push(&mut self, slot: usize, item: TxItem) {
        let n = self.per_slot.len();
        self.per_slot[slot % n].push(item);
    }

    pub fn is_empty(&self) -> bool {
        self.per_slot.iter().all(Vec::is_empty)
    }

    /// Send everything queued on `sock`, the bytes from `bufs`; `done(item, result)` is called
    /// once per item.
    pub fn flush<S: TransmitSocket + ?Sized, B: AsRef<[u8]>>(&mut self, sock: &S, bufs: &[B], mut done: impl FnMut(&TxItem, io::Result<()>)) {
        let SendQueue { per_slot, names, iovs, ctrl, hdrs } = self;
        for (si, items) in per_slot.iter_mut().enumerate() {
            if items.is_empty() {
                continue;
            }
            if si >= sock.slots() {
                items.drain(..).for_each(|it| done(&it, Err(io::Error::other("no such send socket"))));
                continue;
            }
            let fd = sock.slot_fd(si);
            let mut rest: &[TxItem] = items;
            while !rest.is_empty() {
                let chunk = &rest[..rest.len().min(BATCH)];
                let sent = send_chunk(sock, fd, chunk, bufs, names, iovs, ctrl, hdrs, &mut done);
                rest = &rest[sent..];
            }
            items.clear();
        }
    }
}

/// Send `chunk` with one `sendmmsg`; returns how many items were dealt with (sent, or failed
/// and reported), at least one.
#[allow(clippy::too_many_arguments)]
fn send_chunk<S: TransmitSocket + ?Sized, B: AsRef<[u8]>>(
    sock: &S,
    fd: RawFd,
    chunk: &[TxItem],
    bufs: &[B],
    names: &mut Vec<SockAddr>,
    iovs: &mut Vec<libc::iovec>,
    ctrl: &mut Vec<Ctrl>,
    hdrs: &mut Vec<libc::mmsghdr>,
    done: &mut impl FnMut(&TxItem, io::Result<()>),
) -> usize {
    names.clear();
    iovs.clear();
    ctrl.clear();
    hdrs.clear();
    for (i, it) in chunk.iter().enumerate() {
        let range = it.start as usize..(it.start as usize + it.len as usize);
        let Some(bytes) = bufs.get(usize::from(it.buf)).and_then(|b| b.as_ref().get(range)) else {
            // a caller bug, not a wire problem: report it and skip the item
            if i == 0 {
                done(it, Err(io::Error::other("send item outside its buffer")));
                return 1;
            }
            // send what came before it first
            return send_prepared(fd, &chunk[..i], names, iovs, ctrl, hdrs, done);
        };
        let name = match sock.address(it.dst) {
            Ok(n) => n,
            Err(e) if i == 0 => {
                done(it, Err(e));
                return 1;
            }
            Err(_) => return send_prepared(fd, &chunk[..i], names, iovs, ctrl, hdrs, done),
        };
        names.push(name);
        iovs.push(libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() });
        ctrl.push(Ctrl::tos_ttl(it.dst, it.tos, it.ttl));
    }
    send_prepared(fd, chunk, names, iovs, ctrl, hdrs, done)
}

/// The `sendmmsg` of [`send_chunk`], once names, iovecs and control messages of every item of
/// `chunk` are in place.
fn send_prepared(
    fd: RawFd,
    chunk: &[TxItem],
    names: &[SockAddr],
    iovs: &mut [libc::iovec],
    ctrl: &[Ctrl],
    hdrs: &mut Vec<libc::mmsghdr>,
    done: &mut impl FnMut(&TxItem, io::Result<()>),
) -> usize {
    for i in 0..chunk.len() {
        // SAFETY: mmsghdr is a plain C struct; zero is valid and we fill what matters.
        let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
        h.msg_hdr.msg_name = names[i].as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = names[i].len();
        h.msg_hdr.msg_iov = &mut iovs[i];
        h.msg_hdr.msg_iovlen = 1;
        ctrl[i].attach(&mut h.msg_hdr);
        hdrs.push(h);
    }
    // SAFETY: hdrs[..] point into names, iovs, ctrl and the caller's buffers, all alive now.
    unsafe { super::sys::sendmmsg_chunk(fd, hdrs, chunk, done) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(iovs: &[libc::iovec]) -> Vec<Vec<u8>> {
        // SAFETY: the iovecs point into the test's live vectors.
        iovs.iter().map(|v| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }.to_vec()).collect()
    }

    #[test]
    fn cut_takes_the_range_across_pieces() {
        let (a, b, c) = ([1u8, 2, 3], [4u8, 5], [6u8, 7, 8, 9]);
        let data = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let mut out = Vec::new();
        cut(&data, 2, 5, &mut out);
        assert_eq!(bytes(&out), vec![vec![3], vec![4, 5], vec![6, 7]]);
        out.clear();
        cut(&data, 3, 2, &mut out);
        assert_eq!(bytes(&out), vec![vec![4, 5]]);
        out.clear();
        cut(&data, 7, 10, &mut out);
        assert_eq!(bytes(&out), vec![vec![8, 9]]);
    }

    #[test]
    fn a_run_counts_its_datagrams_the_last_one_short() {
        let d = [7u8; 2500];
        let data = [IoSlice::new(&d)];
        let dst: SocketAddr = "192.0.2.1:4789".parse().unwrap();
        assert_eq!(Transmit::new(dst, &data).datagrams(), 1);
        assert_eq!(Transmit::new(dst, &data).segments(1000).datagrams(), 3);
        assert_eq!(Transmit::new(dst, &data).segments(500).datagrams(), 5);
        assert_eq!(Transmit::new(dst, &data).segments(0).datagrams(), 1, "0: no segments");
        assert_eq!(Transmit::new(dst, &[]).datagrams(), 1);
    }
}
