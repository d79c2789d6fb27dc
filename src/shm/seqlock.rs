//! A seqlock'd cell of `N` 64-bit words: one writer, any number of readers in any process.
//!
//! The writer makes the sequence odd, writes the words, and makes it even again; a reader
//! retries if it saw an odd sequence or the sequence changed while it copied. A writer that
//! dies mid-write leaves the sequence odd: readers then give up after a bounded number of
//! tries (they never spin forever), and the next writer simply continues from there. Nothing
//! is ever *held*. Orderings follow Boehm, "Can seqlocks get along with programming language
//! memory models?" (2012): payload words are Relaxed, fenced by Release/Acquire.

use crate::shm::SharedPod;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use zerocopy::{FromBytes, KnownLayout};

/// `N` payload words behind a sequence word. (zerocopy cannot derive `IntoBytes` for a generic
/// struct; [`SeqCell::NO_PADDING`] proves the same at compile time.)
#[derive(FromBytes, KnownLayout)]
#[repr(C)]
pub struct SeqCell<const N: usize> {
    seq: AtomicU64,
    words: [AtomicU64; N],
}

// SAFETY: repr(C), atomics only, FromBytes.
unsafe impl<const N: usize> SharedPod for SeqCell<N> {}

/// How many times a reader retries before reporting the cell as torn.
pub const READ_TRIES: usize = 10_000;

impl<const N: usize> SeqCell<N> {
    /// Compile-time proof that the cell has no padding bytes (evaluated wherever it is used).
    pub const NO_PADDING: () = assert!(std::mem::size_of::<Self>() == 8 * (N + 1));

    /// Publishes `words` (single writer only).
    pub fn write(&self, words: &[u64; N]) {
        let s = self.seq.load(Ordering::Relaxed);
        // Recover from a writer that died mid-write (odd sequence): move to the next odd.
        let begin = if s.is_multiple_of(2) { s + 1 } else { s + 2 };
        self.write_stamped(begin, begin + 1, words);
    }

    /// Publishes `words` with explicit sequence values: `begin` (odd) while writing, `end`
    /// (even) after. The event ring uses this to stamp each entry with its event number.
    pub fn write_stamped(&self, begin: u64, end: u64, words: &[u64; N]) {
        self.seq.store(begin, Ordering::Relaxed);
        fence(Ordering::Release);
        for (w, v) in self.words.iter().zip(words) {
            w.store(*v, Ordering::Relaxed);
        }
        self.seq.store(end, Ordering::Release);
    }

    /// Copies a consistent snapshot, or `None` if no consistent copy was seen within
    /// [`READ_TRIES`] attempts (a writer is mid-write or died mid-write).
    pub fn read(&self) -> Option<[u64; N]> {
        for _ in 0..READ_TRIES {
            match self.try_read() {
                (s, Some(w)) if s % 2 == 0 => return Some(w),
                _ => std::hint::spin_loop(),
            }
        }
        None
    }

    /// One attempt: the sequence seen and, if stable, the words.
    pub fn try_read(&self) -> (u64, Option<[u64; N]>) {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 % 2 == 1 {
            return (s1, None);
        }
        let mut out = [0u64; N];
        for (o, w) in out.iter_mut().zip(&self.words) {
            *o = w.load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        let s2 = self.seq.load(Ordering::Relaxed);
        if s1 == s2 {
            (s1, Some(out))
        } else {
            (s2, None)
        }
    }

    /// The current sequence value.
    pub fn sequence(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }
}
