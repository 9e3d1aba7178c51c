//! The admin socket: a local UNIX socket (`admin.socket`, mode 0600) on which the running
//! daemon answers questions an operator asks from a shell, like `ovs-appctl fdb/show` or
//! `bridge fdb` do for Open vSwitch and the kernel bridge.
//!
//! Protocol: one JSON object per line each way. A request names its command in `cmd`:
//!
//! ```text
//! {"cmd":"fdb","network":"blue"}        the MAC table ("network" optional: all networks)
//! {"cmd":"fdb_flush","network":null}    forget learned MACs
//! {"cmd":"peers"}                       per network: peers, last seen, traffic each way
//! {"cmd":"stats"}                       every counter (the same numbers as /metrics)
//! {"cmd":"cluster"}                     etcd endpoints, connection, lease, revision, members
//! ```
//!
//! and every reply is `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`. The same
//! binary is the client (`overlayd fdb | peers | stats`, see [`client`]); scripts can use
//! `--json` or speak the protocol directly (`socat - UNIX-CONNECT:/run/overlayd/overlayd.sock`).
//!
//! The server ([`server`]) runs on the tokio control path; answering reads the lock-free FDB
//! and the counters' atomics, and never stops the data path.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::core::fabric::Fabric;
use crate::core::{Instant, Port};
use crate::metrics::sample::{PeerSample, Sample};

/// A request on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Fdb {
        #[serde(default)]
        network: Option<String>,
    },
    FdbFlush {
        #[serde(default)]
        network: Option<String>,
    },
    Peers {
        #[serde(default)]
        network: Option<String>,
    },
    Stats,
    /// `[cluster]` state: endpoints, connection, lease, revision, members.
    Cluster,
}

/// A reply: `result` when `ok`, `error` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn ok(result: impl Serialize) -> Reply {
        match serde_json::to_value(result) {
            Ok(v) => Reply { ok: true, result: Some(v), error: None },
            Err(e) => Reply::error(format!("cannot encode the reply: {e}")),
        }
    }

    pub fn error(e: impl Into<String>) -> Reply {
        Reply { ok: false, result: None, error: Some(e.into()) }
    }
}

/// One row of `overlayd fdb`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FdbEntry {
    pub mac: String,
    /// "local" (a port of this host) or "peer" (behind a tunnel).
    pub kind: String,
    /// The local port's name (TAP device), or the peer's underlay address.
    pub port: String,
    /// "learned" (from traffic, ages out) or "cluster" (advertised by the member behind the
    /// peer; does not age while its record lives).
    #[serde(rename = "type")]
    pub entry_type: String,
    /// Seconds since the MAC was last seen.
    pub age_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FdbTable {
    pub network: String,
    pub ageing_secs: u64,
    pub entries: Vec<FdbEntry>,
    /// IP → MAC bindings for ARP/ND suppression (`arp_suppress` networks).
    #[serde(default)]
    pub neighbours: Vec<NeighEntry>,
}

/// One binding of `overlayd fdb`'s neighbour table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighEntry {
    pub ip: String,
    pub mac: String,
    /// "snooped" (from ARP/ND or DHCP of a host behind `peer`), "cluster" (advertised by the
    /// member behind `peer`) or "local" (a host on a local port, what `advertise = "macs+ips"`
    /// publishes).
    pub source: String,
    /// The peer it was learned from (underlay address), "-" for a local one.
    pub peer: String,
    /// Seconds since the binding was last seen.
    pub age_secs: f64,
    /// Learned from a DHCP lease: the seconds left of it (the binding ends with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flushed {
    pub network: String,
    pub flushed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerTable {
    pub network: String,
    pub peers: Vec<PeerSample>,
}

/// What the I/O side attaches to a network must name its local ports.
pub trait PortNames {
    fn local_port_name(&self, index: usize) -> String;
}

impl PortNames for () {
    fn local_port_name(&self, index: usize) -> String {
        format!("port{index}")
    }
}

