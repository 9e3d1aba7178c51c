//! The GRE underlay: one raw `IPPROTO_GRE` socket per daemon (IPv4 or IPv6, the family of
//! `node.underlay`), with batched receive (`recvmmsg`) and send (`sendmmsg`).
//!
//! The kernel builds the outer IP header; we hand it the GRE header plus the inner frame.
//! - DF: `IP_MTU_DISCOVER = IP_PMTUDISC_DO` (IPv6: `IPV6_MTU_DISCOVER`), so an outer packet
//!   is never fragmented: one that does not fit the path fails with `EMSGSIZE` and is counted.
//! - TTL / hop limit and TOS / traffic class are set per packet with control messages
//!   (`IP_TTL`+`IP_TOS`, `IPV6_HOPLIMIT`+`IPV6_TCLASS`), so networks with different settings
//!   and per-frame inherited DSCP share one socket.
//! - Receive: an IPv4 raw socket delivers the whole datagram, IP header included (the
//!   caller strips it, see [`crate::core::wire::ip::Ipv4Packet`]); an IPv6 raw socket delivers
//!   only the payload, the source comes from `msg_name`.
//!
//! Owning a raw GRE socket also stops the kernel's "protocol unreachable" ICMP replies to GRE
//! packets (the kernel has no GRE module here).
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Messages per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;
const RCVBUF: usize = 4 << 20;
const SNDBUF: usize = 4 << 20;
const IPPROTO_GRE: i32 = 47;

/// The raw GRE socket of the daemon.
#[derive(Debug)]
pub struct GreSocket {
    sock: Socket,
    pub local: IpAddr,
}

fn setsockopt_int(fd: RawFd, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let r = unsafe { libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), mem::size_of::<i32>() as u32) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl GreSocket {
    /// Open a raw GRE socket bound to `local` (receives only GRE addressed to it, sends from it).
    pub fn open(local: IpAddr) -> io::Result<GreSocket> {
        let addr = SocketAddr::new(local, 0);
        let sock = Socket::new(Domain::for_address(addr), Type::RAW.cloexec(), Some(Protocol::from(IPPROTO_GRE))).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EPERM) { " (needs CAP_NET_RAW)" } else { "" };
            io::Error::new(e.kind(), format!("raw GRE socket: {e}{hint}"))
        })?;
        let fd = sock.as_raw_fd();
        // (no IPV6_V6ONLY: a raw socket has a protocol number bound and the kernel refuses it;
        // a raw IPv6 socket never sees IPv4 anyway)
        let df = if local.is_ipv6() {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
        } else {
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
        };
        df.map_err(|e| io::Error::new(e.kind(), format!("raw GRE socket: path MTU discovery (DF): {e}")))?;
        for (opt, size) in [(libc::SO_RCVBUFFORCE, RCVBUF), (libc::SO_SNDBUFFORCE, SNDBUF)] {
            if setsockopt_int(fd, libc::SOL_SOCKET, opt, size as i32).is_err() {
                let r = if opt == libc::SO_RCVBUFFORCE { sock.set_recv_buffer_size(size) } else { sock.set_send_buffer_size(size) };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "GRE socket buffer size not raised");
                }
            }
        }
        sock.bind(&addr.into()).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) { " (node.underlay is not an address of this host)" } else { "" };
            io::Error::new(e.kind(), format!("bind raw GRE socket to {local}: {e}{hint}"))
        })?;
        sock.set_nonblocking(true).map_err(|e| io::Error::new(e.kind(), format!("raw GRE socket: non-blocking: {e}")))?;
        Ok(GreSocket { sock, local })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub fn is_ipv6(&self) -> bool {
        self.local.is_ipv6()
    }
}

