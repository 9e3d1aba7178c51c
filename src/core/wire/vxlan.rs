//! VXLAN header, RFC 7348 §5.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! On send the I flag is set and every reserved bit is zero. On receive the I flag must be
//! set ("MUST be set to 1 for a valid VXLAN Network ID"), and the reserved fields "MUST be
//! ignored on receipt" — so a peer that sets extension bits (GBP, GPE) is still accepted here;
//! the VNI decides whether the packet belongs to a network.

use super::ParseError;
use crate::core::Vni;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// IANA-assigned UDP destination port (RFC 7348 §5).
pub const DEFAULT_PORT: u16 = 4789;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14): what the TAP MTU gives up.
pub const OVERHEAD_V4: u16 = 50;
/// Outer IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD_V6: u16 = 70;

const FLAG_I: u8 = 0x08;

mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
}

#[derive(Debug, Clone, Copy)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanHeader { buffer }
    }

    /// Validate length and the I flag.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let h = Self::new_unchecked(buffer);
        if h.buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        if !h.i_flag() {
            return Err(ParseError::BadFlags);
        }
        Ok(h)
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn i_flag(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    pub fn vni(&self) -> Vni {
        let b = &self.buffer.as_ref()[field::VNI];
        Vni::new_unchecked(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// Write a VXLAN header for `vni` into the first 8 bytes of `buf`: I flag set, reserved zero.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`] or `vni` does not fit 24 bits; callers pass a
/// headroom slice of the right size and a VNI validated by the config.
pub fn emit(buf: &mut [u8], vni: Vni) {
    let v = vni.get();
    debug_assert!(v < 1 << 24, "VXLAN VNI is 24 bits");
    let b = v.to_be_bytes();
    buf[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, b[1], b[2], b[3], 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7348 §5 layout for VNI 42 (0x00002a)
    const VNI42: [u8; 8] = [0x08, 0, 0, 0, 0x00, 0x00, 0x2a, 0];

    #[test]
    fn emit_sets_i_flag_and_zero_reserved_bits() {
        let mut buf = [0xa5u8; 10];
        emit(&mut buf, Vni::new_unchecked(42));
        assert_eq!(&buf[..8], &VNI42);
        assert_eq!(&buf[8..], &[0xa5, 0xa5]);
    }

    #[test]
    fn parse_reads_vni_and_payload() {
        let mut pkt = VNI42.to_vec();
        pkt.extend_from_slice(&[1, 2, 3]);
        let h = VxlanHeader::new_checked(&pkt[..]).unwrap();
        assert_eq!(h.vni().get(), 42);
        assert_eq!(h.payload(), &[1, 2, 3]);
    }

    #[test]
    fn max_vni_round_trips() {
        let mut buf = [0u8; 8];
        emit(&mut buf, Vni::new_unchecked(0xff_ffff));
        assert_eq!(VxlanHeader::new_checked(&buf[..]).unwrap().vni().get(), 0xff_ffff);
    }

    #[test]
    fn missing_i_flag_is_rejected() {
        let mut pkt = VNI42;
        pkt[0] = 0;
        assert_eq!(VxlanHeader::new_checked(&pkt[..]).err(), Some(ParseError::BadFlags));
    }

    #[test]
    fn reserved_bits_are_ignored_on_receipt() {
        // RFC 7348 §5: reserved fields MUST be ignored on receipt (GBP sets some of them)
        let pkt = [0x88, 0x12, 0x34, 0x56, 0, 0, 0x2a, 0xff];
        assert_eq!(VxlanHeader::new_checked(&pkt[..]).unwrap().vni().get(), 42);
    }

    #[test]
    fn short_header_is_truncated() {
        assert_eq!(VxlanHeader::new_checked(&VNI42[..7]).err(), Some(ParseError::Truncated));
    }

    #[test]
    fn header_agrees_with_etherparse() {
        // independent oracle: etherparse builds the whole outer stack, we read our header
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
            .udp(50000, DEFAULT_PORT)
            .write(&mut frame, &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xee])
            .unwrap();
        let udp = etherparse::SlicedPacket::from_ip(&frame).unwrap();
        let payload = match udp.transport {
            Some(etherparse::TransportSlice::Udp(u)) => u.payload().to_vec(),
            _ => panic!("not udp"),
        };
        let h = VxlanHeader::new_checked(&payload[..]).unwrap();
        assert_eq!(h.vni().get(), 0x123456);
        assert_eq!(h.payload(), &[0xee]);
    }
}
