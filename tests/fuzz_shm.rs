//! Every byte read from shared memory is untrusted: property tests (proptest) over the header
//! validation (`Shared::open` on a real, corrupted region), the node-record, event and mailbox
//! decoders, and the event ring's reader, which must terminate and keep its invariants whatever
//! the stamps and head say. Plus a live run: garbage written into a running Supervisor's mailbox,
//! node table and ring must not crash it, wedge it, or restart a node.
//!
//! CI runs a bounded number of cases (`BROCTLD_FUZZ_CASES`, default 1500 per property, a few
//! seconds in all); `scripts/reliability.sh` runs many more. A failure found here becomes a
//! named regression test at the end of this file.

mod common;

use broctld::protocol::event::{Event, EventKind};
use broctld::protocol::layout::{Header, EVENT_WORDS, NODE_WORDS};
use broctld::protocol::mailbox::{
    self, Opcode, ReplyStatus, Request, SlotState, Target, WaitError, MASK_WORDS, REPLY_WORDS,
};
use broctld::protocol::node::{NodeRecord, NAME_MAX};
use broctld::protocol::{Geometry, Shared};
use broctld::shm::ring::{Next, Ring, RingHead};
use broctld::shm::seqlock::{SeqCell, READ_TRIES};
use common::Rng;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use std::mem::offset_of;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use zerocopy::FromBytes;

fn cases() -> u32 {
    env_count("BROCTLD_FUZZ_CASES", 1500) as u32
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // A found failure is turned into a named regression test by hand (see the end of this
        // file), not kept in a side file.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// Words that hit the interesting values often: 0, all ones, small numbers, high bits.
fn word() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        1 => Just(0u64),
        1 => Just(u64::MAX),
        2 => 0u64..300,
        1 => (0u32..64).prop_map(|b| 1u64 << b),
        1 => any::<u32>().prop_map(|v| (v as u64) << 32),
    ]
}

// ---------------------------------------------------------------------------------------------
// Decoders.

#[test]
fn node_record_decode_never_panics_and_round_trips() {
    proptest!(config(cases() * 4), |(w in prop::array::uniform15(word()))| {
        if let Some(r) = NodeRecord::decode(&w) {
            prop_assert!(r.name.len() <= NAME_MAX);
            prop_assert_eq!(NodeRecord::decode(&r.encode()), Some(r.clone()));
        }
    });
    assert_eq!(NODE_WORDS, 15);
}

/// Issue 16, defect 14: a sealed record whose words are changed in any one word (any value,
/// the check word included), or read at another index or under another key, fails its check;
/// and hostile words that were never sealed do not pass it.
#[test]
fn record_check_refuses_changed_moved_and_unsealed_records() {
    use broctld::protocol::node::{check_ok, seal};
    proptest!(config(cases() * 4), |(
        w in prop::array::uniform15(word()),
        key in any::<u64>(),
        index in 0usize..65_536,
        at in 0usize..NODE_WORDS,
        other in word(),
        moved in 0usize..65_536,
    )| {
        let mut resealed = w;
        seal(&mut resealed, key, index);
        prop_assert!(!check_ok(&w, key, index) || resealed == w);
        let mut sealed = w;
        seal(&mut sealed, key, index);
        prop_assert!(check_ok(&sealed, key, index));
        let mut changed = sealed;
        changed[at] = other;
        if changed[at] != sealed[at] {
            prop_assert!(!check_ok(&changed, key, index));
        }
        if moved != index {
            prop_assert!(!check_ok(&sealed, key, moved));
        }
        prop_assert!(!check_ok(&sealed, key ^ (1 << (at % 64)), index));
    });
}

#[test]
fn event_decode_never_panics_and_round_trips() {
    proptest!(config(cases() * 4), |(w in prop::array::uniform7(word()))| {
        if let Some(e) = Event::decode(&w) {
            prop_assert_eq!(EventKind::from_u16(e.kind as u16), Some(e.kind));
            prop_assert_eq!(Event::decode(&e.encode()), Some(e));
        } else {
            prop_assert!(EventKind::from_u16((w[2] & 0xffff) as u16).is_none());
        }
    });
    assert_eq!(EVENT_WORDS, 7);
}