/// Answer a request from the daemon's current state. `sample` takes the counters (only called
/// for the commands that need them).
pub fn handle<P: PortNames>(req: &Request, fabric: &Fabric<P>, sample: impl FnOnce() -> Sample, now: Instant) -> Reply {
    let selected = |network: &Option<String>| -> Result<Vec<usize>, String> {
        match network {
            None => Ok((0..fabric.networks.len()).collect()),
            Some(n) => match fabric.networks.iter().position(|e| e.net.name() == n) {
                Some(i) => Ok(vec![i]),
                None => {
                    let names: Vec<&str> = fabric.networks.iter().map(|e| e.net.name()).collect();
                    Err(format!("no network named {n:?} (networks: {})", if names.is_empty() { "none".into() } else { names.join(", ") }))
                }
            },
        }
    };
    match req {
        Request::Fdb { network } => match selected(network) {
            Err(e) => Reply::error(e),
            Ok(idx) => Reply::ok(
                idx.into_iter()
                    .map(|i| {
                        let e = &fabric.networks[i];
                        let entries = e
                            .net
                            .fdb
                            .entries(now)
                            .into_iter()
                            .map(|r| {
                                let (kind, port) = match r.port {
                                    Port::Local(l) => ("local", e.io.local_port_name(usize::from(l.0))),
                                    Port::Peer(p) => (
                                        "peer",
                                        e.net.peers.get(usize::from(p.0)).map_or_else(|| format!("peer#{}", p.0), |p| p.addr.ip().to_string()),
                                    ),
                                };
                                FdbEntry { mac: r.mac.to_string(), kind: kind.into(), port, entry_type: if r.cluster { "cluster" } else { "learned" }.into(), age_secs: r.age.as_secs_f64() }
                            })
                            .collect();
                        let neighbours = e
                            .net
                            .neigh
                            .rows(now)
                            .into_iter()
                            .chain(e.net.local_neigh.rows(now))
                            .map(|r| {
                                use crate::core::neigh::Source;
                                let (source, p) = match r.source {
                                    Source::Snooped(p) => ("snooped", Some(p)),
                                    Source::Cluster(p) => ("cluster", Some(p)),
                                    Source::Local => ("local", None),
                                };
                                let peer = p.map_or_else(|| "-".to_string(), |p| e.net.peers.get(usize::from(p.0)).map_or_else(|| format!("peer#{}", p.0), |p| p.addr.ip().to_string()));
                                let lease_secs = r.lease_left.map(|d| d.as_secs_f64());
                                NeighEntry { ip: r.ip.to_string(), mac: r.mac.to_string(), source: source.into(), peer, age_secs: r.age.as_secs_f64(), lease_secs }
                            })
                            .collect();
                        FdbTable { network: e.net.name().to_string(), ageing_secs: e.net.fdb.config().ageing.as_secs(), entries, neighbours }
                    })
                    .collect::<Vec<_>>(),
            ),
        },
        Request::FdbFlush { network } => match selected(network) {
            Err(e) => Reply::error(e),
            Ok(idx) => {
                let out: Vec<Flushed> = idx
                    .into_iter()
                    .map(|i| {
                        let net = &fabric.networks[i].net;
                        let n = net.fdb.flush_all(now) as u64;
                        net.neigh.clear();
                        tracing::info!(network = net.name(), flushed = n, "fdb flushed on admin request");
                        Flushed { network: net.name().to_string(), flushed: n }
                    })
                    .collect();
                Reply::ok(out)
            }
        },
        Request::Peers { network } => match selected(network) {
            Err(e) => Reply::error(e),
            Ok(idx) => {
                let s = sample();
                let names: Vec<&str> = idx.iter().map(|&i| fabric.networks[i].net.name()).collect();
                let out: Vec<PeerTable> = s
                    .networks
                    .into_iter()
                    .filter(|n| names.contains(&n.name.as_str()))
                    .map(|n| PeerTable { network: n.name, peers: n.peers })
                    .collect();
                Reply::ok(out)
            }
        },
        Request::Stats => Reply::ok(sample()),
        // answered by the daemon, which holds the cluster state
        Request::Cluster => Reply::error("this daemon has no [cluster] section"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fabric::NetEntry;
    use crate::core::stats::GlobalDrops;
    use crate::core::{LocalPort, Network, NetworkSpec, PeerIdx};
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn fabric() -> Fabric<()> {
        let mk = |name: &str, vni| NetEntry {
            net: Arc::new(Network::new(NetworkSpec::vxlan(name, vni, vec![SocketAddr::from(([192, 0, 2, 2], 4789))]))),
            io: (),
        };
        Fabric::new(vec![mk("blue", 42), mk("red", 43)], &[4789, 4789])
    }

    fn frame(src: u8) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].fill(0xff);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
        f
    }

    fn ask(f: &Fabric<()>, req: Request, now: Instant) -> Reply {
        let global = GlobalDrops::default();
        handle(&req, f, || crate::metrics::sample::take(f, &global, now, 0.0), now)
    }

    #[test]
    fn requests_parse_from_the_documented_json() {
        let r: Request = serde_json::from_str(r#"{"cmd":"fdb","network":"blue"}"#).unwrap();
        assert_eq!(r, Request::Fdb { network: Some("blue".into()) });
        let r: Request = serde_json::from_str(r#"{"cmd":"fdb_flush"}"#).unwrap();
        assert_eq!(r, Request::FdbFlush { network: None });
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"stats"}"#).unwrap(), Request::Stats);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn fdb_shows_each_mac_against_its_port_or_peer_with_its_age() {
        let f = fabric();
        let blue = &f.networks[0].net;
        blue.from_peer(PeerIdx(0), &frame(0xb), Instant::from_secs(1));
        blue.from_local(LocalPort(0), &frame(0xa), Instant::from_secs(3));
        let r = ask(&f, Request::Fdb { network: Some("blue".into()) }, Instant::from_secs(4));
        assert!(r.ok, "{r:?}");
        let t: Vec<FdbTable> = serde_json::from_value(r.result.unwrap()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].network, "blue");
        let e = &t[0].entries;
        assert_eq!((e[0].mac.as_str(), e[0].kind.as_str(), e[0].port.as_str(), e[0].age_secs), ("02:00:00:00:00:0a", "local", "port0", 1.0));
        assert_eq!((e[1].mac.as_str(), e[1].kind.as_str(), e[1].port.as_str(), e[1].age_secs), ("02:00:00:00:00:0b", "peer", "192.0.2.2", 3.0));
    }

    #[test]
    fn unknown_network_is_an_error_naming_the_known_ones() {
        let r = ask(&fabric(), Request::Fdb { network: Some("green".into()) }, Instant::ZERO);
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some(r#"no network named "green" (networks: blue, red)"#));
    }

    #[test]
    fn flush_empties_only_the_named_network() {
        let f = fabric();
        f.networks[0].net.from_local(LocalPort(0), &frame(1), Instant::ZERO);
        f.networks[1].net.from_local(LocalPort(0), &frame(2), Instant::ZERO);
        let r = ask(&f, Request::FdbFlush { network: Some("blue".into()) }, Instant::ZERO);
        let out: Vec<Flushed> = serde_json::from_value(r.result.unwrap()).unwrap();
        assert_eq!(out, vec![Flushed { network: "blue".into(), flushed: 1 }]);
        assert!(f.networks[0].net.fdb.is_empty());
        assert_eq!(f.networks[1].net.fdb.len(), 1);
    }

    #[test]
    fn peers_lists_traffic_and_last_seen_per_network() {
        let f = fabric();
        f.networks[1].net.from_peer(PeerIdx(0), &frame(3), Instant::from_secs(2));
        let r = ask(&f, Request::Peers { network: None }, Instant::from_secs(5));
        let t: Vec<PeerTable> = serde_json::from_value(r.result.unwrap()).unwrap();
        assert_eq!(t.iter().map(|t| t.network.as_str()).collect::<Vec<_>>(), ["blue", "red"]);
        assert_eq!(t[0].peers[0].last_seen_ago_secs, None);
        assert_eq!(t[1].peers[0].last_seen_ago_secs, Some(3.0));
    }
}
