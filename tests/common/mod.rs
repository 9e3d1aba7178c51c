//! What the integration tests share.

/// What a daemon with one network and one peer, in a cluster, exports (families without series
/// are left out of a scrape, so the sample needs a network and a cluster).
pub fn one_network() -> overlayd::metrics::Sample {
    use overlayd::core::fabric::{Fabric, NetEntry};
    use overlayd::core::stats::GlobalDrops;
    use overlayd::core::{Instant, Network, NetworkSpec};
    let net = Network::new(NetworkSpec::vxlan("blue", 42, vec![std::net::SocketAddr::from(([192, 0, 2, 2], 4789))]));
    let fabric = Fabric::new(vec![NetEntry { net: std::sync::Arc::new(net), io: () }], &[4789]);
    let mut s = overlayd::metrics::sample::take(&fabric, &GlobalDrops::default(), Instant::ZERO, 0.0);
    use overlayd::daemon::cluster::{ClusterNetwork, ClusterStatus};
    s.cluster = Some(ClusterStatus {
        resyncs: [("start".to_string(), 1)].into_iter().collect(),
        networks: vec![ClusterNetwork { network: "blue".into(), advertising: true, ..Default::default() }],
        ..Default::default()
    });
    s
}
