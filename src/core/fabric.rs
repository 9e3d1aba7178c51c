//! All networks of one daemon, and the demultiplexing of underlay packets to them.
//!
//! `Fabric<P>` is generic over `P`, whatever the I/O side attaches to each network (its TAP
//! devices in the daemon, nothing in tests), so the demux logic stays here, pure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::network::Network;
use super::stats::{DropReason, GlobalDrops, Shard};
use super::wire::gre::{self, GreError, GreHeader};
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
    /// GRE key (`None` = the keyless network) → index into `networks`.
    gre: HashMap<Option<u32>, usize>,
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
        let gre = networks
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.net.spec.encap {
                Encap::Gre(o) => Some((o.key.then_some(e.net.spec.vni.get()), i)),
                Encap::Vxlan => None,
            })
            .collect();
        Fabric { networks, vxlan, gre }
    }

    /// Whether any network uses GRE (the daemon then opens a raw GRE socket).
    pub fn has_gre(&self) -> bool {
        !self.gre.is_empty()
    }

    /// Count a refused tunnel packet: against its network when the refusal names one, else
    /// among the drops that belong to no network.
    pub fn count_refused(&self, refused: Refused, shard: Shard, global: &GlobalDrops) {
        match refused.network.and_then(|i| self.networks.get(i)) {
            Some(e) => e.net.stats.count_drop(shard, refused.reason),
            None => global.count_drop(refused.reason),
        }
    }

    /// Decapsulate a GRE packet (the IP payload received from `src`) and find the network and
    /// peer it belongs to. The key selects the network (RFC 2890); a keyless packet belongs to
    /// the keyless GRE network, if there is one.
    pub fn classify_gre<'f, 'p>(&'f self, src: IpAddr, packet: &'p [u8]) -> Result<Classified<'f, 'p, P>, Refused> {
        let refuse = |reason, network| Refused { reason, network };
        let h = GreHeader::new_checked(packet).map_err(|e| {
            refuse(
                match e {
                    GreError::Truncated => DropReason::Malformed,
                    GreError::Version => DropReason::GreVersion,
                    GreError::Routing => DropReason::GreRouting,
                },
                None,
            )
        })?;
        if h.protocol() != gre::PROTO_TEB {
            return Err(refuse(DropReason::GreProtocol, None));
        }
        let idx = match (h.key(), self.gre.get(&h.key())) {
            (_, Some(&i)) => i,
            // a key nobody uses: unexpected if the only GRE network here is keyless
            (Some(_), None) => match self.gre.get(&None) {
                Some(&i) => return Err(refuse(DropReason::GreKeyUnexpected, Some(i))),
                None => return Err(refuse(DropReason::UnknownVni, None)),
            },
            (None, None) => return Err(refuse(DropReason::GreKeyMissing, self.gre_network_of_peer(src))),
        };
        let entry = &self.networks[idx];
        let peer = entry.net.peer_by_ip(src).ok_or(refuse(DropReason::UnknownPeer, Some(idx)))?;
        if !h.checksum_ok() {
            return Err(refuse(DropReason::GreChecksum, Some(idx)));
        }
        let inner = &packet[h.header_len()..];
        Ok(Classified { entry, peer, inner })
    }

    /// The GRE network `src` is a peer of, if exactly one: whom to charge a keyless packet.
    fn gre_network_of_peer(&self, src: IpAddr) -> Option<usize> {
        let mut it = self.gre.values().copied().filter(|&i| self.networks[i].net.peer_by_ip(src).is_some());
        match (it.next(), it.next()) {
            (Some(i), None) => Some(i),
            _ => None,
        }
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
    use crate::core::network::NetworkSpec;
    use crate::core::wire::vxlan;
    use std::net::SocketAddr;

    fn fabric() -> Fabric<()> {
        gre_fabric(&[])
    }

    /// blue (VXLAN 42), red (VXLAN 43), then one GRE network per (key, checksum) in `gre`,
    /// named gre0.., vni 42 + i, each with peer 192.0.2.(10 + i).
    fn gre_fabric(gre: &[(bool, bool)]) -> Fabric<()> {
        let mk = |name: &str, encap: Encap, vni: u32, peers: Vec<SocketAddr>| NetEntry {
            net: Arc::new(Network::new(NetworkSpec { encap, ..NetworkSpec::vxlan(name, vni, peers) })),
            io: (),
        };
        let mut nets = vec![
            mk("blue", Encap::Vxlan, 42, vec![SocketAddr::from(([192, 0, 2, 2], 4789))]),
            mk("red", Encap::Vxlan, 43, vec![SocketAddr::from(([192, 0, 2, 3], 4789))]),
        ];
        let mut ports = vec![4789, 4789];
        for (i, &(key, checksum)) in gre.iter().enumerate() {
            let peer = SocketAddr::from(([192, 0, 2, 10 + i as u8], 0));
            nets.push(mk(&format!("gre{i}"), Encap::Gre(crate::core::GreOptions { key, checksum }), 42 + i as u32, vec![peer]));
            ports.push(0);
        }
        Fabric::new(nets, &ports)
    }

    fn gre_pkt(key: Option<u32>, checksum: bool) -> Vec<u8> {
        let repr = gre::GreRepr { key, checksum };
        let mut p = vec![0u8; repr.header_len() + 14];
        p[repr.header_len()..].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
        repr.emit(&mut p);
        p
    }

    #[test]
    fn gre_packet_is_matched_by_key_and_source() {
        let f = gre_fabric(&[(true, false), (true, true)]);
        let src: IpAddr = [192, 0, 2, 11].into();
        let p = gre_pkt(Some(43), true);
        let c = f.classify_gre(src, &p).unwrap();
        assert_eq!(c.entry.net.name(), "gre1");
        assert_eq!(c.peer, PeerIdx(0));
        assert_eq!(c.inner.len(), 14);
        // a checksum is verified when present, whatever the network sends itself
        let p = gre_pkt(Some(42), true);
        let c = f.classify_gre([192, 0, 2, 10].into(), &p).unwrap();
        assert_eq!(c.entry.net.name(), "gre0");
        // VXLAN networks with the same number are not GRE networks
        assert_eq!(f.classify_gre(src, &gre_pkt(Some(44), false)).unwrap_err().reason, DropReason::UnknownVni);
        assert_eq!(f.classify_gre([192, 0, 2, 2].into(), &gre_pkt(Some(43), false)).unwrap_err(), Refused { reason: DropReason::UnknownPeer, network: Some(3) });
    }

    #[test]
    fn keyless_gre_goes_to_the_keyless_network() {
        let f = gre_fabric(&[(false, false)]);
        let p = gre_pkt(None, false);
        let c = f.classify_gre([192, 0, 2, 10].into(), &p).unwrap();
        assert_eq!(c.entry.net.name(), "gre0");
        let r = f.classify_gre([192, 0, 2, 10].into(), &gre_pkt(Some(42), false)).unwrap_err();
        assert_eq!(r, Refused { reason: DropReason::GreKeyUnexpected, network: Some(2) });
    }

    #[test]
    fn missing_key_is_charged_to_the_senders_network() {
        let f = gre_fabric(&[(true, false), (true, false)]);
        let r = f.classify_gre([192, 0, 2, 11].into(), &gre_pkt(None, false)).unwrap_err();
        assert_eq!(r, Refused { reason: DropReason::GreKeyMissing, network: Some(3) });
        let r = f.classify_gre([192, 0, 2, 99].into(), &gre_pkt(None, false)).unwrap_err();
        assert_eq!(r, Refused { reason: DropReason::GreKeyMissing, network: None });
    }

    #[test]
    fn bad_gre_headers_are_refused_by_reason() {
        let f = gre_fabric(&[(true, true)]);
        let src: IpAddr = [192, 0, 2, 10].into();
        let reason = |p: &[u8]| f.classify_gre(src, p).unwrap_err().reason;
        let good = gre_pkt(Some(42), true);
        assert!(f.classify_gre(src, &good).is_ok());
        let mut p = good.clone();
        p[1] |= 1;
        assert_eq!(reason(&p), DropReason::GreVersion);
        let mut p = good.clone();
        p[0] |= 0x40;
        assert_eq!(reason(&p), DropReason::GreRouting);
        let mut p = good.clone();
        p[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(reason(&p), DropReason::GreProtocol);
        let mut p = good.clone();
        p[13] ^= 0xff;
        assert_eq!(reason(&p), DropReason::GreChecksum);
        assert_eq!(reason(&good[..10]), DropReason::Malformed);
        assert_eq!(reason(&good[..3]), DropReason::Malformed);
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
