//! Raw → Config: "parse, don't validate". Every check names the offending key path, e.g.
//! `networks[1].vni: 16777216 does not fit 24 bits (VXLAN VNIs are 0..=16777215)`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Raw, RawCluster, RawId, RawNetwork};
use super::{ClusterConfig, ClusterTls, Config, Datapath, RunAs, UnknownUnicast, Advertise, DEFAULT_CLUSTER_PREFIX, DEFAULT_LEASE_TTL_SECS, DEFAULT_ADMIN_SOCKET, DEFAULT_METRICS_LISTEN, DEFAULT_TTL, DEFAULT_VM_SOCKET_MODE, NetworkConfig, NodeConfig, VmSocketConfig};
use crate::core::wire::vxlan;
use crate::core::{Dscp, Encap, FdbConfig, GreOptions, Vni};

/// A configuration problem: the key it is about and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError { key: key.into(), problem: problem.into() }
    }

    pub(super) fn from_config(e: config::ConfigError) -> Self {
        // the config crate words its errors with the key already ("missing field `vni` for key
        // `networks[0]`", "invalid type: ... for key `node.underlay`"); keep them whole
        // it writes nested keys as `networks[0]vni`; print them the way the file spells them
        let text = e.to_string();
        let mut out = String::with_capacity(text.len() + 4);
        let mut prev = ' ';
        for c in text.chars() {
            if prev == ']' && (c.is_ascii_alphanumeric() || c == '_') {
                out.push('.');
            }
            out.push(c);
            prev = c;
        }
        ConfigError::new("", out)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

fn err<T>(key: impl Into<String>, problem: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::new(key, problem))
}

fn ip(key: &str, s: &str) -> Result<IpAddr, ConfigError> {
    s.trim().parse().or_else(|_| err(key, format!("{s:?} is not an IPv4 or IPv6 address")))
}

fn ranged(key: &str, v: i64, lo: i64, hi: i64, what: &str) -> Result<i64, ConfigError> {
    if (lo..=hi).contains(&v) { Ok(v) } else { err(key, format!("{v} is out of range ({what} must be {lo}..={hi})")) }
}

pub fn validate(raw: Raw) -> Result<Config, ConfigError> {
    let underlay = ip("node.underlay", &raw.node.underlay)?;
    if underlay.is_unspecified() || underlay.is_multicast() {
        return err("node.underlay", format!("{underlay} cannot be a tunnel source (need a unicast address of this host)"));
    }
    let underlay_mtu = raw
        .node
        .underlay_mtu
        .map(|m| ranged("node.underlay_mtu", i64::from(m), 576, 65535, "an MTU").map(|m| m as u16))
        .transpose()?;
    let metrics_listen = match raw.metrics.listen.as_deref() {
        None => DEFAULT_METRICS_LISTEN.parse().or_else(|_| err("metrics.listen", "bad default"))?,
        Some(s) => s
            .parse::<SocketAddr>()
            .or_else(|_| err("metrics.listen", format!("{s:?} is not an address:port (e.g. 127.0.0.1:9477)")))?,
    };
    let admin_socket = PathBuf::from(raw.admin.socket.as_deref().unwrap_or(DEFAULT_ADMIN_SOCKET));
    if admin_socket.as_os_str().is_empty() {
        return err("admin.socket", "must not be empty");
    }
    let admin_group = raw.admin.group.map(|g| group_id("admin.group", g)).transpose()?;

    let mut names = HashSet::new();
    let mut taps = HashSet::new();
    let mut sockets = HashSet::new();
    let mut keys = HashSet::new();
    let mut networks = Vec::with_capacity(raw.networks.len());
    for (i, n) in raw.networks.into_iter().enumerate() {
        let at = format!("networks[{i}]");
        let net = network(&at, n, underlay, underlay_mtu)?;
        if !names.insert(net.name.clone()) {
            return err(format!("{at}.name"), format!("{:?} is used by another network", net.name));
        }
        for (j, t) in net.taps.iter().enumerate() {
            if !taps.insert(t.clone()) {
                return err(tap_key(&at, j, net.taps.len()), format!("{t:?} is used by another network"));
            }
        }
        for (k, v) in [("vm_socket", &net.vm_socket), ("vm_dgram_socket", &net.vm_dgram_socket)] {
            if let Some(v) = v
                && !sockets.insert(v.path.clone())
            {
                return err(format!("{at}.{k}"), format!("{} is used by another network", v.path.display()));
            }
        }
        // what tells this network's packets apart on the wire
        let wire_id = match net.encap {
            Encap::Vxlan => (Some(net.vxlan_port), Some(net.vni)),
            Encap::Gre(o) => (None, o.key.then_some(net.vni)),
        };
        if !keys.insert(wire_id) {
            return match wire_id {
                (Some(port), _) => err(format!("{at}.vni"), format!("{} on UDP port {port} is used by another network", net.vni)),
                (None, Some(_)) => err(format!("{at}.vni"), format!("GRE key {} is used by another GRE network", net.vni)),
                (None, None) => err(format!("{at}.key"), "another GRE network is keyless already; only one keyless GRE network can exist"),
            };
        }
        networks.push(net);
    }
    let offload = raw.node.offload.unwrap_or(true);
    let datapath = match raw.node.datapath.as_deref() {
        None | Some("auto") => Datapath::Auto,
        Some("ebpf") => Datapath::Ebpf,
        Some("userspace") => Datapath::Userspace,
        Some(other) => return err("node.datapath", format!("{other:?} is not a data path (expected \"auto\", \"ebpf\" or \"userspace\")")),
    };
    let run_as = run_as(raw.node.user, raw.node.group)?;
    let cluster = raw.cluster.map(cluster).transpose()?;
    if cluster.is_none()
        && let Some(i) = networks.iter().position(|n| n.cluster)
    {
        return err(format!("networks[{i}].cluster"), "needs a [cluster] section (the etcd endpoints to register in)");
    }
    Ok(Config { node: NodeConfig { underlay, underlay_mtu, offload, datapath, run_as }, metrics_listen, admin_socket, admin_group, networks, cluster })
}

