//! The daemon: opens the devices and sockets a configuration asks for, runs the data path on
//! dedicated threads, and the control path (timers, signals) on tokio.
//!
//! Start-up order: metrics and admin sockets → the configured user → underlay MTU → underlay
//! sockets → TAP devices and VM sockets → their threads → networks published → underlay
//! receive threads → every capability but CAP_NET_ADMIN/CAP_NET_RAW dropped → "ready".
//! Any failure before "ready" is a [`StartupError`] that names what failed; nothing is left
//! behind (TAPs we created vanish when their descriptors close). A SIGHUP runs the same steps
//! for the networks it adds or restarts ([`Daemon::apply`]).

pub mod datapath;
pub mod fastpath;
pub mod forward;
pub mod gre;
pub mod netio;
pub mod switch;
pub mod packetport;
pub mod vmport;
pub mod watch;
pub mod privs;
pub mod reload;
pub mod cluster;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Config, NetworkConfig};
use crate::core::Encap;
use crate::core::wire::gre::GreRepr;
use crate::io::gre::GreSocket;
use crate::core::fabric::{Fabric, NetEntry};
use crate::core::stats::GlobalDrops;
use crate::core::{Network, NetworkSpec};
use crate::io::clock;
use crate::io::sys::{self, StopFd};
use crate::io::tap::Tap;
use crate::io::udp::{self, RxSocket, TxSockets};
use crate::io::packet::PacketPort;
use crate::io::vmsock::{VmDgramSocket, VmListener};
use datapath::{PortThread, Underlay, UnderlayThread};
use netio::{LocalIo, NetIo, SharedFabric};
use packetport::PacketThread;
use vmport::{VmDgramServer, VmPortServer};
use gre::GreParams;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("node.underlay: cannot list the interfaces of this network namespace: {0}")]
    Interfaces(std::io::Error),
    #[error("node.underlay {0} is not an address of any interface in this network namespace")]
    UnderlayNotLocal(std::net::IpAddr),
    #[error("{0}")]
    Tap(std::io::Error),
    #[error("{0}")]
    Socket(std::io::Error),
    #[error("spawn thread: {0}")]
    Thread(std::io::Error),
    #[error("{signal} handler: {error}")]
    Signal { signal: &'static str, error: std::io::Error },
    #[error("metrics.listen {addr}: {error}")]
    Metrics { addr: SocketAddr, error: std::io::Error },
    #[error("metrics: {0}")]
    MetricsRegistry(prometheus::Error),
    #[error("admin.socket {path}: {error}")]
    Admin { path: String, error: std::io::Error },
    #[error("node.user: cannot run as user {user:?} (uid {uid}): {error}")]
    User { user: String, uid: u32, error: privs::SwitchUserError },
    #[error("node.datapath = \"ebpf\": the eBPF fast path cannot be used: {0}")]
    Datapath(fastpath::Unavailable),
    #[error("{0}")]
    Cluster(crate::io::etcd::TlsError),
}

/// Why [`Daemon::apply`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot listen on the underlay: {0}")]
    Listen(StartupError),
}

/// Mean time between periodic re-lists of the cluster (`OVERLAYD_CLUSTER_RESYNC_SECS` for
/// tests; default 5 minutes).
fn cluster_resync_every() -> Duration {
    let secs = std::env::var("OVERLAYD_CLUSTER_RESYNC_SECS").ok().and_then(|s| s.parse::<u64>().ok()).filter(|s| *s > 0);
    Duration::from_secs(secs.unwrap_or(300))
}

impl crate::admin::PortNames for Arc<NetIo> {
    fn local_port_name(&self, index: usize) -> String {
        let ports = self.ports.load();
        // `index` is the whole LocalPort value (slot and generation); name VMs by slot
        let port = u16::try_from(index).ok().map(crate::core::LocalPort);
        let slot = port.map_or(index, |p| p.slot());
        match port.and_then(|p| ports.get(p)) {
            Some(netio::LocalIo::Tap(t)) => t.name().to_string(),
            Some(netio::LocalIo::Packet(d)) => d.name().to_string(),
            Some(netio::LocalIo::Vm(c)) if c.pid > 0 => format!("vm{slot} (pid {})", c.pid),
            Some(netio::LocalIo::Vm(_)) => format!("vm{slot}"),
            Some(netio::LocalIo::Dgram(d)) => format!("vm{slot} ({})", d.path.display()),
            None => format!("port{slot}"),
        }
    }
}

/// Underlay MTU when nothing better is known.
const FALLBACK_UNDERLAY_MTU: u16 = 1500;

/// One network as it runs: its entry in the fabric, its configuration, and the threads of its
/// local ports with their own stop, so a reload can stop one network and leave the others.
struct NetRun {
    cfg: NetworkConfig,
    /// Its ports, and (`io.net`) its current generation.
    io: Arc<NetIo>,
    /// How its ports send, for a GRE network (also used for its keepalives).
    gre: Option<GreParams>,
    stop: Arc<StopFd>,
    threads: Vec<JoinHandle<()>>,
}

impl NetRun {
    fn net(&self) -> Arc<Network> {
        self.io.net.load_full()
    }

