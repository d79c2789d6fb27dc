//! Taking over from a predecessor: adopting the nodes that survived it and resuming exactly
//! what it was doing with each (a stop and its SIGKILL deadline, a start waiting for
//! readiness, a restart delay, a pending restart, queued starts and stops), keeping stopped
//! and failed nodes down, carrying restart counts and last exits across.

use super::*;

impl Supervisor {
    /// Publishes ownership, takes over what a predecessor recorded (`previous`: its nodes by
    /// name) — adopting survivors, keeping stopped and failed nodes down, carrying restart
    /// counts and last exits over — and starts the autostart nodes that should run.
    pub(super) fn take_over(&mut self, mut previous: HashMap<String, NodeRecord>) {
        let h = self.shared.header();
        // A predecessor killed while it shut down had acknowledged the `shutdown`: this one
        // finishes it (stops every node, then exits) rather than starting anything.
        let finish_shutdown = !previous.is_empty()
            && h.state.load(Ordering::Acquire) == SupervisorState::ShuttingDown as u32;
        // Not `ready` until the takeover is done: a dead predecessor left `ready` here, and a
        // Main must not attach to (and report the half-resumed records of) a Supervisor that
        // is still deciding what each node is.
        h.state
            .store(SupervisorState::Starting as u32, Ordering::SeqCst);
        let generation = h.generation.load(Ordering::Relaxed) + 1;
        h.generation.store(generation, Ordering::Relaxed);
        h.owner_pid.store(std::process::id(), Ordering::Relaxed);
        h.owner_start
            .store(procstat::own_start_time(), Ordering::Relaxed);
        h.config_epoch.fetch_add(1, Ordering::Relaxed);
        h.bell.store(0, Ordering::SeqCst);
        // Commands a dead predecessor took but never answered: answer them now, honestly.
        for slot in self.shared.slots() {
            let v = slot.state.load(Ordering::Acquire);
            if let (pid, Some(SlotState::Taken)) = SlotState::split(v) {
                mailbox::complete(
                    slot,
                    pid,
                    ReplyStatus::Rejected,
                    "the Supervisor died while applying this command; check `broctld events`",
                );
            }
        }
        // Down markers as the predecessor left them, read before anything is published here
        // (publishing a node that is still `stopped` would write its marker).
        let held: Vec<bool> = (0..self.nodes.len()).map(|i| self.held_down(i)).collect();
        let now = clock::monotonic_ns();
        // Nodes whose fate the predecessor's record decides (not started by autostart).
        let mut decided = vec![false; self.nodes.len()];
        let mut starts = Vec::new();
        let mut stops = Vec::new();
        let mut ended = Vec::new();
        for (i, decided) in decided.iter_mut().enumerate() {
            let Some(rec) = previous.remove(&self.nodes[i].spec.name) else {
                continue;
            };
            *decided = true;
            // Died while no Supervisor lived, and the guardian reported how: handled as an exit.
            if self.take_reported_exit(i, &rec) {
                continue;
            }
            self.resume(i, &rec, now, &mut starts, &mut stops, &mut ended);
        }
        for (name, rec) in previous {
            let Some(pid) = rec.pid else { continue };
            let alive = is_survivor_node(
                pid,
                rec.pid_start,
                &name,
                &self.instance,
                self.node_group(&name),
            );
            if matches!(alive, Ok(false)) {
                continue;
            }
            // A `reload` removed it and was stopping it: finish that stop.
            if matches!(alive, Ok(true))
                && rec.intent.has(Intent::RETIRING)
                && self.nodes.len() < self.capacity()
            {
                let i = self.nodes.len();
                let mut node = Node::new(retired_spec(&rec));
                node.retiring = true;
                self.nodes.push(node);
                self.resume(i, &rec, now, &mut starts, &mut stops, &mut ended);
                if self.nodes[i].state == NodeState::Running {
                    stops.push(i);
                }
                if self.nodes[i].pid.is_some() {
                    continue;
                }
                // Not adopted after all (it died meanwhile): forget it again.
                for list in [&mut starts, &mut stops, &mut ended] {
                    list.retain(|&j| j != i);
                }
                self.unblock(i);
                self.nodes.pop();
                continue;
            }
            log!(
                "node {name} (pid {pid}) survived the previous Supervisor but is not in the config; it is left running unsupervised"
            );
        }
        // Queue the starts before anything is published: a record published now must say
        // what this Supervisor will do with the node, never the `stopped` every node has in
        // memory before its fate is decided, because a successor that finds `stopped` keeps
        // the node down (this Supervisor may be killed at any moment from here on).
        starts.extend((0..self.nodes.len()).filter(|&i| {
            !decided.get(i).copied().unwrap_or(true)
                && self.nodes[i].spec.policy.autostart
                && self.nodes[i].pid.is_none()
                && !held.get(i).copied().unwrap_or(false)
        }));
        if finish_shutdown {
            starts.clear();
        }
        // With no record (the region was lost with its predecessor), a node that is not
        // started here may still run: adopt it rather than show it stopped while it runs.
        let mut starting = vec![false; self.nodes.len()];
        starts.iter().for_each(|&i| starting[i] = true);
        let unrecorded: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                !decided.get(i).copied().unwrap_or(true)
                    && self.nodes[i].pid.is_none()
                    && !starting[i]
            })
            .collect();
        if !unrecorded.is_empty() {
            // One scan of /proc for all of them.
            let mut found = procscan::instance_processes(
                self.instance.name(),
                &super::identity::node_locks_dir(&self.instance),
            );
            for i in unrecorded {
                let procs = match &mut found {
                    Ok(by_node) => Ok(by_node.remove(&self.nodes[i].spec.name).unwrap_or_default()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                self.find_unrecorded_copy(i, procs);
            }
        }
        // A start queued behind nodes still becoming ready keeps waiting for them.
        let pending: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].state == NodeState::Starting
                    && self.nodes[i].pid.is_some()
                    && !ended.contains(&i)
            })
            .collect();
        self.enqueue_start_behind(starts, &pending);
        // Every record, and none left over from a predecessor with a longer config.
        self.announce_ready(generation);
        log!(
            "supervisor ready: instance {} generation {generation}, {} nodes, region {}",
            self.instance.name(),
            self.nodes.len(),
            self.shared.path().display()
        );
        // Nodes that died while no Supervisor watched: their restart policy decides.
        for i in ended {
            let pid = self.nodes[i].pid.take().unwrap_or(0);
            self.drop_ready_pipe(i);
            // A death whose cgroup was being emptied was seen (and its event sent) by the
            // predecessor: its exit is known. Any other ended unwatched.
            let exit = match (self.nodes[i].state, self.nodes[i].last_exit) {
                (NodeState::Stopping, Some(e)) => e,
                _ => {
                    let mut ev = Event::now(EventKind::Exited, i as u16, pid);
                    ev.exit = Some(Exit::Unknown);
                    self.event(ev);
                    Exit::Unknown
                }
            };
            self.nodes[i].last_exit = Some(exit);
            self.after_end(i, exit, clock::monotonic_ns());
        }
        self.advance_queues();
        self.queue_stop(stops);
        if finish_shutdown {
            log!("the previous Supervisor was shutting down when it died: finishing that shutdown");
            self.begin_shutdown();
        }
        // Commands queued while no Supervisor listened.
        self.scan_mailbox();
    }

    /// Node `i` has no record and is not started by this takeover: if its main process lives
    /// (named by its lock file, or a group leader carrying its identity and running its
    /// command), it is adopted, exactly as a start that finds a running copy.
    fn find_unrecorded_copy(&mut self, i: usize, procs: io::Result<Vec<procscan::NodeProcess>>) {
        let name = self.nodes[i].spec.name.clone();
        let lock = self
            .instance
            .dir()
            .join("nodes")
            .join(format!("{name}.lock"));
        let (recorded, held) = match lockfile::LockFile::probe(&lock) {
            Ok(lockfile::Probe::Held { pid, start, .. }) => ((pid, start), true),
            Ok(lockfile::Probe::Free) => ((0, 0), false),
            Err(e) => {
                self.block(
                    i,
                    BLOCKED_UNKNOWN,
                    &format!("cannot read its lock file ({e})"),
                );
                return;
            }
        };
        let procs = match procs {
            Ok(p) => p,
            Err(e) => {
                self.block(
                    i,
                    BLOCKED_UNKNOWN,
                    &format!("cannot check /proc for a running copy ({e})"),
                );
                return;
            }
        };
        // Only the node's main process is adopted here (the one its lock file names, else a
        // group leader running its command); leftovers of it are reported, and a later
        // `start` meets them as it would any running copy.
        let named = procs
            .iter()
            .any(|p| p.pid == recorded.0 && p.start == recorded.1 && p.pgid == p.pid);
        let leader = named
            || matches!(
                procscan::leader_running(&procs, &self.nodes[i].spec.command),
                Ok(Some(_))
            );
        if leader {
            self.adopt_or_block(i, recorded, held, &procs);
        } else if !procs.is_empty() {
            let pids: Vec<String> = procs.iter().map(|p| p.pid.to_string()).collect();
            log!(
                "node {name}: no record of it, and processes of it live (pids {}) but none is its main process; it is not started",
                pids.join(", ")
            );
        }
    }

    /// Resumes node `i` from its predecessor's record: what it was doing (the state), what it
    /// meant to do next (the intent flags) and when (the deadline), whether its process
    /// survived or not. The takeover table in docs/design.md lists every case.
    fn resume(
        &mut self,
        i: usize,
        rec: &NodeRecord,
        now: u64,
        starts: &mut Vec<usize>,
        stops: &mut Vec<usize>,
        ended: &mut Vec<usize>,
    ) {
        let it = rec.intent;
        {
            let n = &mut self.nodes[i];
            n.restarts = rec.restarts;
            n.last_exit = rec.last_exit;
            n.started_mono_ns = rec.started_mono_ns;
            n.started_wall_ms = rec.started_wall_ms;
        }
        let name = self.nodes[i].spec.name.clone();
        let alive = match rec.pid {
            None => Ok(false),
            Some(pid) => is_survivor_node(
                pid,
                rec.pid_start,
                &name,
                &self.instance,
                self.node_group(&name),
            ),
        };
        let alive = match alive {
            Ok(a) => a,
            Err(e) => {
                // Never evidence: the node may run. Block its start until a check succeeds
                // (the start path adopts it if it runs).
                self.block(
                    i,
                    BLOCKED_UNKNOWN,
                    &format!(
                        "cannot check its recorded pid {} ({e})",
                        rec.pid.unwrap_or(0)
                    ),
                );
                return;
            }
        };
        if alive && self.adopt(i, rec) {
            let n = &mut self.nodes[i];
            n.ready_by = Some(rec.started_mono_ns + n.spec.policy.ready_timeout.as_nanos() as u64);
            n.ready_timed_out = it.has(Intent::READY_TIMED_OUT);
            match rec.state {
                NodeState::Stopping => {
                    n.state = NodeState::Stopping;
                    n.killed = it.has(Intent::KILLED);
                    n.start_after_exit = it.has(Intent::RESTART_PENDING);
                    // The SIGKILL deadline stands (CLOCK_MONOTONIC is system-wide); once
                    // SIGKILL was sent, only the exit is left to wait for.
                    n.deadline = match (n.killed, rec.deadline_mono_ns) {
                        (true, _) => None,
                        (false, 0) => Some(now + n.spec.policy.stop_timeout.as_nanos() as u64),
                        (false, d) => Some(d),
                    };
                }
                NodeState::Starting if it.has(Intent::READY_FIFO) => {
                    n.state = NodeState::Starting;
                    if !self.resume_ready_fifo(i) {
                        self.nodes[i].state = NodeState::Running;
                    }
                }
                NodeState::Starting if n.spec.policy.ready_file.is_some() => {
                    n.state = NodeState::Starting;
                    if !self.resume_ready_file(i) {
                        self.nodes[i].state = NodeState::Running;
                    }
                }
                NodeState::Starting if !n.spec.policy.ready_check.is_empty() => {
                    // Checked again from now (a check the predecessor ran is not ours).
                    n.state = NodeState::Starting;
                    self.arm_ready_check(i);
                }
                NodeState::Starting if n.spec.policy.notify => {
                    // sd_notify: its socket is bound again below; it stays `starting` until
                    // it sends READY=1 (a STOPPING=1 it sent still holds).
                    n.state = NodeState::Starting;
                    if let Some(p) = NotifyPhase::of(it).filter(|p| *p == NotifyPhase::Stopping) {
                        n.extras_mut().notify_phase = Some(p);
                    }
                }
                NodeState::Starting if rec.deadline_mono_ns != 0 => {
                    // `ready_after_ms`: ready when the recorded deadline passes.
                    n.state = NodeState::Starting;
                    n.deadline = Some(rec.deadline_mono_ns);
                }
                _ => {
                    n.state = NodeState::Running;
                    // What an sd_notify node last said it was doing (RELOADING=1,
                    // STOPPING=1) still holds.
                    if let Some(p) = NotifyPhase::of(it).filter(|_| n.spec.policy.notify) {
                        n.extras_mut().notify_phase = Some(p);
                    }
                    if it.has(Intent::STOP_QUEUED) {
                        stops.push(i);
                    }
                }
            }
            return;
        }
        // No process of ours survived.
        let n = &mut self.nodes[i];
        match rec.state {
            NodeState::Stopped | NodeState::Failed => n.state = rec.state,
            // Its main process had died and its cgroup was being emptied: that end is
            // applied (its restart policy decides, with the exit recorded), as for a node that
            // died while nobody watched.
            NodeState::Stopping if it.has(Intent::DRAINING_DEATH) => {
                n.state = NodeState::Stopping;
                ended.push(i);
            }
            // A stop finished while nobody watched; a restart in progress still starts.
            NodeState::Stopping if it.has(Intent::RESTART_PENDING) => starts.push(i),
            NodeState::Stopping => n.state = NodeState::Stopped,
            // A queued start that never spawned: queue it again.
            NodeState::Starting if rec.pid.is_none() => {
                if it.has(Intent::WAS_FAILED) {
                    n.state = NodeState::Failed;
                }
                starts.push(i);
            }
            // The restart delay stands; a blocked start checks again at once.
            NodeState::Backoff => {
                n.state = NodeState::Backoff;
                n.deadline = Some(match (rec.deadline_mono_ns, rec.blocked_by) {
                    (_, Some(_)) | (0, _) => now,
                    (d, None) => d,
                });
            }
            // It ran and died while no Supervisor watched. It keeps its recorded state until
            // its restart policy decides, so the records published meanwhile say it ran (a
            // successor then finds it dead again), never the `stopped` of a fresh node.
            NodeState::Running | NodeState::Starting => {
                n.state = rec.state;
                n.pid = rec.pid;
                ended.push(i);
            }
        }
    }

    /// Reopens a `starting` node's readiness FIFO after a takeover and reads what it wrote
    /// meanwhile. Returns whether the node is still to be waited for.
    fn resume_ready_fifo(&mut self, i: usize) -> bool {
        let name = self.nodes[i].spec.name.clone();
        let path = readiness::path(&self.instance.dir(), &name);
        let f = match readiness::reopen(&path) {
            Ok(f) => f,
            Err(e) => {
                log!("node {name}: cannot reopen its readiness FIFO ({e}); counted as ready");
                return false;
            }
        };
        match readiness::read_ready(&f) {
            Ok(true) => {
                readiness::remove(&path);
                return false;
            }
            Ok(false) => {}
            Err(e) => log!("node {name}: reading its readiness FIFO: {e}"),
        }
        let pid = self.nodes[i].pid.unwrap_or(0);
        if let Ok(false) = readiness::held_by(&path, pid) {
            // What it wrote before closing went with the last open end: it closed its
            // ready_fd while no Supervisor listened, which a node does once it is ready.
            log!("node {name}: closed its ready_fd while no Supervisor listened; counted as ready");
            readiness::remove(&path);
            return false;
        }
        match self.poll.registry().register(
            &mut SourceFd(&f.as_raw_fd()),
            Token(NODE_BASE + 2 * i + 1),
            Interest::READABLE,
        ) {
            Ok(()) => {
                self.nodes[i].ready_pipe = Some(f);
                true
            }
            Err(e) => {
                log!("node {name}: cannot watch its readiness FIFO ({e}); counted as ready");
                false
            }
        }
    }

    /// Watches the surviving process `rec.pid` as node `i` (state `running`; the caller
    /// resumes what the record says). Returns false if it cannot be watched or is not the node.
    pub(super) fn adopt(&mut self, i: usize, rec: &NodeRecord) -> bool {
        let Some(pid) = rec.pid else { return false };
        let fd = match pidfd::open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                log!("node {}: cannot watch surviving pid {pid}: {e}", rec.name);
                return false;
            }
        };
        // The pidfd is race-free from here on; recheck identity now that we hold it: the same
        // process (pid + start time), and this node of this instance (its environment says
        // so), as the lock path checks too.
        match is_survivor_node(
            pid,
            rec.pid_start,
            &self.nodes[i].spec.name,
            &self.instance,
            self.node_group(&self.nodes[i].spec.name),
        ) {
            Ok(true) => {}
            Ok(false) => {
                log!(
                    "node {}: recorded pid {pid} is not this node any more; not adopted",
                    rec.name
                );
                return false;
            }
            Err(e) => {
                log!("node {}: cannot check surviving pid {pid}: {e}", rec.name);
                return false;
            }
        }
        let token = Token(NODE_BASE + 2 * i);
        self.unblock(i);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
        {
            log!("node {}: cannot watch surviving pid {pid}: {e}", rec.name);
            return false;
        }
        // An error here is not evidence either way; watching it through the pidfd is safe.
        let own_child = matches!(procstat::parent(pid), Ok(Some(p)) if p == std::process::id());
        let n = &mut self.nodes[i];
        n.pid = Some(pid);
        n.pidfd = Some(fd);
        n.pid_start = rec.pid_start;
        // After an in-place upgrade the nodes are still our children: reap them as usual.
        n.adopted = !own_child;
        n.started_mono_ns = rec.started_mono_ns;
        n.started_wall_ms = rec.started_wall_ms;
        n.restarts = rec.restarts;
        n.last_exit = rec.last_exit;
        n.state = NodeState::Running;
        // Not spawned by us: its processes may live anywhere until a scan says otherwise.
        n.descendants_only = false;
        self.by_pid.insert(pid, i);
        log!("node {}: adopted surviving pid {pid}", rec.name);
        self.event(Event::now(EventKind::Adopted, i as u16, pid));
        true
    }
}

