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

use super::transmit::{Ctrl, Sent, Transmit, TransmitSocket, TxScratch, send_each};

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

impl TransmitSocket for GreSocket {
    /// One GRE packet per segment (a raw socket has no GSO), with one `sendmmsg` per
    /// [`super::transmit::BATCH`] packets, all with the outer TTL and TOS of `t`.
    fn send(&self, t: &Transmit<'_>, scratch: &mut TxScratch) -> Sent {
        let mut out = Sent::default();
        match self.address(t.dst) {
            Ok(name) => send_each(self.fd(), &name, &Ctrl::tos_ttl(t.dst, t.tos, t.ttl), t, 0, scratch, &mut out),
            Err(e) => out.error = Some(e),
        }
        out
    }

    /// One socket.
    fn slots(&self) -> usize {
        1
    }

    fn slot(&self, _flow: usize, _offload: bool) -> usize {
        0
    }

    fn slot_fd(&self, _slot: usize) -> RawFd {
        self.fd()
    }

    /// `dst` without its port: an IPv6 raw socket refuses a non-zero port other than its
    /// protocol.
    fn address(&self, dst: SocketAddr) -> io::Result<SockAddr> {
        if dst.is_ipv6() != self.is_ipv6() {
            return Err(io::Error::other("peer address family differs from the GRE socket's"));
        }
        Ok(SockAddr::from(SocketAddr::new(dst.ip(), 0)))
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
    use crate::core::wire::ip::Ipv4Packet;
    use crate::io::transmit::{SendQueue, TxItem};
    use crate::io::udp::RecvBatch;

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
        let mut q = SendQueue::new(sock.slots());
        q.push(0, TxItem { buf: 0, start: 0, len: buf.len() as u32, dst: SocketAddr::new(lo, 0), ttl: 9, tos: 10 << 2, tag: 0 });
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

    /// The segments of one super-frame as one [`Transmit`]: several packets of two pieces each
    /// (headers apart from payload, the last payload shorter) in one call, every one with the
    /// TTL and TOS asked for.
    #[test]
    fn a_run_of_segments_leaves_as_gathered_packets_with_ttl_and_tos() {
        let lo: IpAddr = [127, 0, 0, 1].into();
        let sock = GreSocket::open(lo).expect("raw GRE socket on 127.0.0.1 (run the tests as root)");
        let key = marker();
        let repr = GreRepr { key: Some(key), checksum: true };
        let payloads: Vec<Vec<u8>> = [32usize, 32, 20].iter().zip(1u8..).map(|(&n, i)| vec![i; n]).collect();
        let mut heads: Vec<Vec<u8>> = (0..3u8).map(|i| {
            let mut h = vec![0u8; repr.header_len() + 14];
            h[repr.header_len()..].fill(0xe0 | i);
            h
        }).collect();
        for (h, p) in heads.iter_mut().zip(&payloads) {
            repr.emit_gathered(h, p);
        }
        let mut data = Vec::new();
        for (h, p) in heads.iter().zip(&payloads) {
            data.push(std::io::IoSlice::new(h));
            data.push(std::io::IoSlice::new(p));
        }
        let seg = (heads[0].len() + 32) as u16;
        let mut scratch = TxScratch::new();
        let t = Transmit::new(SocketAddr::new(lo, 0), &data).segments(seg).tos_ttl(10 << 2, 7);
        let s = sock.send(&t, &mut scratch);
        assert!(s.error.is_none(), "{:?}", s.error);
        assert_eq!((s.datagrams, s.bytes), (3, t.len()));
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
        let s = sock.send(&Transmit::new(SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), 0), &data), &mut scratch);
        assert_eq!(s.datagrams, 0);
        assert!(s.error.is_some());
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
        let mut q = SendQueue::new(sock.slots());
        q.push(0, TxItem { buf: 0, start: 0, len: buf.len() as u32, dst: SocketAddr::new(lo, 0), ttl: 9, tos: 46 << 2, tag: 3 });
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
