//! Taking over from a predecessor: adopting the nodes that survived it and resuming exactly
//! what it was doing with each (a stop and its SIGKILL deadline, a start waiting for
//! readiness, a restart delay, a pending restart, queued starts and stops), keeping stopped
//! and failed nodes down, carrying restart counts and last exits across.

use super::source::Source;
use super::*;

impl Supervisor {
    /// Publishes ownership, gathers what the kernel says of every node its predecessor
    /// recorded (`previous`: its records by name), and hands both to the machine's pure
    /// takeover ([`machine::takeover::take_over`]), which decides each node's phase: adopted
    /// survivors resume what they were doing, deaths in the gap go to their restart policy,
    /// stopped and failed nodes stay down, autostart nodes start.
    pub(super) fn take_over(&mut self, mut previous: HashMap<String, NodeRecord>) {
        let h = self.shared.header();
        // A predecessor killed while it shut down had acknowledged the `shutdown`: this one
        // finishes it (stops every node, then exits) rather than starting anything. So does one
        // killed after it had stopped them all, while it removed its runtime files (its
        // region says `exited`).
        let state = h.state.load(Ordering::Acquire);
        let finish_shutdown = !previous.is_empty()
            && (state == SupervisorState::ShuttingDown as u32
                || state == SupervisorState::Exited as u32);
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
        // Recorded, alive, and not in the config: a `reload` removed it and was stopping it (it
        // stays until that stop is finished: the recorded SIGKILL deadline stands), or the
        // config changed under it (the running config unreadable, the file edited). Either
        // way it is a live process of this instance: it stays in the table, so it is shown
        // and can be stopped (a `reload` drops it once it is down), never restarted.
        let unlisted: Vec<NodeRecord> = previous
            .values()
            .filter(|rec| rec.pid.is_some())
            .filter(|rec| !self.nodes.iter().any(|n| n.spec.name == rec.name))
            .cloned()
            .collect();
        for rec in unlisted {
            let pid = rec.pid.unwrap_or(0);
            let alive = is_survivor_node(
                pid,
                rec.pid_start,
                &rec.name,
                &self.instance,
                self.node_group(&rec.name),
            );
            if !matches!(alive, Ok(true)) {
                continue;
            }
            if self.nodes.len() >= self.capacity() {
                log!("node {} (pid {pid}) survived the previous Supervisor but is not in the config, and the table is full: it is left running unsupervised", rec.name);
                continue;
            }
            if !rec.intent.has(Intent::RETIRING) {
                log!(
                    "node {} (pid {pid}) survived the previous Supervisor but is not in the config: kept in the table as it runs (never restarted); `broctld stop {}` stops it, a `reload` then removes it",
                    rec.name,
                    rec.name
                );
            }
            self.nodes.push(Node::new(retired_spec(&rec)));
        }
        // Reports of nodes that died while no Supervisor lived, and the exits predecessors
        // recorded (a report or an exit is applied once).
        self.read_early_reports();
        // Down markers as the predecessor left them, read before anything is published here
        // (publishing a node that is still `stopped` would write its marker).
        let held: Vec<bool> = (0..self.nodes.len()).map(|i| self.held_down(i)).collect();
        let mut facts = Vec::with_capacity(self.nodes.len());
        let mut told = Vec::with_capacity(self.nodes.len());
        let mut unrecorded = Vec::new();
        for (i, &held_down) in held.iter().enumerate() {
            let rec = previous.remove(&self.nodes[i].spec.name);
            let (found, t) = match &rec {
                Some(rec) => self.find_recorded(i, rec),
                None => (machine::takeover::Found::Gone, false),
            };
            // Whether its cgroup still holds processes: what a predecessor's drain left.
            let leftovers = match (&rec, found, &self.cgroups) {
                (Some(_), machine::takeover::Found::Alive, _) => false,
                (Some(_), _, Some(c)) => {
                    c.node(&self.nodes[i].spec.name).populated().unwrap_or(true)
                }
                _ => false,
            };
            let started_here =
                !finish_shutdown && self.nodes[i].spec.policy.autostart && !held_down;
            // No record (not started here), or a start under way with no pid recorded yet:
            // a copy of it may run that no record names.
            let spawning = rec
                .as_ref()
                .is_some_and(|r| r.pid.is_none() && r.state == NodeState::Starting);
            if (rec.is_none() && !started_here) || spawning {
                unrecorded.push(i);
            }
            facts.push(machine::takeover::Facts {
                record: rec,
                found,
                leftovers,
                held_down,
            });
            told.push(t);
        }
        // With no record (the region was lost with its predecessor), a node that is not
        // started here may still run: adopt it rather than show it stopped while it runs.
        if !unrecorded.is_empty() {
            // One scan of /proc for all of them.
            let mut found =
                procscan::instance_processes(self.instance.name(), &self.instance.nodes_dir());
            for i in unrecorded {
                let procs = match &mut found {
                    Ok(by_node) => Ok(by_node.remove(&self.nodes[i].spec.name).unwrap_or_default()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                facts[i].found = self.find_unrecorded_copy(i, procs);
            }
        }
        // A node whose reported end the takeover applies: its last lines reach its file (and
        // its crash report) first.
        for (i, f) in facts.iter().enumerate() {
            if let machine::takeover::Found::Reported(_) = f.found {
                self.resume_node_outputs(i);
                self.pump_outputs(i);
            }
        }
        let confs = self.confs();
        let (m, acts) = machine::takeover::take_over(
            confs,
            self.cgroups.is_some(),
            &facts,
            &told,
            finish_shutdown,
            clock::monotonic_ns(),
        );
        self.machine = m;
        // A node adopted `starting` behind its `ready_check`: this Supervisor's first run of
        // it is due one interval from now.
        let now = clock::monotonic_ns();
        let mut acts = acts;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].spec.policy.ready_check.is_empty() && self.awaits_ready(i) {
                acts.extend(
                    self.machine
                        .handle(machine::Input::CheckPending { node: i }, now),
                );
            }
        }
        // Every record first (each says what this Supervisor does with its node), and the
        // adoptions; then the region is ready, and what the takeover does next is done.
        let split = acts
            .iter()
            .position(|a| {
                !matches!(
                    a,
                    machine::Action::Publish { .. } | machine::Action::Emit(_)
                )
            })
            .unwrap_or(acts.len());
        let rest = acts.split_off(split);
        self.carry_out(acts);
        self.announce_ready(generation);
        log!(
            "supervisor ready: instance {} generation {generation}, {} nodes, region {}",
            self.instance.name(),
            self.nodes.len(),
            self.shared.path().display()
        );
        self.carry_out(rest);
        // Nodes found not running: each end settled from the best evidence there is now.
        for (i, f) in facts.iter().enumerate() {
            if f.found != machine::takeover::Found::Ended {
                continue;
            }
            if let Some(pid) = self.main_pid(i) {
                self.by_pid.insert(pid, i);
                self.settle_end(i, pid, false);
            }
        }
        if finish_shutdown {
            log!("the previous Supervisor was shutting down when it died: finishing that shutdown");
            let h = self.shared.header();
            h.state
                .store(SupervisorState::ShuttingDown as u32, Ordering::Release);
            crate::sys::futex::wake(&h.state, i32::MAX);
        }
        self.settle();
        // Commands queued while no Supervisor listened.
        self.scan_mailbox();
    }

