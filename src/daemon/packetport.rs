//! The reader of a port that is an existing interface bound with a packet socket (a VM's TAP
//! held by QEMU): read frames straight into the batch arena, switch them like any local
//! port's. See [`crate::io::packet`].

use std::io;
use std::sync::Arc;

use crate::core::LocalPort;
use crate::core::stats::Shard;
use crate::io::clock;
use crate::io::packet::PacketPort;
use crate::io::sys::{self, StopFd, Wake};
use crate::io::udp::TxSockets;

use super::gre::GreParams;
use super::netio::{NetIo, RateLimit};
use super::switch::{FrameBatch, Switcher};
use super::vmport::ARENA;

/// Everything the reader of a packet-socket port needs.
pub struct PacketThread {
    pub io: Arc<NetIo>,
    pub port: LocalPort,
    pub dev: Arc<PacketPort>,
    pub tx: Arc<TxSockets>,
    pub stop: Arc<StopFd>,
    /// `Some` for a GRE network.
    pub gre: Option<GreParams>,
}

impl PacketThread {
    pub fn run(self) {
        let PacketThread { io, port, dev, tx, stop, gre } = self;
        // a frame within the MTU (with a VLAN tag) always fits; a larger one is cut and
        // counted, it would be dropped as over the MTU anyway (the MTU is not changed by a
        // reload that keeps the port)
        let want = usize::from(io.net.load().spec.mtu) + 32;
        let mut batch = FrameBatch::new(ARENA, 0);
        let mut sw = Switcher::new(io.clone(), tx, port, gre);
        let shard = Shard::per_thread();
        let mut rl = RateLimit::default();
        loop {
            match sys::wait_readable(dev.fd(), &stop) {
                Ok(Wake::Stop) => break,
                Ok(Wake::Ready) => {}
                Err(e) => {
                    tracing::error!(network = io.net.load().name(), interface = dev.name(), error = %e, "poll failed; port stopped");
                    break;
                }
            }
            let net = io.net.load();
            let now = clock::now();
            loop {
                let Some(room) = batch.room(want) else {
                    sw.switch(&mut batch, shard, now);
                    continue;
                };
                match dev.read(room) {
                    // over the MTU: what was read (the frame's start) is enough to answer it
                    Ok((n, true)) => sw.too_big(port, &room[..n], now),
                    Ok((n, false)) => {
                        batch.commit(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if let Some(muted) = rl.allow(now) {
                            tracing::warn!(network = net.name(), interface = dev.name(), error = %e, muted, "read from interface failed");
                        }
                        if e.raw_os_error() == Some(libc::ENETDOWN) {
                            // the interface went down (e.g. its VM stopped): wait before retrying
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                sw.switch(&mut batch, shard, now);
            }
        }
        tracing::debug!(network = io.net.load().name(), interface = dev.name(), "packet port thread stopped");
    }
}
