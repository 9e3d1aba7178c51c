//! overlayd: a userspace overlay-network daemon.
//!
//! Per host, overlayd exposes TAP devices as the ports of virtual L2 switches (one per
//! network), learns MAC addresses, and carries Ethernet frames between hosts in VXLAN over an
//! IPv4 or IPv6 underlay.
//!
//! - [`core`]: sans-IO. Wire formats, the MAC table, forwarding decisions, counters. Pure and
//!   unit-tested with byte arrays and an explicit clock.
//! - [`io`]: thin adapters: TAP devices, UDP sockets (batched), the clock.
//! - [`daemon`]: ties them together: data-path threads (blocking, batched syscalls), and the
//!   control path (signals, timers) on tokio.
//! - [`metrics`]: the Prometheus exporter (every `overlayd_*` metric defined in one place) and
//!   its HTTP endpoint, fed from counter snapshots taken on the control path.
//! - [`admin`]: the admin socket (`overlayd fdb | peers | stats`): JSON lines over a UNIX
//!   socket, served on the control path; the same binary is the client.
//! - [`config`]: the TOML file (plus `OVERLAYD__...` environment overrides), validated into
//!   domain types; errors name the key.
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod core;
pub mod daemon;
pub mod io;
pub mod metrics;
