//! The node table's records: what the Supervisor publishes about each node, and how it is
//! packed into a seqlock cell's words.
//!
//! Every record carries its own check (word [`CHECK_WORD`]): a keyed 64-bit hash of the other
//! words, of the record's index in the table and of the region's record key (derived from its
//! identity and creation time, see `Shared::record_key`). A reader believes a record only if
//! its check matches, so a zeroed, forged, moved or bit-flipped record is never read as a
//! node's state (see [`record_check`]).

use super::layout::NODE_WORDS;

/// A node's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NodeState {
    /// Not running and not wanted.
    Stopped = 0,
    /// Spawned, not yet ready.
    Starting = 1,
    /// Running (and ready).
    Running = 2,
    /// Told to stop, waiting for it to exit.
    Stopping = 3,
    /// Died; waiting out the restart delay.
    Backoff = 4,
    /// Gave up after too many quick deaths (or died with restart = never).
    Failed = 5,
}

impl NodeState {
    /// The word used in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Stopped => "stopped",
            NodeState::Starting => "starting",
            NodeState::Running => "running",
            NodeState::Stopping => "stopping",
            NodeState::Backoff => "backoff",
            NodeState::Failed => "failed",
        }
    }

    /// Decodes a stored byte (unknown values are refused).
    pub fn from_code(v: u8) -> Option<NodeState> {
        Some(match v {
            0 => NodeState::Stopped,
            1 => NodeState::Starting,
            2 => NodeState::Running,
            3 => NodeState::Stopping,
            4 => NodeState::Backoff,
            5 => NodeState::Failed,
            _ => return None,
        })
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal; `core` if it dumped core.
    Signal {
        /// Signal number.
        signal: i32,
        /// Whether a core was dumped.
        core: bool,
    },
    /// It ended while we could not wait for it (an adopted node): status unknown.
    Unknown,
    /// It never ran: spawning failed with this errno.
    SpawnFailed(i32),
    /// A `pid_file` node never became the node: by its ready timeout its PID file named no
    /// live process of it (the pid the file named then, 0 if it named none). What it started
    /// is killed; the restart policy counts it as a failed start.
    PidFileRefused(u32),
}

impl Exit {
    /// Whether this counts as a failure for `restart = "on-failure"`.
    pub fn is_failure(self) -> bool {
        !matches!(self, Exit::Code(0))
    }

    /// From a wait status in `waitpid` form; `None` for one that is not an end (stopped,
    /// continued).
    pub fn from_wait_status(status: i32) -> Option<Exit> {
        if libc::WIFEXITED(status) {
            Some(Exit::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Exit::Signal {
                signal: libc::WTERMSIG(status),
                core: libc::WCOREDUMP(status),
            })
        } else {
            None
        }
    }

    /// Whether the start failed: the node never ran (its program could not be started, or its
    /// PID file named no process of it). However long that took, it is a quick death.
    pub fn never_ran(self) -> bool {
        matches!(self, Exit::SpawnFailed(_) | Exit::PidFileRefused(_))
    }

    /// Packs into (kind, value, core).
    pub fn encode(exit: Option<Exit>) -> (u8, i32, bool) {
        match exit {
            None => (0, 0, false),
            Some(Exit::Code(c)) => (1, c, false),
            Some(Exit::Signal { signal, core }) => (2, signal, core),
            Some(Exit::Unknown) => (3, 0, false),
            Some(Exit::SpawnFailed(e)) => (4, e, false),
            Some(Exit::PidFileRefused(pid)) => (5, pid as i32, false),
        }
    }

    /// Unpacks what [`Exit::encode`] packed.
    pub fn decode(kind: u8, value: i32, core: bool) -> Option<Exit> {
        match kind {
            1 => Some(Exit::Code(value)),
            2 => Some(Exit::Signal {
                signal: value,
                core,
            }),
            3 => Some(Exit::Unknown),
            4 => Some(Exit::SpawnFailed(value)),
            5 => Some(Exit::PidFileRefused(value as u32)),
            _ => None,
        }
    }

    /// Human form: `exit 3`, `signal 9 (KILL)`, `signal 11 (SEGV), core dumped`.
    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exit {c}"),
            Exit::Signal { signal, core } => format!(
                "signal {signal} ({}){}",
                crate::config::signal_name(signal),
                if core { ", core dumped" } else { "" }
            ),
            Exit::Unknown => "exit status unknown".into(),
            Exit::SpawnFailed(e) => {
                format!("could not start: {}", std::io::Error::from_raw_os_error(e))
            }
            Exit::PidFileRefused(0) => {
                "did not start: its pid_file named no process by its ready timeout".into()
            }
            Exit::PidFileRefused(pid) => format!(
                "did not start: its pid_file named pid {pid}, which is no live process of this node"
            ),
        }
    }
}

