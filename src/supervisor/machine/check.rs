//! An exhaustive, breadth-first model check of the machine: every interleaving of commands,
//! process exits, readiness, cgroup drains, timers and Supervisor deaths (a successor taking
//! over from the published records and the kernel's facts), for small clusters, up to a
//! depth, with the promise's invariants checked in every state reached.
//!
//! The kernel is modelled beside the machine (which processes of each node live, which got
//! which signal, what each exit was), and the shell is emulated as the Supervisor's event loop
//! carries out actions: a spawn that the machine asks for while the kernel still has a process
//! of the node is a violation, as is a stop signal sent to a node while a node of a later role
//! in the same ordered stop still lives, an exit recorded twice or with another status, a
//! `restart = "never"` node that ran twice for one command, or a record that says something
//! the machine does not.

use super::takeover::{self, Facts, Found};
use super::*;
use crate::config::RestartPolicy;
use crate::protocol::node::NodeRecord;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Duration;

const MS: Ns = 1_000_000;

/// How the modelled process of a node behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Proc_ {
    pid: u32,
    /// The stop signal reached it (it may now exit 0, or ignore it).
    termed: bool,
    /// SIGKILL reached it: it dies with signal 9.
    killed: bool,
    /// That SIGKILL was its watchdog's (a late `WATCHDOG=1`), sent while it ran: a death
    /// for the restart policy, not a stop's.
    by_watchdog: bool,
}

/// The kernel's truth about one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct Kernel {
    /// Its main process, alive.
    main: Option<Proc_>,
    /// Its `ready_check` is running (the shell started one).
    checking: bool,
    /// Processes of it left in its cgroup after its main process died.
    leftovers: bool,
    /// The cgroup emptied and the Supervisor has not been told yet.
    emptied: bool,
    /// Exits that happened (pid, exit), in order, and those the machine recorded.
    died: Vec<(u32, Exit)>,
    recorded: Vec<(u32, Exit)>,
    /// Spawns since the last command that named the node.
    spawns_since_command: u32,
    /// The last command that named it was a stop (or a shutdown): it must not run again
    /// until a start or restart names it.
    stopped_by_command: bool,
    /// Its last process died after a stop signal reached it (never a death for the restart
    /// policy: a Supervisor that signals before it records the stop breaks this).
    last_death_termed: bool,
}

#[derive(Debug, Clone)]
struct World {
    m: Machine,
    k: Vec<Kernel>,
    now: Ns,
    next_pid: u32,
    commands: u32,
    deaths: u32,
    /// The last ordered stop: its nodes (for the order invariant).
    stop_set: Vec<Ix>,
    /// The last ordered start's nodes.
    start_set: Vec<Ix>,
    /// What the region holds: each node's last published record.
    records: Vec<Option<NodeRecord>>,
}

impl World {
    fn key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.m.fingerprint(&mut h);
        self.k.hash(&mut h);
        self.now.hash(&mut h);
        self.commands.hash(&mut h);
        self.deaths.hash(&mut h);
        self.stop_set.hash(&mut h);
        self.start_set.hash(&mut h);
        h.finish()
    }
}

/// One thing that can happen next.
#[derive(Debug, Clone)]
enum Step {
    Command(Command),
    Exit(Ix, Exit, bool),
    Ready(Ix),
    /// `WATCHDOG=1` from a running node with `watchdog_ms`.
    Ping(Ix),
    /// Its running `ready_check` ends: passed (exit 0) or not.
    Check(Ix, bool),
    Emptied(Ix),
    Timer,
    /// The Supervisor dies; meanwhile node `.0`'s process dies too (`.1`), reported by the
    /// guardian or not (`.2`).
    SupervisorDies(Option<(Ix, Exit, bool)>),
    /// The Supervisor dies after carrying out only the first `.1` actions of a command.
    DiesAfter(Command, usize),
}

struct Scenario {
    confs: Vec<Conf>,
    cgroups: bool,
    /// Readiness each node's spawn reports.
    ready: Vec<Readiness>,
    max_commands: u32,
    max_deaths: u32,
}

