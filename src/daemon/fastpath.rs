//! The eBPF fast path (`[node] datapath = "auto" | "ebpf"`): TC programs that carry known
//! unicast between TAP ports and VXLAN peers inside the kernel (see `src/bpf/fastpath.bpf.c`).
//!
//! The switch stays the daemon's. A sync thread mirrors every running VXLAN network into the
//! programs' maps every [`SYNC_EVERY`]: its TAPs (and attaches the TAP program to new ones),
//! its peers, and the live rows of its FDB, writing only what changed. Frames whose source MAC
//! is not in the mirror at that ingress pass on to the userspace path, which learns them; the
//! next sync then lets their flow take the fast path. Every [`REFRESH_EVERY`] the sync reads
//! the per-entry time the programs last forwarded a frame from a MAC and refreshes that MAC in
//! the FDB, so ageing, eviction, moves, pins and flushes stay the FDB's. The programs' per-CPU
//! counters are folded into the networks' counters at every sync and before every sample.
//!
//! Loader: aya (pure Rust, no libbpf C build). Programs attach with TCX links, which the kernel
//! removes with the last file descriptor: a clean stop, a killed daemon and a removed network
//! all leave nothing on the devices.
// the maps' key and value types are `Pod` (an unsafe trait), and finding the underlay device
// walks getifaddrs(3)
#![allow(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use aya::Ebpf;

use crate::core::stats::{NetSnapshot, PeerSnapshot};
use crate::core::wire::ethernet::MacAddr;
use crate::core::{Encap, LocalPort, Network, PeerIdx, Port};
use crate::io::clock;

use super::netio::{LocalIo, SharedFabric};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

pub const SYNC_EVERY: Duration = Duration::from_millis(50);
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
const MAX_NETS: u32 = 64;
const STRIDE: u32 = 256;
pub const MAX_PEERS: usize = 63;
const KIND_LOCAL: u8 = 1;
const KIND_PEER: u8 = 2;
/// Most UDP source ports the programs choose from (`SOURCE_PORTS` in the C source).
pub const SOURCE_PORTS: usize = 16;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FdbKey {
    pub net: u32,
    pub mac: [u8; 6],
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdbVal {
    pub kind: u8,
    pub pad: u8,
    pub idx: u16,
    pub ifindex: u32,
    /// The peer's underlay address (see [`addr16`]).
    pub daddr: [u8; 16],
    pub dport: u16,
    /// `PEER_TAKES_OFFLOADS` for a peer that takes GSO super-packets and partial checksums,
    /// `PEER_ZERO_CSUM6` for one that takes a zero UDP checksum over IPv6.
    pub flags: u16,
    pub pad2: u32,
    pub seen_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapCfg {
    pub net: u32,
    pub lport: u16,
    pub mtu: u16,
    pub vni: u32,
    pub underlay_ifindex: u32,
    pub saddr: [u8; 16],
    /// 4 or 6: the underlay's family.
    pub family: u16,
    pub nports: u16,
    /// The userspace path's UDP source ports, in its order: a flow takes
    /// `sports[flow_hash % nports]` on both paths.
    pub sports: [u16; SOURCE_PORTS],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub vni: u32,
    pub saddr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerVal {
    pub net: u32,
    pub idx: u16,
    pub dport: u16,
    pub daddr: [u8; 16],
    pub mtu: u16,
    pub pad: u16,
}

// SAFETY: plain `repr(C)` integers without padding holes the kernel could leak into
unsafe impl aya::Pod for FdbKey {}
unsafe impl aya::Pod for FdbVal {}
unsafe impl aya::Pod for TapCfg {}
unsafe impl aya::Pod for PeerKey {}
unsafe impl aya::Pod for PeerVal {}

/// An underlay address as the programs keep it: IPv4 in the first 4 bytes (the rest zero), or
/// IPv6; network order.
fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// `FdbVal::flags`: the peer takes GSO super-packets and inner checksums left partial.
const PEER_TAKES_OFFLOADS: u16 = 1;
/// `FdbVal::flags`: the peer takes VXLAN over IPv6 with a zero UDP checksum (an overlayd that
/// says so in its keepalives); needed for super-frames over IPv6, see the C source.
const PEER_ZERO_CSUM6: u16 = 2;

/// The mirror value of an FDB row, if the fast path can forward to that port.
fn fdb_val(net: &Network, port: Port, taps: &HashMap<LocalPort, u32>) -> Option<FdbVal> {
    match port {
        Port::Local(l) => taps.get(&l).map(|&ifindex| FdbVal { kind: KIND_LOCAL, idx: l.0, ifindex, ..Default::default() }),
        Port::Peer(p) if usize::from(p.0) < MAX_PEERS => {
            let peer = net.peers.get(usize::from(p.0))?;
            let a = peer.addr;
            // the same judgement as the userspace path's UDP GSO (Liveness::takes_gso)
            let mut flags = if peer.liveness.takes_gso() { PEER_TAKES_OFFLOADS } else { 0 };
            if peer.liveness.takes_zero_csum6() {
                flags |= PEER_ZERO_CSUM6;
            }
            Some(FdbVal { kind: KIND_PEER, idx: p.0, daddr: addr16(a.ip()), dport: a.port().to_be(), flags, ..Default::default() })
        }
        Port::Peer(_) => None,
    }
}

/// Why the fast path cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no interface holds the underlay address {0}")]
    NoUnderlayDevice(IpAddr),
    #[error("loading the BPF object failed: {0}")]
    Load(String),
    #[error("the kernel refused program {prog}: {error}{log}")]
    Program { prog: &'static str, error: String, log: String },
    #[error("attaching {prog} to {dev} failed: {error}")]
    Attach { prog: &'static str, dev: String, error: String },
}

#[allow(clippy::wildcard_enum_match_arm, reason = "aya's errors other than the verifier's are reported as they stand")]
fn program_error(prog: &'static str, e: ProgramError) -> Unavailable {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let text = verifier_log.to_string();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
            Unavailable::Program { prog, error: io_error.to_string(), log: if tail.is_empty() { String::new() } else { format!("; verifier's last lines:\n  {tail}") } }
        }
        e => Unavailable::Program { prog, error: e.to_string(), log: String::new() },
    }
}

/// The interface holding `addr`, by index and name.
fn device_of(addr: IpAddr) -> Option<(u32, String)> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below with freeifaddrs
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs returned
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: an AF_INET ifa_addr is a sockaddr_in
        let fam = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let ip = match fam {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        if ip == addr {
            // SAFETY: ifa_name is a NUL-terminated string of the list
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
            found = Some(name);
            break;
        }
    }
    // SAFETY: the list getifaddrs returned
    unsafe { libc::freeifaddrs(ifap) };
    let name = found?;
    let index = ifindex(&name)?;
    Some((index, name))
}

fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid C string
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// What the fast path knows about one network.
#[derive(Debug, Default)]
struct NetState {
    id: u32,
    /// The FDB rows as last written to the map.
    mirror: HashMap<MacAddr, FdbVal>,
    /// The programs' last-seen time of each mirrored MAC, as last read.
    seen: HashMap<MacAddr, u64>,
    peers: Vec<PeerKey>,
    taps: Vec<u32>,
    /// The STATS slots as last folded (sums over CPUs).
    folded: Vec<u64>,
    /// Frames the programs carried: [from TAPs, tunnel packets received].
    frames_fast: [u64; 2],
    /// The network's I/O (its `NetIo`, by address): a reload that restarts the network opens
    /// new ones, an update in place keeps them.
    io: usize,
}

struct State {
    ebpf: Ebpf,
    fdb: BpfHashMap<MapData, FdbKey, FdbVal>,
    taps: BpfHashMap<MapData, u32, TapCfg>,
    peers: BpfHashMap<MapData, PeerKey, PeerVal>,
    stats: PerCpuArray<MapData, u64>,
    underlay_ifindex: u32,
    underlay_dev: String,
    /// The TCX link of the underlay's program, while a network uses it.
    underlay_link: Option<aya::programs::tc::SchedClassifierLinkId>,
    saddr: IpAddr,
    /// The userspace path's UDP source ports (`TxSockets::ports`), at most [`SOURCE_PORTS`].
    sports: [u16; SOURCE_PORTS],
    nports: u16,
    nets: BTreeMap<String, NetState>,
    /// TAP ifindex -> the TCX link of its program.
    links: HashMap<u32, aya::programs::tc::SchedClassifierLinkId>,
    /// Networks logged as staying on the userspace path.
    slow_nets: std::collections::BTreeSet<String>,
    last_refresh: std::time::Instant,
}

/// The loaded and attached fast path, and its sync thread.
pub struct FastPath {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub underlay_dev: String,
}

/// One network's fast-path facts, for `overlayd_datapath_info` and `overlayd stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetFast {
    /// Frames the programs carried: [TAP -> peer or TAP, peer -> TAP].
    pub frames: [u64; 2],
}

