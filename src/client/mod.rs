//! The client: what a Main (the `broctld` CLI, or any program embedding broctld) uses to talk to
//! a running Supervisor.
//!
//! ```no_run
//! use broctld::client::Client;
//! use broctld::instance::Instance;
//! use broctld::protocol::mailbox::Opcode;
//! use std::time::Duration;
//!
//! let instance = Instance::new("default", &Instance::default_runtime_dir())?;
//! let client = Client::attach(&instance)?;
//! for node in client.status() {
//!     println!("{} {} {:?}", node.name, node.state.as_str(), node.pid);
//! }
//! let worker = client.node_index("worker-1").expect("configured");
//! client.command(Opcode::Restart, &[worker], 0, Duration::from_secs(5))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Reading status touches only shared memory (no syscall). A command claims a mailbox slot,
//! rings the doorbell if it is idle, and sleeps on the slot's futex until the reply is there.

mod spawn;

pub use spawn::spawn_supervisor;

use crate::config::NodeType;
use crate::instance::{Instance, InstanceError};
use crate::protocol::event::Event;
use crate::protocol::layout::SupervisorState;
use crate::protocol::mailbox::{self, Opcode, Reply, ReplyStatus, Request, WaitError};
use crate::protocol::node::{decode_name_into, Exit, NodeRecord, NodeState, RecordFields};
use crate::protocol::{ProtocolError, Shared};
use crate::shm::ring::Next;
use crate::shm::RegionError;
use crate::sys::checked::CheckError;
use crate::sys::lockfile::{LockFile, Probe};
use crate::sys::{clock, fifo, pidfd, procstat};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
}

/// A node's status as a Main sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Index in the node table (what commands address).
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
    /// In `backoff`: a process of this node that is not the Supervisor's blocks its start
    /// ([`crate::protocol::node::BLOCKED_UNKNOWN`] if it cannot be named).
    pub blocked_by: Option<u32>,
}

impl NodeStatus {
    /// Overwrites this entry from a record's words (untrusted), reusing the name buffer.
    /// Returns false for words out of range.
    fn fill(
        &mut self,
        index: usize,
        w: &[u64; crate::protocol::layout::NODE_WORDS],
        now_mono: u64,
    ) -> bool {
        let Some(f) = RecordFields::decode(w) else {
            return false;
        };
        if !decode_name_into(w, &mut self.name) {
            return false;
        }
        self.set(index, f, now_mono);
        true
    }