    /// Stop the network's threads and wait for them.
    fn halt(&mut self) {
        self.stop.raise();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!(network = self.cfg.name, "a data-path thread panicked");
            }
        }
    }
}

/// A network's devices and sockets, opened but not running yet.
struct Opened {
    io: Arc<NetIo>,
    listener: Option<VmListener>,
    dgram: Option<Arc<VmDgramSocket>>,
}

/// The receive thread of one underlay socket, with its own stop, so a reload can close a
/// socket no network uses any more.
struct Receiver {
    /// The VXLAN port it listens on; `None` for the raw GRE socket.
    port: Option<u16>,
    stop: Arc<StopFd>,
    thread: JoinHandle<()>,
}

impl Receiver {
    fn halt(self) {
        self.stop.raise();
        if self.thread.join().is_err() {
            tracing::error!("an underlay thread panicked");
        }
    }
}

/// A running daemon. Dropping it without [`Daemon::stop`] leaves threads running until exit.
pub struct Daemon {
    pub fabric: SharedFabric,
    pub global: Arc<GlobalDrops>,
    receivers: Vec<Receiver>,
    nets: Vec<NetRun>,
    watch: watch::Watch,
    /// The send sockets, for keepalives from the control path.
    tx: Arc<TxSockets>,
    /// This node's keepalive frame (its source MAC derives from the underlay address).
    keepalive: [u8; crate::core::liveness::KEEPALIVE_LEN],
    node: crate::config::NodeConfig,
    umtu: u16,
    /// The raw GRE socket, once a GRE network exists.
    gre_sock: Option<Arc<GreSocket>>,
    /// VXLAN sockets opened whose receive threads are not started yet.
    pending_rx: Vec<RxSocket>,
    /// Largest underlay packet accepted.
    slot: usize,
    /// The eBPF fast path, when `[node] datapath` chose it and it loaded.
    fast: Option<Arc<fastpath::FastPath>>,
    /// Why the fast path is not used (for the log and `overlayd_datapath_info`).
    pub datapath_note: String,
}

/// The underlay MTU: configured, or read off the interface that holds the underlay address.
fn underlay_mtu(cfg: &Config) -> Result<u16, StartupError> {
    if let Some(m) = cfg.node.underlay_mtu {
        return Ok(m);
    }
    let ifname = sys::interface_of(cfg.node.underlay)
        .map_err(StartupError::Interfaces)?
        .ok_or(StartupError::UnderlayNotLocal(cfg.node.underlay))?;
    match sys::interface_mtu(&ifname) {
        Ok(m) => Ok(m),
        Err(e) => {
            tracing::warn!(interface = ifname, error = %e, mtu = FALLBACK_UNDERLAY_MTU, "cannot read underlay MTU, assuming a default");
            Ok(FALLBACK_UNDERLAY_MTU)
        }
    }
}

fn spec_of(n: &NetworkConfig, tap_mtu: u16) -> NetworkSpec {
    NetworkSpec {
        name: n.name.clone(),
        encap: n.encap,
        vni: n.vni,
        mtu: tap_mtu,
        // GRE has no ports: 0 (a raw IPv6 socket refuses any other than its protocol number)
        peers: n.peers.iter().map(|&ip| SocketAddr::new(ip, if n.encap.is_gre() { 0 } else { n.vxlan_port })).collect(),
        fdb: n.fdb,
        bum_pps_limit: n.bum_pps_limit,
        local_ports: n.taps.len() as u16,
        mss_clamp: n.mss_clamp,
        pmtu_sources: n.pmtu_sources(),
        arp_suppress: n.arp_suppress,
        unknown_unicast_drop: n.unknown_unicast == crate::config::UnknownUnicast::Drop,
        snoop_local: n.advertise == crate::config::Advertise::MacsIps,
    }
}

/// How a GRE network's ports send (`None` for VXLAN networks).
fn gre_params(n: &NetworkConfig, sock: &Option<Arc<GreSocket>>) -> Option<GreParams> {
    match (n.encap, sock) {
        (Encap::Gre(o), Some(sock)) => Some(GreParams {
            sock: sock.clone(),
            repr: GreRepr { key: o.key.then_some(n.vni.get()), checksum: o.checksum },
            ttl: n.ttl,
            dscp: n.dscp,
        }),
        _ => None,
    }
}

/// The scheduler slice every data-path thread asks for (`sys::request_slice`, the kernel's
/// minimum): a thread woken for a frame gets the CPU from a task that has run for longer
/// instead of queueing behind its slice (up to a few ms under load), one wait less per thread
/// hand-off on the way of a frame. It changes no thread's share of the CPU.
const DATA_PATH_SLICE_NS: u64 = 100_000;

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StartupError> {
    static SLICE_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // capabilities are per thread: each data-path thread drops its own before it starts, and
    // this waits for that, so no thread holds more than it needs once the daemon says "ready"
    let (dropped, wait) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            privs::drop_in_thread();
            if let Err(e) = crate::io::sys::request_slice(DATA_PATH_SLICE_NS)
                && !SLICE_REFUSED.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::info!(error = %e, "the kernel refused a short scheduler slice for the data-path threads; they keep the default");
            }
            let _ = dropped.send(());
            f()
        })
        .map_err(StartupError::Thread)?;
    let _ = wait.recv();
    Ok(handle)
}

