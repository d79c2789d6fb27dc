//! `ready_check = ["cmd", ...]`: a `starting` node is ready once this command exits 0 (the
//! idea of s6-notifyoncheck). It runs in the node's cwd with the node's environment (not in its
//! cgroup: it is not the node), its output appended to the node's stderr file, first
//! `ready_check_interval_ms` after the spawn and again that long after each failed run. A run
//! is reaped like any child; a node that ends meanwhile has its running check killed.

use super::*;
use std::os::unix::process::CommandExt;

impl Supervisor {
    /// Runs node `i`'s check now (the machine's timer fired). Returns the input for the
    /// machine if it cannot be run (the next run is then due one interval later).
    pub(super) fn run_ready_check(&mut self, i: usize) -> Option<machine::Input> {
        let n = &self.nodes[i];
        if !self.awaits_ready(i) || n.extras().check_pid.is_some() {
            return None;
        }
        // Through the node's stderr FIFO (the Supervisor is the only writer of the file),
        // else (`log_direct`) appended to its stderr file.
        let out = match self.stderr_end(i) {
            Some(f) => Ok(f),
            None => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&n.spec.stderr),
        };
        let spec = &self.nodes[i].spec;
        let mut cmd = std::process::Command::new(&spec.policy.ready_check[0]);
        cmd.args(&spec.policy.ready_check[1..])
            .current_dir(&spec.cwd)
            .env_clear()
            .envs(spawn::node_env(spec))
            .env("BROCTLD_NODE", &spec.name)
            .env("BROCTLD_INSTANCE", self.instance.name())
            .stdin(std::process::Stdio::null())
            // Its own process group: a stop of ours never reaches it by accident.
            .process_group(0);
        if let Ok(f) = out {
            if let Ok(g) = f.try_clone() {
                cmd.stdout(f).stderr(g);
            }
        }
        match cmd.spawn() {
            // Reaped with every other child (SIGCHLD); see `check_ended`.
            Ok(child) => {
                self.nodes[i].extras_mut().check_pid = Some(child.id());
                None
            }
            Err(e) => {
                log!(
                    "node {}: cannot run its ready_check '{}': {e}; trying again in {} ms",
                    spec.name,
                    spec.policy.ready_check[0],
                    spec.policy.ready_check_interval.as_millis()
                );
                Some(machine::Input::CheckPending { node: i })
            }
        }
    }

    /// A child that ended was a ready check: the node is ready if it exited 0, else the next
    /// run is due one interval from now; or it was an upgrade's probe (`upgrade.rs`). Returns
    /// whether `pid` was one.
    pub(super) fn check_ended(&mut self, pid: u32, exit: Exit) -> bool {
        // The other check a Supervisor runs: an upgrade's probe of its new binary.
        if self.probe_ended(pid, exit) {
            return true;
        }
        let Some(i) = self
            .nodes
            .iter()
            .position(|n| n.extras().check_pid == Some(pid))
        else {
            return false;
        };
        if let Some(e) = self.nodes[i].extras_if_any() {
            e.check_pid = None;
        }
        if !self.awaits_ready(i) {
            return true;
        }
        if exit == Exit::Code(0) {
            log!("node {}: ready_check passed", self.nodes[i].spec.name);
            self.mark_ready(i);
        } else {
            self.feed(machine::Input::CheckPending { node: i });
        }
        true
    }

    /// Node `i` ended or is no longer waiting: its running check (if any) is killed (the
    /// machine drops the next run's time when the node leaves `starting`).
    pub(super) fn drop_ready_check(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].extras().check_pid {
            let _ = spawn::signal_pid(pid, libc::SIGKILL);
        }
    }
}
