//! Micro-benchmarks of the sans-IO core: what the data path pays per frame and per
//! super-frame, without any system call. They print; they assert nothing.
//!
//! Run: `cargo bench --bench core` (criterion; add a filter such as `-- fdb` to run a group).

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use overlayd::core::fabric::{Fabric, NetEntry};
use overlayd::core::offload::{Run, TcpSeg, TsoPlan, VnetHdr, flags, gso};
use overlayd::core::wire::ethernet::{EthernetFrame, MacAddr};
use overlayd::core::wire::vxlan::{self, VxlanHeader};
use overlayd::core::{Fdb, FdbConfig, Instant, LocalPort, Network, NetworkSpec, PeerIdx, Port, Vni, checksum};

const NOW: Instant = Instant::ZERO;

/// Ethernet + IPv4 (DF) + TCP (timestamps) with `payload` bytes, checksums complete.
fn tcp_frame(payload: usize, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 32 + payload];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 32 + payload) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[198, 51, 100, 1]);
    ip[16..20].copy_from_slice(&[198, 51, 100, 2]);
    let c = checksum::finish(checksum::sum(ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..66];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = 0x10;
    tcp[14..16].copy_from_slice(&501u16.to_be_bytes());
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    for (i, b) in f[66..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let ps = checksum::pseudo_v4(&[198, 51, 100, 1], &[198, 51, 100, 2], 6, (32 + payload) as u32);
    let c = checksum::finish(checksum::sum(&f[34..], ps));
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

fn network(peers: usize, max_entries: usize) -> Network {
    let peers = (0..peers).map(|i| SocketAddr::from(([192, 0, 2, 10 + i as u8], 4789))).collect();
    Network::new(NetworkSpec { fdb: FdbConfig { max_entries, ..FdbConfig::default() }, ..NetworkSpec::vxlan("bench", 42, peers) })
}

fn mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([2, 0x42, b[0], b[1], b[2], b[3]])
}

fn parse(c: &mut Criterion) {
    let f = tcp_frame(1398, 1);
    let mut g = c.benchmark_group("parse");
    g.bench_function("ethernet_l3", |b| b.iter(|| EthernetFrame::new_checked(black_box(&f[..])).expect("a built frame parses").l3()));
    g.bench_function("flow_hash", |b| b.iter(|| EthernetFrame::new_unchecked(black_box(&f[..])).flow_hash()));
    g.bench_function("tcp_segment", |b| b.iter(|| TcpSeg::parse(black_box(&f[..]))));
    let mut dg = vec![0u8; 8];
    vxlan::emit(&mut dg, Vni::new_unchecked(42));
    dg.extend_from_slice(&f);
    g.bench_function("vxlan_header", |b| b.iter(|| VxlanHeader::new_checked(black_box(&dg[..])).expect("a built header parses").vni()));
    g.finish();
}

fn encap_decap(c: &mut Criterion) {
    let mut g = c.benchmark_group("encap_decap");
    let mut buf = vec![0u8; 64 + 1500];
    g.bench_function("vxlan_emit", |b| b.iter(|| vxlan::emit(black_box(&mut buf[56..64]), Vni::new_unchecked(42))));
    let net = Arc::new(network(1, 8192));
    let fabric = Fabric::new(vec![NetEntry { net: net.clone(), io: () }], &[4789]);
    let mut dg = vec![0u8; 8];
    vxlan::emit(&mut dg, Vni::new_unchecked(42));
    dg.extend_from_slice(&tcp_frame(1398, 1));
    let peer = IpAddr::from([192, 0, 2, 10]);
    g.bench_function("classify_vxlan", |b| b.iter(|| fabric.classify_vxlan(4789, peer, black_box(&dg[..])).is_ok()));
    g.finish();

    let mut g = c.benchmark_group("offload");
    let payload = 64_000 - 66;
    let sf = tcp_frame(payload, 1);
    let h = VnetHdr { flags: flags::NEEDS_CSUM, gso_type: gso::TCPV4, hdr_len: 66, gso_size: 1398, csum_start: 34, csum_offset: 16 };
    g.throughput(Throughput::Bytes(sf.len() as u64));
    g.bench_function("checksum_64k", |b| b.iter(|| checksum::fold(checksum::sum(black_box(&sf[..]), 0))));
    let mut hdrs = vec![0u8; 66 * 64];
    g.bench_function("tso_split_64k", |b| {
        b.iter(|| {
            let plan = TsoPlan::new(black_box(&sf[..]), &h).expect("a built super-frame plans");
            for i in 0..plan.segments {
                plan.write_header(&sf, i, &mut hdrs[i * 66..]);
            }
        })
    });
    let segs: Vec<Vec<u8>> = (0..45).map(|i| tcp_frame(1398, 1 + i * 1398)).collect();
    g.bench_function("coalesce_45_segments", |b| {
        b.iter(|| {
            let first = TcpSeg::parse(&segs[0]).expect("a built segment parses");
            let mut run = Run::start(first);
            for s in &segs[1..] {
                let seg = TcpSeg::parse(s).expect("a built segment parses");
                let ok = seg.checksums_ok(s) && run.try_push(&segs[0], &seg, s);
                black_box(ok);
            }
            let mut out = [0u8; 128];
            run.header(&segs[0], &mut out)
        })
    });
    g.finish();
}

fn fdb(c: &mut Criterion) {
    let mut g = c.benchmark_group("fdb_lookup");
    for n in [1_000u32, 1_000_000] {
        let fdb = Fdb::new(FdbConfig { max_entries: n as usize, ..FdbConfig::default() });
        for i in 0..n {
            fdb.learn(mac(i), Port::Peer(PeerIdx((i % 8) as u16)), NOW);
        }
        let mut i = 0u32;
        g.bench_function(format!("{n}_entries"), |b| {
            b.iter(|| {
                i = (i.wrapping_mul(2_654_435_761).wrapping_add(1)) % n;
                fdb.lookup(black_box(mac(i)), NOW)
            })
        });
    }
    g.finish();
}

/// One batch of 64 frames through a network: the decisions a port thread makes (learn the
/// source, look up the destination, hash the flow) and those of the underlay thread.
fn batch(c: &mut Criterion) {
    let net = network(2, 8192);
    let frames: Vec<Vec<u8>> = (0..64).map(|i| tcp_frame(1398, i)).collect();
    // the destination lives behind peer 1
    net.from_peer(PeerIdx(1), &{
        let mut r = frames[0].clone();
        r[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        r[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        r
    }, NOW);
    let mut g = c.benchmark_group("node");
    g.throughput(Throughput::Elements(64));
    g.bench_function("batch_64_from_local", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(net.from_local(LocalPort(0), f, NOW));
                black_box(EthernetFrame::new_unchecked(&f[..]).flow_hash());
            }
        })
    });
    g.bench_function("batch_64_from_peer", |b| {
        b.iter_batched(
            || (),
            |_| {
                for f in &frames {
                    black_box(net.from_peer(PeerIdx(1), f, NOW));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Path MTU: building a "too big" reply (only for dropped frames), and what `mss_clamp` costs
/// every frame (a data segment: parsed and passed) and a SYN.
fn pmtu(c: &mut Criterion) {
    use overlayd::core::pmtu::{self, Sources};
    let mut g = c.benchmark_group("pmtu");
    let big = tcp_frame(1448, 1);
    let mut out = vec![0u8; pmtu::MAX_REPLY];
    let src = Sources { v4: Some([198, 51, 100, 9].into()), v6: None };
    g.bench_function("too_big_ipv4", |b| b.iter(|| pmtu::too_big(black_box(&big[..]), 1450, &src, &mut out).is_ok()));
    let mut data = tcp_frame(1398, 1);
    g.bench_function("clamp_mss_data_segment", |b| b.iter(|| pmtu::clamp_mss(black_box(&mut data[..]), 1450, false)));
    let mut syn = tcp_frame(0, 1);
    syn[47] = 0x02;
    syn[54..58].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    g.bench_function("clamp_mss_syn", |b| {
        b.iter_batched_ref(|| syn.clone(), |f| pmtu::clamp_mss(black_box(&mut f[..]), 1450, false), BatchSize::SmallInput)
    });
    g.finish();
}

/// ARP/ND suppression, side by side with what it replaces: the snooping cost on every frame
/// from a peer (arp_suppress off vs on), and answering an ARP request locally vs the flood
/// decision alone (which then costs one tunnel packet per peer on top).
fn neigh(c: &mut Criterion) {
    let (off, on) = (network(2, 8192), network_suppressing(2, 8192));
    let frames: Vec<Vec<u8>> = (0..64).map(|i| tcp_frame(1398, i)).collect();
    let mut g = c.benchmark_group("neigh");
    g.throughput(Throughput::Elements(64));
    for (name, net) in [("batch_64_from_peer_suppress_off", &off), ("batch_64_from_peer_suppress_on", &on)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                for f in &frames {
                    black_box(net.from_peer(PeerIdx(1), f, NOW));
                }
            })
        });
    }
    // 198.51.100.2 bound to 02:00:00:00:00:02 behind peer 1; a local host asks for it
    let asker = [2u8, 0, 0, 0, 0, 1];
    let arp = |op: u8, dst: [u8; 6], sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]| -> Vec<u8> {
        let mut f = vec![0u8; 42];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&sha);
        f[12..22].copy_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, op]);
        f[22..28].copy_from_slice(&sha);
        f[28..32].copy_from_slice(&spa);
        f[38..42].copy_from_slice(&tpa);
        f
    };
    let reply = arp(2, asker, [2, 0, 0, 0, 0, 2], [198, 51, 100, 2], [198, 51, 100, 1]);
    on.from_peer(PeerIdx(1), &reply, NOW);
    let req = arp(1, [0xff; 6], asker, [198, 51, 100, 1], [198, 51, 100, 2]);
    g.throughput(Throughput::Elements(1));
    g.bench_function("arp_request_flood_decision", |b| b.iter(|| black_box(off.from_local(LocalPort(0), black_box(&req), NOW))));
    let mut out = [0u8; overlayd::core::neigh::REPLY_MAX];
    g.bench_function("arp_request_answered", |b| {
        b.iter(|| {
            black_box(on.from_local(LocalPort(0), black_box(&req), NOW));
            black_box(on.answer_neigh(&req, &mut out, NOW))
        })
    });
    g.finish();
}

fn network_suppressing(peers: usize, max_entries: usize) -> Network {
    let mut spec = network(peers, max_entries).spec;
    spec.arp_suppress = true;
    Network::new(spec)
}

criterion_group!(benches, parse, encap_decap, fdb, batch, pmtu, neigh);
criterion_main!(benches);
