//! The cluster on the control path: a membership backend's events go into the sans-IO
//! [`Membership`]; the peer sets it yields are applied through [`super::Daemon::apply`], the
//! same in-place update a SIGHUP reload uses (MACs and counters of the peers that stay kept).
//! The last known members are saved to `cluster.state_file` on every change and read at start,
//! so a daemon that starts while etcd is down forwards to them at once.
//!
//! MAC advertisement (`advertise`) runs here too: [`Cluster::advertise`] feeds the sans-IO
//! [`Advertiser`] the MACs (and snooped addresses) on local ports, sends its key writes to the
//! backend, and applies the remote bindings to the networks' FDBs (entries of type `cluster`
//! behind the advertising member's peer) and neighbour tables (source `cluster`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::config::{ClusterConfig, Config};
use crate::core::advert::{Advertiser, KeyWrite, Mode, RemoteChange};
use crate::core::neigh::Source;
use crate::core::{Encap, Port};
use crate::core::membership::{Change, EventCounts, LocalNet, MemberStatus, Membership, RecordState, RemovedWhy, member_key};
use crate::core::liveness::PeerState;
use crate::io::clock;
use crate::io::backend::{Backend, BackendEvent, Resync};

/// What `overlayd cluster` shows and the metrics export.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub endpoints: Vec<String>,
    pub node_name: String,
    pub connected: bool,
    /// This node's records are written (false: not yet, or its name is taken).
    pub registered: bool,
    /// Lease id (hex) and TTL.
    pub lease: Option<String>,
    pub lease_ttl_secs: u64,
    pub revision: i64,
    pub last_error: Option<String>,
    pub resyncs: BTreeMap<String, u64>,
    pub networks: Vec<ClusterNetwork>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    pub network: String,
    /// The peers membership adds to the static ones.
    pub peers: Vec<String>,
    pub members: Vec<ClusterMember>,
    pub added: u64,
    pub removed: u64,
    pub expired: u64,
    pub rejected: u64,
    /// `advertise` is not "none".
    #[serde(default)]
    pub advertising: bool,
    /// MACs this node advertises, and MACs other members advertise (`advertise` networks).
    #[serde(default)]
    pub macs_local: u64,
    #[serde(default)]
    pub macs_remote: u64,
    #[serde(default)]
    pub adverts_published: u64,
    #[serde(default)]
    pub adverts_withdrawn: u64,
    /// Remote MAC records that did not parse.
    #[serde(default)]
    pub adverts_rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub node: String,
    pub underlay: String,
    /// "active", or "expired" (its lease ended; kept while the data path still hears it).
    pub status: String,
}

/// Set `source` to "cluster" on the rows of an `overlayd peers` answer that membership added.
pub fn mark_sources(result: &mut serde_json::Value, st: &ClusterStatus) {
    let Some(tables) = result.as_array_mut() else { return };
    for t in tables {
        let net = t.get("network").and_then(|n| n.as_str()).unwrap_or_default().to_string();
        let Some(cn) = st.networks.iter().find(|n| n.network == net) else { continue };
        for p in t.get_mut("peers").and_then(|p| p.as_array_mut()).into_iter().flatten() {
            if p.get("peer").and_then(|a| a.as_str()).is_some_and(|a| cn.peers.iter().any(|c| c == a)) {
                p["source"] = serde_json::Value::from("cluster");
            }
        }
    }
}

pub type SharedStatus = Arc<Mutex<ClusterStatus>>;

/// The state file: the last known members.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    members: Vec<SavedMember>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedMember {
    network: String,
    node: String,
    underlay: IpAddr,
}

/// How long an expired member that the data path still hears stays a peer.
pub fn grace(ttl: Duration) -> Duration {
    (ttl * 8).max(Duration::from_secs(60))
}

pub struct Cluster {
    cfg: ClusterConfig,
    pub membership: Membership,
    pub status: SharedStatus,
    events: mpsc::UnboundedReceiver<BackendEvent>,
    leave: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Cluster peers applied last, by network.
    applied: BTreeMap<String, Vec<IpAddr>>,
    dirty: bool,
    pub advert: Advertiser,
    writes: mpsc::UnboundedSender<KeyWrite>,
    /// Bindings whose member is not a peer yet (retried on every advertise round).
    pending: Vec<RemoteChange>,
}

