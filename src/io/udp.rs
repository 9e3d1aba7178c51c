//! UDP sockets for the VXLAN underlay, with batched receive (`recvmmsg`) and send
//! (`sendmmsg`).
//!
//! Receiving: one socket per (underlay address, VXLAN port), drained in batches.
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

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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
}

/// Buffers for one `recvmmsg` batch, allocated once per thread.
pub struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n: usize,
}

impl RecvBatch {
    /// `slot` bytes per datagram (the largest underlay packet we accept).
    pub fn new(slot: usize) -> Self {
        // SAFETY (for the zeroed values below): sockaddr_storage, iovec and mmsghdr are plain
        // C structs for which all-zero is a valid value.
        RecvBatch {
            buf: vec![0; BATCH * slot],
            slot,
            names: vec![unsafe { mem::zeroed() }; BATCH],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH],
            hdrs: vec![unsafe { mem::zeroed() }; BATCH],
            n: 0,
        }
    }

    /// Receive up to [`BATCH`] datagrams without blocking; 0 when nothing is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec { iov_base: self.buf[i * self.slot..].as_mut_ptr().cast(), iov_len: self.slot };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: hdrs, iovs, names and buf live for the call and point at each other as set
        // up above; BATCH entries are valid.
        let r = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            self.n = 0;
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
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
}

/// The send sockets: one per outer source port.
#[derive(Debug)]
pub struct TxSockets {
    socks: Vec<Socket>,
}

impl TxSockets {
    pub fn bind(local: std::net::IpAddr, count: usize) -> io::Result<TxSockets> {
        let mut socks = Vec::with_capacity(count);
        for _ in 0..count {
            let s = new_socket(SocketAddr::new(local, 0))?;
            set_buf(&s, SNDBUF, false);
            s.bind(&SocketAddr::new(local, 0).into())
                .map_err(|e| io::Error::new(e.kind(), format!("bind udp {local}:0 for sending: {e}")))?;
            // accept nothing: this socket only sends
            s.attach_filter(&[socket2::SockFilter::new(0x06, 0, 0, 0)])?;
            socks.push(s);
        }
        Ok(TxSockets { socks })
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
    pub fn new(sockets: usize) -> Self {
        SendQueue {
            per_sock: (0..sockets).map(|_| Vec::with_capacity(BATCH)).collect(),
            names: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        }
    }

    /// Queue `item` on send socket `sock` (taken modulo the socket count).
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
            let Some(sock) = socks.socks.get(si) else {
                items.drain(..).for_each(|it| done(&it, Err(io::Error::other("no such send socket"))));
                continue;
            };
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
    loop {
        // SAFETY: hdrs[..] point into names, iovs and the caller's buffers, all alive now.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as u32, 0) };
        if r > 0 {
            let n = r as usize;
            chunk[..n].iter().for_each(|it| done(it, Ok(())));
            return n;
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // the first message failed: report it and go on with the next
        done(&chunk[0], Err(e));
        return 1;
    }
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
