//! Delivery to local ports of any kind: TAP devices and VM connections.
//!
//! The data-path threads decide with the core ([`Network::from_local`],
//! [`Network::from_peer`]) and hand frames for local ports to [`Forwarder`], which looks the
//! port up in the network's current [`PortTable`] (one lock-free snapshot per batch), writes
//! it, and counts the outcome. A port that disconnected after the FDB named it is simply not
//! in the table any more (or its slot has a new generation): the frame is dropped and counted.

use std::io::IoSlice;
use std::sync::Arc;

use arc_swap::Guard;

use crate::core::ports::PortTable;
use crate::core::offload::{TsoPlan, VnetHdr};
use crate::core::pmtu::{self, Family, PortBuckets};
use crate::core::stats::{PmtuEvent, Shard};
use crate::core::{DropReason, Instant, LocalPort, Network};
use crate::io::packet::PacketPort;
use crate::io::tap::Tap;
use crate::io::vmsock::{DgramPeer, SendError, VmConn};

use super::datapath::{NetIo, RateLimit};

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

/// Writes frames to local ports for one data-path thread, logging failures rate-limited.
#[derive(Debug, Default)]
pub struct Forwarder {
    rl_tap: RateLimit,
    rl_vm: RateLimit,
}

impl Forwarder {
    /// The ports of `io` as they are now; hold it for one batch, not longer.
    #[inline]
    pub fn ports(io: &NetIo) -> Guard<Arc<Ports>> {
        io.ports.load()
    }

    /// Write `frame` to `port`, counting the outcome.
    pub fn deliver(&mut self, net: &Network, ports: &Ports, port: LocalPort, frame: &[u8], shard: Shard, now: Instant) {
        match ports.get(port) {
            Some(LocalIo::Tap(tap)) => match tap.write(frame) {
                Ok(_) => net.stats.tap_tx(shard, frame.len()),
                Err(e) => {
                    net.stats.count_drop(shard, DropReason::TapWriteFailed);
                    if let Some(muted) = self.rl_tap.allow(now) {
                        tracing::warn!(network = net.name(), tap = tap.name(), error = %e, muted, "write to tap failed");
                    }
                }
            },
            Some(LocalIo::Vm(vm)) => match vm.send_frame(frame) {
                Ok(()) => net.stats.tap_tx(shard, frame.len()),
                Err(SendError::Busy) => net.stats.count_drop(shard, DropReason::PortBusy),
                Err(SendError::Failed(e)) => {
                    net.stats.count_drop(shard, DropReason::PortWriteFailed);
                    if let Some(muted) = self.rl_vm.allow(now) {
                        tracing::warn!(network = net.name(), vm_pid = vm.pid, error = %e, muted, "write to vm failed");
                    }
                }
            },
            Some(LocalIo::Dgram(vm)) => match vm.send_frame(frame) {
                Ok(()) => net.stats.tap_tx(shard, frame.len()),
                Err(SendError::Busy) => net.stats.count_drop(shard, DropReason::PortBusy),
                Err(SendError::Failed(e)) => {
                    net.stats.count_drop(shard, DropReason::PortWriteFailed);
                    if !vm.is_gone()
                        && let Some(muted) = self.rl_vm.allow(now)
                    {
                        tracing::warn!(network = net.name(), vm = %vm.path.display(), error = %e, muted, "send to vm failed");
                    }
                }
            },
            Some(LocalIo::Packet(dev)) => match dev.write(frame) {
                Ok(_) => net.stats.tap_tx(shard, frame.len()),
                Err(e) => {
                    let busy = e.kind() == std::io::ErrorKind::WouldBlock;
                    net.stats.count_drop(shard, if busy { DropReason::PortBusy } else { DropReason::TapWriteFailed });
                    if !busy
                        && let Some(muted) = self.rl_tap.allow(now)
                    {
                        tracing::warn!(network = net.name(), interface = dev.name(), error = %e, muted, "write to interface failed");
                    }
                }
            },
            // gone since the FDB (or the caller) named it
            None => net.stats.count_drop(shard, DropReason::PortWriteFailed),
        }
    }

    /// Deliver a TCP super-frame (read from an offloading TAP, or a kernel peer's tunnel GSO
    /// packet) with its virtio-net header `vh`: as is to a TAP that takes offloads, cut into
    /// ordinary frames (headers built in `scratch`) for any other port.
    #[allow(clippy::too_many_arguments)]
    pub fn deliver_super(&mut self, net: &Network, ports: &Ports, port: LocalPort, vh: &VnetHdr, frame: &[u8], plan: &TsoPlan, scratch: &mut Vec<u8>, shard: Shard, now: Instant) {
        match ports.get(port) {
            Some(LocalIo::Tap(tap)) if tap.vnet_hdr() => match tap.write_vectored(&[IoSlice::new(&vh.to_bytes()), IoSlice::new(frame)]) {
                Ok(_) => net.stats.tap_tx(shard, frame.len()),
                Err(e) => {
                    net.stats.count_drop(shard, DropReason::TapWriteFailed);
                    if let Some(muted) = self.rl_tap.allow(now) {
                        tracing::warn!(network = net.name(), tap = tap.name(), error = %e, muted, "write to tap failed");
                    }
                }
            },
            Some(_) => {
                for i in 0..plan.segments {
                    scratch.clear();
                    scratch.resize(plan.header_len(), 0);
                    plan.write_header(frame, i, scratch);
                    scratch.extend_from_slice(&frame[plan.payload_range(i)]);
                    self.deliver(net, ports, port, scratch, shard, now);
                }
            }
            None => net.stats.count_drop(shard, DropReason::PortWriteFailed),
        }
    }

    /// Flood `frame` to every local port but `ingress`.
    pub fn flood(&mut self, net: &Network, ports: &Ports, ingress: Option<LocalPort>, frame: &[u8], shard: Shard, now: Instant) {
        for (p, _) in ports.others(ingress) {
            self.deliver(net, ports, p, frame, shard, now);
        }
    }
}

/// Path-MTU signals of one data-path thread: a rate limit per port and the reply buffer,
/// allocated once when the thread starts (see [`crate::core::pmtu`]).
#[derive(Debug)]
pub struct PmtuSignals {
    buckets: PortBuckets,
    buf: Vec<u8>,
}

impl Default for PmtuSignals {
    fn default() -> Self {
        PmtuSignals { buckets: PortBuckets::default(), buf: vec![0; pmtu::MAX_REPLY] }
    }
}

impl PmtuSignals {
    /// `frame` from local port `port` is over the network's MTU: count the drop, and answer
    /// with ICMP "fragmentation needed" / ICMPv6 "packet too big" out of the same port, within
    /// the port's rate limit. `frame` may be cut short (the reply quotes its start only).
    #[allow(clippy::too_many_arguments)]
    pub fn too_big(&mut self, fwd: &mut Forwarder, net: &Network, ports: &Ports, port: LocalPort, frame: &[u8], shard: Shard, now: Instant) {
        net.stats.count_drop(shard, DropReason::MtuExceeded);
        let Ok(sig) = pmtu::too_big(frame, net.spec.mtu, &net.spec.pmtu_sources, &mut self.buf) else { return };
        if !self.buckets.allow(port, now) {
            net.stats.pmtu(shard, PmtuEvent::RateLimited);
            return;
        }
        fwd.deliver(net, ports, port, &self.buf[..sig.len], shard, now);
        net.stats.pmtu(shard, if sig.family == Family::V4 { PmtuEvent::SignalV4 } else { PmtuEvent::SignalV6 });
    }
}