#[test]
fn slot_state_split_and_opcode_decode_are_total() {
    proptest!(config(cases() * 4), |(w in any::<u32>(), v in prop_oneof![any::<u32>(), 0u32..20])| {
        let (pid, st) = SlotState::split(w);
        prop_assert_eq!(pid, w >> 3);
        match st {
            Some(s) => prop_assert_eq!(s.word(pid), w),
            None => prop_assert!(w & 7 > 4),
        }
        match Opcode::from_u32(v) {
            Some(op) => {
                prop_assert_eq!(op as u32, v);
                prop_assert!(!op.as_str().is_empty());
            }
            None => prop_assert!(!(1..=8).contains(&v)),
        }
    });
}

#[test]
fn request_nodes_lists_exactly_the_set_bits_below_the_limit() {
    proptest!(config(cases() * 2), |(
        mask in prop::array::uniform16(word()),
        limit in prop_oneof![0usize..1100, Just(usize::MAX)],
    )| {
        let req = Request { opcode: 2, arg: 0, epoch: 0, target: Target::Mask(mask.to_vec()) };
        let nodes = req.nodes(limit);
        let bound = limit.min(mask.len() * 64).min(MASK_WORDS * 64);
        prop_assert!(nodes.windows(2).all(|p| p[0] < p[1]), "sorted, no duplicates");
        prop_assert!(nodes.iter().all(|&i| i < bound));
        let expected = (0..bound).filter(|&i| mask[i / 64] >> (i % 64) & 1 == 1).count();
        prop_assert_eq!(nodes.len(), expected);
        // And back: a request built from the list has exactly those bits.
        let again = Request::new(Opcode::Start, nodes.iter().copied(), 0);
        prop_assert_eq!(again.nodes(bound), nodes);
    });
}

// ---------------------------------------------------------------------------------------------
// The ring reader over hostile stamps and heads.

/// An in-memory ring whose head, stamps and words are whatever the test says.
struct FakeRing {
    head: RingHead,
    entries: Vec<SeqCell<EVENT_WORDS>>,
}

impl FakeRing {
    fn new(head: u64, stamps: &[u64], words: &[[u64; EVENT_WORDS]]) -> FakeRing {
        let mut hb = [0u8; 64];
        hb[..8].copy_from_slice(&head.to_le_bytes());
        let entries = stamps
            .iter()
            .zip(words)
            .map(|(s, w)| {
                let mut b = Vec::with_capacity(64);
                b.extend_from_slice(&s.to_le_bytes());
                for x in w {
                    b.extend_from_slice(&x.to_le_bytes());
                }
                SeqCell::<EVENT_WORDS>::read_from_bytes(&b).expect("64 bytes")
            })
            .collect();
        FakeRing {
            head: RingHead::read_from_bytes(&hb).expect("64 bytes"),
            entries,
        }
    }

    fn ring(&self) -> Ring<'_, EVENT_WORDS> {
        Ring::new(&self.head, &self.entries)
    }
}

/// The largest head the tests generate: any head a region can hold (stamps wrap; see
/// `ring_head_near_u64_max_does_not_panic_the_reader`).
const MAX_HEAD: u64 = u64::MAX - 1;

/// The stamp of a complete event `n` (wrapping, as the writer computes it).
fn stamp(n: u64) -> u64 {
    n.wrapping_mul(2).wrapping_add(2)
}

/// Heads around the interesting places: 0, around the capacity, and large.
fn head(cap: u64, max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..(3 * cap),
        (0u64..max),
        (max - 3 * cap..max),
        Just(max),
    ]
}

/// Checks one reader over `r` from `cursor`: it ends (each call is bounded, and it must reach
/// `Empty` within capacity + 1 calls), and every event it returns is consistent.
fn check_reader(r: &FakeRing, mut cursor: u64) -> Result<(), TestCaseError> {
    let ring = r.ring();
    let cap = ring.capacity();
    let head = ring.head();
    let oldest = head.saturating_sub(cap);
    let mut last: Option<u64> = None;
    for _ in 0..=cap {
        let before = cursor;
        match ring.next(&mut cursor) {
            Next::Empty => {
                prop_assert_eq!(cursor, head, "Empty leaves the cursor at the head");
                return Ok(());
            }
            Next::Event { seq, words, missed } => {
                prop_assert!(seq < head, "seq {} past head {}", seq, head);
                prop_assert!(seq >= oldest, "seq {} older than the ring {}", seq, oldest);
                prop_assert_eq!(cursor, seq + 1);
                prop_assert_eq!(seq - before.min(seq), missed.min(seq - before.min(seq)));
                if before <= seq {
                    prop_assert_eq!(missed, seq - before, "missed counts exactly the gap");
                }
                let e = &r.entries[(seq % cap) as usize];
                prop_assert_eq!(e.sequence(), stamp(seq), "the stamp says it is this event");
                prop_assert_eq!(e.try_read().1, Some(words));
                if let Some(l) = last {
                    prop_assert!(seq > l, "seqs grow");
                }
                last = Some(seq);
            }
        }
    }
    Err(TestCaseError::fail(format!(
        "the reader did not reach Empty within {} calls (head {head})",
        cap + 1
    )))
}

