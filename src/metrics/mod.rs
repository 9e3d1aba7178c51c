//! Prometheus metrics: every `overlayd_*` metric is defined once, here.
//!
//! The data path never touches a Prometheus type. It bumps plain atomics (`core::stats`,
//! sharded per thread role, no lock per frame); at scrape time the [`Collector`] below takes a
//! [`Sample`] (all shards folded) and turns it into metric families. A scrape therefore costs
//! the data path nothing but a few cache-line reads.
//!
//! Naming follows the Prometheus guide: prefix `overlayd_`, base units (bytes, seconds),
//! `_total` on counters, help text everywhere, bounded label sets:
//! - `network`: a configured network name. Drops that belong to no configured network
//!   (a VNI nobody uses, a tunnel header too short or flagged wrong to tell the network) carry
//!   `network="-"` ([`NO_NETWORK`]);
//! - `peer`: a configured peer's underlay address (the peer list is bounded by the config);
//! - `reason`: one value per `DropReason` variant, every one exported (zeros included), so the
//!   label set follows the enum;
//! - `direction`: `rx` (into overlayd) or `tx` (out of overlayd);
//! - `event`: `learned`, `moved`, `expired`, `evicted`, `flushed`, `pinned`, `cluster_moved`;
//! - `family`: `ipv4` (ARP) or `ipv6` (neighbour discovery); `result`: `hit` or `miss`;
//! - `message`: `ack`, `nak`, `release`, `decline`, `malformed` (DHCP); `result`: `applied` or
//!   `ignored`.
//!
//! A MAC address is never a label: `overlayd fdb` on the admin socket shows the table.
//!
//! Adding a metric: add a field to [`Families`], create it in [`Families::new`] (name, help,
//! labels), and fill it in [`Families::fill`] from the [`Sample`] (add to the sample first if
//! the number is not there yet). Registration, reset and export follow from the field list.

pub mod http;
pub mod sample;

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub use sample::Sample;

