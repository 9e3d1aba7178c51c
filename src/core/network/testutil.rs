//! What the core's unit tests build their networks and frames from.

use std::net::SocketAddr;

use super::NetworkSpec;
use crate::core::wire::ethernet::MacAddr;

/// Network "blue": VXLAN VNI 42, MTU 1450, default FDB settings, no storm limit.
pub fn spec(local_ports: u16, peers: Vec<SocketAddr>) -> NetworkSpec {
    NetworkSpec { local_ports, ..NetworkSpec::vxlan("blue", 42, peers) }
}

/// An IPv4 Ethernet frame of `len` bytes (zeros after the header).
pub fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}
