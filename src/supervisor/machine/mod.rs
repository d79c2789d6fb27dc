//! The node lifecycle as one pure state machine: inputs in, actions out, `now` passed in.
//!
//! Nothing here makes a system call, reads a clock or a file: the Supervisor's event loop
//! turns kernel events (a pidfd readable, a FIFO line, a cgroup emptied, a timer) into
//! [`Input`]s, feeds them to [`Machine::handle`], and carries out the [`Action`]s it gets back
//! (spawn, signal, publish a record, emit an event). Every lifecycle fact of every node lives
//! here, in one [`Phase`] per node whose variants carry their own data (a stop its SIGKILL
//! deadline and what follows it, a backoff its time and its blocker, a drain its exit and
//! what follows it), so the states a node can be in are the variants of one enum, and the
//! exhaustive check in `check.rs` visits them all.
//!
//! Cluster-wide ordering (start by role, stop in reverse, staged restarts, shutdown) is part
//! of the same machine: see `cluster.rs`. The table in docs/design.md is generated from this
//! code by [`table::render`] and a test holds the two together.

mod cluster;
mod node;
pub mod table;
pub mod takeover;

#[cfg(test)]
mod check;

use super::policy::History;
use crate::config::{Policy, ReadyTimeoutAction};
use crate::protocol::event::{Event, EventKind};
use crate::protocol::node::{Exit, Intent, NodeState};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Monotonic time in nanoseconds (CLOCK_MONOTONIC, system-wide, so it survives a Supervisor).
pub type Ns = u64;

/// A node's index in the table.
pub type Ix = usize;

/// A live process: its pid and its start time in clock ticks (together, its identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proc {
    /// Its pid.
    pub pid: u32,
    /// Its start time (field 22 of `/proc/PID/stat`).
    pub start: u64,
}

/// What follows a stop (or the drain of a stopped node's cgroup) once no process is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Then {
    /// It stays stopped.
    Down,
    /// It starts again (an operator's `restart`, a reload's, `ready_timeout_action =
    /// "restart"`): not a death, so not counted in `restarts`.
    Restart,
    /// It ends `failed` (`ready_timeout_action = "fail"`).
    Fail,
    /// A `reload` removed it: once down it leaves the table.
    Retire,
    /// Part of a staged restart of several nodes: once down it waits ([`Phase::Held`]) for
    /// the others of its batch, which then start in order.
    Hold,
}

/// How a spawned node becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Readiness {
    /// At once (no readiness configured).
    Now,
    /// After this long (`ready_after_ms`).
    After(Ns),
    /// When it says so (a readiness FIFO, a ready file, sd_notify, a `ready_check`, a forking
    /// daemon's PID file): an [`Input::Ready`] comes.
    Told,
    /// A forking daemon's starter: its exit with status 0 hands over to the process its PID
    /// file names ([`Input::MainPid`]); readiness then as the inner mode says.
    Starter(bool),
}

