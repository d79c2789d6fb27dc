//! The Supervisor process: one single-threaded `mio` loop that owns every node.
//!
//! It sleeps in `epoll_wait` until something happens: a signal (SIGCHLD, SIGTERM, SIGINT,
//! SIGHUP through a signalfd), a node's pidfd becoming readable, the doorbell FIFO, or the
//! nearest timer (a restart delay, a stop timeout, a readiness delay). With no timer pending it
//! sleeps without a timeout: an idle Supervisor makes no syscalls at all.

pub mod crash;
pub mod node;
pub mod policy;
pub mod reaper;
pub mod spawn;
pub mod upgrade;

use crate::config::{Config, ConfigError};
use crate::instance::{Instance, InstanceError};
use crate::log;
use crate::protocol::event::{Event, EventKind, NO_NODE};
use crate::protocol::layout::{Geometry, SupervisorState, MAX_NODES};
use crate::protocol::mailbox::{self, Opcode, ReplyStatus, Request, SlotState};
use crate::protocol::node::{Exit, NodeRecord, NodeState};
use crate::protocol::{ProtocolError, Shared};
use crate::shm::RegionError;
use crate::sys::{clock, fifo, lockfile, pidfd, procstat};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use node::{Node, Queue};
use policy::Decision;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

const SIGNALS: Token = Token(0);
const BELL: Token = Token(1);
/// Node `i` has token `NODE_BASE + 2i` for its pidfd and `NODE_BASE + 2i + 1` for its
/// readiness pipe.
const NODE_BASE: usize = 16;

