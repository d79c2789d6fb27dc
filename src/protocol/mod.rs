//! broctld's shared-memory protocol, built from the `shm` building blocks:
//!
//! * [`layout`]: the versioned header and where everything lives (offsets, sizes, layout hash),
//!   and the checks a reader runs before trusting a region;
//! * [`node`]: the node table, one seqlock'd record per node;
//! * [`event`]: what the event ring's entries mean;
//! * [`mailbox`]: the command slots several Mains share, each with its own reply and futex.
//!
//! The Supervisor is the only writer of the header, node table and ring; Mains write only
//! into mailbox slots they have claimed.

pub mod event;
pub mod layout;
pub mod mailbox;
pub mod node;

pub use layout::{Geometry, ProtocolError, Shared};
