//! One node's transitions: what each input does in each phase.

use super::*;
use crate::supervisor::policy::{self, Decision};

fn ns(d: std::time::Duration) -> Ns {
    d.as_nanos().min(u64::MAX as u128) as Ns
}

impl Machine {
    /// Asks the shell to spawn node `i` (`again`: counted as a restart if it starts).
    pub(super) fn spawn(&mut self, i: Ix, again: bool) {
        if self.shutting_down {
            // Nothing starts while every node is being stopped.
            self.set(i, Phase::Stopped);
            return;
        }
        self.spawn_with(i, again, None);
    }

    /// [`Self::spawn`], remembering what blocked the attempt before.
    pub(super) fn spawn_with(&mut self, i: Ix, again: bool, block: Option<(u32, u64)>) {
        // Published before the process exists: a Supervisor killed between the spawn and its
        // answer leaves a record that says a start is under way (a successor starts it, and
        // finds and adopts the copy), never the `stopped` it had before.
        self.set(i, Phase::Spawning { again, block });
        self.out.push(Action::Spawn { node: i });
    }

    /// The shell started node `i`'s process.
    pub(super) fn spawned(&mut self, i: Ix, proc_: Proc, ready: Readiness, wall_ms: u64, now: Ns) {
        let Some(Phase::Spawning { again, block }) = self.cores.get(i).map(|c| c.phase.clone())
        else {
            return;
        };
        if block.is_some() {
            self.out.push(Action::Unblock { node: i });
        }
        let p = self.confs[i].policy.clone();
        let c = &mut self.cores[i];
        if again {
            c.restarts = c.restarts.saturating_add(1);
        }
        c.started_ns = now;
        c.started_wall_ms = wall_ms;
        let ready_by = now.saturating_add(ns(p.ready_timeout));
        let phase = match ready {
            Readiness::Now => Phase::Running {
                proc_,
                stop_queued: None,
            },
            Readiness::After(d) => Phase::Starting {
                proc_,
                ready,
                ready_at: Some(now.saturating_add(d)),
                ready_by,
                timed_out: false,
                stop_queued: None,
            },
            Readiness::Told | Readiness::Starter(_) => Phase::Starting {
                proc_,
                ready,
                ready_at: None,
                ready_by,
                timed_out: false,
                stop_queued: None,
            },
        };
        let running = matches!(phase, Phase::Running { .. });
        let restarts = self.cores[i].restarts;
        // A `ready_check` runs first one interval after the spawn.
        self.cores[i].check_at = (matches!(phase, Phase::Starting { .. })
            && !p.ready_check.is_empty())
        .then(|| now.saturating_add(ns(p.ready_check_interval)));
        self.set(i, phase);
        let mut ev = event(EventKind::Spawned, i, proc_.pid);
        ev.a = restarts as u64;
        self.out.push(Action::Emit(ev));
        if running {
            self.out
                .push(Action::Emit(event(EventKind::Ready, i, proc_.pid)));
        }
    }

    /// The shell could not start node `i` at all.
    pub(super) fn spawn_failed(&mut self, i: Ix, errno: i32, now: Ns) {
        let Some(Phase::Spawning { again, block }) = self.cores.get(i).map(|c| c.phase.clone())
        else {
            return;
        };
        if block.is_some() {
            self.out.push(Action::Unblock { node: i });
        }
        if again {
            // A restart by policy that could not even exec is still one: it counts.
            self.cores[i].restarts = self.cores[i].restarts.saturating_add(1);
        }
        let exit = Exit::SpawnFailed(errno);
        self.cores[i].started_ns = now;
        self.cores[i].last_exit = Some(exit);
        let mut ev = event(EventKind::SpawnFailed, i, 0);
        ev.exit = Some(exit);
        self.out.push(Action::Emit(ev));
        self.after_death(i, 0, exit, now);
    }

