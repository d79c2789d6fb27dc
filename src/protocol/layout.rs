//! The region's layout: a versioned header followed by the node table, the event ring and the
//! mailbox. See `docs/design.md` for the table of offsets.
//!
//! A reader trusts nothing before [`Shared::open`] has checked, in this order: the object's
//! owner, mode, type and size (in `shm::region`), then magic, ABI version, header size, layout
//! hash, the owner uid written in the header, the capacities, and that the size the
//! capacities imply is exactly the object's size.

use super::mailbox::Slot;
use crate::shm::ring::{Ring, RingHead};
use crate::shm::seqlock::SeqCell;
use crate::shm::{Region, RegionError, SharedPod};
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use zerocopy::{FromBytes, IntoBytes, KnownLayout};

/// `"BROCTLD1"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"BROCTLD1");
/// Bumped on any change of meaning; the layout hash catches changes of shape.
pub const ABI_VERSION: u32 = 1;
/// Words in a node record (after its sequence word).
pub const NODE_WORDS: usize = 15;
/// Words in an event entry (after its stamp).
pub const EVENT_WORDS: usize = 7;
/// Most nodes one instance may have (the mailbox's node mask has this many bits).
pub const MAX_NODES: usize = 1024;
/// Largest region a reader will map (a bigger object is refused before mapping).
pub const MAX_REGION: usize = 64 << 20;

/// A node record in the table.
pub type NodeCell = SeqCell<NODE_WORDS>;
/// An entry of the event ring.
pub type EventCell = SeqCell<EVENT_WORDS>;

/// The header at offset 0. The first cache line is written once at creation; the others are
/// each on their own line, since different processes write them.
#[derive(FromBytes, IntoBytes, KnownLayout)]
#[repr(C, align(64))]
pub struct Header {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`ABI_VERSION`].
    pub abi_version: AtomicU32,
    /// `size_of::<Header>()`.
    pub header_size: AtomicU32,
    /// [`LAYOUT_HASH`].
    pub layout_hash: AtomicU64,
    /// The object's size in bytes.
    pub total_size: AtomicU64,
    /// Node records in the table.
    pub node_capacity: AtomicU32,
    /// Entries in the ring (a power of two).
    pub ring_capacity: AtomicU32,
    /// Mailbox slots.
    pub slot_count: AtomicU32,
    /// The uid that created the region.
    pub owner_uid: AtomicU32,
    _reserved0: [AtomicU64; 2],

    /// Incremented each time a Supervisor takes the region over.
    pub generation: AtomicU64,
    /// The Supervisor's pid.
    pub owner_pid: AtomicU32,
    /// [`SupervisorState`] as a u32; a futex word Mains can wait on.
    pub state: AtomicU32,
    /// The Supervisor's start time (clock ticks since boot, `/proc/PID/stat` field 22).
    pub owner_start: AtomicU64,
    /// Records in use in the node table.
    pub node_count: AtomicU32,
    /// Incremented when the node table's set of nodes changes (reload).
    pub config_epoch: AtomicU32,
    /// When the region was created (ms since the epoch).
    pub created_wall_ms: AtomicU64,
    _reserved1: [AtomicU64; 3],

    /// The doorbell flag: 0 idle, 1 rung. A byte goes down the FIFO only on 0 -> 1.
    pub bell: AtomicU32,
    _bell_pad: AtomicU32,
    _reserved2: [AtomicU64; 7],

    /// The next command sequence number (Mains `fetch_add` it).
    pub next_cmd_seq: AtomicU64,
    _reserved3: [AtomicU64; 7],

    /// The event ring's head.
    pub ring: RingHead,
}

// SAFETY: repr(C), atomics only, FromBytes.
unsafe impl SharedPod for Header {}

/// The Supervisor's lifecycle, as published in [`Header::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SupervisorState {
    /// Region created, not yet serving commands.
    Starting = 0,
    /// Serving commands.
    Ready = 1,
    /// Stopping every node before exiting.
    ShuttingDown = 2,
    /// Gone: the region is about to be unlinked.
    Exited = 3,
}

impl SupervisorState {
    /// Decodes a header value.
    pub fn from_u32(v: u32) -> Option<SupervisorState> {
        Some(match v {
            0 => SupervisorState::Starting,
            1 => SupervisorState::Ready,
            2 => SupervisorState::ShuttingDown,
            3 => SupervisorState::Exited,
            _ => return None,
        })
    }
}

const fn fnv(mut h: u64, v: u64) -> u64 {
    let bytes = v.to_le_bytes();
    let mut i = 0;
    while i < 8 {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
        i += 1;
    }
    h
}

const _: () = NodeCell::NO_PADDING;
const _: () = EventCell::NO_PADDING;
const _: () = assert!(size_of::<Header>() == 320);
const _: () = assert!(size_of::<NodeCell>() == 128);
const _: () = assert!(size_of::<EventCell>() == 64);
const _: () = assert!(size_of::<Slot>() == 320);

