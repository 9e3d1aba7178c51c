//! The control path's once-a-second look at the data path's state: MACs pinned for moving too
//! often, MAC-move rates that suggest a loop. Everything here turns counters and queued events
//! of the core into log lines, rate-limited so a storm of events is a few lines, not a flood.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::core::fabric::Fabric;
use crate::core::liveness::{KEEPALIVE_LEN, PeerState};
use crate::core::wire::vxlan;
use crate::core::{Encap, Instant, Port};
use crate::core::Network;
use crate::io::{SendQueue, TransmitSocket, TxItem};
use crate::io::udp::TxSockets;

use super::gre::GreParams;

/// MAC moves per second in one network above which the daemon warns of a probable loop.
pub const LOOP_MOVES_PER_SEC: u64 = 20;
/// Pin events logged one by one per network and tick; more are summarised in one line.
const PIN_LINES_PER_TICK: usize = 4;
/// At most one loop warning per network in this many milliseconds.
const LOOP_WARN_INTERVAL_MS: u64 = 10_000;

#[derive(Debug, Default)]
struct NetWatch {
    moved: u64,
    at: Option<Instant>,
    last_loop_warn: Option<Instant>,
    moves_since_warn: u64,
}

/// Per-network memory of the previous tick.
#[derive(Debug, Default)]
pub struct Watch {
    nets: Mutex<HashMap<String, NetWatch>>,
    send_errors: Mutex<super::netio::RateLimit>,
}

