//! What the event ring's entries say: one event per thing that happened to a node, a command
//! or the Supervisor, in the order it happened, each with a sequence number.

use super::layout::EVENT_WORDS;
use super::node::Exit;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum EventKind {
    /// A Supervisor took over the region (`a` = generation).
    SupervisorStarted = 1,
    /// The Supervisor is exiting.
    SupervisorExiting = 2,
    /// A node's process was spawned (`pid`, `a` = restarts so far).
    Spawned = 3,
    /// A node became ready.
    Ready = 4,
    /// A node's process ended (`pid`, exit).
    Exited = 5,
    /// A node waits before its next start (`a` = delay in ms; `b` = a process of the node that
    /// blocks its start, `u32::MAX` if unknown, 0 if none).
    Backoff = 6,
    /// A node was given up on (`a` = quick deaths in the window).
    Failed = 7,
    /// A stop signal was sent (`a` = signal, `b` = timeout ms).
    Stopping = 8,
    /// A node that outlived its stop timeout was sent SIGKILL.
    Killed = 9,
    /// A node is stopped.
    Stopped = 10,
    /// Spawning failed (exit = SpawnFailed(errno)).
    SpawnFailed = 11,
    /// A command was applied (`a` = command seq, `b` = opcode | origin pid << 32, exit code =
    /// reply status).
    CommandApplied = 12,
    /// A mailbox slot whose Main died was reclaimed (`a` = command seq, `b` = slot | pid << 32).
    SlotReclaimed = 13,
    /// A node that survived a Supervisor's death was adopted (`pid`).
    Adopted = 14,
    /// An orphaned grandchild was reaped (`pid`, exit).
    OrphanReaped = 15,
    /// A signal was delivered to a node on request (`a` = signal).
    Signaled = 16,
    /// `upgrade-supervisor` did not re-execute; the old program runs on. `b` says why (see
    /// [`upgrade_failure`]): 0, `execve` failed (`a` = errno); otherwise the new binary failed
    /// its version probe (`a` = the probe's deadline in ms, exit = how the probe ended).
    UpgradeFailed = 17,
}

/// Why an upgrade failed: the `b` word of an [`EventKind::UpgradeFailed`] event.
pub mod upgrade_failure {
    /// `execve` itself failed (`a` = errno).
    pub const EXEC: u64 = 0;
    /// The new binary did not answer its version probe within the deadline (`a`, in ms).
    pub const PROBE_TIMED_OUT: u64 = 1;
    /// The probe ended with a failure (the event's exit says how).
    pub const PROBE_FAILED: u64 = 2;
    /// The probe exited 0 but gave no answer, or one this Supervisor cannot hand over to.
    pub const PROBE_ANSWER: u64 = 3;
}

impl EventKind {
    /// Decodes a stored value.
    pub fn from_u16(v: u16) -> Option<EventKind> {
        use EventKind::*;
        Some(match v {
            1 => SupervisorStarted,
            2 => SupervisorExiting,
            3 => Spawned,
            4 => Ready,
            5 => Exited,
            6 => Backoff,
            7 => Failed,
            8 => Stopping,
            9 => Killed,
            10 => Stopped,
            11 => SpawnFailed,
            12 => CommandApplied,
            13 => SlotReclaimed,
            14 => Adopted,
            15 => OrphanReaped,
            16 => Signaled,
            17 => UpgradeFailed,
            _ => return None,
        })
    }

    /// A short word for listings.
    pub fn as_str(self) -> &'static str {
        use EventKind::*;
        match self {
            SupervisorStarted => "supervisor-started",
            SupervisorExiting => "supervisor-exiting",
            Spawned => "spawned",
            Ready => "ready",
            Exited => "exited",
            Backoff => "backoff",
            Failed => "failed",
            Stopping => "stopping",
            Killed => "killed",
            Stopped => "stopped",
            SpawnFailed => "spawn-failed",
            CommandApplied => "command",
            SlotReclaimed => "slot-reclaimed",
            Adopted => "adopted",
            OrphanReaped => "orphan-reaped",
            Signaled => "signaled",
            UpgradeFailed => "upgrade-failed",
        }
    }
}

/// "No node" in [`Event::node`].
pub const NO_NODE: u16 = u16::MAX;

/// One event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Wall clock, ms since the epoch.
    pub wall_ms: u64,
    /// CLOCK_MONOTONIC, ns.
    pub mono_ns: u64,
    /// What happened.
    pub kind: EventKind,
    /// Node index, or [`NO_NODE`]: an index into the node table as it was at `epoch`.
    pub node: u16,
    /// The table's `config_epoch` when the event was written: a reader names `node` from the
    /// table only if the table is still at this epoch (a reload renumbers nodes).
    pub epoch: u32,
    /// Process concerned (0 if none).
    pub pid: u32,
    /// Exit status, for exits.
    pub exit: Option<Exit>,
    /// Kind-specific argument.
    pub a: u64,
    /// Kind-specific argument.
    pub b: u64,
}

impl Event {
    /// An event stamped now.
    pub fn now(kind: EventKind, node: u16, pid: u32) -> Event {
        Event {
            wall_ms: crate::sys::clock::wall_ms(),
            mono_ns: crate::sys::clock::monotonic_ns(),
            kind,
            node,
            epoch: 0,
            pid,
            exit: None,
            a: 0,
            b: 0,
        }
    }

    /// Packs into ring words.
    pub fn encode(&self) -> [u64; EVENT_WORDS] {
        let (kind, value, core) = Exit::encode(self.exit);
        [
            self.wall_ms,
            self.mono_ns,
            self.kind as u64 | (self.node as u64) << 16 | (self.pid as u64) << 32,
            kind as u64 | (core as u64) << 8 | (value as u32 as u64) << 32,
            self.a,
            self.b,
            self.epoch as u64,
        ]
    }

    /// Unpacks untrusted ring words; `None` for an unknown kind.
    pub fn decode(w: &[u64; EVENT_WORDS]) -> Option<Event> {
        Some(Event {
            wall_ms: w[0],
            mono_ns: w[1],
            kind: EventKind::from_u16((w[2] & 0xffff) as u16)?,
            node: ((w[2] >> 16) & 0xffff) as u16,
            pid: (w[2] >> 32) as u32,
            exit: Exit::decode(
                (w[3] & 0xff) as u8,
                (w[3] >> 32) as u32 as i32,
                (w[3] >> 8) & 1 != 0,
            ),
            a: w[4],
            b: w[5],
            epoch: w[6] as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips() {
        let mut e = Event::now(EventKind::Exited, 7, 1234);
        e.exit = Some(Exit::Code(-1));
        e.a = u64::MAX;
        e.b = 5;
        e.epoch = 77;
        assert_eq!(Event::decode(&e.encode()), Some(e));
    }

    #[test]
    fn unknown_kind_is_refused() {
        let mut w = Event::now(EventKind::Ready, 1, 1).encode();
        w[2] = 999;
        assert_eq!(Event::decode(&w), None);
    }
}
