//! An existing interface used as a switch port through a packet socket, the way a Linux
//! bridge uses its ports.
//!
//! This is how a VM's TAP joins a network: QEMU (`-netdev tap,ifname=vm1,script=no,
//! downscript=no,vnet_hdr=off`) holds the TAP's descriptor, so the daemon cannot open it as
//! its own TAP; instead it binds an `AF_PACKET` socket to the interface. Frames the VM sends
//! arrive on the interface and are read here; frames written here are transmitted on the
//! interface, i.e. handed to QEMU. `PACKET_IGNORE_OUTGOING` keeps our own transmissions (and
//! anything else the host sends out of the interface) from being read back.
//!
//! Offloads: a TAP whose owner uses `IFF_VNET_HDR` may carry frames with unfinished checksums
//! and 64 KiB TSO super-frames; this adapter reads frames as they are, so QEMU must run the
//! TAP with `vnet_hdr=off` (the guest then computes its checksums and segments itself).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `SOL_PACKET` option (linux/if_packet.h, Linux 4.20+); not in the libc crate.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const RCVBUF: libc::c_int = 4 << 20;

#[derive(Debug)]
pub struct PacketPort {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn setopt(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    cvt(unsafe { libc::setsockopt(fd, level, opt, (&v as *const libc::c_int).cast(), mem::size_of::<libc::c_int>() as u32) }).map(drop)
}

impl PacketPort {
    /// Bind a packet socket to interface `name` and bring the interface up.
    pub fn attach(name: &str) -> io::Result<PacketPort> {
        let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("interface {name}: {what}: {e}"));
        let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL byte"))?;
        // SAFETY: cname is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(ctx("no such interface", io::Error::last_os_error()));
        }
        // protocol 0: receive nothing until bound to the interface below
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })
            .map_err(|e| ctx("packet socket (needs CAP_NET_RAW)", e))?;
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setopt(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1).map_err(|e| ctx("PACKET_IGNORE_OUTGOING", e))?;
        if setopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = setopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
        }
        // SAFETY: sockaddr_ll is a plain C struct; zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: binds to a live sockaddr_ll of the size given.
        cvt(unsafe { libc::bind(raw, (&sll as *const libc::sockaddr_ll).cast(), mem::size_of::<libc::sockaddr_ll>() as u32) })
            .map_err(|e| ctx("bind packet socket", e))?;
        let me = PacketPort { fd, name: name.to_string(), ifindex };
        me.set_up().map_err(|e| ctx("bring up", e))?;
        Ok(me)
    }

    fn set_up(&self) -> io::Result<()> {
        // SAFETY: ifreq is a plain C struct; zero is valid. The name fits (checked by config:
        // at most 15 bytes) and stays NUL-terminated.
        let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(self.name.bytes().take(libc::IFNAMSIZ - 1)) {
            *d = s as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the live ifreq.
        unsafe {
            cvt(libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr))?;
            if ifr.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short == 0 {
                ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                cvt(libc::ioctl(self.fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr))?;
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Read one frame into `buf`: its length, and whether it was longer than `buf` (then
    /// truncated). `WouldBlock` when drained.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<(usize, bool)> {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let r = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        Ok((n.min(buf.len()), n > buf.len()))
    }

    /// Transmit one frame on the interface.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: send reads frame.len() bytes from frame.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
    }
}