fn conf(rank: u8, restart: RestartPolicy, after: Vec<Ix>) -> Conf {
    let policy = Policy {
        restart,
        stop_timeout: Duration::from_millis(1_000),
        restart_delay: Duration::from_millis(100),
        give_up_after: 2,
        give_up_window: Duration::from_millis(10_000),
        ready_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    Conf {
        rank,
        after,
        policy: Arc::new(policy),
    }
}

fn violation(w: &World, trace: &[String], what: String) -> String {
    format!(
        "{what}\n  after: {}\n  phases: {:?}",
        trace.join(" -> "),
        (0..w.m.len())
            .map(|i| &w.m.core(i).phase)
            .collect::<Vec<_>>()
    )
}

/// Carries out the machine's actions as the shell does, feeding answers back; checks the
/// invariants that concern actions.
fn run_actions(w: &mut World, s: &Scenario, acts: VecDeque<Action>) -> Result<(), String> {
    run_some(w, s, acts, usize::MAX)
}

/// [`run_actions`], carrying out at most `budget` actions (the Supervisor dies then).
fn run_some(
    w: &mut World,
    s: &Scenario,
    mut acts: VecDeque<Action>,
    mut budget: usize,
) -> Result<(), String> {
    loop {
        while let Some(a) = acts.pop_front() {
            if budget == 0 {
                return Ok(());
            }
            budget -= 1;
            match a {
                Action::Spawn { node } => {
                    let k = &w.k[node];
                    if let Some(p) = k.main {
                        // The shell's check (the node's lock, its cgroup) finds the running
                        // copy and adopts it; that only a successor may need it is the
                        // machine's part (one Supervisor never loses track of a process).
                        if w.deaths == 0 {
                            return Err(format!(
                                "node {node} spawned while its process {} lives",
                                p.pid
                            ));
                        }
                        let more = w.m.handle(
                            Input::Adopted {
                                node,
                                proc_: super::Proc {
                                    pid: p.pid,
                                    start: p.pid as u64,
                                },
                                started: (w.now, 0),
                            },
                            w.now,
                        );
                        acts.extend(more);
                        continue;
                    }
                    if w.k[node].leftovers {
                        let more = w.m.handle(Input::Blocked { node, by: 999 }, w.now);
                        acts.extend(more);
                        continue;
                    }
                    // Role order: no member of the last ordered start of an earlier role is
                    // still queued.
                    let by_command =
                        matches!(w.m.core(node).phase, Phase::Spawning { again: false, .. });
                    if by_command && w.start_set.contains(&node) {
                        for &j in &w.start_set {
                            if s.confs[j].rank < s.confs[node].rank
                                && matches!(w.m.core(j).phase, Phase::Queued { .. })
                            {
                                return Err(format!(
                                    "node {node} spawned before node {j} of an earlier role"
                                ));
                            }
                        }
                    }
                    if w.k[node].stopped_by_command {
                        return Err(format!("node {node} spawned after a stop named it"));
                    }
                    let by_policy =
                        matches!(w.m.core(node).phase, Phase::Spawning { again: true, .. });
                    if by_policy && w.k[node].last_death_termed {
                        return Err(format!(
                            "node {node} restarted by its policy after its stop signal ended it"
                        ));
                    }
                    let restart_never = s.confs[node].policy.restart == RestartPolicy::Never;
                    w.k[node].spawns_since_command += 1;
                    if restart_never && w.k[node].spawns_since_command > 1 {
                        return Err(format!(
                            "restart = never node {node} ran twice for one command"
                        ));
                    }
                    w.next_pid += 1;
                    let pid = w.next_pid;
                    w.k[node].main = Some(Proc_ {
                        pid,
                        termed: false,
                        killed: false,
                        by_watchdog: false,
                    });
                    let more = w.m.handle(
                        Input::Spawned {
                            node,
                            proc_: super::Proc {
                                pid,
                                start: pid as u64,
                            },
                            ready: s.ready[node],
                            wall_ms: 0,
                        },
                        w.now,
                    );
                    acts.extend(more);
                }
                Action::Signal { node, pid, signal } => {
                    if pid != 0 && signal != 9 && w.stop_set.contains(&node) {
                        for &j in &w.stop_set {
                            if s.confs[j].rank > s.confs[node].rank
                                && (w.k[j].main.is_some() || w.k[j].leftovers)
                            {
                                return Err(format!(
                                    "node {node} got its stop signal while node {j} of a later role still runs"
                                ));
                            }
                        }
                    }
                    let running = matches!(w.m.core(node).phase, Phase::Running { .. });
                    if let Some(p) = w.k[node].main.as_mut() {
                        if pid == 0 || p.pid == pid {
                            if signal == 9 {
                                p.by_watchdog |= running && !p.killed;
                                p.killed = true;
                            } else {
                                p.termed = true;
                            }
                        }
                    }
                    if signal == 9 {
                        w.k[node].leftovers = false;
                    }
                }
                Action::KillLeftovers { node, group, .. } => {
                    if group && w.k[node].leftovers {
                        w.k[node].leftovers = false;
                        w.k[node].emptied = true;
                    } else if group {
                        w.k[node].emptied = true;
                    }
                }
                Action::Publish { node } => {
                    w.records[node] = Some(takeover::record(&w.m, node, "n"));
                }
                Action::Emit(ev) if ev.kind == EventKind::Exited => {
                    let node = ev.node as usize;
                    w.k[node]
                        .recorded
                        .push((ev.pid, ev.exit.unwrap_or(Exit::Unknown)));
                }
                Action::Release { .. }
                | Action::Unblock { .. }
                | Action::Emit(_)
                | Action::CrashReport { .. }
                | Action::ReadPidFile { .. }
                | Action::Log { .. }
                | Action::Drop { .. } => {}
                Action::RunReadyCheck { node } => {
                    if std::mem::replace(&mut w.k[node].checking, true) {
                        return Err(format!("node {node}: a second ready check while one runs"));
                    }
                    if !matches!(w.m.core(node).phase, Phase::Starting { .. }) {
                        return Err(format!("node {node}: a ready check while not starting"));
                    }
                }
            }
        }
        if budget == 0 {
            return Ok(());
        }
        let more = w.m.advance_waves(w.now);
        if more.is_empty() {
            return Ok(());
        }
        acts.extend(more);
    }
}

/// The invariants that concern one state.
fn check_state(w: &World) -> Result<(), String> {
    for i in 0..w.m.len() {
        let c = w.m.core(i);
        let k = &w.k[i];
        // What the machine says of the node's process is the kernel's truth.
        match (c.phase.proc_(), k.main) {
            (Some(p), Some(q)) if p.pid == q.pid => {}
            (None, None) => {}
            (None, Some(q)) => {
                return Err(format!(
                    "node {i} is {:?} while its process {} lives",
                    c.phase, q.pid
                ))
            }
            (a, b) => return Err(format!("node {i}: machine says {a:?}, kernel {b:?}")),
        }
        if matches!(c.phase, Phase::Spawning { .. }) {
            return Err(format!("node {i} left spawning"));
        }
        // Every exit recorded once, with its real status.
        let settled: Vec<_> = k.died.iter().collect();
        if k.recorded.len() > k.died.len() {
            return Err(format!(
                "node {i}: exits recorded {:?}, died {:?}",
                k.recorded, k.died
            ));
        }
        for (n, d) in settled.iter().enumerate() {
            match k.recorded.get(n) {
                Some(r) if r == *d || (r.0 == d.0 && r.1 == Exit::Unknown && w.deaths > 0) => {}
                r => {
                    return Err(format!(
                        "node {i}: exit {d:?} recorded as {r:?} (all: {:?})",
                        k.recorded
                    ))
                }
            }
        }
        // A stop started is always finished: its SIGKILL deadline is armed.
        let timers = w.m.timers();
        let armed = |kind: TimerKind| timers.iter().any(|t| t.1 == i && t.2 == kind);
        match &c.phase {
            Phase::Stopping {
                kill_at: Some(_), ..
            } if !armed(TimerKind::Kill) => {
                return Err(format!("node {i} stopping with no SIGKILL timer"))
            }
            Phase::Backoff { .. } if !armed(TimerKind::Retry) => {
                return Err(format!("node {i} in backoff with no retry timer"))
            }
            _ => {}
        }
        // The record in the region is the machine's state.
        if let Some(r) = &w.records[i] {
            let want = takeover::record(&w.m, i, "n");
            if *r != want {
                return Err(format!("node {i}: record {r:?} but machine {want:?}"));
            }
        }
    }
    Ok(())
}

fn steps(w: &World, s: &Scenario) -> Vec<Step> {
    let n = w.m.len();
    let mut out = Vec::new();
    if w.commands < s.max_commands && !w.m.shutting_down() {
        let all: Vec<Ix> = (0..n).collect();
        out.push(Step::Command(Command::Start(all.clone())));
        out.push(Step::Command(Command::Stop(all.clone())));
        if n > 1 {
            out.push(Step::Command(Command::Restart(all.clone())));
        }
        for i in 0..n {
            out.push(Step::Command(Command::Start(vec![i])));
            out.push(Step::Command(Command::Stop(vec![i])));
            out.push(Step::Command(Command::Restart(vec![i])));
        }
        out.push(Step::Command(Command::Shutdown));
        if w.deaths < s.max_deaths {
            // A Supervisor killed in the middle of carrying out a command.
            for c in [Command::Stop(all.clone()), Command::Restart(vec![n - 1])] {
                for k in 1..=3 {
                    out.push(Step::DiesAfter(c.clone(), k));
                }
            }
        }
    }
    for i in 0..n {
        let k = &w.k[i];
        if let Some(p) = k.main {
            if p.killed {
                out.push(Step::Exit(
                    i,
                    Exit::Signal {
                        signal: 9,
                        core: false,
                    },
                    false,
                ));
            } else {
                out.push(Step::Exit(i, Exit::Code(0), false));
                if !p.termed {
                    out.push(Step::Exit(i, Exit::Code(1), false));
                    if s.cgroups {
                        out.push(Step::Exit(i, Exit::Code(1), true));
                    }
                }
            }
            if matches!(
                w.m.core(i).phase,
                Phase::Starting {
                    ready: Readiness::Told,
                    ..
                }
            ) {
                out.push(Step::Ready(i));
            }
            if k.checking && matches!(w.m.core(i).phase, Phase::Starting { .. }) {
                out.push(Step::Check(i, true));
                out.push(Step::Check(i, false));
            }
            if !s.confs[i].policy.watchdog.is_zero()
                && matches!(w.m.core(i).phase, Phase::Running { .. })
            {
                out.push(Step::Ping(i));
            }
        }
        if k.emptied {
            out.push(Step::Emptied(i));
        }
    }
    if w.m.next_deadline().is_some() {
        out.push(Step::Timer);
    }
    if w.deaths < s.max_deaths {
        out.push(Step::SupervisorDies(None));
        for i in 0..n {
            if w.k[i].main.is_some_and(|p| !p.killed) {
                for reported in [true, false] {
                    out.push(Step::SupervisorDies(Some((i, Exit::Code(0), reported))));
                    out.push(Step::SupervisorDies(Some((i, Exit::Code(1), reported))));
                }
            }
        }
    }
    out
}

fn apply(w: &mut World, s: &Scenario, step: &Step) -> Result<(), String> {
    match step {
        Step::DiesAfter(c, k) => {
            // A command the Supervisor died applying is answered so (not applied): only what
            // it did before it died stands, and nothing is promised of the rest.
            let before: Vec<bool> = w.k.iter().map(|k| k.stopped_by_command).collect();
            command(w, s, c, *k)?;
            if matches!(c, Command::Stop(_) | Command::Shutdown) {
                for (k, b) in w.k.iter_mut().zip(before) {
                    k.stopped_by_command = b;
                }
            }
            apply(w, s, &Step::SupervisorDies(None))
        }
        Step::Command(c) => command(w, s, c, usize::MAX),
        Step::Exit(i, exit, leftovers) => {
            let i = *i;
            let p = w.k[i].main.take().expect("a live process");
            // Its check, if one runs, is killed with it.
            w.k[i].checking = false;
            w.k[i].died.push((p.pid, *exit));
            w.k[i].last_death_termed = (p.termed || p.killed) && !p.by_watchdog;
            w.k[i].leftovers = *leftovers;
            // The Supervisor hears of it (a pidfd, SIGCHLD).
            let acts = w.m.handle(
                Input::Exited {
                    node: i,
                    pid: p.pid,
                    exit: *exit,
                    leftovers: *leftovers,
                    by: Reporter::Reaped,
                },
                w.now,
            );
            run_actions(w, s, acts.into())
        }
        Step::Ready(i) => {
            let acts = w.m.handle(Input::Ready { node: *i }, w.now);
            run_actions(w, s, acts.into())
        }
        Step::Check(i, passed) => {
            w.k[*i].checking = false;
            let input = if *passed {
                Input::Ready { node: *i }
            } else {
                Input::CheckPending { node: *i }
            };
            let acts = w.m.handle(input, w.now);
            run_actions(w, s, acts.into())
        }
        Step::Ping(i) => {
            let acts = w.m.handle(Input::WatchdogPing { node: *i }, w.now);
            run_actions(w, s, acts.into())
        }
        Step::Emptied(i) => {
            w.k[*i].emptied = false;
            let acts = w.m.handle(Input::GroupEmpty { node: *i }, w.now);
            run_actions(w, s, acts.into())
        }
        Step::Timer => {
            let at = w.m.next_deadline().expect("a timer");
            w.now = w.now.max(at);
            let due = w.m.due(w.now);
            let mut acts = VecDeque::new();
            for (node, kind) in due {
                acts.extend(w.m.handle(Input::Timer { node, kind }, w.now));
            }
            run_actions(w, s, acts)
        }
        Step::SupervisorDies(gap) => {
            w.deaths += 1;
            let mut reported = vec![None; w.k.len()];
            if let Some((i, exit, told)) = *gap {
                let p = w.k[i].main.take().expect("a live process");
                w.k[i].died.push((p.pid, exit));
                w.k[i].last_death_termed = (p.termed || p.killed) && !p.by_watchdog;
                if told {
                    reported[i] = Some(exit);
                }
            }
            // A successor: the records as published, the kernel's facts.
            let facts: Vec<Facts> = (0..w.m.len())
                .map(|i| Facts {
                    record: w.records[i].clone(),
                    found: match (w.records[i].as_ref().and_then(|r| r.pid), w.k[i].main) {
                        (Some(p), Some(q)) if p == q.pid => Found::Alive,
                        (Some(_), _) => match reported[i] {
                            Some(e) => Found::Reported(e),
                            None => Found::Gone,
                        },
                        (None, Some(q)) => Found::Unrecorded(super::Proc {
                            pid: q.pid,
                            start: q.pid as u64,
                        }),
                        (None, None) => Found::Gone,
                    },
                    leftovers: w.k[i].leftovers,
                    held_down: false,
                })
                .collect();
            let confs = s.confs.clone();
            let told: Vec<bool> = s.ready.iter().map(|r| *r == Readiness::Told).collect();
            let finishing = w.m.shutting_down();
            let (m, acts) = takeover::take_over(confs, s.cgroups, &facts, &told, finishing, w.now);
            w.m = m;
            run_actions(w, s, acts.into())?;
            // The dead Supervisor's ready checks are not ours: the shell arms its own for
            // every node adopted `starting`.
            for i in 0..w.k.len() {
                w.k[i].checking = false;
                if !s.confs[i].policy.ready_check.is_empty()
                    && matches!(w.m.core(i).phase, Phase::Starting { .. })
                {
                    let acts = w.m.handle(Input::CheckPending { node: i }, w.now);
                    run_actions(w, s, acts.into())?;
                }
            }
            Ok(())
        }
    }
}

/// A Main's command `c`, of whose actions the Supervisor carries out at most `budget`.
fn command(w: &mut World, s: &Scenario, c: &Command, budget: usize) -> Result<(), String> {
    w.commands += 1;
    let named: Vec<Ix> = match c {
        Command::Start(v) | Command::Stop(v) | Command::Restart(v) => v.clone(),
        Command::Shutdown => (0..w.m.len()).collect(),
    };
    for &i in &named {
        w.k[i].spawns_since_command = 0;
        w.k[i].stopped_by_command = matches!(c, Command::Stop(_) | Command::Shutdown);
    }
    // A later command takes its nodes out of an earlier ordered start or stop.
    w.stop_set.retain(|j| !named.contains(j));
    w.start_set.retain(|j| !named.contains(j));
    match c {
        Command::Stop(v) => w.stop_set = v.clone(),
        Command::Shutdown => w.stop_set = named.clone(),
        Command::Start(v) => w.start_set = v.clone(),
        Command::Restart(v) => {
            w.stop_set = v.clone();
            w.start_set = v.clone();
        }
    }
    let acts = w.m.handle(Input::Command(c.clone()), w.now);
    run_some(w, s, acts.into(), budget)
}

/// Explores every interleaving from an idle cluster up to `depth` steps; returns the number
/// of distinct states, or the first violation with the steps that led to it.
fn explore(s: &Scenario, depth: usize) -> Result<usize, String> {
    let m = Machine::new(s.confs.clone(), s.cgroups);
    let n = m.len();
    // A first Supervisor that started nothing yet has published every node `stopped`.
    let records = (0..n).map(|i| Some(takeover::record(&m, i, "n"))).collect();
    let start = World {
        m,
        k: vec![Kernel::default(); n],
        now: 0,
        next_pid: 100,
        commands: 0,
        deaths: 0,
        stop_set: Vec::new(),
        start_set: Vec::new(),
        records,
    };
    let mut seen = HashSet::new();
    seen.insert(start.key());
    let mut frontier = vec![(start, Vec::<String>::new())];
    for _ in 0..depth {
        let mut next = Vec::new();
        for (w, trace) in &frontier {
            for step in steps(w, s) {
                let mut w2 = w.clone();
                let mut t2 = trace.clone();
                t2.push(format!("{step:?}"));
                if std::env::var("BROCTLD_MODEL_TRACE").is_ok() {
                    eprintln!("{t2:?}");
                }
                if let Err(e) = apply(&mut w2, s, &step).and_then(|()| check_state(&w2)) {
                    return Err(violation(&w2, &t2, e));
                }
                if seen.insert(w2.key()) {
                    next.push((w2, t2));
                }
            }
        }
        frontier = next;
        if frontier.is_empty() {
            break;
        }
    }
    Ok(seen.len())
}

fn scenario(confs: Vec<Conf>, ready: Vec<Readiness>, cgroups: bool) -> Scenario {
    Scenario {
        confs,
        cgroups,
        ready,
        max_commands: 3,
        max_deaths: 1,
    }
}

/// The depth CI explores (`BROCTLD_MODEL_DEPTH` raises it for a long run).
fn depth(default: usize) -> usize {
    std::env::var("BROCTLD_MODEL_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(name: &str, s: Scenario, d: usize) {
    let t = std::time::Instant::now();
    match explore(&s, d) {
        Ok(states) => eprintln!(
            "model {name}: {states} states to depth {d} in {:.1} s",
            t.elapsed().as_secs_f64()
        ),
        Err(e) => panic!("model {name}: {e}"),
    }
}

#[test]
fn one_node_always_every_interleaving() {
    use RestartPolicy::*;
    for (ready, cg) in [
        (Readiness::Now, false),
        (Readiness::Told, true),
        (Readiness::After(50 * MS), true),
    ] {
        run(
            &format!("1 node {ready:?} cgroups={cg}"),
            scenario(vec![conf(3, Always, vec![])], vec![ready], cg),
            depth(9),
        );
    }
}

/// One `always` node with a `ready_check` run every 100 ms.
fn ready_checked_conf() -> Conf {
    let mut c = conf(3, RestartPolicy::Always, vec![]);
    c.policy = Arc::new(Policy {
        ready_check: vec!["check".into()],
        ready_check_interval: Duration::from_millis(100),
        ..(*c.policy).clone()
    });
    c
}

/// `ready_check`: runs one at a time while starting, passes or fails, and across a takeover
/// (the successor arms its own), among every other input.
#[test]
fn one_node_with_a_ready_check_every_interleaving() {
    let c = ready_checked_conf();
    run(
        "1 node Told ready_check=100ms cgroups=true",
        scenario(vec![c], vec![Readiness::Told], true),
        depth(8),
    );
}

/// The check's life without the explorer: due one interval after the spawn, run once, due
/// again one interval after it failed, gone once the node is ready.
#[test]
fn a_ready_check_runs_one_interval_after_the_spawn_and_after_each_failure() {
    let c = ready_checked_conf();
    let mut m = Machine::new(vec![c], true);
    let _ = m.handle(Input::Command(Command::Start(vec![0])), 0);
    let _ = m.advance_waves(0);
    let proc_ = super::Proc { pid: 5, start: 5 };
    let spawned = Input::Spawned {
        node: 0,
        proc_,
        ready: Readiness::Told,
        wall_ms: 0,
    };
    let _ = m.handle(spawned, MS);
    assert_eq!(
        m.next_deadline(),
        Some(101 * MS),
        "first run one interval after the spawn"
    );
    let due = m.due(101 * MS);
    assert_eq!(due, vec![(0, TimerKind::ReadyCheck)]);
    let acts = m.handle(
        Input::Timer {
            node: 0,
            kind: TimerKind::ReadyCheck,
        },
        101 * MS,
    );
    assert!(
        acts.contains(&Action::RunReadyCheck { node: 0 }),
        "{acts:?}"
    );
    assert_ne!(m.next_deadline(), Some(101 * MS), "none due while it runs");
    let _ = m.handle(Input::CheckPending { node: 0 }, 150 * MS);
    assert_eq!(
        m.core(0).check_at,
        Some(250 * MS),
        "again one interval after it failed"
    );
    let _ = m.handle(Input::Ready { node: 0 }, 160 * MS);
    assert!(matches!(m.core(0).phase, Phase::Running { .. }));
    assert_eq!(m.core(0).check_at, None, "no run once ready");
}

/// `watchdog_ms`: pings, a late ping's SIGKILL and the restart after it, among every other
/// input (the watchdog's deadline never outlives `Running`).
#[test]
fn one_node_with_a_watchdog_every_interleaving() {
    let mut c = conf(3, RestartPolicy::Always, vec![]);
    c.policy = Arc::new(Policy {
        watchdog: Duration::from_millis(300),
        ..(*c.policy).clone()
    });
    run(
        "1 node Told watchdog=300ms cgroups=true",
        scenario(vec![c], vec![Readiness::Told], true),
        depth(8),
    );
}

#[test]
fn one_node_never_and_on_failure_every_interleaving() {
    use RestartPolicy::*;
    for restart in [Never, OnFailure] {
        run(
            &format!("1 node {restart:?}"),
            scenario(vec![conf(3, restart, vec![])], vec![Readiness::Told], true),
            depth(9),
        );
    }
}

#[test]
fn two_nodes_across_roles_every_interleaving() {
    use RestartPolicy::*;
    run(
        "logger + worker",
        scenario(
            vec![conf(0, Always, vec![]), conf(3, Never, vec![])],
            vec![Readiness::Told, Readiness::Now],
            true,
        ),
        depth(7),
    );
}

#[test]
fn three_nodes_across_roles_every_interleaving() {
    use RestartPolicy::*;
    run(
        "logger + manager + worker",
        scenario(
            vec![
                conf(0, Always, vec![]),
                conf(1, OnFailure, vec![]),
                conf(3, Always, vec![1]),
            ],
            vec![Readiness::Told, Readiness::Now, Readiness::Told],
            true,
        ),
        depth(5),
    );
}

/// A node spawned by an ordered start and dead at once waits its restart delay (the spawn's
/// time is when it was answered, not when the wave was queued).
#[test]
fn a_node_that_dies_at_once_after_an_ordered_start_waits_its_restart_delay() {
    let confs: Vec<Conf> = (0..3)
        .map(|_| conf(4, RestartPolicy::Always, vec![]))
        .collect();
    let mut m = Machine::new(confs, true);
    let now = 1_000 * MS;
    let mut acts: VecDeque<Action> = m.start_ordered(vec![0, 1, 2], &[]).into();
    acts.extend(m.advance_waves(now));
    let mut pid = 10;
    while let Some(a) = acts.pop_front() {
        if let Action::Spawn { node } = a {
            pid += 1;
            acts.extend(m.handle(
                Input::Spawned {
                    node,
                    proc_: super::Proc { pid, start: 1 },
                    ready: Readiness::Now,
                    wall_ms: 0,
                },
                now,
            ));
        }
    }
    assert!(
        matches!(m.core(0).phase, Phase::Running { .. }),
        "{:?}",
        m.core(0)
    );
    assert_eq!(m.core(0).started_ns, now);
    let pid0 = m.core(0).phase.proc_().unwrap().pid;
    let acts = m.handle(
        Input::Exited {
            node: 0,
            pid: pid0,
            exit: Exit::Code(1),
            leftovers: false,
            by: Reporter::Reaped,
        },
        now + 2 * MS,
    );
    assert!(
        matches!(m.core(0).phase, Phase::Backoff { .. }),
        "{:?} {acts:?}",
        m.core(0)
    );
}
