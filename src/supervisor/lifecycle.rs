//! The shell around the node machine ([`super::machine`]): what the event loop feeds it
//! (exits, readiness, drained groups, gone blockers, timers) and how its actions are carried
//! out (spawning a node's process with every check that no copy of it lives, signals, kills,
//! records, events, crash reports). No lifecycle decision is taken here: each function turns
//! a kernel fact into an input, or an action into system calls.

use super::machine::{Action, Input, Proc, Readiness, Reporter, TimerKind};
use super::source::Source;
use super::*;
use std::collections::VecDeque;

/// What taking a node's lock found.
pub(super) enum NodeLock {
    /// We hold it (`None`: no usable lock file); the holder the file named before.
    Taken(Option<lockfile::LockFile>, (u32, u64)),
    /// A live process holds it; the holder the file names.
    Held((u32, u64)),
}

impl Supervisor {
    /// Feeds one input to the machine and carries out what it answers.
    pub(super) fn feed(&mut self, input: Input) {
        let acts = self.machine.handle(input, clock::monotonic_ns());
        self.carry_out(acts);
    }

    /// Moves ordered starts and stops on after a wake-up's inputs, until nothing more moves;
    /// then drops the retired nodes that are down.
    pub(super) fn settle(&mut self) {
        loop {
            let acts = self.machine.advance_waves(clock::monotonic_ns());
            if acts.is_empty() {
                break;
            }
            self.carry_out(acts);
        }
        if !self.dropping.is_empty() {
            self.drop_retired();
        }
    }

