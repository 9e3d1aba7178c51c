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

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities overlayd keeps after start-up.
pub const KEEP: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];

/// Drop every capability but [`KEEP`]. Returns the capabilities kept (effective set), or a
/// description of what failed (the daemon logs it and runs on).
pub fn drop_to_minimum() -> Result<Vec<Capability>, String> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| format!("read permitted capabilities: {e}"))?;
    let keep: CapsHashSet = KEEP.iter().copied().filter(|c| permitted.contains(c)).collect();
    // the bounding set first: dropping from it needs CAP_SETPCAP, which goes next
    if permitted.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).map_err(|e| format!("read bounding set: {e}"))?;
        for c in bounding.iter().filter(|c| !KEEP.contains(c)) {
            caps::drop(None, CapSet::Bounding, *c).map_err(|e| format!("drop {c} from the bounding set: {e}"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient capabilities: {e}"))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| format!("clear inheritable capabilities: {e}"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| format!("set effective capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| format!("set permitted capabilities: {e}"))?;
    let mut kept: Vec<Capability> = caps::read(None, CapSet::Effective).map_err(|e| format!("read back: {e}"))?.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}
