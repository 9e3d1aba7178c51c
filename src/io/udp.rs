//! UDP sockets for the VXLAN underlay, with batched receive (`recvmmsg`) and send
//! (`sendmmsg`).
//!
//! Receiving: one socket per (underlay address, VXLAN port), drained in batches.
//!
//! With offloads, the receiving socket has `UDP_GRO` on: one message may hold many datagrams
//! of equal size (the last may be shorter) back to back, the size given by a control message
//! ([`RecvBatch::with_gro`], [`RecvBatch::stride`]). Sending a TSO super-frame's segments
//! uses UDP GSO: one `sendmsg` with a `UDP_SEGMENT` control message, the kernel cutting the
//! gathered bytes into datagrams ([`TxSockets::send_gso`]). If the kernel refuses GSO (EIO
//! when the egress device cannot checksum, e.g. after `ethtool -K dev tx off`), it is turned
//! off for good and the caller sends the segments as separate messages
//! ([`TxSockets::send_each`]).
//!
//! Sending: RFC 7348 §5 asks for an outer UDP source port derived from the inner flow, so
//! that underlay routers spread flows over equal-cost paths. A UDP socket has one source port,
//! so we keep a small set of send sockets, each bound to its own ephemeral port, and pick one
//! by flow hash. Nothing is ever sent to those ports (peers send to the VXLAN port), and a
//! drop-all socket filter keeps stray packets from queueing on them.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `SOL_UDP` socket options (linux/udp.h); not in every libc target.
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
const UDP_NO_CHECK6_RX: libc::c_int = 102;
/// Most datagrams one GSO send may carry (`UDP_MAX_SEGMENTS`).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most UDP payload one GSO send may carry (IPv4 total length 65535 - 20 - 8).
pub const GSO_MAX_BYTES: usize = 65_507;
/// Control-message space per received message (one `UDP_GRO` int, with room to spare).
const CMSG_SPACE: usize = 64;

/// Number of send sockets, i.e. distinct outer source ports per daemon.
pub const SOURCE_PORTS: usize = 16;
/// Messages per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;
/// Receive buffer we ask for; bursts from several peers must not overflow it.
const RCVBUF: usize = 4 << 20;
const SNDBUF: usize = 4 << 20;

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// Set a socket buffer size, beyond `net.core.*mem_max` if we are privileged.
fn set_buf(s: &Socket, size: usize, rcv: bool) {
    let fd = s.as_raw_fd();
    let v = size as libc::c_int;
    let opt = if rcv { libc::SO_RCVBUFFORCE } else { libc::SO_SNDBUFFORCE };
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&v as *const libc::c_int).cast(), mem::size_of::<libc::c_int>() as u32) };
    if r != 0 {
        let _ = if rcv { s.set_recv_buffer_size(size) } else { s.set_send_buffer_size(size) }
            .map_err(|e| tracing::debug!(error = %e, "socket buffer size not raised"));
    }
}

/// The receiving socket of one VXLAN port.
#[derive(Debug)]
pub struct RxSocket {
    sock: Socket,
    pub local: SocketAddr,
}

impl RxSocket {
    pub fn bind(local: SocketAddr) -> io::Result<RxSocket> {
        let sock = new_socket(local)?;
        set_buf(&sock, RCVBUF, true);
        if local.is_ipv6() {
            // VXLAN over IPv6 with a zero UDP checksum (RFC 6935/6936): what overlayd's eBPF fast
            // path sends a super-frame with (its keepalives say this socket takes it)
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a pointer to a live c_int and its size.
            let r = unsafe {
                libc::setsockopt(sock.as_raw_fd(), SOL_UDP, UDP_NO_CHECK6_RX, (&one as *const libc::c_int).cast(), mem::size_of::<libc::c_int>() as u32)
            };
            if r != 0 {
                return Err(io::Error::other(format!("udp {local}: UDP_NO_CHECK6_RX: {}", io::Error::last_os_error())));
            }
        }
        sock.bind(&local.into()).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EADDRINUSE) => " (another process, e.g. a kernel vxlan device, uses this port)",
                Some(libc::EADDRNOTAVAIL) => " (node.underlay is not an address of this host)",
                _ => "",
            };
            io::Error::new(e.kind(), format!("bind udp {local}: {e}{hint}"))
        })?;
        sock.set_nonblocking(true)?;
        Ok(RxSocket { sock, local })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Ask the kernel to hand us coalesced datagrams (`UDP_GRO`); false if it cannot.
    pub fn enable_gro(&self) -> bool {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        let r = unsafe {
            libc::setsockopt(self.fd(), SOL_UDP, UDP_GRO, (&one as *const libc::c_int).cast(), mem::size_of::<libc::c_int>() as u32)
        };
        r == 0
    }
}

