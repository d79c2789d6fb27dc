//! The model: what the config file says, whether a Supervisor should run, and the state each
//! node should be in once quiet; and the allowance of one step (which node processes may die,
//! how many times each node may be spawned or sent SIGHUP).

use crate::plan::{Edit, Kind, NodeSpec, Op, Sig};
use std::collections::{BTreeMap, BTreeSet};

/// What a node should be doing once quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Running,
    Stopped,
    /// A fault hit the command that would decide it; the next observation decides.
    Unknown,
}

/// The campaign's expectation of the instance.
#[derive(Debug, Clone)]
pub struct Model {
    /// The config as the Supervisor runs it (and as the file says, unless `broken`).
    pub nodes: Vec<NodeSpec>,
    /// The file on disk is currently edited into an error.
    pub broken: bool,
    /// A Supervisor should run (`None`: a fault decides; observed next).
    pub supervisor: Option<bool>,
    /// What each configured node should be doing once quiet.
    pub want: BTreeMap<String, Want>,
}

/// What one step may do to the nodes without breaking an invariant.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    /// Nodes whose processes may die in this step.
    pub die: BTreeSet<String>,
    /// How many times each node may be spawned.
    pub spawn: BTreeMap<String, u32>,
    /// How many SIGHUPs each node may get.
    pub hup: BTreeMap<String, u32>,
}

impl Allow {
    fn spawn_once(&mut self, name: &str) {
        self.spawn.insert(name.to_owned(), 1);
    }

    /// Supervision resumes after a time with none (the guardian was stopped and the
    /// Supervisor dead): the Supervisor that takes over restarts, once, a node that died
    /// meanwhile, and carries through a stop begun before (a node not wanted running may die).
    pub fn resumed(&mut self, m: &Model) {
        for n in &m.nodes {
            let k = self.spawn.entry(n.name.clone()).or_default();
            *k = (*k).max(1);
            if m.want.get(&n.name) != Some(&Want::Running) {
                self.die.insert(n.name.clone());
            }
        }
    }
}

/// The broken text appended to a good config for `Edit::Broken` and `UpgradeBrokenConfig`.
pub const BROKEN_TAIL: &str = "\n[[node]]\nname = \"broken\"\ncommnd = [\"x\"]\n";

impl Model {
    /// Before the first step: `nodes` configured, nothing running.
    pub fn new(nodes: Vec<NodeSpec>) -> Model {
        let want = nodes
            .iter()
            .map(|n| (n.name.clone(), Want::Stopped))
            .collect();
        Model {
            nodes,
            broken: false,
            supervisor: Some(false),
            want,
        }
    }

