//! Shared-memory building blocks, layered as iceoryx2 does: [`region`] is the POSIX layer (the
//! one audited place that maps memory), [`seqlock`] and [`ring`] are building blocks made only of
//! atomics, and `crate::protocol` puts them together into broctld's versioned layout.
//!
//! Rules every type here keeps (see `docs/design.md`): shared bytes are read and written only
//! through atomics, never through `&[u8]`; every index read from the region is masked; nothing
//! holds a lock a dead process could leave held.

pub mod region;
pub mod ring;
pub mod seqlock;

pub use region::{Region, RegionError, SharedPod};
