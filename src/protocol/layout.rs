//! The region's layout: a versioned header followed by the node table, the event ring and the
//! mailbox. See `docs/design.md` for the table of offsets.
//!
//! A reader trusts nothing before [`Shared::open`] has checked, in this order: the object's
//! owner, mode, type and size (in `shm::region`), then magic, ABI version, header size, layout
//! hash, the owner uid written in the header, the capacities, and that the size the
//! capacities imply is exactly the object's size. [`Shared::open_owned`] then also checks the
//! identity the creator wrote (its canonical runtime dir and instance name), so a region can
//! never be mistaken for another instance's, whatever its name.

use super::mailbox::{Slot, MASK_WORDS, REPLY_WORDS, SLOT_STATE_BITS};
use crate::shm::ring::{Ring, RingHead};
use crate::shm::seqlock::SeqCell;
use crate::shm::{Region, RegionError, SharedPod};
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use zerocopy::{FromBytes, IntoBytes, KnownLayout};

/// `"BROCTLD1"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"BROCTLD1");
/// Bumped on any change of meaning; the layout hash catches changes of shape. 3: every node
/// record carries a check (word 14, see [`crate::protocol::node::record_check`]) and names
/// are at most 56 bytes.
pub const ABI_VERSION: u32 = 3;
/// Words in a node record (after its sequence word).
pub const NODE_WORDS: usize = 15;
/// Words in an event entry (after its stamp).
pub const EVENT_WORDS: usize = 7;
/// Most nodes one instance may have (the mailbox's node mask has this many bits). The node
/// table of a Supervisor's region has room for all of them: the pages of records never written
/// are never touched, so they cost no memory.
pub const MAX_NODES: usize = 65_536;
/// Largest region a reader will map (a bigger object is refused before mapping).
pub const MAX_REGION: usize = 64 << 20;
/// Words of identity text (see [`Identity`]): room for a `PATH_MAX` runtime dir, a NUL and a
/// 64-byte instance name.
pub const IDENTITY_WORDS: usize = 527;

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
    /// A 128-bit hash of the identity text (see [`Identity`]); the region's name carries it.
    pub identity_hash: [AtomicU64; 2],

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

/// Who the region belongs to, written once at creation right after the header: the canonical
/// runtime dir, a NUL, and the instance name, packed little-endian into words.
#[derive(FromBytes, IntoBytes, KnownLayout)]
#[repr(C, align(64))]
pub struct Identity {
    /// Bytes of text (at most `IDENTITY_WORDS * 8`).
    pub len: AtomicU64,
    /// The text.
    pub text: [AtomicU64; IDENTITY_WORDS],
}

// SAFETY: repr(C), atomics only, FromBytes.
unsafe impl SharedPod for Identity {}

