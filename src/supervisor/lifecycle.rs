//! A node's lifecycle: spawning it, noticing it is ready, killing it after its stop timeout,
//! and deciding what happens when its process ends.

use super::*;

impl Supervisor {
    pub(super) fn fire_timers(&mut self) {
        let now = clock::monotonic_ns();
        for i in 0..self.nodes.len() {
            if let Some(t) = self.nodes[i].ready_by {
                if t <= now
                    && self.nodes[i].state == NodeState::Starting
                    && !self.nodes[i].ready_timed_out
                {
                    self.nodes[i].ready_timed_out = true;
                    if self.nodes.iter().any(|n| n.queue.is_some()) {
                        log!(
                            "node {}: not ready after {} ms; the next stage starts anyway",
                            self.nodes[i].spec.name,
                            self.nodes[i].spec.policy.ready_timeout.as_millis()
                        );
                    }
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
        let mut lock = match self.node_lock(i) {
            Ok(l) => l,
            Err((file_pid, file_start)) => {
                // The file may not name the holder (a Supervisor killed between the fork and
                // writing it): then look for the node itself.
                let (pid, start) = if is_survivor(file_pid, file_start) {
                    (file_pid, file_start)
                } else {
                    find_node_process(&name, self.instance.name(), &self.nodes[i].spec.command)
                        .unwrap_or((0, 0))
                };
                // Only a process that is this node of this instance (its environment says so)
                // is adopted: the lock file is writable through the node's fd, so its content
                // alone must not make us adopt (and later signal) an arbitrary process.
                if is_survivor(pid, start)
                    && !self.by_pid.contains_key(&pid)
                    && is_node_process(pid, &name, self.instance.name())
                {
                    let mut rec = self.nodes[i].record();
                    rec.pid = Some(pid);
                    rec.pid_start = start;
                    rec.started_mono_ns = now;
                    rec.started_wall_ms = clock::wall_ms();
                    log!("node {name}: a copy (pid {pid}) already holds its lock; adopting it instead of starting another");
                    self.nodes[i].start_after_exit = false;
                    self.adopt(i, &rec);
                    if self.nodes[i].pid == Some(pid) {
                        self.publish(i);
                        return;
                    }
                }
                if self.nodes[i].state != NodeState::Backoff {
                    log!("node {name}: its lock is still held by a leftover process; retrying every 50 ms");
                }
                let n = &mut self.nodes[i];
                n.state = NodeState::Backoff;
                n.deadline = Some(now + 50_000_000);
                self.publish(i);
                return;
            }
        };
        if again {
            self.nodes[i].restarts = self.nodes[i].restarts.saturating_add(1);
        }
        self.nodes[i].start_after_exit = false;
        self.nodes[i].killed = false;
        self.nodes[i].adopted = false;
        self.drop_ready_pipe(i);
        let ready_fd = self.nodes[i].spec.policy.ready_fd;
        let pipe = match ready_fd {
            Some(_) => match nix::unistd::pipe2(
                nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
            ) {
                Ok((r, w)) => Some((File::from(r), w)),
                Err(e) => {
                    log!("node {name}: cannot create its readiness pipe: {e}; it will count as ready at once");
                    None
                }
            },
            None => None,
        };
        let mut pass = Vec::new();
        if let (Some((_, w)), Some(target)) = (&pipe, ready_fd) {
            pass.push((w.as_raw_fd(), target));
        }
        let lock_target = if ready_fd == Some(3) { 4 } else { 3 };
        let lock_target_text = lock_target.to_string();
        let mut env = env.to_vec();
        if let Some(l) = &lock {
            pass.push((l.file().as_raw_fd(), lock_target));
            env.push(("BROCTLD_LOCK_FD", lock_target_text.as_str()));
        }
        let by_file = self.arm_ready_file(i);
        let mut prepared = std::mem::take(&mut self.nodes[i].prepared);
        let result = spawn::spawn(
            &self.nodes[i].spec,
            &self.config_dir,
            &env,
            &pass,
            &mut prepared,
        );
        self.nodes[i].prepared = prepared;
        let ready_rd = pipe.map(|(r, _w)| r); // the write end closes here: only the child has it
        match result {
            Ok(pid) => {
                if let Some(r) = ready_rd {
                    match self.poll.registry().register(
                        &mut SourceFd(&r.as_raw_fd()),
                        Token(NODE_BASE + 2 * i + 1),
                        Interest::READABLE,
                    ) {
                        Ok(()) => self.nodes[i].ready_pipe = Some(r),
                        Err(e) => log!("node {name}: cannot watch its readiness pipe: {e}"),
                    }
                }
                let n = &mut self.nodes[i];
                n.pid = Some(pid);
                n.pid_start = procstat::start_time(pid).ok().flatten().unwrap_or(0);
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
                match pidfd::open(pid) {
                    Ok(fd) => {
                        let _ = self.poll.registry().register(
                            &mut SourceFd(&fd.as_raw_fd()),
                            Token(NODE_BASE + 2 * i),
                            Interest::READABLE,
                        );
                        n.pidfd = Some(fd);
                    }
                    Err(e) => log!("node {name}: pidfd_open({pid}): {e}; relying on SIGCHLD"),
                }
                let ready_after = n.spec.policy.ready_after;
                n.ready_by = Some(now + n.spec.policy.ready_timeout.as_nanos() as u64);
                n.ready_timed_out = false;
                if n.ready_pipe.is_some() || by_file {
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

    /// Takes node `i`'s lock file, `Ok(None)` if it cannot be used (logged; the node starts
    /// without one), or the holder's pid and start time if someone holds it.
    pub(super) fn node_lock(&self, i: usize) -> Result<Option<lockfile::LockFile>, (u32, u64)> {
        let dir = self.instance.dir().join("nodes");
        if let Err(e) = crate::sys::checked::private_dir(&dir) {
            log!("node locks: {e}");
            return Ok(None);
        }
        let path = dir.join(format!("{}.lock", self.nodes[i].spec.name));
        match lockfile::LockFile::acquire_quiet(&path) {
            Ok(l) => Ok(Some(l)),
            Err(lockfile::LockError::Held { .. }) => match lockfile::LockFile::probe(&path) {
                Ok(lockfile::Probe::Held { pid, start, .. }) => Err((pid, start)),
                // Released in between: try again next time round.
                _ => Err((0, 0)),
            },
            Err(e) => {
                log!(
                    "node {}: lock file: {e}; starting it without one",
                    self.nodes[i].spec.name
                );
                Ok(None)
            }
        }
    }

    pub(super) fn drop_ready_pipe(&mut self, i: usize) {
        if let Some(r) = self.nodes[i].ready_pipe.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&r.as_raw_fd()));
        }
    }

    /// Reads a node's readiness pipe: a newline means ready (s6's notification-fd protocol).
    /// End of file without one means the node closed it without ever being ready.
    pub(super) fn check_ready(&mut self, i: usize) {
        let Some(r) = self.nodes[i].ready_pipe.as_ref() else {
            return;
        };
        let mut buf = [0u8; 64];
        let mut ready = false;
        let mut closed = false;
        loop {
            match std::io::Read::read(&mut &*r, &mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => ready |= buf[..n].contains(&b'\n'),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EAGAIN: drained
            }
        }
        if ready || closed {
            self.drop_ready_pipe(i);
        }
        if closed && !ready {
            log!(
                "node {}: closed its ready_fd without writing a newline; it stays 'starting'",
                self.nodes[i].spec.name
            );
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
            self.nodes[i].killed = true;
            self.event(Event::now(EventKind::Killed, i as u16, pid));
        }
    }

    pub(super) fn on_exit(&mut self, pid: u32, exit: Exit) {
        let Some(i) = self.by_pid.remove(&pid) else {
            let mut ev = Event::now(EventKind::OrphanReaped, NO_NODE, pid);
            ev.exit = Some(exit);
            self.event(ev);
            return;
        };
        let now = clock::monotonic_ns();
        let n = &mut self.nodes[i];
        if n.pid != Some(pid) {
            return;
        }
        if let Some(fd) = n.pidfd.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        n.pid = None;
        n.pid_start = 0;
        n.adopted = false;
        n.last_exit = Some(exit);
        self.drop_ready_pipe(i);
        let n = &mut self.nodes[i];
        let was_stopping =
            n.state == NodeState::Stopping || matches!(n.queue, Some(Queue::Stop { .. }));
        if matches!(n.queue, Some(Queue::Stop { .. })) {
            n.queue = None;
        }
        // Leftovers of the node's process group (background jobs) do not outlive it: not after
        // a stop, and not before its replacement starts (they would hold its lock, and a
        // restarted node must not find stale children of its predecessor).
        if !matches!(exit, Exit::Unknown) || was_stopping {
            let _ = spawn::signal_group_only(pid, libc::SIGKILL);
        }
        let mut ev = Event::now(EventKind::Exited, i as u16, pid);
        ev.exit = Some(exit);
        self.event(ev);
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
                self.spawn(i, true);
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
