//! Neighbour table and ARP/ND suppression, driven through [`Network`] like the data path
//! does; answers are checked with etherparse as an independent parser.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use etherparse::{Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::*;
use crate::core::liveness::PeerState;
use crate::core::network::{Action, Network};
use crate::core::{LocalPort, Port, testutil};

/// The asking host, on local port 0.
const ASKER: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
/// A host behind peer 0.
const REMOTE: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
const L0: LocalPort = LocalPort(0);
const P0: PeerIdx = PeerIdx(0);
const ASKER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

fn asker6() -> Ipv6Addr {
    "2001:db8:1::a".parse().unwrap()
}

fn remote6() -> Ipv6Addr {
    "2001:db8:1::b".parse().unwrap()
}

fn net(suppress: bool) -> Network {
    let mut spec = testutil::spec(2, vec![SocketAddr::from(([192, 0, 2, 2], 4789)), SocketAddr::from(([192, 0, 2, 3], 4789))]);
    spec.arp_suppress = suppress;
    spec.fdb.ageing = Duration::from_secs(300);
    Network::new(spec)
}

fn at(s: u64) -> Instant {
    Instant::from_secs(s)
}

/// An ARP frame (RFC 826) built by hand: op 1 request, 2 reply.
fn arp(op: u16, dst: MacAddr, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha.0);
    f.extend_from_slice(&tpa.octets());
    f
}

fn solicited(a: Ipv6Addr) -> (MacAddr, Ipv6Addr) {
    let o = a.octets();
    (MacAddr([0x33, 0x33, 0xff, o[13], o[14], o[15]]), solicited_node(&a))
}

/// A neighbour solicitation built with etherparse (its checksum is etherparse's).
fn ns(src_mac: MacAddr, src: Ipv6Addr, target: Ipv6Addr, slla: bool) -> Vec<u8> {
    let (dmac, dip) = solicited(target);
    let mut payload = target.octets().to_vec();
    if slla {
        payload.extend_from_slice(&[1, 1]);
        payload.extend_from_slice(&src_mac.0);
    }
    let b = PacketBuilder::ethernet2(src_mac.0, dmac.0).ipv6(src.octets(), dip.octets(), 255).icmpv6_raw(135, 0, [0; 4]);
    let mut f = Vec::new();
    b.write(&mut f, &payload).unwrap();
    f
}

/// A neighbour advertisement built with etherparse.
fn na(src_mac: MacAddr, target: Ipv6Addr, dst_mac: MacAddr, dst: Ipv6Addr, flags: u8) -> Vec<u8> {
    let mut payload = target.octets().to_vec();
    payload.extend_from_slice(&[2, 1]);
    payload.extend_from_slice(&src_mac.0);
    let b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0).ipv6(target.octets(), dst.octets(), 255).icmpv6_raw(136, 0, [flags, 0, 0, 0]);
    let mut f = Vec::new();
    b.write(&mut f, &payload).unwrap();
    f
}

/// The first ARP exchange crossed the tunnel: ASKER's request flooded, REMOTE answered from
/// peer 0. Returns the network after it.
fn after_exchange(n: &Network, t: Instant) {
    let req = arp(1, MacAddr::BROADCAST, ASKER, ASKER_IP, MacAddr([0; 6]), REMOTE_IP);
    assert_eq!(n.from_local(L0, &req, t), Action::Flood);
    assert_eq!(n.answer_neigh(&req, &mut [0; REPLY_MAX], t), None, "nothing known yet: a miss");
    let reply = arp(2, ASKER, REMOTE, REMOTE_IP, ASKER, ASKER_IP);
    assert_eq!(n.from_peer(P0, &reply, t), Action::Local(L0));
}

fn ask(n: &Network, asker: MacAddr, t: Instant) -> Option<Vec<u8>> {
    let req = arp(1, MacAddr::BROADCAST, asker, ASKER_IP, MacAddr([0; 6]), REMOTE_IP);
    assert_eq!(n.from_local(L0, &req, t), Action::Flood);
    let mut out = [0u8; REPLY_MAX];
    n.answer_neigh(&req, &mut out, t).map(|len| out[..len].to_vec())
}

