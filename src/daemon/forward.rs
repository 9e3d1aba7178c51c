//! Delivery to local ports of any kind: TAP devices and VM connections.
//!
//! The data-path threads decide with the core ([`Network::from_local`],
//! [`Network::from_peer`]) and hand frames for local ports to [`Forwarder`], which looks the
//! port up in the network's current [`PortTable`] (one lock-free snapshot per batch), writes
//! it, and counts the outcome. A port that disconnected after the FDB named it is simply not
//! in the table any more (or its slot has a new generation): the frame is dropped and counted.

use std::io::IoSlice;

use arc_swap::Guard;
use std::sync::Arc;

use crate::core::offload::{TsoPlan, VnetHdr};
use crate::core::pmtu::{self, Family, PortBuckets};
use crate::core::stats::{PmtuEvent, Shard};
use crate::core::{DropReason, Instant, LocalPort, Network};
use crate::io::vmsock::SendError;

use super::netio::{LocalIo, NetIo, Ports, RateLimit};

/// What every delivery of one batch shares: the network's generation and its ports as the
/// batch sees them, the counter shard of the thread, and the time.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub net: &'a Network,
    pub ports: &'a Ports,
    pub shard: Shard,
    pub now: Instant,
}

/// Writes frames to local ports for one data-path thread, logging failures rate-limited.
#[derive(Debug, Default)]
pub struct Forwarder {
    rl_tap: RateLimit,
    rl_vm: RateLimit,
    /// One segment of a super-frame cut for a port that takes no offloads.
    scratch: Vec<u8>,
}

impl Forwarder {
    /// The ports of `io` as they are now; hold it for one batch, not longer.
    #[inline]
    pub fn ports(io: &NetIo) -> Guard<Arc<Ports>> {
        io.ports.load()
    }

    /// Write `frame` to `port`, counting the outcome.
    pub fn deliver(&mut self, cx: &Ctx<'_>, port: LocalPort, frame: &[u8]) {
        let Ctx { net, ports, shard, now } = *cx;
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

    /// Deliver a TCP or UDP super-frame (read from an offloading TAP, or a kernel peer's tunnel
    /// GSO packet) with its virtio-net header `vh`: as is to a TAP that takes offloads, cut into
    /// ordinary frames for any other port.
    pub fn deliver_super(&mut self, cx: &Ctx<'_>, port: LocalPort, vh: &VnetHdr, frame: &[u8], plan: &TsoPlan) {
        let Ctx { net, ports, shard, now } = *cx;
        match ports.get(port) {
            // a UDP super-frame only to a TAP that takes UDP segmentation offload
            Some(LocalIo::Tap(tap)) if tap.vnet_hdr() && (tap.uso() || !plan.layout.udp) => match tap.write_vectored(&[IoSlice::new(&vh.to_bytes()), IoSlice::new(frame)]) {
                Ok(_) => net.stats.tap_tx(shard, frame.len()),
                Err(e) => {
                    net.stats.count_drop(shard, DropReason::TapWriteFailed);
                    if let Some(muted) = self.rl_tap.allow(now) {
                        tracing::warn!(network = net.name(), tap = tap.name(), error = %e, muted, "write to tap failed");
                    }
                }
            },
            Some(_) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                for i in 0..plan.segments {
                    plan.segment_into(frame, i, &mut scratch);
                    self.deliver(cx, port, &scratch);
                }
                self.scratch = scratch;
            }
            None => net.stats.count_drop(shard, DropReason::PortWriteFailed),
        }
    }

    /// Flood `frame` to every local port but `ingress`.
    pub fn flood(&mut self, cx: &Ctx<'_>, ingress: Option<LocalPort>, frame: &[u8]) {
        for (p, _) in cx.ports.others(ingress) {
            self.deliver(cx, p, frame);
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
    pub fn too_big(&mut self, fwd: &mut Forwarder, cx: &Ctx<'_>, port: LocalPort, frame: &[u8]) {
        let Ctx { net, shard, now, .. } = *cx;
        net.stats.count_drop(shard, DropReason::MtuExceeded);
        let Ok(sig) = pmtu::too_big(frame, net.spec.mtu, &net.spec.pmtu_sources, &mut self.buf) else { return };
        if !self.buckets.allow(port, now) {
            net.stats.pmtu(shard, PmtuEvent::RateLimited);
            return;
        }
        fwd.deliver(cx, port, &self.buf[..sig.len]);
        net.stats.pmtu(shard, if sig.family == Family::V4 { PmtuEvent::SignalV4 } else { PmtuEvent::SignalV6 });
    }
}
