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
use std::net::{IpAddr, Ipv4Addr};
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

use super::datapath::SharedFabric;
use super::forward::LocalIo;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

pub const SYNC_EVERY: Duration = Duration::from_millis(50);
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
const MAX_NETS: u32 = 64;
const STRIDE: u32 = 256;
pub const MAX_PEERS: usize = 63;
const KIND_LOCAL: u8 = 1;
const KIND_PEER: u8 = 2;
/// UDP source ports of encapsulated frames: the kernel vxlan device's default range.
const SPORT_MIN: u16 = 32768;
const SPORT_SPAN: u16 = 61000 - 32768;

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
    pub daddr: u32,
    pub dport: u16,
    /// `PEER_TAKES_OFFLOADS` for a peer that takes GSO super-packets and partial checksums.
    pub flags: u16,
    pub seen_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapCfg {
    pub net: u32,
    pub lport: u16,
    pub mtu: u16,
    pub vni: u32,
    pub saddr: u32,
    pub underlay_ifindex: u32,
    pub sport_min: u16,
    pub sport_span: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub vni: u32,
    pub saddr: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerVal {
    pub net: u32,
    pub idx: u16,
    pub dport: u16,
    pub daddr: u32,
    pub mtu: u16,
    pub pad: u16,
}

// SAFETY: plain `repr(C)` integers without padding holes the kernel could leak into
unsafe impl aya::Pod for FdbKey {}
unsafe impl aya::Pod for FdbVal {}
unsafe impl aya::Pod for TapCfg {}
unsafe impl aya::Pod for PeerKey {}
unsafe impl aya::Pod for PeerVal {}

fn be32(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// `FdbVal::flags`: the peer takes GSO super-packets and inner checksums left partial.
const PEER_TAKES_OFFLOADS: u16 = 1;

/// The mirror value of an FDB row, if the fast path can forward to that port.
fn fdb_val(net: &Network, port: Port, taps: &HashMap<LocalPort, u32>) -> Option<FdbVal> {
    match port {
        Port::Local(l) => taps.get(&l).map(|&ifindex| FdbVal { kind: KIND_LOCAL, idx: l.0, ifindex, ..Default::default() }),
        Port::Peer(p) if usize::from(p.0) < MAX_PEERS => match net.peers.get(usize::from(p.0))?.addr {
            std::net::SocketAddr::V4(a) => {
                // the same judgement as the userspace path's UDP GSO (Liveness::takes_gso)
                let flags = if net.peers[usize::from(p.0)].liveness.takes_gso() { PEER_TAKES_OFFLOADS } else { 0 };
                Some(FdbVal { kind: KIND_PEER, idx: p.0, daddr: be32(*a.ip()), dport: a.port().to_be(), flags, ..Default::default() })
            }
            std::net::SocketAddr::V6(_) => None,
        },
        Port::Peer(_) => None,
    }
}

/// Why the fast path cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the fast path carries VXLAN over an IPv4 underlay only (node.underlay is {0})")]
    Ipv6Underlay(IpAddr),
    #[error("no interface holds the underlay address {0}")]
    NoUnderlayDevice(IpAddr),
    #[error("loading the BPF object failed: {0}")]
    Load(String),
    #[error("the kernel refused program {prog}: {error}{log}")]
    Program { prog: &'static str, error: String, log: String },
    #[error("attaching {prog} to {dev} failed: {error}")]
    Attach { prog: &'static str, dev: String, error: String },
}

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
}

struct State {
    ebpf: Ebpf,
    fdb: BpfHashMap<MapData, FdbKey, FdbVal>,
    taps: BpfHashMap<MapData, u32, TapCfg>,
    peers: BpfHashMap<MapData, PeerKey, PeerVal>,
    stats: PerCpuArray<MapData, u64>,
    underlay_ifindex: u32,
    saddr: Ipv4Addr,
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
    /// program to every TAP of a VXLAN network). The error says why it cannot be used.
    pub fn start(underlay: IpAddr, fabric: SharedFabric) -> Result<FastPath, Unavailable> {
        let IpAddr::V4(saddr) = underlay else { return Err(Unavailable::Ipv6Underlay(underlay)) };
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
        {
            let p: &mut SchedClassifier = ebpf.program_mut("underlay_ingress").and_then(|p| p.try_into().ok()).ok_or_else(|| Unavailable::Load("underlay_ingress".into()))?;
            p.attach(&underlay_dev, TcAttachType::Ingress).map_err(|e| Unavailable::Attach {
                prog: "underlay_ingress",
                dev: underlay_dev.clone(),
                error: e.to_string(),
            })?;
        }
        let mut st = State {
            ebpf,
            fdb,
            taps,
            peers,
            stats,
            underlay_ifindex,
            saddr,
            nets: BTreeMap::new(),
            links: HashMap::new(),
            slow_nets: Default::default(),
            last_refresh: std::time::Instant::now(),
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
                let _ = super::privs::drop_to_minimum();
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
        if let Ok(st) = Arc::try_unwrap(self.state).map(|m| m.into_inner()) {
            let st = st.unwrap_or_else(|p| p.into_inner());
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
            self.last_refresh = std::time::Instant::now();
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
            if !self.nets.contains_key(&name) {
                let Some(id) = self.alloc_id() else { continue };
                self.nets.insert(name.clone(), NetState { id, folded: vec![0; STRIDE as usize], ..Default::default() });
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
                    saddr: be32(self.saddr),
                    underlay_ifindex: self.underlay_ifindex,
                    sport_min: SPORT_MIN,
                    sport_span: SPORT_SPAN,
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
                let std::net::SocketAddr::V4(a) = p.addr else { continue };
                let k = PeerKey { vni, saddr: be32(*a.ip()) };
                let v = PeerVal { net: id, idx: i as u16, dport: a.port().to_be(), daddr: be32(self.saddr), mtu: net.spec.mtu, pad: 0 };
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
            if let Some(st) = self.nets.remove(&name) {
                for mac in st.mirror.keys() {
                    let _ = self.fdb.remove(&FdbKey { net: st.id, mac: mac.0, pad: 0 });
                }
                for k in &st.peers {
                    let _ = self.peers.remove(k);
                }
                for ix in &st.taps {
                    let _ = self.taps.remove(ix);
                }
                self.zero_stats(st.id);
                tracing::info!(network = name, "fast path: network no longer served");
            }
        }
        // TAPs gone: detach (a deleted device took its link along already)
        let stale: Vec<u32> = self.links.keys().filter(|ix| !live_taps.contains(ix)).copied().collect();
        for ix in stale {
            if let Some(link) = self.links.remove(&ix) {
                if let Some(p) = self.ebpf.program_mut("tap_egress").and_then(|p| TryInto::<&mut SchedClassifier>::try_into(p).ok()) {
                    let _ = p.detach(link);
                }
            }
            let _ = self.taps.remove(&ix);
        }
        for e in &f.networks {
            self.fold_net(&e.net);
        }
        Ok(())
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
    const UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const PEERS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3)];
    const TAP1_IFINDEX: u32 = 77;

    struct Progs {
        ebpf: Ebpf,
        fdb: BpfHashMap<MapData, FdbKey, FdbVal>,
        _taps: BpfHashMap<MapData, u32, TapCfg>,
        _peers: BpfHashMap<MapData, PeerKey, PeerVal>,
    }

    fn load() -> Progs {
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
        let cfg = TapCfg { net: 0, lport: 0, mtu: 1450, vni: 42, saddr: be32(UNDERLAY), underlay_ifindex: 99, sport_min: SPORT_MIN, sport_span: SPORT_SPAN };
        taps.insert(LO, cfg, 0).unwrap();
        for (i, p) in PEERS.iter().enumerate() {
            let v = PeerVal { net: 0, idx: i as u16, dport: 4789u16.to_be(), daddr: be32(UNDERLAY), mtu: 1450, pad: 0 };
            peers.insert(PeerKey { vni: 42, saddr: be32(*p) }, v, 0).unwrap();
        }
        Progs { ebpf, fdb, _taps: taps, _peers: peers }
    }

    /// Two TAPs and two peers that run overlayd (they take offloads).
    fn network() -> Network {
        let net = Network::new(spec(2, PEERS.iter().map(|p| SocketAddr::from((*p, 4789))).collect()));
        for p in &net.peers {
            p.liveness.keepalive_seen();
        }
        net
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

    fn vxlan(peer: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
        let mut o = vec![0u8; 50];
        o[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (20 + 8 + 8 + inner.len()) as u16;
        o[14] = 0x45;
        o[16..18].copy_from_slice(&ip_len.to_be_bytes());
        o[22] = 64;
        o[23] = 17;
        o[26..30].copy_from_slice(&peer.octets());
        o[30..34].copy_from_slice(&UNDERLAY.octets());
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
    }

    /// One frame, sent by the host into TAP 0, with its destination placed by `dst_at`.
    fn egress_case(p: &mut Progs, f: &[u8], dst_at: Port, t: &mut Tally) {
        let now = Instant::from_secs(10);
        let net = network();
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
            TC_ACT_REDIRECT if out.len() == f.len() + 50 => {
                let daddr = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
                let peer = PEERS.iter().position(|p| *p == daddr).expect("encapsulated towards a peer");
                assert_eq!(core, Action::Peer(PeerIdx(peer as u16)), "fast path sent {:02x?}.. to peer {peer}; the core says {core:?}", &f[..f.len().min(64)]);
                assert_eq!(&out[50..], f, "the inner frame is the frame");
                assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0, 0, 42, 0], "VXLAN header: I flag, VNI 42");
                assert_eq!(u16::from_be_bytes([out[36], out[37]]), 4789);
                assert_eq!(out[20] & 0x40, 0x40, "DF set");
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
        let net = network();
        let (src, dst) = (mac(&f[6..12]), mac(&f[0..6]));
        if usable_src(src) {
            net.fdb.learn(src, Port::Peer(PeerIdx(from as u16)), now);
        }
        if usable_src(dst) && dst != src {
            net.fdb.learn(dst, dst_at, now);
        }
        let keys = mirror(p, &net, now);
        let pkt = vxlan(PEERS[from], f);
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
        let mut t = Tally::default();
        for (i, f) in frames.iter().enumerate() {
            let dst_at = [Port::Peer(PeerIdx(0)), Port::Peer(PeerIdx(1)), Port::Local(LocalPort(1)), Port::Local(LocalPort(0))][i % 4];
            egress_case(&mut p, f, dst_at, &mut t);
            let local = [Port::Local(LocalPort(0)), Port::Local(LocalPort(1)), Port::Peer(PeerIdx(1))][i % 3];
            ingress_case(&mut p, f, i % 2, local, &mut t);
        }
        eprintln!("{} frames: {t:?}", frames.len());
        // not vacuous: the known unicast among them took the fast path, both ways
        assert!(t.fast_peer >= 50 && t.fast_local >= 100, "{t:?}");
    }

    #[test]
    fn a_peer_that_does_not_take_offloads_gets_its_frames_from_userspace() {
        let mut p = load();
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 0xa]), MacAddr([2, 0, 0, 0, 0, 0xb]));
        let now = Instant::from_secs(10);
        // an Open vSwitch or kernel peer never heard from: no keepalive, no offloads seen
        let net = Network::new(spec(2, PEERS.iter().map(|p| SocketAddr::from((*p, 4789))).collect()));
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
        let pkt = vxlan(PEERS[0], &to_client);
        assert_eq!(run(&p, "underlay_ingress", &pkt), (TC_ACT_OK, pkt.clone()), "an acknowledgement goes through userspace");
        // the same flows on another UDP port are carried in the kernel
        let dns = udp(b, a, 68, 53);
        assert_eq!(run(&p, "tap_egress", &dns).0, TC_ACT_REDIRECT);
        let pkt = vxlan(PEERS[0], &udp(a, b, 53, 1068));
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