#[test]
fn a_second_arp_request_is_answered_from_the_binding_the_first_reply_left() {
    let n = net(true);
    after_exchange(&n, at(1));
    assert_eq!(n.neigh.len(), 1);
    // another local host asks for the same target
    let other = MacAddr([2, 0, 0, 0, 0, 0xc]);
    let reply = ask(&n, other, at(2)).expect("answered locally");
    let p = SlicedPacket::from_ethernet(&reply).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else { panic!("not Ethernet II") };
    assert_eq!((eth.destination(), eth.source()), (other.0, REMOTE.0));
    let Some(NetSlice::Arp(a)) = &p.net else { panic!("not ARP: {p:?}") };
    let a = a.to_packet().try_eth_ipv4().unwrap();
    assert_eq!(a.operation, etherparse::ArpOperation::REPLY);
    assert_eq!((a.sender_mac, a.sender_ipv4), (REMOTE.0, REMOTE_IP.octets()));
    assert_eq!((a.target_mac, a.target_ipv4), (other.0, ASKER_IP.octets()));
    assert_eq!(n.neigh.counters.get(Family::V4, true), 1);
    assert_eq!(n.neigh.counters.get(Family::V4, false), 1, "the first request missed");
}

#[test]
fn bindings_come_only_from_the_tunnel_and_only_for_the_frame_s_own_mac() {
    let n = net(true);
    // a reply from a local host teaches nothing
    let local = arp(2, REMOTE, ASKER, ASKER_IP, REMOTE, REMOTE_IP);
    n.from_local(L0, &local, at(1));
    assert!(n.neigh.is_empty());
    // a reply through the tunnel whose sender MAC is not the frame's source: not bound
    let mut spoof = arp(2, ASKER, REMOTE, REMOTE_IP, ASKER, ASKER_IP);
    spoof[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 0xee]);
    n.from_peer(P0, &spoof, at(1));
    assert!(n.neigh.is_empty());
    // an ARP probe (sender 0.0.0.0) binds nothing either
    n.from_peer(P0, &arp(1, MacAddr::BROADCAST, REMOTE, Ipv4Addr::UNSPECIFIED, MacAddr([0; 6]), REMOTE_IP), at(1));
    assert!(n.neigh.is_empty());
    // a request's sender and a gratuitous ARP do
    n.from_peer(P0, &arp(1, MacAddr::BROADCAST, REMOTE, REMOTE_IP, MacAddr([0; 6]), REMOTE_IP), at(1));
    assert_eq!(n.neigh.lookup(IpAddr::V4(REMOTE_IP), at(1)), Some((REMOTE, Source::Snooped(P0), false)));
}

#[test]
fn gratuitous_arp_is_flooded_and_a_probe_gets_a_reply_to_0_0_0_0() {
    let n = net(true);
    after_exchange(&n, at(1));
    // a local host announcing REMOTE_IP (a conflict, or a move): never suppressed
    let garp = arp(1, MacAddr::BROADCAST, ASKER, REMOTE_IP, MacAddr([0; 6]), REMOTE_IP);
    assert_eq!(n.answer_neigh(&garp, &mut [0; REPLY_MAX], at(2)), None);
    // a unicast request is no flood: not answered here
    let uni = arp(1, REMOTE, ASKER, ASKER_IP, MacAddr([0; 6]), REMOTE_IP);
    assert_eq!(n.answer_neigh(&uni, &mut [0; REPLY_MAX], at(2)), None);
    // an address conflict probe (RFC 5227) is answered: the owner defends its address
    let probe = arp(1, MacAddr::BROADCAST, ASKER, Ipv4Addr::UNSPECIFIED, MacAddr([0; 6]), REMOTE_IP);
    let mut out = [0u8; REPLY_MAX];
    let len = n.answer_neigh(&probe, &mut out, at(2)).expect("probe answered");
    let p = SlicedPacket::from_ethernet(&out[..len]).unwrap();
    let Some(NetSlice::Arp(a)) = &p.net else { panic!("not ARP") };
    let a = a.to_packet().try_eth_ipv4().unwrap();
    assert_eq!((a.sender_mac, a.target_mac, a.target_ipv4), (REMOTE.0, ASKER.0, [0; 4]));
}

#[test]
fn a_binding_is_not_used_once_its_mac_aged_out_of_the_fdb() {
    let n = net(true);
    after_exchange(&n, at(1));
    assert!(ask(&n, ASKER, at(300)).is_some());
    // REMOTE silent for longer than the ageing time: gone from the FDB, and so from answers
    assert_eq!(ask(&n, ASKER, at(302)), None);
    assert_eq!(n.sweep_neigh(at(302)), 1);
    assert!(n.neigh.is_empty());
}

#[test]
fn a_binding_ages_on_its_own_even_while_its_mac_keeps_talking() {
    let n = net(true);
    after_exchange(&n, at(1));
    // REMOTE keeps sending (the FDB stays fresh) but never ARPs again
    for s in (50..=400).step_by(50) {
        n.from_peer(P0, &testutil::frame(ASKER, REMOTE, 60), at(s));
    }
    assert_eq!(ask(&n, ASKER, at(400)), None, "a binding not seen for the ageing time is not used");
}

