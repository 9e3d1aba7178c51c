//! What a reload changes: the running networks compared with a new configuration's, by name.
//!
//! - a network only in the running configuration is *removed*;
//! - one only in the new configuration is *added*;
//! - one whose peers, FDB settings, storm limit, `mss_clamp`, `arp_suppress` or `unknown_unicast` (and nothing else) changed is *updated*
//!   in place: the core's next generation, see [`crate::core::handover`];
//! - one with any other change (TAPs, address, MTU, VNI, encapsulation, UDP port, GRE
//!   options, TTL, DSCP, VM sockets) is *restarted*: its ports close and open again;
//! - every other network is left alone.
//!
//! Settings outside `[[networks]]` (the node, the metrics address, the admin socket, the
//! cluster) and which networks are in the cluster are applied at start only: a configuration
//! that changes them is refused as a whole.

use crate::config::{Config, NetworkConfig};

/// The changes one reload makes, by network name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub removed: Vec<String>,
    pub added: Vec<String>,
    pub updated: Vec<NetworkConfig>,
    pub restarted: Vec<String>,
}

/// Whether `a` and `b` differ only in what a network's next generation can take over.
fn only_core_differs(a: &NetworkConfig, b: &NetworkConfig) -> bool {
    let mut b = b.clone();
    b.peers.clone_from(&a.peers);
    b.fdb = a.fdb;
    b.bum_pps_limit = a.bum_pps_limit;
    b.mss_clamp = a.mss_clamp;
    b.arp_suppress = a.arp_suppress;
    b.unknown_unicast = a.unknown_unicast;
    &b == a
}

impl Plan {
    pub fn new(running: &[NetworkConfig], new: &[NetworkConfig]) -> Plan {
        let mut plan = Plan::default();
        for r in running {
            match new.iter().find(|n| n.name == r.name) {
                None => plan.removed.push(r.name.clone()),
                Some(n) if n == r => {}
                Some(n) if only_core_differs(r, n) => plan.updated.push(n.clone()),
                Some(n) => plan.restarted.push(n.name.clone()),
            }
        }
        plan.added = new.iter().filter(|n| !running.iter().any(|r| r.name == n.name)).map(|n| n.name.clone()).collect();
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.updated.is_empty() && self.restarted.is_empty()
    }

    /// Whether the running network `name` stops (removed, or restarted).
    pub fn stops(&self, name: &str) -> bool {
        self.removed.iter().chain(&self.restarted).any(|n| n == name)
    }

    /// Whether network `name` of the new configuration starts (added, or restarted).
    pub fn starts(&self, name: &str) -> bool {
        self.added.iter().chain(&self.restarted).any(|n| n == name)
    }
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
    pub restarted: Vec<String>,
    /// Networks that could not start, and why; they are not running.
    pub failed: Vec<(String, String)>,
}

/// The names of the networks registered in the cluster.
/// Whether a network clustered before and after changed its `advertise` (start-only: the
/// advertiser and what it published are built at start, like the cluster registration).
fn advertise_changed(running: &Config, new: &Config) -> bool {
    running.networks.iter().filter(|a| a.cluster).any(|a| new.networks.iter().any(|b| b.cluster && b.name == a.name && b.advertise != a.advertise))
}

fn clustered(c: &Config) -> Vec<&str> {
    c.networks.iter().filter(|n| n.cluster).map(|n| n.name.as_str()).collect()
}

/// The settings of `new` that differ from `running` outside `[[networks]]`, by key; a reload
/// cannot apply them.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.node, &new.node);
    let node = [
        (a.underlay != b.underlay, "node.underlay"),
        (a.underlay_mtu != b.underlay_mtu, "node.underlay_mtu"),
        (a.offload != b.offload, "node.offload"),
        (a.datapath != b.datapath, "node.datapath"),
        (a.run_as != b.run_as, "node.user/node.group"),
    ];
    let rest = [
        (running.metrics_listen != new.metrics_listen, "metrics.listen"),
        (running.admin_socket != new.admin_socket, "admin.socket"),
        (running.admin_group != new.admin_group, "admin.group"),
        (running.cluster != new.cluster, "cluster"),
        (clustered(running) != clustered(new), "networks.cluster"),
        (advertise_changed(running, new), "networks.advertise"),
    ];
    let mut keys: Vec<&'static str> = node.iter().filter(|(changed, _)| *changed).map(|&(_, k)| k).collect();
    // a node setting without a key of its own above still refuses the reload
    if a != b && keys.is_empty() {
        keys.push("node");
    }
    keys.extend(rest.iter().filter(|(changed, _)| *changed).map(|&(_, k)| k));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        crate::config::from_str_with_env(text, Vec::<(String, String)>::new()).expect("valid config")
    }

    const BASE: &str = r#"
[node]
underlay = "192.0.2.1"

[[networks]]
name = "blue"
encap = "vxlan"
vni = 42
tap = "b0"
peers = ["192.0.2.2"]

