//! The Supervisor's side of the guardian: the exit reports of nodes the guardian reaped (nodes
//! reparented to it when a previous Supervisor died), applied as real exits; the exits of such
//! nodes the guardian has not reported yet, read from `/proc` while they are zombies (so a slow
//! or stopped guardian loses no status and holds nothing up), each exit applied once whatever
//! order its death, its report and its reap come in (see `Supervisor::settle_end`); and,
//! whenever the guardian is gone, starting a new one in watch mode so the chain is whole
//! again. That one is started beside us (`CLONE_PARENT`: a double fork from a child subreaper
//! would leave it our child) with a report pipe of its own, whose end of file tells us when it
//! dies in turn: every guardian death is noticed, not only the first.

use super::source::Source;
use super::*;
use crate::guardian::report::{self, Report};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

/// Token of the guardian's fd in the loop's poll (its report pipe, its pidfd, or a retry
/// timer, whichever [`GuardianLink`] holds).
const REPORTS: Source = Source::Reports;

/// How long the report of a node that ended a zombie of the guardian is waited for when
/// `/proc` does not show us its status (it ran as another user, or the kernel is older than
/// 5.16): a stopped guardian is not waited for longer.
pub(super) const REPORT_WAIT: Duration = Duration::from_secs(2);

/// Set to `off` in the Supervisor's environment to never read a zombie's exit status from
/// `/proc` (as on a kernel older than 5.16, where it cannot tell whether it may): the
/// guardian's report is then waited for, at most [`REPORT_WAIT`].
pub const ZOMBIE_STATUS_ENV: &str = "BROCTLD_ZOMBIE_STATUS";

/// Whether [`ZOMBIE_STATUS_ENV`] says not to read zombies' statuses.
fn zombie_status_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os(ZOMBIE_STATUS_ENV).is_some_and(|v| v == "off"))
}

/// A guardian we started that is gone within this time died by itself: the next one waits.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The read end of a guardian's report pipe.
struct Reports {
    file: File,
    /// The guardian's pid (our parent when it spawned us; 0 if unknown).
    pid: u32,
    buf: Vec<u8>,
    open: bool,
}

enum State {
    /// Linked: the report pipe of our guardian (the one that started us, or one we started).
    Pipe(Reports),
    /// A guardian we have no pipe to (it holds the instance, e.g. it started and found a
    /// Supervisor already there): its pidfd, readable when it dies.
    Watch { pid: u32, fd: OwnedFd },
    /// No guardian could be started: a timer says when to try again.
    Retry { timer: TimerFd },
}

/// Our link to the guardian, always one of the three [`State`]s while the Supervisor runs.
pub(super) struct GuardianLink {
    state: State,
    /// The delay before the next start of a guardian if the last one died at once.
    delay: Duration,
    /// When we last started one.
    launched: Option<Instant>,
}

