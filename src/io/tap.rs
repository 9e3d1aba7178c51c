//! TAP devices: Ethernet frames in and out of the host's stack.
//!
//! Created (or attached to, if a persistent TAP of that name exists) through tun-rs, with
//! `IFF_TAP | IFF_NO_PI`. A TAP we create is not persistent, so the kernel removes it as soon
//! as the daemon's descriptor closes — on a clean stop and after a crash alike. A TAP that
//! existed before is left in place. The descriptor is non-blocking: the data path waits for
//! readiness with `poll` and then drains the device.
//!
//! With offloads (the default), the TAP is opened with `IFF_VNET_HDR` and its offload mask
//! set to `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6`: every read starts
//! with a 10-byte virtio-net header ([`crate::core::offload::VnetHdr`]) and may return a TCP
//! super-frame, or a UDP one from a sender using UDP GSO, of up to 64 KiB with a partial
//! checksum; every write starts with such a header too (all zero for a complete, ordinary
//! frame), and may carry a super-frame of coalesced TCP segments or UDP datagrams. A kernel
//! older than 6.2 refuses UDP segmentation offload (`EINVAL`): the TAP is then opened without
//! it ([`Tap::uso`] false), the host segments UDP itself and we write datagrams one by one.
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use super::sys;
use crate::core::offload::VNET_HDR_LEN;

pub struct Tap {
    dev: SyncDevice,
    name: String,
    created: bool,
    vnet_hdr: bool,
    /// The TAP takes (and may hand us) UDP super-frames, `TUN_F_USO4/6`.
    uso: bool,
}

/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// The offloads we accept from the host: checksum and TCP segmentation (IPv4 and IPv6).
const OFFLOADS: libc::c_uint = (libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6) as libc::c_uint;
/// `TUN_F_USO4 | TUN_F_USO6`: UDP segmentation offload (Linux 6.2).
const USO: libc::c_uint = 0x20 | 0x40;
/// Whether the missing UDP segmentation offload has been logged (once per process).
static NO_USO_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The header in front of an ordinary frame we write.
const PLAIN_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("name", &self.name).field("fd", &self.fd()).field("created", &self.created).finish()
    }
}

/// Largest frame a TAP hands us: 64 KiB covers every MTU, and a TSO super-frame (IPv4 total
/// length <= 65535, plus Ethernet and VLAN headers) with room to spare.
pub const MAX_FRAME: usize = 65536 + 64;

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
    /// With `offload`, reads and writes carry a virtio-net header (see the module docs).
    pub fn open(name: &str, mtu: u16, address: Option<(IpAddr, u8)>, offload: bool) -> io::Result<Tap> {
        Self::open_with_mac(name, mtu, address, None, offload)
    }

    /// [`Tap::open`], and give a TAP we create the MAC address `mac` (a TAP that exists keeps
    /// its own). A MAC that is the same at every start keeps the neighbours' ARP/ND caches
    /// right across a restart of the daemon (see [`stable_mac`]).
    pub fn open_with_mac(name: &str, mtu: u16, address: Option<(IpAddr, u8)>, mac: Option<[u8; 6]>, offload: bool) -> io::Result<Tap> {
        let existed = sys::interface_exists(name);
        let mut b = DeviceBuilder::new().name(name).layer(Layer::L2).mtu(mtu).enable(true).offload(offload);
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
        let mut uso = false;
        if offload {
            let set = |flags: libc::c_uint| {
                // SAFETY: ioctl on our own TAP descriptor with an integer argument.
                let r = unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETOFFLOAD as _, flags as libc::c_ulong) };
                if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
            };
            uso = match set(OFFLOADS | USO) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    if !NO_USO_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::info!(tap = name, "the kernel takes no UDP segmentation offload on TAPs (Linux < 6.2): small UDP is written to TAPs one datagram at a time");
                    }
                    false
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("tap {name}: TUNSETOFFLOAD: {e}"))),
            };
            if !uso {
                set(OFFLOADS).map_err(|e| io::Error::new(e.kind(), format!("tap {name}: TUNSETOFFLOAD: {e}")))?;
            }
        }
        Ok(Tap { dev, name: name.to_string(), created: !existed, vnet_hdr: offload, uso })
    }

    /// Whether reads and writes carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Whether the TAP takes UDP super-frames (`gso_type` `UDP_L4`) and may hand us some.
    pub fn uso(&self) -> bool {
        self.uso
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

    /// Read one frame, preceded by its virtio-net header if [`Tap::vnet_hdr`]; `WouldBlock`
    /// when the device is drained.
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf)
    }

    /// Write one complete, ordinary frame (a plain virtio-net header goes in front if the
    /// TAP expects one).
    #[inline]
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        if self.vnet_hdr {
            self.dev.send_vectored(&[IoSlice::new(&PLAIN_HDR), IoSlice::new(frame)])
        } else {
            self.dev.send(frame)
        }
    }

    /// Write one frame gathered from `parts`: its virtio-net header bytes first (only on a
    /// TAP with [`Tap::vnet_hdr`]), then e.g. rewritten headers and payload pieces in place.
    #[inline]
    pub fn write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        self.dev.send_vectored(parts)
    }

    /// Write bytes that already start with a virtio-net header (a frame read from another
    /// offloading TAP).
    #[inline]
    pub fn write_raw(&self, with_hdr: &[u8]) -> io::Result<usize> {
        self.dev.send(with_hdr)
    }
}
