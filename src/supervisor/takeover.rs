//! Taking over from a predecessor: adopting the nodes that survived it, keeping stopped and
//! failed nodes down, carrying restart counts and last exits across.

use super::*;

impl Supervisor {
    /// Publishes ownership, takes over what a predecessor recorded (`previous`: its nodes by
    /// name) — adopting survivors, keeping stopped and failed nodes down, carrying restart
    /// counts and last exits over — and starts the autostart nodes that should run.
    pub(super) fn take_over(&mut self, mut previous: HashMap<String, NodeRecord>) {
        let h = self.shared.header();
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
        let mut held_down = vec![false; self.nodes.len()];
        for (i, down) in held_down.iter_mut().enumerate() {
            let Some(rec) = previous.remove(&self.nodes[i].spec.name) else {
                continue;
            };
            self.nodes[i].restarts = rec.restarts;
            self.nodes[i].last_exit = rec.last_exit;
            // Died while no Supervisor lived, and the guardian reported how: handled as an exit.
            if self.take_reported_exit(i, &rec) {
                *down = true;
                continue;
            }
            if rec.pid.is_some_and(|p| is_survivor(p, rec.pid_start)) {
                self.adopt(i, &rec);
                continue;
            }
            // No process: what the operator (or the give-up rule) decided stands. A node that
            // was being stopped ends stopped; one that died meanwhile is started below.
            match rec.state {
                NodeState::Stopped | NodeState::Stopping => {
                    self.nodes[i].state = NodeState::Stopped;
                    *down = true;
                }
                NodeState::Failed => {
                    self.nodes[i].state = NodeState::Failed;
                    *down = true;
                }
                _ => {}
            }
        }
        for (name, rec) in previous
            .into_iter()
            .filter(|(_, r)| r.pid.is_some_and(|p| is_survivor(p, r.pid_start)))
        {
            log!(
                "node {name} (pid {}) survived the previous Supervisor but is not in the config; it is left running unsupervised",
                rec.pid.unwrap_or(0)
            );
        }
        // Every record, and none left over from a predecessor with a longer config.
        self.publish_all();
        let mut ev = Event::now(EventKind::SupervisorStarted, NO_NODE, std::process::id());
        ev.a = generation;
        self.event(ev);
        let h = self.shared.header();
        h.state
            .store(SupervisorState::Ready as u32, Ordering::Release);
        crate::sys::futex::wake(&h.state, i32::MAX);
        log!(
            "supervisor ready: instance {} generation {generation}, {} nodes, region {}",
            self.instance.name(),
            self.nodes.len(),
            self.shared.path().display()
        );
        let autostart: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].spec.policy.autostart && self.nodes[i].pid.is_none() && !held_down[i]
            })
            .collect();
        self.queue_start(autostart);
        // Commands queued while no Supervisor listened.
        self.scan_mailbox();
    }

    pub(super) fn adopt(&mut self, i: usize, rec: &NodeRecord) {
        let Some(pid) = rec.pid else { return };
        let fd = match pidfd::open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                log!("node {}: cannot watch surviving pid {pid}: {e}", rec.name);
                return;
            }
        };
        // The pidfd is race-free from here on; recheck identity now that we hold it.
        if !is_survivor(pid, rec.pid_start) {
            return;
        }
        let token = Token(NODE_BASE + 2 * i);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
        {
            log!("node {}: cannot watch surviving pid {pid}: {e}", rec.name);
            return;
        }
        let own_child = procstat::parent(pid) == Some(std::process::id());
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
        self.by_pid.insert(pid, i);
        log!("node {}: adopted surviving pid {pid}", rec.name);
        self.event(Event::now(EventKind::Adopted, i as u16, pid));
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