impl GuardianLink {
    /// The link our guardian passed us (fd number in [`report::FD_ENV`]), checked to be a pipe;
    /// `None` if we were started without one. Removes the variables, so nodes do not see them.
    pub(super) fn from_env() -> Option<GuardianLink> {
        let fd = std::env::var(report::FD_ENV)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok());
        let named = std::env::var(report::PID_ENV)
            .ok()
            .and_then(|v| v.parse::<u32>().ok());
        // Single-threaded still: nothing reads the environment concurrently.
        std::env::remove_var(report::FD_ENV);
        std::env::remove_var(report::PID_ENV);
        let fd = fd.filter(|&fd| fd > 2)?;
        // SAFETY: fstat on an fd number only fills in the buffer (EBADF if it is not open).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; a valid out-pointer.
        if crate::syscall!(fstat(fd, &mut st)).is_err()
            || st.st_mode & libc::S_IFMT != libc::S_IFIFO
        {
            log!(
                "{}={fd} is not a pipe; running without a guardian",
                report::FD_ENV
            );
            return None;
        }
        if crate::sys::fdflags::set_cloexec(fd, true).is_err() {
            return None;
        }
        // SAFETY: the guardian handed this fd to us by number (or our previous program image
        // did, across an upgrade's exec); nothing else in this image owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: fcntl on a live fd with integer flags.
        let fl = crate::syscall!(fcntl(fd, libc::F_GETFL)).ok()?;
        // SAFETY: as above.
        crate::syscall!(fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)).ok()?;
        let parent = nix::unistd::getppid().as_raw() as u32;
        let pid = named.unwrap_or(if parent > 1 { parent } else { 0 });
        Some(GuardianLink::linked(Reports {
            file,
            pid,
            buf: Vec::new(),
            open: true,
        }))
    }

    fn linked(r: Reports) -> GuardianLink {
        GuardianLink {
            state: State::Pipe(r),
            delay: Duration::ZERO,
            launched: None,
        }
    }

    /// The fd registered in the loop under [`REPORTS`].
    fn raw_fd(&self) -> RawFd {
        match &self.state {
            State::Pipe(r) => r.file.as_raw_fd(),
            State::Watch { fd, .. } => fd.as_raw_fd(),
            State::Retry { timer } => timer.as_fd().as_raw_fd(),
        }
    }

    /// The report pipe's fd, if linked (kept across an upgrade's exec).
    pub(super) fn pipe_fd(&self) -> Option<RawFd> {
        match &self.state {
            State::Pipe(r) => Some(r.file.as_raw_fd()),
            _ => None,
        }
    }

    /// The pid of the guardian at the report pipe's other end, if linked and known.
    pub(super) fn pipe_pid(&self) -> Option<u32> {
        match &self.state {
            State::Pipe(r) if r.pid != 0 => Some(r.pid),
            _ => None,
        }
    }

    /// The linked report pipe, if it is still open.
    fn reports(&mut self) -> Option<&mut Reports> {
        match &mut self.state {
            State::Pipe(r) if r.open => Some(r),
            _ => None,
        }
    }
}

impl Reports {
    /// Every complete report available now (never blocks). Notes end of file: the guardian is
    /// gone.
    fn read_available(&mut self) -> Vec<Report> {
        let mut chunk = [0u8; 4096];
        while self.open {
            match self.file.read(&mut chunk) {
                Ok(0) => self.open = false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // EAGAIN: nothing more for now
            }
        }
        report::take_reports(&mut self.buf)
    }
}

