//! Byte-level checks of the "too big" replies and of MSS clamping, with etherparse as the
//! independent oracle.

use etherparse::{
    IpHeaders, Ipv4Extensions, Ipv4Header, Ipv6Header, IpNumber, NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice,
    icmpv4::DestUnreachableHeader, Icmpv4Type, Icmpv6Type,
};

use super::*;

const VM_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x11];
const GW_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x12];
const VM4: [u8; 4] = [198, 51, 100, 11];
const REMOTE4: [u8; 4] = [198, 51, 100, 12];
const HOST4: [u8; 4] = [198, 51, 100, 1];
const VM6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
const REMOTE6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12];
const HOST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];

/// A 1514-byte frame (1500-byte IPv4 packet) with TCP from the VM to the remote, DF as given.
fn tcp4(df: bool, vlan: bool) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, VM4, REMOTE4).unwrap();
    ip.dont_fragment = df;
    ip.identification = 0x1234;
    let b = PacketBuilder::ethernet2(VM_MAC, GW_MAC);
    let payload = vec![0x5a; 1460];
    let mut f = Vec::new();
    if vlan {
        b.single_vlan(etherparse::VlanId::try_new(7).unwrap())
            .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
            .tcp(40000, 5001, 0x0102_0304, 64240)
            .ack(9)
            .write(&mut f, &payload)
            .unwrap();
    } else {
        b.ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default())).tcp(40000, 5001, 0x0102_0304, 64240).ack(9).write(&mut f, &payload).unwrap();
    }
    f
}

fn tcp6(len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(VM_MAC, GW_MAC).ipv6(VM6, REMOTE6, 64).tcp(40000, 5001, 7, 64240).write(&mut f, &vec![0xa5; len - 14 - 40 - 20]).unwrap();
    f
}

fn reply(frame: &[u8], sources: Sources) -> Result<Vec<u8>, NoSignal> {
    let mut out = [0xa5u8; MAX_REPLY];
    too_big(frame, 1450, &sources, &mut out).map(|s| out[..s.len].to_vec())
}

#[test]
fn ipv4_with_df_gets_frag_needed_quoting_header_and_8_bytes() {
    let f = tcp4(true, false);
    let r = reply(&f, Sources { v4: Some(HOST4.into()), v6: None }).unwrap();
    let p = SlicedPacket::from_ethernet(&r).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else { panic!("no ethernet") };
    assert_eq!(eth.destination(), VM_MAC, "to the sender");
    assert_eq!(eth.source(), GW_MAC, "from the next hop it addressed");
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not ipv4") };
    let h = ip.header().to_header();
    assert_eq!(h.source, HOST4, "from the network's address");
    assert_eq!(h.destination, VM4);
    assert_eq!(h.protocol, IpNumber::ICMP);
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IP checksum");
    assert_eq!(usize::from(h.total_len), r.len() - 14);
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else { panic!("not icmp") };
    assert_eq!(icmp.icmp_type(), Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1450 }));
    assert_eq!(icmp.checksum(), icmp.icmp_type().calc_checksum(icmp.payload()), "ICMP checksum");
    // RFC 792: the offending IP header and the first 8 bytes of its payload, unchanged
    assert_eq!(icmp.payload(), &f[14..14 + 20 + 8]);
    assert_eq!(r.len(), 14 + 20 + 8 + 28);
}

#[test]
fn ipv4_quote_keeps_vlan_tag_and_ip_options() {
    let mut f = tcp4(true, true);
    let r = reply(&f, Sources::default()).unwrap();
    let p = SlicedPacket::from_ethernet(&r).unwrap();
    assert_eq!(p.link_exts.len(), 1, "the VLAN tag is kept");
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not ipv4") };
    assert_eq!(ip.header().source(), REMOTE4, "no address: from the packet's destination");
    // an IPv4 header with options (IHL 6): quoted whole
    f = tcp4(true, false);
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, VM4, REMOTE4).unwrap();
    ip.dont_fragment = true;
    ip.options = etherparse::Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap();
    let mut g = Vec::new();
    PacketBuilder::ethernet2(VM_MAC, GW_MAC).ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default())).udp(1, 2).write(&mut g, &[7u8; 1480]).unwrap();
    let r = reply(&g, Sources::default()).unwrap();
    let p = SlicedPacket::from_ethernet(&r).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else { panic!("not icmp") };
    assert_eq!(icmp.payload(), &g[14..14 + 24 + 8]);
    assert_eq!(icmp.checksum(), icmp.icmp_type().calc_checksum(icmp.payload()));
    assert!(f.len() > 1464);
}

#[test]
fn own_address_as_sender_answers_from_the_destination() {
    // the host's stack on the TAP sent it: Linux would drop a reply from its own address
    let f = tcp4(true, false);
    let r = reply(&f, Sources { v4: Some(VM4.into()), v6: None }).unwrap();
    assert_eq!(&r[14 + 12..14 + 16], &REMOTE4);
}

