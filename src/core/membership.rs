//! Network membership from a shared store, sans-IO: records in, peer-set changes out, time as
//! an argument.
//!
//! Each daemon registers one record per clustered network under
//! `<prefix>/v1/networks/<network>/members/<node>`: its underlay address, encapsulation,
//! VNI (or GRE key) and UDP port, and whether it is `active` or `leaving`. A backend (etcd
//! today, see `crate::io::etcd`) feeds what it reads into a [`Membership`]: single changes
//! ([`Membership::put`], [`Membership::delete`]) and whole listings ([`Membership::relist`]).
//! [`Membership::peers`] is then each network's set of cluster peers, which the daemon applies
//! like a reload.
//!
//! Leaving and dying are different:
//! - a record marked `leaving` (a daemon stopping cleanly) removes the member at once;
//! - a record that disappears without that (its lease expired: the host died, or lost etcd but
//!   maybe not the data plane) makes the member *expired*: it stays a peer while the data path
//!   says it is up, for at most the grace period, and is removed once it is not (down, or never
//!   heard of).
//!
//! Records that disagree with the local network (encapsulation, VNI/key, UDP port, address
//! family), that do not parse, or that claim this node's own address are rejected and counted,
//! never applied. Static peers (the config file's) are never removed by membership.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::time::Instant;

/// Version component of the key layout.
pub const SCHEMA: &str = "v1";

/// A member's own statement about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    Active,
    Leaving,
}

/// The value stored under a member key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Where tunnels to this member go.
    pub underlay: IpAddr,
    /// "vxlan" or "gre".
    pub encap: String,
    /// VXLAN VNI or GRE key; `None` for keyless GRE.
    pub vni: Option<u32>,
    /// VXLAN UDP destination port; `None` for GRE.
    pub port: Option<u16>,
    pub state: RecordState,
}

impl Record {
    pub fn to_json(&self) -> String {
        // a plain struct of numbers and strings always serialises
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `<prefix>/v1/networks/<network>/members/<node>`.
pub fn member_key(prefix: &str, network: &str, node: &str) -> String {
    format!("{prefix}/{SCHEMA}/networks/{network}/members/{node}")
}

/// The prefix every member key starts with (what a backend lists and watches).
pub fn list_prefix(prefix: &str) -> String {
    format!("{prefix}/{SCHEMA}/networks/")
}

/// `(network, node)` of a member key, or `None` for any other key.
pub fn parse_key<'k>(prefix: &str, key: &'k str) -> Option<(&'k str, &'k str)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?.strip_prefix(SCHEMA)?.strip_prefix("/networks/")?;
    let (net, rest) = rest.split_once('/')?;
    let node = rest.strip_prefix("members/")?;
    (!net.is_empty() && !node.is_empty() && !node.contains('/')).then_some((net, node))
}

/// What a local network requires of its members' records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNet {
    pub name: String,
    pub encap: String,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    /// Static peers (never removed, not counted as cluster peers).
    pub statics: Vec<IpAddr>,
}

impl LocalNet {
    /// The record this node registers for the network.
    pub fn record(&self, underlay: IpAddr, state: RecordState) -> Record {
        Record { underlay, encap: self.encap.clone(), vni: self.vni, port: self.port, state }
    }
}

/// Why a record was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    Malformed(String),
    Mismatch(&'static str),
    SelfAddress,
    NotUnicast,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Malformed(e) => write!(f, "malformed record: {e}"),
            Reject::Mismatch(what) => write!(f, "its {what} differs from this network's"),
            Reject::SelfAddress => write!(f, "it claims this node's underlay address"),
            Reject::NotUnicast => write!(f, "its underlay address is not unicast"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    Active,
    /// Its record went away without `leaving`: kept while up, for the grace period.
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub addr: IpAddr,
    pub status: MemberStatus,
    /// When it expired (for `Expired`).
    pub since: Instant,
}

/// Events counted per network (exported as `overlayd_cluster_events_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    pub added: u64,
    pub removed: u64,
    pub expired: u64,
    pub rejected: u64,
}

