//! Cluster-wide ordering: starts by role (loggers, managers, proxies, workers, others) and
//! `start_after`, stops in reverse, staged restarts of several nodes, shutdown.
//!
//! An ordered start or stop is a [`Wave`]: the nodes one command selected. A node of a start
//! wave spawns once no member of an earlier role (nor any member it starts after) is still
//! unsettled (queued, or starting and inside its ready timeout); a node of a stop wave gets its
//! stop signal once every member of a later role (and every member that starts after it) is
//! down. Each pass over a wave is linear in its size, and a pass repeats only while it makes
//! progress (at most once per role and `start_after` depth), so a cluster-wide operation is
//! linear in the node count.

use super::*;
use std::collections::BTreeMap;

/// The nodes of one ordered start or stop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Wave {
    /// Its nodes.
    pub(super) members: Vec<Ix>,
    /// For a stop: member -> the members that start after it (they stop first).
    dependents: BTreeMap<Ix, Vec<Ix>>,
}

impl Wave {
    /// Renumbers the dependents after a table change (`to_new`: old index -> new).
    pub(super) fn remap_dependents(&mut self, to_new: &[Option<Ix>]) {
        let old = std::mem::take(&mut self.dependents);
        for (k, v) in old {
            let Some(Some(nk)) = to_new.get(k) else {
                continue;
            };
            let nv: Vec<Ix> = v
                .iter()
                .filter_map(|&o| to_new.get(o).copied().flatten())
                .collect();
            self.dependents.insert(*nk, nv);
        }
    }
}

/// Takes out of `waves` every wave that shares a node with `members`, and returns the union
/// (a node in two ordered operations would move by whichever went first).
fn merge(waves: &mut Vec<Wave>, mut members: Vec<Ix>, n: usize) -> Vec<Ix> {
    let mut mark = vec![false; n];
    for &i in &members {
        mark[i] = true;
    }
    let mut w = 0;
    while w < waves.len() {
        if waves[w].members.iter().any(|&j| mark[j]) {
            let old = waves.swap_remove(w);
            for j in old.members {
                if !std::mem::replace(&mut mark[j], true) {
                    members.push(j);
                }
            }
        } else {
            w += 1;
        }
    }
    members.sort_unstable();
    members.dedup();
    members
}

impl Machine {
    /// Applies a Main's command.
    pub(super) fn command(&mut self, c: Command, now: Ns) {
        let n = self.cores.len();
        match c {
            Command::Start(nodes) => {
                let nodes: Vec<Ix> = nodes.into_iter().filter(|&i| i < n).collect();
                self.queue_start(nodes, &[]);
            }
            Command::Stop(nodes) => {
                let nodes: Vec<Ix> = nodes.into_iter().filter(|&i| i < n).collect();
                self.queue_stop(nodes, Then::Down, now);
            }
            Command::Restart(nodes) => {
                let nodes: Vec<Ix> = nodes.into_iter().filter(|&i| i < n).collect();
                if nodes.len() > 1 {
                    // Overlapping staged restarts become one.
                    let mut mark = vec![false; n];
                    nodes.iter().for_each(|&i| mark[i] = true);
                    let mut batch = nodes.clone();
                    self.batches.retain(|b| {
                        if !b.iter().any(|&j| mark[j]) {
                            return true;
                        }
                        for &j in b {
                            if !std::mem::replace(&mut mark[j], true) {
                                batch.push(j);
                            }
                        }
                        false
                    });
                    self.batches.push(batch);
                    self.queue_stop(nodes, Then::Hold, now);
                } else {
                    for i in nodes {
                        self.restart_node(i, now);
                    }
                }
            }
            Command::Shutdown => self.begin_shutdown(now),
        }
    }

