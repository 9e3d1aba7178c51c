//! The local ports of one network: TAP devices and VM connections, in a table of slots.
//!
//! A [`LocalPort`] names a port as *slot + generation*: the low [`SLOT_BITS`] bits are the
//! slot, the high bits a generation that is bumped every time the slot is given to a new
//! port. The FDB stores the whole value, so when a VM disconnects and its slot goes to the
//! next VM, a MAC still learned against the old port (a lookup racing with the flush of the
//! old port's entries) does not match the new occupant: [`PortTable::get`] refuses it and the
//! frame is dropped instead of reaching the wrong VM.
//!
//! The table is an immutable value. Connects and disconnects build a new table
//! ([`PortTable::with`], [`PortTable::without`]) that the daemon publishes with an atomic
//! pointer swap, so the data path reads it without a lock. A bitmap of live slots makes
//! flooding a walk over set bits, not over 1024 empty slots.
//!
//! Occupant type `P` is whatever the I/O side needs to write to the port (`()` in tests).

use std::sync::atomic::AtomicU64;

use super::LocalPort;

/// VM ports of one network (socket and datagram connections), for `overlayd_vm_ports` and
/// `overlayd_vm_connections_total`.
#[derive(Debug, Default)]
pub struct VmPortCounts {
    /// VMs connected now.
    pub connected: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Connections turned away (port table full).
    pub refused: AtomicU64,
}

/// Bits of a [`LocalPort`] that hold the slot.
pub const SLOT_BITS: u32 = 10;
/// Ports per network: TAPs plus VM connections.
pub const MAX_PORTS: usize = 1 << SLOT_BITS;
const GEN_MASK: u16 = (1 << (16 - SLOT_BITS)) - 1;
const WORDS: usize = MAX_PORTS / 64;

impl LocalPort {
    /// The port in `slot` (`< MAX_PORTS`) at generation `generation` (wraps).
    pub const fn new(slot: usize, generation: u16) -> LocalPort {
        LocalPort(((generation & GEN_MASK) << SLOT_BITS) | (slot as u16 & (MAX_PORTS as u16 - 1)))
    }

    pub const fn slot(self) -> usize {
        (self.0 & (MAX_PORTS as u16 - 1)) as usize
    }

    pub const fn generation(self) -> u16 {
        self.0 >> SLOT_BITS
    }
}

#[derive(Debug, Clone)]
struct Slot<P> {
    /// Generation of the current (or, if `occupant` is `None`, the last) port in the slot.
    generation: u16,
    occupant: Option<P>,
}

/// The ports of one network at one moment.
#[derive(Debug, Clone)]
pub struct PortTable<P> {
    slots: Vec<Slot<P>>,
    live: [u64; WORDS],
    len: usize,
}

impl<P> Default for PortTable<P> {
    fn default() -> Self {
        PortTable { slots: Vec::new(), live: [0; WORDS], len: 0 }
    }
}

impl<P: Clone> PortTable<P> {
    /// A table whose first ports are `fixed` (the TAPs), in slots 0.., generation 0.
    pub fn new(fixed: impl IntoIterator<Item = P>) -> Self {
        let mut t = PortTable::default();
        for p in fixed {
            if t.insert(p).is_none() {
                break;
            }
        }
        t
    }

    /// A copy of this table with `p` added in the lowest free slot, and the port it got;
    /// `None` if all [`MAX_PORTS`] slots are taken.
    pub fn with(&self, p: P) -> Option<(Self, LocalPort)> {
        let mut t = self.clone();
        let lp = t.insert(p)?;
        Some((t, lp))
    }

    /// A copy of this table without `port` (unchanged if it is not there).
    pub fn without(&self, port: LocalPort) -> Self {
        let mut t = self.clone();
        if t.get(port).is_some() {
            let s = port.slot();
            t.slots[s].occupant = None;
            t.live[s / 64] &= !(1 << (s % 64));
            t.len -= 1;
        }
        t
    }