/// One change to a network's cluster peers, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added { network: String, node: String, addr: IpAddr },
    Removed { network: String, node: String, addr: IpAddr, why: RemovedWhy },
    Expired { network: String, node: String, addr: IpAddr },
    Rejected { network: String, node: String, why: Reject },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovedWhy {
    /// It marked its record `leaving`.
    Left,
    /// Expired, and down (or past the grace period).
    Expired,
    /// Its record now names another address.
    Replaced,
}

#[derive(Debug)]
struct NetMembers {
    local: LocalNet,
    members: BTreeMap<String, Member>,
    counts: EventCounts,
}

/// The members of every clustered network, as the store says and the data path confirms.
#[derive(Debug)]
pub struct Membership {
    prefix: String,
    node: String,
    underlay: IpAddr,
    grace: Duration,
    nets: BTreeMap<String, NetMembers>,
}

impl Membership {
    /// `grace`: how long an expired member that is still up stays a peer.
    pub fn new(prefix: &str, node: &str, underlay: IpAddr, grace: Duration, nets: Vec<LocalNet>) -> Membership {
        let nets = nets.into_iter().map(|l| (l.name.clone(), NetMembers { local: l, members: BTreeMap::new(), counts: EventCounts::default() })).collect();
        Membership { prefix: prefix.to_string(), node: node.to_string(), underlay, grace, nets }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The clustered networks, with what they require.
    pub fn networks(&self) -> impl Iterator<Item = &LocalNet> {
        self.nets.values().map(|n| &n.local)
    }

    /// Check `value` against the local network; the member's address if it can be applied.
    fn validate(&self, local: &LocalNet, value: &[u8]) -> Result<Record, Reject> {
        let r: Record = serde_json::from_slice(value).map_err(|e| Reject::Malformed(e.to_string()))?;
        if r.underlay.is_ipv4() != self.underlay.is_ipv4() {
            return Err(Reject::Mismatch("address family"));
        }
        if r.underlay.is_unspecified() || r.underlay.is_multicast() {
            return Err(Reject::NotUnicast);
        }
        if r.underlay == self.underlay {
            return Err(Reject::SelfAddress);
        }
        if r.encap != local.encap {
            return Err(Reject::Mismatch("encapsulation"));
        }
        if r.vni != local.vni {
            return Err(Reject::Mismatch(if local.encap == "gre" { "GRE key" } else { "VNI" }));
        }
        if r.port != local.port {
            return Err(Reject::Mismatch("UDP port"));
        }
        Ok(r)
    }

    /// A record was written.
    pub fn put(&mut self, key: &str, value: &[u8], now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        self.put_into(key, value, now, &mut out);
        out
    }

    fn put_into(&mut self, key: &str, value: &[u8], now: Instant, out: &mut Vec<Change>) {
        let Some((net, node)) = parse_key(&self.prefix, key) else { return };
        if node == self.node {
            return;
        }
        let Some(local) = self.nets.get(net).map(|n| n.local.clone()) else { return };
        let checked = self.validate(&local, value);
        let Some(n) = self.nets.get_mut(net) else { return };
        let (network, node) = (net.to_string(), node.to_string());
        let r = match checked {
            Ok(r) => r,
            Err(why) => {
                n.counts.rejected += 1;
                out.push(Change::Rejected { network, node, why });
                return;
            }
        };
        match (r.state, n.members.get_mut(&node)) {
            (RecordState::Leaving, Some(_)) => {
                if let Some(m) = n.members.remove(&node) {
                    n.counts.removed += 1;
                    out.push(Change::Removed { network, node, addr: m.addr, why: RemovedWhy::Left });
                }
            }
            (RecordState::Leaving, None) => {}
            (RecordState::Active, Some(m)) if m.addr == r.underlay => {
                m.status = MemberStatus::Active;
            }
            (RecordState::Active, existing) => {
                if let Some(m) = existing {
                    let old = m.addr;
                    *m = Member { addr: r.underlay, status: MemberStatus::Active, since: now };
                    n.counts.removed += 1;
                    out.push(Change::Removed { network: network.clone(), node: node.clone(), addr: old, why: RemovedWhy::Replaced });
                } else {
                    n.members.insert(node.clone(), Member { addr: r.underlay, status: MemberStatus::Active, since: now });
                }
                n.counts.added += 1;
                out.push(Change::Added { network, node, addr: r.underlay });
            }
        }
    }

    /// A record went away (its lease expired or was revoked, or it was deleted).
    pub fn delete(&mut self, key: &str, now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        if let Some((net, node)) = parse_key(&self.prefix, key) {
            let (net, node) = (net.to_string(), node.to_string());
            self.expire(&net, &node, now, &mut out);
        }
        out
    }

    fn expire(&mut self, net: &str, node: &str, now: Instant, out: &mut Vec<Change>) {
        let Some(n) = self.nets.get_mut(net) else { return };
        if let Some(m) = n.members.get_mut(node).filter(|m| m.status == MemberStatus::Active) {
            m.status = MemberStatus::Expired;
            m.since = now;
            n.counts.expired += 1;
            out.push(Change::Expired { network: net.to_string(), node: node.to_string(), addr: m.addr });
        }
    }

    /// A whole listing of the prefix: apply every record in it, and treat every member it
    /// does not hold as expired (a missed delete).
    pub fn relist<'a>(&mut self, kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>, now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        let mut seen: Vec<(String, String)> = Vec::new();
        for (k, v) in kvs {
            if let Some((net, node)) = parse_key(&self.prefix, k) {
                seen.push((net.to_string(), node.to_string()));
            }
            self.put_into(k, v, now, &mut out);
        }
        let gone: Vec<(String, String)> = self
            .nets
            .iter()
            .flat_map(|(net, n)| n.members.keys().map(move |node| (net.clone(), node.clone())))
            .filter(|k| !seen.contains(k))
            .collect();
        for (net, node) in gone {
            self.expire(&net, &node, now, &mut out);
        }
        out
    }

