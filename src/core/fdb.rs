//! The MAC learning table (forwarding database) of one network.
//!
//! Semantics follow Linux bridges and Open vSwitch's `mac-learning`:
//! - the source MAC of every frame is learned against its ingress port (a local port, or the
//!   peer the tunnel packet came from); a MAC seen on another port *moves* there;
//! - an entry not refreshed for `ageing` (default 300 s) is treated as unknown at once and
//!   removed by the next [`Fdb::sweep`];
//! - the table holds at most `max_entries` (default 8192). When it is full, the entry evicted
//!   is the oldest-learned one *of the port that holds the most entries*. A port flooding the
//!   table with random source MACs therefore ends up evicting its own entries, and every
//!   other port keeps its MACs (OVS `evict_mac_from_busiest_port`).
//!
//! - a MAC that moves more than `move_limit` times within `move_window` (RFC 7432 §15
//!   defaults: 5 moves in 180 s) is *pinned*: it stays on the port it is on for one
//!   `move_window`, frames claiming it from another port are refused ([`Learned::Pinned`]),
//!   and a [`PinEvent`] is queued for the control path to log. A loop through an outside
//!   bridge, or two hosts using one MAC, then shows up as one log line instead of a MAC
//!   flapping between ports thousands of times a second.
//!
//! Concurrency: lookups and refreshes run on the data-path threads and take no lock — the
//! map is a lock-free `papaya::HashMap` and an entry's port and timestamp are atomics. Only
//! changes (a new MAC, a move, an eviction, ageing, a flush) take the `book` mutex, which
//! keeps the per-port counts and insertion order needed for fair eviction. In steady state
//! nothing is new, so the data path never touches the mutex.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::time::Instant;
use super::wire::ethernet::MacAddr;
use super::Port;

/// Defaults as in Linux bridges and Open vSwitch.
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_ENTRIES: usize = 8192;
/// MAC mobility defaults of RFC 7432 §15: more than 5 moves within 180 s is a duplicate.
pub const DEFAULT_MOVE_LIMIT: u32 = 5;
pub const DEFAULT_MOVE_WINDOW: Duration = Duration::from_secs(180);
/// Pin events kept for the control path between two drains; more are only counted.
const MAX_PIN_EVENTS: usize = 64;

/// Refreshing an entry's timestamp writes to a shared cache line; do it at most this often.
const REFRESH_GRANULARITY_MS: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbConfig {
    pub ageing: Duration,
    pub max_entries: usize,
    /// Moves allowed within `move_window` before a MAC is pinned; 0 = never pin.
    pub move_limit: u32,
    pub move_window: Duration,
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            ageing: DEFAULT_AGEING,
            max_entries: DEFAULT_MAX_ENTRIES,
            move_limit: DEFAULT_MOVE_LIMIT,
            move_window: DEFAULT_MOVE_WINDOW,
        }
    }
}

#[derive(Debug)]
struct Entry {
    port: AtomicU32,
    last_seen: AtomicU64,
    /// Position in its port's insertion order; written under the book mutex only.
    seq: AtomicU64,
    /// Start of the current move-counting window (ms) and the moves in it; book mutex only.
    window_start: AtomicU64,
    moves: AtomicU32,
    /// Pinned to its port until this time (ms); 0 = not pinned.
    pinned_until: AtomicU64,
    /// Put there by a cluster advertisement (type `cluster`): does not age while set.
    cluster: AtomicBool,
}

impl Entry {
    fn new(code: u32, now: Instant, seq: u64) -> Self {
        Entry {
            port: AtomicU32::new(code),
            last_seen: AtomicU64::new(now.as_millis()),
            seq: AtomicU64::new(seq),
            window_start: AtomicU64::new(now.as_millis()),
            moves: AtomicU32::new(0),
            pinned_until: AtomicU64::new(0),
            cluster: AtomicBool::new(false),
        }
    }

    fn pinned(&self, now: Instant) -> bool {
        self.pinned_until.load(Relaxed) > now.as_millis()
    }
}

/// A MAC that exceeded the move limit and was pinned (for the control path's log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinEvent {
    pub mac: MacAddr,
    /// The port it stays on.
    pub kept: Port,
    /// The port whose claim was refused.
    pub refused: Port,
    /// Moves seen within the window, the refused one included.
    pub moves: u32,
    pub until: Instant,
}

