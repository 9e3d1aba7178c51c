//! The daemon: opens the devices and sockets a configuration asks for, runs the data path on
//! dedicated threads, and the control path (timers, signals) on tokio.
//!
//! Start-up order: underlay MTU → UDP sockets → TAP devices → data-path threads → "ready".
//! Any failure before "ready" is a [`StartupError`] that names what failed; nothing is left
//! behind (TAPs we created vanish when their descriptors close).

pub mod datapath;
pub mod forward;
pub mod gre;
pub mod packetport;
pub mod vmport;
pub mod watch;
pub mod privs;

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
use datapath::{NetIo, PortThread, SharedFabric, UnderlayThread};
use forward::LocalIo;
use packetport::PacketThread;
use vmport::{VmDgramServer, VmPortServer};
use gre::{GreParams, GreUnderlayThread};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("underlay: {0}")]
    Underlay(String),
    #[error("{0}")]
    Tap(std::io::Error),
    #[error("{0}")]
    Socket(std::io::Error),
    #[error("spawn thread: {0}")]
    Thread(std::io::Error),
    #[error("metrics.listen {addr}: {error}")]
    Metrics { addr: SocketAddr, error: std::io::Error },
    #[error("metrics: {0}")]
    MetricsRegistry(prometheus::Error),
    #[error("admin.socket {path}: {error}")]
    Admin { path: String, error: std::io::Error },
    #[error("node.user: {0}")]
    User(String),
}

impl crate::admin::PortNames for Arc<NetIo> {
    fn local_port_name(&self, index: usize) -> String {
        let ports = self.ports.load();
        // `index` is the whole LocalPort value (slot and generation); name VMs by slot
        let port = u16::try_from(index).ok().map(crate::core::LocalPort);
        let slot = port.map_or(index, |p| p.slot());
        match port.and_then(|p| ports.get(p)) {
            Some(forward::LocalIo::Tap(t)) => t.name().to_string(),
            Some(forward::LocalIo::Packet(d)) => d.name().to_string(),
            Some(forward::LocalIo::Vm(c)) if c.pid > 0 => format!("vm{slot} (pid {})", c.pid),
            Some(forward::LocalIo::Vm(_)) => format!("vm{slot}"),
            Some(forward::LocalIo::Dgram(d)) => format!("vm{slot} ({})", d.path.display()),
            None => format!("port{slot}"),
        }
    }
}

/// Underlay MTU when nothing better is known.
const FALLBACK_UNDERLAY_MTU: u16 = 1500;

/// A running daemon. Dropping it without [`Daemon::stop`] leaves threads running until exit.
pub struct Daemon {
    pub fabric: SharedFabric,
    pub global: Arc<GlobalDrops>,
    stop: Arc<StopFd>,
    threads: Vec<JoinHandle<()>>,
    watch: watch::Watch,
    /// The send sockets, for keepalives from the control path.
    tx: Arc<TxSockets>,
    /// This node's keepalive frame (its source MAC derives from the underlay address).
    keepalive: [u8; crate::core::liveness::KEEPALIVE_LEN],
}

/// The underlay MTU: configured, or read off the interface that holds the underlay address.
fn underlay_mtu(cfg: &Config) -> Result<u16, StartupError> {
    if let Some(m) = cfg.node.underlay_mtu {
        return Ok(m);
    }
    let ifname = sys::interface_of(cfg.node.underlay)
        .map_err(|e| StartupError::Underlay(format!("cannot list interfaces: {e}")))?
        .ok_or_else(|| {
            StartupError::Underlay(format!(
                "node.underlay {} is not an address of any interface in this network namespace",
                cfg.node.underlay
            ))
        })?;
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

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StartupError> {
    // capabilities are per thread: each data-path thread drops its own before it starts
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let _ = privs::drop_to_minimum();
            f()
        })
        .map_err(StartupError::Thread)
}