/// The `network` label of drops that belong to no configured network.
pub const NO_NETWORK: &str = "-";

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metric families filled from a [`Sample`] at every scrape.
struct Families {
    tap_frames: IntCounterVec,
    tap_bytes: IntCounterVec,
    tunnel_packets: IntCounterVec,
    tunnel_bytes: IntCounterVec,
    drops: IntCounterVec,
    flooded: IntCounterVec,
    partial_checksums: IntCounterVec,
    tap_rx_inline: IntCounterVec,
    run_frames: IntCounterVec,
    udp_coalesced: IntCounterVec,
    fdb_entries: IntGaugeVec,
    fdb_max_entries: IntGaugeVec,
    fdb_events: IntCounterVec,
    peer_last_seen: GaugeVec,
    peer_up: GaugeVec,
    vm_ports: IntGaugeVec,
    vm_connections: IntCounterVec,
    pmtu_signals: IntCounterVec,
    pmtu_limited: IntCounterVec,
    mss_clamped: IntCounterVec,
    neigh_suppressed: IntCounterVec,
    neigh_bindings: IntGaugeVec,
    neigh_dhcp: IntCounterVec,
    cluster_connected: IntGaugeVec,
    cluster_members: IntGaugeVec,
    cluster_events: IntCounterVec,
    cluster_resyncs: IntCounterVec,
    datapath_info: IntGaugeVec,
    fast_frames: IntCounterVec,
    cluster_macs: IntGaugeVec,
    cluster_adverts: IntCounterVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

impl Families {
    fn new() -> prometheus::Result<Families> {
        Ok(Families {
            tap_frames: counter(
                "overlayd_tap_frames_total",
                "Frames read from (rx) or written to (tx) the network's local ports (TAP devices).",
                &["network", "direction"],
            )?,
            tap_bytes: counter(
                "overlayd_tap_bytes_total",
                "Bytes of Ethernet frames read from (rx) or written to (tx) the network's local ports.",
                &["network", "direction"],
            )?,
            tunnel_packets: counter(
                "overlayd_tunnel_packets_total",
                "Tunnel packets received from (rx) or sent to (tx) a peer, per network.",
                &["network", "peer", "direction"],
            )?,
            tunnel_bytes: counter(
                "overlayd_tunnel_bytes_total",
                "Bytes of tunnel payload (tunnel header plus inner frame) received from (rx) or sent to (tx) a peer.",
                &["network", "peer", "direction"],
            )?,
            drops: counter(
                "overlayd_drops_total",
                "Frames or tunnel packets dropped, by reason; network=\"-\" for packets that belong to no configured network.",
                &["network", "reason"],
            )?,
            flooded: counter(
                "overlayd_flooded_frames_total",
                "Frames flooded (broadcast, multicast or unknown unicast) to every other port of the network.",
                &["network"],
            )?,
            partial_checksums: counter(
                "overlayd_partial_checksums_total",
                "Frames from peers whose inner TCP/UDP checksum was left partial by the sender (a kernel peer on a link with checksum offload) and completed here.",
                &["network"],
            )?,
            tap_rx_inline: counter(
                "overlayd_tap_rx_inline_frames_total",
                "Frames read from a TAP by an underlay thread right after it wrote into that TAP (run to completion: the host's answer sent without waking the port's thread); also in overlayd_tap_frames_total.",
                &["network"],
            )?,
            run_frames: counter(
                "overlayd_tunnel_rx_run_frames_total",
                "Tunnel packets from peers that took the forwarding decision of the first datagram of their GRO run (same headers, a TCP segment): decided once per run; also in overlayd_tunnel_packets_total.",
                &["network"],
            )?,
            udp_coalesced: counter(
                "overlayd_tap_tx_udp_coalesced_total",
                "UDP datagrams from peers written to a TAP inside one super-frame of several (UDP segmentation offload, Linux >= 6.2): the host cuts it back into the datagrams; each super-frame counts once in overlayd_tap_frames_total.",
                &["network"],
            )?,
            fdb_entries: gauge("overlayd_fdb_entries", "MAC addresses in the network's forwarding table.", &["network"])?,
            fdb_max_entries: gauge(
                "overlayd_fdb_max_entries",
                "The cap of the network's forwarding table (fdb_max_entries); beyond it the busiest port's oldest MAC is evicted.",
                &["network"],
            )?,
            fdb_events: counter(
                "overlayd_fdb_events_total",
                "Changes of the network's forwarding table: MACs learned, moved to another port, expired, evicted (table full), flushed, or pinned (moved too often); cluster_moved: entries of type cluster that the data path saw elsewhere.",
                &["network", "event"],
            )?,
            vm_ports: gauge("overlayd_vm_ports", "VMs connected now to the network's vm_socket or vm_dgram_socket.", &["network"])?,
            vm_connections: counter(
                "overlayd_vm_connections_total",
                "VM ports connected, disconnected (left, failed, or dropped for bad framing), or refused (port table full).",
                &["network", "event"],
            )?,
            pmtu_signals: counter(
                "overlayd_pmtu_signals_total",
                "ICMP fragmentation-needed (family=ipv4) or ICMPv6 packet-too-big (family=ipv6) messages sent back to a local port for a frame over the network MTU.",
                &["network", "family"],
            )?,
            pmtu_limited: counter(
                "overlayd_pmtu_signals_limited_total",
                "Path-MTU signals not sent because the port's rate limit was spent (the frame is dropped as mtu_exceeded all the same).",
                &["network"],
            )?,
            mss_clamped: counter(
                "overlayd_mss_clamped_total",
                "TCP SYNs from local ports whose MSS option was lowered to fit the network MTU (mss_clamp).",
                &["network"],
            )?,
            neigh_suppressed: counter(
                "overlayd_neigh_suppressed_total",
                "ARP requests (family=ipv4) and IPv6 neighbour solicitations (ipv6) from local ports on arp_suppress networks: answered locally from a binding (hit) or flooded for want of one (miss).",
                &["network", "family", "result"],
            )?,
            neigh_bindings: gauge(
                "overlayd_neigh_bindings",
                "IP to MAC bindings the network holds for ARP/ND suppression (snooped from ARP/ND or DHCP of hosts behind peers, or from the cluster).",
                &["network"],
            )?,
            neigh_dhcp: counter(
                "overlayd_neigh_dhcp_total",
                "DHCP messages snooped on the network's ports: an ack that bound its address to the client's MAC (applied) or named a MAC not where a binding could go (ignored); a nak, release or decline that removed a binding (applied) or found none (ignored); malformed DHCP (ignored).",
                &["network", "message", "result"],
            )?,
            datapath_info: gauge(
                "overlayd_datapath_info",
                "1 for the data path that forwards the network's known unicast: ebpf (fast path at TC) or userspace.",
                &["network", "datapath"],
            )?,
            fast_frames: counter(
                "overlayd_fastpath_frames_total",
                "Frames the eBPF fast path carried (also counted in overlayd_tap_* and overlayd_tunnel_*): from the network's TAPs (tap_rx) or tunnel packets received (tunnel_rx).",
                &["network", "direction"],
            )?,
            peer_last_seen: GaugeVec::new(
                Opts::new(
                    "overlayd_peer_last_seen_seconds",
                    "Unix time at which a packet of the network last came from the peer; 0 if never.",
                ),
                &["network", "peer"],
            )?,
            peer_up: GaugeVec::new(
                Opts::new(
                    "overlayd_peer_up",
                    "1 while packets or keepalives keep coming from the peer, 0 once it is declared down (or never heard from).",
                ),
                &["network", "peer"],
            )?,
            cluster_connected: gauge("overlayd_cluster_connected", "1 while the daemon is connected to its etcd cluster, else 0 (only with [cluster]).", &[])?,
            cluster_members: gauge("overlayd_cluster_members", "Members of the clustered network known from etcd (this node not counted).", &["network"])?,
            cluster_events: counter(
                "overlayd_cluster_events_total",
                "Membership events of a clustered network: members added, removed, expired (lease ended), records rejected.",
                &["network", "event"],
            )?,
            cluster_resyncs: counter("overlayd_cluster_resyncs_total", "Full listings of the cluster's members, by why they were made.", &["reason"])?,
            cluster_macs: gauge(
                "overlayd_cluster_macs",
                "MAC bindings of an advertising network: published by this node (origin=local) and advertised by other members (origin=remote).",
                &["network", "origin"],
            )?,
            cluster_adverts: counter(
                "overlayd_cluster_adverts_total",
                "MAC advertisements of this node: published (first write of a MAC), withdrawn (deleted: aged out, moved away); rejected: other members' records that did not parse.",
                &["network", "op"],
            )?,
        })
    }

