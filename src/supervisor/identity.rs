//! Which processes are a node's, where the lifecycle needs more than `procscan` gives: without
//! cgroups, a process that holds the node's lock but carries no identity (it left the node's
//! process group with `setsid env -u BROCTLD_NODE ...`, or wrote its process title over its
//! environment) is the node's too. It blocks the node's start (named by pid, so its exit is
//! watched and the message can say that `stop` ends it), and a stop or `shutdown` ends it.
//! Called from `lifecycle.rs` (`adopt_or_block` and `signal_escaped`).

use super::*;

impl Supervisor {
    /// Node `i`'s lock is held, and no process carrying its identity holds it: the blocker is
    /// whoever holds it, found by a look into every process's open files; unnamed
    /// (`BLOCKED_UNKNOWN`, and the reason says why) if it cannot be found.
    pub(super) fn lock_blocker(&self, i: usize) -> (u32, String) {
        let lock = self.instance.node_lock_path(&self.nodes[i].spec.name);
        match procscan::lock_holders(&lock) {
            Ok((holders, _)) if !holders.is_empty() => (
                holders[0],
                format!(
                    "pid {} holds its lock {} (it left the node's process group and has no BROCTLD_NODE)",
                    holders[0],
                    lock.display()
                ),
            ),
            Ok((_, hidden)) if hidden > 0 => (
                BLOCKED_UNKNOWN,
                format!(
                    "its lock {} is held, by none of the processes that can be looked into ({hidden} cannot: not dumpable, or another user's)",
                    lock.display()
                ),
            ),
            Ok(_) => (
                BLOCKED_UNKNOWN,
                format!(
                    "its lock {} was held by a process without its identity",
                    lock.display()
                ),
            ),
            Err(e) => (
                BLOCKED_UNKNOWN,
                format!(
                    "its lock {} is held, and its holder cannot be looked for ({e})",
                    lock.display()
                ),
            ),
        }
    }

    /// After [`Supervisor::signal_escaped`] sent `sig` to the processes in `signalled` (those
    /// of node `i` outside its process group `group`, 0 if it has no main process): when the
    /// node is ending (a stop, or no main process left, as for what blocked its start) and
    /// `sig` is SIGKILL, SIGKILLs every process outside `group` that holds the node's lock
    /// (looked for only while the lock is held), then waits until each process it SIGKILLed is
    /// gone, at most 1 s (logged past that), so a stop does not say `stopped` while a process
    /// of the node it knows of lives. Without cgroups only: with them the group is the node.
    pub(super) fn end_lock_holders(&mut self, i: usize, group: u32, sig: i32, signalled: Vec<u32>) {
        let ending = group == 0 || self.state(i) == NodeState::Stopping;
        if self.cgroups.is_some() || sig != libc::SIGKILL || !ending {
            return;
        }
        let name = self.nodes[i].spec.name.clone();
        let mut killed = signalled;
        let lock = self.instance.node_lock_path(&name);
        if matches!(
            lockfile::LockFile::probe(&lock),
            Ok(lockfile::Probe::Held { .. })
        ) {
            match procscan::lock_holders(&lock) {
                Ok((holders, _)) => {
                    for pid in holders {
                        let outside = match procstat::stat(pid) {
                            Ok(Some(st)) => group == 0 || st.pgid != group,
                            _ => false,
                        };
                        if outside && !killed.contains(&pid) {
                            log!("node {name}: pid {pid} holds its lock outside its process group; sending it SIGKILL");
                            let _ = spawn::signal_pid(pid, libc::SIGKILL);
                            killed.push(pid);
                        }
                    }
                }
                Err(e) => log!("node {name}: cannot look for holders of its lock: {e}"),
            }
        }
        let end = std::time::Instant::now() + Duration::from_secs(1);
        for pid in killed {
            let Ok(fd) = pidfd::open(pid) else {
                // Gone already.
                continue;
            };
            let left = end.saturating_duration_since(std::time::Instant::now());
            if !pidfd::wait_exit(&fd, left).unwrap_or(true) {
                log!("node {name}: pid {pid} still runs 1 s after SIGKILL");
            }
        }
    }
}
