//! The sans-IO core: wire formats, the MAC table, the forwarding decision, encapsulation and
//! counters. Nothing in here opens a socket, reads a clock or spawns a thread.
//!
//! The contract with the I/O side (`crate::io`, `crate::daemon`):
//! - a frame read from a local port goes through [`Network::from_local`], a datagram read from
//!   the underlay through [`Fabric::classify_vxlan`] and then [`Network::from_peer`]; each returns
//!   an [`Action`] that says where the frame goes (one local port, one peer, a flood, or a drop
//!   with its [`DropReason`]);
//! - a frame from a local port dropped as over the MTU is answered with the ICMP / ICMPv6
//!   "too big" that [`pmtu::too_big`] builds into the caller's buffer, rate-limited per port
//!   by [`pmtu::PortBuckets`]; [`pmtu::clamp_mss`] rewrites SYNs in place for `mss_clamp`;
//! - time is an argument (`now: Instant`, always last), so tests drive it explicitly;
//! - every data structure the data path touches per frame is safe to share between threads
//!   without a lock: the FDB is read lock-free, counters are atomics in per-thread shards.

pub mod advert;
pub mod checksum;
pub mod fabric;
pub mod fdb;
#[doc(hidden)]
pub mod invariants;
pub mod membership;
pub mod neigh;
pub mod network;
pub mod offload;
pub mod pmtu;
pub mod ports;
pub mod stats;
pub mod storm;
pub mod time;
pub mod types;
pub mod wire;

pub use fabric::Fabric;
pub use fdb::{Fdb, FdbConfig};
pub use network::{Action, Network, NetworkSpec, Peer};
// a network's children, by their short paths (`core::liveness::PeerState`)
pub use network::{handover, liveness};
#[cfg(test)]
pub(crate) use network::testutil;
pub use stats::DropReason;
pub use time::Instant;
pub use types::{Dscp, Encap, GreOptions, LocalPort, PeerIdx, Port, Vni};
