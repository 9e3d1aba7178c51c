//! The little of IPv4/IPv6 the GRE underlay needs.
//!
//! - A raw IPv4 socket hands us the whole datagram, IP header included, so the GRE receiver
//!   needs an IPv4 header view to find the GRE header (IHL), the source address and the
//!   length. (A raw IPv6 socket delivers no IP header: the source comes from `msg_name`.)
//! - The outer header copies the inner packet's DSCP (RFC 2983 "uniform" model, what Linux
//!   tunnels do with `tos inherit`): [`inner_dscp`] reads it from an Ethernet frame.

use std::net::Ipv4Addr;

use super::ethernet::{EthernetFrame, ethertype};

/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// IP protocol numbers (IANA) of what the core reads or writes inside a frame.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// An address family, as the `family` label of the counters that tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// Why an IPv4 header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Error {
    /// Shorter than 20 bytes, than its IHL, or than its total length says.
    Truncated,
    /// Version is not 4 or IHL below 5.
    Malformed,
}

/// A validated view of an IPv4 datagram.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self, Ipv4Error> {
        let b = buffer.as_ref();
        if b.len() < IPV4_MIN_HEADER_LEN {
            return Err(Ipv4Error::Truncated);
        }
        if b[0] >> 4 != 4 || b[0] & 0x0f < 5 {
            return Err(Ipv4Error::Malformed);
        }
        let p = Ipv4Packet { buffer };
        let total = p.total_len();
        if total < p.header_len() {
            return Err(Ipv4Error::Malformed);
        }
        if p.buffer.as_ref().len() < total {
            return Err(Ipv4Error::Truncated);
        }
        Ok(p)
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x0f) * 4
    }

    pub fn total_len(&self) -> usize {
        let b = self.buffer.as_ref();
        usize::from(u16::from_be_bytes([b[2], b[3]]))
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[9]
    }

    pub fn src(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }

    pub fn dst(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }

    /// The bytes after the header, up to the total length (link padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

/// The DSCP (upper six bits of the IPv4 TOS / IPv6 traffic class) of the IP packet inside an
/// Ethernet frame (after up to two VLAN tags); 0 for anything else or a short frame.
pub fn inner_dscp(frame: &[u8]) -> u8 {
    if frame.len() < super::ethernet::HEADER_LEN {
        return 0;
    }
    let f = EthernetFrame::new_unchecked(frame);
    match f.l3() {
        Some((off, ethertype::IPV4)) => frame.get(off + 1).map_or(0, |tos| tos >> 2),
        Some((off, ethertype::IPV6)) => match frame.get(off..off + 2) {
            // version(4) | traffic class(8) | flow label(20)
            Some(b) if b[0] >> 4 == 6 => ((b[0] & 0x0f) << 4 | b[1] >> 4) >> 2,
            _ => 0,
        },
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    #[test]
    fn ipv4_view_agrees_with_etherparse() {
        let mut pkt = Vec::new();
        etherparse::PacketBuilder::ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64).udp(1, 2).write(&mut pkt, &[9, 9, 9]).unwrap();
        pkt.extend_from_slice(&[0, 0]); // link padding beyond the total length
        let p = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        assert_eq!(p.src(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.dst(), Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.payload().len(), 8 + 3);
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let mut pkt = vec![0x46, 0, 0, 28, 0, 0, 0x40, 0, 64, 47, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2, 1, 1, 1, 1];
        pkt.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let p = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn bad_ipv4_headers_are_refused() {
        assert_eq!(Ipv4Packet::new_checked(&[0x45u8; 19][..]).err(), Some(Ipv4Error::Truncated));
        let mut pkt = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 47, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2];
        assert_eq!(Ipv4Packet::new_checked(&pkt[..]).err(), Some(Ipv4Error::Truncated));
        pkt[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&pkt[..]).err(), Some(Ipv4Error::Malformed));
        pkt[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&pkt[..]).err(), Some(Ipv4Error::Malformed));
        pkt[0] = 0x45;
        pkt[3] = 10; // total length below the header length
        assert_eq!(Ipv4Packet::new_checked(&pkt[..]).err(), Some(Ipv4Error::Malformed));
    }

    #[test]
    fn inner_dscp_is_read_from_ipv4_ipv6_and_tagged_frames() {
        // IPv4 TOS 0xb8 = DSCP 46 (EF)
        assert_eq!(inner_dscp(&eth(0x0800, &[0x45, 0xb8])), 46);
        // IPv6 traffic class 0x28 = DSCP 10 (AF11): 0x6 2 8 0...
        assert_eq!(inner_dscp(&eth(0x86dd, &[0x62, 0x80, 0, 0])), 10);
        // VLAN-tagged IPv4
        assert_eq!(inner_dscp(&eth(0x8100, &[0, 5, 0x08, 0x00, 0x45, 0x20])), 8);
        assert_eq!(inner_dscp(&eth(0x0806, &[0, 1])), 0);
        assert_eq!(inner_dscp(&eth(0x0800, &[])), 0);
        assert_eq!(inner_dscp(&[0u8; 5]), 0);
    }
}