/// Where a node is in its life. Every variant carries what it needs; nothing about a node's
/// lifecycle lives outside this enum and [`Core`]'s counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Phase {
    /// No process, nothing pending.
    Stopped,
    /// Given up on (or failed to start as configured): no process until a `start`.
    Failed,
    /// A start waiting for the nodes it follows (an ordered start): no process yet.
    Queued {
        /// It was `failed`: its quick deaths are forgotten when it starts.
        was_failed: bool,
    },
    /// Between [`Action::Spawn`] and the shell's answer ([`Input::Spawned`] and the others):
    /// never published, never left standing once an input has been handled.
    Spawning {
        /// Counts as a restart (by policy) if it starts.
        again: bool,
        /// What blocked the previous attempt and the recheck delay then (a recheck that finds
        /// the same blocker waits longer and says nothing new).
        block: Option<(u32, u64)>,
    },
    /// Stopped as part of a staged restart, waiting for the rest of its batch to be down.
    Held,
    /// Waiting before the next start: a restart delay, or a process of the node that is not
    /// ours blocks it.
    Backoff {
        /// When the next attempt is due.
        at: Ns,
        /// The blocking process ([`crate::protocol::node::BLOCKED_UNKNOWN`] if unknown).
        blocked_by: Option<u32>,
        /// The current recheck delay while blocked (doubles from 50 ms up to 5 s).
        block_ms: u64,
        /// The next start counts as a restart.
        again: bool,
    },
    /// Spawned, not yet ready.
    Starting {
        /// Its main process (for a forking daemon: its starter, until [`Input::MainPid`]).
        proc_: Proc,
        /// How it becomes ready.
        ready: Readiness,
        /// When `ready_after_ms` makes it ready ([`Readiness::After`]).
        ready_at: Option<Ns>,
        /// When waiting for it ends (`ready_timeout_ms`): an ordered start goes on, and
        /// `ready_timeout_action` applies.
        ready_by: Ns,
        /// `ready_by` has passed.
        timed_out: bool,
        /// A stop is queued behind nodes that stop first, and what follows it.
        stop_queued: Option<Then>,
    },
    /// A forking daemon whose starter exited 0: waiting for its PID file to name its main
    /// process (its daemon lives somewhere in its group meanwhile).
    AwaitingMain {
        /// The starter that exited.
        starter: u32,
        /// When waiting ends: the start counts as failed.
        ready_by: Ns,
        /// How it becomes ready once its main process is known.
        told: bool,
    },
    /// Up.
    Running {
        /// Its main process.
        proc_: Proc,
        /// A stop is queued behind nodes that stop first, and what follows it.
        stop_queued: Option<Then>,
    },
    /// Its stop signal was sent; its process has not ended yet.
    Stopping {
        /// Its main process.
        proc_: Proc,
        /// When SIGKILL follows (`None`: already sent).
        kill_at: Option<Ns>,
        /// What follows.
        then: Then,
    },
    /// Its main process ended and what is left in its cgroup is being killed: the end
    /// applies once the group is empty ([`Input::GroupEmpty`]).
    Draining {
        /// The main process that ended.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// A stop's follow-up, or `None` for a death (the restart policy decides).
        then: Option<Then>,
    },
}

impl Phase {
    /// The state Mains see.
    pub fn state(&self) -> NodeState {
        match self {
            Phase::Stopped | Phase::Held => NodeState::Stopped,
            Phase::Failed => NodeState::Failed,
            Phase::Queued { .. } | Phase::Spawning { .. } => NodeState::Starting,
            Phase::Backoff { .. } => NodeState::Backoff,
            Phase::Starting { .. } | Phase::AwaitingMain { .. } => NodeState::Starting,
            Phase::Running { .. } => NodeState::Running,
            Phase::Stopping { .. } | Phase::Draining { .. } => NodeState::Stopping,
        }
    }

    /// The node's live main process, if it has one.
    pub fn proc_(&self) -> Option<Proc> {
        match self {
            Phase::Starting { proc_, .. }
            | Phase::Running { proc_, .. }
            | Phase::Stopping { proc_, .. } => Some(*proc_),
            _ => None,
        }
    }

    /// Whether some process of the node may live (its main process, a drained group, a
    /// forking daemon not yet named).
    pub fn may_have_processes(&self) -> bool {
        self.proc_().is_some()
            || matches!(self, Phase::Draining { .. } | Phase::AwaitingMain { .. })
    }

    /// The same `Running` or `Starting` phase with its queued stop set to `q` (`None` for
    /// any other phase, which has no queued stop).
    pub fn with_stop_queued(&self, q: Option<Then>) -> Option<Phase> {
        let mut p = self.clone();
        match &mut p {
            Phase::Running { stop_queued, .. } | Phase::Starting { stop_queued, .. } => {
                *stop_queued = q;
                Some(p)
            }
            _ => None,
        }
    }

    /// The variant's name, as the table in docs/design.md spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Stopped => "Stopped",
            Phase::Failed => "Failed",
            Phase::Queued { .. } => "Queued",
            Phase::Spawning { .. } => "Spawning",
            Phase::Held => "Held",
            Phase::Backoff { .. } => "Backoff",
            Phase::Starting { .. } => "Starting",
            Phase::AwaitingMain { .. } => "AwaitingMain",
            Phase::Running { .. } => "Running",
            Phase::Stopping { .. } => "Stopping",
            Phase::Draining { .. } => "Draining",
        }
    }
}

