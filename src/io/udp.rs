//! UDP sockets for the VXLAN underlay, with batched receive (`recvmmsg`) and send
//! (`sendmmsg`).
//!
//! Receiving: one socket per (underlay address, VXLAN port), drained in batches.
//!
//! With offloads, the receiving socket has `UDP_GRO` on: one message may hold many datagrams
//! of equal size (the last may be shorter) back to back, the size given by a control message
//! ([`RecvBatch::with_gro`], [`RecvBatch::stride`]). Sending is a [`Transmit`] (see
//! [`super::transmit`]): the segments of a TSO super-frame leave with UDP GSO, one `sendmsg`
//! with a `UDP_SEGMENT` control message, the kernel cutting the gathered bytes into datagrams.
//! If the kernel refuses GSO (EIO before Linux 6.11 when the egress device cannot checksum,
//! e.g. after `ethtool -K dev tx off`; EINVAL on a socket without UDP checksums), it is
//! turned off for good and the segments leave as separate datagrams, batched with `sendmmsg`.
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

use super::transmit::{Ctrl, Sent, Transmit, TransmitSocket, TxScratch, as_iovecs, send_each};

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
pub const BATCH: usize = super::transmit::BATCH;
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

/// Why a GSO send did not send.
#[derive(Debug)]
enum GsoError {
    /// The kernel cannot do GSO here: send the segments one by one.
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

    /// Number of slots (see [`TxSockets`]); a [`super::SendQueue`] needs one queue per slot.
    pub fn slots(&self) -> usize {
        self.socks.len() + self.plain.len()
    }