/// Buffers for one `recvmmsg` batch, allocated once per thread. Serves the UDP sockets and the
/// raw GRE socket alike (a raw socket's sender comes with port 0).
pub struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    count: usize,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Control buffers (u64 for alignment), one per message, when GRO is on.
    ctrl: Vec<[u64; CMSG_SPACE / 8]>,
    n: usize,
}

impl RecvBatch {
    /// `slot` bytes per datagram (the largest underlay packet we accept).
    pub fn new(slot: usize) -> Self {
        Self::build(slot, BATCH, false)
    }

    /// `count` messages of `slot` bytes each (64 KiB: a whole GRO message) on a socket with
    /// [`RxSocket::enable_gro`]: each message may hold several datagrams, see [`RecvBatch::stride`].
    pub fn with_gro(slot: usize, count: usize) -> Self {
        Self::build(slot, count, true)
    }

    fn build(slot: usize, count: usize, gro: bool) -> Self {
        // SAFETY (for the zeroed values below): sockaddr_storage, iovec and mmsghdr are plain
        // C structs for which all-zero is a valid value.
        RecvBatch {
            buf: vec![0; count * slot],
            slot,
            count,
            names: vec![unsafe { mem::zeroed() }; count],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; count],
            hdrs: vec![unsafe { mem::zeroed() }; count],
            ctrl: if gro { vec![[0u64; CMSG_SPACE / 8]; count] } else { Vec::new() },
            n: 0,
        }
    }

    /// Messages per call.
    pub fn capacity(&self) -> usize {
        self.count
    }

    /// Receive up to [`RecvBatch::capacity`] messages without blocking; 0 when nothing is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..self.count {
            self.iovs[i] = libc::iovec { iov_base: self.buf[i * self.slot..].as_mut_ptr().cast(), iov_len: self.slot };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            match self.ctrl.get_mut(i) {
                Some(c) => {
                    h.msg_hdr.msg_control = c.as_mut_ptr().cast();
                    h.msg_hdr.msg_controllen = CMSG_SPACE as _;
                }
                None => {
                    h.msg_hdr.msg_control = std::ptr::null_mut();
                    h.msg_hdr.msg_controllen = 0;
                }
            }
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: hdrs, iovs, names, ctrl and buf live for the call and point at each other as
        // set up above; `count` entries are valid.
        let r = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), self.count as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            self.n = 0;
            let e = io::Error::last_os_error();
            return if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) { Ok(0) } else { Err(e) };
        }
        self.n = r as usize;
        Ok(self.n)
    }

    /// Datagram `i` of the last batch: sender, payload, and whether it was truncated.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8], bool)> {
        if i >= self.n {
            return None;
        }
        let h = &self.hdrs[i];
        let from = sockaddr_to_std(&self.names[i])?;
        let len = (h.msg_len as usize).min(self.slot);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        Some((from, &self.buf[i * self.slot..i * self.slot + len], truncated))
    }

    /// The size of the datagrams packed into message `i` (each but the last), if the kernel
    /// coalesced several (the `UDP_GRO` control message); `None` for a single datagram.
    pub fn stride(&self, i: usize) -> Option<usize> {
        let h = self.hdrs.get(..self.n)?.get(i)?;
        if h.msg_hdr.msg_control.is_null() {
            return None;
        }
        // SAFETY: the kernel wrote msg_controllen bytes of control messages into our buffer;
        // CMSG_FIRSTHDR/CMSG_NXTHDR stay within it and CMSG_DATA points inside each message.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    return usize::try_from(v).ok().filter(|&v| v > 0);
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        None
    }
}

