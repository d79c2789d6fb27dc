//! `reload`: re-reading the config and applying only the difference; keeping the node table
//! and the pid and token maps in step when the node list changes.

use super::*;

impl Supervisor {
    /// Re-reads the config file and applies only the difference: added nodes are started (if
    /// autostart), removed ones stopped and then dropped from the table, nodes whose definition
    /// changed are restarted with the new one; every other node keeps its process. A config that
    /// fails to load changes nothing.
    pub(super) fn reload(&mut self) -> (ReplyStatus, String) {
        let config = match self.load_config_file() {
            Ok(c) => c,
            Err(e) => return (ReplyStatus::Rejected, format!("nothing changed: {e}")),
        };
        if let Err(e) = preflight(&config, self.cgroups.as_ref()) {
            return (ReplyStatus::Rejected, format!("nothing changed: {e}"));
        }
        if let Some(Err(e)) = config.zeek.as_ref().map(zeek_setup::apply) {
            return (ReplyStatus::Rejected, format!("nothing changed: {e}"));
        }
        // The table must hold the new config plus every node this reload retires that still
        // has a process (it stays, `stopping`, until it exits); a retired node with no process
        // leaves the table at once.
        let wanted: std::collections::HashSet<&str> =
            config.nodes.iter().map(|s| s.name.as_str()).collect();
        let lingering = self
            .nodes
            .iter()
            .filter(|n| (n.retiring || !wanted.contains(n.spec.name.as_str())) && n.pid.is_some())
            .count();
        let capacity = self.capacity();
        if config.nodes.len() + lingering > capacity {
            return (
                ReplyStatus::Rejected,
                format!(
                    "nothing changed: {} nodes, plus {lingering} removed nodes still running until they stop, is more than the table's {capacity}; stop the removed nodes first",
                    config.nodes.len()
                ),
            );
        }
        self.config_dir = config.dir.clone();
        // Queues hold node indices, which a reload reorders: settle them now. A queued start of
        // a node this reload removes is dropped, not spawned.
        for i in 0..self.nodes.len() {
            let removed = !wanted.contains(self.nodes[i].spec.name.as_str());
            match self.nodes[i].queue.take() {
                Some(Queue::Start { .. }) if removed || self.nodes[i].retiring => {
                    self.nodes[i].state = NodeState::Stopped;
                }
                Some(Queue::Start { was_failed, .. }) => {
                    if was_failed {
                        let n = &mut self.nodes[i];
                        n.history.reset(&n.spec.policy);
                    }
                    self.spawn(i, false);
                }
                Some(Queue::Stop { .. }) if self.nodes[i].pid.is_some() => self.stop_node(i),
                _ => {}
            }
        }
        let mut old: HashMap<String, Node> = HashMap::new();
        let mut kept_retiring = Vec::new();
        for n in self.nodes.drain(..) {
            if n.retiring {
                kept_retiring.push(n);
            } else {
                old.insert(n.spec.name.clone(), n);
            }
        }
        let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        let mut to_restart = Vec::new();
        let mut to_start = Vec::new();
        for spec in config.nodes {
            match old.remove(&spec.name) {
                Some(mut n) => {
                    let mut a = n.spec.clone();
                    a.line = spec.line;
                    if a != spec {
                        changed.push(spec.name.clone());
                        let running = n.pid.is_some();
                        n.spec = spec;
                        n.prepared = spawn::Prepared::default();
                        n.history = policy::History::new(&n.spec.policy);
                        if running {
                            to_restart.push(self.nodes.len());
                        }
                    }
                    self.nodes.push(n);
                }
                None => {
                    added.push(spec.name.clone());
                    if spec.policy.autostart {
                        to_start.push(self.nodes.len());
                    }
                    self.nodes.push(Node::new(spec));
                }
            }
        }
        let first_retiring = self.nodes.len();
        for (name, mut n) in old {
            removed.push(name);
            // Only a node with a process stays in the table (to be stopped); one without
            // leaves it now, so the table never holds more than its capacity.
            if n.pid.is_some() {
                n.retiring = true;
                self.nodes.push(n);
            }
        }
        self.nodes
            .extend(kept_retiring.into_iter().filter(|n| n.pid.is_some()));
        self.reindex();
        for i in first_retiring..self.nodes.len() {
            if self.nodes[i].pid.is_some() {
                self.stop_node(i);
            } else {
                self.nodes[i].state = NodeState::Stopped;
                self.nodes[i].deadline = None;
            }
        }
        for i in to_restart {
            self.restart_node(i);
        }
        for i in self.start_order(to_start) {
            self.start_node(i);
        }
        self.drop_retired();
        // The epoch moved in `reindex` if, and only if, the numbering changed: a reload that
        // kept every node at its index leaves it, so earlier events still name their nodes.
        let unchanged =
            self.nodes.iter().filter(|n| !n.retiring).count() - added.len() - changed.len();
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let msg = format!(
            "added {} changed {} removed {} unchanged {unchanged}",
            list(&added),
            list(&changed),
            list(&removed)
        );
        log!("reload of {}: {msg}", self.config_path.display());
        self.commit_loaded_config();
        (ReplyStatus::Ok, msg)
    }

