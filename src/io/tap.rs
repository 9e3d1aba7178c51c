//! TAP devices: Ethernet frames in and out of the host's stack.
//!
//! Created (or attached to, if a persistent TAP of that name exists) through tun-rs, with
//! `IFF_TAP | IFF_NO_PI`. A TAP we create is not persistent, so the kernel removes it as soon
//! as the daemon's descriptor closes — on a clean stop and after a crash alike. A TAP that
//! existed before is left in place. The descriptor is non-blocking: the data path waits for
//! readiness with `poll` and then drains the device.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use super::sys;

pub struct Tap {
    dev: SyncDevice,
    name: String,
    created: bool,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("name", &self.name).field("fd", &self.fd()).field("created", &self.created).finish()
    }
}

/// Frames a TAP can hand us without offloads: 64 KiB covers every MTU.
pub const MAX_FRAME: usize = 65536;

/// A MAC address for TAP `name` of the daemon at `underlay`: the same at every start, so a
/// restarted daemon's TAP answers at the address the neighbours have cached (the kernel would
/// pick a random one, and peers' hosts keep sending to the old one until their ARP entries
/// expire, up to 45 s). Locally administered unicast (first byte 0x06), the rest a hash.
pub fn stable_mac(underlay: IpAddr, name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ip = match underlay {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    for &b in ip.iter().chain(name.as_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x06, b[1] ^ b[0], b[2] ^ b[7], b[3], b[4], b[5] ^ b[6]]
}

impl Tap {
    /// Create or attach to TAP `name`, set its MTU, bring it up and put `address` on it.
    pub fn open(name: &str, mtu: u16, address: Option<(IpAddr, u8)>) -> io::Result<Tap> {
        Self::open_with_mac(name, mtu, address, None)
    }

    /// [`Tap::open`], and give a TAP we create the MAC address `mac` (a TAP that exists keeps
    /// its own). A MAC that is the same at every start keeps the neighbours' ARP/ND caches
    /// right across a restart of the daemon (see [`stable_mac`]).
    pub fn open_with_mac(name: &str, mtu: u16, address: Option<(IpAddr, u8)>, mac: Option<[u8; 6]>) -> io::Result<Tap> {
        let existed = sys::interface_exists(name);
        let mut b = DeviceBuilder::new().name(name).layer(Layer::L2).mtu(mtu).enable(true);
        if let (Some(m), false) = (mac, existed) {
            b = b.mac_addr(m);
        }
        match address {
            Some((IpAddr::V4(a), p)) => b = b.ipv4(a, p, None),
            Some((IpAddr::V6(a), p)) => b = b.ipv6(a, p),
            None => {}
        }
        let dev = b.build_sync().map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EBUSY) => " (a TAP of that name is in use by another process)",
                Some(libc::EINVAL) if existed => " (an interface of that name exists and is not a free TAP)",
                Some(libc::EPERM) | Some(libc::EACCES) => " (needs CAP_NET_ADMIN)",
                _ => "",
            };
            io::Error::new(e.kind(), format!("tap {name}: {e}{hint}"))
        })?;
        dev.set_nonblocking(true)?;
        Ok(Tap { dev, name: name.to_string(), created: !existed })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this daemon created the device (it then disappears when we close it).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    pub fn mtu(&self) -> io::Result<u16> {
        self.dev.mtu()
    }

    /// Read one frame; `WouldBlock` when the device is drained.
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf)
    }

    /// Write one frame.
    #[inline]
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        self.dev.send(frame)
    }
}