/// What learning a source MAC did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Already known on this port (timestamp refreshed).
    Known,
    /// New entry.
    New { evicted: Option<MacAddr> },
    /// The MAC moved from another port.
    Moved { from: Port },
    /// The MAC is pinned to `on` (it moved too often): not moved, the frame should be dropped.
    Pinned { on: Port },
}

/// Counts of table changes since start, for `overlayd_fdb_events_total`.
#[derive(Debug, Default)]
pub struct FdbEvents {
    pub learned: AtomicU64,
    pub moved: AtomicU64,
    pub expired: AtomicU64,
    pub evicted: AtomicU64,
    pub flushed: AtomicU64,
    /// MACs pinned for moving too often.
    pub pinned: AtomicU64,
    /// Entries of type `cluster` that the data path saw elsewhere and moved (they became
    /// learned entries there until the advertisement with the higher sequence says otherwise).
    pub cluster_moved: AtomicU64,
}

/// One row of [`Fdb::entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbRow {
    pub mac: MacAddr,
    pub port: Port,
    pub age: Duration,
    /// Type `cluster` (advertised by the member behind `port`), else learned.
    pub cluster: bool,
}

#[derive(Debug, Default)]
struct PortBook {
    count: usize,
    /// (mac, seq) in insertion order; items whose entry moved or vanished are stale and
    /// skipped (their seq no longer matches).
    order: VecDeque<(MacAddr, u64)>,
}

#[derive(Debug, Default)]
struct Book {
    ports: HashMap<Port, PortBook>,
    total: usize,
    next_seq: u64,
    pin_events: Vec<PinEvent>,
    pin_events_lost: u64,
}

#[derive(Debug)]
pub struct Fdb {
    map: papaya::HashMap<MacAddr, Entry>,
    book: Mutex<Book>,
    cfg: FdbConfig,
    pub events: FdbEvents,
}

impl Fdb {
    pub fn new(cfg: FdbConfig) -> Self {
        Fdb {
            map: papaya::HashMap::with_capacity(cfg.max_entries.min(1 << 16)),
            book: Mutex::new(Book::default()),
            cfg,
            events: FdbEvents::default(),
        }
    }

    pub fn config(&self) -> FdbConfig {
        self.cfg
    }

    fn fresh(&self, e: &Entry, now: Instant) -> bool {
        e.cluster.load(Relaxed) || now.as_millis().saturating_sub(e.last_seen.load(Relaxed)) <= self.cfg.ageing.as_millis() as u64
    }

    /// Where `mac` lives, if known and not aged out. Lock-free.
    pub fn lookup(&self, mac: MacAddr, now: Instant) -> Option<Port> {
        let g = self.map.guard();
        let e = self.map.get(&mac, &g)?;
        self.fresh(e, now).then(|| Port::from_u32(e.port.load(Relaxed)))
    }

    /// Learn `mac` on `port`. Lock-free when the MAC is already known there.
    pub fn learn(&self, mac: MacAddr, port: Port, now: Instant) -> Learned {
        let code = port.to_u32();
        {
            let g = self.map.guard();
            if let Some(e) = self.map.get(&mac, &g) {
                if e.port.load(Relaxed) == code {
                    let ms = now.as_millis();
                    if ms.saturating_sub(e.last_seen.load(Relaxed)) >= REFRESH_GRANULARITY_MS {
                        e.last_seen.store(ms, Relaxed);
                    }
                    return Learned::Known;
                }
                if e.pinned(now) && self.fresh(e, now) {
                    return Learned::Pinned { on: Port::from_u32(e.port.load(Relaxed)) };
                }
            }
        }
        self.learn_slow(mac, port, now)
    }