/// A hash of every size and offset a reader relies on: two builds agree on it only if they
/// agree on the layout.
pub const LAYOUT_HASH: u64 = {
    let fields = [
        ABI_VERSION as u64,
        size_of::<Header>() as u64,
        offset_of!(Header, magic) as u64,
        offset_of!(Header, abi_version) as u64,
        offset_of!(Header, header_size) as u64,
        offset_of!(Header, layout_hash) as u64,
        offset_of!(Header, total_size) as u64,
        offset_of!(Header, node_capacity) as u64,
        offset_of!(Header, ring_capacity) as u64,
        offset_of!(Header, slot_count) as u64,
        offset_of!(Header, owner_uid) as u64,
        offset_of!(Header, generation) as u64,
        offset_of!(Header, owner_pid) as u64,
        offset_of!(Header, state) as u64,
        offset_of!(Header, owner_start) as u64,
        offset_of!(Header, node_count) as u64,
        offset_of!(Header, config_epoch) as u64,
        offset_of!(Header, bell) as u64,
        offset_of!(Header, next_cmd_seq) as u64,
        offset_of!(Header, ring) as u64,
        size_of::<RingHead>() as u64,
        size_of::<NodeCell>() as u64,
        size_of::<EventCell>() as u64,
        size_of::<Slot>() as u64,
        offset_of!(Slot, state) as u64,
        offset_of!(Slot, mask) as u64,
        offset_of!(Slot, reply) as u64,
        NODE_WORDS as u64,
        EVENT_WORDS as u64,
    ];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut i = 0;
    while i < fields.len() {
        h = fnv(h, fields[i]);
        i += 1;
    }
    h
};

/// The capacities of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Node records.
    pub nodes: usize,
    /// Ring entries (power of two).
    pub ring: usize,
    /// Mailbox slots.
    pub slots: usize,
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry {
            nodes: MAX_NODES,
            ring: 4096,
            slots: 32,
        }
    }
}

/// Byte offsets of the parts of a region with a given geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// The node table.
    pub nodes: usize,
    /// The ring entries.
    pub ring: usize,
    /// The mailbox slots.
    pub slots: usize,
    /// Total size (a multiple of the page size).
    pub total: usize,
}

impl Geometry {
    /// Whether the capacities are ones this build accepts.
    pub fn is_valid(&self) -> bool {
        (1..=MAX_NODES).contains(&self.nodes)
            && self.ring.is_power_of_two()
            && (16..=65_536).contains(&self.ring)
            && (1..=256).contains(&self.slots)
    }

    /// Where everything goes.
    pub fn offsets(&self) -> Offsets {
        let nodes = size_of::<Header>().next_multiple_of(64);
        let ring = nodes + self.nodes * size_of::<NodeCell>();
        let slots = ring + self.ring * size_of::<EventCell>();
        let total = (slots + self.slots * size_of::<Slot>()).next_multiple_of(4096);
        Offsets {
            nodes,
            ring,
            slots,
            total,
        }
    }
}

/// Why a region was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Opening, checking or mapping the object failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The first 8 bytes are not broctld's.
    #[error("shared memory region {path} is not a broctld region (magic {found:#018x}); another program uses that name: stop it or remove the file")]
    Magic {
        /// `/dev/shm/NAME`.
        path: PathBuf,
        /// What was there.
        found: u64,
    },
    /// Another ABI version wrote it.
    #[error("shared memory region {path} has ABI version {found}, this broctld speaks {expected}: use the broctld binary that matches the running Supervisor, or `broctld shutdown` with it first")]
    Version {
        /// `/dev/shm/NAME`.
        path: PathBuf,
        /// Found version.
        found: u32,
        /// Our version.
        expected: u32,
    },
    /// Same version number, different shape.
    #[error("shared memory region {path} has layout {found:#018x}, this build expects {expected:#018x}: the running Supervisor was built differently; use its binary")]
    Layout {
        /// `/dev/shm/NAME`.
        path: PathBuf,
        /// Found hash.
        found: u64,
        /// Our hash.
        expected: u64,
    },
    /// The header's capacities or sizes are inconsistent.
    #[error("shared memory region {path} has an inconsistent header ({what}): it is damaged; stop its Supervisor and remove the file")]
    Geometry {
        /// `/dev/shm/NAME`.
        path: PathBuf,
        /// Which check failed.
        what: String,
    },
}

/// A validated, mapped region with typed views of its parts.
pub struct Shared {
    region: Region,
    geometry: Geometry,
    offsets: Offsets,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.region.name())
            .field("geometry", &self.geometry)
            .finish()
    }
}

