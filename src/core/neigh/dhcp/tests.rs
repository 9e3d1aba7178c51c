//! DHCP snooping driven through [`Network`] as the data path does; frames are built with
//! etherparse (Ethernet/IPv4/UDP) around a BOOTP message written field by field.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use etherparse::PacketBuilder;

use super::*;
use crate::core::network::{Action, Network};
use crate::core::neigh::{REPLY_MAX, Source};
use crate::core::time::Instant;
use crate::core::{LocalPort, PeerIdx, Port, testutil};

const SERVER: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x5e]);
const CLIENT: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xc1]);
const ASKER: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const LEASED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const L0: LocalPort = LocalPort(0);
const P0: PeerIdx = PeerIdx(0);

fn at(s: u64) -> Instant {
    Instant::from_secs(s)
}

/// A network with two local ports and two peers; `suppress`: arp_suppress, `local`:
/// advertise = "macs+ips" (local snooping). Ageing 300 s.
fn net(suppress: bool, local: bool) -> Network {
    let mut spec = testutil::spec(2, vec![SocketAddr::from(([192, 0, 2, 2], 4789)), SocketAddr::from(([192, 0, 2, 3], 4789))]);
    spec.arp_suppress = suppress;
    spec.snoop_local = local;
    spec.fdb.ageing = Duration::from_secs(300);
    Network::new(spec)
}

/// A DHCP message of `kind` (option 53) with `lease` (option 51) and `requested` (option 50).
fn bootp(op: u8, kind: u8, chaddr: MacAddr, ciaddr: Ipv4Addr, yiaddr: Ipv4Addr, lease: Option<u32>, requested: Option<Ipv4Addr>) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    m[0] = op;
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    m[12..16].copy_from_slice(&ciaddr.octets());
    m[16..20].copy_from_slice(&yiaddr.octets());
    m[28..34].copy_from_slice(&chaddr.0);
    m.extend_from_slice(&COOKIE);
    m.extend_from_slice(&[OPT_TYPE, 1, kind]);
    m.extend_from_slice(&[54, 4]); // server identifier, an option skipped
    m.extend_from_slice(&SERVER_IP.octets());
    if let Some(l) = lease {
        m.extend_from_slice(&[OPT_LEASE, 4]);
        m.extend_from_slice(&l.to_be_bytes());
    }
    if let Some(r) = requested {
        m.extend_from_slice(&[OPT_REQUESTED, 4]);
        m.extend_from_slice(&r.octets());
    }
    m.extend_from_slice(&[OPT_PAD, OPT_PAD, OPT_END]);
    m
}

/// `msg` in UDP `sport` → `dport` over IPv4, in an Ethernet frame `src` → `dst`.
fn frame(dst: MacAddr, src: MacAddr, sport: u16, dport: u16, msg: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0).ipv4(SERVER_IP.octets(), [255, 255, 255, 255], 64).udp(sport, dport).write(&mut f, msg).unwrap();
    f
}

fn ack(dst: MacAddr, chaddr: MacAddr, yiaddr: Ipv4Addr, lease: u32) -> Vec<u8> {
    frame(dst, SERVER, 67, 68, &bootp(2, DHCPACK, chaddr, Ipv4Addr::UNSPECIFIED, yiaddr, Some(lease), None))
}

fn release(chaddr: MacAddr, ciaddr: Ipv4Addr) -> Vec<u8> {
    frame(SERVER, chaddr, 68, 67, &bootp(1, DHCPRELEASE, chaddr, ciaddr, Ipv4Addr::UNSPECIFIED, None, None))
}