#[test]
fn ipv4_without_df_and_exempt_packets_get_no_signal() {
    assert_eq!(reply(&tcp4(false, false), Sources::default()), Err(NoSignal::Fragmentable));
    // an ICMP error about an ICMP error
    let mut ip = Ipv4Header::new(0, 64, IpNumber::ICMP, VM4, REMOTE4).unwrap();
    ip.dont_fragment = true;
    let mut f = Vec::new();
    PacketBuilder::ethernet2(VM_MAC, GW_MAC)
        .ip(IpHeaders::Ipv4(ip.clone(), Ipv4Extensions::default()))
        .icmpv4(Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit))
        .write(&mut f, &[0u8; 1472])
        .unwrap();
    assert_eq!(reply(&f, Sources::default()), Err(NoSignal::Exempt));
    // an echo request is answered (ping -M do -s 1472)
    let mut f = Vec::new();
    PacketBuilder::ethernet2(VM_MAC, GW_MAC)
        .ip(IpHeaders::Ipv4(ip.clone(), Ipv4Extensions::default()))
        .icmpv4_echo_request(1, 1)
        .write(&mut f, &[0u8; 1472])
        .unwrap();
    assert!(reply(&f, Sources::default()).is_ok());
    // broadcast destination, group MAC, not IP
    let mut f = tcp4(true, false);
    f[14 + 16..14 + 20].copy_from_slice(&[255; 4]);
    assert_eq!(reply(&f, Sources::default()), Err(NoSignal::Exempt));
    let mut f = tcp4(true, false);
    f[0] = 0x01;
    assert_eq!(reply(&f, Sources::default()), Err(NoSignal::Exempt));
    let mut f = tcp4(true, false);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(reply(&f, Sources::default()), Err(NoSignal::NotIp));
    assert_eq!(reply(&f[..20], Sources::default()), Err(NoSignal::NotIp));
}

#[test]
fn ipv6_gets_packet_too_big_with_the_packet_quoted_up_to_1280_bytes() {
    let f = tcp6(1514);
    let r = reply(&f, Sources { v4: Some(HOST4.into()), v6: Some(HOST6.into()) }).unwrap();
    assert_eq!(r.len(), 14 + 1280, "as much as fits the minimum MTU");
    let p = SlicedPacket::from_ethernet(&r).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &p.net else { panic!("not ipv6") };
    let h: Ipv6Header = ip.header().to_header();
    assert_eq!(h.source, HOST6);
    assert_eq!(h.destination, VM6);
    assert_eq!(h.next_header, IpNumber::IPV6_ICMP);
    assert_eq!(usize::from(h.payload_length), 1280 - 40);
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else { panic!("not icmpv6") };
    assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1450 });
    assert!(icmp.is_checksum_valid(HOST6, VM6), "checksum with the pseudo-header");
    assert_eq!(icmp.payload(), &f[14..14 + 1232]);
    // a short packet (cut by the reader) is quoted whole; no v6 address: from the destination
    let r = reply(&f[..14 + 200], Sources { v4: Some(HOST4.into()), v6: None }).unwrap();
    assert_eq!(r.len(), 14 + 40 + 8 + 200);
    let p = SlicedPacket::from_ethernet(&r).unwrap();
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else { panic!("not icmpv6") };
    assert!(icmp.is_checksum_valid(REMOTE6, VM6));
}

#[test]
fn ipv6_icmp_error_gets_no_signal_but_echo_does() {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(VM_MAC, GW_MAC).ipv6(VM6, REMOTE6, 64).icmpv6(Icmpv6Type::PacketTooBig { mtu: 1 }).write(&mut f, &[0u8; 1452]).unwrap();
    assert_eq!(reply(&f, Sources::default()), Err(NoSignal::Exempt));
    let mut f = Vec::new();
    PacketBuilder::ethernet2(VM_MAC, GW_MAC).ipv6(VM6, REMOTE6, 64).icmpv6_echo_request(1, 1).write(&mut f, &[0u8; 1452]).unwrap();
    assert!(reply(&f, Sources::default()).is_ok());
}

#[test]
fn signals_are_limited_per_port_with_a_burst() {
    let mut b = PortBuckets::new(100, 50);
    let (p0, p1) = (LocalPort(0), LocalPort(1));
    let t = Instant::from_secs(10);
    assert_eq!((0..80).filter(|_| b.allow(p0, t)).count(), 50, "the burst, then nothing");
    assert!(b.allow(p1, t), "another port has its own bucket");
    // 100 ms later: 10 more
    let t2 = Instant::from_millis(10_100);
    assert_eq!((0..80).filter(|_| b.allow(p0, t2)).count(), 10);
    // a long pause refills to the burst only
    let t3 = Instant::from_secs(100);
    assert_eq!((0..80).filter(|_| b.allow(p0, t3)).count(), 50);
}

