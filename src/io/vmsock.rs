//! UNIX sockets for QEMU VMs: the listening socket of a network and its connections.
//!
//! QEMU (7.2+) connects with `-netdev stream,server=off,addr.type=unix,addr.path=PATH` and
//! speaks the framing of [`crate::core::wire::qemu`]. Every accepted connection is one switch
//! port. Sockets are non-blocking: the data path waits for readiness with `poll`.
//!
//! Writing: several data-path threads (the underlay receiver, TAP readers, other VMs) may
//! send to one VM at once, and a frame's length prefix and bytes must reach the stream
//! together. Each connection therefore has a write mutex (uncontended unless two threads
//! target the same VM in the same instant), and a frame is one `writev` of prefix + frame,
//! with no copy. A full socket buffer means the VM is not keeping up: the frame is dropped
//! (`port_busy`), as a switch drops on a full egress queue. Linux hands a write of a normal
//! frame to the peer as one buffer, so it either goes whole or not at all; only very large
//! frames can be split by a full buffer. The rest of such a frame is then written within
//! [`PARTIAL_WRITE_GRACE`], and if the VM does not make room in that time the connection is
//! shut down, since the stream can no longer be framed.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::VmSocketConfig;
use crate::core::wire::qemu::{self, StreamDecoder};

/// Bytes queued toward one VM before frames are dropped as `port_busy`: room for a burst
/// (a flood, a TCP window from the tunnel) while QEMU is busy, not a standing queue.
const SNDBUF: libc::c_int = 1 << 20;

/// Raise a socket's send buffer, beyond `net.core.wmem_max` if we are privileged.
fn set_sndbuf(fd: RawFd, size: libc::c_int) {
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&size as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as u32) };
        if r == 0 {
            return;
        }
    }
    tracing::debug!(error = %io::Error::last_os_error(), "vm socket send buffer not raised");
}

/// How long a half-written frame may wait for the VM to read before the VM is disconnected.
pub const PARTIAL_WRITE_GRACE: Duration = Duration::from_millis(200);

/// The listening socket of one network.
#[derive(Debug)]
pub struct VmListener {
    sock: UnixListener,
    path: PathBuf,
}

impl VmListener {
    /// Create the socket file (and its directory), owned and permitted as configured. A stale
    /// socket file (nobody accepting on it) is replaced; a live one is an error.
    pub fn bind(cfg: &VmSocketConfig) -> io::Result<VmListener> {
        let path = &cfg.path;
        let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("vm_socket {}: {what}: {e}", path.display()));
        prepare_path(path, |p| UnixStream::connect(p).is_ok()).map_err(|(what, e)| ctx(what, e))?;
        let sock = UnixListener::bind(path).map_err(|e| ctx("bind", e))?;
        let me = VmListener { sock, path: path.clone() };
        me.sock.set_nonblocking(true).map_err(|e| ctx("set non-blocking", e))?;
        set_perms(cfg).map_err(|(what, e)| ctx(what, e))?;
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// The next pending connection; `Ok(None)` when there is none.
    pub fn accept(&self) -> io::Result<Option<VmConn>> {
        match self.sock.accept() {
            Ok((s, _)) => VmConn::new(s).map(Some),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Make room for a socket file at `path`: create its directory, and remove a socket file
/// nobody serves any more (`alive` tells). A live socket or another kind of file is an error.
fn prepare_path(path: &Path, alive: impl Fn(&Path) -> bool) -> Result<(), (&'static str, io::Error)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ("create directory", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if alive(path) {
                return Err(("in use", io::Error::from(io::ErrorKind::AddrInUse)));
            }
            tracing::info!(path = %path.display(), "removing stale socket file");
            std::fs::remove_file(path).map_err(|e| ("remove stale socket", e))
        }
        Ok(_) => Err(("exists and is not a socket", io::Error::from(io::ErrorKind::AlreadyExists))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(("stat", e)),
    }
}

fn set_perms(cfg: &VmSocketConfig) -> Result<(), (&'static str, io::Error)> {
    if cfg.owner.is_some() || cfg.group.is_some() {
        std::os::unix::fs::chown(&cfg.path, cfg.owner, cfg.group).map_err(|e| ("chown", e))?;
    }
    std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(cfg.mode)).map_err(|e| ("chmod", e))
}