/// Write the outer TTL / hop limit and TOS / traffic class control messages into `ctrl`;
/// returns the length of control data to send.
fn ttl_tos_cmsgs(ctrl: &mut [u64; CMSG_SPACE / 8], v6: bool, ttl: u8, tos: u8) -> usize {
    let (level, ttl_opt, tos_opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT, libc::IPV6_TCLASS)
    } else {
        (libc::IPPROTO_IP, libc::IP_TTL, libc::IP_TOS)
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let one = unsafe { libc::CMSG_SPACE(mem::size_of::<i32>() as u32) } as usize;
    debug_assert!(2 * one <= CMSG_SPACE);
    // SAFETY: msghdr is a plain C struct; zero is valid. It only frames `ctrl` for the CMSG
    // macros below.
    let mut m: libc::msghdr = unsafe { mem::zeroed() };
    m.msg_control = ctrl.as_mut_ptr().cast();
    m.msg_controllen = (2 * one) as _;
    // SAFETY: msg_control points at CMSG_SPACE bytes (u64-aligned) owned by `ctrl`, and
    // msg_controllen covers exactly two int cmsgs inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = level;
        (*c).cmsg_type = ttl_opt;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), i32::from(ttl));
        let c = libc::CMSG_NXTHDR(&m, c);
        (*c).cmsg_level = level;
        (*c).cmsg_type = tos_opt;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), i32::from(tos));
    }
    2 * one
}

impl GreSocket {
    /// Send one GRE packet per `per_msg` consecutive iovecs of `iovs` to `dst`, all with the
    /// same outer TTL and TOS, with `sendmmsg` (the segments of one super-frame: headers and
    /// payload apart). Returns how many were sent and the error that stopped the rest, if any.
    pub fn send_each(&self, dst: IpAddr, ttl: u8, tos: u8, iovs: &mut [libc::iovec], per_msg: usize, hdrs: &mut Vec<libc::mmsghdr>) -> (usize, Option<io::Error>) {
        if dst.is_ipv6() != self.is_ipv6() {
            return (0, Some(io::Error::other("peer address family differs from the GRE socket's")));
        }
        let mut ctrl = [0u64; CMSG_SPACE / 8];
        let len = ttl_tos_cmsgs(&mut ctrl, self.is_ipv6(), ttl, tos);
        // port 0: an IPv6 raw socket refuses a non-zero port other than its protocol
        let name = SockAddr::from(SocketAddr::new(dst, 0));
        super::sys::sendmmsg_each(self.fd(), &name, &ctrl[..len / 8], iovs, per_msg, BATCH, hdrs)
    }
}

/// One GRE packet queued for sending: a byte range of one of the caller's buffers.
#[derive(Debug, Clone, Copy)]
pub struct GreTxItem {
    pub buf: u16,
    pub start: u32,
    pub len: u32,
    pub dst: IpAddr,
    /// Outer TTL / hop limit.
    pub ttl: u8,
    /// Outer TOS / traffic class byte (DSCP << 2).
    pub tos: u8,
    /// Caller's tag, handed back with the result (e.g. the peer index).
    pub tag: u16,
}

/// Room for two `int` control messages per packet.
const CMSG_SPACE: usize = 2 * 24;

/// Packets collected during one batch, flushed with `sendmmsg`.
pub struct GreSendQueue {
    items: Vec<GreTxItem>,
    names: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; CMSG_SPACE / 8]>,
}

impl Default for GreSendQueue {
    fn default() -> Self {
        GreSendQueue {
            items: Vec::with_capacity(BATCH),
            names: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            cmsgs: vec![[0; CMSG_SPACE / 8]; BATCH],
        }
    }
}

