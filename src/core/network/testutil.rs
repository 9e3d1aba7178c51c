//! What the core's unit tests build their networks and frames from.

use std::net::SocketAddr;

use super::NetworkSpec;
use crate::core::wire::ethernet::MacAddr;
use crate::core::{Encap, FdbConfig, Vni};

/// Network "blue": VXLAN VNI 42, MTU 1450, default FDB settings, no storm limit.
pub fn spec(local_ports: u16, peers: Vec<SocketAddr>) -> NetworkSpec {
    NetworkSpec {
        name: "blue".into(),
        encap: Encap::Vxlan,
        vni: Vni::new_unchecked(42),
        mtu: 1450,
        peers,
        fdb: FdbConfig::default(),
        bum_pps_limit: None,
        local_ports,
        mss_clamp: false,
        pmtu_sources: Default::default(),
        arp_suppress: false,
        unknown_unicast_drop: false,
        snoop_local: false,
    }
}

/// An IPv4 Ethernet frame of `len` bytes (zeros after the header).
pub fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}
