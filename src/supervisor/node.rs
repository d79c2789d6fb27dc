//! A node as the Supervisor tracks it in its own memory: the spec, the live process, the
//! restart history, and the record it publishes to the node table.

use super::policy::History;
use crate::config::NodeSpec;
use crate::protocol::node::{Exit, Intent, NodeRecord, NodeState, NotifyPhase};
use std::os::fd::OwnedFd;

/// A start or stop waiting for other nodes (an ordered start or stop of several nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queue {
    /// Spawn once every node in `after` is ready (or not coming, or past its ready timeout).
    Start {
        /// Node indices to wait for.
        after: Vec<usize>,
        /// The node was `failed` before: forget its quick deaths when it starts.
        was_failed: bool,
    },
    /// Send the stop signal once every node in `after` has no process left.
    Stop {
        /// Node indices to wait for.
        after: Vec<usize>,
    },
}

/// One supervised node.
#[derive(Debug)]
pub struct Node {
    /// What the config says.
    pub spec: NodeSpec,
    /// Lifecycle state.
    pub state: NodeState,
    /// The live process, if any.
    pub pid: Option<u32>,
    /// A pidfd on it (readable when it exits), registered with the event loop.
    pub pidfd: Option<OwnedFd>,
    /// The process's start time in clock ticks (its identity together with the pid).
    pub pid_start: u64,
    /// True if the process was inherited from a previous Supervisor: not our child, so its
    /// exit status cannot be collected.
    pub adopted: bool,
    /// When the process started (mono ns) and wall ms.
    pub started_mono_ns: u64,
    /// Wall clock of the start.
    pub started_wall_ms: u64,
    /// Times started again after its process died (by its restart policy); an operator's
    /// `restart` (or a reload's) is not counted.
    pub restarts: u32,
    /// How the previous process ended.
    pub last_exit: Option<Exit>,
    /// Restart delay and quick deaths.
    pub history: History,
    /// When a timer fires (mono ns): the restart in `backoff`, SIGKILL in `stopping`, ready in
    /// `starting`.
    pub deadline: Option<u64>,
    /// Start again once the current process has exited (a `restart` in progress).
    pub start_after_exit: bool,
    /// SIGKILL was already sent in this stop.
    pub killed: bool,
    /// The Supervisor's end of the readiness FIFO while the node has not yet said it is ready.
    pub ready_pipe: Option<std::fs::File>,
    /// In `backoff` with no process of ours: a process of this node that blocks its start
    /// ([`crate::protocol::node::BLOCKED_UNKNOWN`] if it cannot be named).
    pub blocked_by: Option<u32>,
    /// A pidfd on the blocking process (registered like the node's own pidfd), so its exit
    /// wakes the loop instead of a `/proc` poll.
    pub blocker: Option<OwnedFd>,
    /// The next delay between checks while blocked (doubles up to a cap).
    pub block_delay_ms: u64,
    /// Every live process of this node descends from this Supervisor: a full `/proc` scan
    /// found none other before we spawned it, and we never adopted one since. Its leftovers
    /// are then our children (we are their subreaper), so a restart needs no scan unless we
    /// have children that are no node's.
    pub descendants_only: bool,
    /// Removed from the config by a reload: stopping, then dropped from the table.
    pub retiring: bool,
    /// A queued start or stop.
    pub queue: Option<Queue>,
    /// While `starting`: when an ordered start stops waiting for it (mono ns).
    pub ready_by: Option<u64>,
    /// `ready_by` has passed without the node becoming ready.
    pub ready_timed_out: bool,
    /// What earlier spawns resolved and created (reset when the spec changes or a spawn fails).
    pub prepared: super::spawn::Prepared,
    /// Whether `nodes/NAME.down` is known to exist (`None`: not known yet); see
    /// `supervisor/hold.rs`.
    pub down_marked: std::cell::Cell<Option<bool>>,
    /// The main process ended but its cgroup still has processes (killed with `cgroup.kill`):
    /// the end is applied once the group is empty. The pid, how it ended, and whether it was
    /// being stopped.
    pub draining: Option<(u32, Exit, bool)>,
    /// The node group's `cgroup.events`, watched (registered with the event loop) while
    /// draining or while its start is blocked by processes left in the group.
    pub cgroup_events: Option<std::fs::File>,
    /// The node's cgroup was made by this Supervisor and never killed since (`cgroup.kill`):
    /// its process may be started in it with `CLONE_INTO_CGROUP`. The kernel (up to at least
    /// 6.18) compares a group's kill count with the one of the parent's group at such a
    /// clone and kills the child when they differ, so a group that was ever killed (or whose
    /// history we do not know) is made anew (or, if that fails, entered by the child itself).
    pub cgroup_fresh: bool,
    /// The Supervisor's ends of its output FIFOs (stdout, stderr), registered with the event
    /// loop; kept across its processes (see `supervisor/output.rs`).
    pub output: [Option<super::output::Stream>; 2],
    /// State only some kinds of nodes use (see [`Extras`]); `None` until one is set.
    pub extras: Option<Box<Extras>>,
    /// `ready_timeout_action = "fail"` stopped it: it ends `failed`, not `stopped`.
    pub fail_after_stop: bool,
    /// Part of a staged `restart` of several nodes: once stopped it waits for the others of
    /// its batch, which then start in stages.
    pub staged_restart: bool,
}

