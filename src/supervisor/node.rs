//! A node as the Supervisor's event loop holds it: its spec and what the kernel gave us for it.

use crate::config::NodeSpec;
use crate::protocol::node::NotifyPhase;
use std::os::fd::OwnedFd;

/// One supervised node as the event loop holds it: what the kernel gave us for it (fds,
/// watches, caches). Its lifecycle (phase, pid, restarts, last exit, timers) is in the
/// machine ([`super::machine`]), never here.
#[derive(Debug)]
pub struct Node {
    /// What the config says.
    pub spec: NodeSpec,
    /// A pidfd on its main process (readable when it exits), registered with the event loop.
    pub pidfd: Option<OwnedFd>,
    /// Its main process is not our child (inherited from a previous Supervisor, or reparented
    /// elsewhere): its exit status cannot be collected by us.
    pub adopted: bool,
    /// The Supervisor's end of the readiness FIFO while the node has not yet said it is ready.
    pub ready_pipe: Option<std::fs::File>,
    /// A pidfd on the process that blocks its start (registered like the node's own pidfd),
    /// so its exit wakes the loop instead of a `/proc` poll.
    pub blocker: Option<OwnedFd>,
    /// The pid `blocker` watches.
    pub blocker_pid: u32,
    /// Every live process of this node descends from this Supervisor: a full `/proc` scan
    /// found none other before we spawned it, and we never adopted one since. Its leftovers
    /// are then our children (we are their subreaper), so a restart needs no scan unless we
    /// have children that are no node's.
    pub descendants_only: bool,
    /// What earlier spawns resolved and created (reset when the spec changes or a spawn fails).
    pub prepared: super::spawn::Prepared,
    /// Whether `nodes/NAME.down` is known to exist (`None`: not known yet); see
    /// `supervisor/hold.rs`.
    pub down_marked: std::cell::Cell<Option<bool>>,
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
    /// Removed by a `reload` and down: it leaves the table when the loop settles.
    pub retired: bool,
}

/// What only nodes with a `pid_file`, `ready = "notify"` or a `ready_check` use, kept out of
/// [`Node`] so that the others (most nodes) do not carry it: a Supervisor of 10,000 nodes keeps
/// each node's state in well under 1 KiB.
#[derive(Debug, Default)]
pub struct Extras {
    /// A `ready = "notify"` node's socket (`NOTIFY_SOCKET`), registered with the event loop.
    pub notify: Option<std::os::unix::net::UnixDatagram>,
    /// The last `STATUS=` text it sent.
    pub notify_status: String,
    /// While it runs: `RELOADING=1` (until `READY=1`) or `STOPPING=1` (until it exits).
    pub notify_phase: Option<NotifyPhase>,
    /// Its running `ready_check` process.
    pub check_pid: Option<u32>,
}

/// What [`Node::extras`] reads for a node that has none.
static NO_EXTRAS: Extras = Extras {
    notify: None,
    notify_status: String::new(),
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

    /// A node for `spec`, with nothing of the kernel's yet.
    pub fn new(spec: NodeSpec) -> Node {
        Node {
            spec,
            pidfd: None,
            adopted: false,
            ready_pipe: None,
            blocker: None,
            blocker_pid: 0,
            descendants_only: false,
            down_marked: std::cell::Cell::new(None),
            prepared: super::spawn::Prepared::default(),
            cgroup_events: None,
            cgroup_fresh: false,
            extras: None,
            output: [None, None],
            retired: false,
        }
    }
}