/// What the machine needs to know of a node's config (copied from its spec).
#[derive(Debug, Clone)]
pub struct Conf {
    /// Start rank of its role (loggers, managers, proxies, workers, others).
    pub rank: u8,
    /// Nodes it starts after (`start_after`), by index.
    pub after: Vec<Ix>,
    /// Its policy (restart, timeouts, readiness).
    pub policy: Arc<Policy>,
}

/// A node: its phase, and the counters that outlive its processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Core {
    /// Where it is.
    pub phase: Phase,
    /// Times started again by its restart policy.
    pub restarts: u32,
    /// How its previous process ended.
    pub last_exit: Option<Exit>,
    /// When its current (or last) process started (mono ns).
    pub started_ns: Ns,
    /// The same in wall-clock ms.
    pub started_wall_ms: u64,
    /// Restart delay and quick deaths.
    pub history: HistoryKey,
    /// `Running` with `watchdog_ms`: when the next `WATCHDOG=1` is due (none before the first
    /// ping). Cleared whenever the node leaves `Running`.
    pub watchdog_at: Option<Ns>,
    /// `Starting` with `ready_check`: when its next run is due (`None` while one runs).
    /// Cleared whenever the node leaves `Starting`.
    pub check_at: Option<Ns>,
}

/// [`History`] with equality and hashing (for the model check's visited set).
#[derive(Debug, Clone)]
pub struct HistoryKey(pub History);

impl PartialEq for HistoryKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.delay == other.0.delay && self.0.quick_deaths == other.0.quick_deaths
    }
}
impl Eq for HistoryKey {}
impl std::hash::Hash for HistoryKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.delay.hash(h);
        self.0.quick_deaths.hash(h);
    }
}

impl Core {
    /// A stopped node for `policy`.
    pub fn new(policy: &Policy) -> Core {
        Core {
            phase: Phase::Stopped,
            restarts: 0,
            last_exit: None,
            started_ns: 0,
            started_wall_ms: 0,
            history: HistoryKey(History::new(policy)),
            watchdog_at: None,
            check_at: None,
        }
    }
}

/// Who reported an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// We reaped our own child.
    Reaped,
    /// The guardian reaped it while it was no child of ours and reported it.
    Guardian,
    /// Its pidfd said it ended and no status can be had.
    Pidfd,
    /// Found not running at a takeover with no trace of its end (its recorded pid may not have
    /// been its last process: nothing of it is killed).
    Unseen,
    /// A predecessor recorded this exit (its `exited` event is in the ring) and died before it
    /// published what came next: applied, not recorded again.
    Predecessor,
}

/// A command from a Main (already checked: its epoch matched, its nodes exist).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// Start these nodes, in role order.
    Start(Vec<Ix>),
    /// Stop these nodes, in reverse role order.
    Stop(Vec<Ix>),
    /// Restart these nodes (several: staged, stopped in reverse order and then started in
    /// order once all are down).
    Restart(Vec<Ix>),
    /// Stop every node, then exit.
    Shutdown,
}

/// What ends a wait of a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// `Backoff`: the next start attempt.
    Retry,
    /// `Stopping`: SIGKILL.
    Kill,
    /// `Starting` with `ready_after_ms`: ready.
    ReadyAfter,
    /// `Starting`/`AwaitingMain`: the ready timeout.
    ReadyBy,
    /// `Running` with `watchdog_ms`: no `WATCHDOG=1` (or `READY=1`) within it; SIGKILL.
    Watchdog,
    /// `Starting` with `ready_check`: run the check.
    ReadyCheck,
}