    fn counters(&self) -> [&IntCounterVec; 21] {
        [
            &self.tap_frames,
            &self.tap_bytes,
            &self.tunnel_packets,
            &self.tunnel_bytes,
            &self.drops,
            &self.flooded,
            &self.partial_checksums,
            &self.tap_rx_inline,
            &self.run_frames,
            &self.udp_coalesced,
            &self.fdb_events,
            &self.vm_connections,
            &self.pmtu_signals,
            &self.pmtu_limited,
            &self.mss_clamped,
            &self.neigh_suppressed,
            &self.neigh_dhcp,
            &self.cluster_events,
            &self.cluster_resyncs,
            &self.fast_frames,
            &self.cluster_adverts,
        ]
    }

    fn collectors(&self) -> Vec<&dyn Collector> {
        let mut v: Vec<&dyn Collector> = self.counters().into_iter().map(|c| c as &dyn Collector).collect();
        v.push(&self.fdb_entries);
        v.push(&self.fdb_max_entries);
        v.push(&self.peer_last_seen);
        v.push(&self.peer_up);
        v.push(&self.vm_ports);
        v.push(&self.neigh_bindings);
        v.push(&self.cluster_connected);
        v.push(&self.cluster_members);
        v.push(&self.datapath_info);
        v.push(&self.cluster_macs);
        v
    }