/// What the Supervisor was doing with a node beyond its state, recorded so that a successor
/// (after a `kill -9` or an upgrade) resumes it exactly: bit flags, stored in the spare bits of
/// the name-length word (word 6, bits 8..32), so the record keeps its size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Intent(pub u32);

impl Intent {
    /// Start again once the current process has exited (a `restart` in progress).
    pub const RESTART_PENDING: u32 = 1;
    /// A stop is queued behind nodes that stop first (an ordered stop).
    pub const STOP_QUEUED: u32 = 1 << 1;
    /// SIGKILL was already sent in this stop.
    pub const KILLED: u32 = 1 << 2;
    /// A queued start of a node that was `failed`: forget its quick deaths when it starts.
    pub const WAS_FAILED: u32 = 1 << 3;
    /// `starting` until the node writes a newline to its readiness FIFO
    /// (`RUNTIME/INSTANCE/nodes/NAME.ready`); the deadline word is then the ready timeout.
    pub const READY_FIFO: u32 = 1 << 4;
    /// The ready timeout has passed without the node saying it is ready.
    pub const READY_TIMED_OUT: u32 = 1 << 5;
    /// The node is being removed by a `reload`: stopping, then dropped from the table.
    pub const RETIRING: u32 = 1 << 6;
    /// A `ready = "notify"` node sent `RELOADING=1` and not yet `READY=1`: shown as
    /// `reloading` while it runs.
    pub const RELOADING: u32 = 1 << 7;
    /// A `ready = "notify"` node sent `STOPPING=1`: it is ending on its own, shown as
    /// `stopping` while it runs (no stop signal or SIGKILL deadline is ours; its exit is
    /// handled by its restart policy).
    pub const SELF_STOPPING: u32 = 1 << 8;
    /// `stopping` because its main process ended by itself and what was left in its cgroup
    /// is being killed: once the group is empty, its restart policy decides (not a stop).
    pub const DRAINING_DEATH: u32 = 1 << 9;
    /// Every known flag.
    pub const ALL: u32 = (1 << 10) - 1;

    /// Whether `flag` is set.
    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }

    /// Sets or clears `flag`.
    pub fn set(&mut self, flag: u32, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }
}

/// What a running `ready = "notify"` node said it is doing (`RELOADING=1`, `STOPPING=1`):
/// shown in place of `running`, as systemd shows `reloading` and `deactivating`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyPhase {
    /// `RELOADING=1`, until `READY=1`.
    Reloading,
    /// `STOPPING=1`, until it exits.
    Stopping,
}

impl NotifyPhase {
    /// The phase recorded in `intent`, if any.
    pub fn of(intent: Intent) -> Option<NotifyPhase> {
        if intent.has(Intent::SELF_STOPPING) {
            Some(NotifyPhase::Stopping)
        } else if intent.has(Intent::RELOADING) {
            Some(NotifyPhase::Reloading)
        } else {
            None
        }
    }

    /// Its intent flag.
    pub fn flag(self) -> u32 {
        match self {
            NotifyPhase::Reloading => Intent::RELOADING,
            NotifyPhase::Stopping => Intent::SELF_STOPPING,
        }
    }

    /// The word `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyPhase::Reloading => "reloading",
            NotifyPhase::Stopping => "stopping",
        }
    }
}

/// Longest node name the table stores (words 7 to 13; config names are at most 48 bytes).
pub const NAME_MAX: usize = 56;

/// The word holding the record's check (see [`record_check`]).
pub const CHECK_WORD: usize = NODE_WORDS - 1;

/// One step of the check: a bijection of the 64-bit state (an odd multiplier, then an
/// xorshift), so two inputs that differ in one word always give different checks.
const fn check_mix(mut x: u64) -> u64 {
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 29)
}