    /// The machine's view of every node's config.
    pub(super) fn confs(&self) -> Vec<machine::Conf> {
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.spec.name.as_str(), i))
            .collect();
        self.nodes
            .iter()
            .map(|n| machine::Conf {
                rank: n.spec.node_type.start_rank(),
                after: n
                    .spec
                    .start_after
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied())
                    .collect(),
                policy: n.spec.policy.clone(),
            })
            .collect()
    }

    /// What the kernel says of node `i`'s recorded process: alive and the node (now watched),
    /// ended with a status the guardian reported, gone, or not to be told (an OS error is
    /// never evidence: the start waits). Also whether a resumed `starting` node is still to
    /// be told it is ready (its readiness FIFO, ready file, check or sd_notify).
    fn find_recorded(&mut self, i: usize, rec: &NodeRecord) -> (machine::takeover::Found, bool) {
        use machine::takeover::Found;
        let Some(pid) = rec.pid else {
            return (Found::Gone, false);
        };
        // Died while no Supervisor lived, and the guardian reported how.
        if let Some(exit) = self.take_reported_exit(rec) {
            log!(
                "node {}: pid {pid} ended while no Supervisor ran ({}, reported by the guardian)",
                rec.name,
                exit.describe()
            );
            return (Found::Reported(exit), false);
        }
        let name = self.nodes[i].spec.name.clone();
        match is_survivor_node(
            pid,
            rec.pid_start,
            &name,
            &self.instance,
            self.node_group(&name),
        ) {
            Ok(true) => {}
            // Not running: its end is settled once the takeover is done (`settle_end`).
            Ok(false) if rec.state != NodeState::Backoff => return (Found::Ended, false),
            Ok(false) => return (Found::Gone, false),
            Err(e) => {
                log!("node {name}: cannot check its recorded pid {pid} ({e}); not started until a check succeeds");
                return (Found::Unknown(BLOCKED_UNKNOWN), false);
            }
        }
        if !self.watch_survivor(i, pid, rec.pid_start) {
            return (Found::Unknown(pid), false);
        }
        log!("node {}: adopted surviving pid {pid}", rec.name);
        let it = rec.intent;
        let policy = self.nodes[i].spec.policy.clone();
        let told = rec.state == NodeState::Starting
            && if it.has(Intent::READY_FIFO) {
                self.resume_ready_fifo(i, pid)
            } else if policy.ready_file.is_some() {
                self.resume_ready_file(i)
            } else if !policy.ready_check.is_empty() {
                // Checked again (a check the predecessor ran is not ours): armed once the
                // machine is this Supervisor's, below.
                true
            } else {
                // sd_notify: its socket is bound again; it stays `starting` until READY=1.
                policy.notify
            };
        // What an sd_notify node last said it was doing (RELOADING=1, STOPPING=1) still holds.
        if policy.notify {
            if let Some(p) = NotifyPhase::of(it) {
                if rec.state != NodeState::Starting || p == NotifyPhase::Stopping {
                    self.nodes[i].extras_mut().notify_phase = Some(p);
                }
            }
        }
        (Found::Alive, told)
    }

    /// Node `i` has no record and is not started by this takeover: if its main process lives
    /// (named by its lock file, or a group leader carrying its identity and running its
    /// command), it is adopted, exactly as a start that finds a running copy.
    fn find_unrecorded_copy(
        &mut self,
        i: usize,
        procs: io::Result<Vec<procscan::NodeProcess>>,
    ) -> machine::takeover::Found {
        use machine::takeover::Found;
        let name = self.nodes[i].spec.name.clone();
        let lock = self.instance.node_lock_path(&name);
        let (recorded, held) = match lockfile::LockFile::probe(&lock) {
            Ok(lockfile::Probe::Held { pid, start, .. }) => ((pid, start), true),
            Ok(lockfile::Probe::Free) => ((0, 0), false),
            Err(e) => {
                log!("node {name}: cannot read its lock file ({e}); not started until it can");
                return Found::Unknown(BLOCKED_UNKNOWN);
            }
        };
        let procs = match procs {
            Ok(p) => p,
            Err(e) => {
                log!("node {name}: cannot check /proc for a running copy ({e}); not started until it can");
                return Found::Unknown(BLOCKED_UNKNOWN);
            }
        };
        // Only the node's main process is adopted here (the one its lock file names, else a
        // group leader running its command); leftovers of it are reported, and a later
        // `start` meets them as it would any running copy.
        let named = procs
            .iter()
            .any(|p| p.pid == recorded.0 && p.start == recorded.1 && p.pgid == p.pid);
        let leader = named || matches!(self.unnamed_main(i, held, &procs), Ok(Some(_)));
        if leader {
            match self.adopt_or_block(i, recorded, held, &procs) {
                machine::Input::Adopted { proc_, .. } => {
                    log!("node {name}: adopted pid {} (no record of it)", proc_.pid);
                    return Found::Unrecorded(proc_);
                }
                machine::Input::Blocked { by, .. } => return Found::Unknown(by),
                _ => {}
            }
        } else if !procs.is_empty() {
            let pids: Vec<String> = procs.iter().map(|p| p.pid.to_string()).collect();
            log!(
                "node {name}: no record of it, and processes of it live (pids {}) but none is its main process; it is not started",
                pids.join(", ")
            );
        }
        Found::Gone
    }

    /// Reopens a `starting` node's readiness FIFO after a takeover and reads what it wrote
    /// meanwhile. Returns whether the node is still to be waited for.
    fn resume_ready_fifo(&mut self, i: usize, pid: u32) -> bool {
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
        if let Ok(false) = readiness::held_by(&path, pid) {
            // What it wrote before closing went with the last open end: it closed its
            // ready_fd while no Supervisor listened, which a node does once it is ready.
            log!("node {name}: closed its ready_fd while no Supervisor listened; counted as ready");
            readiness::remove(&path);
            return false;
        }
        match self.poll.registry().register(
            &mut SourceFd(&f.as_raw_fd()),
            Source::ReadyPipe(i).token(),
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

    /// Watches the surviving process `pid` (start time `start`) as node `i`'s main process:
    /// a pidfd registered with the loop, identity rechecked once the pidfd is held. Returns
    /// false if it cannot be watched or is not the node (nothing is registered then).
    pub(super) fn watch_survivor(&mut self, i: usize, pid: u32, start: u64) -> bool {
        let name = self.nodes[i].spec.name.clone();
        let fd = match pidfd::open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                log!("node {name}: cannot watch surviving pid {pid}: {e}");
                return false;
            }
        };
        // The pidfd is race-free from here on; recheck identity now that we hold it: the same
        // process (pid + start time), and this node of this instance (its environment says
        // so), as the lock path checks too.
        match is_survivor_node(pid, start, &name, &self.instance, self.node_group(&name)) {
            Ok(true) => {}
            Ok(false) => {
                log!("node {name}: recorded pid {pid} is not this node any more; not adopted");
                return false;
            }
            Err(e) => {
                log!("node {name}: cannot check surviving pid {pid}: {e}");
                return false;
            }
        }
        let token = Source::Pidfd(i).token();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
        {
            log!("node {name}: cannot watch surviving pid {pid}: {e}");
            return false;
        }
        // An error here is not evidence either way; watching it through the pidfd is safe.
        let own_child = matches!(procstat::parent(pid), Ok(Some(p)) if p == std::process::id());
        let n = &mut self.nodes[i];
        n.pidfd = Some(fd);
        // After an in-place upgrade the nodes are still our children: reap them as usual.
        n.adopted = !own_child;
        // Not spawned by us: its processes may live anywhere until a scan says otherwise.
        n.descendants_only = false;
        self.by_pid.insert(pid, i);
        true
    }
}