impl GreSendQueue {
    #[inline]
    pub fn push(&mut self, item: GreTxItem) {
        self.items.push(item);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Send everything queued; `done(item, result)` is called once per item.
    pub fn flush<B: AsRef<[u8]>>(&mut self, sock: &GreSocket, bufs: &[B], mut done: impl FnMut(&GreTxItem, io::Result<()>)) {
        let items = mem::take(&mut self.items);
        let mut rest: &[GreTxItem] = &items;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(BATCH)];
            let sent = self.send_chunk(sock, chunk, bufs, &mut done);
            rest = &rest[sent..];
        }
        self.items = items;
        self.items.clear();
    }

    /// Send `chunk` with one `sendmmsg`; returns how many items were dealt with, at least one.
    fn send_chunk<B: AsRef<[u8]>>(
        &mut self,
        sock: &GreSocket,
        chunk: &[GreTxItem],
        bufs: &[B],
        done: &mut impl FnMut(&GreTxItem, io::Result<()>),
    ) -> usize {
        self.names.clear();
        self.iovs.clear();
        self.hdrs.clear();
        let v6 = sock.is_ipv6();
        for it in chunk {
            let range = it.start as usize..(it.start as usize + it.len as usize);
            let Some(bytes) = bufs.get(usize::from(it.buf)).and_then(|b| b.as_ref().get(range)) else {
                done(it, Err(io::Error::other("send item outside its buffer")));
                return 1;
            };
            if it.dst.is_ipv6() != v6 {
                done(it, Err(io::Error::other("peer address family differs from the GRE socket's")));
                return 1;
            }
            // port 0: an IPv6 raw socket refuses a non-zero port other than its protocol
            self.names.push(SockAddr::from(SocketAddr::new(it.dst, 0)));
            self.iovs.push(libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() });
        }
        for (i, it) in chunk.iter().enumerate() {
            let ctrl = &mut self.cmsgs[i];
            let ctrl_len = ttl_tos_cmsgs(ctrl, v6, it.ttl, it.tos);
            // SAFETY: mmsghdr is a plain C struct; zero is valid and we fill what matters.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = self.names[i].as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.names[i].len();
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = ctrl_len as _;
            self.hdrs.push(h);
        }
        // SAFETY: hdrs[..] point into names, iovs, cmsgs and the caller's buffers, all alive.
        unsafe { super::sys::sendmmsg_chunk(sock.fd(), &mut self.hdrs, chunk, done) }
    }
}

