//! The client: what a Main (the `broctld` CLI, or any program embedding broctld) uses to talk to
//! a running Supervisor.
//!
//! ```no_run
//! use broctld::client::{Client, EventKind};
//! use broctld::instance::Instance;
//! use std::time::Duration;
//!
//! let instance = Instance::new("default", &Instance::default_runtime_dir())?;
//! let client = Client::attach(&instance)?;
//! for node in client.status() {
//!     println!("{} {} {:?}", node.name, node.state.as_str(), node.pid);
//! }
//! let mut events = client.events();
//! let done = client.restart(&["worker-1"])?;
//! println!("restart of {:?} applied (command #{})", done.nodes, done.seq);
//! while let Some(ev) = events.next_timeout(Duration::from_secs(5)) {
//!     println!("{} {:?} {:?}", ev.kind.as_str(), ev.node, ev.pid);
//!     if ev.kind == EventKind::Ready && ev.node.as_deref() == Some("worker-1") {
//!         break;
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What to use: [`Client::attach`] once; [`Client::status`] / [`Client::node`] to read (no
//! syscall); [`Client::start`], [`Client::stop`], [`Client::restart`], [`Client::signal`] to
//! act on nodes by name; [`Client::events`] to follow what happens. Errors are
//! [`ClientError`], one variant per kind of failure. The wire layout (`broctld::protocol`) is
//! not part of this surface.
//!
//! Commands name their nodes; the client turns names into table indices tagged with the
//! table's `config_epoch`, and if a reload renumbered the table before the Supervisor applied
//! the command (it then refuses it, unapplied), resolves the names again and resends.
//!
//! Reading status touches only shared memory (no syscall). A command claims a mailbox slot,
//! rings the doorbell if it is idle, and sleeps on the slot's futex until the reply is there.

mod spawn;

pub use crate::protocol::event::EventKind;
pub use crate::protocol::layout::SupervisorState;
pub use crate::protocol::mailbox::Opcode;
pub use crate::protocol::node::{Exit, NodeState};
pub use nix::sys::signal::Signal;
pub use spawn::spawn_supervisor;

use crate::config::NodeType;
use crate::instance::{Instance, InstanceError};
use crate::protocol::event::Event;
use crate::protocol::mailbox::{self, Reply, ReplyStatus, Request, WaitError};
use crate::protocol::node::{decode_name_into, NodeRecord, NotifyPhase, RecordFields};
pub use crate::protocol::ProtocolError;
use crate::protocol::Shared;
use crate::shm::ring::Next;
use crate::shm::RegionError;
use crate::sys::checked::CheckError;
use crate::sys::lockfile::{LockFile, Probe};
use crate::sys::{clock, fifo, pidfd, procstat};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A command the Supervisor applied, as the calls by name report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The command's sequence number (its `command` event carries it too).
    pub seq: u64,
    /// The nodes it was applied to, by name.
    pub nodes: Vec<String>,
    /// What the Supervisor said (often empty).
    pub message: String,
}

/// One event, as an embedder sees it: the node it is about named, never a table index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    /// The event's sequence number in the ring.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// The node it is about, by name; `None` for events about no node (commands, the
    /// Supervisor itself), or written under a numbering of the table this reader did not see.
    pub node: Option<String>,
    /// The process concerned, if any.
    pub pid: Option<u32>,
    /// How a process ended, for exits.
    pub exit: Option<Exit>,
    /// When, in ms since the epoch.
    pub wall_ms: u64,
    /// Events lost (overwritten before they were read) just before this one.
    pub missed: u64,
    /// Kind-specific argument (see [`EventKind`]: a delay, a signal, a sequence number...).
    pub a: u64,
    /// Kind-specific argument.
    pub b: u64,
}

/// A reader of the event ring that names nodes: see [`Client::events`].
#[derive(Debug)]
pub struct Events<'a> {
    client: &'a Client,
    cursor: u64,
    /// Names by index, and the table epoch they belong to.
    names: (u32, Vec<String>),
}

impl Events<'_> {
    /// The next event if there is one, without waiting.
    pub fn try_next(&mut self) -> Option<NodeEvent> {
        let (seq, ev, missed) = self.client.next_event(&mut self.cursor)?;
        let node = if ev.node == crate::protocol::event::NO_NODE {
            None
        } else {
            if ev.epoch != self.names.0 && ev.epoch == self.client.config_epoch() {
                self.names = self.client.names_now();
            }
            (ev.epoch == self.names.0)
                .then(|| self.names.1.get(ev.node as usize).cloned())
                .flatten()
                .filter(|n| !n.is_empty())
        };
        Some(NodeEvent {
            seq,
            kind: ev.kind,
            node,
            pid: (ev.pid != 0).then_some(ev.pid),
            exit: ev.exit,
            wall_ms: ev.wall_ms,
            missed,
            a: ev.a,
            b: ev.b,
        })
    }

    /// The next event, waiting at most `timeout` for one.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<NodeEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.try_next() {
                return Some(ev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.client.wait_event(self.cursor, left);
        }
    }

    /// The sequence number of the next event this reader will return.
    pub fn position(&self) -> u64 {
        self.cursor
    }
}