/// A spec for a live node that is not in the config (a `reload` removed it while it was
/// stopping, or the config changed under it), rebuilt from its record and its `/proc` command
/// line: enough to show it, finish a stop (the recorded SIGKILL deadline stands) or stop it.
/// It is never started or restarted.
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
            restart: crate::config::RestartPolicy::Never,
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
                let lock = instance.node_lock_path(name);
                procscan::is_node_process(pid, name, instance.name(), &lock)
            }
        },
        None => Ok(false),
    }
}

/// Every node a predecessor recorded in its region, by name (untrusted words: records that
/// fail their check or do not decode are skipped, logged, and their nodes treated as not
/// recorded: found through their lock file and cgroup when they are to start).
pub(super) fn previous_records(shared: &Shared) -> HashMap<String, NodeRecord> {
    let mut out = HashMap::new();
    let mut bad = Vec::new();
    for i in 0..shared.node_count() {
        match shared
            .read_record(i)
            .ok()
            .and_then(|w| NodeRecord::decode(&w))
        {
            Some(rec) if !rec.name.is_empty() => {
                out.insert(rec.name.clone(), rec);
            }
            _ => bad.push(i),
        }
    }
    if !bad.is_empty() {
        log!(
            "takeover: {} node record(s) of the region fail their check (index {:?}{}); their nodes are treated as not recorded",
            bad.len(),
            &bad[..bad.len().min(8)],
            if bad.len() > 8 { ", ..." } else { "" }
        );
    }
    out
}
