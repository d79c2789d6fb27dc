//! The kernel's truth about an instance: the live processes of each node (from
//! `/proc/PID/environ`), what each node wrote about itself (spawns and SIGHUPs, from its own
//! stdout), the fds it holds, and the Supervisor.

use crate::common::{self, Cluster};
use std::collections::BTreeMap;
use std::path::Path;

/// A process identified for good: pid and start time.
pub type Proc = (u32, u64);

/// Live (not zombie) leaders of each node: processes with the node's environment that lead
/// their own process group and whose parent is not a process of the same node. A node's child
/// that escaped its group (`setsid`) becomes one once its parent is gone.
pub fn leaders(instance: &str) -> BTreeMap<String, Vec<Proc>> {
    common::node_procs(instance)
        .into_iter()
        .map(|(k, v)| {
            let family: Vec<u32> = v.iter().map(|p| p.pid).collect();
            let live = v
                .iter()
                .filter(|p| {
                    p.state != 'Z'
                        && p.state != 'X'
                        && common::pgid(p.pid) == Some(p.pid)
                        && !family.contains(&p.ppid)
                })
                .map(|p| (p.pid, p.start))
                .collect();
            (k, live)
        })
        .filter(|(_, v): &(String, Vec<Proc>)| !v.is_empty())
        .collect()
}

/// Every live (not zombie) process of each node: leaders, their children, and leftovers.
pub fn members(instance: &str) -> BTreeMap<String, Vec<Proc>> {
    common::node_procs(instance)
        .into_iter()
        .map(|(k, v)| {
            let live = v
                .iter()
                .filter(|p| p.state != 'Z' && p.state != 'X')
                .map(|p| (p.pid, p.start))
                .collect();
            (k, live)
        })
        .filter(|(_, v): &(String, Vec<Proc>)| !v.is_empty())
        .collect()
}

/// Whether this exact process still lives.
pub fn alive(p: Proc) -> bool {
    common::start_time(p.0) == Some(p.1) && common::pid_alive(p.0)
}

/// Lines of `NAME`'s stdout (`ROOT/spool/NAME/stdout.log`) written by the node itself (not a
/// child) that contain `what`.
pub fn own_lines(root: &Path, name: &str, what: &str) -> usize {
    let text = std::fs::read_to_string(root.join("spool").join(name).join("stdout.log"))
        .unwrap_or_default();
    let me = format!(" {name} ");
    text.lines()
        .filter(|l| l.contains(&me) && l.contains(what))
        .count()
}

/// How many times `name` was spawned: its "started" lines.
pub fn spawns(root: &Path, name: &str) -> usize {
    own_lines(root, name, " started args=")
}

/// How many SIGHUPs `name` got.
pub fn hups(root: &Path, name: &str) -> usize {
    own_lines(root, name, " got SIGHUP")
}

/// How many SIGTERMs `name` got (obeyed or ignored).
pub fn terms(root: &Path, name: &str) -> usize {
    own_lines(root, name, " got SIGTERM")
}

/// Open fds with their targets.
pub type Fds = Vec<(i32, String)>;

/// fds >= 3 of `pid` with their targets.
pub fn fd_targets(pid: u32) -> Fds {
    common::open_fds(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|fd| *fd >= 3)
        .filter_map(|fd| {
            let t = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
            Some((fd, t.to_string_lossy().into_owned()))
        })
        .collect()
}

/// The live Supervisor of the cluster (lock file pid, checked against /proc), if any.
pub fn supervisor(c: &Cluster) -> Option<Proc> {
    let pid = c.lock_pid()?;
    let live = common::supervisors_of(&c.runtime);
    live.contains(&pid)
        .then(|| common::start_time(pid).map(|s| (pid, s)))
        .flatten()
}

/// How many times supervisor.log says "panicked".
pub fn panics(c: &Cluster) -> usize {
    c.log().matches("panicked").count()
}