    /// Carries out the machine's actions in order; the answer to a spawn (or a kill, a PID
    /// file read) is fed back at once, and what the machine answers to it is carried out
    /// before the next action (the spawn's event is stamped when it happened, its record
    /// published before the next node is spawned).
    pub(super) fn carry_out(&mut self, acts: Vec<Action>) {
        let mut queue: VecDeque<Action> = acts.into();
        let first = |queue: &mut VecDeque<Action>, more: Vec<Action>| {
            for a in more.into_iter().rev() {
                queue.push_front(a);
            }
        };
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Spawn { node } => {
                    let answer = self.spawn_process(node);
                    let more = self.machine.handle(answer, clock::monotonic_ns());
                    first(&mut queue, more);
                }
                Action::Signal { node, pid, signal } => self.send_signal(node, pid, signal),
                Action::Release { node, pid } => self.release(node, pid),
                Action::KillLeftovers {
                    node,
                    pid,
                    group,
                    stop,
                } => {
                    if let Some(input) = self.kill_leftovers(node, pid, group, stop) {
                        let more = self.machine.handle(input, clock::monotonic_ns());
                        first(&mut queue, more);
                    }
                }
                Action::Unblock { node } => self.unblock(node),
                Action::Publish { node } => self.publish(node),
                Action::Emit(ev) => self.emit(ev),
                Action::CrashReport {
                    node,
                    pid,
                    exit,
                    uptime_ms,
                } => {
                    let spec = self.nodes[node].spec.clone();
                    self.write_crash_report(&spec, pid, exit, uptime_ms);
                }
                Action::RunReadyCheck { node } => {
                    if let Some(input) = self.run_ready_check(node) {
                        let more = self.machine.handle(input, clock::monotonic_ns());
                        first(&mut queue, more);
                    }
                }
                Action::ReadPidFile { node } => {
                    if let Some(input) = self.take_pid_file(node) {
                        let more = self.machine.handle(input, clock::monotonic_ns());
                        first(&mut queue, more);
                    }
                }
                Action::Log { node, text } => log!("node {}: {text}", self.nodes[node].spec.name),
                Action::Drop { node } => {
                    self.nodes[node].retired = true;
                    self.dropping.push(node);
                }
            }
        }
    }

    /// Appends a machine's event: its monotonic time is the machine's (when it decided; now
    /// if it has none), its wall-clock time now.
    fn emit(&self, mut ev: Event) {
        ev.wall_ms = clock::wall_ms();
        if ev.mono_ns == 0 {
            ev.mono_ns = clock::monotonic_ns();
        }
        self.event(ev);
    }

    /// Node `i`'s main process, as the machine has it.
    pub(super) fn main_pid(&self, i: usize) -> Option<u32> {
        self.machine.core(i).phase.proc_().map(|p| p.pid)
    }

    /// Node `i`'s state, as Mains see it.
    pub(super) fn state(&self, i: usize) -> NodeState {
        self.machine.core(i).phase.state()
    }

    /// Node `i` is `starting` with a live process (waiting to be told it is ready).
    pub(super) fn awaits_ready(&self, i: usize) -> bool {
        matches!(self.machine.core(i).phase, machine::Phase::Starting { .. })
    }

    /// The record node `i` publishes: its lifecycle from the machine, what its process said of
    /// itself (sd_notify) from the loop.
    pub(super) fn record(&self, i: usize) -> NodeRecord {
        let n = &self.nodes[i];
        let mut rec = machine::takeover::record(&self.machine, i, &n.spec.name);
        rec.node_type = n.spec.node_type.code();
        if let Some(p) = n.extras().notify_phase {
            rec.intent.set(p.flag(), true);
        }
        rec.intent.set(Intent::READY_FIFO, n.ready_pipe.is_some());
        rec
    }

    /// Due timers: the machine's (restart, SIGKILL, readiness, watchdog, ready check) and the
    /// waits for a guardian's report.
    pub(super) fn fire_timers(&mut self) {
        let now = clock::monotonic_ns();
        self.fire_report_waits(now);
        for (node, kind) in self.machine.due(now) {
            if kind == TimerKind::ReadyBy {
                // Waiting for a PID file ends: what it names now still counts; else the start
                // failed, and the log says why.
                if let machine::Phase::AwaitingMain { .. } = self.machine.core(node).phase {
                    let input = match self.take_pid_file(node) {
                        Some(input) => input,
                        None => self.refuse_pid_file(node),
                    };
                    self.feed(input);
                    continue;
                }
            }
            self.feed(Input::Timer { node, kind });
        }
    }

    /// Carries out [`Action::Spawn`] for node `i`; returns the machine's answer.
    ///
    /// Fail safe: no copy starts while any process of the node may live. Its lock (held by
    /// every process that kept the inherited fd) and a `/proc` scan for processes carrying its
    /// identity (`BROCTLD_NODE` + `BROCTLD_INSTANCE`, which a program that closes its fds still
    /// carries) must both come back empty; a copy that is the node itself (a group leader named
    /// by its lock file, or running the node's command) is adopted; anything else blocks the
    /// start (`backoff`, with the blocking pid published) until it is gone. An OS error while
    /// checking blocks too: it is never taken as "nothing runs".
    pub(super) fn spawn_process(&mut self, i: usize) -> Input {
        let name = self.nodes[i].spec.name.clone();
        let instance = self.instance.name().to_owned();
        let env = [
            ("BROCTLD_NODE", name.as_str()),
            ("BROCTLD_INSTANCE", instance.as_str()),
        ];
        let now = clock::monotonic_ns();
        // The node's own lock: while a copy of it (or a child it left) holds it, no second copy
        // starts. The node inherits it as fd 3 (4 if its ready_fd is 3).
        let (mut lock, recorded, held) = match self.node_lock(i) {
            NodeLock::Taken(l, recorded) => (l, recorded, false),
            NodeLock::Held(recorded) => (None, recorded, true),
        };
        // A held lock always gets the full scan: it names who holds it.
        let procs = match if held {
            procscan::node_processes(&name, &instance, &self.instance.nodes_dir())
        } else {
            self.node_processes(i)
        } {
            Ok(p) => p,
            Err(e) => {
                drop(lock);
                return self.block(
                    i,
                    BLOCKED_UNKNOWN,
                    &format!("cannot check /proc for a running copy ({e})"),
                );
            }
        };
        if held || !procs.is_empty() {
            drop(lock);
            return self.adopt_or_block(i, recorded, held, &procs);
        }
        self.unblock(i);
        // Nothing of it lives: from here on every process of it is our descendant.
        self.nodes[i].descendants_only = true;
        self.nodes[i].adopted = false;
        self.drop_ready_pipe(i);
        let ready_fd = self.nodes[i].spec.policy.ready_fd;
        let fifo_path = readiness::path(&self.instance.dir(), &name);
        let fifo = match ready_fd {
            Some(_) => match readiness::create(&fifo_path) {
                Ok(ends) => Some(ends),
                Err(e) => {
                    log!("node {name}: cannot create its readiness FIFO: {e}; it will count as ready at once");
                    None
                }
            },
            None => None,
        };
        let mut pass = Vec::new();
        if let (Some((node_end, _)), Some(target)) = (&fifo, ready_fd) {
            pass.push((node_end.as_raw_fd(), target));
        }
        let lock_target = if ready_fd == Some(3) { 4 } else { 3 };
        let lock_target_text = lock_target.to_string();
        let mut env = env.to_vec();
        if let Some(l) = &lock {
            pass.push((l.file().as_raw_fd(), lock_target));
            env.push(("BROCTLD_LOCK_FD", lock_target_text.as_str()));
        }
        let by_file = self.arm_ready_file(i);
        self.arm_pid_file(i);
        // sd_notify: the node's own socket; without one it counts as ready once started.
        if let Some(e) = self.nodes[i].extras_if_any() {
            e.notify_status.clear();
            e.notify_phase = None;
        }
        let _ = std::fs::remove_file(notify::status_path(&self.instance.dir(), &name));
        let notify_path = if self.nodes[i].spec.policy.notify {
            self.open_notify(i)
        } else {
            None
        };
        let notify_text = notify_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        let watchdog_usec = self.nodes[i].spec.policy.watchdog.as_micros().to_string();
        if let Some(p) = &notify_text {
            env.push(("NOTIFY_SOCKET", p.as_str()));
            if !self.nodes[i].spec.policy.watchdog.is_zero() {
                env.push(("WATCHDOG_USEC", watchdog_usec.as_str()));
            }
        }
        // Its own cgroup, in which the child starts. A group whose `cgroup.events` is
        // watched is kept as it is (the watch is on it).
        let fresh = self.nodes[i].cgroup_fresh || self.nodes[i].cgroup_events.is_some();
        let attach = match &self.cgroups {
            Some(c) => c
                .prepare(&name, self.nodes[i].spec.policy.memory_max, fresh)
                .map(|(dir, fresh)| {
                    let into = fresh && self.nodes[i].cgroup_events.is_none();
                    self.nodes[i].cgroup_fresh = into;
                    Some(spawn::CgroupTarget {
                        dir,
                        clone_into: into,
                    })
                })
                .map_err(|source| spawn::SpawnError::Prepare {
                    node: name.clone(),
                    what: "prepare the cgroup",
                    path: c.node(&name).dir().to_owned(),
                    source,
                }),
            None => Ok(None),
        };
        // Output through the Supervisor (its FIFOs), unless it goes straight to files.
        let stdio = match self.nodes[i].spec.policy.log_direct {
            true => Ok(None),
            false => self.output_ends(i).map(Some),
        };
        let mut prepared = std::mem::take(&mut self.nodes[i].prepared);
        let result = attach.and_then(|attach| {
            spawn::spawn(
                &self.nodes[i].spec,
                &self.config_dir,
                &env,
                &pass,
                attach.as_ref(),
                stdio?,
                &mut prepared,
            )
        });
        self.nodes[i].prepared = prepared;
        // Our copy of the node's end closes here: only the child has it.
        let ready_rd = fifo.map(|(_node_end, ours)| ours);
        match result {
            Ok(spawn::Spawned { pid, start }) => {
                if let Some(r) = ready_rd {
                    match self.poll.registry().register(
                        &mut SourceFd(&r.as_raw_fd()),
                        Source::ReadyPipe(i).token(),
                        Interest::READABLE,
                    ) {
                        Ok(()) => self.nodes[i].ready_pipe = Some(r),
                        Err(e) => log!("node {name}: cannot watch its readiness FIFO: {e}"),
                    }
                }
                let pid_start = match start {
                    Some(t) => t,
                    None => procstat::start_time(pid).ok().flatten().unwrap_or(0),
                };
                if let Some(l) = lock.as_mut() {
                    let _ = l.write_holder(pid, pid_start);
                }
                // Our copy of the lock fd closes here; the node's copy keeps the lock.
                drop(lock.take());
                self.watch_pid(i, pid);
                self.by_pid.insert(pid, i);
                let n = &self.nodes[i];
                let policy = &n.spec.policy;
                let checked = !policy.ready_check.is_empty();
                let told =
                    n.ready_pipe.is_some() || by_file || n.extras().notify.is_some() || checked;
                let ready = if policy.pid_file.is_some() {
                    Readiness::Starter(n.ready_pipe.is_some() || by_file)
                } else if told {
                    Readiness::Told
                } else if policy.ready_after.is_zero() {
                    Readiness::Now
                } else {
                    Readiness::After(policy.ready_after.as_nanos() as u64)
                };
                // Started = exec succeeded (spawn returns after it), not when we began: under
                // load a spawn can wait, and delays are measured between real starts.
                Input::Spawned {
                    node: i,
                    proc_: Proc {
                        pid,
                        start: pid_start,
                    },
                    ready,
                    wall_ms: clock::wall_ms(),
                }
            }
            Err(e) => {
                log!("{e}");
                // A refused start leaves nothing behind: no lock file, no FIFO.
                if let Some(l) = lock.take() {
                    l.remove();
                }
                readiness::remove(&fifo_path);
                let _ = now;
                Input::SpawnFailed {
                    node: i,
                    errno: e.errno(),
                }
            }
        }
    }

    /// Node `i`'s main process among `procs` when its lock file does not name it: a group
    /// leader running the node's command, else (while the lock is held) the group leader that
    /// holds the lock and descends from no other process of the node, the earliest started of
    /// several. The second finds a node whose wrapper exec'd another program (`sh -c '...;
    /// exec "$@"'`: its command line is no longer the node's) when a Supervisor was killed
    /// between its spawn and naming it in the lock file.
    pub(super) fn unnamed_main(
        &self,
        i: usize,
        held: bool,
        procs: &[procscan::NodeProcess],
    ) -> io::Result<Option<(u32, u64)>> {
        if let Some(c) = procscan::leader_running(procs, &self.nodes[i].spec.command)? {
            return Ok(Some(c));
        }
        if !held {
            return Ok(None);
        }
        let lock = self.instance.node_lock_path(&self.nodes[i].spec.name);
        let (holders, _) = procscan::lock_holders(&lock)?;
        let ours: HashSet<u32> = procs.iter().map(|p| p.pid).collect();
        let mut best: Option<(u32, u64)> = None;
        for p in procs
            .iter()
            .filter(|p| p.pgid == p.pid && holders.contains(&p.pid))
        {
            if procstat::parent(p.pid)?.is_some_and(|pp| ours.contains(&pp)) {
                continue;
            }
            if best.is_none_or(|(_, s)| p.start < s) {
                best = Some((p.pid, p.start));
            }
        }
        Ok(best)
    }

    /// Some process of node `i` lives (it holds the node's lock, or carries its identity):
    /// adopts it if it is the node itself, otherwise blocks the start until it is gone.
    pub(super) fn adopt_or_block(
        &mut self,
        i: usize,
        recorded: (u32, u64),
        held: bool,
        procs: &[procscan::NodeProcess],
    ) -> Input {
        let name = self.nodes[i].spec.name.clone();
        let instance = self.instance.name().to_owned();
        // The node itself: the group leader its lock file names (even if it closed the lock
        // fd: the file keeps the name), else a group leader running the node's command.
        let named = procs
            .iter()
            .find(|p| p.pid == recorded.0 && p.start == recorded.1 && p.pgid == p.pid)
            .map(|p| (p.pid, p.start));
        let candidate = match named {
            Some(c) => Ok(Some(c)),
            None => self.unnamed_main(i, held, procs),
        };
        let candidate = match candidate {
            Ok(c) => c,
            Err(e) => {
                return self.block(
                    i,
                    BLOCKED_UNKNOWN,
                    &format!("cannot check /proc for a running copy ({e})"),
                );
            }
        };
        if let Some((pid, start)) = candidate.filter(|(p, _)| !self.by_pid.contains_key(p)) {
            let started = match procstat::age_ns(pid, start) {
                Ok(Some(age)) => (
                    clock::monotonic_ns().saturating_sub(age),
                    clock::wall_ms().saturating_sub(age / 1_000_000),
                ),
                _ => (clock::monotonic_ns(), clock::wall_ms()),
            };
            let how = if held {
                "already holds its lock"
            } else {
                "already runs"
            };
            log!("node {name}: a copy (pid {pid}) {how}; adopting it instead of starting another");
            if self.watch_survivor(i, pid, start) {
                self.unblock(i);
                return Input::Adopted {
                    node: i,
                    proc_: Proc { pid, start },
                    started,
                };
            }
        }
        if let Some(c) = &self.cgroups {
            // Whatever is in the node's group is the node's: not itself, so leftovers. They
            // end, and the start waits until the group is empty.
            let g = c.node(&name);
            log!(
                "node {name}: {} process(es) left in its cgroup; killing them before it starts",
                procs.len()
            );
            self.nodes[i].cgroup_fresh = false;
            if let Err(e) = g.kill() {
                log!("node {name}: cgroup.kill in {}: {e}", g.dir().display());
            }
            self.watch_cgroup(i);
        }
        let (blocker, why) = match procs.first() {
            Some(p) if p.pgid != p.pid => (
                p.pid,
                format!(
                    "pid {} of this node (outside its process group) still runs",
                    p.pid
                ),
            ),
            Some(p) => (
                p.pid,
                format!(
                    "pid {} carries this node's identity but is not its command",
                    p.pid
                ),
            ),
            None if held && procstat::is_alive(recorded.0, recorded.1) => {
                (recorded.0, format!("pid {} holds its lock", recorded.0))
            }
            None => self.lock_blocker(i),
        };
        let _ = instance;
        self.block(i, blocker, &why)
    }

    /// Node `i` cannot start while `pid` (a process of it that is not ours) lives: its exit
    /// is watched through a pidfd (the machine rechecks on a backoff too, for blockers a
    /// pidfd cannot watch). Logged only when the blocker changes, so a long block costs
    /// nothing. Returns the machine's input.
    pub(super) fn block(&mut self, i: usize, pid: u32, why: &str) -> Input {
        if self.machine.blocked_by(i) != Some(pid) && self.nodes[i].blocker_pid != pid {
            // A blocker by pid is a process of the node (its identity, or its lock held):
            // `stop` ends it (signal_escaped). One that cannot be named, it cannot.
            let name = &self.nodes[i].spec.name;
            if pid == BLOCKED_UNKNOWN {
                log!("node {name}: not started: {why}; checking again until it can be told that nothing of it runs");
            } else {
                log!("node {name}: not started: {why}; waiting until it is gone (`broctld stop {name}` ends it)");
            }
        }
        if self.nodes[i].blocker_pid != pid || self.nodes[i].blocker.is_none() {
            self.unblock(i);
            if pid != BLOCKED_UNKNOWN {
                if let Ok(fd) = pidfd::open(pid) {
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut SourceFd(&fd.as_raw_fd()),
                            Source::Blocker(i).token(),
                            Interest::READABLE,
                        )
                        .is_ok()
                    {
                        self.nodes[i].blocker = Some(fd);
                        self.nodes[i].blocker_pid = pid;
                    }
                }
            }
        }
        Input::Blocked { node: i, by: pid }
    }

    /// Every live process carrying node `i`'s identity. A full `/proc` scan (about 1 ms per
    /// 130 processes), skipped when the answer is known to be "none": the node's processes
    /// all descend from us ([`Node::descendants_only`]) and every child we have is a node we
    /// know (so no leftover of any node was reparented to us). That keeps the scan off the
    /// restart path of a node that leaves nothing behind.
    pub(super) fn node_processes(&self, i: usize) -> io::Result<Vec<procscan::NodeProcess>> {
        if let Some(c) = &self.cgroups {
            return cgroup_processes(&c.node(&self.nodes[i].spec.name));
        }
        if self.nodes[i].descendants_only && !self.unknown_children()? {
            return Ok(Vec::new());
        }
        procscan::node_processes(
            &self.nodes[i].spec.name,
            self.instance.name(),
            &self.instance.nodes_dir(),
        )
    }

    /// Whether we have a child that is no node we know: a leftover reparented to us.
    fn unknown_children(&self) -> io::Result<bool> {
        let me = std::process::id();
        for task in std::fs::read_dir(format!("/proc/{me}/task"))? {
            let task = task?;
            let text = std::fs::read_to_string(task.path().join("children"))?;
            if text
                .split_ascii_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .any(|p| !self.by_pid.contains_key(&p))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The pidfd of what blocked node `i`'s start turned readable: if that process is gone,
    /// the machine checks again now.
    pub(super) fn blocker_ended(&mut self, i: usize) {
        let gone = self
            .nodes
            .get(i)
            .and_then(|n| n.blocker.as_ref())
            .is_some_and(|fd| pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(false));
        if gone {
            self.unblock(i);
            self.feed(Input::BlockerGone { node: i });
        }
    }

    /// Stops watching what blocked node `i`'s start.
    pub(super) fn unblock(&mut self, i: usize) {
        if let Some(fd) = self.nodes[i].blocker.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        self.nodes[i].blocker_pid = 0;
    }

    /// Sends `sig` to every process carrying node `i`'s identity outside its process group
    /// (`group`: the node's pid, 0 if it has none): copies that escaped with `setsid` or by
    /// daemonizing, which a signal to the group misses. Used by stop, its SIGKILL and shutdown.
    pub(super) fn signal_escaped(&mut self, i: usize, group: u32, sig: i32) {
        let name = self.nodes[i].spec.name.clone();
        if let Some(c) = &self.cgroups {
            // The node's processes are its cgroup's, wherever they went.
            let g = c.node(&name);
            let r = if sig == libc::SIGKILL {
                // An empty group is not killed: that would only make it unfit for starting
                // the next process in it (see Node::cgroup_fresh).
                match g.populated() {
                    Ok(false) => Ok(()),
                    _ => {
                        self.nodes[i].cgroup_fresh = false;
                        g.kill()
                    }
                }
            } else {
                // Those the signal to the group missed (no process gets it twice).
                cgroup_processes(&g).map(|procs| {
                    for p in procs.iter().filter(|p| group == 0 || p.pgid != group) {
                        let _ = spawn::signal_pid(p.pid, sig);
                    }
                })
            };
            if let Err(e) = r {
                log!("node {name}: signalling cgroup {}: {e}", g.dir().display());
            }
            return;
        }
        let mut signalled = Vec::new();
        match self.node_processes(i) {
            Ok(procs) => {
                for p in procs.iter().filter(|p| group == 0 || p.pgid != group) {
                    log!(
                        "node {name}: pid {} escaped its process group; sending it signal {sig}",
                        p.pid
                    );
                    let _ = spawn::signal_pid(p.pid, sig);
                    signalled.push(p.pid);
                }
            }
            Err(e) => log!("node {name}: cannot look for escaped processes in /proc: {e}"),
        }
        // Those that hold its lock without its identity, when it ends (identity.rs).
        self.end_lock_holders(i, group, sig, signalled);
    }

    /// Takes node `i`'s lock file. `Taken(None, ..)` if it cannot be used (logged; the node
    /// starts without one). Either way, the pid and start time the file names (its last
    /// holder, which may have closed the fd but still run).
    pub(super) fn node_lock(&self, i: usize) -> NodeLock {
        let dir = self.instance.nodes_dir();
        if let Err(e) = crate::sys::checked::private_dir(&dir) {
            log!("node locks: {e}");
            return NodeLock::Taken(None, (0, 0));
        }
        let path = dir.join(format!("{}.lock", self.nodes[i].spec.name));
        match lockfile::LockFile::acquire_quiet(&path) {
            Ok(mut l) => {
                let recorded = l.holder();
                NodeLock::Taken(Some(l), recorded)
            }
            Err(lockfile::LockError::Held { .. }) => match lockfile::LockFile::probe(&path) {
                Ok(lockfile::Probe::Held { pid, start, .. }) => NodeLock::Held((pid, start)),
                // Released in between: try again next time round.
                _ => NodeLock::Held((0, 0)),
            },
            Err(e) => {
                log!(
                    "node {}: lock file: {e}; starting it without one",
                    self.nodes[i].spec.name
                );
                NodeLock::Taken(None, (0, 0))
            }
        }
    }

    /// Stops watching node `i`'s readiness FIFO and removes it (also one a predecessor left).
    pub(super) fn drop_ready_pipe(&mut self, i: usize) {
        if let Some(r) = self.nodes[i].ready_pipe.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&r.as_raw_fd()));
        }
        if self.nodes[i].spec.policy.ready_fd.is_some() {
            readiness::remove(&readiness::path(
                &self.instance.dir(),
                &self.nodes[i].spec.name,
            ));
        }
    }

    /// Reads a node's readiness FIFO: a newline means ready (s6's notification-fd protocol).
    /// The FIFO is open read-write on both sides, so there is no end of file to see.
    pub(super) fn check_ready(&mut self, i: usize) {
        let Some(r) = self.nodes[i].ready_pipe.as_ref() else {
            return;
        };
        let ready = match readiness::read_ready(r) {
            Ok(ready) => ready,
            Err(e) => {
                log!(
                    "node {}: reading its readiness FIFO: {e}",
                    self.nodes[i].spec.name
                );
                false
            }
        };
        if ready {
            self.drop_ready_pipe(i);
            self.mark_ready(i);
        }
    }

    /// A starting node said it is ready (readiness pipe, ready file, sd_notify, check).
    pub(super) fn mark_ready(&mut self, i: usize) {
        self.feed(Input::Ready { node: i });
    }

    /// Carries out [`Action::Signal`]: the node's process group, and its processes outside it.
    fn send_signal(&mut self, i: usize, pid: u32, sig: i32) {
        if pid != 0 {
            if let Err(e) = spawn::signal_group(pid, sig) {
                log!(
                    "node {}: sending signal {sig} to pid {pid}: {e}",
                    self.nodes[i].spec.name
                );
            }
        }
        self.signal_escaped(i, pid, sig);
    }

    /// A child (or an adopted node, or a process the guardian reported) ended: a ready check,
    /// a node's main process (fed to the machine, with whether its cgroup still holds
    /// processes), or an orphan.
    pub(super) fn on_exit(&mut self, pid: u32, exit: Exit) {
        self.exit_reported(pid, exit, Reporter::Reaped);
    }

    /// [`Self::on_exit`], saying who reported it.
    pub(super) fn exit_reported(&mut self, pid: u32, exit: Exit, by: Reporter) {
        if self.check_ended(pid, exit) {
            return;
        }
        let Some(&i) = self.by_pid.get(&pid) else {
            let mut ev = Event::now(EventKind::OrphanReaped, NO_NODE, pid);
            ev.exit = Some(exit);
            self.event(ev);
            return;
        };
        if self.main_pid(i) != Some(pid) {
            self.by_pid.remove(&pid);
            return;
        }
        // Its main process handed over on purpose to the one its PID file names now (not a
        // forking daemon's starter: its exit hands over to the PID file in the machine).
        let starter = matches!(
            self.machine.core(i).phase,
            machine::Phase::Starting {
                ready: Readiness::Starter(_),
                ..
            }
        );
        if !starter && matches!(by, Reporter::Reaped | Reporter::Guardian | Reporter::Pidfd) {
            if let Some(input) = self.follow_pid_file(i, pid, exit) {
                self.release(i, pid);
                self.feed(input);
                return;
            }
        }
        // Its last words go to its files before anything reads them (a crash report); at a
        // takeover its FIFOs may not be open yet.
        self.resume_node_outputs(i);
        self.pump_outputs(i);
        let leftovers = match &self.cgroups {
            Some(c) => c.node(&self.nodes[i].spec.name).populated().unwrap_or(true),
            None => false,
        };
        if leftovers {
            log!(
                "node {}: pid {pid} ended; killing what is left in its cgroup",
                self.nodes[i].spec.name
            );
        }
        self.feed(Input::Exited {
            node: i,
            pid,
            exit,
            leftovers,
            by,
        });
    }

    /// Carries out [`Action::Release`]: node `i`'s main process `pid` ended, so what watched
    /// it goes (a forking daemon's starter keeps the node's readiness watches).
    fn release(&mut self, i: usize, pid: u32) {
        self.by_pid.remove(&pid);
        if let Some(fd) = self.nodes[i].pidfd.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        self.nodes[i].adopted = false;
        if let Some(e) = self.nodes[i].extras_if_any() {
            e.notify_phase = None;
        }
        if let machine::Phase::AwaitingMain { .. } = self.machine.core(i).phase {
            return;
        }
        self.drop_ready_pipe(i);
        self.close_notify(i);
        self.drop_ready_check(i);
    }

    /// Carries out [`Action::KillLeftovers`]: what is left of node `i` ends (its process
    /// group `pid`, its escaped processes, and with `group` its whole cgroup, whose emptying is
    /// then watched). Returns [`Input::GroupEmpty`] if the group is empty already.
    fn kill_leftovers(&mut self, i: usize, pid: u32, group: bool, stop: bool) -> Option<Input> {
        if group {
            if let Some(g) = self.node_group(&self.nodes[i].spec.name) {
                self.nodes[i].cgroup_fresh = false;
                if let Err(e) = g.kill() {
                    log!(
                        "node {}: cgroup.kill in {}: {e}",
                        self.nodes[i].spec.name,
                        g.dir().display()
                    );
                }
                self.watch_cgroup(i);
                // Emptied between the check and the watch: no notification will come.
                return self
                    .group_emptied(i)
                    .then_some(Input::GroupEmpty { node: i });
            }
            return Some(Input::GroupEmpty { node: i });
        }
        // Leftovers of the node's process group (background jobs) do not outlive it: not after
        // a stop, and not before its replacement starts (they would hold its lock, and a
        // restarted node must not find stale children of its predecessor).
        if pid != 0 {
            let _ = spawn::signal_group_only(pid, libc::SIGKILL);
        }
        // Those that escaped its group (setsid, daemonizing) but still carry its identity are
        // its leftovers too: they would count as a second copy, so they end with it (the
        // restart waits until they are gone). With a cgroup there are none: it is empty here.
        if self.cgroups.is_none() {
            self.signal_escaped(i, pid, libc::SIGKILL);
            if stop {
                // The end of a stop: whatever still holds its lock is the node's too.
                self.end_lock_holders(i, 0, libc::SIGKILL, Vec::new());
            }
        }
        None
    }

    /// Watches node `i`'s process `pid` with a pidfd (readable when it exits).
    pub(super) fn watch_pid(&mut self, i: usize, pid: u32) {
        match pidfd::open(pid) {
            Ok(fd) => {
                let _ = self.poll.registry().register(
                    &mut SourceFd(&fd.as_raw_fd()),
                    Source::Pidfd(i).token(),
                    Interest::READABLE,
                );
                self.nodes[i].pidfd = Some(fd);
            }
            Err(e) => log!(
                "node {}: pidfd_open({pid}): {e}; relying on SIGCHLD",
                self.nodes[i].spec.name
            ),
        }
    }

    /// Node `name`'s cgroup, if nodes have one.
    pub(super) fn node_group(&self, name: &str) -> Option<crate::sys::cgroup::Cgroup> {
        self.cgroups.as_ref().map(|c| c.node(name))
    }

    /// Watches node `i`'s `cgroup.events` (wakes the loop when its group empties).
    pub(super) fn watch_cgroup(&mut self, i: usize) {
        let Some(c) = &self.cgroups else {
            return;
        };
        if self.nodes[i].cgroup_events.is_some() {
            return;
        }
        let g = c.node(&self.nodes[i].spec.name);
        match g.open_events() {
            Ok(f) => {
                match self.poll.registry().register(
                    &mut SourceFd(&f.as_raw_fd()),
                    Source::Cgroup(i).token(),
                    Interest::PRIORITY,
                ) {
                    Ok(()) => self.nodes[i].cgroup_events = Some(f),
                    Err(e) => log!(
                        "node {}: cannot watch {}: {e}",
                        self.nodes[i].spec.name,
                        g.dir().display()
                    ),
                }
            }
            Err(e) => log!(
                "node {}: cannot open {}/cgroup.events: {e}",
                self.nodes[i].spec.name,
                g.dir().display()
            ),
        }
    }

    /// Node `i`'s `cgroup.events` changed (or may have): once the group is empty, the
    /// machine hears of it (a drained end applies; a start blocked by leftovers goes ahead).
    pub(super) fn cgroup_changed(&mut self, i: usize) {
        if self.group_emptied(i) {
            self.feed(Input::GroupEmpty { node: i });
        }
    }

    /// Whether node `i`'s watched group is empty now (the watch is then dropped).
    fn group_emptied(&mut self, i: usize) -> bool {
        let Some(f) = self.nodes[i].cgroup_events.as_mut() else {
            return false;
        };
        match crate::sys::cgroup::events_populated(f) {
            Ok(true) => return false,
            Ok(false) => {}
            Err(e) => {
                log!(
                    "node {}: reading cgroup.events: {e}",
                    self.nodes[i].spec.name
                );
                return false;
            }
        }
        if let Some(f) = self.nodes[i].cgroup_events.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&f.as_raw_fd()));
        }
        true
    }

    pub(super) fn write_crash_report(
        &self,
        spec: &crate::config::NodeSpec,
        pid: u32,
        exit: Exit,
        uptime_ms: u64,
    ) {
        let instance = self.instance.name();
        let env = [
            ("BROCTLD_NODE", spec.name.as_str()),
            ("BROCTLD_INSTANCE", instance),
        ];
        let report = crash::Crash {
            spec,
            instance,
            pid,
            exit,
            uptime_ms,
            extra_env: &env,
        };
        match crash::write(&report) {
            Ok(p) => log!(
                "node {}: pid {pid} {}; crash report {}",
                spec.name,
                exit.describe(),
                p.display()
            ),
            Err(e) => log!(
                "node {}: pid {pid} {}; cannot write crash report: {e}",
                spec.name,
                exit.describe()
            ),
        }
    }
}

/// The processes in a node's cgroup, as the `/proc` scan would list them (zombies and those
/// gone meanwhile left out).
fn cgroup_processes(g: &crate::sys::cgroup::Cgroup) -> io::Result<Vec<procscan::NodeProcess>> {
    let mut out = Vec::new();
    for pid in g.procs()? {
        let Some(st) = procstat::stat(pid)? else {
            continue;
        };
        if matches!(st.state, 'Z' | 'X') {
            continue;
        }
        out.push(procscan::NodeProcess {
            pid,
            start: st.start,
            pgid: st.pgid,
        });
    }
    Ok(out)
}
