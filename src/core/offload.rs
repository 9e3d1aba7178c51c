//! Segmentation offloads for TAP ports: the virtio-net header, software TSO, and TCP
//! coalescing (userspace GRO).
//!
//! With `IFF_VNET_HDR` and TSO enabled on a TAP, the host's TCP stack hands us *super-frames*:
//! one Ethernet frame carrying up to 64 KiB of TCP payload, with a [`VnetHdr`] in front saying
//! how it must be cut (`gso_size` = MSS) and that its TCP checksum is only partial (the field
//! holds the pseudo-header sum). Encapsulating such a frame means cutting it into MSS-sized
//! segments with correct headers first: [`TsoPlan`] does that, writing each segment's headers
//! (IPv4 total length, ID and header checksum, or IPv6 payload length; TCP sequence number,
//! flags and full checksum) into a caller's buffer, while the payload stays where it is.
//!
//! The other direction is the mirror image: consecutive TCP segments of one flow that arrive
//! from a tunnel are checked ([`TcpSeg`]), chained into a [`Run`] following the kernel's GRO
//! rules (same headers except the fields that change per segment, consecutive sequence
//! numbers, equal size except a shorter last one, nothing but ACK/PSH set), and written to the
//! TAP as one super-frame with the header [`Run::header`] builds.
//!
//! On a TAP, `csum_start` counts from the first byte of the Ethernet frame, so it includes the
//! 14-byte Ethernet header and any VLAN tags (TUN code such as wireguard-go's assumes an IP
//! header at offset 0).
//!
//! Pure functions over byte slices; nothing here allocates or panics on any input.

use super::checksum;
use super::wire::ethernet::{EthernetFrame, ethertype};

/// Length of `struct virtio_net_hdr` (no `num_buffers`: we never set `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// `virtio_net_hdr.flags`.
pub mod flags {
    /// The L4 checksum is partial: sum from `csum_start` to the end, store at
    /// `csum_start + csum_offset`.
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum has been verified (the kernel may skip it).
    pub const DATA_VALID: u8 = 2;
}

/// `virtio_net_hdr.gso_type`.
pub mod gso {
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    pub const TCPV6: u8 = 4;
    pub const UDP_L4: u8 = 5;
    /// Flag: the TCP stream uses ECN; the first segment carries CWR.
    pub const ECN: u8 = 0x80;
}

const TCP_FIN: u8 = 0x01;
#[cfg(test)]
const TCP_SYN: u8 = 0x02;
#[cfg(test)]
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
/// Offset of the checksum field in a TCP header.
pub const TCP_CSUM_OFFSET: u16 = 16;
/// Offset of the checksum field in a UDP header.
pub const UDP_CSUM_OFFSET: u16 = 6;
/// Largest IPv4 total length / IPv6 payload length.
const IP_MAX: usize = 65_535;
/// Most segments coalesced into one frame (the kernel's GRO limit, too).
pub const MAX_RUN_SEGMENTS: usize = 64;

/// Why a frame with a virtio-net header cannot be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// The header and the frame disagree (offsets outside the frame, wrong IP version, ...).
    Malformed,
    /// A valid request we do not implement (e.g. IPv6 extension headers, UDP segmentation).
    Unsupported,
}