/// For tests: the GRE packets with key `key` that reach `sock` (IPv4) within about a second,
/// until `want` came, each whole (outer IPv4 header included), in order of arrival.
#[cfg(test)]
pub(crate) fn recv_keyed_v4(sock: &GreSocket, key: u32, want: usize) -> Vec<Vec<u8>> {
    use crate::core::wire::gre::GreHeader;
    use crate::core::wire::ip::Ipv4Packet;
    let mut rb = crate::io::udp::RecvBatch::new(2048);
    let mut got = Vec::new();
    for _ in 0..100 {
        let n = rb.recv(sock.fd()).unwrap_or(0);
        for i in 0..n {
            let Some((_, data, _)) = rb.get(i) else { continue };
            let Ok(ip) = Ipv4Packet::new_checked(data) else { continue };
            if GreHeader::new_checked(ip.payload()).ok().and_then(|g| g.key()) == Some(key) {
                got.push(data.to_vec());
            }
        }
        if got.len() >= want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::gre::{GreHeader, GreRepr};
    use crate::io::udp::RecvBatch;
    use crate::core::wire::ip::Ipv4Packet;

    /// A key unlikely to be used by anyone else sending GRE on this host's loopback right now.
    fn marker() -> u32 {
        let t = (crate::io::clock::unix_now().fract() * 1e9) as u32;
        std::process::id().rotate_left(16) ^ t
    }

    #[test]
    fn ipv6_gre_round_trips_over_loopback_with_hop_limit_and_traffic_class() {
        let lo: IpAddr = std::net::Ipv6Addr::LOCALHOST.into();
        let sock = GreSocket::open(lo).expect("raw GRE socket on ::1 (run the tests as root)");
        let repr = GreRepr { key: Some(marker()), checksum: false };
        let mut buf = vec![0u8; repr.header_len() + 20];
        repr.emit(&mut buf);
        let mut q = GreSendQueue::default();
        q.push(GreTxItem { buf: 0, start: 0, len: buf.len() as u32, dst: lo, ttl: 9, tos: 10 << 2, tag: 0 });
        q.flush(&sock, &[&buf], |_, r| r.unwrap());
        let mut rb = RecvBatch::new(2048);
        for _ in 0..100 {
            let n = rb.recv(sock.fd()).unwrap();
            for i in 0..n {
                // IPv6 raw sockets deliver the payload only, the sender in msg_name
                let (from, data, _) = rb.get(i).unwrap();
                if data == &buf[..] {
                    assert_eq!(from.ip(), lo);
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no GRE packet came back over ::1");
    }

    /// The segments of one super-frame: several packets of two pieces each (headers apart
    /// from payload) in one call, every one with the TTL and TOS asked for.
    #[test]
    fn send_each_sends_gathered_packets_with_ttl_and_tos() {
        let lo: IpAddr = [127, 0, 0, 1].into();
        let sock = GreSocket::open(lo).expect("raw GRE socket on 127.0.0.1 (run the tests as root)");
        let key = marker();
        let repr = GreRepr { key: Some(key), checksum: true };
        let payloads: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; 30 + usize::from(i)]).collect();
        let mut heads: Vec<Vec<u8>> = (0..3u8).map(|i| {
            let mut h = vec![0u8; repr.header_len() + 14];
            h[repr.header_len()..].fill(0xe0 | i);
            h
        }).collect();
        for (h, p) in heads.iter_mut().zip(&payloads) {
            repr.emit_gathered(h, p);
        }
        let mut iovs: Vec<libc::iovec> = Vec::new();
        for (h, p) in heads.iter().zip(&payloads) {
            iovs.push(libc::iovec { iov_base: h.as_ptr() as *mut libc::c_void, iov_len: h.len() });
            iovs.push(libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() });
        }
        let mut hdrs = Vec::new();
        let (sent, err) = sock.send_each(lo, 7, 10 << 2, &mut iovs, 2, &mut hdrs);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(sent, 3);
        let mut got = Vec::new();
        for data in recv_keyed_v4(&sock, key, 3) {
            let ip = Ipv4Packet::new_checked(&data[..]).unwrap();
            let g = GreHeader::new_checked(ip.payload()).unwrap();
            assert_eq!((data[8], data[1]), (7, 10 << 2), "TTL, TOS");
            assert!(g.checksum_ok(), "checksum over the gathered pieces");
            got.push(ip.payload().to_vec());
        }
        let want: Vec<Vec<u8>> = heads.iter().zip(&payloads).map(|(h, p)| [&h[..], &p[..]].concat()).collect();
        assert_eq!(got, want, "the three packets, in order, each header then payload");
        // a peer of the other family is refused without sending
        let (sent, err) = sock.send_each(std::net::Ipv6Addr::LOCALHOST.into(), 7, 0, &mut iovs, 2, &mut hdrs);
        assert_eq!(sent, 0);
        assert!(err.is_some());
    }

    /// Send GRE to ourselves over loopback and read it back (needs CAP_NET_RAW; the CI and the
    /// labs run as root). Checks the per-packet TTL and TOS made it into the outer header.
    #[test]
    fn gre_round_trips_over_loopback_with_ttl_and_tos() {
        let lo: IpAddr = [127, 0, 0, 1].into();
        let sock = GreSocket::open(lo).expect("raw GRE socket on 127.0.0.1 (run the tests as root)");
        let key = marker();
        let repr = GreRepr { key: Some(key), checksum: true };
        let mut buf = vec![0u8; repr.header_len() + 20];
        buf[repr.header_len()..].copy_from_slice(&[7u8; 20]);
        repr.emit(&mut buf);
        let mut q = GreSendQueue::default();
        q.push(GreTxItem { buf: 0, start: 0, len: buf.len() as u32, dst: lo, ttl: 9, tos: 46 << 2, tag: 3 });
        let mut ok = 0;
        q.flush(&sock, &[&buf], |it, r| {
            r.unwrap();
            assert_eq!(it.tag, 3);
            ok += 1;
        });
        assert_eq!(ok, 1);
        let mut rb = RecvBatch::new(2048);
        let mut got = None;
        'outer: for _ in 0..100 {
            let n = rb.recv(sock.fd()).unwrap();
            for i in 0..n {
                // the socket sees every GRE packet to 127.0.0.1: pick ours by its key
                let (from, data, trunc) = rb.get(i).unwrap();
                let ours = Ipv4Packet::new_checked(data).ok().and_then(|ip| GreHeader::new_checked(ip.payload()).ok()?.key()) == Some(key);
                if ours {
                    got = Some((from, data.to_vec(), trunc));
                    break 'outer;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (from, data, trunc) = got.expect("no GRE packet came back over loopback");
        assert_eq!(from.ip(), lo);
        assert!(!trunc);
        let ip = Ipv4Packet::new_checked(&data[..]).unwrap();
        assert_eq!(ip.protocol(), 47);
        assert_eq!(data[8], 9, "TTL");
        assert_eq!(data[1], 46 << 2, "TOS");
        assert_eq!(data[6] & 0x40, 0x40, "DF");
        let g = GreHeader::new_checked(ip.payload()).unwrap();
        assert!(g.checksum_ok());
        assert_eq!(g.payload(), &[7u8; 20]);
    }
}
