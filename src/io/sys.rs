//! Small system helpers: a stop signal threads can poll on, readiness waits, and the MTU of
//! the interface that holds an address.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Send `hdrs`, the prepared messages of `chunk` (one each, same order), with one
/// `sendmmsg`, again after an interruption. `done` hears of each item sent or, when nothing
/// could be sent, of the first one failing. Returns how many items were dealt with, at least
/// one, so the caller goes on with the rest.
///
/// # Safety
/// Every message in `hdrs` must point at names, iovecs, control data and buffers that are
/// alive for the call.
pub unsafe fn sendmmsg_chunk<T>(fd: RawFd, hdrs: &mut [libc::mmsghdr], chunk: &[T], done: &mut impl FnMut(&T, io::Result<()>)) -> usize {
    debug_assert_eq!(hdrs.len(), chunk.len());
    loop {
        // SAFETY: the caller vouches for what the headers point at; len is theirs.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as u32, 0) };
        if r > 0 {
            let n = r as usize;
            chunk[..n].iter().for_each(|it| done(it, Ok(())));
            return n;
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        done(&chunk[0], Err(e));
        return 1;
    }
}

/// An eventfd that, once raised, wakes every thread polling on it (it stays readable).
#[derive(Debug)]
pub struct StopFd(OwnedFd);

impl StopFd {
    pub fn new() -> io::Result<StopFd> {
        // SAFETY: eventfd has no pointer arguments; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(StopFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raise(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn is_raised(&self) -> bool {
        let mut p = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) > 0 }
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Outcome of [`wait_readable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Ready,
    Stop,
}

/// Block until `fd` is readable or `stop` is raised.
pub fn wait_readable(fd: RawFd, stop: &StopFd) -> io::Result<Wake> {
    let mut fds = [
        libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: two valid pollfds, infinite timeout.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(Wake::Stop);
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 && fds[0].revents & libc::POLLIN == 0 {
            return Err(io::Error::other(format!("descriptor {fd} reports an error (revents {:#x})", fds[0].revents)));
        }
        return Ok(Wake::Ready);
    }
}

/// [`wait_readable`] for at most `timeout_ms`; `Ok(None)` when the time ran out.
pub fn wait_readable_for(fd: RawFd, stop: &StopFd, timeout_ms: i32) -> io::Result<Option<Wake>> {
    let mut fds = [
        libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.fd(), events: libc::POLLIN, revents: 0 },
    ];
    // SAFETY: two valid pollfds and a bounded timeout.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(None) } else { Err(e) };
    }
    if r == 0 {
        return Ok(None);
    }
    if fds[1].revents != 0 {
        return Ok(Some(Wake::Stop));
    }
    Ok(Some(Wake::Ready))
}

/// `struct sched_attr` (linux/sched/types.h, first version: 56 bytes).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Ask the scheduler for a slice of `ns` nanoseconds for the calling thread, keeping its policy
/// and nice value: `sched_attr::sched_runtime` of a fair-class thread (Linux 6.12 and later;
/// the kernel clamps it to 0.1-100 ms). A thread with a shorter slice than the one running may
/// preempt it when it wakes up, instead of waiting for that one's slice to run out; its share
/// of the CPU stays what its weight gives it. `/proc/PID/task/TID/sched` shows the slice as
/// `se.slice`. Older kernels take the call and ignore the runtime.
pub fn request_slice(ns: u64) -> io::Result<()> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: sched_getattr writes at most `size` bytes into our live, properly sized struct.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, size, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if attr.policy != libc::SCHED_OTHER as u32 && attr.policy != libc::SCHED_BATCH as u32 {
        // a real-time or idle policy chosen by whoever started us: leave it alone
        return Ok(());
    }
    attr.size = size;
    attr.runtime = ns;
    // SAFETY: sched_setattr reads our live struct of the size it declares.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Name of the interface that holds `addr`, if any.
pub fn interface_of(addr: IpAddr) -> io::Result<Option<String>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list returned by getifaddrs, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it declares.
            let fam = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let a: Option<IpAddr> = match fam {
                libc::AF_INET => {
                    // SAFETY: family is AF_INET, so the sockaddr is a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    Some(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    // SAFETY: family is AF_INET6, so the sockaddr is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            };
            if a == Some(addr) {
                // SAFETY: ifa_name is a NUL-terminated string owned by the list.
                found = Some(unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned());
                break;
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The MTU of interface `name`, from sysfs.
pub fn interface_mtu(name: &str) -> io::Result<u16> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))?;
    s.trim().parse().map_err(|_| io::Error::other(format!("unreadable MTU {s:?} for {name}")))
}

/// Whether a network interface of this name exists in our namespace.
pub fn interface_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}