/// What only nodes with a `pid_file`, `ready = "notify"` or a `ready_check` use, kept out of
/// [`Node`] so that the others (most nodes) do not carry it: a Supervisor of 10,000 nodes keeps
/// each node's state in well under 1 KiB.
#[derive(Debug, Default)]
pub struct Extras {
    /// A `pid_file` node's starter (the process we spawned, which forks the daemon), while it
    /// runs: its exit with status 0 is not the node's end.
    pub starter: Option<u32>,
    /// A `pid_file` node whose starter (this pid) exited with status 0: waiting for its PID
    /// file to name its main process.
    pub pid_file_wait: Option<u32>,
    /// A `ready = "notify"` node's socket (`NOTIFY_SOCKET`), registered with the event loop.
    pub notify: Option<std::os::unix::net::UnixDatagram>,
    /// The last `STATUS=` text it sent.
    pub notify_status: String,
    /// While it runs: `RELOADING=1` (until `READY=1`) or `STOPPING=1` (until it exits).
    pub notify_phase: Option<NotifyPhase>,
    /// When its next `WATCHDOG=1` is due (mono ns).
    pub watchdog_at: Option<u64>,
    /// When its next `ready_check` run is due (mono ns).
    pub check_at: Option<u64>,
    /// Its running `ready_check` process.
    pub check_pid: Option<u32>,
}

/// What [`Node::extras`] reads for a node that has none.
static NO_EXTRAS: Extras = Extras {
    starter: None,
    pid_file_wait: None,
    notify: None,
    notify_status: String::new(),
    watchdog_at: None,
    check_at: None,
    check_pid: None,
    notify_phase: None,
};

impl Node {
    /// The node's [`Extras`] (all unset if it has none).
    pub fn extras(&self) -> &Extras {
        self.extras.as_deref().unwrap_or(&NO_EXTRAS)
    }

    /// The node's [`Extras`], made if it had none: for setting one.
    pub fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// The node's [`Extras`] if it has any: for clearing one (nothing to clear otherwise).
    pub fn extras_if_any(&mut self) -> Option<&mut Extras> {
        self.extras.as_deref_mut()
    }

    /// A stopped node for `spec`.
    pub fn new(spec: NodeSpec) -> Node {
        let history = History::new(&spec.policy);
        Node {
            spec,
            state: NodeState::Stopped,
            pid: None,
            pidfd: None,
            pid_start: 0,
            adopted: false,
            started_mono_ns: 0,
            started_wall_ms: 0,
            restarts: 0,
            last_exit: None,
            history,
            deadline: None,
            start_after_exit: false,
            killed: false,
            ready_pipe: None,
            blocked_by: None,
            blocker: None,
            block_delay_ms: 0,
            descendants_only: false,
            retiring: false,
            queue: None,
            ready_by: None,
            ready_timed_out: false,
            down_marked: std::cell::Cell::new(None),
            prepared: super::spawn::Prepared::default(),
            draining: None,
            cgroup_events: None,
            cgroup_fresh: false,
            extras: None,
            fail_after_stop: false,
            staged_restart: false,
            output: [None, None],
        }
    }

    /// The record to publish.
    pub fn record(&self) -> NodeRecord {
        NodeRecord {
            name: self.spec.name.clone(),
            node_type: self.spec.node_type.code(),
            state: self.state,
            pid: self.pid,
            pid_start: self.pid_start,
            started_mono_ns: self.started_mono_ns,
            started_wall_ms: self.started_wall_ms,
            restarts: self.restarts,
            last_exit: self.last_exit,
            // In `starting`, Mains see when waiting for readiness ends.
            deadline_mono_ns: match self.state {
                NodeState::Starting => self.deadline.or(self.ready_by).unwrap_or(0),
                _ => self.deadline.unwrap_or(0),
            },
            intent: self.intent(),
            blocked_by: self.blocked_by,
        }
    }

    /// What a successor must resume beyond the state (see [`Intent`]).
    pub fn intent(&self) -> Intent {
        let mut it = Intent::default();
        it.set(
            Intent::RESTART_PENDING,
            self.start_after_exit || self.staged_restart,
        );
        it.set(
            Intent::STOP_QUEUED,
            matches!(self.queue, Some(Queue::Stop { .. })),
        );
        it.set(Intent::KILLED, self.killed);
        it.set(
            Intent::WAS_FAILED,
            matches!(
                self.queue,
                Some(Queue::Start {
                    was_failed: true,
                    ..
                })
            ),
        );
        it.set(Intent::READY_FIFO, self.ready_pipe.is_some());
        it.set(Intent::READY_TIMED_OUT, self.ready_timed_out);
        it.set(Intent::RETIRING, self.retiring);
        it.set(
            Intent::DRAINING_DEATH,
            matches!(self.draining, Some((_, _, false))),
        );
        if let Some(p) = self.extras().notify_phase {
            it.set(p.flag(), true);
        }
        it
    }

    /// Whether the node is at rest (no process, no timer, nothing queued): what shutdown waits
    /// for.
    pub fn is_down(&self) -> bool {
        self.pid.is_none()
            && self.queue.is_none()
            && matches!(self.state, NodeState::Stopped | NodeState::Failed)
    }
}