impl FastPath {
    /// Load the programs, attach the underlay one, and mirror `fabric` once (attaching the TAP
    /// program to every TAP of a VXLAN network). `source_ports` are the userspace path's UDP
    /// source ports, in its order: the programs send each flow from the same one. The error
    /// says why it cannot be used.
    pub fn start(underlay: IpAddr, source_ports: &[u16], fabric: SharedFabric) -> Result<FastPath, Unavailable> {
        let saddr = underlay;
        let mut sports = [0u16; SOURCE_PORTS];
        let nports = source_ports.len().min(SOURCE_PORTS);
        sports[..nports].copy_from_slice(&source_ports[..nports]);
        let (underlay_ifindex, underlay_dev) = device_of(underlay).ok_or(Unavailable::NoUnderlayDevice(underlay))?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| Unavailable::Load(e.to_string()))?;
        for prog in ["tap_egress", "underlay_ingress"] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(prog)
                .ok_or_else(|| Unavailable::Load(format!("no program {prog} in the object")))?
                .try_into()
                .map_err(|e: ProgramError| Unavailable::Load(e.to_string()))?;
            p.load().map_err(|e| program_error(prog, e))?;
        }
        let map = |ebpf: &mut Ebpf, name: &str| ebpf.take_map(name).ok_or_else(|| Unavailable::Load(format!("no map {name} in the object")));
        let fdb = BpfHashMap::try_from(map(&mut ebpf, "FDB")?).map_err(|e| Unavailable::Load(e.to_string()))?;
        let taps = BpfHashMap::try_from(map(&mut ebpf, "TAPS")?).map_err(|e| Unavailable::Load(e.to_string()))?;
        let peers = BpfHashMap::try_from(map(&mut ebpf, "PEERS")?).map_err(|e| Unavailable::Load(e.to_string()))?;
        let stats = PerCpuArray::try_from(map(&mut ebpf, "STATS")?).map_err(|e| Unavailable::Load(e.to_string()))?;
        // attached here whatever the networks, so that a kernel that refuses it is known at start;
        // the sync detaches it while no network uses it
        let underlay_link = {
            let p: &mut SchedClassifier = ebpf.program_mut("underlay_ingress").and_then(|p| p.try_into().ok()).ok_or_else(|| Unavailable::Load("underlay_ingress".into()))?;
            p.attach(&underlay_dev, TcAttachType::Ingress).map_err(|e| Unavailable::Attach {
                prog: "underlay_ingress",
                dev: underlay_dev.clone(),
                error: e.to_string(),
            })?
        };
        let mut st = State {
            ebpf,
            fdb,
            taps,
            peers,
            stats,
            underlay_ifindex,
            underlay_dev: underlay_dev.clone(),
            underlay_link: Some(underlay_link),
            saddr,
            sports,
            nports: nports as u16,
            nets: BTreeMap::new(),
            links: HashMap::new(),
            slow_nets: Default::default(),
            last_refresh: clock::monotonic(),
        };
        st.sync(&fabric, true)?;
        let state = Arc::new(Mutex::new(st));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (state.clone(), stop.clone());
        // capabilities are per thread: this one keeps CAP_NET_ADMIN (attaching to a TAP a
        // reload adds) and drops the rest before it runs, like the data-path threads
        let (dropped, wait) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("fastpath-sync".into())
            .spawn(move || {
                super::privs::drop_in_thread();
                let _ = dropped.send(());
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(SYNC_EVERY);
                    let mut st = match s2.lock() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    if let Err(e) = st.sync(&fabric, false) {
                        tracing::warn!(error = %e, "fast path: sync failed");
                    }
                }
            })
            .map_err(|e| Unavailable::Load(format!("spawn sync thread: {e}")))?;
        let _ = wait.recv();
        Ok(FastPath { state, stop, thread: Some(thread), underlay_dev })
    }

    /// Mirror the running networks now, not at the next tick: when this returns, the programs
    /// act on what was just published (a reload's `mss_clamp`, a removed peer, a new TAP).
    pub fn sync_now(&self, fabric: &SharedFabric) {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Err(e) = st.sync(fabric, false) {
            tracing::warn!(error = %e, "fast path: sync failed");
        }
    }

    /// Fold the programs' counters into the networks' now (before a sample).
    pub fn fold(&self, fabric: &SharedFabric) {
        if let Ok(mut st) = self.state.lock() {
            let f = fabric.load();
            for e in &f.networks {
                st.fold_net(&e.net);
            }
        }
    }

    /// Per network (by name): what the fast path carried; networks it does not serve are absent.
    pub fn served(&self) -> BTreeMap<String, NetFast> {
        match self.state.lock() {
            Ok(st) => st.nets.iter().map(|(n, s)| (n.clone(), NetFast { frames: s.frames_fast })).collect(),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Stop syncing, detach every program and free the maps.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(m) = Arc::try_unwrap(self.state) {
            let st = m.into_inner().unwrap_or_else(|p| p.into_inner());
            let n = st.links.len();
            drop(st); // the links' fds close: the kernel detaches the programs
            tracing::info!(taps = n, "fast path: programs detached");
        }
    }
}