impl Supervisor {
    /// Registers the report pipe in the loop.
    pub(super) fn connect_guardian(&mut self) {
        let Some(link) = self.guardian.as_ref() else {
            self.restore_guardian("none was passed to us");
            return;
        };
        let fd = link.raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), REPORTS.token(), Interest::READABLE)
        {
            log!("cannot watch the guardian's report pipe: {e}");
        }
    }

    /// Takeover: reads the reports already waiting (of nodes that died while no Supervisor
    /// lived), for [`Self::take_reported_exit`], and the exits predecessors recorded.
    pub(super) fn read_early_reports(&mut self) {
        // What predecessors recorded, read before the pipe (its reports are applied at once).
        self.recorded_exits = self.exits_in_ring();
        let early = self
            .guardian
            .as_mut()
            .and_then(GuardianLink::reports)
            .map(Reports::read_available)
            .unwrap_or_default();
        self.reported.extend(early.into_iter().map(|r| (r.pid, r)));
    }

    /// Takeover: if the node recorded in `rec` died while no Supervisor lived and the
    /// guardian's report of it was waiting in the pipe, that exit (the report is taken). Any
    /// other node found not running is settled once the takeover is done
    /// ([`Self::settle_end`]); so is one whose exit a predecessor recorded already.
    pub(super) fn take_reported_exit(&mut self, rec: &NodeRecord) -> Option<Exit> {
        let pid = rec.pid?;
        match self.reported.get(&pid) {
            Some(r) if r.start == rec.pid_start => {}
            _ => return None,
        }
        let r = self.reported.remove(&pid)?;
        if self.exit_recorded_before(pid, rec.pid_start).is_some() {
            log!(
                "pid {pid}: the guardian's report ({}) is of an exit a previous Supervisor recorded; dropped",
                r.exit.describe()
            );
            return None;
        }
        Some(r.exit)
    }

    /// After the takeover: reports that matched no node are processes the guardian reaped
    /// that were not nodes (their leftovers); they are recorded as such.
    pub(super) fn drop_unmatched_reports(&mut self) {
        for (_, r) in std::mem::take(&mut self.reported) {
            self.apply_report(r);
        }
    }

    /// Applies one report: the exit of a node we adopted, or an orphan's. A report of an exit
    /// already recorded (read from `/proc` while the process was a zombie the guardian had not
    /// collected yet, by us or by a predecessor) is dropped: one exit is applied once.
    fn apply_report(&mut self, r: Report) {
        self.awaiting.remove(&r.pid);
        if self.taken.remove(&(r.pid, r.start)) {
            log!(
                "pid {}: the guardian's report ({}) came after its exit was recorded; dropped",
                r.pid,
                r.exit.describe()
            );
            return;
        }
        let node = self.by_pid.get(&r.pid).copied();
        let ours = |i: usize| {
            self.machine.core(i).phase.proc_()
                == Some(machine::Proc {
                    pid: r.pid,
                    start: r.start,
                })
        };
        match node {
            Some(i) if ours(i) => self.exit_reported(r.pid, r.exit, machine::Reporter::Guardian),
            _ if self.exit_recorded_before(r.pid, r.start).is_some() => log!(
                "pid {}: the guardian's report ({}) is of an exit a previous Supervisor recorded; dropped",
                r.pid,
                r.exit.describe()
            ),
            _ => {

                let mut ev = Event::now(EventKind::OrphanReaped, NO_NODE, r.pid);
                ev.exit = Some(r.exit);
                self.event(ev);
            }
        }
    }

    /// The exit an `exited` event written before this takeover records for the process `pid`
    /// that started at `start` (the latest event for that pid, if at or after that start): a
    /// predecessor recorded it and died before the guardian's report of it came (it read it
    /// from `/proc`), or before it published what it did next.
    fn exit_recorded_before(&self, pid: u32, start: u64) -> Option<Exit> {
        static OWN_START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        // Only a process older than this Supervisor can be one.
        if start >= *OWN_START.get_or_init(procstat::own_start_time) {
            return None;
        }
        let &(at, exit) = self.recorded_exits.get(&pid)?;
        // Events are stamped with CLOCK_MONOTONIC.
        (at >= procstat::start_monotonic_ns(start)).then_some(exit)
    }

    /// The latest `exited` event of each pid in the ring (time, exit): what predecessors
    /// recorded, for [`Self::exit_recorded_before`].
    fn exits_in_ring(&self) -> HashMap<u32, (u64, Exit)> {
        let ring = self.shared.ring();
        let mut cursor = ring.head().saturating_sub(ring.capacity());
        let mut out = HashMap::new();
        while let crate::shm::ring::Next::Event { words, .. } = ring.next(&mut cursor) {
            if let Some(Event {
                kind: EventKind::Exited,
                pid,
                mono_ns,
                exit: Some(exit),
                ..
            }) = Event::decode(&words)
            {
                out.insert(pid, (mono_ns, exit));
            }
        }
        out
    }

    /// Loop: the guardian's fd is readable (or a caller wants the reports now). Linked: reads
    /// and applies every waiting report, and if the guardian is gone, handles what it can no
    /// longer report and starts a new guardian. Watching an unlinked guardian: starts a new one
    /// once it is gone. Waiting to retry: tries again once the time has come.
    pub(super) fn read_reports(&mut self) {
        let Some(link) = self.guardian.as_mut() else {
            return;
        };
        let why = match &mut link.state {
            State::Pipe(r) => {
                let got = r.read_available();
                let open = r.open;
                for rep in got {
                    self.apply_report(rep);
                }
                if open {
                    return;
                }
                format!(
                    "the guardian (pid {}) is gone",
                    self.guardian
                        .as_ref()
                        .and_then(GuardianLink::pipe_pid)
                        .unwrap_or(0)
                )
            }
            State::Watch { pid, fd } => {
                if !pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(true) {
                    return;
                }
                format!("guardian pid {pid} is gone")
            }
            State::Retry { timer } => {
                if matches!(timer.get(), Ok(Some(_))) {
                    return; // not yet
                }
                "trying again".to_owned()
            }
        };
        let link = self.guardian.take();
        if let Some(l) = &link {
            let _ = self.poll.registry().deregister(&mut SourceFd(&l.raw_fd()));
        }
        if matches!(link.as_ref().map(|l| &l.state), Some(State::Pipe(_))) {
            // The reports still to come are gone with it: nodes that ended and waited for one
            // are settled from /proc (their status while they are still a zombie), else
            // recorded `unknown`.
            self.taken.clear();
            let ended: Vec<(usize, u32)> = (0..self.nodes.len())
                .filter_map(|i| Some((i, self.main_pid(i)?)))
                .filter(|&(i, pid)| {
                    let n = &self.nodes[i];
                    self.awaiting.contains_key(&pid)
                        || n.adopted
                            && n.pidfd.as_ref().is_some_and(|fd| {
                                pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(false)
                            })
                })
                .collect();
            for (i, pid) in ended {
                if self.main_pid(i) == Some(pid) {
                    self.settle_end(i, pid, true);
                }
            }
            self.awaiting.clear();
        }
        let (delay, launched) = link.map_or((Duration::ZERO, None), |l| (l.delay, l.launched));
        self.restore_guardian_after(&why, delay, launched);
    }

    /// Loop: an adopted node's pidfd says it ended.
    pub(super) fn adopted_node_ended(&mut self, pid: u32) {
        let Some(&i) = self.by_pid.get(&pid) else {
            return;
        };
        if self.main_pid(i) == Some(pid) {
            self.settle_end(i, pid, false);
        }
    }

    /// Node `i`'s process `pid` ended and is not our child (an adopted node, or one found not
    /// running at a takeover): records its real exit from the best evidence there is now, never
    /// `unknown` while the real one is still to be had. The guardian collects such a process
    /// and reports it, always writing the report before it collects, so:
    ///
    /// * its report is in the pipe: applied;
    /// * still a zombie whose status `/proc` shows us: that status, at once (the guardian may
    ///   be slow or stopped); the guardian's report of it, when it comes, is dropped;
    /// * still a zombie of the guardian whose status we may not read: its report is waited for,
    ///   without blocking, at most [`REPORT_WAIT`] (then `give_up`: `unknown`);
    /// * gone from `/proc` with no report: its report can never come (not the guardian's, or
    ///   the guardian died first): `unknown`, honestly.
    ///
    /// `/proc` is read before the pipe: a process gone from `/proc` before the pipe was read
    /// had its report written before that read.
    pub(super) fn settle_end(&mut self, i: usize, pid: u32, give_up: bool) {
        let Some(start) = self
            .machine
            .core(i)
            .phase
            .proc_()
            .filter(|p| p.pid == pid)
            .map(|p| p.start)
        else {
            return;
        };
        let seen = procstat::seen(pid, start).map(|seen| match seen {
            procstat::Seen::Zombie { parent, .. } if zombie_status_off() => {
                procstat::Seen::Zombie {
                    parent,
                    status: None,
                }
            }
            seen => seen,
        });
        self.read_reports();
        if i >= self.nodes.len() || self.main_pid(i) != Some(pid) {
            // Its report came (and was applied), or the guardian's end settled it.
            self.awaiting.remove(&pid);
            return;
        }
        let guardian = self.guardian.as_ref().and_then(GuardianLink::pipe_pid);
        let seen = seen.unwrap_or_else(|e| {
            // No evidence either way: treated as a zombie we cannot read.
            log!(
                "node {}: cannot read /proc/{pid}/stat ({e})",
                self.nodes[i].spec.name
            );
            procstat::Seen::Zombie {
                parent: guardian.unwrap_or(0),
                status: None,
            }
        });
        let name = self.nodes[i].spec.name.clone();
        // Found not running at a takeover (no pidfd: never watched by us).
        let unwatched = self.nodes[i].pidfd.is_none();
        if let Some(exit) = unwatched
            .then(|| self.exit_recorded_before(pid, start))
            .flatten()
        {
            // A predecessor applied this exit (its `exited` event is in the ring) and died
            // before it published what came next: the policy decides now, recorded once.
            log!(
                "node {name}: pid {pid} ended ({}, recorded by the previous Supervisor)",
                exit.describe()
            );
            if matches!(seen, procstat::Seen::Zombie { parent, .. } if Some(parent) == guardian) {
                self.taken.insert((pid, start));
            }
            self.awaiting.remove(&pid);
            self.exit_reported(pid, exit, machine::Reporter::Predecessor);
            return;
        }
        match verdict(seen, guardian, std::process::id(), give_up) {
            Verdict::Collected => {
                // Our own zombie (its process was ours before an upgrade's exec): the
                // reaper collects it and applies its exit.
                self.awaiting.remove(&pid);
            }
            Verdict::Await => {
                if let std::collections::hash_map::Entry::Vacant(e) = self.awaiting.entry(pid) {
                    log!(
                        "node {name}: pid {pid} ended; /proc does not show us its status: waiting for the guardian's report (at most {} s)",
                        REPORT_WAIT.as_secs()
                    );
                    e.insert((start, clock::monotonic_ns() + REPORT_WAIT.as_nanos() as u64));
                }
            }
            Verdict::Exit {
                exit: Exit::Unknown,
                ..
            } if unwatched && matches!(seen, procstat::Seen::Gone | procstat::Seen::Running) => {
                // Found not running at a takeover, with no trace of its end: the recorded pid
                // is not known to have been its last process (a predecessor may have died
                // before recording a newer one), so it is recorded as before, killing nothing.
                self.awaiting.remove(&pid);
                self.exit_reported(pid, Exit::Unknown, machine::Reporter::Unseen);
            }
            Verdict::Exit {
                exit,
                report_follows,
            } => {
                self.awaiting.remove(&pid);
                if report_follows {
                    self.taken.insert((pid, start));
                }
                match (seen, exit) {
                    (procstat::Seen::Zombie { .. }, Exit::Unknown) => log!(
                        "node {name}: pid {pid} ended; no report from the guardian within {} s and /proc does not show its status: exit status unknown",
                        REPORT_WAIT.as_secs()
                    ),
                    (procstat::Seen::Zombie { .. }, _) => log!(
                        "node {name}: pid {pid} ended ({}, read from /proc: not yet reported by the guardian)",
                        exit.describe()
                    ),
                    _ => {}
                }
                self.on_exit(pid, exit);
            }
        }
    }

    /// Timers: nodes whose report did not come in time are settled without it.
    pub(super) fn fire_report_waits(&mut self, now: u64) {
        let due: Vec<(u32, u64)> = self
            .awaiting
            .iter()
            .filter(|(_, &(_, due))| due <= now)
            .map(|(&pid, &(start, _))| (pid, start))
            .collect();
        for (pid, start) in due {
            self.awaiting.remove(&pid);
            let Some(&i) = self.by_pid.get(&pid) else {
                continue;
            };
            let ours = machine::Proc { pid, start };
            if self.machine.core(i).phase.proc_() == Some(ours) {
                self.settle_end(i, pid, true);
            }
        }
    }

    /// The earliest time a report is waited for until.
    pub(super) fn next_report_due(&self) -> Option<u64> {
        self.awaiting.values().map(|&(_, due)| due).min()
    }

    /// No guardian is linked to us: start one in watch mode over this Supervisor.
    fn restore_guardian(&mut self, why: &str) {
        self.restore_guardian_after(why, Duration::ZERO, None);
    }

    /// [`Self::restore_guardian`], knowing when we last started one and the delay then. Leaves
    /// `self.guardian` in one of the three states, registered in the loop: a guardian that
    /// already holds the instance is watched (pidfd); otherwise a new one is started, linked by
    /// a report pipe of its own; if that fails, or the last one we started died at once, a
    /// timer says when to try again (100 ms, doubling up to 30 s).
    fn restore_guardian_after(&mut self, why: &str, delay: Duration, launched: Option<Instant>) {
        // One that lived a while says nothing about the next: no delay.
        let delay = if launched.is_some_and(|t| t.elapsed() >= QUICK_DEATH) {
            Duration::ZERO
        } else {
            delay
        };
        let mut link = match crate::guardian::holder(&self.instance) {
            Some(pid) => match pidfd::open(pid) {
                Ok(fd) => {
                    log!("no guardian of ours ({why}); guardian pid {pid} holds the instance: watching it");
                    Some(GuardianLink {
                        state: State::Watch { pid, fd },
                        delay,
                        launched,
                    })
                }
                Err(e) => {
                    log!("{why}; guardian pid {pid} holds the instance but cannot be watched: {e}");
                    None
                }
            },
            None if launched.is_some_and(|t| t.elapsed() < QUICK_DEATH) => {
                log!("{why}: the guardian we started is gone at once");
                None
            }
            None => match self.launch_guardian() {
                Ok(mut l) => {
                    l.delay = delay;
                    log!(
                        "{why}: started a new guardian (pid {}) to watch this Supervisor",
                        l.pipe_pid().unwrap_or(0)
                    );
                    Some(l)
                }
                Err(e) => {
                    log!("{why}: cannot start a new guardian: {e}");
                    None
                }
            },
        };
        if link.is_none() {
            let next = (delay * 2).clamp(RETRY_FIRST, crate::guardian::RETRY_MAX);
            link = match retry_timer(next) {
                Ok(timer) => {
                    log!("starting a guardian again in {:.1} s", next.as_secs_f64());
                    Some(GuardianLink {
                        state: State::Retry { timer },
                        delay: next,
                        launched: None,
                    })
                }
                Err(e) => {
                    log!("no timer to start a guardian again ({e}): none until the next Main or upgrade");
                    None
                }
            };
        }
        if let Some(l) = &link {
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&l.raw_fd()),
                REPORTS.token(),
                Interest::READABLE,
            ) {
                log!("cannot watch the guardian: {e}");
            }
        }
        self.guardian = link;
    }

    /// Starts a watch-mode guardian beside us with a new report pipe; we keep its read end.
    fn launch_guardian(&mut self) -> io::Result<GuardianLink> {
        let (r, w) = crate::guardian::pipe()?;
        let pid = crate::guardian::launch_beside(
            &self.instance,
            &self.config_path,
            &r,
            &w,
            std::process::id(),
        )?;
        // Only the guardian holds the write end now: its death is our end of file.
        drop(w);
        let ours = r.try_clone()?;
        drop(r);
        crate::guardian::set_nonblocking(&ours)?;
        Ok(GuardianLink {
            state: State::Pipe(Reports {
                file: ours,
                pid,
                buf: Vec::new(),
                open: true,
            }),
            delay: Duration::ZERO,
            launched: Some(Instant::now()),
        })
    }
}