fn network(at: &str, n: RawNetwork, underlay: IpAddr, underlay_mtu: Option<u16>) -> Result<NetworkConfig, ConfigError> {
    let name = n.name.trim().to_string();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return err(format!("{at}.name"), format!("{:?} must be non-empty letters, digits, '-' or '_'", n.name));
    }
    let encap = match n.encap.as_str() {
        "vxlan" => Encap::Vxlan,
        "gre" => Encap::Gre(GreOptions { key: n.key.unwrap_or(true), checksum: n.gre_checksum.unwrap_or(false) }),
        other => return err(format!("{at}.encap"), format!("{other:?} is not a supported encapsulation (expected \"vxlan\" or \"gre\")")),
    };
    if encap == Encap::Vxlan {
        for (key, set) in [("key", n.key.is_some()), ("gre_checksum", n.gre_checksum.is_some())] {
            if set {
                return err(format!("{at}.{key}"), "only applies to encap = \"gre\"");
            }
        }
        // VXLAN goes out on UDP sockets shared by every VXLAN network: the kernel's defaults
        // apply (TTL / hop limit 64, DF set, DSCP 0)
        for (key, set) in [("ttl", n.ttl.is_some()), ("dscp", n.dscp.is_some())] {
            if set {
                return err(format!("{at}.{key}"), "only applies to encap = \"gre\" (VXLAN is sent with TTL 64, DF set and DSCP 0)");
            }
        }
    } else if n.vxlan_port.is_some() {
        return err(format!("{at}.vxlan_port"), "only applies to encap = \"vxlan\"");
    }
    let vni = match encap {
        Encap::Vxlan => {
            let v = ranged(&format!("{at}.vni"), n.vni, 0, i64::from(Vni::MAX_VXLAN), "a VXLAN VNI (24 bits)")?;
            Vni::new_unchecked(v as u32)
        }
        Encap::Gre(_) => {
            let v = ranged(&format!("{at}.vni"), n.vni, 0, i64::from(u32::MAX), "a GRE key (32 bits)")?;
            Vni::new_unchecked(v as u32)
        }
    };
    let ttl = n.ttl.map(|t| ranged(&format!("{at}.ttl"), t, 1, 255, "the outer TTL / hop limit")).transpose()?.map_or(DEFAULT_TTL, |t| t as u8);
    let dscp = match n.dscp.as_deref().map(str::trim) {
        None | Some("inherit") => Dscp::Inherit,
        Some(s) => match s.parse::<u8>() {
            Ok(d) if d <= 63 => Dscp::Fixed(d),
            _ => return err(format!("{at}.dscp"), format!("{s:?} is neither \"inherit\" nor a DSCP value 0..=63")),
        },
    };
    let taps = match (n.tap, n.taps) {
        (Some(_), Some(_)) => return err(format!("{at}.taps"), "give either tap (one TAP) or taps (a list), not both"),
        (Some(t), None) => vec![t],
        (None, Some(ts)) => ts,
        (None, None) => Vec::new(),
    };
    for (j, t) in taps.iter().enumerate() {
        if t.is_empty() || t.len() > IFNAME_MAX || t.contains(['/', ' ', ':']) || t == "." || t == ".." {
            return err(tap_key(at, j, taps.len()), format!("{t:?} is not a valid interface name (1..=15 characters, no '/', ':' or spaces)"));
        }
        if taps[..j].contains(t) {
            return err(tap_key(at, j, taps.len()), format!("{t:?} is listed twice"));
        }
    }
    if taps.len() > MAX_TAPS {
        return err(format!("{at}.taps"), format!("{} TAPs; at most {MAX_TAPS} per network", taps.len()));
    }
    let (vm_socket, vm_dgram_socket) = vm_sockets(at, n.vm_socket, n.vm_dgram_socket, n.vm_socket_owner, n.vm_socket_group, n.vm_socket_mode)?;
    if taps.is_empty() && vm_socket.is_none() && vm_dgram_socket.is_none() {
        return err(format!("{at}.tap"), "a network needs a local port: tap, taps, vm_socket or vm_dgram_socket");
    }
    let address = n
        .address
        .as_deref()
        .map(|s| {
            let key = format!("{at}.address");
            let (a, p) = s.split_once('/').ok_or_else(|| ConfigError::new(&key, format!("{s:?} needs a prefix length, e.g. 198.51.100.1/24")))?;
            let addr = ip(&key, a)?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let plen: u8 = p
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| ConfigError::new(&key, format!("prefix length {p:?} is not 0..={max}")))?;
            Ok((addr, plen))
        })
        .transpose()?;
    let mut peers = Vec::with_capacity(n.peers.len());
    for (j, p) in n.peers.iter().enumerate() {
        let key = format!("{at}.peers[{j}]");
        let a = ip(&key, p)?;
        if a.is_ipv4() != underlay.is_ipv4() {
            return err(key, format!("{a} is not of the underlay's address family (node.underlay is {underlay}); a network's peers must share it"));
        }
        if a == underlay {
            return err(key, format!("{a} is this node's own underlay address"));
        }
        if a.is_unspecified() || a.is_multicast() {
            return err(key, format!("{a} is not a unicast address"));
        }
        if peers.contains(&a) {
            return err(key, format!("{a} is listed twice"));
        }
        peers.push(a);
    }
    let vxlan_port = n
        .vxlan_port
        .map(|p| ranged(&format!("{at}.vxlan_port"), p, 1, 65535, "a UDP port").map(|p| p as u16))
        .transpose()?
        .unwrap_or(vxlan::DEFAULT_PORT);
    let cluster = n.cluster.unwrap_or(false);
    let mut cfg = NetworkConfig { name, encap, vni, taps, address, peers, mtu: None, vxlan_port, fdb: FdbConfig::default(), bum_pps_limit: None, ttl, dscp, vm_socket, vm_dgram_socket, mss_clamp: n.mss_clamp.unwrap_or(false), arp_suppress: n.arp_suppress.unwrap_or(false), unknown_unicast: UnknownUnicast::Flood, cluster, advertise: Advertise::None };
    if let Some(m) = n.mtu {
        let overhead = cfg.overhead(underlay);
        let hi = i64::from(underlay_mtu.unwrap_or(65535).saturating_sub(overhead));
        cfg.mtu = Some(ranged(&format!("{at}.mtu"), m, 68, hi, "the TAP MTU (underlay MTU minus encapsulation overhead at most)")? as u16);
    }
    if let Some(s) = n.fdb_ageing_secs {
        let s = ranged(&format!("{at}.fdb_ageing_secs"), s, 1, 1_000_000, "the ageing time in seconds")?;
        cfg.fdb.ageing = Duration::from_secs(s as u64);
    }
    if let Some(m) = n.fdb_max_entries {
        cfg.fdb.max_entries = ranged(&format!("{at}.fdb_max_entries"), m, 1, 16_777_216, "the MAC table size")? as usize;
    }
    if let Some(p) = n.bum_pps_limit {
        cfg.bum_pps_limit = Some(ranged(&format!("{at}.bum_pps_limit"), p, 1, 100_000_000, "flooded frames per second per port")? as u32);
    }
    cfg.advertise = match n.advertise.as_deref().map(str::trim) {
        None | Some("none") => Advertise::None,
        Some(a @ ("macs" | "macs+ips")) if !cluster => {
            return err(format!("{at}.advertise"), format!("{a:?} needs cluster = true (MACs are published in the cluster's etcd)"));
        }
        Some("macs") => Advertise::Macs,
        Some("macs+ips") => Advertise::MacsIps,
        Some(other) => return err(format!("{at}.advertise"), format!("{other:?} is none of \"none\", \"macs\", \"macs+ips\"")),
    };
    match n.unknown_unicast.as_deref().map(str::trim) {
        None | Some("flood") => {}
        Some("drop") if cluster && cfg.advertise != Advertise::None => cfg.unknown_unicast = UnknownUnicast::Drop,
        Some("drop") => {
            return err(
                format!("{at}.unknown_unicast"),
                "\"drop\" needs every MAC of the network known from the cluster: cluster = true and advertise = \"macs\" or \"macs+ips\"; use \"flood\"",
            );
        }
        Some(other) => return err(format!("{at}.unknown_unicast"), format!("{other:?} is neither \"flood\" nor \"drop\"")),
    }
    if let Some(m) = n.mac_move_limit {
        cfg.fdb.move_limit = ranged(&format!("{at}.mac_move_limit"), m, 0, 1_000_000, "moves per window (0 = never pin)")? as u32;
    }
    if let Some(s) = n.mac_move_window_secs {
        let s = ranged(&format!("{at}.mac_move_window_secs"), s, 1, 86_400, "the MAC move window in seconds")?;
        cfg.fdb.move_window = Duration::from_secs(s as u64);
    }
    Ok(cfg)
}