#[test]
fn a_binding_is_not_used_when_its_mac_moved_to_a_local_port_or_another_peer() {
    let n = net(true);
    after_exchange(&n, at(1));
    // REMOTE's MAC now talks from local port 1: never answer for a host on the asking side
    n.from_local(LocalPort(1), &testutil::frame(MacAddr::BROADCAST, REMOTE, 60), at(2));
    assert_eq!(n.fdb.lookup(REMOTE, at(2)), Some(Port::Local(LocalPort(1))));
    assert_eq!(ask(&n, ASKER, at(2)), None);
    // and behind another peer than the one it was learned from
    n.from_peer(PeerIdx(1), &testutil::frame(MacAddr::BROADCAST, REMOTE, 60), at(3));
    assert_eq!(ask(&n, ASKER, at(3)), None);
    // until that peer's own ARP traffic rebinds it
    n.from_peer(PeerIdx(1), &arp(2, ASKER, REMOTE, REMOTE_IP, ASKER, ASKER_IP), at(4));
    assert!(ask(&n, ASKER, at(4)).is_some());
}

#[test]
fn a_binding_is_not_used_after_its_peer_went_down_or_the_table_was_flushed() {
    let n = net(true);
    after_exchange(&n, at(1));
    n.check_peers(at(2));
    assert_eq!(n.peers[0].liveness.state(), PeerState::Up);
    // no keepalives from peer 0: down once silent for the ageing time; its MACs are flushed
    let changes = n.check_peers(at(302));
    assert_eq!(changes[0].state, PeerState::Down);
    assert!(n.neigh.is_empty(), "its bindings are forgotten with its MACs");

    let n = net(true);
    after_exchange(&n, at(1));
    n.fdb.flush_port(Port::Peer(P0), at(2));
    assert_eq!(ask(&n, ASKER, at(2)), None, "MAC flushed from the FDB: binding unused");
}

