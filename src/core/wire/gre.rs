//! GRE header, RFC 2784 with the key and sequence extensions of RFC 2890, carrying Ethernet
//! (protocol type 0x6558, "transparent Ethernet bridging") — what Linux `gretap` devices and
//! Open vSwitch `type=gre` ports send.
//!
//! ```text
//!  0                   1                   2                   3
//! |C|R|K|S|s|Recur|  Flags  | Ver |         Protocol Type         |
//! |      Checksum (optional)      |       Reserved1 (optional)    |   C set
//! |                         Key (optional)                        |   K set
//! |                 Sequence Number (optional)                    |   S set
//! ```
//!
//! Receive rules follow the Linux kernel (`gre_parse_header`), the peer we must agree with:
//! a version other than 0 or the routing bit (RFC 1701 source routing, obsoleted by RFC 2784)
//! is refused; the other reserved bits are ignored; a sequence number is skipped (we do not
//! reorder). The checksum, when present, covers the GRE header and payload (RFC 2784 §2.5)
//! and is verified by [`GreHeader::checksum_ok`]. Whether a key is expected, and which
//! protocol types are accepted, is the classifier's business (it knows the networks), so the
//! view only reports them.

use std::fmt;

use crate::core::checksum;

/// Protocol type for Ethernet frames (transparent Ethernet bridging, IANA ethertype 0x6558).
pub const PROTO_TEB: u16 = 0x6558;
/// IP protocol number of GRE.
pub const IPPROTO_GRE: u8 = 47;
/// Longest header we emit: base (4) + checksum (4) + key (4).
pub const MAX_EMIT_LEN: usize = 12;

const FLAG_C: u16 = 0x8000;
const FLAG_R: u16 = 0x4000;
const FLAG_K: u16 = 0x2000;
const FLAG_S: u16 = 0x1000;
const VERSION: u16 = 0x0007;

mod field {
    use std::ops::Range;
    pub const FLAGS: Range<usize> = 0..2;
    pub const PROTO: Range<usize> = 2..4;
    pub const BASE_LEN: usize = 4;
}

/// Why a GRE header was refused by the view itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreError {
    /// Shorter than the header its flags announce.
    Truncated,
    /// Version field not 0 (RFC 2784 §2.3.1; version 1 is PPTP).
    Version,
    /// Routing bit set (RFC 1701 source routing).
    Routing,
}

impl fmt::Display for GreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GreError::Truncated => "truncated GRE header",
            GreError::Version => "GRE version is not 0",
            GreError::Routing => "GRE routing bit set",
        })
    }
}

impl std::error::Error for GreError {}

/// A validated view of a GRE packet (header and payload).
#[derive(Debug, Clone, Copy)]
pub struct GreHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GreHeader<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        GreHeader { buffer }
    }

    /// Validate version, routing bit and that the buffer holds every field the flags announce.
    pub fn new_checked(buffer: T) -> Result<Self, GreError> {
        let h = Self::new_unchecked(buffer);
        if h.buffer.as_ref().len() < field::BASE_LEN {
            return Err(GreError::Truncated);
        }
        let f = h.flags();
        if f & VERSION != 0 {
            return Err(GreError::Version);
        }
        if f & FLAG_R != 0 {
            return Err(GreError::Routing);
        }
        if h.buffer.as_ref().len() < h.header_len() {
            return Err(GreError::Truncated);
        }
        Ok(h)
    }

    pub fn flags(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::FLAGS];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn protocol(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PROTO];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn has_checksum(&self) -> bool {
        self.flags() & FLAG_C != 0
    }

    pub fn has_key(&self) -> bool {
        self.flags() & FLAG_K != 0
    }

    pub fn has_sequence(&self) -> bool {
        self.flags() & FLAG_S != 0
    }

    /// Header length implied by the C, K and S flags.
    pub fn header_len(&self) -> usize {
        field::BASE_LEN + 4 * (usize::from(self.has_checksum()) + usize::from(self.has_key()) + usize::from(self.has_sequence()))
    }

    /// The key (RFC 2890 §2.1), if present.
    pub fn key(&self) -> Option<u32> {
        if !self.has_key() {
            return None;
        }
        let at = field::BASE_LEN + if self.has_checksum() { 4 } else { 0 };
        let b = &self.buffer.as_ref()[at..at + 4];
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The checksum field, if present.
    pub fn checksum(&self) -> Option<u16> {
        self.has_checksum().then(|| {
            let b = &self.buffer.as_ref()[4..6];
            u16::from_be_bytes([b[0], b[1]])
        })
    }

    /// True if there is no checksum, or it verifies over header and payload (RFC 2784 §2.5).
    pub fn checksum_ok(&self) -> bool {
        !self.has_checksum() || internet_checksum(self.buffer.as_ref()) == 0
    }

    /// The encapsulated payload (an Ethernet frame for [`PROTO_TEB`]).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

/// What a GRE header we send carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GreRepr {
    /// The key field, or `None` for keyless GRE.
    pub key: Option<u32>,
    /// Whether to send the checksum field.
    pub checksum: bool,
}

