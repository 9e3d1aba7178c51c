//! MAC (and IP) advertisement through the cluster, sans-IO: local MACs in, key writes out;
//! remote records in, table changes out. Time is an argument.
//!
//! A network with `advertise = "macs"` or `"macs+ips"` publishes every MAC on its local ports
//! that has stayed there for [`STABLE`] under
//! `<prefix>/v1/networks/<network>/macs/<node>/<mac>` (this node's lease: a dead node's records
//! go with it). The value ([`MacRecord`]) holds the MAC, the addresses snooped for it on local
//! ports (`macs+ips`), and a sequence number as RFC 7432 §15 has it: 0 when first seen, and one
//! more than the highest any other node advertised when the MAC moves here.
//!
//! - Withdrawal: a MAC advertised elsewhere with a higher sequence is deleted at once; one no
//!   longer on a local port (aged out, moved to a peer) after [`WITHDRAW_AFTER`].
//! - Rate: at most [`Advertiser::new`]'s `rate` writes per second (a token bucket of one second);
//!   what is left waits for the next call. Writes are computed from the difference between
//!   what is published and what is local now, so a MAC that flaps within the stable time
//!   costs nothing and many changes of one MAC cost one write.
//! - Cap: at most `cap` (the network's `fdb_max_entries`) MACs are published per network.
//!
//! Remote records ([`Advertiser::remote_put`], [`Advertiser::remote_delete`],
//! [`Advertiser::relist`]) make, per MAC, a *winner*: the record with the highest sequence
//! (ties: the lowest node name). A new winner is handed out once by
//! [`Advertiser::take_changes`] as [`RemoteChange::Bind`] (the daemon puts the MAC behind that
//! node's peer, wherever the table had it: the higher sequence wins); a winner whose record
//! went away as [`RemoteChange::Unbind`] (the entry falls back to normal ageing).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::membership::SCHEMA;
use super::time::Instant;
use super::wire::ethernet::MacAddr;

/// How long a MAC stays on a local port before it is published.
pub const STABLE: Duration = Duration::from_secs(1);
/// How long a published MAC may be missing from the local ports before it is withdrawn, unless
/// another node advertises it with a higher sequence first. A MAC that moved away through the
/// data path stays advertised here until its new home advertises it (RFC 7432 §15: the new
/// home must see this node's sequence to go one higher).
pub const WITHDRAW_AFTER: Duration = Duration::from_secs(3);
/// Default writes per second (all networks together).
pub const DEFAULT_RATE: u32 = 500;

/// What a network publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Macs,
    MacsIps,
}

/// The value under a MAC key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacRecord {
    pub mac: String,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    pub seq: u64,
}

/// One write for the backend to make under this node's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyWrite {
    Put { key: String, value: String },
    Delete { key: String },
}

/// A table change the daemon applies to a network's FDB and neighbour table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteChange {
    /// `mac` lives behind `node` (with `ips`): put it there, wherever it is now.
    Bind { network: String, mac: MacAddr, node: String, seq: u64, ips: Vec<IpAddr> },
    /// `node` no longer advertises `mac` (and no one else does).
    Unbind { network: String, mac: MacAddr, node: String },
}

/// Whether an advertisement (`seq`, `node`) wins over another (`seq2`, `node2`): the higher
/// sequence, and on a tie the lower node name (RFC 7432 §15 takes the lower address).
fn beats(seq: u64, node: &str, seq2: u64, node2: &str) -> bool {
    seq > seq2 || (seq == seq2 && node < node2)
}

/// `<prefix>/v1/networks/<network>/macs/<node>/<mac>`.
pub fn mac_key(prefix: &str, network: &str, node: &str, mac: MacAddr) -> String {
    format!("{prefix}/{SCHEMA}/networks/{network}/macs/{node}/{mac}")
}

/// `(network, node, mac)` of a MAC key, or `None` for any other key.
pub fn parse_mac_key<'k>(prefix: &str, key: &'k str) -> Option<(&'k str, &'k str, MacAddr)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?.strip_prefix(SCHEMA)?.strip_prefix("/networks/")?;
    let (net, rest) = rest.split_once('/')?;
    let (node, mac) = rest.strip_prefix("macs/")?.split_once('/')?;
    let mac: MacAddr = mac.parse().ok()?;
    (!net.is_empty() && !node.is_empty() && !mac.is_multicast() && !mac.is_zero()).then_some((net, node, mac))
}

