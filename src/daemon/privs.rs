//! Least privilege: once every device and socket is open, the daemon keeps only what it still
//! needs.
//!
//! After start-up the data path only reads and writes descriptors it already holds. What may
//! still need privileges later is creating or configuring a TAP (CAP_NET_ADMIN) and opening a
//! raw or packet socket (CAP_NET_RAW). Every other capability is dropped from the effective,
//! permitted and inheritable sets, the ambient set is cleared, and (when allowed to) the
//! bounding set is reduced to those two, so neither this process nor anything it could exec
//! gets them back. A daemon started without privileges (tests, a user running it by hand)
//! keeps what it had of the two and carries on.
//!
//! With `[node] user`, the daemon also gives up root itself: see [`switch_user`].

use caps::errors::CapsError;
use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;

use crate::config::RunAs;

/// The capabilities overlayd keeps after start-up.
pub const KEEP: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];

/// What [`drop_to_minimum`] could not do.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("read the {0:?} capability set: {1}")]
    Read(CapSet, CapsError),
    #[error("drop {0} from the bounding set: {1}")]
    Bounding(Capability, CapsError),
    #[error("set the {0:?} capability set: {1}")]
    Set(CapSet, CapsError),
}

/// Drop every capability but [`KEEP`]. Returns the capabilities kept (effective set), or what
/// failed (the daemon logs it and runs on).
pub fn drop_to_minimum() -> Result<Vec<Capability>, DropError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| DropError::Read(CapSet::Permitted, e))?;
    let keep: CapsHashSet = KEEP.iter().copied().filter(|c| permitted.contains(c)).collect();
    // the bounding set first: dropping from it needs CAP_SETPCAP, which goes next
    if permitted.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).map_err(|e| DropError::Read(CapSet::Bounding, e))?;
        for c in bounding.iter().filter(|c| !KEEP.contains(c)) {
            caps::drop(None, CapSet::Bounding, *c).map_err(|e| DropError::Bounding(*c, e))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| DropError::Set(CapSet::Ambient, e))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| DropError::Set(CapSet::Inheritable, e))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| DropError::Set(CapSet::Effective, e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| DropError::Set(CapSet::Permitted, e))?;
    let mut kept: Vec<Capability> =
        caps::read(None, CapSet::Effective).map_err(|e| DropError::Read(CapSet::Effective, e))?.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}

/// [`drop_to_minimum`] for the calling thread (capabilities are per thread), first thing in
/// every thread the daemon starts. A thread that cannot drop them says so and runs on with
/// what it has, as the main thread does.
pub fn drop_in_thread() {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    match drop_to_minimum() {
        Ok(kept) => tracing::debug!(thread = name, kept = ?kept, "thread dropped every other capability"),
        Err(e) => tracing::warn!(thread = name, error = %e, "thread could not drop capabilities; it runs with the ones it has"),
    }
}