    /// A process of node `i` that is not it blocks its start.
    pub(super) fn blocked(&mut self, i: Ix, by: u32, now: Ns) {
        let Some(Phase::Spawning { again, block }) = self.cores.get(i).map(|c| c.phase.clone())
        else {
            return;
        };
        let (prev_by, prev_ms) = match block {
            Some((b, ms)) => (Some(b), ms),
            None => (None, 0),
        };
        let changed = prev_by != Some(by);
        let block_ms = if changed {
            50
        } else {
            (prev_ms * 2).clamp(50, 5_000)
        };
        if changed && prev_by.is_some() {
            self.out.push(Action::Unblock { node: i });
        }
        self.set(
            i,
            Phase::Backoff {
                at: now.saturating_add(block_ms * 1_000_000),
                blocked_by: Some(by),
                block_ms,
                again,
            },
        );
        if changed {
            let mut ev = event(EventKind::Backoff, i, 0);
            ev.a = block_ms;
            ev.b = by as u64;
            self.out.push(Action::Emit(ev));
        }
    }

    /// A running copy of node `i` is the node itself: it is its main process now.
    pub(super) fn adopted(&mut self, i: Ix, proc_: Proc, started: (Ns, u64)) {
        // Only the answer to a spawn: a running copy found where one was to start.
        let Some(Phase::Spawning { block, .. }) = self.cores.get(i).map(|c| c.phase.clone()) else {
            return;
        };
        if block.is_some() {
            self.out.push(Action::Unblock { node: i });
        }
        let c = &mut self.cores[i];
        c.started_ns = started.0;
        c.started_wall_ms = started.1;
        self.set(
            i,
            Phase::Running {
                proc_,
                stop_queued: None,
            },
        );
    }

    /// Node `i`'s main process `pid` ended.
    pub(super) fn exited(
        &mut self,
        i: Ix,
        pid: u32,
        exit: Exit,
        leftovers: bool,
        by: Reporter,
        now: Ns,
    ) {
        // Seen by nobody (nothing of it is killed: its recorded pid may not have been its
        // last process), or already recorded by a predecessor (not recorded twice).
        let unseen = matches!(by, Reporter::Unseen | Reporter::Predecessor);
        let leftovers = leftovers && !unseen;
        let Some(phase) = self.cores.get(i).map(|c| c.phase.clone()) else {
            return;
        };
        if phase.proc_().map(|p| p.pid) != Some(pid) {
            return; // not its main process (a stale report)
        }
        self.out.push(Action::Release { node: i, pid });
        if let Phase::Starting {
            ready: Readiness::Starter(told),
            ready_by,
            stop_queued: None,
            ..
        } = phase
        {
            if exit == Exit::Code(0) {
                // A forking daemon's starter is done: its main process comes from its PID file.
                self.set(
                    i,
                    Phase::AwaitingMain {
                        starter: pid,
                        ready_by,
                        told,
                    },
                );
                self.out.push(Action::ReadPidFile { node: i });
                return;
            }
        }
        self.cores[i].last_exit = Some(exit);
        let then = match phase {
            Phase::Stopping { then, .. } => Some(then),
            Phase::Running {
                stop_queued: Some(t),
                ..
            }
            | Phase::Starting {
                stop_queued: Some(t),
                ..
            } => Some(t),
            _ => None,
        };
        let mut ev = event(EventKind::Exited, i, pid);
        ev.exit = Some(exit);
        if by != Reporter::Predecessor {
            self.out.push(Action::Emit(ev));
        }
        if leftovers && self.cgroups {
            // Whatever is left in its cgroup is killed; the end applies once it is empty.
            self.out.push(Action::KillLeftovers {
                node: i,
                pid,
                group: true,
                stop: then.is_some(),
            });
            self.set(i, Phase::Draining { pid, exit, then });
            return;
        }
        // Leftovers of its process group (and, without cgroups, those that escaped it but
        // carry its identity) end with it: after a stop, and before its replacement starts.
        if !unseen && (!matches!(exit, Exit::Unknown) || then.is_some()) {
            self.out.push(Action::KillLeftovers {
                node: i,
                pid,
                group: false,
                stop: then.is_some(),
            });
        }
        self.end(i, pid, exit, then, now);
    }

