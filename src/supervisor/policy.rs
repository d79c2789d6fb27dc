//! The restart policy as a pure function of a node's history, so it can be tested without
//! processes: should a node that just ended start again, when, and with what next delay.
//!
//! The delay is measured between successive *starts* (as s6 does), not from the death: a node
//! that ran longer than the current delay is restarted at once, so a long-running node that is
//! killed is replaced immediately; a node that dies quickly waits out the rest of the delay.
//! Each quick death (a run shorter than `quick_death`) multiplies the delay by
//! `restart_delay_factor`, up to `restart_delay_max`. A run of at least
//! `restart_reset` resets the delay. `give_up_after` deaths shorter than `quick_death` within
//! `give_up_window` end in `failed`. A start that failed (the program could not be started,
//! or a `pid_file` named no process of the node by the ready timeout) is a quick death however
//! long it took, and `give_up_after` failed starts in a row end in `failed` whatever the window
//! (a start that waits out a 10 s ready timeout each time would never fit 5 in a 10 s window).

use crate::config::{Policy, RestartPolicy};
use crate::protocol::node::Exit;
use std::collections::VecDeque;
use std::time::Duration;

/// A node's restart history (in the Supervisor's memory only).
#[derive(Debug, Clone)]
pub struct History {
    /// The current delay between starts.
    pub delay: Duration,
    /// Times (mono ns) of quick deaths still inside the window.
    pub quick_deaths: VecDeque<u64>,
    /// Starts that failed in a row (see [`Exit::never_ran`]).
    pub failed_starts: u32,
}

impl History {
    /// A fresh history for `policy`.
    pub fn new(policy: &Policy) -> History {
        History {
            delay: policy.restart_delay,
            quick_deaths: VecDeque::new(),
            failed_starts: 0,
        }
    }

    /// Forgets past deaths (after a manual `start` of a failed node).
    pub fn reset(&mut self, policy: &Policy) {
        *self = History::new(policy);
    }
}