/// Something that happened, for the machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A Main's command.
    Command(Command),
    /// Answer to [`Action::Spawn`]: the process started (exec succeeded).
    Spawned {
        /// The node.
        node: Ix,
        /// The process.
        proc_: Proc,
        /// How it becomes ready.
        ready: Readiness,
        /// Wall clock of the start (ms).
        wall_ms: u64,
    },
    /// Answer to [`Action::Spawn`]: it could not be started (errno).
    SpawnFailed {
        /// The node.
        node: Ix,
        /// The error number.
        errno: i32,
    },
    /// Answer to [`Action::Spawn`]: a process of the node that is not it lives (or whether
    /// one lives cannot be told): the start waits ([`crate::protocol::node::BLOCKED_UNKNOWN`]).
    Blocked {
        /// The node.
        node: Ix,
        /// The blocking pid.
        by: u32,
    },
    /// Answer to [`Action::Spawn`], or a takeover's finding: a running copy is the node
    /// itself, and is now watched as its main process.
    Adopted {
        /// The node.
        node: Ix,
        /// Its process.
        proc_: Proc,
        /// When it started (mono ns) and wall ms.
        started: (Ns, u64),
    },
    /// The node's main process ended.
    Exited {
        /// The node.
        node: Ix,
        /// Its pid (stale reports of an older process are ignored).
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// Its cgroup still holds processes (the shell kills them and watches the group).
        leftovers: bool,
        /// Who reported it.
        by: Reporter,
    },
    /// A forking daemon's PID file names its main process.
    MainPid {
        /// The node.
        node: Ix,
        /// The process.
        proc_: Proc,
    },
    /// A forking daemon's PID file named no process of it within its ready timeout (`named`:
    /// the pid it named, 0 for none): its start failed.
    MainRefused {
        /// The node.
        node: Ix,
        /// What the file named.
        named: u32,
    },
    /// The node said it is ready.
    Ready {
        /// The node.
        node: Ix,
    },
    /// The node's `ready_check` did not pass (or none of this Supervisor's ran yet, after a
    /// takeover): the next run is due one `ready_check_interval_ms` from now.
    CheckPending {
        /// The node.
        node: Ix,
    },
    /// The node said it is alive (`WATCHDOG=1`, or `READY=1` once running): with
    /// `watchdog_ms`, its next ping is due within that.
    WatchdogPing {
        /// The node.
        node: Ix,
    },
    /// The node's cgroup is empty (it was being drained, or leftovers blocked its start).
    GroupEmpty {
        /// The node.
        node: Ix,
    },
    /// The process that blocked the node's start is gone.
    BlockerGone {
        /// The node.
        node: Ix,
    },
    /// A timer of the node is due.
    Timer {
        /// The node.
        node: Ix,
        /// Which.
        kind: TimerKind,
    },
    /// The node must stop and then follow `then` (a watchdog that expired restarts it).
    StopThen {
        /// The node.
        node: Ix,
        /// What follows.
        then: Then,
    },
}

impl Input {
    /// The input's name, as the table in docs/design.md spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Input::Command(Command::Start(_)) => "start",
            Input::Command(Command::Stop(_)) => "stop",
            Input::Command(Command::Restart(_)) => "restart",
            Input::Command(Command::Shutdown) => "shutdown",
            Input::Spawned { .. } => "spawned",
            Input::SpawnFailed { .. } => "spawn-failed",
            Input::Blocked { .. } => "blocked",
            Input::Adopted { .. } => "adopted",
            Input::Exited { .. } => "exited",
            Input::MainPid { .. } => "main-pid",
            Input::MainRefused { .. } => "main-refused",
            Input::Ready { .. } => "ready",
            Input::GroupEmpty { .. } => "group-empty",
            Input::BlockerGone { .. } => "blocker-gone",
            Input::Timer {
                kind: TimerKind::Retry,
                ..
            } => "timer:retry",
            Input::Timer {
                kind: TimerKind::Kill,
                ..
            } => "timer:kill",
            Input::Timer {
                kind: TimerKind::ReadyAfter,
                ..
            } => "timer:ready-after",
            Input::Timer {
                kind: TimerKind::ReadyBy,
                ..
            } => "timer:ready-by",
            Input::Timer {
                kind: TimerKind::Watchdog,
                ..
            } => "timer:watchdog",
            Input::WatchdogPing { .. } => "watchdog-ping",
            Input::CheckPending { .. } => "check-pending",
            Input::Timer {
                kind: TimerKind::ReadyCheck,
                ..
            } => "timer:ready-check",
            Input::StopThen { .. } => "stop-then",
        }
    }
}