/// A spec for a node a `reload` removed while it was stopping, rebuilt from its record and its
/// `/proc` command line: enough to finish the stop (the recorded SIGKILL deadline stands).
fn retired_spec(rec: &NodeRecord) -> crate::config::NodeSpec {
    let command = rec
        .pid
        .and_then(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| vec!["?".into()]);
    crate::config::NodeSpec {
        name: rec.name.clone(),
        node_type: crate::config::NodeType::from_code(rec.node_type)
            .unwrap_or(crate::config::NodeType::Other),
        command,
        env: Vec::new(),
        cwd: PathBuf::from("/"),
        stdout: PathBuf::from("/dev/null"),
        stderr: PathBuf::from("/dev/null"),
        cpu_affinity: Vec::new(),
        start_after: Vec::new(),
        policy: std::sync::Arc::new(crate::config::Policy {
            autostart: false,
            ..Default::default()
        }),
        line: 0,
    }
}

/// Whether `pid` with this start time is node `name` of `instance` to adopt: a survivor (see
/// [`procscan::is_survivor`]) that carries the node's identity (its environment, its lock held
/// open, or named by its lock file: see [`procscan::identify`]), or a zombie that is our own
/// child (its environment is gone; it was ours, before an upgrade's exec). With a cgroup per
/// node, a survivor in the node's group (or a sub-group of it) is the node whatever its
/// environment. A survivor that nothing readable identifies (not dumpable, its lock file
/// naming another) is an error: the node may run, and its start is blocked.
fn is_survivor_node(
    pid: u32,
    start: u64,
    name: &str,
    instance: &Instance,
    group: Option<crate::sys::cgroup::Cgroup>,
) -> io::Result<bool> {
    if !procscan::is_survivor(pid, start)? {
        return Ok(false);
    }
    match procstat::stat(pid)? {
        Some(st) if matches!(st.state, 'Z' | 'X') => Ok(st.parent == std::process::id()),
        Some(_) => match group {
            Some(g) if g.contains(pid)? => Ok(true),
            _ => {
                let lock = super::lifecycle::node_lock_path(instance, name);
                procscan::is_node_process(pid, name, instance.name(), &lock)
            }
        },
        None => Ok(false),
    }
}

/// Every node a predecessor recorded in its region, by name (untrusted words: records that do
/// not decode are skipped).
pub(super) fn previous_records(shared: &Shared) -> HashMap<String, NodeRecord> {
    shared.node_cells()[..shared.node_count()]
        .iter()
        .filter_map(|cell| cell.read().and_then(|w| NodeRecord::decode(&w)))
        .map(|rec| (rec.name.clone(), rec))
        .collect()
}