fn local_net(n: &crate::config::NetworkConfig) -> LocalNet {
    let (encap, vni, port) = match n.encap {
        Encap::Vxlan => ("vxlan", Some(n.vni.get()), Some(n.vxlan_port)),
        Encap::Gre(o) => ("gre", o.key.then_some(n.vni.get()), None),
    };
    LocalNet { name: n.name.clone(), encap: encap.into(), vni, port, statics: n.peers.clone() }
}

impl Cluster {
    /// Build the membership (with the state file's members) and start `backend`.
    pub fn start<B: Backend>(cfg: &Config, cluster: &ClusterConfig, backend: B) -> Cluster {
        let nets: Vec<LocalNet> = cfg.networks.iter().filter(|n| n.cluster).map(local_net).collect();
        let underlay = cfg.node.underlay;
        let records = |state| -> Vec<(String, String)> {
            nets.iter().map(|l| (member_key(&cluster.prefix, &l.name, &cluster.node_name), l.record(underlay, state).to_json())).collect()
        };
        let (active, leaving) = (records(RecordState::Active), records(RecordState::Leaving));
        let mut membership = Membership::new(&cluster.prefix, &cluster.node_name, underlay, grace(cluster.lease_ttl), nets);
        if let Some(path) = &cluster.state_file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                    Ok(s) => {
                        let saved: Vec<_> = s.members.into_iter().map(|m| (m.network, m.node, m.underlay)).collect();
                        membership.restore(&saved, clock::now());
                        tracing::info!(state_file = %path.display(), members = saved.len(), "cluster: starting with the last known members");
                    }
                    Err(e) => tracing::warn!(state_file = %path.display(), error = %e, "cluster: state file unreadable; starting without it"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(state_file = %path.display(), error = %e, "cluster: cannot read the state file; starting without it"),
            }
        }
        let status = Arc::new(Mutex::new(ClusterStatus {
            endpoints: cluster.endpoints.clone(),
            node_name: cluster.node_name.clone(),
            lease_ttl_secs: cluster.lease_ttl.as_secs(),
            resyncs: Resync::ALL.iter().map(|r| (r.as_str().to_string(), 0)).collect(),
            ..Default::default()
        }));
        let (tx, events) = mpsc::unbounded_channel();
        let (leave, leave_rx) = watch::channel(false);
        let (writes, writes_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(backend.run(active, leaving, tx, writes_rx, leave_rx));
        let advertising = cfg.networks.iter().filter(|n| n.cluster).filter_map(|n| {
            let mode = match n.advertise {
                crate::config::Advertise::None => return None,
                crate::config::Advertise::Macs => Mode::Macs,
                crate::config::Advertise::MacsIps => Mode::MacsIps,
            };
            Some((n.name.clone(), mode, n.fdb.max_entries))
        });
        let advert = Advertiser::new(&cluster.prefix, &cluster.node_name, crate::core::advert::DEFAULT_RATE, advertising);
        let mut c = Cluster { cfg: cluster.clone(), membership, status, events, leave, task: Some(task), applied: BTreeMap::new(), dirty: true, advert, writes, pending: Vec::new() };
        c.publish();
        c
    }

    /// The next backend event (pending forever once the backend is gone).
    pub async fn next(&mut self) -> BackendEvent {
        match self.events.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }

    fn log(&mut self, changes: Vec<Change>) {
        for c in changes {
            self.dirty = true;
            match c {
                Change::Added { network, node, addr } => tracing::info!(network, node, peer = %addr, "cluster: member added"),
                Change::Removed { network, node, addr, why } => {
                    let why = match why {
                        RemovedWhy::Left => "left",
                        RemovedWhy::Expired => "lease expired and down (or past the grace period)",
                        RemovedWhy::Replaced => "its record names another address now",
                    };
                    tracing::info!(network, node, peer = %addr, why, "cluster: member removed");
                }
                Change::Expired { network, node, addr } => {
                    tracing::warn!(network, node, peer = %addr, "cluster: member's lease expired; kept while the data path still hears it")
                }
                Change::Rejected { network, node, why } => tracing::warn!(network, node, %why, "cluster: record rejected"),
            }
        }
    }