/// `struct virtio_net_hdr`. Its 16-bit fields are in the byte order of a legacy virtio
/// device, i.e. the host's; overlayd runs on little-endian hosts (x86-64, aarch64), where that
/// is little-endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// A header that asks for nothing: a complete frame.
    pub const NONE: VnetHdr = VnetHdr { flags: 0, gso_type: gso::NONE, hdr_len: 0, gso_size: 0, csum_start: 0, csum_offset: 0 };

    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
    }

    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut o = [0u8; VNET_HDR_LEN];
        o[0] = self.flags;
        o[1] = self.gso_type;
        o[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        o[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        o[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        o[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        o
    }

    /// Whether the frame is a TCP super-frame to be segmented.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !gso::ECN != gso::NONE
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & flags::NEEDS_CSUM != 0
    }
}

/// Complete a partial checksum in place (`NEEDS_CSUM`): the field at `csum_start +
/// csum_offset` holds the pseudo-header sum; sum from `csum_start` to the end of the frame.
pub fn finish_partial_checksum(frame: &mut [u8], h: &VnetHdr) -> Result<(), OffloadError> {
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    if at + 2 > frame.len() {
        return Err(OffloadError::Malformed);
    }
    let c = checksum::finish(checksum::sum(&frame[start..], 0));
    // UDP (csum_offset 6) sends a computed zero as all ones (RFC 768)
    let c = if c == 0 && h.csum_offset == 6 { 0xffff } else { c };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// A TCP or UDP checksum left partial by the sender: the field holds only the pseudo-header
/// sum, as a Linux stack leaves it for checksum offload.
///
/// A tunnel peer running the kernel's `vxlan` device on a link that keeps `CHECKSUM_PARTIAL`
/// (a veth with its default offloads, a bridge) sends inner segments in that state: the device
/// that would finish the checksum is never reached, and a UDP socket hands the bytes to us as
/// they are. The kernel on the other end of such a link trusts the skb's metadata; a userspace
/// receiver has only the bytes, so it recognises the partial checksum by its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialCsum {
    /// Offset of the TCP/UDP header in the frame.
    pub start: usize,
    /// Offset of the checksum field from `start` (16 for TCP, 6 for UDP).
    pub offset: usize,
    /// End of the L4 data (Ethernet padding excluded).
    pub end: usize,
}

impl PartialCsum {
    /// Find a partial checksum in `frame` (Ethernet, up to two VLAN tags, IPv4 unfragmented or
    /// IPv6 without extension headers, TCP or UDP). `None` for anything else, and for a
    /// checksum that is not the pseudo-header sum. Reads the headers only.
    ///
    /// A complete checksum can equal the pseudo-header sum by chance; finishing it again
    /// gives the same value (the sum of the data plus that field is what a complete checksum
    /// is the complement of), so taking it for partial is harmless.
    pub fn detect(frame: &[u8]) -> Option<PartialCsum> {
        let (l3, et) = EthernetFrame::new_checked(frame).ok()?.l3()?;
        let ip = frame.get(l3..)?;
        let (l4, proto, l4_len) = match et {
            ethertype::IPV4 => {
                let h = ip.get(..20)?;
                let ihl = usize::from(h[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
                if h[0] >> 4 != 4 || ihl < 20 || total < ihl || u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
                    return None;
                }
                (l3 + ihl, h[9], total - ihl)
            }
            ethertype::IPV6 => {
                let h = ip.get(..40)?;
                if h[0] >> 4 != 6 {
                    return None;
                }
                (l3 + 40, h[6], usize::from(u16::from_be_bytes([h[4], h[5]])))
            }
            _ => return None,
        };
        let offset = match proto {
            6 => usize::from(TCP_CSUM_OFFSET),
            17 => 6,
            _ => return None,
        };
        let end = l4.checked_add(l4_len).filter(|&e| e <= frame.len())?;
        if l4_len < offset + 2 {
            return None;
        }
        let field = u16::from_be_bytes([frame[l4 + offset], frame[l4 + offset + 1]]);
        let pseudo = if et == ethertype::IPV6 {
            let (s, d) = (ip[8..24].try_into().ok()?, ip[24..40].try_into().ok()?);
            checksum::pseudo_v6(&s, &d, proto, l4_len as u32)
        } else {
            let (s, d) = (ip[12..16].try_into().ok()?, ip[16..20].try_into().ok()?);
            checksum::pseudo_v4(&s, &d, proto, l4_len as u32)
        };
        (field == checksum::fold(pseudo)).then_some(PartialCsum { start: l4, offset, end })
    }

    /// The virtio-net header that hands the frame to a TAP as it is, checksum still to do.
    pub fn vnet_hdr(&self) -> VnetHdr {
        VnetHdr { flags: flags::NEEDS_CSUM, csum_start: self.start as u16, csum_offset: self.offset as u16, ..VnetHdr::NONE }
    }

    /// Finish the checksum in place (`frame` is the frame it was detected in, or a copy).
    pub fn finish(&self, frame: &mut [u8]) {
        let Some(l4) = frame.get(self.start..self.end) else { return };
        let c = checksum::finish(checksum::sum(l4, 0));
        // UDP sends a computed zero as all ones (RFC 768)
        let c = if c == 0 && self.offset == 6 { 0xffff } else { c };
        frame[self.start + self.offset..self.start + self.offset + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// A TCP super-frame that arrived from the underlay in one piece: the inner frame of a
/// kernel peer's tunnel GSO packet, and the virtio-net header and plan that deliver it.
///
/// A kernel `vxlan` device with TSO sends a whole 64 KiB TCP burst as one GSO packet; a veth
/// (or a bridge) passes it on whole, and the kernel queues it to a plain UDP socket unsegmented
/// (it segments only UDP GSO packets for a socket, not tunnel ones). `recvmsg` then returns one
/// "datagram" holding the VXLAN header and an inner IPv4/IPv6 TCP packet of up to 64 KiB with a
/// partial checksum (no `UDP_GRO` control message: that is only for UDP GSO packets).
///
/// `frame` is the inner frame of the whole message, `mtu` the network's MTU; `Some` if the
/// inner IP packet is larger than `mtu`, its length covers exactly the frame, and it is TCP
/// with a partial checksum. Anything else is not such a packet. The segment size is what fits
/// `mtu` with these headers (the sender's MSS, unless it chose a smaller one).
pub fn tunnel_super_frame(frame: &[u8], mtu: usize) -> Option<(VnetHdr, TsoPlan)> {
    let layout = TcpLayout::parse(frame).ok()?;
    let ip_end = layout.ip_end(frame)?;
    let gso_size = mtu.checked_sub(layout.hdr_len - layout.l3).filter(|&m| m > 0 && m <= usize::from(u16::MAX))?;
    if ip_end != frame.len() || frame.len() - layout.l3 <= mtu {
        return None;
    }
    let pc = PartialCsum::detect(frame)?;
    if pc.start != layout.l4 || pc.offset != usize::from(TCP_CSUM_OFFSET) {
        return None;
    }
    let h = VnetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: if layout.v6 { gso::TCPV6 } else { gso::TCPV4 },
        hdr_len: layout.hdr_len as u16,
        gso_size: gso_size as u16,
        csum_start: layout.l4 as u16,
        csum_offset: TCP_CSUM_OFFSET,
    };
    let plan = TsoPlan::new(frame, &h).ok()?;
    Some((h, plan))
}

/// Where the headers of an Ethernet + IPv4/IPv6 + TCP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLayout {
    /// Offset of the IP header (14, or 18/22 with VLAN tags).
    pub l3: usize,
    /// Offset of the TCP header.
    pub l4: usize,
    /// Length of all headers: offset of the TCP payload.
    pub hdr_len: usize,
    pub v6: bool,
    /// A UDP header (8 bytes) instead of TCP ([`TcpLayout::parse_udp`]).
    pub udp: bool,
}

impl TcpLayout {
    /// Find the TCP header behind Ethernet (up to two VLAN tags) and IPv4 (any options) or
    /// IPv6 (no extension headers).
    pub fn parse(frame: &[u8]) -> Result<TcpLayout, OffloadError> {
        Self::parse_l4(frame, false)
    }

    /// The same for a UDP header behind Ethernet and IPv4 or IPv6.
    pub fn parse_udp(frame: &[u8]) -> Result<TcpLayout, OffloadError> {
        Self::parse_l4(frame, true)
    }

    fn parse_l4(frame: &[u8], udp: bool) -> Result<TcpLayout, OffloadError> {
        let proto = if udp { 17 } else { 6 };
        let eth = EthernetFrame::new_checked(frame).map_err(|_| OffloadError::Malformed)?;
        let (l3, et) = eth.l3().ok_or(OffloadError::Malformed)?;
        let (l4, v6) = match et {
            ethertype::IPV4 => {
                let ip = frame.get(l3..l3 + 20).ok_or(OffloadError::Malformed)?;
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                if ip[0] >> 4 != 4 || ihl < 20 {
                    return Err(OffloadError::Malformed);
                }
                if ip[9] != proto {
                    return Err(OffloadError::Unsupported);
                }
                (l3 + ihl, false)
            }
            ethertype::IPV6 => {
                let ip = frame.get(l3..l3 + 40).ok_or(OffloadError::Malformed)?;
                if ip[0] >> 4 != 6 {
                    return Err(OffloadError::Malformed);
                }
                if ip[6] != proto {
                    return Err(OffloadError::Unsupported);
                }
                (l3 + 40, true)
            }
            _ => return Err(OffloadError::Unsupported),
        };
        if udp {
            if l4 + 8 > frame.len() {
                return Err(OffloadError::Malformed);
            }
            return Ok(TcpLayout { l3, l4, hdr_len: l4 + 8, v6, udp });
        }
        let doff = usize::from(*frame.get(l4 + 12).ok_or(OffloadError::Malformed)? >> 4) * 4;
        if doff < 20 || l4 + doff > frame.len() {
            return Err(OffloadError::Malformed);
        }
        Ok(TcpLayout { l3, l4, hdr_len: l4 + doff, v6, udp })
    }

    /// Where the IP packet of `frame` ends by its length field; `None` for an IPv4 fragment.
    fn ip_end(&self, frame: &[u8]) -> Option<usize> {
        let ip = &frame[self.l3..];
        if self.v6 {
            return Some(self.l4 + usize::from(u16::from_be_bytes([ip[4], ip[5]])));
        }
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
            return None;
        }
        Some(self.l3 + usize::from(u16::from_be_bytes([ip[2], ip[3]])))
    }

    /// Whether `frame` may join a run of this layout that `first` started, up to its
    /// transport header: the run's `payload` bytes fit one IP packet, the Ethernet header is
    /// the same, and so is the IP header but for length, ID and checksum (IPv4 with `df`: only
    /// with DF set; fragments are never parsed into runs).
    fn continues(&self, first: &[u8], frame: &[u8], payload: usize, df: bool) -> bool {
        if self.l3 + IP_MAX < self.hdr_len + payload || first[..self.l3] != frame[..self.l3] {
            return false;
        }
        let (p, q) = (&first[self.l3..self.l4], &frame[self.l3..self.l4]);
        if self.v6 {
            p[..4] == q[..4] && p[6..40] == q[6..40]
        } else {
            // version/IHL/TOS; flags+fragment; TTL, protocol; addresses; options
            p[0..2] == q[0..2] && (!df || p[6] & 0x40 != 0) && p[6..10] == q[6..10] && p[12..] == q[12..]
        }
    }

    /// The first frame's headers in `out[..hdr_len]` for a run of `payload` bytes: IP lengths
    /// (and IPv4 checksum) set, and the transport checksum at `csum_offset` set to the
    /// pseudo-header sum (partial: the host finishes it, `NEEDS_CSUM`).
    fn run_header<'a>(&self, first: &[u8], out: &'a mut [u8], payload: usize, csum_offset: u16) -> &'a mut [u8] {
        let hdr = &mut out[..self.hdr_len];
        hdr.copy_from_slice(&first[..self.hdr_len]);
        self.set_ip_len(hdr, payload, None);
        let partial = checksum::fold(self.pseudo(hdr, self.hdr_len - self.l4 + payload));
        let at = self.l4 + usize::from(csum_offset);
        hdr[at..at + 2].copy_from_slice(&partial.to_be_bytes());
        hdr
    }

    /// Pseudo-header sum for a TCP (UDP) segment of `l4_len` bytes (header + payload).
    fn pseudo(&self, hdr: &[u8], l4_len: usize) -> u64 {
        let ip = &hdr[self.l3..];
        let proto = if self.udp { 17 } else { 6 };
        if self.v6 {
            let (s, d) = (ip[8..24].try_into().unwrap_or([0; 16]), ip[24..40].try_into().unwrap_or([0; 16]));
            checksum::pseudo_v6(&s, &d, proto, l4_len as u32)
        } else {
            let (s, d) = (ip[12..16].try_into().unwrap_or([0; 4]), ip[16..20].try_into().unwrap_or([0; 4]));
            checksum::pseudo_v4(&s, &d, proto, l4_len as u32)
        }
    }

    /// Write the IP length fields (and IPv4 header checksum) of `hdr` for `payload` bytes of
    /// TCP payload, with IPv4 ID `id` if given.
    fn set_ip_len(&self, hdr: &mut [u8], payload: usize, id: Option<u16>) {
        let l4_total = self.hdr_len - self.l4 + payload;
        if self.v6 {
            hdr[self.l3 + 4..self.l3 + 6].copy_from_slice(&(l4_total as u16).to_be_bytes());
        } else {
            let ip = &mut hdr[self.l3..self.l4];
            ip[2..4].copy_from_slice(&((self.l4 - self.l3 + l4_total) as u16).to_be_bytes());
            if let Some(id) = id {
                ip[4..6].copy_from_slice(&id.to_be_bytes());
            }
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::finish(checksum::sum(ip, 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
    }
}

/// How to cut one TCP super-frame into MSS-sized segments, or a UDP one (`gso_type`
/// `UDP_L4`, a sender's UDP GSO) into datagrams of `gso_size` payload bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsoPlan {
    pub layout: TcpLayout,
    /// Payload bytes per segment (the last may be shorter).
    pub mss: usize,
    /// Total TCP payload of the super-frame.
    pub payload_len: usize,
    pub segments: usize,
}

impl TsoPlan {
    /// Check a super-frame against its virtio-net header. The header's `hdr_len` is not
    /// trusted (the kernel may set it to more than the headers); offsets are recomputed.
    pub fn new(frame: &[u8], h: &VnetHdr) -> Result<TsoPlan, OffloadError> {
        let udp = h.gso_type == gso::UDP_L4;
        let layout = if udp { TcpLayout::parse_udp(frame)? } else { TcpLayout::parse(frame)? };
        match h.gso_type & !gso::ECN {
            gso::TCPV4 if !layout.v6 => {}
            gso::TCPV6 if layout.v6 => {}
            gso::UDP_L4 => {}
            gso::TCPV4 | gso::TCPV6 => return Err(OffloadError::Malformed),
            _ => return Err(OffloadError::Unsupported),
        }
        let csum_offset = if udp { UDP_CSUM_OFFSET } else { TCP_CSUM_OFFSET };
        if h.needs_csum() && (usize::from(h.csum_start) != layout.l4 || h.csum_offset != csum_offset) {
            return Err(OffloadError::Malformed);
        }
        let mss = usize::from(h.gso_size);
        let payload_len = frame.len() - layout.hdr_len;
        if mss == 0 || payload_len == 0 {
            return Err(OffloadError::Malformed);
        }
        Ok(TsoPlan { layout, mss, payload_len, segments: payload_len.div_ceil(mss) })
    }

    /// Length of the headers each segment gets (Ethernet through TCP).
    pub fn header_len(&self) -> usize {
        self.layout.hdr_len
    }

    /// Byte range of segment `i`'s payload within the super-frame.
    pub fn payload_range(&self, i: usize) -> std::ops::Range<usize> {
        let start = self.layout.hdr_len + i * self.mss;
        let end = (start + self.mss).min(self.layout.hdr_len + self.payload_len);
        start..end
    }

    /// Write segment `i`'s headers into `out[..header_len()]`, with its TCP checksum computed
    /// over the payload. `frame` is the super-frame the plan was made for; `out` must hold
    /// [`TsoPlan::header_len`] bytes.
    pub fn write_header(&self, frame: &[u8], i: usize, out: &mut [u8]) {
        let l = &self.layout;
        let hdr = &mut out[..l.hdr_len];
        hdr.copy_from_slice(&frame[..l.hdr_len]);
        let range = self.payload_range(i);
        let seg_len = range.len();
        let last = i + 1 == self.segments;
        let id = if l.v6 { None } else { Some(u16::from_be_bytes([frame[l.l3 + 4], frame[l.l3 + 5]]).wrapping_add(i as u16)) };
        l.set_ip_len(hdr, seg_len, id);
        if l.udp {
            // one datagram per segment: its UDP length, its full checksum (zero sent as all ones)
            let udp_len = 8 + seg_len;
            hdr[l.l4 + 4..l.l4 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            hdr[l.l4 + 6..l.l4 + 8].copy_from_slice(&[0, 0]);
            let acc = checksum::sum(&frame[range], checksum::sum(&hdr[l.l4..], l.pseudo(hdr, udp_len)));
            let c = match checksum::finish(acc) {
                0 => 0xffff,
                c => c,
            };
            hdr[l.l4 + 6..l.l4 + 8].copy_from_slice(&c.to_be_bytes());
            return;
        }
        let tcp = &mut hdr[l.l4..];
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]).wrapping_add((i * self.mss) as u32);
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        if !last {
            tcp[13] &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            tcp[13] &= !TCP_CWR;
        }
        tcp[16..18].copy_from_slice(&[0, 0]);
        let l4_len = l.hdr_len - l.l4 + seg_len;
        let acc = checksum::sum(&frame[range], checksum::sum(&hdr[l.l4..], l.pseudo(hdr, l4_len)));
        hdr[l.l4 + 16..l.l4 + 18].copy_from_slice(&checksum::finish(acc).to_be_bytes());
    }

    /// Segment `i` as an ordinary frame in `out` (replacing what it held): its headers, then
    /// its payload.
    pub fn segment_into(&self, frame: &[u8], i: usize, out: &mut Vec<u8>) {
        out.clear();
        out.resize(self.header_len(), 0);
        self.write_header(frame, i, out);
        out.extend_from_slice(&frame[self.payload_range(i)]);
    }
}

/// A complete Ethernet + IPv4/IPv6 + TCP segment that may be coalesced with its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSeg {
    pub layout: TcpLayout,
    pub seq: u32,
    pub flags: u8,
    /// TCP payload bytes (from the IP length; Ethernet padding excluded).
    pub payload_len: usize,
}

