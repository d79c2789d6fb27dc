//! A node's lifecycle: spawning it, noticing it is ready, killing it after its stop timeout,
//! and deciding what happens when its process ends.

use super::*;

/// What taking a node's lock found.
pub(super) enum NodeLock {
    /// We hold it (`None`: no usable lock file); the holder the file named before.
    Taken(Option<lockfile::LockFile>, (u32, u64)),
    /// A live process holds it; the holder the file names.
    Held((u32, u64)),
}

impl Supervisor {
    pub(super) fn fire_timers(&mut self) {
        let now = clock::monotonic_ns();
        for i in 0..self.nodes.len() {
            if self.nodes[i].extras().watchdog_at.is_some_and(|t| t <= now) {
                self.watchdog_expired(i);
            }
            if self.nodes[i].extras().check_at.is_some_and(|t| t <= now) {
                self.run_ready_check(i);
            }
        }
        // A blocker's pidfd turned readable: it is gone, so check again now.
        for i in 0..self.nodes.len() {
            let gone = self.nodes[i]
                .blocker
                .as_ref()
                .is_some_and(|fd| pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(false));
            if gone {
                // Recheck now; a new blocker is logged afresh.
                self.unblock(i);
                if self.nodes[i].state == NodeState::Backoff {
                    self.nodes[i].deadline = Some(now);
                }
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(t) = self.nodes[i].ready_by {
                if t <= now && self.nodes[i].extras().pid_file_wait.is_some() {
                    self.nodes[i].ready_by = None;
                    self.give_up_pid_file(i, false);
                    continue;
                }
                if t <= now
                    && self.nodes[i].state == NodeState::Starting
                    && !self.nodes[i].ready_timed_out
                {
                    self.nodes[i].ready_timed_out = true;
                    self.publish(i);
                    self.ready_timed_out(i);
                }
            }
        }
        for i in 0..self.nodes.len() {
            let Some(d) = self.nodes[i].deadline else {
                continue;
            };
            if d > now {
                continue;
            }
            self.nodes[i].deadline = None;
            match self.nodes[i].state {
                NodeState::Backoff => self.spawn(i, true),
                NodeState::Stopping => self.kill(i),
                NodeState::Starting => {
                    self.nodes[i].state = NodeState::Running;
                    self.publish(i);
                    let pid = self.nodes[i].pid.unwrap_or(0);
                    self.event(Event::now(EventKind::Ready, i as u16, pid));
                }
                _ => {}
            }
        }
    }

    /// Spawns node `i`; `again` counts it as a restart.
    ///
    /// Fail safe: no copy starts while any process of the node may live. Its lock (held by
    /// every process that kept the inherited fd) and a `/proc` scan for processes carrying its
    /// identity (`BROCTLD_NODE` + `BROCTLD_INSTANCE`, which a program that closes its fds still
    /// carries) must both come back empty; a copy that is the node itself (a group leader named
    /// by its lock file, or running the node's command) is adopted; anything else blocks the
    /// start (`backoff`, with the blocking pid published) until it is gone. An OS error while
    /// checking blocks too: it is never taken as "nothing runs".
    pub(super) fn spawn(&mut self, i: usize, again: bool) {
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
            procscan::node_processes(
                &name,
                &instance,
                &super::identity::node_locks_dir(&self.instance),
            )
        } else {
            self.node_processes(i)
        } {
            Ok(p) => p,
            Err(e) => {
                drop(lock);
                self.block(
                    i,
                    BLOCKED_UNKNOWN,
                    &format!("cannot check /proc for a running copy ({e})"),
                );
                return;
            }
        };
        if held || !procs.is_empty() {
            drop(lock);
            self.adopt_or_block(i, recorded, held, &procs);
            return;
        }
        if again {
            self.nodes[i].restarts = self.nodes[i].restarts.saturating_add(1);
        }
        self.unblock(i);
        // Nothing of it lives: from here on every process of it is our descendant.
        self.nodes[i].descendants_only = true;
        self.nodes[i].start_after_exit = false;
        self.nodes[i].killed = false;
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
            e.watchdog_at = None;
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
        if let Some(e) = self.nodes[i].extras_if_any() {
            e.starter = None;
            e.pid_file_wait = None;
        }
        self.nodes[i].fail_after_stop = false;
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
                        Token(NODE_BASE + 2 * i + 1),
                        Interest::READABLE,
                    ) {
                        Ok(()) => self.nodes[i].ready_pipe = Some(r),
                        Err(e) => log!("node {name}: cannot watch its readiness FIFO: {e}"),
                    }
                }
                let n = &mut self.nodes[i];
                n.pid = Some(pid);
                n.pid_start = match start {
                    Some(t) => t,
                    None => procstat::start_time(pid).ok().flatten().unwrap_or(0),
                };
                if n.spec.policy.pid_file.is_some() {
                    n.extras_mut().starter = Some(pid);
                }
                if let Some(l) = lock.as_mut() {
                    let _ = l.write_holder(pid, n.pid_start);
                }
                // Our copy of the lock fd closes here; the node's copy keeps the lock.
                drop(lock.take());
                // Started = exec succeeded (spawn returns after it), not when we began: under
                // load a spawn can wait, and delays are measured between real starts.
                let now = clock::monotonic_ns();
                n.started_mono_ns = now;
                n.started_wall_ms = clock::wall_ms();
                self.watch_pid(i, pid);
                let n = &mut self.nodes[i];
                let ready_after = n.spec.policy.ready_after;
                n.ready_by = Some(now + n.spec.policy.ready_timeout.as_nanos() as u64);
                n.ready_timed_out = false;
                let checked = !n.spec.policy.ready_check.is_empty();
                if n.ready_pipe.is_some()
                    || by_file
                    || n.extras().starter.is_some()
                    || n.extras().notify.is_some()
                    || checked
                {
                    n.state = NodeState::Starting;
                    n.deadline = None;
                } else if ready_after.is_zero() {
                    n.state = NodeState::Running;
                    n.deadline = None;
                } else {
                    n.state = NodeState::Starting;
                    n.deadline = Some(now + ready_after.as_nanos() as u64);
                }
                let running = n.state == NodeState::Running;
                let restarts = n.restarts;
                if checked {
                    self.arm_ready_check(i);
                }
                self.by_pid.insert(pid, i);
                self.publish(i);
                let mut ev = Event::now(EventKind::Spawned, i as u16, pid);
                ev.a = restarts as u64;
                self.event(ev);
                if running {
                    self.event(Event::now(EventKind::Ready, i as u16, pid));
                }
            }
            Err(e) => {
                log!("{e}");
                // A refused start leaves nothing behind: no lock file, no FIFO.
                if let Some(l) = lock.take() {
                    l.remove();
                }
                readiness::remove(&fifo_path);
                let exit = Exit::SpawnFailed(e.errno());
                self.nodes[i].started_mono_ns = now;
                self.nodes[i].last_exit = Some(exit);
                let mut ev = Event::now(EventKind::SpawnFailed, i as u16, 0);
                ev.exit = Some(exit);
                self.event(ev);
                self.after_end(i, exit, now);
            }
        }
    }

    /// Some process of node `i` lives (it holds the node's lock, or carries its identity):
    /// adopts it if it is the node itself, otherwise blocks the start until it is gone.
    pub(super) fn adopt_or_block(
        &mut self,
        i: usize,
        recorded: (u32, u64),
        held: bool,
        procs: &[procscan::NodeProcess],
    ) {
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
            None => procscan::leader_running(procs, &self.nodes[i].spec.command),
        };
        let candidate = match candidate {
            Ok(c) => c,
            Err(e) => {
                self.block(
                    i,
                    BLOCKED_UNKNOWN,
                    &format!("cannot check /proc for a running copy ({e})"),
                );
                return;
            }
        };
        if let Some((pid, start)) = candidate.filter(|(p, _)| !self.by_pid.contains_key(p)) {
            let mut rec = self.nodes[i].record();
            rec.pid = Some(pid);
            rec.pid_start = start;
            match procstat::age_ns(pid, start) {
                Ok(Some(age)) => {
                    rec.started_mono_ns = clock::monotonic_ns().saturating_sub(age);
                    rec.started_wall_ms = clock::wall_ms().saturating_sub(age / 1_000_000);
                }
                _ => {
                    rec.started_mono_ns = clock::monotonic_ns();
                    rec.started_wall_ms = clock::wall_ms();
                }
            }
            let how = if held {
                "already holds its lock"
            } else {
                "already runs"
            };
            log!("node {name}: a copy (pid {pid}) {how}; adopting it instead of starting another");
            self.nodes[i].start_after_exit = false;
            if self.adopt(i, &rec) {
                self.unblock(i);
                self.nodes[i].state = NodeState::Running;
                self.nodes[i].deadline = None;
                self.publish(i);
                return;
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
        self.block(i, blocker, &why);
    }

    /// Keeps node `i` from starting while `pid` (a process of it that is not ours) lives:
    /// `backoff` with the blocker published, its exit watched through a pidfd, and a recheck
    /// that backs off from 50 ms to 5 s (for blockers a pidfd cannot watch). Logged and
    /// recorded as an event only when the blocker changes, so a long block costs nothing.
    pub(super) fn block(&mut self, i: usize, pid: u32, why: &str) {
        let now = clock::monotonic_ns();
        let changed = self.nodes[i].blocked_by != Some(pid);
        if changed {
            self.unblock(i);
            // A blocker by pid is a process of the node (its identity, or its lock held):
            // `stop` ends it (signal_escaped). One that cannot be named, it cannot.
            let name = &self.nodes[i].spec.name;
            if pid == BLOCKED_UNKNOWN {
                log!("node {name}: not started: {why}; checking again until it can be told that nothing of it runs");
            } else {
                log!("node {name}: not started: {why}; waiting until it is gone (`broctld stop {name}` ends it)");
            }
            if pid != BLOCKED_UNKNOWN {
                if let Ok(fd) = pidfd::open(pid) {
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut SourceFd(&fd.as_raw_fd()),
                            Token(NODE_BASE + 2 * i),
                            Interest::READABLE,
                        )
                        .is_ok()
                    {
                        self.nodes[i].blocker = Some(fd);
                    }
                }
            }
        }
        let n = &mut self.nodes[i];
        n.block_delay_ms = (n.block_delay_ms * 2).clamp(50, 5_000);
        n.blocked_by = Some(pid);
        n.state = NodeState::Backoff;
        n.deadline = Some(now + n.block_delay_ms * 1_000_000);
        let delay = n.block_delay_ms;
        self.publish(i);
        if changed {
            let mut ev = Event::now(EventKind::Backoff, i as u16, 0);
            ev.a = delay;
            ev.b = pid as u64;
            self.event(ev);
        }
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
            &super::identity::node_locks_dir(&self.instance),
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

    /// Forgets what blocked node `i`'s start.
    pub(super) fn unblock(&mut self, i: usize) {
        if let Some(fd) = self.nodes[i].blocker.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        self.nodes[i].blocked_by = None;
        self.nodes[i].block_delay_ms = 0;
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
        let dir = self.instance.dir().join("nodes");
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
        }
        if ready && self.nodes[i].state == NodeState::Starting {
            self.mark_ready(i);
        }
    }

    /// A starting node said it is ready (readiness pipe or ready file).
    pub(super) fn mark_ready(&mut self, i: usize) {
        self.nodes[i].state = NodeState::Running;
        self.publish(i);
        let pid = self.nodes[i].pid.unwrap_or(0);
        self.event(Event::now(EventKind::Ready, i as u16, pid));
    }

    pub(super) fn kill(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid {
            log!(
                "node {}: still running {} ms after its stop signal; sending SIGKILL",
                self.nodes[i].spec.name,
                self.nodes[i].spec.policy.stop_timeout.as_millis()
            );
            let _ = spawn::signal_group(pid, libc::SIGKILL);
            self.signal_escaped(i, pid, libc::SIGKILL);
            self.nodes[i].killed = true;
            self.publish(i);
            self.event(Event::now(EventKind::Killed, i as u16, pid));
        }
    }

    pub(super) fn on_exit(&mut self, pid: u32, exit: Exit) {
        if self.check_ended(pid, exit) {
            return;
        }
        let Some(i) = self.by_pid.remove(&pid) else {
            let mut ev = Event::now(EventKind::OrphanReaped, NO_NODE, pid);
            ev.exit = Some(exit);
            self.event(ev);
            return;
        };
        if self.nodes[i].pid != Some(pid) {
            return;
        }
        // Its last words go to its files before anything reads them (a crash report).
        self.pump_outputs(i);
        let n = &mut self.nodes[i];
        if let Some(fd) = n.pidfd.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        n.pid = None;
        n.pid_start = 0;
        n.adopted = false;
        let starter = n.extras_if_any().and_then(|e| {
            e.watchdog_at = None;
            e.notify_phase = None;
            e.starter.take()
        });
        if starter == Some(pid)
            && exit == Exit::Code(0)
            && n.state == NodeState::Starting
            && n.queue.is_none()
        {
            // A forking daemon's starter is done: its main process comes from its PID file.
            self.starter_exited(i, pid);
            return;
        }
        if self.follow_pid_file(i, pid, exit) {
            // Its main process handed over to the one its PID file names now.
            return;
        }
        let n = &mut self.nodes[i];
        n.last_exit = Some(exit);
        self.drop_ready_pipe(i);
        self.close_notify(i);
        self.drop_ready_check(i);
        let n = &mut self.nodes[i];
        let was_stopping =
            n.state == NodeState::Stopping || matches!(n.queue, Some(Queue::Stop { .. }));
        if matches!(n.queue, Some(Queue::Stop { .. })) {
            n.queue = None;
        }
        // With a cgroup: whatever is left in it is killed, and the end is applied once the
        // group is empty (a node is down when its group is).
        if let Some(c) = &self.cgroups {
            let g = c.node(&self.nodes[i].spec.name);
            if g.populated().unwrap_or(true) {
                log!(
                    "node {}: pid {pid} ended; killing what is left in its cgroup",
                    self.nodes[i].spec.name
                );
                self.nodes[i].cgroup_fresh = false;
                let _ = g.kill();
                let mut ev = Event::now(EventKind::Exited, i as u16, pid);
                ev.exit = Some(exit);
                self.event(ev);
                self.drain(i, pid, exit, was_stopping);
                return;
            }
        }
        // Leftovers of the node's process group (background jobs) do not outlive it: not after
        // a stop, and not before its replacement starts (they would hold its lock, and a
        // restarted node must not find stale children of its predecessor).
        if !matches!(exit, Exit::Unknown) || was_stopping {
            let _ = spawn::signal_group_only(pid, libc::SIGKILL);
        }
        // Those that escaped its group (setsid, daemonizing) but still carry its identity are
        // its leftovers too: they would count as a second copy, so they end with it (the
        // restart waits until they are gone). With a cgroup there are none: it is empty here.
        if self.cgroups.is_none() && (!matches!(exit, Exit::Unknown) || was_stopping) {
            self.signal_escaped(i, pid, libc::SIGKILL);
        }
        let mut ev = Event::now(EventKind::Exited, i as u16, pid);
        ev.exit = Some(exit);
        self.event(ev);
        self.ended(i, pid, exit, was_stopping);
    }

    /// Node `i`'s process `pid` ended and nothing of it is left: stopped, started again (a
    /// restart), or the restart policy.
    pub(super) fn ended(&mut self, i: usize, pid: u32, exit: Exit, was_stopping: bool) {
        let now = clock::monotonic_ns();
        // The crash report is written after the replacement is spawned: restart latency first.
        let crash =
            (!was_stopping && exit.is_failure() && !matches!(exit, Exit::Unknown)).then(|| {
                let n = &self.nodes[i];
                (
                    n.spec.clone(),
                    now.saturating_sub(n.started_mono_ns) / 1_000_000,
                )
            });
        if was_stopping {
            if self.nodes[i].start_after_exit && !self.shutting_down {
                // An operator's (or a reload's) restart: not a death, so not counted in
                // `restarts`; `last_exit` says how the process ended.
                self.spawn(i, false);
            } else if std::mem::take(&mut self.nodes[i].fail_after_stop) {
                // ready_timeout_action = "fail".
                self.nodes[i].state = NodeState::Failed;
                self.nodes[i].deadline = None;
                self.publish(i);
                self.event(Event::now(EventKind::Failed, i as u16, 0));
            } else {
                self.nodes[i].state = NodeState::Stopped;
                self.nodes[i].deadline = None;
                self.publish(i);
                self.event(Event::now(EventKind::Stopped, i as u16, 0));
            }
            return;
        }
        self.after_end(i, exit, now);
        if let Some((spec, uptime_ms)) = crash {
            self.write_crash_report(&spec, pid, exit, uptime_ms);
        }
    }

    /// Watches node `i`'s process `pid` with a pidfd (readable when it exits).
    pub(super) fn watch_pid(&mut self, i: usize, pid: u32) {
        match pidfd::open(pid) {
            Ok(fd) => {
                let _ = self.poll.registry().register(
                    &mut SourceFd(&fd.as_raw_fd()),
                    Token(NODE_BASE + 2 * i),
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
                    Token(CGROUP_BASE + i),
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

    /// Node `i`'s process `pid` ended (`exit`) and its cgroup still has processes, being
    /// killed: it is `stopping` (pid none) until the group is empty, then `ended` applies.
    /// Published, so `status` never shows a node whose main process is gone as running, and a
    /// successor knows (the `DRAINING_DEATH` intent) that the restart policy decides its end.
    pub(super) fn drain(&mut self, i: usize, pid: u32, exit: Exit, was_stopping: bool) {
        let n = &mut self.nodes[i];
        n.draining = Some((pid, exit, was_stopping));
        n.state = NodeState::Stopping;
        n.deadline = None;
        self.publish(i);
        self.watch_cgroup(i);
        // Emptied between the check and the watch: no notification will come.
        self.cgroup_changed(i);
    }

    /// Node `i`'s `cgroup.events` changed (or may have): once the group is empty, a drained
    /// end is applied and a start blocked by leftovers goes ahead.
    pub(super) fn cgroup_changed(&mut self, i: usize) {
        let Some(f) = self.nodes[i].cgroup_events.as_mut() else {
            return;
        };
        match crate::sys::cgroup::events_populated(f) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                log!(
                    "node {}: reading cgroup.events: {e}",
                    self.nodes[i].spec.name
                );
                return;
            }
        }
        if let Some(f) = self.nodes[i].cgroup_events.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&f.as_raw_fd()));
        }
        if let Some((pid, exit, was_stopping)) = self.nodes[i].draining.take() {
            self.ended(i, pid, exit, was_stopping);
        } else if self.nodes[i].blocked_by.is_some() {
            self.unblock(i);
            if self.nodes[i].state == NodeState::Backoff {
                self.nodes[i].deadline = Some(clock::monotonic_ns());
            }
        }
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

    /// Applies the restart policy to a node whose process ended on its own (or never started).
    pub(super) fn after_end(&mut self, i: usize, exit: Exit, now: u64) {
        let n = &mut self.nodes[i];
        n.pid = None;
        if self.shutting_down || n.retiring {
            n.state = NodeState::Stopped;
            n.deadline = None;
            self.publish(i);
            return;
        }
        let started = n.started_mono_ns;
        match policy::decide(&n.spec.policy, &mut n.history, exit, started, now) {
            Decision::RestartAt(at) if at <= now => {
                self.publish(i);
                self.spawn(i, true);
            }
            Decision::RestartAt(at) => {
                n.state = NodeState::Backoff;
                n.deadline = Some(at);
                self.publish(i);
                let mut ev = Event::now(EventKind::Backoff, i as u16, 0);
                ev.a = (at - now) / 1_000_000;
                self.event(ev);
            }
            Decision::Stop => {
                n.state = NodeState::Stopped;
                n.deadline = None;
                self.publish(i);
                self.event(Event::now(EventKind::Stopped, i as u16, 0));
            }
            Decision::Fail { quick_deaths } => {
                log!(
                    "node {}: giving up ({} quick deaths); `broctld start {}` tries again",
                    n.spec.name,
                    quick_deaths,
                    n.spec.name
                );
                n.state = NodeState::Failed;
                n.deadline = None;
                self.publish(i);
                let mut ev = Event::now(EventKind::Failed, i as u16, 0);
                ev.a = quick_deaths as u64;
                self.event(ev);
            }
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

/// Node `name`'s lock file in `instance`'s dir.
pub(super) fn node_lock_path(instance: &Instance, name: &str) -> PathBuf {
    instance.dir().join("nodes").join(format!("{name}.lock"))
}