/// A 128-bit FNV-1a hash of `bytes` (what [`Header::identity_hash`] and the region's name
/// carry). Not cryptographic: the full identity text in the region is what is checked.
pub fn identity_hash(bytes: &[u8]) -> u128 {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in bytes {
        h ^= *b as u128;
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    h
}

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
const _: () = assert!(size_of::<Identity>() == 4224);
const _: () = assert!(size_of::<NodeCell>() == 128);
const _: () = assert!(size_of::<EventCell>() == 64);
const _: () = assert!(size_of::<Slot>() == 192 + 8 * MASK_WORDS);
const _: () = assert!(size_of::<RingHead>() == 64);

/// Every size and offset a reader relies on, in a fixed order: the header's fields, the
/// identity block, the ring head's words, a node record, an event entry and a mailbox slot.
/// [`LAYOUT_HASH`] hashes them all, so two builds agree on it only if they agree on all of them.
pub const LAYOUT_FACTS: [u64; 57] = [
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
    offset_of!(Header, identity_hash) as u64,
    offset_of!(Header, generation) as u64,
    offset_of!(Header, owner_pid) as u64,
    offset_of!(Header, state) as u64,
    offset_of!(Header, owner_start) as u64,
    offset_of!(Header, node_count) as u64,
    offset_of!(Header, config_epoch) as u64,
    offset_of!(Header, created_wall_ms) as u64,
    offset_of!(Header, bell) as u64,
    offset_of!(Header, next_cmd_seq) as u64,
    offset_of!(Header, ring) as u64,
    size_of::<Identity>() as u64,
    offset_of!(Identity, len) as u64,
    offset_of!(Identity, text) as u64,
    IDENTITY_WORDS as u64,
    size_of::<RingHead>() as u64,
    RingHead::HEAD_OFFSET as u64,
    RingHead::NOTIFY_OFFSET as u64,
    RingHead::WAITERS_OFFSET as u64,
    size_of::<NodeCell>() as u64,
    NODE_WORDS as u64,
    size_of::<EventCell>() as u64,
    EVENT_WORDS as u64,
    size_of::<Slot>() as u64,
    offset_of!(Slot, state) as u64,
    offset_of!(Slot, opcode) as u64,
    offset_of!(Slot, owner_start) as u64,
    offset_of!(Slot, cmd_seq) as u64,
    offset_of!(Slot, arg) as u64,
    offset_of!(Slot, config_epoch) as u64,
    offset_of!(Slot, mask_len) as u64,
    offset_of!(Slot, reply_status) as u64,
    offset_of!(Slot, reply_len) as u64,
    offset_of!(Slot, reply) as u64,
    offset_of!(Slot, mask) as u64,
    MASK_WORDS as u64,
    REPLY_WORDS as u64,
    // Where the parts go (`Geometry::offsets`): the identity right after the header, then the
    // node table, the ring and the slots, each 64-byte aligned, the total page aligned.
    64,
    4096,
    // Bit layouts a reader decodes: the slot state word's state bits, the event word with the
    // kind/node/pid, and the event word with the config epoch.
    SLOT_STATE_BITS as u64,
    2,
    6,
    MAGIC,
    // The node record's check: its word, the longest name before it, and the version of the
    // check's algorithm and key derivation (`record_check`, `record_key`).
    crate::protocol::node::CHECK_WORD as u64,
    crate::protocol::node::NAME_MAX as u64,
    RECORD_CHECK_VERSION,
];

/// Version of the record check's algorithm and of how its key is derived (a layout fact: two
/// builds that compute checks differently never share a region).
pub const RECORD_CHECK_VERSION: u64 = 1;

/// The key node records are checked with in a region whose identity hash is `identity` and
/// which was created at `created_wall_ms`: both written once at creation, so every reader
/// derives the same key, and a record from another region (even an older one of the same
/// instance) fails its check in this one.
pub fn record_key(identity: u128, created_wall_ms: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in [identity as u64, (identity >> 64) as u64, created_wall_ms] {
        h = fnv(h, v);
    }
    // Never 0, so a key is never the identity of an all-zero header.
    h | 1
}

/// Hashes a list of layout facts (FNV-1a over their little-endian bytes).
pub const fn hash_facts(facts: &[u64]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut i = 0;
    while i < facts.len() {
        h = fnv(h, facts[i]);
        i += 1;
    }
    h
}

/// A hash of every size and offset a reader relies on ([`LAYOUT_FACTS`]): two builds agree on
/// it only if they agree on the layout.
pub const LAYOUT_HASH: u64 = hash_facts(&LAYOUT_FACTS);

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
    /// The identity block.
    pub identity: usize,
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
        let identity = size_of::<Header>().next_multiple_of(64);
        let nodes = identity + size_of::<Identity>();
        let ring = nodes + self.nodes * size_of::<NodeCell>();
        let slots = ring + self.ring * size_of::<EventCell>();
        let total = (slots + self.slots * size_of::<Slot>()).next_multiple_of(4096);
        Offsets {
            identity,
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
    /// A valid region, but made for another instance (or another runtime dir).
    #[error("shared memory region {path} belongs to '{found}', not to '{expected}': another instance's region has this name, or the file was replaced; stop whatever uses it, then remove the file")]
    Owner {
        /// `/dev/shm/NAME`.
        path: PathBuf,
        /// The identity it records (runtime dir and instance).
        found: String,
        /// Ours.
        expected: String,
    },
}

/// Renders identity text (`DIR\0NAME`) as `DIR (instance NAME)` for messages.
pub fn show_identity(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    match s.split_once('\0') {
        Some((dir, name)) => format!("{dir} (instance {name})"),
        None if s.is_empty() => "nobody (no identity recorded)".into(),
        None => s.into_owned(),
    }
}

/// A validated, mapped region with typed views of its parts.
pub struct Shared {
    region: Region,
    geometry: Geometry,
    offsets: Offsets,
    /// What node records are checked with (see [`record_key`]), derived once from the header
    /// words written at creation: a reader keeps the key it attached with.
    record_key: u64,
    /// The header's `created_wall_ms` as it was when mapped (see [`Shared::created_wall_ms`]).
    created_wall_ms: u64,
}

/// Why a node record could not be believed (see [`Shared::read_record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// No consistent copy within the seqlock's bounded retries: its sequence stayed odd (a
    /// writer died mid-write, or the sequence word was overwritten).
    Torn,
    /// Its check does not match its words: zeroed, forged, moved or corrupted.
    Check,
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
    /// Creates a region `name` with `geometry` and writes its header (state `Starting`), with
    /// no identity recorded (tests and tools; a Supervisor uses [`Shared::create_owned`]).
    pub fn create(name: &str, geometry: Geometry) -> Result<Shared, ProtocolError> {
        Shared::create_owned(name, geometry, b"")
    }

    /// Creates a region `name` with `geometry`, records `identity` (see [`Identity`]; longer
    /// text is cut) and writes its header (state `Starting`).
    pub fn create_owned(
        name: &str,
        geometry: Geometry,
        identity: &[u8],
    ) -> Result<Shared, ProtocolError> {
        assert!(geometry.is_valid());
        let offsets = geometry.offsets();
        let region = Region::create(name, offsets.total)?;
        let created = crate::sys::clock::wall_ms();
        let text = &identity[..identity.len().min(IDENTITY_WORDS * 8)];
        let hash = identity_hash(text);
        let shared = Shared {
            region,
            geometry,
            offsets,
            record_key: record_key(hash, created),
            created_wall_ms: created,
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
        h.created_wall_ms.store(created, Ordering::Relaxed);
        h.next_cmd_seq.store(1, Ordering::Relaxed);
        let id = shared.identity_block();
        for (i, chunk) in text.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            id.text[i].store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        id.len.store(text.len() as u64, Ordering::Relaxed);
        h.identity_hash[0].store(hash as u64, Ordering::Relaxed);
        h.identity_hash[1].store((hash >> 64) as u64, Ordering::Relaxed);
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
        let created = h.created_wall_ms.load(Ordering::Relaxed);
        let id = h.identity_hash[0].load(Ordering::Relaxed) as u128
            | (h.identity_hash[1].load(Ordering::Relaxed) as u128) << 64;
        let shared = Shared {
            region,
            geometry,
            offsets,
            record_key: record_key(id, created),
            created_wall_ms: created,
        };
        // Touch every view once so a bounds problem surfaces here, not later.
        shared.try_views()?;
        Ok(shared)
    }

    /// Opens and validates an existing region (see [`Shared::open`]) and checks that it
    /// records exactly `identity`: a region made for another runtime dir or instance is refused
    /// with [`ProtocolError::Owner`].
    pub fn open_owned(name: &str, identity: &[u8]) -> Result<Shared, ProtocolError> {
        let shared = Shared::open(name)?;
        let found = shared.identity();
        let h = shared.header();
        let hash = identity_hash(identity);
        let stored = h.identity_hash[0].load(Ordering::Relaxed) as u128
            | (h.identity_hash[1].load(Ordering::Relaxed) as u128) << 64;
        if found != identity || stored != hash {
            return Err(ProtocolError::Owner {
                path: shared.path().to_owned(),
                found: show_identity(&found),
                expected: show_identity(identity),
            });
        }
        Ok(shared)
    }

    fn identity_block(&self) -> &Identity {
        self.region
            .get(self.offsets.identity)
            .expect("identity fits: checked at open")
    }

    /// The identity text the creator recorded (untrusted: clamped to the block's size).
    pub fn identity(&self) -> Vec<u8> {
        let id = self.identity_block();
        let len = (id.len.load(Ordering::Relaxed) as usize).min(IDENTITY_WORDS * 8);
        let mut out = Vec::with_capacity(len);
        for w in &id.text[..len.div_ceil(8)] {
            out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn try_views(&self) -> Result<(), RegionError> {
        self.region.get::<Identity>(self.offsets.identity)?;
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

    /// The key node records are checked with in this region (see [`record_key`]).
    pub fn record_key(&self) -> u64 {
        self.record_key
    }

    /// When the region was created, as its header said when it was mapped (the header word
    /// may have been overwritten since: the Supervisor compares them).
    pub fn created_wall_ms(&self) -> u64 {
        self.created_wall_ms
    }

    /// Node record `i`'s words, only if they are a consistent copy whose check matches (see
    /// [`crate::protocol::node::record_check`]); `i` must be below the capacity.
    pub fn read_record(&self, i: usize) -> Result<[u64; NODE_WORDS], RecordFault> {
        let w = self.node_cells()[i].read().ok_or(RecordFault::Torn)?;
        if crate::protocol::node::check_ok(&w, self.record_key, i) {
            Ok(w)
        } else {
            Err(RecordFault::Check)
        }
    }

    /// Seals `words` for index `i` (their check word is overwritten) and publishes them
    /// (single writer: the Supervisor). Returns the check written.
    pub fn write_record(&self, i: usize, words: &[u64; NODE_WORDS]) -> u64 {
        let mut w = *words;
        crate::protocol::node::seal(&mut w, self.record_key, i);
        self.node_cells()[i].write(&w);
        w[crate::protocol::node::CHECK_WORD]
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

    /// Whether another process shrank the object under our mapping (a SIGBUS was caught and
    /// the mapping replaced by zeroed private memory): nothing read from it since means
    /// anything.
    pub fn damaged(&self) -> bool {
        self.region.damaged()
    }

    /// Whether the region's name still names the object we mapped.
    pub fn still_named(&self) -> std::io::Result<bool> {
        self.region.still_named()
    }

    /// The Supervisor state in the header.
    pub fn state(&self) -> Option<SupervisorState> {
        SupervisorState::from_u32(self.header().state.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8, defect 12: the hash omitted slot fields and the ring head's offsets. Every
    /// fact now changes it ...
    #[test]
    fn layout_hash_changes_when_any_size_or_offset_changes() {
        for i in 0..LAYOUT_FACTS.len() {
            for delta in [1u64, 4, 8, 64] {
                let mut f = LAYOUT_FACTS;
                f[i] = f[i].wrapping_add(delta);
                assert_ne!(hash_facts(&f), LAYOUT_HASH, "fact {i} (+{delta})");
            }
        }
    }

    /// ... and the facts cover every field: the fields they name, plus the reserved gaps
    /// listed here, tile each shared struct exactly. A field added (in a reserved gap or at
    /// the end) without being added to [`LAYOUT_FACTS`] breaks this test.
    #[test]
    fn layout_facts_name_every_field() {
        fn tiles(what: &str, size: usize, mut parts: Vec<(usize, usize)>) {
            parts.sort();
            let mut at = 0;
            for (off, len) in parts {
                assert_eq!(off, at, "{what}: gap or overlap at {at}");
                at = off + len;
            }
            assert_eq!(at, size, "{what}: unaccounted bytes at the end");
        }
        let fact = |v: usize| assert!(LAYOUT_FACTS.contains(&(v as u64)), "{v} not in the facts");
        let header = [
            (offset_of!(Header, magic), 8),
            (offset_of!(Header, abi_version), 4),
            (offset_of!(Header, header_size), 4),
            (offset_of!(Header, layout_hash), 8),
            (offset_of!(Header, total_size), 8),
            (offset_of!(Header, node_capacity), 4),
            (offset_of!(Header, ring_capacity), 4),
            (offset_of!(Header, slot_count), 4),
            (offset_of!(Header, owner_uid), 4),
            (offset_of!(Header, identity_hash), 16),
            (offset_of!(Header, generation), 8),
            (offset_of!(Header, owner_pid), 4),
            (offset_of!(Header, state), 4),
            (offset_of!(Header, owner_start), 8),
            (offset_of!(Header, node_count), 4),
            (offset_of!(Header, config_epoch), 4),
            (offset_of!(Header, created_wall_ms), 8),
            (offset_of!(Header, bell), 4),
            (offset_of!(Header, next_cmd_seq), 8),
            (offset_of!(Header, ring), size_of::<RingHead>()),
        ];
        header.iter().for_each(|(o, _)| fact(*o));
        let mut parts = header.to_vec();
        // Reserved: after created_wall_ms, the bell's pad and line, after next_cmd_seq.
        parts.extend([(104, 24), (132, 4), (136, 56), (200, 56)]);
        tiles("Header", size_of::<Header>(), parts);
        let slot = [
            (offset_of!(Slot, state), 4),
            (offset_of!(Slot, opcode), 4),
            (offset_of!(Slot, owner_start), 8),
            (offset_of!(Slot, cmd_seq), 8),
            (offset_of!(Slot, arg), 8),
            (offset_of!(Slot, config_epoch), 4),
            (offset_of!(Slot, mask_len), 4),
            (offset_of!(Slot, reply_status), 4),
            (offset_of!(Slot, reply_len), 4),
            (offset_of!(Slot, reply), 8 * REPLY_WORDS),
            (offset_of!(Slot, mask), 8 * MASK_WORDS),
        ];
        slot.iter().for_each(|(o, _)| fact(*o));
        let mut parts = slot.to_vec();
        parts.push((144, 48));
        tiles("Slot", size_of::<Slot>(), parts);
        let ring = [
            (RingHead::HEAD_OFFSET, 8),
            (RingHead::NOTIFY_OFFSET, 4),
            (RingHead::WAITERS_OFFSET, 4),
        ];
        let mut parts = ring.to_vec();
        parts.push((16, 48));
        tiles("RingHead", size_of::<RingHead>(), parts);
    }

    #[test]
    fn identity_is_recorded_and_checked() {
        let name = format!("/broctld-unit-identity.{}", std::process::id());
        let s = Shared::create_owned(&name, Geometry::default(), b"/run/x\0a").unwrap();
        assert_eq!(s.identity(), b"/run/x\0a");
        assert!(Shared::open_owned(&name, b"/run/x\0a").is_ok());
        let e = Shared::open_owned(&name, b"/run/y\0a").unwrap_err();
        let _ = crate::shm::Region::unlink(&name);
        assert!(matches!(e, ProtocolError::Owner { .. }), "{e}");
        assert!(e.to_string().contains("/run/x (instance a)"), "{e}");
    }
}