impl TcpSeg {
    /// Parse a frame as one TCP segment; `None` if it is anything else (including IPv4
    /// fragments and packets whose IP length disagrees with the frame).
    pub fn parse(frame: &[u8]) -> Option<TcpSeg> {
        let layout = TcpLayout::parse(frame).ok()?;
        let ip_end = layout.ip_end(frame)?;
        if ip_end < layout.hdr_len || ip_end > frame.len() {
            return None;
        }
        let tcp = &frame[layout.l4..];
        Some(TcpSeg {
            layout,
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            flags: tcp[13],
            payload_len: ip_end - layout.hdr_len,
        })
    }

    /// The frame without Ethernet padding.
    pub fn frame_len(&self) -> usize {
        self.layout.hdr_len + self.payload_len
    }

    /// The TCP payload of `frame`.
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.layout.hdr_len..self.frame_len()]
    }

    /// Whether the IPv4 header checksum and the TCP checksum are correct.
    pub fn checksums_ok(&self, frame: &[u8]) -> bool {
        let l = &self.layout;
        if !l.v6 && !checksum::verify(&frame[l.l3..l.l4], 0) {
            return false;
        }
        let l4_len = self.frame_len() - l.l4;
        checksum::verify(&frame[l.l4..self.frame_len()], l.pseudo(frame, l4_len))
    }

    /// Whether this segment may be part of a coalesced run at all: data, and no flag but ACK
    /// and PSH (SYN, FIN, RST, URG, ECE, CWR each end coalescing, as in the kernel).
    pub fn mergeable(&self) -> bool {
        self.payload_len > 0 && self.flags & TCP_ACK != 0 && self.flags & !(TCP_ACK | TCP_PSH) == 0
    }
}

/// A chain of coalescable segments of one flow, in order. The caller keeps the frames; the
/// run remembers what the next segment must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: TcpSeg,
    /// Payload size of every segment but the last (the first segment's size).
    pub mss: usize,
    pub payload_len: usize,
    pub segments: usize,
    next_seq: u32,
    psh: bool,
    /// A shorter segment or PSH ended the run: nothing may follow.
    closed: bool,
}

impl Run {
    /// Start a run with a [`TcpSeg::mergeable`] segment.
    pub fn start(first: TcpSeg) -> Run {
        Run {
            first,
            mss: first.payload_len,
            payload_len: first.payload_len,
            segments: 1,
            next_seq: first.seq.wrapping_add(first.payload_len as u32),
            psh: first.flags & TCP_PSH != 0,
            closed: first.flags & TCP_PSH != 0,
        }
    }

    /// Append `seg` (from `frame`) if it continues the run whose first frame is `first_frame`;
    /// the kernel's GRO rules: same Ethernet header, same IP header but for length, ID and
    /// checksum (IPv4 with DF set), same ports, ACK number, window and options; consecutive
    /// sequence number; not larger than the first segment; the run is not closed.
    pub fn try_push(&mut self, first_frame: &[u8], seg: &TcpSeg, frame: &[u8]) -> bool {
        let (a, b) = (&self.first.layout, &seg.layout);
        if self.closed || self.segments >= MAX_RUN_SEGMENTS || a != b || !seg.mergeable() || seg.seq != self.next_seq || seg.payload_len > self.mss {
            return false;
        }
        // the ID may differ only with DF set (RFC 6864)
        if !a.continues(first_frame, frame, self.payload_len + seg.payload_len, true) {
            return false;
        }
        let (s, t) = (&first_frame[a.l4..a.hdr_len], &frame[a.l4..a.hdr_len]);
        // ports, ACK number, data offset, window, options (flags may add PSH)
        if s[0..4] != t[0..4] || s[8..13] != t[8..13] || s[14..16] != t[14..16] || s[20..] != t[20..] {
            return false;
        }
        self.payload_len += seg.payload_len;
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(seg.payload_len as u32);
        if seg.flags & TCP_PSH != 0 {
            self.psh = true;
            self.closed = true;
        }
        if seg.payload_len < self.mss {
            self.closed = true;
        }
        true
    }