/// Published and withdrawn counts of a network (`overlayd_cluster_adverts_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AdvertCounts {
    pub published: u64,
    pub withdrawn: u64,
    /// Remote records that did not parse.
    pub rejected: u64,
}

#[derive(Debug)]
struct Local {
    since: Instant,
    ips: Vec<IpAddr>,
}

#[derive(Debug)]
struct Published {
    seq: u64,
    ips: Vec<IpAddr>,
    /// Write it again (a new lease, a reconnect).
    rewrite: bool,
    /// Since when it is not on a local port.
    missing_since: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Remote {
    seq: u64,
    ips: Vec<IpAddr>,
    /// When it was written (for the claim rule: a local MAC older than the record is not a move).
    at: Instant,
}

#[derive(Debug)]
struct NetState {
    mode: Mode,
    cap: usize,
    local: HashMap<MacAddr, Local>,
    published: HashMap<MacAddr, Published>,
    /// MAC → node → record.
    remote: HashMap<MacAddr, BTreeMap<String, Remote>>,
    /// The winner handed out last, per MAC: (node, seq).
    bound: HashMap<MacAddr, (String, u64)>,
    counts: AdvertCounts,
}

impl NetState {
    fn winner(&self, mac: MacAddr) -> Option<(&str, &Remote)> {
        self.remote.get(&mac)?.iter().max_by(|a, b| a.1.seq.cmp(&b.1.seq).then(b.0.cmp(a.0))).map(|(n, r)| (n.as_str(), r))
    }
}

/// Advertisement state of every advertising network.
#[derive(Debug)]
pub struct Advertiser {
    prefix: String,
    node: String,
    rate: u32,
    tokens: f64,
    refilled: Option<Instant>,
    nets: BTreeMap<String, NetState>,
    changes: Vec<RemoteChange>,
    /// This node's records a listing showed that it does not publish (a write lost with a
    /// connection, a previous run's under a lease still alive): deleted by the next writes.
    stale_own: Vec<KeyWrite>,
}

impl Advertiser {
    /// `nets`: (name, mode, cap) of every network with `advertise` other than "none".
    pub fn new(prefix: &str, node: &str, rate: u32, nets: impl IntoIterator<Item = (String, Mode, usize)>) -> Advertiser {
        let nets = nets
            .into_iter()
            .map(|(n, mode, cap)| {
                (n, NetState { mode, cap, local: HashMap::new(), published: HashMap::new(), remote: HashMap::new(), bound: HashMap::new(), counts: AdvertCounts::default() })
            })
            .collect();
        Advertiser { prefix: prefix.to_string(), node: node.to_string(), rate: rate.max(1), tokens: f64::from(rate.max(1)), refilled: None, nets, changes: Vec::new(), stale_own: Vec::new() }
    }

    pub fn networks(&self) -> impl Iterator<Item = &str> {
        self.nets.keys().map(String::as_str)
    }

    pub fn counts(&self, network: &str) -> AdvertCounts {
        self.nets.get(network).map(|n| n.counts).unwrap_or_default()
    }

    /// MACs this node publishes in `network`, and MACs other nodes do (winners).
    pub fn sizes(&self, network: &str) -> (usize, usize) {
        self.nets.get(network).map_or((0, 0), |n| (n.published.len(), n.remote.len()))
    }

    /// The MACs on `network`'s local ports now, with the addresses snooped for them.
    pub fn observe(&mut self, network: &str, macs: impl IntoIterator<Item = (MacAddr, Vec<IpAddr>)>, now: Instant) {
        let Some(n) = self.nets.get_mut(network) else { return };
        let mut seen = BTreeSet::new();
        for (mac, mut ips) in macs {
            if n.mode == Mode::Macs {
                ips.clear();
            }
            ips.sort();
            ips.dedup();
            seen.insert(mac);
            n.local.entry(mac).and_modify(|l| l.ips.clone_from(&ips)).or_insert(Local { since: now, ips });
        }
        n.local.retain(|m, _| seen.contains(m));
    }