/// The send sockets: one per outer source port, in two sets.
///
/// *Slots* number them: `0..count` are the ordinary sockets (the kernel puts a UDP checksum
/// on every datagram and accepts UDP GSO), used for peers known to take GSO (overlayd peers,
/// and peers whose own kernel sends offloaded packets on the link); over an IPv4
/// underlay, `count..2 * count` are sockets with `SO_NO_CHECK` (UDP checksum zero, as RFC 7348
/// §5 recommends and the kernel's vxlan device does by default), used for every other peer.
///
/// Why two sets: on a link that keeps checksum offload (a veth with its defaults), the kernel
/// leaves the UDP checksum of what we send partial and hands the packet over as it is. The
/// kernel on the other side trusts it, and so does overlayd; a userspace datapath reading the
/// link with a packet socket (Open vSwitch's netdev datapath) sees an unfinished checksum and
/// drops the packet, and a GSO super-datagram reaches it whole, larger than any frame. A zero
/// checksum is never checked, and the zero-checksum sockets cannot do GSO (the kernel refuses
/// it), so such peers get one datagram per segment: what every receiver takes.
#[derive(Debug)]
pub struct TxSockets {
    socks: Vec<Socket>,
    /// IPv4 only: the zero-checksum sockets (empty over IPv6, which requires the checksum).
    plain: Vec<Socket>,
    /// UDP GSO works on this path; cleared for good the first time the kernel refuses it.
    gso: AtomicBool,
}

/// Why [`TxSockets::send_gso`] did not send.
#[derive(Debug)]
pub enum GsoError {
    /// The kernel cannot do GSO here (now turned off): send the segments one by one.
    Unavailable(io::Error),
    /// An ordinary send error (counted by the caller as a failed send).
    Io(io::Error),
}

impl TxSockets {
    pub fn bind(local: std::net::IpAddr, count: usize) -> io::Result<TxSockets> {
        let open = |no_check: bool| -> io::Result<Socket> {
            let s = new_socket(SocketAddr::new(local, 0))?;
            set_buf(&s, SNDBUF, false);
            if no_check {
                let one: libc::c_int = 1;
                // SAFETY: setsockopt with a pointer to a live c_int and its size.
                let r = unsafe {
                    libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, (&one as *const libc::c_int).cast(), mem::size_of::<libc::c_int>() as u32)
                };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            s.bind(&SocketAddr::new(local, 0).into())
                .map_err(|e| io::Error::new(e.kind(), format!("bind udp {local}:0 for sending: {e}")))?;
            // accept nothing: this socket only sends
            s.attach_filter(&[socket2::SockFilter::new(0x06, 0, 0, 0)])?;
            Ok(s)
        };
        let socks = (0..count).map(|_| open(false)).collect::<io::Result<Vec<_>>>()?;
        let plain = if local.is_ipv4() { (0..count).map(|_| open(true)).collect::<io::Result<Vec<_>>>()? } else { Vec::new() };
        Ok(TxSockets { socks, plain, gso: AtomicBool::new(true) })
    }

    /// Number of slots (see [`TxSockets`]); a [`SendQueue`] needs one queue per slot.
    pub fn slots(&self) -> usize {
        self.socks.len() + self.plain.len()
    }

    /// The slot for a datagram of flow `hash` to a peer: an ordinary socket if the peer is
    /// known to take GSO (or the underlay is IPv6), a zero-checksum one otherwise.
    #[inline]
    pub fn slot(&self, hash: usize, takes_gso: bool) -> usize {
        if takes_gso || self.plain.is_empty() {
            hash % self.socks.len().max(1)
        } else {
            self.socks.len() + hash % self.plain.len()
        }
    }

    fn by_slot(&self, slot: usize) -> &Socket {
        let n = self.socks.len();
        if slot >= n && !self.plain.is_empty() { &self.plain[(slot - n) % self.plain.len()] } else { &self.socks[slot % n] }
    }