/// The check of record words `w` (all but [`CHECK_WORD`]) at table index `index`, for a region
/// whose record key is `key`. Each word is folded in through a bijection, so any change
/// confined to one word (a flipped bit, a forged pid, a name overwritten) changes the check
/// for certain; changes spread over several words are caught but with probability 2^-64.
/// The index and key make a record copied to another slot, or from another region (or an
/// older region of the same instance), fail. Not cryptographic: anyone who can write the
/// region can read the key; the Supervisor's comparison with what it published (see
/// `supervisor::repair`) is what catches a forgery that recomputes the check.
pub fn record_check(w: &[u64; NODE_WORDS], key: u64, index: usize) -> u64 {
    let mut h = check_mix(key ^ 0x6272_6f63_746c_6472); // "rdltcorb"
    h = check_mix(h ^ index as u64);
    for x in &w[..CHECK_WORD] {
        h = check_mix(h ^ x);
    }
    h
}

/// Stores the check of `w` (see [`record_check`]) in its check word.
pub fn seal(w: &mut [u64; NODE_WORDS], key: u64, index: usize) {
    w[CHECK_WORD] = record_check(w, key, index);
}

/// Whether `w`'s check word matches its other words at `index` under `key`.
pub fn check_ok(w: &[u64; NODE_WORDS], key: u64, index: usize) -> bool {
    w[CHECK_WORD] == record_check(w, key, index)
}

/// One node's published status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Its name.
    pub name: String,
    /// `config::NodeType` code.
    pub node_type: u8,
    /// Lifecycle state.
    pub state: NodeState,
    /// The pid, if a process exists.
    pub pid: Option<u32>,
    /// The pid's start time (clock ticks since boot).
    pub pid_start: u64,
    /// When it was started (CLOCK_MONOTONIC ns), 0 if never.
    pub started_mono_ns: u64,
    /// When it was started (ms since the epoch), 0 if never.
    pub started_wall_ms: u64,
    /// Times the Supervisor started it again after it ended (by policy or `restart`).
    pub restarts: u32,
    /// How the previous process ended.
    pub last_exit: Option<Exit>,
    /// In `backoff`: when the next start is due; in `stopping`: when SIGKILL is due; in
    /// `starting`: when it counts as ready (`ready_after_ms`) or, with [`Intent::READY_FIFO`],
    /// when an ordered start stops waiting for it (mono ns).
    pub deadline_mono_ns: u64,
    /// What the Supervisor was doing with it beyond its state.
    pub intent: Intent,
    /// In `backoff`: a process of this node that is not the Supervisor's (one that escaped its
    /// group, or a copy a lost record left behind) blocks its start; 0 if unknown.
    pub blocked_by: Option<u32>,
}

/// `blocked_by` value meaning "blocked, holder unknown" (a lock held by a process we cannot
/// name, or an identity check that failed with an OS error).
pub const BLOCKED_UNKNOWN: u32 = u32::MAX;

impl NodeRecord {
    /// Packs into seqlock words, the check word left 0: `Shared::write_record` seals them
    /// (see [`seal`]) for the index they are written at.
    pub fn encode(&self) -> [u64; NODE_WORDS] {
        let mut w = [0u64; NODE_WORDS];
        let (kind, value, core) = Exit::encode(self.last_exit);
        w[0] = self.state as u64
            | (self.node_type as u64) << 8
            | (kind as u64) << 16
            | (core as u64) << 24
            | (self.restarts as u64) << 32;
        w[1] = self.pid.unwrap_or(0) as u64 | (value as u32 as u64) << 32;
        w[2] = self.pid_start;
        w[3] = self.started_mono_ns;
        w[4] = self.started_wall_ms;
        w[5] = self.deadline_mono_ns;
        let name = self.name.as_bytes();
        let n = name.len().min(NAME_MAX);
        // Word 6: name length (bits 0..8), intent (8..32), blocking pid (32..64).
        w[6] = n as u64
            | ((self.intent.0 & Intent::ALL) as u64) << 8
            | (self.blocked_by.unwrap_or(0) as u64) << 32;
        for (i, b) in name[..n].iter().enumerate() {
            w[7 + i / 8] |= (*b as u64) << (8 * (i % 8));
        }
        w
    }

    /// Unpacks words read from shared memory; `None` if anything is out of range (the words are
    /// untrusted). This does not look at the check word: read records through
    /// `Shared::read_record`, which does.
    pub fn decode(w: &[u64; NODE_WORDS]) -> Option<NodeRecord> {
        let mut r = NodeRecord::blank(String::new());
        Self::decode_into(w, &mut r).then_some(r)
    }

    /// A stopped, never-started record called `name` (what an all-zero record decodes to).
    pub fn blank(name: String) -> NodeRecord {
        NodeRecord {
            name,
            node_type: 0,
            state: NodeState::Stopped,
            pid: None,
            pid_start: 0,
            started_mono_ns: 0,
            started_wall_ms: 0,
            restarts: 0,
            last_exit: None,
            deadline_mono_ns: 0,
            intent: Intent(0),
            blocked_by: None,
        }
    }