impl State {
    fn alloc_id(&self) -> Option<u32> {
        (0..MAX_NETS).find(|id| !self.nets.values().any(|s| s.id == *id))
    }

    /// Mirror the running networks into the maps; attach to new TAPs, forget removed ones.
    fn sync(&mut self, fabric: &SharedFabric, first: bool) -> Result<(), Unavailable> {
        let f = fabric.load();
        let now = clock::now();
        let refresh = first || self.last_refresh.elapsed() >= REFRESH_EVERY;
        if refresh {
            self.last_refresh = clock::monotonic();
        }
        let mut live_taps: Vec<u32> = Vec::new();
        let mut live_nets: Vec<String> = Vec::new();
        for e in &f.networks {
            let net = &e.net;
            if net.spec.encap != Encap::Vxlan {
                if self.slow_nets.insert(net.name().to_string()) {
                    tracing::info!(network = net.name(), "fast path: a GRE network stays on the userspace path (the fast path carries VXLAN only)");
                }
                continue;
            }
            // the programs do not rewrite TCP options: every SYN must pass the userspace clamp
            if net.spec.mss_clamp {
                if self.slow_nets.insert(net.name().to_string()) {
                    tracing::info!(network = net.name(), "fast path: a network with mss_clamp stays on the userspace path (every TCP SYN must be clamped there)");
                }
                continue;
            }
            let name = net.name().to_string();
            let io = Arc::as_ptr(&e.io) as usize;
            if self.nets.get(&name).is_some_and(|st| st.io != io) {
                // restarted by a reload: new TAPs, table, peers and counters; start afresh
                self.forget(&name);
                tracing::info!(network = name, "fast path: network restarted; its programs are detached and attached anew");
            }
            if !self.nets.contains_key(&name) {
                let Some(id) = self.alloc_id() else { continue };
                self.nets.insert(name.clone(), NetState { id, folded: vec![0; STRIDE as usize], io, ..Default::default() });
                tracing::info!(network = name, "fast path: known unicast of this network is forwarded by eBPF at TC");
                self.slow_nets.remove(&name);
            }
            live_nets.push(name.clone());
            let id = self.nets[&name].id;
            let vni = net.spec.vni.get();
            // its TAPs
            let mut tap_of: HashMap<LocalPort, u32> = HashMap::new();
            let ports = e.io.ports.load();
            for (lport, io) in ports.iter() {
                let LocalIo::Tap(tap) = io else { continue };
                let Some(ix) = ifindex(tap.name()) else { continue };
                let cfg = TapCfg {
                    net: id,
                    lport: lport.0,
                    mtu: net.spec.mtu,
                    vni,
                    underlay_ifindex: self.underlay_ifindex,
                    saddr: addr16(self.saddr),
                    family: if self.saddr.is_ipv4() { 4 } else { 6 },
                    nports: self.nports,
                    sports: self.sports,
                };
                if self.taps.get(&ix, 0).ok() != Some(cfg) {
                    let _ = self.taps.insert(ix, cfg, 0);
                }
                if !self.links.contains_key(&ix) {
                    let p: &mut SchedClassifier = self.ebpf.program_mut("tap_egress").and_then(|p| p.try_into().ok()).ok_or_else(|| Unavailable::Load("tap_egress".into()))?;
                    match p.attach(tap.name(), TcAttachType::Egress) {
                        Ok(link) => {
                            self.links.insert(ix, link);
                        }
                        Err(err) if first => return Err(Unavailable::Attach { prog: "tap_egress", dev: tap.name().into(), error: err.to_string() }),
                        Err(err) => tracing::warn!(tap = tap.name(), error = %err, "fast path: attaching to the TAP failed; it stays on the userspace path"),
                    }
                }
                tap_of.insert(lport, ix);
                live_taps.push(ix);
            }
            // its peers
            let mut peer_keys = Vec::new();
            for (i, p) in net.peers.iter().enumerate().take(MAX_PEERS) {
                let a: SocketAddr = p.addr;
                if a.is_ipv4() != self.saddr.is_ipv4() {
                    continue;
                }
                let k = PeerKey { vni, saddr: addr16(a.ip()) };
                let v = PeerVal { net: id, idx: i as u16, dport: a.port().to_be(), daddr: addr16(self.saddr), mtu: net.spec.mtu, pad: 0 };
                if self.peers.get(&k, 0).ok() != Some(v) {
                    let _ = self.peers.insert(k, v, 0);
                }
                peer_keys.push(k);
            }
            let st = self.nets.get_mut(&name).expect("inserted above");
            for k in st.peers.iter().filter(|k| !peer_keys.contains(k)) {
                let _ = self.peers.remove(k);
            }
            st.peers = peer_keys;
            st.taps = tap_of.values().copied().collect();
            // its MAC table
            let rows = net.fdb.entries(now);
            let mut want: HashMap<MacAddr, FdbVal> = HashMap::with_capacity(rows.len());
            for r in &rows {
                if let Some(v) = fdb_val(net, r.port, &tap_of) {
                    want.insert(r.mac, v);
                }
            }
            for (mac, v) in &want {
                let k = FdbKey { net: id, mac: mac.0, pad: 0 };
                if st.mirror.get(mac) != Some(v) {
                    let _ = self.fdb.insert(k, v, 0);
                    st.seen.remove(mac);
                }
            }
            for mac in st.mirror.keys().filter(|m| !want.contains_key(m)) {
                let _ = self.fdb.remove(&FdbKey { net: id, mac: mac.0, pad: 0 });
                st.seen.remove(mac);
            }
            st.mirror = want;
            if refresh {
                // the programs' last-seen times: a MAC they forwarded from is refreshed
                for (mac, v) in &st.mirror {
                    let Ok(cur) = self.fdb.get(&FdbKey { net: id, mac: mac.0, pad: 0 }, 0) else { continue };
                    let before = st.seen.insert(*mac, cur.seen_ns).unwrap_or(0);
                    if cur.seen_ns != 0 && cur.seen_ns != before {
                        let port = if v.kind == KIND_LOCAL { Port::Local(LocalPort(v.idx)) } else { Port::Peer(PeerIdx(v.idx)) };
                        net.fdb.learn(*mac, port, now);
                    }
                }
            }
        }
        // networks gone (removed, restarted by a reload, GRE now)
        let gone: Vec<String> = self.nets.keys().filter(|n| !live_nets.contains(n)).cloned().collect();
        for name in gone {
            self.forget(&name);
            tracing::info!(network = name, "fast path: network no longer served");
        }
        // TAPs gone: detach (a deleted device took its link along already)
        let stale: Vec<u32> = self.links.keys().filter(|ix| !live_taps.contains(ix)).copied().collect();
        for ix in stale {
            self.detach_tap(ix);
        }
        // the underlay's program, while a network uses it
        if live_nets.is_empty() {
            if let Some(link) = self.underlay_link.take() {
                if let Some(p) = self.ebpf.program_mut("underlay_ingress").and_then(|p| TryInto::<&mut SchedClassifier>::try_into(p).ok()) {
                    let _ = p.detach(link);
                }
                tracing::info!(device = self.underlay_dev, "fast path: no network uses it; detached from the underlay device");
            }
        } else if self.underlay_link.is_none() {
            let p: &mut SchedClassifier =
                self.ebpf.program_mut("underlay_ingress").and_then(|p| p.try_into().ok()).ok_or_else(|| Unavailable::Load("underlay_ingress".into()))?;
            match p.attach(&self.underlay_dev, TcAttachType::Ingress) {
                Ok(link) => {
                    self.underlay_link = Some(link);
                    tracing::info!(device = self.underlay_dev, "fast path: attached to the underlay device again");
                }
                Err(err) => tracing::warn!(device = self.underlay_dev, error = %err, "fast path: attaching to the underlay device failed; received VXLAN goes through the userspace path"),
            }
        }
        for e in &f.networks {
            self.fold_net(&e.net);
        }
        Ok(())
    }

