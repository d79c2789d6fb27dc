//! The Supervisor process: one single-threaded `mio` loop that owns every node.
//!
//! It sleeps in `epoll_wait` until something happens: a signal (SIGCHLD, SIGTERM, SIGINT,
//! SIGHUP through a signalfd), a node's pidfd becoming readable, the doorbell FIFO, or the
//! nearest timer (a restart delay, a stop timeout, a readiness delay). With no timer pending it
//! sleeps without a timeout: an idle Supervisor makes no syscalls at all.

mod adopted_exits;
pub mod cgroups;
pub mod crash;
mod dispatch;
mod guardian_link;
mod heap;
mod hold;
mod identity;
mod lifecycle;
pub mod machine;
pub mod node;
pub mod notify;
pub mod output;
mod pid_file;
pub mod policy;
mod readiness;
mod ready_check;
mod ready_file;
pub mod reaper;
mod reload;
mod repair;
pub mod running;
mod source;
pub mod spawn;
mod takeover;
pub mod upgrade;
pub mod zeek_setup;

use crate::config::{Config, ConfigError};
use crate::guardian::report::Report;
use crate::guardian::{EXIT_ALREADY_RUNNING, EXIT_START_FAILED};
use crate::instance::{Instance, InstanceError};
use crate::log;
use crate::protocol::event::{Event, EventKind, NO_NODE};
use crate::protocol::layout::{Geometry, SupervisorState, MAX_NODES};
use crate::protocol::mailbox::{self, Opcode, ReplyStatus, Request, SlotState};
use crate::protocol::node::{Exit, Intent, NodeRecord, NodeState, NotifyPhase, BLOCKED_UNKNOWN};
use crate::protocol::{ProtocolError, Shared};
use crate::shm::RegionError;
use crate::sys::procscan;
use crate::sys::{clock, fifo, lockfile, pidfd, procstat};
use guardian_link::GuardianLink;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use node::Node;
use source::Source;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

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
    /// The Zeek cluster's folders or layout could not be set up (nothing was started).
    #[error("{0}; nothing was started")]
    ZeekSetup(#[from] zeek_setup::ZeekSetupError),
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
/// once commands are served, or `error: MESSAGE` if startup failed. Returns the exit code: 0
/// after a shutdown, [`EXIT_START_FAILED`] or [`EXIT_ALREADY_RUNNING`] if it did not start, 1
/// if the loop failed (the guardian tells these apart).
pub fn main(instance: Instance, config_path: PathBuf, notify_fd: Option<RawFd>) -> i32 {
    heap::fix_thresholds();
    crate::log::rotate_with(instance.log_path());
    // Block the loop's signals before anything else (no thread exists yet): signalfd only sees
    // signals that are blocked, and the mask is inherited by every thread created later.
    if let Err(e) = loop_signals().thread_set_mask() {
        log!("cannot block signals: {e}");
        return 1;
    }
    match spawn::raise_nofile_limit() {
        Ok((from, to)) if from != to => {
            log!("fd limit raised from {from} to {to} (nodes keep {from})")
        }
        Ok(_) => {}
        Err(e) => log!("cannot raise the fd limit: {e}"),
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
    // What we run never depends on the environment of the Main that started us.
    crate::guardian::ensure_path();
    let guardian = GuardianLink::from_env();
    let mut sup = match Supervisor::start(instance, &config_path, inherited_lock, guardian) {
        Ok(s) => s,
        Err(e) => {
            log!("supervisor not started: {e}");
            if let Some(n) = notify.as_mut() {
                let _ = writeln!(n, "error: {e}");
            }
            return match e {
                SupervisorError::AlreadyRunning { .. } => EXIT_ALREADY_RUNNING,
                _ => EXIT_START_FAILED,
            };
        }
    };
    // What starting allocated for a while (the config's text, each spawn's scratch) goes back.
    heap::trim();
    if let Some(mut n) = notify.take() {
        let _ = writeln!(n, "ready {}", std::process::id());
        // Kept: the guardian hears of upgrades on it (`upgrade::UpgradeState`).
        sup.keep_guardian_notify(n);
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
    /// The text of the config being read by a `reload`, saved as the running config if it is
    /// applied.
    loading: Option<String>,
    shared: Shared,
    poll: Poll,
    signals: SignalFd,
    bell: File,
    /// Every write to a pipe wakes our edge-triggered epoll (probed at start): the doorbell
    /// FIFO need not be emptied on every ring (see `Supervisor::answer_bell`).
    bell_lazy: bool,
    /// Rings answered since the FIFO was last emptied.
    bell_undrained: u32,
    lock: Option<lockfile::LockFile>,
    nodes: Vec<Node>,
    /// Every node's lifecycle (same indices as `nodes`): the one place it changes.
    machine: machine::Machine,
    /// Retired nodes the machine dropped, to leave the table once the loop settles.
    dropping: Vec<usize>,
    by_pid: HashMap<u32, usize>,
    slot_seen: Vec<u32>,
    /// Watches `ready_file`s (None if inotify is unavailable: logged at start).
    ready_files: Option<ready_file::ReadyFiles>,
    /// Our guardian's report pipe, while it lives.
    guardian: Option<GuardianLink>,
    /// Reports read before the takeover, by pid, until matched to a node.
    reported: HashMap<u32, Report>,
    /// Exits recorded from `/proc` (pid, start time) while the process was a zombie the
    /// guardian had not reported yet: its report, when it comes, is dropped.
    taken: HashSet<(u32, u64)>,
    /// Nodes that ended a zombie of the guardian whose status `/proc` does not show us: pid to
    /// (start time, until when its report is waited for, mono ns).
    awaiting: HashMap<u32, (u64, u64)>,
    /// The latest `exited` event of each pid that predecessors left in the ring (time, exit),
    /// read at the takeover: an exit one of them recorded is not recorded again.
    recorded_exits: HashMap<u32, (u64, Exit)>,
    /// The region's generation (kept here: a damaged region cannot be read back).
    generation: u64,
    /// A rebuild of the region failed; retried only when a Main asks.
    repair_failed: bool,
    /// The check of each node record as last published (damage is what differs from it).
    published: repair::Published,
    /// A running probe of an upgrade's binary, and the guardian's readiness pipe.
    upgrade: upgrade::UpgradeState,
    /// The instance's cgroup (None: the lock fd and `/proc` identity scan are the fallback).
    cgroups: Option<cgroups::Cgroups>,
    /// Output streams (node index, stream) that stopped at their budget: pumped again before
    /// the loop sleeps.
    output_pending: Vec<(usize, usize)>,
    /// A stream could not be written to its file: when to try every stream again (mono ns).
    output_retry: Option<u64>,
}

impl Supervisor {
    /// Takes the instance lock, loads the config (the running config if a predecessor left
    /// one: see [`running`]), creates (or takes over) the region, adopts surviving nodes and
    /// applies the exits the guardian reported, starts autostart nodes, and is then ready to
    /// [`run`](Self::run).
    fn start(
        instance: Instance,
        config_path: &Path,
        inherited_lock: Option<RawFd>,
        guardian: Option<GuardianLink>,
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
        let cgroups = match cgroups::Cgroups::open(&instance) {
            Ok(c) => {
                log!(
                    "cgroups: every node runs in its own group under {}",
                    c.dir().display()
                );
                Some(c)
            }
            Err(why) => {
                log!("cgroups: none ({why}); nodes are tracked by their lock and /proc identity, and processes that leave a node's process group and drop its identity cannot be tracked");
                None
            }
        };
        // A refused config leaves no lock file behind (removed while still held).
        let (config, config_text) = match heap::off_heap(|| choose_config(&instance, config_path))
            .and_then(|(c, t)| startable(c, cgroups.as_ref()).map(|c| (c, t)))
        {
            Ok(ct) => ct,
            Err(e) => {
                if let Some(c) = &cgroups {
                    c.remove_if_unused(&instance.dir());
                }
                lock.remove();
                return Err(e);
            }
        };
        if let Some(zeek) = &config.zeek {
            if let Err(e) = zeek_setup::apply(zeek) {
                lock.remove();
                return Err(e.into());
            }
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
                Source::Signals.token(),
                Interest::READABLE,
            )
            .map_err(io_err("epoll_ctl(signalfd)"))?;
        poll.registry()
            .register(
                &mut SourceFd(&bell.as_raw_fd()),
                Source::Bell.token(),
                Interest::READABLE,
            )
            .map_err(io_err("epoll_ctl(doorbell)"))?;

        let ready_files = match ready_file::ReadyFiles::new().and_then(|f| {
            poll.registry()
                .register(
                    &mut SourceFd(&f.raw_fd()),
                    Source::ReadyFiles.token(),
                    Interest::READABLE,
                )
                .map(|()| f)
        }) {
            Ok(f) => Some(f),
            Err(e) => {
                log!("inotify: {e}; nodes with a ready_file count as ready once started");
                None
            }
        };
        let name = instance.shm_name();
        let identity = instance.identity();
        let (shared, previous) = match Shared::create_owned(&name, Geometry::default(), &identity) {
            // An upgrade from a build that named its region otherwise (ABI 1): the nodes are in
            // the handoff, and the old region is ours to remove.
            Ok(s) if inherited_lock.is_some() => {
                let previous =
                    upgrade::read_handoff(&instance.dir().join("handoff")).unwrap_or_default();
                repair::retire_legacy_region(&instance);
                (s, previous)
            }
            Ok(s) => (s, HashMap::new()),
            Err(ProtocolError::Region(RegionError::Exists { .. })) => {
                // We hold the lock, so whoever made this region is dead (or is our own previous
                // program image). Validate before touching anything; refuse (and touch nothing)
                // if it is not ours.
                match Shared::open_owned(&name, &identity) {
                    Ok(s) => {
                        let previous = takeover::previous_records(&s);
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
                        (
                            Shared::create_owned(&name, Geometry::default(), &identity)?,
                            previous,
                        )
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let slots = shared.geometry().slots;
        let mut sup = Supervisor {
            // The path (an upgrade runs what is installed there now), even if the file we
            // run was replaced since.
            exe: crate::guardian::installed_exe().map_err(io_err("finding our own executable"))?,
            upgrade_requested: false,
            instance,
            config_path: config.path.clone(),
            config_dir: config.dir.clone(),
            shared,
            poll,
            signals,
            bell,
            bell_lazy: fifo::every_write_wakes(),
            bell_undrained: 0,
            lock: Some(lock),
            nodes: config.nodes.into_iter().map(Node::new).collect(),
            by_pid: HashMap::new(),
            machine: machine::Machine::new(Vec::new(), false),
            dropping: Vec::new(),
            slot_seen: vec![0; slots],
            ready_files,
            loading: None,
            guardian,
            reported: HashMap::new(),
            taken: HashSet::new(),
            awaiting: HashMap::new(),
            recorded_exits: HashMap::new(),
            generation: 0,
            repair_failed: false,
            published: Default::default(),
            upgrade: Default::default(),
            cgroups,
            output_pending: Vec::new(),
            output_retry: None,
        };
        // Nothing fails from here on: this config is the running one.
        sup.save_running_config(&config_text);
        sup.connect_guardian();
        sup.take_over(previous);
        // After the takeover: under a tight fd limit, the nodes' own watches (pidfds, locks)
        // come first. (A crash report written by the takeover itself may then miss the
        // node's last lines, which are still in its FIFO and go to its file right after.)
        sup.resume_outputs(0);
        // sd_notify nodes that survived: their socket (the path in their NOTIFY_SOCKET) is
        // bound again, so what they send from now on is read.
        for i in 0..sup.nodes.len() {
            // (Not one this Supervisor spawned itself: its socket is already bound.)
            if sup.nodes[i].spec.policy.notify
                && sup.main_pid(i).is_some()
                && sup.nodes[i].extras().notify.is_none()
            {
                sup.open_notify(i);
                if sup.state(i) == NodeState::Running {
                    sup.arm_watchdog(i);
                }
            }
        }
        sup.drop_unmatched_reports();
        sup.generation = sup.shared.header().generation.load(Ordering::Relaxed);
        // Children that ended while no loop listened (during an upgrade's exec).
        for (pid, exit) in reaper::reap_all() {
            sup.on_exit(pid, exit);
        }
        sup.settle();
        let _ = std::fs::remove_file(sup.instance.dir().join("handoff"));
        Ok(sup)
    }

    /// Runs the event loop until shutdown completes.
    pub fn run(&mut self) -> Result<(), SupervisorError> {
        let mut events = Events::with_capacity(256);
        loop {
            if self.machine.shutting_down() && self.machine.all_down() {
                return Ok(());
            }
            let timeout = if self.output_pending.is_empty() {
                self.next_deadline()
                    .map(|d| Duration::from_nanos(d.saturating_sub(clock::monotonic_ns())))
            } else {
                Some(Duration::ZERO)
            };
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
            let mut files = false;
            let mut cgroups_changed = Vec::new();
            let mut notified = Vec::new();
            let mut blockers = Vec::new();
            self.pump_pending_outputs();
            for ev in events.iter() {
                match Source::of(ev.token()) {
                    Some(Source::Signals) => self.drain_signals(&mut reap),
                    Some(Source::Bell) => bell = true,
                    Some(Source::ReadyFiles) => files = true,
                    Some(Source::Reports) => self.read_reports(),
                    Some(Source::Output(i, k)) if i < self.nodes.len() => self.pump_output(i, k),
                    Some(Source::Notify(i)) => notified.push(i),
                    Some(Source::Cgroup(i)) => cgroups_changed.push(i),
                    Some(Source::ReadyPipe(i)) => ready.push(i),
                    // (It may be a child of ours: reap too.)
                    Some(Source::Blocker(i)) => {
                        blockers.push(i);
                        reap = true;
                    }
                    Some(Source::Pidfd(i)) => match self.nodes.get(i) {
                        Some(n) if n.adopted => adopted_exits.push(i),
                        _ => reap = true,
                    },
                    // A stream of a node a reload just dropped; or no source of ours.
                    Some(Source::Output(..)) | None => {}
                }
            }
            for i in ready {
                self.check_ready(i);
            }
            for i in notified {
                if i < self.nodes.len() {
                    self.read_notify(i);
                }
            }
            for &i in &cgroups_changed {
                if i < self.nodes.len() {
                    self.cgroup_changed(i);
                }
            }
            if files {
                self.ready_files_changed();
            }
            // Nodes whose process ended: once at rest, their streams close.
            let mut ended: Vec<usize> = cgroups_changed.clone();
            if reap {
                for (pid, exit) in reaper::reap_all() {
                    ended.extend(self.by_pid.get(&pid).copied());
                    self.on_exit(pid, exit);
                }
            }
            ended.extend(adopted_exits.iter().copied());
            for i in adopted_exits {
                // A readable pidfd means the process has exited (it may still be a zombie of
                // whoever inherited it, which we cannot reap); the event may also be stale.
                let n = &self.nodes[i];
                let exited = n
                    .pidfd
                    .as_ref()
                    .is_some_and(|fd| pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(false));
                if let (true, true, Some(pid)) = (n.adopted, exited, self.main_pid(i)) {
                    self.adopted_node_ended(pid);
                }
            }
            if bell {
                self.answer_bell();
            }
            for i in blockers {
                self.blocker_ended(i);
            }
            self.fire_timers();
            self.retry_outputs();
            self.settle();
            for i in ended {
                self.rest_outputs(i);
            }
            self.check_damage();
            // Last, with everything reaped this turn handled: an upgrade's probe and exec.
            self.upgrade_turn();
        }
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
        [
            self.machine.next_deadline(),
            self.output_retry,
            self.upgrade_probe_deadline(),
            self.next_report_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn publish(&self, i: usize) {
        let check = self.shared.write_record(i, &self.record(i).encode());
        self.published.note(i, check);
        self.sync_down_marker(i);
    }

    /// Publishes every record, records `supervisor-started` for `generation`, and marks the
    /// region `ready` (waking Mains that wait for it): the end of a takeover or a rebuild.
    fn announce_ready(&self, generation: u64) {
        self.publish_all();
        let mut ev = Event::now(EventKind::SupervisorStarted, NO_NODE, std::process::id());
        ev.a = generation;
        self.event(ev);
        let h = self.shared.header();
        h.state
            .store(SupervisorState::Ready as u32, Ordering::Release);
        crate::sys::futex::wake(&h.state, i32::MAX);
    }

    /// Appends an event, stamped with the table's epoch (so readers name its node right).
    fn event(&self, mut ev: Event) {
        ev.epoch = self.shared.header().config_epoch.load(Ordering::Relaxed);
        self.shared.ring().push(&ev.encode());
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
        let _ = std::fs::remove_file(self.instance.bell_path());
        // What the nodes wrote last goes to their files; then their FIFOs go.
        for i in 0..self.nodes.len() {
            self.close_outputs(i);
        }
        // Node locks: remove each one nobody holds (a node that outlived us keeps its own).
        let nodes_dir = self.instance.nodes_dir();
        if let Ok(rd) = std::fs::read_dir(&nodes_dir) {
            for e in rd.flatten() {
                if let Ok(l) = lockfile::LockFile::acquire(&e.path(), "") {
                    l.remove();
                }
            }
        }
        let _ = std::fs::remove_dir(&nodes_dir);
        if let Some(c) = &self.cgroups {
            c.remove_all(&self.instance.dir(), Duration::from_secs(5));
        }
        running::remove(&self.instance.dir());
        // The region goes last: until then it says `exited`, so a Supervisor killed in the
        // clean-up above is followed by one that finishes the shutdown (see `take_over`),
        // not by one that finds no region and starts every autostart node again.
        let _ = crate::shm::Region::unlink(self.shared.name());
        log!("supervisor exiting: every node stopped, runtime files removed");
        if let Some(lock) = self.lock.take() {
            lock.remove();
        }
    }
}

impl Supervisor {
    /// Reads and checks the config file for a `reload`, keeping its text to save as the
    /// running config if the reload is applied ([`Self::commit_loaded_config`]).
    fn load_config_file(&mut self) -> Result<Config, ConfigError> {
        let path = &self.config_path;
        let (config, text) = heap::off_heap(|| {
            let text = Config::read_text(path)?;
            Config::parse(&text, path).map(|c| (c, text))
        })?;
        self.loading = Some(text);
        Ok(config)
    }

    /// A `reload` was applied: its text becomes the running config.
    fn commit_loaded_config(&mut self) {
        if let Some(text) = self.loading.take() {
            self.save_running_config(&text);
        }
    }

    fn save_running_config(&self, text: &str) {
        let dir = self.instance.dir();
        if let Err(e) = running::save(&dir, &self.config_path, text) {
            if running::exists(&dir) {
                log!(
                    "cannot save the running config in {}: {e}; the previous running config is kept, so a replacement Supervisor (after a crash or an upgrade) would run that one, not this one, until a save succeeds",
                    dir.display()
                );
            } else {
                log!(
                    "cannot save the running config in {}: {e}; a replacement Supervisor would read {} instead",
                    dir.display(),
                    self.config_path.display()
                );
            }
        }
    }
}

/// The config to run: the running config a predecessor left (an upgrade, or a takeover after
/// a crash), else the file. The file is still read when a running config exists, to log that
/// it does not load or that it changed (`reload` applies it).
fn choose_config(
    instance: &Instance,
    config_path: &Path,
) -> Result<(Config, String), SupervisorError> {
    let from_file =
        Config::read_text(config_path).and_then(|t| Config::parse(&t, config_path).map(|c| (c, t)));
    let saved = match running::load(&instance.dir()) {
        Ok(r) => r,
        Err(e) => {
            log!("the running config is not used: {e}");
            None
        }
    };
    let Some((config, text)) = saved else {
        return Ok(from_file?);
    };
    match &from_file {
        Err(e) => log!(
            "the config file does not load ({e}); taking over with the running config the previous Supervisor loaded from {}; fix the file, then `broctld reload`",
            config.path.display()
        ),
        Ok((_, t)) if *t != text => log!(
            "{} changed since it was last loaded; taking over with the running config (`broctld reload` applies the file)",
            config_path.display()
        ),
        Ok(_) => {}
    }
    Ok((config, text))
}

/// Refuses a config that cannot be started: a node that cannot start at all, or more nodes
/// than the table holds.
fn startable(
    config: Config,
    cgroups: Option<&cgroups::Cgroups>,
) -> Result<Config, SupervisorError> {
    preflight(&config, cgroups)?;
    if config.nodes.len() > MAX_NODES {
        return Err(SupervisorError::TooManyNodes {
            count: config.nodes.len(),
            max: MAX_NODES,
        });
    }
    Ok(config)
}

/// Refuses a config with a node that cannot be started at all, naming its line: its program
/// or folder, or a key this host cannot enforce (`memory_max` without a cgroup v2 memory
/// controller).
fn preflight(config: &Config, cgroups: Option<&cgroups::Cgroups>) -> Result<(), SupervisorError> {
    for spec in &config.nodes {
        let memory = match (spec.policy.memory_max, cgroups) {
            (None, _) => None,
            (Some(_), None) => Some("it needs a writable cgroup v2 hierarchy, and this Supervisor has none (see supervisor.log)".to_owned()),
            (Some(_), Some(c)) => c.memory_refusal(),
        };
        let checked = match memory {
            Some(why) => Err(spawn::SpawnError::Unenforceable {
                node: spec.name.clone(),
                key: "memory_max",
                why,
            }),
            None => spawn::preflight(spec, &config.dir),
        };
        checked.map_err(|source| SupervisorError::Preflight {
            path: config.path.clone(),
            line: spec.line,
            source,
        })?;
    }
    Ok(())
}