    /// Node `i`'s process `pid` ended and nothing of it is left: what follows.
    pub(super) fn end(&mut self, i: Ix, pid: u32, exit: Exit, then: Option<Then>, now: Ns) {
        match then {
            // Part of an ordered start: it waits its turn there.
            Some(Then::Restart) if !self.shutting_down && self.in_start_wave(i) => {
                self.set(i, Phase::Queued { was_failed: false })
            }
            Some(Then::Restart) if !self.shutting_down => self.spawn(i, false),
            Some(Then::Fail) => {
                self.set(i, Phase::Failed);
                self.out.push(Action::Emit(event(EventKind::Failed, i, 0)));
            }
            Some(Then::Retire) => {
                self.cores[i].phase = Phase::Stopped;
                self.rearm(i);
                self.out.push(Action::Drop { node: i });
            }
            Some(Then::Hold) if !self.shutting_down => {
                self.set(i, Phase::Held);
                self.out.push(Action::Emit(event(EventKind::Stopped, i, 0)));
            }
            Some(_) => {
                self.set(i, Phase::Stopped);
                self.out.push(Action::Emit(event(EventKind::Stopped, i, 0)));
            }
            None => {
                let crash = exit.is_failure() && !matches!(exit, Exit::Unknown);
                let uptime_ms = now.saturating_sub(self.cores[i].started_ns) / 1_000_000;
                self.after_death(i, pid, exit, now);
                if crash && pid != 0 {
                    // After the replacement is spawned: restart latency first.
                    self.out.push(Action::CrashReport {
                        node: i,
                        pid,
                        exit,
                        uptime_ms,
                    });
                }
            }
        }
    }

    /// The restart policy, for a node whose process ended on its own (or never started).
    pub(super) fn after_death(&mut self, i: Ix, _pid: u32, exit: Exit, now: Ns) {
        if self.shutting_down {
            self.set(i, Phase::Stopped);
            self.out.push(Action::Emit(event(EventKind::Stopped, i, 0)));
            return;
        }
        let p = self.confs[i].policy.clone();
        let started = self.cores[i].started_ns;
        match policy::decide(&p, &mut self.cores[i].history.0, exit, started, now) {
            Decision::RestartAt(at) if at <= now => self.spawn(i, true),
            Decision::RestartAt(at) => {
                self.set(
                    i,
                    Phase::Backoff {
                        at,
                        blocked_by: None,
                        block_ms: 0,
                        again: true,
                    },
                );
                let mut ev = event(EventKind::Backoff, i, 0);
                ev.a = (at - now) / 1_000_000;
                self.out.push(Action::Emit(ev));
            }
            Decision::Stop => {
                self.set(i, Phase::Stopped);
                self.out.push(Action::Emit(event(EventKind::Stopped, i, 0)));
            }
            Decision::Fail { quick_deaths } => {
                let text = if quick_deaths == 0 {
                    format!(
                        "ended with {} and its restart policy does not restart it: failed; `broctld start {{node}}` starts it again",
                        exit.describe()
                    )
                } else {
                    format!("giving up ({quick_deaths} quick deaths); `broctld start {{node}}` tries again")
                };
                self.out.push(Action::Log { node: i, text });
                self.set(i, Phase::Failed);
                let mut ev = event(EventKind::Failed, i, 0);
                ev.a = quick_deaths as u64;
                self.out.push(Action::Emit(ev));
            }
        }
    }

