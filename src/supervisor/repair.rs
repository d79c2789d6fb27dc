//! Keeping the region usable: another process with our uid can truncate, remove or replace
//! the shared memory object. The Supervisor is the authority on node state, so it rebuilds
//! the region from its own memory and carries on; no node notices.

use super::*;

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
    /// (the mapping now holds private zeroes): rebuild.
    pub(super) fn check_damage(&mut self) {
        if self.shared.damaged() && !self.repair_failed {
            self.rebuild_region("was truncated by another process (SIGBUS caught)");
        }
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
            Ok(false) => self.rebuild_region("was removed or replaced by another process"),
            Err(e) => log!(
                "region {}: cannot check it ({e}); leaving it as it is",
                self.shared.path().display()
            ),
        }
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