impl Daemon {
    /// Open everything `cfg` asks for and start the data path.
    pub fn start(cfg: &Config) -> Result<Daemon, StartupError> {
        let umtu = underlay_mtu(cfg)?;
        let underlay = cfg.node.underlay;
        let tx = Arc::new(TxSockets::bind(underlay, udp::SOURCE_PORTS).map_err(StartupError::Socket)?);
        let mut d = Daemon {
            fabric: Arc::new(ArcSwap::from_pointee(Fabric::new(Vec::new(), &[]))),
            global: Arc::new(GlobalDrops::default()),
            receivers: Vec::new(),
            nets: Vec::new(),
            watch: watch::Watch::default(),
            tx,
            keepalive: crate::core::liveness::keepalive_frame(watch::node_id(underlay)),
            node: cfg.node.clone(),
            umtu,
            gre_sock: None,
            pending_rx: Vec::new(),
            slot: usize::from(umtu).max(2048) + 64,
            fast: None,
            datapath_note: String::new(),
        };
        let started = d.listen(&cfg.networks).and_then(|()| {
            for n in &cfg.networks {
                let opened = d.open(n)?;
                let run = d.run_network(n, opened)?;
                d.nets.push(run);
            }
            Ok(())
        });
        let started = started.and_then(|()| {
            d.publish();
            d.start_receivers()
        });
        let started = started.and_then(|()| d.start_fast_path(cfg.node.datapath));
        if let Err(e) = started {
            d.stop();
            return Err(e);
        }
        tracing::info!(source_ports = ?d.tx.ports(), "sending VXLAN");
        Ok(d)
    }

    /// Load and attach the eBPF fast path if `datapath` asks for it: `auto` falls back to the
    /// userspace path (logged with the reason), `ebpf` refuses to start.
    fn start_fast_path(&mut self, datapath: crate::config::Datapath) -> Result<(), StartupError> {
        use crate::config::Datapath;
        if datapath == Datapath::Userspace {
            self.datapath_note = "node.datapath = \"userspace\"".into();
            tracing::info!("data path: userspace (node.datapath = \"userspace\")");
            return Ok(());
        }
        match fastpath::FastPath::start(self.node.underlay, &self.tx.ports(), self.fabric.clone()) {
            Ok(f) => {
                tracing::info!(datapath = datapath.as_str(), underlay_device = f.underlay_dev,
                    "data path: eBPF fast path at TC for known unicast of VXLAN networks; GRE networks, VM socket ports, BUM and unknown unicast stay on the userspace path");
                self.fast = Some(Arc::new(f));
                Ok(())
            }
            Err(e) if datapath == Datapath::Ebpf => Err(StartupError::Datapath(e)),
            Err(e) => {
                tracing::warn!(reason = %e, "data path: userspace (node.datapath = \"auto\" and the eBPF fast path cannot be used)");
                self.datapath_note = e.to_string();
                Ok(())
            }
        }
    }

    /// Open every underlay socket `networks` need that is not open yet: a UDP port per VXLAN
    /// port, the raw GRE socket for GRE. Their receive threads start with
    /// [`Self::start_receivers`], once the networks they deliver to are published.
    fn listen(&mut self, networks: &[NetworkConfig]) -> Result<(), StartupError> {
        let underlay = self.node.underlay;
        let want: BTreeSet<u16> = networks.iter().filter(|n| n.encap == Encap::Vxlan).map(|n| n.vxlan_port).collect();
        let open: BTreeSet<u16> =
            self.receivers.iter().filter_map(|r| r.port).chain(self.pending_rx.iter().map(|rx| rx.local.port())).collect();
        let mut rxs = Vec::new();
        for &p in want.difference(&open) {
            rxs.push(RxSocket::bind(SocketAddr::new(underlay, p)).map_err(StartupError::Socket)?);
        }
        if networks.iter().any(|n| n.encap.is_gre()) && self.gre_sock.is_none() {
            self.gre_sock = Some(Arc::new(GreSocket::open(underlay).map_err(StartupError::Socket)?));
        }
        self.pending_rx.extend(rxs);
        Ok(())
    }

    /// Start a receive thread on each underlay socket [`Self::listen`] opened (the GRE socket's
    /// when it has none yet).
    fn start_receivers(&mut self) -> Result<(), StartupError> {
        for rx in std::mem::take(&mut self.pending_rx) {
            tracing::info!(socket = %rx.local, "listening for VXLAN");
            let (port, stop) = (rx.local.port(), Arc::new(StopFd::new().map_err(StartupError::Thread)?));
            let t = UnderlayThread {
                rx: Underlay::Vxlan(rx),
                fabric: self.fabric.clone(),
                global: self.global.clone(),
                stop: stop.clone(),
                slot: self.slot,
                offload: self.node.offload,
            };
            let thread = spawn("underlay".into(), move || t.run())?;
            self.receivers.push(Receiver { port: Some(port), stop, thread });
        }
        let gre_running = self.receivers.iter().any(|r| r.port.is_none());
        if let Some(sock) = self.gre_sock.clone().filter(|_| !gre_running) {
            tracing::info!(local = %sock.local, "listening for GRE");
            let stop = Arc::new(StopFd::new().map_err(StartupError::Thread)?);
            let t = UnderlayThread {
                rx: Underlay::Gre(sock),
                fabric: self.fabric.clone(),
                global: self.global.clone(),
                stop: stop.clone(),
                slot: self.slot,
                offload: self.node.offload,
            };
            let thread = spawn("underlay-gre".into(), move || t.run())?;
            self.receivers.push(Receiver { port: None, stop, thread });
        }
        Ok(())
    }

