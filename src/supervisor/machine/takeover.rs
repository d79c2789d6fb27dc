//! Taking over from a dead predecessor as a pure function: what the region recorded of each
//! node, and what the kernel says of it now (gathered by the shell: is its recorded process
//! alive and the node's, did the guardian report its exit, what else of it lives), give each
//! node's phase and the actions that resume it. The takeover table in docs/design.md lists
//! the cases.

use super::*;
use crate::protocol::node::NodeRecord;

/// What the kernel says about a node's recorded process (or, with no record, about any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The recorded process lives and is the node (it is watched now).
    Alive,
    /// The recorded process ended while no Supervisor watched, and the guardian reported how.
    Reported(Exit),
    /// The recorded process is not running: the shell settles its end from what it can still
    /// learn (its status while it is a zombie, a report that will come), feeding the exit
    /// then; until then the node keeps its recorded phase and process.
    Ended,
    /// The recorded process is gone and how it ended cannot be known (or there was none).
    Gone,
    /// No process was recorded, and this one is the node's main process (adopted).
    Unrecorded(Proc),
    /// Whether a process of the node lives cannot be told (an OS error, a process of it that
    /// is not its main process): its start waits.
    Unknown(u32),
}

/// Everything the shell found about one node of the new table.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The predecessor's record of it (by name), if it had one and it checked out.
    pub record: Option<NodeRecord>,
    /// The kernel's answer.
    pub found: Found,
    /// Its cgroup still holds processes.
    pub leftovers: bool,
    /// A down marker says it is to stay stopped (no record: autostart skips it).
    pub held_down: bool,
}

/// The lifecycle fields of node `i`'s record, as the machine has them (`name`: the node's).
pub fn record(m: &Machine, i: Ix, name: &str) -> NodeRecord {
    let c = m.core(i);
    let proc_ = c.phase.proc_();
    NodeRecord {
        name: name.to_owned(),
        node_type: 0,
        state: c.phase.state(),
        pid: proc_.map(|p| p.pid),
        pid_start: proc_.map(|p| p.start).unwrap_or(0),
        started_mono_ns: c.started_ns,
        started_wall_ms: c.started_wall_ms,
        restarts: c.restarts,
        last_exit: c.last_exit,
        deadline_mono_ns: m.deadline(i),
        intent: m.intent(i),
        blocked_by: m.blocked_by(i),
    }
}

/// How a resumed `starting` node becomes ready: told (`told`: the shell watches its FIFO,
/// file, check or socket again), or `ready_after_ms` after it started, or (neither) it is up.
fn resumed_readiness(rec: &NodeRecord, policy: &Policy, told: bool) -> (Readiness, Option<Ns>) {
    if told {
        (Readiness::Told, None)
    } else if !policy.ready_after.is_zero() {
        let d = policy.ready_after.as_nanos() as Ns;
        (
            Readiness::After(d),
            Some(rec.started_mono_ns.saturating_add(d)),
        )
    } else {
        (Readiness::Now, None)
    }
}