/// How long the calls by name ([`Client::start`] and so on) wait for the Supervisor's reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No Supervisor runs for the instance.
    #[error("no Supervisor is running for instance '{instance}' (runtime dir {dir}); `broctld start` starts one")]
    NotRunning {
        /// Instance name.
        instance: String,
        /// Its runtime dir.
        dir: PathBuf,
    },
    /// Runtime dir problems.
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// A runtime file failed its checks.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The region failed validation.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The Supervisor could not be started.
    #[error("the Supervisor did not start: {message}")]
    Spawn {
        /// What went wrong (the Supervisor's own words when it could say).
        message: String,
    },
    /// No reply in time.
    #[error("no reply from the Supervisor (pid {pid}) within {timeout:?} to {what} (command seq {seq}); it was {applied}; see `broctld events` and {log}")]
    Timeout {
        /// The command.
        what: &'static str,
        /// Its sequence number.
        seq: u64,
        /// The Supervisor's pid.
        pid: u32,
        /// How long we waited.
        timeout: Duration,
        /// "not applied" or "taken and may have been applied".
        applied: &'static str,
        /// The Supervisor's log.
        log: String,
    },
    /// Every mailbox slot stayed busy.
    #[error("the Supervisor's mailbox stayed full for {0:?}; too many Mains at once, or the Supervisor is stuck")]
    Busy(Duration),
    /// The Supervisor refused the command.
    #[error("the Supervisor refused {what}: {message}")]
    Rejected {
        /// The command.
        what: &'static str,
        /// Its reason.
        message: String,
    },
    /// The Supervisor went away while we talked to it.
    #[error("the Supervisor (pid {pid}) exited")]
    Gone {
        /// Its pid.
        pid: u32,
    },
    /// A syscall failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A Supervisor holds the instance lock, but its region cannot be used.
    #[error("the Supervisor of instance '{instance}' (pid {pid}) is running, but its shared memory region {path} {why}; its nodes are still supervised but their state cannot be read. This command asked it to rebuild the region: try again in a moment; if this persists, see {log}, and `kill -9 {pid}` makes the next broctld command start a Supervisor that adopts the running nodes")]
    RegionLost {
        /// Instance name.
        instance: String,
        /// The lock holder.
        pid: u32,
        /// `/dev/shm/NAME`.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
        /// The Supervisor's log.
        log: String,
    },
    /// The region was shrunk under this Main's mapping (SIGBUS caught): what it read since
    /// means nothing.
    #[error("the shared memory region {path} was truncated by another process while this Main used it; nothing read from it can be trusted: run the command again (the Supervisor rebuilds the region)")]
    Damaged {
        /// `/dev/shm/NAME`.
        path: PathBuf,
    },
    /// No node of that name in the running table.
    #[error("no node named '{name}' in the running Supervisor's table (see `broctld status`)")]
    NoSuchNode {
        /// The name asked for.
        name: String,
    },
    /// Records of the node table fail their check and the Supervisor did not rewrite them in
    /// time: a name that is not among the records that verify cannot be looked up.
    #[error("the node table of the Supervisor (pid {pid}) is damaged: {damaged} record(s) fail their check ({}) and were not repaired in time, so '{name}' cannot be looked up; nothing was done. The Supervisor was asked to rewrite them from its memory: try again in a moment; if this persists, see {log}", show_indices(indices))]
    TableDamaged {
        /// The name (or pattern) asked for.
        name: String,
        /// The Supervisor's pid.
        pid: u32,
        /// How many records fail their check.
        damaged: usize,
        /// Their table indices.
        indices: Vec<usize>,
        /// The Supervisor's log.
        log: String,
    },
    /// A live Supervisor holds the lock but does not serve: its region says it is not ready
    /// (a takeover or an upgrade that has not come back), or its doorbell has no reader.
    #[error("the Supervisor of instance '{instance}' (pid {pid}) is alive and holds the instance lock, but does not serve: {why}; nothing it recorded is verified and commands cannot reach it. Its guardian replaces a Supervisor whose upgrade does not come back in time; see {log}, and `kill -9 {pid}` makes the guardian (or the next broctld command) start one that adopts the running nodes")]
    NotServing {
        /// Instance name.
        instance: String,
        /// The lock holder.
        pid: u32,
        /// What shows it does not serve.
        why: String,
        /// The Supervisor's log.
        log: String,
    },
    /// The node table kept changing (reloads) while the command was being sent.
    #[error("{what} was not applied: the node table changed {tries} times (reloads) while it was being sent; try again")]
    Stale {
        /// The command.
        what: &'static str,
        /// Attempts made.
        tries: u32,
    },
}

fn show_indices(v: &[usize]) -> String {
    let mut s: Vec<String> = v.iter().take(8).map(|i| format!("#{i}")).collect();
    if v.len() > 8 {
        s.push("...".into());
    }
    s.join(", ")
}

impl ClientError {
    /// Whether the error means the Supervisor certainly did nothing with the command.
    pub fn not_applied(&self) -> bool {
        !matches!(
            self,
            ClientError::Timeout {
                applied: "taken and may have been applied",
                ..
            }
        )
    }
}

/// A node's status as a Main sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Index in the node table. A reload may renumber the table: address nodes by name.
    pub index: usize,
    /// Name.
    pub name: String,
    /// Role.
    pub node_type: NodeType,
    /// State.
    pub state: NodeState,
    /// Pid of the live process.
    pub pid: Option<u32>,
    /// Time since the live process started.
    pub uptime: Option<Duration>,
    /// Restarts so far.
    pub restarts: u32,
    /// How the previous process ended.
    pub last_exit: Option<Exit>,
    /// When the live (or last) process started, ms since the epoch (0 if never).
    pub started_wall_ms: u64,
    /// Backoff or kill deadline as time left, if any.
    pub deadline_in: Option<Duration>,
    /// Whether a live Supervisor stands behind this record. `false`: it is the last state a
    /// Supervisor recorded, and nothing keeps it true now (see [`NodeStatus::state_word`]).
    pub verified: bool,
    /// For an unverified record with a pid: whether that process (pid plus start time) still
    /// lives, per `/proc` (`None` if it could not be told).
    pub pid_alive: Option<bool>,
    /// The recorded pid's start time (clock ticks since boot; 0 if none).
    pub pid_start: u64,
    /// In `backoff`: a process of this node that is not the Supervisor's blocks its start
    /// ([`crate::protocol::node::BLOCKED_UNKNOWN`] if it cannot be named).
    pub blocked_by: Option<u32>,
    /// What a running `ready = "notify"` node said it is doing (`RELOADING=1`,
    /// `STOPPING=1`), if anything.
    pub phase: Option<NotifyPhase>,
    /// The record at this index fails its check (zeroed, forged, corrupted) and was not
    /// repaired in time: nothing in it is believed. Its name is `#INDEX`, it is never
    /// `verified`, its state shows as `unknown`, and no pid is given.
    pub damaged: bool,
}