    fn learn_slow(&self, mac: MacAddr, port: Port, now: Instant) -> Learned {
        let code = port.to_u32();
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let g = self.map.guard();
        if let Some(e) = self.map.get(&mac, &g) {
            // re-check under the lock: another thread may have moved or learned it meanwhile
            let old = e.port.load(Relaxed);
            let from = Port::from_u32(old);
            if old == code {
                e.last_seen.store(now.as_millis(), Relaxed);
                return Learned::Known;
            }
            // a pin holds while the MAC is alive on its port; once aged it may be learned anew
            if e.pinned(now) && self.fresh(e, now) {
                return Learned::Pinned { on: from };
            }
            e.pinned_until.store(0, Relaxed);
            if !self.fresh(e, now) {
                // an aged entry (not swept yet) is unknown: learning it elsewhere is no move
                e.window_start.store(now.as_millis(), Relaxed);
                e.moves.store(0, Relaxed);
            } else if self.cfg.move_limit > 0 {
                let ms = now.as_millis();
                if ms.saturating_sub(e.window_start.load(Relaxed)) > self.cfg.move_window.as_millis() as u64 {
                    e.window_start.store(ms, Relaxed);
                    e.moves.store(0, Relaxed);
                }
                let moves = e.moves.load(Relaxed).saturating_add(1);
                e.moves.store(moves, Relaxed);
                if moves > self.cfg.move_limit {
                    let until = now + self.cfg.move_window;
                    e.pinned_until.store(until.as_millis().max(ms + 1), Relaxed);
                    e.moves.store(0, Relaxed);
                    e.window_start.store(until.as_millis(), Relaxed);
                    self.events.pinned.fetch_add(1, Relaxed);
                    let ev = PinEvent { mac, kept: from, refused: port, moves, until };
                    if book.pin_events.len() < MAX_PIN_EVENTS {
                        book.pin_events.push(ev);
                    } else {
                        book.pin_events_lost += 1;
                    }
                    return Learned::Pinned { on: from };
                }
            }
            e.last_seen.store(now.as_millis(), Relaxed);
            if e.cluster.swap(false, Relaxed) {
                self.events.cluster_moved.fetch_add(1, Relaxed);
            }
            if let Some(pb) = book.ports.get_mut(&from) {
                pb.count = pb.count.saturating_sub(1);
            }
            let seq = book.next_seq;
            book.next_seq += 1;
            e.seq.store(seq, Relaxed);
            e.port.store(code, Relaxed);
            let pb = book.ports.entry(port).or_default();
            pb.count += 1;
            pb.order.push_back((mac, seq));
            self.compact_if_bloated(&mut book, port);
            self.events.moved.fetch_add(1, Relaxed);
            return Learned::Moved { from };
        }
        let evicted = if book.total >= self.cfg.max_entries { self.evict_one(&mut book, port) } else { None };
        if book.total >= self.cfg.max_entries {
            // nothing evictable (max_entries == 0): do not learn
            return Learned::Known;
        }
        let seq = book.next_seq;
        book.next_seq += 1;
        self.map.insert(mac, Entry::new(code, now, seq), &g);
        book.total += 1;
        let pb = book.ports.entry(port).or_default();
        pb.count += 1;
        pb.order.push_back((mac, seq));
        self.events.learned.fetch_add(1, Relaxed);
        Learned::New { evicted }
    }

    /// Put `mac` on `port`, last seen at `seen`, if the table does not hold it yet and has room.
    /// Counts no event. Returns whether the entry was added.
    fn restore(&self, mac: MacAddr, port: Port, seen: Instant) -> bool {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let g = self.map.guard();
        if book.total >= self.cfg.max_entries || self.map.get(&mac, &g).is_some() {
            return false;
        }
        let seq = book.next_seq;
        book.next_seq += 1;
        self.map.insert(mac, Entry::new(port.to_u32(), seen, seq), &g);
        book.total += 1;
        let pb = book.ports.entry(port).or_default();
        pb.count += 1;
        pb.order.push_back((mac, seq));
        true
    }