    /// Take in one backend event.
    pub fn handle(&mut self, ev: BackendEvent) {
        let now = clock::now();
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let changes = match ev {
            BackendEvent::Connected { lease, ttl } => {
                self.advert.rewrite_all();
                st.connected = true;
                st.lease = Some(format!("{lease:x}"));
                st.lease_ttl_secs = ttl as u64;
                st.last_error = None;
                Vec::new()
            }
            BackendEvent::Disconnected { error } => {
                st.connected = false;
                st.last_error = Some(error);
                Vec::new()
            }
            BackendEvent::Registered(r) => {
                st.registered = r;
                Vec::new()
            }
            BackendEvent::Listed { revision, reason, kvs } => {
                st.revision = revision;
                *st.resyncs.entry(reason.as_str().to_string()).or_default() += 1;
                drop(st);
                let c = self.membership.relist(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())), now);
                self.advert.relist(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())), now);
                self.log(c);
                self.publish();
                return;
            }
            BackendEvent::Put { revision, key, value } => {
                st.revision = revision;
                drop(st);
                let c = self.membership.put(&key, &value, now);
                self.advert.remote_put(&key, &value, now);
                self.log(c);
                self.publish();
                return;
            }
            BackendEvent::Delete { revision, key } => {
                st.revision = revision;
                drop(st);
                let c = self.membership.delete(&key, now);
                self.advert.remote_delete(&key);
                self.log(c);
                self.publish();
                return;
            }
        };
        drop(st);
        self.log(changes);
    }

    /// Remove expired members the data path does not hear (once a second).
    pub fn tick(&mut self, fabric: &super::netio::SharedFabric) {
        let f = fabric.load();
        let up = |net: &str, addr: IpAddr| {
            f.networks.iter().find(|e| e.net.name() == net).is_some_and(|e| {
                e.net.peers.iter().any(|p| p.addr.ip() == addr && p.liveness.state() == PeerState::Up)
            })
        };
        let c = self.membership.tick(clock::now(), up);
        if !c.is_empty() {
            self.log(c);
            self.publish();
        }
    }

    /// One round of MAC advertisement (after every backend event, and a few times a second):
    /// the remote bindings that changed go into the FDBs, every remote binding is refreshed
    /// (put back if the table lost it, its addresses into the neighbour table), the MACs on
    /// local ports go to the advertiser, and its writes to the backend.
    pub fn advertise(&mut self, fabric: &super::netio::SharedFabric) {
        if self.advert.networks().next().is_none() {
            return;
        }
        let now = clock::now();
        let f = fabric.load();
        let mut changes = std::mem::take(&mut self.pending);
        changes.extend(self.advert.take_changes());
        let peer_of = |m: &Membership, net: &crate::core::Network, node: &str| {
            m.members(net.name()).find(|(n, _)| *n == node).and_then(|(_, mem)| net.peer_by_ip(mem.addr))
        };
        for ch in changes {
            let (network, mac, node) = match &ch {
                RemoteChange::Bind { network, mac, node, .. } | RemoteChange::Unbind { network, mac, node } => (network, *mac, node),
            };
            let Some(e) = f.networks.iter().find(|e| e.net.name() == network) else { continue };
            let Some(p) = peer_of(&self.membership, &e.net, node) else {
                // its member is not a peer (yet): a binding waits while it is still the winner
                if let RemoteChange::Bind { seq, .. } = &ch
                    && self.advert.bindings(network).iter().any(|b| b.0 == mac && b.1 == node && b.2 == *seq) && self.membership.members(network).any(|(n, _)| n == node)
                {
                    self.pending.push(ch.clone());
                }
                continue;
            };
            match &ch {
                RemoteChange::Bind { seq, .. } if self.advert.ours_wins(network, mac, node, *seq) => {
                    tracing::warn!(network, mac = %mac, node, seq, "cluster: a MAC of a local port is advertised elsewhere too with no higher sequence; kept here");
                }
                RemoteChange::Bind { seq, .. } => {
                    let was = e.net.fdb.lookup(mac, now);
                    if e.net.fdb.set_cluster(mac, Port::Peer(p), false, now) && was.is_some_and(|w| w != Port::Peer(p)) {
                        tracing::info!(network, mac = %mac, node, seq, "cluster: MAC moved (advertised with a higher sequence)");
                    }
                }
                RemoteChange::Unbind { .. } => {
                    e.net.fdb.uncluster(mac, Port::Peer(p), now);
                }
            }
        }
        let nets: Vec<String> = self.advert.networks().map(str::to_string).collect();
        for name in &nets {
            let Some(e) = f.networks.iter().find(|e| e.net.name() == name) else { continue };
            let net = &e.net;
            for (mac, node, _, ips) in self.advert.bindings(name) {
                let Some(p) = peer_of(&self.membership, net, node) else { continue };
                if net.fdb.set_cluster(mac, Port::Peer(p), true, now) {
                    for ip in ips {
                        net.neigh.learn(*ip, mac, Source::Cluster(p), None, now);
                    }
                }
            }
            let mut local: BTreeMap<crate::core::wire::ethernet::MacAddr, Vec<IpAddr>> = BTreeMap::new();
            for r in net.fdb.entries(now) {
                if matches!(r.port, Port::Local(_)) {
                    local.insert(r.mac, Vec::new());
                }
            }
            for r in net.local_neigh.rows(now) {
                if let Some(v) = local.get_mut(&r.mac) {
                    v.push(r.ip);
                }
            }
            self.advert.observe(name, local, now);
        }
        for w in self.advert.writes(now) {
            let _ = self.writes.send(w);
        }
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for n in st.networks.iter_mut() {
            let c = self.advert.counts(&n.network);
            let (l, r) = self.advert.sizes(&n.network);
            (n.macs_local, n.macs_remote, n.adverts_published, n.adverts_withdrawn, n.adverts_rejected) = (l as u64, r as u64, c.published, c.withdrawn, c.rejected);
        }
    }

    /// Refresh the shared status from the membership.
    fn publish(&mut self) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let names: Vec<String> = self.membership.networks().map(|l| l.name.clone()).collect();
        st.networks = names
            .iter()
            .map(|n| {
                let EventCounts { added, removed, expired, rejected } = self.membership.counts(n);
                let members = self
                    .membership
                    .members(n)
                    .map(|(node, m)| ClusterMember {
                        node: node.to_string(),
                        underlay: m.addr.to_string(),
                        status: match m.status {
                            MemberStatus::Active => "active",
                            MemberStatus::Expired => "expired",
                        }
                        .into(),
                    })
                    .collect();
                let c = self.advert.counts(n);
                let (l, r) = self.advert.sizes(n);
                ClusterNetwork {
                    network: n.clone(),
                    peers: self.membership.peers(n).iter().map(|a| a.to_string()).collect(),
                    members,
                    added,
                    removed,
                    expired,
                    rejected,
                    advertising: self.advert.networks().any(|a| a == n),
                    macs_local: l as u64,
                    macs_remote: r as u64,
                    adverts_published: c.published,
                    adverts_withdrawn: c.withdrawn,
                    adverts_rejected: c.rejected,
                }
            })
            .collect();
    }

    /// The configuration to run: `file`'s, with each clustered network's members added to its
    /// static peers.
    pub fn effective(&self, file: &Config) -> Config {
        let mut c = file.clone();
        for n in c.networks.iter_mut().filter(|n| n.cluster) {
            for p in self.membership.peers(&n.name) {
                if !n.peers.contains(&p) {
                    n.peers.push(p);
                }
            }
        }
        c
    }

    /// Whether the peer sets changed since [`Self::applied`]; then remember them as applied.
    pub fn take_changed(&mut self) -> bool {
        if !self.dirty {
            return false;
        }
        self.dirty = false;
        let now: BTreeMap<String, Vec<IpAddr>> = self.membership.networks().map(|l| (l.name.clone(), self.membership.peers(&l.name))).collect();
        if now == self.applied {
            return false;
        }
        self.applied = now;
        self.save();
        true
    }

    /// Cluster peers of `network` (for the `source` of `overlayd peers`).
    pub fn is_cluster_peer(&self, network: &str, addr: IpAddr) -> bool {
        self.applied.get(network).is_some_and(|v| v.contains(&addr))
    }

    fn save(&self) {
        let Some(path) = &self.cfg.state_file else { return };
        let s = StateFile {
            members: self.membership.snapshot().into_iter().map(|(network, node, underlay)| SavedMember { network, node, underlay }).collect(),
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let tmp: PathBuf = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&s).unwrap_or_default())?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(state_file = %path.display(), error = %e, "cluster: cannot write the state file");
        }
    }

    /// Leave: the backend marks the records leaving and revokes the lease (waits at most 3 s).
    pub async fn leave(&mut self) {
        let _ = self.leave.send(true);
        if let Some(t) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(3), t).await.is_err()
        {
            tracing::warn!("cluster: etcd did not confirm the leave in time; the records expire with the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::backend::Resync;

    /// A backend that reports a scripted listing and then waits for the leave.
    struct Scripted(Vec<(String, Vec<u8>)>);

    impl Backend for Scripted {
        async fn run(
            self,
            records: Vec<(String, String)>,
            leaving: Vec<(String, String)>,
            events: mpsc::UnboundedSender<BackendEvent>,
            _writes: mpsc::UnboundedReceiver<KeyWrite>,
            mut leave: watch::Receiver<bool>,
        ) {
            assert_eq!(records.len(), 1, "one record per clustered network");
            assert!(leaving[0].1.contains("\"leaving\""));
            let _ = events.send(BackendEvent::Connected { lease: 0x2a, ttl: 5 });
            let _ = events.send(BackendEvent::Listed { revision: 7, reason: Resync::Start, kvs: self.0 });
            let _ = leave.changed().await;
        }
    }

    const CFG: &str = r#"
[node]
underlay = "192.0.2.1"
[cluster]
endpoints = ["http://192.0.2.10:2379"]
node_name = "h1"
state_file = "STATE"
[[networks]]
name = "blue"
encap = "vxlan"
vni = 42
tap = "b0"
peers = ["192.0.2.9"]
cluster = true
[[networks]]
name = "red"
encap = "vxlan"
vni = 43
tap = "r0"
peers = ["192.0.2.8"]
"#;

    fn record(addr: &str) -> Vec<u8> {
        format!(r#"{{"underlay":"{addr}","encap":"vxlan","vni":42,"port":4789,"state":"active"}}"#).into_bytes()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn members_join_the_static_peers_of_clustered_networks_and_survive_a_restart_in_the_state_file() {
        let dir = std::env::temp_dir().join(format!("overlayd-cluster-test-{}", std::process::id()));
        let state = dir.join("cluster.json");
        let cfg = crate::config::from_str_with_env(&CFG.replace("STATE", &state.display().to_string()), Vec::<(String, String)>::new()).unwrap();
        let k = cfg.cluster.clone().unwrap();
        let kvs = vec![
            (member_key("/overlayd", "blue", "h2"), record("192.0.2.2")),
            (member_key("/overlayd", "blue", "h9"), record("192.0.2.9")),
            (member_key("/overlayd", "blue", "h3"), br#"{"underlay":"192.0.2.3","encap":"vxlan","vni":43,"port":4789,"state":"active"}"#.to_vec()),
        ];
        let mut c = Cluster::start(&cfg, &k, Scripted(kvs));
        for _ in 0..2 {
            let ev = c.next().await;
            c.handle(ev);
        }
        assert!(c.take_changed());
        let eff = c.effective(&cfg);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(eff.networks[0].peers, [ip("192.0.2.9"), ip("192.0.2.2")], "static first, then the members; h9 is static already");
        assert_eq!(eff.networks[1].peers, [ip("192.0.2.8")], "red is not clustered");
        assert!(c.is_cluster_peer("blue", ip("192.0.2.2")) && !c.is_cluster_peer("blue", ip("192.0.2.9")));
        {
            let st = c.status.lock().unwrap();
            assert!(st.connected);
            assert_eq!((st.revision, st.lease.as_deref(), st.resyncs["start"]), (7, Some("2a"), 1));
            assert_eq!(st.networks[0].rejected, 1, "h3's record names another VNI");
            assert_eq!(st.networks[0].peers, ["192.0.2.2"]);
        }
        c.leave().await;

        // a restart while the store says nothing: the state file's members are peers at once
        let mut again = Cluster::start(&cfg, &k, Scripted(Vec::new()));
        again.take_changed();
        assert_eq!(again.effective(&cfg).networks[0].peers, [ip("192.0.2.9"), ip("192.0.2.2")]);
        again.leave().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A backend that reports a scripted listing and keeps the writes it is asked to make.
    struct Recording(Vec<(String, Vec<u8>)>, Arc<Mutex<Vec<KeyWrite>>>);

    impl Backend for Recording {
        async fn run(
            self,
            _records: Vec<(String, String)>,
            _leaving: Vec<(String, String)>,
            events: mpsc::UnboundedSender<BackendEvent>,
            mut writes: mpsc::UnboundedReceiver<KeyWrite>,
            mut leave: watch::Receiver<bool>,
        ) {
            let _ = events.send(BackendEvent::Connected { lease: 1, ttl: 5 });
            let _ = events.send(BackendEvent::Listed { revision: 3, reason: Resync::Start, kvs: self.0 });
            loop {
                tokio::select! {
                    _ = leave.changed() => return,
                    Some(w) = writes.recv() => self.1.lock().unwrap().push(w),
                }
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn advertised_macs_become_cluster_entries_and_bindings_and_local_macs_are_published() {
        use crate::core::fabric::NetEntry;
        use crate::core::wire::ethernet::MacAddr;
        let text = CFG.replace("state_file = \"STATE\"\n", "").replace("cluster = true", "cluster = true\nadvertise = \"macs+ips\"\narp_suppress = true");
        let cfg = crate::config::from_str_with_env(&text, Vec::<(String, String)>::new()).unwrap();
        let k = cfg.cluster.clone().unwrap();
        let remote = MacAddr([2, 0, 0, 0, 0, 2]);
        let kvs = vec![
            (member_key("/overlayd", "blue", "h2"), record("192.0.2.2")),
            (crate::core::advert::mac_key("/overlayd", "blue", "h2", remote), br#"{"mac":"02:00:00:00:00:02","ips":["198.51.100.2"],"seq":3}"#.to_vec()),
        ];
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut c = Cluster::start(&cfg, &k, Recording(kvs, written.clone()));
        for _ in 0..2 {
            let ev = c.next().await;
            c.handle(ev);
        }
        assert!(c.take_changed());
        // the daemon's network with the member as its peer
        let mut spec = crate::core::testutil::spec(1, vec!["192.0.2.9:4789".parse().unwrap(), "192.0.2.2:4789".parse().unwrap()]);
        spec.arp_suppress = true;
        spec.snoop_local = true;
        let net = Arc::new(crate::core::Network::new(spec));
        let io = Arc::new(super::super::netio::NetIo::new(net.clone(), Vec::new()));
        let fabric: super::super::netio::SharedFabric =
            Arc::new(arc_swap::ArcSwap::from_pointee(crate::core::Fabric::new(vec![NetEntry { net: net.clone(), io }], &[4789])));
        let local = MacAddr([2, 0, 0, 0, 0, 1]);
        net.fdb.learn(local, Port::Local(crate::core::LocalPort(0)), clock::now());
        c.advertise(&fabric);
        let now = clock::now();
        let rows = net.fdb.entries(now);
        let r = rows.iter().find(|r| r.mac == remote).expect("the advertised MAC is in the table");
        assert_eq!((r.port, r.cluster), (Port::Peer(crate::core::PeerIdx(1)), true), "type cluster, behind h2's peer");
        let b = net.neigh.rows(now);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].ip, b[0].mac, b[0].source), ("198.51.100.2".parse().unwrap(), remote, Source::Cluster(crate::core::PeerIdx(1))));
        assert!(written.lock().unwrap().is_empty(), "the local MAC is not stable yet");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.advertise(&fabric);
        tokio::task::yield_now().await;
        let w = written.lock().unwrap().clone();
        assert_eq!(w, vec![KeyWrite::Put { key: crate::core::advert::mac_key("/overlayd", "blue", "h1", local), value: r#"{"mac":"02:00:00:00:00:01","ips":[],"seq":0}"#.into() }]);
        {
            let st = c.status.lock().unwrap();
            assert_eq!((st.networks[0].macs_local, st.networks[0].macs_remote, st.networks[0].adverts_published), (1, 1, 1));
        }
        // h2's record goes (its lease expired): the entry ages normally from now on
        c.handle(BackendEvent::Delete { revision: 4, key: crate::core::advert::mac_key("/overlayd", "blue", "h2", remote) });
        c.advertise(&fabric);
        assert!(!net.fdb.entries(clock::now()).iter().any(|r| r.mac == remote && r.cluster));
        assert!(net.fdb.lookup(remote, clock::now()).is_some(), "still there, learned");
        c.leave().await;
    }
}