impl Daemon {
    /// Open everything `cfg` asks for and start the data path.
    pub fn start(cfg: &Config) -> Result<Daemon, StartupError> {
        let umtu = underlay_mtu(cfg)?;
        let underlay = cfg.node.underlay;
        let ports: BTreeSet<u16> = cfg.networks.iter().filter(|n| n.encap == Encap::Vxlan).map(|n| n.vxlan_port).collect();
        let mut rxs = Vec::new();
        for &p in &ports {
            rxs.push(RxSocket::bind(SocketAddr::new(underlay, p)).map_err(StartupError::Socket)?);
        }
        let tx = Arc::new(TxSockets::bind(underlay, udp::SOURCE_PORTS).map_err(StartupError::Socket)?);
        let gre_sock = match cfg.networks.iter().any(|n| n.encap.is_gre()) {
            true => Some(Arc::new(GreSocket::open(underlay).map_err(StartupError::Socket)?)),
            false => None,
        };

        let mut entries = Vec::new();
        let mut vxlan_ports = Vec::new();
        let mut listeners = Vec::new();
        let mut dgrams = Vec::new();
        for n in &cfg.networks {
            let overhead = n.overhead(underlay);
            let tap_mtu = n.mtu.unwrap_or(umtu.saturating_sub(overhead));
            if usize::from(tap_mtu) + usize::from(overhead) > usize::from(umtu) {
                tracing::warn!(network = n.name, tap_mtu, underlay_mtu = umtu, overhead,
                    "TAP MTU plus encapsulation exceeds the underlay MTU; large frames will be fragmented or dropped");
            }
            let mut taps = Vec::with_capacity(n.taps.len());
            for (i, name) in n.taps.iter().enumerate() {
                // the address goes on the first TAP only: one subnet, one host interface
                // offloads pay off where the underlay has GSO/GRO: VXLAN (UDP). Raw GRE sockets
                // have neither, so a GRE network's TAPs hand over ordinary frames.
                let offload = cfg.node.offload && n.encap == Encap::Vxlan;
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
            if let Some(v) = &n.vm_socket {
                let l = VmListener::bind(v).map_err(StartupError::Socket)?;
                tracing::info!(network = n.name, path = %l.path().display(), mode = format_args!("{:o}", v.mode),
                    owner = v.owner, group = v.group, "listening for VMs (QEMU -netdev stream)");
                listeners.push((entries.len(), l));
            }
            if let Some(v) = &n.vm_dgram_socket {
                let d = VmDgramSocket::bind(v).map_err(StartupError::Socket)?;
                tracing::info!(network = n.name, path = %d.path().display(), mode = format_args!("{:o}", v.mode),
                    owner = v.owner, group = v.group, "listening for VMs (QEMU -netdev dgram)");
                dgrams.push((entries.len(), Arc::new(d)));
            }
            tracing::info!(network = n.name, mtu = tap_mtu, vni = %n.vni, encap = %n.encap,
                gre = ?match n.encap { Encap::Gre(o) => Some(o), Encap::Vxlan => None }, peers = n.peers.len(),
                taps = n.taps.len(), vm_socket = n.vm_socket.is_some(), vm_dgram_socket = n.vm_dgram_socket.is_some(), "network up");
            entries.push(NetEntry { net: Arc::new(Network::new(spec_of(n, tap_mtu))), io: Arc::new(NetIo::new(taps)) });
            vxlan_ports.push(n.vxlan_port);
        }
        let fabric: SharedFabric = Arc::new(ArcSwap::from_pointee(Fabric::new(entries, &vxlan_ports)));
        let global = Arc::new(GlobalDrops::default());
        let stop = Arc::new(StopFd::new().map_err(StartupError::Thread)?);

        let mut threads = Vec::new();
        for (e, n) in fabric.load().networks.iter().zip(&cfg.networks) {
            let gre = gre_params(n, &gre_sock);
            for (port, local) in e.io.ports.load().iter() {
                let gre = gre.clone();
                let (net, io, tx, stop) = (e.net.clone(), e.io.clone(), tx.clone(), stop.clone());
                match local {
                    LocalIo::Tap(tap) => {
                        let t = PortThread { net, io, port, tx, stop, gre };
                        threads.push(spawn(format!("port-{}", tap.name()), move || t.run())?);
                    }
                    LocalIo::Packet(dev) => {
                        let t = PacketThread { net, io, port, dev: dev.clone(), tx, stop, gre };
                        threads.push(spawn(format!("port-{}", dev.name()), move || t.run())?);
                    }
                    LocalIo::Vm(_) | LocalIo::Dgram(_) => {}
                }
            }
        }
        for (i, listener) in listeners {
            let e = &fabric.load().networks[i];
            let gre = gre_params(&cfg.networks[i], &gre_sock);
            let s = VmPortServer { listener, net: e.net.clone(), io: e.io.clone(), tx: tx.clone(), stop: stop.clone(), gre };
            threads.push(spawn(format!("vmsock-{}", e.net.name()), move || s.run())?);
        }
        for (i, sock) in dgrams {
            let e = &fabric.load().networks[i];
            let gre = gre_params(&cfg.networks[i], &gre_sock);
            let s = VmDgramServer { sock, net: e.net.clone(), io: e.io.clone(), tx: tx.clone(), stop: stop.clone(), gre };
            threads.push(spawn(format!("vmdgram-{}", e.net.name()), move || s.run())?);
        }
        let slot = usize::from(umtu).max(2048) + 64;
        for rx in rxs {
            tracing::info!(socket = %rx.local, "listening for VXLAN");
            let t = UnderlayThread { rx, fabric: fabric.clone(), global: global.clone(), stop: stop.clone(), slot, offload: cfg.node.offload };
            threads.push(spawn("underlay".into(), move || t.run())?);
        }
        if let Some(sock) = gre_sock {
            tracing::info!(local = %sock.local, "listening for GRE");
            let t = GreUnderlayThread { sock, fabric: fabric.clone(), global: global.clone(), stop: stop.clone(), slot };
            threads.push(spawn("underlay-gre".into(), move || t.run())?);
        }
        tracing::info!(source_ports = ?tx.ports(), "sending VXLAN");
        let keepalive = crate::core::liveness::keepalive_frame(watch::node_id(underlay));
        Ok(Daemon { fabric, global, stop, threads, watch: watch::Watch::default(), tx, keepalive })
    }

    /// Periodic housekeeping: FDB ageing.
    pub fn tick(&self) {
        let now = clock::now();
        for e in &self.fabric.load().networks {
            let n = e.net.fdb.sweep(now);
            if n > 0 {
                tracing::debug!(network = e.net.name(), expired = n, "fdb entries aged out");
            }
        }
        let fabric = self.fabric.load();
        self.watch.tick(&fabric, now);
        self.watch.peers(&fabric, now);
        self.watch.send_keepalives(&fabric, &self.tx, &self.keepalive, now);
    }

    /// Every counter, folded over the data-path shards (control path only).
    pub fn sample(&self) -> crate::metrics::Sample {
        sample_of(&self.fabric, &self.global)
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
    pub fn stop(self) {
        self.stop.raise();
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a data-path thread panicked");
            }
        }
        // dropping the fabric closes the TAPs; the ones we created disappear with them
        let names: Vec<String> = self.fabric.load().networks.iter().flat_map(|e| e.io.taps.iter().map(|t| t.name().to_string())).collect();
        drop(self.fabric);
        tracing::info!(taps = ?names, "stopped");
    }
}

