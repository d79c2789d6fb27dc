//! Forking daemons (`pid_file = "..."`, systemd's `Type=forking` + `PIDFile=`): the process
//! broctld starts forks the real daemon and exits 0; the process its PID file names then
//! becomes the node's main process. The file is removed before each start and its folder is
//! watched with the ready-file inotify instance, so a daemon that writes the file after its
//! parent exited (redis does) is picked up when it does, without polling.
//!
//! The named process must be the node's: in its cgroup (or a sub-group of it), or (without
//! cgroups) carrying its identity (environment, lock fd, lock file) or reparented to the
//! Supervisor (and no other node's). Until then the node is `starting` (the machine's `AwaitingMain`); past
//! `ready_timeout_ms` the start failed (`Exit::PidFileRefused`, naming the pid the file
//! named): what is left of it is killed and the restart policy decides, counting it as a
//! failed start (so `give_up_after` failed starts in a row end in `failed`).
//!
//! While the node runs, its main process may hand over to another on purpose (nginx's
//! binary upgrade on `USR2`): when the main process exits, the file is read again, and a live
//! process of the node it names is the main process from then on (systemd's `Type=forking`
//! does the same), instead of the node's end.

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

    /// The pid node `i`'s PID file names now (`None`: no file, or no pid above 1 in it).
    fn pid_from_file(&self, i: usize) -> Option<u32> {
        let path = self.pid_file_path(i)?;
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|p| *p > 1)
    }

    /// Whether `pid` (its `/proc/PID/stat` is `st`) is a process of node `i`: in its cgroup
    /// (or a sub-group); without cgroups, carrying its identity (see
    /// [`procscan::identify`]) or, for a daemon that rewrote its environment area (as redis
    /// does for its process title) or cannot be read, reparented to us (its starter's
    /// subreaper) and no other node's. `Err` says why it cannot be told.
    fn pid_is_nodes(&self, i: usize, pid: u32, st: &procstat::Stat) -> io::Result<bool> {
        let name = &self.nodes[i].spec.name;
        if let Some(g) = self.node_group(name) {
            return g.contains(pid);
        }
        let reparented =
            st.parent == std::process::id() && self.by_pid.get(&pid).is_none_or(|&j| j == i);
        let lock = self.instance.node_lock_path(name);
        match procscan::identify(pid, name, self.instance.name(), &lock)? {
            procscan::Identity::Node => Ok(true),
            procscan::Identity::Other => Ok(reparented),
            procscan::Identity::Unknown(why) if !reparented => {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, why))
            }
            procscan::Identity::Unknown(_) => Ok(true),
        }
    }

    /// Makes `pid` (started at `start`, with parent `parent`) node `i`'s main process: watched
    /// (and reaped: it was reparented to us, a child subreaper; otherwise, with another
    /// subreaper between us, watched like an adopted node), and named in the node's lock file,
    /// so a successor that cannot read its `/proc` files still knows it.
    fn take_main_process(&mut self, i: usize, pid: u32, start: u64, parent: u32) {
        self.nodes[i].adopted = parent != std::process::id();
        self.watch_pid(i, pid);
        self.by_pid.insert(pid, i);
        let lock = self.instance.node_lock_path(&self.nodes[i].spec.name);
        match lockfile::LockFile::rename_holder(&lock, pid, start) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log!(
                "node {}: cannot name pid {pid} in its lock file {}: {e}",
                self.nodes[i].spec.name,
                lock.display()
            ),
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
        let pid = self.pid_from_file(i)?;
        let name = self.nodes[i].spec.name.clone();
        let st = match procstat::stat(pid) {
            Ok(Some(st)) if !matches!(st.state, 'Z' | 'X') => st,
            _ => return None,
        };
        match self.pid_is_nodes(i, pid, &st) {
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
        self.take_main_process(i, pid, st.start, st.parent);
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

    /// Node `i`'s main process `old` exited (`exit`) while the node runs: if its PID file now
    /// names another live process of the node, that is its main process from now on, as
    /// systemd's `Type=forking` re-reads `PIDFile=` (nginx's binary upgrade: on `USR2` the old
    /// master starts a new one, which writes the file; the old one then exits). Returns
    /// whether it did (the node goes on, nothing is killed or restarted).
    pub(super) fn follow_pid_file(
        &mut self,
        i: usize,
        old: u32,
        exit: Exit,
    ) -> Option<machine::Input> {
        let running = matches!(
            self.machine.core(i).phase,
            machine::Phase::Running {
                stop_queued: None,
                ..
            } | machine::Phase::Starting {
                stop_queued: None,
                ..
            }
        );
        if self.nodes[i].spec.policy.pid_file.is_none() || !running || self.machine.shutting_down()
        {
            return None;
        }
        let pid = self.pid_from_file(i).filter(|p| *p != old)?;
        let st = match procstat::stat(pid) {
            Ok(Some(st)) if !matches!(st.state, 'Z' | 'X') => st,
            _ => return None,
        };
        let name = self.nodes[i].spec.name.clone();
        match self.pid_is_nodes(i, pid, &st) {
            Ok(true) => {}
            Ok(false) => {
                log!("node {name}: main process pid {old} ended ({}); its pid_file names pid {pid}, which is not a process of this node", exit.describe());
                return None;
            }
            Err(e) => {
                log!("node {name}: main process pid {old} ended ({}); cannot check pid {pid} from its pid_file: {e}", exit.describe());
                return None;
            }
        }
        self.take_main_process(i, pid, st.start, st.parent);
        log!(
            "node {name}: main process pid {old} ended ({}); its pid_file names pid {pid}, a process of this node: that is its main process now",
            exit.describe()
        );
        self.event(Event::now(EventKind::Adopted, i as u16, pid));
        Some(machine::Input::MainPid {
            node: i,
            proc_: machine::Proc {
                pid,
                start: st.start,
            },
        })
    }

    /// Node `i` waited for its PID file past its ready timeout: its start failed
    /// ([`Exit::PidFileRefused`], naming what the file named), logged with the reason; the
    /// machine kills what is left of it and its restart policy decides as after any failed
    /// start.
    pub(super) fn refuse_pid_file(&mut self, i: usize) -> machine::Input {
        let named = self.pid_from_file(i);
        let path = self
            .pid_file_path(i)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let why = match named {
            None => format!("its pid_file {path} names no pid"),
            Some(p) => match procstat::stat(p) {
                Ok(Some(st)) if !matches!(st.state, 'Z' | 'X') => {
                    match self.pid_is_nodes(i, p, &st) {
                        Ok(_) => format!(
                        "its pid_file {path} names pid {p}, which is not a process of this node"
                    ),
                        Err(e) => format!("its pid_file {path} names pid {p}: {e}"),
                    }
                }
                _ => format!("its pid_file {path} names pid {p}, which is not running"),
            },
        };
        log!(
            "node {}: not started: {why}, {} ms after its start (ready_timeout_ms); killing what is left of it",
            self.nodes[i].spec.name,
            self.nodes[i].spec.policy.ready_timeout.as_millis()
        );
        machine::Input::MainRefused {
            node: i,
            named: named.unwrap_or(0),
        }
    }
}