    /// A forking daemon's PID file named its main process, or a running node's main process
    /// moved (`MAINPID=`): that process is the node's main process from now on.
    pub(super) fn main_pid(&mut self, i: Ix, proc_: Proc, now: Ns) {
        let Some(phase) = self.cores.get(i).map(|c| c.phase.clone()) else {
            return;
        };
        let (ready_by, told) = match phase {
            Phase::AwaitingMain { ready_by, told, .. } => (ready_by, told),
            Phase::Running { stop_queued, .. } => {
                return self.set(i, Phase::Running { proc_, stop_queued });
            }
            Phase::Starting {
                ready,
                ready_at,
                ready_by,
                timed_out,
                stop_queued,
                ..
            } => {
                return self.set(
                    i,
                    Phase::Starting {
                        proc_,
                        ready,
                        ready_at,
                        ready_by,
                        timed_out,
                        stop_queued,
                    },
                );
            }
            Phase::Stopping { kill_at, then, .. } => {
                return self.set(
                    i,
                    Phase::Stopping {
                        proc_,
                        kill_at,
                        then,
                    },
                );
            }
            _ => return,
        };
        let _ = now;
        let phase = if told {
            Phase::Starting {
                proc_,
                ready: Readiness::Told,
                ready_at: None,
                ready_by,
                timed_out: false,
                stop_queued: None,
            }
        } else {
            Phase::Running {
                proc_,
                stop_queued: None,
            }
        };
        let ready = matches!(phase, Phase::Running { .. });
        self.set(i, phase);
        if ready {
            self.out
                .push(Action::Emit(event(EventKind::Ready, i, proc_.pid)));
        }
    }

    /// A forking daemon's PID file named no process of it in time: its start failed.
    pub(super) fn main_refused(&mut self, i: Ix, named: u32, now: Ns) {
        let Some(Phase::AwaitingMain { starter, .. }) = self.cores.get(i).map(|c| c.phase.clone())
        else {
            return;
        };
        let exit = Exit::PidFileRefused(named);
        let mut ev = event(EventKind::SpawnFailed, i, starter);
        ev.exit = Some(exit);
        self.out.push(Action::Emit(ev));
        self.give_up_main(i, starter, exit, None, now);
    }

    /// Node `i` said it is ready.
    pub(super) fn ready(&mut self, i: Ix) {
        let Some(Phase::Starting {
            proc_, stop_queued, ..
        }) = self.cores.get(i).map(|c| c.phase.clone())
        else {
            return;
        };
        self.set(i, Phase::Running { proc_, stop_queued });
        self.out
            .push(Action::Emit(event(EventKind::Ready, i, proc_.pid)));
    }

    /// Node `i`'s cgroup is empty.
    pub(super) fn group_empty(&mut self, i: Ix, now: Ns) {
        let Some(phase) = self.cores.get(i).map(|c| c.phase.clone()) else {
            return;
        };
        match phase {
            Phase::Draining { pid, exit, then } => self.end(i, pid, exit, then, now),
            Phase::Backoff {
                blocked_by: Some(_),
                again,
                block_ms,
                ..
            } => {
                self.out.push(Action::Unblock { node: i });
                self.set(
                    i,
                    Phase::Backoff {
                        at: now,
                        blocked_by: None,
                        block_ms,
                        again,
                    },
                );
            }
            _ => {}
        }
    }

    /// What blocked node `i`'s start is gone: check again now.
    pub(super) fn blocker_gone(&mut self, i: Ix, now: Ns) {
        if let Some(Phase::Backoff {
            blocked_by: Some(_),
            again,
            block_ms,
            ..
        }) = self.cores.get(i).map(|c| c.phase.clone())
        {
            self.out.push(Action::Unblock { node: i });
            self.set(
                i,
                Phase::Backoff {
                    at: now,
                    blocked_by: None,
                    block_ms,
                    again,
                },
            );
        }
    }