/// Why [`switch_user`] could not become the configured user.
#[derive(Debug, thiserror::Error)]
pub enum SwitchUserError {
    #[error("{0}: {1}")]
    Ids(&'static str, Errno),
    #[error("overlayd runs as uid {uid} without {cap}: start it as root (or with CAP_SETUID and CAP_SETGID) to switch user")]
    MissingCap { uid: u32, cap: Capability },
    #[error("cannot count the threads in /proc/self/task: {0}")]
    CountThreads(std::io::Error),
    #[error("the process already runs {0} threads; the user must be switched while it runs only one")]
    NotAlone(usize),
    #[error("setgroups {0:?}: {1}")]
    SetGroups(Vec<u32>, Errno),
    #[error("setresgid {0}: {1}")]
    SetGid(u32, Errno),
    #[error("setresuid {0}: {1}")]
    SetUid(u32, Errno),
    #[error("{0}: {1}")]
    Caps(&'static str, CapsError),
}

/// `[node] user`: become `to` (uid, gid and supplementary groups), keeping the capabilities
/// the rest of start-up needs. Called once the admin and metrics sockets are bound (as root, so
/// their paths may be in root-owned directories) and before any device is opened or any thread
/// is spawned.
///
/// Why then: glibc applies setresuid/setresgid/setgroups to every thread of the process and
/// aborts it if any thread refuses, and the data-path threads give up CAP_SETUID when they
/// start. So the switch must happen while the main thread is alone; this is checked, and a
/// second thread is an error rather than a risk of abort.
///
/// How: with PR_SET_KEEPCAPS the permitted set survives the change of uid (the kernel only
/// clears the effective set); the effective set is raised again from it, so opening TAPs
/// (CAP_NET_ADMIN), raw sockets (CAP_NET_RAW), VM sockets in root-owned directories
/// (CAP_DAC_OVERRIDE, CAP_CHOWN for `vm_socket_owner`) works as before, and [`drop_to_minimum`]
/// later reduces every thread to what it needs. Already running as `to` (e.g. started by a
/// service manager with `User=`): nothing to do.
pub fn switch_user(to: &RunAs) -> Result<(), SwitchUserError> {
    use nix::unistd::{Gid, Uid, getresgid, getresuid, setgroups, setresgid, setresuid};
    let (uid, gid) = (Uid::from_raw(to.uid), Gid::from_raw(to.gid));
    let ids = getresuid().map_err(|e| SwitchUserError::Ids("getresuid", e))?;
    let gids = getresgid().map_err(|e| SwitchUserError::Ids("getresgid", e))?;
    if [ids.real, ids.effective, ids.saved] == [uid; 3] && [gids.real, gids.effective, gids.saved] == [gid; 3] {
        tracing::info!(user = to.user, uid = to.uid, group = to.group, gid = to.gid, "already running as the configured user and group");
        return Ok(());
    }
    for c in [Capability::CAP_SETUID, Capability::CAP_SETGID] {
        if !caps::has_cap(None, CapSet::Effective, c).unwrap_or(false) {
            return Err(SwitchUserError::MissingCap { uid: ids.effective.as_raw(), cap: c });
        }
    }
    let threads = std::fs::read_dir("/proc/self/task").map_err(SwitchUserError::CountThreads)?.count();
    if threads != 1 {
        return Err(SwitchUserError::NotAlone(threads));
    }
    caps::securebits::set_keepcaps(true).map_err(|e| SwitchUserError::Caps("keep capabilities across the change of user", e))?;
    let groups: Vec<Gid> = to.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    let switched = setgroups(&groups)
        .map_err(|e| SwitchUserError::SetGroups(to.groups.clone(), e))
        .and_then(|()| setresgid(gid, gid, gid).map_err(|e| SwitchUserError::SetGid(to.gid, e)))
        .and_then(|()| setresuid(uid, uid, uid).map_err(|e| SwitchUserError::SetUid(to.uid, e)));
    // the flag only matters for the change of uid; a later one (there is none) must not keep them
    let cleared = caps::securebits::set_keepcaps(false);
    switched?;
    cleared.map_err(|e| SwitchUserError::Caps("stop keeping capabilities across a change of user", e))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| SwitchUserError::Caps("read permitted capabilities", e))?;
    caps::set(None, CapSet::Effective, &permitted).map_err(|e| SwitchUserError::Caps("raise effective capabilities", e))?;
    tracing::info!(user = to.user, uid = to.uid, group = to.group, gid = to.gid, groups = ?to.groups, "switched to the configured user and group");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test harness runs threads, so the switch must be refused before any set*id call
    /// (glibc would apply it to every thread, or abort): the process keeps its uid.
    #[test]
    fn switch_is_refused_while_other_threads_run() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let before = nix::unistd::getresuid().expect("getresuid");
        let to = RunAs { user: "nobody".into(), uid: 65534, group: "nogroup".into(), gid: 65534, groups: Vec::new() };
        let e = switch_user(&to).expect_err("a multi-threaded process must not switch").to_string();
        // as root the thread check refuses; without CAP_SETUID the capability check comes first
        assert!(e.contains("threads") || e.contains("CAP_SETUID"), "{e}");
        let after = nix::unistd::getresuid().expect("getresuid");
        assert_eq!((before.real, before.effective, before.saved), (after.real, after.effective, after.saved));
        drop(tx);
        other.join().expect("join");
    }
}