/// This host's name, for `cluster.node_name`'s default.
fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}

/// Whether `s` can be a node name: it becomes one component of an etcd key.
fn valid_node_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) && s != "." && s != ".."
}

fn cluster(c: RawCluster) -> Result<ClusterConfig, ConfigError> {
    if c.endpoints.is_empty() {
        return err("cluster.endpoints", "needs at least one etcd endpoint, e.g. [\"http://192.0.2.10:2379\"]");
    }
    let mut endpoints = Vec::with_capacity(c.endpoints.len());
    let mut https = None;
    for (i, e) in c.endpoints.iter().enumerate() {
        let key = format!("cluster.endpoints[{i}]");
        let e = e.trim();
        let (tls, rest) = match (e.strip_prefix("http://"), e.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return err(key, format!("{e:?} must start with http:// or https://")),
        };
        let hostport = rest.trim_end_matches('/');
        let port_ok = hostport.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok || hostport.contains('/') {
            return err(key, format!("{e:?} must be a scheme, a host and a port, e.g. http://192.0.2.10:2379"));
        }
        if *https.get_or_insert(tls) != tls {
            return err(key, "mixes http:// and https:// endpoints; use one scheme for all");
        }
        endpoints.push(e.trim_end_matches('/').to_string());
    }
    let https = https.unwrap_or(false);
    let prefix = c.prefix.unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.to_string());
    let trimmed = prefix.trim_end_matches('/');
    if !prefix.starts_with('/') || trimmed.is_empty() || trimmed.contains("//") || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return err("cluster.prefix", format!("{prefix:?} must be a key path like \"/overlayd\" (starting with '/', not only '/')"));
    }
    let prefix = trimmed.to_string();
    let node_name = match c.node_name {
        Some(n) => n,
        None => hostname().ok_or_else(|| ConfigError::new("cluster.node_name", "not set, and the hostname cannot be read"))?,
    };
    if !valid_node_name(&node_name) {
        return err("cluster.node_name", format!("{node_name:?} must be 1..=253 letters, digits, '-', '_' or '.'"));
    }
    let ttl = ranged("cluster.lease_ttl_secs", c.lease_ttl_secs.unwrap_or(DEFAULT_LEASE_TTL_SECS as i64), 2, 3600, "the lease TTL in seconds")?;
    let file = |key: &str, p: String| -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(&p);
        if p.is_empty() || path.file_name().is_none() { err(key, format!("{p:?} is not a file path")) } else { Ok(path) }
    };
    let state_file = c.state_file.map(|p| file("cluster.state_file", p)).transpose()?;
    let ca_file = c.ca_file.map(|p| file("cluster.ca_file", p)).transpose()?;
    let cert = c.cert_file.map(|p| file("cluster.cert_file", p)).transpose()?;
    let key = c.key_file.map(|p| file("cluster.key_file", p)).transpose()?;
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => return err("cluster.key_file", "cert_file needs the key_file of its private key"),
        (None, Some(_)) => return err("cluster.cert_file", "key_file needs the cert_file it belongs to"),
    };
    let tls = if https {
        Some(ClusterTls { ca_file, identity })
    } else {
        for (k, set) in [("ca_file", ca_file.is_some()), ("cert_file", identity.is_some())] {
            if set {
                return err(format!("cluster.{k}"), "only applies to https:// endpoints");
            }
        }
        None
    };
    Ok(ClusterConfig { endpoints, prefix, node_name, lease_ttl: Duration::from_secs(ttl as u64), state_file, tls })
}

/// TAPs a network may list; the rest of the port table is for VM connections.
pub const MAX_TAPS: usize = 64;

/// `tap` when the network used the single-TAP shorthand, else `taps[j]`.
fn tap_key(at: &str, j: usize, n: usize) -> String {
    if n == 1 && j == 0 { format!("{at}.tap") } else { format!("{at}.taps[{j}]") }
}

/// Longest path a UNIX socket address holds (sun_path is 108 bytes with the NUL).
const SUN_PATH_MAX: usize = 107;

/// The VM sockets of a network (`vm_socket` for `-netdev stream`, `vm_dgram_socket` for
/// `-netdev dgram`), both with the `vm_socket_*` ownership and mode.
type VmSockets = (Option<VmSocketConfig>, Option<VmSocketConfig>);

fn vm_sockets(at: &str, stream: Option<String>, dgram: Option<String>, owner: Option<RawId>, group: Option<RawId>, mode: Option<RawId>) -> Result<VmSockets, ConfigError> {
    let stream = stream.map(|p| socket_path(&format!("{at}.vm_socket"), p)).transpose()?;
    let dgram = dgram.map(|p| socket_path(&format!("{at}.vm_dgram_socket"), p)).transpose()?;
    if stream.is_none() && dgram.is_none() {
        for (k, v) in [("vm_socket_owner", &owner), ("vm_socket_group", &group), ("vm_socket_mode", &mode)] {
            if v.is_some() {
                return err(format!("{at}.{k}"), "has no effect without vm_socket or vm_dgram_socket");
            }
        }
        return Ok((None, None));
    }
    if stream.is_some() && stream == dgram {
        return err(format!("{at}.vm_dgram_socket"), "must be another file than vm_socket");
    }
    let (owner, group, mode) = socket_perms(at, owner, group, mode)?;
    let mk = |path| VmSocketConfig { path, owner, group, mode };
    Ok((stream.map(mk), dgram.map(mk)))
}