    /// A timer of node `i` is due.
    /// Node `i`'s `ready_check` did not pass: while it is starting, the next run is due one
    /// interval from now.
    pub(super) fn check_pending(&mut self, i: Ix, now: Ns) {
        let Some(p) = self.confs.get(i).map(|c| c.policy.clone()) else {
            return;
        };
        if p.ready_check.is_empty() || !matches!(self.cores[i].phase, Phase::Starting { .. }) {
            return;
        }
        self.cores[i].check_at = Some(now.saturating_add(ns(p.ready_check_interval)));
        self.rearm(i);
    }

    /// `WATCHDOG=1` from node `i`: while it runs with `watchdog_ms`, the next is due within it.
    pub(super) fn watchdog_ping(&mut self, i: Ix, now: Ns) {
        let Some(w) = self.confs.get(i).map(|c| c.policy.watchdog) else {
            return;
        };
        if w.is_zero() || !matches!(self.cores[i].phase, Phase::Running { .. }) {
            return;
        }
        self.cores[i].watchdog_at = Some(now.saturating_add(w.as_nanos() as Ns));
        self.rearm(i);
    }

    pub(super) fn timer(&mut self, i: Ix, kind: TimerKind, now: Ns) {
        let Some(phase) = self.cores.get(i).map(|c| c.phase.clone()) else {
            return;
        };
        match (kind, phase) {
            (
                TimerKind::Retry,
                Phase::Backoff {
                    at,
                    blocked_by,
                    block_ms,
                    again,
                },
            ) if at <= now => {
                // Remember the blocker: a recheck that finds the same one waits longer.
                self.spawn_with(i, again, blocked_by.map(|b| (b, block_ms)));
            }
            // Its ready check is due: the shell runs it (one at a time: none is due while one
            // runs).
            (TimerKind::ReadyCheck, Phase::Starting { .. })
                if self.cores[i].check_at.is_some_and(|t| t <= now) =>
            {
                self.cores[i].check_at = None;
                self.rearm(i);
                self.out.push(Action::RunReadyCheck { node: i });
            }
            // No WATCHDOG=1 in time: killed; its exit follows the restart policy.
            (TimerKind::Watchdog, Phase::Running { proc_, .. })
                if self.cores[i].watchdog_at.is_some_and(|t| t <= now) =>
            {
                let ms = self.confs[i].policy.watchdog.as_millis();
                self.out.push(Action::Log {
                    node: i,
                    text: format!(
                        "no WATCHDOG=1 within {ms} ms; killing pid {} (its restart policy applies)",
                        proc_.pid
                    ),
                });
                self.out.push(Action::Signal {
                    node: i,
                    pid: proc_.pid,
                    signal: 9,
                });
                self.cores[i].watchdog_at = None;
                self.rearm(i);
            }
            (
                TimerKind::Kill,
                Phase::Stopping {
                    proc_,
                    kill_at: Some(t),
                    then,
                },
            ) if t <= now => {
                let secs = self.confs[i].policy.stop_timeout.as_millis();
                self.out.push(Action::Log {
                    node: i,
                    text: format!("still running {secs} ms after its stop signal; sending SIGKILL"),
                });
                self.out.push(Action::Signal {
                    node: i,
                    pid: proc_.pid,
                    signal: 9,
                });
                self.set(
                    i,
                    Phase::Stopping {
                        proc_,
                        kill_at: None,
                        then,
                    },
                );
                self.out
                    .push(Action::Emit(event(EventKind::Killed, i, proc_.pid)));
            }
            (
                TimerKind::ReadyAfter,
                Phase::Starting {
                    proc_,
                    ready_at: Some(t),
                    stop_queued,
                    ..
                },
            ) if t <= now => {
                self.set(i, Phase::Running { proc_, stop_queued });
                self.out
                    .push(Action::Emit(event(EventKind::Ready, i, proc_.pid)));
            }
            (
                TimerKind::ReadyBy,
                Phase::AwaitingMain {
                    starter, ready_by, ..
                },
            ) if ready_by <= now => {
                let ms = self.confs[i].policy.ready_timeout.as_millis();
                self.out.push(Action::Log {
                    node: i,
                    text: format!("its pid_file named no process of it within {ms} ms; killing what is left of it"),
                });
                self.give_up_main(i, starter, Exit::SpawnFailed(ETIMEDOUT), None, now);
            }
            (
                TimerKind::ReadyBy,
                Phase::Starting {
                    proc_,
                    ready,
                    ready_at,
                    ready_by,
                    timed_out: false,
                    stop_queued,
                },
            ) if ready_by <= now => {
                self.set(
                    i,
                    Phase::Starting {
                        proc_,
                        ready,
                        ready_at,
                        ready_by,
                        timed_out: true,
                        stop_queued,
                    },
                );
                let ms = self.confs[i].policy.ready_timeout.as_millis();
                match self.confs[i].policy.ready_timeout_action {
                    ReadyTimeoutAction::Wait => {
                        if !self.start_waves.is_empty() {
                            self.out.push(Action::Log {
                                node: i,
                                text: format!(
                                    "not ready after {ms} ms; the next stage starts anyway"
                                ),
                            });
                        }
                    }
                    ReadyTimeoutAction::Restart => {
                        self.out.push(Action::Log {
                            node: i,
                            text: format!(
                                "not ready after {ms} ms; restarting it (ready_timeout_action)"
                            ),
                        });
                        self.stop_node(i, Then::Restart, now);
                    }
                    ReadyTimeoutAction::Fail => {
                        self.out.push(Action::Log {
                            node: i,
                            text: format!("not ready after {ms} ms; stopping it, it stays failed (ready_timeout_action)"),
                        });
                        self.stop_node(i, Then::Fail, now);
                    }
                }
            }
            _ => {}
        }
    }

