//! Keeping the region usable: another process with our uid can truncate, remove or replace
//! the shared memory object, or overwrite any byte of it. The Supervisor is the authority on
//! node state, so it rebuilds the region (or rewrites the records) from its own memory and
//! carries on; no node notices.
//!
//! Node records: each carries a check (`protocol::node::record_check`), and the Supervisor
//! remembers the check of the last record it published at each index ([`Published`]). A
//! record whose words do not verify, or verify but are not what it published (a forgery that
//! recomputed the check), is rewritten from memory: the whole table when a Main asks (it
//! found a bad record and rang [`fifo::REPAIR`]), and a few records at the end of every loop
//! turn otherwise ([`SWEEP`]), so damage is found even when no Main looks.

use super::*;
use crate::protocol::node::CHECK_WORD;
use std::cell::{Cell, RefCell};

/// Records checked at the end of each loop turn (a full check runs on a Main's request).
const SWEEP: usize = 16;

/// What this Supervisor last published in the node table: the check word of each record, by
/// index (8 bytes per node), and where the per-turn sweep goes on.
#[derive(Debug, Default)]
pub(super) struct Published {
    checks: RefCell<Vec<u64>>,
    cursor: Cell<usize>,
}

impl Published {
    /// Record `i` was just written with check `check`.
    pub(super) fn note(&self, i: usize, check: u64) {
        let mut c = self.checks.borrow_mut();
        if c.len() <= i {
            c.resize(i + 1, 0);
        }
        c[i] = check;
    }

    fn check(&self, i: usize) -> Option<u64> {
        self.checks.borrow().get(i).copied()
    }
}

/// After an upgrade from a build that named its region otherwise (ABI 1): tell the Mains still
/// watching that region that the upgrade happened (its `generation` goes up, which is what an
/// ABI 1 Main waits for), then remove it. Only a region that says it is broctld's, ABI 1, is
/// touched; the header's first lines have the same layout in both ABIs.
pub(super) fn retire_legacy_region(instance: &Instance) {
    use crate::protocol::layout::{Header, MAGIC, MAX_REGION};
    let legacy = instance.legacy_shm_name();
    let Ok(region) = crate::shm::Region::open_existing(&legacy, size_of_header(), MAX_REGION)
    else {
        return;
    };
    if let Ok(h) = region.get::<Header>(0) {
        if h.magic.load(Ordering::Acquire) == MAGIC && h.abi_version.load(Ordering::Relaxed) == 1 {
            h.generation.fetch_add(1, Ordering::Release);
            h.ring.wake_all_readers();
        }
    }
    if crate::shm::Region::unlink(&legacy).is_ok() {
        log!("upgrade: removed the region of the previous build ({legacy})");
    }
}

fn size_of_header() -> usize {
    std::mem::size_of::<crate::protocol::layout::Header>()
}

impl Supervisor {
    /// After every loop turn: a SIGBUS caught in our mapping means the object was truncated
    /// (the mapping now holds private zeroes): rebuild. Otherwise the next few node records
    /// are checked against what we published (see [`SWEEP`]).
    pub(super) fn check_damage(&mut self) {
        if self.shared.damaged() {
            if !self.repair_failed {
                self.rebuild_region("was truncated by another process (SIGBUS caught)");
            }
            return;
        }
        self.check_records(false);
    }

    /// Compares node records with what this Supervisor last published, and rewrites from its
    /// memory every one that differs: torn (its sequence left odd), failing its check (zeroed,
    /// a flipped bit, a forged field, a record copied from elsewhere) or verifying but not
    /// ours (a forgery that recomputed the check). Also restores the header's record count.
    /// `all`: the whole table; else the next [`SWEEP`] records. Returns how many were rewritten.
    pub(super) fn check_records(&mut self, all: bool) -> usize {
        let n = self.nodes.len().min(self.capacity());
        let count_word = &self.shared.header().node_count;
        if count_word.load(Ordering::Acquire) as usize != n {
            log!(
                "region {}: its node count was overwritten ({} instead of {n}); restored",
                self.shared.path().display(),
                count_word.load(Ordering::Relaxed)
            );
            count_word.store(n as u32, Ordering::Release);
        }
        if n == 0 {
            return 0;
        }
        let (first, count) = if all {
            (0, n)
        } else {
            (self.published.cursor.get() % n, SWEEP.min(n))
        };
        self.published.cursor.set((first + count) % n);
        let mut bad = Vec::new();
        for k in 0..count {
            let i = (first + k) % n;
            let ours = match self.shared.read_record(i) {
                Ok(w) => self.published.check(i) == Some(w[CHECK_WORD]),
                Err(_) => false,
            };
            if !ours {
                bad.push(i);
            }
        }
        if bad.is_empty() {
            return 0;
        }
        let names: Vec<&str> = bad
            .iter()
            .take(8)
            .map(|&i| self.nodes[i].spec.name.as_str())
            .collect();
        log!(
            "region {}: {} node record(s) damaged or forged ({}{}); rewritten from this Supervisor's state",
            self.shared.path().display(),
            bad.len(),
            names.join(", "),
            if bad.len() > names.len() { ", ..." } else { "" }
        );
        for &i in &bad {
            self.publish(i);
        }
        bad.len()
    }