    /// Replace every value by the sample's (series of networks or peers that are gone vanish).
    fn fill(&self, s: &Sample) {
        for c in self.counters() {
            c.reset();
        }
        self.fdb_entries.reset();
        self.fdb_max_entries.reset();
        self.peer_last_seen.reset();
        self.peer_up.reset();
        self.vm_ports.reset();
        self.neigh_bindings.reset();
        self.cluster_connected.reset();
        self.cluster_members.reset();
        self.cluster_macs.reset();
        if let Some(c) = &s.cluster {
            self.cluster_connected.with_label_values(&[] as &[&str]).set(i64::from(c.connected));
            for (reason, v) in &c.resyncs {
                self.cluster_resyncs.with_label_values(&[reason.as_str()]).inc_by(*v);
            }
            for n in &c.networks {
                let net = n.network.as_str();
                self.cluster_members.with_label_values(&[net]).set(n.members.len() as i64);
                for (event, v) in [("added", n.added), ("removed", n.removed), ("expired", n.expired), ("rejected", n.rejected)] {
                    self.cluster_events.with_label_values(&[net, event]).inc_by(v);
                }
                if n.advertising {
                    self.cluster_macs.with_label_values(&[net, "local"]).set(n.macs_local as i64);
                    self.cluster_macs.with_label_values(&[net, "remote"]).set(n.macs_remote as i64);
                    for (op, v) in [("published", n.adverts_published), ("withdrawn", n.adverts_withdrawn), ("rejected", n.adverts_rejected)] {
                        self.cluster_adverts.with_label_values(&[net, op]).inc_by(v);
                    }
                }
            }
        }
        self.datapath_info.reset();
        for n in &s.networks {
            let net = n.name.as_str();
            if !n.datapath.is_empty() {
                self.datapath_info.with_label_values(&[net, n.datapath.as_str()]).set(1);
            }
            self.fast_frames.with_label_values(&[net, "tap_rx"]).inc_by(n.fast_frames[0]);
            self.fast_frames.with_label_values(&[net, "tunnel_rx"]).inc_by(n.fast_frames[1]);
            self.tap_frames.with_label_values(&[net, "rx"]).inc_by(n.tap_rx_frames);
            self.tap_frames.with_label_values(&[net, "tx"]).inc_by(n.tap_tx_frames);
            self.tap_bytes.with_label_values(&[net, "rx"]).inc_by(n.tap_rx_bytes);
            self.tap_bytes.with_label_values(&[net, "tx"]).inc_by(n.tap_tx_bytes);
            self.flooded.with_label_values(&[net]).inc_by(n.flooded_frames);
            self.partial_checksums.with_label_values(&[net]).inc_by(n.partial_checksums);
            self.tap_rx_inline.with_label_values(&[net]).inc_by(n.tap_rx_inline_frames);
            self.run_frames.with_label_values(&[net]).inc_by(n.run_frames);
            self.udp_coalesced.with_label_values(&[net]).inc_by(n.tap_tx_udp_coalesced);
            for (reason, v) in &n.drops {
                self.drops.with_label_values(&[net, reason.as_str()]).inc_by(*v);
            }
            self.fdb_entries.with_label_values(&[net]).set(n.fdb_entries.min(i64::MAX as u64) as i64);
            self.fdb_max_entries.with_label_values(&[net]).set(n.fdb_max_entries.min(i64::MAX as u64) as i64);
            for (event, v) in n.fdb_events.labelled() {
                self.fdb_events.with_label_values(&[net, event]).inc_by(v);
            }
            self.vm_ports.with_label_values(&[net]).set(n.vm_ports.min(i64::MAX as u64) as i64);
            for (event, v) in n.vm_connections.labelled() {
                self.vm_connections.with_label_values(&[net, event]).inc_by(v);
            }
            self.pmtu_signals.with_label_values(&[net, "ipv4"]).inc_by(n.pmtu.signals_ipv4);
            self.pmtu_signals.with_label_values(&[net, "ipv6"]).inc_by(n.pmtu.signals_ipv6);
            self.pmtu_limited.with_label_values(&[net]).inc_by(n.pmtu.rate_limited);
            self.mss_clamped.with_label_values(&[net]).inc_by(n.pmtu.mss_clamped);
            for (family, result, v) in n.neigh_suppressed.labelled() {
                self.neigh_suppressed.with_label_values(&[net, family, result]).inc_by(v);
            }
            self.neigh_bindings.with_label_values(&[net]).set(n.neigh_bindings.min(i64::MAX as u64) as i64);
            for ((message, result), v) in crate::core::neigh::dhcp::LABELS.iter().zip(n.neigh_dhcp) {
                self.neigh_dhcp.with_label_values(&[net, message, result]).inc_by(v);
            }
            for p in &n.peers {
                let peer = p.peer.as_str();
                self.tunnel_packets.with_label_values(&[net, peer, "rx"]).inc_by(p.rx_packets);
                self.tunnel_packets.with_label_values(&[net, peer, "tx"]).inc_by(p.tx_packets);
                self.tunnel_bytes.with_label_values(&[net, peer, "rx"]).inc_by(p.rx_bytes);
                self.tunnel_bytes.with_label_values(&[net, peer, "tx"]).inc_by(p.tx_bytes);
                self.peer_last_seen.with_label_values(&[net, peer]).set(p.last_seen_unix.unwrap_or(0.0));
                self.peer_up.with_label_values(&[net, peer]).set(if p.up { 1.0 } else { 0.0 });
            }
        }
        for (reason, v) in &s.unattributed_drops {
            self.drops.with_label_values(&[NO_NETWORK, reason.as_str()]).inc_by(*v);
        }
    }
}

type Source = Box<dyn Fn() -> Sample + Send + Sync>;

/// Takes a [`Sample`] at every scrape and exports it.
struct SampleCollector {
    families: Families,
    descs: Vec<Desc>,
    source: Source,
    /// Two scrapes at once must not interleave their reset and fill.
    scrape: Mutex<()>,
}

impl Collector for SampleCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.families.fill(&(self.source)());
        self.families.collectors().into_iter().flat_map(|c| c.collect()).collect()
    }
}

