//! `reload`: re-reading the config and applying only the difference; keeping the node table
//! and the pid and token maps in step when the node list changes.

use super::source::Source;
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
        let lingering = (0..self.nodes.len())
            .filter(|&i| {
                (self.machine.is_retiring(i) || !wanted.contains(self.nodes[i].spec.name.as_str()))
                    && self.machine.core(i).phase.may_have_processes()
            })
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
        // The new table: the config's nodes in its order (each keeps its process and its
        // machine state), then the removed ones that still have a process (stopped, then
        // dropped from the table); a removed node with no process leaves it now.
        let old_index: HashMap<String, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.spec.name.clone(), i))
            .collect();
        let mut old: Vec<Option<Node>> = self.nodes.drain(..).map(Some).collect();
        let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        let (mut to_restart, mut to_start, mut to_retire, mut fresh) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut from = Vec::new();
        let mut nodes = Vec::new();
        for spec in config.nodes {
            match old_index.get(&spec.name).copied() {
                Some(o) if old[o].is_some() && !self.machine.is_retiring(o) => {
                    let mut n = old[o].take().expect("checked");
                    let mut a = n.spec.clone();
                    a.line = spec.line;
                    if a != spec {
                        changed.push(spec.name.clone());
                        n.spec = spec;
                        n.prepared = spawn::Prepared::default();
                        fresh.push(nodes.len());
                        if self.machine.core(o).phase.may_have_processes() {
                            to_restart.push(nodes.len());
                        }
                    }
                    nodes.push(n);
                    from.push(Some(o));
                }
                _ => {
                    added.push(spec.name.clone());
                    if spec.policy.autostart {
                        to_start.push(nodes.len());
                    }
                    nodes.push(Node::new(spec));
                    from.push(None);
                }
            }
        }
        for (o, n) in old.into_iter().enumerate() {
            let Some(mut n) = n else { continue };
            if !self.machine.is_retiring(o) {
                removed.push(n.spec.name.clone());
            }
            if self.machine.core(o).phase.may_have_processes() {
                to_retire.push(nodes.len());
                nodes.push(n);
                from.push(Some(o));
            } else {
                // Gone from the table now: what its streams hold goes to its files first.
                n.retired = true;
                nodes.push(n);
                from.push(Some(o));
            }
        }
        self.nodes = nodes;
        let confs = self.confs();
        self.machine.remap(confs, &from);
        for &i in &fresh {
            self.machine.reset_history(i);
        }
        self.reindex();
        for i in to_retire {
            self.feed(machine::Input::StopThen {
                node: i,
                then: machine::Then::Retire,
            });
        }
        for i in to_restart {
            self.feed(machine::Input::Command(machine::Command::Restart(vec![i])));
        }
        if !to_start.is_empty() {
            self.feed(machine::Input::Command(machine::Command::Start(to_start)));
        }
        self.drop_retired();
        // The epoch moved in `reindex` if, and only if, the numbering changed: a reload that
        // kept every node at its index leaves it, so earlier events still name their nodes.
        let unchanged = (0..self.nodes.len())
            .filter(|&i| !self.machine.is_retiring(i))
            .count()
            .saturating_sub(added.len() + changed.len());
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
            if let Some(pid) = self.machine.core(i).phase.proc_().map(|p| p.pid) {
                self.by_pid.insert(pid, i);
            }
            if let Some(fd) = &n.pidfd {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&fd.as_raw_fd()),
                    Source::Pidfd(i).token(),
                    Interest::READABLE,
                );
            }
            if let Some(fd) = &n.blocker {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&fd.as_raw_fd()),
                    Source::Blocker(i).token(),
                    Interest::READABLE,
                );
            }
            if let Some(r) = &n.ready_pipe {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&r.as_raw_fd()),
                    Source::ReadyPipe(i).token(),
                    Interest::READABLE,
                );
            }
            if let Some(sock) = &n.extras().notify {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&sock.as_raw_fd()),
                    Source::Notify(i).token(),
                    Interest::READABLE,
                );
            }
            if let Some(f) = &n.cgroup_events {
                let _ = self.poll.registry().reregister(
                    &mut SourceFd(&f.as_raw_fd()),
                    Source::Cgroup(i).token(),
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

    /// Drops the retired nodes (removed by a `reload`, and down) from the table.
    pub(super) fn drop_retired(&mut self) {
        self.dropping.clear();
        if !self.nodes.iter().any(|n| n.retired) {
            return;
        }
        let mut from = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            if self.nodes[i].retired {
                self.close_outputs(i);
            } else {
                from.push(Some(i));
            }
        }
        self.nodes.retain(|n| !n.retired);
        let confs = self.confs();
        self.machine.remap(confs, &from);
        self.reindex();
    }
}
