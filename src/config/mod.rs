//! Configuration: a TOML file, overridable key by key from the environment
//! (`OVERLAYD__NODE__UNDERLAY=192.0.2.9` overrides `node.underlay`), deserialised into a
//! strict mirror ([`raw`]) and validated into domain types ([`validate`]). Every error names
//! the key it is about.

pub mod raw;
pub mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::{Dscp, Encap, FdbConfig, Vni};

pub use validate::ConfigError;

pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/overlayd/overlayd.sock";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node: NodeConfig,
    pub metrics_listen: SocketAddr,
    pub admin_socket: PathBuf,
    /// `[admin] group`: a gid whose members may use the admin socket too (it is then mode
    /// 0660 and belongs to that group); `None` = root's (or the daemon user's) alone, 0600.
    pub admin_group: Option<u32>,
    pub networks: Vec<NetworkConfig>,
    /// `[cluster]`: membership through etcd; `None` = peers come from this file alone.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: where the membership of the networks with `cluster = true` is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs, all `http://` or all `https://`.
    pub endpoints: Vec<String>,
    /// Key prefix without a trailing '/'; records live under `<prefix>/v1/`.
    pub prefix: String,
    pub node_name: String,
    pub lease_ttl: Duration,
    pub state_file: Option<PathBuf>,
    pub tls: Option<ClusterTls>,
}

/// Files for TLS towards etcd (read at start, before privileges are dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, together or not at all.
    pub identity: Option<(PathBuf, PathBuf)>,
}

pub const DEFAULT_CLUSTER_PREFIX: &str = "/overlayd";
pub const DEFAULT_LEASE_TTL_SECS: u64 = 15;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub underlay: IpAddr,
    pub underlay_mtu: Option<u16>,
    /// Move 64 KB units instead of frames: TAPs with virtio-net headers and TSO, UDP GSO on
    /// send and GRO on receive. `[node] offload = false` turns all of it off (one frame per
    /// TAP read/write, one datagram per message), e.g. to rule it out when debugging.
    pub offload: bool,
    /// `[node] datapath`: where known unicast is forwarded (see [`Datapath`]).
    pub datapath: Datapath,
    /// `[node] user` / `group`: who the daemon runs as after binding its admin and metrics
    /// sockets; `None` = stay as started.
    pub run_as: Option<RunAs>,
}

/// `[node] datapath`: who forwards known unicast between TAP ports and peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Datapath {
    /// The eBPF fast path where the kernel allows it, else the userspace path (logged).
    #[default]
    Auto,
    /// The eBPF fast path, or refuse to start.
    Ebpf,
    /// The userspace threads alone.
    Userspace,
}

impl Datapath {
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::Auto => "auto",
            Datapath::Ebpf => "ebpf",
            Datapath::Userspace => "userspace",
        }
    }
}

/// An unprivileged identity to switch to, resolved when the config is loaded (so `overlayd
/// check` catches an unknown user or group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name (the uid as text when it has no passwd entry), for logs.
    pub user: String,
    pub uid: u32,
    /// The group's name (the gid as text when it has no group entry), for logs.
    pub group: String,
    pub gid: u32,
    /// Supplementary groups: `gid` and every group the user database lists the user as a member
    /// of (what `initgroups(3)` sets); empty for a uid without a passwd entry.
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub name: String,
    pub encap: Encap,
    pub vni: Vni,
    /// TAP devices (at least one local port: a TAP or `vm_socket`). The first one gets
    /// `address`.
    pub taps: Vec<String>,
    /// Address and prefix length put on the first TAP.
    pub address: Option<(IpAddr, u8)>,
    pub peers: Vec<IpAddr>,
    /// TAP MTU; `None` = underlay MTU minus the encapsulation overhead.
    pub mtu: Option<u16>,
    pub vxlan_port: u16,
    pub fdb: FdbConfig,
    /// Storm control: flooded frames per second accepted from each port; `None` = no limit.
    pub bum_pps_limit: Option<u32>,
    /// TTL (IPv4) or hop limit (IPv6) of the outer header.
    pub ttl: u8,
    /// DSCP of the outer header.
    pub dscp: Dscp,
    /// `arp_suppress`: answer ARP requests and neighbour solicitations from local ports for
    /// targets bound to a MAC behind a peer, instead of flooding them.
    pub arp_suppress: bool,
    /// `unknown_unicast`: what happens to unicast frames for a MAC not in the table.
    pub unknown_unicast: UnknownUnicast,
    /// Where QEMU VMs connect as switch ports, if anywhere.
    pub vm_socket: Option<VmSocketConfig>,
    /// Where QEMU VMs send datagrams (`-netdev dgram`), if anywhere.
    pub vm_dgram_socket: Option<VmSocketConfig>,
    /// Lower the MSS of TCP SYNs from local ports to fit the MTU.
    pub mss_clamp: bool,
    /// `cluster = true`: registered in `[cluster]`, its members become peers (besides `peers`).
    pub cluster: bool,
    /// `advertise`: what of its local MACs the network publishes to the cluster.
    pub advertise: Advertise,
}