/// The daemon's metrics registry.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry exporting `overlayd_*` from `source` (called once per scrape), the build
    /// info, and the process collector (CPU, memory, open file descriptors).
    pub fn new(source: impl Fn() -> Sample + Send + Sync + 'static) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let families = Families::new()?;
        let descs = families.collectors().into_iter().flat_map(|c| c.desc().into_iter().cloned()).collect();
        registry.register(Box::new(SampleCollector { families, descs, source: Box::new(source), scrape: Mutex::new(()) }))?;
        let build = IntGaugeVec::new(
            Opts::new("overlayd_build_info", "Always 1; the version label is the overlayd version."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics { registry })
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Names of every metric family overlayd itself defines (for tests and the dashboard check).
pub fn names() -> Vec<String> {
    let mut names: Vec<String> = match Families::new() {
        Ok(f) => f.collectors().into_iter().flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone())).collect(),
        Err(_) => Vec::new(),
    };
    names.push("overlayd_build_info".into());
    names
}

#[cfg(test)]
mod tests {
    use super::sample::{NetSample, PeerSample};
    use super::*;
    use crate::core::DropReason;

    fn sample() -> Sample {
        let drops = DropReason::ALL.iter().map(|r| (r.as_str().to_string(), 0)).collect::<std::collections::BTreeMap<_, _>>();
        let mut net = NetSample { name: "blue".into(), tap_rx_frames: 5, tap_rx_bytes: 300, drops: drops.clone(), fdb_entries: 2, fdb_max_entries: 8192, ..Default::default() };
        net.drops.insert("unknown_peer".into(), 3);
        net.fdb_events.learned = 4;
        net.vm_ports = 2;
        net.vm_connections.disconnected = 6;
        net.neigh_bindings = 3;
        net.neigh_suppressed.ipv6_miss = 8;
        net.datapath = "ebpf".into();
        net.fast_frames = [11, 12];
        net.peers.push(PeerSample { peer: "192.0.2.2".into(), tx_packets: 7, last_seen_unix: Some(1234.5), ..Default::default() });
        net.peers.push(PeerSample { peer: "192.0.2.3".into(), ..Default::default() });
        let mut unattributed = drops;
        unattributed.insert("unknown_vni".into(), 9);
        let cluster = crate::daemon::cluster::ClusterStatus {
            connected: true,
            resyncs: [("start".to_string(), 1), ("reconnect".to_string(), 2)].into_iter().collect(),
            networks: vec![crate::daemon::cluster::ClusterNetwork {
                network: "blue".into(),
                members: vec![crate::daemon::cluster::ClusterMember { node: "h2".into(), underlay: "192.0.2.2".into(), status: "active".into() }],
                added: 3,
                removed: 2,
                expired: 1,
                rejected: 4,
                advertising: true,
                macs_local: 2,
                macs_remote: 5,
                adverts_published: 6,
                adverts_withdrawn: 4,
                ..Default::default()
            }],
            ..Default::default()
        };
        Sample { networks: vec![net], unattributed_drops: unattributed, cluster: Some(cluster) }
    }

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next())
    }

    #[test]
    fn every_sample_value_is_exported_under_its_labels() {
        let m = Metrics::new(sample).unwrap();
        let t = m.render();
        assert_eq!(line(&t, r#"overlayd_tap_frames_total{direction="rx",network="blue"}"#), Some("5"));
        assert_eq!(line(&t, r#"overlayd_tap_bytes_total{direction="rx",network="blue"}"#), Some("300"));
        assert_eq!(line(&t, r#"overlayd_drops_total{network="blue",reason="unknown_peer"}"#), Some("3"));
        assert_eq!(line(&t, r#"overlayd_drops_total{network="-",reason="unknown_vni"}"#), Some("9"));
        assert_eq!(line(&t, r#"overlayd_fdb_entries{network="blue"}"#), Some("2"));
        assert_eq!(line(&t, r#"overlayd_cluster_macs{network="blue",origin="remote"}"#), Some("5"));
        assert_eq!(line(&t, r#"overlayd_cluster_adverts_total{network="blue",op="withdrawn"}"#), Some("4"));
        assert_eq!(line(&t, r#"overlayd_drops_total{network="blue",reason="unknown_unicast"}"#), Some("0"));
        assert_eq!(line(&t, r#"overlayd_fdb_max_entries{network="blue"}"#), Some("8192"));
        assert_eq!(line(&t, r#"overlayd_fdb_events_total{event="learned",network="blue"}"#), Some("4"));
        assert_eq!(line(&t, r#"overlayd_tunnel_packets_total{direction="tx",network="blue",peer="192.0.2.2"}"#), Some("7"));
        assert_eq!(line(&t, r#"overlayd_peer_last_seen_seconds{network="blue",peer="192.0.2.2"}"#), Some("1234.5"));
        assert_eq!(line(&t, r#"overlayd_peer_last_seen_seconds{network="blue",peer="192.0.2.3"}"#), Some("0"));
        assert_eq!(line(&t, r#"overlayd_vm_ports{network="blue"}"#), Some("2"));
        assert_eq!(line(&t, r#"overlayd_vm_connections_total{event="disconnected",network="blue"}"#), Some("6"));
        assert_eq!(line(&t, r#"overlayd_neigh_bindings{network="blue"}"#), Some("3"));
        assert_eq!(line(&t, r#"overlayd_neigh_suppressed_total{family="ipv6",network="blue",result="miss"}"#), Some("8"));
        assert_eq!(line(&t, r#"overlayd_neigh_suppressed_total{family="ipv4",network="blue",result="hit"}"#), Some("0"));
        assert_eq!(line(&t, "overlayd_cluster_connected "), Some("1"));
        assert_eq!(line(&t, r#"overlayd_cluster_members{network="blue"}"#), Some("1"));
        assert_eq!(line(&t, r#"overlayd_cluster_events_total{event="rejected",network="blue"}"#), Some("4"));
        assert_eq!(line(&t, r#"overlayd_cluster_events_total{event="expired",network="blue"}"#), Some("1"));
        assert_eq!(line(&t, r#"overlayd_cluster_resyncs_total{reason="reconnect"}"#), Some("2"));
        assert_eq!(line(&t, r#"overlayd_datapath_info{datapath="ebpf",network="blue"}"#), Some("1"));
        assert_eq!(line(&t, r#"overlayd_fastpath_frames_total{direction="tunnel_rx",network="blue"}"#), Some("12"));
        assert!(t.contains(&format!("overlayd_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{t}");
        assert!(t.contains("process_resident_memory_bytes"), "process collector missing");
    }

    #[test]
    fn every_drop_reason_is_a_label_of_every_network() {
        let t = Metrics::new(sample).unwrap().render();
        for r in DropReason::ALL {
            for net in ["blue", NO_NETWORK] {
                let s = format!("overlayd_drops_total{{network=\"{net}\",reason=\"{}\"}}", r.as_str());
                assert!(t.contains(&s), "missing {s}");
            }
        }
    }

    #[test]
    fn every_family_has_help_and_counters_end_in_total() {
        let t = Metrics::new(sample).unwrap().render();
        for name in names() {
            assert!(t.contains(&format!("# HELP {name} ")), "no help for {name}");
            let ty = t.lines().find_map(|l| l.strip_prefix(&format!("# TYPE {name} "))).unwrap_or("");
            assert_eq!(ty == "counter", name.ends_with("_total"), "{name} is a {ty}");
        }
    }

    #[test]
    fn a_network_gone_from_the_sample_leaves_no_series() {
        let flip = std::sync::atomic::AtomicBool::new(false);
        let m = Metrics::new(move || {
            if flip.swap(true, std::sync::atomic::Ordering::Relaxed) { Sample::default() } else { sample() }
        })
        .unwrap();
        assert!(m.render().contains("network=\"blue\""));
        assert!(!m.render().contains("network=\"blue\""));
    }
}