    /// The store was (re)connected: write every published record again.
    pub fn rewrite_all(&mut self) {
        for n in self.nets.values_mut() {
            for p in n.published.values_mut() {
                p.rewrite = true;
            }
        }
    }

    /// The writes due at `now`, within the rate.
    pub fn writes(&mut self, now: Instant) -> Vec<KeyWrite> {
        let elapsed = self.refilled.map_or(Duration::ZERO, |t| now.saturating_since(t));
        self.refilled = Some(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(self.rate)).min(f64::from(self.rate));
        let mut out = Vec::new();
        while self.tokens >= 1.0 {
            let Some(w) = self.stale_own.pop() else { break };
            self.tokens -= 1.0;
            out.push(w);
        }
        let (prefix, node) = (&self.prefix, &self.node);
        for (name, n) in &mut self.nets {
            // withdrawals first: someone else holds it with a higher sequence, or gone locally
            for (m, p) in n.published.iter_mut() {
                if n.local.contains_key(m) {
                    p.missing_since = None;
                } else if p.missing_since.is_none() {
                    p.missing_since = Some(now);
                }
            }
            let gone: Vec<MacAddr> = n
                .published
                .iter()
                .filter(|(m, p)| {
                    p.missing_since.is_some_and(|t| now.saturating_since(t) >= WITHDRAW_AFTER)
                        || n.remote.get(m).is_some_and(|r| r.iter().any(|(other, r)| beats(r.seq, other, p.seq, node)))
                })
                .map(|(m, _)| *m)
                .collect();
            for mac in gone {
                if self.tokens < 1.0 {
                    return out;
                }
                self.tokens -= 1.0;
                n.published.remove(&mac);
                n.counts.withdrawn += 1;
                out.push(KeyWrite::Delete { key: mac_key(prefix, name, node, mac) });
            }
            let mut due: Vec<(MacAddr, u64)> = Vec::new();
            for (mac, l) in &n.local {
                if now.saturating_since(l.since) < STABLE {
                    continue;
                }
                let remote_max = n.remote.get(mac).and_then(|r| r.values().map(|r| (r.seq, r.at)).max());
                match n.published.get(mac) {
                    Some(p) if !p.rewrite && p.ips == l.ips => {}
                    Some(p) => due.push((*mac, p.seq)),
                    None => match remote_max {
                        // advertised elsewhere before it showed up here: not ours to claim
                        Some((_, at)) if l.since < at => {}
                        Some((seq, _)) => due.push((*mac, seq.saturating_add(1))),
                        None => due.push((*mac, 0)),
                    },
                }
            }
            due.sort();
            for (mac, seq) in due {
                if !n.published.contains_key(&mac) && n.published.len() >= n.cap {
                    break;
                }
                if self.tokens < 1.0 {
                    return out;
                }
                self.tokens -= 1.0;
                let ips = n.local.get(&mac).map(|l| l.ips.clone()).unwrap_or_default();
                let value = serde_json::to_string(&MacRecord { mac: mac.to_string(), ips: ips.clone(), seq }).unwrap_or_default();
                if n.published.insert(mac, Published { seq, ips, rewrite: false, missing_since: None }).is_none() {
                    n.counts.published += 1;
                }
                out.push(KeyWrite::Put { key: mac_key(prefix, name, node, mac), value });
            }
        }
        out
    }

    /// A record was written.
    pub fn remote_put(&mut self, key: &str, value: &[u8], now: Instant) {
        let Some((net, node, mac)) = parse_mac_key(&self.prefix, key) else { return };
        if node == self.node {
            return;
        }
        let Some(n) = self.nets.get_mut(net) else { return };
        let rec = match serde_json::from_slice::<MacRecord>(value) {
            Ok(r) if r.mac.parse::<MacAddr>().ok() == Some(mac) => r,
            _ => {
                n.counts.rejected += 1;
                return;
            }
        };
        let (net, node) = (net.to_string(), node.to_string());
        n.remote.entry(mac).or_default().insert(node, Remote { seq: rec.seq, ips: rec.ips, at: now });
        // a newer claim elsewhere: a local presence only counts again once seen afresh
        if n.published.get(&mac).is_none_or(|p| rec.seq > p.seq) {
            n.local.remove(&mac);
        }
        self.rebind(&net, mac);
    }

