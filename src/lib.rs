//! # broctld
//!
//! A process supervisor for Zeek clusters and small hosts, split in two processes so that the
//! control plane can die, be restarted or be upgraded without any supervised node restarting:
//!
//! * the **Supervisor** (`broctld __supervisor`, spawned detached by the first Main) owns the
//!   nodes: it spawns them, reaps them in a `mio` event loop, restarts them by policy and stops
//!   them when told;
//! * a **Main** (`broctld`, the CLI or any program using [`client::Client`]) reads their status
//!   from shared memory and sends commands through a mailbox in the same region.
//!
//! Modules, from the bottom up: [`sys`] (syscalls), `shm` (the mapping and lock-free building
//! blocks), `protocol` (the versioned layout: header, node table, event ring, mailbox),
//! [`config`], [`instance`] (runtime paths), [`supervisor`], [`guardian`] (the process that
//! replaces a dead Supervisor at once), [`client`] (the embedding API) and
//! [`cli`] (the `broctld` program). `docs/design.md` explains the whole.
//!
//! To embed broctld, use [`client`]: typed calls by node name, events that name their nodes,
//! errors by kind. `shm` and `protocol` are the wire layer; they are public only so that the
//! test suite and the benchmarks can reach them, are hidden from these docs, and may change
//! with any release (the layout's ABI version says when).

pub mod cli;
pub mod client;
pub mod config;
pub mod guardian;
pub mod instance;
pub mod log;
#[doc(hidden)]
pub mod protocol;
pub mod remote;
#[doc(hidden)]
pub mod shm;
pub mod supervisor;
pub mod sys;
