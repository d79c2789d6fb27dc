//! `ready = "notify"`: systemd's notification protocol (`sd_notify`). Each such node gets its
//! own datagram socket, bound at `RUNTIME/INSTANCE/notify/HASH` (a short name, as
//! `sockaddr_un` holds at most 107 bytes), passed as `NOTIFY_SOCKET`, so whatever arrives on
//! it is that node's. Understood: `READY=1` (running), `STATUS=...` (shown by `status`),
//! `MAINPID=N` (the node's main process moves to N, if N is a process of the node),
//! `RELOADING=1` / `STOPPING=1` (the node's state shows `reloading` until `READY=1`,
//! `stopping` until it exits; kept in its record's intent across a takeover), `WATCHDOG=1`
//! (with `watchdog_ms`: a running node that does not ping within it is killed and restarted by
//! its policy). A successor (after a `kill -9` or an upgrade) binds the same path again; the
//! node keeps the path in its environment.

use super::source::Source;
use super::*;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// The path of node `name`'s notify socket in instance dir `dir`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    let h = crate::protocol::layout::identity_hash(name.as_bytes());
    dir.join("notify").join(format!("{:016x}", h as u64))
}

/// The file holding node `name`'s last `STATUS=` text, read by `status`.
pub fn status_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("nodes").join(format!("{name}.status"))
}

/// Node `name`'s notify status text, if it has one.
pub fn read_status(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(status_path(dir, name))
        .ok()
        .map(|t| t.trim_end().to_owned())
        .filter(|t| !t.is_empty())
}

