//! Exits of adopted nodes (reparented to the guardian when a previous Supervisor died): the
//! guardian's reports of the ones it reaped, applied as real exits; the exits it has not
//! reported yet, read from `/proc` while they are zombies (so a slow or stopped guardian loses
//! no status and holds nothing up); each exit applied once whatever order its death, its
//! report and its reap come in ([`Supervisor::settle_end`]). The link to the guardian itself
//! (its report pipe, restoring a dead one) is `guardian_link.rs`.

use super::*;
use crate::guardian::report::Report;

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

impl Supervisor {
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
    pub(super) fn apply_report(&mut self, r: Report) {
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
    pub(super) fn exit_recorded_before(&self, pid: u32, start: u64) -> Option<Exit> {
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
    pub(super) fn exits_in_ring(&self) -> HashMap<u32, (u64, Exit)> {
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