impl NodeStatus {
    /// The state to show: the recorded state when a live Supervisor stands behind it,
    /// `unknown` otherwise.
    /// A running `ready = "notify"` node that sent `RELOADING=1` or `STOPPING=1` shows as
    /// `reloading` or `stopping`.
    pub fn state_word(&self) -> &'static str {
        match (self.verified && !self.damaged, self.state, self.phase) {
            (false, _, _) => "unknown",
            (true, NodeState::Running, Some(p)) => p.as_str(),
            (true, s, _) => s.as_str(),
        }
    }

    /// A row for table index `index` whose record fails its check: see
    /// [`NodeStatus::damaged`]. (Its `state` is a placeholder, `starting` with no pid, so that
    /// a wait for any settled state never takes it for one.)
    pub fn damaged_row(index: usize) -> NodeStatus {
        let mut n = NodeStatus::stopped(index, format!("#{index}"), NodeType::Other);
        n.state = NodeState::Starting;
        n.verified = false;
        n.damaged = true;
        n
    }

    /// Marks the record as not backed by a live Supervisor and checks its pid against `/proc`.
    pub fn unverify(&mut self) {
        self.verified = false;
        self.pid_alive = self.pid.map(|p| {
            procstat::stat(p)
                .ok()
                .flatten()
                .is_some_and(|st| st.start == self.pid_start && !matches!(st.state, 'Z' | 'X'))
        });
    }
}

impl NodeStatus {
    /// Overwrites this entry from a record's words (checked: see [`Shared::read_record`]),
    /// reusing the name buffer. Returns false for words out of range.
    fn fill(
        &mut self,
        index: usize,
        w: &[u64; crate::protocol::layout::NODE_WORDS],
        now_mono: u64,
    ) -> bool {
        let Some(f) = RecordFields::decode(w) else {
            return false;
        };
        if !decode_name_into(w, &mut self.name) || self.name.is_empty() {
            return false;
        }
        self.set(index, f, now_mono);
        true
    }

    /// A stopped node with no history (what a config says when nothing runs).
    pub fn stopped(index: usize, name: String, node_type: NodeType) -> NodeStatus {
        NodeStatus {
            index,
            name,
            node_type,
            state: NodeState::Stopped,
            pid: None,
            uptime: None,
            restarts: 0,
            last_exit: None,
            started_wall_ms: 0,
            deadline_in: None,
            verified: true,
            pid_alive: None,
            pid_start: 0,
            blocked_by: None,
            phase: None,
            damaged: false,
        }
    }

    fn from_record(index: usize, r: NodeRecord, now_mono: u64) -> NodeStatus {
        let f = r.fields();
        let mut n = NodeStatus::stopped(index, r.name, NodeType::Other);
        n.set(index, f, now_mono);
        n
    }

    /// Sets every field but the name from a record's fields, in place.
    fn set(&mut self, index: usize, f: RecordFields, now_mono: u64) {
        self.index = index;
        self.node_type = NodeType::from_code(f.node_type).unwrap_or(NodeType::Other);
        self.state = f.state;
        self.pid = f.pid;
        self.uptime = f
            .pid
            .map(|_| Duration::from_nanos(now_mono.saturating_sub(f.started_mono_ns)));
        self.restarts = f.restarts;
        self.last_exit = f.last_exit;
        self.started_wall_ms = f.started_wall_ms;
        self.deadline_in = (f.deadline_mono_ns != 0)
            .then(|| Duration::from_nanos(f.deadline_mono_ns.saturating_sub(now_mono)));
        self.pid_start = f.pid_start;
        self.verified = true;
        self.pid_alive = None;
        self.blocked_by = f.blocked_by;
        self.phase = NotifyPhase::of(f.intent);
        self.damaged = false;
    }
}

/// Node record `i` of `shared`, if it verifies (consistent, its check matching) and decodes.
fn checked_record(shared: &Shared, i: usize) -> Option<NodeRecord> {
    let words = shared.read_record(i).ok()?;
    NodeRecord::decode(&words).filter(|r| !r.name.is_empty())
}

/// Every node record in `shared`, decoded; a record that does not verify is a
/// [`NodeStatus::damaged_row`].
fn read_status(shared: &Shared) -> Vec<NodeStatus> {
    let now = clock::monotonic_ns();
    (0..shared.node_count())
        .map(|i| match checked_record(shared, i) {
            Some(r) => NodeStatus::from_record(i, r, now),
            None => NodeStatus::damaged_row(i),
        })
        .collect()
}

/// How long [`Client::status`] waits for the Supervisor to rewrite records that fail their
/// check (it is asked at once, and again every `REPAIR_RING`).
pub const REPAIR_WAIT: Duration = Duration::from_secs(2);
const REPAIR_RING: Duration = Duration::from_millis(100);

/// A connection to a running Supervisor.
pub struct Client {
    instance: Instance,
    shared: Shared,
    /// The doorbell's write end, opened on first use (a status read never needs it).
    bell: std::sync::OnceLock<File>,
    pid: u32,
    /// Our own start time (slot ownership), read on first use.
    start: std::sync::OnceLock<u64>,
    supervisor_pid: u32,
    supervisor_start: u64,
    config_path: Option<PathBuf>,
    /// When a wait for the repair of damaged records last ended without it: later reads do
    /// not wait again for a while (they still ask).
    repair_unanswered: std::cell::Cell<Option<Instant>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("instance", &self.instance.name())
            .field("supervisor_pid", &self.supervisor_pid)
            .finish()
    }
}