    /// Forget network `name`: its mirror rows, peers and TAPs leave the maps, its TAPs' programs
    /// are detached, its counters zeroed.
    fn forget(&mut self, name: &str) {
        if let Some(st) = self.nets.remove(name) {
            for mac in st.mirror.keys() {
                let _ = self.fdb.remove(&FdbKey { net: st.id, mac: mac.0, pad: 0 });
            }
            for k in &st.peers {
                let _ = self.peers.remove(k);
            }
            for ix in &st.taps {
                self.detach_tap(*ix);
            }
            self.zero_stats(st.id);
        }
    }

    /// Detach the program from TAP `ix` and drop its configuration.
    fn detach_tap(&mut self, ix: u32) {
        if let (Some(link), Some(p)) =
            (self.links.remove(&ix), self.ebpf.program_mut("tap_egress").and_then(|p| TryInto::<&mut SchedClassifier>::try_into(p).ok()))
        {
            let _ = p.detach(link);
        }
        let _ = self.taps.remove(&ix);
    }

    fn zero_stats(&mut self, id: u32) {
        let ncpu = aya::util::nr_cpus().unwrap_or(1);
        for slot in 0..STRIDE {
            if let Ok(v) = PerCpuValues::try_from(vec![0u64; ncpu]) {
                let _ = self.stats.set(id * STRIDE + slot, v, 0);
            }
        }
    }

    /// Add what the programs counted for `net` since the last fold to its counters.
    fn fold_net(&mut self, net: &Network) {
        let Some(st) = self.nets.get_mut(net.name()) else { return };
        let peers = net.peers.len().min(MAX_PEERS);
        let used = 4 + 4 * peers as u32;
        let mut cur = vec![0u64; STRIDE as usize];
        for slot in 0..used {
            if let Ok(v) = self.stats.get(&(st.id * STRIDE + slot), 0) {
                cur[slot as usize] = v.iter().copied().fold(0u64, u64::wrapping_add);
            }
        }
        let d = |i: usize| cur[i].wrapping_sub(st.folded[i]);
        let snap = NetSnapshot {
            tap_rx_frames: d(0),
            tap_rx_bytes: d(1),
            tap_tx_frames: d(2),
            tap_tx_bytes: d(3),
            peers: (0..peers)
                .map(|p| PeerSnapshot { tx_packets: d(4 + 4 * p), tx_bytes: d(5 + 4 * p), rx_packets: d(6 + 4 * p), rx_bytes: d(7 + 4 * p) })
                .collect(),
            ..Default::default()
        };
        // a peer the programs received from is alive, as a packet the socket got would say
        let ms = clock::now().as_millis().max(1);
        for (p, s) in net.peers.iter().zip(&snap.peers) {
            if s.rx_packets != 0 {
                p.last_seen.store(ms, std::sync::atomic::Ordering::Relaxed);
            }
        }
        st.frames_fast[0] = st.frames_fast[0].wrapping_add(snap.tap_rx_frames);
        st.frames_fast[1] = st.frames_fast[1].wrapping_add(snap.peers.iter().map(|p| p.rx_packets).sum::<u64>());
        let map: Vec<Option<usize>> = (0..peers).map(Some).collect();
        net.stats.absorb(&snap, &map);
        st.folded = cur;
    }
}

