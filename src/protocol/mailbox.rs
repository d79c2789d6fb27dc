//! The command mailbox: fixed slots that several Mains use at once.
//!
//! A slot's `state` word packs the owner's pid and a [`SlotState`] (`pid << 3 | state`), so a
//! single compare-and-swap both claims a slot and names its owner. The protocol, for a Main:
//!
//! 1. claim a `Free` slot by CAS to `Claiming` (with its pid), store its start time, then CAS
//!    `Claiming -> Claimed`: the owner's identity (pid and start time) is complete before the
//!    slot can be judged by it. A `Claiming` slot is reclaimed only once its pid does not
//!    exist at all, which no live owner can fake;
//! 2. write the command (opcode, argument, the node table's `config_epoch` it resolved names
//!    at, the node mask) and a fresh sequence number, then CAS `Claimed -> Submitted` from the
//!    exact word it owns (if the word changed, the slot is no longer ours: give up);
//! 3. ring the doorbell (coalesced; see `Header::bell`);
//! 4. sleep on the state word (a shared futex) until it reads `Done`, with a timeout;
//! 5. read the reply and CAS `Done -> Free` (failing if the word changed).
//!
//! A Main that gives up waiting withdraws its command by CAS `Submitted -> Free`: if that wins,
//! the command was never taken and never will be; if it loses, the Supervisor has taken it and
//! the Main must say it may have been applied (and keep waiting for the reply a while).
//!
//! The Supervisor moves `Submitted -> Taken` by CAS *before* applying a command, so it applies
//! each submission at most once, then writes the reply and stores `Done` with a futex wake.
//! A command whose `config_epoch` is not the table's current one is refused unapplied
//! ([`ReplyStatus::Stale`]): a reload renumbered the nodes since the Main looked. A slot left
//! `Claimed` or `Done` by a Main that died is reclaimed by the Supervisor once it sees the owner
//! is gone (pid plus start time), so a `kill -9` at any point never wedges the mailbox, and
//! never causes a command to be applied twice.

use crate::shm::SharedPod;
use crate::sys::futex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes, KnownLayout};

/// Words in a slot's node mask (one bit per node index).
pub const MASK_WORDS: usize = super::layout::MAX_NODES / 64;
/// Words of reply text.
pub const REPLY_WORDS: usize = 12;
/// Low bits of the state word that hold the [`SlotState`].
pub const SLOT_STATE_BITS: u32 = 3;
/// [`Slot::mask_len`] for "every node in the table" (no mask, no epoch check).
pub const ALL_NODES: u32 = u32::MAX;

/// One mailbox slot.
#[derive(FromBytes, IntoBytes, KnownLayout)]
#[repr(C, align(64))]
pub struct Slot {
    /// `owner_pid << 3 | SlotState`; also the futex word the owner sleeps on.
    pub state: AtomicU32,
    /// [`Opcode`] as u32.
    pub opcode: AtomicU32,
    /// The owner's start time, so a recycled pid is not mistaken for the owner.
    pub owner_start: AtomicU64,
    /// The command's sequence number.
    pub cmd_seq: AtomicU64,
    /// Opcode-specific argument (a signal number for `Signal`).
    pub arg: AtomicU64,
    /// The node table's `config_epoch` the mask was built against.
    pub config_epoch: AtomicU32,
    /// Words of [`Slot::mask`] in use, or [`ALL_NODES`].
    pub mask_len: AtomicU32,
    /// [`ReplyStatus`] as u32.
    pub reply_status: AtomicU32,
    /// Bytes of reply text.
    pub reply_len: AtomicU32,
    /// Reply text (UTF-8, packed little-endian).
    pub reply: [AtomicU64; REPLY_WORDS],
    _reserved: [AtomicU64; 6],
    /// Which nodes (bit i = node index i); only the first `mask_len` words are meaningful.
    pub mask: [AtomicU64; MASK_WORDS],
}

// SAFETY: repr(C), atomics only, FromBytes.
unsafe impl SharedPod for Slot {}