/// The datagram socket of one network, for QEMU `-netdev dgram` (one frame per datagram).
/// VMs are told apart by the address they send from (QEMU's `local.path`), and answered there.
#[derive(Debug)]
pub struct VmDgramSocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl VmDgramSocket {
    pub fn bind(cfg: &VmSocketConfig) -> io::Result<VmDgramSocket> {
        let path = &cfg.path;
        let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("vm_dgram_socket {}: {what}: {e}", path.display()));
        prepare_path(path, |p| UnixDatagram::unbound().and_then(|s| s.connect(p)).is_ok()).map_err(|(what, e)| ctx(what, e))?;
        let sock = UnixDatagram::bind(path).map_err(|e| ctx("bind", e))?;
        let me = VmDgramSocket { sock, path: path.clone() };
        me.sock.set_nonblocking(true).map_err(|e| ctx("set non-blocking", e))?;
        set_perms(cfg).map_err(|(what, e)| ctx(what, e))?;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            let v: libc::c_int = 4 << 20;
            // SAFETY: setsockopt with a pointer to a live c_int and its size.
            if unsafe { libc::setsockopt(me.fd(), libc::SOL_SOCKET, opt, (&v as *const libc::c_int).cast(), 4) } == 0 {
                break;
            }
        }
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// One datagram into `buf` (`WouldBlock` when drained): its length, and the sender's
    /// address. A datagram longer than `buf` is cut to fit: give one byte more than the
    /// largest frame wanted and treat a full buffer as too long.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, std::os::unix::net::SocketAddr)> {
        self.sock.recv_from(buf)
    }

    /// Send one frame to the VM at `to`.
    pub fn send_to(&self, frame: &[u8], to: &Path) -> Result<(), SendError> {
        match self.sock.send_to(frame, to) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(SendError::Busy),
            Err(e) => Err(SendError::Failed(e)),
        }
    }
}

/// A VM behind the datagram socket: where to send its frames. Marked gone when sending
/// finds nobody at its address any more (QEMU stopped); the daemon then drops the port.
#[derive(Debug)]
pub struct DgramPeer {
    sock: Arc<VmDgramSocket>,
    pub path: PathBuf,
    gone: AtomicBool,
}

impl DgramPeer {
    pub fn new(sock: Arc<VmDgramSocket>, path: PathBuf) -> DgramPeer {
        DgramPeer { sock, path, gone: AtomicBool::new(false) }
    }

    pub fn send_frame(&self, frame: &[u8]) -> Result<(), SendError> {
        let r = self.sock.send_to(frame, &self.path);
        if let Err(SendError::Failed(e)) = &r
            && matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::ENOENT | libc::ENOTSOCK))
        {
            self.gone.store(true, Ordering::Relaxed);
        }
        r
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

impl Drop for VmDgramSocket {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(path = %self.path.display(), error = %e, "socket file not removed");
        }
    }
}

impl Drop for VmListener {
    fn drop(&mut self) {
        // the file is ours; leave nothing for the next start to trip over
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(path = %self.path.display(), error = %e, "socket file not removed");
        }
    }
}

/// Why a frame did not reach a VM.
#[derive(Debug)]
pub enum SendError {
    /// The socket buffer is full; nothing was written.
    Busy,
    /// The connection is broken (or was shut down because a frame could not be finished).
    Failed(io::Error),
}

/// One connected VM.
#[derive(Debug)]
pub struct VmConn {
    stream: UnixStream,
    write: Mutex<()>,
    /// Process id of the client (QEMU), for logs; 0 if unknown.
    pub pid: i32,
}

impl VmConn {
    pub fn new(stream: UnixStream) -> io::Result<VmConn> {
        stream.set_nonblocking(true)?;
        set_sndbuf(stream.as_raw_fd(), SNDBUF);
        let pid = peer_pid(stream.as_raw_fd());
        Ok(VmConn { stream, write: Mutex::new(()), pid })
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Read what is available into `dec`: `Ok(0)` at end of stream, `WouldBlock` when
    /// drained.
    pub fn read(&self, dec: &mut StreamDecoder) -> io::Result<usize> {
        let n = (&self.stream).read(dec.spare())?;
        dec.filled(n);
        Ok(n)
    }

    /// Send one frame with its length prefix.
    pub fn send_frame(&self, frame: &[u8]) -> Result<(), SendError> {
        let hdr = qemu::header(frame.len());
        let total = hdr.len() + frame.len();
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let n = loop {
            match (&self.stream).write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(SendError::Busy),
                Err(e) => return Err(SendError::Failed(e)),
            }
        };
        if n == total {
            return Ok(());
        }
        self.finish(&hdr, frame, n).map_err(|e| {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            SendError::Failed(e)
        })
    }

    /// Write the rest of a frame of which `done` bytes went out, waiting for room at most
    /// [`PARTIAL_WRITE_GRACE`].
    fn finish(&self, hdr: &[u8], frame: &[u8], mut done: usize) -> io::Result<()> {
        let total = hdr.len() + frame.len();
        let deadline = super::clock::monotonic() + PARTIAL_WRITE_GRACE;
        while done < total {
            let r = if done < hdr.len() {
                (&self.stream).write_vectored(&[IoSlice::new(&hdr[done..]), IoSlice::new(frame)])
            } else {
                (&self.stream).write(&frame[done - hdr.len()..])
            };
            match r {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(super::clock::monotonic());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "vm did not read a half-written frame in time"));
                    }
                    wait_writable(self.fd(), left)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn wait_writable(fd: RawFd, t: Duration) -> io::Result<()> {
    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    let ms = t.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: one valid pollfd and a bounded timeout.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// The pid of the process at the other end of a UNIX socket (`SO_PEERCRED`), 0 if unknown.
fn peer_pid(fd: RawFd) -> i32 {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live `cred`.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    if r == 0 { cred.pid } else { 0 }
}