/// A broadcast ARP request from ASKER (198.51.100.1) for `tpa`.
fn who_has(tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MacAddr::BROADCAST.0);
    f.extend_from_slice(&ASKER.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&ASKER.0);
    f.extend_from_slice(&[198, 51, 100, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

fn leased() -> IpAddr {
    IpAddr::V4(LEASED)
}

#[test]
fn an_ack_from_a_remote_server_binds_the_local_client_until_the_lease_ends() {
    let n = net(false, true);
    // the client's discover went out through the tunnel: its MAC is on local port 0
    n.fdb.learn(CLIENT, Port::Local(L0), at(0));
    assert_eq!(n.from_peer(P0, &ack(CLIENT, CLIENT, LEASED, 60), at(1)), Action::Local(L0));
    let rows = n.local_neigh.rows(at(2));
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].ip, rows[0].mac, rows[0].source, rows[0].lease_left), (leased(), CLIENT, Source::Local, Some(Duration::from_secs(59))));
    assert_eq!(n.neigh.dhcp.get("ack", "applied"), 1);
    // seen in ARP meanwhile: that does not stretch it past the lease (ageing is 300 s)
    n.local_neigh.learn(leased(), CLIENT, Source::Local, None, at(50));
    assert_eq!(n.local_neigh.lookup(leased(), at(60)), Some((CLIENT, Source::Local, false)));
    assert_eq!(n.local_neigh.lookup(leased(), at(61)), None, "the lease ended at 61 s");
    assert!(n.local_neigh.rows(at(61)).is_empty());
    assert_eq!(n.local_neigh.sweep(at(61), |_, _| true), 1);
    // an address seen in ARP after the lease ended is an ordinary binding again
    n.local_neigh.learn(leased(), CLIENT, Source::Local, None, at(70));
    assert_eq!(n.local_neigh.rows(at(71))[0].lease_left, None);
}

#[test]
fn a_renewal_moves_the_end_of_the_lease() {
    let n = net(false, true);
    n.fdb.learn(CLIENT, Port::Local(L0), at(0));
    n.from_peer(P0, &ack(CLIENT, CLIENT, LEASED, 30), at(0));
    n.from_peer(P0, &ack(CLIENT, CLIENT, LEASED, 30), at(20));
    assert!(n.local_neigh.lookup(leased(), at(45)).is_some(), "renewed at 20 s for 30 s");
    assert!(n.local_neigh.lookup(leased(), at(50)).is_none());
}

#[test]
fn an_ack_from_a_local_server_binds_a_client_behind_a_peer_and_answers_arp_for_it() {
    let n = net(true, false);
    // the client's discover came through the tunnel from peer 0; the server is on port 1
    assert_eq!(n.from_peer(P0, &frame(MacAddr::BROADCAST, CLIENT, 68, 67, &bootp(1, 1, CLIENT, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, None, None)), at(0)), Action::Flood);
    assert!(n.neigh.is_empty(), "a discover binds nothing");
    assert_eq!(n.from_local(LocalPort(1), &ack(CLIENT, CLIENT, LEASED, 3600), at(1)), Action::Peer(P0));
    assert_eq!(n.neigh.lookup(leased(), at(2)), Some((CLIENT, Source::Snooped(P0), false)));
    // a host on port 0 asks for the client's address: answered there, nothing flooded
    n.from_local(L0, &who_has(LEASED), at(3));
    let mut out = [0u8; REPLY_MAX];
    let len = n.answer_neigh(&who_has(LEASED), &mut out, at(3)).expect("answered from the DHCP binding");
    assert_eq!((&out[0..6], &out[22..28], &out[28..32]), (&ASKER.0[..], &CLIENT.0[..], &LEASED.octets()[..]));
    assert_eq!(len, 42);
    // once the client's MAC is elsewhere (here: a local port), the binding is not used
    n.fdb.learn(CLIENT, Port::Local(L0), at(4));
    assert_eq!(n.answer_neigh(&who_has(LEASED), &mut out, at(4)), None);
}

#[test]
fn a_broadcast_ack_from_a_local_server_to_a_local_client_binds_it_locally() {
    let n = net(true, true);
    n.fdb.learn(CLIENT, Port::Local(L0), at(0));
    assert_eq!(n.from_local(LocalPort(1), &ack(MacAddr::BROADCAST, CLIENT, LEASED, 600), at(1)), Action::Flood);
    assert_eq!(n.local_neigh.lookup(leased(), at(2)).map(|b| b.1), Some(Source::Local));
    assert!(n.neigh.is_empty(), "a local client is never bound for answers");
}