    /// A record went away (deleted, or its lease ended).
    pub fn remote_delete(&mut self, key: &str) {
        let Some((net, node, mac)) = parse_mac_key(&self.prefix, key) else { return };
        let Some(n) = self.nets.get_mut(net) else { return };
        let net = net.to_string();
        if let Some(r) = n.remote.get_mut(&mac) {
            r.remove(node);
            if r.is_empty() {
                n.remote.remove(&mac);
            }
        }
        self.rebind(&net, mac);
    }

    /// A whole listing: the records it holds, and none else.
    pub fn relist<'a>(&mut self, kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>, now: Instant) {
        let mut listed: BTreeSet<(String, String, MacAddr)> = BTreeSet::new();
        for (k, v) in kvs {
            if let Some((net, node, mac)) = parse_mac_key(&self.prefix, k) {
                if node == self.node {
                    if self.nets.get(net).is_some_and(|n| !n.published.contains_key(&mac)) {
                        self.stale_own.push(KeyWrite::Delete { key: k.to_string() });
                    }
                    continue;
                }
                listed.insert((net.to_string(), node.to_string(), mac));
                let same = self.nets.get(net).and_then(|n| n.remote.get(&mac)).and_then(|r| r.get(node)).is_some_and(|r| {
                    serde_json::from_slice::<MacRecord>(v).is_ok_and(|rec| rec.seq == r.seq && rec.ips == r.ips)
                });
                if !same {
                    self.remote_put(k, v, now);
                }
            }
        }
        let stale: Vec<(String, String, MacAddr)> = self
            .nets
            .iter()
            .flat_map(|(net, n)| n.remote.iter().flat_map(move |(mac, r)| r.keys().map(move |node| (net.clone(), node.clone(), *mac))))
            .filter(|k| !listed.contains(k))
            .collect();
        for (net, node, mac) in stale {
            self.remote_delete(&mac_key(&self.prefix, &net, &node, mac));
        }
    }

    fn rebind(&mut self, net: &str, mac: MacAddr) {
        let Some(n) = self.nets.get_mut(net) else { return };
        let winner = n.winner(mac).map(|(node, r)| (node.to_string(), r.seq, r.ips.clone()));
        let before = n.bound.get(&mac).cloned();
        match (winner, before) {
            (Some((node, seq, ips)), before) => {
                if before.as_ref() != Some(&(node.clone(), seq)) {
                    n.bound.insert(mac, (node.clone(), seq));
                    self.changes.push(RemoteChange::Bind { network: net.to_string(), mac, node, seq, ips });
                }
            }
            (None, Some((node, _))) => {
                n.bound.remove(&mac);
                self.changes.push(RemoteChange::Unbind { network: net.to_string(), mac, node });
            }
            (None, None) => {}
        }
    }

    /// Whether this node's own advertisement of `mac` beats `node`'s with `seq` (then a bind
    /// to `node` is not applied: the MAC stays where this node has it).
    pub fn ours_wins(&self, network: &str, mac: MacAddr, node: &str, seq: u64) -> bool {
        self.nets.get(network).and_then(|n| n.published.get(&mac)).is_some_and(|p| !beats(seq, node, p.seq, &self.node))
    }

    /// The table changes since the last call.
    pub fn take_changes(&mut self) -> Vec<RemoteChange> {
        std::mem::take(&mut self.changes)
    }