    /// A forking daemon that never named its main process: what is left of it is killed, and
    /// it ends with `exit` (its group drained first when it has one).
    fn give_up_main(&mut self, i: Ix, starter: u32, exit: Exit, then: Option<Then>, now: Ns) {
        self.cores[i].last_exit = Some(exit);
        self.out.push(Action::KillLeftovers {
            node: i,
            pid: 0,
            group: self.cgroups,
            stop: then.is_some(),
        });
        if self.cgroups {
            self.set(
                i,
                Phase::Draining {
                    pid: starter,
                    exit,
                    then,
                },
            );
        } else {
            self.end(i, starter, exit, then, now);
        }
    }

    /// Stops node `i` now (not queued), then `then`. Published before the signal is sent, so a
    /// Supervisor killed in between leaves a record its successor finishes.
    pub(super) fn stop_node(&mut self, i: Ix, then: Then, now: Ns) {
        let phase = self.cores[i].phase.clone();
        match phase {
            Phase::Starting { proc_, .. } | Phase::Running { proc_, .. } => {
                let p = self.confs[i].policy.clone();
                let kill_at = now.saturating_add(ns(p.stop_timeout));
                self.set(
                    i,
                    Phase::Stopping {
                        proc_,
                        kill_at: Some(kill_at),
                        then,
                    },
                );
                self.out.push(Action::Signal {
                    node: i,
                    pid: proc_.pid,
                    signal: p.stop_signal,
                });
                let mut ev = event(EventKind::Stopping, i, proc_.pid);
                ev.a = p.stop_signal as u64;
                ev.b = p.stop_timeout.as_millis() as u64;
                self.out.push(Action::Emit(ev));
            }
            Phase::Stopping {
                proc_,
                kill_at,
                then: old,
            } => {
                // A retiring node stays retiring; otherwise the latest word counts.
                let then = if old == Then::Retire { old } else { then };
                if then != old {
                    self.set(
                        i,
                        Phase::Stopping {
                            proc_,
                            kill_at,
                            then,
                        },
                    );
                }
            }
            Phase::Draining {
                pid,
                exit,
                then: old,
            } => {
                let then = if old == Some(Then::Retire) {
                    old
                } else {
                    Some(then)
                };
                if then != old {
                    self.set(i, Phase::Draining { pid, exit, then });
                }
            }
            Phase::AwaitingMain { starter, .. } => {
                self.give_up_main(i, starter, Exit::Code(0), Some(then), now);
            }
            Phase::Queued { .. } | Phase::Failed | Phase::Held | Phase::Backoff { .. } => {
                if let Phase::Backoff {
                    blocked_by: Some(_),
                    ..
                } = phase
                {
                    // What blocked its start (a copy that escaped its group) is the node's
                    // too: a stop ends it.
                    self.out.push(Action::Signal {
                        node: i,
                        pid: 0,
                        signal: 9,
                    });
                }
                if let Phase::Backoff {
                    blocked_by: Some(_),
                    ..
                } = phase
                {
                    self.out.push(Action::Unblock { node: i });
                }
                match then {
                    Then::Restart => self.spawn(i, false),
                    Then::Hold if !self.shutting_down => {
                        self.set(i, Phase::Held);
                        self.out.push(Action::Emit(event(EventKind::Stopped, i, 0)));
                    }
                    Then::Retire => {
                        self.cores[i].phase = Phase::Stopped;
                        self.rearm(i);
                        self.out.push(Action::Drop { node: i });
                    }
                    Then::Fail => {
                        self.set(i, Phase::Failed);
                        self.out.push(Action::Emit(event(EventKind::Failed, i, 0)));
                    }
                    Then::Down | Then::Hold => {
                        self.set(i, Phase::Stopped);
                        self.out.push(Action::Emit(event(EventKind::Stopped, i, 0)));
                    }
                }
            }
            Phase::Stopped => match then {
                Then::Restart => self.spawn(i, false),
                Then::Retire => self.out.push(Action::Drop { node: i }),
                Then::Hold if !self.shutting_down => self.set(i, Phase::Held),
                _ => {}
            },
            Phase::Spawning { .. } => {}
        }
    }