    /// Close the underlay sockets no running network uses any more (after a reload).
    fn close_unused(&mut self) {
        let vxlan: BTreeSet<u16> = self.nets.iter().filter(|r| r.cfg.encap == Encap::Vxlan).map(|r| r.cfg.vxlan_port).collect();
        let gre = self.nets.iter().any(|r| r.cfg.encap.is_gre());
        let (unused, kept): (Vec<Receiver>, Vec<Receiver>) =
            std::mem::take(&mut self.receivers).into_iter().partition(|r| r.port.map_or(!gre, |p| !vxlan.contains(&p)));
        self.receivers = kept;
        for r in unused {
            let port = r.port;
            r.halt();
            match port {
                Some(p) => {
                    tracing::info!(port = p, "reload: no network uses this VXLAN port any more; its socket is closed");
                }
                None => {
                    self.gre_sock = None;
                    tracing::info!("reload: no GRE network is left; the raw GRE socket is closed");
                }
            }
        }
    }

    /// Open the local ports of network `n`: its TAPs (or the interfaces they name), its VM
    /// sockets. Nothing runs yet; dropping the result closes them again.
    fn open(&self, n: &NetworkConfig) -> Result<Opened, StartupError> {
        let (underlay, umtu) = (self.node.underlay, self.umtu);
        let overhead = n.overhead(underlay);
        let tap_mtu = n.mtu.unwrap_or(umtu.saturating_sub(overhead));
        if usize::from(tap_mtu) + usize::from(overhead) > usize::from(umtu) {
            tracing::warn!(network = n.name, tap_mtu, underlay_mtu = umtu, overhead,
                "TAP MTU plus encapsulation exceeds the underlay MTU; large frames will be fragmented or dropped");
        }
        let mut taps = Vec::with_capacity(n.taps.len());
        for (i, name) in n.taps.iter().enumerate() {
            // the address goes on the first TAP only: one subnet, one host interface
            // TSO super-frames from the TAP, coalesced TCP segments to it: VXLAN and GRE alike
            let offload = self.node.offload;
            let mac = Some(crate::io::tap::stable_mac(underlay, name));
            match Tap::open_with_mac(name, tap_mtu, if i == 0 { n.address } else { None }, mac, offload) {
                Ok(tap) => {
                    tracing::info!(network = n.name, tap = tap.name(), mtu = tap_mtu, created = tap.created(), "tap port up");
                    taps.push(LocalIo::Tap(Arc::new(tap)));
                }
                // a TAP another process holds (QEMU -netdev tap), or another kind of
                // interface: join it the way a bridge does
                Err(e) if sys::interface_exists(name) => {
                    let dev = PacketPort::attach(name).map_err(|pe| {
                        StartupError::Tap(std::io::Error::new(pe.kind(), format!("{e}; attaching it with a packet socket failed too: {pe}")))
                    })?;
                    tracing::info!(network = n.name, interface = name, ifindex = dev.ifindex(), reason = %e,
                        "interface attached as a port with a packet socket (it is not a TAP we can open, e.g. a VM's TAP held by QEMU)");
                    if i == 0 && n.address.is_some() {
                        tracing::warn!(network = n.name, interface = name, "address not set: it is only put on a TAP the daemon opens");
                    }
                    taps.push(LocalIo::Packet(Arc::new(dev)));
                }
                Err(e) => return Err(StartupError::Tap(e)),
            }
        }
        let listener = match &n.vm_socket {
            Some(v) => {
                let l = VmListener::bind(v).map_err(StartupError::Socket)?;
                tracing::info!(network = n.name, path = %l.path().display(), mode = format_args!("{:o}", v.mode),
                    owner = v.owner, group = v.group, "listening for VMs (QEMU -netdev stream)");
                Some(l)
            }
            None => None,
        };
        let dgram = match &n.vm_dgram_socket {
            Some(v) => {
                let d = VmDgramSocket::bind(v).map_err(StartupError::Socket)?;
                tracing::info!(network = n.name, path = %d.path().display(), mode = format_args!("{:o}", v.mode),
                    owner = v.owner, group = v.group, "listening for VMs (QEMU -netdev dgram)");
                Some(Arc::new(d))
            }
            None => None,
        };
        let io = Arc::new(NetIo::new(Arc::new(Network::new(spec_of(n, tap_mtu))), taps));
        Ok(Opened { io, listener, dgram })
    }

