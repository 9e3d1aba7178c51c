//! What the data-path threads share about each network, at the bottom of the daemon's
//! layers (threads → [`switch`](super::switch) → [`forward`](super::forward) /
//! [`gre`](super::gre) → here): the network's current generation, its local ports, the
//! reading side of each TAP, and the rate limit every thread logs through.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::core::fabric::Fabric;
use crate::core::ports::PortTable;
use crate::core::stats::Shard;
use crate::core::{Instant, LocalPort, Network};
use crate::io::packet::PacketPort;
use crate::io::tap::Tap;
use crate::io::vmsock::{DgramPeer, VmConn};

/// Room in front of every frame read from a local port: the tunnel header (VXLAN 8 bytes,
/// GRE up to 12) is written there, and a TAP's virtio-net header is read into its end.
pub const HEADROOM: usize = 64;

/// What a local port writes to.
#[derive(Debug, Clone)]
pub enum LocalIo {
    Tap(Arc<Tap>),
    Vm(Arc<VmConn>),
    /// A VM on the network's datagram socket (`-netdev dgram`).
    Dgram(Arc<DgramPeer>),
    /// An existing interface (a VM's TAP held by QEMU) bound with a packet socket.
    Packet(Arc<PacketPort>),
}

pub type Ports = PortTable<LocalIo>;

/// What the I/O side attaches to each network: its local ports, and the network's current
/// generation.
#[derive(Debug)]
pub struct NetIo {
    /// The network as the data-path threads of its ports see it: each loads it once per batch.
    /// A reload that changes only the network's peers or FDB settings publishes its next
    /// generation here (see [`crate::core::handover`]); ports and threads stay.
    pub net: ArcSwap<Network>,
    /// The TAP devices opened by the daemon, in config order (also in `ports`).
    pub taps: Vec<Arc<Tap>>,
    /// Every live local port (TAPs and VM connections); replaced whole on a connect or a
    /// disconnect, read lock-free by the data path.
    pub ports: ArcSwap<Ports>,
    /// Serialises changes of `ports` (connects, disconnects); never taken by the data path.
    pub port_changes: Mutex<()>,
    /// The reading side of each TAP port, for its thread and for run to completion.
    pub drains: Vec<Arc<PortDrain>>,
}

impl NetIo {
    /// The configured ports (TAPs, attached interfaces) in config order: slots 0...
    pub fn new(net: Arc<Network>, fixed: Vec<LocalIo>) -> NetIo {
        let taps = fixed.iter().filter_map(|p| if let LocalIo::Tap(t) = p { Some(t.clone()) } else { None }).collect();
        let ports = Ports::new(fixed);
        let drains = ports.iter().filter(|(_, p)| matches!(p, LocalIo::Tap(_))).map(|(lp, _)| Arc::new(PortDrain::new(lp))).collect();
        NetIo { net: ArcSwap::new(net), taps, ports: ArcSwap::from_pointee(ports), port_changes: Mutex::new(()), drains }
    }

    /// The reading side of TAP port `port`.
    pub fn drain(&self, port: LocalPort) -> Option<&Arc<PortDrain>> {
        self.drains.iter().find(|d| d.port == port)
    }
}

pub type SharedFabric = Arc<ArcSwap<Fabric<Arc<NetIo>>>>;

/// Log at most once per second per call site and thread, with the count of what was muted.
#[derive(Debug, Default)]
pub struct RateLimit {
    last: Option<Instant>,
    muted: u64,
}

impl RateLimit {
    /// `Some(muted)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_since(t).as_millis() < 1000 => {
                self.muted += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.muted))
            }
        }
    }
}

/// Whoever reads a TAP port: read one batch, switch it and send all of it.
pub trait Drain: Send {
    /// Read and send one batch; `inline` when an underlay thread does it right after writing
    /// into the TAP. Returns the frames read.
    fn drain(&mut self, shard: Shard, inline: bool) -> usize;
}

/// A TAP port's reader, shared by the port's thread and the underlay threads.
///
/// Run to completion: a frame an underlay thread writes into a TAP is handled by the host's
/// stack inside that write, and what the host answers (an echo reply, an ARP reply, a TCP
/// ACK) is often queued on the TAP by the time the write returns. The underlay thread then
/// reads and sends it itself instead of waking the port's thread for it. One reader at a
/// time: whoever holds the lock reads a batch and sends all of it before letting go, so the
/// frames of a flow leave in the order the TAP queued them. The port's thread waits for the
/// lock; an underlay thread only tries it, and leaves the TAP to the port's thread if it is
/// taken.
pub struct PortDrain {
    pub port: LocalPort,
    reader: Mutex<Option<Box<dyn Drain>>>,
}

impl std::fmt::Debug for PortDrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortDrain").field("port", &self.port).finish()
    }
}

impl PortDrain {
    fn new(port: LocalPort) -> Self {
        PortDrain { port, reader: Mutex::new(None) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Box<dyn Drain>>> {
        self.reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The port's thread starts (`Some`) or stops (`None`) reading the TAP.
    pub fn set(&self, reader: Option<Box<dyn Drain>>) {
        *self.lock() = reader;
    }

    /// Read and send one batch, waiting for whoever is at it: what the port's thread does.
    pub fn drain(&self, shard: Shard) -> usize {
        self.lock().as_mut().map_or(0, |r| r.drain(shard, false))
    }

    /// Read and send one batch from the TAP if no one else is at it: what an underlay thread
    /// does after writing into it. Returns the frames read.
    pub fn try_drain(&self, shard: Shard) -> usize {
        match self.reader.try_lock() {
            Ok(mut r) => r.as_mut().map_or(0, |r| r.drain(shard, true)),
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().as_mut().map_or(0, |r| r.drain(shard, true)),
            Err(std::sync::TryLockError::WouldBlock) => 0,
        }
    }
}