impl Shared {
    /// Creates a region `name` with `geometry` and writes its header (state `Starting`).
    pub fn create(name: &str, geometry: Geometry) -> Result<Shared, ProtocolError> {
        assert!(geometry.is_valid());
        let offsets = geometry.offsets();
        let region = Region::create(name, offsets.total)?;
        let shared = Shared {
            region,
            geometry,
            offsets,
        };
        let h = shared.header();
        h.abi_version.store(ABI_VERSION, Ordering::Relaxed);
        h.header_size
            .store(size_of::<Header>() as u32, Ordering::Relaxed);
        h.layout_hash.store(LAYOUT_HASH, Ordering::Relaxed);
        h.total_size.store(offsets.total as u64, Ordering::Relaxed);
        h.node_capacity
            .store(geometry.nodes as u32, Ordering::Relaxed);
        h.ring_capacity
            .store(geometry.ring as u32, Ordering::Relaxed);
        h.slot_count.store(geometry.slots as u32, Ordering::Relaxed);
        // SAFETY: geteuid cannot fail.
        h.owner_uid
            .store(unsafe { libc::geteuid() }, Ordering::Relaxed);
        h.created_wall_ms
            .store(crate::sys::clock::wall_ms(), Ordering::Relaxed);
        h.next_cmd_seq.store(1, Ordering::Relaxed);
        // Magic last, with Release: a reader that sees it sees everything above.
        h.magic.store(MAGIC, Ordering::Release);
        Ok(shared)
    }

    /// Opens and validates an existing region. Nothing in it is written.
    pub fn open(name: &str) -> Result<Shared, ProtocolError> {
        let region = Region::open_existing(name, size_of::<Header>(), MAX_REGION)?;
        let path = region.path().to_owned();
        let h: &Header = region.get(0)?;
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(ProtocolError::Magic { path, found: magic });
        }
        let version = h.abi_version.load(Ordering::Relaxed);
        if version != ABI_VERSION {
            return Err(ProtocolError::Version {
                path,
                found: version,
                expected: ABI_VERSION,
            });
        }
        let hash = h.layout_hash.load(Ordering::Relaxed);
        if hash != LAYOUT_HASH {
            return Err(ProtocolError::Layout {
                path,
                found: hash,
                expected: LAYOUT_HASH,
            });
        }
        let geo_err = |what: String| ProtocolError::Geometry {
            path: path.clone(),
            what,
        };
        if h.header_size.load(Ordering::Relaxed) as usize != size_of::<Header>() {
            return Err(geo_err("header size".into()));
        }
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let uid = h.owner_uid.load(Ordering::Relaxed);
        if uid != me {
            return Err(geo_err(format!("created by uid {uid}, not {me}")));
        }
        let geometry = Geometry {
            nodes: h.node_capacity.load(Ordering::Relaxed) as usize,
            ring: h.ring_capacity.load(Ordering::Relaxed) as usize,
            slots: h.slot_count.load(Ordering::Relaxed) as usize,
        };
        if !geometry.is_valid() {
            return Err(geo_err(format!("capacities {geometry:?}")));
        }
        let offsets = geometry.offsets();
        let total = h.total_size.load(Ordering::Relaxed);
        if total != offsets.total as u64 || region.len() != offsets.total {
            return Err(geo_err(format!(
                "size {} (header says {total}, capacities imply {})",
                region.len(),
                offsets.total
            )));
        }
        let shared = Shared {
            region,
            geometry,
            offsets,
        };
        // Touch every view once so a bounds problem surfaces here, not later.
        shared.try_views()?;
        Ok(shared)
    }

    fn try_views(&self) -> Result<(), RegionError> {
        self.region
            .slice::<NodeCell>(self.offsets.nodes, self.geometry.nodes)?;
        self.region
            .slice::<EventCell>(self.offsets.ring, self.geometry.ring)?;
        self.region
            .slice::<Slot>(self.offsets.slots, self.geometry.slots)?;
        Ok(())
    }

    /// The header.
    pub fn header(&self) -> &Header {
        self.region.get(0).expect("header fits: checked at open")
    }

    /// Every node record (up to capacity; see [`Shared::node_count`]).
    pub fn node_cells(&self) -> &[NodeCell] {
        self.region
            .slice(self.offsets.nodes, self.geometry.nodes)
            .expect("checked at open")
    }

    /// Records in use, clamped to the capacity (the header is untrusted).
    pub fn node_count(&self) -> usize {
        (self.header().node_count.load(Ordering::Acquire) as usize).min(self.geometry.nodes)
    }

    /// The event ring.
    pub fn ring(&self) -> Ring<'_, EVENT_WORDS> {
        let entries = self
            .region
            .slice(self.offsets.ring, self.geometry.ring)
            .expect("checked at open");
        Ring::new(&self.header().ring, entries)
    }

    /// The mailbox slots.
    pub fn slots(&self) -> &[Slot] {
        self.region
            .slice(self.offsets.slots, self.geometry.slots)
            .expect("checked at open")
    }

    /// The capacities.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The region's offsets.
    pub fn offsets(&self) -> Offsets {
        self.offsets
    }

    /// The shm object's name.
    pub fn name(&self) -> &str {
        self.region.name()
    }

    /// The shm object's path under `/dev/shm`.
    pub fn path(&self) -> &std::path::Path {
        self.region.path()
    }

    /// The Supervisor state in the header.
    pub fn state(&self) -> Option<SupervisorState> {
        SupervisorState::from_u32(self.header().state.load(Ordering::Acquire))
    }
}
