//! The serde mirror of the config file. Every table denies unknown keys, so a typo is an
//! error that names the key instead of a silently ignored setting.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    pub node: RawNode,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub admin: RawAdmin,
    /// Membership through etcd; absent = every peer comes from the config file.
    pub cluster: Option<RawCluster>,
    #[serde(default)]
    pub networks: Vec<RawNetwork>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// etcd client URLs (`http://host:port` or `https://host:port`).
    pub endpoints: Vec<String>,
    /// Keys live under `<prefix>/v1/`; default "/overlayd".
    pub prefix: Option<String>,
    /// This node's name in the cluster; default: the hostname.
    pub node_name: Option<String>,
    /// Lease TTL in seconds; keepalives every third of it. Default 15.
    pub lease_ttl_secs: Option<i64>,
    /// Last known membership, read at start when etcd does not answer.
    pub state_file: Option<String>,
    /// TLS: CA bundle that signs the etcd servers' certificates.
    pub ca_file: Option<String>,
    /// TLS client certificate and its key.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub underlay: String,
    /// MTU of the underlay path; read off the interface holding `underlay` if not given.
    pub underlay_mtu: Option<u32>,
    /// Segmentation offloads on the data path (TSO/GSO/GRO); default true.
    pub offload: Option<bool>,
    /// Which data path forwards known unicast: "auto" (default), "ebpf" or "userspace".
    pub datapath: Option<String>,
    /// Run as this user (name or uid) once the admin and metrics sockets are bound.
    pub user: Option<RawId>,
    /// ... and this group (name or gid); default: the user's primary group.
    pub group: Option<RawId>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub socket: Option<String>,
    /// A group whose members may use the admin socket too (mode 0660 instead of 0600).
    pub group: Option<RawId>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub name: String,
    pub encap: String,
    pub vni: i64,
    /// One TAP device: shorthand for `taps = [tap]`.
    pub tap: Option<String>,
    /// TAP devices, each a local port of the network.
    pub taps: Option<Vec<String>>,
    pub address: Option<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    pub mtu: Option<i64>,
    pub vxlan_port: Option<i64>,
    pub fdb_ageing_secs: Option<i64>,
    pub fdb_max_entries: Option<i64>,
    /// Flooded frames per second accepted from each port; absent = no limit.
    pub bum_pps_limit: Option<i64>,
    /// Answer ARP requests / neighbour solicitations from known bindings (default false).
    pub arp_suppress: Option<bool>,
    /// "flood" (default) or "drop" (needs every MAC from cluster advertisement).
    pub unknown_unicast: Option<String>,
    /// Cluster networks: "none" (default), "macs" or "macs+ips" published in etcd.
    pub advertise: Option<String>,
    /// Moves within `mac_move_window_secs` after which a MAC is pinned (0 = never).
    pub mac_move_limit: Option<i64>,
    pub mac_move_window_secs: Option<i64>,
    /// GRE only: carry `vni` in the GRE key (default true).
    pub key: Option<bool>,
    /// GRE only: send the GRE checksum (default false).
    pub gre_checksum: Option<bool>,
    /// TTL / hop limit of the outer header (default 64).
    pub ttl: Option<i64>,
    /// DSCP of the outer header: "inherit" (default: copy the inner packet's) or 0..=63.
    pub dscp: Option<String>,
    /// UNIX stream socket QEMU (`-netdev stream`) connects to; every connection is a port.
    pub vm_socket: Option<String>,
    /// UNIX datagram socket QEMU (`-netdev dgram`) sends to; every sender address is a port.
    pub vm_dgram_socket: Option<String>,
    /// Owner (user name or uid) of `vm_socket` (and `vm_dgram_socket`).
    pub vm_socket_owner: Option<RawId>,
    /// Group (group name or gid) of `vm_socket`.
    pub vm_socket_group: Option<RawId>,
    /// Permission bits of `vm_socket`: an octal string ("0660") or a TOML integer (0o660).
    pub vm_socket_mode: Option<RawId>,
    /// Rewrite the MSS option of TCP SYNs from local ports to fit the network MTU.
    pub mss_clamp: Option<bool>,
    /// Register this network in `[cluster]` and take its members as peers.
    pub cluster: Option<bool>,
}

/// A name or a number (user, group, mode): TOML lets the user write either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawId {
    Num(i64),
    Text(String),
}