fn socket_path(key: &str, path: String) -> Result<PathBuf, ConfigError> {
    let p = PathBuf::from(&path);
    if !p.is_absolute() || p.file_name().is_none() {
        return err(key, format!("{path:?} must be an absolute path to a socket file"));
    }
    if path.len() > SUN_PATH_MAX {
        return err(key, format!("{path:?} is {} bytes; a UNIX socket path holds at most {SUN_PATH_MAX}", path.len()));
    }
    Ok(p)
}

fn socket_perms(at: &str, owner: Option<RawId>, group: Option<RawId>, mode: Option<RawId>) -> Result<(Option<u32>, Option<u32>, u32), ConfigError> {
    let owner = owner
        .map(|o| {
            let key = format!("{at}.vm_socket_owner");
            match o {
                RawId::Num(n) => ranged(&key, n, 0, i64::from(u32::MAX - 1), "a uid").map(|n| n as u32),
                RawId::Text(name) => match nix::unistd::User::from_name(&name) {
                    Ok(Some(u)) => Ok(u.uid.as_raw()),
                    Ok(None) => name.parse::<u32>().or_else(|_| err(key, format!("no user named {name:?}"))),
                    Err(e) => err(key, format!("cannot look up user {name:?}: {e}")),
                },
            }
        })
        .transpose()?;
    let group = group.map(|g| group_id(&format!("{at}.vm_socket_group"), g)).transpose()?;
    let mode = match mode {
        None => DEFAULT_VM_SOCKET_MODE,
        Some(m) => {
            let key = format!("{at}.vm_socket_mode");
            let v = match m {
                RawId::Num(n) => n,
                RawId::Text(t) => i64::from_str_radix(t.trim().trim_start_matches("0o"), 8)
                    .or_else(|_| err(&key, format!("{t:?} is not an octal mode such as \"0660\"")))?,
            };
            ranged(&key, v, 0, 0o777, "permission bits (0..=0o777)")? as u32
        }
    };
    Ok((owner, group, mode))
}

/// A group given by name or gid (a number that names no group is taken as a gid).
fn group_id(key: &str, g: RawId) -> Result<u32, ConfigError> {
    match g {
        RawId::Num(n) => ranged(key, n, 0, i64::from(u32::MAX - 1), "a gid").map(|n| n as u32),
        RawId::Text(name) => match nix::unistd::Group::from_name(&name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => name.parse::<u32>().or_else(|_| err(key, format!("no group named {name:?}"))),
            Err(e) => err(key, format!("cannot look up group {name:?}: {e}")),
        },
    }
}

/// `[node] user` and `group`: look both up now, so that `overlayd check` reports a user or a
/// group that does not exist, and the switch at start-up needs no lookups.
///
/// A number that is not in the user database is accepted as a uid only with an explicit
/// `group` (there is no primary group to default to) and gets no supplementary groups.
fn run_as(user: Option<RawId>, group: Option<RawId>) -> Result<Option<RunAs>, ConfigError> {
    use nix::unistd::{Gid, Group, Uid, User};
    let Some(user) = user else {
        return match group {
            Some(_) => err("node.group", "only applies together with node.user"),
            None => Ok(None),
        };
    };
    let id = |key: &str, v: i64, what: &str| ranged(key, v, 0, i64::from(u32::MAX - 1), what).map(|n| n as u32);
    let entry = match user {
        RawId::Num(n) => {
            let uid = id("node.user", n, "a uid")?;
            (User::from_uid(Uid::from_raw(uid)).map_err(|e| ConfigError::new("node.user", format!("cannot look up uid {uid}: {e}")))?, uid)
        }
        RawId::Text(name) => match User::from_name(&name) {
            Ok(Some(u)) => {
                let uid = u.uid.as_raw();
                (Some(u), uid)
            }
            Ok(None) => match name.trim().parse::<u32>() {
                Ok(uid) if uid != u32::MAX => (User::from_uid(Uid::from_raw(uid)).ok().flatten(), uid),
                _ => return err("node.user", format!("no such user {name:?}")),
            },
            Err(e) => return err("node.user", format!("cannot look up user {name:?}: {e}")),
        },
    };
    let (user, uid) = entry;
    let (gid, group_name) = match group {
        None => match &user {
            Some(u) => {
                let gid = u.gid.as_raw();
                (gid, Group::from_gid(u.gid).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name))
            }
            None => return err("node.user", format!("uid {uid} is not in the user database, so it has no primary group: set node.group too")),
        },
        Some(RawId::Num(n)) => {
            let gid = id("node.group", n, "a gid")?;
            (gid, Group::from_gid(Gid::from_raw(gid)).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name))
        }
        Some(RawId::Text(name)) => match Group::from_name(&name) {
            Ok(Some(g)) => (g.gid.as_raw(), g.name),
            Ok(None) => match name.trim().parse::<u32>() {
                Ok(gid) if gid != u32::MAX => (gid, name.trim().to_string()),
                _ => return err("node.group", format!("no such group {name:?}")),
            },
            Err(e) => return err("node.group", format!("cannot look up group {name:?}: {e}")),
        },
    };
    let (name, groups) = match user {
        Some(u) => {
            let cname = std::ffi::CString::new(u.name.clone())
                .map_err(|_| ConfigError::new("node.user", format!("{:?} contains a NUL byte", u.name)))?;
            let list = nix::unistd::getgrouplist(&cname, Gid::from_raw(gid))
                .map_err(|e| ConfigError::new("node.user", format!("cannot list the groups of {:?}: {e}", u.name)))?;
            (u.name, list.into_iter().map(|g| g.as_raw()).collect())
        }
        None => (uid.to_string(), Vec::new()),
    };
    Ok(Some(RunAs { user: name, uid, group: group_name, gid, groups }))
}

#[cfg(test)]
mod tests {
    use super::super::from_str_with_env;
    use super::*;

