//! A cgroup per node: where the instance's group is, which group each node gets, and what the
//! host can enforce there (`memory_max` needs the memory controller).
//!
//! Where a writable cgroup v2 hierarchy exists, the instance gets a group next to the
//! Supervisor's own (`broctld-UID-INSTANCE-HASH`, its path kept in the instance dir's `cgroup`
//! file so a successor started from elsewhere finds the same one), and each node the child
//! `node-NAME`. A node's processes are those in its group or in any sub-group they made in it
//! (`node-NAME/sub`), whatever they do (`setsid`, double fork, daemonizing); it is down when
//! the group (its whole subtree) is empty. Without one, the node lock and the
//! `/proc` identity scan are the fallback, and the reason is in the `cgroup` file for
//! `status` and `diag` to show.

use crate::instance::Instance;
use crate::sys::cgroup::Cgroup;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The file in the instance dir naming the instance's cgroup (or why there is none).
pub const FILE: &str = "cgroup";
/// Set to `off` in the Supervisor's environment to use the fallback even where cgroups work.
pub const DISABLE_ENV: &str = "BROCTLD_CGROUP";

/// The instance's cgroup.
#[derive(Debug)]
pub struct Cgroups {
    instance: Cgroup,
}

/// What the `cgroup` file of an instance says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracking {
    /// Nodes run in their own groups under this directory.
    Cgroup(PathBuf),
    /// No cgroups, for this reason: escapes from a node's process group cannot be tracked.
    Fallback(String),
}

/// Reads the instance's `cgroup` file (written by its Supervisor at start). `None` if there is
/// none (no Supervisor ran yet, or an older one).
pub fn tracking(instance_dir: &Path) -> Option<Tracking> {
    let text = std::fs::read_to_string(instance_dir.join(FILE)).ok()?;
    let line = text.lines().next()?;
    Some(match line.strip_prefix("none: ") {
        Some(why) => Tracking::Fallback(why.to_owned()),
        None => Tracking::Cgroup(PathBuf::from(line)),
    })
}

/// The processes in node `name`'s group and its sub-groups, if the instance uses cgroups
/// (`top` counts them).
pub fn node_processes(instance_dir: &Path, name: &str) -> Option<Vec<u32>> {
    match tracking(instance_dir)? {
        Tracking::Cgroup(dir) => Cgroup::at(dir).child(&group_name(name)).procs().ok(),
        Tracking::Fallback(_) => None,
    }
}

/// What `status` and `diag` say when nodes have no cgroup.
pub fn fallback_note(why: &str) -> String {
    format!("no cgroup per node ({why}): escapes cannot be tracked (a process that leaves its node's process group and drops BROCTLD_NODE from its environment is not seen)")
}

fn group_name(node: &str) -> String {
    format!("node-{node}")
}

impl Cgroups {
    /// Finds or creates the instance's group and records it (or why there is none) in the
    /// instance dir's `cgroup` file.
    pub fn open(instance: &Instance) -> Result<Cgroups, String> {
        let r = Self::find(instance);
        let text = match &r {
            Ok(c) => format!("{}\n", c.instance.dir().display()),
            Err(why) => format!("none: {why}\n"),
        };
        let _ = std::fs::write(instance.dir().join(FILE), text);
        r
    }

    fn find(instance: &Instance) -> Result<Cgroups, String> {
        if std::env::var_os(DISABLE_ENV).is_some_and(|v| v == "off") {
            return Err(format!("disabled by {DISABLE_ENV}=off"));
        }
        // A predecessor's group (it may have been started from another cgroup).
        if let Some(Tracking::Cgroup(dir)) = tracking(&instance.dir()) {
            let g = Cgroup::at(dir);
            if g.exists() {
                return Ok(Cgroups { instance: g });
            }
        }
        let own = match crate::sys::cgroup::own_dir() {
            Ok(Some(d)) => d,
            Ok(None) => return Err("no cgroup v2 hierarchy is mounted".into()),
            Err(e) => return Err(format!("cannot read /proc/self/cgroup or mountinfo: {e}")),
        };
        let h = crate::protocol::layout::identity_hash(&instance.identity());
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let g = Cgroup::at(own.join(format!(
            "broctld-{uid}-{}-{:016x}",
            instance.name(),
            h as u64
        )));
        g.create()
            .map_err(|e| format!("cannot create cgroup {}: {e}", g.dir().display()))?;
        // Moving a process in needs write access to the group's cgroup.procs.
        if let Err(e) = g.open_attach() {
            let _ = g.remove();
            return Err(format!(
                "cannot write {}/cgroup.procs: {e}",
                g.dir().display()
            ));
        }
        Ok(Cgroups { instance: g })
    }