    /// Starts node `i` now (not queued): a stopped or failed node spawns (a failed one with
    /// its quick deaths forgotten); a stopping one starts again once down; a backoff's delay
    /// stands; a running one keeps running (a queued stop of it is cancelled).
    pub(super) fn start_node(&mut self, i: Ix) {
        let phase = self.cores[i].phase.clone();
        match phase {
            Phase::Stopped | Phase::Held => self.spawn(i, false),
            Phase::Failed | Phase::Queued { was_failed: true } => {
                let p = self.confs[i].policy.clone();
                self.cores[i].history.0.reset(&p);
                self.spawn(i, false);
            }
            Phase::Queued { .. } => self.spawn(i, false),
            Phase::Stopping {
                proc_,
                kill_at,
                then,
            } if then != Then::Retire && then != Then::Restart => {
                self.set(
                    i,
                    Phase::Stopping {
                        proc_,
                        kill_at,
                        then: Then::Restart,
                    },
                );
            }
            Phase::Draining { pid, exit, then }
                if then != Some(Then::Retire) && then != Some(Then::Restart) =>
            {
                self.set(
                    i,
                    Phase::Draining {
                        pid,
                        exit,
                        then: Some(Then::Restart),
                    },
                );
            }
            // A queued stop is cancelled.
            Phase::Running {
                stop_queued: Some(_),
                ..
            }
            | Phase::Starting {
                stop_queued: Some(_),
                ..
            } => {
                if let Some(running) = phase.with_stop_queued(None) {
                    self.set(i, running);
                }
            }
            _ => {}
        }
    }
}

/// Linux's ETIMEDOUT (the machine links no libc): a forking daemon that never named its main
/// process within its ready timeout.
const ETIMEDOUT: i32 = 110;