    const GOOD: &str = r#"
        [node]
        underlay = "192.0.2.1"
        [admin]
        socket = "/tmp/x.sock"
        [[networks]]
        name = "blue"
        encap = "vxlan"
        vni = 42
        tap = "ovl-blue"
        address = "198.51.100.1/24"
        peers = ["192.0.2.2", "192.0.2.3"]
    "#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        from_str_with_env(s, Vec::new())
    }

    fn problem(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn good_config_has_the_documented_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.metrics_listen, "127.0.0.1:9477".parse().unwrap());
        let n = &c.networks[0];
        assert_eq!(n.vni.get(), 42);
        assert_eq!(n.vxlan_port, 4789);
        assert_eq!(n.mtu, None);
        assert_eq!(n.fdb, FdbConfig::default());
        assert_eq!(n.address, Some(("198.51.100.1".parse().unwrap(), 24)));
        assert_eq!(n.overhead(c.node.underlay), 50);
        assert!(c.node.offload, "offloads are on unless turned off");
    }

    const CLUSTER: &str = "[cluster]\nendpoints = [\"http://192.0.2.10:2379\"]\nnode_name = \"host7\"\n";

    #[test]
    fn no_cluster_section_means_no_cluster_and_a_clustered_network_needs_one() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.cluster, None);
        assert!(!c.networks[0].cluster);
        let p = problem(&GOOD.replace("vni = 42", "vni = 42\ncluster = true"));
        assert!(p.starts_with("networks[0].cluster: needs a [cluster] section"), "{p}");
    }

    #[test]
    fn cluster_has_the_documented_defaults() {
        let c = parse(&format!("{CLUSTER}{}", GOOD.replace("vni = 42", "vni = 42\ncluster = true"))).unwrap();
        let k = c.cluster.unwrap();
        assert_eq!(k.endpoints, ["http://192.0.2.10:2379"]);
        assert_eq!(k.prefix, "/overlayd");
        assert_eq!(k.node_name, "host7");
        assert_eq!(k.lease_ttl, Duration::from_secs(15));
        assert_eq!((k.state_file, k.tls), (None, None));
        assert!(c.networks[0].cluster);
        // without node_name, the hostname
        let c = parse(&format!("[cluster]\nendpoints = [\"http://192.0.2.10:2379\"]\n{GOOD}")).unwrap();
        assert_eq!(Some(c.cluster.unwrap().node_name), hostname());
    }

    #[test]
    fn cluster_keys_are_validated_naming_the_key() {
        let with = |extra: &str| problem(&format!("{CLUSTER}{extra}\n{GOOD}"));
        let cases = [
            ("lease_ttl_secs = 0", "cluster.lease_ttl_secs: 0 is out of range"),
            ("prefix = \"overlayd\"", "cluster.prefix:"),
            ("state_file = \"\"", "cluster.state_file:"),
            ("ca_file = \"/etc/ca.pem\"", "cluster.ca_file: only applies to https://"),
            ("cert_file = \"/etc/c.pem\"", "cluster.key_file:"),
            ("colour = 1", "colour"),
        ];
        for (extra, want) in cases {
            let p = with(extra);
            assert!(p.contains(want), "{extra}: {p}");
        }
        let p = problem(&format!("{}\n{GOOD}", CLUSTER.replace("\"host7\"", "\"a/b\"")));
        assert!(p.starts_with("cluster.node_name:"), "{p}");
        let p = problem(&format!("{}\n{GOOD}", CLUSTER.replace("http://192.0.2.10:2379", "192.0.2.10")));
        assert!(p.starts_with("cluster.endpoints[0]:"), "{p}");
        let p = problem(&format!("{}\n{GOOD}", CLUSTER.replace("\"http://192.0.2.10:2379\"", "\"http://a:1\", \"https://b:2\"")));
        assert!(p.starts_with("cluster.endpoints[1]: mixes"), "{p}");
        let p = problem(&format!("{}\n{GOOD}", CLUSTER.replace("[\"http://192.0.2.10:2379\"]", "[]")));
        assert!(p.starts_with("cluster.endpoints:"), "{p}");
    }

    #[test]
    fn cluster_keys_come_from_the_environment_too() {
        let env = vec![
            ("OVERLAYD__CLUSTER__ENDPOINTS".to_string(), "https://192.0.2.10:2379,https://192.0.2.11:2379".to_string()),
            ("OVERLAYD__CLUSTER__LEASE_TTL_SECS".to_string(), "6".to_string()),
            ("OVERLAYD__CLUSTER__CA_FILE".to_string(), "/etc/overlayd/ca.pem".to_string()),
        ];
        let k = from_str_with_env(&format!("{CLUSTER}{GOOD}"), env).unwrap().cluster.unwrap();
        assert_eq!(k.endpoints, ["https://192.0.2.10:2379", "https://192.0.2.11:2379"]);
        assert_eq!(k.lease_ttl, Duration::from_secs(6));
        assert_eq!(k.tls, Some(ClusterTls { ca_file: Some("/etc/overlayd/ca.pem".into()), identity: None }));
    }

    #[test]
    fn datapath_defaults_to_auto_is_set_by_file_or_environment_and_bad_values_name_the_key() {
        assert_eq!(parse(GOOD).unwrap().node.datapath, Datapath::Auto);
        let c = parse(&GOOD.replace("underlay = \"192.0.2.1\"", "underlay = \"192.0.2.1\"\ndatapath = \"userspace\"")).unwrap();
        assert_eq!(c.node.datapath, Datapath::Userspace);
        let env = [("OVERLAYD__NODE__DATAPATH".to_string(), "ebpf".to_string())];
        assert_eq!(from_str_with_env(GOOD, env).unwrap().node.datapath, Datapath::Ebpf);
        let p = problem(&GOOD.replace("underlay = \"192.0.2.1\"", "underlay = \"192.0.2.1\"\ndatapath = \"xdp\""));
        assert!(p.starts_with("node.datapath:"), "{p}");
    }

    #[test]
    fn offload_can_be_turned_off_in_the_file_or_the_environment() {
        let c = parse(&GOOD.replace("underlay = \"192.0.2.1\"", "underlay = \"192.0.2.1\"\noffload = false")).unwrap();
        assert!(!c.node.offload);
        let env = vec![("OVERLAYD__NODE__OFFLOAD".to_string(), "false".to_string())];
        assert!(!from_str_with_env(GOOD, env).unwrap().node.offload);
        let p = problem(&GOOD.replace("underlay = \"192.0.2.1\"", "underlay = \"192.0.2.1\"\noffload = \"maybe\""));
        assert!(p.contains("offload"), "{p}");
    }

    #[test]
    fn mss_clamp_is_off_unless_set_in_the_file_or_the_environment() {
        assert!(!parse(GOOD).unwrap().networks[0].mss_clamp);
        let on = GOOD.replace("vni = 42", "vni = 42\nmss_clamp = true");
        assert!(parse(&on).unwrap().networks[0].mss_clamp);
        let env = vec![("OVERLAYD__NETWORKS[0]__MSS_CLAMP".to_string(), "true".to_string())];
        assert!(from_str_with_env(GOOD, env).unwrap().networks[0].mss_clamp);
        let p = problem(&GOOD.replace("vni = 42", "vni = 42\nmss_clamp = \"maybe\""));
        assert!(p.contains("mss_clamp"), "{p}");
    }

    #[test]
    fn environment_overrides_a_key() {
        let env = vec![("OVERLAYD__NODE__UNDERLAY".to_string(), "192.0.2.9".to_string())];
        let c = from_str_with_env(GOOD, env).unwrap();
        assert_eq!(c.node.underlay, "192.0.2.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn unknown_key_is_named() {
        let p = problem(&GOOD.replace("vni = 42", "vni = 42\nvnii = 1"));
        assert!(p.contains("vnii"), "{p}");
    }

    #[test]
    fn missing_key_is_named() {
        let p = problem(&GOOD.replace("vni = 42", ""));
        assert!(p.contains("vni"), "{p}");
    }

    #[test]
    fn out_of_range_vni_names_the_key() {
        let p = problem(&GOOD.replace("vni = 42", "vni = 16777216"));
        assert!(p.starts_with("networks[0].vni:"), "{p}");
    }

    #[test]
    fn peers_of_another_family_are_refused() {
        let p = problem(&GOOD.replace("\"192.0.2.3\"", "\"2001:db8::3\""));
        assert!(p.starts_with("networks[0].peers[1]:") && p.contains("family"), "{p}");
    }

    #[test]
    fn bad_address_names_the_key() {
        assert!(problem(&GOOD.replace("198.51.100.1/24", "198.51.100.1")).starts_with("networks[0].address:"));
        assert!(problem(&GOOD.replace("198.51.100.1/24", "198.51.100.1/33")).starts_with("networks[0].address:"));
        assert!(problem(&GOOD.replace("\"192.0.2.2\"", "\"192.0.2.x\"")).starts_with("networks[0].peers[0]:"));
    }

    #[test]
    fn duplicate_vni_and_tap_are_refused() {
        let twice = format!("{GOOD}\n[[networks]]\nname = \"red\"\nencap = \"vxlan\"\nvni = 42\ntap = \"ovl-red\"\n");
        assert!(problem(&twice).starts_with("networks[1].vni:"));
        let twice = twice.replace("vni = 42\ntap = \"ovl-red\"", "vni = 43\ntap = \"ovl-blue\"");
        assert!(problem(&twice).starts_with("networks[1].tap:"));
    }

    #[test]
    fn arp_suppress_is_off_by_default_set_in_the_file_or_the_environment() {
        let n = &parse(GOOD).unwrap().networks[0];
        assert!(!n.arp_suppress);
        assert_eq!(n.unknown_unicast, UnknownUnicast::Flood);
        let c = parse(&GOOD.replace("vni = 42", "vni = 42\narp_suppress = true\nunknown_unicast = \"flood\"")).unwrap();
        assert!(c.networks[0].arp_suppress);
        let env = vec![("OVERLAYD__NETWORKS__0__ARP_SUPPRESS".to_string(), "true".to_string())];
        assert!(from_str_with_env(GOOD, env).unwrap().networks[0].arp_suppress, "per-network keys from the environment");
        let env = vec![("OVERLAYD__NETWORKS__0__UNKNOWN_UNICAST".to_string(), "drop".to_string())];
        let p = from_str_with_env(GOOD, env).unwrap_err().to_string();
        assert!(p.starts_with("networks[0].unknown_unicast:"), "{p}");
        let p = problem(&GOOD.replace("vni = 42", "vni = 42\narp_suppress = \"maybe\""));
        assert!(p.contains("arp_suppress"), "{p}");
    }

    #[test]
    fn unknown_unicast_drop_is_refused_until_macs_come_from_the_cluster() {
        let p = problem(&GOOD.replace("vni = 42", "vni = 42\nunknown_unicast = \"drop\""));
        assert!(p.starts_with("networks[0].unknown_unicast:") && p.contains("advertise"), "{p}");
        // clustered but advertising nothing: still refused
        let p = problem(&format!("{CLUSTER}{}", GOOD.replace("vni = 42", "vni = 42\ncluster = true\nunknown_unicast = \"drop\"")));
        assert!(p.starts_with("networks[0].unknown_unicast:"), "{p}");
        let c = parse(&format!("{CLUSTER}{}", GOOD.replace("vni = 42", "vni = 42\ncluster = true\nadvertise = \"macs+ips\"\nunknown_unicast = \"drop\""))).unwrap();
        assert_eq!((c.networks[0].advertise, c.networks[0].unknown_unicast), (Advertise::MacsIps, UnknownUnicast::Drop));
        let p = problem(&GOOD.replace("vni = 42", "vni = 42\nunknown_unicast = \"discard\""));
        assert!(p.starts_with("networks[0].unknown_unicast:"), "{p}");
    }

    #[test]
    fn advertise_needs_a_clustered_network_and_names_the_key() {
        assert_eq!(parse(GOOD).unwrap().networks[0].advertise, Advertise::None);
        let p = problem(&GOOD.replace("vni = 42", "vni = 42\nadvertise = \"macs\""));
        assert!(p.starts_with("networks[0].advertise:") && p.contains("cluster = true"), "{p}");
        let p = problem(&format!("{CLUSTER}{}", GOOD.replace("vni = 42", "vni = 42\ncluster = true\nadvertise = \"ips\"")));
        assert!(p.starts_with("networks[0].advertise:"), "{p}");
        let c = parse(&format!("{CLUSTER}{}", GOOD.replace("vni = 42", "vni = 42\ncluster = true\nadvertise = \"macs\""))).unwrap();
        assert_eq!(c.networks[0].advertise, Advertise::Macs);
    }

    #[test]
    fn storm_and_move_damping_keys_have_rfc_defaults_and_name_their_key() {
        let n = &parse(GOOD).unwrap().networks[0];
        assert_eq!(n.bum_pps_limit, None, "storm control is off by default");
        assert_eq!((n.fdb.move_limit, n.fdb.move_window), (5, Duration::from_secs(180)));
        let c = parse(&GOOD.replace("vni = 42", "vni = 42\nbum_pps_limit = 500\nmac_move_limit = 0\nmac_move_window_secs = 60")).unwrap();
        let n = &c.networks[0];
        assert_eq!((n.bum_pps_limit, n.fdb.move_limit, n.fdb.move_window), (Some(500), 0, Duration::from_secs(60)));
        assert!(problem(&GOOD.replace("vni = 42", "vni = 42\nbum_pps_limit = 0")).starts_with("networks[0].bum_pps_limit:"));
        assert!(problem(&GOOD.replace("vni = 42", "vni = 42\nmac_move_limit = -1")).starts_with("networks[0].mac_move_limit:"));
        assert!(problem(&GOOD.replace("vni = 42", "vni = 42\nmac_move_window_secs = 0")).starts_with("networks[0].mac_move_window_secs:"));
    }

    #[test]
    fn long_tap_name_is_refused() {
        assert!(problem(&GOOD.replace("ovl-blue", "a-very-long-tap-name")).starts_with("networks[0].tap:"));
    }

    const GRE: &str = r#"
        [node]
        underlay = "2001:db8::1"
        [[networks]]
        name = "blue"
        encap = "gre"
        vni = 4000000000
        tap = "ovl-blue"
        peers = ["2001:db8::2"]
    "#;

    #[test]
    fn gre_network_defaults_to_key_without_checksum_ttl_64_and_inherited_dscp() {
        let c = parse(GRE).unwrap();
        let n = &c.networks[0];
        assert_eq!(n.encap, Encap::Gre(GreOptions { key: true, checksum: false }));
        assert_eq!(n.vni.get(), 4_000_000_000);
        assert_eq!((n.ttl, n.dscp), (64, Dscp::Inherit));
        // IPv6 (40) + GRE with key (8) + Ethernet (14)
        assert_eq!(n.overhead(c.node.underlay), 62);
    }

    #[test]
    fn overhead_is_the_real_header_size_per_encap_and_family() {
        let v4 = GRE.replace("2001:db8::1", "192.0.2.1").replace("2001:db8::2", "192.0.2.2");
        let cases = [
            (v4.clone(), 42),
            (v4.replace("vni = 4000000000", "vni = 1\nkey = false"), 38),
            (v4.replace("vni = 4000000000", "vni = 1\ngre_checksum = true"), 46),
            (v4.replace("vni = 4000000000", "vni = 1\nkey = false\ngre_checksum = true"), 42),
            (v4.replace("\"gre\"", "\"vxlan\"").replace("4000000000", "1"), 50),
            (GRE.replace("\"gre\"", "\"vxlan\"").replace("4000000000", "1"), 70),
            (GRE.replace("vni = 4000000000", "vni = 1\nkey = false"), 58),
        ];
        for (text, want) in cases {
            let c = parse(&text).unwrap();
            assert_eq!(c.networks[0].overhead(c.node.underlay), want, "{text}");
        }
    }

    #[test]
    fn gre_and_vxlan_options_are_refused_on_the_other_encap() {
        assert!(problem(&GOOD.replace("vni = 42", "vni = 42\nkey = false")).starts_with("networks[0].key:"));
        assert!(problem(&GOOD.replace("vni = 42", "vni = 42\ngre_checksum = true")).starts_with("networks[0].gre_checksum:"));
        assert!(problem(&GOOD.replace("vni = 42", "vni = 42\nttl = 9")).starts_with("networks[0].ttl:"));
        assert!(problem(&GOOD.replace("vni = 42", "vni = 42\ndscp = \"inherit\"")).starts_with("networks[0].dscp:"));
        assert!(problem(&GRE.replace("vni = 4000000000", "vni = 1\nvxlan_port = 4789")).starts_with("networks[0].vxlan_port:"));
    }

    #[test]
    fn ttl_and_dscp_are_validated() {
        let c = parse(&GRE.replace("vni = 4000000000", "vni = 1\nttl = 8\ndscp = 46")).unwrap();
        assert_eq!((c.networks[0].ttl, c.networks[0].dscp), (8, Dscp::Fixed(46)));
        assert!(problem(&GRE.replace("vni = 4000000000", "vni = 1\nttl = 0")).starts_with("networks[0].ttl:"));
        assert!(problem(&GRE.replace("vni = 4000000000", "vni = 1\ndscp = 64")).starts_with("networks[0].dscp:"));
        assert!(problem(&GRE.replace("vni = 4000000000", "vni = 1\ndscp = \"copy\"")).starts_with("networks[0].dscp:"));
    }

    #[test]
    fn gre_keys_and_keyless_networks_must_be_unique() {
        let second = "\n[[networks]]\nname = \"red\"\nencap = \"gre\"\ntap = \"ovl-red\"\npeers = [\"2001:db8::3\"]\n";
        assert!(problem(&format!("{GRE}{second}vni = 4000000000\n")).starts_with("networks[1].vni:"));
        assert!(parse(&format!("{GRE}{second}vni = 7\n")).is_ok());
        let keyless = GRE.replace("vni = 4000000000", "vni = 1\nkey = false");
        assert!(problem(&format!("{keyless}{second}vni = 2\nkey = false\n")).starts_with("networks[1].key:"));
        // the same number as a VXLAN VNI and a GRE key is fine: different wire formats
        let vx = "\n[[networks]]\nname = \"red\"\nencap = \"vxlan\"\ntap = \"ovl-red\"\nvni = 1\n";
        assert!(parse(&format!("{keyless}{vx}")).is_ok());
    }

    #[test]
    fn ipv6_underlay_refuses_ipv4_peers_naming_the_key() {
        let p = problem(&GRE.replace("\"2001:db8::2\"", "\"2001:db8::2\", \"192.0.2.2\""));
        assert!(p.starts_with("networks[0].peers[1]:") && p.contains("family"), "{p}");
    }

    #[test]
    fn taps_list_and_tap_shorthand_give_the_same_ports() {
        let one = parse(GOOD).unwrap();
        assert_eq!(one.networks[0].taps, vec!["ovl-blue".to_string()]);
        let list = parse(&GOOD.replace("tap = \"ovl-blue\"", "taps = [\"ovl-blue\", \"ovl-vm1\"]")).unwrap();
        assert_eq!(list.networks[0].taps, vec!["ovl-blue".to_string(), "ovl-vm1".to_string()]);
        assert_eq!(list.networks[0].vm_socket, None);
    }

    #[test]
    fn tap_and_taps_together_or_no_port_at_all_are_refused() {
        let both = GOOD.replace("tap = \"ovl-blue\"", "tap = \"ovl-blue\"\ntaps = [\"x\"]");
        assert!(problem(&both).starts_with("networks[0].taps:"), "{}", problem(&both));
        let none = GOOD.replace("tap = \"ovl-blue\"", "");
        assert!(problem(&none).contains("needs a local port"), "{}", problem(&none));
        let twice = GOOD.replace("tap = \"ovl-blue\"", "taps = [\"a\", \"b\", \"a\"]");
        assert!(problem(&twice).starts_with("networks[0].taps[2]:"), "{}", problem(&twice));
        let bad = GOOD.replace("tap = \"ovl-blue\"", "taps = [\"a\", \"b/c\"]");
        assert!(problem(&bad).starts_with("networks[0].taps[1]:"), "{}", problem(&bad));
    }

    #[test]
    fn vm_socket_alone_is_a_network_with_its_permissions() {
        let c = parse(&GOOD.replace(
            "tap = \"ovl-blue\"",
            "vm_socket = \"/run/overlayd/blue.sock\"\nvm_socket_owner = 0\nvm_socket_group = \"root\"\nvm_socket_mode = \"0666\"",
        ))
        .unwrap();
        let n = &c.networks[0];
        assert!(n.taps.is_empty());
        assert_eq!(
            n.vm_socket,
            Some(VmSocketConfig { path: "/run/overlayd/blue.sock".into(), owner: Some(0), group: Some(0), mode: 0o666 })
        );
        let c = parse(&GOOD.replace("tap = \"ovl-blue\"", "vm_socket = \"/tmp/b.sock\"\nvm_socket_mode = 0o600")).unwrap();
        assert_eq!(c.networks[0].vm_socket.as_ref().map(|v| (v.mode, v.owner)), Some((0o600, None)));
        let c = parse(&GOOD.replace("tap = \"ovl-blue\"", "vm_socket = \"/tmp/b.sock\"")).unwrap();
        assert_eq!(c.networks[0].vm_socket.as_ref().map(|v| v.mode), Some(DEFAULT_VM_SOCKET_MODE));
    }

    #[test]
    fn bad_vm_socket_settings_name_their_key() {
        let with = |kv: &str| problem(&GOOD.replace("tap = \"ovl-blue\"", &format!("vm_socket = \"/tmp/b.sock\"\n{kv}")));
        assert!(with("vm_socket_mode = \"0999\"").starts_with("networks[0].vm_socket_mode:"));
        assert!(with("vm_socket_mode = 0o1777").starts_with("networks[0].vm_socket_mode:"));
        assert!(with("vm_socket_owner = \"no-such-user-here\"").starts_with("networks[0].vm_socket_owner:"));
        assert!(with("vm_socket_group = \"no-such-group-here\"").starts_with("networks[0].vm_socket_group:"));
        let rel = problem(&GOOD.replace("tap = \"ovl-blue\"", "vm_socket = \"blue.sock\""));
        assert!(rel.starts_with("networks[0].vm_socket:"), "{rel}");
        let long = problem(&GOOD.replace("tap = \"ovl-blue\"", &format!("vm_socket = \"/{}\"", "x".repeat(120))));
        assert!(long.starts_with("networks[0].vm_socket:"), "{long}");
        let stray = problem(&GOOD.replace("tap = \"ovl-blue\"", "tap = \"ovl-blue\"\nvm_socket_mode = \"0600\""));
        assert!(stray.starts_with("networks[0].vm_socket_mode:"), "{stray}");
    }

    #[test]
    fn dgram_socket_shares_the_permissions_and_not_the_file() {
        let c = parse(&GOOD.replace("tap = \"ovl-blue\"", "vm_dgram_socket = \"/tmp/d.sock\"\nvm_socket_mode = \"0600\"")).unwrap();
        let n = &c.networks[0];
        assert_eq!(n.vm_socket, None);
        assert_eq!(n.vm_dgram_socket.as_ref().map(|v| (v.path.clone(), v.mode)), Some(("/tmp/d.sock".into(), 0o600)));
        let same = problem(&GOOD.replace("tap = \"ovl-blue\"", "vm_socket = \"/tmp/d.sock\"\nvm_dgram_socket = \"/tmp/d.sock\""));
        assert!(same.starts_with("networks[0].vm_dgram_socket:"), "{same}");
    }

    #[test]
    fn two_networks_cannot_share_a_vm_socket() {
        let two = format!("{GOOD}vm_socket = \"/tmp/b.sock\"\n[[networks]]\nname = \"red\"\nencap = \"vxlan\"\nvni = 43\nvm_socket = \"/tmp/b.sock\"\n");
        assert!(problem(&two).starts_with("networks[1].vm_socket:"), "{}", problem(&two));
    }

    #[test]
    fn run_as_user_is_off_by_default_and_resolves_names_and_numbers() {
        assert_eq!(parse(GOOD).unwrap().node.run_as, None, "no switch unless configured");
        let with = |kv: &str| parse(&GOOD.replace("underlay = \"192.0.2.1\"", &format!("underlay = \"192.0.2.1\"\n{kv}")));
        let root = with("user = \"root\"").unwrap().node.run_as.unwrap();
        assert_eq!((root.user.as_str(), root.uid, root.group.as_str(), root.gid), ("root", 0, "root", 0));
        assert!(root.groups.contains(&0), "the primary group is one of the groups: {:?}", root.groups);
        assert_eq!(with("user = 0").unwrap().node.run_as, Some(root.clone()), "a uid is looked up like a name");
        let env = vec![("OVERLAYD__NODE__USER".to_string(), "0".to_string())];
        assert_eq!(from_str_with_env(GOOD, env).unwrap().node.run_as, Some(root));
        // an explicit group replaces the primary group
        let g = with("user = \"root\"\ngroup = 4000000").unwrap().node.run_as.unwrap();
        assert_eq!((g.uid, g.gid), (0, 4_000_000));
        assert_eq!(g.groups.first(), Some(&4_000_000), "the group leads the supplementary list: {:?}", g.groups);
        // a uid the user database does not know: only with a group, and no supplementary groups
        let bare = with("user = 4000001\ngroup = 4000000").unwrap().node.run_as.unwrap();
        assert_eq!((bare.user.as_str(), bare.uid, bare.gid, bare.groups.len()), ("4000001", 4_000_001, 4_000_000, 0));
    }

    #[test]
    fn unknown_user_or_group_names_the_key() {
        let with = |kv: &str| problem(&GOOD.replace("underlay = \"192.0.2.1\"", &format!("underlay = \"192.0.2.1\"\n{kv}")));
        let p = with("user = \"no-such-user-here\"");
        assert_eq!(p, "node.user: no such user \"no-such-user-here\"");
        let p = with("user = \"root\"\ngroup = \"no-such-group-here\"");
        assert_eq!(p, "node.group: no such group \"no-such-group-here\"");
        assert!(with("user = -1").starts_with("node.user:"));
        assert!(with("user = \"root\"\ngroup = 4294967295").starts_with("node.group:"));
        let p = with("user = 4000001");
        assert!(p.starts_with("node.user:") && p.contains("node.group"), "{p}");
        assert!(with("group = \"root\"").starts_with("node.group:"));
    }

    #[test]
    fn admin_group_by_name_or_gid_and_a_bad_one_named() {
        let with = |kv: &str| parse(&GOOD.replace("socket = \"/tmp/x.sock\"", &format!("socket = \"/tmp/x.sock\"\n{kv}")));
        assert_eq!(parse(GOOD).unwrap().admin_group, None, "the socket is the daemon user's alone by default");
        assert_eq!(with("group = \"root\"").unwrap().admin_group, Some(0));
        assert_eq!(with("group = 4000000").unwrap().admin_group, Some(4_000_000));
        assert_eq!(with("group = \"no-such-group-here\"").unwrap_err().to_string(), "admin.group: no group named \"no-such-group-here\"");
        assert!(with("group = -1").unwrap_err().to_string().starts_with("admin.group:"));
        assert!(with("mode = \"0666\"").unwrap_err().to_string().contains("mode"), "unknown keys are refused");
    }

    #[test]
    fn unsupported_encap_is_refused() {
        assert!(problem(&GOOD.replace("\"vxlan\"", "\"geneve\"")).starts_with("networks[0].encap:"));
    }
}