    /// Like [`NodeRecord::decode`], into an existing record whose name buffer is reused (no
    /// allocation once it is big enough). Returns false, leaving `out` unspecified, for words
    /// out of range.
    pub fn decode_into(w: &[u64; NODE_WORDS], out: &mut NodeRecord) -> bool {
        let Some(f) = RecordFields::decode(w) else {
            return false;
        };
        if !decode_name_into(w, &mut out.name) {
            return false;
        }
        out.set_fields(f);
        true
    }

    /// Everything but the name.
    pub fn fields(&self) -> RecordFields {
        RecordFields {
            node_type: self.node_type,
            state: self.state,
            pid: self.pid,
            pid_start: self.pid_start,
            started_mono_ns: self.started_mono_ns,
            started_wall_ms: self.started_wall_ms,
            restarts: self.restarts,
            last_exit: self.last_exit,
            deadline_mono_ns: self.deadline_mono_ns,
            intent: self.intent,
            blocked_by: self.blocked_by,
        }
    }

    fn set_fields(&mut self, f: RecordFields) {
        self.node_type = f.node_type;
        self.state = f.state;
        self.pid = f.pid;
        self.pid_start = f.pid_start;
        self.started_mono_ns = f.started_mono_ns;
        self.started_wall_ms = f.started_wall_ms;
        self.restarts = f.restarts;
        self.last_exit = f.last_exit;
        self.deadline_mono_ns = f.deadline_mono_ns;
        self.intent = f.intent;
        self.blocked_by = f.blocked_by;
    }
}

/// A node record's fields other than its name (so a reader can decode them without touching a
/// `String`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFields {
    /// `config::NodeType` code.
    pub node_type: u8,
    /// Lifecycle state.
    pub state: NodeState,
    /// The pid, if a process exists.
    pub pid: Option<u32>,
    /// The pid's start time.
    pub pid_start: u64,
    /// Start, CLOCK_MONOTONIC ns.
    pub started_mono_ns: u64,
    /// Start, ms since the epoch.
    pub started_wall_ms: u64,
    /// Restarts so far.
    pub restarts: u32,
    /// How the previous process ended.
    pub last_exit: Option<Exit>,
    /// Backoff, kill or ready deadline, mono ns (0 if none).
    pub deadline_mono_ns: u64,
    /// What the Supervisor was doing with it beyond its state.
    pub intent: Intent,
    /// A process of this node that blocks its start ([`BLOCKED_UNKNOWN`] if unknown).
    pub blocked_by: Option<u32>,
}

impl RecordFields {
    /// Unpacks the non-name words of a record (untrusted); `None` for an unknown state.
    pub fn decode(w: &[u64; NODE_WORDS]) -> Option<RecordFields> {
        let state = NodeState::from_code((w[0] & 0xff) as u8)?;
        let pid = (w[1] & 0xffff_ffff) as u32;
        Some(RecordFields {
            node_type: ((w[0] >> 8) & 0xff) as u8,
            state,
            pid: (pid != 0).then_some(pid),
            pid_start: w[2],
            started_mono_ns: w[3],
            started_wall_ms: w[4],
            restarts: (w[0] >> 32) as u32,
            last_exit: Exit::decode(
                ((w[0] >> 16) & 0xff) as u8,
                (w[1] >> 32) as u32 as i32,
                (w[0] >> 24) & 0xff != 0,
            ),
            deadline_mono_ns: w[5],
            intent: Intent(((w[6] >> 8) as u32) & Intent::ALL),
            blocked_by: match (w[6] >> 32) as u32 {
                0 => None,
                p => Some(p),
            },
        })
    }
}