    /// Stops every node (in reverse order), then the shell exits once [`Self::all_down`].
    pub fn begin_shutdown(&mut self, now: Ns) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.start_waves.clear();
        self.batches.clear();
        let all: Vec<Ix> = (0..self.cores.len()).collect();
        self.queue_stop(all, Then::Down, now);
    }

    /// Marks a shutdown as in progress without stopping anything yet (a successor that
    /// finishes its predecessor's shutdown: no death it finds is restarted).
    pub fn set_shutting_down(&mut self) {
        self.shutting_down = true;
    }

    /// `restart` of one node: stopped and started again (or started now if it has no process).
    pub(super) fn restart_node(&mut self, i: Ix, now: Ns) {
        match self.cores[i].phase.clone() {
            Phase::Starting { .. } | Phase::Running { .. } | Phase::Stopping { .. } => {
                self.stop_node(i, Then::Restart, now)
            }
            Phase::Draining { .. } => self.stop_node(i, Then::Restart, now),
            Phase::Queued { .. } => self.start_node(i),
            _ => self.start_node(i),
        }
    }

    /// Starts `nodes` in order; `pending` are nodes already spawned and still starting that
    /// the ordered start also waits for (a takeover resumes an ordered start half-done).
    pub fn queue_start(&mut self, mut nodes: Vec<Ix>, pending: &[Ix]) {
        if self.shutting_down {
            return;
        }
        // Published in the order they start: a Supervisor killed while it publishes leaves a
        // successor the earlier roles queued whenever it finds a later one queued.
        nodes.sort_by_key(|&i| (self.confs[i].rank, i));
        let mut members = Vec::new();
        for i in nodes {
            match self.cores[i].phase.clone() {
                Phase::Stopped | Phase::Held => {
                    self.set(i, Phase::Queued { was_failed: false });
                    members.push(i);
                }
                Phase::Failed => {
                    self.set(i, Phase::Queued { was_failed: true });
                    members.push(i);
                }
                // Already coming: it holds up the later roles of this start too.
                Phase::Queued { .. }
                | Phase::Spawning { .. }
                | Phase::AwaitingMain { .. }
                | Phase::Starting {
                    stop_queued: None, ..
                } => members.push(i),
                // Already coming back: its restart delay stands.
                Phase::Backoff { .. } => {}
                // A stopping node starts again once down, and holds up the later roles.
                Phase::Stopping { .. } | Phase::Draining { .. } => {
                    self.start_node(i);
                    members.push(i);
                }
                // A queued stop is cancelled.
                _ => self.start_node(i),
            }
        }
        members.extend(pending.iter().copied());
        if members.is_empty() {
            return;
        }
        let members = merge(&mut self.start_waves, members, self.cores.len());
        self.moved = true;
        self.start_waves.push(Wave {
            members,
            dependents: BTreeMap::new(),
        });
    }

    /// Stops `nodes` in reverse order, each then following `then`.
    pub(super) fn queue_stop(&mut self, mut nodes: Vec<Ix>, then: Then, now: Ns) {
        // Published in the order they stop (later roles first): a Supervisor killed while it
        // publishes leaves a successor every later role's stop queued whenever it finds an
        // earlier one's.
        nodes.sort_by_key(|&i| (std::cmp::Reverse(self.confs[i].rank), i));
        let mut members = Vec::new();
        for i in nodes {
            let phase = self.cores[i].phase.clone();
            match phase {
                Phase::Running { .. } | Phase::Starting { .. } => {
                    if let Some(queued) = phase.with_stop_queued(Some(then)) {
                        self.set(i, queued);
                    }
                    members.push(i);
                }
                // Already going down: it still holds up the nodes that stop after it.
                Phase::Stopping { .. } | Phase::Draining { .. } | Phase::AwaitingMain { .. } => {
                    self.stop_node(i, then, now);
                    members.push(i);
                }
                // Nothing to wait for: settled now.
                _ => self.stop_node(i, then, now),
            }
        }
        self.stop_wave(members);
    }

    /// Orders the stops of `members` (each already queued, or already stopping).
    pub(super) fn stop_wave(&mut self, members: Vec<Ix>) {
        if members.is_empty() {
            return;
        }
        self.moved = true;
        let members = merge(&mut self.stop_waves, members, self.cores.len());
        let set: std::collections::HashSet<Ix> = members.iter().copied().collect();
        let mut dependents: BTreeMap<Ix, Vec<Ix>> = BTreeMap::new();
        for &j in &members {
            for &d in &self.confs[j].after {
                if set.contains(&d) {
                    dependents.entry(d).or_default().push(j);
                }
            }
        }
        self.stop_waves.push(Wave {
            members,
            dependents,
        });
    }

    /// Whether node `i` is part of an ordered start in progress.
    pub(super) fn in_start_wave(&self, i: Ix) -> bool {
        self.start_waves.iter().any(|w| w.members.contains(&i))
    }

    /// Whether node `j` no longer holds up an ordered start.
    fn start_settled(&self, j: Ix) -> bool {
        match &self.cores[j].phase {
            Phase::Queued { .. } | Phase::Spawning { .. } | Phase::AwaitingMain { .. } => false,
            Phase::Running {
                stop_queued: Some(Then::Restart | Then::Hold),
                ..
            }
            | Phase::Starting {
                stop_queued: Some(Then::Restart | Then::Hold),
                ..
            } => false,
            Phase::Starting { timed_out, .. } => *timed_out,
            // Coming back (a restart): it holds up the later roles until it is up again.
            Phase::Stopping {
                then: Then::Restart,
                ..
            }
            | Phase::Draining {
                then: Some(Then::Restart),
                ..
            } => false,
            _ => true,
        }
    }

    /// Whether node `j` no longer holds up an ordered stop: no process left.
    fn stop_settled(&self, j: Ix) -> bool {
        !self.cores[j].phase.may_have_processes()
            && !matches!(self.cores[j].phase, Phase::Spawning { .. })
    }

    /// Dequeues every start and stop whose wait is over, and starts staged restarts whose
    /// nodes are all held.
    pub(super) fn advance(&mut self, now: Ns) {
        loop {
            let mut progressed = false;
            let mut w = 0;
            while w < self.stop_waves.len() {
                let (p, done) = self.advance_stop(w, now);
                progressed |= p;
                if done {
                    self.stop_waves.swap_remove(w);
                } else {
                    w += 1;
                }
            }
            let mut w = 0;
            while w < self.start_waves.len() {
                let (p, done) = self.advance_start(w);
                progressed |= p;
                if done {
                    self.start_waves.swap_remove(w);
                } else {
                    w += 1;
                }
            }
            progressed |= self.advance_batches();
            if !progressed {
                return;
            }
        }
    }

    /// One pass over start wave `w`: returns (spawned any, wave over).
    fn advance_start(&mut self, w: usize) -> (bool, bool) {
        let members = std::mem::take(&mut self.start_waves[w].members);
        // Members no longer queued or starting by this wave's doing are dropped from it.
        let mut min_rank = u8::MAX;
        let mut unsettled = std::collections::HashSet::new();
        for &j in &members {
            if !self.start_settled(j) {
                min_rank = min_rank.min(self.confs[j].rank);
                unsettled.insert(j);
            }
        }
        let mut progressed = false;
        for &i in &members {
            if !matches!(self.cores[i].phase, Phase::Queued { .. }) {
                continue;
            }
            if self.confs[i].rank > min_rank {
                continue;
            }
            if self.confs[i].after.iter().any(|d| unsettled.contains(d)) {
                continue;
            }
            self.start_node(i);
            progressed = true;
        }
        let live: Vec<Ix> = members
            .into_iter()
            .filter(|&j| !self.start_settled(j))
            .collect();
        let done = live.is_empty();
        self.start_waves[w].members = live;
        (progressed, done)
    }

    /// One pass over stop wave `w`: returns (stopped any, wave over).
    fn advance_stop(&mut self, w: usize, now: Ns) -> (bool, bool) {
        let members = std::mem::take(&mut self.stop_waves[w].members);
        let mut max_rank = 0u8;
        let mut any = false;
        for &j in &members {
            if !self.stop_settled(j) && !self.stop_released(j) {
                max_rank = max_rank.max(self.confs[j].rank);
                any = true;
            }
        }
        let mut progressed = false;
        for &i in &members {
            let then = match &self.cores[i].phase {
                Phase::Running {
                    stop_queued: Some(t),
                    ..
                }
                | Phase::Starting {
                    stop_queued: Some(t),
                    ..
                } => *t,
                _ => continue,
            };
            if any && self.confs[i].rank < max_rank {
                continue;
            }
            let held_up = self.stop_waves[w]
                .dependents
                .get(&i)
                .is_some_and(|d| d.iter().any(|&j| !self.stop_settled(j)));
            if held_up {
                continue;
            }
            self.stop_node(i, then, now);
            progressed = true;
        }
        let live: Vec<Ix> = members
            .into_iter()
            .filter(|&j| !self.stop_settled(j) && !self.stop_released(j))
            .collect();
        let done = live.is_empty();
        self.stop_waves[w].members = live;
        (progressed, done)
    }

    /// A member of a stop wave that a later command took out of it (started again, its
    /// queued stop cancelled): it holds nothing up.
    fn stop_released(&self, j: Ix) -> bool {
        matches!(
            self.cores[j].phase,
            Phase::Running {
                stop_queued: None,
                ..
            } | Phase::Starting {
                stop_queued: None,
                ..
            }
        )
    }

    /// Whether node `i` is still part of a staged restart (and where).
    pub(super) fn in_batch(&self, i: Ix) -> Option<bool> {
        match &self.cores[i].phase {
            Phase::Held => Some(true),
            Phase::Stopping {
                then: Then::Hold, ..
            }
            | Phase::Draining {
                then: Some(Then::Hold),
                ..
            }
            | Phase::Running {
                stop_queued: Some(Then::Hold),
                ..
            }
            | Phase::Starting {
                stop_queued: Some(Then::Hold),
                ..
            } => Some(false),
            _ => None,
        }
    }

    /// Starts (in order) every staged restart whose remaining nodes are all held; a node a
    /// later command took over has left its batch, and never holds the others up.
    fn advance_batches(&mut self) -> bool {
        let mut progressed = false;
        let mut k = 0;
        while k < self.batches.len() {
            let batch = &self.batches[k];
            let mut still = Vec::with_capacity(batch.len());
            let mut all_held = true;
            for &i in batch {
                match self.in_batch(i) {
                    Some(true) => still.push(i),
                    Some(false) => {
                        still.push(i);
                        all_held = false;
                    }
                    None => {}
                }
            }
            if !all_held {
                self.batches[k] = still;
                k += 1;
                continue;
            }
            self.batches.swap_remove(k);
            if !still.is_empty() {
                self.queue_start(still, &[]);
                progressed = true;
            }
        }
        progressed
    }
}