    /// The slot for a datagram of flow `hash` to a peer: an ordinary socket if the peer takes
    /// offloaded packets (or the underlay is IPv6), a zero-checksum one otherwise.
    #[inline]
    pub fn slot(&self, hash: usize, offload: bool) -> usize {
        if offload || self.plain.is_empty() {
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

    /// Send the bytes gathered from `iovs` to `name` from `fd` as datagrams of `segment` bytes
    /// (the last may be shorter) in one call, with the control messages of `ctrl` besides the
    /// segment size. The caller keeps to the limits: at most [`GSO_MAX_SEGMENTS`] datagrams
    /// and [`GSO_MAX_BYTES`] bytes.
    fn send_gso(fd: RawFd, name: &SockAddr, iovs: &[libc::iovec], segment: u16, ctrl: &Ctrl) -> Result<(), GsoError> {
        let mut ctrl = *ctrl;
        ctrl.push(SOL_UDP, UDP_SEGMENT, &segment.to_ne_bytes());
        // SAFETY: msghdr is a plain C struct; zero is valid and we fill what matters.
        let mut m: libc::msghdr = unsafe { mem::zeroed() };
        m.msg_name = name.as_ptr() as *mut libc::c_void;
        m.msg_namelen = name.len();
        m.msg_iov = iovs.as_ptr() as *mut libc::iovec;
        m.msg_iovlen = iovs.len() as _;
        ctrl.attach(&mut m);
        loop {
            // SAFETY: m points at name, ctrl and the caller's iovecs, all alive for the call.
            let r = unsafe { libc::sendmsg(fd, &m, 0) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP) => return Err(GsoError::Unavailable(e)),
                _ => return Err(GsoError::Io(e)),
            }
        }
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

impl TransmitSocket for TxSockets {
    /// UDP GSO if the receiver takes offloaded packets ([`Transmit::offload`]) and the kernel
    /// has not refused it before, in calls of at most [`GSO_MAX_SEGMENTS`] datagrams and
    /// [`GSO_MAX_BYTES`] bytes; else, and for what is left once the kernel refuses GSO (which
    /// turns it off for good, with one warning), one datagram per segment.
    fn send(&self, t: &Transmit<'_>, scratch: &mut TxScratch) -> Sent {
        let mut out = Sent::default();
        if self.socks.is_empty() {
            out.error = Some(io::Error::other("no send socket"));
            return out;
        }
        let fd = self.slot_fd(self.slot(t.flow, t.offload));
        let name = SockAddr::from(t.dst);
        let ctrl = Ctrl::tos_ttl(t.dst, t.tos, t.ttl);
        let len = t.len();
        let mut pos = 0;
        if let Some(seg) = t.segment_size.filter(|&s| s > 0)
            && t.offload
            && t.datagrams() > 1
            && self.gso_enabled()
        {
            let seg_len = usize::from(seg);
            let per_call = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / seg_len);
            while per_call > 1 && pos < len {
                let n = (per_call * seg_len).min(len - pos);
                let iovs = if pos == 0 && n == len {
                    as_iovecs(t.data)
                } else {
                    scratch.iovs_for(t.data, pos, n)
                };
                match Self::send_gso(fd, &name, iovs, seg, &ctrl) {
                    Ok(()) => {
                        out.datagrams += n.div_ceil(seg_len);
                        out.bytes += n;
                        pos += n;
                    }
                    Err(GsoError::Io(e)) => {
                        out.error = Some(e);
                        return out;
                    }
                    Err(GsoError::Unavailable(e)) => {
                        if self.gso.swap(false, Relaxed) {
                            tracing::warn!(error = %e, "the kernel refused UDP GSO; sending segments one datagram each from now on");
                        }
                        break;
                    }
                }
            }
            if pos >= len {
                return out;
            }
        }
        send_each(fd, &name, &ctrl, t, pos, scratch, &mut out);
        out
    }

    /// `0..count` are the ordinary sockets, `count..2 * count` the zero-checksum ones (IPv4).
    fn slots(&self) -> usize {
        TxSockets::slots(self)
    }

    fn slot(&self, flow: usize, offload: bool) -> usize {
        TxSockets::slot(self, flow, offload)
    }

    fn slot_fd(&self, slot: usize) -> RawFd {
        self.by_slot(slot).as_raw_fd()
    }

    fn address(&self, dst: SocketAddr) -> io::Result<SockAddr> {
        Ok(SockAddr::from(dst))
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

#[cfg(test)]
mod tests {
    //! Over loopback, without privileges: what a [`Transmit`] puts on the wire, with UDP GSO
    //! and without.
    use super::*;
    use std::io::IoSlice;
    use std::net::Ipv4Addr;

    const LO: std::net::IpAddr = std::net::IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn receiver(gro: bool) -> (RxSocket, SocketAddr) {
        receiver_on(LO, gro)
    }

    fn receiver_on(ip: std::net::IpAddr, gro: bool) -> (RxSocket, SocketAddr) {
        let rx = RxSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        if gro {
            assert!(rx.enable_gro(), "UDP_GRO on a loopback socket");
        }
        let at = rx.sock.local_addr().unwrap().as_socket().unwrap();
        (rx, at)
    }

    /// What reaches `rx` within about a second, until `want` datagrams came: each message's
    /// bytes and its GRO stride.
    fn receive(rx: &RxSocket, rb: &mut RecvBatch, want: usize) -> Vec<(Vec<u8>, Option<usize>)> {
        let mut got: Vec<(Vec<u8>, Option<usize>)> = Vec::new();
        let count = |got: &[(Vec<u8>, Option<usize>)]| got.iter().map(|(d, s)| s.map_or(1, |s| d.len().div_ceil(s))).sum::<usize>();
        for _ in 0..100 {
            let n = rb.recv(rx.fd()).unwrap();
            for i in 0..n {
                let (_, data, trunc) = rb.get(i).unwrap();
                assert!(!trunc);
                got.push((data.to_vec(), rb.stride(i)));
            }
            if count(&got) >= want {
                break;
            }
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        got
    }

    /// `segments` segments of `head` header bytes and `mss` payload bytes, the last payload
    /// `last` bytes: the pieces (header, payload, header, ...) and the datagrams they make.
    fn run(segments: usize, head: usize, mss: usize, last: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut pieces = Vec::new();
        for k in 0..segments {
            let p = if k + 1 == segments { last } else { mss };
            pieces.push(vec![0xa0 | (k as u8 & 0xf); head]);
            pieces.push((0..p).map(|i| (i * 7 + k * 13) as u8).collect());
        }
        let want = pieces.chunks(2).map(|c| c.concat()).collect();
        (pieces, want)
    }

    fn slices(pieces: &[Vec<u8>]) -> Vec<IoSlice<'_>> {
        pieces.iter().map(|p| IoSlice::new(p)).collect()
    }

    /// Check `t` left whole: all its datagrams, its bytes, no error.
    fn sent_whole(s: &Sent, t: &Transmit<'_>) {
        assert!(s.error.is_none(), "{:?}", s.error);
        assert_eq!((s.datagrams, s.bytes), (t.datagrams(), t.len()));
    }

    #[test]
    fn a_gso_run_arrives_as_one_datagram_per_segment_the_last_short() {
        let (rx, at) = receiver(false);
        let tx = TxSockets::bind(LO, 2).unwrap();
        let (pieces, want) = run(5, 20, 100, 37);
        let data = slices(&pieces);
        let t = Transmit::new(at, &data).segments(120).flow(1, true);
        let s = tx.send(&t, &mut TxScratch::new());
        sent_whole(&s, &t);
        assert!(tx.gso_enabled(), "the kernel took GSO on loopback");
        let got: Vec<Vec<u8>> = receive(&rx, &mut RecvBatch::new(2048), 5).into_iter().map(|(d, _)| d).collect();
        assert_eq!(got, want);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [120, 120, 120, 120, 57]);
    }

    /// With `UDP_GRO` on the receiving socket, a GSO run reaches it as it left: one message,
    /// its stride the segment size. The same run sent one datagram per segment (a receiver
    /// that does not take offloads) arrives as separate datagrams: proof that the first one
    /// did leave with GSO. Over IPv4 and IPv6, with an outer TOS and TTL asked for.
    #[test]
    fn a_gso_run_reads_back_as_one_gro_message_whose_stride_is_the_segment_size() {
        for ip in [LO, std::net::Ipv6Addr::LOCALHOST.into()] {
            let (rx, at) = receiver_on(ip, true);
            let tx = TxSockets::bind(ip, 1).unwrap();
            let (pieces, want) = run(4, 16, 1000, 300);
            let data = slices(&pieces);
            let mut rb = RecvBatch::with_gro(65_536, 8);
            let mut scratch = TxScratch::new();
            let t = Transmit::new(at, &data).segments(1016).flow(0, true).tos_ttl(46 << 2, 9);
            sent_whole(&tx.send(&t, &mut scratch), &t);
            let got = receive(&rx, &mut rb, 4);
            assert_eq!(got.len(), 1, "one coalesced message ({ip})");
            assert_eq!(got[0].1, Some(1016), "stride ({ip})");
            assert_eq!(got[0].0, want.concat());
            let t = t.flow(0, false);
            sent_whole(&tx.send(&t, &mut scratch), &t);
            let got = receive(&rx, &mut rb, 4);
            assert_eq!(got.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(), want, "{ip}");
            // over IPv6 every socket takes GSO (no zero-checksum set): it still is not used
            // for a receiver that takes no offloads
            assert!(got.iter().all(|(_, s)| s.is_none()), "no stride for single datagrams ({ip}): {got:?}");
        }
    }

    /// Without GSO the same run puts the same datagrams on the wire: for a receiver that
    /// takes no offloads (the zero-checksum sockets), once GSO is turned off, and once the
    /// kernel refuses it (which turns it off).
    #[test]
    fn without_gso_the_same_run_arrives_as_the_same_datagrams() {
        let (rx, at) = receiver(false);
        let mut rb = RecvBatch::new(2048);
        let mut scratch = TxScratch::new();
        let (pieces, want) = run(6, 24, 1400, 1);
        let data = slices(&pieces);
        let t = Transmit::new(at, &data).segments(1424);
        let check = |tx: &TxSockets, t: Transmit<'_>, scratch: &mut TxScratch, rb: &mut RecvBatch| {
            sent_whole(&tx.send(&t, scratch), &t);
            let got: Vec<Vec<u8>> = receive(&rx, rb, 6).into_iter().map(|(d, _)| d).collect();
            assert_eq!(got, want);
        };
        // a receiver that takes no offloads
        let tx = TxSockets::bind(LO, 2).unwrap();
        check(&tx, t.flow(3, false), &mut scratch, &mut rb);
        assert!(tx.gso_enabled(), "not tried, so not refused");
        // GSO turned off
        tx.disable_gso();
        check(&tx, t.flow(3, true), &mut scratch, &mut rb);
        // the kernel refuses GSO on a socket without UDP checksums
        let tx = TxSockets::bind(LO, 2).unwrap();
        for s in &tx.socks {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a pointer to a live c_int and its size.
            let r = unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, (&one as *const libc::c_int).cast(), mem::size_of::<libc::c_int>() as u32) };
            assert_eq!(r, 0);
        }
        assert!(tx.gso_enabled());
        check(&tx, t.flow(3, true), &mut scratch, &mut rb);
        assert!(!tx.gso_enabled(), "refused once, off for good");
        check(&tx, t.flow(4, true), &mut scratch, &mut rb);
    }