/// What a clustered network publishes of the MACs on its local ports (`advertise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Advertise {
    #[default]
    None,
    /// The MACs.
    Macs,
    /// The MACs with the IPv4/IPv6 addresses snooped for them on local ports.
    MacsIps,
}

/// What a network does with unicast frames for a MAC it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownUnicast {
    /// Flood them like broadcast (a learning switch).
    #[default]
    Flood,
    /// Drop them: only sound when every MAC is advertised through the cluster, so the config
    /// accepts it only on `cluster = true` networks with `advertise` other than "none".
    Drop,
}

/// Outer TTL / hop limit when the config sets none (the Linux default, `net.ipv4.ip_default_ttl`).
pub const DEFAULT_TTL: u8 = 64;

/// A listening UNIX socket for QEMU `-netdev stream` clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSocketConfig {
    pub path: PathBuf,
    /// uid/gid to give the socket file; `None` leaves the daemon's own.
    pub owner: Option<u32>,
    pub group: Option<u32>,
    /// Permission bits of the socket file.
    pub mode: u32,
}

/// Socket files are owner and group read/write unless configured otherwise.
pub const DEFAULT_VM_SOCKET_MODE: u32 = 0o660;

impl NetworkConfig {
    /// Where path-MTU signals come from: the network's `address`, of its family.
    pub fn pmtu_sources(&self) -> crate::core::pmtu::Sources {
        let mut s = crate::core::pmtu::Sources::default();
        match self.address {
            Some((IpAddr::V4(a), _)) => s.v4 = Some(a),
            Some((IpAddr::V6(a), _)) => s.v6 = Some(a),
            None => {}
        }
        s
    }

    /// Bytes the encapsulation adds on the underlay: outer IP header, UDP + VXLAN or the GRE
    /// header (with the fields this network sends), and the inner Ethernet header.
    pub fn overhead(&self, underlay: IpAddr) -> u16 {
        use crate::core::wire::{ethernet, gre, ip, vxlan};
        let outer_ip = match underlay {
            IpAddr::V4(_) => ip::IPV4_MIN_HEADER_LEN,
            IpAddr::V6(_) => ip::IPV6_HEADER_LEN,
        };
        let tunnel = match self.encap {
            Encap::Vxlan => 8 + vxlan::HEADER_LEN,
            Encap::Gre(o) => gre::GreRepr { key: o.key.then_some(self.vni.get()), checksum: o.checksum }.header_len(),
        };
        (outer_ip + tunnel + ethernet::HEADER_LEN) as u16
    }
}

/// Read `path`, apply `OVERLAYD__*` environment overrides, validate.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// [`load`] with an explicit environment (tests pass their own).
pub fn load_with_env(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
    from_str_with_env(&text, env)
}

/// Parse and validate config text.
pub fn from_str_with_env(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
    use config::{Environment, File, FileFormat};
    let mut env: config::Map<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("OVERLAYD__")).collect();
    // keys of one network (`OVERLAYD__NETWORKS__0__ARP_SUPPRESS`): the environment source
    // would turn `networks` into a table, so these are set by path (`networks[0].arp_suppress`)
    let mut by_path = Vec::new();
    env.retain(|k, v| match network_key_path(k) {
        Some(path) => {
            by_path.push((path, v.clone()));
            false
        }
        None => true,
    });
    let mut builder = config::Config::builder().add_source(File::from_str(text, FileFormat::Toml));
    for (path, v) in by_path {
        builder = builder.set_override(path, v).map_err(ConfigError::from_config)?;
    }
    let built = builder
        .add_source(
            Environment::with_prefix("OVERLAYD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("cluster.endpoints")
                .source(Some(env)),
        )
        .build()
        .map_err(ConfigError::from_config)?;
    let raw: raw::Raw = built.try_deserialize().map_err(ConfigError::from_config)?;
    validate::validate(raw)
}

/// `OVERLAYD__NETWORKS__<i>__<KEY>` → `networks[<i>].<key>`.
fn network_key_path(var: &str) -> Option<String> {
    let rest = var.strip_prefix("OVERLAYD__NETWORKS__")?;
    let (i, key) = rest.split_once("__")?;
    let i: usize = i.parse().ok()?;
    (!key.is_empty() && !key.contains("__")).then(|| format!("networks[{i}].{}", key.to_ascii_lowercase()))
}
