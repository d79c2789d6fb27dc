//! Forking daemons (`pid_file = "..."`, systemd's `Type=forking` + `PIDFile=`): the process
//! broctld starts forks the real daemon and exits 0; the process its PID file names then
//! becomes the node's main process. The file is removed before each start and its folder is
//! watched with the ready-file inotify instance, so a daemon that writes the file after its
//! parent exited (redis does) is picked up when it does, without polling.
//!
//! The named process must be the node's: in its cgroup, or (without cgroups) carrying its
//! identity in its environment or reparented to the Supervisor (and no other node's). Until then the node is `starting`; past `ready_timeout_ms` it
//! counts as failed to start (what is left of it is killed).

use super::*;
use std::path::PathBuf;

impl Supervisor {
    /// The absolute path of node `i`'s PID file, if it has one.
    pub(super) fn pid_file_path(&self, i: usize) -> Option<PathBuf> {
        let spec = &self.nodes[i].spec;
        spec.policy.pid_file.as_ref().map(|p| spec.cwd.join(p))
    }

    /// Before node `i` starts: removes its old PID file and watches its folder.
    pub(super) fn arm_pid_file(&mut self, i: usize) {
        let Some(path) = self.pid_file_path(i) else {
            return;
        };
        let name = &self.nodes[i].spec.name;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log!(
                "node {name}: cannot remove its old pid_file {}: {e}",
                path.display()
            ),
        }
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match self.ready_files.as_mut().map(|f| f.watch(&path)) {
            Some(Ok(())) => {}
            Some(Err(e)) => log!(
                "node {name}: cannot watch the folder of its pid_file {}: {e}; it is read when its starter exits",
                path.display()
            ),
            None => log!("node {name}: no inotify; its pid_file is read when its starter exits"),
        }
    }

    /// Node `i`'s starter (`pid`) exited with status 0: its main process is the one its PID
    /// file names, once the file names a process of the node.
    pub(super) fn starter_exited(&mut self, i: usize, pid: u32) {
        self.nodes[i].extras_mut().pid_file_wait = Some(pid);
        self.publish(i);
        self.take_pid_file(i);
    }

    /// While node `i` waits for its PID file: reads it, and if it names a live process of the
    /// node, makes that the node's main process. Returns whether it did.
    pub(super) fn take_pid_file(&mut self, i: usize) -> bool {
        if self.nodes[i].extras().pid_file_wait.is_none() {
            return false;
        }
        let Some(path) = self.pid_file_path(i) else {
            return false;
        };
        let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|p| *p > 1)
        else {
            return false;
        };
        let name = self.nodes[i].spec.name.clone();
        let st = match procstat::stat(pid) {
            Ok(Some(st)) if !matches!(st.state, 'Z' | 'X') => st,
            _ => return false,
        };
        let ours = match self.node_group(&name) {
            Some(g) => g.contains(pid),
            // Without cgroups: it carries the node's identity, or (a daemon that rewrote its
            // environment area, as redis does for its process title) it was reparented to
            // us, its starter's subreaper, and is no other node's.
            None => procscan::is_node_process(
                pid,
                &name,
                self.instance.name(),
                procscan::LockId::of(&super::lifecycle::node_lock_path(&self.instance, &name))
                    .ok()
                    .flatten(),
            )
            .map(|carries| {
                carries || (st.parent == std::process::id() && !self.by_pid.contains_key(&pid))
            }),
        };
        match ours {
            Ok(true) => {}
            Ok(false) => {
                log!(
                    "node {name}: its pid_file {} names pid {pid}, which is not a process of this node; waiting for the file to change",
                    path.display()
                );
                return false;
            }
            Err(e) => {
                log!("node {name}: cannot check pid {pid} from its pid_file: {e}");
                return false;
            }
        }
        let n = &mut self.nodes[i];
        if let Some(e) = n.extras_if_any() {
            e.pid_file_wait = None;
        }
        n.pid = Some(pid);
        n.pid_start = st.start;
        // Reparented to us (a child subreaper) when its parent exited: we reap it. Otherwise
        // (another subreaper between us) it is watched like an adopted node.
        n.adopted = st.parent != std::process::id();
        self.watch_pid(i, pid);
        self.by_pid.insert(pid, i);
        log!(
            "node {name}: main process is pid {pid} (from its pid_file {})",
            path.display()
        );
        let n = &mut self.nodes[i];
        let waits = n.ready_pipe.is_some() || n.spec.policy.ready_file.is_some();
        if n.state == NodeState::Starting && !waits {
            n.deadline = None;
            self.mark_ready(i);
        } else {
            self.publish(i);
        }
        true
    }

    /// Node `i` waited for its PID file and is stopped, or past its ready timeout: what is
    /// left of it is killed; `stopping` says which. With a cgroup, the end is applied once the
    /// group is empty.
    pub(super) fn give_up_pid_file(&mut self, i: usize, stopping: bool) {
        let Some(starter) = self.nodes[i]
            .extras_if_any()
            .and_then(|e| e.pid_file_wait.take())
        else {
            return;
        };
        let exit = if stopping {
            Exit::Code(0)
        } else {
            log!(
                "node {}: its pid_file {} named no process of it within {} ms; killing what is left of it",
                self.nodes[i].spec.name,
                self.pid_file_path(i).map(|p| p.display().to_string()).unwrap_or_default(),
                self.nodes[i].spec.policy.ready_timeout.as_millis()
            );
            Exit::SpawnFailed(libc::ETIMEDOUT)
        };
        self.nodes[i].last_exit = Some(exit);
        self.signal_escaped(i, 0, libc::SIGKILL);
        if self.cgroups.is_some() {
            self.drain(i, starter, exit, stopping);
        } else {
            self.ended(i, starter, exit, stopping);
        }
    }
}
