//! Forking daemons (`pid_file = "..."`, systemd's `Type=forking` + `PIDFile=`): the process
//! broctld starts forks the real daemon and exits 0; the process its PID file names then
//! becomes the node's main process. The file is removed before each start and its folder is
//! watched with the ready-file inotify instance, so a daemon that writes the file after its
//! parent exited (redis does) is picked up when it does, without polling.
//!
//! The named process must be the node's: in its cgroup, or (without cgroups) carrying its
//! identity in its environment or reparented to the Supervisor (and no other node's). Until
//! then the node is `starting` (the machine's `AwaitingMain`); past `ready_timeout_ms` its
//! start counts as failed (what is left of it is killed) and its restart policy decides.

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

    /// While node `i` waits for its PID file: reads it, and if it names a live process of the
    /// node, watches it as the node's main process and returns the machine's input.
    pub(super) fn take_pid_file(&mut self, i: usize) -> Option<machine::Input> {
        if !matches!(
            self.machine.core(i).phase,
            machine::Phase::AwaitingMain { .. }
        ) {
            return None;
        }
        let path = self.pid_file_path(i)?;
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|p| *p > 1)?;
        let name = self.nodes[i].spec.name.clone();
        let st = match procstat::stat(pid) {
            Ok(Some(st)) if !matches!(st.state, 'Z' | 'X') => st,
            _ => return None,
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
                return None;
            }
            Err(e) => {
                log!("node {name}: cannot check pid {pid} from its pid_file: {e}");
                return None;
            }
        }
        // Reparented to us (a child subreaper) when its parent exited: we reap it. Otherwise
        // (another subreaper between us) it is watched like an adopted node.
        self.nodes[i].adopted = st.parent != std::process::id();
        self.watch_pid(i, pid);
        self.by_pid.insert(pid, i);
        log!(
            "node {name}: main process is pid {pid} (from its pid_file {})",
            path.display()
        );
        Some(machine::Input::MainPid {
            node: i,
            proc_: machine::Proc {
                pid,
                start: st.start,
            },
        })
    }
}