impl Supervisor {
    /// Binds node `i`'s notify socket (removing one a predecessor left) and watches it.
    /// Returns its path for `NOTIFY_SOCKET`, or `None` (logged) if it cannot be made.
    pub(super) fn open_notify(&mut self, i: usize) -> Option<PathBuf> {
        self.close_notify(i);
        let dir = self.instance.dir();
        let name = self.nodes[i].spec.name.clone();
        let path = socket_path(&dir, &name);
        let made = crate::sys::checked::private_dir(&dir.join("notify"))
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|()| {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                let s = UnixDatagram::bind(&path)?;
                s.set_nonblocking(true)?;
                Ok(s)
            });
        match made.and_then(|s| {
            self.poll
                .registry()
                .register(
                    &mut SourceFd(&s.as_raw_fd()),
                    Source::Notify(i).token(),
                    Interest::READABLE,
                )
                .map(|()| s)
        }) {
            Ok(s) => {
                self.nodes[i].extras_mut().notify = Some(s);
                Some(path)
            }
            Err(e) => {
                log!(
                    "node {name}: cannot make its notify socket {}: {e}",
                    path.display()
                );
                None
            }
        }
    }

    /// Stops watching node `i`'s notify socket (the file stays for a successor to rebind).
    pub(super) fn close_notify(&mut self, i: usize) {
        if let Some(s) = self.nodes[i].extras_if_any().and_then(|e| e.notify.take()) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&s.as_raw_fd()));
        }
    }

    /// Reads every datagram waiting on node `i`'s notify socket and applies it.
    pub(super) fn read_notify(&mut self, i: usize) {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match self.nodes[i]
                .extras()
                .notify
                .as_ref()
                .map(|s| s.recv(&mut buf))
            {
                Some(Ok(n)) => n,
                _ => return,
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            // `MAINPID=` first, as systemd applies it: in `READY=1\nMAINPID=N` the node
            // becomes running with N as its main process, never for a moment with the old one
            // (a Main that saw it running would report the pid that is no longer the node's).
            let (main_pid, rest): (Vec<&str>, Vec<&str>) =
                text.lines().partition(|l| l.starts_with("MAINPID="));
            for line in main_pid.into_iter().chain(rest) {
                self.notify_line(i, line);
            }
        }
    }

    fn notify_line(&mut self, i: usize, line: &str) {
        let Some((key, value)) = line.split_once('=') else {
            return;
        };
        match (key, value) {
            ("READY", "1") => {
                if self.nodes[i].extras().notify_phase == Some(NotifyPhase::Reloading) {
                    self.nodes[i].extras_mut().notify_phase = None;
                    self.publish(i);
                }
                if self.awaits_ready(i) {
                    self.mark_ready(i);
                    self.arm_watchdog(i);
                }
            }
            ("STATUS", text) => self.set_notify_status(i, text.to_owned()),
            ("RELOADING", "1") => self.set_notify_phase(i, NotifyPhase::Reloading),
            ("STOPPING", "1") => self.set_notify_phase(i, NotifyPhase::Stopping),
            ("WATCHDOG", "1") => self.arm_watchdog(i),
            ("MAINPID", pid) => {
                if let Ok(pid) = pid.trim().parse::<u32>() {
                    self.move_main_pid(i, pid);
                }
            }
            _ => {}
        }
    }

    /// Records node `i`'s `STATUS=` text (published in its status file).
    fn set_notify_status(&mut self, i: usize, text: String) {
        self.nodes[i].extras_mut().notify_status = text;
        self.write_notify_status(i);
    }

    /// `RELOADING=1` (until `READY=1`) / `STOPPING=1` (until it exits): a running node's
    /// state shows it. Recorded in the node's intent, so a successor shows it too. A node
    /// still `starting` that says `STOPPING=1` is recorded the same way (it shows once it
    /// would show `running`); `RELOADING=1` before it was ever ready is ignored.
    fn set_notify_phase(&mut self, i: usize, phase: NotifyPhase) {
        let state = self.state(i);
        let applies = self.main_pid(i).is_some()
            && match phase {
                NotifyPhase::Reloading => state == NodeState::Running,
                NotifyPhase::Stopping => {
                    matches!(state, NodeState::Running | NodeState::Starting)
                }
            };
        let n = &mut self.nodes[i];
        let now = n.extras().notify_phase;
        if applies && now != Some(NotifyPhase::Stopping) && now != Some(phase) {
            n.extras_mut().notify_phase = Some(phase);
            log!("node {}: says it is {}", n.spec.name, phase.as_str());
            self.publish(i);
        }
    }

    fn write_notify_status(&self, i: usize) {
        let n = &self.nodes[i];
        let text = n.extras().notify_status.as_str();
        let path = status_path(&self.instance.dir(), &n.spec.name);
        let tmp = path.with_extension("status.tmp");
        let r =
            std::fs::write(&tmp, format!("{text}\n")).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            log!(
                "node {}: cannot write its status {}: {e}",
                n.spec.name,
                path.display()
            );
        }
    }

    /// `WATCHDOG=1` (or `READY=1`): for the machine, which keeps the deadline and kills the
    /// node if the next ping is late.
    pub(super) fn arm_watchdog(&mut self, i: usize) {
        self.feed(machine::Input::WatchdogPing { node: i });
    }

    /// `MAINPID=N`: node `i`'s main process becomes `pid`, if it is a live process of the node
    /// (in its cgroup; without cgroups, carrying its identity or our child).
    fn move_main_pid(&mut self, i: usize, pid: u32) {
        if self.main_pid(i) == Some(pid) {
            return;
        }
        let name = self.nodes[i].spec.name.clone();
        let st = match procstat::stat(pid) {
            Ok(Some(st)) if !matches!(st.state, 'Z' | 'X') => st,
            _ => return,
        };
        let ours = match self.node_group(&name) {
            Some(g) => g.contains(pid).unwrap_or(false),
            None => {
                procscan::is_node_process(
                    pid,
                    &name,
                    self.instance.name(),
                    &self.instance.node_lock_path(&name),
                )
                .unwrap_or(false)
                    || st.parent == std::process::id()
            }
        };
        if !ours || self.by_pid.get(&pid).is_some_and(|&j| j != i) {
            log!("node {name}: MAINPID={pid} is not a process of this node; ignored");
            return;
        }
        if let Some(old) = self.main_pid(i) {
            self.by_pid.remove(&old);
        }
        if let Some(fd) = self.nodes[i].pidfd.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        self.nodes[i].adopted = st.parent != std::process::id();
        self.watch_pid(i, pid);
        self.by_pid.insert(pid, i);
        log!("node {name}: main process is now pid {pid} (MAINPID)");
        self.feed(machine::Input::MainPid {
            node: i,
            proc_: machine::Proc {
                pid,
                start: st.start,
            },
        });
    }
}
