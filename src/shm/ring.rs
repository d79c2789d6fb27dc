//! A sequence-numbered broadcast ring of fixed-size entries: one writer that never blocks,
//! any number of readers that each keep their own cursor and learn exactly how many events they
//! missed when the writer lapped them.
//!
//! Entry for event `n` lives at index `n & (capacity - 1)` and carries stamp `2n + 2` once
//! written (`2n + 1` while being written), so a reader can tell "not yet written", "the event I
//! want" and "already overwritten" apart without trusting any index in shared memory.

use super::seqlock::SeqCell;
use crate::sys::futex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The ring's shared head: the next event number, and a futex word readers can sleep on.
#[derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout)]
#[repr(C, align(64))]
pub struct RingHead {
    head: AtomicU64,
    notify: AtomicU32,
    waiters: AtomicU32,
    _reserved: [AtomicU64; 6],
}

// SAFETY: repr(C), atomics only, FromBytes.
unsafe impl crate::shm::SharedPod for RingHead {}

impl RingHead {
    /// Byte offset of the head word (for the layout hash).
    pub const HEAD_OFFSET: usize = std::mem::offset_of!(RingHead, head);
    /// Byte offset of the futex word readers sleep on.
    pub const NOTIFY_OFFSET: usize = std::mem::offset_of!(RingHead, notify);
    /// Byte offset of the sleeping-reader count.
    pub const WAITERS_OFFSET: usize = std::mem::offset_of!(RingHead, waiters);
}

impl RingHead {
    /// Wakes every reader sleeping on this head (without a ring view: for a region whose
    /// entries this build does not know).
    pub fn wake_all_readers(&self) {
        self.notify.fetch_add(1, Ordering::SeqCst);
        futex::wake(&self.notify, i32::MAX);
    }
}

/// The longest a reader sleeps in one [`Ring::wait`]: a reader that is not counted in
/// `waiters` (see [`Ring::push`]) still sees new events within this.
pub const MAX_WAIT: Duration = Duration::from_millis(250);

/// A ring over shared memory: a head and `entries.len()` (a power of two) entries.
pub struct Ring<'a, const W: usize> {
    head: &'a RingHead,
    entries: &'a [SeqCell<W>],
    mask: u64,
}

/// What a reader got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next<const W: usize> {
    /// Event number and its words; `missed` events before it were lost to overrun.
    Event {
        /// The event's sequence number.
        seq: u64,
        /// The payload.
        words: [u64; W],
        /// How many events were skipped because the writer lapped the reader.
        missed: u64,
    },
    /// Nothing new yet.
    Empty,
}

impl<'a, const W: usize> Ring<'a, W> {
    /// Wraps a head and entries. `entries.len()` must be a power of two.
    pub fn new(head: &'a RingHead, entries: &'a [SeqCell<W>]) -> Ring<'a, W> {
        assert!(entries.len().is_power_of_two());
        Ring {
            head,
            entries,
            mask: entries.len() as u64 - 1,
        }
    }

    /// Capacity in events.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The next event number to be written (events `0..head()` exist or existed).
    pub fn head(&self) -> u64 {
        self.head.head.load(Ordering::Acquire)
    }

    /// Appends an event (single writer only); never blocks. Wakes sleeping readers, with a
    /// syscall only if some reader sleeps.
    ///
    /// `waiters` heals itself: a reader killed while counted would otherwise make every later
    /// push pay a wake syscall. When a wake finds nobody asleep, the count is reset to 0 if it
    /// did not change meanwhile; a reader that the reset leaves uncounted (it went to sleep in
    /// that instant) is woken by its own bounded sleep ([`MAX_WAIT`]) and counts itself again.
    pub fn push(&self, words: &[u64; W]) -> u64 {
        let n = self.head.head.load(Ordering::Relaxed);
        let e = &self.entries[(n & self.mask) as usize];
        e.write_stamped(
            n.wrapping_mul(2).wrapping_add(1),
            n.wrapping_mul(2).wrapping_add(2),
            words,
        );
        self.head.head.store(n.wrapping_add(1), Ordering::Release);
        self.head.notify.fetch_add(1, Ordering::SeqCst);
        let waiting = self.head.waiters.load(Ordering::SeqCst);
        if waiting > 0 && futex::wake(&self.head.notify, i32::MAX) == 0 {
            let _ =
                self.head
                    .waiters
                    .compare_exchange(waiting, 0, Ordering::SeqCst, Ordering::Relaxed);
        }
        n
    }

    /// Readers counted as asleep (diagnostics and tests).
    pub fn waiters(&self) -> u32 {
        self.head.waiters.load(Ordering::SeqCst)
    }

    /// Reads the event at `*cursor` if there is one, advancing the cursor; skips (and counts)
    /// events that were overwritten before they could be read. Bounded: an entry whose stamp
    /// never matches (torn by a dead writer, or garbage) is skipped and counted as missed.
    pub fn next(&self, cursor: &mut u64) -> Next<W> {
        let mut missed = 0u64;
        let mut tries = 0usize;
        loop {
            let head = self.head();
            if *cursor >= head {
                // A cursor past the head (from an older, longer ring) restarts at the head.
                *cursor = head;
                return Next::Empty;
            }
            let oldest = head.saturating_sub(self.capacity());
            if *cursor < oldest {
                missed += oldest - *cursor;
                *cursor = oldest;
            }
            let n = *cursor;
            let e = &self.entries[(n & self.mask) as usize];
            if let (s, Some(words)) = e.try_read() {
                if s == n.wrapping_mul(2).wrapping_add(2) {
                    *cursor = n.wrapping_add(1);
                    return Next::Event {
                        seq: n,
                        words,
                        missed,
                    };
                }
            }
            tries += 1;
            if tries >= super::seqlock::READ_TRIES {
                missed += 1;
                *cursor = n.wrapping_add(1);
                tries = 0;
            }
            std::hint::spin_loop();
        }
    }

    /// Sleeps until an event after `seen_head` is published or `timeout` passes (at most
    /// [`MAX_WAIT`] per call: callers loop).
    pub fn wait(&self, seen_head: u64, timeout: Option<Duration>) {
        let timeout = timeout.map_or(MAX_WAIT, |t| t.min(MAX_WAIT));
        self.head.waiters.fetch_add(1, Ordering::SeqCst);
        let v = self.head.notify.load(Ordering::SeqCst);
        if self.head() == seen_head {
            let _ = futex::wait(&self.head.notify, v, Some(timeout));
        }
        // Never below 0: the writer may have reset the count while we slept.
        let _ = self
            .head
            .waiters
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| w.checked_sub(1));
    }

    /// Wakes everyone sleeping in [`Ring::wait`] (used when the Supervisor exits).
    pub fn wake_all(&self) {
        self.head.wake_all_readers();
    }
}