/// Why the Supervisor could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Another Supervisor holds the instance lock.
    #[error("instance '{instance}' already has a Supervisor (pid {pid}); talk to it with `broctld --instance {instance} status`, or stop it with `broctld --instance {instance} shutdown`")]
    AlreadyRunning {
        /// Instance name.
        instance: String,
        /// The holder.
        pid: u32,
    },
    /// Runtime dir problems.
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// Lock file problems.
    #[error("lock file: {0}")]
    Lock(#[from] lockfile::LockError),
    /// Config problems.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The region is not ours or not understood.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A node could not be started at all (no partial start: nothing was started).
    #[error("{path}:{line}: {source}; nothing was started")]
    Preflight {
        /// The config file.
        path: PathBuf,
        /// The node's line.
        line: usize,
        /// What is wrong.
        #[source]
        source: spawn::SpawnError,
    },
    /// More nodes than the table holds.
    #[error("config has {count} nodes; broctld supervises at most {max} per instance: split them over several instances")]
    TooManyNodes {
        /// Nodes in the config.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A syscall failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SupervisorError {
    move |source| SupervisorError::Io { what, source }
}

fn nix_err(what: &'static str) -> impl FnOnce(nix::Error) -> SupervisorError {
    move |e| SupervisorError::Io {
        what,
        source: e.into(),
    }
}

/// The signals the loop takes through its signalfd (blocked for normal delivery).
fn loop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Entry point of `broctld __supervisor`. `notify_fd`, if given, receives one line: `ready PID`
/// once commands are served, or `error: MESSAGE` if startup failed. Returns the exit code.
pub fn main(instance: Instance, config_path: PathBuf, notify_fd: Option<RawFd>) -> i32 {
    // Block the loop's signals before anything else (no thread exists yet): signalfd only sees
    // signals that are blocked, and the mask is inherited by every thread created later.
    if let Err(e) = loop_signals().thread_set_mask() {
        log!("cannot block signals: {e}");
        return 1;
    }
    // SAFETY: the fd was handed to us by the Main that spawned us, open and otherwise unused;
    // taking ownership closes it once we are done with it.
    let mut notify = notify_fd.map(|fd| unsafe { File::from_raw_fd(fd) });
    // Set by a predecessor that re-executed into us (`upgrade-supervisor`): the lock fd we hold.
    let inherited_lock = std::env::var(upgrade::LOCK_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok());
    // Single-threaded still: nothing can read the environment concurrently.
    std::env::remove_var(upgrade::LOCK_FD_ENV);
    let mut sup = match Supervisor::start(instance, &config_path, inherited_lock) {
        Ok(s) => s,
        Err(e) => {
            log!("supervisor not started: {e}");
            if let Some(n) = notify.as_mut() {
                let _ = writeln!(n, "error: {e}");
            }
            return 1;
        }
    };
    if let Some(mut n) = notify.take() {
        let _ = writeln!(n, "ready {}", std::process::id());
    }
    let code = match sup.run() {
        Ok(()) => 0,
        Err(e) => {
            log!("supervisor loop failed: {e}");
            1
        }
    };
    sup.finish();
    code
}

/// The Supervisor's state.
pub struct Supervisor {
    instance: Instance,
    exe: PathBuf,
    upgrade_requested: bool,
    config_path: PathBuf,
    config_dir: PathBuf,
    shared: Shared,
    poll: Poll,
    signals: SignalFd,
    bell: File,
    lock: Option<lockfile::LockFile>,
    nodes: Vec<Node>,
    by_pid: HashMap<u32, usize>,
    shutting_down: bool,
    slot_seen: Vec<u32>,
}

impl Supervisor {
    /// Takes the instance lock, loads the config, creates (or takes over) the region, adopts
    /// surviving nodes, starts autostart nodes, and is then ready to [`run`](Self::run).
    pub fn start(
        instance: Instance,
        config_path: &Path,
        inherited_lock: Option<RawFd>,
    ) -> Result<Supervisor, SupervisorError> {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
        crate::syscall!(prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
            .map_err(io_err("prctl(PR_SET_CHILD_SUBREAPER)"))?;
        instance.ensure_dirs()?;
        let config_abs = if config_path.is_absolute() {
            config_path.to_owned()
        } else {
            std::env::current_dir()
                .map_err(io_err("current dir"))?
                .join(config_path)
        };
        let info = config_abs.display().to_string();
        let lock = match inherited_lock {
            Some(fd) => lockfile::LockFile::inherit(fd, &instance.lock_path(), &info),
            None => lockfile::LockFile::acquire(&instance.lock_path(), &info),
        };
        let lock = match lock {
            Ok(l) => l,
            Err(lockfile::LockError::Held { pid, .. }) => {
                return Err(SupervisorError::AlreadyRunning {
                    instance: instance.name().to_owned(),
                    pid,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let config = Config::load(config_path)?;
        preflight(&config)?;
        if config.nodes.len() > MAX_NODES {
            return Err(SupervisorError::TooManyNodes {
                count: config.nodes.len(),
                max: MAX_NODES,
            });
        }
        // Everything that can fail goes before the region exists, so a failed start leaves no
        // region behind.
        let bell = fifo::create_reader(&instance.bell_path())
            .map_err(|e| SupervisorError::Instance(InstanceError::Dir(e)))?;
        let signals = SignalFd::with_flags(
            &loop_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(nix_err("signalfd"))?;
        let poll = Poll::new().map_err(io_err("epoll_create"))?;
        poll.registry()
            .register(
                &mut SourceFd(&signals.as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
            .map_err(io_err("epoll_ctl(signalfd)"))?;
        poll.registry()
            .register(&mut SourceFd(&bell.as_raw_fd()), BELL, Interest::READABLE)
            .map_err(io_err("epoll_ctl(doorbell)"))?;

        let name = instance.shm_name();
        let (shared, previous) = match Shared::create(&name, Geometry::default()) {
            Ok(s) => (s, HashMap::new()),
            Err(ProtocolError::Region(RegionError::Exists { .. })) => {
                // We hold the lock, so whoever made this region is dead (or is our own previous
                // program image). Validate before touching anything; refuse (and touch nothing)
                // if it is not ours.
                match Shared::open(&name) {
                    Ok(s) => {
                        let previous = previous_records(&s);
                        (s, previous)
                    }
                    Err(
                        e @ (ProtocolError::Version { .. }
                        | ProtocolError::Layout { .. }
                        | ProtocolError::Geometry { .. }),
                    ) if inherited_lock.is_some() => {
                        // An upgrade to a binary with another layout: never read the old
                        // region; rebuild from the layout-independent handoff.
                        let handoff = instance.dir().join("handoff");
                        let previous = upgrade::read_handoff(&handoff).map_err(|source| {
                            SupervisorError::Io {
                                what: "reading the upgrade handoff",
                                source,
                            }
                        })?;
                        log!("upgrade: old region not readable by this build ({e}); starting a new generation from the handoff");
                        let _ = crate::shm::Region::unlink(&name);
                        (Shared::create(&name, Geometry::default())?, previous)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let slots = shared.geometry().slots;
        let mut sup = Supervisor {
            exe: std::env::current_exe().map_err(io_err("finding our own executable"))?,
            upgrade_requested: false,
            instance,
            config_path: config.path.clone(),
            config_dir: config.dir.clone(),
            shared,
            poll,
            signals,
            bell,
            lock: Some(lock),
            nodes: config.nodes.into_iter().map(Node::new).collect(),
            by_pid: HashMap::new(),
            shutting_down: false,
            slot_seen: vec![0; slots],
        };
        sup.take_over(previous);
        // Children that ended while no loop listened (during an upgrade's exec).
        for (pid, exit) in reaper::reap_all() {
            sup.on_exit(pid, exit);
        }
        let _ = std::fs::remove_file(sup.instance.dir().join("handoff"));
        Ok(sup)
    }

    /// Publishes ownership, takes over what a predecessor recorded (`previous`: its nodes by
    /// name) — adopting survivors, keeping stopped and failed nodes down, carrying restart
    /// counts and last exits over — and starts the autostart nodes that should run.
    fn take_over(&mut self, mut previous: HashMap<String, NodeRecord>) {
        let h = self.shared.header();
        let generation = h.generation.load(Ordering::Relaxed) + 1;
        h.generation.store(generation, Ordering::Relaxed);
        h.owner_pid.store(std::process::id(), Ordering::Relaxed);
        h.owner_start
            .store(procstat::own_start_time(), Ordering::Relaxed);
        h.config_epoch.fetch_add(1, Ordering::Relaxed);
        h.bell.store(0, Ordering::SeqCst);
        // Commands a dead predecessor took but never answered: answer them now, honestly.
        for slot in self.shared.slots() {
            let v = slot.state.load(Ordering::Acquire);
            if let (pid, Some(SlotState::Taken)) = SlotState::split(v) {
                mailbox::complete(
                    slot,
                    pid,
                    ReplyStatus::Rejected,
                    "the Supervisor died while applying this command; check `broctld events`",
                );
            }
        }
        let mut held_down = vec![false; self.nodes.len()];
        for (i, down) in held_down.iter_mut().enumerate() {
            let Some(rec) = previous.remove(&self.nodes[i].spec.name) else {
                continue;
            };
            self.nodes[i].restarts = rec.restarts;
            self.nodes[i].last_exit = rec.last_exit;
            if rec.pid.is_some_and(|p| is_survivor(p, rec.pid_start)) {
                self.adopt(i, &rec);
                continue;
            }
            // No process: what the operator (or the give-up rule) decided stands. A node that
            // was being stopped ends stopped; one that died meanwhile is started below.
            match rec.state {
                NodeState::Stopped | NodeState::Stopping => {
                    self.nodes[i].state = NodeState::Stopped;
                    *down = true;
                }
                NodeState::Failed => {
                    self.nodes[i].state = NodeState::Failed;
                    *down = true;
                }
                _ => {}
            }
        }
        for (name, rec) in previous
            .into_iter()
            .filter(|(_, r)| r.pid.is_some_and(|p| is_survivor(p, r.pid_start)))
        {
            log!(
                "node {name} (pid {}) survived the previous Supervisor but is not in the config; it is left running unsupervised",
                rec.pid.unwrap_or(0)
            );
        }
        // Every record, and none left over from a predecessor with a longer config.
        self.publish_all();
        let mut ev = Event::now(EventKind::SupervisorStarted, NO_NODE, std::process::id());
        ev.a = generation;
        self.event(ev);
        let h = self.shared.header();
        h.state
            .store(SupervisorState::Ready as u32, Ordering::Release);
        crate::sys::futex::wake(&h.state, i32::MAX);
        log!(
            "supervisor ready: instance {} generation {generation}, {} nodes, region {}",
            self.instance.name(),
            self.nodes.len(),
            self.shared.path().display()
        );
        let autostart: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].spec.policy.autostart && self.nodes[i].pid.is_none() && !held_down[i]
            })
            .collect();
        self.queue_start(autostart);
        // Commands queued while no Supervisor listened.
        self.scan_mailbox();
    }

    fn adopt(&mut self, i: usize, rec: &NodeRecord) {
        let Some(pid) = rec.pid else { return };
        let fd = match pidfd::open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                log!("node {}: cannot watch surviving pid {pid}: {e}", rec.name);
                return;
            }
        };
        // The pidfd is race-free from here on; recheck identity now that we hold it.
        if !is_survivor(pid, rec.pid_start) {
            return;
        }
        let token = Token(NODE_BASE + 2 * i);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
        {
            log!("node {}: cannot watch surviving pid {pid}: {e}", rec.name);
            return;
        }
        let own_child = procstat::parent(pid) == Some(std::process::id());
        let n = &mut self.nodes[i];
        n.pid = Some(pid);
        n.pidfd = Some(fd);
        n.pid_start = rec.pid_start;
        // After an in-place upgrade the nodes are still our children: reap them as usual.
        n.adopted = !own_child;
        n.started_mono_ns = rec.started_mono_ns;
        n.started_wall_ms = rec.started_wall_ms;
        n.restarts = rec.restarts;
        n.last_exit = rec.last_exit;
        n.state = NodeState::Running;
        self.by_pid.insert(pid, i);
        log!("node {}: adopted surviving pid {pid}", rec.name);
        self.event(Event::now(EventKind::Adopted, i as u16, pid));
    }

    /// Runs the event loop until shutdown completes.
    pub fn run(&mut self) -> Result<(), SupervisorError> {
        let mut events = Events::with_capacity(256);
        loop {
            if self.shutting_down && self.nodes.iter().all(Node::is_down) {
                return Ok(());
            }
            let timeout = self
                .next_deadline()
                .map(|d| Duration::from_nanos(d.saturating_sub(clock::monotonic_ns())));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SupervisorError::Io {
                    what: "epoll_wait",
                    source: e,
                });
            }
            let mut reap = false;
            let mut bell = false;
            let mut adopted_exits = Vec::new();
            let mut ready = Vec::new();
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => self.drain_signals(&mut reap),
                    BELL => bell = true,
                    Token(t) if t >= NODE_BASE && (t - NODE_BASE) % 2 == 1 => {
                        ready.push((t - NODE_BASE) / 2);
                    }
                    Token(t) if t >= NODE_BASE => {
                        let i = (t - NODE_BASE) / 2;
                        match self.nodes.get(i) {
                            Some(n) if n.adopted => adopted_exits.push(i),
                            _ => reap = true,
                        }
                    }
                    _ => {}
                }
            }
            for i in ready {
                self.check_ready(i);
            }
            if reap {
                for (pid, exit) in reaper::reap_all() {
                    self.on_exit(pid, exit);
                }
            }
            for i in adopted_exits {
                // A readable pidfd means the process has exited (it may still be a zombie of
                // whoever inherited it, which we cannot reap); the event may also be stale.
                let n = &self.nodes[i];
                let exited = n
                    .pidfd
                    .as_ref()
                    .is_some_and(|fd| pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(false));
                if let (true, true, Some(pid)) = (n.adopted, exited, n.pid) {
                    self.on_exit(pid, Exit::Unknown);
                }
            }
            if bell {
                let _ = fifo::drain(&self.bell);
                self.shared.header().bell.store(0, Ordering::SeqCst);
                self.scan_mailbox();
                if std::mem::take(&mut self.upgrade_requested) {
                    self.reexec();
                }
            }
            self.fire_timers();
            self.advance_queues();
            if self.nodes.iter().any(|n| n.retiring && n.is_down()) {
                self.drop_retired();
            }
        }
    }

    /// Re-executes our binary in place; returns only if that failed (and then runs on as before).
    fn reexec(&mut self) {
        let handoff = self.instance.dir().join("handoff");
        let records: Vec<NodeRecord> = self.nodes.iter().map(Node::record).collect();
        let Some(lock_fd) = self.lock.as_ref().map(|l| l.file().as_raw_fd()) else {
            return;
        };
        let fail = |sup: &mut Supervisor, what: &str, e: io::Error| {
            log!("upgrade-supervisor failed ({what}: {e}); running on unchanged");
            let _ = crate::sys::fdflags::set_cloexec(lock_fd, true);
            let _ = std::fs::remove_file(sup.instance.dir().join("handoff"));
            let mut ev = Event::now(EventKind::UpgradeFailed, NO_NODE, std::process::id());
            ev.a = e.raw_os_error().unwrap_or(0) as u64;
            sup.event(ev);
        };
        if let Err(e) = upgrade::write_handoff(&handoff, &records) {
            return fail(self, "writing the handoff", e);
        }
        if let Err(e) = crate::sys::fdflags::set_cloexec(lock_fd, false) {
            return fail(self, "keeping the lock across exec", e);
        }
        let args = vec![
            "--instance".to_string(),
            self.instance.name().to_string(),
            "--runtime-dir".to_string(),
            self.instance.runtime_dir().display().to_string(),
            "--config".to_string(),
            self.config_path.display().to_string(),
            "__supervisor".to_string(),
        ];
        log!("upgrade-supervisor: re-executing {}", self.exe.display());
        let e = upgrade::exec(&self.exe, &args, lock_fd);
        fail(self, "execve", e);
    }

    fn drain_signals(&mut self, reap: &mut bool) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => match info.ssi_signo as i32 {
                    libc::SIGCHLD => *reap = true,
                    libc::SIGTERM | libc::SIGINT => {
                        log!(
                            "got signal {}: stopping every node, then exiting",
                            info.ssi_signo
                        );
                        self.begin_shutdown();
                    }
                    libc::SIGHUP => log!("got SIGHUP: ignored (the Supervisor has no terminal)"),
                    _ => {}
                },
                Ok(None) => return,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    log!("reading signalfd: {e}");
                    return;
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        let queued = self.nodes.iter().any(|n| n.queue.is_some());
        self.nodes
            .iter()
            .flat_map(|n| {
                let ready_by = if queued && n.state == NodeState::Starting && !n.ready_timed_out {
                    n.ready_by
                } else {
                    None
                };
                [n.deadline, ready_by]
            })
            .flatten()
            .min()
    }

    fn fire_timers(&mut self) {
        let now = clock::monotonic_ns();
        for i in 0..self.nodes.len() {
            if let Some(t) = self.nodes[i].ready_by {
                if t <= now
                    && self.nodes[i].state == NodeState::Starting
                    && !self.nodes[i].ready_timed_out
                {
                    self.nodes[i].ready_timed_out = true;
                    if self.nodes.iter().any(|n| n.queue.is_some()) {
                        log!(
                            "node {}: not ready after {} ms; the next stage starts anyway",
                            self.nodes[i].spec.name,
                            self.nodes[i].spec.policy.ready_timeout.as_millis()
                        );
                    }
                }
            }
        }
        for i in 0..self.nodes.len() {
            let Some(d) = self.nodes[i].deadline else {
                continue;
            };
            if d > now {
                continue;
            }
            self.nodes[i].deadline = None;
            match self.nodes[i].state {
                NodeState::Backoff => self.spawn(i, true),
                NodeState::Stopping => self.kill(i),
                NodeState::Starting => {
                    self.nodes[i].state = NodeState::Running;
                    self.publish(i);
                    let pid = self.nodes[i].pid.unwrap_or(0);
                    self.event(Event::now(EventKind::Ready, i as u16, pid));
                }
                _ => {}
            }
        }
    }

    fn publish(&self, i: usize) {
        self.shared.node_cells()[i].write(&self.nodes[i].record().encode());
    }

    fn event(&self, ev: Event) {
        self.shared.ring().push(&ev.encode());
    }

    /// Spawns node `i`; `again` counts it as a restart.
    fn spawn(&mut self, i: usize, again: bool) {
        let name = self.nodes[i].spec.name.clone();
        let instance = self.instance.name().to_owned();
        let env = [
            ("BROCTLD_NODE", name.as_str()),
            ("BROCTLD_INSTANCE", instance.as_str()),
        ];
        let now = clock::monotonic_ns();
        // The node's own lock: while a copy of it (or a child it left) holds it, no second copy
        // starts. The node inherits it as fd 3 (4 if its ready_fd is 3).
        let mut lock = match self.node_lock(i) {
            Ok(l) => l,
            Err((file_pid, file_start)) => {
                // The file may not name the holder (a Supervisor killed between the fork and
                // writing it): then look for the node itself.
                let (pid, start) = if is_survivor(file_pid, file_start) {
                    (file_pid, file_start)
                } else {
                    find_node_process(&name, self.instance.name(), &self.nodes[i].spec.command)
                        .unwrap_or((0, 0))
                };
                // Only a process that is this node of this instance (its environment says so)
                // is adopted: the lock file is writable through the node's fd, so its content
                // alone must not make us adopt (and later signal) an arbitrary process.
                if is_survivor(pid, start)
                    && !self.by_pid.contains_key(&pid)
                    && is_node_process(pid, &name, self.instance.name())
                {
                    let mut rec = self.nodes[i].record();
                    rec.pid = Some(pid);
                    rec.pid_start = start;
                    rec.started_mono_ns = now;
                    rec.started_wall_ms = clock::wall_ms();
                    log!("node {name}: a copy (pid {pid}) already holds its lock; adopting it instead of starting another");
                    self.nodes[i].start_after_exit = false;
                    self.adopt(i, &rec);
                    if self.nodes[i].pid == Some(pid) {
                        self.publish(i);
                        return;
                    }
                }
                if self.nodes[i].state != NodeState::Backoff {
                    log!("node {name}: its lock is still held by a leftover process; retrying every 50 ms");
                }
                let n = &mut self.nodes[i];
                n.state = NodeState::Backoff;
                n.deadline = Some(now + 50_000_000);
                self.publish(i);
                return;
            }
        };
        if again {
            self.nodes[i].restarts = self.nodes[i].restarts.saturating_add(1);
        }
        self.nodes[i].start_after_exit = false;
        self.nodes[i].killed = false;
        self.nodes[i].adopted = false;
        self.drop_ready_pipe(i);
        let ready_fd = self.nodes[i].spec.policy.ready_fd;
        let pipe = match ready_fd {
            Some(_) => match nix::unistd::pipe2(
                nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
            ) {
                Ok((r, w)) => Some((File::from(r), w)),
                Err(e) => {
                    log!("node {name}: cannot create its readiness pipe: {e}; it will count as ready at once");
                    None
                }
            },
            None => None,
        };
        let mut pass = Vec::new();
        if let (Some((_, w)), Some(target)) = (&pipe, ready_fd) {
            pass.push((w.as_raw_fd(), target));
        }
        let lock_target = if ready_fd == Some(3) { 4 } else { 3 };
        let lock_target_text = lock_target.to_string();
        let mut env = env.to_vec();
        if let Some(l) = &lock {
            pass.push((l.file().as_raw_fd(), lock_target));
            env.push(("BROCTLD_LOCK_FD", lock_target_text.as_str()));
        }
        let mut prepared = std::mem::take(&mut self.nodes[i].prepared);
        let result = spawn::spawn(
            &self.nodes[i].spec,
            &self.config_dir,
            &env,
            &pass,
            &mut prepared,
        );
        self.nodes[i].prepared = prepared;
        let ready_rd = pipe.map(|(r, _w)| r); // the write end closes here: only the child has it
        match result {
            Ok(pid) => {
                if let Some(r) = ready_rd {
                    match self.poll.registry().register(
                        &mut SourceFd(&r.as_raw_fd()),
                        Token(NODE_BASE + 2 * i + 1),
                        Interest::READABLE,
                    ) {
                        Ok(()) => self.nodes[i].ready_pipe = Some(r),
                        Err(e) => log!("node {name}: cannot watch its readiness pipe: {e}"),
                    }
                }
                let n = &mut self.nodes[i];
                n.pid = Some(pid);
                n.pid_start = procstat::start_time(pid).ok().flatten().unwrap_or(0);
                if let Some(l) = lock.as_mut() {
                    let _ = l.write_holder(pid, n.pid_start);
                }
                // Our copy of the lock fd closes here; the node's copy keeps the lock.
                drop(lock.take());
                // Started = exec succeeded (spawn returns after it), not when we began: under
                // load a spawn can wait, and delays are measured between real starts.
                let now = clock::monotonic_ns();
                n.started_mono_ns = now;
                n.started_wall_ms = clock::wall_ms();
                match pidfd::open(pid) {
                    Ok(fd) => {
                        let _ = self.poll.registry().register(
                            &mut SourceFd(&fd.as_raw_fd()),
                            Token(NODE_BASE + 2 * i),
                            Interest::READABLE,
                        );
                        n.pidfd = Some(fd);
                    }
                    Err(e) => log!("node {name}: pidfd_open({pid}): {e}; relying on SIGCHLD"),
                }
                let ready_after = n.spec.policy.ready_after;
                n.ready_by = Some(now + n.spec.policy.ready_timeout.as_nanos() as u64);
                n.ready_timed_out = false;
                if n.ready_pipe.is_some() {
                    n.state = NodeState::Starting;
                    n.deadline = None;
                } else if ready_after.is_zero() {
                    n.state = NodeState::Running;
                    n.deadline = None;
                } else {
                    n.state = NodeState::Starting;
                    n.deadline = Some(now + ready_after.as_nanos() as u64);
                }
                let running = n.state == NodeState::Running;
                let restarts = n.restarts;
                self.by_pid.insert(pid, i);
                self.publish(i);
                let mut ev = Event::now(EventKind::Spawned, i as u16, pid);
                ev.a = restarts as u64;
                self.event(ev);
                if running {
                    self.event(Event::now(EventKind::Ready, i as u16, pid));
                }
            }
            Err(e) => {
                log!("{e}");
                let exit = Exit::SpawnFailed(e.errno());
                self.nodes[i].started_mono_ns = now;
                self.nodes[i].last_exit = Some(exit);
                let mut ev = Event::now(EventKind::SpawnFailed, i as u16, 0);
                ev.exit = Some(exit);
                self.event(ev);
                self.after_end(i, exit, now);
            }
        }
    }

    /// Takes node `i`'s lock file, `Ok(None)` if it cannot be used (logged; the node starts
    /// without one), or the holder's pid and start time if someone holds it.
    fn node_lock(&self, i: usize) -> Result<Option<lockfile::LockFile>, (u32, u64)> {
        let dir = self.instance.dir().join("nodes");
        if let Err(e) = crate::sys::checked::private_dir(&dir) {
            log!("node locks: {e}");
            return Ok(None);
        }
        let path = dir.join(format!("{}.lock", self.nodes[i].spec.name));
        match lockfile::LockFile::acquire_quiet(&path) {
            Ok(l) => Ok(Some(l)),
            Err(lockfile::LockError::Held { .. }) => match lockfile::LockFile::probe(&path) {
                Ok(lockfile::Probe::Held { pid, start, .. }) => Err((pid, start)),
                // Released in between: try again next time round.
                _ => Err((0, 0)),
            },
            Err(e) => {
                log!(
                    "node {}: lock file: {e}; starting it without one",
                    self.nodes[i].spec.name
                );
                Ok(None)
            }
        }
    }

    fn drop_ready_pipe(&mut self, i: usize) {
        if let Some(r) = self.nodes[i].ready_pipe.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&r.as_raw_fd()));
        }
    }

    /// Reads a node's readiness pipe: a newline means ready (s6's notification-fd protocol).
    /// End of file without one means the node closed it without ever being ready.
    fn check_ready(&mut self, i: usize) {
        let Some(r) = self.nodes[i].ready_pipe.as_ref() else {
            return;
        };
        let mut buf = [0u8; 64];
        let mut ready = false;
        let mut closed = false;
        loop {
            match std::io::Read::read(&mut &*r, &mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => ready |= buf[..n].contains(&b'\n'),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EAGAIN: drained
            }
        }
        if ready || closed {
            self.drop_ready_pipe(i);
        }
        if closed && !ready {
            log!(
                "node {}: closed its ready_fd without writing a newline; it stays 'starting'",
                self.nodes[i].spec.name
            );
        }
        if ready && self.nodes[i].state == NodeState::Starting {
            self.nodes[i].state = NodeState::Running;
            self.publish(i);
            let pid = self.nodes[i].pid.unwrap_or(0);
            self.event(Event::now(EventKind::Ready, i as u16, pid));
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid {
            log!(
                "node {}: still running {} ms after its stop signal; sending SIGKILL",
                self.nodes[i].spec.name,
                self.nodes[i].spec.policy.stop_timeout.as_millis()
            );
            let _ = spawn::signal_group(pid, libc::SIGKILL);
            self.nodes[i].killed = true;
            self.event(Event::now(EventKind::Killed, i as u16, pid));
        }
    }

    fn on_exit(&mut self, pid: u32, exit: Exit) {
        let Some(i) = self.by_pid.remove(&pid) else {
            let mut ev = Event::now(EventKind::OrphanReaped, NO_NODE, pid);
            ev.exit = Some(exit);
            self.event(ev);
            return;
        };
        let now = clock::monotonic_ns();
        let n = &mut self.nodes[i];
        if n.pid != Some(pid) {
            return;
        }
        if let Some(fd) = n.pidfd.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        n.pid = None;
        n.pid_start = 0;
        n.adopted = false;
        n.last_exit = Some(exit);
        self.drop_ready_pipe(i);
        let n = &mut self.nodes[i];
        let was_stopping =
            n.state == NodeState::Stopping || matches!(n.queue, Some(Queue::Stop { .. }));
        if matches!(n.queue, Some(Queue::Stop { .. })) {
            n.queue = None;
        }
        // Leftovers of the node's process group (background jobs) do not outlive it: not after
        // a stop, and not before its replacement starts (they would hold its lock, and a
        // restarted node must not find stale children of its predecessor).
        if !matches!(exit, Exit::Unknown) || was_stopping {
            let _ = spawn::signal_group_only(pid, libc::SIGKILL);
        }
        let mut ev = Event::now(EventKind::Exited, i as u16, pid);
        ev.exit = Some(exit);
        self.event(ev);
        // The crash report is written after the replacement is spawned: restart latency first.
        let crash =
            (!was_stopping && exit.is_failure() && !matches!(exit, Exit::Unknown)).then(|| {
                let n = &self.nodes[i];
                (
                    n.spec.clone(),
                    now.saturating_sub(n.started_mono_ns) / 1_000_000,
                )
            });
        if was_stopping {
            if self.nodes[i].start_after_exit && !self.shutting_down {
                self.spawn(i, true);
            } else {
                self.nodes[i].state = NodeState::Stopped;
                self.nodes[i].deadline = None;
                self.publish(i);
                self.event(Event::now(EventKind::Stopped, i as u16, 0));
            }
            return;
        }
        self.after_end(i, exit, now);
        if let Some((spec, uptime_ms)) = crash {
            self.write_crash_report(&spec, pid, exit, uptime_ms);
        }
    }

    fn write_crash_report(
        &self,
        spec: &crate::config::NodeSpec,
        pid: u32,
        exit: Exit,
        uptime_ms: u64,
    ) {
        let instance = self.instance.name();
        let env = [
            ("BROCTLD_NODE", spec.name.as_str()),
            ("BROCTLD_INSTANCE", instance),
        ];
        let report = crash::Crash {
            spec,
            instance,
            pid,
            exit,
            uptime_ms,
            extra_env: &env,
        };
        match crash::write(&report) {
            Ok(p) => log!(
                "node {}: pid {pid} {}; crash report {}",
                spec.name,
                exit.describe(),
                p.display()
            ),
            Err(e) => log!(
                "node {}: pid {pid} {}; cannot write crash report: {e}",
                spec.name,
                exit.describe()
            ),
        }
    }

    /// Applies the restart policy to a node whose process ended on its own (or never started).
    fn after_end(&mut self, i: usize, exit: Exit, now: u64) {
        let n = &mut self.nodes[i];
        n.pid = None;
        if self.shutting_down || n.retiring {
            n.state = NodeState::Stopped;
            n.deadline = None;
            self.publish(i);
            return;
        }
        let started = n.started_mono_ns;
        match policy::decide(&n.spec.policy, &mut n.history, exit, started, now) {
            Decision::RestartAt(at) if at <= now => {
                self.publish(i);
                self.spawn(i, true);
            }
            Decision::RestartAt(at) => {
                n.state = NodeState::Backoff;
                n.deadline = Some(at);
                self.publish(i);
                let mut ev = Event::now(EventKind::Backoff, i as u16, 0);
                ev.a = (at - now) / 1_000_000;
                self.event(ev);
            }
            Decision::Stop => {
                n.state = NodeState::Stopped;
                n.deadline = None;
                self.publish(i);
                self.event(Event::now(EventKind::Stopped, i as u16, 0));
            }
            Decision::Fail { quick_deaths } => {
                log!(
                    "node {}: giving up ({} quick deaths); `broctld start {}` tries again",
                    n.spec.name,
                    quick_deaths,
                    n.spec.name
                );
                n.state = NodeState::Failed;
                n.deadline = None;
                self.publish(i);
                let mut ev = Event::now(EventKind::Failed, i as u16, 0);
                ev.a = quick_deaths as u64;
                self.event(ev);
            }
        }
    }

    /// Orders `nodes` for starting: every `start_after` dependency first, otherwise by role
    /// (loggers, managers, proxies, workers, others), then config order. The config loader has
    /// already refused cycles.
    fn start_order(&self, nodes: Vec<usize>) -> Vec<usize> {
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.spec.name.as_str(), i))
            .collect();
        let mut sorted = nodes;
        sorted.sort_by_key(|&i| (self.nodes[i].spec.node_type.start_rank(), i));
        let wanted: std::collections::HashSet<usize> = sorted.iter().copied().collect();
        let mut out = Vec::with_capacity(sorted.len());
        let mut placed = vec![false; self.nodes.len()];
        fn visit(
            i: usize,
            nodes: &[Node],
            index: &HashMap<&str, usize>,
            wanted: &std::collections::HashSet<usize>,
            placed: &mut [bool],
            out: &mut Vec<usize>,
            depth: usize,
        ) {
            if placed[i] || depth > nodes.len() {
                return;
            }
            placed[i] = true;
            for dep in &nodes[i].spec.start_after {
                if let Some(&d) = index.get(dep.as_str()) {
                    if wanted.contains(&d) {
                        visit(d, nodes, index, wanted, placed, out, depth + 1);
                    }
                }
            }
            out.push(i);
        }
        for &i in &sorted {
            visit(i, &self.nodes, &index, &wanted, &mut placed, &mut out, 0);
        }
        out
    }

    /// Re-reads the config file and applies only the difference: added nodes are started (if
    /// autostart), removed ones stopped and then dropped from the table, nodes whose definition
    /// changed are restarted with the new one; every other node keeps its process. A config that
    /// fails to load changes nothing.
    fn reload(&mut self) -> (ReplyStatus, String) {
        let config = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => return (ReplyStatus::Rejected, format!("nothing changed: {e}")),
        };
        if let Err(e) = preflight(&config) {
            return (ReplyStatus::Rejected, format!("nothing changed: {e}"));
        }
        let live = self.nodes.iter().filter(|n| !n.retiring).count();
        let retiring = self.nodes.len() - live;
        if config.nodes.len() + retiring > MAX_NODES {
            return (
                ReplyStatus::Rejected,
                format!(
                    "nothing changed: {} nodes is more than {MAX_NODES}",
                    config.nodes.len()
                ),
            );
        }
        self.config_dir = config.dir.clone();
        // Queues hold node indices, which a reload reorders: settle them now.
        for i in 0..self.nodes.len() {
            match self.nodes[i].queue.take() {
                Some(Queue::Start { was_failed, .. }) => {
                    if was_failed {
                        let n = &mut self.nodes[i];
                        n.history.reset(&n.spec.policy);
                    }
                    self.spawn(i, false);
                }
                Some(Queue::Stop { .. }) if self.nodes[i].pid.is_some() => self.stop_node(i),
                _ => {}
            }
        }
        let mut old: HashMap<String, Node> = HashMap::new();
        let mut kept_retiring = Vec::new();
        for n in self.nodes.drain(..) {
            if n.retiring {
                kept_retiring.push(n);
            } else {
                old.insert(n.spec.name.clone(), n);
            }
        }
        let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        let mut to_restart = Vec::new();
        let mut to_start = Vec::new();
        for spec in config.nodes {
            match old.remove(&spec.name) {
                Some(mut n) => {
                    let mut a = n.spec.clone();
                    a.line = spec.line;
                    if a != spec {
                        changed.push(spec.name.clone());
                        let running = n.pid.is_some();
                        n.spec = spec;
                        n.prepared = spawn::Prepared::default();
                        n.history = policy::History::new(&n.spec.policy);
                        if running {
                            to_restart.push(self.nodes.len());
                        }
                    }
                    self.nodes.push(n);
                }
                None => {
                    added.push(spec.name.clone());
                    if spec.policy.autostart {
                        to_start.push(self.nodes.len());
                    }
                    self.nodes.push(Node::new(spec));
                }
            }
        }
        let first_retiring = self.nodes.len();
        for (name, mut n) in old {
            removed.push(name);
            n.retiring = true;
            self.nodes.push(n);
        }
        self.nodes.extend(kept_retiring);
        self.reindex();
        for i in first_retiring..self.nodes.len() {
            if self.nodes[i].pid.is_some() {
                self.stop_node(i);
            } else {
                self.nodes[i].state = NodeState::Stopped;
                self.nodes[i].deadline = None;
            }
        }
        for i in to_restart {
            self.restart_node(i);
        }
        for i in self.start_order(to_start) {
            self.start_node(i);
        }
        self.drop_retired();
        let h = self.shared.header();
        h.config_epoch.fetch_add(1, Ordering::Release);
        let unchanged =
            self.nodes.iter().filter(|n| !n.retiring).count() - added.len() - changed.len();
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let msg = format!(
            "added {} changed {} removed {} unchanged {unchanged}",
            list(&added),
            list(&changed),
            list(&removed)
        );
        log!("reload of {}: {msg}", self.config_path.display());
        (ReplyStatus::Ok, msg)
    }

    /// After the node list changed order: rebuild the pid map, move every pidfd and readiness
    /// pipe to its node's new token, republish the whole table.
    fn reindex(&mut self) {
        self.by_pid.clear();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(pid) = n.pid {
                self.by_pid.insert(pid, i);
            }
            if let Some(fd) = &n.pidfd {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&fd.as_raw_fd()),
                    Token(NODE_BASE + 2 * i),
                    Interest::READABLE,
                );
            }
            if let Some(r) = &n.ready_pipe {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&r.as_raw_fd()),
                    Token(NODE_BASE + 2 * i + 1),
                    Interest::READABLE,
                );
            }
        }
        self.publish_all();
    }

    /// Publishes every record and the count; clears records past the end.
    fn publish_all(&self) {
        for i in 0..self.nodes.len() {
            self.publish(i);
        }
        let cells = self.shared.node_cells();
        let old = self.shared.node_count();
        // An all-zero record reads as a stopped node with no name.
        for cell in &cells[self.nodes.len()..old.max(self.nodes.len())] {
            cell.write(&[0; crate::protocol::layout::NODE_WORDS]);
        }
        self.shared
            .header()
            .node_count
            .store(self.nodes.len() as u32, Ordering::Release);
    }

    /// Drops retiring nodes that have stopped.
    fn drop_retired(&mut self) {
        let before = self.nodes.len();
        self.nodes.retain(|n| !(n.retiring && n.is_down()));
        if self.nodes.len() != before {
            self.reindex();
        }
    }

    /// Starts `nodes` in stages: a node spawns once every node it must follow (its
    /// `start_after`, and every selected node of an earlier role: loggers, managers, proxies,
    /// workers, others) is ready, has failed, or has been `starting` for its `ready_timeout_ms`.
    fn queue_start(&mut self, nodes: Vec<usize>) {
        let order = self.start_order(nodes);
        let mut queued = Vec::new();
        for &i in &order {
            let n = &mut self.nodes[i];
            if n.retiring {
                continue;
            }
            match n.state {
                NodeState::Stopped | NodeState::Failed => {}
                // Already coming back: its restart delay stands (a start must not bypass it).
                NodeState::Backoff => continue,
                NodeState::Running | NodeState::Starting => {
                    if matches!(n.queue, Some(Queue::Stop { .. })) {
                        n.queue = None; // a queued stop is cancelled by a start
                    }
                    continue;
                }
                NodeState::Stopping => {
                    n.start_after_exit = true;
                    continue;
                }
            }
            let was_failed = n.state == NodeState::Failed;
            n.deadline = None;
            n.state = NodeState::Starting;
            n.queue = Some(Queue::Start {
                after: Vec::new(),
                was_failed,
            });
            queued.push(i);
        }
        for &i in &queued {
            let rank = self.nodes[i].spec.node_type.start_rank();
            let after: Vec<usize> = queued
                .iter()
                .copied()
                .filter(|&j| {
                    j != i
                        && (self.nodes[j].spec.node_type.start_rank() < rank
                            || self.nodes[i]
                                .spec
                                .start_after
                                .contains(&self.nodes[j].spec.name))
                })
                .collect();
            if let Some(Queue::Start { after: a, .. }) = &mut self.nodes[i].queue {
                *a = after;
            }
            self.publish(i);
        }
        self.advance_queues();
    }

    /// Stops `nodes` in reverse stages: a node gets its stop signal once every selected node
    /// that would start after it has no process left.
    fn queue_stop(&mut self, nodes: Vec<usize>) {
        let mut stopping = Vec::new();
        for &i in &nodes {
            let n = &mut self.nodes[i];
            n.start_after_exit = false;
            if matches!(n.queue, Some(Queue::Start { .. })) || n.pid.is_none() {
                self.stop_node(i); // nothing to wait for: settle it now
                continue;
            }
            if n.state == NodeState::Stopping {
                continue;
            }
            n.queue = Some(Queue::Stop { after: Vec::new() });
            stopping.push(i);
        }
        for &i in &stopping {
            let rank = self.nodes[i].spec.node_type.start_rank();
            let name = self.nodes[i].spec.name.clone();
            let after: Vec<usize> = stopping
                .iter()
                .copied()
                .filter(|&j| {
                    j != i
                        && (self.nodes[j].spec.node_type.start_rank() > rank
                            || self.nodes[j].spec.start_after.contains(&name))
                })
                .collect();
            if let Some(Queue::Stop { after: a }) = &mut self.nodes[i].queue {
                *a = after;
            }
        }
        self.advance_queues();
    }

    /// Whether node `j` no longer holds up a queued start.
    fn start_settled(&self, j: usize) -> bool {
        let n = &self.nodes[j];
        match n.state {
            _ if matches!(n.queue, Some(Queue::Start { .. })) => false,
            NodeState::Starting => n.pid.is_some() && n.ready_timed_out,
            _ => true,
        }
    }

    /// Dequeues every queued start or stop whose wait is over.
    fn advance_queues(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.nodes.len() {
                match self.nodes[i].queue.clone() {
                    Some(Queue::Start { after, was_failed })
                        if after.iter().all(|&j| self.start_settled(j)) =>
                    {
                        let n = &mut self.nodes[i];
                        n.queue = None;
                        if was_failed {
                            n.history.reset(&n.spec.policy);
                        }
                        self.spawn(i, false);
                        progressed = true;
                    }
                    Some(Queue::Stop { after })
                        if after.iter().all(|&j| {
                            self.nodes[j].pid.is_none() && self.nodes[j].queue.is_none()
                        }) =>
                    {
                        self.nodes[i].queue = None;
                        if self.nodes[i].pid.is_some() {
                            self.stop_node(i);
                        }
                        progressed = true;
                    }
                    _ => {}
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.retiring {
            return;
        }
        match n.state {
            NodeState::Backoff => {}
            NodeState::Stopped | NodeState::Failed => {
                if n.state == NodeState::Failed {
                    n.history.reset(&n.spec.policy);
                }
                n.deadline = None;
                self.spawn(i, false);
            }
            NodeState::Stopping => n.start_after_exit = true,
            NodeState::Running | NodeState::Starting => {}
        }
    }

    fn stop_node(&mut self, i: usize) {
        let now = clock::monotonic_ns();
        let n = &mut self.nodes[i];
        n.start_after_exit = false;
        n.queue = None;
        if n.pid.is_none() && n.state == NodeState::Starting {
            // A queued start that never spawned.
            n.state = NodeState::Stopped;
            self.publish(i);
            self.event(Event::now(EventKind::Stopped, i as u16, 0));
            return;
        }
        match (n.state, n.pid) {
            (NodeState::Running | NodeState::Starting, Some(pid)) => {
                let sig = n.spec.policy.stop_signal;
                let timeout = n.spec.policy.stop_timeout;
                if let Err(e) = spawn::signal_group(pid, sig) {
                    log!(
                        "node {}: sending signal {sig} to pid {pid}: {e}",
                        n.spec.name
                    );
                }
                n.state = NodeState::Stopping;
                n.killed = false;
                n.deadline = Some(now + timeout.as_nanos() as u64);
                self.publish(i);
                let mut ev = Event::now(EventKind::Stopping, i as u16, pid);
                ev.a = sig as u64;
                ev.b = timeout.as_millis() as u64;
                self.event(ev);
            }
            (NodeState::Backoff | NodeState::Failed, _) => {
                n.state = NodeState::Stopped;
                n.deadline = None;
                self.publish(i);
                self.event(Event::now(EventKind::Stopped, i as u16, 0));
            }
            _ => {}
        }
    }

    fn restart_node(&mut self, i: usize) {
        match (self.nodes[i].state, self.nodes[i].pid) {
            (NodeState::Running | NodeState::Starting, Some(_)) => {
                self.stop_node(i);
                self.nodes[i].start_after_exit = true;
            }
            (NodeState::Stopping, _) => self.nodes[i].start_after_exit = true,
            _ => {
                let n = &mut self.nodes[i];
                if let Some(Queue::Start {
                    was_failed: true, ..
                }) = n.queue
                {
                    n.history.reset(&n.spec.policy);
                }
                n.queue = None;
                if n.state == NodeState::Starting {
                    n.state = NodeState::Stopped; // a queued start: start it now
                }
                self.start_node(i);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.shared
            .header()
            .state
            .store(SupervisorState::ShuttingDown as u32, Ordering::Release);
        crate::sys::futex::wake(&self.shared.header().state, i32::MAX);
        self.queue_stop((0..self.nodes.len()).collect());
    }

    fn scan_mailbox(&mut self) {
        for i in 0..self.shared.slots().len() {
            if let Some((pid, seq, req)) = mailbox::take(&self.shared.slots()[i]) {
                let (status, msg) = self.apply(&req);
                mailbox::complete(&self.shared.slots()[i], pid, status, &msg);
                let mut ev = Event::now(EventKind::CommandApplied, NO_NODE, pid);
                ev.a = seq;
                ev.b = req.opcode as u64 | (pid as u64) << 32;
                ev.exit = Some(Exit::Code(status as i32));
                self.event(ev);
                self.slot_seen[i] = 0;
                continue;
            }
            let slot = &self.shared.slots()[i];
            let v = slot.state.load(Ordering::Acquire);
            let (pid, st) = SlotState::split(v);
            let stale = match st {
                Some(SlotState::Claimed | SlotState::Done) => {
                    // Only check a slot seen in the same state on a previous ring: a live Main
                    // moves on within microseconds, and /proc reads are not free.
                    self.slot_seen[i] == v
                        && !procstat::is_alive(pid, slot.owner_start.load(Ordering::Relaxed))
                }
                Some(SlotState::Free) | Some(SlotState::Submitted) => false,
                Some(SlotState::Taken) | None => true, // garbage or a dead predecessor's
            };
            self.slot_seen[i] = v;
            if stale && mailbox::reclaim(slot, v) {
                let seq = slot.cmd_seq.load(Ordering::Relaxed);
                log!(
                    "mailbox slot {i}: owner pid {pid} is gone; slot reclaimed (command seq {seq})"
                );
                let mut ev = Event::now(EventKind::SlotReclaimed, NO_NODE, pid);
                ev.a = seq;
                ev.b = i as u64 | (pid as u64) << 32;
                self.event(ev);
                self.slot_seen[i] = 0;
            }
        }
    }

    fn apply(&mut self, req: &Request) -> (ReplyStatus, String) {
        let Some(op) = Opcode::from_u32(req.opcode) else {
            return (
                ReplyStatus::Unsupported,
                format!("unknown command code {}", req.opcode),
            );
        };
        if self.shutting_down && op != Opcode::Ping {
            return (
                ReplyStatus::Rejected,
                "the Supervisor is shutting down".into(),
            );
        }
        let nodes = req.nodes(self.nodes.len());
        match op {
            Opcode::Ping => (ReplyStatus::Ok, "pong".into()),
            Opcode::Start => {
                self.queue_start(nodes);
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Stop => {
                self.queue_stop(nodes);
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Restart => {
                let order = self.start_order(nodes);
                order.into_iter().for_each(|i| self.restart_node(i));
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Reload => self.reload(),
            Opcode::Upgrade => match upgrade::check_executable(&self.exe) {
                Ok(()) => {
                    self.upgrade_requested = true;
                    (
                        ReplyStatus::Ok,
                        format!("re-executing {}", self.exe.display()),
                    )
                }
                Err(e) => (
                    ReplyStatus::Rejected,
                    format!("cannot re-execute {}: {e}", self.exe.display()),
                ),
            },
            Opcode::Shutdown => {
                log!("shutdown requested");
                self.begin_shutdown();
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Signal => {
                let sig = req.arg as i32;
                if !(1..libc::SIGRTMAX()).contains(&sig) {
                    return (ReplyStatus::Rejected, format!("invalid signal {}", req.arg));
                }
                let mut missing = Vec::new();
                for i in nodes {
                    match self.nodes[i].pid {
                        Some(pid) => {
                            let _ = spawn::signal_pid(pid, sig);
                            let mut ev = Event::now(EventKind::Signaled, i as u16, pid);
                            ev.a = sig as u64;
                            self.event(ev);
                        }
                        None => missing.push(self.nodes[i].spec.name.clone()),
                    }
                }
                if missing.is_empty() {
                    (ReplyStatus::Ok, String::new())
                } else {
                    (
                        ReplyStatus::Rejected,
                        format!("not running: {}", missing.join(", ")),
                    )
                }
            }
        }
    }

    /// Final steps after the loop: tell the world, remove every runtime file, release the lock.
    fn finish(&mut self) {
        self.event(Event::now(
            EventKind::SupervisorExiting,
            NO_NODE,
            std::process::id(),
        ));
        let h = self.shared.header();
        h.state
            .store(SupervisorState::Exited as u32, Ordering::Release);
        crate::sys::futex::wake(&h.state, i32::MAX);
        self.shared.ring().wake_all();
        // Answer anything still queued so no Main waits for a timeout.
        for slot in self.shared.slots() {
            if let Some((pid, _, _)) = mailbox::take(slot) {
                mailbox::complete(
                    slot,
                    pid,
                    ReplyStatus::Rejected,
                    "the Supervisor has exited",
                );
            }
        }
        let _ = crate::shm::Region::unlink(self.shared.name());
        let _ = std::fs::remove_file(self.instance.bell_path());
        // Node locks: remove each one nobody holds (a node that outlived us keeps its own).
        let nodes_dir = self.instance.dir().join("nodes");
        if let Ok(rd) = std::fs::read_dir(&nodes_dir) {
            for e in rd.flatten() {
                if let Ok(l) = lockfile::LockFile::acquire(&e.path(), "") {
                    l.remove();
                }
            }
        }
        let _ = std::fs::remove_dir(&nodes_dir);
        log!("supervisor exiting: every node stopped, runtime files removed");
        if let Some(lock) = self.lock.take() {
            lock.remove();
        }
    }
}

/// Refuses a config with a node that cannot be started at all, naming its line.
fn preflight(config: &Config) -> Result<(), SupervisorError> {
    for spec in &config.nodes {
        spawn::preflight(spec, &config.dir).map_err(|source| SupervisorError::Preflight {
            path: config.path.clone(),
            line: spec.line,
            source,
        })?;
    }
    Ok(())
}

/// Every node a predecessor recorded in its region, by name (untrusted words: records that do
/// not decode are skipped).
fn previous_records(shared: &Shared) -> HashMap<String, NodeRecord> {
    shared.node_cells()[..shared.node_count()]
        .iter()
        .filter_map(|cell| cell.read().and_then(|w| NodeRecord::decode(&w)))
        .map(|rec| (rec.name.clone(), rec))
        .collect()
}

/// Whether process `pid` carries this node's identity in its environment (as every node
/// broctld starts does: `BROCTLD_NODE` and `BROCTLD_INSTANCE`).
fn is_node_process(pid: u32, node: &str, instance: &str) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want_node = format!("BROCTLD_NODE={node}");
    let want_instance = format!("BROCTLD_INSTANCE={instance}");
    let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
    vars.contains(&want_node.as_bytes()) && vars.contains(&want_instance.as_bytes())
}

/// Finds a running copy of a node: a process-group leader (every node leads its own group;
/// anything it forked does not) whose environment names this node and instance. Scans /proc:
/// used only when a node's lock is held by a process its lock file does not name.
fn find_node_process(node: &str, instance: &str, command: &[String]) -> Option<(u32, u64)> {
    let want: Vec<u8> = command.iter().flat_map(|a| a.bytes().chain([0])).collect();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // SAFETY: getpgid takes a pid and returns its group or -1.
        if unsafe { libc::getpgid(pid as libc::pid_t) } != pid as libc::pid_t {
            continue;
        }
        // Its command line must be the node's command (a child that escaped into its own
        // group with the node's environment is not the node).
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let same_args = argv
            .split(|b| *b == 0)
            .skip(1)
            .eq(want.split(|b| *b == 0).skip(1));
        if same_args && is_node_process(pid, node, instance) {
            if let Ok(Some(start)) = procstat::start_time(pid) {
                if is_survivor(pid, start) {
                    return Some((pid, start));
                }
            }
        }
    }
    None
}

/// Whether `pid` with this start time is a node to adopt: alive, or a zombie that is our own
/// child (it died during an upgrade's exec; reaping it gives its real exit status).
fn is_survivor(pid: u32, start: u64) -> bool {
    match procstat::stat(pid) {
        Ok(Some(st)) if st.start == start => {
            !matches!(st.state, 'Z' | 'X') || st.parent == std::process::id()
        }
        _ => false,
    }
}
