//! The small value types every module of the core shares: the identifiers of a network
//! (`Vni`), of its ports (`LocalPort`, `PeerIdx`, `Port`) and the encapsulation settings
//! (`Encap`, `GreOptions`, `Dscp`). They depend on nothing in the core but the wire format
//! (a frame's DSCP), so any module can name them without a cycle; `core` re-exports them.

use std::fmt;

/// A virtual network identifier: the VXLAN VNI (24 bits) or the GRE key (32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// Largest VXLAN VNI (24 bits, RFC 7348 §5).
    pub const MAX_VXLAN: u32 = (1 << 24) - 1;

    /// A VNI for VXLAN, or `None` if it does not fit 24 bits.
    pub const fn vxlan(v: u32) -> Option<Vni> {
        if v <= Self::MAX_VXLAN { Some(Vni(v)) } else { None }
    }

    /// Any 32-bit value; the caller knows it fits the encapsulation (parsed off the wire, or a
    /// GRE key).
    pub const fn new_unchecked(v: u32) -> Vni {
        Vni(v)
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A local port (TAP device or VM connection) of a network: slot and generation in the
/// network's [`crate::core::ports::PortTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalPort(pub u16);

/// Index of a peer (remote daemon) within its network's peer list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerIdx(pub u16);

/// Where a frame entered the switch, or where a MAC lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    Local(LocalPort),
    Peer(PeerIdx),
}

impl Port {
    const PEER_BIT: u32 = 1 << 31;

    /// Pack into a `u32` so it fits an atomic (bit 31 tells a peer from a local port).
    pub const fn to_u32(self) -> u32 {
        match self {
            Port::Local(LocalPort(p)) => p as u32,
            Port::Peer(PeerIdx(p)) => Self::PEER_BIT | p as u32,
        }
    }

    pub const fn from_u32(v: u32) -> Port {
        if v & Self::PEER_BIT != 0 {
            Port::Peer(PeerIdx(v as u16))
        } else {
            Port::Local(LocalPort(v as u16))
        }
    }

    pub const fn is_peer(self) -> bool {
        matches!(self, Port::Peer(_))
    }
}

/// The encapsulation a network uses on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encap {
    /// VXLAN (RFC 7348) over UDP; the VNI is the network id.
    Vxlan,
    /// GRE (RFC 2784/2890) with protocol type 0x6558 (Ethernet), straight over IP (protocol 47).
    Gre(GreOptions),
}

/// How a GRE network fills the optional GRE fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GreOptions {
    /// Carry the network's `vni` in the key field (RFC 2890); `false` = keyless GRE, as a
    /// `gretap` without `key` sends.
    pub key: bool,
    /// Send the checksum field (RFC 2784 §2.5).
    pub checksum: bool,
}

impl Default for GreOptions {
    fn default() -> Self {
        GreOptions { key: true, checksum: false }
    }
}

impl Encap {
    pub const fn is_gre(self) -> bool {
        matches!(self, Encap::Gre(_))
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encap::Vxlan => f.write_str("vxlan"),
            // the options are not part of the name (it is a metric label value)
            Encap::Gre(_) => f.write_str("gre"),
        }
    }
}

/// The DSCP of the outer IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dscp {
    /// Copy the inner packet's DSCP (0 for non-IP frames), like a Linux tunnel with `tos inherit`.
    #[default]
    Inherit,
    /// Always this value (0..=63).
    Fixed(u8),
}

impl Dscp {
    /// The outer DSCP for an inner Ethernet frame.
    #[inline]
    pub fn for_frame(self, frame: &[u8]) -> u8 {
        match self {
            Dscp::Inherit => crate::core::wire::ip::inner_dscp(frame),
            Dscp::Fixed(d) => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_packs_into_u32_and_back() {
        for p in [Port::Local(LocalPort(0)), Port::Local(LocalPort(65535)), Port::Peer(PeerIdx(0)), Port::Peer(PeerIdx(7))] {
            assert_eq!(Port::from_u32(p.to_u32()), p);
        }
    }

    #[test]
    fn vxlan_vni_is_24_bits() {
        assert!(Vni::vxlan(0xff_ffff).is_some());
        assert!(Vni::vxlan(0x100_0000).is_none());
    }
}