#[test]
fn an_ack_for_a_mac_the_table_does_not_have_or_a_table_that_is_off_is_ignored() {
    let n = net(true, false);
    n.from_peer(P0, &ack(MacAddr::BROADCAST, CLIENT, LEASED, 600), at(1));
    assert!(n.neigh.is_empty() && n.local_neigh.is_empty());
    assert_eq!((n.neigh.dhcp.get("ack", "applied"), n.neigh.dhcp.get("ack", "ignored")), (0, 1));
    // a local client with local snooping off (advertise is not "macs+ips")
    n.fdb.learn(CLIENT, Port::Local(L0), at(2));
    n.from_peer(P0, &ack(CLIENT, CLIENT, LEASED, 600), at(2));
    assert!(n.local_neigh.is_empty());
    assert_eq!(n.neigh.dhcp.get("ack", "ignored"), 2);
    // neither table on: nothing is parsed at all
    let off = net(false, false);
    off.fdb.learn(CLIENT, Port::Local(L0), at(2));
    off.from_peer(P0, &ack(CLIENT, CLIENT, LEASED, 600), at(2));
    assert_eq!(off.neigh.dhcp.snapshot(), [0; SLOTS]);
}

#[test]
fn release_decline_and_nak_remove_the_binding() {
    let n = net(false, true);
    n.fdb.learn(CLIENT, Port::Local(L0), at(0));
    let bound = |n: &Network| n.local_neigh.lookup(leased(), at(2)).is_some();
    n.from_peer(P0, &ack(CLIENT, CLIENT, LEASED, 600), at(1));
    assert!(bound(&n));
    // a release of another address, or by another MAC, changes nothing
    n.from_local(L0, &release(CLIENT, Ipv4Addr::new(198, 51, 100, 101)), at(1));
    n.from_local(L0, &release(ASKER, LEASED), at(1));
    assert!(bound(&n));
    assert_eq!(n.neigh.dhcp.get("release", "ignored"), 2);
    n.from_local(L0, &release(CLIENT, LEASED), at(1));
    assert!(!bound(&n));
    assert_eq!(n.neigh.dhcp.get("release", "applied"), 1);

    n.from_peer(P0, &ack(CLIENT, CLIENT, LEASED, 600), at(1));
    let decline = bootp(1, DHCPDECLINE, CLIENT, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, None, Some(LEASED));
    n.from_local(L0, &frame(MacAddr::BROADCAST, CLIENT, 68, 67, &decline), at(1));
    assert!(!bound(&n));
    assert_eq!(n.neigh.dhcp.get("decline", "applied"), 1);

    n.from_peer(P0, &ack(CLIENT, CLIENT, LEASED, 600), at(1));
    // ARP-learned bindings of the client are not the server's to refuse
    let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    n.local_neigh.learn(other, CLIENT, Source::Local, None, at(1));
    let nak = bootp(2, DHCPNAK, CLIENT, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, None, None);
    n.from_peer(P0, &frame(MacAddr::BROADCAST, SERVER, 67, 68, &nak), at(1));
    assert!(!bound(&n));
    assert!(n.local_neigh.lookup(other, at(2)).is_some());
    assert_eq!(n.neigh.dhcp.get("nak", "applied"), 1);
}

#[test]
fn an_infinite_lease_ages_like_any_binding() {
    let n = net(false, true);
    n.fdb.learn(CLIENT, Port::Local(L0), at(0));
    n.from_peer(P0, &ack(CLIENT, CLIENT, LEASED, u32::MAX), at(0));
    assert_eq!(n.local_neigh.rows(at(1))[0].lease_left, None);
    assert!(n.local_neigh.lookup(leased(), at(300)).is_some());
    assert!(n.local_neigh.lookup(leased(), at(301)).is_none());
}