#[test]
fn a_neighbour_solicitation_is_answered_with_a_solicited_override_advertisement() {
    let n = net(true);
    // REMOTE's advertisement (it is a router) crosses the tunnel, unsolicited
    let adv = na(REMOTE, remote6(), MacAddr([0x33, 0x33, 0, 0, 0, 1]), "ff02::1".parse().unwrap(), NA_ROUTER | NA_OVERRIDE);
    assert_eq!(n.from_peer(P0, &adv, at(1)), Action::Flood);
    assert_eq!(n.neigh.lookup(IpAddr::V6(remote6()), at(1)), Some((REMOTE, Source::Snooped(P0), true)));
    let req = ns(ASKER, asker6(), remote6(), true);
    assert_eq!(n.from_local(L0, &req, at(2)), Action::Flood);
    let mut out = [0u8; REPLY_MAX];
    let len = n.answer_neigh(&req, &mut out, at(2)).expect("answered");
    let p = SlicedPacket::from_ethernet(&out[..len]).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else { panic!("not Ethernet II") };
    assert_eq!((eth.destination(), eth.source()), (ASKER.0, REMOTE.0));
    let Some(NetSlice::Ipv6(ip)) = &p.net else { panic!("not IPv6") };
    let h = ip.header();
    assert_eq!((h.source_addr(), h.destination_addr(), h.hop_limit()), (remote6(), asker6(), 255));
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else { panic!("not ICMPv6") };
    assert!(icmp.is_checksum_valid(remote6().octets(), asker6().octets()), "bad ICMPv6 checksum");
    let Icmpv6Type::NeighborAdvertisement(f) = icmp.icmp_type() else { panic!("not an NA: {:?}", icmp.icmp_type()) };
    assert!(f.solicited && f.r#override && f.router);
    let body = icmp.payload();
    assert_eq!(&body[..16], &remote6().octets());
    assert_eq!(&body[16..24], &[2, 1, 2, 0, 0, 0, 0, 0xb], "target link-layer option");
    assert_eq!(n.neigh.counters.get(Family::V6, true), 1);
}

#[test]
fn a_dad_probe_for_a_bound_address_is_answered_to_all_nodes_without_the_solicited_flag() {
    let n = net(true);
    // learned from a solicitation's source link-layer option this time
    let theirs = ns(REMOTE, remote6(), asker6(), true);
    n.from_peer(P0, &theirs, at(1));
    assert_eq!(n.neigh.lookup(IpAddr::V6(remote6()), at(1)).map(|b| b.0), Some(REMOTE));
    let dad = ns(ASKER, Ipv6Addr::UNSPECIFIED, remote6(), false);
    n.from_local(L0, &dad, at(2));
    let mut out = [0u8; REPLY_MAX];
    let len = n.answer_neigh(&dad, &mut out, at(2)).expect("DAD answered (RFC 9161)");
    let p = SlicedPacket::from_ethernet(&out[..len]).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else { panic!() };
    assert_eq!(eth.destination(), [0x33, 0x33, 0, 0, 0, 1]);
    let Some(NetSlice::Ipv6(ip)) = &p.net else { panic!() };
    let all: Ipv6Addr = "ff02::1".parse().unwrap();
    assert_eq!(ip.header().destination_addr(), all);
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else { panic!() };
    assert!(icmp.is_checksum_valid(remote6().octets(), all.octets()));
    let Icmpv6Type::NeighborAdvertisement(f) = icmp.icmp_type() else { panic!() };
    assert!(!f.solicited && f.r#override && !f.router);
}

#[test]
fn unsolicited_advertisements_and_malformed_solicitations_are_never_answered() {
    let n = net(true);
    n.from_peer(P0, &na(REMOTE, remote6(), ASKER, asker6(), NA_SOLICITED), at(1));
    let mut out = [0u8; REPLY_MAX];
    // an advertisement from a local host floods as it is
    let adv = na(ASKER, asker6(), MacAddr([0x33, 0x33, 0, 0, 0, 1]), "ff02::1".parse().unwrap(), NA_OVERRIDE);
    assert_eq!(n.answer_neigh(&adv, &mut out, at(2)), None);
    // a solicitation with a broken checksum, or a hop limit below 255, is not answered
    let mut bad = ns(ASKER, asker6(), remote6(), true);
    bad[57] ^= 1;
    assert_eq!(n.answer_neigh(&bad, &mut out, at(2)), None);
    let mut hops = ns(ASKER, asker6(), remote6(), true);
    hops[21] = 64;
    assert_eq!(n.answer_neigh(&hops, &mut out, at(2)), None);
    // the good one is
    assert!(n.answer_neigh(&ns(ASKER, asker6(), remote6(), true), &mut out, at(2)).is_some());
    // and truncations of it never panic
    let good = ns(ASKER, asker6(), remote6(), true);
    for len in 0..good.len() {
        n.answer_neigh(&good[..len], &mut out, at(2));
        n.from_peer(P0, &good[..len], at(2));
    }
}

#[test]
fn without_arp_suppress_nothing_is_learned_or_answered() {
    let n = net(false);
    let req = arp(1, MacAddr::BROADCAST, ASKER, ASKER_IP, MacAddr([0; 6]), REMOTE_IP);
    n.from_peer(P0, &arp(2, ASKER, REMOTE, REMOTE_IP, ASKER, ASKER_IP), at(1));
    assert!(n.neigh.is_empty());
    assert_eq!(n.answer_neigh(&req, &mut [0; REPLY_MAX], at(1)), None);
    assert_eq!(n.neigh.counters.snapshot(), [0; 4], "no misses counted either");
}

#[test]
fn the_table_never_holds_more_than_the_fdb_cap_and_evicts_the_oldest() {
    let t = NeighTable::new(true, 8, Duration::from_secs(300));
    for i in 0..100u8 {
        t.learn(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), REMOTE, Source::Snooped(P0), None, at(u64::from(i)));
        assert!(t.len() <= 8);
    }
    assert_eq!(t.len(), 8);
    assert!(t.lookup(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 99)), at(100)).is_some());
    assert!(t.lookup(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 91)), at(100)).is_none());
    // rebinding back and forth does not grow the bookkeeping
    for i in 0..10_000u32 {
        let mac = if i % 2 == 0 { ASKER } else { REMOTE };
        t.learn(IpAddr::V4(REMOTE_IP), mac, Source::Snooped(P0), None, at(200));
    }
    assert!(t.lock().order.len() <= 2 * 8 + 64 + 1);
}

#[test]
fn a_reload_keeps_bindings_of_staying_peers_under_their_new_index() {
    let n = net(true);
    after_exchange(&n, at(1));
    // peer 192.0.2.2 (index 0) becomes index 1
    let mut spec = n.spec.clone();
    spec.peers.reverse();
    let (new, h) = n.successor(spec, at(2));
    assert_eq!(new.neigh.lookup(IpAddr::V4(REMOTE_IP), at(2)), Some((REMOTE, Source::Snooped(PeerIdx(1)), false)));
    assert!(ask(&new, ASKER, at(2)).is_some());
    assert_eq!(new.neigh.counters.get(Family::V4, false), 1, "counts carried over");
    h.finish(&n, &new, at(3));
    assert_eq!(new.neigh.counters.get(Family::V4, true), 1);
}