    /// Start the threads of an opened network: one per port it reads, one per VM socket.
    fn run_network(&self, n: &NetworkConfig, opened: Opened) -> Result<NetRun, StartupError> {
        let Opened { io, listener, dgram } = opened;
        let stop = Arc::new(StopFd::new().map_err(StartupError::Thread)?);
        let gre = gre_params(n, &self.gre_sock);
        let mut run = NetRun { cfg: n.clone(), io, gre, stop, threads: Vec::new() };
        if let Err(e) = self.spawn_threads(&mut run, listener, dgram) {
            run.halt();
            return Err(e);
        }
        tracing::info!(network = n.name, mtu = run.io.net.load().spec.mtu, vni = %n.vni, encap = %n.encap,
            gre = ?match n.encap { Encap::Gre(o) => Some(o), Encap::Vxlan => None }, peers = n.peers.len(),
            taps = n.taps.len(), vm_socket = n.vm_socket.is_some(), vm_dgram_socket = n.vm_dgram_socket.is_some(), "network up");
        Ok(run)
    }

    fn spawn_threads(&self, run: &mut NetRun, listener: Option<VmListener>, dgram: Option<Arc<VmDgramSocket>>) -> Result<(), StartupError> {
        let (io, tx, stop) = (&run.io, &self.tx, &run.stop);
        for (port, local) in io.ports.load().iter() {
            let gre = run.gre.clone();
            let (io, tx, stop) = (io.clone(), tx.clone(), stop.clone());
            match local {
                LocalIo::Tap(tap) => {
                    let t = PortThread { io, port, tx, stop, gre };
                    run.threads.push(spawn(format!("port-{}", tap.name()), move || t.run())?);
                }
                LocalIo::Packet(dev) => {
                    let t = PacketThread { io, port, dev: dev.clone(), tx, stop, gre };
                    run.threads.push(spawn(format!("port-{}", dev.name()), move || t.run())?);
                }
                LocalIo::Vm(_) | LocalIo::Dgram(_) => {}
            }
        }
        let name = &run.cfg.name;
        if let Some(listener) = listener {
            let s = VmPortServer { listener, io: io.clone(), tx: tx.clone(), stop: stop.clone(), gre: run.gre.clone() };
            run.threads.push(spawn(format!("vmsock-{name}"), move || s.run())?);
        }
        if let Some(sock) = dgram {
            let s = VmDgramServer { sock, io: io.clone(), tx: tx.clone(), stop: stop.clone(), gre: run.gre.clone() };
            run.threads.push(spawn(format!("vmdgram-{name}"), move || s.run())?);
        }
        Ok(())
    }

    /// Publish the running networks to the underlay threads, the metrics and the admin socket.
    fn publish(&self) {
        let entries = self.nets.iter().map(|r| NetEntry { net: r.net(), io: r.io.clone() }).collect();
        let ports: Vec<u16> = self.nets.iter().map(|r| r.cfg.vxlan_port).collect();
        self.fabric.store(Arc::new(Fabric::new(entries, &ports)));
    }

    /// The configuration of what runs now: the node's, and every running network's.
    pub fn running(&self, base: &Config) -> Config {
        Config { networks: self.nets.iter().map(|r| r.cfg.clone()).collect(), ..base.clone() }
    }