#[test]
fn ring_reader_terminates_and_keeps_its_invariants_over_hostile_stamps() {
    // Entries that do not match cost READ_TRIES spins each: keep the ring small.
    let cap = 16usize;
    let strat = (head(cap as u64, MAX_HEAD), any::<u64>()).prop_flat_map(move |(h, cur)| {
        let stamps = prop::collection::vec(
            prop_oneof![
                // Correct for some event near the head: often the one the slot should hold.
                3 => (0u64..(2 * cap as u64)).prop_map(move |back| {
                    stamp(h.saturating_sub(back))
                }),
                1 => any::<u64>(),
                1 => Just(0u64),
                1 => (0u64..(2 * cap as u64)).prop_map(move |back| stamp(h.saturating_sub(back)).wrapping_sub(1)),
            ],
            cap,
        );
        let words = prop::collection::vec(prop::array::uniform7(any::<u64>()), cap);
        let cursor = prop_oneof![
            Just(0u64),
            Just(cur),
            (0u64..(3 * cap as u64)).prop_map(move |b| h.saturating_sub(b)),
            (0u64..(3 * cap as u64)).prop_map(move |b| h.saturating_add(b)),
        ];
        (Just(h), stamps, words, cursor)
    });
    let n = (cases() / 3).max(100);
    proptest!(config(n), |((h, stamps, words, cursor) in strat)| {
        let r = FakeRing::new(h, &stamps, &words);
        check_reader(&r, cursor)?;
    });
    let _ = READ_TRIES;
}

#[test]
fn ring_reader_sees_exactly_what_the_writer_pushed_when_nothing_is_corrupt() {
    proptest!(config(cases()), |(
        start in prop_oneof![0u64..100, (MAX_HEAD - 10_000)..(MAX_HEAD - 1_000)],
        pushes in 0usize..80,
        lag in 0u64..40,
    )| {
        // A ring that already holds events start-16..start, correctly stamped.
        let cap = 16u64;
        let stamps: Vec<u64> = (0..cap)
            .map(|i| {
                // the newest event n < start with n % cap == i
                let n = if start == 0 { None } else {
                    let last = start - 1;
                    let k = (last + cap - i) % cap;
                    last.checked_sub(k)
                };
                n.map_or(0, stamp)
            })
            .collect();
        let words: Vec<[u64; EVENT_WORDS]> = (0..cap).map(|i| [i; EVENT_WORDS]).collect();
        let r = FakeRing::new(start, &stamps, &words);
        let ring = r.ring();
        let mut cursor = start.saturating_sub(lag);
        let first = cursor;
        for p in 0..pushes as u64 {
            let w = [start + p; EVENT_WORDS];
            prop_assert_eq!(ring.push(&w), start + p);
        }
        let head = start + pushes as u64;
        let mut expect = first.max(head.saturating_sub(cap));
        let mut total_missed = 0;
        loop {
            match ring.next(&mut cursor) {
                Next::Empty => break,
                Next::Event { seq, words, missed } => {
                    total_missed += missed;
                    prop_assert_eq!(seq, expect);
                    if seq >= start {
                        prop_assert_eq!(words, [seq; EVENT_WORDS]);
                    }
                    expect += 1;
                }
            }
        }
        prop_assert_eq!(expect, head);
        prop_assert_eq!(total_missed, head.saturating_sub(cap).saturating_sub(first));
        // Stamps older than the ring were zero for a young ring: those entries count as
        // missed, never as events, so what was read plus what was missed is everything.
    });
}