    /// Take over the table and event counts of `old`, a network's previous generation (a
    /// reload; see [`crate::core::handover`]), into this empty table: every entry on the port
    /// `port_map` gives it, oldest first so eviction order is kept. What is not taken over is
    /// counted as it ends, so that learned = evicted + expired + flushed + entries still holds:
    /// an aged entry as expired, one whose port is gone (a removed peer) as flushed, one for
    /// which there is no room (a smaller table keeps the most recently seen) as evicted. A
    /// pinned MAC stays pinned, and move counting goes on where it was: a reload does not let
    /// a loop flap again. `old` is locked meanwhile, so what is read is one consistent state.
    pub fn take_over(&self, old: &Fdb, port_map: impl Fn(Port) -> Option<Port>, now: Instant) {
        let _old_book = old.book.lock().unwrap_or_else(|p| p.into_inner());
        let g = old.map.guard();
        let mut rows = Vec::new();
        let mut aged = 0;
        for (mac, e) in old.map.iter(&g) {
            if old.fresh(e, now) {
                rows.push((*mac, Port::from_u32(e.port.load(Relaxed)), e));
            } else {
                aged += 1;
            }
        }
        let ev = (&old.events, &self.events);
        for (from, to) in [
            (&ev.0.learned, &ev.1.learned),
            (&ev.0.moved, &ev.1.moved),
            (&ev.0.expired, &ev.1.expired),
            (&ev.0.evicted, &ev.1.evicted),
            (&ev.0.flushed, &ev.1.flushed),
            (&ev.0.pinned, &ev.1.pinned),
        ] {
            to.fetch_add(from.load(Relaxed), Relaxed);
        }
        rows.sort_by_key(|r| r.2.last_seen.load(Relaxed));
        let over = rows.len().saturating_sub(self.cfg.max_entries);
        let (mut flushed, mut evicted) = (0, over as u64);
        let mine = self.map.guard();
        for (mac, port, e) in rows.into_iter().skip(over) {
            let Some(p) = port_map(port) else {
                flushed += 1;
                continue;
            };
            if !self.restore(mac, p, Instant::from_millis(e.last_seen.load(Relaxed))) {
                evicted += 1;
            } else if let Some(n) = self.map.get(&mac, &mine) {
                n.window_start.store(e.window_start.load(Relaxed), Relaxed);
                n.moves.store(e.moves.load(Relaxed), Relaxed);
                n.pinned_until.store(e.pinned_until.load(Relaxed), Relaxed);
                n.cluster.store(e.cluster.load(Relaxed), Relaxed);
            }
        }
        self.events.expired.fetch_add(aged, Relaxed);
        self.events.flushed.fetch_add(flushed, Relaxed);
        self.events.evicted.fetch_add(evicted, Relaxed);
    }

    /// Learn what `old` (a previous generation still used for a moment after a reload) holds
    /// and this table does not, on the port `port_map` gives it. Each is counted as learned
    /// here; returns how many.
    pub fn adopt(&self, old: &Fdb, port_map: impl Fn(Port) -> Option<Port>, now: Instant) -> usize {
        let mut n = 0;
        for r in old.entries(now) {
            let Some(port) = port_map(r.port) else { continue };
            let seen = Instant::from_millis(now.as_millis().saturating_sub(r.age.as_millis() as u64));
            if self.restore(r.mac, port, seen) {
                self.events.learned.fetch_add(1, Relaxed);
                n += 1;
            }
        }
        n
    }

    /// Evict the oldest entry of the busiest port (ties go to the learning port, so a port at
    /// parity with the others pays for its own new MAC).
    fn evict_one(&self, book: &mut Book, learner: Port) -> Option<MacAddr> {
        let learner_count = book.ports.get(&learner).map_or(0, |p| p.count);
        let mut victim = learner;
        let mut most = learner_count;
        for (p, pb) in &book.ports {
            if pb.count > most {
                most = pb.count;
                victim = *p;
            }
        }
        if most == 0 {
            return None;
        }
        let g = self.map.guard();
        let pb = book.ports.get_mut(&victim)?;
        while let Some((mac, seq)) = pb.order.pop_front() {
            let current = self.map.get(&mac, &g).is_some_and(|e| {
                e.seq.load(Relaxed) == seq && e.port.load(Relaxed) == victim.to_u32()
            });
            if current {
                self.map.remove(&mac, &g);
                pb.count -= 1;
                book.total -= 1;
                self.events.evicted.fetch_add(1, Relaxed);
                return Some(mac);
            }
        }
        None
    }

    /// Stale order items pile up when MACs move back and forth; drop them once they
    /// outnumber the live entries.
    fn compact_if_bloated(&self, book: &mut Book, port: Port) {
        let g = self.map.guard();
        if let Some(pb) = book.ports.get_mut(&port)
            && pb.order.len() > 2 * pb.count + 64
        {
            let code = port.to_u32();
            pb.order.retain(|(mac, seq)| {
                self.map
                    .get(mac, &g)
                    .is_some_and(|e| e.seq.load(Relaxed) == *seq && e.port.load(Relaxed) == code)
            });
        }
    }

    /// Remove entries not refreshed for the ageing time; returns how many expired.
    pub fn sweep(&self, now: Instant) -> usize {
        self.remove_where(now, |e, now| !self.fresh(e, now), &self.events.expired)
    }

    /// Forget every MAC learned on `port` (a peer gone down, a port removed).
    pub fn flush_port(&self, port: Port, now: Instant) -> usize {
        let code = port.to_u32();
        self.remove_where(now, |e, _| e.port.load(Relaxed) == code, &self.events.flushed)
    }

    /// Forget everything.
    pub fn flush_all(&self, now: Instant) -> usize {
        self.remove_where(now, |_, _| true, &self.events.flushed)
    }