/// A one-shot timer (nonblocking, close-on-exec) that fires `after` from now.
fn retry_timer(after: Duration) -> io::Result<TimerFd> {
    let t = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    t.set(
        Expiration::OneShot(TimeSpec::from_duration(after)),
        TimerSetTimeFlags::empty(),
    )
    .map_err(io::Error::from)?;
    Ok(t)
}

/// What the end of a process that is not our child comes to, from what `/proc` showed of it
/// (read *before* the pipe, which then held no report of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// This is its exit; `report_follows`: the guardian will still report it (that report is
    /// then dropped).
    Exit { exit: Exit, report_follows: bool },
    /// Its report will come (it is the guardian's zombie): wait for it.
    Await,
    /// It is our own zombie: the reaper collects it.
    Collected,
}

fn verdict(seen: procstat::Seen, guardian: Option<u32>, me: u32, give_up: bool) -> Verdict {
    match seen {
        procstat::Seen::Zombie { parent, .. } if parent == me => Verdict::Collected,
        procstat::Seen::Zombie { parent, status } => {
            let report_follows = guardian == Some(parent);
            match status.and_then(Exit::from_wait_status) {
                Some(exit) => Verdict::Exit {
                    exit,
                    report_follows,
                },
                None if report_follows && !give_up => Verdict::Await,
                None => Verdict::Exit {
                    exit: Exit::Unknown,
                    report_follows,
                },
            }
        }
        // Gone before the pipe was read: had the guardian collected it, its report would have
        // been in the pipe. (Running: it could not be watched; counted as ended, as before.)
        procstat::Seen::Gone | procstat::Seen::Running => Verdict::Exit {
            exit: Exit::Unknown,
            report_follows: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procstat::Seen;

    const G: u32 = 10;
    const ME: u32 = 20;

    fn zombie(parent: u32, status: Option<i32>) -> Seen {
        Seen::Zombie { parent, status }
    }

    /// Every order of: the node dies, the guardian reports, the guardian collects, we read
    /// the pipe, we look at `/proc`. A report read before the look is applied by the caller;
    /// what is left is what the look saw with no report in the pipe after it.
    #[test]
    fn every_order_of_death_report_and_reap_gives_the_real_exit_once() {
        let exit7 = Exit::Code(7);
        // Died, not yet reported, not yet collected (the guardian is slow or stopped): the
        // status from /proc, and the report that follows is dropped.
        assert_eq!(
            verdict(zombie(G, Some(7 << 8)), Some(G), ME, false),
            Verdict::Exit {
                exit: exit7,
                report_follows: true
            }
        );
        // The same with a clean exit: `exit 0`, never `unknown` (on-failure must not restart).
        assert_eq!(
            verdict(zombie(G, Some(0)), Some(G), ME, false),
            Verdict::Exit {
                exit: Exit::Code(0),
                report_follows: true
            }
        );
        // Not ours to read: the report is waited for, and only a wait that timed out (or a
        // guardian that died) gives `unknown` (its late report then dropped).
        assert_eq!(verdict(zombie(G, None), Some(G), ME, false), Verdict::Await);
        assert_eq!(
            verdict(zombie(G, None), Some(G), ME, true),
            Verdict::Exit {
                exit: Exit::Unknown,
                report_follows: true
            }
        );
        // Reported and collected after our read of the pipe but before our look: the caller
        // read the pipe again after the look and applied it. With no report after the look,
        // it was never the guardian's to report: `unknown`, honestly.
        assert_eq!(
            verdict(Seen::Gone, Some(G), ME, false),
            Verdict::Exit {
                exit: Exit::Unknown,
                report_follows: false
            }
        );
        // A zombie of another process (the guardian died; init is collecting it): its status
        // if shown, and no report follows.
        assert_eq!(
            verdict(zombie(1, Some(9)), None, ME, false),
            Verdict::Exit {
                exit: Exit::Signal {
                    signal: 9,
                    core: false
                },
                report_follows: false
            }
        );
        assert_eq!(
            verdict(zombie(1, None), Some(G), ME, false),
            Verdict::Exit {
                exit: Exit::Unknown,
                report_follows: false
            }
        );
        // Our own zombie: the reaper's.
        assert_eq!(
            verdict(zombie(ME, Some(0)), Some(G), ME, false),
            Verdict::Collected
        );
    }
}