    /// Every current winner of `network`: (MAC, node, sequence, addresses).
    pub fn bindings(&self, network: &str) -> Vec<(MacAddr, &str, u64, &[IpAddr])> {
        let Some(n) = self.nets.get(network) else { return Vec::new() };
        n.remote.keys().filter_map(|m| n.winner(*m).map(|(node, r)| (*m, node, r.seq, r.ips.as_slice()))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    fn adv(rate: u32, cap: usize) -> Advertiser {
        Advertiser::new("/o", "me", rate, [("blue".to_string(), Mode::MacsIps, cap)])
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rec(seq: u64, ips: &[&str], mac: MacAddr) -> Vec<u8> {
        serde_json::to_vec(&MacRecord { mac: mac.to_string(), ips: ips.iter().map(|s| ip(s)).collect(), seq }).unwrap()
    }

    #[test]
    fn keys_round_trip_and_others_are_not_mac_keys() {
        let k = mac_key("/o", "blue", "h2", A);
        assert_eq!(k, "/o/v1/networks/blue/macs/h2/02:00:00:00:00:0a");
        assert_eq!(parse_mac_key("/o", &k), Some(("blue", "h2", A)));
        for bad in ["/o/v1/networks/blue/members/h2", "/o/v1/networks/blue/macs/h2/zz", "/o/v1/networks/blue/macs/h2/ff:ff:ff:ff:ff:ff", "/p/v1/networks/blue/macs/h2/02:00:00:00:00:0a"] {
            assert_eq!(parse_mac_key("/o", bad), None, "{bad}");
        }
    }

    #[test]
    fn a_mac_is_published_once_stable_and_withdrawn_when_gone() {
        let mut a = adv(100, 10);
        a.observe("blue", [(A, vec![ip("198.51.100.1")])], t(0));
        assert!(a.writes(t(500)).is_empty(), "not stable yet");
        // a MAC that appears and leaves within the stable time costs nothing
        a.observe("blue", [(A, vec![ip("198.51.100.1")]), (B, vec![])], t(600));
        a.observe("blue", [(A, vec![ip("198.51.100.1")])], t(900));
        let w = a.writes(t(1000));
        assert_eq!(w, vec![KeyWrite::Put { key: mac_key("/o", "blue", "me", A), value: r#"{"mac":"02:00:00:00:00:0a","ips":["198.51.100.1"],"seq":0}"#.into() }]);
        assert!(a.writes(t(2000)).is_empty(), "nothing changed: nothing written");
        // an address more: written again with the same sequence
        a.observe("blue", [(A, vec![ip("198.51.100.1"), ip("2001:db8::1")])], t(2100));
        let w = a.writes(t(2200));
        assert!(matches!(&w[..], [KeyWrite::Put { value, .. }] if value.contains("2001:db8::1") && value.contains("\"seq\":0")), "{w:?}");
        a.observe("blue", [], t(3000));
        assert!(a.writes(t(3000)).is_empty(), "kept a moment: its new home, if any, must see our sequence");
        assert!(a.writes(t(5900)).is_empty());
        assert_eq!(a.writes(t(6000)), vec![KeyWrite::Delete { key: mac_key("/o", "blue", "me", A) }]);
        assert_eq!(a.counts("blue"), AdvertCounts { published: 1, withdrawn: 1, rejected: 0 });
    }

    #[test]
    fn writes_are_rate_limited_and_capped() {
        let mut a = adv(3, 5);
        let macs: Vec<(MacAddr, Vec<IpAddr>)> = (0..8u8).map(|i| (MacAddr([2, 0, 0, 0, 1, i]), vec![])).collect();
        a.observe("blue", macs.clone(), t(0));
        assert_eq!(a.writes(t(1000)).len(), 3, "three per second");
        assert_eq!(a.writes(t(1000)).len(), 0, "the bucket is empty");
        assert_eq!(a.writes(t(2000)).len(), 2, "the cap of five is reached");
        assert_eq!(a.writes(t(9000)).len(), 0);
        assert_eq!(a.sizes("blue").0, 5);
    }

    #[test]
    fn a_move_here_takes_the_next_sequence_and_a_higher_one_elsewhere_withdraws_ours() {
        let mut a = adv(100, 10);
        a.remote_put(&mac_key("/o", "blue", "h2", A), &rec(3, &["198.51.100.2"], A), t(0));
        assert!(matches!(&a.take_changes()[..], [RemoteChange::Bind { node, seq: 3, .. }] if node == "h2"));
        // the MAC shows up here afterwards: it moved here; published with 4
        a.observe("blue", [(A, vec![])], t(100));
        let w = a.writes(t(1200));
        assert!(matches!(&w[..], [KeyWrite::Put { value, .. }] if value.contains("\"seq\":4")), "{w:?}");
        // h3 claims it with 5: ours is withdrawn, and h3 wins
        a.remote_put(&mac_key("/o", "blue", "h3", A), &rec(5, &[], A), t(2000));
        assert!(matches!(&a.take_changes()[..], [RemoteChange::Bind { node, seq: 5, .. }] if node == "h3"));
        // the table put it behind h3: ours is withdrawn
        a.observe("blue", [], t(2100));
        assert_eq!(a.writes(t(3500)), vec![KeyWrite::Delete { key: mac_key("/o", "blue", "me", A) }]);
        // it comes back here (frames from it on a local port again): a move, with 6
        a.observe("blue", [(A, vec![])], t(4000));
        let w = a.writes(t(5000));
        assert!(matches!(&w[..], [KeyWrite::Put { value, .. }] if value.contains("\"seq\":6")), "{w:?}");
    }

    #[test]
    fn on_a_tie_the_lower_node_name_wins() {
        let mut a = adv(100, 10); // this node is "me"
        a.observe("blue", [(A, vec![]), (B, vec![])], t(0));
        assert_eq!(a.writes(t(1000)).len(), 2);
        a.remote_put(&mac_key("/o", "blue", "zz", A), &rec(0, &[], A), t(1100));
        a.remote_put(&mac_key("/o", "blue", "aa", B), &rec(0, &[], B), t(1100));
        assert!(a.ours_wins("blue", A, "zz", 0) && !a.ours_wins("blue", B, "aa", 0));
        a.observe("blue", [(A, vec![]), (B, vec![])], t(1200));
        assert_eq!(a.writes(t(1300)), vec![KeyWrite::Delete { key: mac_key("/o", "blue", "me", B) }], "B is aa's");
    }

    #[test]
    fn remote_winners_bind_once_and_unbind_when_their_record_goes() {
        let mut a = adv(100, 10);
        let (k2, k3) = (mac_key("/o", "blue", "h2", A), mac_key("/o", "blue", "h3", A));
        a.remote_put(&k2, &rec(0, &[], A), t(0));
        a.remote_put(&k3, &rec(1, &[], A), t(1));
        assert_eq!(a.take_changes().len(), 2);
        a.remote_put(&k2, &rec(0, &[], A), t(2));
        assert!(a.take_changes().is_empty(), "the same winner is bound once");
        a.remote_delete(&k3);
        assert!(matches!(&a.take_changes()[..], [RemoteChange::Bind { node, seq: 0, .. }] if node == "h2"));
        a.remote_delete(&k2);
        assert_eq!(a.take_changes(), vec![RemoteChange::Unbind { network: "blue".into(), mac: A, node: "h2".into() }]);
        // garbage, our own records and other networks change nothing
        a.remote_put(&k2, b"{", t(3));
        a.remote_put(&mac_key("/o", "blue", "me", B), &rec(0, &[], B), t(3));
        a.remote_put(&mac_key("/o", "red", "h2", B), &rec(0, &[], B), t(3));
        assert!(a.take_changes().is_empty());
        assert_eq!(a.counts("blue").rejected, 1);
    }

    #[test]
    fn a_relist_drops_what_it_does_not_hold() {
        let mut a = adv(100, 10);
        let (ka, kb) = (mac_key("/o", "blue", "h2", A), mac_key("/o", "blue", "h2", B));
        a.remote_put(&ka, &rec(0, &[], A), t(0));
        a.remote_put(&kb, &rec(0, &[], B), t(0));
        a.take_changes();
        let va = rec(0, &[], A);
        a.relist([(ka.as_str(), va.as_slice())], t(5));
        assert_eq!(a.take_changes(), vec![RemoteChange::Unbind { network: "blue".into(), mac: B, node: "h2".into() }]);
        assert_eq!(a.bindings("blue").len(), 1);
    }

    #[test]
    fn a_listing_with_records_of_ours_we_do_not_publish_deletes_them() {
        let mut a = adv(100, 10);
        let k = mac_key("/o", "blue", "me", A);
        let v = rec(0, &[], A);
        a.relist([(k.as_str(), v.as_slice())], t(0));
        assert!(a.take_changes().is_empty(), "our own records are no remote bindings");
        assert_eq!(a.writes(t(0)), vec![KeyWrite::Delete { key: k }]);
    }

    #[test]
    fn a_reconnect_writes_everything_again() {
        let mut a = adv(100, 10);
        a.observe("blue", [(A, vec![])], t(0));
        assert_eq!(a.writes(t(1000)).len(), 1);
        a.rewrite_all();
        assert_eq!(a.writes(t(1100)).len(), 1);
        assert_eq!(a.counts("blue").published, 1, "a rewrite is no new publication");
    }
}