/// Something for the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the node's process: check that none of it lives, spawn, and answer with
    /// [`Input::Spawned`], [`Input::SpawnFailed`], [`Input::Blocked`] or [`Input::Adopted`].
    Spawn {
        /// The node.
        node: Ix,
    },
    /// Send `signal` to the node's process group and to its processes outside it (its cgroup,
    /// or those carrying its identity).
    Signal {
        /// The node.
        node: Ix,
        /// Its main process (0: none; only the escaped ones).
        pid: u32,
        /// The signal.
        signal: i32,
    },
    /// Its main process `pid` ended: stop watching it and what only a live process has (its
    /// readiness FIFO, notify socket, ready check).
    Release {
        /// The node.
        node: Ix,
        /// The pid that ended.
        pid: u32,
    },
    /// Kill what is left of the node: its process group (`pid`), its escaped processes, and
    /// (with `group`) everything in its cgroup, whose emptying is then watched
    /// ([`Input::GroupEmpty`]).
    KillLeftovers {
        /// The node.
        node: Ix,
        /// Its process group (0: none).
        pid: u32,
        /// Its cgroup still holds processes: `cgroup.kill` it and watch it.
        group: bool,
        /// The end of a stop (not a death): whatever still holds the node's lock goes too.
        stop: bool,
    },
    /// Stop watching the process that blocked the node's start.
    Unblock {
        /// The node.
        node: Ix,
    },
    /// The node's lifecycle changed: write its record.
    Publish {
        /// The node.
        node: Ix,
    },
    /// Append an event to the ring (the shell stamps its time and epoch).
    Emit(Event),
    /// Write a crash report for the node's process that ended (after its replacement started).
    CrashReport {
        /// The node.
        node: Ix,
        /// The pid that ended.
        pid: u32,
        /// How.
        exit: Exit,
        /// How long it ran (ms).
        uptime_ms: u64,
    },
    /// Run the node's `ready_check` now (it passes: [`Input::Ready`]; it fails, or cannot be
    /// run: [`Input::CheckPending`]).
    RunReadyCheck {
        /// The node.
        node: Ix,
    },
    /// Read the node's PID file now (its starter exited 0).
    ReadPidFile {
        /// The node.
        node: Ix,
    },
    /// Log a line about the node.
    Log {
        /// The node.
        node: Ix,
        /// What to say (the shell prefixes the node's name, and puts it for `{node}`).
        text: String,
    },
    /// A retired node is down: remove it from the table (indices after it shift).
    Drop {
        /// The node.
        node: Ix,
    },
}

impl Action {
    /// The action's short name, for the table.
    pub fn name(&self) -> String {
        match self {
            Action::Spawn { .. } => "spawn".into(),
            Action::Signal { signal, .. } if *signal == 9 => "SIGKILL".into(),
            Action::Signal { .. } => "signal".into(),
            Action::Release { .. } => "release".into(),
            Action::KillLeftovers { group: true, .. } => "kill-group".into(),
            Action::KillLeftovers { .. } => "kill-leftovers".into(),
            Action::Unblock { .. } => "unblock".into(),
            Action::Publish { .. } => "publish".into(),
            Action::Emit(ev) => format!("event:{}", ev.kind.as_str()),
            Action::CrashReport { .. } => "crash-report".into(),
            Action::ReadPidFile { .. } => "read-pid-file".into(),
            Action::RunReadyCheck { .. } => "run-ready-check".into(),
            Action::Log { .. } => "log".into(),
            Action::Drop { .. } => "drop".into(),
        }
    }
}

/// An event for `node` (its time set by [`Machine::take_out`], its wall-clock time by the
/// shell).
fn event(kind: EventKind, node: Ix, pid: u32) -> Event {
    Event {
        wall_ms: 0,
        mono_ns: 0,
        kind,
        node: node as u16,
        epoch: 0,
        pid,
        exit: None,
        a: 0,
        b: 0,
    }
}

/// Every node's lifecycle, and the cluster's ordering.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Each node's config, by index.
    confs: Vec<Conf>,
    /// Each node's state, by index.
    cores: Vec<Core>,
    /// Nodes have a cgroup each (a drained group ends a node).
    cgroups: bool,
    /// A `shutdown` is in progress: nothing starts, every node stops.
    shutting_down: bool,
    /// Ordered starts in progress.
    start_waves: Vec<cluster::Wave>,
    /// Ordered stops in progress.
    stop_waves: Vec<cluster::Wave>,
    /// Staged restarts: their nodes start (in order) once all still in them are held.
    batches: Vec<Vec<Ix>>,
    /// Armed timers: (due, node, kind).
    timers: BTreeSet<(Ns, Ix, TimerKind)>,
    /// Each node's armed timers (at most one per kind), to disarm them.
    armed: Vec<Vec<(Ns, TimerKind)>>,
    /// Actions not yet taken by the shell.
    out: Vec<Action>,
    /// A node changed phase since the waves last advanced.
    moved: bool,
}