    /// The instance's group.
    pub fn dir(&self) -> &Path {
        self.instance.dir()
    }

    /// Node `name`'s group (nothing is created).
    pub fn node(&self, name: &str) -> Cgroup {
        self.instance.child(&group_name(name))
    }

    /// Why `memory_max` cannot be enforced here, if it cannot: the memory controller must be
    /// available to the instance's group (listed in its `cgroup.controllers`, or enabled by
    /// us in its parent).
    pub fn memory_refusal(&self) -> Option<String> {
        if self.memory_usable() {
            return None;
        }
        let parent = self.instance.dir().parent().unwrap_or(Path::new("/"));
        let available = Cgroup::at(parent.to_owned())
            .controllers()
            .map(|c| c.join(" "))
            .unwrap_or_default();
        Some(format!(
            "the memory controller is not available in cgroup v2 at {} (its cgroup.controllers lists: {}); on a host with cgroup v1's memory hierarchy, boot with the unified hierarchy",
            parent.display(),
            if available.is_empty() { "nothing" } else { &available }
        ))
    }

    /// Whether node groups can get `memory.max`: the memory controller is enabled in the
    /// instance group's `cgroup.subtree_control` (enabled here on first use).
    fn memory_usable(&self) -> bool {
        let has = |c: io::Result<Vec<String>>| c.is_ok_and(|c| c.iter().any(|x| x == "memory"));
        if has(self.instance.subtree_control()) {
            return true;
        }
        if !has(self.instance.controllers()) {
            if let Some(parent) = self.instance.dir().parent() {
                let p = Cgroup::at(parent.to_owned());
                if has(p.controllers()) {
                    let _ = p.enable("memory");
                }
            }
        }
        has(self.instance.controllers()) && self.instance.enable("memory").is_ok()
    }

    /// Creates node `name`'s group, sets its memory limit (`max` when none is configured)
    /// and opens its directory, in which the node's process is started. Returns it, and
    /// whether the group is fresh (see [`Node::cgroup_fresh`](super::node::Node)): one that
    /// is not (`fresh == false`: it may have been killed) is removed first and made anew when
    /// it is empty; if it cannot be, it is kept and reported not fresh.
    pub fn prepare(
        &self,
        name: &str,
        memory_max: Option<u64>,
        fresh: bool,
    ) -> io::Result<(OwnedFd, bool)> {
        let g = self.node(name);
        // Sub-groups its processes made are removed first (a group with any cannot be).
        let fresh = fresh || g.remove_tree().unwrap_or(false);
        g.create()?;
        let limit = g.dir().join("memory.max");
        if memory_max.is_some() || limit.exists() {
            let value = memory_max.map_or("max".to_owned(), |m| m.to_string());
            g.write("memory.max", &value)?;
        }
        Ok((g.open_dir()?, fresh))
    }

    /// After a refused start: removes the instance group and the file if no node group is in
    /// it (a predecessor's nodes keep theirs).
    pub fn remove_if_unused(&self, instance_dir: &Path) {
        if std::fs::remove_dir(self.instance.dir()).is_ok() {
            let _ = std::fs::remove_file(instance_dir.join(FILE));
        }
    }

    /// At shutdown: kills what is left in every node group (escapes and sub-groups included),
    /// waits up to `timeout` for each to empty, removes the groups (their sub-groups first),
    /// the instance group and the file.
    pub fn remove_all(&self, instance_dir: &Path, timeout: std::time::Duration) {
        if let Ok(rd) = std::fs::read_dir(self.instance.dir()) {
            for e in rd.flatten() {
                if !e.path().is_dir() {
                    continue;
                }
                let g = Cgroup::at(e.path());
                if g.populated().unwrap_or(true) {
                    crate::log!(
                        "cgroup {}: processes left at shutdown; killing them",
                        g.dir().display()
                    );
                    let _ = g.kill();
                    if let Ok(mut ev) = g.open_events() {
                        let _ = crate::sys::cgroup::wait_empty(&mut ev, timeout);
                    }
                }
                match g.remove_tree() {
                    Ok(true) => {}
                    Ok(false) => crate::log!(
                        "cgroup {}: cannot remove it: processes are still in it",
                        g.dir().display()
                    ),
                    Err(e) => {
                        crate::log!("cgroup {}: cannot remove it: {e}", g.dir().display())
                    }
                }
            }
        }
        let _ = self.instance.remove();
        let _ = std::fs::remove_file(instance_dir.join(FILE));
    }
}
