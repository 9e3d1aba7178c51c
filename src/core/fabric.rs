//! All networks of one daemon, and the demultiplexing of underlay packets to them.
//!
//! `Fabric<P>` is generic over `P`, whatever the I/O side attaches to each network (its TAP
//! devices in the daemon, nothing in tests), so the demux logic stays here, pure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::network::Network;
use super::stats::DropReason;
use super::wire::{ParseError, vxlan::VxlanHeader};
use super::{Encap, PeerIdx, Vni};

#[derive(Debug)]
pub struct NetEntry<P> {
    pub net: Arc<Network>,
    pub io: P,
}

/// The networks of a daemon at one configuration generation.
#[derive(Debug)]
pub struct Fabric<P> {
    pub networks: Vec<NetEntry<P>>,
    /// (UDP port, VNI) → index into `networks`.
    vxlan: HashMap<(u16, Vni), usize>,
}

/// Where a tunnel packet belongs.
#[derive(Debug)]
pub struct Classified<'f, 'p, P> {
    pub entry: &'f NetEntry<P>,
    pub peer: PeerIdx,
    pub inner: &'p [u8],
}

/// Why a tunnel packet was refused, and the network to charge if one is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub reason: DropReason,
    pub network: Option<usize>,
}

impl<P> Fabric<P> {
    /// Build from networks. The VXLAN key of each network is its (destination port, VNI), taken
    /// from its first peer's port, or `default_port` if it has no peers.
    pub fn new(networks: Vec<NetEntry<P>>, vxlan_ports: &[u16]) -> Self {
        let vxlan = networks
            .iter()
            .enumerate()
            .zip(vxlan_ports)
            .filter(|((_, e), _)| e.net.spec.encap == Encap::Vxlan)
            .map(|((i, e), port)| ((*port, e.net.spec.vni), i))
            .collect();
        Fabric { networks, vxlan }
    }

    /// Decapsulate a VXLAN payload (the UDP payload received on `port` from `src`) and find the
    /// network and peer it belongs to.
    pub fn classify_vxlan<'f, 'p>(
        &'f self,
        port: u16,
        src: IpAddr,
        datagram: &'p [u8],
    ) -> Result<Classified<'f, 'p, P>, Refused> {
        let h = VxlanHeader::new_checked(datagram).map_err(|e| Refused {
            reason: match e {
                ParseError::Truncated => DropReason::Malformed,
                ParseError::BadFlags => DropReason::BadFlags,
            },
            network: None,
        })?;
        let &idx = self
            .vxlan
            .get(&(port, h.vni()))
            .ok_or(Refused { reason: DropReason::UnknownVni, network: None })?;
        let entry = &self.networks[idx];
        let peer = entry
            .net
            .peer_by_ip(src)
            .ok_or(Refused { reason: DropReason::UnknownPeer, network: Some(idx) })?;
        let inner = &datagram[super::wire::vxlan::HEADER_LEN..];
        Ok(Classified { entry, peer, inner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fdb::FdbConfig;
    use crate::core::network::NetworkSpec;
    use crate::core::wire::vxlan;
    use std::net::SocketAddr;

    fn fabric() -> Fabric<()> {
        let mk = |name: &str, vni: u32, peers: Vec<SocketAddr>| NetEntry {
            net: Arc::new(Network::new(NetworkSpec {
                name: name.into(),
                encap: Encap::Vxlan,
                vni: Vni::new_unchecked(vni),
                mtu: 1450,
                peers,
                fdb: FdbConfig::default(),
                local_ports: 1,
            })),
            io: (),
        };
        Fabric::new(
            vec![
                mk("blue", 42, vec![SocketAddr::from(([192, 0, 2, 2], 4789))]),
                mk("red", 43, vec![SocketAddr::from(([192, 0, 2, 3], 4789))]),
            ],
            &[4789, 4789],
        )
    }

    fn pkt(vni: u32) -> Vec<u8> {
        let mut p = vec![0u8; 8 + 14];
        vxlan::emit(&mut p, Vni::new_unchecked(vni));
        p
    }

    #[test]
    fn packet_is_matched_to_network_by_vni_and_to_peer_by_source() {
        let f = fabric();
        let p = pkt(43);
        let c = f.classify_vxlan(4789, [192, 0, 2, 3].into(), &p).unwrap();
        assert_eq!(c.entry.net.name(), "red");
        assert_eq!(c.peer, PeerIdx(0));
        assert_eq!(c.inner.len(), 14);
    }

    #[test]
    fn unknown_vni_is_refused_without_a_network() {
        let f = fabric();
        let r = f.classify_vxlan(4789, [192, 0, 2, 3].into(), &pkt(44)).unwrap_err();
        assert_eq!(r, Refused { reason: DropReason::UnknownVni, network: None });
        // same VNI on another UDP port is another namespace
        let r = f.classify_vxlan(8472, [192, 0, 2, 3].into(), &pkt(43)).unwrap_err();
        assert_eq!(r.reason, DropReason::UnknownVni);
    }

    #[test]
    fn a_peer_of_another_network_is_an_unknown_peer_here() {
        let f = fabric();
        // 192.0.2.2 is blue's peer, claiming red's VNI
        let r = f.classify_vxlan(4789, [192, 0, 2, 2].into(), &pkt(43)).unwrap_err();
        assert_eq!(r, Refused { reason: DropReason::UnknownPeer, network: Some(1) });
    }

    #[test]
    fn bad_headers_are_refused_by_reason() {
        let f = fabric();
        let src: IpAddr = [192, 0, 2, 2].into();
        assert_eq!(f.classify_vxlan(4789, src, &[8, 0, 0]).unwrap_err().reason, DropReason::Malformed);
        let mut p = pkt(42);
        p[0] = 0;
        assert_eq!(f.classify_vxlan(4789, src, &p).unwrap_err().reason, DropReason::BadFlags);
    }
}