/// A 32-bit id of this node for its keepalive source MAC: FNV-1a of the underlay address.
pub fn node_id(underlay: std::net::IpAddr) -> u32 {
    let bytes = match underlay {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

pub(crate) fn port_name(p: Port) -> String {
    match p {
        Port::Local(l) => format!("local port {}", l.slot()),
        Port::Peer(i) => format!("peer {}", i.0),
    }
}

impl Watch {
    /// Decide which peers are up or down; log the changes (a peer going down has its MACs
    /// flushed by the core).
    pub fn peers<P>(&self, fabric: &Fabric<P>, now: Instant) {
        for e in &fabric.networks {
            for p in &e.net.peers {
                if p.liveness.newly_speaks() {
                    tracing::info!(network = e.net.name(), peer = %p.addr.ip(), "peer runs overlayd (sends keepalives): UDP GSO towards it from now on");
                }
            }
            for c in e.net.check_peers(now) {
                let peer = e.net.peers.get(usize::from(c.peer.0)).map(|p| p.addr.ip().to_string()).unwrap_or_default();
                match c.state {
                    PeerState::Up => tracing::info!(network = e.net.name(), peer, "peer up"),
                    PeerState::Down => tracing::warn!(
                        network = e.net.name(), peer, silent_secs = c.silent_for.as_secs_f32(), flushed_macs = c.flushed,
                        "peer down: nothing received from it; the MACs behind it were flushed"
                    ),
                    PeerState::Unknown => {}
                }
            }
        }
    }

    /// One keepalive to every peer of every VXLAN network (GRE networks:
    /// [`Self::send_gre_keepalives`]).
    pub fn send_keepalives<P>(&self, fabric: &Fabric<P>, tx: &TxSockets, frame: &[u8; KEEPALIVE_LEN], now: Instant) {
        let mut buf = [0u8; vxlan::HEADER_LEN + KEEPALIVE_LEN];
        buf[vxlan::HEADER_LEN..].copy_from_slice(frame);
        for e in &fabric.networks {
            if e.net.spec.encap != Encap::Vxlan {
                continue;
            }
            vxlan::emit(&mut buf, e.net.spec.vni);
            for (i, p) in e.net.peers.iter().enumerate() {
                if let Err(err) = tx.send_one(i, &buf, p.addr) {
                    let mut rl = self.send_errors.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(muted) = rl.allow(now) {
                        tracing::debug!(network = e.net.name(), peer = %p.addr, error = %err, muted, "keepalive not sent");
                    }
                }
            }
        }
    }

    /// One keepalive to every peer of a GRE network, tunnelled as its frames are (key,
    /// checksum, TTL, DSCP); not counted as traffic, like the receiver does not count it.
    pub fn send_gre_keepalives(&self, net: &Network, gre: &GreParams, frame: &[u8; KEEPALIVE_LEN], now: Instant) {
        const AT: usize = 16;
        let h = gre.repr.header_len();
        let mut buf = [0u8; AT + KEEPALIVE_LEN];
        buf[AT..].copy_from_slice(frame);
        gre.repr.emit(&mut buf[AT - h..]);
        let tos = gre.dscp.for_frame(frame) << 2;
        let mut q = SendQueue::new(gre.sock.slots());
        for (i, p) in net.peers.iter().enumerate() {
            let len = (h + KEEPALIVE_LEN) as u32;
            q.push(0, TxItem { buf: 0, start: (AT - h) as u32, len, dst: p.addr, ttl: gre.ttl, tos, tag: i as u16 });
        }
        q.flush(&gre.sock, &[&buf[..]], |it, r| {
            if let Err(err) = r {
                let mut rl = self.send_errors.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(muted) = rl.allow(now) {
                    tracing::debug!(network = net.name(), peer = %it.dst.ip(), error = %err, muted, "keepalive not sent");
                }
            }
        });
    }

    /// Log what happened since the last call.
    pub fn tick<P>(&self, fabric: &Fabric<P>, now: Instant) {
        let mut nets = self.nets.lock().unwrap_or_else(|p| p.into_inner());
        for e in &fabric.networks {
            let net = &e.net;
            let peer_addr = |p: Port| match p {
                Port::Peer(i) => net.peers.get(usize::from(i.0)).map_or_else(|| port_name(p), |x| format!("peer {}", x.addr.ip())),
                Port::Local(_) => port_name(p),
            };
            let (events, lost) = net.fdb.take_pin_events();
            let cfg = net.fdb.config();
            for ev in events.iter().take(PIN_LINES_PER_TICK) {
                tracing::warn!(
                    network = net.name(), mac = %ev.mac, kept_on = peer_addr(ev.kept), refused_from = peer_addr(ev.refused),
                    moves = ev.moves, window_secs = cfg.move_window.as_secs(), pinned_secs = cfg.move_window.as_secs(),
                    "MAC moved too often (duplicate MAC or a loop): pinned, frames from it on other ports are dropped"
                );
            }
            let more = (events.len().saturating_sub(PIN_LINES_PER_TICK)) as u64 + lost;
            if more > 0 {
                tracing::warn!(network = net.name(), more, "more MACs pinned for moving too often");
            }

            let w = nets.entry(net.name().to_string()).or_default();
            let moved = net.fdb.events.moved.load(std::sync::atomic::Ordering::Relaxed);
            if let Some(at) = w.at {
                let dt = now.saturating_since(at).as_millis().max(1) as u64;
                let delta = moved.saturating_sub(w.moved);
                w.moves_since_warn += delta;
                if delta * 1000 / dt >= LOOP_MOVES_PER_SEC {
                    let quiet = w.last_loop_warn.is_none_or(|t| now.saturating_since(t).as_millis() as u64 >= LOOP_WARN_INTERVAL_MS);
                    if quiet {
                        tracing::warn!(
                            network = net.name(), moves_per_sec = delta * 1000 / dt, moves_since_last_warning = w.moves_since_warn,
                            "MACs are moving between ports at a high rate: probably a loop through a bridge outside overlayd"
                        );
                        w.last_loop_warn = Some(now);
                        w.moves_since_warn = 0;
                    }
                }
            }
            w.moved = moved;
            w.at = Some(now);
        }
        nets.retain(|name, _| fabric.networks.iter().any(|e| e.net.name() == name));
    }
}