/// A slot's state (low 3 bits of the state word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SlotState {
    /// Unused.
    Free = 0,
    /// A Main is writing a command into it.
    Claimed = 1,
    /// Ready for the Supervisor.
    Submitted = 2,
    /// The Supervisor is applying it.
    Taken = 3,
    /// The reply is written.
    Done = 4,
    /// A Main won the slot and is recording its start time (judged by pid alone).
    Claiming = 5,
}

impl SlotState {
    /// Splits a state word into (owner pid, state); `None` state for garbage.
    pub fn split(word: u32) -> (u32, Option<SlotState>) {
        let st = match word & 7 {
            0 => SlotState::Free,
            1 => SlotState::Claimed,
            2 => SlotState::Submitted,
            3 => SlotState::Taken,
            4 => SlotState::Done,
            5 => SlotState::Claiming,
            _ => return (word >> SLOT_STATE_BITS, None),
        };
        (word >> SLOT_STATE_BITS, Some(st))
    }

    /// Builds a state word.
    pub fn word(self, pid: u32) -> u32 {
        (pid << SLOT_STATE_BITS) | self as u32
    }
}

/// What a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Opcode {
    /// Do nothing, reply at once (for latency measurements and liveness checks).
    Ping = 1,
    /// Start the selected nodes.
    Start = 2,
    /// Stop the selected nodes.
    Stop = 3,
    /// Stop then start the selected nodes.
    Restart = 4,
    /// Stop every node, then exit.
    Shutdown = 5,
    /// Send signal `arg` to the selected nodes.
    Signal = 6,
    /// Re-read the config file and apply only the difference.
    Reload = 7,
    /// Re-execute the Supervisor's binary in place (same pid, same children).
    Upgrade = 8,
}

impl Opcode {
    /// Decodes a stored value.
    pub fn from_u32(v: u32) -> Option<Opcode> {
        Some(match v {
            1 => Opcode::Ping,
            2 => Opcode::Start,
            3 => Opcode::Stop,
            4 => Opcode::Restart,
            5 => Opcode::Shutdown,
            6 => Opcode::Signal,
            7 => Opcode::Reload,
            8 => Opcode::Upgrade,
            _ => return None,
        })
    }

    /// The command's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Opcode::Ping => "ping",
            Opcode::Start => "start",
            Opcode::Stop => "stop",
            Opcode::Restart => "restart",
            Opcode::Shutdown => "shutdown",
            Opcode::Signal => "signal",
            Opcode::Reload => "reload",
            Opcode::Upgrade => "upgrade-supervisor",
        }
    }
}

/// Which nodes a command is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every node in the table when the command is applied.
    All,
    /// The nodes whose bits are set (bit i = node index i), as numbered at the request's
    /// `epoch`; trailing zero words may be left out.
    Mask(Vec<u64>),
}

/// A command as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do (the raw value, so the Supervisor can answer an unknown opcode).
    pub opcode: u32,
    /// Opcode-specific argument.
    pub arg: u64,
    /// The `config_epoch` the node indices in `target` belong to.
    pub epoch: u32,
    /// The nodes.
    pub target: Target,
}

impl Request {
    /// A request for `op` on the nodes with the given indices (as numbered at `epoch`).
    pub fn new(op: Opcode, nodes: impl IntoIterator<Item = usize>, arg: u64) -> Request {
        let mut mask = Vec::new();
        for i in nodes {
            if i < MASK_WORDS * 64 {
                if mask.len() <= i / 64 {
                    mask.resize(i / 64 + 1, 0);
                }
                mask[i / 64] |= 1 << (i % 64);
            }
        }
        Request {
            opcode: op as u32,
            arg,
            epoch: 0,
            target: Target::Mask(mask),
        }
    }

    /// A request for `op` on every node.
    pub fn all(op: Opcode, arg: u64) -> Request {
        Request {
            opcode: op as u32,
            arg,
            epoch: 0,
            target: Target::All,
        }
    }

    /// The same request, for node indices as numbered at `epoch`.
    pub fn at_epoch(mut self, epoch: u32) -> Request {
        self.epoch = epoch;
        self
    }

    /// Whether the request names nodes by index (and so depends on the table's epoch).
    pub fn names_nodes(&self) -> bool {
        matches!(&self.target, Target::Mask(m) if m.iter().any(|w| *w != 0))
    }