impl Machine {
    /// A machine of stopped nodes.
    pub fn new(confs: Vec<Conf>, cgroups: bool) -> Machine {
        let cores = confs.iter().map(|c| Core::new(&c.policy)).collect();
        let n = confs.len();
        Machine {
            confs,
            cores,
            cgroups,
            shutting_down: false,
            start_waves: Vec::new(),
            stop_waves: Vec::new(),
            batches: Vec::new(),
            timers: BTreeSet::new(),
            armed: vec![Vec::new(); n],
            out: Vec::new(),
            moved: false,
        }
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.cores.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// Node `i`'s state.
    pub fn core(&self, i: Ix) -> &Core {
        &self.cores[i]
    }

    /// Node `i`'s config.
    pub fn conf(&self, i: Ix) -> &Conf {
        &self.confs[i]
    }

    /// Whether a shutdown is in progress.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Whether every node is at rest (no process, nothing queued): what a shutdown waits for.
    pub fn all_down(&self) -> bool {
        (0..self.cores.len()).all(|i| self.is_down(i))
    }

    /// Node `i` is at rest: no process, nothing pending.
    pub fn is_down(&self, i: Ix) -> bool {
        matches!(self.cores[i].phase, Phase::Stopped | Phase::Failed)
    }

    /// The earliest armed timer.
    pub fn next_deadline(&self) -> Option<Ns> {
        self.timers.first().map(|t| t.0)
    }

    /// Every timer due at `now`, earliest first (taken off the table).
    pub fn due(&mut self, now: Ns) -> Vec<(Ix, TimerKind)> {
        let mut due = Vec::new();
        while let Some(&(t, i, k)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            self.armed[i].retain(|&(at, kind)| !(at == t && kind == k));
            due.push((i, k));
        }
        due
    }

    /// Handles one input at `now`; returns the actions to carry out, in order.
    pub fn handle(&mut self, input: Input, now: Ns) -> Vec<Action> {
        match input {
            Input::Command(c) => self.command(c, now),
            Input::Spawned {
                node,
                proc_,
                ready,
                wall_ms,
            } => self.spawned(node, proc_, ready, wall_ms, now),
            Input::SpawnFailed { node, errno } => self.spawn_failed(node, errno, now),
            Input::Blocked { node, by } => self.blocked(node, by, now),
            Input::Adopted {
                node,
                proc_,
                started,
            } => self.adopted(node, proc_, started),
            Input::Exited {
                node,
                pid,
                exit,
                leftovers,
                by,
            } => self.exited(node, pid, exit, leftovers, by, now),
            Input::MainPid { node, proc_ } => self.main_pid(node, proc_, now),
            Input::MainRefused { node, named } => self.main_refused(node, named, now),
            Input::Ready { node } => self.ready(node),
            Input::WatchdogPing { node } => self.watchdog_ping(node, now),
            Input::CheckPending { node } => self.check_pending(node, now),
            Input::GroupEmpty { node } => self.group_empty(node, now),
            Input::BlockerGone { node } => self.blocker_gone(node, now),
            Input::Timer { node, kind } => self.timer(node, kind, now),
            Input::StopThen { node, then } => {
                if node < self.cores.len() {
                    self.stop_node(node, then, now);
                }
            }
        }
        self.take_out(now)
    }

    /// The actions so far, each event stamped `now`: the time the machine decided, the same
    /// clock its timers run on. A `killed` event is then never less than the stop timeout after
    /// the `stopping` event whose deadline it kept (stamped when the shell wrote them, they
    /// were apart by the timeout less however long the shell took between the two readings).
    fn take_out(&mut self, now: Ns) -> Vec<Action> {
        let mut out = std::mem::take(&mut self.out);
        for a in &mut out {
            if let Action::Emit(ev) = a {
                if ev.mono_ns == 0 {
                    ev.mono_ns = now;
                }
            }
        }
        out
    }

    /// Moves ordered starts, stops and staged restarts on as far as they can go: called by
    /// the shell once it has handled the inputs of a wake-up (and again after the actions it
    /// returns, until it returns none), so that a pass over the waves is paid once per
    /// wake-up, not once per input.
    pub fn advance_waves(&mut self, now: Ns) -> Vec<Action> {
        if std::mem::take(&mut self.moved) {
            self.advance(now);
        }
        self.take_out(now)
    }

    /// Moves node `i` to `phase` and publishes it (rearming its timers).
    fn set(&mut self, i: Ix, phase: Phase) {
        self.cores[i].phase = phase;
        self.rearm(i);
        self.moved = true;
        self.out.push(Action::Publish { node: i });
    }

    /// The table changed (a reload, a retired node dropped): node `k` of `confs` is the old
    /// node `from[k]` (or a new, stopped one). Ordered operations keep their nodes that stay.
    pub fn remap(&mut self, confs: Vec<Conf>, from: &[Option<Ix>]) {
        let mut old_cores: Vec<Option<Core>> = std::mem::take(&mut self.cores)
            .into_iter()
            .map(Some)
            .collect();
        let mut to_new = vec![None; old_cores.len()];
        for (k, f) in from.iter().enumerate() {
            if let Some(o) = f {
                if *o < to_new.len() {
                    to_new[*o] = Some(k);
                }
            }
        }
        self.cores = confs
            .iter()
            .zip(from)
            .map(|(c, f)| {
                f.and_then(|o| old_cores.get_mut(o).and_then(Option::take))
                    .unwrap_or_else(|| Core::new(&c.policy))
            })
            .collect();
        self.confs = confs;
        let map = |v: &mut Vec<Ix>| {
            *v = v
                .iter()
                .filter_map(|&o| to_new.get(o).copied().flatten())
                .collect();
        };
        for w in self
            .start_waves
            .iter_mut()
            .chain(self.stop_waves.iter_mut())
        {
            map(&mut w.members);
            w.remap_dependents(&to_new);
        }
        for b in &mut self.batches {
            map(b);
        }
        self.timers.clear();
        self.armed = vec![Vec::new(); self.cores.len()];
        for i in 0..self.cores.len() {
            self.rearm(i);
        }
        self.moved = true;
    }

    /// Replaces node `i`'s state (a takeover resuming what a predecessor recorded, before
    /// anything is published); its timers follow its phase.
    pub fn restore(&mut self, i: Ix, core: Core) {
        self.cores[i] = core;
        self.rearm(i);
        self.moved = true;
    }

    /// Starts an ordered start now (a takeover's autostart and resumed starts).
    pub fn start_ordered(&mut self, nodes: Vec<Ix>, pending: &[Ix]) -> Vec<Action> {
        self.queue_start(nodes, pending);
        self.moved = true;
        std::mem::take(&mut self.out)
    }

    /// Node `i`'s timers as its phase says.
    fn rearm(&mut self, i: Ix) {
        for (t, k) in std::mem::take(&mut self.armed[i]) {
            self.timers.remove(&(t, i, k));
        }
        let mut want: Vec<(Ns, TimerKind)> = Vec::new();
        match &self.cores[i].phase {
            Phase::Backoff { at, .. } => want.push((*at, TimerKind::Retry)),
            Phase::Stopping {
                kill_at: Some(t), ..
            } => want.push((*t, TimerKind::Kill)),
            Phase::Starting {
                ready_at,
                ready_by,
                timed_out,
                ..
            } => {
                if let Some(t) = ready_at {
                    want.push((*t, TimerKind::ReadyAfter));
                }
                if !timed_out {
                    want.push((*ready_by, TimerKind::ReadyBy));
                }
                if let Some(t) = self.cores[i].check_at {
                    want.push((t, TimerKind::ReadyCheck));
                }
            }
            Phase::AwaitingMain { ready_by, .. } => want.push((*ready_by, TimerKind::ReadyBy)),
            Phase::Running { .. } => {
                if let Some(t) = self.cores[i].watchdog_at {
                    want.push((t, TimerKind::Watchdog));
                }
            }
            _ => {}
        }
        if !matches!(self.cores[i].phase, Phase::Running { .. }) {
            self.cores[i].watchdog_at = None;
        }
        if !matches!(self.cores[i].phase, Phase::Starting { .. }) {
            self.cores[i].check_at = None;
        }
        for (t, k) in want {
            self.timers.insert((t, i, k));
            self.armed[i].push((t, k));
        }
    }

    /// What a successor must resume beyond the state (the record's intent bits).
    pub fn intent(&self, i: Ix) -> Intent {
        let mut it = Intent::default();
        let c = &self.cores[i];
        let restart = matches!(
            c.phase,
            Phase::Held
                | Phase::Stopping {
                    then: Then::Restart | Then::Hold,
                    ..
                }
                | Phase::Draining {
                    then: Some(Then::Restart | Then::Hold),
                    ..
                }
                | Phase::Running {
                    stop_queued: Some(Then::Hold),
                    ..
                }
                | Phase::Starting {
                    stop_queued: Some(Then::Hold),
                    ..
                }
        );
        it.set(Intent::RESTART_PENDING, restart);
        it.set(
            Intent::STOP_QUEUED,
            matches!(
                c.phase,
                Phase::Running {
                    stop_queued: Some(_),
                    ..
                } | Phase::Starting {
                    stop_queued: Some(_),
                    ..
                }
            ),
        );
        it.set(
            Intent::KILLED,
            matches!(c.phase, Phase::Stopping { kill_at: None, .. }),
        );
        it.set(
            Intent::WAS_FAILED,
            matches!(c.phase, Phase::Queued { was_failed: true }),
        );
        it.set(
            Intent::READY_TIMED_OUT,
            matches!(
                c.phase,
                Phase::Starting {
                    timed_out: true,
                    ..
                }
            ),
        );
        it.set(
            Intent::RETIRING,
            matches!(
                c.phase,
                Phase::Stopping {
                    then: Then::Retire,
                    ..
                } | Phase::Draining {
                    then: Some(Then::Retire),
                    ..
                }
            ),
        );
        it.set(
            Intent::DRAINING_DEATH,
            matches!(c.phase, Phase::Draining { then: None, .. }),
        );
        it
    }

    /// The deadline word of the record: the SIGKILL deadline in `stopping`, the retry time in
    /// `backoff`, readiness's in `starting` (`ready_after_ms`, else the ready timeout).
    pub fn deadline(&self, i: Ix) -> Ns {
        match &self.cores[i].phase {
            Phase::Backoff { at, .. } => *at,
            Phase::Stopping { kill_at, .. } => kill_at.unwrap_or(0),
            Phase::Starting {
                ready_at, ready_by, ..
            } => ready_at.unwrap_or(*ready_by),
            Phase::AwaitingMain { ready_by, .. } => *ready_by,
            _ => 0,
        }
    }

    /// The part of the machine that changes (for the model check's visited set).
    #[cfg(test)]
    pub(super) fn fingerprint(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        self.cores.hash(h);
        self.shutting_down.hash(h);
        self.start_waves.hash(h);
        self.stop_waves.hash(h);
        self.batches.hash(h);
        self.timers.hash(h);
    }

    /// Every armed timer (for the model check).
    #[cfg(test)]
    pub(super) fn timers(&self) -> &BTreeSet<(Ns, Ix, TimerKind)> {
        &self.timers
    }

    /// Whether node `i` is being removed by a `reload` (stopping, then dropped).
    pub fn is_retiring(&self, i: Ix) -> bool {
        matches!(
            self.cores[i].phase,
            Phase::Stopping {
                then: Then::Retire,
                ..
            } | Phase::Draining {
                then: Some(Then::Retire),
                ..
            }
        )
    }

    /// Forgets node `i`'s quick deaths and delay (its definition changed).
    pub fn reset_history(&mut self, i: Ix) {
        let p = self.confs[i].policy.clone();
        self.cores[i].history.0.reset(&p);
    }

    /// Whether some ordered start or stop is in progress.
    pub fn ordering(&self) -> bool {
        !self.start_waves.is_empty() || !self.stop_waves.is_empty()
    }

    /// The process blocking node `i`'s start, if any.
    pub fn blocked_by(&self, i: Ix) -> Option<u32> {
        match &self.cores[i].phase {
            Phase::Backoff { blocked_by, .. } => *blocked_by,
            _ => None,
        }
    }
}