    fn from_record(index: usize, r: NodeRecord, now_mono: u64) -> NodeStatus {
        let f = r.fields();
        let mut n = NodeStatus {
            index,
            name: r.name,
            node_type: NodeType::Other,
            state: NodeState::Stopped,
            pid: None,
            uptime: None,
            restarts: 0,
            last_exit: None,
            started_wall_ms: 0,
            deadline_in: None,
            blocked_by: None,
        };
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
        self.blocked_by = f.blocked_by;
    }
}

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
    /// region, opens the doorbell. Fails with [`ClientError::NotRunning`] if none runs.
    pub fn attach(instance: &Instance) -> Result<Client, ClientError> {
        let not_running = || ClientError::NotRunning {
            instance: instance.name().to_owned(),
            dir: instance.runtime_dir().to_owned(),
        };
        // The runtime and instance dirs must be ours and private before anything in them is
        // trusted (a Main must not talk to a Supervisor someone planted there).
        instance.ensure_dirs()?;
        // A Supervisor that is starting holds the lock before its region is ready: wait a bit.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (config_path, holder) = match LockFile::probe(&instance.lock_path())? {
                Probe::Free => return Err(not_running()),
                Probe::Held { info, pid, start } => (
                    (!info.is_empty()).then(|| PathBuf::from(info)),
                    (pid, start),
                ),
            };
            let shared = match Shared::open(&instance.shm_name()) {
                Ok(s) => Some(s),
                Err(ProtocolError::Region(RegionError::Missing { .. })) => None,
                // A Supervisor that holds the lock may be creating the region right now: empty,
                // or its magic not yet stored. Wait for it (bounded) rather than refuse.
                Err(ProtocolError::Region(RegionError::Size { size: 0, .. }))
                | Err(ProtocolError::Magic { found: 0, .. })
                    if Instant::now() < deadline =>
                {
                    None
                }
                Err(e) => return Err(e.into()),
            };
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
                        return Ok(Client {
                            instance: instance.clone(),
                            shared,
                            bell: std::sync::OnceLock::new(),
                            pid: std::process::id(),
                            start: std::sync::OnceLock::new(),
                            supervisor_pid: sup_pid,
                            supervisor_start: sup_start,
                            config_path,
                        });
                    }
                    Some(SupervisorState::Exited) => return Err(not_running()),
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(not_running());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
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
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// A snapshot of every node. Reads shared memory only.
    pub fn status(&self) -> Vec<NodeStatus> {
        let now = clock::monotonic_ns();
        let cells = self.shared.node_cells();
        (0..self.shared.node_count())
            .filter_map(|i| {
                let words = cells[i].read()?;
                Some(NodeStatus::from_record(i, NodeRecord::decode(&words)?, now))
            })
            .collect()
    }

    /// Raw records of every node into `out`, reusing its entries' name buffers: after the
    /// first call this allocates nothing (and, like every status read, makes no syscall).
    pub fn records_into(&self, out: &mut Vec<NodeRecord>) {
        let cells = self.shared.node_cells();
        let mut k = 0;
        for cell in &cells[..self.shared.node_count()] {
            let Some(w) = cell.read() else { continue };
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
    /// in a loop should call. After the first call it allocates nothing.
    pub fn status_into(&self, out: &mut Vec<NodeStatus>) {
        let now = clock::monotonic_ns();
        let cells = self.shared.node_cells();
        let mut k = 0;
        for (i, cell) in cells[..self.shared.node_count()].iter().enumerate() {
            let Some(w) = cell.read() else { continue };
            if k == out.len() {
                let Some(r) = NodeRecord::decode(&w) else {
                    continue;
                };
                out.push(NodeStatus::from_record(i, r, now));
            } else if !out[k].fill(i, &w, now) {
                continue;
            }
            k += 1;
        }
        out.truncate(k);
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
            Err(e) if e.os_error() == Some(libc::ENXIO) => {
                return Err(ClientError::Gone {
                    pid: self.supervisor_pid,
                })
            }
            Err(e) => return Err(e.into()),
        };
        Ok(self.bell.get_or_init(|| b))
    }

    fn own_start(&self) -> u64 {
        *self.start.get_or_init(procstat::own_start_time)
    }

    fn ring_bell(&self) -> Result<(), ClientError> {
        let bell = self.bell()?;
        if self.shared.header().bell.swap(1, Ordering::SeqCst) == 0 {
            fifo::ring(bell).map_err(|e| {
                if e.raw_os_error() == Some(libc::EPIPE) {
                    ClientError::Gone {
                        pid: self.supervisor_pid,
                    }
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

    /// Sends `op` for the nodes with `indices` and waits at most `timeout` for the reply.
    /// A refused command is [`ClientError::Rejected`].
    pub fn command(
        &self,
        op: Opcode,
        indices: &[usize],
        arg: u64,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let reply = self.send(&Request::new(op, indices.iter().copied(), arg), timeout)?;
        match reply.status {
            ReplyStatus::Ok => Ok(reply),
            _ => Err(ClientError::Rejected {
                what: op.as_str(),
                message: reply.message,
            }),
        }
    }

    /// Sends a raw request and returns whatever reply comes back.
    pub fn send(&self, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
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
        mailbox::submit(slot, self.pid, seq, req);
        if let Err(e) = self.ring_bell() {
            mailbox::abandon(slot, self.pid);
            return Err(e);
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
                        fifo::ring(self.bell()?).map_err(|source| ClientError::Io {
                            what: "ringing the doorbell",
                            source,
                        })?;
                    }
                    patience = (patience * 2).min(Duration::from_secs(1));
                }
                other => break other,
            }
        };
        match result {
            Ok(()) => Ok(mailbox::take_reply(slot)),
            Err(WaitError::TimedOut) => {
                // Withdraw it if the Supervisor has not taken it: then it was never applied.
                let withdrawn = slot
                    .state
                    .compare_exchange(
                        mailbox::SlotState::Submitted.word(self.pid),
                        mailbox::SlotState::Free as u32,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok();
                Err(ClientError::Timeout {
                    what,
                    seq,
                    pid: self.supervisor_pid,
                    timeout,
                    applied: if withdrawn {
                        "withdrawn, not applied"
                    } else {
                        "taken and may have been applied"
                    },
                    log: self.instance.log_path().display().to_string(),
                })
            }
            Err(WaitError::Lost) => Err(ClientError::Gone {
                pid: self.supervisor_pid,
            }),
        }
    }

    /// The next event number the Supervisor will write.
    pub fn event_head(&self) -> u64 {
        self.shared.ring().head()
    }

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