    /// Whether GSO sends are still worth trying.
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Relaxed)
    }

    /// Turn GSO off (configuration says so, or the kernel refused it).
    pub fn disable_gso(&self) {
        self.gso.store(false, Relaxed);
    }

    /// Send the bytes gathered from `iovs` to `dst` from the ordinary socket of flow `hash`
    /// as datagrams of `segment` bytes (the last may be shorter) in one call. The caller keeps
    /// to the limits: at most [`GSO_MAX_SEGMENTS`] datagrams and [`GSO_MAX_BYTES`] bytes.
    pub fn send_gso(&self, hash: usize, dst: SocketAddr, iovs: &[libc::iovec], segment: u16) -> Result<(), GsoError> {
        let s = &self.socks[hash % self.socks.len()];
        let name = SockAddr::from(dst);
        let mut ctrl = [0u64; CMSG_SPACE / 8];
        // SAFETY: msghdr is a plain C struct; zero is valid and we fill what matters.
        let mut m: libc::msghdr = unsafe { mem::zeroed() };
        m.msg_name = name.as_ptr() as *mut libc::c_void;
        m.msg_namelen = name.len();
        m.msg_iov = iovs.as_ptr() as *mut libc::iovec;
        m.msg_iovlen = iovs.len() as _;
        m.msg_control = ctrl.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        m.msg_controllen = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as _;
        // SAFETY: the control buffer is CMSG_SPACE bytes (more than msg_controllen), so the first
        // header and its 2 data bytes are inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
        }
        loop {
            // SAFETY: m points at name, ctrl and the caller's iovecs, all alive for the call.
            let r = unsafe { libc::sendmsg(s.as_raw_fd(), &m, 0) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP) => {
                    self.disable_gso();
                    return Err(GsoError::Unavailable(e));
                }
                _ => return Err(GsoError::Io(e)),
            }
        }
    }

    /// Send one datagram per `per_msg` consecutive iovecs of `iovs` to `dst` from send socket
    /// `slot` ([`TxSockets::slot`]), with `sendmmsg` (for peers that get no GSO, and when GSO
    /// is off). Returns how many datagrams were sent and the error that stopped the rest, if any.
    pub fn send_each(
        &self,
        slot: usize,
        dst: SocketAddr,
        iovs: &mut [libc::iovec],
        per_msg: usize,
        hdrs: &mut Vec<libc::mmsghdr>,
    ) -> (usize, Option<io::Error>) {
        let s = self.by_slot(slot);
        let name = SockAddr::from(dst);
        let total = iovs.len() / per_msg.max(1);
        let mut sent = 0;
        while sent < total {
            hdrs.clear();
            for k in sent..total.min(sent + BATCH) {
                // SAFETY: mmsghdr is a plain C struct; zero is valid and we fill what matters.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                h.msg_hdr.msg_name = name.as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = name.len();
                h.msg_hdr.msg_iov = iovs[k * per_msg..].as_mut_ptr();
                h.msg_hdr.msg_iovlen = per_msg as _;
                hdrs.push(h);
            }
            // SAFETY: hdrs point into name and the caller's iovecs, alive for the call.
            let r = unsafe { libc::sendmmsg(s.as_raw_fd(), hdrs.as_mut_ptr(), hdrs.len() as u32, 0) };
            if r <= 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return (sent, Some(e));
            }
            sent += r as usize;
        }
        (sent, None)
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Send one datagram from send socket `sock` (modulo the count): control traffic such as
    /// keepalives, not the data path.
    pub fn send_one(&self, sock: usize, data: &[u8], dst: SocketAddr) -> io::Result<()> {
        let s = self.socks.get(sock % self.socks.len().max(1)).ok_or_else(|| io::Error::other("no send socket"))?;
        s.send_to(data, &dst.into()).map(|_| ())
    }

    /// The source ports in use, for logs.
    pub fn ports(&self) -> Vec<u16> {
        self.socks.iter().filter_map(|s| s.local_addr().ok()?.as_socket()).map(|a| a.port()).collect()
    }
}