    /// Write the headers of the coalesced frame (the first frame's, with lengths, IPv4
    /// checksum, PSH and a partial TCP checksum set) into `out[..first.layout.hdr_len]`, and
    /// return the virtio-net header to write in front: `NEEDS_CSUM` (the kernel treats the
    /// payload as checked; the caller verified every segment) and, for more than one
    /// segment, GSO TCPV4/TCPV6 with the run's MSS.
    pub fn header(&self, first_frame: &[u8], out: &mut [u8]) -> VnetHdr {
        let l = &self.first.layout;
        let hdr = l.run_header(first_frame, out, self.payload_len, TCP_CSUM_OFFSET);
        if self.psh {
            hdr[l.l4 + 13] |= TCP_PSH;
        }
        let gso_type = match (self.segments > 1, l.v6) {
            (false, _) => gso::NONE,
            (true, false) => gso::TCPV4,
            (true, true) => gso::TCPV6,
        };
        VnetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type,
            hdr_len: l.hdr_len as u16,
            gso_size: if self.segments > 1 { self.mss as u16 } else { 0 },
            csum_start: l.l4 as u16,
            csum_offset: TCP_CSUM_OFFSET,
        }
    }
}

/// UDP ports whose datagrams are never coalesced: DHCP and DHCPv6, which the host's daemons
/// (and the snooping) must see one by one.
const UDP_NO_COALESCE: [u16; 4] = [67, 68, 546, 547];

/// A complete Ethernet + IPv4/IPv6 + UDP datagram that may be coalesced with its neighbours
/// into a UDP super-frame (`gso_type` `UDP_L4`) for a TAP that takes `TUN_F_USO4/6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSeg {
    pub layout: TcpLayout,
    /// UDP payload bytes (from the lengths; Ethernet padding excluded).
    pub payload_len: usize,
}

impl UdpSeg {
    /// Parse a frame as one UDP datagram; `None` for anything else, IPv4 with options or
    /// fragments included, and for a datagram whose UDP length disagrees with the IP length.
    pub fn parse(frame: &[u8]) -> Option<UdpSeg> {
        let layout = TcpLayout::parse_udp(frame).ok()?;
        if !layout.v6 && layout.l4 - layout.l3 != 20 {
            return None;
        }
        let ip_end = layout.ip_end(frame)?;
        if ip_end < layout.hdr_len || ip_end > frame.len() {
            return None;
        }
        let udp_len = usize::from(u16::from_be_bytes([frame[layout.l4 + 4], frame[layout.l4 + 5]]));
        if udp_len != ip_end - layout.l4 {
            return None;
        }
        Some(UdpSeg { layout, payload_len: ip_end - layout.hdr_len })
    }

    /// The frame without Ethernet padding.
    pub fn frame_len(&self) -> usize {
        self.layout.hdr_len + self.payload_len
    }

    /// The UDP payload of `frame`.
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.layout.hdr_len..self.frame_len()]
    }

    fn ports(frame: &[u8], l: &TcpLayout) -> [u16; 2] {
        [u16::from_be_bytes([frame[l.l4], frame[l.l4 + 1]]), u16::from_be_bytes([frame[l.l4 + 2], frame[l.l4 + 3]])]
    }

    /// Whether this datagram may be part of a coalesced run at all: it carries data and is
    /// not DHCP/DHCPv6.
    pub fn mergeable(&self, frame: &[u8]) -> bool {
        self.payload_len > 0 && !Self::ports(frame, &self.layout).iter().any(|p| UDP_NO_COALESCE.contains(p))
    }

    /// Whether the IPv4 header checksum and the UDP checksum are correct (zero, "none", is
    /// correct over IPv4 only).
    pub fn checksums_ok(&self, frame: &[u8]) -> bool {
        let l = &self.layout;
        if !l.v6 && !checksum::verify(&frame[l.l3..l.l4], 0) {
            return false;
        }
        if frame[l.l4 + 6..l.l4 + 8] == [0, 0] {
            return !l.v6;
        }
        let l4_len = self.frame_len() - l.l4;
        checksum::verify(&frame[l.l4..self.frame_len()], l.pseudo(frame, l4_len))
    }
}

/// A chain of datagrams of one UDP flow that go to the host as one `UDP_L4` super-frame: the
/// host's stack cuts it back into the datagrams (or hands it whole to a socket with
/// `UDP_GRO`). The kernel's UDP GRO rules: same Ethernet header, same IP header but for
/// length, ID and checksum, same ports, every payload as long as the first but a shorter last.
///
/// Segmented, every datagram gets the first one's IPv4 ID plus its index; the IDs the sender
/// chose are not kept (they mean nothing for datagrams that are not fragments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRun {
    pub first: UdpSeg,
    /// Payload size of every datagram but the last (the first one's size).
    pub size: usize,
    pub payload_len: usize,
    pub segments: usize,
    /// A shorter datagram ended the run.
    closed: bool,
}

impl UdpRun {
    /// Start a run with a [`UdpSeg::mergeable`] datagram.
    pub fn start(first: UdpSeg) -> UdpRun {
        UdpRun { first, size: first.payload_len, payload_len: first.payload_len, segments: 1, closed: false }
    }

    /// Append `seg` (from `frame`) if it continues the run whose first frame is `first_frame`.
    pub fn try_push(&mut self, first_frame: &[u8], seg: &UdpSeg, frame: &[u8]) -> bool {
        let (a, b) = (&self.first.layout, &seg.layout);
        if self.closed || self.segments >= MAX_RUN_SEGMENTS || a != b || seg.payload_len == 0 || seg.payload_len > self.size {
            return false;
        }
        // same ports
        if !a.continues(first_frame, frame, self.payload_len + seg.payload_len, false) || first_frame[a.l4..a.l4 + 4] != frame[a.l4..a.l4 + 4] {
            return false;
        }
        self.payload_len += seg.payload_len;
        self.segments += 1;
        if seg.payload_len < self.size {
            self.closed = true;
        }
        true
    }

    /// Write the headers of the coalesced frame (the first datagram's, with IP and UDP lengths
    /// of the whole and a partial UDP checksum) into `out[..first.layout.hdr_len]`, and return
    /// the virtio-net header for it: `NEEDS_CSUM` and, for more than one datagram, `UDP_L4`
    /// with the run's payload size.
    pub fn header(&self, first_frame: &[u8], out: &mut [u8]) -> VnetHdr {
        let l = &self.first.layout;
        let hdr = l.run_header(first_frame, out, self.payload_len, UDP_CSUM_OFFSET);
        hdr[l.l4 + 4..l.l4 + 6].copy_from_slice(&((8 + self.payload_len) as u16).to_be_bytes());
        let gso = self.segments > 1;
        VnetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: if gso { gso::UDP_L4 } else { gso::NONE },
            hdr_len: l.hdr_len as u16,
            gso_size: if gso { self.size as u16 } else { 0 },
            csum_start: l.l4 as u16,
            csum_offset: UDP_CSUM_OFFSET,
        }
    }
}

/// Room for the headers of a run's frame ([`TcpLayout::parse`] takes at most Ethernet with
/// two VLAN tags, 22 bytes, IPv4 with the longest options, 60, and TCP with the longest, 60:
/// 142 bytes).
pub const MAX_HEADER_LEN: usize = 160;

/// The receive side's GRO driver: segments from one receive batch chained into one frame for
/// a TAP, the payloads borrowed from the receive buffers (nothing is copied until the frame
/// is written). Start it with a [`TcpSeg::mergeable`] segment, [`Coalescer::push`] the
/// segments that follow while it takes them, then write [`Coalescer::header`] and
/// [`Coalescer::payloads`] in that order, behind the virtio-net header it returns.
#[derive(Debug, Clone)]
pub struct Coalescer<'a> {
    run: Chain,
    first: &'a [u8],
    payloads: [&'a [u8]; MAX_RUN_SEGMENTS],
    n: usize,
}