[[networks]]
name = "red"
encap = "vxlan"
vni = 43
tap = "r0"
peers = ["192.0.2.2"]
"#;

    #[test]
    fn peers_change_in_place_other_settings_restart_untouched_networks_stay() {
        let running = cfg(BASE);
        let text = BASE
            .replace("tap = \"b0\"\npeers = [\"192.0.2.2\"]", "tap = \"b0\"\npeers = [\"192.0.2.2\", \"192.0.2.3\"]")
            .replace("tap = \"r0\"", "tap = \"r1\"");
        let new = cfg(&(text + "\n[[networks]]\nname = \"green\"\nencap = \"vxlan\"\nvni = 44\ntap = \"g0\"\n"));
        let plan = Plan::new(&running.networks, &new.networks);
        assert_eq!(plan.updated.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["blue"]);
        assert_eq!(plan.restarted, ["red"]);
        assert_eq!(plan.added, ["green"]);
        assert!(plan.removed.is_empty());
        assert!(plan.stops("red") && plan.starts("red") && !plan.stops("blue") && plan.starts("green"));
        assert!(restart_only_changes(&running, &new).is_empty());
    }

    #[test]
    fn mss_clamp_changes_in_place() {
        let running = cfg(BASE);
        let new = cfg(&BASE.replace("tap = \"b0\"", "tap = \"b0\"\nmss_clamp = true"));
        let plan = Plan::new(&running.networks, &new.networks);
        assert_eq!(plan.updated.iter().map(|n| (n.name.as_str(), n.mss_clamp)).collect::<Vec<_>>(), [("blue", true)]);
        assert!(plan.restarted.is_empty());
    }

    #[test]
    fn arp_suppress_changes_in_place() {
        let running = cfg(BASE);
        let new = cfg(&BASE.replace("tap = \"b0\"", "tap = \"b0\"\narp_suppress = true"));
        let plan = Plan::new(&running.networks, &new.networks);
        assert_eq!(plan.updated.iter().map(|n| (n.name.as_str(), n.arp_suppress)).collect::<Vec<_>>(), [("blue", true)]);
        assert!(plan.restarted.is_empty());
    }

    #[test]
    fn unknown_unicast_changes_in_place() {
        let cluster = "[cluster]\nendpoints = [\"http://192.0.2.10:2379\"]\nnode_name = \"a\"\n";
        let adv = "tap = \"b0\"\ncluster = true\nadvertise = \"macs\"";
        let running = cfg(&format!("{cluster}{}", BASE.replace("tap = \"b0\"", adv)));
        let new = cfg(&format!("{cluster}{}", BASE.replace("tap = \"b0\"", &format!("{adv}\nunknown_unicast = \"drop\""))));
        let plan = Plan::new(&running.networks, &new.networks);
        assert_eq!(plan.updated.iter().map(|n| (n.name.as_str(), n.unknown_unicast)).collect::<Vec<_>>(), [("blue", crate::config::UnknownUnicast::Drop)]);
        assert!(plan.restarted.is_empty());
        assert!(restart_only_changes(&running, &new).is_empty());
    }

    #[test]
    fn removed_and_unchanged() {
        let running = cfg(BASE);
        let text = BASE.split("[[networks]]\nname = \"red\"").next().unwrap_or_default();
        let new = cfg(text);
        let plan = Plan::new(&running.networks, &new.networks);
        assert_eq!(plan.removed, ["red"]);
        assert!(plan.updated.is_empty() && plan.added.is_empty() && plan.restarted.is_empty());
        assert!(Plan::new(&running.networks, &running.networks).is_empty());
    }

    #[test]
    fn node_settings_are_named_and_refused() {
        let running = cfg(BASE);
        let new = cfg(&BASE.replace("underlay = \"192.0.2.1\"", "underlay = \"192.0.2.9\"\noffload = false"));
        assert_eq!(restart_only_changes(&running, &new), ["node.underlay", "node.offload"]);
        let new = cfg(&BASE.replace("underlay = \"192.0.2.1\"", "underlay = \"192.0.2.1\"\ndatapath = \"userspace\""));
        assert_eq!(restart_only_changes(&running, &new), ["node.datapath"]);
        let new = cfg(&format!("[admin]\nsocket = \"/tmp/other.sock\"\ngroup = 0\n{BASE}"));
        assert_eq!(restart_only_changes(&running, &new), ["admin.socket", "admin.group"]);
    }

    #[test]
    fn cluster_settings_and_clustered_networks_are_start_only() {
        let cluster = "[cluster]\nendpoints = [\"http://192.0.2.10:2379\"]\nnode_name = \"a\"\n";
        let running = cfg(&format!("{cluster}{BASE}"));
        assert_eq!(restart_only_changes(&running, &cfg(BASE)), ["cluster"]);
        let new = cfg(&format!("{}{BASE}", cluster.replace("\"a\"", "\"b\"")));
        assert_eq!(restart_only_changes(&running, &new), ["cluster"]);
        let new = cfg(&format!("{cluster}{}", BASE.replace("vni = 43", "vni = 43\ncluster = true")));
        assert_eq!(restart_only_changes(&running, &new), ["networks.cluster"]);
        let clustered = cfg(&format!("{cluster}{}", BASE.replace("vni = 43", "vni = 43\ncluster = true")));
        let advertising = cfg(&format!("{cluster}{}", BASE.replace("vni = 43", "vni = 43\ncluster = true\nadvertise = \"macs\"")));
        assert_eq!(restart_only_changes(&clustered, &advertising), ["networks.advertise"]);
    }
}