/// One datagram queued for sending: a byte range of one of the caller's buffers.
#[derive(Debug, Clone, Copy)]
pub struct TxItem {
    pub buf: u16,
    pub start: u32,
    pub len: u32,
    pub dst: SocketAddr,
    /// Caller's tag, handed back with the result (e.g. the peer index).
    pub tag: u16,
}

/// Datagrams collected per send socket during one batch, flushed with `sendmmsg`.
pub struct SendQueue {
    per_sock: Vec<Vec<TxItem>>,
    names: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendQueue {
    /// One queue per slot: `SendQueue::new(tx.slots())`.
    pub fn new(sockets: usize) -> Self {
        SendQueue {
            per_sock: (0..sockets).map(|_| Vec::with_capacity(BATCH)).collect(),
            names: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        }
    }

    /// Queue `item` on send socket slot `sock` ([`TxSockets::slot`]; taken modulo the count).
    #[inline]
    pub fn push(&mut self, sock: usize, item: TxItem) {
        let n = self.per_sock.len();
        self.per_sock[sock % n].push(item);
    }

    pub fn is_empty(&self) -> bool {
        self.per_sock.iter().all(Vec::is_empty)
    }

    /// Send everything queued; `done(item, result)` is called once per item.
    pub fn flush<B: AsRef<[u8]>>(
        &mut self,
        socks: &TxSockets,
        bufs: &[B],
        mut done: impl FnMut(&TxItem, io::Result<()>),
    ) {
        for (si, items) in self.per_sock.iter_mut().enumerate() {
            if si >= socks.slots() {
                items.drain(..).for_each(|it| done(&it, Err(io::Error::other("no such send socket"))));
                continue;
            }
            let sock = socks.by_slot(si);
            let mut rest: &[TxItem] = items;
            while !rest.is_empty() {
                let chunk = &rest[..rest.len().min(BATCH)];
                let sent = send_chunk(sock.as_raw_fd(), chunk, bufs, &mut self.names, &mut self.iovs, &mut self.hdrs, &mut done);
                rest = &rest[sent..];
            }
            items.clear();
        }
    }
}

/// Send `chunk` with one `sendmmsg`; returns how many items were dealt with (sent, or failed
/// and reported), at least one.
fn send_chunk<B: AsRef<[u8]>>(
    fd: RawFd,
    chunk: &[TxItem],
    bufs: &[B],
    names: &mut Vec<SockAddr>,
    iovs: &mut Vec<libc::iovec>,
    hdrs: &mut Vec<libc::mmsghdr>,
    done: &mut impl FnMut(&TxItem, io::Result<()>),
) -> usize {
    names.clear();
    iovs.clear();
    hdrs.clear();
    for it in chunk {
        let range = it.start as usize..(it.start as usize + it.len as usize);
        let Some(bytes) = bufs.get(usize::from(it.buf)).and_then(|b| b.as_ref().get(range)) else {
            // a caller bug, not a wire problem: report it and skip the item
            done(it, Err(io::Error::other("send item outside its buffer")));
            return 1;
        };
        names.push(SockAddr::from(it.dst));
        iovs.push(libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() });
    }
    for i in 0..chunk.len() {
        // SAFETY: mmsghdr is a plain C struct; zero is valid and we fill what matters.
        let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
        h.msg_hdr.msg_name = names[i].as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = names[i].len();
        h.msg_hdr.msg_iov = &mut iovs[i];
        h.msg_hdr.msg_iovlen = 1;
        hdrs.push(h);
    }
    // SAFETY: hdrs[..] point into names, iovs and the caller's buffers, all alive now.
    unsafe { super::sys::sendmmsg_chunk(fd, hdrs, chunk, done) }
}

/// The address the kernel wrote into a `sockaddr_storage`, if it is IPv4 or IPv6.
fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: family AF_INET means the storage holds a sockaddr_in (storage is larger).
            let sin = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((u32::from_be(sin.sin_addr.s_addr).to_be_bytes(), u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: family AF_INET6 means the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((sin6.sin6_addr.s6_addr, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}
