//! The command mailbox: fixed slots that several Mains use at once.
//!
//! A slot's `state` word packs the owner's pid and a [`SlotState`] (`pid << 3 | state`), so a
//! single compare-and-swap both claims a slot and names its owner. The protocol, for a Main:
//!
//! 1. claim a `Free` slot by CAS to `Claimed` (with its pid), record its start time;
//! 2. write the command and a fresh sequence number, then store `Submitted`;
//! 3. ring the doorbell (coalesced; see `Header::bell`);
//! 4. sleep on the state word (a shared futex) until it reads `Done`, with a timeout;
//! 5. read the reply and store `Free`.
//!
//! The Supervisor moves `Submitted -> Taken` by CAS *before* applying a command, so it applies
//! each submission at most once, then writes the reply and stores `Done` with a futex wake.
//! A slot left `Claimed` or `Done` by a Main that died is reclaimed by the Supervisor once it
//! sees the owner is gone (pid plus start time), so a `kill -9` at any point never wedges the
//! mailbox, and never causes a command to be applied twice.

use crate::shm::SharedPod;
use crate::sys::futex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes, KnownLayout};

/// Words in a slot's node mask (one bit per node index).
pub const MASK_WORDS: usize = super::layout::MAX_NODES / 64;
/// Words of reply text.
pub const REPLY_WORDS: usize = 12;

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
    /// Which nodes (bit i = node index i).
    pub mask: [AtomicU64; MASK_WORDS],
    /// [`ReplyStatus`] as u32.
    pub reply_status: AtomicU32,
    /// Bytes of reply text.
    pub reply_len: AtomicU32,
    /// Reply text (UTF-8, packed little-endian).
    pub reply: [AtomicU64; REPLY_WORDS],
    _reserved: [AtomicU64; 7],
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
            _ => return (word >> 3, None),
        };
        (word >> 3, Some(st))
    }

    /// Builds a state word.
    pub fn word(self, pid: u32) -> u32 {
        (pid << 3) | self as u32
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

/// A command as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do (the raw value, so the Supervisor can answer an unknown opcode).
    pub opcode: u32,
    /// Opcode-specific argument.
    pub arg: u64,
    /// Node mask.
    pub mask: [u64; MASK_WORDS],
}

impl Request {
    /// A request for `op` on the nodes with the given indices.
    pub fn new(op: Opcode, nodes: impl IntoIterator<Item = usize>, arg: u64) -> Request {
        let mut mask = [0u64; MASK_WORDS];
        for i in nodes {
            if i < MASK_WORDS * 64 {
                mask[i / 64] |= 1 << (i % 64);
            }
        }
        Request {
            opcode: op as u32,
            arg,
            mask,
        }
    }

    /// The node indices in the mask below `limit`.
    pub fn nodes(&self, limit: usize) -> Vec<usize> {
        (0..limit.min(MASK_WORDS * 64))
            .filter(|i| self.mask[i / 64] & (1 << (i % 64)) != 0)
            .collect()
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

/// Claims a free slot for `pid`; returns its index.
pub fn claim(slots: &[Slot], pid: u32, start: u64) -> Option<usize> {
    for (i, s) in slots.iter().enumerate() {
        if s.state.load(Ordering::Relaxed) != SlotState::Free as u32 {
            continue;
        }
        if s.state
            .compare_exchange(
                SlotState::Free as u32,
                SlotState::Claimed.word(pid),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            s.owner_start.store(start, Ordering::Relaxed);
            return Some(i);
        }
    }
    None
}

/// Writes `req` with sequence `seq` into a slot we claimed and marks it submitted.
pub fn submit(slot: &Slot, pid: u32, seq: u64, req: &Request) {
    slot.opcode.store(req.opcode, Ordering::Relaxed);
    slot.arg.store(req.arg, Ordering::Relaxed);
    slot.cmd_seq.store(seq, Ordering::Relaxed);
    for (w, v) in slot.mask.iter().zip(&req.mask) {
        w.store(*v, Ordering::Relaxed);
    }
    slot.reply_status.store(0, Ordering::Relaxed);
    slot.reply_len.store(0, Ordering::Relaxed);
    slot.state
        .store(SlotState::Submitted.word(pid), Ordering::SeqCst);
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

/// Reads the reply from a `Done` slot and frees it.
pub fn take_reply(slot: &Slot) -> Reply {
    let status = match slot.reply_status.load(Ordering::Relaxed) {
        0 => ReplyStatus::Ok,
        2 => ReplyStatus::Unsupported,
        _ => ReplyStatus::Rejected,
    };
    let len = (slot.reply_len.load(Ordering::Relaxed) as usize).min(REPLY_WORDS * 8);
    let mut bytes = Vec::with_capacity(len);
    for i in 0..len {
        bytes.push((slot.reply[i / 8].load(Ordering::Relaxed) >> (8 * (i % 8))) as u8);
    }
    let seq = slot.cmd_seq.load(Ordering::Relaxed);
    slot.state.store(SlotState::Free as u32, Ordering::Release);
    Reply {
        seq,
        status,
        message: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Gives a claimed slot back without submitting (or after a timed-out wait, once the caller
/// decided to abandon it: the Supervisor will answer into it and later reclaim it).
pub fn abandon(slot: &Slot, pid: u32) {
    let _ = slot.state.compare_exchange(
        SlotState::Claimed.word(pid),
        SlotState::Free as u32,
        Ordering::AcqRel,
        Ordering::Relaxed,
    );
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
    let mut mask = [0u64; MASK_WORDS];
    for (m, w) in mask.iter_mut().zip(&slot.mask) {
        *m = w.load(Ordering::Relaxed);
    }
    Some((
        pid,
        slot.cmd_seq.load(Ordering::Relaxed),
        Request {
            opcode: slot.opcode.load(Ordering::Relaxed),
            arg: slot.arg.load(Ordering::Relaxed),
            mask,
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