#[test]
fn messages_that_bind_nothing_are_told_apart() {
    let m = |op, kind, yiaddr, lease| parse(&frame(CLIENT, SERVER, 67, 68, &bootp(op, kind, CLIENT, Ipv4Addr::UNSPECIFIED, yiaddr, lease, None)));
    assert_eq!(m(2, DHCPACK, LEASED, Some(60)), Parsed::Dhcp(Message::Ack { chaddr: CLIENT, yiaddr: LEASED, lease: Some(Duration::from_secs(60)) }));
    assert_eq!(m(2, 2, LEASED, Some(60)), Parsed::Other, "an offer");
    assert_eq!(m(2, DHCPACK, Ipv4Addr::UNSPECIFIED, None), Parsed::Other, "the ACK of an inform");
    assert_eq!(m(2, DHCPACK, LEASED, Some(0)), Parsed::Other, "a lease of nothing");
    assert_eq!(m(2, DHCPACK, LEASED, None), Parsed::Malformed, "an address without a lease");
    assert_eq!(m(1, DHCPACK, LEASED, Some(60)), Parsed::Malformed, "an ACK as a request");
    // other UDP, other protocols, ARP: not DHCP
    assert_eq!(parse(&frame(CLIENT, SERVER, 53, 68, &bootp(2, DHCPACK, CLIENT, Ipv4Addr::UNSPECIFIED, LEASED, Some(60), None))), Parsed::NotDhcp);
    assert_eq!(parse(&who_has(LEASED)), Parsed::NotDhcp);
    let mut tcp = ack(CLIENT, CLIENT, LEASED, 60);
    tcp[23] = 6;
    assert_eq!(parse(&tcp), Parsed::NotDhcp);
}

#[test]
fn malformed_dhcp_never_binds_and_never_panics() {
    let good = ack(CLIENT, CLIENT, LEASED, 60);
    assert!(matches!(parse(&good), Parsed::Dhcp(_)));
    let n = net(true, true);
    n.fdb.learn(CLIENT, Port::Local(L0), at(0));
    // every truncation: never a binding
    for len in 0..good.len() {
        let p = parse(&good[..len]);
        assert!(matches!(p, Parsed::NotDhcp | Parsed::Malformed), "{len}: {p:?}");
        n.snoop_dhcp(&good[..len], at(1));
    }
    assert!(n.local_neigh.is_empty() && n.neigh.is_empty());
    // every byte of the message flipped in turn, and set to 0 and 0xff: whatever it parses to,
    // nothing panics
    for i in 14..good.len() {
        for v in [good[i] ^ 0xff, 0, 0xff] {
            let mut f = good.clone();
            f[i] = v;
            let _ = parse(&f);
            n.snoop_dhcp(&f, at(1));
        }
    }
    // named cases
    type Spoil = fn(&mut Vec<u8>);
    let cases: [(&str, Spoil); 6] = [
        ("bad cookie", |f| f[14 + 20 + 8 + 236] = 0),
        ("hlen 8", |f| f[14 + 20 + 8 + 2] = 8),
        ("option running past the end", |f| {
            let end = f.len() - 1;
            f[end] = 53; // the END option becomes a type option without its length
        }),
        ("UDP length past the IP length", |f| f[14 + 20 + 4] = 0xff),
        ("IP length past the frame", |f| f[14 + 2] = 0xff),
        ("type option of length 2", |f| f[14 + 20 + 8 + 241] = 2),
    ];
    for (what, spoil) in cases {
        let mut f = good.clone();
        spoil(&mut f);
        assert_eq!(parse(&f), Parsed::Malformed, "{what}");
    }
    let n = net(true, true);
    n.fdb.learn(CLIENT, Port::Local(L0), at(0));
    let mut f = good.clone();
    f[14 + 20 + 8 + 236] = 0;
    n.from_peer(P0, &f, at(2));
    assert_eq!(n.neigh.dhcp.get("malformed", "ignored"), 1, "counted");
    assert!(n.local_neigh.is_empty());
}