/// What a [`Coalescer`] chains: TCP segments or UDP datagrams.
#[derive(Debug, Clone, Copy)]
enum Chain {
    Tcp(Run),
    Udp(UdpRun),
}

/// What a [`Coalescer`] takes: a TCP segment or a UDP datagram, parsed from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Tcp(TcpSeg),
    Udp(UdpSeg),
}

impl From<TcpSeg> for Segment {
    fn from(s: TcpSeg) -> Self {
        Segment::Tcp(s)
    }
}

impl From<UdpSeg> for Segment {
    fn from(s: UdpSeg) -> Self {
        Segment::Udp(s)
    }
}

impl Segment {
    /// `frame` as something a run may take: a mergeable TCP segment, or (`udp`: the TAP takes
    /// UDP segmentation offload) a mergeable UDP datagram, with its checksums verified unless
    /// they are `partial` (a run goes to the TAP with a partial checksum anyway). A datagram
    /// with a wrong checksum is none: it goes alone, for the host to count.
    pub fn parse(frame: &[u8], partial: bool, udp: bool) -> Option<Segment> {
        if let Some(s) = TcpSeg::parse(frame) {
            return (s.mergeable() && (partial || s.checksums_ok(frame))).then_some(Segment::Tcp(s));
        }
        let s = UdpSeg::parse(frame).filter(|_| udp)?;
        (s.mergeable(frame) && (partial || s.checksums_ok(frame))).then_some(Segment::Udp(s))
    }

    fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        match self {
            Segment::Tcp(s) => s.payload(frame),
            Segment::Udp(s) => s.payload(frame),
        }
    }
}

