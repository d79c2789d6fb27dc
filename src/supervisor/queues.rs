//! The start and stop queues: staged start by role and `start_after`, reverse-order stop,
//! and the per-node start, stop and restart transitions they drive.

use super::*;

impl Supervisor {
    /// Orders `nodes` for starting: every `start_after` dependency first, otherwise by role
    /// (loggers, managers, proxies, workers, others), then config order. The config loader has
    /// already refused cycles.
    pub(super) fn start_order(&self, nodes: Vec<usize>) -> Vec<usize> {
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.spec.name.as_str(), i))
            .collect();
        let mut sorted = nodes;
        sorted.sort_by_key(|&i| (self.nodes[i].spec.node_type.start_rank(), i));
        let wanted: std::collections::HashSet<usize> = sorted.iter().copied().collect();
        let mut out = Vec::with_capacity(sorted.len());
        let mut placed = vec![false; self.nodes.len()];
        fn visit(
            i: usize,
            nodes: &[Node],
            index: &HashMap<&str, usize>,
            wanted: &std::collections::HashSet<usize>,
            placed: &mut [bool],
            out: &mut Vec<usize>,
            depth: usize,
        ) {
            if placed[i] || depth > nodes.len() {
                return;
            }
            placed[i] = true;
            for dep in &nodes[i].spec.start_after {
                if let Some(&d) = index.get(dep.as_str()) {
                    if wanted.contains(&d) {
                        visit(d, nodes, index, wanted, placed, out, depth + 1);
                    }
                }
            }
            out.push(i);
        }
        for &i in &sorted {
            visit(i, &self.nodes, &index, &wanted, &mut placed, &mut out, 0);
        }
        out
    }

    /// Starts `nodes` in stages: a node spawns once every node it must follow (its
    /// `start_after`, and every selected node of an earlier role: loggers, managers, proxies,
    /// workers, others) is ready, has failed, or has been `starting` for its `ready_timeout_ms`.
    pub(super) fn queue_start(&mut self, nodes: Vec<usize>) {
        self.queue_start_behind(nodes, &[]);
    }

    /// [`queue_start`](Self::queue_start), where the selection also included `pending`: nodes
    /// already spawned and still `starting` (a takeover resumes an ordered start half-done).
    pub(super) fn queue_start_behind(&mut self, nodes: Vec<usize>, pending: &[usize]) {
        self.enqueue_start_behind(nodes, pending);
        self.advance_queues();
    }

    /// Queues the starts of [`queue_start_behind`](Self::queue_start_behind) and publishes
    /// each as `starting` (queued, no process), spawning nothing yet: a takeover publishes
    /// them so before it publishes the rest of the table, so no record ever says `stopped` of
    /// a node it is about to start (a successor would keep such a node down).
    pub(super) fn enqueue_start_behind(&mut self, nodes: Vec<usize>, pending: &[usize]) {
        let order = self.start_order(nodes);
        let mut queued = Vec::new();
        for &i in &order {
            let n = &mut self.nodes[i];
            if n.retiring {
                continue;
            }
            match n.state {
                NodeState::Stopped | NodeState::Failed => {}
                // Already coming back: its restart delay stands (a start must not bypass it).
                NodeState::Backoff => continue,
                NodeState::Running | NodeState::Starting => {
                    if matches!(n.queue, Some(Queue::Stop { .. })) {
                        n.queue = None; // a queued stop is cancelled by a start
                    }
                    continue;
                }
                NodeState::Stopping => {
                    n.start_after_exit = true;
                    self.publish(i);
                    continue;
                }
            }
            let was_failed = n.state == NodeState::Failed;
            n.deadline = None;
            n.state = NodeState::Starting;
            n.queue = Some(Queue::Start {
                after: Vec::new(),
                was_failed,
            });
            queued.push(i);
        }
        for &i in &queued {
            let rank = self.nodes[i].spec.node_type.start_rank();
            let after: Vec<usize> = queued
                .iter()
                .chain(pending)
                .copied()
                .filter(|&j| {
                    j != i
                        && (self.nodes[j].spec.node_type.start_rank() < rank
                            || self.nodes[i]
                                .spec
                                .start_after
                                .contains(&self.nodes[j].spec.name))
                })
                .collect();
            if let Some(Queue::Start { after: a, .. }) = &mut self.nodes[i].queue {
                *a = after;
            }
            self.publish(i);
        }
    }

    /// Stops `nodes` in reverse stages: a node gets its stop signal once every selected node
    /// that would start after it has no process left.
    pub(super) fn queue_stop(&mut self, nodes: Vec<usize>) {
        let mut stopping = Vec::new();
        for &i in &nodes {
            // A stop cancels a staged restart of the node.
            if std::mem::take(&mut self.nodes[i].staged_restart) {
                let name = self.nodes[i].spec.name.clone();
                for b in &mut self.restart_batches {
                    b.retain(|n| *n != name);
                }
            }
            let n = &mut self.nodes[i];
            n.start_after_exit = false;
            if matches!(n.queue, Some(Queue::Start { .. })) || n.pid.is_none() {
                self.stop_node(i); // nothing to wait for: settle it now
                continue;
            }
            if n.state == NodeState::Stopping {
                continue;
            }
            n.queue = Some(Queue::Stop { after: Vec::new() });
            self.publish(i);
            stopping.push(i);
        }
        for &i in &stopping {
            let rank = self.nodes[i].spec.node_type.start_rank();
            let name = self.nodes[i].spec.name.clone();
            let after: Vec<usize> = stopping
                .iter()
                .copied()
                .filter(|&j| {
                    j != i
                        && (self.nodes[j].spec.node_type.start_rank() > rank
                            || self.nodes[j].spec.start_after.contains(&name))
                })
                .collect();
            if let Some(Queue::Stop { after: a }) = &mut self.nodes[i].queue {
                *a = after;
            }
        }
        self.advance_queues();
    }

    /// Whether node `j` no longer holds up a queued start.
    pub(super) fn start_settled(&self, j: usize) -> bool {
        let n = &self.nodes[j];
        match n.state {
            _ if matches!(n.queue, Some(Queue::Start { .. })) => false,
            NodeState::Starting => n.pid.is_some() && n.ready_timed_out,
            _ => true,
        }
    }

    /// Dequeues every queued start or stop whose wait is over.
    pub(super) fn advance_queues(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.nodes.len() {
                match self.nodes[i].queue.clone() {
                    Some(Queue::Start { after, was_failed })
                        if after.iter().all(|&j| self.start_settled(j)) =>
                    {
                        let n = &mut self.nodes[i];
                        n.queue = None;
                        if was_failed {
                            n.history.reset(&n.spec.policy);
                        }
                        self.spawn(i, false);
                        progressed = true;
                    }
                    Some(Queue::Stop { after })
                        if after.iter().all(|&j| {
                            // Down: no process, nothing queued, its cgroup empty.
                            self.nodes[j].pid.is_none()
                                && self.nodes[j].queue.is_none()
                                && self.nodes[j].draining.is_none()
                        }) =>
                    {
                        self.nodes[i].queue = None;
                        if self.nodes[i].pid.is_some() {
                            self.stop_node(i);
                        }
                        progressed = true;
                    }
                    _ => {}
                }
            }
            if !progressed {
                if !self.restart_batches.is_empty() {
                    self.advance_restart_batches();
                }
                return;
            }
        }
    }

    pub(super) fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.retiring {
            return;
        }
        match n.state {
            NodeState::Backoff => {}
            NodeState::Stopped | NodeState::Failed => {
                if n.state == NodeState::Failed {
                    n.history.reset(&n.spec.policy);
                }
                n.deadline = None;
                self.spawn(i, false);
            }
            NodeState::Stopping => {
                n.start_after_exit = true;
                self.publish(i);
            }
            NodeState::Running | NodeState::Starting => {}
        }
    }

    pub(super) fn stop_node(&mut self, i: usize) {
        let now = clock::monotonic_ns();
        let n = &mut self.nodes[i];
        n.start_after_exit = false;
        n.queue = None;
        if n.extras().pid_file_wait.is_some() {
            self.give_up_pid_file(i, true);
            return;
        }
        if let Some(d) = n.draining.as_mut() {
            // Its main process ended and its cgroup is being emptied: once it is, it stays
            // stopped (no restart policy).
            d.2 = true;
            n.state = NodeState::Stopping;
            n.deadline = None;
            self.publish(i);
            return;
        }
        if n.pid.is_none() && n.state == NodeState::Starting {
            // A queued start that never spawned.
            n.state = NodeState::Stopped;
            self.publish(i);
            self.event(Event::now(EventKind::Stopped, i as u16, 0));
            return;
        }
        match (n.state, n.pid) {
            (NodeState::Running | NodeState::Starting, Some(pid)) => {
                let sig = n.spec.policy.stop_signal;
                let timeout = n.spec.policy.stop_timeout;
                if let Err(e) = spawn::signal_group(pid, sig) {
                    log!(
                        "node {}: sending signal {sig} to pid {pid}: {e}",
                        n.spec.name
                    );
                }
                n.state = NodeState::Stopping;
                n.killed = false;
                n.deadline = Some(now + timeout.as_nanos() as u64);
                self.publish(i);
                self.signal_escaped(i, pid, sig);
                let mut ev = Event::now(EventKind::Stopping, i as u16, pid);
                ev.a = sig as u64;
                ev.b = timeout.as_millis() as u64;
                self.event(ev);
            }
            (NodeState::Backoff | NodeState::Failed, _) => {
                n.state = NodeState::Stopped;
                n.deadline = None;
                // What blocked its start (a copy that escaped its group) is the node's too:
                // a stop ends it.
                if n.blocked_by.is_some() {
                    self.signal_escaped(i, 0, libc::SIGKILL);
                }
                self.unblock(i);
                self.publish(i);
                self.event(Event::now(EventKind::Stopped, i as u16, 0));
            }
            _ => {}
        }
    }

    /// `restart` of several nodes, in stages as `stop` and `start` go: stopped in reverse role
    /// order, then, once every one of them is down, started in order, each stage gated by
    /// readiness. Each is marked so a successor Supervisor still starts it again (unstaged).
    pub(super) fn restart_staged(&mut self, nodes: Vec<usize>) {
        self.queue_stop(nodes.clone());
        for &i in &nodes {
            self.nodes[i].staged_restart = true;
            self.publish(i);
        }
        self.restart_batches.push(
            nodes
                .iter()
                .map(|&i| self.nodes[i].spec.name.clone())
                .collect(),
        );
        self.advance_restart_batches();
    }

    /// Starts (in stages) every restart batch whose nodes are all down.
    pub(super) fn advance_restart_batches(&mut self) {
        let mut k = 0;
        while k < self.restart_batches.len() {
            let idx: Vec<usize> = self.restart_batches[k]
                .iter()
                .filter_map(|name| self.nodes.iter().position(|n| &n.spec.name == name))
                .collect();
            let down = idx.iter().all(|&i| {
                let n = &self.nodes[i];
                n.pid.is_none()
                    && n.queue.is_none()
                    && n.draining.is_none()
                    && matches!(
                        n.state,
                        NodeState::Stopped | NodeState::Failed | NodeState::Backoff
                    )
            });
            if !down {
                k += 1;
                continue;
            }
            self.restart_batches.remove(k);
            for &i in &idx {
                self.nodes[i].staged_restart = false;
            }
            if !self.shutting_down {
                self.queue_start(idx);
            }
        }
    }

    pub(super) fn restart_node(&mut self, i: usize) {
        if self.nodes[i].draining.is_some() {
            // Started again once its cgroup is empty.
            self.stop_node(i);
            self.nodes[i].start_after_exit = true;
            self.publish(i);
            return;
        }
        match (self.nodes[i].state, self.nodes[i].pid) {
            (NodeState::Running | NodeState::Starting, Some(_)) => {
                self.stop_node(i);
                self.nodes[i].start_after_exit = true;
                self.publish(i); // a successor must know the restart is pending
            }
            (NodeState::Stopping, _) => {
                self.nodes[i].start_after_exit = true;
                self.publish(i);
            }
            _ => {
                let n = &mut self.nodes[i];
                if let Some(Queue::Start {
                    was_failed: true, ..
                }) = n.queue
                {
                    n.history.reset(&n.spec.policy);
                }
                n.queue = None;
                if n.state == NodeState::Starting {
                    n.state = NodeState::Stopped; // a queued start: start it now
                }
                self.start_node(i);
            }
        }
    }

    pub(super) fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.shared
            .header()
            .state
            .store(SupervisorState::ShuttingDown as u32, Ordering::Release);
        crate::sys::futex::wake(&self.shared.header().state, i32::MAX);
        self.queue_stop((0..self.nodes.len()).collect());
    }
}
