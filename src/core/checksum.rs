//! The Internet checksum (RFC 1071) as used by IPv4, TCP and UDP.
//!
//! A checksum is built in three steps: [`sum`] accumulates big-endian 16-bit words into a wide
//! accumulator (several pieces can be summed into one accumulator, or summed apart and added
//! with [`combine`]), [`fold`] reduces the accumulator to 16 bits with end-around carry, and
//! [`finish`] complements it into the value stored in a header.
//!
//! The accumulator is a `u64` of big-endian 16-bit word sums. [`sum`] reads the data 32 bits
//! at a time in the host's byte order into two independent accumulators (a 32-bit word is
//! worth `hi16 * 65536 + lo16`, and 65536 ≡ 1 modulo 65535, so whole words can be added and
//! folded at the end), then swaps the folded 16-bit result once: ~10 GiB/s here, against
//! ~3.5 GiB/s with a byte swap per word.
//!
//! Pieces must start at an even offset of the checksummed data for [`sum`] to be additive;
//! every caller here sums headers (even lengths) followed by one payload piece.

/// One's-complement sum of `data`, added to `acc`. An odd last byte counts as the high byte
/// of a word padded with zero (RFC 1071 §4.1).
#[inline]
pub fn sum(data: &[u8], acc: u64) -> u64 {
    // Sum in the host's byte order (no byte swap per word), fold, and swap the 16-bit result
    // once: the one's-complement sum commutes with byte swapping (RFC 1071 §2(B)).
    let mut a: u64 = 0;
    let mut b: u64 = 0;
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        let x = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let y = u64::from_ne_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]);
        a += (x & 0xffff_ffff) + (x >> 32);
        b += (y & 0xffff_ffff) + (y >> 32);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 4 {
        a += u64::from(u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        a += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let Some(&x) = rest.first() {
        // the odd byte is the high (first) byte of a zero-padded word
        a += u64::from(u16::from_ne_bytes([x, 0]));
    }
    let native = fold(a + (b & 0xffff_ffff) + (b >> 32));
    acc + u64::from(u16::from_be(native))
}

/// Add two partial sums (each over an even-length piece, or the later one last).
#[inline]
pub const fn combine(a: u64, b: u64) -> u64 {
    // two u64 accumulators cannot both be near 2^64 in practice; fold once to stay safe
    fold(a) as u64 + fold(b) as u64
}

/// Reduce an accumulator to 16 bits with end-around carry (not complemented).
#[inline]
pub const fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The value stored in a checksum field: the complement of the folded sum.
#[inline]
pub const fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Sum of the IPv4 pseudo-header (RFC 793 §3.1, RFC 768): addresses, protocol, L4 length.
#[inline]
pub fn pseudo_v4(src: &[u8; 4], dst: &[u8; 4], proto: u8, l4_len: u32) -> u64 {
    u64::from(u32::from_be_bytes(*src)) + u64::from(u32::from_be_bytes(*dst)) + u64::from(proto) + u64::from(l4_len)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1): addresses, upper-layer length, next header.
#[inline]
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, l4_len: u32) -> u64 {
    sum(dst, sum(src, 0)) + u64::from(proto) + u64::from(l4_len)
}

/// Whether `data` (which includes its checksum field) sums to the all-ones value, given the
/// pseudo-header sum `acc` (0 for an IPv4 header).
#[inline]
pub fn verify(data: &[u8], acc: u64) -> bool {
    fold(sum(data, acc)) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook definition: 16-bit words, end-around carry after every addition.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for w in data.chunks(2) {
            let v = u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0));
            s += v;
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn sum_agrees_with_the_16_bit_definition_for_every_length() {
        for n in 0..200 {
            let d = pseudo_random(n, n as u32 + 7);
            assert_eq!(fold(sum(&d, 0)), reference(&d), "length {n}");
        }
        let big = pseudo_random(65_000, 99);
        assert_eq!(fold(sum(&big, 0)), reference(&big));
        let ones = vec![0xffu8; 9001];
        assert_eq!(fold(sum(&ones, 0)), reference(&ones));
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2
        assert_eq!(fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)), 0xddf2);
    }

    #[test]
    fn pieces_at_even_offsets_combine() {
        let d = pseudo_random(3001, 5);
        let whole = fold(sum(&d, 0));
        assert_eq!(fold(sum(&d[1000..], sum(&d[..1000], 0))), whole);
        assert_eq!(fold(combine(sum(&d[..20], 0), sum(&d[20..], 0))), whole);
    }

    #[test]
    fn ipv4_header_checksum_matches_etherparse() {
        let mut h = etherparse::Ipv4Header::new(1234, 64, etherparse::IpNumber::TCP, [198, 51, 100, 1], [198, 51, 100, 2]).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let bytes = h.to_bytes();
        let mut zeroed = bytes.to_vec();
        zeroed[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(finish(sum(&zeroed, 0)), h.calc_header_checksum());
        assert!(verify(&bytes, 0));
    }

    #[test]
    fn tcp_checksums_match_etherparse_v4_and_v6() {
        let payload = pseudo_random(1001, 3);
        for v6 in [false, true] {
            let b = if v6 {
                etherparse::PacketBuilder::ipv6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 64)
            } else {
                etherparse::PacketBuilder::ipv4([198, 51, 100, 1], [198, 51, 100, 2], 64)
            };
            let mut pkt = Vec::new();
            b.tcp(1000, 2000, 77, 1000).ack(5).write(&mut pkt, &payload).unwrap();
            let ip_len = if v6 { 40 } else { 20 };
            let tcp = &pkt[ip_len..];
            let l4_len = tcp.len() as u32;
            let ps = if v6 {
                pseudo_v6(pkt[8..24].try_into().unwrap(), pkt[24..40].try_into().unwrap(), 6, l4_len)
            } else {
                pseudo_v4(pkt[12..16].try_into().unwrap(), pkt[16..20].try_into().unwrap(), 6, l4_len)
            };
            assert!(verify(tcp, ps), "v6={v6}");
            let mut z = tcp.to_vec();
            let want = u16::from_be_bytes([z[16], z[17]]);
            z[16..18].copy_from_slice(&[0, 0]);
            assert_eq!(finish(sum(&z, ps)), want, "v6={v6}");
        }
    }
}