impl<'a> Coalescer<'a> {
    /// A run of one segment or datagram, `seg` parsed from `frame`.
    pub fn start(seg: impl Into<Segment>, frame: &'a [u8]) -> Self {
        let seg = seg.into();
        let run = match seg {
            Segment::Tcp(s) => Chain::Tcp(Run::start(s)),
            Segment::Udp(s) => Chain::Udp(UdpRun::start(s)),
        };
        let mut payloads: [&'a [u8]; MAX_RUN_SEGMENTS] = [&[]; MAX_RUN_SEGMENTS];
        payloads[0] = seg.payload(frame);
        Coalescer { run, first: frame, payloads, n: 1 }
    }

    /// Take `seg` (from `frame`) if it continues the run ([`Run::try_push`],
    /// [`UdpRun::try_push`]); false leaves the run as it was, for the caller to write it and
    /// start the next one with `seg`.
    pub fn push(&mut self, seg: impl Into<Segment>, frame: &'a [u8]) -> bool {
        let seg = seg.into();
        let taken = self.n < MAX_RUN_SEGMENTS
            && match (&mut self.run, &seg) {
                (Chain::Tcp(r), Segment::Tcp(s)) => r.try_push(self.first, s, frame),
                (Chain::Udp(r), Segment::Udp(s)) => r.try_push(self.first, s, frame),
                (Chain::Tcp(_), Segment::Udp(_)) | (Chain::Udp(_), Segment::Tcp(_)) => false,
            };
        if taken {
            self.payloads[self.n] = seg.payload(frame);
            self.n += 1;
        }
        taken
    }

    /// Whether this is a run of UDP datagrams.
    pub fn is_udp(&self) -> bool {
        matches!(self.run, Chain::Udp(_))
    }

    /// Write the frame's headers into `out` and return their length with the virtio-net
    /// header that goes in front ([`Run::header`]).
    ///
    /// # Panics
    /// If `out` is shorter than the first segment's headers ([`MAX_HEADER_LEN`] always fits).
    pub fn header(&self, out: &mut [u8]) -> (VnetHdr, usize) {
        match &self.run {
            Chain::Tcp(r) => (r.header(self.first, out), r.first.layout.hdr_len),
            Chain::Udp(r) => (r.header(self.first, out), r.first.layout.hdr_len),
        }
    }

    /// The segments' payloads, in order, to follow the headers.
    pub fn payloads(&self) -> &[&'a [u8]] {
        &self.payloads[..self.n]
    }

    /// Length of the coalesced frame (headers and payloads, no virtio-net header).
    pub fn frame_len(&self) -> usize {
        match &self.run {
            Chain::Tcp(r) => r.first.layout.hdr_len + r.payload_len,
            Chain::Udp(r) => r.first.layout.hdr_len + r.payload_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A TCP super-frame as the kernel hands it over a TAP: Ethernet (optionally VLAN 100),
    /// IPv4 with DF or IPv6, TCP with a timestamp option, PSH set, partial checksum.
    fn super_frame(v6: bool, vlan: bool, payload: &[u8]) -> (Vec<u8>, VnetHdr) {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v6 { b.ipv6(SRC6, DST6, 64) } else { b.ipv4([198, 51, 100, 1], [198, 51, 100, 2], 64) };
        let b = b.tcp(40000, 5201, 0xfffff000, 64240).ack(777).psh().options(&[etherparse::TcpOptionElement::Noop, etherparse::TcpOptionElement::Noop, etherparse::TcpOptionElement::Timestamp(11, 22)]).unwrap();
        let mut f = Vec::new();
        b.write(&mut f, payload).unwrap();
        if vlan {
            // 802.1Q tag, PCP 0, VID 100, between the addresses and the ethertype
            f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        }
        let l = TcpLayout::parse(&f).unwrap();
        if !l.v6 {
            f[l.l3 + 6] |= 0x40; // DF, as Linux TCP sets it
            f[l.l3 + 4..l.l3 + 6].copy_from_slice(&0xfffeu16.to_be_bytes()); // ID about to wrap
            l.set_ip_len(&mut f, payload.len(), None);
        }
        // as the kernel hands it over: partial checksum (pseudo-header sum only)
        let l4_len = f.len() - l.l4;
        let p = checksum::fold(l.pseudo(&f, l4_len));
        f[l.l4 + 16..l.l4 + 18].copy_from_slice(&p.to_be_bytes());
        let h = VnetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: if v6 { gso::TCPV6 } else { gso::TCPV4 },
            hdr_len: f.len() as u16, // the kernel may over-state it; must not be trusted
            gso_size: 1398,
            csum_start: l.l4 as u16,
            csum_offset: 16,
        };
        (f, h)
    }

    fn fix_tcp_checksum(s: &mut [u8]) {
        let l = TcpLayout::parse(s).unwrap();
        s[l.l4 + 16..l.l4 + 18].copy_from_slice(&[0, 0]);
        let ps = l.pseudo(s, s.len() - l.l4);
        let v = checksum::finish(checksum::sum(&s[l.l4..], ps));
        s[l.l4 + 16..l.l4 + 18].copy_from_slice(&v.to_be_bytes());
    }

    /// Segment with the plan, returning complete frames.
    fn split(f: &[u8], h: &VnetHdr) -> Vec<Vec<u8>> {
        let plan = TsoPlan::new(f, h).unwrap();
        (0..plan.segments)
            .map(|i| {
                let mut hdr = vec![0u8; plan.header_len()];
                plan.write_header(f, i, &mut hdr);
                hdr.extend_from_slice(&f[plan.payload_range(i)]);
                hdr
            })
            .collect()
    }

    struct Seen {
        payload: Vec<u8>,
        seq: u32,
        psh: bool,
        fin: bool,
        ip_id: Option<u16>,
        vlan: Option<u16>,
    }

    /// Parse a segment with etherparse and check every checksum against its own computation.
    fn oracle(frame: &[u8]) -> Seen {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let vlan = p.vlan().map(|v| match v {
            etherparse::VlanSlice::SingleVlan(s) => s.vlan_identifier().value(),
            etherparse::VlanSlice::DoubleVlan(d) => d.outer.vlan_identifier().value(),
        });
        let Some(TransportSlice::Tcp(tcp)) = p.transport.clone() else { panic!("no tcp") };
        let (ok, ip_id) = match p.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "ipv4 header checksum");
                assert_eq!(usize::from(h.total_len), frame.len() - 14 - if vlan.is_some() { 4 } else { 0 });
                (tcp.to_header().calc_checksum_ipv4(&h, tcp.payload()).unwrap() == tcp.checksum(), Some(h.identification))
            }
            NetSlice::Ipv6(ip) => {
                let h = ip.header().to_header();
                (tcp.to_header().calc_checksum_ipv6(&h, tcp.payload()).unwrap() == tcp.checksum(), None)
            }
            _ => panic!("not ip"),
        };
        assert!(ok, "tcp checksum");
        Seen { payload: tcp.payload().to_vec(), seq: tcp.sequence_number(), psh: tcp.psh(), fin: tcp.fin(), ip_id, vlan }
    }

    #[test]
    fn vnet_header_round_trips_in_little_endian() {
        let h = VnetHdr { flags: 1, gso_type: 1, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        let b = h.to_bytes();
        assert_eq!(b, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
        assert!(h.is_gso() && h.needs_csum());
        assert!(!VnetHdr::NONE.is_gso());
    }

    #[test]
    fn tso_segments_are_valid_tcp_segments_that_carry_the_payload_in_order() {
        for (v6, vlan) in [(false, false), (true, false), (false, true), (true, true)] {
            let payload = data(10_000);
            let (f, h) = super_frame(v6, vlan, &payload);
            let segs = split(&f, &h);
            assert_eq!(segs.len(), 10_000usize.div_ceil(1398), "v6={v6} vlan={vlan}");
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let seen = oracle(s);
                let last = i + 1 == segs.len();
                assert_eq!(seen.seq, 0xfffff000u32.wrapping_add((i * 1398) as u32), "seq of segment {i}");
                assert_eq!(seen.psh, last, "PSH only on the last segment");
                assert!(!seen.fin);
                assert_eq!(seen.payload.len(), if last { 10_000 - 7 * 1398 } else { 1398 });
                if !v6 {
                    assert_eq!(seen.ip_id, Some(0xfffeu16.wrapping_add(i as u16)), "IPv4 ID increments");
                }
                assert_eq!(seen.vlan, vlan.then_some(100));
                joined.extend_from_slice(&seen.payload);
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn tso_rejects_a_header_that_does_not_match_the_frame() {
        let (f, h) = super_frame(false, false, &data(3000));
        assert_eq!(TsoPlan::new(&f, &VnetHdr { gso_type: gso::TCPV6, ..h }), Err(OffloadError::Malformed));
        assert_eq!(TsoPlan::new(&f, &VnetHdr { csum_start: 20, ..h }), Err(OffloadError::Malformed));
        assert_eq!(TsoPlan::new(&f, &VnetHdr { gso_size: 0, ..h }), Err(OffloadError::Malformed));
        assert_eq!(TsoPlan::new(&f, &VnetHdr { gso_type: gso::UDP_L4, ..h }), Err(OffloadError::Unsupported));
        assert_eq!(TsoPlan::new(&f[..40], &h), Err(OffloadError::Malformed));
        // a frame whose data offset points past its end
        let mut g = f.clone();
        g.truncate(34 + 30);
        assert!(TsoPlan::new(&g, &h).is_err());
        // every truncation of a valid frame is an error or a valid plan, never a panic
        for n in 0..f.len().min(200) {
            if let Ok(p) = TsoPlan::new(&f[..n], &h) {
                let mut out = vec![0u8; p.header_len()];
                p.write_header(&f[..n], 0, &mut out);
            }
        }
    }

    #[test]
    fn partial_checksum_is_finished_like_etherparse_computes_it() {
        for v6 in [false, true] {
            let (mut f, h) = super_frame(v6, false, &data(999));
            finish_partial_checksum(&mut f, &h).unwrap();
            oracle(&f);
        }
        let (mut f, h) = super_frame(false, false, &data(10));
        let short = f.len() - 10 - 20 - 12 + 1;
        assert_eq!(finish_partial_checksum(&mut f[..short], &h), Err(OffloadError::Malformed));
    }

    /// Coalesce frames with the daemon's driver, [`Coalescer`]: one run at a time, written
    /// (headers, then the payloads, as the TAP write does) when a segment does not fit.
    /// Returns (virtio header, complete frame) per run, the checksum finished as the kernel
    /// would.
    fn coalesce(frames: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let write = |c: Coalescer<'_>| {
            let mut hdr = [0u8; MAX_HEADER_LEN];
            let (h, hlen) = c.header(&mut hdr);
            let mut f = hdr[..hlen].to_vec();
            for p in c.payloads() {
                f.extend_from_slice(p);
            }
            assert_eq!(f.len(), c.frame_len());
            finish_partial_checksum(&mut f, &h).unwrap();
            (h, f)
        };
        let mut out = Vec::new();
        let mut cur: Option<Coalescer<'_>> = None;
        for fr in frames {
            let seg = TcpSeg::parse(fr).unwrap();
            assert!(seg.checksums_ok(fr));
            if cur.as_mut().is_some_and(|c| c.push(seg, fr)) {
                continue;
            }
            out.extend(cur.replace(Coalescer::start(seg, fr)).map(write));
        }
        out.extend(cur.map(write));
        out
    }

    #[test]
    fn segments_coalesce_back_into_the_super_frame() {
        for (v6, vlan) in [(false, false), (true, false), (false, true), (true, true)] {
            let payload = data(20_000);
            let (mut f, h) = super_frame(v6, vlan, &payload);
            let segs = split(&f, &h);
            let runs = coalesce(&segs);
            assert_eq!(runs.len(), 1, "one run");
            let (vh, g) = &runs[0];
            assert_eq!(vh.gso_type, if v6 { gso::TCPV6 } else { gso::TCPV4 });
            assert_eq!(usize::from(vh.gso_size), 1398);
            assert_eq!(usize::from(vh.csum_start), TcpLayout::parse(&f).unwrap().l4);
            // the rebuilt frame is the original super-frame, checksum finished (IPv4 ID is the first's)
            finish_partial_checksum(&mut f, &h).unwrap();
            assert_eq!(g, &f, "v6={v6} vlan={vlan}");
            let seen = oracle(g);
            assert!(seen.psh);
            assert_eq!(seen.payload, payload);
        }
    }

    #[test]
    fn coalescing_stops_where_the_kernel_would() {
        let payload = data(1398 * 6);
        let (f, h) = super_frame(false, false, &payload);
        let segs = split(&f, &h);
        // a gap in sequence numbers: two runs
        let gap: Vec<Vec<u8>> = segs.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, s)| s.clone()).collect();
        assert_eq!(coalesce(&gap).iter().map(|(h, _)| h.gso_type).collect::<Vec<_>>(), vec![gso::TCPV4, gso::TCPV4]);
        // a different ACK number in the middle
        let mut ack = segs.clone();
        for s in &mut ack[3..] {
            let l = TcpLayout::parse(s).unwrap();
            s[l.l4 + 11] ^= 1;
            fix_tcp_checksum(s);
        }
        assert_eq!(coalesce(&ack).len(), 2);
        // another flow (port) interleaved: never merged into the first
        let (f2, h2) = super_frame(false, false, &data(1398 * 2));
        let mut other = split(&f2, &h2);
        for s in &mut other {
            let l = TcpLayout::parse(s).unwrap();
            s[l.l4 + 1] ^= 1; // source port
            fix_tcp_checksum(s);
        }
        let mixed = vec![segs[0].clone(), other[0].clone(), segs[1].clone()];
        let runs = coalesce(&mixed);
        assert_eq!(runs.len(), 3);
        for (_, g) in &runs {
            oracle(g);
        }
        // a short segment (the last one, with PSH) ends a run; what follows starts a new one
        let runs = coalesce(&[segs.clone(), segs.clone()].concat());
        assert_eq!(runs.len(), 2);
    }

    #[test]
    fn only_plain_data_segments_are_mergeable() {
        let (f, h) = super_frame(false, false, &data(100));
        let mut s = split(&f, &h).remove(0);
        let l = TcpLayout::parse(&s).unwrap();
        assert!(TcpSeg::parse(&s).unwrap().mergeable());
        for fl in [TCP_SYN, TCP_FIN, TCP_RST, 0x20, 0x40, TCP_CWR] {
            s[l.l4 + 13] = TCP_ACK | fl;
            assert!(!TcpSeg::parse(&s).unwrap().mergeable(), "flag {fl:#x}");
        }
        // a corrupted byte is caught by the checksum check
        s[l.l4 + 13] = TCP_ACK | TCP_PSH;
        let n = s.len();
        s[n - 1] ^= 0x55;
        assert!(!TcpSeg::parse(&s).unwrap().checksums_ok(&s));
        // an IPv4 fragment is not a segment
        let mut frag = split(&f, &h).remove(0);
        frag[l.l3 + 7] = 1;
        assert_eq!(TcpSeg::parse(&frag), None);
    }

    /// A frame as a Linux sender on an offloading link leaves it: checksum field = pseudo sum.
    fn make_partial(f: &mut [u8], l4: usize, off: usize, v6: bool, proto: u8, l4_len: usize) {
        let ip = &f[14..];
        let ps = if v6 {
            checksum::pseudo_v6(ip[8..24].try_into().unwrap(), ip[24..40].try_into().unwrap(), proto, l4_len as u32)
        } else {
            checksum::pseudo_v4(ip[12..16].try_into().unwrap(), ip[16..20].try_into().unwrap(), proto, l4_len as u32)
        };
        f[l4 + off..l4 + off + 2].copy_from_slice(&checksum::fold(ps).to_be_bytes());
    }

    #[test]
    fn partial_checksums_are_recognised_and_finished() {
        // TCP over IPv4 and IPv6: a complete segment is left alone, a partial one is found
        // and finished to exactly the complete checksum
        for v6 in [false, true] {
            let (f, h) = super_frame(v6, false, &data(1000));
            let good = split(&f, &h).remove(0);
            assert!(TcpSeg::parse(&good).unwrap().checksums_ok(&good));
            let l = TcpLayout::parse(&good).unwrap();
            assert_eq!(PartialCsum::detect(&good), None, "complete checksum taken for partial (v6 {v6})");
            let mut p = good.clone();
            make_partial(&mut p, l.l4, 16, v6, 6, good.len() - l.l4);
            assert!(!TcpSeg::parse(&p).unwrap().checksums_ok(&p));
            let pc = PartialCsum::detect(&p).expect("partial TCP checksum not recognised");
            assert_eq!((pc.start, pc.offset, pc.end), (l.l4, 16, good.len()));
            let vh = pc.vnet_hdr();
            assert!(vh.needs_csum() && !vh.is_gso());
            assert_eq!((usize::from(vh.csum_start), vh.csum_offset), (l.l4, 16));
            pc.finish(&mut p);
            assert_eq!(p, good);
            // a corrupted payload behind a complete checksum is not partial either
            let mut bad = good.clone();
            let n = bad.len();
            bad[n - 1] ^= 0x55;
            assert_eq!(PartialCsum::detect(&bad), None);
        }
        // UDP over IPv4, padded to the Ethernet minimum: the padding is not summed
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4([198, 51, 100, 1], [198, 51, 100, 2], 64).udp(5000, 53);
        let mut good = Vec::new();
        b.write(&mut good, b"abc").unwrap();
        good.resize(60, 0);
        let mut p = good.clone();
        make_partial(&mut p, 34, 6, false, 17, 11);
        let pc = PartialCsum::detect(&p).expect("partial UDP checksum not recognised");
        assert_eq!((pc.start, pc.offset, pc.end), (34, 6, 45));
        pc.finish(&mut p);
        assert_eq!(p, good);
        // ICMP, fragments, short or lying lengths: never partial
        let mut icmp = good.clone();
        icmp[14 + 9] = 1;
        assert_eq!(PartialCsum::detect(&icmp), None);
        let mut frag = p.clone();
        make_partial(&mut frag, 34, 6, false, 17, 11);
        frag[14 + 6] = 0x20; // MF
        assert_eq!(PartialCsum::detect(&frag), None);
        let mut long = p.clone();
        make_partial(&mut long, 34, 6, false, 17, 11);
        long[14 + 2..14 + 4].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(PartialCsum::detect(&long), None);
        for n in 0..p.len() {
            let _ = PartialCsum::detect(&p[..n]);
        }
    }

    #[test]
    fn a_tunnel_gso_packet_is_a_super_frame() {
        for v6 in [false, true] {
            // as a kernel peer's TSO burst arrives: IP length of the whole, partial checksum
            let (f, h) = super_frame(v6, false, &data(5000));
            // MTU 1450: 1450 - IP - TCP with timestamps = 1398 (IPv4), 1378 (IPv6)
            let (vh, plan) = tunnel_super_frame(&f, 1450).expect("not taken for a super-frame");
            let mss = if v6 { 1378 } else { 1398 };
            assert_eq!((vh.gso_type, vh.gso_size, vh.flags), (h.gso_type, mss, flags::NEEDS_CSUM));
            assert_eq!((usize::from(vh.csum_start), vh.csum_offset), (plan.layout.l4, 16));
            assert_eq!(plan.segments, 5000usize.div_ceil(usize::from(mss)));
            // its segments are what the sender's GSO would have sent
            for seg in split(&f, &vh) {
                assert!(TcpSeg::parse(&seg).unwrap().checksums_ok(&seg));
            }
            // an ordinary segment, a complete checksum, a lying length: not a super-frame
            let one = split(&f, &vh).remove(0);
            assert!(tunnel_super_frame(&one, 1450).is_none());
            let mut done = f.clone();
            let l = plan.layout;
            done[l.l4 + 16] ^= 0xff;
            assert!(tunnel_super_frame(&done, 1450).is_none());
            assert!(tunnel_super_frame(&f[..f.len() - 1], 1450).is_none());
            assert!(tunnel_super_frame(&f, 0).is_none());
            assert!(tunnel_super_frame(&f, 40).is_none());
            // not larger than the MTU: an ordinary (if odd) frame, not a burst
            assert!(tunnel_super_frame(&f, 9000).is_none());
        }
    }

    /// `sizes.len()` UDP datagrams of one flow (IPv4 with DF and rising IDs, or IPv6;
    /// optionally VLAN 100), payload `i` of `sizes[i]` bytes, complete checksums.
    fn udp_datagrams(v6: bool, vlan: bool, sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
                let b = if v6 { b.ipv6(SRC6, DST6, 64) } else { b.ipv4([198, 51, 100, 1], [198, 51, 100, 2], 64) };
                let payload: Vec<u8> = data(n + i).split_off(i);
                let mut f = Vec::new();
                b.udp(40000, 5201).write(&mut f, &payload).unwrap();
                if !v6 {
                    f[14 + 6] |= 0x40;
                    f[14 + 4..14 + 6].copy_from_slice(&(0xfff0u16.wrapping_add(i as u16 * 3)).to_be_bytes());
                    fix_ip_checksum(&mut f, 14);
                }
                if vlan {
                    f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
                }
                f
            })
            .collect()
    }

    fn fix_ip_checksum(f: &mut [u8], l3: usize) {
        f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(&f[l3..l3 + 20], 0));
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }

    fn fix_udp_checksum(f: &mut [u8]) {
        let l = TcpLayout::parse_udp(f).unwrap();
        f[l.l4 + 6..l.l4 + 8].copy_from_slice(&[0, 0]);
        let v = checksum::finish(checksum::sum(&f[l.l4..], l.pseudo(f, f.len() - l.l4)));
        f[l.l4 + 6..l.l4 + 8].copy_from_slice(&v.to_be_bytes());
    }

    /// Coalesce datagrams with [`Coalescer`] as the underlay thread does (only those that
    /// parse, are mergeable and have good checksums; others pass alone as `None`), then
    /// cut every super-frame back with [`TsoPlan`] and return each run's frames.
    fn udp_round_trip(frames: &[Vec<u8>]) -> Vec<(Option<VnetHdr>, Vec<Vec<u8>>)> {
        let cut = |c: Coalescer<'_>| {
            assert!(c.is_udp());
            let mut hdr = [0u8; MAX_HEADER_LEN];
            let (h, hlen) = c.header(&mut hdr);
            let mut f = hdr[..hlen].to_vec();
            for p in c.payloads() {
                f.extend_from_slice(p);
            }
            assert_eq!(f.len(), c.frame_len());
            let out = if h.is_gso() {
                let plan = TsoPlan::new(&f, &h).unwrap();
                (0..plan.segments)
                    .map(|i| {
                        let mut o = Vec::new();
                        plan.segment_into(&f, i, &mut o);
                        o
                    })
                    .collect()
            } else {
                finish_partial_checksum(&mut f, &h).unwrap();
                vec![f]
            };
            (Some(h), out)
        };
        let mut out = Vec::new();
        let mut cur: Option<Coalescer<'_>> = None;
        for fr in frames {
            let seg = UdpSeg::parse(fr).filter(|s| s.mergeable(fr) && s.checksums_ok(fr));
            let Some(seg) = seg else {
                out.extend(cur.take().map(cut));
                out.push((None, vec![fr.clone()]));
                continue;
            };
            if cur.as_mut().is_some_and(|c| c.push(seg, fr)) {
                continue;
            }
            out.extend(cur.replace(Coalescer::start(seg, fr)).map(cut));
        }
        out.extend(cur.map(cut));
        out
    }

    /// A datagram checked by etherparse: (UDP payload, IPv4 ID), every checksum verified.
    fn udp_oracle(frame: &[u8]) -> (Vec<u8>, Option<u16>) {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(TransportSlice::Udp(udp)) = p.transport.clone() else { panic!("no udp") };
        assert_eq!(usize::from(udp.length()), 8 + udp.payload().len());
        match p.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "ipv4 header checksum");
                assert_eq!(udp.to_header().calc_checksum_ipv4(&h, udp.payload()).unwrap(), udp.checksum(), "udp checksum");
                (udp.payload().to_vec(), Some(h.identification))
            }
            NetSlice::Ipv6(ip) => {
                let h = ip.header().to_header();
                assert_eq!(udp.to_header().calc_checksum_ipv6(&h, udp.payload()).unwrap(), udp.checksum(), "udp checksum");
                (udp.payload().to_vec(), None)
            }
            _ => panic!("not ip"),
        }
    }

    #[test]
    fn udp_datagrams_coalesce_and_cut_back_into_the_same_datagrams() {
        for (v6, vlan) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut sizes = vec![64; 40];
            sizes.push(20);
            let frames = udp_datagrams(v6, vlan, &sizes);
            let runs = udp_round_trip(&frames);
            assert_eq!(runs.len(), 1, "one run (v6={v6} vlan={vlan})");
            let (h, segs) = &runs[0];
            let h = h.unwrap();
            let l = TcpLayout::parse_udp(&frames[0]).unwrap();
            assert_eq!((h.flags, h.gso_type, h.gso_size), (flags::NEEDS_CSUM, gso::UDP_L4, 64));
            assert_eq!((usize::from(h.csum_start), h.csum_offset, usize::from(h.hdr_len)), (l.l4, 6, l.hdr_len));
            assert_eq!(segs.len(), frames.len());
            for (i, (seg, orig)) in segs.iter().zip(&frames).enumerate() {
                let (payload, id) = udp_oracle(seg);
                let (want, orig_id) = udp_oracle(orig);
                assert_eq!(payload, want, "payload of datagram {i}");
                // every header but the IPv4 ID and header checksum is the original's; IDs are
                // the first one's plus the index
                if !v6 {
                    assert_eq!(id, orig_id.map(|_| 0xfff0u16.wrapping_add(i as u16)));
                    let mut a = seg.clone();
                    a[l.l3 + 4..l.l3 + 6].copy_from_slice(&orig[l.l3 + 4..l.l3 + 6]);
                    fix_ip_checksum(&mut a, l.l3);
                    assert_eq!(&a, orig);
                } else {
                    assert_eq!(seg, orig);
                }
            }
        }
        // 64 datagrams at most; 64 KB at most
        let frames = udp_datagrams(false, false, &[100; 100]);
        assert_eq!(udp_round_trip(&frames).iter().map(|r| r.1.len()).collect::<Vec<_>>(), [64, 36]);
        let frames = udp_datagrams(false, false, &[1472; 50]);
        let runs = udp_round_trip(&frames);
        assert!(runs.len() == 2 && runs[0].1.len() == (65_535 - 20 - 8) / 1472, "{:?}", runs.iter().map(|r| r.1.len()).collect::<Vec<_>>());
    }

    #[test]
    fn udp_coalescing_stops_at_what_must_reach_the_host_alone() {
        let count = |frames: &[Vec<u8>]| udp_round_trip(frames).iter().map(|(h, f)| (h.is_some(), f.len())).collect::<Vec<_>>();
        let good = udp_datagrams(false, false, &[64; 6]);
        assert_eq!(count(&good), [(true, 6)]);
        // a wrong UDP checksum: that datagram goes on its own, as it came, and ends the run
        let mut bad = good.clone();
        bad[2][50] ^= 0x55;
        let runs = udp_round_trip(&bad);
        assert_eq!(runs.iter().map(|(h, f)| (h.is_some(), f.len())).collect::<Vec<_>>(), [(true, 2), (false, 1), (true, 3)]);
        assert_eq!(runs[1].1[0], bad[2]);
        // a wrong IPv4 header checksum
        let mut bad = good.clone();
        bad[2][14 + 8] ^= 1;
        assert_eq!(count(&bad), [(true, 2), (false, 1), (true, 3)]);
        // a zero UDP checksum: "none" over IPv4 (coalesced), wrong over IPv6 (alone)
        let mut zero = good.clone();
        zero[2][34 + 6..34 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(count(&zero), [(true, 6)]);
        let mut zero6 = udp_datagrams(true, false, &[64; 6]);
        zero6[2][54 + 6..54 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(count(&zero6), [(true, 2), (false, 1), (true, 3)]);
        // another flow (source port)
        let mut other = good.clone();
        other[2][35] ^= 1;
        fix_udp_checksum(&mut other[2]);
        assert_eq!(count(&other), [(true, 2), (true, 1), (true, 3)]);
        // another TTL, TOS, DF
        for (at, bit) in [(14 + 8, 1u8), (14 + 1, 4), (14 + 6, 0x40)] {
            let mut o = good.clone();
            o[2][at] ^= bit;
            fix_ip_checksum(&mut o[2], 14);
            assert_eq!(count(&o), [(true, 2), (true, 1), (true, 3)], "byte {at}");
        }
        // a different size in the middle: a shorter one ends the run, a longer one starts the next
        let sizes = udp_datagrams(false, false, &[64, 64, 30, 64, 64, 100, 100]);
        assert_eq!(count(&sizes), [(true, 3), (true, 2), (true, 2)]);
        // a fragment, IPv4 options: not taken at all
        let mut frag = good.clone();
        frag[2][14 + 6] |= 0x20; // MF
        fix_ip_checksum(&mut frag[2], 14);
        assert_eq!(UdpSeg::parse(&frag[2]), None);
        assert_eq!(count(&frag), [(true, 2), (false, 1), (true, 3)]);
        let mut opt = good[2].clone();
        opt[14] = 0x46;
        opt.splice(34..34, [1, 1, 1, 0]); // four bytes of NOPs and EOL
        let total = (opt.len() - 14) as u16;
        opt[14 + 2..14 + 4].copy_from_slice(&total.to_be_bytes());
        fix_ip_checksum(&mut opt, 14);
        assert_eq!(UdpSeg::parse(&opt), None);
        // DHCP is never coalesced
        let mut dhcp = good.clone();
        for f in &mut dhcp {
            f[36..38].copy_from_slice(&67u16.to_be_bytes());
            fix_udp_checksum(f);
        }
        assert_eq!(count(&dhcp), [(false, 1); 6]);
        // a UDP length that disagrees with the IP length; truncations never panic
        let mut lie = good[0].clone();
        lie[38] ^= 1;
        assert_eq!(UdpSeg::parse(&lie), None);
        for n in 0..good[0].len() {
            let _ = UdpSeg::parse(&good[0][..n]);
        }
    }

    #[test]
    fn a_udp_gso_super_frame_is_cut_into_datagrams() {
        for v6 in [false, true] {
            let frames = udp_datagrams(v6, false, &[1200, 1200, 1200, 500]);
            let runs = udp_round_trip(&frames);
            assert_eq!(runs.len(), 1);
            // the super-frame as a sender's UDP GSO hands it to the TAP, rebuilt from its segments
            let mut hdr = [0u8; MAX_HEADER_LEN];
            let mut c = Coalescer::start(UdpSeg::parse(&frames[0]).unwrap(), &frames[0]);
            for f in &frames[1..] {
                assert!(c.push(UdpSeg::parse(f).unwrap(), f));
            }
            let (h, hlen) = c.header(&mut hdr);
            let mut f = hdr[..hlen].to_vec();
            c.payloads().iter().for_each(|p| f.extend_from_slice(p));
            let plan = TsoPlan::new(&f, &h).unwrap();
            assert_eq!((plan.segments, plan.mss, plan.payload_len, plan.header_len()), (4, 1200, 4100, hlen));
            // a UDP plan refuses a TCP frame and a wrong checksum offset
            assert_eq!(TsoPlan::new(&f, &VnetHdr { csum_offset: 16, ..h }), Err(OffloadError::Malformed));
            let (t, th) = super_frame(v6, false, &data(3000));
            assert_eq!(TsoPlan::new(&t, &VnetHdr { gso_type: gso::UDP_L4, ..th }), Err(OffloadError::Unsupported));
            for n in 0..f.len().min(120) {
                if let Ok(p) = TsoPlan::new(&f[..n], &h) {
                    let mut out = vec![0u8; p.header_len()];
                    p.write_header(&f[..n], 0, &mut out);
                }
            }
        }
    }
}