    fn insert(&mut self, p: P) -> Option<LocalPort> {
        let slot = match self.slots.iter().position(|s| s.occupant.is_none()) {
            Some(s) => s,
            None if self.slots.len() < MAX_PORTS => {
                self.slots.push(Slot { generation: GEN_MASK, occupant: None });
                self.slots.len() - 1
            }
            None => return None,
        };
        let s = &mut self.slots[slot];
        // a fresh slot starts at GEN_MASK so that its first occupant gets generation 0
        s.generation = s.generation.wrapping_add(1) & GEN_MASK;
        s.occupant = Some(p);
        self.live[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
        Some(LocalPort::new(slot, s.generation))
    }
}

impl<P> PortTable<P> {
    /// The occupant of `port`, if that very port (slot *and* generation) is still there.
    #[inline]
    pub fn get(&self, port: LocalPort) -> Option<&P> {
        let s = self.slots.get(port.slot())?;
        if s.generation == port.generation() { s.occupant.as_ref() } else { None }
    }

    /// Live ports in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (LocalPort, &P)> + '_ {
        self.live.iter().enumerate().flat_map(move |(w, &bits)| {
            BitIter(bits).filter_map(move |b| {
                let slot = w * 64 + b;
                let s = self.slots.get(slot)?;
                Some((LocalPort::new(slot, s.generation), s.occupant.as_ref()?))
            })
        })
    }

    /// Live ports other than `ingress`: where a flooded frame goes locally.
    pub fn others(&self, ingress: Option<LocalPort>) -> impl Iterator<Item = (LocalPort, &P)> + '_ {
        self.iter().filter(move |(p, _)| Some(*p) != ingress)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Indices of the set bits of a word, lowest first.
struct BitIter(u64);

impl Iterator for BitIter {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_take_the_first_slots_at_generation_zero() {
        let t = PortTable::new(["tap0", "tap1"]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(LocalPort(0)), Some(&"tap0"));
        assert_eq!(t.get(LocalPort(1)), Some(&"tap1"));
        let ports: Vec<LocalPort> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(ports, vec![LocalPort(0), LocalPort(1)]);
    }

    #[test]
    fn a_reused_slot_does_not_answer_to_its_previous_port() {
        let t = PortTable::new(["tap0"]);
        let (t, vm1) = t.with("vm1").unwrap();
        assert_eq!(vm1.slot(), 1);
        let t = t.without(vm1);
        assert_eq!(t.get(vm1), None);
        let (t, vm2) = t.with("vm2").unwrap();
        assert_eq!(vm2.slot(), 1, "the free slot is reused");
        assert_ne!(vm2, vm1, "with a new generation");
        assert_eq!(t.get(vm1), None, "an FDB entry of the old VM finds nothing");
        assert_eq!(t.get(vm2), Some(&"vm2"));
    }

    #[test]
    fn flooding_skips_the_ingress_and_empty_slots() {
        let mut t = PortTable::new([0u32]);
        let mut vms = Vec::new();
        for i in 1..=200u32 {
            let (n, p) = t.with(i).unwrap_or_else(|| panic!("slot {i}"));
            t = n;
            vms.push(p);
        }
        // drop every other VM
        for p in vms.iter().step_by(2) {
            t = t.without(*p);
        }
        let targets: Vec<LocalPort> = t.others(Some(vms[1])).map(|(p, _)| p).collect();
        assert_eq!(targets.len(), 1 + 100 - 1);
        assert_eq!(targets[0], LocalPort(0));
        assert!(!targets.contains(&vms[1]));
        assert!(targets.windows(2).all(|w| w[0].slot() < w[1].slot()));
    }

    #[test]
    fn table_holds_at_most_max_ports() {
        let mut t = PortTable::<u32>::default();
        for i in 0..MAX_PORTS as u32 {
            t = t.with(i).unwrap().0;
        }
        assert!(t.with(0).is_none());
        assert_eq!(t.iter().count(), MAX_PORTS);
        let last = LocalPort::new(MAX_PORTS - 1, 0);
        let t = t.without(last);
        let (_, p) = t.with(7).unwrap();
        assert_eq!(p.slot(), MAX_PORTS - 1);
        assert_eq!(p.generation(), 1);
    }

    #[test]
    fn generation_wraps_within_its_bits() {
        let mut t = PortTable::<u8>::default();
        let mut p = LocalPort(0);
        for _ in 0..200 {
            let (n, q) = t.with(1).unwrap();
            p = q;
            t = n.without(q);
        }
        assert_eq!(p.slot(), 0);
        assert_eq!(p.generation(), 199 % 64);
    }
}
