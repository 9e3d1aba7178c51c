//! Thin adapters between the sans-IO core and the kernel: TAP devices, UDP sockets with
//! batched syscalls, the clock, and small system helpers. The only place with `libc` calls.

pub mod backend;
pub mod clock;
pub mod etcd;
pub mod gre;
pub mod packet;
pub mod sys;
pub mod tap;
pub mod transmit;
pub mod udp;
pub mod vmsock;

pub use transmit::{SendQueue, Sent, Transmit, TransmitSocket, TxItem, TxScratch};