// ---------------------------------------------------------------------------------------------
// Shared::open over a real, corrupted region.

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A region created for one case, unlinked on drop (also when the case fails).
struct Planted {
    name: String,
    path: std::path::PathBuf,
}

impl Planted {
    fn new(geometry: Geometry) -> (Planted, Shared) {
        let name = format!(
            "/broctld-fuzz.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let _ = broctld::shm::Region::unlink(&name);
        let shared = Shared::create(&name, geometry).expect("create a region");
        let path = std::path::PathBuf::from("/dev/shm").join(name.trim_start_matches('/'));
        (Planted { name, path }, shared)
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = broctld::shm::Region::unlink(&self.name);
    }
}

/// One way of damaging a region.
#[derive(Debug, Clone)]
enum Damage {
    /// Store `value` (`width` bytes, little-endian) at header offset `at`.
    Field { at: usize, width: usize, value: u64 },
    /// Flip bit `bit` of byte `at` (anywhere in the first page).
    Flip { at: usize, bit: u8 },
    /// Truncate or extend the object to `len` bytes.
    Resize { len: u64 },
}

/// Offsets and widths of the header fields a reader looks at.
fn fields() -> Vec<(usize, usize)> {
    vec![
        (offset_of!(Header, magic), 8),
        (offset_of!(Header, abi_version), 4),
        (offset_of!(Header, header_size), 4),
        (offset_of!(Header, layout_hash), 8),
        (offset_of!(Header, total_size), 8),
        (offset_of!(Header, node_capacity), 4),
        (offset_of!(Header, ring_capacity), 4),
        (offset_of!(Header, slot_count), 4),
        (offset_of!(Header, owner_uid), 4),
        (offset_of!(Header, generation), 8),
        (offset_of!(Header, owner_pid), 4),
        (offset_of!(Header, state), 4),
        (offset_of!(Header, owner_start), 8),
        (offset_of!(Header, node_count), 4),
        (offset_of!(Header, config_epoch), 4),
        (offset_of!(Header, bell), 4),
        (offset_of!(Header, next_cmd_seq), 8),
        // The ring head (first word of RingHead) and its futex words.
        (offset_of!(Header, ring), 8),
        (offset_of!(Header, ring) + 8, 4),
        (offset_of!(Header, ring) + 12, 4),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    let f = fields();
    let n = f.len();
    prop_oneof![
        6 => (0..n, word()).prop_map(move |(i, value)| Damage::Field { at: f[i].0, width: f[i].1, value }),
        2 => (0usize..4096, 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        1 => prop_oneof![
            Just(0u64), 1u64..400, 400u64..70_000,
            Just(64u64 << 20), Just((64u64 << 20) + 4096),
        ].prop_map(|len| Damage::Resize { len }),
    ]
}

/// A geometry near the valid range (some invalid on purpose: the open must refuse those).
fn geometry() -> impl Strategy<Value = Geometry> {
    (
        1usize..8,
        prop::sample::select(vec![16usize, 32, 64]),
        1usize..4,
    )
        .prop_map(|(nodes, ring, slots)| Geometry { nodes, ring, slots })
}

fn apply(p: &Planted, d: &Damage) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p.path)
        .expect("open the region file");
    match d {
        Damage::Field { at, width, value } => {
            f.write_all_at(&value.to_le_bytes()[..*width], *at as u64)
                .expect("write");
        }
        Damage::Flip { at, bit } => {
            let mut b = [0u8];
            if f.read_at(&mut b, *at as u64).unwrap_or(0) == 1 {
                b[0] ^= 1 << bit;
                f.write_all_at(&b, *at as u64).expect("write");
            }
        }
        Damage::Resize { len } => f.set_len(*len).expect("resize"),
    }
}

/// Reads everything a Main reads from an opened region; must end and not panic.
fn read_all(s: &Shared) -> Result<(), TestCaseError> {
    let g = s.geometry();
    prop_assert!(g.is_valid());
    prop_assert_eq!(s.node_cells().len(), g.nodes);
    prop_assert_eq!(s.slots().len(), g.slots);
    prop_assert!(s.node_count() <= g.nodes);
    for cell in &s.node_cells()[..s.node_count()] {
        if let Some(w) = cell.read() {
            let _ = NodeRecord::decode(&w);
        }
    }
    for slot in s.slots() {
        let _ = SlotState::split(slot.state.load(Ordering::Relaxed));
    }
    let _ = s.state();
    let ring = s.ring();
    {
        let mut cursor = ring.head().saturating_sub(ring.capacity());
        let mut calls = 0;
        while let Next::Event { words, .. } = ring.next(&mut cursor) {
            let _ = Event::decode(&words);
            calls += 1;
            prop_assert!(calls <= ring.capacity(), "the reader did not end");
        }
    }
    Ok(())
}

#[test]
fn shared_open_refuses_or_accepts_a_damaged_region_but_never_panics() {
    let n = (cases() / 2).max(100);
    let accepted = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    proptest!(config(n), |(g in geometry(), ds in prop::collection::vec(damage(), 1..5))| {
        let (p, created) = Planted::new(g);
        drop(created);
        for d in &ds {
            apply(&p, d);
        }
        match Shared::open(&p.name) {
            Ok(s) => {
                accepted.set(accepted.get() + 1);
                let len = std::fs::metadata(&p.path).map(|m| m.len()).unwrap_or(0);
                prop_assert_eq!(len as usize, s.offsets().total, "accepted a region of the wrong size");
                read_all(&s)?;
            }
            Err(e) => {
                refused.set(refused.get() + 1);
                // A refusal names the file.
                let msg = e.to_string();
                prop_assert!(msg.contains(&p.path.display().to_string()), "{}", msg);
            }
        }
    });
    let (accepted, refused) = (accepted.get(), refused.get());
    figure("fuzz_shared_open", "accepted", accepted);
    figure("fuzz_shared_open", "refused", refused);
    assert!(refused > 0 && accepted > 0, "both outcomes were exercised");
}

// ---------------------------------------------------------------------------------------------
// Mailbox functions over garbage slots.

#[test]
fn mailbox_functions_over_garbage_slots_never_panic_or_block() {
    let (p, shared) = Planted::new(Geometry {
        nodes: 4,
        ring: 16,
        slots: 1,
    });
    let slot = &shared.slots()[0];
    let me = std::process::id();
    proptest!(config(cases()), |(
        state in prop_oneof![any::<u32>(), (0u32..8).prop_map(move |s| me << 3 | s)],
        opcode in prop_oneof![any::<u32>(), 0u32..10],
        len in prop_oneof![any::<u32>(), 0u32..120],
        status in any::<u32>(),
        reply in prop::array::uniform12(any::<u64>()),
        mask in prop::array::uniform16(word()),
        mask_len in prop_oneof![any::<u32>(), 0u32..20, Just(mailbox::ALL_NODES)],
    )| {
        slot.state.store(state, Ordering::Relaxed);
        slot.opcode.store(opcode, Ordering::Relaxed);
        slot.reply_len.store(len, Ordering::Relaxed);
        slot.reply_status.store(status, Ordering::Relaxed);
        for (w, v) in slot.reply.iter().zip(reply) {
            w.store(v, Ordering::Relaxed);
        }
        for (w, v) in slot.mask.iter().zip(mask) {
            w.store(v, Ordering::Relaxed);
        }
        slot.mask_len.store(mask_len, Ordering::Relaxed);
        // Supervisor side: take only a submitted slot, exactly once.
        let was = SlotState::split(state);
        match mailbox::take(slot) {
            Some((pid, _, req)) => {
                prop_assert_eq!(was, (pid, Some(SlotState::Submitted)));
                prop_assert_eq!(req.opcode, opcode);
                match &req.target {
                    Target::All => prop_assert_eq!(mask_len, mailbox::ALL_NODES),
                    Target::Mask(m) => {
                        // Only the words in use, never past the slot's mask.
                        prop_assert_eq!(m.len(), (mask_len as usize).min(MASK_WORDS));
                        let n = m.len().min(16);
                        prop_assert_eq!(&m[..n], &mask[..n]);
                    }
                }
                prop_assert_eq!(SlotState::split(slot.state.load(Ordering::Relaxed)), (pid, Some(SlotState::Taken)));
                prop_assert!(mailbox::take(slot).is_none(), "taken twice");
                mailbox::complete(slot, pid, ReplyStatus::Ok, &"é".repeat(80));
                prop_assert_eq!(SlotState::split(slot.state.load(Ordering::Relaxed)), (pid, Some(SlotState::Done)));
                prop_assert!(slot.reply_len.load(Ordering::Relaxed) as usize <= REPLY_WORDS * 8);
            }
            None => prop_assert_ne!(was.1, Some(SlotState::Submitted)),
        }
        // Main side: waiting on a slot in any state returns at once (zero timeout).
        let r = mailbox::wait_done(slot, me, Duration::ZERO);
        let now = SlotState::split(slot.state.load(Ordering::Relaxed));
        match r {
            Ok(()) => prop_assert_eq!(now, (me, Some(SlotState::Done))),
            Err(WaitError::TimedOut) => prop_assert!(now.0 == me && matches!(now.1, Some(SlotState::Submitted | SlotState::Taken))),
            Err(WaitError::Lost) => {}
        }
        // Reading a reply from garbage: bounded and valid UTF-8, and only from our own Done
        // slot (which it frees); any other word is left alone.
        let before = slot.state.load(Ordering::Relaxed);
        match mailbox::take_reply(slot, me) {
            Some(reply) => {
                prop_assert_eq!(before, SlotState::Done.word(me));
                prop_assert!(reply.message.len() <= REPLY_WORDS * 8 * 3);
                prop_assert_eq!(slot.state.load(Ordering::Relaxed), SlotState::Free as u32);
            }
            None => {
                prop_assert_ne!(before, SlotState::Done.word(me));
                prop_assert_eq!(slot.state.load(Ordering::Relaxed), before);
            }
        }
        // Reclaim only succeeds on the word it saw.
        slot.state.store(state, Ordering::Relaxed);
        prop_assert!(!mailbox::reclaim(slot, state.wrapping_add(1)) || state.wrapping_add(1) == state);
        prop_assert!(mailbox::reclaim(slot, state));
    });
    drop(shared);
    drop(p);
}

// ---------------------------------------------------------------------------------------------
// A live Supervisor fed garbage.

/// Garbage in every mailbox slot, the node table (past the nodes, and in the live records) and
/// the ring of a running Supervisor: it keeps serving, no node restarts, every slot comes
/// back, Mains reading the garbage neither panic nor hang, and a damaged live record is never
/// shown as the node's state.
#[test]
fn live_supervisor_survives_garbage_in_mailbox_table_and_ring() {
    let rounds = env_count("BROCTLD_FUZZ_LIVE_ROUNDS", 40);
    let c = Cluster::new("fuzz_live", THREE_NODES);
    let before = c.start();
    let sup = c.supervisor_pid();
    let client = c.client();
    let shared = client.shared();
    let mut rng = Rng::from_env("fuzz_live");
    // A pid that is certainly not running: a finished child of ours, reaped.
    let dead = {
        let mut ch = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = ch.id();
        ch.wait().expect("wait true");
        pid
    };
    let mut unknown_answered = 0u64;
    for round in 0..rounds {
        for slot in shared.slots() {
            // Only states that cannot legitimately apply a command to a node: garbage low
            // bits, taken/done/claimed by a dead pid, or submitted with an unknown opcode, a
            // ping, or an invalid signal (always refused before any node is touched).
            let state = match rng.below(6) {
                0 => (rng.next_u64() as u32) | 5,
                1 => SlotState::Taken.word(dead),
                2 => SlotState::Done.word(dead),
                3 => SlotState::Claimed.word(dead),
                _ => SlotState::Submitted.word(dead),
            };
            let opcode = match rng.below(3) {
                0 => 9 + (rng.next_u64() as u32 % 1000),
                1 => Opcode::Ping as u32,
                _ => Opcode::Signal as u32,
            };
            slot.opcode.store(opcode, Ordering::Relaxed);
            slot.arg.store(
                if rng.chance(1, 2) { 0 } else { 1 << 40 },
                Ordering::Relaxed,
            );
            slot.owner_start.store(rng.next_u64(), Ordering::Relaxed);
            slot.cmd_seq.store(rng.next_u64(), Ordering::Relaxed);
            for w in &slot.mask {
                w.store(rng.next_u64(), Ordering::Relaxed);
            }
            slot.reply_len
                .store(rng.next_u64() as u32, Ordering::Relaxed);
            slot.state.store(state, Ordering::SeqCst);
        }
        // Garbage in the table past the nodes and in old ring entries (never the header's
        // validated fields: a region with those damaged is refused, tested above).
        let cells = shared.node_cells();
        let k = 3 + rng.below((cells.len() - 3) as u64) as usize;
        let mut junk = [0u64; NODE_WORDS];
        junk.iter_mut().for_each(|w| *w = rng.next_u64());
        cells[k].write(&junk);
        // And in a live node's record (issue 16, defect 14): zeroed, junk, one bit flipped, or
        // a forged pid. It must never be read as the node's state: the Main asks the
        // Supervisor, which rewrites it from its memory.
        let live = rng.below(3) as usize;
        let mut w = cells[live].read().unwrap_or([0; NODE_WORDS]);
        match rng.below(4) {
            0 => w = [0; NODE_WORDS],
            1 => w.iter_mut().for_each(|x| *x = rng.next_u64()),
            2 => {
                let b = rng.below(64 * NODE_WORDS as u64);
                w[(b / 64) as usize] ^= 1 << (b % 64);
            }
            _ => w[1] = (w[1] & !0xffff_ffff) | dead as u64,
        }
        cells[live].write(&w);
        let table = client.status();
        let shown: Vec<(String, Option<u32>)> =
            table.iter().map(|n| (n.name.clone(), n.pid)).collect();
        let want: Vec<(String, Option<u32>)> =
            before.iter().map(|(k, n)| (k.clone(), n.pid)).collect();
        assert_eq!(
            shown,
            want,
            "round {round}: record {live} damaged ({w:x?}); status shows {table:?}\n{}",
            c.log()
        );
        // Ring the bell the way a Main does, and check a real command still goes through.
        let reply = client
            .command(Opcode::Ping, &[], 0, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: ping failed: {e}\n{}", c.log()));
        assert_eq!(reply.status, ReplyStatus::Ok);
        unknown_answered += 1;
        if round % 10 == 0 {
            cells[live].write(&[0; NODE_WORDS]);
            let out = c.run(&["status", "--json"]);
            assert_eq!(out.code, Some(0), "status over garbage: {out:?}");
            let s = parse_status(&out.stdout);
            for (name, n) in &before {
                assert_eq!(s[name].pid, n.pid, "status over garbage: {out:?}");
            }
            let out = c.run(&["events", "--since", "0", "--json"]);
            assert_eq!(out.code, Some(0), "events over garbage: {out:?}");
        }
    }
    // Every slot comes back (the Supervisor reclaims dead owners' slots on later rings).
    let ok = eventually(Duration::from_secs(20), Duration::from_millis(20), || {
        let _ = client.command(Opcode::Ping, &[], 0, Duration::from_secs(5));
        shared
            .slots()
            .iter()
            .all(|s| s.state.load(Ordering::Acquire) == SlotState::Free as u32)
    });
    let states: Vec<_> = shared
        .slots()
        .iter()
        .map(|s| SlotState::split(s.state.load(Ordering::Acquire)))
        .collect();
    assert!(ok, "slots never all came back: {states:?}\n{}", c.log());
    assert!(pid_alive(sup), "the Supervisor died:\n{}", c.log());
    assert_eq!(c.lock_pid(), Some(sup));
    let after = c.status();
    for (name, n) in &before {
        assert_eq!(after[name].pid, n.pid, "{name} changed pid");
        assert_eq!(after[name].restarts, 0, "{name} restarted");
    }
    assert!(duplicates(&c.instance).is_empty());
    figure("fuzz_live", "rounds", rounds);
    figure("fuzz_live", "pings_through_garbage", unknown_answered);
}

// ---------------------------------------------------------------------------------------------
// Regression tests for what the fuzzers found.

/// Found by `ring_reader_terminates_and_keeps_its_invariants_over_hostile_stamps` with heads up
/// to u64::MAX: `Ring::next` computes `2 * n + 2` for the expected stamp, which overflows (a
/// panic in debug builds, which the tests and `cargo run` use) once the head read from the
/// region is at least 2^63. A damaged region thus crashes every Main that reads events
/// (`broctld events`, the shell, the daemon) and the Supervisor's `Ring::push` too.
#[test]
fn ring_head_near_u64_max_does_not_panic_the_reader() {
    let cap = 16;
    let r = FakeRing::new(u64::MAX - 3, &vec![0; cap], &vec![[0; EVENT_WORDS]; cap]);
    let mut cursor = 0;
    let _ = r.ring().next(&mut cursor);
    let _ = r.ring().push(&[0; EVENT_WORDS]);
}