    /// The configured node `name`.
    pub fn spec(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The behaviour of the configured node `name`.
    pub fn kind(&self, name: &str) -> Option<Kind> {
        self.spec(name).map(|n| n.kind)
    }

    /// The config text (`@NODE@` for the node program).
    pub fn config_text(&self) -> String {
        let mut s = String::from(
            "[defaults]\nstop_timeout_ms = 300\nrestart_delay_ms = 100\nrestart_delay_max_ms = 400\n\
             give_up_after = 0\nquick_death_ms = 200\nready_timeout_ms = 500\n",
        );
        for n in &self.nodes {
            let mut cmd = vec![
                "@NODE@".to_owned(),
                "--interval".to_owned(),
                format!("{}ms", n.interval_ms),
            ];
            cmd.extend(n.kind.args().iter().map(|a| a.to_string()));
            let cmd: Vec<String> = cmd.iter().map(|a| format!("\"{a}\"")).collect();
            s.push_str(&format!(
                "\n[[node]]\nname = \"{}\"\ntype = \"worker\"\ncommand = [{}]\nautostart = {}\n",
                n.name,
                cmd.join(", "),
                n.autostart
            ));
            if n.kind.has_ready_fd() {
                s.push_str("ready_fd = 3\n");
            }
        }
        if self.broken {
            s.push_str(BROKEN_TAIL);
        }
        s
    }

    /// Whether `op` names only nodes that exist now (a shrunk sequence may name a node whose
    /// `Add` was removed: such a step is skipped).
    pub fn applies(&self, op: &Op) -> bool {
        let has = |n: &str| self.spec(n).is_some();
        match op {
            Op::Start(Some(n)) | Op::Stop(Some(n)) | Op::Restart(n) | Op::Signal(_, n) => has(n),
            Op::KillNode(n) => has(n),
            Op::Reload(Edit::Add(n)) => !has(&n.name),
            Op::Reload(Edit::Remove(n)) => has(n) && self.nodes.len() > 1,
            Op::Reload(Edit::Rename(a, b)) => has(a) && !has(b),
            Op::Reload(Edit::Change(n)) => has(n),
            _ => true,
        }
    }

    fn all_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    fn set(&mut self, names: &[String], w: Want) {
        for n in names {
            self.want.insert(n.clone(), w);
        }
    }

    /// The Supervisor is (or may be) down and this command starts one: every autostart node
    /// starts with it.
    fn spawns_supervisor(&self) -> bool {
        self.supervisor != Some(true)
    }

    /// Applies the config edit of a `Reload` to the file model (before the command runs).
    pub fn edit_config(&mut self, edit: &Edit) {
        match edit {
            Edit::Add(n) => self.nodes.push(n.clone()),
            Edit::Remove(name) => self.nodes.retain(|n| &n.name != name),
            Edit::Rename(a, b) => {
                if let Some(n) = self.nodes.iter_mut().find(|n| &n.name == a) {
                    n.name = b.clone();
                }
            }
            Edit::Reorder(k) => {
                let k = k % self.nodes.len().max(1);
                self.nodes.rotate_left(k);
            }
            Edit::Change(name) => {
                if let Some(n) = self.nodes.iter_mut().find(|n| &n.name == name) {
                    n.interval_ms = if n.interval_ms == 1000 { 700 } else { 1000 };
                }
            }
            Edit::Broken => {}
        }
        self.broken = matches!(edit, Edit::Broken);
    }

    /// What `op` may do (`before` is the model before the step, for reloads the config before
    /// the edit) and the model after it. `faulted`: a fault hit the command in flight, so it
    /// may or may not have been applied.
    pub fn apply(&mut self, op: &Op, before: &Model, faulted: bool) -> Allow {
        let mut a = Allow::default();
        let decided = if faulted {
            Want::Unknown
        } else {
            Want::Running
        };
        let stopped = if faulted {
            Want::Unknown
        } else {
            Want::Stopped
        };
        let autostart: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.autostart)
            .map(|n| n.name.clone())
            .collect();
        let can_spawn_supervisor = !self.broken;
        let starting = |m: &mut Model, a: &mut Allow, targets: Vec<String>, restart: bool| {
            if !can_spawn_supervisor && m.supervisor != Some(true) {
                return;
            }
            let mut all = targets;
            if m.spawns_supervisor() {
                all.extend(autostart.iter().cloned());
                m.supervisor = if faulted { None } else { Some(true) };
            }
            for n in &all {
                // A node started by the new Supervisor's autostart and then restarted by the
                // command (`restart` restarts the fresh copy) is spawned twice by one command.
                let k = a.spawn.entry(n.clone()).or_default();
                *k = if restart { *k + 1 } else { 1 };
            }
            m.set(&all, decided);
        };
        match op {
            Op::Start(t) => {
                let targets = t
                    .clone()
                    .map(|n| vec![n])
                    .unwrap_or_else(|| self.all_names());
                starting(self, &mut a, targets, false);
            }
            Op::Restart(n) => {
                a.die.insert(n.clone());
                starting(self, &mut a, vec![n.clone()], true);
            }
            Op::Stop(t) => {
                let targets = t
                    .clone()
                    .map(|n| vec![n])
                    .unwrap_or_else(|| self.all_names());
                for n in &targets {
                    a.die.insert(n.clone());
                }
                if self.supervisor != Some(false) {
                    self.set(&targets, stopped);
                }
            }
            Op::Reload(_) => {
                if self.supervisor == Some(false) || self.broken {
                    return a;
                }
                let old: BTreeMap<&str, &NodeSpec> =
                    before.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
                let new_names: BTreeSet<String> = self.all_names().into_iter().collect();
                for (name, _) in old.iter().filter(|(n, _)| !new_names.contains(**n)) {
                    a.die.insert(name.to_string());
                    self.want.remove(*name);
                }
                for n in self.nodes.clone() {
                    match old.get(n.name.as_str()) {
                        None => {
                            a.spawn_once(&n.name);
                            let w = if faulted {
                                Want::Unknown
                            } else if n.autostart {
                                Want::Running
                            } else {
                                Want::Stopped
                            };
                            self.want.insert(n.name.clone(), w);
                        }
                        Some(o) if **o != n => {
                            a.die.insert(n.name.clone());
                            a.spawn_once(&n.name);
                            if faulted {
                                self.want.insert(n.name.clone(), Want::Unknown);
                            }
                        }
                        Some(_) if faulted => {
                            self.want.insert(n.name.clone(), Want::Unknown);
                        }
                        Some(_) => {}
                    }
                }
            }
            Op::Signal(Sig::Hup, n) => {
                a.hup.insert(n.clone(), 1);
            }
            Op::Signal(Sig::Term, n) => {
                if self.kind(n) != Some(Kind::IgnoreTerm) {
                    a.die.insert(n.clone());
                    a.spawn_once(n);
                }
            }
            Op::Shutdown => {
                let all = self.all_names();
                for n in &all {
                    a.die.insert(n.clone());
                }
                self.set(&all, stopped);
                self.supervisor = if faulted { None } else { Some(false) };
            }
            Op::KillNode(n) => {
                a.die.insert(n.clone());
                a.spawn_once(n);
            }
            Op::Upgrade
            | Op::UpgradeBrokenConfig
            | Op::KillSupervisor
            | Op::FdLimitSuccessor
            | Op::UnlinkRegion(_)
            | Op::DamageRegion
            | Op::TruncateRegion
            | Op::KillGuardian
            | Op::StopGuardian
            | Op::ContGuardian
            | Op::KillBoth
            | Op::StarveGuardian(_)
            | Op::FeedGuardian
            | Op::HungUpgrade
            | Op::DamageRecords(_) => {}
        }
        if faulted {
            // A killed Main or Supervisor: the Supervisor that serves next may be a new one,
            // started by the settle's `status`.
            if self.supervisor == Some(true) {
                self.supervisor = None;
            }
        }
        a
    }
}