/// Decodes a record's name into `out` (reusing its buffer, left alone if unchanged). Names are
/// ASCII (`[A-Za-z0-9_.-]`): anything else is refused, checked a word at a time.
pub fn decode_name_into(w: &[u64; NODE_WORDS], out: &mut String) -> bool {
    let n = ((w[6] & 0xff) as usize).min(NAME_MAX);
    let words = n.div_ceil(8);
    if w[7..7 + words]
        .iter()
        .any(|x| x & 0x8080_8080_8080_8080 != 0)
    {
        return false;
    }
    let mut bytes = [0u8; NAME_MAX];
    for (k, chunk) in bytes.chunks_exact_mut(8).take(words).enumerate() {
        chunk.copy_from_slice(&w[7 + k].to_le_bytes());
    }
    let Ok(name) = std::str::from_utf8(&bytes[..n]) else {
        return false;
    };
    if out != name {
        out.clear();
        out.push_str(name);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = NodeRecord {
            name: "worker-12.a_b".into(),
            node_type: 4,
            state: NodeState::Backoff,
            pid: Some(4_194_303),
            pid_start: 123_456_789,
            started_mono_ns: u64::MAX - 1,
            started_wall_ms: 1_795_000_000_000,
            restarts: u32::MAX,
            last_exit: Some(Exit::Signal {
                signal: 9,
                core: true,
            }),
            deadline_mono_ns: 42,
            intent: Intent(Intent::ALL),
            blocked_by: Some(4_194_304),
        };
        assert_eq!(NodeRecord::decode(&r.encode()), Some(r));
        let neg = NodeRecord {
            name: String::new(),
            node_type: 0,
            state: NodeState::Stopped,
            pid: None,
            pid_start: 0,
            started_mono_ns: 0,
            started_wall_ms: 0,
            restarts: 0,
            last_exit: Some(Exit::Code(-3)),
            deadline_mono_ns: 0,
            intent: Intent(Intent::STOP_QUEUED),
            blocked_by: Some(BLOCKED_UNKNOWN),
        };
        assert_eq!(NodeRecord::decode(&neg.encode()), Some(neg));
    }

    fn sealed(r: &NodeRecord, key: u64, i: usize) -> [u64; NODE_WORDS] {
        let mut w = r.encode();
        seal(&mut w, key, i);
        w
    }

    /// Issue 16, defect 14: a record carries its own check. Every single-bit flip of any
    /// word fails it, as do a zeroed record, the same words at another index, and the same
    /// words under another region's key.
    #[test]
    fn record_check_catches_every_single_bit_flip_zeroing_moves_and_other_keys() {
        let mut r = NodeRecord::blank("worker-1".into());
        r.state = NodeState::Running;
        r.pid = Some(4242);
        r.pid_start = 987_654;
        r.restarts = 3;
        let key = 0x1234_5678_9abc_def1;
        let w = sealed(&r, key, 7);
        assert!(check_ok(&w, key, 7));
        for word in 0..NODE_WORDS {
            for bit in 0..64 {
                let mut bad = w;
                bad[word] ^= 1 << bit;
                assert!(!check_ok(&bad, key, 7), "word {word} bit {bit}");
            }
        }
        assert!(!check_ok(&[0; NODE_WORDS], key, 7), "a zeroed record");
        for i in (0..7).chain(8..64) {
            assert!(!check_ok(&w, key, i), "moved to {i}");
        }
        assert!(!check_ok(&w, key ^ 2, 7), "another region's key");
        // A forged pid, whatever the rest says.
        let mut forged = w;
        forged[1] = (forged[1] & !0xffff_ffff) | 1;
        assert!(!check_ok(&forged, key, 7));
        assert_eq!(NodeRecord::decode(&w), Some(r));
    }

    #[test]
    fn every_exit_round_trips_and_a_refused_pid_file_says_why() {
        for e in [
            Exit::Code(0),
            Exit::Code(-3),
            Exit::Signal {
                signal: 11,
                core: true,
            },
            Exit::Unknown,
            Exit::SpawnFailed(libc::ENOENT),
            Exit::PidFileRefused(0),
            Exit::PidFileRefused(4_194_303),
        ] {
            let (kind, value, core) = Exit::encode(Some(e));
            assert_eq!(Exit::decode(kind, value, core), Some(e));
        }
        let text = Exit::PidFileRefused(1).describe();
        assert!(
            text.contains("pid 1") && !text.contains("timed out"),
            "{text}"
        );
        assert!(Exit::PidFileRefused(1).never_ran() && Exit::SpawnFailed(2).never_ran());
        assert!(!Exit::Unknown.never_ran());
    }

    #[test]
    fn garbage_state_is_refused() {
        let mut w = [0u64; NODE_WORDS];
        w[0] = 200;
        assert_eq!(NodeRecord::decode(&w), None);
        // A name length beyond the words is clamped, not trusted.
        w[0] = 0;
        w[6] = u64::MAX;
        w[7] = u64::from_le_bytes(*b"abcdefgh");
        assert!(
            NodeRecord::decode(&w).is_none()
                || NodeRecord::decode(&w).unwrap().name.len() <= NAME_MAX
        );
    }
}