    /// The node indices it is for, below `limit`.
    pub fn nodes(&self, limit: usize) -> Vec<usize> {
        match &self.target {
            Target::All => (0..limit).collect(),
            Target::Mask(mask) => (0..limit.min(mask.len() * 64))
                .filter(|i| mask[i / 64] & (1 << (i % 64)) != 0)
                .collect(),
        }
    }
}

/// How a command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ReplyStatus {
    /// Applied.
    Ok = 0,
    /// Refused; the text says why.
    Rejected = 1,
    /// The Supervisor does not know this opcode.
    Unsupported = 2,
    /// Not applied: the node table changed (a reload) since the Main resolved the names; it
    /// may resolve them again and resend.
    Stale = 3,
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The command's sequence number.
    pub seq: u64,
    /// Outcome.
    pub status: ReplyStatus,
    /// Text (at most `REPLY_WORDS * 8` bytes).
    pub message: String,
}

/// Claims a free slot for `pid` (whose start time is `start`); returns its index. The slot
/// reads `Claiming` until `start` is recorded, then `Claimed`.
pub fn claim(slots: &[Slot], pid: u32, start: u64) -> Option<usize> {
    for (i, s) in slots.iter().enumerate() {
        if s.state.load(Ordering::Relaxed) != SlotState::Free as u32 {
            continue;
        }
        if s.state
            .compare_exchange(
                SlotState::Free as u32,
                SlotState::Claiming.word(pid),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            continue;
        }
        s.owner_start.store(start, Ordering::Relaxed);
        // Release: whoever sees `Claimed` sees the start time.
        if s.state
            .compare_exchange(
                SlotState::Claiming.word(pid),
                SlotState::Claimed.word(pid),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            return Some(i);
        }
        // Only a reclaimer that found our pid gone moves a Claiming slot: not while we live.
    }
    None
}

/// Writes `req` with sequence `seq` into a slot we claimed and marks it submitted, by CAS from
/// our own `Claimed` word: [`WaitError::Lost`] (and nothing submitted) if the slot is no longer
/// ours.
pub fn submit(slot: &Slot, pid: u32, seq: u64, req: &Request) -> Result<(), WaitError> {
    let mine = SlotState::Claimed.word(pid);
    if slot.state.load(Ordering::Acquire) != mine {
        return Err(WaitError::Lost);
    }
    slot.opcode.store(req.opcode, Ordering::Relaxed);
    slot.arg.store(req.arg, Ordering::Relaxed);
    slot.cmd_seq.store(seq, Ordering::Relaxed);
    slot.config_epoch.store(req.epoch, Ordering::Relaxed);
    match &req.target {
        Target::All => slot.mask_len.store(ALL_NODES, Ordering::Relaxed),
        Target::Mask(mask) => {
            let n = mask.len().min(MASK_WORDS);
            for (w, v) in slot.mask.iter().zip(&mask[..n]) {
                w.store(*v, Ordering::Relaxed);
            }
            slot.mask_len.store(n as u32, Ordering::Relaxed);
        }
    }
    slot.reply_status.store(0, Ordering::Relaxed);
    slot.reply_len.store(0, Ordering::Relaxed);
    slot.state
        .compare_exchange(
            mine,
            SlotState::Submitted.word(pid),
            Ordering::SeqCst,
            Ordering::Relaxed,
        )
        .map(|_| ())
        .map_err(|_| WaitError::Lost)
}

/// Why waiting for a reply failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// No reply within the timeout (the slot stays ours).
    TimedOut,
    /// The slot no longer names us (it was reclaimed: should not happen while we live).
    Lost,
}

/// Sleeps until the Supervisor has answered our slot, at most `timeout`.
pub fn wait_done(slot: &Slot, pid: u32, timeout: Duration) -> Result<(), WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = slot.state.load(Ordering::Acquire);
        match SlotState::split(v) {
            (p, Some(SlotState::Done)) if p == pid => return Ok(()),
            (p, Some(SlotState::Submitted | SlotState::Taken)) if p == pid => {}
            _ => return Err(WaitError::Lost),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitError::TimedOut);
        }
        let _ = futex::wait(&slot.state, v, Some(left));
    }
}