impl Client {
    /// Attaches to the instance's running Supervisor: checks the lock, maps and validates the
    /// region, opens the doorbell. Fails with [`ClientError::NotRunning`] if none runs, and with
    /// [`ClientError::RegionLost`] if one holds the lock but its region is missing, damaged or
    /// not its own (never "not running": its nodes run on).
    pub fn attach(instance: &Instance) -> Result<Client, ClientError> {
        let not_running = || ClientError::NotRunning {
            instance: instance.name().to_owned(),
            dir: instance.runtime_dir().to_owned(),
        };
        // The runtime and instance dirs must be ours and private before anything in them is
        // trusted (a Main must not talk to a Supervisor someone planted there). Attaching
        // creates nothing: with no instance dir, nothing of this instance runs.
        if !instance.dirs_exist()? {
            return Err(not_running());
        }
        let name = instance.shm_name();
        let identity = instance.identity();
        // A Supervisor that is starting holds the lock before its region is ready: wait a bit.
        let start_wait = Duration::from_secs(5);
        let deadline = Instant::now() + start_wait;
        let mut asked_repair = false;
        loop {
            let (config_path, holder) = match LockFile::probe(&instance.lock_path())? {
                Probe::Free => return Err(not_running()),
                Probe::Held { info, pid, start } => (
                    (!info.is_empty()).then(|| PathBuf::from(info)),
                    (pid, start),
                ),
            };
            let lost = |path: PathBuf, why: String| ClientError::RegionLost {
                instance: instance.name().to_owned(),
                pid: holder.0,
                path,
                why,
                log: instance.log_path().display().to_string(),
            };
            let (shared, why) = match Shared::open_owned(&name, &identity) {
                Ok(s) => (Some(s), None),
                Err(ProtocolError::Region(RegionError::Missing { path })) => (
                    None,
                    Some((path, "does not exist (removed by another program?)".into())),
                ),
                // A Supervisor that holds the lock may be creating the region right now: empty,
                // or its magic not yet stored. Wait for it (bounded) rather than refuse.
                Err(ProtocolError::Region(RegionError::Size { size: 0, path, .. }))
                | Err(ProtocolError::Magic { found: 0, path }) => {
                    (None, Some((path, "is empty".into())))
                }
                // Another build's region: no rebuild would help; its error says which binary to use.
                Err(e @ (ProtocolError::Version { .. } | ProtocolError::Layout { .. })) => {
                    return Err(e.into())
                }
                Err(e) => {
                    let path = PathBuf::from("/dev/shm").join(name.trim_start_matches('/'));
                    (None, Some((path, format!("cannot be used ({e})"))))
                }
            };
            let mut why = why;
            // A live owner that does not serve (yet): what shows it.
            let mut stalled = None;
            if let Some(shared) = shared {
                let h = shared.header();
                let state = SupervisorState::from_u32(h.state.load(Ordering::Acquire));
                let sup_pid = h.owner_pid.load(Ordering::Relaxed);
                let sup_start = h.owner_start.load(Ordering::Relaxed);
                // The lock is held by a live process (the kernel drops it at death); if that
                // holder is the region's owner, the owner lives: no /proc read needed.
                let live = holder == (sup_pid, sup_start) || procstat::is_alive(sup_pid, sup_start);
                match state {
                    Some(SupervisorState::Ready | SupervisorState::ShuttingDown) if live => {
                        // A Supervisor that serves reads its doorbell. One whose FIFO has no
                        // reader is not the program that wrote `ready` (its image was replaced,
                        // across an upgrade's exec, by one that never got that far), whatever
                        // its region still says.
                        let bell = std::sync::OnceLock::new();
                        match fifo::open_writer(&instance.bell_path()) {
                            Ok(b) => {
                                let _ = bell.set(b);
                            }
                            Err(e) if e.os_error() == Some(libc::ENXIO) => {
                                stalled = Some(
                                    "its doorbell FIFO has no reader (its program image no longer runs the Supervisor's loop)".to_owned(),
                                );
                            }
                            // Opened again when a command needs it (and its error told then).
                            Err(_) => {}
                        }
                        if stalled.is_none() {
                            return Ok(Client {
                                instance: instance.clone(),
                                shared,
                                bell,
                                pid: std::process::id(),
                                start: std::sync::OnceLock::new(),
                                supervisor_pid: sup_pid,
                                supervisor_start: sup_start,
                                config_path,
                                repair_unanswered: std::cell::Cell::new(None),
                            });
                        }
                    }
                    Some(SupervisorState::Exited) => return Err(not_running()),
                    _ if !live => {
                        why = Some((
                            shared.path().to_owned(),
                            format!(
                                "names Supervisor pid {sup_pid}, which is not the lock holder and is not running"
                            ),
                        ))
                    }
                    Some(SupervisorState::Starting) => {
                        stalled = Some(
                            "its region says it is starting (taking over, or coming back from an upgrade) and it has not become ready".to_owned(),
                        )
                    }
                    None => {
                        stalled = Some(format!(
                            "its region's state word is {} (not a state)",
                            h.state.load(Ordering::Relaxed)
                        ))
                    }
                    _ => {}
                }
            }
            if let Some((path, text)) = why {
                if Instant::now() >= deadline {
                    return Err(lost(path, text));
                }
                // Ask the Supervisor to check its region: it rebuilds it if it is gone or
                // damaged, and ignores the request if it is only still being created.
                if !asked_repair {
                    asked_repair = fifo::open_writer(&instance.bell_path())
                        .is_ok_and(|bell| fifo::ring_repair(&bell).is_ok());
                }
            } else if Instant::now() >= deadline {
                return Err(match stalled {
                    // Never "not running": it runs, and holds what a replacement needs.
                    Some(why) => ClientError::NotServing {
                        instance: instance.name().to_owned(),
                        pid: holder.0,
                        why: format!("{why}, for {} s", start_wait.as_secs()),
                        log: instance.log_path().display().to_string(),
                    },
                    None => not_running(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads the region an instance's Supervisor left, if any, without a live Supervisor (and
    /// without a config): every record comes back unverified (see [`NodeStatus::verified`]),
    /// each recorded pid checked against `/proc`. `Ok(None)` if there is no region.
    pub fn last_recorded(instance: &Instance) -> Result<Option<Vec<NodeStatus>>, ClientError> {
        let shared = match Shared::open_owned(&instance.shm_name(), &instance.identity()) {
            Ok(s) => s,
            Err(ProtocolError::Region(RegionError::Missing { .. })) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut out = read_status(&shared);
        if shared.damaged() {
            return Err(ClientError::Damaged {
                path: shared.path().to_owned(),
            });
        }
        out.iter_mut().for_each(NodeStatus::unverify);
        Ok(Some(out))
    }

    /// With no Supervisor and no region: each configured node (`nodes`: name and type) as the
    /// kernel shows it. One whose lock file is held, or whose cgroup holds processes, has a
    /// live process nobody supervises: `running`, unverified, with that pid. One whose lock
    /// cannot be read is unverified too (an OS error is no evidence that it is stopped). Any
    /// other is stopped.
    pub fn unsupervised_rows(instance: &Instance, nodes: &[(String, NodeType)]) -> Vec<NodeStatus> {
        let dir = instance.dir();
        nodes
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| {
                let mut n = NodeStatus::stopped(i, name.clone(), *ty);
                let lock = LockFile::probe(&instance.node_lock_path(name));
                let in_group = crate::supervisor::cgroups::node_processes(&dir, name)
                    .and_then(|p| p.first().copied());
                match (lock, in_group) {
                    (Ok(Probe::Held { pid, start, .. }), _)
                        if pid != 0 && procstat::is_alive(pid, start) =>
                    {
                        n.state = NodeState::Running;
                        n.pid = Some(pid);
                        n.pid_start = start;
                    }
                    (_, Some(pid)) => {
                        n.state = NodeState::Running;
                        n.pid = Some(pid);
                        n.pid_start = procstat::start_time(pid).ok().flatten().unwrap_or(0);
                    }
                    // Held, by a process other than the one the file names: alive, pid unknown.
                    (Ok(Probe::Held { .. }), None) => n.state = NodeState::Running,
                    (Ok(Probe::Free), None) => return n,
                    (Err(_), None) => {}
                }
                n.unverify();
                n
            })
            .collect()
    }

    /// Attaches to the running Supervisor, or starts one with `config` and attaches to it.
    pub fn attach_or_spawn(
        instance: &Instance,
        config: &std::path::Path,
    ) -> Result<Client, ClientError> {
        match Client::attach(instance) {
            Err(ClientError::NotRunning { .. }) => {
                spawn_supervisor(instance, config, Duration::from_secs(30))?;
                Client::attach(instance)
            }
            other => other,
        }
    }

    /// The instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The config file the running Supervisor loaded (and reloads), as it recorded it.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// The Supervisor's pid.
    pub fn supervisor_pid(&self) -> u32 {
        self.supervisor_pid
    }

    /// The region's generation (how many Supervisors have owned it).
    pub fn generation(&self) -> u64 {
        self.shared.header().generation.load(Ordering::Relaxed)
    }

    /// The Supervisor's state as published.
    pub fn supervisor_state(&self) -> Option<SupervisorState> {
        self.shared.state()
    }

    /// The mapped region (for benchmarks and diagnostics).
    #[doc(hidden)]
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// A snapshot of every node. Reads shared memory only, unless a record fails its check:
    /// then the Supervisor is asked to rewrite it from its memory and the table is read again
    /// until it verifies, for at most [`REPAIR_WAIT`] (not again for a while if that wait went
    /// unanswered); a record still bad after that is a [`NodeStatus::damaged_row`]. Records
    /// are `verified` only while the Supervisor serves (its region says `ready` or `shutting
    /// down`): during a takeover, or an upgrade that has not come back, every row is the last
    /// state recorded, unverified, its pid checked against `/proc`.
    pub fn status(&self) -> Vec<NodeStatus> {
        let mut out = read_status(&self.shared);
        if out.iter().any(|n| n.damaged) {
            out = self.await_repair(out);
        }
        if !self.serving() {
            out.iter_mut().for_each(NodeStatus::unverify);
        }
        out
    }

    /// Whether the Supervisor serves, as its region says (`ready` or `shutting down`): only
    /// then does it stand behind its records. One atomic load.
    pub fn serving(&self) -> bool {
        matches!(
            self.shared.state(),
            Some(SupervisorState::Ready | SupervisorState::ShuttingDown)
        )
    }

    /// Whether the Supervisor serves now: its region says so (see [`Client::serving`]) and its
    /// doorbell FIFO has a reader (opened afresh: an `open` and a `close`). `Err` says what
    /// shows it does not.
    pub fn check_serving(&self) -> Result<(), String> {
        if !self.serving() {
            let what = match self.shared.state() {
                Some(SupervisorState::Starting) => {
                    "its region says it is starting (taking over, or coming back from an upgrade)"
                        .to_owned()
                }
                Some(SupervisorState::Exited) => "its region says it has exited".to_owned(),
                _ => format!(
                    "its region's state word is {}",
                    self.shared.header().state.load(Ordering::Relaxed)
                ),
            };
            return Err(what);
        }
        match fifo::open_writer(&self.instance.bell_path()) {
            Err(e) if e.os_error() == Some(libc::ENXIO) => Err(
                "its doorbell FIFO has no reader (its program image no longer runs the Supervisor's loop)".into(),
            ),
            _ => Ok(()),
        }
    }

    /// Waits at most `timeout` until the Supervisor serves (see [`Client::serving`]): a
    /// takeover or an upgrade's new image sets `ready` when it is done. Returns whether it does.
    pub fn wait_serving(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let word = &self.shared.header().state;
        loop {
            if self.serving() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.supervisor_alive() || self.shared.damaged() {
                return self.serving();
            }
            let seen = word.load(Ordering::Acquire);
            let _ = crate::sys::futex::wait(word, seen, Some(left.min(Duration::from_millis(100))));
        }
    }

    /// Asks the Supervisor to check its region (it rewrites node records that are not what it
    /// published); never blocks.
    fn ask_repair(&self) {
        if let Ok(bell) = self.bell() {
            let _ = fifo::ring_repair(bell);
        }
    }

    /// `table` has damaged rows: asks for the repair and reads again until every row verifies,
    /// the table changes under us, or [`REPAIR_WAIT`] passes.
    fn await_repair(&self, mut table: Vec<NodeStatus>) -> Vec<NodeStatus> {
        self.ask_repair();
        let recent = self
            .repair_unanswered
            .get()
            .is_some_and(|t| t.elapsed() < REPAIR_WAIT * 5);
        if recent || !self.serving() {
            return table;
        }
        let start = Instant::now();
        let mut rung = start;
        let mut pause = Duration::from_micros(200);
        while start.elapsed() < REPAIR_WAIT {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
            table = read_status(&self.shared);
            if !table.iter().any(|n| n.damaged) {
                self.repair_unanswered.set(None);
                return table;
            }
            if self.shared.damaged() || !self.supervisor_alive() {
                break;
            }
            if rung.elapsed() >= REPAIR_RING {
                self.ask_repair();
                rung = Instant::now();
            }
        }
        self.repair_unanswered.set(Some(Instant::now()));
        table
    }

    /// The table indices of records that fail their check in `table`.
    fn damaged_indices(table: &[NodeStatus]) -> Vec<usize> {
        table
            .iter()
            .filter(|n| n.damaged)
            .map(|n| n.index)
            .collect()
    }

    /// The error for `name` not found in `table`: [`ClientError::TableDamaged`] if some
    /// records could not be read (it may be one of them), else [`ClientError::NoSuchNode`].
    pub fn not_found(&self, name: &str, table: &[NodeStatus]) -> ClientError {
        let bad = Self::damaged_indices(table);
        if bad.is_empty() {
            ClientError::NoSuchNode {
                name: name.to_owned(),
            }
        } else {
            ClientError::TableDamaged {
                name: name.to_owned(),
                pid: self.supervisor_pid,
                damaged: bad.len(),
                indices: bad,
                log: self.instance.log_path().display().to_string(),
            }
        }
    }

    /// The node table's epoch: it changes whenever a reload (or a takeover) renumbers nodes.
    pub fn config_epoch(&self) -> u32 {
        self.shared.header().config_epoch.load(Ordering::Acquire)
    }

    /// Fails with [`ClientError::Damaged`] if the region was truncated under us.
    pub fn check_damage(&self) -> Result<(), ClientError> {
        if self.shared.damaged() {
            return Err(ClientError::Damaged {
                path: self.shared.path().to_owned(),
            });
        }
        Ok(())
    }

    #[doc(hidden)]
    /// Raw records of every node into `out`, reusing its entries' name buffers: after the
    /// first call this allocates nothing (and, like every status read, makes no syscall).
    pub fn records_into(&self, out: &mut Vec<NodeRecord>) {
        let mut k = 0;
        for i in 0..self.shared.node_count() {
            // Only records that verify (raw: a damaged one is left out).
            let Ok(w) = self.shared.read_record(i) else {
                continue;
            };
            if k == out.len() {
                match NodeRecord::decode(&w) {
                    Some(r) => out.push(r),
                    None => continue,
                }
            } else if !NodeRecord::decode_into(&w, &mut out[k]) {
                continue;
            }
            k += 1;
        }
        out.truncate(k);
    }

    /// [`Client::status`] into `out`, reusing its allocations: what a program that reads status
    /// in a loop should call. After the first call it allocates nothing (while every record
    /// verifies). It does not wait for a repair: a record that fails its check is a
    /// [`NodeStatus::damaged_row`] and the Supervisor is asked to rewrite it.
    pub fn status_into(&self, out: &mut Vec<NodeStatus>) {
        let now = clock::monotonic_ns();
        let serving = self.serving();
        let mut damaged = false;
        out.truncate(self.shared.node_count());
        for i in 0..self.shared.node_count() {
            let words = self.shared.read_record(i).ok();
            let ok = match (words, out.get_mut(i)) {
                (Some(w), Some(slot)) => slot.fill(i, &w, now),
                (Some(w), None) => match NodeRecord::decode(&w).filter(|r| !r.name.is_empty()) {
                    Some(r) => {
                        out.push(NodeStatus::from_record(i, r, now));
                        true
                    }
                    None => false,
                },
                (None, _) => false,
            };
            if !ok {
                damaged = true;
                let row = NodeStatus::damaged_row(i);
                match out.get_mut(i) {
                    Some(slot) => *slot = row,
                    None => out.push(row),
                }
            } else if !serving {
                out[i].unverify();
            }
        }
        if damaged {
            self.ask_repair();
        }
    }

    /// The index of the node called `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.status()
            .into_iter()
            .find(|n| n.name == name)
            .map(|n| n.index)
    }

    fn bell(&self) -> Result<&File, ClientError> {
        if let Some(b) = self.bell.get() {
            return Ok(b);
        }
        let b = match fifo::open_writer(&self.instance.bell_path()) {
            Ok(b) => b,
            Err(e) if e.os_error() == Some(libc::ENXIO) => return Err(self.no_reader()),
            Err(e) => return Err(e.into()),
        };
        Ok(self.bell.get_or_init(|| b))
    }

    /// The doorbell has no reader: the Supervisor exited, or it lives but its program no
    /// longer reads it (never "exited" while the process lives).
    fn no_reader(&self) -> ClientError {
        if self.supervisor_alive() {
            ClientError::NotServing {
                instance: self.instance.name().to_owned(),
                pid: self.supervisor_pid,
                why: "its doorbell FIFO has no reader (its program image no longer runs the Supervisor's loop)".into(),
                log: self.instance.log_path().display().to_string(),
            }
        } else {
            ClientError::Gone {
                pid: self.supervisor_pid,
            }
        }
    }

    fn own_start(&self) -> u64 {
        *self.start.get_or_init(procstat::own_start_time)
    }

    fn ring_bell(&self) -> Result<(), ClientError> {
        let bell = self.bell()?;
        if self.shared.header().bell.swap(1, Ordering::SeqCst) == 0 {
            fifo::ring(bell).map_err(|e| {
                if e.raw_os_error() == Some(libc::EPIPE) {
                    self.no_reader()
                } else {
                    ClientError::Io {
                        what: "ringing the doorbell",
                        source: e,
                    }
                }
            })?;
        }
        Ok(())
    }

    #[doc(hidden)]
    /// Sends `op` for the nodes with table `indices` (as numbered now: see
    /// [`Client::config_epoch`]) and waits at most `timeout` for the reply. A refused command
    /// is [`ClientError::Rejected`]; prefer the calls by name ([`Client::start`] and so on),
    /// which survive a reload that renumbers the table.
    pub fn command(
        &self,
        op: Opcode,
        indices: &[usize],
        arg: u64,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let epoch = self.config_epoch();
        let req = Request::new(op, indices.iter().copied(), arg).at_epoch(epoch);
        self.expect_ok(op, self.send(&req, timeout)?)
    }

    fn expect_ok(&self, op: Opcode, reply: Reply) -> Result<Reply, ClientError> {
        match reply.status {
            ReplyStatus::Ok => Ok(reply),
            _ => Err(ClientError::Rejected {
                what: op.as_str(),
                message: reply.message,
            }),
        }
    }

    /// Sends `op` for the nodes called `names` and waits at most `timeout` for the reply. The
    /// names are resolved against the table and tagged with its epoch; if a reload renumbers
    /// the table before the Supervisor applies the command, it refuses it unapplied and the
    /// names are resolved again (a few times at most). An empty `names` means every node.
    pub fn command_by_name<S: AsRef<str>>(
        &self,
        op: Opcode,
        names: &[S],
        arg: u64,
        timeout: Duration,
    ) -> Result<Applied, ClientError> {
        let applied = |reply: Reply, nodes: Vec<String>| Applied {
            seq: reply.seq,
            nodes,
            message: reply.message,
        };
        if names.is_empty() {
            let nodes = self
                .status()
                .into_iter()
                .filter(|n| !n.damaged)
                .map(|n| n.name)
                .collect();
            let reply = self.expect_ok(op, self.send(&Request::all(op, arg), timeout)?)?;
            return Ok(applied(reply, nodes));
        }
        const TRIES: u32 = 8;
        for _ in 0..TRIES {
            // The epoch first: a table read after it is at least that new, and a command built
            // from a newer table is refused as stale rather than applied to the wrong nodes.
            let epoch = self.config_epoch();
            let table = self.status();
            self.check_damage()?;
            let mut idx = Vec::with_capacity(names.len());
            for n in names {
                let n = n.as_ref();
                // Only a record that verifies names a node (a damaged row's `#INDEX` is not a
                // name).
                match table.iter().find(|s| !s.damaged && s.name == n) {
                    Some(s) => idx.push(s.index),
                    None => return Err(self.not_found(n, &table)),
                }
            }
            let req = Request::new(op, idx, arg).at_epoch(epoch);
            let reply = self.send(&req, timeout)?;
            if reply.status != ReplyStatus::Stale {
                let nodes = names.iter().map(|n| n.as_ref().to_owned()).collect();
                return Ok(applied(self.expect_ok(op, reply)?, nodes));
            }
        }
        Err(ClientError::Stale {
            what: op.as_str(),
            tries: TRIES,
        })
    }

    /// Starts the named nodes (every node if `names` is empty); waits for the Supervisor's
    /// answer, not for the nodes to be up (watch [`Client::status`] or the events for that).
    pub fn start<S: AsRef<str>>(&self, names: &[S]) -> Result<Applied, ClientError> {
        self.command_by_name(Opcode::Start, names, 0, DEFAULT_TIMEOUT)
    }

    /// Stops the named nodes (every node if `names` is empty).
    pub fn stop<S: AsRef<str>>(&self, names: &[S]) -> Result<Applied, ClientError> {
        self.command_by_name(Opcode::Stop, names, 0, DEFAULT_TIMEOUT)
    }

    /// Restarts the named nodes (every node if `names` is empty).
    pub fn restart<S: AsRef<str>>(&self, names: &[S]) -> Result<Applied, ClientError> {
        self.command_by_name(Opcode::Restart, names, 0, DEFAULT_TIMEOUT)
    }

    /// Sends `signal` to the named nodes' processes (every node if `names` is empty).
    pub fn signal<S: AsRef<str>>(
        &self,
        names: &[S],
        signal: Signal,
    ) -> Result<Applied, ClientError> {
        self.command_by_name(Opcode::Signal, names, signal as i32 as u64, DEFAULT_TIMEOUT)
    }

    /// Follows events from now on (see [`Events`]); [`Client::events_since`] starts earlier.
    /// The reader is bound to this client's region: once [`Client::supervisor_alive`] is false
    /// (the Supervisor was replaced), attach again and follow the new one.
    pub fn events(&self) -> Events<'_> {
        self.events_since(self.event_head())
    }

    /// Follows events from sequence number `seq` on (the oldest still held if `seq` is older;
    /// the count of those lost is in the first event's `missed`).
    pub fn events_since(&self, seq: u64) -> Events<'_> {
        Events {
            client: self,
            cursor: seq,
            names: self.names_now(),
        }
    }

    /// The table's node names by index, with the table epoch they belong to (read before and
    /// after, so they match): what labels events (see [`NodeEvent::node`]).
    pub fn names_now(&self) -> (u32, Vec<String>) {
        loop {
            let epoch = self.config_epoch();
            let mut names = Vec::new();
            for n in read_status(&self.shared).into_iter().filter(|n| !n.damaged) {
                if names.len() <= n.index {
                    names.resize(n.index + 1, String::new());
                }
                names[n.index] = n.name;
            }
            if self.config_epoch() == epoch {
                return (epoch, names);
            }
        }
    }

    /// One round trip through the mailbox (a liveness check; it leaves no event). Returns how
    /// long it took.
    pub fn ping(&self, timeout: Duration) -> Result<Duration, ClientError> {
        let t = Instant::now();
        self.expect_ok(
            Opcode::Ping,
            self.send(&Request::new(Opcode::Ping, [], 0), timeout)?,
        )?;
        Ok(t.elapsed())
    }

    /// Asks the Supervisor to re-read its config file and apply the difference; returns its
    /// summary ("added ... changed ... removed ..."). A config that does not load changes
    /// nothing and is [`ClientError::Rejected`].
    pub fn reload(&self, timeout: Duration) -> Result<String, ClientError> {
        let r = self.send(&Request::new(Opcode::Reload, [], 0), timeout)?;
        Ok(self.expect_ok(Opcode::Reload, r)?.message)
    }

    /// Asks the Supervisor to stop every node and exit (see
    /// [`Client::wait_supervisor_exit`]).
    pub fn shutdown(&self, timeout: Duration) -> Result<(), ClientError> {
        let r = self.send(&Request::new(Opcode::Shutdown, [], 0), timeout)?;
        self.expect_ok(Opcode::Shutdown, r).map(|_| ())
    }

    /// Asks the Supervisor to re-execute its binary in place (same pid, same nodes); returns
    /// what it said (`checking PATH, then re-executing it`). The binary is probed first: the
    /// generation goes up once the new program serves ([`Client::serving`] again), or an
    /// `upgrade-failed` event says why it was not executed (a binary that hangs, crashes,
    /// exits non-zero or is not a broctld it can hand over to) and the old program runs on.
    pub fn upgrade_supervisor(&self, timeout: Duration) -> Result<String, ClientError> {
        let r = self.send(&Request::new(Opcode::Upgrade, [], 0), timeout)?;
        Ok(self.expect_ok(Opcode::Upgrade, r)?.message)
    }

    /// The status of the node called `name` ([`ClientError::TableDamaged`] if it is not among
    /// the records that verify and some do not).
    pub fn node(&self, name: &str) -> Result<NodeStatus, ClientError> {
        let table = self.status();
        match table.iter().position(|n| !n.damaged && n.name == name) {
            Some(i) => Ok(table[i].clone()),
            None => Err(self.not_found(name, &table)),
        }
    }

    #[doc(hidden)]
    /// The name of the node an event is about, if the table has not been renumbered since it
    /// was written (`None` for events about no node, or from an older table).
    pub fn event_node_name(&self, ev: &Event) -> Option<String> {
        if ev.node == crate::protocol::event::NO_NODE || ev.epoch != self.config_epoch() {
            return None;
        }
        if ev.node as usize >= self.shared.node_count() {
            return None;
        }
        checked_record(&self.shared, ev.node as usize).map(|r| r.name)
    }

    /// Sends a raw request and returns whatever reply comes back.
    #[doc(hidden)]
    pub fn send(&self, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
        self.check_damage()?;
        let what = Opcode::from_u32(req.opcode).map_or("a command", Opcode::as_str);
        let deadline = Instant::now() + timeout;
        let slots = self.shared.slots();
        let idx = loop {
            if let Some(i) = mailbox::claim(slots, self.pid, self.own_start()) {
                break i;
            }
            // Full: ring so the Supervisor reclaims slots of dead Mains, then retry.
            self.ring_bell()?;
            if Instant::now() >= deadline {
                return Err(ClientError::Busy(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let slot = &slots[idx];
        let seq = self
            .shared
            .header()
            .next_cmd_seq
            .fetch_add(1, Ordering::Relaxed);
        if mailbox::submit(slot, self.pid, seq, req).is_err() {
            self.check_damage()?;
            return Err(ClientError::Gone {
                pid: self.supervisor_pid,
            });
        }
        if let Err(e) = self.ring_bell() {
            if mailbox::withdraw(slot, self.pid) {
                return Err(e);
            }
            // Taken meanwhile: it is being applied; wait for the reply below.
        }
        // Wait; if the command is still not taken after a while, ring again unconditionally: a
        // Main killed between raising the bell flag and writing its byte leaves the flag up with
        // nothing in the FIFO, and coalescing would then never ring again.
        let mut patience = Duration::from_millis(50);
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match mailbox::wait_done(slot, self.pid, left.min(patience)) {
                Err(WaitError::TimedOut) if !left.is_zero() && left > patience => {
                    let v = slot.state.load(Ordering::Acquire);
                    if v == mailbox::SlotState::Submitted.word(self.pid) {
                        self.shared.header().bell.store(1, Ordering::SeqCst);
                        if let Err(source) = fifo::ring(self.bell()?) {
                            // Not taken: withdrawn, so never applied.
                            let e = if source.raw_os_error() == Some(libc::EPIPE) {
                                self.no_reader()
                            } else {
                                ClientError::Io {
                                    what: "ringing the doorbell",
                                    source,
                                }
                            };
                            if mailbox::withdraw(slot, self.pid) {
                                return Err(e);
                            }
                        }
                    }
                    patience = (patience * 2).min(Duration::from_secs(1));
                }
                other => break other,
            }
        };
        let result = match result {
            // Withdraw it if the Supervisor has not taken it: then it is never applied. If it
            // was taken, it may be applied: give the reply a little longer to come.
            Err(WaitError::TimedOut) if !mailbox::withdraw(slot, self.pid) => {
                match mailbox::wait_done(slot, self.pid, timeout.min(Duration::from_secs(2))) {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Some("taken and may have been applied")),
                }
            }
            Err(WaitError::TimedOut) => Err(Some("withdrawn, not applied")),
            Ok(()) => Ok(()),
            Err(WaitError::Lost) => Err(None),
        };
        self.check_damage()?;
        match result {
            Ok(()) => mailbox::take_reply(slot, self.pid).ok_or(ClientError::Gone {
                pid: self.supervisor_pid,
            }),
            Err(Some(applied)) => Err(ClientError::Timeout {
                what,
                seq,
                pid: self.supervisor_pid,
                timeout,
                applied,
                log: self.instance.log_path().display().to_string(),
            }),
            Err(None) => Err(ClientError::Gone {
                pid: self.supervisor_pid,
            }),
        }
    }

    /// The next event number the Supervisor will write.
    pub fn event_head(&self) -> u64 {
        self.shared.ring().head()
    }

    #[doc(hidden)]
    /// Reads the event at `*cursor` (advancing it): `Some((seq, event, missed))`, or `None` if
    /// there is nothing new. Events the ring overwrote before we read them count in `missed`.
    pub fn next_event(&self, cursor: &mut u64) -> Option<(u64, Event, u64)> {
        let ring = self.shared.ring();
        let mut missed_total = 0;
        loop {
            match ring.next(cursor) {
                Next::Empty => return None,
                Next::Event { seq, words, missed } => {
                    missed_total += missed;
                    match Event::decode(&words) {
                        Some(ev) => return Some((seq, ev, missed_total)),
                        None => missed_total += 1, // unknown kind: skip, count it
                    }
                }
            }
        }
    }

    /// The oldest event number still in the ring.
    pub fn oldest_event(&self) -> u64 {
        let ring = self.shared.ring();
        ring.head().saturating_sub(ring.capacity())
    }

    /// Sleeps until an event after `seen_head` appears, or `timeout` passes.
    pub fn wait_event(&self, seen_head: u64, timeout: Duration) {
        self.shared.ring().wait(seen_head, Some(timeout));
    }

    /// Whether the Supervisor process we attached to still lives.
    pub fn supervisor_alive(&self) -> bool {
        procstat::is_alive(self.supervisor_pid, self.supervisor_start)
    }

    /// Waits until the Supervisor process has exited; `Ok(true)` if it did within `timeout`.
    pub fn wait_supervisor_exit(&self, timeout: Duration) -> Result<bool, ClientError> {
        let fd = match pidfd::open(self.supervisor_pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(true),
            Err(source) => {
                return Err(ClientError::Io {
                    what: "pidfd_open(Supervisor)",
                    source,
                })
            }
        };
        if !self.supervisor_alive() {
            return Ok(true);
        }
        pidfd::wait_exit(&fd, timeout).map_err(|source| ClientError::Io {
            what: "waiting for the Supervisor to exit",
            source,
        })
    }
}