/// The fast path against the sans-IO core: the programs run with `BPF_PROG_TEST_RUN` on the
/// fuzz corpus's frames and on lab-like frames, over the same table as `Network::from_local` /
/// `from_peer`, and may only ever take a decision the core takes too (forward to that peer, to
/// a local port); everything else they must pass on untouched. Needs root (CAP_BPF): it fails,
/// naming that, where the programs cannot be loaded.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testutil::{frame, spec};
    use crate::core::{Action, Instant};
    use aya::programs::{TestRun, TestRunOptions};
    use std::net::SocketAddr;

    const TC_ACT_OK: u32 = 0;
    const TC_ACT_REDIRECT: u32 = 7;
    /// `struct __sk_buff`: 192 bytes, `ifindex` at 40.
    const SKB_LEN: usize = 192;
    const LO: u32 = 1; // the test TAP: test runs need a real device, loopback is one
    const TAP1_IFINDEX: u32 = 77;
    /// The userspace path's source ports, as `TxSockets::ports` gives them.
    const SPORTS: [u16; SOURCE_PORTS] =
        [40001, 40017, 40100, 41000, 42000, 43210, 44444, 45000, 46000, 47000, 48000, 49000, 50000, 51000, 52000, 53000];

    /// The underlay: ours, then the peers' addresses.
    fn underlay(v6: bool) -> (IpAddr, [IpAddr; 2]) {
        if v6 {
            let a = |n: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
            (a(1), [a(2), a(3)])
        } else {
            let a = |n: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n));
            (a(1), [a(2), a(3)])
        }
    }

    struct Progs {
        ebpf: Ebpf,
        v6: bool,
        fdb: BpfHashMap<MapData, FdbKey, FdbVal>,
        _taps: BpfHashMap<MapData, u32, TapCfg>,
        _peers: BpfHashMap<MapData, PeerKey, PeerVal>,
    }

    fn load() -> Progs {
        load_family(false)
    }

    fn load_family(v6: bool) -> Progs {
        let (us, peers_at) = underlay(v6);
        let mut ebpf = Ebpf::load(OBJECT).expect("the BPF object parses");
        for prog in ["tap_egress", "underlay_ingress"] {
            let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into().unwrap();
            if let Err(e) = p.load() {
                panic!("loading {prog} failed (this test needs root: CAP_BPF and CAP_NET_ADMIN): {}", program_error(prog, e));
            }
        }
        let fdb = BpfHashMap::try_from(ebpf.take_map("FDB").unwrap()).unwrap();
        let mut taps = BpfHashMap::try_from(ebpf.take_map("TAPS").unwrap()).unwrap();
        let mut peers = BpfHashMap::try_from(ebpf.take_map("PEERS").unwrap()).unwrap();
        let cfg = TapCfg {
            net: 0,
            lport: 0,
            mtu: 1450,
            vni: 42,
            underlay_ifindex: 99,
            saddr: addr16(us),
            family: if v6 { 6 } else { 4 },
            nports: SOURCE_PORTS as u16,
            sports: SPORTS,
        };
        taps.insert(LO, cfg, 0).unwrap();
        for (i, p) in peers_at.iter().enumerate() {
            let v = PeerVal { net: 0, idx: i as u16, dport: 4789u16.to_be(), daddr: addr16(us), mtu: 1450, pad: 0 };
            peers.insert(PeerKey { vni: 42, saddr: addr16(*p) }, v, 0).unwrap();
        }
        Progs { ebpf, v6, fdb, _taps: taps, _peers: peers }
    }

    /// Two TAPs and two peers that run this overlayd (they take offloads, and zero UDP
    /// checksums over IPv6).
    fn network_of(v6: bool) -> Network {
        let net = Network::new(spec(2, underlay(v6).1.iter().map(|p| SocketAddr::new(*p, 4789)).collect()));
        for p in &net.peers {
            p.liveness.keepalive_seen();
            p.liveness.keepalive_version_seen(2);
        }
        net
    }

    fn network() -> Network {
        network_of(false)
    }

    /// Mirror `net`'s table into the map as the sync thread does (local port 0 is the test
    /// TAP, local port 1 another TAP); returns the keys written.
    fn mirror(p: &mut Progs, net: &Network, now: Instant) -> Vec<FdbKey> {
        let taps: HashMap<LocalPort, u32> = [(LocalPort(0), LO), (LocalPort(1), TAP1_IFINDEX)].into();
        let mut keys = Vec::new();
        for r in net.fdb.entries(now) {
            if let Some(v) = fdb_val(net, r.port, &taps) {
                let k = FdbKey { net: 0, mac: r.mac.0, pad: 0 };
                p.fdb.insert(k, v, 0).unwrap();
                keys.push(k);
            }
        }
        keys
    }

    /// BPF_PROG_TEST_RUN of `prog` on `data` (the test TAP as the skb's device): its verdict
    /// and packet.
    fn test_run(p: &Progs, prog: &str, data: &[u8]) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let sc: &SchedClassifier = p.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut ctx = [0u8; SKB_LEN];
        ctx[40..44].copy_from_slice(&LO.to_ne_bytes());
        let mut out = vec![0u8; data.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(data);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let r = sc.test_run(opts)?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// The program's verdict and packet, or `None` where BPF_PROG_TEST_RUN itself refuses the
    /// input (an IPv4/IPv6 ethertype without a whole IP header: the kernel checks that first).
    fn try_run(p: &Progs, prog: &str, data: &[u8]) -> Option<(u32, Vec<u8>)> {
        test_run(p, prog, data).ok()
    }

    fn run(p: &Progs, prog: &str, data: &[u8]) -> (u32, Vec<u8>) {
        test_run(p, prog, data).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {prog} on {} bytes: {e}", data.len()))
    }

    /// `inner` in VXLAN (VNI 42, port 4789) from `peer` to our underlay address, over its family.
    fn vxlan(peer: IpAddr, inner: &[u8]) -> Vec<u8> {
        let (us, _) = underlay(peer.is_ipv6());
        let (IpAddr::V6(peer), IpAddr::V6(us)) = (peer, us) else {
            let (IpAddr::V4(peer), IpAddr::V4(us)) = (peer, us) else { unreachable!() };
            return vxlan4(peer, us, inner);
        };
        let mut o = vec![0u8; 70];
        o[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let udp_len = (8 + 8 + inner.len()) as u16;
        o[14] = 0x60;
        o[18..20].copy_from_slice(&udp_len.to_be_bytes());
        o[20] = 17;
        o[21] = 64;
        o[22..38].copy_from_slice(&peer.octets());
        o[38..54].copy_from_slice(&us.octets());
        o[54..56].copy_from_slice(&40000u16.to_be_bytes());
        o[56..58].copy_from_slice(&4789u16.to_be_bytes());
        o[58..60].copy_from_slice(&udp_len.to_be_bytes());
        // UDP checksum 0: test runs hand over an skb whose checksum nobody verified, which the
        // program leaves to the socket (as over IPv4); a zero one it takes (RFC 6935)
        o[62] = 0x08;
        o[66..69].copy_from_slice(&[0, 0, 42]);
        o.extend_from_slice(inner);
        o
    }

    fn vxlan4(peer: Ipv4Addr, us: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
        let mut o = vec![0u8; 50];
        o[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (20 + 8 + 8 + inner.len()) as u16;
        o[14] = 0x45;
        o[16..18].copy_from_slice(&ip_len.to_be_bytes());
        o[22] = 64;
        o[23] = 17;
        o[26..30].copy_from_slice(&peer.octets());
        o[30..34].copy_from_slice(&us.octets());
        o[34..36].copy_from_slice(&40000u16.to_be_bytes());
        o[36..38].copy_from_slice(&4789u16.to_be_bytes());
        o[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        o[42] = 0x08;
        o[46..49].copy_from_slice(&[0, 0, 42]);
        o.extend_from_slice(inner);
        o
    }

    fn mac(b: &[u8]) -> MacAddr {
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    fn usable_src(m: MacAddr) -> bool {
        !m.is_multicast() && !m.is_zero()
    }

    #[derive(Default, Debug)]
    struct Tally {
        fast_peer: usize,
        fast_local: usize,
        passed: usize,
        not_runnable: usize,
        fast_v6: usize,
    }

    /// Whether the inner frame's checksums are right (IPv4 header, TCP/UDP/ICMP/ICMPv6),
    /// for a frame the outer UDP checksum over IPv6 is derived from.
    fn inner_checksums_ok(f: &[u8]) -> bool {
        use crate::core::checksum::{pseudo_v4, pseudo_v6, verify};
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0800 if f.len() >= 34 => {
                // a whole, unfragmented packet without options, no padding after it
                let whole = f[14] == 0x45 && u16::from_be_bytes([f[16], f[17]]) as usize == f.len() - 14;
                if !whole || u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0 || (f[23] == 17 && f.len() >= 42 && f[40..42] == [0, 0]) {
                    return false;
                }
                let ip = &f[14..34];
                let src: [u8; 4] = ip[12..16].try_into().unwrap();
                let dst: [u8; 4] = ip[16..20].try_into().unwrap();
                let l4 = &f[34..];
                verify(ip, 0) && match ip[9] {
                    1 => verify(l4, 0),
                    p @ (6 | 17) => verify(l4, pseudo_v4(&src, &dst, p, l4.len() as u32)),
                    _ => false,
                }
            }
            0x86dd if f.len() >= 54 && u16::from_be_bytes([f[18], f[19]]) as usize == f.len() - 54 => {
                let src: [u8; 16] = f[22..38].try_into().unwrap();
                let dst: [u8; 16] = f[38..54].try_into().unwrap();
                let l4 = &f[54..];
                matches!(f[20], 6 | 17 | 58) && verify(l4, pseudo_v6(&src, &dst, f[20], l4.len() as u32))
            }
            _ => false,
        }
    }

    /// An outer IPv6 header and UDP checksum as the userspace path's socket would send them:
    /// version 6, traffic class 0, a flow label, hop limit 64, next header UDP, and a UDP
    /// checksum that verifies whenever the inner frame's do (the test frames are not GSO; a
    /// zero one only where the frame's own checksums cannot vouch for it).
    fn check_ipv6_outer(out: &[u8], f: &[u8]) {
        use crate::core::checksum::{pseudo_v6, verify};
        assert_eq!(out[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([out[14], out[15]]) & 0x0ff0, 0, "traffic class 0");
        assert_ne!(u32::from_be_bytes([0, out[15], out[16], out[17]]) & 0xfffff, 0, "a flow label");
        assert_eq!((out[20], out[21]), (17, 64), "next header UDP, hop limit 64");
        let udp = &out[54..];
        assert_eq!(u16::from_be_bytes([out[18], out[19]]) as usize, udp.len(), "payload length");
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len(), "UDP length");
        let check = u16::from_be_bytes([udp[6], udp[7]]);
        let src: [u8; 16] = out[22..38].try_into().unwrap();
        let dst: [u8; 16] = out[38..54].try_into().unwrap();
        if inner_checksums_ok(f) {
            assert_ne!(check, 0, "a real UDP checksum for {f:02x?}");
            assert!(verify(udp, pseudo_v6(&src, &dst, 17, udp.len() as u32)), "the outer UDP checksum of {f:02x?} verifies");
        } else if check != 0 {
            // derived from headers whose checksums are wrong: wrong the same way, never a
            // checksum for a frame the program could not sum
            assert!(matches!(f[12..14], [0x08, 0x00] | [0x86, 0xdd]));
        }
    }

    /// One frame, sent by the host into TAP 0, with its destination placed by `dst_at`.
    fn egress_case(p: &mut Progs, f: &[u8], dst_at: Port, t: &mut Tally) {
        let now = Instant::from_secs(10);
        let net = network_of(p.v6);
        let peers_at = underlay(p.v6).1;
        let (src, dst) = (mac(&f[6..12]), mac(&f[0..6]));
        if usable_src(src) {
            net.fdb.learn(src, Port::Local(LocalPort(0)), now);
        }
        if usable_src(dst) && dst != src {
            net.fdb.learn(dst, dst_at, now);
        }
        let keys = mirror(p, &net, now);
        let Some((rc, out)) = try_run(p, "tap_egress", f) else {
            t.not_runnable += 1;
            for k in keys {
                let _ = p.fdb.remove(&k);
            }
            return;
        };
        let core = net.from_local(LocalPort(0), f, now);
        match rc {
            TC_ACT_OK => {
                assert_eq!(out, f, "a frame passed on to userspace must be untouched");
                t.passed += 1;
            }
            TC_ACT_REDIRECT if out.len() == f.len() + if p.v6 { 70 } else { 50 } => {
                let (daddr, udp) = if p.v6 {
                    assert_eq!(&out[12..14], &[0x86, 0xdd], "outer IPv6");
                    let o: [u8; 16] = out[38..54].try_into().unwrap();
                    (IpAddr::from(o), 54)
                } else {
                    assert_eq!(&out[12..14], &[0x08, 0x00], "outer IPv4");
                    assert_eq!(out[20] & 0x40, 0x40, "DF set");
                    (IpAddr::from([out[30], out[31], out[32], out[33]]), 34)
                };
                let peer = peers_at.iter().position(|p| *p == daddr).expect("encapsulated towards a peer");
                assert_eq!(core, Action::Peer(PeerIdx(peer as u16)), "fast path sent {:02x?}.. to peer {peer}; the core says {core:?}", &f[..f.len().min(64)]);
                assert_eq!(&out[udp + 16..], f, "the inner frame is the frame");
                assert_eq!(&out[udp + 8..udp + 16], &[0x08, 0, 0, 0, 0, 0, 42, 0], "VXLAN header: I flag, VNI 42");
                assert_eq!(u16::from_be_bytes([out[udp + 2], out[udp + 3]]), 4789);
                // the userspace path's source port for this flow
                let hash = crate::core::wire::ethernet::EthernetFrame::new_unchecked(f).flow_hash() as usize;
                assert_eq!(u16::from_be_bytes([out[udp], out[udp + 1]]), SPORTS[hash % SOURCE_PORTS], "source port of {f:02x?}");
                if p.v6 {
                    check_ipv6_outer(&out, f);
                    t.fast_v6 += 1;
                }
                t.fast_peer += 1;
            }
            TC_ACT_REDIRECT => {
                assert_eq!(out, f, "a frame for another TAP goes as it is");
                assert_eq!(core, Action::Local(LocalPort(1)), "fast path sent {:02x?}.. to TAP 1; the core says {core:?}", &f[..f.len().min(64)]);
                t.fast_local += 1;
            }
            rc => panic!("tap_egress returned {rc} for {f:02x?}"),
        }
        for k in keys {
            let _ = p.fdb.remove(&k);
        }
    }

    /// The same frame arriving from peer `from` in VXLAN, its destination placed by `dst_at`.
    fn ingress_case(p: &mut Progs, f: &[u8], from: usize, dst_at: Port, t: &mut Tally) {
        let now = Instant::from_secs(10);
        let net = network_of(p.v6);
        let (src, dst) = (mac(&f[6..12]), mac(&f[0..6]));
        if usable_src(src) {
            net.fdb.learn(src, Port::Peer(PeerIdx(from as u16)), now);
        }
        if usable_src(dst) && dst != src {
            net.fdb.learn(dst, dst_at, now);
        }
        let keys = mirror(p, &net, now);
        let pkt = vxlan(underlay(p.v6).1[from], f);
        let (rc, out) = run(p, "underlay_ingress", &pkt); // whole outer headers: always runnable
        let core = net.from_peer(PeerIdx(from as u16), f, now);
        match rc {
            TC_ACT_OK => {
                assert_eq!(out, pkt, "a packet passed on to the socket must be untouched");
                t.passed += 1;
            }
            TC_ACT_REDIRECT => {
                assert_eq!(out, f, "decapsulated to exactly the inner frame");
                assert!(matches!(core, Action::Local(_)), "fast path delivered {:02x?}.. from peer {from} to a TAP; the core says {core:?}", &f[..f.len().min(64)]);
                t.fast_local += 1;
            }
            rc => panic!("underlay_ingress returned {rc} for {f:02x?}"),
        }
        for k in keys {
            let _ = p.fdb.remove(&k);
        }
    }

    fn corpus() -> Vec<Vec<u8>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/ethernet");
        let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .expect("fuzz corpus")
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            // BPF_PROG_TEST_RUN takes more than a bare Ethernet header, and at most a page
            // less head- and tailroom
            .filter(|f| f.len() > 14 && f.len() <= 3000)
            .collect();
        v.sort();
        v
    }

    /// Frames like the labs': ARP, ping, a full-MTU and an oversized IPv4 frame, IPv6, a
    /// keepalive, broadcast, multicast and a VLAN-tagged frame, between MACs A and B.
    fn lab_frames() -> Vec<Vec<u8>> {
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 0xa]), MacAddr([2, 0, 0, 0, 0, 0xb]));
        let ipv4 = |len: usize| {
            let mut f = frame(b, a, len);
            f[14] = 0x45;
            f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
            f[22] = 64;
            f[23] = 1;
            f
        };
        let mut v = vec![ipv4(98), ipv4(14 + 1450), ipv4(14 + 1451), ipv4(60)];
        let mut arp = frame(b, a, 60);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        v.push(arp);
        let mut v6 = frame(b, a, 14 + 40 + 8);
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        v6[14] = 0x60;
        v6[18..20].copy_from_slice(&8u16.to_be_bytes());
        v6[20] = 58;
        v.push(v6);
        v.push(crate::core::liveness::keepalive_frame(7).to_vec());
        v.push(frame(MacAddr::BROADCAST, a, 60));
        v.push(frame(MacAddr([1, 0, 0x5e, 0, 0, 1]), a, 60));
        let mut vlan = frame(b, a, 64);
        vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        v.push(vlan);
        v.extend(valid_frames(a, b));
        v
    }

    /// Frames from A to B whose checksums are all right, as a host's stack sends them: ICMP
    /// echo, TCP and UDP over IPv4 and IPv6, ICMPv6 echo, of a few sizes.
    fn valid_frames(a: MacAddr, b: MacAddr) -> Vec<Vec<u8>> {
        use crate::core::checksum::{finish, pseudo_v4, pseudo_v6, sum};
        let mut v = Vec::new();
        let (s4, d4) = ([198, 51, 100, 1], [198, 51, 100, 2]);
        let s6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
        let d6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x22];
        for (proto, l4_len) in [(1u8, 64usize), (6, 20), (6, 1000), (6, 1410), (17, 9), (17, 513)] {
            let mut f = frame(b, a, 14 + 20 + l4_len);
            f[14] = 0x45;
            f[16..18].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            f[20] = 0x40;
            f[22] = 64;
            f[23] = proto;
            f[26..30].copy_from_slice(&s4);
            f[30..34].copy_from_slice(&d4);
            for (i, x) in f[34..].iter_mut().enumerate() {
                *x = (i * 7 + l4_len) as u8;
            }
            let c = match proto {
                1 => {
                    f[34] = 8; // echo request
                    f[36..38].fill(0);
                    36
                }
                6 => {
                    f[34 + 12] = 0x50;
                    f[34 + 16..34 + 18].fill(0);
                    34 + 16
                }
                _ => {
                    f[34 + 4..34 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                    f[34 + 6..34 + 8].fill(0);
                    34 + 6
                }
            };
            let ps = if proto == 1 { 0 } else { pseudo_v4(&s4, &d4, proto, l4_len as u32) };
            let ck = finish(sum(&f[34..], ps));
            f[c..c + 2].copy_from_slice(&ck.to_be_bytes());
            let ip = finish(sum(&f[14..34], 0));
            f[24..26].copy_from_slice(&ip.to_be_bytes());
            v.push(f);
        }
        for (proto, l4_len) in [(58u8, 64usize), (6, 20), (6, 1390), (17, 100)] {
            let mut f = frame(b, a, 14 + 40 + l4_len);
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            f[14] = 0x60;
            f[18..20].copy_from_slice(&(l4_len as u16).to_be_bytes());
            f[20] = proto;
            f[21] = 64;
            f[22..38].copy_from_slice(&s6);
            f[38..54].copy_from_slice(&d6);
            for (i, x) in f[54..].iter_mut().enumerate() {
                *x = (i * 13 + l4_len) as u8;
            }
            let c = match proto {
                58 => {
                    f[54] = 128; // echo request
                    54 + 2
                }
                6 => {
                    f[54 + 12] = 0x50;
                    54 + 16
                }
                _ => {
                    f[54 + 4..54 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                    54 + 6
                }
            };
            f[c..c + 2].fill(0);
            let ck = finish(sum(&f[54..], pseudo_v6(&s6, &d6, proto, l4_len as u32)));
            f[c..c + 2].copy_from_slice(&ck.to_be_bytes());
            v.push(f);
        }
        v
    }

    #[test]
    fn fast_path_decisions_are_a_subset_of_the_cores() {
        let mut p = load();
        let mut base = lab_frames();
        base.extend(corpus());
        // and mutants of each: a few header bytes changed, or cut short (xorshift, fixed seed)
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut frames = base.clone();
        for f in &base {
            for _ in 0..40 {
                let mut m = f.clone();
                if rnd() % 5 == 0 {
                    let keep = 15 + (rnd() as usize) % m.len().saturating_sub(14).max(1);
                    m.truncate(keep.min(m.len()));
                }
                for _ in 0..1 + rnd() % 3 {
                    let i = 12 + (rnd() as usize) % (m.len().min(80) - 12);
                    m[i] = rnd() as u8;
                }
                frames.push(m);
            }
        }
        for v6 in [false, true] {
            if v6 {
                p = load_family(true);
            }
            let mut t = Tally::default();
            for (i, f) in frames.iter().enumerate() {
                let dst_at = [Port::Peer(PeerIdx(0)), Port::Peer(PeerIdx(1)), Port::Local(LocalPort(1)), Port::Local(LocalPort(0))][i % 4];
                egress_case(&mut p, f, dst_at, &mut t);
                let local = [Port::Local(LocalPort(0)), Port::Local(LocalPort(1)), Port::Peer(PeerIdx(1))][i % 3];
                ingress_case(&mut p, f, i % 2, local, &mut t);
            }
            eprintln!("{} frames, IPv{} underlay: {t:?}", frames.len(), if v6 { 6 } else { 4 });
            // not vacuous: the known unicast among them took the fast path, both ways
            assert!(t.fast_peer >= 50 && t.fast_local >= 100, "{t:?}");
            assert!(!v6 || t.fast_v6 == t.fast_peer, "{t:?}");
        }
    }

    /// Over IPv6, every frame the host sends whose checksums are right goes to a peer with a
    /// real outer UDP checksum; to a peer that takes no zero checksum (the kernel's vxlan
    /// device), a frame the program cannot sum stays with the userspace path.
    #[test]
    fn over_ipv6_the_outer_udp_checksum_is_real() {
        let mut p = load_family(true);
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 0xa]), MacAddr([2, 0, 0, 0, 0, 0xb]));
        let now = Instant::from_secs(10);
        // a kernel peer whose stack sends offloads: GSO yes, zero checksums no
        let net = Network::new(spec(2, underlay(true).1.iter().map(|p| SocketAddr::new(*p, 4789)).collect()));
        net.peers[0].liveness.offloads_seen();
        net.fdb.learn(a, Port::Local(LocalPort(0)), now);
        net.fdb.learn(b, Port::Peer(PeerIdx(0)), now);
        let keys = mirror(&mut p, &net, now);
        let frames = valid_frames(a, b);
        for f in &frames {
            let (rc, out) = run(&p, "tap_egress", f);
            assert_eq!((rc, out.len()), (TC_ACT_REDIRECT, f.len() + 70), "{f:02x?}");
            check_ipv6_outer(&out, f);
            assert_ne!(u16::from_be_bytes([out[60], out[61]]), 0);
        }
        // IPv4 with options: the program cannot sum it, and this peer takes no zero checksum
        let mut f = frames[0].clone();
        f.splice(34..34, [1, 1, 1, 0]);
        f[14] = 0x46;
        let (rc, out) = run(&p, "tap_egress", &f);
        assert_eq!((rc, out), (TC_ACT_OK, f.clone()), "left to the userspace path");
        // an overlayd peer of this version takes it with a zero checksum
        net.peers[0].liveness.keepalive_version_seen(2);
        let more = mirror(&mut p, &net, now);
        let (rc, out) = run(&p, "tap_egress", &f);
        assert_eq!((rc, out.len()), (TC_ACT_REDIRECT, f.len() + 70));
        assert_eq!(u16::from_be_bytes([out[60], out[61]]), 0);
        for k in keys.into_iter().chain(more) {
            let _ = p.fdb.remove(&k);
        }
    }

    #[test]
    fn a_peer_that_does_not_take_offloads_gets_its_frames_from_userspace() {
        let mut p = load();
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 0xa]), MacAddr([2, 0, 0, 0, 0, 0xb]));
        let now = Instant::from_secs(10);
        // an Open vSwitch or kernel peer never heard from: no keepalive, no offloads seen
        let net = Network::new(spec(2, underlay(false).1.iter().map(|p| SocketAddr::new(*p, 4789)).collect()));
        net.fdb.learn(a, Port::Local(LocalPort(0)), now);
        net.fdb.learn(b, Port::Peer(PeerIdx(0)), now);
        let keys = mirror(&mut p, &net, now);
        let mut f = frame(b, a, 98);
        f[14] = 0x45;
        let (rc, out) = run(&p, "tap_egress", &f);
        assert_eq!((rc, out), (TC_ACT_OK, f.clone()), "left to the userspace path");
        // once it speaks overlayd, the same frame is encapsulated in the kernel
        net.peers[0].liveness.keepalive_seen();
        let more = mirror(&mut p, &net, now);
        let (rc, out) = run(&p, "tap_egress", &f);
        assert_eq!((rc, out.len()), (TC_ACT_REDIRECT, f.len() + 50));
        for k in keys.into_iter().chain(more) {
            let _ = p.fdb.remove(&k);
        }
    }

    #[test]
    fn dhcp_is_left_to_userspace_both_ways() {
        let mut p = load();
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 0xa]), MacAddr([2, 0, 0, 0, 0, 0xb]));
        let now = Instant::from_secs(10);
        let net = network();
        // b behind peer 0, a on the test TAP: known unicast both ways
        net.fdb.learn(a, Port::Local(LocalPort(0)), now);
        net.fdb.learn(b, Port::Peer(PeerIdx(0)), now);
        let keys = mirror(&mut p, &net, now);
        // IPv4/UDP: a from 68 to 67 (client to server); b from 67 to 68 (server to client)
        let udp = |dst, src, sport: u16, dport: u16| {
            let mut f = frame(dst, src, 300);
            f[14] = 0x45;
            f[16..18].copy_from_slice(&286u16.to_be_bytes());
            f[23] = 17;
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&dport.to_be_bytes());
            f[38..40].copy_from_slice(&266u16.to_be_bytes());
            f
        };
        let to_server = udp(b, a, 68, 67);
        assert_eq!(run(&p, "tap_egress", &to_server), (TC_ACT_OK, to_server.clone()), "a request or release goes through userspace");
        let to_client = udp(a, b, 67, 68);
        let pkt = vxlan(underlay(p.v6).1[0], &to_client);
        assert_eq!(run(&p, "underlay_ingress", &pkt), (TC_ACT_OK, pkt.clone()), "an acknowledgement goes through userspace");
        // the same flows on another UDP port are carried in the kernel
        let dns = udp(b, a, 68, 53);
        assert_eq!(run(&p, "tap_egress", &dns).0, TC_ACT_REDIRECT);
        let pkt = vxlan(underlay(p.v6).1[0], &udp(a, b, 53, 1068));
        assert_eq!(run(&p, "underlay_ingress", &pkt).0, TC_ACT_REDIRECT);
        for k in keys {
            let _ = p.fdb.remove(&k);
        }
    }

    #[test]
    fn a_source_not_yet_learned_at_the_ingress_is_left_to_userspace() {
        let mut p = load();
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 0xa]), MacAddr([2, 0, 0, 0, 0, 0xb]));
        let now = Instant::from_secs(10);
        let net = network();
        net.fdb.learn(b, Port::Peer(PeerIdx(0)), now);
        net.fdb.learn(a, Port::Peer(PeerIdx(1)), now); // A moved here since: userspace must see it
        let keys = mirror(&mut p, &net, now);
        let mut f = frame(b, a, 98);
        f[14] = 0x45;
        let (rc, out) = run(&p, "tap_egress", &f);
        assert_eq!((rc, out), (TC_ACT_OK, f.clone()));
        // once the core learned the move and the mirror has it, the flow is fast
        net.from_local(LocalPort(0), &f, now);
        let more = mirror(&mut p, &net, now);
        let (rc, out) = run(&p, "tap_egress", &f);
        assert_eq!((rc, out.len()), (TC_ACT_REDIRECT, f.len() + 50));
        for k in keys.into_iter().chain(more) {
            let _ = p.fdb.remove(&k);
        }
    }
}