fn sample_of(fabric: &SharedFabric, global: &GlobalDrops) -> crate::metrics::Sample {
    crate::metrics::sample::take(&fabric.load(), global, clock::now(), clock::unix_now())
}

/// Run until `shutdown` resolves: start, housekeeping every second, stop.
///
/// The control path (this task) also serves the metrics endpoint; a scrape only reads the
/// data path's atomics.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), StartupError> {
    run_with_reload(cfg, None, shutdown).await
}

/// What a SIGHUP does with the config file at `path`: a file that does not validate is refused
/// and the running configuration stays; a valid one is compared with the running one.
fn reload(path: Option<&std::path::Path>, running: &Config) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP received, but the daemon was not started from a config file: nothing to reload");
        return;
    };
    match crate::config::load(path) {
        Err(e) => tracing::error!(config = %path.display(), "reload refused: {e}; the running configuration stays in force"),
        Ok(new) if &new == running => tracing::info!(config = %path.display(), "reload: configuration unchanged"),
        Ok(new) => {
            let names = |c: &Config| c.networks.iter().map(|n| n.name.clone()).collect::<std::collections::BTreeSet<_>>();
            let (old_n, new_n) = (names(running), names(&new));
            let changed: Vec<&String> = new
                .networks
                .iter()
                .filter(|n| running.networks.iter().any(|o| o.name == n.name && o != *n))
                .map(|n| &n.name)
                .collect();
            tracing::warn!(
                config = %path.display(),
                added = ?new_n.difference(&old_n).collect::<Vec<_>>(),
                removed = ?old_n.difference(&new_n).collect::<Vec<_>>(),
                changed = ?changed,
                "reload: the configuration is valid but differs; live changes are not applied yet, restart to apply them (the running configuration stays in force)"
            );
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
        .map_err(|e| StartupError::Thread(std::io::Error::new(e.kind(), format!("SIGHUP handler: {e}"))))?;
    // before "ready": a SIGUSR1 from then on must not hit the default action (terminate)
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(|e| StartupError::Thread(std::io::Error::new(e.kind(), format!("SIGUSR1 handler: {e}"))))?;
    let listen = cfg.metrics_listen;
    let metrics_listener =
        crate::metrics::http::bind(listen).await.map_err(|error| StartupError::Metrics { addr: listen, error })?;
    let admin_socket = crate::admin::server::bind(&cfg.admin_socket)
        .map_err(|error| StartupError::Admin { path: cfg.admin_socket.display().to_string(), error })?;
    if let Some(to) = &cfg.node.run_as {
        privs::switch_user(to)?;
    }
    let daemon = Daemon::start(&cfg)?;
    let (fabric, global) = (daemon.fabric.clone(), daemon.global.clone());
    let answer = move |req: &crate::admin::Request| {
        let now = clock::now();
        crate::admin::handle(req, &fabric.load(), || sample_of(&fabric, &global), now)
    };
    let admin_task = tokio::spawn(crate::admin::server::serve(admin_socket, Arc::new(answer)));
    tracing::info!(socket = %cfg.admin_socket.display(), "admin socket ready");
    let (fabric, global) = (daemon.fabric.clone(), daemon.global.clone());
    let metrics = match crate::metrics::Metrics::new(move || sample_of(&fabric, &global)) {
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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => daemon.tick(),
            _ = usr1.recv() => daemon.log_drops(),
            _ = hup.recv() => reload(config_path.as_deref(), &cfg),
        }
    }
    tracing::info!("shutting down");
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