/// The machine a successor starts with, and the actions that resume every node: each node
/// of `confs` (the config now running) with the facts the shell found (same index).
/// `told[i]`: node `i` becomes ready when told (see [`Readiness::Told`]). `finish_shutdown`:
/// the predecessor was shutting down (nothing starts, every node stops; no death is
/// restarted).
pub fn take_over(
    confs: Vec<Conf>,
    cgroups: bool,
    facts: &[Facts],
    told: &[bool],
    finish_shutdown: bool,
    now: Ns,
) -> (Machine, Vec<Action>) {
    let mut m = Machine::new(confs, cgroups);
    if finish_shutdown {
        // Before any death is applied: a death in the gap is not restarted.
        m.set_shutting_down();
    }
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    let mut deaths = Vec::new();
    let mut unseen = Vec::new();
    let mut out = Vec::new();
    for (i, f) in facts.iter().enumerate().take(m.len()) {
        let policy = m.conf(i).policy.clone();
        let Some(rec) = &f.record else {
            match f.found {
                Found::Unrecorded(p) => {
                    let mut core = Core::new(&policy);
                    core.phase = Phase::Running {
                        proc_: p,
                        stop_queued: None,
                    };
                    m.restore(i, core);
                    let mut ev = event(EventKind::Adopted, i, p.pid);
                    ev.pid = p.pid;
                    out.push(Action::Emit(ev));
                }
                Found::Unknown(by) => {
                    let mut core = Core::new(&policy);
                    core.phase = Phase::Backoff {
                        at: now,
                        blocked_by: Some(by),
                        block_ms: 0,
                        again: false,
                    };
                    m.restore(i, core);
                }
                _ if policy.autostart && !f.held_down => starts.push(i),
                _ => {}
            }
            continue;
        };
        let it = rec.intent;
        let mut core = Core::new(&policy);
        core.restarts = rec.restarts;
        core.last_exit = rec.last_exit;
        core.started_ns = rec.started_mono_ns;
        core.started_wall_ms = rec.started_wall_ms;
        let proc_ = rec.pid.map(|pid| Proc {
            pid,
            start: rec.pid_start,
        });
        let then_of = |it: Intent| {
            if it.has(Intent::RETIRING) {
                Then::Retire
            } else if it.has(Intent::RESTART_PENDING) {
                Then::Restart
            } else {
                Then::Down
            }
        };
        let stop_queued =
            it.has(Intent::STOP_QUEUED)
                .then_some(if it.has(Intent::RESTART_PENDING) {
                    Then::Restart
                } else {
                    Then::Down
                });
        // The phase the record describes, with its process (alive, or ended in the gap).
        let live_phase = |p: Proc| match rec.state {
            NodeState::Stopping => Phase::Stopping {
                proc_: p,
                kill_at: match (it.has(Intent::KILLED), rec.deadline_mono_ns) {
                    (true, _) => None,
                    (false, 0) => Some(now + policy.stop_timeout.as_nanos() as Ns),
                    (false, d) => Some(d),
                },
                then: then_of(it),
            },
            NodeState::Starting => {
                let (ready, ready_at) =
                    resumed_readiness(rec, &policy, told.get(i).copied().unwrap_or(false));
                if ready == Readiness::Now {
                    Phase::Running {
                        proc_: p,
                        stop_queued,
                    }
                } else {
                    Phase::Starting {
                        proc_: p,
                        ready,
                        ready_at,
                        ready_by: rec.started_mono_ns + policy.ready_timeout.as_nanos() as Ns,
                        timed_out: it.has(Intent::READY_TIMED_OUT),
                        stop_queued,
                    }
                }
            }
            _ => Phase::Running {
                proc_: p,
                stop_queued,
            },
        };
        match (f.found, proc_) {
            (Found::Alive, Some(p)) => {
                core.phase = live_phase(p);
                if matches!(
                    core.phase,
                    Phase::Running {
                        stop_queued: Some(_),
                        ..
                    } | Phase::Starting {
                        stop_queued: Some(_),
                        ..
                    }
                ) {
                    stops.push(i);
                }
                m.restore(i, core);
                out.push(Action::Emit(event(EventKind::Adopted, i, p.pid)));
            }
            (Found::Ended, Some(p)) => {
                core.phase = live_phase(p);
                m.restore(i, core);
            }
            (Found::Reported(exit), Some(p)) => {
                // Ended while no Supervisor watched: handled as the exit it was.
                core.phase = live_phase(p);
                m.restore(i, core);
                deaths.push((i, p.pid, exit));
            }
            (Found::Unrecorded(p), None) => {
                // A start under way when its predecessor died (published `starting`, no pid
                // yet): the copy it spawned runs, and is the node.
                core.phase = Phase::Running {
                    proc_: p,
                    stop_queued: None,
                };
                core.started_ns = now;
                m.restore(i, core);
                out.push(Action::Emit(event(EventKind::Adopted, i, p.pid)));
            }
            (Found::Unknown(by), _) => {
                // Never evidence: the node may run. Its start waits until a check succeeds.
                core.phase = Phase::Backoff {
                    at: now,
                    blocked_by: Some(by),
                    block_ms: 0,
                    again: false,
                };
                m.restore(i, core);
            }
            (_, Some(p)) => {
                // It ended while no Supervisor watched and nobody could say how: recorded as
                // unknown, once; a stop's follow-up or its restart policy decides.
                core.phase = live_phase(p);
                m.restore(i, core);
                deaths.push((i, p.pid, Exit::Unknown));
            }
            _ => {
                core.phase = match rec.state {
                    NodeState::Stopped if it.has(Intent::RESTART_PENDING) => {
                        starts.push(i);
                        Phase::Stopped
                    }
                    NodeState::Stopped => Phase::Stopped,
                    NodeState::Failed => Phase::Failed,
                    // Its main process had died and its group was being emptied: that end
                    // applies, with the exit recorded.
                    // A stopping node with no process: its main process had ended and its group
                    // was being emptied. That end applies (a death's by its restart policy),
                    // with the exit recorded.
                    NodeState::Stopping if rec.pid.is_none() => Phase::Draining {
                        pid: 0,
                        exit: rec.last_exit.unwrap_or(Exit::Unknown),
                        then: (!it.has(Intent::DRAINING_DEATH)).then(|| then_of(it)),
                    },
                    NodeState::Stopping if it.has(Intent::RESTART_PENDING) => {
                        starts.push(i);
                        Phase::Stopped
                    }
                    NodeState::Stopping => Phase::Stopped,
                    NodeState::Starting => {
                        starts.push(i);
                        if it.has(Intent::WAS_FAILED) {
                            Phase::Failed
                        } else {
                            Phase::Stopped
                        }
                    }
                    NodeState::Backoff => Phase::Backoff {
                        at: match (rec.deadline_mono_ns, rec.blocked_by) {
                            (_, Some(_)) | (0, _) => now,
                            (d, None) => d,
                        },
                        blocked_by: None,
                        block_ms: 0,
                        again: true,
                    },
                    // Running with no pid recorded: it ran and ended unseen (or its pid was
                    // lost): its restart policy decides, and the start that follows finds (and
                    // adopts) it if it still runs.
                    NodeState::Running => {
                        unseen.push(i);
                        Phase::Stopped
                    }
                };
                if let Phase::Draining { .. } = core.phase {
                    m.restore(i, core);
                    if f.leftovers && cgroups {
                        out.push(Action::KillLeftovers {
                            node: i,
                            pid: 0,
                            group: true,
                            stop: false,
                        });
                    } else {
                        deaths.push((i, 0, Exit::Unknown));
                    }
                } else {
                    m.restore(i, core);
                }
            }
        }
    }
    // Every record first: what this Supervisor will do with each node, before it does it.
    if finish_shutdown {
        starts.clear();
    }
    let pending: Vec<Ix> = (0..m.len())
        .filter(|&i| match &m.core(i).phase {
            Phase::Starting { .. } => !deaths.iter().any(|d| d.0 == i),
            // Restarted once its queued stop has run: it waits its turn in the start too.
            Phase::Running { stop_queued, .. } => *stop_queued == Some(Then::Restart),
            _ => false,
        })
        .collect();
    // Queued before anything is published (records are written when the shell carries out
    // the actions, from the machine as it is then): no record says `stopped` of a node this
    // Supervisor is about to start, which a successor would keep down.
    // Restarts in progress (an operator's, a staged one's) resume unstaged, as one ordered
    // start with the starts queued: a node coming back holds up the later roles.
    starts.extend((0..m.len()).filter(|&i| {
        matches!(
            m.core(i).phase,
            Phase::Stopping {
                then: Then::Restart,
                ..
            } | Phase::Draining {
                then: Some(Then::Restart),
                ..
            }
        )
    }));
    let mut acts: Vec<Action> = (0..m.len()).map(|node| Action::Publish { node }).collect();
    acts.extend(out);
    if !starts.is_empty() || !pending.is_empty() {
        acts.extend(m.start_ordered(starts, &pending));
    }
    for (i, pid, exit) in deaths {
        if pid == 0 {
            // A drained death whose group is empty now.
            acts.extend(m.handle(Input::GroupEmpty { node: i }, now));
            continue;
        }
        // Its group is not killed here: what is in it may be the node itself, under a pid the
        // record did not know (a spawn its predecessor had not recorded yet); the next start
        // meets it and adopts it, or waits for leftovers to end.
        let by = match exit {
            Exit::Unknown => Reporter::Unseen,
            _ => Reporter::Guardian,
        };
        acts.extend(m.handle(
            Input::Exited {
                node: i,
                pid,
                exit,
                leftovers: false,
                by,
            },
            now,
        ));
    }
    for i in unseen {
        m.cores[i].last_exit = Some(Exit::Unknown);
        let mut ev = event(EventKind::Exited, i, 0);
        ev.exit = Some(Exit::Unknown);
        m.out.push(Action::Emit(ev));
        m.after_death(i, 0, Exit::Unknown, now);
        acts.extend(std::mem::take(&mut m.out));
    }
    if !stops.is_empty() {
        // The ordered stop goes on, and the nodes already stopping still hold up those that
        // stop after them.
        let members: Vec<Ix> = (0..m.len())
            .filter(|&i| {
                stops.contains(&i)
                    || matches!(
                        m.core(i).phase,
                        Phase::Stopping { .. } | Phase::Draining { .. }
                    )
            })
            .collect();
        m.stop_wave(members);
    }
    if finish_shutdown {
        m.shutting_down = false;
        m.begin_shutdown(now);
        acts.extend(std::mem::take(&mut m.out));
    }
    (m, acts)
}