    /// Remove the expired members that are not up (`up(network, addr)`: the data path hears
    /// them) or past the grace period.
    pub fn tick(&mut self, now: Instant, up: impl Fn(&str, IpAddr) -> bool) -> Vec<Change> {
        let mut out = Vec::new();
        for (net, n) in &mut self.nets {
            let done: Vec<String> = n
                .members
                .iter()
                .filter(|(_, m)| m.status == MemberStatus::Expired && (now.saturating_since(m.since) >= self.grace || !up(net, m.addr)))
                .map(|(k, _)| k.clone())
                .collect();
            for node in done {
                if let Some(m) = n.members.remove(&node) {
                    n.counts.removed += 1;
                    out.push(Change::Removed { network: net.clone(), node, addr: m.addr, why: RemovedWhy::Expired });
                }
            }
        }
        out
    }

    /// The cluster peers of `network` (sorted, without the static peers).
    pub fn peers(&self, network: &str) -> Vec<IpAddr> {
        let Some(n) = self.nets.get(network) else { return Vec::new() };
        let mut v: Vec<IpAddr> = n.members.values().map(|m| m.addr).filter(|a| !n.local.statics.contains(a)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The members of `network` by node name.
    pub fn members(&self, network: &str) -> impl Iterator<Item = (&str, &Member)> {
        self.nets.get(network).into_iter().flat_map(|n| n.members.iter().map(|(k, m)| (k.as_str(), m)))
    }

    pub fn counts(&self, network: &str) -> EventCounts {
        self.nets.get(network).map(|n| n.counts).unwrap_or_default()
    }

    /// Every member of every network (for the state file), as (network, node, address).
    pub fn snapshot(&self) -> Vec<(String, String, IpAddr)> {
        self.nets.iter().flat_map(|(net, n)| n.members.iter().map(move |(node, m)| (net.clone(), node.clone(), m.addr))).collect()
    }

    /// Start from a saved snapshot: its members are peers until the first listing confirms
    /// them or expires them, so a start without etcd forwards to the last known members.
    pub fn restore(&mut self, saved: &[(String, String, IpAddr)], now: Instant) {
        for (net, node, addr) in saved {
            let Some(n) = self.nets.get_mut(net) else { continue };
            if node == &self.node || *addr == self.underlay || addr.is_ipv4() != self.underlay.is_ipv4() {
                continue;
            }
            n.members.insert(node.clone(), Member { addr: *addr, status: MemberStatus::Active, since: now });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "192.0.2.1";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn local(statics: &[&str]) -> LocalNet {
        LocalNet { name: "blue".into(), encap: "vxlan".into(), vni: Some(42), port: Some(4789), statics: statics.iter().map(|s| ip(s)).collect() }
    }

    fn m(statics: &[&str]) -> Membership {
        Membership::new("/o", "me", ip(ME), Duration::from_secs(60), vec![local(statics)])
    }

    fn key(node: &str) -> String {
        member_key("/o", "blue", node)
    }

    fn rec(addr: &str, state: RecordState) -> Vec<u8> {
        local(&[]).record(ip(addr), state).to_json().into_bytes()
    }

    fn put(m: &mut Membership, node: &str, addr: &str, t: u64) -> Vec<Change> {
        m.put(&key(node), &rec(addr, RecordState::Active), Instant::from_secs(t))
    }

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        let k = member_key("/overlayd", "blue", "host7");
        assert_eq!(k, "/overlayd/v1/networks/blue/members/host7");
        assert_eq!(parse_key("/overlayd", &k), Some(("blue", "host7")));
        for bad in ["/overlayd/v2/networks/blue/members/x", "/other/v1/networks/blue/members/x", "/overlayd/v1/networks/blue/members/", "/overlayd/v1/networks/blue/x/y"] {
            assert_eq!(parse_key("/overlayd", bad), None, "{bad}");
        }
    }

    #[test]
    fn record_is_the_documented_json() {
        let r = local(&[]).record(ip("192.0.2.7"), RecordState::Active);
        assert_eq!(r.to_json(), r#"{"underlay":"192.0.2.7","encap":"vxlan","vni":42,"port":4789,"state":"active"}"#);
    }

    #[test]
    fn a_record_adds_a_peer_and_leaving_removes_it_at_once() {
        let mut m = m(&[]);
        let c = put(&mut m, "b", "192.0.2.2", 1);
        assert_eq!(c, vec![Change::Added { network: "blue".into(), node: "b".into(), addr: ip("192.0.2.2") }]);
        assert_eq!(m.peers("blue"), [ip("192.0.2.2")]);
        assert!(put(&mut m, "b", "192.0.2.2", 2).is_empty(), "a rewrite of the same record changes nothing");
        let c = m.put(&key("b"), &rec("192.0.2.2", RecordState::Leaving), Instant::from_secs(3));
        assert!(matches!(c[..], [Change::Removed { why: RemovedWhy::Left, .. }]));
        assert!(m.peers("blue").is_empty());
        // the lease revocation that follows changes nothing more
        assert!(m.delete(&key("b"), Instant::from_secs(3)).is_empty());
        assert_eq!(m.counts("blue"), EventCounts { added: 1, removed: 1, expired: 0, rejected: 0 });
    }

    #[test]
    fn an_expired_member_stays_while_up_within_the_grace_and_goes_when_down() {
        let mut m = m(&[]);
        put(&mut m, "b", "192.0.2.2", 1);
        put(&mut m, "c", "192.0.2.3", 1);
        let c = m.delete(&key("b"), Instant::from_secs(10));
        assert!(matches!(c[..], [Change::Expired { .. }]));
        assert_eq!(m.peers("blue").len(), 2, "expired is not removed");
        assert!(m.tick(Instant::from_secs(20), |_, _| true).is_empty(), "still up: kept");
        // comes back (its daemon re-granted a lease and re-wrote the record): active again
        put(&mut m, "b", "192.0.2.2", 25);
        assert!(m.tick(Instant::from_secs(200), |_, _| true).is_empty());
        // expires again and is down: removed at the next tick
        m.delete(&key("b"), Instant::from_secs(300));
        let c = m.tick(Instant::from_secs(301), |_, a| a != ip("192.0.2.2"));
        assert!(matches!(c[..], [Change::Removed { why: RemovedWhy::Expired, .. }]));
        assert_eq!(m.peers("blue"), [ip("192.0.2.3")]);
        // up forever: removed once the grace is over
        m.delete(&key("c"), Instant::from_secs(400));
        assert!(m.tick(Instant::from_secs(459), |_, _| true).is_empty());
        assert_eq!(m.tick(Instant::from_secs(460), |_, _| true).len(), 1);
        assert_eq!(m.counts("blue"), EventCounts { added: 2, removed: 2, expired: 3, rejected: 0 });
    }

    #[test]
    fn records_that_disagree_with_the_local_network_are_rejected_and_counted() {
        let mut m = m(&[]);
        let good = local(&[]).record(ip("192.0.2.9"), RecordState::Active);
        let bad = [
            Record { vni: Some(43), ..good.clone() },
            Record { encap: "gre".into(), port: None, ..good.clone() },
            Record { port: Some(8472), ..good.clone() },
            Record { underlay: ip("2001:db8::9"), ..good.clone() },
            Record { underlay: ip(ME), ..good.clone() },
            Record { underlay: ip("0.0.0.0"), ..good.clone() },
        ];
        for (i, r) in bad.iter().enumerate() {
            let c = m.put(&key(&format!("x{i}")), r.to_json().as_bytes(), Instant::ZERO);
            assert!(matches!(c[..], [Change::Rejected { .. }]), "{r:?}: {c:?}");
        }
        let c = m.put(&key("y"), b"{\"underlay\":", Instant::ZERO);
        assert!(matches!(&c[..], [Change::Rejected { why: Reject::Malformed(_), .. }]));
        assert!(m.peers("blue").is_empty());
        assert_eq!(m.counts("blue").rejected, 7);
        // our own record, and records of networks that are not clustered here, are not peers
        assert!(put(&mut m, "me", "192.0.2.50", 0).is_empty());
        assert!(m.put(&member_key("/o", "red", "b"), &rec("192.0.2.2", RecordState::Active), Instant::ZERO).is_empty());
        assert!(m.peers("blue").is_empty());
    }

    #[test]
    fn static_peers_are_never_cluster_peers_nor_removed() {
        let mut m = m(&["192.0.2.2"]);
        put(&mut m, "b", "192.0.2.2", 1);
        put(&mut m, "c", "192.0.2.3", 1);
        assert_eq!(m.peers("blue"), [ip("192.0.2.3")], "the static one is not the cluster's to remove");
    }

    #[test]
    fn a_relist_applies_the_difference_and_expires_what_was_missed() {
        let mut m = m(&[]);
        put(&mut m, "b", "192.0.2.2", 1);
        put(&mut m, "c", "192.0.2.3", 1);
        // while the watch was down: c went away, d joined, b moved to another address
        let (kb, kd) = (key("b"), key("d"));
        let (vb, vd) = (rec("192.0.2.12", RecordState::Active), rec("192.0.2.4", RecordState::Active));
        let c = m.relist([(kb.as_str(), vb.as_slice()), (kd.as_str(), vd.as_slice())], Instant::from_secs(5));
        assert_eq!(c.len(), 4, "{c:?}"); // b replaced (removed + added), d added, c expired
        assert!(c.contains(&Change::Expired { network: "blue".into(), node: "c".into(), addr: ip("192.0.2.3") }));
        assert_eq!(m.peers("blue"), [ip("192.0.2.3"), ip("192.0.2.4"), ip("192.0.2.12")]);
        m.tick(Instant::from_secs(6), |_, a| a != ip("192.0.2.3"));
        assert_eq!(m.peers("blue"), [ip("192.0.2.4"), ip("192.0.2.12")]);
        // the same listing again changes nothing
        assert!(m.relist([(kb.as_str(), vb.as_slice()), (kd.as_str(), vd.as_slice())], Instant::from_secs(7)).is_empty());
    }

    #[test]
    fn a_restored_snapshot_is_kept_until_a_listing_says_otherwise() {
        let mut a = m(&[]);
        put(&mut a, "b", "192.0.2.2", 1);
        put(&mut a, "c", "192.0.2.3", 1);
        let saved = a.snapshot();
        let mut m = m(&[]);
        m.restore(&saved, Instant::from_secs(100));
        assert_eq!(m.peers("blue"), [ip("192.0.2.2"), ip("192.0.2.3")]);
        // no store yet, not heard of on the data path yet: nothing is removed
        assert!(m.tick(Instant::from_secs(1000), |_, _| false).is_empty());
        let (kb, vb) = (key("b"), rec("192.0.2.2", RecordState::Active));
        m.relist([(kb.as_str(), vb.as_slice())], Instant::from_secs(1001));
        m.tick(Instant::from_secs(1002), |_, _| false);
        assert_eq!(m.peers("blue"), [ip("192.0.2.2")], "confirmed by the listing: kept though not heard; c is not listed and not heard: gone");
    }
}