    fn remove_where(&self, now: Instant, pred: impl Fn(&Entry, Instant) -> bool, counter: &AtomicU64) -> usize {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let g = self.map.guard();
        let mut removed = 0;
        for (mac, e) in self.map.iter(&g) {
            if pred(e, now) {
                let port = Port::from_u32(e.port.load(Relaxed));
                if self.map.remove(mac, &g).is_some() {
                    removed += 1;
                    book.total = book.total.saturating_sub(1);
                    if let Some(pb) = book.ports.get_mut(&port) {
                        pb.count = pb.count.saturating_sub(1);
                    }
                }
            }
        }
        if removed > 0 {
            counter.fetch_add(removed as u64, Relaxed);
            let map = &self.map;
            book.ports.retain(|port, pb| {
                let code = port.to_u32();
                pb.order.retain(|(mac, seq)| {
                    map.get(mac, &g).is_some_and(|e| e.seq.load(Relaxed) == *seq && e.port.load(Relaxed) == code)
                });
                pb.count > 0
            });
        }
        removed
    }

    /// The MACs pinned since the last call (at most 64), and how many more were not kept.
    pub fn take_pin_events(&self) -> (Vec<PinEvent>, u64) {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut book.pin_events), std::mem::take(&mut book.pin_events_lost))
    }

    /// Put `mac` behind `port` as type `cluster` (an advertisement): moved there from wherever
    /// it is (a move, counted) unless `only_if_absent` and the table has it somewhere. An
    /// entry of type `cluster` does not age until [`Self::uncluster`]. Returns whether the
    /// entry is now `cluster` behind `port`.
    pub fn set_cluster(&self, mac: MacAddr, port: Port, only_if_absent: bool, now: Instant) -> bool {
        let code = port.to_u32();
        {
            let g = self.map.guard();
            if let Some(e) = self.map.get(&mac, &g).filter(|e| self.fresh(e, now)) {
                if e.port.load(Relaxed) == code {
                    e.cluster.store(true, Relaxed);
                    e.last_seen.store(now.as_millis(), Relaxed);
                    return true;
                }
                if only_if_absent {
                    return false;
                }
                // the advertisement with the higher sequence wins over a pin and a learned entry
                e.pinned_until.store(0, Relaxed);
                e.cluster.store(false, Relaxed);
            }
        }
        match self.learn_slow(mac, port, now) {
            Learned::Pinned { .. } => false,
            Learned::Known | Learned::New { .. } | Learned::Moved { .. } => {
                let g = self.map.guard();
                match self.map.get(&mac, &g).filter(|e| e.port.load(Relaxed) == code) {
                    Some(e) => {
                        e.cluster.store(true, Relaxed);
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// `mac` behind `port` is no longer advertised: if it is a `cluster` entry there, it
    /// becomes a learned one, ageing from `now`.
    pub fn uncluster(&self, mac: MacAddr, port: Port, now: Instant) -> bool {
        let g = self.map.guard();
        match self.map.get(&mac, &g) {
            Some(e) if e.port.load(Relaxed) == port.to_u32() && e.cluster.swap(false, Relaxed) => {
                e.last_seen.store(now.as_millis(), Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Entries of type `cluster`.
    pub fn cluster_len(&self) -> usize {
        let g = self.map.guard();
        self.map.iter(&g).filter(|(_, e)| e.cluster.load(Relaxed)).count()
    }

    /// Whether `mac` is pinned at `now`.
    pub fn is_pinned(&self, mac: MacAddr, now: Instant) -> bool {
        let g = self.map.guard();
        self.map.get(&mac, &g).is_some_and(|e| e.pinned(now) && self.fresh(e, now))
    }

    /// Number of entries (aged ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries per port, for tests and the admin view.
    pub fn count_on(&self, port: Port) -> usize {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).ports.get(&port).map_or(0, |p| p.count)
    }

    /// A copy of the live table (aged entries left out), sorted by MAC.
    pub fn entries(&self, now: Instant) -> Vec<FdbRow> {
        let g = self.map.guard();
        let mut rows: Vec<FdbRow> = self
            .map
            .iter(&g)
            .filter(|(_, e)| self.fresh(e, now))
            .map(|(mac, e)| FdbRow {
                mac: *mac,
                port: Port::from_u32(e.port.load(Relaxed)),
                age: now.saturating_since(Instant::from_millis(e.last_seen.load(Relaxed))),
                cluster: e.cluster.load(Relaxed),
            })
            .collect();
        rows.sort_by_key(|r| r.mac);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{LocalPort, PeerIdx};

    const L0: Port = Port::Local(LocalPort(0));
    const P0: Port = Port::Peer(PeerIdx(0));
    const P1: Port = Port::Peer(PeerIdx(1));

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    fn fdb(max: usize) -> Fdb {
        Fdb::new(FdbConfig { ageing: Duration::from_secs(300), max_entries: max, move_limit: 0, ..FdbConfig::default() })
    }

    fn damped(limit: u32, window_secs: u64) -> Fdb {
        Fdb::new(FdbConfig { move_limit: limit, move_window: Duration::from_secs(window_secs), ..FdbConfig::default() })
    }

    #[test]
    fn a_cluster_entry_does_not_age_until_unclustered_and_a_data_path_move_is_counted() {
        let f = fdb(10);
        assert!(f.set_cluster(mac(1), P0, false, Instant::ZERO));
        assert_eq!(f.lookup(mac(1), Instant::from_secs(10_000)), Some(P0), "no ageing while advertised");
        assert_eq!(f.sweep(Instant::from_secs(10_000)), 0);
        assert!(f.entries(Instant::from_secs(1))[0].cluster);
        // the record went away: normal ageing from then on
        assert!(f.uncluster(mac(1), P0, Instant::from_secs(10_000)));
        assert_eq!(f.lookup(mac(1), Instant::from_secs(10_299)), Some(P0));
        assert_eq!(f.sweep(Instant::from_secs(10_301)), 1);
        // a data-path move of a cluster entry is counted and makes it learned
        f.set_cluster(mac(2), P0, false, Instant::ZERO);
        assert!(matches!(f.learn(mac(2), P1, Instant::from_secs(1)), Learned::Moved { .. }));
        assert_eq!(f.events.cluster_moved.load(Relaxed), 1);
        assert!(!f.entries(Instant::from_secs(1)).iter().any(|r| r.cluster));
        // only_if_absent does not take it back; a new advertisement (higher sequence) does
        assert!(!f.set_cluster(mac(2), P0, true, Instant::from_secs(2)));
        assert_eq!(f.lookup(mac(2), Instant::from_secs(2)), Some(P1));
        assert!(f.set_cluster(mac(2), P0, false, Instant::from_secs(2)));
        assert_eq!(f.lookup(mac(2), Instant::from_secs(2)), Some(P0));
        // a local MAC moved behind a peer by an advertisement
        f.learn(mac(3), L0, Instant::ZERO);
        assert!(f.set_cluster(mac(3), P1, false, Instant::from_secs(3)));
        assert_eq!(f.lookup(mac(3), Instant::from_secs(3)), Some(P1));
    }

    #[test]
    fn a_mac_moving_more_than_the_limit_is_pinned_and_reported_once() {
        let f = damped(5, 180);
        f.learn(mac(1), P0, Instant::ZERO);
        // 5 moves within the window are allowed (P0 -> P1 -> P0 ...)
        for i in 1..=5u64 {
            let to = if i % 2 == 1 { P1 } else { P0 };
            assert!(matches!(f.learn(mac(1), to, Instant::from_secs(i)), Learned::Moved { .. }), "move {i}");
        }
        assert_eq!(f.lookup(mac(1), Instant::from_secs(5)), Some(P1));
        // the sixth is refused: it stays on P1, pinned
        assert_eq!(f.learn(mac(1), P0, Instant::from_secs(6)), Learned::Pinned { on: P1 });
        assert_eq!(f.lookup(mac(1), Instant::from_secs(6)), Some(P1));
        assert!(f.is_pinned(mac(1), Instant::from_secs(6)));
        // further claims are refused without new events; its own port still refreshes it
        for t in 7..100 {
            assert_eq!(f.learn(mac(1), P0, Instant::from_secs(t)), Learned::Pinned { on: P1 });
            assert_eq!(f.learn(mac(1), P1, Instant::from_secs(t)), Learned::Known);
        }
        let (ev, lost) = f.take_pin_events();
        assert_eq!(ev, vec![PinEvent { mac: mac(1), kept: P1, refused: P0, moves: 6, until: Instant::from_secs(186) }]);
        assert_eq!(lost, 0);
        assert_eq!(f.take_pin_events().0, vec![], "events are handed out once");
        assert_eq!(f.events.pinned.load(Relaxed), 1);
        assert_eq!(f.events.moved.load(Relaxed), 5);
        // after one window it may move again
        assert_eq!(f.learn(mac(1), P0, Instant::from_secs(187)), Learned::Moved { from: P1 });
    }

    #[test]
    fn a_pinned_mac_that_aged_out_may_be_learned_elsewhere() {
        let f = Fdb::new(FdbConfig { ageing: Duration::from_secs(5), move_limit: 1, move_window: Duration::from_secs(60), ..FdbConfig::default() });
        f.learn(mac(1), P0, Instant::ZERO);
        f.learn(mac(1), P1, Instant::ZERO);
        assert_eq!(f.learn(mac(1), P0, Instant::ZERO), Learned::Pinned { on: P1 });
        // silent on P1 for longer than the ageing time: the entry is gone as far as lookups go,
        // so the pin must not keep refusing the MAC elsewhere
        let t = Instant::from_secs(6);
        assert_eq!(f.lookup(mac(1), t), None);
        assert!(!f.is_pinned(mac(1), t));
        assert!(matches!(f.learn(mac(1), P0, t), Learned::Moved { .. }));
        assert_eq!(f.lookup(mac(1), t), Some(P0));
        assert!(!f.is_pinned(mac(1), t), "the old pin does not carry over to the new port");
    }

    #[test]
    fn relearning_an_aged_entry_elsewhere_is_not_a_move_towards_a_pin() {
        let f = Fdb::new(FdbConfig { ageing: Duration::from_secs(5), move_limit: 1, move_window: Duration::from_secs(60), ..FdbConfig::default() });
        f.learn(mac(1), P0, Instant::ZERO);
        f.learn(mac(1), P1, Instant::from_secs(1)); // one move: at the limit
        // silent past the ageing time, then seen on P0: unknown MAC learned, not a second move
        assert!(matches!(f.learn(mac(1), P0, Instant::from_secs(10)), Learned::Moved { .. }));
        assert_eq!(f.lookup(mac(1), Instant::from_secs(10)), Some(P0));
        assert_eq!(f.events.pinned.load(Relaxed), 0);
    }

    #[test]
    fn moves_spread_wider_than_the_window_never_pin() {
        let f = damped(5, 180);
        f.learn(mac(1), P0, Instant::ZERO);
        for i in 1..=50u64 {
            let to = if i % 2 == 1 { P1 } else { P0 };
            // one move every 40 s: at most 5 in any 180 s window
            assert!(matches!(f.learn(mac(1), to, Instant::from_secs(40 * i)), Learned::Moved { .. }), "move {i}");
        }
        assert_eq!(f.events.pinned.load(Relaxed), 0);
    }

    #[test]
    fn move_limit_zero_never_pins() {
        let f = damped(0, 180);
        f.learn(mac(1), P0, Instant::ZERO);
        for i in 1..1000u64 {
            let to = if i % 2 == 1 { P1 } else { P0 };
            assert!(matches!(f.learn(mac(1), to, Instant::from_millis(i)), Learned::Moved { .. }));
        }
    }

    #[test]
    fn pin_events_are_bounded() {
        let f = damped(1, 180);
        for m in 0..200 {
            f.learn(mac(m), P0, Instant::ZERO);
            f.learn(mac(m), P1, Instant::ZERO);
            assert_eq!(f.learn(mac(m), P0, Instant::ZERO), Learned::Pinned { on: P1 });
        }
        let (ev, lost) = f.take_pin_events();
        assert_eq!((ev.len(), lost), (64, 136));
    }

    #[test]
    fn learned_mac_is_found_on_its_port() {
        let f = fdb(16);
        assert_eq!(f.learn(mac(1), P0, Instant::ZERO), Learned::New { evicted: None });
        assert_eq!(f.learn(mac(1), P0, Instant::ZERO), Learned::Known);
        assert_eq!(f.lookup(mac(1), Instant::ZERO), Some(P0));
        assert_eq!(f.lookup(mac(2), Instant::ZERO), None);
        assert_eq!(f.events.learned.load(Relaxed), 1);
    }

    #[test]
    fn mac_seen_on_another_port_moves_and_is_counted() {
        let f = fdb(16);
        f.learn(mac(1), P0, Instant::ZERO);
        assert_eq!(f.learn(mac(1), L0, Instant::from_secs(1)), Learned::Moved { from: P0 });
        assert_eq!(f.lookup(mac(1), Instant::from_secs(1)), Some(L0));
        assert_eq!(f.count_on(P0), 0);
        assert_eq!(f.count_on(L0), 1);
        assert_eq!(f.len(), 1);
        assert_eq!(f.events.moved.load(Relaxed), 1);
    }

    #[test]
    fn entries_age_out_after_ageing_time_unless_refreshed() {
        let f = fdb(16);
        f.learn(mac(1), P0, Instant::ZERO);
        f.learn(mac(2), P0, Instant::ZERO);
        f.learn(mac(2), P0, Instant::from_secs(200)); // refreshed
        let t = Instant::from_secs(301);
        assert_eq!(f.lookup(mac(1), t), None, "aged entry is unknown at once");
        assert_eq!(f.sweep(t), 1);
        assert_eq!(f.len(), 1);
        assert_eq!(f.lookup(mac(2), t), Some(P0));
        assert_eq!(f.events.expired.load(Relaxed), 1);
    }

    #[test]
    fn table_never_exceeds_its_cap() {
        let f = fdb(8);
        for i in 0..100 {
            f.learn(mac(i), P0, Instant::ZERO);
            assert!(f.len() <= 8);
        }
        assert_eq!(f.len(), 8);
        assert_eq!(f.events.evicted.load(Relaxed), 92);
    }

    #[test]
    fn a_flooding_port_evicts_its_own_macs_not_the_others() {
        let f = fdb(100);
        for i in 0..10 {
            f.learn(mac(i), L0, Instant::ZERO);
            f.learn(mac(1000 + i), P1, Instant::ZERO);
        }
        for i in 0..100_000 {
            f.learn(mac(1_000_000 + i), P0, Instant::from_millis(i.into()));
        }
        assert_eq!(f.len(), 100);
        for i in 0..10 {
            assert_eq!(f.lookup(mac(i), Instant::ZERO), Some(L0));
            assert_eq!(f.lookup(mac(1000 + i), Instant::ZERO), Some(P1));
        }
        assert_eq!(f.count_on(P0), 80);
        // the survivors of the flooding port are its newest MACs
        assert_eq!(f.lookup(mac(1_000_000 + 99_999), Instant::ZERO), Some(P0));
        assert_eq!(f.lookup(mac(1_000_000), Instant::ZERO), None);
    }

    #[test]
    fn a_full_table_gives_a_small_port_room_by_evicting_the_busiest() {
        let f = fdb(10);
        for i in 0..10 {
            f.learn(mac(i), P0, Instant::ZERO);
        }
        assert_eq!(f.learn(mac(100), L0, Instant::ZERO), Learned::New { evicted: Some(mac(0)) });
        assert_eq!(f.lookup(mac(100), Instant::ZERO), Some(L0));
        assert_eq!(f.len(), 10);
    }

    #[test]
    fn flapping_mac_does_not_grow_bookkeeping_without_bound() {
        let f = fdb(16);
        for i in 0..10_000u64 {
            let p = if i % 2 == 0 { P0 } else { P1 };
            f.learn(mac(1), p, Instant::from_millis(i));
        }
        let book = f.book.lock().unwrap();
        let queued: usize = book.ports.values().map(|p| p.order.len()).sum();
        assert!(queued < 200, "{queued} order items for one MAC");
        assert_eq!(book.total, 1);
    }

    #[test]
    fn flush_port_forgets_only_that_port() {
        let f = fdb(16);
        f.learn(mac(1), P0, Instant::ZERO);
        f.learn(mac(2), P1, Instant::ZERO);
        f.learn(mac(3), P0, Instant::ZERO);
        assert_eq!(f.flush_port(P0, Instant::ZERO), 2);
        assert_eq!(f.lookup(mac(1), Instant::ZERO), None);
        assert_eq!(f.lookup(mac(2), Instant::ZERO), Some(P1));
        assert_eq!(f.len(), 1);
        // the freed room is usable again and counts stay right
        for i in 10..25 {
            f.learn(mac(i), P0, Instant::ZERO);
        }
        assert_eq!(f.len(), 16);
    }

    #[test]
    fn entries_lists_live_rows_with_age() {
        let f = fdb(16);
        f.learn(mac(2), P1, Instant::from_secs(5));
        f.learn(mac(1), L0, Instant::from_secs(8));
        let rows = f.entries(Instant::from_secs(10));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], FdbRow { mac: mac(1), port: L0, age: Duration::from_secs(2), cluster: false });
        assert_eq!(rows[1].age, Duration::from_secs(5));
    }
}