/// Reads the reply from our `Done` slot and frees it (CAS from our own `Done` word): `None`
/// if the slot is not ours and done (the reply read would not be ours).
pub fn take_reply(slot: &Slot, pid: u32) -> Option<Reply> {
    let mine = SlotState::Done.word(pid);
    if slot.state.load(Ordering::Acquire) != mine {
        return None;
    }
    let status = match slot.reply_status.load(Ordering::Relaxed) {
        0 => ReplyStatus::Ok,
        2 => ReplyStatus::Unsupported,
        3 => ReplyStatus::Stale,
        _ => ReplyStatus::Rejected,
    };
    let len = (slot.reply_len.load(Ordering::Relaxed) as usize).min(REPLY_WORDS * 8);
    let mut bytes = Vec::with_capacity(len);
    for i in 0..len {
        bytes.push((slot.reply[i / 8].load(Ordering::Relaxed) >> (8 * (i % 8))) as u8);
    }
    let seq = slot.cmd_seq.load(Ordering::Relaxed);
    slot.state
        .compare_exchange(
            mine,
            SlotState::Free as u32,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .ok()?;
    Some(Reply {
        seq,
        status,
        message: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Gives a claimed slot back without submitting.
pub fn abandon(slot: &Slot, pid: u32) {
    let _ = slot.state.compare_exchange(
        SlotState::Claimed.word(pid),
        SlotState::Free as u32,
        Ordering::AcqRel,
        Ordering::Relaxed,
    );
}

/// Withdraws a submitted command (CAS `Submitted -> Free` from our own word). `true`: it was
/// never taken and now never will be. `false`: the Supervisor took it (it may have been
/// applied; the reply will come), or the slot is not ours.
pub fn withdraw(slot: &Slot, pid: u32) -> bool {
    slot.state
        .compare_exchange(
            SlotState::Submitted.word(pid),
            SlotState::Free as u32,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// Supervisor side: takes a submitted command (CAS `Submitted -> Taken`), so that it is applied
/// once. Returns the owner pid, the sequence number and the request.
pub fn take(slot: &Slot) -> Option<(u32, u64, Request)> {
    let v = slot.state.load(Ordering::Acquire);
    let (pid, st) = SlotState::split(v);
    if st != Some(SlotState::Submitted) {
        return None;
    }
    slot.state
        .compare_exchange(
            v,
            SlotState::Taken.word(pid),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .ok()?;
    let target = match slot.mask_len.load(Ordering::Relaxed) {
        ALL_NODES => Target::All,
        n => Target::Mask(
            slot.mask[..(n as usize).min(MASK_WORDS)]
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .collect(),
        ),
    };
    Some((
        pid,
        slot.cmd_seq.load(Ordering::Relaxed),
        Request {
            opcode: slot.opcode.load(Ordering::Relaxed),
            arg: slot.arg.load(Ordering::Relaxed),
            epoch: slot.config_epoch.load(Ordering::Relaxed),
            target,
        },
    ))
}

/// Supervisor side: writes the reply into a slot we took and wakes its owner.
pub fn complete(slot: &Slot, pid: u32, status: ReplyStatus, message: &str) {
    let bytes = message.as_bytes();
    let mut n = bytes.len().min(REPLY_WORDS * 8);
    while !message.is_char_boundary(n) {
        n -= 1;
    }
    let mut words = [0u64; REPLY_WORDS];
    for (i, b) in bytes[..n].iter().enumerate() {
        words[i / 8] |= (*b as u64) << (8 * (i % 8));
    }
    for (w, v) in slot.reply.iter().zip(&words) {
        w.store(*v, Ordering::Relaxed);
    }
    slot.reply_len.store(n as u32, Ordering::Relaxed);
    slot.reply_status.store(status as u32, Ordering::Relaxed);
    slot.state
        .store(SlotState::Done.word(pid), Ordering::Release);
    futex::wake(&slot.state, i32::MAX);
}

/// Supervisor side: frees a slot whose state word is still `seen` (its owner is gone).
pub fn reclaim(slot: &Slot, seen: u32) -> bool {
    slot.state
        .compare_exchange(
            seen,
            SlotState::Free as u32,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}