impl GreRepr {
    pub const fn header_len(&self) -> usize {
        field::BASE_LEN + if self.checksum { 4 } else { 0 } + if self.key.is_some() { 4 } else { 0 }
    }

    /// Write the header at the start of `packet`, whose tail after the header is the payload
    /// already in place; the checksum (if any) is computed over the whole of `packet`.
    ///
    /// # Panics
    /// If `packet` is shorter than [`GreRepr::header_len`]; callers pass a headroom slice.
    pub fn emit(&self, packet: &mut [u8]) {
        self.emit_gathered(packet, &[]);
    }

    /// [`GreRepr::emit`] for a packet in two pieces: `head` starts with the header and goes on
    /// with the start of the payload, `tail` is the rest of the payload (a segment's headers
    /// built apart from its payload, see the data path's segmenter). The checksum, if any,
    /// covers header, `head` and `tail`.
    ///
    /// # Panics
    /// If `head` is shorter than [`GreRepr::header_len`].
    pub fn emit_gathered(&self, head: &mut [u8], tail: &[u8]) {
        let mut flags = 0u16;
        if self.checksum {
            flags |= FLAG_C;
        }
        if self.key.is_some() {
            flags |= FLAG_K;
        }
        head[field::FLAGS].copy_from_slice(&flags.to_be_bytes());
        head[field::PROTO].copy_from_slice(&PROTO_TEB.to_be_bytes());
        let mut at = field::BASE_LEN;
        if self.checksum {
            head[at..at + 4].fill(0);
            at += 4;
        }
        if let Some(k) = self.key {
            head[at..at + 4].copy_from_slice(&k.to_be_bytes());
        }
        if self.checksum {
            let mut t = checksum::fold(checksum::sum(tail, 0));
            if head.len() % 2 == 1 {
                // the tail's words straddle the pieces: its sum is byte-swapped (RFC 1071 §2(B))
                t = t.swap_bytes();
            }
            let c = checksum::finish(checksum::sum(head, u64::from(t)));
            head[4..6].copy_from_slice(&c.to_be_bytes());
        }
    }
}