    /// Apply `new` (validated, same node settings) to the running daemon: networks that are
    /// gone stop, new ones start, a network whose peers, FDB settings or storm limit changed
    /// gets its next generation in place (ports, threads and the MACs behind the peers that
    /// stay are kept), a network with any other change restarts. Networks that did not change
    /// are not touched. Underlay sockets are opened first: if that fails nothing changes.
    /// `cause` names what asks for it in the log ("reload" for SIGHUP, "cluster" for membership).
    pub fn apply(&mut self, new: &Config, cause: &'static str) -> Result<reload::Applied, ApplyError> {
        let plan = reload::Plan::new(&self.nets.iter().map(|r| r.cfg.clone()).collect::<Vec<_>>(), &new.networks);
        if plan.is_empty() {
            return Ok(reload::Applied::default());
        }
        self.listen(&new.networks).map_err(ApplyError::Listen)?;
        let mut applied = reload::Applied::default();

        // 1. stop what goes away or restarts, and let go of its devices (a restarted
        //    network reopens its TAPs by the same names)
        let mut leaving = Vec::new();
        let mut i = 0;
        while i < self.nets.len() {
            if plan.stops(&self.nets[i].cfg.name) {
                let mut r = self.nets.remove(i);
                r.halt();
                leaving.push(r);
            } else {
                i += 1;
            }
        }
        if !leaving.is_empty() {
            self.publish();
            for r in leaving {
                let (name, io) = (r.cfg.name.clone(), Arc::downgrade(&r.io));
                drop(r);
                // the underlay threads may still finish a batch on the old fabric
                wait_released(|| io.strong_count() == 0);
                if plan.removed.contains(&name) {
                    tracing::info!(network = name, "reload: network removed");
                    applied.removed.push(name);
                }
            }
        }

        // 2. the next generation of networks whose core settings changed
        let now = clock::now();
        let mut handovers = Vec::new();
        for r in self.nets.iter_mut() {
            let Some(n) = plan.updated.iter().find(|n| n.name == r.cfg.name) else { continue };
            let current = r.net();
            let (next, h) = current.successor(spec_of(n, current.spec.mtu), now);
            let next = Arc::new(next);
            let removed: Vec<String> = r.cfg.peers.iter().filter(|p| !n.peers.contains(p)).map(|p| p.to_string()).collect();
            let added: Vec<String> = n.peers.iter().filter(|p| !r.cfg.peers.contains(p)).map(|p| p.to_string()).collect();
            let old = r.io.net.swap(next.clone());
            drop(current);
            r.cfg = n.clone();
            if cause == "reload" {
                tracing::info!(network = n.name, peers_added = ?added, peers_removed = ?removed, peers = n.peers.len(),
                    "reload: network updated in place (ports, threads and the other peers' MACs kept)");
            } else {
                tracing::info!(network = n.name, peers_added = ?added, peers_removed = ?removed, peers = n.peers.len(),
                    "cluster: peers updated in place (ports, threads and the other peers' MACs kept)");
            }
            applied.updated.push(n.name.clone());
            handovers.push((old, next, h));
        }

        // 3. start the new and the restarted networks, in the new configuration's order
        for n in &new.networks {
            if !plan.starts(&n.name) {
                continue;
            }
            match self.open(n).and_then(|o| self.run_network(n, o)) {
                Ok(run) => {
                    self.nets.push(run);
                    if plan.restarted.iter().any(|r| r == &n.name) {
                        tracing::info!(network = n.name, "reload: network restarted (a setting of its ports or encapsulation changed)");
                        applied.restarted.push(n.name.clone());
                    } else {
                        tracing::info!(network = n.name, "reload: network added");
                        applied.added.push(n.name.clone());
                    }
                }
                Err(e) => {
                    tracing::error!(network = n.name, error = %e, "reload: network could not start; it stays down (fix it and reload again)");
                    applied.failed.push((n.name.clone(), e.to_string()));
                }
            }
        }
        let order = |name: &str| new.networks.iter().position(|n| n.name == name).unwrap_or(usize::MAX);
        self.nets.sort_by_key(|r| order(&r.cfg.name));
        self.publish();
        // the fast path follows before the reload counts as applied
        if let Some(f) = &self.fast {
            f.sync_now(&self.fabric);
        }
        if let Err(e) = self.start_receivers() {
            tracing::error!(error = %e, "reload: cannot start an underlay receiver; packets on that socket are not read until a restart");
        }
        self.close_unused();

        // 4. what the old generations counted and learned while threads finished on them
        for (old, next, h) in handovers {
            wait_released(|| Arc::strong_count(&old) == 1);
            h.finish(&old, &next, clock::now());
        }
        Ok(applied)
    }

    /// Periodic housekeeping: FDB ageing.
    pub fn tick(&self) {
        let now = clock::now();
        for e in &self.fabric.load().networks {
            let n = e.net.fdb.sweep(now);
            if n > 0 {
                tracing::debug!(network = e.net.name(), expired = n, "fdb entries aged out");
            }
            // after the FDB: bindings whose MAC just aged out go with it
            let n = e.net.sweep_neigh(now);
            if n > 0 {
                tracing::debug!(network = e.net.name(), removed = n, "neighbour bindings aged out or went stale");
            }
        }
        let fabric = self.fabric.load();
        self.watch.tick(&fabric, now);
        self.watch.peers(&fabric, now);
        self.watch.send_keepalives(&fabric, &self.tx, &self.keepalive, now);
        for r in &self.nets {
            if let Some(g) = &r.gre {
                self.watch.send_gre_keepalives(&r.io.net.load(), g, &self.keepalive, now);
            }
        }
    }

    /// Every counter, folded over the data-path shards (control path only).
    pub fn sample(&self) -> crate::metrics::Sample {
        sample_of(&self.fabric, &self.global, self.fast.as_deref())
    }

    /// What a sample needs besides the fabric: the fast path to fold in.
    pub fn fast_path(&self) -> Option<Arc<fastpath::FastPath>> {
        self.fast.clone()
    }