/// What to do after a node's process ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again at this monotonic time (ns); may be now or in the past.
    RestartAt(u64),
    /// Do not restart: it ended cleanly (or policy says never).
    Stop,
    /// Do not restart: it failed (gave up, or policy says never and it failed).
    Fail {
        /// Quick deaths counted in the window (0 when policy is `never`).
        quick_deaths: u32,
    },
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Decides what happens after a process that started at `started` (mono ns) ended with `exit`
/// at `now`. Updates `history`.
pub fn decide(
    policy: &Policy,
    history: &mut History,
    exit: Exit,
    started: u64,
    now: u64,
) -> Decision {
    let wanted = match policy.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit.is_failure(),
        RestartPolicy::Never => false,
    };
    if !wanted {
        return if exit.is_failure() {
            Decision::Fail { quick_deaths: 0 }
        } else {
            Decision::Stop
        };
    }
    // A start that failed never ran, however long it waited (a ready timeout).
    let run = if exit.never_ran() {
        history.failed_starts = history.failed_starts.saturating_add(1);
        0
    } else {
        history.failed_starts = 0;
        now.saturating_sub(started)
    };
    if run >= ns(policy.restart_reset) {
        history.delay = policy.restart_delay;
    }
    if run < ns(policy.quick_death) {
        history.quick_deaths.push_back(now);
    }
    let window = ns(policy.give_up_window);
    while let Some(&t) = history.quick_deaths.front() {
        if now.saturating_sub(t) > window {
            history.quick_deaths.pop_front();
        } else {
            break;
        }
    }
    let limit = policy.give_up_after as usize;
    if limit > 0 && (history.quick_deaths.len() >= limit || history.failed_starts as usize >= limit)
    {
        return Decision::Fail {
            quick_deaths: history
                .quick_deaths
                .len()
                .max(history.failed_starts as usize) as u32,
        };
    }
    let mut delay = history.delay;
    if exit.never_ran() {
        // A program that cannot even be started must not spin the loop, whatever the config.
        delay = delay.max(Duration::from_millis(100));
    }
    let due = started.saturating_add(ns(delay));
    if run < ns(policy.quick_death) {
        // A quick death: the next one waits longer. (Judged against `quick_death`, so a death
        // that the Supervisor reaped late, while busy, still counts as quick.)
        let grown = history.delay.as_secs_f64() * policy.restart_delay_factor;
        history.delay = Duration::from_secs_f64(grown.min(policy.restart_delay_max.as_secs_f64()))
            .max(policy.restart_delay.min(policy.restart_delay_max));
    }
    Decision::RestartAt(due.max(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn policy() -> Policy {
        Policy::default()
    }

    #[test]
    fn long_runner_killed_restarts_at_once_every_time() {
        let p = policy();
        let mut h = History::new(&p);
        let mut t = 0;
        for _ in 0..50 {
            let started = t;
            t += 1500 * MS;
            let d = decide(
                &p,
                &mut h,
                Exit::Signal {
                    signal: 9,
                    core: false,
                },
                started,
                t,
            );
            assert_eq!(d, Decision::RestartAt(t));
        }
    }

    #[test]
    fn quick_deaths_back_off_exponentially_then_fail() {
        let p = policy(); // 100 ms, x2, give up after 5 quick deaths in 10 s
        let mut h = History::new(&p);
        let mut started = 0;
        let mut gaps = vec![];
        loop {
            let died = started + MS;
            match decide(&p, &mut h, Exit::Code(1), started, died) {
                Decision::RestartAt(at) => {
                    gaps.push((at - started) / MS);
                    started = at;
                }
                Decision::Fail { quick_deaths } => {
                    assert_eq!(quick_deaths, 5);
                    break;
                }
                Decision::Stop => panic!("stopped"),
            }
        }
        assert_eq!(gaps, vec![100, 200, 400, 800]);
    }

    #[test]
    fn on_failure_does_not_restart_a_clean_exit_and_never_fails_a_crash() {
        let mut p = policy();
        p.restart = RestartPolicy::OnFailure;
        let mut h = History::new(&p);
        assert_eq!(decide(&p, &mut h, Exit::Code(0), 0, 5 * MS), Decision::Stop);
        p.restart = RestartPolicy::Never;
        assert_eq!(
            decide(&p, &mut h, Exit::Code(2), 0, 5 * MS),
            Decision::Fail { quick_deaths: 0 }
        );
    }

    #[test]
    fn a_long_run_resets_the_delay() {
        let p = policy();
        let mut h = History::new(&p);
        decide(&p, &mut h, Exit::Code(1), 0, MS);
        assert_eq!(h.delay, Duration::from_millis(200));
        decide(&p, &mut h, Exit::Code(1), 100 * MS, 100 * MS + 31_000 * MS);
        assert_eq!(h.delay, Duration::from_millis(100));
    }

    /// A `pid_file` that names no process of the node fails each start only at the ready
    /// timeout (10 s by default): five such starts never fit in the 10 s window, yet they are
    /// given up after `give_up_after` in a row; a run in between starts the count again.
    #[test]
    fn failed_starts_give_up_however_long_each_waited() {
        let p = policy();
        let mut h = History::new(&p);
        let mut started = 0;
        let mut tries = 0;
        let failed = loop {
            tries += 1;
            let ended = started + 10_000 * MS;
            match decide(&p, &mut h, Exit::PidFileRefused(1), started, ended) {
                Decision::RestartAt(at) => started = at,
                d => break d,
            }
            assert!(tries < 50, "never gave up");
        };
        assert_eq!(failed, Decision::Fail { quick_deaths: 5 });
        assert_eq!(tries, 5);
        let mut h = History::new(&p);
        for k in 0..20u64 {
            let t = k * 60_000 * MS;
            let exit = if k % 4 == 3 {
                Exit::Code(1)
            } else {
                Exit::SpawnFailed(libc::ENOENT)
            };
            // Three failed starts, then one that ran a minute: never five in a row.
            let started = if exit.never_ran() { t } else { t - 60_000 * MS };
            assert!(matches!(
                decide(&p, &mut h, exit, started, t),
                Decision::RestartAt(_)
            ));
        }
    }

    #[test]
    fn delay_is_capped() {
        let mut p = policy();
        p.give_up_after = 0;
        let mut h = History::new(&p);
        let mut started = 0;
        for _ in 0..40 {
            if let Decision::RestartAt(at) =
                decide(&p, &mut h, Exit::Code(1), started, started + MS)
            {
                started = at;
            }
        }
        assert_eq!(h.delay, p.restart_delay_max);
    }
}