    /// After the node list changed order: rebuild the pid map, move every pidfd and readiness
    /// pipe to its node's new token, republish the whole table.
    pub(super) fn reindex(&mut self) {
        // Indices changed: commands that named nodes by the old numbering are now stale, and
        // events written before name their nodes by it. Only then does the epoch move: a table
        // that names the same node at every index as the published one keeps its epoch.
        if !self.numbering_unchanged() {
            self.shared
                .header()
                .config_epoch
                .fetch_add(1, Ordering::Release);
        }
        self.by_pid.clear();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(pid) = n.pid {
                self.by_pid.insert(pid, i);
            }
            if let Some(fd) = n.pidfd.as_ref().or(n.blocker.as_ref()) {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&fd.as_raw_fd()),
                    Token(NODE_BASE + 2 * i),
                    Interest::READABLE,
                );
            }
            if let Some(r) = &n.ready_pipe {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&r.as_raw_fd()),
                    Token(NODE_BASE + 2 * i + 1),
                    Interest::READABLE,
                );
            }
            if let Some(sock) = &n.extras().notify {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&sock.as_raw_fd()),
                    Token(notify::NOTIFY_BASE + i),
                    Interest::READABLE,
                );
            }
            if let Some(f) = &n.cgroup_events {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&f.as_raw_fd()),
                    Token(CGROUP_BASE + i),
                    Interest::PRIORITY,
                );
            }
        }
        self.reindex_outputs();
        self.publish_all();
    }

    /// Whether the published table names, index for index, the nodes of `self.nodes` (a
    /// record that cannot be read counts as a change).
    fn numbering_unchanged(&self) -> bool {
        let cells = self.shared.node_cells();
        let count = self.shared.node_count();
        count == self.nodes.len()
            && count <= cells.len()
            && cells[..count].iter().zip(&self.nodes).all(|(cell, n)| {
                cell.read()
                    .and_then(|w| crate::protocol::node::NodeRecord::decode(&w))
                    .is_some_and(|r| r.name == n.spec.name)
            })
    }

    /// Publishes every record and the count; clears records past the end.
    pub(super) fn publish_all(&self) {
        let cells = self.shared.node_cells();
        for i in 0..self.nodes.len().min(cells.len()) {
            self.publish(i);
        }
        let old = self.shared.node_count();
        // An all-zero record reads as a stopped node with no name.
        let used = self.nodes.len().min(cells.len());
        for cell in &cells[used..old.max(used).min(cells.len())] {
            cell.write(&[0; crate::protocol::layout::NODE_WORDS]);
        }
        self.shared
            .header()
            .node_count
            .store(used as u32, Ordering::Release);
    }

    /// How many records the region's node table holds.
    pub(super) fn capacity(&self) -> usize {
        self.shared.node_cells().len().min(MAX_NODES)
    }

    /// Drops retiring nodes that have stopped.
    pub(super) fn drop_retired(&mut self) {
        let before = self.nodes.len();
        for i in 0..before {
            if self.nodes[i].retiring && self.nodes[i].is_down() {
                self.close_outputs(i);
            }
        }
        self.nodes.retain(|n| !(n.retiring && n.is_down()));
        if self.nodes.len() != before {
            self.reindex();
        }
    }
}