    /// Datagram boundaries come from the segment size, not from the pieces: a run gathered
    /// from pieces that do not line up with its segments, and one packet without a segment
    /// size, leave the same way with GSO and without.
    #[test]
    fn segments_are_cut_from_the_gathered_bytes_wherever_the_pieces_end() {
        let (rx, at) = receiver(false);
        let mut rb = RecvBatch::new(4096);
        let mut scratch = TxScratch::new();
        let whole: Vec<u8> = (0..2345u32).map(|i| (i % 251) as u8).collect();
        let (a, rest) = whole.split_at(7);
        let (b, c) = rest.split_at(1500);
        let data = [IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)];
        let want: Vec<Vec<u8>> = whole.chunks(500).map(<[u8]>::to_vec).collect();
        let tx = TxSockets::bind(LO, 1).unwrap();
        for offload in [true, false] {
            let t = Transmit::new(at, &data).segments(500).flow(0, offload);
            sent_whole(&tx.send(&t, &mut scratch), &t);
            let got: Vec<Vec<u8>> = receive(&rx, &mut rb, want.len()).into_iter().map(|(d, _)| d).collect();
            assert_eq!(got, want, "offload {offload}");
            let t = Transmit::new(at, &data).flow(0, offload);
            sent_whole(&tx.send(&t, &mut scratch), &t);
            assert_eq!(receive(&rx, &mut rb, 1), [(whole.clone(), None)], "offload {offload}");
        }
        assert!(tx.gso_enabled());
    }

    /// A run larger than one GSO call may carry (65507 bytes) leaves in several, in order.
    #[test]
    fn a_run_over_the_gso_byte_limit_leaves_in_several_calls_in_order() {
        let (rx, at) = receiver(false);
        let tx = TxSockets::bind(LO, 1).unwrap();
        let (pieces, want) = run(64, 50, 1350, 999);
        let data = slices(&pieces);
        let t = Transmit::new(at, &data).segments(1400).flow(0, true);
        assert!(t.len() > GSO_MAX_BYTES);
        sent_whole(&tx.send(&t, &mut TxScratch::new()), &t);
        assert!(tx.gso_enabled());
        let got: Vec<Vec<u8>> = receive(&rx, &mut RecvBatch::new(2048), 64).into_iter().map(|(d, _)| d).collect();
        assert_eq!(got.len(), 64);
        assert!(got == want, "the 64 datagrams, in order");
    }

    /// The queue of single datagrams: one per item, from the slot asked for, and the caller
    /// hears of each with its tag.
    #[test]
    fn the_send_queue_reports_every_item_with_its_tag() {
        let (rx, at) = receiver(false);
        let tx = TxSockets::bind(LO, 2).unwrap();
        let buf: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut q = crate::io::SendQueue::new(tx.slots());
        for (k, slot) in [(0u16, tx.slot(5, true)), (1, tx.slot(5, false)), (2, tx.slot(6, false))] {
            q.push(slot, crate::io::TxItem { buf: 0, start: u32::from(k) * 100, len: 100, dst: at, tos: 0, ttl: 0, tag: k });
        }
        // outside its buffer: reported, the rest sent
        q.push(0, crate::io::TxItem { buf: 1, start: 0, len: 1, dst: at, tos: 0, ttl: 0, tag: 9 });
        let mut heard = Vec::new();
        q.flush(&tx, &[&buf[..]], |it, r| heard.push((it.tag, r.is_ok())));
        heard.sort();
        assert_eq!(heard, [(0, true), (1, true), (2, true), (9, false)]);
        assert!(q.is_empty());
        let mut got: Vec<Vec<u8>> = receive(&rx, &mut RecvBatch::new(2048), 3).into_iter().map(|(d, _)| d).collect();
        got.sort();
        assert_eq!(got, buf.chunks(100).map(<[u8]>::to_vec).collect::<Vec<_>>());
    }
}