    /// On a Main's request (it found the region missing or damaged): rebuild it unless our
    /// mapping is still the object at our name.
    pub(super) fn check_region(&mut self) {
        self.repair_failed = false;
        if self.shared.damaged() {
            self.rebuild_region("was truncated by another process (SIGBUS caught)");
            return;
        }
        if let Some(what) = self.header_damage() {
            self.rebuild_region(&format!(
                "had its header overwritten by another process ({what})"
            ));
            return;
        }
        match self.shared.still_named() {
            Ok(true) => {}
            Ok(false) => return self.rebuild_region("was removed or replaced by another process"),
            Err(e) => log!(
                "region {}: cannot check it ({e}); leaving it as it is",
                self.shared.path().display()
            ),
        }
        // The Main may have found a bad node record: check them all.
        self.check_records(true);
    }

    /// What another process overwrote in our header, if anything: every word we wrote once
    /// and never change is checked against what we know.
    fn header_damage(&self) -> Option<&'static str> {
        use crate::protocol::layout::{identity_hash, ABI_VERSION, LAYOUT_HASH, MAGIC};
        let h = self.shared.header();
        let g = self.shared.geometry();
        let id = identity_hash(&self.instance.identity());
        let r = Ordering::Relaxed;
        let checks = [
            (h.magic.load(r) == MAGIC, "magic"),
            (h.abi_version.load(r) == ABI_VERSION, "ABI version"),
            (h.layout_hash.load(r) == LAYOUT_HASH, "layout hash"),
            (
                h.total_size.load(r) == self.shared.offsets().total as u64,
                "size",
            ),
            (
                h.node_capacity.load(r) as usize == g.nodes
                    && h.ring_capacity.load(r) as usize == g.ring
                    && h.slot_count.load(r) as usize == g.slots,
                "capacities",
            ),
            (
                h.identity_hash[0].load(r) == id as u64
                    && h.identity_hash[1].load(r) == (id >> 64) as u64,
                "identity",
            ),
            (
                h.created_wall_ms.load(r) == self.shared.created_wall_ms(),
                "creation time (the key of the records' checks)",
            ),
            (h.owner_pid.load(r) == std::process::id(), "owner pid"),
            (h.generation.load(r) == self.generation, "generation"),
        ];
        checks.iter().find(|(ok, _)| !ok).map(|(_, what)| *what)
    }

    /// Creates a new region at our name and republishes everything from memory: header,
    /// ownership, every node record; a new generation and a new table epoch (commands built
    /// against the old region are refused as stale, never misapplied).
    fn rebuild_region(&mut self, why: &str) {
        let name = self.shared.name().to_owned();
        let path = self.shared.path().to_owned();
        log!(
            "region {}: {why}; rebuilding it from this Supervisor's state",
            path.display()
        );
        // Remove the name only if it still names our own (damaged) object.
        if self.shared.still_named().unwrap_or(false) {
            let _ = crate::shm::Region::unlink(&name);
        }
        let geometry = self.shared.geometry();
        let shared = match Shared::create_owned(&name, geometry, &self.instance.identity()) {
            Ok(s) => s,
            Err(e) => {
                log!("region {}: cannot rebuild it: {e}; Mains cannot reach this Supervisor until it is (a Main asks again on its next command)", path.display());
                self.repair_failed = true;
                return;
            }
        };
        self.generation += 1;
        let h = shared.header();
        h.generation.store(self.generation, Ordering::Relaxed);
        h.owner_pid.store(std::process::id(), Ordering::Relaxed);
        h.owner_start
            .store(procstat::own_start_time(), Ordering::Relaxed);
        // An epoch no command against the old region can carry by chance.
        h.config_epoch
            .store((clock::wall_ms() as u32) | 1, Ordering::Release);
        self.shared = shared;
        self.slot_seen = vec![0; geometry.slots];
        self.announce_ready(self.generation);
        log!(
            "region {}: rebuilt (generation {}), {} node record(s) republished",
            path.display(),
            self.generation,
            self.nodes.len()
        );
    }
}