fn syn(v6: bool, mss: u16) -> Vec<u8> {
    syn_with(v6, &[TcpOptionElement::MaximumSegmentSize(mss), TcpOptionElement::SelectiveAcknowledgementPermitted, TcpOptionElement::WindowScale(7)])
}

fn syn_with(v6: bool, options: &[TcpOptionElement]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VM_MAC, GW_MAC);
    let b = if v6 { b.ipv6(VM6, REMOTE6, 64) } else { b.ipv4(VM4, REMOTE4, 64) };
    let mut f = Vec::new();
    b.tcp(40000, 5001, 1, 64240)
        .syn()
        .options(options)
        .unwrap()
        .write(&mut f, &[])
        .unwrap();
    f
}

fn mss_and_checksum_ok(f: &[u8]) -> (u16, bool) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else { panic!("not tcp") };
    let mss = tcp
        .options_iterator()
        .find_map(|o| match o {
            Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
            _ => None,
        })
        .unwrap();
    let ok = match &p.net {
        Some(NetSlice::Ipv4(ip)) => tcp.calc_checksum_ipv4(ip.header().source(), ip.header().destination()).unwrap() == tcp.checksum(),
        Some(NetSlice::Ipv6(ip)) => tcp.calc_checksum_ipv6(ip.header().source(), ip.header().destination()).unwrap() == tcp.checksum(),
        _ => false,
    };
    (mss, ok)
}

#[test]
fn mss_of_a_syn_is_clamped_with_the_checksum_fixed_up() {
    for (v6, want) in [(false, 1410), (true, 1390)] {
        let mut f = syn(v6, 1460);
        assert!(clamp_mss(&mut f, 1450, false), "v6={v6}");
        assert_eq!(mss_and_checksum_ok(&f), (want, true), "v6={v6}");
        // already small enough: untouched
        let mut g = syn(v6, 1200);
        let before = g.clone();
        assert!(!clamp_mss(&mut g, 1450, false));
        assert_eq!(g, before);
    }
}

#[test]
fn mss_at_an_odd_offset_is_clamped_with_the_checksum_right() {
    use TcpOptionElement::{MaximumSegmentSize, Noop, WindowScale};
    for v6 in [false, true] {
        let mut f = syn_with(v6, &[Noop, MaximumSegmentSize(0x05b4), WindowScale(7), Noop, Noop, Noop]);
        assert!(clamp_mss(&mut f, 1450, false));
        assert!(mss_and_checksum_ok(&f).1, "v6={v6}");
    }
}

#[test]
fn mss_clamp_leaves_a_partial_checksum_alone_and_skips_non_syns() {
    // NEEDS_CSUM: the field holds the pseudo-header sum; the device sums the options later
    let mut f = syn(false, 1460);
    let ck = f.len() - 32 + 16;
    f[ck..ck + 2].copy_from_slice(&[0x12, 0x34]);
    assert!(clamp_mss(&mut f, 1450, true));
    assert_eq!(&f[ck..ck + 2], &[0x12, 0x34]);
    // an ACK carrying what looks like an MSS option is not a SYN
    let mut f = syn(false, 1460);
    f[14 + 20 + 13] = 0x10;
    let before = f.clone();
    assert!(!clamp_mss(&mut f, 1450, false));
    assert_eq!(f, before);
    // truncated options are left alone
    let mut f = syn(false, 1460);
    f.truncate(14 + 20 + 22);
    assert!(!clamp_mss(&mut f, 1450, false));
}

#[test]
fn cut_short_or_corrupted_frames_never_panic_and_replies_always_parse() {
    let mut frames = vec![tcp4(true, false), tcp4(true, true), tcp6(1514), syn(false, 1460), syn(true, 1460)];
    // every truncation of every frame, and each with one byte flipped in the headers
    let mut seed = 0x2545_f491_u32;
    for f in frames.clone() {
        for at in 0..80.min(f.len()) {
            let mut g = f.clone();
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            g[at] ^= (seed as u8) | 1;
            frames.push(g);
        }
    }
    let mut out = [0u8; MAX_REPLY];
    for f in &frames {
        for cut in 0..=f.len().min(120) {
            let g = &f[..cut];
            if let Ok(s) = too_big(g, 1450, &Sources::default(), &mut out) {
                assert!(s.len <= MAX_REPLY);
                assert!(SlicedPacket::from_ethernet(&out[..s.len]).is_ok(), "reply to {g:02x?} does not parse");
            }
            let mut h = g.to_vec();
            clamp_mss(&mut h, 1450, false);
        }
    }
}