    /// Log the drop totals by reason: one line for drops no network could be charged with
    /// (`scope="-"`), one per network; reasons with a zero count are left out. Logged on
    /// SIGUSR1 and at shutdown, so every drop can be read off the log.
    pub fn log_drops(&self) {
        use crate::core::DropReason;
        let fmt = |counts: &[u64]| -> String {
            DropReason::ALL
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| format!("{}={n}", r.as_str()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        tracing::info!(scope = "-", drops = fmt(&self.global.snapshot()), "drop totals");
        for e in &self.fabric.load().networks {
            tracing::info!(scope = e.net.name(), drops = fmt(&e.net.stats.snapshot().drops), "drop totals");
        }
    }

    /// Stop the data path and close every device and socket.
    pub fn stop(mut self) {
        if let Some(f) = self.fast.take() {
            match Arc::try_unwrap(f) {
                Ok(f) => f.stop(),
                Err(_) => tracing::warn!("fast path still referenced at stop; its programs go with the process"),
            }
        }
        for r in &mut self.nets {
            r.halt();
        }
        for r in self.receivers.drain(..) {
            r.halt();
        }
        // dropping the fabric closes the TAPs; the ones we created disappear with them
        let names: Vec<String> = self.nets.iter().flat_map(|r| r.io.taps.iter().map(|t| t.name().to_string())).collect();
        self.nets.clear();
        drop(self.fabric);
        tracing::info!(taps = ?names, "stopped");
    }
}

/// Wait (at most a second) until `released()`: a thread that loaded a network or the fabric
/// before it was replaced lets go of it at the end of its batch.
fn wait_released(released: impl Fn() -> bool) {
    for _ in 0..1000 {
        if released() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    tracing::warn!("reload: a data-path thread held on to the previous configuration for more than a second");
}

fn sample_of(fabric: &SharedFabric, global: &GlobalDrops, fast: Option<&fastpath::FastPath>) -> crate::metrics::Sample {
    let served = fast.map(|f| {
        f.fold(fabric);
        f.served()
    });
    let mut s = crate::metrics::sample::take(&fabric.load(), global, clock::now(), clock::unix_now());
    for n in &mut s.networks {
        match served.as_ref().and_then(|m| m.get(&n.name)) {
            Some(f) => {
                n.datapath = "ebpf".into();
                n.fast_frames = f.frames;
            }
            None => n.datapath = "userspace".into(),
        }
    }
    s
}

/// Run until `shutdown` resolves: start, housekeeping every second, stop.
///
/// The control path (this task) also serves the metrics endpoint; a scrape only reads the
/// data path's atomics.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), StartupError> {
    run_with_reload(cfg, None, shutdown).await
}

/// What a SIGHUP does with the config file at `path`: a file that does not validate, or that
/// changes settings applied at start only, is refused and the running configuration stays; a
/// valid one is applied network by network ([`Daemon::apply`]) and `running` becomes what
/// runs now.
fn reload(path: Option<&std::path::Path>, daemon: &mut Daemon, running: &mut Config, cluster: Option<&cluster::Cluster>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP received, but the daemon was not started from a config file: nothing to reload");
        return;
    };
    let new = match crate::config::load(path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(config = %path.display(), "reload refused: {e}; the running configuration stays in force");
            return;
        }
    };
    if &new == running {
        tracing::info!(config = %path.display(), "reload: configuration unchanged");
        return;
    }
    let keys = reload::restart_only_changes(running, &new);
    if !keys.is_empty() {
        tracing::error!(config = %path.display(), keys = ?keys,
            "reload refused: these settings apply at start only (restart the daemon to change them); the running configuration stays in force");
        return;
    }
    let started = clock::monotonic();
    let effective = cluster.map_or_else(|| new.clone(), |c| c.effective(&new));
    match daemon.apply(&effective, "reload") {
        Err(e) => tracing::error!(config = %path.display(), "reload refused: {e}; the running configuration stays in force"),
        Ok(a) => {
            // what runs now, as the file says it (cluster members are not the file's)
            let names: Vec<String> = daemon.nets.iter().map(|r| r.cfg.name.clone()).collect();
            *running = Config { networks: new.networks.iter().filter(|n| names.contains(&n.name)).cloned().collect(), ..new.clone() };
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if a.failed.is_empty() {
                tracing::info!(config = %path.display(), added = ?a.added, removed = ?a.removed, updated = ?a.updated,
                    restarted = ?a.restarted, networks = running.networks.len(), took_ms = format_args!("{ms:.1}"), "reload applied");
            } else {
                tracing::error!(config = %path.display(), added = ?a.added, removed = ?a.removed, updated = ?a.updated,
                    restarted = ?a.restarted, failed = ?a.failed, networks = running.networks.len(), took_ms = format_args!("{ms:.1}"),
                    "reload applied in part: the failed networks are not running");
            }
        }
    }
}