/// The Internet checksum (RFC 1071): one's complement of the one's-complement sum of 16-bit
/// words, an odd trailing byte padded with zero. Over data that contains a correct checksum
/// field the result is 0 (the fast [`checksum::sum`], which the TCP/IP offloads use too).
pub fn internet_checksum(data: &[u8]) -> u16 {
    checksum::finish(checksum::sum(data, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures built by an independent implementation (scapy 2.5:
    // `GRE(key_present=1, key=42, proto=0x6558) / Raw(inner)` and friends); the inner frame is
    // bytes 1..=14 followed by aa bb cc.
    const INNER: [u8; 17] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xaa, 0xbb, 0xcc];
    const KEY42: &str = "200065580000002a0102030405060708090a0b0c0d0eaabbcc";
    const NOKEY: &str = "000065580102030405060708090a0b0c0d0eaabbcc";
    const CSUM_KEY: &str = "a0006558b5140000deadbeef0102030405060708090a0b0c0d0eaabbcc";
    const CSUM: &str = "8000655872b200000102030405060708090a0b0c0d0eaabbcc";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn build(repr: GreRepr) -> Vec<u8> {
        let mut p = vec![0xa5u8; repr.header_len()];
        p.extend_from_slice(&INNER);
        repr.emit(&mut p);
        p
    }

    #[test]
    fn emit_matches_the_reference_bytes() {
        assert_eq!(build(GreRepr { key: Some(42), checksum: false }), hex(KEY42));
        assert_eq!(build(GreRepr { key: None, checksum: false }), hex(NOKEY));
        assert_eq!(build(GreRepr { key: Some(0xdead_beef), checksum: true }), hex(CSUM_KEY));
        assert_eq!(build(GreRepr { key: None, checksum: true }), hex(CSUM));
    }

    /// A packet emitted in two pieces (headers apart from the payload, as the segmenter sends
    /// it) carries the same bytes and checksum as one emitted whole, wherever the cut is, odd
    /// offsets included.
    #[test]
    fn emit_gathered_matches_emit_for_every_cut() {
        for repr in [GreRepr { key: Some(0xdead_beef), checksum: true }, GreRepr { key: None, checksum: true }, GreRepr { key: Some(42), checksum: false }] {
            let h = repr.header_len();
            let payload: Vec<u8> = (0..301u32).map(|i| (i.wrapping_mul(151) >> 2) as u8 ^ 0x5a).collect();
            let mut whole = vec![0u8; h];
            whole.extend_from_slice(&payload);
            repr.emit(&mut whole);
            for cut in h..whole.len() {
                let mut head = whole[..cut].to_vec();
                head[..h].fill(0xa5);
                repr.emit_gathered(&mut head, &whole[cut..]);
                assert_eq!(&head[..], &whole[..cut], "{repr:?} cut at {cut}");
            }
            let g = GreHeader::new_checked(&whole[..]).unwrap();
            assert!(g.checksum_ok());
        }
        // and it still reproduces the independent reference bytes
        let r = GreRepr { key: Some(0xdead_beef), checksum: true };
        let want = hex(CSUM_KEY);
        for cut in r.header_len()..want.len() {
            let mut head = want[..cut].to_vec();
            head[..r.header_len()].fill(0);
            r.emit_gathered(&mut head, &want[cut..]);
            assert_eq!(&head[..], &want[..cut]);
        }
    }

    #[test]
    fn parse_reads_every_field_of_the_reference_bytes() {
        let p = hex(CSUM_KEY);
        let h = GreHeader::new_checked(&p[..]).unwrap();
        assert_eq!(h.protocol(), PROTO_TEB);
        assert_eq!(h.key(), Some(0xdead_beef));
        assert_eq!(h.checksum(), Some(0xb514));
        assert!(h.checksum_ok());
        assert_eq!(h.header_len(), 12);
        assert_eq!(h.payload(), &INNER);

        let p = hex(NOKEY);
        let h = GreHeader::new_checked(&p[..]).unwrap();
        assert_eq!((h.key(), h.checksum(), h.header_len()), (None, None, 4));
        assert!(h.checksum_ok());
        assert_eq!(h.payload(), &INNER);
    }

    #[test]
    fn a_flipped_payload_bit_fails_the_checksum() {
        let mut p = hex(CSUM_KEY);
        *p.last_mut().unwrap() ^= 1;
        assert!(!GreHeader::new_checked(&p[..]).unwrap().checksum_ok());
    }

    #[test]
    fn sequence_number_is_skipped() {
        // K and S: key 7, sequence 0x01020304, then the payload
        let p = [0x30, 0x00, 0x65, 0x58, 0, 0, 0, 7, 1, 2, 3, 4, 0xee];
        let h = GreHeader::new_checked(&p[..]).unwrap();
        assert_eq!(h.key(), Some(7));
        assert_eq!(h.payload(), &[0xee]);
    }

    #[test]
    fn version_and_routing_are_refused() {
        let mut p = hex(KEY42);
        p[1] = 0x01; // version 1 (PPTP)
        assert_eq!(GreHeader::new_checked(&p[..]).err(), Some(GreError::Version));
        let mut p = hex(KEY42);
        p[0] |= 0x40;
        assert_eq!(GreHeader::new_checked(&p[..]).err(), Some(GreError::Routing));
    }

    #[test]
    fn headers_shorter_than_their_flags_announce_are_truncated() {
        assert_eq!(GreHeader::new_checked(&[0x20u8, 0][..]).err(), Some(GreError::Truncated));
        let p = hex(CSUM_KEY);
        assert_eq!(GreHeader::new_checked(&p[..11]).err(), Some(GreError::Truncated));
        assert!(GreHeader::new_checked(&p[..12]).is_ok());
    }

    #[test]
    fn checksum_handles_odd_lengths_and_carries() {
        // RFC 1071 §3 example words 0001 f203 f4f5 f6f7 sum to 0xddf2 (after the end-around carry)
        assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0, 0]), !0xddf2);
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
        assert_eq!(internet_checksum(&[]), 0xffff);
    }

    #[test]
    fn outer_ipv4_packet_built_by_etherparse_carries_our_header_intact() {
        // etherparse has no GRE; it checks the IPv4 side: protocol 47 with our bytes as payload
        let gre = build(GreRepr { key: Some(42), checksum: true });
        let mut pkt = Vec::new();
        let ip = etherparse::Ipv4Header::new(gre.len() as u16, 64, etherparse::IpNumber(IPPROTO_GRE), [192, 0, 2, 1], [192, 0, 2, 2]).unwrap();
        ip.write(&mut pkt).unwrap();
        pkt.extend_from_slice(&gre);
        let s = etherparse::Ipv4Slice::from_slice(&pkt).unwrap();
        assert_eq!(s.header().protocol(), etherparse::IpNumber::GRE);
        let h = GreHeader::new_checked(s.payload().payload).unwrap();
        assert!(h.checksum_ok());
        assert_eq!(h.key(), Some(42));
        assert_eq!(h.payload(), &INNER);
    }
}