/// [`run`], with SIGHUP re-reading `config_path`.
pub async fn run_with_reload(
    cfg: Config,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartupError> {
    // a SIGHUP must never hit the default action (terminate)
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|error| StartupError::Signal { signal: "SIGHUP", error })?;
    // before "ready": a SIGUSR1 from then on must not hit the default action (terminate)
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(|error| StartupError::Signal { signal: "SIGUSR1", error })?;
    let listen = cfg.metrics_listen;
    let metrics_listener =
        crate::metrics::http::bind(listen).await.map_err(|error| StartupError::Metrics { addr: listen, error })?;
    let admin_socket = crate::admin::server::bind(&cfg.admin_socket, cfg.admin_group)
        .map_err(|error| StartupError::Admin { path: cfg.admin_socket.display().to_string(), error })?;
    // the etcd client certificate and key are read while the daemon may still read them
    let tls = match &cfg.cluster {
        Some(k) => crate::io::etcd::TlsMaterial::read(k).map_err(StartupError::Cluster)?,
        None => None,
    };
    if let Some(to) = &cfg.node.run_as {
        privs::switch_user(to).map_err(|error| StartupError::User { user: to.user.clone(), uid: to.uid, error })?;
    }
    let mut cluster = match &cfg.cluster {
        None => None,
        Some(k) => {
            let backend = crate::io::etcd::EtcdBackend {
                cfg: k.clone(),
                underlay: cfg.node.underlay,
                tls,
                resync_every: cluster_resync_every(),
            };
            Some(cluster::Cluster::start(&cfg, k, backend))
        }
    };
    // forward at once with the static peers and the state file's members, whatever etcd does
    let start_cfg = match cluster.as_mut() {
        Some(c) => {
            c.take_changed();
            c.effective(&cfg)
        }
        None => cfg.clone(),
    };
    let mut daemon = Daemon::start(&start_cfg)?;
    let mut cfg = cfg;
    let cluster_status = cluster.as_ref().map(|c| c.status.clone());
    let (fabric, global, fast) = (daemon.fabric.clone(), daemon.global.clone(), daemon.fast_path());
    let status = cluster_status.clone();
    let answer = move |req: &crate::admin::Request| {
        let now = clock::now();
        if let crate::admin::Request::Cluster = req {
            return match &status {
                Some(s) => crate::admin::Reply::ok(&*s.lock().unwrap_or_else(|p| p.into_inner())),
                None => crate::admin::Reply::error("this daemon has no [cluster] section"),
            };
        }
        let mut reply = crate::admin::handle(req, &fabric.load(), || sample_of(&fabric, &global, fast.as_deref()), now);
        if let (crate::admin::Request::Peers { .. }, Some(s), Some(result)) = (req, &status, reply.result.as_mut()) {
            cluster::mark_sources(result, &s.lock().unwrap_or_else(|p| p.into_inner()));
        }
        reply
    };
    let admin_task = tokio::spawn(crate::admin::server::serve(admin_socket, Arc::new(answer)));
    tracing::info!(socket = %cfg.admin_socket.display(), group = ?cfg.admin_group, "admin socket ready");
    let (fabric, global, fast) = (daemon.fabric.clone(), daemon.global.clone(), daemon.fast_path());
    let status = cluster_status.clone();
    let metrics = match crate::metrics::Metrics::new(move || {
        let mut s = sample_of(&fabric, &global, fast.as_deref());
        s.cluster = status.as_ref().map(|st| st.lock().unwrap_or_else(|p| p.into_inner()).clone());
        s
    }) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            daemon.stop();
            return Err(StartupError::MetricsRegistry(e));
        }
    };
    let metrics_task = tokio::spawn(crate::metrics::http::serve(metrics_listener, metrics));
    tracing::info!(listen = %listen, "serving metrics at /metrics");
    match privs::drop_to_minimum() {
        Ok(kept) => tracing::info!(kept = ?kept, "dropped every other capability"),
        Err(e) => tracing::warn!(error = %e, "could not drop capabilities; running with the ones we have"),
    }
    tracing::info!(networks = cfg.networks.len(), "overlayd ready");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // MAC advertisement rounds (stable time 1 s; a move is applied as its record arrives)
    let mut advert_tick = tokio::time::interval(Duration::from_millis(250));
    advert_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let cluster_event = async {
            match cluster.as_mut() {
                Some(c) => c.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                daemon.tick();
                if let Some(c) = cluster.as_mut() {
                    c.tick(&daemon.fabric);
                }
            }
            _ = advert_tick.tick() => {
                if let Some(c) = cluster.as_mut() {
                    c.advertise(&daemon.fabric);
                }
            }
            _ = usr1.recv() => daemon.log_drops(),
            _ = hup.recv() => reload(config_path.as_deref(), &mut daemon, &mut cfg, cluster.as_ref()),
            ev = cluster_event => {
                if let Some(c) = cluster.as_mut() {
                    c.handle(ev);
                    c.advertise(&daemon.fabric);
                }
            }
        }
        if let Some(c) = cluster.as_mut() {
            if !c.take_changed() {
                continue;
            }
            let effective = c.effective(&cfg);
            if let Err(e) = daemon.apply(&effective, "cluster") {
                tracing::error!("cluster: cannot apply the members: {e}");
            }
            c.advertise(&daemon.fabric);
        }
    }
    tracing::info!("shutting down");
    if let Some(c) = cluster.as_mut() {
        c.leave().await;
    }
    daemon.log_drops();
    // the exporter and the admin socket hold the fabric: let them go first so that stop()
    // really closes the TAPs (and the admin socket file is removed)
    metrics_task.abort();
    admin_task.abort();
    let _cancelled = metrics_task.await;
    let _cancelled = admin_task.await;
    daemon.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An underlay address that no interface holds is refused at start-up, naming the key.
    #[test]
    fn start_up_names_node_underlay_when_no_interface_holds_it() {
        let text = "[node]\nunderlay = \"198.18.0.1\"\n\n[[networks]]\nname = \"blue\"\nencap = \"vxlan\"\nvni = 42\ntap = \"ovl-blue\"\npeers = [\"198.18.0.2\"]\n";
        let cfg = crate::config::from_str_with_env(text, Vec::<(String, String)>::new()).expect("a valid configuration");
        let e = underlay_mtu(&cfg).expect_err("198.18.0.1 is no address of this namespace");
        assert!(matches!(e, StartupError::UnderlayNotLocal(a) if a == cfg.node.underlay), "{e:?}");
        assert_eq!(e.to_string(), "node.underlay 198.18.0.1 is not an address of any interface in this network namespace");
    }
}
